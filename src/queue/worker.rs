//! The tasks around a shard's queues: workers per class, retries after their backoff, the
//! inbox other shards send to, and submission (local, handed off, or to a key's home shard).

use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future::BoxedLocal;
use futures_lite::FutureExt;
use serde_json::Value;

use super::job::{JobId, JobSpec, Outcome};
use super::job_kinds::{self, JobInput};
use super::mesh::{key_home, pick_target, Enqueued, Message, Overrides, Rejected, ReplayError};
use super::shard_queues::ShardQueues;
use super::Priority;

/// Starts the workers of every class and the inbox.
pub fn start(queues: &Rc<ShardQueues>) {
    for class in Priority::ALL {
        for _ in 0..queues.settings.workers[class.index()] {
            queues
                .runtime
                .spawn(class, Box::pin(work(queues.clone(), class)));
        }
    }
    queues
        .runtime
        .spawn(Priority::High, Box::pin(serve_inbox(queues.clone())));
}

/// How often a paused (shed) worker looks whether it may take jobs again.
const SHED_POLL: Duration = Duration::from_millis(50);

async fn work(queues: Rc<ShardQueues>, class: Priority) {
    loop {
        if queues.shedding(class) {
            queues.runtime.sleep(SHED_POLL).await;
            continue;
        }
        let Some(ticket) = queues.take(class) else {
            queues.work_available(class).await;
            continue;
        };
        let started = queues.runtime.now();
        let outcome = attempt(&queues, ticket.spec.kind.as_str(), &ticket).await;
        let ran = queues.runtime.now().saturating_duration_since(started);
        if let Some(delay) = queues.finish(ticket.id, outcome, ran) {
            let sleep = queues.runtime.sleep(delay);
            let (later, id) = (queues.clone(), ticket.id);
            queues.runtime.spawn(
                class,
                Box::pin(async move {
                    sleep.await;
                    later.requeue(id);
                }),
            );
        }
    }
}

/// Runs one attempt under its timeout. When the timer wins, the handler's future is dropped:
/// whatever it had not done yet never happens.
async fn attempt(
    queues: &ShardQueues,
    kind: &str,
    ticket: &super::shard_queues::Ticket,
) -> Outcome {
    let Some(kind) = job_kinds::find(kind, queues.settings.debug_kinds) else {
        return Outcome::Failed(format!("unknown job kind {kind:?}"));
    };
    let run = (kind.run)(JobInput {
        payload: ticket.spec.payload.clone(),
        attempt: ticket.attempt,
        runtime: queues.runtime.clone(),
    });
    let run = async move {
        match std::panic::AssertUnwindSafe(run).catch_unwind().await {
            Ok(Ok(result)) => Outcome::Succeeded(result),
            Ok(Err(error)) => Outcome::Failed(error),
            Err(payload) => Outcome::Failed(format!(
                "the handler panicked: {}",
                crate::http::conn::panic_message(payload.as_ref())
            )),
        }
    };
    let timeout = queues.runtime.sleep(ticket.spec.timeout);
    run.or(async move {
        timeout.await;
        Outcome::TimedOut
    })
    .await
}

async fn serve_inbox(queues: Rc<ShardQueues>) {
    let inbox = queues.mesh.inbox(queues.shard);
    while let Ok(message) = inbox.recv_async().await {
        match message {
            Message::Enqueue {
                spec,
                handed_off_from,
                reply,
            } => {
                let _ = reply.send(queues.enqueue(*spec, handed_off_from));
            }
            Message::Status { id, reply } => {
                let _ = reply.send(queues.view(id));
            }
            Message::DeadLetters { reply } => {
                let _ = reply.send(queues.dead_letters());
            }
            Message::Replay {
                id,
                overrides,
                reply,
            } => {
                let _ = reply.send(queues.replay(id, overrides));
            }
        }
    }
}

/// An answer now, or one that another shard sends later.
pub enum Answer<T> {
    Now(T),
    Later(BoxedLocal<T>),
}

/// Asks shard `shard` and awaits its reply; `unavailable` when it cannot be reached.
fn ask<T: 'static>(
    queues: &ShardQueues,
    shard: usize,
    message: impl FnOnce(flume::Sender<T>) -> Message,
    unavailable: T,
) -> BoxedLocal<T> {
    let (reply, answer) = flume::bounded(1);
    let sent = queues.mesh.send(shard, message(reply)).is_ok();
    Box::pin(async move {
        if !sent {
            return unavailable;
        }
        answer.recv_async().await.unwrap_or(unavailable)
    })
}

/// Enqueues `spec` where it belongs: a keyed job at its key's home shard, otherwise here, or
/// on the least-loaded shard when this one is past its high-water mark.
pub fn submit(queues: &Rc<ShardQueues>, spec: JobSpec) -> Answer<Result<Enqueued, Rejected>> {
    let shards = queues.mesh.shards();
    let own = queues.shard;
    let class = spec.class;
    let (target, handoff) = match &spec.key {
        Some(key) => (key_home(key, shards), false),
        None => {
            let lengths = queues.mesh.lengths(class);
            let target = pick_target(own, &lengths, queues.settings.handoff_watermark);
            (target, target != own)
        }
    };
    if target == own {
        return Answer::Now(queues.enqueue(spec, None));
    }
    // A hand-off the target cannot take (its inbox or queue is full) stays here if it fits.
    let fallback = handoff.then(|| spec.clone());
    let (reply, answer) = flume::bounded(1);
    let message = Message::Enqueue {
        spec: Box::new(spec),
        handed_off_from: handoff.then_some(own),
        reply,
    };
    if queues.mesh.send(target, message).is_err() {
        return Answer::Now(match fallback {
            Some(spec) => queues.enqueue(spec, None),
            None => Err(Rejected::Unavailable),
        });
    }
    let queues = queues.clone();
    Answer::Later(Box::pin(async move {
        match (answer.recv_async().await, fallback) {
            (Ok(Ok(enqueued)), _) => {
                if handoff && !enqueued.duplicate {
                    queues.count_handed_off(class);
                }
                Ok(enqueued)
            }
            (Ok(Err(Rejected::Full)), Some(spec)) => queues.enqueue(spec, None),
            (Ok(Err(rejected)), _) => Err(rejected),
            (Err(_), _) => Err(Rejected::Unavailable),
        }
    }))
}

/// A job's status from the shard that owns it.
pub fn status(queues: &Rc<ShardQueues>, id: JobId) -> Answer<Option<Value>> {
    if id.shard == queues.shard {
        return Answer::Now(queues.view(id));
    }
    if id.shard >= queues.mesh.shards() {
        return Answer::Now(None);
    }
    Answer::Later(ask(
        queues,
        id.shard,
        |reply| Message::Status { id, reply },
        None,
    ))
}

/// Every shard's dead letters.
pub fn dead_letters(queues: &Rc<ShardQueues>) -> impl Future<Output = Vec<Value>> + 'static {
    let mine = queues.dead_letters();
    let others: Vec<_> = (0..queues.mesh.shards())
        .filter(|s| *s != queues.shard)
        .map(|s| {
            ask(
                queues,
                s,
                |reply| Message::DeadLetters { reply },
                Vec::new(),
            )
        })
        .collect();
    async move {
        let mut all = mine;
        for other in others {
            all.extend(other.await);
        }
        all
    }
}

/// Replays a dead letter on the shard that owns it.
pub fn replay(
    queues: &Rc<ShardQueues>,
    id: JobId,
    overrides: Overrides,
) -> Answer<Result<Value, ReplayError>> {
    if id.shard == queues.shard {
        return Answer::Now(queues.replay(id, overrides));
    }
    if id.shard >= queues.mesh.shards() {
        return Answer::Now(Err(ReplayError::NotFound));
    }
    Answer::Later(ask(
        queues,
        id.shard,
        |reply| Message::Replay {
            id,
            overrides,
            reply,
        },
        Err(ReplayError::Unavailable),
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::queue::runtime::fake::{
        counters, job, lone_shard, shard_queues, small_settings, FakeRuntime,
    };
    use crate::queue::{Mesh, QueueSettings};
    use crate::shard::Control;

    fn view(queues: &ShardQueues, id: JobId) -> Value {
        queues.view(id).expect("a known job")
    }

    fn enqueue(queues: &ShardQueues, spec: JobSpec) -> JobId {
        queues.enqueue(spec, None).expect("room").id
    }

    /// A lone shard with its workers started.
    fn started() -> (Rc<FakeRuntime>, Rc<ShardQueues>) {
        let (runtime, queues, _) = lone_shard(small_settings());
        start(&queues);
        (runtime, queues)
    }

    fn sleeper(ms: u64, timeout: Duration, max_attempts: u32) -> JobSpec {
        JobSpec {
            timeout,
            max_attempts,
            ..job("debug.sleep", Priority::Medium, json!({ "ms": ms }))
        }
    }

    /// Polls of each class among the first `window` while every class has jobs of 1 ms of
    /// spinning (`jobs` of them), which waited `age` before the workers started.
    fn poll_shares(jobs: [u64; 4], age: Duration, window: usize) -> [usize; 4] {
        let (runtime, queues, _) = lone_shard(QueueSettings {
            max_size: 100,
            ..small_settings()
        });
        for class in Priority::ALL {
            for _ in 0..jobs[class.index()] {
                enqueue(&queues, job("debug.spin", class, json!({"ms": 1})));
            }
        }
        runtime.advance(age);
        queues.refresh_weights();
        start(&queues);
        runtime.run();
        for class in Priority::ALL {
            let counters = counters(&queues, class);
            assert_eq!(counters.processed, jobs[class.index()], "{class:?}");
        }
        assert!(queues.is_idle());
        // A spin yields once after it: each poll of a busy worker ends one job and starts the
        // next, so no class runs dry within the window.
        let mut shares = [0; 4];
        for class in &runtime.take_polls()[..window] {
            shares[class.index()] += 1;
        }
        shares
    }

    #[test]
    fn busy_classes_take_turns_by_weight() {
        let shares = poll_shares([45, 25, 15, 10], Duration::ZERO, 75);
        assert_eq!(shares, [40, 20, 10, 5], "8:4:2:1");
    }

    #[test]
    fn classes_whose_jobs_waited_take_more_turns() {
        // Two aging steps: weights 8, 8 (capped), 6 and 3.
        let shares = poll_shares([30, 30, 30, 30], Duration::from_secs(2), 75);
        assert_eq!(shares, [24, 24, 18, 9], "8:8:6:3");
    }

    #[test]
    fn a_failing_job_runs_again_after_each_backoff_until_it_succeeds() {
        let (runtime, queues) = started();
        let id = enqueue(
            &queues,
            job("debug.fail", Priority::High, json!({"times": 2})),
        );
        runtime.run();
        let first = view(&queues, id);
        assert_eq!(
            (first["state"].clone(), first["attempts"].clone()),
            (json!("retrying"), json!(1))
        );
        assert_eq!(first["last_error"], "planned failure 1 of 2");
        assert!(!queues.is_idle());
        // The first backoff is 100 to 200 ms (retry_base 200 ms, half of it jittered).
        runtime.advance(Duration::from_millis(99));
        assert_eq!(view(&queues, id)["attempts"], 1, "still backing off");
        runtime.advance(Duration::from_millis(101));
        assert_eq!(view(&queues, id)["attempts"], 2);
        runtime.advance(Duration::from_millis(400));
        let done = view(&queues, id);
        assert_eq!(
            (done["state"].clone(), done["attempts"].clone()),
            (json!("done"), json!(3))
        );
        assert_eq!(done["result"], json!({"attempt": 3}));
        assert_eq!(done["last_error"], Value::Null);
        assert!(queues.is_idle(), "drained");
        let counters = counters(&queues, Priority::High);
        assert_eq!(
            (counters.failed, counters.retried, counters.processed),
            (2, 2, 1)
        );
    }

    #[test]
    fn a_job_past_its_timeout_is_cancelled_and_goes_dead_when_out_of_attempts() {
        let (runtime, queues) = started();
        let slow = enqueue(&queues, sleeper(1_000, Duration::from_millis(100), 1));
        let quick = enqueue(&queues, sleeper(50, Duration::from_millis(100), 1));
        runtime.advance(Duration::from_millis(100));
        let dead = view(&queues, slow);
        assert_eq!(dead["state"], "dead");
        assert_eq!(
            dead["last_error"],
            "timed out after 100 ms and was cancelled"
        );
        assert_eq!(
            view(&queues, quick)["state"],
            "running",
            "the worker moved on"
        );
        runtime.advance(Duration::from_millis(50));
        assert_eq!(
            view(&queues, quick)["result"],
            json!({"slept_ms": 50, "attempt": 1})
        );
        // The cancelled sleep never finishes: the job stays dead and the runtime holds only
        // the idle workers and the inbox.
        runtime.advance(Duration::from_secs(2));
        assert_eq!(view(&queues, slow)["state"], "dead");
        assert_eq!(runtime.tasks(), 5);
        let counters = counters(&queues, Priority::Medium);
        assert_eq!(
            (counters.timed_out, counters.dead, counters.processed),
            (1, 1, 1)
        );
    }

    #[test]
    fn a_job_of_an_unknown_kind_fails_every_attempt_without_running() {
        let (runtime, queues) = started();
        let spec = JobSpec {
            max_attempts: 1,
            ..job("debug.sleep", Priority::Low, json!({"ms": 1}))
        };
        let hidden = QueueSettings {
            debug_kinds: false,
            ..small_settings()
        };
        let (runtime_without, without, _) = lone_shard(hidden);
        start(&without);
        let id = enqueue(&without, spec.clone());
        runtime_without.run();
        assert_eq!(
            view(&without, id)["last_error"],
            "unknown job kind \"debug.sleep\""
        );
        assert_eq!(view(&without, id)["state"], "dead");
        // With the debug kinds registered the same job runs.
        let id = enqueue(&queues, spec);
        runtime.advance(Duration::from_millis(1));
        assert_eq!(view(&queues, id)["state"], "done");
    }

    #[test]
    fn shed_workers_leave_their_jobs_queued_until_the_shedding_ends() {
        let (runtime, queues, control) = lone_shard(small_settings());
        control.set_shed_low_priority(true);
        start(&queues);
        let low = enqueue(
            &queues,
            job("debug.fail", Priority::Low, json!({"times": 0})),
        );
        let high = enqueue(
            &queues,
            job("debug.fail", Priority::High, json!({"times": 0})),
        );
        runtime.advance(Duration::from_secs(1));
        assert_eq!(view(&queues, high)["state"], "done");
        assert_eq!(view(&queues, low)["state"], "queued");
        assert!(!queues.is_idle());
        control.set_shed_low_priority(false);
        runtime.advance(SHED_POLL);
        assert_eq!(view(&queues, low)["state"], "done");
        assert!(queues.is_idle());
    }

    /// Two shards of one mesh on one runtime, workers and inboxes started.
    fn two_shards(
        settings: QueueSettings,
    ) -> (Rc<FakeRuntime>, [Rc<ShardQueues>; 2], Arc<Control>) {
        let runtime = FakeRuntime::new();
        let (mesh, control) = (Mesh::new(2), Arc::new(Control::default()));
        let shards =
            [0, 1].map(|shard| shard_queues(&runtime, settings.clone(), shard, &mesh, &control));
        shards.iter().for_each(start);
        runtime.run();
        (runtime, shards, control)
    }

    fn submitted(
        runtime: &FakeRuntime,
        answer: Answer<Result<Enqueued, Rejected>>,
    ) -> Result<Enqueued, Rejected> {
        match answer {
            Answer::Now(result) => result,
            Answer::Later(reply) => runtime
                .run_until_stalled(Priority::High, reply)
                .expect("the other shard answered"),
        }
    }

    #[test]
    fn a_keyed_job_goes_to_its_key_s_home_shard_and_is_found_there_from_any_shard() {
        let (runtime, shards, _) = two_shards(small_settings());
        let key = (0..)
            .map(|i| format!("order-{i}"))
            .find(|k| key_home(k, 2) == 1)
            .unwrap();
        let spec = JobSpec {
            key: Some(key),
            ..job("debug.fail", Priority::Medium, json!({"times": 0}))
        };
        let first = submitted(&runtime, submit(&shards[0], spec.clone())).unwrap();
        assert_eq!(first.id.shard, 1);
        let again = submitted(&runtime, submit(&shards[1], spec)).unwrap();
        assert_eq!((again.id, again.duplicate), (first.id, true));
        runtime.run();
        let status = match status(&shards[0], first.id) {
            Answer::Later(reply) => runtime.run_until_stalled(Priority::High, reply).unwrap(),
            Answer::Now(_) => panic!("shard 1's job is asked of shard 1"),
        };
        assert_eq!(status.unwrap()["state"], "done");
        let counters = counters(&shards[1], Priority::Medium);
        assert_eq!(
            (counters.enqueued, counters.duplicates, counters.handed_in),
            (1, 1, 0)
        );
    }

    #[test]
    fn a_shard_past_its_watermark_hands_new_jobs_to_a_less_loaded_one() {
        let (runtime, shards, control) = two_shards(small_settings());
        let spec = || job("debug.fail", Priority::Low, json!({"times": 0}));
        // Low workers pause, so the jobs stay queued: two reach shard 0's watermark.
        control.set_shed_low_priority(true);
        let ids: Vec<JobId> = (0..3)
            .map(|_| submitted(&runtime, submit(&shards[0], spec())).unwrap().id)
            .collect();
        let on: Vec<usize> = ids.iter().map(|id| id.shard).collect();
        assert_eq!(on, [0, 0, 1]);
        let counts = |shard: usize| counters(&shards[shard], Priority::Low);
        assert_eq!((counts(0).handed_off, counts(1).handed_in), (1, 1));
        control.set_shed_low_priority(false);
        runtime.advance(SHED_POLL);
        assert!(shards.iter().all(|s| s.is_idle()));
    }
}
