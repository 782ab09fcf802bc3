//! The ledger on a real PostgreSQL primary with a streaming replica, on both engines:
//! idempotent money requests (sequential and concurrent repeats, another body, in flight), the
//! payment webhook (signatures, each event credits once, concurrently too), debt paid first,
//! the bonus, balances and transactions only the caller's (read from the replica, with
//! read-your-writes), the check (it passes after every test and catches a tampered balance),
//! the database's own refusals, and the purge of old idempotency records.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::Duration;

use rstest::rstest;
use rstest_reuse::{self, apply};
use serde_json::{json, Value};

use common::ledger::{post_with, unique, Bank, User, FINANCIAL};
use common::pg::{psql_binary, PgCluster};
use common::{engines, wait_for, LoadgenSummary};

/// One primary and one replica: balances and transactions read from the replica.
fn cluster() -> &'static PgCluster {
    static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| PgCluster::start(1))
}

fn recharges_path() -> String {
    format!("{FINANCIAL}/recharges")
}

fn count(bank: &Bank, sql: &str) -> i64 {
    bank.sql(sql).parse().unwrap()
}

#[apply(engines)]
fn a_repeated_recharge_moves_once_with_the_same_answer(#[case] engine: &str) {
    let bank = Bank::start(cluster(), engine, "idem_seq", &[]);
    let user = bank.user("Ana", "BR");
    let path = recharges_path();
    let body = json!({ "amount": 20_000 });

    let missing = bank.post(&user, &path, None, &body);
    assert_eq!(missing.status, 400, "{}", missing.text());
    assert_eq!(missing.error_code(), "idempotency_key_required");
    let bad = bank.post(&user, &path, Some("with space"), &body);
    assert_eq!(bad.status, 400);

    let first = bank.post(&user, &path, Some("k-1"), &body);
    assert_eq!(first.status, 201, "{}", first.text());
    assert!(first.header("Idempotency-Replayed").is_none());
    for _ in 0..3 {
        let again = bank.post(&user, &path, Some("k-1"), &body);
        assert_eq!(again.status, 201);
        assert_eq!(again.body, first.body, "a replay is byte for byte");
        assert_eq!(again.header("Idempotency-Replayed"), Some("true"));
    }
    let other = bank.post(&user, &path, Some("k-1"), &json!({ "amount": 30_000 }));
    assert_eq!(other.status, 422, "{}", other.text());
    assert_eq!(other.error_code(), "idempotency_key_reused");

    // A final refusal is stored and replayed too.
    let low = bank.post(&user, &path, Some("k-low"), &json!({ "amount": 14_999 }));
    assert_eq!(low.status, 422, "{}", low.text());
    assert_eq!(low.error_code(), "amount_below_minimum");
    assert_eq!(low.json()["error"]["minimum"], 15_000);
    let low_again = bank.post(&user, &path, Some("k-low"), &json!({ "amount": 14_999 }));
    assert_eq!(low_again.status, 422);
    assert_eq!(low_again.body, low.body);
    assert_eq!(low_again.header("Idempotency-Replayed"), Some("true"));

    for amount in [json!(150.5), json!("15000"), json!(0)] {
        let odd = bank.post(
            &user,
            &path,
            Some(&unique("odd")),
            &json!({ "amount": amount }),
        );
        assert_eq!(odd.status, 422, "{amount}: {}", odd.text());
        assert_eq!(odd.error_code(), "invalid_amount");
    }

    // Keys are the caller's: another user's same key is a request of its own.
    let other_user = bank.user("Bia", "BR");
    let theirs = bank.post(&other_user, &path, Some("k-1"), &body);
    assert_eq!(theirs.status, 201);
    assert!(theirs.header("Idempotency-Replayed").is_none());

    let rows = count(
        &bank,
        &format!(
            "SELECT count(*) FROM ledger_recharges WHERE user_id = {}",
            user.id
        ),
    );
    assert_eq!(rows, 1, "one recharge however often it was asked");
}

#[apply(engines)]
fn fifty_concurrent_repeats_move_once(#[case] engine: &str) {
    let bank = Bank::start(cluster(), engine, "idem_conc", &[]);
    let user = bank.user("Caio", "US");
    let total = 50;
    let barrier = Arc::new(Barrier::new(total));
    let path = recharges_path();
    let answers: Vec<common::Response> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..total)
            .map(|_| {
                let (barrier, user, path, addr) =
                    (barrier.clone(), user.clone(), &path, bank.server.addr);
                scope.spawn(move || {
                    let mut client = common::Client::connect(addr);
                    barrier.wait();
                    post_with(
                        &mut client,
                        &user,
                        path,
                        Some("same-key"),
                        &json!({ "amount": 5_000 }),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created: Vec<&common::Response> = answers.iter().filter(|a| a.status == 201).collect();
    assert!(!created.is_empty());
    for answer in &answers {
        assert!(
            answer.status == 201 || answer.status == 409,
            "{} {}",
            answer.status,
            answer.text()
        );
        if answer.status == 409 {
            assert_eq!(answer.error_code(), "idempotency_key_in_flight");
        }
    }
    let fresh = created
        .iter()
        .filter(|a| a.header("Idempotency-Replayed").is_none())
        .count();
    assert_eq!(
        fresh, 1,
        "one answer applied the effect; the others replayed it"
    );
    for answer in &created {
        assert_eq!(answer.body, created[0].body, "identical bodies");
    }
    let rows = count(
        &bank,
        &format!(
            "SELECT count(*) FROM ledger_recharges WHERE user_id = {}",
            user.id
        ),
    );
    assert_eq!(rows, 1);
    // After the burst, a repeat replays it.
    let again = bank.post(&user, &path, Some("same-key"), &json!({ "amount": 5_000 }));
    assert_eq!(again.status, 201);
    assert_eq!(again.body, created[0].body);
}

#[apply(engines)]
fn a_key_in_flight_answers_409(#[case] engine: &str) {
    let bank = Bank::start(cluster(), engine, "idem_flight", &[]);
    let user = bank.user("Davi", "BR");
    // Another transaction holds the key's lock, as a request still running would.
    let holder = std::process::Command::new(psql_binary())
        .args(["-X", "-q", "-At", "-h", "127.0.0.1", "-U", "postgres"])
        .args(["-p", &bank.cluster.node_port("primary").to_string()])
        .args(["-d", &bank.db, "-c"])
        .arg(format!(
            "SELECT pg_advisory_xact_lock(hashtextextended('busy', {})), pg_sleep(60)",
            user.id
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Held once the holder sleeps (the lock is taken first in its select list); any advisory
    // lock would not do: the server's own work takes some. Only this database's sessions: the
    // other engine's run of this test holds and ends its own key on the same cluster.
    wait_for("the key's lock held", Duration::from_secs(30), || {
        (bank.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' \
             AND datname = current_database() AND query LIKE '%hashtextextended(''busy''%'",
        ) != "0")
            .then_some(())
    });
    let body = json!({ "amount": 15_000 });
    let busy = bank.post(&user, &recharges_path(), Some("busy"), &body);
    assert_eq!(busy.status, 409, "{}", busy.text());
    assert_eq!(busy.error_code(), "idempotency_key_in_flight");
    bank.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE '%pg_advisory_xact_lock%' \
         AND pid <> pg_backend_pid()",
    );
    let mut holder = holder;
    holder.wait().unwrap();
    // The 409 was not stored: once the other is gone, the request applies.
    let done = bank.post(&user, &recharges_path(), Some("busy"), &body);
    assert_eq!(done.status, 201, "{}", done.text());
    assert!(done.header("Idempotency-Replayed").is_none());
}

fn real(balances: &Value, currency: &str) -> i64 {
    balances["balances"][currency]["real"]["balance"]
        .as_i64()
        .unwrap()
}

#[apply(engines)]
fn an_event_delivered_three_times_credits_once(#[case] engine: &str) {
    let bank = Bank::start(cluster(), engine, "webhook_once", &[]);
    let user = bank.user("Eva", "BR");
    let asked = bank.recharge(&user, 20_000, "r-1");
    assert_eq!(asked.status, 201, "{}", asked.text());
    let id = asked.json()["recharge"]["id"].as_i64().unwrap();
    let event = Bank::payment_event("evt_once", id, 20_000, "BRL");
    let mut client = bank.server.connect();
    let first = Bank::deliver(&mut client, &event, None);
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.json()["credited"]["amount"], 20_000);
    for _ in 0..2 {
        let again = Bank::deliver(&mut client, &event, None);
        assert_eq!(again.status, 200, "{}", again.text());
        assert_eq!(again.json()["duplicate"], true);
    }
    // Another event for the paid recharge credits nothing either.
    let other = Bank::payment_event("evt_other", id, 20_000, "BRL");
    assert_eq!(
        Bank::deliver(&mut client, &other, None).json()["duplicate"],
        true
    );
    let lsn = first.header("X-Commit-LSN").unwrap().to_string();
    assert_eq!(real(&bank.balances(&user, Some(&lsn)), "BRL"), 20_000);

    // Concurrently: ten deliveries of one event, one credit.
    let asked = bank.recharge(&user, 30_000, "r-2");
    let id = asked.json()["recharge"]["id"].as_i64().unwrap();
    let event = Bank::payment_event("evt_conc", id, 30_000, "BRL");
    let total = 10;
    let barrier = Arc::new(Barrier::new(total));
    let answers: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..total)
            .map(|_| {
                let (barrier, addr, event) = (barrier.clone(), bank.server.addr, &event);
                scope.spawn(move || {
                    let mut client = common::Client::connect(addr);
                    barrier.wait();
                    let answer = Bank::deliver(&mut client, event, None);
                    assert_eq!(answer.status, 200, "{}", answer.text());
                    answer.json()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let credited = answers.iter().filter(|a| a["credited"].is_object()).count();
    assert_eq!(credited, 1, "{answers:?}");
    let transfers = count(
        &bank,
        "SELECT count(*) FROM ledger_transfers WHERE code = 'recharge'",
    );
    assert_eq!(transfers, 2);
    let lsn = bank.primary_lsn();
    assert_eq!(real(&bank.balances(&user, Some(&lsn)), "BRL"), 50_000);
}

#[apply(engines)]
fn a_bad_or_stale_signature_changes_nothing(#[case] engine: &str) {
    let bank = Bank::start(cluster(), engine, "webhook_bad", &[]);
    let user = bank.user("Gil", "US");
    let asked = bank.recharge(&user, 5_000, "r-1");
    let id = asked.json()["recharge"]["id"].as_i64().unwrap();
    let event = Bank::payment_event("evt_bad", id, 5_000, "USD");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let wrong_secret = coinbit::ledger::payment::sign(b"not the secret", now, &event);
    let stale = coinbit::ledger::payment::sign(
        common::ledger::WEBHOOK_SECRET.as_bytes(),
        now - 301,
        &event,
    );
    let other_body = coinbit::ledger::payment::sign(
        common::ledger::WEBHOOK_SECRET.as_bytes(),
        now,
        b"{\"id\":\"evt_bad\"}",
    );
    let mut client = bank.server.connect();
    for (signature, status, code) in [
        (wrong_secret.as_str(), 401, "invalid_signature"),
        (stale.as_str(), 401, "signature_expired"),
        (other_body.as_str(), 401, "invalid_signature"),
        ("t=1,v1=nothex", 400, "bad_signature_header"),
        ("", 400, "bad_signature_header"),
    ] {
        let answer = Bank::deliver(&mut client, &event, Some(signature));
        assert_eq!(answer.status, status, "{signature}: {}", answer.text());
        assert_eq!(answer.error_code(), code);
    }
    let unsigned = client.request(
        "POST",
        &format!("{FINANCIAL}/webhooks/payment"),
        &[],
        &event,
    );
    assert_eq!(unsigned.status, 400);
    assert_eq!(count(&bank, "SELECT count(*) FROM payment_events"), 0);
    assert_eq!(count(&bank, "SELECT count(*) FROM ledger_transfers"), 0);
    assert_eq!(
        bank.sql(&format!(
            "SELECT state FROM ledger_recharges WHERE id = {id}"
        )),
        "awaiting_payment"
    );
    // A signed event that does not match its recharge credits nothing.
    let wrong = Bank::payment_event("evt_wrong", id, 4_000, "USD");
    let answer = Bank::deliver(&mut client, &wrong, None);
    assert_eq!(answer.status, 422, "{}", answer.text());
    let unknown = Bank::payment_event("evt_unknown", id + 1_000, 5_000, "USD");
    assert_eq!(Bank::deliver(&mut client, &unknown, None).status, 404);
    assert_eq!(count(&bank, "SELECT count(*) FROM ledger_transfers"), 0);
    assert_eq!(real(&bank.balances(&user, None), "USD"), 0);
}

/// Makes `user` owe `amount` (as a commission their balance could not cover would).
fn owe(bank: &Bank, user: &User, amount: i64, currency: &str) {
    bank.sql(&format!(
        "INSERT INTO ledger_accounts (user_id, kind, currency) \
         SELECT {uid}, k, '{currency}' FROM unnest(ARRAY['real','admin_credit','commission','debt']) k \
         ON CONFLICT DO NOTHING; \
         WITH d AS (UPDATE ledger_accounts SET balance = balance + {amount} \
                    WHERE user_id = {uid} AND kind = 'debt' AND currency = '{currency}' RETURNING id) \
         INSERT INTO ledger_transfers (debit_account, credit_account, amount, currency, code, \
                                       state, group_id, settled_at) \
         SELECT d.id, r.id, {amount}, '{currency}', 'commission', 'posted', 0, now() \
         FROM d, ledger_accounts r \
         WHERE r.user_id IS NULL AND r.kind = 'revenue' AND r.currency = '{currency}'",
        uid = user.id
    ));
}

#[apply(engines)]
fn a_recharge_pays_debt_first_and_earns_its_bonus(#[case] engine: &str) {
    let bank = Bank::start(cluster(), engine, "debt_bonus", &[]);
    let ana = bank.user("Ana", "BR");
    owe(&bank, &ana, 3_000, "BRL");
    let paid = bank.fund(&ana, 100_000);
    let credited = &paid.json()["credited"];
    assert_eq!(credited["debt_paid"], 3_000);
    assert_eq!(credited["bonus"], 10_000);
    let lsn = paid.header("X-Commit-LSN").unwrap().to_string();
    let brl = bank.balances(&ana, Some(&lsn))["balances"]["BRL"].clone();
    assert_eq!(brl["real"]["balance"], 97_000);
    assert_eq!(brl["debt"], 0);
    assert_eq!(brl["admin_credit"]["balance"], 10_000);
    assert_eq!(brl["withdrawable"], 97_000);
    // The three transfers are one group.
    let page = bank.get(&ana, &format!("{FINANCIAL}/transactions"), Some(&lsn));
    let items = page.json()["transactions"].as_array().unwrap().clone();
    let codes: Vec<&str> = items.iter().map(|t| t["code"].as_str().unwrap()).collect();
    assert_eq!(
        codes,
        ["recharge_bonus", "debt_payment", "recharge", "commission"]
    );
    let groups: BTreeSet<i64> = items[..3]
        .iter()
        .map(|t| t["group_id"].as_i64().unwrap())
        .collect();
    assert_eq!(groups.len(), 1);
    assert_eq!(items[1]["direction"], "internal");

    // A debt larger than the recharge takes all of it.
    let bia = bank.user("Bia", "BR");
    owe(&bank, &bia, 20_000, "BRL");
    let paid = bank.fund(&bia, 15_000);
    assert_eq!(paid.json()["credited"]["debt_paid"], 15_000);
    let brl = bank.balances(&bia, paid.header("X-Commit-LSN"))["balances"]["BRL"].clone();
    assert_eq!(brl["real"]["balance"], 0);
    assert_eq!(brl["debt"], 5_000);

    // USD: the bonus from US$300, none below.
    let cal = bank.user("Cal", "US");
    assert_eq!(bank.fund(&cal, 29_999).json()["credited"]["bonus"], 0);
    assert_eq!(bank.fund(&cal, 30_000).json()["credited"]["bonus"], 3_000);
    let usd = bank.balances(&cal, Some(&bank.primary_lsn()))["balances"]["USD"].clone();
    assert_eq!(usd["real"]["balance"], 59_999);
    assert_eq!(usd["admin_credit"]["balance"], 3_000);
    let below = bank.recharge(&cal, 2_999, "usd-low");
    assert_eq!(below.status, 422);
    assert_eq!(below.json()["error"]["minimum"], 3_000);
}

#[apply(engines)]
fn balances_and_transactions_are_the_callers_own(#[case] engine: &str) {
    let bank = Bank::start(cluster(), engine, "own_only", &[]);
    let ana = bank.user("Ana", "BR");
    let bob = bank.user("Bob", "BR");
    for amount in [15_000, 16_000, 17_000] {
        bank.fund(&ana, amount);
    }
    let paid = bank.fund(&bob, 150_000);
    let lsn = paid.header("X-Commit-LSN").unwrap().to_string();

    // Read-your-writes from the replica: Bob sees his credit at once.
    let bob_brl = bank.balances(&bob, Some(&lsn));
    assert_eq!(bob_brl["user_id"], bob.id);
    assert_eq!(real(&bob_brl, "BRL"), 150_000);
    let ana_brl = bank.balances(&ana, Some(&lsn));
    assert_eq!(ana_brl["user_id"], ana.id);
    assert_eq!(real(&ana_brl, "BRL"), 48_000);

    // Ana's pages, one transfer each, walked by cursor.
    let mut seen = Vec::new();
    let mut cursor: Option<i64> = None;
    loop {
        let path = match cursor {
            Some(c) => format!("{FINANCIAL}/transactions?limit=1&cursor={c}"),
            None => format!("{FINANCIAL}/transactions?limit=1"),
        };
        let page = bank.get(&ana, &path, Some(&lsn));
        assert_eq!(page.status, 200, "{}", page.text());
        let page = page.json();
        for t in page["transactions"].as_array().unwrap() {
            seen.push(t["id"].as_i64().unwrap());
        }
        match page["next_cursor"].as_i64() {
            Some(next) => cursor = Some(next),
            None => break,
        }
        assert!(seen.len() < 100, "the cursor never ends");
    }
    let ana_ids: Vec<i64> = bank
        .sql(&format!(
            "SELECT t.id FROM ledger_transfers t JOIN ledger_accounts a \
             ON a.id IN (t.debit_account, t.credit_account) \
             WHERE a.user_id = {} GROUP BY t.id ORDER BY t.id DESC",
            ana.id
        ))
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(seen, ana_ids);
    assert_eq!(seen.len(), 3);
    let whole = bank.get(&ana, &format!("{FINANCIAL}/transactions"), Some(&lsn));
    for t in whole.json()["transactions"].as_array().unwrap() {
        assert_eq!(t["code"], "recharge");
        assert_eq!(t["to"], "real");
        assert!(!t.to_string().contains(&format!("\"user_id\":{}", bob.id)));
    }
    let bob_page = bank.get(&bob, &format!("{FINANCIAL}/transactions"), Some(&lsn));
    let bob_ids: BTreeSet<i64> = bob_page.json()["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    assert_eq!(bob_ids.len(), 2, "recharge and bonus");
    assert!(seen.iter().all(|id| !bob_ids.contains(id)));

    for bad in ["?cursor=abc", "?limit=0", "?limit=201", "?cursor=-3"] {
        let answer = bank.get(&ana, &format!("{FINANCIAL}/transactions{bad}"), None);
        assert_eq!(answer.status, 400, "{bad}");
    }
    // Without a session: 401; a user is not an admin: 403.
    let anonymous =
        bank.server
            .connect()
            .request("GET", &format!("{FINANCIAL}/balances"), &[], b"");
    assert_eq!(anonymous.status, 401);
    let check = bank.get(&ana, &format!("{FINANCIAL}/ledger/check"), None);
    assert_eq!(check.status, 403);
}

/// Balance reads that wait for one connection go out together as one `= ANY($1)` statement,
/// and each caller gets their own accounts out of its rows (several rows a user, in two
/// currencies): nobody's balances in another's answer.
#[apply(engines)]
fn balance_reads_queued_together_each_get_their_own_accounts(#[case] engine: &str) {
    // One connection per node: concurrent reads queue behind each other.
    let bank = Bank::start(cluster(), engine, "balances_batched", &["--pool-size", "1"]);
    bank.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements");
    // Set before the server's first read on a replica opens its connection there.
    bank.sql(&format!(
        "ALTER DATABASE {} SET pg_stat_statements.track_planning = on",
        bank.db
    ));
    let users: Vec<User> = ["Ana", "Bia", "Cal", "Dan"]
        .iter()
        .map(|name| bank.user(name, if *name == "Cal" { "US" } else { "BR" }))
        .collect();
    // Different amounts, a bonus (admin credit) for some, a debt for one.
    for (n, user) in users.iter().enumerate() {
        bank.fund(user, 30_000 + 1_000 * n as i64);
    }
    owe(&bank, &users[3], 700, "BRL");
    owe(&bank, &users[2], 900, "BRL");
    let lsn = bank.primary_lsn();
    let expected: Vec<Value> = users.iter().map(|u| bank.balances(u, Some(&lsn))).collect();
    for (user, balances) in users.iter().zip(&expected) {
        assert_eq!(balances["user_id"], user.id);
    }
    assert_eq!(real(&expected[1], "BRL"), 31_000);
    assert_eq!(expected[3]["balances"]["BRL"]["debt"], 700);
    assert_eq!(real(&expected[2], "USD"), 32_000);
    assert_eq!(expected[2]["balances"]["BRL"]["debt"], 900);

    const THREADS: usize = 8;
    const READS: usize = 100;
    let addr = bank.server.addr;
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let (users, expected) = (&users, &expected);
            scope.spawn(move || {
                let mut client = common::Client::connect(addr);
                for n in 0..READS {
                    let pick = (t + n) % users.len();
                    let bearer = users[pick].bearer();
                    let path = format!("{FINANCIAL}/balances");
                    let read = client.request("GET", &path, &[("Authorization", &bearer)], b"");
                    assert_eq!(read.status, 200, "{}", read.text());
                    assert_eq!(read.json(), expected[pick], "user {}", users[pick].id);
                }
            });
        }
    });
    // Fewer statements ran on the replicas than reads were answered: batches.
    let counted = |column: &str, condition: &str| -> u64 {
        let sql = format!(
            "SELECT coalesce(sum({column}), 0) FROM pg_stat_statements s \
             JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = current_database() \
             AND s.query LIKE 'SELECT a.user_id, a.kind,%WHERE a.user_id {condition}'"
        );
        (1..=bank.cluster.replicas)
            .map(|i| bank.cluster.psql(&format!("replica{i}"), &bank.db, &sql))
            .map(|n| n.parse::<u64>().unwrap())
            .sum()
    };
    let (alone, batched) = (counted("calls", "= $1"), counted("calls", "= ANY($1)"));
    assert!(
        batched > 0,
        "no batched statement ran ({alone} reads alone)"
    );
    assert!(
        alone + batched < (THREADS * READS) as u64,
        "{alone} reads alone and {batched} batched for {} reads",
        THREADS * READS
    );
    // A replica plans the batched statement once per connection, not on every run.
    let plans = counted("plans", "= ANY($1)");
    assert!(
        batched > 10 && plans < batched,
        "{plans} plans for {batched} batched runs"
    );
}

#[apply(engines)]
fn the_check_catches_a_tampered_balance(#[case] engine: &str) {
    let bank = Bank::start(cluster(), engine, "check_tamper", &[]);
    let ana = bank.user("Ana", "BR");
    bank.fund(&ana, 120_000);
    bank.assert_balanced();
    let report = bank.check();
    let brl = report["currencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["currency"] == "BRL")
        .unwrap()
        .clone();
    assert_eq!(brl["posted_transfers"], 2, "the recharge and its bonus");
    assert_eq!(brl["total_debits"], 132_000);

    let real_account = bank.sql(&format!(
        "SELECT id FROM ledger_accounts WHERE user_id = {} AND kind = 'real'",
        ana.id
    ));
    bank.sql(&format!(
        "UPDATE ledger_accounts SET balance = balance + 1 WHERE id = {real_account}"
    ));
    let report = bank.check();
    assert_eq!(report["ok"], false, "{report:#}");
    let drift = report["drift"].as_array().unwrap();
    assert_eq!(drift.len(), 1, "{report:#}");
    assert_eq!(drift[0]["account_id"].to_string(), real_account);
    assert_eq!(drift[0]["stored_balance"], 120_001);
    assert_eq!(drift[0]["recomputed_balance"], 120_000);
    bank.sql(&format!(
        "UPDATE ledger_accounts SET balance = balance - 1 WHERE id = {real_account}"
    ));
    bank.assert_balanced();
}

#[apply(engines)]
fn the_database_refuses_what_the_ledger_forbids(#[case] engine: &str) {
    let bank = Bank::start(cluster(), engine, "db_rules", &[]);
    let ana = bank.user("Ana", "BR");
    bank.fund(&ana, 15_000);
    let refused = [
        (
            format!(
                "UPDATE ledger_accounts SET balance = -1 WHERE user_id = {} AND kind = 'real'",
                ana.id
            ),
            "ledger_accounts_never_negative",
        ),
        (
            format!(
                "UPDATE ledger_accounts SET pending_out = 15001 WHERE user_id = {} AND kind = 'real'",
                ana.id
            ),
            "ledger_accounts_never_negative",
        ),
        (
            "UPDATE ledger_transfers SET amount = 1".to_string(),
            "immutable",
        ),
        (
            "UPDATE ledger_transfers SET state = 'voided'".to_string(),
            "immutable",
        ),
        ("DELETE FROM ledger_transfers".to_string(), "never deleted"),
        ("TRUNCATE ledger_transfers CASCADE".to_string(), "never truncated"),
        (
            "UPDATE ledger_accounts SET balance = 5 WHERE user_id IS NULL AND kind = 'revenue'"
                .to_string(),
            "ledger_accounts_system_unstored",
        ),
        (
            "INSERT INTO ledger_transfers (debit_account, credit_account, amount, currency, code, \
             state, group_id, settled_at) \
             SELECT b.id, u.id, 1, 'BRL', 'x', 'posted', 0, now() FROM ledger_accounts b, ledger_accounts u \
             WHERE b.user_id IS NULL AND b.kind = 'revenue' AND b.currency = 'USD' \
             AND u.user_id IS NULL AND u.kind = 'fees' AND u.currency = 'BRL'"
                .to_string(),
            "currency",
        ),
    ];
    for (sql, why) in refused {
        let error = bank.try_sql(&sql).expect_err(&sql);
        assert!(error.contains(why), "{sql}: {error}");
    }

    // A hold is posted or voided, never both: the second settles nothing.
    let hold = bank.sql(&format!(
        "WITH a AS (UPDATE ledger_accounts SET pending_out = pending_out + 5000 \
                    WHERE user_id = {} AND kind = 'real' RETURNING id, currency) \
         INSERT INTO ledger_transfers (debit_account, credit_account, amount, currency, code, state, group_id) \
         SELECT a.id, w.id, 5000, a.currency, 'withdrawal', 'pending', 0 FROM a, ledger_accounts w \
         WHERE w.user_id IS NULL AND w.kind = 'withdrawals_in_flight' AND w.currency = a.currency \
         RETURNING id",
        ana.id
    ));
    bank.assert_balanced();
    let brl = bank.balances(&ana, Some(&bank.primary_lsn()))["balances"]["BRL"].clone();
    assert_eq!(brl["real"]["pending"], 5_000);
    assert_eq!(brl["real"]["available"], 10_000);
    bank.sql(&format!(
        "UPDATE ledger_transfers SET state = 'voided', settled_at = now() WHERE id = {hold}; \
         UPDATE ledger_accounts SET pending_out = pending_out - 5000 WHERE user_id = {} AND kind = 'real'",
        ana.id
    ));
    let posted_after_void = bank.try_sql(&format!(
        "UPDATE ledger_transfers SET state = 'posted' WHERE id = {hold}"
    ));
    assert!(posted_after_void.unwrap_err().contains("immutable"));
}

#[apply(engines)]
fn old_idempotency_records_are_purged(#[case] engine: &str) {
    let bank = Bank::start(
        cluster(),
        engine,
        "idem_purge",
        // The money sweep on too: the sweeps take turns in one task, and the purge keeps its.
        &[
            "--idempotency-purge-interval",
            "100",
            "--money-sweep-interval",
            "100",
        ],
    );
    let ana = bank.user("Ana", "BR");
    let old = unique("old");
    assert_eq!(bank.recharge(&ana, 15_000, &old).status, 201);
    assert_eq!(bank.recharge(&ana, 15_000, "fresh").status, 201);
    bank.sql(&format!(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = '{old}'"
    ));
    wait_for("the old record purged", Duration::from_secs(10), || {
        (bank.sql("SELECT count(*) FROM idempotency_keys") == "1").then_some(())
    });
    assert_eq!(
        bank.sql("SELECT key FROM idempotency_keys"),
        "fresh",
        "a record inside its 24 h stays"
    );
    // The old key is free again: a new request with it applies.
    let again = bank.recharge(&ana, 15_000, &old);
    assert_eq!(again.status, 201);
    assert!(again.header("Idempotency-Replayed").is_none());
}

/// A database of its own named `name`, the server's database tier started on it (no server),
/// and one BRL user in it: for the tests of the ledger's API straight on the database tier.
fn store_database(name: &str) -> (Arc<coinbit::db::Database>, String, i64) {
    let cluster = cluster();
    let name = cluster.create_database(name);
    let url = cluster.url("primary", &name);
    let cli = coinbit::config::Cli::parse_from(["coinbit", "--database-url", &url], &[]).unwrap();
    let database = coinbit::db::Database::start(&cli.config.database, None)
        .unwrap()
        .unwrap();
    let user = cluster
        .psql(
            "primary",
            &name,
            "INSERT INTO users (name, email, country, currency) \
             VALUES ('Store', 'store@coinbit.test', 'BR', 'BRL') RETURNING id",
        )
        .parse()
        .unwrap();
    (database, name, user)
}

/// Moves `amount` from the BRL system account of kind `from` into the user's BRL account of
/// kind `into` (the user's accounts made on first use): held pending, or posted. The user's
/// accounts.
fn credit_user(
    conn: &mut coinbit::db::DbConn,
    user: i64,
    (from, into): (coinbit::ledger::rules::Kind, coinbit::ledger::rules::Kind),
    amount: i64,
    code: &'static str,
    pending: bool,
) -> Result<coinbit::ledger::store::UserAccounts, coinbit::db::DbError> {
    use coinbit::ledger::rules::Currency;
    use coinbit::ledger::store::{self, NewTransfer};
    let mine = store::open_user_accounts(conn, user, Currency::Brl)?;
    let transfer = NewTransfer {
        debit: store::system_account(conn, from, Currency::Brl)?,
        credit: mine.get(into).expect("a user account kind"),
        amount,
        code,
        group: None,
        metadata: json!({}),
    };
    let made = if pending {
        store::hold(conn, &transfer)?
    } else {
        store::transfer(conn, &transfer)?
    };
    assert!(made.is_ok(), "{made:?}");
    Ok(mine)
}

/// An affiliate share's way into a user: the platform's affiliate expense to their commission.
const SHARE: (coinbit::ledger::rules::Kind, coinbit::ledger::rules::Kind) = (
    coinbit::ledger::rules::Kind::AffiliateExpense,
    coinbit::ledger::rules::Kind::Commission,
);

/// The ledger's API as the money features use it, straight on the database tier (no server):
/// holds under concurrency never overdraw, and each is posted or voided once.
#[test]
fn concurrent_holds_never_overdraw_and_settle_once() {
    use coinbit::db::DbClient;
    use coinbit::ledger::rules::{Currency, Kind};
    use coinbit::ledger::store::{self, NewTransfer, Refused};
    use futures_lite::future::block_on;

    let (database, _, user) = store_database("store_holds");
    let mut db: DbClient = database.client();
    let accounts = block_on(db.write(move |conn| {
        let recharge = (Kind::PaymentClearing, Kind::Real);
        let mine = credit_user(conn, user, recharge, 100_000, "recharge", false)?;
        let out = store::system_account(conn, Kind::WithdrawalsInFlight, Currency::Brl)?;
        Ok((mine, out))
    }))
    .unwrap()
    .value;
    let (mine, out) = accounts;

    // 25 holds of 6,000 from 100,000 at once: 16 fit.
    let total = 25;
    let barrier = Arc::new(Barrier::new(total));
    let holds: Vec<Result<i64, Refused>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..total)
            .map(|_| {
                let (barrier, database) = (barrier.clone(), database.clone());
                scope.spawn(move || {
                    let mut db = database.client();
                    barrier.wait();
                    let pending = db.write(move |conn| {
                        store::hold(
                            conn,
                            &NewTransfer {
                                debit: mine.real,
                                credit: out,
                                amount: 6_000,
                                code: "withdrawal",
                                group: None,
                                metadata: json!({}),
                            },
                        )
                    });
                    block_on(pending).unwrap().value.map(|made| made.id)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let held: Vec<i64> = holds.iter().filter_map(|h| h.clone().ok()).collect();
    assert_eq!(held.len(), 16, "{holds:?}");
    for refused in holds.iter().filter_map(|h| h.clone().err()) {
        assert_eq!(
            refused,
            Refused::Insufficient {
                account: Kind::Real
            }
        );
    }

    // Each hold posted and voided at once: exactly one of the two settles it.
    let settled: Vec<(bool, bool)> = std::thread::scope(|scope| {
        let handles: Vec<_> = held
            .iter()
            .map(|&id| {
                let database = database.clone();
                scope.spawn(move || {
                    let barrier = Barrier::new(2);
                    std::thread::scope(|inner| {
                        let post = inner.spawn(|| {
                            let mut db = database.client();
                            barrier.wait();
                            block_on(db.write(move |conn| store::post(conn, id)))
                                .unwrap()
                                .value
                                .is_some()
                        });
                        let void = inner.spawn(|| {
                            let mut db = database.client();
                            barrier.wait();
                            block_on(db.write(move |conn| store::void(conn, id)))
                                .unwrap()
                                .value
                                .is_some()
                        });
                        (post.join().unwrap(), void.join().unwrap())
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (posted, voided) in &settled {
        assert!(posted ^ voided, "posted {posted}, voided {voided}");
    }
    let posted = settled.iter().filter(|(p, _)| *p).count() as i64;
    let balances = block_on(db.write(move |conn| store::balances(conn, user)))
        .unwrap()
        .value;
    let real = balances.iter().find(|b| b.kind == Kind::Real).unwrap();
    assert_eq!(real.balance, 100_000 - posted * 6_000);
    assert_eq!(real.pending_out, 0);
    let report = block_on(db.write(store::check)).unwrap().value;
    assert!(report.ok, "{report:?}");
}

/// `open_user_accounts_locking` locks the kinds it is asked for and only those, and reads each
/// locked row's figures once its lock is held: a money write that checks a balance in the same
/// round trip as its lock decides on what the row holds, never on a version another
/// transaction was changing.
#[test]
fn opening_accounts_locks_the_kinds_asked_and_reads_them_after_the_lock() {
    use coinbit::ledger::rules::{Currency, Kind};
    use coinbit::ledger::store;
    use futures_lite::future::block_on;

    let (database, name, user) = store_database("store_locking");
    let cluster = cluster();
    let url = cluster.url("primary", &name);
    // First use: the accounts are made, and the kinds asked come back locked, at zero.
    let mut db = database.client();
    let first = block_on(db.write(move |conn| {
        store::open_user_accounts_locking(conn, user, Currency::Brl, &[Kind::Real, Kind::Debt])
    }))
    .unwrap()
    .value;
    assert_eq!(first.figures(Kind::Real).unwrap(), (0, 0));
    assert_eq!(first.figures(Kind::Debt).unwrap(), (0, 0));
    assert!(
        first.figures(Kind::Commission).is_err(),
        "not asked, not locked"
    );
    let (real, commission) = (first.accounts.real.id, first.accounts.commission.id);

    let mut other = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let open = |db: &mut coinbit::db::DbClient, kind: Kind| {
        block_on(db.write(move |conn| {
            store::open_user_accounts_locking(conn, user, Currency::Brl, &[kind])
        }))
        .unwrap()
        .value
        .figures(kind)
        .unwrap()
    };

    // Another transaction holds the commission row: locking the real one does not wait for it.
    let mut tx = other.transaction().unwrap();
    tx.execute(
        "SELECT 1 FROM ledger_accounts WHERE id = $1 FOR UPDATE",
        &[&commission],
    )
    .unwrap();
    assert_eq!(open(&mut db, Kind::Real), (0, 0));
    tx.rollback().unwrap();

    // Another transaction is changing the real row: locking it waits for that transaction,
    // then reads what it committed.
    let mut tx = other.transaction().unwrap();
    tx.execute(
        "UPDATE ledger_accounts SET pending_out = pending_out + 700, balance = balance + 700 \
         WHERE id = $1",
        &[&real],
    )
    .unwrap();
    let read = std::thread::scope(|scope| {
        let waiting = scope.spawn(|| open(&mut database.client(), Kind::Real));
        let lock_waits = format!(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = '{name}' AND wait_event_type = 'Lock'"
        );
        wait_for("the locking read to wait", Duration::from_secs(30), || {
            (cluster.psql("primary", &name, &lock_waits) == "1").then_some(())
        });
        assert!(!waiting.is_finished(), "it read past the other's lock");
        tx.commit().unwrap();
        waiting.join().unwrap()
    });
    assert_eq!(read, (700, 700), "the figures after the other's commit");
    // The change was the test's own, not a transfer's: undone, so the ledger stays whole.
    other
        .execute(
            "UPDATE ledger_accounts SET pending_out = 0, balance = 0 WHERE id = $1",
            &[&real],
        )
        .unwrap();
    let report = block_on(db.write(store::check)).unwrap().value;
    assert!(report.ok, "{report:?}");
}

/// The balance read stays a probe per account however many transfers are pending elsewhere,
/// with the plan a replica session keeps (one generic plan per statement) made before the
/// ledger's tables were ever analysed: the state a table is in after a burst of writes and
/// before autovacuum reaches it. Its figures stay right: a pending credit is counted on its
/// way in, a posted one in the balance.
#[test]
fn a_balance_read_probes_its_own_accounts_before_any_statistics_exist() {
    use coinbit::ledger::store;
    use futures_lite::future::block_on;

    let (database, name, user) = store_database("store_balance_plan");
    let cluster = cluster();
    let psql = |sql: &str| cluster.psql("primary", &name, sql);
    // No statistics arrive while the test runs.
    psql(
        "ALTER TABLE ledger_transfers SET (autovacuum_enabled = false); \
         ALTER TABLE ledger_accounts SET (autovacuum_enabled = false)",
    );
    let mut db = database.client();
    block_on(db.write(move |conn| {
        for (amount, pending) in [(250, true), (50, true), (1_000, false)] {
            credit_user(conn, user, SHARE, amount, "affiliate_share", pending)?;
        }
        Ok(())
    }))
    .unwrap();
    // Many pending transfers between two system accounts, as withdrawals' holds make them.
    psql(
        "INSERT INTO ledger_transfers (debit_account, credit_account, amount, currency, code, \
                                       state, group_id) \
         SELECT d.id, c.id, 100, 'BRL', 'withdrawal', 'pending', 1 \
         FROM ledger_accounts d, ledger_accounts c, generate_series(1, 20000) \
         WHERE d.user_id IS NULL AND d.kind = 'payment_clearing' AND d.currency = 'BRL' \
           AND c.user_id IS NULL AND c.kind = 'withdrawals_in_flight' AND c.currency = 'BRL'",
    );
    assert_eq!(
        psql(
            "SELECT count(*) FROM pg_stats \
             WHERE tablename IN ('ledger_transfers', 'ledger_accounts')"
        ),
        "0",
        "no statistics yet"
    );
    let pages: i64 = psql("SELECT pg_relation_size('ledger_transfers') / 8192")
        .parse()
        .unwrap();

    for (statement, types, argument) in [
        (store::BALANCES.one, "bigint", format!("{user}")),
        (
            store::BALANCES.many,
            "bigint[]",
            format!("ARRAY[{user}]::bigint[]"),
        ),
    ] {
        // Each psql call is its own session: the statement prepared in it, as a replica
        // session keeps it.
        let prepared = format!(
            "SET plan_cache_mode = force_generic_plan; \
             PREPARE balances({types}) AS {statement};"
        );
        let explained = psql(&format!(
            "{prepared} EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE balances({argument})"
        ));
        let plan: Value = serde_json::from_str(&explained).unwrap();
        let top = &plan[0]["Plan"];
        let touched = top["Shared Hit Blocks"].as_i64().unwrap()
            + top["Shared Read Blocks"].as_i64().unwrap();
        assert!(
            touched * 4 < pages,
            "{touched} buffers for one user's accounts, the pending transfers fill {pages} pages: \
             {explained}"
        );
        let rows = psql(&format!("{prepared} EXECUTE balances({argument})"));
        let commission = rows
            .lines()
            .find(|row| row.split('|').nth(1) == Some("commission"))
            .unwrap_or_else(|| panic!("no commission account in {rows}"));
        // user, kind, currency, balance, pending_out, pending_in
        let figures: Vec<&str> = commission.split('|').skip(3).collect();
        assert_eq!(figures, ["1000", "0", "300"], "{rows}");
    }
    let report = block_on(db.write(store::check)).unwrap().value;
    assert!(report.ok, "{report:?}");
}

/// The balance read probes the pending credits only of the accounts marked as receiving them
/// (migration 0013): an account's first pending credit marks it in the same transaction, a
/// later one neither writes nor locks its row, and the ledger check reports a pending credit
/// into an account without the mark, which balances would leave out.
#[test]
fn a_balance_read_probes_only_the_accounts_marked_for_pending_credits() {
    use coinbit::ledger::rules::Kind;
    use coinbit::ledger::store;
    use futures_lite::future::block_on;

    /// How many times the plan scanned the partial index of pending credits.
    fn pending_probes(plan: &Value) -> i64 {
        let own = if plan["Index Name"] == "ledger_transfers_pending_in" {
            plan["Actual Loops"].as_i64().unwrap()
        } else {
            0
        };
        let nested = plan["Plans"]
            .as_array()
            .map_or(0, |plans| plans.iter().map(pending_probes).sum::<i64>());
        own + nested
    }

    let (database, name, user) = store_database("store_pending_mark");
    let cluster = cluster();
    let psql = |sql: &str| cluster.psql("primary", &name, sql);
    let mut db = database.client();
    let share = move |amount: i64| {
        move |conn: &mut coinbit::db::DbConn| {
            let mine = credit_user(conn, user, SHARE, amount, "affiliate_share", true)?;
            Ok(mine.commission.id)
        }
    };
    let commission = block_on(db.write(share(250))).unwrap().value;
    let marked = format!(
        "SELECT string_agg(kind || '=' || receives_pending, ',' ORDER BY kind) \
         FROM ledger_accounts WHERE user_id = {user}"
    );
    assert_eq!(
        psql(&marked),
        "admin_credit=false,commission=true,debt=false,real=false",
        "the first pending credit marks its account, and only it"
    );
    // The system accounts come marked: no transfer into a shared one ever locks its row.
    assert_eq!(
        psql("SELECT count(*) FROM ledger_accounts WHERE user_id IS NULL AND NOT receives_pending"),
        "0"
    );

    // A later pending credit leaves the marked row as it was: no new row version, no lock.
    let version = format!("SELECT xmin FROM ledger_accounts WHERE id = {commission}");
    let before = psql(&version);
    block_on(db.write(share(50))).unwrap();
    assert_eq!(
        psql(&version),
        before,
        "the second share rewrote the account row"
    );

    let explained = psql(&format!(
        "EXPLAIN (ANALYZE, FORMAT JSON) {}",
        store::BALANCES.one.replace("$1", &user.to_string())
    ));
    let plan: Value = serde_json::from_str(&explained).unwrap();
    assert_eq!(
        pending_probes(&plan[0]["Plan"]),
        1,
        "one probe, of the one marked account, for four accounts: {explained}"
    );
    let balances = block_on(db.write(move |conn| store::balances(conn, user)))
        .unwrap()
        .value;
    assert_eq!(balances.len(), 4, "{balances:?}");
    for account in &balances {
        let expected = if account.kind == Kind::Commission {
            300
        } else {
            0
        };
        assert_eq!(account.pending_in, expected, "{balances:?}");
    }
    let report = block_on(db.write(store::check)).unwrap().value;
    assert!(report.ok, "{report:?}");

    // The mark taken away by hand: balances would miss the 300, and the check says so.
    psql(&format!(
        "UPDATE ledger_accounts SET receives_pending = false WHERE id = {commission}"
    ));
    let report = block_on(db.write(store::check)).unwrap().value;
    assert!(!report.ok, "{report:?}");
    let unmarked: Vec<i64> = report
        .drift
        .iter()
        .filter(|finding| finding.pending_in_unmarked)
        .map(|finding| finding.account_id)
        .collect();
    assert_eq!(unmarked, [commission], "{report:?}");
}

/// loadgen's `builtin:money` against the real server: each virtual user logs in, and every
/// call of the mix gets the status the mix expects (a fresh account's withdrawal: 422); what the
/// database holds afterwards is what loadgen was answered (one recharge per fresh key, one per
/// replayed key, none per refused withdrawal), and the ledger check passes (the bank's drop).
#[apply(engines)]
fn loadgen_money_mix_gets_its_answers_and_writes_what_it_was_told(#[case] engine: &str) {
    const USERS: u64 = 4;
    let bank = Bank::start(cluster(), engine, "loadgen_money", &[]);
    let summary = LoadgenSummary::run("builtin:money", USERS, &[], &bank.server);
    let (endpoint, ok) = (|name| summary.endpoint(name), |name| summary.ok(name));
    for name in ["balances", "recharge", "recharge_replay", "withdrawal"] {
        assert!(ok(name) > 0, "{name}: {}", endpoint(name));
    }
    let refused = endpoint("withdrawal")["statuses"].clone();
    assert_eq!(refused, json!({ "422": ok("withdrawal") }), "{refused}");

    let replay_keys = count(
        &bank,
        "SELECT count(*) FROM idempotency_keys WHERE key LIKE 'loadgen-replay-%'",
    );
    assert!((1..=USERS as i64).contains(&replay_keys), "{replay_keys}");
    // A request still unanswered when the run ended may have been written: at most one per
    // virtual user (each has one request in flight at a time).
    let answered = ok("recharge") + replay_keys;
    let recharges = count(&bank, "SELECT count(*) FROM ledger_recharges");
    assert!(
        (answered..=answered + USERS as i64).contains(&recharges),
        "{recharges} recharges for {answered} answered"
    );
    assert_eq!(count(&bank, "SELECT count(*) FROM withdrawals"), 0);
    let users = count(
        &bank,
        "SELECT count(*) FROM users WHERE email LIKE 'loadgen-%'",
    );
    assert_eq!(users, USERS as i64);
}
