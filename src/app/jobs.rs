//! The job endpoints: enqueue, status by id, dead letters and their replay. Operators only
//! (the route table says so).
//!
//! A job's id carries 128 random bits (in memory, `shard.generation.seq-tag`) or 122 (durable,
//! `outbox id-tag`): a well-formed id that names no job, a guessed one above all, answers 404.
//! Jobs carry no owner: only operators enqueue and read them.

use std::rc::Rc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::handlers::{contains_nul, parse_json_body, strict_json};
use crate::db::DbClient;
use crate::http::{quote_input, Reply, Request, Response, StatusCode};
use crate::queue::job::json_size;
use crate::queue::mesh::{Enqueued, Overrides, Rejected, ReplayError};
use crate::queue::worker::{self, Answer};
use crate::queue::{durable, job_kinds, JobId, JobSpec, Priority, ShardQueues};

const ACCEPTED: StatusCode = StatusCode(202);
const CONFLICT: StatusCode = StatusCode(409);
/// Longest per-job timeout an enqueue or replay may ask for.
const MAX_JOB_TIMEOUT_MS: u64 = 3_600_000;
/// Longest idempotency key accepted.
const MAX_KEY_BYTES: usize = 255;

/// `POST /api/enterprise/jobs` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnqueueBody {
    kind: String,
    class: Option<String>,
    #[serde(default, deserialize_with = "strict_json")]
    payload: Value,
    key: Option<String>,
    max_attempts: Option<u32>,
    timeout_ms: Option<u64>,
    /// Written to the database's outbox and run from there (at-least-once, across restarts).
    #[serde(default)]
    durable: bool,
}

/// `POST /api/enterprise/jobs/dead/{id}/replay` body (optional).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    max_attempts: Option<u32>,
    timeout_ms: Option<u64>,
}

fn bad_request(message: &str) -> Response {
    Response::error(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Response> {
    parse_json_body(body).map_err(|e| e.response("bad_request", "invalid JSON body"))
}

/// Whether `key` may be an idempotency key: 1 to [`MAX_KEY_BYTES`] visible ASCII characters
/// (no spaces, no control bytes, nothing a lossy conversion could make equal to another key).
fn valid_key(key: &[u8]) -> bool {
    (1..=MAX_KEY_BYTES).contains(&key.len()) && key.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// The job's idempotency key, from the body or else the `Idempotency-Key` header.
fn idempotency_key(
    body_key: Option<String>,
    header_key: Option<&[u8]>,
) -> Result<Option<String>, Response> {
    let key = match body_key {
        Some(key) => Some(key.into_bytes()),
        None => header_key.map(<[u8]>::to_vec),
    };
    match key {
        None => Ok(None),
        Some(key) if valid_key(&key) => Ok(Some(
            String::from_utf8(key).expect("visible ASCII is UTF-8"),
        )),
        Some(_) => Err(bad_request(&format!(
            "the idempotency key must be 1 to {MAX_KEY_BYTES} visible ASCII characters (no spaces)"
        ))),
    }
}

fn check_limits(max_attempts: Option<u32>, timeout_ms: Option<u64>) -> Result<(), Response> {
    if max_attempts.is_some_and(|n| !(1..=100).contains(&n)) {
        return Err(bad_request("max_attempts must be from 1 to 100"));
    }
    if timeout_ms.is_some_and(|ms| !(1..=MAX_JOB_TIMEOUT_MS).contains(&ms)) {
        return Err(bad_request(&format!(
            "timeout_ms must be from 1 to {MAX_JOB_TIMEOUT_MS}"
        )));
    }
    Ok(())
}

/// Checks an enqueue body as `POST /api/enterprise/jobs` does, without a queue to submit it to:
/// the 400 or 413 it would answer, if any. The entry point of the body fuzz target (tests/fuzz).
pub fn check_enqueue_body(
    body: &[u8],
    debug_kinds: bool,
    max_payload_bytes: usize,
) -> Result<(), Response> {
    checked_enqueue(body, None, debug_kinds, max_payload_bytes).map(drop)
}

/// A replay's optional body: empty (or blank) means no overrides.
fn replay_body(body: &[u8]) -> Result<ReplayBody, Response> {
    let body: ReplayBody = if body.iter().all(u8::is_ascii_whitespace) {
        ReplayBody::default()
    } else {
        parse_json(body)?
    };
    check_limits(body.max_attempts, body.timeout_ms)?;
    Ok(body)
}

/// Checks a replay body as `POST /api/enterprise/jobs/dead/{id}/replay` does: the 400 it would
/// answer, if any. The entry point of the body fuzz target (tests/fuzz).
pub fn check_replay_body(body: &[u8]) -> Result<(), Response> {
    replay_body(body).map(drop)
}

/// An enqueue body that passed every check, its kind and class resolved.
struct CheckedEnqueue {
    body: EnqueueBody,
    kind: &'static job_kinds::Kind,
    class: Priority,
    key: Option<String>,
    /// The payload's size as compact JSON.
    payload_bytes: usize,
}

/// Parses and checks an enqueue body (`header_key`: the `Idempotency-Key` header, used when the
/// body has no key), or the 400 or 413 that says what is wrong.
fn checked_enqueue(
    body: &[u8],
    header_key: Option<&[u8]>,
    debug: bool,
    max_payload_bytes: usize,
) -> Result<CheckedEnqueue, Response> {
    let mut body: EnqueueBody = parse_json(body)?;
    let kind = job_kinds::find(&body.kind, debug).ok_or_else(|| {
        bad_request(&format!(
            "unknown job kind {}; kinds: {}",
            quote_input(&body.kind),
            job_kinds::names(debug).join(", ")
        ))
    })?;
    let class = match body.class.as_deref() {
        None => kind.class,
        Some(name) => Priority::parse(name).ok_or_else(|| {
            bad_request(&format!(
                "unknown class {}; classes: high, medium, low, background",
                quote_input(name)
            ))
        })?,
    };
    (kind.validate)(&body.payload).map_err(|e| bad_request(&e))?;
    check_limits(body.max_attempts, body.timeout_ms)?;
    let payload_bytes = json_size(&body.payload);
    if payload_bytes > max_payload_bytes {
        return Err(Response::error(
            StatusCode(413),
            "payload_too_large",
            &format!(
                "the job's payload has {payload_bytes} bytes as compact JSON; at most {max_payload_bytes} are accepted"
            ),
        ));
    }
    let key = idempotency_key(body.key.take(), header_key)?;
    Ok(CheckedEnqueue {
        body,
        kind,
        class,
        key,
        payload_bytes,
    })
}

/// Turns the request into a job spec, or the 400 that says what is wrong.
fn spec(queues: &ShardQueues, request: &Request<'_>) -> Result<(JobSpec, bool), Response> {
    let CheckedEnqueue {
        body,
        kind,
        class,
        key,
        payload_bytes,
    } = checked_enqueue(
        request.body,
        request.header("Idempotency-Key"),
        queues.settings.debug_kinds,
        queues.settings.max_payload_bytes,
    )?;
    let spec = JobSpec {
        kind: kind.name.to_string(),
        class,
        payload: body.payload,
        payload_bytes,
        key,
        max_attempts: body.max_attempts.unwrap_or(queues.settings.max_attempts),
        timeout: body
            .timeout_ms
            .map_or(queues.timeout(class), Duration::from_millis),
    };
    Ok((spec, body.durable))
}

fn enqueued(result: Result<Enqueued, Rejected>) -> Response {
    match result {
        Ok(e) => Response::json(
            if e.duplicate {
                StatusCode::OK
            } else {
                ACCEPTED
            },
            json!({ "job": e.view, "duplicate": e.duplicate }).to_string(),
        ),
        Err(Rejected::Full) => queue_full(),
        Err(Rejected::Unavailable) => unavailable(),
    }
}

fn queue_full() -> Response {
    Response::error(
        StatusCode::TOO_MANY_REQUESTS,
        "queue_full",
        "the job's queue is full on every shard that could take it; retry later",
    )
    .with_header("Retry-After", "1")
}

fn unavailable() -> Response {
    Response::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "shard_unavailable",
        "the shard that owns this job did not answer; retry later",
    )
    .with_header("Retry-After", "1")
}

fn answer<T: 'static>(answer: Answer<T>, respond: fn(T) -> Response) -> Reply {
    match answer {
        Answer::Now(value) => respond(value).into(),
        Answer::Later(future) => Reply::Later(Box::pin(async move { respond(future.await) })),
    }
}

/// `POST /api/enterprise/jobs`: 202 with the job, 200 with the existing job for a known key,
/// 400 for a bad body, 429 with `Retry-After` when the queue is full.
/// With `"durable": true` the job is written to the outbox on the primary (202 with its outbox
/// id once committed; 503 without a database).
pub fn enqueue(
    queues: &Rc<ShardQueues>,
    db: Option<&mut DbClient>,
    request: &Request<'_>,
) -> Reply {
    match spec(queues, request) {
        Ok((spec, false)) => answer(worker::submit(queues, spec), enqueued),
        Ok((spec, true)) => enqueue_durable(db, spec),
        Err(response) => response.into(),
    }
}

fn enqueue_durable(db: Option<&mut DbClient>, spec: JobSpec) -> Reply {
    let Some(db) = db else {
        return Response::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "durable_jobs_need_a_database",
            "durable jobs are kept in the database and this server runs without one (DATABASE_URL is unset)",
        )
        .into();
    };
    if contains_nul(&spec.payload) {
        // The outbox keeps payloads as jsonb, which has no NUL character.
        return bad_request("a durable job's payload cannot contain the NUL character (\\u0000)")
            .into();
    }
    let pending = db.write(move |conn| durable::insert_spec(conn, &spec));
    Reply::Later(Box::pin(async move {
        match pending.await {
            Ok(written) => {
                let job = written.value;
                Response::json(
                    if job.duplicate {
                        StatusCode::OK
                    } else {
                        ACCEPTED
                    },
                    json!({
                        "job": {
                            "id": format!("{}-{}", job.id, job.tag),
                            "durable": true,
                            "state": job.status,
                        },
                        "duplicate": job.duplicate,
                    })
                    .to_string(),
                )
            }
            Err(e) => crate::app::users::db_error(&e),
        }
    }))
}

const ID_SHAPES: &str =
    "ids look like 0.1.42-<32 hex digits> (in memory) or 42-<32 hex digits> (durable)";

fn job_id(text: &str) -> Result<JobId, Response> {
    text.parse().map_err(|()| {
        bad_request(&format!(
            "invalid job id {}; {ID_SHAPES}",
            quote_input(text)
        ))
    })
}

/// A durable job's id, `outbox id-tag`: the outbox id and the tag's 32 hex digits.
fn durable_id(text: &str) -> Option<(i64, String)> {
    let (id, tag) = text.split_once('-')?;
    if tag.len() != 32 || !tag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    // Digits only, as the API writes them (no sign, no leading zero).
    let id = id
        .parse::<i64>()
        .ok()
        .filter(|n| *n > 0 && n.to_string() == id)?;
    Some((id, tag.to_ascii_lowercase()))
}

fn not_found(id: &str) -> Response {
    Response::error(
        StatusCode::NOT_FOUND,
        "job_not_found",
        &format!("no job {id} (finished jobs are kept for a while, then forgotten)"),
    )
}

/// `GET /api/enterprise/jobs/{id}`: a job in memory, or a durable one from the outbox (on the
/// primary).
pub fn status(queues: &Rc<ShardQueues>, db: Option<&mut DbClient>, request: &Request<'_>) -> Reply {
    let text = request.path.trim_start_matches("/api/enterprise/jobs/");
    if let Some((id, tag)) = durable_id(text) {
        return durable_status(db, id, tag);
    }
    let id = match job_id(text) {
        Ok(id) => id,
        Err(response) => return response.into(),
    };
    answer(worker::status(queues, id), |view| match view {
        Some(view) => Response::json(StatusCode::OK, json!({ "job": view }).to_string()),
        None => not_found("with that id"),
    })
}

fn durable_status(db: Option<&mut DbClient>, id: i64, tag: String) -> Reply {
    let Some(db) = db else {
        return not_found("with that id").into();
    };
    let public_id = format!("{id}-{tag}");
    let pending = db.write(move |conn| durable::find(conn, id, &tag));
    Reply::Later(Box::pin(async move {
        match pending.await {
            Ok(written) => match written.value {
                Some(job) => Response::json(
                    StatusCode::OK,
                    json!({
                        "job": {
                            "id": public_id,
                            "durable": true,
                            "kind": job.kind,
                            "state": job.status,
                            "attempts": job.attempts,
                            "last_error": job.last_error,
                        }
                    })
                    .to_string(),
                ),
                None => not_found("with that id"),
            },
            Err(e) => crate::app::users::db_error(&e),
        }
    }))
}

/// `GET /api/enterprise/jobs/dead`: every shard's dead letters.
pub fn dead_letters(queues: &Rc<ShardQueues>) -> Reply {
    let all = worker::dead_letters(queues);
    Reply::Later(Box::pin(async move {
        let jobs = all.await;
        Response::json(
            StatusCode::OK,
            json!({ "count": jobs.len(), "jobs": jobs }).to_string(),
        )
    }))
}

/// `POST /api/enterprise/jobs/dead/{id}/replay`, optionally with new `timeout_ms` and
/// `max_attempts`.
pub fn replay(queues: &Rc<ShardQueues>, request: &Request<'_>) -> Reply {
    let rest = request
        .path
        .trim_start_matches("/api/enterprise/jobs/dead/");
    let Some(text) = rest.strip_suffix("/replay") else {
        return Response::error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route for {}", quote_input(request.path)),
        )
        .into();
    };
    let id = match job_id(text) {
        Ok(id) => id,
        Err(response) => return response.into(),
    };
    let body = match replay_body(request.body) {
        Ok(body) => body,
        Err(response) => return response.into(),
    };
    let overrides = Overrides {
        timeout_ms: body.timeout_ms,
        max_attempts: body.max_attempts,
    };
    answer(
        worker::replay(queues, id, overrides),
        |result| match result {
            Ok(view) => Response::json(ACCEPTED, json!({ "job": view }).to_string()),
            Err(ReplayError::NotFound) => not_found("with that id"),
            Err(ReplayError::NotDead) => Response::error(
                CONFLICT,
                "job_not_dead",
                "only a dead-lettered job can be replayed",
            ),
            Err(ReplayError::Full) => queue_full(),
            Err(ReplayError::Unavailable) => unavailable(),
        },
    )
}
