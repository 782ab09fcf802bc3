//! `coinbit doctor`: the command line, and `run`, which gathers the host checks (and the
//! server checks with `--server`) into a `Report`.
use std::path::PathBuf;

pub mod checks;
pub mod host;
pub mod recommended;
pub mod report;
pub mod server;
#[cfg(test)]
pub(crate) mod testing;

use checks::{Context, DEFAULT_CONNECTIONS_PER_SHARD};
use host::{Host, IoUringProbe, Layout};
use report::Report;

/// What `coinbit doctor` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Also check the server at this URL.
    pub server: Option<String>,
    /// Connection target per shard.
    pub connections_per_shard: u64,
    /// Shards the server will run; default: its policy.
    pub shards: Option<usize>,
    /// The monitor's CPU; default: its policy.
    pub monitor_core: Option<usize>,
    /// NICs for the IRQ check; empty: every device-backed interface.
    pub ifaces: Vec<String>,
    pub json: bool,
    pub proc_root: PathBuf,
    pub sys_root: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            server: None,
            connections_per_shard: DEFAULT_CONNECTIONS_PER_SHARD,
            shards: None,
            monitor_core: None,
            ifaces: Vec::new(),
            json: false,
            proc_root: "/proc".into(),
            sys_root: "/sys".into(),
        }
    }
}

pub const HELP: &str = "\
coinbit doctor: check this host (and optionally a running server) for a thread-per-core coinbit

Each check prints PASS, WARN, FAIL or UNKNOWN (could not be read here, e.g. without root), the
value seen, why it matters and the command that fixes it. Exit code 1 when any check FAILs.

Usage: coinbit doctor [OPTIONS]

Options:
      --server URL        also check the running server: GET URL/api/enterprise/cluster/status
                          (http://host:port); its layout replaces the policy below
      --connections N     connection target per shard [default: 10000]
      --shards N          shards the server will run [default: one per CPU, less the monitor
                          core with 4 or more CPUs]
      --monitor-core N    the monitor's CPU [default: the first online CPU]
      --iface NAME        NIC whose IRQs to check; repeatable [default: every interface
                          backed by a device]
      --json              print one JSON document instead of text
      --proc-root DIR     read /proc from DIR [default: /proc]
      --sys-root DIR      read /sys from DIR [default: /sys]
  -h, --help              print this help
";

/// Parses the arguments after `doctor`; `Ok(None)` asks for help.
pub fn parse_args(args: &[String]) -> Result<Option<Options>, String> {
    let mut o = Options::default();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg, None),
        };
        let takes_value = !matches!(flag, "-h" | "--help" | "--json");
        let value = if takes_value {
            match inline {
                Some(v) => v,
                None => {
                    i += 1;
                    args.get(i)
                        .cloned()
                        .ok_or_else(|| format!("{flag} needs a value"))?
                }
            }
        } else if inline.is_some() {
            return Err(format!("{flag} takes no value"));
        } else {
            String::new()
        };
        let number = |what: &str| {
            value
                .parse::<u64>()
                .map_err(|_| format!("{what}: {value:?} is not a number"))
        };
        match flag {
            "-h" | "--help" => return Ok(None),
            "--json" => o.json = true,
            "--server" => o.server = Some(value.clone()),
            "--connections" => o.connections_per_shard = number("--connections")?.max(1),
            "--shards" => o.shards = Some(number("--shards")?.max(1) as usize),
            "--monitor-core" => o.monitor_core = Some(number("--monitor-core")? as usize),
            "--iface" => o.ifaces.push(value.clone()),
            "--proc-root" => o.proc_root = value.clone().into(),
            "--sys-root" => o.sys_root = value.clone().into(),
            other => {
                return Err(format!(
                    "unknown option {other:?} (see coinbit doctor --help)"
                ))
            }
        }
        i += 1;
    }
    Ok(Some(o))
}

/// Runs every check on `host` as `options` ask.
pub fn run(options: &Options, host: &Host) -> Report {
    let online = host.online_cpus();
    let policy = Layout::from_policy(online.clone(), options.shards, options.monitor_core);
    let mut ctx = Context {
        layout: policy,
        connections_per_shard: options.connections_per_shard,
        ifaces: options.ifaces.clone(),
    };
    let Some(url) = &options.server else {
        return Report::new(&ctx, "policy", checks::all(host, &ctx));
    };
    match server::fetch(url) {
        Ok(status) => {
            ctx.layout = status.layout(online);
            let mut all = checks::all(host, &ctx);
            all.extend(server::checks(host, url, &status, &ctx));
            Report::new(&ctx, "server", all)
        }
        Err(unreachable) => {
            let mut all = checks::all(host, &ctx);
            all.push(unreachable);
            Report::new(&ctx, "policy", all)
        }
    }
}

/// Entry point of `coinbit doctor`; returns the process exit code (2 for a usage error).
pub fn main_with_args(args: &[String]) -> i32 {
    let options = match parse_args(args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{HELP}");
            return 0;
        }
        Err(e) => {
            eprintln!("coinbit doctor: {e}");
            return 2;
        }
    };
    let host = Host::new(&options.proc_root, &options.sys_root, IoUringProbe::Live);
    let report = run(&options, &host);
    if options.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    report.exit_code
}
