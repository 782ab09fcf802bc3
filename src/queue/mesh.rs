//! Between shards: one lock-free inbox per shard (flume), the queue lengths each shard
//! publishes (atomics), and where a new job should go.
//!
//! A shard over its high-water mark hands a new job to the least-loaded shard; a job with an
//! idempotency key always goes to its key's home shard, which alone can tell a duplicate.
//! Status, dead-letter and replay requests travel to the shard that owns the job. Nothing is
//! locked: a shard reads others' lengths as relaxed atomics and talks to them by message.
//!
//! At shutdown a shard that has stopped for good closes its inbox ([`Mesh::close_inbox`]): a
//! message for it, waiting or new, is refused, so that its sender answers at once (503 with
//! `Retry-After`, or a hand-off runs where it arrived) instead of waiting for a reply that
//! would never come.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::Value;

use super::job::{JobId, JobSpec};
use super::Priority;

/// Messages each shard's inbox takes; every one carries its own reply channel.
pub enum Message {
    Enqueue {
        spec: Box<JobSpec>,
        /// The shard that handed the job off, if it was a hand-off (not a key's home).
        handed_off_from: Option<usize>,
        reply: flume::Sender<Result<Enqueued, Rejected>>,
    },
    Status {
        id: JobId,
        reply: flume::Sender<Option<Value>>,
    },
    DeadLetters {
        reply: flume::Sender<Vec<Value>>,
    },
    Replay {
        id: JobId,
        overrides: Overrides,
        reply: flume::Sender<Result<Value, ReplayError>>,
    },
}

/// A job accepted (or found by its key).
#[derive(Debug, Clone)]
pub struct Enqueued {
    pub id: JobId,
    pub duplicate: bool,
    pub view: Value,
}

/// Why a job was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// The queue is at its maximum size: 429.
    Full,
    /// The owning shard did not answer (it is restarting): 503.
    Unavailable,
}

/// What a replay may change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    pub timeout_ms: Option<u64>,
    pub max_attempts: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    NotFound,
    NotDead,
    Full,
    Unavailable,
}

/// Each shard's inbox capacity; a full inbox makes the sender keep the job (or refuse it).
const INBOX: usize = 4096;

/// The channels and published lengths of every shard. Built once; survives shard restarts.
pub struct Mesh {
    senders: Vec<flume::Sender<Message>>,
    receivers: Vec<flume::Receiver<Message>>,
    /// Jobs waiting, per shard and class.
    lengths: Vec<[AtomicUsize; 4]>,
    /// Per shard: it has stopped for good (shutdown), nothing reads its inbox any more.
    closed: Vec<AtomicBool>,
}

impl Mesh {
    pub fn new(shards: usize) -> Arc<Mesh> {
        let (senders, receivers) = (0..shards).map(|_| flume::bounded(INBOX)).unzip();
        Arc::new(Mesh {
            senders,
            receivers,
            lengths: (0..shards).map(|_| Default::default()).collect(),
            closed: (0..shards).map(|_| AtomicBool::new(false)).collect(),
        })
    }

    pub fn shards(&self) -> usize {
        self.senders.len()
    }

    pub fn inbox(&self, shard: usize) -> flume::Receiver<Message> {
        self.receivers[shard].clone()
    }

    /// Sends without waiting; a full or closed inbox gives the message back.
    pub fn send(&self, shard: usize, message: Message) -> Result<(), Message> {
        if self.closed[shard].load(Ordering::SeqCst) {
            return Err(message);
        }
        self.senders[shard]
            .try_send(message)
            .map_err(|e| e.into_inner())?;
        // Closed between the check and the send: the closer's sweep may have run before this
        // message arrived, so it is swept here (its sender then sees its reply channel drop).
        if self.closed[shard].load(Ordering::SeqCst) {
            self.sweep(shard);
        }
        Ok(())
    }

    /// Shard `shard` has stopped for good (shutdown): refuses every message for it from now on
    /// and drops those waiting, whose senders see their reply channel close.
    pub fn close_inbox(&self, shard: usize) {
        self.closed[shard].store(true, Ordering::SeqCst);
        self.sweep(shard);
    }

    fn sweep(&self, shard: usize) {
        while let Ok(message) = self.receivers[shard].try_recv() {
            drop(message);
        }
    }

    pub fn publish_length(&self, shard: usize, class: Priority, length: usize) {
        self.lengths[shard][class.index()].store(length, Ordering::Relaxed);
    }

    pub fn lengths(&self, class: Priority) -> Vec<usize> {
        self.lengths
            .iter()
            .map(|l| l[class.index()].load(Ordering::Relaxed))
            .collect()
    }
}

/// The shard a new job without a key goes to: its own below the watermark, else the
/// least-loaded shard if that one has fewer jobs waiting (ties keep the job at home).
pub fn pick_target(own: usize, lengths: &[usize], watermark: usize) -> usize {
    if lengths[own] < watermark {
        return own;
    }
    lengths
        .iter()
        .enumerate()
        .filter(|(_, len)| **len < lengths[own])
        .min_by_key(|(shard, len)| (**len, *shard))
        .map_or(own, |(shard, _)| shard)
}

/// The home shard of an idempotency key (FNV-1a: stable across processes and restarts).
pub fn key_home(key: &str, shards: usize) -> usize {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % shards as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_table() {
        let cases: [(usize, &[usize], usize, usize); 7] = [
            (0, &[5, 0], 10, 0),
            (0, &[10, 0], 10, 1),
            (0, &[10, 10], 10, 0),
            (1, &[3, 12, 2], 10, 2),
            (1, &[2, 12, 2], 10, 0),
            (0, &[12, 11, 30], 10, 1),
            (0, &[10], 10, 0),
        ];
        for (own, lengths, watermark, expected) in cases {
            assert_eq!(
                pick_target(own, lengths, watermark),
                expected,
                "{own} {lengths:?} {watermark}"
            );
        }
    }

    fn status_request() -> (Message, flume::Receiver<Option<Value>>) {
        let (reply, answer) = flume::bounded(1);
        let id = JobId {
            shard: 1,
            generation: 1,
            seq: 1,
            tag: 0,
        };
        (Message::Status { id, reply }, answer)
    }

    #[test]
    fn a_closed_inbox_refuses_new_messages_and_drops_waiting_ones() {
        let mesh = Mesh::new(2);
        let (waiting, waiting_answer) = status_request();
        assert!(mesh.send(1, waiting).is_ok());
        mesh.close_inbox(1);
        // The sender of the waiting message is told at once: its reply channel is gone.
        assert!(waiting_answer
            .recv_timeout(std::time::Duration::ZERO)
            .is_err());
        assert!(waiting_answer.is_disconnected());
        let (late, _) = status_request();
        assert!(mesh.send(1, late).is_err());
        // The other shard's inbox still works.
        let (other, _) = status_request();
        assert!(mesh.send(0, other).is_ok());
        assert_eq!(mesh.inbox(0).len(), 1);
    }

    #[test]
    fn keys_have_a_stable_home() {
        assert_eq!(key_home("order-1", 1), 0);
        let homes: Vec<usize> = (0..64).map(|i| key_home(&format!("k{i}"), 4)).collect();
        assert!(homes.iter().all(|h| *h < 4));
        assert!((0..4).all(|s| homes.contains(&s)), "keys spread: {homes:?}");
        assert_eq!(key_home("same", 4), key_home("same", 4));
    }
}
