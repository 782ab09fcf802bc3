//! The monitor core: merges the shards' metric reports and publishes what the status
//! endpoints serve.
//!
//! Shards send [`ShardReport`]s over a lock-free channel; this thread (pinned to the monitor
//! core) merges them into [`merge::ClusterState`], renders the status bodies once per interval
//! and publishes them as one immutable [`Published`] behind an `ArcSwap`. A shard answering
//! `/health` loads that pointer: it never touches another shard's state or takes a lock.

pub mod merge;
pub mod render;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use crossbeam::channel::{Receiver, RecvTimeoutError};

use crate::metrics::ShardReport;
use crate::shard::{Control, ShardSlot};

pub use merge::ClusterState;

/// Health of the whole server, in the `application/health+json` words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Pass,
    Warn,
    Fail,
}

/// Everything the status endpoints serve, rendered once per interval by the monitor.
#[derive(Debug, Clone)]
pub struct Published {
    pub health_status: HealthStatus,
    pub health: Bytes,
    pub cluster_status: Bytes,
    pub metrics: Bytes,
    pub prometheus: Bytes,
    /// Shards running when this was rendered (start-up waits until all are).
    pub running_shards: usize,
}

/// Facts about the process that the status bodies carry.
#[derive(Debug, Clone)]
pub struct Identity {
    pub engine: &'static str,
    pub monitor_cpu: usize,
    pub monitor_shares_core: bool,
    pub min_workers: usize,
    pub max_workers: usize,
    /// The database tier, when one is configured: its nodes' state is rendered each publish.
    pub database: Option<Arc<crate::db::Database>>,
}

/// The monitor's shared handles.
pub struct Monitor {
    pub state: ClusterState,
    pub identity: Identity,
    pub control: Arc<Control>,
    pub published: Arc<ArcSwap<Published>>,
    pub interval: Duration,
}

impl Monitor {
    pub fn new(
        slots: Vec<Arc<ShardSlot>>,
        identity: Identity,
        control: Arc<Control>,
        routes: &'static [&'static str],
        interval: Duration,
    ) -> Self {
        let state = ClusterState::new(slots, routes, interval);
        let published = Arc::new(ArcSwap::from_pointee(render::publish(
            &state,
            &identity,
            &control,
            Instant::now(),
        )));
        Monitor {
            state,
            identity,
            control,
            published,
            interval,
        }
    }

    /// Merges reports and publishes every interval until the shards have stopped (or every
    /// sender is gone). It does not rely on the channel alone: a sender held by a task that never
    /// got dropped must not keep the process from exiting.
    pub fn run(mut self, reports: Receiver<ShardReport>) {
        self.state.monitor_tid = crate::shard::current_tid();
        let mut next_publish = Instant::now() + self.interval;
        loop {
            match reports.recv_deadline(next_publish) {
                Ok(report) => {
                    // A shard that (re)started is shown at once, not at the next interval.
                    if self.state.absorb(report) {
                        next_publish = Instant::now();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.control.shards_stopped() {
                break;
            }
            let now = Instant::now();
            if now >= next_publish {
                self.publish(now);
                next_publish = now + self.interval;
            }
        }
        log::debug!("monitor stopped");
    }

    pub fn publish(&mut self, now: Instant) {
        self.state.advance_window(now);
        self.published.store(Arc::new(render::publish(
            &self.state,
            &self.identity,
            &self.control,
            now,
        )));
    }
}
