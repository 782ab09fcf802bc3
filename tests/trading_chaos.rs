//! A chaos run for trading, on both engines: signals fan out to many subscribers while the
//! server and the exchange simulator are killed with SIGKILL and restarted (the simulator
//! keeps its orders in a state file, as a real exchange would), and once every intent has
//! settled the invariants hold: at most one exchange order per (signal, user), never more
//! than 2 open positions per user, no order from an expired intent, exactly one commission
//! per profitable close and none on a loss, and a sound ledger.

mod common;

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use rstest::rstest;
use rstest_reuse::{self, apply};
use serde_json::json;

use common::exchange::Exchange;
use common::ledger::{Bank, User};
use common::pg::PgCluster;
use common::trading::{
    count, now_ms, post_signal, restart_server, signal_body, subscriber, trading_args, unsettled,
    wait_settled_within,
};
use common::{engines, wait_for};

const SUBSCRIBERS: i64 = 40;
/// Few exchange threads and some exchange latency: a fan-out lasts long enough to be killed
/// in the middle of.
const SERVER_EXTRA: [&str; 2] = ["--exchange-io-threads", "4"];
const EXCHANGE_LATENCY_MS: u64 = 40;
/// How old an intent may be and still be placed, after [`Kill::ServerPastExpiry`].
const SHORT_EXPIRY_MS: u64 = 3_000;
/// A fan-out after its kills, on a loaded host.
const SETTLE_LIMIT: Duration = Duration::from_secs(180);

fn cluster() -> &'static PgCluster {
    static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| PgCluster::start(1))
}

/// What is killed while a signal fans out.
#[derive(Debug, Clone, Copy)]
enum Kill {
    Neither,
    Server,
    Exchange,
    Both,
    /// The server, restarted with an intent expiry of [`SHORT_EXPIRY_MS`] once every intent
    /// of the signal is older: those not placed yet expire (unless an attempt before the kill
    /// reached the exchange, which the new process finds there), then again with the default.
    ServerPastExpiry,
}

impl Kill {
    fn server(self) -> bool {
        matches!(self, Kill::Server | Kill::Both | Kill::ServerPastExpiry)
    }

    fn exchange(self) -> bool {
        matches!(self, Kill::Exchange | Kill::Both)
    }
}

struct Chaos {
    engine: String,
    bank: Bank,
    exchange: Exchange,
}

impl Chaos {
    fn start(engine: &str) -> Chaos {
        let exchange = Exchange::start_persistent();
        let url = exchange.url();
        let mut args = trading_args(&url).to_vec();
        args.extend_from_slice(&SERVER_EXTRA);
        let bank = Bank::start(cluster(), engine, "trade_chaos", &args);
        let chaos = Chaos {
            engine: engine.to_string(),
            bank,
            exchange,
        };
        chaos.slow_exchange();
        chaos
    }

    fn slow_exchange(&self) {
        self.exchange
            .faults(json!({ "latency_ms": EXCHANGE_LATENCY_MS }));
    }

    /// Posts a signal; its id once the server took it.
    fn signal(&self, kind: &str, symbol: &str, price: &str) -> i64 {
        let taken = post_signal(
            &self.bank.server,
            &signal_body(kind, symbol, price, now_ms()),
        );
        assert_eq!(taken.status, 202, "{}", taken.text());
        taken.json()["signal"]["id"].as_i64().unwrap()
    }

    /// Posts a signal, kills `kill` with SIGKILL once a quarter of its intents have settled,
    /// restarts what it killed, and waits until every intent has settled.
    fn signal_through(&mut self, kill: Kill, kind: &str, symbol: &str, price: &str) -> i64 {
        let id = self.signal(kind, symbol, price);
        let intents = count(
            &self.bank,
            &format!("SELECT count(*) FROM order_intents WHERE signal_id = {id}"),
        );
        wait_for("a quarter of the fan-out", Duration::from_secs(120), || {
            (intents - unsettled(&self.bank, id) >= intents / 4).then_some(())
        });
        let at_kill = unsettled(&self.bank, id);
        if kill.server() {
            self.bank.server.signal(libc::SIGKILL);
            self.bank.server.wait_exit(Duration::from_secs(10));
        }
        if kill.exchange() {
            self.exchange.kill_9();
            self.exchange.restart();
            self.slow_exchange();
        }
        let short_expiry = SHORT_EXPIRY_MS.to_string();
        if let Kill::ServerPastExpiry = kill {
            wait_for(
                "the intents to pass the expiry",
                Duration::from_secs(60),
                || {
                    (count(
                        &self.bank,
                        &format!(
                            "SELECT count(*) FROM order_intents WHERE signal_id = {id} \
                         AND created_at > now() - interval '{SHORT_EXPIRY_MS} milliseconds'"
                        ),
                    ) == 0)
                        .then_some(())
                },
            );
            self.restart_server(&["--order-intent-expiry", &short_expiry]);
        } else if kill.server() {
            self.restart_server(&[]);
        }
        eprintln!(
            "{}: {kind} {symbol}: killed {kill:?} with {at_kill} of {intents} intents unsettled",
            self.engine
        );
        wait_settled_within(&self.bank, id, SETTLE_LIMIT);
        eprintln!(
            "{}: {kind} {symbol} settled: {}",
            self.engine,
            self.bank.sql(&format!(
                "SELECT string_agg(state || ' ' || n, ', ') FROM \
                 (SELECT state, count(*) n FROM order_intents WHERE signal_id = {id} \
                  GROUP BY state ORDER BY state) s"
            ))
        );
        if let Kill::ServerPastExpiry = kill {
            self.restart_server(&[]);
        }
        self.assert_at_most_two_open();
        id
    }

    /// A new server process (the one running is killed) with [`SERVER_EXTRA`] and `extra`.
    fn restart_server(&mut self, extra: &[&str]) {
        let mut args = SERVER_EXTRA.to_vec();
        args.extend_from_slice(extra);
        restart_server(&mut self.bank, &self.engine, &self.exchange.url(), &args);
    }

    /// No user holds more than 2 positions opening or open.
    fn assert_at_most_two_open(&self) {
        assert_eq!(
            self.bank.sql(
                "SELECT coalesce(string_agg(user_id || ':' || n, ','), '') FROM \
                 (SELECT user_id, count(*) n FROM trading_positions \
                  WHERE state IN ('opening', 'open') GROUP BY user_id HAVING count(*) > 2) x"
            ),
            "",
            "users with more than 2 open positions (user:count)"
        );
    }

    /// Every order on the simulator: one per (account, client order id), one entry order
    /// per (signal, user), and one for every intent the server recorded as placed or closed,
    /// none for an expired one.
    fn assert_one_order_per_signal_and_user(&self) {
        let orders = self.exchange.orders();
        let mut per_id: HashMap<(String, String), usize> = HashMap::new();
        for order in &orders {
            let key = (
                order["apiKey"].as_str().unwrap().to_string(),
                order["clientOrderId"].as_str().unwrap().to_string(),
            );
            *per_id.entry(key).or_default() += 1;
        }
        let repeated: Vec<_> = per_id.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            repeated.is_empty(),
            "client order ids used twice: {repeated:?}"
        );
        // An entry or a close is a MARKET order under the intent's own id ("cb{signal}u{user}");
        // its stop-loss and take-profit add "-sl" and "-tp".
        let mut market: HashMap<&str, usize> = HashMap::new();
        for order in orders.iter().filter(|o| o["type"] == "MARKET") {
            *market
                .entry(order["clientOrderId"].as_str().unwrap())
                .or_default() += 1;
        }
        let intents = self
            .bank
            .sql("SELECT string_agg(client_order_id || ' ' || state, ',') FROM order_intents");
        for intent in intents.split(',') {
            let (id, state) = intent.split_once(' ').unwrap();
            let on_exchange = market.get(id).copied().unwrap_or(0);
            match state {
                "placed" | "closed" => {
                    assert_eq!(
                        on_exchange, 1,
                        "intent {id} is {state}: its order on the exchange"
                    )
                }
                "expired" => {
                    let any = orders
                        .iter()
                        .filter(|o| intent_of(o["clientOrderId"].as_str().unwrap()) == id)
                        .count();
                    assert_eq!(
                        any, 0,
                        "intent {id} expired, yet the exchange has its order"
                    );
                }
                _ => assert!(
                    on_exchange <= 1,
                    "intent {id} is {state}: {on_exchange} orders"
                ),
            }
        }
    }

    /// Every closed position with a profit has one commission group, and a charge; one closed
    /// at a loss (or even) has none. Returns (profitable, losing) closed positions.
    fn assert_one_commission_per_profitable_close(&self) -> (i64, i64) {
        let commission_groups = "(SELECT count(DISTINCT group_id) FROM ledger_transfers \
             WHERE code IN ('commission', 'commission_debt') \
             AND metadata->>'position_id' = p.id::text)";
        let charges =
            "(SELECT count(*) FROM commission_charges c WHERE c.position_id = p.id::text)";
        let wrong = self.bank.sql(&format!(
            "SELECT coalesce(string_agg(p.id || ' profit ' || p.profit || ': ' || \
                 {commission_groups} || ' groups, ' || {charges} || ' charges', '; '), '') \
             FROM trading_positions p WHERE p.state = 'closed' AND ( \
                 (p.profit > 0 AND ({commission_groups} <> 1 OR {charges} <> 1)) \
                 OR (p.profit <= 0 AND ({commission_groups} <> 0 OR {charges} <> 0)))"
        ));
        assert_eq!(wrong, "", "closed positions charged wrongly");
        let closed = |condition: &str| {
            count(
                &self.bank,
                &format!(
                    "SELECT count(*) FROM trading_positions WHERE state = 'closed' AND {condition}"
                ),
            )
        };
        (closed("profit > 0"), closed("profit <= 0"))
    }
}

/// The intent's client order id an order was placed under (a stop-loss or take-profit's is
/// its entry's).
fn intent_of(client_order_id: &str) -> &str {
    client_order_id
        .strip_suffix("-sl")
        .or_else(|| client_order_id.strip_suffix("-tp"))
        .unwrap_or(client_order_id)
}

#[apply(engines)]
fn signals_survive_kills_of_the_server_and_the_exchange(#[case] engine: &str) {
    let mut chaos = Chaos::start(engine);
    let users: Vec<User> = (0..SUBSCRIBERS)
        .map(|i| subscriber(&chaos.bank, &chaos.exchange, &format!("c{i}"), "1000.00"))
        .collect();
    // Prepaid: a commission comes from the balance, not a debt that would stop the trading.
    for user in &users {
        let funded = chaos.bank.fund(user, 10_000);
        assert!(funded.status < 300, "{}", funded.text());
    }

    // Two positions each (one where the second expired), a third refused at the limit (no
    // exchange call: too quick to kill anything in the middle of).
    chaos.signal_through(Kill::Both, "SINAL LONG FORTE", "AAAUSDT", "100.00");
    chaos.signal_through(
        Kill::ServerPastExpiry,
        "SINAL LONG FORTE",
        "BBBUSDT",
        "100.00",
    );
    chaos.signal_through(Kill::Neither, "SINAL LONG FORTE", "CCCUSDT", "100.00");

    // Inside the stops (98.00) and take-profits (103.00): one up 2 %, one down 1 %.
    chaos.exchange.price("AAAUSDT", "102.00");
    chaos.exchange.price("BBBUSDT", "99.00");
    chaos.signal_through(Kill::Exchange, "FECHE LONG", "AAAUSDT", "102.00");
    chaos.signal_through(Kill::Server, "FECHE LONG", "BBBUSDT", "99.00");

    chaos.assert_at_most_two_open();
    chaos.assert_one_order_per_signal_and_user();
    let (profitable, losing) = chaos.assert_one_commission_per_profitable_close();
    eprintln!("{engine}: closed {profitable} at a profit, {losing} at a loss");
    assert!(
        profitable > 0 && losing > 0,
        "the run closed {profitable} positions at a profit and {losing} at a loss"
    );
    chaos.bank.assert_balanced();
}
