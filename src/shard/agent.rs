//! The HAProxy agent check (`agent-check agent-port N`): a small TCP port where each connection
//! gets one line saying what this process's shards are, then is closed.
//!
//! HAProxy reads the line's words: `up` and `down` set the server's operational state, `drain`
//! stops new traffic to it while letting its open sessions finish, and `ready` lifts a `drain`
//! it said before (so a server restarted behind the same address comes back into rotation).
//! The reply is decided by [`reply`], pure; the thread around it only accepts and writes.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::{Control, ShardSlot, ShardState};

/// How often the agent's accept loop looks for a connection or the end of the process.
const POLL: Duration = Duration::from_millis(20);

/// The agent's line: `drain` from SIGTERM on (the process is leaving or shutting down), `down`
/// while no shard runs, else `up ready`.
pub fn reply(leaving: bool, shutting_down: bool, running_shards: usize) -> &'static str {
    if leaving || shutting_down {
        "drain\n"
    } else if running_shards == 0 {
        "down\n"
    } else {
        "up ready\n"
    }
}

/// Binds the agent's port (errors are the caller's to report) and answers on its own thread
/// until every shard has stopped.
pub fn start(
    addr: SocketAddr,
    control: Arc<Control>,
    slots: Vec<Arc<ShardSlot>>,
) -> std::io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("agent".into())
        .spawn(move || serve(&listener, &control, &slots))
}

fn serve(listener: &TcpListener, control: &Control, slots: &[Arc<ShardSlot>]) {
    while !control.shards_stopped() {
        match listener.accept() {
            Ok((mut stream, _)) => {
                let running = slots
                    .iter()
                    .filter(|s| s.state() == ShardState::Running)
                    .count();
                let line = reply(control.is_leaving(), control.is_shutting_down(), running);
                // HAProxy reads what it got; a peer gone already changes nothing here.
                let _ = stream.write_all(line.as_bytes());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(e) => {
                log::warn!("agent check: accept failed: {e}");
                std::thread::sleep(POLL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_gets_its_line() {
        let cases = [
            // leaving, shutting down, running shards -> line
            (false, false, 4, "up ready\n"),
            (false, false, 1, "up ready\n"),
            (false, false, 0, "down\n"),
            (true, false, 4, "drain\n"),
            (true, false, 0, "drain\n"),
            (false, true, 4, "drain\n"),
            (true, true, 0, "drain\n"),
        ];
        for (leaving, shutting_down, running, line) in cases {
            assert_eq!(
                reply(leaving, shutting_down, running),
                line,
                "{leaving} {shutting_down} {running}"
            );
        }
    }
}
