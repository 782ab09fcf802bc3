//! The priority classes under may: the shard's queue tasks (workers, retries, the inbox) run on
//! one coroutine of the shard, its queue loop, which polls them one at a time. may has no
//! task-queue shares, so the loop gives the classes their turns by weight with the queue core's
//! [`Turns`] (8:4:2:1, raised by aging), and parks (may's coroutine park, timed to the nearest
//! timer) when nothing is ready.
//!
//! Everything here lives behind the shard's app lock (see [`super::MayShard::try_with_local`]): the
//! tasks hold the shard's `Rc`s, and the loop polls them only while it holds that lock, a slice
//! at a time, so that connections and housekeeping get the lock in between.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures_lite::future::BoxedLocal;

use super::lock;
use crate::queue::{Priority, QueueRuntime, Turns};

/// How long the loop polls before it lets the shard's other coroutines run.
pub(crate) const SLICE: Duration = Duration::from_millis(5);
/// The pause after a full slice. A park, not a yield: may runs a carrier's queued coroutines
/// until none is left before it polls epoll, so a loop that only yielded would keep the
/// shard's sockets from being served.
pub(crate) const PAUSE: Duration = Duration::from_millis(1);
/// The shortest wait the loop parks for.
pub(crate) const SHORTEST_PARK: Duration = Duration::from_millis(2);
/// The longest park without a timer: a safety net, wake-ups end parks sooner.
pub(crate) const IDLE_PARK: Duration = Duration::from_millis(500);
/// How late a park of the loop may end before the watchdog ends it (see [`Wakeups::park`]).
const PARK_GRACE: Duration = Duration::from_millis(20);
/// How often the watchdog looks at the parks.
const WATCHDOG_TICK: Duration = Duration::from_millis(5);

/// The queue tasks of one shard.
pub(crate) struct MayClasses {
    tasks: RefCell<Vec<Option<Task>>>,
    free: RefCell<Vec<usize>>,
    /// Tasks ready to be polled, per class, in the order they became ready.
    runnable: RefCell<[VecDeque<usize>; 4]>,
    turns: RefCell<Turns>,
    timers: Rc<RefCell<BinaryHeap<Reverse<Timer>>>>,
    next_timer: Cell<u64>,
    /// What wakers (from any thread) hand the loop.
    pub wakeups: Arc<Wakeups>,
}

struct Task {
    class: Priority,
    future: Option<BoxedLocal<()>>,
    wake: Arc<TaskWake>,
}

/// Tasks woken since the loop last looked, and the loop's coroutine to unpark.
#[derive(Default)]
pub(crate) struct Wakeups {
    woken: Mutex<Vec<usize>>,
    parked: Mutex<Option<may::coroutine::Coroutine>>,
    /// The loop parks for want of work: a wake-up must unpark it. (While it runs or pauses
    /// between slices, a wake-up only queues the task: an unpark then would leave may's park
    /// token set, and the next pause would not give the carrier back to its sockets.)
    idle: AtomicBool,
    /// When the loop's current park should end; `None` while it does not park.
    park_until: Mutex<Option<Instant>>,
    /// Registered with the watchdog.
    watched: AtomicBool,
}

impl Wakeups {
    /// Parks the loop (the calling coroutine) for `wait` at most; an unpark ends it sooner.
    ///
    /// may can lose the timer of a timed park: the park adds its timer before it stores the
    /// coroutine to wake, so a thread preempted between the two (a loaded host) lets the timer
    /// fire first, find nothing to wake, and the coroutine sleeps until something unparks it.
    /// Every task of the shard's queues (jobs, retries, the inbox, durable jobs' dispatcher and
    /// lease renewals) runs only when this loop does, so its parks are watched: one still on
    /// [`PARK_GRACE`] after its time is ended by the watchdog thread.
    pub fn park(self: &Arc<Self>, wait: Duration) {
        self.park_watched(wait, may::coroutine::park_timeout);
    }

    fn park_watched(self: &Arc<Self>, wait: Duration, park: impl FnOnce(Duration)) {
        if !self.watched.swap(true, Ordering::AcqRel) {
            watchdog().watch(self);
        }
        *lock(&self.park_until) = Some(Instant::now() + wait);
        park(wait);
        *lock(&self.park_until) = None;
    }

    /// The park is past its time (and the grace): the watchdog ends it.
    fn overdue(&self, now: Instant) -> bool {
        lock(&self.park_until).is_some_and(|until| now >= until + PARK_GRACE)
    }

    fn push(&self, id: usize) {
        lock(&self.woken).push(id);
        if self.idle.swap(false, Ordering::AcqRel) {
            self.unpark();
        }
    }

    /// Makes the loop's next (or current) park return.
    pub fn unpark(&self) {
        if let Some(coroutine) = lock(&self.parked).as_ref() {
            coroutine.unpark();
        }
    }

    /// Registers the calling coroutine as the loop.
    pub fn attach(&self) {
        *lock(&self.parked) = Some(may::coroutine::current());
    }

    /// Marks the loop idle; `false` when a task was woken meanwhile (then it must not park).
    pub fn go_idle(&self) -> bool {
        self.idle.store(true, Ordering::Release);
        if lock(&self.woken).is_empty() {
            true
        } else {
            self.idle.store(false, Ordering::Release);
            false
        }
    }

    /// The loop runs again.
    pub fn busy(&self) {
        self.idle.store(false, Ordering::Release);
    }
}

/// The thread that ends the queue loops' parks whose may timer was lost.
struct Watchdog {
    loops: Mutex<Vec<Weak<Wakeups>>>,
}

fn watchdog() -> &'static Watchdog {
    static WATCHDOG: OnceLock<&'static Watchdog> = OnceLock::new();
    WATCHDOG.get_or_init(|| {
        let watchdog: &'static Watchdog = Box::leak(Box::new(Watchdog {
            loops: Mutex::new(Vec::new()),
        }));
        std::thread::Builder::new()
            .name("may-park-watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(WATCHDOG_TICK);
                watchdog.end_overdue_parks(Instant::now());
            })
            .expect("spawning the park watchdog");
        watchdog
    })
}

impl Watchdog {
    fn watch(&self, wakeups: &Arc<Wakeups>) {
        lock(&self.loops).push(Arc::downgrade(wakeups));
    }

    fn end_overdue_parks(&self, now: Instant) {
        lock(&self.loops).retain(|wakeups| match wakeups.upgrade() {
            Some(wakeups) => {
                if wakeups.overdue(now) {
                    wakeups.unpark();
                }
                true
            }
            None => false,
        });
    }
}

struct TaskWake {
    id: usize,
    /// Already in the woken list: a second wake adds nothing.
    woken: AtomicBool,
    wakeups: Arc<Wakeups>,
}

impl Wake for TaskWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.woken.swap(true, Ordering::AcqRel) {
            self.wakeups.push(self.id);
        }
    }
}

struct Timer {
    at: Instant,
    seq: u64,
    waker: Waker,
}

impl PartialEq for Timer {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Timer {}

impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Timer {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// What the loop does after a slice.
pub(crate) enum Next {
    /// Tasks are still ready: yield to the shard's other coroutines, then go on.
    Yield,
    /// Nothing is ready: park until a wake-up or the nearest timer (`None`: none set).
    Park(Option<Instant>),
}

impl MayClasses {
    pub fn new() -> Rc<Self> {
        Rc::new(MayClasses {
            tasks: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            runnable: RefCell::new(Default::default()),
            turns: RefCell::new(Turns::default()),
            timers: Rc::new(RefCell::new(BinaryHeap::new())),
            next_timer: Cell::new(0),
            wakeups: Arc::new(Wakeups::default()),
        })
    }

    /// Runs ready tasks for one slice, taking turns between the classes by weight.
    pub fn run_slice(&self) -> Next {
        let until = Instant::now() + SLICE;
        loop {
            self.fire_timers(Instant::now());
            self.collect_woken();
            let ready = {
                let runnable = self.runnable.borrow();
                Priority::ALL.map(|class| !runnable[class.index()].is_empty())
            };
            let Some(class) = self.turns.borrow_mut().next(ready) else {
                return Next::Park(self.timers.borrow().peek().map(|t| t.0.at));
            };
            let id = self.runnable.borrow_mut()[class.index()].pop_front();
            if let Some(id) = id {
                self.poll(id);
            }
            if Instant::now() >= until {
                return Next::Yield;
            }
        }
    }

    fn poll(&self, id: usize) {
        // Taken out while it runs: it may spawn tasks or set timers.
        let (future, waker) = {
            let mut tasks = self.tasks.borrow_mut();
            let Some(task) = tasks.get_mut(id).and_then(Option::as_mut) else {
                return;
            };
            // Woken from here on: queued again.
            task.wake.woken.store(false, Ordering::Release);
            (task.future.take(), Waker::from(task.wake.clone()))
        };
        let Some(mut future) = future else { return };
        let done = future
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready();
        let mut tasks = self.tasks.borrow_mut();
        if done {
            tasks[id] = None;
            self.free.borrow_mut().push(id);
        } else if let Some(task) = tasks[id].as_mut() {
            task.future = Some(future);
        }
    }

    fn collect_woken(&self) {
        let woken = std::mem::take(&mut *lock(&self.wakeups.woken));
        let tasks = self.tasks.borrow();
        let mut runnable = self.runnable.borrow_mut();
        for id in woken {
            if let Some(task) = tasks.get(id).and_then(Option::as_ref) {
                runnable[task.class.index()].push_back(id);
            }
        }
    }

    fn fire_timers(&self, now: Instant) {
        loop {
            let due = {
                let mut timers = self.timers.borrow_mut();
                match timers.peek() {
                    Some(t) if t.0.at <= now => timers.pop().map(|t| t.0.waker),
                    _ => None,
                }
            };
            match due {
                Some(waker) => waker.wake(),
                None => return,
            }
        }
    }

    /// Drops every task (at the end of the generation: they hold the shard's queues).
    pub fn clear(&self) {
        let tasks = std::mem::take(&mut *self.tasks.borrow_mut());
        drop(tasks);
        self.timers.borrow_mut().clear();
    }
}

impl QueueRuntime for MayClasses {
    fn spawn(&self, class: Priority, task: BoxedLocal<()>) {
        let mut tasks = self.tasks.borrow_mut();
        let id = self.free.borrow_mut().pop().unwrap_or(tasks.len());
        let wake = Arc::new(TaskWake {
            id,
            woken: AtomicBool::new(false),
            wakeups: self.wakeups.clone(),
        });
        let task = Task {
            class,
            future: Some(task),
            wake,
        };
        if id == tasks.len() {
            tasks.push(Some(task));
        } else {
            tasks[id] = Some(task);
        }
        drop(tasks);
        self.runnable.borrow_mut()[class.index()].push_back(id);
        if self.wakeups.idle.swap(false, Ordering::AcqRel) {
            self.wakeups.unpark();
        }
    }

    fn sleep(&self, duration: Duration) -> BoxedLocal<()> {
        let seq = self.next_timer.get();
        self.next_timer.set(seq + 1);
        let at = Instant::now() + duration;
        let timers = self.timers.clone();
        let mut armed = false;
        Box::pin(std::future::poll_fn(move |cx| {
            if Instant::now() >= at {
                return Poll::Ready(());
            }
            if !armed {
                armed = true;
                timers.borrow_mut().push(Reverse(Timer {
                    at,
                    seq,
                    waker: cx.waker().clone(),
                }));
            }
            Poll::Pending
        }))
    }

    fn set_weight(&self, class: Priority, weight: u32) {
        self.turns.borrow_mut().set_weight(class, weight);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A park whose may timer is lost (here: a park without one) still ends, a little after
    /// its time, instead of leaving the shard's queue tasks asleep for good.
    #[test]
    fn a_park_whose_timer_is_lost_still_ends() {
        let (done, ended) = std::sync::mpsc::channel();
        let wakeups = Arc::new(Wakeups::default());
        // SAFETY: the coroutine touches only its own clones and a channel.
        let _ = unsafe {
            may::coroutine::spawn(move || {
                wakeups.attach();
                let started = Instant::now();
                wakeups.park_watched(Duration::from_millis(10), |_| may::coroutine::park());
                let _ = done.send(started.elapsed());
            })
        };
        let took = ended
            .recv_timeout(Duration::from_secs(10))
            .expect("the park ended");
        assert!(took >= Duration::from_millis(10), "ended early: {took:?}");
    }
}
