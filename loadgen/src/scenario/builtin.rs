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

const fn post(name: &'static str, path: &'static str, body: &'static str, weight: u32) -> Call {
    Call {
        method: "POST",
        expect: 201,
        body: Some(body),
        ..get(name, path, weight)
    }
}

/// `builtin:coinbitclub`, the default: every endpoint the server serves today.
/// Health and status probes dominate, as the seed's monitoring traffic did. The users calls need
/// the server to have a database (`bench/quickstart.sh` starts one and creates users 1..10,000,
/// the range of `{{user_id}}`).
pub const COINBITCLUB: &[Call] = &[
    get("health", "/health", 30),
    get("cluster_status", "/api/enterprise/cluster/status", 20),
    get("enterprise_metrics", "/api/enterprise/metrics", 10),
    get("livez", "/livez", 15),
    get("readyz", "/readyz", 15),
    get("metrics", "/metrics", 10),
    get("get_user", "/api/users/{{user_id}}", 20),
    post(
        "create_user",
        "/api/users",
        r#"{"name":"Load {{seq}}","email":"{{uuid}}@loadgen.example.com"}"#,
        5,
    ),
];

/// `builtin:health`: `GET /health` alone, the cheapest call, for raw throughput.
pub const HEALTH: &[Call] = &[get("health", "/health", 1)];

/// `builtin:probes`: the orchestrator probes.
pub const PROBES: &[Call] = &[get("livez", "/livez", 1), get("readyz", "/readyz", 1)];

/// Built-in mixes by name.
pub const MIXES: &[(&str, &[Call])] = &[
    ("coinbitclub", COINBITCLUB),
    ("health", HEALTH),
    ("probes", PROBES),
];
