//! The financial API under `/api/enterprise/financial/` (the original's prefix): thin handlers
//! over [`crate::ledger`].
//!
//! - `GET balances` (a session, or a key with `read`): the caller's own accounts per currency.
//! - `GET transactions?cursor=&limit=` (same): the caller's transfers, newest first; `cursor`
//!   is the `next_cursor` of the page before.
//! - `POST recharges` `{amount}` (a session, or a key with `trade`; `Idempotency-Key`): 201
//!   with a recharge awaiting payment; 422 below the minimum.
//! - `POST webhooks/payment` (the payment provider; signed): credits a paid recharge once.
//! - `GET ledger/check` (an admin session): the ledger recomputed from its transfers.
//!
//! Amounts are integers in minor units (centavos, cents), in the caller's currency.
//!
//! Every money POST goes through [`idempotent`]: one `db().write` closure holds the
//! idempotency record, the effect and its transfers (one savepoint of a group commit). Its
//! answer carries `X-Commit-LSN`; a read that sends it back as `X-Min-LSN` sees the write
//! (read from a replica that has replayed it, else the primary).

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::access::{Accounts, Principal};
use super::handlers::parse_form;
use super::users::{db_error, min_position, COMMIT_LSN_HEADER};
use crate::db::{DbConn, DbError};
use crate::http::{Reply, Request, Response, StatusCode};
use crate::ledger::idempotency::{self, Answer, KeyError, Keyed, Outcome};
use crate::ledger::payment::{self, Event};
use crate::ledger::rules::{self, AmountError, Currency, Figures, Kind};
use crate::ledger::store::{self, AccountBalance, NewTransfer, TransferView};

/// The path prefix of every financial route.
pub const PREFIX: &str = "/api/enterprise/financial/";

fn error_answer(status: u16, code: &str, message: &str) -> Answer {
    Answer::json(
        status,
        &json!({ "error": { "code": code, "message": message } }),
    )
}

/// Runs a money POST once per (caller, `Idempotency-Key`): `effect` runs inside one write
/// with the idempotency record (see [`crate::ledger::idempotency`]) and answers; its answer
/// (a 4xx included) is stored and replayed byte for byte with `Idempotency-Replayed: true`.
/// Without the header: 400; the key in flight elsewhere: 409; used for another request: 422.
/// An `Err` from `effect` stores nothing and answers as the database error.
pub fn idempotent<F>(
    accounts: &Accounts,
    caller: &Principal,
    request: &Request<'_>,
    mut effect: F,
) -> Reply
where
    F: FnMut(&mut DbConn) -> Result<Answer, DbError> + Send + 'static,
{
    let key = match idempotency::parse_key(request.header(idempotency::HEADER)) {
        Ok(key) => key,
        Err(KeyError::Missing) => return Response::error(
            StatusCode::BAD_REQUEST,
            "idempotency_key_required",
            "a money request needs an Idempotency-Key header (1 to 255 visible ASCII characters)",
        )
        .into(),
        Err(KeyError::Malformed) => {
            return Response::error(
                StatusCode::BAD_REQUEST,
                "bad_idempotency_key",
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            )
            .into()
        }
    };
    let keyed = Keyed {
        user_id: caller.user_id,
        key,
        fingerprint: idempotency::fingerprint(request.method.as_str(), request.path, request.body),
    };
    let pending = accounts
        .db()
        .write(move |conn| idempotency::run(conn, &keyed, &mut effect));
    Reply::Later(Box::pin(async move {
        match pending.await {
            Ok(written) => {
                let lsn = written.commit_position.to_string();
                match written.value {
                    Outcome::Fresh(answer) => answer_response(answer),
                    Outcome::Replayed(answer) => {
                        answer_response(answer).with_header(idempotency::REPLAYED_HEADER, "true")
                    }
                    Outcome::InFlight => Response::error(
                        StatusCode(409),
                        "idempotency_key_in_flight",
                        "a request with this Idempotency-Key is still being processed; retry later",
                    )
                    .with_header("Retry-After", "1"),
                    Outcome::Reused => Response::error(
                        StatusCode(422),
                        "idempotency_key_reused",
                        "this Idempotency-Key was used for a different request",
                    ),
                }
                .with_header(COMMIT_LSN_HEADER, lsn)
            }
            Err(e) => db_error(&e),
        }
    }))
}

fn answer_response(answer: Answer) -> Response {
    Response::json(StatusCode(answer.status), answer.body)
}

/// One account in the balances body. Fields in alphabetical order: the body is written
/// straight from these types, byte for byte what a `serde_json::Value` (sorted keys) gave.
#[derive(Debug, Serialize)]
pub struct AccountView {
    available: i64,
    balance: i64,
    incoming: i64,
    pending: i64,
}

impl AccountView {
    fn of(account: Option<&AccountBalance>) -> AccountView {
        let (balance, pending, incoming) =
            account.map_or((0, 0, 0), |a| (a.balance, a.pending_out, a.pending_in));
        AccountView {
            available: balance - pending,
            balance,
            incoming,
            pending,
        }
    }
}

/// One currency in the balances body (fields in alphabetical order, as [`AccountView`]'s).
#[derive(Debug, Serialize)]
pub struct CurrencyView {
    admin_credit: AccountView,
    available: i64,
    commission: AccountView,
    debt: i64,
    pending: i64,
    real: AccountView,
    withdrawable: i64,
}

/// The balances body: per currency, the three balances (with holds and what is on its way
/// in), the debt, the total held and the total available. Typed rather than built as a
/// `Value`: this is the hottest read a user makes, and the tree of maps cost more than the
/// query's rows.
#[derive(Debug, Serialize)]
pub struct BalancesView {
    balances: BTreeMap<&'static str, CurrencyView>,
    user_id: i64,
}

pub fn balances_view(user_id: i64, list: &[AccountBalance]) -> BalancesView {
    let mut balances = BTreeMap::new();
    for currency in Currency::ALL {
        let find = |kind: Kind| {
            list.iter()
                .find(|a| a.currency == currency && a.kind == kind)
        };
        let spendable = [Kind::Real, Kind::AdminCredit, Kind::Commission];
        let pending: i64 = spendable
            .iter()
            .filter_map(|k| find(*k))
            .map(|a| a.pending_out)
            .sum();
        let available: i64 = spendable
            .iter()
            .filter_map(|k| find(*k))
            .map(AccountBalance::available)
            .sum();
        let withdrawable: i64 = [Kind::Real, Kind::Commission]
            .iter()
            .filter_map(|k| find(*k))
            .map(AccountBalance::available)
            .sum();
        balances.insert(
            currency.as_str(),
            CurrencyView {
                admin_credit: AccountView::of(find(Kind::AdminCredit)),
                available,
                commission: AccountView::of(find(Kind::Commission)),
                debt: find(Kind::Debt).map_or(0, |a| a.balance),
                pending,
                real: AccountView::of(find(Kind::Real)),
                withdrawable,
            },
        );
    }
    BalancesView { balances, user_id }
}

/// `GET /api/enterprise/financial/balances`.
pub fn balances(accounts: &Accounts, caller: &Principal, request: &Request<'_>) -> Reply {
    let min = match min_position(request) {
        Ok(min) => min,
        Err(response) => return response.into(),
    };
    let user_id = caller.user_id;
    let pending = accounts
        .db()
        .lookup_rows(min, &store::BALANCES, user_id, store::balances_of);
    Reply::Later(Box::pin(async move {
        match pending.await.and_then(|list| list) {
            // Integers under fixed keys: serialising them cannot fail.
            Ok(list) => Response::json(
                StatusCode::OK,
                serde_json::to_string(&balances_view(user_id, &list)).unwrap_or_default(),
            ),
            Err(e) => db_error(&e),
        }
    }))
}

const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 200;

/// Reads `cursor` (a transfer id, exclusive) and `limit` (1 to [`MAX_PAGE`]).
pub(super) fn page_of(request: &Request<'_>) -> Result<(Option<i64>, i64), Response> {
    let bad = |message: &str| Response::error(StatusCode::BAD_REQUEST, "bad_page", message);
    let cursor = match request.query_param("cursor").filter(|c| !c.is_empty()) {
        None => None,
        Some(text) => Some(
            text.parse::<i64>()
                .ok()
                .filter(|c| *c > 0)
                .ok_or_else(|| bad("cursor must be the next_cursor of the page before"))?,
        ),
    };
    let limit = match request.query_param("limit").filter(|l| !l.is_empty()) {
        None => DEFAULT_PAGE,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_PAGE).contains(l))
            .ok_or_else(|| bad("limit must be a whole number from 1 to 200"))?,
    };
    Ok((cursor, limit))
}

fn transfer_json(t: &TransferView) -> Value {
    let direction = match (t.from_mine, t.to_mine) {
        (true, true) => "internal",
        (true, false) => "out",
        _ => "in",
    };
    json!({
        "id": t.id,
        "group_id": t.group_id,
        "code": t.code,
        "state": t.state,
        "amount": t.amount,
        "currency": t.currency.as_str(),
        "direction": direction,
        "from": t.from.as_str(),
        "to": t.to.as_str(),
        "metadata": t.metadata,
        "created_at": t.created_at,
        "settled_at": t.settled_at,
    })
}

/// `GET /api/enterprise/financial/transactions?cursor=&limit=`.
pub fn transactions(accounts: &Accounts, caller: &Principal, request: &Request<'_>) -> Reply {
    own_page(
        accounts,
        caller,
        request,
        "transactions",
        store::transfers_page,
        |t| (t.id, transfer_json(&t)),
    )
}

/// Reads a page of a user's rows: `(conn, user_id, cursor, limit)`, newest first.
pub(super) type PageQuery<T> = fn(&mut DbConn, i64, Option<i64>, i64) -> Result<Vec<T>, DbError>;

/// A page of the caller's own rows, newest first (`?cursor=&limit=`; read-your-writes through
/// [`MIN_LSN_HEADER`]): `{ <key>: [...], "next_cursor": the last row's id when the page is
/// full, else null }`. `fetch(conn, user_id, cursor, limit)` reads the rows; `id_and_json`
/// gives each row's id (the cursor) and its body.
pub(super) fn own_page<T: Send + 'static>(
    accounts: &Accounts,
    caller: &Principal,
    request: &Request<'_>,
    key: &'static str,
    fetch: PageQuery<T>,
    id_and_json: fn(T) -> (i64, Value),
) -> Reply {
    let (min, (cursor, limit)) =
        match min_position(request).and_then(|m| Ok((m, page_of(request)?))) {
            Ok(parts) => parts,
            Err(response) => return response.into(),
        };
    let user_id = caller.user_id;
    let pending = accounts
        .db()
        .read(min, move |conn| fetch(conn, user_id, cursor, limit));
    Reply::Later(Box::pin(async move {
        match pending.await {
            Ok(page) => {
                let full = page.len() as i64 == limit;
                let (ids, items): (Vec<i64>, Vec<Value>) =
                    page.into_iter().map(id_and_json).unzip();
                let next = ids.last().copied().filter(|_| full);
                let mut body = serde_json::Map::new();
                body.insert(key.to_string(), Value::Array(items));
                body.insert("next_cursor".to_string(), json!(next));
                Response::json(StatusCode::OK, Value::Object(body).to_string())
            }
            Err(e) => db_error(&e),
        }
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RechargeForm {
    amount: Value,
}

fn amount_error(error: AmountError, currency: Currency) -> Answer {
    match error {
        AmountError::BelowMinimum(minimum) => Answer::json(
            422,
            &json!({ "error": {
                "code": "amount_below_minimum",
                "message": format!("the smallest recharge is {}", rules::display(minimum, currency)),
                "minimum": minimum,
                "currency": currency.as_str(),
            }}),
        ),
        AmountError::TooLarge => error_answer(422, "amount_too_large", "the amount is too large"),
        AmountError::NotPositiveInteger => error_answer(
            422,
            "invalid_amount",
            "amount must be a whole positive number of minor units (centavos, cents)",
        ),
    }
}

const INSERT_RECHARGE: &str = "INSERT INTO ledger_recharges (user_id, currency, amount) \
     VALUES ($1, $2, $3) \
     RETURNING id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

/// The recharge's effect: checks the amount (as read from the body) in the caller's
/// currency, records the recharge.
fn create_recharge(
    conn: &mut DbConn,
    user_id: i64,
    amount: &Result<i64, AmountError>,
    figures: &Figures,
) -> Result<Answer, DbError> {
    let Some(currency) = store::user_currency(conn, user_id)? else {
        return Ok(error_answer(
            404,
            "user_not_found",
            "the caller's user is gone",
        ));
    };
    let checked = amount
        .clone()
        .and_then(|amount| figures.check_recharge(currency, amount).map(|()| amount));
    let amount = match checked {
        Ok(amount) => amount,
        Err(e) => return Ok(amount_error(e, currency)),
    };
    let row = conn.query_one(INSERT_RECHARGE, &[&user_id, &currency.as_str(), &amount])?;
    let id: i64 = row.get(0);
    Ok(Answer::json(
        201,
        &json!({ "recharge": {
            "id": id,
            "amount": amount,
            "currency": currency.as_str(),
            "state": "awaiting_payment",
            "bonus": figures.recharge_bonus(currency, amount),
            "payment_reference": format!("rch_{id}"),
            "created_at": row.get::<_, String>(1),
        }}),
    ))
}

/// `POST /api/enterprise/financial/recharges` `{amount}`.
pub fn recharge(accounts: &Accounts, caller: &Principal, request: &Request<'_>) -> Reply {
    let form: RechargeForm = match parse_form(
        request.body,
        "expected {\"amount\": whole number of minor units}",
    ) {
        Ok(form) => form,
        Err(reply) => return reply,
    };
    let user_id = caller.user_id;
    let figures = accounts.shared.figures.clone();
    // The amount's own shape is checked inside, with the minimum: both are final answers.
    let amount = rules::parse_amount(&form.amount);
    idempotent(accounts, caller, request, move |conn| {
        create_recharge(conn, user_id, &amount, &figures)
    })
}

/// What a webhook delivery came to.
enum Delivery {
    Credited {
        recharge_id: i64,
        user_id: i64,
        amount: i64,
        debt_paid: i64,
        bonus: i64,
        currency: Currency,
    },
    /// This event, or another for the same recharge, was taken before.
    Duplicate,
    UnknownRecharge,
    Mismatch,
}

const LOCK_RECHARGE: &str =
    "SELECT user_id, currency, amount, state FROM ledger_recharges WHERE id = $1 FOR UPDATE";
const INSERT_EVENT: &str = "INSERT INTO payment_events (event_id, type, recharge_id) \
     VALUES ($1, $2, $3) ON CONFLICT (event_id) DO NOTHING RETURNING event_id";
const MARK_PAID: &str = "UPDATE ledger_recharges \
     SET state = 'paid', paid_at = now(), payment_event = $2 \
     WHERE id = $1 AND state = 'awaiting_payment'";

/// Takes a payment event in: at most once per event id and per recharge, the recharge is
/// credited (payment clearing -> real), any debt paid first (real -> debt), and a bonus from
/// the threshold up (promotions -> admin credit), all in one group.
fn take_payment(
    conn: &mut DbConn,
    event: &Event,
    recharge_id: i64,
    amount: i64,
    currency: Currency,
    figures: &Figures,
) -> Result<Delivery, DbError> {
    let Some(row) = conn.query_opt(LOCK_RECHARGE, &[&recharge_id])? else {
        return Ok(Delivery::UnknownRecharge);
    };
    let (user_id, owed_currency, owed, state): (i64, String, i64, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if owed_currency != currency.as_str() || owed != amount {
        return Ok(Delivery::Mismatch);
    }
    let fresh = conn
        .query_opt(INSERT_EVENT, &[&event.id, &event.kind, &recharge_id])?
        .is_some();
    if !fresh || state != "awaiting_payment" {
        return Ok(Delivery::Duplicate);
    }
    conn.query(MARK_PAID, &[&recharge_id, &event.id])?;
    let mine = store::open_user_accounts(conn, user_id, currency)?;
    let clearing = store::system_account(conn, Kind::PaymentClearing, currency)?;
    let metadata = json!({ "recharge_id": recharge_id, "payment_event": event.id });
    let refused = |r: store::Refused| DbError::Query(format!("recharge transfer refused: {r:?}"));
    let credit = store::transfer(
        conn,
        &NewTransfer {
            debit: clearing,
            credit: mine.real,
            amount,
            code: "recharge",
            group: None,
            metadata: metadata.clone(),
        },
    )?
    .map_err(refused)?;
    let (debt, _) = store::lock_balance(conn, &mine.debt)?;
    let (debt_paid, _) = rules::debt_first(amount, debt);
    if debt_paid > 0 {
        store::transfer(
            conn,
            &NewTransfer {
                debit: mine.real,
                credit: mine.debt,
                amount: debt_paid,
                code: "debt_payment",
                group: Some(credit.group_id),
                metadata: metadata.clone(),
            },
        )?
        .map_err(refused)?;
    }
    let bonus = figures.recharge_bonus(currency, amount);
    if bonus > 0 {
        let promotions = store::system_account(conn, Kind::Promotions, currency)?;
        store::transfer(
            conn,
            &NewTransfer {
                debit: promotions,
                credit: mine.admin_credit,
                amount: bonus,
                code: "recharge_bonus",
                group: Some(credit.group_id),
                metadata,
            },
        )?
        .map_err(refused)?;
    }
    Ok(Delivery::Credited {
        recharge_id,
        user_id,
        amount,
        debt_paid,
        bonus,
        currency,
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a payment event pays: (recharge id, amount, currency).
type Paid = (i64, i64, Currency);

/// Parses a delivery that passed its signature: the event, and for a payment what it pays.
fn parse_event(body: &[u8]) -> Result<(Event, Option<Paid>), Response> {
    let bad = |message: &str| Response::error(StatusCode::BAD_REQUEST, "bad_event", message);
    let event: Event = serde_json::from_slice(body).map_err(|_| {
        bad("expected {\"id\", \"type\", \"data\": {\"recharge_id\", \"amount\", \"currency\"}}")
    })?;
    if event.id.is_empty() || event.id.len() > 255 {
        return Err(bad("the event id must be 1 to 255 characters"));
    }
    if event.kind != payment::PAYMENT_SUCCEEDED {
        return Ok((event, None));
    }
    let data = event
        .data
        .as_ref()
        .ok_or_else(|| bad("a payment event needs data"))?;
    let amount = rules::parse_amount(&data.amount)
        .map_err(|_| bad("data.amount must be a whole positive number of minor units"))?;
    let currency =
        Currency::parse(&data.currency).ok_or_else(|| bad("data.currency must be BRL or USD"))?;
    let paid = (data.recharge_id, amount, currency);
    Ok((event, Some(paid)))
}

/// `POST /api/enterprise/financial/webhooks/payment`: the provider's signed event.
pub fn payment_webhook(accounts: Option<&Accounts>, request: &Request<'_>) -> Reply {
    let Some(accounts) = accounts else {
        return db_error(&DbError::NotConfigured).into();
    };
    let Some(secret) = accounts.shared.payment_webhook_secret.as_deref() else {
        return Response::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "payments_not_configured",
            "this server has no PAYMENT_WEBHOOK_SECRET",
        )
        .into();
    };
    let signature = request.header(payment::SIGNATURE_HEADER);
    if let Err(e) = payment::verify(secret, signature, request.body, unix_now()) {
        let (status, code, message) = e.describe();
        return Response::error(StatusCode(status), code, message).into();
    }
    let (event, paid) = match parse_event(request.body) {
        Ok(parsed) => parsed,
        Err(response) => return response.into(),
    };
    let Some((recharge_id, amount, currency)) = paid else {
        return Response::json(
            StatusCode::OK,
            json!({ "received": true, "ignored": event.kind }).to_string(),
        )
        .into();
    };
    let figures = accounts.shared.figures.clone();
    let pending = accounts
        .db()
        .write(move |conn| take_payment(conn, &event, recharge_id, amount, currency, &figures));
    Reply::Later(Box::pin(async move {
        let written = match pending.await {
            Ok(written) => written,
            Err(e) => return db_error(&e),
        };
        let lsn = written.commit_position.to_string();
        match written.value {
            Delivery::Credited {
                recharge_id,
                user_id,
                amount,
                debt_paid,
                bonus,
                currency,
            } => Response::json(
                StatusCode::OK,
                json!({
                    "received": true,
                    "credited": {
                        "recharge_id": recharge_id,
                        "user_id": user_id,
                        "amount": amount,
                        "debt_paid": debt_paid,
                        "bonus": bonus,
                        "currency": currency.as_str(),
                    },
                })
                .to_string(),
            ),
            Delivery::Duplicate => Response::json(
                StatusCode::OK,
                json!({ "received": true, "duplicate": true }).to_string(),
            ),
            Delivery::UnknownRecharge => Response::error(
                StatusCode::NOT_FOUND,
                "recharge_not_found",
                "no recharge has this id",
            ),
            Delivery::Mismatch => Response::error(
                StatusCode(422),
                "payment_mismatch",
                "the payment's amount or currency differs from the recharge's",
            ),
        }
        .with_header(COMMIT_LSN_HEADER, lsn)
    }))
}

/// `GET /api/enterprise/financial/ledger/check` (admin): on the primary, in one statement (one
/// snapshot), as a read: outside the group commit, whose writes it would hold up.
pub fn ledger_check(accounts: &Accounts, _: &Principal, _: &Request<'_>) -> Reply {
    let pending = accounts.db().read_primary(store::check);
    Reply::Later(Box::pin(async move {
        match pending.await {
            Ok(report) => Response::json(
                StatusCode::OK,
                serde_json::to_string(&report).unwrap_or_default(),
            ),
            Err(e) => db_error(&e),
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balances_list_both_currencies_and_totals() {
        let list = [
            AccountBalance {
                kind: Kind::Real,
                currency: Currency::Brl,
                balance: 10_000,
                pending_out: 6_000,
                pending_in: 0,
            },
            AccountBalance {
                kind: Kind::Commission,
                currency: Currency::Brl,
                balance: 500,
                pending_out: 0,
                pending_in: 300,
            },
            AccountBalance {
                kind: Kind::AdminCredit,
                currency: Currency::Brl,
                balance: 1_000,
                pending_out: 0,
                pending_in: 0,
            },
            AccountBalance {
                kind: Kind::Debt,
                currency: Currency::Brl,
                balance: 0,
                pending_out: 0,
                pending_in: 0,
            },
        ];
        let view = balances_view(7, &list);
        let text = serde_json::to_string(&view).unwrap();
        let body = serde_json::to_value(&view).unwrap();
        // The typed body is what a Value gave: the same keys in the same (sorted) order.
        assert_eq!(text, body.to_string());
        assert!(text.starts_with(r#"{"balances":{"BRL":{"admin_credit":{"available":1000,"#));
        let brl = &body["balances"]["BRL"];
        assert_eq!(brl["real"]["available"], 4_000);
        assert_eq!(brl["commission"]["incoming"], 300);
        assert_eq!(brl["pending"], 6_000);
        assert_eq!(brl["available"], 5_500);
        assert_eq!(brl["withdrawable"], 4_500);
        assert_eq!(body["balances"]["USD"]["real"]["balance"], 0);
        assert_eq!(body["balances"]["USD"]["debt"], 0);
    }
}
