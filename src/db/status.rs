//! What the status endpoints say about the database, rendered by the monitor from the nodes'
//! atomics.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use super::availability::Gate;
use super::{Database, Node};
use crate::monitor::prometheus::{Kind, PromWriter};

/// `pass`, `warn` or `fail`, as `/health` says them.
pub fn health_word(db: Option<&Database>) -> &'static str {
    let Some(db) = db else { return "pass" };
    let primary = db.primary();
    let primary_ok = primary.routable() && !primary.in_recovery.load(Ordering::Relaxed);
    let replicas_ok = db.replicas().iter().all(|r| r.routable());
    if primary_ok && replicas_ok {
        "pass"
    } else {
        // Reads may still be served (replicas, or the primary); /health itself stays up.
        "warn"
    }
}

/// The `database` check of `/health`.
pub fn health_check(db: Option<&Database>) -> Value {
    let Some(db) = db else {
        return json!([{
            "componentType": "datastore",
            "observedValue": "not configured",
            "status": "pass",
            "output": "no database configured (DATABASE_URL is unset): database routes answer 503",
        }]);
    };
    let routable = db.nodes.iter().filter(|n| n.routable()).count();
    json!([{
        "componentType": "datastore",
        "observedValue": routable,
        "observedUnit": "routable nodes",
        "status": health_word(Some(db)),
        "output": format!("{routable} of {} nodes routable; primary {}", db.nodes.len(),
            if db.primary().routable() { "up" } else { "down" }),
    }])
}

/// The `database` section of the cluster status.
pub fn cluster_section(db: Option<&Database>) -> Value {
    let Some(db) = db else {
        return json!({ "configured": false });
    };
    json!({
        "configured": true,
        "strategy": db.strategy.as_str(),
        "health_check_interval_ms": db.check_interval.as_millis() as u64,
        "group_commit": db.group_commit,
        "schema_position": db.schema_position.to_string(),
        "nodes": db.nodes.iter().map(|n| node_json(n, db)).collect::<Vec<_>>(),
    })
}

fn node_json(node: &Node, db: &Database) -> Value {
    let health = node.health_snapshot();
    let lag_ms = node.lag_ms.load(Ordering::Relaxed);
    let state = if db.behind_schema(node) {
        "behind-schema"
    } else if health.routable() {
        "up"
    } else if health.ejection != Gate::Open {
        "ejected"
    } else {
        "breaker-open"
    };
    json!({
        "name": node.name(),
        "role": if node.is_primary { "primary" } else { "replica" },
        "in_recovery": node.in_recovery.load(Ordering::Relaxed),
        "url": node.spec.display_url,
        "state": state,
        "weight": node.spec.weight,
        "in_flight": node.in_flight.load(Ordering::Relaxed),
        "pool": {
            "size": node.pool_size,
            "connected": node.connected.load(Ordering::Relaxed),
            "busy": node.busy.load(Ordering::Relaxed),
            "queued": node.queue.len(),
            "queue_capacity": node.queue_capacity,
        },
        "lag_bytes": if node.is_primary { Some(0) } else { Some(node.lag_bytes.load(Ordering::Relaxed)) },
        "lag_seconds": (lag_ms != u64::MAX).then(|| lag_ms as f64 / 1000.0),
        "rtt_ms": node.rtt_us.load(Ordering::Relaxed) as f64 / 1000.0,
        "position": node.position().to_string(),
        "requests": node.requests.load(Ordering::Relaxed),
        "errors": node.errors.load(Ordering::Relaxed),
        "commits": node.commits.load(Ordering::Relaxed),
        "health_checks": node.checks.load(Ordering::Relaxed),
        "replay_checks": node.replay_checks.load(Ordering::Relaxed),
        "retries": node.retries.load(Ordering::Relaxed),
        "ejections": health.ejections,
        "server_port": match node.server_port.load(Ordering::Relaxed) { 0 => None, port => Some(port) },
        "reconnects": node.reconnects.load(Ordering::Relaxed),
        "breaker": {
            "state": if health.breaker_open() { "open" } else { "closed" },
            "failures": health.failures,
            "opens": health.breaker_opens,
        },
        "last_reason": health.reason,
    })
}

/// A family per node: name, type, help, and its value read from the node.
type NodeFamily = (&'static str, Kind, &'static str, fn(&Node) -> f64);

const NODE_FAMILIES: &[NodeFamily] = &[
    (
        "coinbit_db_node_up",
        Kind::Gauge,
        "1 while the node takes requests (not ejected, breaker closed)",
        |n| f64::from(u8::from(n.routable())),
    ),
    (
        "coinbit_db_in_recovery",
        Kind::Gauge,
        "1 while the node reports pg_is_in_recovery()",
        |n| f64::from(u8::from(n.in_recovery.load(Ordering::Relaxed))),
    ),
    (
        "coinbit_db_in_flight",
        Kind::Gauge,
        "Requests queued or running on the node",
        |n| n.in_flight.load(Ordering::Relaxed) as f64,
    ),
    (
        "coinbit_db_pool_size",
        Kind::Gauge,
        "Pooled connections configured",
        |n| n.pool_size as f64,
    ),
    (
        "coinbit_db_pool_connected",
        Kind::Gauge,
        "Pooled connections open",
        |n| n.connected.load(Ordering::Relaxed) as f64,
    ),
    (
        "coinbit_db_pool_busy",
        Kind::Gauge,
        "Pooled connections running a request",
        |n| n.busy.load(Ordering::Relaxed) as f64,
    ),
    (
        "coinbit_db_queue_length",
        Kind::Gauge,
        "Requests waiting for a pooled connection",
        |n| n.queue.len() as f64,
    ),
    (
        "coinbit_db_replica_lag_bytes",
        Kind::Gauge,
        "WAL bytes the replica has not replayed",
        |n| n.lag_bytes.load(Ordering::Relaxed) as f64,
    ),
    (
        "coinbit_db_replica_lag_seconds",
        Kind::Gauge,
        "Time the replica is behind while WAL remains",
        |n| match n.lag_ms.load(Ordering::Relaxed) {
            u64::MAX => f64::NAN,
            ms => ms as f64 / 1000.0,
        },
    ),
    (
        "coinbit_db_health_check_rtt_seconds",
        Kind::Gauge,
        "Round-trip time of the last health check",
        |n| n.rtt_us.load(Ordering::Relaxed) as f64 / 1e6,
    ),
    (
        "coinbit_db_requests_total",
        Kind::Counter,
        "Requests the node's pool ran",
        |n| n.requests.load(Ordering::Relaxed) as f64,
    ),
    (
        "coinbit_db_errors_total",
        Kind::Counter,
        "Requests that failed for the node's sake",
        |n| n.errors.load(Ordering::Relaxed) as f64,
    ),
    (
        "coinbit_db_commits_total",
        Kind::Counter,
        "Write transactions committed (group commit joins writes)",
        |n| n.commits.load(Ordering::Relaxed) as f64,
    ),
    (
        "coinbit_db_retries_total",
        Kind::Counter,
        "Writes run again after losing a lock conflict (deadlock, serialization failure)",
        |n| n.retries.load(Ordering::Relaxed) as f64,
    ),
    (
        "coinbit_db_ejections_total",
        Kind::Counter,
        "Times the node was ejected",
        |n| n.health_snapshot().ejections as f64,
    ),
    (
        "coinbit_db_breaker_open",
        Kind::Gauge,
        "1 while the node's circuit breaker is open",
        |n| f64::from(u8::from(n.health_snapshot().breaker_open())),
    ),
    (
        "coinbit_db_breaker_opens_total",
        Kind::Counter,
        "Times the node's circuit breaker opened",
        |n| n.health_snapshot().breaker_opens as f64,
    ),
];

/// Prometheus families for the nodes.
pub fn prometheus(db: &Database, w: &mut PromWriter) {
    for &(name, kind, help, value) in NODE_FAMILIES {
        w.family(name, kind, help);
        for node in &db.nodes {
            let role = if node.is_primary {
                "primary"
            } else {
                "replica"
            };
            w.sample(&[("node", &node.name()), ("role", &role)], value(node));
        }
    }
}
