//! The money tests' harness: a server on a real cluster (a primary and one replica), people
//! (users, admins, an operator) with sessions, funding, idempotent POSTs, and the ledger's
//! invariants checked from the database after each test.

use std::sync::OnceLock;

use super::pg::PgCluster;
use super::{Client, Response, Server};

/// One primary and one replica for the money tests of this binary.
pub fn cluster() -> &'static PgCluster {
    static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| PgCluster::start(1))
}

/// A server for one test, with its own database, two shards and `extra` flags.
pub struct Money {
    pub server: Server,
    pub db: String,
}

impl Money {
    pub fn start(engine: &str, test: &str, extra: &[&str]) -> Money {
        let db = cluster().create_database(&format!("{test}_{engine}"));
        Money {
            server: Money::server(engine, &db, extra),
            db,
        }
    }

    /// A new server process on the same database (after the old one was killed), started
    /// as [`Money::start`] started the first.
    pub fn restart(&mut self, engine: &str, extra: &[&str]) {
        self.server = Money::server(engine, &self.db, extra);
    }

    fn server(engine: &str, db: &str, extra: &[&str]) -> Server {
        let env = cluster().env(db);
        let mut env: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        env.push(("PAYMENT_WEBHOOK_SECRET", super::ledger::WEBHOOK_SECRET));
        let mut args = vec!["--shards", "2", "--durable-jobs-poll-interval", "0"];
        args.extend_from_slice(extra);
        Server::start_with(engine, &args, &env)
    }

    pub fn sql(&self, sql: &str) -> String {
        cluster().psql("primary", &self.db, sql)
    }

    /// A user `name` (in Brazil: BRL; elsewhere USD) with `role` and a live session, made in
    /// the database as registration and login make them (a test makes dozens: Argon2id in a
    /// debug build would take most of its time; the accounts tests cover those routes).
    pub fn person(&self, name: &str, country: &str, role: &str) -> Person {
        let token = coinbit::auth::token::new_token();
        let digest = coinbit::auth::token::token_digest(token.as_bytes()).unwrap();
        let digest = coinbit::auth::hex::encode(&digest);
        let currency = if country == "BR" { "BRL" } else { "USD" };
        let email = format!("{}@example.com", name.to_lowercase());
        let id = self.sql(&format!(
            "WITH u AS (INSERT INTO users (name, email, role, country, currency) \
                        VALUES ('{name}', '{email}', '{role}', '{country}', '{currency}') RETURNING id), \
                  s AS (INSERT INTO sessions (user_id, token_sha256, expires_at) \
                        SELECT id, decode('{digest}', 'hex'), now() + interval '1 day' FROM u) \
             SELECT id FROM u"
        ));
        Person {
            id: id.parse().unwrap(),
            auth: format!("Bearer {token}"),
        }
    }

    /// Credits `amount` to the user's real account in `currency`, as a posted transfer from
    /// payment clearing (what a paid recharge does).
    pub fn fund(&self, user: &Person, currency: &str, amount: i64) {
        let u = user.id;
        self.sql(&format!(
            "INSERT INTO ledger_accounts (user_id, kind, currency) \
             SELECT {u}, k, '{currency}' FROM unnest(ARRAY['real','admin_credit','commission','debt']) k \
             ON CONFLICT DO NOTHING;
             WITH r AS (UPDATE ledger_accounts SET balance = balance + {amount} \
                        WHERE user_id = {u} AND kind = 'real' AND currency = '{currency}' RETURNING id), \
                  n AS (SELECT nextval('ledger_transfers_id_seq') AS id) \
             INSERT INTO ledger_transfers (id, debit_account, credit_account, amount, currency, code, \
                                           state, group_id, settled_at) \
             SELECT n.id, (SELECT id FROM ledger_accounts WHERE user_id IS NULL \
                           AND kind = 'payment_clearing' AND currency = '{currency}'), \
                    r.id, {amount}, '{currency}', 'recharge', 'posted', n.id, now() FROM r, n"
        ));
    }

    /// Waits (bounded) until the replica holds `person`, for a read that presents no write's
    /// position (people are made straight in the database).
    pub fn replicated(&self, person: &Person) {
        cluster().wait_on_every_replica(
            "the user",
            &self.db,
            &format!("SELECT count(*) = 1 FROM users WHERE id = {}", person.id),
        );
    }

    /// A recharge of `amount` asked by `user` and paid through the signed webhook, as the
    /// payment provider does it; the webhook's answer.
    pub fn recharge(&self, user: &Person, amount: i64, key: &str) -> Response {
        let asked = post(
            &mut self.server.connect(),
            user,
            &format!("{FINANCIAL}/recharges"),
            key,
            &serde_json::json!({ "amount": amount }),
        );
        assert_eq!(asked.status, 201, "{}", asked.text());
        let recharge = &asked.json()["recharge"];
        let body = super::ledger::Bank::payment_event(
            &format!("evt-{key}"),
            recharge["id"].as_i64().unwrap(),
            amount,
            recharge["currency"].as_str().unwrap(),
        );
        super::ledger::Bank::deliver(&mut self.server.connect(), &body, None)
    }

    /// `caller`'s `action` (`approve`, `reject`, `pay`: an admin's) on withdrawal `id`, under
    /// idempotency key `key`.
    pub fn decide_withdrawal(
        &self,
        caller: &Person,
        id: &str,
        action: &str,
        key: &str,
    ) -> Response {
        post(
            &mut self.server.connect(),
            caller,
            &format!("{FINANCIAL}/withdrawals/{id}/{action}"),
            key,
            &serde_json::json!({}),
        )
    }

    /// (balance, pending_out) of the user's account of `kind` in `currency`.
    pub fn account(&self, user: &Person, kind: &str, currency: &str) -> (i64, i64) {
        let out = self.sql(&format!(
            "SELECT balance || ',' || pending_out FROM ledger_accounts \
             WHERE user_id = {} AND kind = '{kind}' AND currency = '{currency}'",
            user.id
        ));
        let (balance, pending) = out.split_once(',').unwrap_or(("0", "0"));
        (balance.parse().unwrap(), pending.parse().unwrap())
    }

    /// The ledger's invariants, recomputed from the transfers: per currency what is debited
    /// is credited (every transfer has both sides), each user account's stored balance and
    /// pending equal their recomputation, none is negative, and a pending transfer is one
    /// that was never posted nor voided. Panics with what is wrong.
    pub fn assert_ledger_sound(&self) {
        let drift = self.sql(
            "WITH posted AS ( \
                 SELECT a.id, a.kind, a.balance, a.pending_out, \
                   coalesce((SELECT sum(amount) FROM ledger_transfers t \
                             WHERE t.credit_account = a.id AND t.state = 'posted'), 0) AS credits, \
                   coalesce((SELECT sum(amount) FROM ledger_transfers t \
                             WHERE t.debit_account = a.id AND t.state = 'posted'), 0) AS debits, \
                   coalesce((SELECT sum(amount) FROM ledger_transfers t \
                             WHERE t.debit_account = a.id AND t.state = 'pending'), 0) AS held \
                 FROM ledger_accounts a WHERE a.user_id IS NOT NULL) \
             SELECT string_agg(id || ':' || kind || ' stored ' || balance || '/' || pending_out || \
                               ' computed ' || (CASE WHEN kind = 'debt' THEN debits - credits \
                                                     ELSE credits - debits END) || '/' || held, '; ') \
             FROM posted \
             WHERE balance <> (CASE WHEN kind = 'debt' THEN debits - credits ELSE credits - debits END) \
                OR pending_out <> held OR balance < 0 OR balance - pending_out < 0",
        );
        assert_eq!(drift, "", "user accounts drifted from their transfers");
        let unbalanced = self.sql(
            "SELECT string_agg(currency, ',') FROM ( \
                 SELECT t.currency FROM ledger_transfers t \
                 JOIN ledger_accounts d ON d.id = t.debit_account \
                 JOIN ledger_accounts c ON c.id = t.credit_account \
                 WHERE d.currency <> t.currency OR c.currency <> t.currency) x",
        );
        assert_eq!(unbalanced, "", "transfers across currencies");
        // And the server's own check, as an admin sees it.
        // A new auditor each time: a test may check more than once.
        static AUDITORS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = AUDITORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let auditor = self.person(&format!("Auditor{}x{n}", std::process::id()), "US", "admin");
        let check = get(
            &mut self.server.connect(),
            &auditor,
            &format!("{FINANCIAL}/ledger/check"),
        );
        assert_eq!(check.status, 200, "{}", check.text());
        assert_eq!(check.json()["ok"], true, "ledger check: {}", check.text());
    }

    /// Per commission charge: its transfers in one ledger group, revenue in it equal to the
    /// commission, at most one affiliate share, in that group, equal to its earnings row and not
    /// above the commission. Panics with the charges that break it.
    pub fn assert_commission_groups_sound(&self) {
        let wrong = self.sql(
            "WITH g AS ( \
                 SELECT ch.position_id, ch.commission, \
                        (SELECT count(DISTINCT t.group_id) FROM ledger_transfers t \
                         WHERE t.metadata->>'position_id' = ch.position_id \
                           AND t.code IN ('commission', 'commission_debt')) AS groups, \
                        (SELECT min(t.group_id) FROM ledger_transfers t \
                         WHERE t.metadata->>'position_id' = ch.position_id \
                           AND t.code IN ('commission', 'commission_debt')) AS grp \
                 FROM commission_charges ch WHERE ch.commission > 0), \
             s AS ( \
                 SELECT g.*, \
                        (SELECT coalesce(sum(t.amount), 0) FROM ledger_transfers t \
                         JOIN ledger_accounts c ON c.id = t.credit_account \
                         WHERE t.group_id = g.grp AND c.kind = 'revenue') AS revenue, \
                        (SELECT count(*) FROM ledger_transfers t \
                         WHERE t.code = 'affiliate_share' \
                           AND t.metadata->>'position_id' = g.position_id) AS shares, \
                        (SELECT coalesce(sum(t.amount), 0) FROM ledger_transfers t \
                         WHERE t.group_id = g.grp AND t.code = 'affiliate_share') AS share, \
                        coalesce((SELECT amount FROM affiliate_earnings e \
                                  WHERE e.position_id = g.position_id), 0) AS earned \
                 FROM g) \
             SELECT coalesce(string_agg(position_id || ' groups ' || groups || ' revenue ' || \
                                        revenue || '/' || commission || ' shares ' || shares || \
                                        ' ' || share || '/' || earned, '; '), '') \
             FROM s WHERE groups <> 1 OR revenue <> commission OR shares > 1 OR share <> earned \
                       OR share > commission",
        );
        assert_eq!(wrong, "", "charges whose group is wrong");
    }
}

/// Someone logged in.
#[derive(Debug, Clone)]
pub struct Person {
    pub id: i64,
    pub auth: String,
}

/// A POST of `body` with `key` as its Idempotency-Key.
pub fn post(
    client: &mut Client,
    who: &Person,
    path: &str,
    key: &str,
    body: &serde_json::Value,
) -> Response {
    client.request(
        "POST",
        path,
        &[("Authorization", &who.auth), ("Idempotency-Key", key)],
        body.to_string().as_bytes(),
    )
}

pub fn get(client: &mut Client, who: &Person, path: &str) -> Response {
    client.request("GET", path, &[("Authorization", &who.auth)], b"")
}

/// A GET that sees the write that answered `after` (its `X-Commit-LSN`).
pub fn get_after(client: &mut Client, who: &Person, path: &str, after: &Response) -> Response {
    let lsn = after.header("X-Commit-LSN").expect("X-Commit-LSN");
    client.request(
        "GET",
        path,
        &[("Authorization", &who.auth), ("X-Min-LSN", lsn)],
        b"",
    )
}

pub const FINANCIAL: &str = "/api/enterprise/financial";

/// Every day of the month: pay any day (for tests that pay today).
pub fn every_day() -> String {
    (1..=31)
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Today's day of the month (UTC).
pub fn today_day() -> u32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    coinbit::ledger::withdrawals::Date::from_unix(secs)
        .day
        .into()
}
