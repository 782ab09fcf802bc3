//! Affiliates on a real cluster, on both engines: codes and tiers; attribution once, within
//! 48 h of sign-up, never to oneself (the database refuses it too), under 20 concurrent claims;
//! campaign links counting clicks and sign-ups; each commission event's share in the charge's
//! ledger group (platform + affiliate = commission, to the minor unit), held until the sweep
//! makes it available, clawed back when reversed; conversion to admin credit all-or-nothing
//! under 50 concurrent requests. The ledger sound after each.

mod common;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use common::money::{get, post, Money, Person, FINANCIAL};
use common::{wait_for, Client, Response};
use rstest::rstest;
use rstest_reuse::{self, apply};
use serde_json::{json, Value};

use common::engines;

const AFFILIATE: &str = "/api/enterprise/affiliate";
/// The stored dashboards' sweep, which the test servers run without.
const DASHBOARD_SWEEP: [&str; 2] = ["--affiliate-dashboard-interval", "200"];

fn call(money: &Money, who: &Person, method: &str, path: &str, body: &Value) -> Response {
    money.server.connect().request(
        method,
        &format!("{AFFILIATE}/{path}"),
        &[("Authorization", &who.auth)],
        body.to_string().as_bytes(),
    )
}

/// `GET {AFFILIATE}/{path}` as `who`.
fn fetch(money: &Money, who: &Person, path: &str) -> Response {
    get(
        &mut money.server.connect(),
        who,
        &format!("{AFFILIATE}/{path}"),
    )
}

/// `POST {AFFILIATE}/{path}` as `who`, with `Idempotency-Key: key`.
fn post_keyed(money: &Money, who: &Person, path: &str, key: &str, body: &Value) -> Response {
    post(
        &mut money.server.connect(),
        who,
        &format!("{AFFILIATE}/{path}"),
        key,
        body,
    )
}

fn read(money: &Money, who: &Person, path: &str) -> Value {
    let got = fetch(money, who, path);
    assert_eq!(got.status, 200, "{path}: {}", got.text());
    got.json()
}

/// Reads `path` until `done` holds of its body (replicas lag a little), for up to 10 s.
fn read_until(money: &Money, who: &Person, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    wait_for(path, Duration::from_secs(10), || {
        let body = read(money, who, path);
        done(&body).then_some(body)
    })
}

/// The dashboard without `X-Min-LSN` is the row the sweep stored, byte for byte, and comes to
/// agree (bounded wait) with the dashboard summed up on the read at the primary's position now
/// (`X-Min-LSN`), `as_of` aside: each change to `who`'s figures reached the stored row.
/// Returns the stored body.
fn stored_dashboard_settles(money: &Money, who: &Person) -> Value {
    let without_as_of = |mut body: Value| {
        body.as_object_mut()
            .expect("a dashboard is an object")
            .remove("as_of")
            .expect("a dashboard says as of when");
        body
    };
    let at = money.sql("SELECT pg_current_wal_lsn()");
    let summed = money.server.connect().request(
        "GET",
        &format!("{AFFILIATE}/dashboard"),
        &[("Authorization", &who.auth), ("X-Min-LSN", &at)],
        b"",
    );
    assert_eq!(summed.status, 200, "{}", summed.text());
    let summed = without_as_of(summed.json());
    wait_for("the stored dashboard", Duration::from_secs(20), || {
        let stored = fetch(money, who, "dashboard");
        assert_eq!(stored.status, 200, "{}", stored.text());
        let row = money.sql(&format!(
            "SELECT body FROM affiliate_dashboards WHERE user_id = {}",
            who.id
        ));
        // Not built yet, or the replica behind the primary's row: not settled.
        if stored.text() != row {
            return None;
        }
        (without_as_of(stored.json()) == summed).then(|| stored.json())
    })
}

fn apply_as_affiliate(money: &Money, who: &Person) -> String {
    let made = call(money, who, "POST", "apply", &json!({}));
    assert_eq!(made.status, 201, "{}", made.text());
    let code = made.json()["affiliate"]["code"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        code.len() == 9 && code.starts_with("CBC"),
        "a code is CBC and 6 characters: {code}"
    );
    code
}

fn attribute(money: &Money, who: &Person, body: Value) -> Response {
    call(money, who, "POST", "attribute", &body)
}

/// `by` asks to make `who` a VIP affiliate.
fn make_vip(money: &Money, by: &Person, who: &Person) -> Response {
    call(
        money,
        by,
        "POST",
        "admin/tier",
        &json!({ "user_id": who.id, "tier": "affiliate_vip" }),
    )
}

/// A new user with `funds` minor units of `currency`, referred by the affiliate with `code`
/// when there is one.
fn trader(
    money: &Money,
    name: &str,
    country: &str,
    (currency, funds): (&str, i64),
    code: Option<&str>,
) -> Person {
    let trader = money.person(name, country, "user");
    money.fund(&trader, currency, funds);
    if let Some(code) = code {
        let made = attribute(money, &trader, json!({ "code": code }));
        assert_eq!(made.status, 201, "{}", made.text());
    }
    trader
}

/// `n` requests at once, each on its own patient client (`send(i, client)` makes the i-th):
/// exactly one is answered 201, every other one `lost` (status and error code). Returns the
/// winner's index and all the answers.
fn exactly_one_wins(
    money: &Money,
    n: usize,
    lost: (u16, &str),
    send: impl Fn(usize, &mut Client) -> Response + Send + Sync + 'static,
) -> (usize, Vec<Response>) {
    let (addr, send) = (money.server.addr, Arc::new(send));
    let barrier = Arc::new(Barrier::new(n));
    let tries: Vec<_> = (0..n)
        .map(|i| {
            let (barrier, send) = (barrier.clone(), send.clone());
            thread::spawn(move || {
                let mut client = patient(addr);
                barrier.wait();
                send(i, &mut client)
            })
        })
        .collect();
    let answers: Vec<Response> = tries.into_iter().map(|t| t.join().unwrap()).collect();
    let won: Vec<&Response> = answers.iter().filter(|r| r.status == 201).collect();
    assert_eq!(
        won.len(),
        1,
        "{:?}",
        answers
            .iter()
            .map(|r| (r.status, r.text()))
            .collect::<Vec<_>>()
    );
    for other in answers.iter().filter(|r| r.status != 201) {
        assert_eq!((other.status, other.error_code()), (lost.0, lost.1.into()));
    }
    let winner = answers.iter().position(|r| r.status == 201).unwrap();
    (winner, answers)
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

/// Expects the database itself to refuse `statement` with a check violation (23514).
fn refused_by_database(money: &Money, statement: &str) {
    money.sql(&format!(
        "DO $$ BEGIN {statement}; \
         RAISE EXCEPTION 'the database accepted: %', {}; \
         EXCEPTION WHEN check_violation THEN NULL; END $$",
        quote(statement)
    ));
}

/// The server's ledger check, as `admin` sees it, mid-test (the harness's full check, which
/// makes an auditor of its own, runs once at the end).
fn ledger_check(money: &Money, admin: &Person) {
    let check = get(
        &mut money.server.connect(),
        admin,
        &format!("{FINANCIAL}/ledger/check"),
    );
    assert_eq!(check.status, 200, "{}", check.text());
    assert_eq!(check.json()["ok"], true, "ledger check: {}", check.text());
}

/// A client that waits up to a minute for its answer: concurrent requests queue on one row's
/// lock, and on a loaded host that takes longer than a single request's 10 s.
fn patient(addr: std::net::SocketAddr) -> Client {
    let client = Client::connect(addr);
    client
        .stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    client
}

/// A click on the campaign link `slug`, by anyone.
fn follow(money: &Money, slug: &str) -> Response {
    money
        .server
        .connect()
        .request("GET", &format!("{AFFILIATE}/r/{slug}"), &[], b"")
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Codes, the tier, attribution's rules (own code, unknown code, once, 48 h, 20 concurrent
/// claims: exactly one), the database's own refusals, and campaign links.
#[apply(engines)]
fn attribution_once_within_48h_never_oneself(#[case] engine: &str) {
    let money = Money::start(
        engine,
        "aff_attribution",
        &[DASHBOARD_SWEEP[0], DASHBOARD_SWEEP[1]],
    );
    let admin = money.person("Adm", "BR", "admin");
    let ana = money.person("Ana", "BR", "user");
    let bia = money.person("Bia", "US", "user");
    let code_a = apply_as_affiliate(&money, &ana);
    let again = call(&money, &ana, "POST", "apply", &json!({}));
    assert_eq!(
        (again.status, again.error_code()),
        (409, "already_affiliate".into())
    );
    assert_eq!(
        money.sql(&format!("SELECT role FROM users WHERE id = {}", ana.id)),
        "affiliate"
    );
    let code_b = apply_as_affiliate(&money, &bia);
    assert_ne!(code_a, code_b);

    // An admin makes Bia VIP: her share is 5 % by default; a user cannot.
    let by_user = make_vip(&money, &ana, &bia);
    assert_eq!(by_user.status, 403, "{}", by_user.text());
    let vip = make_vip(&money, &admin, &bia);
    assert_eq!(vip.status, 200, "{}", vip.text());
    assert_eq!(vip.json()["affiliate"]["share_bp"], 500);
    assert_eq!(
        money.sql(&format!("SELECT role FROM users WHERE id = {}", bia.id)),
        "affiliate_vip"
    );

    // Never oneself; an unknown code or one that is no code: 422.
    let own = attribute(&money, &ana, json!({ "code": code_a }));
    assert_eq!((own.status, own.error_code()), (422, "own_code".into()));
    for code in ["CBCZZZZZZ", "nonsense"] {
        let unknown = attribute(&money, &ana, json!({ "code": code }));
        assert_eq!(
            (unknown.status, unknown.error_code()),
            (422, "unknown_code".into()),
            "{code}"
        );
    }

    // Campaign links: a click counts and redirects with the code; a sign-up through it counts.
    let made = call(
        &money,
        &ana,
        "POST",
        "campaigns",
        &json!({ "slug": "spring-promo", "name": "Spring" }),
    );
    assert_eq!(made.status, 201, "{}", made.text());
    let taken = call(
        &money,
        &bia,
        "POST",
        "campaigns",
        &json!({ "slug": "spring-promo" }),
    );
    assert_eq!(
        (taken.status, taken.error_code()),
        (409, "slug_taken".into())
    );
    let click = follow(&money, "spring-promo");
    assert_eq!(
        click.status,
        302,
        "{} {:?}",
        click.text(),
        click.header("Location")
    );
    assert_eq!(
        click.header("Location"),
        Some(format!("/register?ref={code_a}&campaign=spring-promo").as_str())
    );
    let nowhere = follow(&money, "no-such-link");
    assert_eq!(nowhere.status, 404);

    // 20 concurrent claims for one new user, to both affiliates: exactly one wins.
    let cai = money.person("Cai", "BR", "user");
    // Half of them with the campaign, half to the other affiliate.
    let bodies = [
        json!({ "code": code_a, "campaign": "spring-promo" }),
        json!({ "code": code_b }),
    ];
    let claimant = cai.clone();
    let (won_at, answers) =
        exactly_one_wins(&money, 20, (409, "already_attributed"), move |n, client| {
            client.request(
                "POST",
                &format!("{AFFILIATE}/attribute"),
                &[("Authorization", &claimant.auth)],
                bodies[n % 2].to_string().as_bytes(),
            )
        });
    assert_eq!(
        money.sql(&format!(
            "SELECT count(*) FROM affiliate_referrals WHERE referred_user_id = {}",
            cai.id
        )),
        "1"
    );
    let winner = answers[won_at].json()["referral"]["affiliate_user_id"]
        .as_i64()
        .unwrap();
    let signups = money.sql("SELECT signups FROM affiliate_campaigns WHERE slug = 'spring-promo'");
    assert_eq!(signups, if winner == ana.id { "1" } else { "0" });

    // Past 48 h of sign-up: 410, and the database refuses it too (the trigger).
    let old = money.person("Dan", "US", "user");
    money.sql(&format!(
        "UPDATE users SET created_at = now() - interval '49 hours' WHERE id = {}",
        old.id
    ));
    let late = attribute(&money, &old, json!({ "code": code_a }));
    assert_eq!(
        (late.status, late.error_code()),
        (410, "attribution_window_closed".into())
    );
    refused_by_database(
        &money,
        &format!(
            "INSERT INTO affiliate_referrals (referred_user_id, affiliate_user_id) VALUES ({}, {})",
            old.id, ana.id
        ),
    );
    // Just inside the window: accepted.
    let edge = money.person("Eva", "US", "user");
    money.sql(&format!(
        "UPDATE users SET created_at = now() - interval '47 hours' WHERE id = {}",
        edge.id
    ));
    let in_time = attribute(&money, &edge, json!({ "code": code_a.to_lowercase() }));
    assert_eq!(in_time.status, 201, "{}", in_time.text());
    // Oneself: refused by the database's check, whatever the route does.
    refused_by_database(
        &money,
        &format!(
            "INSERT INTO affiliate_referrals (referred_user_id, affiliate_user_id) VALUES ({0}, {0})",
            bia.id
        ),
    );

    // The affiliate's own views.
    let expected_referrals = if winner == ana.id { 2 } else { 1 };
    let dashboard = read_until(&money, &ana, "dashboard", |d| {
        d["referrals"]["total"] == expected_referrals
    });
    assert_eq!(dashboard["affiliate"]["code"], code_a.as_str());
    assert_eq!(dashboard["campaigns"]["clicks"], 1);
    let stored = stored_dashboard_settles(&money, &ana);
    assert_eq!(stored["referrals"]["total"], expected_referrals);
    assert_eq!(stored["campaigns"]["clicks"], 1);
    let listed = read_until(&money, &ana, "referrals", |r| {
        r["referrals"].as_array().map(Vec::len) == Some(expected_referrals)
    });
    assert_eq!(listed["referrals"][0]["user_id"], edge.id);
    assert_eq!(read(&money, &ana, "code")["code"], code_a.as_str());
    let campaigns = read(&money, &ana, "campaigns");
    assert_eq!(campaigns["campaigns"][0]["clicks"], 1);
    let stranger = fetch(&money, &cai, "dashboard");
    assert_eq!(
        (stranger.status, stranger.error_code()),
        (404, "not_an_affiliate".into())
    );
    money.assert_ledger_sound();
}

/// A trader: who, whether Brazilian (BRL), and their referrer's code and share (bp).
type Trader<'a> = (Person, bool, Option<(&'a str, i64)>);

/// Commission events of referred users pay their referrer's share in the charge's group:
/// revenue less affiliate expense plus the share equals the commission, to the minor unit;
/// the share is pending until the sweep releases it, and a reversal claws it back (voided
/// while pending; a negative entry after, the rest becoming debt).
#[apply(engines)]
fn shares_sum_exactly_are_held_then_released_and_clawed_back(#[case] engine: &str) {
    let money = Money::start(
        engine,
        "aff_shares",
        &[
            "--affiliate-sweep-interval",
            "100",
            DASHBOARD_SWEEP[0],
            DASHBOARD_SWEEP[1],
        ],
    );
    let admin = money.person("Adm", "US", "admin");
    let operator = money.person("Ope", "US", "operator");
    let ana = money.person("Ana", "US", "user");
    let bia = money.person("Bia", "US", "user");
    let code_a = apply_as_affiliate(&money, &ana);
    let code_b = apply_as_affiliate(&money, &bia);
    let vip = make_vip(&money, &admin, &bia);
    assert_eq!(vip.status, 200, "{}", vip.text());
    // Traders: two referred by Ana, one by Bia, one by no one; one Brazilian (a converted
    // profit), all funded.
    let traders: Vec<Trader> = [
        ("T1", false, Some((code_a.as_str(), 150))),
        ("T2", true, Some((code_a.as_str(), 150))),
        ("T3", false, Some((code_b.as_str(), 500))),
        ("T4", false, None),
    ]
    .into_iter()
    .map(|(name, is_br, referrer)| {
        let (country, currency) = if is_br { ("BR", "BRL") } else { ("US", "USD") };
        let code = referrer.map(|(code, _)| code);
        let who = trader(&money, name, country, (currency, 1_000_000), code);
        (who, is_br, referrer)
    })
    .collect();
    // Profits with awkward roundings.
    let profits = [10_000_i64, 3_333, 12_345, 777, 34, 1];
    let mut expected_share = std::collections::BTreeMap::new();
    for (t, (trader, is_br, referrer)) in traders.iter().enumerate() {
        for (p, profit) in profits.iter().enumerate() {
            let position = format!("pos-{t}-{p}");
            let body = if *is_br {
                json!({ "user_id": trader.id, "position_id": position, "profit": profit,
                        "profit_currency": "USD", "fx_rate": "5.4321" })
            } else {
                json!({ "user_id": trader.id, "position_id": position, "profit": profit,
                        "profit_currency": "USD" })
            };
            let charged = charge(&money, &operator, &format!("k-{position}"), body.clone());
            assert_eq!(charged.status, 201, "{}", charged.text());
            let c = &charged.json()["charge"];
            let commission = c["commission"].as_i64().unwrap();
            let share = c["affiliate_share"].as_i64().unwrap();
            assert!(
                share <= commission,
                "{position}: share above the commission"
            );
            if let Some((_, bp)) = referrer {
                // bp of the profit (converted at the charge's rate), half up, capped.
                let fx = if *is_br { 5_432_100_i128 } else { 1_000_000 };
                let num = i128::from(*profit) * i128::from(*bp) * fx;
                let den = 10_000_i128 * 1_000_000;
                let expected = (((num + den / 2) / den) as i64).min(commission);
                assert_eq!(share, expected, "{position}");
            } else {
                assert_eq!(share, 0, "{position}: no referrer, no share");
            }
            expected_share.insert(position.clone(), share);
            // A retry of the same event pays nothing twice.
            let again = charge(&money, &operator, &format!("k2-{position}"), body);
            assert_eq!(again.status, 409, "{}", again.text());
        }
    }
    money.assert_commission_groups_sound();
    let shares_in_groups = money.sql(
        "SELECT count(*) FROM affiliate_earnings e JOIN ledger_transfers s ON s.id = e.transfer_id \
         WHERE NOT EXISTS (SELECT 1 FROM ledger_transfers c WHERE c.group_id = s.group_id \
                           AND c.code IN ('commission', 'commission_debt'))",
    );
    assert_eq!(shares_in_groups, "0", "a share outside its charge's group");
    let total: i64 = expected_share.values().sum();
    let paid = money.sql("SELECT coalesce(sum(amount), 0) FROM affiliate_earnings");
    assert_eq!(paid.parse::<i64>().unwrap(), total);
    let ana_share: i64 = expected_share
        .iter()
        .filter(|(p, _)| p.starts_with("pos-0-"))
        .map(|(_, s)| s)
        .sum();

    // Held: pending in the earnings, nothing available (the default hold: next payout date).
    let earnings = read_until(&money, &ana, "earnings", |e| {
        e["earnings"]["USD"]["pending"] == ana_share
    });
    assert_eq!(earnings["earnings"]["USD"]["available"], 0);
    assert!(money.sql("SELECT count(*) FROM affiliate_earnings WHERE state <> 'pending'") == "0");
    let stored = stored_dashboard_settles(&money, &ana);
    assert_eq!(stored["earnings"]["USD"]["pending"], ana_share);
    stored_dashboard_settles(&money, &bia);
    ledger_check(&money, &admin);

    // Reversed while pending: voided.
    let reverse = |key: &str, position: &str| {
        post_keyed(
            &money,
            &admin,
            "admin/clawbacks",
            key,
            &json!({ "position_id": position }),
        )
    };
    let voided = reverse("cb-1", "pos-0-1");
    assert_eq!(voided.status, 201, "{}", voided.text());
    assert_eq!(voided.json()["clawback"]["was_pending"], true);
    let twice = reverse("cb-1b", "pos-0-1");
    assert_eq!(
        (twice.status, twice.error_code()),
        (409, "already_clawed_back".into())
    );
    let none = reverse("cb-1c", "pos-3-0");
    assert_eq!((none.status, none.error_code()), (404, "no_share".into()));

    // The hold ends (made before the latest payout day): the sweep makes them available.
    money.sql("UPDATE affiliate_earnings SET created_at = now() - interval '70 days'");
    wait_for("the sweep", Duration::from_secs(10), || {
        (money.sql("SELECT count(*) FROM affiliate_earnings WHERE state = 'pending'") == "0")
            .then_some(())
    });
    let voided_amount = expected_share["pos-0-1"];
    let available = ana_share - voided_amount;
    let earnings = read_until(&money, &ana, "earnings", |e| {
        e["earnings"]["USD"]["available"] == available
    });
    assert_eq!(earnings["earnings"]["USD"]["pending"], 0);
    assert_eq!(earnings["earnings"]["USD"]["clawed_back"], voided_amount);
    assert_eq!(money.account(&ana, "commission", "USD"), (available, 0));
    let stored = stored_dashboard_settles(&money, &ana);
    assert_eq!(stored["earnings"]["USD"]["available"], available);
    // The admin report: Ana's shares today, what was clawed back, what is due.
    let report = fetch(&money, &admin, "admin/report");
    assert_eq!(report.status, 200, "{}", report.text());
    let ana_usd = wait_for("the report", Duration::from_secs(10), || {
        let report = fetch(&money, &admin, "admin/report?from=2000-01-01&to=2999-12-31").json();
        report["affiliates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| {
                r["user_id"] == ana.id && r["currency"] == "USD" && r["available"] == available
            })
            .cloned()
    });
    assert_eq!(ana_usd["earned"], ana_share);
    assert_eq!(ana_usd["clawed_back"], voided_amount);
    assert_eq!(ana_usd["due"], available);
    let bad = fetch(&money, &admin, "admin/report?from=2026-02-30");
    assert_eq!(bad.status, 400);

    // Ana converts all but 1 cent; then the biggest share is reversed: 1 cent from the
    // balance, the rest becomes debt (never below zero).
    let big = expected_share["pos-0-0"];
    assert!(big > 1);
    let converted = post_keyed(
        &money,
        &ana,
        "conversions",
        "cv-1",
        &json!({ "amount": available - 1 }),
    );
    assert_eq!(converted.status, 201, "{}", converted.text());
    let taken = reverse("cb-2", "pos-0-0");
    assert_eq!(taken.status, 201, "{}", taken.text());
    let c = taken.json()["clawback"].clone();
    assert_eq!(
        (c["from_balance"].as_i64(), c["to_debt"].as_i64()),
        (Some(1), Some(big - 1))
    );
    assert_eq!(money.account(&ana, "commission", "USD"), (0, 0));
    assert_eq!(money.account(&ana, "debt", "USD"), (big - 1, 0));
    let stored = stored_dashboard_settles(&money, &ana);
    assert_eq!(stored["earnings"]["USD"]["debt"], big - 1);
    money.assert_ledger_sound();
}

/// A charge that runs into debt blocks the trader's trading whether or not someone referred
/// them (a referred charge learns it from its share's statement, an unreferred one asks on its
/// own), one that the balance covers blocks nothing, and one covered while older debt is owed
/// still blocks.
#[apply(engines)]
fn a_charge_into_debt_blocks_trading_referred_or_not(#[case] engine: &str) {
    let money = Money::start(engine, "aff_debt", &[]);
    let admin = money.person("Adm", "US", "admin");
    let operator = money.person("Ope", "US", "operator");
    let ana = money.person("Ana", "US", "user");
    let code = apply_as_affiliate(&money, &ana);
    // A charge on 10,000 of profit (2,000 of commission), its answer checked against what the
    // ledger holds: returns the answer.
    let charge_checked = |who: &Person, position: &str| -> Value {
        let charged = charge(
            &money,
            &operator,
            &format!("k-{position}"),
            json!({ "user_id": who.id, "position_id": position, "profit": 10_000,
                    "profit_currency": "USD" }),
        );
        assert_eq!(charged.status, 201, "{position}: {}", charged.text());
        let c = charged.json()["charge"].clone();
        let owes = money.account(who, "debt", "USD").0;
        assert_eq!(c["trading_blocked"], owes > 0, "{position}: {c}");
        c
    };
    // 100 of funds cannot cover the charge, 1,000,000 can; the first two were referred.
    let mut poor_referred = None;
    for (name, referrer, funds) in [
        ("Rico", Some(code.as_str()), 1_000_000),
        ("Pobre", Some(code.as_str()), 100),
        ("Rica", None, 1_000_000),
        ("Pobra", None, 100),
    ] {
        let who = trader(&money, name, "US", ("USD", funds), referrer);
        let c = charge_checked(&who, name);
        let to_debt = c["to_debt"].as_i64().unwrap();
        assert_eq!(to_debt > 0, funds == 100, "{name}: {c}");
        assert_eq!(c["trading_blocked"], to_debt > 0, "{name}: {c}");
        assert_eq!(
            c["affiliate_share"].as_i64().unwrap() > 0,
            referrer.is_some(),
            "{name}: {c}"
        );
        if name == "Pobre" {
            poor_referred = Some(who);
        }
    }
    // Funded (not a recharge, which would pay the debt first), the referred debtor's next
    // charge is covered, and the older debt still blocks.
    let debtor = poor_referred.unwrap();
    money.fund(&debtor, "USD", 1_000_000);
    let c = charge_checked(&debtor, "Pobre-again");
    assert_eq!(c["to_debt"], 0, "{c}");
    assert!(c["affiliate_share"].as_i64().unwrap() > 0, "{c}");
    assert_eq!(c["trading_blocked"], true, "{c}");
    money.assert_commission_groups_sound();
    ledger_check(&money, &admin);
    money.assert_ledger_sound();
}

/// 50 concurrent conversions of one available balance (distinct keys): it is converted once,
/// admin credit gets it plus 10 %, the others find nothing; a repeat of the winner's key
/// replays its answer.
#[apply(engines)]
fn conversion_converts_once_under_concurrency(#[case] engine: &str) {
    let money = Money::start(
        engine,
        "aff_convert",
        &[
            "--affiliate-hold",
            "0",
            "--affiliate-sweep-interval",
            "100",
            DASHBOARD_SWEEP[0],
            DASHBOARD_SWEEP[1],
        ],
    );
    let operator = money.person("Ope", "US", "operator");
    let ana = money.person("Ana", "US", "user");
    let code = apply_as_affiliate(&money, &ana);
    let trader = trader(&money, "Tom", "US", ("USD", 10_000_000), Some(&code));
    let charged = charge(
        &money,
        &operator,
        "k-1",
        json!({ "user_id": trader.id, "position_id": "p-1", "profit": 1_234_567,
                "profit_currency": "USD" }),
    );
    assert_eq!(charged.status, 201, "{}", charged.text());
    let share = charged.json()["charge"]["affiliate_share"]
        .as_i64()
        .unwrap();
    assert_eq!(share, 18_519, "1.5 % of 1,234,567 cents, half up");
    wait_for("the share released", Duration::from_secs(10), || {
        (money.account(&ana, "commission", "USD") == (share, 0)).then_some(())
    });
    // Settled before the conversion, so that the conversion's own mark is what brings it.
    let stored = stored_dashboard_settles(&money, &ana);
    assert_eq!(stored["earnings"]["USD"]["available"], share);

    let converter = ana.clone();
    let (winner, answers) =
        exactly_one_wins(&money, 50, (422, "nothing_to_convert"), move |n, client| {
            post(
                client,
                &converter,
                &format!("{AFFILIATE}/conversions"),
                &format!("conv-{n}"),
                &json!({}),
            )
        });
    let conversion = answers[winner].json()["conversion"].clone();
    let bonus = share / 10;
    assert_eq!(conversion["converted"], share);
    assert_eq!(conversion["bonus"], bonus);
    assert_eq!(money.account(&ana, "commission", "USD"), (0, 0));
    assert_eq!(
        money.account(&ana, "admin_credit", "USD"),
        (share + bonus, 0)
    );
    // Debit and credits together: one group of two transfers.
    assert_eq!(
        money.sql(&format!(
            "SELECT count(*) FROM ledger_transfers WHERE group_id = {}",
            conversion["group_id"]
        )),
        "2"
    );
    let replay = post_keyed(
        &money,
        &ana,
        "conversions",
        &format!("conv-{winner}"),
        &json!({}),
    );
    assert_eq!(replay.status, 201);
    assert_eq!(replay.header("Idempotency-Replayed"), Some("true"));
    assert_eq!(replay.json()["conversion"], conversion);
    let earnings = read_until(&money, &ana, "earnings", |e| {
        e["earnings"]["USD"]["converted"] == share
    });
    assert_eq!(earnings["earnings"]["USD"]["available"], 0);
    assert_eq!(earnings["earnings"]["USD"]["earned"], share);
    let stored = stored_dashboard_settles(&money, &ana);
    assert_eq!(stored["earnings"]["USD"]["converted"], share);
    // No key: 400; too much: 422.
    let keyless = money.server.connect().request(
        "POST",
        &format!("{AFFILIATE}/conversions"),
        &[("Authorization", &ana.auth)],
        b"{}",
    );
    assert_eq!(keyless.status, 400);
    money.assert_ledger_sound();
}
