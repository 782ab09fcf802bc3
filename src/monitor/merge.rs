//! Merging shard reports: lifetime and recent-window latency, rates, heartbeats.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::metrics::{latency_histogram, ConnectionCounters, ResponseCounts, ShardReport};
use crate::shard::ShardSlot;

/// Rates and recent percentiles cover this much time.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Routes whose 503 is an answer about the server, not a failure of it: left out of the
/// error rate the alerts read (else a failing health check would keep itself failing).
const PROBE_ROUTES: [&str; 2] = ["health", "readyz"];

/// Counters that survive a shard's restart (its own counters start again from zero).
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub counts: ResponseCounts,
    pub connections: ConnectionCounters,
    pub latency_sum_micros: u64,
}

impl Totals {
    fn add(&mut self, other: &Totals) {
        self.counts.add(&other.counts);
        let (c, o) = (&mut self.connections, &other.connections);
        c.open += o.open;
        c.accepted += o.accepted;
        c.rejected_at_cap += o.rejected_at_cap;
        c.request_timeouts += o.request_timeouts;
        c.idle_timeouts += o.idle_timeouts;
        c.protocol_errors += o.protocol_errors;
        c.rejected_overload += o.rejected_overload;
        c.read_buffers += o.read_buffers;
        c.idle_settles += o.idle_settles;
        self.latency_sum_micros += other.latency_sum_micros;
    }

    fn from_report(report: &ShardReport) -> Totals {
        Totals {
            counts: report.counts.clone(),
            connections: report.connections,
            latency_sum_micros: report.latency_sum_micros,
        }
    }

    pub fn requests(&self) -> u64 {
        self.counts.requests()
    }

    pub fn server_errors(&self) -> u64 {
        self.counts.server_errors()
    }

    pub fn client_errors(&self) -> u64 {
        self.counts.client_errors()
    }
}

impl<'a> std::iter::Sum<&'a Totals> for Totals {
    fn sum<I: Iterator<Item = &'a Totals>>(iter: I) -> Totals {
        iter.fold(Totals::default(), |mut sum, totals| {
            sum.add(totals);
            sum
        })
    }
}

/// One interval of a shard's traffic, kept while it is inside the window.
struct Interval {
    /// The interval runs from the shard's previous report (or its start) to `at`.
    start: Instant,
    at: Instant,
    requests: u64,
    server_errors: u64,
    latency: RecordedLatency,
}

/// An interval's latency as its recorded buckets only, (value, count) pairs. A histogram of
/// [`latency_histogram`]'s bounds is 139 KB whatever it holds, and the window keeps an interval
/// per report of every shard: ten at the default report interval, fifty at 200 ms, 1.4–7 MB a
/// shard that stayed resident. An interval's buckets are a few hundred at most.
struct RecordedLatency(Vec<(u64, u64)>);

impl RecordedLatency {
    fn of(histogram: &Histogram<u64>) -> Self {
        // A bucket's highest equivalent value records into that same bucket again.
        RecordedLatency(
            histogram
                .iter_recorded()
                .map(|bucket| (bucket.value_iterated_to(), bucket.count_at_value()))
                .collect(),
        )
    }

    /// Takes these counts out of `histogram`, through `scratch` (a histogram of the same bounds).
    fn subtract_from(&self, histogram: &mut Histogram<u64>, scratch: &mut Histogram<u64>) {
        if self.0.is_empty() {
            return;
        }
        scratch.reset();
        for &(value, count) in &self.0 {
            // Values came from a histogram of the same bounds: recording cannot fail.
            let _ = scratch.record_n(value, count);
        }
        let _ = histogram.subtract(&*scratch);
    }
}

/// What the monitor knows of one shard.
pub struct ShardTrack {
    pub slot: Arc<ShardSlot>,
    pub generation: u64,
    pub last_report_at: Option<Instant>,
    /// Counters of earlier generations (before restarts).
    carried: Totals,
    /// Counters of the current generation, as last reported.
    current: Totals,
    pub lifetime_latency: Histogram<u64>,
    window: VecDeque<Interval>,
    pub window_latency: Histogram<u64>,
    /// The shard's priority queues.
    pub queues: super::queues::QueueTrack,
}

impl ShardTrack {
    pub fn totals(&self) -> Totals {
        let mut totals = self.carried.clone();
        totals.add(&self.current);
        // Open connections of dead generations are gone.
        totals.connections.open = self.current.connections.open;
        totals.connections.read_buffers = self.current.connections.read_buffers;
        totals
    }

    /// Requests and 5xx responses inside the window, and the time it spans.
    pub fn window_counts(&self, now: Instant) -> (u64, u64, Duration) {
        let requests = self.window.iter().map(|i| i.requests).sum();
        let errors = self.window.iter().map(|i| i.server_errors).sum();
        let span = self
            .window
            .front()
            .map(|first| now.saturating_duration_since(first.start))
            .unwrap_or_default();
        (requests, errors, span)
    }
}

/// Traffic of all shards since the monitor's last sample.
pub struct SinceSample {
    pub requests: u64,
    /// 5xx answers, the probes' ([`PROBE_ROUTES`]) left out.
    pub server_errors: u64,
    pub latency: Histogram<u64>,
}

impl Default for SinceSample {
    fn default() -> Self {
        SinceSample {
            requests: 0,
            server_errors: 0,
            latency: latency_histogram(),
        }
    }
}

/// The monitor's merged view of all shards.
pub struct ClusterState {
    pub shards: Vec<ShardTrack>,
    pub routes: &'static [&'static str],
    pub interval: Duration,
    pub monitor_tid: i32,
    since_sample: SinceSample,
    /// Indices of [`PROBE_ROUTES`] in `routes`.
    probe_routes: Vec<usize>,
    /// Where an interval leaving the window is rebuilt to be subtracted.
    scratch: Histogram<u64>,
}

impl ClusterState {
    pub fn new(
        slots: Vec<Arc<ShardSlot>>,
        routes: &'static [&'static str],
        interval: Duration,
    ) -> Self {
        let shards = slots
            .into_iter()
            .map(|slot| ShardTrack {
                slot,
                generation: 0,
                last_report_at: None,
                carried: Totals::default(),
                current: Totals::default(),
                lifetime_latency: latency_histogram(),
                window: VecDeque::new(),
                window_latency: latency_histogram(),
                queues: Default::default(),
            })
            .collect();
        ClusterState {
            shards,
            routes,
            interval,
            monitor_tid: 0,
            since_sample: SinceSample::default(),
            probe_routes: routes
                .iter()
                .enumerate()
                .filter(|(_, name)| PROBE_ROUTES.contains(name))
                .map(|(i, _)| i)
                .collect(),
            scratch: latency_histogram(),
        }
    }

    /// The traffic since the previous call (the sampling interval), then starts over.
    pub fn take_interval(&mut self) -> SinceSample {
        std::mem::take(&mut self.since_sample)
    }

    /// Open client connections over all shards.
    pub fn open_connections(&self) -> u64 {
        self.shards.iter().map(|t| t.current.connections.open).sum()
    }

    /// Jobs waiting in every shard's queues, as their last queue reports say: the one input of
    /// the queue-size threshold, the health score's queue term and the `/health` queues check.
    pub fn queued_jobs(&self) -> u64 {
        self.shards.iter().map(|t| t.queues.queued() as u64).sum()
    }

    /// Takes in one report: a new generation moves the old counters to `carried`. Returns
    /// whether the report came from a new generation (a start or restart).
    pub fn absorb(&mut self, mut report: ShardReport) -> bool {
        let Some(track) = self.shards.get_mut(report.shard) else {
            log::warn!("report from unknown shard {}", report.shard);
            return false;
        };
        // A replaced shard that wakes up may still report: its generation is over.
        if report.generation < track.generation {
            return false;
        }
        let new_generation = report.generation != track.generation;
        if new_generation {
            let previous = std::mem::take(&mut track.current);
            track.carried.add(&previous);
            track.generation = report.generation;
        }
        track.queues.absorb(report.queues.take(), new_generation);
        let probes = &self.probe_routes;
        // 5xx answers other than the probes'.
        let failures = |t: &Totals| {
            let probe_errors: u64 = probes
                .iter()
                .filter_map(|&i| t.counts.by_route.get(i))
                .map(|c| c[4])
                .sum();
            t.server_errors().saturating_sub(probe_errors)
        };
        let before = track.current.requests();
        let errors_before = track.current.server_errors();
        let failures_before = failures(&track.current);
        track.current = Totals::from_report(&report);
        // A new generation's first report covers the time since that shard started, which is
        // when it sends it.
        let start = match track.last_report_at {
            Some(previous) if !new_generation => previous,
            _ => report.at,
        };
        track.last_report_at = Some(report.at);
        let requests = track.current.requests().saturating_sub(before);
        let server_errors = track.current.server_errors().saturating_sub(errors_before);
        self.since_sample.requests += requests;
        self.since_sample.server_errors += failures(&track.current).saturating_sub(failures_before);
        let _ = self.since_sample.latency.add(&report.interval_latency);
        // Histogram bounds are identical everywhere, so adding cannot fail.
        let _ = track.lifetime_latency.add(&report.interval_latency);
        let _ = track.window_latency.add(&report.interval_latency);
        track.window.push_back(Interval {
            start,
            at: report.at,
            requests,
            server_errors,
            latency: RecordedLatency::of(&report.interval_latency),
        });
        new_generation
    }

    /// Drops intervals that left the window.
    pub fn advance_window(&mut self, now: Instant) {
        for track in &mut self.shards {
            while track
                .window
                .front()
                .is_some_and(|i| now.saturating_duration_since(i.at) > WINDOW)
            {
                let old = track.window.pop_front().expect("front exists");
                old.latency
                    .subtract_from(&mut track.window_latency, &mut self.scratch);
            }
        }
    }

    /// Latency of all shards merged: (window, lifetime).
    pub fn merged_latency(&self) -> (Histogram<u64>, Histogram<u64>) {
        let mut window = latency_histogram();
        let mut lifetime = latency_histogram();
        for track in &self.shards {
            let _ = window.add(&track.window_latency);
            let _ = lifetime.add(&track.lifetime_latency);
        }
        (window, lifetime)
    }

    pub fn merged_totals(&self) -> Totals {
        self.shards
            .iter()
            .map(ShardTrack::totals)
            .collect::<Vec<_>>()
            .iter()
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ShardMetrics;

    /// The monitor's view of one shard with one route, reporting every second.
    fn one_shard() -> ClusterState {
        ClusterState::new(
            vec![Arc::new(ShardSlot::new(0, 0))],
            &["health"],
            Duration::from_secs(1),
        )
    }

    fn report(metrics: &mut ShardMetrics, generation: u64, at: Instant) -> ShardReport {
        metrics.report(0, generation, 7, at)
    }

    #[test]
    fn the_window_rate_counts_each_interval_over_its_own_span() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut state = one_shard();
        let mut metrics = ShardMetrics::new(1);
        // The shard reports at start, then 100 requests in each of the next 3 seconds.
        state.absorb(report(&mut metrics, 1, t0));
        for i in 1..=3 {
            for _ in 0..100 {
                metrics.count_route(0, 200);
            }
            state.absorb(report(&mut metrics, 1, t0 + second * i));
        }
        let (requests, _, span) = state.shards[0].window_counts(t0 + second * 3);
        assert_eq!((requests, span), (300, second * 3), "100 per second");
    }

    /// An interval leaving the window takes exactly its own counts with it.
    #[test]
    fn an_interval_leaves_the_window_with_exactly_its_counts() {
        let t0 = Instant::now();
        let mut state = one_shard();
        let mut metrics = ShardMetrics::new(1);
        for micros in (1..2_000u64).map(|i| i * i * 7) {
            metrics.record_latency(1, Duration::from_micros(micros));
        }
        state.absorb(report(&mut metrics, 1, t0));
        for micros in [3u64, 950, 41_000, 2_500_000] {
            metrics.record_latency(1, Duration::from_micros(micros));
        }
        let later = report(&mut metrics, 1, t0 + Duration::from_secs(5));
        let expected: Vec<_> = later
            .interval_latency
            .iter_recorded()
            .map(|b| (b.value_iterated_to(), b.count_at_value()))
            .collect();
        state.absorb(later);
        assert_eq!(state.shards[0].window_latency.len(), 1_999 + 4);

        state.advance_window(t0 + WINDOW + Duration::from_secs(1));
        let window = &state.shards[0].window_latency;
        let left: Vec<_> = window
            .iter_recorded()
            .map(|b| (b.value_iterated_to(), b.count_at_value()))
            .collect();
        assert_eq!(
            left, expected,
            "the second interval's buckets, and nothing else"
        );
        assert_eq!(window.len(), 4);
    }

    #[test]
    fn restarts_carry_counters_and_the_window_expires() {
        let t0 = Instant::now();
        let mut state = one_shard();
        let mut first = ShardMetrics::new(1);
        for _ in 0..5 {
            first.count_route(0, 200);
        }
        first.record_latency(5, Duration::from_millis(2));
        state.absorb(report(&mut first, 1, t0));
        // The shard restarts: a new generation counts from zero again.
        let mut second = ShardMetrics::new(1);
        second.count_route(0, 500);
        second.record_latency(1, Duration::from_millis(40));
        state.absorb(report(&mut second, 2, t0 + Duration::from_secs(1)));

        let totals = state.merged_totals();
        assert_eq!((totals.requests(), totals.server_errors()), (6, 1));
        let (window, lifetime) = state.merged_latency();
        assert_eq!((window.len(), lifetime.len()), (6, 6));
        assert!(window.value_at_quantile(1.0) >= 39_000);

        state.advance_window(t0 + WINDOW + Duration::from_millis(1500));
        let (window, lifetime) = state.merged_latency();
        assert_eq!(
            (window.len(), lifetime.len()),
            (0, 6),
            "the window forgets, the lifetime does not"
        );
        assert_eq!(state.merged_totals().requests(), 6);
    }
}
