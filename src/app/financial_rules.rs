//! Withdrawals, coupons, plans and the commission charge under `/api/enterprise/financial/`:
//! thin handlers over [`crate::ledger`]'s rules and SQL.
//!
//! - `POST withdrawals` `{amount, source: "real"|"commission", bank: {holder, account|pix_key,
//!   bank?, branch?, document?}}`: 201 with the withdrawal, its hold placed (422
//!   `insufficient_funds`, `below_minimum`, `bank_required`). `GET withdrawals?limit=&cursor=`:
//!   the caller's own, newest first.
//! - `GET admin/withdrawals?state=&limit=&cursor=` (admins): every user's, in a state.
//! - `POST withdrawals/{id}/approve|reject|pay` (admins): 200 with the withdrawal; 403
//!   `own_withdrawal`, 409 `already_approved`, `withdrawal_state`, `not_a_payout_day`, 404.
//! - `POST coupons` (admins) `{code, kind: "fixed"|"percent", tier?|amounts?|percent?, max_uses,
//!   expires_in_days?}`: 201; 409 `coupon_exists`. `POST coupons/redeem` `{code}`: 201; 404
//!   `coupon_not_found`, 409 `coupon_already_redeemed`, 422 `coupon_expired`, `coupon_exhausted`.
//! - `GET plans`: the plans in the caller's currency and the caller's own (rate, trial, whether
//!   trading is blocked by debt). `POST plans/subscribe` `{plan: "monthly"|"prepaid"}`: 200.
//! - `POST commissions` (operators) `{user_id, position_id, profit, profit_currency, fx_rate?}`:
//!   the entry point trading calls in-process ([`crate::ledger::commission::charge`]), as a
//!   route for tests and operators: 201; 409 `commission_already_charged`.
//!
//! Every POST here is a money request: it needs an `Idempotency-Key`, and its first outcome is
//! stored with its effect in one write ([`crate::ledger::idempotency`]).

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::access::{Accounts, Principal};
use super::financial;
use super::handlers::parse_form;
use super::users::{db_error, min_position};
use crate::db::DbError;
use crate::http::{Reply, Request, Response, StatusCode};
use crate::ledger::commission::{self, Position};
use crate::ledger::coupons::{self, CouponForm};
use crate::ledger::idempotency::Answer;
use crate::ledger::plans::{self, Plan};
use crate::ledger::rules::{parse_amount, Currency, Figures};
use crate::ledger::store;
use crate::ledger::withdrawals::{self, Ask, Bank, Date, Source, WithdrawalRules};
use crate::queue::sweeps::Sweep;

/// The settings these handlers read.
#[derive(Debug, Clone)]
pub struct MoneyRules {
    pub figures: Figures,
    pub withdrawals: WithdrawalRules,
    pub coupon_credit_ttl_ms: i64,
}

impl MoneyRules {
    pub fn from_config(config: &crate::config::Config) -> MoneyRules {
        let rules = &config.money_rules;
        MoneyRules {
            figures: config.money.figures(),
            withdrawals: rules.withdrawal_rules(),
            coupon_credit_ttl_ms: i64::try_from(rules.coupon_credit_ttl_ms).unwrap_or(i64::MAX),
        }
    }
}

/// The error envelope as a stored answer (the bytes [`Response::error`] sends).
fn refusal((status, code, message): (u16, &str, &str)) -> Answer {
    Answer::json(
        status,
        &json!({ "error": { "code": code, "message": message } }),
    )
}

fn unprocessable(code: &str, message: &str) -> Reply {
    Response::error(StatusCode(422), code, message).into()
}

fn no_user() -> DbError {
    DbError::Query("the caller is no user".into())
}

// ------------------------------------------------------------------------------ withdrawals

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WithdrawalForm {
    amount: Value,
    #[serde(default)]
    source: Option<Source>,
    #[serde(default)]
    bank: Option<Bank>,
}

const WITHDRAWAL_FORM: &str = "expected {\"amount\": minor units, \"source\": \"real\"|\"commission\", \"bank\": {\"holder\", \"account\" or \"pix_key\", \"bank\"?, \"branch\"?, \"document\"?}}";

/// `POST /api/enterprise/financial/withdrawals`.
pub fn request_withdrawal(
    accounts: &Accounts,
    principal: &Principal,
    request: &Request<'_>,
) -> Reply {
    let form: WithdrawalForm = match parse_form(request.body, WITHDRAWAL_FORM) {
        Ok(form) => form,
        Err(reply) => return reply,
    };
    let Ok(amount) = parse_amount(&form.amount) else {
        return unprocessable(
            "invalid_amount",
            "amount is a whole number of minor units (centavos, cents), above zero",
        );
    };
    let Some(bank) = form.bank else {
        return refusal_reply(withdrawals::Refused::BankRequired.describe());
    };
    let source = form.source.unwrap_or(Source::Real);
    let rules = accounts.shared.money_rules.clone();
    let user_id = principal.user_id;
    financial::idempotent(accounts, principal, request, move |conn| {
        let currency = store::user_currency(conn, user_id)?.ok_or_else(no_user)?;
        let ask = Ask {
            user_id,
            currency,
            amount,
            source,
            bank: bank.clone(),
        };
        let made = withdrawals::request(
            conn,
            &ask,
            &rules.figures,
            &rules.withdrawals,
            Date::today(),
        )?;
        Ok(match made {
            Ok(w) => Answer::json(201, &json!({ "withdrawal": w.json() })),
            Err(refused) => refusal(refused.describe()),
        })
    })
}

fn refusal_reply((status, code, message): (u16, &str, &str)) -> Reply {
    Response::error(StatusCode(status), code, message).into()
}

/// `?limit=` (1 to 100, default 20) and `?cursor=` of a list.
fn page(request: &Request<'_>) -> Result<(i64, i64), Response> {
    let (mut limit, mut before) = (20, i64::MAX);
    for pair in request
        .query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let parsed = value.parse::<i64>().ok();
        match (name, parsed) {
            ("limit", Some(n)) if (1..=100).contains(&n) => limit = n,
            ("cursor", Some(n)) if n > 0 => before = n,
            ("limit" | "cursor", _) => {
                return Err(Response::error(
                    StatusCode::BAD_REQUEST,
                    "bad_page",
                    "limit is 1 to 100; cursor is the next_cursor of the page before",
                ))
            }
            _ => {}
        }
    }
    Ok((limit, before))
}

/// `GET /api/enterprise/financial/withdrawals`: the caller's, from a replica that holds the
/// caller's last write when `X-Min-LSN` names it.
pub fn list_withdrawals(
    accounts: &Accounts,
    principal: &Principal,
    request: &Request<'_>,
) -> Reply {
    let (limit, before) = match page(request) {
        Ok(page) => page,
        Err(response) => return response.into(),
    };
    let min = match min_position(request) {
        Ok(min) => min,
        Err(response) => return response.into(),
    };
    let user_id = principal.user_id;
    let pending = accounts.db().read(min, move |conn| {
        withdrawals::list_own(conn, user_id, before, limit)
    });
    Reply::Later(Box::pin(async move {
        match pending.await {
            Ok(list) => {
                let next = (list.len() as i64 == limit)
                    .then(|| list.last().map(|w| w.seq.to_string()))
                    .flatten();
                let items: Vec<Value> = list.iter().map(|w| w.json()).collect();
                Response::json(
                    StatusCode::OK,
                    json!({ "withdrawals": items, "next_cursor": next }).to_string(),
                )
            }
            Err(e) => db_error(&e),
        }
    }))
}

/// `GET /api/enterprise/financial/admin/withdrawals?state=&limit=&cursor=` (admins): every
/// user's withdrawals in a state (`requested` by default), newest first, with their owner.
pub fn admin_withdrawals(
    accounts: &Accounts,
    _principal: &Principal,
    request: &Request<'_>,
) -> Reply {
    let (limit, before) = match page(request) {
        Ok(page) => page,
        Err(response) => return response.into(),
    };
    let asked = request
        .query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("state="))
        .unwrap_or("requested");
    let Some(state) = withdrawals::State::parse(asked) else {
        return Response::error(
            StatusCode::BAD_REQUEST,
            "bad_state",
            "state is requested, approved, paid or rejected",
        )
        .into();
    };
    let min = match min_position(request) {
        Ok(min) => min,
        Err(response) => return response.into(),
    };
    let pending = accounts.db().read(min, move |conn| {
        withdrawals::list_by_state(conn, state, before, limit)
    });
    Reply::Later(Box::pin(async move {
        match pending.await {
            Ok(list) => {
                let next = (list.len() as i64 == limit)
                    .then(|| list.last().map(|w| w.seq.to_string()))
                    .flatten();
                let items: Vec<Value> = list
                    .iter()
                    .map(|w| {
                        let mut item = w.json();
                        item["user_id"] = json!(w.user_id);
                        item["approved_by"] = json!(w.approvals);
                        item
                    })
                    .collect();
                Response::json(
                    StatusCode::OK,
                    json!({ "withdrawals": items, "next_cursor": next }).to_string(),
                )
            }
            Err(e) => db_error(&e),
        }
    }))
}

const WITHDRAWALS_PREFIX: &str = "/api/enterprise/financial/withdrawals/";

/// `POST /api/enterprise/financial/withdrawals/{id}/approve|reject|pay` (admins).
pub fn decide_withdrawal(
    accounts: &Accounts,
    principal: &Principal,
    request: &Request<'_>,
) -> Reply {
    let rest = request.path.strip_prefix(WITHDRAWALS_PREFIX).unwrap_or("");
    let Some((id, action)) = rest.split_once('/') else {
        return not_found();
    };
    if !matches!(action, "approve" | "reject" | "pay") || id.is_empty() || id.len() > 64 {
        return not_found();
    }
    let (id, action) = (id.to_string(), action.to_string());
    let rules = accounts.shared.money_rules.clone();
    let admin = principal.user_id;
    financial::idempotent(accounts, principal, request, move |conn| {
        let today = Date::today();
        let done = match action.as_str() {
            "approve" => withdrawals::approve_one(conn, &id, admin, &rules.withdrawals, today)?,
            "reject" => withdrawals::reject_one(conn, &id, admin)?,
            _ => withdrawals::pay_one(conn, &id, &rules.withdrawals, today)?,
        };
        Ok(match done {
            Ok(w) => Answer::json(200, &json!({ "withdrawal": w.json() })),
            Err(refused) => refusal(refused.describe()),
        })
    })
}

fn not_found() -> Reply {
    Response::error(StatusCode(404), "not_found", "no such withdrawal or action").into()
}

// ---------------------------------------------------------------------------------- coupons

const COUPON_FORM: &str = "expected {\"code\", \"kind\": \"fixed\"|\"percent\", \"tier\"|\"amounts\"|\"percent\", \"max_uses\", \"expires_in_days\"?}";

/// `POST /api/enterprise/financial/coupons` (admins).
pub fn create_coupon(accounts: &Accounts, principal: &Principal, request: &Request<'_>) -> Reply {
    let form: CouponForm = match parse_form(request.body, COUPON_FORM) {
        Ok(form) => form,
        Err(reply) => return reply,
    };
    let coupon = match coupons::check_new(&form) {
        Ok(coupon) => coupon,
        Err(message) => return unprocessable("invalid_coupon", message),
    };
    let admin = principal.user_id;
    financial::idempotent(accounts, principal, request, move |conn| {
        Ok(match coupons::create(conn, admin, &coupon)? {
            Some(body) => Answer::json(201, &json!({ "coupon": body })),
            None => refusal((409, "coupon_exists", "a coupon with this code exists")),
        })
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedeemForm {
    code: String,
}

/// Where the request came from: the first `X-Forwarded-For` address (the balancer's), and the
/// User-Agent, each kept short.
fn client_of(request: &Request<'_>) -> coupons::Client {
    let text = |name: &str, max: usize| {
        let value = request.header(name).unwrap_or_default();
        let first = value.split(|b| *b == b',').next().unwrap_or_default();
        String::from_utf8_lossy(first)
            .trim()
            .chars()
            .take(max)
            .collect::<String>()
    };
    coupons::Client {
        ip: text("X-Forwarded-For", 64),
        user_agent: {
            let agent = request.header("User-Agent").unwrap_or_default();
            String::from_utf8_lossy(agent).chars().take(256).collect()
        },
    }
    .or_unknown(text("X-Real-IP", 64))
}

impl coupons::Client {
    fn or_unknown(mut self, real_ip: String) -> Self {
        if self.ip.is_empty() {
            self.ip = if real_ip.is_empty() {
                "unknown".into()
            } else {
                real_ip
            };
        }
        self
    }
}

/// `POST /api/enterprise/financial/coupons/redeem`.
pub fn redeem_coupon(accounts: &Accounts, principal: &Principal, request: &Request<'_>) -> Reply {
    let form: RedeemForm = match parse_form(request.body, "expected {\"code\": string}") {
        Ok(form) => form,
        Err(reply) => return reply,
    };
    let Some(code) = coupons::normalize_code(&form.code) else {
        return refusal_reply(coupons::Refused::Unknown.describe());
    };
    let client = client_of(request);
    let ttl = accounts.shared.money_rules.coupon_credit_ttl_ms;
    let user_id = principal.user_id;
    financial::idempotent(accounts, principal, request, move |conn| {
        Ok(match coupons::redeem(conn, user_id, &code, &client, ttl)? {
            Ok(body) => Answer::json(201, &json!({ "redemption": body })),
            Err(refused) => refusal(refused.describe()),
        })
    })
}

// ------------------------------------------------------------------------------------ plans

/// `GET /api/enterprise/financial/plans`: on a replica (`X-Min-LSN` for read-your-writes).
pub fn plans(accounts: &Accounts, principal: &Principal, request: &Request<'_>) -> Reply {
    let min = match min_position(request) {
        Ok(min) => min,
        Err(response) => return response.into(),
    };
    let user_id = principal.user_id;
    let pending = accounts.db().read(min, move |conn| {
        let currency = store::user_currency(conn, user_id)?.ok_or_else(no_user)?;
        let plan = plans::user_plan(conn, user_id)?;
        let blocked = commission::trading_blocked(conn, user_id)?;
        Ok(json!({
            "plans": plans::catalogue(currency),
            "mine": plan.json(currency, blocked),
        }))
    });
    Reply::Later(Box::pin(async move {
        match pending.await {
            Ok(body) => Response::json(StatusCode::OK, body.to_string()),
            Err(e) => db_error(&e),
        }
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeForm {
    plan: Plan,
}

/// `POST /api/enterprise/financial/plans/subscribe`.
pub fn subscribe(accounts: &Accounts, principal: &Principal, request: &Request<'_>) -> Reply {
    let form: SubscribeForm =
        match parse_form(request.body, "expected {\"plan\": \"monthly\"|\"prepaid\"}") {
            Ok(form) => form,
            Err(reply) => return reply,
        };
    let user_id = principal.user_id;
    financial::idempotent(accounts, principal, request, move |conn| {
        Ok(match plans::subscribe(conn, user_id, form.plan)? {
            Ok((plan, charge, currency)) => {
                let blocked = commission::trading_blocked(conn, user_id)?;
                Answer::json(
                    200,
                    &json!({
                        "plan": plan.json(currency, blocked),
                        "charged": charge.amount,
                        "trial": charge.trial,
                    }),
                )
            }
            Err(refused) => refusal(refused.describe()),
        })
    })
}

// ------------------------------------------------------------------------------ commissions

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommissionForm {
    user_id: i64,
    position_id: String,
    profit: Value,
    profit_currency: String,
    #[serde(default)]
    fx_rate: Option<Value>,
}

const COMMISSION_FORM: &str = "expected {\"user_id\", \"position_id\", \"profit\": minor units, \"profit_currency\", \"fx_rate\"?: decimal string}";

/// `POST /api/enterprise/financial/commissions` (operators).
pub fn charge_commission(
    accounts: &Accounts,
    principal: &Principal,
    request: &Request<'_>,
) -> Reply {
    let form: CommissionForm = match parse_form(request.body, COMMISSION_FORM) {
        Ok(form) => form,
        Err(reply) => return reply,
    };
    // A loss is a negative whole number of minor units; never a float.
    let Some(profit) = form.profit.as_i64() else {
        return unprocessable("invalid_amount", "profit is a whole number of minor units");
    };
    let Some(profit_currency) = Currency::parse(&form.profit_currency) else {
        return unprocessable("invalid_currency", "profit_currency is BRL or USD");
    };
    let fx_rate = match &form.fx_rate {
        None | Some(Value::Null) => None,
        Some(value) => match commission::parse_rate(value) {
            Some(rate) => Some(rate),
            None => return unprocessable(
                "invalid_fx_rate",
                "fx_rate is a positive decimal string with at most six decimals, e.g. \"5.4321\"",
            ),
        },
    };
    if form.position_id.is_empty() || form.position_id.len() > 100 {
        return unprocessable("invalid_position", "position_id is 1 to 100 characters");
    }
    let position = Position {
        user_id: form.user_id,
        position_id: form.position_id,
        profit,
        profit_currency,
        fx_rate,
    };
    financial::idempotent(accounts, principal, request, move |conn| {
        Ok(match commission::charge(conn, &position)? {
            Ok(charged) => Answer::json(201, &json!({ "charge": charged.json(&position) })),
            Err(refused) => refusal(refused.describe()),
        })
    })
}

// ------------------------------------------------------------------------------------ sweep

/// Grants the sweep ends per write.
const SWEEP_BATCH: i64 = 100;

/// The money sweep: every `every`, coupon credit past its time goes back to promotions.
/// Grants are claimed with `SKIP LOCKED`, so instances sweeping at once never take one twice.
pub fn money_sweep(every: Duration) -> Sweep {
    Sweep {
        name: "money sweep",
        counted: "coupon credit grant(s) expired",
        level: log::Level::Info,
        every,
        batch_size: SWEEP_BATCH,
        batch: Arc::new(|conn, batch| Ok(coupons::expire_credits(conn, batch)? as u64)),
    }
}
