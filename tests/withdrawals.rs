//! Withdrawals on a real cluster, on both engines: holds the database refuses past the
//! available balance (100 concurrent requests from R$1,000), admins' approvals (four-eyes,
//! never one's own), payout days, a hold posted or voided but never both (pay and reject at
//! once), and the ledger sound after each test.

mod common;

use std::sync::{Arc, Barrier};
use std::thread;

use common::money::{every_day, get, post, today_day, Money, Person, FINANCIAL};
use common::{Client, Response};
use rstest::rstest;
use rstest_reuse::{self, apply};
use serde_json::json;

use common::engines;

fn bank() -> serde_json::Value {
    json!({ "holder": "Ana Souza", "bank": "001", "branch": "1234", "account": "56789-0" })
}

fn withdraw(money: &Money, who: &Person, key: &str, amount: i64) -> Response {
    let body = json!({ "amount": amount, "source": "real", "bank": bank() });
    post(
        &mut money.server.connect(),
        who,
        &format!("{FINANCIAL}/withdrawals"),
        key,
        &body,
    )
}

/// 100 concurrent withdrawals of R$50 (+R$10 fee) from R$1,000: 16 held, 84 refused, R$40
/// left available, and no account below zero at any instant of the burst.
#[apply(engines)]
fn concurrent_withdrawals_never_overdraw(#[case] engine: &str) {
    let money = Money::start(engine, "withdraw_burst", &[]);
    let ana = money.person("Ana", "BR", "user");
    money.fund(&ana, "BRL", 100_000);
    let (addr, db) = (money.server.addr, money.db.clone());
    let barrier = Arc::new(Barrier::new(101));
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    // Watches the accounts during the burst: none ever shows a negative available balance.
    let watcher = {
        let watching = watching.clone();
        thread::spawn(move || {
            let mut worst = i64::MAX;
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                let low: i64 = common::money::cluster()
                    .psql("primary", &db, "SELECT coalesce(min(balance - pending_out), 0) FROM ledger_accounts WHERE user_id IS NOT NULL")
                    .parse()
                    .unwrap();
                worst = worst.min(low);
            }
            worst
        })
    };
    let requests: Vec<_> = (0..100)
        .map(|i| {
            let (ana, barrier) = (ana.clone(), barrier.clone());
            thread::spawn(move || {
                let mut client = Client::connect(addr);
                barrier.wait();
                let body = json!({ "amount": 5_000, "source": "real", "bank": bank() });
                post(
                    &mut client,
                    &ana,
                    &format!("{FINANCIAL}/withdrawals"),
                    &format!("burst-{i}"),
                    &body,
                )
            })
        })
        .collect();
    barrier.wait();
    let answers: Vec<Response> = requests.into_iter().map(|t| t.join().unwrap()).collect();
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let worst = watcher.join().unwrap();
    let held = answers.iter().filter(|r| r.status == 201).count();
    let refused = answers
        .iter()
        .filter(|r| r.status == 422 && r.error_code() == "insufficient_funds")
        .count();
    let others: Vec<String> = answers
        .iter()
        .filter(|r| r.status != 201 && r.status != 422)
        .map(|r| format!("{} {}", r.status, r.text()))
        .collect();
    assert_eq!((held, refused), (16, 84), "other answers: {others:?}");
    assert!(worst >= 0, "an available balance went to {worst}");
    let (balance, pending) = money.account(&ana, "real", "BRL");
    assert_eq!((balance, pending), (100_000, 96_000));
    assert_eq!(balance - pending, 4_000, "R$40 left available");
    money.assert_ledger_sound();
}

/// Four-eyes above the limit: the requester (an admin) cannot approve their own, the same
/// admin cannot count twice, two others approve; then it is paid on a payout day: the hold is
/// posted, the fee reaches fees.
#[apply(engines)]
fn four_eyes_then_pay(#[case] engine: &str) {
    let days = every_day();
    let money = Money::start(
        engine,
        "withdraw_four_eyes",
        &[
            "--withdrawal-four-eyes-above",
            "BRL:20000,USD:4000",
            "--withdrawal-payout-days",
            &days,
        ],
    );
    let (ana, bia, caio) = (
        money.person("Ana", "BR", "admin"),
        money.person("Bia", "BR", "admin"),
        money.person("Caio", "BR", "admin"),
    );
    let user = money.person("Duda", "BR", "user");
    money.fund(&ana, "BRL", 100_000);
    let made = withdraw(&money, &ana, "w-1", 30_000);
    assert_eq!(made.status, 201, "{}", made.text());
    let w = &made.json()["withdrawal"];
    let id = w["id"].as_str().unwrap().to_string();
    assert_eq!(w["state"], "requested");
    assert_eq!(w["approvals_needed"], 2);
    assert_eq!(w["fee"], 1_000);
    assert_eq!(money.account(&ana, "real", "BRL"), (100_000, 31_000));

    // Admins find it among the withdrawals waiting for them; a user cannot look.
    let lsn = made.header("X-Commit-LSN").unwrap().to_string();
    let waiting = money.server.connect().request(
        "GET",
        &format!("{FINANCIAL}/admin/withdrawals?state=requested"),
        &[("Authorization", &bia.auth), ("X-Min-LSN", &lsn)],
        b"",
    );
    assert_eq!(waiting.status, 200, "{}", waiting.text());
    let listed = waiting.json()["withdrawals"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0]["id"].as_str(), listed[0]["user_id"].as_i64()),
        (Some(id.as_str()), Some(ana.id))
    );
    // A position that is not one is refused, not read without it.
    let garbled = money.server.connect().request(
        "GET",
        &format!("{FINANCIAL}/admin/withdrawals?state=requested"),
        &[("Authorization", &bia.auth), ("X-Min-LSN", "yesterday")],
        b"",
    );
    assert_eq!(
        (garbled.status, garbled.error_code().as_str()),
        (400, "bad_lsn"),
        "{}",
        garbled.text()
    );
    let peek = get(
        &mut money.server.connect(),
        &user,
        &format!("{FINANCIAL}/admin/withdrawals"),
    );
    assert_eq!(peek.status, 403);

    let own = money.decide_withdrawal(&ana, &id, "approve", "a-1");
    assert_eq!(
        (own.status, own.error_code()),
        (403, "own_withdrawal".into())
    );
    let not_admin = money.decide_withdrawal(&user, &id, "approve", "a-2");
    assert_eq!(not_admin.status, 403, "{}", not_admin.text());
    let first = money.decide_withdrawal(&bia, &id, "approve", "a-3");
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.json()["withdrawal"]["state"], "requested");
    assert_eq!(first.json()["withdrawal"]["approvals"], 1);
    let twice = money.decide_withdrawal(&bia, &id, "approve", "a-4");
    assert_eq!(
        (twice.status, twice.error_code()),
        (409, "already_approved".into())
    );
    let early = money.decide_withdrawal(&bia, &id, "pay", "p-0");
    assert_eq!(
        (early.status, early.error_code()),
        (409, "withdrawal_state".into())
    );
    let second = money.decide_withdrawal(&caio, &id, "approve", "a-5");
    assert_eq!(second.status, 200, "{}", second.text());
    let approved = &second.json()["withdrawal"];
    assert_eq!(approved["state"], "approved");
    assert!(approved["payout_date"].is_string(), "{approved}");

    let paid = money.decide_withdrawal(&bia, &id, "pay", "p-1");
    assert_eq!(paid.status, 200, "{}", paid.text());
    assert_eq!(paid.json()["withdrawal"]["state"], "paid");
    // The same request again: the stored answer, byte for byte.
    let again = money.decide_withdrawal(&bia, &id, "pay", "p-1");
    assert_eq!((again.status, &again.body), (200, &paid.body));
    assert_eq!(again.header("Idempotency-Replayed"), Some("true"));
    let twice = money.decide_withdrawal(&caio, &id, "pay", "p-2");
    assert_eq!(
        (twice.status, twice.error_code()),
        (409, "withdrawal_state".into())
    );
    assert_eq!(money.account(&ana, "real", "BRL"), (69_000, 0));
    let fees = money.sql(
        "SELECT sum(t.amount) FROM ledger_transfers t JOIN ledger_accounts a ON a.id = t.credit_account \
         WHERE a.kind = 'fees' AND t.state = 'posted'",
    );
    assert_eq!(fees, "1000");

    // Below the four-eyes limit one admin approves.
    let small = withdraw(&money, &ana, "w-2", 5_000);
    let small_id = small.json()["withdrawal"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(small.json()["withdrawal"]["approvals_needed"], 1);
    let one = money.decide_withdrawal(&caio, &small_id, "approve", "a-6");
    assert_eq!(
        one.json()["withdrawal"]["state"],
        "approved",
        "{}",
        one.text()
    );
    money.assert_ledger_sound();
}

/// Off a payout day an approved withdrawal waits; below the auto-approval limit it needs no
/// admin; the rules refuse a small amount and missing bank data; a user lists only their own.
#[apply(engines)]
fn payout_days_auto_approval_and_rules(#[case] engine: &str) {
    let other_day = if today_day() == 5 { "20" } else { "5" };
    let money = Money::start(
        engine,
        "withdraw_rules",
        &[
            "--withdrawal-payout-days",
            other_day,
            "--withdrawal-auto-approve-below",
            "BRL:10000,USD:2000",
        ],
    );
    let admin = money.person("Ana", "BR", "admin");
    let eva = money.person("Eva", "BR", "user");
    let fred = money.person("Fred", "US", "user");
    money.fund(&eva, "BRL", 50_000);
    money.fund(&fred, "USD", 5_000);

    let auto = withdraw(&money, &eva, "w-auto", 5_000);
    assert_eq!(auto.status, 201, "{}", auto.text());
    let w = &auto.json()["withdrawal"];
    assert_eq!(
        (w["state"].as_str(), w["approvals_needed"].as_i64()),
        (Some("approved"), Some(0))
    );
    let payout = w["payout_date"].as_str().unwrap().to_string();
    assert!(payout.ends_with(&format!("-{other_day:0>2}")), "{payout}");
    let id = w["id"].as_str().unwrap().to_string();
    let not_today = money.decide_withdrawal(&admin, &id, "pay", "p-1");
    assert_eq!(
        (not_today.status, not_today.error_code()),
        (409, "not_a_payout_day".into())
    );
    // Rejecting voids the hold: everything is available again.
    let rejected = money.decide_withdrawal(&admin, &id, "reject", "r-1");
    assert_eq!(
        rejected.json()["withdrawal"]["state"],
        "rejected",
        "{}",
        rejected.text()
    );
    assert_eq!(money.account(&eva, "real", "BRL"), (50_000, 0));
    let void_twice = money.decide_withdrawal(&admin, &id, "reject", "r-2");
    assert_eq!(void_twice.status, 409);

    let usd = withdraw(&money, &fred, "w-usd", 1_000);
    assert_eq!(usd.status, 201, "{}", usd.text());
    assert_eq!(usd.json()["withdrawal"]["fee"], 200);
    assert_eq!(money.account(&fred, "real", "USD"), (5_000, 1_200));
    let small = withdraw(&money, &fred, "w-small", 999);
    assert_eq!(
        (small.status, small.error_code()),
        (422, "below_minimum".into())
    );
    let no_bank = post(
        &mut money.server.connect(),
        &fred,
        &format!("{FINANCIAL}/withdrawals"),
        "w-nobank",
        &json!({ "amount": 1_000 }),
    );
    assert_eq!(
        (no_bank.status, no_bank.error_code()),
        (422, "bank_required".into())
    );
    let no_key = money.server.connect().request(
        "POST",
        &format!("{FINANCIAL}/withdrawals"),
        &[("Authorization", &fred.auth)],
        json!({ "amount": 1_000, "bank": bank() })
            .to_string()
            .as_bytes(),
    );
    assert_eq!(no_key.status, 400, "{}", no_key.text());
    let reused = post(
        &mut money.server.connect(),
        &fred,
        &format!("{FINANCIAL}/withdrawals"),
        "w-usd",
        &json!({ "amount": 2_000, "bank": bank() }),
    );
    assert_eq!(
        (reused.status, reused.error_code()),
        (422, "idempotency_key_reused".into())
    );
    let credit = post(
        &mut money.server.connect(),
        &fred,
        &format!("{FINANCIAL}/withdrawals"),
        "w-credit",
        &json!({ "amount": 1_000, "source": "admin_credit", "bank": bank() }),
    );
    assert_eq!(
        credit.status,
        400,
        "admin credit is not withdrawable: {}",
        credit.text()
    );

    let lsn = usd.header("X-Commit-LSN").unwrap().to_string();
    let mine = money.server.connect().request(
        "GET",
        &format!("{FINANCIAL}/withdrawals"),
        &[("Authorization", &fred.auth), ("X-Min-LSN", &lsn)],
        b"",
    );
    assert_eq!(mine.status, 200, "{}", mine.text());
    let list = mine.json()["withdrawals"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["currency"], "USD");
    let eva_list = get(
        &mut money.server.connect(),
        &eva,
        &format!("{FINANCIAL}/withdrawals"),
    );
    assert!(eva_list.json()["withdrawals"]
        .as_array()
        .unwrap()
        .iter()
        .all(|w| w["currency"] == "BRL"));
    money.assert_ledger_sound();
}

/// Pay and reject of the same withdrawal at once: exactly one wins, and its holds end all
/// posted or all voided, never both.
#[apply(engines)]
fn pay_and_reject_race(#[case] engine: &str) {
    let days = every_day();
    let money = Money::start(
        engine,
        "withdraw_race",
        &[
            "--withdrawal-payout-days",
            &days,
            "--withdrawal-auto-approve-below",
            "BRL:1000000,USD:1000000",
        ],
    );
    let addr = money.server.addr;
    let admin = money.person("Ana", "BR", "admin");
    let gil = money.person("Gil", "BR", "user");
    money.fund(&gil, "BRL", 200_000);
    let ids: Vec<String> = (0..10)
        .map(|i| {
            let made = withdraw(&money, &gil, &format!("w-{i}"), 5_000);
            assert_eq!(made.status, 201, "{}", made.text());
            made.json()["withdrawal"]["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for id in &ids {
        let barrier = Arc::new(Barrier::new(2));
        let racers: Vec<_> = ["pay", "reject"]
            .into_iter()
            .map(|action| {
                let (admin, id, barrier) = (admin.clone(), id.clone(), barrier.clone());
                thread::spawn(move || {
                    let mut client = Client::connect(addr);
                    barrier.wait();
                    let path = format!("{FINANCIAL}/withdrawals/{id}/{action}");
                    (
                        action,
                        post(
                            &mut client,
                            &admin,
                            &path,
                            &format!("{action}-{id}"),
                            &json!({}),
                        ),
                    )
                })
            })
            .collect();
        let answers: Vec<(&str, Response)> =
            racers.into_iter().map(|t| t.join().unwrap()).collect();
        let won: Vec<&str> = answers
            .iter()
            .filter(|(_, r)| r.status == 200)
            .map(|(action, _)| *action)
            .collect();
        assert_eq!(
            won.len(),
            1,
            "{:?}",
            answers
                .iter()
                .map(|(a, r)| (a, r.status, r.text()))
                .collect::<Vec<_>>()
        );
        let lost = answers.iter().find(|(_, r)| r.status != 200).unwrap();
        assert_eq!(
            (lost.1.status, lost.1.error_code()),
            (409, "withdrawal_state".into())
        );
        let states = money.sql(&format!(
            "SELECT string_agg(DISTINCT t.state, ',') FROM withdrawals w \
             JOIN ledger_transfers t ON t.id IN (w.amount_transfer, w.fee_transfer) WHERE w.id = '{id}'"
        ));
        let expected = if won[0] == "pay" { "posted" } else { "voided" };
        assert_eq!(states, expected, "withdrawal {id} won by {}", won[0]);
    }
    let (balance, pending) = money.account(&gil, "real", "BRL");
    assert_eq!(pending, 0);
    let paid: i64 = money
        .sql("SELECT count(*) FROM withdrawals WHERE state = 'paid'")
        .parse()
        .unwrap();
    assert_eq!(balance, 200_000 - paid * 6_000);
    money.assert_ledger_sound();
}
