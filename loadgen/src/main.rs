use clap::Parser;

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let config = loadgen::Args::parse()
        .into_config()
        .map_err(|e| anyhow::anyhow!(e))?;
    let stop = loadgen::stop_flag();
    let outcome = loadgen::run(&config, &stop)?;
    if config.json {
        println!("{}", serde_json::to_string_pretty(&outcome.summary)?);
    } else {
        print!("{}", outcome.text);
    }
    if let Some(dir) = &config.out {
        eprintln!("reports written to {}", dir.display());
    }
    std::process::exit(outcome.exit_code);
}
