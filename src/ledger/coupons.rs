//! Coupons: admins make them, users redeem them. The rules (codes, tiers, limits) and their
//! SQL.
//!
//! A fixed coupon credits the user's `admin_credit` from `promotions` in the user's currency;
//! that credit expires [`crate::config`]'s `COUPON_CREDIT_TTL` after the grant (30 days), when the
//! sweep moves what is left of it back to `promotions`. A percent coupon is a discount on the
//! next plan payment. A user redeems a coupon once (a unique row), a coupon is never used past
//! its maximum (a guarded update on its count), never after it expires; each use keeps the
//! client's address and User-Agent.

use serde::Deserialize;
use serde_json::{json, Value};

use super::per_currency::{Currency, PerCurrency};
use super::rules::Kind;
use super::store::{self, NewTransfer};
use crate::db::{DbConn, DbError};

/// How long a coupon is valid unless its maker says otherwise.
pub const DEFAULT_VALID_DAYS: u32 = 30;
const MAX_VALID_DAYS: u32 = 366;
/// Most uses one coupon may allow.
const MAX_USES: i32 = 1_000_000;

/// The fixed amounts of the original tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Tier {
    Basic,
    Premium,
    Vip,
}

impl Tier {
    pub const fn amounts(self) -> PerCurrency {
        match self {
            Tier::Basic => PerCurrency {
                brl: 20_000,
                usd: 3_500,
            },
            Tier::Premium => PerCurrency {
                brl: 50_000,
                usd: 10_000,
            },
            Tier::Vip => PerCurrency {
                brl: 100_000,
                usd: 20_000,
            },
        }
    }
}

/// `amounts` as the body gives them: `{"BRL": 20000, "USD": 3500}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Amounts {
    #[serde(rename = "BRL")]
    pub brl: i64,
    #[serde(rename = "USD")]
    pub usd: i64,
}

/// `POST coupons`' body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CouponForm {
    pub code: String,
    pub kind: String,
    #[serde(default)]
    pub tier: Option<Tier>,
    #[serde(default)]
    pub amounts: Option<Amounts>,
    #[serde(default)]
    pub percent: Option<i32>,
    pub max_uses: i32,
    #[serde(default)]
    pub expires_in_days: Option<u32>,
}

/// What a coupon gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Benefit {
    /// Admin credit, by the user's currency.
    Credit(PerCurrency),
    /// A discount on the next plan payment, 1 to 100 %.
    Percent(i32),
}

/// A checked new coupon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCoupon {
    pub code: String,
    pub benefit: Benefit,
    pub max_uses: i32,
    pub valid_days: u32,
}

/// Codes are 3 to 32 of `A-Z 0-9 _ -`, kept upper-case.
pub fn normalize_code(code: &str) -> Option<String> {
    let code = code.trim().to_ascii_uppercase();
    let ok = (3..=32).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    ok.then_some(code)
}

/// Checks a new coupon: the message says what is wrong.
pub fn check_new(form: &CouponForm) -> Result<NewCoupon, &'static str> {
    let code = normalize_code(&form.code).ok_or("code must be 3 to 32 of A-Z, 0-9, _ and -")?;
    let benefit = match (form.kind.as_str(), form.tier, form.amounts, form.percent) {
        ("fixed", Some(tier), None, None) => Benefit::Credit(tier.amounts()),
        ("fixed", None, Some(a), None) if a.brl > 0 && a.usd > 0 => {
            Benefit::Credit(PerCurrency {
                brl: a.brl,
                usd: a.usd,
            })
        }
        ("percent", None, None, Some(p)) if (1..=100).contains(&p) => Benefit::Percent(p),
        ("fixed", ..) => {
            return Err("a fixed coupon has a tier (BASIC, PREMIUM, VIP) or positive amounts {BRL, USD}, not both")
        }
        ("percent", ..) => return Err("a percent coupon has a percent from 1 to 100 and nothing else"),
        _ => return Err("kind is fixed or percent"),
    };
    if !(1..=MAX_USES).contains(&form.max_uses) {
        return Err("max_uses must be from 1 to 1000000");
    }
    let valid_days = form.expires_in_days.unwrap_or(DEFAULT_VALID_DAYS);
    if !(1..=MAX_VALID_DAYS).contains(&valid_days) {
        return Err("expires_in_days must be from 1 to 366");
    }
    Ok(NewCoupon {
        code,
        benefit,
        max_uses: form.max_uses,
        valid_days,
    })
}

/// Why a redemption is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Unknown,
    Expired,
    Exhausted,
    AlreadyRedeemed,
}

impl Refused {
    /// (HTTP status, code, message).
    pub fn describe(self) -> (u16, &'static str, &'static str) {
        match self {
            Refused::Unknown => (404, "coupon_not_found", "no such coupon"),
            Refused::Expired => (422, "coupon_expired", "this coupon has expired"),
            Refused::Exhausted => (
                422,
                "coupon_exhausted",
                "this coupon has been used its maximum number of times",
            ),
            Refused::AlreadyRedeemed => (
                409,
                "coupon_already_redeemed",
                "you have already redeemed this coupon",
            ),
        }
    }
}

/// Why a coupon is refused, from what its row says, (expired, exhausted) (`None`: no such
/// coupon).
pub fn why_not(row: Option<(bool, bool)>) -> Refused {
    match row {
        None => Refused::Unknown,
        Some((true, _)) => Refused::Expired,
        Some((false, _)) => Refused::Exhausted,
    }
}

/// The credit a fixed coupon gives a user of `currency`.
pub fn credit(benefit: Benefit, currency: Currency) -> Option<i64> {
    match benefit {
        Benefit::Credit(amounts) => Some(amounts.get(currency)),
        Benefit::Percent(_) => None,
    }
}

// ------------------------------------------------------------------------------------------
// SQL: each function runs on a connection inside one `db().write` closure (one savepoint).

const INSERT_COUPON: &str = "INSERT INTO coupons (code, kind, amount_brl, amount_usd, percent, \
         max_uses, expires_at, created_by) \
     VALUES ($1, $2, $3, $4, $5, $6, now() + $7::integer * interval '1 day', $8) \
     ON CONFLICT (code) DO NOTHING \
     RETURNING to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

/// Makes a coupon; `None`: the code is taken. The answer's body.
pub fn create(conn: &mut DbConn, admin: i64, coupon: &NewCoupon) -> Result<Option<Value>, DbError> {
    let (kind, brl, usd, percent) = match coupon.benefit {
        Benefit::Credit(a) => ("fixed", Some(a.brl), Some(a.usd), None),
        Benefit::Percent(p) => ("percent", None, None, Some(p)),
    };
    let days = coupon.valid_days as i32;
    let row = conn.query_opt(
        INSERT_COUPON,
        &[
            &coupon.code,
            &kind,
            &brl,
            &usd,
            &percent,
            &coupon.max_uses,
            &days,
            &admin,
        ],
    )?;
    Ok(row.map(|row| {
        json!({
            "code": coupon.code,
            "kind": kind,
            "amounts": brl.zip(usd).map(|(brl, usd)| json!({"BRL": brl, "USD": usd})),
            "percent": percent,
            "max_uses": coupon.max_uses,
            "uses": 0,
            "expires_at": row.get::<_, String>(0),
        })
    }))
}

/// Where a redemption came from, logged with it.
#[derive(Debug, Clone)]
pub struct Client {
    pub ip: String,
    pub user_agent: String,
}

/// The coupon's row, locked first: every redemption of one coupon takes it before anything
/// else, so concurrent redemptions take turns on it and never wait on each other's rows in
/// opposite orders (which, in one group commit, would deadlock).
const LOCK_COUPON: &str = "SELECT expires_at <= now(), uses >= max_uses, \
         amount_brl, amount_usd, percent \
     FROM coupons WHERE code = $1 FOR UPDATE";
const REDEEMED: &str = "SELECT 1 FROM coupon_redemptions WHERE code = $1 AND user_id = $2";
const INSERT_REDEMPTION: &str = "INSERT INTO coupon_redemptions (code, user_id, ip, user_agent, \
         currency) VALUES ($1, $2, $3, $4, $5)";
/// One more use, never past the maximum (the table's CHECK refuses it again).
const TAKE_USE: &str =
    "UPDATE coupons SET uses = uses + 1 WHERE code = $1 AND uses < max_uses RETURNING 1";

/// Redeems `code` for `user_id`: see the module's note. The answer's body.
pub fn redeem(
    conn: &mut DbConn,
    user_id: i64,
    code: &str,
    client: &Client,
    credit_ttl_ms: i64,
) -> Result<Result<Value, Refused>, DbError> {
    let currency = store::user_currency(conn, user_id)?
        .ok_or_else(|| DbError::Query("coupons: the caller is no user".into()))?;
    let Some(coupon) = conn.query_opt(LOCK_COUPON, &[&code])? else {
        return Ok(Err(Refused::Unknown));
    };
    if !conn.query(REDEEMED, &[&code, &user_id])?.is_empty() {
        return Ok(Err(Refused::AlreadyRedeemed));
    }
    let (expired, exhausted): (bool, bool) = (coupon.get(0), coupon.get(1));
    if expired || exhausted {
        return Ok(Err(why_not(Some((expired, exhausted)))));
    }
    conn.query(
        INSERT_REDEMPTION,
        &[
            &code,
            &user_id,
            &client.ip,
            &client.user_agent,
            &currency.as_str(),
        ],
    )?;
    let Some(_) = conn.query_opt(TAKE_USE, &[&code])? else {
        return Err(DbError::Query(
            "coupons: a locked coupon's use was refused".into(),
        ));
    };
    let taken = coupon;
    let benefit = match taken.get::<_, Option<i32>>(4) {
        Some(percent) => Benefit::Percent(percent),
        None => Benefit::Credit(PerCurrency {
            brl: taken.get::<_, Option<i64>>(2).unwrap_or(0),
            usd: taken.get::<_, Option<i64>>(3).unwrap_or(0),
        }),
    };
    let Some(amount) = credit(benefit, currency) else {
        let Benefit::Percent(percent) = benefit else {
            unreachable!("credit() is None only for a percent coupon")
        };
        conn.query(
            "UPDATE coupon_redemptions SET percent = $3 WHERE code = $1 AND user_id = $2",
            &[&code, &user_id, &percent],
        )?;
        return Ok(Ok(json!({
            "code": code, "kind": "percent", "percent": percent,
        })));
    };
    let accounts = store::open_user_accounts(conn, user_id, currency)?;
    let promotions = store::system_account(conn, Kind::Promotions, currency)?;
    let made = store::transfer(
        conn,
        &NewTransfer {
            debit: promotions,
            credit: accounts.admin_credit,
            amount,
            code: "coupon_credit",
            group: None,
            metadata: json!({ "coupon": code }),
        },
    )?
    .map_err(|refused| DbError::Query(format!("a coupon credit was refused: {refused:?}")))?;
    let row = conn.query_one(
        "UPDATE coupon_redemptions SET credit = $3, credit_transfer = $4, \
             credit_expires_at = now() + $5::bigint * interval '1 millisecond' \
         WHERE code = $1 AND user_id = $2 \
         RETURNING to_char(credit_expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
        &[&code, &user_id, &amount, &made.id, &credit_ttl_ms],
    )?;
    Ok(Ok(json!({
        "code": code,
        "kind": "fixed",
        "amount": amount,
        "currency": currency.as_str(),
        "credit_expires_at": row.get::<_, String>(0),
    })))
}

const DUE: &str = "SELECT code, user_id, currency, credit FROM coupon_redemptions \
     WHERE credit IS NOT NULL AND expired_at IS NULL AND credit_expires_at <= now() \
     ORDER BY credit_expires_at LIMIT $1 FOR UPDATE SKIP LOCKED";

/// Takes back the coupon credit past its time, at most `batch` grants: what is left of each
/// grant (its amount, or the available admin credit if less: spent credit is not taken
/// twice) moves from `admin_credit` back to `promotions`. Returns how many grants ended.
pub fn expire_credits(conn: &mut DbConn, batch: i64) -> Result<usize, DbError> {
    let due = conn.query(DUE, &[&batch])?;
    for row in &due {
        let (code, user_id): (String, i64) = (row.get(0), row.get(1));
        let currency = Currency::parse(row.get(2))
            .ok_or_else(|| DbError::Query("coupons: unexpected currency".into()))?;
        let credit: i64 = row.get(3);
        let locked =
            store::open_user_accounts_locking(conn, user_id, currency, &[Kind::AdminCredit])?;
        let accounts = locked.accounts;
        let (balance, pending) = locked.figures(Kind::AdminCredit)?;
        let take = credit.min(balance - pending).max(0);
        if take > 0 {
            let promotions = store::system_account(conn, Kind::Promotions, currency)?;
            store::transfer(
                conn,
                &NewTransfer {
                    debit: accounts.admin_credit,
                    credit: promotions,
                    amount: take,
                    code: "coupon_credit_expiry",
                    group: None,
                    metadata: json!({ "coupon": code }),
                },
            )?
            .map_err(|r| DbError::Query(format!("a covered expiry was refused: {r:?}")))?;
        }
        conn.query(
            "UPDATE coupon_redemptions SET expired_at = now(), expired_amount = $3 \
             WHERE code = $1 AND user_id = $2",
            &[&code, &user_id, &take],
        )?;
    }
    Ok(due.len())
}

/// The user's best unused percent coupon, locked, as (code, percent).
pub fn unused_discount(conn: &mut DbConn, user_id: i64) -> Result<Option<(String, i32)>, DbError> {
    Ok(conn
        .query_opt(
            "SELECT code, percent FROM coupon_redemptions \
             WHERE user_id = $1 AND percent IS NOT NULL AND used_at IS NULL \
             ORDER BY percent DESC, code LIMIT 1 FOR UPDATE",
            &[&user_id],
        )?
        .map(|row| (row.get(0), row.get(1))))
}

/// Marks a percent coupon spent.
pub fn use_discount(conn: &mut DbConn, user_id: i64, code: &str) -> Result<(), DbError> {
    conn.query(
        "UPDATE coupon_redemptions SET used_at = now() WHERE code = $1 AND user_id = $2",
        &[&code, &user_id],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(kind: &str) -> CouponForm {
        CouponForm {
            code: "welcome-1".into(),
            kind: kind.into(),
            tier: None,
            amounts: None,
            percent: None,
            max_uses: 10,
            expires_in_days: None,
        }
    }

    #[test]
    fn new_coupons() {
        let basic = CouponForm {
            tier: Some(Tier::Basic),
            ..form("fixed")
        };
        let checked = check_new(&basic).unwrap();
        assert_eq!(checked.code, "WELCOME-1");
        assert_eq!(
            checked.benefit,
            Benefit::Credit(PerCurrency {
                brl: 20_000,
                usd: 3_500
            })
        );
        assert_eq!(checked.valid_days, 30);
        let vip = CouponForm {
            tier: Some(Tier::Vip),
            expires_in_days: Some(7),
            ..form("fixed")
        };
        let checked = check_new(&vip).unwrap();
        assert_eq!(credit(checked.benefit, Currency::Brl), Some(100_000));
        assert_eq!(credit(checked.benefit, Currency::Usd), Some(20_000));
        assert_eq!(checked.valid_days, 7);
        let premium = Tier::Premium.amounts();
        assert_eq!((premium.brl, premium.usd), (50_000, 10_000));
        let own = CouponForm {
            amounts: Some(Amounts { brl: 100, usd: 20 }),
            ..form("fixed")
        };
        assert!(check_new(&own).is_ok());
        let percent = CouponForm {
            percent: Some(15),
            ..form("percent")
        };
        assert_eq!(check_new(&percent).unwrap().benefit, Benefit::Percent(15));
        assert_eq!(credit(Benefit::Percent(15), Currency::Brl), None);

        let refused = [
            form("fixed"),
            CouponForm {
                tier: Some(Tier::Basic),
                amounts: Some(Amounts { brl: 1, usd: 1 }),
                ..form("fixed")
            },
            CouponForm {
                amounts: Some(Amounts { brl: 0, usd: 1 }),
                ..form("fixed")
            },
            CouponForm {
                percent: Some(0),
                ..form("percent")
            },
            CouponForm {
                percent: Some(101),
                ..form("percent")
            },
            CouponForm {
                percent: Some(10),
                ..form("fixed")
            },
            CouponForm {
                tier: Some(Tier::Basic),
                max_uses: 0,
                ..form("fixed")
            },
            CouponForm {
                tier: Some(Tier::Basic),
                expires_in_days: Some(0),
                ..form("fixed")
            },
            CouponForm {
                tier: Some(Tier::Basic),
                code: "a b".into(),
                ..form("fixed")
            },
            CouponForm {
                tier: Some(Tier::Basic),
                ..form("gift")
            },
        ];
        for bad in refused {
            assert!(check_new(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn codes() {
        let cases = [
            ("vip2026", Some("VIP2026")),
            (" ab_c ", Some("AB_C")),
            ("ab", None),
            (&"x".repeat(33), None),
            ("ça", None),
        ];
        for (code, expected) in cases {
            assert_eq!(normalize_code(code).as_deref(), expected, "{code}");
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(why_not(None), Refused::Unknown);
        assert_eq!(why_not(Some((true, true))), Refused::Expired);
        assert_eq!(why_not(Some((false, true))), Refused::Exhausted);
        assert_eq!(Refused::AlreadyRedeemed.describe().0, 409);
    }
}
