//! The health score, 0–100, and its words.
//!
//! ```text
//! score = 100 − Σ penalty(metric) − 60 × down_shards / active_shards      (clamped to 0..100)
//!
//! penalty(value), with the metric's warning level W and critical level C:
//!   value <  W/2        0                       all is well
//!   W/2 ≤ value < W     20 × (value − W/2)/(W/2) approaching the warning: 0..20
//!   W ≤ value < C       30 + 20 × (value − W)/(C − W)   a warning: 30..50
//!   value ≥ C           60                      a critical
//! ```
//! over the six metrics with thresholds (CPU, memory, response time, error rate, concurrent
//! users, queue size); a down shard is an active one that is not running or has stopped
//! sending heartbeats. Words: excellent ≥ 90, good ≥ 75, degraded ≥ 45, critical below. So one
//! metric at its warning makes the server degraded, one at its critical makes it critical, and
//! a metric approaching its warning costs at most a grade. `/health` says pass for excellent
//! and good, warn for degraded, fail (503) for critical; `/readyz` stays
//! about the process alone (not its grade).

use super::HealthStatus;

/// What a shard missing costs at most (all of the active shards down).
const DOWN_SHARDS_PENALTY: f64 = 60.0;

/// The penalty of one metric's value against its warning and critical levels.
pub fn penalty(value: f64, warning: f64, critical: f64) -> f64 {
    if value >= critical {
        60.0
    } else if value >= warning {
        let span = (critical - warning).max(f64::EPSILON);
        30.0 + 20.0 * (value - warning) / span
    } else if value >= warning / 2.0 && warning > 0.0 {
        20.0 * (value - warning / 2.0) / (warning / 2.0)
    } else {
        0.0
    }
}

/// The score from `(value, warning, critical)` per metric and the shards down.
pub fn score(metrics: &[(f64, f64, f64)], down_shards: usize, active_shards: usize) -> u8 {
    let metric_penalties: f64 = metrics.iter().map(|&(v, w, c)| penalty(v, w, c)).sum();
    let shard_penalty = if active_shards == 0 {
        100.0
    } else {
        DOWN_SHARDS_PENALTY * down_shards.min(active_shards) as f64 / active_shards as f64
    };
    (100.0 - metric_penalties - shard_penalty)
        .clamp(0.0, 100.0)
        .round() as u8
}

/// The seed's words for a score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Grade {
    Excellent,
    Good,
    Degraded,
    Critical,
}

impl Grade {
    pub fn of(score: u8) -> Grade {
        match score {
            90.. => Grade::Excellent,
            75..=89 => Grade::Good,
            45..=74 => Grade::Degraded,
            _ => Grade::Critical,
        }
    }

    pub fn health(self) -> HealthStatus {
        match self {
            Grade::Excellent | Grade::Good => HealthStatus::Pass,
            Grade::Degraded => HealthStatus::Warn,
            Grade::Critical => HealthStatus::Fail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn penalty_table() {
        // CPU levels 70/90.
        let cases = [
            (0.0, 0.0),
            (34.9, 0.0),
            (35.0, 0.0),
            (52.5, 10.0),
            (70.0, 30.0),
            (80.0, 40.0),
            (89.9, 49.9),
            (90.0, 60.0),
            (100.0, 60.0),
        ];
        for (value, expected) in cases {
            let got = penalty(value, 70.0, 90.0);
            assert!(
                (got - expected).abs() < 0.01,
                "{value}: {got} != {expected}"
            );
        }
        // Zero levels (set low on purpose): any value is critical.
        assert_eq!(penalty(0.0, 0.0, 0.0), 60.0);
    }

    #[test]
    fn score_and_words_table() {
        let calm = (10.0, 70.0, 90.0);
        let approaching = (60.0, 70.0, 90.0);
        let warning = (75.0, 70.0, 90.0);
        let critical = (95.0, 70.0, 90.0);
        type Case<'a> = (&'a [(f64, f64, f64)], usize, usize, u8, Grade, HealthStatus);
        let cases: [Case; 7] = [
            (
                &[calm, calm],
                0,
                2,
                100,
                Grade::Excellent,
                HealthStatus::Pass,
            ),
            (&[approaching], 0, 2, 86, Grade::Good, HealthStatus::Pass),
            (&[warning], 0, 2, 65, Grade::Degraded, HealthStatus::Warn),
            (&[critical], 0, 2, 40, Grade::Critical, HealthStatus::Fail),
            (
                &[warning, warning],
                0,
                2,
                30,
                Grade::Critical,
                HealthStatus::Fail,
            ),
            (&[calm], 1, 2, 70, Grade::Degraded, HealthStatus::Warn),
            (&[calm], 0, 0, 0, Grade::Critical, HealthStatus::Fail),
        ];
        for (metrics, down, active, expected, grade, health) in cases {
            let got = score(metrics, down, active);
            assert_eq!(got, expected, "{metrics:?} down {down}/{active}");
            assert_eq!(Grade::of(got), grade, "{got}");
            assert_eq!(Grade::of(got).health(), health, "{got}");
        }
    }
}
