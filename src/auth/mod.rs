//! Accounts and access: the pure rules and the crypto behind logins, sessions and signed API
//! requests. No I/O here apart from the password pool's threads; the routes that use these live
//! in [`crate::app`].
//!
//! # Layout
//! - [`hex`]: lower-case hex for tokens, digests and signatures.
//! - [`token`]: session tokens (32 random bytes, hex) and the SHA-256 that is stored instead.
//! - [`signature`]: signed requests: the `X-CBC-*` headers, the receive window, HMAC-SHA256
//!   over `timestamp + method + path + query + body` compared in constant time, and the
//!   per-shard replay set.
//! - [`bucket`]: a token bucket per API key, per shard (no lock: a shard owns its buckets).
//! - [`secrets`]: API secrets at rest: ChaCha20-Poly1305 under a versioned `SECRETS_KEY`.
//! - [`password`]: Argon2id hashing on a small bounded pool of threads off the shards; the
//!   shard awaits the answer through a channel, and a full pool answers at once.
//! - [`role`]: roles and API key scopes.
//! - [`operator`]: the bootstrap operator token (`OPERATOR_TOKEN`), kept as its SHA-256.

pub mod bucket;
pub mod hex;
pub mod operator;
pub mod password;
pub mod role;
pub mod secrets;
pub mod signature;
pub mod token;

/// Milliseconds since the Unix epoch, the unit of `X-CBC-TIMESTAMP`.
pub fn unix_millis(now: std::time::SystemTime) -> u64 {
    now.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}
