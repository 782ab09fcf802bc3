//! The financial rules' settings: who approves a withdrawal and when it is paid, how long a
//! coupon's credit lasts, and how often the money sweep runs.

use clap::Args;

use crate::ledger::per_currency::PerCurrency;
use crate::ledger::withdrawals::WithdrawalRules;

/// Longest coupon credit lifetime: a year and a day, in milliseconds.
const MAX_CREDIT_TTL_MS: u64 = 366 * 86_400_000;

fn per_currency(text: &str) -> Result<PerCurrency, String> {
    PerCurrency::parse(text)
}

/// Days of the month, 1 to 31, comma-separated.
fn payout_days(text: &str) -> Result<PayoutDays, String> {
    let mut days = Vec::new();
    for part in text.split(',') {
        let day: u8 = part
            .trim()
            .parse()
            .ok()
            .filter(|d| (1..=31).contains(d))
            .ok_or_else(|| format!("{part:?} is not a day of the month (1 to 31)"))?;
        if !days.contains(&day) {
            days.push(day);
        }
    }
    days.sort_unstable();
    Ok(PayoutDays(days))
}

/// The days of the month withdrawals are paid on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayoutDays(pub Vec<u8>);

/// Withdrawals, coupons and plans.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Withdrawals, coupons and plans")]
pub struct MoneyRulesConfig {
    /// Withdrawals below this (minor units per currency) are approved at once, with no admin; 0 for never.
    #[arg(long, env = "WITHDRAWAL_AUTO_APPROVE_BELOW", default_value = "BRL:0,USD:0", value_parser = per_currency)]
    pub withdrawal_auto_approve_below: PerCurrency,
    /// Withdrawals above this (minor units per currency) need two different admins' approvals.
    #[arg(long, env = "WITHDRAWAL_FOUR_EYES_ABOVE", default_value = "BRL:1000000,USD:200000", value_parser = per_currency)]
    pub withdrawal_four_eyes_above: PerCurrency,
    /// Days of the month approved withdrawals are paid on (comma-separated).
    #[arg(long, env = "WITHDRAWAL_PAYOUT_DAYS", default_value = "5,20", value_parser = payout_days)]
    pub withdrawal_payout_days: PayoutDays,
    /// How long a coupon's admin credit lasts after its grant before the sweep takes back what is left (ms; 30 days).
    #[arg(long = "coupon-credit-ttl", env = "COUPON_CREDIT_TTL", default_value_t = 2_592_000_000,
          value_parser = clap::builder::RangedU64ValueParser::<u64>::new().range(1..=MAX_CREDIT_TTL_MS))]
    pub coupon_credit_ttl_ms: u64,
    /// How often the money sweep takes back expired coupon credit (ms); 0 turns it off.
    #[arg(long = "money-sweep-interval", env = "MONEY_SWEEP_INTERVAL", default_value_t = 60_000,
          value_parser = super::millis_from(0))]
    pub money_sweep_interval_ms: u64,
}

impl MoneyRulesConfig {
    pub fn withdrawal_rules(&self) -> WithdrawalRules {
        WithdrawalRules {
            auto_approve_below: self.withdrawal_auto_approve_below,
            four_eyes_above: self.withdrawal_four_eyes_above,
            payout_days: self.withdrawal_payout_days.0.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payout_days_parse() {
        assert_eq!(payout_days("20, 5,5"), Ok(PayoutDays(vec![5, 20])));
        for bad in ["0", "32", "5,x", ""] {
            assert!(payout_days(bad).is_err(), "{bad}");
        }
    }
}
