//! Behind a load balancer: the drain on SIGTERM (`DRAIN_DELAY`, the agent check) and HAProxy
//! (deploy/haproxy.cfg) in front of three real instances, losing no request when one is killed
//! or when all are restarted one after the other.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rstest::rstest;
use rstest_reuse::{self, apply};

use common::{engines, wait_for, Client, Server};

/// The configuration this test runs, as deployed.
const HAPROXY_CFG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy.cfg");
/// How long an instance stays not ready but serving after SIGTERM: a few of HAProxy's 500 ms
/// checks. Requests that reach it later are retried elsewhere anyway; this keeps them few.
const DRAIN_DELAY_MS: &str = "2000";
/// What the load asks for: a request that takes a while, so that some are always in flight
/// when an instance is killed or stopped.
const LOAD_PATH: &str = "/debug/sleep?ms=10";
/// Bound on every wait for HAProxy or an instance to change state.
const PATIENCE: Duration = Duration::from_secs(30);

/// A port below the kernel's ephemeral range (32768 and up) that is free now, so that neither
/// an outgoing connection nor another test's port 0 takes it meanwhile.
fn free_low_port() -> u16 {
    // Each call starts further on, so that two tests of this process never pick the same one.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = (std::process::id() % 12_000) as u16;
    std::iter::repeat_with(|| NEXT.fetch_add(1, Ordering::Relaxed))
        .take(2_000)
        .map(|i| 20_000 + (seed + i.wrapping_mul(37)) % 12_000)
        .find(|&port| TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free port below 32768")
}

/// The agent check's line, as HAProxy reads it.
fn agent_line(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut line = String::new();
    stream.read_to_string(&mut line).ok()?;
    Some(line)
}

/// One GET on a fresh connection: its status, or `None` where the connection failed.
fn try_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut client = common::Client::connect(addr);
    client
        .try_request("GET", path, &[], b"")
        .map(|response| response.status)
}

#[apply(engines)]
fn sigterm_with_a_drain_delay_turns_readyz_503_and_serves_on_until_it_passes(#[case] engine: &str) {
    let agent_port = free_low_port();
    let agent = agent_port.to_string();
    // Long enough that the checks below run inside it even on a loaded host; the test ends as
    // soon as the process exits.
    let mut server = Server::start(engine, &["--drain-delay", "4000", "--agent-port", &agent]);
    assert_eq!(server.get("/readyz").status, 200);
    assert_eq!(
        wait_for("the agent", Duration::from_secs(5), || agent_line(
            agent_port
        )),
        "up ready\n"
    );
    let kept = server.connect();

    server.signal(libc::SIGTERM);
    wait_for("/readyz 503", Duration::from_secs(3), || {
        (try_status(server.addr, "/readyz")? == 503).then_some(())
    });
    // Not ready, yet still accepting and serving new connections and open ones.
    assert_eq!(try_status(server.addr, "/livez"), Some(200));
    assert_eq!(try_status(server.addr, "/health"), Some(200));
    let mut kept = kept;
    assert_eq!(kept.request("GET", "/livez", &[], b"").status, 200);
    assert_eq!(agent_line(agent_port).as_deref(), Some("drain\n"));
    assert!(server.child.try_wait().unwrap().is_none());

    let status = server.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
    assert!(
        TcpStream::connect(server.addr).is_err(),
        "still accepting after exit"
    );
}

/// HAProxy's binary, installed from Debian where missing (tests/run.sh installs it too).
fn haproxy_binary() -> PathBuf {
    let find = || {
        [
            "/usr/sbin/haproxy",
            "/usr/bin/haproxy",
            "/usr/local/sbin/haproxy",
        ]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
    };
    if let Some(found) = find() {
        return found;
    }
    let installed = Command::new("apt-get")
        .args(["install", "-y", "-qq", "haproxy"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    find().unwrap_or_else(|| {
        panic!("haproxy is missing and `apt-get install -y haproxy` gave {installed:?}")
    })
}

#[test]
fn the_deployed_haproxy_configuration_is_valid() {
    let check = Command::new(haproxy_binary())
        .args(["-c", "-f", HAPROXY_CFG])
        .output()
        .expect("haproxy runs");
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

/// One coinbit instance behind the balancer: its ports stay the same across restarts.
struct Instance {
    engine: String,
    port: u16,
    agent_port: u16,
    server: Option<Server>,
}

impl Instance {
    fn start(engine: &str) -> Instance {
        let mut instance = Instance {
            engine: engine.to_string(),
            port: free_low_port(),
            agent_port: free_low_port(),
            server: None,
        };
        instance.start_again();
        instance
    }

    fn start_again(&mut self) {
        let (port, agent) = (self.port.to_string(), self.agent_port.to_string());
        let mut command = common::binary();
        command
            .args(["--bind-address", "127.0.0.1", "--port", &port])
            .args(["--engine", &self.engine, "--shards", "1", "--debug-routes"])
            .args(["--drain-delay", DRAIN_DELAY_MS, "--agent-port", &agent])
            .env("RUST_LOG", "info")
            .env("OPERATOR_TOKEN", common::OPERATOR_TOKEN);
        self.server = Some(Server::spawn(command));
    }

    fn server(&mut self) -> &mut Server {
        self.server.as_mut().expect("a running instance")
    }
}

/// HAProxy running `deploy/haproxy.cfg` in front of three instances, with a stats socket added
/// for the test to read each server's state. Killed on drop.
struct Balancer {
    child: Child,
    addr: SocketAddr,
    socket: PathBuf,
    dir: PathBuf,
}

impl Balancer {
    fn start(instances: &[Instance]) -> Balancer {
        let dir = std::env::temp_dir().join(format!(
            "coinbit-haproxy-{}-{}",
            std::process::id(),
            free_low_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("stats.sock");
        let extra = dir.join("stats.cfg");
        std::fs::write(
            &extra,
            format!(
                "global\n    stats socket {} level admin\n",
                socket.display()
            ),
        )
        .unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], free_low_port()).into();
        let mut command = Command::new(haproxy_binary());
        command
            .args(["-db", "-f", HAPROXY_CFG, "-f"])
            .arg(&extra)
            .env("COINBIT_LISTEN", addr.to_string())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("haproxy.log")).unwrap());
        for (i, instance) in instances.iter().enumerate() {
            command
                .env(
                    format!("COINBIT_APP{}", i + 1),
                    format!("127.0.0.1:{}", instance.port),
                )
                .env(
                    format!("COINBIT_AGENT{}", i + 1),
                    instance.agent_port.to_string(),
                );
        }
        let mut child = command.spawn().expect("haproxy starts");
        wait_for("HAProxy's stats socket", PATIENCE, || {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.join("haproxy.log")).unwrap_or_default();
                panic!("haproxy exited ({status}): {log}");
            }
            socket.exists().then_some(())
        });
        let balancer = Balancer {
            child,
            addr,
            socket,
            dir,
        };
        for i in 1..=instances.len() {
            balancer.wait_for_state(i, "UP");
        }
        balancer
    }

    /// Server `app{n}`'s status as HAProxy's stats say it (`UP`, `DOWN`, `DRAIN`, `UP 1/2`...).
    fn state(&self, n: usize) -> Option<String> {
        let mut stats = UnixStream::connect(&self.socket).ok()?;
        stats.write_all(b"show stat\n").ok()?;
        let mut csv = String::new();
        stats.read_to_string(&mut csv).ok()?;
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
        let column = |name: &str| header.iter().position(|h| *h == name);
        let (proxy, server, status) = (column("pxname")?, column("svname")?, column("status")?);
        let name = format!("app{n}");
        lines
            .map(|line| line.split(',').collect::<Vec<&str>>())
            .find(|row| {
                row.get(proxy) == Some(&"coinbit") && row.get(server) == Some(&name.as_str())
            })
            .and_then(|row| row.get(status).map(|s| s.to_string()))
    }

    fn wait_for_state(&self, n: usize, wanted: &str) {
        wait_for(&format!("HAProxy to see app{n} {wanted}"), PATIENCE, || {
            (self.state(n)? == wanted).then_some(())
        });
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Clients sending GETs through the balancer on keep-alive connections until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    clients: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let clients = (0..clients)
            .map(|_| {
                let (stop, answered, failed) = (stop.clone(), answered.clone(), failed.clone());
                std::thread::spawn(move || {
                    let mut client = Client::connect(addr);
                    while !stop.load(Ordering::Relaxed) {
                        let response =
                            client.try_request("GET", LOAD_PATH, &[common::OPERATOR], b"");
                        let fine = response.as_ref().is_some_and(|r| r.status == 200);
                        let counter = if fine { &answered } else { &failed };
                        counter.fetch_add(1, Ordering::Relaxed);
                        if !fine {
                            eprintln!("through the balancer: {response:?}");
                        }
                        let closing = response.as_ref().is_none_or(|r| {
                            r.header("connection")
                                .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                        });
                        if closing {
                            client = Client::connect(addr);
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        Load {
            stop,
            answered,
            failed,
            clients,
        }
    }

    /// Waits until `more` further requests have been answered: load kept flowing.
    fn wait_for_answers(&self, more: u64) {
        let target = self.answered.load(Ordering::Relaxed) + more;
        wait_for("answers through the balancer", PATIENCE, || {
            (self.answered.load(Ordering::Relaxed) >= target).then_some(())
        });
    }

    /// Stops the clients; (answered, failed).
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.join().unwrap();
        }
        (
            self.answered.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

fn three_behind_a_balancer(engine: &str) -> (Vec<Instance>, Balancer) {
    let instances: Vec<Instance> = (0..3).map(|_| Instance::start(engine)).collect();
    let balancer = Balancer::start(&instances);
    (instances, balancer)
}

#[apply(engines)]
fn kill_9_of_one_instance_behind_haproxy_fails_no_request(#[case] engine: &str) {
    let (mut instances, balancer) = three_behind_a_balancer(engine);
    let load = Load::start(balancer.addr, 4);
    load.wait_for_answers(300);
    instances[1].server().signal(libc::SIGKILL);
    instances[1].server().wait_exit(PATIENCE);
    balancer.wait_for_state(2, "DOWN");
    load.wait_for_answers(300);
    let (answered, failed) = load.finish();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed",
        answered + failed
    );
}

#[apply(engines)]
fn a_rolling_restart_behind_haproxy_fails_no_request(#[case] engine: &str) {
    let (mut instances, balancer) = three_behind_a_balancer(engine);
    let load = Load::start(balancer.addr, 4);
    load.wait_for_answers(300);
    for (i, instance) in instances.iter_mut().enumerate() {
        instance.server().signal(libc::SIGTERM);
        let status = instance.server().wait_exit(PATIENCE);
        assert_eq!(status.code(), Some(0), "app{} exit", i + 1);
        instance.start_again();
        balancer.wait_for_state(i + 1, "UP");
        load.wait_for_answers(100);
    }
    let (answered, failed) = load.finish();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed",
        answered + failed
    );
}
