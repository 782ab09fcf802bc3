//! CoinBitClub Enterprise API server: thread-per-core, shared-nothing.
//!
//! One shard per CPU, each an OS thread pinned with `core_affinity` running its own event loop
//! (the engine), its own SO_REUSEPORT listener and every connection it accepts for that
//! connection's life. A monitor thread on its own core (or a shared one on small hosts) merges the
//! shards' metric reports and publishes the status bodies. Shards talk to the rest only over
//! lock-free channels and immutable published snapshots. Under glommio no lock sits on the
//! request path; under may, whose coroutines can resume on another of the shard's carrier
//! threads, one per-shard lock (uncontended: only the shard's serving carrier takes it in the
//! steady state) guards the app.
//!
//! # Layout
//! - [`config`]: flags and the seed's environment variables, validated in one place.
//! - [`http`]: the sans-I/O HTTP/1.1 codec every engine drives.
//! - [`app`]: the route table and handlers, the debug hooks, and the factory that builds each
//!   shard's app (engine-agnostic).
//! - [`auth`]: accounts and access: tokens, signed requests, replay and rate limits, API
//!   secrets at rest, and Argon2id on its own threads.
//! - [`db`]: the PostgreSQL tier: pools on DB I/O threads, replica routing, health, migrations.
//! - [`engine`]: event loops that move bytes and time (`glommio`, `may`), the choice between
//!   them, and start-up checks.
//! - [`shard`]: placement on CPUs (within the cgroup's CPU quota), shard lifecycle, supervision
//!   and restarts, the engine-neutral commands every engine obeys (activate/deactivate, shed,
//!   refuse, leave), and the HAProxy agent check.
//! - [`exchange`]: the one interface to exchanges, its Binance-style client over HTTP on a
//!   bounded I/O pool, and the exchange simulator (`exchange-sim`).
//! - [`ledger`]: the money: double-entry accounts and transfers, holds, idempotent money
//!   requests, the payment webhook's signature, the ledger check.
//! - [`metrics`]: per-shard counters and HDR histograms.
//! - [`monitor`]: the monitor core: merging, sampling, the evaluation round (alerts, trends,
//!   health score, auto-recovery, auto-scaling), the webhook, rendering of status bodies, the
//!   Prometheus text and the dashboard.
//! - [`queue`]: per-core priority queues: classes, the request gate's turns, queue workers,
//!   retries, dead letters, hand-off between shards, the durable (PostgreSQL) job tier, and the
//!   periodic sweeps.
//! - [`server`]: start-up and graceful shutdown (after the drain delay a balancer needs).

pub mod affiliate;
pub mod app;
pub mod auth;
pub mod config;
pub mod db;
pub mod engine;
pub mod exchange;
pub mod http;
pub mod ledger;
pub mod metrics;
pub mod monitor;
pub mod queue;
pub mod server;
pub mod shard;
pub mod trading;
