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
//!
//! The decisions between the SQL are plain functions, tested without a database: what a
//! claimed row runs as (`job_spec`), how many rows to claim (`claim_room`), when a followed
//! job has ended (`settled`), and which of a job's outcomes is written (`one_per_job`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use serde_json::Value;

use super::worker::{self, Answer};
use super::{job_kinds, JobSpec, Priority, QueueSettings, ShardQueues};
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
     ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING \
     RETURNING id, replace(public_tag::text, '-', '')";
const BY_KEY: &str = "SELECT id, status, replace(public_tag::text, '-', '') \
     FROM job_outbox WHERE idempotency_key = $1";
/// A job by the id the API showed: its sequence id and its tag, both or nothing.
const BY_PUBLIC_ID: &str = "SELECT status, kind, attempts, last_error FROM job_outbox \
     WHERE id = $1 AND public_tag = $2::text::uuid";
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
    /// Its public tag, 32 hex digits: the API shows the job as `{id}-{tag}`.
    pub tag: String,
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
            tag: row.get(1),
            status: "pending".into(),
            duplicate: false,
        });
    }
    // Only a key conflicts; its first job committed before this statement ended.
    let first = conn.query_one(BY_KEY, &[&spec.key])?;
    Ok(Inserted {
        id: first.get(0),
        tag: first.get(2),
        status: first.get(1),
        duplicate: true,
    })
}

/// A durable job as `GET /api/enterprise/jobs/{id}-{tag}` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub status: String,
    pub kind: String,
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// The durable job whose API id is `{id}-{tag}` (`tag`: 32 hex digits), if there is one.
pub fn find(conn: &mut DbConn, id: i64, tag: &str) -> Result<Option<Found>, DbError> {
    Ok(conn
        .query_opt(BY_PUBLIC_ID, &[&id, &tag])?
        .map(|row| Found {
            status: row.get(0),
            kind: row.get(1),
            attempts: row.get(2),
            last_error: row.get(3),
        }))
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
                let limit = claim_room(in_flight.held.get()) as i64;
                let owner_claim = owner.clone();
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

/// Rows the next claim may take while `held` claims are in flight.
fn claim_room(held: usize) -> usize {
    MAX_IN_FLIGHT.saturating_sub(held).min(BATCH as usize)
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

/// The job a claimed row asks for, as the queues take it; `Err` when it cannot run and goes
/// dead at once: claimed too often, an unknown kind, or a payload that is not valid for it.
fn job_spec(job: &Claimed, settings: &QueueSettings) -> Result<JobSpec, String> {
    if job.claims > MAX_CLAIMS {
        return Err(format!("claimed {} times without finishing", job.claims));
    }
    let kind = job_kinds::find(&job.kind, settings.debug_kinds)
        .ok_or_else(|| format!("unknown job kind {:?}", job.kind))?;
    let payload: Value = serde_json::from_str(&job.payload).map_err(|e| e.to_string())?;
    (kind.validate)(&payload)?;
    let class = job
        .class
        .as_deref()
        .and_then(Priority::parse)
        .unwrap_or(kind.class);
    Ok(JobSpec {
        kind: kind.name.to_string(),
        class,
        payload,
        payload_bytes: job.payload.len(),
        key: Some(format!("durable:{}", job.id)),
        max_attempts: job
            .max_attempts
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(settings.max_attempts),
        timeout: job
            .timeout_ms
            .and_then(|ms| u64::try_from(ms).ok())
            .map_or(settings.timeouts[class.index()], Duration::from_millis),
    })
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
    let spec = match job_spec(job, &queues.settings) {
        Ok(spec) => spec,
        Err(e) => return Some(Err(e)),
    };
    let (owner, job_id) = (owner.to_string(), job.id);
    let renew_lease = || {
        let owner = owner.clone();
        let renew =
            db.write(move |conn| conn.query(RENEW, &[&job_id, &owner, &LEASE.as_secs_f64()]));
        async move {
            // A lost lease is found at the finish, which then records nothing.
            if let Err(e) = renew.await {
                log::debug!("durable jobs: lease renewal failed: {e}");
            }
        }
    };
    follow(queues, spec, poll, renew_lease).await
}

/// Submits `spec` to the queues and looks at its state until it ends (see [`settled`]),
/// calling `renew_lease` each half lease meanwhile. `None` when the queues did not take it
/// (full or unreachable: the lease runs out and a later claim tries again) or lost it.
async fn follow<Renewal: Future<Output = ()>>(
    queues: &Rc<ShardQueues>,
    spec: JobSpec,
    poll: Duration,
    mut renew_lease: impl FnMut() -> Renewal,
) -> Option<Result<Value, String>> {
    let id = match now(worker::submit(queues, spec)).await {
        Ok(enqueued) => enqueued.view["id"].as_str()?.parse().ok()?,
        Err(_) => return None,
    };
    let mut renewed = queues.runtime.now();
    let mut look_after = FIRST_LOOK.min(poll);
    loop {
        queues.runtime.sleep(look_after).await;
        look_after = (look_after * 2).min(poll);
        let view = now(worker::status(queues, id)).await?;
        if let Some(end) = settled(&view) {
            return Some(end);
        }
        if queues.runtime.now().saturating_duration_since(renewed) >= LEASE / 2 {
            renewed = queues.runtime.now();
            renew_lease().await;
        }
    }
}

/// A job's end as its view tells it: `Ok(result)` when done, `Err(last error)` when dead,
/// `None` while it may still run.
fn settled(view: &Value) -> Option<Result<Value, String>> {
    match view["state"].as_str() {
        Some("done") => Some(Ok(view["result"].clone())),
        Some("dead") => Some(Err(view["last_error"]
            .as_str()
            .unwrap_or("dead")
            .to_string())),
        _ => None,
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
    fn new() -> Rc<Recorder> {
        Rc::new(Recorder {
            pending: RefCell::default(),
            waiting: Cell::default(),
        })
    }

    fn start(queues: &Rc<ShardQueues>, database: &Arc<Database>, owner: String) -> Rc<Recorder> {
        let recorder = Recorder::new();
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

/// One outcome per job: a job claimed again by this dispatcher (its lease ran out while its
/// outcome waited) may have two; the first that ends it wins over a give-back.
fn one_per_job(batch: &[Outcome]) -> HashMap<i64, &Outcome> {
    let mut by_id: HashMap<i64, &Outcome> = HashMap::with_capacity(batch.len());
    for outcome in batch {
        let kept = by_id.entry(outcome.id).or_insert(outcome);
        if kept.status == "pending" {
            *kept = outcome;
        }
    }
    by_id
}

async fn write_outcomes(db: &mut DbClient, owner: &str, batch: &[Outcome]) -> Result<(), DbError> {
    let owner = owner.to_string();
    let by_id = one_per_job(batch);
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::queue::runtime::fake::{counters, lone_shard, small_settings, FakeRuntime};
    use crate::queue::QueueRuntime;

    fn claimed(kind: &str, payload: &str) -> Claimed {
        Claimed {
            id: 42,
            kind: kind.to_string(),
            payload: payload.to_string(),
            claims: 1,
            class: None,
            max_attempts: None,
            timeout_ms: None,
        }
    }

    const COMMISSION: &str = r#"{"user_id":"u1","amount":10}"#;

    #[test]
    fn a_claimed_row_runs_with_its_own_options_or_else_its_kind_s_and_the_defaults() {
        let settings = small_settings();
        let row = claimed("commission", COMMISSION);
        assert_eq!(
            job_spec(&row, &settings),
            Ok(JobSpec {
                kind: "commission".into(),
                class: Priority::Medium,
                payload: json!({"user_id": "u1", "amount": 10}),
                payload_bytes: COMMISSION.len(),
                key: Some("durable:42".into()),
                max_attempts: 3,
                timeout: Duration::from_secs(10),
            })
        );
        let secs = Duration::from_secs;
        // (class, max_attempts, timeout_ms) of the row -> what the job gets.
        let cases = [
            (
                (Some("high"), Some(7), Some(250)),
                (Priority::High, 7, Duration::from_millis(250)),
            ),
            // A class of its own takes that class's timeout.
            (
                (Some("background"), None, None),
                (Priority::Background, 3, secs(60)),
            ),
            // Options that make no sense fall back to the kind's and the server's.
            (
                (Some("urgent"), Some(-1), Some(-5)),
                (Priority::Medium, 3, secs(10)),
            ),
        ];
        for ((class, max_attempts, timeout_ms), expected) in cases {
            let row = Claimed {
                class: class.map(String::from),
                max_attempts,
                timeout_ms,
                ..claimed("commission", COMMISSION)
            };
            let spec = job_spec(&row, &settings).expect("runs");
            assert_eq!(
                (spec.class, spec.max_attempts, spec.timeout),
                expected,
                "{class:?}"
            );
        }
    }

    #[test]
    fn a_row_that_cannot_run_is_dead_at_once() {
        let settings = small_settings();
        let without_debug = QueueSettings {
            debug_kinds: false,
            ..small_settings()
        };
        let cases = [
            (claimed("commission", COMMISSION), &settings, None),
            (
                Claimed {
                    claims: MAX_CLAIMS,
                    ..claimed("commission", COMMISSION)
                },
                &settings,
                None,
            ),
            (
                Claimed {
                    claims: MAX_CLAIMS + 1,
                    ..claimed("commission", COMMISSION)
                },
                &settings,
                Some("claimed 6 times without finishing"),
            ),
            (
                claimed("refund", COMMISSION),
                &settings,
                Some("unknown job kind \"refund\""),
            ),
            (claimed("debug.fail", r#"{"times":1}"#), &settings, None),
            (
                claimed("debug.fail", r#"{"times":1}"#),
                &without_debug,
                Some("unknown job kind \"debug.fail\""),
            ),
            (
                claimed("commission", "{"),
                &settings,
                Some("EOF while parsing an object"),
            ),
            (
                claimed("commission", r#"{"user_id":"u1"}"#),
                &settings,
                Some("payload.amount is required"),
            ),
        ];
        for (row, settings, error) in cases {
            let got = job_spec(&row, settings).err();
            match error {
                None => assert_eq!(got, None, "{} {}", row.kind, row.payload),
                Some(error) => {
                    let got = got.expect("dead");
                    assert!(got.contains(error), "{} {}: {got}", row.kind, row.payload);
                }
            }
        }
    }

    #[test]
    fn a_claim_takes_at_most_a_batch_and_never_past_the_in_flight_limit() {
        let cases = [
            (0, BATCH as usize),
            (MAX_IN_FLIGHT - BATCH as usize, BATCH as usize),
            (MAX_IN_FLIGHT - 10, 10),
            (MAX_IN_FLIGHT, 0),
            (MAX_IN_FLIGHT + 1, 0),
        ];
        for (held, room) in cases {
            assert_eq!(claim_room(held), room, "{held} held");
        }
    }

    #[test]
    fn the_dispatcher_holding_the_most_claims_waits_until_one_is_released() {
        let runtime = FakeRuntime::new();
        let slots = Rc::new(Slots::default());
        let mut held: Vec<InFlight> = (0..MAX_IN_FLIGHT).map(|_| InFlight::new(&slots)).collect();
        let freed = Rc::new(Cell::new(false));
        let (waiter, flag) = (slots.clone(), freed.clone());
        runtime.spawn(
            Priority::Background,
            Box::pin(async move {
                waiter.free().await;
                flag.set(true);
            }),
        );
        runtime.run();
        assert!(!freed.get(), "all {MAX_IN_FLIGHT} slots held");
        held.pop();
        runtime.run();
        assert!(freed.get());
        assert_eq!(slots.held.get(), MAX_IN_FLIGHT - 1);
    }

    #[test]
    fn outcomes_that_come_while_a_write_is_on_its_way_gather_for_the_next() {
        let runtime = FakeRuntime::new();
        let (recorder, slots) = (Recorder::new(), Rc::new(Slots::default()));
        let written = Rc::new(RefCell::new(Vec::new()));
        let (writer, log) = (recorder.clone(), written.clone());
        runtime.spawn(
            Priority::Background,
            Box::pin(async move {
                loop {
                    let batch = writer.next_batch().await;
                    let rows = batch
                        .iter()
                        .map(|o| (o.id, o.status, o.error.clone(), o.result.clone()));
                    log.borrow_mut().push(rows.collect::<Vec<_>>());
                }
            }),
        );
        runtime.run();
        recorder.push(1, Some(Ok(json!({"commission": 1}))), InFlight::new(&slots));
        recorder.push(2, Some(Err("boom".into())), InFlight::new(&slots));
        recorder.push(3, None, InFlight::new(&slots));
        assert_eq!(slots.held.get(), 3, "held until written");
        runtime.run();
        recorder.push(4, None, InFlight::new(&slots));
        runtime.run();
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            *written.borrow(),
            [
                vec![
                    (1, "done", None, some(r#"{"commission":1}"#)),
                    (2, "dead", some("boom"), None),
                    (3, "pending", None, None),
                ],
                vec![(4, "pending", None, None)],
            ]
        );
        assert_eq!(slots.held.get(), 0, "a written batch releases its slots");
    }

    #[test]
    fn of_two_outcomes_of_one_job_the_first_that_ends_it_wins() {
        let slots = Rc::new(Slots::default());
        let outcome = |id, status| Outcome {
            id,
            status,
            error: None,
            result: None,
            _held: InFlight::new(&slots),
        };
        let batch = [
            outcome(1, "pending"),
            outcome(1, "done"),
            outcome(2, "done"),
            outcome(2, "pending"),
            outcome(3, "dead"),
            outcome(3, "done"),
            outcome(4, "pending"),
        ];
        let kept = one_per_job(&batch);
        let mut statuses: Vec<(i64, &str)> = kept.iter().map(|(id, o)| (*id, o.status)).collect();
        statuses.sort();
        assert_eq!(
            statuses,
            [(1, "done"), (2, "done"), (3, "dead"), (4, "pending")]
        );
    }

    /// Where a followed job's end lands: `None` until [`follow`] returns.
    type FollowEnd = Rc<RefCell<Option<Option<Result<Value, String>>>>>;

    /// Follows `spec` on `queues` in a task; its end lands in the returned slot, and each lease
    /// renewal counts in the returned cell.
    fn follow_in_task(
        runtime: &FakeRuntime,
        queues: &Rc<ShardQueues>,
        spec: JobSpec,
    ) -> (FollowEnd, Rc<Cell<u32>>) {
        let (end, renewals) = (Rc::new(RefCell::new(None)), Rc::new(Cell::new(0)));
        let (slot, count, queues) = (end.clone(), renewals.clone(), queues.clone());
        runtime.spawn(
            Priority::Background,
            Box::pin(async move {
                let renew = || {
                    count.set(count.get() + 1);
                    std::future::ready(())
                };
                *slot.borrow_mut() =
                    Some(follow(&queues, spec, Duration::from_secs(1), renew).await);
            }),
        );
        (end, renewals)
    }

    #[test]
    fn a_followed_job_ends_done_once_however_often_it_is_claimed_and_renews_its_lease() {
        let (runtime, queues, _) = lone_shard(small_settings());
        worker::start(&queues);
        let spec = job_spec(&claimed("debug.sleep", r#"{"ms":4000}"#), &queues.settings).unwrap();
        let (first, renewals) = follow_in_task(&runtime, &queues, spec.clone());
        runtime.advance(Duration::from_secs(1));
        // Claimed again (its lease ran out): the key finds the job already running.
        let (second, _) = follow_in_task(&runtime, &queues, spec);
        runtime.advance(Duration::from_millis(2_500));
        assert_eq!(*first.borrow(), None, "still running");
        assert_eq!(renewals.get(), 1, "once after half a lease");
        runtime.advance(Duration::from_secs(1));
        let done = Some(Some(Ok(json!({"slept_ms": 4000, "attempt": 1}))));
        assert_eq!(*first.borrow(), done);
        assert_eq!(*second.borrow(), done);
        assert_eq!(renewals.get(), 1);
        let counters = counters(&queues, Priority::Medium);
        assert_eq!((counters.processed, counters.duplicates), (1, 1));
    }

    #[test]
    fn a_followed_job_ends_dead_with_its_last_error_or_is_given_back_when_refused() {
        let (runtime, queues, _) = lone_shard(small_settings());
        let failing = Claimed {
            max_attempts: Some(1),
            ..claimed("debug.fail", r#"{"times":5}"#)
        };
        let spec = job_spec(&failing, &queues.settings).unwrap();
        // No worker yet, and the class full: the job is refused and given back.
        for _ in 0..queues.settings.max_size {
            queues
                .enqueue(
                    JobSpec {
                        key: None,
                        ..spec.clone()
                    },
                    None,
                )
                .unwrap();
        }
        let (refused, _) = follow_in_task(&runtime, &queues, spec.clone());
        runtime.run();
        assert_eq!(*refused.borrow(), Some(None));
        worker::start(&queues);
        let (dead, renewals) = follow_in_task(&runtime, &queues, spec);
        runtime.advance(Duration::from_millis(100));
        assert_eq!(
            *dead.borrow(),
            Some(Some(Err("planned failure 1 of 5".into())))
        );
        assert_eq!(renewals.get(), 0);
    }
}
