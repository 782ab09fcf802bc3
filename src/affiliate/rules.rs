//! The affiliates' pure rules: referral codes, campaign slugs, tiers and their shares, the
//! hold before a share is available, and the conversion bonus. Integers only: shares are in
//! basis points of the profit, amounts in minor units.

use crate::ledger::commission;
use crate::ledger::rules::{percent_of, Currency};

/// The characters of a code after `CBC`: no look-alikes (no 0/O, no 1/I).
pub const CODE_ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
pub const CODE_PREFIX: &str = "CBC";
/// Characters after the prefix.
pub const CODE_LENGTH: usize = 6;

/// A code from six random bytes: `CBC` and six characters of [`CODE_ALPHABET`] (32 of them,
/// so each byte's low five bits pick one without bias).
pub fn code_from(random: [u8; CODE_LENGTH]) -> String {
    let mut code = String::with_capacity(CODE_PREFIX.len() + CODE_LENGTH);
    code.push_str(CODE_PREFIX);
    for byte in random {
        code.push(char::from(CODE_ALPHABET[usize::from(byte & 31)]));
    }
    code
}

/// A fresh random code.
pub fn new_code() -> String {
    code_from(crate::auth::token::random_bytes::<CODE_LENGTH>())
}

/// Whether `text` is a code as [`code_from`] makes them (upper case).
pub fn is_code(text: &str) -> bool {
    text.len() == CODE_PREFIX.len() + CODE_LENGTH
        && text.starts_with(CODE_PREFIX)
        && text.as_bytes()[CODE_PREFIX.len()..]
            .iter()
            .all(|b| CODE_ALPHABET.contains(b))
}

/// Whether `text` is a campaign slug: 3 to 40 of `a-z`, `0-9` and `-`, not starting with `-`.
pub fn is_slug(text: &str) -> bool {
    (3..=40).contains(&text.len())
        && !text.starts_with('-')
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// An affiliate's tier (its users' role of the same name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Affiliate,
    Vip,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Affiliate => "affiliate",
            Tier::Vip => "affiliate_vip",
        }
    }

    pub fn parse(text: &str) -> Option<Tier> {
        match text {
            "affiliate" => Some(Tier::Affiliate),
            "affiliate_vip" => Some(Tier::Vip),
            _ => None,
        }
    }
}

/// How long a share stays pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// A fixed time after the commission event (ms).
    Fixed(u64),
    /// Until the next payout date: the first of these days of the month after the event's day.
    NextPayout(Vec<u8>),
}

/// The affiliate settings handlers and the sweep read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub share_bp: i64,
    pub vip_share_bp: i64,
    pub hold: Hold,
    pub conversion_bonus_percent: i64,
    pub landing_url: String,
    /// Whether a dashboard read without `X-Min-LSN` answers the stored dashboard (the rebuild
    /// sweep runs), or every read sums the dashboard up.
    pub stored_dashboard: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            share_bp: 150,
            vip_share_bp: 500,
            hold: Hold::NextPayout(vec![5, 20]),
            conversion_bonus_percent: 10,
            landing_url: "/register".into(),
            stored_dashboard: true,
        }
    }
}

impl Settings {
    pub fn from_config(config: &crate::config::Config) -> Settings {
        let affiliate = &config.affiliate;
        Settings {
            share_bp: affiliate.affiliate_share_bp,
            vip_share_bp: affiliate.affiliate_vip_share_bp,
            hold: match affiliate.affiliate_hold_ms {
                Some(ms) => Hold::Fixed(ms),
                None => Hold::NextPayout(config.money_rules.withdrawal_payout_days.0.clone()),
            },
            conversion_bonus_percent: affiliate.affiliate_conversion_bonus_percent,
            landing_url: affiliate.affiliate_landing_url.clone(),
            stored_dashboard: affiliate.affiliate_dashboard_interval_ms > 0,
        }
    }

    /// A tier's share unless an admin set another.
    pub fn tier_share_bp(&self, tier: Tier) -> i64 {
        match tier {
            Tier::Affiliate => self.share_bp,
            Tier::Vip => self.vip_share_bp,
        }
    }
}

/// The affiliate's share of a commission event, in the commission's currency: `share_bp` of
/// the profit (converted at `fx_rate` as the commission is, rounded half up), never above the
/// commission, never below zero.
pub fn share(
    profit: i64,
    profit_currency: Currency,
    currency: Currency,
    share_bp: i64,
    fx_rate: Option<i64>,
    commission: i64,
) -> i64 {
    commission::amount(profit, profit_currency, currency, share_bp, fx_rate)
        .unwrap_or(0)
        .min(commission)
        .max(0)
}

/// The admin credit added to a conversion of `amount`: `percent` % of it, rounded down.
pub fn conversion_bonus(amount: i64, percent: i64) -> i64 {
    percent_of(amount, percent)
}

/// A campaign link's landing address: `landing` with `ref` and `campaign` added to its query.
pub fn landing(landing: &str, code: &str, slug: &str) -> String {
    let joiner = if landing.contains('?') { '&' } else { '?' };
    format!("{landing}{joiner}ref={code}&campaign={slug}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(code_from([0, 1, 2, 29, 30, 31]), "CBCABC789");
        // High bits are ignored: 32 is 0, 255 is 31.
        assert_eq!(code_from([32, 255, 64, 8, 13, 21]), "CBCA9AJPX");
        for _ in 0..100 {
            assert!(is_code(&new_code()));
        }
        for bad in [
            "CBC12345",
            "CBCABCDEFG",
            "cbcabcdef",
            "CBCABCDE0",
            "CBCABCDEI",
            "XYZABCDEF",
            "",
        ] {
            assert!(!is_code(bad), "{bad}");
        }
        assert!(is_code("CBCABCDEF"));
    }

    #[test]
    fn slugs() {
        for good in ["abc", "black-friday-2026", &"a".repeat(40)] {
            assert!(is_slug(good), "{good}");
        }
        for bad in ["ab", "-abc", "Abc", "a_b", "a b", &"a".repeat(41)] {
            assert!(!is_slug(bad), "{bad}");
        }
    }

    #[test]
    fn shares_are_carved_out_of_the_commission() {
        use Currency::*;
        let cases = [
            // 1.5 % of US$100.00 = US$1.50, commission 20 % = US$20.00.
            (10_000, Usd, Usd, 150, None, 2_000, 150),
            // VIP 5 %.
            (10_000, Usd, Usd, 500, None, 2_000, 500),
            // Never above the commission (a 2 % plan with a 5 % share).
            (10_000, Usd, Usd, 500, None, 200, 200),
            // Half up: 1.5 % of 33 cents is 0.495 -> 0; of 34 cents 0.51 -> 1.
            (33, Usd, Usd, 150, None, 7, 0),
            (34, Usd, Usd, 150, None, 7, 1),
            // Converted as the commission is: 1.5 % of US$100.00 at 5.5 = R$8.25.
            (10_000, Usd, Brl, 150, Some(5_500_000), 5_500, 825),
            // No profit, no share; no rate, no share (the charge refuses it anyway).
            (0, Usd, Usd, 150, None, 0, 0),
            (-500, Usd, Usd, 150, None, 0, 0),
            (10_000, Usd, Brl, 150, None, 5_500, 0),
        ];
        for (profit, from, to, bp, fx, commission, expected) in cases {
            let got = share(profit, from, to, bp, fx, commission);
            assert_eq!(got, expected, "{profit} {from:?}->{to:?} {bp} {commission}");
            // Platform + affiliate = commission, to the minor unit.
            assert_eq!((commission - got) + got, commission);
            assert!(commission - got >= 0);
        }
    }

    #[test]
    fn tiers_bonus_and_landing() {
        let settings = Settings::default();
        assert_eq!(settings.tier_share_bp(Tier::Affiliate), 150);
        assert_eq!(settings.tier_share_bp(Tier::Vip), 500);
        for tier in [Tier::Affiliate, Tier::Vip] {
            assert_eq!(Tier::parse(tier.as_str()), Some(tier));
        }
        assert_eq!(Tier::parse("admin"), None);
        assert_eq!(conversion_bonus(1_005, 10), 100);
        assert_eq!(conversion_bonus(9, 10), 0);
        assert_eq!(
            landing("/register", "CBCABCDEF", "promo"),
            "/register?ref=CBCABCDEF&campaign=promo"
        );
        assert_eq!(
            landing("https://x.example/?lang=pt", "CBCABCDEF", "promo"),
            "https://x.example/?lang=pt&ref=CBCABCDEF&campaign=promo"
        );
    }
}
