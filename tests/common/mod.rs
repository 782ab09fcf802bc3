//! Test harness: starts the real `coinbit` binary on an ephemeral port and talks to it over
//! real sockets.
#![allow(dead_code, unused_macros)]

pub mod exchange;
pub mod ledger;
pub mod money;
pub mod pg;
pub mod trading;
pub mod users;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rstest_reuse::template;

/// The engines a test runs on, each as a test case of its own named after it
/// (`name::case_1_glommio`, `name::case_2_may`): a test written once with
/// `#[apply(engines)]` and an `#[case] engine: &str` parameter runs on both, and a failure
/// names its engine.
#[template]
#[rstest]
#[case::glommio("glommio")]
#[case::may("may")]
pub fn engines(#[case] engine: &str) {}

/// The operator token every test server gets (`OPERATOR_TOKEN`, see [`Server::command`]).
pub const OPERATOR_TOKEN: &str = "test-operator-token-0123456789abcdef";
/// The header that shows it, for [`Client::request`]'s headers.
pub const OPERATOR: (&str, &str) = (
    "Authorization",
    "Bearer test-operator-token-0123456789abcdef",
);
/// The same as a header line, for requests written by hand.
pub const OPERATOR_LINE: &str = "Authorization: Bearer test-operator-token-0123456789abcdef\r\n";

pub fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_coinbit"));
    // Tests set what they need: nothing leaks in from the caller's environment but these.
    command.env_clear();
    for name in ["PATH", "HOME", "RUST_BACKTRACE", "LD_LIBRARY_PATH"] {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command
}

/// The loadgen binary of this build, beside the test's own folder (target/debug/loadgen).
pub fn loadgen_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("loadgen");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p loadgen` (`cargo test --workspace` does)",
        path.display()
    );
    path
}

/// A loadgen run's JSON summary (`--json`).
pub struct LoadgenSummary(pub serde_json::Value);

impl LoadgenSummary {
    /// Runs loadgen's `scenario` for 3 s with `users` closed-loop virtual users on one thread
    /// against `server`, with `extra` arguments; panics unless it exited 0 with no error.
    pub fn run(scenario: &str, users: u64, extra: &[&str], server: &Server) -> LoadgenSummary {
        let out = Command::new(loadgen_binary())
            .args(["-s", scenario, "-u", &users.to_string(), "-t", "1"])
            .args(["-d", "3s", "--progress", "never", "--json"])
            .args(extra)
            .arg(format!("http://{}", server.addr))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let summary: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
        assert_eq!(summary["scenario"], scenario);
        assert_eq!(summary["overall"]["errors"], 0, "{}", summary["overall"]);
        LoadgenSummary(summary)
    }

    /// The figures of the endpoint named `name`.
    pub fn endpoint(&self, name: &str) -> serde_json::Value {
        self.0["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {}", self.0["endpoints"]))
            .clone()
    }

    /// How many of `name`'s requests got an expected status.
    pub fn ok(&self, name: &str) -> i64 {
        self.endpoint(name)["ok"].as_i64().unwrap()
    }
}

/// A running server process, killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    stderr: mpsc::Receiver<String>,
}

impl Server {
    /// Starts the server with a fast snapshot interval on 127.0.0.1:0 plus `args`.
    pub fn start(engine: &str, args: &[&str]) -> Server {
        Server::start_with(engine, args, &[])
    }

    pub fn start_with(engine: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut command = Server::command(&["--engine", engine]);
        command.args(args).envs(env.iter().copied());
        Server::spawn(command)
    }

    /// The server's command on 127.0.0.1:0 with a fast snapshot interval and the test
    /// operator token ([`OPERATOR_TOKEN`]), plus `args`, for tests that adjust it further
    /// before [`Server::spawn`].
    pub fn command(args: &[&str]) -> Command {
        let mut command = binary();
        command
            .args([
                "--bind-address",
                "127.0.0.1",
                "--port",
                "0",
                "--snapshot-interval",
                "100",
            ])
            .args(args)
            .env("RUST_LOG", "info")
            .env("OPERATOR_TOKEN", OPERATOR_TOKEN)
            // The background sweeps (idempotency purge, coupon credit, affiliate shares and
            // dashboards) write on the primary at times no test chooses, which tests that count
            // the primary's requests would read as their own; a test of a sweep sets its
            // interval (a flag wins over these).
            .env("IDEMPOTENCY_PURGE_INTERVAL", "0")
            .env("MONEY_SWEEP_INTERVAL", "0")
            .env("AFFILIATE_SWEEP_INTERVAL", "0")
            .env("AFFILIATE_DASHBOARD_INTERVAL", "0");
        command
    }

    /// Starts `command` and waits for the address it listens on.
    pub fn spawn(mut command: Command) -> Server {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn coinbit");
        let stdout = child.stdout.take().unwrap();
        let (addr_tx, addr_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("coinbit listening on http://") {
                    let _ = addr_tx.send(addr.parse::<SocketAddr>().unwrap());
                }
            }
        });
        let stderr = child.stderr.take().unwrap();
        let (err_tx, err_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[server] {line}");
                let _ = err_tx.send(line);
            }
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!(
                    "server did not start; stderr: {:?}",
                    err_rx.try_iter().collect::<Vec<_>>()
                )
            });
        Server {
            child,
            addr,
            stderr: err_rx,
        }
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// One request on a fresh connection.
    pub fn get(&self, path: &str) -> Response {
        self.connect().request("GET", path, &[], b"")
    }

    /// One request on a fresh connection, as the operator (operator routes: jobs, debug).
    pub fn operator_get(&self, path: &str) -> Response {
        self.connect().request("GET", path, &[OPERATOR], b"")
    }

    /// The cluster status, parsed.
    pub fn cluster_status(&self) -> serde_json::Value {
        self.get("/api/enterprise/cluster/status").json()
    }

    /// Polls `check` on the cluster status until it holds. A connection lost on the way counts
    /// as "not yet" (a shard that is restarting resets what its old listener had queued).
    pub fn wait_for_status(
        &self,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        self.wait_for_status_within(what, Duration::from_secs(15), check)
    }

    /// [`Server::wait_for_status`] with a limit of its own.
    pub fn wait_for_status_within(
        &self,
        what: &str,
        limit: Duration,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_for(what, limit, || {
            let response =
                self.connect()
                    .try_request("GET", "/api/enterprise/cluster/status", &[], b"")?;
            let status = response.json();
            check(&status).then_some(status)
        })
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        wait_for("the server to exit", limit, || {
            self.child.try_wait().unwrap()
        })
    }

    /// Runs a burst of `clients` threads, each on one connection of its own sending
    /// `request(connection, client, i)` for `i` up to `per_client`, which answers what it sent
    /// and whether the connection was cut (the client's last). Sends the server SIGKILL once
    /// `answered` (which the requests count up) reaches `before_kill` (bounded: 2 min), waits
    /// for it to exit, and returns what was sent, in client order, once every client has ended.
    pub fn kill_9_during<T: Send>(
        &mut self,
        clients: usize,
        per_client: usize,
        answered: &std::sync::atomic::AtomicUsize,
        before_kill: usize,
        request: impl Fn(&mut Client, usize, usize) -> (T, bool) + Sync,
    ) -> Vec<T> {
        let addr = self.addr;
        let done = std::thread::scope(|scope| {
            let request = &request;
            let one_client = move |c: usize| {
                let mut connection = Client::connect(addr);
                let mut sent = Vec::new();
                for i in 0..per_client {
                    let (what, cut) = request(&mut connection, c, i);
                    sent.push(what);
                    if cut {
                        break;
                    }
                }
                sent
            };
            let handles: Vec<_> = (0..clients)
                .map(|c| scope.spawn(move || one_client(c)))
                .collect();
            wait_for("answers before the kill", Duration::from_secs(120), || {
                (answered.load(std::sync::atomic::Ordering::Relaxed) >= before_kill).then_some(())
            });
            self.signal(libc::SIGKILL);
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        self.wait_exit(Duration::from_secs(10));
        done
    }

    /// Server log lines so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.stderr.try_iter().collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `probe` every 20 ms until it returns `Some`, or panics after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, probe: impl FnMut() -> Option<T>) -> T {
    try_wait_for(limit, probe).unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

/// Polls `probe` every 20 ms until it returns `Some`; `None` after `limit`.
pub fn try_wait_for<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The `error.code` of a JSON error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// A blocking HTTP/1.1 client over one connection.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        // Bounds a request that never gets an answer. Registration and login hash on threads
        // that yield to the shards (nice 10): on a host where many busy threads share the two
        // CPUs they took over 10 s, answered, but late.
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.try_request(method, path, headers, body)
            .unwrap_or_else(|| {
                let timeout = self.stream.read_timeout().ok().flatten();
                panic!("{method} {path}: the connection closed, or no answer within {timeout:?}")
            })
    }

    /// Like `request`, but `None` when the connection fails or closes first.
    pub fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Option<Response> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        self.stream.write_all(head.as_bytes()).ok()?;
        self.stream.write_all(body).ok()?;
        self.try_read_response(method == "HEAD")
    }

    /// Reads one response; `head_only` for answers to HEAD (no body follows).
    pub fn read_response(&mut self, head_only: bool) -> Response {
        self.try_read_response(head_only)
            .expect("connection closed before a response")
    }

    /// `None` when the server closed the connection before a complete response.
    pub fn try_read_response(&mut self, head_only: bool) -> Option<Response> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(head_len)) = parsed.parse(&self.buf) {
                let status = parsed.code.unwrap();
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let length = if head_only || status == 100 {
                    0
                } else {
                    headers
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                        .map(|(_, v)| v.parse::<usize>().unwrap())
                        .unwrap_or(0)
                };
                if self.buf.len() >= head_len + length {
                    let body = self.buf[head_len..head_len + length].to_vec();
                    self.buf.drain(..head_len + length);
                    return Some(Response {
                        status,
                        headers,
                        body,
                    });
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// True once the server has closed the connection within `limit` (EOF or reset); false
    /// if it is still open (the read timed out) or sent bytes.
    pub fn is_closed_by_server(&mut self, limit: Duration) -> bool {
        self.stream.set_read_timeout(Some(limit)).unwrap();
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }
}

/// `count` consecutive ports from 20000..32000 that nothing listens on now (a base from the
/// clock; tests/common/pg.rs picks its clusters' ports in the same range the same way).
pub fn free_ports(count: u16) -> u16 {
    for attempt in 0..64u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let base =
            20_000 + ((nanos ^ std::process::id() ^ attempt.wrapping_mul(7919)) % 12_000) as u16;
        if (base..base + count).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
    panic!("no {count} free consecutive ports in 20000..32000");
}

/// The processes whose parent is `parent`, from /proc.
pub fn children_of(parent: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // The fields after the command's closing parenthesis: state, then the parent.
            let after = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
            after.split_whitespace().nth(1) == Some(&parent.to_string())
        })
        .collect()
}
