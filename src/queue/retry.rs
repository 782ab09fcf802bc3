//! When a failed or timed-out job runs again: exponential backoff with jitter.

use std::time::Duration;

/// Delay before attempt `attempt + 1`, after `attempt` (1-based) failed: `base * 2^(attempt-1)`
/// capped at `max`, of which the upper half is jittered by `jitter` (0.0..1.0), so retries of
/// jobs that failed together spread out ("equal jitter").
pub fn retry_delay(attempt: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let doubling = attempt.saturating_sub(1).min(30);
    let exponential = base.saturating_mul(1u32 << doubling).min(max);
    let half = exponential / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_table() {
        let ms = Duration::from_millis;
        let (base, max) = (ms(200), ms(30_000));
        let cases = [
            (1, 0.0, ms(100)),
            (1, 1.0, ms(200)),
            (2, 0.0, ms(200)),
            (2, 0.5, ms(300)),
            (3, 1.0, ms(800)),
            (9, 1.0, ms(30_000)),
            (9, 0.0, ms(15_000)),
            (1_000, 1.0, ms(30_000)),
        ];
        for (attempt, jitter, expected) in cases {
            assert_eq!(
                retry_delay(attempt, base, max, jitter),
                expected,
                "attempt {attempt} jitter {jitter}"
            );
        }
    }
}
