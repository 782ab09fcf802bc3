//! Shards: where they run (placement), what every part may know of them (slots), and the
//! supervisor that restarts one that dies.
//!
//! A shard is one OS thread pinned to one CPU running one engine event loop. The engine is
//! chosen elsewhere; this module only decides placement and keeps shards alive.

mod placement;
mod supervisor;

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicU8, Ordering};
use std::time::Instant;

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
        }
    }

    fn from_u8(value: u8) -> ShardState {
        match value {
            0 => ShardState::Starting,
            1 => ShardState::Running,
            2 => ShardState::Draining,
            3 => ShardState::Restarting,
            4 => ShardState::Stopped,
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
    /// Why the last run died; written on deaths only, read at start-up and in logs.
    last_error: std::sync::Mutex<Option<String>>,
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

    fn record_death(&self, why: &str) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(why.to_string());
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
}

/// The process-wide stop signal: set once by the signal handler, read by shards and monitor.
#[derive(Debug)]
pub struct Control {
    shutting_down: AtomicBool,
    /// Every shard has stopped: the monitor ends too.
    shards_stopped: AtomicBool,
    pub started_at: Instant,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            shutting_down: AtomicBool::new(false),
            shards_stopped: AtomicBool::new(false),
            started_at: Instant::now(),
        }
    }
}

impl Control {
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
}

/// The calling thread's OS id, as /proc/<pid>/task/<tid> names it.
pub fn current_tid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}
