//! Durable jobs on a real primary (three replicas, shared with nothing else in this file's runs):
//! jobs written to the outbox survive a `kill -9` of the server and finish exactly once after a
//! restart; two servers on one database (under one `INSTANCE_ID`) never run the same job twice;
//! a backlog is claimed a part at a time; a user's welcome notification commits with the user;
//! without a database a durable enqueue answers 503.

mod common;

use std::time::Duration;

use common::pg::PgCluster;
use rstest::rstest;
use rstest_reuse::{self, apply};

use common::{engines, Client, Server};

fn start(engine: &str, cluster: &PgCluster, database: &str) -> Server {
    let env = cluster.env(database);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Server::start_with(
        engine,
        &["--shards", "2", "--debug-routes", "--pool-size", "4"],
        &env,
    )
}

/// Enqueues `count` durable jobs that sleep `ms` each; their outbox ids.
fn enqueue_sleeps(client: &mut Client, count: usize, ms: u64) -> Vec<i64> {
    (0..count)
        .map(|i| {
            let body = serde_json::json!({
                "kind": "debug.sleep",
                "payload": { "ms": ms, "effect": format!("durable-{i}") },
                "durable": true,
            })
            .to_string();
            let response = client.request(
                "POST",
                "/api/enterprise/jobs",
                &[("Content-Type", "application/json"), common::OPERATOR],
                body.as_bytes(),
            );
            assert_eq!(response.status, 202, "{}", response.text());
            let job = response.json()["job"].clone();
            assert_eq!(job["durable"], true, "{job}");
            // `<outbox id>-<32 hex digits of its random tag>`.
            let (id, tag) = job["id"].as_str().unwrap().split_once('-').unwrap();
            assert_eq!(tag.len(), 32, "{job}");
            id.parse::<i64>().expect("an outbox id")
        })
        .collect()
}

/// Writes `count` durable sleeps of `ms` straight to the outbox in one statement, so that they
/// land at once whatever the speed of the host; their effects are tagged `<tag>-<n>`.
fn insert_sleeps(cluster: &PgCluster, database: &str, count: usize, ms: u64, tag: &str) {
    cluster.psql(
        "primary",
        database,
        &format!(
            "INSERT INTO job_outbox (kind, payload) SELECT 'debug.sleep', \
             jsonb_build_object('ms', {ms}, 'effect', '{tag}-' || g) \
             FROM generate_series(1, {count}) g"
        ),
    );
}

fn count(cluster: &PgCluster, database: &str, sql: &str) -> usize {
    cluster.psql("primary", database, sql).parse().unwrap()
}

/// The outbox by status, attempts and last error: what a failed wait says.
fn outbox_summary(cluster: &PgCluster, database: &str) -> String {
    cluster.psql(
        "primary",
        database,
        "SELECT coalesce(string_agg(format('%s x%s attempts %s %s', status, n, attempts, \
         coalesce(last_error, '')), '; '), '') FROM (SELECT status, attempts, last_error, \
         count(*) AS n FROM job_outbox GROUP BY 1, 2, 3) s",
    )
}

/// Waits until every outbox row is done, then checks each has exactly one effect.
fn assert_each_done_once(cluster: &PgCluster, database: &str, jobs: usize, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    while count(
        cluster,
        database,
        "SELECT count(*) FROM job_outbox WHERE status = 'done'",
    ) != jobs
    {
        assert!(
            std::time::Instant::now() < deadline,
            "not every durable job done in {limit:?}: {}",
            outbox_summary(cluster, database)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let per_job = cluster.psql(
        "primary",
        database,
        "SELECT coalesce(string_agg(DISTINCT n::text, ','), '') FROM \
         (SELECT o.id, count(e.job_id) AS n FROM job_outbox o \
          LEFT JOIN job_effects e ON e.job_id = o.id GROUP BY o.id) c",
    );
    if per_job != "1" {
        let odd = cluster.psql(
            "primary",
            database,
            "SELECT string_agg(format('%s %s %s attempts=%s effects=%s', o.id, o.kind, o.status, \
             o.attempts, (SELECT count(*) FROM job_effects e WHERE e.job_id = o.id)), '; ') \
             FROM job_outbox o WHERE (SELECT count(*) FROM job_effects e WHERE e.job_id = o.id) <> 1",
        );
        panic!("effects per job {per_job:?}, each job's must be exactly 1: {odd}");
    }
}

#[apply(engines)]
fn durable_jobs_survive_kill_9_and_run_once_after_restart(#[case] engine: &str) {
    let cluster = PgCluster::shared();
    let db = cluster.create_database(&format!("durable_kill_{engine}"));
    let mut server = start(engine, cluster, &db);
    let mut client = server.connect();
    // A user's welcome notification is an outbox row of the user's own transaction. First:
    // registration waits on a password hash, long enough for 40 short jobs to finish.
    let body = common::users::registration("Ana", "ana@example.com");
    let created = client.request(
        "POST",
        "/api/users",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let ids = enqueue_sleeps(&mut client, 40, 100);
    assert_eq!(ids.len(), 40);
    common::wait_for("a claimed job", Duration::from_secs(10), || {
        let claimed = count(
            cluster,
            &db,
            "SELECT count(*) FROM job_outbox WHERE status = 'claimed'",
        );
        (claimed > 0).then_some(())
    });
    server.signal(9);
    server.wait_exit(Duration::from_secs(10));
    let unfinished = count(
        cluster,
        &db,
        "SELECT count(*) FROM job_outbox WHERE status <> 'done'",
    );
    assert!(unfinished > 0, "the kill left every job finished");

    let _restarted = start(engine, cluster, &db);
    // Claims of the killed process hold until their lease expires, then run again.
    assert_each_done_once(cluster, &db, 41, Duration::from_secs(60));
    assert_eq!(
        cluster.psql(
            "primary",
            &db,
            "SELECT e.result->>'channel' FROM job_effects e JOIN job_outbox o ON o.id = e.job_id \
             WHERE o.kind = 'notification'"
        ),
        "email"
    );
}

/// Both servers run some of the jobs by construction, not by timing: a server holds at most 256
/// claims (128 per shard, two shards) and its jobs sleep 2 s each, so of 300 jobs enqueued at
/// once it cannot hold them all, and the rest wait for the other server's next poll (every
/// 100 ms) rather than for the first to finish one. Both have the same `INSTANCE_ID`.
#[apply(engines)]
fn two_servers_on_one_database_never_run_a_job_twice(#[case] engine: &str) {
    const CLAIMS_PER_SERVER: usize = 2 * 128;
    const JOBS: usize = CLAIMS_PER_SERVER + 44;
    let cluster = PgCluster::shared();
    let db = cluster.create_database(&format!("durable_two_{engine}"));
    // Enough workers that every job a server holds runs at once.
    let workers = CLAIMS_PER_SERVER.to_string();
    let mut env = cluster.env(&db);
    env.push(("QUEUE_MEDIUM_WORKERS".into(), workers.clone()));
    env.push(("QUEUE_HIGH_WORKERS".into(), workers.clone()));
    env.push(("QUEUE_LOW_WORKERS".into(), workers.clone()));
    env.push(("QUEUE_BACKGROUND_WORKERS".into(), workers));
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let args = ["--shards", "2", "--debug-routes", "--pool-size", "4"];
    // One name for both, as two replicas of one container image may have: each start's own
    // nonce still tells their claims apart.
    env.push(("INSTANCE_ID", "replica"));
    let _first = Server::start_with(engine, &args, &env);
    let _second = Server::start_with(engine, &args, &env);
    // Written straight to the outbox, in one transaction: both servers find them at once.
    insert_sleeps(cluster, &db, JOBS, 2000, "two");
    assert_each_done_once(cluster, &db, JOBS, Duration::from_secs(120));
    let starts = count(
        cluster,
        &db,
        // A claim is `instance/nonce/shard`: one start is all but the shard.
        "SELECT count(DISTINCT regexp_replace(claimed_by, '/[^/]*$', '')) FROM job_effects \
         WHERE claimed_by LIKE 'replica/%/%'",
    );
    assert_eq!(starts, 2, "both servers ran durable jobs");
}

/// A job that runs past the 5 s lease keeps it (the dispatcher renews it while the job runs):
/// the second server on the database, polling all along, never claims it, so it is claimed
/// once, runs once (one side effect across both servers) and is done once.
#[apply(engines)]
fn a_job_running_past_its_lease_keeps_it_and_runs_once(#[case] engine: &str) {
    let cluster = PgCluster::shared();
    let db = cluster.create_database(&format!("durable_lease_{engine}"));
    let first = start(engine, cluster, &db);
    let second = start(engine, cluster, &db);
    let tag = format!("long-{engine}");
    let body = serde_json::json!({
        "kind": "debug.sleep",
        "class": "high",
        "timeout_ms": 30_000,
        "payload": { "ms": 7_000, "effect": tag },
        "durable": true,
    })
    .to_string();
    let enqueued = first.connect().request(
        "POST",
        "/api/enterprise/jobs",
        &[common::OPERATOR],
        body.as_bytes(),
    );
    assert_eq!(enqueued.status, 202, "{}", enqueued.text());
    assert_each_done_once(cluster, &db, 1, Duration::from_secs(60));
    assert_eq!(
        cluster.psql("primary", &db, "SELECT attempts FROM job_outbox"),
        "1",
        "{}",
        outbox_summary(cluster, &db)
    );
    let ran: u64 = [&first, &second]
        .iter()
        .map(|server| {
            server.operator_get("/debug/effects").json()[&tag]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(ran, 1, "the job's side effect ran {ran} times");
}

/// A backlog larger than what a shard may hold is claimed a part at a time: at no moment does
/// the server hold more than 128 claims per shard, and every job still finishes once.
#[apply(engines)]
fn a_backlog_is_claimed_a_part_at_a_time(#[case] engine: &str) {
    const PER_SHARD: usize = 128;
    let cluster = PgCluster::shared();
    let db = cluster.create_database(&format!("durable_backlog_{engine}"));
    let _server = start(engine, cluster, &db);
    let jobs = 600;
    // The backlog lands at once (one statement), so the claims meet the cap whatever the
    // speed of the host.
    insert_sleeps(cluster, &db, jobs, 40, "backlog");
    let mut most_claimed = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let row = cluster.psql(
            "primary",
            &db,
            "SELECT count(*) FILTER (WHERE status = 'claimed') || ',' || \
             count(*) FILTER (WHERE status = 'done') FROM job_outbox",
        );
        let (claimed, done) = row.split_once(',').expect("two counts");
        let (claimed, done): (usize, usize) = (claimed.parse().unwrap(), done.parse().unwrap());
        most_claimed = most_claimed.max(claimed);
        if done == jobs {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{done} of {jobs} done after 120 s: {}",
            outbox_summary(cluster, &db)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        most_claimed >= PER_SHARD,
        "the backlog never filled a shard's claims ({most_claimed} at most)"
    );
    assert!(
        most_claimed <= 2 * PER_SHARD,
        "{most_claimed} claims held at once by 2 shards"
    );
    assert_each_done_once(cluster, &db, jobs, Duration::from_secs(10));
}

/// A user and its welcome job's outbox row commit together even when the write runs alone (no
/// other write to group it with): while the outbox refuses rows, no user is created either.
#[apply(engines)]
fn a_user_is_not_created_when_its_welcome_job_cannot_be_written(#[case] engine: &str) {
    let cluster = PgCluster::shared();
    let db = cluster.create_database(&format!("durable_atomic_{engine}"));
    let server = start(engine, cluster, &db);
    let create = |email: &str| {
        let body = common::users::registration("Lone", email);
        server.connect().request(
            "POST",
            "/api/users",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    };
    cluster.psql(
        "primary",
        &db,
        "ALTER TABLE job_outbox ADD CONSTRAINT refuse_new_jobs CHECK (false) NOT VALID",
    );
    let refused = create("lone@example.com");
    assert!(
        refused.status >= 500,
        "{} {}",
        refused.status,
        refused.text()
    );
    let users = "SELECT count(*) FROM users WHERE email = 'lone@example.com'";
    assert_eq!(
        count(cluster, &db, users),
        0,
        "the user committed without its job"
    );
    cluster.psql(
        "primary",
        &db,
        "ALTER TABLE job_outbox DROP CONSTRAINT refuse_new_jobs",
    );
    let created = create("lone@example.com");
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(count(cluster, &db, users), 1);
    assert_eq!(
        count(
            cluster,
            &db,
            "SELECT count(*) FROM job_outbox WHERE kind = 'notification'"
        ),
        1
    );
}

#[apply(engines)]
fn without_a_database_a_durable_enqueue_answers_503(#[case] engine: &str) {
    let server = Server::start(engine, &["--shards", "1"]);
    let body = r#"{"kind": "analytics", "payload": {"event": "login"}, "durable": true}"#;
    let response = server.connect().request(
        "POST",
        "/api/enterprise/jobs",
        &[("Content-Type", "application/json"), common::OPERATOR],
        body.as_bytes(),
    );
    assert_eq!(response.status, 503, "{}", response.text());
    assert_eq!(response.error_code(), "durable_jobs_need_a_database");
}

/// A claim lost while its job still runs (its lease taken over, as when a loaded shard renews
/// too late) is claimed again; the new claim finds the run already in the queues under the
/// job's key and waits for it instead of starting a second one: the job ends done, with one
/// effect, once that run ends.
#[apply(engines)]
fn a_job_claimed_again_while_it_still_runs_finishes_once(#[case] engine: &str) {
    let cluster = PgCluster::shared();
    let db = cluster.create_database(&format!("durable_reclaim_{engine}"));
    let server = start(engine, cluster, &db);
    let id = enqueue_sleeps(&mut server.connect(), 1, 4_000)[0];
    let claimed = format!("SELECT count(*) FROM job_outbox WHERE id = {id} AND status = 'claimed'");
    common::wait_for("the job claimed", Duration::from_secs(15), || {
        (count(cluster, &db, &claimed) == 1).then_some(())
    });
    // Another owner's lease, already out: the running claim has lost it, and the next
    // poll claims the job again.
    cluster.psql(
        "primary",
        &db,
        &format!(
            "UPDATE job_outbox SET claimed_by = 'elsewhere/0', lease_until = now() - interval '1 s' \
             WHERE id = {id}"
        ),
    );
    let reclaimed = format!("SELECT count(*) FROM job_outbox WHERE id = {id} AND attempts = 2");
    common::wait_for("the job claimed again", Duration::from_secs(15), || {
        (count(cluster, &db, &reclaimed) == 1).then_some(())
    });
    assert_each_done_once(cluster, &db, 1, Duration::from_secs(30));
    let effects = server
        .connect()
        .request("GET", "/debug/effects", &[common::OPERATOR], b"")
        .json();
    assert_eq!(
        effects["durable-0"], 1,
        "the job ran once in memory: {effects}"
    );
}

fn enqueue_durable(
    client: &mut Client,
    body: &serde_json::Value,
    key_header: Option<&str>,
) -> common::Response {
    let headers: Vec<(&str, &str)> = key_header
        .map(|k| ("Idempotency-Key", k))
        .into_iter()
        .chain([common::OPERATOR])
        .collect();
    client.request(
        "POST",
        "/api/enterprise/jobs",
        &headers,
        body.to_string().as_bytes(),
    )
}

#[apply(engines)]
fn a_durable_job_keeps_its_key_class_attempts_and_timeout(#[case] engine: &str) {
    let cluster = PgCluster::shared();
    let db = cluster.create_database(&format!("durable_options_{engine}"));
    let server = start(engine, cluster, &db);
    let mut client = server.connect();

    // A key is deduplicated in the database: the second enqueue answers 200 with the first
    // job, whether the key comes in the body or the header.
    let keyed = serde_json::json!({
        "kind": "debug.sleep", "payload": {"ms": 1, "effect": "keyed"},
        "durable": true, "key": "order-7",
    });
    let first = enqueue_durable(&mut client, &keyed, None);
    assert_eq!(first.status, 202, "{}", first.text());
    let id = first.json()["job"]["id"].clone();
    let mut unkeyed = keyed.clone();
    unkeyed.as_object_mut().unwrap().remove("key");
    for again in [
        enqueue_durable(&mut client, &keyed, None),
        enqueue_durable(&mut client, &unkeyed, Some("order-7")),
    ] {
        assert_eq!(again.status, 200, "{}", again.text());
        assert_eq!(
            (&again.json()["job"]["id"], &again.json()["duplicate"]),
            (&id, &serde_json::json!(true))
        );
    }
    let rows = "SELECT count(*) FROM job_outbox WHERE kind = 'debug.sleep' AND payload->>'effect' = 'keyed'";
    assert_eq!(count(cluster, &db, rows), 1);
    // The id the API showed finds the job; the same outbox id with another tag, or alone, does
    // not: no one reads a durable job by guessing its id.
    let id = id.as_str().unwrap().to_string();
    let found = server.operator_get(&format!("/api/enterprise/jobs/{id}"));
    assert_eq!(found.status, 200, "{}", found.text());
    assert_eq!(
        found.json()["job"]["kind"],
        "debug.sleep",
        "{}",
        found.text()
    );
    let (outbox_id, tag) = id.split_once('-').unwrap();
    let other_tag: String = tag
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    let guessed = server.operator_get(&format!("/api/enterprise/jobs/{outbox_id}-{other_tag}"));
    assert_eq!(
        (guessed.status, guessed.error_code().as_str()),
        (404, "job_not_found")
    );
    let bare = server.operator_get(&format!("/api/enterprise/jobs/{outbox_id}"));
    assert_eq!(bare.status, 400, "{}", bare.text());
    // Without the operator's credentials, not even the right id is found.
    let anonymous = server.get(&format!("/api/enterprise/jobs/{id}"));
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());

    // Its own class, attempts and timeout: one attempt of 200 ms at most, in high.
    let limited = serde_json::json!({
        "kind": "debug.sleep", "payload": {"ms": 5000, "effect": "limited"},
        "durable": true, "class": "high", "max_attempts": 1, "timeout_ms": 200,
    });
    let response = enqueue_durable(&mut client, &limited, None);
    assert_eq!(response.status, 202, "{}", response.text());
    let dead = "SELECT count(*) FROM job_outbox WHERE payload->>'effect' = 'limited' \
                AND status = 'dead' AND last_error LIKE '%200 ms%'";
    common::wait_for(
        "the limited job to die at its timeout",
        Duration::from_secs(30),
        || (count(cluster, &db, dead) == 1).then_some(()),
    );
    common::wait_for(
        "the high class to count the timeout",
        Duration::from_secs(10),
        || {
            let high =
                server.get("/api/enterprise/queues/status").json()["classes"]["high"].clone();
            (high["timed_out"] == 1 && high["retried"] == 0).then_some(())
        },
    );

    // jsonb has no NUL: a 400, not a database error.
    let nul =
        serde_json::json!({"kind": "analytics", "payload": {"event": "a\u{0}b"}, "durable": true});
    let response = enqueue_durable(&mut client, &nul, None);
    assert_eq!(
        (response.status, response.error_code().as_str()),
        (400, "bad_request"),
        "{}",
        response.text()
    );
}

/// Leases that run out in the middle of a backlog (as when renewals queue behind other writes
/// on a loaded host), again and again: claims are taken again while their first run is queued,
/// running or being recorded, and the queue loops are busy throughout. The backlog still drains,
/// each job done once. (On may, beside `stress-ng --cpu 2`, this stalled a shard's queue loop for
/// good when may lost the timer of one of its parks: see `Wakeups::park`.)
#[apply(engines)]
fn a_backlog_drains_when_its_leases_run_out_again_and_again(#[case] engine: &str) {
    let cluster = PgCluster::shared();
    let db = cluster.create_database(&format!("durable_lost_leases_{engine}"));
    let _server = start(engine, cluster, &db);
    let jobs = 400;
    insert_sleeps(cluster, &db, jobs, 40, "lost-lease");
    let claimed = "SELECT count(*) FROM job_outbox WHERE status = 'claimed'";
    let done = "SELECT count(*) FROM job_outbox WHERE status = 'done'";
    // Four times, so that no job passes its claims (five) and is marked dead.
    for _ in 0..4 {
        common::wait_for("some jobs claimed", Duration::from_secs(30), || {
            (count(cluster, &db, claimed) > 0 || count(cluster, &db, done) == jobs).then_some(())
        });
        // SKIP LOCKED: rows the server is writing right now are left to the next round, so
        // this statement never waits on the server's outcome writes (a plain UPDATE of every
        // claimed row could deadlock with one of them and fail the test on a loaded host).
        cluster.psql(
            "primary",
            &db,
            "UPDATE job_outbox SET lease_until = now() - interval '1 s' WHERE id IN \
             (SELECT id FROM job_outbox WHERE status = 'claimed' FOR UPDATE SKIP LOCKED)",
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_each_done_once(cluster, &db, jobs, Duration::from_secs(60));
}
