//! The shard's timer loop, on its housekeeping thread: the `Date` header, connection deadlines,
//! and the shard's lifecycle ([`lifecycle::live`]) carried out: following the monitor's
//! activate/deactivate command, draining on shutdown, teardown after a crash or a replacement,
//! with the last metrics report (the periodic ones, the heartbeat, come from the generation's
//! carrier: [`super::heartbeat`]). It touches the shard only through `with_app`, the
//! connection table and the connections' flags, and it never closes a socket itself: it wakes
//! the coroutine that owns it.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::connection::ConnShared;
use super::{lock, to_ticks, Listening, MayShard};
use crate::engine::{self, ABORT_WAIT};
use crate::shard::lifecycle::{self, Death, Housekeeper, Observation, Phase};
use crate::shard::{ShardError, ShardFailure, ShardOperation, ShardSlot};

/// How long stopping waits for the accept loop to end.
const ACCEPT_STOP_WAIT: Duration = Duration::from_millis(500);

/// Runs the generation to its end ([`lifecycle::live`]). The thread is housekeeping's own, so
/// the lifecycle's waits simply block it.
pub(super) fn run(shard: &Arc<MayShard>) -> Result<(), ShardError> {
    futures_lite::future::block_on(lifecycle::live(shard))
}

impl Housekeeper for Arc<MayShard> {
    fn slot(&self) -> &ShardSlot {
        &self.ctx.slot
    }

    fn keep_time(&self, phase: Phase, now: Instant) {
        self.with_app(|app| app.tick(SystemTime::now()));
        wake_expired(self, now);
        if phase != Phase::Serving {
            close_idle_connections(self);
        }
    }

    fn observe(&self, phase: Phase, now: Instant) -> Observation {
        let ctx = &self.ctx;
        Observation {
            phase,
            now,
            crashed: self.crashed().is_some(),
            superseded: ctx.slot.is_superseded(ctx.generation),
            shutting_down: ctx.control.is_shutting_down(),
            leaving: ctx.control.is_leaving(),
            active: ctx.control.is_active(ctx.slot.id),
            listening: lock(&self.listening).is_some(),
            state: ctx.slot.state(),
            open: lock(&self.connections).len(),
            // Only draining looks at the jobs: serving spares the app lock a second take a tick.
            jobs_idle: phase != Phase::Serving && self.with_app(|app| app.queues.is_idle()),
        }
    }

    fn listen(&self) -> std::io::Result<()> {
        super::start_listening(self)
    }

    async fn stop_listening(&self) {
        // Taken out of the lock first: stopping waits for the accept loop.
        let listening = lock(&self.listening).take();
        if let Some(listening) = listening {
            stop_accepting(self, listening);
        }
    }

    /// Idle connections are not woken: closing one as its client sends would fail that
    /// request; they close at their next answer or their idle timeout.
    fn finish_connections(&self) {
        let connections = lock(&self.connections);
        for connection in connections.values() {
            connection.drain.store(true, Ordering::Release);
        }
    }

    fn begin_draining(&self) -> Instant {
        self.with_app(|app| app.begin_draining());
        Instant::now() + self.ctx.config.shutdown_timeout()
    }

    fn close_connections(&self) {
        let connections: Vec<Arc<ConnShared>> = lock(&self.connections).values().cloned().collect();
        for connection in connections {
            connection.abort.store(true, Ordering::Release);
            connection.wake();
        }
    }

    /// Waits until the connections' coroutines are gone, so that the next generation starts
    /// with none of them.
    async fn abort_connections(&self) {
        self.close_connections();
        let give_up = Instant::now() + ABORT_WAIT;
        while !lock(&self.connections).is_empty() && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn send_report(&self, now: Instant) {
        self.with_app(|app| engine::send_report(app, &self.ctx, now, &self.buffers));
    }

    fn death(&self, death: Death) -> ShardError {
        let cause = match death {
            Death::Crashed => ShardFailure::Panicked(self.crashed().unwrap_or_default()),
            Death::Superseded => ShardFailure::Replaced,
        };
        self.ctx.error(ShardOperation::Serve, cause)
    }

    async fn sleep(&self, pause: Duration) {
        std::thread::sleep(pause);
    }
}

/// Draining: closes idle connections now and lets busy ones finish their response.
fn close_idle_connections(shard: &MayShard) {
    let connections = lock(&shard.connections);
    for connection in connections.values() {
        connection.drain.store(true, Ordering::Release);
        connection.close_idle.store(true, Ordering::Release);
        if connection.idle.load(Ordering::Acquire) {
            connection.wake();
        }
    }
}

/// Stops the accept loop and closes the listener. Shutting the socket down takes it out of the
/// SO_REUSEPORT group at once; the wake-up makes the loop see its stop flag and end, dropping
/// (closing) the listener.
fn stop_accepting(shard: &MayShard, listening: Listening) {
    let Listening {
        fd,
        waker,
        stop,
        acceptor,
    } = listening;
    stop.store(true, Ordering::Release);
    // SAFETY: shutdown on a descriptor we own (a duplicate of the listener's).
    unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
    // A replaced generation must not take its successor's listener out of the slot.
    if !shard.ctx.slot.is_superseded(shard.ctx.generation) {
        shard.ctx.slot.set_listener(None);
    }
    waker.wakeup();
    let give_up = Instant::now() + ACCEPT_STOP_WAIT;
    while !acceptor.is_done() && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(1));
    }
    if !acceptor.is_done() {
        log::warn!(
            "shard {}: the accept loop did not stop in time",
            shard.ctx.slot.id
        );
    }
}

/// Wakes the connections whose deadline passed; each decides from its own state and counts
/// its timeout as it closes.
fn wake_expired(shard: &MayShard, now: Instant) {
    let now_ticks = to_ticks(shard, now);
    let connections = lock(&shard.connections);
    for connection in connections.values() {
        if connection.take_expired(now_ticks) {
            connection.wake();
        }
    }
}
