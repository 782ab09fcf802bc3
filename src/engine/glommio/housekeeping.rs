//! The shard's timer loop: the `Date` header, connection deadlines, metrics reports to the
//! monitor, the monitor's activate/deactivate command, and draining on shutdown.

use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use super::Shard;
use crate::http::conn::TimeoutKind;
use crate::shard::ShardState;

/// Coarse enough to cost nothing, fine enough for second-scale timeouts and a prompt shutdown.
const TICK: Duration = Duration::from_millis(50);
/// How often draining checks whether the last connection has gone.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// Runs until shutdown begins (`Ok`), a task crashed the shard or the monitor replaced it
/// (`Err` with why).
pub(crate) async fn run(shard: &Rc<Shard>) -> Result<(), String> {
    let interval = shard.ctx.config.snapshot_interval();
    let mut next_report = Instant::now();
    loop {
        let now = Instant::now();
        shard.app.borrow_mut().tick(SystemTime::now());
        if now >= next_report {
            send_report(shard, now);
            next_report = now + interval;
        }
        expire_deadlines(shard, now);
        if let Some(why) = shard.crash.borrow().clone() {
            return Err(why);
        }
        if shard.ctx.slot.is_superseded(shard.ctx.generation) {
            return Err("replaced by the monitor after missing heartbeats".into());
        }
        if shard.ctx.control.is_shutting_down() {
            return Ok(());
        }
        follow_activation(shard).await;
        glommio::timer::sleep(TICK).await;
    }
}

/// Obeys [`crate::shard::Control::is_active`]: binds again when activated; when deactivated,
/// closes the listener, lets every connection close after its next response, and parks once
/// none is left.
async fn follow_activation(shard: &Rc<Shard>) {
    let slot = &shard.ctx.slot;
    let active = shard.ctx.control.is_active(slot.id);
    let listening = shard.listening.borrow().is_some();
    if active && !listening {
        match super::start_listening(shard) {
            Ok(()) => {
                slot.set_state(ShardState::Running);
                log::info!("shard {}: activated, listening again", slot.id);
            }
            Err(e) => log::warn!("shard {}: cannot listen again ({e}); retrying", slot.id),
        }
    } else if !active && listening {
        if let Some(listening) = shard.listening.take() {
            super::stop_accepting(shard, listening).await;
        }
        slot.set_state(ShardState::Draining);
        log::info!(
            "shard {}: deactivated, listener closed; finishing {} connections",
            slot.id,
            shard.connections.borrow().len()
        );
    }
    if !active {
        let connections = shard.connections.borrow();
        connections.values().for_each(|c| c.shared.drain.set(true));
        if connections.is_empty() && slot.state() == ShardState::Draining {
            slot.set_state(ShardState::Parked);
            log::info!("shard {}: parked", slot.id);
        }
    }
}

/// Closes idle connections now, lets busy ones finish their response, and cancels whatever is
/// left at the shutdown deadline.
pub(crate) async fn drain(shard: &Shard) {
    shard.ctx.slot.set_state(ShardState::Draining);
    shard.app.borrow_mut().begin_draining();
    let deadline = Instant::now() + shard.ctx.config.shutdown_timeout();
    loop {
        // The Date header and the read deadlines (slow clients) keep going while draining.
        shard.app.borrow_mut().tick(SystemTime::now());
        expire_deadlines(shard, Instant::now());
        // Cancelling only schedules the task's drop, so the table may stay borrowed meanwhile.
        {
            let connections = shard.connections.borrow();
            for connection in connections.values() {
                connection.shared.drain.set(true);
                if connection.shared.idle.get() {
                    connection.cancel();
                }
            }
        }
        let open = shard.connections.borrow().len();
        if open == 0 {
            break;
        }
        if Instant::now() >= deadline {
            log::warn!(
                "shard {}: shutdown deadline passed with {open} connections open",
                shard.ctx.slot.id
            );
            shard.connections.borrow().values().for_each(|c| c.cancel());
            break;
        }
        glommio::timer::sleep(DRAIN_POLL).await;
    }
    send_report(shard, Instant::now());
}

/// After a crash: closes every connection now and waits (briefly) until their tasks are gone.
pub(crate) async fn abort_connections(shard: &Shard) {
    shard.connections.borrow().values().for_each(|c| c.cancel());
    let give_up = Instant::now() + Duration::from_secs(1);
    while !shard.connections.borrow().is_empty() && Instant::now() < give_up {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    // What was counted since the last interval still reaches the monitor.
    send_report(shard, Instant::now());
}

fn send_report(shard: &Shard, now: Instant) {
    let slot = &shard.ctx.slot;
    let report =
        shard
            .app
            .borrow_mut()
            .metrics
            .report(slot.id, shard.ctx.generation, slot.tid(), now);
    // A full channel means the monitor is behind; the next report carries the counters anyway.
    let _ = shard.ctx.reports.try_send(report);
}

/// Cancels connections whose deadline passed; their tasks' guards unregister them.
fn expire_deadlines(shard: &Shard, now: Instant) {
    let connections = shard.connections.borrow();
    for connection in connections.values() {
        let Some((at, kind)) = connection.shared.deadline.get() else {
            continue;
        };
        if at > now {
            continue;
        }
        // Expire once: the task is gone by the next tick, but clear the deadline regardless.
        connection.shared.deadline.set(None);
        connection.cancel();
        let mut app = shard.app.borrow_mut();
        match kind {
            TimeoutKind::RequestRead => app.metrics.connections.request_timeouts += 1,
            TimeoutKind::Idle => app.metrics.connections.idle_timeouts += 1,
        }
    }
}
