//! One shard's queues: four classes, the job table, dead letters, idempotency keys. Owned by
//! the shard and used from its one thread (`Rc` + `RefCell`, no locks). The methods here decide
//! and count; the tasks that run jobs are in [`super::worker`].

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::Value;

use super::job::{JobId, JobRecord, JobSpec, JobState, Outcome};
use super::mesh::{Enqueued, Mesh, Overrides, Rejected, ReplayError};
use super::report::{queue_histogram, ClassCounters, ClassReport, QueueReport, MAX_TRACKED_MICROS};
use super::retry::retry_delay;
use super::{aged_weight, Priority, QueueRuntime};
use crate::config::QueueConfig;
use crate::shard::Control;

/// Finished jobs whose status stays readable (and whose keys keep deduplicating), per shard.
/// A done job keeps no payload, so each costs its record only.
pub const RETAINED_FINISHED: usize = 10_000;
/// Payload bytes the dead letters of one shard keep at most (a dead letter keeps its payload to
/// be replayed); past it the oldest are dropped, as past `QUEUE_DEAD_LETTER_MAX`.
pub const DEAD_LETTER_MAX_PAYLOAD_BYTES: usize = 16 << 20;

/// The queue settings of one shard, from the configuration.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub workers: [usize; 4],
    pub timeouts: [Duration; 4],
    pub max_size: usize,
    /// Jobs waiting in a class past which new ones are handed to a less-loaded shard.
    pub handoff_watermark: usize,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub dead_letter_max: usize,
    /// Largest payload a job may have, as compact JSON (bytes).
    pub max_payload_bytes: usize,
    /// Whether the debug job kinds are registered.
    pub debug_kinds: bool,
}

impl QueueSettings {
    pub fn from_config(q: &QueueConfig, debug_kinds: bool) -> Self {
        let ms = Duration::from_millis;
        QueueSettings {
            workers: [
                q.high_workers,
                q.medium_workers,
                q.low_workers,
                q.background_workers,
            ],
            timeouts: [
                ms(q.high_timeout_ms),
                ms(q.medium_timeout_ms),
                ms(q.low_timeout_ms),
                ms(q.background_timeout_ms),
            ],
            max_size: q.max_size,
            handoff_watermark: (q.max_size * usize::from(q.handoff_watermark_percent) / 100).max(1),
            max_attempts: q.max_attempts,
            retry_base: ms(q.retry_base_delay_ms),
            retry_max: ms(q.retry_max_delay_ms),
            dead_letter_max: q.dead_letter_max,
            max_payload_bytes: q.max_payload_bytes,
            debug_kinds,
        }
    }
}

struct ClassState {
    waiting: VecDeque<JobId>,
    in_flight: usize,
    retrying: usize,
    weight: u32,
    counters: ClassCounters,
    wait: Histogram<u64>,
    run: Histogram<u64>,
    idle_workers: Vec<Waker>,
}

struct State {
    classes: Vec<ClassState>,
    jobs: HashMap<JobId, JobRecord>,
    finished: VecDeque<JobId>,
    dead: VecDeque<JobId>,
    keys: HashMap<String, JobId>,
    /// Payload bytes of the jobs in `jobs` (a done job's are dropped).
    retained_payload_bytes: usize,
    /// The part of `retained_payload_bytes` that the dead letters hold.
    dead_payload_bytes: usize,
    next_seq: u64,
    start_seq: u64,
    finish_seq: u64,
}

/// A job taken by a worker for one attempt.
pub struct Ticket {
    pub id: JobId,
    pub spec: Rc<JobSpec>,
    pub attempt: u32,
}

/// One shard's queues.
pub struct ShardQueues {
    pub shard: usize,
    pub generation: u64,
    pub settings: QueueSettings,
    pub runtime: Rc<dyn QueueRuntime>,
    pub mesh: Arc<Mesh>,
    /// The monitor's orders; the queues read [`Control::shed_low_priority`].
    control: Arc<Control>,
    state: RefCell<State>,
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_TRACKED_MICROS)
}

/// A pseudo-random fraction from a job and attempt (splitmix64), for retry jitter.
fn jitter(id: JobId, attempt: u32) -> f64 {
    let mut z = id.seq ^ (id.generation << 20) ^ ((id.shard as u64) << 40) ^ u64::from(attempt);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as f64 / u64::MAX as f64
}

impl ShardQueues {
    pub fn new(
        shard: usize,
        generation: u64,
        settings: QueueSettings,
        runtime: Rc<dyn QueueRuntime>,
        mesh: Arc<Mesh>,
        control: Arc<Control>,
    ) -> Rc<Self> {
        let classes = Priority::ALL
            .into_iter()
            .map(|class| ClassState {
                waiting: VecDeque::new(),
                in_flight: 0,
                retrying: 0,
                weight: class.weight(),
                counters: ClassCounters::default(),
                wait: queue_histogram(),
                run: queue_histogram(),
                idle_workers: Vec::new(),
            })
            .collect();
        for class in Priority::ALL {
            mesh.publish_length(shard, class, 0);
        }
        Rc::new(ShardQueues {
            shard,
            generation,
            settings,
            runtime,
            mesh,
            control,
            state: RefCell::new(State {
                classes,
                jobs: HashMap::new(),
                finished: VecDeque::new(),
                dead: VecDeque::new(),
                keys: HashMap::new(),
                retained_payload_bytes: 0,
                dead_payload_bytes: 0,
                next_seq: 0,
                start_seq: 0,
                finish_seq: 0,
            }),
        })
    }

    pub fn timeout(&self, class: Priority) -> Duration {
        self.settings.timeouts[class.index()]
    }

    /// Accepts a job into this shard's queue, or finds the one with the same key.
    pub fn enqueue(
        &self,
        spec: JobSpec,
        handed_off_from: Option<usize>,
    ) -> Result<Enqueued, Rejected> {
        let now = self.runtime.now();
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        let class = spec.class;
        if let Some(id) = spec.key.as_ref().and_then(|k| state.keys.get(k)) {
            let view = state.jobs[id].view(now);
            state.classes[class.index()].counters.duplicates += 1;
            return Ok(Enqueued {
                id: *id,
                duplicate: true,
                view,
            });
        }
        let queue = &mut state.classes[class.index()];
        if queue.waiting.len() >= self.settings.max_size {
            // A hand-off refused here is the sender's to keep or refuse (and count).
            if handed_off_from.is_none() {
                queue.counters.rejected += 1;
            }
            return Err(Rejected::Full);
        }
        let id = JobId {
            shard: self.shard,
            generation: self.generation,
            seq: state.next_seq,
            tag: super::job::random_tag(),
        };
        state.next_seq += 1;
        queue.counters.enqueued += 1;
        if handed_off_from.is_some() {
            queue.counters.handed_in += 1;
        }
        if let Some(key) = &spec.key {
            state.keys.insert(key.clone(), id);
        }
        state.retained_payload_bytes += spec.payload_bytes;
        let record = JobRecord::new(id, spec, handed_off_from, now);
        let view = record.view(now);
        state.jobs.insert(id, record);
        self.push_ready(state, class, id);
        Ok(Enqueued {
            id,
            duplicate: false,
            view,
        })
    }

    fn push_ready(&self, state: &mut State, class: Priority, id: JobId) {
        let queue = &mut state.classes[class.index()];
        queue.waiting.push_back(id);
        self.mesh
            .publish_length(self.shard, class, queue.waiting.len());
        if let Some(worker) = queue.idle_workers.pop() {
            worker.wake();
        }
    }

    /// Counts a job this shard received and handed to another shard.
    pub fn count_handed_off(&self, class: Priority) {
        self.state.borrow_mut().classes[class.index()]
            .counters
            .handed_off += 1;
    }

    /// The next job of `class` for a worker, if one waits.
    pub fn take(&self, class: Priority) -> Option<Ticket> {
        let now = self.runtime.now();
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        let queue = &mut state.classes[class.index()];
        let id = queue.waiting.pop_front()?;
        self.mesh
            .publish_length(self.shard, class, queue.waiting.len());
        queue.in_flight += 1;
        let record = state.jobs.get_mut(&id).expect("a waiting job has a record");
        queue
            .wait
            .saturating_record(micros(now.saturating_duration_since(record.ready_at)));
        record.state = JobState::Running;
        record.attempts += 1;
        record.start_seq = Some(state.start_seq);
        state.start_seq += 1;
        Some(Ticket {
            id,
            spec: record.spec.clone(),
            attempt: record.attempts,
        })
    }

    /// Records how an attempt ended. Returns the delay before the next attempt when the job
    /// is to be retried.
    pub fn finish(&self, id: JobId, outcome: Outcome, ran: Duration) -> Option<Duration> {
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        let record = state.jobs.get_mut(&id)?;
        let class = record.spec.class;
        let queue = &mut state.classes[class.index()];
        queue.in_flight -= 1;
        queue.run.saturating_record(micros(ran));
        let error = match outcome {
            Outcome::Succeeded(result) => {
                queue.counters.processed += 1;
                record.state = JobState::Done;
                record.result = Some(result);
                record.last_error = None;
                record.finish_seq = Some(state.finish_seq);
                state.finish_seq += 1;
                state.retained_payload_bytes -= record.spec.payload_bytes;
                record.spec = Rc::new(record.spec.without_payload());
                Self::retire(state, id);
                return None;
            }
            Outcome::Failed(error) => {
                queue.counters.failed += 1;
                error
            }
            Outcome::TimedOut => {
                queue.counters.timed_out += 1;
                format!(
                    "timed out after {} ms and was cancelled",
                    record.spec.timeout.as_millis()
                )
            }
        };
        record.last_error = Some(error);
        if record.attempts < record.spec.max_attempts {
            queue.counters.retried += 1;
            queue.retrying += 1;
            record.state = JobState::Retrying;
            return Some(retry_delay(
                record.attempts,
                self.settings.retry_base,
                self.settings.retry_max,
                jitter(id, record.attempts),
            ));
        }
        queue.counters.dead += 1;
        record.state = JobState::Dead;
        record.finish_seq = Some(state.finish_seq);
        state.finish_seq += 1;
        state.dead_payload_bytes += record.spec.payload_bytes;
        state.dead.push_back(id);
        // The newest dead letter stays even when its payload alone passes the byte limit.
        while state.dead.len() > self.settings.dead_letter_max
            || (state.dead_payload_bytes > DEAD_LETTER_MAX_PAYLOAD_BYTES && state.dead.len() > 1)
        {
            let dropped = state.dead.pop_front().expect("over the maximum");
            if let Some(record) = state.jobs.get(&dropped) {
                state.classes[record.spec.class.index()]
                    .counters
                    .dead_dropped += 1;
            }
            Self::forget(state, dropped);
        }
        None
    }

    /// A retried job's backoff is over: it waits for a worker again.
    pub fn requeue(&self, id: JobId) {
        let now = self.runtime.now();
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        let Some(record) = state.jobs.get_mut(&id) else {
            return;
        };
        let class = record.spec.class;
        record.state = JobState::Queued;
        record.ready_at = now;
        state.classes[class.index()].retrying -= 1;
        self.push_ready(state, class, id);
    }

    /// Puts a dead letter back in its queue with fresh attempts (and the given overrides).
    pub fn replay(&self, id: JobId, overrides: Overrides) -> Result<Value, ReplayError> {
        let now = self.runtime.now();
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        let record = state.jobs.get_mut(&id).ok_or(ReplayError::NotFound)?;
        if record.state != JobState::Dead {
            return Err(ReplayError::NotDead);
        }
        let class = record.spec.class;
        if state.classes[class.index()].waiting.len() >= self.settings.max_size {
            state.classes[class.index()].counters.rejected += 1;
            return Err(ReplayError::Full);
        }
        let mut spec = (*record.spec).clone();
        if let Some(ms) = overrides.timeout_ms {
            spec.timeout = Duration::from_millis(ms);
        }
        if let Some(n) = overrides.max_attempts {
            spec.max_attempts = n;
        }
        record.spec = Rc::new(spec);
        record.state = JobState::Queued;
        record.attempts = 0;
        record.replays += 1;
        record.ready_at = now;
        record.finish_seq = None;
        let view = record.view(now);
        state.dead_payload_bytes -= record.spec.payload_bytes;
        state.dead.retain(|d| *d != id);
        state.classes[class.index()].counters.replayed += 1;
        self.push_ready(state, class, id);
        Ok(view)
    }

    /// Keeps a finished job readable until newer ones push it out.
    fn retire(state: &mut State, id: JobId) {
        state.finished.push_back(id);
        if state.finished.len() > RETAINED_FINISHED {
            let old = state.finished.pop_front().expect("over the maximum");
            Self::forget(state, old);
        }
    }

    fn forget(state: &mut State, id: JobId) {
        if let Some(record) = state.jobs.remove(&id) {
            state.retained_payload_bytes -= record.spec.payload_bytes;
            if record.state == JobState::Dead {
                state.dead_payload_bytes -= record.spec.payload_bytes;
            }
            if let Some(key) = &record.spec.key {
                if state.keys.get(key) == Some(&id) {
                    state.keys.remove(key);
                }
            }
        }
    }

    pub fn view(&self, id: JobId) -> Option<Value> {
        let now = self.runtime.now();
        self.state.borrow().jobs.get(&id).map(|r| r.view(now))
    }

    pub fn dead_letters(&self) -> Vec<Value> {
        let now = self.runtime.now();
        let state = self.state.borrow();
        state
            .dead
            .iter()
            .map(|id| state.jobs[id].view(now))
            .collect()
    }

    /// Resolves when a job of `class` may be waiting (a worker re-checks with [`Self::take`]).
    pub fn work_available(&self, class: Priority) -> impl Future<Output = ()> + '_ {
        WorkAvailable {
            queues: self,
            class,
            registered: false,
        }
    }

    /// Raises (or restores) each class's weight from the age of its oldest waiting job.
    pub fn refresh_weights(&self) {
        let now = self.runtime.now();
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        for class in Priority::ALL {
            let queue = &mut state.classes[class.index()];
            let oldest = queue
                .waiting
                .front()
                .and_then(|id| state.jobs.get(id))
                .map(|r| now.saturating_duration_since(r.ready_at));
            let weight = aged_weight(class, oldest);
            if weight != queue.weight {
                queue.weight = weight;
                self.runtime.set_weight(class, weight);
            }
        }
    }

    /// Whether `class`'s workers pause: low and background take no new job while the monitor
    /// sheds low-priority work (CPU critical). Their accepted jobs stay queued; a shutdown lets
    /// them run again so that draining can finish them.
    pub fn shedding(&self, class: Priority) -> bool {
        class >= Priority::Low
            && self.control.shed_low_priority()
            && !self.control.is_shutting_down()
    }

    /// No job waiting, running or waiting for a retry.
    pub fn is_idle(&self) -> bool {
        self.state
            .borrow()
            .classes
            .iter()
            .all(|c| c.waiting.is_empty() && c.in_flight == 0 && c.retrying == 0)
    }

    /// The report for the monitor; starts new wait and run intervals.
    pub fn report(&self) -> QueueReport {
        let mut state = self.state.borrow_mut();
        let dead_letters = state.dead.len();
        let classes = Priority::ALL
            .into_iter()
            .zip(state.classes.iter_mut())
            .map(|(class, c)| ClassReport {
                class,
                workers: self.settings.workers[class.index()],
                size: c.waiting.len(),
                in_flight: c.in_flight,
                retrying: c.retrying,
                weight: c.weight,
                counters: c.counters,
                wait: std::mem::replace(&mut c.wait, queue_histogram()),
                run: std::mem::replace(&mut c.run, queue_histogram()),
            })
            .collect();
        QueueReport {
            classes,
            dead_letters,
            retained_payload_bytes: state.retained_payload_bytes,
        }
    }
}

struct WorkAvailable<'a> {
    queues: &'a ShardQueues,
    class: Priority,
    registered: bool,
}

impl Future for WorkAvailable<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.queues.state.borrow_mut();
        let queue = &mut state.classes[self.class.index()];
        if self.registered || !queue.waiting.is_empty() {
            return Poll::Ready(());
        }
        queue.idle_workers.push(cx.waker().clone());
        drop(state);
        self.registered = true;
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::queue::runtime::fake::{counters, job, lone_shard, small_settings};

    fn state(queues: &ShardQueues, id: JobId) -> Value {
        queues.view(id).expect("a known job")["state"].clone()
    }

    fn keyed(class: Priority, key: &str) -> JobSpec {
        JobSpec {
            key: Some(key.to_string()),
            ..job("debug.fail", class, json!({"times": 0}))
        }
    }

    /// Takes the job of `class` and ends its attempt with `outcome`.
    fn attempt(queues: &ShardQueues, class: Priority, outcome: Outcome) -> Option<Duration> {
        let ticket = queues.take(class).expect("a job waits");
        queues.finish(ticket.id, outcome, Duration::from_millis(1))
    }

    /// Enqueues a job of `class` with `payload_bytes` and fails it until it is dead.
    fn dead_letter(queues: &ShardQueues, class: Priority, payload_bytes: usize) -> JobId {
        let spec = JobSpec {
            max_attempts: 1,
            payload_bytes,
            ..job("debug.fail", class, json!({"times": 9}))
        };
        let id = queues.enqueue(spec, None).expect("room").id;
        assert_eq!(attempt(queues, class, Outcome::Failed("no".into())), None);
        id
    }

    #[test]
    fn a_class_gives_its_jobs_out_in_arrival_order_and_only_its_own() {
        let (_, queues, _) = lone_shard(small_settings());
        let spec = |class| job("debug.fail", class, json!({"times": 0}));
        let first = queues.enqueue(spec(Priority::Low), None).unwrap().id;
        let high = queues.enqueue(spec(Priority::High), None).unwrap().id;
        let second = queues.enqueue(spec(Priority::Low), None).unwrap().id;
        assert_eq!(queues.take(Priority::Medium).map(|t| t.id), None);
        assert_eq!(queues.take(Priority::Low).map(|t| t.id), Some(first));
        assert_eq!(queues.take(Priority::High).map(|t| t.id), Some(high));
        let ticket = queues.take(Priority::Low).expect("the second low job");
        assert_eq!((ticket.id, ticket.attempt), (second, 1));
        assert_eq!(queues.take(Priority::Low).map(|t| t.id), None);
        assert_eq!(queues.view(first).unwrap()["start_seq"], 0);
        assert_eq!(queues.view(second).unwrap()["start_seq"], 2);
        assert_eq!(queues.mesh.lengths(Priority::Low), [0]);
    }

    #[test]
    fn a_full_class_refuses_new_jobs_and_counts_the_refusals_it_answers() {
        let (_, queues, _) = lone_shard(small_settings());
        let spec = || job("debug.fail", Priority::Medium, json!({"times": 0}));
        for _ in 0..3 {
            assert!(queues.enqueue(spec(), None).is_ok());
        }
        assert_eq!(queues.mesh.lengths(Priority::Medium), [3]);
        assert_eq!(queues.enqueue(spec(), None).err(), Some(Rejected::Full));
        // A refused hand-off is counted by the shard that keeps or refuses it.
        assert_eq!(queues.enqueue(spec(), Some(1)).err(), Some(Rejected::Full));
        // Another class has its own room.
        let low = job("debug.fail", Priority::Low, json!({"times": 0}));
        assert!(queues.enqueue(low, None).is_ok());
        // A taken job makes room: running jobs do not count against the size.
        assert!(queues.take(Priority::Medium).is_some());
        assert!(queues.enqueue(spec(), Some(1)).is_ok());
        let counters = counters(&queues, Priority::Medium);
        assert_eq!(
            (counters.enqueued, counters.rejected, counters.handed_in),
            (4, 1, 1)
        );
    }

    #[test]
    fn a_key_answers_with_its_first_job_while_that_job_is_remembered() {
        let (_, queues, _) = lone_shard(small_settings());
        let first = queues.enqueue(keyed(Priority::High, "k"), None).unwrap();
        assert!(!first.duplicate);
        let again = queues.enqueue(keyed(Priority::High, "k"), None).unwrap();
        assert!(again.duplicate);
        assert_eq!(again.id, first.id);
        assert_eq!(again.view["state"], "queued");
        // Done, the job still answers for its key.
        attempt(&queues, Priority::High, Outcome::Succeeded(json!(1)));
        let done = queues.enqueue(keyed(Priority::High, "k"), None).unwrap();
        assert_eq!((done.id, done.duplicate), (first.id, true));
        assert_eq!(done.view["state"], "done");
        let counters = counters(&queues, Priority::High);
        assert_eq!((counters.enqueued, counters.duplicates), (1, 2));
        // Another key is another job.
        let other = queues.enqueue(keyed(Priority::High, "k2"), None).unwrap();
        assert!(!other.duplicate && other.id != first.id);
    }

    #[test]
    fn failed_attempts_back_off_longer_each_time_then_the_job_is_dead() {
        let (_, queues, _) = lone_shard(small_settings());
        let id = queues
            .enqueue(job("debug.fail", Priority::Low, json!({"times": 9})), None)
            .unwrap()
            .id;
        let ms = Duration::from_millis;
        // retry_base 200 ms: half of 200 << (attempt - 1) plus up to as much again of jitter.
        for (attempt_no, low, high) in [(1, ms(100), ms(200)), (2, ms(200), ms(400))] {
            let delay = attempt(&queues, Priority::Low, Outcome::Failed("no".into()))
                .expect("attempts left: retried");
            assert!(
                low <= delay && delay <= high,
                "attempt {attempt_no}: {delay:?}"
            );
            assert_eq!(state(&queues, id), "retrying");
            assert!(
                queues.take(Priority::Low).is_none(),
                "not before its backoff"
            );
            assert!(!queues.is_idle(), "a job waiting for its retry is work");
            queues.requeue(id);
            assert_eq!(state(&queues, id), "queued");
        }
        assert_eq!(attempt(&queues, Priority::Low, Outcome::TimedOut), None);
        let view = queues.view(id).unwrap();
        assert_eq!(
            (view["state"].clone(), view["attempts"].clone()),
            (json!("dead"), json!(3))
        );
        assert_eq!(
            view["last_error"],
            "timed out after 1000 ms and was cancelled"
        );
        assert_eq!(queues.dead_letters().len(), 1);
        assert!(queues.is_idle());
        let counters = counters(&queues, Priority::Low);
        assert_eq!(
            (
                counters.failed,
                counters.timed_out,
                counters.retried,
                counters.dead
            ),
            (2, 1, 2, 1)
        );
    }

    #[test]
    fn past_the_dead_letter_maximum_the_oldest_is_forgotten_with_its_key() {
        let (_, queues, _) = lone_shard(small_settings());
        let keyed_dead = JobSpec {
            max_attempts: 1,
            ..keyed(Priority::Medium, "old")
        };
        let oldest = queues.enqueue(keyed_dead, None).unwrap().id;
        attempt(&queues, Priority::Medium, Outcome::Failed("no".into()));
        let second = dead_letter(&queues, Priority::Medium, 10);
        let third = dead_letter(&queues, Priority::Medium, 10);
        let listed: Vec<Value> = queues
            .dead_letters()
            .iter()
            .map(|v| v["id"].clone())
            .collect();
        assert_eq!(
            listed,
            [json!(second.to_string()), json!(third.to_string())]
        );
        assert_eq!(queues.view(oldest), None);
        let counters = counters(&queues, Priority::Medium);
        assert_eq!((counters.dead, counters.dead_dropped), (3, 1));
        // Its key is free again: the same key makes a new job.
        let fresh = queues
            .enqueue(keyed(Priority::Medium, "old"), None)
            .unwrap();
        assert!(!fresh.duplicate);
    }

    #[test]
    fn dead_letters_keep_their_payloads_up_to_a_byte_limit_but_always_the_newest() {
        let (_, queues, _) = lone_shard(small_settings());
        let big = DEAD_LETTER_MAX_PAYLOAD_BYTES * 2 / 3;
        let first = dead_letter(&queues, Priority::Low, big);
        assert_eq!(queues.report().retained_payload_bytes, big);
        let second = dead_letter(&queues, Priority::Low, big);
        assert_eq!(queues.view(first), None, "two would pass the byte limit");
        assert!(queues.view(second).is_some());
        assert_eq!(queues.report().retained_payload_bytes, big);
        let huge = dead_letter(&queues, Priority::Low, DEAD_LETTER_MAX_PAYLOAD_BYTES + 1);
        assert_eq!(queues.view(second), None);
        assert!(
            queues.view(huge).is_some(),
            "the newest stays even alone past it"
        );
        let report = queues.report();
        assert_eq!(report.dead_letters, 1);
        assert_eq!(
            report.retained_payload_bytes,
            DEAD_LETTER_MAX_PAYLOAD_BYTES + 1
        );
        assert_eq!(
            report.classes[Priority::Low.index()].counters.dead_dropped,
            2
        );
    }

    #[test]
    fn a_done_job_keeps_its_result_and_drops_its_payload() {
        let (_, queues, _) = lone_shard(small_settings());
        let spec = job(
            "debug.fail",
            Priority::High,
            json!({"times": 0, "pad": "x".repeat(100)}),
        );
        let bytes = spec.payload_bytes;
        let id = queues.enqueue(spec, None).unwrap().id;
        assert_eq!(queues.report().retained_payload_bytes, bytes);
        let ticket = queues.take(Priority::High).unwrap();
        assert_eq!(ticket.spec.payload["pad"].as_str().map(str::len), Some(100));
        assert_eq!(
            queues.finish(id, Outcome::Succeeded(json!({"ok": true})), Duration::ZERO),
            None
        );
        assert_eq!(queues.report().retained_payload_bytes, 0);
        let view = queues.view(id).unwrap();
        assert_eq!(
            (view["state"].clone(), view["result"].clone()),
            (json!("done"), json!({"ok": true}))
        );
        assert_eq!(view["finish_seq"], 0);
        assert_eq!(counters(&queues, Priority::High).processed, 1);
        // The running attempt's ticket still holds the payload it started with; the record not.
        let state = queues.state.borrow();
        assert_eq!(state.jobs[&id].spec.payload, Value::Null);
    }

    #[test]
    fn a_replay_puts_a_dead_letter_back_with_fresh_attempts_and_its_overrides() {
        let (_, queues, _) = lone_shard(small_settings());
        let unknown = JobId {
            shard: 0,
            generation: 1,
            seq: 99,
            tag: 0,
        };
        assert_eq!(
            queues.replay(unknown, Overrides::default()),
            Err(ReplayError::NotFound)
        );
        let id = dead_letter(&queues, Priority::Medium, 7);
        let overrides = Overrides {
            timeout_ms: Some(250),
            max_attempts: Some(4),
        };
        // A full class takes no replay.
        let filler = || job("debug.fail", Priority::Medium, json!({"times": 0}));
        for _ in 0..3 {
            queues.enqueue(filler(), None).unwrap();
        }
        assert_eq!(queues.replay(id, overrides), Err(ReplayError::Full));
        for _ in 0..3 {
            attempt(&queues, Priority::Medium, Outcome::Succeeded(json!(0)));
        }
        let view = queues.replay(id, overrides).expect("replayed");
        assert_eq!(
            [
                &view["state"],
                &view["attempts"],
                &view["replays"],
                &view["max_attempts"],
                &view["timeout_ms"]
            ],
            [
                &json!("queued"),
                &json!(0),
                &json!(1),
                &json!(4),
                &json!(250)
            ]
        );
        assert_eq!(queues.replay(id, overrides), Err(ReplayError::NotDead));
        assert!(queues.dead_letters().is_empty());
        assert_eq!(
            queues.report().retained_payload_bytes,
            7,
            "queued again, still its payload"
        );
        let ticket = queues.take(Priority::Medium).expect("waits again");
        assert_eq!((ticket.id, ticket.attempt), (id, 1));
        let counters = counters(&queues, Priority::Medium);
        assert_eq!((counters.replayed, counters.rejected), (1, 1));
    }

    #[test]
    fn the_report_gives_gauges_and_the_interval_s_waits() {
        let (runtime, queues, _) = lone_shard(small_settings());
        let spec = || job("debug.fail", Priority::Background, json!({"times": 0}));
        queues.enqueue(spec(), None).unwrap();
        queues.enqueue(spec(), None).unwrap();
        runtime.advance(Duration::from_millis(250));
        queues.take(Priority::Background).unwrap();
        let report = queues.report();
        let background = &report.classes[Priority::Background.index()];
        assert_eq!(
            (background.size, background.in_flight, background.retrying),
            (1, 1, 0)
        );
        assert_eq!(report.queued(), 1);
        assert_eq!(background.wait.len(), 1);
        let waited = background.wait.max();
        assert!((247_000..=253_000).contains(&waited), "{waited} µs");
        assert!(
            queues.report().classes[Priority::Background.index()]
                .wait
                .is_empty(),
            "a new interval"
        );
    }

    #[test]
    fn a_class_whose_oldest_job_waits_gets_more_weight_until_it_is_taken() {
        let (runtime, queues, _) = lone_shard(small_settings());
        queues
            .enqueue(
                job("debug.fail", Priority::Background, json!({"times": 0})),
                None,
            )
            .unwrap();
        queues.refresh_weights();
        assert_eq!(runtime.weights(), [8, 4, 2, 1], "no wait yet");
        runtime.advance(Duration::from_secs(2));
        queues.refresh_weights();
        assert_eq!(runtime.weights(), [8, 4, 2, 3], "two aging steps");
        assert_eq!(
            queues.report().classes[Priority::Background.index()].weight,
            3
        );
        queues.take(Priority::Background).unwrap();
        queues.refresh_weights();
        assert_eq!(runtime.weights(), [8, 4, 2, 1]);
    }

    #[test]
    fn shedding_pauses_low_and_background_until_a_shutdown_drains_them() {
        let (_, queues, control) = lone_shard(small_settings());
        let paused = || Priority::ALL.map(|class| queues.shedding(class));
        assert_eq!(paused(), [false; 4]);
        control.set_shed_low_priority(true);
        assert_eq!(paused(), [false, false, true, true]);
        control.begin_shutdown();
        assert_eq!(paused(), [false; 4]);
    }
}
