//! The shard's timer loop, on its housekeeping thread: the `Date` header, connection deadlines,
//! the monitor's activate/deactivate command, draining on shutdown, and teardown after a crash
//! or a replacement (with the last metrics report; the periodic ones, the heartbeat, come from
//! the generation's carrier: [`super::heartbeat`]). It touches
//! the shard only through `with_app`, the connection table and the connections' flags, and it
//! never closes a socket itself: it wakes the coroutine that owns it.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::connection::ConnShared;
use super::{lock, to_ticks, Listening, MayShard};
use crate::engine::{self, ActivationStep, DrainNext, ABORT_WAIT, DRAIN_POLL, TICK};
use crate::shard::{ShardError, ShardFailure, ShardOperation, ShardState};

/// How long stopping waits for the accept loop to end.
const ACCEPT_STOP_WAIT: Duration = Duration::from_millis(500);

/// Runs until shutdown begins (`Ok`), a coroutine crashed the shard or the monitor replaced it
/// (`Err`).
pub(super) fn run(shard: &Arc<MayShard>) -> Result<(), ShardError> {
    loop {
        let now = Instant::now();
        shard.with_app(|app| app.tick(SystemTime::now()));
        wake_expired(shard, now);
        if let Some(message) = shard.crashed() {
            let cause = ShardFailure::Panicked(message);
            return Err(shard.ctx.error(ShardOperation::Serve, cause));
        }
        if engine::superseded(&shard.ctx).is_some() {
            let cause = ShardFailure::Replaced;
            return Err(shard.ctx.error(ShardOperation::Serve, cause));
        }
        if shard.ctx.control.is_shutting_down() {
            return Ok(());
        }
        follow_activation(shard);
        std::thread::sleep(TICK);
    }
}

/// Obeys [`crate::shard::Control::is_active`] (the decision is [`engine::activation_step`]):
/// binds again when activated; when deactivated, closes the listener, lets every connection
/// close after its next response, and parks once none is left. Idle connections are not woken:
/// closing one as its client sends would fail that request; they close at their next answer or
/// their idle timeout.
fn follow_activation(shard: &Arc<MayShard>) {
    let slot = &shard.ctx.slot;
    let active = shard.ctx.control.is_active(slot.id);
    let listening = lock(&shard.listening).is_some();
    let open = lock(&shard.connections).len();
    let step = engine::activation_step(active, listening, slot.state(), open);
    let done = match step {
        ActivationStep::Listen => super::start_listening(shard),
        ActivationStep::StopListening => {
            if let Some(listening) = lock(&shard.listening).take() {
                stop_accepting(shard, listening);
            }
            Ok(())
        }
        ActivationStep::Park | ActivationStep::Stay => Ok(()),
    };
    engine::activation_done(slot, step, open, done);
    if !active {
        let connections = lock(&shard.connections);
        for connection in connections.values() {
            connection.drain.store(true, Ordering::Release);
        }
    }
}

/// Stops the accept loop and closes the listener. Shutting the socket down takes it out of the
/// SO_REUSEPORT group at once; the wake-up makes the loop see its stop flag and end, dropping
/// (closing) the listener.
pub(super) fn stop_accepting(shard: &MayShard, listening: Listening) {
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
    if engine::superseded(&shard.ctx).is_none() {
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

/// Closes idle connections now, lets busy ones finish their response, and aborts whatever is
/// left at the shutdown deadline.
pub(super) fn drain(shard: &MayShard) {
    shard.ctx.slot.set_state(ShardState::Draining);
    shard.with_app(|app| app.begin_draining());
    let deadline = Instant::now() + shard.ctx.config.shutdown_timeout();
    loop {
        // The Date header and the read deadlines (slow clients) keep going while draining.
        shard.with_app(|app| app.tick(SystemTime::now()));
        wake_expired(shard, Instant::now());
        let open = {
            let connections = lock(&shard.connections);
            for connection in connections.values() {
                connection.drain.store(true, Ordering::Release);
                connection.close_idle.store(true, Ordering::Release);
                if connection.idle.load(Ordering::Acquire) {
                    connection.wake();
                }
            }
            connections.len()
        };
        let jobs_idle = shard.with_app(|app| app.queues.is_idle());
        match engine::drain_next(shard.ctx.slot.id, open, jobs_idle, deadline) {
            DrainNext::Done => break,
            DrainNext::Abort => {
                abort_all(shard);
                break;
            }
            DrainNext::Wait => std::thread::sleep(DRAIN_POLL),
        }
    }
    send_report(shard, Instant::now());
}

/// After a crash: closes every connection now and waits (briefly) until their coroutines are
/// gone, so that the next generation starts with none of them.
pub(super) fn abort_connections(shard: &MayShard) {
    abort_all(shard);
    let give_up = Instant::now() + ABORT_WAIT;
    while !lock(&shard.connections).is_empty() && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(1));
    }
    // What was counted since the last interval still reaches the monitor.
    send_report(shard, Instant::now());
}

fn abort_all(shard: &MayShard) {
    let connections: Vec<Arc<ConnShared>> = lock(&shard.connections).values().cloned().collect();
    for connection in connections {
        connection.abort.store(true, Ordering::Release);
        connection.wake();
    }
}

fn send_report(shard: &MayShard, now: Instant) {
    shard.with_app(|app| engine::send_report(app, &shard.ctx, now));
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
