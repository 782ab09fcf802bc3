//! Withdrawals: the rules (minimum, fee, bank data, who approves, payout dates) and their SQL.
//!
//! A request places a hold: two pending transfers from the user's account (`real` or
//! `commission`), the amount to `withdrawals_in_flight` and the fee to `fees`, refused by the
//! database when the account's available balance is short of amount + fee. An admin approves
//! (two different admins above the four-eyes limit; never the requester), then pays on a payout
//! day (posts both transfers) or rejects (voids both). A withdrawal moves from `requested` to
//! `approved` to `paid`, or to `rejected` from either; each step is one guarded update on the
//! withdrawal's state, so a concurrent pay and reject cannot both win, and the ledger's own rule
//! (a pending transfer is posted or voided once) holds behind it.

use serde::Deserialize;
use serde_json::{json, Value};

use super::per_currency::{Currency, PerCurrency};
use super::rules::{Figures, Kind};
use super::store::{self, NewTransfer};
use crate::auth::hex;
use crate::db::{DbConn, DbError, Row};
/// Longest text of a bank field.
const MAX_BANK_FIELD: usize = 100;

/// The settings that decide who approves a withdrawal and when it is paid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithdrawalRules {
    /// A withdrawal below this is approved at once, with no admin (0: never).
    pub auto_approve_below: PerCurrency,
    /// Above this, two different admins must approve.
    pub four_eyes_above: PerCurrency,
    /// The days of the month withdrawals are paid on.
    pub payout_days: Vec<u8>,
}

/// The account a withdrawal is taken from: only withdrawable ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Real,
    Commission,
}

impl Source {
    /// The user account kind it draws on.
    pub fn kind(self) -> &'static str {
        match self {
            Source::Real => "real",
            Source::Commission => "commission",
        }
    }
}

/// Where the money goes. A holder and an account (or a PIX key) are required.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Bank {
    pub holder: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bank: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pix_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<String>,
}

/// A withdrawal's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Held, waiting for admins.
    Requested,
    /// Approved, waiting for a payout day.
    Approved,
    /// Paid: its hold posted.
    Paid,
    /// Rejected: its hold voided.
    Rejected,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Requested => "requested",
            State::Approved => "approved",
            State::Paid => "paid",
            State::Rejected => "rejected",
        }
    }

    pub fn parse(text: &str) -> Option<State> {
        [
            State::Requested,
            State::Approved,
            State::Paid,
            State::Rejected,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// Why a withdrawal step is refused: each with its status and stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    BelowMinimum,
    BankRequired,
    InsufficientFunds,
    /// The requester may never approve their own withdrawal.
    OwnWithdrawal,
    /// This admin already approved it; four-eyes needs another.
    AlreadyApproved,
    /// Not in a state that allows the step (already paid, rejected, or not yet approved).
    WrongState,
    NotAPayoutDay,
    NotFound,
}

impl Refused {
    /// (HTTP status, code, message).
    pub fn describe(self) -> (u16, &'static str, &'static str) {
        match self {
            Refused::BelowMinimum => (
                422,
                "below_minimum",
                "a withdrawal is at least R$50 / US$10",
            ),
            Refused::BankRequired => (
                422,
                "bank_required",
                "bank data needs a holder and an account or a PIX key (at most 100 characters each)",
            ),
            Refused::InsufficientFunds => (
                422,
                "insufficient_funds",
                "the available balance does not cover the amount and the fee",
            ),
            Refused::OwnWithdrawal => (
                403,
                "own_withdrawal",
                "an admin cannot approve their own withdrawal",
            ),
            Refused::AlreadyApproved => (
                409,
                "already_approved",
                "you already approved this withdrawal; another admin must approve it too",
            ),
            Refused::WrongState => (
                409,
                "withdrawal_state",
                "the withdrawal is not in a state that allows this",
            ),
            Refused::NotAPayoutDay => (
                409,
                "not_a_payout_day",
                "withdrawals are paid on payout days, on or after the withdrawal's payout_date",
            ),
            Refused::NotFound => (404, "not_found", "no such withdrawal"),
        }
    }
}

/// Checks a request's amount (at least the minimum: R$50 / US$10) and bank data; the fee to
/// hold beside it (R$10 / US$2).
pub fn check_request(
    figures: &Figures,
    amount: i64,
    currency: Currency,
    bank: &Bank,
) -> Result<i64, Refused> {
    if amount < figures.withdrawal_minimum(currency) {
        return Err(Refused::BelowMinimum);
    }
    let present = |field: &Option<String>| field.as_deref().is_some_and(|t| !t.trim().is_empty());
    let fields = [
        Some(&bank.holder),
        bank.bank.as_ref(),
        bank.branch.as_ref(),
        bank.account.as_ref(),
        bank.pix_key.as_ref(),
        bank.document.as_ref(),
    ];
    let too_long = fields
        .into_iter()
        .flatten()
        .any(|t| t.chars().count() > MAX_BANK_FIELD);
    if bank.holder.trim().is_empty()
        || !(present(&bank.account) || present(&bank.pix_key))
        || too_long
    {
        return Err(Refused::BankRequired);
    }
    Ok(figures.withdrawal_fee(currency))
}

impl WithdrawalRules {
    /// How many different admins must approve a withdrawal of `amount`; 0: none (approved at
    /// once).
    pub fn approvals_needed(&self, amount: i64, currency: Currency) -> usize {
        if amount < self.auto_approve_below.get(currency) {
            0
        } else if amount > self.four_eyes_above.get(currency) {
            2
        } else {
            1
        }
    }
}

/// What one admin's approval does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approval {
    /// The last approval needed: the withdrawal is approved.
    Approved,
    /// Recorded; another admin must approve too.
    NeedsAnother,
}

/// `admin` approves a withdrawal of `requester` in `state` that `approvals` (admins) already
/// approved, out of `needed`.
pub fn approve(
    state: State,
    requester: i64,
    admin: i64,
    approvals: &[i64],
    needed: usize,
) -> Result<Approval, Refused> {
    if state != State::Requested {
        return Err(Refused::WrongState);
    }
    if admin == requester {
        return Err(Refused::OwnWithdrawal);
    }
    if approvals.contains(&admin) {
        return Err(Refused::AlreadyApproved);
    }
    if approvals.len() + 1 >= needed {
        Ok(Approval::Approved)
    } else {
        Ok(Approval::NeedsAnother)
    }
}

/// A calendar date (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    pub year: i32,
    pub month: u8,
    pub day: u8,
}

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 31,
    }
}

impl Date {
    /// The UTC date of `unix_secs` (days since 1970-01-01 to a civil date, H. Hinnant's
    /// algorithm).
    pub fn from_unix(unix_secs: i64) -> Date {
        let z = unix_secs.div_euclid(86_400) + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
        Date { year, month, day }
    }

    pub fn today() -> Date {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        Date::from_unix(secs)
    }

    /// `YYYY-MM-DD`.
    pub fn parse(text: &str) -> Option<Date> {
        let mut parts = text.splitn(3, '-');
        let year = parts.next()?.parse().ok()?;
        let month: u8 = parts.next()?.parse().ok()?;
        let day: u8 = parts.next()?.parse().ok()?;
        ((1..=12).contains(&month) && (1..=days_in_month(year, month)).contains(&day))
            .then_some(Date { year, month, day })
    }

    fn first_of_next_month(self) -> Date {
        if self.month == 12 {
            Date {
                year: self.year + 1,
                month: 1,
                day: 1,
            }
        } else {
            Date {
                month: self.month + 1,
                day: 1,
                ..self
            }
        }
    }
}

/// The first payout day on or after `from`. Days past a month's end (31 in April) do not
/// occur that month. `days` empty or all past 31: `from` (nothing to wait for).
pub fn next_payout_date(from: Date, days: &[u8]) -> Date {
    let mut date = from;
    // A day of the list is found within two months (31 is in every other one).
    for _ in 0..3 {
        let last = days_in_month(date.year, date.month);
        if let Some(day) = days
            .iter()
            .copied()
            .filter(|d| (date.day..=last).contains(d))
            .min()
        {
            return Date { day, ..date };
        }
        date = date.first_of_next_month();
    }
    from
}

/// Whether a withdrawal whose payout date is `payout_date` may be paid `today`: a payout day,
/// on or after its date.
pub fn may_pay(today: Date, payout_date: Date, days: &[u8]) -> bool {
    today >= payout_date && days.contains(&today.day)
}

// ------------------------------------------------------------------------------------------
// SQL: each function runs on a connection inside one `db().write` closure (one savepoint).

/// A withdrawal as its owner and admins see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Withdrawal {
    pub id: String,
    pub user_id: i64,
    pub currency: Currency,
    pub amount: i64,
    pub fee: i64,
    pub source: String,
    pub bank: Value,
    pub state: State,
    pub approvals_needed: i32,
    pub approvals: Vec<i64>,
    pub amount_transfer: i64,
    pub fee_transfer: i64,
    pub payout_date: Option<String>,
    pub created_at: String,
    pub paid_at: Option<String>,
    /// Paging order (newest first).
    pub seq: i64,
}

impl Withdrawal {
    pub fn json(&self) -> Value {
        json!({
            "id": self.id,
            "amount": self.amount,
            "fee": self.fee,
            "currency": self.currency.as_str(),
            "source": self.source,
            "bank": self.bank,
            "state": self.state.as_str(),
            "approvals_needed": self.approvals_needed,
            "approvals": self.approvals.len(),
            "payout_date": self.payout_date,
            "created_at": self.created_at,
            "paid_at": self.paid_at,
        })
    }
}

macro_rules! withdrawal_columns {
    () => {
        "w.id, w.user_id, w.currency, w.amount, w.fee, w.source, w.bank::text, w.state, \
         w.approvals_needed, \
         coalesce((SELECT array_agg(a.admin_id ORDER BY a.approved_at) \
                   FROM withdrawal_approvals a WHERE a.withdrawal_id = w.id), '{}'), \
         w.amount_transfer, w.fee_transfer, to_char(w.payout_date, 'YYYY-MM-DD'), \
         to_char(w.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
         to_char(w.paid_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), w.seq"
    };
}

/// A withdrawal's two holds (the amount to `withdrawals_in_flight`, the fee to `fees`, one
/// group: the amount's transfer id) and its row, in one statement: one round trip inside the
/// request's write. The source account's row is locked and its available balance checked
/// first ([`request`]); the guard in `d` (and the table's `ledger_accounts_never_negative`)
/// still refuses an overdraft, and then the statement returns no row.
const REQUEST: &str = concat!(
    "WITH d AS ( \
         UPDATE ledger_accounts SET pending_out = pending_out + $4 + $5 \
         WHERE id = $10 AND balance - pending_out - $4 - $5 >= 0 \
         RETURNING id), \
     n AS (SELECT nextval('ledger_transfers_id_seq') AS id FROM d), \
     a AS ( \
         INSERT INTO ledger_transfers (id, debit_account, credit_account, amount, currency, code, \
                                       state, group_id, metadata) \
         SELECT n.id, $10, $11, $4, $3, 'withdrawal', 'pending', n.id, $14::text::jsonb FROM n \
         RETURNING id, group_id), \
     f AS ( \
         INSERT INTO ledger_transfers (debit_account, credit_account, amount, currency, code, \
                                       state, group_id, metadata) \
         SELECT $10, $12, $5, $3, 'withdrawal_fee', 'pending', a.group_id, $14::text::jsonb \
         FROM a \
         RETURNING id) \
     INSERT INTO withdrawals AS w (id, user_id, currency, amount, fee, source, bank, \
         state, approvals_needed, amount_transfer, fee_transfer, payout_date, decided_at) \
     SELECT $1, $2, $3, $4, $5, $6, $7::text::jsonb, $8, $9, a.id, f.id, $13::text::date, \
            CASE WHEN $8 = 'approved' THEN now() END \
     FROM a, f RETURNING ",
    withdrawal_columns!()
);
const SELECT_ONE: &str = concat!(
    "SELECT ",
    withdrawal_columns!(),
    " FROM withdrawals w WHERE w.id = $1"
);
const LOCK_ONE: &str = concat!(
    "SELECT ",
    withdrawal_columns!(),
    " FROM withdrawals w WHERE w.id = $1 FOR UPDATE OF w"
);
/// The admin's list of one state. The state is written into the statement, not passed: a
/// replica keeps one generic plan per statement (`db::pool::session_options`), and only a plan that
/// knows the state can take the open withdrawals' partial index (`withdrawals_open`).
macro_rules! select_by_state {
    ($state:literal) => {
        concat!(
            "SELECT ",
            withdrawal_columns!(),
            " FROM withdrawals w WHERE w.state = '",
            $state,
            "' AND w.seq < $1 ORDER BY w.seq DESC LIMIT $2"
        )
    };
}

fn select_by_state(state: State) -> &'static str {
    match state {
        State::Requested => select_by_state!("requested"),
        State::Approved => select_by_state!("approved"),
        State::Paid => select_by_state!("paid"),
        State::Rejected => select_by_state!("rejected"),
    }
}
const SELECT_OWN: &str = concat!(
    "SELECT ",
    withdrawal_columns!(),
    " FROM withdrawals w WHERE w.user_id = $1 AND w.seq < $2 ORDER BY w.seq DESC LIMIT $3"
);

fn bad_row(what: &str) -> DbError {
    DbError::Query(format!("withdrawals: unexpected {what}"))
}

fn from_row(row: &Row) -> Result<Withdrawal, DbError> {
    let bank: String = row.get(6);
    Ok(Withdrawal {
        id: row.get(0),
        user_id: row.get(1),
        currency: Currency::parse(row.get(2)).ok_or_else(|| bad_row("currency"))?,
        amount: row.get(3),
        fee: row.get(4),
        source: row.get(5),
        bank: serde_json::from_str(&bank).unwrap_or(Value::Null),
        state: State::parse(row.get(7)).ok_or_else(|| bad_row("state"))?,
        approvals_needed: row.get(8),
        approvals: row.get(9),
        amount_transfer: row.get(10),
        fee_transfer: row.get(11),
        payout_date: row.get(12),
        created_at: row.get(13),
        paid_at: row.get(14),
        seq: row.get(15),
    })
}

/// A new withdrawal's opaque id: 128 random bits in hex.
fn new_id() -> Result<String, DbError> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| DbError::Query(format!("no randomness for an id: {e}")))?;
    Ok(hex::encode(&bytes))
}

/// What a user asks for.
#[derive(Debug, Clone)]
pub struct Ask {
    pub user_id: i64,
    pub currency: Currency,
    pub amount: i64,
    pub source: Source,
    pub bank: Bank,
}

/// Places a withdrawal's hold and records it: refused when the source account's available
/// balance is below amount + fee (its row locked first, so the two holds stand or fall
/// together). Approved at once below the auto-approval limit.
pub fn request(
    conn: &mut DbConn,
    ask: &Ask,
    figures: &Figures,
    rules: &WithdrawalRules,
    today: Date,
) -> Result<Result<Withdrawal, Refused>, DbError> {
    let fee = match check_request(figures, ask.amount, ask.currency, &ask.bank) {
        Ok(fee) => fee,
        Err(refused) => return Ok(Err(refused)),
    };
    let kind = match ask.source {
        Source::Real => Kind::Real,
        Source::Commission => Kind::Commission,
    };
    let locked = store::open_user_accounts_locking(conn, ask.user_id, ask.currency, &[kind])?;
    let from = locked
        .accounts
        .get(kind)
        .ok_or_else(|| bad_row("source kind"))?;
    let (balance, pending) = locked.figures(kind)?;
    if balance - pending < ask.amount + fee {
        return Ok(Err(Refused::InsufficientFunds));
    }
    let in_flight = store::system_account(conn, Kind::WithdrawalsInFlight, ask.currency)?;
    let fees = store::system_account(conn, Kind::Fees, ask.currency)?;
    let id = new_id()?;
    let metadata = json!({ "withdrawal_id": id });
    for (credit, amount, code) in [
        (in_flight, ask.amount, "withdrawal"),
        (fees, fee, "withdrawal_fee"),
    ] {
        let hold = NewTransfer {
            debit: from,
            credit,
            amount,
            code,
            group: None,
            metadata: Value::Null,
        };
        // The row is locked and covers both: a refusal here is a bug, and rolls back.
        store::check_transfer(&hold).map_err(|refused| {
            DbError::Query(format!(
                "a covered withdrawal hold was refused: {refused:?}"
            ))
        })?;
    }
    let needed = rules.approvals_needed(ask.amount, ask.currency);
    let (state, payout) = if needed == 0 {
        let date = next_payout_date(today, &rules.payout_days);
        (State::Approved, Some(date.to_string()))
    } else {
        (State::Requested, None)
    };
    let bank = serde_json::to_string(&ask.bank).map_err(|e| bad_row(&e.to_string()))?;
    let row = conn
        .query_opt(
            REQUEST,
            &[
                &id,
                &ask.user_id,
                &ask.currency.as_str(),
                &ask.amount,
                &fee,
                &ask.source.kind(),
                &bank,
                &state.as_str(),
                &(needed as i32),
                &from.id,
                &in_flight.id,
                &fees.id,
                &payout,
                &metadata.to_string(),
            ],
        )?
        .ok_or_else(|| DbError::Query("a covered withdrawal hold was refused".into()))?;
    from_row(&row).map(Ok)
}

/// The caller's withdrawals, newest first, from before `before` (a page's last `seq`).
pub fn list_own(
    conn: &mut DbConn,
    user_id: i64,
    before: i64,
    limit: i64,
) -> Result<Vec<Withdrawal>, DbError> {
    conn.query(SELECT_OWN, &[&user_id, &before, &limit])?
        .iter()
        .map(from_row)
        .collect()
}

/// Every user's withdrawals in `state`, newest first (for admins).
pub fn list_by_state(
    conn: &mut DbConn,
    state: State,
    before: i64,
    limit: i64,
) -> Result<Vec<Withdrawal>, DbError> {
    conn.query(select_by_state(state), &[&before, &limit])?
        .iter()
        .map(from_row)
        .collect()
}

fn lock(conn: &mut DbConn, id: &str) -> Result<Option<Withdrawal>, DbError> {
    conn.query_opt(LOCK_ONE, &[&id])?
        .as_ref()
        .map(from_row)
        .transpose()
}

fn reread(conn: &mut DbConn, id: &str) -> Result<Withdrawal, DbError> {
    let row = conn.query_one(SELECT_ONE, &[&id])?;
    from_row(&row)
}

/// `admin` approves withdrawal `id`: the last approval needed sets its payout date.
pub fn approve_one(
    conn: &mut DbConn,
    id: &str,
    admin: i64,
    rules: &WithdrawalRules,
    today: Date,
) -> Result<Result<Withdrawal, Refused>, DbError> {
    let Some(w) = lock(conn, id)? else {
        return Ok(Err(Refused::NotFound));
    };
    let needed = usize::try_from(w.approvals_needed).unwrap_or(2);
    let decision = match approve(w.state, w.user_id, admin, &w.approvals, needed) {
        Ok(decision) => decision,
        Err(refused) => return Ok(Err(refused)),
    };
    conn.query(
        "INSERT INTO withdrawal_approvals (withdrawal_id, admin_id) VALUES ($1, $2)",
        &[&id, &admin],
    )?;
    if decision == Approval::Approved {
        let payout = next_payout_date(today, &rules.payout_days).to_string();
        conn.query(
            "UPDATE withdrawals SET state = 'approved', payout_date = $2::text::date, \
                 decided_at = now(), decided_by = $3 \
             WHERE id = $1 AND state = 'requested'",
            &[&id, &payout, &admin],
        )?;
    }
    reread(conn, id).map(Ok)
}

/// Settles both of a withdrawal's holds (post or void): each must still be pending.
fn settle_holds(conn: &mut DbConn, w: &Withdrawal, pay: bool) -> Result<(), DbError> {
    for transfer in [w.amount_transfer, w.fee_transfer] {
        let settled = if pay {
            store::post(conn, transfer)?
        } else {
            store::void(conn, transfer)?
        };
        if settled.is_none() {
            return Err(DbError::Query(format!(
                "withdrawal {}: its hold {transfer} was already settled",
                w.id
            )));
        }
    }
    Ok(())
}

/// Rejects withdrawal `id` (requested or approved): its holds are voided.
pub fn reject_one(
    conn: &mut DbConn,
    id: &str,
    admin: i64,
) -> Result<Result<Withdrawal, Refused>, DbError> {
    let Some(w) = lock(conn, id)? else {
        return Ok(Err(Refused::NotFound));
    };
    if !matches!(w.state, State::Requested | State::Approved) {
        return Ok(Err(Refused::WrongState));
    }
    settle_holds(conn, &w, false)?;
    conn.query(
        "UPDATE withdrawals SET state = 'rejected', decided_at = now(), decided_by = $2 \
         WHERE id = $1 AND state IN ('requested', 'approved')",
        &[&id, &admin],
    )?;
    reread(conn, id).map(Ok)
}

/// Marks withdrawal `id` paid (approved, on a payout day on or after its payout date): its
/// holds are posted.
pub fn pay_one(
    conn: &mut DbConn,
    id: &str,
    rules: &WithdrawalRules,
    today: Date,
) -> Result<Result<Withdrawal, Refused>, DbError> {
    let Some(w) = lock(conn, id)? else {
        return Ok(Err(Refused::NotFound));
    };
    if w.state != State::Approved {
        return Ok(Err(Refused::WrongState));
    }
    let payout = w
        .payout_date
        .as_deref()
        .and_then(Date::parse)
        .ok_or_else(|| bad_row("payout date"))?;
    if !may_pay(today, payout, &rules.payout_days) {
        return Ok(Err(Refused::NotAPayoutDay));
    }
    settle_holds(conn, &w, true)?;
    conn.query(
        "UPDATE withdrawals SET state = 'paid', paid_at = now() WHERE id = $1 AND state = 'approved'",
        &[&id],
    )?;
    reread(conn, id).map(Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_lists_with_its_own_name_written_in() {
        for state in [
            State::Requested,
            State::Approved,
            State::Paid,
            State::Rejected,
        ] {
            let sql = select_by_state(state);
            assert!(
                sql.contains(&format!("w.state = '{}' AND", state.as_str())),
                "{sql}"
            );
        }
    }

    fn bank() -> Bank {
        Bank {
            holder: "Ana".into(),
            bank: None,
            branch: None,
            account: Some("12345-6".into()),
            pix_key: None,
            document: None,
        }
    }

    fn date(year: i32, month: u8, day: u8) -> Date {
        Date { year, month, day }
    }

    #[test]
    fn request_minimum_fee_and_bank() {
        let no_account = Bank {
            account: None,
            ..bank()
        };
        let pix = Bank {
            account: None,
            pix_key: Some("ana@example.com".into()),
            ..bank()
        };
        let blank_holder = Bank {
            holder: "  ".into(),
            ..bank()
        };
        let long = Bank {
            document: Some("9".repeat(101)),
            ..bank()
        };
        let cases = [
            (5_000, Currency::Brl, bank(), Ok(1_000)),
            (4_999, Currency::Brl, bank(), Err(Refused::BelowMinimum)),
            (1_000, Currency::Usd, bank(), Ok(200)),
            (999, Currency::Usd, bank(), Err(Refused::BelowMinimum)),
            (1_000, Currency::Brl, bank(), Err(Refused::BelowMinimum)),
            (5_000, Currency::Brl, no_account, Err(Refused::BankRequired)),
            (5_000, Currency::Brl, pix, Ok(1_000)),
            (
                5_000,
                Currency::Brl,
                blank_holder,
                Err(Refused::BankRequired),
            ),
            (5_000, Currency::Brl, long, Err(Refused::BankRequired)),
        ];
        for (amount, currency, bank, expected) in cases {
            assert_eq!(
                check_request(&Figures::default(), amount, currency, &bank),
                expected,
                "{amount} {currency:?} {bank:?}"
            );
        }
    }

    #[test]
    fn approvals_needed_by_amount() {
        let rules = WithdrawalRules {
            auto_approve_below: PerCurrency {
                brl: 10_000,
                usd: 2_000,
            },
            four_eyes_above: PerCurrency {
                brl: 100_000,
                usd: 20_000,
            },
            payout_days: vec![5, 20],
        };
        let cases = [
            (9_999, Currency::Brl, 0),
            (10_000, Currency::Brl, 1),
            (100_000, Currency::Brl, 1),
            (100_001, Currency::Brl, 2),
            (1_999, Currency::Usd, 0),
            (20_001, Currency::Usd, 2),
        ];
        for (amount, currency, needed) in cases {
            assert_eq!(
                rules.approvals_needed(amount, currency),
                needed,
                "{amount} {currency:?}"
            );
        }
    }

    #[test]
    fn approval_steps() {
        use Approval::*;
        let (requester, a, b) = (1, 2, 3);
        let cases = [
            (State::Requested, a, vec![], 1, Ok(Approved)),
            (State::Requested, a, vec![], 2, Ok(NeedsAnother)),
            (State::Requested, b, vec![a], 2, Ok(Approved)),
            (
                State::Requested,
                a,
                vec![a],
                2,
                Err(Refused::AlreadyApproved),
            ),
            (
                State::Requested,
                requester,
                vec![],
                1,
                Err(Refused::OwnWithdrawal),
            ),
            (
                State::Requested,
                requester,
                vec![a],
                2,
                Err(Refused::OwnWithdrawal),
            ),
            (State::Approved, a, vec![b], 1, Err(Refused::WrongState)),
            (State::Paid, a, vec![], 1, Err(Refused::WrongState)),
            (State::Rejected, a, vec![], 1, Err(Refused::WrongState)),
        ];
        for (state, admin, approvals, needed, expected) in cases {
            assert_eq!(
                approve(state, requester, admin, &approvals, needed),
                expected,
                "{state:?} by {admin} after {approvals:?} of {needed}"
            );
        }
    }

    #[test]
    fn dates_from_unix_and_text() {
        let cases = [
            (0, date(1970, 1, 1)),
            (951_782_400, date(2000, 2, 29)),
            (1_796_515_200, date(2026, 12, 6)),
            (-86_400, date(1969, 12, 31)),
        ];
        for (secs, expected) in cases {
            assert_eq!(Date::from_unix(secs), expected, "{secs}");
            assert_eq!(Date::parse(&expected.to_string()), Some(expected));
        }
        for bad in ["2026-02-29", "2026-13-01", "2026-1", "x-1-1", "2026-04-31"] {
            assert_eq!(Date::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn payout_dates() {
        let days = [5, 20];
        let cases = [
            (date(2026, 12, 1), date(2026, 12, 5)),
            (date(2026, 12, 5), date(2026, 12, 5)),
            (date(2026, 12, 6), date(2026, 12, 20)),
            (date(2026, 12, 21), date(2027, 1, 5)),
            (date(2026, 12, 31), date(2027, 1, 5)),
        ];
        for (from, expected) in cases {
            assert_eq!(next_payout_date(from, &days), expected, "{from}");
        }
        // The 31st skips the months without one.
        assert_eq!(next_payout_date(date(2026, 4, 2), &[31]), date(2026, 5, 31));
        assert_eq!(next_payout_date(date(2026, 4, 2), &[]), date(2026, 4, 2));
        let pay = [
            (date(2026, 12, 5), date(2026, 12, 5), true),
            (date(2026, 12, 6), date(2026, 12, 5), false),
            (date(2026, 12, 20), date(2026, 12, 5), true),
            (date(2026, 12, 5), date(2026, 12, 20), false),
        ];
        for (today, payout, expected) in pay {
            assert_eq!(may_pay(today, payout, &days), expected, "{today} {payout}");
        }
    }
}
