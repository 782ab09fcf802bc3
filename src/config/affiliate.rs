//! The affiliate settings: the share of each tier, how long a share is held before it becomes
//! available, the conversion bonus, and how often the release sweep runs.

use clap::Args;

fn basis_points() -> clap::builder::RangedI64ValueParser<i64> {
    clap::builder::RangedI64ValueParser::<i64>::new().range(0..=10_000)
}

/// Affiliates.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Affiliates")]
pub struct AffiliateConfig {
    /// An `affiliate`'s share of each referred user's profit, in basis points (150 = 1.5 %), carved out of the commission.
    #[arg(long, env = "AFFILIATE_SHARE_BP", default_value_t = 150, value_parser = basis_points())]
    pub affiliate_share_bp: i64,
    /// An `affiliate_vip`'s share, in basis points (500 = 5 %); an admin may set another per affiliate.
    #[arg(long, env = "AFFILIATE_VIP_SHARE_BP", default_value_t = 500, value_parser = basis_points())]
    pub affiliate_vip_share_bp: i64,
    /// How long a share stays pending before it becomes available (ms). Unset: until the next payout date (WITHDRAWAL_PAYOUT_DAYS).
    #[arg(long = "affiliate-hold", env = "AFFILIATE_HOLD", value_parser = super::millis_from(0))]
    pub affiliate_hold_ms: Option<u64>,
    /// Admin credit added when available commission is converted, in percent of the amount converted.
    #[arg(long, env = "AFFILIATE_CONVERSION_BONUS_PERCENT", default_value_t = 10,
          value_parser = clap::builder::RangedI64ValueParser::<i64>::new().range(0..=100))]
    pub affiliate_conversion_bonus_percent: i64,
    /// How often the sweep makes held shares available (ms); 0 turns it off.
    #[arg(long = "affiliate-sweep-interval", env = "AFFILIATE_SWEEP_INTERVAL", default_value_t = 60_000,
          value_parser = super::millis_from(0))]
    pub affiliate_sweep_interval_ms: u64,
    /// How often the affiliates' stored dashboards are rebuilt after a change (ms): the most a dashboard read without X-Min-LSN lags behind. 0: off, every read sums the dashboard up (the changes' marks pile up until it is on again).
    #[arg(long = "affiliate-dashboard-interval", env = "AFFILIATE_DASHBOARD_INTERVAL", default_value_t = 1_000,
          value_parser = super::millis_from(0))]
    pub affiliate_dashboard_interval_ms: u64,
    /// Where a campaign link's click is sent, with `ref=<code>&campaign=<slug>` added to its query.
    #[arg(long, env = "AFFILIATE_LANDING_URL", default_value = "/register")]
    pub affiliate_landing_url: String,
}
