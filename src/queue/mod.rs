//! Per-core priority queues: four classes per shard, weighted CPU sharing with aging, timeouts
//! that cancel, retries with backoff and jitter, dead letters, idempotency keys, and hand-off to
//! a less-loaded shard.
//!
//! Each shard owns a [`ShardQueues`] and the worker tasks of every class. The classes share the
//! core by weight (8:4:2:1, see [`Priority::weight`]) through the engine's scheduler, behind
//! [`QueueRuntime`]; a class whose oldest job waits gets a higher weight ([`aged_weight`]), so
//! background work moves under a flood of high. HTTP requests of routes that have a class take
//! turns at the shard's [`gate`]: high ones run at once, the others a bounded number per pass of
//! the event loop.
//!
//! Jobs live in the shard's memory. Jobs that must survive a crash are durable ([`durable`]):
//! rows of a PostgreSQL outbox, written in the transaction that caused them, which each shard's
//! dispatcher claims under a lease and feeds through [`worker::submit`] like any other job.
//!
//! # Layout
//! - [`class`]: the classes, their weights, aging, and the route-to-class mapping.
//! - [`gate`]: request classes: which HTTP requests run now and which wait for a turn.
//! - [`job`]: job ids, specs, states and records.
//! - [`shard_queues`]: one shard's queues: enqueueing, taking, finishing, dead letters, replay.
//! - [`worker`]: the worker, retry and inbox tasks, and submission across shards.
//! - [`durable`]: the outbox of durable jobs and each shard's dispatcher of it.
//! - [`sweeps`]: periodic housekeeping sweeps on the primary, one task for them all.
//! - [`mesh`]: channels and published queue lengths between shards; where a job goes.
//! - [`job_kinds`]: registered job kinds (the seed's side jobs, debug kinds for tests).
//! - [`retry`]: backoff with jitter.
//! - [`report`]: what the queues send to the monitor.
//! - [`runtime`]: the engine seam.

pub mod class;
pub mod durable;
pub mod gate;
pub mod job;
pub mod job_kinds;
pub mod mesh;
pub mod report;
pub mod retry;
pub mod runtime;
pub mod shard_queues;
pub mod sweeps;
pub mod worker;

pub use class::{aged_weight, Priority, RouteClasses, Turns};
pub use gate::RequestGate;
pub use job::{JobId, JobSpec};
pub use mesh::Mesh;
pub use report::QueueReport;
pub use runtime::QueueRuntime;
pub use shard_queues::{QueueSettings, ShardQueues};
