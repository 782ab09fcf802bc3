//! Rendering the merged state into the bodies of `/health`, `/api/enterprise/cluster/status`,
//! `/api/enterprise/metrics`, `/api/enterprise/alerts` and `/metrics` (Prometheus text).
//!
//! [`publish`] works out once what every body says (the shards' facts, the counts, the
//! [`overall_status`], a pure decision over them) and hands that view to one function per body.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::alerts::{Alert, AlertState, Metric, Severity};
use super::evaluation::Evaluator;
use super::merge::{ClusterState, ShardTrack, Totals, WINDOW};
use super::prometheus::{Kind, Labels, PromWriter};
use super::sample::Sample;
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

/// A shard whose last report is older than this is stale.
pub fn stale_after(snapshot_interval: Duration) -> Duration {
    (snapshot_interval * STALE_INTERVALS).max(Duration::from_secs(1))
}

/// Samples of history the metrics body carries for the dashboard's charts.
const CHART_POINTS: usize = 120;

fn shard_facts(track: &ShardTrack, interval: Duration, now: Instant) -> ShardFacts {
    let heartbeat_age = track
        .last_report_at
        .map(|at| now.saturating_duration_since(at));
    let stale_after = stale_after(interval);
    let state = track.slot.state();
    let alive = matches!(state, ShardState::Running | ShardState::Parked);
    let stale = alive && heartbeat_age.is_some_and(|age| age > stale_after);
    ShardFacts {
        state,
        heartbeat_age,
        stale,
        totals: track.totals(),
    }
}

/// What the overall status is decided from.
#[derive(Debug, Clone, Copy)]
pub struct StatusInputs {
    pub shards: usize,
    pub running: usize,
    /// Parked or draining.
    pub parked: usize,
    pub stale: usize,
    /// Shards auto-scaling wants active.
    pub active_shards: usize,
    pub shutting_down: bool,
    /// The health score's word.
    pub score: HealthStatus,
    /// The queues check.
    pub queues: HealthStatus,
    /// The database check says warn.
    pub database_degraded: bool,
}

/// The shards check of `/health`, and the status of the whole server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub shards: HealthStatus,
    pub overall: HealthStatus,
}

/// The server's status: the worst of its shards, its health score and its queues; a database
/// in trouble makes it degraded, never down (reads may still be served).
pub fn overall_status(inputs: StatusInputs) -> Verdict {
    // Shards parked by auto-scaling are not missing: they count as running for health.
    let parked_by_scaling = inputs
        .parked
        .min(inputs.shards.saturating_sub(inputs.active_shards));
    let shards = health_status(
        inputs.shards,
        inputs.running + parked_by_scaling,
        inputs.stale,
        inputs.shutting_down,
    );
    let overall = shards.max(inputs.score).max(inputs.queues);
    let overall = if overall == HealthStatus::Pass && inputs.database_degraded {
        HealthStatus::Warn
    } else {
        overall
    };
    Verdict { shards, overall }
}

/// What every body is rendered from, worked out once per publish.
struct View<'a> {
    state: &'a ClusterState,
    identity: &'a Identity,
    evaluator: &'a Evaluator,
    now: Instant,
    facts: Vec<ShardFacts>,
    running: usize,
    parked: usize,
    stale: usize,
    queued: u64,
    queue_check: HealthStatus,
    verdict: Verdict,
    active_alerts: Vec<&'a Alert>,
    recent_alerts: Vec<&'a Alert>,
    latest: Sample,
    uptime: Duration,
    /// Summed from the facts: each shard's totals are worked out once per publish.
    totals: Totals,
    window_latency: Histogram<u64>,
    lifetime_latency: Histogram<u64>,
}

impl<'a> View<'a> {
    fn new(
        state: &'a ClusterState,
        identity: &'a Identity,
        control: &Control,
        evaluator: &'a Evaluator,
        now: Instant,
    ) -> Self {
        let facts: Vec<ShardFacts> = state
            .shards
            .iter()
            .map(|t| shard_facts(t, state.interval, now))
            .collect();
        let count = |keep: fn(&ShardFacts) -> bool| facts.iter().filter(|f| keep(f)).count();
        let running = count(|f| f.state == ShardState::Running);
        let parked = count(|f| matches!(f.state, ShardState::Parked | ShardState::Draining));
        let stale = count(|f| f.stale);
        let queued = state.queued_jobs();
        let queue_check = super::queues::queue_status(
            queued,
            identity.queue_size_warning,
            identity.queue_size_critical,
        );
        let verdict = overall_status(StatusInputs {
            shards: facts.len(),
            running,
            parked,
            stale,
            active_shards: evaluator.active_shards,
            shutting_down: control.is_shutting_down(),
            score: evaluator.grade.health(),
            queues: queue_check,
            database_degraded: db::status::health_word(identity.database.as_deref()) == "warn",
        });
        let (active_alerts, recent_alerts) = evaluator.book.listing();
        let totals: Totals = facts.iter().map(|f| &f.totals).sum();
        let (window_latency, lifetime_latency) = state.merged_latency();
        View {
            state,
            identity,
            evaluator,
            now,
            running,
            parked,
            stale,
            queued,
            queue_check,
            verdict,
            active_alerts,
            recent_alerts,
            latest: evaluator.latest().cloned().unwrap_or_default(),
            uptime: now.saturating_duration_since(control.started_at),
            totals,
            facts,
            window_latency,
            lifetime_latency,
        }
    }

    fn firing(&self) -> Vec<&'a Alert> {
        self.active_alerts
            .iter()
            .copied()
            .filter(|a| a.state == AlertState::Firing)
            .collect()
    }

    fn database(&self) -> Option<&'a db::Database> {
        self.identity.database.as_deref()
    }
}

pub fn publish(
    state: &ClusterState,
    identity: &Identity,
    control: &Control,
    evaluator: &Evaluator,
    now: Instant,
) -> Published {
    let view = View::new(state, identity, control, evaluator, now);
    Published {
        health_status: view.verdict.overall,
        health: health_body(&view).to_string().into(),
        cluster_status: cluster_status_body(&view).to_string().into(),
        metrics: metrics_body(&view).to_string().into(),
        prometheus: prometheus(&view).into(),
        queues_status: super::queues::status_body(state, view.queue_check)
            .to_string()
            .into(),
        alerts: alerts_body(&view).to_string().into(),
        running_shards: view.running,
    }
}

/// `GET /health`: `application/health+json`.
fn health_body(view: &View) -> Value {
    let evaluator = view.evaluator;
    let (running, parked, stale) = (view.running, view.parked, view.stale);
    let firing = view.firing();
    let alerts_status = if firing.iter().any(|a| a.severity == Severity::Critical) {
        "fail"
    } else if firing.is_empty() {
        "pass"
    } else {
        "warn"
    };
    let mut health = json!({
        "status": view.verdict.overall,
        "version": VERSION,
        "serviceId": "coinbit",
        "description": "CoinBitClub Enterprise API",
        "uptime_seconds": view.uptime.as_secs(),
        "engine": view.identity.engine,
        "checks": {
            "shards:running": [{
                "componentType": "system",
                "observedValue": running,
                "observedUnit": "shards",
                "status": view.verdict.shards,
                "output": format!("{running} of {} shards running, {parked} parked by auto-scaling", view.facts.len()),
            }],
            "shards:heartbeat": [{
                "componentType": "system",
                "observedValue": stale,
                "observedUnit": "stale shards",
                "status": if stale == 0 { "pass" } else { "warn" },
            }],
            "database": db::status::health_check(view.database()),
            "http:connections": [{
                "componentType": "component",
                "observedValue": view.totals.connections.open,
                "observedUnit": "connections",
                "status": "pass",
            }],
            "monitor:health-score": [{
                "componentType": "system",
                "observedValue": evaluator.score,
                "observedUnit": "score (0-100)",
                "status": evaluator.grade.health(),
                "output": evaluator.grade,
            }],
            "monitor:alerts": [{
                "componentType": "system",
                "observedValue": firing.len(),
                "observedUnit": "firing alerts",
                "status": alerts_status,
                "output": firing.iter().map(|a| a.message.as_str()).collect::<Vec<_>>().join("; "),
            }],
        },
        "health_score": evaluator.score,
        "grade": evaluator.grade,
    });
    health["checks"]["queues:size"] = super::queues::health_check(
        view.queued,
        view.queue_check,
        view.identity.queue_size_warning,
        view.identity.queue_size_critical,
    );
    health
}

/// `GET /api/enterprise/cluster/status`.
fn cluster_status_body(view: &View) -> Value {
    let (identity, evaluator) = (view.identity, view.evaluator);
    let policy = &evaluator.settings.policy;
    json!({
        "engine": identity.engine,
        "version": VERSION,
        "pid": std::process::id(),
        "uptime_seconds": view.uptime.as_secs(),
        "status": view.verdict.overall,
        "monitor": {
            "cpu": identity.monitor_cpu,
            "tid": view.state.monitor_tid,
            "shares_core": identity.monitor_shares_core,
        },
        "cluster": {
            "shards": view.facts.len(),
            "running_shards": view.running,
            "min_workers": identity.min_workers,
            "max_workers": identity.max_workers,
            "active_shards": evaluator.active_shards,
            "scaling": {
                "min_active": policy.min,
                "max_active": policy.max,
                "scale_up_threshold": policy.up,
                "scale_down_threshold": policy.down,
                "cooldown_ms": policy.cooldown.as_millis() as u64,
                "cpu_percent": round(view.latest.cpu, 1),
                "events": evaluator.scale_events,
            },
        },
        "health_score": evaluator.score,
        "grade": evaluator.grade,
        "shards": shard_rows(view),
        "database": db::status::cluster_section(view.database()),
    })
}

/// One row per shard of the cluster status.
fn shard_rows(view: &View) -> Vec<Value> {
    view.state
        .shards
        .iter()
        .zip(&view.facts)
        .map(|(track, fact)| {
            let totals = &fact.totals;
            json!({
                "id": track.slot.id,
                "cpu": track.slot.cpu,
                "tid": track.slot.tid(),
                "state": if fact.stale { "stale" } else { fact.state.as_str() },
                "active": track.slot.id < view.evaluator.active_shards,
                "cpu_percent": view.latest.shard_cpu.get(track.slot.id).map(|c| round(*c, 1)),
                "generation": track.generation,
                "open_connections": totals.connections.open,
                "requests_served": totals.requests(),
                "heartbeat_age_ms": fact.heartbeat_age.map(|a| a.as_millis() as u64),
                "restarts": track.slot.restarts(),
            })
        })
        .collect()
}

/// `GET /api/enterprise/metrics`: merged and per-shard traffic, routes, the dashboard's history.
fn metrics_body(view: &View) -> Value {
    let (state, evaluator, now) = (view.state, view.evaluator, view.now);
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
        .zip(&view.facts)
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
    let history_from = evaluator.history.len().saturating_sub(CHART_POINTS);
    json!({
        "window_seconds": WINDOW.as_secs(),
        "snapshot_interval_ms": state.interval.as_millis() as u64,
        "merged": traffic(&view.totals, window_requests, window_errors, window_span, &view.window_latency, &view.lifetime_latency),
        "shards": per_shard,
        "routes": route_counts(state, &view.totals),
        "monitoring": {
            "interval_ms": evaluator.settings.interval.as_millis() as u64,
            "health_score": evaluator.score,
            "grade": evaluator.grade,
            "latest": view.latest,
            "history": evaluator.history.iter().skip(history_from).collect::<Vec<_>>(),
        },
    })
}

/// Responses by route and status class, the unrouted ones last.
fn route_counts(state: &ClusterState, totals: &Totals) -> serde_json::Map<String, Value> {
    let mut routes = serde_json::Map::new();
    for (name, counts) in state.routes.iter().zip(&totals.counts.by_route) {
        routes.insert((*name).to_string(), class_counts(counts));
    }
    routes.insert(
        "unrouted".to_string(),
        class_counts(&totals.counts.unrouted),
    );
    routes
}

/// `GET /api/enterprise/alerts`: alerts, recovery actions, thresholds, webhook delivery.
fn alerts_body(view: &View) -> Value {
    let evaluator = view.evaluator;
    let thresholds: serde_json::Map<String, Value> = Metric::ALL
        .iter()
        .map(|&m| {
            let (warning, critical) = evaluator.settings.thresholds.of(m);
            (
                m.name().to_string(),
                json!({ "warning": warning, "critical": critical, "unit": m.unit() }),
            )
        })
        .collect();
    let webhook = evaluator.webhook.as_ref().map(|w| {
        use std::sync::atomic::Ordering::Relaxed;
        json!({
            "url": crate::config::redact(&w.url),
            "delivered": w.stats.delivered.load(Relaxed),
            "failed": w.stats.failed.load(Relaxed),
            "retries": w.stats.retries.load(Relaxed),
            "dropped": w.stats.dropped.load(Relaxed),
        })
    });
    json!({
        "health_score": evaluator.score,
        "grade": evaluator.grade,
        "cooldown_ms": evaluator.settings.cooldown_ms,
        "active": view.active_alerts,
        "recent": view.recent_alerts,
        "actions": evaluator.actions,
        "thresholds": thresholds,
        "webhook": webhook,
    })
}

/// `GET /metrics`: every family, the queues' and the database's included.
fn prometheus(view: &View) -> String {
    let mut w = PromWriter::with_capacity(8 * 1024);
    traffic_families(&mut w, view);
    shard_families(&mut w, view.state, &view.facts);
    w.family(
        "coinbit_health_status",
        Kind::Gauge,
        "0 pass, 1 warn, 2 fail.",
    );
    w.sample(&[], view.verdict.overall as u8);
    w.family(
        "coinbit_uptime_seconds",
        Kind::Gauge,
        "Seconds since start.",
    );
    w.sample(&[], view.uptime.as_secs_f64());
    w.family("coinbit_build_info", Kind::Gauge, "Version and engine.");
    w.sample(
        &[("version", &VERSION), ("engine", &view.identity.engine)],
        1,
    );
    monitoring_families(&mut w, view.evaluator, &view.latest, &view.firing());
    super::queues::prometheus(view.state, &mut w);
    if let Some(database) = view.database() {
        db::status::prometheus(database, &mut w);
    }
    w.finish()
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
        "client_errors_total": totals.client_errors(),
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
            "rejected_overload_total": totals.connections.rejected_overload,
            "read_buffers": totals.connections.read_buffers,
            "idle_settles_total": totals.connections.idle_settles,
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

/// The traffic families: responses by route and class, client errors, latency.
fn traffic_families(w: &mut PromWriter, view: &View) {
    let state = view.state;
    w.family(
        "coinbit_http_requests_total",
        Kind::Counter,
        "HTTP responses by shard, route and status class.",
    );
    for (track, fact) in state.shards.iter().zip(&view.facts) {
        let t = &fact.totals;
        let routed = state.routes.iter().zip(&t.counts.by_route);
        for (route, counts) in routed.chain(std::iter::once((&"unrouted", &t.counts.unrouted))) {
            for (class, n) in STATUS_CLASSES.iter().zip(counts).filter(|(_, n)| **n > 0) {
                w.sample(
                    &[
                        ("shard", &track.slot.id),
                        ("route", route),
                        ("class", class),
                    ],
                    n,
                );
            }
        }
    }

    w.family(
        "coinbit_http_client_errors_total",
        Kind::Counter,
        "Requests that failed by the client's fault (4xx, and every request refused as malformed); left out of the error rate.",
    );
    for (track, fact) in state.shards.iter().zip(&view.facts) {
        w.sample(&[("shard", &track.slot.id)], fact.totals.client_errors());
    }

    w.family(
        "coinbit_http_request_duration_seconds",
        Kind::Histogram,
        "Time from a request's arrival to its response being ready.",
    );
    let sum_seconds = view.totals.latency_sum_micros as f64 / 1e6;
    w.histogram(&[], &LATENCY_BUCKETS, &view.lifetime_latency, sum_seconds);
}

/// The per-shard families: connections, restarts, up, heartbeat age.
fn shard_families(w: &mut PromWriter, state: &ClusterState, facts: &[ShardFacts]) {
    type Gauge = fn(&ShardTrack, &ShardFacts) -> f64;
    let per_shard: [(&'static str, Kind, &str, Gauge); 9] = [
        (
            "coinbit_http_connections_open",
            Kind::Gauge,
            "Open client connections.",
            |_, f| f.totals.connections.open as f64,
        ),
        (
            "coinbit_http_connections_accepted_total",
            Kind::Counter,
            "Connections accepted.",
            |_, f| f.totals.connections.accepted as f64,
        ),
        (
            "coinbit_http_connections_rejected_total",
            Kind::Counter,
            "Connections refused with 503 at the per-shard cap.",
            |_, f| f.totals.connections.rejected_at_cap as f64,
        ),
        (
            "coinbit_http_request_timeouts_total",
            Kind::Counter,
            "Connections closed because a request arrived too slowly.",
            |_, f| f.totals.connections.request_timeouts as f64,
        ),
        (
            "coinbit_http_idle_timeouts_total",
            Kind::Counter,
            "Keep-alive connections closed after the idle timeout.",
            |_, f| f.totals.connections.idle_timeouts as f64,
        ),
        (
            "coinbit_http_read_buffers",
            Kind::Gauge,
            "Read buffers lent to connections (an idle keep-alive connection holds none).",
            |_, f| f.totals.connections.read_buffers as f64,
        ),
        (
            "coinbit_http_idle_settles_total",
            Kind::Counter,
            "Times an idle connection moved to its cheapest wait after a second of silence (may: stack pages given back; glommio: receive buffer given back).",
            |_, f| f.totals.connections.idle_settles as f64,
        ),
        (
            "coinbit_shard_restarts_total",
            Kind::Counter,
            "Times the shard was restarted after dying.",
            |t, _| t.slot.restarts() as f64,
        ),
        (
            "coinbit_shard_up",
            Kind::Gauge,
            "1 while the shard runs and reports.",
            |_, f| f64::from(u8::from(f.state == ShardState::Running && !f.stale)),
        ),
    ];
    for (metric, kind, help, value) in per_shard {
        w.family(metric, kind, help);
        for (track, fact) in state.shards.iter().zip(facts) {
            let labels: Labels<'_> = &[("shard", &track.slot.id), ("cpu", &track.slot.cpu)];
            w.sample(labels, value(track, fact));
        }
    }
    w.family(
        "coinbit_shard_heartbeat_age_seconds",
        Kind::Gauge,
        "Time since the shard's last report.",
    );
    for (track, fact) in state.shards.iter().zip(facts) {
        if let Some(age) = fact.heartbeat_age {
            w.sample(&[("shard", &track.slot.id)], age.as_secs_f64());
        }
    }
}

/// The monitoring families: health score, firing alerts, CPU and memory, recovery actions.
fn monitoring_families(
    w: &mut PromWriter,
    evaluator: &Evaluator,
    latest: &Sample,
    firing: &[&Alert],
) {
    w.family("coinbit_health_score", Kind::Gauge, "Health score, 0-100.");
    w.sample(&[], evaluator.score);
    w.family(
        "coinbit_alerts_firing",
        Kind::Gauge,
        "Alerts firing, by severity.",
    );
    for (label, severity) in [
        ("warning", Severity::Warning),
        ("critical", Severity::Critical),
    ] {
        let n = firing.iter().filter(|a| a.severity == severity).count();
        w.sample(&[("severity", &label)], n);
    }
    w.family(
        "coinbit_shard_cpu_percent",
        Kind::Gauge,
        "CPU of each shard's thread over the last sample, % of one CPU.",
    );
    for (id, cpu) in latest.shard_cpu.iter().enumerate() {
        w.sample(&[("shard", &id)], cpu);
    }
    let gauges = [
        (
            "coinbit_process_cpu_percent",
            "CPU of the process, % of the CPUs it may use.",
            latest.process_cpu,
        ),
        (
            "coinbit_monitor_cpu_percent",
            "CPU of the monitor thread, % of one CPU.",
            latest.monitor_cpu,
        ),
        (
            "coinbit_memory_percent",
            "Resident memory, % of the host's memory.",
            latest.memory,
        ),
        (
            "coinbit_queued_jobs",
            "Jobs waiting in the per-core queues.",
            latest.queued_jobs as f64,
        ),
        (
            "coinbit_active_shards",
            "Shards active (not parked by auto-scaling).",
            evaluator.active_shards as f64,
        ),
    ];
    for (metric, help, value) in gauges {
        w.family(metric, Kind::Gauge, help);
        w.sample(&[], value);
    }
    w.family(
        "coinbit_recovery_actions_total",
        Kind::Counter,
        "Automatic recovery actions taken.",
    );
    for action in &evaluator.actions {
        w.sample(&[("action", &action.name)], action.taken);
    }
    w.family(
        "coinbit_recovery_action_active",
        Kind::Gauge,
        "1 while a recovery action is in force.",
    );
    for action in &evaluator.actions {
        w.sample(&[("action", &action.name)], u8::from(action.active));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, LagLimit, NodeSpec};
    use crate::db::{availability, Database, Node};
    use crate::metrics::ShardMetrics;
    use crate::queue::QueueReport;
    use crate::shard::ShardSlot;
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Arc;

    fn node(name: &str, is_primary: bool) -> Arc<Node> {
        let spec = NodeSpec {
            name: name.into(),
            variable: "DATABASE_URL".into(),
            display_url: format!("postgres://coinbit@{name}/coinbit"),
            weight: 3,
            pg: postgres::Config::new(),
        };
        let policy = availability::Policy {
            ejection_time: Duration::from_secs(30),
            breaker_failures: 5,
            max_lag: LagLimit {
                bytes: None,
                time: None,
            },
        };
        let (requests, _) = crossbeam::channel::bounded(4);
        Node::new(spec, is_primary, requests, 4, 2, policy)
    }

    /// Two shards (one running and reporting, one never heard from), a queue report, a
    /// database of two nodes, a sample and a recovery action taken: every family and body
    /// section has something to say.
    fn fixture() -> (ClusterState, Identity, Control, Evaluator, Instant) {
        let argv = ["coinbit", "--min-workers", "1", "--max-workers", "2"];
        let config = Cli::parse_from(argv, &[]).unwrap().config;
        let (settings, _) = super::super::evaluation::EvaluationSettings::from_config(&config, 2);
        let slots = vec![
            Arc::new(ShardSlot::new(0, 3)),
            Arc::new(ShardSlot::new(1, 5)),
        ];
        slots[0].set_state(ShardState::Running);
        let mut state = ClusterState::new(slots, &["health", "trades"], Duration::from_secs(1));
        let control = Control::default();
        let reported_at = control.started_at + Duration::from_secs(2);
        let mut metrics = ShardMetrics::new(2);
        metrics.count_route(0, 200);
        metrics.count_route(1, 201);
        metrics.count_route(1, 503);
        metrics.count_unrouted(400);
        metrics.record_latency(3, Duration::from_micros(1_500));
        metrics.connections.open = 2;
        metrics.connections.accepted = 9;
        let mut report = metrics.report(0, 1, 77, reported_at);
        let mut queues = QueueReport::default();
        queues.classes[0].size = 3;
        queues.classes[0].counters.processed = 4;
        queues.classes[0].wait.record(2_000).unwrap();
        queues.classes[0].run.record(40_000).unwrap();
        queues.retained_payload_bytes = 512;
        report.queues = Some(queues);
        state.absorb(report);
        let database = Database {
            nodes: vec![node("primary", true), node("replica1", false)],
            strategy: crate::config::ReplicaStrategy::RoundRobin,
            read_your_writes_wait: Duration::from_millis(50),
            check_interval: Duration::from_secs(1),
            group_commit: 8,
            read_answer_limit: Duration::from_secs(3),
            schema_position: db::Lsn::default(),
            wire_reads: None,
        };
        database.nodes[1].lag_bytes.store(4096, Relaxed);
        database.nodes[1].lag_ms.store(250, Relaxed);
        database.nodes[0].requests.store(12, Relaxed);
        let identity = Identity {
            engine: "glommio",
            monitor_cpu: 7,
            monitor_shares_core: false,
            min_workers: 1,
            max_workers: 2,
            queue_size_warning: 1000,
            queue_size_critical: 5000,
            database: Some(Arc::new(database)),
        };
        let mut evaluator = Evaluator::new(settings, 2, None);
        evaluator.history.push_back(super::super::sample::Sample {
            at_ms: 1_700_000_000_000,
            process_cpu: 12.5,
            shard_cpu: vec![20.25, 0.0],
            monitor_cpu: 1.5,
            cpu: 10.125,
            memory: 3.75,
            queued_jobs: 3,
            ..Default::default()
        });
        evaluator.actions[0].taken = 2;
        let now = reported_at + Duration::from_millis(500);
        (state, identity, control, evaluator, now)
    }

    /// Every body and the Prometheus text, byte for byte, as rendered before the renderer was
    /// split: a change to any of them fails here.
    #[test]
    fn bodies_are_unchanged() {
        let (state, identity, control, evaluator, now) = fixture();
        let published = publish(&state, &identity, &control, &evaluator, now);
        let pid = format!("\"pid\":{},", std::process::id());
        let cluster_status = String::from_utf8_lossy(&published.cluster_status).replace(&pid, "");
        let bodies = [
            (
                "health",
                String::from_utf8_lossy(&published.health).into_owned(),
            ),
            ("cluster_status", cluster_status),
            (
                "metrics",
                String::from_utf8_lossy(&published.metrics).into_owned(),
            ),
            (
                "queues_status",
                String::from_utf8_lossy(&published.queues_status).into_owned(),
            ),
            (
                "alerts",
                String::from_utf8_lossy(&published.alerts).into_owned(),
            ),
            (
                "prometheus",
                String::from_utf8_lossy(&published.prometheus).into_owned(),
            ),
        ];
        let mut rendered = String::new();
        for (name, body) in bodies {
            let _ = writeln!(rendered, "== {name}\n{body}");
        }
        // The version moves with every release: the golden file says VERSION.
        let rendered = rendered
            .replace(
                &format!("\"version\":\"{VERSION}\""),
                "\"version\":\"VERSION\"",
            )
            .replace(&format!("version=\"{VERSION}\""), "version=\"VERSION\"");
        // `WRITE_GOLDEN=1 cargo test --lib bodies_are_unchanged` rewrites the file after an
        // intended change; review its diff.
        if std::env::var_os("WRITE_GOLDEN").is_some() {
            std::fs::write("src/monitor/testdata/bodies.golden", &rendered).unwrap();
        }
        assert_eq!(rendered, include_str!("testdata/bodies.golden"));
    }

    /// Every line of `/metrics` parses as the text format says: a family's HELP then its TYPE,
    /// once, and samples named after the open family (histograms with their suffixes), each
    /// with a number. The golden file pins the bytes; this pins the shape whatever they are.
    #[test]
    fn every_prometheus_line_parses() {
        let (state, identity, control, evaluator, now) = fixture();
        let published = publish(&state, &identity, &control, &evaluator, now);
        let text = std::str::from_utf8(&published.prometheus).unwrap();
        let mut families: Vec<&str> = Vec::new();
        let mut kind = "";
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(!families.contains(&name), "{name} opened twice");
                families.push(name);
                let type_line = lines.next().unwrap_or_default();
                let rest = type_line.strip_prefix("# TYPE ").expect(type_line);
                let (typed, k) = rest.split_once(' ').expect(type_line);
                assert_eq!(typed, name, "{type_line}");
                assert!(
                    ["counter", "gauge", "histogram"].contains(&k),
                    "{type_line}"
                );
                kind = k;
                continue;
            }
            let family = *families.last().expect("a sample before any family");
            let (series, value) = line.rsplit_once(' ').expect(line);
            assert!(value.parse::<f64>().is_ok(), "{line}");
            let name = series.split('{').next().unwrap();
            let suffixes: &[&str] = if kind == "histogram" {
                &["_bucket", "_sum", "_count"]
            } else {
                &[""]
            };
            assert!(
                suffixes.iter().any(|s| name == format!("{family}{s}")),
                "{line} is not of {family}"
            );
            if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
                let labels = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}'));
                for label in labels.expect(line).split("\",") {
                    let (key, quoted) = label.trim_end_matches('"').split_once("=\"").expect(line);
                    assert!(!key.is_empty() && !quoted.contains('"'), "{line}");
                }
            }
        }
        assert!(families.len() > 50, "{} families", families.len());
    }

    #[test]
    fn overall_status_table() {
        use HealthStatus::*;
        let all_well = StatusInputs {
            shards: 4,
            running: 4,
            parked: 0,
            stale: 0,
            active_shards: 4,
            shutting_down: false,
            score: Pass,
            queues: Pass,
            database_degraded: false,
        };
        let verdict = |shards, overall| Verdict { shards, overall };
        let cases = [
            ("all well", all_well, verdict(Pass, Pass)),
            (
                "parked by auto-scaling are not missing",
                StatusInputs {
                    running: 2,
                    parked: 2,
                    active_shards: 2,
                    ..all_well
                },
                verdict(Pass, Pass),
            ),
            (
                "parked beyond what auto-scaling wants are missing",
                StatusInputs {
                    running: 2,
                    parked: 2,
                    active_shards: 3,
                    ..all_well
                },
                verdict(Warn, Warn),
            ),
            (
                "a stale shard",
                StatusInputs {
                    stale: 1,
                    ..all_well
                },
                verdict(Warn, Warn),
            ),
            (
                "none running",
                StatusInputs {
                    running: 0,
                    ..all_well
                },
                verdict(Fail, Fail),
            ),
            (
                "a critical score",
                StatusInputs {
                    score: Fail,
                    ..all_well
                },
                verdict(Pass, Fail),
            ),
            (
                "queues past the warning",
                StatusInputs {
                    queues: Warn,
                    ..all_well
                },
                verdict(Pass, Warn),
            ),
            (
                "a database in trouble degrades",
                StatusInputs {
                    database_degraded: true,
                    ..all_well
                },
                verdict(Pass, Warn),
            ),
            (
                "a database in trouble never makes it worse than it is",
                StatusInputs {
                    database_degraded: true,
                    queues: Fail,
                    ..all_well
                },
                verdict(Pass, Fail),
            ),
        ];
        for (case, inputs, expected) in cases {
            assert_eq!(overall_status(inputs), expected, "{case}");
        }
    }

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
