//! The shard's heartbeat under may: its metrics reports to the monitor, sent by a coroutine on
//! the generation's carrier.
//!
//! The coroutine waits on a periodic timerfd placed on that carrier ([`carriers::place_fd`]), so
//! each tick comes back from the carrier's own `epoll_wait` and runs there: while anything keeps
//! the carrier from polling (a handler that blocks it, a predecessor's coroutine still stuck on
//! it), no report goes out and the monitor replaces the generation. A sleep would not do: may
//! resumes a timed-out coroutine on its timer thread, whatever the state of the carrier.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use may::io::{CoIo, WaitIo};

use super::{carriers, guarded, MayShard};
use crate::engine::{self, TICK};

/// Starts the heartbeat coroutine on the generation's carrier.
pub(super) fn start(shard: &Arc<MayShard>) -> io::Result<()> {
    let timer = periodic_timer(TICK, shard.carrier)?;
    let io = CoIo::new(timer).map_err(|e| io::Error::other(e.to_string()))?;
    let (owner, shard) = (shard.clone(), shard.clone());
    carriers::spawn_on(owner.carrier, move || {
        guarded(&owner, move || beat(&shard, &io))
    })
    .map(drop)
}

/// Sends a report every snapshot interval, until the generation ends or is replaced.
fn beat(shard: &MayShard, timer: &CoIo<OwnedFd>) {
    let interval = shard.ctx.config.snapshot_interval();
    let mut next_report = Instant::now();
    while !shard.queue_loop_stop.load(Ordering::Acquire)
        && !shard.ctx.slot.is_superseded(shard.ctx.generation)
    {
        let now = Instant::now();
        if now >= next_report {
            shard.with_app(|app| engine::send_report(app, &shard.ctx, now, &shard.buffers));
            next_report = now + interval;
        }
        timer.wait_io();
        consume_expirations(timer.inner());
    }
}

/// A non-blocking timerfd that expires every `period`, placed so that its readiness wakes
/// `carrier`.
fn periodic_timer(period: Duration, carrier: usize) -> io::Result<OwnedFd> {
    // SAFETY: plain timerfd creation; the descriptor is checked and owned below.
    let raw = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    let raw = carriers::place_fd(raw, carrier, carriers::count());
    // SAFETY: `raw` is the timerfd's one descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let every = libc::timespec {
        tv_sec: period.as_secs() as libc::time_t,
        tv_nsec: period.subsec_nanos() as libc::c_long,
    };
    let spec = libc::itimerspec {
        it_interval: every,
        it_value: every,
    };
    // SAFETY: a valid timerfd and a valid `itimerspec`; the old value is not asked for.
    if unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Reads the expiration count (not needed) so that the timer is not left readable.
fn consume_expirations(timer: &OwnedFd) {
    let mut count = [0u8; 8];
    // SAFETY: an 8-byte read into a valid buffer from our non-blocking timerfd; `EAGAIN` (no
    // expiration yet, a spurious wake-up) is fine.
    unsafe { libc::read(timer.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
}
