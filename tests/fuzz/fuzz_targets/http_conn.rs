//! The HTTP codec (`coinbit::http::Connection`) on arbitrary bytes, cut into reads at points the
//! input chooses.
//!
//! Input layout: byte 0 is how many cut points follow (at most 15), then two bytes each (an offset
//! into the stream, modulo its length); the rest is the byte stream a client sends. A seed that
//! starts with `\0` is a plain stream.
//!
//! Checked on every input:
//! - nothing panics;
//! - each request the service was called for is answered exactly once, in request order (the
//!   service numbers its answers), plus at most one refusal, which ends the connection;
//! - the service never sees a request past the configured limits;
//! - `responded` counts exactly the responses written;
//! - the stream read in one piece and read in the chosen pieces gives the same answers (`100
//!   Continue` aside: it is sent only while a body is still missing), and a refusal with the
//!   same status.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use coinbit::http::{
    TurnWait, Connection, HttpError, Limits, Method, Reply, Request, Response, Service,
    StatusCode, Step, Timeouts,
};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_request_line: 256,
    max_header_bytes: 512,
    max_body_bytes: 128,
};
const TIMEOUTS: Timeouts = Timeouts {
    header_read: Duration::from_secs(10),
    keep_alive: Duration::from_secs(10),
};
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Answers each request with its sequence number; `/later...` answers through a future and
/// `/admit...` waits for an (immediate) turn first, so those paths of the codec run too.
#[derive(Default)]
struct Numbering {
    calls: u64,
    /// Per call: whether it was a HEAD request (its answer has no body).
    head_only: Vec<bool>,
    rejected: u64,
    responded: u64,
}

impl Service for Numbering {
    fn call(&mut self, request: &Request<'_>) -> Reply {
        check_within_limits(request);
        let response =
            Response::json(StatusCode::OK, "{}").with_header("X-Seq", self.calls.to_string());
        self.calls += 1;
        self.head_only.push(request.method == Method::Head);
        if request.path.starts_with("/later") {
            Reply::Later(Box::pin(async move { response }))
        } else {
            response.into()
        }
    }
    fn date(&self) -> &[u8] {
        b"Sun, 06 Nov 1994 08:49:37 GMT"
    }
    fn rejected(&mut self, _error: &HttpError) {
        self.rejected += 1;
    }
    fn responded(&mut self, count: u64, _latency: Duration) {
        self.responded += count;
    }
    fn turn_wait(&mut self, request: &Request<'_>) -> Option<TurnWait> {
        request
            .path
            .starts_with("/admit")
            .then(|| Box::pin(async {}) as TurnWait)
    }
}

fn check_within_limits(request: &Request<'_>) {
    assert!(
        request.body.len() <= LIMITS.max_body_bytes,
        "body past the limit"
    );
    let target = request.path.len() + request.query.map_or(0, |q| q.len() + 1);
    assert!(
        target <= LIMITS.max_request_line,
        "request line past the limit"
    );
    // The header fields are private to the codec: their limits are checked through the
    // refusals (431) the seeds cover, not here.
}

/// Polls a future that is ready at once (every future the fake service hands out is).
fn ready<T>(future: impl Future<Output = T>) -> T {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(value) => value,
        Poll::Pending => panic!("the fake service's futures are always ready"),
    }
}

/// What a client reading the connection saw.
struct Transcript {
    output: Vec<u8>,
    service: Numbering,
}

/// Feeds `stream` cut at `cuts` (sorted offsets) and drives the codec the way an engine does.
fn run(stream: &[u8], cuts: &[usize]) -> Transcript {
    let now = Instant::now();
    let mut conn = Connection::new(LIMITS, TIMEOUTS, now);
    let mut service = Numbering::default();
    let mut output = Vec::new();
    let mut pieces = Vec::new();
    let mut from = 0;
    for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
        if cut > from {
            pieces.push(&stream[from..cut]);
            from = cut;
        }
    }
    'pieces: for mut piece in pieces {
        while !piece.is_empty() {
            let buf = conn.read_buf();
            let n = buf.len().min(piece.len());
            buf[..n].copy_from_slice(&piece[..n]);
            piece = &piece[n..];
            conn.filled(n, now);
            let mut step = conn.advance(&mut service, now);
            loop {
                output.extend_from_slice(conn.output());
                conn.clear_output();
                step = match step {
                    Step::Read => break,
                    Step::Flush => conn.advance(&mut service, now),
                    Step::Await(pending) => conn.resume(ready(pending), &mut service, now),
                    Step::AwaitTurn(turn) => {
                        ready(turn);
                        conn.turn_came(&mut service, now)
                    }
                    Step::Close => break 'pieces,
                };
            }
        }
    }
    Transcript { output, service }
}

/// The output with every `100 Continue` taken out.
/// What must not depend on how the bytes were cut: every answer of the service byte for byte,
/// and the status line of the refusal that ends the connection, if any. A refusal's message
/// names the first problem the parser met, which can differ with the cut (a run of lone CRs
/// reads as an invalid line ending in a short read, as too many empty lines in a long one);
/// its status may not.
fn comparable(transcript: &Transcript) -> Vec<Vec<u8>> {
    answers(&transcript.output, &transcript.service.head_only)
        .iter()
        .map(|answer| match answer.seq {
            Some(_) => answer.bytes.to_vec(),
            None => answer.bytes[..find(answer.bytes, b"\r\n").unwrap()].to_vec(),
        })
        .collect()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").find_map(|line| {
        let (n, v) = line.split_once(": ")?;
        n.eq_ignore_ascii_case(name).then_some(v)
    })
}

/// One response as the client reads it: its `X-Seq` (absent on a refusal from the codec).
struct Answer<'a> {
    seq: Option<u64>,
    /// The response's bytes, head and body.
    bytes: &'a [u8],
}

/// Reads the output as a client would: responses one after another, framed by
/// `Content-Length` (no body after a HEAD request's answer); `100 Continue` skipped.
fn answers<'a>(output: &'a [u8], head_only: &[bool]) -> Vec<Answer<'a>> {
    let mut answers = Vec::new();
    let mut rest = output;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix(CONTINUE) {
            rest = after;
            continue;
        }
        assert!(rest.starts_with(b"HTTP/1.1 "), "output is not a response");
        let end = find(rest, b"\r\n\r\n").expect("a response head without its end");
        let head = std::str::from_utf8(&rest[..end]).expect("a response head that is not text");
        let seq = header(head, "X-Seq").map(|v| v.parse::<u64>().unwrap());
        let length: usize = header(head, "Content-Length")
            .expect("a response without Content-Length")
            .parse()
            .unwrap();
        let has_body = !seq.is_some_and(|seq| head_only[seq as usize]);
        let total = end + 4 + if has_body { length } else { 0 };
        assert!(rest.len() >= total, "a response cut short");
        answers.push(Answer {
            seq,
            bytes: &rest[..total],
        });
        rest = &rest[total..];
    }
    answers
}

fn check(transcript: &Transcript) {
    let Transcript { output, service } = transcript;
    let answers = answers(output, &service.head_only);
    assert_eq!(
        service.responded,
        answers.len() as u64,
        "responded() vs responses written"
    );
    assert!(
        service.rejected <= 1,
        "more than one refusal on one connection"
    );
    let refusals = answers.iter().filter(|a| a.seq.is_none()).count() as u64;
    assert_eq!(
        refusals, service.rejected,
        "refusals written vs refusals reported"
    );
    if refusals == 1 {
        assert!(
            answers.last().unwrap().seq.is_none(),
            "an answer after the refusal"
        );
    }
    let numbers: Vec<u64> = answers.iter().filter_map(|a| a.seq).collect();
    let expected: Vec<u64> = (0..service.calls).collect();
    assert_eq!(
        numbers, expected,
        "requests not answered once each, in order"
    );
}

/// Byte 0: how many cut points; then two bytes per cut point; then the stream.
fn split_input(data: &[u8]) -> (&[u8], Vec<usize>) {
    let Some((&n, rest)) = data.split_first() else {
        return (&[], Vec::new());
    };
    let n = usize::from(n % 16).min(rest.len() / 2);
    let (raw_cuts, stream) = rest.split_at(n * 2);
    let mut cuts: Vec<usize> = raw_cuts
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();
    (stream, cuts)
}

fuzz_target!(|data: &[u8]| {
    let (stream, cuts) = split_input(data);
    let whole = run(stream, &[]);
    check(&whole);
    let split = run(stream, &cuts);
    check(&split);
    assert_eq!(
        comparable(&whole),
        comparable(&split),
        "the same bytes read in other pieces were answered differently"
    );
});
