//! The application: routes and handlers, engine-agnostic.
//!
//! Each shard builds its own [`ShardApp`] (the factory is [`ShardApp::new`]) and drives it
//! through the codec's [`Service`] trait. The app knows requests and responses, its own
//! metrics, and the monitor's published snapshot; it knows no engine, socket or timer.
//!
//! # Layout
//! - [`routes`]: the route table, method checks and route names used in metrics.
//! - [`handlers`]: one function per endpoint.
//! - [`users`]: the users API, the first endpoints on the database tier.

pub mod handlers;
pub mod routes;
pub mod users;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::db::DbClient;
use crate::http::{HttpDate, HttpError, Reply, Request, Response, Service, StatusCode};
use crate::metrics::ShardMetrics;
use crate::monitor::Published;
use routes::{Match, Route};

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
    /// This shard's way to the database; `None` when none is configured.
    db: Option<DbClient>,
    /// (route, status) of answers given later (database replies), counted at the next tick.
    /// A mutex, not a `RefCell`: under the may engine the app moves between worker threads.
    /// Uncontended: the shard's tick and its own replies take it one at a time.
    late: Arc<Mutex<Vec<(usize, u16)>>>,
}

impl ShardApp {
    pub fn new(shard: usize, published: Arc<ArcSwap<Published>>, debug_routes: bool) -> Self {
        ShardApp {
            shard,
            published: arc_swap::Cache::new(published),
            metrics: ShardMetrics::new(routes::ROUTE_NAMES.len()),
            date: HttpDate::now(),
            draining: false,
            debug_routes,
            db: None,
            late: Arc::default(),
        }
    }

    /// Gives the shard its database client (the database routes answer 503 without one).
    pub fn with_database(mut self, db: Option<DbClient>) -> Self {
        self.db = db;
        self
    }

    /// Called by the engine about once a second.
    pub fn tick(&mut self, now: SystemTime) {
        self.date.refresh(now);
        let late = std::mem::take(&mut *self.late.lock().unwrap_or_else(|e| e.into_inner()));
        for (route, status) in late {
            self.metrics.count_route(route, status);
        }
    }

    /// The shard stopped accepting: `/readyz` answers 503 from now on.
    pub fn begin_draining(&mut self) {
        self.draining = true;
    }

    fn dispatch(&mut self, route: Route, request: &Request<'_>) -> Reply {
        let (shard, draining) = (self.shard, self.draining);
        let published = self.published.load();
        match route {
            Route::Health => handlers::health(published).into(),
            Route::Livez => handlers::livez().into(),
            Route::Readyz => handlers::readyz(published, draining).into(),
            Route::ClusterStatus => {
                handlers::json_snapshot(published.cluster_status.clone()).into()
            }
            Route::Metrics => handlers::json_snapshot(published.metrics.clone()).into(),
            Route::Prometheus => handlers::prometheus(published.prometheus.clone()).into(),
            Route::DebugCrashShard => handlers::debug_crash_shard(shard),
            Route::DebugSleep => handlers::debug_sleep(request),
            Route::DebugShard => handlers::debug_shard(shard).into(),
            Route::CreateUser => users::create(self.db.as_mut(), request),
            Route::GetUser => users::get(self.db.as_mut(), request),
            Route::Alerts => handlers::json_snapshot(published.alerts.clone()).into(),
            Route::Dashboard => handlers::dashboard().into(),
            Route::DebugStallShard => handlers::debug_stall_shard(shard, request).into(),
        }
    }
}

impl Service for ShardApp {
    fn call(&mut self, request: &Request<'_>) -> Reply {
        let (route_index, reply) =
            match routes::match_route(request.method, request.path, self.debug_routes) {
                Match::Found(route) => (route as usize, self.dispatch(route, request)),
                Match::MethodNotAllowed(allow) => (
                    routes::METHOD_NOT_ALLOWED_INDEX,
                    Response::error(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "method_not_allowed",
                        &format!(
                            "{} is not allowed on {}; allowed: {allow}",
                            request.method.as_str(),
                            request.path
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
                        &format!("no route for {}", request.path),
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
            Reply::Later(pending) if route_index == Route::DebugSleep as usize => {
                self.metrics.count_route(route_index, 200);
                Reply::Later(pending)
            }
            Reply::Later(pending) => {
                let late = self.late.clone();
                Reply::Later(Box::pin(async move {
                    let response = pending.await;
                    late.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((route_index, response.status.0));
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
