//! The exchange simulator (the `exchange-sim` binary) as the trading tests use it: accounts,
//! prices and faults through its admin API, the orders it holds, and, when started with a
//! state file, a `kill -9` and a restart on the same address that keeps its orders.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

use super::ledger::unique;
use super::Client;

/// The exchange simulator, killed on drop.
pub struct Exchange {
    child: Child,
    pub addr: SocketAddr,
    /// The file it keeps its state in, when it survives restarts.
    state: Option<PathBuf>,
}

impl Exchange {
    /// A simulator on a free port that keeps its state in memory only.
    pub fn start() -> Exchange {
        let (child, addr) = spawn(&["--bind", "127.0.0.1:0"]);
        Exchange {
            child,
            addr,
            state: None,
        }
    }

    /// A simulator on a free port where any key it does not know opens an account with
    /// `secret` and `balance` on its first call.
    pub fn start_open_to_any_key(secret: &str, balance: &str) -> Exchange {
        let any = format!("{secret}:{balance}");
        let (child, addr) = spawn(&["--bind", "127.0.0.1:0", "--any-account", &any]);
        Exchange {
            child,
            addr,
            state: None,
        }
    }

    /// A simulator on a free port that keeps its state in a file of its own, so that
    /// [`Exchange::restart`] finds every account, order, position and price again.
    pub fn start_persistent() -> Exchange {
        let state = std::env::temp_dir().join(format!("{}.json", unique("exchange-sim-state")));
        let (child, addr) = spawn(&["--bind", "127.0.0.1:0", "--state", path_str(&state)]);
        Exchange {
            child,
            addr,
            state: Some(state),
        }
    }

    /// Sends SIGKILL and waits for the process to end.
    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the simulator again on the same address from its state file (killing the one
    /// running first, if it still runs).
    pub fn restart(&mut self) {
        let state = self
            .state
            .clone()
            .expect("only a simulator started persistent keeps its state");
        self.kill_9();
        let addr = self.addr.to_string();
        let (child, addr_now) = spawn(&["--bind", &addr, "--state", path_str(&state)]);
        assert_eq!(addr_now, self.addr);
        self.child = child;
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn admin(&self, method: &str, path: &str, body: &Value) -> Value {
        let answer = Client::connect(self.addr).request(
            method,
            &format!("/admin/{path}"),
            &[],
            body.to_string().as_bytes(),
        );
        assert_eq!(answer.status, 200, "{}", answer.text());
        answer.json()
    }

    pub fn account(&self, key: &str, secret: &str, balance: &str) {
        self.admin(
            "POST",
            "accounts",
            &json!({ "api_key": key, "secret": secret, "balance": balance }),
        );
    }

    /// Moves the mark price of `symbol` (its stop-loss and take-profit trigger).
    pub fn price(&self, symbol: &str, price: &str) {
        self.admin(
            "POST",
            "price",
            &json!({ "symbol": symbol, "price": price }),
        );
    }

    /// Closes every account's position on `symbol` on the exchange itself, as by hand.
    pub fn close_by_hand(&self, symbol: &str) {
        self.admin("POST", "close-by-hand", &json!({ "symbol": symbol }));
    }

    pub fn faults(&self, faults: Value) {
        self.admin("POST", "faults", &faults);
    }

    /// How many placements the simulator was asked for, refused ones included.
    pub fn place_attempts(&self) -> i64 {
        self.admin("GET", "orders", &json!({}))["place_attempts"]
            .as_i64()
            .unwrap()
    }

    /// Every order on the simulator.
    pub fn orders(&self) -> Vec<Value> {
        self.admin("GET", "orders", &json!({}))["orders"]
            .as_array()
            .unwrap()
            .clone()
    }

    pub fn orders_with_id(&self, id: &str) -> usize {
        self.orders()
            .iter()
            .filter(|o| o["clientOrderId"] == id)
            .count()
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.kill_9();
        if let Some(state) = &self.state {
            let _ = std::fs::remove_file(state);
        }
    }
}

fn path_str(path: &std::path::Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

/// Spawns `exchange-sim` with `args` and waits for the address it listens on.
fn spawn(args: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_exchange-sim"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn exchange-sim");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("exchange-sim listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .parse()
        .unwrap();
    (child, addr)
}
