//! The exchange simulator: the subset of Binance's USDT-M futures REST API the server uses,
//! signed as Binance signs ([`super::sign`]), with faults to order: latency, 5xx, timeouts,
//! rejected orders, an order placed whose answer is lost, and price moves (positions win and
//! lose; a stop-loss or take-profit the price crosses closes its position).
//!
//! It is a test and demo tool, not the server: a thread per connection and one lock.
//!
//! With a state file ([`Simulator::persistent`]) it keeps its accounts, orders, positions and
//! prices across a restart, as a real exchange does: after every change, before it answers,
//! the whole state is written to a temporary file renamed over the state file, so a `kill -9`
//! at any moment leaves either the state before the change or the state after it.
//!
//! Exchange routes (signed: `X-MBX-APIKEY`, `timestamp`, `signature`):
//! - `GET /fapi/v2/balance`, `GET /fapi/v2/positionRisk`
//! - `POST /fapi/v1/order` (`symbol`, `side`, `type` MARKET / STOP_MARKET / TAKE_PROFIT_MARKET,
//!   `quantity`, `newClientOrderId`, `stopPrice`, `closePosition`, `reduceOnly`); a client
//!   order id used before is refused (-4116), as Binance does
//! - `GET /fapi/v1/order?symbol=&origClientOrderId=` (-2013 when there is none)
//!
//! Admin routes (unsigned, JSON):
//! - `POST /admin/accounts` `{"api_key","secret","balance":"1000.00"}`
//! - `POST /admin/faults` `{"latency_ms", "fail_5xx", "timeouts", "reject", "lose_answer",
//!   "ack_only", "hold_ms"}`: the counts apply to the next order placements, one each
//! - `POST /admin/price` `{"symbol","price"}`
//! - `POST /admin/close-by-hand` `{"symbol"}`: every account's position on it closed at the
//!   price on the exchange itself, as by hand (no order to ask for; the protection canceled)
//! - `GET /admin/orders`: every order and how many placements were asked for

use std::collections::HashMap;
use std::io::{self, BufReader};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::fixed;
use super::sign::{self, API_KEY_HEADER, DEFAULT_RECV_WINDOW_MS};
use super::wire::{self, Message};

/// The price of a symbol nobody set: 100.00.
const DEFAULT_PRICE: i64 = 10_000;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added before every exchange answer.
    pub latency_ms: u64,
    /// The next this many placements answer 503 and place nothing.
    pub fail_5xx: u32,
    /// The next this many placements are held `hold_ms`, then dropped unanswered, placing
    /// nothing.
    pub timeouts: u32,
    /// The next this many placements are refused (-2019, margin is insufficient).
    pub reject: u32,
    /// The next this many placements are placed, then the connection is dropped unanswered.
    pub lose_answer: u32,
    /// The next this many placements are placed (a market order filled) and answered as an
    /// acknowledgement: status `NEW`, nothing executed, no average price; asking for the order
    /// then reports its fill.
    pub ack_only: u32,
    /// How long a timed-out placement is held (default 10 s).
    pub hold_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SimOrder {
    order_id: i64,
    api_key: String,
    client_order_id: String,
    symbol: String,
    side: String,
    kind: String,
    status: String,
    quantity: i64,
    price: i64,
    stop_price: i64,
}

impl SimOrder {
    fn json(&self) -> Value {
        json!({
            "orderId": self.order_id,
            "clientOrderId": self.client_order_id,
            "symbol": self.symbol,
            "side": self.side,
            "type": self.kind,
            "status": self.status,
            "origQty": fixed::fmt(self.quantity, 3),
            "executedQty": fixed::fmt(if self.status == "FILLED" { self.quantity } else { 0 }, 3),
            "avgPrice": fixed::fmt(self.price, 2),
            "stopPrice": fixed::fmt(self.stop_price, 2),
        })
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct SimPosition {
    /// Thousandths; negative: short.
    amount: i64,
    entry: i64,
}

#[derive(Serialize, Deserialize)]
struct Account {
    secret: Vec<u8>,
    /// Cents.
    balance: i64,
    positions: HashMap<String, SimPosition>,
}

impl Account {
    fn new(secret: Vec<u8>, balance: i64) -> Account {
        Account {
            secret,
            balance,
            positions: HashMap::new(),
        }
    }
}

#[derive(Default, Serialize, Deserialize)]
struct State {
    accounts: HashMap<String, Account>,
    prices: HashMap<String, i64>,
    orders: Vec<SimOrder>,
    /// Faults are a test's setting for the process at hand: a restart starts without any.
    #[serde(skip)]
    faults: Faults,
    place_attempts: u64,
    next_order_id: i64,
    /// Each account's orders (indices into `orders`), so that a placement, a look-up by
    /// client order id and a close read the account's few orders: a scan of every order, under
    /// the one lock, grew with every order placed (thousands of subscribers, bench/
    /// trading_fanout.sh). Rebuilt from `orders` when the state is read back.
    #[serde(skip)]
    by_account: HashMap<String, Vec<usize>>,
    /// Any key the simulator does not know opens an account with this secret and balance
    /// on its first call (`--any-account`: load tests whose users bring keys of their own).
    #[serde(skip)]
    any_account: Option<(Vec<u8>, i64)>,
}

impl State {
    /// Rebuilds `by_account` from `orders`.
    fn reindex(&mut self) {
        self.by_account.clear();
        for (index, order) in self.orders.iter().enumerate() {
            self.by_account
                .entry(order.api_key.clone())
                .or_default()
                .push(index);
        }
    }

    /// The indices of `api_key`'s orders, oldest first.
    fn indices_of(&self, api_key: &str) -> Vec<usize> {
        self.by_account.get(api_key).cloned().unwrap_or_default()
    }

    /// `api_key`'s order with `client_order_id`.
    fn order_of(&self, api_key: &str, client_order_id: &str) -> Option<&SimOrder> {
        self.by_account
            .get(api_key)?
            .iter()
            .map(|&index| &self.orders[index])
            .find(|o| o.client_order_id == client_order_id)
    }

    /// The price of `symbol` (`DEFAULT_PRICE` until one is set or walked to).
    fn price(&self, symbol: &str) -> i64 {
        self.prices.get(symbol).copied().unwrap_or(DEFAULT_PRICE)
    }

    fn push_order(&mut self, order: SimOrder) {
        self.by_account
            .entry(order.api_key.clone())
            .or_default()
            .push(self.orders.len());
        self.orders.push(order);
    }
}

/// The simulator's state, shared by its connection threads.
#[derive(Clone, Default)]
pub struct Simulator {
    state: Arc<Mutex<State>>,
    /// Where the state is kept across restarts, when it is.
    state_file: Option<Arc<PathBuf>>,
}

enum Outcome {
    Answer(u16, Value),
    /// Hold, then drop unanswered.
    Hold(Duration),
    /// Drop unanswered.
    Drop,
}

fn error(status: u16, code: i64, msg: &str) -> Outcome {
    Outcome::Answer(status, json!({ "code": code, "msg": msg }))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Simulator {
    pub fn new() -> Simulator {
        Simulator::default()
    }

    /// A simulator kept in `path`: the state found there (none if the file is missing), and
    /// every change written back before it is answered.
    pub fn persistent(path: &Path) -> io::Result<Simulator> {
        let mut state: State = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(e),
        };
        state.reindex();
        Ok(Simulator {
            state: Arc::new(Mutex::new(state)),
            state_file: Some(Arc::new(path.to_path_buf())),
        })
    }

    /// Writes `state` to the state file, if there is one: to a temporary file first, then
    /// renamed over it. A simulator that cannot keep its state stops, as a crashed exchange
    /// would, rather than answer what it would forget.
    fn save(&self, state: &State) {
        let Some(path) = &self.state_file else {
            return;
        };
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".tmp");
        let written = serde_json::to_vec(state)
            .map_err(io::Error::from)
            .and_then(|bytes| std::fs::write(&temporary, bytes))
            .and_then(|()| std::fs::rename(&temporary, path.as_path()));
        if let Err(e) = written {
            eprintln!("exchange-sim: cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
    }

    /// Whether an account with `api_key` exists.
    pub fn has_account(&self, api_key: &str) -> bool {
        self.state.lock().unwrap().accounts.contains_key(api_key)
    }

    /// Opens an account (or resets its balance) with `balance` cents.
    pub fn add_account(&self, api_key: &str, secret: &[u8], balance: i64) {
        let mut state = self.state.lock().unwrap();
        state
            .accounts
            .insert(api_key.to_string(), Account::new(secret.to_vec(), balance));
        self.save(&state);
    }

    /// Lets any key it does not know open an account with `secret` and `balance` cents on
    /// its first call.
    pub fn open_to_any_key(&self, secret: &[u8], balance: i64) {
        self.state.lock().unwrap().any_account = Some((secret.to_vec(), balance));
    }

    /// Moves every symbol's price (those priced and those held) by a random step of at most
    /// `basis_points` each `every`, on a thread of its own, for as long as the process runs: a
    /// market, so that positions win and lose and their stop-losses and take-profits fire.
    pub fn walk_prices(&self, basis_points: u32, every: Duration) {
        let sim = self.clone();
        let mut seed = now_ms() | 1;
        std::thread::spawn(move || loop {
            std::thread::sleep(every);
            let mut state = sim.state.lock().unwrap();
            let mut symbols: Vec<String> = state.prices.keys().cloned().collect();
            for account in state.accounts.values() {
                symbols.extend(account.positions.keys().cloned());
            }
            symbols.sort();
            symbols.dedup();
            for symbol in symbols {
                // xorshift64: a step in [-basis_points, +basis_points].
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let span = 2 * u64::from(basis_points) + 1;
                let step = (seed % span) as i64 - i64::from(basis_points);
                let price = state.price(&symbol);
                let moved = (price + price * step / 10_000).max(1);
                state.prices.insert(symbol.clone(), moved);
                trigger(&mut state, &symbol, moved);
            }
            sim.save(&state);
        });
    }

    pub fn set_faults(&self, faults: Faults) {
        self.state.lock().unwrap().faults = faults;
    }

    /// Serves `listener` until the process ends: a thread per connection.
    pub fn serve(self, listener: TcpListener) {
        for stream in listener.incoming().flatten() {
            let sim = self.clone();
            std::thread::spawn(move || sim.connection(stream));
        }
    }

    fn connection(&self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let Ok(read_half) = stream.try_clone() else {
            return;
        };
        let mut reader = BufReader::new(read_half);
        let mut stream = stream;
        while let Ok(Some(message)) = wire::read_message(&mut reader) {
            let keep_alive = message.keep_alive();
            let outcome = self.handle(&message);
            match outcome {
                Outcome::Answer(status, body) => {
                    if wire::write_response(&mut stream, status, &body.to_string()).is_err() {
                        return;
                    }
                }
                Outcome::Hold(time) => {
                    std::thread::sleep(time);
                    let _ = stream.shutdown(Shutdown::Both);
                    return;
                }
                Outcome::Drop => {
                    let _ = stream.shutdown(Shutdown::Both);
                    return;
                }
            }
            if !keep_alive {
                return;
            }
        }
    }

    fn handle(&self, message: &Message) -> Outcome {
        let mut parts = message.start.split(' ');
        let method = parts.next().unwrap_or("");
        let target = parts.next().unwrap_or("");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        if let Some(admin) = path.strip_prefix("/admin/") {
            return self.admin(method, admin, &message.body);
        }
        let latency = self.state.lock().unwrap().faults.latency_ms;
        if latency > 0 {
            std::thread::sleep(Duration::from_millis(latency));
        }
        // Binance signs the query string, then the body, as sent.
        let body = std::str::from_utf8(&message.body).unwrap_or("");
        let mut params = query.to_string();
        if !body.is_empty() {
            if !params.is_empty() {
                params.push('&');
            }
            params.push_str(body);
        }
        let mut state = self.state.lock().unwrap();
        let api_key = message.header(API_KEY_HEADER).unwrap_or("").to_string();
        if !api_key.is_empty() && !state.accounts.contains_key(&api_key) {
            if let Some((secret, balance)) = state.any_account.clone() {
                state
                    .accounts
                    .insert(api_key.clone(), Account::new(secret, balance));
            }
        }
        let Some(account) = state.accounts.get(&api_key) else {
            return error(
                401,
                -2015,
                "Invalid API-key, IP, or permissions for action.",
            );
        };
        let Some((signed, signature)) = params.rsplit_once("&signature=") else {
            return error(400, -1102, "Mandatory parameter 'signature' was not sent.");
        };
        let payload = if body.is_empty() {
            signed.to_string()
        } else {
            // The signature may sit at the end of the query or of the body.
            params.replacen(&format!("&signature={signature}"), "", 1)
        };
        if !sign::verify(&account.secret, payload.as_bytes(), signature) {
            return error(400, -1022, "Signature for this request is not valid.");
        }
        let timestamp = wire::param(&payload, "timestamp").and_then(|t| t.parse::<u64>().ok());
        let window = wire::param(&payload, "recvWindow")
            .and_then(|w| w.parse::<u64>().ok())
            .unwrap_or(DEFAULT_RECV_WINDOW_MS);
        match timestamp {
            Some(t) if t <= now_ms() + 1_000 && now_ms().saturating_sub(t) <= window => {}
            _ => {
                return error(
                    400,
                    -1021,
                    "Timestamp for this request is outside of the recvWindow.",
                )
            }
        }
        match (method, path) {
            ("GET", "/fapi/v2/balance") => {
                let account = &state.accounts[&api_key];
                Outcome::Answer(
                    200,
                    json!([{
                        "asset": "USDT",
                        "balance": fixed::fmt(account.balance, 2),
                        "availableBalance": fixed::fmt(account.balance, 2),
                    }]),
                )
            }
            ("GET", "/fapi/v2/positionRisk") => {
                let account = &state.accounts[&api_key];
                let list: Vec<Value> = account
                    .positions
                    .iter()
                    .filter(|(_, p)| p.amount != 0)
                    .map(|(symbol, p)| {
                        let mark = state.price(symbol);
                        json!({
                            "symbol": symbol,
                            "positionAmt": fixed::fmt(p.amount, 3),
                            "entryPrice": fixed::fmt(p.entry, 2),
                            "markPrice": fixed::fmt(mark, 2),
                            "unRealizedProfit": fixed::fmt(profit(p, mark), 2),
                        })
                    })
                    .collect();
                Outcome::Answer(200, Value::Array(list))
            }
            ("GET", "/fapi/v1/order") => {
                let wanted = wire::param(&payload, "origClientOrderId").unwrap_or("");
                match state.order_of(&api_key, wanted) {
                    Some(order) => Outcome::Answer(200, order.json()),
                    None => error(400, -2013, "Order does not exist."),
                }
            }
            ("POST", "/fapi/v1/order") => {
                let outcome = place(&mut state, &api_key, &payload);
                self.save(&state);
                outcome
            }
            _ => error(404, -1000, "Unknown route."),
        }
    }

    fn admin(&self, method: &str, path: &str, body: &[u8]) -> Outcome {
        let mut state = self.state.lock().unwrap();
        let bad = |e: String| error(400, -1, &e);
        match (method, path) {
            ("POST", "accounts") => {
                #[derive(Deserialize)]
                struct NewAccount {
                    api_key: String,
                    secret: String,
                    balance: String,
                }
                let form: NewAccount = match serde_json::from_slice(body) {
                    Ok(form) => form,
                    Err(e) => return bad(e.to_string()),
                };
                let Some(balance) = fixed::parse(&form.balance, 2) else {
                    return bad("balance: a decimal with at most 2 places".into());
                };
                drop(state);
                self.add_account(&form.api_key, form.secret.as_bytes(), balance);
                Outcome::Answer(200, json!({ "ok": true }))
            }
            ("POST", "faults") => match serde_json::from_slice::<Faults>(body) {
                Ok(faults) => {
                    state.faults = faults;
                    Outcome::Answer(200, json!({ "ok": true }))
                }
                Err(e) => bad(e.to_string()),
            },
            ("POST", "price") => {
                #[derive(Deserialize)]
                struct Move {
                    symbol: String,
                    price: String,
                }
                let form: Move = match serde_json::from_slice(body) {
                    Ok(form) => form,
                    Err(e) => return bad(e.to_string()),
                };
                let Some(price) = fixed::parse(&form.price, 2).filter(|p| *p > 0) else {
                    return bad("price: a positive decimal with at most 2 places".into());
                };
                state.prices.insert(form.symbol.clone(), price);
                trigger(&mut state, &form.symbol, price);
                self.save(&state);
                Outcome::Answer(200, json!({ "ok": true }))
            }
            ("POST", "close-by-hand") => {
                // Every account's position on the symbol closed at its price on the exchange
                // itself, not through the API (as by hand, or a liquidation): no order a
                // client could ask for, the protection canceled.
                #[derive(Deserialize)]
                struct ByHand {
                    symbol: String,
                }
                let form: ByHand = match serde_json::from_slice(body) {
                    Ok(form) => form,
                    Err(e) => return bad(e.to_string()),
                };
                let price = state.price(&form.symbol);
                let mut closed = Vec::new();
                for (api_key, account) in state.accounts.iter_mut() {
                    let held = account.positions.get(&form.symbol).map_or(0, |p| p.amount);
                    if held != 0 {
                        fill(account, &form.symbol, -held, price);
                        closed.push(api_key.clone());
                    }
                }
                for api_key in &closed {
                    cancel_protection(&mut state, api_key, &form.symbol);
                }
                self.save(&state);
                Outcome::Answer(200, json!({ "closed": closed.len() }))
            }
            ("GET", "orders") => {
                let orders: Vec<Value> = state
                    .orders
                    .iter()
                    .map(|o| {
                        let mut value = o.json();
                        value["apiKey"] = json!(o.api_key);
                        value
                    })
                    .collect();
                Outcome::Answer(
                    200,
                    json!({ "place_attempts": state.place_attempts, "orders": orders }),
                )
            }
            _ => error(404, -1000, "Unknown admin route."),
        }
    }
}

/// Unrealised profit in cents of `position` at `mark`.
fn profit(position: &SimPosition, mark: i64) -> i64 {
    (mark - position.entry) * position.amount / 1000
}

/// Fills `quantity` (signed thousandths) of `symbol` at `price` on the account: the balance
/// takes the realised profit of what it reduces.
fn fill(account: &mut Account, symbol: &str, quantity: i64, price: i64) {
    let position = account.positions.entry(symbol.to_string()).or_default();
    let before = position.amount;
    let after = before + quantity;
    if before == 0 || before.signum() == quantity.signum() {
        // Opening or adding: the entry is the size-weighted average.
        let total = before.abs() + quantity.abs();
        position.entry = (position.entry * before.abs() + price * quantity.abs()) / total.max(1);
    } else {
        let closed = quantity.abs().min(before.abs()) * before.signum();
        account.balance += (price - position.entry) * closed / 1000;
        if after.signum() == quantity.signum() && after != 0 {
            position.entry = price;
        }
    }
    position.amount = after;
}

fn place(state: &mut State, api_key: &str, params: &str) -> Outcome {
    state.place_attempts += 1;
    let faults = &mut state.faults;
    if faults.fail_5xx > 0 {
        faults.fail_5xx -= 1;
        return error(503, -1001, "Service Unavailable.");
    }
    if faults.timeouts > 0 {
        faults.timeouts -= 1;
        return Outcome::Hold(Duration::from_millis(faults.hold_ms.unwrap_or(10_000)));
    }
    if faults.reject > 0 {
        faults.reject -= 1;
        return error(400, -2019, "Margin is insufficient.");
    }
    let lose_answer = faults.lose_answer > 0;
    if lose_answer {
        faults.lose_answer -= 1;
    }
    let ack_only = faults.ack_only > 0;
    if ack_only {
        faults.ack_only -= 1;
    }
    let get = |name: &str| wire::param(params, name);
    let (Some(symbol), Some(side), Some(kind), Some(client_order_id)) = (
        get("symbol"),
        get("side"),
        get("type"),
        get("newClientOrderId"),
    ) else {
        return error(400, -1102, "A mandatory parameter was not sent.");
    };
    if !matches!(side, "BUY" | "SELL") {
        return error(400, -1117, "Invalid side.");
    }
    if state.order_of(api_key, client_order_id).is_some() {
        return error(400, -4116, "ClientOrderId is duplicated.");
    }
    let price = state.price(symbol);
    let account = state
        .accounts
        .get_mut(api_key)
        .expect("checked by the caller");
    let held = account.positions.get(symbol).map_or(0, |p| p.amount);
    let reduce_only = get("reduceOnly") == Some("true");
    let close_position = get("closePosition") == Some("true");
    let (quantity, stop_price, status) = match kind {
        "MARKET" => {
            let quantity = match get("quantity").and_then(|q| fixed::parse(q, 3)) {
                Some(q) if q > 0 => q,
                _ if reduce_only => held.abs(),
                _ => return error(400, -1102, "Mandatory parameter 'quantity' was not sent."),
            };
            let signed = if side == "BUY" { quantity } else { -quantity };
            if reduce_only {
                if held == 0 || held.signum() == signed.signum() {
                    return error(400, -2022, "ReduceOnly Order is rejected.");
                }
                let signed = signed.signum() * quantity.min(held.abs());
                fill(account, symbol, signed, price);
                if account.positions[symbol].amount == 0 {
                    cancel_protection(state, api_key, symbol);
                }
                (signed.abs(), 0, "FILLED")
            } else {
                fill(account, symbol, signed, price);
                (quantity, 0, "FILLED")
            }
        }
        "STOP_MARKET" | "TAKE_PROFIT_MARKET" if close_position => {
            let Some(stop) = get("stopPrice").and_then(|p| fixed::parse(p, 2)) else {
                return error(400, -1102, "Mandatory parameter 'stopPrice' was not sent.");
            };
            (0, stop, "NEW")
        }
        _ => return error(400, -1116, "Invalid orderType."),
    };
    state.next_order_id += 1;
    let order = SimOrder {
        order_id: state.next_order_id,
        api_key: api_key.to_string(),
        client_order_id: client_order_id.to_string(),
        symbol: symbol.to_string(),
        side: side.to_string(),
        kind: kind.to_string(),
        status: status.to_string(),
        quantity,
        price: if status == "FILLED" { price } else { 0 },
        stop_price,
    };
    let mut answer = order.json();
    state.push_order(order);
    if lose_answer {
        return Outcome::Drop;
    }
    if ack_only {
        answer["status"] = json!("NEW");
        answer["executedQty"] = json!("0.000");
        answer["avgPrice"] = json!("0.00");
    }
    Outcome::Answer(200, answer)
}

/// Cancels the stop-loss and take-profit orders of a closed position.
fn cancel_protection(state: &mut State, api_key: &str, symbol: &str) {
    for index in state.indices_of(api_key) {
        let order = &mut state.orders[index];
        if order.symbol == symbol && order.status == "NEW" {
            order.status = "CANCELED".into();
        }
    }
}

/// The price of `symbol` moved to `price`: a stop-loss or take-profit it crosses closes its
/// position at that price.
fn trigger(state: &mut State, symbol: &str, price: i64) {
    let mut fired = Vec::new();
    for (index, order) in state.orders.iter().enumerate() {
        if order.symbol != symbol || order.status != "NEW" {
            continue;
        }
        let Some(account) = state.accounts.get(&order.api_key) else {
            continue;
        };
        let held = account.positions.get(symbol).map_or(0, |p| p.amount);
        if held == 0 {
            continue;
        }
        // A long's protection sells: the stop below, the profit above; a short's the reverse.
        let below = price <= order.stop_price;
        let above = price >= order.stop_price;
        let crossed = match (held > 0, order.kind.as_str()) {
            (true, "STOP_MARKET") | (false, "TAKE_PROFIT_MARKET") => below,
            (true, _) | (false, _) => above,
        };
        if crossed {
            fired.push(index);
        }
    }
    for index in fired {
        let (api_key, order_symbol) = {
            let order = &state.orders[index];
            (order.api_key.clone(), order.symbol.clone())
        };
        let account = state.accounts.get_mut(&api_key).unwrap();
        let held = account.positions.get(&order_symbol).map_or(0, |p| p.amount);
        if held == 0 {
            continue;
        }
        fill(account, &order_symbol, -held, price);
        cancel_protection(state, &api_key, &order_symbol);
        let order = &mut state.orders[index];
        order.status = "FILLED".into();
        order.quantity = held.abs();
        order.price = price;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::binance::BinanceClient;
    use crate::exchange::{Credentials, ExchangeClient, ExchangeError, OrderRequest, Side};

    #[test]
    fn walking_prices_move_held_symbols_and_fire_their_protection() {
        let (sim, client, credentials) = started();
        client.place_order(&credentials, &order("walk")).unwrap();
        // Steps of up to 5 %: the stop (2 % under the entry) or the take-profit fires soon.
        sim.walk_prices(500, Duration::from_millis(5));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !client.positions(&credentials).unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "no protection fired");
            std::thread::sleep(Duration::from_millis(20));
        }
        let state = sim.state.lock().unwrap();
        assert_ne!(state.prices.get("BTCUSDT"), None);
        let fired = state
            .orders
            .iter()
            .filter(|o| o.client_order_id.starts_with("walk-") && o.status == "FILLED")
            .count();
        assert_eq!(fired, 1);
    }

    fn started() -> (Simulator, BinanceClient, Credentials) {
        let sim = Simulator::new();
        sim.add_account("key-1", b"secret-1", 100_000);
        serving(sim)
    }

    /// Serves `sim` on a free port; a client of it, with key-1's credentials.
    fn serving(sim: Simulator) -> (Simulator, BinanceClient, Credentials) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let serving = sim.clone();
        std::thread::spawn(move || serving.serve(listener));
        let client = BinanceClient::new(&url, Duration::from_secs(2)).unwrap();
        let credentials = Credentials {
            api_key: "key-1".into(),
            secret: b"secret-1".to_vec(),
        };
        (sim, client, credentials)
    }

    fn order(id: &str) -> OrderRequest {
        OrderRequest {
            client_order_id: id.into(),
            symbol: "BTCUSDT".into(),
            side: Side::Buy,
            quantity: 2_000,
            stop_loss: 9_000,
            take_profit: 13_000,
        }
    }

    fn entries(sim: &Simulator, id: &str) -> usize {
        let state = sim.state.lock().unwrap();
        state
            .orders
            .iter()
            .filter(|o| o.client_order_id == id)
            .count()
    }

    #[test]
    fn signed_calls_place_protect_and_close() {
        let (sim, client, credentials) = started();
        assert_eq!(client.balance(&credentials).unwrap().balance, 100_000);
        let wrong = Credentials {
            secret: b"other".to_vec(),
            ..credentials.clone()
        };
        assert!(matches!(
            client.balance(&wrong),
            Err(ExchangeError::Auth { code: -1022, .. })
        ));
        let placed = client.place_order(&credentials, &order("o1")).unwrap();
        assert_eq!(
            (placed.status.as_str(), placed.executed_quantity),
            ("FILLED", 2_000)
        );
        let found = client
            .order_by_client_id(&credentials, "BTCUSDT", "o1-sl")
            .unwrap()
            .unwrap();
        assert_eq!(found.status, "NEW");
        assert_eq!(
            client
                .order_by_client_id(&credentials, "BTCUSDT", "none")
                .unwrap(),
            None
        );
        // The price rises 10.00: 2 units earn 20.00 when closed.
        sim.admin("POST", "price", br#"{"symbol":"BTCUSDT","price":"110.00"}"#);
        let positions = client.positions(&credentials).unwrap();
        assert_eq!(positions[0].unrealized_profit, 2_000);
        client.close(&credentials, "BTCUSDT", "c1").unwrap();
        assert!(client.positions(&credentials).unwrap().is_empty());
        assert_eq!(client.balance(&credentials).unwrap().balance, 102_000);
        // Closing again under the same id answers the order already there.
        assert_eq!(
            client
                .close(&credentials, "BTCUSDT", "c1")
                .unwrap()
                .client_order_id,
            "c1"
        );
    }

    #[test]
    fn a_lost_answer_is_unknown_and_a_retry_never_doubles_the_order() {
        let (sim, client, credentials) = started();
        sim.set_faults(Faults {
            lose_answer: 1,
            ..Faults::default()
        });
        let lost = client.place_order(&credentials, &order("o2"));
        assert!(matches!(lost, Err(ExchangeError::Unknown(_))), "{lost:?}");
        assert_eq!(entries(&sim, "o2"), 1);
        let found = client
            .order_by_client_id(&credentials, "BTCUSDT", "o2")
            .unwrap();
        assert!(found.is_some());
        // Even placed again, the duplicate id finds the first: one order, then its protection.
        client.place_order(&credentials, &order("o2")).unwrap();
        assert_eq!(entries(&sim, "o2"), 1);
        assert_eq!(entries(&sim, "o2-sl"), 1);
        assert_eq!(entries(&sim, "o2-tp"), 1);
        // A stop-loss the price crosses closes the position at a loss.
        sim.admin("POST", "price", br#"{"symbol":"BTCUSDT","price":"90.00"}"#);
        assert!(client.positions(&credentials).unwrap().is_empty());
        assert_eq!(client.balance(&credentials).unwrap().balance, 98_000);
    }

    #[test]
    fn faults_5xx_timeouts_and_rejections() {
        let (sim, client, credentials) = started();
        sim.set_faults(Faults {
            fail_5xx: 1,
            timeouts: 1,
            reject: 1,
            hold_ms: Some(5_000),
            ..Faults::default()
        });
        let client = client.with_timeout(Duration::from_millis(300));
        assert!(client
            .place_order(&credentials, &order("f"))
            .unwrap_err()
            .outcome_unknown());
        assert!(client
            .place_order(&credentials, &order("f"))
            .unwrap_err()
            .outcome_unknown());
        assert!(matches!(
            client.place_order(&credentials, &order("f")),
            Err(ExchangeError::Rejected { code: -2019, .. })
        ));
        assert_eq!(entries(&sim, "f"), 0);
        client.place_order(&credentials, &order("f")).unwrap();
        assert_eq!(entries(&sim, "f"), 1);
    }

    #[test]
    fn a_restarted_simulator_keeps_its_orders_positions_and_prices() {
        let dir = std::env::temp_dir().join(format!("exchange-sim-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let _ = std::fs::remove_file(&path);
        let first = Simulator::persistent(&path).unwrap();
        first.add_account("key-1", b"secret-1", 100_000);
        let (first, client, credentials) = serving(first);
        client.place_order(&credentials, &order("kept")).unwrap();
        first.admin("POST", "price", br#"{"symbol":"BTCUSDT","price":"110.00"}"#);

        // A new process reads only the file: what was answered before is there.
        let (_second, client, credentials) = serving(Simulator::persistent(&path).unwrap());
        let found = client
            .order_by_client_id(&credentials, "BTCUSDT", "kept")
            .unwrap()
            .expect("the order placed before the restart");
        assert_eq!(
            (found.status.as_str(), found.executed_quantity),
            ("FILLED", 2_000)
        );
        let positions = client.positions(&credentials).unwrap();
        assert_eq!(positions[0].unrealized_profit, 2_000);
        // Its client order id is still taken: placed again, the first answers; no second.
        client.place_order(&credentials, &order("kept")).unwrap();
        let restarted = Simulator::persistent(&path).unwrap();
        assert_eq!(entries(&restarted, "kept"), 1);
        assert_eq!(entries(&restarted, "kept-sl"), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
