//! The live progress line, one per reporting interval, on a terminal.

use super::TimelinePoint;
use crate::units::fmt_count;

/// One progress line: elapsed/planned time, throughput, p99, errors, connections, users.
pub fn line(p: &TimelinePoint, planned_s: f64, asked_conns: u64, closed: bool) -> String {
    let users = if closed {
        format!(" | users {}", fmt_count(p.users))
    } else {
        String::new()
    };
    format!(
        "[{:>5.0}s/{:>4.0}s] {:>10} req/s | p99 {:>9} | errors {:>6} | conns {}/{}{users}",
        p.t + p.secs,
        planned_s,
        fmt_count(p.rps.round() as u64),
        crate::units::fmt_ns(p.p99_ms * 1e6),
        fmt_count(p.errors),
        fmt_count(p.open_conns),
        fmt_count(asked_conns),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line() {
        let p = TimelinePoint {
            t: 4.0,
            secs: 1.0,
            rps: 45123.4,
            errors: 2,
            p50_ms: 0.5,
            p99_ms: 1.234,
            max_ms: 3.0,
            open_conns: 100,
            users: 100,
            in_flight: 7,
        };
        let l = line(&p, 10.0, 100, true);
        assert!(l.contains("5s/  10s"), "{l}");
        assert!(l.contains("45,123 req/s"), "{l}");
        assert!(l.contains("p99    1.23ms"), "{l}");
        assert!(l.contains("errors      2"), "{l}");
        assert!(l.contains("conns 100/100 | users 100"), "{l}");
        assert!(!line(&p, 10.0, 100, false).contains("users"));
    }
}
