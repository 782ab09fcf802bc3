//! The binary's contract: SLO exit codes and the guardrails that refuse nonsense.

mod common;

use common::{run_bin, TestServer};

#[test]
fn slo_met_exits_zero_and_missed_exits_three_naming_the_objective() {
    let srv = TestServer::start();
    let url = srv.url("/slow");
    let (code, out) = run_slo(&url, "500ms", "p99<5s,errors<1%");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("SLO met"), "{out}");

    // Every response takes 20 ms: p99 under 1 ms is missed, the error objective is met.
    let (code, out) = run_slo(&url, "500ms", "p99<1ms,errors<1%");
    assert_eq!(code, loadgen::EXIT_SLO_MISSED, "{out}");
    assert!(out.contains("SLO MISSED p99<1ms"), "{out}");
    assert!(out.contains("SLO met    errors<1%"), "{out}");

    // Every response is a 404.
    let (code, out) = run_slo(&srv.url("/missing"), "300ms", "errors<0.1%");
    assert_eq!(code, loadgen::EXIT_SLO_MISSED, "{out}");
    assert!(out.contains("SLO MISSED errors<0.1%"), "{out}");
}

/// Runs the binary with 2 users on 1 thread for `duration` against `url` under `--slo slo`;
/// returns (exit code, stdout).
fn run_slo(url: &str, duration: &str, slo: &str) -> (i32, String) {
    let (code, out, _) = run_bin(&["-u", "2", "-t", "1", "-d", duration, "--slo", slo, url]);
    (code, out)
}

#[test]
fn nonsense_is_refused() {
    let cases: &[(&[&str], &str)] = &[
        (&["-R", "1", "-t", "2"], "below the 2 client threads"),
        (&["-d", "0s"], "--duration must be more than zero"),
        (&["--stages", "0s:5"], "zero duration"),
        (&["-u", "5", "-R", "5"], "exclude each other"),
        (
            &["-s", "/nonexistent/mix.toml"],
            "reading /nonexistent/mix.toml",
        ),
    ];
    for (args, want) in cases {
        let (code, out, err) = run_bin(args);
        assert_ne!(code, 0, "{args:?} ran: {out}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn json_output_and_help() {
    let srv = TestServer::start();
    let (code, out, _) = run_bin(&["-u", "1", "-t", "1", "-d", "200ms", "--json", &srv.url("/")]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("stdout is summary.json");
    assert!(v["requests"]["completed"].as_u64().unwrap() > 0);
    let (code, out, _) = run_bin(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--users",
        "--rate",
        "--stages",
        "--cpus",
        "--threads",
        "--pipeline",
        "--bind",
        "--slo",
        "--out",
        "--think",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}");
    }
}
