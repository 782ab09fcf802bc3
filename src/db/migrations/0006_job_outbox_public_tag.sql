-- A durable job's id as the API shows it, `<id>-<public_tag as 32 hex digits>`, carries 122
-- random bits: a job is found only by both, so no one reads another's job by guessing its id.
-- The outbox keeps its order by the sequence `id`.
ALTER TABLE job_outbox ADD COLUMN public_tag uuid NOT NULL DEFAULT gen_random_uuid();
