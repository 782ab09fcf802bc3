//! Alerts: which conditions hold (thresholds with hysteresis, trends), and the book that turns
//! them into alerts with a state, a severity, first and last seen, a value, a per-alert cooldown
//! on notifications, and inhibition of a warning by its own critical. Pure: no I/O, no clock.

use std::collections::{BTreeMap, VecDeque};

use super::sample::Sample;
use crate::config::MonitoringConfig;

/// An active alert stays active until its value falls this fraction below its threshold, so a
/// value hovering on the line does not flap.
pub const HYSTERESIS: f64 = 0.10;
/// Fewest samples a trend is fitted over.
pub const MIN_TREND_SAMPLES: usize = 4;
/// A trend alert clears once the projected crossing is this much beyond the horizon.
const TREND_CLEAR_FACTOR: f64 = 1.25;
/// Resolved alerts listed by the alerts endpoint.
const RECENT_RESOLVED: usize = 50;

/// The metrics that have thresholds (the seed's six).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    CpuUsage,
    MemoryUsage,
    ResponseTime,
    ErrorRate,
    ConcurrentUsers,
    QueueSize,
}

impl Metric {
    pub const ALL: [Metric; 6] = [
        Metric::CpuUsage,
        Metric::MemoryUsage,
        Metric::ResponseTime,
        Metric::ErrorRate,
        Metric::ConcurrentUsers,
        Metric::QueueSize,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::CpuUsage => "cpu_usage",
            Metric::MemoryUsage => "memory_usage",
            Metric::ResponseTime => "response_time",
            Metric::ErrorRate => "error_rate",
            Metric::ConcurrentUsers => "concurrent_users",
            Metric::QueueSize => "queue_size",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Metric::CpuUsage | Metric::MemoryUsage | Metric::ErrorRate => "%",
            Metric::ResponseTime => "ms",
            Metric::ConcurrentUsers => "users",
            Metric::QueueSize => "jobs",
        }
    }

    pub fn value(self, sample: &Sample) -> f64 {
        match self {
            Metric::CpuUsage => sample.cpu,
            Metric::MemoryUsage => sample.memory,
            Metric::ResponseTime => sample.response_time_ms,
            Metric::ErrorRate => sample.error_rate,
            Metric::ConcurrentUsers => sample.concurrent_users as f64,
            Metric::QueueSize => sample.queued_jobs as f64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Critical,
}

/// Warning and critical levels of each metric, in [`Metric::ALL`] order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds(pub [(f64, f64); 6]);

impl Thresholds {
    pub fn from_config(m: &MonitoringConfig) -> Self {
        Thresholds([
            (m.cpu_warning.into(), m.cpu_critical.into()),
            (m.memory_warning.into(), m.memory_critical.into()),
            (
                m.response_time_warning_ms as f64,
                m.response_time_critical_ms as f64,
            ),
            (m.error_rate_warning.into(), m.error_rate_critical.into()),
            (
                m.concurrent_users_warning as f64,
                m.concurrent_users_critical as f64,
            ),
            (m.queue_size_warning as f64, m.queue_size_critical as f64),
        ])
    }

    pub fn of(&self, metric: Metric) -> (f64, f64) {
        self.0[metric as usize]
    }
}

/// A condition that holds now; the book turns it into an alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub name: String,
    pub severity: Severity,
    pub value: f64,
    pub threshold: f64,
    pub message: String,
    /// Seconds until the critical level is crossed (trend alerts).
    pub eta_seconds: Option<f64>,
    /// The name of the critical alert that inhibits this warning while it fires.
    pub inhibited_by: Option<String>,
}

impl Condition {
    pub fn id(&self) -> String {
        alert_id(&self.name, self.severity)
    }
}

fn alert_id(name: &str, severity: Severity) -> String {
    format!("{name}/{severity:?}").to_lowercase()
}

/// Threshold conditions of one sample. An alert already active keeps holding until its value
/// is [`HYSTERESIS`] below its level.
pub fn threshold_conditions(
    sample: &Sample,
    thresholds: &Thresholds,
    book: &AlertBook,
) -> Vec<Condition> {
    let mut out = Vec::new();
    for metric in Metric::ALL {
        let value = metric.value(sample);
        let (warning, critical) = thresholds.of(metric);
        for (severity, level) in [(Severity::Critical, critical), (Severity::Warning, warning)] {
            let id = alert_id(metric.name(), severity);
            let holds = value >= level
                || (book.is_active(&id) && value >= level * (1.0 - HYSTERESIS) && level > 0.0);
            if holds {
                out.push(Condition {
                    name: metric.name().to_string(),
                    severity,
                    value,
                    threshold: level,
                    message: format!(
                        "{} is {} {} (the {severity:?} level is {} {})",
                        metric.name(),
                        round2(value),
                        metric.unit(),
                        round2(level),
                        metric.unit()
                    )
                    .to_lowercase(),
                    eta_seconds: None,
                    inhibited_by: (severity == Severity::Warning)
                        .then(|| alert_id(metric.name(), Severity::Critical)),
                });
            }
        }
    }
    out
}

/// Least-squares slope of `(seconds, value)` points, per second; `None` with too few points
/// or no spread in time.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < MIN_TREND_SAMPLES {
        return None;
    }
    let n = points.len() as f64;
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_v = points.iter().map(|p| p.1).sum::<f64>() / n;
    let var: f64 = points.iter().map(|p| (p.0 - mean_t).powi(2)).sum();
    if var <= f64::EPSILON {
        return None;
    }
    let cov: f64 = points.iter().map(|p| (p.0 - mean_t) * (p.1 - mean_v)).sum();
    Some(cov / var)
}

/// Trend conditions: for each metric between half its warning level and its critical level,
/// the slope over `history` (the samples inside the trend window, oldest first) projects when
/// it crosses the critical level (once the samples cover half of `window_s`); within
/// `horizon_s` that is a warning ("memory_usage reaches
/// 95 % in ~240 s").
pub fn trend_conditions(
    history: &[&Sample],
    thresholds: &Thresholds,
    window_s: f64,
    horizon_s: f64,
    book: &AlertBook,
) -> Vec<Condition> {
    let (Some(first), Some(latest)) = (history.first(), history.last()) else {
        return Vec::new();
    };
    // Too short a history extrapolates a blip: wait until half the window is covered.
    if (latest.at_ms.saturating_sub(first.at_ms) as f64) / 1000.0 < window_s / 2.0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for metric in Metric::ALL {
        let (warning, critical) = thresholds.of(metric);
        let value = metric.value(latest);
        // Only a metric approaching its warning level (the score's first term) is projected:
        // a slope at the bottom of the range is noise, not a trend.
        if critical <= 0.0 || value >= critical || value < warning / 2.0 {
            continue;
        }
        let points: Vec<(f64, f64)> = history
            .iter()
            .map(|s| (s.at_ms as f64 / 1000.0, metric.value(s)))
            .collect();
        let Some(per_second) = slope(&points).filter(|s| *s > 0.0) else {
            continue;
        };
        let eta = (critical - value) / per_second;
        let name = format!("{}_trend", metric.name());
        let limit = if book.is_active(&alert_id(&name, Severity::Warning)) {
            horizon_s * TREND_CLEAR_FACTOR
        } else {
            horizon_s
        };
        if eta <= limit {
            out.push(Condition {
                message: format!(
                    "{} reaches {} {} in ~{} s (now {} {}, rising {} {}/s)",
                    metric.name(),
                    round2(critical),
                    metric.unit(),
                    eta.round(),
                    round2(value),
                    metric.unit(),
                    round2(per_second),
                    metric.unit()
                ),
                name,
                severity: Severity::Warning,
                value,
                threshold: critical,
                eta_seconds: Some(eta.round()),
                inhibited_by: None,
            });
        }
    }
    out
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Firing,
    /// Holds, but its critical fires: not notified and not counted.
    Inhibited,
    Resolved,
}

/// One alert as the endpoints show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Alert {
    pub id: String,
    pub name: String,
    pub severity: Severity,
    pub state: AlertState,
    pub value: f64,
    pub threshold: f64,
    pub message: String,
    pub eta_seconds: Option<f64>,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub resolved_ms: Option<u64>,
    /// When a notification (log, webhook) was last sent for it.
    pub notified_ms: Option<u64>,
    pub notifications: u64,
    /// Firings not sent because the cooldown since the last notification had not passed.
    pub held_back: u64,
    /// The automatic action this alert set off, if any.
    pub action: Option<String>,
    #[serde(skip)]
    inhibited_by: Option<String>,
    /// A notification was sent during this firing (so its resolution is sent too).
    #[serde(skip)]
    firing_notified: bool,
}

/// A notification to send (log and webhook).
#[derive(Debug, Clone)]
pub struct Notice {
    pub alert: Alert,
}

/// Every alert, active and recently resolved.
#[derive(Debug, Default)]
pub struct AlertBook {
    alerts: BTreeMap<String, Alert>,
    resolved_order: VecDeque<String>,
    cooldown_ms: u64,
}

impl AlertBook {
    pub fn new(cooldown_ms: u64) -> Self {
        AlertBook {
            cooldown_ms,
            ..AlertBook::default()
        }
    }

    /// Firing or inhibited.
    pub fn is_active(&self, id: &str) -> bool {
        self.alerts
            .get(id)
            .is_some_and(|a| a.state != AlertState::Resolved)
    }

    pub fn is_firing(&self, id: &str) -> bool {
        self.alerts
            .get(id)
            .is_some_and(|a| a.state == AlertState::Firing)
    }

    pub fn get(&self, id: &str) -> Option<&Alert> {
        self.alerts.get(id)
    }

    /// Records the automatic action an alert set off.
    pub fn set_action(&mut self, id: &str, action: &str) {
        if let Some(alert) = self.alerts.get_mut(id) {
            alert.action = Some(action.to_string());
        }
    }

    /// Active alerts first (critical before warning), then the recently resolved, newest first.
    pub fn listing(&self) -> (Vec<&Alert>, Vec<&Alert>) {
        let mut active: Vec<&Alert> = self
            .alerts
            .values()
            .filter(|a| a.state != AlertState::Resolved)
            .collect();
        active.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.id.cmp(&b.id)));
        let recent = self
            .resolved_order
            .iter()
            .rev()
            .filter_map(|id| self.alerts.get(id))
            .filter(|a| a.state == AlertState::Resolved)
            .collect();
        (active, recent)
    }

    /// Takes the conditions that hold at `now_ms` (every other alert resolves) and returns the
    /// notifications to send: firings past their cooldown and resolutions of notified firings.
    pub fn update(&mut self, conditions: Vec<Condition>, now_ms: u64) -> Vec<Notice> {
        let holding: Vec<String> = conditions.iter().map(Condition::id).collect();
        let mut notices = Vec::new();
        let mut fired_now = Vec::new();
        for (id, alert) in self.alerts.iter_mut() {
            if alert.state != AlertState::Resolved && !holding.contains(id) {
                alert.state = AlertState::Resolved;
                alert.resolved_ms = Some(now_ms);
                self.resolved_order.retain(|r| r != id);
                self.resolved_order.push_back(id.clone());
                if std::mem::take(&mut alert.firing_notified) {
                    notices.push(Notice {
                        alert: alert.clone(),
                    });
                }
            }
        }
        for condition in conditions {
            let id = condition.id();
            let alert = self.alerts.entry(id.clone()).or_insert_with(|| Alert {
                id: id.clone(),
                name: condition.name.clone(),
                severity: condition.severity,
                state: AlertState::Resolved,
                value: 0.0,
                threshold: 0.0,
                message: String::new(),
                eta_seconds: None,
                first_seen_ms: now_ms,
                last_seen_ms: now_ms,
                resolved_ms: None,
                notified_ms: None,
                notifications: 0,
                held_back: 0,
                action: None,
                inhibited_by: None,
                firing_notified: false,
            });
            if alert.state == AlertState::Resolved {
                fired_now.push(id.clone());
                alert.state = AlertState::Firing;
                alert.first_seen_ms = now_ms;
                alert.resolved_ms = None;
                alert.action = None;
            }
            alert.last_seen_ms = now_ms;
            alert.value = condition.value;
            alert.threshold = condition.threshold;
            alert.message = condition.message;
            alert.eta_seconds = condition.eta_seconds;
            alert.inhibited_by = condition.inhibited_by;
        }
        // A warning whose critical fires is inhibited (and comes back when the critical clears).
        let critical_firing: Vec<String> = self
            .alerts
            .values()
            .filter(|a| a.state != AlertState::Resolved && a.severity == Severity::Critical)
            .map(|a| a.id.clone())
            .collect();
        for alert in self.alerts.values_mut() {
            if alert.state == AlertState::Resolved {
                continue;
            }
            let inhibited = alert
                .inhibited_by
                .as_ref()
                .is_some_and(|by| critical_firing.contains(by));
            alert.state = if inhibited {
                AlertState::Inhibited
            } else {
                AlertState::Firing
            };
            if alert.state != AlertState::Firing {
                continue;
            }
            // Sent when it fires and again every cooldown while it keeps firing; a firing that
            // comes within the cooldown of the last notification is held back.
            let cooled = alert
                .notified_ms
                .is_none_or(|at| now_ms.saturating_sub(at) >= self.cooldown_ms);
            if cooled {
                alert.notified_ms = Some(now_ms);
                alert.notifications += 1;
                alert.firing_notified = true;
                notices.push(Notice {
                    alert: alert.clone(),
                });
            } else if fired_now.contains(&alert.id) {
                alert.held_back += 1;
            }
        }
        self.prune();
        notices
    }

    /// Forgets resolved alerts beyond the recent list once their cooldown has no use.
    fn prune(&mut self) {
        while self.resolved_order.len() > RECENT_RESOLVED {
            if let Some(id) = self.resolved_order.pop_front() {
                if self
                    .alerts
                    .get(&id)
                    .is_some_and(|a| a.state == AlertState::Resolved)
                {
                    self.alerts.remove(&id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thresholds() -> Thresholds {
        // CPU 70/90, memory 80/95, response 1000/3000 ms, errors 1/5 %, users 800/950,
        // queue 1000/5000: the seed's.
        Thresholds([
            (70.0, 90.0),
            (80.0, 95.0),
            (1000.0, 3000.0),
            (1.0, 5.0),
            (800.0, 950.0),
            (1000.0, 5000.0),
        ])
    }

    fn cpu(value: f64) -> Sample {
        Sample {
            cpu: value,
            ..Sample::default()
        }
    }

    fn states(book: &AlertBook) -> Vec<(String, AlertState)> {
        let (active, recent) = book.listing();
        active
            .into_iter()
            .chain(recent)
            .map(|a| (a.id.clone(), a.state))
            .collect()
    }

    /// One evaluation round as the monitor does it.
    fn round(book: &mut AlertBook, sample: &Sample, now_ms: u64) -> Vec<(String, AlertState)> {
        let conditions = threshold_conditions(sample, &thresholds(), book);
        book.update(conditions, now_ms)
            .into_iter()
            .map(|n| (n.alert.id, n.alert.state))
            .collect()
    }

    #[test]
    fn hysteresis_critical_inhibits_warning_and_resolution() {
        use AlertState::*;
        let mut book = AlertBook::new(60_000);
        let w = || "cpu_usage/warning".to_string();
        let c = || "cpu_usage/critical".to_string();
        // (cpu, notifications sent, states after)
        type States = Vec<(String, AlertState)>;
        let steps: Vec<(f64, States, States)> = vec![
            (50.0, vec![], vec![]),
            (72.0, vec![(w(), Firing)], vec![(w(), Firing)]),
            // Below 70 but within 10 %: still firing, nothing sent.
            (65.0, vec![], vec![(w(), Firing)]),
            // Critical: the warning is inhibited.
            (
                93.0,
                vec![(c(), Firing)],
                vec![(c(), Firing), (w(), Inhibited)],
            ),
            // Critical holds by hysteresis (>= 81); warning stays inhibited.
            (85.0, vec![], vec![(c(), Firing), (w(), Inhibited)]),
            // Critical clears: its resolution is sent, the warning fires again (not resent:
            // it is within its cooldown).
            (
                75.0,
                vec![(c(), Resolved)],
                vec![(w(), Firing), (c(), Resolved)],
            ),
            // 62 < 63 (70 − 10 %): the warning resolves.
            (
                62.0,
                vec![(w(), Resolved)],
                vec![(w(), Resolved), (c(), Resolved)],
            ),
        ];
        for (i, (value, sent, after)) in steps.into_iter().enumerate() {
            let got = round(&mut book, &cpu(value), 1000 * i as u64);
            assert_eq!(got, sent, "step {i} cpu {value}: notifications");
            assert_eq!(states(&book), after, "step {i} cpu {value}: states");
        }
    }

    #[test]
    fn cooldown_holds_back_a_repeat_and_lets_it_through_after() {
        let mut book = AlertBook::new(10_000);
        let id = "cpu_usage/warning";
        assert_eq!(
            round(&mut book, &cpu(75.0), 0).len(),
            1,
            "first firing sent"
        );
        assert_eq!(
            round(&mut book, &cpu(10.0), 1_000).len(),
            1,
            "resolution sent"
        );
        assert!(
            round(&mut book, &cpu(75.0), 2_000).is_empty(),
            "repeat held back"
        );
        let alert = book.get(id).unwrap();
        assert_eq!((alert.notifications, alert.held_back), (1, 1));
        assert_eq!(alert.first_seen_ms, 2_000);
        // The held-back firing resolves silently (nothing was sent for it).
        assert!(round(&mut book, &cpu(10.0), 3_000).is_empty());
        // Still firing once the cooldown has passed: sent.
        round(&mut book, &cpu(75.0), 9_000);
        let sent = round(&mut book, &cpu(75.0), 10_500);
        assert_eq!(sent, vec![(id.to_string(), AlertState::Firing)]);
        assert_eq!(book.get(id).unwrap().notifications, 2);
        assert_eq!(book.get(id).unwrap().last_seen_ms, 10_500);
    }

    #[test]
    fn slope_and_trend_projection() {
        assert_eq!(
            slope(&[(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]),
            None,
            "too few"
        );
        let rising: Vec<(f64, f64)> = (0..10).map(|t| (t as f64, 10.0 + 2.0 * t as f64)).collect();
        assert!((slope(&rising).unwrap() - 2.0).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 1.0); 5]), None, "no spread in time");

        // Memory rising 1 %/s from 60 %: reaches 95 % in 26 s at the last sample (69 %).
        let samples: Vec<Sample> = (0..10)
            .map(|t| Sample {
                at_ms: 1000 * t,
                memory: 60.0 + t as f64,
                ..Sample::default()
            })
            .collect();
        let history: Vec<&Sample> = samples.iter().collect();
        let book = AlertBook::new(0);
        let within = trend_conditions(&history, &thresholds(), 10.0, 60.0, &book);
        assert_eq!(within.len(), 1);
        assert_eq!(within[0].name, "memory_usage_trend");
        assert_eq!(within[0].eta_seconds, Some(26.0));
        assert!(
            within[0].message.contains("reaches 95"),
            "{}",
            within[0].message
        );
        // History shorter than half the window: nothing yet.
        assert!(trend_conditions(&history, &thresholds(), 60.0, 60.0, &book).is_empty());
        // Beyond the horizon: nothing.
        assert!(trend_conditions(&history, &thresholds(), 10.0, 20.0, &book).is_empty());
        // Falling or flat: nothing.
        let flat: Vec<Sample> = (0..10)
            .map(|t| Sample {
                at_ms: 1000 * t,
                ..Sample::default()
            })
            .collect();
        let flat: Vec<&Sample> = flat.iter().collect();
        assert!(trend_conditions(&flat, &thresholds(), 10.0, 1e9, &book).is_empty());
    }
}
