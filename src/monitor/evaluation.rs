//! What the monitor does every `MONITORING_METRICS_INTERVAL`: take a sample, keep it in the
//! bounded history, evaluate thresholds and trends into alerts, notify, take or undo the
//! automatic recovery actions, move the number of active shards, and score the server's health.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::alerts::{self, AlertBook, Condition, Metric, Notice, Severity, Thresholds};
use super::merge::ClusterState;
use super::sample::{self, CpuMeter, IntervalTraffic, Sample};
use super::scaling::ScalePolicy;
use super::score::{self, Grade};
use super::webhook::Webhook;
use crate::config::Config;
use crate::shard::{Control, ShardState};

/// Settings of the evaluation, from the configuration.
#[derive(Debug, Clone)]
pub struct EvaluationSettings {
    pub thresholds: Thresholds,
    pub interval: Duration,
    pub trend_window: Duration,
    pub trend_horizon: Duration,
    pub history_length: usize,
    pub heartbeat_timeout: Duration,
    pub cooldown_ms: u64,
    pub policy: ScalePolicy,
    /// When a shard counts as silent for the score (a few snapshot intervals).
    pub stale_after: Duration,
}

impl EvaluationSettings {
    /// From the configuration and the number of shards placed; also returns the start-up note
    /// when the scaling bounds were clamped to the CPUs.
    pub fn from_config(config: &Config, shards: usize) -> (EvaluationSettings, Option<String>) {
        let m = &config.monitoring;
        let c = &config.cluster;
        // With in-process scaling off, every shard placed stays active.
        let scaling = c.shard_scaling == crate::config::Switch::On;
        let (min, max) = if scaling {
            (c.min_workers, c.max_workers)
        } else {
            (shards, shards)
        };
        let (policy, note) = ScalePolicy::clamped(
            min,
            max,
            shards,
            c.scale_up_threshold.into(),
            c.scale_down_threshold.into(),
            Duration::from_millis(c.scale_cooldown_ms),
        );
        let note = if scaling {
            note
        } else {
            Some(format!(
                "in-process shard scaling is off (SHARD_SCALING=off): all {shards} shards stay active"
            ))
        };
        let settings = EvaluationSettings {
            thresholds: Thresholds::from_config(m),
            interval: Duration::from_millis(m.metrics_interval_ms),
            trend_window: Duration::from_millis(m.trend_window_ms),
            trend_horizon: Duration::from_millis(m.trend_horizon_ms),
            history_length: m.history_length,
            heartbeat_timeout: Duration::from_millis(m.heartbeat_timeout_ms),
            cooldown_ms: m.alert_cooldown_ms,
            policy,
            stale_after: super::render::stale_after(config.snapshot_interval()),
        };
        (settings, note)
    }
}

/// An automatic recovery action, as the alerts endpoint shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Action {
    pub name: &'static str,
    pub what: &'static str,
    pub active: bool,
    pub since_ms: Option<u64>,
    /// Times it was taken.
    pub taken: u64,
    pub last_reason: Option<String>,
}

impl Action {
    fn new(name: &'static str, what: &'static str) -> Self {
        Action {
            name,
            what,
            active: false,
            since_ms: None,
            taken: 0,
            last_reason: None,
        }
    }

    /// Turns the action on or off; returns whether it changed.
    fn set(&mut self, on: bool, reason: &str, now_ms: u64) -> bool {
        if on == self.active {
            return false;
        }
        self.active = on;
        if on {
            self.taken += 1;
            self.since_ms = Some(now_ms);
            self.last_reason = Some(reason.to_string());
        } else {
            self.since_ms = None;
        }
        true
    }
}

/// One change of the number of active shards.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScaleEvent {
    pub at_ms: u64,
    pub from: usize,
    pub to: usize,
    pub cpu: f64,
    pub reason: String,
}

pub const SHED_LOW_PRIORITY: &str = "shed_low_priority";
pub const REFUSE_NEW_CONNECTIONS: &str = "refuse_new_connections";
pub const RESTART_SHARD: &str = "restart_shard";
/// Scaling events kept for the cluster status.
const SCALE_EVENTS: usize = 50;

/// The monitor's evaluation state.
pub struct Evaluator {
    pub settings: EvaluationSettings,
    meter: CpuMeter,
    pub history: VecDeque<Sample>,
    pub book: AlertBook,
    /// shed_low_priority, refuse_new_connections, restart_shard.
    pub actions: [Action; 3],
    pub active_shards: usize,
    last_scale_at: Instant,
    pub scale_events: VecDeque<ScaleEvent>,
    pub webhook: Option<Webhook>,
    pub score: u8,
    pub grade: Grade,
    /// Per shard: the last generation the monitor asked to replace.
    replaced: Vec<u64>,
    last_sample_at: Instant,
}

impl Evaluator {
    pub fn new(settings: EvaluationSettings, shards: usize, webhook: Option<Webhook>) -> Self {
        let now = Instant::now();
        Evaluator {
            meter: CpuMeter::new(
                core_affinity::get_core_ids()
                    .map(|c| c.len())
                    .unwrap_or(1),
            ),
            history: VecDeque::with_capacity(settings.history_length),
            book: AlertBook::new(settings.cooldown_ms),
            actions: [
                Action::new(
                    SHED_LOW_PRIORITY,
                    "while CPU is critical, the per-core queues shed background and low-priority work",
                ),
                Action::new(
                    REFUSE_NEW_CONNECTIONS,
                    "while memory is critical, new connections get 503 with Retry-After",
                ),
                Action::new(
                    RESTART_SHARD,
                    "a shard that stopped sending heartbeats is replaced on its core",
                ),
            ],
            active_shards: shards,
            last_scale_at: now,
            scale_events: VecDeque::new(),
            webhook,
            score: 100,
            grade: Grade::Excellent,
            replaced: vec![0; shards],
            last_sample_at: now,
            settings,
        }
    }

    pub fn latest(&self) -> Option<&Sample> {
        self.history.back()
    }

    /// One evaluation round.
    pub fn step(&mut self, state: &mut ClusterState, control: &Control, now: Instant) {
        let now_ms = sample::unix_ms();
        let monitor_late = self.ran_late(now);
        let sample = self.take_sample(state, now, now_ms);
        if self.history.len() == self.settings.history_length {
            self.history.pop_front();
        }
        self.history.push_back(sample);

        let mut conditions = {
            let latest = self.history.back().expect("just pushed");
            let mut c = alerts::threshold_conditions(latest, &self.settings.thresholds, &self.book);
            let window_start = now_ms.saturating_sub(self.settings.trend_window.as_millis() as u64);
            let in_window: Vec<&Sample> = self
                .history
                .iter()
                .filter(|s| s.at_ms >= window_start)
                .collect();
            c.extend(alerts::trend_conditions(
                &in_window,
                &self.settings.thresholds,
                self.settings.trend_window.as_secs_f64(),
                self.settings.trend_horizon.as_secs_f64(),
                &self.book,
            ));
            c
        };
        if !control.is_shutting_down() && !monitor_late {
            conditions.extend(self.heartbeats(state, now, now_ms));
        }
        let mut notices = self.book.update(conditions, now_ms);
        self.recover(control, now_ms);
        for notice in &mut notices {
            if let Some(alert) = self.book.get(&notice.alert.id) {
                notice.alert.action = alert.action.clone();
            }
            self.notify(notice);
        }
        if !control.is_shutting_down() {
            self.scale(control, now, now_ms);
        }
        self.rescore(state, now);
    }

    /// Whether this round comes late enough after the previous one that the reports the shards
    /// sent meanwhile may still wait in the channel: the monitor takes one report, then runs a
    /// due round, so after a stall of its own the newest report it has is as old as the stall
    /// and every shard would look silent. Heartbeats are then judged at the next round, once
    /// the waiting reports are read (a silent shard is replaced one interval later at worst).
    fn ran_late(&self, now: Instant) -> bool {
        let gap = now.saturating_duration_since(self.last_sample_at);
        let late = gap >= self.settings.interval + self.settings.heartbeat_timeout / 2;
        if late {
            log::warn!(
                "monitor: this round comes {} ms after the previous one; heartbeats are judged \
                 at the next round, once the reports sent meanwhile are read",
                gap.as_millis()
            );
        }
        late
    }

    fn take_sample(&mut self, state: &mut ClusterState, now: Instant, now_ms: u64) -> Sample {
        let mut tids: Vec<i32> = state.shards.iter().map(|t| t.slot.tid()).collect();
        tids.push(state.monitor_tid);
        let cpu = self.meter.read(&tids, now);
        let shard_cpu: Vec<f64> = state
            .shards
            .iter()
            .map(|t| cpu.threads.get(&t.slot.tid()).copied().unwrap_or(0.0))
            .collect();
        let active = self.active_shards.min(shard_cpu.len()).max(1);
        let (rss_bytes, memory) = sample::memory();
        let interval = state.take_interval();
        let mut sample = Sample {
            at_ms: now_ms,
            process_cpu: cpu.process,
            monitor_cpu: cpu.threads.get(&state.monitor_tid).copied().unwrap_or(0.0),
            cpu: shard_cpu.iter().take(active).sum::<f64>() / active as f64,
            shard_cpu,
            memory,
            rss_bytes,
            concurrent_users: state.open_connections(),
            queued_jobs: state.queued_jobs(),
            active_shards: self.active_shards,
            ..Sample::default()
        };
        if interval.requests == 0 {
            // No response in the interval is no evidence either way: latency and error rate keep
            // their last values (any request, a health probe included, refreshes them).
            if let Some(previous) = self.history.back() {
                sample.latency_p50_ms = previous.latency_p50_ms;
                sample.latency_p90_ms = previous.latency_p90_ms;
                sample.latency_p99_ms = previous.latency_p99_ms;
                sample.response_time_ms = previous.response_time_ms;
                sample.error_rate = previous.error_rate;
            }
            self.last_sample_at = now;
            return sample;
        }
        sample.set_traffic(&IntervalTraffic {
            seconds: now
                .saturating_duration_since(self.last_sample_at)
                .as_secs_f64(),
            requests: interval.requests,
            server_errors: interval.server_errors,
            latency: &interval.latency,
        });
        self.last_sample_at = now;
        sample
    }

    /// Shards silent past the heartbeat timeout: a critical alert each, and a replacement.
    fn heartbeats(&mut self, state: &ClusterState, now: Instant, now_ms: u64) -> Vec<Condition> {
        let mut out = Vec::new();
        for track in &state.shards {
            let alive = matches!(
                track.slot.state(),
                ShardState::Running | ShardState::Parked | ShardState::Draining
            );
            let Some(age) = track
                .last_report_at
                .map(|at| now.saturating_duration_since(at))
            else {
                continue;
            };
            if !alive || age <= self.settings.heartbeat_timeout {
                continue;
            }
            let id = track.slot.id;
            let name = format!("shard_{id}_heartbeat");
            if self.replaced[id] < track.generation {
                self.replaced[id] = track.generation;
                track.slot.request_replacement(track.generation);
                let reason = format!(
                    "shard {id} (generation {}) sent no heartbeat for {} ms",
                    track.generation,
                    age.as_millis()
                );
                log::error!(
                    "auto-recovery: {reason}; replacing it on CPU {}",
                    track.slot.cpu
                );
                let action = &mut self.actions[2];
                action.taken += 1;
                action.last_reason = Some(reason);
                action.since_ms = Some(now_ms);
            }
            out.push(Condition {
                message: format!(
                    "shard {id} sent no heartbeat for {} ms (limit {} ms); it is being replaced",
                    age.as_millis(),
                    self.settings.heartbeat_timeout.as_millis()
                ),
                name,
                severity: Severity::Critical,
                value: age.as_millis() as f64,
                threshold: self.settings.heartbeat_timeout.as_millis() as f64,
                eta_seconds: None,
                inhibited_by: None,
            });
        }
        out
    }

    /// Takes or undoes the toggled actions from the critical alerts, and marks the alerts.
    fn recover(&mut self, control: &Control, now_ms: u64) {
        let toggles = [
            (0, "cpu_usage/critical", "CPU is critical"),
            (1, "memory_usage/critical", "memory is critical"),
        ];
        for (index, alert_id, reason) in toggles {
            let on = self.book.is_active(alert_id);
            let action = &mut self.actions[index];
            if action.set(on, reason, now_ms) {
                if on {
                    log::warn!("auto-recovery: {reason}: {} on", action.name);
                } else {
                    log::info!("auto-recovery: {} off (the condition cleared)", action.name);
                }
            }
            match action.name {
                SHED_LOW_PRIORITY => control.set_shed_low_priority(on),
                _ => control.set_refuse_new_connections(on),
            }
            if on {
                self.book.set_action(alert_id, action.name);
            }
        }
        let restarting: Vec<String> = self
            .book
            .listing()
            .0
            .iter()
            .filter(|a| a.name.starts_with("shard_") && a.name.ends_with("_heartbeat"))
            .map(|a| a.id.clone())
            .collect();
        self.actions[2].active = !restarting.is_empty();
        for id in restarting {
            self.book.set_action(&id, RESTART_SHARD);
        }
    }

    fn notify(&self, notice: &Notice) {
        let a = &notice.alert;
        let state = format!("{:?}", a.state).to_lowercase();
        match (a.state, a.severity) {
            (alerts::AlertState::Resolved, _) => log::info!("alert {} resolved", a.id),
            (_, Severity::Critical) => log::error!("alert {} {state}: {}", a.id, a.message),
            (_, Severity::Warning) => log::warn!("alert {} {state}: {}", a.id, a.message),
        }
        if let Some(webhook) = &self.webhook {
            let body = super::webhook::payload(a, "");
            webhook.send(body.to_string().into_bytes());
        }
    }

    fn scale(&mut self, control: &Control, now: Instant, now_ms: u64) {
        let Some(latest) = self.history.back() else {
            return;
        };
        let since = now.saturating_duration_since(self.last_scale_at);
        let Some(to) = self
            .settings
            .policy
            .decide(self.active_shards, latest.cpu, since)
        else {
            return;
        };
        let from = self.active_shards;
        let reason = if to > from {
            format!(
                "CPU {:.1} % above {} %",
                latest.cpu, self.settings.policy.up
            )
        } else if from > self.settings.policy.max {
            format!(
                "more shards than CLUSTER_MAX_WORKERS={}",
                self.settings.policy.max
            )
        } else {
            format!(
                "CPU {:.1} % below {} %",
                latest.cpu, self.settings.policy.down
            )
        };
        log::info!("auto-scaling: {from} -> {to} active shards ({reason})");
        control.set_active_shards(to);
        self.active_shards = to;
        self.last_scale_at = now;
        if self.scale_events.len() == SCALE_EVENTS {
            self.scale_events.pop_front();
        }
        self.scale_events.push_back(ScaleEvent {
            at_ms: now_ms,
            from,
            to,
            cpu: latest.cpu,
            reason,
        });
    }

    fn rescore(&mut self, state: &ClusterState, now: Instant) {
        let Some(latest) = self.history.back() else {
            return;
        };
        let metrics: Vec<(f64, f64, f64)> = Metric::ALL
            .iter()
            .map(|&m| {
                let (w, c) = self.settings.thresholds.of(m);
                (m.value(latest), w, c)
            })
            .collect();
        let active = self.active_shards.min(state.shards.len());
        let down = state
            .shards
            .iter()
            .take(active)
            .filter(|t| {
                let silent = t
                    .last_report_at
                    .is_none_or(|at| now.saturating_duration_since(at) > self.settings.stale_after);
                // Parked and draining shards (scaling in progress) are alive.
                let alive = matches!(
                    t.slot.state(),
                    ShardState::Running | ShardState::Parked | ShardState::Draining
                );
                !alive || silent
            })
            .count();
        self.score = score::score(&metrics, down, active);
        self.grade = Grade::of(self.score);
        if let Some(latest) = self.history.back_mut() {
            latest.health_score = self.score;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cli;
    use crate::shard::ShardSlot;
    use std::sync::Arc;

    fn setup(args: &[&str], shards: usize) -> (Evaluator, ClusterState, Control) {
        let argv = std::iter::once("coinbit").chain(args.iter().copied());
        let config = Cli::parse_from(argv, &[]).unwrap().config;
        let (settings, _) = EvaluationSettings::from_config(&config, shards);
        let slots = (0..shards)
            .map(|id| Arc::new(ShardSlot::new(id, 0)))
            .collect();
        let state = ClusterState::new(slots, &["health"], Duration::from_secs(1));
        (
            Evaluator::new(settings, shards, None),
            state,
            Control::default(),
        )
    }

    #[test]
    fn shard_scaling_off_keeps_every_shard_active() {
        let scaling = |args: &[&str]| {
            let argv = std::iter::once("coinbit").chain(args.iter().copied());
            let config = Cli::parse_from(argv, &[]).unwrap().config;
            EvaluationSettings::from_config(&config, 6)
        };
        let (on, _) = scaling(&["--min-workers", "2"]);
        assert_eq!((on.policy.min, on.policy.max), (2, 6));
        assert_eq!(on.policy.decide(6, 1.0, Duration::from_secs(60)), Some(5));
        let (off, note) = scaling(&["--min-workers", "2", "--shard-scaling", "off"]);
        assert_eq!((off.policy.min, off.policy.max), (6, 6));
        assert!(note.unwrap().contains("SHARD_SCALING=off"));
        // Idle or busy, nothing moves.
        for cpu in [1.0, 99.0] {
            assert_eq!(off.policy.decide(6, cpu, Duration::from_secs(60)), None);
        }
    }

    #[test]
    fn memory_critical_refuses_connections_until_it_clears() {
        let (mut evaluator, mut state, control) =
            setup(&["--memory-warning", "0", "--memory-critical", "0"], 1);
        evaluator.step(&mut state, &control, Instant::now());
        assert!(control.refuse_new_connections());
        let action = &evaluator.actions[1];
        assert_eq!(
            (action.name, action.active, action.taken),
            (REFUSE_NEW_CONNECTIONS, true, 1)
        );
        assert_eq!(
            evaluator
                .book
                .get("memory_usage/critical")
                .unwrap()
                .action
                .as_deref(),
            Some(REFUSE_NEW_CONNECTIONS)
        );
        assert_eq!(evaluator.grade, Grade::Critical);

        // The levels move back above this process's memory: the condition clears, so does the
        // action.
        evaluator.settings.thresholds.0[Metric::MemoryUsage as usize] = (80.0, 95.0);
        evaluator.step(&mut state, &control, Instant::now());
        assert!(!control.refuse_new_connections());
        assert!(!evaluator.actions[1].active);
        assert_eq!(evaluator.actions[1].taken, 1);
        assert!(!evaluator.book.is_active("memory_usage/critical"));
    }

    /// The monitor itself stalled: the shards' reports of that time wait in the channel and it
    /// has read only the oldest. No shard is replaced for that; one that is really silent is,
    /// a round later.
    #[test]
    fn a_monitor_that_ran_late_replaces_no_shard_for_the_reports_it_has_not_read() {
        let (mut evaluator, mut state, control) = setup(&["--heartbeat-timeout", "10000"], 1);
        state.shards[0]
            .slot
            .set_state(crate::shard::ShardState::Running);
        let mut metrics = crate::metrics::ShardMetrics::new(1);
        let t0 = Instant::now();
        evaluator.last_sample_at = t0;
        state.absorb(metrics.report(0, 1, 7, t0));
        // Eleven seconds later, with the reports of that time still queued.
        let late = t0 + Duration::from_secs(11);
        evaluator.step(&mut state, &control, late);
        assert!(!state.shards[0].slot.is_superseded(1));
        assert_eq!(evaluator.actions[2].taken, 0);
        // On time again and still nothing from the shard: now it is replaced.
        evaluator.step(&mut state, &control, late + Duration::from_secs(1));
        assert!(state.shards[0].slot.is_superseded(1));
        assert_eq!(evaluator.actions[2].taken, 1);
    }

    #[test]
    fn more_shards_than_the_maximum_are_parked_at_the_first_sample() {
        // A long cooldown: the correction does not wait for it.
        let (mut evaluator, mut state, control) = setup(
            &[
                "--min-workers",
                "1",
                "--max-workers",
                "1",
                "--scale-cooldown",
                "600000",
            ],
            2,
        );
        assert!(control.is_active(1));
        evaluator.step(&mut state, &control, Instant::now());
        assert_eq!(evaluator.active_shards, 1);
        assert!(control.is_active(0) && !control.is_active(1));
        let event = evaluator.scale_events.back().unwrap();
        assert_eq!((event.from, event.to), (2, 1));
        assert!(
            event.reason.contains("CLUSTER_MAX_WORKERS=1"),
            "{}",
            event.reason
        );
        evaluator.step(&mut state, &control, Instant::now());
        assert_eq!(evaluator.scale_events.len(), 1, "then it stays");
    }
}
