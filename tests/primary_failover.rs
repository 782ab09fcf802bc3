//! The server follows a new primary, and says when a write's outcome is unknown: a real
//! PostgreSQL primary and streaming replica, the primary stopped and the replica promoted with
//! `pg_ctl promote`; and real backends terminated at their COMMIT.
//!
//! The database tier is the same under both engines, and a failover is slow to stage on a
//! two-core host: these tests run on one engine (`may`).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pg::{start_quick_to_fail_over, PgCluster};
use common::users::create_user;
use common::{Client, Server, OPERATOR};

const ENGINE: &str = "may";

fn node<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["database"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no node {name} in {status}"))
}

/// One write's answer as a writer saw it.
#[derive(Debug, Clone)]
struct Outcome {
    email: String,
    status: u16,
    code: String,
    took: Duration,
    at: Instant,
}

/// Creates users from `threads` connections until stopped, recording every answer.
struct Writers {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Outcome>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Writers {
    fn start(server: &Server, threads: usize) -> Writers {
        Writers::start_as(server, threads, "w")
    }

    /// Writers whose emails start with `prefix` (each set of writers its own).
    fn start_as(server: &Server, threads: usize, prefix: &'static str) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handles = (0..threads)
            .map(|t| {
                let (stop, seen, addr) = (stop.clone(), seen.clone(), server.addr);
                std::thread::spawn(move || {
                    let mut client = Client::connect(addr);
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let email = format!("{prefix}{t}-{n}@example.com");
                        // Registration: a password is required.
                        let body = common::users::registration("Writer", &email);
                        let started = Instant::now();
                        let answer = client.try_request(
                            "POST",
                            "/api/users",
                            &[("Content-Type", "application/json")],
                            body.as_bytes(),
                        );
                        let took = started.elapsed();
                        let (status, code) = match &answer {
                            Some(r) if r.status == 201 => (201, String::new()),
                            Some(r) => (r.status, r.error_code()),
                            None => {
                                client = Client::connect(addr);
                                (0, "no answer".into())
                            }
                        };
                        seen.lock().unwrap().push(Outcome {
                            email,
                            status,
                            code,
                            took,
                            at: started,
                        });
                        if status != 201 {
                            // A failing write answers fast: pace the retries a little.
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                })
            })
            .collect();
        Writers {
            stop,
            seen,
            threads: handles,
        }
    }

    fn succeeded_after(&self, since: Instant) -> bool {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .any(|o| o.status == 201 && o.at >= since)
    }

    fn count(&self, check: impl Fn(&Outcome) -> bool) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|o| check(o))
            .count()
    }

    fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let seen = self.seen.lock().unwrap();
        seen.clone()
    }
}

/// Reads one user all along from one connection, counting the reads that fail.
struct Reader {
    reading: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u64, Vec<String>)>,
}

impl Reader {
    fn start(server: &Server) -> Reader {
        let reading = Arc::new(AtomicBool::new(true));
        let (flag, addr) = (reading.clone(), server.addr);
        let id = common::wait_for("a first user", Duration::from_secs(15), || {
            let r = Client::connect(addr).request("GET", "/api/users/1", &[OPERATOR], b"");
            (r.status == 200).then_some(1)
        });
        let thread = std::thread::spawn(move || {
            let (mut total, mut failed) = (0u64, Vec::new());
            let mut client = Client::connect(addr);
            while flag.load(Ordering::Relaxed) {
                total += 1;
                match client.try_request("GET", &format!("/api/users/{id}"), &[OPERATOR], b"") {
                    Some(r) if r.status == 200 => {}
                    Some(r) => failed.push(format!("{} {}", r.status, r.error_code())),
                    None => {
                        failed.push("no answer".into());
                        client = Client::connect(addr);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (total, failed)
        });
        Reader { reading, thread }
    }

    /// Stops reading: the reads made and the failures seen.
    fn finish(self) -> (u64, Vec<String>) {
        self.reading.store(false, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// `DATABASE_URL` names the primary's and the standby's hosts. The primary stops under a write
/// load and the standby is promoted: writes answer fast 503s (`no_primary`, or for the writes
/// the stop cut, `database_unavailable` / `outcome_unknown`) while no primary is known, none
/// hangs, and they resume on the new primary on their own; every acknowledged write is there.
/// The former primary then comes back as a standby of the new one and serves reads again.
#[test]
fn writes_follow_a_promoted_standby_and_the_former_primary_rejoins_the_reads() {
    let cluster = PgCluster::start(1);
    let db = cluster.create_database("promote");
    let url = cluster.multi_host_url(&["primary", "replica1"], &db);
    let server = start_quick_to_fail_over(
        ENGINE,
        &[("DATABASE_URL", &url)],
        &[
            "--primary-retry",
            "200",
            "--replica-strategy",
            "round-robin",
        ],
    );
    // The read set is both hosts; the primary is the old primary's.
    let old_port = cluster.node_port("primary") as u64;
    let new_port = cluster.node_port("replica1") as u64;
    server.wait_for_status("every node up, the primary found", |s| {
        let nodes = s["database"]["nodes"].as_array().unwrap();
        nodes.len() == 3
            && nodes.iter().all(|n| n["state"] == "up")
            && node(s, "primary")["server_port"] == old_port
    });

    let writers = Writers::start(&server, 3);
    let reader = Reader::start(&server);
    common::wait_for("writes before the stop", Duration::from_secs(15), || {
        (writers.count(|o| o.status == 201) >= 20).then_some(())
    });
    let stopped = Instant::now();
    cluster.stop("primary");
    common::wait_for("a write refused", Duration::from_secs(15), || {
        (writers.count(|o| o.status == 503 && o.at >= stopped) >= 10).then_some(())
    });
    let promoted = Instant::now();
    cluster.promote("replica1");
    common::wait_for(
        "writes to resume on the new primary",
        Duration::from_secs(30),
        || writers.succeeded_after(promoted).then_some(()),
    );
    let resumed = Instant::now();
    // A few more on the new primary, then stop.
    let before = writers.count(|o| o.status == 201);
    common::wait_for("writes on the new primary", Duration::from_secs(15), || {
        (writers.count(|o| o.status == 201) >= before + 20).then_some(())
    });
    let outcomes = writers.finish();
    let (reads, failed_reads) = reader.finish();
    let refused: Vec<&Outcome> = outcomes.iter().filter(|o| o.status != 201).collect();
    let slowest = outcomes.iter().map(|o| o.took).max().unwrap();
    eprintln!(
        "failover: {} writes, {} refused ({} no_primary), writes resumed {:?} after the stop \
         and {:?} after the promotion; slowest answer {:?}; {} of {reads} reads failed",
        outcomes.len(),
        refused.len(),
        refused.iter().filter(|o| o.code == "no_primary").count(),
        resumed - stopped,
        resumed - promoted,
        slowest,
        failed_reads.len(),
    );
    assert!(failed_reads.is_empty(), "{failed_reads:?}");
    // Refused fast and said why; none hung.
    for o in &refused {
        assert!(
            o.status == 503
                && ["no_primary", "outcome_unknown", "database_unavailable"]
                    .contains(&o.code.as_str()),
            "{o:?}"
        );
    }
    assert!(
        refused.iter().filter(|o| o.code == "no_primary").count() >= refused.len() / 2,
        "while no primary is known, writes say so: {refused:?}"
    );
    assert!(slowest < Duration::from_secs(3), "a write took {slowest:?}");
    // Every acknowledged write is on the new primary.
    let acknowledged: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == 201).collect();
    let emails: Vec<String> = acknowledged
        .iter()
        .map(|o| format!("'{}'", o.email))
        .collect();
    let found = cluster.psql(
        "replica1",
        &db,
        &format!(
            "SELECT count(*) FROM users WHERE email IN ({})",
            emails.join(",")
        ),
    );
    assert_eq!(
        found,
        acknowledged.len().to_string(),
        "acknowledged writes lost"
    );
    // The server port the primary's connections reach is the promoted standby's: the server
    // reconnected to it (how many reconnects that took varies with the host's load).
    server.wait_for_status("the new primary in the status", |s| {
        node(s, "primary")["server_port"] == new_port && node(s, "primary")["state"] == "up"
    });

    // The former primary follows the new one and joins the read set again.
    cluster.start_as_standby_of("primary", "replica1");
    let back = server.wait_for_status("the former primary back, as a standby", |s| {
        node(s, "replica1")["state"] == "up" && node(s, "replica1")["in_recovery"] == true
    });
    let served = node(&back, "replica1")["requests"].as_u64().unwrap();
    let id = cluster.psql("replica1", &db, "SELECT max(id) FROM users");
    let mut client = server.connect();
    common::wait_for(
        "reads on the former primary",
        Duration::from_secs(15),
        || {
            let read = client.request("GET", &format!("/api/users/{id}"), &[OPERATOR], b"");
            assert_eq!(read.status, 200, "{}", read.text());
            let now = server.cluster_status();
            (node(&now, "replica1")["requests"].as_u64().unwrap() > served + 5).then_some(())
        },
    );
}

/// Backend PIDs of `db`'s sessions sleeping in a trigger, at their COMMIT or not.
fn sleeping_backends(cluster: &PgCluster, db: &str, at_commit: bool) -> Option<String> {
    // The COMMIT is sent with the read of the WAL position after it, in one simple query.
    let op = if at_commit { "LIKE" } else { "NOT LIKE" };
    let pids = cluster.psql(
        "primary",
        "postgres",
        &format!(
            "SELECT string_agg(pid::text, ',') FROM pg_stat_activity \
             WHERE datname = '{db}' AND wait_event = 'PgSleep' AND query {op} 'COMMIT%'"
        ),
    );
    (!pids.is_empty()).then_some(pids)
}

/// A write whose connection is lost during its COMMIT answers `outcome_unknown`, not the
/// generic 503: the commit may have happened. One lost before its COMMIT is known not to have
/// committed and answers `database_unavailable`. The next write succeeds on a new connection.
#[test]
fn a_connection_lost_at_commit_answers_outcome_unknown() {
    let cluster = PgCluster::start(0);
    let db = cluster.create_database("unknown_outcome");
    let server = Server::start_with(
        ENGINE,
        &[
            "--pool-size",
            "1",
            "--statement-timeout",
            "30000",
            "--replica-health-check-interval",
            "200",
        ],
        &[("DATABASE_URL", &cluster.url("primary", &db))],
    );
    server.wait_for_status("the primary up", |s| node(s, "primary")["state"] == "up");
    // Triggers that sleep: one at the COMMIT (deferred), one in the INSERT itself.
    cluster.psql(
        "primary",
        &db,
        "CREATE FUNCTION sleep_for() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.email LIKE TG_ARGV[0] THEN PERFORM pg_sleep(20); END IF; RETURN NULL; END $$; \
         CREATE CONSTRAINT TRIGGER sleep_at_commit AFTER INSERT ON users \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION sleep_for('at-commit%'); \
         CREATE TRIGGER sleep_in_insert AFTER INSERT ON users \
             FOR EACH ROW EXECUTE FUNCTION sleep_for('in-insert%');",
    );
    for (email, at_commit, code) in [
        ("at-commit@example.com", true, "outcome_unknown"),
        ("in-insert@example.com", false, "database_unavailable"),
    ] {
        let addr = server.addr;
        let write = std::thread::spawn(move || {
            let started = Instant::now();
            let answer = create_user(&mut Client::connect(addr), "Unknown", email);
            (answer, started.elapsed())
        });
        let pids = common::wait_for(
            "the write's backend asleep",
            Duration::from_secs(10),
            || sleeping_backends(&cluster, &db, at_commit),
        );
        cluster.psql(
            "primary",
            "postgres",
            &format!("SELECT pg_terminate_backend(pid) FROM unnest('{{{pids}}}'::int[]) AS pid"),
        );
        let (answer, took) = write.join().unwrap();
        assert_eq!(
            (answer.status, answer.error_code().as_str()),
            (503, code),
            "{email}: {}",
            answer.text()
        );
        assert!(took < Duration::from_secs(10), "{email} took {took:?}");
        assert_eq!(answer.header("Retry-After"), Some("1"), "{email}");
    }
    // The pool connects again: the next write goes through.
    let mut n = 0;
    common::wait_for("a write to succeed again", Duration::from_secs(15), || {
        n += 1;
        let write = create_user(
            &mut server.connect(),
            "Known",
            &format!("known{n}@example.com"),
        );
        (write.status == 201).then_some(())
    });
}

/// A primary that turns read-only under the server (SQLSTATE 25006 on a write: here
/// `default_transaction_read_only`, as a demoted node would answer) has its connections
/// dropped; the server looks for a host that takes writes, answers `no_primary` while there is
/// none, and writes again once the node does.
#[test]
fn a_read_only_answer_drops_the_connections_and_looks_for_the_primary_again() {
    let cluster = PgCluster::start(1);
    let db = cluster.create_database("read_only");
    let url = cluster.multi_host_url(&["primary", "replica1"], &db);
    let server = Server::start_with(
        ENGINE,
        &[
            "--pool-size",
            "2",
            "--replica-health-check-interval",
            "200",
            "--primary-retry",
            "200",
        ],
        &[("DATABASE_URL", &url)],
    );
    server.wait_for_status("the primary found", |s| node(s, "primary")["state"] == "up");
    let mut client = server.connect();
    let first = create_user(&mut client, "Ro", "before@example.com");
    assert_eq!(first.status, 201, "{}", first.text());
    let set = |value: &str| {
        cluster.psql(
            "primary",
            "postgres",
            &format!("ALTER SYSTEM SET default_transaction_read_only = {value}"),
        );
        cluster.psql("primary", "postgres", "SELECT pg_reload_conf()");
    };
    set("on");
    let mut n = 0;
    let refused = common::wait_for("a write refused", Duration::from_secs(15), || {
        n += 1;
        let write = create_user(&mut client, "Ro", &format!("ro{n}@example.com"));
        (write.status != 201).then_some(write)
    });
    assert_eq!(refused.status, 503, "{}", refused.text());
    // Its connections went, and no host takes writes: the primary is shut out.
    let status = server.wait_for_status("the primary shut out", |s| {
        node(s, "primary")["state"] != "up"
    });
    assert!(
        node(&status, "primary")["reconnects"].as_u64() >= Some(1),
        "{status}"
    );
    let started = Instant::now();
    let write = create_user(&mut client, "Ro", "none@example.com");
    assert_eq!(
        (write.status, write.error_code().as_str()),
        (503, "no_primary"),
        "{}",
        write.text()
    );
    assert!(started.elapsed() < Duration::from_millis(500));
    set("off");
    common::wait_for("writes again", Duration::from_secs(15), || {
        n += 1;
        let write = create_user(&mut client, "Ro", &format!("ro{n}@example.com"));
        (write.status == 201).then_some(())
    });
}

/// Patroni with etcd from `deploy/patroni/` (the deployed files, moved to loopback ports and
/// a scratch directory): three PostgreSQL nodes, one elected leader. Stopped (processes
/// killed, then the scratch directory deleted) when dropped.
struct Patroni {
    dir: std::path::PathBuf,
    etcd: std::process::Child,
    nodes: Vec<Option<std::process::Child>>,
    rest: Vec<u16>,
    pg: Vec<u16>,
    /// No other cluster of this binary runs beside this one (two starve a two-core host).
    _turn: common::pg::Turn,
}

/// The deployed configuration's password for `postgres` (the scratch cluster keeps it).
const PATRONI_PASSWORD: &str = "change-me-superuser";

/// `postgres`'s user and group ids (PostgreSQL and Patroni refuse to run as root).
fn postgres_ids() -> (u32, u32) {
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: getpwnam with a valid C string; the fields are read at once.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !entry.is_null(),
        "no postgres user (apt-get install postgresql)"
    );
    // SAFETY: entry is a valid passwd record.
    unsafe { ((*entry).pw_uid, (*entry).pw_gid) }
}

/// A command run as `postgres` when the tests run as root.
fn as_postgres(program: &str) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(program);
    // SAFETY: reading this process's own user id.
    if unsafe { libc::getuid() } == 0 {
        let (uid, gid) = postgres_ids();
        command.uid(uid).gid(gid);
    }
    command
}

/// A GET on Patroni's REST API: the HTTP status (0 when it does not answer) and the body.
/// The whole answer is read: a client that hangs up early makes Patroni log a traceback.
fn rest_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .is_err()
    {
        return (0, String::new());
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

fn rest_status(port: u16, path: &str) -> u16 {
    rest_get(port, path).0
}

impl Patroni {
    fn start() -> Patroni {
        let turn = common::pg::take_turn();
        let patroni = std::path::Path::new("/usr/bin/patroni");
        if !patroni.exists() {
            let _ = std::process::Command::new("apt-get")
                .args([
                    "install",
                    "-y",
                    "-qq",
                    "--no-install-recommends",
                    "patroni",
                    "etcd-server",
                ])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status();
        }
        assert!(
            patroni.exists(),
            "patroni is missing (apt-get install patroni etcd-server)"
        );
        let base = common::free_ports(8);
        let (etcd_client, etcd_peer) = (base, base + 1);
        let rest: Vec<u16> = (0..3).map(|i| base + 2 + i).collect();
        let pg: Vec<u16> = (0..3).map(|i| base + 5 + i).collect();
        let dir = std::env::temp_dir().join(format!("coinbit-patroni-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let etcd = std::process::Command::new("etcd")
            .args(["--name", "etcd1", "--data-dir"])
            .arg(dir.join("etcd"))
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{etcd_client}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{etcd_client}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{etcd_peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{etcd_peer}"),
                "--initial-cluster",
                &format!("etcd1=http://127.0.0.1:{etcd_peer}"),
            ])
            .stderr(std::fs::File::create(dir.join("etcd.log")).unwrap())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start etcd (apt-get install etcd-server)");
        let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/patroni");
        for i in 0..3 {
            let n = i + 1;
            let text = std::fs::read_to_string(format!("{deploy}/pg{n}.yml")).unwrap();
            let mut config = String::new();
            for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
                let line = if line.starts_with("  hosts: ") {
                    format!("  hosts: 127.0.0.1:{etcd_client}")
                } else if line.trim_start().starts_with("data_dir: ") {
                    format!("  data_dir: {}", dir.join(format!("pg{n}")).display())
                } else if line.trim_start().starts_with("pgpass: ") {
                    format!("  pgpass: {}", dir.join(format!("pgpass{n}")).display())
                } else {
                    line.replace(
                        &format!("10.0.0.1{n}:8008"),
                        &format!("127.0.0.1:{}", rest[i]),
                    )
                    .replace(
                        &format!("10.0.0.1{n}:5432"),
                        &format!("127.0.0.1:{}", pg[i]),
                    )
                    .replace("10.0.0.0/24", "127.0.0.1/32")
                };
                config.push_str(&line);
                config.push('\n');
            }
            std::fs::write(dir.join(format!("pg{n}.yml")), config).unwrap();
        }
        let chown = std::process::Command::new("chown")
            .args(["-R", "postgres:"])
            .arg(&dir)
            .status();
        assert!(chown.is_ok_and(|s| s.success()) || unsafe { libc::getuid() } != 0);
        let mut cluster = Patroni {
            dir,
            etcd,
            nodes: Vec::new(),
            rest,
            pg,
            _turn: turn,
        };
        for n in 1..=3 {
            let log = std::fs::File::create(cluster.dir.join(format!("patroni{n}.log"))).unwrap();
            let child = as_postgres("/usr/bin/patroni")
                .arg(cluster.dir.join(format!("pg{n}.yml")))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start patroni");
            cluster.nodes.push(Some(child));
        }
        cluster.wait_for(
            "a Patroni leader and two streaming replicas",
            Duration::from_secs(180),
            || {
                let leaders = (0..3).filter(|&i| rest_status(cluster.rest[i], "/primary") == 200);
                let replicas = (0..3).filter(|&i| rest_status(cluster.rest[i], "/replica") == 200);
                (leaders.count() == 1 && replicas.count() == 2).then_some(())
            },
        );
        cluster
    }

    /// [`common::wait_for`], but at most four probes a second (Patroni's REST API shares its
    /// interpreter with the HA loop being waited for), and a timeout shows what Patroni and
    /// etcd said: each node's own view (`/patroni`: role, state, WAL positions) and the end of
    /// each log without the REST API's tracebacks (the directory goes with the cluster).
    fn wait_for<T>(&self, what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
        let paced = || {
            let value = probe();
            if value.is_none() {
                std::thread::sleep(Duration::from_millis(250));
            }
            value
        };
        common::try_wait_for(limit, paced).unwrap_or_else(|| {
            let mut said = String::new();
            for (i, &port) in self.rest.iter().enumerate() {
                let view = ["/primary", "/replica", "/health"]
                    .map(|path| format!("{path} {}", rest_status(port, path)));
                let (_, patroni) = rest_get(port, "/patroni");
                said.push_str(&format!("pg{}: {}\n  {patroni}\n", i + 1, view.join(", ")));
            }
            let logs = (1..=3).map(|n| format!("patroni{n}.log"));
            for name in logs.chain(["etcd.log".to_string()]) {
                let text = std::fs::read_to_string(self.dir.join(&name)).unwrap_or_default();
                let lines: Vec<&str> = text
                    .lines()
                    .filter(|l| !l.starts_with(' ') && !l.starts_with("Traceback"))
                    .collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                said.push_str(&format!("--- {name}\n{}\n", tail.join("\n")));
            }
            panic!("timed out waiting for {what}\n{said}")
        })
    }

    /// Waits until each of `replicas` streams from `leader` and has replayed all it wrote.
    /// Patroni's REST says "replica" before a node streams, and Patroni promotes no replica
    /// more than `maximum_lag_on_failover` behind: a leader lost before its replicas stream
    /// has no successor, and a candidate promoted early loses what the leader acknowledged.
    /// The deployed `synchronous_mode` also makes one of them the leader's synchronous
    /// standby, which Patroni names within a `loop_wait` and records in etcd after the
    /// server applies it: until then a commit is acknowledged before any replica has it, and
    /// Patroni refuses to promote or switch over to any replica. Waits for etcd's word too
    /// (the standby's REST `/sync` answers 200).
    fn wait_streaming(&self, leader: usize, replicas: &[usize]) {
        let names: Vec<String> = replicas.iter().map(|r| format!("'pg{}'", r + 1)).collect();
        let streaming = format!(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name IN ({}) \
             AND state = 'streaming' AND replay_lsn >= pg_current_wal_lsn()",
            names.join(",")
        );
        let all = replicas.len().to_string();
        let what = format!(
            "{} streaming from pg{}, one of them its synchronous standby",
            names.join(" and "),
            leader + 1
        );
        let began = Instant::now();
        self.wait_for(&what, Duration::from_secs(90), || {
            let synchronous = replicas
                .iter()
                .any(|&r| rest_status(self.rest[r], "/sync") == 200);
            (synchronous && self.psql(leader, "postgres", &streaming) == all).then_some(())
        });
        eprintln!("patroni: {what} after {:?}", began.elapsed());
    }

    fn leader(&self) -> Option<usize> {
        (0..3).find(|&i| rest_status(self.rest[i], "/primary") == 200)
    }

    fn psql(&self, node: usize, database: &str, sql: &str) -> String {
        let out = std::process::Command::new(common::pg::psql_binary())
            .args(["-X", "-q", "-At", "-h", "127.0.0.1", "-U", "postgres"])
            .args(["-p", &self.pg[node].to_string(), "-d", database, "-c", sql])
            .env("PGPASSWORD", PATRONI_PASSWORD)
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql on pg{}: {sql}: {}",
            node + 1,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn postmaster(&self, node: usize) -> Option<i32> {
        let text = std::fs::read_to_string(self.dir.join(format!("pg{}/postmaster.pid", node + 1)))
            .ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// The machine of `node` lost: its Patroni, its postmaster and every backend, SIGKILLed.
    fn kill(&mut self, node: usize) {
        let postmaster = self.postmaster(node);
        if let Some(mut child) = self.nodes[node].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(pid) = postmaster {
            let mut pids = vec![pid];
            pids.extend(common::children_of(pid));
            for pid in pids {
                // SAFETY: killing a PostgreSQL process this test's cluster started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

impl Drop for Patroni {
    fn drop(&mut self) {
        for node in 0..3 {
            self.kill(node);
        }
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Patroni + etcd, three nodes, the deployed settings: the leader's machine is lost (Patroni,
/// postmaster and backends killed) under a write load through the server, which names all
/// three hosts. Writes answer fast 503s until Patroni promotes a replica (its lock's `ttl`),
/// then resume on their own; every acknowledged write is on the new leader.
#[test]
fn under_patroni_writes_resume_on_the_new_leader_after_the_leader_is_killed() {
    let mut patroni = Patroni::start();
    let leader = patroni.leader().expect("a leader");
    patroni.psql(leader, "postgres", "CREATE DATABASE coinbit");
    let replicas: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    patroni.wait_streaming(leader, &replicas);
    let hosts: Vec<String> = patroni
        .pg
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let url = format!(
        "postgres://postgres:{PATRONI_PASSWORD}@{}/coinbit",
        hosts.join(",")
    );
    let server = Server::start_with(
        ENGINE,
        &[
            "--replica-health-check-interval",
            "500",
            "--connect-timeout",
            "1000",
        ],
        &[("DATABASE_URL", &url)],
    );
    server.wait_for_status("every node up", |s| {
        let nodes = s["database"]["nodes"].as_array().unwrap();
        nodes.len() == 4 && nodes.iter().all(|n| n["state"] == "up")
    });
    let writers = Writers::start(&server, 3);
    let reader = Reader::start(&server);
    common::wait_for("writes before the kill", Duration::from_secs(15), || {
        (writers.count(|o| o.status == 201) >= 20).then_some(())
    });
    let killed = Instant::now();
    patroni.kill(leader);
    let new_leader = patroni.wait_for("a new leader", Duration::from_secs(120), || {
        patroni.leader().filter(|&l| l != leader)
    });
    let promoted = Instant::now();
    patroni.wait_for("writes to resume", Duration::from_secs(60), || {
        writers.succeeded_after(promoted).then_some(())
    });
    let resumed = Instant::now();
    let before = writers.count(|o| o.status == 201);
    common::wait_for("writes on the new leader", Duration::from_secs(15), || {
        (writers.count(|o| o.status == 201) >= before + 20).then_some(())
    });
    let outcomes = writers.finish();
    let (reads, failed_reads) = reader.finish();
    let refused: Vec<&Outcome> = outcomes.iter().filter(|o| o.status != 201).collect();
    let slowest = outcomes.iter().map(|o| o.took).max().unwrap();
    let unknown: Vec<String> = refused
        .iter()
        .filter(|o| o.code == "outcome_unknown")
        .map(|o| format!("'{}'", o.email))
        .collect();
    // Of the writes whose outcome was unknown, those that did commit.
    let unknown_committed = if unknown.is_empty() {
        "0".to_string()
    } else {
        patroni.psql(
            new_leader,
            "coinbit",
            &format!(
                "SELECT count(*) FROM users WHERE email IN ({})",
                unknown.join(",")
            ),
        )
    };
    eprintln!(
        "patroni: {} writes, {} refused ({} outcome_unknown, {unknown_committed} of them \
         committed); leader pg{} killed, pg{} leader {:?} later, writes resumed {:?} after that \
         ({:?} after the kill); slowest answer {:?}; {} of {reads} reads failed {:?}",
        outcomes.len(),
        refused.len(),
        unknown.len(),
        leader + 1,
        new_leader + 1,
        promoted - killed,
        resumed - promoted,
        resumed - killed,
        slowest,
        failed_reads.len(),
        &failed_reads[..failed_reads.len().min(5)],
    );
    // Losing the leader's host fails no read: another host answers.
    assert!(failed_reads.is_empty(), "{failed_reads:?}");
    for o in &refused {
        assert!(
            o.status == 503
                && ["no_primary", "outcome_unknown", "database_unavailable"]
                    .contains(&o.code.as_str()),
            "{o:?}"
        );
    }
    assert!(slowest < Duration::from_secs(3), "a write took {slowest:?}");
    let acknowledged: Vec<String> = outcomes
        .iter()
        .filter(|o| o.status == 201)
        .map(|o| format!("'{}'", o.email))
        .collect();
    let found = patroni.psql(
        new_leader,
        "coinbit",
        &format!(
            "SELECT count(*) FROM users WHERE email IN ({})",
            acknowledged.join(",")
        ),
    );
    assert_eq!(
        found,
        acknowledged.len().to_string(),
        "acknowledged writes lost"
    );

    // A planned switchover to the remaining replica: writes pause, then resume on their own.
    let candidate = (0..3).find(|&i| i != leader && i != new_leader).unwrap();
    patroni.wait_streaming(new_leader, &[candidate]);
    let writers = Writers::start_as(&server, 3, "s");
    common::wait_for(
        "writes before the switchover",
        Duration::from_secs(15),
        || (writers.count(|o| o.status == 201) >= 20).then_some(()),
    );
    let asked = Instant::now();
    let switchover = as_postgres("/usr/bin/patronictl")
        .arg("-c")
        .arg(patroni.dir.join(format!("pg{}.yml", new_leader + 1)))
        .args(["switchover", "--force", "--leader"])
        .arg(format!("pg{}", new_leader + 1))
        .arg("--candidate")
        .arg(format!("pg{}", candidate + 1))
        .output()
        .expect("run patronictl");
    assert!(switchover.status.success(), "{switchover:?}");
    patroni.wait_for("the candidate to lead", Duration::from_secs(60), || {
        (patroni.leader() == Some(candidate)).then_some(())
    });
    let led = Instant::now();
    common::wait_for(
        "writes after the switchover",
        Duration::from_secs(60),
        || writers.succeeded_after(led).then_some(()),
    );
    let outcomes = writers.finish();
    // The pause: the longest time between two writes answered 201 in a row.
    let mut done: Vec<Instant> = outcomes
        .iter()
        .filter(|o| o.status == 201)
        .map(|o| o.at + o.took)
        .collect();
    done.sort();
    let pause = done.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    let slowest = outcomes.iter().map(|o| o.took).max().unwrap();
    eprintln!(
        "patroni switchover: pg{} -> pg{} in {:?}; writes paused {pause:?}; slowest answer \
         {slowest:?}",
        new_leader + 1,
        candidate + 1,
        led - asked,
    );
    assert!(slowest < Duration::from_secs(3), "a write took {slowest:?}");
    assert!(pause < Duration::from_secs(30), "writes paused {pause:?}");
    let acknowledged: Vec<String> = outcomes
        .iter()
        .filter(|o| o.status == 201)
        .map(|o| format!("'{}'", o.email))
        .collect();
    let found = patroni.psql(
        candidate,
        "coinbit",
        &format!(
            "SELECT count(*) FROM users WHERE email IN ({})",
            acknowledged.join(",")
        ),
    );
    assert_eq!(
        found,
        acknowledged.len().to_string(),
        "acknowledged writes lost"
    );
}
