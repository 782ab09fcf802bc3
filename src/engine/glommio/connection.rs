//! One connection: read into the codec, advance it, write what it produced.

use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Instant;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::{GlommioShard, Tracked};
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

async fn serve(mut s: Serving) {
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
                let read = read_some(&mut s.stream, &mut s.conn, wrote).await;
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

/// Reads what the client sent, without arming an io_uring poll when the bytes are already
/// there. glommio's own read arms a one-shot poll after every short read, and its completion,
/// raised on the client's CPU, costs an IPI and task work here: the largest per-request cost in
/// the profile. Right after writing a response the next request has not arrived yet, so the
/// task first lets the shard's other connections run (`yield_first`), then tries a plain
/// non-blocking `recv`; only when that finds nothing does it fall back to glommio's read, which
/// waits on a poll. (An io_uring `recv` peek instead contends for the socket lock with the
/// sender's softirq: 10 % of the shard's time, pipelined.) Before that wait the connection
/// gives its buffers back to the shard's pool when they are empty, as nginx does: an idle
/// keep-alive connection holds no buffer, only its task and its pending 1-byte peek.
///
/// That peek is most of what an idle connection costs (4.7 KiB at 15,000): glommio gives each
/// one a page-aligned buffer. Waiting on glommio's poll instead (a one-byte read) costs 1.9 KiB,
/// but glommio queues polls on its main ring, where receives go on its latency ring: p99 at 64
/// keep-alive connections went from 1.2–2.5 ms to 6–60 ms (`bench/RESULTS.md`). The peek stays.
async fn read_some(
    stream: &mut TcpStream,
    conn: &mut Connection,
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
        // Wait until at least a byte is there; the next pass reads it.
        if stream.peek(&mut [0u8; 1]).await? == 0 {
            return Ok(0);
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
