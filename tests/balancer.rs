//! Behind a load balancer: the drain on SIGTERM (`DRAIN_DELAY`, the agent check) and HAProxy
//! (deploy/haproxy.cfg) in front of three real instances, losing no request when one is killed
//! or when all are restarted one after the other.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use rstest::rstest;
use rstest_reuse::{self, apply};

use common::{engines, wait_for, Server};

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
