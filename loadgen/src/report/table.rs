//! The terminal rendering of a [`Summary`]: per-endpoint table, totals, the seed-style summary,
//! warnings and SLO verdicts.

use std::fmt::Write;

use super::{EndpointSummary, Latency, Summary};
use crate::units::{fmt_count, fmt_ns};

fn ms(v: f64) -> String {
    fmt_ns(v * 1e6)
}

fn row(out: &mut String, label: &str, e: &EndpointSummary, l: &Latency) {
    let _ = writeln!(
        out,
        "{label:<24} {:>11} {:>10.1} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        fmt_count(e.count),
        e.rps,
        fmt_count(e.errors),
        ms(l.p50),
        ms(l.p90),
        ms(l.p99),
        ms(l.p99_9),
        ms(l.p99_99),
        ms(l.max),
        ms(l.mean),
        ms(l.stdev),
    );
}

fn kv_list<'a>(items: impl Iterator<Item = (&'a String, &'a u64)>) -> String {
    let parts: Vec<String> = items
        .map(|(k, v)| format!("{k} x {}", fmt_count(*v)))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// Renders the end-of-run report.
pub fn render(s: &Summary) -> String {
    let mut out = String::new();
    let load = match s.peak_users {
        Some(u) => format!("closed model, {} users", fmt_count(u)),
        None => format!(
            "open model, {:.1} req/s target",
            s.rate.target_rps.unwrap_or(0.0)
        ),
    };
    let cpus: Vec<String> = s.cpus.iter().map(|c| c.to_string()).collect();
    let _ = writeln!(
        out,
        "\nloadgen {} | {} | {} | {load} | {} threads (CPUs {}) | pipeline {} | {:.1} s\n",
        s.loadgen_version,
        s.target,
        s.scenario,
        s.threads,
        if cpus.is_empty() {
            "any".into()
        } else {
            cpus.join(",")
        },
        s.pipeline,
        s.duration_s
    );
    let _ = writeln!(
        out,
        "{:<24} {:>11} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "endpoint",
        "count",
        "req/s",
        "errors",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "p99.99",
        "max",
        "mean",
        "stdev"
    );
    for e in &s.endpoints {
        row(&mut out, &e.name, e, &e.latency_ms);
    }
    row(&mut out, "all", &s.overall, &s.overall.latency_ms);
    if s.peak_users.is_none() {
        row(
            &mut out,
            "all (uncorrected)",
            &s.overall,
            &s.overall.uncorrected_latency_ms,
        );
        let _ = writeln!(
            out,
            "  latency counts from each request's scheduled send time; 'uncorrected' from the actual send"
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "statuses:        {}",
        kv_list(s.overall.statuses.iter())
    );
    let _ = writeln!(
        out,
        "errors by kind:  {}",
        kv_list(s.overall.errors_by_kind.iter())
    );
    for e in s.endpoints.iter().filter(|e| e.errors > 0) {
        let _ = writeln!(
            out,
            "  {}: {} (statuses {})",
            e.name,
            kv_list(e.errors_by_kind.iter()),
            kv_list(e.statuses.iter())
        );
    }
    let target = s
        .rate
        .target_rps
        .map_or("none (closed model)".to_string(), |t| {
            format!("{t:.1} req/s")
        });
    let _ = writeln!(
        out,
        "rate:            target {target}, achieved {:.1} req/s",
        s.rate.achieved_rps
    );
    let _ = writeln!(
        out,
        "connections:     asked {}, peak open {}, connects {}, connect errors: {}",
        fmt_count(s.connections.asked),
        fmt_count(s.connections.peak_open),
        fmt_count(s.connections.connects),
        kv_list(s.connections.connect_errors.iter())
    );
    let r = &s.requests;
    let _ = writeln!(
        out,
        "requests:        sent {}, completed {}, ok {}, errors {}, not sent {}, unfinished {}",
        fmt_count(r.sent),
        fmt_count(r.completed),
        fmt_count(r.ok),
        fmt_count(r.errors),
        fmt_count(r.not_sent),
        fmt_count(r.unfinished)
    );
    let _ = writeln!(
        out,
        "client:          send lag p99 {}, max {}; waited for a free connection {}",
        ms(s.client.lag_p99_ms),
        ms(s.client.lag_max_ms),
        fmt_count(s.client.waited_for_connection)
    );
    let seed = &s.seed_summary;
    let _ = writeln!(out, "\n=== CoinBitClub load test summary ===");
    let _ = writeln!(
        out,
        "Users tested:            {}",
        fmt_count(seed.users_tested)
    );
    let _ = writeln!(
        out,
        "Successful operations:   {}",
        fmt_count(seed.successful_operations)
    );
    let _ = writeln!(
        out,
        "Failed operations:       {}",
        fmt_count(seed.failed_operations)
    );
    let _ = writeln!(
        out,
        "Peak concurrency:        {}",
        fmt_count(seed.peak_concurrency)
    );
    let _ = writeln!(
        out,
        "Throughput:              {:.1} ops/s",
        seed.throughput_ops_s
    );
    let _ = writeln!(
        out,
        "Mean response:           {:.2} ms",
        seed.mean_response_ms
    );
    let _ = writeln!(out, "Total time:              {:.1} s", seed.total_time_s);
    if !s.warnings.is_empty() {
        let _ = writeln!(out);
        for w in &s.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
    }
    if !s.slo.is_empty() {
        let _ = writeln!(out);
        for v in &s.slo {
            let mark = if v.met { "met   " } else { "MISSED" };
            let _ = writeln!(
                out,
                "SLO {mark} {:<20} observed {}",
                v.objective, v.observed
            );
        }
    }
    out
}
