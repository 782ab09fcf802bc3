-- Durable jobs: an outbox written in the transaction of the change that caused the job, claimed
-- with FOR UPDATE SKIP LOCKED under a lease, and the effects of finished jobs, keyed by job id.
CREATE TABLE job_outbox (
    id          bigserial   PRIMARY KEY,
    kind        text        NOT NULL,
    payload     jsonb       NOT NULL,
    status      text        NOT NULL DEFAULT 'pending'
                            CHECK (status IN ('pending', 'claimed', 'done', 'dead')),
    attempts    integer     NOT NULL DEFAULT 0,
    claimed_by  text,
    lease_until timestamptz,
    last_error  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX job_outbox_open ON job_outbox (id) WHERE status IN ('pending', 'claimed');

-- One row per finished job, written with the job's 'done' mark: a job whose lease was lost
-- writes nothing.
CREATE TABLE job_effects (
    job_id     bigint      NOT NULL REFERENCES job_outbox (id),
    kind       text        NOT NULL,
    result     jsonb       NOT NULL,
    claimed_by text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_effects_job ON job_effects (job_id);
