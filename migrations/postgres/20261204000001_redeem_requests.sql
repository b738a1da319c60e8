-- Redeems sent with an Idempotency-Key: the first answer, so that a repeat (a lost answer retried) gets it
-- again without counting a failure. `fingerprint` is a SHA-256 of the code and subject, so a wrong guess is
-- not kept in clear; `issuance_id` is the redeemed issuance, or NULL when the first answer was "not
-- valid". A key is remembered until `expires_at` (the code's expiry, or the lockout window for a failed
-- redeem) and purged with the codes.
CREATE TABLE redeem_requests (
    idempotency_key text PRIMARY KEY,
    fingerprint     text NOT NULL,
    issuance_id     text,
    expires_at      timestamptz NOT NULL
);
CREATE INDEX redeem_requests_expires_at ON redeem_requests (expires_at);
