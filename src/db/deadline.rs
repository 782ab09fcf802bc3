//! Reply deadlines: a request's answer arrives within a bound even when its node hangs.
//!
//! A pool thread waits on its node for as long as the node takes: the driver bounds only the
//! TCP connect, and the server's statement timeout does nothing when the server itself is
//! stopped or hung. So every read, when it is queued, also gets a deadline here: one thread
//! keeps them in order, and at a deadline still unanswered it puts an `Unavailable` answer into
//! the request's reply channel itself. The request then goes on (a replica's read to the
//! primary) while the pool thread stays with its node; its late answer finds the channel taken
//! and is dropped. Nothing here knows an engine: the waiting request is woken by its channel.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::OnceLock;
use std::time::Instant;

use crossbeam::channel::{Receiver, RecvTimeoutError, Sender};

/// What to do at a deadline (answer the request, if nothing did yet).
type Expire = Box<dyn FnOnce() + Send>;

struct Deadline {
    at: Instant,
    /// Tells apart deadlines at the same instant (the heap needs a total order).
    seq: u64,
    expire: Expire,
}

impl PartialEq for Deadline {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Deadline {}

impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Deadline {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Runs `expire` at `at` (on the deadline thread, which must not block: `expire` only tries
/// to send).
pub(crate) fn at(at: Instant, expire: impl FnOnce() + Send + 'static) {
    static DEADLINES: OnceLock<Sender<(Instant, Expire)>> = OnceLock::new();
    let deadlines = DEADLINES.get_or_init(|| {
        let (sender, receiver) = crossbeam::channel::unbounded();
        std::thread::Builder::new()
            .name("db-deadlines".into())
            .spawn(move || run(&receiver))
            .expect("spawning the database deadline thread");
        sender
    });
    let _ = deadlines.send((at, Box::new(expire)));
}

fn run(incoming: &Receiver<(Instant, Expire)>) {
    let mut pending: BinaryHeap<Reverse<Deadline>> = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        let next = match pending.peek() {
            Some(Reverse(first)) => incoming.recv_deadline(first.at),
            None => incoming.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match next {
            Ok((at, expire)) => {
                seq += 1;
                pending.push(Reverse(Deadline { at, seq, expire }));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        while pending.peek().is_some_and(|Reverse(first)| first.at <= now) {
            let Reverse(due) = pending.pop().expect("peeked");
            (due.expire)();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn expires_in_deadline_order_and_only_when_due() {
        let (fired, order) = crossbeam::channel::unbounded();
        let start = Instant::now();
        for (ms, name) in [(120, "late"), (40, "early"), (80, "middle")] {
            let fired = fired.clone();
            at(start + Duration::from_millis(ms), move || {
                let _ = fired.send((name, Instant::now()));
            });
        }
        let seen: Vec<(&str, Instant)> = (0..3)
            .map(|_| order.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        let names: Vec<&str> = seen.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["early", "middle", "late"]);
        assert!(seen[0].1 >= start + Duration::from_millis(40));
        assert!(seen[2].1 >= start + Duration::from_millis(120));
    }
}
