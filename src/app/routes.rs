//! The route table.

use crate::http::Method;

/// Every endpoint, by its index in [`ROUTE_NAMES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Health = 0,
    Livez,
    Readyz,
    ClusterStatus,
    Metrics,
    Prometheus,
    DebugCrashShard,
    DebugSleep,
    DebugShard,
    CreateUser,
    GetUser,
    Alerts,
    Dashboard,
    DebugStallShard,
}

/// Route names as metrics label them; the last two count 405 and 404 answers.
pub const ROUTE_NAMES: &[&str] = &[
    "health",
    "livez",
    "readyz",
    "cluster_status",
    "metrics",
    "prometheus",
    "debug_crash_shard",
    "debug_sleep",
    "debug_shard",
    "create_user",
    "get_user",
    "alerts",
    "dashboard",
    "debug_stall_shard",
    "method_not_allowed",
    "not_found",
];
pub const METHOD_NOT_ALLOWED_INDEX: usize = ROUTE_NAMES.len() - 2;
pub const NOT_FOUND_INDEX: usize = ROUTE_NAMES.len() - 1;

struct Entry {
    path: &'static str,
    /// Methods besides HEAD, which every GET route also answers.
    method: Method,
    allow: &'static str,
    route: Route,
    debug_only: bool,
    /// The path is a prefix followed by one non-empty segment (an id), e.g. `/api/users/42`.
    with_id: bool,
}

const fn get(path: &'static str, route: Route) -> Entry {
    Entry {
        path,
        method: Method::Get,
        allow: "GET, HEAD",
        route,
        debug_only: false,
        with_id: false,
    }
}

const TABLE: &[Entry] = &[
    get("/health", Route::Health),
    get("/livez", Route::Livez),
    get("/readyz", Route::Readyz),
    get("/api/enterprise/cluster/status", Route::ClusterStatus),
    get("/api/enterprise/metrics", Route::Metrics),
    get("/metrics", Route::Prometheus),
    Entry {
        path: "/debug/crash-shard",
        method: Method::Post,
        allow: "POST",
        route: Route::DebugCrashShard,
        debug_only: true,
        with_id: false,
    },
    Entry {
        debug_only: true,
        ..get("/debug/sleep", Route::DebugSleep)
    },
    Entry {
        debug_only: true,
        ..get("/debug/shard", Route::DebugShard)
    },
    Entry {
        method: Method::Post,
        allow: "POST",
        ..get("/api/users", Route::CreateUser)
    },
    Entry {
        with_id: true,
        ..get("/api/users/", Route::GetUser)
    },
    get("/api/enterprise/alerts", Route::Alerts),
    get("/dashboard", Route::Dashboard),
    Entry {
        path: "/debug/stall-shard",
        method: Method::Post,
        allow: "POST",
        route: Route::DebugStallShard,
        debug_only: true,
        with_id: false,
    },
];

fn path_matches(entry: &Entry, path: &str) -> bool {
    if entry.with_id {
        path.strip_prefix(entry.path)
            .is_some_and(|id| !id.is_empty() && !id.contains('/'))
    } else {
        entry.path == path
    }
}

/// The result of matching a request against the table.
#[derive(Debug, PartialEq, Eq)]
pub enum Match {
    Found(Route),
    /// The path exists but not for this method; the value is the `Allow` header.
    MethodNotAllowed(&'static str),
    NotFound,
}

pub fn match_route(method: Method, path: &str, debug_routes: bool) -> Match {
    let Some(entry) = TABLE
        .iter()
        .find(|e| path_matches(e, path) && (debug_routes || !e.debug_only))
    else {
        return Match::NotFound;
    };
    let head_of_get = method == Method::Head && entry.method == Method::Get;
    if method == entry.method || head_of_get {
        Match::Found(entry.route)
    } else {
        Match::MethodNotAllowed(entry.allow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_table() {
        let cases = [
            (Method::Get, "/health", false, Match::Found(Route::Health)),
            (Method::Head, "/health", false, Match::Found(Route::Health)),
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
                Match::Found(Route::ClusterStatus),
            ),
            (
                Method::Get,
                "/api/enterprise/metrics",
                false,
                Match::Found(Route::Metrics),
            ),
            (
                Method::Get,
                "/metrics",
                false,
                Match::Found(Route::Prometheus),
            ),
            (
                Method::Get,
                "/api/enterprise/alerts",
                false,
                Match::Found(Route::Alerts),
            ),
            (
                Method::Get,
                "/dashboard",
                false,
                Match::Found(Route::Dashboard),
            ),
            (Method::Post, "/debug/stall-shard", false, Match::NotFound),
            (
                Method::Post,
                "/debug/stall-shard",
                true,
                Match::Found(Route::DebugStallShard),
            ),
            (Method::Get, "/nope", false, Match::NotFound),
            (
                Method::Post,
                "/api/users",
                false,
                Match::Found(Route::CreateUser),
            ),
            (
                Method::Get,
                "/api/users",
                false,
                Match::MethodNotAllowed("POST"),
            ),
            (
                Method::Get,
                "/api/users/42",
                false,
                Match::Found(Route::GetUser),
            ),
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
                Match::Found(Route::DebugCrashShard),
            ),
            (
                Method::Get,
                "/debug/crash-shard",
                true,
                Match::MethodNotAllowed("POST"),
            ),
            (
                Method::Get,
                "/debug/sleep",
                true,
                Match::Found(Route::DebugSleep),
            ),
        ];
        for (method, path, debug, expected) in cases {
            assert_eq!(
                match_route(method, path, debug),
                expected,
                "{method:?} {path} debug={debug}"
            );
        }
        assert_eq!(ROUTE_NAMES[Route::DebugSleep as usize], "debug_sleep");
        assert_eq!(
            ROUTE_NAMES[Route::DebugStallShard as usize],
            "debug_stall_shard"
        );
    }
}
