//! The built-in CoinBitClub mixes.
//!
//! To extend a mix once the server serves a new call (the trading, financial and affiliate API),
//! add one line to its table: a name for the reports, method, path (a template, so
//! `/api/users/{{user_id}}/balance` works), weight, and the status it must answer. Until a call
//! exists on the server, put it in a scenario file instead (see `loadgen/scenarios/`), so the
//! default mix never reports errors for endpoints that are not there.

/// One call in a built-in mix.
#[derive(Clone, Copy, Debug)]
pub struct Call {
    pub name: &'static str,
    pub method: &'static str,
    pub path: &'static str,
    pub weight: u32,
    pub expect: u16,
    /// A JSON body template (sent with `Content-Type: application/json`).
    pub body: Option<&'static str>,
}

const fn get(name: &'static str, path: &'static str, weight: u32) -> Call {
    Call {
        name,
        method: "GET",
        path,
        weight,
        expect: 200,
        body: None,
    }
}

/// `builtin:coinbitclub`, the default: the endpoints the server serves today to anyone.
/// Health and status probes dominate, as the seed's monitoring traffic did. The users call needs
/// the server to have a database (`bench/quickstart.sh` starts one and creates users 1..10,000,
/// the range of `{{user_id}}`) and a caller that may read any user: staff, e.g. `-H
/// "Authorization: Bearer <OPERATOR_TOKEN>"` (a user reads only its own row; anyone else gets
/// 404, no credentials 401). `POST /api/users` is registration now: each one costs an
/// Argon2id hash on the server's few password threads (~20 ms of CPU), so at a fixed share of a
/// 10x or capacity run it fills their queue and answers 503; registration and login are driven
/// per virtual user by a scenario's `[login]` table instead (`crate::login`, `bench/auth.sh`).
pub const COINBITCLUB: &[Call] = &[
    get("health", "/health", 30),
    get("cluster_status", "/api/enterprise/cluster/status", 20),
    get("enterprise_metrics", "/api/enterprise/metrics", 10),
    get("livez", "/livez", 15),
    get("readyz", "/readyz", 15),
    get("metrics", "/metrics", 10),
    get("get_user", "/api/users/{{user_id}}", 20),
];

/// `builtin:health`: `GET /health` alone, the cheapest call, for raw throughput.
pub const HEALTH: &[Call] = &[get("health", "/health", 1)];

/// `builtin:probes`: the orchestrator probes.
pub const PROBES: &[Call] = &[get("livez", "/livez", 1), get("readyz", "/readyz", 1)];

/// Built-in mixes written as scenario files (they need what a file gives: a `[login]`, per-request
/// headers, several expected statuses), embedded so that `builtin:NAME` needs no path.
pub const FILES: &[(&str, &str)] = &[
    ("money", include_str!("../../scenarios/money.toml")),
    ("trading", include_str!("../../scenarios/trading.toml")),
];

/// Built-in mixes by name.
pub const MIXES: &[(&str, &[Call])] = &[
    ("coinbitclub", COINBITCLUB),
    ("health", HEALTH),
    ("probes", PROBES),
];
