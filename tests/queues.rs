//! The per-core priority queues over real sockets: priority under contention, no starvation,
//! cancelling timeouts, retries, dead letters and replay, idempotency keys, full queues, hand-off
//! between shards, and the queues check of /health.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rstest::rstest;
use rstest_reuse::{self, apply};

use common::{engines, wait_for, Client, Response, Server};
use serde_json::{json, Value};

/// Waits long enough for a loaded machine (other builds and tests share its two cores).
const PATIENCE: Duration = Duration::from_secs(60);

fn enqueue(client: &mut Client, body: &Value) -> common::Response {
    client.request(
        "POST",
        "/api/enterprise/jobs",
        &[common::OPERATOR],
        body.to_string().as_bytes(),
    )
}

/// Enqueues and expects 202; returns the job's id.
fn enqueue_ok(client: &mut Client, body: &Value) -> String {
    let response = enqueue(client, body);
    assert_eq!(response.status, 202, "{}", response.text());
    response.json()["job"]["id"].as_str().unwrap().to_string()
}

/// Enqueues every body in one write (HTTP/1.1 pipelining), so the shard takes them all in before
/// any of them runs; returns the ids in order.
fn enqueue_batch(client: &mut Client, bodies: &[Value]) -> Vec<String> {
    enqueue_pipelined(client, bodies)
        .into_iter()
        .map(|response| {
            assert_eq!(response.status, 202, "{}", response.text());
            response.json()["job"]["id"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Sends every enqueue in one write and reads the answers in order: the server takes them as
/// fast as it can, whatever the client's speed.
fn enqueue_pipelined(client: &mut Client, bodies: &[Value]) -> Vec<Response> {
    let mut bytes = Vec::new();
    for body in bodies {
        let body = body.to_string();
        bytes.extend_from_slice(
            format!(
                "POST /api/enterprise/jobs HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer test-operator-token-0123456789abcdef\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    client.send(&bytes);
    bodies.iter().map(|_| client.read_response(false)).collect()
}

fn job(server: &Server, id: &str) -> Value {
    let response = server.operator_get(&format!("/api/enterprise/jobs/{id}"));
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["job"].clone()
}

fn wait_for_state(server: &Server, id: &str, state: &str) -> Value {
    wait_for(&format!("job {id} to be {state}"), PATIENCE, || {
        let job = job(server, id);
        (job["state"] == state).then_some(job)
    })
}

fn queues_status(server: &Server) -> Value {
    server.get("/api/enterprise/queues/status").json()
}

/// Polls the queues status until `check` holds (it is published once per snapshot interval).
fn wait_for_queues(server: &Server, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, PATIENCE, || {
        let status = queues_status(server);
        check(&status).then_some(status)
    })
}

fn effects(server: &Server) -> Value {
    server.operator_get("/debug/effects").json()
}

#[apply(engines)]
fn a_job_past_its_timeout_is_cancelled_retried_dead_lettered_and_replayed(#[case] engine: &str) {
    let server = Server::start(engine, &["--shards", "2", "--debug-routes"]);
    let mut client = server.connect();
    let tag = format!("timeout-{engine}");
    // Sleeps 1.5 s, then records its side effect; its timeout is 150 ms.
    let id = enqueue_ok(
        &mut client,
        &json!({"kind": "debug.sleep", "class": "high", "timeout_ms": 150, "max_attempts": 2,
                "payload": {"ms": 1500, "effect": tag}}),
    );
    let dead = wait_for_state(&server, &id, "dead");
    assert_eq!(dead["attempts"], 2, "{dead}");
    assert!(
        dead["last_error"].as_str().unwrap().contains("timed out"),
        "{dead}"
    );
    // Had the attempts not been cancelled, the last one's effect would land 1.5 s after it
    // started: wait past that, and it must still be absent.
    std::thread::sleep(Duration::from_millis(2000));
    assert!(effects(&server).get(&tag).is_none(), "{}", effects(&server));

    let listed = server.operator_get("/api/enterprise/jobs/dead").json();
    assert!(
        listed["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["id"] == id),
        "{listed}"
    );
    wait_for_queues(&server, "the timeouts to be counted", |s| {
        let high = &s["classes"]["high"];
        high["timed_out"] == 2 && high["retried"] == 1 && high["dead"] == 1
    });

    // Replayed with a timeout it can meet, it completes and its effect happens once.
    let replay = client.request(
        "POST",
        &format!("/api/enterprise/jobs/dead/{id}/replay"),
        &[common::OPERATOR],
        br#"{"timeout_ms": 20000}"#,
    );
    assert_eq!(replay.status, 202, "{}", replay.text());
    let done = wait_for_state(&server, &id, "done");
    assert_eq!(
        (done["replays"].as_u64(), done["attempts"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(effects(&server)[&tag], 1);
    let again = client.request(
        "POST",
        &format!("/api/enterprise/jobs/dead/{id}/replay"),
        &[common::OPERATOR],
        b"",
    );
    assert_eq!(
        (again.status, again.error_code().as_str()),
        (409, "job_not_dead")
    );
    let listed = server.operator_get("/api/enterprise/jobs/dead").json();
    assert_eq!(listed["count"], 0, "{listed}");
}

#[apply(engines)]
fn failing_jobs_are_retried_until_they_succeed_and_bad_input_is_refused(#[case] engine: &str) {
    let server = Server::start(
        engine,
        &[
            "--shards",
            "2",
            "--debug-routes",
            "--retry-base-delay",
            "20",
        ],
    );
    let mut client = server.connect();
    let id = enqueue_ok(
        &mut client,
        &json!({"kind": "debug.fail", "payload": {"times": 2}, "max_attempts": 3}),
    );
    let done = wait_for_state(&server, &id, "done");
    assert_eq!(done["attempts"], 3, "{done}");
    assert_eq!(done["result"]["attempt"], 3);
    wait_for_queues(&server, "the failures to be counted", |s| {
        let medium = &s["classes"]["medium"];
        medium["failed"] == 2 && medium["retried"] == 2 && medium["processed"] == 1
    });

    let commission = enqueue_ok(
        &mut client,
        &json!({"kind": "commission", "payload": {"user_id": "u1", "amount": 250.0, "rate": 0.1}}),
    );
    assert_eq!(
        wait_for_state(&server, &commission, "done")["result"]["commission"],
        25.0
    );

    let cases: [(&[u8], &str); 6] = [
        (b"{\"kind\":", "invalid JSON body"),
        (br#"{"kind": "nope"}"#, "unknown job kind"),
        (
            br#"{"kind": "commission", "payload": {"user_id": "u"}}"#,
            "payload.amount",
        ),
        (
            br#"{"kind": "analytics", "class": "urgent", "payload": {"event": "e"}}"#,
            "unknown class",
        ),
        (
            br#"{"kind": "analytics", "payload": {"event": "e"}, "timeout_ms": 0}"#,
            "timeout_ms",
        ),
        (
            br#"{"kind": "analytics", "payload": {"event": "e"}, "extra": 1}"#,
            "unknown field",
        ),
    ];
    for (body, message) in cases {
        let response = client.request("POST", "/api/enterprise/jobs", &[common::OPERATOR], body);
        assert_eq!(response.status, 400, "{}", response.text());
        assert!(
            response.text().contains(message),
            "{message}: {}",
            response.text()
        );
    }
    assert_eq!(
        server
            .operator_get("/api/enterprise/jobs/0.9.99-00000000000000000000000000000000")
            .status,
        404
    );
    assert_eq!(server.operator_get("/api/enterprise/jobs/x").status, 400);
    // An id without its random tag is no id at all.
    assert_eq!(
        server.operator_get("/api/enterprise/jobs/0.9.99").status,
        400
    );
    let replay = client.request(
        "POST",
        "/api/enterprise/jobs/dead/1.9.9-00000000000000000000000000000000/replay",
        &[common::OPERATOR],
        b"",
    );
    assert_eq!(replay.status, 404);
}

#[apply(engines)]
fn an_idempotency_key_returns_the_first_job_from_any_shard(#[case] engine: &str) {
    let server = Server::start(engine, &["--shards", "2", "--debug-routes"]);
    let body = json!({"kind": "analytics", "key": "signup-42", "payload": {"event": "signup"}});
    let first = enqueue(&mut server.connect(), &body);
    assert_eq!(first.status, 202, "{}", first.text());
    let id = first.json()["job"]["id"].clone();
    // New connections land on either shard: every one must find the first job.
    for _ in 0..8 {
        let again = enqueue(&mut server.connect(), &body);
        assert_eq!(again.status, 200, "{}", again.text());
        assert_eq!(
            (
                again.json()["job"]["id"].clone(),
                again.json()["duplicate"].clone()
            ),
            (id.clone(), json!(true))
        );
    }
    let header = server.connect().request(
        "POST",
        "/api/enterprise/jobs",
        &[("Idempotency-Key", "signup-42"), common::OPERATOR],
        br#"{"kind": "analytics", "payload": {"event": "signup"}}"#,
    );
    assert_eq!(
        (header.status, header.json()["job"]["id"].clone()),
        (200, id)
    );
}

/// Spin jobs (CPU work) in every class on one shard with one worker each: the classes share the
/// core 8:4:2:1, so high finishes first and background last, shown by finish order.
#[apply(engines)]
fn classes_share_the_core_by_priority_under_contention(#[case] engine: &str) {
    let server = Server::start_with(
        engine,
        &["--shards", "1", "--debug-routes"],
        &[
            ("QUEUE_HIGH_WORKERS", "1"),
            ("QUEUE_MEDIUM_WORKERS", "1"),
            ("QUEUE_LOW_WORKERS", "1"),
            ("QUEUE_BACKGROUND_WORKERS", "1"),
        ],
    );
    let classes = ["background", "low", "medium", "high"];
    // Lowest first, so the order cannot come from the order of arrival.
    let order: Vec<&str> = (0..20).flat_map(|_| classes).collect();
    let bodies: Vec<Value> = order
        .iter()
        .map(|class| json!({"kind": "debug.spin", "class": class, "payload": {"ms": 15}}))
        .collect();
    let ids: Vec<(String, &str)> = enqueue_batch(&mut server.connect(), &bodies)
        .into_iter()
        .zip(order)
        .collect();
    let mut finished: HashMap<&str, Vec<u64>> = HashMap::new();
    for (id, class) in &ids {
        let job = wait_for_state(&server, id, "done");
        finished
            .entry(class)
            .or_default()
            .push(job["finish_seq"].as_u64().unwrap());
    }
    let mean = |class: &str| {
        let seqs = &finished[class];
        seqs.iter().sum::<u64>() as f64 / seqs.len() as f64
    };
    let last_high = *finished["high"].iter().max().unwrap();
    let done_by = |class: &str| finished[class].iter().filter(|s| **s < last_high).count();
    eprintln!(
        "mean finish rank: high {:.1} medium {:.1} low {:.1} background {:.1}; done when high \
         was: medium {} low {} background {}",
        mean("high"),
        mean("medium"),
        mean("low"),
        mean("background"),
        done_by("medium"),
        done_by("low"),
        done_by("background")
    );
    assert!(mean("high") < mean("medium"), "{finished:?}");
    assert!(mean("medium") < mean("low"), "{finished:?}");
    assert!(mean("low") < mean("background"), "{finished:?}");
    assert!(done_by("background") < done_by("medium"), "{finished:?}");
}

/// A flood of high-priority CPU work does not starve background jobs.
#[apply(engines)]
fn background_jobs_complete_under_a_flood_of_high(#[case] engine: &str) {
    let server = Server::start(engine, &["--shards", "1", "--debug-routes"]);
    let spin = |class: &str| json!({"kind": "debug.spin", "class": class, "payload": {"ms": 20}});
    // The flood first, then the background jobs, all taken in before any runs.
    let mut bodies = vec![spin("high"); 150];
    bodies.extend(vec![spin("background"); 3]);
    let mut ids = enqueue_batch(&mut server.connect(), &bodies);
    let background = ids.split_off(150);
    let high = ids;
    let background_done: Vec<u64> = background
        .iter()
        .map(|id| {
            wait_for_state(&server, id, "done")["finish_seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let high_done: Vec<u64> = high
        .iter()
        .map(|id| {
            wait_for_state(&server, id, "done")["finish_seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let last_background = *background_done.iter().max().unwrap();
    let high_after = high_done.iter().filter(|s| **s > last_background).count();
    eprintln!("high jobs that finished after the last background one: {high_after} of 150");
    assert!(
        high_after >= 30,
        "background waited for the high flood: only {high_after} high jobs finished after it"
    );
}

/// While background jobs wait behind a high flood, aging raises the background class's weight.
#[apply(engines)]
fn aging_raises_the_weight_of_a_class_whose_jobs_wait(#[case] engine: &str) {
    let server = Server::start(engine, &["--shards", "1", "--debug-routes"]);
    let spin = |class: &str| json!({"kind": "debug.spin", "class": class, "payload": {"ms": 20}});
    let mut bodies = vec![spin("high"); 300];
    bodies.extend(vec![spin("background"); 40]);
    let ids = enqueue_batch(&mut server.connect(), &bodies);
    let raised = wait_for_queues(&server, "the background weight to rise", |s| {
        s["classes"]["background"]["weight"].as_u64() > Some(1)
    });
    eprintln!(
        "background weight {}",
        raised["classes"]["background"]["weight"]
    );
    for id in &ids {
        wait_for_state(&server, id, "done");
    }
    wait_for_queues(&server, "the weight to fall back once nothing waits", |s| {
        s["classes"]["background"]["weight"] == 1
    });
}

/// On one shard, and on two where the first hands its overflow to the second until both are full.
#[apply(engines)]
fn a_full_queue_answers_429_and_loses_no_accepted_job(#[case] engine: &str) {
    for shards in ["1", "2"] {
        let server = Server::start_with(
            engine,
            &["--shards", shards, "--debug-routes"],
            &[
                ("QUEUE_MAX_SIZE", "20"),
                ("QUEUE_HANDOFF_WATERMARK", "50"),
                ("QUEUE_BACKGROUND_WORKERS", "1"),
            ],
        );
        // Pipelined, so that the queue fills however slowly this host runs the client.
        let job = json!({"kind": "debug.sleep", "class": "background", "payload": {"ms": 10}});
        let responses = enqueue_pipelined(&mut server.connect(), &vec![job; 100]);
        let (mut accepted, mut refused) = (Vec::new(), 0);
        for response in responses {
            match response.status {
                202 => accepted.push(response.json()["job"]["id"].as_str().unwrap().to_string()),
                429 => {
                    assert_eq!(response.header("retry-after"), Some("1"));
                    assert_eq!(response.error_code(), "queue_full");
                    refused += 1;
                }
                other => panic!("unexpected {other}: {}", response.text()),
            }
        }
        assert!(
            refused > 0,
            "{shards} shards: the queue never filled ({} accepted)",
            accepted.len()
        );
        for id in &accepted {
            wait_for_state(&server, id, "done");
        }
        let n = accepted.len() as u64;
        let status = wait_for_queues(&server, "every accepted job to be counted", |s| {
            s["classes"]["background"]["processed"] == n
        });
        assert_eq!(
            status["classes"]["background"]["rejected"], refused,
            "{shards} shards: {status}"
        );
    }
}

#[apply(engines)]
fn a_shard_past_its_watermark_hands_jobs_to_the_least_loaded_shard(#[case] engine: &str) {
    let server = Server::start_with(
        engine,
        &["--shards", "2", "--debug-routes"],
        &[
            ("QUEUE_MAX_SIZE", "100"),
            ("QUEUE_HANDOFF_WATERMARK", "10"),
            ("QUEUE_BACKGROUND_WORKERS", "1"),
        ],
    );
    // One connection: every request lands on the same shard, which fills up.
    let mut client = server.connect();
    let jobs: Vec<Value> = (0..40)
        .map(|_| {
            let response = enqueue(
                &mut client,
                &json!({"kind": "debug.sleep", "class": "background", "payload": {"ms": 50}}),
            );
            assert_eq!(response.status, 202, "{}", response.text());
            response.json()["job"].clone()
        })
        .collect();
    let home = jobs[0]["shard"].as_u64().unwrap();
    let moved: Vec<&Value> = jobs.iter().filter(|j| j["shard"] != home).collect();
    assert!(!moved.is_empty(), "no job was handed off");
    assert!(
        moved.iter().all(|j| j["handed_off_from"] == home),
        "{moved:?}"
    );
    for job in &jobs {
        wait_for_state(&server, job["id"].as_str().unwrap(), "done");
    }
    let n = moved.len() as u64;
    wait_for_queues(&server, "the hand-offs to be counted", |s| {
        let shards = s["shards"].as_array().unwrap();
        let class = |shard: u64| &shards[shard as usize]["classes"]["background"];
        class(home)["handed_off"] == n
            && class(1 - home)["handed_in"] == n
            && s["classes"]["background"]["processed"] == 40
    });
    let metrics = server.get("/metrics").text();
    assert!(
        metrics.contains(&format!(
            "coinbit_queue_jobs_handed_off_total{{shard=\"{home}\",class=\"background\"}} {n}"
        )),
        "{metrics}"
    );
}

#[apply(engines)]
fn health_warns_and_fails_on_queued_jobs(#[case] engine: &str) {
    let server = Server::start_with(
        engine,
        &["--shards", "1", "--debug-routes"],
        &[
            ("MONITORING_QUEUE_SIZE_WARNING", "3"),
            ("MONITORING_QUEUE_SIZE_CRITICAL", "6"),
            ("MONITORING_METRICS_INTERVAL", "200"),
            ("QUEUE_BACKGROUND_WORKERS", "1"),
        ],
    );
    let mut client = server.connect();
    let body = json!({"kind": "debug.sleep", "class": "background", "payload": {"ms": 600}});
    let check = |server: &Server| {
        let health = server.get("/health");
        (
            health.status,
            health.json()["checks"]["queues:size"][0]["status"].clone(),
        )
    };
    for _ in 0..5 {
        enqueue_ok(&mut client, &body);
    }
    wait_for("/health to warn", PATIENCE, || {
        (check(&server) == (200, json!("warn"))).then_some(())
    });
    for _ in 0..4 {
        enqueue_ok(&mut client, &body);
    }
    wait_for("/health to fail", PATIENCE, || {
        (check(&server) == (503, json!("fail"))).then_some(())
    });
    // The same count is the monitor's queue-size input: its sample and the alert.
    let alerts = wait_for("the queue-size critical alert", PATIENCE, || {
        let body = server.get("/api/enterprise/alerts").json();
        let firing = body["active"]
            .as_array()?
            .iter()
            .any(|a| a["id"] == "queue_size/critical" && a["value"].as_f64().unwrap_or(0.0) >= 6.0);
        firing.then_some(body)
    });
    let sampled = server.get("/api/enterprise/metrics").json()["monitoring"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["queued_jobs"].as_u64().unwrap())
        .max();
    assert!(sampled >= Some(6), "{sampled:?} {alerts}");
    wait_for("/health to pass once drained", PATIENCE, || {
        (check(&server) == (200, json!("pass"))).then_some(())
    });
}

/// While the monitor sheds low-priority work (CPU critical under a request flood), low and
/// background workers take no new job and high ones go on; the held jobs stay queued and all
/// run once the alert clears.
#[apply(engines)]
fn low_and_background_workers_pause_while_low_priority_work_is_shed(#[case] engine: &str) {
    let server = Server::start(
        engine,
        &[
            "--shards",
            "1",
            "--debug-routes",
            "--min-workers",
            "1",
            "--max-workers",
            "1",
            "--metrics-interval",
            "300",
            "--cpu-warning",
            "10",
            "--cpu-critical",
            "20",
        ],
    );
    let shedding = |server: &Server| {
        server.get("/api/enterprise/alerts").json()["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == "shed_low_priority" && a["active"] == true)
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood: Vec<_> = (0..3)
        .map(|_| {
            let (addr, stop) = (server.addr, stop.clone());
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if client.try_request("GET", "/livez", &[], b"").is_none() {
                        client = Client::connect(addr);
                    }
                }
            })
        })
        .collect();
    let mut client = server.connect();
    let sleep_job =
        |class: &str| json!({"kind": "debug.sleep", "class": class, "payload": {"ms": 1}});
    // The alert can clear for a moment on a loaded host: a round where it did proves
    // nothing and is run again, but one round must see the pause.
    let mut held: Vec<String> = Vec::new();
    let mut paused = false;
    for _ in 0..5 {
        wait_for("shed_low_priority to be raised", PATIENCE, || {
            shedding(&server).then_some(())
        });
        held = ["low", "background", "low", "background"]
            .iter()
            .map(|class| enqueue_ok(&mut client, &sleep_job(class)))
            .collect();
        let high: Vec<String> = (0..4)
            .map(|_| enqueue_ok(&mut client, &sleep_job("high")))
            .collect();
        for id in &high {
            wait_for_state(&server, id, "done");
        }
        // Observed between two looks that both see the shedding: the pause, not a race.
        let states: Vec<Value> = held
            .iter()
            .map(|id| job(&server, id)["state"].clone())
            .collect();
        if shedding(&server) {
            assert!(states.iter().all(|s| s == "queued"), "{states:?}");
            paused = true;
            break;
        }
        eprintln!("the alert cleared while looking; held jobs: {states:?}; again");
    }
    assert!(paused, "the alert never held through a round");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flood.into_iter().for_each(|t| t.join().unwrap());
    wait_for("shed_low_priority to be lowered", PATIENCE, || {
        (!shedding(&server)).then_some(())
    });
    for id in &held {
        wait_for_state(&server, id, "done");
    }
}

/// With request classes on, a pipelined flood of a low-class route takes turns at the shard's
/// gate once a high-class route has had requests (some of the flood's requests wait), every
/// request is answered in order, the high-class route never waits, a client that leaves with
/// requests waiting costs nothing, and the server still stops cleanly. Without anything above
/// it, the same flood never waits.
#[apply(engines)]
fn request_classes_take_turns_at_the_gate_and_lose_nothing(#[case] engine: &str) {
    let mut server = Server::start_with(
        engine,
        &["--shards", "1"],
        &[("QUEUE_ROUTE_CLASSES", "livez=high,readyz=low")],
    );
    const ROUNDS: usize = 100;
    // Each round: a low-class request, then one without a class whose 404 names the round,
    // so the order of the answers shows.
    let pipelined: Vec<u8> = (0..ROUNDS)
        .flat_map(|i| {
            format!(
                "GET /readyz HTTP/1.1\r\nHost: t\r\n\r\nGET /missing/{i} HTTP/1.1\r\nHost: t\r\n\r\n"
            )
            .into_bytes()
        })
        .collect();
    let read_rounds = |client: &mut Client| {
        for i in 0..ROUNDS {
            let low = client.read_response(false);
            assert_eq!(low.status, 200, "round {i}: {}", low.text());
            let unclassed = client.read_response(false);
            assert_eq!(unclassed.status, 404);
            let message = unclassed.json()["error"]["message"].clone();
            assert!(
                message
                    .as_str()
                    .is_some_and(|m| m.ends_with(&format!("\"/missing/{i}\""))),
                "round {i} answered out of order: {message}"
            );
        }
    };
    // Nothing above the low class has come yet: a flood of it never waits.
    let mut alone = server.connect();
    alone.send(&pipelined);
    read_rounds(&mut alone);
    let status = wait_for_queues(&server, "the lone flood counted", |s| {
        s["classes"]["low"]["requests"]["passed"].as_u64() == Some(ROUNDS as u64)
    });
    assert_eq!(
        status["classes"]["low"]["requests"]["waited"], 0,
        "{status}"
    );

    // A high-class request: from now on the low class gives way to it.
    let mut high = server.connect();
    assert_eq!(high.request("GET", "/livez", &[], b"").status, 200);
    let mut flood: Vec<_> = (0..4).map(|_| server.connect()).collect();
    for client in &mut flood {
        client.send(&pipelined);
    }
    let high_answers: Vec<u16> = (0..20)
        .map(|_| high.request("GET", "/livez", &[], b"").status)
        .collect();
    assert!(high_answers.iter().all(|s| *s == 200), "{high_answers:?}");
    for client in &mut flood {
        read_rounds(client);
    }
    let low_total = (5 * ROUNDS) as u64;
    let status = wait_for_queues(&server, "the gate's counts", |s| {
        let low = &s["classes"]["low"]["requests"];
        low["passed"].as_u64().unwrap_or(0) + low["waited"].as_u64().unwrap_or(0) == low_total
            && s["classes"]["high"]["requests"]["passed"].as_u64() >= Some(21)
    });
    let waited = status["classes"]["low"]["requests"]["waited"]
        .as_u64()
        .unwrap();
    assert!(waited > 0, "the pipelined flood never waited: {status}");
    assert_eq!(
        status["classes"]["high"]["requests"]["waited"], 0,
        "{status}"
    );
    let prometheus = server.get("/metrics").text();
    assert!(
        prometheus.contains(&format!(
            "coinbit_queue_requests_waited_total{{shard=\"0\",class=\"low\"}} {waited}"
        )),
        "{prometheus}"
    );

    // A client that sends a flood and leaves at once: its waiting requests are dropped.
    let mut leaving = server.connect();
    leaving.send(&pipelined.repeat(4));
    drop(leaving);
    assert_eq!(server.get("/readyz").status, 200);
    assert_eq!(server.get("/livez").status, 200);

    // Requests still waiting when the server is told to stop are answered, then it exits.
    let mut last = server.connect();
    // Served before the stop (accepted and read): then its flood is answered, not refused.
    assert_eq!(last.request("GET", "/livez", &[], b"").status, 200);
    last.send(&pipelined);
    server.signal(libc::SIGTERM);
    let mut answered = 0;
    while let Some(response) = last.try_read_response(false) {
        assert!(
            matches!(response.status, 200 | 404 | 503),
            "{}",
            response.status
        );
        answered += 1;
    }
    assert!(answered > 0, "nothing answered before the stop");
    assert!(server.wait_exit(PATIENCE).success());
}

/// "A graceful shutdown runs the queued ones (within `SHUTDOWN_TIMEOUT`)": jobs still queued in
/// a shard's memory at SIGTERM run before the process exits. One background worker runs them
/// one after another, so the exit cannot come before the queued jobs' sleeps add up, and a
/// shard that stopped with jobs unfinished says so in the log.
#[apply(engines)]
fn sigterm_runs_the_jobs_still_queued_before_exiting(#[case] engine: &str) {
    const JOB_MS: u64 = 400;
    let mut server = Server::start_with(
        engine,
        &[
            "--shards",
            "1",
            "--debug-routes",
            "--shutdown-timeout",
            "15000",
        ],
        &[("QUEUE_BACKGROUND_WORKERS", "1")],
    );
    let body = json!({"kind": "debug.sleep", "class": "background", "payload": {"ms": JOB_MS}});
    let ids = enqueue_batch(&mut server.connect(), &vec![body; 6]);
    // A job the status shows not done now was not done at `checked` either; at most one of
    // them had started, so at least `pending - 1` whole sleeps remained then.
    let checked = Instant::now();
    let pending = ids
        .iter()
        .filter(|id| job(&server, id)["state"] != "done")
        .count() as u64;
    assert!(
        pending >= 2,
        "the jobs ran before the test could stop the server"
    );
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(30)).success());
    let took = checked.elapsed();
    assert!(
        took >= Duration::from_millis((pending - 1) * JOB_MS),
        "exited {took:?} after {pending} jobs of {JOB_MS} ms were still queued"
    );
    let log = server.log_lines().join("\n");
    assert!(!log.contains("unfinished"), "{log}");
    assert!(log.contains("stopped in"), "{log}");
}

/// A JSON body `depth` levels deep: the job's payload holds the nesting.
fn nested_job_body(depth: usize) -> String {
    // The body's own object is the first level.
    let inner = depth - 1;
    format!(
        r#"{{"kind": "analytics", "payload": {{"event": "e", "deep": {}1{}}}}}"#,
        "[".repeat(inner - 1),
        "]".repeat(inner - 1)
    )
}

#[apply(engines)]
fn json_bodies_are_refused_cleanly_when_too_deep_duplicated_or_badly_keyed(#[case] engine: &str) {
    let server = Server::start(engine, &["--shards", "1", "--debug-routes"]);
    let mut client = server.connect();
    // 32 levels parse; 33 and 70 (which overflowed a may coroutine's stack in a debug build)
    // are refused before any parse, and the shard keeps answering at once.
    let ok = client.request(
        "POST",
        "/api/enterprise/jobs",
        &[common::OPERATOR],
        nested_job_body(32).as_bytes(),
    );
    assert_eq!(ok.status, 202, "{}", ok.text());
    for depth in [33, 70, 5000] {
        let body = nested_job_body(depth);
        let response = client.request(
            "POST",
            "/api/enterprise/jobs",
            &[common::OPERATOR],
            body.as_bytes(),
        );
        assert_eq!(
            (response.status, response.error_code().as_str()),
            (400, "json_too_deep"),
            "depth {depth}"
        );
    }
    let deep_replay = format!(r#"{{"timeout_ms": {}1{}}}"#, "[".repeat(70), "]".repeat(70));
    let response = client.request(
        "POST",
        "/api/enterprise/jobs/dead/0.0.0-00000000000000000000000000000000/replay",
        &[common::OPERATOR],
        deep_replay.as_bytes(),
    );
    assert_eq!(
        (response.status, response.error_code().as_str()),
        (400, "json_too_deep")
    );
    assert_eq!(server.get("/livez").status, 200);

    // A key twice in one object is refused at any depth, as at the top level.
    for body in [
        r#"{"kind": "analytics", "kind": "analytics", "payload": {"event": "e"}}"#,
        r#"{"kind": "analytics", "payload": {"event": "e", "event": "f"}}"#,
        r#"{"kind": "analytics", "payload": {"event": "e", "x": [{"a": 1, "a": 2}]}}"#,
    ] {
        let response = client.request(
            "POST",
            "/api/enterprise/jobs",
            &[common::OPERATOR],
            body.as_bytes(),
        );
        assert_eq!(response.status, 400, "{body}: {}", response.text());
        assert!(response.text().contains("duplicate"), "{}", response.text());
    }

    // Idempotency keys are visible ASCII, 1 to 255 bytes, compared exactly.
    let job = br#"{"kind": "analytics", "payload": {"event": "e"}}"#;
    for bad in [
        &b"caf\xc3\xa9"[..],
        b"\xff\xfe",
        b"\xfe\xff",
        b"two words",
        b"tab\there",
    ] {
        let mut head =
            b"POST /api/enterprise/jobs HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer test-operator-token-0123456789abcdef\r\nIdempotency-Key: ".to_vec();
        head.extend_from_slice(bad);
        head.extend_from_slice(format!("\r\nContent-Length: {}\r\n\r\n", job.len()).as_bytes());
        head.extend_from_slice(job);
        let mut raw = server.connect();
        raw.send(&head);
        let response = raw.read_response(false);
        assert_eq!(
            (response.status, response.error_code().as_str()),
            (400, "bad_request"),
            "{bad:?}: {}",
            response.text()
        );
    }
    let long = "k".repeat(256);
    for (key, status) in [
        (long.as_str(), 400),
        (&long[..255], 202),
        ("\u{e9}t\u{e9}", 400),
    ] {
        let body = json!({"kind": "analytics", "payload": {"event": "e"}, "key": key});
        assert_eq!(enqueue(&mut client, &body).status, status, "{key}");
    }
}

#[apply(engines)]
fn payloads_are_limited_and_finished_jobs_keep_none(#[case] engine: &str) {
    let server = Server::start(
        engine,
        &[
            "--shards",
            "1",
            "--debug-routes",
            "--max-payload-bytes",
            "4096",
            "--retry-base-delay",
            "20",
        ],
    );
    let mut client = server.connect();
    let too_big = json!({"kind": "analytics", "payload": {"event": "e", "pad": "x".repeat(5000)}});
    let response = enqueue(&mut client, &too_big);
    assert_eq!(
        (response.status, response.error_code().as_str()),
        (413, "payload_too_large"),
        "{}",
        response.text()
    );

    // Jobs still waiting hold their payloads; once done they hold none.
    let pad = "x".repeat(3000);
    let sleeps: Vec<String> = (0..3)
        .map(|i| {
            enqueue_ok(
                &mut client,
                &json!({"kind": "debug.sleep", "payload": {"ms": 300, "effect": format!("pad-{i}"), "pad": pad}}),
            )
        })
        .collect();
    let held = wait_for_queues(&server, "the waiting payloads to be counted", |s| {
        s["retained_payload_bytes"].as_u64() > Some(9000)
    });
    assert_eq!(
        held["shards"][0]["retained_payload_bytes"],
        held["retained_payload_bytes"]
    );
    for id in &sleeps {
        wait_for_state(&server, id, "done");
    }
    wait_for_queues(&server, "the finished payloads to be dropped", |s| {
        s["retained_payload_bytes"] == 0
    });

    // A dead letter keeps its payload, so it can be replayed.
    let dead = enqueue_ok(
        &mut client,
        &json!({"kind": "debug.fail", "payload": {"times": 1}, "max_attempts": 1}),
    );
    wait_for_state(&server, &dead, "dead");
    let payload_bytes = json!({"times": 1}).to_string().len() as u64;
    wait_for_queues(&server, "the dead letter's payload to be counted", |s| {
        s["retained_payload_bytes"] == payload_bytes
    });
    let metrics = server.get("/metrics").text();
    assert!(
        metrics.contains(&format!(
            "coinbit_queue_retained_payload_bytes{{shard=\"0\"}} {payload_bytes}"
        )),
        "{metrics}"
    );
    let replay = client.request(
        "POST",
        &format!("/api/enterprise/jobs/dead/{dead}/replay"),
        &[common::OPERATOR],
        br#"{"max_attempts": 2}"#,
    );
    assert_eq!(replay.status, 202, "{}", replay.text());
    let done = wait_for_state(&server, &dead, "done");
    assert_eq!(done["result"]["attempt"], 2, "{done}");
    wait_for_queues(&server, "the replayed job's payload to be dropped", |s| {
        s["retained_payload_bytes"] == 0
    });
}
