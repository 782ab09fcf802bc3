//! The ledger's SQL, on a connection inside a `db().write` (or `read`) closure: a write closure
//! is one savepoint of a group commit, so the transfers a request makes, its outbox jobs and its
//! idempotency record commit together or not at all.
//!
//! A transfer is one statement (one round trip): the guarded updates of the user rows it
//! touches and the insert, in data-modifying CTEs. A debit the account cannot cover updates
//! nothing and inserts nothing: the transfer is refused, the request goes on (and answers 422).
//! The `ledger_accounts_never_negative` constraint refuses it again should a guard be wrong.
//!
//! Locks: a transfer locks the user rows it touches, debit first, and no system row (those
//! keep no stored balance). Two transfers on the same user rows in opposite orders could
//! deadlock; no flow here does that (debt is paid from real, never the other way round).

use serde_json::Value;

use super::rules::{balance_delta, Currency, Kind, Side};
use crate::db::{DbConn, DbError, Lookup, Row};

/// One ledger account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    pub id: i64,
    pub kind: Kind,
    pub currency: Currency,
}

/// A user's four accounts in one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserAccounts {
    pub user_id: i64,
    pub currency: Currency,
    pub real: Account,
    pub admin_credit: Account,
    pub commission: Account,
    pub debt: Account,
}

impl UserAccounts {
    pub fn get(&self, kind: Kind) -> Option<Account> {
        match kind {
            Kind::Real => Some(self.real),
            Kind::AdminCredit => Some(self.admin_credit),
            Kind::Commission => Some(self.commission),
            Kind::Debt => Some(self.debt),
            _ => None,
        }
    }
}

fn bad_row(what: &str) -> DbError {
    DbError::Query(format!("the ledger found an unexpected {what}"))
}

fn currency_of(text: &str) -> Result<Currency, DbError> {
    Currency::parse(text).ok_or_else(|| bad_row("currency"))
}

fn kind_of(text: &str) -> Result<Kind, DbError> {
    Kind::parse(text).ok_or_else(|| bad_row("account kind"))
}

const SELECT_USER_ACCOUNTS: &str =
    "SELECT id, kind FROM ledger_accounts WHERE user_id = $1 AND currency = $2";
const INSERT_USER_ACCOUNTS: &str = "INSERT INTO ledger_accounts (user_id, kind, currency) \
     SELECT $1, kind, $2 FROM unnest(ARRAY['real', 'admin_credit', 'commission', 'debt']) AS kind \
     ON CONFLICT (user_id, kind, currency) DO NOTHING";
/// The user's accounts in $2, those of the kinds in $3 locked, with their stored balance and
/// held amount (the others' columns null). Several rows are locked in id order (the outer rows
/// come sorted to the loop that locks them), as `LOCK_SETTLE` locks a settle's: two writes
/// that lock several rows of one user here never wait on each other crosswise. The lock is
/// taken inside the lateral subquery, so the figures are each row's newest version once its
/// lock is held.
const SELECT_USER_ACCOUNTS_LOCKING: &str = "SELECT a.id, a.kind, l.balance, l.pending_out \
     FROM (SELECT id, kind FROM ledger_accounts \
           WHERE user_id = $1 AND currency = $2 ORDER BY id) a \
     LEFT JOIN LATERAL ( \
         SELECT x.balance, x.pending_out FROM ledger_accounts x \
         WHERE x.id = a.id AND a.kind = ANY($3::text[]) FOR UPDATE) l ON true";

/// The user's four accounts in `currency`, made on first use.
pub fn open_user_accounts(
    conn: &mut DbConn,
    user_id: i64,
    currency: Currency,
) -> Result<UserAccounts, DbError> {
    let rows = made_on_first_use(conn, user_id, currency, |conn| {
        conn.query(SELECT_USER_ACCOUNTS, &[&user_id, &currency.as_str()])
    })?;
    user_accounts_of(&rows, user_id, currency)
}

/// The rows `select` reads of a user's accounts in `currency`, after making the accounts when
/// some are missing (and reading again).
fn made_on_first_use(
    conn: &mut DbConn,
    user_id: i64,
    currency: Currency,
    select: impl Fn(&mut DbConn) -> Result<Vec<Row>, DbError>,
) -> Result<Vec<Row>, DbError> {
    let rows = select(conn)?;
    if rows.len() >= Kind::USER.len() {
        return Ok(rows);
    }
    conn.query(INSERT_USER_ACCOUNTS, &[&user_id, &currency.as_str()])?;
    select(conn)
}

/// A user's accounts in one currency, some of them locked until the transaction ends.
#[derive(Debug, Clone)]
pub struct LockedAccounts {
    pub accounts: UserAccounts,
    /// (kind, balance, pending_out) of each locked account.
    locked: Vec<(Kind, i64, i64)>,
}

impl LockedAccounts {
    /// A locked account's stored (balance, pending_out).
    pub fn figures(&self, kind: Kind) -> Result<(i64, i64), DbError> {
        self.locked
            .iter()
            .find(|(k, _, _)| *k == kind)
            .map(|&(_, balance, pending)| (balance, pending))
            .ok_or_else(|| bad_row("account not locked"))
    }
}

/// The user's four accounts in `currency` (made on first use), those of `kinds` locked with
/// their stored (balance, pending_out): what [`open_user_accounts`] and a [`lock_balance`] of
/// each give, in one round trip.
pub fn open_user_accounts_locking(
    conn: &mut DbConn,
    user_id: i64,
    currency: Currency,
    kinds: &[Kind],
) -> Result<LockedAccounts, DbError> {
    let kinds_text: Vec<&str> = kinds.iter().map(|kind| kind.as_str()).collect();
    let rows = made_on_first_use(conn, user_id, currency, |conn| {
        conn.query(
            SELECT_USER_ACCOUNTS_LOCKING,
            &[&user_id, &currency.as_str(), &kinds_text],
        )
    })?;
    let accounts = user_accounts_of(&rows, user_id, currency)?;
    let mut locked = Vec::with_capacity(kinds.len());
    for row in &rows {
        if let (Some(balance), Some(pending)) = (row.get(2), row.get(3)) {
            locked.push((kind_of(row.get(1))?, balance, pending));
        }
    }
    Ok(LockedAccounts { accounts, locked })
}

/// A user's four accounts from rows of (id, kind).
fn user_accounts_of(
    rows: &[Row],
    user_id: i64,
    currency: Currency,
) -> Result<UserAccounts, DbError> {
    let find = |kind: Kind| -> Result<Account, DbError> {
        let row = rows
            .iter()
            .find(|row| row.get::<_, &str>(1) == kind.as_str())
            .ok_or_else(|| bad_row("missing user account"))?;
        Ok(Account {
            id: row.get(0),
            kind,
            currency,
        })
    };
    Ok(UserAccounts {
        user_id,
        currency,
        real: find(Kind::Real)?,
        admin_credit: find(Kind::AdminCredit)?,
        commission: find(Kind::Commission)?,
        debt: find(Kind::Debt)?,
    })
}

const SELECT_SYSTEM_ACCOUNT: &str =
    "SELECT id FROM ledger_accounts WHERE user_id IS NULL AND kind = $1 AND currency = $2";

/// The platform's account of `kind` in `currency` (made by the migration, never removed: its
/// id is looked up once per connection).
pub fn system_account(
    conn: &mut DbConn,
    kind: Kind,
    currency: Currency,
) -> Result<Account, DbError> {
    if kind.is_user() {
        return Err(DbError::Query(format!(
            "{} is a user's kind",
            kind.as_str()
        )));
    }
    let key = format!(
        "ledger system account {} {}",
        kind.as_str(),
        currency.as_str()
    );
    let id = conn.remembered(key, |conn| {
        let row = conn.query_one(SELECT_SYSTEM_ACCOUNT, &[&kind.as_str(), &currency.as_str()])?;
        Ok(row.get(0))
    })?;
    Ok(Account { id, kind, currency })
}

/// The currency of a user's money (BRL in Brazil, USD elsewhere); `None`: no such user.
pub fn user_currency(conn: &mut DbConn, user_id: i64) -> Result<Option<Currency>, DbError> {
    let row = conn.query_opt("SELECT currency FROM users WHERE id = $1", &[&user_id])?;
    row.map(|row| currency_of(row.get(0))).transpose()
}

/// A user account's stored (balance, pending_out), its row locked until the transaction ends
/// (so a decision on it, such as how much debt a payment settles, holds at commit).
pub fn lock_balance(conn: &mut DbConn, account: &Account) -> Result<(i64, i64), DbError> {
    let row = conn.query_one(
        "SELECT balance, pending_out FROM ledger_accounts WHERE id = $1 FOR UPDATE",
        &[&account.id],
    )?;
    Ok((row.get(0), row.get(1)))
}

/// A transfer to make.
#[derive(Debug, Clone)]
pub struct NewTransfer {
    pub debit: Account,
    pub credit: Account,
    /// Minor units, > 0.
    pub amount: i64,
    /// What it is (`recharge`, `debt_payment`, `withdrawal`...): `[a-z][a-z0-9_]*`.
    pub code: &'static str,
    /// The group (a request's transfers share one): `None` starts a group at this transfer.
    pub group: Option<i64>,
    pub metadata: Value,
}

/// A transfer made: its id and its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Made {
    pub id: i64,
    pub group_id: i64,
}

/// Why a transfer was not made (nothing changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The debit account's available balance (balance - pending) is below the amount.
    Insufficient { account: Kind },
    /// Not a transfer the ledger takes (the message says why).
    Invalid(&'static str),
}

/// SQL text: whether the user whose id is the parameter `$user` owes debt in some currency,
/// which blocks their trading. A macro so that the commission charge's last statement,
/// whichever it is, can ask it without a round trip of its own (`commission::trading_blocked`
/// and `affiliate::store::share`).
macro_rules! owes_debt_sql {
    ($user:literal) => {
        concat!(
            "EXISTS (SELECT 1 FROM ledger_accounts WHERE user_id = ",
            $user,
            " AND kind = 'debt' AND balance > 0)"
        )
    };
}
pub(crate) use owes_debt_sql;

const TRANSFER: &str = "WITH d AS ( \
         UPDATE ledger_accounts SET balance = balance + $9::bigint, \
                                    pending_out = pending_out + $10::bigint \
         WHERE $11::bool AND id = $1 \
           AND balance + $9::bigint - pending_out - $10::bigint >= 0 \
         RETURNING id), \
     c AS ( \
         UPDATE ledger_accounts SET balance = balance + $12::bigint \
         WHERE $13::bool AND id = $2 AND balance + $12::bigint - pending_out >= 0 \
           AND (NOT $11::bool OR EXISTS (SELECT 1 FROM d)) \
         RETURNING id), \
     n AS (SELECT nextval('ledger_transfers_id_seq') AS id), \
     t AS ( \
         INSERT INTO ledger_transfers (id, debit_account, credit_account, amount, currency, code, \
                                       state, group_id, metadata, settled_at) \
         SELECT n.id, $1, $2, $3, $4, $5, $6::text, coalesce($7::bigint, n.id), $8::text::jsonb, \
                CASE WHEN $6::text = 'posted' THEN now() END \
         FROM n \
         WHERE (NOT $11::bool OR EXISTS (SELECT 1 FROM d)) \
           AND (NOT $13::bool OR EXISTS (SELECT 1 FROM c)) \
         RETURNING id, group_id) \
     SELECT EXISTS (SELECT 1 FROM d), EXISTS (SELECT 1 FROM c), \
            (SELECT id FROM t), (SELECT group_id FROM t)";

/// What the ledger refuses in any transfer before it reaches the database.
pub fn check_transfer(transfer: &NewTransfer) -> Result<(), Refused> {
    if transfer.amount <= 0 {
        return Err(Refused::Invalid("a transfer's amount must be positive"));
    }
    if transfer.debit.id == transfer.credit.id {
        return Err(Refused::Invalid("a transfer needs two accounts"));
    }
    if transfer.debit.currency != transfer.credit.currency {
        return Err(Refused::Invalid("a transfer's accounts share its currency"));
    }
    Ok(())
}

/// Makes a posted transfer: the debit account must cover it (its available balance), else it
/// is refused and nothing changes.
pub fn transfer(
    conn: &mut DbConn,
    transfer: &NewTransfer,
) -> Result<Result<Made, Refused>, DbError> {
    if let Err(refused) = check_transfer(transfer) {
        return Ok(Err(refused));
    }
    let debit = balance_delta(transfer.debit.kind, Side::Debit, transfer.amount);
    let credit = balance_delta(transfer.credit.kind, Side::Credit, transfer.amount);
    run_transfer(conn, transfer, "posted", debit, 0, credit)
}

/// Places a hold: a pending transfer that reserves the amount on the debit account (its
/// `pending_out`) and moves nothing until [`post`]; [`void`] gives it back. Refused when the
/// account's available balance is below the amount. A debt account holds nothing.
pub fn hold(conn: &mut DbConn, transfer: &NewTransfer) -> Result<Result<Made, Refused>, DbError> {
    if let Err(refused) = check_transfer(transfer) {
        return Ok(Err(refused));
    }
    if transfer.debit.kind == Kind::Debt {
        return Ok(Err(Refused::Invalid("a debt account holds nothing")));
    }
    let pending = transfer.debit.kind.is_user().then_some(0);
    run_transfer(conn, transfer, "pending", pending, transfer.amount, None)
}

fn run_transfer(
    conn: &mut DbConn,
    transfer: &NewTransfer,
    state: &str,
    debit_delta: Option<i64>,
    debit_pending: i64,
    credit_delta: Option<i64>,
) -> Result<Result<Made, Refused>, DbError> {
    let metadata = transfer.metadata.to_string();
    let row = conn.query_one(
        TRANSFER,
        &[
            &transfer.debit.id,
            &transfer.credit.id,
            &transfer.amount,
            &transfer.debit.currency.as_str(),
            &transfer.code,
            &state,
            &transfer.group,
            &metadata,
            &debit_delta.unwrap_or(0),
            &debit_pending,
            &debit_delta.is_some(),
            &credit_delta.unwrap_or(0),
            &credit_delta.is_some(),
        ],
    )?;
    let (debited, credited): (bool, bool) = (row.get(0), row.get(1));
    let made: (Option<i64>, Option<i64>) = (row.get(2), row.get(3));
    match made {
        (Some(id), Some(group_id)) => Ok(Ok(Made { id, group_id })),
        _ if debit_delta.is_some() && !debited => Ok(Err(Refused::Insufficient {
            account: transfer.debit.kind,
        })),
        // The debit was applied and the credit refused (paying more debt than owed): the
        // statement changed a row without its transfer, so the whole write must roll back.
        _ if credit_delta.is_some() && !credited => Err(DbError::Query(format!(
            "the ledger refused a credit to a {} account",
            transfer.credit.kind.as_str()
        ))),
        _ => Err(bad_row("transfer outcome")),
    }
}

/// A pending transfer settled by [`post`] or [`void`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub id: i64,
    pub group_id: i64,
    pub debit_account: i64,
    pub credit_account: i64,
    pub amount: i64,
    pub currency: Currency,
    pub code: String,
    pub metadata: Value,
}

const SETTLE: &str = "WITH t AS ( \
         UPDATE ledger_transfers SET state = $2::text, settled_at = now() \
         WHERE id = $1 AND state = 'pending' \
         RETURNING id, group_id, debit_account, credit_account, amount, currency, code, metadata), \
     d AS ( \
         UPDATE ledger_accounts a \
         SET pending_out = a.pending_out - t.amount, \
             balance = a.balance - CASE WHEN $2::text = 'posted' THEN t.amount ELSE 0 END \
         FROM t WHERE a.id = t.debit_account AND a.user_id IS NOT NULL \
         RETURNING a.id), \
     c AS ( \
         UPDATE ledger_accounts a \
         SET balance = a.balance + CASE WHEN a.kind = 'debt' THEN -t.amount ELSE t.amount END \
         FROM t WHERE $2::text = 'posted' AND a.id = t.credit_account AND a.user_id IS NOT NULL \
         RETURNING a.id) \
     SELECT t.id, t.group_id, t.debit_account, t.credit_account, t.amount, t.currency, t.code, \
            t.metadata::text, (SELECT count(*) FROM d), (SELECT count(*) FROM c) \
     FROM t";

/// The user rows a settle changes, locked first (in id order), before the transfer's row: so
/// every write on a user's accounts takes that user's rows before anything else, and two
/// settles of one user's holds in two group commits never wait on each other crosswise.
const LOCK_SETTLE: &str = "SELECT a.id FROM ledger_transfers t \
     JOIN ledger_accounts a ON a.id IN (t.debit_account, t.credit_account) \
     WHERE t.id = $1 AND t.state = 'pending' AND a.user_id IS NOT NULL \
     ORDER BY a.id FOR UPDATE OF a";

fn settle(conn: &mut DbConn, id: i64, state: &str) -> Result<Option<Settled>, DbError> {
    conn.query(LOCK_SETTLE, &[&id])?;
    let Some(row) = conn.query_opt(SETTLE, &[&id, &state])? else {
        return Ok(None);
    };
    let metadata: String = row.get(7);
    Ok(Some(Settled {
        id: row.get(0),
        group_id: row.get(1),
        debit_account: row.get(2),
        credit_account: row.get(3),
        amount: row.get(4),
        currency: currency_of(row.get(5))?,
        code: row.get(6),
        metadata: serde_json::from_str(&metadata).unwrap_or(Value::Null),
    }))
}

/// Posts a pending transfer: the held amount leaves the debit account and reaches the credit
/// one. `None`: no pending transfer has this id (already posted or voided: never both).
pub fn post(conn: &mut DbConn, id: i64) -> Result<Option<Settled>, DbError> {
    settle(conn, id, "posted")
}

/// Voids a pending transfer: the hold is released, nothing moves. `None` as for [`post`].
pub fn void(conn: &mut DbConn, id: i64) -> Result<Option<Settled>, DbError> {
    settle(conn, id, "voided")
}

/// One of a user's accounts as balances show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountBalance {
    pub kind: Kind,
    pub currency: Currency,
    /// For debt: what the user owes.
    pub balance: i64,
    /// Held (pending debits).
    pub pending_out: i64,
    /// On its way in (pending credits, e.g. commission not yet available).
    pub pending_in: i64,
}

impl AccountBalance {
    pub fn available(&self) -> i64 {
        self.balance - self.pending_out
    }
}

macro_rules! balances_sql {
    ($which:literal) => {
        concat!(
            // What is on its way in, summed through the partial index of pending credits, and
            // only for an account marked as ever having received one (migration 0013): most
            // accounts never do, and the probe was most of the read's cost. A scalar subquery
            // runs once per marked row and has no hashed form; the correlated `EXISTS` it once
            // was let the planner hash every pending transfer instead, which it did with the
            // statistics of a table that had just grown, and a replica session keeps that
            // generic plan. The rows come in no particular order: readers find an account by
            // its kind and currency, so the replica does not sort them.
            "SELECT a.user_id, a.kind, a.currency, a.balance, a.pending_out, \
                 CASE WHEN a.receives_pending \
                      THEN coalesce((SELECT sum(t.amount) FROM ledger_transfers t \
                                     WHERE t.credit_account = a.id AND t.state = 'pending'), 0) \
                      ELSE 0 END::bigint \
             FROM ledger_accounts a WHERE a.user_id ",
            $which
        )
    };
}

/// A user's accounts, every currency they have one in, as a lookup by user id (the key in
/// column 0): concurrent balance reads waiting for one node go out as one statement.
pub static BALANCES: Lookup = Lookup {
    one: balances_sql!("= $1"),
    many: balances_sql!("= ANY($1)"),
};

/// The accounts out of [`BALANCES`]' rows for one user.
pub fn balances_of(rows: &[&Row]) -> Result<Vec<AccountBalance>, DbError> {
    rows.iter()
        .map(|row| {
            Ok(AccountBalance {
                kind: kind_of(row.get(1))?,
                currency: currency_of(row.get(2))?,
                balance: row.get(3),
                pending_out: row.get(4),
                pending_in: row.get(5),
            })
        })
        .collect()
}

/// The user's accounts, every currency they have one in.
pub fn balances(conn: &mut DbConn, user_id: i64) -> Result<Vec<AccountBalance>, DbError> {
    let rows = conn.query(BALANCES.one, &[&user_id])?;
    balances_of(&rows.iter().collect::<Vec<_>>())
}

/// A transfer as its user sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferView {
    pub id: i64,
    pub group_id: i64,
    pub code: String,
    pub state: String,
    pub amount: i64,
    pub currency: Currency,
    /// The kind of each side; another user's account is named by kind only, never by owner.
    pub from: Kind,
    pub to: Kind,
    pub from_mine: bool,
    pub to_mine: bool,
    pub metadata: Value,
    pub created_at: String,
    pub settled_at: Option<String>,
}

const SELECT_TRANSFERS: &str = "SELECT t.id, t.group_id, t.code, t.state, t.amount, t.currency, \
         d.kind, c.kind, d.user_id IS NOT DISTINCT FROM $1, c.user_id IS NOT DISTINCT FROM $1, \
         t.metadata::text, \
         to_char(t.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
         to_char(t.settled_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
     FROM ( \
         (SELECT t.id FROM ledger_transfers t JOIN ledger_accounts a ON a.id = t.debit_account \
          WHERE a.user_id = $1 AND t.id < $2 ORDER BY t.id DESC LIMIT $3) \
         UNION \
         (SELECT t.id FROM ledger_transfers t JOIN ledger_accounts a ON a.id = t.credit_account \
          WHERE a.user_id = $1 AND t.id < $2 ORDER BY t.id DESC LIMIT $3) \
     ) mine \
     JOIN ledger_transfers t ON t.id = mine.id \
     JOIN ledger_accounts d ON d.id = t.debit_account \
     JOIN ledger_accounts c ON c.id = t.credit_account \
     ORDER BY t.id DESC LIMIT $3";

fn transfer_view(row: &Row) -> Result<TransferView, DbError> {
    let metadata: String = row.get(10);
    Ok(TransferView {
        id: row.get(0),
        group_id: row.get(1),
        code: row.get(2),
        state: row.get(3),
        amount: row.get(4),
        currency: currency_of(row.get(5))?,
        from: kind_of(row.get(6))?,
        to: kind_of(row.get(7))?,
        from_mine: row.get(8),
        to_mine: row.get(9),
        metadata: serde_json::from_str(&metadata).unwrap_or(Value::Null),
        created_at: row.get(11),
        settled_at: row.get(12),
    })
}

/// The user's transfers, newest first, with ids below `before` (`None`: from the newest), at
/// most `limit`.
pub fn transfers_page(
    conn: &mut DbConn,
    user_id: i64,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<TransferView>, DbError> {
    let before = before.unwrap_or(i64::MAX);
    conn.query(SELECT_TRANSFERS, &[&user_id, &before, &limit])?
        .iter()
        .map(transfer_view)
        .collect()
}

/// One account the check found wrong.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AccountFinding {
    pub account_id: i64,
    pub user_id: Option<i64>,
    pub kind: String,
    pub currency: String,
    pub stored_balance: i64,
    pub recomputed_balance: i64,
    pub stored_pending_out: i64,
    pub recomputed_pending_out: i64,
    /// A pending credit into the account, which does not carry the mark that makes the balance
    /// read count it (`receives_pending`, migration 0013): its balances would leave it out.
    pub pending_in_unmarked: bool,
}

/// One currency's totals.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CurrencyTotals {
    pub currency: String,
    pub posted_transfers: i64,
    pub total_debits: i64,
    pub total_credits: i64,
    /// The sum of every account's signed position (credits - debits), user accounts by their
    /// stored balance: 0 when the books balance and no stored balance drifted.
    pub net_of_positions: i64,
    pub balanced: bool,
}

/// A system account's balance, derived from its transfers (credits - debits).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SystemBalance {
    pub kind: String,
    pub currency: String,
    pub balance: i64,
}

/// What the ledger check found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckReport {
    pub ok: bool,
    pub accounts_checked: i64,
    pub currencies: Vec<CurrencyTotals>,
    /// Stored balance or pending differing from the recomputation, or a pending credit the
    /// balance read would miss (at most 100 listed).
    pub drift: Vec<AccountFinding>,
    /// User accounts below zero, stored or recomputed (at most 100 listed).
    pub negative: Vec<AccountFinding>,
    pub system: Vec<SystemBalance>,
}

/// One statement, so one snapshot: per account, the recomputation from its transfers; per
/// currency, the totals. Rows: ('account' | 'currency', ...).
const CHECK: &str = "WITH moves AS ( \
         SELECT debit_account AS account, \
                CASE WHEN state = 'posted' THEN -amount ELSE 0 END AS net, \
                CASE WHEN state = 'pending' THEN amount ELSE 0 END AS held, false AS incoming \
         FROM ledger_transfers WHERE state <> 'voided' \
         UNION ALL \
         SELECT credit_account, CASE WHEN state = 'posted' THEN amount ELSE 0 END, 0, \
                state = 'pending' \
         FROM ledger_transfers WHERE state <> 'voided'), \
     per_account AS ( \
         SELECT a.id, a.user_id, a.kind, a.currency, a.balance, a.pending_out, \
                coalesce(sum(m.net), 0)::bigint AS net, coalesce(sum(m.held), 0)::bigint AS held, \
                coalesce(bool_or(m.incoming), false) AND NOT a.receives_pending AS unmarked \
         FROM ledger_accounts a LEFT JOIN moves m ON m.account = a.id \
         GROUP BY a.id), \
     checked AS ( \
         SELECT *, CASE WHEN kind = 'debt' THEN -net ELSE net END AS recomputed, \
                CASE WHEN user_id IS NULL THEN net \
                     WHEN kind = 'debt' THEN -balance ELSE balance END AS position \
         FROM per_account), \
     totals AS ( \
         SELECT currency, count(*) AS transfers, coalesce(sum(amount), 0)::bigint AS amount \
         FROM ledger_transfers WHERE state = 'posted' GROUP BY currency), \
     judged AS ( \
         SELECT *, (balance <> recomputed OR pending_out <> held OR unmarked) AS drifted, \
                (balance < 0 OR recomputed < 0 OR balance - pending_out < 0) AS negative \
         FROM checked WHERE user_id IS NOT NULL) \
     SELECT 'account', id, user_id, kind, currency, balance, recomputed, pending_out, held, \
            drifted, negative, unmarked \
     FROM judged WHERE drifted OR negative \
     UNION ALL \
     SELECT 'system', NULL, NULL, kind, currency, net, net, 0, held, false, false, false \
     FROM checked WHERE user_id IS NULL \
     UNION ALL \
     SELECT 'currency', coalesce(t.transfers, 0), (SELECT count(*) FROM ledger_accounts), \
            NULL, c.currency, coalesce(t.amount, 0), coalesce(t.amount, 0), \
            coalesce((SELECT sum(position) FROM checked WHERE checked.currency = c.currency), 0)::bigint, \
            0, false, false, false \
     FROM (VALUES ('BRL'), ('USD')) AS c (currency) LEFT JOIN totals t ON t.currency = c.currency";

/// Recomputes every balance from the transfers: per currency debits = credits and the signed
/// positions sum to zero; every stored user balance and pending equal their recomputation; no
/// user account below zero; every user account with a pending credit marked `receives_pending`.
pub fn check(conn: &mut DbConn) -> Result<CheckReport, DbError> {
    const LISTED: usize = 100;
    let mut report = CheckReport {
        ok: true,
        accounts_checked: 0,
        currencies: Vec::new(),
        drift: Vec::new(),
        negative: Vec::new(),
        system: Vec::new(),
    };
    for row in conn.query(CHECK, &[])? {
        let what: &str = row.get(0);
        match what {
            "account" => {
                let finding = AccountFinding {
                    account_id: row.get::<_, Option<i64>>(1).unwrap_or_default(),
                    user_id: row.get(2),
                    kind: row.get(3),
                    currency: row.get(4),
                    stored_balance: row.get(5),
                    recomputed_balance: row.get(6),
                    stored_pending_out: row.get(7),
                    recomputed_pending_out: row.get(8),
                    pending_in_unmarked: row.get(11),
                };
                report.ok = false;
                if row.get::<_, bool>(10) && report.negative.len() < LISTED {
                    report.negative.push(finding.clone());
                }
                if row.get::<_, bool>(9) && report.drift.len() < LISTED {
                    report.drift.push(finding);
                }
            }
            "system" => report.system.push(SystemBalance {
                kind: row.get(3),
                currency: row.get(4),
                balance: row.get(5),
            }),
            _ => {
                report.accounts_checked = row.get::<_, Option<i64>>(2).unwrap_or_default();
                let net: i64 = row.get(7);
                let totals = CurrencyTotals {
                    currency: row.get(4),
                    posted_transfers: row.get::<_, Option<i64>>(1).unwrap_or_default(),
                    total_debits: row.get(5),
                    total_credits: row.get(6),
                    net_of_positions: net,
                    balanced: net == 0,
                };
                report.ok &= totals.balanced;
                report.currencies.push(totals);
            }
        }
    }
    Ok(report)
}
