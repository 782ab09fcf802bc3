//! The request gate's turns under may: one per pass of the carrier thread's event loop.
//!
//! A carrier thread runs every coroutine that is ready before it polls epoll again, so a turn taken
//! as soon as it is asked for would only lengthen the pass it was asked in. The gate's
//! coroutine waits instead on an eventfd of the shard's own that a kick writes to: its
//! readiness comes back from the carrier's next `epoll_wait`, beside the sockets that became
//! readable meanwhile (a high-class request among them runs in that same pass).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use may::io::{CoIo, WaitIo};

use super::{carriers, guarded, MayShard};
use crate::queue::RequestGate;

/// A gate whose kicks write to a new eventfd; the descriptor is the shard's, for
/// [`start`] to wait on and for [`wake`] at the end of the generation.
pub(crate) fn new_gate(carrier: usize) -> io::Result<(Rc<RequestGate>, Arc<OwnedFd>)> {
    // SAFETY: plain eventfd creation; the descriptor is checked and owned below.
    let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // Its readiness must wake the shard's own carrier.
    let raw = carriers::place_fd(raw, carrier, carriers::count());
    // SAFETY: `raw` is the eventfd's one descriptor.
    let fd = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
    let kicked = fd.clone();
    Ok((RequestGate::new(Box::new(move || wake(&kicked))), fd))
}

/// Asks for a turn on the carrier's next pass (also how the turn coroutine is told to stop).
pub(crate) fn wake(fd: &OwnedFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: an 8-byte write from a valid buffer to our eventfd. It can only fail when the
    // counter is near overflow, and then a turn is pending anyway.
    unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
}

/// Starts the coroutine that takes the gate's turns on the generation's carrier.
pub(crate) fn start(shard: &Arc<MayShard>) -> io::Result<()> {
    let Some(fd) = shard.gate_fd.clone() else {
        return Ok(());
    };
    let io = CoIo::new(fd).map_err(|e| io::Error::other(e.to_string()))?;
    let (owner, shard) = (shard.clone(), shard.clone());
    carriers::spawn_on(owner.carrier, move || {
        guarded(&owner, move || turn_loop(&shard, &io))
    })
    .map(drop)
}

/// The counter is never read: each write to an eventfd wakes its waiters, so the
/// edge-triggered registration reports every kick anyway, and a read would only add a system
/// call and a writable edge (a spurious turn) per turn. At one kick per pass the counter would
/// take millions of years to fill.
fn turn_loop(shard: &MayShard, io: &CoIo<Arc<OwnedFd>>) {
    while !shard.queue_loop_stop.load(Ordering::Acquire) {
        io.wait_io();
        let again = shard.with_app(|app| app.request_gate().is_some_and(|gate| gate.turn()));
        if again {
            wake(io.inner());
        }
    }
}
