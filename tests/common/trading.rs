//! The trading API as the trading tests use it: a server whose exchange is the simulator,
//! subscribers with exchange accounts on it, signals, and reads of intents and commissions.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::exchange::Exchange;
use super::ledger::{unique, Bank, User, WEBHOOK_SECRET};
use super::{wait_for, Response, Server};

pub const TRADING: &str = "/api/enterprise/trading";
pub const SIGNAL_SECRET: &str = "tv-signal-secret-for-tests";
pub const SECRETS_KEY: &str = "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The arguments of a server with the signal secret, a secrets key and the simulator at
/// `url` as its exchange.
pub fn trading_args(url: &str) -> [&str; 8] {
    [
        "--signal-webhook-secret",
        SIGNAL_SECRET,
        "--secrets-key",
        SECRETS_KEY,
        "--exchange-base-url",
        url,
        "--exchange-timeout",
        "1000",
    ]
}

pub fn send(server: &Server, method: &str, path: &str, user: &User, body: &Value) -> Response {
    let bearer = user.bearer();
    server.connect().request(
        method,
        path,
        &[
            ("Authorization", bearer.as_str()),
            ("Content-Type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
}

/// A user with an exchange account on the simulator holding `balance` USDT.
pub fn subscriber(bank: &Bank, exchange: &Exchange, name: &str, balance: &str) -> User {
    subscriber_in(bank, exchange, name, balance, "US")
}

/// [`subscriber`] of `country` (BR: a BRL user).
pub fn subscriber_in(
    bank: &Bank,
    exchange: &Exchange,
    name: &str,
    balance: &str,
    country: &str,
) -> User {
    let user = bank.user(name, country);
    let key = unique(&format!("key_{name}"));
    let secret = unique("secret");
    exchange.account(&key, &secret, balance);
    let added = send(
        &bank.server,
        "POST",
        &format!("{TRADING}/exchange-accounts"),
        &user,
        &json!({ "api_key": key, "secret": secret }),
    );
    assert_eq!(added.status, 201, "{}", added.text());
    assert!(
        !added.text().contains(&secret),
        "the secret is never returned"
    );
    user
}

pub fn signal_body(kind: &str, symbol: &str, price: &str, time: i64) -> Value {
    json!({ "signal": kind, "symbol": symbol, "price": price, "time": time, "secret": SIGNAL_SECRET })
}

pub fn post_signal(server: &Server, body: &Value) -> Response {
    server.connect().request(
        "POST",
        &format!("{TRADING}/webhooks/signal"),
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

pub fn count(bank: &Bank, sql: &str) -> i64 {
    bank.sql(sql).parse().unwrap()
}

/// Waits until every intent of `signal_id` is done (not pending nor placing).
pub fn wait_settled(bank: &Bank, signal_id: i64) {
    wait_settled_within(bank, signal_id, Duration::from_secs(30));
}

/// [`wait_settled`] for up to `limit`.
pub fn wait_settled_within(bank: &Bank, signal_id: i64, limit: Duration) {
    wait_for("the intents to settle", limit, || {
        (unsettled(bank, signal_id) == 0).then_some(())
    });
}

/// How many intents of `signal_id` are still pending or placing.
pub fn unsettled(bank: &Bank, signal_id: i64) -> i64 {
    count(
        bank,
        &format!(
            "SELECT count(*) FROM order_intents WHERE signal_id = {signal_id} \
             AND state IN ('pending', 'placing')"
        ),
    )
}

pub fn intent_states(bank: &Bank, signal_id: i64) -> String {
    bank.sql(&format!(
        "SELECT string_agg(state, ',' ORDER BY user_id) FROM order_intents WHERE signal_id = {signal_id}"
    ))
}

/// The ledger's commission transfers of a position: (transfers, groups, their sum).
pub fn commission_transfers(bank: &Bank, position_id: i64) -> String {
    bank.sql(&format!(
        "SELECT count(*) || ':' || count(DISTINCT group_id) || ':' || coalesce(sum(amount), 0) \
         FROM ledger_transfers WHERE code IN ('commission', 'commission_debt') \
         AND metadata->>'position_id' = '{position_id}'"
    ))
}

/// Replaces the bank's server (killed or not) with a new process on the same database, with
/// the simulator at `exchange_url` as its exchange, and `extra`.
pub fn restart_server(bank: &mut Bank, engine: &str, exchange_url: &str, extra: &[&str]) {
    let mut env: Vec<(String, String)> = bank.cluster.env(&bank.db);
    env.push(("PAYMENT_WEBHOOK_SECRET".into(), WEBHOOK_SECRET.into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut args = vec!["--shards", "2", "--durable-jobs-poll-interval", "0"];
    args.extend_from_slice(&trading_args(exchange_url));
    args.extend_from_slice(extra);
    bank.server = Server::start_with(engine, &args, &env);
}
