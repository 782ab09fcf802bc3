//! Health checks: every `REPLICA_HEALTH_CHECK_INTERVAL`, each node's role
//! (`pg_is_in_recovery()`), replication lag by WAL position against the primary (bytes, and
//! time since the last replayed commit while bytes remain) and round-trip time.
//!
//! The checker is a thread pinned to the monitor core, beside the monitor rather than inside
//! its loop: a check waits on the network, and the monitor's publishing must not wait with it.
//! Between full rounds it wakes every [`TICK`] to probe a node whose ejection or open breaker
//! has run out (the half-open probe), so a node comes back within a tick of its time, not an
//! interval later.
//!
//! Each node is asked by a prober thread of its own, which holds that node's connection; the
//! checker waits for its answer at most [`Checker::answer_limit`]. A node that takes connections
//! but answers nothing (a stopped or hung host: the driver's connect timeout covers only the
//! TCP connect, and nothing bounds a query the server never answers) then fails its check on
//! time and is taken out, instead of holding the checker, and with it every node's checks,
//! for as long as it hangs.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use postgres::Client;

use super::availability::{Check, Lag};
use super::lsn::Lsn;
use super::pool::{self, PoolSettings};
use super::{Database, Node};

const TICK: Duration = Duration::from_millis(50);

pub(crate) fn spawn(db: Arc<Database>, settings: PoolSettings, cpu: Option<usize>) {
    std::thread::Builder::new()
        .name("db-checker".into())
        .spawn(move || {
            if let Some(id) = cpu {
                if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
                    log::warn!("could not pin the database checker to CPU {id}");
                }
            }
            Checker {
                probers: db
                    .nodes
                    .iter()
                    .map(|node| Prober::spawn(node.clone(), settings.clone(), cpu))
                    .collect(),
                answer_limit: answer_limit(&settings),
                db,
            }
            .run()
        })
        .expect("spawning the database checker");
}

/// How long a check waits for a node: a connect timeout to (re)connect, another for the answer
/// to a query that reads three values.
fn answer_limit(settings: &PoolSettings) -> Duration {
    settings.connect_timeout * 2
}

struct Checker {
    db: Arc<Database>,
    probers: Vec<Prober>,
    answer_limit: Duration,
}

/// A node's prober thread: it asks its node when told to and sends back what it saw.
struct Prober {
    ask: Sender<()>,
    answers: Receiver<Result<Observed, String>>,
    /// Asked and not answered yet: the node hangs (the answer may still come, late).
    awaiting: bool,
}

impl Prober {
    fn spawn(node: Arc<Node>, settings: PoolSettings, cpu: Option<usize>) -> Prober {
        // One question out at a time, so neither channel ever holds more than one message.
        let (ask, questions) = crossbeam::channel::bounded::<()>(1);
        let (answer, answers) = crossbeam::channel::bounded(1);
        std::thread::Builder::new()
            .name(format!("db-probe-{}", node.name()))
            .spawn(move || {
                if let Some(id) = cpu {
                    // Best effort: the checker already warned if pinning fails.
                    core_affinity::set_for_current(core_affinity::CoreId { id });
                }
                let mut client = None;
                for () in questions {
                    if answer.send(observe(&node, &settings, &mut client)).is_err() {
                        return;
                    }
                }
            })
            .expect("spawning a database prober");
        Prober {
            ask,
            answers,
            awaiting: false,
        }
    }

    /// Asks the node and waits up to `limit` for its answer. While an earlier question is
    /// unanswered the node is not asked again: it fails at once.
    fn ask(&mut self, limit: Duration) -> Result<Observed, String> {
        if self.awaiting {
            match self.answers.try_recv() {
                // The late answer to the question that timed out: stale, ask afresh.
                Ok(_) => self.awaiting = false,
                Err(TryRecvError::Empty) => {
                    return Err(format!(
                        "its last health check is still unanswered after more than {} ms",
                        limit.as_millis()
                    ))
                }
                Err(TryRecvError::Disconnected) => return Err("its prober stopped".into()),
            }
        }
        if self.ask.send(()).is_err() {
            return Err("its prober stopped".into());
        }
        self.awaiting = true;
        match self.answers.recv_timeout(limit) {
            Ok(answer) => {
                self.awaiting = false;
                answer
            }
            Err(RecvTimeoutError::Timeout) => {
                Err(format!("no answer within {} ms", limit.as_millis()))
            }
            Err(RecvTimeoutError::Disconnected) => Err("its prober stopped".into()),
        }
    }
}

/// What one node answered.
struct Observed {
    in_recovery: bool,
    /// The primary's current WAL position, or a replica's replay position.
    position: Option<Lsn>,
    /// Time since a replica last replayed a commit.
    replay_age: Duration,
}

impl Checker {
    fn run(mut self) {
        let mut next_round = Instant::now();
        loop {
            let now = Instant::now();
            let round = now >= next_round;
            if round {
                next_round = now + self.db.check_interval;
            }
            let due: Vec<bool> = self
                .db
                .nodes
                .iter()
                // A replica behind the schema is looked at every tick, not every round, so
                // that it takes reads soon after it replays the migrations.
                .map(|n| round || n.probe_due(now) || self.db.behind_schema(n))
                .collect();
            if due.iter().any(|d| *d) {
                self.check(&due);
            }
            std::thread::sleep(TICK);
        }
    }

    fn check(&mut self, due: &[bool]) {
        // The primary is asked every time: replicas' lag is measured against its position.
        let primary = self.db.primary().clone();
        let primary_position = match self.observe(0) {
            Ok(seen) => {
                primary
                    .in_recovery
                    .store(seen.in_recovery, Ordering::Relaxed);
                if due[0] {
                    primary.checked(&Check::Passed { lag: None }, false);
                }
                seen.position
            }
            Err(reason) => {
                if due[0] {
                    primary.checked(&Check::Failed(reason), false);
                }
                None
            }
        };
        for (index, _) in due.iter().enumerate().skip(1).filter(|(_, due)| **due) {
            let node = self.db.nodes[index].clone();
            let check = match self.observe(index) {
                Ok(seen) => {
                    node.in_recovery.store(seen.in_recovery, Ordering::Relaxed);
                    let lag = match (primary_position, seen.position) {
                        (Some(primary), Some(replayed)) => {
                            let bytes = primary.0.saturating_sub(replayed.0);
                            // An idle primary writes nothing: no bytes behind is no lag, however
                            // old the last replayed commit.
                            let time = if bytes == 0 {
                                Duration::ZERO
                            } else {
                                seen.replay_age
                            };
                            Some(Lag { bytes, time })
                        }
                        _ => None,
                    };
                    if let Some(lag) = lag {
                        node.lag_bytes.store(lag.bytes, Ordering::Relaxed);
                        node.lag_ms
                            .store(lag.time.as_millis() as u64, Ordering::Relaxed);
                    }
                    Check::Passed { lag }
                }
                Err(reason) => Check::Failed(reason),
            };
            let others_routable = self
                .db
                .replicas()
                .iter()
                .any(|r| !Arc::ptr_eq(r, &node) && r.routable());
            node.checked(&check, !others_routable);
        }
    }

    fn observe(&mut self, index: usize) -> Result<Observed, String> {
        self.probers[index].ask(self.answer_limit)
    }
}

/// Asks `node` for its role and position through `client` (connecting first if needed), timing
/// the round trip. Runs on the node's prober thread.
fn observe(
    node: &Node,
    settings: &PoolSettings,
    client: &mut Option<(Client, u64)>,
) -> Result<Observed, String> {
    // A connection older than the node's generation goes too: the pool dropped its own to
    // find the node's server again, and the check must look at the server the pool will use.
    let generation = node.generation.load(Ordering::Acquire);
    let mut connected = match client.take() {
        Some((open, of)) if !open.is_closed() && of == generation => open,
        _ => {
            pool::connect(node, settings, "coinbit-health").map_err(|e| super::error::reason(&e))?
        }
    };
    let started = Instant::now();
    let row = connected
        .query_one(
            "SELECT pg_is_in_recovery(),
                    CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                         ELSE pg_current_wal_lsn() END::text,
                    COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0)::float8,
                    COALESCE(inet_server_port(), 0)",
            &[],
        )
        .map_err(|e| super::error::reason(&e))?;
    node.rtt_us
        .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    let position = row
        .get::<_, Option<String>>(1)
        .and_then(|text| text.parse::<Lsn>().ok());
    if let Some(lsn) = position {
        node.saw_position(lsn);
    }
    let age: f64 = row.get(2);
    let port: i32 = row.get(3);
    node.server_port
        .store(port.max(0) as u64, Ordering::Relaxed);
    *client = Some((connected, generation));
    Ok(Observed {
        in_recovery: row.get(0),
        position,
        replay_age: Duration::from_secs_f64(age.max(0.0)),
    })
}
