//! Periodic sweeps: housekeeping batches written on the primary on timers of their own (old
//! idempotency records, expired coupon credit, affiliate shares whose hold ended), all run by
//! one background-class task on the shard that starts them (shard 0).
//!
//! Each sweep runs at start, then `every` after its last run ended; a run writes batches until
//! one comes back short of full. The sweep due first runs first; one whose interval is zero
//! never runs. Sweeps claim their rows with `SKIP LOCKED` or delete them, so instances
//! sweeping at once only share the work.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Priority, ShardQueues};
use crate::db::{Database, DbClient, DbConn, DbError};

/// One batch of a sweep, in a write transaction on the primary: given the batch size, how many
/// rows it handled.
pub type Batch = Arc<dyn Fn(&mut DbConn, i64) -> Result<u64, DbError> + Send + Sync>;

/// A periodic sweep.
pub struct Sweep {
    /// Its name in the log ("money sweep").
    pub name: &'static str,
    /// What its count is of, in the log ("coupon credit grant(s) expired").
    pub counted: &'static str,
    /// The level at which a run's count is logged (a failure is a warning).
    pub level: log::Level,
    /// From the end of one run to the start of the next; zero: off.
    pub every: Duration,
    /// Rows a batch handles at most; a full batch goes again at once.
    pub batch_size: i64,
    pub batch: Batch,
}

/// Starts the sweeps whose interval is not zero: one background-class task for them all
/// (none where every one is off).
pub fn start(queues: &Rc<ShardQueues>, database: &Arc<Database>, sweeps: Vec<Sweep>) {
    let sweeps: Vec<Sweep> = sweeps.into_iter().filter(|s| !s.every.is_zero()).collect();
    if sweeps.is_empty() {
        return;
    }
    let runtime = queues.runtime.clone();
    let (clock, database) = (runtime.clone(), database.clone());
    runtime.spawn(
        Priority::Background,
        Box::pin(async move {
            let mut db = database.client();
            let mut due = vec![clock.now(); sweeps.len()];
            loop {
                match next_step(&due, clock.now()) {
                    Some(Step::Run(i)) => {
                        run(&mut db, &sweeps[i]).await;
                        due[i] = clock.now() + sweeps[i].every;
                    }
                    Some(Step::Sleep(wait)) => clock.sleep(wait).await,
                    None => return,
                }
            }
        }),
    );
}

/// One run of `sweep`: batches until one is short of full.
async fn run(db: &mut DbClient, sweep: &Sweep) {
    loop {
        let (batch, size) = (sweep.batch.clone(), sweep.batch_size);
        match db.write(move |conn| batch(conn, size)).await {
            Ok(done) if done.value >= size as u64 => continue,
            Ok(done) if done.value > 0 => {
                log::log!(
                    sweep.level,
                    "{}: {} {}",
                    sweep.name,
                    done.value,
                    sweep.counted
                )
            }
            Ok(_) => {}
            Err(e) => log::warn!("{} failed: {e}", sweep.name),
        }
        return;
    }
}

/// What the scheduler does next.
#[derive(Debug, PartialEq)]
enum Step {
    /// Run this sweep now.
    Run(usize),
    /// Nothing is due before this long.
    Sleep(Duration),
}

/// Given when each sweep is next due, the next step at `now`: the sweep due first once its
/// time has come (the lower index on a tie), else sleep until then; none without sweeps.
fn next_step(due: &[Instant], now: Instant) -> Option<Step> {
    let (i, &at) = due.iter().enumerate().min_by_key(|&(i, at)| (*at, i))?;
    Some(if at <= now {
        Step::Run(i)
    } else {
        Step::Sleep(at - now)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_due_first_runs_once_its_time_comes() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let cases: [(&[Instant], Option<Step>); 6] = [
            (&[now, now, now], Some(Step::Run(0))),
            (&[now + ms(5), now - ms(1), now], Some(Step::Run(1))),
            (&[now + ms(5), now + ms(2), now - ms(3)], Some(Step::Run(2))),
            (&[now + ms(50), now + ms(20)], Some(Step::Sleep(ms(20)))),
            (&[now + ms(7)], Some(Step::Sleep(ms(7)))),
            (&[], None),
        ];
        for (due, expected) in cases {
            assert_eq!(next_step(due, now), expected, "{due:?}");
        }
    }
}
