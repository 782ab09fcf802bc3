//! The factory every engine calls to build a shard's app, once per shard run.
//!
//! Built once at start-up from what every shard's app shares (the config, the monitor's
//! published snapshot, the queues' mesh, the database tier); the engine hands it the shard,
//! the generation and the runtime its queue tasks run on, and gets a ready [`ShardApp`].

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::access::{Accounts, AccountsShared, SharedAccountsCell};
use super::ShardApp;
use crate::config::Config;
use crate::db::Database;
use crate::monitor::Published;
use crate::queue::{Mesh, QueueRuntime, QueueSettings, ShardQueues};
use crate::shard::Control;

/// What every shard's app is built from.
pub struct AppFactory {
    pub config: Arc<Config>,
    pub published: Arc<ArcSwap<Published>>,
    /// The queues' channels between shards (kept across shard restarts).
    pub mesh: Arc<Mesh>,
    /// The database tier, when configured; each shard takes its own client from it.
    pub database: Option<Arc<Database>>,
    pub control: Arc<Control>,
    /// This start's name in durable job claims, `INSTANCE_ID/<nonce>`: unique across
    /// instances and restarts even where containers share a host name or a pid.
    pub instance: String,
    /// What every shard's accounts share (the password pool above all), started by the first
    /// shard built with a database.
    pub accounts: SharedAccountsCell,
}

impl AppFactory {
    /// Shard `shard`'s application for its generation `generation`. Its queues' tasks run on
    /// `runtime`; their workers (and the durable jobs' dispatcher) start here.
    pub fn new_shard_app(
        &self,
        shard: usize,
        generation: u64,
        runtime: Rc<dyn QueueRuntime>,
    ) -> ShardApp {
        let config = &self.config;
        let queues = ShardQueues::new(
            shard,
            generation,
            QueueSettings::from_config(&config.queues, config.server.debug_routes),
            runtime,
            self.mesh.clone(),
            self.control.clone(),
        );
        crate::queue::worker::start(&queues);
        let runtime = queues.runtime.clone();
        let poll_ms = config.database.durable_poll_interval_ms;
        if let Some(db) = self.database.as_ref().filter(|_| poll_ms > 0) {
            crate::queue::durable::start(
                &queues,
                db,
                Duration::from_millis(poll_ms),
                format!("{}/{shard}", self.instance),
            );
        }
        if let Some(db) = self.database.as_ref().filter(|_| shard == 0) {
            let ms = Duration::from_millis;
            crate::queue::sweeps::start(
                &queues,
                db,
                vec![
                    crate::ledger::idempotency::purge_sweep(ms(config
                        .money
                        .idempotency_purge_interval_ms)),
                    super::financial_rules::money_sweep(ms(config
                        .money_rules
                        .money_sweep_interval_ms)),
                    super::affiliate::release_sweep(
                        crate::affiliate::Settings::from_config(config).hold,
                        ms(config.affiliate.affiliate_sweep_interval_ms),
                    ),
                    super::affiliate::dashboard_sweep(ms(config
                        .affiliate
                        .affiliate_dashboard_interval_ms)),
                ],
            );
        }
        let trading_ms = config.trading.trading_poll_interval_ms;
        if let Some(db) = self.database.as_ref().filter(|_| trading_ms > 0) {
            let shared = self.accounts.get_or_init(|| {
                Arc::new(AccountsShared::start(config).expect("start the password hashing threads"))
            });
            if shared.trading.executes {
                let context = crate::trading::TaskContext {
                    shared: shared.trading.clone(),
                    secrets: shared.secrets_key.clone(),
                    database: db.clone(),
                };
                if !shared.trading.figures.reconcile_interval.is_zero() {
                    crate::trading::reconcile::start(&queues, context.clone());
                }
                crate::trading::execute::start(&queues, context, Duration::from_millis(trading_ms));
            }
        }
        ShardApp::new(
            shard,
            self.published.clone(),
            config.server.debug_routes,
            queues,
            config.queues.route_classes.as_ref(),
        )
        .with_access(
            config
                .auth
                .operator_token()
                .unwrap_or_else(|e| panic!("validated at start-up: {e}")),
            config.auth.metrics_access,
        )
        .with_database(self.database.as_ref().map(|db| db.client()))
        .with_accounts(self.database.as_ref().map(|db| {
            let shared = self.accounts.get_or_init(|| {
                // Two threads at start-up: a host that cannot start them cannot serve.
                Arc::new(AccountsShared::start(config).expect("start the password hashing threads"))
            });
            Accounts::new(shared.clone(), db.client(), runtime)
        }))
    }
}
