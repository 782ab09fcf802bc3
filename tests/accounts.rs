//! Accounts and access on a real database, on both engines: registration, login, `me`,
//! logout, lockout, API keys and signed requests (bad signature, altered body, a timestamp
//! from the future, replay, missing scope, rate, revocation within the cache's bound), and
//! one user never seeing another's keys.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use coinbit::auth::hex;
use coinbit::auth::signature::{sign, Signed};
use common::pg::PgCluster;
use rstest::rstest;
use rstest_reuse::{self, apply};

use common::{engines, Client, Response, Server};

const SECRETS_KEY: &str = "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
/// How long a shard trusts a cached session or key here: the revocation bound under test.
const CACHE_TTL_MS: u64 = 300;

/// One primary, no replica: every accounts query runs on the primary.
fn cluster() -> &'static PgCluster {
    static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| PgCluster::start(0))
}

fn start(engine: &str, test: &str) -> Server {
    start_with(engine, test, &[])
}

fn start_with(engine: &str, test: &str, extra: &[&str]) -> Server {
    start_with_ttl(engine, test, CACHE_TTL_MS, extra)
}

/// A server whose shards trust a cached session or key for `ttl_ms`, on database
/// `{test}_{engine}`.
fn start_with_ttl(engine: &str, test: &str, ttl_ms: u64, extra: &[&str]) -> Server {
    let cluster = cluster();
    let db = cluster.create_database(&format!("{test}_{engine}"));
    let env = cluster.env(&db);
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.push(("SECRETS_KEY", SECRETS_KEY));
    let ttl = ttl_ms.to_string();
    let args = [
        "--shards",
        "2",
        "--durable-jobs-poll-interval",
        "0",
        "--auth-cache-ttl",
        &ttl,
        "--login-max-failures",
        "3",
    ];
    let args: Vec<&str> = args.iter().chain(extra).copied().collect();
    Server::start_with(engine, &args, &all)
}

fn json_body(value: serde_json::Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

/// Ana's registration from Brazil, her email in mixed case.
fn ana_from_brazil() -> serde_json::Value {
    serde_json::json!({
        "name": "Ana", "email": "Ana@Example.com", "password": "correct horse", "country": "BR"
    })
}

/// A registration that asks for the admin role (refused, never taken).
fn eve_asking_for_admin() -> serde_json::Value {
    serde_json::json!({
        "name": "Eve", "email": "eve@example.com", "password": "correct horse", "role": "admin"
    })
}

fn register(client: &mut Client, name: &str, email: &str, password: &str) -> Response {
    let body = json_body(serde_json::json!({"name": name, "email": email, "password": password}));
    client.request("POST", "/api/auth/register", &[], &body)
}

fn login(client: &mut Client, email: &str, password: &str) -> Response {
    let body = json_body(serde_json::json!({"email": email, "password": password}));
    client.request("POST", "/api/auth/login", &[], &body)
}

/// Registers and logs in; the session token.
fn session(client: &mut Client, name: &str, email: &str) -> String {
    assert_eq!(register(client, name, email, "correct horse").status, 201);
    let logged_in = login(client, email, "correct horse");
    assert_eq!(logged_in.status, 200, "{}", logged_in.text());
    logged_in.json()["token"].as_str().unwrap().to_string()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The clock in milliseconds, but never the same value twice. Two requests signed alike in
/// one millisecond carry the same signature, which the server rightly refuses as a replay; on
/// a fast host a loop of signed requests does that, so each call moves on by at least 1 ms.
fn now_ms() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let clock = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let previous = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(clock.max(last + 1))
        })
        .unwrap();
    clock.max(previous + 1)
}

/// A key of the user with `token`: (key id, secret).
fn new_key(client: &mut Client, token: &str, scopes: &[&str], rate: u32) -> (String, String) {
    let body = json_body(serde_json::json!({"scopes": scopes, "rate_per_second": rate}));
    let auth = bearer(token);
    let created = client.request(
        "POST",
        "/api/auth/api-keys",
        &[("Authorization", &auth)],
        &body,
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let key = created.json();
    (
        key["key_id"].as_str().unwrap().to_string(),
        key["secret"].as_str().unwrap().to_string(),
    )
}

/// A request signed with `key` at `timestamp`, over `signed_body`, sending `body`.
fn signed_request(
    client: &mut Client,
    (method, path): (&str, &str),
    key: &(String, String),
    timestamp: u64,
    signed_body: &[u8],
    body: &[u8],
) -> Response {
    let timestamp = timestamp.to_string();
    let signature = sign(
        key.1.as_bytes(),
        &Signed {
            timestamp: &timestamp,
            method,
            path,
            query: "",
            body: signed_body,
        },
    );
    let signature = hex::encode(&signature);
    client.request(
        method,
        path,
        &[
            ("X-CBC-APIKEY", &key.0),
            ("X-CBC-TIMESTAMP", &timestamp),
            ("X-CBC-SIGNATURE", &signature),
        ],
        body,
    )
}

fn status_and_code(response: &Response) -> (u16, String) {
    (response.status, response.error_code())
}

#[apply(engines)]
fn register_login_me_logout(#[case] engine: &str) {
    let server = start(engine, "sessions");
    let mut client = server.connect();
    let created = client.request(
        "POST",
        "/api/auth/register",
        &[],
        &json_body(ana_from_brazil()),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let user = &created.json()["user"];
    assert_eq!(
        (
            &user["email"],
            &user["role"],
            &user["currency"],
            &user["country"]
        ),
        (
            &"ana@example.com".into(),
            &"user".into(),
            &"BRL".into(),
            &"BR".into()
        )
    );
    assert!(created.header("X-Commit-LSN").is_some());
    let again = register(&mut client, "Ana", "ana@example.com", "another one");
    assert_eq!(status_and_code(&again), (409, "email_taken".into()));
    // A role in the body is refused, never taken.
    let escalation = json_body(eve_asking_for_admin());
    let refused = client.request("POST", "/api/auth/register", &[], &escalation);
    assert_eq!(status_and_code(&refused), (422, "field_not_allowed".into()));
    let short = register(&mut client, "Bo", "bo@example.com", "short");
    assert_eq!(status_and_code(&short), (422, "invalid_password".into()));

    // A wrong password and an unknown email answer alike.
    let wrong = login(&mut client, "ana@example.com", "wrong horse");
    let unknown = login(&mut client, "nobody@example.com", "wrong horse");
    assert_eq!(status_and_code(&wrong), (401, "invalid_credentials".into()));
    assert_eq!(
        (wrong.status, wrong.body.clone()),
        (unknown.status, unknown.body.clone())
    );

    let logged_in = login(&mut client, "ANA@example.com", "correct horse");
    assert_eq!(logged_in.status, 200, "{}", logged_in.text());
    let token = logged_in.json()["token"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 64);
    let auth = bearer(&token);
    let me = client.request("GET", "/api/auth/me", &[("Authorization", &auth)], b"");
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(me.json()["email"], "ana@example.com");
    assert_eq!(me.json()["authenticated_by"], "session");

    let anonymous = client.request("GET", "/api/auth/me", &[], b"");
    assert_eq!(
        status_and_code(&anonymous),
        (401, "missing_credentials".into())
    );
    let forged = bearer(&"0".repeat(64));
    let forged = client.request("GET", "/api/auth/me", &[("Authorization", &forged)], b"");
    assert_eq!(status_and_code(&forged), (401, "invalid_session".into()));
    let malformed = client.request("GET", "/api/auth/me", &[("Authorization", "Bearer x")], b"");
    assert_eq!(
        status_and_code(&malformed),
        (401, "bad_authorization".into())
    );

    let out = client.request("POST", "/api/auth/logout", &[("Authorization", &auth)], b"");
    assert_eq!(out.status, 204, "{}", out.text());
    let after = client.request("GET", "/api/auth/me", &[("Authorization", &auth)], b"");
    assert_eq!(status_and_code(&after), (401, "invalid_session".into()));
}

/// `POST /api/users` is registration: the same checks and answer as `POST /api/auth/register`,
/// a password required, the welcome job written with the user, and read-your-writes through
/// `GET /api/users/{id}` with the answer's `X-Commit-LSN`.
#[apply(engines)]
fn the_users_route_is_registration(#[case] engine: &str) {
    let server = start(engine, "users_route");
    let mut client = server.connect();
    let post_users = |client: &mut Client, body: serde_json::Value| {
        client.request("POST", "/api/users", &[], &json_body(body))
    };
    let without_password = post_users(
        &mut client,
        serde_json::json!({"name": "Ana", "email": "ana@example.com"}),
    );
    assert_eq!(status_and_code(&without_password), (400, "bad_json".into()));
    let escalation = post_users(&mut client, eve_asking_for_admin());
    assert_eq!(
        status_and_code(&escalation),
        (422, "field_not_allowed".into())
    );
    let created = post_users(&mut client, ana_from_brazil());
    assert_eq!(created.status, 201, "{}", created.text());
    let user = created.json()["user"].clone();
    let id = user["id"].as_i64().unwrap();
    assert_eq!(
        created.header("Location"),
        Some(format!("/api/users/{id}").as_str())
    );
    let lsn = created.header("X-Commit-LSN").expect("X-Commit-LSN");
    let read = client.request(
        "GET",
        &format!("/api/users/{id}"),
        &[("X-Min-LSN", lsn), common::OPERATOR],
        b"",
    );
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(read.json()["email"], "ana@example.com");
    // The same answer as the other path's: the same fields, the same rules.
    let other = register(&mut client, "Bo", "bo@example.com", "correct horse");
    assert_eq!(other.status, 201, "{}", other.text());
    let fields = |user: &serde_json::Value| {
        let mut keys: Vec<String> = user.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(fields(&user), fields(&other.json()["user"]));
    assert_eq!(
        (&user["currency"], &user["role"]),
        (&"BRL".into(), &"user".into())
    );
    let taken = register(&mut client, "Ana", "ana@example.com", "another one");
    assert_eq!(status_and_code(&taken), (409, "email_taken".into()));
    assert_eq!(
        login(&mut client, "ana@example.com", "correct horse").status,
        200
    );
    // Each registration wrote its welcome job; the refused ones wrote nothing.
    let db = format!("users_route_{engine}");
    let welcomes = cluster().psql(
        "primary",
        &db,
        "SELECT string_agg(payload->>'user_id', ',' ORDER BY id) FROM job_outbox \
         WHERE kind = 'notification'",
    );
    let bo = other.json()["user"]["id"].as_i64().unwrap();
    assert_eq!(welcomes, format!("{id},{bo}"));
    let users = cluster().psql("primary", &db, "SELECT count(*) FROM users");
    assert_eq!(users, "2");
}

#[apply(engines)]
fn repeated_failed_logins_lock_the_email_out(#[case] engine: &str) {
    let server = start(engine, "lockout");
    let mut client = server.connect();
    assert_eq!(
        register(&mut client, "Ana", "ana@example.com", "correct horse").status,
        201
    );
    for _ in 0..3 {
        let wrong = login(&mut client, "ana@example.com", "wrong horse");
        assert_eq!(wrong.status, 401);
    }
    // Locked: even the right password is not checked, and Retry-After says for how long.
    for password in ["wrong horse", "correct horse"] {
        let locked = login(&mut client, "ana@example.com", password);
        assert_eq!(
            status_and_code(&locked),
            (429, "too_many_failed_logins".into())
        );
        let retry: u64 = locked.header("Retry-After").unwrap().parse().unwrap();
        assert!((1..=900).contains(&retry), "{retry}");
    }
    // Another email is not locked with it.
    assert_eq!(
        register(&mut client, "Bo", "bo@example.com", "correct horse").status,
        201
    );
    assert_eq!(
        login(&mut client, "bo@example.com", "correct horse").status,
        200
    );
}

/// A login from `client` (as a trusted proxy writes it in `X-Forwarded-For`).
fn login_from(client: &mut Client, from: &str, email: &str, password: &str) -> Response {
    let body = json_body(serde_json::json!({"email": email, "password": password}));
    // What the client wrote first, then what the proxy appended: only the last counts.
    let forwarded = format!("198.51.100.99, {from}");
    client.request(
        "POST",
        "/api/auth/login",
        &[("X-Forwarded-For", &forwarded)],
        &body,
    )
}

/// Failed logins across many emails from one client lock that client out (429 with
/// `Retry-After`), whether the emails exist or not, and the locked-out attempts change nothing;
/// another client is not locked with it. Without `TRUST_FORWARDED_FOR` the header is not
/// believed and the same run only locks each email.
#[apply(engines)]
fn failed_logins_from_one_client_lock_the_client_out(#[case] engine: &str) {
    let server = start_with(
        engine,
        "client_lockout",
        &["--trust-forwarded-for", "--login-max-client-failures", "5"],
    );
    let mut client = server.connect();
    assert_eq!(
        register(&mut client, "Ana", "ana@example.com", "correct horse").status,
        201
    );
    let attacker = "203.0.113.7";
    // Five failures, each on another email (one of them real): under the per-email limit.
    for n in 0..5 {
        let email = if n == 2 {
            "ana@example.com".to_string()
        } else {
            format!("guess{n}@example.com")
        };
        let wrong = login_from(&mut client, attacker, &email, "wrong horse");
        assert_eq!(status_and_code(&wrong), (401, "invalid_credentials".into()));
    }
    // From now on every login from that client is refused unchecked, a real email with its
    // right password included, and an unknown email answers the same.
    let mut answers = Vec::new();
    for n in 5..200 {
        let (email, password) = match n {
            7 => ("ana@example.com".to_string(), "correct horse"),
            _ => (format!("guess{n}@example.com"), "wrong horse"),
        };
        let locked = login_from(&mut client, attacker, &email, password);
        assert_eq!(
            status_and_code(&locked),
            (429, "too_many_failed_logins".into()),
            "attempt {n}"
        );
        let retry: u64 = locked.header("Retry-After").unwrap().parse().unwrap();
        assert!((1..=900).contains(&retry), "{retry}");
        answers.push(locked.body.clone());
    }
    assert!(answers.windows(2).all(|pair| pair[0] == pair[1]));
    // The locked-out attempts were not recorded: nothing changed.
    let db = format!("client_lockout_{engine}");
    let recorded = cluster().psql("primary", &db, "SELECT count(*) FROM login_attempts");
    assert_eq!(recorded, "5");
    // Another client logs in; the attacker's header value before the proxy's is not its own.
    let other = login_from(
        &mut client,
        "203.0.113.8",
        "ana@example.com",
        "correct horse",
    );
    assert_eq!(other.status, 200, "{}", other.text());
    let spoofed = client.request(
        "POST",
        "/api/auth/login",
        &[("X-Forwarded-For", "203.0.113.7, 203.0.113.9")],
        &json_body(serde_json::json!({"email": "ana@example.com", "password": "correct horse"})),
    );
    assert_eq!(spoofed.status, 200, "{}", spoofed.text());

    // Without trust, the header is not believed: no client is known, so only each email counts.
    let untrusting = start_with(
        engine,
        "client_lockout_off",
        &["--login-max-client-failures", "5"],
    );
    let mut client = untrusting.connect();
    for n in 0..20 {
        let email = format!("guess{n}@example.com");
        let wrong = login_from(&mut client, attacker, &email, "wrong horse");
        assert_eq!(status_and_code(&wrong), (401, "invalid_credentials".into()));
    }
}

#[apply(engines)]
fn api_keys_belong_to_their_user(#[case] engine: &str) {
    let server = start(engine, "key_owners");
    let mut client = server.connect();
    let ana = session(&mut client, "Ana", "ana@example.com");
    let bo = session(&mut client, "Bo", "bo@example.com");
    let (ana_key, _) = new_key(&mut client, &ana, &["read"], 10);
    let list = |client: &mut Client, token: &str| {
        let auth = bearer(token);
        let listed = client.request(
            "GET",
            "/api/auth/api-keys",
            &[("Authorization", &auth)],
            b"",
        );
        assert_eq!(listed.status, 200, "{}", listed.text());
        listed.json()["keys"].as_array().unwrap().clone()
    };
    let ana_keys = list(&mut client, &ana);
    assert_eq!(ana_keys.len(), 1);
    assert_eq!(ana_keys[0]["key_id"], ana_key.as_str());
    assert!(ana_keys[0].get("secret").is_none(), "{ana_keys:?}");
    assert!(list(&mut client, &bo).is_empty());
    // Bo cannot revoke Ana's key, and learns nothing of it: a 404 like a key that never was.
    let path = format!("/api/auth/api-keys/{ana_key}");
    let bo_auth = bearer(&bo);
    let refused = client.request("DELETE", &path, &[("Authorization", &bo_auth)], b"");
    assert_eq!(status_and_code(&refused), (404, "api_key_not_found".into()));
    let absent = format!("/api/auth/api-keys/{}", "f".repeat(32));
    let absent = client.request("DELETE", &absent, &[("Authorization", &bo_auth)], b"");
    assert_eq!(refused.body, absent.body);
    assert_eq!(list(&mut client, &ana).len(), 1);
    let bad_scope = json_body(serde_json::json!({"scopes": ["admin"]}));
    let ana_auth = bearer(&ana);
    let bad = client.request(
        "POST",
        "/api/auth/api-keys",
        &[("Authorization", &ana_auth)],
        &bad_scope,
    );
    assert_eq!(status_and_code(&bad), (422, "invalid_scope".into()));
}

/// A user's data answers to that user (a session, or an API key with `read`) and to staff (a
/// staff session, the operator token); anyone else gets the 404 of an id that does not exist.
#[apply(engines)]
fn a_user_is_read_only_by_that_user_or_staff(#[case] engine: &str) {
    let server = start(engine, "user_owners");
    let mut client = server.connect();
    let ana = session(&mut client, "Ana", "ana@example.com");
    let bo = session(&mut client, "Bo", "bo@example.com");
    // An operator: registered, made staff in the database, then logged in.
    assert_eq!(
        register(&mut client, "Op", "op@example.com", "correct horse").status,
        201
    );
    let db = format!("user_owners_{engine}");
    cluster().psql(
        "primary",
        &db,
        "UPDATE users SET role = 'operator' WHERE email = 'op@example.com'",
    );
    let op = login(&mut client, "op@example.com", "correct horse");
    assert_eq!(op.status, 200, "{}", op.text());
    let op = op.json()["token"].as_str().unwrap().to_string();
    let id_of = |email: &str| -> i64 {
        let sql = format!("SELECT id FROM users WHERE email = '{email}'");
        cluster().psql("primary", &db, &sql).parse().unwrap()
    };
    let (ana_id, bo_id) = (id_of("ana@example.com"), id_of("bo@example.com"));
    let missing_id = bo_id + 1000;
    let get = |client: &mut Client, id: i64, auth: &str| {
        let path = format!("/api/users/{id}");
        match auth {
            "" => client.request("GET", &path, &[], b""),
            auth => client.request("GET", &path, &[("Authorization", auth)], b""),
        }
    };
    // The answer with the id taken out: a refusal must equal a missing id's answer.
    let not_found = |response: &Response, id: i64| {
        assert_eq!(status_and_code(response), (404, "user_not_found".into()));
        response.text().replace(&id.to_string(), "{id}")
    };
    let (ana_auth, bo_auth, op_auth) = (bearer(&ana), bearer(&bo), bearer(&op));
    let operator = common::OPERATOR.1;

    let own = get(&mut client, ana_id, &ana_auth);
    assert_eq!(own.status, 200, "{}", own.text());
    assert_eq!(own.json()["email"], "ana@example.com");
    // Ana asks for Bo: the answer of an id no one has (as the database gives it to staff).
    let missing = not_found(&get(&mut client, missing_id, operator), missing_id);
    assert_eq!(
        not_found(&get(&mut client, bo_id, &ana_auth), bo_id),
        missing
    );
    assert_eq!(
        not_found(&get(&mut client, ana_id, &bo_auth), ana_id),
        missing
    );
    assert_eq!(
        not_found(&get(&mut client, missing_id, &ana_auth), missing_id),
        missing
    );
    // Staff read anyone: the operator token and an operator's session.
    for auth in [operator, op_auth.as_str()] {
        let read = get(&mut client, bo_id, auth);
        assert_eq!(read.status, 200, "{}", read.text());
        assert_eq!(read.json()["email"], "bo@example.com");
    }
    // No credentials, or a token that is neither a session nor the operator token: 401.
    assert_eq!(
        status_and_code(&get(&mut client, bo_id, "")),
        (401, "missing_credentials".into())
    );
    let unknown = bearer(&"0".repeat(64));
    assert_eq!(
        status_and_code(&get(&mut client, bo_id, &unknown)),
        (401, "invalid_session".into())
    );
    // An API key with `read` reads its own user only; one without it is refused.
    let read_key = new_key(&mut client, &ana, &["read"], 100);
    let signed_get = |client: &mut Client, key: &(String, String), id: i64| {
        let path = format!("/api/users/{id}");
        signed_request(client, ("GET", &path), key, now_ms(), b"", b"")
    };
    let own = signed_get(&mut client, &read_key, ana_id);
    assert_eq!(own.status, 200, "{}", own.text());
    assert_eq!(own.json()["email"], "ana@example.com");
    assert_eq!(
        not_found(&signed_get(&mut client, &read_key, bo_id), bo_id),
        missing
    );
    let trade_key = new_key(&mut client, &ana, &["trade"], 100);
    assert_eq!(
        status_and_code(&signed_get(&mut client, &trade_key, ana_id)),
        (403, "missing_scope".into())
    );
    // A staff user's API key is no staff credential: its own user only.
    let op_key = new_key(&mut client, &op, &["read"], 100);
    assert_eq!(
        not_found(&signed_get(&mut client, &op_key, bo_id), bo_id),
        missing
    );
}

#[apply(engines)]
fn signed_requests_are_checked(#[case] engine: &str) {
    let server = start(engine, "signed");
    let mut client = server.connect();
    let token = session(&mut client, "Ana", "ana@example.com");
    let key = new_key(&mut client, &token, &["read"], 100);
    let me = ("GET", "/api/auth/me");

    let ok = signed_request(&mut client, me, &key, now_ms(), b"", b"");
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["authenticated_by"], "api_key");
    assert_eq!(ok.json()["email"], "ana@example.com");

    let bad_secret = (key.0.clone(), "not the secret".to_string());
    let forged = signed_request(&mut client, me, &bad_secret, now_ms(), b"", b"");
    assert_eq!(status_and_code(&forged), (401, "bad_signature".into()));

    // A body changed after signing.
    let create = ("POST", "/api/auth/api-keys");
    let signed_body = br#"{"scopes":["read"]}"#;
    let altered = signed_request(
        &mut client,
        create,
        &key,
        now_ms(),
        signed_body,
        br#"{"scopes":["withdraw"]}"#,
    );
    assert_eq!(status_and_code(&altered), (401, "bad_signature".into()));
    // Signed right, but keys are managed from a login session only.
    let by_key = signed_request(
        &mut client,
        create,
        &key,
        now_ms(),
        signed_body,
        signed_body,
    );
    assert_eq!(status_and_code(&by_key), (403, "session_required".into()));

    let future = signed_request(&mut client, me, &key, now_ms() + 5_000, b"", b"");
    assert_eq!(
        status_and_code(&future),
        (401, "timestamp_in_future".into())
    );
    let stale = signed_request(&mut client, me, &key, now_ms() - 6_000, b"", b"");
    assert_eq!(status_and_code(&stale), (401, "timestamp_expired".into()));

    // The same signed request twice: the copy is refused.
    let timestamp = now_ms();
    let first = signed_request(&mut client, me, &key, timestamp, b"", b"");
    assert_eq!(first.status, 200, "{}", first.text());
    let replayed = signed_request(&mut client, me, &key, timestamp, b"", b"");
    assert_eq!(
        status_and_code(&replayed),
        (401, "signature_replayed".into())
    );

    let unknown = (("0".repeat(32)), key.1.clone());
    let unknown = signed_request(&mut client, me, &unknown, now_ms(), b"", b"");
    assert_eq!(status_and_code(&unknown), (401, "invalid_api_key".into()));

    // A key without the route's scope.
    let trade_only = new_key(&mut client, &token, &["trade"], 100);
    let no_scope = signed_request(&mut client, me, &trade_only, now_ms(), b"", b"");
    assert_eq!(status_and_code(&no_scope), (403, "missing_scope".into()));
}

/// loadgen logs each virtual user in once and sends its credentials: a bearer token, or
/// requests signed with its own key (a query included), every one accepted by the server.
#[apply(engines)]
fn loadgen_logs_in_and_signs_as_the_server_checks(#[case] engine: &str) {
    let server = start(engine, "loadgen_login");
    let dir = std::env::temp_dir().join(format!(
        "coinbit-loadgen-login-{engine}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    for (credentials, users) in [("session", 3), ("api_key", 4)] {
        let scenario = dir.join(format!("{credentials}.toml"));
        std::fs::write(
            &scenario,
            format!(
                "[[requests]]\nname = \"me\"\npath = \"/api/auth/me?probe={{{{seq}}}}\"\nexpect = 200\n\n\
                 [login]\ncredentials = \"{credentials}\"\nemail = \"{credentials}-{{vu}}@loadgen.example.com\"\n"
            ),
        )
        .unwrap();
        let out = std::process::Command::new(common::loadgen_binary())
            .args(["-s", scenario.to_str().unwrap(), "-u", &users.to_string()])
            .args(["-t", "1", "-d", "1s", "--progress", "never", "--json"])
            .arg(format!("http://{}", server.addr))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{credentials}: {stderr}");
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{credentials}: {e}: {stderr}"));
        let overall = &summary["overall"];
        assert_eq!(overall["errors"], 0, "{credentials}: {overall}");
        assert!(overall["ok"].as_u64().unwrap() > 0, "{overall}");
        assert_eq!(
            overall["statuses"].as_object().unwrap().len(),
            1,
            "{overall}"
        );
    }
    // One account per virtual user, and a key for each signing one.
    let db = format!("loadgen_login_{engine}");
    let count = |sql: &str| cluster().psql("primary", &db, sql);
    assert_eq!(
        count("SELECT count(*) FROM users WHERE email LIKE 'session-%'"),
        "3"
    );
    assert_eq!(
        count("SELECT count(*) FROM users WHERE email LIKE 'api_key-%'"),
        "4"
    );
    assert_eq!(count("SELECT count(*) FROM api_keys"), "4");
    std::fs::remove_dir_all(&dir).ok();
}

#[apply(engines)]
fn a_key_over_its_rate_gets_429(#[case] engine: &str) {
    let server = start(engine, "rate");
    let mut client = server.connect();
    let token = session(&mut client, "Ana", "ana@example.com");
    let key = new_key(&mut client, &token, &["read"], 2);
    let me = ("GET", "/api/auth/me");
    let statuses: Vec<u16> = (0..4u64)
        .map(|i| signed_request(&mut client, me, &key, now_ms() + i, b"", b"").status)
        .collect();
    assert_eq!(&statuses[..2], [200, 200], "{statuses:?}");
    let limited = signed_request(&mut client, me, &key, now_ms() + 10, b"", b"");
    assert_eq!(status_and_code(&limited), (429, "rate_limited".into()));
    assert_eq!(limited.header("Retry-After"), Some("1"));
}

/// A revoked key and a logged-out session are refused on every connection (so every shard)
/// once the cache's bound has passed.
#[apply(engines)]
fn revocation_reaches_every_shard_within_the_cache_bound(#[case] engine: &str) {
    let server = start(engine, "revocation");
    let mut owner = server.connect();
    let token = session(&mut owner, "Ana", "ana@example.com");
    let key = new_key(&mut owner, &token, &["read"], 1_000);
    let me = ("GET", "/api/auth/me");
    let auth = bearer(&token);
    // Many connections, spread over both shards, each with the key and session cached.
    let mut clients: Vec<Client> = (0..8).map(|_| server.connect()).collect();
    for client in &mut clients {
        assert_eq!(
            signed_request(client, me, &key, now_ms(), b"", b"").status,
            200
        );
        let by_session = client.request("GET", "/api/auth/me", &[("Authorization", &auth)], b"");
        assert_eq!(by_session.status, 200);
    }
    // Cached on the revoking connection's shard too.
    let cached = signed_request(&mut owner, me, &key, now_ms(), b"", b"");
    assert_eq!(cached.status, 200);
    let path = format!("/api/auth/api-keys/{}", key.0);
    let revoked = owner.request("DELETE", &path, &[("Authorization", &auth)], b"");
    assert_eq!(revoked.status, 204, "{}", revoked.text());
    // At once on the revoking connection's shard.
    let here = signed_request(&mut owner, me, &key, now_ms(), b"", b"");
    assert_eq!(status_and_code(&here), (401, "invalid_api_key".into()));
    let out = owner.request("POST", "/api/auth/logout", &[("Authorization", &auth)], b"");
    assert_eq!(out.status, 204);
    std::thread::sleep(Duration::from_millis(CACHE_TTL_MS + 100));
    for client in &mut clients {
        let keyed = signed_request(client, me, &key, now_ms(), b"", b"");
        assert_eq!(status_and_code(&keyed), (401, "invalid_api_key".into()));
        let by_session = client.request("GET", "/api/auth/me", &[("Authorization", &auth)], b"");
        assert_eq!(
            status_and_code(&by_session),
            (401, "invalid_session".into())
        );
    }
}

/// A session and a key in steady use are looked up again ahead of their cache entries' end,
/// off the request: a revocation made behind the server's back is seen by the shard after
/// half the TTL, before the entries it had cached would have expired.
#[apply(engines)]
fn credentials_in_use_are_refreshed_before_their_cache_entries_end(#[case] engine: &str) {
    // Long enough that a loaded host sends a request, refreshes and sees the answer within
    // the second half (3 s).
    const TTL: Duration = Duration::from_secs(6);
    let test = "refresh_ahead";
    let server = start_with_ttl(engine, test, TTL.as_millis() as u64, &[]);
    let mut client = server.connect();
    let token = session(&mut client, "Ana", "ana@example.com");
    let auth = bearer(&token);
    // No entry of either credential is older: the shard looks them up from here on.
    let first_use = Instant::now();
    let key = new_key(&mut client, &token, &["read"], 1_000);
    let me = ("GET", "/api/auth/me");
    let mut stamp = now_ms();
    let mut by_key = |client: &mut Client| {
        stamp = stamp.max(now_ms()) + 1;
        signed_request(client, me, &key, stamp, b"", b"").status
    };
    assert_eq!(by_key(&mut client), 200);
    let by_session = |client: &mut Client| {
        let response = client.request("GET", "/api/auth/me", &[("Authorization", &auth)], b"");
        response.status
    };
    // Not asked again before the revocation: on a slow host a request past half the TTL
    // would refresh the session before the revocation, which would put its refusal off.
    cluster().psql(
        "primary",
        &format!("{test}_{engine}"),
        "UPDATE sessions SET revoked_at = now(); UPDATE api_keys SET revoked_at = now()",
    );
    // When each was first refused, measured at the send of the refused request.
    let (mut session_refused, mut key_refused) = (None, None);
    while (session_refused.is_none() || key_refused.is_none()) && first_use.elapsed() < TTL * 2 {
        std::thread::sleep(Duration::from_millis(50));
        let sent = first_use.elapsed();
        note_refusal(&mut session_refused, sent, by_session(&mut client));
        let sent = first_use.elapsed();
        note_refusal(&mut key_refused, sent, by_key(&mut client));
    }
    for (what, refused) in [("session", session_refused), ("key", key_refused)] {
        let refused = refused.unwrap_or_else(|| panic!("the {what} was never refused"));
        // Cached until the refresh point; refused before the first entry's TTL ran out.
        assert!(
            refused >= TTL / 2 && refused < TTL,
            "the {what} was first refused {refused:?} after its first use (TTL {TTL:?})"
        );
    }
}

/// Keeps the first time a credential was refused (401); anything but 200 or 401 fails.
fn note_refusal(refused: &mut Option<Duration>, sent: Duration, status: u16) {
    match status {
        200 => {}
        401 => {
            refused.get_or_insert(sent);
        }
        status => panic!("status {status} after {sent:?}"),
    }
}

#[test]
fn a_malformed_secrets_key_stops_start_up_without_printing_it() {
    let out = common::binary()
        .args(["--port", "0", "--bind-address", "127.0.0.1"])
        .env("SECRETS_KEY", "1:0a0b0c0d")
        .output()
        .expect("run coinbit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("SECRETS_KEY"), "{stderr}");
    assert!(!stderr.contains("0a0b0c0d"), "prints the key: {stderr}");
}

/// A registration flood past the password pool's queue is refused at once with 503, and the
/// shards keep answering meanwhile.
#[apply(engines)]
fn a_full_password_pool_answers_503(#[case] engine: &str) {
    let server = start_with(
        engine,
        "pool_full",
        &["--password-hash-threads", "1", "--password-hash-queue", "1"],
    );
    let addr = server.addr;
    let flood: Vec<_> = (0..16)
        .map(|i| {
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                let email = format!("user{i}@example.com");
                let answer = register(&mut client, "User", &email, "correct horse");
                (
                    answer.status,
                    answer.error_code(),
                    answer.header("Retry-After").map(String::from),
                )
            })
        })
        .collect();
    let health = server.get("/health");
    assert!(
        health.status == 200 || health.status == 503,
        "{}",
        health.status
    );
    let answers: Vec<_> = flood.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(answers.iter().any(|a| a.0 == 201), "{answers:?}");
    let busy = (503, "password_pool_busy".to_string(), Some("1".to_string()));
    assert!(answers.contains(&busy), "{answers:?}");
    assert!(
        answers.iter().all(|a| a.0 == 201 || *a == busy),
        "{answers:?}"
    );
}
