//! One function per endpoint. Status bodies come pre-rendered from the monitor's snapshot.

use std::time::Duration;

use bytes::Bytes;

use crate::http::conn::EscalatePanic;
use crate::http::{Reply, Request, Response, StatusCode};
use crate::monitor::{HealthStatus, Published};

const HEALTH_JSON: &str = "application/health+json";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The live dashboard: one self-contained page (inline script and SVG, nothing fetched from
/// elsewhere) that polls the status endpoints.
const DASHBOARD_HTML: &str = include_str!("../monitor/dashboard.html");
/// Longest sleep the debug route accepts.
const MAX_DEBUG_SLEEP: Duration = Duration::from_secs(60);

/// `GET /health`: 200 for pass and warn, 503 for fail (RFC draft health+json semantics).
pub fn health(published: &Published) -> Response {
    let status = match published.health_status {
        HealthStatus::Fail => StatusCode::SERVICE_UNAVAILABLE,
        HealthStatus::Pass | HealthStatus::Warn => StatusCode::OK,
    };
    Response::new(status, HEALTH_JSON, published.health.clone())
}

/// `GET /livez`: the shard's event loop answers.
pub fn livez() -> Response {
    Response::new(
        StatusCode::OK,
        HEALTH_JSON,
        Bytes::from_static(br#"{"status":"pass"}"#),
    )
}

/// `GET /readyz`: 503 while this shard drains or the server fails its health check.
pub fn readyz(published: &Published, draining: bool) -> Response {
    if draining {
        Response::new(
            StatusCode::SERVICE_UNAVAILABLE,
            HEALTH_JSON,
            Bytes::from_static(br#"{"status":"fail","output":"shutting down"}"#),
        )
    } else if published.health_status == HealthStatus::Fail {
        Response::new(
            StatusCode::SERVICE_UNAVAILABLE,
            HEALTH_JSON,
            Bytes::from_static(br#"{"status":"fail","output":"health check failing"}"#),
        )
    } else {
        Response::new(
            StatusCode::OK,
            HEALTH_JSON,
            Bytes::from_static(br#"{"status":"pass"}"#),
        )
    }
}

pub fn json_snapshot(body: Bytes) -> Response {
    Response::json(StatusCode::OK, body)
}

pub fn prometheus(body: Bytes) -> Response {
    Response::new(StatusCode::OK, PROMETHEUS_TEXT, body)
}

/// `GET /dashboard`.
pub fn dashboard() -> Response {
    Response::new(
        StatusCode::OK,
        "text/html; charset=utf-8",
        Bytes::from_static(DASHBOARD_HTML.as_bytes()),
    )
}

/// `POST /debug/stall-shard?ms=N`: blocks this shard's thread for N ms, as a stuck handler
/// would: it stops sending heartbeats, and the monitor replaces it.
pub fn debug_stall_shard(shard: usize, request: &Request<'_>) -> Response {
    let duration = match debug_duration(request) {
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
pub fn debug_crash_shard(shard: usize) -> Reply {
    log::warn!("shard {shard}: crash requested through the debug route");
    std::panic::panic_any(EscalatePanic("crash requested through /debug/crash-shard"))
}

/// `GET /debug/shard`: which shard owns this connection.
pub fn debug_shard(shard: usize) -> Response {
    Response::json(StatusCode::OK, format!(r#"{{"shard":{shard}}}"#))
}

/// `GET /debug/sleep?ms=N`: answers after N ms without holding the event loop (a request in
/// flight for shutdown tests). The wait runs on a helper thread so the app needs no engine timer.
pub fn debug_sleep(request: &Request<'_>) -> Reply {
    let duration = match debug_duration(request) {
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
fn debug_duration(request: &Request<'_>) -> Result<Duration, Response> {
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
