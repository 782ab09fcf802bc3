//! One keep-alive connection: non-blocking connect (optionally from a chosen source address),
//! a write buffer of pipelined requests, a read buffer split into responses by the sans-I/O
//! parser, and the queue of requests waiting for their answer.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};

use super::parser::{ParseError, ResponseParser, Step};
use crate::stats::ErrorKind;

const READ_BUF: usize = 16 * 1024;

/// A request written and waiting for its response.
#[derive(Clone, Copy, Debug)]
pub struct InFlight {
    pub endpoint: u16,
    pub user: u32,
    /// When the schedule (or the virtual user) wanted it sent.
    pub intended: Instant,
    /// When it was actually written.
    pub sent: Instant,
}

/// A request that has a connection but is not written yet (closed model: the connection is
/// still connecting or reconnecting).
#[derive(Clone, Copy, Debug)]
pub struct Pending {
    pub endpoint: u16,
    pub user: u32,
    pub intended: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Not connected; may reconnect at `retry_at`.
    Closed {
        retry_at: Instant,
    },
    Connecting {
        since: Instant,
    },
    Open,
}

/// A finished response, handed back to the client thread.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub req: InFlight,
    pub status: u16,
}

/// Why a connection had to be dropped.
#[derive(Debug)]
pub struct ConnFailure {
    pub kind: ErrorKind,
    pub detail: String,
}

impl From<io::Error> for ConnFailure {
    fn from(e: io::Error) -> Self {
        ConnFailure {
            kind: ErrorKind::from_io(&e),
            detail: e.to_string(),
        }
    }
}

impl From<ParseError> for ConnFailure {
    fn from(e: ParseError) -> Self {
        ConnFailure {
            kind: ErrorKind::BadResponse,
            detail: e.0,
        }
    }
}

/// What a read produced besides completions.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReadOutcome {
    /// The server ended the connection cleanly (Connection: close or EOF between responses).
    pub closed: bool,
}

pub struct Conn {
    pub stream: Option<TcpStream>,
    pub state: State,
    pub bind: Option<IpAddr>,
    pub inflight: VecDeque<InFlight>,
    pub pending: VecDeque<Pending>,
    /// When the connection last gained room for another request.
    pub free_since: Instant,
    /// Listed in the client thread's free-connection stack (open model).
    pub in_free_list: bool,
    /// The connection should be kept open (it has had users or it serves the open model).
    pub wanted: bool,
    /// Listed in the client thread's to-flush list.
    pub dirty: bool,
    /// Next reconnect delay after a failed connect.
    backoff: Duration,
    rbuf: Vec<u8>,
    rlen: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    parser: ResponseParser,
}

impl Conn {
    pub fn new(bind: Option<IpAddr>, now: Instant) -> Conn {
        Conn {
            stream: None,
            state: State::Closed { retry_at: now },
            bind,
            inflight: VecDeque::new(),
            pending: VecDeque::new(),
            free_since: now,
            in_free_list: false,
            wanted: false,
            dirty: false,
            backoff: Duration::from_millis(10),
            rbuf: vec![0; READ_BUF],
            rlen: 0,
            wbuf: Vec::with_capacity(1024),
            wpos: 0,
            parser: ResponseParser::default(),
        }
    }

    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Starts a non-blocking connect. The caller registers the stream.
    pub fn start_connect(&mut self, target: SocketAddr, now: Instant) -> io::Result<()> {
        let socket = Socket::new(
            Domain::for_address(target),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_nonblocking(true)?;
        socket.set_nodelay(true)?;
        if let Some(ip) = self.bind {
            set_bind_address_no_port(&socket);
            socket.bind(&SocketAddr::new(ip, 0).into())?;
        }
        match socket.connect(&target.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        self.stream = Some(TcpStream::from_std(socket.into()));
        self.state = State::Connecting { since: now };
        Ok(())
    }

    /// Checks a connecting socket after a poll event: `Ok(true)` once connected.
    pub fn finish_connect(&mut self, now: Instant) -> io::Result<bool> {
        let Some(s) = self.stream.as_ref() else {
            return Ok(false);
        };
        if let Some(e) = s.take_error()? {
            return Err(e);
        }
        match s.peer_addr() {
            Ok(_) => {
                self.state = State::Open;
                self.backoff = Duration::from_millis(10);
                self.free_since = now;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Drops the socket and buffers. A failed connect backs off (10 ms doubling to 1 s);
    /// anything else may reconnect at once.
    pub fn close(&mut self, now: Instant, connect_failed: bool) {
        self.stream = None;
        let delay = if connect_failed {
            let d = self.backoff;
            self.backoff = (self.backoff * 2).min(Duration::from_secs(1));
            d
        } else {
            Duration::ZERO
        };
        self.state = State::Closed {
            retry_at: now + delay,
        };
        self.rlen = 0;
        self.wbuf.clear();
        self.wpos = 0;
        self.parser = ResponseParser::default();
    }

    /// The buffer new requests are appended to.
    pub fn wbuf(&mut self) -> &mut Vec<u8> {
        &mut self.wbuf
    }

    /// Writes as much of the buffered requests as the socket takes.
    pub fn flush(&mut self) -> io::Result<()> {
        let Some(s) = self.stream.as_mut() else {
            return Ok(());
        };
        while self.wpos < self.wbuf.len() {
            match s.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        Ok(())
    }

    /// Reads what the socket has and splits it into responses, appending one [`Completion`]
    /// per response to `out`. `is_head(endpoint)` says which requests were HEADs.
    pub fn read_responses(
        &mut self,
        out: &mut Vec<Completion>,
        is_head: &dyn Fn(u16) -> bool,
    ) -> Result<ReadOutcome, ConnFailure> {
        let mut outcome = ReadOutcome::default();
        loop {
            let Some(s) = self.stream.as_mut() else {
                return Ok(outcome);
            };
            if self.rlen == self.rbuf.len() {
                // Only a partial head fills the buffer; bodies are consumed as they arrive.
                let grown = self.rbuf.len() * 2;
                self.rbuf.resize(grown, 0);
            }
            let n = match s.read(&mut self.rbuf[self.rlen..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(outcome),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                if let Some(Step::Done { status, .. }) = self.parser.eof() {
                    self.complete(status, out)?;
                }
                if self.parser.mid_response() || !self.inflight.is_empty() {
                    return Err(ConnFailure {
                        kind: ErrorKind::Reset,
                        detail: "server closed the connection with a request outstanding".into(),
                    });
                }
                outcome.closed = true;
                return Ok(outcome);
            }
            let room = self.rbuf.len() - self.rlen;
            self.rlen += n;
            let mut pos = 0;
            while pos < self.rlen {
                let head = self.inflight.front().is_some_and(|r| is_head(r.endpoint));
                let (used, step) = self.parser.advance(&self.rbuf[pos..self.rlen], head)?;
                pos += used;
                match step {
                    Step::NeedMore => break,
                    Step::Done { status, close } => {
                        self.complete(status, out)?;
                        if close {
                            outcome.closed = true;
                            self.rlen = 0;
                            return Ok(outcome);
                        }
                    }
                }
            }
            if pos == self.rlen {
                self.rlen = 0;
            } else if pos > 0 {
                self.rbuf.copy_within(pos..self.rlen, 0);
                self.rlen -= pos;
            }
            if n < room {
                // A short read drained the socket; epoll reports the next arrival.
                return Ok(outcome);
            }
        }
    }

    fn complete(&mut self, status: u16, out: &mut Vec<Completion>) -> Result<(), ConnFailure> {
        let req = self.inflight.pop_front().ok_or_else(|| ConnFailure {
            kind: ErrorKind::BadResponse,
            detail: "response without a request".into(),
        })?;
        out.push(Completion { req, status });
        Ok(())
    }
}

/// Lets many connections share one source address and port range: the kernel picks the port
/// at connect time, per destination, instead of at bind time.
fn set_bind_address_no_port(socket: &Socket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: valid socket descriptor, option value points at a live c_int of the given size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
