//! The run: plan the workers, start them together, merge what they send every interval
//! (progress line, timeline, interval log), then build the [`Summary`], check the SLOs and
//! write the report files.

mod aggregate;
mod output;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{unbounded, Sender};

use crate::cli::{Config, Load};
use crate::error::Error;
use crate::report::interval_log::IntervalLog;
use crate::report::{
    progress, thin_percentiles, ClientSummary, ConnSummary, EndpointSummary, OverallMeasure,
    RateSummary, RequestSummary, SeedSummary, Summary,
};
use crate::scenario::RequestBuilder;
use crate::schedule::{share, users_for_worker};
use crate::stats::{new_hist, EndpointStats, ErrorKind, Msg, WorkerTotals};
use crate::worker::{self, Ctl, Model, Plan};
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
    let builders: Vec<RequestBuilder> = cfg
        .scenario
        .endpoints
        .iter()
        .map(|e| RequestBuilder::new(e, &cfg.host_header, &cfg.headers))
        .collect::<Result<_, _>>()
        .map_err(Error::Config)?;
    let builders = Arc::new(builders);
    let scenario = Arc::new(cfg.scenario.clone());
    let drain = cfg.timeout.min(Duration::from_secs(3));
    let (tx, rx) = unbounded::<Msg>();
    let mut ctls: Vec<Sender<Ctl>> = Vec::new();
    let mut handles = Vec::new();
    let core_ids = core_affinity::get_core_ids().unwrap_or_default();
    for w in 0..cfg.threads {
        let model = match &cfg.load {
            Load::Open { rate, connections } => Model::Open {
                rate: rate.clone(),
                total: rate.total().ceil() as u64,
                connections: share(*connections, cfg.threads, w),
            },
            Load::Closed { users, think } => Model::Closed {
                users_profile: users.clone(),
                users: users_for_worker(users.peak().round() as usize, cfg.threads, w),
                think: *think,
            },
        };
        let core = cfg.cpus[w].map(|id| {
            core_ids
                .iter()
                .copied()
                .find(|c| c.id == id)
                .unwrap_or(core_affinity::CoreId { id })
        });
        let plan = Plan {
            id: w,
            workers: cfg.threads,
            core,
            target: cfg.target,
            binds: cfg.binds.clone(),
            model,
            pipeline: cfg.pipeline,
            timeout: cfg.timeout,
            interval: cfg.interval,
            drain,
            spin: cfg.spin,
            scenario: scenario.clone(),
            builders: builders.clone(),
            seed: cfg.seed,
        };
        let (ctl_tx, ctl_rx) = unbounded();
        ctls.push(ctl_tx);
        handles.push(
            worker::spawn(plan, tx.clone(), ctl_rx)
                .map_err(|e| Error::io("spawning a worker", e))?,
        );
    }
    drop(tx);
    let stop_all = |ctls: &[Sender<Ctl>]| {
        for c in ctls {
            let _ = c.send(Ctl::Stop);
        }
    };

    // Wait until every worker has its initial connections.
    let mut warnings = cfg.warnings.clone();
    let (mut ready, mut connected0, mut asked0) = (0, 0u64, 0u64);
    while ready < cfg.threads {
        match rx.recv_timeout(cfg.timeout + Duration::from_secs(5)) {
            Ok(Msg::Ready {
                connected, asked, ..
            }) => {
                ready += 1;
                connected0 += connected;
                asked0 += asked;
            }
            Ok(Msg::Failed { worker, error }) => {
                stop_all(&ctls);
                return Err(Error::Worker {
                    worker,
                    message: error,
                });
            }
            Ok(_) => {}
            Err(_) => {
                stop_all(&ctls);
                return Err(Error::Worker {
                    worker: 0,
                    message: "no worker became ready".into(),
                });
            }
        }
    }
    if connected0 < asked0 {
        warnings.push(format!(
            "only {connected0} of {asked0} connections could be opened before the start; \
             see the connect errors below"
        ));
    }
    let lead = Duration::from_millis(5);
    let t0 = Instant::now() + lead;
    let started = SystemTime::now() + lead;
    for c in &ctls {
        let _ = c.send(Ctl::Start(t0));
    }

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
    let mut agg = Aggregator::new(
        cfg.threads,
        cfg.interval.as_secs_f64(),
        names,
        IntervalLog::new(started, &comment),
    );
    let planned = cfg.duration();
    let asked = cfg.peak_connections();
    let closed = matches!(cfg.load, Load::Closed { .. });
    let mut stopped_at: Option<Instant> = None;
    let mut done: Vec<WorkerTotals> = Vec::new();
    let show = |points: Vec<crate::report::TimelinePoint>| {
        if cfg.progress {
            if let Some(p) = points.last() {
                let mut err = std::io::stderr().lock();
                let _ = write!(
                    err,
                    "\r\x1b[2K{}",
                    progress::line(p, planned.as_secs_f64(), asked, closed)
                );
                let _ = err.flush();
            }
        }
    };
    while done.len() < cfg.threads {
        if stopped_at.is_none() && stop.load(Ordering::Relaxed) {
            stopped_at = Some(Instant::now());
            stop_all(&ctls);
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Msg::Interval(s)) => show(agg.add(s)),
            Ok(Msg::Done(t)) => done.push(*t),
            Ok(Msg::Failed { worker, error }) => {
                stop_all(&ctls);
                return Err(Error::Worker {
                    worker,
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
    for h in handles {
        let _ = h.join();
    }
    if done.len() < cfg.threads {
        return Err(Error::Worker {
            worker: done.len(),
            message: "a worker ended without its totals".into(),
        });
    }

    let secs = match stopped_at {
        Some(at) => at.saturating_duration_since(t0).min(planned),
        None => planned,
    }
    .as_secs_f64()
    .max(1e-3);
    let summary = summarize(cfg, &agg, &done, secs, started, warnings);
    let mut summary = summary;
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
    done: &[WorkerTotals],
    secs: f64,
    started: SystemTime,
    mut warnings: Vec<String>,
) -> Summary {
    let sum = |f: &dyn Fn(&WorkerTotals) -> u64| done.iter().map(f).sum::<u64>();
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
    let mut lag = new_hist();
    let mut connect_errors = [0u64; ErrorKind::COUNT];
    for t in done {
        let _ = lag.add(&t.client_lag);
        for (a, b) in connect_errors.iter_mut().zip(t.connect_errors.iter()) {
            *a += b;
        }
    }
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
    let (target_rps, peak_users, model) = match &cfg.load {
        Load::Open { rate, .. } => (
            Some(rate.total() / rate.duration().as_secs_f64()),
            None,
            "open",
        ),
        Load::Closed { users, .. } => (None, Some(users.peak().round() as u64), "closed"),
    };

    // Guardrail warnings.
    if agg.peak_open_conns < asked {
        let total_errors: u64 = connect_errors.iter().sum();
        warnings.push(format!(
            "connections: asked for {asked}, at most {} were open at once ({total_errors} failed connects); \
             check the server's backlog and the open-file limit, or add --bind addresses",
            agg.peak_open_conns
        ));
    }
    if lag_p99 > 1_000_000 {
        warnings.push(format!(
            "the client fell behind its own schedule: requests left {} late at p99 (max {}) with a free \
             connection waiting; that lateness is inside the corrected latencies. Use more --threads/--cpus \
             or a lower load per thread",
            crate::units::fmt_ns(lag_p99 as f64),
            crate::units::fmt_ns(lag.max() as f64)
        ));
    }
    if let Some(target) = target_rps {
        let achieved = overall_summary.count as f64 / secs;
        if achieved < 0.95 * target {
            warnings.push(format!(
                "achieved {achieved:.1} req/s of the {target:.1} req/s target ({:.0}%)",
                100.0 * achieved / target
            ));
        }
        if waited > 0 && waited * 100 >= sent.max(1) {
            warnings.push(format!(
                "{waited} requests found every connection busy and waited (their wait counts in the corrected \
                 latency): the server is slower than --rate / --connections allows; raise --connections to \
                 measure the server rather than the pool"
            ));
        }
    }
    if not_sent > 0 {
        warnings.push(format!(
            "{not_sent} scheduled requests were never sent before the run ended"
        ));
    }
    if unfinished > 0 {
        warnings.push(format!(
            "{unfinished} requests were still outstanding when the run ended"
        ));
    }
    if let Some(w) = thin_percentiles(overall_summary.count) {
        warnings.push(w);
    }

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

/// Installs Ctrl-C / SIGTERM handling that sets the returned flag.
pub fn stop_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, flag.clone());
    }
    flag
}
