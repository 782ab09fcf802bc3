//! Jobs: identity, what was asked, where a job stands.
//!
//! Everything needed to run a job again (kind, class, payload, key, limits) is in its
//! [`JobSpec`], and nothing in it refers to the shard's memory: a spec can travel to another
//! shard, and a durable job's outbox row (`super::durable`) carries the same fields, from which
//! its dispatcher builds the spec again on each claim.

use std::fmt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::Priority;

/// A job's identity: the shard that owns it, that shard's generation (a restarted shard starts
/// its sequence again), a sequence number, and 128 random bits, so that no one finds a job by
/// guessing its id. Written `shard.generation.seq-tag` (the tag as 32 hex digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId {
    pub shard: usize,
    pub generation: u64,
    pub seq: u64,
    pub tag: u128,
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}-{:032x}",
            self.shard, self.generation, self.seq, self.tag
        )
    }
}

impl std::str::FromStr for JobId {
    type Err = ();
    fn from_str(text: &str) -> Result<JobId, ()> {
        let (numbers, tag) = text.split_once('-').ok_or(())?;
        if tag.len() != 32 || !tag.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(());
        }
        let mut parts = numbers.split('.');
        let mut next = || parts.next().and_then(|p| p.parse::<u64>().ok()).ok_or(());
        let id = JobId {
            shard: usize::try_from(next()?).map_err(|_| ())?,
            generation: next()?,
            seq: next()?,
            tag: u128::from_str_radix(tag, 16).map_err(|_| ())?,
        };
        match parts.next() {
            None => Ok(id),
            Some(_) => Err(()),
        }
    }
}

/// Tags drawn from the OS at once, per thread.
const TAGS_PER_DRAW: usize = 64;

/// 128 random bits for a new job's id, from the OS's random source (drawn
/// [`TAGS_PER_DRAW`] at a time, so an enqueue seldom costs a system call).
pub fn random_tag() -> u128 {
    thread_local! {
        static TAGS: std::cell::RefCell<Vec<u128>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    TAGS.with(|tags| {
        let mut tags = tags.borrow_mut();
        if tags.is_empty() {
            let mut bytes = [0u8; 16 * TAGS_PER_DRAW];
            // Only fails where the OS has no random source at all, which nothing here can run
            // without.
            getrandom::getrandom(&mut bytes).expect("the OS random source failed");
            tags.extend(
                bytes
                    .chunks_exact(16)
                    .map(|c| u128::from_le_bytes(c.try_into().expect("16 bytes"))),
            );
        }
        tags.pop().expect("just filled")
    })
}

/// What was asked: `Send`, so it can travel to another shard.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    pub kind: String,
    pub class: Priority,
    pub payload: Value,
    /// The payload's size as compact JSON, counted against the shard's retained bytes while
    /// the job keeps its payload.
    pub payload_bytes: usize,
    /// Idempotency key: a second enqueue with the same key returns the first job.
    pub key: Option<String>,
    pub max_attempts: u32,
    pub timeout: Duration,
}

/// The size of `value` written as compact JSON, counted without building the text.
pub fn json_size(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, value).expect("a Value always serializes");
    counter.0
}

impl JobSpec {
    /// The same job without its payload: what a finished job keeps (its status and key).
    pub fn without_payload(&self) -> JobSpec {
        JobSpec {
            kind: self.kind.clone(),
            class: self.class,
            payload: Value::Null,
            payload_bytes: 0,
            key: self.key.clone(),
            max_attempts: self.max_attempts,
            timeout: self.timeout,
        }
    }
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a worker.
    Queued,
    Running,
    /// Failed or timed out; waits for its next attempt.
    Retrying,
    Done,
    /// Out of attempts: in the dead-letter list.
    Dead,
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded(Value),
    Failed(String),
    /// Cancelled at its timeout: the future was dropped.
    TimedOut,
}

/// A job on its owning shard.
#[derive(Debug)]
pub struct JobRecord {
    pub id: JobId,
    pub spec: Rc<JobSpec>,
    pub state: JobState,
    /// Attempts started so far.
    pub attempts: u32,
    /// Times it was replayed from the dead letters.
    pub replays: u32,
    pub enqueued_at: Instant,
    /// When it last became ready to run (wait time is measured from here).
    pub ready_at: Instant,
    /// The shard that received the request when it was handed off to this one.
    pub handed_off_from: Option<usize>,
    pub last_error: Option<String>,
    pub result: Option<Value>,
    /// Order in which the shard's jobs started and finished (for tests and tracing).
    pub start_seq: Option<u64>,
    pub finish_seq: Option<u64>,
}

impl JobRecord {
    pub fn new(id: JobId, spec: JobSpec, handed_off_from: Option<usize>, now: Instant) -> Self {
        JobRecord {
            id,
            spec: Rc::new(spec),
            state: JobState::Queued,
            attempts: 0,
            replays: 0,
            enqueued_at: now,
            ready_at: now,
            handed_off_from,
            last_error: None,
            result: None,
            start_seq: None,
            finish_seq: None,
        }
    }

    /// The job as the API shows it.
    pub fn view(&self, now: Instant) -> Value {
        json!({
            "id": self.id.to_string(),
            "shard": self.id.shard,
            "kind": self.spec.kind,
            "class": self.spec.class,
            "state": self.state,
            "attempts": self.attempts,
            "max_attempts": self.spec.max_attempts,
            "timeout_ms": self.spec.timeout.as_millis() as u64,
            "key": self.spec.key,
            "replays": self.replays,
            "age_ms": now.saturating_duration_since(self.enqueued_at).as_millis() as u64,
            "handed_off_from": self.handed_off_from,
            "last_error": self.last_error,
            "result": self.result,
            "start_seq": self.start_seq,
            "finish_seq": self.finish_seq,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_round_trip() {
        let id = JobId {
            shard: 1,
            generation: 2,
            seq: 30,
            tag: 0xab,
        };
        let text = "1.2.30-000000000000000000000000000000ab";
        assert_eq!(id.to_string(), text);
        assert_eq!(text.parse::<JobId>(), Ok(id));
        for bad in [
            "",
            "1.2.30",
            "1.2-000000000000000000000000000000ab",
            "1.2.3.4-000000000000000000000000000000ab",
            "a.b.c-000000000000000000000000000000ab",
            "1.2.30-00000000000000000000000000000ab",
            "1.2.30-+0000000000000000000000000000ab",
            "1.2.30-000000000000000000000000000000ag",
        ] {
            assert!(bad.parse::<JobId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn job_tags_are_fresh() {
        let tags: std::collections::HashSet<u128> = (0..1_000).map(|_| random_tag()).collect();
        assert_eq!(tags.len(), 1_000);
    }
}
