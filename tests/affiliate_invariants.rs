//! Affiliates' money invariants on a real cluster, on both engines:
//! - exactly one share per commission event across `kill -9` of the server during a burst of
//!   commission charges: after the restart every charge, repeated with its key (twice) and
//!   with a new one, charged its position once, with at most one share in the charge's own
//!   group (platform + affiliate = commission, to the minor unit), and the ledger is sound;
//! - the commission balance withdrawn through the financial withdrawals once the share is
//!   available, refused while it is pending, and what a withdrawal holds neither converted
//!   nor withdrawn twice.
//!
//! (Concurrent conversions and concurrent attribution claims are in tests/affiliates.rs.)

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::money::{every_day, get, post, Money, Person, FINANCIAL};
use common::{engines, wait_for, Client, Response, Server};
use rstest::rstest;
use rstest_reuse::{self, apply};
use serde_json::{json, Value};

const AFFILIATE: &str = "/api/enterprise/affiliate";

/// Makes `who` an affiliate; its code.
fn become_affiliate(money: &Money, who: &Person) -> String {
    let made = post(
        &mut money.server.connect(),
        who,
        &format!("{AFFILIATE}/apply"),
        "apply",
        &json!({}),
    );
    assert_eq!(made.status, 201, "{}", made.text());
    made.json()["affiliate"]["code"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Attributes `who` to the affiliate of `code`.
fn referred_by(money: &Money, who: &Person, code: &str) {
    let made = post(
        &mut money.server.connect(),
        who,
        &format!("{AFFILIATE}/attribute"),
        "attribute",
        &json!({ "code": code }),
    );
    assert_eq!(made.status, 201, "{}", made.text());
}

/// The share the rules give: `bp` of the profit (converted at `fx`, six decimals), half up,
/// never above the commission.
fn expected_share(profit: i64, bp: i64, fx: i64, commission: i64) -> i64 {
    let num = i128::from(profit) * i128::from(bp) * i128::from(fx);
    let den = 10_000_i128 * 1_000_000;
    (((num + den / 2) / den) as i64).min(commission)
}

// ------------------------------------------------------------------------ kill -9 burst

/// Client threads in the burst, the most charges each sends, 2xx answers before the kill.
const CLIENTS: usize = 4;
const PER_CLIENT: usize = 300;
const ANSWERED_BEFORE_KILL: usize = 40;

/// A trader of the burst: who, their charge's fx rate (a BRL trader's profit is in USD), and
/// their referrer's share (bp), if any.
struct Trader {
    person: Person,
    fx: Option<&'static str>,
    share_bp: Option<i64>,
}

/// One charge as a client sent it, and its answer when one came.
struct Attempt {
    trader: usize,
    position: String,
    profit: i64,
    answer: Option<Response>,
}

impl Attempt {
    fn body(&self, traders: &[Trader]) -> Value {
        let trader = &traders[self.trader];
        let mut body = json!({ "user_id": trader.person.id, "position_id": self.position,
                               "profit": self.profit, "profit_currency": "USD" });
        if let Some(fx) = trader.fx {
            body["fx_rate"] = json!(fx);
        }
        body
    }

    fn key(&self) -> String {
        format!("k-{}", self.position)
    }
}

fn try_charge(client: &mut Client, operator: &Person, key: &str, body: &Value) -> Option<Response> {
    client.try_request(
        "POST",
        &format!("{FINANCIAL}/commissions"),
        &[("Authorization", &operator.auth), ("Idempotency-Key", key)],
        body.to_string().as_bytes(),
    )
}

/// Sends a charge on fresh connections until the answer is not 503 nor a key still held by
/// a transaction the crash left for PostgreSQL to end, bounded.
fn settled(server: &Server, operator: &Person, key: &str, body: &Value) -> Response {
    wait_for("a settled answer", Duration::from_secs(30), || {
        try_charge(&mut server.connect(), operator, key, body)
            .filter(|r| r.status != 503 && r.error_code() != "idempotency_key_in_flight")
    })
}

/// The `i`th charge of burst client `client_index`, on its connection; and whether the kill
/// cut it.
fn charge_in_burst(
    client: &mut Client,
    operator: &Person,
    traders: &[Trader],
    client_index: usize,
    i: usize,
    answered: &AtomicUsize,
) -> (Attempt, bool) {
    let n = client_index * PER_CLIENT + i;
    let mut attempt = Attempt {
        trader: n % traders.len(),
        position: format!("burst-{client_index}-{i}"),
        // Awkward roundings, from a cent to US$500.
        profit: 1 + (n as i64 * 7_919) % 50_000,
        answer: None,
    };
    attempt.answer = try_charge(client, operator, &attempt.key(), &attempt.body(traders));
    if attempt.answer.as_ref().is_some_and(|r| r.status == 201) {
        answered.fetch_add(1, Ordering::Relaxed);
    }
    let cut = attempt.answer.is_none();
    (attempt, cut)
}

#[apply(engines)]
fn one_share_per_commission_event_across_kill_9(#[case] engine: &str) {
    let mut money = Money::start(engine, "aff_crash", &[]);
    let admin = money.person("Adm", "US", "admin");
    let operator = money.person("Ope", "US", "operator");
    let ana = money.person("Ana", "US", "user");
    let bia = money.person("Bia", "US", "user");
    let code_a = become_affiliate(&money, &ana);
    let code_b = become_affiliate(&money, &bia);
    let vip = post(
        &mut money.server.connect(),
        &admin,
        &format!("{AFFILIATE}/admin/tier"),
        "tier",
        &json!({ "user_id": bia.id, "tier": "affiliate_vip" }),
    );
    assert_eq!(vip.status, 200, "{}", vip.text());
    // Referred by Ana (1.5 %), in USD and in BRL; by Bia (5 %) with little money (part of
    // each commission becomes debt); by no one.
    let traders = vec![
        Trader {
            person: money.person("T1", "US", "user"),
            fx: None,
            share_bp: Some(150),
        },
        Trader {
            person: money.person("T2", "BR", "user"),
            fx: Some("5.4321"),
            share_bp: Some(150),
        },
        Trader {
            person: money.person("T3", "US", "user"),
            fx: None,
            share_bp: Some(500),
        },
        Trader {
            person: money.person("T4", "US", "user"),
            fx: None,
            share_bp: None,
        },
    ];
    money.fund(&traders[0].person, "USD", 1_000_000_000);
    money.fund(&traders[1].person, "BRL", 1_000_000_000);
    money.fund(&traders[2].person, "USD", 5_000);
    money.fund(&traders[3].person, "USD", 1_000_000_000);
    referred_by(&money, &traders[0].person, &code_a);
    referred_by(&money, &traders[1].person, &code_a);
    referred_by(&money, &traders[2].person, &code_b);

    let answered = AtomicUsize::new(0);
    let attempts: Vec<Attempt> = money.server.kill_9_during(
        CLIENTS,
        PER_CLIENT,
        &answered,
        ANSWERED_BEFORE_KILL,
        |client, c, i| charge_in_burst(client, &operator, &traders, c, i, &answered),
    );
    let cut = attempts.iter().filter(|a| a.answer.is_none()).count();
    eprintln!(
        "{} charges sent, {} answered 201, {cut} cut by the kill",
        attempts.len(),
        answered.load(Ordering::Relaxed)
    );
    assert!(cut >= 1, "the kill cut charges in flight");

    money.restart(engine, &[]);
    money.assert_ledger_sound();

    // Every charge answered 201 is there.
    for attempt in attempts.iter().filter(|a| a.answer.is_some()) {
        let answer = attempt.answer.as_ref().unwrap();
        assert_eq!(
            answer.status,
            201,
            "{}: {}",
            attempt.position,
            answer.text()
        );
        assert_eq!(
            money.sql(&format!(
                "SELECT count(*) FROM commission_charges WHERE position_id = '{}'",
                attempt.position
            )),
            "1",
            "{} was answered 201",
            attempt.position
        );
    }

    // Every charge again with its key, twice (the first time charges what the kill cut), and
    // with a new key: 201, replayed, then refused as charged already.
    let mut charged_unanswered = 0;
    for attempt in &attempts {
        let body = attempt.body(&traders);
        let first = settled(&money.server, &operator, &attempt.key(), &body);
        assert_eq!(first.status, 201, "{}: {}", attempt.position, first.text());
        match &attempt.answer {
            Some(answer) => {
                assert_eq!(first.header("Idempotency-Replayed"), Some("true"));
                assert_eq!(first.body, answer.body, "a replay is byte for byte");
            }
            None if first.header("Idempotency-Replayed").is_some() => charged_unanswered += 1,
            None => {}
        }
        let again = settled(&money.server, &operator, &attempt.key(), &body);
        assert_eq!(
            (again.status, again.header("Idempotency-Replayed")),
            (201, Some("true"))
        );
        assert_eq!(again.body, first.body);
        let other = settled(
            &money.server,
            &operator,
            &format!("{}-again", attempt.key()),
            &body,
        );
        assert_eq!(
            (other.status, other.error_code()),
            (409, "commission_already_charged".into()),
            "{}",
            attempt.position
        );
    }
    eprintln!("{charged_unanswered} charges committed but unanswered before the kill");

    // Each position charged once, with the share the rules give it (none without a referrer).
    assert_eq!(
        money.sql("SELECT count(*) FROM commission_charges"),
        attempts.len().to_string()
    );
    let rows = money.sql(
        "SELECT string_agg(c.position_id || ':' || c.commission || ':' || \
                           coalesce(e.amount, 0), ',') \
         FROM commission_charges c LEFT JOIN affiliate_earnings e USING (position_id)",
    );
    let charged: BTreeMap<&str, (i64, i64)> = rows
        .split(',')
        .map(|row| {
            let mut parts = row.split(':');
            let position = parts.next().unwrap();
            let mut number = || parts.next().unwrap().parse::<i64>().unwrap();
            (position, (number(), number()))
        })
        .collect();
    let mut total = 0;
    for attempt in &attempts {
        let trader = &traders[attempt.trader];
        let (commission, share) = charged[attempt.position.as_str()];
        let fx = if trader.fx.is_some() {
            5_432_100
        } else {
            1_000_000
        };
        let expected = trader
            .share_bp
            .map_or(0, |bp| expected_share(attempt.profit, bp, fx, commission));
        assert_eq!(share, expected, "{}", attempt.position);
        total += expected;
    }
    assert!(total > 0, "the burst paid shares");
    assert_eq!(
        money.sql("SELECT coalesce(sum(amount), 0) FROM affiliate_earnings"),
        total.to_string()
    );

    money.assert_commission_groups_sound();
    // No share transfer outside a charge's group: every one has its earnings row.
    assert_eq!(
        money.sql(
            "SELECT (SELECT count(*) FROM ledger_transfers WHERE code = 'affiliate_share') - \
                    (SELECT count(*) FROM affiliate_earnings)"
        ),
        "0",
        "a share transfer without its earnings row"
    );
    assert_eq!(
        money.sql("SELECT count(*) FROM commission_charges WHERE to_debt > 0"),
        money.sql(
            "SELECT count(DISTINCT metadata->>'position_id') FROM ledger_transfers \
             WHERE code = 'commission_debt'"
        ),
    );
    money.assert_ledger_sound();
}

// ------------------------------------------------------------- withdrawing commission

fn withdraw_commission(money: &Money, who: &Person, key: &str, amount: i64) -> Response {
    post(
        &mut money.server.connect(),
        who,
        &format!("{FINANCIAL}/withdrawals"),
        key,
        &json!({ "amount": amount, "source": "commission",
                 "bank": { "holder": "Ana Lima", "bank": "001", "account": "12345-6" } }),
    )
}

/// The affiliate's earnings in USD, once `done` holds of them (replicas lag a little).
fn earnings_until(money: &Money, who: &Person, done: impl Fn(&Value) -> bool) -> Value {
    wait_for("the earnings", Duration::from_secs(10), || {
        let got = get(
            &mut money.server.connect(),
            who,
            &format!("{AFFILIATE}/earnings"),
        );
        assert_eq!(got.status, 200, "{}", got.text());
        let usd = got.json()["earnings"]["USD"].clone();
        done(&usd).then_some(usd)
    })
}

/// A share is withdrawn through the financial withdrawals once it is available: refused while
/// pending (it is no balance yet); then held, neither converted nor withdrawn again while
/// held, and paid on a payout day; a clawback after that leaves debt, never a negative
/// balance.
#[apply(engines)]
fn commission_withdrawn_once_available_refused_while_pending(#[case] engine: &str) {
    let days = every_day();
    let money = Money::start(
        engine,
        "aff_withdraw",
        &[
            "--affiliate-sweep-interval",
            "100",
            "--withdrawal-payout-days",
            &days,
        ],
    );
    let admin = money.person("Adm", "US", "admin");
    let operator = money.person("Ope", "US", "operator");
    let ana = money.person("Ana", "US", "user");
    let tom = money.person("Tom", "US", "user");
    let code = become_affiliate(&money, &ana);
    referred_by(&money, &tom, &code);
    money.fund(&tom, "USD", 10_000_000);
    let charged = post(
        &mut money.server.connect(),
        &operator,
        &format!("{FINANCIAL}/commissions"),
        "c-1",
        &json!({ "user_id": tom.id, "position_id": "p-1", "profit": 1_000_000,
                 "profit_currency": "USD" }),
    );
    assert_eq!(charged.status, 201, "{}", charged.text());
    let share = charged.json()["charge"]["affiliate_share"]
        .as_i64()
        .unwrap();
    assert_eq!(share, 15_000, "1.5 % of US$10,000.00");

    // Pending (the default hold: the next payout date): no balance to withdraw.
    earnings_until(&money, &ana, |e| e["pending"] == share);
    assert_eq!(money.account(&ana, "commission", "USD"), (0, 0));
    let early = withdraw_commission(&money, &ana, "w-early", 5_000);
    assert_eq!(
        (early.status, early.error_code()),
        (422, "insufficient_funds".into()),
        "{}",
        early.text()
    );

    // The hold ends: the sweep makes it available.
    money.sql("UPDATE affiliate_earnings SET created_at = now() - interval '70 days'");
    wait_for("the share released", Duration::from_secs(10), || {
        (money.account(&ana, "commission", "USD") == (share, 0)).then_some(())
    });
    // The amount and the US$2.00 fee must both fit.
    let fee = 200;
    let too_much = withdraw_commission(&money, &ana, "w-all", share);
    assert_eq!(
        (too_much.status, too_much.error_code()),
        (422, "insufficient_funds".into())
    );
    let made = withdraw_commission(&money, &ana, "w-1", share - fee);
    assert_eq!(made.status, 201, "{}", made.text());
    let w = made.json()["withdrawal"].clone();
    assert_eq!(
        (w["source"].as_str(), w["fee"].as_i64()),
        (Some("commission"), Some(fee))
    );
    assert_eq!(money.account(&ana, "commission", "USD"), (share, share));
    assert_eq!(money.account(&ana, "real", "USD"), (0, 0));
    // What the withdrawal holds is neither withdrawn again nor converted.
    let twice = withdraw_commission(&money, &ana, "w-2", 1_000);
    assert_eq!(
        (twice.status, twice.error_code()),
        (422, "insufficient_funds".into())
    );
    let convert = post(
        &mut money.server.connect(),
        &ana,
        &format!("{AFFILIATE}/conversions"),
        "cv-1",
        &json!({}),
    );
    assert_eq!(
        (convert.status, convert.error_code()),
        (422, "nothing_to_convert".into())
    );
    earnings_until(&money, &ana, |e| e["withdrawing"] == share);

    // An admin approves it and pays it: the commission balance is gone, the fee is the
    // platform's.
    let id = w["id"].as_str().unwrap().to_string();
    if w["state"] == "requested" {
        let approved = money.decide_withdrawal(&admin, &id, "approve", "a-1");
        assert_eq!(approved.status, 200, "{}", approved.text());
    }
    let paid = money.decide_withdrawal(&admin, &id, "pay", "p-1");
    assert_eq!(paid.status, 200, "{}", paid.text());
    assert_eq!(paid.json()["withdrawal"]["state"], "paid");
    assert_eq!(money.account(&ana, "commission", "USD"), (0, 0));
    let usd = earnings_until(&money, &ana, |e| e["withdrawn"] == share);
    assert_eq!(
        (usd["available"].as_i64(), usd["withdrawing"].as_i64()),
        (Some(0), Some(0))
    );

    // The commission reversed after it was paid out: all of it becomes debt.
    let clawed = post(
        &mut money.server.connect(),
        &admin,
        &format!("{AFFILIATE}/admin/clawbacks"),
        "cb-1",
        &json!({ "position_id": "p-1" }),
    );
    assert_eq!(clawed.status, 201, "{}", clawed.text());
    let c = clawed.json()["clawback"].clone();
    assert_eq!(
        (c["from_balance"].as_i64(), c["to_debt"].as_i64()),
        (Some(0), Some(share))
    );
    assert_eq!(money.account(&ana, "debt", "USD"), (share, 0));
    let usd = earnings_until(&money, &ana, |e| e["debt"] == share);
    assert_eq!(usd["clawed_back"], share);

    // The dashboards say what the earnings say, read alone or together (concurrent reads of
    // one replica are answered by one statement): Ana's, and Bia's, who has earned nothing.
    let bia = money.person("Bia", "US", "user");
    become_affiliate(&money, &bia);
    let nothing = json!({ "pending": 0, "available": 0, "converted": 0, "withdrawn": 0,
                          "withdrawing": 0, "clawed_back": 0, "debt": 0, "earned": 0 });
    let addr = money.server.addr;
    let dashboards: Vec<(bool, Value)> = std::thread::scope(|scope| {
        let readers: Vec<_> = (0..16)
            .map(|n| {
                let (who, is_ana) = if n % 2 == 0 {
                    (&ana, true)
                } else {
                    (&bia, false)
                };
                scope.spawn(move || {
                    let read = wait_for("a dashboard", Duration::from_secs(10), || {
                        let got = get(
                            &mut Client::connect(addr),
                            who,
                            &format!("{AFFILIATE}/dashboard"),
                        );
                        (got.status == 200).then(|| got.json())
                    });
                    (is_ana, read)
                })
            })
            .collect();
        readers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for (is_ana, dashboard) in dashboards {
        let (who, usd, earning) = if is_ana {
            (&ana, &usd, 1)
        } else {
            (&bia, &nothing, 0)
        };
        assert_eq!(dashboard["affiliate"]["user_id"], who.id, "{dashboard}");
        assert_eq!(dashboard["earnings"]["USD"], *usd, "{dashboard}");
        assert_eq!(dashboard["earnings"]["BRL"], nothing, "{dashboard}");
        assert_eq!(dashboard["referrals"]["total"], earning, "{dashboard}");
        assert_eq!(dashboard["referrals"]["earning"], earning, "{dashboard}");
    }
    money.assert_ledger_sound();
}
