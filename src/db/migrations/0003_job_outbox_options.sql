-- A durable job's own class, attempts, timeout and idempotency key; NULL means the server's
-- defaults for its kind (the welcome notification written with a new user). A key is unique, so
-- a second enqueue with it finds the first job.
ALTER TABLE job_outbox
    ADD COLUMN class           text    CHECK (class IN ('high', 'medium', 'low', 'background')),
    ADD COLUMN max_attempts    integer CHECK (max_attempts BETWEEN 1 AND 100),
    ADD COLUMN timeout_ms      bigint  CHECK (timeout_ms > 0),
    ADD COLUMN idempotency_key text;
CREATE UNIQUE INDEX job_outbox_idempotency_key ON job_outbox (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
