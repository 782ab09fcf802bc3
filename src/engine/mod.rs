//! Engines: the event loops that move bytes and time for the shards.
//!
//! An engine accepts connections on its shard's listener, reads into the codec's buffer, writes
//! what the codec produced, runs the timers the codec asks for, and sends the shard's metrics to
//! the monitor. Everything above the socket is the app's, through [`crate::http::Service`].
//! For the shard's priority queues an engine also implements [`crate::queue::QueueRuntime`]
//! (a task per class with its CPU share, timers), and, when a route has a class, takes the turns
//! of the shard's request gate once per pass of its event loop ([`crate::queue::gate`]) and
//! awaits a request's turn ([`crate::http::Step::AwaitTurn`]).
//!
//! What both engines need (the choice of engine, the connection settings, a generation's thread
//! and its end, sending metrics reports, timer periods) lives here; what a generation does at each
//! tick is decided once in [`crate::shard::lifecycle`]; each engine's folder holds only what is
//! its own. The app is built, decides on each accepted connection and assembles its reports
//! itself ([`crate::app::AppFactory`], [`ShardApp::accept_or_refuse`], [`ShardApp::report`]); an
//! engine only calls it.
//!
//! What every engine must also do for the monitor:
//! - obey [`crate::shard::Control::is_active`] every tick (close the listener, let connections
//!   finish and park; bind again when reactivated) and
//!   [`crate::shard::Control::refuse_new_connections`] at accept (503 + `Retry-After`, through
//!   [`ShardApp::accept_or_refuse`]);
//! - hand the slot a duplicate of its listener's descriptor ([`ShardSlot::set_listener`]), run
//!   its shard on a thread whose end is reported through a channel to
//!   [`crate::shard::await_exit`], and end a generation that [`ShardSlot::is_superseded`]
//!   reports replaced (the monitor replaces a shard that stops sending heartbeats).
//!
//! # Layout
//! - [`glommio`]: io_uring via glommio, one `LocalExecutor` per pinned shard thread.
//! - [`may`]: epoll via may's stackful coroutines, three carrier threads pinned to each shard's
//!   CPU (a generation runs on one that is free).
//! - [`preflight`]: start-up checks of what an engine needs from the kernel.

pub mod glommio;
pub mod may;
pub mod preflight;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::Sender;

use crate::app::{AppFactory, ShardApp};
use crate::config::{Config, EngineKind};
use crate::http::conn::TimeoutKind;
use crate::http::{BufferPool, Limits, Timeouts};
use crate::metrics::ShardReport;
use crate::shard::{Control, ShardError, ShardExit, ShardFailure, ShardOperation, ShardSlot};
use preflight::PreflightError;

/// An engine the shards can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Glommio,
    May,
}

/// The engine `auto` takes where both work: the faster one in `bench/RESULTS.md` ("Two
/// engines"): on one core, may served `GET /health` at 1.0–1.2x glommio's rate keep-alive
/// and 1.2x pipelined, level with the bare may_minihttp server.
pub const AUTO_PREFERS: Engine = Engine::May;

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Glommio => glommio::ENGINE_NAME,
            Engine::May => may::ENGINE_NAME,
        }
    }

    /// Runs one generation of a shard until it stops or dies (blocks the calling thread).
    /// During shutdown no generation follows: the shard's job inbox is closed, so that another
    /// shard still draining answers a request for it at once instead of waiting for it.
    pub fn run_shard(self, ctx: ShardContext) -> ShardExit {
        let (id, mesh, control) = (ctx.slot.id, ctx.apps.mesh.clone(), ctx.control.clone());
        let exit = match self {
            Engine::Glommio => glommio::run_shard(ctx),
            Engine::May => may::run_shard(ctx),
        };
        if control.is_shutting_down() {
            mesh.close_inbox(id);
            log::info!("shard {id} stopped; its job inbox is closed");
        }
        exit
    }
}

/// Picks the engine for `kind`, given what the glommio preflight found, and says why.
/// An explicit `glommio` that cannot run is an error; `auto` then falls back to may.
pub fn choose(
    kind: EngineKind,
    glommio_preflight: Result<(), PreflightError>,
) -> Result<(Engine, String), PreflightError> {
    match (kind, glommio_preflight) {
        (EngineKind::Glommio, Ok(())) => Ok((Engine::Glommio, "asked for with --engine".into())),
        (EngineKind::Glommio, Err(e)) => Err(e),
        (EngineKind::May, _) => Ok((Engine::May, "asked for with --engine".into())),
        (EngineKind::Auto, Ok(())) => Ok((
            AUTO_PREFERS,
            format!(
                "auto: io_uring and locked memory allow both engines; {} is the faster (bench/RESULTS.md)",
                AUTO_PREFERS.name()
            ),
        )),
        (EngineKind::Auto, Err(e)) => Ok((Engine::May, format!("auto: glommio cannot run: {e}"))),
    }
}

/// How often the shards' housekeeping runs: coarse enough to cost nothing, fine enough for
/// second-scale timeouts and a prompt shutdown.
pub const TICK: Duration = Duration::from_millis(50);
/// How long an idle keep-alive connection stays silent before it moves to its engine's cheapest
/// wait: may's coroutine gives its dead stack pages back, glommio's task trades its pending
/// receive (and the page-aligned buffer glommio gives each one) for a readiness poll. Far above
/// the gap between two requests on a busy connection, which never pays for it (the spell is
/// counted from the last answer, so one answer that takes a second to write to a slow reader
/// also settles); a client that sends a request every second or more pays a little on its next request (page faults on may,
/// a poll on glommio's main ring, which wakes later under load than a receive on its latency
/// ring).
pub const SETTLE_AFTER: Duration = Duration::from_secs(1);

/// When an idle spell settles ([`SETTLE_AFTER`] into it), from the connection's current
/// deadline: the idle deadline is the spell's start plus the keep-alive timeout, so no clock
/// read is needed. `None` when the connection is not idle (a request in progress has another
/// deadline) or the keep-alive timeout ends the spell first.
pub fn settle_at(
    deadline: Option<(Instant, TimeoutKind)>,
    keep_alive: Duration,
) -> Option<Instant> {
    match deadline {
        Some((at, TimeoutKind::Idle)) => at
            .checked_sub(keep_alive)
            .map(|since| since + SETTLE_AFTER)
            .filter(|settle| *settle < at),
        _ => None,
    }
}

/// How often draining checks whether the last connection has gone.
pub const DRAIN_POLL: Duration = Duration::from_millis(10);
/// Closing: how much the client may still send, and for how long, before the socket closes.
pub const LINGER_BYTES: usize = 256 * 1024;
pub const LINGER_TIME: Duration = Duration::from_millis(500);
/// Pause after a failed accept (out of descriptors), doubled on each failure in a row up to
/// [`ACCEPT_BACKOFF_MAX`]: back off rather than spin.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long a crashed shard waits for its connections to go before it restarts.
pub const ABORT_WAIT: Duration = Duration::from_secs(1);

/// The codec's limits and timeouts, and the write timeout the engine enforces itself.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionSettings {
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub send_timeout: Duration,
}

impl ConnectionSettings {
    pub fn from_config(config: &Config) -> Self {
        let http = &config.http;
        ConnectionSettings {
            limits: Limits {
                max_request_line: http.max_request_line_bytes,
                max_header_bytes: http.max_header_bytes,
                max_body_bytes: http.max_body_bytes,
            },
            timeouts: Timeouts {
                header_read: Duration::from_millis(http.header_read_timeout_ms),
                keep_alive: Duration::from_millis(http.keep_alive_timeout_ms),
            },
            send_timeout: Duration::from_millis(http.send_timeout_ms),
        }
    }
}

/// What an accept loop does after a failed accept.
#[derive(Debug, PartialEq, Eq)]
pub enum AcceptFailed {
    /// The listener was shut down (by the shard stopping, or by the slot when the monitor
    /// replaced the generation) or closed: the loop ends.
    ListenerShut,
    /// A transient failure (out of descriptors or memory, a connection reset while queued):
    /// pause this long, then accept again.
    Pause(Duration),
}

/// The accept loop's answer to failed accepts: the pause grows while they keep failing and
/// starts again from [`ACCEPT_BACKOFF`] after an accept that worked.
#[derive(Debug)]
pub struct AcceptBackoff {
    shard: usize,
    pause: Duration,
}

impl AcceptBackoff {
    pub fn new(shard: usize) -> Self {
        AcceptBackoff {
            shard,
            pause: ACCEPT_BACKOFF,
        }
    }

    pub fn accepted(&mut self) {
        self.pause = ACCEPT_BACKOFF;
    }

    /// Decides (and logs) what follows the failed accept `error`.
    pub fn failed(&mut self, error: &io::Error) -> AcceptFailed {
        // accept(2) on a listening socket that was shut down: EINVAL; closed: EBADF.
        if matches!(error.raw_os_error(), Some(libc::EINVAL | libc::EBADF)) {
            log::debug!("shard {}: listener shut; accept loop ends", self.shard);
            return AcceptFailed::ListenerShut;
        }
        let pause = self.pause;
        log::warn!(
            "shard {}: accept failed: {error}; retrying in {pause:?}",
            self.shard
        );
        self.pause = (pause * 2).min(ACCEPT_BACKOFF_MAX);
        AcceptFailed::Pause(pause)
    }
}

/// Runs one generation's `life` on a thread of its own and waits for its end through
/// [`crate::shard::await_exit`], so that a generation the monitor replaces (its thread may be
/// stuck) is left to end by itself while its successor starts.
pub fn run_generation(
    ctx: &ShardContext,
    name: String,
    life: impl FnOnce() -> ShardExit + Send + 'static,
) -> ShardExit {
    let (exit, exited) = crossbeam::channel::bounded(1);
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let _ = exit.send(life());
    });
    if let Err(e) = spawned {
        return ShardExit::Died(ctx.error(ShardOperation::StartThread, ShardFailure::Io(e)));
    }
    crate::shard::await_exit(&ctx.slot, ctx.generation, &exited)
}

/// Sends the shard's metrics to the monitor, with the read buffers its connections hold. A full
/// channel means the monitor is behind; the next report carries the counters anyway. Then, when
/// many connections closed or many buffers were freed since the last time, frees the pool's
/// spare buffers beyond a few and gives the freed memory back to the system
/// ([`crate::http::pool::trim_allocator`]).
pub fn send_report(app: &mut ShardApp, ctx: &ShardContext, now: Instant, buffers: &BufferPool) {
    app.metrics.connections.read_buffers = buffers.read_lent();
    let report = app.report(ctx.generation, ctx.slot.tid(), now);
    let _ = ctx.reports.try_send(report);
    if buffers.trim_due(app.metrics.connections.open) {
        buffers.shed();
        crate::http::pool::trim_allocator();
    }
}

/// A TCP socket bound to `addr` in the port's SO_REUSEPORT group (not yet listening): every
/// shard's listener, and the port reservation that holds the port while none listens.
pub fn reuseport_socket(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_port(true)?;
    socket.set_reuse_address(true)?;
    socket
        .bind(&addr.into())
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot bind {addr}: {e}")))?;
    Ok(socket)
}

/// Everything one run of a shard needs, whatever the engine.
#[derive(Clone)]
pub struct ShardContext {
    pub slot: Arc<ShardSlot>,
    pub generation: u64,
    pub config: Arc<Config>,
    pub listen_addr: SocketAddr,
    pub control: Arc<Control>,
    pub reports: Sender<ShardReport>,
    /// Builds the shard's app (the queues' mesh in it is kept across shard restarts).
    pub apps: Arc<AppFactory>,
}

impl ShardContext {
    /// This generation's failure while doing `operation`.
    pub fn error(&self, operation: ShardOperation, cause: ShardFailure) -> ShardError {
        ShardError::new(self.slot.id, self.generation, operation, cause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_choice() {
        let refused = || PreflightError::IoUringUnavailable {
            reason: "blocked".into(),
        };
        let cases = [
            (EngineKind::Glommio, Ok(()), Some(Engine::Glommio)),
            (EngineKind::Glommio, Err(refused()), None),
            (EngineKind::May, Ok(()), Some(Engine::May)),
            (EngineKind::May, Err(refused()), Some(Engine::May)),
            (EngineKind::Auto, Ok(()), Some(AUTO_PREFERS)),
            (EngineKind::Auto, Err(refused()), Some(Engine::May)),
        ];
        for (kind, preflight, expected) in cases {
            let chosen = choose(kind, preflight.clone());
            assert_eq!(
                chosen.as_ref().ok().map(|c| c.0),
                expected,
                "{kind:?} {preflight:?}"
            );
        }
        let (_, why) = choose(EngineKind::Auto, Err(refused())).unwrap();
        assert!(why.contains("io_uring is unavailable (blocked)"), "{why}");
    }

    #[test]
    fn a_shut_listener_ends_the_accept_loop_and_other_failures_back_off() {
        let mut backoff = AcceptBackoff::new(0);
        for shut in [libc::EINVAL, libc::EBADF] {
            assert_eq!(
                backoff.failed(&io::Error::from_raw_os_error(shut)),
                AcceptFailed::ListenerShut
            );
        }
        let out_of_descriptors = io::Error::from_raw_os_error(libc::EMFILE);
        let pauses: Vec<AcceptFailed> = (0..9)
            .map(|_| backoff.failed(&out_of_descriptors))
            .collect();
        let ms = |n| AcceptFailed::Pause(Duration::from_millis(n));
        assert_eq!(
            pauses,
            [
                ms(10),
                ms(20),
                ms(40),
                ms(80),
                ms(160),
                ms(320),
                ms(640),
                ms(1000),
                ms(1000)
            ]
        );
        backoff.accepted();
        assert_eq!(backoff.failed(&out_of_descriptors), ms(10));
    }
}
