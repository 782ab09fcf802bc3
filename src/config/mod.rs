//! Configuration: command-line flags and the seed's environment variables, in one place.
//!
//! Every setting is a flag with an environment variable beside it (the variable names are the
//! seed's contract). [`Config::parse_from`] turns both into a [`Config`] and [`Config::validate`]
//! checks what one flag alone cannot (min against max). Any bad value becomes a [`ConfigError`]
//! that names the variable (or flag) and the value; `main` prints it and exits with code 2.

mod affiliate;
mod auth;
mod cpus;
mod database;
mod error;
mod money;
mod money_rules;
mod trading;

use std::net::IpAddr;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

pub use affiliate::AffiliateConfig;
pub use auth::{AuthConfig, MetricsAccess, SecretText};
pub use cpus::{own_cpu_quota, CpuList};
pub use database::{redact, LagLimit, NodeSpec, ReadDriver, ReplicaStrategy};
pub use error::ConfigError;
pub use money::MoneyConfig;
pub use money_rules::{MoneyRulesConfig, PayoutDays};
pub use trading::TradingConfig;

/// Range accepted for percentage thresholds.
fn percent() -> clap::builder::RangedU64ValueParser<u8> {
    clap::builder::RangedU64ValueParser::<u8>::new().range(0..=100)
}

// Upper bounds of the size, count and time settings: far above any real use, and low enough
// that the sums, products and deadlines worked out from them cannot overflow.
/// Most bytes of a request line or of a header section.
pub const MAX_HEAD_LIMIT_BYTES: u64 = 1 << 20;
/// Most bytes of a request body.
pub const MAX_BODY_LIMIT_BYTES: u64 = 1 << 30;
/// Most of any count: connections, workers, queue and pool sizes, thresholds.
pub const MAX_COUNT: u64 = 1_000_000;
/// Most shards, and active shards when auto-scaling.
pub const MAX_SHARDS: u64 = 4_096;
/// Longest duration setting: a week, in milliseconds.
pub const MAX_MILLIS: u64 = 7 * 24 * 3_600_000;

/// A count from `low` to [`MAX_COUNT`].
fn count(low: u64) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(low..=MAX_COUNT)
}

/// A count of one at the least.
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    count(1)
}

/// A count of shards, one at the least.
fn shard_count() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MAX_SHARDS)
}

/// A threshold of a count (users, jobs), which may be 0.
fn count_threshold() -> clap::builder::RangedU64ValueParser<u64> {
    clap::builder::RangedU64ValueParser::<u64>::new().range(0..=MAX_COUNT)
}

/// A size limit in bytes, up to `max`.
fn byte_limit(max: u64) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(0..=max)
}

/// Duration in milliseconds from a whole number, from `low` to [`MAX_MILLIS`].
fn millis_from(low: u64) -> clap::builder::RangedU64ValueParser<u64> {
    clap::builder::RangedU64ValueParser::<u64>::new().range(low..=MAX_MILLIS)
}

/// Duration in milliseconds from a whole number, 1 ms at the least.
fn millis() -> clap::builder::RangedU64ValueParser<u64> {
    millis_from(1)
}

/// Longest `INSTANCE_ID`: a host name label's length.
const MAX_INSTANCE_ID: usize = 63;

/// An instance name: it goes into claims split at `/`, so only a host name's characters.
fn instance_id(value: &str) -> Result<String, String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if value.is_empty() || value.len() > MAX_INSTANCE_ID || !value.chars().all(allowed) {
        return Err(format!(
            "1 to {MAX_INSTANCE_ID} letters, digits, '.', '_' or '-'"
        ));
    }
    Ok(value.to_string())
}

/// CoinBitClub Enterprise API server: one pinned event-loop shard per CPU.
///
/// Every flag can also be set by the environment variable shown beside it; a flag given on the
/// command line wins. A bad value stops start-up with exit code 2.
#[derive(Debug, Clone, Parser)]
#[command(name = "coinbit", version, about, long_about, max_term_width = 110)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

/// Subcommands; without one the server serves.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve the API (the default).
    Serve,
    /// Apply the embedded schema migrations to the primary (DATABASE_URL), then exit.
    Migrate,
    /// Give a registered user a role (e.g. the first admin) on the primary (DATABASE_URL), then exit.
    GrantRole {
        /// The user's email, as registered.
        #[arg(long)]
        email: String,
        /// The role: user, affiliate, affiliate_vip, operator, manager or admin.
        #[arg(long, value_parser = parse_role)]
        role: crate::auth::role::Role,
    },
    /// Check this host's tuning for the server (see tuning/README.md).
    Doctor {
        /// Arguments passed to the doctor (`coinbit doctor --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn parse_role(text: &str) -> Result<crate::auth::role::Role, String> {
    crate::auth::role::Role::parse(text).ok_or_else(|| {
        "one of user, affiliate, affiliate_vip, operator, manager, admin".to_string()
    })
}

/// Everything the server reads at start-up.
#[derive(Debug, Clone, Args)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerConfig,
    #[command(flatten)]
    pub http: HttpConfig,
    #[command(flatten)]
    pub cluster: ClusterConfig,
    #[command(flatten)]
    pub queues: QueueConfig,
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(flatten)]
    pub monitoring: MonitoringConfig,
    #[command(flatten)]
    pub auth: AuthConfig,
    #[command(flatten)]
    pub money: MoneyConfig,
    #[command(flatten)]
    pub money_rules: MoneyRulesConfig,
    #[command(flatten)]
    pub affiliate: AffiliateConfig,
    #[command(flatten)]
    pub trading: TradingConfig,
}

/// Listener, shards and lifecycle.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Server")]
pub struct ServerConfig {
    /// TCP port every shard listens on (SO_REUSEPORT); 0 picks a free one and logs it.
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, env = "BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,
    /// Event-loop engine: `glommio` (io_uring), `may` (epoll coroutines), or `auto`: the
    /// faster where both can run (may, from bench/RESULTS.md), else the one that can; it probes
    /// io_uring and locked memory at start-up and logs which it chose and why.
    #[arg(long, env = "ENGINE", value_enum, default_value_t = EngineKind::Auto)]
    pub engine: EngineKind,
    /// Number of shards; default one per CPU (less the monitor core with 4 or more CPUs), at most the cgroup CPU quota (`cpu.max`, rounded up).
    #[arg(long, env = "SHARDS", value_parser = shard_count())]
    pub shards: Option<usize>,
    /// CPUs the shards are pinned to, e.g. `0-3,6`; default every CPU the process may use.
    #[arg(long, env = "SHARD_CPUS")]
    pub shard_cpus: Option<CpuList>,
    /// CPU of the monitor thread; default the last CPU.
    #[arg(long, env = "MONITOR_CORE")]
    pub monitor_core: Option<usize>,
    /// Listen backlog of each shard's socket.
    #[arg(long, env = "LISTEN_BACKLOG", default_value_t = 4096,
          value_parser = clap::builder::RangedI64ValueParser::<i32>::new().range(1..=65_535))]
    pub listen_backlog: i32,
    /// How long in-flight requests may run after SIGINT/SIGTERM before the process exits (ms).
    #[arg(long = "shutdown-timeout", env = "SHUTDOWN_TIMEOUT", default_value_t = 10_000, value_parser = millis())]
    pub shutdown_timeout_ms: u64,
    /// After SIGTERM, how long `/readyz` answers 503 while the server still accepts and serves, so that a load balancer's health checks take it out first (ms); 0 shuts down at once, behind a balancer use a few of its check intervals (2000 with deploy/haproxy.cfg's 500 ms checks)
    #[arg(long = "drain-delay", env = "DRAIN_DELAY", default_value_t = 0, value_parser = millis_from(0))]
    pub drain_delay_ms: u64,
    /// TCP port of the HAProxy agent check: each connection reads one line, `up ready`, `drain` or `down`, then closes; unset runs no agent
    #[arg(long, env = "AGENT_PORT",
          value_parser = clap::builder::RangedU64ValueParser::<u16>::new().range(1..=65_535))]
    pub agent_port: Option<u16>,
    /// This instance's name in durable job claims (`INSTANCE_ID/<per-start nonce>/<shard>`): letters, digits, `.`, `_` and `-`, at most 63; default the host name
    #[arg(long, env = "INSTANCE_ID", value_parser = instance_id)]
    pub instance_id: Option<String>,
    /// How often shards send their metrics to the monitor, which doubles as their heartbeat (ms).
    #[arg(long = "snapshot-interval", env = "SNAPSHOT_INTERVAL", default_value_t = 1_000, value_parser = millis())]
    pub snapshot_interval_ms: u64,
    /// Enable the `/debug/*` routes (test hooks: crash a shard, slow request). Never in production.
    #[arg(long, env = "DEBUG_ROUTES", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub debug_routes: bool,
    /// Start even where another process already serves the port, and share its traffic through SO_REUSEPORT (a zero-downtime hand-over); without it such a start is refused
    #[arg(long, env = "REUSE_PORT_HANDOVER", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub reuse_port_handover: bool,
}

/// HTTP/1.1 limits and timeouts.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "HTTP")]
pub struct HttpConfig {
    /// Longest request line accepted; longer gets 414 (bytes).
    #[arg(long, env = "MAX_REQUEST_LINE_BYTES", default_value_t = 8 * 1024,
          value_parser = byte_limit(MAX_HEAD_LIMIT_BYTES))]
    pub max_request_line_bytes: usize,
    /// Largest header section accepted; larger gets 431 (bytes).
    #[arg(long, env = "MAX_HEADER_BYTES", default_value_t = 8 * 1024,
          value_parser = byte_limit(MAX_HEAD_LIMIT_BYTES))]
    pub max_header_bytes: usize,
    /// Largest request body accepted; larger gets 413 (bytes).
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 1024 * 1024,
          value_parser = byte_limit(MAX_BODY_LIMIT_BYTES))]
    pub max_body_bytes: usize,
    /// Time a client has to send a whole request head (and body) once it started (ms).
    #[arg(long = "header-read-timeout", env = "HEADER_READ_TIMEOUT", default_value_t = 10_000, value_parser = millis())]
    pub header_read_timeout_ms: u64,
    /// Time an idle keep-alive connection is kept open (ms).
    #[arg(long = "keep-alive-timeout", env = "KEEP_ALIVE_TIMEOUT", default_value_t = 30_000, value_parser = millis())]
    pub keep_alive_timeout_ms: u64,
    /// Time a client may take to accept the bytes of a response before it is closed (ms).
    #[arg(long = "send-timeout", env = "SEND_TIMEOUT", default_value_t = 30_000, value_parser = millis())]
    pub send_timeout_ms: u64,
    /// Open connections per shard; past it a new connection gets 503 and is closed.
    #[arg(long, env = "MAX_CONNECTIONS_PER_SHARD", default_value_t = 8_192,
          value_parser = at_least_one())]
    pub max_connections_per_shard: usize,
}

/// The seed's cluster manager settings.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Cluster")]
pub struct ClusterConfig {
    /// Fewest active shards when auto-scaling.
    #[arg(long, env = "CLUSTER_MIN_WORKERS", default_value_t = 8, value_parser = shard_count())]
    pub min_workers: usize,
    /// Most active shards when auto-scaling (bounded by the CPUs).
    #[arg(long, env = "CLUSTER_MAX_WORKERS", default_value_t = 32, value_parser = shard_count())]
    pub max_workers: usize,
    /// CPU % above which a shard is added.
    #[arg(long, env = "SCALE_UP_THRESHOLD", default_value_t = 80, value_parser = percent())]
    pub scale_up_threshold: u8,
    /// CPU % below which a shard is parked.
    #[arg(long, env = "SCALE_DOWN_THRESHOLD", default_value_t = 30, value_parser = percent())]
    pub scale_down_threshold: u8,
    /// Time between two scaling actions (ms).
    #[arg(long = "scale-cooldown", env = "SCALE_COOLDOWN", default_value_t = 30_000, value_parser = millis())]
    pub scale_cooldown_ms: u64,
    /// In-process shard scaling: `on` parks and wakes shards by CPU (the settings above); `off` keeps every shard active, for when an orchestrator scales the number of instances instead.
    #[arg(long, env = "SHARD_SCALING", value_enum, default_value_t = Switch::On)]
    pub shard_scaling: Switch,
}

/// A feature turned on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// The seed's message-queue settings, per shard.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Queues")]
pub struct QueueConfig {
    /// Workers of the high-priority queue.
    #[arg(long, env = "QUEUE_HIGH_WORKERS", default_value_t = 4, value_parser = at_least_one())]
    pub high_workers: usize,
    /// Workers of the medium-priority queue.
    #[arg(long, env = "QUEUE_MEDIUM_WORKERS", default_value_t = 3, value_parser = at_least_one())]
    pub medium_workers: usize,
    /// Workers of the low-priority queue.
    #[arg(long, env = "QUEUE_LOW_WORKERS", default_value_t = 2, value_parser = at_least_one())]
    pub low_workers: usize,
    /// Workers of the background queue.
    #[arg(long, env = "QUEUE_BACKGROUND_WORKERS", default_value_t = 1, value_parser = at_least_one())]
    pub background_workers: usize,
    /// Time a high-priority job may run before it is cancelled (ms).
    #[arg(long = "high-timeout", env = "QUEUE_HIGH_TIMEOUT", default_value_t = 5_000, value_parser = millis())]
    pub high_timeout_ms: u64,
    /// Time a medium-priority job may run before it is cancelled (ms).
    #[arg(long = "medium-timeout", env = "QUEUE_MEDIUM_TIMEOUT", default_value_t = 10_000, value_parser = millis())]
    pub medium_timeout_ms: u64,
    /// Time a low-priority job may run before it is cancelled (ms).
    #[arg(long = "low-timeout", env = "QUEUE_LOW_TIMEOUT", default_value_t = 30_000, value_parser = millis())]
    pub low_timeout_ms: u64,
    /// Time a background job may run before it is cancelled (ms).
    #[arg(long = "background-timeout", env = "QUEUE_BACKGROUND_TIMEOUT", default_value_t = 60_000, value_parser = millis())]
    pub background_timeout_ms: u64,
    /// Most jobs waiting in one queue; past it enqueue answers 429.
    #[arg(long, env = "QUEUE_MAX_SIZE", default_value_t = 10_000, value_parser = at_least_one())]
    pub max_size: usize,
    /// Fill % of a shard's queue past which its new jobs go to the least-loaded shard.
    #[arg(long = "handoff-watermark", env = "QUEUE_HANDOFF_WATERMARK", default_value_t = 80,
          value_parser = clap::builder::RangedU64ValueParser::<u8>::new().range(1..=100))]
    pub handoff_watermark_percent: u8,
    /// Attempts a job gets (its first run included) before it goes to the dead letters.
    #[arg(long, env = "QUEUE_MAX_ATTEMPTS", default_value_t = 3,
          value_parser = clap::builder::RangedU64ValueParser::<u32>::new().range(1..=100))]
    pub max_attempts: u32,
    /// Delay before the first retry; each further retry doubles it, with jitter (ms).
    #[arg(long = "retry-base-delay", env = "QUEUE_RETRY_BASE_DELAY", default_value_t = 200, value_parser = millis())]
    pub retry_base_delay_ms: u64,
    /// Longest delay between two attempts (ms).
    #[arg(long = "retry-max-delay", env = "QUEUE_RETRY_MAX_DELAY", default_value_t = 30_000, value_parser = millis())]
    pub retry_max_delay_ms: u64,
    /// Dead-lettered jobs kept per shard; past it the oldest is dropped (and counted).
    #[arg(long, env = "QUEUE_DEAD_LETTER_MAX", default_value_t = 1_000, value_parser = at_least_one())]
    pub dead_letter_max: usize,
    /// Largest job payload accepted, as compact JSON; larger gets 413 (bytes). Only queued,
    /// running and dead-lettered jobs keep their payload.
    #[arg(long = "max-payload-bytes", env = "QUEUE_MAX_PAYLOAD_BYTES", default_value_t = 65_536, value_parser = at_least_one())]
    pub max_payload_bytes: usize,
    /// Class each route's requests run in, e.g. `readyz=low,livez=high`, over the route table's
    /// defaults (the reports background); `none` runs every request outside the classes.
    #[arg(long = "route-classes", env = "QUEUE_ROUTE_CLASSES", value_parser = crate::queue::RouteClasses::parse)]
    pub route_classes: Option<crate::queue::RouteClasses>,
}

/// PostgreSQL primary and read replicas.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Database")]
pub struct DatabaseConfig {
    /// Primary's URL (writes). Without it the server runs and database routes answer 503.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Read replicas in order; from the environment as DB_READ_REPLICA_1, DB_READ_REPLICA_2, ...
    #[arg(long = "db-read-replica", value_name = "URL")]
    pub read_replicas: Vec<String>,
    /// Connections per database node (each with its own thread; reads queued together share one query).
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 2,
          value_parser = at_least_one())]
    pub pool_size: usize,
    /// How often each shard's dispatcher looks for durable jobs in the outbox while idle (ms);
    /// 0 runs none in this server (others on the same database run them).
    #[arg(
        long = "durable-jobs-poll-interval",
        env = "DURABLE_JOBS_POLL_INTERVAL",
        default_value_t = 100,
        value_parser = millis_from(0)
    )]
    pub durable_poll_interval_ms: u64,
    /// Time between replica health checks (ms).
    #[arg(long = "replica-health-check-interval", env = "REPLICA_HEALTH_CHECK_INTERVAL", default_value_t = 15_000, value_parser = millis())]
    pub replica_health_check_interval_ms: u64,
    /// How reads pick a replica: `round-robin`, `least-connections` (fewest in flight) or `weighted` (smooth weighted round-robin; a replica URL's `?weight=N`, default 3/3/2).
    #[arg(long = "replica-strategy", env = "DB_REPLICA_STRATEGY", value_enum, default_value_t = ReplicaStrategy::Weighted)]
    pub replica_strategy: ReplicaStrategy,
    /// Replica lag past which a replica is ejected: bytes of WAL and/or time, e.g. `16MB,10s`, `1048576`, `500ms`.
    #[arg(
        long = "max-replica-lag",
        env = "DB_MAX_REPLICA_LAG",
        default_value = "16MB,10s"
    )]
    pub max_replica_lag: LagLimit,
    /// Longest a statement may run before the database cancels it (ms).
    #[arg(long = "statement-timeout", env = "DB_STATEMENT_TIMEOUT", default_value_t = 5_000, value_parser = millis())]
    pub statement_timeout_ms: u64,
    /// Longest a connection attempt to a node may take (ms).
    #[arg(long = "connect-timeout", env = "DB_CONNECT_TIMEOUT", default_value_t = 2_000, value_parser = millis())]
    pub connect_timeout_ms: u64,
    /// Requests that may wait for a busy node's pool; past it a request gets 503.
    #[arg(long = "db-queue-size", env = "DB_QUEUE_SIZE", default_value_t = 1_024,
          value_parser = at_least_one())]
    pub queue_size: usize,
    /// First ejection time of a failing or lagging replica; doubles on each repeat, up to 16x (ms).
    #[arg(long = "ejection-time", env = "DB_EJECTION_TIME", default_value_t = 10_000, value_parser = millis())]
    pub ejection_time_ms: u64,
    /// While the primary is shut out (stopped, or a failover under way with a several-host DATABASE_URL), how often it is asked again which host takes writes (never less often than DB_EJECTION_TIME) (ms).
    #[arg(long = "primary-retry", env = "DB_PRIMARY_RETRY", default_value_t = 500, value_parser = millis())]
    pub primary_retry_ms: u64,
    /// Consecutive failed requests that open a node's circuit breaker.
    #[arg(long = "breaker-failures", env = "DB_BREAKER_FAILURES", default_value_t = 5,
          value_parser = clap::builder::RangedU64ValueParser::<u32>::new().range(1..=MAX_COUNT))]
    pub breaker_failures: u32,
    /// Longest a read that presents a commit LSN waits for a replica to replay it before it reads the primary (ms).
    #[arg(long = "read-your-writes-wait", env = "DB_READ_YOUR_WRITES_WAIT", default_value_t = 100, value_parser = millis())]
    pub read_your_writes_wait_ms: u64,
    /// What carries reads: `threads` (the DB I/O threads) or `wire` (each shard's own connections on its event loop, glommio only; today the read of `GET /api/users/{id}`).
    #[arg(long = "db-read-driver", env = "DB_READ_DRIVER", value_enum, default_value_t = ReadDriver::Threads)]
    pub read_driver: ReadDriver,
    /// Most writes one pooled connection commits in one transaction (group commit); 1 turns it off.
    #[arg(long = "group-commit", env = "DB_GROUP_COMMIT", default_value_t = 16,
          value_parser = at_least_one())]
    pub group_commit: usize,
}

/// The seed's monitoring thresholds and cadence.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Monitoring")]
pub struct MonitoringConfig {
    /// Time between two alerts of the same kind (ms).
    #[arg(long = "alert-cooldown", env = "MONITORING_ALERT_COOLDOWN", default_value_t = 300_000, value_parser = millis())]
    pub alert_cooldown_ms: u64,
    /// Time between two metric samples on the monitor core (ms).
    #[arg(long = "metrics-interval", env = "MONITORING_METRICS_INTERVAL", default_value_t = 5_000, value_parser = millis())]
    pub metrics_interval_ms: u64,
    /// CPU % that raises a warning.
    #[arg(long, env = "MONITORING_CPU_WARNING", default_value_t = 70, value_parser = percent())]
    pub cpu_warning: u8,
    /// CPU % that raises a critical alert.
    #[arg(long, env = "MONITORING_CPU_CRITICAL", default_value_t = 90, value_parser = percent())]
    pub cpu_critical: u8,
    /// Memory % that raises a warning.
    #[arg(long, env = "MONITORING_MEMORY_WARNING", default_value_t = 80, value_parser = percent())]
    pub memory_warning: u8,
    /// Memory % that raises a critical alert.
    #[arg(long, env = "MONITORING_MEMORY_CRITICAL", default_value_t = 95, value_parser = percent())]
    pub memory_critical: u8,
    /// Response time that raises a warning (ms).
    #[arg(long = "response-time-warning", env = "MONITORING_RESPONSE_TIME_WARNING", default_value_t = 1_000, value_parser = millis())]
    pub response_time_warning_ms: u64,
    /// Response time that raises a critical alert (ms).
    #[arg(long = "response-time-critical", env = "MONITORING_RESPONSE_TIME_CRITICAL", default_value_t = 3_000, value_parser = millis())]
    pub response_time_critical_ms: u64,
    /// Error rate % that raises a warning.
    #[arg(long, env = "MONITORING_ERROR_RATE_WARNING", default_value_t = 1, value_parser = percent())]
    pub error_rate_warning: u8,
    /// Error rate % that raises a critical alert.
    #[arg(long, env = "MONITORING_ERROR_RATE_CRITICAL", default_value_t = 5, value_parser = percent())]
    pub error_rate_critical: u8,
    /// Concurrent users that raise a warning.
    #[arg(
        long,
        env = "MONITORING_CONCURRENT_USERS_WARNING",
        default_value_t = 800,
        value_parser = count_threshold()
    )]
    pub concurrent_users_warning: u64,
    /// Concurrent users that raise a critical alert.
    #[arg(
        long,
        env = "MONITORING_CONCURRENT_USERS_CRITICAL",
        default_value_t = 950,
        value_parser = count_threshold()
    )]
    pub concurrent_users_critical: u64,
    /// Queued jobs that raise a warning.
    #[arg(long, env = "MONITORING_QUEUE_SIZE_WARNING", default_value_t = 1_000, value_parser = count_threshold())]
    pub queue_size_warning: u64,
    /// Queued jobs that raise a critical alert.
    #[arg(long, env = "MONITORING_QUEUE_SIZE_CRITICAL", default_value_t = 5_000, value_parser = count_threshold())]
    pub queue_size_critical: u64,
    /// Alerts are also POSTed here as Alertmanager webhook JSON (`http://host:port/path`).
    #[arg(long, env = "MONITORING_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Time span of the samples a trend is fitted over (ms).
    #[arg(long = "trend-window", env = "MONITORING_TREND_WINDOW", default_value_t = 300_000, value_parser = millis())]
    pub trend_window_ms: u64,
    /// A trend alert fires when a metric is projected to cross its critical level within this (ms).
    #[arg(long = "trend-horizon", env = "MONITORING_TREND_HORIZON", default_value_t = 600_000, value_parser = millis())]
    pub trend_horizon_ms: u64,
    /// Samples kept for trends and the endpoints (720 is an hour at the default interval).
    #[arg(long = "history-length", env = "MONITORING_HISTORY_LENGTH", default_value_t = 720,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2..=100_000))]
    pub history_length: usize,
    /// A shard silent for this long is restarted on its core (ms).
    #[arg(long = "heartbeat-timeout", env = "MONITORING_HEARTBEAT_TIMEOUT", default_value_t = 10_000, value_parser = millis())]
    pub heartbeat_timeout_ms: u64,
}

/// Event-loop engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    /// glommio on io_uring.
    Glommio,
    /// may coroutines on epoll.
    May,
    /// Chosen at start-up from what the kernel allows.
    Auto,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Glommio => "glommio",
            EngineKind::May => "may",
            EngineKind::Auto => "auto",
        }
    }
}

/// Prefix of the numbered replica variables (`DB_READ_REPLICA_1`, ...).
pub const READ_REPLICA_VAR_PREFIX: &str = "DB_READ_REPLICA_";

impl Cli {
    /// Parses the command line and the environment. clap reads the variables named in the flags;
    /// `env` is the same environment, passed in so that an error can name the variable a bad
    /// value came from and so that the numbered replica variables can be collected.
    pub fn parse_from<I, T>(args: I, env: &[(String, String)]) -> Result<Cli, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let command = Cli::command();
        let matches = command
            .clone()
            .try_get_matches_from(args)
            .map_err(|e| ConfigError::from_clap(e, &command, env))?;
        let mut cli = Cli::from_arg_matches(&matches)
            .map_err(|e| ConfigError::from_clap(e, &command, env))?;
        cli.config
            .database
            .read_replicas
            .extend(read_replicas_from_env(env)?);
        cli.config.validate()?;
        Ok(cli)
    }
}

/// `DB_READ_REPLICA_1..n` in numeric order; a gap or a non-number suffix is an error.
fn read_replicas_from_env(env: &[(String, String)]) -> Result<Vec<String>, ConfigError> {
    let mut numbered = Vec::new();
    for (name, value) in env {
        let Some(suffix) = name.strip_prefix(READ_REPLICA_VAR_PREFIX) else {
            continue;
        };
        let index: usize = suffix.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
            ConfigError::invalid(name, value, "replica variables are numbered from 1")
        })?;
        numbered.push((index, name.clone(), value.clone()));
    }
    numbered.sort();
    for (position, (index, name, value)) in numbered.iter().enumerate() {
        if *index != position + 1 {
            return Err(ConfigError::invalid(
                name,
                value,
                &format!("replicas must be numbered without gaps: {READ_REPLICA_VAR_PREFIX}{} is missing", position + 1),
            ));
        }
    }
    Ok(numbered.into_iter().map(|(_, _, value)| value).collect())
}

impl Config {
    /// Checks that settings agree with each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        if c.min_workers > c.max_workers {
            return Err(ConfigError::conflict(
                ("CLUSTER_MIN_WORKERS", c.min_workers),
                ("CLUSTER_MAX_WORKERS", c.max_workers),
                "the minimum must not exceed the maximum",
            ));
        }
        if c.scale_down_threshold >= c.scale_up_threshold {
            return Err(ConfigError::conflict(
                ("SCALE_DOWN_THRESHOLD", c.scale_down_threshold),
                ("SCALE_UP_THRESHOLD", c.scale_up_threshold),
                "scale-down must be below scale-up",
            ));
        }
        let m = &self.monitoring;
        let pairs: [(&str, u64, &str, u64); 6] = [
            (
                "MONITORING_CPU_WARNING",
                m.cpu_warning.into(),
                "MONITORING_CPU_CRITICAL",
                m.cpu_critical.into(),
            ),
            (
                "MONITORING_MEMORY_WARNING",
                m.memory_warning.into(),
                "MONITORING_MEMORY_CRITICAL",
                m.memory_critical.into(),
            ),
            (
                "MONITORING_RESPONSE_TIME_WARNING",
                m.response_time_warning_ms,
                "MONITORING_RESPONSE_TIME_CRITICAL",
                m.response_time_critical_ms,
            ),
            (
                "MONITORING_ERROR_RATE_WARNING",
                m.error_rate_warning.into(),
                "MONITORING_ERROR_RATE_CRITICAL",
                m.error_rate_critical.into(),
            ),
            (
                "MONITORING_CONCURRENT_USERS_WARNING",
                m.concurrent_users_warning,
                "MONITORING_CONCURRENT_USERS_CRITICAL",
                m.concurrent_users_critical,
            ),
            (
                "MONITORING_QUEUE_SIZE_WARNING",
                m.queue_size_warning,
                "MONITORING_QUEUE_SIZE_CRITICAL",
                m.queue_size_critical,
            ),
        ];
        for (warn_name, warn, crit_name, crit) in pairs {
            if warn > crit {
                return Err(ConfigError::conflict(
                    (warn_name, warn),
                    (crit_name, crit),
                    "a warning must not exceed its critical level",
                ));
            }
        }
        let h = &self.http;
        for (name, value) in [
            ("MAX_REQUEST_LINE_BYTES", h.max_request_line_bytes),
            ("MAX_HEADER_BYTES", h.max_header_bytes),
        ] {
            if value < 64 {
                return Err(ConfigError::invalid(
                    name,
                    &value.to_string(),
                    "must be at least 64 bytes",
                ));
            }
        }
        self.database.nodes()?;
        let q = &self.queues;
        if q.retry_base_delay_ms > q.retry_max_delay_ms {
            return Err(ConfigError::conflict(
                ("QUEUE_RETRY_BASE_DELAY", q.retry_base_delay_ms),
                ("QUEUE_RETRY_MAX_DELAY", q.retry_max_delay_ms),
                "the first retry delay must not exceed the longest",
            ));
        }
        if let Some(url) = &self.monitoring.webhook_url {
            check_webhook_url(url)?;
        }
        self.auth.secrets_key(self.server.debug_routes)?;
        self.auth.operator_token()?;
        if self.server.listen_backlog < 1 {
            return Err(ConfigError::invalid(
                "LISTEN_BACKLOG",
                &self.server.listen_backlog.to_string(),
                "must be positive",
            ));
        }
        Ok(())
    }

    /// `INSTANCE_ID`, else the host name (kept to `INSTANCE_ID`'s characters), else `coinbit`.
    pub fn instance_id(&self) -> String {
        if let Some(id) = &self.server.instance_id {
            return id.clone();
        }
        let mut name = [0u8; 256];
        // SAFETY: gethostname writes at most `name.len()` bytes into the buffer.
        let got = unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) };
        let host = std::ffi::CStr::from_bytes_until_nul(&name)
            .ok()
            .filter(|_| got == 0)
            .and_then(|host| host.to_str().ok())
            .unwrap_or_default();
        instance_id(host).unwrap_or_else(|_| "coinbit".into())
    }

    pub fn drain_delay(&self) -> Duration {
        Duration::from_millis(self.server.drain_delay_ms)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.server.shutdown_timeout_ms)
    }

    pub fn snapshot_interval(&self) -> Duration {
        Duration::from_millis(self.server.snapshot_interval_ms)
    }
}

/// The webhook client speaks plain HTTP/1.1 (put a TLS-terminating proxy in front of an https
/// receiver): `http://host[:port][/path]`.
fn check_webhook_url(url: &str) -> Result<(), ConfigError> {
    crate::monitor::webhook::Target::parse(url)
        .map(|_| ())
        .map_err(|why| ConfigError::invalid("MONITORING_WEBHOOK_URL", url, &why))
}

#[cfg(test)]
mod tests;

/// The README's configuration table, rendered from the flags themselves (a test keeps the
/// README equal to it).
pub fn configuration_table() -> String {
    let command = Cli::command();
    let mut out = String::from("| Variable | Flag | Default | Meaning |\n|---|---|---|---|\n");
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let env = match arg.get_env().and_then(|e| e.to_str()) {
            Some(env) => format!("`{env}`"),
            None if long == "db-read-replica" => format!("`{READ_REPLICA_VAR_PREFIX}1..n`"),
            None => String::new(),
        };
        let default: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let default = if default.is_empty() {
            "—".to_string()
        } else {
            format!("`{}`", default.join(","))
        };
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        out.push_str(&format!(
            "| {env} | `--{long}` | {default} | {} |\n",
            help.replace('|', "\\|")
        ));
    }
    out
}
