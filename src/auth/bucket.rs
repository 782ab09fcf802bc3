//! A token bucket per API key, per shard: a key may make `rate` requests a second on each
//! shard, with a burst of one second's worth. A shard owns its buckets, so no lock: the limit
//! a client sees is per shard, and one spread over N shards' connections gets up to N times it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One key's bucket.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, now: Instant) -> Self {
        TokenBucket {
            tokens: f64::from(rate),
            refilled_at: now,
        }
    }

    /// Takes one token; when there is none, how long until there is.
    pub fn take(&mut self, rate: u32, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(rate.max(1));
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.refilled_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

/// This shard's buckets, by key id.
#[derive(Debug, Default)]
pub struct Buckets {
    by_key: HashMap<String, TokenBucket>,
}

/// Buckets kept before the idle ones (full again after a second) are dropped.
const MAX_BUCKETS: usize = 100_000;

impl Buckets {
    /// Takes a token from `key_id`'s bucket; `Err(retry_after)` when it is empty.
    pub fn take(&mut self, key_id: &str, rate: u32, now: Instant) -> Result<(), Duration> {
        if let Some(bucket) = self.by_key.get_mut(key_id) {
            return bucket.take(rate, now);
        }
        if self.by_key.len() >= MAX_BUCKETS {
            // A bucket idle for a second is full again: forgetting it changes nothing.
            self.by_key.retain(|_, b| {
                now.saturating_duration_since(b.refilled_at) < Duration::from_secs(1)
            });
        }
        let mut bucket = TokenBucket::new(rate, now);
        let taken = bucket.take(rate, now);
        self.by_key.insert(key_id.to_string(), bucket);
        taken
    }
}

/// The `Retry-After` value for a wait: whole seconds, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs_f64().ceil() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(3, start);
        for _ in 0..3 {
            assert_eq!(bucket.take(3, start), Ok(()));
        }
        let wait = bucket.take(3, start).unwrap_err();
        assert!((wait.as_secs_f64() - 1.0 / 3.0).abs() < 1e-6, "{wait:?}");
        // A third of a second later, one more token.
        let later = start + Duration::from_millis(334);
        assert_eq!(bucket.take(3, later), Ok(()));
        assert!(bucket.take(3, later).is_err());
        // Idle for long: full again, never more than one second's worth.
        let much_later = later + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(bucket.take(3, much_later), Ok(()));
        }
        assert!(bucket.take(3, much_later).is_err());
    }

    #[test]
    fn keys_have_their_own_buckets() {
        let now = Instant::now();
        let mut buckets = Buckets::default();
        assert_eq!(buckets.take("a", 1, now), Ok(()));
        assert!(buckets.take("a", 1, now).is_err());
        assert_eq!(buckets.take("b", 1, now), Ok(()));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        for (wait_ms, secs) in [(0, 1), (1, 1), (999, 1), (1_000, 1), (1_001, 2), (2_500, 3)] {
            assert_eq!(
                retry_after_secs(Duration::from_millis(wait_ms)),
                secs,
                "{wait_ms}"
            );
        }
    }
}
