//! Whether a node takes requests: ejection (health checks, lag) and the circuit breaker
//! (consecutive failed requests), as pure decisions over events and time.
//!
//! A replica that fails its health check, or lags past the limit, is ejected for the ejection
//! time, doubled on each repeat (up to 16x). When that time is over the next health check is
//! its half-open probe: a pass brings it back, a failure ejects it again for longer. Lag alone
//! never ejects the last routable replica. The breaker counts failed requests in a row on any
//! node (the primary included): at the threshold it opens, and closes again the same way, by a
//! probe once the (growing) open time is over.

use std::time::{Duration, Instant};

use crate::config::LagLimit;

/// The knobs of the decisions below.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub ejection_time: Duration,
    pub breaker_failures: u32,
    pub max_lag: LagLimit,
}

/// How far a replica is behind the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    pub bytes: u64,
    pub time: Duration,
}

/// What one health check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Refused, timed out or failed: the reason.
    Failed(String),
    /// Answered; the lag when it is a replica and the primary's position was known.
    Passed { lag: Option<Lag> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// Closed to requests until the instant, then a probe decides.
    ShutUntil(Instant),
}

/// One node's availability.
#[derive(Debug, Clone)]
pub struct NodeHealth {
    /// Ejection by health checks (and lag).
    pub ejection: Gate,
    /// The circuit breaker: `ShutUntil` is "open" in breaker words.
    pub breaker: Gate,
    /// Failed requests in a row.
    pub failures: u32,
    pub ejections: u64,
    pub breaker_opens: u64,
    /// Why it was last shut out.
    pub reason: Option<String>,
    /// Repeats in a row; the ejection time doubles with each (up to 16x).
    streak: u32,
    /// How many doublings the shut time takes at most: [`MAX_DOUBLINGS`], or 0 for a node
    /// retried at a steady pace (the primary: writes have nowhere else to go).
    max_doublings: u32,
    /// When it last became routable, to forget the streak after a calm period.
    routable_since: Instant,
}

/// How many doublings the ejection time takes at most (16x).
const MAX_DOUBLINGS: u32 = 4;

impl NodeHealth {
    pub fn new(now: Instant) -> NodeHealth {
        NodeHealth {
            ejection: Gate::Open,
            breaker: Gate::Open,
            failures: 0,
            ejections: 0,
            breaker_opens: 0,
            reason: None,
            streak: 0,
            max_doublings: MAX_DOUBLINGS,
            routable_since: now,
        }
    }

    /// Shut out for the same time at every repeat, never doubled.
    pub fn steady(mut self) -> NodeHealth {
        self.max_doublings = 0;
        self
    }

    pub fn routable(&self) -> bool {
        self.ejection == Gate::Open && self.breaker == Gate::Open
    }

    pub fn breaker_open(&self) -> bool {
        self.breaker != Gate::Open
    }

    /// A node shut out whose time is over: the next check is its probe.
    pub fn probe_due(&self, now: Instant) -> bool {
        let due = |gate: Gate| matches!(gate, Gate::ShutUntil(until) if until <= now);
        due(self.ejection) || due(self.breaker)
    }

    fn shut_time(&self, policy: &Policy) -> Duration {
        policy.ejection_time * (1 << self.streak.min(self.max_doublings))
    }

    fn shut(&mut self, gate: fn(&mut NodeHealth) -> &mut Gate, policy: &Policy, now: Instant) {
        let until = now + self.shut_time(policy);
        *gate(self) = Gate::ShutUntil(until);
        self.streak += 1;
    }

    /// A health check's result. `is_replica` enables lag ejection; `last_routable` says no other
    /// replica is routable (lag alone then does not eject this one).
    pub fn on_check(
        &mut self,
        check: &Check,
        policy: &Policy,
        now: Instant,
        is_replica: bool,
        last_routable: bool,
    ) {
        let was_routable = self.routable();
        let probing = self.probe_due(now);
        match check {
            Check::Failed(reason) => {
                // Also when the breaker already took it out: the check says why, and counts.
                if self.ejection == Gate::Open || probing {
                    self.reason = Some(reason.clone());
                    if self.ejection == Gate::Open || probing {
                        self.ejections += u64::from(self.ejection == Gate::Open);
                        self.shut(|h| &mut h.ejection, policy, now);
                    }
                }
            }
            Check::Passed { lag } => {
                let lagging = is_replica && lag.is_some_and(|lag| past_limit(lag, &policy.max_lag));
                if lagging {
                    let keep_last = last_routable && was_routable;
                    if (was_routable && !keep_last) || probing {
                        let lag = lag.unwrap_or(Lag {
                            bytes: 0,
                            time: Duration::ZERO,
                        });
                        self.reason = Some(format!(
                            "replication lag {} bytes, {} ms past the limit",
                            lag.bytes,
                            lag.time.as_millis()
                        ));
                        self.ejections += u64::from(self.ejection == Gate::Open);
                        self.shut(|h| &mut h.ejection, policy, now);
                    }
                } else if probing || self.ejection != Gate::Open && self.breaker == Gate::Open {
                    // Half-open probe passed: back in. (An ejection still running is kept.)
                    if matches!(self.ejection, Gate::ShutUntil(until) if until <= now) {
                        self.ejection = Gate::Open;
                    }
                    if matches!(self.breaker, Gate::ShutUntil(until) if until <= now) {
                        self.breaker = Gate::Open;
                        self.failures = 0;
                    }
                }
            }
        }
        self.after(was_routable, policy, now);
    }

    /// A request's outcome: `false` for a failure of the node (refused, timed out, broken
    /// connection), not for a query the node rightly rejected.
    pub fn on_request(&mut self, ok: bool, policy: &Policy, now: Instant) {
        let was_routable = self.routable();
        if ok {
            self.failures = 0;
        } else {
            self.failures += 1;
            if self.failures >= policy.breaker_failures && self.breaker == Gate::Open {
                self.breaker_opens += 1;
                self.reason = Some(format!("{} failed requests in a row", self.failures));
                self.shut(|h| &mut h.breaker, policy, now);
            }
        }
        self.after(was_routable, policy, now);
    }

    fn after(&mut self, was_routable: bool, policy: &Policy, now: Instant) {
        if self.routable() && !was_routable {
            self.routable_since = now;
        }
        // A node routable for the longest shut time forgets its streak.
        let calm = policy.ejection_time * (1 << MAX_DOUBLINGS);
        if self.routable() && now.saturating_duration_since(self.routable_since) >= calm {
            self.streak = 0;
        }
    }
}

fn past_limit(lag: Lag, limit: &LagLimit) -> bool {
    limit.bytes.is_some_and(|max| lag.bytes > max) || limit.time.is_some_and(|max| lag.time > max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn policy() -> Policy {
        Policy {
            ejection_time: SEC,
            breaker_failures: 3,
            max_lag: LagLimit {
                bytes: Some(1000),
                time: Some(SEC * 5),
            },
        }
    }

    fn lag(bytes: u64, secs: u64) -> Check {
        Check::Passed {
            lag: Some(Lag {
                bytes,
                time: SEC * secs as u32,
            }),
        }
    }

    fn failed() -> Check {
        Check::Failed("connection refused".into())
    }

    /// Steps: (seconds since start, check, last routable replica) -> routable after it.
    #[test]
    fn ejection_and_probe_table() {
        // (seconds since start, check, last routable replica, routable after it)
        type Step = (u64, Check, bool, bool);
        let cases: &[(&str, &[Step])] = &[
            (
                "healthy stays",
                &[(0, lag(0, 0), false, true), (1, lag(999, 4), false, true)],
            ),
            (
                "failure ejects, probe after the time brings it back",
                &[
                    (0, failed(), false, false),
                    (0, lag(0, 0), false, false),
                    (1, lag(0, 0), false, true),
                ],
            ),
            (
                "failed probe ejects for twice as long",
                &[
                    (0, failed(), false, false),
                    (1, failed(), false, false),
                    (2, lag(0, 0), false, false),
                    (3, lag(0, 0), false, true),
                ],
            ),
            (
                "lag in bytes ejects",
                &[
                    (0, lag(1001, 0), false, false),
                    (1, lag(10, 0), false, true),
                ],
            ),
            ("lag in time ejects", &[(0, lag(0, 6), false, false)]),
            (
                "lag never ejects the last routable replica",
                &[
                    (0, lag(5000, 60), true, true),
                    (1, lag(5000, 60), true, true),
                ],
            ),
            ("but a failure does", &[(0, failed(), true, false)]),
            (
                "a lag-ejected replica stays out while it lags, even if last",
                &[
                    (0, lag(5000, 0), false, false),
                    (1, lag(5000, 0), true, false),
                    (3, lag(0, 0), true, true),
                ],
            ),
        ];
        for (name, steps) in cases {
            let start = Instant::now();
            let mut health = NodeHealth::new(start);
            for (i, (at, check, last, routable)) in steps.iter().enumerate() {
                health.on_check(check, &policy(), start + SEC * *at as u32, true, *last);
                assert_eq!(health.routable(), *routable, "{name}: step {i}: {health:?}");
            }
        }
    }

    #[test]
    fn primary_ignores_lag() {
        let now = Instant::now();
        let mut health = NodeHealth::new(now);
        health.on_check(&lag(1 << 40, 3600), &policy(), now, false, false);
        assert!(health.routable());
    }

    #[test]
    fn breaker_opens_on_consecutive_failures_and_closes_by_probe() {
        let start = Instant::now();
        let p = policy();
        let mut health = NodeHealth::new(start);
        for ok in [false, false, true, false, false] {
            health.on_request(ok, &p, start);
        }
        assert!(health.routable(), "a success resets the count");
        health.on_request(false, &p, start);
        assert!(health.breaker_open() && !health.routable());
        assert_eq!(health.breaker_opens, 1);
        assert!(!health.probe_due(start));
        assert!(health.probe_due(start + SEC));
        health.on_check(&failed(), &p, start + SEC, false, false);
        assert!(!health.routable(), "a failed probe keeps it out");
        health.on_check(&lag(0, 0), &p, start + SEC * 2, false, false);
        assert!(!health.routable(), "the second shut time is twice as long");
        health.on_check(&lag(0, 0), &p, start + SEC * 4, false, false);
        assert!(health.routable(), "{health:?}");
        assert_eq!(health.failures, 0);
    }

    #[test]
    fn a_steady_node_is_shut_out_for_the_same_time_at_every_repeat() {
        let p = policy();
        let start = Instant::now();
        let mut h = NodeHealth::new(start).steady();
        let mut now = start;
        for _ in 0..6 {
            h.on_check(&Check::Failed("down".into()), &p, now, false, false);
            assert_eq!(h.ejection, Gate::ShutUntil(now + p.ejection_time));
            now += p.ejection_time;
        }
    }
}
