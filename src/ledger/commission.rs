//! The commission charge on a closed position: the rules (only on profit, the plan's rate,
//! the conversion into the user's currency at a recorded rate, which balances pay and what
//! becomes debt) and their SQL.
//!
//! Charged from the user's `real` balance first, then from `admin_credit`: the money the
//! user can withdraw is the platform's first claim, and promotional credit, which expires
//! anyway, pays only what real money cannot. What neither covers becomes debt, and a user
//! with debt is blocked from trading until a recharge pays it. Each position is charged once
//! (its id is unique among charges).

use serde_json::{json, Value};

use super::per_currency::Currency;
use super::plans::{self, FULL_BP};
use super::rules::Kind;
use super::store::{self, NewTransfer};
use crate::db::{DbConn, DbError};

/// A rate's fixed-point scale: six decimals (`5.123456` is 5_123_456).
pub const RATE_SCALE: i64 = 1_000_000;

/// Reads an exchange rate given as a decimal string (`"5.1234"`, at most six decimals) or a
/// whole number, into [`RATE_SCALE`] units. Never a JSON float: money is never a float here.
pub fn parse_rate(value: &Value) -> Option<i64> {
    let rate = match value {
        Value::Number(n) if n.is_u64() => n.as_u64()?.checked_mul(RATE_SCALE as u64)? as i64,
        Value::String(text) => {
            let (whole, fraction) = text.split_once('.').unwrap_or((text, "0"));
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            if !digits(whole) || !digits(fraction) || fraction.len() > 6 {
                return None;
            }
            let whole: i64 = whole.parse().ok()?;
            let fraction: i64 = format!("{fraction:0<6}").parse().ok()?;
            whole.checked_mul(RATE_SCALE)?.checked_add(fraction)?
        }
        _ => return None,
    };
    (rate > 0).then_some(rate)
}

/// A rate in [`RATE_SCALE`] units as its decimal text (`5123456` is `"5.123456"`).
pub fn rate_text(rate: i64) -> String {
    format!("{}.{:06}", rate / RATE_SCALE, rate % RATE_SCALE)
}

/// The commission on `profit` (minor units of `profit_currency`) at `rate_bp`, in the user's
/// currency: converted at `fx_rate` (user currency per profit currency, [`RATE_SCALE`] units)
/// when the two differ. Rounded half up to the minor unit. `None` when the currencies differ and
/// no rate is given, or the figure overflows.
pub fn amount(
    profit: i64,
    profit_currency: Currency,
    user_currency: Currency,
    rate_bp: i64,
    fx_rate: Option<i64>,
) -> Option<i64> {
    if profit <= 0 {
        return Some(0);
    }
    let fx = if profit_currency == user_currency {
        RATE_SCALE
    } else {
        fx_rate?
    };
    let numerator = i128::from(profit) * i128::from(rate_bp) * i128::from(fx);
    let denominator = i128::from(FULL_BP) * i128::from(RATE_SCALE);
    i64::try_from((numerator + denominator / 2) / denominator).ok()
}

/// How a commission is paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Split {
    pub from_real: i64,
    pub from_admin_credit: i64,
    pub to_debt: i64,
}

/// Splits `commission` over the available `real` and `admin_credit` balances, in that order;
/// the rest is debt.
pub fn split(commission: i64, real: i64, admin_credit: i64) -> Split {
    let from_real = commission.min(real.max(0));
    let from_admin_credit = (commission - from_real).min(admin_credit.max(0));
    Split {
        from_real,
        from_admin_credit,
        to_debt: commission - from_real - from_admin_credit,
    }
}

// ------------------------------------------------------------------------------------------
// SQL: runs on a connection inside one `db().write` closure (one savepoint), the trading
// side's or the operator route's.

/// A closed position's profit to charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub user_id: i64,
    pub position_id: String,
    /// Minor units of `profit_currency`; zero or less charges nothing.
    pub profit: i64,
    pub profit_currency: Currency,
    /// User currency per profit currency, [`RATE_SCALE`] units; needed when they differ.
    pub fx_rate: Option<i64>,
}

/// Why a charge is refused (nothing changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    UnknownUser,
    /// The profit is in another currency than the user's and no rate came with it.
    RateRequired,
    /// This position was charged already.
    AlreadyCharged,
}

impl Refused {
    pub fn describe(self) -> (u16, &'static str, &'static str) {
        match self {
            Refused::UnknownUser => (404, "user_not_found", "no such user"),
            Refused::RateRequired => (
                422,
                "fx_rate_required",
                "the profit is in another currency than the user's: send fx_rate (user currency per profit currency, a decimal string)",
            ),
            Refused::AlreadyCharged => (
                409,
                "commission_already_charged",
                "this position's commission was charged already",
            ),
        }
    }
}

/// A charge made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charged {
    pub currency: Currency,
    pub rate_bp: i64,
    pub commission: i64,
    pub split: Split,
    /// The user owes something now: trading is blocked until a recharge pays it.
    pub trading_blocked: bool,
    /// The referrer's share, carved out of `commission` in the same group (0: none).
    pub affiliate_share: i64,
}

impl Charged {
    pub fn json(&self, position: &Position) -> Value {
        json!({
            "position_id": position.position_id,
            "profit": position.profit,
            "profit_currency": position.profit_currency.as_str(),
            "fx_rate": position.fx_rate.filter(|_| position.profit_currency != self.currency).map(rate_text),
            "commission_rate_bp": self.rate_bp,
            "commission": self.commission,
            "currency": self.currency.as_str(),
            "from_real": self.split.from_real,
            "from_admin_credit": self.split.from_admin_credit,
            "to_debt": self.split.to_debt,
            "trading_blocked": self.trading_blocked,
            "affiliate_share": self.affiliate_share,
        })
    }
}

/// Claims the position: a second charge of it, concurrent or later, finds the row and does
/// nothing (a concurrent one waits for this transaction, then finds it).
const CLAIM: &str = "INSERT INTO commission_charges (position_id, user_id, profit, \
         profit_currency, fx_rate, rate_bp, currency, commission, from_real, from_admin_credit, \
         to_debt) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
     ON CONFLICT (position_id) DO NOTHING RETURNING 1";

const BLOCKED: &str = concat!("SELECT ", store::owes_debt_sql!("$1"));

/// Whether the user's trading is blocked: they owe debt in some currency.
pub fn trading_blocked(conn: &mut DbConn, user_id: i64) -> Result<bool, DbError> {
    Ok(conn.query_one(BLOCKED, &[&user_id])?.get(0))
}

/// Charges a closed position's commission once: see the module's note. Locks the user's
/// real, then admin credit, then debt rows (the order every flow here takes them in).
pub fn charge(conn: &mut DbConn, position: &Position) -> Result<Result<Charged, Refused>, DbError> {
    let Some((currency, referrer)) = crate::affiliate::store::payer(conn, position.user_id)? else {
        return Ok(Err(Refused::UnknownUser));
    };
    let rate_bp = plans::user_plan(conn, position.user_id)?
        .effective()
        .commission_bp();
    let Some(commission) = amount(
        position.profit,
        position.profit_currency,
        currency,
        rate_bp,
        position.fx_rate,
    ) else {
        return Ok(Err(Refused::RateRequired));
    };
    let locked = store::open_user_accounts_locking(
        conn,
        position.user_id,
        currency,
        &[Kind::Real, Kind::AdminCredit],
    )?;
    let accounts = locked.accounts;
    let (real, real_held) = locked.figures(Kind::Real)?;
    let (credit, credit_held) = locked.figures(Kind::AdminCredit)?;
    let split = split(commission, real - real_held, credit - credit_held);
    let fx = position
        .fx_rate
        .filter(|_| position.profit_currency != currency);
    let claimed = conn.query(
        CLAIM,
        &[
            &position.position_id,
            &position.user_id,
            &position.profit,
            &position.profit_currency.as_str(),
            &fx,
            &(rate_bp as i32),
            &currency.as_str(),
            &commission,
            &split.from_real,
            &split.from_admin_credit,
            &split.to_debt,
        ],
    )?;
    if claimed.is_empty() {
        return Ok(Err(Refused::AlreadyCharged));
    }
    let revenue = store::system_account(conn, Kind::Revenue, currency)?;
    let metadata = json!({
        "position_id": position.position_id,
        "profit": position.profit,
        "profit_currency": position.profit_currency.as_str(),
        "fx_rate": fx.map(rate_text),
        "commission_rate_bp": rate_bp,
    });
    let mut group = None;
    for (from, amount, code) in [
        (accounts.real, split.from_real, "commission"),
        (accounts.admin_credit, split.from_admin_credit, "commission"),
        (accounts.debt, split.to_debt, "commission_debt"),
    ] {
        if amount == 0 {
            continue;
        }
        let made = store::transfer(
            conn,
            &NewTransfer {
                debit: from,
                credit: revenue,
                amount,
                code,
                group,
                metadata: metadata.clone(),
            },
        )?
        .map_err(|r| DbError::Query(format!("a covered commission was refused: {r:?}")))?;
        group.get_or_insert(made.group_id);
    }
    // The referrer's share, in the charge's group: platform + affiliate = commission. Its
    // statement also says whether the payer now owes debt, which saves the referred charge
    // the round trip of asking on its own.
    let share = match (group, referrer) {
        (Some(group), Some(referrer)) => crate::affiliate::store::share(
            conn,
            &crate::affiliate::store::CommissionEvent {
                position_id: &position.position_id,
                user_id: position.user_id,
                currency,
                profit: position.profit,
                profit_currency: position.profit_currency,
                fx_rate: position.fx_rate,
                commission,
                group,
            },
            &referrer,
        )?,
        _ => None,
    };
    let (affiliate_share, blocked) = match share {
        Some(share) => (share.amount, share.payer_owes_debt),
        None => (0, trading_blocked(conn, position.user_id)?),
    };
    Ok(Ok(Charged {
        currency,
        rate_bp,
        commission,
        split,
        trading_blocked: blocked,
        affiliate_share,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rates() {
        let cases = [
            (json!("5.1234"), Some(5_123_400)),
            (json!("5"), Some(5_000_000)),
            (json!(5), Some(5_000_000)),
            (json!("0.000001"), Some(1)),
            (json!("5.1234567"), None),
            (json!(5.12), None),
            (json!("-5"), None),
            (json!("0"), None),
            (json!(".5"), None),
            (json!("5."), None),
            (json!("5,1"), None),
            (json!(null), None),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_rate(&value), expected, "{value}");
        }
        assert_eq!(rate_text(5_123_400), "5.123400");
    }

    #[test]
    fn amounts() {
        use Currency::*;
        let cases = [
            // 20 % of US$100.00 for a US user.
            (10_000, Usd, Usd, 2_000, None, Some(2_000)),
            // 10 % of US$100.00 at 5.5 BRL/USD for a BR user: R$55.00.
            (10_000, Usd, Brl, 1_000, Some(5_500_000), Some(5_500)),
            // No rate for a conversion.
            (10_000, Usd, Brl, 1_000, None, None),
            // Only on profit.
            (0, Usd, Usd, 2_000, None, Some(0)),
            (-500, Usd, Brl, 2_000, Some(5_000_000), Some(0)),
            // Half up: 20 % of 3 cents is 0.6 -> 1; of 2 cents 0.4 -> 0.
            (3, Usd, Usd, 2_000, None, Some(1)),
            (2, Usd, Usd, 2_000, None, Some(0)),
            // 10 % of US$0.33 at 5.123456: 16.907 centavos -> 17.
            (33, Usd, Brl, 1_000, Some(5_123_456), Some(17)),
        ];
        for (profit, from, to, bp, fx, expected) in cases {
            assert_eq!(
                amount(profit, from, to, bp, fx),
                expected,
                "{profit} {from:?}->{to:?} {bp} {fx:?}"
            );
        }
    }

    #[test]
    fn splits() {
        let cases = [
            (1_000, 5_000, 0, (1_000, 0, 0)),
            (1_000, 400, 5_000, (400, 600, 0)),
            (1_000, 400, 100, (400, 100, 500)),
            (1_000, 0, 0, (0, 0, 1_000)),
            (0, 10, 10, (0, 0, 0)),
        ];
        for (commission, real, credit, (r, a, d)) in cases {
            let got = split(commission, real, credit);
            assert_eq!(
                got,
                Split {
                    from_real: r,
                    from_admin_credit: a,
                    to_debt: d
                },
                "{commission} {real} {credit}"
            );
            assert_eq!(r + a + d, commission);
        }
    }
}
