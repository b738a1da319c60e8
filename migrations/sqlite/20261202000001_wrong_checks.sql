-- Wrong checks made for a subject while this code was valid; at VERIFY_MAX_WRONG_PER_CODE the code is
-- burned (revoked_at set) and the user must ask for a new one.
ALTER TABLE valid_codes ADD COLUMN wrong_checks INTEGER NOT NULL DEFAULT 0;
