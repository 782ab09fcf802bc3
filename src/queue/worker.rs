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
