//! The report files: `.hgrm` and the interval log parse back with the hdrhistogram crate and
//! agree with `summary.json`; `report.html` draws its plots in headless Chromium.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;

use chromium_check::{Chromium, Pixels};
use common::{run, TestServer};

/// Runs the built-in CoinBitClub mix against the test server (it answers every path) with
/// report files, once per test binary.
fn report_dir() -> &'static PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let srv = TestServer::start();
        let dir = common::temp_dir("reports");
        let out = run(&[
            "-u",
            "6",
            "-t",
            "2",
            "-d",
            "2s",
            "--interval",
            "500ms",
            "--out",
            dir.to_str().unwrap(),
            &srv.base(),
        ]);
        assert!(out.summary.requests.completed > 100);
        dir
    })
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

/// Parses an .hgrm file: rows of (value, percentile, total count) and the footer's count.
fn parse_hgrm(text: &str) -> (Vec<(f64, f64, u64)>, u64) {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
    );
    let mut rows = Vec::new();
    let mut total = None;
    for l in lines {
        if let Some(rest) = l.strip_prefix("#[Max     =") {
            let count = rest
                .split("Total count    =")
                .nth(1)
                .unwrap()
                .trim()
                .trim_end_matches(']')
                .trim();
            total = Some(count.parse().unwrap());
        } else if !l.starts_with('#') && !l.trim().is_empty() {
            let f: Vec<&str> = l.split_whitespace().collect();
            rows.push((
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            ));
        }
    }
    assert!(text.contains("#[Mean    =") && text.contains("#[Buckets ="));
    (rows, total.expect("footer"))
}

#[test]
fn interval_log_parses_back_and_adds_up() {
    let dir = report_dir();
    let s = summary(dir);
    let text = std::fs::read_to_string(dir.join("latency.hlog")).unwrap();
    let mut sums: HashMap<String, Histogram<u64>> = HashMap::new();
    let mut intervals = 0;
    for entry in IntervalLogIterator::new(text.as_bytes()) {
        if let LogEntry::Interval(i) = entry.expect("log entry") {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(i.encoded_histogram())
                .unwrap();
            let h: Histogram<u64> = Deserializer::new()
                .deserialize(&mut bytes.as_slice())
                .unwrap();
            let tag = i
                .tag()
                .map_or("all".to_string(), |t| t.as_str().to_string());
            if tag == "all" {
                intervals += 1;
            }
            sums.entry(tag)
                .or_insert_with(|| Histogram::new_from(&h))
                .add(&h)
                .unwrap();
        }
    }
    assert!(intervals >= 4, "2 s at 500 ms intervals: {intervals}");
    assert_eq!(sums["all"].len(), s["overall"]["count"].as_u64().unwrap());
    for e in s["endpoints"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        assert_eq!(sums[name].len(), e["count"].as_u64().unwrap(), "{name}");
    }
    // The merged log reproduces the summary's percentiles.
    let p99 = sums["all"].value_at_quantile(0.99) as f64 / 1e6;
    let want = s["overall"]["latency_ms"]["p99"].as_f64().unwrap();
    assert!((p99 - want).abs() <= want * 0.01 + 0.001, "{p99} vs {want}");
}

#[test]
fn hgrm_files_match_the_summary() {
    let dir = report_dir();
    let s = summary(dir);
    let mut series: Vec<(String, &serde_json::Value)> = vec![("all".into(), &s["overall"])];
    for e in s["endpoints"].as_array().unwrap() {
        series.push((e["name"].as_str().unwrap().into(), e));
    }
    for (name, e) in series {
        for (file, key) in [
            (format!("{name}.hgrm"), "latency_ms"),
            (format!("{name}.uncorrected.hgrm"), "uncorrected_latency_ms"),
        ] {
            let (rows, total) = parse_hgrm(&std::fs::read_to_string(dir.join(&file)).unwrap());
            assert_eq!(total, e["count"].as_u64().unwrap(), "{file}");
            assert_eq!(
                rows.last().unwrap().2,
                total,
                "{file}: cumulative count ends at the total"
            );
            assert!(
                rows.windows(2)
                    .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1),
                "{file}: monotonic"
            );
            let max = e[key]["max"].as_f64().unwrap();
            assert!(
                (rows.last().unwrap().0 - max).abs() <= max * 0.001 + 0.001,
                "{file}: max"
            );
            let p50_row = rows.iter().find(|r| r.1 >= 0.5).unwrap();
            let p50 = e[key]["p50"].as_f64().unwrap();
            assert!(
                (p50_row.0 - p50).abs() <= p50 * 0.01 + 0.001,
                "{file}: p50 {} vs {p50}",
                p50_row.0
            );
        }
    }
}

#[test]
fn summary_json_has_the_documented_fields() {
    let s = summary(report_dir());
    for key in [
        "loadgen_version",
        "target",
        "scenario",
        "model",
        "threads",
        "cpus",
        "pipeline",
        "duration_s",
        "peak_users",
        "rate",
        "connections",
        "requests",
        "overall",
        "endpoints",
        "client",
        "seed_summary",
        "timeline",
        "warnings",
        "slo",
    ] {
        assert!(s.get(key).is_some(), "summary.json lacks {key}");
    }
    assert_eq!(s["model"], "closed");
    assert_eq!(s["scenario"], "builtin:coinbitclub");
    let names: Vec<&str> = s["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "health",
            "cluster_status",
            "enterprise_metrics",
            "livez",
            "readyz",
            "metrics",
            "get_user"
        ]
    );
    for e in s["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .chain([&s["overall"]])
    {
        for k in [
            "count",
            "ok",
            "errors",
            "error_rate",
            "rps",
            "statuses",
            "errors_by_kind",
        ] {
            assert!(e.get(k).is_some(), "endpoint lacks {k}");
        }
        for k in [
            "min", "p50", "p90", "p99", "p99.9", "p99.99", "max", "mean", "stdev",
        ] {
            assert!(e["latency_ms"][k].is_number(), "latency lacks {k}");
            assert!(e["uncorrected_latency_ms"][k].is_number());
        }
    }
    for k in [
        "users_tested",
        "successful_operations",
        "failed_operations",
        "peak_concurrency",
        "throughput_ops_s",
        "mean_response_ms",
        "total_time_s",
    ] {
        assert!(s["seed_summary"][k].is_number(), "seed_summary lacks {k}");
    }
    for k in ["asked", "peak_open", "connects", "connect_errors"] {
        assert!(s["connections"].get(k).is_some());
    }
    assert!(s["rate"]["target_rps"].is_null() && s["rate"]["achieved_rps"].as_f64().unwrap() > 0.0);
}

#[test]
fn html_report_draws_its_plots_in_chromium() {
    let profiles = common::temp_dir("chromium-profile");
    let chromium = Chromium::find(&profiles, (1200, 1400));
    let dir = report_dir();
    let page = format!("file://{}", dir.join("report.html").display());
    let dom = chromium.dump_dom(&page, None);
    assert!(
        dom.contains("<title>loadgen report (plotted)</title>"),
        "title not set after drawing:\n{}",
        &dom[..dom.len().min(600)]
    );
    assert!(dom.contains("data-plotted=\"true\""));

    let png = dir.join("report.png");
    chromium.screenshot(&page, &png, None);
    let pixels = Pixels::read(&png);
    // The "all" curve is drawn in #1f77b4.
    let curve = pixels.near((0x1f, 0x77, 0xb4));
    assert!(curve > 300, "percentile curve pixels: {curve}");
    let non_white = pixels.non_white();
    assert!(non_white > 10_000, "the page is nearly blank: {non_white}");
}
