//! Durable jobs: rows of the `job_outbox` table, written in the transaction of the change that
//! caused them. Each shard's dispatcher polls the outbox, claims a few rows with
//! `FOR UPDATE SKIP LOCKED` under a lease (`claimed_by`, `lease_until`), submits each to the
//! per-core queues (the class, timeout and attempts the row carries, else its kind's class and
//! the server's defaults; keyed `durable:{id}`), renews the lease
//! while the job is queued or running, and marks it done (with its effect, keyed by the job id)
//! or dead in one transaction that holds only while the lease is still this dispatcher's. A
//! row whose lease expired (its process died) is claimed again: at-least-once, and a lost lease
//! writes no effect, so each job's effect lands once. A shard holds at most
//! [`MAX_IN_FLIGHT`] claims, so a backlog spreads over the shards and processes that poll.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::worker::{self, Answer};
use super::{job_kinds, JobSpec, Priority, ShardQueues};
use crate::db::{Database, DbClient, DbConn, DbError};

/// How long a claim holds before another process may take the job.
pub const LEASE: Duration = Duration::from_secs(5);
/// Rows one claim takes at most. Claims are written one after another, so this bounds the
/// dispatch rate: 16 gave 2.7k jobs/s on one core, 64 gives 4.3k, as fast as the enqueues came
/// (bench/RESULTS.md, durable jobs).
const BATCH: i64 = 64;
/// Claimed jobs one shard holds at most (queued, running or being recorded): past it the
/// dispatcher claims nothing until some finish, so one shard cannot take a whole backlog under
/// its leases while other processes' shards sit idle.
const MAX_IN_FLIGHT: usize = 2 * BATCH as usize;
/// Claims of one job (each after a crash or lost lease) before it is marked dead.
const MAX_CLAIMS: i32 = 5;

const INSERT: &str =
    "INSERT INTO job_outbox (kind, payload) VALUES ($1, $2::text::jsonb) RETURNING id";
/// A job with its own options; a key already in the outbox inserts nothing (and returns nothing).
const INSERT_WITH_OPTIONS: &str = "INSERT INTO job_outbox \
     (kind, payload, class, max_attempts, timeout_ms, idempotency_key) \
     VALUES ($1, $2::text::jsonb, $3, $4, $5, $6) \
     ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING id";
const BY_KEY: &str = "SELECT id, status FROM job_outbox WHERE idempotency_key = $1";
const CLAIM: &str = "UPDATE job_outbox SET status = 'claimed', claimed_by = $1, \
     lease_until = now() + make_interval(secs => $2), attempts = attempts + 1 \
     WHERE id IN (SELECT id FROM job_outbox \
                  WHERE status = 'pending' OR (status = 'claimed' AND lease_until < now()) \
                  ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) \
     RETURNING id, kind, payload::text, attempts, class, max_attempts, timeout_ms";
/// Records many outcomes at once; only rows this owner still holds are changed (and returned).
const FINISH: &str = "UPDATE job_outbox o SET status = v.status, last_error = v.error, \
     finished_at = CASE WHEN v.status IN ('done', 'dead') THEN now() END, \
     claimed_by = NULL, lease_until = NULL \
     FROM unnest($1::bigint[], $2::text[], $3::text[]) AS v(id, status, error) \
     WHERE o.id = v.id AND o.claimed_by = $4 AND o.status = 'claimed' \
     RETURNING o.id, o.kind, o.status";
const RENEW: &str = "UPDATE job_outbox SET lease_until = now() + make_interval(secs => $3) \
     WHERE id = $1 AND claimed_by = $2 AND status = 'claimed'";
const EFFECTS: &str = "INSERT INTO job_effects (job_id, kind, result, claimed_by) \
     SELECT e.id, e.kind, e.result::jsonb, $4 \
     FROM unnest($1::bigint[], $2::text[], $3::text[]) AS e(id, kind, result)";

/// Writes a durable job on `conn`, inside whatever transaction the caller's write runs in.
/// Returns the job's id.
pub fn insert(conn: &mut DbConn, kind: &str, payload: &Value) -> Result<i64, DbError> {
    let payload = payload.to_string();
    Ok(conn.query_one(INSERT, &[&kind, &payload])?.get(0))
}

/// A job's durable enqueue as written: the API's job with its options resolved.
pub struct Inserted {
    pub id: i64,
    /// `pending` for a new job; the first job's status for a known key.
    pub status: String,
    /// An earlier job had the key: nothing was written.
    pub duplicate: bool,
}

/// Writes a job enqueued through the API with its class, attempts, timeout and key. A key
/// already in the outbox writes nothing and returns the first job.
pub fn insert_spec(conn: &mut DbConn, spec: &JobSpec) -> Result<Inserted, DbError> {
    let payload = spec.payload.to_string();
    let class = spec.class.as_str();
    let max_attempts = i32::try_from(spec.max_attempts).unwrap_or(i32::MAX);
    let timeout_ms = i64::try_from(spec.timeout.as_millis()).unwrap_or(i64::MAX);
    let params: [&(dyn postgres::types::ToSql + Sync); 6] = [
        &spec.kind,
        &payload,
        &class,
        &max_attempts,
        &timeout_ms,
        &spec.key,
    ];
    if let Some(row) = conn.query_opt(INSERT_WITH_OPTIONS, &params)? {
        return Ok(Inserted {
            id: row.get(0),
            status: "pending".into(),
            duplicate: false,
        });
    }
    // Only a key conflicts; its first job committed before this statement ended.
    let first = conn.query_one(BY_KEY, &[&spec.key])?;
    Ok(Inserted {
        id: first.get(0),
        status: first.get(1),
        duplicate: true,
    })
}

struct Claimed {
    id: i64,
    kind: String,
    payload: String,
    claims: i32,
    /// The job's own options; `None` takes the kind's class and the server's defaults.
    class: Option<String>,
    max_attempts: Option<i32>,
    timeout_ms: Option<i64>,
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
            let outcomes = Recorder::start(&queues, &database, owner.clone());
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
                                class: r.get(4),
                                max_attempts: r.get(5),
                                timeout_ms: r.get(6),
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
                    let (held, outcomes) = (InFlight::new(&in_flight), outcomes.clone());
                    queues.runtime.clone().spawn(
                        Priority::Background,
                        Box::pin(async move {
                            let outcome = run(&queues, &mut db, &owner, &job, poll).await;
                            outcomes.push(job.id, outcome, held);
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
    let kind = match job_kinds::find(&job.kind, queues.settings.debug_kinds) {
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
    let class = job
        .class
        .as_deref()
        .and_then(Priority::parse)
        .unwrap_or(kind.class);
    let spec = JobSpec {
        kind: kind.name.to_string(),
        class,
        payload,
        payload_bytes: job.payload.len(),
        key: Some(format!("durable:{}", job.id)),
        max_attempts: job
            .max_attempts
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(queues.settings.max_attempts),
        timeout: job
            .timeout_ms
            .and_then(|ms| u64::try_from(ms).ok())
            .map_or(queues.timeout(class), Duration::from_millis),
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

/// One job's outcome waiting to be written, with its claim slot (released once written).
struct Outcome {
    id: i64,
    /// done, dead, or pending (given back for a later claim).
    status: &'static str,
    error: Option<String>,
    result: Option<String>,
    _held: InFlight,
}

/// Writes the shard's job outcomes, many per statement: while one write is on its way, the
/// outcomes that come meanwhile gather for the next. An outcome is recorded only while this
/// dispatcher still holds the job's lease, and a job's effect lands in the same transaction
/// as its done mark.
struct Recorder {
    pending: RefCell<Vec<Outcome>>,
    waiting: Cell<Option<Waker>>,
}

impl Recorder {
    fn start(queues: &Rc<ShardQueues>, database: &Arc<Database>, owner: String) -> Rc<Recorder> {
        let recorder = Rc::new(Recorder {
            pending: RefCell::default(),
            waiting: Cell::default(),
        });
        let (this, mut db) = (recorder.clone(), database.client());
        queues.runtime.spawn(
            Priority::Background,
            Box::pin(async move {
                loop {
                    let batch = this.next_batch().await;
                    if let Err(e) = record(&mut db, &owner, &batch).await {
                        // The rows stay claimed: their leases run out and they are claimed again.
                        log::warn!(
                            "durable jobs: could not record {} outcomes: {e}",
                            batch.len()
                        );
                    }
                }
            }),
        );
        recorder
    }

    fn push(&self, id: i64, outcome: Option<Result<Value, String>>, held: InFlight) {
        let (status, error, result) = match outcome {
            Some(Ok(result)) => ("done", None, Some(result.to_string())),
            Some(Err(e)) => ("dead", Some(e), None),
            None => ("pending", None, None),
        };
        self.pending.borrow_mut().push(Outcome {
            id,
            status,
            error,
            result,
            _held: held,
        });
        if let Some(writer) = self.waiting.take() {
            writer.wake();
        }
    }

    async fn next_batch(&self) -> Vec<Outcome> {
        futures_lite::future::poll_fn(|cx| {
            let batch = std::mem::take(&mut *self.pending.borrow_mut());
            if batch.is_empty() {
                self.waiting.set(Some(cx.waker().clone()));
                Poll::Pending
            } else {
                Poll::Ready(batch)
            }
        })
        .await
    }
}

/// Writes `batch` in one write; when the database refuses it (not a lost connection), each
/// outcome on its own, so that one refused row does not hold back the others.
async fn record(db: &mut DbClient, owner: &str, batch: &[Outcome]) -> Result<(), DbError> {
    match write_outcomes(db, owner, batch).await {
        Err(e) if !e.is_node_failure() && batch.len() > 1 => {
            let mut first_error = None;
            for outcome in batch.chunks(1) {
                if let Err(e) = write_outcomes(db, owner, outcome).await {
                    first_error.get_or_insert(e);
                }
            }
            first_error.map_or(Ok(()), Err)
        }
        other => other,
    }
}

async fn write_outcomes(db: &mut DbClient, owner: &str, batch: &[Outcome]) -> Result<(), DbError> {
    let owner = owner.to_string();
    // One outcome per job: a job claimed again by this dispatcher (its lease ran out while its
    // outcome waited) may have two; the one that ends it wins.
    let mut by_id: HashMap<i64, &Outcome> = HashMap::with_capacity(batch.len());
    for outcome in batch {
        let kept = by_id.entry(outcome.id).or_insert(outcome);
        if kept.status == "pending" {
            *kept = outcome;
        }
    }
    let ids: Vec<i64> = by_id.keys().copied().collect();
    let statuses: Vec<&'static str> = ids.iter().map(|id| by_id[id].status).collect();
    let errors: Vec<Option<String>> = ids.iter().map(|id| by_id[id].error.clone()).collect();
    let results: HashMap<i64, String> = by_id
        .values()
        .filter_map(|o| Some((o.id, o.result.clone()?)))
        .collect();
    db.write(move |conn| {
        let held = conn.query(FINISH, &[&ids, &statuses, &errors, &owner])?;
        let (mut done_ids, mut kinds, mut done_results) = (Vec::new(), Vec::new(), Vec::new());
        for row in held {
            let (id, status): (i64, &str) = (row.get(0), row.get(2));
            // The effect goes with the done mark actually written, nothing else.
            if let Some(result) = results.get(&id).filter(|_| status == "done") {
                done_ids.push(id);
                kinds.push(row.get::<_, String>(1));
                done_results.push(result.as_str());
            }
        }
        if !done_ids.is_empty() {
            conn.query(EFFECTS, &[&done_ids, &kinds, &done_results, &owner])?;
        }
        Ok(())
    })
    .await
    .map(|_| ())
}
