//! `coinbit`: serves the API; `coinbit doctor` checks the host.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("doctor") {
        std::process::exit(coinbit_tuning::doctor::main_with_args(&args[2..]));
    }
}
