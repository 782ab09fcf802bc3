//! Argon2id password hashing, off the shard threads.
//!
//! One Argon2id hash takes tens of milliseconds of CPU and about 19 MiB (the crate's defaults,
//! OWASP's minimum): on a shard thread it would stall every connection of that shard. A small
//! pool of threads does it; a shard hands a job over a bounded channel and awaits the answer on
//! a one-shot channel (`recv_async`, which either engine can poll), as the database tier does.
//! When the queue is full the shard gets [`PoolFull`] at once and answers 503: a login flood
//! queues at most `queue` hashes and never the shard.

use std::future::Future;
use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use super::token::random_bytes;

/// The pool's queue is full: answer 503 and let the client retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the password hashing pool is full")]
pub struct PoolFull;

enum Work {
    Hash(String),
    /// `None`: no such user. A dummy hash is checked instead, so that the answer takes as long
    /// as for a real user and its timing does not say whether the email exists.
    Verify {
        hash: Option<String>,
        password: String,
    },
}

enum Answer {
    Hashed(String),
    Verified(bool),
}

struct Job {
    work: Work,
    answer: flume::Sender<Answer>,
}

/// The pool's handle; clones share the same threads. The threads stop when every handle is
/// dropped.
#[derive(Clone)]
pub struct PasswordPool {
    jobs: flume::Sender<Job>,
}

/// The hashing threads run at nice 10 (Linux sets it per thread): where they share a core with
/// a shard, as on a 2-CPU host, the scheduler lets a shard's wake-up preempt a hash at once, so
/// a login flood lengthens logins, not every other request of that shard. Best effort: a host
/// that refuses leaves them at the process's priority.
fn yield_to_shards() {
    // SAFETY: gettid and setpriority take no pointers; PRIO_PROCESS with a thread id sets that
    // thread's nice value on Linux.
    let refused = unsafe {
        let tid = libc::gettid() as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10) != 0
    };
    if refused {
        log::debug!(
            "password thread keeps the process's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl PasswordPool {
    /// Starts `threads` hashing threads behind a queue of `queue` jobs.
    pub fn new(threads: usize, queue: usize) -> std::io::Result<PasswordPool> {
        let (jobs, inbox) = flume::bounded::<Job>(queue);
        for index in 0..threads.max(1) {
            let inbox = inbox.clone();
            std::thread::Builder::new()
                .name(format!("password-{index}"))
                .spawn(move || {
                    yield_to_shards();
                    for job in inbox.iter() {
                        let answer = run(job.work);
                        // The shard may have dropped the request meanwhile: nothing to tell.
                        let _ = job.answer.send(answer);
                    }
                })?;
        }
        Ok(PasswordPool { jobs })
    }

    /// Hashes a new password: the PHC string (`$argon2id$v=19$...`) to store.
    pub fn hash(&self, password: String) -> Result<impl Future<Output = Option<String>>, PoolFull> {
        let answer = self.submit(Work::Hash(password))?;
        Ok(async move {
            match answer.recv_async().await {
                Ok(Answer::Hashed(hash)) => Some(hash),
                _ => None,
            }
        })
    }

    /// Whether `password` matches `hash`; with no hash (no such user), false after as long.
    pub fn verify(
        &self,
        hash: Option<String>,
        password: String,
    ) -> Result<impl Future<Output = bool>, PoolFull> {
        let answer = self.submit(Work::Verify { hash, password })?;
        Ok(async move { matches!(answer.recv_async().await, Ok(Answer::Verified(true))) })
    }

    fn submit(&self, work: Work) -> Result<flume::Receiver<Answer>, PoolFull> {
        let (answer, receiver) = flume::bounded(1);
        self.jobs
            .try_send(Job { work, answer })
            .map_err(|_| PoolFull)?;
        Ok(receiver)
    }
}

fn run(work: Work) -> Answer {
    match work {
        Work::Hash(password) => Answer::Hashed(hash_password(&password)),
        Work::Verify { hash, password } => {
            let matched = match hash {
                Some(hash) => verify_password(&hash, &password),
                None => {
                    verify_password(dummy_hash(), &password);
                    false
                }
            };
            Answer::Verified(matched)
        }
    }
}

/// Argon2id (v19, the crate's default cost) with a fresh 16-byte salt, as a PHC string.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::encode_b64(&random_bytes::<16>()).expect("16 bytes make a valid salt");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("Argon2id hashes any password with a valid salt")
        .to_string()
}

/// Whether `password` matches the PHC string `hash`; false for a hash that does not parse.
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password("no user has this password"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_salted_argon2id_and_verify() {
        let hash = hash_password("correct horse");
        assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
        assert_ne!(hash, hash_password("correct horse"));
        assert!(verify_password(&hash, "correct horse"));
        assert!(!verify_password(&hash, "correct horse "));
        assert!(!verify_password("not a hash", "correct horse"));
    }

    #[test]
    fn the_pool_answers_through_channels_and_refuses_when_full() {
        let pool = PasswordPool::new(1, 4).unwrap();
        let hash = futures_lite::future::block_on(pool.hash("pw".into()).unwrap()).unwrap();
        let verify = |hash: Option<String>, pw: &str| {
            futures_lite::future::block_on(pool.verify(hash, pw.into()).unwrap())
        };
        assert!(verify(Some(hash.clone()), "pw"));
        assert!(!verify(Some(hash), "other"));
        assert!(!verify(None, "pw"));
        // One thread busy and four queued: the next is refused at once, not queued.
        let waiting: Vec<_> = (0..5).filter_map(|_| pool.hash("pw".into()).ok()).collect();
        assert!(waiting.len() <= 5);
        let refused = (0..20).filter(|_| pool.hash("pw".into()).is_err()).count();
        assert!(refused > 0, "a full pool must refuse");
        drop(waiting);
    }
}
