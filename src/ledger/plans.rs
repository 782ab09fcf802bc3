//! Plans: monthly (R$297 / US$50 a month, 7 days' trial, 10 % commission) and prepaid (20 %
//! commission, nothing to pay up front). The rules and their SQL.
//!
//! A user with no plan, or whose monthly plan's paid period ended, pays the prepaid rate.
//! The first monthly subscription of a user starts with the trial and charges nothing; a later
//! one charges the month's price from the user's real balance at once (a percent coupon the
//! user redeemed and has not used yet takes its share off).

use serde::Deserialize;
use serde_json::{json, Value};

use super::coupons;
use super::per_currency::{Currency, PerCurrency};
use super::rules::Kind;
use super::store::{self, NewTransfer};
use crate::db::{DbConn, DbError, Row};

/// Basis points of 100 %.
pub const FULL_BP: i64 = 10_000;
/// The monthly plan's price.
pub const MONTHLY_PRICE: PerCurrency = PerCurrency {
    brl: 29_700,
    usd: 5_000,
};
pub const TRIAL_DAYS: i32 = 7;
/// A paid month.
pub const PERIOD_DAYS: i32 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    Monthly,
    Prepaid,
}

impl Plan {
    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Monthly => "monthly",
            Plan::Prepaid => "prepaid",
        }
    }

    pub fn parse(text: &str) -> Option<Plan> {
        match text {
            "monthly" => Some(Plan::Monthly),
            "prepaid" => Some(Plan::Prepaid),
            _ => None,
        }
    }

    /// The share of a profit taken as commission, in basis points.
    pub const fn commission_bp(self) -> i64 {
        match self {
            Plan::Monthly => 1_000,
            Plan::Prepaid => 2_000,
        }
    }

    /// What it costs up front in `currency`.
    pub const fn price(self, currency: Currency) -> i64 {
        match self {
            Plan::Monthly => MONTHLY_PRICE.get(currency),
            Plan::Prepaid => 0,
        }
    }
}

/// The plan whose rate applies: a monthly plan while paid (or in trial), else prepaid.
pub fn effective(plan: Option<Plan>, monthly_paid: bool) -> Plan {
    match plan {
        Some(Plan::Monthly) if monthly_paid => Plan::Monthly,
        _ => Plan::Prepaid,
    }
}

/// What a subscription charges now and for how many days it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    pub amount: i64,
    pub days: i32,
    pub trial: bool,
}

/// A subscription to `plan` by a user of `currency`; `trial_used`: the user had a monthly
/// trial already; `discount_percent`: an unused percent coupon (0: none).
pub fn subscription_charge(
    plan: Plan,
    currency: Currency,
    trial_used: bool,
    discount_percent: i32,
) -> Charge {
    match plan {
        Plan::Prepaid => Charge {
            amount: 0,
            days: 0,
            trial: false,
        },
        Plan::Monthly if !trial_used => Charge {
            amount: 0,
            days: TRIAL_DAYS,
            trial: true,
        },
        Plan::Monthly => {
            let price = plan.price(currency);
            let off = price * i64::from(discount_percent.clamp(0, 100)) / 100;
            Charge {
                amount: price - off,
                days: PERIOD_DAYS,
                trial: false,
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// SQL: each function runs on a connection inside one `db().write` (or read) closure.

/// A user's plan as the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPlan {
    pub plan: Option<Plan>,
    pub trial_used: bool,
    /// End of the trial or the paid month (monthly).
    pub paid_until: Option<String>,
    /// Whether that end is still ahead.
    pub paid: bool,
}

impl UserPlan {
    /// The plan whose commission rate applies now.
    pub fn effective(&self) -> Plan {
        effective(self.plan, self.paid)
    }

    pub fn json(&self, currency: Currency, trading_blocked: bool) -> Value {
        let effective = self.effective();
        json!({
            "plan": self.plan.map(Plan::as_str),
            "effective_plan": effective.as_str(),
            "commission_rate_bp": effective.commission_bp(),
            "trial_used": self.trial_used,
            "paid_until": self.paid_until,
            "currency": currency.as_str(),
            "trading_blocked": trading_blocked,
        })
    }
}

const SELECT_PLAN: &str = "SELECT plan, trial_used, \
             to_char(paid_until AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
             coalesce(paid_until > now(), false) \
         FROM user_plans WHERE user_id = $1";

fn plan_of(row: Option<&Row>) -> UserPlan {
    match row {
        None => UserPlan {
            plan: None,
            trial_used: false,
            paid_until: None,
            paid: false,
        },
        Some(row) => UserPlan {
            plan: Plan::parse(row.get(0)),
            trial_used: row.get(1),
            paid_until: row.get(2),
            paid: row.get(3),
        },
    }
}

/// The user's plan (none chosen: `plan` is `None`, the prepaid rate applies).
pub fn user_plan(conn: &mut DbConn, user_id: i64) -> Result<UserPlan, DbError> {
    Ok(plan_of(conn.query_opt(SELECT_PLAN, &[&user_id])?.as_ref()))
}

/// The plans on offer, priced in `currency`.
pub fn catalogue(currency: Currency) -> Value {
    json!([
        {
            "plan": "monthly",
            "price": Plan::Monthly.price(currency),
            "currency": currency.as_str(),
            "period_days": PERIOD_DAYS,
            "trial_days": TRIAL_DAYS,
            "commission_rate_bp": Plan::Monthly.commission_bp(),
        },
        {
            "plan": "prepaid",
            "price": 0,
            "currency": currency.as_str(),
            "commission_rate_bp": Plan::Prepaid.commission_bp(),
        },
    ])
}

/// Why a subscription is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    AlreadySubscribed,
    InsufficientFunds,
}

impl Refused {
    pub fn describe(self) -> (u16, &'static str, &'static str) {
        match self {
            Refused::AlreadySubscribed => (
                409,
                "already_subscribed",
                "the monthly plan is already running; subscribe again once its period ends",
            ),
            Refused::InsufficientFunds => (
                422,
                "insufficient_funds",
                "the real balance does not cover the plan's price",
            ),
        }
    }
}

/// Subscribes the user to `plan`: a monthly plan starts with its trial once, then charges
/// the month from the real balance (less an unused percent coupon). Its row is locked first,
/// so concurrent subscriptions of one user take turns.
pub fn subscribe(
    conn: &mut DbConn,
    user_id: i64,
    plan: Plan,
) -> Result<Result<(UserPlan, Charge, Currency), Refused>, DbError> {
    let currency = store::user_currency(conn, user_id)?
        .ok_or_else(|| DbError::Query("plans: the caller is no user".into()))?;
    // The user's real account row is the turnstile: concurrent subscriptions take turns.
    let accounts =
        store::open_user_accounts_locking(conn, user_id, currency, &[Kind::Real])?.accounts;
    let current = plan_of(conn.query_opt(SELECT_PLAN, &[&user_id])?.as_ref());
    if plan == Plan::Monthly && current.plan == Some(Plan::Monthly) && current.paid {
        return Ok(Err(Refused::AlreadySubscribed));
    }
    let discount = if plan == Plan::Monthly && current.trial_used {
        coupons::unused_discount(conn, user_id)?
    } else {
        None
    };
    let charge = subscription_charge(
        plan,
        currency,
        current.trial_used,
        discount.as_ref().map_or(0, |(_, p)| *p),
    );
    if charge.amount > 0 {
        let revenue = store::system_account(conn, Kind::Revenue, currency)?;
        let paid = store::transfer(
            conn,
            &NewTransfer {
                debit: accounts.real,
                credit: revenue,
                amount: charge.amount,
                code: "plan_monthly",
                group: None,
                metadata: json!({
                    "plan": plan.as_str(),
                    "coupon": discount.as_ref().map(|(code, _)| code),
                }),
            },
        )?;
        if paid.is_err() {
            return Ok(Err(Refused::InsufficientFunds));
        }
    }
    if let Some((code, _)) = &discount {
        coupons::use_discount(conn, user_id, code)?;
    }
    let row = conn.query_one(
        "INSERT INTO user_plans AS p (user_id, plan, trial_used, paid_until) \
         VALUES ($1, $2, $3, CASE WHEN $4::integer > 0 \
                                  THEN now() + $4::integer * interval '1 day' END) \
         ON CONFLICT (user_id) DO UPDATE \
         SET plan = EXCLUDED.plan, trial_used = p.trial_used OR EXCLUDED.trial_used, \
             paid_until = EXCLUDED.paid_until, subscribed_at = now() \
         RETURNING plan, trial_used, \
             to_char(paid_until AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
             coalesce(paid_until > now(), false)",
        &[
            &user_id,
            &plan.as_str(),
            &(plan == Plan::Monthly),
            &charge.days,
        ],
    )?;
    Ok(Ok((plan_of(Some(&row)), charge, currency)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_prices() {
        assert_eq!(Plan::Monthly.commission_bp(), 1_000);
        assert_eq!(Plan::Prepaid.commission_bp(), 2_000);
        assert_eq!(Plan::Monthly.price(Currency::Brl), 29_700);
        assert_eq!(Plan::Monthly.price(Currency::Usd), 5_000);
        let cases = [
            (None, false, Plan::Prepaid),
            (None, true, Plan::Prepaid),
            (Some(Plan::Monthly), true, Plan::Monthly),
            (Some(Plan::Monthly), false, Plan::Prepaid),
            (Some(Plan::Prepaid), true, Plan::Prepaid),
        ];
        for (plan, paid, expected) in cases {
            assert_eq!(effective(plan, paid), expected, "{plan:?} {paid}");
        }
    }

    #[test]
    fn charges() {
        let cases = [
            (
                Plan::Monthly,
                Currency::Brl,
                false,
                0,
                (0, TRIAL_DAYS, true),
            ),
            (
                Plan::Monthly,
                Currency::Brl,
                false,
                50,
                (0, TRIAL_DAYS, true),
            ),
            (Plan::Monthly, Currency::Brl, true, 0, (29_700, 30, false)),
            (Plan::Monthly, Currency::Usd, true, 0, (5_000, 30, false)),
            (Plan::Monthly, Currency::Brl, true, 10, (26_730, 30, false)),
            (Plan::Monthly, Currency::Usd, true, 33, (3_350, 30, false)),
            (Plan::Monthly, Currency::Usd, true, 100, (0, 30, false)),
            (Plan::Prepaid, Currency::Brl, true, 10, (0, 0, false)),
        ];
        for (plan, currency, trial_used, discount, (amount, days, trial)) in cases {
            assert_eq!(
                subscription_charge(plan, currency, trial_used, discount),
                Charge {
                    amount,
                    days,
                    trial
                },
                "{plan:?} {currency:?} {trial_used} {discount}"
            );
        }
    }
}
