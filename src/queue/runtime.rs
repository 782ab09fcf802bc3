//! What the queues need from an engine: the only seam between the queue core and an event loop.
//! Unit tests run the queues on `fake` (test builds only): one thread, a manual clock.

use std::time::{Duration, Instant};

use futures_lite::future::BoxedLocal;

use super::Priority;

#[cfg(test)]
pub mod fake;

/// The engine side of a shard's queues. Everything runs on the shard's one thread, so nothing
/// here is `Send`.
///
/// An engine must provide:
/// - [`spawn`](QueueRuntime::spawn): start a task on this shard's thread that gets the CPU share
///   of its class. With every class busy the classes share the core by [`Priority::weight`]
///   (8:4:2:1), adjusted by [`set_weight`](QueueRuntime::set_weight); a class with nothing to do
///   gives its share to the others. glommio does this with one task queue per class and dynamic
///   shares. An engine without weighted scheduling (coroutines with one run queue) must at least
///   let a task of a higher class run before a lower one's next slice, e.g. by yielding lower
///   classes' tasks in proportion to their weight; it must never starve a class.
/// - [`sleep`](QueueRuntime::sleep): a timer future; dropping it cancels the timer (job timeouts
///   drop the job's future when this completes first).
/// - [`now`](QueueRuntime::now): the clock the engine's timers use.
pub trait QueueRuntime {
    fn spawn(&self, class: Priority, task: BoxedLocal<()>);
    fn sleep(&self, duration: Duration) -> BoxedLocal<()>;
    fn now(&self) -> Instant {
        Instant::now()
    }
    /// The weight `class` should get from now on (aging raises it while its jobs wait).
    fn set_weight(&self, class: Priority, weight: u32);
}
