//! One connection's HTTP/1.1 state machine, independent of any socket.
//!
//! The engine loop is:
//! ```text
//! loop {
//!     match conn.advance(&mut service, now) {
//!         Step::Read => { write conn.output(); read into conn.read_buf(); conn.filled(n, now) }
//!         Step::Flush => write conn.output(),
//!         Step::Await(future) => { write conn.output(); conn.resume(future.await, ..) }
//!         Step::AwaitTurn(turn) => { write conn.output(); turn.await; conn.turn_came(..) }
//!         Step::Close => { write conn.output(); close }
//!     }
//! }
//! ```
//! and, beside it, a timer that closes the connection once [`Connection::deadline`] has passed.

use std::future::Future;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::HttpError;
use super::parse::{header_slots, parse_head};
use super::pool::BufferPool;
use super::request::{Method, Request};
use super::response::{ConnectionHeader, PendingResponse, Reply, Response, StatusCode};

/// Size limits on what a client may send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_request_line: usize,
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
}

/// How long a client may take.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From the first byte of a request until it is complete (slow clients, slowloris).
    pub header_read: Duration,
    /// Between requests on a keep-alive connection.
    pub keep_alive: Duration,
}

/// What the connection's requests are served by: the app, from the codec's point of view.
pub trait Service {
    /// Answers one request.
    fn call(&mut self, request: &Request<'_>) -> Reply;
    /// The cached `Date` header value.
    fn date(&self) -> &[u8];
    /// The codec refused a request before routing it.
    fn rejected(&mut self, error: &HttpError);
    /// `count` responses became ready `latency` after their requests arrived.
    fn responded(&mut self, count: u64, latency: Duration);
    /// Asked before [`Service::call`]: `None` lets the request run now; a future makes it wait
    /// for its class's turn ([`Step::AwaitTurn`]), after which it is called without asking again.
    fn turn_wait(&mut self, _request: &Request<'_>) -> Option<TurnWait> {
        None
    }
}

/// A request's wait for its turn to run (see [`Service::turn_wait`]).
pub type TurnWait = Pin<Box<dyn Future<Output = ()>>>;

/// A panic payload that is not contained to one request: it takes the whole shard down, so the
/// supervisor restarts it. Only the debug routes raise it.
#[derive(Debug)]
pub struct EscalatePanic(pub &'static str);

/// What the engine must do next.
pub enum Step {
    /// Write [`Connection::output`] (if any), then read more bytes.
    Read,
    /// Write [`Connection::output`] (it grew large), then call `advance` again.
    Flush,
    /// Write [`Connection::output`], await the future, and hand its response to `resume`.
    Await(PendingResponse),
    /// Write [`Connection::output`], await the request's turn, then call `turn_came`.
    AwaitTurn(TurnWait),
    /// Write [`Connection::output`], then close the connection.
    Close,
}

/// Why a connection's deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    /// A request was started and not finished in time.
    RequestRead,
    /// No request came on an idle keep-alive connection.
    Idle,
}

/// Output is flushed once it passes this size even if more pipelined requests are buffered.
const FLUSH_AT: usize = 64 * 1024;
/// Space offered to each read (a pooled read buffer holds a request head and one such read).
const MIN_READ: usize = 8 * 1024;
/// A body is given at most this much more room per read than it has already filled.
const BODY_GROWTH: usize = 64 * 1024;
/// An idle connection whose buffer grew past this (a large body) frees it even when its engine
/// keeps it between requests.
const SHRINK_ABOVE: usize = 64 * 1024;
const INTERIM_CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How one request's response is framed and whether the connection goes on after it.
#[derive(Debug, Clone, Copy)]
struct Exchange {
    head_only: bool,
    keep_alive: bool,
    /// HTTP/1.0: persistence has to be announced.
    http10: bool,
}

impl Exchange {
    /// An error response that ends the connection.
    const CLOSING: Exchange = Exchange {
        head_only: false,
        keep_alive: false,
        http10: false,
    };
}

struct Awaiting {
    exchange: Exchange,
    since: Instant,
}

pub struct Connection {
    limits: Limits,
    timeouts: Timeouts,
    /// Where the buffers come from and go back to: the shard's.
    pool: Arc<BufferPool>,
    /// Read buffer, borrowed from the pool (empty while not held); unparsed bytes are
    /// `buf[start..end]`. Always initialised; grows for large requests and is freed once they
    /// are answered.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Write buffer, borrowed from the pool while `holds_out`.
    out: Vec<u8>,
    holds_out: bool,
    /// A response that ends the connection has been queued.
    closing: bool,
    /// The server is shutting down: the next response closes the connection.
    draining: bool,
    /// When the first byte of the request being received arrived.
    request_started: Option<Instant>,
    last_activity: Instant,
    continue_sent: bool,
    awaiting: Option<Awaiting>,
    /// Responses encoded in this `advance` call, recorded together when it returns.
    batch: u64,
    /// The buffered request waits for its turn ([`Step::AwaitTurn`]); when its bytes were read.
    awaiting_turn_since: Option<Instant>,
    /// The buffered request's turn came: it runs without asking again.
    had_its_turn: bool,
}

impl Connection {
    /// A connection with a pool of its own (tests, fuzzing): engines use [`Connection::with_pool`].
    pub fn new(limits: Limits, timeouts: Timeouts, now: Instant) -> Self {
        Self::with_pool(limits, timeouts, now, Arc::new(BufferPool::new()))
    }

    /// A connection that borrows its buffers from `pool` (the shard's) while it works.
    pub fn with_pool(
        limits: Limits,
        timeouts: Timeouts,
        now: Instant,
        pool: Arc<BufferPool>,
    ) -> Self {
        Connection {
            limits,
            timeouts,
            pool,
            buf: Vec::new(),
            start: 0,
            end: 0,
            out: Vec::new(),
            holds_out: false,
            closing: false,
            draining: false,
            request_started: None,
            last_activity: now,
            continue_sent: false,
            awaiting: None,
            batch: 0,
            awaiting_turn_since: None,
            had_its_turn: false,
        }
    }

    /// Free space to read into (at least 8 KiB), in a buffer borrowed from the pool if none is
    /// held.
    pub fn read_buf(&mut self) -> &mut [u8] {
        self.make_room(MIN_READ);
        &mut self.buf[self.end..]
    }

    /// Gives the buffers back to the pool when nothing is in them: the engine calls it before it
    /// waits for the client, so that an idle keep-alive connection holds no buffer. Keeps the
    /// read buffer while it holds part of a request, the write buffer while it holds output.
    pub fn release_buffers(&mut self) {
        if self.start == self.end && !self.buf.is_empty() {
            self.start = 0;
            self.end = 0;
            self.pool.give_read(std::mem::take(&mut self.buf));
        }
        if self.holds_out && self.out.is_empty() && self.awaiting.is_none() {
            self.holds_out = false;
            self.pool.give_write(std::mem::take(&mut self.out));
        }
    }

    /// Whether the connection holds a read buffer now.
    pub fn holds_read_buffer(&self) -> bool {
        !self.buf.is_empty()
    }

    /// `n` bytes were read into [`Connection::read_buf`].
    pub fn filled(&mut self, n: usize, now: Instant) {
        self.end += n;
        self.last_activity = now;
        if n > 0 && self.request_started.is_none() {
            self.request_started = Some(now);
        }
    }

    /// Bytes to write before the next read or close.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// The output was written.
    pub fn clear_output(&mut self) {
        self.out.clear();
    }

    /// Stop keeping the connection alive: the next response says `Connection: close`.
    pub fn drain(&mut self) {
        self.draining = true;
    }

    /// No request is buffered, in progress or awaited: closing now loses nothing.
    pub fn is_idle(&self) -> bool {
        self.start == self.end && self.awaiting.is_none() && self.out.is_empty()
    }

    /// When the connection must be closed if nothing changes, and why; `None` while a handler
    /// is still working on a response.
    pub fn deadline(&self) -> Option<(Instant, TimeoutKind)> {
        if self.awaiting.is_some() || self.awaiting_turn_since.is_some() {
            return None;
        }
        Some(match self.request_started {
            Some(started) => (
                started + self.timeouts.header_read,
                TimeoutKind::RequestRead,
            ),
            None => (
                self.last_activity + self.timeouts.keep_alive,
                TimeoutKind::Idle,
            ),
        })
    }

    /// Parses and answers every complete request in the buffer. `now` is when the last read
    /// completed; response latency is measured from it.
    pub fn advance<S: Service>(&mut self, service: &mut S, now: Instant) -> Step {
        self.advance_from(service, now, now)
    }

    /// `advance`, with the latency of the responses it encodes counted from `latency_from`.
    fn advance_from<S: Service>(
        &mut self,
        service: &mut S,
        now: Instant,
        latency_from: Instant,
    ) -> Step {
        let step = self.process(service, now);
        if self.batch > 0 {
            service.responded(self.batch, latency_from.elapsed());
            self.batch = 0;
        }
        step
    }

    /// Hands over the response of a [`Step::Await`], then goes on like `advance`.
    pub fn resume<S: Service>(
        &mut self,
        response: Response,
        service: &mut S,
        now: Instant,
    ) -> Step {
        let awaiting = self
            .awaiting
            .take()
            .expect("resume without a pending response");
        self.queue(&response, service.date(), awaiting.exchange);
        // Recorded on its own: its latency runs from when it was handed to the handler.
        self.batch -= 1;
        service.responded(1, awaiting.since.elapsed());
        self.advance(service, now)
    }

    /// The turn awaited by a [`Step::AwaitTurn`] came: runs the request, then goes on like `advance`.
    /// Its latency runs from when its bytes were read: the wait is part of it.
    pub fn turn_came<S: Service>(&mut self, service: &mut S, now: Instant) -> Step {
        let read_at = self
            .awaiting_turn_since
            .take()
            .expect("a turn came without a request waiting");
        self.had_its_turn = true;
        self.advance_from(service, now, read_at)
    }

    fn process<S: Service>(&mut self, service: &mut S, now: Instant) -> Step {
        loop {
            if self.closing {
                return Step::Close;
            }
            if self.out.len() >= FLUSH_AT {
                return Step::Flush;
            }
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
                if self.buf.len() > SHRINK_ABOVE {
                    self.pool.give_read(std::mem::take(&mut self.buf));
                }
                self.request_started = None;
                self.last_activity = now;
                return if self.draining {
                    Step::Close
                } else {
                    Step::Read
                };
            }
            self.request_started.get_or_insert(now);
            match self.next_request(service) {
                Next::NeedBytes => return Step::Read,
                Next::Answered => {}
                Next::Await(future) => return Step::Await(future),
                Next::AwaitTurn(turn) => {
                    self.awaiting_turn_since = Some(now);
                    return Step::AwaitTurn(turn);
                }
            }
        }
    }

    fn next_request<S: Service>(&mut self, service: &mut S) -> Next {
        let mut slots = header_slots();
        let data = &self.buf[self.start..self.end];
        let head = match parse_head(data, &self.limits, &mut slots) {
            Ok(Some(head)) => head,
            Ok(None) => {
                self.make_room(0);
                return Next::NeedBytes;
            }
            Err(error) => {
                service.rejected(&error);
                let response = error.response();
                self.closing = true;
                self.queue(&response, service.date(), Exchange::CLOSING);
                return Next::Answered;
            }
        };
        let total = head.head_len + head.content_length;
        if data.len() < total {
            let expect_continue = head.expect_continue;
            if expect_continue && !self.continue_sent {
                self.hold_out();
                self.out.extend_from_slice(INTERIM_CONTINUE);
                self.continue_sent = true;
            }
            // Room for the body as it arrives, not for what the client declared.
            let pending = self.end - self.start;
            self.make_room(total.min(pending + BODY_GROWTH));
            return Next::NeedBytes;
        }
        let request = Request {
            method: head.method,
            path: head.path,
            query: head.query,
            headers: head.headers,
            body: &data[head.head_len..total],
            keep_alive: head.keep_alive && !self.draining,
        };
        let exchange = Exchange {
            head_only: request.method == Method::Head,
            keep_alive: request.keep_alive,
            http10: head.http10,
        };
        if !std::mem::take(&mut self.had_its_turn) {
            if let Some(turn) = service.turn_wait(&request) {
                // The request stays buffered, parsed again when its turn comes.
                return Next::AwaitTurn(turn);
            }
        }
        let reply = catch_unwind(AssertUnwindSafe(|| service.call(&request)));
        self.start += total;
        self.request_started = None;
        self.continue_sent = false;
        let response = match reply {
            Ok(Reply::Ready(response)) => response,
            Ok(Reply::Later(future)) => {
                self.awaiting = Some(Awaiting {
                    exchange,
                    since: Instant::now(),
                });
                return Next::Await(future);
            }
            Err(payload) if payload.is::<EscalatePanic>() => resume_unwind(payload),
            Err(payload) => {
                log::error!("handler panicked: {}", panic_message(payload.as_ref()));
                Response::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the request could not be completed",
                )
            }
        };
        self.queue(&response, service.date(), exchange);
        Next::Answered
    }

    fn queue(&mut self, response: &Response, date: &[u8], exchange: Exchange) {
        self.hold_out();
        let close = !exchange.keep_alive || self.draining;
        let connection = match (close, exchange.http10) {
            (true, _) => ConnectionHeader::Close,
            (false, true) => ConnectionHeader::KeepAlive,
            (false, false) => ConnectionHeader::Omit,
        };
        response.encode(&mut self.out, date, exchange.head_only, connection);
        self.closing |= close;
        self.batch += 1;
    }

    /// Ensures `buf` can hold `need` unparsed bytes (the request being received) plus a read of
    /// `MIN_READ`, moving the unparsed bytes to the front when that is enough.
    fn make_room(&mut self, need: usize) {
        if self.buf.is_empty() {
            self.buf = self.pool.take_read();
        }
        let pending = self.end - self.start;
        let wanted = pending.max(need) + MIN_READ;
        if self.buf.len() - self.start >= wanted {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = pending;
        }
        if self.buf.len() < wanted {
            self.buf.resize(wanted.next_power_of_two(), 0);
        }
    }
}

impl Connection {
    /// Borrows a write buffer unless one is held.
    fn hold_out(&mut self) {
        if !self.holds_out {
            self.out = self.pool.take_write();
            self.holds_out = true;
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.pool.give_read(std::mem::take(&mut self.buf));
        }
        if self.holds_out {
            self.pool.give_write(std::mem::take(&mut self.out));
        }
    }
}

enum Next {
    NeedBytes,
    Answered,
    Await(PendingResponse),
    AwaitTurn(TurnWait),
}

/// The message of a panic payload, for logs.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .or_else(|| payload.downcast_ref::<EscalatePanic>().map(|e| e.0))
        .unwrap_or("(non-text panic payload)")
}

#[cfg(test)]
mod tests;
