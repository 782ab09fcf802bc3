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
