//! may's scheduler, set up as the shards: three workers per shard, all pinned to its CPU, of
//! which a generation uses one ([`for_generation`]), and the two ways a coroutine is kept on (or
//! brought back to) its generation's worker.
//!
//! Why several: a handler that blocks its worker stalls every coroutine queued there (may's work
//! stealing is off, see Cargo.toml). The monitor then replaces the shard
//! ([`crate::shard::await_exit`]); the new generation runs on another of the shard's workers, on
//! the same core, and serves while the old one is still stuck. A worker is taken only once it
//! has run a probe coroutine, so a replacement never lands on a worker that an earlier
//! generation still holds stuck; with three, a shard serves while two generations are stuck.
//! An idle worker is a thread asleep in `epoll_wait`.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::shard::ShardSlot;

/// Coroutine stack, in machine words (may's unit): 128 KiB, enough for a handler and a panic's
/// unwinding; only the pages a coroutine touches are committed.
const STACK_WORDS: usize = 16 * 1024;
/// How long start-up waits for every worker to take its pinning coroutine.
const PIN_TIMEOUT: Duration = Duration::from_secs(10);

static WORKERS: OnceLock<usize> = OnceLock::new();

/// Workers per shard: one for the running generation, the others for its replacements.
const PER_SHARD: usize = 3;
/// How often [`for_generation`] looks at its probes' answers.
const PROBE_POLL: Duration = Duration::from_millis(2);
/// How long [`for_generation`] waits before it says that every worker of a shard is stuck.
const STUCK_WARNING: Duration = Duration::from_secs(1);

/// Starts may's scheduler with `PER_SHARD` workers per shard and pins workers `i`,
/// `i + shards`, ... to shard `i`'s CPU, recording the first one's thread id in the slot. Once per
/// process: may's scheduler is global and its workers outlive a shard's restarts.
pub fn start(slots: &[Arc<ShardSlot>]) -> Result<(), String> {
    let workers = slots.len() * PER_SHARD;
    if let Some(&started) = WORKERS.get() {
        return if started == workers {
            Ok(())
        } else {
            Err(format!("may already runs {started} workers"))
        };
    }
    // Our own pinning, to the shards' CPUs: may's would pin worker i to the i-th CPU.
    may::config()
        .set_workers(workers)
        .set_stack_size(STACK_WORDS)
        .set_worker_pin(false);
    // Each pinning coroutine blocks its worker until all have started, so that the n of them
    // sit on n distinct workers; `spawn_on(i)` queues to worker i, so coroutine i runs there.
    let barrier = Arc::new(Barrier::new(workers + 1));
    let failures = Arc::new(Mutex::new(Vec::new()));
    for worker in 0..workers {
        let slot = slots[worker % slots.len()].clone();
        let (barrier, failures) = (barrier.clone(), failures.clone());
        let primary = worker < slots.len();
        spawn_on(worker, move || {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: slot.cpu }) {
                if let Ok(mut f) = failures.lock() {
                    f.push(format!(
                        "could not pin shard {} to CPU {}",
                        slot.id, slot.cpu
                    ));
                }
            }
            if primary {
                slot.set_current_thread();
            }
            barrier.wait();
        })
        .map_err(|e| format!("cannot start may's workers: {e}"))?;
    }
    wait_barrier(&barrier, PIN_TIMEOUT)?;
    let _ = WORKERS.set(workers);
    for failure in failures.lock().map(|f| f.clone()).unwrap_or_default() {
        log::warn!("{failure}");
    }
    Ok(())
}

/// Waits on the barrier from a helper thread, so that a scheduler that never runs the
/// coroutines turns into an error instead of a hang.
fn wait_barrier(barrier: &Arc<Barrier>, limit: Duration) -> Result<(), String> {
    let (done, wait) = flume::bounded(1);
    let barrier = barrier.clone();
    std::thread::spawn(move || {
        barrier.wait();
        let _ = done.send(());
    });
    wait.recv_timeout(limit)
        .map_err(|_| "may's workers did not start".to_string())
}

/// The number of may workers; 1 before `start`.
pub fn count() -> usize {
    WORKERS.get().copied().unwrap_or(1)
}

/// The worker that runs generation `generation` of shard `shard`: the first of the shard's
/// workers, in turns starting at the generation's own ([`worker_of`]), that runs a probe
/// coroutine, so that a generation never queues behind a stuck predecessor. Waits while every
/// one of them is stuck; `None` if `give_up` says so meanwhile. `shard` itself before
/// [`start`] (no workers of the shards yet).
pub fn for_generation(shard: usize, generation: u64, give_up: impl Fn() -> bool) -> Option<usize> {
    let workers = count();
    if workers < PER_SHARD {
        return Some(worker_of(shard, generation, workers));
    }
    let candidates: Vec<usize> = (0..PER_SHARD as u64)
        .map(|turn| worker_of(shard, generation + turn, workers))
        .collect();
    // One probe per worker: on a stuck worker it stays queued, and runs (harmlessly) once the
    // worker is free again.
    let answered: Vec<Arc<AtomicBool>> = candidates
        .iter()
        .map(|&worker| {
            let answered = Arc::new(AtomicBool::new(false));
            let flag = answered.clone();
            if spawn_on(worker, move || flag.store(true, Ordering::Release)).is_err() {
                log::warn!("shard {shard}: cannot probe may worker {worker}");
            }
            answered
        })
        .collect();
    let began = Instant::now();
    let mut warned = false;
    loop {
        let free = candidates
            .iter()
            .zip(&answered)
            .find(|(_, answered)| answered.load(Ordering::Acquire));
        if let Some((&worker, _)) = free {
            return Some(worker);
        }
        if give_up() {
            return None;
        }
        if !warned && began.elapsed() >= STUCK_WARNING {
            warned = true;
            log::warn!("shard {shard}: every worker of its core is stuck; waiting for one");
        }
        std::thread::sleep(PROBE_POLL);
    }
}

/// The worker whose turn generation `generation` of shard `shard` is: generations 1, 4, ... on
/// worker `shard`, 2, 5, ... on `shard + shards`, 3, 6, ... on `shard + 2 * shards`; `shard`
/// itself when the workers are not the shards' (before [`start`]).
fn worker_of(shard: usize, generation: u64, workers: usize) -> usize {
    let shards = workers / PER_SHARD;
    if shard >= shards {
        return shard;
    }
    shard + (generation.saturating_sub(1) as usize) % PER_SHARD * shards
}

/// Spawns a coroutine queued to worker `worker`.
pub fn spawn_on(
    worker: usize,
    task: impl FnOnce() + Send + 'static,
) -> std::io::Result<may::coroutine::JoinHandle<()>> {
    // SAFETY: may's caveats are thread-locals held across a yield (a coroutine may resume on
    // another worker) and stack overflow. Our coroutines keep no thread-local reference across
    // a yield (see the module notes of `engine::may`), and the stack is sized above.
    unsafe { may::coroutine::Builder::new().id(worker).spawn(task) }
}

/// Moves an accepted socket to a descriptor number that may's selector maps to `worker`
/// (may registers descriptor `fd` with worker `fd % workers`), so that the connection's I/O
/// readiness resumes its coroutine on its own generation's worker. Costs a `dup` and a `close` per
/// connection; returns `fd` itself when it already maps there or no such number is found.
pub fn place_fd(fd: RawFd, worker: usize, workers: usize) -> RawFd {
    if workers <= 1 || fd as usize % workers == worker {
        return fd;
    }
    let mut from = fd as usize + 1;
    for _ in 0..8 {
        let target = from + (worker + workers - from % workers) % workers;
        // SAFETY: duplicating a descriptor we own; the copy is ours to close.
        let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, target as libc::c_int) };
        if copy < 0 {
            return fd;
        }
        if copy as usize % workers == worker {
            // SAFETY: the original is replaced by its copy and closed once.
            unsafe { libc::close(fd) };
            return copy;
        }
        // SAFETY: a copy we just made and do not keep.
        unsafe { libc::close(copy) };
        from = copy as usize + 1;
    }
    fd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_take_turns_on_the_shards_workers() {
        // (shard, generation, workers) -> worker
        let cases = [
            ((0, 1, 6), 0),
            ((0, 2, 6), 2),
            ((0, 3, 6), 4),
            ((0, 4, 6), 0),
            ((1, 1, 6), 1),
            ((1, 2, 6), 3),
            ((1, 3, 6), 5),
            ((2, 2, 9), 5),
            ((0, 2, 3), 1),
            ((0, 3, 3), 2),
            // Before `start`: one worker, the shard's own number.
            ((0, 2, 1), 0),
            ((3, 1, 1), 3),
        ];
        for ((shard, generation, workers), expected) in cases {
            assert_eq!(
                worker_of(shard, generation, workers),
                expected,
                "shard {shard} generation {generation} of {workers} workers"
            );
        }
    }

    #[test]
    fn placed_descriptors_map_to_their_worker_and_stay_usable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        for workers in [1usize, 2, 3, 4] {
            for worker in 0..workers {
                let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
                let fd = std::os::fd::IntoRawFd::into_raw_fd(client);
                let placed = place_fd(fd, worker, workers);
                assert_eq!(placed as usize % workers, worker, "{workers} workers");
                // SAFETY: `placed` is the one open descriptor of the socket now.
                let stream: std::net::TcpStream =
                    unsafe { std::os::fd::FromRawFd::from_raw_fd(placed) };
                assert!(stream.local_addr().is_ok());
            }
        }
    }
}
