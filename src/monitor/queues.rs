//! The shards' queues as the monitor sees them: merged counters and wait/run histograms, the
//! body of `GET /api/enterprise/queues/status`, the `/health` queues check and the Prometheus
//! families.

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use super::merge::ClusterState;
use super::prometheus::{Kind, PromWriter};
use super::HealthStatus;
use crate::queue::report::{queue_histogram, ClassCounters, ClassReport, QueueReport};
use crate::queue::Priority;

/// One shard's queues: the last report of the current generation, counters of earlier ones,
/// and lifetime histograms per class.
pub struct QueueTrack {
    pub latest: Option<QueueReport>,
    carried: [ClassCounters; 4],
    wait: Vec<Histogram<u64>>,
    run: Vec<Histogram<u64>>,
}

impl Default for QueueTrack {
    fn default() -> Self {
        QueueTrack {
            latest: None,
            carried: Default::default(),
            wait: Priority::ALL.iter().map(|_| queue_histogram()).collect(),
            run: Priority::ALL.iter().map(|_| queue_histogram()).collect(),
        }
    }
}

impl QueueTrack {
    pub fn absorb(&mut self, report: Option<QueueReport>, new_generation: bool) {
        if new_generation {
            if let Some(previous) = self.latest.take() {
                for (carried, class) in self.carried.iter_mut().zip(&previous.classes) {
                    carried.add(&class.counters);
                }
            }
        }
        let Some(report) = report else { return };
        for (i, class) in report.classes.iter().enumerate() {
            // Bounds are identical everywhere, so adding cannot fail.
            let _ = self.wait[i].add(&class.wait);
            let _ = self.run[i].add(&class.run);
        }
        self.latest = Some(report);
    }

    /// Counters since the shard first started, per class.
    pub fn counters(&self, class: Priority) -> ClassCounters {
        let mut total = self.carried[class.index()];
        if let Some(latest) = &self.latest {
            total.add(&latest.classes[class.index()].counters);
        }
        total
    }

    fn class(&self, class: Priority) -> Option<&ClassReport> {
        self.latest.as_ref().map(|r| &r.classes[class.index()])
    }

    pub fn queued(&self) -> usize {
        self.latest.as_ref().map_or(0, QueueReport::queued)
    }
}

/// The queues check of `/health`: pass, warn at `warning` jobs waiting, fail at `critical`.
pub fn queue_status(queued: u64, warning: u64, critical: u64) -> HealthStatus {
    if queued >= critical {
        HealthStatus::Fail
    } else if queued >= warning {
        HealthStatus::Warn
    } else {
        HealthStatus::Pass
    }
}

pub fn health_check(queued: u64, status: HealthStatus, warning: u64, critical: u64) -> Value {
    json!([{
        "componentType": "component",
        "observedValue": queued,
        "observedUnit": "jobs queued",
        "status": status,
        "output": format!("{queued} jobs waiting (warn at {warning}, fail at {critical})"),
    }])
}

fn millis(h: &Histogram<u64>, quantile: f64) -> Value {
    if h.is_empty() {
        Value::Null
    } else {
        json!((h.value_at_quantile(quantile) as f64 / 1000.0 * 1000.0).round() / 1000.0)
    }
}

fn class_body(
    counters: &ClassCounters,
    gauges: (usize, usize, usize, usize, u32),
    wait: &Histogram<u64>,
    run: &Histogram<u64>,
) -> Value {
    let (workers, size, in_flight, retrying, weight) = gauges;
    json!({
        "workers": workers,
        "weight": weight,
        "size": size,
        "in_flight": in_flight,
        "retrying": retrying,
        "enqueued": counters.enqueued,
        "processed": counters.processed,
        "failed": counters.failed,
        "retried": counters.retried,
        "timed_out": counters.timed_out,
        "dead": counters.dead,
        "dead_dropped": counters.dead_dropped,
        "handed_off": counters.handed_off,
        "handed_in": counters.handed_in,
        "rejected": counters.rejected,
        "replayed": counters.replayed,
        "duplicates": counters.duplicates,
        "requests": { "passed": counters.requests_passed, "waited": counters.requests_waited },
        "wait_ms": { "count": wait.len(), "p50": millis(wait, 0.5), "p99": millis(wait, 0.99) },
        "run_ms": { "count": run.len(), "p50": millis(run, 0.5), "p99": millis(run, 0.99) },
    })
}

/// The body of `GET /api/enterprise/queues/status`: per class (all shards) and per shard.
pub fn status_body(state: &ClusterState, status: HealthStatus) -> Value {
    let mut merged = Map::new();
    for class in Priority::ALL {
        let mut counters = ClassCounters::default();
        let (mut wait, mut run) = (queue_histogram(), queue_histogram());
        let mut gauges = (0, 0, 0, 0, 0);
        for track in &state.shards {
            let q = &track.queues;
            counters.add(&q.counters(class));
            let _ = wait.add(&q.wait[class.index()]);
            let _ = run.add(&q.run[class.index()]);
            if let Some(c) = q.class(class) {
                gauges.0 += c.workers;
                gauges.1 += c.size;
                gauges.2 += c.in_flight;
                gauges.3 += c.retrying;
                gauges.4 = gauges.4.max(c.weight);
            }
        }
        merged.insert(
            class.as_str().into(),
            class_body(&counters, gauges, &wait, &run),
        );
    }
    let shards: Vec<Value> = state
        .shards
        .iter()
        .map(|track| {
            let q = &track.queues;
            let mut classes = Map::new();
            for class in Priority::ALL {
                let gauges = q.class(class).map_or((0, 0, 0, 0, class.weight()), |c| {
                    (c.workers, c.size, c.in_flight, c.retrying, c.weight)
                });
                classes.insert(
                    class.as_str().into(),
                    class_body(
                        &q.counters(class),
                        gauges,
                        &q.wait[class.index()],
                        &q.run[class.index()],
                    ),
                );
            }
            json!({
                "id": track.slot.id,
                "queued": q.queued(),
                "dead_letters": q.latest.as_ref().map_or(0, |r| r.dead_letters),
                "retained_payload_bytes": retained_payload_bytes(q),
                "classes": classes,
            })
        })
        .collect();
    json!({
        "status": status,
        "queued": state.queued_jobs(),
        "retained_payload_bytes": state
            .shards
            .iter()
            .map(|track| retained_payload_bytes(&track.queues))
            .sum::<usize>(),
        "snapshot_interval_ms": state.interval.as_millis() as u64,
        "classes": merged,
        "shards": shards,
    })
}

/// Payload bytes a shard's jobs hold, from its latest report.
fn retained_payload_bytes(queues: &QueueTrack) -> usize {
    queues
        .latest
        .as_ref()
        .map_or(0, |r| r.retained_payload_bytes)
}

/// Wait and run time buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The Prometheus families of the queues.
pub fn prometheus(state: &ClusterState, w: &mut PromWriter) {
    type Gauge = fn(&ClassReport) -> usize;
    let gauges: [(&'static str, &str, Gauge); 3] = [
        ("coinbit_queue_size", "Jobs waiting for a worker.", |c| {
            c.size
        }),
        ("coinbit_queue_in_flight", "Jobs running.", |c| c.in_flight),
        (
            "coinbit_queue_retrying",
            "Jobs waiting for their next attempt.",
            |c| c.retrying,
        ),
    ];
    for (name, help, value) in gauges {
        w.family(name, Kind::Gauge, help);
        for track in &state.shards {
            for class in Priority::ALL {
                if let Some(c) = track.queues.class(class) {
                    w.sample(
                        &[("shard", &track.slot.id), ("class", &class.as_str())],
                        value(c),
                    );
                }
            }
        }
    }
    w.family(
        "coinbit_queue_retained_payload_bytes",
        Kind::Gauge,
        "Payload bytes the shard's queued, running and dead jobs hold.",
    );
    for track in &state.shards {
        w.sample(
            &[("shard", &track.slot.id)],
            retained_payload_bytes(&track.queues),
        );
    }
    counter_families(state, w);
    histogram_families(state, w);
}

/// The queues' counters, per shard and class.
fn counter_families(state: &ClusterState, w: &mut PromWriter) {
    type Counter = fn(&ClassCounters) -> u64;
    let counters: [(&'static str, &str, Counter); 11] = [
        ("coinbit_queue_jobs_enqueued_total", "Jobs accepted.", |c| {
            c.enqueued
        }),
        (
            "coinbit_queue_jobs_processed_total",
            "Jobs completed.",
            |c| c.processed,
        ),
        (
            "coinbit_queue_jobs_failed_total",
            "Attempts that failed.",
            |c| c.failed,
        ),
        (
            "coinbit_queue_jobs_timed_out_total",
            "Attempts cancelled at their timeout.",
            |c| c.timed_out,
        ),
        (
            "coinbit_queue_jobs_retried_total",
            "Attempts scheduled again.",
            |c| c.retried,
        ),
        (
            "coinbit_queue_jobs_dead_total",
            "Jobs moved to the dead letters.",
            |c| c.dead,
        ),
        (
            "coinbit_queue_jobs_handed_off_total",
            "Jobs handed to another shard past the high-water mark.",
            |c| c.handed_off,
        ),
        (
            "coinbit_queue_jobs_rejected_total",
            "Enqueues refused with 429 (queue full).",
            |c| c.rejected,
        ),
        (
            "coinbit_queue_jobs_replayed_total",
            "Dead letters replayed.",
            |c| c.replayed,
        ),
        (
            "coinbit_queue_requests_passed_total",
            "HTTP requests of the class's routes that ran at once.",
            |c| c.requests_passed,
        ),
        (
            "coinbit_queue_requests_waited_total",
            "HTTP requests of the class's routes that waited for a turn.",
            |c| c.requests_waited,
        ),
    ];
    for (name, help, value) in counters {
        w.family(name, Kind::Counter, help);
        for track in &state.shards {
            for class in Priority::ALL {
                w.sample(
                    &[("shard", &track.slot.id), ("class", &class.as_str())],
                    value(&track.queues.counters(class)),
                );
            }
        }
    }
}

/// Wait and run time per class, all shards merged.
fn histogram_families(state: &ClusterState, w: &mut PromWriter) {
    type Pick = fn(&QueueTrack) -> &[Histogram<u64>];
    let families: [(&'static str, &str, Pick); 2] = [
        (
            "coinbit_queue_wait_seconds",
            "Time from enqueue (or retry) to the start of an attempt.",
            |q| &q.wait,
        ),
        ("coinbit_queue_run_seconds", "Time an attempt ran.", |q| {
            &q.run
        }),
    ];
    for (name, help, pick) in families {
        w.family(name, Kind::Histogram, help);
        for class in Priority::ALL {
            let mut h = queue_histogram();
            for track in &state.shards {
                let _ = h.add(&pick(&track.queues)[class.index()]);
            }
            let sum_seconds: f64 = h
                .iter_recorded()
                .map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64)
                .sum::<f64>()
                / 1e6;
            w.histogram(&[("class", &class.as_str())], &BUCKETS, &h, sum_seconds);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_check_table() {
        use HealthStatus::*;
        for (queued, expected) in [
            (0, Pass),
            (999, Pass),
            (1000, Warn),
            (4999, Warn),
            (5000, Fail),
        ] {
            assert_eq!(queue_status(queued, 1000, 5000), expected, "{queued}");
        }
    }

    #[test]
    fn restarts_carry_queue_counters() {
        let mut track = QueueTrack::default();
        let mut report = QueueReport::default();
        report.classes[0].counters.processed = 5;
        report.classes[0].wait.record(1000).unwrap();
        track.absorb(Some(report.clone()), true);
        report.classes[0].counters.processed = 7;
        track.absorb(Some(report.clone()), false);
        assert_eq!(track.counters(Priority::High).processed, 7);
        let mut fresh = QueueReport::default();
        fresh.classes[0].counters.processed = 2;
        track.absorb(Some(fresh), true);
        assert_eq!(track.counters(Priority::High).processed, 9, "7 carried + 2");
        assert_eq!(track.wait[0].len(), 2, "each interval's waits added once");
    }
}
