//! One connection: read into the codec, advance it, write what it produced.
//!
//! Every socket operation is a non-blocking call on the socket itself; when it would block, the
//! coroutine publishes its deadline and idleness for housekeeping and waits on the socket with
//! `wait_io`, which parks the coroutine (never the carrier). Housekeeping wakes that wait when a
//! deadline passes, when draining finds the connection idle, or when the shard aborts; the
//! coroutine then decides for itself, from its own codec state.

use std::future::Future;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use may::io::{WaitIo, WaitIoWaker};
use may::net::TcpStream;

use super::stack::StackTop;
use super::{carriers, guarded, lock, to_ticks, MayShard};
use crate::app::AcceptDecision;
use crate::engine::{settle_at, LINGER_BYTES, LINGER_TIME};
use crate::http::{Connection, Step};

/// What housekeeping reads of a connection, the flags it sets, and how it wakes the coroutine.
pub(crate) struct ConnShared {
    waker: WaitIoWaker,
    /// When housekeeping must wake the coroutine, as shard ticks (0: no deadline).
    deadline: AtomicU64,
    /// Nothing buffered or in progress: safe to close at once when draining.
    pub idle: AtomicBool,
    /// The shard is shutting down or deactivated: close after the next response.
    pub drain: AtomicBool,
    /// The shard is shutting down: close now if idle. (Not when deactivated: the client of an
    /// idle keep-alive connection may be sending its next request, which must be answered.)
    pub close_idle: AtomicBool,
    /// The shard crashed or its shutdown deadline passed: close now.
    pub abort: AtomicBool,
}

impl ConnShared {
    fn new(waker: WaitIoWaker) -> Self {
        ConnShared {
            waker,
            deadline: AtomicU64::new(0),
            idle: AtomicBool::new(false),
            drain: AtomicBool::new(false),
            close_idle: AtomicBool::new(false),
            abort: AtomicBool::new(false),
        }
    }

    /// Wakes the coroutine if it waits on its socket (or makes its next wait return at once).
    pub fn wake(&self) {
        self.waker.wakeup();
    }

    /// Takes the deadline if it has passed (so that it wakes the coroutine once).
    pub fn take_expired(&self, now_ticks: u64) -> bool {
        let at = self.deadline.load(Ordering::Acquire);
        at != 0
            && at <= now_ticks
            && self
                .deadline
                .compare_exchange(at, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    fn publish(&self, deadline_ticks: u64, idle: bool) {
        self.deadline.store(deadline_ticks, Ordering::Release);
        self.idle.store(idle, Ordering::Release);
    }

    fn must_close(&self, idle: bool) -> bool {
        self.abort.load(Ordering::Acquire) || (idle && self.close_idle.load(Ordering::Acquire))
    }
}

/// Registers a connection and starts its coroutine on the generation's carrier: one that serves it,
/// or, for a connection refused, one that writes the refusal (a 503) and closes.
pub(crate) fn spawn(shard: &Arc<MayShard>, stream: TcpStream, decision: AcceptDecision) {
    let id = shard.next_connection_id.fetch_add(1, Ordering::Relaxed);
    let served = decision == AcceptDecision::Serve;
    let shared = Arc::new(ConnShared::new(stream.waker()));
    if served {
        shard.with_app(|app| app.metrics.connections.open += 1);
    }
    lock(&shard.connections).insert(id, shared.clone());
    let registration = Registration {
        shard: shard.clone(),
        id,
        counted: served,
    };
    let owner = shard.clone();
    let spawned = carriers::spawn_on(shard.carrier, move || {
        guarded(&owner, move || match decision {
            AcceptDecision::Serve => serve(registration, stream, shared),
            AcceptDecision::Refuse(out) => refuse(registration, stream, shared, &out),
        })
    });
    if let Err(e) = spawned {
        // The closure, and with it the registration and the socket, is dropped.
        log::warn!(
            "shard {}: cannot start a connection coroutine: {e}",
            shard.ctx.slot.id
        );
    }
}

/// Removes the connection from the shard's table however its coroutine ends.
struct Registration {
    shard: Arc<MayShard>,
    id: u64,
    /// Counted among the open connections (not a 503 past the cap).
    counted: bool,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.shard.connections).remove(&self.id);
        if self.counted {
            self.shard.with_app(|app| app.metrics.connections.open -= 1);
        }
    }
}

fn serve(registration: Registration, mut stream: TcpStream, shared: Arc<ConnShared>) {
    // An `Arc` of the shard is the coroutine's own; the app behind it is reached only through
    // `with_app`, never held across the waits below.
    let shard = registration.shard.clone();
    let settings = shard.settings;
    let stack = StackTop::here();
    let mut conn = Connection::with_pool(
        settings.limits,
        settings.timeouts,
        Instant::now(),
        shard.buffers.clone(),
    );
    let mut step = Step::Read;
    // The last read left the socket empty: the next one would only say so.
    let mut drained = false;
    // How a handler's later reply, or a request's turn, resumes this coroutine.
    let waker = Waker::from(Arc::new(SocketWake(stream.waker())));
    loop {
        if !conn.output().is_empty() {
            match write_all(&shard, &mut stream, &shared, conn.output()) {
                // A wait consumes the socket's pending wake-up, which may have been for bytes:
                // the next read must look.
                Ok(waited) => drained &= !waited,
                Err(_) => {
                    // A turn or a reply still awaited may hold the shard's `Rc`s: it is
                    // dropped under the app lock, as everywhere else.
                    shard.with_app(move |_| drop(step));
                    return;
                }
            }
            conn.clear_output();
        }
        if shared.drain.load(Ordering::Acquire) {
            conn.drain();
        }
        step = match step {
            Step::Close => {
                linger_close(&shard, &mut stream, &shared);
                return;
            }
            Step::Flush => shard.with_app(|app| conn.advance(app, Instant::now())),
            Step::Read => {
                let Some((n, emptied)) = read_some(
                    &shard,
                    &mut stream,
                    &shared,
                    &mut conn,
                    drained,
                    stack.as_ref(),
                ) else {
                    return;
                };
                drained = emptied;
                let now = Instant::now();
                conn.filled(n, now);
                shard.with_app(|app| conn.advance(app, now))
            }
            Step::Await(pending) => {
                drained = false;
                let Some((response, _)) = await_future(&shard, pending, &stream, &shared, &waker)
                else {
                    return;
                };
                if shared.drain.load(Ordering::Acquire) {
                    conn.drain();
                }
                shard.with_app(|app| conn.resume(response, app, Instant::now()))
            }
            Step::AwaitTurn(turn) => {
                let Some(((), socket_woke)) = await_future(&shard, turn, &stream, &shared, &waker)
                else {
                    return;
                };
                drained &= !socket_woke;
                shard.with_app(|app| conn.turn_came(app, Instant::now()))
            }
        };
    }
}

/// Reads what the client sent: the byte count, and whether that read emptied the socket.
/// `None` when the connection must close (EOF, error, a passed deadline, shutdown while idle,
/// abort).
///
/// After a read that returned less than it was offered the socket was empty, so `drained`
/// skips straight to the wait instead of a `recv` that would return `EAGAIN` (one system call
/// per request saved, as nginx does). No wake-up is lost: `wait_io` returns at once when an
/// edge arrived since the last wait, which covers bytes that came after that read.
///
/// An idle connection still silent [`crate::engine::SETTLE_AFTER`] into its idle spell gives its dead
/// stack pages back (housekeeping wakes it then, as for a deadline), once per idle spell.
fn read_some(
    shard: &MayShard,
    stream: &mut TcpStream,
    shared: &ConnShared,
    conn: &mut Connection,
    mut drained: bool,
    stack: Option<&StackTop>,
) -> Option<(usize, bool)> {
    let mut woken = false;
    // This idle spell's trim is done, or there is none to do.
    let mut trimmed = stack.is_none();
    loop {
        if !drained {
            let buf = conn.read_buf();
            let offered = buf.len();
            match stream.inner_mut().read(buf) {
                Ok(0) => return None,
                Ok(n) => return Some((n, n < offered)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return None,
            }
        }
        drained = false;
        let deadline = conn.deadline();
        let trim_at = settle_at(deadline, shard.settings.timeouts.keep_alive).filter(|_| !trimmed);
        // Only a wake-up without bytes can mean the deadline passed (housekeeping wakes the
        // wait at the deadline published below): no clock read on the first pass.
        let mut trim_due = false;
        if woken {
            let now = Instant::now();
            if let Some((_, kind)) = deadline.filter(|(at, _)| now >= *at) {
                shard.with_app(|app| app.count_timeout(kind));
                return None;
            }
            trim_due = trim_at.is_some_and(|trim| now >= trim);
        }
        let idle = conn.is_idle();
        if shared.must_close(idle) {
            return None;
        }
        if let (true, Some(stack)) = (trim_due, stack) {
            trimmed = true;
            // The bottom first: its frame reaches below the waiting one.
            if stack.trim_bottom() + stack.trim_below_caller() > 0 {
                shard.with_app(|app| app.metrics.connections.idle_settles += 1);
            }
        }
        let wake_at = match (deadline, trim_at) {
            (Some((at, _)), Some(trim)) if !trimmed => Some(at.min(trim)),
            (deadline, _) => deadline.map(|(at, _)| at),
        };
        shared.publish(wake_at.map_or(0, |at| to_ticks(shard, at)), idle);
        // Nothing to read now: the buffers go back to the shard's pool while the client is
        // silent (kept when they hold part of a request).
        conn.release_buffers();
        stream.wait_io();
        shared.publish(0, false);
        woken = true;
    }
}

/// Writes all of `buf`; says whether it had to wait for the socket. A client that accepts
/// nothing for the send timeout is dropped.
fn write_all(
    shard: &MayShard,
    stream: &mut TcpStream,
    shared: &ConnShared,
    mut buf: &[u8],
) -> io::Result<bool> {
    let mut deadline = None;
    let mut waited = false;
    while !buf.is_empty() {
        match stream.inner_mut().write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                deadline = None;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let at =
                    *deadline.get_or_insert_with(|| Instant::now() + shard.settings.send_timeout);
                if Instant::now() >= at || shared.must_close(false) {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                shared.publish(to_ticks(shard, at), false);
                stream.wait_io();
                shared.publish(0, false);
                waited = true;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(waited)
}

/// Wakes the coroutine's socket wait: how a handler's reply, completed on another thread,
/// resumes the coroutine.
struct SocketWake(WaitIoWaker);

impl Wake for SocketWake {
    fn wake(self: Arc<Self>) {
        self.0.wakeup();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.wakeup();
    }
}

/// The bit may's [`WaitIoWaker::wakeup`] sets in what `wait_io` returns; epoll readiness sets
/// the event bits below it.
const WAKER_BIT: usize = 0x8000_0000;

/// Drives a handler's later reply (or a request's wait for its turn) to its end, parking the
/// coroutine (not the carrier) between polls. The future may hold the shard's queues (an `Rc`),
/// so it is polled and dropped only under the app lock ([`MayShard::with_app`]), whichever carrier
/// may resumes the coroutine on. Socket readiness wakes the wait too; that is only a spurious
/// poll, but it is said (the `bool`): the next read must then look at the socket. `None` when
/// the shard aborts the connection meanwhile.
fn await_future<T>(
    shard: &MayShard,
    pending: Pin<Box<dyn Future<Output = T>>>,
    stream: &TcpStream,
    shared: &ConnShared,
    waker: &Waker,
) -> Option<(T, bool)> {
    let mut cx = Context::from_waker(waker);
    let mut pending = Some(pending);
    let mut socket_woke = false;
    loop {
        let poll = shard.with_app(|_| {
            let future = pending.as_mut().expect("polled until ready");
            let poll = future.as_mut().poll(&mut cx);
            if poll.is_ready() {
                pending = None;
            }
            poll
        });
        if let Poll::Ready(value) = poll {
            return Some((value, socket_woke));
        }
        if shared.abort.load(Ordering::Acquire) {
            shard.with_app(|_| drop(pending.take()));
            return None;
        }
        socket_woke |= stream.wait_io() & !WAKER_BIT != 0;
    }
}

/// A new connection refused (past the per-shard cap, or memory critical): the response, then
/// close.
fn refuse(registration: Registration, mut stream: TcpStream, shared: Arc<ConnShared>, out: &[u8]) {
    let shard = registration.shard.clone();
    if write_all(&shard, &mut stream, &shared, out).is_ok() {
        linger_close(&shard, &mut stream, &shared);
    }
}

/// Half-closes and reads what the client still sends (briefly), so that closing with unread
/// bytes does not reset the connection before the client has read our last response.
fn linger_close(shard: &MayShard, stream: &mut TcpStream, shared: &ConnShared) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let until = Instant::now() + LINGER_TIME;
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < LINGER_BYTES {
        match stream.inner_mut().read(&mut sink) {
            Ok(0) => break,
            Ok(n) => drained += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= until || shared.abort.load(Ordering::Acquire) {
                    break;
                }
                shared.publish(to_ticks(shard, until), false);
                stream.wait_io();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}
