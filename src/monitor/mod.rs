//! The monitor core: merges the shards' metric reports, watches them, and publishes what the
//! status endpoints serve.
//!
//! Shards send [`ShardReport`]s over a lock-free channel; this thread (pinned to the monitor
//! core) merges them into [`merge::ClusterState`], renders the status bodies once per snapshot
//! interval and publishes them as one immutable [`Published`] behind an `ArcSwap`. A shard
//! answering `/health` loads that pointer: it never touches another shard's state or takes a
//! lock. Every `MONITORING_METRICS_INTERVAL` the [`evaluation::Evaluator`] samples CPU, memory
//! and traffic, raises and resolves alerts, takes the recovery actions and scales the active
//! shards; its orders reach the shards through [`crate::shard::Control`].
//!
//! # Layout
//! - [`merge`]: reports into lifetime, window and per-sample views.
//! - [`sample`]: /proc readings (CPU per thread, memory) and the interval's traffic.
//! - [`alerts`]: thresholds with hysteresis, trends, the alert book (cooldown, inhibition).
//! - [`score`]: the 0–100 health score and its words (the formula is documented there).
//! - [`scaling`]: the auto-scaling decision.
//! - [`evaluation`]: one evaluation round, the recovery actions.
//! - [`webhook`]: Alertmanager-shaped delivery on its own thread.
//! - [`render`]: the bodies of the status endpoints; `dashboard.html` the live page.
//! - [`queues`]: the queues' merged counters, their status body, health check and families.
//! - [`prometheus`]: the one writer of the `/metrics` text every family goes through.

pub mod alerts;
pub mod evaluation;
pub mod merge;
pub mod prometheus;
pub mod queues;
pub mod render;
pub mod sample;
pub mod scaling;
pub mod score;
pub mod webhook;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use crossbeam::channel::{Receiver, RecvTimeoutError};

use crate::metrics::ShardReport;
use crate::shard::{Control, ShardSlot};

pub use merge::ClusterState;

/// Health of the whole server, in the `application/health+json` words.
/// Ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
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
    /// `GET /api/enterprise/queues/status`.
    pub queues_status: Bytes,
    /// `/api/enterprise/alerts`: active and recent alerts, recovery actions, delivery.
    pub alerts: Bytes,
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
    /// Jobs waiting, all shards and classes, past which `/health` warns and fails.
    pub queue_size_warning: u64,
    pub queue_size_critical: u64,
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
    pub evaluator: evaluation::Evaluator,
}

impl Monitor {
    pub fn new(
        slots: Vec<Arc<ShardSlot>>,
        identity: Identity,
        control: Arc<Control>,
        routes: &'static [&'static str],
        interval: Duration,
        evaluator: evaluation::Evaluator,
    ) -> Self {
        let state = ClusterState::new(slots, routes, interval);
        let published = Arc::new(ArcSwap::from_pointee(render::publish(
            &state,
            &identity,
            &control,
            &evaluator,
            Instant::now(),
        )));
        Monitor {
            state,
            identity,
            control,
            published,
            interval,
            evaluator,
        }
    }

    /// Merges reports and publishes every interval until the shards have stopped (or every
    /// sender is gone). It does not rely on the channel alone: a sender held by a task that never
    /// got dropped must not keep the process from exiting.
    pub fn run(mut self, reports: Receiver<ShardReport>) {
        self.state.monitor_tid = crate::shard::current_tid();
        let mut next_publish = Instant::now() + self.interval;
        let sample_every = self.evaluator.settings.interval;
        let mut next_sample = Instant::now() + sample_every;
        loop {
            match reports.recv_deadline(next_publish.min(next_sample)) {
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
            if now >= next_sample {
                self.evaluator.step(&mut self.state, &self.control, now);
                next_sample = now + sample_every;
                next_publish = now;
            }
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
            &self.evaluator,
            now,
        )));
    }
}
