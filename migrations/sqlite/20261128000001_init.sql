-- Times are UTC text 'YYYY-MM-DD HH:MM:SS.ffffff', so they compare as text and read well in sqlite3.
-- A row is one issuance of a code. It stays after its expiry (expired_at set) for inspection until the
-- retention sweep removes it; validity is active_codes, never "a row exists".
CREATE TABLE valid_codes (
    issuance_id  TEXT PRIMARY KEY NOT NULL,
    code         TEXT NOT NULL,
    subject      TEXT,
    issued_at    TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    activated_at TEXT NOT NULL,
    redeemed_at  TEXT,
    revoked_at   TEXT,
    expired_at   TEXT
);
CREATE INDEX valid_codes_code ON valid_codes (code, expires_at);
CREATE INDEX valid_codes_expires_at ON valid_codes (expires_at);

-- A code is valid while expires_at > now, not redeemed and not revoked, whether or not its expiry
-- message has been processed yet.
CREATE VIEW active_codes AS
SELECT issuance_id, code, subject, issued_at, expires_at, activated_at
FROM valid_codes
WHERE expires_at > strftime('%Y-%m-%d %H:%M:%f', 'now')
  AND redeemed_at IS NULL
  AND revoked_at IS NULL;

-- `codewatch codes revoke`: every issuance of the code issued at or before revoked_at is revoked, including
-- one whose activation is still on its way through the queue.
CREATE TABLE code_revocations (
    code       TEXT NOT NULL,
    revoked_at TEXT NOT NULL
);
CREATE INDEX code_revocations_code ON code_revocations (code);

-- Consecutive failed checks per subject within a window (NIST SP 800-63B throttling).
CREATE TABLE subject_failures (
    subject           TEXT PRIMARY KEY NOT NULL,
    failures          INTEGER NOT NULL,
    window_started_at TEXT NOT NULL
);

-- The embedded queue, used when no Azure Storage setting is given. Times are Unix milliseconds.
CREATE TABLE queue_messages (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    queue_name    TEXT NOT NULL,
    message_id    TEXT NOT NULL UNIQUE,
    body          TEXT NOT NULL,
    inserted_at   INTEGER NOT NULL,
    visible_at    INTEGER NOT NULL,
    dequeue_count INTEGER NOT NULL DEFAULT 0,
    pop_receipt   TEXT
);
CREATE INDEX queue_messages_visible ON queue_messages (queue_name, visible_at);
