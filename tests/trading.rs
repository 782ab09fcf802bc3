//! Trading on a real PostgreSQL primary with a streaming replica and the bundled exchange
//! simulator (the `exchange-sim` binary), on both engines: a signal makes one order per
//! subscriber, the same alert twice one signal, a stale one 422, a wrong secret 401 with
//! nothing written; an order whose answer was lost is placed exactly once; an expired intent
//! never reaches the exchange; the per-user limits hold (2 open positions, the symbol's
//! cooldown after a close, stop-loss and take-profit always set, none while in debt);
//! settings keep their bounds. Positions are the owner's only; a manual close goes through a
//! close intent, answers 409 when closed or closing, and a profitable close is charged its
//! commission exactly once (a BRL user's when a rate is recorded), across a `kill -9` too.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use rstest::rstest;
use rstest_reuse::{self, apply};
use serde_json::{json, Value};

use common::exchange::Exchange;
use common::ledger::{Bank, User};
use common::pg::PgCluster;
use common::trading::{
    commission_transfers, count, intent_states, now_ms, post_signal, restart_server, send,
    signal_body, subscriber, subscriber_in, trading_args, wait_settled, SECRETS_KEY, SIGNAL_SECRET,
    TRADING,
};
use common::{engines, wait_for, Client, LoadgenSummary, Response, Server};

fn cluster() -> &'static PgCluster {
    static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| PgCluster::start(1))
}

/// A server with [`trading_args`] and `extra`.
fn start(engine: &str, test: &str, exchange: &Exchange, extra: &[&str]) -> Bank {
    let url = exchange.url();
    let mut args = trading_args(&url).to_vec();
    args.extend_from_slice(extra);
    Bank::start(cluster(), engine, test, &args)
}

#[apply(engines)]
fn a_signal_makes_one_order_per_subscriber(#[case] engine: &str) {
    let exchange = Exchange::start();
    let bank = start(engine, "trade_fanout", &exchange, &[]);
    let users: Vec<User> = (0..3)
        .map(|i| subscriber(&bank, &exchange, &format!("t{i}"), "1000.00"))
        .collect();
    // A user without an exchange account gets no intent.
    let _bystander = bank.user("nobody", "US");
    // A key the exchange does not know is refused, and nothing is kept.
    let lone = bank.user("lone", "US");
    let refused = send(
        &bank.server,
        "POST",
        &format!("{TRADING}/exchange-accounts"),
        &lone,
        &json!({ "api_key": "unknown-key", "secret": "whatever" }),
    );
    assert_eq!(refused.status, 422, "{}", refused.text());
    assert_eq!(refused.error_code(), "exchange_key_refused");

    let body = signal_body("SINAL LONG FORTE", "BTCUSDT", "100.00", now_ms());
    let taken = post_signal(&bank.server, &body);
    assert_eq!(taken.status, 202, "{}", taken.text());
    let signal = taken.json()["signal"].clone();
    assert_eq!(signal["intents"], 3, "{signal}");
    assert_eq!(signal["kind"], "open_long");
    let id = signal["id"].as_i64().unwrap();

    // The same alert again: one signal, 200 with the first.
    let again = post_signal(&bank.server, &body);
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["signal"]["id"], id);
    assert_eq!(again.json()["duplicate"], true);
    assert_eq!(count(&bank, "SELECT count(*) FROM trading_signals"), 1);

    wait_settled(&bank, id);
    assert_eq!(intent_states(&bank, id), "placed,placed,placed");
    for user in &users {
        let client_id = format!("cb{id}u{}", user.id);
        assert_eq!(exchange.orders_with_id(&client_id), 1, "{client_id}");
        // Stop-loss and take-profit are always set.
        assert_eq!(exchange.orders_with_id(&format!("{client_id}-sl")), 1);
        assert_eq!(exchange.orders_with_id(&format!("{client_id}-tp")), 1);
    }
    // An account removed takes no more signals; removing it again finds none.
    let path = format!("{TRADING}/exchange-accounts");
    let removed = send(&bank.server, "DELETE", &path, &users[0], &json!({}));
    assert_eq!(removed.status, 200, "{}", removed.text());
    let again = send(&bank.server, "DELETE", &path, &users[0], &json!({}));
    assert_eq!(again.status, 404, "{}", again.text());
    let next = post_signal(
        &bank.server,
        &signal_body("FECHE LONG", "BTCUSDT", "100.00", now_ms()),
    );
    assert_eq!(next.json()["signal"]["intents"], 2, "{}", next.text());
    // Defaults: 30 % of 1000.00 at 5x is 1500.00 of notional, 15 units at 100.00; the stop
    // 2 % below, the profit 3 % above.
    assert_eq!(
        bank.sql(
            "SELECT string_agg(DISTINCT quantity || ':' || entry_price || ':' || stop_loss || ':' || take_profit, ',') \
             FROM trading_positions WHERE state = 'open'"
        ),
        "15000:10000:9800:10300"
    );
}

#[apply(engines)]
fn stale_signals_and_wrong_secrets_write_nothing(#[case] engine: &str) {
    let exchange = Exchange::start();
    let bank = start(engine, "trade_refusals", &exchange, &[]);
    subscriber(&bank, &exchange, "s", "1000.00");

    let stale = post_signal(
        &bank.server,
        &signal_body("SINAL SHORT FORTE", "ETHUSDT", "100.00", now_ms() - 31_000),
    );
    assert_eq!(stale.status, 422, "{}", stale.text());
    assert_eq!(stale.error_code(), "signal_stale");

    let mut wrong = signal_body("SINAL SHORT FORTE", "ETHUSDT", "100.00", now_ms());
    wrong["secret"] = json!("not-the-secret");
    let refused = post_signal(&bank.server, &wrong);
    assert_eq!(refused.status, 401, "{}", refused.text());
    assert_eq!(refused.error_code(), "bad_signal_secret");
    let mut without = signal_body("SINAL SHORT FORTE", "ETHUSDT", "100.00", now_ms());
    without.as_object_mut().unwrap().remove("secret");
    assert_eq!(post_signal(&bank.server, &without).status, 401);
    let unknown = post_signal(
        &bank.server,
        &signal_body("COMPRA", "ETHUSDT", "1", now_ms()),
    );
    assert_eq!(unknown.status, 422, "{}", unknown.text());

    assert_eq!(count(&bank, "SELECT count(*) FROM trading_signals"), 0);
    assert_eq!(count(&bank, "SELECT count(*) FROM order_intents"), 0);
    assert!(exchange.orders().is_empty());
}

#[apply(engines)]
fn settings_keep_their_bounds(#[case] engine: &str) {
    let exchange = Exchange::start();
    let bank = start(engine, "trade_settings", &exchange, &[]);
    let user = bank.user("set", "US");
    let path = format!("{TRADING}/settings");
    let read = send(&bank.server, "GET", &path, &user, &json!({}));
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(read.json()["settings"]["leverage"], 5);
    assert_eq!(read.json()["settings"]["size_percent"], 30);
    for wrong in [
        json!({ "leverage": 11 }),
        json!({ "leverage": 0 }),
        json!({ "stop_loss_multiplier": 1 }),
        json!({ "take_profit_multiplier": 7 }),
        json!({ "size_percent": 9 }),
        json!({ "size_percent": 51 }),
    ] {
        let answer = send(&bank.server, "PUT", &path, &user, &wrong);
        assert_eq!(answer.status, 422, "{wrong}: {}", answer.text());
        assert_eq!(answer.error_code(), "setting_out_of_bounds");
    }
    let changed = send(
        &bank.server,
        "PUT",
        &path,
        &user,
        &json!({ "leverage": 10 }),
    );
    assert_eq!(changed.status, 200, "{}", changed.text());
    assert_eq!(changed.json()["settings"]["leverage"], 10);
    // The database holds the bounds too.
    let direct = bank.try_sql(&format!(
        "UPDATE trading_settings SET leverage = 11 WHERE user_id = {}",
        user.id
    ));
    assert!(direct.is_err(), "{direct:?}");
}

#[apply(engines)]
fn a_lost_answer_places_exactly_one_order(#[case] engine: &str) {
    let exchange = Exchange::start();
    let bank = start(engine, "trade_lost", &exchange, &[]);
    let user = subscriber(&bank, &exchange, "lost", "1000.00");
    // The first placement answers 503 (nothing placed); the next is carried out but its
    // answer lost.
    exchange.faults(json!({ "lose_answer": 1, "fail_5xx": 1 }));
    let id = open_long(&bank, "SOLUSDT");
    let client_id = format!("cb{id}u{}", user.id);
    assert_eq!(exchange.orders_with_id(&client_id), 1);
    assert_eq!(exchange.orders_with_id(&format!("{client_id}-sl")), 1);
    assert_eq!(exchange.orders_with_id(&format!("{client_id}-tp")), 1);
    // The 503, the lost one, then the stop-loss and take-profit: the retry after the lost
    // answer asked for the order and never sent the entry again.
    assert_eq!(exchange.place_attempts(), 4);
    assert!(
        count(
            &bank,
            &format!("SELECT attempts FROM order_intents WHERE signal_id = {id}")
        ) >= 3
    );
    assert_eq!(
        count(
            &bank,
            "SELECT count(*) FROM trading_positions WHERE state = 'open'"
        ),
        1
    );
}

#[apply(engines)]
fn an_expired_intent_never_reaches_the_exchange(#[case] engine: &str) {
    let exchange = Exchange::start();
    // This server takes signals but executes nothing.
    let bank = start(
        engine,
        "trade_expired",
        &exchange,
        &[
            "--trading-poll-interval",
            "0",
            "--order-intent-expiry",
            "1000",
        ],
    );
    subscriber(&bank, &exchange, "late", "1000.00");
    let taken = post_signal(
        &bank.server,
        &signal_body("SINAL LONG FORTE", "XRPUSDT", "100.00", now_ms()),
    );
    assert_eq!(taken.status, 202, "{}", taken.text());
    let id = taken.json()["signal"]["id"].as_i64().unwrap();
    wait_for(
        "the intent to pass its expiry",
        Duration::from_secs(10),
        || {
            (count(
                &bank,
                "SELECT count(*) FROM order_intents WHERE created_at < now() - interval '1 second'",
            ) == 1)
                .then_some(())
        },
    );
    // A second process executes: it finds the intent too old.
    let env = cluster().env(&bank.db);
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let url = exchange.url();
    all.push(("SECRETS_KEY", SECRETS_KEY));
    all.push(("EXCHANGE_BASE_URL", &url));
    all.push(("ORDER_INTENT_EXPIRY", "1000"));
    let executor = Server::start_with(engine, &["--shards", "1"], &all);
    wait_settled(&bank, id);
    assert_eq!(intent_states(&bank, id), "expired");
    assert!(exchange.orders().is_empty(), "{:?}", exchange.orders());
    drop(executor);
}

#[apply(engines)]
fn limits_hold_at_execution(#[case] engine: &str) {
    let exchange = Exchange::start();
    let bank = start(engine, "trade_limits", &exchange, &[]);
    let user = subscriber(&bank, &exchange, "lim", "1000.00");
    // Three opening signals at once, on three symbols: two positions open, the third refused.
    let now = now_ms();
    let handles: Vec<_> = ["AAAUSDT", "BBBUSDT", "CCCUSDT"]
        .into_iter()
        .map(|symbol| {
            let addr = bank.server.addr;
            let body = signal_body("SINAL LONG FORTE", symbol, "100.00", now);
            std::thread::spawn(move || {
                Client::connect(addr).request(
                    "POST",
                    &format!("{TRADING}/webhooks/signal"),
                    &[],
                    body.to_string().as_bytes(),
                )
            })
        })
        .collect();
    let ids: Vec<i64> = handles
        .into_iter()
        .map(|h| {
            let answer = h.join().unwrap();
            assert_eq!(answer.status, 202, "{}", answer.text());
            answer.json()["signal"]["id"].as_i64().unwrap()
        })
        .collect();
    for id in &ids {
        wait_settled(&bank, *id);
    }
    assert_eq!(
        count(
            &bank,
            "SELECT count(*) FROM trading_positions WHERE state = 'open'"
        ),
        2
    );
    assert_eq!(
        bank.sql("SELECT detail FROM order_intents WHERE state = 'skipped'")
            .split(':')
            .next()
            .unwrap(),
        "max_open_positions"
    );
    let entries = exchange
        .orders()
        .iter()
        .filter(|o| o["type"] == "MARKET")
        .count();
    assert_eq!(entries, 2);

    // Close one: the symbol is then locked for the cooldown.
    let open_symbol = bank.sql("SELECT min(symbol) FROM trading_positions WHERE state = 'open'");
    let closing = post_signal(
        &bank.server,
        &signal_body("FECHE LONG", &open_symbol, "100.00", now_ms()),
    );
    assert_eq!(closing.status, 202, "{}", closing.text());
    let close_id = closing.json()["signal"]["id"].as_i64().unwrap();
    wait_settled(&bank, close_id);
    assert_eq!(intent_states(&bank, close_id), "closed");
    assert_eq!(
        bank.sql(&format!(
            "SELECT state || ':' || profit FROM trading_positions WHERE symbol = '{open_symbol}'"
        )),
        "closed:0"
    );
    let reopen = post_signal(
        &bank.server,
        &signal_body("SINAL LONG FORTE", &open_symbol, "100.00", now_ms() + 1),
    );
    assert_eq!(reopen.status, 202, "{}", reopen.text());
    let reopen_id = reopen.json()["signal"]["id"].as_i64().unwrap();
    wait_settled(&bank, reopen_id);
    let detail = bank.sql(&format!(
        "SELECT detail FROM order_intents WHERE signal_id = {reopen_id} AND user_id = {}",
        user.id
    ));
    assert!(detail.starts_with("symbol_cooldown"), "{detail}");
}

#[apply(engines)]
fn no_trading_while_blocked_by_debt(#[case] engine: &str) {
    let exchange = Exchange::start();
    let mut bank = start(engine, "trade_debt", &exchange, &[]);
    let user = subscriber(&bank, &exchange, "owes", "1000.00");
    // A debt written straight into the ledger: the check at the end would flag it.
    bank.check_on_drop = false;
    bank.sql(&format!(
        "INSERT INTO ledger_accounts (user_id, kind, currency, balance) VALUES ({}, 'debt', 'USD', 500) \
         ON CONFLICT (user_id, kind, currency) DO UPDATE SET balance = 500",
        user.id
    ));
    let taken = post_signal(
        &bank.server,
        &signal_body("SINAL SHORT FORTE", "DOTUSDT", "100.00", now_ms()),
    );
    assert_eq!(taken.status, 202, "{}", taken.text());
    let id = taken.json()["signal"]["id"].as_i64().unwrap();
    wait_settled(&bank, id);
    let detail = bank.sql(&format!(
        "SELECT state || ' ' || detail FROM order_intents WHERE signal_id = {id}"
    ));
    assert!(detail.starts_with("skipped blocked_by_debt"), "{detail}");
    assert!(exchange.orders().is_empty());
}

/// One signal to many subscribers at 20 ms of simulated exchange latency: every intent is
/// durable when the 202 comes, and every order is placed, one each. The figures are printed
/// (a debug build on a shared host: the bench measures the release build).
#[apply(engines)]
fn a_signal_fans_out_to_many_subscribers(#[case] engine: &str) {
    const SUBSCRIBERS: i64 = 300;
    let exchange = Exchange::start();
    let bank = start(engine, "trade_many", &exchange, &[]);
    // Every subscriber shares one simulator account (its orders differ by client id), written
    // straight into the database: registering each through the API would time Argon2.
    let (key, secret) = ("many-key", "many-secret");
    exchange.account(key, secret, "100000000.00");
    let sealed = coinbit::auth::secrets::SecretsKey::parse(SECRETS_KEY)
        .unwrap()
        .seal(key, secret.as_bytes());
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    bank.sql(&format!(
        "WITH u AS (INSERT INTO users (name, email) \
           SELECT 'many' || i, 'many' || i || '@coinbit.test' FROM generate_series(1, {SUBSCRIBERS}) i \
           RETURNING id) \
         INSERT INTO exchange_accounts (user_id, api_key, secret_ciphertext, secret_nonce, key_version) \
         SELECT id, '{key}', '\\x{}', '\\x{}', {} FROM u",
        hex(&sealed.ciphertext),
        hex(&sealed.nonce),
        sealed.key_version
    ));
    exchange.faults(json!({ "latency_ms": 20 }));
    let started = std::time::Instant::now();
    let taken = post_signal(
        &bank.server,
        &signal_body("SINAL LONG FORTE", "ADAUSDT", "1.00", now_ms()),
    );
    let answered = started.elapsed();
    assert_eq!(taken.status, 202, "{}", taken.text());
    assert_eq!(taken.json()["signal"]["intents"], SUBSCRIBERS);
    let id = taken.json()["signal"]["id"].as_i64().unwrap();
    assert_eq!(
        count(
            &bank,
            &format!("SELECT count(*) FROM order_intents WHERE signal_id = {id}")
        ),
        SUBSCRIBERS
    );
    wait_settled(&bank, id);
    let placed = started.elapsed();
    assert_eq!(
        count(
            &bank,
            &format!(
                "SELECT count(*) FROM order_intents WHERE signal_id = {id} AND state = 'placed'"
            )
        ),
        SUBSCRIBERS
    );
    let entries = exchange
        .orders()
        .iter()
        .filter(|o| o["type"] == "MARKET")
        .count() as i64;
    assert_eq!(entries, SUBSCRIBERS);
    eprintln!(
        "fan-out {engine}: {SUBSCRIBERS} subscribers, 202 in {} ms, every order placed in {} ms; \
         attempts (max, retried intents): {}",
        answered.as_millis(),
        placed.as_millis(),
        bank.sql(&format!(
            "SELECT max(attempts) || ', ' || count(*) FILTER (WHERE attempts > 1) \
             FROM order_intents WHERE signal_id = {id}"
        ))
    );
}

#[apply(engines)]
fn a_timed_out_order_is_asked_for_then_placed_once(#[case] engine: &str) {
    let exchange = Exchange::start();
    let bank = start(engine, "trade_timeout", &exchange, &[]);
    let user = subscriber(&bank, &exchange, "slow", "1000.00");
    // The first placement is held past the server's 1 s timeout and never carried out.
    exchange.faults(json!({ "timeouts": 1, "hold_ms": 3000 }));
    let id = open(&bank, "SINAL SHORT FORTE", "LTCUSDT");
    let client_id = format!("cb{id}u{}", user.id);
    assert_eq!(exchange.orders_with_id(&client_id), 1);
    // The timed-out one, then (the exchange having none) the entry, its stop and its profit.
    assert_eq!(exchange.place_attempts(), 4);
}

/// `path` as `user`, `GET` with an empty body.
fn get(bank: &Bank, user: &User, path: &str) -> Response {
    send(&bank.server, "GET", path, user, &json!({}))
}

/// Opens a long on `symbol` at 100.00 for the subscribers; the signal's id.
fn open_long(bank: &Bank, symbol: &str) -> i64 {
    open(bank, "SINAL LONG FORTE", symbol)
}

/// Sends the opening signal `kind` on `symbol` at 100.00 and waits until every intent of it is
/// placed; the signal's id.
fn open(bank: &Bank, kind: &str, symbol: &str) -> i64 {
    let taken = post_signal(&bank.server, &signal_body(kind, symbol, "100.00", now_ms()));
    assert_eq!(taken.status, 202, "{}", taken.text());
    let id = taken.json()["signal"]["id"].as_i64().unwrap();
    wait_settled(bank, id);
    assert_eq!(intent_states(bank, id), "placed");
    id
}

/// The user's one position on `symbol`, as the API lists it (waiting for the list to show it).
fn position_on(bank: &Bank, user: &User, symbol: &str) -> Value {
    wait_for("the position in the list", Duration::from_secs(30), || {
        let list = get(bank, user, &format!("{TRADING}/positions"));
        assert_eq!(list.status, 200, "{}", list.text());
        list.json()["positions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["symbol"] == symbol && p["state"] == "open")
            .cloned()
    })
}

/// `POST positions/{id}/close` as `user`.
fn close(bank: &Bank, user: &User, id: i64) -> Response {
    let path = format!("{TRADING}/positions/{id}/close");
    send(&bank.server, "POST", &path, user, &json!({}))
}

/// The position as its owner reads it, once `state` is `closed`.
fn wait_closed(bank: &Bank, user: &User, id: i64) -> Value {
    wait_for("the position to close", Duration::from_secs(60), || {
        let answer = get(bank, user, &format!("{TRADING}/positions/{id}"));
        assert_eq!(answer.status, 200, "{}", answer.text());
        let position = answer.json()["position"].clone();
        (position["state"] == "closed").then_some(position)
    })
}

#[apply(engines)]
fn a_profitable_close_is_charged_once_and_a_loss_never(#[case] engine: &str) {
    let exchange = Exchange::start();
    // No sweep for closes the exchange made: the take-profit below fires, and this test is
    // about the close order that then comes to nothing.
    let bank = start(
        engine,
        "trade_close",
        &exchange,
        &["--trading-reconcile-interval", "0"],
    );
    let user = subscriber(&bank, &exchange, "closer", "1000.00");
    let other = bank.user("other", "US");
    bank.fund(&user, 10_000);
    open_long(&bank, "BTCUSDT");
    let position = position_on(&bank, &user, "BTCUSDT");
    let id = position["id"].as_i64().unwrap();
    assert_eq!(position["entry_price"], 10_000, "{position}");
    assert_eq!(position["close_intent"], Value::Null, "{position}");

    // Another user's position is no one else's business: 404 to read and to close.
    let path = format!("{TRADING}/positions/{id}");
    assert_eq!(get(&bank, &other, &path).status, 404);
    let theirs = close(&bank, &other, id);
    assert_eq!(theirs.status, 404, "{}", theirs.text());
    let missing = close(&bank, &user, id + 1000);
    assert_eq!(missing.status, 404, "{}", missing.text());
    let others = get(&bank, &other, &format!("{TRADING}/positions"));
    assert_eq!(others.json()["positions"], json!([]), "{}", others.text());

    // Up 2 %, inside the stop (98.00) and the take-profit (103.00): 15 units gain 30.00.
    exchange.price("BTCUSDT", "102.00");
    let closing = close(&bank, &user, id);
    assert_eq!(closing.status, 202, "{}", closing.text());
    let intent = closing.json()["close_intent"].clone();
    assert_eq!(intent["state"], "pending", "{intent}");
    // Closing already: 409 until it is done, and 409 once it is. A fast host's executor can
    // finish the close (its poll is 50 ms) before this second request takes the row.
    let again = close(&bank, &user, id);
    assert_eq!(again.status, 409, "{}", again.text());
    assert!(
        ["position_closing", "position_closed"].contains(&again.error_code().as_str()),
        "{}",
        again.text()
    );

    let closed = wait_closed(&bank, &user, id);
    assert_eq!(closed["profit"], 3_000, "{closed}");
    assert_eq!(closed["exit_price"], 10_200, "{closed}");
    assert_eq!(closed["close_intent"]["state"], "closed", "{closed}");
    let after = close(&bank, &user, id);
    assert_eq!(after.status, 409, "{}", after.text());
    assert_eq!(after.error_code(), "position_closed");
    // The close order went out once, under the intent's client order id.
    let client_id = intent["client_order_id"].as_str().unwrap();
    assert_eq!(
        client_id,
        format!("cb{}u{}", intent["signal_id"], user.id),
        "{intent}"
    );
    assert_eq!(exchange.orders_with_id(client_id), 1);
    // 20 % of 30.00 (the prepaid plan), from the real balance: one group.
    assert_eq!(commission_transfers(&bank, id), "1:1:600");
    assert_eq!(
        closed["commission"],
        json!({ "amount": 600, "currency": "USD" })
    );
    bank.assert_balanced();

    // A loss, closed by a signal: no commission.
    exchange.price("ETHUSDT", "100.00");
    open_long(&bank, "ETHUSDT");
    let losing = position_on(&bank, &user, "ETHUSDT")["id"].as_i64().unwrap();
    exchange.price("ETHUSDT", "99.00");
    let signal = post_signal(
        &bank.server,
        &signal_body("FECHE LONG", "ETHUSDT", "99.00", now_ms()),
    );
    assert_eq!(signal.status, 202, "{}", signal.text());
    let lost = wait_closed(&bank, &user, losing);
    // 1.00 lost a unit (the size follows the balance the first close grew).
    let quantity = lost["quantity"].as_i64().unwrap();
    assert_eq!(lost["profit"], -(quantity / 10), "{lost}");
    assert_eq!(lost["commission"], Value::Null, "{lost}");
    assert_eq!(commission_transfers(&bank, losing), "0:0:0");
    // Newest first.
    let list = get(&bank, &user, &format!("{TRADING}/positions?limit=1"));
    assert_eq!(list.json()["positions"][0]["id"], losing, "{}", list.text());
    assert_eq!(list.json()["next_cursor"], losing, "{}", list.text());
    let next = get(
        &bank,
        &user,
        &format!("{TRADING}/positions?limit=1&cursor={losing}"),
    );
    assert_eq!(next.json()["positions"][0]["id"], id, "{}", next.text());

    // A close that comes to nothing frees its position: the take-profit (103.00) closed it on
    // the exchange, so the close order is refused and the position may be closed again.
    exchange.price("XRPUSDT", "100.00");
    open_long(&bank, "XRPUSDT");
    let gone = position_on(&bank, &user, "XRPUSDT")["id"].as_i64().unwrap();
    exchange.price("XRPUSDT", "104.00");
    let refused = close(&bank, &user, gone);
    assert_eq!(refused.status, 202, "{}", refused.text());
    let intent = refused.json()["close_intent"]["id"].as_i64().unwrap();
    wait_for(
        "the close to come to nothing",
        Duration::from_secs(30),
        || {
            (bank.sql(&format!(
                "SELECT state FROM order_intents WHERE id = {intent}"
            )) == "skipped")
                .then_some(())
        },
    );
    assert_eq!(
        bank.sql(&format!(
            "SELECT state || ':' || coalesce(close_intent::text, 'free') FROM trading_positions \
             WHERE id = {gone}"
        )),
        "open:free"
    );
    let again = close(&bank, &user, gone);
    assert_eq!(again.status, 202, "{}", again.text());
    assert_eq!(commission_transfers(&bank, gone), "0:0:0");
    bank.assert_balanced();
}

/// loadgen's `builtin:trading` against the real server and simulator: each virtual user logs
/// in and links an exchange account (a key the simulator opens on first use), every call of the
/// mix gets the status it expects, every signal loadgen was answered 202 for is in the database
/// with one intent per virtual user, every intent settles, each one placed or closed has its
/// one order on the simulator, no user holds more than 2 open positions, and the ledger check
/// passes.
#[apply(engines)]
fn loadgen_trading_mix_fans_its_signals_out_to_its_users(#[case] engine: &str) {
    const USERS: i64 = 4;
    let exchange = Exchange::start_open_to_any_key("loadgen-exchange-secret", "1000.00");
    let bank = start(engine, "trade_loadgen", &exchange, &[]);
    let secret = format!("X-Signal-Secret: {SIGNAL_SECRET}");
    let summary = LoadgenSummary::run(
        "builtin:trading",
        USERS as u64,
        &["-H", &secret],
        &bank.server,
    );
    let ok = |name| summary.ok(name);
    for name in ["balances", "positions", "change_leverage", "signal"] {
        assert!(ok(name) > 0, "{name}: {}", summary.endpoint(name));
    }
    let linked = count(
        &bank,
        "SELECT count(*) FROM exchange_accounts a JOIN users u ON u.id = a.user_id \
         WHERE a.deleted_at IS NULL AND u.email LIKE 'loadgen-%'",
    );
    assert_eq!(linked, USERS);
    // A signal still unanswered when the run ended may have been taken: one at most.
    let signals = count(&bank, "SELECT count(*) FROM trading_signals");
    assert!(
        (ok("signal")..=ok("signal") + 1).contains(&signals),
        "{signals} signals for {} answered",
        ok("signal")
    );
    assert_eq!(
        count(&bank, "SELECT count(*) FROM order_intents"),
        signals * USERS
    );
    wait_for("every intent to settle", Duration::from_secs(60), || {
        (count(
            &bank,
            "SELECT count(*) FROM order_intents WHERE state IN ('pending', 'placing')",
        ) == 0)
            .then_some(())
    });
    let reached = count(
        &bank,
        "SELECT count(*) FROM order_intents WHERE state IN ('placed', 'closed')",
    );
    assert!(reached > 0, "{}", intent_states_all(&bank));
    let orders = exchange.orders();
    let entries = orders
        .iter()
        .filter(|o| o["type"] == "MARKET" && o["clientOrderId"].as_str().unwrap().starts_with("cb"))
        .count() as i64;
    assert_eq!(entries, reached, "{}", intent_states_all(&bank));
    let most_open = count(
        &bank,
        "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM trading_positions \
         WHERE state IN ('opening', 'open') GROUP BY user_id) p",
    );
    assert!(most_open <= 2, "{most_open}");
    bank.assert_balanced();
}

/// Every intent's state, counted: for a failure's message.
fn intent_states_all(bank: &Bank) -> String {
    bank.sql(
        "SELECT string_agg(state || ':' || n, ',') FROM \
              (SELECT state, count(*) AS n FROM order_intents GROUP BY state) s",
    )
}

/// The position as its owner reads it, once closed, with how it closed.
fn closed_by(bank: &Bank, user: &User, id: i64, by: &str) -> Value {
    let closed = wait_closed(bank, user, id);
    assert_eq!(closed["closed_by"], by, "{closed}");
    closed
}

#[apply(engines)]
fn closes_the_exchange_made_are_recorded_at_their_fill_and_charged_once(#[case] engine: &str) {
    let exchange = Exchange::start();
    let bank = start(
        engine,
        "trade_reconcile",
        &exchange,
        &["--trading-reconcile-interval", "200"],
    );
    let user = subscriber(&bank, &exchange, "swept", "1000.00");
    bank.fund(&user, 10_000);
    // Two positions: the most a user may hold.
    open_long(&bank, "XRPUSDT");
    open_long(&bank, "ETHUSDT");
    let won = position_on(&bank, &user, "XRPUSDT")["id"].as_i64().unwrap();
    let lost = position_on(&bank, &user, "ETHUSDT")["id"].as_i64().unwrap();

    // The take-profit (103.00) fires at 104.00, the stop-loss (98.00) at 97.00, on the
    // exchange alone: each is recorded at its fill, the profit charged once, the loss not.
    exchange.price("XRPUSDT", "104.00");
    exchange.price("ETHUSDT", "97.00");
    let profit = closed_by(&bank, &user, won, "take_profit");
    assert_eq!(profit["exit_price"], 10_400, "{profit}");
    let quantity = profit["quantity"].as_i64().unwrap();
    assert_eq!(profit["profit"], 400 * quantity / 1000, "{profit}");
    // 20 % (the prepaid plan), half up to the cent.
    let commission = (2 * (400 * quantity / 1000) + 5) / 10;
    assert_eq!(
        commission_transfers(&bank, won),
        format!("1:1:{commission}")
    );
    let loss = closed_by(&bank, &user, lost, "stop_loss");
    assert_eq!(loss["exit_price"], 9_700, "{loss}");
    let quantity = loss["quantity"].as_i64().unwrap();
    assert_eq!(loss["profit"], -300 * quantity / 1000, "{loss}");
    assert_eq!(commission_transfers(&bank, lost), "0:0:0");
    // Closed is closed: the user's own close answers 409, and no second charge comes.
    let after = close(&bank, &user, won);
    assert_eq!(after.status, 409, "{}", after.text());
    assert_eq!(after.error_code(), "position_closed");

    // Both places are free again: two more open (the limit would refuse a third).
    open_long(&bank, "SOLUSDT");
    open_long(&bank, "BNBUSDT");
    let by_hand = position_on(&bank, &user, "SOLUSDT")["id"].as_i64().unwrap();
    let held = position_on(&bank, &user, "BNBUSDT")["id"].as_i64().unwrap();
    // Closed on the exchange by other means: no fill to price it, so no profit and no charge.
    exchange.close_by_hand("SOLUSDT");
    let unknown = closed_by(&bank, &user, by_hand, "exchange");
    assert_eq!(
        (&unknown["exit_price"], &unknown["profit"]),
        (&Value::Null, &Value::Null),
        "{unknown}"
    );
    assert_eq!(commission_transfers(&bank, by_hand), "0:0:0");
    // The one the exchange still holds stays open, though the sweep asks about it again.
    let asked = |id: i64| {
        bank.sql(&format!(
            "SELECT coalesce(extract(epoch FROM checked_at)::text, '') FROM trading_positions \
             WHERE id = {id}"
        ))
    };
    let first = wait_for("the sweep to ask", Duration::from_secs(30), || {
        Some(asked(held)).filter(|at| !at.is_empty())
    });
    wait_for("the sweep to ask again", Duration::from_secs(30), || {
        (asked(held) != first).then_some(())
    });
    assert_eq!(
        position_on(&bank, &user, "BNBUSDT")["closed_by"],
        Value::Null
    );
    assert_eq!(
        count(
            &bank,
            &format!("SELECT count(*) FROM trading_positions WHERE id = {held} AND state = 'open'")
        ),
        1
    );
    bank.assert_balanced();
}

#[apply(engines)]
fn a_brl_commission_waits_for_a_recorded_rate(#[case] engine: &str) {
    let exchange = Exchange::start();
    let bank = start(engine, "trade_brl", &exchange, &[]);
    let user = subscriber_in(&bank, &exchange, "real", "1000.00", "BR");
    open_long(&bank, "SOLUSDT");
    let id = position_on(&bank, &user, "SOLUSDT")["id"].as_i64().unwrap();
    exchange.price("SOLUSDT", "102.00");
    let closing = close(&bank, &user, id);
    assert_eq!(closing.status, 202, "{}", closing.text());
    // No rate recorded yet: the charge waits, marked on the position.
    let closed = wait_closed(&bank, &user, id);
    assert_eq!(closed["commission_due"], true, "{closed}");
    assert_eq!(commission_transfers(&bank, id), "0:0:0");

    let rates = format!("{TRADING}/fx-rates");
    let record = |who: &User, rate: &str| {
        send(
            &bank.server,
            "POST",
            &rates,
            who,
            &json!({ "currency": "BRL", "rate": rate }),
        )
    };
    let refused = record(&user, "5.5");
    assert_eq!(refused.status, 403, "{}", refused.text());
    for wrong in [
        json!({ "currency": "BRL", "rate": 5.5 }),
        json!({ "currency": "USD", "rate": "1" }),
        json!({ "currency": "BRL", "rate": "5.5", "day": "2026-02-30" }),
    ] {
        let answer = send(&bank.server, "POST", &rates, &bank.admin, &wrong);
        assert_eq!(answer.status, 422, "{wrong}: {}", answer.text());
    }
    // The first rate charges what waited: 20 % of US$30.00 at 5.5 is R$33.00, all debt.
    let recorded = record(&bank.admin, "5.5");
    assert_eq!(recorded.status, 200, "{}", recorded.text());
    assert_eq!(recorded.json()["deferred_commissions_charged"], 1);
    assert_eq!(recorded.json()["fx_rate"]["rate"], "5.500000");
    assert_eq!(commission_transfers(&bank, id), "1:1:3300");
    assert_eq!(
        bank.sql(&format!(
            "SELECT currency || ':' || commission || ':' || fx_rate || ':' || to_debt \
             FROM commission_charges WHERE position_id = '{id}'"
        )),
        "BRL:3300:5500000:3300"
    );
    // Recording again charges nothing twice.
    let again = record(&bank.admin, "5.6");
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["deferred_commissions_charged"], 0);
    assert_eq!(commission_transfers(&bank, id), "1:1:3300");
    let read = wait_for("the charge to read", Duration::from_secs(30), || {
        let p = get(&bank, &user, &format!("{TRADING}/positions/{id}")).json()["position"].clone();
        (p["commission_due"] == false).then_some(p)
    });
    assert_eq!(
        read["commission"],
        json!({ "amount": 3300, "currency": "BRL" })
    );
    bank.assert_balanced();
}

#[apply(engines)]
fn kill_9_between_the_close_order_and_its_record_charges_once(#[case] engine: &str) {
    let exchange = Exchange::start();
    let mut bank = start(engine, "trade_kill", &exchange, &[]);
    let user = subscriber(&bank, &exchange, "crash", "1000.00");
    bank.fund(&user, 10_000);
    open_long(&bank, "DOTUSDT");
    let id = position_on(&bank, &user, "DOTUSDT")["id"].as_i64().unwrap();
    exchange.price("DOTUSDT", "102.00");
    // The close order is carried out, its answer lost: the retry (300 ms on) would record it;
    // the server is killed once the exchange holds the order.
    exchange.faults(json!({ "lose_answer": 1 }));
    let closing = close(&bank, &user, id);
    assert_eq!(closing.status, 202, "{}", closing.text());
    let client_id = closing.json()["close_intent"]["client_order_id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for(
        "the close order on the exchange",
        Duration::from_secs(30),
        || (exchange.orders_with_id(&client_id) == 1).then_some(()),
    );
    bank.server.signal(libc::SIGKILL);
    bank.server.wait_exit(Duration::from_secs(10));
    eprintln!(
        "{engine}: at the kill the position was {}",
        bank.sql(&format!(
            "SELECT state FROM trading_positions WHERE id = {id}"
        ))
    );

    // The same database, a new process: it asks the exchange for the order and records it.
    restart_server(&mut bank, engine, &exchange.url(), &[]);
    let closed = wait_closed(&bank, &user, id);
    assert_eq!(closed["profit"], 3_000, "{closed}");
    assert_eq!(exchange.orders_with_id(&client_id), 1);
    assert_eq!(commission_transfers(&bank, id), "1:1:600");
    assert_eq!(
        count(
            &bank,
            &format!("SELECT count(*) FROM commission_charges WHERE position_id = '{id}'")
        ),
        1
    );
    bank.assert_balanced();
}

#[apply(engines)]
fn operators_send_signals_and_read_their_intents(#[case] engine: &str) {
    let exchange = Exchange::start();
    let bank = start(engine, "trade_operator", &exchange, &[]);
    let users: Vec<User> = (0..2)
        .map(|i| subscriber(&bank, &exchange, &format!("op{i}"), "1000.00"))
        .collect();
    let execute = format!("{TRADING}/execute");
    let mut body = signal_body("SINAL SHORT FORTE", "LINKUSDT", "100.00", now_ms());
    body.as_object_mut().unwrap().remove("secret");
    // Not for users; the webhook's validation.
    let refused = send(&bank.server, "POST", &execute, &users[0], &body);
    assert_eq!(refused.status, 403, "{}", refused.text());
    let mut stale = body.clone();
    stale["time"] = json!(now_ms() - 31_000);
    let answer = send(&bank.server, "POST", &execute, &bank.admin, &stale);
    assert_eq!(answer.status, 422, "{}", answer.text());
    assert_eq!(answer.error_code(), "signal_stale");
    assert_eq!(count(&bank, "SELECT count(*) FROM trading_signals"), 0);

    let taken = send(&bank.server, "POST", &execute, &bank.admin, &body);
    assert_eq!(taken.status, 202, "{}", taken.text());
    let signal = taken.json()["signal"].clone();
    assert_eq!(signal["origin"], "operator", "{signal}");
    assert_eq!(signal["intents"], 2, "{signal}");
    let id = signal["id"].as_i64().unwrap();
    // The signal is read from a replica: its commit position makes the replica wait for it.
    let written_at = taken
        .header("X-Commit-LSN")
        .expect("X-Commit-LSN")
        .to_string();
    let read_back = |path: &str| bank.get(&bank.admin, path, Some(&written_at));
    wait_settled(&bank, id);

    let path = format!("{TRADING}/signals/{id}");
    assert_eq!(get(&bank, &users[0], &path).status, 403);
    let missing = read_back(&format!("{TRADING}/signals/{}", id + 1));
    assert_eq!(missing.status, 404, "{}", missing.text());
    let read = wait_for("the intents as placed", Duration::from_secs(30), || {
        let answer = read_back(&path);
        assert_eq!(answer.status, 200, "{}", answer.text());
        let body = answer.json();
        body["intents"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["state"] == "placed")
            .then_some(body)
    });
    assert_eq!(read["signal"]["kind"], "open_short", "{read}");
    let intents = read["intents"].as_array().unwrap();
    assert_eq!(intents.len(), 2, "{read}");
    for (intent, user) in intents.iter().zip(&users) {
        assert_eq!(intent["user_id"], user.id, "{read}");
        assert_eq!(intent["client_order_id"], format!("cb{id}u{}", user.id));
        let client_id = intent["client_order_id"].as_str().unwrap();
        assert_eq!(exchange.orders_with_id(client_id), 1);
    }
}

/// An order answered as a bare acknowledgement (`NEW`, nothing executed, no average price) is
/// priced from the order itself, asked for once: the open's entry is the fill, not the signal's
/// price, and the close's exit is the fill, not the entry, so the profit and its commission are
/// the real ones.
#[apply(engines)]
fn orders_answered_without_their_fill_are_priced_from_the_fill(#[case] engine: &str) {
    let exchange = Exchange::start();
    let bank = start(engine, "trade_ack", &exchange, &[]);
    let user = subscriber(&bank, &exchange, "acked", "1000.00");
    bank.fund(&user, 10_000);
    // The signal says 100.00; the exchange fills at 101.00 and answers only "NEW".
    exchange.price("BTCUSDT", "101.00");
    exchange.faults(json!({ "ack_only": 1 }));
    open_long(&bank, "BTCUSDT");
    let position = position_on(&bank, &user, "BTCUSDT");
    let id = position["id"].as_i64().unwrap();
    assert_eq!(position["entry_price"], 10_100, "{position}");
    let quantity = position["quantity"].as_i64().unwrap();
    assert!(quantity > 0, "{position}");

    // Up 1.50 a unit (below the take-profit, which the signal's 100.00 put at 103.00); the
    // close is answered "NEW" as well.
    exchange.price("BTCUSDT", "102.50");
    exchange.faults(json!({ "ack_only": 1 }));
    let closing = close(&bank, &user, id);
    assert_eq!(closing.status, 202, "{}", closing.text());
    let closed = wait_closed(&bank, &user, id);
    assert_eq!(closed["exit_price"], 10_250, "{closed}");
    let profit = 150 * quantity / 1000;
    assert!(profit > 0, "{closed}");
    assert_eq!(closed["profit"], profit, "{closed}");
    // 20 % (the prepaid plan), half up, charged once.
    let commission = (profit * 20 + 50) / 100;
    assert_eq!(
        closed["commission"],
        json!({ "amount": commission, "currency": "USD" })
    );
    assert_eq!(commission_transfers(&bank, id), format!("1:1:{commission}"));
    bank.assert_balanced();
}
