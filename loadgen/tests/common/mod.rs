//! A tiny HTTP/1.1 server on std::net threads for the loopback tests, with knobs for delays,
//! stalls, bad statuses, resets, hangs and server-side closes. It counts what it received.

#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct State {
    pub requests: AtomicU64,
    pub stall_until: Mutex<Option<Instant>>,
    pub peers: Mutex<HashSet<IpAddr>>,
    pub bodies: Mutex<Vec<String>>,
    pub paths: Mutex<Vec<String>>,
    /// Close the connection after every Nth response on it.
    pub close_every: Option<u64>,
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub state: Arc<State>,
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::with_state(State::default())
    }

    pub fn with_state(state: State) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(state);
        let st = state.clone();
        thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let st = st.clone();
                thread::spawn(move || handle(s, &st));
            }
        });
        TestServer { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// After `after`, every response waits until `len` has passed.
    pub fn stall(&self, after: Duration, len: Duration) {
        let st = self.state.clone();
        thread::spawn(move || {
            thread::sleep(after);
            *st.stall_until.lock().unwrap() = Some(Instant::now() + len);
        });
    }
}

/// Parses one request from `buf`: (path, body, bytes used).
fn parse_request(buf: &[u8]) -> Option<(String, String, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let path = head.split_whitespace().nth(1)?.to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    if buf.len() < end + len {
        return None;
    }
    let body = String::from_utf8_lossy(&buf[end..end + len]).into_owned();
    Some((path, body, end + len))
}

fn handle(mut s: TcpStream, st: &State) {
    let _ = s.set_nodelay(true);
    if let Ok(p) = s.peer_addr() {
        st.peers.lock().unwrap().insert(p.ip());
    }
    let mut buf = Vec::new();
    let mut tmp = [0u8; 16384];
    let mut served = 0u64;
    loop {
        while let Some((path, body, used)) = parse_request(&buf) {
            buf.drain(..used);
            st.requests.fetch_add(1, Ordering::SeqCst);
            if !body.is_empty() {
                st.bodies.lock().unwrap().push(body);
            }
            st.paths.lock().unwrap().push(path.clone());
            loop {
                let until = *st.stall_until.lock().unwrap();
                match until {
                    Some(u) if Instant::now() < u => thread::sleep(u - Instant::now()),
                    _ => break,
                }
            }
            let status = match path.as_str() {
                "/slow" => {
                    thread::sleep(Duration::from_millis(20));
                    "200 OK"
                }
                "/missing" => "404 Not Found",
                "/reset" => return,
                "/hang" => {
                    thread::sleep(Duration::from_secs(5));
                    return;
                }
                _ => "200 OK",
            };
            served += 1;
            let close = st.close_every.is_some_and(|n| served % n == 0);
            let conn = if close { "Connection: close\r\n" } else { "" };
            let resp = format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\n{conn}\r\nok");
            if s.write_all(resp.as_bytes()).is_err() {
                return;
            }
            if close {
                // Lingering close, as real servers do: closing with unread pipelined requests
                // would send a reset that can destroy the last response in flight.
                let _ = s.shutdown(std::net::Shutdown::Write);
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                while matches!(s.read(&mut tmp), Ok(n) if n > 0) {}
                return;
            }
        }
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

/// Runs loadgen in-process with these arguments (progress off).
pub fn run(args: &[&str]) -> loadgen::Outcome {
    let mut v = vec!["loadgen", "--progress", "never"];
    v.extend_from_slice(args);
    let cfg = <loadgen::Args as clap::Parser>::try_parse_from(v)
        .expect("args")
        .into_config()
        .expect("config");
    loadgen::run(&cfg, &std::sync::atomic::AtomicBool::new(false)).expect("run")
}

/// Runs the loadgen binary; returns (exit code, stdout, stderr).
pub fn run_bin(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--progress", "never"])
        .args(args)
        .output()
        .expect("run loadgen binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("loadgen-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes `contents` to `file` in a fresh temp dir for `name`; returns the file's path.
pub fn scenario_file(name: &str, file: &str, contents: &str) -> std::path::PathBuf {
    let path = temp_dir(name).join(file);
    std::fs::write(&path, contents).unwrap();
    path
}

/// Runs loadgen in-process with `args`, then `-s scenario` and the server's base URL.
pub fn run_scenario(
    srv: &TestServer,
    scenario: &std::path::Path,
    args: &[&str],
) -> loadgen::Outcome {
    let base = srv.base();
    let mut v = args.to_vec();
    v.extend(["-s", scenario.to_str().unwrap(), &base]);
    run(&v)
}

/// The summary of the endpoint called `name`; panics if the run has none.
pub fn endpoint(out: &loadgen::Outcome, name: &str) -> loadgen::report::EndpointSummary {
    out.summary
        .endpoints
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("no endpoint {name}"))
        .clone()
}
