//! The operator routes behind their access, over real sockets on both engines: job enqueue,
//! job status, dead letters and replay, and every debug route answer only the operator token
//! (`OPERATOR_TOKEN`) or an operator, manager or admin session; anonymous callers, wrong tokens
//! and plain users are refused with the JSON envelope and change nothing. Job ids cannot be
//! guessed; the reports follow `METRICS_ACCESS`; the probes stay open; `coinbit grant-role`
//! makes a registered user staff.
//!
//! Jobs carry no owner (only operators enqueue and read them), so there is no user's own job
//! for another user to read: a plain user reads none at all.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::pg::PgCluster;
use rstest::rstest;
use rstest_reuse::{self, apply};
use serde_json::{json, Value};

use common::{engines, Client, Response, Server, OPERATOR};

const PATIENCE: Duration = Duration::from_secs(30);
const WRONG: (&str, &str) = (
    "Authorization",
    "Bearer not-the-operator-token-0123456789abcdef",
);

/// Every operator route: method, path, body.
fn operator_routes(job: &str) -> Vec<(&'static str, String, Vec<u8>)> {
    let enqueue = json!({"kind": "analytics", "payload": {"event": "locked"}}).to_string();
    vec![
        ("POST", "/api/enterprise/jobs".into(), enqueue.into_bytes()),
        ("GET", format!("/api/enterprise/jobs/{job}"), Vec::new()),
        ("GET", "/api/enterprise/jobs/dead".into(), Vec::new()),
        (
            "POST",
            format!("/api/enterprise/jobs/dead/{job}/replay"),
            Vec::new(),
        ),
        ("POST", "/debug/crash-shard".into(), Vec::new()),
        ("POST", "/debug/stall-shard?ms=5000".into(), Vec::new()),
        ("GET", "/debug/sleep?ms=1".into(), Vec::new()),
        ("GET", "/debug/shard".into(), Vec::new()),
        ("GET", "/debug/effects".into(), Vec::new()),
    ]
}

fn assert_refused(response: &Response, status: u16, code: &str, what: &str) {
    assert_eq!(response.status, status, "{what}: {}", response.text());
    assert_eq!(response.error_code(), code, "{what}: {}", response.text());
}

/// Jobs enqueued on any shard so far, from the queues report.
fn enqueued(server: &Server) -> u64 {
    let status = server.operator_get("/api/enterprise/queues/status").json();
    status["classes"]
        .as_object()
        .unwrap()
        .values()
        .map(|class| class["enqueued"].as_u64().unwrap_or(0))
        .sum()
}

/// Waits until the reports count `refused` enqueues refused (4xx), then the jobs enqueued in
/// all: had a refused one been enqueued, the same report would count it.
fn enqueued_after_refusals(server: &Server, refused: u64) -> u64 {
    common::wait_for("the refusals reported", PATIENCE, || {
        let metrics = server.operator_get("/api/enterprise/metrics").json();
        let counted = metrics["routes"]["jobs_enqueue"]["4xx"]
            .as_u64()
            .unwrap_or(0);
        (counted >= refused).then_some(())
    });
    enqueued(server)
}

fn enqueue_as_operator(client: &mut Client, body: &Value) -> String {
    let response = client.request(
        "POST",
        "/api/enterprise/jobs",
        &[OPERATOR],
        body.to_string().as_bytes(),
    );
    assert_eq!(response.status, 202, "{}", response.text());
    response.json()["job"]["id"].as_str().unwrap().to_string()
}

/// The same id with every digit of its random tag changed: a well-formed guess.
fn guessed(id: &str) -> String {
    let (numbers, tag) = id.split_once('-').unwrap();
    let other: String = tag
        .chars()
        .map(|c| if c == 'f' { '0' } else { 'f' })
        .collect();
    format!("{numbers}-{other}")
}

#[apply(engines)]
fn without_a_database_only_the_operator_token_reaches_the_operator_routes(#[case] engine: &str) {
    let server = Server::start(engine, &["--shards", "2", "--debug-routes"]);
    let mut client = server.connect();
    let id = enqueue_as_operator(
        &mut client,
        &json!({"kind": "debug.fail", "max_attempts": 1, "payload": {"times": 5}}),
    );
    // In memory: `shard.generation.seq-` and 128 random bits as 32 hex digits.
    let tag = id.split_once('-').unwrap().1;
    assert_eq!(tag.len(), 32, "{id}");
    common::wait_for("the job dead-lettered", PATIENCE, || {
        let job = server.operator_get(&format!("/api/enterprise/jobs/{id}"));
        (job.json()["job"]["state"] == "dead").then_some(())
    });
    for (method, path, body) in operator_routes(&id) {
        let what = format!("{method} {path}");
        let anonymous = client.request(method, &path, &[], &body);
        assert_refused(&anonymous, 401, "missing_credentials", &what);
        assert_eq!(
            anonymous.header("WWW-Authenticate"),
            Some("Bearer"),
            "{what}"
        );
        let wrong = client.request(method, &path, &[WRONG], &body);
        assert_refused(&wrong, 401, "invalid_operator_token", &what);
    }
    // Nothing was enqueued, replayed, crashed or stalled.
    assert_eq!(enqueued_after_refusals(&server, 2), 1);
    let dead = server.operator_get(&format!("/api/enterprise/jobs/{id}"));
    assert_eq!(dead.json()["job"]["state"], "dead", "{}", dead.text());
    assert_eq!(dead.json()["job"]["replays"], 0, "{}", dead.text());
    assert_eq!(server.cluster_status()["shards"][0]["restarts"], 0);

    // The operator token works; a guessed id (the real one, another tag) is not found, for a
    // read and for a replay alike.
    let listed = server.operator_get("/api/enterprise/jobs/dead").json();
    assert!(
        listed["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["id"] == id),
        "{listed}"
    );
    let guess = guessed(&id);
    let read = server.operator_get(&format!("/api/enterprise/jobs/{guess}"));
    assert_refused(&read, 404, "job_not_found", "a guessed id");
    let replay = client.request(
        "POST",
        &format!("/api/enterprise/jobs/dead/{guess}/replay"),
        &[OPERATOR],
        b"",
    );
    assert_refused(&replay, 404, "job_not_found", "a guessed replay");
    let replay = client.request(
        "POST",
        &format!("/api/enterprise/jobs/dead/{id}/replay"),
        &[OPERATOR],
        b"",
    );
    assert_eq!(replay.status, 202, "{}", replay.text());
    assert_eq!(server.operator_get("/debug/shard").status, 200);

    // The reports are open by default, as are the probes.
    for path in [
        "/metrics",
        "/api/enterprise/metrics",
        "/livez",
        "/readyz",
        "/dashboard",
    ] {
        assert_eq!(server.get(path).status, 200, "{path}");
    }
}

#[apply(engines)]
fn a_server_without_token_or_database_refuses_every_operator_route(#[case] engine: &str) {
    let mut command = Server::command(&["--engine", engine, "--debug-routes"]);
    command.env_remove("OPERATOR_TOKEN");
    let server = Server::spawn(command);
    let mut client = server.connect();
    let guess = "0.1.0-00000000000000000000000000000000";
    for (method, path, body) in operator_routes(guess) {
        let what = format!("{method} {path}");
        for headers in [&[][..], &[OPERATOR]] {
            let refused = client.request(method, &path, headers, &body);
            assert_refused(&refused, 403, "operator_access_off", &what);
        }
    }
    assert_eq!(enqueued_after_refusals(&server, 2), 0);
    assert_eq!(server.get("/health").status, 200);
}

#[apply(engines)]
fn metrics_access_operator_locks_the_reports_but_not_the_probes(#[case] engine: &str) {
    let server = Server::start(engine, &["--metrics-access", "operator"]);
    let mut client = server.connect();
    for path in [
        "/metrics",
        "/api/enterprise/metrics",
        "/api/enterprise/cluster/status",
        "/api/enterprise/queues/status",
        "/api/enterprise/alerts",
    ] {
        assert_refused(
            &client.request("GET", path, &[], b""),
            401,
            "missing_credentials",
            path,
        );
        assert_refused(
            &client.request("GET", path, &[WRONG], b""),
            401,
            "invalid_operator_token",
            path,
        );
        let allowed = client.request("GET", path, &[OPERATOR], b"");
        assert_eq!(allowed.status, 200, "{path}: {}", allowed.text());
    }
    for path in ["/livez", "/readyz", "/health", "/dashboard"] {
        assert_eq!(client.request("GET", path, &[], b"").status, 200, "{path}");
    }
}

/// One primary, no replica.
fn cluster() -> &'static PgCluster {
    static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| PgCluster::start(0))
}

/// Registers and logs in; the session's `Authorization` value.
fn session(client: &mut Client, email: &str) -> String {
    let body = json!({"name": "Staff Test", "email": email, "password": "correct horse"});
    let registered = client.request(
        "POST",
        "/api/auth/register",
        &[],
        body.to_string().as_bytes(),
    );
    assert_eq!(registered.status, 201, "{}", registered.text());
    let body = json!({"email": email, "password": "correct horse"});
    let logged_in = client.request("POST", "/api/auth/login", &[], body.to_string().as_bytes());
    assert_eq!(logged_in.status, 200, "{}", logged_in.text());
    format!("Bearer {}", logged_in.json()["token"].as_str().unwrap())
}

fn grant_role(env: &[(String, String)], email: &str, role: &str) -> (i32, String) {
    let out = common::binary()
        .args(["grant-role", "--email", email, "--role", role])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[apply(engines)]
fn a_plain_user_is_refused_and_a_granted_operator_session_passes(#[case] engine: &str) {
    let cluster = cluster();
    let db = cluster.create_database(&format!("operator_access_{engine}"));
    let env = cluster.env(&db);
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server = Server::start_with(
        engine,
        &[
            "--shards",
            "2",
            "--debug-routes",
            "--auth-cache-ttl",
            "200",
            "--metrics-access",
            "operator",
        ],
        &env_refs,
    );
    let mut client = server.connect();
    let email = format!("staff-{engine}@example.com");
    let auth = session(&mut client, &email);
    let id = enqueue_as_operator(
        &mut client,
        &json!({"kind": "debug.fail", "max_attempts": 1, "payload": {"times": 5}}),
    );
    common::wait_for("the job dead-lettered", PATIENCE, || {
        let job = server.operator_get(&format!("/api/enterprise/jobs/{id}"));
        (job.json()["job"]["state"] == "dead").then_some(())
    });
    // The operator's job and the user's welcome notification (durable, written with the user).
    let before = common::wait_for("both jobs enqueued", PATIENCE, || {
        let count = enqueued(&server);
        (count >= 2).then_some(count)
    });
    for (method, path, body) in operator_routes(&id) {
        let what = format!("{method} {path}");
        let user = client.request(method, &path, &[("Authorization", &auth)], &body);
        assert_refused(&user, 403, "forbidden", &what);
        let anonymous = client.request(method, &path, &[], &body);
        assert_refused(&anonymous, 401, "missing_credentials", &what);
    }
    let metrics = client.request("GET", "/metrics", &[("Authorization", &auth)], b"");
    assert_refused(&metrics, 403, "forbidden", "a user's /metrics");
    assert_eq!(enqueued_after_refusals(&server, 2), before);
    let dead = server.operator_get(&format!("/api/enterprise/jobs/{id}"));
    assert_eq!(dead.json()["job"]["replays"], 0, "{}", dead.text());

    // Made an operator from the command line, the same session passes once its shard looks
    // it up again (within AUTH_CACHE_TTL).
    let (code, text) = grant_role(&env, &email.to_uppercase(), "operator");
    assert_eq!(code, 0, "{text}");
    let job = json!({"kind": "analytics", "payload": {"event": "staff"}}).to_string();
    let enqueue = common::wait_for("the operator role to reach the session", PATIENCE, || {
        let response = client.request(
            "POST",
            "/api/enterprise/jobs",
            &[("Authorization", &auth), ("Idempotency-Key", "staff-once")],
            job.as_bytes(),
        );
        (response.status != 403).then_some(response)
    });
    assert!([200, 202].contains(&enqueue.status), "{}", enqueue.text());
    for (method, path) in [
        ("GET", "/api/enterprise/jobs/dead".to_string()),
        ("GET", format!("/api/enterprise/jobs/{id}")),
        ("GET", "/debug/shard".to_string()),
        ("GET", "/metrics".to_string()),
    ] {
        // A fresh connection each time: the other shard looks the session up on its own.
        for _ in 0..2 {
            let response =
                server
                    .connect()
                    .request(method, &path, &[("Authorization", &auth)], b"");
            assert_eq!(response.status, 200, "{method} {path}: {}", response.text());
        }
    }
    let replay = client.request(
        "POST",
        &format!("/api/enterprise/jobs/dead/{id}/replay"),
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(replay.status, 202, "{}", replay.text());

    // No such user: exit 1; no database: exit 2; an unknown role: a usage error.
    let (code, text) = grant_role(&env, "nobody@example.com", "admin");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("no user"), "{text}");
    let (code, text) = grant_role(&[], &email, "admin");
    assert_eq!(code, 2, "{text}");
    let (code, text) = grant_role(&env, &email, "superuser");
    assert_eq!(code, 2, "{text}");
}
