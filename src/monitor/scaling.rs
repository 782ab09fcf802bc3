//! Auto-scaling: how many shards are active, between `CLUSTER_MIN_WORKERS` and
//! `CLUSTER_MAX_WORKERS` (both clamped to the shards placed on this host's CPUs), moved one
//! at a time by the active shards' mean CPU against `SCALE_UP_THRESHOLD` and
//! `SCALE_DOWN_THRESHOLD`, at most once per `SCALE_COOLDOWN`. Pure decisions.

use std::time::Duration;

/// The scaling settings, already clamped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalePolicy {
    pub min: usize,
    pub max: usize,
    pub up: f64,
    pub down: f64,
    pub cooldown: Duration,
}

impl ScalePolicy {
    /// Clamps the configured bounds to the shards there are: returns the policy and, when a
    /// bound was clamped, the sentence to log at start-up.
    pub fn clamped(
        min: usize,
        max: usize,
        shards: usize,
        up: f64,
        down: f64,
        cooldown: Duration,
    ) -> (ScalePolicy, Option<String>) {
        let max_c = max.min(shards).max(1);
        let min_c = min.min(max_c).max(1);
        let note = (max_c != max || min_c != min).then(|| {
            format!(
                "auto-scaling between {min_c} and {max_c} active shards: CLUSTER_MIN_WORKERS={min} \
                 and CLUSTER_MAX_WORKERS={max} clamped to the {shards} shards placed on this host's CPUs"
            )
        });
        (
            ScalePolicy {
                min: min_c,
                max: max_c,
                up,
                down,
                cooldown,
            },
            note,
        )
    }

    /// The number of active shards to have next, or `None` to stay. Out-of-bounds counts are
    /// corrected at once; otherwise one step, only once the cooldown since the last action (or
    /// the start) has passed.
    pub fn decide(&self, active: usize, cpu: f64, since_last_action: Duration) -> Option<usize> {
        if active > self.max {
            return Some(self.max);
        }
        if active < self.min {
            return Some(self.min);
        }
        if since_last_action < self.cooldown {
            return None;
        }
        if cpu > self.up && active < self.max {
            Some(active + 1)
        } else if cpu < self.down && active > self.min {
            Some(active - 1)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamping_to_the_cpus_is_said() {
        let s = Duration::from_secs(30);
        let (p, note) = ScalePolicy::clamped(8, 32, 2, 80.0, 30.0, s);
        assert_eq!((p.min, p.max), (2, 2));
        assert!(note.unwrap().contains("CLUSTER_MAX_WORKERS=32"));
        let (p, note) = ScalePolicy::clamped(1, 2, 2, 80.0, 30.0, s);
        assert_eq!(((p.min, p.max), note), ((1, 2), None));
    }

    #[test]
    fn decision_table() {
        let p = ScalePolicy {
            min: 1,
            max: 3,
            up: 80.0,
            down: 30.0,
            cooldown: Duration::from_secs(30),
        };
        let cooled = Duration::from_secs(31);
        let hot = Duration::from_secs(5);
        let cases = [
            (2, 90.0, cooled, Some(3)),
            (3, 95.0, cooled, None),
            (2, 10.0, cooled, Some(1)),
            (1, 10.0, cooled, None),
            (2, 50.0, cooled, None),
            (2, 90.0, hot, None),
            (2, 10.0, hot, None),
            (5, 50.0, hot, Some(3)),
            (0, 50.0, hot, Some(1)),
        ];
        for (active, cpu, since, expected) in cases {
            assert_eq!(
                p.decide(active, cpu, since),
                expected,
                "{active} {cpu} {since:?}"
            );
        }
    }
}
