//! One database node as every thread sees it: its request queue, and the atomics the shards read
//! when they route, the pool threads and the health checker write, and the monitor renders.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam::channel::Sender;

use super::availability::{Check, NodeHealth, Policy};
use super::lsn::Lsn;
use super::pool::DbRequest;
use crate::config::NodeSpec;

/// A node: the primary (index 0) or a read replica.
pub struct Node {
    pub spec: NodeSpec,
    pub is_primary: bool,
    pub(crate) queue: Sender<DbRequest>,
    pub queue_capacity: usize,
    pub pool_size: usize,
    policy: Policy,
    /// Mirrors `health.routable()`: what the request path reads, without the lock.
    routable: AtomicBool,
    /// Mirrors `health.failures > 0`, so a success takes the lock only after failures.
    failing: AtomicBool,
    /// The node says `pg_is_in_recovery()`: a primary in that state takes no writes.
    pub in_recovery: AtomicBool,
    pub in_flight: AtomicU64,
    pub busy: AtomicU64,
    pub connected: AtomicU64,
    pub lag_bytes: AtomicU64,
    /// Milliseconds; `u64::MAX` while unknown.
    pub lag_ms: AtomicU64,
    pub rtt_us: AtomicU64,
    /// Highest replayed (replica) or written (primary) WAL position seen.
    pub position: AtomicU64,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    /// Write transactions committed (fewer than writes when group commit joins them).
    pub commits: AtomicU64,
    pub checks: AtomicU64,
    /// Times a read looked at this replica's replay position while waiting for a commit.
    pub replay_checks: AtomicU64,
    /// Writes run again after losing a lock conflict (a deadlock, a serialization failure).
    pub retries: AtomicU64,
    pub(crate) health: Mutex<NodeHealth>,
    /// Bumped to drop every pooled connection of the node: a pool thread whose connection is
    /// of an older generation reconnects (and, for a several-host primary, finds the primary
    /// again) before its next request.
    pub(crate) generation: AtomicU64,
    /// The port of the server the health check reached last (0 while unknown): which host of
    /// a several-host primary takes the writes now.
    pub server_port: AtomicU64,
    /// Times the node's connections were dropped to find its server again.
    pub reconnects: AtomicU64,
    /// Times the node came back into rotation: a pool thread waiting out its reconnection
    /// backoff connects at once when this moved (the node answers again).
    pub(crate) comebacks: AtomicU64,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.spec.name)
            .finish()
    }
}

impl Node {
    pub(crate) fn new(
        spec: NodeSpec,
        is_primary: bool,
        queue: Sender<DbRequest>,
        queue_capacity: usize,
        pool_size: usize,
        policy: Policy,
    ) -> Arc<Node> {
        Arc::new(Node {
            spec,
            is_primary,
            queue,
            queue_capacity,
            pool_size,
            policy,
            routable: AtomicBool::new(true),
            failing: AtomicBool::new(false),
            in_recovery: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            lag_bytes: AtomicU64::new(0),
            lag_ms: AtomicU64::new(u64::MAX),
            rtt_us: AtomicU64::new(0),
            position: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            checks: AtomicU64::new(0),
            replay_checks: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            // The primary is asked again at a steady pace: while it is out, writes fail.
            health: Mutex::new(if is_primary {
                NodeHealth::new(Instant::now()).steady()
            } else {
                NodeHealth::new(Instant::now())
            }),
            generation: AtomicU64::new(0),
            server_port: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            comebacks: AtomicU64::new(0),
        })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn routable(&self) -> bool {
        self.routable.load(Ordering::Acquire)
    }

    pub fn position(&self) -> Lsn {
        Lsn(self.position.load(Ordering::Relaxed))
    }

    pub(crate) fn saw_position(&self, lsn: Lsn) {
        self.position.fetch_max(lsn.0, Ordering::Relaxed);
    }

    /// Whether the node is a list of hosts of which the one taking writes is used.
    pub fn finds_primary(&self) -> bool {
        self.is_primary && self.spec.pg.get_hosts().len() > 1
    }

    /// Drops every pooled connection of the node (each pool thread reconnects before its next
    /// request), after a connection of `generation` was lost or found read-only. Connections
    /// already replaced since are kept: one failover drops them once.
    pub(crate) fn drop_connections(&self, generation: u64) {
        if self
            .generation
            .compare_exchange(
                generation,
                generation + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "database node {}: dropping its connections to find its server again",
                self.spec.name
            );
        }
    }

    fn with_health<R>(&self, change: impl FnOnce(&mut NodeHealth, &Policy) -> R) -> R {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let was = health.routable();
        let result = change(&mut health, &self.policy);
        let now = health.routable();
        self.routable.store(now, Ordering::Release);
        self.failing.store(health.failures > 0, Ordering::Relaxed);
        if was != now {
            if now {
                self.comebacks.fetch_add(1, Ordering::Release);
                log::info!("database node {} is back", self.spec.name);
            } else {
                log::warn!(
                    "database node {} taken out: {}",
                    self.spec.name,
                    health.reason.as_deref().unwrap_or("unknown")
                );
            }
        }
        result
    }

    /// A request's outcome, from a pool thread.
    pub(crate) fn request_done(&self, node_failed: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if node_failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
            self.with_health(|h, p| h.on_request(false, p, Instant::now()));
        } else if self.failing.load(Ordering::Relaxed) {
            self.with_health(|h, p| h.on_request(true, p, Instant::now()));
        }
    }

    /// A health check's result, from the checker.
    pub(crate) fn checked(&self, check: &Check, last_routable: bool) {
        self.checks.fetch_add(1, Ordering::Relaxed);
        self.with_health(|h, p| {
            h.on_check(check, p, Instant::now(), !self.is_primary, last_routable)
        });
    }

    pub(crate) fn probe_due(&self, now: Instant) -> bool {
        self.with_health(|h, _| h.probe_due(now))
    }

    pub(crate) fn health_snapshot(&self) -> NodeHealth {
        self.with_health(|h, _| h.clone())
    }
}
