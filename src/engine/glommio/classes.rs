//! The priority classes on glommio: one task queue per class with dynamic shares, so the
//! executor's scheduler gives each class its weight of the core (and aging can raise it); and
//! the turns of the request gate, one per pass of the executor's loop.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use futures_lite::future::BoxedLocal;
use glommio::{Latency, Shares, SharesManager, TaskQueueHandle};

use super::GlommioShard;
use crate::queue::{Priority, QueueRuntime, RequestGate};

/// glommio shares per unit of class weight: high (8) gets 1000, the executor's maximum and the
/// default queue's share (where the accept loop and unclassified connections run).
const SHARES_PER_WEIGHT: usize = 125;
/// How often glommio re-reads a class's shares.
const ADJUSTMENT_PERIOD: Duration = Duration::from_millis(100);

struct ClassShares(Cell<usize>);

impl SharesManager for ClassShares {
    fn shares(&self) -> usize {
        self.0.get()
    }

    fn adjustment_period(&self) -> Duration {
        ADJUSTMENT_PERIOD
    }
}

/// The task queues of the four classes on this shard's executor.
pub(crate) struct GlommioClasses {
    queues: [TaskQueueHandle; 4],
    shares: [Rc<ClassShares>; 4],
}

impl GlommioClasses {
    /// Creates the task queues; call on the shard's executor.
    pub fn new() -> Rc<Self> {
        let shares = Priority::ALL.map(|class| {
            Rc::new(ClassShares(Cell::new(
                class.weight() as usize * SHARES_PER_WEIGHT,
            )))
        });
        let queues = Priority::ALL.map(|class| {
            // glommio's preempt timer (100 ms) bounds a queue's slice while others wait. A 1 ms
            // timer cut that wait but left, after a load run, 1 shutdown in 6 with a shard parked
            // in io_uring forever (no timer armed); Latency::Matters shortens the same timer.
            glommio::executor().create_task_queue(
                Shares::Dynamic(shares[class.index()].clone()),
                Latency::NotImportant,
                class.as_str(),
            )
        });
        Rc::new(GlommioClasses { queues, shares })
    }

    pub fn queue(&self, class: Priority) -> TaskQueueHandle {
        self.queues[class.index()]
    }
}

impl QueueRuntime for GlommioClasses {
    fn spawn(&self, class: Priority, task: BoxedLocal<()>) {
        match glommio::spawn_local_into(task, self.queue(class)) {
            Ok(task) => drop(task.detach()),
            Err(e) => log::error!("cannot spawn a {} task: {e}", class.as_str()),
        }
    }

    fn sleep(&self, duration: Duration) -> BoxedLocal<()> {
        Box::pin(glommio::timer::sleep(duration))
    }

    fn set_weight(&self, class: Priority, weight: u32) {
        self.shares[class.index()]
            .0
            .set(weight as usize * SHARES_PER_WEIGHT);
    }
}

/// How long the gate's task sleeps between turns: any timer waits for the executor's next I/O
/// poll (glommio fires timers there), and the shortest one makes that the whole wait.
const NEXT_PASS: Duration = Duration::from_micros(1);

/// A turn asked for by the gate, and the task that takes it.
#[derive(Default)]
struct Kick {
    kicked: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// Gives the shard's app a request gate when a route has a class, and starts the task that
/// takes its turns: after a kick, one turn per pass of the executor's loop (between two I/O
/// polls), until nothing waits.
pub(crate) fn start_request_turns(shard: &Rc<GlommioShard>) {
    if !shard.app.borrow().has_route_classes() {
        return;
    }
    let kick = Rc::new(Kick::default());
    let signal = kick.clone();
    let gate = RequestGate::new(Box::new(move || {
        signal.kicked.set(true);
        if let Some(waker) = signal.waker.take() {
            waker.wake();
        }
    }));
    shard.app.borrow_mut().set_request_gate(gate.clone());
    super::spawn_guarded(shard, async move {
        loop {
            futures_lite::future::poll_fn(|cx| {
                if kick.kicked.replace(false) {
                    Poll::Ready(())
                } else {
                    *kick.waker.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            loop {
                glommio::timer::sleep(NEXT_PASS).await;
                if !gate.turn() {
                    break;
                }
            }
        }
    });
}
