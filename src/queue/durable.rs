//! Durable jobs: rows of the `job_outbox` table, written in the transaction of the change that
//! caused them. Each shard's dispatcher polls the outbox, claims a few rows with
//! `FOR UPDATE SKIP LOCKED` under a lease (`claimed_by`, `lease_until`), runs them in their
//! kind's class on the shard's [`QueueRuntime`], and marks each done (with its effect, keyed by
//! the job id) or back to pending/dead in one transaction that holds only while the lease is
//! still this dispatcher's. A row whose lease expired (its process died) is claimed again:
//! at-least-once, and a lost lease writes no effect, so each job's effect lands once.

use std::rc::Rc;
use std::time::Duration;

use serde_json::Value;

use super::kinds::{self, JobInput};
use super::QueueRuntime;
use crate::db::{DbClient, DbConn, DbError};

/// How long a claim holds before another process may take the job.
pub const LEASE: Duration = Duration::from_secs(5);
/// Rows one poll claims.
const BATCH: i64 = 16;
/// Attempts before a durable job is marked dead.
const MAX_ATTEMPTS: i32 = 5;

const INSERT: &str =
    "INSERT INTO job_outbox (kind, payload) VALUES ($1, $2::text::jsonb) RETURNING id";
const CLAIM: &str = "UPDATE job_outbox SET status = 'claimed', claimed_by = $1, \
     lease_until = now() + make_interval(secs => $2), attempts = attempts + 1 \
     WHERE id IN (SELECT id FROM job_outbox \
                  WHERE status = 'pending' OR (status = 'claimed' AND lease_until < now()) \
                  ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) \
     RETURNING id, kind, payload::text, attempts";
const FINISH: &str = "UPDATE job_outbox SET status = $3, last_error = $4, finished_at = \
     CASE WHEN $3 IN ('done', 'dead') THEN now() END, claimed_by = NULL, lease_until = NULL \
     WHERE id = $1 AND claimed_by = $2 AND status = 'claimed' RETURNING kind";
const EFFECT: &str = "INSERT INTO job_effects (job_id, kind, result, claimed_by) \
     VALUES ($1, $2, $3::text::jsonb, $4)";

/// Writes a durable job on `conn`, inside whatever transaction the caller's write runs in.
/// Returns the job's id.
pub fn insert(conn: &mut DbConn, kind: &str, payload: &Value) -> Result<i64, DbError> {
    let payload = payload.to_string();
    Ok(conn.query_one(INSERT, &[&kind, &payload])?.get(0))
}

struct Claimed {
    id: i64,
    kind: String,
    payload: String,
    attempts: i32,
}

/// Starts the shard's dispatcher: a task in the background class that polls forever.
/// `poll` is how long it waits after finding nothing.
pub fn start(
    runtime: Rc<dyn QueueRuntime>,
    mut db: DbClient,
    poll: Duration,
    owner: String,
    debug: bool,
) {
    let rt = runtime.clone();
    runtime.spawn(
        super::Priority::Background,
        Box::pin(async move {
            loop {
                let owner_claim = owner.clone();
                let claimed = db
                    .write(move |conn| {
                        let rows =
                            conn.query(CLAIM, &[&owner_claim, &LEASE.as_secs_f64(), &BATCH])?;
                        Ok(rows
                            .iter()
                            .map(|r| Claimed {
                                id: r.get(0),
                                kind: r.get(1),
                                payload: r.get(2),
                                attempts: r.get(3),
                            })
                            .collect::<Vec<_>>())
                    })
                    .await;
                let jobs = match claimed {
                    Ok(written) => written.value,
                    Err(e) => {
                        log::debug!("durable jobs: claim failed: {e}");
                        Vec::new()
                    }
                };
                if jobs.is_empty() {
                    rt.sleep(poll).await;
                    continue;
                }
                for job in jobs {
                    let outcome = run(&rt, &job, debug).await;
                    let finish = finish(&mut db, &owner, job, outcome).await;
                    if let Err(e) = finish {
                        log::warn!("durable jobs: could not record an outcome: {e}");
                    }
                }
            }
        }),
    );
}

async fn run(runtime: &Rc<dyn QueueRuntime>, job: &Claimed, debug: bool) -> Result<Value, String> {
    let kind = kinds::find(&job.kind, debug).ok_or_else(|| format!("unknown kind {}", job.kind))?;
    let payload: Value = serde_json::from_str(&job.payload).map_err(|e| e.to_string())?;
    (kind.validate)(&payload)?;
    (kind.run)(JobInput {
        payload,
        attempt: u32::try_from(job.attempts).unwrap_or(1),
        runtime: runtime.clone(),
    })
    .await
}

/// Records the outcome, only while this dispatcher still holds the job's lease.
async fn finish(
    db: &mut DbClient,
    owner: &str,
    job: Claimed,
    outcome: Result<Value, String>,
) -> Result<(), DbError> {
    let owner = owner.to_string();
    let (status, error, result) = match outcome {
        Ok(result) => ("done", None, Some(result.to_string())),
        Err(e) if job.attempts >= MAX_ATTEMPTS => ("dead", Some(e), None),
        Err(e) => ("pending", Some(e), None),
    };
    db.write(move |conn| {
        let held = conn.query_opt(FINISH, &[&job.id, &owner, &status, &error])?;
        if let (Some(row), Some(result)) = (held, result.as_ref()) {
            let kind: String = row.get(0);
            conn.query(EFFECT, &[&job.id, &kind, result, &owner])?;
        }
        Ok(())
    })
    .await
    .map(|_| ())
}
