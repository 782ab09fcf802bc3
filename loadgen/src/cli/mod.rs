//! The command line: clap arguments, turned into a validated [`Config`].
//!
//! Validation refuses nonsense before anything starts (a rate below the thread count, a zero
//! duration, both load models at once) and names the flag at fault.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::scenario::Scenario;
use crate::schedule::{parse_stages, Profile, Think};
use crate::slo::{self, Objective};
use crate::units::parse_duration;

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// On a terminal only.
    Auto,
    Always,
    Never,
}

/// HTTP/1.1 load generator with HDR latency reports: closed (virtual users) or open
/// (fixed-rate, coordinated-omission corrected) model, one pinned client thread per CPU.
#[derive(Parser, Debug, Clone)]
#[command(name = "loadgen", version, max_term_width = 100)]
pub struct Args {
    /// Target. `http://host:port` runs the scenario; `http://host:port/path` with no --scenario
    /// sends GET /path alone (as wrk does).
    #[arg(default_value = "http://127.0.0.1:3000")]
    pub url: String,

    /// Scenario: builtin:coinbitclub (default), builtin:health, builtin:probes, builtin:money, builtin:trading, or a
    /// TOML/JSON file.
    #[arg(short, long)]
    pub scenario: Option<String>,

    /// Closed model: virtual users, each sending its next request when the last one is answered
    /// (plus --think).
    #[arg(short, long)]
    pub users: Option<usize>,

    /// Open model: requests per second on a fixed schedule; latency counts from each request's
    /// scheduled time (coordinated-omission corrected, as wrk2 does).
    #[arg(short = 'R', long)]
    pub rate: Option<f64>,

    /// Connections. Open model: the pool requests are sent over (default 64). Closed model:
    /// same as --users when --users is absent (wrk style).
    #[arg(short, long)]
    pub connections: Option<usize>,

    /// How long to run (not with --stages).
    #[arg(short, long, default_value = "10s", value_parser = duration)]
    pub duration: Duration,

    /// Ramp stages DURATION:TARGET,... starting from zero: users (closed model) or req/s
    /// (open model), e.g. 10s:100,30s:1100,10s:0.
    #[arg(long)]
    pub stages: Option<String>,

    /// Client threads, each pinned to one CPU (default: one per CPU of --cpus or of the
    /// process's affinity mask).
    #[arg(short, long)]
    pub threads: Option<usize>,

    /// CPUs to pin client threads to, e.g. 1 or 2-5 or 0,2,4 (default: the affinity mask, so
    /// `taskset -c 1 loadgen` pins to CPU 1).
    #[arg(long)]
    pub cpus: Option<String>,

    /// Requests in flight per connection (HTTP/1.1 pipelining). In the closed model this many
    /// users share one connection.
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,

    /// Closed model: pause between a response and the user's next request, 200ms or 100ms..300ms.
    #[arg(long, default_value = "0ms")]
    pub think: String,

    /// Per-request and per-connect timeout.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub timeout: Duration,

    /// Source addresses to spread connections over, e.g. 127.0.0.1,127.0.0.2: each allows about
    /// 28k connections to one server port.
    #[arg(long, value_delimiter = ',')]
    pub bind: Vec<IpAddr>,

    /// Extra header on every request, "Name: value" (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,

    /// Write report files here: one .hgrm per endpoint, latency.hlog (interval log),
    /// summary.json and report.html.
    #[arg(short, long)]
    pub out: Option<PathBuf>,

    /// Objectives on the overall figures, e.g. p99<5ms,errors<0.1%,rps>1000; exit code 3 when
    /// one is missed.
    #[arg(long)]
    pub slo: Option<String>,

    /// Busy-poll instead of sleeping when the next scheduled send is this close: trades client
    /// CPU for send-time precision (the timer's wake-up latency counts in corrected latency).
    #[arg(long, default_value = "50us", value_parser = duration)]
    pub spin: Duration,

    /// Reporting interval of the progress line, the timeline and the interval log.
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub interval: Duration,

    /// Live progress line.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,

    /// Seed for the mix and template variables (default: random).
    #[arg(long)]
    pub seed: Option<u64>,

    /// Print summary.json to stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// The load model of a run.
#[derive(Clone, Debug)]
pub enum Load {
    Closed { users: Profile, think: Think },
    Open { rate: Profile, connections: usize },
}

/// A validated run configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub url: String,
    pub target: SocketAddr,
    pub host_header: String,
    pub scenario: Scenario,
    pub headers: Vec<(String, String)>,
    pub load: Load,
    pub threads: usize,
    /// CPU of each client thread (None: unpinned).
    pub cpus: Vec<Option<usize>>,
    pub pipeline: usize,
    pub timeout: Duration,
    pub binds: Vec<IpAddr>,
    pub out: Option<PathBuf>,
    pub slo: Vec<Objective>,
    pub interval: Duration,
    pub spin: Duration,
    pub progress: bool,
    pub seed: u64,
    pub json: bool,
    /// Warnings found while validating (printed with the report).
    pub warnings: Vec<String>,
}

/// Splits `http://host:port/path` into (host:port, path). The path is `None` when absent.
pub fn parse_url(url: &str) -> Result<(String, Option<String>), String> {
    if url.starts_with("https://") {
        return Err("https is not supported: loadgen speaks plain HTTP/1.1".into());
    }
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(rest[i..].to_string())),
        None => (rest, None),
    };
    if authority.is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    let authority = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path))
}

/// Parses a CPU list such as `1`, `2-5`, `0,2,4-6`.
pub fn parse_cpus(text: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("--cpus: `{part}` is not a CPU number or range");
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.trim().parse().map_err(|_| bad())?;
                let b: usize = b.trim().parse().map_err(|_| bad())?;
                if a > b {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    if out.is_empty() {
        return Err("--cpus is empty".into());
    }
    out.dedup();
    Ok(out)
}

fn parse_header(h: &str) -> Result<(String, String), String> {
    let (k, v) = h
        .split_once(':')
        .ok_or_else(|| format!("header `{h}` must look like `Name: value`"))?;
    let k = k.trim();
    if k.is_empty()
        || k.bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(format!("header `{h}` has a bad name"));
    }
    Ok((k.to_string(), v.trim().to_string()))
}

impl Args {
    /// Validates the arguments into a [`Config`]; the error names the flag at fault.
    pub fn into_config(self) -> Result<Config, String> {
        let mut warnings = Vec::new();
        let (authority, path) = parse_url(&self.url)?;
        let target = authority
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve `{authority}`: {e}"))?
            .next()
            .ok_or_else(|| format!("`{authority}` resolves to no address"))?;
        let scenario = match (&self.scenario, &path) {
            (Some(spec), _) => Scenario::load(spec)?,
            (None, Some(p)) => Scenario::single_get(p),
            (None, None) => Scenario::builtin("coinbitclub")?,
        };
        let headers = self
            .headers
            .iter()
            .map(|h| parse_header(h))
            .collect::<Result<Vec<_>, _>>()?;
        if self.pipeline == 0 || self.pipeline > 1024 {
            return Err("--pipeline must be within 1..=1024".into());
        }
        if self.interval.is_zero() {
            return Err("--interval must be more than zero".into());
        }
        if self.timeout.is_zero() {
            return Err("--timeout must be more than zero".into());
        }
        if self.users.is_some() && self.rate.is_some() {
            return Err("--users (closed model) and --rate (open model) exclude each other".into());
        }
        let stages = self.stages.as_deref().map(parse_stages).transpose()?;
        let profile_for = |value: f64| -> Result<Profile, String> {
            match &stages {
                Some(st) => {
                    let p = Profile::from_stages(st);
                    if p.duration().is_zero() {
                        return Err("--stages adds up to a zero duration".into());
                    }
                    if p.peak() <= 0.0 {
                        return Err("--stages never rises above zero".into());
                    }
                    Ok(p)
                }
                None => {
                    if self.duration.is_zero() {
                        return Err("--duration must be more than zero".into());
                    }
                    Ok(Profile::constant(value, self.duration))
                }
            }
        };

        // CPUs and threads.
        let allowed: Vec<usize> = core_affinity::get_core_ids()
            .unwrap_or_default()
            .iter()
            .map(|c| c.id)
            .collect();
        let cpu_list = match &self.cpus {
            Some(text) => {
                let list = parse_cpus(text)?;
                if let Some(bad) = list
                    .iter()
                    .find(|c| !allowed.is_empty() && !allowed.contains(c))
                {
                    return Err(format!(
                        "--cpus: CPU {bad} is not available to this process (have {allowed:?})"
                    ));
                }
                list
            }
            None => allowed.clone(),
        };
        let mut threads = self.threads.unwrap_or(cpu_list.len().max(1));
        if threads == 0 {
            return Err("--threads must be at least 1".into());
        }

        let load = if let Some(rate) = self.rate {
            if rate.is_nan() || rate <= 0.0 || !rate.is_finite() {
                return Err("--rate must be more than zero".into());
            }
            let profile = profile_for(rate)?;
            let peak = profile.peak();
            if peak < threads as f64 {
                return Err(format!(
                    "--rate {peak} is below the {threads} client threads: each client thread needs at least 1 req/s \
                     (lower --threads)"
                ));
            }
            let connections = self.connections.unwrap_or(64);
            if connections == 0 {
                return Err("--connections must be at least 1".into());
            }
            if connections < threads {
                warnings.push(format!(
                    "{connections} connections for {threads} threads: using {connections} threads"
                ));
                threads = connections;
            }
            Load::Open {
                rate: profile,
                connections,
            }
        } else {
            let users = self.users.or(self.connections).unwrap_or(50);
            if users == 0 && stages.is_none() {
                return Err("--users must be at least 1".into());
            }
            let profile = profile_for(users as f64)?;
            let peak = profile.peak().round() as usize;
            if peak < threads {
                threads = peak.max(1);
            }
            let think = Think::parse(&self.think)?;
            Load::Closed {
                users: profile,
                think,
            }
        };
        let cpus: Vec<Option<usize>> = (0..threads)
            .map(|i| (!cpu_list.is_empty()).then(|| cpu_list[i % cpu_list.len()]))
            .collect();
        if threads > cpu_list.len() && !cpu_list.is_empty() {
            warnings.push(format!(
                "{threads} threads on {} CPUs: client threads share cores and may fall behind",
                cpu_list.len()
            ));
        }
        let slo = self
            .slo
            .as_deref()
            .map(slo::parse)
            .transpose()?
            .unwrap_or_default();
        let progress = match self.progress {
            ProgressMode::Always => true,
            ProgressMode::Never => false,
            ProgressMode::Auto => std::io::IsTerminal::is_terminal(&std::io::stderr()),
        };
        Ok(Config {
            url: self.url.clone(),
            target,
            host_header: authority,
            scenario,
            headers,
            load,
            threads,
            cpus,
            pipeline: self.pipeline,
            timeout: self.timeout,
            binds: self.bind,
            out: self.out,
            slo,
            interval: self.interval,
            spin: self.spin,
            progress,
            seed: self.seed.unwrap_or_else(|| fastrand::u64(..)),
            json: self.json,
            warnings,
        })
    }
}

impl Config {
    /// Connections wanted at peak load.
    pub fn peak_connections(&self) -> u64 {
        match &self.load {
            Load::Open { connections, .. } => *connections as u64,
            Load::Closed { users, .. } => {
                let peak = users.peak().round() as u64;
                // Users are split per client thread, then packed `pipeline` to a connection.
                (0..self.threads)
                    .map(|w| {
                        crate::schedule::users_for_client(peak as usize, self.threads, w)
                            .div_ceil(self.pipeline) as u64
                    })
                    .sum()
            }
        }
    }

    pub fn duration(&self) -> Duration {
        match &self.load {
            Load::Open { rate, .. } => rate.duration(),
            Load::Closed { users, .. } => users.duration(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Result<Config, String> {
        let mut v = vec!["loadgen"];
        v.extend_from_slice(args);
        Args::try_parse_from(v)
            .map_err(|e| e.to_string())?
            .into_config()
    }

    #[test]
    fn urls() {
        type Case<'a> = (&'a str, Result<(&'a str, Option<&'a str>), ()>);
        let cases: &[Case] = &[
            ("http://127.0.0.1:3000", Ok(("127.0.0.1:3000", None))),
            ("http://127.0.0.1:3000/", Ok(("127.0.0.1:3000", Some("/")))),
            (
                "http://localhost/health?x=1",
                Ok(("localhost:80", Some("/health?x=1"))),
            ),
            ("127.0.0.1:8080/x", Ok(("127.0.0.1:8080", Some("/x")))),
            ("https://example.org", Err(())),
            ("http:///x", Err(())),
        ];
        for (url, want) in cases {
            let got = parse_url(url).map_err(|_| ());
            let want = want.map(|(a, p)| (a.to_string(), p.map(str::to_string)));
            assert_eq!(got, want, "{url}");
        }
    }

    #[test]
    fn cpu_lists() {
        let cases: &[(&str, Option<Vec<usize>>)] = &[
            ("1", Some(vec![1])),
            ("0-3", Some(vec![0, 1, 2, 3])),
            ("0,2,4-5", Some(vec![0, 2, 4, 5])),
            ("3-1", None),
            ("a", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(&parse_cpus(text).ok(), want, "{text}");
        }
    }

    #[test]
    fn guardrails() {
        let refused: &[(&[&str], &str)] = &[
            (&["-R", "1", "-t", "2"], "below the 2 client threads"),
            (&["-d", "0s"], "--duration must be more than zero"),
            (
                &["-R", "100", "-d", "0s"],
                "--duration must be more than zero",
            ),
            (&["--stages", "0s:10"], "zero duration"),
            (&["--stages", "5s:0"], "never rises"),
            (&["-u", "10", "-R", "10"], "exclude each other"),
            (&["-u", "0"], "--users must be at least 1"),
            (&["-R", "0"], "--rate must be more than zero"),
            (&["--pipeline", "0"], "--pipeline"),
            (&["-t", "0"], "--threads"),
            (&["--slo", "p99<soon"], "p99<soon"),
            (&["--think", "2s..1s"], "backwards"),
            (&["-H", "novalue"], "Name: value"),
            (&["https://x"], "https"),
        ];
        for (args, want) in refused {
            let err = config(args).expect_err(&format!("{args:?} should be refused"));
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }

    #[test]
    fn accepted() {
        let c = config(&["-u", "1100", "-t", "2", "--pipeline", "2"]).unwrap();
        assert!(matches!(c.load, Load::Closed { .. }));
        assert_eq!(c.threads, 2);
        assert_eq!(c.peak_connections(), 550);
        assert_eq!(c.scenario.name, "builtin:coinbitclub");
        let c = config(&["-c", "10", "-t", "1", "http://127.0.0.1:9/x"]).unwrap();
        assert_eq!(
            c.peak_connections(),
            10,
            "-c means users in the closed model"
        );
        assert_eq!(c.scenario.endpoints[0].path, "/x");
        let c = config(&[
            "-R",
            "1000",
            "-c",
            "8",
            "-t",
            "1",
            "--stages",
            "1s:10,2s:1000",
        ])
        .unwrap();
        assert_eq!(c.duration(), Duration::from_secs(3));
        assert_eq!(c.peak_connections(), 8);
        let c = config(&["-u", "1", "-t", "4"]).unwrap();
        assert_eq!(c.threads, 1, "never more threads than users");
    }
}
