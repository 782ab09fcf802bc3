//! Everything the user reads after (and during) a run: the merged [`Summary`] and its
//! renderings — the terminal table, `summary.json`, `.hgrm` percentile distributions, the
//! HdrHistogram interval log, and the self-contained `report.html`.

pub mod hgrm;
pub mod html;
pub mod interval_log;
pub mod progress;
pub mod table;

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::slo::{Measured, Verdict};
use crate::stats::{EndpointStats, ErrorKind};

/// The percentiles every report shows, as (label, quantile).
pub const PERCENTILES: [(&str, f64); 5] = [
    ("p50", 0.5),
    ("p90", 0.9),
    ("p99", 0.99),
    ("p99.9", 0.999),
    ("p99.99", 0.9999),
];

/// Latency figures in milliseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Latency {
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    #[serde(rename = "p99.9")]
    pub p99_9: f64,
    #[serde(rename = "p99.99")]
    pub p99_99: f64,
    pub max: f64,
    pub mean: f64,
    pub stdev: f64,
}

impl Latency {
    pub fn from_hist(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |ns: u64| ns as f64 / 1e6;
        let p = percentile_rows(h);
        Latency {
            min: ms(h.min()),
            p50: ms(p[0].1),
            p90: ms(p[1].1),
            p99: ms(p[2].1),
            p99_9: ms(p[3].1),
            p99_99: ms(p[4].1),
            max: ms(h.max()),
            mean: h.mean() / 1e6,
            stdev: h.stdev() / 1e6,
        }
    }
}

/// The percentile table of a histogram: `(label, nanoseconds)` for [`PERCENTILES`]. Values are
/// the highest value equivalent to the recorded one (what HdrHistogram reports), capped at max.
pub fn percentile_rows(h: &Histogram<u64>) -> Vec<(&'static str, u64)> {
    PERCENTILES
        .iter()
        .map(|&(label, q)| {
            (
                label,
                if h.is_empty() {
                    0
                } else {
                    h.value_at_quantile(q).min(h.max())
                },
            )
        })
        .collect()
}

/// Figures for one endpoint, or for all of them (`name == "all"`).
#[derive(Clone, Debug, Serialize)]
pub struct EndpointSummary {
    pub name: String,
    pub method: String,
    pub path: String,
    /// Responses received (any status).
    pub count: u64,
    /// Responses with an expected status.
    pub ok: u64,
    /// Failed requests: transport errors, unexpected statuses and (overall) requests never sent.
    pub errors: u64,
    /// `errors / (count + transport errors)`.
    pub error_rate: f64,
    /// Responses per second over the run.
    pub rps: f64,
    pub statuses: BTreeMap<String, u64>,
    pub errors_by_kind: BTreeMap<String, u64>,
    /// From the intended send time (coordinated-omission corrected).
    pub latency_ms: Latency,
    /// From the actual send time.
    pub uncorrected_latency_ms: Latency,
}

impl EndpointSummary {
    pub fn new(
        name: &str,
        method: &str,
        path: &str,
        s: &EndpointStats,
        secs: f64,
    ) -> EndpointSummary {
        let unexpected = s.errors[ErrorKind::UnexpectedStatus.index()];
        let count = s.responses();
        let errors = s.error_count();
        let attempts = s.finished();
        EndpointSummary {
            name: name.into(),
            method: method.into(),
            path: path.into(),
            count,
            ok: count - unexpected,
            errors,
            error_rate: if attempts == 0 {
                0.0
            } else {
                errors as f64 / attempts as f64
            },
            rps: if secs > 0.0 { count as f64 / secs } else { 0.0 },
            statuses: s
                .statuses
                .iter()
                .map(|(st, n)| (st.to_string(), *n))
                .collect(),
            errors_by_kind: ErrorKind::ALL
                .iter()
                .filter(|k| s.errors[k.index()] > 0)
                .map(|k| (k.name().to_string(), s.errors[k.index()]))
                .collect(),
            latency_ms: Latency::from_hist(&s.corrected),
            uncorrected_latency_ms: Latency::from_hist(&s.uncorrected),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RateSummary {
    /// Open model: the schedule's average rate; closed model: none.
    pub target_rps: Option<f64>,
    pub achieved_rps: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConnSummary {
    /// Connections wanted at peak load.
    pub asked: u64,
    /// Most connections open at once.
    pub peak_open: u64,
    /// Successful connects, reconnects included.
    pub connects: u64,
    pub connect_errors: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RequestSummary {
    pub sent: u64,
    pub completed: u64,
    pub ok: u64,
    pub errors: u64,
    pub not_sent: u64,
    pub unfinished: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ClientSummary {
    /// How late the client itself sent requests it had a free connection for.
    pub lag_p99_ms: f64,
    pub lag_max_ms: f64,
    /// Open-model requests that found every connection busy.
    pub waited_for_connection: u64,
}

/// The seed's summary style.
#[derive(Clone, Debug, Serialize)]
pub struct SeedSummary {
    pub users_tested: u64,
    pub successful_operations: u64,
    pub failed_operations: u64,
    pub peak_concurrency: u64,
    pub throughput_ops_s: f64,
    pub mean_response_ms: f64,
    pub total_time_s: f64,
}

/// One reporting interval, for the timeline.
#[derive(Clone, Debug, Serialize)]
pub struct TimelinePoint {
    pub t: f64,
    pub secs: f64,
    pub rps: f64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub open_conns: u64,
    pub users: u64,
    pub in_flight: u64,
}

/// The whole run, as written to `summary.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub loadgen_version: &'static str,
    pub started_unix_s: f64,
    pub target: String,
    pub scenario: String,
    /// `closed` (virtual users) or `open` (fixed rate).
    pub model: &'static str,
    pub threads: usize,
    pub cpus: Vec<usize>,
    pub pipeline: usize,
    pub duration_s: f64,
    pub peak_users: Option<u64>,
    pub rate: RateSummary,
    pub connections: ConnSummary,
    pub requests: RequestSummary,
    pub overall: EndpointSummary,
    pub endpoints: Vec<EndpointSummary>,
    pub client: ClientSummary,
    pub seed_summary: SeedSummary,
    pub timeline: Vec<TimelinePoint>,
    pub warnings: Vec<String>,
    pub slo: Vec<Verdict>,
}

/// The overall histogram and counts, as SLOs see them.
pub struct OverallMeasure<'a> {
    pub stats: &'a EndpointStats,
    pub error_rate: f64,
    pub rps: f64,
}

impl Measured for OverallMeasure<'_> {
    fn quantile_ns(&self, q: f64) -> f64 {
        let h = &self.stats.corrected;
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(q).min(h.max()) as f64
        }
    }
    fn mean_ns(&self) -> f64 {
        self.stats.corrected.mean()
    }
    fn max_ns(&self) -> f64 {
        self.stats.corrected.max() as f64
    }
    fn error_rate(&self) -> f64 {
        self.error_rate
    }
    fn rps(&self) -> f64 {
        self.rps
    }
}

/// Warns about percentiles the sample count cannot support: a quantile `q` is only trusted
/// with at least 10 samples beyond it, i.e. `count >= 10 / (1 - q)`.
pub fn thin_percentiles(count: u64) -> Option<String> {
    let weak: Vec<&str> = PERCENTILES
        .iter()
        .filter(|(_, q)| (count as f64) < (10.0 / (1.0 - q)).round())
        .map(|(l, _)| *l)
        .collect();
    if weak.is_empty() {
        return None;
    }
    let need = 10.0
        / (1.0
            - PERCENTILES
                .iter()
                .find(|(l, _)| *l == weak[0])
                .map_or(0.5, |p| p.1));
    Some(format!(
        "the run is too short for {}: {count} samples, and {} needs at least {need:.0} \
         (10 beyond it); run longer or read those figures as rough",
        weak.join(", "),
        weak[0]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_hist;

    #[test]
    fn percentile_table() {
        // 1..=10_000 microseconds, one sample each.
        let mut h = new_hist();
        for us in 1..=10_000u64 {
            h.record(us * 1000).unwrap();
        }
        let want_us = [
            ("p50", 5_000.0),
            ("p90", 9_000.0),
            ("p99", 9_900.0),
            ("p99.9", 9_990.0),
            ("p99.99", 9_999.0),
        ];
        for ((label, ns), (wl, wus)) in percentile_rows(&h).iter().zip(want_us) {
            assert_eq!(*label, wl);
            let got_us = *ns as f64 / 1000.0;
            // Three significant figures: within 0.1 %.
            assert!(
                (got_us - wus).abs() <= wus * 0.001 + 1.0,
                "{label}: {got_us} vs {wus}"
            );
        }
        assert!(percentile_rows(&new_hist()).iter().all(|(_, v)| *v == 0));
        let single = {
            let mut h = new_hist();
            h.record(42_000).unwrap();
            h
        };
        assert!(percentile_rows(&single)
            .iter()
            .all(|(_, v)| *v == single.max()));
    }

    #[test]
    fn thin_percentile_warning() {
        let cases: &[(u64, Option<&str>)] = &[
            (100_000, None),
            (99_999, Some("p99.99")),
            (5_000, Some("p99.9, p99.99")),
            (10, Some("p90, p99, p99.9, p99.99")),
            (0, Some("p50, p90")),
        ];
        for (count, want) in cases {
            let got = thin_percentiles(*count);
            match want {
                None => assert!(got.is_none(), "{count}: {got:?}"),
                Some(w) => assert!(got.as_deref().unwrap_or("").contains(w), "{count}: {got:?}"),
            }
        }
    }

    #[test]
    fn endpoint_summary_counts() {
        let mut s = EndpointStats::default();
        for _ in 0..8 {
            s.record_response(200, true, 1_000_000, 900_000);
        }
        s.record_response(500, false, 2_000_000, 2_000_000);
        s.record_error(ErrorKind::Timeout);
        let e = EndpointSummary::new("health", "GET", "/health", &s, 2.0);
        assert_eq!((e.count, e.ok, e.errors), (9, 8, 2));
        assert!((e.error_rate - 0.2).abs() < 1e-9);
        assert!((e.rps - 4.5).abs() < 1e-9);
        assert_eq!(e.statuses["500"], 1);
        assert_eq!(e.errors_by_kind["timeout"], 1);
        assert_eq!(e.errors_by_kind["unexpected_status"], 1);
        assert!(e.latency_ms.p50 > 0.99 && e.latency_ms.p50 < 1.01);
    }
}
