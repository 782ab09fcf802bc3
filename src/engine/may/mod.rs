//! The may engine: stackful coroutines on epoll, for hosts where io_uring is unavailable.
//!
//! may runs one global scheduler; here it has three carrier threads per shard (may calls them
//! its workers; a *worker* elsewhere in this crate is a queue worker), all pinned to the shard's
//! CPU ([`carriers::start`]), and each generation of the shard runs on one of them that proved
//! free ([`carriers::for_generation`]), so that a replacement never queues behind a stuck
//! predecessor. A shard owns its SO_REUSEPORT listener, the connections it accepts, its
//! [`ShardApp`] and its metrics, as under glommio. Its accept loop and its connections are
//! coroutines queued to its generation's carrier, and its listener and each accepted socket are
//! placed so that their readiness wakes that same carrier ([`carriers::place_fd`]). The shard's
//! housekeeping (date, deadlines, activation, draining, crash teardown: the shard's lifecycle)
//! runs on a thread of its own, which only sets flags and wakes coroutines; the supervisor waits
//! for its end or for the monitor's replacement ([`crate::shard::await_exit`]).
//!
//! # Heartbeats
//! The shard's reports are its heartbeat, and they are sent from the generation's carrier, the
//! thread that serves its connections ([`heartbeat`]): a timer whose readiness only that
//! carrier's event loop sees. A carrier wedged by anything (a handler that blocks it, a stuck
//! predecessor's coroutine) sends none, and the monitor replaces the generation; housekeeping,
//! on a thread of its own, could still run and must not be what the monitor hears.
//!
//! # The rule that keeps this sound
//! may may still resume a coroutine on another carrier: a wake-up from outside (a handler's
//! reply arriving from a database thread, housekeeping closing a connection) lands on whichever
//! carrier may picks, and stealing moves queued coroutines where it is built in. So a coroutine
//! holds no reference to per-shard state across a yield point (a socket wait, a parked
//! future). Per-shard state is reached only through [`MayShard::with_app`], whose closure runs
//! the codec synchronously and cannot yield; everything a coroutine keeps across a wait is its
//! own (its socket, its codec state, an `Arc` of the shard). The lock in `with_app` is thus
//! only ever taken by the shard's own carrier in the steady state, uncontended, once per batch
//! of requests read.
//!
//! # Layout
//! - [`carriers`]: may's scheduler as the shards: carrier count, pinning, socket placement.
//! - [`classes`]: the shard's queue tasks on its queue loop, classes taking turns by weight.
//! - [`gate`]: the request gate's turns, one per pass of the carrier's event loop.
//! - [`heartbeat`]: the reports to the monitor, from the generation's carrier.
//! - [`connection`]: one connection's read/advance/write loop around the codec, and the wait
//!   that drives a handler's later reply.
//! - [`stack`]: an idle connection's coroutine gives its dead stack pages back.
//! - [`housekeeping`]: the per-shard timer loop on the generation's housekeeping thread, which
//!   carries out the shard's lifecycle ([`crate::shard::lifecycle`]).

pub mod carriers;
mod classes;
mod connection;
mod gate;
mod heartbeat;
mod housekeeping;
mod stack;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use may::io::{WaitIo, WaitIoWaker};
use may::net::{TcpListener, TcpStream};

use super::{ConnectionSettings, ShardContext};
use crate::app::ShardApp;
use crate::http::BufferPool;
use crate::shard::lifecycle;
use crate::shard::{ShardError, ShardExit, ShardFailure, ShardOperation, ShardState};
use classes::{MayClasses, Next, Wakeups};
use connection::ConnShared;

pub const ENGINE_NAME: &str = "may";

/// Runs one generation of a shard: its coroutines on the generation's carrier
/// ([`carriers::for_generation`]), its housekeeping on a thread of its own, until it stops, dies,
/// or is replaced for missing heartbeats (then that thread is left to end by itself).
pub fn run_shard(ctx: ShardContext) -> ShardExit {
    let control = ctx.control.clone();
    let Some(carrier) =
        carriers::for_generation(ctx.slot.id, ctx.generation, || control.is_shutting_down())
    else {
        let cause = ShardFailure::NoFreeCarrier;
        return ShardExit::Died(ctx.error(ShardOperation::PickCarrier, cause));
    };
    let shard = Arc::new(MayShard::new(ctx.clone(), carrier));
    // The generation's carrier is the shard's thread: its CPU time is the shard's.
    let slot = ctx.slot.clone();
    if let Err(e) = carriers::spawn_on(carrier, move || slot.set_current_thread()) {
        return ShardExit::Died(ctx.error(ShardOperation::StartCoroutine, ShardFailure::Io(e)));
    }
    let name = format!("shard-{}-housekeeping", ctx.slot.id);
    super::run_generation(&ctx, name, move || live(&shard))
}

/// One generation's life on its housekeeping thread: listen (unless parked), keep house, then
/// drain or tear down.
fn live(shard: &Arc<MayShard>) -> ShardExit {
    let failed = |operation| move |e| shard.ctx.error(operation, ShardFailure::Io(e));
    let started = start_queue_loop(shard)
        .map_err(failed(ShardOperation::StartQueueLoop))
        .and_then(|()| gate::start(shard).map_err(failed(ShardOperation::StartRequestGate)))
        .and_then(|()| heartbeat::start(shard).map_err(failed(ShardOperation::StartHeartbeat)));
    let exit = match started.and_then(|()| serve_generation(shard)) {
        Ok(()) => ShardExit::Clean,
        Err(error) => ShardExit::Died(error),
    };
    // The generation's loops end with it, also when one of them could not start.
    shard.queue_loop_stop.store(true, Ordering::Release);
    shard.wakeups.unpark();
    if let Some(fd) = &shard.gate_fd {
        gate::wake(fd);
    }
    exit
}

/// Listens (unless parked), then lives as housekeeping decides.
fn serve_generation(shard: &Arc<MayShard>) -> Result<(), ShardError> {
    if lifecycle::starts_listening(&shard.ctx.control, &shard.ctx.slot) {
        start_listening(shard)
            .map_err(|e| shard.ctx.error(ShardOperation::Listen, ShardFailure::Io(e)))?;
        shard.ctx.slot.set_state(ShardState::Running);
    }
    log::debug!(
        "shard {} serving on CPU {} (may carrier {})",
        shard.ctx.slot.id,
        shard.ctx.slot.cpu,
        shard.carrier
    );
    housekeeping::run(shard)
}

/// An open listener: our own duplicate of its descriptor (for the shutdown, and the slot's),
/// the wake-up of its accept loop, the loop's stop flag and the loop itself.
pub(crate) struct Listening {
    pub fd: OwnedFd,
    pub waker: WaitIoWaker,
    pub stop: Arc<AtomicBool>,
    pub acceptor: may::coroutine::JoinHandle<()>,
}

/// Binds the shard's listener (again), hands the slot its duplicate and starts the accept loop
/// on the generation's carrier.
pub(crate) fn start_listening(shard: &Arc<MayShard>) -> io::Result<()> {
    let ctx = &shard.ctx;
    let listener = bind_listener(
        ctx.listen_addr,
        ctx.config.server.listen_backlog,
        shard.carrier,
    )?;
    // Kept for stopping: a descriptor of our own stays valid whenever the accept loop ends.
    let fd = OwnedFd::from(listener.inner().try_clone()?);
    ctx.slot.set_listener(fd.try_clone().ok());
    let waker = listener.waker();
    let stop = Arc::new(AtomicBool::new(false));
    let acceptor = {
        let (shard, owner, stop) = (shard.clone(), shard.clone(), stop.clone());
        carriers::spawn_on(shard.carrier, move || {
            guarded(&owner, move || accept_loop(&shard, &listener, &stop))
        })
    };
    let acceptor = match acceptor {
        Ok(acceptor) => acceptor,
        Err(e) => {
            ctx.slot.set_listener(None);
            return Err(e);
        }
    };
    *lock(&shard.listening) = Some(Listening {
        fd,
        waker,
        stop,
        acceptor,
    });
    Ok(())
}

/// Starts the coroutine that runs the shard's queue tasks on the generation's carrier.
fn start_queue_loop(shard: &Arc<MayShard>) -> io::Result<()> {
    let (owner, shard) = (shard.clone(), shard.clone());
    carriers::spawn_on(owner.carrier, move || {
        guarded(&owner, move || queue_loop(&shard))
    })
    .map(drop)
}

/// Polls the queue tasks a slice at a time under the app lock, yielding in between, and parks
/// when none is ready. At the end of the generation it drops them.
fn queue_loop(shard: &Arc<MayShard>) {
    shard.wakeups.attach();
    while !shard.queue_loop_stop.load(Ordering::Acquire) {
        // Never blocks on the lock: may resumes a timed park on its timer thread, and a handler
        // holding the lock for long (a stalled shard) must not hold up every timer with it.
        let Some(next) = shard.try_with_local(|local| local.classes.run_slice()) else {
            shard.wakeups.park(classes::PAUSE);
            continue;
        };
        match next {
            Next::Yield => {
                // A thread blocked on the lock (housekeeping, a connection resumed on the other
                // carrier) gets it before the next slice: a busy queue must not stop the
                // shard's heartbeat.
                shard.wakeups.park(classes::PAUSE);
                let until = Instant::now() + classes::SLICE;
                while shard.lock_waiters.load(Ordering::Acquire) > 0 && Instant::now() < until {
                    std::thread::yield_now();
                }
            }
            Next::Park(timer) => {
                let wait = timer.map_or(classes::IDLE_PARK, |at| {
                    at.saturating_duration_since(Instant::now())
                        .min(classes::IDLE_PARK)
                });
                // may's timer thread can miss a park shorter than a couple of milliseconds
                // (measured: seconds late); such a wait is spent in short pauses instead.
                if shard.wakeups.go_idle() {
                    shard.wakeups.park(wait.max(classes::SHORTEST_PARK));
                    shard.wakeups.busy();
                }
            }
        }
    }
    while shard
        .try_with_local(|local| local.classes.clear())
        .is_none()
    {
        shard.wakeups.park(classes::IDLE_PARK);
    }
}

/// The shard's single-threaded state: its app (with its queues) and the queue tasks. Both hold
/// `Rc`s into each other, and the tasks' futures are not `Send`.
pub(crate) struct Local {
    pub app: ShardApp,
    pub classes: Rc<MayClasses>,
}

// SAFETY: a `Local` is only ever reached through the shard's mutex (`MayShard::with_app`,
// `MayShard::try_with_local`), so the `Rc` counts and `RefCell`s inside it, and in the futures of
// its tasks and of a handler's later reply (polled and dropped under the same lock, see
// `connection::await_reply`), are never touched by two threads at once, and each access
// happens-after the previous one through the lock. The wakers they hand out are `Send + Sync`.
unsafe impl Send for Local {}

/// A shard's state, shared by its coroutines and its housekeeping thread.
pub(crate) struct MayShard {
    pub ctx: ShardContext,
    local: Mutex<Local>,
    /// Wakes the queue loop (kept outside the lock: wakers reach it from any thread).
    wakeups: Arc<Wakeups>,
    /// Ends the queue loop (and the request gate's, and the heartbeat) at the end of the
    /// generation.
    queue_loop_stop: AtomicBool,
    /// The request gate's eventfd, when a route has a class ([`gate`]).
    gate_fd: Option<Arc<OwnedFd>>,
    /// Threads blocked on the lock: the queue loop steps aside for them between slices.
    lock_waiters: AtomicUsize,
    pub connections: Mutex<HashMap<u64, Arc<ConnShared>>>,
    next_connection_id: AtomicU64,
    pub settings: ConnectionSettings,
    /// The buffers its connections borrow while they work.
    pub buffers: Arc<BufferPool>,
    /// Deadlines are kept as nanoseconds since this instant (0: none).
    pub epoch: Instant,
    /// Set (to the panic's message) when a coroutine panicked past its own containment: the
    /// shard tears down and restarts.
    crash: Mutex<Option<String>>,
    /// The listener and its accept loop while the shard is active.
    pub listening: Mutex<Option<Listening>>,
    /// The may carrier this generation's coroutines are queued to.
    pub carrier: usize,
}

impl MayShard {
    fn new(ctx: ShardContext, carrier: usize) -> MayShard {
        let classes = MayClasses::new();
        let mut app = ctx
            .apps
            .new_shard_app(ctx.slot.id, ctx.generation, classes.clone());
        let gate_fd = if app.has_route_classes() {
            match gate::new_gate(carrier) {
                Ok((gate, fd)) => {
                    app.set_request_gate(gate);
                    Some(fd)
                }
                Err(e) => {
                    log::error!(
                        "shard {}: no request classes (cannot create the gate's eventfd: {e})",
                        ctx.slot.id
                    );
                    None
                }
            }
        } else {
            None
        };
        MayShard {
            gate_fd,
            wakeups: classes.wakeups.clone(),
            queue_loop_stop: AtomicBool::new(false),
            lock_waiters: AtomicUsize::new(0),
            local: Mutex::new(Local { app, classes }),
            connections: Mutex::new(HashMap::new()),
            next_connection_id: AtomicU64::new(0),
            settings: ConnectionSettings::from_config(&ctx.config),
            buffers: Arc::new(BufferPool::new()),
            epoch: Instant::now(),
            crash: Mutex::new(None),
            listening: Mutex::new(None),
            carrier,
            ctx,
        }
    }

    /// The only way to the shard's app. `f` runs synchronously (the codec, a counter) and
    /// cannot yield, so no reference to the app outlives a yield point: this is where the rule
    /// in the module notes is kept. A crash that unwound through a previous call leaves the
    /// lock poisoned; the app is still consistent enough to count and report while the shard
    /// tears down.
    pub fn with_app<R>(&self, f: impl FnOnce(&mut ShardApp) -> R) -> R {
        f(&mut self.lock_local().app)
    }

    /// The app and the queue tasks, under the same lock as [`MayShard::with_app`], if it is free.
    fn try_with_local<R>(&self, f: impl FnOnce(&mut Local) -> R) -> Option<R> {
        match self.local.try_lock() {
            Ok(mut guard) => Some(f(&mut guard)),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(f(&mut poisoned.into_inner())),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Takes the lock, counted among its waiters while it has to wait.
    fn lock_local(&self) -> MutexGuard<'_, Local> {
        // (The queue loop only ever tries: see `queue_loop`.)
        match self.local.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                self.lock_waiters.fetch_add(1, Ordering::AcqRel);
                let guard = lock(&self.local);
                self.lock_waiters.fetch_sub(1, Ordering::AcqRel);
                guard
            }
        }
    }

    fn record_crash(&self, panic_message: String) {
        lock(&self.crash).get_or_insert(panic_message);
    }

    pub fn crashed(&self) -> Option<String> {
        lock(&self.crash).clone()
    }
}

/// Locks, ignoring poisoning: a panic that crossed a lock is handled as a shard crash.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs a coroutine's body, turning a panic that escaped it into an orderly shard crash.
fn guarded(shard: &Arc<MayShard>, body: impl FnOnce()) {
    if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        shard.record_crash(crate::http::conn::panic_message(payload.as_ref()).to_string());
    }
}

/// A listener of the shard's own, in the port's SO_REUSEPORT group, registered with may so that
/// its readiness wakes `carrier`.
fn bind_listener(addr: SocketAddr, backlog: i32, carrier: usize) -> io::Result<TcpListener> {
    let socket = super::reuseport_socket(addr)?;
    socket.listen(backlog)?;
    let fd = carriers::place_fd(socket.into_raw_fd(), carrier, carriers::count());
    // SAFETY: `fd` is the listening socket's one descriptor; its ownership moves to may.
    Ok(unsafe { TcpListener::from_raw_fd(fd) })
}

fn accept_loop(shard: &Arc<MayShard>, listener: &TcpListener, stop: &AtomicBool) {
    let slot_id = shard.ctx.slot.id;
    let cap = shard.ctx.config.http.max_connections_per_shard;
    let carriers = carriers::count();
    let mut backoff = super::AcceptBackoff::new(slot_id);
    while !stop.load(Ordering::Acquire) {
        let stream = match listener.inner().accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                listener.wait_io();
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                match backoff.failed(&e) {
                    super::AcceptFailed::ListenerShut => break,
                    super::AcceptFailed::Pause(pause) => may::coroutine::sleep(pause),
                }
                continue;
            }
        };
        backoff.accepted();
        let _ = stream.set_nodelay(true);
        let fd = carriers::place_fd(stream.into_raw_fd(), shard.carrier, carriers);
        // SAFETY: `fd` is the accepted socket's one descriptor; may takes it over.
        let stream = unsafe { TcpStream::from_raw_fd(fd) };
        let decision = shard.with_app(|app| app.accept_or_refuse(cap, &shard.ctx.control));
        // One accepted as the listener closes is answered with `Connection: close`, as the
        // others that are finishing (housekeeping marks it at its next tick).
        connection::spawn(shard, stream, decision);
    }
    // The listener closes as the caller drops it.
}

/// A time as nanoseconds since the shard's epoch (at least 1: 0 means none).
pub(crate) fn to_ticks(shard: &MayShard, at: Instant) -> u64 {
    (at.saturating_duration_since(shard.epoch).as_nanos() as u64).max(1)
}
