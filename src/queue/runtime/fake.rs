//! A deterministic, single-threaded [`QueueRuntime`] for unit tests, and a shard's queues
//! built on it.
//!
//! Nothing runs until the test says so: [`FakeRuntime::run`] polls the runnable tasks until
//! none is left, and time moves only in [`FakeRuntime::advance`], which fires the timers due in
//! deadline order and runs what they wake after each. Runnable tasks take turns by class
//! weight ([`Turns`], adjusted by [`QueueRuntime::set_weight`]), as the trait asks of an engine
//! without weighted scheduling; with one class runnable, its tasks run in the order they woke.
//! A dropped sleep's timer is not disarmed: at its deadline it wakes its task once more, a
//! spurious wake-up that every future must take in its stride anyway.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures_lite::future::BoxedLocal;
use serde_json::Value;

use crate::queue::job::json_size;
use crate::queue::report::ClassCounters;
use crate::queue::{JobSpec, Mesh, Priority, QueueRuntime, QueueSettings, ShardQueues, Turns};
use crate::shard::Control;

/// Polls past which [`FakeRuntime::run`] decides a test's tasks never settle.
const MAX_POLLS_PER_RUN: usize = 1_000_000;

/// Tasks woken and not yet polled, by class. Behind a `Mutex` only because a [`Waker`] must be
/// `Send`; everything runs on the test's thread.
#[derive(Default)]
struct Runnable {
    lines: [VecDeque<usize>; 4],
    queued: HashSet<usize>,
}

struct TaskWaker {
    id: usize,
    class: Priority,
    runnable: Arc<Mutex<Runnable>>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut runnable = self.runnable.lock().expect("one thread");
        if runnable.queued.insert(self.id) {
            runnable.lines[self.class.index()].push_back(self.id);
        }
    }
}

struct Task {
    future: BoxedLocal<()>,
    waker: Waker,
}

/// A timer armed by a pending sleep: its deadline and the task to wake then.
struct Timer {
    at: Instant,
    waker: Waker,
}

/// See the module note.
pub struct FakeRuntime {
    clock: Rc<Cell<Instant>>,
    timers: Rc<RefCell<Vec<Timer>>>,
    tasks: RefCell<HashMap<usize, Task>>,
    next_task: Cell<usize>,
    runnable: Arc<Mutex<Runnable>>,
    turns: RefCell<Turns>,
    weights: RefCell<[u32; 4]>,
    /// The class of every task poll, in order.
    polls: RefCell<Vec<Priority>>,
}

impl FakeRuntime {
    pub fn new() -> Rc<FakeRuntime> {
        Rc::new(FakeRuntime {
            clock: Rc::new(Cell::new(Instant::now())),
            timers: Rc::default(),
            tasks: RefCell::default(),
            next_task: Cell::new(0),
            runnable: Arc::default(),
            turns: RefCell::default(),
            weights: RefCell::new(Priority::ALL.map(Priority::weight)),
            polls: RefCell::default(),
        })
    }

    /// Polls runnable tasks, by class turn, until none is left.
    pub fn run(&self) {
        for _ in 0..MAX_POLLS_PER_RUN {
            let next = {
                let mut runnable = self.runnable.lock().expect("one thread");
                let ready = std::array::from_fn(|i| !runnable.lines[i].is_empty());
                self.turns.borrow_mut().next(ready).map(|class| {
                    let id = runnable.lines[class.index()]
                        .pop_front()
                        .expect("a ready line has a task");
                    runnable.queued.remove(&id);
                    (class, id)
                })
            };
            let Some((class, id)) = next else {
                return;
            };
            // Taken out while it runs, so that it may spawn; a finished task's late wake-ups
            // find nothing.
            let Some(mut task) = self.tasks.borrow_mut().remove(&id) else {
                continue;
            };
            self.polls.borrow_mut().push(class);
            let mut cx = Context::from_waker(&task.waker);
            if task.future.as_mut().poll(&mut cx).is_pending() {
                self.tasks.borrow_mut().insert(id, task);
            }
        }
        panic!("tasks still runnable after {MAX_POLLS_PER_RUN} polls");
    }

    /// Moves the clock on by `duration`, firing the timers due on the way in deadline order
    /// and running what each wakes.
    pub fn advance(&self, duration: Duration) {
        let target = self.clock.get() + duration;
        self.run();
        loop {
            let next_due = self
                .timers
                .borrow()
                .iter()
                .map(|t| t.at)
                .filter(|at| *at <= target)
                .min();
            let Some(at) = next_due else {
                break;
            };
            self.clock.set(self.clock.get().max(at));
            let now = self.clock.get();
            let due: Vec<Timer> = {
                let mut timers = self.timers.borrow_mut();
                let (due, later) = timers.drain(..).partition(|t| t.at <= now);
                *timers = later;
                due
            };
            for timer in due {
                timer.waker.wake();
            }
            self.run();
        }
        self.clock.set(target);
        self.run();
    }

    /// Runs `future` as a task of `class` until it stalls: its output if it finished.
    pub fn run_until_stalled<T: 'static>(
        &self,
        class: Priority,
        future: impl Future<Output = T> + 'static,
    ) -> Option<T> {
        let output = Rc::new(RefCell::new(None));
        let slot = output.clone();
        self.spawn(
            class,
            Box::pin(async move {
                *slot.borrow_mut() = Some(future.await);
            }),
        );
        self.run();
        output.take()
    }

    /// The weight each class was last given.
    pub fn weights(&self) -> [u32; 4] {
        *self.weights.borrow()
    }

    /// The class of every task poll so far, in order; clears the record.
    pub fn take_polls(&self) -> Vec<Priority> {
        std::mem::take(&mut *self.polls.borrow_mut())
    }

    /// Tasks spawned and not finished.
    pub fn tasks(&self) -> usize {
        self.tasks.borrow().len()
    }
}

impl QueueRuntime for FakeRuntime {
    fn spawn(&self, class: Priority, task: BoxedLocal<()>) {
        let id = self.next_task.get();
        self.next_task.set(id + 1);
        let waker = Waker::from(Arc::new(TaskWaker {
            id,
            class,
            runnable: self.runnable.clone(),
        }));
        waker.wake_by_ref();
        self.tasks.borrow_mut().insert(
            id,
            Task {
                future: task,
                waker,
            },
        );
    }

    fn sleep(&self, duration: Duration) -> BoxedLocal<()> {
        let at = self.clock.get() + duration;
        let (clock, timers) = (self.clock.clone(), self.timers.clone());
        Box::pin(std::future::poll_fn(move |cx| {
            if clock.get() >= at {
                return Poll::Ready(());
            }
            timers.borrow_mut().push(Timer {
                at,
                waker: cx.waker().clone(),
            });
            Poll::Pending
        }))
    }

    fn now(&self) -> Instant {
        self.clock.get()
    }

    fn set_weight(&self, class: Priority, weight: u32) {
        self.weights.borrow_mut()[class.index()] = weight;
        self.turns.borrow_mut().set_weight(class, weight);
    }
}

/// Queue settings small enough to reach every limit in a test: one worker per class, three
/// jobs per class, three attempts, two dead letters.
pub fn small_settings() -> QueueSettings {
    let s = Duration::from_secs;
    QueueSettings {
        workers: [1; 4],
        timeouts: [s(5), s(10), s(30), s(60)],
        max_size: 3,
        handoff_watermark: 2,
        max_attempts: 3,
        retry_base: Duration::from_millis(200),
        retry_max: s(30),
        dead_letter_max: 2,
        max_payload_bytes: 1 << 20,
        debug_kinds: true,
    }
}

/// Shard `shard` of `mesh`, generation 1, on `runtime`; no worker started.
pub fn shard_queues(
    runtime: &Rc<FakeRuntime>,
    settings: QueueSettings,
    shard: usize,
    mesh: &Arc<Mesh>,
    control: &Arc<Control>,
) -> Rc<ShardQueues> {
    ShardQueues::new(
        shard,
        1,
        settings,
        runtime.clone(),
        mesh.clone(),
        control.clone(),
    )
}

/// The only shard of a one-shard mesh, on a new runtime; no worker started.
pub fn lone_shard(settings: QueueSettings) -> (Rc<FakeRuntime>, Rc<ShardQueues>, Arc<Control>) {
    let runtime = FakeRuntime::new();
    let control = Arc::new(Control::default());
    let queues = shard_queues(&runtime, settings, 0, &Mesh::new(1), &control);
    (runtime, queues, control)
}

/// `class`'s counters in the report of `queues` (which starts a new report interval).
pub fn counters(queues: &ShardQueues, class: Priority) -> ClassCounters {
    queues.report().classes[class.index()].counters
}

/// A job of `kind` in `class`, three attempts, a 1 s timeout, no key.
pub fn job(kind: &str, class: Priority, payload: Value) -> JobSpec {
    JobSpec {
        kind: kind.to_string(),
        class,
        payload_bytes: json_size(&payload),
        payload,
        key: None,
        max_attempts: 3,
        timeout: Duration::from_secs(1),
    }
}
