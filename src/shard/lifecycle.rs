//! One generation's lifecycle, decided once for every engine.
//!
//! A generation serves, following the monitor's activate/deactivate command
//! ([`Control::is_active`]), until shutdown begins, a task crashes it or the monitor replaces
//! it. Shutting down, it drains: its connections finish and its accepted jobs run until none is
//! left or the shutdown deadline passes. Dying, it closes its listener and every connection.
//!
//! `live` is that life, one loop for every engine: at each tick it observes the shard
//! ([`Observation`]), asks the one decision, [`decide`], what to do ([`Action`]), has the engine
//! do it (its `Housekeeper`) and records it ([`carried_out`]: the slot's state and the log line).
//! The decision does no I/O and is tested here with a table. The engines only execute it:
//! glommio in a task on the shard's executor, may on the generation's housekeeping thread
//! (where each await is a blocking call).

use std::io;
use std::time::{Duration, Instant};

use super::{Control, ShardError, ShardSlot, ShardState};
use crate::engine::{DRAIN_POLL, TICK};

/// Where a generation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Serving (or parked by auto-scaling) until shutdown, a crash or a replacement.
    Serving,
    /// Shutting down: connections and jobs finish until `deadline`.
    Draining { deadline: Instant },
}

impl Phase {
    /// The pause between two ticks.
    fn pause(self) -> Duration {
        match self {
            Phase::Serving => TICK,
            Phase::Draining { .. } => DRAIN_POLL,
        }
    }
}

/// What housekeeping sees of its shard at a tick.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    pub phase: Phase,
    pub now: Instant,
    /// A task panicked past its own containment.
    pub crashed: bool,
    /// The monitor replaced this generation ([`ShardSlot::is_superseded`]).
    pub superseded: bool,
    pub shutting_down: bool,
    /// The process is leaving ([`Control::is_leaving`]): serve on, but not ready.
    pub leaving: bool,
    /// The monitor's command for this shard ([`Control::is_active`]).
    pub active: bool,
    /// The shard has a listener and an accept loop.
    pub listening: bool,
    pub state: ShardState,
    /// Connections open.
    pub open: usize,
    /// No job queued, running or waiting for a retry (only draining looks at it).
    pub jobs_idle: bool,
}

/// What housekeeping does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing changes.
    KeepServing,
    /// The process is leaving: keep accepting and serving, and tell the app (again: telling it
    /// is idempotent, and a generation started meanwhile learns it too) so `/readyz` says 503.
    ServeWhileLeaving,
    /// Active without a listener: bind again and accept; `Running`.
    ListenAgain,
    /// Inactive with a listener: close it, and let every connection close after its next
    /// response (`Connection: close`); `Draining`.
    StopListening,
    /// Inactive without a listener, connections still open: each closes after its next
    /// response.
    FinishConnections,
    /// Inactive, draining, and the last connection has gone; `Parked`.
    Park,
    /// Shutdown began: close the listener, tell the app, and drain until the shutdown deadline;
    /// `Draining`.
    BeginDrain,
    /// The generation ends now: close the listener and every connection (briefly waiting for
    /// them), send the last report.
    Die(Death),
    /// Draining, connections or jobs left: look again shortly.
    WaitForDrain,
    /// Draining, and the deadline passed with connections open or jobs unfinished: close every
    /// connection now; the generation ends.
    AbortConnections,
    /// Draining, and the last connection has gone with every job done: the generation ends.
    Done,
}

/// Why a serving generation must end now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Death {
    /// A task panicked past its own containment: the supervisor starts a fresh generation.
    Crashed,
    /// The monitor replaced it after it missed its heartbeats (its successor may already serve).
    Superseded,
}

/// The lifecycle's one decision. While draining, crashes and replacements are not looked at:
/// the generation is ending anyway.
pub fn decide(seen: &Observation) -> Action {
    match seen.phase {
        Phase::Serving => serving(seen),
        Phase::Draining { deadline } => draining(seen, deadline),
    }
}

fn serving(seen: &Observation) -> Action {
    if seen.crashed {
        return Action::Die(Death::Crashed);
    }
    if seen.superseded {
        return Action::Die(Death::Superseded);
    }
    if seen.shutting_down {
        return Action::BeginDrain;
    }
    let scaling = match (seen.active, seen.listening) {
        (true, false) => Action::ListenAgain,
        (false, true) => Action::StopListening,
        (false, false) if seen.open == 0 && seen.state == ShardState::Draining => Action::Park,
        (false, false) if seen.open > 0 => Action::FinishConnections,
        _ => Action::KeepServing,
    };
    // Leaving changes nothing of how the shard serves, only what its app says of readiness.
    if scaling == Action::KeepServing && seen.leaving {
        Action::ServeWhileLeaving
    } else {
        scaling
    }
}

/// Accepted jobs finish too (until the deadline): they live in the shard's memory.
fn draining(seen: &Observation, deadline: Instant) -> Action {
    if seen.open == 0 && seen.jobs_idle {
        Action::Done
    } else if seen.now >= deadline {
        Action::AbortConnections
    } else {
        Action::WaitForDrain
    }
}

/// Records an action the engine has just carried out (`done` is how binding again went): the
/// slot's state (what the status endpoints show) and the log line. `open` is the connections
/// left to finish.
pub fn carried_out(slot: &ShardSlot, action: Action, open: usize, done: io::Result<()>) {
    let id = slot.id;
    if let Err(e) = done {
        log::warn!("shard {id}: cannot listen again ({e}); retrying");
        return;
    }
    match action {
        Action::ListenAgain => {
            slot.set_state(ShardState::Running);
            log::info!("shard {id}: activated, listening again");
        }
        Action::StopListening => {
            slot.set_state(ShardState::Draining);
            log::info!("shard {id}: deactivated, listener closed; finishing {open} connections");
        }
        Action::Park => {
            slot.set_state(ShardState::Parked);
            log::info!("shard {id}: parked");
        }
        Action::BeginDrain => slot.set_state(ShardState::Draining),
        Action::AbortConnections => log::warn!(
            "shard {id}: shutdown deadline passed with {open} connections open or jobs unfinished"
        ),
        Action::KeepServing
        | Action::ServeWhileLeaving
        | Action::FinishConnections
        | Action::Die(_)
        | Action::WaitForDrain
        | Action::Done => {}
    }
}

/// What an engine does for [`live`]: it sees and touches the shard, [`decide`] chooses.
pub(crate) trait Housekeeper {
    fn slot(&self) -> &ShardSlot;
    /// The tick's chores: the `Date` header, the connections' read deadlines (also while
    /// draining), the reports the engine sends from here; draining, idle connections close.
    fn keep_time(&self, phase: Phase, now: Instant);
    fn observe(&self, phase: Phase, now: Instant) -> Observation;
    /// Binds the listener again and accepts.
    fn listen(&self) -> io::Result<()>;
    /// Closes the listener, if there is one, and ends its accept loop.
    async fn stop_listening(&self);
    /// Every connection closes after its next response (`Connection: close`).
    fn finish_connections(&self);
    /// Tells the app that draining began (its `/readyz` answers 503; idempotent); returns the
    /// shutdown deadline counted from now.
    fn begin_draining(&self) -> Instant;
    /// Closes every connection now.
    fn close_connections(&self);
    /// Closes every connection now and waits (briefly) until they are gone.
    async fn abort_connections(&self);
    fn send_report(&self, now: Instant);
    /// The error a generation that must die now ends with.
    fn death(&self, death: Death) -> ShardError;
    async fn sleep(&self, pause: Duration);
}

/// A generation's life after it has started: `Ok` once it has drained after shutdown began,
/// `Err` when a task crashed it or the monitor replaced it (its connections closed by then).
pub(crate) async fn live(keeper: &impl Housekeeper) -> Result<(), ShardError> {
    let mut phase = Phase::Serving;
    loop {
        let now = Instant::now();
        keeper.keep_time(phase, now);
        let seen = keeper.observe(phase, now);
        let action = decide(&seen);
        let done = match action {
            Action::KeepServing | Action::Park | Action::WaitForDrain => Ok(()),
            Action::ListenAgain => keeper.listen(),
            Action::StopListening => {
                keeper.stop_listening().await;
                keeper.finish_connections();
                Ok(())
            }
            Action::FinishConnections => {
                keeper.finish_connections();
                Ok(())
            }
            Action::ServeWhileLeaving => {
                // The deadline only counts once shutdown begins.
                let _ = keeper.begin_draining();
                Ok(())
            }
            Action::BeginDrain => {
                keeper.stop_listening().await;
                carried_out(keeper.slot(), action, seen.open, Ok(()));
                phase = Phase::Draining {
                    deadline: keeper.begin_draining(),
                };
                continue;
            }
            Action::Die(death) => {
                keeper.stop_listening().await;
                keeper.abort_connections().await;
                // What was counted since the last report still reaches the monitor.
                keeper.send_report(Instant::now());
                return Err(keeper.death(death));
            }
            Action::AbortConnections | Action::Done => {
                if action == Action::AbortConnections {
                    keeper.close_connections();
                }
                carried_out(keeper.slot(), action, seen.open, Ok(()));
                keeper.send_report(Instant::now());
                return Ok(());
            }
        };
        carried_out(keeper.slot(), action, seen.open, done);
        keeper.sleep(phase.pause()).await;
    }
}

/// Whether a generation starts listening: a shard restarted while auto-scaling has it parked
/// starts parked, without a listener.
pub fn starts_listening(control: &Control, slot: &ShardSlot) -> bool {
    let active = control.is_active(slot.id);
    if !active {
        slot.set_state(ShardState::Parked);
    }
    active
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_observation_gets_its_action() {
        use Action::*;
        use ShardState::{Draining, Parked, Running};
        let now = Instant::now();
        let serving = Phase::Serving;
        let before_deadline = Phase::Draining {
            deadline: now + Duration::from_secs(1),
        };
        let past_deadline = Phase::Draining { deadline: now };
        let (t, f) = (true, false);
        let seen = |phase,
                    [crashed, superseded, shutting_down, active, listening]: [bool; 5],
                    state,
                    open,
                    jobs_idle| {
            Observation {
                phase,
                now,
                crashed,
                superseded,
                shutting_down,
                leaving: false,
                active,
                listening,
                state,
                open,
                jobs_idle,
            }
        };
        let leaving = |seen| Observation {
            leaving: true,
            ..seen
        };
        #[rustfmt::skip]
        let cases = [
            // phase, [crashed, superseded, shutting down, active, listening], state, open,
            // jobs idle -> action
            (seen(serving, [f, f, f, t, t], Running, 3, t), KeepServing),
            (seen(serving, [f, f, f, t, f], Parked, 0, t), ListenAgain),
            (seen(serving, [f, f, f, t, f], Draining, 2, t), ListenAgain),
            (seen(serving, [f, f, f, f, t], Running, 2, t), StopListening),
            (seen(serving, [f, f, f, f, t], Running, 0, t), StopListening),
            (seen(serving, [f, f, f, f, f], Draining, 1, t), FinishConnections),
            (seen(serving, [f, f, f, f, f], Draining, 0, t), Park),
            (seen(serving, [f, f, f, f, f], Parked, 0, t), KeepServing),
            (seen(serving, [f, f, t, t, t], Running, 4, f), BeginDrain),
            (seen(serving, [f, f, t, f, f], Parked, 0, t), BeginDrain),
            (seen(serving, [f, t, t, t, t], Running, 1, t), Die(Death::Superseded)),
            (seen(serving, [t, t, t, t, t], Running, 1, t), Die(Death::Crashed)),
            (seen(serving, [t, f, f, f, f], Parked, 0, t), Die(Death::Crashed)),
            (seen(before_deadline, [f, f, t, t, f], Draining, 2, t), WaitForDrain),
            (seen(before_deadline, [f, f, t, t, f], Draining, 0, f), WaitForDrain),
            (seen(before_deadline, [f, f, t, t, f], Draining, 0, t), Done),
            (seen(past_deadline, [f, f, t, t, f], Draining, 0, t), Done),
            (seen(past_deadline, [f, f, t, t, f], Draining, 1, t), AbortConnections),
            (seen(past_deadline, [f, f, t, t, f], Draining, 0, f), AbortConnections),
            // Draining ignores crashes and replacements: the generation is ending anyway.
            (seen(before_deadline, [t, t, t, t, f], Draining, 1, t), WaitForDrain),
            // Leaving: serve on, not ready, until shutdown begins,
            (leaving(seen(serving, [f, f, f, t, t], Running, 3, t)), ServeWhileLeaving),
            (leaving(seen(serving, [f, f, f, f, f], Parked, 0, t)), ServeWhileLeaving),
            // still following auto-scaling,
            (leaving(seen(serving, [f, f, f, t, f], Parked, 0, t)), ListenAgain),
            (leaving(seen(serving, [f, f, f, f, t], Running, 2, t)), StopListening),
            // and shutdown or a crash come first.
            (leaving(seen(serving, [f, f, t, t, t], Running, 2, t)), BeginDrain),
            (leaving(seen(serving, [t, f, f, t, t], Running, 2, t)), Die(Death::Crashed)),
        ];
        for (i, (observation, expected)) in cases.into_iter().enumerate() {
            assert_eq!(decide(&observation), expected, "row {i}: {observation:?}");
        }
    }

    #[test]
    fn a_generation_of_a_parked_shard_starts_parked() {
        let (control, slot) = (Control::default(), ShardSlot::new(1, 0));
        assert!(starts_listening(&control, &slot));
        assert_eq!(slot.state(), ShardState::Starting);
        control.set_active_shards(1);
        assert!(!starts_listening(&control, &slot));
        assert_eq!(slot.state(), ShardState::Parked);
    }
}
