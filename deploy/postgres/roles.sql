-- Least-privilege roles for codewatch on PostgreSQL, created once by the server administrator in the
-- codewatch database:
--   psql "host=<server> dbname=codewatch user=<admin> sslmode=require" \
--     -v migrate_password="$(openssl rand -base64 24)" -v app_password="$(openssl rand -base64 24)" \
--     -f deploy/postgres/roles.sql
-- codewatch_migrate owns the schema and runs `codewatch migrate` (a job, before each release);
-- codewatch_app is what serve and the worker connect as, with MIGRATE_ON_START=false: it reads and
-- writes rows and can change no table.
CREATE ROLE codewatch_migrate LOGIN PASSWORD :'migrate_password';
CREATE ROLE codewatch_app LOGIN PASSWORD :'app_password';
SELECT format('GRANT CONNECT ON DATABASE %I TO codewatch_migrate, codewatch_app', current_database()) \gexec
GRANT USAGE, CREATE ON SCHEMA public TO codewatch_migrate;
GRANT USAGE ON SCHEMA public TO codewatch_app;
-- Every table and sequence the migrations create is usable, row by row, by the runtime role.
ALTER DEFAULT PRIVILEGES FOR ROLE codewatch_migrate IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO codewatch_app;
ALTER DEFAULT PRIVILEGES FOR ROLE codewatch_migrate IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO codewatch_app;
