//! The affiliates' SQL, on a connection inside one `db().write` (or `read`) closure: what a
//! request changes (rows, ledger transfers, its idempotency record) commits together or not
//! at all.
//!
//! Locks: a share is a pending transfer whose debit is a system account, so the charge that
//! makes it locks no affiliate row; posting it (the sweep) locks the affiliate's commission
//! row; a clawback locks commission then debt; a conversion commission then admin credit.
//! Commission first in every flow: no two wait on each other crosswise.

use serde_json::{json, Value};

use super::rules::{self, Hold, Tier};
use crate::db::{DbConn, DbError, Lookup};
use crate::ledger::rules::{Currency, Kind};
use crate::ledger::store::{self, NewTransfer};

/// The attribution window, as the database enforces it (`affiliate_referrals_window`).
pub const WINDOW_HOURS: i64 = 48;

/// The ledger codes of the affiliates' transfers.
pub const SHARE_CODE: &str = "affiliate_share";
pub const CLAWBACK_CODE: &str = "affiliate_clawback";
pub const CLAWBACK_DEBT_CODE: &str = "affiliate_clawback_debt";
pub const CONVERSION_CODE: &str = "affiliate_conversion";
pub const CONVERSION_BONUS_CODE: &str = "affiliate_conversion_bonus";

fn unexpected(what: &str) -> DbError {
    DbError::Query(format!("affiliates: unexpected {what}"))
}

fn currency_of(text: &str) -> Result<Currency, DbError> {
    Currency::parse(text).ok_or_else(|| unexpected("currency"))
}

/// An affiliate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Affiliate {
    pub user_id: i64,
    pub code: String,
    pub tier: Tier,
    pub share_bp: i64,
    pub created_at: String,
}

impl Affiliate {
    pub fn json(&self) -> Value {
        json!({
            "user_id": self.user_id,
            "code": self.code,
            "tier": self.tier.as_str(),
            "share_bp": self.share_bp,
            "created_at": self.created_at,
        })
    }
}

/// A timestamp column as RFC 3339 UTC text, in a statement (statements are `&'static str`).
macro_rules! utc {
    ($column:literal) => {
        concat!(
            "to_char(",
            $column,
            " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
        )
    };
}

const SELECT_AFFILIATE: &str = concat!(
    "SELECT user_id, code, tier, share_bp, ",
    utc!("created_at"),
    " FROM affiliates WHERE user_id = $1"
);

fn affiliate_of(row: &crate::db::Row) -> Result<Affiliate, DbError> {
    Ok(Affiliate {
        user_id: row.get(0),
        code: row.get(1),
        tier: Tier::parse(row.get(2)).ok_or_else(|| unexpected("tier"))?,
        share_bp: i64::from(row.get::<_, i32>(3)),
        created_at: row.get(4),
    })
}

/// The affiliate `user_id` is, if any.
pub fn affiliate(conn: &mut DbConn, user_id: i64) -> Result<Option<Affiliate>, DbError> {
    conn.query_opt(SELECT_AFFILIATE, &[&user_id])?
        .map(|row| affiliate_of(&row))
        .transpose()
}

/// Makes `user_id` an affiliate with a fresh code (its role becomes `affiliate` unless it is
/// above). `None`: it is one already (concurrent applications included: one wins).
pub fn apply(conn: &mut DbConn, user_id: i64, share_bp: i64) -> Result<Option<Affiliate>, DbError> {
    // A code taken already (one chance in 2^30 per affiliate) draws again.
    for _ in 0..8 {
        let code = rules::new_code();
        let made = conn.query_opt(
            concat!(
                "WITH a AS (INSERT INTO affiliates (user_id, code, share_bp) VALUES ($1, $2, $3) \
                            ON CONFLICT DO NOTHING RETURNING *) \
                 SELECT user_id, code, tier, share_bp, ",
                utc!("created_at"),
                " FROM a"
            ),
            &[&user_id, &code, &(share_bp as i32)],
        )?;
        if let Some(row) = made {
            conn.query(
                "UPDATE users SET role = 'affiliate' WHERE id = $1 AND role = 'user'",
                &[&user_id],
            )?;
            return affiliate_of(&row).map(Some);
        }
        if affiliate(conn, user_id)?.is_some() {
            return Ok(None);
        }
    }
    Err(unexpected("run of taken codes"))
}

/// Sets an affiliate's tier and share (an admin's decision); its role follows the tier unless
/// it is staff. `None`: not an affiliate.
pub fn set_tier(
    conn: &mut DbConn,
    user_id: i64,
    tier: Tier,
    share_bp: i64,
) -> Result<Option<Affiliate>, DbError> {
    let row = conn.query_opt(
        concat!(
            "WITH a AS (UPDATE affiliates SET tier = $2, share_bp = $3, updated_at = now() \
                        WHERE user_id = $1 RETURNING *), \
                  u AS (UPDATE users SET role = $2 FROM a \
                        WHERE users.id = a.user_id \
                          AND users.role IN ('user', 'affiliate', 'affiliate_vip')) \
             SELECT user_id, code, tier, share_bp, ",
            utc!("created_at"),
            " FROM a"
        ),
        &[&user_id, &tier.as_str(), &(share_bp as i32)],
    )?;
    row.map(|row| affiliate_of(&row)).transpose()
}

/// Why an attribution is refused (nothing changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributeRefused {
    UnknownCode,
    OwnCode,
    UnknownCampaign,
    AlreadyAttributed,
    WindowClosed,
}

impl AttributeRefused {
    pub fn describe(self) -> (u16, &'static str, &'static str) {
        match self {
            AttributeRefused::UnknownCode => (422, "unknown_code", "no affiliate has this code"),
            AttributeRefused::OwnCode => {
                (422, "own_code", "a user cannot be attributed to themselves")
            }
            AttributeRefused::UnknownCampaign => (
                422,
                "unknown_campaign",
                "this affiliate has no campaign of that name",
            ),
            AttributeRefused::AlreadyAttributed => (
                409,
                "already_attributed",
                "this user was attributed to an affiliate already",
            ),
            AttributeRefused::WindowClosed => (
                410,
                "attribution_window_closed",
                "a user can be attributed only within 48 h of signing up",
            ),
        }
    }
}

/// An attribution made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referral {
    pub referred_user_id: i64,
    pub affiliate_user_id: i64,
    pub code: String,
    pub campaign: Option<String>,
    pub attributed_at: String,
}

impl Referral {
    pub fn json(&self) -> Value {
        json!({
            "referred_user_id": self.referred_user_id,
            "affiliate_user_id": self.affiliate_user_id,
            "code": self.code,
            "campaign": self.campaign,
            "attributed_at": self.attributed_at,
        })
    }
}

/// Attributes `user_id` to the affiliate of `code` (and its `campaign`, whose sign-ups count
/// it): once (concurrent claims: one wins, the others wait for it and find it), within
/// [`WINDOW_HOURS`] of the user's sign-up, never to themselves.
pub fn attribute(
    conn: &mut DbConn,
    user_id: i64,
    code: &str,
    campaign: Option<&str>,
) -> Result<Result<Referral, AttributeRefused>, DbError> {
    let Some(owner) = conn.query_opt("SELECT user_id FROM affiliates WHERE code = $1", &[&code])?
    else {
        return Ok(Err(AttributeRefused::UnknownCode));
    };
    let affiliate_user_id: i64 = owner.get(0);
    if affiliate_user_id == user_id {
        return Ok(Err(AttributeRefused::OwnCode));
    }
    if let Some(slug) = campaign {
        let found = conn.query_opt(
            "SELECT 1 FROM affiliate_campaigns WHERE slug = $1 AND affiliate_user_id = $2",
            &[&slug, &affiliate_user_id],
        )?;
        if found.is_none() {
            return Ok(Err(AttributeRefused::UnknownCampaign));
        }
    }
    let existing = conn.query_opt(
        "SELECT 1 FROM affiliate_referrals WHERE referred_user_id = $1",
        &[&user_id],
    )?;
    if existing.is_some() {
        return Ok(Err(AttributeRefused::AlreadyAttributed));
    }
    // The trigger refuses it too; asked first so that the refusal is an answer, not an error
    // that fails the write.
    let open: bool = conn
        .query_one(
            "SELECT coalesce((SELECT created_at > now() - $2::bigint * interval '1 hour' \
                              FROM users WHERE id = $1), false)",
            &[&user_id, &WINDOW_HOURS],
        )?
        .get(0);
    if !open {
        return Ok(Err(AttributeRefused::WindowClosed));
    }
    let made = conn.query_opt(
        concat!(
            "INSERT INTO affiliate_referrals (referred_user_id, affiliate_user_id, campaign) \
             VALUES ($1, $2, $3) ON CONFLICT (referred_user_id) DO NOTHING RETURNING ",
            utc!("attributed_at")
        ),
        &[&user_id, &affiliate_user_id, &campaign],
    )?;
    let Some(made) = made else {
        return Ok(Err(AttributeRefused::AlreadyAttributed));
    };
    if let Some(slug) = campaign {
        conn.query(
            "UPDATE affiliate_campaigns SET signups = signups + 1 WHERE slug = $1",
            &[&slug],
        )?;
    }
    Ok(Ok(Referral {
        referred_user_id: user_id,
        affiliate_user_id,
        code: code.to_string(),
        campaign: campaign.map(str::to_string),
        attributed_at: made.get(0),
    }))
}

// ------------------------------------------------------------------------------- shares

/// A referred user's referrer, as a charge finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Referrer {
    pub affiliate_user_id: i64,
    pub share_bp: i64,
    /// The affiliate's commission account in the payer's currency; `None` before its first
    /// share in that currency.
    pub commission_account: Option<i64>,
}

/// Who pays a charge: their currency and, when referred, their referrer; `None`: no such
/// user. One statement, the charge's first (each is a round trip inside the charge's write).
pub fn payer(
    conn: &mut DbConn,
    user_id: i64,
) -> Result<Option<(Currency, Option<Referrer>)>, DbError> {
    let Some(row) = conn.query_opt(
        "SELECT u.currency, r.affiliate_user_id, a.share_bp, c.id \
         FROM users u \
         LEFT JOIN affiliate_referrals r ON r.referred_user_id = u.id \
         LEFT JOIN affiliates a ON a.user_id = r.affiliate_user_id \
         LEFT JOIN ledger_accounts c ON c.user_id = a.user_id AND c.kind = $2 \
                                      AND c.currency = u.currency \
         WHERE u.id = $1",
        &[&user_id, &Kind::Commission.as_str()],
    )?
    else {
        return Ok(None);
    };
    let currency = currency_of(row.get(0))?;
    let referrer = match (row.get::<_, Option<i64>>(1), row.get::<_, Option<i32>>(2)) {
        (Some(affiliate_user_id), Some(share_bp)) => Some(Referrer {
            affiliate_user_id,
            share_bp: i64::from(share_bp),
            commission_account: row.get(3),
        }),
        _ => None,
    };
    Ok(Some((currency, referrer)))
}

/// A commission event, as the charge made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommissionEvent<'a> {
    pub position_id: &'a str,
    /// Who paid the commission (the referred user).
    pub user_id: i64,
    pub currency: Currency,
    pub profit: i64,
    pub profit_currency: Currency,
    pub fx_rate: Option<i64>,
    pub commission: i64,
    /// The charge's ledger group.
    pub group: i64,
}

/// A share made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub affiliate_user_id: i64,
    pub share_bp: i64,
    pub amount: i64,
    pub transfer_id: i64,
    /// Whether the referred user owes debt in some currency (their trading is then blocked),
    /// read after the charge's transfers: true of the charge because the share is its last
    /// statement, and the share itself writes none of the payer's accounts.
    pub payer_owes_debt: bool,
}

/// A share's hold and its earnings row in one statement (one round trip inside the charge's
/// write). A hold whose debit is a system account changes no account row (`store::hold` keeps
/// `pending_out` on user accounts only): the pending transfer's row is all the ledger writes.
/// It also reads whether the payer owes debt: the charge's transfers before it are visible.
const SHARE: &str = concat!(
    "WITH t AS ( \
         INSERT INTO ledger_transfers (debit_account, credit_account, amount, currency, code, \
                                       state, group_id, metadata) \
         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7::text::jsonb) \
         RETURNING id), \
     e AS ( \
         INSERT INTO affiliate_earnings (position_id, affiliate_user_id, referred_user_id, \
             currency, commission, share_bp, amount, transfer_id) \
         SELECT $8, $9, $10, $4, $11, $12, $3, t.id FROM t \
         ON CONFLICT (position_id) DO NOTHING RETURNING 1) \
     SELECT t.id, EXISTS (SELECT 1 FROM e), ",
    store::owes_debt_sql!("$10"),
    " FROM t"
);

/// `referrer`'s share of a commission event, once: a pending transfer from
/// `affiliate_expense` to the affiliate's commission account in the charge's group, and its
/// earnings row (keyed by the position, as the charge is). `None`: the share rounds to
/// nothing. Call it in the charge's write, after its transfers, as its last statement: the
/// share's [`Share::payer_owes_debt`] stands for the charge's only then.
pub fn share(
    conn: &mut DbConn,
    event: &CommissionEvent<'_>,
    referrer: &Referrer,
) -> Result<Option<Share>, DbError> {
    if event.commission <= 0 {
        return Ok(None);
    }
    let Referrer {
        affiliate_user_id,
        share_bp,
        commission_account,
    } = *referrer;
    let amount = rules::share(
        event.profit,
        event.profit_currency,
        event.currency,
        share_bp,
        event.fx_rate,
        event.commission,
    );
    if amount == 0 {
        return Ok(None);
    }
    // An affiliate's first share in this currency opens its accounts.
    let commission = match commission_account {
        Some(id) => store::Account {
            id,
            kind: Kind::Commission,
            currency: event.currency,
        },
        None => store::open_user_accounts(conn, affiliate_user_id, event.currency)?.commission,
    };
    let expense = store::system_account(conn, Kind::AffiliateExpense, event.currency)?;
    let hold = NewTransfer {
        debit: expense,
        credit: commission,
        amount,
        code: SHARE_CODE,
        group: Some(event.group),
        metadata: json!({
            "position_id": event.position_id,
            "referred_user_id": event.user_id,
            "share_bp": share_bp,
            "commission": event.commission,
        }),
    };
    store::check_transfer(&hold)
        .map_err(|r| DbError::Query(format!("an affiliate share was refused: {r:?}")))?;
    let row = conn.query_one(
        SHARE,
        &[
            &hold.debit.id,
            &hold.credit.id,
            &amount,
            &event.currency.as_str(),
            &hold.code,
            &event.group,
            &hold.metadata.to_string(),
            &event.position_id,
            &affiliate_user_id,
            &event.user_id,
            &event.commission,
            &(share_bp as i32),
        ],
    )?;
    let (transfer_id, claimed, payer_owes_debt): (i64, bool, bool) =
        (row.get(0), row.get(1), row.get(2));
    if !claimed {
        // The charge claims its position first, so this never happens; were it to, the
        // write fails whole rather than pay a second share.
        return Err(unexpected("second share of one commission event"));
    }
    Ok(Some(Share {
        affiliate_user_id,
        share_bp,
        amount,
        transfer_id,
        payer_owes_debt,
    }))
}

/// Makes at most `batch` held shares whose hold ended available (posts their transfers);
/// returns how many. Rows are claimed with `SKIP LOCKED`: sweeps running at once never take
/// one twice, and a clawback in progress keeps its row. They are posted in affiliate order, so
/// two sweeps lock commission rows in one order and never wait on each other crosswise.
pub fn release_due(conn: &mut DbConn, hold: &Hold, batch: i64) -> Result<u64, DbError> {
    let due = match hold {
        Hold::Fixed(ms) => conn.query(
            "SELECT position_id, transfer_id FROM affiliate_earnings \
             WHERE state = 'pending' AND created_at <= now() - $1::bigint * interval '1 millisecond' \
             ORDER BY affiliate_user_id, currency, position_id LIMIT $2 FOR UPDATE SKIP LOCKED",
            &[&i64::try_from(*ms).unwrap_or(i64::MAX), &batch],
        )?,
        // Due: made before the latest payout day that has begun (UTC).
        Hold::NextPayout(days) => {
            let days: Vec<i32> = days.iter().map(|d| i32::from(*d)).collect();
            conn.query(
                "WITH cutoff AS ( \
                     SELECT max(d) AT TIME ZONE 'UTC' AS at \
                     FROM generate_series((now() AT TIME ZONE 'UTC')::date - 62, \
                                          (now() AT TIME ZONE 'UTC')::date, interval '1 day') d \
                     WHERE extract(day FROM d)::int = ANY($1)) \
                 SELECT position_id, transfer_id FROM affiliate_earnings, cutoff \
                 WHERE state = 'pending' AND created_at < cutoff.at \
                 ORDER BY affiliate_user_id, currency, position_id LIMIT $2 FOR UPDATE OF affiliate_earnings SKIP LOCKED",
                &[&days, &batch],
            )?
        }
    };
    let mut released = 0;
    for row in due {
        let position_id: &str = row.get(0);
        let transfer_id: i64 = row.get(1);
        if store::post(conn, transfer_id)?.is_none() {
            return Err(unexpected("share whose transfer is not pending"));
        }
        conn.query(
            "UPDATE affiliate_earnings SET state = 'available', released_at = now() \
             WHERE position_id = $1",
            &[&position_id],
        )?;
        released += 1;
    }
    Ok(released)
}

/// A share taken back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clawback {
    pub position_id: String,
    pub affiliate_user_id: i64,
    pub currency: Currency,
    pub amount: i64,
    /// Was it still pending (voided) or available (taken back by a negative entry)?
    pub was_pending: bool,
    /// Taken from the commission balance.
    pub from_balance: i64,
    /// What the balance could not cover: the affiliate's debt now.
    pub to_debt: i64,
}

impl Clawback {
    pub fn json(&self) -> Value {
        json!({
            "position_id": self.position_id,
            "affiliate_user_id": self.affiliate_user_id,
            "currency": self.currency.as_str(),
            "amount": self.amount,
            "was_pending": self.was_pending,
            "from_balance": self.from_balance,
            "to_debt": self.to_debt,
        })
    }
}

/// Why a clawback did nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClawbackRefused {
    /// No share was paid on this commission event.
    NoShare,
    AlreadyClawedBack,
}

/// Takes back the share of a reversed commission event: a pending share is voided; an
/// available one is taken back by a negative entry (commission -> affiliate expense), what the
/// balance cannot cover becoming debt (debt -> affiliate expense): never below zero.
pub fn clawback(
    conn: &mut DbConn,
    position_id: &str,
) -> Result<Result<Clawback, ClawbackRefused>, DbError> {
    let Some(row) = conn.query_opt(
        "SELECT affiliate_user_id, currency, amount, transfer_id, state \
         FROM affiliate_earnings WHERE position_id = $1 FOR UPDATE",
        &[&position_id],
    )?
    else {
        return Ok(Err(ClawbackRefused::NoShare));
    };
    let affiliate_user_id: i64 = row.get(0);
    let currency = currency_of(row.get(1))?;
    let amount: i64 = row.get(2);
    let transfer_id: i64 = row.get(3);
    let state: &str = row.get(4);
    let mut done = Clawback {
        position_id: position_id.to_string(),
        affiliate_user_id,
        currency,
        amount,
        was_pending: state == "pending",
        from_balance: 0,
        to_debt: 0,
    };
    match state {
        "clawed_back" => return Ok(Err(ClawbackRefused::AlreadyClawedBack)),
        "pending" => {
            if store::void(conn, transfer_id)?.is_none() {
                return Err(unexpected("pending share whose transfer is settled"));
            }
        }
        _ => {
            let locked = store::open_user_accounts_locking(
                conn,
                affiliate_user_id,
                currency,
                &[Kind::Commission],
            )?;
            let accounts = locked.accounts;
            let (balance, held) = locked.figures(Kind::Commission)?;
            let (taken, owed) = crate::ledger::rules::charge_split(amount, balance - held);
            let expense = store::system_account(conn, Kind::AffiliateExpense, currency)?;
            let metadata = json!({ "position_id": position_id, "share_transfer": transfer_id });
            let mut group = None;
            for (from, part, code) in [
                (accounts.commission, taken, CLAWBACK_CODE),
                (accounts.debt, owed, CLAWBACK_DEBT_CODE),
            ] {
                if part == 0 {
                    continue;
                }
                let made = store::transfer(
                    conn,
                    &NewTransfer {
                        debit: from,
                        credit: expense,
                        amount: part,
                        code,
                        group,
                        metadata: metadata.clone(),
                    },
                )?
                .map_err(|r| DbError::Query(format!("a covered clawback was refused: {r:?}")))?;
                group.get_or_insert(made.group_id);
            }
            done.from_balance = taken;
            done.to_debt = owed;
        }
    }
    conn.query(
        "UPDATE affiliate_earnings SET state = 'clawed_back', clawed_back_at = now(), \
                clawback_debt = $2 WHERE position_id = $1",
        &[&position_id, &done.to_debt],
    )?;
    Ok(Ok(done))
}

// --------------------------------------------------------------------------- conversion

/// A conversion made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    pub currency: Currency,
    pub converted: i64,
    pub bonus: i64,
    pub group_id: i64,
}

impl Converted {
    pub fn json(&self) -> Value {
        json!({
            "currency": self.currency.as_str(),
            "converted": self.converted,
            "bonus": self.bonus,
            "admin_credit_added": self.converted + self.bonus,
            "group_id": self.group_id,
        })
    }
}

/// Why a conversion did nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvertRefused {
    NothingAvailable,
    /// More than the available commission was asked for (the available amount).
    Insufficient(i64),
}

/// Converts available commission to admin credit plus `bonus_percent` %: commission ->
/// admin credit and promotions -> admin credit, one group, in the caller's write (both or
/// neither). `amount` `None`: all that is available. The commission row is locked first, so
/// concurrent conversions of one balance convert it once.
pub fn convert(
    conn: &mut DbConn,
    user_id: i64,
    currency: Currency,
    amount: Option<i64>,
    bonus_percent: i64,
) -> Result<Result<Converted, ConvertRefused>, DbError> {
    let locked = store::open_user_accounts_locking(conn, user_id, currency, &[Kind::Commission])?;
    let accounts = locked.accounts;
    let (balance, held) = locked.figures(Kind::Commission)?;
    let available = balance - held;
    if available <= 0 {
        return Ok(Err(ConvertRefused::NothingAvailable));
    }
    let amount = amount.unwrap_or(available);
    if amount > available {
        return Ok(Err(ConvertRefused::Insufficient(available)));
    }
    let bonus = rules::conversion_bonus(amount, bonus_percent);
    let made = store::transfer(
        conn,
        &NewTransfer {
            debit: accounts.commission,
            credit: accounts.admin_credit,
            amount,
            code: CONVERSION_CODE,
            group: None,
            metadata: json!({ "bonus_percent": bonus_percent }),
        },
    )?
    .map_err(|r| DbError::Query(format!("a covered conversion was refused: {r:?}")))?;
    if bonus > 0 {
        let promotions = store::system_account(conn, Kind::Promotions, currency)?;
        store::transfer(
            conn,
            &NewTransfer {
                debit: promotions,
                credit: accounts.admin_credit,
                amount: bonus,
                code: CONVERSION_BONUS_CODE,
                group: Some(made.group_id),
                metadata: json!({ "converted": amount, "bonus_percent": bonus_percent }),
            },
        )?
        .map_err(|r| DbError::Query(format!("a conversion bonus was refused: {r:?}")))?;
    }
    Ok(Ok(Converted {
        currency,
        converted: amount,
        bonus,
        group_id: made.group_id,
    }))
}

// -------------------------------------------------------------------------------- reads

/// An affiliate's earnings in one currency, from the ledger (minor units).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize)]
pub struct Earnings {
    /// Shares still held.
    pub pending: i64,
    /// The commission account's available balance (balance - held by withdrawals).
    pub available: i64,
    pub converted: i64,
    /// Paid out by withdrawals (amounts and fees), and still on their way out.
    pub withdrawn: i64,
    pub withdrawing: i64,
    /// Shares taken back (voided while pending, or by a negative entry).
    pub clawed_back: i64,
    /// What a clawback left owing.
    pub debt: i64,
    /// Every share ever made (pending, available or clawed back).
    pub earned: i64,
}

impl Earnings {
    pub fn json(&self) -> Value {
        json!({
            "pending": self.pending,
            "available": self.available,
            "converted": self.converted,
            "withdrawn": self.withdrawn,
            "withdrawing": self.withdrawing,
            "clawed_back": self.clawed_back,
            "debt": self.debt,
            "earned": self.earned,
        })
    }
}

/// The earnings query of affiliate `$id` (an SQL expression): a row per currency it has a
/// commission account in, its columns named as [`Earnings`]' fields (a macro, so that the
/// dashboard's one statement can hold it).
macro_rules! earnings_sql {
    ($id:literal) => {
        concat!(
            "SELECT c.currency, c.balance - c.pending_out AS available, \
                 coalesce((SELECT sum(amount) FROM ledger_transfers t WHERE t.credit_account = c.id \
                           AND t.state = 'pending' AND t.code = 'affiliate_share'), 0)::bigint AS pending, \
                 coalesce(d.converted, 0)::bigint AS converted, \
                 coalesce(d.withdrawn, 0)::bigint AS withdrawn, \
                 coalesce(d.withdrawing, 0)::bigint AS withdrawing, \
                 coalesce(s.clawed_back, 0)::bigint AS clawed_back, \
                 coalesce(s.debt, 0)::bigint AS debt, \
                 coalesce(s.earned, 0)::bigint AS earned \
             FROM ledger_accounts c \
             LEFT JOIN LATERAL ( \
                 SELECT sum(amount) FILTER (WHERE state = 'posted' AND code = 'affiliate_conversion') AS converted, \
                        sum(amount) FILTER (WHERE state = 'posted' AND code LIKE 'withdrawal%') AS withdrawn, \
                        sum(amount) FILTER (WHERE state = 'pending' AND code LIKE 'withdrawal%') AS withdrawing \
                 FROM ledger_transfers t WHERE t.debit_account = c.id) d ON true \
             LEFT JOIN LATERAL ( \
                 SELECT sum(amount) FILTER (WHERE state = 'clawed_back') AS clawed_back, \
                        sum(clawback_debt) AS debt, sum(amount) AS earned \
                 FROM affiliate_earnings e WHERE e.affiliate_user_id = ",
            $id,
            " AND e.currency = c.currency) s ON true \
             WHERE c.user_id = ",
            $id,
            " AND c.kind = 'commission' ORDER BY c.currency"
        )
    };
}

/// The affiliate's earnings per currency it has a commission account in.
pub fn earnings(conn: &mut DbConn, user_id: i64) -> Result<Vec<(Currency, Earnings)>, DbError> {
    conn.query(earnings_sql!("$1"), &[&user_id])?
        .iter()
        .map(|row| {
            Ok((
                currency_of(row.get(0))?,
                Earnings {
                    available: row.get(1),
                    pending: row.get(2),
                    converted: row.get(3),
                    withdrawn: row.get(4),
                    withdrawing: row.get(5),
                    clawed_back: row.get(6),
                    debt: row.get(7),
                    earned: row.get(8),
                },
            ))
        })
        .collect()
}

/// The earnings body: every currency, zeros where there is no account.
pub fn earnings_json(list: &[(Currency, Earnings)]) -> Value {
    let mut map = serde_json::Map::new();
    for currency in Currency::ALL {
        let found = list
            .iter()
            .find(|(c, _)| *c == currency)
            .map(|(_, e)| e.clone())
            .unwrap_or_default();
        map.insert(currency.as_str().to_string(), found.json());
    }
    Value::Object(map)
}

/// Most rows a list answers.
pub const LIST_LIMIT: i64 = 100;

/// The users an affiliate referred, newest first, each with the shares it brought.
pub fn referrals(conn: &mut DbConn, user_id: i64, limit: i64) -> Result<Vec<Value>, DbError> {
    let rows = conn.query(
        concat!(
            "SELECT r.referred_user_id, r.campaign, ",
            utc!("r.attributed_at"),
            ", \
                    coalesce((SELECT jsonb_object_agg(currency, total) FROM ( \
                        SELECT currency, sum(amount) AS total FROM affiliate_earnings e \
                        WHERE e.referred_user_id = r.referred_user_id \
                          AND e.affiliate_user_id = r.affiliate_user_id \
                          AND e.state <> 'clawed_back' GROUP BY currency) s), '{}')::text \
             FROM affiliate_referrals r WHERE r.affiliate_user_id = $1 \
             ORDER BY r.attributed_at DESC, r.referred_user_id DESC LIMIT $2"
        ),
        &[&user_id, &limit],
    )?;
    Ok(rows
        .iter()
        .map(|row| {
            let earned: String = row.get(3);
            json!({
                "user_id": row.get::<_, i64>(0),
                "campaign": row.get::<_, Option<String>>(1),
                "attributed_at": row.get::<_, String>(2),
                "earned": serde_json::from_str::<Value>(&earned).unwrap_or(Value::Null),
            })
        })
        .collect())
}

/// An affiliate's campaign links, newest first.
pub fn campaigns(conn: &mut DbConn, user_id: i64) -> Result<Vec<Value>, DbError> {
    let rows = conn.query(
        concat!(
            "SELECT slug, name, clicks, signups, ",
            utc!("created_at"),
            " FROM affiliate_campaigns WHERE affiliate_user_id = $1 \
             ORDER BY created_at DESC, slug LIMIT $2"
        ),
        &[&user_id, &LIST_LIMIT],
    )?;
    Ok(rows
        .iter()
        .map(|row| {
            json!({
                "slug": row.get::<_, String>(0),
                "name": row.get::<_, String>(1),
                "clicks": row.get::<_, i64>(2),
                "signups": row.get::<_, i64>(3),
                "created_at": row.get::<_, String>(4),
            })
        })
        .collect())
}

/// Makes a campaign link. `false`: the slug is taken.
pub fn create_campaign(
    conn: &mut DbConn,
    user_id: i64,
    slug: &str,
    name: &str,
) -> Result<bool, DbError> {
    let made = conn.query(
        "INSERT INTO affiliate_campaigns (slug, affiliate_user_id, name) VALUES ($1, $2, $3) \
         ON CONFLICT (slug) DO NOTHING RETURNING 1",
        &[&slug, &user_id, &name],
    )?;
    Ok(!made.is_empty())
}

/// Counts a click on a campaign link; its affiliate's code, `None` for no such campaign.
pub fn click(conn: &mut DbConn, slug: &str) -> Result<Option<String>, DbError> {
    let row = conn.query_opt(
        "WITH c AS (UPDATE affiliate_campaigns SET clicks = clicks + 1 WHERE slug = $1 \
                    RETURNING affiliate_user_id) \
         SELECT a.code FROM c JOIN affiliates a ON a.user_id = c.affiliate_user_id",
        &[&slug],
    )?;
    Ok(row.map(|row| row.get(0)))
}

/// The dashboard's columns for the affiliates `a`: the affiliate, its referral counts, its
/// campaigns' totals, and its earnings per currency (JSON text).
macro_rules! dashboard_sql {
    ($which:literal) => {
        concat!(
            "SELECT a.user_id, a.code, a.tier, a.share_bp, ",
            utc!("a.created_at"),
            ", r.referrals, r.recent, \
                 (SELECT count(DISTINCT referred_user_id) FROM affiliate_earnings e \
                  WHERE e.affiliate_user_id = a.user_id), \
                 k.clicks, k.signups, \
                 (SELECT coalesce(json_agg(e), '[]')::text FROM (",
            earnings_sql!("a.user_id"),
            ") e), ",
            utc!("now()"),
            " FROM affiliates a \
             CROSS JOIN LATERAL ( \
                 SELECT count(*) AS referrals, \
                        count(*) FILTER (WHERE attributed_at > now() - interval '30 days') AS recent \
                 FROM affiliate_referrals r WHERE r.affiliate_user_id = a.user_id) r \
             CROSS JOIN LATERAL ( \
                 SELECT coalesce(sum(clicks), 0)::bigint AS clicks, \
                        coalesce(sum(signups), 0)::bigint AS signups \
                 FROM affiliate_campaigns c WHERE c.affiliate_user_id = a.user_id) k \
             WHERE a.user_id ",
            $which
        )
    };
}

/// The dashboard of an affiliate, as a lookup by its user id: one statement (a read is a
/// round trip each), and concurrent dashboards waiting for one node are read together.
pub static DASHBOARD: Lookup = Lookup {
    one: dashboard_sql!("= $1"),
    many: dashboard_sql!("= ANY($1)"),
};

/// The dashboard body from a [`DASHBOARD`] row: the affiliate, its referral counts, its
/// campaigns' totals and its earnings.
pub fn dashboard_of(row: &crate::db::Row) -> Result<Value, DbError> {
    #[derive(serde::Deserialize)]
    struct InCurrency {
        currency: String,
        #[serde(flatten)]
        earnings: Earnings,
    }
    let affiliate = affiliate_of(row)?;
    let listed: Vec<InCurrency> = serde_json::from_str(row.get(10))
        .map_err(|e| DbError::Query(format!("affiliates: unexpected earnings: {e}")))?;
    let earnings = listed
        .into_iter()
        .map(|e| Ok((currency_of(&e.currency)?, e.earnings)))
        .collect::<Result<Vec<_>, DbError>>()?;
    Ok(json!({
        "affiliate": affiliate.json(),
        "referrals": {
            "total": row.get::<_, i64>(5),
            "last_30_days": row.get::<_, i64>(6),
            "earning": row.get::<_, i64>(7),
        },
        "campaigns": { "clicks": row.get::<_, i64>(8), "signups": row.get::<_, i64>(9) },
        "earnings": earnings_json(&earnings),
        "as_of": row.get::<_, String>(11),
    }))
}

/// The stored dashboard of an affiliate (its body as [`dashboard_of`] made it when the sweep
/// last rebuilt it), as a lookup by its user id: one row, as the plain user read is.
pub static STORED_DASHBOARD: Lookup = Lookup {
    one: "SELECT user_id, body FROM affiliate_dashboards WHERE user_id = $1",
    many: "SELECT user_id, body FROM affiliate_dashboards WHERE user_id = ANY($1)",
};

/// The body from a [`STORED_DASHBOARD`] row.
pub fn stored_dashboard_of(row: &crate::db::Row) -> String {
    row.get(1)
}

/// A stored dashboard older than this is rebuilt though nothing marked it: its counts of the
/// last 30 days move with the clock alone.
const DASHBOARD_MAX_AGE_MINUTES: i64 = 60;
/// Of those, at most this many a batch.
const DASHBOARD_AGED_BATCH: i64 = 100;
/// The first key of the rebuild's advisory locks ("dash" in ASCII): two-key locks never meet
/// the one-key locks of idempotency keys.
const DASHBOARD_LOCK_SPACE: i32 = 0x6461_7368;

/// Rebuilds the stored dashboards of the affiliates that the changes since the last run marked
/// (at most `batch` marks, taken and deleted in this transaction) and of the oldest ones past
/// [`DASHBOARD_MAX_AGE_MINUTES`]; returns how many marks and aged rows it took. The marks of
/// transactions not committed yet are not seen, and stay for the next run.
pub fn rebuild_dashboards(conn: &mut DbConn, batch: i64) -> Result<u64, DbError> {
    let taken = conn.query_one(
        "WITH marks AS ( \
             DELETE FROM affiliate_dashboard_marks WHERE ctid = ANY(ARRAY( \
                 SELECT ctid FROM affiliate_dashboard_marks LIMIT $1 FOR UPDATE SKIP LOCKED)) \
             RETURNING affiliate_user_id), \
         aged AS ( \
             SELECT user_id FROM affiliate_dashboards \
             WHERE built_at < now() - $2::bigint * interval '1 minute' \
             ORDER BY built_at LIMIT $3) \
         SELECT (SELECT count(*) FROM marks) + (SELECT count(*) FROM aged), \
                ARRAY(SELECT affiliate_user_id FROM marks UNION SELECT user_id FROM aged ORDER BY 1)",
        &[&batch, &DASHBOARD_MAX_AGE_MINUTES, &DASHBOARD_AGED_BATCH],
    )?;
    let (count, ids): (i64, Vec<i64>) = (taken.get(0), taken.get(1));
    if ids.is_empty() {
        return Ok(0);
    }
    // One rebuild of an affiliate at a time (processes sweeping at once), locked in id order
    // so two never wait on each other crosswise. Each statement after it reads a newer
    // snapshot: a rebuild that waited sees all that the one before it saw.
    conn.query(
        "SELECT pg_advisory_xact_lock($1, (id % 2147483647)::int) \
         FROM unnest($2::bigint[]) id ORDER BY id",
        &[&DASHBOARD_LOCK_SPACE, &ids],
    )?;
    let rows = conn.query(DASHBOARD.many, &[&ids])?;
    let mut built = Vec::with_capacity(rows.len());
    let mut bodies = Vec::with_capacity(rows.len());
    for row in &rows {
        built.push(row.get::<_, i64>(0));
        bodies.push(dashboard_of(row)?.to_string());
    }
    conn.query(
        "INSERT INTO affiliate_dashboards (user_id, body, built_at) \
         SELECT id, body, now() FROM unnest($1::bigint[], $2::text[]) AS built(id, body) \
         ON CONFLICT (user_id) DO UPDATE SET body = EXCLUDED.body, built_at = EXCLUDED.built_at",
        &[&built, &bodies],
    )?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// The admin report: per affiliate and currency, the shares made and clawed back in
/// `[from, to]` (UTC dates, inclusive), and what is owed now: pending shares (paid out once
/// their hold ends) and the available commission (`due` is both).
pub fn report(conn: &mut DbConn, from: &str, to: &str) -> Result<Vec<Value>, DbError> {
    let rows = conn.query(
        "WITH period AS (SELECT ($1::text::date)::timestamp AT TIME ZONE 'UTC' AS start, \
                                ($2::text::date + 1)::timestamp AT TIME ZONE 'UTC' AS stop), \
              e AS (SELECT affiliate_user_id AS id, currency, \
                      count(*) FILTER (WHERE created_at >= start AND created_at < stop) AS shares, \
                      coalesce(sum(amount) FILTER (WHERE created_at >= start AND created_at < stop), 0) AS earned, \
                      coalesce(sum(amount) FILTER (WHERE clawed_back_at >= start AND clawed_back_at < stop), 0) AS clawed_back, \
                      coalesce(sum(amount) FILTER (WHERE state = 'pending'), 0) AS pending \
                    FROM affiliate_earnings, period GROUP BY affiliate_user_id, currency) \
         SELECT a.user_id, a.code, a.tier, c.currency, coalesce(e.shares, 0)::bigint, \
                coalesce(e.earned, 0)::bigint, coalesce(e.clawed_back, 0)::bigint, \
                coalesce(e.pending, 0)::bigint, (c.balance - c.pending_out)::bigint \
         FROM affiliates a \
         JOIN ledger_accounts c ON c.user_id = a.user_id AND c.kind = 'commission' \
         LEFT JOIN e ON e.id = a.user_id AND e.currency = c.currency \
         WHERE e.id IS NOT NULL OR c.balance <> 0 \
         ORDER BY a.user_id, c.currency LIMIT 1000",
        &[&from, &to],
    )?;
    Ok(rows
        .iter()
        .map(|row| {
            let (pending, available): (i64, i64) = (row.get(7), row.get(8));
            json!({
                "user_id": row.get::<_, i64>(0),
                "code": row.get::<_, String>(1),
                "tier": row.get::<_, String>(2),
                "currency": row.get::<_, String>(3),
                "shares": row.get::<_, i64>(4),
                "earned": row.get::<_, i64>(5),
                "clawed_back": row.get::<_, i64>(6),
                "pending": pending,
                "available": available,
                "due": pending + available,
            })
        })
        .collect())
}
