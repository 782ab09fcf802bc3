//! The shards' own database connections (`DB_READ_DRIVER=wire`, glommio): the read of
//! `GET /api/users/{id}` answers what the DB I/O threads answer, many reads at once share one
//! connection per shard and node, and a stopped replica fails no read. On may the setting stops
//! start-up with a clear message. Each test has a cluster of its own (they take turns).

mod common;

use std::time::Duration;

use common::pg::PgCluster;
use common::users::{create_user, user_id, write_then_read_own_write, Readers};
use common::{wait_for, Client, Server, OPERATOR};

/// A glommio server reading through `driver`, quick to notice a lost node, its durable jobs idle.
fn start_server(cluster: &PgCluster, db: &str, driver: &str, args: &[&str]) -> Server {
    let args: Vec<&str> = ["--durable-jobs-poll-interval", "0"]
        .iter()
        .chain(args)
        .copied()
        .collect();
    cluster.start_server("glommio", db, &[("DB_READ_DRIVER", driver)], &args)
}

/// The wire connections open on `node` to `db` (their `application_name`).
fn wire_connections(cluster: &PgCluster, node: &str, db: &str) -> usize {
    cluster
        .psql(
            node,
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name = 'coinbit-wire' AND datname = '{db}'"
            ),
        )
        .parse()
        .unwrap()
}

fn wire_connections_on_replicas(cluster: &PgCluster, db: &str) -> usize {
    ["replica1", "replica2", "replica3"]
        .iter()
        .map(|r| wire_connections(cluster, r, db))
        .sum()
}

/// Creates `count` users; their ids, once every replica has them.
fn users_on_every_replica(
    server: &Server,
    cluster: &PgCluster,
    db: &str,
    count: usize,
) -> Vec<i64> {
    let mut client = server.connect();
    let ids: Vec<i64> = (0..count)
        .map(|i| {
            let created = create_user(
                &mut client,
                &format!("Wire {i}"),
                &format!("wire{i}@example.com"),
            );
            assert_eq!(created.status, 201, "{}", created.text());
            user_id(&created)
        })
        .collect();
    let last = ids.last().unwrap();
    cluster.wait_on_every_replica(
        "the users",
        db,
        &format!("SELECT count(*) = 1 FROM users WHERE id = {last}"),
    );
    ids
}

fn read(client: &mut Client, path: &str) -> (u16, String) {
    let response = client.request("GET", path, &[OPERATOR], b"");
    (response.status, response.text())
}

#[test]
fn wire_reads_answer_what_the_threads_answer() {
    let cluster = PgCluster::start(3);
    let db = cluster.create_database("wire_same");
    let threads = start_server(&cluster, &db, "threads", &[]);
    let ids = users_on_every_replica(&threads, &cluster, &db, 5);
    let wire = start_server(&cluster, &db, "wire", &[]);
    let (mut by_threads, mut by_wire) = (threads.connect(), wire.connect());
    let missing = ids.iter().max().unwrap() + 1000;
    for id in ids.iter().copied().chain([missing]) {
        let path = format!("/api/users/{id}");
        // Every replica in turn answers (weighted: 3/3/2): each read three times over.
        for _ in 0..3 {
            let expected = read(&mut by_threads, &path);
            assert_eq!(read(&mut by_wire, &path), expected, "{path}");
            assert_eq!(
                expected.0,
                if id == missing { 404 } else { 200 },
                "{expected:?}"
            );
        }
    }
    // Read-your-writes over the wire: each new user read back at once with its X-Min-LSN (a
    // replica that has replayed it, or the primary) is the new row.
    let mut client = wire.connect();
    for i in 0..5 {
        write_then_read_own_write(&mut client, "Fresh", &format!("fresh{i}@example.com"));
    }
    // The threads' server opened no wire connection; the wire server's reads went over its own.
    drop(threads);
    assert!(
        wire_connections_on_replicas(&cluster, &db) >= 1,
        "the wire server's reads took no wire connection"
    );
}

#[test]
fn many_reads_at_once_pipeline_on_one_connection_per_node() {
    let cluster = PgCluster::start(3);
    let db = cluster.create_database("wire_pipelined");
    let server = start_server(&cluster, &db, "wire", &["--shards", "1"]);
    // Few users (a registration hashes its password: slow on a loaded host), many readers.
    let ids = users_on_every_replica(&server, &cluster, &db, 8);
    let addr = server.addr;
    let missing = ids.iter().max().unwrap() + 1000;
    // 32 clients at once, each reading one user, and 4 reading an id with no user (the reads
    // that wait for a connection go out together, so found and missing ids share batches):
    // every answer must be that user's row (a reply matched to the wrong request would show
    // another user's email), and the missing id a 404.
    std::thread::scope(|scope| {
        for client in 0..36 {
            let (i, id) = match client {
                32.. => (None, missing),
                _ => (Some(client % ids.len()), ids[client % ids.len()]),
            };
            scope.spawn(move || {
                let mut client = Client::connect(addr);
                for _ in 0..50 {
                    let response =
                        client.request("GET", &format!("/api/users/{id}"), &[OPERATOR], b"");
                    let Some(i) = i else {
                        assert_eq!(response.status, 404, "{}", response.text());
                        continue;
                    };
                    assert_eq!(response.status, 200, "{}", response.text());
                    assert_eq!(response.json()["email"], format!("wire{i}@example.com"));
                }
            });
        }
    });
    // One shard: at most one connection per replica carried the 1,800 reads (a backend of a
    // connection closed meanwhile may take a moment to leave pg_stat_activity).
    wait_for(
        "one wire connection per replica at most",
        Duration::from_secs(10),
        || {
            (1..=3)
                .contains(&wire_connections_on_replicas(&cluster, &db))
                .then_some(())
        },
    );
}

#[test]
fn a_stopped_replica_fails_no_wire_read_and_returns() {
    let cluster = PgCluster::start(3);
    let db = cluster.create_database("wire_failover");
    let server = start_server(
        &cluster,
        &db,
        "wire",
        &["--replica-strategy", "round-robin"],
    );
    let id = users_on_every_replica(&server, &cluster, &db, 1)[0];
    let readers = Readers::start(&server, &cluster, &db, id, 4);
    let node = |status: &serde_json::Value, name: &str| -> serde_json::Value {
        status["database"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .unwrap()
            .clone()
    };
    server.wait_for_status("reads on replica2", |s| {
        node(s, "replica2")["requests"].as_u64() > Some(10)
    });
    cluster.stop("replica2");
    server.wait_for_status("replica2 ejected", |s| {
        node(s, "replica2")["state"] == "ejected"
    });
    cluster.start_node("replica2");
    let back = server.wait_for_status("replica2 back", |s| node(s, "replica2")["state"] == "up");
    let requests_back = node(&back, "replica2")["requests"].as_u64().unwrap();
    server.wait_for_status("replica2 serving again", |s| {
        node(s, "replica2")["requests"].as_u64().unwrap() > requests_back + 10
    });
    readers.finish_without_failures();
    assert!(
        wire_connections(&cluster, "replica2", &db) >= 1,
        "replica2 was read over the wire again"
    );
}

#[test]
fn on_may_the_wire_driver_stops_start_up_with_a_clear_message() {
    let out = common::binary()
        .args([
            "--port",
            "0",
            "--bind-address",
            "127.0.0.1",
            "--engine",
            "may",
        ])
        .env("DB_READ_DRIVER", "wire")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for word in ["DB_READ_DRIVER=wire", "glommio", "may"] {
        assert!(stderr.contains(word), "`{word}` missing from: {stderr}");
    }
}
