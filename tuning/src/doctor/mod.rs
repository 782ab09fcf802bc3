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
            // A server on this host replaces the policy with its real layout; one elsewhere
            // says nothing about this host's CPUs.
            let local = server::visible_pid(host, &status).is_ok();
            if local {
                ctx.layout = status.layout(online);
            }
            let mut all = checks::all(host, &ctx);
            let mut server_ctx = ctx.clone();
            server_ctx.layout = status.layout(server_ctx.layout.online.clone());
            all.extend(server::checks(host, url, &status, &server_ctx));
            Report::new(&ctx, if local { "server" } else { "policy" }, all)
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
    let out = if options.json {
        report.json() + "\n"
    } else {
        report.text()
    };
    // A closed pipe (`coinbit doctor | head`) is not an error worth a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes());
    report.exit_code
}

#[cfg(test)]
mod tests {
    use super::checks::{Check, Status};
    use super::testing::{serve_once, FakeHost};
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_options() {
        let o = parse_args(&args(&[
            "--json",
            "--connections=500",
            "--shards",
            "3",
            "--iface",
            "eth0",
            "--iface=eth1",
            "--proc-root",
            "/tmp/p",
        ]))
        .unwrap()
        .unwrap();
        assert!(o.json);
        assert_eq!(
            (o.connections_per_shard, o.shards, o.ifaces.len()),
            (500, Some(3), 2)
        );
        assert_eq!(o.proc_root, PathBuf::from("/tmp/p"));
        assert_eq!(parse_args(&args(&["--help"])), Ok(None));
        for bad in [
            &["--shards"][..],
            &["--shards", "x"],
            &["--json=1"],
            &["--frobnicate"],
        ] {
            assert!(parse_args(&args(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(main_with_args(&args(&["--bogus"])), 2);
        assert_eq!(main_with_args(&args(&["-h"])), 0);
        for option in [
            "--server",
            "--connections",
            "--shards",
            "--monitor-core",
            "--iface",
            "--json",
            "--proc-root",
            "--sys-root",
        ] {
            assert!(HELP.contains(option), "--help lacks {option}");
        }
    }

    /// The doctor on this machine, as whatever user runs the tests: it must finish, and
    /// anything it cannot read is UNKNOWN with a reason, never a crash.
    #[test]
    fn runs_on_this_host() {
        let report = run(&Options::default(), &Host::live());
        let text = report.text();
        println!("{text}");
        assert_eq!(text.lines().count(), report.checks.len() + 2);
        for c in &report.checks {
            assert!(!c.explanation.is_empty(), "{c:?}");
            assert_eq!(
                c.fix.is_some(),
                matches!(c.status, Status::Warn | Status::Fail),
                "{c:?}"
            );
            let line = text
                .lines()
                .find(|l| l.split_whitespace().nth(1) == Some(c.name.as_str()))
                .unwrap();
            assert!(line.starts_with(&c.status.to_string()), "{line}");
        }
        assert_eq!(
            report.exit_code,
            i32::from(report.checks.iter().any(|c| c.status == Status::Fail))
        );
        let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
        for name in [
            "io_uring",
            "memlock",
            "nofile",
            "net.core.somaxconn",
            "cpu_governor",
            "transparent_hugepages",
            "nic_irq_affinity",
            "swap",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
    }

    /// A tree with nothing in it: every check is UNKNOWN (io_uring aside, which probes), the
    /// doctor exits 0.
    #[test]
    fn empty_tree_is_all_unknown() {
        let fake = FakeHost::new();
        let report = run(&Options::default(), &fake.host());
        for c in report
            .checks
            .iter()
            .filter(|c| c.name != "io_uring" && c.name != "isolcpus" && c.name != "nohz_full")
        {
            assert_eq!(c.status, Status::Unknown, "{c:?}");
        }
        assert_eq!(report.exit_code, 0);
    }

    fn shard(id: usize, cpu: usize, tid: u32) -> String {
        format!(
            r#"{{"id":{id},"cpu":{cpu},"tid":{tid},"state":"running","open_connections":3,"requests_served":100,"heartbeat_age_ms":12,"restarts":0}}"#
        )
    }

    fn status_json(
        engine: &str,
        monitor_cpu: usize,
        shares: bool,
        shards: &[(usize, usize, u32)],
    ) -> String {
        let shards: Vec<String> = shards
            .iter()
            .map(|&(id, cpu, tid)| shard(id, cpu, tid))
            .collect();
        format!(
            r#"{{"engine":"{engine}","pid":4242,"monitor":{{"cpu":{monitor_cpu},"tid":4250,"shares_core":{shares}}},"shards":[{}]}}"#,
            shards.join(",")
        )
    }

    /// A 4-CPU host whose pid 4242 has threads pinned as `pins` (tid, Cpus_allowed_list).
    fn server_host(pins: &[(u32, &str)]) -> FakeHost {
        let fake = FakeHost::new();
        fake.sys("devices/system/cpu/online", "0-3\n");
        for (tid, allowed) in pins {
            fake.proc(
                &format!("4242/task/{tid}/status"),
                &format!("Name:\tcoinbit\nCpus_allowed:\tf\nCpus_allowed_list:\t{allowed}\n"),
            );
        }
        fake.proc(
            "4242/limits",
            "Limit                     Soft Limit           Hard Limit           Units\n\
             Max open files            1048576              1048576              files\n\
             Max locked memory         unlimited            unlimited            bytes\n",
        );
        fake
    }

    fn server_checks(fake: &FakeHost, body: String, chunked: bool) -> (Report, Vec<Check>) {
        let options = Options {
            server: Some(serve_once("HTTP/1.1 200 OK", body, chunked)),
            ..Options::default()
        };
        let report = run(&options, &fake.host());
        let server = report
            .checks
            .iter()
            .filter(|c| c.name.starts_with("server"))
            .cloned()
            .collect();
        (report, server)
    }

    fn status_of(checks: &[Check], name: &str) -> Status {
        checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no {name} in {checks:#?}"))
            .status
    }

    /// (host pins, status body, chunked) -> engine, placement, pinning, memlock
    type ServerCase = (&'static [(u32, &'static str)], String, bool, [Status; 4]);

    #[test]
    fn server_checks_read_a_fake_cluster_status() {
        use Status::*;
        const GOOD: &[(u32, &str)] = &[(4250, "0"), (4251, "1"), (4252, "2"), (4253, "3")];
        let three = [(0, 1, 4251), (1, 2, 4252), (2, 3, 4253)];
        let cases: Vec<ServerCase> = vec![
            (
                GOOD,
                status_json("glommio", 0, false, &three),
                false,
                [Pass, Pass, Pass, Pass],
            ),
            (
                GOOD,
                status_json("glommio", 0, false, &three),
                true,
                [Pass, Pass, Pass, Pass],
            ),
            (
                &[(4250, "0"), (4251, "1"), (4252, "0-3"), (4253, "3")],
                status_json("glommio", 0, false, &three),
                false,
                [Pass, Pass, Fail, Pass],
            ),
            (
                GOOD,
                status_json("may", 1, false, &three),
                false,
                [Warn, Fail, Fail, Pass],
            ),
            (
                GOOD,
                status_json("glommio", 1, true, &three),
                false,
                [Pass, Pass, Fail, Pass],
            ),
            (
                GOOD,
                status_json("glommio", 0, false, &[(0, 1, 4251), (1, 1, 4252)]),
                false,
                [Pass, Fail, Fail, Pass],
            ),
            // pid 4242 not on this host: pinning and limits cannot be judged
            (
                &[],
                status_json("glommio", 0, false, &three),
                false,
                [Pass, Pass, Unknown, Unknown],
            ),
        ];
        for (pins, body, chunked, want) in cases {
            let fake = server_host(pins);
            let (report, checks) = server_checks(&fake, body.clone(), chunked);
            assert_eq!(status_of(&checks, "server"), Pass, "{checks:#?}");
            let got = [
                "server.engine",
                "server.placement",
                "server.pinning",
                "server.memlock",
            ]
            .map(|n| status_of(&checks, n));
            assert_eq!(got, want, "{body}\n{checks:#?}");
            let source = if pins.is_empty() { "policy" } else { "server" };
            assert_eq!(report.layout.source, source);
            assert_eq!(report.exit_code, i32::from(got.contains(&Fail)));
        }
    }

    #[test]
    fn server_layout_drives_the_host_checks() {
        let fake = server_host(&[(4250, "0"), (4251, "1"), (4252, "2"), (4253, "3")]);
        let (report, _) = server_checks(
            &fake,
            status_json(
                "glommio",
                0,
                false,
                &[(0, 1, 4251), (1, 2, 4252), (2, 3, 4253)],
            ),
            false,
        );
        assert_eq!(
            (
                report.layout.shard_cpus.as_str(),
                report.layout.shards,
                report.layout.connection_target
            ),
            ("1-3", 3, 30_000)
        );
    }

    #[test]
    fn unreachable_or_garbled_servers_fail() {
        let fake = server_host(&[]);
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        for url in [closed, "https://localhost:3000".to_string()] {
            let report = run(
                &Options {
                    server: Some(url.clone()),
                    ..Options::default()
                },
                &fake.host(),
            );
            assert_eq!(status_of(&report.checks, "server"), Status::Fail, "{url}");
            assert_eq!((report.exit_code, report.layout.source), (1, "policy"));
        }
        let (report, checks) = server_checks(&fake, "{\"engine\": 1}".into(), false);
        assert_eq!(status_of(&checks, "server"), Status::Fail);
        assert_eq!(report.exit_code, 1);
        let url = serve_once("HTTP/1.1 503 Service Unavailable", "{}".into(), false);
        let report = run(
            &Options {
                server: Some(url),
                ..Options::default()
            },
            &fake.host(),
        );
        assert!(
            report.checks.last().unwrap().explanation.contains("503"),
            "{:?}",
            report.checks.last()
        );
    }

    #[test]
    fn json_report_has_every_check_and_the_exit_code() {
        let fake = server_host(&[(4250, "0"), (4251, "1-3")]);
        let body = status_json("glommio", 0, false, &[(0, 1, 4251)]);
        let (report, _) = server_checks(&fake, body, false);
        let json: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
        let checks = json["checks"].as_array().unwrap();
        assert_eq!(checks.len(), report.checks.len());
        for c in checks {
            assert!(
                ["PASS", "WARN", "FAIL", "UNKNOWN"].contains(&c["status"].as_str().unwrap()),
                "{c}"
            );
            assert!(
                c["name"].is_string() && c["value"].is_string() && c["explanation"].is_string(),
                "{c}"
            );
        }
        let pinning = checks
            .iter()
            .find(|c| c["name"] == "server.pinning")
            .unwrap();
        assert_eq!(pinning["status"], "FAIL");
        assert!(pinning["fix"].is_string());
        assert_eq!(json["exit_code"], 1);
        assert_eq!(
            json["summary"]["fail"].as_u64().unwrap() as usize,
            report.summary.fail
        );
        assert_eq!(json["layout"]["monitor_cpu"], 0);
    }

    /// The real `/proc` of this test process stands in for the server: a thread pinned to the
    /// first CPU it may use is "shard 0"; claiming another CPU for it must FAIL.
    #[test]
    fn pinning_is_read_from_the_real_proc() {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let pinned = std::thread::spawn(move || {
            let size = std::mem::size_of::<libc::cpu_set_t>();
            // SAFETY: zeroed cpu_set_t values read and written by the affinity calls and the
            // CPU_* helpers, for this thread only; gettid cannot fail.
            let (cpu, tid) = unsafe {
                let mut allowed: libc::cpu_set_t = std::mem::zeroed();
                assert_eq!(libc::sched_getaffinity(0, size, &mut allowed), 0);
                let cpu = (0..libc::CPU_SETSIZE as usize)
                    .find(|&c| libc::CPU_ISSET(c, &allowed))
                    .unwrap();
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                assert_eq!(libc::sched_setaffinity(0, size, &set), 0);
                (cpu, libc::syscall(libc::SYS_gettid) as u32)
            };
            tid_tx.send((cpu, tid)).unwrap();
            let _ = done_rx.recv();
        });
        let (cpu, tid) = tid_rx.recv().unwrap();
        let pid = std::process::id();
        for (claimed, want) in [(cpu, Status::Pass), (cpu + 1, Status::Fail)] {
            let body = format!(
                r#"{{"engine":"glommio","pid":{pid},"monitor":{{"cpu":{cpu},"shares_core":true}},"shards":[{{"id":0,"cpu":{claimed},"tid":{tid},"state":"running"}}]}}"#
            );
            let options = Options {
                server: Some(serve_once("HTTP/1.1 200 OK", body, false)),
                ..Options::default()
            };
            let report = run(&options, &Host::live());
            assert_eq!(
                status_of(&report.checks, "server.pinning"),
                want,
                "{:#?}",
                report.checks
            );
            assert_ne!(status_of(&report.checks, "server.nofile"), Status::Unknown);
        }
        done_tx.send(()).unwrap();
        pinned.join().unwrap();
    }

    #[test]
    fn cli_on_a_fake_tree_exits_1_on_fail() {
        let fake = FakeHost::new();
        fake.proc("self/limits", "Limit Soft Hard Units\nMax open files 1024 1024 files\nMax locked memory 65536 65536 bytes\n");
        let roots = |fake: &FakeHost| {
            let r = fake.root().to_string_lossy().into_owned();
            args(&[
                "--json",
                "--proc-root",
                &format!("{r}/proc"),
                "--sys-root",
                &format!("{r}/sys"),
            ])
        };
        assert_eq!(main_with_args(&roots(&fake)), 1);
        let empty = FakeHost::new();
        assert_eq!(
            main_with_args(&roots(&empty)),
            i32::from(Host::live().io_uring_probe().is_err())
        );
    }
}
