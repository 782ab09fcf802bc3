//! The shard's timer loop: the `Date` header, connection deadlines, metrics reports to the
//! monitor, the monitor's activate/deactivate command, and draining on shutdown.

use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use super::Shard;
use crate::engine::{self, ActivationStep, DrainNext, ABORT_WAIT, DRAIN_POLL, TICK};
use crate::shard::ShardState;

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
        if let Some(why) = engine::superseded(&shard.ctx) {
            return Err(why);
        }
        if shard.ctx.control.is_shutting_down() {
            return Ok(());
        }
        follow_activation(shard).await;
        glommio::timer::sleep(TICK).await;
    }
}

/// Obeys [`crate::shard::Control::is_active`] (the decision is [`engine::activation_step`]):
/// binds again when activated; when deactivated, closes the listener, lets every connection
/// close after its next response, and parks once none is left.
async fn follow_activation(shard: &Rc<Shard>) {
    let slot = &shard.ctx.slot;
    let active = shard.ctx.control.is_active(slot.id);
    let listening = shard.listening.borrow().is_some();
    let open = shard.connections.borrow().len();
    let step = engine::activation_step(active, listening, slot.state(), open);
    let done = match step {
        ActivationStep::Listen => super::start_listening(shard),
        ActivationStep::StopListening => {
            if let Some(listening) = shard.listening.take() {
                super::stop_accepting(shard, listening).await;
            }
            Ok(())
        }
        ActivationStep::Park | ActivationStep::Stay => Ok(()),
    };
    engine::activation_done(slot, step, open, done);
    if !active {
        let connections = shard.connections.borrow();
        connections.values().for_each(|c| c.shared.drain.set(true));
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
        let jobs_idle = shard.app.borrow().queues.is_idle();
        match engine::drain_next(shard.ctx.slot.id, open, jobs_idle, deadline) {
            DrainNext::Done => break,
            DrainNext::Abort => {
                shard.connections.borrow().values().for_each(|c| c.cancel());
                break;
            }
            DrainNext::Wait => glommio::timer::sleep(DRAIN_POLL).await,
        }
    }
    send_report(shard, Instant::now());
}

/// After a crash: closes every connection now and waits (briefly) until their tasks are gone.
pub(crate) async fn abort_connections(shard: &Shard) {
    shard.connections.borrow().values().for_each(|c| c.cancel());
    let give_up = Instant::now() + ABORT_WAIT;
    while !shard.connections.borrow().is_empty() && Instant::now() < give_up {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    // What was counted since the last interval still reaches the monitor.
    send_report(shard, Instant::now());
}

fn send_report(shard: &Shard, now: Instant) {
    engine::send_report(&mut shard.app.borrow_mut(), &shard.ctx, now);
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
        shard.app.borrow_mut().count_timeout(kind);
    }
}
