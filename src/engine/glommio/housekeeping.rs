//! The shard's timer loop: the `Date` header, connection deadlines, metrics reports to the
//! monitor, and the shard's lifecycle ([`lifecycle::live`]) carried out in a task on the
//! shard's executor: following the monitor's activate/deactivate command, draining on shutdown,
//! teardown after a crash or a replacement.

use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use super::GlommioShard;
use crate::engine::{self, ABORT_WAIT};
use crate::shard::lifecycle::{self, Death, Housekeeper, Observation, Phase};
use crate::shard::{ShardError, ShardFailure, ShardOperation, ShardSlot};

/// Runs the generation to its end ([`lifecycle::live`]).
pub(crate) async fn run(shard: &Rc<GlommioShard>) -> Result<(), ShardError> {
    let keeper = Keeper {
        shard,
        next_report: std::cell::Cell::new(Instant::now()),
    };
    lifecycle::live(&keeper).await
}

/// The shard, as the lifecycle sees it, and when its next periodic report is due.
struct Keeper<'a> {
    shard: &'a Rc<GlommioShard>,
    next_report: std::cell::Cell<Instant>,
}

impl Housekeeper for Keeper<'_> {
    fn slot(&self) -> &ShardSlot {
        &self.shard.ctx.slot
    }

    fn keep_time(&self, phase: Phase, now: Instant) {
        let shard = self.shard;
        shard.app.borrow_mut().tick(SystemTime::now());
        if phase == Phase::Serving && now >= self.next_report.get() {
            send_report(shard, now);
            self.next_report
                .set(now + shard.ctx.config.snapshot_interval());
        }
        expire_deadlines(shard, now);
        if phase != Phase::Serving {
            close_idle_connections(shard);
        }
    }

    fn observe(&self, phase: Phase, now: Instant) -> Observation {
        let (shard, ctx) = (self.shard, &self.shard.ctx);
        Observation {
            phase,
            now,
            crashed: shard.crash.borrow().is_some(),
            superseded: ctx.slot.is_superseded(ctx.generation),
            shutting_down: ctx.control.is_shutting_down(),
            leaving: ctx.control.is_leaving(),
            active: ctx.control.is_active(ctx.slot.id),
            listening: shard.listening.borrow().is_some(),
            state: ctx.slot.state(),
            open: shard.connections.borrow().len(),
            jobs_idle: shard.app.borrow().queues.is_idle(),
        }
    }

    fn listen(&self) -> std::io::Result<()> {
        super::start_listening(self.shard)
    }

    async fn stop_listening(&self) {
        if let Some(listening) = self.shard.listening.take() {
            super::stop_accepting(self.shard, listening).await;
        }
    }

    fn finish_connections(&self) {
        let connections = self.shard.connections.borrow();
        connections.values().for_each(|c| c.shared.drain.set(true));
    }

    fn begin_draining(&self) -> Instant {
        self.shard.app.borrow_mut().begin_draining();
        Instant::now() + self.shard.ctx.config.shutdown_timeout()
    }

    fn close_connections(&self) {
        let connections = self.shard.connections.borrow();
        connections.values().for_each(|c| c.cancel());
    }

    /// Waits until the connections' tasks are gone.
    async fn abort_connections(&self) {
        self.close_connections();
        let give_up = Instant::now() + ABORT_WAIT;
        while !self.shard.connections.borrow().is_empty() && Instant::now() < give_up {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }

    fn send_report(&self, now: Instant) {
        send_report(self.shard, now);
    }

    fn death(&self, death: Death) -> ShardError {
        let cause = match death {
            Death::Crashed => {
                ShardFailure::Panicked(self.shard.crash.borrow().clone().unwrap_or_default())
            }
            Death::Superseded => ShardFailure::Replaced,
        };
        self.shard.ctx.error(ShardOperation::Serve, cause)
    }

    async fn sleep(&self, pause: Duration) {
        glommio::timer::sleep(pause).await;
    }
}

/// Draining: closes idle connections now and lets busy ones finish their response.
fn close_idle_connections(shard: &GlommioShard) {
    // Cancelling only schedules the task's drop, so the table may stay borrowed meanwhile.
    let connections = shard.connections.borrow();
    for connection in connections.values() {
        connection.shared.drain.set(true);
        if connection.shared.idle.get() {
            connection.cancel();
        }
    }
}

fn send_report(shard: &GlommioShard, now: Instant) {
    engine::send_report(&mut shard.app.borrow_mut(), &shard.ctx, now, &shard.buffers);
}

/// Cancels connections whose deadline passed (their tasks' guards unregister them), and wakes
/// those whose idle spell settled.
fn expire_deadlines(shard: &GlommioShard, now: Instant) {
    let connections = shard.connections.borrow();
    for connection in connections.values() {
        connection.shared.settle_if_due(now);
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
