-- A row is one issuance of a code. It stays after its expiry (expired_at set) for inspection until the
-- retention sweep removes it; validity is active_codes, never "a row exists".
CREATE TABLE valid_codes (
    issuance_id  text PRIMARY KEY,
    code         text NOT NULL,
    subject      text,
    issued_at    timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    activated_at timestamptz NOT NULL,
    redeemed_at  timestamptz,
    revoked_at   timestamptz,
    expired_at   timestamptz
);
CREATE INDEX valid_codes_code ON valid_codes (code, expires_at);
CREATE INDEX valid_codes_expires_at ON valid_codes (expires_at);

-- A code is valid while expires_at > now(), not redeemed and not revoked, whether or not its expiry
-- message has been processed yet.
CREATE VIEW active_codes AS
SELECT issuance_id, code, subject, issued_at, expires_at, activated_at
FROM valid_codes
WHERE expires_at > now()
  AND redeemed_at IS NULL
  AND revoked_at IS NULL;

-- `codewatch codes revoke`: every issuance of the code issued at or before revoked_at is revoked, including
-- one whose activation is still on its way through the queue.
CREATE TABLE code_revocations (
    code       text NOT NULL,
    revoked_at timestamptz NOT NULL
);
CREATE INDEX code_revocations_code ON code_revocations (code);

-- Consecutive failed checks per subject within a window (NIST SP 800-63B throttling).
CREATE TABLE subject_failures (
    subject           text PRIMARY KEY,
    failures          integer NOT NULL,
    window_started_at timestamptz NOT NULL
);
