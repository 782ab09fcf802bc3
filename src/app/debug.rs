//! Debug hooks: routes and a counter that let tests crash, stall and slow a shard on purpose.
//!
//! Compiled in and switched on by `--debug-routes`: the router matches [`ROUTES`] only then
//! ([`super::routes::match_route`]), and the queues register their debug job kinds only then
//! ([`crate::queue::job_kinds`]); those record their side effects here ([`record_effect`]), which
//! `GET /debug/effects` shows. The production table lists none of this. Like the job routes,
//! they answer only the operator token or a staff session.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};

use super::handlers;
use super::routes::{id_of, operator, PathPattern::Exact, RouteId, RouteSpec, GET, POST};
use crate::http::conn::EscalatePanic;
use crate::http::{Reply, Request, Response, StatusCode};

const SLEEP_NAME: &str = "debug_sleep";

/// The debug routes, matched after the production ones; operators only, like the jobs.
pub const ROUTES: &[RouteSpec] = &[
    operator(
        "debug_crash_shard",
        POST,
        Exact("/debug/crash-shard"),
        |app, _| crash_shard(app.shard),
    ),
    operator(SLEEP_NAME, GET, Exact("/debug/sleep"), |_, request| {
        sleep(request)
    }),
    operator("debug_shard", GET, Exact("/debug/shard"), |app, _| {
        shard(app.shard).into()
    }),
    operator("debug_effects", GET, Exact("/debug/effects"), |_, _| {
        handlers::json_snapshot(effects().to_string().into()).into()
    }),
    operator(
        "debug_stall_shard",
        POST,
        Exact("/debug/stall-shard"),
        |app, request| stall_shard(app.shard, request).into(),
    ),
];

/// `GET /debug/sleep`: its reply comes later but is counted when it starts (tests watch for it
/// in flight).
pub const SLEEP: RouteId = id_of(SLEEP_NAME);

/// Longest sleep and stall the debug routes accept.
const MAX_DEBUG_SLEEP: Duration = Duration::from_secs(60);

/// Side effects of debug jobs, by tag, process-wide. A lock, but only debug jobs and
/// `GET /debug/effects` take it.
static EFFECTS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// Counts one side effect of a debug job tagged `tag`.
pub fn record_effect(tag: &str) {
    let mut effects = EFFECTS.lock().unwrap_or_else(|e| e.into_inner());
    *effects.entry(tag.to_string()).or_default() += 1;
}

/// `GET /debug/effects`: how many times each tag's side effect happened.
pub fn effects() -> Value {
    let effects = EFFECTS.lock().unwrap_or_else(|e| e.into_inner());
    json!(*effects)
}

/// `POST /debug/stall-shard?ms=N`: blocks this shard's thread for N ms, as a stuck handler
/// would: it stops sending heartbeats, and the monitor replaces it.
fn stall_shard(shard: usize, request: &Request<'_>) -> Response {
    let duration = match duration(request) {
        Ok(duration) => duration,
        Err(bad) => return bad,
    };
    log::warn!("shard {shard}: stalling for {duration:?} through the debug route");
    std::thread::sleep(duration);
    Response::json(
        StatusCode::OK,
        format!(
            r#"{{"shard":{shard},"stalled_ms":{}}}"#,
            duration.as_millis()
        ),
    )
}

/// `POST /debug/crash-shard`: takes this shard down so the supervisor restarts it.
fn crash_shard(shard: usize) -> Reply {
    log::warn!("shard {shard}: crash requested through the debug route");
    std::panic::panic_any(EscalatePanic("crash requested through /debug/crash-shard"))
}

/// `GET /debug/shard`: which shard owns this connection.
fn shard(shard: usize) -> Response {
    Response::json(StatusCode::OK, format!(r#"{{"shard":{shard}}}"#))
}

/// `GET /debug/sleep?ms=N`: answers after N ms without holding the event loop (a request in
/// flight for shutdown tests). The wait runs on a helper thread so the app needs no engine timer.
fn sleep(request: &Request<'_>) -> Reply {
    let duration = match duration(request) {
        Ok(duration) => duration,
        Err(bad) => return bad.into(),
    };
    let (done, wait) = flume::bounded::<()>(1);
    std::thread::spawn(move || {
        std::thread::sleep(duration);
        let _ = done.send(());
    });
    Reply::Later(Box::pin(async move {
        let _ = wait.recv_async().await;
        Response::json(
            StatusCode::OK,
            format!(r#"{{"slept_ms":{}}}"#, duration.as_millis()),
        )
    }))
}

/// The `?ms=N` of the debug routes, capped at [`MAX_DEBUG_SLEEP`]; a 400 when it is missing.
fn duration(request: &Request<'_>) -> Result<Duration, Response> {
    let ms = request
        .query_param("ms")
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| {
            Response::error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "expected ?ms=<milliseconds>",
            )
        })?;
    Ok(Duration::from_millis(ms).min(MAX_DEBUG_SLEEP))
}
