-- Delivery by the worker (DELIVERY=smtp or webhook): where the code goes, and what became of it.
-- A row with a destination is pending while delivery_due_at is set: the time of its next attempt, or the end
-- of the lease of the worker that claimed it (a worker that died between sending and recording leaves it to be
-- claimed again then). delivered_at or delivery_failed_at (with delivery_error) ends it. The destination is
-- personal data: it goes with the row at the retention sweep.
ALTER TABLE valid_codes ADD COLUMN destination TEXT;
ALTER TABLE valid_codes ADD COLUMN delivery_due_at TEXT;
ALTER TABLE valid_codes ADD COLUMN delivery_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE valid_codes ADD COLUMN delivered_at TEXT;
ALTER TABLE valid_codes ADD COLUMN delivery_failed_at TEXT;
ALTER TABLE valid_codes ADD COLUMN delivery_error TEXT;
CREATE INDEX valid_codes_delivery_due ON valid_codes (delivery_due_at) WHERE delivery_due_at IS NOT NULL;
