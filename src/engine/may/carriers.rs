//! may's scheduler, set up as the shards: three carrier threads per shard (may calls them its
//! workers), all pinned to its CPU, of
//! which a generation uses one ([`for_generation`]), and the two ways a coroutine is kept on (or
//! brought back to) its generation's carrier.
//!
//! Why several: a handler that blocks its carrier stalls every coroutine queued there (may's work
//! stealing is off, see Cargo.toml). The monitor then replaces the shard
//! ([`crate::shard::await_exit`]); the new generation runs on another of the shard's carriers, on
//! the same core, and serves while the old one is still stuck. A carrier is taken only once it
//! has run a probe coroutine, so a replacement never lands on a carrier that an earlier
//! generation still holds stuck; with three, a shard serves while two generations are stuck.
//! An idle carrier is a thread asleep in `epoll_wait`.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::shard::ShardSlot;

/// Coroutine stack, in machine words (may's unit): 128 KiB of address space, of which only the
/// pages a coroutine touches are committed. What bounds it is the deepest request: measured with
/// may's usage tracking (an odd size), a debug build used at most 24 KiB for any route without
/// a database and 31 KiB for a panic that prints its backtrace (`/debug/crash-shard`); release
/// builds use less. The routes that reach PostgreSQL were not measured that way, hence the 4x
/// margin (an idle connection's stack trim, [`super::stack`], zeroes the usage-tracking words
/// in its range, so measure with trimming off). A smaller size would not make an idle
/// connection cheaper: its resident stack is the depth it reached (a few pages), not the size
/// reserved, and an idle connection gives those within 64 KiB below its waiting frame back.
pub(super) const STACK_WORDS: usize = 16 * 1024;
/// The same in bytes: what may maps for each coroutine's stack, above a guard page.
pub(super) const STACK_BYTES: usize = STACK_WORDS * std::mem::size_of::<usize>();
/// Finished coroutines may keeps for reuse, each with its stack and the pages it touched (may's
/// default is 1000): enough for the connections a shard opens between two of its passes; past
/// it a coroutine's stack is unmapped when it ends, so memory goes back after a mass close.
const COROUTINE_POOL: usize = 256;
/// How long start-up waits for every carrier to take its pinning coroutine.
const PIN_TIMEOUT: Duration = Duration::from_secs(10);

static CARRIERS: OnceLock<usize> = OnceLock::new();

/// Carrier threads per shard: one for the running generation, the others for its replacements.
const PER_SHARD: usize = 3;
/// How often [`for_generation`] looks at its probes' answers.
const PROBE_POLL: Duration = Duration::from_millis(2);
/// How long [`for_generation`] waits before it says that every carrier of a shard is stuck.
const STUCK_WARNING: Duration = Duration::from_secs(1);

/// Starts may's scheduler with `PER_SHARD` carriers per shard and pins carriers `i`,
/// `i + shards`, ... to shard `i`'s CPU, recording the first one's thread id in the slot. Once per
/// process: may's scheduler is global and its carriers outlive a shard's restarts.
pub fn start(slots: &[Arc<ShardSlot>]) -> Result<(), String> {
    let carriers = slots.len() * PER_SHARD;
    if let Some(&started) = CARRIERS.get() {
        return if started == carriers {
            Ok(())
        } else {
            Err(format!("may already runs {started} carriers"))
        };
    }
    // Our own pinning, to the shards' CPUs: may's would pin carrier i to the i-th CPU.
    may::config()
        .set_workers(carriers)
        .set_stack_size(STACK_WORDS)
        .set_pool_capacity(COROUTINE_POOL)
        .set_worker_pin(false);
    // Each pinning coroutine blocks its carrier until all have started, so that the n of them
    // sit on n distinct carriers; `spawn_on(i)` queues to carrier i, so coroutine i runs there.
    let barrier = Arc::new(Barrier::new(carriers + 1));
    let failures = Arc::new(Mutex::new(Vec::new()));
    for carrier in 0..carriers {
        let slot = slots[carrier % slots.len()].clone();
        let (barrier, failures) = (barrier.clone(), failures.clone());
        let primary = carrier < slots.len();
        spawn_on(carrier, move || {
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
        .map_err(|e| format!("cannot start may's carriers: {e}"))?;
    }
    wait_barrier(&barrier, PIN_TIMEOUT)?;
    let _ = CARRIERS.set(carriers);
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
        .map_err(|_| "may's carriers did not start".to_string())
}

/// The number of carrier threads; 1 before `start`.
pub fn count() -> usize {
    CARRIERS.get().copied().unwrap_or(1)
}

/// The carrier that runs generation `generation` of shard `shard`: the first of the shard's
/// carriers, in turns starting at the generation's own ([`carrier_of`]), that runs a probe
/// coroutine, so that a generation never queues behind a stuck predecessor. Waits while every
/// one of them is stuck; `None` if `give_up` says so meanwhile. `shard` itself before
/// [`start`] (no carriers of the shards yet).
pub fn for_generation(shard: usize, generation: u64, give_up: impl Fn() -> bool) -> Option<usize> {
    let carriers = count();
    if carriers < PER_SHARD {
        return Some(carrier_of(shard, generation, carriers));
    }
    let candidates: Vec<usize> = (0..PER_SHARD as u64)
        .map(|turn| carrier_of(shard, generation + turn, carriers))
        .collect();
    // One probe per carrier: on a stuck carrier it stays queued, and runs (harmlessly) once the
    // carrier is free again.
    let answered: Vec<Arc<AtomicBool>> = candidates
        .iter()
        .map(|&carrier| {
            let answered = Arc::new(AtomicBool::new(false));
            let flag = answered.clone();
            if spawn_on(carrier, move || flag.store(true, Ordering::Release)).is_err() {
                log::warn!("shard {shard}: cannot probe may carrier {carrier}");
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
        if let Some((&carrier, _)) = free {
            return Some(carrier);
        }
        if give_up() {
            return None;
        }
        if !warned && began.elapsed() >= STUCK_WARNING {
            warned = true;
            log::warn!("shard {shard}: every carrier of its core is stuck; waiting for one");
        }
        std::thread::sleep(PROBE_POLL);
    }
}

/// The carrier whose turn generation `generation` of shard `shard` is: generations 1, 4, ... on
/// carrier `shard`, 2, 5, ... on `shard + shards`, 3, 6, ... on `shard + 2 * shards`; `shard`
/// itself when the carriers are not the shards' (before [`start`]).
fn carrier_of(shard: usize, generation: u64, carriers: usize) -> usize {
    let shards = carriers / PER_SHARD;
    if shard >= shards {
        return shard;
    }
    shard + (generation.saturating_sub(1) as usize) % PER_SHARD * shards
}

/// Spawns a coroutine queued to carrier `carrier`.
pub fn spawn_on(
    carrier: usize,
    task: impl FnOnce() + Send + 'static,
) -> std::io::Result<may::coroutine::JoinHandle<()>> {
    // SAFETY: may's caveats are thread-locals held across a yield (a coroutine may resume on
    // another carrier) and stack overflow. Our coroutines keep no thread-local reference across
    // a yield (see the module notes of `engine::may`), and the stack is sized above.
    unsafe { may::coroutine::Builder::new().id(carrier).spawn(task) }
}

/// Moves an accepted socket to a descriptor number that may's selector maps to `carrier`
/// (may registers descriptor `fd` with carrier `fd % carriers`), so that the connection's I/O
/// readiness resumes its coroutine on its own generation's carrier. Costs a `dup` and a `close` per
/// connection; returns `fd` itself when it already maps there or no such number is found.
///
/// The search starts above the last number placed ([`PLACE_HINT`]), where the numbers are free:
/// from `fd + 1`, with the connections already placed holding every matching number above it,
/// each try (the lowest free number at or above a matching one) advanced by a few numbers only,
/// and past a few dozen open connections the search gave up, so that connections landed on every
/// carrier of the core: three threads serving one shard on one CPU, taking turns on its lock and
/// its time slices (may's p99 at 64 connections was 9x nginx's).
pub fn place_fd(fd: RawFd, carrier: usize, carriers: usize) -> RawFd {
    if carriers <= 1 || fd as usize % carriers == carrier {
        return fd;
    }
    let hint = PLACE_HINT.load(Ordering::Relaxed).max(fd as usize + 1);
    if let Some(placed) = search_fd(fd, carrier, carriers, hint, 8) {
        PLACE_HINT.store(placed as usize + 1, Ordering::Relaxed);
        return placed;
    }
    // Past the descriptor limit, or a crowded range: start again from the bottom.
    PLACE_HINT.store(0, Ordering::Relaxed);
    search_fd(fd, carrier, carriers, fd as usize + 1, 24).unwrap_or(fd)
}

/// Where [`place_fd`] starts looking: above the last descriptor it placed.
static PLACE_HINT: AtomicUsize = AtomicUsize::new(0);

/// Duplicates `fd` to a free number at or above `from` that maps to `carrier`, in at most
/// `tries` attempts, and closes `fd`; `None` (and `fd` kept) when none was found. Each miss
/// skips twice as far as the one before, so that a crowded range is crossed in a few tries.
fn search_fd(
    fd: RawFd,
    carrier: usize,
    carriers: usize,
    mut from: usize,
    tries: usize,
) -> Option<RawFd> {
    let mut skip = 0;
    for _ in 0..tries {
        let target = from + (carrier + carriers - from % carriers) % carriers;
        let target = libc::c_int::try_from(target).ok()?;
        // SAFETY: duplicating a descriptor we own; the copy is ours to close.
        let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, target) };
        if copy < 0 {
            return None;
        }
        if copy as usize % carriers == carrier {
            // SAFETY: the original is replaced by its copy and closed once.
            unsafe { libc::close(fd) };
            return Some(copy);
        }
        // SAFETY: a copy we just made and do not keep.
        unsafe { libc::close(copy) };
        from = copy as usize + 1 + skip;
        skip = (skip * 2).max(carriers);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::sync::Mutex;

    /// The tests that place descriptors take turns: they share [`PLACE_HINT`], and one
    /// resetting it while the other holds hundreds of numbers sends the other's search into
    /// its own crowded range.
    static PLACING: Mutex<()> = Mutex::new(());

    #[test]
    fn generations_take_turns_on_the_shards_carriers() {
        // (shard, generation, carriers) -> carrier
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
            // Before `start`: one carrier, the shard's own number.
            ((0, 2, 1), 0),
            ((3, 1, 1), 3),
        ];
        for ((shard, generation, carriers), expected) in cases {
            assert_eq!(
                carrier_of(shard, generation, carriers),
                expected,
                "shard {shard} generation {generation} of {carriers} carriers"
            );
        }
    }

    #[test]
    fn hundreds_of_connections_held_at_once_all_map_to_their_carrier() {
        let _turn = PLACING.lock().unwrap_or_else(|e| e.into_inner());
        // Any descriptor places alike: /dev/null stands for the accepted sockets.
        let (carriers, carrier) = (3, 1);
        let mut held = Vec::new();
        for _ in 0..300 {
            let file = std::fs::File::open("/dev/null").unwrap();
            let placed = place_fd(std::os::fd::IntoRawFd::into_raw_fd(file), carrier, carriers);
            // SAFETY: `placed` is the one open descriptor of the file now.
            held.push(unsafe { std::os::fd::OwnedFd::from_raw_fd(placed) });
        }
        let misplaced = held
            .iter()
            .filter(|fd| fd.as_raw_fd() as usize % carriers != carrier)
            .count();
        assert_eq!(misplaced, 0, "of {} held", held.len());
    }

    #[test]
    fn placed_descriptors_map_to_their_carrier_and_stay_usable() {
        let _turn = PLACING.lock().unwrap_or_else(|e| e.into_inner());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        for carriers in [1usize, 2, 3, 4] {
            for carrier in 0..carriers {
                let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
                let fd = std::os::fd::IntoRawFd::into_raw_fd(client);
                let placed = place_fd(fd, carrier, carriers);
                assert_eq!(placed as usize % carriers, carrier, "{carriers} carriers");
                // SAFETY: `placed` is the one open descriptor of the socket now.
                let stream: std::net::TcpStream =
                    unsafe { std::os::fd::FromRawFd::from_raw_fd(placed) };
                assert!(stream.local_addr().is_ok());
            }
        }
    }
}
