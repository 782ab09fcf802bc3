//! The monitor on the real binary: alerts fired by real load (thresholds set low on purpose),
//! cooldown, resolution, the webhook (a receiver in the test), trends, the health score,
//! recovery actions, a stalled shard replaced, and auto-scaling under idle and load.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rstest::rstest;
use rstest_reuse::{self, apply};

use common::{engines, wait_for, Client, Server};
use serde_json::Value;

/// The monitor's own tests run once, on the engine `auto` picks (may, `engine::AUTO_PREFERS`);
/// those that exercise an engine's duties (refusal, replacement, scaling) run on each engine.
const ENGINE: &str = "auto";

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
/// Generous: the host is shared with builds, and alerts need a few samples.
const PATIENCE: Duration = Duration::from_secs(30);
/// Delay between the starts of a load's clients.
const STAGGER: Duration = Duration::from_millis(70);

/// GET on a fresh connection, `None` when the connection fails (a shard restarting).
fn try_get(server: &Server, path: &str) -> Option<common::Response> {
    Client::connect(server.addr).try_request("GET", path, &[], b"")
}

/// Whether a server log line so far contains `text`.
fn logged(server: &Server, text: &str) -> bool {
    server.log_lines().iter().any(|l| l.contains(text))
}

fn alerts(server: &Server) -> Option<Value> {
    try_get(server, "/api/enterprise/alerts").map(|r| r.json())
}

/// The alert with this id among the active (or, with `recent`, the resolved) ones.
fn find(body: &Value, list: &str, id: &str) -> Option<Value> {
    body[list]
        .as_array()?
        .iter()
        .find(|a| a["id"] == id)
        .cloned()
}

fn wait_alert(server: &Server, what: &str, check: impl Fn(&Value) -> Option<Value>) -> Value {
    wait_for(what, PATIENCE, || {
        alerts(server).and_then(|body| check(&body))
    })
}

/// Clients that repeat a request until stopped, counting answers and failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// `clients` threads on keep-alive connections, each `GET path` every `pause`; a client
    /// opens a new connection every `per_connection` requests and whenever the server says
    /// `Connection: close`. A failure is a request without a response or a status other than
    /// `expect`.
    fn start(
        addr: SocketAddr,
        clients: usize,
        path: &str,
        pause: Duration,
        per_connection: u64,
        expect: u16,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|i| {
                let (stop, ok, failed, path) =
                    (stop.clone(), ok.clone(), failed.clone(), path.to_string());
                std::thread::spawn(move || {
                    // Staggered starts: slow requests then complete spread over time, not in step.
                    std::thread::sleep(STAGGER * i as u32);
                    let mut client = Client::connect(addr);
                    let mut on_this = 0;
                    while !stop.load(Ordering::Relaxed) {
                        on_this += 1;
                        let last = on_this >= per_connection;
                        let headers: &[(&str, &str)] = if last {
                            &[("Connection", "close"), common::OPERATOR]
                        } else {
                            &[common::OPERATOR]
                        };
                        match client.try_request("GET", &path, headers, b"") {
                            Some(r) if r.status == expect => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                let closing = r
                                    .header("connection")
                                    .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                                if closing || last {
                                    client = Client::connect(addr);
                                    on_this = 0;
                                }
                            }
                            other => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                eprintln!("load: request failed: {other:?}");
                                client = Client::connect(addr);
                                on_this = 0;
                            }
                        }
                        if !pause.is_zero() {
                            std::thread::sleep(pause);
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            threads,
        }
    }

    /// Stops the clients; returns (answered, failed).
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.threads) {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// A test that fails stops its clients too (they would report the server's end as failures).
impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A webhook receiver: answers the first `fail_first` POSTs with 503, then 200, and hands each
/// body it accepted to the test.
fn webhook_receiver(fail_first: usize) -> (String, mpsc::Receiver<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks/coinbit", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = 0;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            assert!(
                request_line.starts_with("POST /hooks/coinbit "),
                "{request_line}"
            );
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap();
                    }
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            seen += 1;
            let status = if seen <= fail_first {
                "503 Service Unavailable"
            } else {
                "200 OK"
            };
            let _ = stream.write_all(
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
            if seen > fail_first {
                let _ = tx.send(serde_json::from_slice(&body).unwrap());
            }
        }
    });
    (url, rx)
}

#[test]
fn a_slow_route_fires_the_response_time_alert_once_per_cooldown_and_the_webhook_gets_it() {
    let (url, hooks) = webhook_receiver(1);
    let server = Server::start(
        ENGINE,
        &[
            "--debug-routes",
            "--metrics-interval",
            "250",
            "--response-time-warning",
            "150",
            "--response-time-critical",
            "60000",
            "--alert-cooldown",
            "600000",
            "--webhook-url",
            &url,
        ],
    );
    let id = "response_time/warning";
    // Slow requests: the interval's p99 goes to ~300 ms, over the 150 ms warning.
    let slow = Load::start(
        server.addr,
        4,
        "/debug/sleep?ms=300",
        Duration::ZERO,
        1000,
        200,
    );
    let fired = wait_alert(&server, "the response-time alert", |b| {
        find(b, "active", id)
    });
    assert_eq!(fired["state"], "firing");
    assert_eq!(fired["severity"], "warning");
    assert!(fired["value"].as_f64().unwrap() >= 150.0, "{fired}");
    assert_eq!(fired["threshold"], 150.0);
    assert!(fired["first_seen_ms"].as_u64().unwrap() <= fired["last_seen_ms"].as_u64().unwrap());
    assert_eq!(fired["notifications"], 1);

    // The receiver refused the first POST: the webhook retried, and this is the firing.
    let hook = hooks.recv_timeout(PATIENCE).expect("the webhook POST");
    assert_eq!(hook["version"], "4");
    assert_eq!(hook["status"], "firing");
    let alert = &hook["alerts"][0];
    assert_eq!(alert["labels"]["alertname"], "response_time");
    assert_eq!(alert["labels"]["severity"], "warning");
    assert!(alert["startsAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(alert["endsAt"], "0001-01-01T00:00:00Z");

    // Resolution: the slow requests stop, the alert clears, the webhook says so.
    let (answered, failed) = slow.finish();
    assert!(
        answered > 0 && failed == 0,
        "{answered} answered, {failed} failed"
    );
    let resolved = wait_alert(&server, "the alert to resolve", |b| {
        find(b, "active", id)
            .is_none()
            .then(|| find(b, "recent", id))
            .flatten()
    });
    assert_eq!(resolved["state"], "resolved");
    assert!(resolved["resolved_ms"].as_u64().is_some());
    let hook = hooks.recv_timeout(PATIENCE).expect("the resolved POST");
    assert_eq!(hook["status"], "resolved");
    assert_ne!(hook["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");

    // It fires again within the cooldown: shown, but not sent again.
    let slow = Load::start(
        server.addr,
        4,
        "/debug/sleep?ms=300",
        Duration::ZERO,
        1000,
        200,
    );
    // (A value near the line may resolve and fire more than once: each is held back.)
    let again = wait_alert(&server, "the alert to fire again", |b| {
        find(b, "active", id).filter(|a| a["held_back"].as_u64() >= Some(1))
    });
    assert_eq!(again["notifications"], 1, "{again}");
    slow.finish();
    assert!(
        hooks.recv_timeout(Duration::from_secs(2)).is_err(),
        "the repeat within the cooldown must not be posted"
    );
    let body = alerts(&server).unwrap();
    assert_eq!(body["webhook"]["delivered"], 2, "{}", body["webhook"]);
    assert!(body["webhook"]["retries"].as_u64().unwrap() >= 1);
    assert!(logged(&server, "alert response_time/warning firing"));
}

#[test]
fn the_health_score_moves_and_health_turns_warn_then_fail() {
    let server = Server::start(
        ENGINE,
        &[
            "--debug-routes",
            "--metrics-interval",
            "250",
            "--response-time-warning",
            "150",
            "--response-time-critical",
            "700",
        ],
    );
    let health = |server: &Server| try_get(server, "/health").map(|r| (r.status, r.json()));
    let (status, body) = health(&server).unwrap();
    assert_eq!((status, body["status"].as_str()), (200, Some("pass")));
    assert_eq!(body["grade"], "excellent");

    // A warning (300 ms against 150/700): degraded, warn, still 200.
    let slow = Load::start(
        server.addr,
        4,
        "/debug/sleep?ms=300",
        Duration::ZERO,
        1000,
        200,
    );
    let (status, body) = wait_for("health warn", PATIENCE, || {
        health(&server).filter(|(_, b)| b["status"] == "warn")
    });
    slow.finish();
    assert_eq!(status, 200);
    assert_eq!(body["grade"], "degraded");
    let score = body["health_score"].as_u64().unwrap();
    assert!((45..75).contains(&score), "{score}");

    // A critical (1 s against 700 ms): critical, fail, 503; /readyz still 200: readiness is
    // about the process, not its health grade.
    let slower = Load::start(
        server.addr,
        6,
        "/debug/sleep?ms=1000",
        Duration::ZERO,
        1000,
        200,
    );
    let (status, body) = wait_for("health fail", PATIENCE, || {
        health(&server).filter(|(_, b)| b["status"] == "fail")
    });
    let readyz = try_get(&server, "/readyz").unwrap().status;
    slower.finish();
    assert_eq!(status, 503);
    assert_eq!(body["grade"], "critical");
    assert!(body["health_score"].as_u64().unwrap() < 45);
    assert_eq!(readyz, 200);

    // Fast requests again: back to pass.
    wait_for("health pass again", PATIENCE, || {
        health(&server).filter(|(_, b)| b["status"] == "pass")
    });
    let prometheus = try_get(&server, "/metrics").unwrap().text();
    assert!(prometheus.contains("coinbit_health_score "), "{prometheus}");
}

#[test]
fn cpu_load_fires_the_cpu_critical_which_sheds_low_priority_work_until_it_clears() {
    let server = Server::start(
        ENGINE,
        &[
            "--shards",
            "1",
            "--min-workers",
            "1",
            "--max-workers",
            "1",
            "--metrics-interval",
            "500",
            "--cpu-warning",
            "10",
            "--cpu-critical",
            "20",
        ],
    );
    let load = Load::start(server.addr, 3, "/livez", Duration::ZERO, 100_000, 200);
    let body = wait_alert(&server, "the CPU critical alert", |b| {
        find(b, "active", "cpu_usage/critical").map(|_| b.clone())
    });
    let critical = find(&body, "active", "cpu_usage/critical").unwrap();
    assert_eq!(critical["state"], "firing");
    assert_eq!(critical["action"], "shed_low_priority");
    assert!(critical["value"].as_f64().unwrap() >= 18.0, "{critical}");
    // Its own warning (the same sample passes both levels) is inhibited while it fires.
    let warning = find(&body, "active", "cpu_usage/warning").expect("the CPU warning");
    assert_eq!(warning["state"], "inhibited", "{body}");
    let shed = &body["actions"][0];
    assert_eq!(
        (shed["name"].as_str(), shed["active"].as_bool()),
        (Some("shed_low_priority"), Some(true))
    );
    assert!(shed["taken"].as_u64().unwrap() >= 1);
    let prometheus = try_get(&server, "/metrics").unwrap().text();
    assert!(prometheus.contains("coinbit_recovery_action_active{action=\"shed_low_priority\"} 1"));
    assert!(
        prometheus.contains("coinbit_alerts_firing{severity=\"critical\"} 1"),
        "{prometheus}"
    );

    let (answered, failed) = load.finish();
    assert!(
        answered > 1000 && failed == 0,
        "{answered} answered, {failed} failed"
    );
    // Idle: the alert resolves and the action is undone.
    let body = wait_alert(&server, "the CPU alert to clear", |b| {
        (b["actions"][0]["active"] == false && find(b, "active", "cpu_usage/critical").is_none())
            .then(|| b.clone())
    });
    assert_eq!(
        find(&body, "recent", "cpu_usage/critical").unwrap()["state"],
        "resolved"
    );
    assert!(logged(&server, "shed_low_priority on"));
}

#[apply(engines)]
fn critical_memory_answers_new_connections_with_503_and_retry_after(#[case] engine: &str) {
    // Levels of 0 %: memory is critical from the first sample.
    let server = Server::start(
        engine,
        &[
            "--metrics-interval",
            "1000",
            "--memory-warning",
            "0",
            "--memory-critical",
            "0",
        ],
    );
    // A connection opened before the first sample keeps working.
    let mut kept = server.connect();
    assert_eq!(kept.request("GET", "/livez", &[], b"").status, 200);
    let refused = wait_for("a refused connection", PATIENCE, || {
        try_get(&server, "/livez").filter(|r| r.status == 503)
    });
    assert_eq!(refused.error_code(), "overloaded");
    assert_eq!(refused.header("retry-after"), Some("5"));
    // The refusal starts within the monitor's round, just before the round is published.
    let (body, critical) = wait_for("the memory alert published", PATIENCE, || {
        let body = kept
            .request("GET", "/api/enterprise/alerts", &[], b"")
            .json();
        find(&body, "active", "memory_usage/critical").map(|c| (body, c))
    });
    assert_eq!(critical["action"], "refuse_new_connections");
    assert_eq!(body["actions"][1]["active"], true);
    let health = kept.request("GET", "/health", &[], b"");
    assert_eq!(health.status, 503, "{}", health.text());
    wait_for("the refusal counted", PATIENCE, || {
        let metrics = kept
            .request("GET", "/api/enterprise/metrics", &[], b"")
            .json();
        (metrics["merged"]["connections"]["rejected_overload_total"].as_u64() >= Some(1))
            .then_some(())
    });
}

#[test]
fn a_trend_alert_fires_before_the_threshold_is_reached() {
    let server = Server::start(
        ENGINE,
        &[
            "--metrics-interval",
            "200",
            "--concurrent-users-warning",
            "60",
            "--concurrent-users-critical",
            "400",
            "--trend-window",
            "2000",
            "--trend-horizon",
            "600000",
        ],
    );
    // Users arrive steadily (open connections), staying below the 60 warning.
    let mut users = Vec::new();
    let trend = wait_for("the trend alert", PATIENCE, || {
        if users.len() < 55 {
            users.push(server.connect());
        }
        std::thread::sleep(Duration::from_millis(40));
        alerts(&server).and_then(|b| find(&b, "active", "concurrent_users_trend/warning"))
    });
    assert_eq!(trend["severity"], "warning");
    assert!(trend["value"].as_f64().unwrap() < 60.0, "{trend}");
    assert!(trend["eta_seconds"].as_f64().unwrap() > 0.0);
    assert!(
        trend["message"]
            .as_str()
            .unwrap()
            .contains("reaches 400 users in ~"),
        "{trend}"
    );
    let body = alerts(&server).unwrap();
    assert!(
        find(&body, "active", "concurrent_users/warning").is_none(),
        "{body}"
    );
    assert!(find(&body, "active", "concurrent_users/critical").is_none());
}

#[apply(engines)]
fn a_stalled_shard_is_replaced_and_the_others_keep_serving(#[case] engine: &str) {
    let server = Server::start(
        engine,
        &[
            "--debug-routes",
            "--shards",
            "2",
            "--metrics-interval",
            "200",
            // Twice the stall detection's need: on a loaded host a healthy shard can be
            // starved for a second, and its replacement would be a second restart.
            "--heartbeat-timeout",
            "2000",
        ],
    );
    let mut victim = server.connect();
    let shard = victim
        .request("GET", "/debug/shard", &[common::OPERATOR], b"")
        .json()["shard"]
        .as_u64()
        .unwrap();
    // Blocks that shard's thread for 6 s; the answer is not awaited.
    victim
        .send(b"POST /debug/stall-shard?ms=6000 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer test-operator-token-0123456789abcdef\r\nContent-Length: 0\r\n\r\n");
    let stalled_at = Instant::now();
    let stalled_at_ms = unix_ms();
    let id = shard as usize;
    let status = wait_for("the stalled shard to be replaced", PATIENCE, || {
        quick_get(&server, "/api/enterprise/cluster/status").filter(|s| {
            let sh = &s["shards"][id];
            sh["restarts"] == 1 && sh["generation"] == 2 && sh["state"] == "running"
        })
    });
    assert_eq!(status["shards"][1 - id]["restarts"], 0);
    // Looked at first, while the stall lasts; the alert and the action are read afterwards.
    // Both shards serve, the replacement already while its predecessor is stuck (on may,
    // it runs on another of the shard's workers): a request that reached a shard unable to serve
    // would be answered only after the stall.
    let mut by_shard = [0u32; 2];
    let mut replacement_served_during_stall = false;
    let mut answers = 0;
    let probing_from = stalled_at.elapsed();
    // Short reads again, so that one connection the kernel queued on the stalled
    // generation's listener does not hold the loop until the stall is over.
    while answers < 40 && stalled_at.elapsed() < Duration::from_secs(12) {
        let Some(body) = quick_get(&server, "/debug/shard") else {
            continue;
        };
        answers += 1;
        let answered_by = body["shard"].as_u64().unwrap() as usize;
        by_shard[answered_by] += 1;
        replacement_served_during_stall |=
            answered_by == id && stalled_at.elapsed() < Duration::from_secs(6);
    }
    assert!(
        by_shard.iter().all(|&n| n > 0),
        "answers by shard: {by_shard:?}"
    );
    assert!(
        replacement_served_during_stall,
        "the replacement served only after the stall ({by_shard:?}; probing began \
         {probing_from:?} into the 6 s stall)"
    );
    let body = wait_alert(&server, "the heartbeat alert", |b| {
        let name = format!("shard_{id}_heartbeat/critical");
        find(b, "active", &name)
            .or_else(|| find(b, "recent", &name))
            .map(|_| b.clone())
    });
    let restart = &body["actions"][2];
    assert_eq!(
        (restart["name"].as_str(), restart["taken"].as_u64()),
        (Some("restart_shard"), Some(1)),
        "{restart}"
    );
    // Replaced while its thread was still stuck: the monitor did not wait for it. (Silence is
    // counted from the shard's last report, up to one 100 ms snapshot interval before the stall.)
    let replaced_after = restart["since_ms"].as_u64().unwrap() as i64 - stalled_at_ms as i64;
    assert!(
        (1800..6000).contains(&replaced_after),
        "replaced {replaced_after} ms into a 6000 ms stall (heartbeat timeout 2000 ms)"
    );
    // The old thread wakes up, finds itself replaced and ends: no second restart.
    std::thread::sleep(
        Duration::from_secs(6).saturating_sub(stalled_at.elapsed()) + Duration::from_millis(800),
    );
    let status = server.cluster_status();
    assert_eq!(
        (
            status["shards"][id]["restarts"].as_u64(),
            status["shards"][id]["generation"].as_u64()
        ),
        (Some(1), Some(2))
    );
    // The old generation's listener was shut under it: its accept loop ends instead of
    // logging a failed accept over and over (counted over a second more of its life).
    std::thread::sleep(Duration::from_secs(1));
    let lines = server.log_lines();
    assert!(lines
        .iter()
        .any(|l| l.contains("stopped sending heartbeats")));
    let accept_failures = lines.iter().filter(|l| l.contains("accept failed")).count();
    assert_eq!(
        accept_failures, 0,
        "{accept_failures} failed accepts logged"
    );
}

/// A GET on a fresh connection with short reads: a connection the kernel queued on a stuck
/// shard's listener gets no answer, and must not hold the caller for long.
fn quick_get(server: &Server, path: &str) -> Option<Value> {
    let mut client = Client::connect(server.addr);
    client
        .stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    client
        .try_request("GET", path, &[common::OPERATOR], b"")
        .map(|r| r.json())
}

/// A connection that shard `shard` answered (SO_REUSEPORT spreads new ones over the shards).
fn connect_to_shard(server: &Server, shard: u64) -> Client {
    wait_for(&format!("shard {shard} to answer"), PATIENCE, || {
        let mut client = Client::connect(server.addr);
        client
            .stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let body = client
            .try_request("GET", "/debug/shard", &[common::OPERATOR], b"")?
            .json();
        (body["shard"].as_u64() == Some(shard)).then_some(client)
    })
}

#[test]
fn on_may_a_replacement_serves_while_two_predecessors_are_still_stuck_on_their_workers() {
    // Long enough that /health is seen between the shard going stale (1 s without a report)
    // and its replacement.
    const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(4000);
    let server = Server::start(
        "may",
        &[
            "--debug-routes",
            "--shards",
            "2",
            "--metrics-interval",
            "200",
            "--heartbeat-timeout",
            "4000",
        ],
    );
    let shard = server.operator_get("/debug/shard").json()["shard"]
        .as_u64()
        .unwrap();
    let id = shard as usize;
    // /health is watched on a kept-alive connection to the other shard: a fresh connection
    // lands on the wedged shard about half the time and waits out its read timeout, and a few
    // of those in a row on a loaded host let the stale window pass unseen.
    let mut watcher = connect_to_shard(&server, 1 - shard);
    let began = Instant::now();
    // Open, so that nothing ends the stalls early.
    let mut stalled = Vec::new();
    for generation in 1..=2u64 {
        // Wedges the worker that serves this generation's connections for a minute.
        let mut victim = connect_to_shard(&server, shard);
        victim.send(
            b"POST /debug/stall-shard?ms=60000 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer test-operator-token-0123456789abcdef\r\nContent-Length: 0\r\n\r\n",
        );
        stalled.push(victim);
        // Its heartbeats stop: /health (from the other shard) stops passing this shard within
        // the heartbeat timeout (slack for a loaded host).
        wait_for(
            "/health to see the wedged shard",
            HEARTBEAT_TIMEOUT + Duration::from_secs(2),
            || {
                let Some(answer) = watcher.try_request("GET", "/health", &[common::OPERATOR], b"")
                else {
                    // Timed out: a late answer would be read as the next one's.
                    watcher = connect_to_shard(&server, 1 - shard);
                    return None;
                };
                let health = answer.json();
                let passing = health["checks"]["shards:heartbeat"][0]["status"] == "pass"
                    && health["checks"]["shards:running"][0]["observedValue"] == 2;
                (!passing).then_some(health)
            },
        );
        wait_for(
            &format!("generation {generation} to be replaced"),
            PATIENCE,
            || {
                quick_get(&server, "/api/enterprise/cluster/status").filter(|s| {
                    let sh = &s["shards"][id];
                    sh["restarts"] == generation
                        && sh["generation"] == generation + 1
                        && sh["state"] == "running"
                })
            },
        );
    }
    // The third generation is on a worker of its own: it answers new connections while both
    // workers before it are still stuck, and its heartbeats pass.
    connect_to_shard(&server, shard);
    wait_for("/health to pass the shard again", PATIENCE, || {
        quick_get(&server, "/health").filter(|h| {
            h["checks"]["shards:heartbeat"][0]["observedValue"] == 0
                && h["checks"]["shards:running"][0]["observedValue"] == 2
        })
    });
    assert!(
        began.elapsed() < Duration::from_secs(60),
        "the stalls ended first ({:?})",
        began.elapsed()
    );
    // It stays: not replaced again.
    let status = server.cluster_status();
    assert_eq!(
        (
            status["shards"][id]["restarts"].as_u64(),
            status["shards"][id]["generation"].as_u64()
        ),
        (Some(2), Some(3))
    );
    drop(stalled);
}

#[apply(engines)]
fn scaling_parks_a_shard_when_idle_and_wakes_it_under_load_without_failing_a_request(
    #[case] engine: &str,
) {
    let cooldown_ms = 2000;
    let server = Server::start(
        engine,
        &[
            "--shards",
            "2",
            "--min-workers",
            "1",
            "--max-workers",
            "2",
            "--metrics-interval",
            "500",
            "--scale-up-threshold",
            "15",
            "--scale-down-threshold",
            "4",
            "--scale-cooldown",
            &cooldown_ms.to_string(),
            // CPU alerts would turn /health red under load; this test is about scaling.
            "--cpu-warning",
            "100",
            "--cpu-critical",
            "100",
        ],
    );
    // A light client runs throughout: scaling must not fail one of its requests.
    let light = Load::start(server.addr, 1, "/livez", Duration::from_millis(50), 5, 200);
    let wait = |what: &str, check: &dyn Fn(&Value) -> bool| {
        wait_for(what, Duration::from_secs(60), || {
            try_get(&server, "/api/enterprise/cluster/status")
                .map(|r| r.json())
                .filter(|s| check(s))
        })
    };
    let parked = wait("scale-down when idle", &|s| {
        s["cluster"]["active_shards"] == 1 && s["shards"][1]["state"] == "parked"
    });
    assert_eq!(parked["shards"][1]["active"], false);
    let heavy = Load::start(server.addr, 3, "/livez", Duration::ZERO, 200, 200);
    let woken = wait("scale-up under load", &|s| {
        s["cluster"]["active_shards"] == 2 && s["shards"][1]["state"] == "running"
    });
    let served_before = woken["shards"][1]["requests_served"].as_u64().unwrap();
    wait("the woken shard to serve", &|s| {
        s["shards"][1]["requests_served"].as_u64().unwrap() > served_before + 100
    });
    let (heavy_ok, heavy_failed) = heavy.finish();
    let status = wait("scale-down when idle again", &|s| {
        s["cluster"]["active_shards"] == 1 && s["shards"][1]["state"] == "parked"
    });
    let (light_ok, light_failed) = light.finish();
    assert_eq!(
        (heavy_failed, light_failed),
        (0, 0),
        "{heavy_ok} + {light_ok} answered"
    );
    assert!(heavy_ok > 1000 && light_ok > 20);

    let events = status["cluster"]["scaling"]["events"].as_array().unwrap();
    let moves: Vec<(u64, u64)> = events
        .iter()
        .map(|e| (e["from"].as_u64().unwrap(), e["to"].as_u64().unwrap()))
        .collect();
    assert_eq!(moves, [(2, 1), (1, 2), (2, 1)], "{events:?}");
    for pair in events.windows(2) {
        let gap = pair[1]["at_ms"].as_u64().unwrap() - pair[0]["at_ms"].as_u64().unwrap();
        assert!(
            gap >= cooldown_ms,
            "scaling actions {gap} ms apart, cooldown {cooldown_ms} ms"
        );
    }
    let log = server.log_lines();
    assert!(log
        .iter()
        .any(|l| l.contains("auto-scaling: 2 -> 1 active shards")));
    assert!(log
        .iter()
        .any(|l| l.contains("shard 1: activated, listening again")));
}

#[test]
fn scaling_bounds_are_clamped_to_the_cpus_and_said_at_start_up() {
    let server = Server::start(
        ENGINE,
        &["--shards", "2", "--min-workers", "8", "--max-workers", "32"],
    );
    let status = server.cluster_status();
    // `auto` runs the monitor's tests on may, with everything the monitor needs of an engine.
    assert_eq!(status["engine"], "may", "{status}");
    assert_eq!(status["cluster"]["scaling"]["max_active"], 2);
    assert_eq!(status["cluster"]["scaling"]["min_active"], 2);
    wait_for("the clamp note", Duration::from_secs(5), || {
        server
            .log_lines()
            .into_iter()
            .find(|l| l.contains("CLUSTER_MAX_WORKERS=32 clamped"))
    });
}
