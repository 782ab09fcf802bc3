//! The server over real sockets: endpoints, HTTP/1.1 behaviour, limits and errors.

mod common;

use std::time::Duration;

use rstest::rstest;
use rstest_reuse::{self, apply};

use common::{engines, Server};

#[apply(engines)]
fn status_endpoints_answer_with_their_formats(#[case] engine: &str) {
    let server = Server::start(engine, &["--shards", "2"]);

    let health = server.get("/health");
    assert_eq!(health.status, 200);
    assert_eq!(
        health.header("content-type"),
        Some("application/health+json")
    );
    let body = health.json();
    assert_eq!(body["status"], "pass");
    assert_eq!(body["engine"], engine);
    assert!(
        body["checks"]["shards:running"][0]["observedValue"].as_u64() == Some(2),
        "{body}"
    );
    assert!(body["version"].is_string() && body["uptime_seconds"].is_u64());

    assert_eq!(server.get("/livez").status, 200);
    assert_eq!(server.get("/readyz").status, 200);

    // A shard counts as running from its start; its first report (the heartbeat) may come
    // one snapshot interval later on a loaded host.
    let status = common::wait_for(
        "every shard's first heartbeat",
        Duration::from_secs(10),
        || {
            let status = server.cluster_status();
            let shards = status["shards"].as_array()?;
            shards
                .iter()
                .all(|shard| shard["heartbeat_age_ms"].is_u64())
                .then_some(status)
        },
    );
    assert_eq!(status["engine"], engine);
    let shards = status["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    for shard in shards {
        assert_eq!(shard["state"], "running", "{shard}");
        assert!(shard["tid"].as_i64().unwrap() > 0 && shard["cpu"].is_u64());
        assert_eq!(shard["restarts"], 0, "{shard}");
    }
    assert!(status["monitor"]["cpu"].is_u64() && status["monitor"]["tid"].as_i64().unwrap() > 0);

    // Traffic shows up in the merged metrics once the shards have reported.
    for _ in 0..20 {
        server.get("/livez");
    }
    let metrics = common::wait_for("requests in the metrics", Duration::from_secs(10), || {
        let m = server.get("/api/enterprise/metrics").json();
        // Every shard's share of them, not just the first report's.
        (m["routes"]["livez"]["2xx"].as_u64().unwrap_or(0) >= 20).then_some(m)
    });
    let latency = &metrics["merged"]["latency_lifetime_ms"];
    for key in ["p50", "p90", "p99", "p99_9", "max"] {
        assert!(
            latency[key].as_f64().is_some(),
            "{key} missing in {latency}"
        );
    }
    assert!(metrics["merged"]["request_rate"].as_f64().unwrap() > 0.0);
    assert_eq!(metrics["shards"].as_array().unwrap().len(), 2);
    assert!(metrics["merged"]["requests_total"].as_u64().unwrap() >= 20);

    let prometheus = server.get("/metrics");
    assert!(prometheus
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = prometheus.text();
    for needle in [
        "# TYPE coinbit_http_requests_total counter",
        "coinbit_http_requests_total{shard=",
        "# TYPE coinbit_http_request_duration_seconds histogram",
        "coinbit_http_request_duration_seconds_bucket{le=\"+Inf\"}",
        "coinbit_http_request_duration_seconds_sum ",
        "coinbit_http_request_duration_seconds_count ",
        "coinbit_shard_restarts_total{shard=\"0\"",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[apply(engines)]
fn keep_alive_serves_many_requests_on_one_connection_and_head_has_no_body(#[case] engine: &str) {
    let server = Server::start(engine, &[]);
    let mut client = server.connect();
    for _ in 0..50 {
        let response = client.request("GET", "/livez", &[], b"");
        assert_eq!(response.status, 200);
        assert!(response.header("date").is_some_and(|d| d.ends_with(" GMT")));
        assert_eq!(response.header("connection"), None);
    }
    let head = client.request("HEAD", "/health", &[], b"");
    assert_eq!(head.status, 200);
    assert!(
        head.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap()
            > 0
    );
    assert!(head.body.is_empty());
    // The connection is still usable after HEAD: no stray body bytes were sent.
    assert_eq!(client.request("GET", "/livez", &[], b"").status, 200);
}

#[apply(engines)]
fn a_hundred_pipelined_requests_are_answered_in_order(#[case] engine: &str) {
    let server = Server::start(engine, &[]);
    let mut client = server.connect();
    let mut batch = Vec::new();
    for i in 0..100 {
        batch.extend_from_slice(format!("GET /missing-{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    }
    client.send(&batch);
    for i in 0..100 {
        let response = client.read_response(false);
        assert_eq!(response.status, 404);
        let message = response.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(message, format!("no route for \"/missing-{i}\""));
    }
}

/// A request that arrives while the one before it waits for a later reply is read once that
/// reply is out (the engine's wait for the reply also sees the socket's readiness).
#[apply(engines)]
fn a_request_sent_while_a_reply_is_pending_is_answered_after_it(#[case] engine: &str) {
    let server = Server::start(engine, &["--debug-routes"]);
    let mut client = server.connect();
    client.send(b"GET /debug/sleep?ms=300 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer test-operator-token-0123456789abcdef\r\n\r\n");
    std::thread::sleep(std::time::Duration::from_millis(100));
    client.send(b"GET /livez HTTP/1.1\r\nHost: t\r\n\r\n");
    let slept = client.read_response(false);
    assert_eq!(slept.json()["slept_ms"], 300);
    let started = std::time::Instant::now();
    assert_eq!(client.read_response(false).status, 200);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "the second request waited {:?}",
        started.elapsed()
    );
}

#[apply(engines)]
fn routing_errors_are_json_and_keep_the_connection(#[case] engine: &str) {
    let server = Server::start(engine, &[]);
    let mut client = server.connect();
    let missing = client.request("GET", "/api/nothing", &[], b"");
    assert_eq!(
        (missing.status, missing.error_code().as_str()),
        (404, "not_found")
    );
    let wrong = client.request("DELETE", "/health", &[], b"");
    assert_eq!(
        (wrong.status, wrong.error_code().as_str()),
        (405, "method_not_allowed")
    );
    assert_eq!(wrong.header("allow"), Some("GET, HEAD"));
    assert_eq!(client.request("GET", "/livez", &[], b"").status, 200);
}

/// Sends `raw`, expects `status` with a JSON error and `Connection: close`, then EOF.
fn refused_then_closed(server: &Server, raw: &[u8], status: u16, code: &str) {
    let mut client = server.connect();
    client.send(raw);
    let response = client.read_response(false);
    assert_eq!(response.status, status, "{}", response.text());
    assert_eq!(response.error_code(), code);
    assert_eq!(response.header("connection"), Some("close"));
    assert!(
        client.is_closed_by_server(Duration::from_secs(3)),
        "connection left open after {status}"
    );
}

#[apply(engines)]
fn limits_and_malformed_requests_get_their_status_then_close(#[case] engine: &str) {
    let server = Server::start(engine, &["--max-body-bytes", "1024"]);
    let long_target = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(9000));
    refused_then_closed(&server, long_target.as_bytes(), 414, "uri_too_long");
    let big_headers = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "b".repeat(9000));
    refused_then_closed(&server, big_headers.as_bytes(), 431, "headers_too_large");
    let mut many_headers = String::from("GET / HTTP/1.1\r\n");
    for i in 0..100 {
        many_headers.push_str(&format!("X-{i}: v\r\n"));
    }
    many_headers.push_str("\r\n");
    refused_then_closed(&server, many_headers.as_bytes(), 431, "headers_too_large");
    let big_body = format!(
        "POST /health HTTP/1.1\r\nContent-Length: 5000\r\n\r\n{}",
        "x".repeat(5000)
    );
    refused_then_closed(&server, big_body.as_bytes(), 413, "payload_too_large");
    refused_then_closed(
        &server,
        b"POST /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        411,
        "length_required",
    );
    refused_then_closed(&server, b"GARBAGE\r\n\r\n", 400, "bad_request");
    refused_then_closed(
        &server,
        b"GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
        400,
        "bad_request",
    );
    refused_then_closed(
        &server,
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        400,
        "bad_request",
    );

    // None of that hurt the server; and the refusals are counted.
    assert_eq!(server.get("/livez").status, 200);
    common::wait_for("protocol errors counted", Duration::from_secs(10), || {
        let m = server.get("/api/enterprise/metrics").json();
        (m["merged"]["connections"]["protocol_errors_total"].as_u64() == Some(8)).then_some(())
    });
}

#[apply(engines)]
fn http11_needs_exactly_one_host_and_http10_may_leave_it_out(#[case] engine: &str) {
    let server = Server::start(engine, &[]);
    refused_then_closed(&server, b"GET /livez HTTP/1.1\r\n\r\n", 400, "bad_request");
    refused_then_closed(
        &server,
        b"GET /livez HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        400,
        "bad_request",
    );
    let mut client = server.connect();
    client.send(b"GET /livez HTTP/1.0\r\n\r\n");
    assert_eq!(client.read_response(false).status, 200);
}

#[apply(engines)]
fn request_bodies_are_read_by_content_length_on_keep_alive(#[case] engine: &str) {
    let server = Server::start(engine, &[]);
    let mut client = server.connect();
    // A body on a GET route is read and skipped, and the next request still parses.
    let response = client.request("GET", "/livez", &[("Content-Length", "5")], b"hello");
    assert_eq!(response.status, 200);
    let response = client.request("POST", "/livez", &[], b"{\"a\":1}");
    assert_eq!(response.status, 405);
    assert_eq!(client.request("GET", "/livez", &[], b"").status, 200);
}

#[apply(engines)]
fn slow_and_idle_clients_are_closed(#[case] engine: &str) {
    let server = Server::start(
        engine,
        &[
            "--header-read-timeout",
            "400",
            "--keep-alive-timeout",
            "600",
        ],
    );

    // Slowloris: a byte every 100 ms never finishes the head; the deadline does not move.
    let mut slow = server.connect();
    slow.send(b"GET /health HTTP/1.1\r\n");
    let started = std::time::Instant::now();
    let mut closed = false;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        if std::io::Write::write_all(&mut slow.stream, b"X-A: b\r\n").is_err() {
            closed = true;
            break;
        }
        if slow.is_closed_by_server(Duration::from_millis(1)) {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "slow client still connected after {:?}",
        started.elapsed()
    );

    // Idle keep-alive: one request, then silence.
    let mut idle = server.connect();
    assert_eq!(idle.request("GET", "/livez", &[], b"").status, 200);
    assert!(
        idle.is_closed_by_server(Duration::from_secs(5)),
        "idle connection kept open"
    );

    common::wait_for("timeouts counted", Duration::from_secs(10), || {
        let m = server.get("/api/enterprise/metrics").json();
        let c = &m["merged"]["connections"];
        (c["request_timeouts_total"].as_u64() >= Some(1)
            && c["idle_timeouts_total"].as_u64() >= Some(1))
        .then_some(())
    });
}

#[apply(engines)]
fn connections_past_the_per_shard_cap_get_503(#[case] engine: &str) {
    let server = Server::start(
        engine,
        &["--shards", "1", "--max-connections-per-shard", "3"],
    );
    let mut held: Vec<_> = (0..3).map(|_| server.connect()).collect();
    for client in &mut held {
        assert_eq!(client.request("GET", "/livez", &[], b"").status, 200);
    }
    // The refused client has already sent its request: the 503 must still reach it.
    let mut over = server.connect();
    over.send(b"GET /livez HTTP/1.1\r\nHost: t\r\n\r\n");
    let response = over.read_response(false);
    assert_eq!(
        (response.status, response.error_code().as_str()),
        (503, "too_many_connections")
    );
    assert_eq!(response.header("retry-after"), Some("1"));
    assert!(over.is_closed_by_server(Duration::from_secs(3)));
    drop(held);
    // Once the held connections go, new ones are served again.
    common::wait_for("a free connection slot", Duration::from_secs(5), || {
        let response = server.connect().try_request("GET", "/livez", &[], b"")?;
        (response.status == 200).then_some(())
    });
}

#[apply(engines)]
fn expect_100_continue_gets_the_interim_response_before_the_body(#[case] engine: &str) {
    let server = Server::start(engine, &[]);
    let mut client = server.connect();
    client.send(
        b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    );
    let interim = client.read_response(false);
    assert_eq!(interim.status, 100);
    client.send(b"hello");
    let last = client.read_response(false);
    assert_eq!(last.status, 405, "the body was read and the request routed");
    assert_eq!(client.request("GET", "/livez", &[], b"").status, 200);
}

#[apply(engines)]
fn http10_keep_alive_is_honoured_and_announced(#[case] engine: &str) {
    let server = Server::start(engine, &[]);
    let mut client = server.connect();
    for _ in 0..3 {
        client.send(b"GET /livez HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let response = client.read_response(false);
        assert_eq!(response.status, 200);
        assert_eq!(response.header("connection"), Some("keep-alive"));
    }
    client.send(b"GET /livez HTTP/1.0\r\n\r\n");
    assert_eq!(
        client.read_response(false).header("connection"),
        Some("close")
    );
    assert!(client.is_closed_by_server(Duration::from_secs(3)));
}

#[apply(engines)]
fn a_client_that_stops_reading_is_closed_by_the_send_timeout(#[case] engine: &str) {
    let server = Server::start(engine, &["--send-timeout", "1000"]);
    let mut client = server.connect();
    // Far more response bytes than the socket buffers hold, and never read.
    let request = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n";
    let batch: Vec<u8> = request
        .iter()
        .copied()
        .cycle()
        .take(request.len() * 2000)
        .collect();
    for _ in 0..10 {
        if std::io::Write::write_all(&mut client.stream, &batch).is_err() {
            break;
        }
    }
    // Polled over one keep-alive connection, which the counts then always include.
    let poller = std::cell::RefCell::new(server.connect());
    let open_connections = || -> u64 {
        let status = poller
            .borrow_mut()
            .request("GET", "/api/enterprise/cluster/status", &[], b"")
            .json();
        status["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["open_connections"].as_u64().unwrap())
            .sum()
    };
    // First seen open beside the poller's connection, then closed.
    common::wait_for(
        "the stuck connection reported",
        Duration::from_secs(5),
        || (open_connections() == 2).then_some(()),
    );
    common::wait_for(
        "the stuck connection closed",
        Duration::from_secs(10),
        || (open_connections() == 1).then_some(()),
    );
}

/// A family's samples summed over the shards, from the Prometheus text of `/metrics`.
fn prometheus_sum(server: &Server, family: &str) -> Option<u64> {
    let text = server
        .connect()
        .try_request("GET", "/metrics", &[], b"")?
        .text();
    let prefix = format!("{family}{{");
    let values: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Idle keep-alive connections hold no read buffer (nginx's way): the shard's gauge of lent
/// read buffers counts only the connection that holds half a request, and goes back to 0 once
/// that request is complete, while the hundred connections stay open.
#[apply(engines)]
fn idle_keep_alive_connections_hold_no_read_buffer(#[case] engine: &str) {
    let server = Server::start(engine, &["--shards", "1"]);
    let mut idle: Vec<_> = (0..100).map(|_| server.connect()).collect();
    for client in &mut idle {
        assert_eq!(client.request("GET", "/livez", &[], b"").status, 200);
    }
    let mut partial = server.connect();
    partial.send(b"GET /livez HTTP/1.1\r\nHo");
    let expect = |open: u64, buffers: u64, what: &str| {
        common::wait_for(what, Duration::from_secs(10), || {
            let now_open = prometheus_sum(&server, "coinbit_http_connections_open")?;
            let lent = prometheus_sum(&server, "coinbit_http_read_buffers")?;
            (now_open >= open && lent == buffers).then_some(())
        })
    };
    expect(101, 1, "one read buffer, lent to the half-sent request");
    partial.send(b"st: t\r\n\r\n");
    assert_eq!(partial.read_response(false).status, 200);
    expect(101, 0, "no read buffer lent while 101 connections are idle");
    // The idle connections still serve.
    for client in &mut idle {
        assert_eq!(client.request("GET", "/livez", &[], b"").status, 200);
    }
}

/// A connection idle for a second moves to its engine's cheapest wait (may: its coroutine gives
/// its dead stack pages back; glommio: its task drops its pending receive and its buffer for a
/// poll), once per idle spell (the shard counts each), and serves its next requests as before.
#[apply(engines)]
fn idle_connections_settle_once_per_spell_and_still_serve(#[case] engine: &str) {
    let mut server = Server::start(engine, &["--shards", "1"]);
    let settles = || prometheus_sum(&server, "coinbit_http_idle_settles_total");
    let status = |client: &mut common::Client| {
        let answer = client.request("GET", "/api/enterprise/cluster/status", &[], b"");
        assert_eq!(answer.status, 200, "{}", answer.text());
        let shards = answer.json()["shards"].as_array().map(Vec::len);
        assert_eq!(shards, Some(1), "{}", answer.text());
    };
    // Each connection's idle spell starts with its answer.
    let mut idle = Vec::new();
    for _ in 0..20 {
        let mut client = server.connect();
        status(&mut client);
        idle.push(client);
    }
    for spell in 1..=2u64 {
        common::wait_for(
            &format!("idle spell {spell}: every connection settled"),
            Duration::from_secs(20),
            || (settles()? >= 20 * spell).then_some(()),
        );
        // Once per spell: more silence settles nothing again. (A band, not an exact count: a
        // pause of a second on a loaded host between a client's requests settles that
        // connection once more; settling on every tick would add 20 every 50 ms.)
        std::thread::sleep(Duration::from_millis(1500));
        let settled = settles().unwrap_or(0);
        assert!(
            (20 * spell..=20 * spell + 5).contains(&settled),
            "{settled} settles after idle spell {spell}: one per connection expected"
        );
        for client in &mut idle {
            status(client);
            assert_eq!(client.request("GET", "/livez", &[], b"").status, 200);
        }
    }
    // The connections end after settling; on may each coroutine's end checks the overflow
    // pattern at its stack's bottom, which the settle gave back and put back: were it missing,
    // may would end the server.
    drop(idle);
    common::wait_for(
        "the settled connections to close",
        Duration::from_secs(20),
        || (prometheus_sum(&server, "coinbit_http_connections_open")? <= 1).then_some(()),
    );
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server ended"
    );
    assert_eq!(
        server.connect().request("GET", "/livez", &[], b"").status,
        200
    );
}
