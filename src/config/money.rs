//! The money settings: the payment provider's webhook secret and the recharge figures, in
//! minor units (centavos, cents). Defaults are the business's (`ledger::rules::Figures`).

use clap::Args;

use super::auth::SecretText;
use crate::ledger::rules::{Figures, MAX_AMOUNT};

fn secret_text(text: &str) -> Result<SecretText, String> {
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(SecretText(text.to_string()))
}

fn minor_units() -> clap::builder::RangedI64ValueParser<i64> {
    clap::builder::RangedI64ValueParser::<i64>::new().range(1..=MAX_AMOUNT)
}

/// Money.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Money")]
pub struct MoneyConfig {
    /// Shared secret of the payment provider's webhook (`Payment-Signature: t=...,v1=<HMAC-SHA256>`). Unset: the webhook answers 503 and no recharge is credited
    #[arg(long, env = "PAYMENT_WEBHOOK_SECRET", value_parser = secret_text, hide_env_values = true)]
    pub payment_webhook_secret: Option<SecretText>,
    /// Smallest recharge in BRL (centavos).
    #[arg(long, env = "RECHARGE_MINIMUM_BRL", default_value_t = 15_000, value_parser = minor_units())]
    pub recharge_minimum_brl: i64,
    /// Smallest recharge in USD (cents).
    #[arg(long, env = "RECHARGE_MINIMUM_USD", default_value_t = 3_000, value_parser = minor_units())]
    pub recharge_minimum_usd: i64,
    /// A recharge of at least this many centavos earns the bonus (BRL).
    #[arg(long, env = "RECHARGE_BONUS_THRESHOLD_BRL", default_value_t = 100_000, value_parser = minor_units())]
    pub recharge_bonus_threshold_brl: i64,
    /// A recharge of at least this many cents earns the bonus (USD).
    #[arg(long, env = "RECHARGE_BONUS_THRESHOLD_USD", default_value_t = 30_000, value_parser = minor_units())]
    pub recharge_bonus_threshold_usd: i64,
    /// The bonus, as admin credit, in percent of the recharge (rounded down to the minor unit).
    #[arg(long, env = "RECHARGE_BONUS_PERCENT", default_value_t = 10,
          value_parser = clap::builder::RangedI64ValueParser::<i64>::new().range(0..=100))]
    pub recharge_bonus_percent: i64,
    /// How often idempotency records older than 24 h are purged (ms); 0: never.
    #[arg(long = "idempotency-purge-interval", env = "IDEMPOTENCY_PURGE_INTERVAL", default_value_t = 60_000, value_parser = super::millis_from(0))]
    pub idempotency_purge_interval_ms: u64,
}

impl MoneyConfig {
    /// The figures the ledger's rules use: these settings over the defaults.
    pub fn figures(&self) -> Figures {
        Figures {
            recharge_minimum_brl: self.recharge_minimum_brl,
            recharge_minimum_usd: self.recharge_minimum_usd,
            bonus_threshold_brl: self.recharge_bonus_threshold_brl,
            bonus_threshold_usd: self.recharge_bonus_threshold_usd,
            bonus_percent: self.recharge_bonus_percent,
            ..Figures::default()
        }
    }

    /// The webhook's secret, as bytes.
    pub fn webhook_secret(&self) -> Option<Vec<u8>> {
        self.payment_webhook_secret
            .as_ref()
            .map(|s| s.0.as_bytes().to_vec())
    }
}
