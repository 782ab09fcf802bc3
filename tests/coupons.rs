//! Coupons, plans and the commission charge on a real cluster, on both engines: a coupon
//! redeemed once per user and never past its maximum under concurrency, its credit taken back
//! when it expires, plans and their rates, and commissions charged once per position, with
//! what the balance cannot cover becoming debt that blocks trading. The ledger sound after each.

mod common;

use std::sync::{Arc, Barrier};
use std::thread;

use common::money::{get, get_after, post, Money, Person, FINANCIAL};
use common::{wait_for, Client, Response};
use rstest::rstest;
use rstest_reuse::{self, apply};
use serde_json::{json, Value};

use common::engines;

fn create_coupon(money: &Money, admin: &Person, key: &str, body: Value) -> Response {
    post(
        &mut money.server.connect(),
        admin,
        &format!("{FINANCIAL}/coupons"),
        key,
        &body,
    )
}

fn redeem(client: &mut Client, who: &Person, key: &str, code: &str) -> Response {
    client.request(
        "POST",
        &format!("{FINANCIAL}/coupons/redeem"),
        &[
            ("Authorization", &who.auth),
            ("Idempotency-Key", key),
            ("X-Forwarded-For", "203.0.113.7, 10.0.0.1"),
            ("User-Agent", "coupon-test/1.0"),
        ],
        json!({ "code": code }).to_string().as_bytes(),
    )
}

fn charge(money: &Money, operator: &Person, key: &str, body: Value) -> Response {
    post(
        &mut money.server.connect(),
        operator,
        &format!("{FINANCIAL}/commissions"),
        key,
        &body,
    )
}

/// 10 users each try a coupon of 5 uses three times at once: each user gets it at most once,
/// and exactly 5 uses are taken; each use logs the client's address and User-Agent.
#[apply(engines)]
fn coupon_once_per_user_never_past_its_maximum(#[case] engine: &str) {
    let money = Money::start(engine, "coupon_race", &[]);
    let admin = money.person("Ana", "BR", "admin");
    let made = create_coupon(
        &money,
        &admin,
        "c-1",
        json!({ "code": "basic5", "kind": "fixed", "tier": "BASIC", "max_uses": 5 }),
    );
    assert_eq!(made.status, 201, "{}", made.text());
    assert_eq!(
        made.json()["coupon"]["amounts"],
        json!({ "BRL": 20_000, "USD": 3_500 })
    );
    let taken = create_coupon(
        &money,
        &admin,
        "c-2",
        json!({ "code": "BASIC5", "kind": "percent", "percent": 10, "max_uses": 1 }),
    );
    assert_eq!(
        (taken.status, taken.error_code()),
        (409, "coupon_exists".into())
    );
    let user = money.person("Zed", "BR", "user");
    let not_admin = create_coupon(
        &money,
        &user,
        "c-3",
        json!({ "code": "MINE", "kind": "fixed", "tier": "VIP", "max_uses": 1 }),
    );
    assert_eq!(not_admin.status, 403);

    let people: Vec<Person> = (0..10)
        .map(|i| {
            money.person(
                &format!("User{i}"),
                if i % 2 == 0 { "BR" } else { "US" },
                "user",
            )
        })
        .collect();
    let addr = money.server.addr;
    let barrier = Arc::new(Barrier::new(30));
    let tries: Vec<_> = people
        .iter()
        .flat_map(|p| (0..3).map(move |n| (p.clone(), n)))
        .map(|(person, n)| {
            let barrier = barrier.clone();
            thread::spawn(move || {
                let mut client = Client::connect(addr);
                barrier.wait();
                let r = redeem(
                    &mut client,
                    &person,
                    &format!("r-{}-{n}", person.id),
                    "basic5",
                );
                (person.id, r)
            })
        })
        .collect();
    let answers: Vec<(i64, Response)> = tries.into_iter().map(|t| t.join().unwrap()).collect();
    let wins: Vec<i64> = answers
        .iter()
        .filter(|(_, r)| r.status == 201)
        .map(|(id, _)| *id)
        .collect();
    let mut winners = wins.clone();
    winners.sort();
    winners.dedup();
    assert_eq!(
        wins.len(),
        5,
        "{:?}",
        answers
            .iter()
            .map(|(i, r)| (i, r.status, r.text()))
            .collect::<Vec<_>>()
    );
    assert_eq!(winners.len(), 5, "a user redeemed twice: {wins:?}");
    for (_, r) in answers.iter().filter(|(_, r)| r.status != 201) {
        let code = r.error_code();
        assert!(
            matches!(
                code.as_str(),
                "coupon_already_redeemed" | "coupon_exhausted"
            ),
            "{} {}",
            r.status,
            r.text()
        );
    }
    assert_eq!(
        money.sql("SELECT uses FROM coupons WHERE code = 'BASIC5'"),
        "5"
    );
    for person in people.iter().filter(|p| winners.contains(&p.id)) {
        let (brl, _) = money.account(person, "admin_credit", "BRL");
        let (usd, _) = money.account(person, "admin_credit", "USD");
        assert!(
            (brl, usd) == (20_000, 0) || (brl, usd) == (0, 3_500),
            "{brl} {usd}"
        );
    }
    assert_eq!(
        money.sql("SELECT DISTINCT ip || ' ' || user_agent FROM coupon_redemptions"),
        "203.0.113.7 coupon-test/1.0"
    );
    money.assert_ledger_sound();
}

/// A coupon past its date is refused; a coupon's credit is taken back by the sweep once its
/// time is up (shortened here), only what is left of it.
#[apply(engines)]
fn coupon_expiry_and_credit_sweep(#[case] engine: &str) {
    let money = Money::start(
        engine,
        "coupon_sweep",
        &[
            "--coupon-credit-ttl",
            "1500",
            "--money-sweep-interval",
            "100",
        ],
    );
    let admin = money.person("Ana", "BR", "admin");
    let bob = money.person("Bob", "BR", "user");
    let operator = money.person("Olga", "BR", "operator");
    for (key, code) in [("c-1", "OLD"), ("c-2", "VIPNOW")] {
        let made = create_coupon(
            &money,
            &admin,
            key,
            json!({ "code": code, "kind": "fixed", "tier": "VIP", "max_uses": 10, "expires_in_days": 1 }),
        );
        assert_eq!(made.status, 201, "{}", made.text());
    }
    money.sql("UPDATE coupons SET expires_at = now() - interval '1 second' WHERE code = 'OLD'");
    let mut client = money.server.connect();
    let old = redeem(&mut client, &bob, "r-1", "OLD");
    assert_eq!(
        (old.status, old.error_code()),
        (422, "coupon_expired".into())
    );
    let unknown = redeem(&mut client, &bob, "r-2", "NOPE");
    assert_eq!(
        (unknown.status, unknown.error_code()),
        (404, "coupon_not_found".into())
    );
    let got = redeem(&mut client, &bob, "r-3", "vipnow");
    assert_eq!(got.status, 201, "{}", got.text());
    assert_eq!(got.json()["redemption"]["amount"], 100_000);
    assert_eq!(money.account(&bob, "admin_credit", "BRL"), (100_000, 0));
    // Part of the credit is spent (a commission) before it expires: only the rest goes back.
    let spent = charge(
        &money,
        &operator,
        "k-1",
        json!({ "user_id": bob.id, "position_id": "p-1", "profit": 150_000, "profit_currency": "BRL" }),
    );
    assert_eq!(spent.status, 201, "{}", spent.text());
    assert_eq!(spent.json()["charge"]["from_admin_credit"], 30_000);
    wait_for(
        "the credit to expire",
        std::time::Duration::from_secs(20),
        || (money.account(&bob, "admin_credit", "BRL") == (0, 0)).then_some(()),
    );
    assert_eq!(
        money.sql("SELECT expired_amount FROM coupon_redemptions WHERE code = 'VIPNOW'"),
        "70000"
    );
    money.assert_ledger_sound();
}

/// The commission: charged from real then admin credit, the rest debt that blocks trading;
/// once per position, whatever the concurrency; only on profit; converted at the recorded rate.
#[apply(engines)]
fn commission_debt_blocks_and_charges_once(#[case] engine: &str) {
    let money = Money::start(engine, "commission", &[]);
    let operator = money.person("Olga", "US", "operator");
    let admin = money.person("Ana", "BR", "admin");
    let caio = money.person("Caio", "BR", "user");
    money.fund(&caio, "BRL", 1_000);
    let made = create_coupon(
        &money,
        &admin,
        "c-1",
        json!({ "code": "BASIC", "kind": "fixed", "tier": "BASIC", "max_uses": 10 }),
    );
    assert_eq!(made.status, 201, "{}", made.text());
    assert_eq!(
        redeem(&mut money.server.connect(), &caio, "r-1", "BASIC").status,
        201
    );

    // US$1,000.00 of profit at 5.0 BRL/USD, prepaid 20 %: R$1,000.00 of commission.
    let body = json!({
        "user_id": caio.id, "position_id": "pos-1", "profit": 100_000,
        "profit_currency": "USD", "fx_rate": "5.0",
    });
    let charged = charge(&money, &operator, "k-1", body.clone());
    assert_eq!(charged.status, 201, "{}", charged.text());
    let c = &charged.json()["charge"];
    assert_eq!(
        (
            c["commission"].as_i64(),
            c["from_real"].as_i64(),
            c["from_admin_credit"].as_i64(),
            c["to_debt"].as_i64()
        ),
        (Some(100_000), Some(1_000), Some(20_000), Some(79_000)),
        "{c}"
    );
    assert_eq!(c["trading_blocked"], true);
    assert_eq!(c["fx_rate"], "5.000000");
    assert_eq!(money.account(&caio, "real", "BRL"), (0, 0));
    assert_eq!(money.account(&caio, "debt", "BRL"), (79_000, 0));
    let plans = get_after(
        &mut money.server.connect(),
        &caio,
        &format!("{FINANCIAL}/plans"),
        &charged,
    );
    assert_eq!(
        plans.json()["mine"]["trading_blocked"],
        true,
        "{}",
        plans.text()
    );
    let metadata = money.sql(
        "SELECT DISTINCT metadata->>'fx_rate' FROM ledger_transfers WHERE code LIKE 'commission%'",
    );
    assert_eq!(metadata, "5.000000");

    // A recharge pays the debt first and unblocks trading.
    let paid = money.recharge(&caio, 100_000, "recharge-1");
    assert_eq!(paid.status, 200, "{}", paid.text());
    assert_eq!(money.account(&caio, "debt", "BRL"), (0, 0));
    assert_eq!(money.account(&caio, "real", "BRL"), (21_000, 0));
    let plans = get_after(
        &mut money.server.connect(),
        &caio,
        &format!("{FINANCIAL}/plans"),
        &paid,
    );
    assert_eq!(
        plans.json()["mine"]["trading_blocked"],
        false,
        "{}",
        plans.text()
    );

    // The same key again: the stored answer; another key for the same position: refused.
    let replay = charge(&money, &operator, "k-1", body.clone());
    assert_eq!((replay.status, &replay.body), (201, &charged.body));
    let again = charge(&money, &operator, "k-2", body);
    assert_eq!(
        (again.status, again.error_code()),
        (409, "commission_already_charged".into())
    );

    // Ten keys for one new position at once: one charge.
    let dani = money.person("Dani", "US", "user");
    money.fund(&dani, "USD", 100_000);
    let addr = money.server.addr;
    let barrier = Arc::new(Barrier::new(10));
    let racers: Vec<_> = (0..10)
        .map(|i| {
            let (operator, barrier) = (operator.clone(), barrier.clone());
            let body = json!({
                "user_id": dani.id, "position_id": "pos-race", "profit": 10_000, "profit_currency": "USD",
            });
            thread::spawn(move || {
                let mut client = Client::connect(addr);
                barrier.wait();
                post(&mut client, &operator, &format!("{FINANCIAL}/commissions"), &format!("race-{i}"), &body)
            })
        })
        .collect();
    let statuses: Vec<u16> = racers
        .into_iter()
        .map(|t| t.join().unwrap().status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 409),
        "{statuses:?}"
    );
    assert_eq!(money.account(&dani, "real", "USD"), (98_000, 0));

    // A loss charges nothing; a USD profit for a BRL user needs a rate; users are refused.
    let loss = charge(
        &money,
        &operator,
        "k-3",
        json!({ "user_id": dani.id, "position_id": "pos-loss", "profit": -5_000, "profit_currency": "USD" }),
    );
    assert_eq!(loss.json()["charge"]["commission"], 0, "{}", loss.text());
    let no_rate = charge(
        &money,
        &operator,
        "k-4",
        json!({ "user_id": caio.id, "position_id": "pos-2", "profit": 5_000, "profit_currency": "USD" }),
    );
    assert_eq!(
        (no_rate.status, no_rate.error_code()),
        (422, "fx_rate_required".into())
    );
    let float = charge(
        &money,
        &operator,
        "k-5",
        json!({ "user_id": caio.id, "position_id": "pos-3", "profit": 5_000, "profit_currency": "USD", "fx_rate": 5.1 }),
    );
    assert_eq!(
        (float.status, float.error_code()),
        (422, "invalid_fx_rate".into())
    );
    let by_user = charge(
        &money,
        &caio,
        "k-6",
        json!({ "user_id": dani.id, "position_id": "pos-4", "profit": 5_000, "profit_currency": "USD" }),
    );
    assert_eq!(by_user.status, 403);
    money.assert_ledger_sound();
}

/// Plans: the monthly trial once (nothing charged), then the month from the real balance
/// (a percent coupon off it); the rate follows the plan; prepaid by default.
#[apply(engines)]
fn plans_trial_charge_and_rates(#[case] engine: &str) {
    let money = Money::start(engine, "plans", &[]);
    let admin = money.person("Ana", "BR", "admin");
    let eva = money.person("Eva", "BR", "user");
    let operator = money.person("Olga", "BR", "operator");
    let mut client = money.server.connect();
    let path = format!("{FINANCIAL}/plans/subscribe");
    money.replicated(&eva);
    let before = get(&mut client, &eva, &format!("{FINANCIAL}/plans"));
    assert_eq!(before.status, 200, "{}", before.text());
    let body = before.json();
    assert_eq!(body["mine"]["plan"], Value::Null);
    assert_eq!(body["mine"]["commission_rate_bp"], 2_000);
    assert_eq!(body["plans"][0]["price"], 29_700);
    assert_eq!(body["plans"][0]["trial_days"], 7);

    let trial = post(
        &mut client,
        &eva,
        &path,
        "s-1",
        &json!({ "plan": "monthly" }),
    );
    assert_eq!(trial.status, 200, "{}", trial.text());
    assert_eq!(
        (
            trial.json()["charged"].as_i64(),
            trial.json()["trial"].as_bool()
        ),
        (Some(0), Some(true))
    );
    assert_eq!(trial.json()["plan"]["commission_rate_bp"], 1_000);
    let twice = post(
        &mut client,
        &eva,
        &path,
        "s-2",
        &json!({ "plan": "monthly" }),
    );
    assert_eq!(
        (twice.status, twice.error_code()),
        (409, "already_subscribed".into())
    );
    // 10 % of R$100.00 under the monthly plan.
    let charged = charge(
        &money,
        &operator,
        "k-1",
        json!({ "user_id": eva.id, "position_id": "p-1", "profit": 10_000, "profit_currency": "BRL" }),
    );
    assert_eq!(
        charged.json()["charge"]["commission"],
        1_000,
        "{}",
        charged.text()
    );
    let prepaid = post(
        &mut client,
        &eva,
        &path,
        "s-3",
        &json!({ "plan": "prepaid" }),
    );
    assert_eq!(
        prepaid.json()["plan"]["commission_rate_bp"],
        2_000,
        "{}",
        prepaid.text()
    );

    // The trial was used: monthly now costs the month, less a 10 % coupon.
    let coupon = create_coupon(
        &money,
        &admin,
        "c-1",
        json!({ "code": "TENOFF", "kind": "percent", "percent": 10, "max_uses": 5 }),
    );
    assert_eq!(coupon.status, 201, "{}", coupon.text());
    assert_eq!(redeem(&mut client, &eva, "r-1", "TENOFF").status, 201);
    let poor = post(
        &mut client,
        &eva,
        &path,
        "s-4",
        &json!({ "plan": "monthly" }),
    );
    assert_eq!(
        (poor.status, poor.error_code()),
        (422, "insufficient_funds".into())
    );
    money.fund(&eva, "BRL", 30_000);
    let paid = post(
        &mut client,
        &eva,
        &path,
        "s-5",
        &json!({ "plan": "monthly" }),
    );
    assert_eq!(paid.status, 200, "{}", paid.text());
    assert_eq!(
        (
            paid.json()["charged"].as_i64(),
            paid.json()["trial"].as_bool()
        ),
        (Some(26_730), Some(false))
    );
    assert_eq!(money.account(&eva, "real", "BRL"), (30_000 - 26_730, 0));
    money.assert_ledger_sound();
}
