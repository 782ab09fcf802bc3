//! What a shard's queues tell the monitor in each periodic report.

use hdrhistogram::Histogram;

use super::Priority;

/// Significant figures of the queue histograms: 1 % is plenty for waits and run times, and keeps
/// each histogram small enough to send every interval.
const SIGNIFICANT_FIGURES: u8 = 2;
/// Longest wait or run time tracked exactly (1 hour, in µs); longer is recorded at this value.
pub const MAX_TRACKED_MICROS: u64 = 3_600_000_000;

/// A wait or run time histogram in microseconds.
pub fn queue_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_MICROS, SIGNIFICANT_FIGURES)
        .expect("static histogram bounds are valid")
}

/// Cumulative counters of one class on one shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassCounters {
    /// Jobs accepted into this shard's queue (handed-in ones included).
    pub enqueued: u64,
    /// Jobs that completed successfully.
    pub processed: u64,
    /// Attempts that returned an error.
    pub failed: u64,
    /// Attempts cancelled at their timeout.
    pub timed_out: u64,
    /// Attempts scheduled again after a failure or timeout.
    pub retried: u64,
    /// Jobs moved to the dead letters.
    pub dead: u64,
    /// Dead letters dropped because the list was full.
    pub dead_dropped: u64,
    /// Jobs this shard received and handed to another shard past its high-water mark.
    pub handed_off: u64,
    /// Jobs another shard handed to this one.
    pub handed_in: u64,
    /// Enqueues refused with 429 because the queue was full.
    pub rejected: u64,
    /// Dead letters replayed.
    pub replayed: u64,
    /// Enqueues answered with an existing job (same idempotency key).
    pub duplicates: u64,
    /// HTTP requests of this class's routes that ran at once ([`super::gate`]).
    pub requests_passed: u64,
    /// HTTP requests of this class's routes that waited for a turn first.
    pub requests_waited: u64,
}

impl ClassCounters {
    pub fn add(&mut self, o: &ClassCounters) {
        self.enqueued += o.enqueued;
        self.processed += o.processed;
        self.failed += o.failed;
        self.timed_out += o.timed_out;
        self.retried += o.retried;
        self.dead += o.dead;
        self.dead_dropped += o.dead_dropped;
        self.handed_off += o.handed_off;
        self.handed_in += o.handed_in;
        self.rejected += o.rejected;
        self.replayed += o.replayed;
        self.duplicates += o.duplicates;
        self.requests_passed += o.requests_passed;
        self.requests_waited += o.requests_waited;
    }
}

/// One class of one shard: gauges now, counters since start, histograms of the interval.
#[derive(Debug, Clone)]
pub struct ClassReport {
    pub class: Priority,
    pub workers: usize,
    /// Jobs waiting for a worker.
    pub size: usize,
    pub in_flight: usize,
    /// Jobs waiting for their next attempt.
    pub retrying: usize,
    /// Current CPU weight (raised by aging).
    pub weight: u32,
    pub counters: ClassCounters,
    /// Enqueue (or retry) to start, since the previous report.
    pub wait: Histogram<u64>,
    /// Start to end of an attempt, since the previous report.
    pub run: Histogram<u64>,
}

impl ClassReport {
    pub fn empty(class: Priority) -> Self {
        ClassReport {
            class,
            workers: 0,
            size: 0,
            in_flight: 0,
            retrying: 0,
            weight: class.weight(),
            counters: ClassCounters::default(),
            wait: queue_histogram(),
            run: queue_histogram(),
        }
    }
}

/// A shard's queues, class by class (indexed by [`Priority::index`]).
#[derive(Debug, Clone)]
pub struct QueueReport {
    pub classes: Vec<ClassReport>,
    /// Dead letters held now.
    pub dead_letters: usize,
    /// Payload bytes the shard holds now (queued, running, retrying and dead jobs; a done job
    /// keeps none).
    pub retained_payload_bytes: usize,
}

impl Default for QueueReport {
    fn default() -> Self {
        QueueReport {
            classes: Priority::ALL.into_iter().map(ClassReport::empty).collect(),
            dead_letters: 0,
            retained_payload_bytes: 0,
        }
    }
}

impl QueueReport {
    /// Jobs waiting in every class.
    pub fn queued(&self) -> usize {
        self.classes.iter().map(|c| c.size).sum()
    }
}
