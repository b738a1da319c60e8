-- Times are UTC text 'YYYY-MM-DD HH:MM:SS.ffffff', so they compare as text and read well in sqlite3.
CREATE TABLE valid_codes (
    issuance_id  TEXT PRIMARY KEY NOT NULL,
    code         TEXT NOT NULL,
    issued_at    TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    activated_at TEXT NOT NULL
);
CREATE INDEX valid_codes_code ON valid_codes (code);
CREATE INDEX valid_codes_expires_at ON valid_codes (expires_at);

-- A code is valid while expires_at > now, whether or not its expiry message has been processed yet.
CREATE VIEW active_codes AS
SELECT issuance_id, code, issued_at, expires_at, activated_at
FROM valid_codes
WHERE expires_at > strftime('%Y-%m-%d %H:%M:%f', 'now');

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
