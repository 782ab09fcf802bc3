use super::*;
use crate::http::response::JSON;

/// A service that echoes the path and records what the codec told it.
#[derive(Default)]
struct Echo {
    rejected: Vec<u16>,
    responded: u64,
}

impl Service for Echo {
    fn call(&mut self, request: &Request<'_>) -> Reply {
        match request.path {
            "/panic" => panic!("handler bug"),
            "/later" => Reply::Later(Box::pin(async {
                Response::new(StatusCode::OK, JSON, "later")
            })),
            path => Response::new(
                StatusCode::OK,
                "text/plain",
                format!("{path}:{}", request.body.len()),
            )
            .into(),
        }
    }
    fn date(&self) -> &[u8] {
        b"Sun, 06 Nov 1994 08:49:37 GMT"
    }
    fn rejected(&mut self, error: &HttpError) {
        self.rejected.push(error.status().0);
    }
    fn responded(&mut self, count: u64, _latency: Duration) {
        self.responded += count;
    }
}

fn limits() -> Limits {
    Limits {
        max_request_line: 1024,
        max_header_bytes: 1024,
        max_body_bytes: 64,
    }
}

fn timeouts() -> Timeouts {
    Timeouts {
        header_read: Duration::from_secs(2),
        keep_alive: Duration::from_secs(5),
    }
}

/// A new connection with the test limits, its service, and the time it opened.
fn fresh() -> (Connection, Echo, Instant) {
    let now = Instant::now();
    (
        Connection::new(limits(), timeouts(), now),
        Echo::default(),
        now,
    )
}

fn feed(conn: &mut Connection, bytes: &[u8], now: Instant) {
    let buf = conn.read_buf();
    buf[..bytes.len()].copy_from_slice(bytes);
    conn.filled(bytes.len(), now);
}

fn bodies(out: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(out);
    text.split("HTTP/1.1 ")
        .skip(1)
        .map(|r| r.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
        .collect()
}

#[test]
fn pipelined_requests_are_answered_in_order_in_one_output() {
    let (mut conn, mut echo, now) = fresh();
    let mut input = Vec::new();
    for i in 0..100 {
        input.extend_from_slice(format!("GET /r{i} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes());
    }
    // Feed in odd-sized pieces so requests straddle reads.
    let mut answered = Vec::new();
    for chunk in input.chunks(777) {
        feed(&mut conn, chunk, now);
        assert!(matches!(conn.advance(&mut echo, now), Step::Read));
        answered.extend_from_slice(conn.output());
        conn.clear_output();
    }
    let expected: Vec<String> = (0..100).map(|i| format!("/r{i}:0")).collect();
    assert_eq!(bodies(&answered), expected);
    assert_eq!(echo.responded, 100);
    assert!(conn.is_idle());
}

#[test]
fn body_split_across_reads_and_expect_continue() {
    let (mut conn, mut echo, now) = fresh();
    feed(
        &mut conn,
        b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n12345",
        now,
    );
    assert!(matches!(conn.advance(&mut echo, now), Step::Read));
    assert_eq!(conn.output(), INTERIM_CONTINUE);
    conn.clear_output();
    feed(&mut conn, b"67890", now);
    assert!(matches!(conn.advance(&mut echo, now), Step::Read));
    assert_eq!(bodies(conn.output()), vec!["/b:10"]);
}

#[test]
fn errors_answer_json_and_close() {
    let cases: &[(&[u8], u16)] = &[
        (b"BAD\r\n\r\n", 400),
        (
            b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 65\r\n\r\n",
            413,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            411,
        ),
    ];
    for (input, status) in cases {
        let now = Instant::now();
        let mut conn = Connection::new(limits(), timeouts(), now);
        let mut echo = Echo::default();
        feed(&mut conn, input, now);
        assert!(
            matches!(conn.advance(&mut echo, now), Step::Close),
            "{status}"
        );
        let text = String::from_utf8_lossy(conn.output()).to_string();
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(text.contains("\"error\":{\"code\""), "{text}");
        assert_eq!(echo.rejected, vec![*status]);
    }
}

#[test]
fn connection_close_and_http10_end_the_connection_after_the_response() {
    for input in [
        &b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n"[..],
        b"GET /a HTTP/1.0\r\n\r\n",
    ] {
        let now = Instant::now();
        let mut conn = Connection::new(limits(), timeouts(), now);
        let mut echo = Echo::default();
        feed(&mut conn, input, now);
        assert!(matches!(conn.advance(&mut echo, now), Step::Close));
        assert_eq!(
            bodies(conn.output()),
            vec!["/a:0"],
            "the request after close is not answered"
        );
    }
}

#[test]
fn head_gets_headers_without_body() {
    let (mut conn, mut echo, now) = fresh();
    feed(&mut conn, b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n", now);
    conn.advance(&mut echo, now);
    let text = String::from_utf8_lossy(conn.output()).to_string();
    assert!(
        text.contains("Content-Length: 4\r\n") && text.ends_with("\r\n\r\n"),
        "{text}"
    );
}

#[test]
fn a_panicking_handler_gets_500_and_the_connection_goes_on() {
    let (mut conn, mut echo, now) = fresh();
    feed(
        &mut conn,
        b"GET /panic HTTP/1.1\r\nHost: h\r\n\r\nGET /after HTTP/1.1\r\nHost: h\r\n\r\n",
        now,
    );
    assert!(matches!(conn.advance(&mut echo, now), Step::Read));
    let text = String::from_utf8_lossy(conn.output()).to_string();
    assert!(text.starts_with("HTTP/1.1 500 "), "{text}");
    assert_eq!(bodies(conn.output())[1], "/after:0");
}

#[test]
fn later_replies_keep_pipelined_order() {
    let (mut conn, mut echo, now) = fresh();
    feed(
        &mut conn,
        b"GET /one HTTP/1.1\r\nHost: h\r\n\r\nGET /later HTTP/1.1\r\nHost: h\r\n\r\nGET /three HTTP/1.1\r\nHost: h\r\n\r\n",
        now,
    );
    let Step::Await(_future) = conn.advance(&mut echo, now) else {
        panic!("expected Await")
    };
    assert_eq!(conn.deadline(), None, "no timeout while a handler works");
    let response = Response::new(StatusCode::OK, JSON, "later");
    assert!(matches!(conn.resume(response, &mut echo, now), Step::Read));
    assert_eq!(bodies(conn.output()), vec!["/one:0", "later", "/three:0"]);
    assert_eq!(echo.responded, 3);
}

#[test]
fn deadlines_follow_the_request_state() {
    let t0 = Instant::now();
    let mut conn = Connection::new(limits(), timeouts(), t0);
    let mut echo = Echo::default();
    assert_eq!(
        conn.deadline(),
        Some((t0 + Duration::from_secs(5), TimeoutKind::Idle))
    );
    let t1 = t0 + Duration::from_secs(1);
    feed(&mut conn, b"GET / HTTP/1.1\r\nHost: h\r\nX-Slow: ", t1);
    conn.advance(&mut echo, t1);
    assert_eq!(
        conn.deadline(),
        Some((t1 + Duration::from_secs(2), TimeoutKind::RequestRead))
    );
    // Trickling more bytes does not move the request deadline (slowloris).
    let t2 = t1 + Duration::from_millis(1500);
    feed(&mut conn, b"a", t2);
    conn.advance(&mut echo, t2);
    assert_eq!(
        conn.deadline(),
        Some((t1 + Duration::from_secs(2), TimeoutKind::RequestRead))
    );
    feed(&mut conn, b"\r\n\r\n", t2);
    conn.advance(&mut echo, t2);
    assert_eq!(
        conn.deadline(),
        Some((t2 + Duration::from_secs(5), TimeoutKind::Idle))
    );
}

#[test]
fn draining_closes_after_the_current_response() {
    let (mut conn, mut echo, now) = fresh();
    conn.drain();
    feed(&mut conn, b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n", now);
    assert!(matches!(conn.advance(&mut echo, now), Step::Close));
    assert!(String::from_utf8_lossy(conn.output()).contains("Connection: close"));
}

#[test]
fn large_bodies_grow_the_buffer_as_they_arrive_and_it_shrinks_after() {
    let now = Instant::now();
    let big = Limits {
        max_body_bytes: 4 * 1024 * 1024,
        ..limits()
    };
    let mut conn = Connection::new(big, timeouts(), now);
    let mut echo = Echo::default();
    // A head that declares 2 MiB does not make the buffer 2 MiB before a byte of it arrives.
    feed(
        &mut conn,
        b"POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: 2097152\r\n\r\n",
        now,
    );
    assert!(matches!(conn.advance(&mut echo, now), Step::Read));
    assert!(
        conn.read_buf().len() < 256 * 1024,
        "buffer sized for the declared body"
    );
    let chunk = vec![b'x'; 8000];
    let mut sent = 0;
    while sent < 2097152 {
        let n = chunk.len().min(2097152 - sent);
        feed(&mut conn, &chunk[..n], now);
        sent += n;
        conn.advance(&mut echo, now);
    }
    assert_eq!(bodies(conn.output()), vec!["/big:2097152"]);
    // Once answered, the connection goes back to a small buffer.
    assert!(
        conn.read_buf().len() <= 2 * MIN_READ,
        "{}",
        conn.read_buf().len()
    );
}

#[test]
fn a_flood_of_empty_lines_is_refused() {
    let (mut conn, mut echo, now) = fresh();
    feed(&mut conn, &b"\r\n".repeat(1000), now);
    assert!(matches!(conn.advance(&mut echo, now), Step::Close));
    assert!(String::from_utf8_lossy(conn.output()).starts_with("HTTP/1.1 400 "));
    // A couple of stray line breaks before a request are fine.
    let mut conn = Connection::new(limits(), timeouts(), now);
    feed(
        &mut conn,
        b"\r\n\r\nGET /ok HTTP/1.1\r\nHost: h\r\n\r\n",
        now,
    );
    assert!(matches!(conn.advance(&mut echo, now), Step::Read));
    assert_eq!(bodies(conn.output()), vec!["/ok:0"]);
}

#[test]
fn http10_keep_alive_is_announced_and_gets_no_interim_continue() {
    let (mut conn, mut echo, now) = fresh();
    feed(
        &mut conn,
        b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        now,
    );
    assert!(matches!(conn.advance(&mut echo, now), Step::Read));
    let text = String::from_utf8_lossy(conn.output()).to_string();
    assert!(text.contains("Connection: keep-alive\r\n"), "{text}");
    conn.clear_output();
    feed(&mut conn, b"POST /b HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n", now);
    assert!(matches!(conn.advance(&mut echo, now), Step::Read));
    assert!(conn.output().is_empty(), "no 100 Continue for HTTP/1.0");
}

/// Makes every request to `/wait...` wait for its turn once, and records the latencies given.
#[derive(Default)]
struct Gated {
    echo: Echo,
    asked: Vec<String>,
    latencies: Vec<Duration>,
}

impl Service for Gated {
    fn call(&mut self, request: &Request<'_>) -> Reply {
        self.echo.call(request)
    }
    fn date(&self) -> &[u8] {
        self.echo.date()
    }
    fn rejected(&mut self, error: &HttpError) {
        self.echo.rejected(error);
    }
    fn responded(&mut self, count: u64, latency: Duration) {
        self.echo.responded(count, latency);
        self.latencies.push(latency);
    }
    fn turn_wait(&mut self, request: &Request<'_>) -> Option<TurnWait> {
        self.asked.push(request.path.to_string());
        request
            .path
            .starts_with("/wait")
            .then(|| Box::pin(async {}) as TurnWait)
    }
}

#[test]
fn a_request_that_waits_for_its_turn_keeps_its_place_and_its_latency() {
    let mut conn = Connection::new(limits(), timeouts(), Instant::now());
    let mut gated = Gated::default();
    let read_at = Instant::now();
    feed(
        &mut conn,
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /wait HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n",
        read_at,
    );
    let Step::AwaitTurn(_turn) = conn.advance(&mut gated, read_at) else {
        panic!("the second request waits for its turn");
    };
    assert_eq!(bodies(conn.output()), ["/a:0"], "the first is answered");
    assert_eq!(conn.deadline(), None, "no read deadline while it waits");
    assert!(!conn.is_idle());
    conn.clear_output();
    std::thread::sleep(Duration::from_millis(20));
    let step = conn.turn_came(&mut gated, Instant::now());
    assert!(matches!(step, Step::Read));
    assert_eq!(
        bodies(conn.output()),
        ["/wait:0", "/b:0"],
        "in order, after its turn"
    );
    // Asked once each: a request that had its turn is not asked again.
    assert_eq!(gated.asked, ["/a", "/wait", "/b"]);
    assert_eq!(gated.echo.responded, 3);
    let waited = *gated.latencies.last().unwrap();
    assert!(
        waited >= Duration::from_millis(20),
        "the wait counts in the latency: {waited:?}"
    );
    assert!(conn.deadline().is_some());
}

#[test]
fn an_idle_connection_gives_its_buffers_back_and_a_partial_request_keeps_its_own() {
    let pool = Arc::new(BufferPool::new());
    let now = Instant::now();
    let mut conn = Connection::with_pool(limits(), timeouts(), now, pool.clone());
    let mut echo = Echo::default();
    // A new connection holds nothing until it reads.
    assert_eq!((pool.read_lent(), pool.write_lent()), (0, 0));
    feed(
        &mut conn,
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HT",
        now,
    );
    assert!(matches!(conn.advance(&mut echo, now), Step::Read));
    assert_eq!((pool.read_lent(), pool.write_lent()), (1, 1));
    assert_eq!(bodies(conn.output()), vec!["/a:0"]);
    conn.clear_output();
    // Half of the next request is buffered: the read buffer stays, the write buffer goes.
    conn.release_buffers();
    assert!(conn.holds_read_buffer());
    assert_eq!((pool.read_lent(), pool.write_lent()), (1, 0));
    feed(&mut conn, b"TP/1.1\r\nHost: h\r\n\r\n", now);
    assert!(matches!(conn.advance(&mut echo, now), Step::Read));
    assert_eq!(bodies(conn.output()), vec!["/b:0"]);
    // Output not yet written is kept.
    conn.release_buffers();
    assert_eq!(pool.write_lent(), 1);
    conn.clear_output();
    conn.release_buffers();
    assert!(!conn.holds_read_buffer());
    assert_eq!((pool.read_lent(), pool.write_lent()), (0, 0));
    // The next request borrows again, and a closed connection gives back what it held.
    feed(&mut conn, b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n", now);
    assert!(matches!(conn.advance(&mut echo, now), Step::Read));
    assert_eq!(bodies(conn.output()), vec!["/c:0"]);
    drop(conn);
    assert_eq!((pool.read_lent(), pool.write_lent()), (0, 0));
}

#[test]
fn a_connection_awaiting_a_reply_keeps_its_write_buffer() {
    let pool = Arc::new(BufferPool::new());
    let now = Instant::now();
    let mut conn = Connection::with_pool(limits(), timeouts(), now, pool.clone());
    let mut echo = Echo::default();
    feed(
        &mut conn,
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /later HTTP/1.1\r\nHost: h\r\n\r\n",
        now,
    );
    let Step::Await(pending) = conn.advance(&mut echo, now) else {
        panic!("expected an await");
    };
    conn.clear_output();
    conn.release_buffers();
    assert_eq!((pool.read_lent(), pool.write_lent()), (0, 1));
    let response = futures_lite::future::block_on(pending);
    assert!(matches!(conn.resume(response, &mut echo, now), Step::Read));
    assert_eq!(bodies(conn.output()), vec!["later"]);
}
