//! A bounded pool of I/O threads for the blocking calls to exchanges.
//!
//! A shard never waits on an exchange: it hands a call to this pool over a bounded channel and
//! awaits the answer on a one-shot channel (`recv_async`, which either engine can poll), as
//! [`crate::auth::password`] does for Argon2. A full queue answers [`PoolFull`] at once: the
//! caller retries later (an order intent stays pending), the shard never blocks.

use std::future::Future;

/// The pool's queue is full: try again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the exchange I/O pool is full")]
pub struct PoolFull;

type Job = Box<dyn FnOnce() + Send>;

/// The pool's handle; clones share the threads, which stop when every handle is dropped.
#[derive(Clone)]
pub struct IoPool {
    jobs: flume::Sender<Job>,
}

impl IoPool {
    /// Starts `threads` threads behind a queue of `queue` calls.
    pub fn new(threads: usize, queue: usize) -> std::io::Result<IoPool> {
        let (jobs, inbox) = flume::bounded::<Job>(queue);
        for index in 0..threads.max(1) {
            let inbox = inbox.clone();
            std::thread::Builder::new()
                .name(format!("exchange-io-{index}"))
                .spawn(move || {
                    for job in inbox.iter() {
                        job();
                    }
                })?;
        }
        Ok(IoPool { jobs })
    }

    /// Runs `call` on a pool thread; the future gives its result (`None` if the thread
    /// panicked).
    pub fn run<T, F>(&self, call: F) -> Result<impl Future<Output = Option<T>>, PoolFull>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (answer, receiver) = flume::bounded(1);
        let job: Job = Box::new(move || {
            // The caller may have gone meanwhile: nothing to tell.
            let _ = answer.send(call());
        });
        self.jobs.try_send(job).map_err(|_| PoolFull)?;
        Ok(async move { receiver.recv_async().await.ok() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_through_a_future_and_refuses_when_full() {
        let pool = IoPool::new(1, 2).unwrap();
        let answer = futures_lite::future::block_on(pool.run(|| 6 * 7).unwrap());
        assert_eq!(answer, Some(42));
        // The one thread held, two queued: the next is refused at once.
        let (release, held) = flume::bounded::<()>(0);
        let busy = pool.run(move || held.recv().ok()).unwrap();
        let mut queued = Vec::new();
        let mut refused = 0;
        for _ in 0..10 {
            match pool.run(|| ()) {
                Ok(f) => queued.push(f),
                Err(PoolFull) => refused += 1,
            }
        }
        assert!(queued.len() <= 3, "{}", queued.len());
        assert!(refused >= 7);
        release.send(()).unwrap();
        assert_eq!(futures_lite::future::block_on(busy), Some(Some(())));
    }
}
