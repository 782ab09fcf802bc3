//! The exchange simulator (see `coinbit::exchange::sim`): a futures REST API for tests and
//! demos. Prints `exchange-sim listening on http://ADDR` once it listens.

use std::net::TcpListener;
use std::path::PathBuf;

use clap::Parser;
use coinbit::exchange::{fixed, sim};

#[derive(Parser)]
#[command(about = "A Binance-style USDT-M futures API simulator with fault injection")]
struct Args {
    /// Address to listen on (port 0: any free one). A fixed port lets a restarted simulator
    /// keep the address its clients were given.
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: String,
    /// Latency added before every exchange answer (ms).
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// An account: API_KEY:SECRET:BALANCE (USDT, e.g. 1000.00). Repeatable; more can be added
    /// at POST /admin/accounts.
    #[arg(long = "account")]
    accounts: Vec<String>,
    /// SECRET:BALANCE: any key the simulator does not know opens an account with this secret
    /// and balance (USDT) on its first call, as for load tests whose users each bring a key.
    #[arg(long = "any-account")]
    any_account: Option<String>,
    /// Move every symbol's price by a random step of at most this many basis points every
    /// 100 ms (0: prices move only at POST /admin/price), so that positions win and lose.
    #[arg(long, default_value_t = 0)]
    price_walk_bp: u32,
    /// Keep the state (accounts, orders, positions, prices) in this file across restarts:
    /// read at start, rewritten after every change before it is answered. An --account the
    /// file already holds keeps its state.
    #[arg(long)]
    state: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    let simulator = match &args.state {
        Some(path) => sim::Simulator::persistent(path).unwrap_or_else(|e| {
            eprintln!("cannot read the state in {}: {e}", path.display());
            std::process::exit(1);
        }),
        None => sim::Simulator::new(),
    };
    for account in &args.accounts {
        let parts: Vec<&str> = account.splitn(3, ':').collect();
        let balance = parts.get(2).and_then(|b| fixed::parse(b, 2));
        let (Some(key), Some(secret), Some(balance)) = (parts.first(), parts.get(1), balance)
        else {
            eprintln!("--account takes API_KEY:SECRET:BALANCE, got {account}");
            std::process::exit(2);
        };
        if simulator.has_account(key) {
            continue;
        }
        simulator.add_account(key, secret.as_bytes(), balance);
    }
    if let Some(any) = &args.any_account {
        let Some((secret, balance)) = any
            .rsplit_once(':')
            .and_then(|(secret, balance)| Some((secret, fixed::parse(balance, 2)?)))
            .filter(|(secret, balance)| !secret.is_empty() && *balance >= 0)
        else {
            eprintln!("--any-account takes SECRET:BALANCE, got {any}");
            std::process::exit(2);
        };
        simulator.open_to_any_key(secret.as_bytes(), balance);
    }
    simulator.set_faults(sim::Faults {
        latency_ms: args.latency_ms,
        ..sim::Faults::default()
    });
    if args.price_walk_bp > 0 {
        simulator.walk_prices(args.price_walk_bp, std::time::Duration::from_millis(100));
    }
    let listener = TcpListener::bind(&args.bind).unwrap_or_else(|e| {
        eprintln!("cannot listen on {}: {e}", args.bind);
        std::process::exit(1);
    });
    println!(
        "exchange-sim listening on http://{}",
        listener.local_addr().unwrap()
    );
    simulator.serve(listener);
}
