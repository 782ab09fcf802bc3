//! The trading API under `/api/enterprise/trading/`: thin handlers over [`crate::trading`].
//!
//! - `POST exchange-accounts` `{api_key, secret, exchange?, testnet?}` (a session): the key is
//!   checked against the exchange (its balance is read), then kept with its secret sealed;
//!   201 without the secret. `DELETE exchange-accounts` removes it.
//! - `GET settings` (a session or a `read` key), `PUT settings` (a session or a `trade` key):
//!   leverage, stop-loss, take-profit, size; 422 out of bounds.
//! - `POST webhooks/signal` (the alert source, with the shared `SIGNAL_WEBHOOK_SECRET`): 202
//!   with the signal and its fan-out written; 200 with the first for an alert taken before;
//!   401 without the secret; 422 invalid or older than `SIGNAL_VALIDITY`.
//! - `GET positions` (a session or a `read` key): the caller's, newest first, a page at a
//!   time; `GET positions/{id}`: one of the caller's (404 for anyone else's);
//!   `POST positions/{id}/close` (a session or a `trade` key): 202 with the close intent, 409
//!   when closed or closing.
//! - `POST execute` (operators): a signal on behalf of the platform, the webhook's body without
//!   the secret and its answers; `GET signals/{id}` (operators): the signal and every
//!   subscriber's intent on it.
//! - `POST fx-rates` (operators): a day's recorded USD->BRL rate; deferred commissions are
//!   charged with it.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::access::{Accounts, Principal};
use super::financial;
use super::handlers::{parse_form, parse_json_body};
use super::users::{self, db_error, COMMIT_LSN_HEADER};
use crate::db::DbError;
use crate::exchange::{Credentials, ExchangeError};
use crate::http::{Reply, Request, Response, StatusCode};
use crate::ledger::commission;
use crate::ledger::per_currency::Currency;
use crate::trading::accounts as exchange_accounts;
use crate::trading::close;
use crate::trading::positions::{self, CloseRequest};
use crate::trading::settings::{self, Change};
use crate::trading::signal::{self, Origin, Taken};

/// The header that may carry the signal secret (TradingView sends only a body: there it is the
/// body's `secret`).
pub const SIGNAL_SECRET_HEADER: &str = "X-Signal-Secret";

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn unprocessable(code: &str, message: &str) -> Response {
    Response::error(StatusCode(422), code, message)
}

/// `POST /api/enterprise/trading/webhooks/signal`.
pub fn signal_webhook(accounts: Option<&Accounts>, request: &Request<'_>) -> Reply {
    let Some(accounts) = accounts else {
        return db_error(&DbError::NotConfigured).into();
    };
    let trading = &accounts.shared.trading;
    let Some(expected) = trading.webhook_secret.as_deref() else {
        return Response::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "signals_not_configured",
            "this server has no SIGNAL_WEBHOOK_SECRET",
        )
        .into();
    };
    // The depth-limited parser every body goes through; the secret may be inside.
    let form: Option<signal::Form> = parse_json_body(request.body).ok();
    let given: Option<Vec<u8>> = match request.header(SIGNAL_SECRET_HEADER) {
        Some(value) => Some(value.to_vec()),
        None => form
            .as_ref()
            .and_then(|f| f.secret.as_ref())
            .map(|s| s.as_bytes().to_vec()),
    };
    let matches = given
        .as_deref()
        .is_some_and(|given| given.len() == expected.len() && bool::from(given.ct_eq(expected)));
    if !matches {
        return Response::error(
            StatusCode(401),
            "bad_signal_secret",
            "the signal must carry the shared secret",
        )
        .into();
    }
    let Some(form) = form else {
        return Response::error(
            StatusCode::BAD_REQUEST,
            "bad_json",
            "expected a JSON object {signal, symbol, price, time, secret}",
        )
        .into();
    };
    take_signal(accounts, &form, Origin::Webhook)
}

/// Validates `form` as the webhook does and takes it: 202 with the signal and its fan-out
/// written, 200 with the first for an alert taken before, 422 invalid or stale.
fn take_signal(accounts: &Accounts, form: &signal::Form, origin: Origin) -> Reply {
    let validity = accounts.shared.trading.figures.signal_validity.as_millis() as i64;
    let signal = match signal::validate(form, unix_ms(), validity) {
        Ok(signal) => signal,
        Err(invalid) => {
            let (code, message) = invalid.body();
            return unprocessable(code, &message).into();
        }
    };
    let pending = accounts
        .db()
        .write(move |conn| signal::take(conn, &signal, origin));
    Reply::Later(Box::pin(async move {
        match pending.await {
            // The commit position lets the operator read the signal back from a replica
            // (`X-Min-LSN`) at once.
            Ok(written) => match written.value {
                Taken::Fresh(body) => {
                    Response::json(StatusCode(202), json!({ "signal": body }).to_string())
                }
                Taken::Duplicate(body) => Response::json(
                    StatusCode::OK,
                    json!({ "signal": body, "duplicate": true }).to_string(),
                ),
            }
            .with_header(COMMIT_LSN_HEADER, written.commit_position.to_string()),
            Err(e) => db_error(&e),
        }
    }))
}

/// `GET /api/enterprise/trading/settings`.
pub fn settings_get(accounts: &Accounts, caller: &Principal, _: &Request<'_>) -> Reply {
    let user_id = caller.user_id;
    let pending = accounts
        .db()
        .read(None, move |conn| settings::load(conn, user_id));
    Reply::Later(Box::pin(async move {
        match pending.await {
            Ok(s) => Response::json(StatusCode::OK, json!({ "settings": s }).to_string()),
            Err(e) => db_error(&e),
        }
    }))
}

const SETTINGS_FORM: &str =
    "expected {leverage?, stop_loss_multiplier?, take_profit_multiplier?, size_percent?, enabled?}";

/// `PUT /api/enterprise/trading/settings`: the fields given, within their bounds.
pub fn settings_put(accounts: &Accounts, caller: &Principal, request: &Request<'_>) -> Reply {
    let change: Change = match parse_form(request.body, SETTINGS_FORM) {
        Ok(change) => change,
        Err(reply) => return reply,
    };
    let user_id = caller.user_id;
    let pending = accounts
        .db()
        .write(move |conn| settings::update(conn, user_id, &change));
    Reply::Later(Box::pin(async move {
        match pending.await {
            Ok(written) => match written.value {
                Ok(s) => Response::json(StatusCode::OK, json!({ "settings": s }).to_string()),
                Err(wrong) => Response::json(
                    StatusCode(422),
                    json!({ "error": {
                        "code": "setting_out_of_bounds",
                        "message": "a setting is outside its allowed range",
                        "fields": wrong,
                    }})
                    .to_string(),
                ),
            },
            Err(e) => db_error(&e),
        }
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewExchangeAccount {
    api_key: String,
    secret: String,
    #[serde(default)]
    exchange: Option<String>,
    #[serde(default)]
    testnet: bool,
}

/// `POST /api/enterprise/trading/exchange-accounts`.
pub fn exchange_account_create(
    accounts: &Accounts,
    caller: &Principal,
    request: &Request<'_>,
) -> Reply {
    let Some(secrets_key) = accounts.shared.secrets_key.clone() else {
        return Response::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "exchange_accounts_disabled",
            "this server has no SECRETS_KEY: exchange secrets cannot be kept",
        )
        .into();
    };
    let form: NewExchangeAccount = match parse_form(
        request.body,
        "expected {api_key, secret, exchange?, testnet?}",
    ) {
        Ok(form) => form,
        Err(reply) => return reply,
    };
    let exchange = form.exchange.unwrap_or_else(|| "binance".into());
    let key_ok = (1..=128).contains(&form.api_key.len())
        && form
            .api_key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !key_ok || form.secret.is_empty() || form.secret.len() > 256 {
        return unprocessable(
            "invalid_exchange_key",
            "api_key: 1 to 128 letters, digits, _ or -; secret: 1 to 256 characters",
        )
        .into();
    }
    if exchange != "binance" {
        return unprocessable("unsupported_exchange", "exchange: binance").into();
    }
    let credentials = Credentials {
        api_key: form.api_key.clone(),
        secret: form.secret.into_bytes(),
    };
    let trading = accounts.shared.trading.clone();
    let client = trading.client.clone();
    let checking = {
        let credentials = credentials.clone();
        trading.pool.run(move || client.balance(&credentials))
    };
    let Ok(checking) = checking else {
        return Response::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "exchange_busy",
            "the exchange I/O pool is full; retry later",
        )
        .with_header("Retry-After", "1")
        .into();
    };
    let accounts = accounts.clone();
    let user_id = caller.user_id;
    let testnet = form.testnet;
    Reply::Later(Box::pin(async move {
        let balance = match checking.await {
            Some(Ok(balance)) => balance,
            Some(Err(ExchangeError::Auth { .. } | ExchangeError::Rejected { .. })) => {
                return unprocessable(
                    "exchange_key_refused",
                    "the exchange refused this key and secret",
                )
            }
            Some(Err(e)) => {
                log::info!("trading: checking an exchange key failed: {e}");
                return Response::error(
                    StatusCode(502),
                    "exchange_unavailable",
                    "the exchange did not answer; retry later",
                );
            }
            None => {
                return Response::error(
                    StatusCode(502),
                    "exchange_unavailable",
                    "the exchange check failed",
                )
            }
        };
        let sealed = secrets_key.seal(&credentials.api_key, &credentials.secret);
        let api_key = credentials.api_key.clone();
        let row_key = api_key.clone();
        let exchange_name = exchange.clone();
        let pending = accounts.db().write(move |conn| {
            exchange_accounts::replace(conn, user_id, &exchange_name, testnet, &row_key, &sealed)
        });
        match pending.await {
            Ok(written) => Response::json(
                StatusCode(201),
                json!({ "exchange_account": {
                    "id": written.value,
                    "exchange": exchange,
                    "api_key": api_key,
                    "testnet": testnet,
                    "balance": balance.balance,
                    "available": balance.available,
                }})
                .to_string(),
            ),
            Err(e) => db_error(&e),
        }
    }))
}

/// `DELETE /api/enterprise/trading/exchange-accounts`.
pub fn exchange_account_delete(accounts: &Accounts, caller: &Principal, _: &Request<'_>) -> Reply {
    let user_id = caller.user_id;
    let pending = accounts
        .db()
        .write(move |conn| exchange_accounts::remove(conn, user_id));
    Reply::Later(Box::pin(async move {
        match pending.await {
            Ok(written) if written.value => {
                Response::json(StatusCode::OK, json!({ "deleted": true }).to_string())
            }
            Ok(_) => Response::error(
                StatusCode::NOT_FOUND,
                "no_exchange_account",
                "there is no exchange account to remove",
            ),
            Err(e) => db_error(&e),
        }
    }))
}

/// Where a position's path starts: `positions/{id}` and `positions/{id}/close`.
pub const POSITIONS_PREFIX: &str = "/api/enterprise/trading/positions/";

fn no_position() -> Response {
    Response::error(StatusCode::NOT_FOUND, "not_found", "no such position")
}

/// The id in `positions/{id}` followed by `suffix`.
fn position_id(request: &Request<'_>, suffix: &str) -> Option<i64> {
    request
        .path
        .strip_prefix(POSITIONS_PREFIX)?
        .strip_suffix(suffix)?
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
}

/// `GET /api/enterprise/trading/positions?cursor=&limit=`: the caller's, newest first;
/// `cursor` is the `next_cursor` of the page before.
pub fn positions_list(accounts: &Accounts, caller: &Principal, request: &Request<'_>) -> Reply {
    financial::own_page(
        accounts,
        caller,
        request,
        "positions",
        positions::page,
        |row| row,
    )
}

/// `GET /api/enterprise/trading/positions/{id}`: the caller's own; 404 for any other.
pub fn position_get(accounts: &Accounts, caller: &Principal, request: &Request<'_>) -> Reply {
    let Some(id) = position_id(request, "") else {
        return no_position().into();
    };
    let min = match users::min_position(request) {
        Ok(min) => min,
        Err(response) => return response.into(),
    };
    let user_id = caller.user_id;
    let pending = accounts
        .db()
        .read(min, move |conn| positions::one(conn, user_id, id));
    Reply::Later(Box::pin(async move {
        match pending.await {
            Ok(Some(position)) => {
                Response::json(StatusCode::OK, json!({ "position": position }).to_string())
            }
            Ok(None) => no_position(),
            Err(e) => db_error(&e),
        }
    }))
}

/// `POST /api/enterprise/trading/positions/{id}/close`: 202 with the close intent written;
/// 409 when the position is closed, closing or not open; 404 when it is not the caller's.
pub fn position_close(accounts: &Accounts, caller: &Principal, request: &Request<'_>) -> Reply {
    let Some(id) = position_id(request, "/close") else {
        return no_position().into();
    };
    let user_id = caller.user_id;
    let pending = accounts
        .db()
        .write(move |conn| positions::request_close(conn, user_id, id));
    Reply::Later(Box::pin(async move {
        match pending.await {
            Ok(written) => match written.value {
                CloseRequest::Taken(intent) => Response::json(
                    StatusCode(202),
                    json!({ "close_intent": intent }).to_string(),
                ),
                CloseRequest::NotFound => no_position(),
                CloseRequest::Conflict(code, message) => {
                    Response::error(StatusCode(409), code, &message)
                }
            },
            Err(e) => db_error(&e),
        }
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateForm {
    currency: String,
    rate: Value,
    #[serde(default)]
    day: Option<String>,
}

const RATE_FORM: &str = "expected {currency: \"BRL\", rate: decimal string, day?: \"YYYY-MM-DD\"}";

/// `POST /api/enterprise/trading/fx-rates` `{currency: "BRL", rate: "5.4321", day?:
/// "YYYY-MM-DD"}` (operators): the day's USD rate (today, UTC, without `day`); the
/// commissions deferred for want of a rate are charged in the same transaction.
pub fn fx_rate_record(accounts: &Accounts, caller: &Principal, request: &Request<'_>) -> Reply {
    let form: RateForm = match parse_form(request.body, RATE_FORM) {
        Ok(form) => form,
        Err(bad) => return bad,
    };
    let Some(currency) = Currency::parse(&form.currency).filter(|c| *c != Currency::Usd) else {
        return unprocessable("invalid_currency", "currency: BRL (units per USD)").into();
    };
    let Some(rate) = commission::parse_rate(&form.rate) else {
        return unprocessable(
            "invalid_fx_rate",
            "rate is a positive decimal string with at most six decimals, e.g. \"5.4321\"",
        )
        .into();
    };
    if form
        .day
        .as_deref()
        .is_some_and(|day| !close::valid_day(day))
    {
        return unprocessable("invalid_day", "day is a date YYYY-MM-DD").into();
    }
    let (day, recorded_by) = (form.day, caller.user_id);
    let pending = accounts
        .db()
        .write(move |conn| close::record_rate(conn, currency, day.as_deref(), rate, recorded_by));
    Reply::Later(Box::pin(async move {
        match pending.await {
            Ok(written) => {
                let recorded = written.value;
                Response::json(
                    StatusCode::OK,
                    json!({
                        "fx_rate": {
                            "currency": recorded.currency.as_str(),
                            "per": "USD",
                            "day": recorded.day,
                            "rate": commission::rate_text(recorded.rate),
                        },
                        "deferred_commissions_charged": recorded.charged,
                    })
                    .to_string(),
                )
            }
            Err(e) => db_error(&e),
        }
    }))
}

const SIGNAL_FORM: &str = "expected a JSON object {signal, symbol, price, time, alert_id?}";

/// `POST /api/enterprise/trading/execute` (operators): a signal on behalf of the platform.
pub fn execute(accounts: &Accounts, _: &Principal, request: &Request<'_>) -> Reply {
    match parse_form::<signal::Form>(request.body, SIGNAL_FORM) {
        Ok(form) => take_signal(accounts, &form, Origin::Operator),
        Err(bad) => bad,
    }
}

/// Where a signal's path starts.
pub const SIGNALS_PREFIX: &str = "/api/enterprise/trading/signals/";

/// `GET /api/enterprise/trading/signals/{id}` (operators): the signal and its intents.
pub fn signal_get(accounts: &Accounts, _: &Principal, request: &Request<'_>) -> Reply {
    let not_found = || Response::error(StatusCode::NOT_FOUND, "not_found", "no such signal");
    let Some(id) = request
        .path
        .strip_prefix(SIGNALS_PREFIX)
        .and_then(|id| id.parse::<i64>().ok())
    else {
        return not_found().into();
    };
    let min = match users::min_position(request) {
        Ok(min) => min,
        Err(response) => return response.into(),
    };
    let pending = accounts
        .db()
        .read(min, move |conn| signal::with_intents(conn, id));
    Reply::Later(Box::pin(async move {
        match pending.await {
            Ok(Some(body)) => Response::json(StatusCode::OK, body.to_string()),
            Ok(None) => not_found(),
            Err(e) => db_error(&e),
        }
    }))
}
