//! The affiliate API under `/api/enterprise/affiliate/` (the original's prefix): thin handlers
//! over [`crate::affiliate`].
//!
//! - `POST apply` (a session): the caller becomes an affiliate with a fresh code: 201; 409 if
//!   it is one already.
//! - `POST admin/tier` `{user_id, tier, share_bp?}` (an admin): sets the tier (`affiliate` or
//!   `affiliate_vip`) and the share in basis points (default: the tier's setting).
//! - `POST attribute` `{code, campaign?}` (a session): the caller was referred by `code`'s
//!   affiliate: 201; 409 attributed already; 410 past 48 h of sign-up; 422 own or unknown code.
//! - `GET dashboard`, `GET earnings`, `GET referrals`, `GET code`, `GET campaigns` (a session,
//!   or a key with `read`): read from a replica (`X-Min-LSN` to see one's own write). The
//!   dashboard is stored, one row per affiliate, rebuilt shortly after each change.
//! - `POST campaigns` `{slug, name?}` (a session): a campaign link; `GET r/{slug}` (open)
//!   counts a click and redirects to the landing page with `ref` and `campaign`.
//! - `POST conversions` `{currency?, amount?}` (a session, or a key with `trade`;
//!   `Idempotency-Key`): available commission to admin credit plus the bonus, all-or-nothing.
//! - `POST admin/clawbacks` `{position_id}` (an admin; `Idempotency-Key`): a reversed
//!   commission's share taken back.
//! - `GET admin/report?from=&to=` (an admin): earnings per affiliate and period, what is due.

use serde::Deserialize;
use serde_json::{json, Value};

use super::access::{Accounts, Principal};
use super::financial;
use super::handlers::parse_form;
use super::users::{db_error, min_position, COMMIT_LSN_HEADER};
use crate::affiliate::rules::{self, Tier};
use crate::affiliate::store::{self, ClawbackRefused, ConvertRefused};
use crate::db::{DbConn, DbError};
use crate::http::{Reply, Request, Response, StatusCode};
use crate::ledger::idempotency::Answer;
use crate::ledger::rules::{parse_amount, Currency};
use crate::ledger::store as ledger;
use crate::queue::sweeps::Sweep;

/// The path prefix of every affiliate route.
pub const PREFIX: &str = "/api/enterprise/affiliate/";
/// A campaign link: this, then its slug.
pub const LINK_PREFIX: &str = "/api/enterprise/affiliate/r/";

fn error_reply(status: u16, code: &str, message: &str) -> Reply {
    Response::error(StatusCode(status), code, message).into()
}

fn error_answer((status, code, message): (u16, &str, &str)) -> Answer {
    Answer::json(
        status,
        &json!({ "error": { "code": code, "message": message } }),
    )
}

fn not_affiliate() -> Response {
    Response::error(
        StatusCode(404),
        "not_an_affiliate",
        "this user is not an affiliate: POST /api/enterprise/affiliate/apply first",
    )
}

/// Runs `effect` in one write and answers `(status, body)` with the commit position.
fn write<F>(accounts: &Accounts, effect: F) -> Reply
where
    F: FnMut(&mut DbConn) -> Result<(u16, Value), DbError> + Send + 'static,
{
    let pending = accounts.db().write(effect);
    Reply::Later(Box::pin(async move {
        match pending.await {
            Ok(written) => {
                let (status, body) = written.value;
                Response::json(StatusCode(status), body.to_string())
                    .with_header(COMMIT_LSN_HEADER, written.commit_position.to_string())
            }
            Err(e) => db_error(&e),
        }
    }))
}

/// Runs `effect` in one read (a replica that has replayed `X-Min-LSN`, if sent).
fn read<F>(accounts: &Accounts, request: &Request<'_>, effect: F) -> Reply
where
    F: FnMut(&mut DbConn) -> Result<Option<Value>, DbError> + Send + Clone + 'static,
{
    let min = match min_position(request) {
        Ok(min) => min,
        Err(response) => return response.into(),
    };
    let pending = accounts.db().read(min, effect);
    Reply::Later(Box::pin(async move {
        match pending.await {
            Ok(Some(body)) => Response::json(StatusCode::OK, body.to_string()),
            Ok(None) => not_affiliate(),
            Err(e) => db_error(&e),
        }
    }))
}

fn error_body((_, code, message): (u16, &str, &str)) -> Value {
    json!({ "error": { "code": code, "message": message } })
}

/// `POST /api/enterprise/affiliate/apply`.
pub fn apply(accounts: &Accounts, caller: &Principal, _: &Request<'_>) -> Reply {
    let user_id = caller.user_id;
    let share_bp = accounts.shared.affiliate.share_bp;
    write(accounts, move |conn| {
        Ok(match store::apply(conn, user_id, share_bp)? {
            Some(made) => (201, json!({ "affiliate": made.json() })),
            None => (
                409,
                error_body((
                    409,
                    "already_affiliate",
                    "this user is an affiliate already",
                )),
            ),
        })
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TierForm {
    user_id: i64,
    tier: String,
    share_bp: Option<i64>,
}

const TIER_FORM: &str = "expected {\"user_id\", \"tier\": \"affiliate\" | \"affiliate_vip\", \"share_bp\"?: 0 to 10000}";

/// `POST /api/enterprise/affiliate/admin/tier` (admins).
pub fn set_tier(accounts: &Accounts, _: &Principal, request: &Request<'_>) -> Reply {
    let form: TierForm = match parse_form(request.body, TIER_FORM) {
        Ok(form) => form,
        Err(reply) => return reply,
    };
    let Some(tier) = Tier::parse(&form.tier) else {
        return error_reply(422, "invalid_tier", "tier is affiliate or affiliate_vip");
    };
    let share_bp = form
        .share_bp
        .unwrap_or_else(|| accounts.shared.affiliate.tier_share_bp(tier));
    if !(0..=10_000).contains(&share_bp) {
        return error_reply(422, "invalid_share", "share_bp is 0 to 10000 basis points");
    }
    let user_id = form.user_id;
    write(accounts, move |conn| {
        Ok(match store::set_tier(conn, user_id, tier, share_bp)? {
            Some(affiliate) => (200, json!({ "affiliate": affiliate.json() })),
            None => (
                404,
                error_body((404, "not_an_affiliate", "this user is not an affiliate")),
            ),
        })
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttributeForm {
    code: String,
    campaign: Option<String>,
}

/// `POST /api/enterprise/affiliate/attribute`.
pub fn attribute(accounts: &Accounts, caller: &Principal, request: &Request<'_>) -> Reply {
    let form: AttributeForm = match parse_form(
        request.body,
        "expected {\"code\": \"CBC...\", \"campaign\"?}",
    ) {
        Ok(form) => form,
        Err(reply) => return reply,
    };
    let code = form.code.trim().to_ascii_uppercase();
    if !rules::is_code(&code) {
        return error_reply(
            422,
            "unknown_code",
            "a code is CBC and six letters or digits",
        );
    }
    if form.campaign.as_deref().is_some_and(|s| !rules::is_slug(s)) {
        return error_reply(
            422,
            "unknown_campaign",
            "this affiliate has no campaign of that name",
        );
    }
    let user_id = caller.user_id;
    write(accounts, move |conn| {
        Ok(
            match store::attribute(conn, user_id, &code, form.campaign.as_deref())? {
                Ok(referral) => (201, json!({ "referral": referral.json() })),
                Err(refused) => {
                    let described = refused.describe();
                    (described.0, error_body(described))
                }
            },
        )
    })
}

/// `GET /api/enterprise/affiliate/dashboard`: the stored dashboard, rebuilt by a sweep within
/// `AFFILIATE_DASHBOARD_INTERVAL` of a change (`as_of` says when it was summed up); with
/// `X-Min-LSN` (one's own write to see), or before its first rebuild, summed up on the read.
pub fn dashboard(accounts: &Accounts, caller: &Principal, request: &Request<'_>) -> Reply {
    let min = match min_position(request) {
        Ok(min) => min,
        Err(response) => return response.into(),
    };
    let user_id = caller.user_id;
    let stored = (min.is_none() && accounts.shared.affiliate.stored_dashboard).then(|| {
        accounts.db().lookup(
            None,
            &store::STORED_DASHBOARD,
            user_id,
            store::stored_dashboard_of,
        )
    });
    let accounts = accounts.clone();
    Reply::Later(Box::pin(async move {
        if let Some(stored) = stored {
            match stored.await {
                Ok(Some(body)) => return Response::json(StatusCode::OK, body),
                // Not built yet (a new affiliate, or not one at all): summed up below.
                Ok(None) => {}
                Err(e) => return db_error(&e),
            }
        }
        let summed = accounts
            .db()
            .lookup(min, &store::DASHBOARD, user_id, store::dashboard_of);
        match summed.await {
            Ok(Some(Ok(body))) => Response::json(StatusCode::OK, body.to_string()),
            Ok(None) => not_affiliate(),
            Ok(Some(Err(e))) | Err(e) => db_error(&e),
        }
    }))
}

/// `GET /api/enterprise/affiliate/earnings`: per currency, from the ledger.
pub fn earnings(accounts: &Accounts, caller: &Principal, request: &Request<'_>) -> Reply {
    let user_id = caller.user_id;
    read(accounts, request, move |conn| {
        if store::affiliate(conn, user_id)?.is_none() {
            return Ok(None);
        }
        let list = store::earnings(conn, user_id)?;
        Ok(Some(
            json!({ "user_id": user_id, "earnings": store::earnings_json(&list) }),
        ))
    })
}

/// `GET /api/enterprise/affiliate/referrals`: the newest 100.
pub fn referrals(accounts: &Accounts, caller: &Principal, request: &Request<'_>) -> Reply {
    let user_id = caller.user_id;
    read(accounts, request, move |conn| {
        if store::affiliate(conn, user_id)?.is_none() {
            return Ok(None);
        }
        let list = store::referrals(conn, user_id, store::LIST_LIMIT)?;
        Ok(Some(json!({ "referrals": list })))
    })
}

/// `GET /api/enterprise/affiliate/code`.
pub fn code(accounts: &Accounts, caller: &Principal, request: &Request<'_>) -> Reply {
    let user_id = caller.user_id;
    read(accounts, request, move |conn| {
        Ok(store::affiliate(conn, user_id)?
            .map(|a| json!({ "code": a.code, "tier": a.tier.as_str(), "share_bp": a.share_bp })))
    })
}

/// `GET /api/enterprise/affiliate/campaigns`.
pub fn campaigns(accounts: &Accounts, caller: &Principal, request: &Request<'_>) -> Reply {
    let user_id = caller.user_id;
    read(accounts, request, move |conn| {
        if store::affiliate(conn, user_id)?.is_none() {
            return Ok(None);
        }
        Ok(Some(
            json!({ "campaigns": store::campaigns(conn, user_id)? }),
        ))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CampaignForm {
    slug: String,
    #[serde(default)]
    name: String,
}

/// `POST /api/enterprise/affiliate/campaigns`: 201; 409 slug taken.
pub fn create_campaign(accounts: &Accounts, caller: &Principal, request: &Request<'_>) -> Reply {
    let form: CampaignForm = match parse_form(request.body, "expected {\"slug\", \"name\"?}") {
        Ok(form) => form,
        Err(reply) => return reply,
    };
    if !rules::is_slug(&form.slug) {
        return error_reply(
            422,
            "invalid_slug",
            "a slug is 3 to 40 of a-z, 0-9 and -, not starting with -",
        );
    }
    if form.name.chars().count() > 100 {
        return error_reply(422, "invalid_name", "a name is at most 100 characters");
    }
    let user_id = caller.user_id;
    write(accounts, move |conn| {
        if store::affiliate(conn, user_id)?.is_none() {
            return Ok((
                404,
                error_body((404, "not_an_affiliate", "this user is not an affiliate")),
            ));
        }
        Ok(
            if store::create_campaign(conn, user_id, &form.slug, &form.name)? {
                (
                    201,
                    json!({ "campaign": { "slug": form.slug, "name": form.name,
                                          "link": format!("{LINK_PREFIX}{}", form.slug) } }),
                )
            } else {
                (
                    409,
                    error_body((409, "slug_taken", "another campaign has this slug")),
                )
            },
        )
    })
}

/// `GET /api/enterprise/affiliate/r/{slug}` (open): counts the click, then 302 to the
/// landing page with `ref` and `campaign`; 404 for no such campaign.
pub fn click(accounts: Option<&Accounts>, request: &Request<'_>) -> Reply {
    let Some(accounts) = accounts else {
        return db_error(&DbError::NotConfigured).into();
    };
    let slug = request
        .path
        .strip_prefix(LINK_PREFIX)
        .unwrap_or_default()
        .to_string();
    if !rules::is_slug(&slug) {
        return error_reply(404, "unknown_campaign", "no campaign has this link");
    }
    let landing = accounts.shared.affiliate.landing_url.clone();
    let pending = {
        let slug = slug.clone();
        accounts.db().write(move |conn| store::click(conn, &slug))
    };
    Reply::Later(Box::pin(async move {
        match pending.await {
            Ok(written) => match written.value {
                Some(code) => Response::new(StatusCode(302), "text/plain", "")
                    .with_header("Location", rules::landing(&landing, &code, &slug))
                    .with_header("Cache-Control", "no-store"),
                None => Response::error(
                    StatusCode(404),
                    "unknown_campaign",
                    "no campaign has this link",
                ),
            },
            Err(e) => db_error(&e),
        }
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConvertForm {
    currency: Option<String>,
    amount: Option<Value>,
}

/// `POST /api/enterprise/affiliate/conversions` (`Idempotency-Key`).
pub fn convert(accounts: &Accounts, caller: &Principal, request: &Request<'_>) -> Reply {
    let body = if request.body.is_empty() {
        &b"{}"[..]
    } else {
        request.body
    };
    let form: ConvertForm = match parse_form(
        body,
        "expected {\"currency\"?: \"BRL\" | \"USD\", \"amount\"?: minor units}",
    ) {
        Ok(form) => form,
        Err(reply) => return reply,
    };
    let currency = match form.currency.as_deref() {
        None => None,
        Some(text) => match Currency::parse(text) {
            Some(currency) => Some(currency),
            None => return error_reply(422, "invalid_currency", "currency is BRL or USD"),
        },
    };
    let amount = match &form.amount {
        None | Some(Value::Null) => None,
        Some(value) => match parse_amount(value) {
            Ok(amount) => Some(amount),
            Err(_) => {
                return error_reply(
                    422,
                    "invalid_amount",
                    "amount is a whole positive number of minor units",
                )
            }
        },
    };
    let user_id = caller.user_id;
    let bonus_percent = accounts.shared.affiliate.conversion_bonus_percent;
    financial::idempotent(accounts, caller, request, move |conn| {
        let currency = match currency {
            Some(currency) => currency,
            None => ledger::user_currency(conn, user_id)?
                .ok_or_else(|| DbError::Query("the caller is no user".into()))?,
        };
        Ok(
            match store::convert(conn, user_id, currency, amount, bonus_percent)? {
                Ok(converted) => Answer::json(201, &json!({ "conversion": converted.json() })),
                Err(ConvertRefused::NothingAvailable) => error_answer((
                    422,
                    "nothing_to_convert",
                    "no commission is available in this currency",
                )),
                Err(ConvertRefused::Insufficient(available)) => Answer::json(
                    422,
                    &json!({ "error": {
                        "code": "insufficient_commission",
                        "message": "more than the available commission was asked for",
                        "available": available,
                    } }),
                ),
            },
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClawbackForm {
    position_id: String,
}

/// `POST /api/enterprise/affiliate/admin/clawbacks` (admins; `Idempotency-Key`).
pub fn clawback(accounts: &Accounts, caller: &Principal, request: &Request<'_>) -> Reply {
    let form: ClawbackForm = match parse_form(request.body, "expected {\"position_id\"}") {
        Ok(form) => form,
        Err(reply) => return reply,
    };
    financial::idempotent(accounts, caller, request, move |conn| {
        Ok(match store::clawback(conn, &form.position_id)? {
            Ok(done) => Answer::json(201, &json!({ "clawback": done.json() })),
            Err(ClawbackRefused::NoShare) => error_answer((
                404,
                "no_share",
                "no affiliate share was paid on this commission event",
            )),
            Err(ClawbackRefused::AlreadyClawedBack) => error_answer((
                409,
                "already_clawed_back",
                "this share was clawed back already",
            )),
        })
    })
}

/// `GET /api/enterprise/affiliate/admin/report?from=YYYY-MM-DD&to=YYYY-MM-DD` (admins):
/// earnings per affiliate and period, and what is due; the period defaults to today.
pub fn report(accounts: &Accounts, _: &Principal, request: &Request<'_>) -> Reply {
    use crate::ledger::withdrawals::Date;
    let today = Date::today();
    let (mut from, mut to) = (today, today);
    for pair in request
        .query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match name {
            "from" => &mut from,
            "to" => &mut to,
            _ => continue,
        };
        match Date::parse(value).filter(|d| (2000..=9999).contains(&d.year)) {
            Some(date) => *slot = date,
            None => {
                return error_reply(
                    400,
                    "bad_period",
                    "from and to are dates, YYYY-MM-DD (UTC), from 2000 on",
                )
            }
        }
    }
    let (from, to) = (from.to_string(), to.to_string());
    let pending = accounts.db().read(None, move |conn| {
        store::report(conn, &from, &to).map(|rows| (from.clone(), to.clone(), rows))
    });
    Reply::Later(Box::pin(async move {
        match pending.await {
            Ok((from, to, rows)) => Response::json(
                StatusCode::OK,
                json!({ "from": from, "to": to, "affiliates": rows }).to_string(),
            ),
            Err(e) => db_error(&e),
        }
    }))
}

// ------------------------------------------------------------------------------------ sweep

/// Shares one sweep write releases at most.
const SWEEP_BATCH: i64 = 200;

/// The release sweep: every `every`, held shares whose hold ended become available. Rows are
/// claimed with `SKIP LOCKED`, so instances sweeping at once never release one twice.
pub fn release_sweep(hold: crate::affiliate::Hold, every: std::time::Duration) -> Sweep {
    Sweep {
        name: "affiliate sweep",
        counted: "share(s) available",
        level: log::Level::Info,
        every,
        batch_size: SWEEP_BATCH,
        batch: std::sync::Arc::new(move |conn, batch| store::release_due(conn, &hold, batch)),
    }
}

/// Marks a dashboard rebuild takes at most per batch.
const DASHBOARD_BATCH: i64 = 2_000;

/// The sweep that rebuilds the stored dashboards the affiliates' changes marked, every `every`.
pub fn dashboard_sweep(every: std::time::Duration) -> Sweep {
    Sweep {
        name: "affiliate dashboards",
        counted: "change(s) rebuilt",
        level: log::Level::Debug,
        every,
        batch_size: DASHBOARD_BATCH,
        batch: std::sync::Arc::new(store::rebuild_dashboards),
    }
}

#[cfg(test)]
mod tests {
    use crate::affiliate::store::AttributeRefused;

    #[test]
    fn refusals_answer_their_statuses() {
        let cases = [
            (AttributeRefused::UnknownCode, 422),
            (AttributeRefused::OwnCode, 422),
            (AttributeRefused::UnknownCampaign, 422),
            (AttributeRefused::AlreadyAttributed, 409),
            (AttributeRefused::WindowClosed, 410),
        ];
        for (refused, status) in cases {
            assert_eq!(refused.describe().0, status, "{refused:?}");
        }
    }
}
