//! Request classes: which HTTP requests run now and which wait for their class's turn.
//!
//! A shard cannot see a high-class request until its event loop polls for readiness again, so
//! what delays one under a flood of lower requests is the work the loop does between two polls.
//! The gate bounds that work: while a higher class has had requests in the last
//! [`PRIORITY_HOLD`], at most [`TURN_BUDGET`] requests of the classes below it run per turn of
//! the event loop; the rest wait, parsed, in their class's line, and the next turns let them go
//! by weight ([`Turns`], 8:4:2:1 between the waiting classes). High-class requests and requests
//! of routes without a class never wait, and a class with nothing above it to give way to (a
//! flood of reports with no trading beside it) never waits either. While nothing waits and the
//! budget lasts, a classed request runs at once, so an unloaded shard pays a clock read.
//!
//! The engine supplies the turns: it calls [`RequestGate::turn`] once per pass of its event
//! loop after `kick` asked for one, and again on the next pass while it returns `true`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::{Priority, Turns};
use crate::http::TurnWait;

/// Classed requests (below high) that may run per turn of the event loop. At a few
/// microseconds each this keeps a pass of the loop, and so the wait of a high request that
/// arrives meanwhile, to about a tenth of a millisecond (bench/RESULTS.md, request classes).
pub const TURN_BUDGET: u32 = 16;

/// How long a request of a class makes the classes below it give way. Long enough that sparse
/// critical traffic (a trade every few seconds) finds the lower classes already in line.
pub const PRIORITY_HOLD: Duration = Duration::from_secs(5);

/// One shard's gate. Lives on the shard's thread (under the may engine, behind its app lock).
pub struct RequestGate {
    state: RefCell<GateState>,
    /// Asks the engine for a turn on its loop's next pass.
    kick: Box<dyn Fn()>,
}

struct GateState {
    budget: u32,
    lines: [VecDeque<Rc<Waiter>>; 4],
    waiting: usize,
    turns: Turns,
    /// A turn has been asked for and not yet taken.
    kicked: bool,
    /// When a request of each class last arrived.
    last_seen: [Option<Instant>; 4],
    counts: GateCounts,
}

/// How many requests of each class ran at once and how many waited for a turn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GateCounts {
    pub passed: [u64; 4],
    pub waited: [u64; 4],
}

#[derive(Default)]
struct Waiter {
    granted: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl RequestGate {
    pub fn new(kick: Box<dyn Fn()>) -> Rc<RequestGate> {
        Rc::new(RequestGate {
            state: RefCell::new(GateState {
                budget: TURN_BUDGET,
                lines: Default::default(),
                waiting: 0,
                turns: Turns::default(),
                kicked: false,
                last_seen: [None; 4],
                counts: GateCounts::default(),
            }),
            kick,
        })
    }

    /// `None`: a request of `class`, arriving `now`, runs at once. Otherwise the future ends
    /// when its turn comes.
    pub fn wait_for_turn(&self, class: Priority, now: Instant) -> Option<TurnWait> {
        let mut state = self.state.borrow_mut();
        let index = class.index();
        state.last_seen[index] = Some(now);
        let gives_way = state.last_seen[..index]
            .iter()
            .flatten()
            .any(|seen| now.saturating_duration_since(*seen) < PRIORITY_HOLD);
        if !gives_way || (state.waiting == 0 && state.budget > 0) {
            state.budget = state.budget.saturating_sub(u32::from(gives_way));
            state.counts.passed[index] += 1;
            return None;
        }
        let waiter = Rc::new(Waiter::default());
        state.lines[index].push_back(waiter.clone());
        state.waiting += 1;
        state.counts.waited[index] += 1;
        if !std::mem::replace(&mut state.kicked, true) {
            drop(state);
            (self.kick)();
        }
        Some(Box::pin(WaitingForTurn(waiter)))
    }

    /// One turn of the event loop: refills the budget and lets waiting requests go by class
    /// weight. `true` while requests still wait: call again on the loop's next pass.
    pub fn turn(&self) -> bool {
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        state.budget = TURN_BUDGET;
        while state.budget > 0 && state.waiting > 0 {
            let ready = std::array::from_fn(|i| !state.lines[i].is_empty());
            let Some(class) = state.turns.next(ready) else {
                break;
            };
            let waiter = state.lines[class.index()]
                .pop_front()
                .expect("a ready line has a waiter");
            state.waiting -= 1;
            // A connection that closed while waiting dropped its end: it costs no budget.
            if Rc::strong_count(&waiter) > 1 {
                waiter.granted.set(true);
                if let Some(waker) = waiter.waker.take() {
                    waker.wake();
                }
                state.budget -= 1;
            }
        }
        state.kicked = state.waiting > 0;
        state.kicked
    }

    pub fn counts(&self) -> GateCounts {
        self.state.borrow().counts
    }

    /// Requests waiting for a turn now.
    pub fn waiting(&self) -> usize {
        self.state.borrow().waiting
    }
}

struct WaitingForTurn(Rc<Waiter>);

impl Future for WaitingForTurn {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.granted.get() {
            return Poll::Ready(());
        }
        *self.0.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> (Rc<RequestGate>, Rc<Cell<u32>>) {
        let kicks = Rc::new(Cell::new(0));
        let counter = kicks.clone();
        let gate = RequestGate::new(Box::new(move || counter.set(counter.get() + 1)));
        (gate, kicks)
    }

    /// A high request arrives, then `class` spends the turn's budget, every one at once.
    fn engage_and_spend(gate: &RequestGate, class: Priority, now: Instant) {
        assert!(gate.wait_for_turn(Priority::High, now).is_none());
        for _ in 0..TURN_BUDGET {
            assert!(
                gate.wait_for_turn(class, now).is_none(),
                "within the budget"
            );
        }
    }

    fn granted(wait: &mut TurnWait) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        wait.as_mut().poll(&mut cx).is_ready()
    }

    #[test]
    fn the_budget_runs_classed_requests_at_once_then_they_wait_and_kick_once() {
        let (gate, kicks) = gate();
        let now = Instant::now();
        engage_and_spend(&gate, Priority::Low, now);
        let mut first = gate
            .wait_for_turn(Priority::Low, now)
            .expect("budget spent: waits");
        let mut second = gate
            .wait_for_turn(Priority::Background, now)
            .expect("waits");
        assert_eq!(kicks.get(), 1, "one turn asked for, not one per waiter");
        // High never waits, even with the budget spent and others in line.
        assert!(gate.wait_for_turn(Priority::High, now).is_none());
        assert!(!granted(&mut first));
        assert!(!gate.turn(), "both fit in one turn's budget");
        assert!(granted(&mut first) && granted(&mut second));
        let counts = gate.counts();
        assert_eq!(counts.passed[Priority::Low.index()], u64::from(TURN_BUDGET));
        assert_eq!(counts.waited[Priority::Low.index()], 1);
        assert_eq!(counts.passed[Priority::High.index()], 2);
    }

    #[test]
    fn a_class_gives_way_only_while_a_higher_one_has_requests() {
        let (gate, kicks) = gate();
        let start = Instant::now();
        // Nothing above background has come: a flood of reports never waits.
        for _ in 0..10 * TURN_BUDGET {
            assert!(gate.wait_for_turn(Priority::Background, start).is_none());
        }
        // Low has come now: background gives way to it once the budget is spent...
        assert!(gate.wait_for_turn(Priority::Low, start).is_none());
        for _ in 0..TURN_BUDGET {
            assert!(gate.wait_for_turn(Priority::Background, start).is_none());
        }
        assert!(gate.wait_for_turn(Priority::Background, start).is_some());
        assert!(!gate.turn());
        // ...but low itself has nothing above it, and never waits.
        for _ in 0..10 * TURN_BUDGET {
            assert!(gate.wait_for_turn(Priority::Low, start).is_none());
        }
        // Once low has been quiet for the hold, background runs freely again.
        let later = start + PRIORITY_HOLD;
        for _ in 0..10 * TURN_BUDGET {
            assert!(gate.wait_for_turn(Priority::Background, later).is_none());
        }
        assert_eq!(kicks.get(), 1);
    }

    #[test]
    fn waiting_classes_go_by_weight_and_none_starves() {
        let (gate, _) = gate();
        let now = Instant::now();
        engage_and_spend(&gate, Priority::Low, now);
        let mut waits: Vec<(Priority, TurnWait)> = Vec::new();
        for _ in 0..40 {
            for class in [Priority::Medium, Priority::Low, Priority::Background] {
                waits.push((class, gate.wait_for_turn(class, now).expect("waits")));
            }
        }
        assert!(gate.turn(), "120 waiters outlast one turn");
        let mut done = [0u32; 4];
        for (class, wait) in &mut waits {
            if granted(wait) {
                done[class.index()] += 1;
            }
        }
        assert_eq!(done.iter().sum::<u32>(), TURN_BUDGET);
        assert!(
            done[1] > done[2] && done[2] > done[3],
            "by weight: {done:?}"
        );
        assert!(done[3] >= 1, "background moves too: {done:?}");
        let mut turns = 2;
        while gate.turn() {
            turns += 1;
        }
        assert_eq!(
            turns,
            120usize.div_ceil(TURN_BUDGET as usize),
            "turns taken"
        );
        assert!(waits.iter_mut().all(|(_, wait)| granted(wait)));
        assert_eq!(gate.waiting(), 0);
    }

    #[test]
    fn a_dropped_waiter_costs_no_budget() {
        let (gate, _) = gate();
        let now = Instant::now();
        engage_and_spend(&gate, Priority::Medium, now);
        drop(gate.wait_for_turn(Priority::Medium, now).expect("waits"));
        let mut kept: Vec<_> = (0..TURN_BUDGET)
            .map(|_| gate.wait_for_turn(Priority::Medium, now).expect("waits"))
            .collect();
        assert!(!gate.turn(), "the dropped one did not use a place");
        assert!(kept.iter_mut().all(granted));
    }
}
