//! The route table, and the priority class each route's requests run in.
//!
//! Classes follow the endpoints' business: trading high, financial medium, affiliate low, reports
//! background. The reports (cluster status, metrics, queues, alerts, the dashboard) are
//! background here; `QUEUE_ROUTE_CLASSES` changes any route's class. Requests of a class below
//! high take turns at the shard's gate ([`crate::queue::gate`]); high ones and routes without a
//! class (the probes, `/health`, the users and job APIs) run at once.

use crate::http::Method;
use crate::queue::Priority;

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
    QueuesStatus,
    JobEnqueue,
    JobStatus,
    DeadLetters,
    DeadLetterReplay,
    DebugEffects,
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
    "queues_status",
    "jobs_enqueue",
    "job_status",
    "jobs_dead",
    "jobs_dead_replay",
    "debug_effects",
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

/// The class of each route in [`ROUTE_NAMES`] order, before `QUEUE_ROUTE_CLASSES` overrides.
pub fn default_classes() -> Vec<Option<Priority>> {
    let mut classes = vec![None; ROUTE_NAMES.len()];
    for entry in TABLE {
        classes[entry.route as usize] = entry.class;
    }
    classes
}

struct Entry {
    path: &'static str,
    /// Methods besides HEAD, which every GET route also answers.
    method: Method,
    allow: &'static str,
    route: Route,
    debug_only: bool,
    /// The path is a prefix: what follows is a parameter (`/api/enterprise/jobs/{id}`).
    prefix: bool,
    class: Option<Priority>,
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
        prefix: false,
        class: None,
        with_id: false,
    }
}

/// A report: read by dashboards and scrapers, never in a hurry.
const fn report(path: &'static str, route: Route) -> Entry {
    Entry {
        class: Some(Priority::Background),
        ..get(path, route)
    }
}

const fn post(path: &'static str, route: Route) -> Entry {
    Entry {
        method: Method::Post,
        allow: "POST",
        ..get(path, route)
    }
}

const TABLE: &[Entry] = &[
    get("/health", Route::Health),
    get("/livez", Route::Livez),
    get("/readyz", Route::Readyz),
    report("/api/enterprise/cluster/status", Route::ClusterStatus),
    report("/api/enterprise/metrics", Route::Metrics),
    report("/metrics", Route::Prometheus),
    report("/api/enterprise/queues/status", Route::QueuesStatus),
    post("/api/enterprise/jobs", Route::JobEnqueue),
    get("/api/enterprise/jobs/dead", Route::DeadLetters),
    Entry {
        prefix: true,
        ..post("/api/enterprise/jobs/dead/", Route::DeadLetterReplay)
    },
    Entry {
        prefix: true,
        ..get("/api/enterprise/jobs/", Route::JobStatus)
    },
    Entry {
        debug_only: true,
        ..post("/debug/crash-shard", Route::DebugCrashShard)
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
        debug_only: true,
        ..get("/debug/effects", Route::DebugEffects)
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
    report("/api/enterprise/alerts", Route::Alerts),
    report("/dashboard", Route::Dashboard),
    Entry {
        debug_only: true,
        ..post("/debug/stall-shard", Route::DebugStallShard)
    },
];

fn path_matches(entry: &Entry, path: &str) -> bool {
    if entry.with_id {
        path.strip_prefix(entry.path)
            .is_some_and(|id| !id.is_empty() && !id.contains('/'))
    } else {
        entry.path == path || (entry.prefix && path.starts_with(entry.path))
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
        assert_eq!(ROUTE_NAMES[Route::DebugEffects as usize], "debug_effects");
        assert_eq!(
            ROUTE_NAMES[Route::DebugStallShard as usize],
            "debug_stall_shard"
        );
    }

    #[test]
    fn job_routes_and_classes() {
        let cases = [
            (
                Method::Post,
                "/api/enterprise/jobs",
                Match::Found(Route::JobEnqueue),
            ),
            (
                Method::Get,
                "/api/enterprise/jobs",
                Match::MethodNotAllowed("POST"),
            ),
            (
                Method::Get,
                "/api/enterprise/jobs/0.1.2",
                Match::Found(Route::JobStatus),
            ),
            (
                Method::Get,
                "/api/enterprise/jobs/dead",
                Match::Found(Route::DeadLetters),
            ),
            (
                Method::Post,
                "/api/enterprise/jobs/dead/0.1.2/replay",
                Match::Found(Route::DeadLetterReplay),
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
        for unclassed in [Route::Health, Route::Livez, Route::Readyz, Route::GetUser] {
            assert_eq!(classes[unclassed as usize], None, "{unclassed:?}");
        }
        for report in [Route::ClusterStatus, Route::Prometheus, Route::Dashboard] {
            assert_eq!(
                classes[report as usize],
                Some(Priority::Background),
                "{report:?}"
            );
        }
    }
}
