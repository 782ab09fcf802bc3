//! The glommio engine: one `LocalExecutor` per shard thread, on io_uring.
//!
//! A shard owns its SO_REUSEPORT listener, every connection it accepts, its [`ShardApp`] and its
//! metrics. Three kinds of task share the executor: the accept loop, one task per connection, and
//! the housekeeping loop (date, deadlines, reports, shutdown). They share state through `Rc` and
//! `RefCell` on one thread: no locks.
//!
//! # Layout
//! - [`connection`]: one connection's read/advance/write loop around the codec.
//! - [`housekeeping`]: the per-shard timer loop: deadlines, date, metrics reports, and the
//!   shard's lifecycle ([`crate::shard::lifecycle`]) carried out: activation, draining, teardown.
//! - [`classes`]: the priority classes as task queues with shares.

mod classes;
mod connection;
mod housekeeping;

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};

use super::{ConnectionSettings, ShardContext};
use crate::app::{AcceptDecision, ShardApp};
use crate::http::BufferPool;
use crate::shard::lifecycle;
use crate::shard::{ShardError, ShardExit, ShardFailure, ShardOperation, ShardState};
use classes::GlommioClasses;
use connection::ConnShared;

pub const ENGINE_NAME: &str = "glommio";

/// Runs one generation of a shard on its own pinned thread until it stops, dies, or is replaced
/// for missing heartbeats (then its thread is left to end by itself).
pub fn run_shard(ctx: ShardContext) -> ShardExit {
    let name = format!("shard-{}", ctx.slot.id);
    let cpu = ctx.slot.cpu;
    let reaped = ctx.clone();
    // Pinning is done with core_affinity inside the thread, as for every engine.
    let spawned = LocalExecutorBuilder::new(Placement::Unbound)
        .name(&name)
        .spawn(move || async move {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                log::warn!("could not pin {name} to CPU {cpu}");
            }
            shard_main(ctx).await
        });
    let handle = match spawned {
        Ok(handle) => handle,
        Err(e) => {
            let cause = ShardFailure::Io(e.into());
            return ShardExit::Died(reaped.error(ShardOperation::StartExecutor, cause));
        }
    };
    let name = format!("reaper-{}", reaped.slot.id);
    let ctx = reaped.clone();
    super::run_generation(&reaped, name, move || match handle.join() {
        Ok(Ok(())) => ShardExit::Clean,
        Ok(Err(error)) => ShardExit::Died(error),
        Err(e) => {
            let cause = ShardFailure::ThreadEnded(e.to_string());
            ShardExit::Died(ctx.error(ShardOperation::Serve, cause))
        }
    })
}

/// A shard's state, shared by its tasks on its one thread.
pub(crate) struct GlommioShard {
    pub ctx: ShardContext,
    pub app: RefCell<ShardApp>,
    pub connections: RefCell<HashMap<u64, Tracked>>,
    pub next_connection_id: std::cell::Cell<u64>,
    pub settings: ConnectionSettings,
    /// The buffers its connections borrow while they work.
    pub buffers: Arc<BufferPool>,
    /// Set (to the panic's message) when a task panicked past its own containment: the shard
    /// tears down and restarts.
    pub crash: RefCell<Option<String>>,
    /// The shard stops accepting: the accept loop ends at its next wake-up.
    pub stopping: std::cell::Cell<bool>,
    /// The listener and its accept loop while the shard is active.
    pub listening: RefCell<Option<Listening>>,
}

/// An open listener: our own duplicate of its descriptor (for the shutdown) and the accept loop.
pub(crate) struct Listening {
    fd: OwnedFd,
    acceptor: glommio::task::JoinHandle<()>,
}

impl GlommioShard {
    fn record_crash(&self, panic_message: String) {
        self.crash.borrow_mut().get_or_insert(panic_message);
    }
}

/// Spawns a task whose panic is caught and turned into an orderly shard crash: the shard then
/// closes its listener and connections (a panic unwinding through the executor would leak them)
/// and the supervisor starts a fresh one on the same core.
pub(crate) fn spawn_guarded(
    shard: &Rc<GlommioShard>,
    task: impl std::future::Future<Output = ()> + 'static,
) -> glommio::task::JoinHandle<()> {
    glommio::spawn_local(Guarded {
        shard: shard.clone(),
        task: futures_lite::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(task)),
    })
    .detach()
}

pin_project_lite::pin_project! {
    /// A task that records its panic as the shard's crash. A named future, not an `async fn`:
    /// an `async fn` that awaits a future it took by value keeps room for that future twice (its
    /// argument and the awaited value), which doubled every connection's task (2.4 KiB, measured
    /// with heaptrack at 5,000 idle connections).
    struct Guarded<F> {
        shard: Rc<GlommioShard>,
        #[pin]
        task: futures_lite::future::CatchUnwind<std::panic::AssertUnwindSafe<F>>,
    }
}

impl<F: std::future::Future<Output = ()>> std::future::Future for Guarded<F> {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let this = self.project();
        this.task.poll(cx).map(|outcome| {
            if let Err(payload) = outcome {
                this.shard
                    .record_crash(crate::http::conn::panic_message(payload.as_ref()).to_string());
            }
        })
    }
}

/// What housekeeping knows of a live connection.
pub(crate) struct Tracked {
    pub shared: Rc<ConnShared>,
    pub task: Option<glommio::task::JoinHandle<()>>,
}

impl Tracked {
    /// Schedules the connection's task to be dropped (which closes the socket).
    pub fn cancel(&self) {
        if let Some(task) = &self.task {
            task.cancel();
        }
    }
}

/// One generation on its executor: listen (unless parked), then live as housekeeping decides.
async fn shard_main(ctx: ShardContext) -> Result<(), ShardError> {
    ctx.slot.set_current_thread();
    let classes = GlommioClasses::new();
    let shard = Rc::new(GlommioShard {
        app: RefCell::new(ctx.apps.new_shard_app(ctx.slot.id, ctx.generation, classes)),
        connections: RefCell::new(HashMap::new()),
        next_connection_id: std::cell::Cell::new(0),
        settings: ConnectionSettings::from_config(&ctx.config),
        buffers: Arc::new(BufferPool::new()),
        crash: RefCell::new(None),
        stopping: std::cell::Cell::new(false),
        listening: RefCell::new(None),
        ctx,
    });
    classes::start_request_turns(&shard);
    if lifecycle::starts_listening(&shard.ctx.control, &shard.ctx.slot) {
        start_listening(&shard)
            .map_err(|e| shard.ctx.error(ShardOperation::Listen, ShardFailure::Io(e)))?;
        shard.ctx.slot.set_state(ShardState::Running);
    }
    log::debug!(
        "shard {} serving on CPU {}",
        shard.ctx.slot.id,
        shard.ctx.slot.cpu
    );
    housekeeping::run(&shard).await
}

/// Stops the accept loop and closes the listener, losing no connection the kernel handed over.
///
/// glommio accepts through an io_uring op that keeps the socket open in the kernel after the
/// task drops it: cancelling the task would leak a connection whose accept had completed but
/// not been reaped. So the socket is shut down first (which takes it out of the SO_REUSEPORT
/// group at once and fails the pending accept), and the loop is let run to its end; a
/// connection it still receives is served and closed after its answer. Cancelling is the
/// fallback.
pub(crate) async fn stop_accepting(shard: &GlommioShard, listening: Listening) {
    let Listening {
        fd: listener,
        mut acceptor,
    } = listening;
    shard.stopping.set(true);
    // SAFETY: shutdown on a descriptor we own.
    unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
    // A replaced generation must not take its successor's listener out of the slot.
    if !shard.ctx.slot.is_superseded(shard.ctx.generation) {
        shard.ctx.slot.set_listener(None);
    }
    let ended = futures_lite::future::or(
        async {
            let _ = (&mut acceptor).await;
            true
        },
        async {
            glommio::timer::sleep(Duration::from_millis(500)).await;
            false
        },
    )
    .await;
    if !ended {
        log::warn!(
            "shard {}: the accept loop did not stop; cancelling it",
            shard.ctx.slot.id
        );
        acceptor.cancel();
        let _ = acceptor.await;
    }
}

/// Binds the shard's listener (again) and starts its accept loop.
pub(crate) fn start_listening(shard: &Rc<GlommioShard>) -> io::Result<()> {
    let (listener, fd) = bind_listener(
        shard.ctx.listen_addr,
        shard.ctx.config.server.listen_backlog,
    )?;
    shard.ctx.slot.set_listener(fd.try_clone().ok());
    shard.stopping.set(false);
    let acceptor = spawn_guarded(shard, accept_loop(shard.clone(), listener));
    *shard.listening.borrow_mut() = Some(Listening { fd, acceptor });
    Ok(())
}

/// A listener of the shard's own, in the port's SO_REUSEPORT group.
/// Also returns a duplicate of its descriptor (glommio's listener exposes none) for the
/// shutdown: a descriptor of our own stays valid even if the listener was already dropped.
fn bind_listener(addr: SocketAddr, backlog: i32) -> io::Result<(TcpListener, OwnedFd)> {
    let socket = super::reuseport_socket(addr)?;
    socket.set_nonblocking(true)?;
    socket.listen(backlog)?;
    let handle = socket.try_clone()?.into();
    // SAFETY: the descriptor is a listening TCP socket whose ownership moves to glommio.
    Ok((
        unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) },
        handle,
    ))
}

async fn accept_loop(shard: Rc<GlommioShard>, listener: TcpListener) {
    let cap = shard.ctx.config.http.max_connections_per_shard;
    let mut backoff = super::AcceptBackoff::new(shard.ctx.slot.id);
    loop {
        let accepted = listener.accept().await;
        if shard.stopping.get() {
            // The kernel handed over one more connection as the listener closed: serve it like
            // the others that are finishing (it is answered with `Connection: close`).
            if let Ok(stream) = accepted {
                connection::spawn(&shard, stream);
            }
            return;
        }
        let stream = match accepted {
            Ok(stream) => stream,
            Err(e) => match backoff.failed(&e.into()) {
                super::AcceptFailed::ListenerShut => return,
                super::AcceptFailed::Pause(pause) => {
                    glommio::timer::sleep(pause).await;
                    continue;
                }
            },
        };
        backoff.accepted();
        let _ = stream.set_nodelay(true);
        let decision = shard
            .app
            .borrow_mut()
            .accept_or_refuse(cap, &shard.ctx.control);
        if let AcceptDecision::Refuse(out) = decision {
            glommio::spawn_local(refuse(shard.clone(), stream, out)).detach();
            continue;
        }
        connection::spawn(&shard, stream);
    }
}

/// A new connection refused (past the per-shard cap, or memory critical): the response, then
/// close.
async fn refuse(shard: Rc<GlommioShard>, mut stream: TcpStream, out: Vec<u8>) {
    use futures_lite::AsyncWriteExt;
    let _ = stream.set_write_timeout(Some(shard.settings.send_timeout));
    if stream.write_all(&out).await.is_ok() {
        connection::linger_close(&mut stream).await;
    }
}
