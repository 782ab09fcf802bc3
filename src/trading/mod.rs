//! Trading: signals in, orders out on every subscriber's own exchange account.
//!
//! - [`signal`]: the webhook's signal (the four kinds, validity, the alert's fingerprint) and
//!   its fan-out: the signal and one order intent per active subscriber in one transaction.
//! - [`settings`]: a user's leverage, stop-loss, take-profit and size, with their bounds.
//! - [`accounts`]: subscribers' exchange keys, the secret sealed at rest.
//! - [`execute`]: each shard's executor: claims due intents, checks the per-user limits,
//!   makes the exchange calls on the I/O pool and records what came of them.
//! - [`positions`]: a user's positions and their manual close (a close intent like a close
//!   signal's).
//! - [`reconcile`]: each shard's sweep of open positions for the closes the exchange made by
//!   itself (a stop-loss or take-profit that fired), recorded at their fill and charged.
//! - [`close`]: what a closed position leads to: the commission, charged once through the
//!   ledger (a BRL user's at a recorded rate, deferred until one is recorded).
//!
//! Every figure is a setting ([`crate::config::TradingConfig`]).

pub mod accounts;
pub mod close;
pub mod execute;
pub mod positions;
pub mod reconcile;
pub mod settings;
pub mod signal;

use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::secrets::SecretsKey;
use crate::config::Config;
use crate::db::{Database, DbConn, DbError};
use crate::exchange::binance::BinanceClient;
use crate::exchange::pool::IoPool;
use crate::exchange::{
    Balance, Credentials, ExchangeClient, ExchangeError, ExchangeResult, Order, OrderRequest,
    Position,
};
use crate::queue::{Priority, ShardQueues};

/// The business's figures for signals and orders.
#[derive(Debug, Clone)]
pub struct Figures {
    pub signal_validity: Duration,
    pub intent_expiry: Duration,
    pub max_open_positions: i64,
    pub symbol_cooldown: Duration,
    pub claim_batch: i64,
    /// How often each open position is asked about ([`reconcile`]).
    pub reconcile_interval: Duration,
    /// How long a claimed intent is left to its executor before another may take it (and ask
    /// the exchange first): every call of an attempt, with room.
    pub claim_lease: Duration,
}

/// What every shard's trading shares: the exchange client, the I/O pool its calls run on,
/// the webhook's secret and the figures.
pub struct TradingShared {
    pub client: Arc<dyn ExchangeClient>,
    pub pool: IoPool,
    /// `None`: the signal webhook answers 503.
    pub webhook_secret: Option<Vec<u8>>,
    /// Whether this process executes order intents: only with a usable `EXCHANGE_BASE_URL`
    /// (a server without one takes signals and leaves their execution to others).
    pub executes: bool,
    pub figures: Figures,
}

impl TradingShared {
    /// Starts the I/O pool's threads.
    pub fn start(config: &Config) -> std::io::Result<TradingShared> {
        let t = &config.trading;
        let timeout = Duration::from_millis(t.exchange_timeout_ms);
        let (client, executes): (Arc<dyn ExchangeClient>, bool) =
            match BinanceClient::new(&t.exchange_base_url, timeout) {
                Ok(client) => (Arc::new(client), true),
                Err(reason) => {
                    log::info!(
                    "trading: EXCHANGE_BASE_URL: {reason}; this process executes no order intents"
                );
                    (Arc::new(Unconfigured(reason)), false)
                }
            };
        Ok(TradingShared {
            client,
            pool: IoPool::new(t.exchange_io_threads as usize, t.exchange_io_queue as usize)?,
            webhook_secret: t.webhook_secret(),
            executes,
            figures: Figures {
                signal_validity: Duration::from_millis(t.signal_validity_ms),
                intent_expiry: Duration::from_millis(t.order_intent_expiry_ms),
                max_open_positions: t.max_open_positions as i64,
                symbol_cooldown: Duration::from_millis(t.symbol_cooldown_ms),
                claim_batch: t.trading_claim_batch as i64,
                reconcile_interval: Duration::from_millis(t.trading_reconcile_interval_ms),
                claim_lease: timeout * 6 + Duration::from_secs(5),
            },
        })
    }
}

/// What a task of a shard's trading work runs with.
#[derive(Clone)]
pub struct TaskContext {
    pub shared: Arc<TradingShared>,
    /// Opens the exchange secrets (`None`: no `SECRETS_KEY`, so none opens).
    pub secrets: Option<SecretsKey>,
    pub database: Arc<Database>,
}

/// Runs on the shard, forever: `claim` in a write transaction (a batch of work, how many rows
/// it took), each unit of work it returns on a task of its own (`work`), at once again while
/// claims come back full, else after `every`. The executor and the reconciliation sweep.
pub fn claim_loop<W, Claim, Work, Done>(
    queues: &Rc<ShardQueues>,
    context: TaskContext,
    class: Priority,
    every: Duration,
    claim: Claim,
    work: Work,
) where
    W: Send + 'static,
    Claim: Fn(&mut DbConn, &Figures) -> Result<(usize, Vec<W>), DbError> + Copy + Send + 'static,
    Work: Fn(W, TaskContext) -> Done + 'static,
    Done: Future<Output = ()> + 'static,
{
    let runtime = queues.runtime.clone();
    let (spawner, sleeper) = (runtime.clone(), runtime.clone());
    runtime.spawn(
        class,
        Box::pin(async move {
            let mut db = context.database.client();
            let batch = context.shared.figures.claim_batch;
            loop {
                let figures = context.shared.figures.clone();
                match db.write(move |conn| claim(conn, &figures)).await {
                    Ok(written) => {
                        let (claimed, units) = written.value;
                        for unit in units {
                            spawner.spawn(class, Box::pin(work(unit, context.clone())));
                        }
                        if claimed as i64 == batch {
                            continue;
                        }
                    }
                    Err(e) => log::debug!("trading: a claim failed: {e}"),
                }
                sleeper.sleep(every).await;
            }
        }),
    );
}

/// The client when `EXCHANGE_BASE_URL` is unusable: every call is refused unsent.
struct Unconfigured(String);

impl Unconfigured {
    fn refuse<T>(&self) -> ExchangeResult<T> {
        Err(ExchangeError::Unreachable(self.0.clone()))
    }
}

impl ExchangeClient for Unconfigured {
    fn balance(&self, _: &Credentials) -> ExchangeResult<Balance> {
        self.refuse()
    }
    fn place_order(&self, _: &Credentials, _: &OrderRequest) -> ExchangeResult<Order> {
        self.refuse()
    }
    fn protect(&self, _: &Credentials, _: &OrderRequest) -> ExchangeResult<()> {
        self.refuse()
    }
    fn order_by_client_id(
        &self,
        _: &Credentials,
        _: &str,
        _: &str,
    ) -> ExchangeResult<Option<Order>> {
        self.refuse()
    }
    fn positions(&self, _: &Credentials) -> ExchangeResult<Vec<Position>> {
        self.refuse()
    }
    fn close(&self, _: &Credentials, _: &str, _: &str) -> ExchangeResult<Order> {
        self.refuse()
    }
}
