//! Shards: where they run (placement), what every part may know of them (slots), and the
//! supervisor that restarts one that dies.
//!
//! A shard is one OS thread pinned to one CPU running one engine event loop. The engine is
//! chosen elsewhere; this module only decides placement, keeps shards alive and carries the
//! engine-neutral commands of the monitor ([`Control`]) that every engine obeys.
//!
//! # Layout
//! - [`lifecycle`]: a generation's life: one loop that every engine's housekeeping runs, around
//!   one pure decision per tick.
//! - [`agent`]: the HAProxy agent check: a TCP port that says whether this process is up,
//!   draining or down.
//! - [`error`]: why a generation failed to start or died, with its shard, generation and
//!   operation.
//! - `placement`: which CPU each shard runs on.
//! - `supervisor`: runs a shard's generations, restarting one that dies.

pub mod agent;
pub mod error;
pub mod lifecycle;
mod placement;
mod supervisor;

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, RecvTimeoutError};

pub use error::{ShardError, ShardFailure, ShardOperation};
pub use placement::{place, Placement, PlacementError};
pub use supervisor::{supervise, ShardExit};

/// Lifecycle of one shard, as the status endpoints show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ShardState {
    Starting = 0,
    Running = 1,
    Draining = 2,
    Restarting = 3,
    Stopped = 4,
    Failed = 5,
    /// Deactivated by auto-scaling: no listener, no connections; its event loop idles.
    Parked = 6,
}

impl ShardState {
    pub fn as_str(self) -> &'static str {
        match self {
            ShardState::Starting => "starting",
            ShardState::Running => "running",
            ShardState::Draining => "draining",
            ShardState::Restarting => "restarting",
            ShardState::Stopped => "stopped",
            ShardState::Failed => "failed",
            ShardState::Parked => "parked",
        }
    }

    fn from_u8(value: u8) -> ShardState {
        match value {
            0 => ShardState::Starting,
            1 => ShardState::Running,
            2 => ShardState::Draining,
            3 => ShardState::Restarting,
            4 => ShardState::Stopped,
            6 => ShardState::Parked,
            _ => ShardState::Failed,
        }
    }
}

/// What the supervisor, the monitor and the shard itself share about one shard: a few atomics,
/// written by the shard's lifecycle, read by the monitor. Nothing on the request path.
#[derive(Debug)]
pub struct ShardSlot {
    pub id: usize,
    pub cpu: usize,
    state: AtomicU8,
    restarts: AtomicU64,
    tid: AtomicI32,
    /// Why the last run died (its [`ShardError`], as shown); written on deaths only, read at
    /// start-up and in logs.
    last_error: std::sync::Mutex<Option<String>>,
    /// The generation the monitor asked to replace (it stopped sending heartbeats); 0 for none.
    replace_generation: AtomicU64,
    /// A duplicate of the current listener's descriptor, owned here so that a shard whose
    /// thread is stuck can still be taken out of the port's SO_REUSEPORT group.
    listener: std::sync::Mutex<Option<OwnedFd>>,
}

impl ShardSlot {
    pub fn new(id: usize, cpu: usize) -> Self {
        ShardSlot {
            id,
            cpu,
            state: AtomicU8::new(ShardState::Starting as u8),
            restarts: AtomicU64::new(0),
            tid: AtomicI32::new(0),
            last_error: std::sync::Mutex::new(None),
            replace_generation: AtomicU64::new(0),
            listener: std::sync::Mutex::new(None),
        }
    }

    pub fn state(&self) -> ShardState {
        ShardState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn set_state(&self, state: ShardState) {
        self.state.store(state as u8, Ordering::Release);
    }

    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok()?.clone()
    }

    fn record_death(&self, error: &ShardError) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error.to_string());
        }
    }

    fn count_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// OS thread id of the shard's current thread (0 before it starts).
    pub fn tid(&self) -> i32 {
        self.tid.load(Ordering::Relaxed)
    }

    /// Called by the shard's thread when it starts.
    pub fn set_current_thread(&self) {
        self.tid.store(current_tid(), Ordering::Relaxed);
    }

    /// The monitor's request: replace `generation`, which stopped sending heartbeats.
    pub fn request_replacement(&self, generation: u64) {
        self.replace_generation
            .fetch_max(generation, Ordering::AcqRel);
    }

    /// Whether `generation` has been replaced (or asked to be): it must stop at once.
    pub fn is_superseded(&self, generation: u64) -> bool {
        self.replace_generation.load(Ordering::Acquire) >= generation
    }

    /// The engine hands over a duplicate of its listener's descriptor (`None` when it closes it).
    pub fn set_listener(&self, listener: Option<OwnedFd>) {
        if let Ok(mut held) = self.listener.lock() {
            *held = listener;
        }
    }

    /// Shuts the listener down from any thread: it leaves the SO_REUSEPORT group at once.
    fn shut_listener(&self) {
        if let Some(fd) = self.listener.lock().ok().and_then(|mut held| held.take()) {
            // SAFETY: shutdown on a descriptor this slot owns.
            unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }
}

/// How often [`await_exit`] looks at a replacement request.
const EXIT_POLL: Duration = Duration::from_millis(50);

/// What an engine's run of a shard does after starting its thread: waits until the thread sends
/// how it ended, or until the monitor asks for the generation to be replaced. A replaced shard's
/// listener is shut down here (its thread may be stuck and unable to) and the thread is left to
/// notice [`ShardSlot::is_superseded`] and end on its own.
pub fn await_exit(slot: &ShardSlot, generation: u64, exit: &Receiver<ShardExit>) -> ShardExit {
    loop {
        match exit.recv_timeout(EXIT_POLL) {
            Ok(how) => {
                // However it ended, its listener must not outlive it in the port's group.
                slot.shut_listener();
                return how;
            }
            Err(RecvTimeoutError::Disconnected) => {
                slot.shut_listener();
                return ShardExit::Died(ShardError::new(
                    slot.id,
                    generation,
                    ShardOperation::Serve,
                    ShardFailure::Vanished,
                ));
            }
            Err(RecvTimeoutError::Timeout) if slot.is_superseded(generation) => {
                slot.shut_listener();
                return ShardExit::Unresponsive;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

/// Process-wide commands, engine-neutral: the stop signal (set by the signal handler) and the
/// monitor's orders to the shards. Shards read them with one atomic load; every engine obeys
/// them as documented on each method.
#[derive(Debug)]
pub struct Control {
    /// The process is leaving (SIGTERM received, the drain delay running): shards keep serving
    /// but `/readyz` answers 503 so that balancers stop sending new work.
    leaving: AtomicBool,
    shutting_down: AtomicBool,
    /// Every shard has stopped: the monitor ends too.
    shards_stopped: AtomicBool,
    pub started_at: Instant,
    /// Shards with an id below this are active (auto-scaling parks the highest ids first).
    active_shards: AtomicUsize,
    shed_low_priority: AtomicBool,
    refuse_new_connections: AtomicBool,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            leaving: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            shards_stopped: AtomicBool::new(false),
            started_at: Instant::now(),
            active_shards: AtomicUsize::new(usize::MAX),
            shed_low_priority: AtomicBool::new(false),
            refuse_new_connections: AtomicBool::new(false),
        }
    }
}

impl Control {
    /// What every engine does once this is set, checked at least every tick: keep accepting and
    /// serving, and tell its app, whose `/readyz` answers 503 from then on.
    pub fn begin_leaving(&self) {
        self.leaving.store(true, Ordering::Release);
    }

    pub fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Acquire)
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub fn mark_shards_stopped(&self) {
        self.shards_stopped.store(true, Ordering::Release);
    }

    pub fn shards_stopped(&self) -> bool {
        self.shards_stopped.load(Ordering::Acquire)
    }

    /// The activate/deactivate command of auto-scaling: shards `0..count` are active.
    pub fn set_active_shards(&self, count: usize) {
        self.active_shards.store(count, Ordering::Release);
    }

    /// Whether shard `id` should serve. What an engine must do, checked at least every tick:
    /// - active and not listening: bind its SO_REUSEPORT listener again, accept, state `Running`;
    /// - inactive and listening: close its listener (the kernel sends new connections to the
    ///   other shards), let each open connection finish the request in progress and close after
    ///   its next response (`Connection: close`), state `Draining`, then `Parked` once no
    ///   connection is left. It keeps its event loop and sends its reports (its heartbeat).
    pub fn is_active(&self, id: usize) -> bool {
        id < self.active_shards.load(Ordering::Acquire)
    }

    /// Set by the monitor while CPU is critical: queues drop (or refuse) background and low
    /// priority work until it clears. Read by the per-core queue code.
    pub fn shed_low_priority(&self) -> bool {
        self.shed_low_priority.load(Ordering::Acquire)
    }

    pub fn set_shed_low_priority(&self, on: bool) {
        self.shed_low_priority.store(on, Ordering::Release);
    }

    /// Set by the monitor while memory is critical: an engine answers each newly accepted
    /// connection with 503 and `Retry-After`, then closes it. Open connections keep working.
    pub fn refuse_new_connections(&self) -> bool {
        self.refuse_new_connections.load(Ordering::Acquire)
    }

    pub fn set_refuse_new_connections(&self, on: bool) {
        self.refuse_new_connections.store(on, Ordering::Release);
    }
}

/// The calling thread's OS id, as /proc/<pid>/task/<tid> names it.
pub fn current_tid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}
