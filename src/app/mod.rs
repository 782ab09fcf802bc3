//! The application: routes and handlers, engine-agnostic.
//!
//! Each shard builds its own [`ShardApp`] (the factory is [`ShardApp::new`]) and drives it
//! through the codec's [`Service`] trait. The app knows requests and responses, its own
//! metrics, and the monitor's published snapshot; it knows no engine, socket or timer.
//!
//! # Layout
//! - [`routes`]: the route table, method checks and route names used in metrics.
//! - [`handlers`]: one function per endpoint.
//! - [`jobs`]: the job endpoints over the shard's queues.
//! - [`users`]: the users API, the first endpoints on the database tier.

pub mod handlers;
pub mod jobs;
pub mod routes;
pub mod users;

use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::db::DbClient;
use crate::http::AdmissionWait;
use crate::http::{
    quote_input, HttpDate, HttpError, Reply, Request, Response, Service, StatusCode,
};
use crate::metrics::ShardMetrics;
use crate::monitor::Published;
use crate::queue::{Priority, RequestGate, RouteClasses, ShardQueues};
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
    pub queues: Rc<ShardQueues>,
    /// The class of each route (indexed as [`routes::ROUTE_NAMES`]).
    route_classes: Vec<Option<Priority>>,
    /// Where classed requests take turns; `None` when no route has a class.
    gate: Option<Rc<RequestGate>>,
    /// The route [`Service::admit`] found, so that `call` does not match it again.
    admitted_route: Option<Match>,
    /// This shard's way to the database; `None` when none is configured.
    db: Option<DbClient>,
    /// (route, status) of answers given later (database replies), counted at the next tick.
    /// A mutex, not a `RefCell`: under the may engine the app moves between worker threads.
    /// Uncontended: the shard's tick and its own replies take it one at a time.
    late: Arc<Mutex<Vec<(usize, u16)>>>,
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
            admitted_route: None,
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
        self.queues.refresh_weights();
        let late = std::mem::take(&mut *self.late.lock().unwrap_or_else(|e| e.into_inner()));
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
            Route::QueuesStatus => handlers::json_snapshot(published.queues_status.clone()).into(),
            Route::JobEnqueue => jobs::enqueue(&self.queues, self.db.as_mut(), request),
            Route::JobStatus => jobs::status(&self.queues, request),
            Route::DeadLetters => jobs::dead_letters(&self.queues),
            Route::DeadLetterReplay => jobs::replay(&self.queues, request),
            Route::DebugEffects => {
                handlers::json_snapshot(crate::queue::job_kinds::debug_effects().to_string().into())
                    .into()
            }
        }
    }
}

impl Service for ShardApp {
    fn admit(&mut self, request: &Request<'_>) -> Option<AdmissionWait> {
        let gate = self.gate.as_ref()?;
        let matched = routes::match_route(request.method, request.path, self.debug_routes);
        let class = match matched {
            Match::Found(route) => self.route_classes[route as usize],
            _ => None,
        };
        let wait = class.and_then(|class| gate.wait_for_turn(class, std::time::Instant::now()));
        if wait.is_none() {
            self.admitted_route = Some(matched);
        }
        wait
    }

    fn call(&mut self, request: &Request<'_>) -> Reply {
        let matched = self.admitted_route.take().unwrap_or_else(|| {
            routes::match_route(request.method, request.path, self.debug_routes)
        });
        let (route_index, reply) = match matched {
            Match::Found(route) => (route as usize, self.dispatch(route, request)),
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
