//! The application: routes and handlers, engine-agnostic.
//!
//! Each shard builds its own [`ShardApp`] through the [`AppFactory`] and drives it through the
//! codec's [`Service`] trait; the engine also asks it whether to serve a connection it accepted
//! and for the shard's metrics report. The app knows requests and responses, its own metrics,
//! and the monitor's published snapshot; it knows no engine, socket or timer.
//!
//! # Layout
//! - [`routes`]: the route table: each route's method, path, name (its metrics label), class
//!   and handler, declared once; the router.
//! - [`handlers`]: one function per production endpoint.
//! - [`jobs`]: the job endpoints over the shard's queues.
//! - [`users`]: the users API, the first endpoints on the database tier.
//! - [`access`]: who calls: each route's [`routes::Access`], credentials, the per-shard cache
//!   of sessions and API keys, and the check before a guarded handler.
//! - [`accounts`]: registration, login, logout, `me` and API keys.
//! - [`financial_rules`]: withdrawals, coupons, plans and the commission charge.
//! - [`affiliate`]: affiliate codes, attribution, campaign links, earnings and conversion.
//! - [`debug`]: the debug routes and hooks, on with `--debug-routes`.
//! - [`factory`]: [`AppFactory`], which builds each shard's app.
//! - [`accept`]: whether an accepted connection is served, and connection timeout counts.

pub mod accept;
pub mod access;
pub mod accounts;
pub mod affiliate;
pub mod debug;
pub mod factory;
pub mod financial;
pub mod financial_rules;
pub mod handlers;
pub mod jobs;
pub mod routes;
pub mod trading;
pub mod users;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

pub use accept::AcceptDecision;
pub use factory::AppFactory;

use crate::auth::operator::OperatorToken;
use crate::auth::role::Role;
use crate::config::MetricsAccess;
use crate::db::DbClient;
use crate::http::TurnWait;
use crate::http::{
    quote_input, HttpDate, HttpError, Reply, Request, Response, Service, StatusCode,
};
use crate::metrics::{ShardMetrics, ShardReport};
use crate::monitor::Published;
use crate::queue::{Priority, RequestGate, RouteClasses, ShardQueues};
use access::{Access, Refusal};
use routes::Match;

/// One shard's application state. Owned by the shard; never shared with another.
pub struct ShardApp {
    pub shard: usize,
    /// The monitor's latest snapshot, re-read only when the monitor has published a new one:
    /// a plain load of the pointer per request instead of `ArcSwap::load`'s read-modify-writes.
    published: arc_swap::Cache<Arc<ArcSwap<Published>>, Arc<Published>>,
    pub metrics: ShardMetrics,
    date: HttpDate,
    draining: bool,
    debug_routes: bool,
    pub queues: Rc<ShardQueues>,
    /// The class of each route (indexed as [`routes::ROUTE_NAMES`]).
    route_classes: Vec<Option<Priority>>,
    /// Where classed requests take turns; `None` when no route has a class.
    gate: Option<Rc<RequestGate>>,
    /// The route [`Service::turn_wait`] found, so that `call` does not match it again.
    route_awaiting_turn: Option<Match>,
    /// This shard's way to the database; `None` when none is configured.
    db: Option<DbClient>,
    /// Accounts and access (they need the database): `None` without one.
    accounts: Option<access::Accounts>,
    /// The bootstrap operator credential (`OPERATOR_TOKEN`), if set.
    operator_token: Option<OperatorToken>,
    /// Whether the reports are open to all (`METRICS_ACCESS=open`).
    reports_open: bool,
    /// (route, status) of answers given later (database replies), counted at the next tick.
    /// No lock: a later reply's future is polled and dropped only where the app is, on the
    /// shard's thread under glommio and under the shard's own lock under may.
    late: Rc<RefCell<Vec<(usize, u16)>>>,
}

impl ShardApp {
    pub fn new(
        shard: usize,
        published: Arc<ArcSwap<Published>>,
        debug_routes: bool,
        queues: Rc<ShardQueues>,
        route_classes: Option<&RouteClasses>,
    ) -> Self {
        ShardApp {
            shard,
            published: arc_swap::Cache::new(published),
            metrics: ShardMetrics::new(routes::ROUTE_NAMES.len()),
            date: HttpDate::now(),
            draining: false,
            debug_routes,
            queues,
            route_classes: RouteClasses::resolve(
                route_classes,
                routes::ROUTE_NAMES,
                &routes::default_classes(),
            ),
            gate: None,
            route_awaiting_turn: None,
            db: None,
            accounts: None,
            operator_token: None,
            reports_open: true,
            late: Rc::default(),
        }
    }

    /// Gives the shard its database client (the database routes answer 503 without one).
    pub fn with_database(mut self, db: Option<DbClient>) -> Self {
        self.db = db;
        self
    }

    /// Gives the shard its accounts (the account routes answer 503 without them).
    pub fn with_accounts(mut self, accounts: Option<access::Accounts>) -> Self {
        self.accounts = accounts;
        self
    }

    /// Who reaches the operator routes besides staff sessions (`OPERATOR_TOKEN`), and whether
    /// the reports are open to all (`METRICS_ACCESS`).
    pub fn with_access(
        mut self,
        operator_token: Option<OperatorToken>,
        metrics_access: MetricsAccess,
    ) -> Self {
        self.operator_token = operator_token;
        self.reports_open = metrics_access == MetricsAccess::Open;
        self
    }

    /// Answers a request to `route`: an open route at once; a guarded or staff one once its
    /// caller passed the route's access.
    fn answer(&mut self, route: routes::RouteId, request: &Request<'_>) -> Reply {
        let spec = route.spec();
        let access = match spec.access {
            Access::Reports if self.reports_open => Access::Public,
            Access::Reports => Access::Staff(Role::Operator),
            access => access,
        };
        match (spec.handler, &self.accounts) {
            (routes::Handler::Open(handler), _) => handler(self, request),
            (routes::Handler::Staff(handler), _) => self.answer_staff(access, handler, request),
            (routes::Handler::Guarded(handler), Some(accounts)) => {
                accounts.guard(request, access, handler)
            }
            (routes::Handler::Guarded(_), None) => {
                users::db_error(&crate::db::DbError::NotConfigured).into()
            }
            (routes::Handler::Owned(handler), _) => self.answer_owned(access, handler, request),
        }
    }

    /// Answers a route of a user's own resource: at once for the operator token (staff) or a
    /// cached caller, with whose data the caller may read; else after the caller's lookup.
    fn answer_owned(
        &mut self,
        access: Access,
        handler: routes::OwnedHandler,
        request: &Request<'_>,
    ) -> Reply {
        let operator = match (self.operator_token, request.header("Authorization")) {
            (Some(token), Some(value)) => token.matches(value),
            _ => false,
        };
        if operator {
            return handler(self.db.as_mut(), access::Reader::Staff, request);
        }
        let Some(accounts) = &self.accounts else {
            return users::db_error(&crate::db::DbError::NotConfigured).into();
        };
        accounts.admit_then(request, access, move |accounts, caller, request| {
            handler(
                Some(&mut accounts.db()),
                access::Reader::of(caller),
                request,
            )
        })
    }

    /// Answers an operator route (or a report): at once for an open one or the operator token;
    /// else once the caller's session passed `access`.
    fn answer_staff(
        &mut self,
        access: Access,
        handler: routes::StaffHandler,
        request: &Request<'_>,
    ) -> Reply {
        let token = match (self.operator_token, request.header("Authorization")) {
            (Some(token), Some(value)) if token.matches(value) => Some(Role::Operator),
            _ => None,
        };
        let admitted =
            match (access, token) {
                (Access::Public, _) => true,
                (Access::Staff(least), Some(role)) if role >= least => true,
                (Access::Staff(_), Some(_)) => return Refusal::Forbidden(
                    "forbidden",
                    "the operator token is not enough for this route: it needs an admin session",
                )
                .response()
                .into(),
                _ => false,
            };
        if admitted {
            let mut parts = routes::ShardParts {
                shard: self.shard,
                queues: &self.queues,
                db: self.db.as_mut(),
                published: self.published.load(),
            };
            return handler(&mut parts, request);
        }
        let Some(accounts) = &self.accounts else {
            return no_operator_credentials(self.operator_token.is_some(), request)
                .response()
                .into();
        };
        let (shard, queues, published) = (
            self.shard,
            self.queues.clone(),
            self.published.load().clone(),
        );
        accounts.admit_then(request, access, move |accounts, _caller, request| {
            let mut db = accounts.db();
            let mut parts = routes::ShardParts {
                shard,
                queues: &queues,
                db: Some(&mut db),
                published: &published,
            };
            handler(&mut parts, request)
        })
    }

    /// Called by the engine about once a second.
    pub fn tick(&mut self, now: SystemTime) {
        self.date.refresh(now);
        self.queues.refresh_weights();
        let late = self.late.take();
        for (route, status) in late {
            self.metrics.count_route(route, status);
        }
    }

    /// Whether any route has a class: then the engine gives the app a [`RequestGate`].
    pub fn has_route_classes(&self) -> bool {
        self.route_classes.iter().any(Option::is_some)
    }

    /// Makes classed requests take turns at `gate` (see [`crate::queue::gate`]).
    pub fn set_request_gate(&mut self, gate: Rc<RequestGate>) {
        self.gate = Some(gate);
    }

    pub fn request_gate(&self) -> Option<&Rc<RequestGate>> {
        self.gate.as_ref()
    }

    /// The shard stopped accepting: `/readyz` answers 503 from now on.
    pub fn begin_draining(&mut self) {
        self.draining = true;
    }

    /// The monitor's latest snapshot.
    fn published(&mut self) -> &Published {
        self.published.load()
    }

    /// The shard's metrics report for the monitor, with the request gate's counts in its
    /// queues' classes.
    pub fn report(&mut self, generation: u64, tid: i32, now: Instant) -> ShardReport {
        let mut report = self.metrics.report(self.shard, generation, tid, now);
        let mut queues = self.queues.report();
        if let Some(gate) = &self.gate {
            let counts = gate.counts();
            for (i, class) in queues.classes.iter_mut().enumerate() {
                class.counters.requests_passed = counts.passed[i];
                class.counters.requests_waited = counts.waited[i];
            }
        }
        report.queues = Some(queues);
        report
    }
}

/// Why an operator route refuses a caller on a server without a database (no sessions there):
/// 401 without the operator token or with a wrong one, 403 where no token is set at all.
fn no_operator_credentials(token_set: bool, request: &Request<'_>) -> Refusal {
    match (token_set, request.header("Authorization")) {
        (false, _) => Refusal::Forbidden(
            "operator_access_off",
            "operator routes need OPERATOR_TOKEN or a staff session; this server has neither (no OPERATOR_TOKEN, no DATABASE_URL)",
        ),
        (true, None) => Refusal::Unauthenticated(
            "missing_credentials",
            "send Authorization: Bearer <operator token>",
        ),
        (true, Some(_)) => Refusal::Unauthenticated(
            "invalid_operator_token",
            "the bearer token is not the operator token",
        ),
    }
}

impl Service for ShardApp {
    fn turn_wait(&mut self, request: &Request<'_>) -> Option<TurnWait> {
        let gate = self.gate.as_ref()?;
        let matched = routes::match_route(request.method, request.path, self.debug_routes);
        let class = match matched {
            Match::Found(route) => self.route_classes[route.index()],
            _ => None,
        };
        let wait = class.and_then(|class| gate.wait_for_turn(class, std::time::Instant::now()));
        if wait.is_none() {
            self.route_awaiting_turn = Some(matched);
        }
        wait
    }

    fn call(&mut self, request: &Request<'_>) -> Reply {
        let matched = self.route_awaiting_turn.take().unwrap_or_else(|| {
            routes::match_route(request.method, request.path, self.debug_routes)
        });
        let (route_index, reply) = match matched {
            Match::Found(route) => (route.index(), self.answer(route, request)),
            Match::MethodNotAllowed(allow) => (
                routes::METHOD_NOT_ALLOWED_INDEX,
                Response::error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    &format!(
                        "{} is not allowed on {}; allowed: {allow}",
                        request.method.as_str(),
                        quote_input(request.path)
                    ),
                )
                .with_header("Allow", allow)
                .into(),
            ),
            Match::NotFound => (
                routes::NOT_FOUND_INDEX,
                Response::error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    &format!("no route for {}", quote_input(request.path)),
                )
                .into(),
            ),
        };
        match reply {
            Reply::Ready(response) => {
                self.metrics.count_route(route_index, response.status.0);
                Reply::Ready(response)
            }
            // The debug sleep always succeeds and is counted when it starts (tests watch for it
            // in flight); the others are counted with their real status once it is known.
            Reply::Later(pending) if route_index == debug::SLEEP.index() => {
                self.metrics.count_route(route_index, 200);
                Reply::Later(pending)
            }
            Reply::Later(pending) => {
                let late = self.late.clone();
                Reply::Later(Box::pin(async move {
                    let response = pending.await;
                    late.borrow_mut().push((route_index, response.status.0));
                    response
                }))
            }
        }
    }

    fn date(&self) -> &[u8] {
        self.date.as_bytes()
    }

    fn rejected(&mut self, error: &HttpError) {
        self.metrics.count_unrouted(error.status().0);
    }

    fn responded(&mut self, count: u64, latency: Duration) {
        self.metrics.record_latency(count, latency);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use bytes::Bytes;
    use futures_lite::future::BoxedLocal;

    use super::*;
    use crate::http::Method;
    use crate::monitor::HealthStatus;
    use crate::queue::{Mesh, QueueRuntime, QueueSettings};

    /// Queue tasks that never run: the routes under test answer without them.
    struct NoTasks;

    impl QueueRuntime for NoTasks {
        fn spawn(&self, _class: Priority, _task: BoxedLocal<()>) {}
        fn sleep(&self, _duration: Duration) -> BoxedLocal<()> {
            Box::pin(futures_lite::future::pending())
        }
        fn set_weight(&self, _class: Priority, _weight: u32) {}
    }

    /// A shard's app with debug routes on, whose published bodies name the field they are in.
    fn test_app() -> ShardApp {
        let config = crate::config::Cli::parse_from(["coinbit", "--debug-routes"], &[])
            .unwrap()
            .config;
        let published = Published {
            health_status: HealthStatus::Pass,
            health: Bytes::from_static(b"health"),
            cluster_status: Bytes::from_static(b"cluster_status"),
            metrics: Bytes::from_static(b"metrics"),
            prometheus: Bytes::from_static(b"prometheus"),
            queues_status: Bytes::from_static(b"queues_status"),
            alerts: Bytes::from_static(b"alerts"),
            running_shards: 1,
        };
        let queues = ShardQueues::new(
            0,
            0,
            QueueSettings::from_config(&config.queues, true),
            Rc::new(NoTasks),
            Mesh::new(1),
            Arc::default(),
        );
        ShardApp::new(
            0,
            Arc::new(ArcSwap::from_pointee(published)),
            true,
            queues,
            None,
        )
        .with_access(
            Some(OperatorToken::parse(TEST_OPERATOR_TOKEN).unwrap()),
            MetricsAccess::Open,
        )
    }

    const TEST_OPERATOR_TOKEN: &str = "test-operator-token-0123456789abcdef";

    /// Answers one request on a fresh app: the response, and the names of the routes the
    /// metrics counted it under.
    fn answer(method: Method, path: &str) -> (Response, Vec<&'static str>) {
        let bearer = format!("Bearer {TEST_OPERATOR_TOKEN}");
        let headers = [httparse::Header {
            name: "Authorization",
            value: bearer.as_bytes(),
        }];
        answer_as(test_app(), method, path, &headers)
    }

    /// Answers one request with `headers` on `app`.
    fn answer_as(
        mut app: ShardApp,
        method: Method,
        path: &str,
        headers: &[httparse::Header<'_>],
    ) -> (Response, Vec<&'static str>) {
        let request = Request {
            method,
            path,
            query: None,
            headers,
            body: b"",
            keep_alive: true,
        };
        let response = match app.call(&request) {
            Reply::Ready(response) => response,
            Reply::Later(pending) => futures_lite::future::block_on(pending),
        };
        app.tick(SystemTime::now());
        let report = app.report(0, 0, Instant::now());
        let counted = report
            .counts
            .by_route
            .iter()
            .enumerate()
            .filter(|(_, counts)| counts.iter().any(|n| *n > 0))
            .map(|(index, _)| routes::ROUTE_NAMES[index])
            .collect();
        (response, counted)
    }

    /// A request to each route's path lands on the handler declared with it and is counted under
    /// the name declared with it: a name or handler moved to another route fails here.
    #[test]
    fn each_path_lands_on_its_own_handler_and_name() {
        use Method::{Get, Post};
        let cases = [
            (Get, "/health", "health", Some("health")),
            (Get, "/livez", "livez", Some(r#"{"status":"pass"}"#)),
            (Get, "/readyz", "readyz", Some(r#"{"status":"pass"}"#)),
            (
                Get,
                "/api/enterprise/cluster/status",
                "cluster_status",
                Some("cluster_status"),
            ),
            (Get, "/api/enterprise/metrics", "metrics", Some("metrics")),
            (Get, "/metrics", "prometheus", Some("prometheus")),
            (
                Get,
                "/api/enterprise/queues/status",
                "queues_status",
                Some("queues_status"),
            ),
            (Get, "/api/enterprise/alerts", "alerts", Some("alerts")),
            (Get, "/dashboard", "dashboard", None),
            (Post, "/api/enterprise/jobs", "jobs_enqueue", None),
            (
                Get,
                "/api/enterprise/jobs/dead",
                "jobs_dead",
                Some(r#"{"count":0,"jobs":[]}"#),
            ),
            (
                Post,
                "/api/enterprise/jobs/dead/0.0.1-00000000000000000000000000000001/replay",
                "jobs_dead_replay",
                None,
            ),
            (
                Get,
                "/api/enterprise/jobs/0.0.1-00000000000000000000000000000001",
                "job_status",
                None,
            ),
            (Post, "/api/users", "create_user", None),
            (Get, "/api/users/42", "get_user", None),
            (Post, "/api/auth/register", "auth_register", None),
            (Post, "/api/auth/login", "auth_login", None),
            (Post, "/api/auth/logout", "auth_logout", None),
            (Get, "/api/auth/me", "auth_me", None),
            (Get, "/api/auth/api-keys", "api_keys_list", None),
            (Post, "/api/auth/api-keys", "api_keys_create", None),
            (
                Method::Delete,
                "/api/auth/api-keys/0123456789abcdef0123456789abcdef",
                "api_keys_delete",
                None,
            ),
            (
                Get,
                "/api/enterprise/financial/balances",
                "financial_balances",
                None,
            ),
            (
                Get,
                "/api/enterprise/financial/transactions",
                "financial_transactions",
                None,
            ),
            (
                Post,
                "/api/enterprise/financial/recharges",
                "financial_recharge",
                None,
            ),
            (
                Post,
                "/api/enterprise/financial/webhooks/payment",
                "financial_payment_webhook",
                None,
            ),
            (
                Get,
                "/api/enterprise/financial/ledger/check",
                "financial_ledger_check",
                None,
            ),
            (
                Get,
                "/api/enterprise/financial/withdrawals",
                "withdrawals_list",
                None,
            ),
            (
                Post,
                "/api/enterprise/financial/withdrawals",
                "withdrawals_request",
                None,
            ),
            (
                Get,
                "/api/enterprise/financial/admin/withdrawals",
                "withdrawals_admin_list",
                None,
            ),
            (
                Post,
                "/api/enterprise/financial/withdrawals/0123/approve",
                "withdrawals_decide",
                None,
            ),
            (
                Post,
                "/api/enterprise/financial/coupons",
                "coupons_create",
                None,
            ),
            (
                Post,
                "/api/enterprise/financial/coupons/redeem",
                "coupons_redeem",
                None,
            ),
            (Get, "/api/enterprise/financial/plans", "plans", None),
            (
                Post,
                "/api/enterprise/financial/plans/subscribe",
                "plans_subscribe",
                None,
            ),
            (
                Post,
                "/api/enterprise/financial/commissions",
                "commissions_charge",
                None,
            ),
            (
                Post,
                "/api/enterprise/affiliate/apply",
                "affiliate_apply",
                None,
            ),
            (
                Post,
                "/api/enterprise/affiliate/admin/tier",
                "affiliate_tier",
                None,
            ),
            (
                Post,
                "/api/enterprise/affiliate/admin/clawbacks",
                "affiliate_clawback",
                None,
            ),
            (
                Post,
                "/api/enterprise/affiliate/attribute",
                "affiliate_attribute",
                None,
            ),
            (
                Get,
                "/api/enterprise/affiliate/dashboard",
                "affiliate_dashboard",
                None,
            ),
            (
                Get,
                "/api/enterprise/affiliate/earnings",
                "affiliate_earnings",
                None,
            ),
            (
                Get,
                "/api/enterprise/affiliate/referrals",
                "affiliate_referrals",
                None,
            ),
            (
                Get,
                "/api/enterprise/affiliate/code",
                "affiliate_code",
                None,
            ),
            (
                Get,
                "/api/enterprise/affiliate/campaigns",
                "affiliate_campaigns_list",
                None,
            ),
            (
                Post,
                "/api/enterprise/affiliate/campaigns",
                "affiliate_campaigns_create",
                None,
            ),
            (
                Post,
                "/api/enterprise/affiliate/conversions",
                "affiliate_convert",
                None,
            ),
            (
                Get,
                "/api/enterprise/affiliate/r/spring-promo",
                "affiliate_click",
                None,
            ),
            (
                Get,
                "/api/enterprise/affiliate/admin/report",
                "affiliate_report",
                None,
            ),
            (
                Post,
                "/api/enterprise/trading/exchange-accounts",
                "trading_exchange_account_create",
                None,
            ),
            (
                Method::Delete,
                "/api/enterprise/trading/exchange-accounts",
                "trading_exchange_account_delete",
                None,
            ),
            (
                Get,
                "/api/enterprise/trading/settings",
                "trading_settings_get",
                None,
            ),
            (
                Method::Put,
                "/api/enterprise/trading/settings",
                "trading_settings_put",
                None,
            ),
            (
                Post,
                "/api/enterprise/trading/webhooks/signal",
                "trading_signal_webhook",
                None,
            ),
            (
                Get,
                "/api/enterprise/trading/positions",
                "trading_positions_list",
                None,
            ),
            (
                Get,
                "/api/enterprise/trading/positions/7",
                "trading_position_get",
                None,
            ),
            (
                Post,
                "/api/enterprise/trading/positions/7/close",
                "trading_position_close",
                None,
            ),
            (
                Post,
                "/api/enterprise/trading/fx-rates",
                "trading_fx_rate_record",
                None,
            ),
            (
                Post,
                "/api/enterprise/trading/execute",
                "trading_execute",
                None,
            ),
            (
                Get,
                "/api/enterprise/trading/signals/7",
                "trading_signal_get",
                None,
            ),
            (Get, "/debug/sleep", "debug_sleep", None),
            (Get, "/debug/shard", "debug_shard", Some(r#"{"shard":0}"#)),
            (Post, "/debug/stall-shard", "debug_stall_shard", None),
            (Get, "/debug/effects", "debug_effects", None),
            (Get, "/api/users", "method_not_allowed", None),
            (Get, "/nope", "not_found", None),
        ];
        for (method, path, name, body) in cases {
            let (response, counted) = answer(method, path);
            assert_eq!(counted, [name], "{method:?} {path}");
            if let Some(body) = body {
                assert_eq!(response.body, body.as_bytes(), "{method:?} {path}");
            }
        }
        assert!(answer(Get, "/dashboard").0.body.starts_with(b"<!"));
        // The one route left out above takes the shard down.
        let crash = std::panic::catch_unwind(|| answer(Post, "/debug/crash-shard"));
        assert!(crash.is_err(), "/debug/crash-shard answered");
        let covered: BTreeSet<&str> = cases
            .iter()
            .map(|case| case.2)
            .chain(["debug_crash_shard"])
            .collect();
        let all: BTreeSet<&str> = routes::ROUTE_NAMES.iter().copied().collect();
        assert_eq!(covered, all, "every route has a case");
    }

    /// Without a database, the operator routes answer only the operator token: none, a wrong
    /// one or a server without one is refused with the JSON envelope; the reports follow
    /// `METRICS_ACCESS`; the probes stay open.
    #[test]
    fn operator_routes_need_the_operator_token_without_a_database() {
        use Method::{Get, Post};
        let wrong = [httparse::Header {
            name: "Authorization",
            value: b"Bearer not-the-operator-token-0123456789abcdef",
        }];
        let locked = |access| test_app().with_access(None, access);
        type Case<'h> = (
            ShardApp,
            &'h [httparse::Header<'h>],
            Method,
            &'h str,
            u16,
            &'h str,
        );
        let cases: [Case<'_>; 8] = [
            (
                test_app(),
                &[],
                Post,
                "/api/enterprise/jobs",
                401,
                "missing_credentials",
            ),
            (
                test_app(),
                &wrong,
                Get,
                "/api/enterprise/jobs/dead",
                401,
                "invalid_operator_token",
            ),
            (
                test_app(),
                &[],
                Post,
                "/debug/crash-shard",
                401,
                "missing_credentials",
            ),
            (
                locked(MetricsAccess::Open),
                &wrong,
                Get,
                "/debug/shard",
                403,
                "operator_access_off",
            ),
            (locked(MetricsAccess::Open), &[], Get, "/metrics", 200, ""),
            (
                locked(MetricsAccess::Operator),
                &[],
                Get,
                "/metrics",
                403,
                "operator_access_off",
            ),
            (
                test_app().with_access(
                    Some(OperatorToken::parse(TEST_OPERATOR_TOKEN).unwrap()),
                    MetricsAccess::Operator,
                ),
                &wrong,
                Get,
                "/api/enterprise/cluster/status",
                401,
                "invalid_operator_token",
            ),
            (
                locked(MetricsAccess::Operator),
                &[],
                Get,
                "/health",
                200,
                "",
            ),
        ];
        for (app, headers, method, path, status, code) in cases {
            let (response, _) = answer_as(app, method, path, headers);
            assert_eq!(response.status.0, status, "{method:?} {path}");
            if !code.is_empty() {
                let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
                assert_eq!(body["error"]["code"], code, "{method:?} {path}");
            }
        }
    }
}
