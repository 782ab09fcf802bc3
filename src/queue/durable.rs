//! Durable jobs: rows of the `job_outbox` table, written in the transaction of the change that
//! caused them. Each shard's dispatcher polls the outbox, claims a few rows with
//! `FOR UPDATE SKIP LOCKED` under a lease (`claimed_by`, `lease_until`), submits each to the
//! per-core queues (its kind's class, timeout, retries; keyed `durable:{id}`), renews the lease
//! while the job is queued or running, and marks it done (with its effect, keyed by the job id)
//! or dead in one transaction that holds only while the lease is still this dispatcher's. A
//! row whose lease expired (its process died) is claimed again: at-least-once, and a lost lease
//! writes no effect, so each job's effect lands once. A shard holds at most
//! [`MAX_IN_FLIGHT`] claims, so a backlog spreads over the shards and processes that poll.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::worker::{self, Answer};
use super::{kinds, JobSpec, Priority, ShardQueues};
use crate::db::{Database, DbClient, DbConn, DbError};

/// How long a claim holds before another process may take the job.
pub const LEASE: Duration = Duration::from_secs(5);
/// Rows one poll claims.
const BATCH: i64 = 16;
/// Claimed jobs one shard holds at most (queued, running or being recorded): past it the
/// dispatcher claims nothing until some finish, so one shard cannot take a whole backlog under
/// its leases while other processes' shards sit idle.
const MAX_IN_FLIGHT: usize = 4 * BATCH as usize;
/// Claims of one job (each after a crash or lost lease) before it is marked dead.
const MAX_CLAIMS: i32 = 5;

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
const RENEW: &str = "UPDATE job_outbox SET lease_until = now() + make_interval(secs => $3) \
     WHERE id = $1 AND claimed_by = $2 AND status = 'claimed'";
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
    claims: i32,
}

/// Starts the shard's dispatcher: a background-class task that polls the outbox every `poll`
/// while it finds nothing, and a watcher task per claimed job.
pub fn start(queues: &Rc<ShardQueues>, database: &Arc<Database>, poll: Duration, owner: String) {
    let (queues, database) = (queues.clone(), database.clone());
    let runtime = queues.runtime.clone();
    runtime.spawn(
        Priority::Background,
        Box::pin(async move {
            let mut db = database.client();
            let in_flight = Rc::new(Slots::default());
            loop {
                in_flight.free().await;
                let room = MAX_IN_FLIGHT
                    .saturating_sub(in_flight.held.get())
                    .min(BATCH as usize);
                let (owner_claim, limit) = (owner.clone(), room as i64);
                let claimed = db
                    .write(move |conn| {
                        let rows =
                            conn.query(CLAIM, &[&owner_claim, &LEASE.as_secs_f64(), &limit])?;
                        Ok(rows
                            .iter()
                            .map(|r| Claimed {
                                id: r.get(0),
                                kind: r.get(1),
                                payload: r.get(2),
                                claims: r.get(3),
                            })
                            .collect::<Vec<_>>())
                    })
                    .await;
                let jobs = claimed.map(|w| w.value).unwrap_or_else(|e| {
                    log::debug!("durable jobs: claim failed: {e}");
                    Vec::new()
                });
                if jobs.is_empty() {
                    queues.runtime.sleep(poll).await;
                }
                for job in jobs {
                    let (queues, mut db, owner) =
                        (queues.clone(), database.client(), owner.clone());
                    let held = InFlight::new(&in_flight);
                    queues.runtime.clone().spawn(
                        Priority::Background,
                        Box::pin(async move {
                            let outcome = run(&queues, &mut db, &owner, &job, poll).await;
                            if let Err(e) = finish(&mut db, &owner, job, outcome).await {
                                log::warn!("durable jobs: could not record an outcome: {e}");
                            }
                            drop(held);
                        }),
                    );
                }
            }
        }),
    );
}

/// The dispatcher's claims in flight, and its wait for one to end when it holds
/// [`MAX_IN_FLIGHT`].
#[derive(Default)]
struct Slots {
    held: Cell<usize>,
    waiting: Cell<Option<Waker>>,
}

impl Slots {
    /// Ends once fewer than [`MAX_IN_FLIGHT`] claims are held.
    async fn free(&self) {
        futures_lite::future::poll_fn(|cx| {
            if self.held.get() < MAX_IN_FLIGHT {
                Poll::Ready(())
            } else {
                self.waiting.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

/// One claimed job counted against [`MAX_IN_FLIGHT`] until it is dropped, however its task ends.
struct InFlight(Rc<Slots>);

impl InFlight {
    fn new(slots: &Rc<Slots>) -> InFlight {
        slots.held.set(slots.held.get() + 1);
        InFlight(slots.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.held.set(self.0.held.get() - 1);
        if let Some(dispatcher) = self.0.waiting.take() {
            dispatcher.wake();
        }
    }
}

/// The first look at a submitted job's state: most jobs are short, so the dispatcher looks
/// again soon, then less often (doubling up to the poll interval).
const FIRST_LOOK: Duration = Duration::from_millis(1);

fn now<T>(answer: Answer<T>) -> futures_lite::future::BoxedLocal<T>
where
    T: 'static,
{
    match answer {
        Answer::Now(value) => Box::pin(std::future::ready(value)),
        Answer::Later(future) => future,
    }
}

/// Runs the job through the queues and waits for its end: `Ok(result)` when done, `Err` when
/// dead (the queues already retried it) or when it cannot run; `None` to leave it for a later
/// claim.
async fn run(
    queues: &Rc<ShardQueues>,
    db: &mut DbClient,
    owner: &str,
    job: &Claimed,
    poll: Duration,
) -> Option<Result<Value, String>> {
    if job.claims > MAX_CLAIMS {
        return Some(Err(format!(
            "claimed {} times without finishing",
            job.claims
        )));
    }
    let kind = match kinds::find(&job.kind, queues.settings.debug_kinds) {
        Some(kind) => kind,
        None => return Some(Err(format!("unknown job kind {:?}", job.kind))),
    };
    let payload: Value = match serde_json::from_str(&job.payload) {
        Ok(payload) => payload,
        Err(e) => return Some(Err(e.to_string())),
    };
    if let Err(e) = (kind.validate)(&payload) {
        return Some(Err(e));
    }
    let spec = JobSpec {
        kind: kind.name.to_string(),
        class: kind.class,
        payload,
        key: Some(format!("durable:{}", job.id)),
        max_attempts: queues.settings.max_attempts,
        timeout: queues.timeout(kind.class),
    };
    let id = match now(worker::submit(queues, spec)).await {
        Ok(enqueued) => enqueued.view["id"].as_str()?.parse().ok()?,
        // Full or unreachable: the lease runs out and a later claim tries again.
        Err(_) => return None,
    };
    let mut renewed = Instant::now();
    let mut look_after = FIRST_LOOK.min(poll);
    loop {
        queues.runtime.sleep(look_after).await;
        look_after = (look_after * 2).min(poll);
        let view = now(worker::status(queues, id)).await?;
        match view["state"].as_str() {
            Some("done") => return Some(Ok(view["result"].clone())),
            Some("dead") => {
                return Some(Err(view["last_error"]
                    .as_str()
                    .unwrap_or("dead")
                    .to_string()))
            }
            _ => {}
        }
        if renewed.elapsed() >= LEASE / 2 {
            renewed = Instant::now();
            let (owner, job_id) = (owner.to_string(), job.id);
            let renew =
                db.write(move |conn| conn.query(RENEW, &[&job_id, &owner, &LEASE.as_secs_f64()]));
            // A lost lease is found at the finish, which then records nothing.
            if let Err(e) = renew.await {
                log::debug!("durable jobs: lease renewal failed: {e}");
            }
        }
    }
}

/// Records the outcome, only while this dispatcher still holds the job's lease; `None` gives
/// the job back (pending) for a later claim.
async fn finish(
    db: &mut DbClient,
    owner: &str,
    job: Claimed,
    outcome: Option<Result<Value, String>>,
) -> Result<(), DbError> {
    let owner = owner.to_string();
    let (status, error, result) = match outcome {
        Some(Ok(result)) => ("done", None, Some(result.to_string())),
        Some(Err(e)) => ("dead", Some(e), None),
        None => ("pending", None, None),
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
