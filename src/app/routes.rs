//! The route table: one declaration per route owns its method, path, name, class, access and
//! handler.
//!
//! A route is known by its [`RouteId`], its index in the table of every route (the production
//! [`ROUTES`], then the debug ones of [`super::debug`]); the metrics count it under its name at
//! that index of [`ROUTE_NAMES`], and `QUEUE_ROUTE_CLASSES` finds it by that name. Debug routes
//! are matched only with `--debug-routes`; their paths are under `/debug/`, apart from every
//! production path.
//!
//! A route's [`Access`] says who may call it: an open route's handler sees the shard's app; any
//! other route has a guarded handler, which [`super::access`] runs only once the caller passed
//! (the accounts routes are the first; the others stay open in this release).
//!
//! Classes follow the endpoints' business: trading high, financial medium, affiliate low, reports
//! background. The reports (cluster status, metrics, queues, alerts, the dashboard) are
//! background here; `QUEUE_ROUTE_CLASSES` changes any route's class. Requests of a class below
//! high take turns at the shard's gate ([`crate::queue::gate`]); high ones and routes without a
//! class (the probes, `/health`, the users and job APIs) run at once.

pub use super::access::Access;
use super::access::GuardedHandler;
use super::{accounts, debug, handlers, jobs, users, ShardApp};
use crate::auth::role::Scope;
use crate::http::{Method, Reply, Request};
use crate::queue::Priority;
use PathPattern::{Exact, Prefix, WithId};

/// What answers an open route's requests.
pub type OpenHandler = for<'r> fn(&mut ShardApp, &Request<'r>) -> Reply;

/// What answers a route's requests: an open route's handler sees the shard's app; a guarded
/// one's runs once the caller passed the route's [`Access`] and sees who it is.
#[derive(Clone, Copy)]
pub enum Handler {
    Open(OpenHandler),
    Guarded(GuardedHandler),
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

/// `GET` and `POST` on `/api/auth/api-keys`: one `Allow` for both.
const API_KEYS_GET: (Method, &str) = (Method::Get, "GET, HEAD, POST");
const API_KEYS_POST: (Method, &str) = (Method::Post, "GET, HEAD, POST");

/// A report: read by dashboards and scrapers, never in a hurry.
const fn report(name: &'static str, path: PathPattern, handler: OpenHandler) -> RouteSpec {
    RouteSpec {
        class: Some(Priority::Background),
        ..get(name, path, handler)
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
        |app, _| handlers::json_snapshot(app.published().cluster_status.clone()).into(),
    ),
    report("metrics", Exact("/api/enterprise/metrics"), |app, _| {
        handlers::json_snapshot(app.published().metrics.clone()).into()
    }),
    report("prometheus", Exact("/metrics"), |app, _| {
        handlers::prometheus(app.published().prometheus.clone()).into()
    }),
    report(
        "queues_status",
        Exact("/api/enterprise/queues/status"),
        |app, _| handlers::json_snapshot(app.published().queues_status.clone()).into(),
    ),
    post(
        "jobs_enqueue",
        Exact("/api/enterprise/jobs"),
        |app, request| jobs::enqueue(&app.queues, app.db.as_mut(), request),
    ),
    get("jobs_dead", Exact("/api/enterprise/jobs/dead"), |app, _| {
        jobs::dead_letters(&app.queues)
    }),
    post(
        "jobs_dead_replay",
        Prefix("/api/enterprise/jobs/dead/"),
        |app, request| jobs::replay(&app.queues, request),
    ),
    get(
        "job_status",
        Prefix("/api/enterprise/jobs/"),
        |app, request| jobs::status(&app.queues, request),
    ),
    post("create_user", Exact("/api/users"), |app, request| {
        users::create(app.db.as_mut(), request)
    }),
    get("get_user", WithId("/api/users/"), |app, request| {
        users::get(app.db.as_mut(), request)
    }),
    report("alerts", Exact("/api/enterprise/alerts"), |app, _| {
        handlers::json_snapshot(app.published().alerts.clone()).into()
    }),
    report("dashboard", Exact("/dashboard"), |_, _| {
        handlers::dashboard().into()
    }),
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
];

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
            // A route open to all has an open handler; any other is guarded.
            let guarded = matches!(spec.handler, Handler::Guarded(_));
            assert_eq!(guarded, spec.access != Access::Public, "{}", spec.name);
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
}
