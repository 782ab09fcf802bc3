//! One pinned client thread: its own poll (epoll), connections, schedule and histograms.
//!
//! The loop: wake on socket readiness or the timerfd, read and split responses, record them,
//! hand freed capacity to the next request (the virtual user's next iteration in the closed
//! model, the next due slot of the fixed schedule in the open model), write, and every
//! reporting interval ship a [`Snapshot`] to the runner. Nothing here is shared with other
//! client threads; the start signal and stop requests arrive over a channel.

pub mod conn;
pub mod parser;
mod timer;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use hdrhistogram::Histogram;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::login::{Identities, Signer};
use crate::scenario::{Ctx, RequestBuilder, Scenario};
use crate::schedule::{users_for_client, Profile, Think};
use crate::stats::{ClientTotals, EndpointStats, ErrorKind, Gauges, Msg, Snapshot};
use conn::{Completion, Conn, InFlight, Pending, State};
use timer::Timer;

const TIMER: Token = Token(usize::MAX);
/// How often timeouts, reconnects, ramps and the control channel are looked at.
const HOUSEKEEPING: Duration = Duration::from_millis(10);

/// The load model of one client thread.
#[derive(Clone, Debug)]
pub enum Model {
    /// Fixed schedule: the rate profile is global; this client thread sends global requests
    /// `id, id + threads, ...` below `total`, over `connections` connections.
    Open {
        rate: Profile,
        total: u64,
        connections: usize,
    },
    /// Virtual users: the user profile is global; this client thread runs at most `users` of them.
    Closed {
        users_profile: Profile,
        users: usize,
        think: Think,
    },
}

/// Everything a client thread needs, decided by the runner.
pub struct Plan {
    pub id: usize,
    pub threads: usize,
    pub core: Option<core_affinity::CoreId>,
    pub target: SocketAddr,
    pub binds: Vec<IpAddr>,
    pub model: Model,
    pub pipeline: usize,
    pub timeout: Duration,
    pub interval: Duration,
    /// How long outstanding requests may finish after the schedule ends.
    pub drain: Duration,
    /// Deadlines closer than this are busy-polled for rather than slept on.
    pub spin: Duration,
    pub scenario: Arc<Scenario>,
    pub builders: Arc<Vec<RequestBuilder>>,
    /// Each virtual user's credentials, when the scenario logs in.
    pub identities: Option<Arc<Identities>>,
    pub seed: u64,
}

/// Runner-to-client-thread control.
#[derive(Debug)]
pub enum Ctl {
    /// Start at this instant (shared by all client threads, the zero of every timestamp).
    Start(Instant),
    Stop,
}

/// Starts a client thread.
pub fn spawn(plan: Plan, tx: Sender<Msg>, ctl: Receiver<Ctl>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("loadgen-w{}", plan.id))
        .spawn(move || {
            let id = plan.id;
            if let Some(core) = plan.core {
                if !core_affinity::set_for_current(core) {
                    log::warn!("client thread {id}: could not pin to CPU {}", core.id);
                }
            }
            match ClientThread::new(plan, tx.clone(), ctl) {
                Ok(w) => w.run(),
                Err(e) => {
                    let _ = tx.send(Msg::Failed {
                        thread: id,
                        error: e.to_string(),
                    });
                }
            }
        })
}

#[derive(Clone, Copy, Debug, Default)]
struct User {
    active: bool,
    /// Has a request queued, in flight, or is thinking.
    busy: bool,
}

struct ClientThread {
    plan: Plan,
    poll: Poll,
    timer: Timer,
    tx: Sender<Msg>,
    ctl: Receiver<Ctl>,
    conns: Vec<Conn>,
    rng: fastrand::Rng,
    heads: Vec<bool>,
    stats: Vec<EndpointStats>,
    gauges: Gauges,
    totals: ClientTotals,
    t0: Instant,
    end: Instant,
    running: bool,
    seq: u64,
    dirty: Vec<usize>,
    scratch: Vec<u8>,
    signer: Signer,
    completions: Vec<Completion>,
    // Open model.
    free: Vec<usize>,
    retry: VecDeque<Pending>,
    next_k: u64,
    my_total: u64,
    next_at: Option<Instant>,
    cursor: usize,
    // Closed model.
    users: Vec<User>,
    active_users: usize,
    thinking: BinaryHeap<Reverse<(Instant, u32)>>,
}

impl ClientThread {
    fn new(plan: Plan, tx: Sender<Msg>, ctl: Receiver<Ctl>) -> std::io::Result<ClientThread> {
        let poll = Poll::new()?;
        let timer = Timer::new()?;
        poll.registry()
            .register(&mut SourceFd(&timer.raw_fd()), TIMER, Interest::READABLE)?;
        let now = Instant::now();
        let (n_conns, users, my_total) = match &plan.model {
            Model::Open {
                total, connections, ..
            } => (
                *connections,
                0,
                users_for_client(*total as usize, plan.threads, plan.id) as u64,
            ),
            Model::Closed { users, .. } => (users.div_ceil(plan.pipeline), *users, 0),
        };
        let bind_of = |c: usize| -> Option<IpAddr> {
            // Spread source addresses over all connections of all client threads.
            let n = plan.binds.len();
            (n > 0).then(|| plan.binds[(c * plan.threads + plan.id) % n])
        };
        let conns = (0..n_conns).map(|c| Conn::new(bind_of(c), now)).collect();
        let n_ep = plan.scenario.endpoints.len();
        Ok(ClientThread {
            heads: plan
                .scenario
                .endpoints
                .iter()
                .map(|e| e.method == "HEAD")
                .collect(),
            stats: (0..n_ep).map(|_| EndpointStats::default()).collect(),
            rng: fastrand::Rng::with_seed(
                plan.seed ^ (plan.id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            ),
            totals: ClientTotals::new(plan.id),
            poll,
            timer,
            tx,
            ctl,
            conns,
            gauges: Gauges::default(),
            t0: now,
            end: now,
            running: false,
            seq: 0,
            dirty: Vec::new(),
            scratch: Vec::new(),
            signer: Signer::default(),
            completions: Vec::new(),
            free: Vec::new(),
            retry: VecDeque::new(),
            next_k: 0,
            my_total,
            next_at: None,
            cursor: 0,
            users: vec![User::default(); users],
            active_users: 0,
            thinking: BinaryHeap::new(),
            plan,
        })
    }

    fn run(mut self) {
        let asked = self.connect_initial();
        let connected = self.conns.iter().filter(|c| c.is_open()).count() as u64;
        let _ = self.tx.send(Msg::Ready {
            thread: self.plan.id,
            connected,
            asked,
        });
        let t0 = match self.ctl.recv() {
            Ok(Ctl::Start(t0)) => t0,
            _ => return,
        };
        let now = Instant::now();
        if t0 > now {
            std::thread::sleep(t0 - now);
        }
        self.start(t0);
        self.main_loop();
        let now = Instant::now();
        self.cut(now, self.index_at(now));
        self.totals.unfinished = self.gauges.in_flight
            + self
                .conns
                .iter()
                .map(|c| c.pending.len() as u64)
                .sum::<u64>();
        let totals = std::mem::replace(&mut self.totals, ClientTotals::new(self.plan.id));
        let _ = self.tx.send(Msg::Done(Box::new(totals)));
    }

    /// Opens the connections needed at time zero and waits (up to the timeout) for them.
    fn connect_initial(&mut self) -> u64 {
        let now = Instant::now();
        self.running = true;
        let wanted = match &self.plan.model {
            Model::Open { .. } => self.conns.len(),
            Model::Closed {
                users_profile,
                users,
                ..
            } => {
                let at0 = users_profile.value_at(0.0).round() as usize;
                users_for_client(at0, self.plan.threads, self.plan.id)
                    .min(*users)
                    .div_ceil(self.plan.pipeline)
            }
        };
        for c in 0..wanted {
            self.conns[c].wanted = true;
            self.ensure_connect(c, now);
        }
        let deadline = now + self.plan.timeout;
        let mut events = Events::with_capacity(1024);
        loop {
            let connecting = self
                .conns
                .iter()
                .any(|c| matches!(c.state, State::Connecting { .. }));
            let now = Instant::now();
            if !connecting || now >= deadline {
                break;
            }
            let _ = self.poll.poll(&mut events, Some(Duration::from_millis(5)));
            for ev in events.iter() {
                if ev.token() != TIMER {
                    self.on_event(ev.token().0, ev.is_readable(), ev.is_writable());
                }
            }
        }
        self.running = false;
        wanted as u64
    }

    fn start(&mut self, t0: Instant) {
        self.t0 = t0;
        self.running = true;
        let duration = match &self.plan.model {
            Model::Open { rate, .. } => rate.duration(),
            Model::Closed { users_profile, .. } => users_profile.duration(),
        };
        self.end = t0 + duration;
        if let Model::Open { .. } = self.plan.model {
            self.next_k = 0;
            self.next_at = self.intended_of(0);
            for c in 0..self.conns.len() {
                if self.conns[c].is_open() {
                    self.conns[c].free_since = t0;
                    self.push_free(c);
                }
            }
        }
    }

    fn index_at(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.t0).as_nanos() / self.plan.interval.as_nanos().max(1))
            as u64
    }

    fn main_loop(&mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_housekeeping = self.t0;
        let mut next_cut = self.t0 + self.plan.interval;
        let mut interval_index = 0u64;
        let mut drain_until: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if now >= next_housekeeping {
                self.housekeeping(now);
                next_housekeeping = now + HOUSEKEEPING;
            }
            if self.running {
                // Everything due before the end goes out, even when the loop woke late.
                self.dispatch_due(now);
            }
            if self.running && now >= self.end {
                self.finish_schedule();
                drain_until = Some(now + self.plan.drain);
            }
            self.flush_dirty(now);
            while now >= next_cut {
                self.cut(now, interval_index);
                interval_index += 1;
                next_cut += self.plan.interval;
            }
            if let Some(until) = drain_until {
                if self.gauges.in_flight == 0 || now >= until {
                    return;
                }
            }
            // Sleep until the next thing to do.
            let mut deadline = next_cut.min(next_housekeeping);
            if self.running {
                deadline = deadline.min(self.end);
                if let Some(at) = self.next_due() {
                    deadline = deadline.min(at);
                }
            }
            if let Some(until) = drain_until {
                deadline = deadline.min(until);
            }
            let now = Instant::now();
            let timeout = if deadline <= now + self.plan.spin {
                Duration::ZERO
            } else {
                if self.timer.arm(deadline, now).is_err() {
                    log::debug!("timerfd arm failed; falling back to poll timeouts");
                }
                deadline - now + Duration::from_millis(1)
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    log::error!("client thread {}: poll failed: {e}", self.plan.id);
                    return;
                }
            }
            for ev in events.iter() {
                if ev.token() == TIMER {
                    self.timer.clear();
                } else {
                    self.on_event(
                        ev.token().0,
                        ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                        ev.is_writable(),
                    );
                }
            }
        }
    }

    /// The earliest moment new work is due, when there is a way to send it.
    fn next_due(&self) -> Option<Instant> {
        match self.plan.model {
            Model::Open { .. } => {
                if self.free.is_empty() {
                    None
                } else if !self.retry.is_empty() {
                    Some(self.t0)
                } else {
                    self.next_at
                }
            }
            Model::Closed { .. } => self.thinking.peek().map(|Reverse((at, _))| *at),
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        if let Ok(Ctl::Stop) = self.ctl.try_recv() {
            self.end = self.end.min(now);
        }
        let timeout = self.plan.timeout;
        for c in 0..self.conns.len() {
            match self.conns[c].state {
                State::Open => {
                    if let Some(r) = self.conns[c].inflight.front() {
                        if now.saturating_duration_since(r.sent) >= timeout {
                            self.fail_conn(c, ErrorKind::Timeout, now);
                        }
                    }
                }
                State::Connecting { since } => {
                    if now.saturating_duration_since(since) >= timeout {
                        self.connect_failed(c, ErrorKind::Timeout, now);
                    }
                }
                State::Closed { retry_at } => {
                    let demand = match self.plan.model {
                        Model::Open { .. } => true,
                        Model::Closed { .. } => !self.conns[c].pending.is_empty(),
                    };
                    if self.running && self.conns[c].wanted && demand && retry_at <= now {
                        self.ensure_connect(c, now);
                    }
                }
            }
        }
        if self.running {
            self.ramp_users(now);
        }
    }

    /// Closed model: activates or parks users to follow the users profile.
    fn ramp_users(&mut self, now: Instant) {
        let Model::Closed { users_profile, .. } = &self.plan.model else {
            return;
        };
        let t = now.saturating_duration_since(self.t0).as_secs_f64();
        let global = users_profile.value_at(t).round() as usize;
        let want = users_for_client(global, self.plan.threads, self.plan.id).min(self.users.len());
        while self.active_users < want {
            let u = self.active_users;
            self.users[u].active = true;
            self.conns[u / self.plan.pipeline].wanted = true;
            self.active_users += 1;
            if !self.users[u].busy {
                self.issue(u, now, now);
            }
        }
        while self.active_users > want {
            self.active_users -= 1;
            self.users[self.active_users].active = false;
        }
    }

    /// The schedule is over: no new requests; count what the open model could not send.
    fn finish_schedule(&mut self) {
        self.running = false;
        self.totals.not_sent += self.my_total.saturating_sub(self.next_k);
        self.next_at = None;
        for p in std::mem::take(&mut self.retry) {
            self.stats[usize::from(p.endpoint)].record_error(ErrorKind::NotSent);
        }
        for u in &mut self.users {
            u.active = false;
        }
        self.active_users = 0;
        self.thinking.clear();
    }

    /// Sends whatever is due: open-model slots onto free connections, woken thinkers.
    fn dispatch_due(&mut self, now: Instant) {
        match self.plan.model {
            Model::Open { .. } => self.dispatch_open(now),
            Model::Closed { .. } => {
                while let Some(Reverse((at, u))) = self.thinking.peek().copied() {
                    if at > now {
                        break;
                    }
                    self.thinking.pop();
                    let u = u as usize;
                    self.users[u].busy = false;
                    if self.users[u].active {
                        record_lag(
                            &mut self.totals.client_lag,
                            now.saturating_duration_since(at),
                        );
                        self.issue(u, at, now);
                    }
                }
            }
        }
    }

    fn dispatch_open(&mut self, now: Instant) {
        loop {
            let (intended, endpoint, from_retry) = if let Some(p) = self.retry.front() {
                (p.intended, p.endpoint, true)
            } else {
                match self.next_at {
                    Some(at) if at <= now => (at, u16::MAX, false),
                    _ => return,
                }
            };
            let Some(c) = self.pop_free() else { return };
            let free_since = self.conns[c].free_since;
            if free_since > intended {
                self.totals.waited_for_conn += 1;
            }
            record_lag(
                &mut self.totals.client_lag,
                now.saturating_duration_since(intended.max(free_since)),
            );
            let endpoint = if from_retry {
                self.retry.pop_front();
                endpoint
            } else {
                self.next_k += 1;
                self.next_at = self.intended_of(self.next_k);
                self.plan.scenario.pick(&mut self.rng) as u16
            };
            self.write_request(c, endpoint, c as u32, intended, now);
            if self.conns[c].inflight.len() < self.plan.pipeline {
                self.push_free(c);
            }
        }
    }

    /// When this client thread's `k`-th open-model request is meant to leave.
    fn intended_of(&mut self, k: u64) -> Option<Instant> {
        if k >= self.my_total {
            return None;
        }
        let Model::Open { rate, .. } = &self.plan.model else {
            return None;
        };
        let global = self.plan.id as u64 + k * self.plan.threads as u64;
        rate.time_of_from(global as f64, &mut self.cursor)
            .map(|s| self.t0 + Duration::from_secs_f64(s))
    }

    fn push_free(&mut self, c: usize) {
        if !self.conns[c].in_free_list {
            self.conns[c].in_free_list = true;
            self.free.push(c);
        }
    }

    fn pop_free(&mut self) -> Option<usize> {
        while let Some(c) = self.free.pop() {
            self.conns[c].in_free_list = false;
            if self.conns[c].is_open() && self.conns[c].inflight.len() < self.plan.pipeline {
                return Some(c);
            }
        }
        None
    }

    /// Closed model: user `u` wants to send (its iteration started at `intended`).
    fn issue(&mut self, u: usize, intended: Instant, now: Instant) {
        self.users[u].busy = true;
        let c = u / self.plan.pipeline;
        let endpoint = self.plan.scenario.pick(&mut self.rng) as u16;
        self.conns[c].pending.push_back(Pending {
            endpoint,
            user: u as u32,
            intended,
        });
        self.ensure_connect(c, now);
        self.dispatch_conn(c, now);
    }

    /// Writes a connection's queued requests while it has room.
    fn dispatch_conn(&mut self, c: usize, now: Instant) {
        while self.conns[c].is_open() && self.conns[c].inflight.len() < self.plan.pipeline {
            let Some(p) = self.conns[c].pending.pop_front() else {
                break;
            };
            self.write_request(c, p.endpoint, p.user, p.intended, now);
        }
    }

    fn write_request(
        &mut self,
        c: usize,
        endpoint: u16,
        user: u32,
        intended: Instant,
        now: Instant,
    ) {
        let conn = &mut self.conns[c];
        let vu = u64::from(user) * self.plan.threads as u64 + self.plan.id as u64;
        let mut ctx = Ctx {
            rng: &mut self.rng,
            user_ids: self.plan.scenario.user_ids,
            vu,
            seq: self.seq * self.plan.threads as u64 + self.plan.id as u64,
        };
        self.seq += 1;
        let start = conn.wbuf().len();
        self.plan.builders[usize::from(endpoint)].write(&mut ctx, conn.wbuf(), &mut self.scratch);
        if let Some(identities) = &self.plan.identities {
            identities.decorate(vu, conn.wbuf(), start, &mut self.signer);
        }
        conn.inflight.push_back(InFlight {
            endpoint,
            user,
            intended,
            sent: now,
        });
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(c);
        }
        self.totals.sent += 1;
        self.gauges.in_flight += 1;
        self.gauges.peak_in_flight = self.gauges.peak_in_flight.max(self.gauges.in_flight);
    }

    fn flush_dirty(&mut self, now: Instant) {
        while let Some(c) = self.dirty.pop() {
            self.conns[c].dirty = false;
            if !self.conns[c].is_open() {
                continue;
            }
            if let Err(e) = self.conns[c].flush() {
                self.fail_conn(c, ErrorKind::from_io(&e), now);
            }
        }
    }

    fn ensure_connect(&mut self, c: usize, now: Instant) {
        let State::Closed { retry_at } = self.conns[c].state else {
            return;
        };
        if !self.running || retry_at > now {
            return;
        }
        let result = self.conns[c]
            .start_connect(self.plan.target, now)
            .and_then(|()| {
                let stream = self.conns[c].stream.as_mut().expect("stream after connect");
                self.poll.registry().register(
                    stream,
                    Token(c),
                    Interest::READABLE | Interest::WRITABLE,
                )
            });
        if let Err(e) = result {
            self.connect_failed(c, ErrorKind::from_io(&e), now);
        }
    }

    fn connect_failed(&mut self, c: usize, kind: ErrorKind, now: Instant) {
        self.totals.connect_errors[kind.index()] += 1;
        self.conns[c].close(now, true);
        // Closed model: the users waiting on this connection fail this iteration.
        let pending = std::mem::take(&mut self.conns[c].pending);
        for p in pending {
            self.stats[usize::from(p.endpoint)].record_error(kind);
            self.user_done(p.user as usize, now);
        }
    }

    fn on_connected(&mut self, c: usize, now: Instant) {
        self.totals.connects += 1;
        self.gauges.open_conns += 1;
        self.gauges.peak_open_conns = self.gauges.peak_open_conns.max(self.gauges.open_conns);
        match self.plan.model {
            Model::Open { .. } => {
                if self.running {
                    self.push_free(c);
                    self.dispatch_open(now);
                }
            }
            Model::Closed { .. } => self.dispatch_conn(c, now),
        }
    }

    fn on_event(&mut self, c: usize, readable: bool, writable: bool) {
        if c >= self.conns.len() {
            return;
        }
        if let State::Connecting { .. } = self.conns[c].state {
            let now = Instant::now();
            match self.conns[c].finish_connect(now) {
                Ok(true) => self.on_connected(c, now),
                Ok(false) => return,
                Err(e) => {
                    self.connect_failed(c, ErrorKind::from_io(&e), now);
                    return;
                }
            }
        }
        if !self.conns[c].is_open() {
            return;
        }
        if readable {
            let mut done = std::mem::take(&mut self.completions);
            let heads = &self.heads;
            let result = self.conns[c].read_responses(&mut done, &|e| heads[usize::from(e)]);
            let now = Instant::now();
            for comp in done.drain(..) {
                self.on_completion(c, comp, now);
            }
            self.completions = done;
            match result {
                Ok(o) if o.closed => self.on_server_close(c, now),
                Ok(_) => {
                    // Send this connection's next request now rather than after every event of
                    // this wake-up: deferring made client and server take turns (the server
                    // idled while the client read a whole batch of responses).
                    if self.conns[c].dirty && self.conns[c].is_open() {
                        if let Err(e) = self.conns[c].flush() {
                            self.fail_conn(c, ErrorKind::from_io(&e), now);
                        }
                    }
                }
                Err(f) => {
                    log::debug!("client thread {} conn {c}: {}", self.plan.id, f.detail);
                    self.fail_conn(c, f.kind, now);
                }
            }
        }
        if writable {
            self.mark_dirty(c);
        }
    }

    fn mark_dirty(&mut self, c: usize) {
        if !self.conns[c].dirty {
            self.conns[c].dirty = true;
            self.dirty.push(c);
        }
    }

    fn on_completion(&mut self, c: usize, comp: Completion, now: Instant) {
        let ep = usize::from(comp.req.endpoint);
        let expected = self.plan.scenario.endpoints[ep].expects(comp.status);
        let corrected = now.saturating_duration_since(comp.req.intended).as_nanos() as u64;
        let uncorrected = now.saturating_duration_since(comp.req.sent).as_nanos() as u64;
        self.stats[ep].record_response(comp.status, expected, corrected, uncorrected);
        self.gauges.in_flight -= 1;
        self.conns[c].free_since = now;
        match self.plan.model {
            Model::Open { .. } => {
                if self.running {
                    self.push_free(c);
                    self.dispatch_open(now);
                }
            }
            Model::Closed { .. } => self.user_done(comp.req.user as usize, now),
        }
    }

    /// Closed model: user `u` finished an iteration (answered or failed); think, then go again.
    fn user_done(&mut self, u: usize, now: Instant) {
        let Model::Closed { think, .. } = self.plan.model else {
            return;
        };
        let Some(user) = self.users.get_mut(u) else {
            return;
        };
        user.busy = false;
        if !self.running || !user.active {
            return;
        }
        if think.is_zero() {
            self.issue(u, now, now);
        } else {
            user.busy = true;
            let at = now + think.sample(&mut self.rng);
            self.thinking.push(Reverse((at, u as u32)));
        }
    }

    /// The server closed cleanly (Connection: close, or EOF while idle). Requests it did not
    /// answer were not processed, so they go back in line with their intended times.
    fn on_server_close(&mut self, c: usize, now: Instant) {
        let unanswered = std::mem::take(&mut self.conns[c].inflight);
        self.gauges.in_flight -= unanswered.len() as u64;
        for r in unanswered.into_iter().rev() {
            let p = Pending {
                endpoint: r.endpoint,
                user: r.user,
                intended: r.intended,
            };
            match self.plan.model {
                Model::Open { .. } => self.retry.push_front(p),
                Model::Closed { .. } => self.conns[c].pending.push_front(p),
            }
        }
        self.drop_conn(c, now);
    }

    /// A connection failed with requests outstanding: they fail with `kind`.
    fn fail_conn(&mut self, c: usize, kind: ErrorKind, now: Instant) {
        let lost = std::mem::take(&mut self.conns[c].inflight);
        self.gauges.in_flight -= lost.len() as u64;
        for r in &lost {
            self.stats[usize::from(r.endpoint)].record_error(kind);
        }
        self.drop_conn(c, now);
        for r in lost {
            self.user_done(r.user as usize, now);
        }
    }

    fn drop_conn(&mut self, c: usize, now: Instant) {
        if self.conns[c].is_open() {
            self.gauges.open_conns -= 1;
        }
        self.conns[c].close(now, false);
        let demand = match self.plan.model {
            Model::Open { .. } => true,
            Model::Closed { .. } => !self.conns[c].pending.is_empty(),
        };
        if demand {
            self.ensure_connect(c, now);
        }
    }

    /// Ships this interval's figures and starts fresh ones.
    fn cut(&mut self, now: Instant, index: u64) {
        let fresh = (0..self.stats.len())
            .map(|_| EndpointStats::default())
            .collect();
        let endpoints = std::mem::replace(&mut self.stats, fresh);
        let mut gauges = self.gauges;
        gauges.active_users = self.active_users as u64;
        let _ = self.tx.send(Msg::Interval(Snapshot {
            thread: self.plan.id,
            index,
            cut_at: now.saturating_duration_since(self.t0).as_secs_f64(),
            endpoints,
            gauges,
        }));
        self.gauges.peak_in_flight = self.gauges.in_flight;
        self.gauges.peak_open_conns = self.gauges.open_conns;
    }
}

fn record_lag(h: &mut Histogram<u64>, lag: Duration) {
    h.saturating_record((lag.as_nanos() as u64).max(1));
}
