//! Errors the client caused are the client's: malformed requests are counted apart from server
//! errors and never take the server out of rotation, while a failure of the server still counts.

mod common;

use std::time::Duration;

use rstest::rstest;
use rstest_reuse::{self, apply};

use common::{engines, wait_for, Server};
use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(30);

/// Requests the codec refuses, each the client's fault.
const MALFORMED: [&[u8]; 3] = [
    b"POST /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"GET /health HTTP/3.0\r\nHost: t\r\n\r\n",
];

fn metrics(server: &Server) -> Option<Value> {
    server
        .connect()
        .try_request("GET", "/api/enterprise/metrics", &[], b"")
        .map(|r| r.json())
}

/// Waits until a monitoring sample newer than the ones in `since` exists, and returns the body.
fn wait_next_sample(server: &Server, since: &Value) -> Value {
    let seen = since["monitoring"]["latest"]["at_ms"].as_u64().unwrap_or(0);
    wait_for("a new monitoring sample", PATIENCE, || {
        metrics(server).filter(|m| m["monitoring"]["latest"]["at_ms"].as_u64() > Some(seen))
    })
}

#[apply(engines)]
fn a_burst_of_malformed_requests_leaves_the_server_healthy_and_counts_as_client_errors(
    #[case] engine: &str,
) {
    let server = Server::start(engine, &["--metrics-interval", "200"]);
    let bursts = 21;
    for raw in MALFORMED.iter().cycle().take(bursts) {
        let mut client = server.connect();
        client.send(raw);
        let response = client.read_response(false);
        assert!(response.status >= 400, "{}", response.text());
    }
    let counted = wait_for("the client errors counted", PATIENCE, || {
        metrics(&server)
            .filter(|m| m["merged"]["client_errors_total"].as_u64() == Some(bursts as u64))
    });
    // A sample taken after the refusals reached the monitor has seen them.
    let body = wait_next_sample(&server, &counted);
    assert_eq!(body["merged"]["server_errors_total"], 0, "{body}");
    assert_eq!(body["merged"]["error_rate"], 0.0, "{body}");
    for sample in body["monitoring"]["history"].as_array().unwrap() {
        assert_eq!(sample["error_rate"], 0.0, "{sample}");
    }
    let health = server.get("/health");
    assert_eq!(health.status, 200, "{}", health.text());
    // The score's own verdict: the overall status may also say warn for a shard whose
    // heartbeat is late on a loaded host, which is no concern of this test.
    let score = &health.json()["checks"]["monitor:health-score"][0];
    assert_eq!(score["status"], "pass", "{score}");
    assert_eq!(server.get("/readyz").status, 200);
    let prometheus = server.get("/metrics").text();
    let client_errors: u64 = prometheus
        .lines()
        .filter(|l| l.starts_with("coinbit_http_client_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(client_errors, bursts as u64, "{prometheus}");
}

#[apply(engines)]
fn a_server_error_still_counts_in_the_error_rate(#[case] engine: &str) {
    let server = Server::start(engine, &["--metrics-interval", "200"]);
    // No database is configured: the users route fails on the server's side.
    let response = server.connect().request(
        "POST",
        "/api/users",
        &[("Content-Type", "application/json")],
        br#"{"name":"a","email":"a@example.com","password":"12345678"}"#,
    );
    assert_eq!(response.status, 503, "{}", response.text());
    assert_eq!(response.error_code(), "database_not_configured");
    wait_for(
        "the server error in the sampled error rate",
        PATIENCE,
        || {
            metrics(&server).filter(|m| {
                m["merged"]["server_errors_total"] == 1
                    && m["merged"]["client_errors_total"] == 0
                    && m["monitoring"]["history"]
                        .as_array()
                        .is_some_and(|h| h.iter().any(|s| s["error_rate"].as_f64() > Some(0.0)))
            })
        },
    );
}

#[test]
fn error_messages_quote_only_a_short_prefix_of_the_input() {
    let server = Server::start("may", &[]);
    let long = "a".repeat(200_000);
    let path = format!("/{}", "p".repeat(8000));
    let jobs = "/api/enterprise/jobs";
    let cases: [(&str, String, String, u16); 5] = [
        ("GET", path.clone(), String::new(), 404),
        ("POST", path.clone(), String::new(), 404),
        ("POST", jobs.into(), format!(r#"{{"kind":"{long}"}}"#), 400),
        (
            "POST",
            jobs.into(),
            format!(r#"{{"kind":"commission","class":"{long}"}}"#),
            400,
        ),
        (
            "POST",
            jobs.into(),
            format!(r#"{{"kind":"commission","max_attempts":"{long}"}}"#),
            400,
        ),
    ];
    for (method, target, body, status) in cases {
        let response =
            server
                .connect()
                .request(method, &target, &[common::OPERATOR], body.as_bytes());
        assert_eq!(response.status, status, "{:.300}", response.text());
        let message = response.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            message.len() < 300,
            "{method} {:.40}: a {}-byte message",
            target,
            message.len()
        );
    }
}
