//! Per-shard request metrics: counters and an HDR latency histogram, owned by the shard.
//!
//! A shard records into its own [`ShardMetrics`] without synchronisation and, once per snapshot
//! interval, sends a [`ShardReport`] to the monitor over a channel: cumulative counters plus the
//! latency histogram of the interval (then reset). The monitor merges; shards never read each
//! other's metrics.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Highest latency the histograms track exactly; slower requests are recorded at this value.
pub const MAX_TRACKED_LATENCY: Duration = Duration::from_secs(60);
/// Significant figures of the latency histograms (0.1 % precision).
const SIGNIFICANT_FIGURES: u8 = 3;

/// A latency histogram in microseconds, 1 µs to 60 s.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(
        1,
        MAX_TRACKED_LATENCY.as_micros() as u64,
        SIGNIFICANT_FIGURES,
    )
    .expect("static histogram bounds are valid")
}

/// Response status classes counted per route: 1xx..5xx.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn class_index(status: u16) -> usize {
    (usize::from(status / 100)).clamp(1, 5) - 1
}

/// Connection-level counters of one shard, cumulative since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionCounters {
    pub open: u64,
    pub accepted: u64,
    /// Refused with 503 because the shard was at its connection cap.
    pub rejected_at_cap: u64,
    /// Closed because a request was not received in time (slow clients).
    pub request_timeouts: u64,
    /// Closed after the keep-alive idle timeout.
    pub idle_timeouts: u64,
    /// Requests the codec refused (400, 411, 413, 414, 431, 505): client errors.
    pub protocol_errors: u64,
    /// Refused with 503 while memory was critical (auto-recovery).
    pub rejected_overload: u64,
    /// Read buffers lent to connections at the last report (a gauge): requests being received
    /// or parsed; an idle keep-alive connection holds none.
    pub read_buffers: u64,
    /// Times an idle connection moved to its engine's cheapest wait after
    /// [`crate::engine::SETTLE_AFTER`] of silence (may: gave its dead stack pages back;
    /// glommio: traded its pending receive and its buffer for a readiness poll).
    pub idle_settles: u64,
}

/// Responses per route and status class, cumulative.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseCounts {
    /// Per route (indexed as the app names them), per status class.
    pub by_route: Vec<[u64; 5]>,
    /// Responses to requests the codec refused before routing: all of them the client's
    /// errors, whatever their status (505 for an HTTP version it does not speak included).
    pub unrouted: [u64; 5],
}

impl ResponseCounts {
    pub fn new(routes: usize) -> Self {
        ResponseCounts {
            by_route: vec![[0; 5]; routes],
            unrouted: [0; 5],
        }
    }

    fn all(&self) -> impl Iterator<Item = &[u64; 5]> {
        self.by_route.iter().chain(std::iter::once(&self.unrouted))
    }

    /// Requests answered.
    pub fn requests(&self) -> u64 {
        self.all().flatten().sum()
    }

    /// Failures the server caused: 5xx answers of routed requests. A request the codec refused
    /// was malformed, so its answer is a client error even where its status is a 5xx.
    pub fn server_errors(&self) -> u64 {
        self.by_route.iter().map(|c| c[4]).sum()
    }

    /// Errors the client caused: 4xx answers of routed requests and every refusal of the codec.
    pub fn client_errors(&self) -> u64 {
        let routed: u64 = self.by_route.iter().map(|c| c[3]).sum();
        routed + self.unrouted.iter().sum::<u64>()
    }

    /// Adds `other` in, class by class.
    pub fn add(&mut self, other: &ResponseCounts) {
        if self.by_route.len() < other.by_route.len() {
            self.by_route.resize(other.by_route.len(), [0; 5]);
        }
        let theirs = other
            .by_route
            .iter()
            .chain(std::iter::once(&other.unrouted));
        let mine = self
            .by_route
            .iter_mut()
            .chain(std::iter::once(&mut self.unrouted));
        for (m, t) in mine.zip(theirs) {
            m.iter_mut().zip(t).for_each(|(m, t)| *m += t);
        }
    }
}

/// One shard's metrics. Not shared: the shard mutates it in place.
pub struct ShardMetrics {
    counts: ResponseCounts,
    pub connections: ConnectionCounters,
    interval_latency: Histogram<u64>,
    latency_sum_micros: u64,
}

impl ShardMetrics {
    pub fn new(routes: usize) -> Self {
        ShardMetrics {
            counts: ResponseCounts::new(routes),
            connections: ConnectionCounters::default(),
            interval_latency: latency_histogram(),
            latency_sum_micros: 0,
        }
    }

    /// Counts a response of a routed request.
    pub fn count_route(&mut self, route: usize, status: u16) {
        self.counts.by_route[route][class_index(status)] += 1;
    }

    /// Counts a response to a request the codec refused.
    pub fn count_unrouted(&mut self, status: u16) {
        self.counts.unrouted[class_index(status)] += 1;
        self.connections.protocol_errors += 1;
    }

    /// Records `count` responses that took `latency` each.
    pub fn record_latency(&mut self, count: u64, latency: Duration) {
        let micros = (latency.as_micros() as u64).clamp(1, MAX_TRACKED_LATENCY.as_micros() as u64);
        self.interval_latency.saturating_record_n(micros, count);
        self.latency_sum_micros = self
            .latency_sum_micros
            .saturating_add(micros.saturating_mul(count));
    }

    /// The report for the monitor; starts a new latency interval.
    pub fn report(&mut self, shard: usize, generation: u64, tid: i32, at: Instant) -> ShardReport {
        let mut latency = latency_histogram();
        std::mem::swap(&mut latency, &mut self.interval_latency);
        ShardReport {
            shard,
            generation,
            tid,
            at,
            counts: self.counts.clone(),
            connections: self.connections,
            interval_latency: latency,
            latency_sum_micros: self.latency_sum_micros,
            queues: None,
        }
    }
}

/// What a shard sends to the monitor every snapshot interval; also its heartbeat.
#[derive(Debug, Clone)]
pub struct ShardReport {
    pub shard: usize,
    /// Incremented each time the shard is (re)started, so counters can restart from zero.
    pub generation: u64,
    /// OS thread id of the shard.
    pub tid: i32,
    pub at: Instant,
    pub counts: ResponseCounts,
    pub connections: ConnectionCounters,
    /// Latencies recorded since the previous report.
    pub interval_latency: Histogram<u64>,
    pub latency_sum_micros: u64,
    /// The shard's priority queues (filled in by the engine from the shard's queues).
    pub queues: Option<crate::queue::QueueReport>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_carries_counts_and_resets_the_interval() {
        let mut metrics = ShardMetrics::new(2);
        metrics.count_route(0, 200);
        metrics.count_route(1, 503);
        metrics.count_unrouted(400);
        metrics.record_latency(3, Duration::from_micros(250));
        let report = metrics.report(0, 1, 42, Instant::now());
        assert_eq!(report.counts.requests(), 3);
        assert_eq!(report.counts.server_errors(), 1);
        assert_eq!(report.counts.client_errors(), 1);
        assert_eq!(report.connections.protocol_errors, 1);
        assert_eq!(report.interval_latency.len(), 3);
        assert_eq!(report.latency_sum_micros, 750);
        let next = metrics.report(0, 1, 42, Instant::now());
        assert_eq!(next.interval_latency.len(), 0, "the interval starts over");
        assert_eq!(next.counts.requests(), 3, "counters are cumulative");
    }

    #[test]
    fn refusals_of_the_codec_are_client_errors_whatever_their_status() {
        let mut metrics = ShardMetrics::new(1);
        metrics.count_unrouted(505);
        metrics.count_unrouted(501);
        metrics.count_unrouted(400);
        metrics.count_route(0, 404);
        metrics.count_route(0, 503);
        let counts = metrics.report(0, 1, 0, Instant::now()).counts;
        assert_eq!(counts.requests(), 5);
        assert_eq!(counts.server_errors(), 1, "only the routed 503");
        assert_eq!(counts.client_errors(), 4);
    }

    #[test]
    fn latency_is_clamped_to_the_tracked_range() {
        let mut metrics = ShardMetrics::new(1);
        metrics.record_latency(1, Duration::ZERO);
        metrics.record_latency(1, Duration::from_secs(3600));
        let report = metrics.report(0, 1, 0, Instant::now());
        assert_eq!(report.interval_latency.min(), 1);
        assert!(report.interval_latency.max() >= 59_000_000);
    }
}
