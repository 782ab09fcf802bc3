//! The route table: one declaration per route owns its method, path, name, class, access and
//! handler.
//!
//! A route is known by its [`RouteId`], its index in the table of every route (the production
//! [`ROUTES`], then the debug ones of [`super::debug`]); the metrics count it under its name at
//! that index of [`ROUTE_NAMES`], and `QUEUE_ROUTE_CLASSES` finds it by that name. Debug routes
//! are matched only with `--debug-routes`; their paths are under `/debug/`, apart from every
//! production path.
//!
//! A route's [`Access`] says who may call it: an open route's handler sees the shard's app; an
//! accounts route has a guarded handler, which [`super::access`] runs only once the caller
//! passed; an operator route (jobs, dead letters, debug routes, and the reports, whose access
//! `METRICS_ACCESS` sets) has a [`Handler::Staff`] handler, which sees the shard's parts once
//! the caller showed the operator token (`OPERATOR_TOKEN`) or a staff session. The probes
//! (`/livez`, `/readyz`, `/health`) stay open. `route_access_is_locked` lists every route's
//! access: loosening one fails it.
//!
//! Classes follow the endpoints' business: trading high, financial medium, affiliate low, reports
//! background. The reports (cluster status, metrics, queues, alerts, the dashboard) are
//! background here; `QUEUE_ROUTE_CLASSES` changes any route's class. Requests of a class below
//! high take turns at the shard's gate ([`crate::queue::gate`]); high ones and routes without a
//! class (the probes, `/health`, the users and job APIs) run at once.

use std::rc::Rc;

pub use super::access::Access;
use super::access::{GuardedHandler, Reader};
use super::{
    accounts, affiliate, debug, financial, financial_rules, handlers, jobs, trading, users,
    ShardApp,
};
use crate::auth::role::{Role, Scope};
use crate::db::DbClient;
use crate::http::{Method, Reply, Request};
use crate::monitor::Published;
use crate::queue::Priority;
use crate::queue::ShardQueues;
use PathPattern::{Exact, Prefix, WithId};

/// What answers an open route's requests.
pub type OpenHandler = for<'r> fn(&mut ShardApp, &Request<'r>) -> Reply;

/// The shard's parts an operator route's handler reads: owned by the shard's app, or kept for
/// after a session lookup.
pub struct ShardParts<'a> {
    pub shard: usize,
    pub queues: &'a Rc<ShardQueues>,
    /// The shard's way to the database; `None` without one.
    pub db: Option<&'a mut DbClient>,
    /// The monitor's latest snapshot.
    pub published: &'a Published,
}

/// What answers an operator route's requests, once its caller passed.
pub type StaffHandler = for<'a, 'r> fn(&mut ShardParts<'a>, &Request<'r>) -> Reply;

/// What answers a route of a user's own resource ([`Access::OwnerOrStaff`]), once its caller
/// passed: the shard's way to the database, and whose data the caller may read.
pub type OwnedHandler = for<'r> fn(Option<&mut DbClient>, Reader, &Request<'r>) -> Reply;

/// What answers a route's requests: an open route's handler sees the shard's app; a guarded
/// one's runs once the caller passed the route's [`Access`] and sees who it is; a staff one's
/// runs once the caller passed (the operator token or a staff session) and sees the shard's
/// parts; an owned one's runs once the caller passed (the operator token, or a session or an
/// API key with `read`) and sees whose data it may read.
#[derive(Clone, Copy)]
pub enum Handler {
    Open(OpenHandler),
    Guarded(GuardedHandler),
    Staff(StaffHandler),
    Owned(OwnedHandler),
}

/// The paths a route answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathPattern {
    /// Exactly this path.
    Exact(&'static str),
    /// This prefix; what follows is a parameter (`/api/enterprise/jobs/{id}`).
    Prefix(&'static str),
    /// This prefix, then one non-empty segment (an id): `/api/users/42`.
    WithId(&'static str),
}

impl PathPattern {
    // Inlined into the router's scan: with a call per route the scan took about 1.7 times as
    // long (a release-mode loop over `match_route`).
    #[inline]
    pub fn matches(self, path: &str) -> bool {
        match self {
            PathPattern::Exact(exact) => path == exact,
            PathPattern::Prefix(prefix) => path.starts_with(prefix),
            PathPattern::WithId(prefix) => path
                .strip_prefix(prefix)
                .is_some_and(|id| !id.is_empty() && !id.contains('/')),
        }
    }
}

/// One route: everything about it is declared here.
#[derive(Clone, Copy)]
pub struct RouteSpec {
    /// The metrics label, and the name `QUEUE_ROUTE_CLASSES` knows it by.
    pub name: &'static str,
    /// The method it answers; a GET route answers HEAD too.
    pub method: Method,
    /// The `Allow` header of a 405 on its path: every method the routes of that path answer.
    pub allow: &'static str,
    pub path: PathPattern,
    /// The class its requests run in unless `QUEUE_ROUTE_CLASSES` says otherwise; `None`: at once.
    pub class: Option<Priority>,
    /// Who may call it; any but [`Access::Public`] goes with a [`Handler::Guarded`].
    pub access: Access,
    pub handler: Handler,
}

impl RouteSpec {
    /// Whether it answers `method` (HEAD on a GET route included).
    pub fn answers(&self, method: Method) -> bool {
        method == self.method || (method == Method::Head && self.method == Method::Get)
    }
}

pub(super) const fn get(name: &'static str, path: PathPattern, handler: OpenHandler) -> RouteSpec {
    RouteSpec {
        name,
        method: Method::Get,
        allow: "GET, HEAD",
        path,
        class: None,
        access: Access::Public,
        handler: Handler::Open(handler),
    }
}

pub(super) const fn post(name: &'static str, path: PathPattern, handler: OpenHandler) -> RouteSpec {
    RouteSpec {
        method: Method::Post,
        allow: "POST",
        ..get(name, path, handler)
    }
}

/// A route only callers that pass `access` reach.
const fn guarded(
    name: &'static str,
    (method, allow): (Method, &'static str),
    path: PathPattern,
    access: Access,
    handler: GuardedHandler,
) -> RouteSpec {
    RouteSpec {
        name,
        method,
        allow,
        path,
        class: None,
        access,
        handler: Handler::Guarded(handler),
    }
}

/// A financial route: guarded, in the medium class.
const fn money(
    name: &'static str,
    method: (Method, &'static str),
    path: PathPattern,
    access: Access,
    handler: GuardedHandler,
) -> RouteSpec {
    RouteSpec {
        class: Some(Priority::Medium),
        ..guarded(name, method, path, access, handler)
    }
}

/// A trading route: guarded, in the high class.
const fn trade(
    name: &'static str,
    method: (Method, &'static str),
    path: PathPattern,
    access: Access,
    handler: GuardedHandler,
) -> RouteSpec {
    RouteSpec {
        class: Some(Priority::High),
        ..guarded(name, method, path, access, handler)
    }
}

/// `GET` and `POST` on `/api/auth/api-keys`: one `Allow` for both.
const API_KEYS_GET: (Method, &str) = (Method::Get, "GET, HEAD, POST");
const API_KEYS_POST: (Method, &str) = (Method::Post, "GET, HEAD, POST");
/// `GET` and `POST` on the withdrawals.
const WITHDRAWALS_GET: (Method, &str) = (Method::Get, "GET, HEAD, POST");
const WITHDRAWALS_POST: (Method, &str) = (Method::Post, "GET, HEAD, POST");

/// A route for operators (and managers and admins): the operator token or a staff session.
pub(super) const fn operator(
    name: &'static str,
    (method, allow): (Method, &'static str),
    path: PathPattern,
    handler: StaffHandler,
) -> RouteSpec {
    RouteSpec {
        name,
        method,
        allow,
        path,
        class: None,
        access: Access::Staff(Role::Operator),
        handler: Handler::Staff(handler),
    }
}

pub(super) const GET: (Method, &str) = (Method::Get, "GET, HEAD");
pub(super) const POST: (Method, &str) = (Method::Post, "POST");

/// A report: read by dashboards and scrapers, never in a hurry; open or operator-only as
/// `METRICS_ACCESS` says.
const fn report(name: &'static str, path: PathPattern, handler: StaffHandler) -> RouteSpec {
    RouteSpec {
        class: Some(Priority::Background),
        access: Access::Reports,
        ..operator(name, GET, path, handler)
    }
}

/// The production routes, matched in this order (a longer path before a prefix of it).
pub const ROUTES: &[RouteSpec] = &[
    get("health", Exact("/health"), |app, _| {
        handlers::health(app.published()).into()
    }),
    get("livez", Exact("/livez"), |_, _| handlers::livez().into()),
    get("readyz", Exact("/readyz"), |app, _| {
        handlers::readyz(app.draining).into()
    }),
    report(
        "cluster_status",
        Exact("/api/enterprise/cluster/status"),
        |app, _| handlers::json_snapshot(app.published.cluster_status.clone()).into(),
    ),
    report("metrics", Exact("/api/enterprise/metrics"), |app, _| {
        handlers::json_snapshot(app.published.metrics.clone()).into()
    }),
    report("prometheus", Exact("/metrics"), |app, _| {
        handlers::prometheus(app.published.prometheus.clone()).into()
    }),
    report(
        "queues_status",
        Exact("/api/enterprise/queues/status"),
        |app, _| handlers::json_snapshot(app.published.queues_status.clone()).into(),
    ),
    operator(
        "jobs_enqueue",
        POST,
        Exact("/api/enterprise/jobs"),
        |app, request| jobs::enqueue(app.queues, app.db.as_deref_mut(), request),
    ),
    operator(
        "jobs_dead",
        GET,
        Exact("/api/enterprise/jobs/dead"),
        |app, _| jobs::dead_letters(app.queues),
    ),
    operator(
        "jobs_dead_replay",
        POST,
        Prefix("/api/enterprise/jobs/dead/"),
        |app, request| jobs::replay(app.queues, request),
    ),
    operator(
        "job_status",
        GET,
        Prefix("/api/enterprise/jobs/"),
        |app, request| jobs::status(app.queues, app.db.as_deref_mut(), request),
    ),
    post("create_user", Exact("/api/users"), |app, request| {
        accounts::register(app.accounts.as_ref(), request)
    }),
    // A user's name and email: that user's, or staff's; anyone else gets the 404 of a
    // missing id.
    RouteSpec {
        name: "get_user",
        method: Method::Get,
        allow: "GET, HEAD",
        path: WithId("/api/users/"),
        class: None,
        access: Access::OwnerOrStaff,
        handler: Handler::Owned(users::get),
    },
    report("alerts", Exact("/api/enterprise/alerts"), |app, _| {
        handlers::json_snapshot(app.published.alerts.clone()).into()
    }),
    // The page holds no data (its figures come from the reports above): open to all.
    RouteSpec {
        class: Some(Priority::Background),
        ..get("dashboard", Exact("/dashboard"), |_, _| {
            handlers::dashboard().into()
        })
    },
    post(
        "auth_register",
        Exact("/api/auth/register"),
        |app, request| accounts::register(app.accounts.as_ref(), request),
    ),
    post("auth_login", Exact("/api/auth/login"), |app, request| {
        accounts::login(app.accounts.as_ref(), request)
    }),
    guarded(
        "auth_logout",
        (Method::Post, "POST"),
        Exact("/api/auth/logout"),
        Access::Session,
        accounts::logout,
    ),
    guarded(
        "auth_me",
        (Method::Get, "GET, HEAD"),
        Exact("/api/auth/me"),
        Access::Scoped(Scope::Read),
        accounts::me,
    ),
    guarded(
        "api_keys_list",
        API_KEYS_GET,
        Exact("/api/auth/api-keys"),
        Access::Session,
        accounts::list_keys,
    ),
    guarded(
        "api_keys_create",
        API_KEYS_POST,
        Exact("/api/auth/api-keys"),
        Access::Session,
        accounts::create_key,
    ),
    guarded(
        "api_keys_delete",
        (Method::Delete, "DELETE"),
        WithId("/api/auth/api-keys/"),
        Access::Session,
        accounts::delete_key,
    ),
    money(
        "financial_balances",
        (Method::Get, "GET, HEAD"),
        Exact("/api/enterprise/financial/balances"),
        Access::Scoped(Scope::Read),
        financial::balances,
    ),
    money(
        "financial_transactions",
        (Method::Get, "GET, HEAD"),
        Exact("/api/enterprise/financial/transactions"),
        Access::Scoped(Scope::Read),
        financial::transactions,
    ),
    money(
        "financial_recharge",
        (Method::Post, "POST"),
        Exact("/api/enterprise/financial/recharges"),
        Access::Scoped(Scope::Trade),
        financial::recharge,
    ),
    RouteSpec {
        class: Some(Priority::Medium),
        ..post(
            "financial_payment_webhook",
            Exact("/api/enterprise/financial/webhooks/payment"),
            |app, request| financial::payment_webhook(app.accounts.as_ref(), request),
        )
    },
    money(
        "financial_ledger_check",
        (Method::Get, "GET, HEAD"),
        Exact("/api/enterprise/financial/ledger/check"),
        Access::Staff(Role::Admin),
        financial::ledger_check,
    ),
    money(
        "withdrawals_list",
        WITHDRAWALS_GET,
        Exact("/api/enterprise/financial/withdrawals"),
        Access::Scoped(Scope::Read),
        financial_rules::list_withdrawals,
    ),
    money(
        "withdrawals_request",
        WITHDRAWALS_POST,
        Exact("/api/enterprise/financial/withdrawals"),
        Access::Scoped(Scope::Withdraw),
        financial_rules::request_withdrawal,
    ),
    money(
        "withdrawals_admin_list",
        (Method::Get, "GET, HEAD"),
        Exact("/api/enterprise/financial/admin/withdrawals"),
        Access::Staff(Role::Admin),
        financial_rules::admin_withdrawals,
    ),
    money(
        "withdrawals_decide",
        (Method::Post, "POST"),
        Prefix("/api/enterprise/financial/withdrawals/"),
        Access::Staff(Role::Admin),
        financial_rules::decide_withdrawal,
    ),
    money(
        "coupons_create",
        (Method::Post, "POST"),
        Exact("/api/enterprise/financial/coupons"),
        Access::Staff(Role::Admin),
        financial_rules::create_coupon,
    ),
    money(
        "coupons_redeem",
        (Method::Post, "POST"),
        Exact("/api/enterprise/financial/coupons/redeem"),
        Access::Session,
        financial_rules::redeem_coupon,
    ),
    money(
        "plans",
        (Method::Get, "GET, HEAD"),
        Exact("/api/enterprise/financial/plans"),
        Access::Scoped(Scope::Read),
        financial_rules::plans,
    ),
    money(
        "plans_subscribe",
        (Method::Post, "POST"),
        Exact("/api/enterprise/financial/plans/subscribe"),
        Access::Session,
        financial_rules::subscribe,
    ),
    money(
        "commissions_charge",
        (Method::Post, "POST"),
        Exact("/api/enterprise/financial/commissions"),
        Access::Staff(Role::Operator),
        financial_rules::charge_commission,
    ),
    affiliate_route(
        "affiliate_apply",
        POST,
        Exact("/api/enterprise/affiliate/apply"),
        Access::Session,
        affiliate::apply,
    ),
    affiliate_route(
        "affiliate_tier",
        POST,
        Exact("/api/enterprise/affiliate/admin/tier"),
        Access::Staff(Role::Admin),
        affiliate::set_tier,
    ),
    affiliate_route(
        "affiliate_clawback",
        POST,
        Exact("/api/enterprise/affiliate/admin/clawbacks"),
        Access::Staff(Role::Admin),
        affiliate::clawback,
    ),
    affiliate_route(
        "affiliate_report",
        GET,
        Exact("/api/enterprise/affiliate/admin/report"),
        Access::Staff(Role::Admin),
        affiliate::report,
    ),
    affiliate_route(
        "affiliate_attribute",
        POST,
        Exact("/api/enterprise/affiliate/attribute"),
        Access::Session,
        affiliate::attribute,
    ),
    affiliate_route(
        "affiliate_dashboard",
        GET,
        Exact("/api/enterprise/affiliate/dashboard"),
        Access::Scoped(Scope::Read),
        affiliate::dashboard,
    ),
    affiliate_route(
        "affiliate_earnings",
        GET,
        Exact("/api/enterprise/affiliate/earnings"),
        Access::Scoped(Scope::Read),
        affiliate::earnings,
    ),
    affiliate_route(
        "affiliate_referrals",
        GET,
        Exact("/api/enterprise/affiliate/referrals"),
        Access::Scoped(Scope::Read),
        affiliate::referrals,
    ),
    affiliate_route(
        "affiliate_code",
        GET,
        Exact("/api/enterprise/affiliate/code"),
        Access::Scoped(Scope::Read),
        affiliate::code,
    ),
    affiliate_route(
        "affiliate_campaigns_list",
        AFFILIATE_CAMPAIGNS_GET,
        Exact("/api/enterprise/affiliate/campaigns"),
        Access::Scoped(Scope::Read),
        affiliate::campaigns,
    ),
    affiliate_route(
        "affiliate_campaigns_create",
        AFFILIATE_CAMPAIGNS_POST,
        Exact("/api/enterprise/affiliate/campaigns"),
        Access::Session,
        affiliate::create_campaign,
    ),
    affiliate_route(
        "affiliate_convert",
        POST,
        Exact("/api/enterprise/affiliate/conversions"),
        Access::Scoped(Scope::Trade),
        affiliate::convert,
    ),
    RouteSpec {
        class: Some(Priority::Low),
        ..get(
            "affiliate_click",
            Prefix(affiliate::LINK_PREFIX),
            |app, request| affiliate::click(app.accounts.as_ref(), request),
        )
    },
    trade(
        "trading_exchange_account_create",
        (Method::Post, "POST, DELETE"),
        Exact("/api/enterprise/trading/exchange-accounts"),
        Access::Session,
        trading::exchange_account_create,
    ),
    trade(
        "trading_exchange_account_delete",
        (Method::Delete, "POST, DELETE"),
        Exact("/api/enterprise/trading/exchange-accounts"),
        Access::Session,
        trading::exchange_account_delete,
    ),
    trade(
        "trading_settings_get",
        (Method::Get, "GET, HEAD, PUT"),
        Exact("/api/enterprise/trading/settings"),
        Access::Scoped(Scope::Read),
        trading::settings_get,
    ),
    trade(
        "trading_settings_put",
        (Method::Put, "GET, HEAD, PUT"),
        Exact("/api/enterprise/trading/settings"),
        Access::Scoped(Scope::Trade),
        trading::settings_put,
    ),
    trade(
        "trading_positions_list",
        GET,
        Exact("/api/enterprise/trading/positions"),
        Access::Scoped(Scope::Read),
        trading::positions_list,
    ),
    trade(
        "trading_position_get",
        GET,
        WithId(trading::POSITIONS_PREFIX),
        Access::Scoped(Scope::Read),
        trading::position_get,
    ),
    trade(
        "trading_position_close",
        POST,
        Prefix(trading::POSITIONS_PREFIX),
        Access::Scoped(Scope::Trade),
        trading::position_close,
    ),
    trade(
        "trading_execute",
        POST,
        Exact("/api/enterprise/trading/execute"),
        Access::Staff(Role::Operator),
        trading::execute,
    ),
    trade(
        "trading_signal_get",
        GET,
        WithId(trading::SIGNALS_PREFIX),
        Access::Staff(Role::Operator),
        trading::signal_get,
    ),
    trade(
        "trading_fx_rate_record",
        POST,
        Exact("/api/enterprise/trading/fx-rates"),
        Access::Staff(Role::Operator),
        trading::fx_rate_record,
    ),
    RouteSpec {
        class: Some(Priority::High),
        ..post(
            "trading_signal_webhook",
            Exact("/api/enterprise/trading/webhooks/signal"),
            |app, request| trading::signal_webhook(app.accounts.as_ref(), request),
        )
    },
];

/// An affiliate route: guarded, in the low class.
const fn affiliate_route(
    name: &'static str,
    method: (Method, &'static str),
    path: PathPattern,
    access: Access,
    handler: GuardedHandler,
) -> RouteSpec {
    RouteSpec {
        class: Some(Priority::Low),
        ..guarded(name, method, path, access, handler)
    }
}

/// `GET` and `POST` on `/api/enterprise/affiliate/campaigns`: one `Allow` for both.
const AFFILIATE_CAMPAIGNS_GET: (Method, &str) = (Method::Get, "GET, HEAD, POST");
const AFFILIATE_CAMPAIGNS_POST: (Method, &str) = (Method::Post, "GET, HEAD, POST");

/// How many routes there are, debug ones included.
pub const ROUTE_COUNT: usize = ROUTES.len() + debug::ROUTES.len();

/// Every route, by [`RouteId`]: the production ones, then the debug ones. [`TABLE`] is the
/// same in one place in memory, for lookups by id.
const ALL: [RouteSpec; ROUTE_COUNT] = {
    let mut all = [ROUTES[0]; ROUTE_COUNT];
    let mut i = 0;
    while i < ROUTE_COUNT {
        all[i] = if i < ROUTES.len() {
            ROUTES[i]
        } else {
            debug::ROUTES[i - ROUTES.len()]
        };
        i += 1;
    }
    all
};

static TABLE: [RouteSpec; ROUTE_COUNT] = ALL;

/// Route names as metrics label them, by [`RouteId`]; the last two count 405 and 404 answers.
pub static ROUTE_NAMES: &[&str] = &{
    let mut names = [""; ROUTE_COUNT + 2];
    let mut i = 0;
    while i < ROUTE_COUNT {
        names[i] = ALL[i].name;
        i += 1;
    }
    names[METHOD_NOT_ALLOWED_INDEX] = "method_not_allowed";
    names[NOT_FOUND_INDEX] = "not_found";
    names
};
pub const METHOD_NOT_ALLOWED_INDEX: usize = ROUTE_COUNT;
pub const NOT_FOUND_INDEX: usize = ROUTE_COUNT + 1;

/// A route: its index in the table of every route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteId(usize);

impl RouteId {
    pub const fn index(self) -> usize {
        self.0
    }

    pub fn spec(self) -> &'static RouteSpec {
        &TABLE[self.0]
    }

    /// Whether [`super::debug`] declares it.
    pub const fn is_debug(self) -> bool {
        self.0 >= ROUTES.len()
    }
}

/// The route named `name`. In a constant, a name no route has fails the build.
pub const fn id_of(name: &str) -> RouteId {
    let mut i = 0;
    while i < ROUTE_COUNT {
        if const_str_eq(ALL[i].name, name) {
            return RouteId(i);
        }
        i += 1;
    }
    panic!("no route has that name");
}

const fn const_str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The class of each route in [`ROUTE_NAMES`] order, before `QUEUE_ROUTE_CLASSES` overrides.
pub fn default_classes() -> Vec<Option<Priority>> {
    let mut classes: Vec<Option<Priority>> = TABLE.iter().map(|spec| spec.class).collect();
    classes.resize(ROUTE_NAMES.len(), None);
    classes
}

/// The result of matching a request against the table.
#[derive(Debug, PartialEq, Eq)]
pub enum Match {
    Found(RouteId),
    /// The path exists but not for this method; the value is the `Allow` header.
    MethodNotAllowed(&'static str),
    NotFound,
}

/// The first route whose path matches decides: found, or another method's route declared with
/// the same path, or 405 with its `Allow`.
pub fn match_route(method: Method, path: &str, debug_routes: bool) -> Match {
    // The debug table is not even looked at unless it is switched on.
    let found = match position(ROUTES, path) {
        Some(index) => Some((ROUTES, index, 0)),
        None if debug_routes => {
            position(debug::ROUTES, path).map(|index| (debug::ROUTES, index, ROUTES.len()))
        }
        None => None,
    };
    let Some((routes, index, offset)) = found else {
        return Match::NotFound;
    };
    let spec = &routes[index];
    if spec.answers(method) {
        return Match::Found(RouteId(offset + index));
    }
    let same_path = routes[index + 1..]
        .iter()
        .position(|other| other.path == spec.path && other.answers(method));
    match same_path {
        Some(next) => Match::Found(RouteId(offset + index + 1 + next)),
        None => Match::MethodNotAllowed(spec.allow),
    }
}

fn position(routes: &[RouteSpec], path: &str) -> Option<usize> {
    routes.iter().position(|spec| spec.path.matches(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(name: &str) -> Match {
        Match::Found(id_of(name))
    }

    #[test]
    fn route_table() {
        let cases = [
            (Method::Get, "/health", false, found("health")),
            (Method::Head, "/health", false, found("health")),
            (
                Method::Post,
                "/health",
                false,
                Match::MethodNotAllowed("GET, HEAD"),
            ),
            (
                Method::Get,
                "/api/enterprise/cluster/status",
                false,
                found("cluster_status"),
            ),
            (
                Method::Get,
                "/api/enterprise/metrics",
                false,
                found("metrics"),
            ),
            (Method::Get, "/metrics", false, found("prometheus")),
            (
                Method::Get,
                "/api/enterprise/alerts",
                false,
                found("alerts"),
            ),
            (Method::Get, "/dashboard", false, found("dashboard")),
            (Method::Post, "/debug/stall-shard", false, Match::NotFound),
            (
                Method::Post,
                "/debug/stall-shard",
                true,
                found("debug_stall_shard"),
            ),
            (Method::Get, "/nope", false, Match::NotFound),
            (Method::Post, "/api/users", false, found("create_user")),
            (
                Method::Get,
                "/api/users",
                false,
                Match::MethodNotAllowed("POST"),
            ),
            (Method::Get, "/api/users/42", false, found("get_user")),
            (
                Method::Post,
                "/api/users/42",
                false,
                Match::MethodNotAllowed("GET, HEAD"),
            ),
            (Method::Get, "/api/users/", false, Match::NotFound),
            (Method::Get, "/api/users/4/2", false, Match::NotFound),
            (Method::Get, "/health/", false, Match::NotFound),
            (Method::Post, "/debug/crash-shard", false, Match::NotFound),
            (
                Method::Post,
                "/debug/crash-shard",
                true,
                found("debug_crash_shard"),
            ),
            (
                Method::Get,
                "/debug/crash-shard",
                true,
                Match::MethodNotAllowed("POST"),
            ),
            (Method::Get, "/debug/sleep", true, found("debug_sleep")),
            (Method::Get, "/debug/effects", true, found("debug_effects")),
            (
                Method::Get,
                "/api/auth/api-keys",
                false,
                found("api_keys_list"),
            ),
            (
                Method::Post,
                "/api/auth/api-keys",
                false,
                found("api_keys_create"),
            ),
            (
                Method::Delete,
                "/api/auth/api-keys",
                false,
                Match::MethodNotAllowed("GET, HEAD, POST"),
            ),
            (
                Method::Delete,
                "/api/auth/api-keys/0123456789abcdef0123456789abcdef",
                false,
                found("api_keys_delete"),
            ),
            (Method::Get, "/api/auth/me", false, found("auth_me")),
            (
                Method::Get,
                "/api/auth/login",
                false,
                Match::MethodNotAllowed("POST"),
            ),
            (
                Method::Get,
                "/api/enterprise/financial/balances",
                false,
                found("financial_balances"),
            ),
            (
                Method::Post,
                "/api/enterprise/financial/recharges",
                false,
                found("financial_recharge"),
            ),
            (
                Method::Get,
                "/api/enterprise/financial/recharges",
                false,
                Match::MethodNotAllowed("POST"),
            ),
            (
                Method::Post,
                "/api/enterprise/financial/webhooks/payment",
                false,
                found("financial_payment_webhook"),
            ),
            (
                Method::Get,
                "/api/enterprise/financial/ledger/check",
                false,
                found("financial_ledger_check"),
            ),
        ];
        for (method, path, debug, expected) in cases {
            assert_eq!(
                match_route(method, path, debug),
                expected,
                "{method:?} {path} debug={debug}"
            );
        }
    }

    #[test]
    fn job_routes_and_classes() {
        let cases = [
            (Method::Post, "/api/enterprise/jobs", found("jobs_enqueue")),
            (
                Method::Get,
                "/api/enterprise/jobs",
                Match::MethodNotAllowed("POST"),
            ),
            (
                Method::Get,
                "/api/enterprise/jobs/0.1.2",
                found("job_status"),
            ),
            (Method::Get, "/api/enterprise/jobs/dead", found("jobs_dead")),
            (
                Method::Post,
                "/api/enterprise/jobs/dead/0.1.2/replay",
                found("jobs_dead_replay"),
            ),
            (
                Method::Get,
                "/api/enterprise/jobs/dead/0.1.2/replay",
                Match::MethodNotAllowed("POST"),
            ),
        ];
        for (method, path, expected) in cases {
            assert_eq!(
                match_route(method, path, false),
                expected,
                "{method:?} {path}"
            );
        }
        let classes = default_classes();
        for unclassed in ["health", "livez", "readyz", "get_user"] {
            assert_eq!(classes[id_of(unclassed).index()], None, "{unclassed}");
        }
        for report in ["cluster_status", "prometheus", "dashboard"] {
            assert_eq!(
                classes[id_of(report).index()],
                Some(Priority::Background),
                "{report}"
            );
        }
    }

    /// A route's name, class and methods are read from its one declaration, wherever they are
    /// used: the metrics labels, the classes, the router's 405.
    #[test]
    fn each_route_is_declared_once() {
        let classes = default_classes();
        assert_eq!(ROUTE_NAMES.len(), ROUTE_COUNT + 2);
        assert_eq!(classes.len(), ROUTE_NAMES.len());
        for index in 0..ROUTE_COUNT {
            let id = RouteId(index);
            let spec = id.spec();
            assert_eq!(id_of(spec.name), id, "{} is named twice", spec.name);
            assert_eq!(ROUTE_NAMES[index], spec.name);
            assert_eq!(classes[index], spec.class, "{}", spec.name);
            // Allow lists every method declared on the route's path, in table order.
            let allow: Vec<&str> = TABLE
                .iter()
                .filter(|other| other.path == spec.path)
                .flat_map(|other| match other.method {
                    Method::Get => vec!["GET", "HEAD"],
                    method => vec![method.as_str()],
                })
                .collect();
            assert_eq!(spec.allow, allow.join(", "), "{}", spec.name);
            // A route open to all has an open handler; an operator route or a report a staff
            // one (a staff route about users' data, the ledger check, may take its session
            // through the guard instead); any other a guarded one.
            let expected: &[&str] = match spec.access {
                Access::Public => &["open"],
                Access::Reports => &["staff"],
                Access::Staff(_) => &["staff", "guarded"],
                Access::Session | Access::Scoped(_) => &["guarded"],
                Access::OwnerOrStaff => &["owned"],
            };
            let handler = match spec.handler {
                Handler::Open(_) => "open",
                Handler::Staff(_) => "staff",
                Handler::Guarded(_) => "guarded",
                Handler::Owned(_) => "owned",
            };
            assert!(expected.contains(&handler), "{}: {handler}", spec.name);
            // Debug routes live under /debug/, where no production path reaches.
            let (PathPattern::Exact(path) | PathPattern::Prefix(path) | PathPattern::WithId(path)) =
                spec.path;
            assert_eq!(id.is_debug(), path.starts_with("/debug/"), "{}", spec.name);
            if id.is_debug() {
                assert_eq!(match_route(spec.method, path, false), Match::NotFound);
            }
        }
        assert_eq!(
            ROUTE_NAMES[METHOD_NOT_ALLOWED_INDEX..],
            ["method_not_allowed", "not_found"]
        );
        assert_eq!(classes[ROUTE_COUNT..], [None, None]);
    }

    /// Every route's access, written out: a route whose access is loosened (or a new route
    /// without a line here) fails this test.
    #[test]
    fn route_access_is_locked() {
        let operator = Access::Staff(Role::Operator);
        let expected = [
            ("health", Access::Public),
            ("livez", Access::Public),
            ("readyz", Access::Public),
            ("cluster_status", Access::Reports),
            ("metrics", Access::Reports),
            ("prometheus", Access::Reports),
            ("queues_status", Access::Reports),
            ("jobs_enqueue", operator),
            ("jobs_dead", operator),
            ("jobs_dead_replay", operator),
            ("job_status", operator),
            ("create_user", Access::Public),
            ("get_user", Access::OwnerOrStaff),
            ("alerts", Access::Reports),
            ("dashboard", Access::Public),
            ("auth_register", Access::Public),
            ("auth_login", Access::Public),
            ("auth_logout", Access::Session),
            ("auth_me", Access::Scoped(Scope::Read)),
            ("api_keys_list", Access::Session),
            ("api_keys_create", Access::Session),
            ("api_keys_delete", Access::Session),
            ("financial_balances", Access::Scoped(Scope::Read)),
            ("financial_transactions", Access::Scoped(Scope::Read)),
            ("financial_recharge", Access::Scoped(Scope::Trade)),
            ("financial_payment_webhook", Access::Public),
            ("financial_ledger_check", Access::Staff(Role::Admin)),
            ("trading_exchange_account_create", Access::Session),
            ("trading_exchange_account_delete", Access::Session),
            ("trading_settings_get", Access::Scoped(Scope::Read)),
            ("trading_settings_put", Access::Scoped(Scope::Trade)),
            ("trading_signal_webhook", Access::Public),
            ("trading_positions_list", Access::Scoped(Scope::Read)),
            ("trading_position_get", Access::Scoped(Scope::Read)),
            ("trading_position_close", Access::Scoped(Scope::Trade)),
            ("trading_fx_rate_record", operator),
            ("trading_execute", operator),
            ("trading_signal_get", operator),
            ("withdrawals_list", Access::Scoped(Scope::Read)),
            ("withdrawals_request", Access::Scoped(Scope::Withdraw)),
            ("withdrawals_decide", Access::Staff(Role::Admin)),
            ("withdrawals_admin_list", Access::Staff(Role::Admin)),
            ("coupons_create", Access::Staff(Role::Admin)),
            ("coupons_redeem", Access::Session),
            ("plans", Access::Scoped(Scope::Read)),
            ("plans_subscribe", Access::Session),
            ("commissions_charge", operator),
            ("affiliate_apply", Access::Session),
            ("affiliate_tier", Access::Staff(Role::Admin)),
            ("affiliate_clawback", Access::Staff(Role::Admin)),
            ("affiliate_attribute", Access::Session),
            ("affiliate_dashboard", Access::Scoped(Scope::Read)),
            ("affiliate_earnings", Access::Scoped(Scope::Read)),
            ("affiliate_referrals", Access::Scoped(Scope::Read)),
            ("affiliate_code", Access::Scoped(Scope::Read)),
            ("affiliate_campaigns_list", Access::Scoped(Scope::Read)),
            ("affiliate_campaigns_create", Access::Session),
            ("affiliate_convert", Access::Scoped(Scope::Trade)),
            ("affiliate_click", Access::Public),
            ("affiliate_report", Access::Staff(Role::Admin)),
            ("debug_crash_shard", operator),
            ("debug_sleep", operator),
            ("debug_shard", operator),
            ("debug_effects", operator),
            ("debug_stall_shard", operator),
        ];
        let declared: Vec<(&str, Access)> = TABLE.iter().map(|s| (s.name, s.access)).collect();
        let mut declared_sorted = declared.clone();
        declared_sorted.sort_by_key(|(name, _)| *name);
        let mut expected_sorted = expected.to_vec();
        expected_sorted.sort_by_key(|(name, _)| *name);
        assert_eq!(declared_sorted, expected_sorted);
    }
}
