//! The users API as the database tests use it: register a user (`POST /api/users`), and
//! read-your-writes (a read that presents the write's `X-Commit-LSN`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::{Client, Response, Server, OPERATOR};

/// The password every test user gets (registration requires one).
pub const PASSWORD: &str = "test password 1";

/// The body `POST /api/users` takes for this user.
pub fn registration(name: &str, email: &str) -> String {
    serde_json::json!({ "name": name, "email": email, "password": PASSWORD }).to_string()
}

pub fn create_user(client: &mut Client, name: &str, email: &str) -> Response {
    client.request(
        "POST",
        "/api/users",
        &[("Content-Type", "application/json")],
        registration(name, email).as_bytes(),
    )
}

/// The id of the user a 201 from `POST /api/users` created.
pub fn user_id(created: &Response) -> i64 {
    created.json()["user"]["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no user id in {}", created.text()))
}

/// Creates a user, then reads it back presenting the write's `X-Commit-LSN` (as staff, with
/// the operator token): the read must be the fresh row, never a stale answer. Returns the
/// user's id.
pub fn write_then_read_own_write(client: &mut Client, name: &str, email: &str) -> i64 {
    let created = create_user(client, name, email);
    assert_eq!(created.status, 201, "{email}: {}", created.text());
    let lsn = created
        .header("X-Commit-LSN")
        .expect("X-Commit-LSN")
        .to_string();
    let id = user_id(&created);
    let read = client.request(
        "GET",
        &format!("/api/users/{id}"),
        &[("X-Min-LSN", &lsn), super::OPERATOR],
        b"",
    );
    assert_eq!(read.status, 200, "{email}: stale read: {}", read.text());
    assert_eq!(read.json()["email"], email, "{email}: the read's row");
    id
}

/// Reads user `id` from `threads` connections until stopped; counts reads and failures.
pub struct Readers {
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Readers {
    /// Readers of user `id` through the replicas, once every replica of `cluster` has replayed
    /// the user (they send no read-your-writes position: a lagging replica would answer 404).
    pub fn start(
        server: &Server,
        cluster: &super::pg::PgCluster,
        db: &str,
        id: i64,
        threads: usize,
    ) -> Readers {
        cluster.wait_on_every_replica(
            "the user",
            db,
            &format!("SELECT count(*) = 1 FROM users WHERE id = {id}"),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let handles = (0..threads)
            .map(|_| {
                let (stop, reads, failures, addr) =
                    (stop.clone(), reads.clone(), failures.clone(), server.addr);
                std::thread::spawn(move || {
                    let mut client = Client::connect(addr);
                    while !stop.load(Ordering::Relaxed) {
                        let r =
                            client.request("GET", &format!("/api/users/{id}"), &[OPERATOR], b"");
                        reads.fetch_add(1, Ordering::Relaxed);
                        if r.status != 200 {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("{} {}", r.status, r.text()));
                        }
                    }
                })
            })
            .collect();
        Readers {
            stop,
            reads,
            failures,
            threads: handles,
        }
    }

    /// Stops the readers and asserts that they read (more than 100 times) and none failed.
    pub fn finish_without_failures(self) {
        let (reads, failures) = self.finish();
        assert!(reads > 100, "only {reads} reads");
        assert!(
            failures.is_empty(),
            "{} of {reads} reads failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
    }

    /// Stops the readers; the failures they saw.
    pub fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (
            self.reads.load(Ordering::Relaxed),
            self.failures.lock().unwrap().clone(),
        )
    }
}
