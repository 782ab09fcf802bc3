//! The database tier when nodes fail: each test stops nodes or pauses replay, so each engine's
//! run of it has a cluster of its own (a real primary with real streaming replicas); the runs
//! take turns (tests/common/pg.rs) and each leaves every node up again.

mod common;

use std::time::{Duration, Instant};

use common::pg::PgCluster;
use common::users::{create_user, user_id, write_then_read_own_write, Readers};
use rstest::rstest;
use rstest_reuse::{self, apply};

use common::{engines, Client, Server, OPERATOR};

fn wait_for_every_node_up(server: &Server) {
    server.wait_for_status("every node up", |s| {
        s["database"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["state"] == "up")
    });
}

fn node<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["database"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap()
}

#[apply(engines)]
fn a_stopped_replica_is_ejected_without_failing_a_read_and_returns(#[case] engine: &str) {
    let cluster = PgCluster::start(3);
    let db = cluster.create_database(&format!("failover_{engine}"));
    let server = cluster.start_server(engine, &db, &[], &["--replica-strategy", "round-robin"]);
    let created = create_user(&mut server.connect(), "Fail", "seen@example.com");
    assert_eq!(created.status, 201, "{}", created.text());
    let id = user_id(&created);
    std::thread::sleep(Duration::from_millis(300));
    let readers = Readers::start(&server, &cluster, &db, id, 4);
    std::thread::sleep(Duration::from_millis(300));
    cluster.stop("replica2");
    // Out of rotation first by its breaker (failed reads) or its health check, whichever
    // comes first; then the failed health check ejects it.
    let out = server.wait_for_status("replica2 out", |s| node(s, "replica2")["state"] != "up");
    let served_while_down = node(&out, "replica2")["requests"].as_u64().unwrap();
    server.wait_for_status("replica2 ejected", |s| {
        node(s, "replica2")["state"] == "ejected"
            && node(s, "replica2")["ejections"].as_u64() >= Some(1)
    });
    std::thread::sleep(Duration::from_millis(800));
    let still_down = server.cluster_status();
    assert_eq!(
        node(&still_down, "replica2")["state"],
        "ejected",
        "{still_down}"
    );
    // Only requests already queued when it went down may still be counted (and failed over).
    assert!(
        node(&still_down, "replica2")["requests"].as_u64().unwrap() <= served_while_down + 8,
        "{still_down}"
    );
    cluster.start_node("replica2");
    let back = server.wait_for_status("replica2 back", |s| node(s, "replica2")["state"] == "up");
    let requests_back = node(&back, "replica2")["requests"].as_u64().unwrap();
    server.wait_for_status("replica2 serving again", |s| {
        node(s, "replica2")["requests"].as_u64().unwrap() > requests_back + 10
    });
    readers.finish_without_failures();
}

#[apply(engines)]
fn lag_past_the_limit_ejects_but_never_the_last_replica(#[case] engine: &str) {
    let cluster = PgCluster::start(3);
    let db = cluster.create_database(&format!("failover_{engine}"));
    let server = cluster.start_server(engine, &db, &[], &["--max-replica-lag", "64kB"]);
    // Writes from elsewhere make WAL the paused replicas cannot replay.
    let write_wal = || {
        cluster.psql(
            "primary",
            &db,
            "CREATE TABLE IF NOT EXISTS filler AS SELECT 1 AS x; \
                     INSERT INTO filler SELECT generate_series(1, 20000)",
        );
    };
    wait_for_every_node_up(&server);
    cluster.psql("replica1", &db, "SELECT pg_wal_replay_pause()");
    write_wal();
    let status = server.wait_for_status("replica1 ejected for lag", |s| {
        node(s, "replica1")["state"] == "ejected"
    });
    let replica1 = node(&status, "replica1");
    assert!(
        replica1["last_reason"].as_str().unwrap().contains("lag"),
        "{replica1}"
    );
    assert!(
        replica1["lag_bytes"].as_u64().unwrap() > 64 * 1024,
        "{replica1}"
    );
    // The replicas still replaying serve on (one that fell behind for a moment on a loaded
    // host is ejected for that moment and comes back at its next probe).
    server.wait_for_status("replica2 and replica3 up", |s| {
        node(s, "replica2")["state"] == "up" && node(s, "replica3")["state"] == "up"
    });

    // Pause the other two: one more goes, the last routable one stays.
    cluster.psql("replica2", &db, "SELECT pg_wal_replay_pause()");
    cluster.psql("replica3", &db, "SELECT pg_wal_replay_pause()");
    write_wal();
    let status = server.wait_for_status("a second replica ejected", |s| {
        ["replica2", "replica3"]
            .iter()
            .any(|r| node(s, r)["state"] == "ejected")
    });
    std::thread::sleep(Duration::from_millis(1_000));
    let status_later = server.cluster_status();
    let up: Vec<&str> = ["replica1", "replica2", "replica3"]
        .into_iter()
        .filter(|r| node(&status_later, r)["state"] == "up")
        .collect();
    assert_eq!(
        up.len(),
        1,
        "lag must not eject the last replica: {status} {status_later}"
    );

    for replica in ["replica1", "replica2", "replica3"] {
        cluster.psql(replica, &db, "SELECT pg_wal_replay_resume()");
    }
    server.wait_for_status("every replica back", |s| {
        s["database"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["state"] == "up")
    });
}

#[apply(engines)]
fn with_the_primary_stopped_writes_fail_fast_and_reads_go_on(#[case] engine: &str) {
    let cluster = PgCluster::start(2);
    let db = cluster.create_database(&format!("failover_{engine}"));
    let server = cluster.start_server(engine, &db, &[], &[]);
    let mut client = server.connect();
    let created = create_user(&mut client, "Fail", "before@example.com");
    assert_eq!(created.status, 201, "{}", created.text());
    let id = user_id(&created);
    std::thread::sleep(Duration::from_millis(300));

    cluster.stop("primary");
    for i in 0..20 {
        let started = Instant::now();
        let write = create_user(&mut client, "Fail", &format!("down{i}@example.com"));
        let took = started.elapsed();
        assert_eq!(write.status, 503, "write {i}: {}", write.text());
        // Refused, not hung: without the shut-out primary's fast 503 a write would wait on
        // its node's reconnects; the bound leaves room for a loaded host (the registration's
        // password hash runs first, on a niced thread).
        assert!(took < Duration::from_secs(5), "write {i} took {took:?}");
        let read = client.request("GET", &format!("/api/users/{id}"), &[OPERATOR], b"");
        assert_eq!(
            read.status,
            200,
            "read {i} while the primary is down: {}",
            read.text()
        );
    }
    let status =
        server.wait_for_status("primary shut out", |s| node(s, "primary")["state"] != "up");
    // Degraded, not passing: the database check warns (below); the 20 refused writes may also
    // raise the error-rate alert, which makes the whole status fail.
    assert!(
        status["status"] == "warn" || status["status"] == "fail",
        "{status}"
    );
    let health = server.get("/health").json();
    assert_eq!(
        health["checks"]["database"][0]["status"], "warn",
        "{health}"
    );
    // Shut out: a write now fails without waiting on the network, saying no primary is known.
    // (A durable job, not a registration, whose password hash would come first.)
    let job = br#"{"kind":"notification","durable":true,"payload":{"user_id":1,"channel":"email","message":"m"}}"#;
    let started = Instant::now();
    let write = client.request(
        "POST",
        "/api/enterprise/jobs",
        &[OPERATOR, ("Content-Type", "application/json")],
        job,
    );
    assert_eq!(
        (write.status, write.error_code().as_str()),
        (503, "no_primary")
    );
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );

    cluster.start_node("primary");
    common::wait_for("writes to succeed again", Duration::from_secs(15), || {
        let write = create_user(
            &mut Client::connect(server.addr),
            "Fail",
            &format!("back{}@example.com", rand_suffix()),
        );
        (write.status == 201).then_some(())
    });
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A read that presents a commit its replica has not replayed waits up to
/// `--read-your-writes-wait` with a handful of looks at the replay position (not one every
/// half millisecond), then reads the primary: still the fresh row.
#[apply(engines)]
fn a_read_waiting_for_replay_looks_a_few_times_then_reads_the_primary(#[case] engine: &str) {
    const READS: u64 = 5;
    let cluster = PgCluster::start(3);
    let db = cluster.create_database(&format!("replay_wait_{engine}"));
    let server = cluster.start_server(
        engine,
        &db,
        &[],
        &[
            "--max-replica-lag",
            "1GB,3600s",
            "--read-your-writes-wait",
            "200",
        ],
    );
    wait_for_every_node_up(&server);
    let replicas = ["replica1", "replica2", "replica3"];
    let replay_checks = |status: &serde_json::Value| -> u64 {
        replicas
            .iter()
            .map(|r| {
                node(status, r)["replay_checks"]
                    .as_u64()
                    .expect("replay_checks")
            })
            .sum()
    };
    let before = replay_checks(&server.cluster_status());
    for replica in replicas {
        cluster.psql(replica, &db, "SELECT pg_wal_replay_pause()");
    }
    let mut client = server.connect();
    for i in 0..READS {
        write_then_read_own_write(&mut client, "Fail", &format!("wait{i}@example.com"));
    }
    let looks = replay_checks(&server.cluster_status()) - before;
    for replica in replicas {
        cluster.psql(replica, &db, "SELECT pg_wal_replay_resume()");
    }
    // Each read waited on a replica: 1 ms, then 2, 4 ... up to 200 ms is 9 looks at most.
    assert!(
        (READS..=READS * 10).contains(&looks),
        "{looks} looks at the replay position for {READS} waiting reads"
    );
}

/// Stops (SIGSTOP) a node's postmaster and every backend it forked, so that the node still
/// takes TCP connections (the kernel completes them) but answers nothing: a host that hangs, not
/// one that refuses. Sends SIGCONT when dropped, whatever the test's outcome.
struct Frozen {
    pids: Vec<i32>,
}

impl Frozen {
    fn node(cluster: &PgCluster, node: &str) -> Frozen {
        let pid_file = cluster.dir.join(node).join("postmaster.pid");
        let text = std::fs::read_to_string(&pid_file).expect("postmaster.pid");
        let postmaster: i32 = text.lines().next().unwrap().trim().parse().unwrap();
        let mut pids = vec![postmaster];
        pids.extend(common::children_of(postmaster));
        for &pid in &pids {
            // SAFETY: stopping a PostgreSQL process this test's cluster started.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
        }
        Frozen { pids }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for &pid in &self.pids {
            // SAFETY: resuming a process this test stopped.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
    }
}

/// A replica that hangs (takes connections, answers nothing) costs no read, stalls no shard and
/// no health check: it is ejected, the reads go on elsewhere, and no shard misses a heartbeat.
#[apply(engines)]
fn a_replica_that_hangs_is_ejected_without_stalling_a_shard_or_failing_a_read(
    #[case] engine: &str,
) {
    let cluster = PgCluster::start(3);
    let db = cluster.create_database(&format!("hang_{engine}"));
    let server = cluster.start_server(
        engine,
        &db,
        &[],
        &[
            "--replica-strategy",
            "round-robin",
            "--statement-timeout",
            "1000",
            "--heartbeat-timeout",
            "4000",
        ],
    );
    let created = create_user(&mut server.connect(), "Fail", "hang@example.com");
    assert_eq!(created.status, 201, "{}", created.text());
    let id = user_id(&created);
    wait_for_every_node_up(&server);
    let readers = Readers::start(&server, &cluster, &db, id, 4);
    std::thread::sleep(Duration::from_millis(300));
    let frozen = Frozen::node(&cluster, "replica2");
    server.wait_for_status("the hung replica2 ejected", |s| {
        node(s, "replica2")["state"] == "ejected"
    });
    // Reads go on past the heartbeat timeout while it hangs.
    std::thread::sleep(Duration::from_millis(5_000));
    drop(frozen);
    server.wait_for_status("replica2 back", |s| node(s, "replica2")["state"] == "up");
    let (reads, failures) = readers.finish();
    let silent: Vec<String> = server
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("sent no heartbeat"))
        .collect();
    assert!(silent.is_empty(), "{silent:?}");
    assert!(reads > 100, "only {reads} reads");
    assert!(
        failures.is_empty(),
        "{} of {reads} reads failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

/// `GET /api/auth/me` reads the caller's row as `GET /api/users/{id}` does, from a replica; when
/// the replicas have not replayed the registration yet, the primary answers: 200, never a 401
/// for a user who exists.
#[apply(engines)]
fn me_reads_the_primary_when_the_replicas_lack_the_user(#[case] engine: &str) {
    let cluster = PgCluster::start(3);
    let db = cluster.create_database(&format!("me_behind_{engine}"));
    let server = cluster.start_server(engine, &db, &[], &["--max-replica-lag", "1GB,3600s"]);
    wait_for_every_node_up(&server);
    // The server's migrations replayed first: paused before them, a replica lacks the table,
    // and no read goes to it at all (the next test).
    cluster.wait_replicas_caught_up(&db);
    let replicas = ["replica1", "replica2", "replica3"];
    for replica in replicas {
        cluster.psql(replica, &db, "SELECT pg_wal_replay_pause()");
    }
    let mut client = server.connect();
    let created = create_user(&mut client, "Me", "me@example.com");
    assert_eq!(created.status, 201, "{}", created.text());
    let body = serde_json::json!({"email": "me@example.com", "password": common::users::PASSWORD});
    let login = client.request("POST", "/api/auth/login", &[], body.to_string().as_bytes());
    assert_eq!(login.status, 200, "{}", login.text());
    let auth = format!("Bearer {}", login.json()["token"].as_str().unwrap());
    for _ in 0..6 {
        let me = client.request("GET", "/api/auth/me", &[("Authorization", &auth)], b"");
        assert_eq!(me.status, 200, "{}", me.text());
        assert_eq!(me.json()["email"], "me@example.com");
    }
    for replica in replicas {
        let seen = cluster.psql(replica, &db, "SELECT count(*) FROM users");
        assert_eq!(
            seen, "0",
            "{replica} replayed the registration: the test saw no lag"
        );
        cluster.psql(replica, &db, "SELECT pg_wal_replay_resume()");
    }
}

/// A server that migrates while the replicas have not replayed its migrations reads from the
/// primary until they have: no read meets a replica without the tables (a 500 saying "relation
/// does not exist"). Once they replay, they serve reads again within the bound, though the
/// health check's rounds are a minute apart: such a replica is looked at every tick.
#[apply(engines)]
fn reads_leave_a_replica_alone_until_it_has_replayed_the_migrations(#[case] engine: &str) {
    let cluster = PgCluster::start(3);
    let db = cluster.create_database(&format!("schema_behind_{engine}"));
    let replicas = ["replica1", "replica2", "replica3"];
    for replica in replicas {
        cluster.psql(replica, &db, "SELECT pg_wal_replay_pause()");
    }
    let env = cluster.env(&db);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let args = [
        "--pool-size",
        "2",
        "--replica-health-check-interval",
        "60000",
        "--max-replica-lag",
        "1GB,3600s",
    ];
    let server = Server::start_with(engine, &args, &env);
    // The status says why they take no reads.
    server.wait_for_status("every replica behind the schema", |s| {
        replicas
            .iter()
            .all(|r| node(s, r)["state"] == "behind-schema")
    });
    let mut client = server.connect();
    let created = create_user(&mut client, "Early", "early@example.com");
    assert_eq!(created.status, 201, "{}", created.text());
    let path = format!("/api/users/{}", user_id(&created));
    for _ in 0..20 {
        let read = client.request("GET", &path, &[OPERATOR], b"");
        assert_eq!(read.status, 200, "{}", read.text());
    }
    let status = server.cluster_status();
    for replica in replicas {
        assert_eq!(node(&status, replica)["requests"], 0, "{status}");
        let table = cluster.psql(replica, &db, "SELECT to_regclass('users') IS NULL");
        assert_eq!(
            table, "t",
            "{replica} replayed the migrations: the test saw no lag"
        );
    }
    for replica in replicas {
        cluster.psql(replica, &db, "SELECT pg_wal_replay_resume()");
    }
    wait_for_every_node_up(&server);
    common::wait_for("reads on the replicas", Duration::from_secs(20), || {
        let read = client.request("GET", &path, &[OPERATOR], b"");
        assert_eq!(read.status, 200, "{}", read.text());
        let status = server.cluster_status();
        let served: u64 = replicas
            .iter()
            .map(|r| node(&status, r)["requests"].as_u64().unwrap())
            .sum();
        (served > 0).then_some(())
    });
}
