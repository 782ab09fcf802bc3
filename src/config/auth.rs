//! The accounts and access settings: the key that seals API secrets, session lifetime, the
//! per-shard credential cache, the password pool and login lockout.

use clap::Args;

use super::{millis, ConfigError};
use crate::auth::secrets::SecretsKey;

/// A setting's text that must never be printed (`Debug` shows only whether it is set).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretText(pub String);

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

fn secret_text(text: &str) -> Result<SecretText, String> {
    Ok(SecretText(text.to_string()))
}

/// Accounts and access.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Accounts and access")]
pub struct AuthConfig {
    /// Key that seals API key secrets at rest, as VERSION:KEY (e.g. `1:` and 64 hex digits). Unset: API keys cannot be created or used, unless --debug-routes, which uses a public development key
    #[arg(long, env = "SECRETS_KEY", value_parser = secret_text, hide_env_values = true)]
    pub secrets_key: Option<SecretText>,
    /// How long a login's session lasts (ms).
    #[arg(long = "session-ttl", env = "SESSION_TTL", default_value_t = 86_400_000, value_parser = millis())]
    pub session_ttl_ms: u64,
    /// How long a shard trusts a session or API key it looked up before looking again: the longest a revocation takes to reach every shard (ms).
    #[arg(long = "auth-cache-ttl", env = "AUTH_CACHE_TTL", default_value_t = 2_000, value_parser = millis())]
    pub auth_cache_ttl_ms: u64,
    /// Threads that hash passwords (Argon2id), apart from the shards.
    #[arg(long, env = "PASSWORD_HASH_THREADS", default_value_t = 2,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256))]
    pub password_hash_threads: usize,
    /// Password hashes that may wait for a thread; past it a login or registration gets 503.
    #[arg(long, env = "PASSWORD_HASH_QUEUE", default_value_t = 64,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub password_hash_queue: usize,
    /// Failed logins for one email inside the lockout window after which logins get 429.
    #[arg(long, env = "LOGIN_MAX_FAILURES", default_value_t = 5,
          value_parser = clap::builder::RangedU64ValueParser::<u32>::new().range(1..=1_000_000))]
    pub login_max_failures: u32,
    /// The window failed logins are counted over, and the longest a lockout lasts (ms).
    #[arg(long = "login-lockout-window", env = "LOGIN_LOCKOUT_WINDOW", default_value_t = 900_000, value_parser = millis())]
    pub login_lockout_window_ms: u64,
}

impl AuthConfig {
    /// The key that seals API secrets: `SECRETS_KEY`, or the development key with
    /// `--debug-routes`, or none (API keys off). A malformed key is an error that never
    /// repeats the value.
    pub fn secrets_key(&self, debug_routes: bool) -> Result<Option<SecretsKey>, ConfigError> {
        match &self.secrets_key {
            Some(text) => SecretsKey::parse(&text.0)
                .map(Some)
                .map_err(|why| ConfigError::invalid("SECRETS_KEY", "<redacted>", &why)),
            None if debug_routes => Ok(Some(SecretsKey::development())),
            None => Ok(None),
        }
    }
}
