//! The money survives `kill -9`: on a real PostgreSQL primary with a streaming replica, on both
//! engines, the server is killed while several clients send recharges (idempotent POSTs) and
//! pay them through the signed payment webhook, then started again on the same database.
//! After the restart the ledger check passes, every request answered 2xx is in the ledger,
//! every request (answered or not) repeated with its key or event id applies at most once (the
//! balances are the sum of the distinct effects), and no transfer group is half there. The
//! check that judges it runs as a read on the primary, outside the group commit.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rstest::rstest;
use rstest_reuse::{self, apply};
use serde_json::json;

use common::ledger::{unique, Bank, User, FINANCIAL, WEBHOOK_SECRET};
use common::pg::PgCluster;
use common::{engines, wait_for, Client, Response, Server};

fn cluster() -> &'static PgCluster {
    static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| PgCluster::start(1))
}

/// The arguments [`Bank::start`] gives the server, again for the restart.
const ARGS: &[&str] = &["--shards", "2", "--durable-jobs-poll-interval", "0"];
/// Client threads in the burst, and the most recharges each asks for.
const CLIENTS: usize = 6;
const PER_CLIENT: usize = 200;
/// 2xx answers to wait for before the kill.
const ANSWERED_BEFORE_KILL: usize = 40;

/// One recharge as a client sent it: the POST, and the payment event when it got that far.
struct Attempt {
    user: usize,
    key: String,
    amount: i64,
    asked: Option<Response>,
    /// The event's id and body (the recharge it pays), when one was delivered.
    event: Option<(String, Vec<u8>)>,
    paid: Option<Response>,
}

fn recharge_body(amount: i64) -> Vec<u8> {
    json!({ "amount": amount }).to_string().into_bytes()
}

fn try_recharge(client: &mut Client, user: &User, key: &str, amount: i64) -> Option<Response> {
    let bearer = user.bearer();
    client.try_request(
        "POST",
        &format!("{FINANCIAL}/recharges"),
        &[
            ("Authorization", bearer.as_str()),
            ("Content-Type", "application/json"),
            ("Idempotency-Key", key),
        ],
        &recharge_body(amount),
    )
}

fn try_deliver(client: &mut Client, body: &[u8]) -> Option<Response> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let signature = coinbit::ledger::payment::sign(WEBHOOK_SECRET.as_bytes(), now, body);
    client.try_request(
        "POST",
        &format!("{FINANCIAL}/webhooks/payment"),
        &[("Payment-Signature", signature.as_str())],
        body,
    )
}

fn is_2xx(answer: &Option<Response>) -> bool {
    answer
        .as_ref()
        .is_some_and(|r| (200..300).contains(&r.status))
}

/// Sends `send` on fresh connections until the server answers something other than 409 (the
/// key still held by a transaction the crash left for PostgreSQL to end) or 503, bounded.
fn settled(server: &Server, mut send: impl FnMut(&mut Client) -> Option<Response>) -> Response {
    wait_for("a settled answer", Duration::from_secs(30), || {
        send(&mut server.connect()).filter(|r| r.status != 409 && r.status != 503)
    })
}

/// The `i`th recharge of burst client `client_index`, on its connection, paid at once by its
/// own event when it was created; and whether the kill cut it.
fn recharge_and_pay(
    client: &mut Client,
    users: &[User],
    client_index: usize,
    i: usize,
    answered: &AtomicUsize,
) -> (Attempt, bool) {
    let user = (client_index + i) % users.len();
    // At least the bonus threshold, so that every payment is a group of two transfers.
    let amount = 100_000 + 100 * (client_index * PER_CLIENT + i) as i64;
    let key = unique("crash");
    let asked = try_recharge(client, &users[user], &key, amount);
    let mut attempt = Attempt {
        user,
        key,
        amount,
        asked,
        event: None,
        paid: None,
    };
    let recharge = match &attempt.asked {
        None => return (attempt, true),
        Some(asked) if asked.status != 201 => return (attempt, false),
        Some(asked) => asked.json()["recharge"]["id"].as_i64().unwrap(),
    };
    answered.fetch_add(1, Ordering::Relaxed);
    let event_id = unique("evt");
    let body = Bank::payment_event(&event_id, recharge, amount, "BRL");
    attempt.paid = try_deliver(client, &body);
    attempt.event = Some((event_id, body));
    if is_2xx(&attempt.paid) {
        answered.fetch_add(1, Ordering::Relaxed);
    }
    let cut = attempt.paid.is_none();
    (attempt, cut)
}

#[apply(engines)]
fn kill_9_during_a_burst_of_money_requests_loses_and_doubles_nothing(#[case] engine: &str) {
    let mut bank = Bank::start(cluster(), engine, "crash", &[]);
    let users: Vec<User> = (0..3)
        .map(|i| bank.user(&format!("Crash{i}"), "BR"))
        .collect();
    let answered = AtomicUsize::new(0);

    let attempts: Vec<Attempt> = bank.server.kill_9_during(
        CLIENTS,
        PER_CLIENT,
        &answered,
        ANSWERED_BEFORE_KILL,
        |client, c, i| recharge_and_pay(client, &users, c, i, &answered),
    );
    let unanswered = attempts
        .iter()
        .filter(|a| a.asked.is_none() || (a.event.is_some() && a.paid.is_none()))
        .count();
    eprintln!(
        "{} recharges sent, {} answers 2xx, {unanswered} requests cut by the kill",
        attempts.len(),
        answered.load(Ordering::Relaxed)
    );
    assert!(unanswered >= 1, "the kill cut requests in flight");

    // The same database, a new process.
    let mut env: Vec<(String, String)> = bank.cluster.env(&bank.db);
    env.push(("PAYMENT_WEBHOOK_SECRET".into(), WEBHOOK_SECRET.into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    bank.server = Server::start_with(engine, ARGS, &env);
    bank.assert_balanced();

    // Every request answered 2xx is in the ledger.
    for attempt in &attempts {
        if let Some(asked) = attempt.asked.as_ref().filter(|r| r.status == 201) {
            let id = asked.json()["recharge"]["id"].as_i64().unwrap();
            assert_eq!(
                bank.sql(&format!(
                    "SELECT count(*) FROM ledger_recharges WHERE id = {id}"
                )),
                "1",
                "recharge {id} was answered 201"
            );
        }
        if let (Some((event, _)), true) = (&attempt.event, is_2xx(&attempt.paid)) {
            assert_eq!(
                bank.sql(&format!(
                    "SELECT count(*) FROM ledger_transfers \
                     WHERE code = 'recharge' AND metadata->>'payment_event' = '{event}'"
                )),
                "1",
                "event {event} was answered 200"
            );
        }
    }

    // Every request repeated, twice: each applies at most once, answered ones replay.
    let mut committed_unanswered = 0;
    for round in 0..2 {
        for attempt in &attempts {
            let user = &users[attempt.user];
            let again = settled(&bank.server, |c| {
                try_recharge(c, user, &attempt.key, attempt.amount)
            });
            assert_eq!(again.status, 201, "{}", again.text());
            let first_answer = attempt.asked.as_ref().filter(|r| r.status == 201);
            if round == 1 || first_answer.is_some() {
                assert_eq!(again.header("Idempotency-Replayed"), Some("true"));
            }
            if let Some(first) = first_answer {
                assert_eq!(again.body, first.body, "a replay is byte for byte");
            } else if round == 0 && again.header("Idempotency-Replayed").is_some() {
                committed_unanswered += 1;
            }
            if let Some((_, body)) = &attempt.event {
                let paid = settled(&bank.server, |c| try_deliver(c, body));
                assert_eq!(paid.status, 200, "{}", paid.text());
                if round == 1 || is_2xx(&attempt.paid) {
                    assert_eq!(paid.json()["duplicate"], true, "{}", paid.text());
                }
            }
        }
    }

    eprintln!("{committed_unanswered} recharges committed but unanswered before the kill");

    // The balances are the sum of the distinct effects: one recharge per key, one credit (and
    // its bonus) per event.
    for (index, user) in users.iter().enumerate() {
        let mine: Vec<&Attempt> = attempts.iter().filter(|a| a.user == index).collect();
        let paid: Vec<&&Attempt> = mine.iter().filter(|a| a.event.is_some()).collect();
        let expected: i64 = paid.iter().map(|a| a.amount).sum();
        let balance = |kind: &str| -> i64 {
            bank.sql(&format!(
                "SELECT COALESCE(sum(balance), 0) FROM ledger_accounts \
                 WHERE user_id = {} AND kind = '{kind}'",
                user.id
            ))
            .parse()
            .unwrap()
        };
        assert_eq!(
            bank.sql(&format!(
                "SELECT count(*) FROM ledger_recharges WHERE user_id = {}",
                user.id
            )),
            mine.len().to_string(),
            "one recharge per key"
        );
        assert_eq!(
            bank.sql(&format!(
                "SELECT count(*) FROM ledger_recharges WHERE user_id = {} AND state = 'paid'",
                user.id
            )),
            paid.len().to_string(),
            "one payment per event"
        );
        assert_eq!(balance("real"), expected, "{}'s real balance", user.email);
        assert_eq!(
            balance("admin_credit"),
            expected / 10,
            "{}'s bonus",
            user.email
        );
    }

    // No group half there: each payment's credit has its bonus, in the same group, and each
    // recharge was credited once.
    assert_eq!(
        bank.sql(
            "SELECT count(*) FROM ledger_transfers t WHERE code IN ('recharge', 'recharge_bonus') \
             AND (SELECT count(*) FROM ledger_transfers g WHERE g.group_id = t.group_id) <> 2"
        ),
        "0"
    );
    assert_eq!(
        bank.sql(
            "SELECT count(*) - count(DISTINCT metadata->>'recharge_id') FROM ledger_transfers \
             WHERE code = 'recharge'"
        ),
        "0"
    );
    bank.assert_balanced();
}

/// The check that judges recovery runs as a read on the primary, outside the group commit (a
/// statement inside a write group would hold that group's commit up): checks move the
/// primary's request count, never its commit count.
#[apply(engines)]
fn the_ledger_check_runs_on_the_primary_outside_the_group_commit(#[case] engine: &str) {
    let bank = Bank::start(cluster(), engine, "check_read", &[]);
    let user = bank.user("Check", "BR");
    bank.fund(&user, 100_000);
    let primary = |bank: &Bank| -> (u64, u64) {
        let status = bank.server.cluster_status();
        let node = status["database"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "primary")
            .unwrap()
            .clone();
        (
            node["commits"].as_u64().unwrap(),
            node["requests"].as_u64().unwrap(),
        )
    };
    // A background write may commit beside the checks: then the probe looks again.
    wait_for(
        "five checks with no commit beside them",
        Duration::from_secs(30),
        || {
            let (commits, requests) = primary(&bank);
            for _ in 0..5 {
                bank.assert_balanced();
            }
            // The status is a snapshot taken every 100 ms: wait until it holds the checks.
            let (commits_after, _) =
                wait_for("the checks in the status", Duration::from_secs(10), || {
                    let (commits_after, requests_after) = primary(&bank);
                    (requests_after >= requests + 5).then_some((commits_after, requests_after))
                });
            (commits_after == commits).then_some(())
        },
    );
}
