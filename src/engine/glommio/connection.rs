//! One connection: read into the codec, advance it, write what it produced.

use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::{GlommioShard, Tracked};
use crate::engine::settle_at;
use crate::http::conn::TimeoutKind;
use crate::http::{Connection, Step};

/// What housekeeping reads of a connection, and the drain flag it sets.
#[derive(Default)]
pub(crate) struct ConnShared {
    pub deadline: Cell<Option<(Instant, TimeoutKind)>>,
    /// Nothing buffered or in progress: safe to close at once when draining.
    pub idle: Cell<bool>,
    /// The shard is shutting down: close after the next response.
    pub drain: Cell<bool>,
    /// When the idle spell the task waits in settles ([`crate::engine::SETTLE_AFTER`]); set
    /// while it waits on its receive, cleared by housekeeping when due.
    settle_at: Cell<Option<Instant>>,
    /// Wakes the task waiting for its spell to settle.
    settle_waker: Cell<Option<Waker>>,
}

impl ConnShared {
    /// Housekeeping: wakes the task if its idle spell has settled by `now`.
    pub fn settle_if_due(&self, now: Instant) {
        if self.settle_at.get().is_some_and(|at| at <= now) {
            self.settle_at.set(None);
            if let Some(waker) = self.settle_waker.take() {
                waker.wake();
            }
        }
    }

    /// Resolves when housekeeping finds the spell settled at `at`.
    async fn settled(&self, at: Instant) {
        self.settle_at.set(Some(at));
        std::future::poll_fn(|cx| {
            if self.settle_at.get().is_none() {
                return Poll::Ready(());
            }
            self.settle_waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    /// The wait ended some other way: housekeeping has nothing to wake.
    fn unsettle(&self) {
        self.settle_at.set(None);
        self.settle_waker.set(None);
    }
}

/// Registers and starts a connection's task.
pub(crate) fn spawn(shard: &Rc<GlommioShard>, stream: TcpStream) {
    let id = shard.next_connection_id.get();
    shard.next_connection_id.set(id + 1);
    let shared = Rc::new(ConnShared::default());
    // Accepted while the shard stops accepting (parking or shutdown): it closes after one answer.
    shared.drain.set(shard.stopping.get());
    shard.app.borrow_mut().metrics.connections.open += 1;
    shard.connections.borrow_mut().insert(
        id,
        Tracked {
            shared: shared.clone(),
            task: None,
        },
    );
    let serving = Serving {
        conn: Connection::with_pool(
            shard.settings.limits,
            shard.settings.timeouts,
            Instant::now(),
            shard.buffers.clone(),
        ),
        registration: Registration {
            shard: shard.clone(),
            id,
        },
        stream,
        shared,
        step: Step::Read,
    };
    let task = super::spawn_guarded(shard, serve(serving));
    if let Some(tracked) = shard.connections.borrow_mut().get_mut(&id) {
        tracked.task = Some(task);
    }
}

/// Removes the connection from the shard's table however its task ends (returned or cancelled).
struct Registration {
    shard: Rc<GlommioShard>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shard.connections.borrow_mut().remove(&self.id);
        self.shard.app.borrow_mut().metrics.connections.open -= 1;
    }
}

/// A connection's whole state.
struct Serving {
    registration: Registration,
    stream: TcpStream,
    shared: Rc<ConnShared>,
    conn: Connection,
    step: Step,
}

/// The connection's task. A function returning an `async move` block rather than an `async fn`:
/// an `async fn` moves its argument into a local and keeps room for both, which would hold the
/// connection's state twice in every task (the block uses it in place).
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn serve(mut s: Serving) -> impl std::future::Future<Output = ()> {
    async move {
        let shard = s.registration.shard.clone();
        // A client that stops reading is closed by the write timeout (glommio arms it only when a
        // write would block); the codec's deadlines cover reads only.
        let _ = s
            .stream
            .set_write_timeout(Some(shard.settings.send_timeout));
        loop {
            let wrote = !s.conn.output().is_empty();
            if wrote {
                s.shared.deadline.set(None);
                if s.stream.write_all(s.conn.output()).await.is_err() {
                    return;
                }
                s.conn.clear_output();
            }
            if s.shared.drain.get() {
                s.conn.drain();
            }
            let step = std::mem::replace(&mut s.step, Step::Read);
            s.step = match step {
                Step::Close => {
                    // Boxed: its 4 KiB sink would otherwise be part of every connection's task,
                    // idle ones included (a future is as large as its largest await point).
                    Box::pin(linger_close(&mut s.stream)).await;
                    return;
                }
                Step::Flush => s.conn.advance(&mut *shard.app.borrow_mut(), Instant::now()),
                Step::Read => {
                    s.shared.deadline.set(s.conn.deadline());
                    s.shared.idle.set(s.conn.is_idle());
                    let read =
                        read_some(&shard, &mut s.stream, &mut s.conn, &s.shared, wrote).await;
                    s.shared.idle.set(false);
                    let n = match read {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let now = Instant::now();
                    s.conn.filled(n, now);
                    s.conn.advance(&mut *shard.app.borrow_mut(), now)
                }
                Step::Await(pending) => {
                    s.shared.deadline.set(None);
                    let response = pending.await;
                    if s.shared.drain.get() {
                        s.conn.drain();
                    }
                    s.conn
                        .resume(response, &mut *shard.app.borrow_mut(), Instant::now())
                }
                Step::AwaitTurn(turn) => {
                    s.shared.deadline.set(None);
                    turn.await;
                    s.conn
                        .turn_came(&mut *shard.app.borrow_mut(), Instant::now())
                }
            };
        }
    }
}

/// What glommio's buffer for a pending `recv` peek costs: about a page (it is page-aligned).
/// Freed once the peek's cancellation completes, and given back to the system with the
/// allocator's next trim.
const PEEK_BUFFER_BYTES: u64 = 4096;

/// Reads what the client sent, without arming an io_uring poll when the bytes are already
/// there. glommio's own read arms a one-shot poll after every short read, and its completion,
/// raised on the client's CPU, costs an IPI and task work here: the largest per-request cost in
/// the profile. Right after writing a response the next request has not arrived yet, so the
/// task first lets the shard's other connections run (`yield_first`), then tries a plain
/// non-blocking `recv`; only when that finds nothing does it wait. (An io_uring `recv` peek
/// instead of the plain `recv` contends for the socket lock with the sender's softirq: 10 % of
/// the shard's time, pipelined.) Before the wait the connection gives its buffers back to the
/// shard's pool when they are empty, as nginx does: an idle keep-alive connection holds no
/// buffer of its own.
///
/// The wait is a pending 1-byte `recv` peek on glommio's latency ring, which wakes promptly
/// under load; but glommio gives each `recv` a page-aligned buffer, most of what an idle
/// connection held (4.5 KiB at 15,000). So an idle spell that lasts
/// [`crate::engine::SETTLE_AFTER`] drops its peek and waits on glommio's read instead (a poll
/// on its main ring, no buffer), and pays that ring's later wake-up on one request only.
/// Waiting on the poll from the start had cost p99 6–60 ms at 64 keep-alive connections
/// against 1.2–2.5 ms with the peek (`bench/RESULTS.md`).
async fn read_some(
    shard: &GlommioShard,
    stream: &mut TcpStream,
    conn: &mut Connection,
    shared: &ConnShared,
    yield_first: bool,
) -> std::io::Result<usize> {
    if yield_first {
        futures_lite::future::yield_now().await;
    }
    loop {
        let buf = conn.read_buf();
        // SAFETY: `buf` is valid for writes of its length; the descriptor is the stream's own.
        let n = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::WouldBlock {
            return Err(error);
        }
        conn.release_buffers();
        let settle = settle_at(conn.deadline(), shard.settings.timeouts.keep_alive);
        let mut peek = [0u8; 1];
        // Wait until at least a byte is there; the next pass reads it. A ready peek wins a
        // tie: it is polled first.
        let peeked = match settle {
            None => Some(stream.peek(&mut peek).await),
            Some(at) => {
                let peeked =
                    futures_lite::future::or(async { Some(stream.peek(&mut peek).await) }, async {
                        shared.settled(at).await;
                        None
                    })
                    .await;
                shared.unsettle();
                peeked
            }
        };
        match peeked {
            Some(peeked) => {
                if peeked? == 0 {
                    return Ok(0);
                }
            }
            None => {
                shard.app.borrow_mut().metrics.connections.idle_settles += 1;
                shard.buffers.count_freed(PEEK_BUFFER_BYTES);
                // Settled: the peek (cancelled with its buffer) gives way to a read that waits
                // on a poll and takes the first byte into the task; the rest follows on the
                // next pass.
                let mut first = [0u8; 1];
                if stream.read(&mut first).await? == 0 {
                    return Ok(0);
                }
                conn.read_buf()[0] = first[0];
                return Ok(1);
            }
        }
    }
}

/// Half-closes and reads what the client still sends (briefly), so that closing with unread
/// bytes does not reset the connection before the client has read our last response.
pub(crate) async fn linger_close(stream: &mut TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write).await;
    let _ = stream.set_read_timeout(Some(crate::engine::LINGER_TIME));
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < crate::engine::LINGER_BYTES {
        match stream.read(&mut sink).await {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::mem::size_of;

    use super::*;

    fn size_of_serve<F: Future>(_: fn(Serving) -> F) -> usize {
        size_of::<F>()
    }

    fn size_of_read_some<'a, F: Future + 'a>(
        _: fn(&'a GlommioShard, &'a mut TcpStream, &'a mut Connection, &'a ConnShared, bool) -> F,
    ) -> usize {
        size_of::<F>()
    }

    /// Every connection's task holds this future: its state once, plus the deepest wait's
    /// (an `async fn serve` held the state twice, 1,192 bytes where 808 do).
    #[test]
    fn a_connection_task_holds_its_state_once() {
        let serve = size_of_serve(serve);
        let state = size_of::<Serving>();
        let read = size_of_read_some(read_some);
        assert!(
            serve <= state + read + 64,
            "serve's future is {serve} bytes for {state} of state and a {read}-byte read"
        );
    }

    /// The panic guard adds its shard pointer to the task, not a second copy of it: the future
    /// measured is built as `spawn_guarded` builds it.
    #[test]
    fn the_panic_guard_wraps_the_task_in_place() {
        fn sizes<F: Future<Output = ()>>(_: fn(Serving) -> F) -> (usize, usize) {
            (size_of::<super::super::Guarded<F>>(), size_of::<F>())
        }
        let (guarded, task) = sizes(serve);
        assert!(
            guarded <= task + 32,
            "guarded {guarded} bytes around {task}"
        );
    }
}
