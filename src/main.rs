//! `coinbit`: serves the API; `coinbit migrate` and `coinbit grant-role` change the database;
//! `coinbit doctor` checks the host.

use coinbit::config::{Cli, Command};

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // The doctor reads the host, not the server's settings: dispatch before validating them.
    if args.get(1).is_some_and(|a| a == "doctor") {
        let rest: Vec<String> = args[2..]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        std::process::exit(coinbit_tuning::doctor::main_with_args(&rest));
    }
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let cli = match Cli::parse_from(args, &env) {
        Ok(cli) => cli,
        Err(e) if e.exit_code() == 0 => {
            print!("{e}");
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("coinbit: {e}");
            std::process::exit(e.exit_code());
        }
    };
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    // may logs every descriptor it registers at info: keep it to warnings unless asked for.
    if !std::env::var("RUST_LOG").is_ok_and(|filter| filter.contains("may")) {
        logger.filter_module("may", log::LevelFilter::Warn);
    }
    logger.init();
    match cli.command {
        None | Some(Command::Serve) => {}
        Some(Command::Migrate) => std::process::exit(coinbit::db::migrate::main(&cli.config)),
        Some(Command::GrantRole { email, role }) => std::process::exit(
            coinbit::db::admin::grant_role_main(&cli.config, &email, role),
        ),
        // `coinbit --port 1 doctor ...`: flags before the subcommand.
        Some(Command::Doctor { args }) => {
            std::process::exit(coinbit_tuning::doctor::main_with_args(&args))
        }
    }
    if let Err(e) = coinbit::server::run(cli.config) {
        eprintln!("coinbit: {e}");
        std::process::exit(e.exit_code());
    }
}
