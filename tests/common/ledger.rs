//! The money API as the money tests use it: a server on its own database with the payment
//! webhook's secret, an admin, users registered and logged in, funds through a signed webhook
//! delivery, and the ledger check, asserted when the [`Bank`] drops (after every test).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::pg::PgCluster;
use super::{Client, Response, Server};

pub const WEBHOOK_SECRET: &str = "whsec_coinbit_tests";
pub const PASSWORD: &str = "correct horse battery";
pub const FINANCIAL: &str = "/api/enterprise/financial";

/// A logged-in user.
#[derive(Debug, Clone)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub token: String,
}

impl User {
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }
}

/// A server on a database of its own, for one test.
pub struct Bank {
    pub server: Server,
    pub cluster: &'static PgCluster,
    pub db: String,
    pub admin: User,
    /// Whether the drop runs the ledger check (a test that breaks the ledger on purpose turns
    /// it off once it has mended it... or not).
    pub check_on_drop: bool,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A fresh name for events and keys within this test binary.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl Bank {
    /// Starts the server for `test` on `engine` with `args`, its own database on `cluster`,
    /// and an admin.
    pub fn start(cluster: &'static PgCluster, engine: &str, test: &str, args: &[&str]) -> Bank {
        let db = cluster.create_database(&format!("{test}_{engine}"));
        let env = cluster.env(&db);
        let mut all: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        all.push(("PAYMENT_WEBHOOK_SECRET", WEBHOOK_SECRET));
        let mut every = vec!["--shards", "2", "--durable-jobs-poll-interval", "0"];
        every.extend_from_slice(args);
        let server = Server::start_with(engine, &every, &all);
        let mut client = server.connect();
        register(&mut client, "Admin", "admin@coinbit.test", None);
        cluster.psql(
            "primary",
            &db,
            "UPDATE users SET role = 'admin' WHERE email = 'admin@coinbit.test'",
        );
        let admin = login(&mut client, "admin@coinbit.test");
        Bank {
            server,
            cluster,
            db,
            admin,
            check_on_drop: true,
        }
    }

    /// Runs SQL on the primary; the output.
    pub fn sql(&self, sql: &str) -> String {
        self.cluster.psql("primary", &self.db, sql)
    }

    /// Runs SQL on the primary; the error text when the database refuses it.
    pub fn try_sql(&self, sql: &str) -> Result<String, String> {
        self.cluster.try_psql("primary", &self.db, sql)
    }

    /// Registers and logs in a user of `country` (BR: BRL; anything else: USD).
    pub fn user(&self, name: &str, country: &str) -> User {
        let email = format!("{}@coinbit.test", unique(name).to_lowercase());
        let mut client = self.server.connect();
        register(&mut client, name, &email, Some(country));
        login(&mut client, &email)
    }

    /// `GET` as `user`, with `X-Min-LSN` when given.
    pub fn get(&self, user: &User, path: &str, min_lsn: Option<&str>) -> Response {
        let bearer = user.bearer();
        let mut headers = vec![("Authorization", bearer.as_str())];
        if let Some(lsn) = min_lsn {
            headers.push(("X-Min-LSN", lsn));
        }
        self.server.connect().request("GET", path, &headers, b"")
    }

    /// `POST` a money request as `user`, with `Idempotency-Key` when given.
    pub fn post(&self, user: &User, path: &str, key: Option<&str>, body: &Value) -> Response {
        post_with(&mut self.server.connect(), user, path, key, body)
    }

    /// Asks for a recharge of `amount` minor units.
    pub fn recharge(&self, user: &User, amount: i64, key: &str) -> Response {
        self.post(
            user,
            &format!("{FINANCIAL}/recharges"),
            Some(key),
            &json!({ "amount": amount }),
        )
    }

    /// The provider's event paying `recharge_id`.
    pub fn payment_event(event_id: &str, recharge_id: i64, amount: i64, currency: &str) -> Vec<u8> {
        json!({
            "id": event_id,
            "type": "payment.succeeded",
            "data": { "recharge_id": recharge_id, "amount": amount, "currency": currency },
        })
        .to_string()
        .into_bytes()
    }

    /// Delivers `body` to the payment webhook, signed now (or with `signature`).
    pub fn deliver(client: &mut Client, body: &[u8], signature: Option<&str>) -> Response {
        let signed = coinbit::ledger::payment::sign(WEBHOOK_SECRET.as_bytes(), unix_now(), body);
        let signature = signature.unwrap_or(&signed);
        client.request(
            "POST",
            &format!("{FINANCIAL}/webhooks/payment"),
            &[("Payment-Signature", signature)],
            body,
        )
    }

    /// Recharges `amount` and pays it through the webhook; the webhook's answer.
    pub fn fund(&self, user: &User, amount: i64) -> Response {
        let asked = self.recharge(user, amount, &unique("fund"));
        assert_eq!(asked.status, 201, "{}", asked.text());
        let recharge = &asked.json()["recharge"];
        let body = Bank::payment_event(
            &unique("evt"),
            recharge["id"].as_i64().unwrap(),
            amount,
            recharge["currency"].as_str().unwrap(),
        );
        let paid = Bank::deliver(&mut self.server.connect(), &body, None);
        assert_eq!(paid.status, 200, "{}", paid.text());
        assert!(paid.json()["credited"].is_object(), "{}", paid.text());
        paid
    }

    /// The user's balances in `currency` (read on the primary's latest commit).
    pub fn balances(&self, user: &User, min_lsn: Option<&str>) -> Value {
        let answer = self.get(user, &format!("{FINANCIAL}/balances"), min_lsn);
        assert_eq!(answer.status, 200, "{}", answer.text());
        answer.json()
    }

    /// The primary's WAL position now: a read that presents it sees every write before.
    pub fn primary_lsn(&self) -> String {
        self.sql("SELECT pg_current_wal_lsn()")
    }

    /// The ledger check's report.
    pub fn check(&self) -> Value {
        let answer = self.get(&self.admin, &format!("{FINANCIAL}/ledger/check"), None);
        assert_eq!(answer.status, 200, "{}", answer.text());
        answer.json()
    }

    /// Asserts that the ledger balances: per currency, and every stored balance equals its
    /// recomputation, none negative.
    pub fn assert_balanced(&self) {
        let report = self.check();
        assert_eq!(report["ok"], true, "the ledger check failed: {report:#}");
        for currency in report["currencies"].as_array().unwrap() {
            assert_eq!(currency["total_debits"], currency["total_credits"]);
            assert_eq!(currency["net_of_positions"], 0, "{currency}");
        }
    }
}

impl Drop for Bank {
    fn drop(&mut self) {
        if self.check_on_drop && !std::thread::panicking() {
            self.assert_balanced();
        }
    }
}

pub fn post_with(
    client: &mut Client,
    user: &User,
    path: &str,
    key: Option<&str>,
    body: &Value,
) -> Response {
    let bearer = user.bearer();
    let mut headers = vec![
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/json"),
    ];
    if let Some(key) = key {
        headers.push(("Idempotency-Key", key));
    }
    client.request("POST", path, &headers, body.to_string().as_bytes())
}

fn register(client: &mut Client, name: &str, email: &str, country: Option<&str>) {
    let mut body = json!({ "name": name, "email": email, "password": PASSWORD });
    if let Some(country) = country {
        body["country"] = json!(country);
    }
    let answer = client.request(
        "POST",
        "/api/auth/register",
        &[],
        body.to_string().as_bytes(),
    );
    assert_eq!(answer.status, 201, "register {email}: {}", answer.text());
}

fn login(client: &mut Client, email: &str) -> User {
    let body = json!({ "email": email, "password": PASSWORD });
    let answer = client.request("POST", "/api/auth/login", &[], body.to_string().as_bytes());
    assert_eq!(answer.status, 200, "login {email}: {}", answer.text());
    let json = answer.json();
    User {
        id: json["user_id"].as_i64().unwrap(),
        email: email.to_string(),
        token: json["token"].as_str().unwrap().to_string(),
    }
}
