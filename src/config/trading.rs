//! The trading settings: the signal webhook's secret, the exchange's address and the I/O
//! pool that reaches it, and the business's figures for signals and orders.

use clap::Args;

use super::auth::SecretText;
use super::millis_from;

fn secret_text(text: &str) -> Result<SecretText, String> {
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(SecretText(text.to_string()))
}

fn count(low: u64, high: u64) -> clap::builder::RangedU64ValueParser<u64> {
    clap::builder::RangedU64ValueParser::<u64>::new().range(low..=high)
}

/// Trading.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Trading")]
pub struct TradingConfig {
    /// Shared secret a signal (TradingView alert) must carry, in its `secret` field or the `X-Signal-Secret` header; compared in constant time. Unset: the signal webhook answers 503
    #[arg(long, env = "SIGNAL_WEBHOOK_SECRET", value_parser = secret_text, hide_env_values = true)]
    pub signal_webhook_secret: Option<SecretText>,
    /// Base URL of the futures exchange API (Binance-style, plain `http://`: put a TLS-terminating proxy before the real one); tests point it at `exchange-sim`
    #[arg(
        long,
        env = "EXCHANGE_BASE_URL",
        default_value = "https://fapi.binance.com"
    )]
    pub exchange_base_url: String,
    /// How long one exchange call may take, connect and answer (ms).
    #[arg(long = "exchange-timeout", env = "EXCHANGE_TIMEOUT", default_value_t = 5_000, value_parser = millis_from(1))]
    pub exchange_timeout_ms: u64,
    /// Threads that make exchange calls (blocking sockets, never on a shard).
    #[arg(long, env = "EXCHANGE_IO_THREADS", default_value_t = 64, value_parser = count(1, 4096))]
    pub exchange_io_threads: u64,
    /// Exchange calls that may wait for a thread; beyond it an intent waits for a later round.
    #[arg(long, env = "EXCHANGE_IO_QUEUE", default_value_t = 4_096, value_parser = count(1, 1_000_000))]
    pub exchange_io_queue: u64,
    /// How often each shard looks for order intents due (ms); 0: this process executes none (nor does one without a usable EXCHANGE_BASE_URL).
    #[arg(long = "trading-poll-interval", env = "TRADING_POLL_INTERVAL", default_value_t = 50, value_parser = millis_from(0))]
    pub trading_poll_interval_ms: u64,
    /// Order intents a shard claims at once.
    #[arg(long, env = "TRADING_CLAIM_BATCH", default_value_t = 64, value_parser = count(1, 10_000))]
    pub trading_claim_batch: u64,
    /// How often each shard asks the exchange about open positions for the closes it made by itself, a stop-loss or take-profit that fired (ms; each position about once an interval, `TRADING_CLAIM_BATCH` at a time); 0: this process asks about none.
    #[arg(long = "trading-reconcile-interval", env = "TRADING_RECONCILE_INTERVAL", default_value_t = 10_000, value_parser = millis_from(0))]
    pub trading_reconcile_interval_ms: u64,
    /// How old a signal may be when it arrives (ms): older answers 422.
    #[arg(long = "signal-validity", env = "SIGNAL_VALIDITY", default_value_t = 30_000, value_parser = millis_from(1))]
    pub signal_validity_ms: u64,
    /// How old an order intent may be and still be placed (ms); older: expired.
    #[arg(long = "order-intent-expiry", env = "ORDER_INTENT_EXPIRY", default_value_t = 120_000, value_parser = millis_from(1))]
    pub order_intent_expiry_ms: u64,
    /// Most positions a user may have open at once.
    #[arg(long, env = "MAX_OPEN_POSITIONS", default_value_t = 2, value_parser = count(1, 100))]
    pub max_open_positions: u64,
    /// How long a symbol stays locked for a user after their position on it closed (ms).
    #[arg(long = "symbol-cooldown", env = "SYMBOL_COOLDOWN", default_value_t = 7_200_000, value_parser = millis_from(0))]
    pub symbol_cooldown_ms: u64,
}

impl TradingConfig {
    /// The webhook's secret, as bytes.
    pub fn webhook_secret(&self) -> Option<Vec<u8>> {
        self.signal_webhook_secret
            .as_ref()
            .map(|s| s.0.as_bytes().to_vec())
    }
}
