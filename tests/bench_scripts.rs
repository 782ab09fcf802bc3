//! The bench scripts refuse a cell measured with errors (bench/common.sh, "valid cells"): the
//! table reads `INVALID (...)` and the script exits 2; a cell without errors is a figure and the
//! script exits 0. Each run is the script itself, cut to one short cell by its own variables:
//! - `bench/queue_classes.sh`, section 4 (GET /health req/s), one round of 1 s with the real
//!   loadgen, against a tiny server in this test that answers every request with one status
//!   (coinbit's place is taken by a stand-in that only says it listens);
//! - `bench/http_peers.sh` against the real coinbit, one 1 s cell, with a stand-in `wrk` first on
//!   PATH (wrk is not part of the build): it asks the URL once and, as wrk does, reports
//!   "Non-2xx or 3xx responses" when the answer is 4xx or 5xx.
//! - `bench/auth.sh`, section 1, one round of 1 s, against the tiny server through its `URL`
//!   (a server already running): the cells that must log in and the open one are refused.
//! - `bench/trading_fanout.sh` end to end on 3 subscribers, one round, with the test's own
//!   coinbit and exchange-sim, on a PostgreSQL cluster of its own (the only one here that needs
//!   PostgreSQL's server binaries and python3's cryptography).
//!
//! They need bash, curl, python3, taskset and the loadgen binary (`cargo test --workspace`
//! builds it); no wrk, no nginx.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A fresh temporary folder for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("coinbit-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn executable(path: &Path, body: &str) {
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The loadgen binary of this build, beside the test's own folder (target/debug/loadgen).
fn loadgen() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("loadgen");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p loadgen` (`cargo test --workspace` does)",
        path.display()
    );
    path
}

/// Serves HTTP/1.1 keep-alive on 127.0.0.1 from a thread, answering every request with
/// `status` and a `{}` body; returns its port.
fn tiny_server(status: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || answer_all(stream, status));
        }
    });
    port
}

/// Answers each request head on `stream` (requests here have no body) until the peer closes.
fn answer_all(mut stream: TcpStream, status: &str) {
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}"
    );
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            pending.drain(..end + 4);
            if stream.write_all(response.as_bytes()).is_err() {
                return;
            }
        }
    }
}

/// bench/queue_classes.sh, section 4 only, one round of 1 s, against the tiny server answering
/// `status`.
fn queue_classes_against(status: &'static str, name: &str) -> Output {
    let dir = temp_dir(name);
    // coinbit's stand-in: the test's server answers on PORT; this says it listens, as coinbit
    // does, and ends on the SIGINT the script stops a server with (python, since a background
    // shell script cannot take SIGINT).
    let coinbit = dir.join("coinbit");
    executable(
        &coinbit,
        "#!/usr/bin/env python3\nimport signal, sys, time\n\
         signal.signal(signal.SIGINT, lambda *_: sys.exit(0))\n\
         print('listening on (stand-in)', flush=True)\ntime.sleep(600)\n",
    );
    let port = tiny_server(status);
    let output = Command::new(Path::new(ROOT).join("bench/queue_classes.sh"))
        .env("COINBIT", &coinbit)
        .env("LOADGEN", loadgen())
        .env("PORT", port.to_string())
        .env("SECTIONS", "4")
        .env("ROUNDS", "1")
        .env("DURATION", "1s")
        .env("SERVER_CPU", "0")
        .env("CLIENT_CPU", "0")
        .output()
        .expect("bench/queue_classes.sh runs");
    std::fs::remove_dir_all(&dir).ok();
    output
}

/// bench/http_peers.sh on coinbit (may engine) alone, one 1 s cell of GET `path`, with the
/// stand-in wrk.
fn http_peers_on(path: &str, name: &str, port_base: u16) -> Output {
    let dir = temp_dir(name);
    let bin = dir.join("bin");
    let release = dir.join("target/release");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&release).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_coinbit"), release.join("coinbit")).unwrap();
    executable(
        &bin.join("wrk"),
        r#"#!/usr/bin/env bash
# Stand-in wrk: one real request to the URL (the last argument); its status stands for all.
[ "$1" = -v ] && { echo "wrk 4.2.0 [stand-in]"; exit 0; }
code=$(curl -s -o /dev/null -w '%{http_code}' "${@: -1}")
echo "Running 1s test @ ${*: -1}"
echo "  Latency Distribution"
echo "     50%  300.00us"
echo "     99%  800.00us"
echo "  1000 requests in 1.00s, 0.50MB read"
case $code in 2??|3??) ;; *) echo "  Non-2xx or 3xx responses: 1000" ;; esac
echo "Requests/sec:   1000.00"
"#,
    );
    let output = Command::new(Path::new(ROOT).join("bench/http_peers.sh"))
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env("OUT_DIR", dir.join("out"))
        .env("SERVERS", "coinbit-may")
        .env("BENCH_PATH", path)
        .env("DURATION", "1s")
        .env("WARMUP", "0")
        .env("CONNS", "8")
        .env("PIPELINE_DEPTH", "0")
        .env("BUILD", "0")
        .env("INSTALL", "0")
        .env("SERVER_CPU", "0")
        .env("CLIENT_CPU", "0")
        .env("PORT_BASE", port_base.to_string())
        .output()
        .expect("bench/http_peers.sh runs");
    std::fs::remove_dir_all(&dir).ok();
    output
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The table row of stdout whose first cell is `first`.
fn row<'a>(stdout: &'a str, first: &str) -> Option<&'a str> {
    stdout
        .lines()
        .find(|line| line.starts_with(&format!("| {first} |")))
}

#[test]
fn queue_classes_refuses_a_cell_answered_with_503() {
    let output = queue_classes_against("503 Service Unavailable", "qc-503");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let classed = stdout
        .lines()
        .find(|line| line.contains("| `livez=high,readyz=low,cluster_status=background` |"))
        .unwrap_or_else(|| panic!("no section 4 row: {}", describe(&output)));
    assert!(
        classed.contains("INVALID (") && classed.contains("HTTP 503"),
        "the cell must say it is invalid and why: {classed}"
    );
}

#[test]
fn queue_classes_accepts_a_clean_cell() {
    let output = queue_classes_against("200 OK", "qc-200");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let rows: Vec<&str> = stdout.lines().filter(|l| l.contains("| `")).collect();
    assert_eq!(rows.len(), 2, "two variants: {}", describe(&output));
    for line in rows {
        assert!(!line.contains("INVALID"), "{line}");
        // ok req/s per round, then the median: figures, not n/a.
        let median: f64 = line.split('|').nth(4).unwrap().trim().parse().unwrap();
        assert!(median > 0.0, "{line}");
    }
}

/// The keep-alive row of bench/http_peers.sh's table for GET `path`, once the script has
/// exited with `exit`.
fn http_peers_row(path: &str, name: &str, port_base: u16, exit: i32) -> String {
    let output = http_peers_on(path, name, port_base);
    assert_eq!(output.status.code(), Some(exit), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    row(&stdout, "keep-alive, 8 conns")
        .unwrap_or_else(|| panic!("no table row: {}", describe(&output)))
        .to_string()
}

#[test]
fn http_peers_refuses_a_cell_with_non_2xx_answers() {
    let cell = http_peers_row("/no-such-route", "hp-404", 18_580, 2);
    assert!(
        cell.contains("INVALID (round 1: 1000 non-2xx)"),
        "the cell must say it is invalid and why: {cell}"
    );
}

#[test]
fn http_peers_accepts_a_clean_cell() {
    let cell = http_peers_row("/health", "hp-200", 18_590, 0);
    assert_eq!(cell, "| keep-alive, 8 conns | 1000 | 0.80 ms |");
}

/// bench/auth.sh, section 1, one round of 1 s, against the tiny server (through URL: no
/// PostgreSQL, no coinbit) answering 503: the logged-in cells cannot log in (loadgen leaves no
/// report) and the open cell is answered 503; every cell and ratio must read invalid and the
/// script exit 2.
#[test]
fn auth_refuses_cells_it_could_not_measure() {
    let port = tiny_server("503 Service Unavailable");
    let output = Command::new(Path::new(ROOT).join("bench/auth.sh"))
        .env("URL", format!("http://127.0.0.1:{port}"))
        .env("LOADGEN", loadgen())
        .env("SECTIONS", "1")
        .env("ROUNDS", "1")
        .env("DURATION", "1s")
        .env("USERS", "1")
        .env("CLIENT_CPU", "0")
        .output()
        .expect("bench/auth.sh runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    for (cell, why) in [
        ("session", "no result"),
        ("signed", "no result"),
        ("open", "HTTP 503"),
    ] {
        let line = row(&stdout, &format!("1 | {cell}"))
            .unwrap_or_else(|| panic!("no {cell} row: {}", describe(&output)));
        assert!(line.contains("INVALID (") && line.contains(why), "{line}");
        let summary = row(&stdout, cell).unwrap_or_else(|| panic!("no {cell} summary"));
        if cell != "open" {
            assert!(summary.contains("| invalid |"), "{summary}");
        }
    }
}

/// bench/idle_connections.sh end to end on both engines with 50 connections (the test's own
/// coinbit binary): one row per server with a figure per connection, and N checked first.
#[test]
fn idle_connections_reports_memory_per_connection_and_checks_its_argument() {
    let script = Path::new(ROOT).join("bench/idle_connections.sh");
    let refused = Command::new(&script)
        .arg("lots")
        .output()
        .expect("the script runs");
    assert_eq!(refused.status.code(), Some(1), "{}", describe(&refused));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("positive number"));
    let dir = temp_dir("idle-connections");
    let output = Command::new(&script)
        .arg("50")
        .env("COINBIT", env!("CARGO_BIN_EXE_coinbit"))
        .env("SERVERS", "coinbit-glommio coinbit-may")
        .env("OUT_DIR", &dir)
        .env("SETTLE_S", "0.3")
        .env("PORT", "18670")
        .output()
        .expect("the script runs");
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    for server in ["coinbit-glommio", "coinbit-may"] {
        let line = row(&stdout, server).unwrap_or_else(|| panic!("no {server} row: {stdout}"));
        let per_connection: f64 = line.split('|').nth(4).unwrap().trim().parse().unwrap();
        assert!(per_connection.is_finite(), "{line}");
    }
}

/// bench/trading_fanout.sh end to end with the test's own coinbit and exchange-sim (debug
/// builds), 3 subscribers and one round on a PostgreSQL cluster of its own: a row for the open
/// and one for the close, every order found on the simulator, exit 0; and SUBSCRIBERS checked
/// before anything starts.
#[test]
fn trading_fanout_measures_a_small_fan_out_and_checks_its_arguments() {
    let script = Path::new(ROOT).join("bench/trading_fanout.sh");
    let refused = Command::new(&script)
        .env("SUBSCRIBERS", "1000 none")
        .output()
        .expect("the script runs");
    assert_eq!(refused.status.code(), Some(1), "{}", describe(&refused));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("1 to 100000, got 'none'"));
    let pg_port = common::free_ports(2);
    let port = common::free_ports(2);
    let output = Command::new(&script)
        .env("BUILD", "0")
        .env("COINBIT", env!("CARGO_BIN_EXE_coinbit"))
        .env("EXCHANGE_SIM", env!("CARGO_BIN_EXE_exchange-sim"))
        .env("SUBSCRIBERS", "3")
        .env("ROUNDS", "1")
        .env("SPACING_MS", "0")
        .env("SETTLE_S", "60")
        .env("PORT", port.to_string())
        .env("SIM_PORT", (port + 1).to_string())
        .env("PG_PORT", pg_port.to_string())
        .env_remove("PG_DIR")
        .output()
        .expect("the script runs");
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    for kind in ["1 opens", "1 closes"] {
        let line = row(&stdout, &format!("3 | {kind}"))
            .unwrap_or_else(|| panic!("no {kind} row: {}", describe(&output)));
        let placed: f64 = line.split('|').nth(5).unwrap().trim().parse().unwrap();
        assert!(placed > 0.0 && placed < 60.0, "{line}");
    }
    // The goals' row: a verdict in each of its three cells.
    let goals = stdout
        .lines()
        .find(|line| line.starts_with("| 3 | met") || line.starts_with("| 3 | missed"))
        .unwrap_or_else(|| panic!("no goals row: {stdout}"));
    assert_eq!(
        goals.matches(" met (").count() + goals.matches(" missed (").count(),
        3,
        "{goals}"
    );
}
