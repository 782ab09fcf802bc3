//! Merges the client threads' interval snapshots in interval order: into the run totals, the
//! timeline, and the interval log. An interval completes once every client thread has sent it.

use std::collections::BTreeMap;

use crate::report::interval_log::IntervalLog;
use crate::report::TimelinePoint;
use crate::stats::{EndpointStats, Gauges, Snapshot};

struct Partial {
    seen: usize,
    endpoints: Vec<EndpointStats>,
    gauges: Gauges,
    cut_at: f64,
}

pub struct Aggregator {
    threads: usize,
    interval: f64,
    names: Vec<String>,
    pending: BTreeMap<u64, Partial>,
    next_index: u64,
    pub totals: Vec<EndpointStats>,
    pub timeline: Vec<TimelinePoint>,
    pub log: IntervalLog,
    pub peak_in_flight: u64,
    pub peak_open_conns: u64,
    pub peak_users: u64,
}

impl Aggregator {
    pub fn new(threads: usize, interval: f64, names: Vec<String>, log: IntervalLog) -> Aggregator {
        Aggregator {
            threads,
            interval,
            totals: names.iter().map(|_| EndpointStats::default()).collect(),
            names,
            pending: BTreeMap::new(),
            next_index: 0,
            timeline: Vec::new(),
            log,
            peak_in_flight: 0,
            peak_open_conns: 0,
            peak_users: 0,
        }
    }

    /// Adds one snapshot; returns the intervals it completed, in order.
    pub fn add(&mut self, s: Snapshot) -> Vec<TimelinePoint> {
        let n = self.names.len();
        let p = self.pending.entry(s.index).or_insert_with(|| Partial {
            seen: 0,
            endpoints: (0..n).map(|_| EndpointStats::default()).collect(),
            gauges: Gauges::default(),
            cut_at: 0.0,
        });
        p.seen += 1;
        for (a, b) in p.endpoints.iter_mut().zip(&s.endpoints) {
            a.merge(b);
        }
        p.gauges.add(&s.gauges);
        p.cut_at = p.cut_at.max(s.cut_at);
        let mut done = Vec::new();
        while self
            .pending
            .get(&self.next_index)
            .is_some_and(|p| p.seen >= self.threads)
        {
            if let Some(p) = self.pending.remove(&self.next_index) {
                done.push(self.complete(self.next_index, p));
            }
            self.next_index += 1;
        }
        done
    }

    /// Completes whatever is left (the final, partial intervals).
    pub fn finish(&mut self) -> Vec<TimelinePoint> {
        let rest = std::mem::take(&mut self.pending);
        rest.into_iter().map(|(i, p)| self.complete(i, p)).collect()
    }

    fn complete(&mut self, index: u64, p: Partial) -> TimelinePoint {
        let start = index as f64 * self.interval;
        let secs = (p.cut_at - start).clamp(1e-3, self.interval);
        let mut all = EndpointStats::default();
        for e in &p.endpoints {
            all.merge(e);
        }
        self.log.write(&all.corrected, start, secs, None);
        for (name, e) in self.names.iter().zip(&p.endpoints) {
            self.log.write(&e.corrected, start, secs, Some(name));
        }
        for (t, e) in self.totals.iter_mut().zip(&p.endpoints) {
            t.merge(e);
        }
        self.peak_in_flight = self.peak_in_flight.max(p.gauges.peak_in_flight);
        self.peak_open_conns = self.peak_open_conns.max(p.gauges.peak_open_conns);
        self.peak_users = self.peak_users.max(p.gauges.active_users);
        let q = |q: f64| {
            if all.corrected.is_empty() {
                0.0
            } else {
                all.corrected.value_at_quantile(q) as f64 / 1e6
            }
        };
        let point = TimelinePoint {
            t: start,
            secs,
            rps: all.responses() as f64 / secs,
            errors: all.error_count(),
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            max_ms: all.corrected.max() as f64 / 1e6,
            open_conns: p.gauges.open_conns,
            users: p.gauges.active_users,
            in_flight: p.gauges.in_flight,
        };
        self.timeline.push(point.clone());
        point
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn snap(thread: usize, index: u64, cut_at: f64, latencies: &[u64]) -> Snapshot {
        let mut e = EndpointStats::default();
        for &l in latencies {
            e.record_response(200, true, l, l);
        }
        Snapshot {
            thread,
            index,
            cut_at,
            endpoints: vec![e],
            gauges: Gauges {
                open_conns: 2,
                active_users: 3,
                in_flight: 1,
                peak_in_flight: 2,
                peak_open_conns: 2,
            },
        }
    }

    #[test]
    fn merges_in_order_when_all_workers_reported() {
        let log = IntervalLog::new(SystemTime::now(), "t");
        let mut a = Aggregator::new(2, 1.0, vec!["health".into()], log);
        assert!(a.add(snap(0, 0, 1.0, &[1_000_000])).is_empty());
        assert!(
            a.add(snap(0, 1, 2.0, &[2_000_000])).is_empty(),
            "interval 1 waits for client thread 1"
        );
        let done = a.add(snap(1, 0, 1.001, &[3_000_000]));
        assert_eq!(done.len(), 1);
        assert_eq!(
            (done[0].t, done[0].rps, done[0].open_conns, done[0].users),
            (0.0, 2.0, 4, 6)
        );
        // Client thread 1 ends early with a partial interval 1; finish() completes it.
        assert!(a.add(snap(1, 1, 1.5, &[])).len() == 1);
        a.add(snap(0, 2, 2.25, &[4_000_000]));
        let rest = a.finish();
        assert_eq!(rest.len(), 1);
        assert!((rest[0].secs - 0.25).abs() < 1e-9);
        assert_eq!(a.totals[0].responses(), 4);
        assert_eq!(a.timeline.len(), 3);
        assert_eq!(a.peak_users, 6);
        // Untagged + tagged line per interval.
        let lines = a
            .log
            .as_str()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with('"'))
            .count();
        assert_eq!(lines, 6);
    }
}
