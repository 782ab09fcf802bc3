//! Process lifecycle: shard crash and restart, graceful shutdown, start-up refusals.

mod common;

use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use rstest::rstest;
use rstest_reuse::{self, apply};

use common::{engines, Server};

fn shard_of(client: &mut common::Client) -> u64 {
    client
        .request("GET", "/debug/shard", &[common::OPERATOR], b"")
        .json()["shard"]
        .as_u64()
        .unwrap()
}

#[apply(engines)]
fn a_crashed_shard_restarts_on_its_core_and_the_others_keep_serving(#[case] engine: &str) {
    let server = Server::start(engine, &["--shards", "2", "--debug-routes"]);
    // Open connections until both shards hold some (SO_REUSEPORT spreads them by hash).
    let mut by_shard: [Vec<common::Client>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..200 {
        if by_shard.iter().all(|c| c.len() >= 2) {
            break;
        }
        let mut client = server.connect();
        let shard = shard_of(&mut client) as usize;
        by_shard[shard].push(client);
    }
    assert!(
        by_shard.iter().all(|c| c.len() >= 2),
        "connections did not reach both shards"
    );
    let before = server.cluster_status();
    let victim_cpu = before["shards"][0]["cpu"].clone();
    let [victims, survivors] = &mut by_shard;

    let crash = victims[0].try_request("POST", "/debug/crash-shard", &[common::OPERATOR], b"");
    assert!(
        crash.is_none(),
        "the crashing shard should not answer: {crash:?}"
    );
    let status = server.wait_for_status("shard 0 restarted", |s| {
        s["shards"][0]["restarts"] == 1
            && s["shards"][0]["state"] == "running"
            && s["shards"][0]["generation"] == 2
    });
    assert_eq!(
        status["shards"][0]["cpu"], victim_cpu,
        "restarted on the same core"
    );
    assert_eq!(status["shards"][1]["restarts"], 0);

    // The other shard's connections never noticed.
    for client in survivors.iter_mut() {
        assert_eq!(shard_of(client), 1);
    }
    // The dead shard's other connections are gone; new connections are served again.
    assert!(victims[1].try_request("GET", "/livez", &[], b"").is_none());
    for _ in 0..20 {
        assert_eq!(server.get("/livez").status, 200);
    }
    let prometheus = server.get("/metrics").text();
    assert!(
        prometheus.contains("coinbit_shard_restarts_total{shard=\"0\",cpu="),
        "{prometheus}"
    );
    assert!(prometheus
        .lines()
        .any(|l| l.starts_with("coinbit_shard_restarts_total{shard=\"0\"") && l.ends_with(" 1")));
}

/// CPUs in a `Cpus_allowed_list` value (`0-3,6`).
fn parse_cpu_list(list: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        cpus.extend(first.parse::<usize>().unwrap()..=last.parse::<usize>().unwrap());
    }
    cpus
}

/// A field of `/proc/<path>/status`, e.g. `Cpus_allowed_list`.
fn proc_status_field(path: &str, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{path}/status"))
        .unwrap_or_else(|e| panic!("/proc/{path}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{path}/status"))
        .trim()
        .to_string()
}

/// What the kernel says, not the `cpu` the server reports: each shard's thread may run on its
/// one CPU only, and no two shards share one. The thread is the one whose id the status
/// reports, checked to be a thread of the process (and on glommio, to carry the shard's name;
/// may's worker threads carry none).
#[apply(engines)]
fn each_shard_thread_is_pinned_to_a_cpu_of_its_own(#[case] engine: &str) {
    let allowed = parse_cpu_list(&proc_status_field("self", "Cpus_allowed_list"));
    let cpus: Vec<usize> = allowed.into_iter().take(2).collect();
    assert_eq!(cpus.len(), 2, "this test needs two CPUs");
    let cpu_list = format!("{},{}", cpus[0], cpus[1]);
    let server = Server::start(engine, &["--shards", "2", "--shard-cpus", &cpu_list]);
    let status = server.wait_for_status("every shard's thread id", |s| {
        s["shards"]
            .as_array()
            .is_some_and(|shards| shards.iter().all(|shard| shard["tid"].as_i64() > Some(0)))
    });
    let pid = server.child.id();
    let mut pinned_to = Vec::new();
    for shard in status["shards"].as_array().unwrap() {
        let id = shard["id"].as_u64().unwrap();
        let tid = shard["tid"].as_i64().unwrap();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
            .unwrap_or_else(|e| panic!("shard {id}'s thread {tid} is not ours: {e}"));
        if engine == "glommio" {
            // glommio names an executor's thread `<name>-<executor id>`.
            assert!(
                comm.starts_with(&format!("shard-{id}-")),
                "thread {tid}: {comm}"
            );
        }
        assert_ne!(tid, i64::from(pid), "shard {id} reports the main thread");
        let list = proc_status_field(&format!("{pid}/task/{tid}"), "Cpus_allowed_list");
        let allowed = parse_cpu_list(&list);
        assert_eq!(
            allowed.len(),
            1,
            "shard {id} (thread {tid}) may run on {list}"
        );
        pinned_to.push(allowed[0]);
    }
    pinned_to.sort_unstable();
    assert_eq!(pinned_to, cpus, "the shards' CPUs, read from /proc");
}

/// Signals go only once the shard has taken the `/debug/sleep` request (the route counts it
/// when the handler starts), so the request is in flight rather than unread.
fn wait_until_sleep_in_flight(server: &Server) {
    common::wait_for(
        "the sleep request in flight",
        Duration::from_secs(5),
        || {
            let m = server.get("/api/enterprise/metrics").json();
            (m["routes"]["debug_sleep"]["2xx"].as_u64() == Some(1)).then_some(())
        },
    );
}

#[apply(engines)]
fn sigterm_lets_the_request_in_flight_finish_then_exits_zero(#[case] engine: &str) {
    let mut server = Server::start(engine, &["--debug-routes", "--shutdown-timeout", "5000"]);
    let mut busy = server.connect();
    let idle = server.connect();
    busy.send(b"GET /debug/sleep?ms=800 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer test-operator-token-0123456789abcdef\r\n\r\n");
    wait_until_sleep_in_flight(&server);
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    let response = busy.read_response(false);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["slept_ms"], 800);
    assert_eq!(
        response.header("connection"),
        Some("close"),
        "draining answers close"
    );
    let status = server.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "waited for the deadline instead of the last request"
    );
    drop(idle);
    assert!(
        std::net::TcpStream::connect(server.addr).is_err(),
        "still accepting after exit"
    );
}

/// The home shard of an idempotency key among `shards` (FNV-1a, as the server's mesh).
fn key_home(key: &str, shards: u64) -> u64 {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    hash % shards
}

#[apply(engines)]
fn a_keyed_job_for_a_shard_already_stopped_gets_503_at_once_during_shutdown(#[case] engine: &str) {
    let mut server = Server::start(
        engine,
        &[
            "--debug-routes",
            "--shards",
            "2",
            "--shutdown-timeout",
            "10000",
        ],
    );
    let mut client = server.connect();
    let arrived_on = shard_of(&mut client);
    let key = (0..)
        .map(|i| format!("order-{i}"))
        .find(|key| key_home(key, 2) != arrived_on)
        .unwrap();
    let home = 1 - arrived_on;
    let body = format!(r#"{{"kind":"debug.sleep","payload":{{"ms":1}},"key":"{key}"}}"#);
    // The head now, the body once the key's home has stopped: the request is in progress,
    // so the shard it arrived on keeps draining for it.
    client.send(
        format!(
            "POST /api/enterprise/jobs HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer test-operator-token-0123456789abcdef\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    server.signal(libc::SIGTERM);
    let stopped = format!("shard {home} stopped");
    let mut seen = Vec::new();
    common::wait_for(
        "the key's home shard to stop",
        Duration::from_secs(10),
        || {
            seen.extend(server.log_lines());
            seen.iter().any(|l| l.contains(&stopped)).then_some(())
        },
    );
    client.send(body.as_bytes());
    let sent = Instant::now();
    client
        .stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let response = client
        .try_read_response(false)
        .expect("no answer before the shutdown deadline");
    assert_eq!(response.status, 503, "{}", response.text());
    assert_eq!(response.header("retry-after"), Some("1"));
    assert_eq!(response.error_code(), "shard_unavailable");
    assert!(sent.elapsed() < Duration::from_secs(5));
    assert_eq!(server.wait_exit(Duration::from_secs(15)).code(), Some(0));
}

#[apply(engines)]
fn sigint_with_a_request_past_the_deadline_still_exits_zero_at_the_deadline(#[case] engine: &str) {
    let mut server = Server::start(engine, &["--debug-routes", "--shutdown-timeout", "300"]);
    let mut busy = server.connect();
    busy.send(b"GET /debug/sleep?ms=5000 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer test-operator-token-0123456789abcdef\r\n\r\n");
    wait_until_sleep_in_flight(&server);
    let signalled = Instant::now();
    server.signal(libc::SIGINT);
    assert_eq!(server.wait_exit(Duration::from_secs(10)).code(), Some(0));
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(
        busy.try_read_response(false).is_none(),
        "the request past the deadline is cut"
    );
}

#[apply(engines)]
fn a_second_signal_exits_130_without_waiting(#[case] engine: &str) {
    let mut server = Server::start(engine, &["--debug-routes", "--shutdown-timeout", "10000"]);
    let mut busy = server.connect();
    busy.send(b"GET /debug/sleep?ms=5000 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer test-operator-token-0123456789abcdef\r\n\r\n");
    wait_until_sleep_in_flight(&server);
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    // The first signal is being handled (draining) before the second comes.
    common::wait_for("draining", Duration::from_secs(5), || {
        server
            .log_lines()
            .iter()
            .any(|l| l.contains("draining connections"))
            .then_some(())
    });
    server.signal(libc::SIGINT);
    assert_eq!(server.wait_exit(Duration::from_secs(5)).code(), Some(130));
    assert!(signalled.elapsed() < Duration::from_secs(3));
}

/// Runs the binary with `args` and `env` (on top of `PORT=0`) until it exits, at most 20 s;
/// returns (exit code, stderr).
fn run_to_exit(
    args: &[&str],
    env: &[(&str, &str)],
    pre_exec: Option<fn() -> std::io::Result<()>>,
) -> (i32, String) {
    let mut command = common::binary();
    command
        .args(["--bind-address", "127.0.0.1"])
        .args(args)
        .env("PORT", "0")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    if let Some(hook) = pre_exec {
        // SAFETY: the hooks only call async-signal-safe functions (setrlimit, prctl).
        unsafe { command.pre_exec(hook) };
    }
    let mut child = command.spawn().expect("run coinbit");
    let status = common::wait_for("coinbit to exit", Duration::from_secs(20), || {
        child.try_wait().unwrap()
    });
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    (status.code().unwrap_or(-1), stderr)
}

#[test]
fn bad_environment_values_stop_start_up_with_exit_2_naming_them() {
    /// (environment, what the message must name)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case] = &[
        (&[("PORT", "http")], &["PORT", "http"]),
        (
            &[("CLUSTER_MIN_WORKERS", "40"), ("CLUSTER_MAX_WORKERS", "10")],
            &["CLUSTER_MIN_WORKERS", "40", "CLUSTER_MAX_WORKERS"],
        ),
        (
            &[("SCALE_UP_THRESHOLD", "150")],
            &["SCALE_UP_THRESHOLD", "150"],
        ),
        (
            &[("MONITORING_CPU_WARNING", "-5")],
            &["MONITORING_CPU_WARNING", "-5"],
        ),
        (
            &[("REPLICA_HEALTH_CHECK_INTERVAL", "soon")],
            &["REPLICA_HEALTH_CHECK_INTERVAL", "soon"],
        ),
        (
            &[("DB_READ_REPLICA_1", "mysql://x")],
            &["DB_READ_REPLICA_1", "mysql://x"],
        ),
        (&[("QUEUE_HIGH_WORKERS", "0")], &["QUEUE_HIGH_WORKERS", "0"]),
        (
            &[("QUEUE_ROUTE_CLASSES", "livez=urgent")],
            &["QUEUE_ROUTE_CLASSES", "livez=urgent", "unknown class"],
        ),
        (
            &[("QUEUE_HIGH_WORKERS", "four")],
            &["QUEUE_HIGH_WORKERS", "four"],
        ),
        (&[("SHARD_CPUS", "0,999")], &["SHARD_CPUS", "999"]),
        (&[("ENGINE", "uring")], &["ENGINE", "uring"]),
        (
            &[("MONITORING_WEBHOOK_URL", "ftp://alerts")],
            &["MONITORING_WEBHOOK_URL", "ftp://alerts"],
        ),
        (
            &[("MONITORING_HEARTBEAT_TIMEOUT", "0")],
            &["MONITORING_HEARTBEAT_TIMEOUT", "0"],
        ),
        // Past its upper bound, not a crash on the first request.
        (
            &[("MAX_REQUEST_LINE_BYTES", "18446744073709551615")],
            &["MAX_REQUEST_LINE_BYTES", "18446744073709551615"],
        ),
    ];
    for (env, needles) in cases {
        let (code, stderr) = run_to_exit(&[], env, None);
        assert_eq!(code, 2, "{env:?}: {stderr}");
        for needle in *needles {
            assert!(
                stderr.contains(needle),
                "{env:?}: {needle:?} not in {stderr:?}"
            );
        }
    }
}

#[test]
fn help_lists_flags_and_variables() {
    let output = common::binary().arg("--help").output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "--port",
        "PORT",
        "CLUSTER_MIN_WORKERS",
        "QUEUE_LOW_WORKERS",
        "DB_POOL_SIZE",
        "MONITORING_METRICS_INTERVAL",
        "DB_READ_REPLICA_1",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}");
    }
}

fn lower_memlock() -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: 64 * 1024,
        rlim_max: 64 * 1024,
    };
    // SAFETY: setrlimit on the child before exec.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A seccomp filter that makes io_uring_setup fail with EPERM, as container runtimes' default
/// profiles do.
fn block_io_uring() -> std::io::Result<()> {
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    let filter = [
        // Load the syscall number.
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_io_uring_setup as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ALLOW,
        },
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut _,
    };
    // SAFETY: prctl with a valid, live filter program.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &program as *const _ as libc::c_ulong,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[test]
fn too_little_locked_memory_is_refused_with_the_fix() {
    let (code, stderr) = run_to_exit(&["--engine", "glommio"], &[], Some(lower_memlock));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("locked-memory limit is 65536"), "{stderr}");
    assert!(stderr.contains("ulimit -l"), "{stderr}");
}

#[test]
fn io_uring_blocked_by_seccomp_is_refused_with_the_fix() {
    let (code, stderr) = run_to_exit(&["--engine", "glommio"], &[], Some(block_io_uring));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("io_uring is unavailable"), "{stderr}");
    assert!(stderr.contains("seccomp"), "{stderr}");
}

#[test]
fn auto_falls_back_to_may_where_glommio_cannot_run_and_says_why() {
    /// (what makes glommio unable to run, what the log must say of it)
    type Case = (fn() -> std::io::Result<()>, &'static str);
    let cases: [Case; 2] = [
        (block_io_uring, "io_uring is unavailable"),
        (lower_memlock, "locked-memory limit is 65536"),
    ];
    for (hook, why) in cases {
        let mut command = Server::command(&[]);
        command.env("ENGINE", "auto");
        // SAFETY: the hooks only call async-signal-safe functions (setrlimit, prctl).
        unsafe { command.pre_exec(hook) };
        let server = Server::spawn(command);
        let status = server.cluster_status();
        assert_eq!(status["engine"], "may", "{status}");
        assert_eq!(server.get("/health").json()["engine"], "may");
        assert_eq!(server.get("/livez").status, 200);
        let mut lines = Vec::new();
        common::wait_for(
            "the engine choice in the log",
            Duration::from_secs(5),
            || {
                lines.extend(server.log_lines());
                lines
                    .iter()
                    .any(|l| l.contains("engine: may (auto: glommio cannot run") && l.contains(why))
                    .then_some(())
            },
        );
    }
}

#[apply(engines)]
fn a_port_in_use_by_a_non_reuseport_socket_is_a_clear_error(#[case] engine: &str) {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, stderr) = run_to_exit(&["--port", &port, "--engine", engine], &[], None);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")) && stderr.contains("in use"),
        "{stderr}"
    );
}

#[apply(engines)]
fn a_second_server_on_a_served_port_is_refused_unless_a_handover_is_asked_for(
    #[case] engine: &str,
) {
    let first = Server::start(engine, &[]);
    let port = first.addr.port().to_string();
    let args = ["--port", &port, "--engine", engine];
    let (code, stderr) = run_to_exit(&args, &[], None);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port} is in use"))
            && stderr.contains("REUSE_PORT_HANDOVER"),
        "{stderr}"
    );

    let mut handover = common::binary();
    handover
        .args(["--bind-address", "127.0.0.1", "--snapshot-interval", "100"])
        .args(args)
        .env("REUSE_PORT_HANDOVER", "1")
        .env("RUST_LOG", "info");
    let second = Server::spawn(handover);
    assert_eq!(second.addr, first.addr);
    assert_eq!(first.get("/livez").status, 200);
}

/// A credential in a database URL, in each form it can take.
const SECRET: &str = "s3cr3t-value";

/// Every exit path that shows a database URL, with the credential in each form it can take:
/// the primary refusing connections or accepting them and never answering (exit 1, `serve` and
/// `migrate`, each within its bound) and settings refused at start-up (exit 2, the primary's
/// and a replica's).
#[test]
fn database_url_credentials_appear_in_no_exit_message() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = unused.local_addr().unwrap().port();
    drop(unused);
    let every_form = |port: u16| {
        format!("postgres://u:{SECRET}@127.0.0.1:{port}/db?password={SECRET}&sslmode=disable")
    };
    let refused_url = every_form(refused);
    // A port that accepts connections and never answers: a hung server, or something else
    // holding the port. The listener's backlog takes the connections; nothing reads them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = every_form(silent.local_addr().unwrap().port());
    let option = |name: &str| format!("postgres://u@127.0.0.1:{refused}/db?{name}={SECRET}");
    let replica = format!("postgres://u:{SECRET}@127.0.0.1:{refused}/db?weight=0");
    // (subcommand, variables, exit code, the variable the message names)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, i32, &'a str);
    let mut cases: Vec<Case> = vec![
        (
            "serve",
            vec![("DATABASE_URL", refused_url.clone())],
            1,
            "DATABASE_URL",
        ),
        (
            "migrate",
            vec![("DATABASE_URL", refused_url)],
            1,
            "DATABASE_URL",
        ),
        (
            "serve",
            vec![("DATABASE_URL", silent_url.clone())],
            1,
            "DATABASE_URL",
        ),
        (
            "migrate",
            vec![("DATABASE_URL", silent_url)],
            1,
            "DATABASE_URL",
        ),
        (
            "serve",
            vec![
                ("DATABASE_URL", format!("postgres://127.0.0.1:{refused}/db")),
                ("DB_READ_REPLICA_1", replica),
            ],
            2,
            "DB_READ_REPLICA_1",
        ),
    ];
    for name in ["sslpassword", "passwd", "client_secret", "api_token"] {
        for subcommand in ["serve", "migrate"] {
            cases.push((
                subcommand,
                vec![("DATABASE_URL", option(name))],
                2,
                "DATABASE_URL",
            ));
        }
    }
    for (subcommand, env, code, variable) in cases {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (exit, stderr) = run_to_exit(&["--connect-timeout", "500", subcommand], &env, None);
        let case = format!("{subcommand} {env:?}");
        assert_eq!(exit, code, "{case}: {stderr}");
        assert!(stderr.contains(variable), "{case}: {stderr}");
        assert!(
            stderr.contains("***"),
            "{case}: the URL is not shown: {stderr}"
        );
        assert!(
            !stderr.contains(SECRET),
            "{case}: credential leaked: {stderr}"
        );
    }
}

#[test]
fn a_password_in_the_database_url_query_is_shown_nowhere() {
    let cluster = common::pg::PgCluster::start(0);
    let url = format!("{}?password={SECRET}", cluster.url("primary", "postgres"));
    let server = Server::start_with("may", &[], &[("DATABASE_URL", &url)]);
    let status = server.get("/api/enterprise/cluster/status").text();
    assert!(status.contains("password=***"), "{status}");
    let log = server.log_lines().join("\n");
    assert!(log.contains("password=***"), "{log}");
    for (what, text) in [("status", &status), ("log", &log)] {
        assert!(!text.contains(SECRET), "credential in the {what}: {text}");
    }
}
