//! Keeps one shard alive: runs it, and restarts it on its core when it dies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Control, ShardError, ShardFailure, ShardOperation, ShardSlot, ShardState};

/// How one run of a shard ended.
#[derive(Debug)]
pub enum ShardExit {
    /// It stopped because the process is shutting down.
    Clean,
    /// It could not start, a task panicked or its event loop failed.
    Died(ShardError),
    /// It stopped sending heartbeats and the monitor asked for a replacement: a new generation
    /// starts at once while the old thread, if it ever wakes, ends by itself.
    Unresponsive,
}

/// Restart delay after a death, doubled on each quick repeat up to the maximum.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A run longer than this resets the backoff.
const STABLE_RUN: Duration = Duration::from_secs(30);

/// Runs `run_once(generation)` until it ends cleanly or shutdown begins; each death is counted
/// in the slot and followed by a restart after a backoff. Blocks the calling thread.
pub fn supervise(
    slot: Arc<ShardSlot>,
    control: Arc<Control>,
    mut run_once: impl FnMut(u64) -> ShardExit,
) {
    let mut backoff = FIRST_BACKOFF;
    for generation in 1.. {
        let started = Instant::now();
        match run_once(generation) {
            ShardExit::Clean => break,
            ShardExit::Died(_) | ShardExit::Unresponsive if control.is_shutting_down() => break,
            ShardExit::Unresponsive => {
                slot.record_death(&ShardError::new(
                    slot.id,
                    generation,
                    ShardOperation::Serve,
                    ShardFailure::Replaced,
                ));
                slot.count_restart();
                slot.set_state(ShardState::Restarting);
                log::error!(
                    "shard {} on CPU {} stopped sending heartbeats: replaced by a new one (restart #{})",
                    slot.id,
                    slot.cpu,
                    slot.restarts()
                );
            }
            ShardExit::Died(error) => {
                slot.record_death(&error);
                slot.count_restart();
                slot.set_state(ShardState::Restarting);
                if started.elapsed() > STABLE_RUN {
                    backoff = FIRST_BACKOFF;
                }
                log::error!(
                    "shard {} on CPU {} died: {error}; restarting in {backoff:?} (restart #{})",
                    slot.id,
                    slot.cpu,
                    slot.restarts()
                );
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    slot.set_state(ShardState::Stopped);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panicked(generation: u64) -> ShardExit {
        ShardExit::Died(ShardError::new(
            0,
            generation,
            ShardOperation::Serve,
            ShardFailure::Panicked("boom".into()),
        ))
    }

    #[test]
    fn restarts_until_clean_and_counts_each_death() {
        let slot = Arc::new(ShardSlot::new(0, 0));
        let control = Arc::new(Control::default());
        let mut generations = Vec::new();
        supervise(slot.clone(), control, |generation| {
            generations.push(generation);
            if generation < 3 {
                panicked(generation)
            } else {
                ShardExit::Clean
            }
        });
        assert_eq!(generations, vec![1, 2, 3]);
        assert_eq!(slot.restarts(), 2);
        assert_eq!(slot.state(), ShardState::Stopped);
        // The last death with its context (what a failed start-up reports).
        assert_eq!(
            slot.last_error().as_deref(),
            Some("panicked: boom (shard 0, generation 2, while serving)")
        );
    }

    #[test]
    fn a_death_during_shutdown_is_not_restarted() {
        let slot = Arc::new(ShardSlot::new(0, 0));
        let control = Arc::new(Control::default());
        control.begin_shutdown();
        let mut runs = 0;
        supervise(slot.clone(), control, |_| {
            runs += 1;
            panicked(1)
        });
        assert_eq!((runs, slot.restarts()), (1, 0));
    }
}
