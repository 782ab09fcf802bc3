//! The run: plan the client threads, start them together, merge what they send every interval
//! (progress line, timeline, interval log), then build the [`Summary`], check the SLOs and
//! write the report files.

mod aggregate;
mod output;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{unbounded, Receiver, Sender};
use hdrhistogram::Histogram;

use crate::cli::{Config, Load};
use crate::client::{self, Ctl, Model, Plan};
use crate::error::Error;
use crate::report::interval_log::IntervalLog;
use crate::report::{
    progress, thin_percentiles, ClientSummary, ConnSummary, EndpointSummary, OverallMeasure,
    RateSummary, RequestSummary, SeedSummary, Summary,
};
use crate::scenario::RequestBuilder;
use crate::schedule::{share, users_for_client};
use crate::stats::{new_hist, ClientTotals, EndpointStats, ErrorKind, Msg};
use aggregate::Aggregator;

/// Exit code when an objective is missed.
pub const EXIT_SLO_MISSED: i32 = 3;

/// What a run produced.
pub struct Outcome {
    pub summary: Summary,
    /// The terminal report.
    pub text: String,
    /// 0, or [`EXIT_SLO_MISSED`].
    pub exit_code: i32,
}

/// Runs the load described by `cfg`. Setting `stop` ends it early (Ctrl-C); the report covers
/// what ran.
pub fn run(cfg: &Config, stop: &AtomicBool) -> Result<Outcome, Error> {
    let (tx, rx) = unbounded::<Msg>();
    let clients = ClientThreads::spawn(cfg, tx)?;
    let mut warnings = cfg.warnings.clone();
    let (connected, asked) = clients.wait_ready(cfg, &rx)?;
    if connected < asked {
        warnings.push(format!(
            "only {connected} of {asked} connections could be opened before the start; \
             see the connect errors below"
        ));
    }
    let lead = Duration::from_millis(5);
    let t0 = Instant::now() + lead;
    let started = SystemTime::now() + lead;
    for c in &clients.ctls {
        let _ = c.send(Ctl::Start(t0));
    }
    let mut agg = new_aggregator(cfg, started);
    let (done, stopped_at) = clients.collect(cfg, &rx, stop, &mut agg)?;
    let planned = cfg.duration();
    let secs = match stopped_at {
        Some(at) => at.saturating_duration_since(t0).min(planned),
        None => planned,
    }
    .as_secs_f64()
    .max(1e-3);
    let mut summary = summarize(cfg, &agg, &done, secs, started, warnings);
    let overall_stats = overall(&agg.totals, summary.requests.not_sent);
    summary.slo = crate::slo::evaluate(
        &cfg.slo,
        &OverallMeasure {
            stats: &overall_stats,
            error_rate: summary.overall.error_rate,
            rps: summary.rate.achieved_rps,
        },
    );
    if let Some(dir) = &cfg.out {
        output::write_all(dir, &summary, &agg, &overall_stats, &cfg.scenario)?;
    }
    let exit_code = if summary.slo.iter().all(|v| v.met) {
        0
    } else {
        EXIT_SLO_MISSED
    };
    let text = crate::report::table::render(&summary);
    Ok(Outcome {
        summary,
        text,
        exit_code,
    })
}

/// The merger of the client threads' intervals, with the interval log's header.
fn new_aggregator(cfg: &Config, started: SystemTime) -> Aggregator {
    let names: Vec<String> = cfg
        .scenario
        .endpoints
        .iter()
        .map(|e| e.name.clone())
        .collect();
    let comment = format!(
        "loadgen {} {} {}",
        env!("CARGO_PKG_VERSION"),
        cfg.url,
        cfg.scenario.name
    );
    Aggregator::new(
        cfg.threads,
        cfg.interval.as_secs_f64(),
        names,
        IntervalLog::new(started, &comment),
    )
}

/// With a scenario's `[login]`: an account for each virtual user, made before the run.
fn log_in(cfg: &Config) -> Result<Option<Arc<crate::login::Identities>>, Error> {
    let Some(spec) = &cfg.scenario.login else {
        return Ok(None);
    };
    // Virtual users: the closed model's users, or the open model's connections.
    let users = match &cfg.load {
        Load::Closed { users, .. } => users.peak().round() as usize,
        Load::Open { .. } => 0,
    };
    let count = users.max(cfg.peak_connections() as usize);
    let identities =
        crate::login::prepare(cfg.target, &cfg.host_header, spec, count).map_err(Error::Config)?;
    Ok(Some(Arc::new(identities)))
}

/// The running client threads: a control channel to each, and their threads.
struct ClientThreads {
    ctls: Vec<Sender<Ctl>>,
    handles: Vec<JoinHandle<()>>,
}

impl ClientThreads {
    /// Plans and starts one client thread per thread; each sends on `tx`.
    fn spawn(cfg: &Config, tx: Sender<Msg>) -> Result<ClientThreads, Error> {
        let builders: Vec<RequestBuilder> = cfg
            .scenario
            .endpoints
            .iter()
            .map(|e| RequestBuilder::new(e, &cfg.host_header, &cfg.headers))
            .collect::<Result<_, _>>()
            .map_err(Error::Config)?;
        let builders = Arc::new(builders);
        let identities = log_in(cfg)?;
        let scenario = Arc::new(cfg.scenario.clone());
        let core_ids = core_affinity::get_core_ids().unwrap_or_default();
        let mut clients = ClientThreads {
            ctls: Vec::new(),
            handles: Vec::new(),
        };
        for w in 0..cfg.threads {
            let core = cfg.cpus[w].map(|id| {
                core_ids
                    .iter()
                    .copied()
                    .find(|c| c.id == id)
                    .unwrap_or(core_affinity::CoreId { id })
            });
            let plan = Plan {
                id: w,
                threads: cfg.threads,
                core,
                target: cfg.target,
                binds: cfg.binds.clone(),
                model: model_of(cfg, w),
                pipeline: cfg.pipeline,
                timeout: cfg.timeout,
                interval: cfg.interval,
                drain: cfg.timeout.min(Duration::from_secs(3)),
                spin: cfg.spin,
                scenario: scenario.clone(),
                builders: builders.clone(),
                identities: identities.clone(),
                seed: cfg.seed,
            };
            let (ctl_tx, ctl_rx) = unbounded();
            clients.ctls.push(ctl_tx);
            let handle = client::spawn(plan, tx.clone(), ctl_rx)
                .map_err(|e| Error::io("spawning a client thread", e))?;
            clients.handles.push(handle);
        }
        Ok(clients)
    }

    fn stop_all(&self) {
        for c in &self.ctls {
            let _ = c.send(Ctl::Stop);
        }
    }

    /// Waits until every client thread has its initial connections; returns the connections opened
    /// and asked for.
    fn wait_ready(&self, cfg: &Config, rx: &Receiver<Msg>) -> Result<(u64, u64), Error> {
        let (mut ready, mut connected_total, mut asked_total) = (0, 0u64, 0u64);
        while ready < cfg.threads {
            match rx.recv_timeout(cfg.timeout + Duration::from_secs(5)) {
                Ok(Msg::Ready {
                    connected, asked, ..
                }) => {
                    ready += 1;
                    connected_total += connected;
                    asked_total += asked;
                }
                Ok(Msg::Failed { thread, error }) => {
                    self.stop_all();
                    return Err(Error::ClientThread {
                        thread,
                        message: error,
                    });
                }
                Ok(_) => {}
                Err(_) => {
                    self.stop_all();
                    return Err(Error::ClientThread {
                        thread: 0,
                        message: "no client thread became ready".into(),
                    });
                }
            }
        }
        Ok((connected_total, asked_total))
    }

    /// Merges what the client threads send until each has sent its totals, showing the progress
    /// line; stops them when `stop` is set. Returns their totals and when the stop came.
    fn collect(
        self,
        cfg: &Config,
        rx: &Receiver<Msg>,
        stop: &AtomicBool,
        agg: &mut Aggregator,
    ) -> Result<(Vec<ClientTotals>, Option<Instant>), Error> {
        let planned = cfg.duration().as_secs_f64();
        let asked = cfg.peak_connections();
        let closed = matches!(cfg.load, Load::Closed { .. });
        let show = |points: Vec<crate::report::TimelinePoint>| {
            if let Some(p) = points.last().filter(|_| cfg.progress) {
                let mut err = std::io::stderr().lock();
                let _ = write!(
                    err,
                    "\r\x1b[2K{}",
                    progress::line(p, planned, asked, closed)
                );
                let _ = err.flush();
            }
        };
        let mut stopped_at: Option<Instant> = None;
        let mut done: Vec<ClientTotals> = Vec::new();
        while done.len() < cfg.threads {
            if stopped_at.is_none() && stop.load(Ordering::Relaxed) {
                stopped_at = Some(Instant::now());
                self.stop_all();
            }
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Msg::Interval(s)) => show(agg.add(s)),
                Ok(Msg::Done(t)) => done.push(*t),
                Ok(Msg::Failed { thread, error }) => {
                    self.stop_all();
                    return Err(Error::ClientThread {
                        thread,
                        message: error,
                    });
                }
                Ok(Msg::Ready { .. }) => {}
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            }
        }
        // Snapshots sent just before Done are already queued.
        while let Ok(Msg::Interval(s)) = rx.try_recv() {
            show(agg.add(s));
        }
        show(agg.finish());
        if cfg.progress {
            eprintln!();
        }
        for h in self.handles {
            let _ = h.join();
        }
        if done.len() < cfg.threads {
            return Err(Error::ClientThread {
                thread: done.len(),
                message: "a client thread ended without its totals".into(),
            });
        }
        Ok((done, stopped_at))
    }
}

/// Client thread `w`'s share of the load.
fn model_of(cfg: &Config, w: usize) -> Model {
    match &cfg.load {
        Load::Open { rate, connections } => Model::Open {
            rate: rate.clone(),
            total: rate.total().ceil() as u64,
            connections: share(*connections, cfg.threads, w),
        },
        Load::Closed { users, think } => Model::Closed {
            users_profile: users.clone(),
            users: users_for_client(users.peak().round() as usize, cfg.threads, w),
            think: *think,
        },
    }
}

/// All endpoints merged, with never-sent requests counted as errors.
fn overall(totals: &[EndpointStats], not_sent: u64) -> EndpointStats {
    let mut all = EndpointStats::default();
    for t in totals {
        all.merge(t);
    }
    all.errors[ErrorKind::NotSent.index()] += not_sent;
    all
}

fn summarize(
    cfg: &Config,
    agg: &Aggregator,
    done: &[ClientTotals],
    secs: f64,
    started: SystemTime,
    mut warnings: Vec<String>,
) -> Summary {
    let sum = |f: &dyn Fn(&ClientTotals) -> u64| done.iter().map(f).sum::<u64>();
    let not_sent = sum(&|t| t.not_sent);
    let all = overall(&agg.totals, not_sent);
    let overall_summary = EndpointSummary::new("all", "", "(all endpoints)", &all, secs);
    let endpoints: Vec<EndpointSummary> = cfg
        .scenario
        .endpoints
        .iter()
        .zip(&agg.totals)
        .map(|(e, s)| EndpointSummary::new(&e.name, &e.method, &e.path, s, secs))
        .collect();
    let (lag, connect_errors) = lag_and_connect_errors(done);
    let asked = cfg.peak_connections();
    let connect_error_map = ErrorKind::ALL
        .iter()
        .filter(|k| connect_errors[k.index()] > 0)
        .map(|k| (k.name().to_string(), connect_errors[k.index()]))
        .collect();
    let lag_p99 = if lag.is_empty() {
        0
    } else {
        lag.value_at_quantile(0.99)
    };
    let sent = sum(&|t| t.sent);
    let waited = sum(&|t| t.waited_for_conn);
    let unfinished = sum(&|t| t.unfinished);
    let (target_rps, peak_users, model) = load_model(&cfg.load);

    warnings.extend(
        Guardrails {
            asked,
            peak_open: agg.peak_open_conns,
            failed_connects: connect_errors.iter().sum(),
            lag_p99_ns: lag_p99,
            lag_max_ns: lag.max(),
            target_rps,
            achieved_rps: overall_summary.count as f64 / secs,
            sent,
            waited,
            not_sent,
            unfinished,
            completed: overall_summary.count,
        }
        .warnings(),
    );

    let ok = overall_summary.ok;
    Summary {
        loadgen_version: env!("CARGO_PKG_VERSION"),
        started_unix_s: started
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        target: cfg.url.clone(),
        scenario: cfg.scenario.name.clone(),
        model,
        threads: cfg.threads,
        cpus: cfg.cpus.iter().flatten().copied().collect(),
        pipeline: cfg.pipeline,
        duration_s: secs,
        peak_users,
        rate: RateSummary {
            target_rps,
            achieved_rps: overall_summary.count as f64 / secs,
        },
        connections: ConnSummary {
            asked,
            peak_open: agg.peak_open_conns,
            connects: sum(&|t| t.connects),
            connect_errors: connect_error_map,
        },
        requests: RequestSummary {
            sent,
            completed: overall_summary.count,
            ok,
            errors: overall_summary.errors,
            not_sent,
            unfinished,
        },
        client: ClientSummary {
            lag_p99_ms: lag_p99 as f64 / 1e6,
            lag_max_ms: lag.max() as f64 / 1e6,
            waited_for_connection: waited,
        },
        seed_summary: SeedSummary {
            users_tested: peak_users.unwrap_or(asked),
            successful_operations: ok,
            failed_operations: overall_summary.errors,
            peak_concurrency: if peak_users.is_some() {
                agg.peak_users
            } else {
                agg.peak_in_flight
            },
            throughput_ops_s: overall_summary.count as f64 / secs,
            mean_response_ms: overall_summary.latency_ms.mean,
            total_time_s: secs,
        },
        timeline: agg.timeline.clone(),
        overall: overall_summary,
        endpoints,
        warnings,
        slo: Vec::new(),
    }
}

/// The client threads' lateness merged, and their failed connects by kind.
fn lag_and_connect_errors(done: &[ClientTotals]) -> (Histogram<u64>, [u64; ErrorKind::COUNT]) {
    let mut lag = new_hist();
    let mut connect_errors = [0u64; ErrorKind::COUNT];
    for t in done {
        let _ = lag.add(&t.client_lag);
        for (a, b) in connect_errors.iter_mut().zip(t.connect_errors.iter()) {
            *a += b;
        }
    }
    (lag, connect_errors)
}

/// The open model's target rate, the closed model's peak users, and the model's name.
fn load_model(load: &Load) -> (Option<f64>, Option<u64>, &'static str) {
    match load {
        Load::Open { rate, .. } => (
            Some(rate.total() / rate.duration().as_secs_f64()),
            None,
            "open",
        ),
        Load::Closed { users, .. } => (None, Some(users.peak().round() as u64), "closed"),
    }
}

/// What the run's warnings are decided from: whether the client, rather than the server, set
/// the numbers.
struct Guardrails {
    asked: u64,
    peak_open: u64,
    failed_connects: u64,
    lag_p99_ns: u64,
    lag_max_ns: u64,
    /// The open model's target; `None` for the closed model.
    target_rps: Option<f64>,
    achieved_rps: f64,
    sent: u64,
    waited: u64,
    not_sent: u64,
    unfinished: u64,
    completed: u64,
}

impl Guardrails {
    fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.peak_open < self.asked {
            warnings.push(format!(
                "connections: asked for {}, at most {} were open at once ({} failed connects); \
                 check the server's backlog and the open-file limit, or add --bind addresses",
                self.asked, self.peak_open, self.failed_connects
            ));
        }
        if self.lag_p99_ns > 1_000_000 {
            warnings.push(format!(
                "the client fell behind its own schedule: requests left {} late at p99 (max {}) with a free \
                 connection waiting; that lateness is inside the corrected latencies. Use more --threads/--cpus \
                 or a lower load per thread",
                crate::units::fmt_ns(self.lag_p99_ns as f64),
                crate::units::fmt_ns(self.lag_max_ns as f64)
            ));
        }
        if let Some(target) = self.target_rps {
            let achieved = self.achieved_rps;
            if achieved < 0.95 * target {
                warnings.push(format!(
                    "achieved {achieved:.1} req/s of the {target:.1} req/s target ({:.0}%)",
                    100.0 * achieved / target
                ));
            }
            let waited = self.waited;
            if waited > 0 && waited * 100 >= self.sent.max(1) {
                warnings.push(format!(
                    "{waited} requests found every connection busy and waited (their wait counts in the corrected \
                     latency): the server is slower than --rate / --connections allows; raise --connections to \
                     measure the server rather than the pool"
                ));
            }
        }
        if self.not_sent > 0 {
            warnings.push(format!(
                "{} scheduled requests were never sent before the run ended",
                self.not_sent
            ));
        }
        if self.unfinished > 0 {
            warnings.push(format!(
                "{} requests were still outstanding when the run ended",
                self.unfinished
            ));
        }
        warnings.extend(thin_percentiles(self.completed));
        warnings
    }
}

/// Installs Ctrl-C / SIGTERM handling that sets the returned flag.
pub fn stop_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, flag.clone());
    }
    flag
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guardrails_warn_only_where_the_client_set_the_numbers() {
        let quiet = Guardrails {
            asked: 64,
            peak_open: 64,
            failed_connects: 0,
            lag_p99_ns: 200_000,
            lag_max_ns: 900_000,
            target_rps: Some(1000.0),
            achieved_rps: 990.0,
            sent: 100_000,
            waited: 0,
            not_sent: 0,
            unfinished: 0,
            completed: 100_000,
        };
        let cases = [
            ("a quiet run", Guardrails { ..quiet }, None),
            (
                "connections missing",
                Guardrails {
                    peak_open: 60,
                    failed_connects: 4,
                    ..quiet
                },
                Some("at most 60 were open at once (4 failed connects)"),
            ),
            (
                "the client lagged",
                Guardrails {
                    lag_p99_ns: 2_000_000,
                    ..quiet
                },
                Some("the client fell behind its own schedule"),
            ),
            (
                "the target missed",
                Guardrails {
                    achieved_rps: 900.0,
                    ..quiet
                },
                Some("achieved 900.0 req/s of the 1000.0 req/s target (90%)"),
            ),
            (
                "the closed model has no target",
                Guardrails {
                    target_rps: None,
                    achieved_rps: 1.0,
                    waited: 100_000,
                    ..quiet
                },
                None,
            ),
            (
                "1% waited for a connection",
                Guardrails {
                    waited: 1_000,
                    ..quiet
                },
                Some("1000 requests found every connection busy"),
            ),
            (
                "requests never sent",
                Guardrails {
                    not_sent: 3,
                    ..quiet
                },
                Some("3 scheduled requests were never sent"),
            ),
            (
                "requests outstanding",
                Guardrails {
                    unfinished: 2,
                    ..quiet
                },
                Some("2 requests were still outstanding"),
            ),
        ];
        for (case, guardrails, expected) in cases {
            let warnings = guardrails.warnings();
            match expected {
                None => assert!(warnings.is_empty(), "{case}: {warnings:?}"),
                Some(text) => assert!(
                    warnings.len() == 1 && warnings[0].contains(text),
                    "{case}: {warnings:?}"
                ),
            }
        }
    }
}
