//! Rendering the merged state into the bodies of `/health`, `/api/enterprise/cluster/status`,
//! `/api/enterprise/metrics` and `/metrics` (Prometheus text).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::merge::{ClusterState, ShardTrack, Totals, WINDOW};
use super::{HealthStatus, Identity, Published};
use crate::db;
use crate::metrics::STATUS_CLASSES;
use crate::shard::{Control, ShardState};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A shard whose last report is older than this many intervals is stale.
const STALE_INTERVALS: u32 = 3;

/// Prometheus latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The server's health from its shards: fail with none running, warn with any not running or
/// silent, pass otherwise.
pub fn health_status(
    total: usize,
    running: usize,
    stale: usize,
    shutting_down: bool,
) -> HealthStatus {
    if total == 0 || running == 0 {
        HealthStatus::Fail
    } else if running < total || stale > 0 || shutting_down {
        HealthStatus::Warn
    } else {
        HealthStatus::Pass
    }
}

/// What every body says about one shard, worked out once per publish.
struct ShardFacts {
    state: ShardState,
    heartbeat_age: Option<Duration>,
    stale: bool,
    totals: Totals,
}

fn shard_facts(track: &ShardTrack, interval: Duration, now: Instant) -> ShardFacts {
    let heartbeat_age = track
        .last_report_at
        .map(|at| now.saturating_duration_since(at));
    let stale_after = (interval * STALE_INTERVALS).max(Duration::from_secs(1));
    let state = track.slot.state();
    let stale = state == ShardState::Running && heartbeat_age.is_some_and(|age| age > stale_after);
    ShardFacts {
        state,
        heartbeat_age,
        stale,
        totals: track.totals(),
    }
}

pub fn publish(
    state: &ClusterState,
    identity: &Identity,
    control: &Control,
    now: Instant,
) -> Published {
    let facts: Vec<ShardFacts> = state
        .shards
        .iter()
        .map(|t| shard_facts(t, state.interval, now))
        .collect();
    let running = facts
        .iter()
        .filter(|f| f.state == ShardState::Running)
        .count();
    let stale = facts.iter().filter(|f| f.stale).count();
    let status = health_status(facts.len(), running, stale, control.is_shutting_down());
    let database = identity.database.as_deref();
    // A database in trouble makes the server degraded, never down: reads may still be served.
    let status = match (status, db::status::health_word(database)) {
        (HealthStatus::Pass, "warn") => HealthStatus::Warn,
        (status, _) => status,
    };
    let uptime = now.saturating_duration_since(control.started_at);
    // Summed from the facts: each shard's totals are worked out once per publish.
    let totals: Totals = facts.iter().map(|f| &f.totals).sum();
    let (window_latency, lifetime_latency) = state.merged_latency();

    let health = json!({
        "status": status,
        "version": VERSION,
        "serviceId": "coinbit",
        "description": "CoinBitClub Enterprise API",
        "uptime_seconds": uptime.as_secs(),
        "engine": identity.engine,
        "checks": {
            "shards:running": [{
                "componentType": "system",
                "observedValue": running,
                "observedUnit": "shards",
                "status": if running == facts.len() { "pass" } else if running > 0 { "warn" } else { "fail" },
                "output": format!("{running} of {} shards running", facts.len()),
            }],
            "shards:heartbeat": [{
                "componentType": "system",
                "observedValue": stale,
                "observedUnit": "stale shards",
                "status": if stale == 0 { "pass" } else { "warn" },
            }],
            "database": db::status::health_check(database),
            "http:connections": [{
                "componentType": "component",
                "observedValue": totals.connections.open,
                "observedUnit": "connections",
                "status": "pass",
            }],
        },
    });

    let shards: Vec<Value> = state
        .shards
        .iter()
        .zip(&facts)
        .map(|(track, fact)| {
            let totals = &fact.totals;
            json!({
                "id": track.slot.id,
                "cpu": track.slot.cpu,
                "tid": track.slot.tid(),
                "state": if fact.stale { "stale" } else { fact.state.as_str() },
                "generation": track.generation,
                "open_connections": totals.connections.open,
                "requests_served": totals.requests(),
                "heartbeat_age_ms": fact.heartbeat_age.map(|a| a.as_millis() as u64),
                "restarts": track.slot.restarts(),
            })
        })
        .collect();
    let cluster_status = json!({
        "engine": identity.engine,
        "version": VERSION,
        "pid": std::process::id(),
        "uptime_seconds": uptime.as_secs(),
        "status": status,
        "monitor": {
            "cpu": identity.monitor_cpu,
            "tid": state.monitor_tid,
            "shares_core": identity.monitor_shares_core,
        },
        "cluster": {
            "shards": facts.len(),
            "running_shards": running,
            "min_workers": identity.min_workers,
            "max_workers": identity.max_workers,
        },
        "shards": shards,
        "database": db::status::cluster_section(database),
    });

    let (window_requests, window_errors, window_span) = state
        .shards
        .iter()
        .map(|t| t.window_counts(now))
        .fold((0, 0, Duration::ZERO), |(r, e, s), (r2, e2, s2)| {
            (r + r2, e + e2, s.max(s2))
        });
    let per_shard: Vec<Value> = state
        .shards
        .iter()
        .zip(&facts)
        .map(|(track, fact)| {
            let (requests, errors, span) = track.window_counts(now);
            let mut body = traffic(
                &fact.totals,
                requests,
                errors,
                span,
                &track.window_latency,
                &track.lifetime_latency,
            );
            body["id"] = json!(track.slot.id);
            body
        })
        .collect();
    let mut routes = serde_json::Map::new();
    for (name, counts) in state.routes.iter().zip(&totals.counts.by_route) {
        routes.insert((*name).to_string(), class_counts(counts));
    }
    routes.insert(
        "unrouted".to_string(),
        class_counts(&totals.counts.unrouted),
    );
    let metrics = json!({
        "window_seconds": WINDOW.as_secs(),
        "snapshot_interval_ms": state.interval.as_millis() as u64,
        "merged": traffic(&totals, window_requests, window_errors, window_span, &window_latency, &lifetime_latency),
        "shards": per_shard,
        "routes": routes,
    });

    let mut prometheus = prometheus(
        state,
        identity,
        &facts,
        &lifetime_latency,
        &totals,
        uptime,
        status,
    );
    if let Some(database) = database {
        db::status::prometheus(database, &mut prometheus);
    }
    Published {
        health_status: status,
        health: health.to_string().into(),
        cluster_status: cluster_status.to_string().into(),
        metrics: metrics.to_string().into(),
        prometheus: prometheus.into(),
        running_shards: running,
    }
}

fn class_counts(counts: &[u64; 5]) -> Value {
    let map: serde_json::Map<String, Value> = STATUS_CLASSES
        .iter()
        .zip(counts)
        .map(|(class, n)| ((*class).to_string(), json!(n)))
        .collect();
    Value::Object(map)
}

fn traffic(
    totals: &Totals,
    window_requests: u64,
    window_errors: u64,
    window_span: Duration,
    window: &Histogram<u64>,
    lifetime: &Histogram<u64>,
) -> Value {
    let seconds = window_span.as_secs_f64();
    let rate = if seconds > 0.0 {
        window_requests as f64 / seconds
    } else {
        0.0
    };
    let error_rate = if window_requests > 0 {
        window_errors as f64 / window_requests as f64
    } else {
        0.0
    };
    json!({
        "requests_total": totals.requests(),
        "server_errors_total": totals.server_errors(),
        "request_rate": round(rate, 1),
        "error_rate": round(error_rate, 6),
        "latency_ms": percentiles(window),
        "latency_lifetime_ms": percentiles(lifetime),
        "connections": {
            "open": totals.connections.open,
            "accepted_total": totals.connections.accepted,
            "rejected_at_cap_total": totals.connections.rejected_at_cap,
            "request_timeouts_total": totals.connections.request_timeouts,
            "idle_timeouts_total": totals.connections.idle_timeouts,
            "protocol_errors_total": totals.connections.protocol_errors,
        },
    })
}

/// p50/p90/p99/p99.9/max/mean in milliseconds of a microsecond histogram.
fn percentiles(h: &Histogram<u64>) -> Value {
    let ms = |micros: u64| round(micros as f64 / 1000.0, 3);
    if h.is_empty() {
        return json!({ "count": 0, "p50": null, "p90": null, "p99": null, "p99_9": null, "max": null, "mean": null });
    }
    json!({
        "count": h.len(),
        "p50": ms(h.value_at_quantile(0.50)),
        "p90": ms(h.value_at_quantile(0.90)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p99_9": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
        "mean": round(h.mean() / 1000.0, 3),
    })
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

fn prometheus(
    state: &ClusterState,
    identity: &Identity,
    facts: &[ShardFacts],
    lifetime: &Histogram<u64>,
    totals: &Totals,
    uptime: Duration,
    status: HealthStatus,
) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let out = &mut out;

    let name = family(
        out,
        "coinbit_http_requests_total",
        "counter",
        "HTTP responses by shard, route and status class.",
    );
    for (track, fact) in state.shards.iter().zip(facts) {
        let t = &fact.totals;
        let routed = state.routes.iter().zip(&t.counts.by_route);
        for (route, counts) in routed.chain(std::iter::once((&"unrouted", &t.counts.unrouted))) {
            for (class, n) in STATUS_CLASSES.iter().zip(counts).filter(|(_, n)| **n > 0) {
                let _ = writeln!(
                    out,
                    "{name}{{shard=\"{}\",route=\"{route}\",class=\"{class}\"}} {n}",
                    track.slot.id
                );
            }
        }
    }

    let name = family(
        out,
        "coinbit_http_request_duration_seconds",
        "histogram",
        "Time from a request's arrival to its response being ready.",
    );
    for le in LATENCY_BUCKETS {
        let micros = (le * 1e6) as u64;
        let count = if lifetime.is_empty() {
            0
        } else {
            lifetime.count_between(0, micros)
        };
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", lifetime.len());
    let _ = writeln!(out, "{name}_sum {}", totals.latency_sum_micros as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {}", lifetime.len());

    type Gauge = fn(&ShardTrack, &ShardFacts) -> f64;
    let per_shard: [(&str, &str, &str, Gauge); 7] = [
        (
            "coinbit_http_connections_open",
            "gauge",
            "Open client connections.",
            |_, f| f.totals.connections.open as f64,
        ),
        (
            "coinbit_http_connections_accepted_total",
            "counter",
            "Connections accepted.",
            |_, f| f.totals.connections.accepted as f64,
        ),
        (
            "coinbit_http_connections_rejected_total",
            "counter",
            "Connections refused with 503 at the per-shard cap.",
            |_, f| f.totals.connections.rejected_at_cap as f64,
        ),
        (
            "coinbit_http_request_timeouts_total",
            "counter",
            "Connections closed because a request arrived too slowly.",
            |_, f| f.totals.connections.request_timeouts as f64,
        ),
        (
            "coinbit_http_idle_timeouts_total",
            "counter",
            "Keep-alive connections closed after the idle timeout.",
            |_, f| f.totals.connections.idle_timeouts as f64,
        ),
        (
            "coinbit_shard_restarts_total",
            "counter",
            "Times the shard was restarted after dying.",
            |t, _| t.slot.restarts() as f64,
        ),
        (
            "coinbit_shard_up",
            "gauge",
            "1 while the shard runs and reports.",
            |_, f| f64::from(u8::from(f.state == ShardState::Running && !f.stale)),
        ),
    ];
    for (metric, kind, help, value) in per_shard {
        let name = family(out, metric, kind, help);
        for (track, fact) in state.shards.iter().zip(facts) {
            let _ = writeln!(
                out,
                "{name}{{shard=\"{}\",cpu=\"{}\"}} {}",
                track.slot.id,
                track.slot.cpu,
                value(track, fact)
            );
        }
    }
    let name = family(
        out,
        "coinbit_shard_heartbeat_age_seconds",
        "gauge",
        "Time since the shard's last report.",
    );
    for (track, fact) in state.shards.iter().zip(facts) {
        if let Some(age) = fact.heartbeat_age {
            let _ = writeln!(
                out,
                "{name}{{shard=\"{}\"}} {}",
                track.slot.id,
                age.as_secs_f64()
            );
        }
    }
    let name = family(
        out,
        "coinbit_health_status",
        "gauge",
        "0 pass, 1 warn, 2 fail.",
    );
    let _ = writeln!(out, "{name} {}", status as u8);
    let name = family(
        out,
        "coinbit_uptime_seconds",
        "gauge",
        "Seconds since start.",
    );
    let _ = writeln!(out, "{name} {}", uptime.as_secs_f64());
    let name = family(out, "coinbit_build_info", "gauge", "Version and engine.");
    let _ = writeln!(
        out,
        "{name}{{version=\"{VERSION}\",engine=\"{}\"}} 1",
        identity.engine
    );
    std::mem::take(out)
}

/// Writes a metric family's HELP and TYPE lines and returns its name.
fn family<'a>(out: &mut String, name: &'a str, kind: &str, help: &str) -> &'a str {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_table() {
        use HealthStatus::*;
        let cases = [
            ((2, 2, 0, false), Pass),
            ((2, 1, 0, false), Warn),
            ((2, 2, 1, false), Warn),
            ((2, 2, 0, true), Warn),
            ((2, 0, 0, false), Fail),
            ((0, 0, 0, false), Fail),
        ];
        for ((total, running, stale, shutting), expected) in cases {
            assert_eq!(
                health_status(total, running, stale, shutting),
                expected,
                "{total} {running} {stale} {shutting}"
            );
        }
    }
}
