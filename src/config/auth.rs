//! The accounts and access settings: the key that seals API secrets, session lifetime, the
//! per-shard credential cache, the password pool and login lockout.

use clap::{Args, ValueEnum};

use super::{millis, ConfigError};
use crate::auth::operator::OperatorToken;
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
    /// Failed logins from one client (any emails) inside the lockout window after which that client's logins get 429. Counted only where the client is known: see TRUST_FORWARDED_FOR
    #[arg(long, env = "LOGIN_MAX_CLIENT_FAILURES", default_value_t = 100,
          value_parser = clap::builder::RangedU64ValueParser::<u32>::new().range(1..=1_000_000))]
    pub login_max_client_failures: u32,
    /// Take a login's client from the last address of X-Forwarded-For, as the proxy in front writes it. Only behind a proxy that sets that header: a client could otherwise name any address. Off: the client is unknown and only the per-email lockout applies
    #[arg(long, env = "TRUST_FORWARDED_FOR", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub trust_forwarded_for: bool,
    /// Bootstrap operator credential, sent as `Authorization: Bearer <token>`: reaches the operator routes (jobs, dead letters, debug routes, locked reports) as role `operator`, with or without a database. 32 to 512 visible ASCII characters (e.g. `openssl rand -hex 32`); only its SHA-256 is kept. Unset: only operator, manager and admin sessions reach them
    #[arg(long, env = "OPERATOR_TOKEN", value_parser = secret_text, hide_env_values = true)]
    pub operator_token: Option<SecretText>,
    /// Who may read the reports (`/metrics`, `/api/enterprise/{metrics,cluster/status,queues/status,alerts}`): `open` to all (probes and scrapers), or `operator` (the operator token or an operator, manager or admin session). `/livez`, `/readyz`, `/health` and the `/dashboard` page (which holds no data) stay open
    #[arg(long, env = "METRICS_ACCESS", value_enum, default_value_t = MetricsAccess::Open)]
    pub metrics_access: MetricsAccess,
}

/// Who may read the reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MetricsAccess {
    /// Anyone.
    Open,
    /// Operators and above.
    Operator,
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

    /// `OPERATOR_TOKEN`, checked; a malformed token is an error that never repeats the value.
    pub fn operator_token(&self) -> Result<Option<OperatorToken>, ConfigError> {
        self.operator_token
            .as_ref()
            .map(|text| {
                OperatorToken::parse(&text.0)
                    .map_err(|why| ConfigError::invalid("OPERATOR_TOKEN", "<redacted>", &why))
            })
            .transpose()
    }
}
