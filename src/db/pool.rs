//! The DB I/O threads: one per pooled connection, each owning a sync `postgres` client (which
//! carries its own small tokio runtime: that is why clients live here, never on a shard).
//!
//! All threads of a node take requests from the node's one bounded crossbeam queue. A thread
//! without a connection reconnects with a growing backoff; while it waits, requests fail at once
//! (no request hangs on a dead node). Writes already queued together are committed in one
//! transaction (group commit), each in its own savepoint so one refused row fails alone. A read
//! that presents a commit position waits, bounded, for this replica to replay it. Lookups by
//! key of one statement already queued together are answered by one `= ANY($1)` query (a
//! batch): one round trip and one statement for many reads.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::Receiver;
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, SimpleQueryMessage, Statement};

use super::error::DbError;
use super::lsn::Lsn;
use super::node::Node;

/// The most lookups one query answers.
const MAX_BATCH: usize = 128;
/// The first pause of a read waiting for a replica to replay its commit: replay usually
/// trails by well under a millisecond, so most reads look twice at most.
pub(crate) const FIRST_REPLAY_LOOK: Duration = Duration::from_millis(1);
/// How many times a write whose savepoint lost a lock conflict (a deadlock, a serialization
/// failure) runs again, each time in a group of its own after the group it was in committed,
/// before it answers [`DbError::Contention`]. The conflict's other side usually holds its locks
/// only until its own group commits, so the first repeat nearly always passes.
const CONTENTION_RETRIES: u32 = 2;

/// The primary's WAL position now, as text: what a commit that just finished on this session
/// reached or passed.
pub(crate) const WAL_POSITION_SQL: &str = "SELECT pg_current_wal_insert_lsn()::text";
/// What a read node holds, as text: a replica's replayed position; the primary's written one
/// (a several-host DATABASE_URL reads from every host, the primary among them).
pub(crate) const REPLAYED_SQL: &str =
    "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                         ELSE pg_current_wal_lsn() END::text";
/// A committed group: each write's result, and the WAL position after the commit when it
/// came back with it.
type GroupOutcome = (Vec<Result<(), DbError>>, Option<Lsn>);

/// Settings every pool thread reads.
#[derive(Debug, Clone)]
pub(crate) struct PoolSettings {
    pub statement_timeout: Duration,
    pub connect_timeout: Duration,
    pub group_commit: usize,
}

/// A request for a pool thread.
pub(crate) struct DbRequest {
    pub kind: DbRequestKind,
    pub task: Box<dyn Task>,
}

pub(crate) enum DbRequestKind {
    Write,
    /// A read; with `min_position`, only once this node has replayed it (waiting up to `wait`).
    Read {
        min_position: Option<Lsn>,
        wait: Duration,
    },
}

/// Work with its reply channel, type-erased so one queue carries every kind of query.
pub(crate) trait Task: Send {
    /// Runs the query; the result is kept until [`Task::finish`].
    fn run(&mut self, conn: &mut DbConn) -> Result<(), DbError>;
    /// A lookup by key: its statement for many keys (`... WHERE key = ANY($1)`, the key in
    /// column 0) and its key. Lookups of one statement queued together are answered by one query.
    fn lookup(&self) -> Option<(&'static str, i64)> {
        None
    }
    /// A lookup's rows (none, one, or several) out of a batch's result, in the statement's
    /// order, kept until [`Task::finish`].
    fn found(&mut self, _rows: &[&Row]) {}
    /// Sends the result (with the commit position for writes), or the error.
    fn finish(self: Box<Self>, outcome: Result<Option<Lsn>, DbError>);
}

/// A connection as queries see it: prepared statements cached per connection.
pub struct DbConn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
    /// See [`DbConn::remembered`].
    remembered: HashMap<String, i64>,
    node: Arc<Node>,
    /// The node's connection generation when this one opened (see [`Node::drop_connections`]).
    generation: u64,
}

impl DbConn {
    fn error(&self, e: postgres::Error) -> DbError {
        DbError::from_pg(&e, self.node.name())
    }

    fn prepared(&mut self, sql: &'static str) -> Result<Statement, DbError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).map_err(|e| self.error(e))?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }

    pub fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, DbError> {
        let statement = self.prepared(sql)?;
        self.client
            .query(&statement, params)
            .map_err(|e| self.error(e))
    }

    pub fn query_opt(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, DbError> {
        let statement = self.prepared(sql)?;
        self.client
            .query_opt(&statement, params)
            .map_err(|e| self.error(e))
    }

    pub fn query_one(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, DbError> {
        let statement = self.prepared(sql)?;
        self.client
            .query_one(&statement, params)
            .map_err(|e| self.error(e))
    }

    fn simple(&mut self, sql: &str) -> Result<(), DbError> {
        self.client.batch_execute(sql).map_err(|e| self.error(e))
    }

    /// Commits the open transaction and reads the WAL position right after, in one round
    /// trip (the `SELECT` runs only once the `COMMIT` succeeded). `Ok(None)`: committed, but
    /// the position did not come back.
    fn commit(&mut self) -> Result<Option<Lsn>, DbError> {
        let messages = self
            .client
            .simple_query("COMMIT; SELECT pg_current_wal_insert_lsn()::text")
            .map_err(|e| self.error(e))?;
        let lsn = messages.iter().find_map(|message| match message {
            SimpleQueryMessage::Row(row) => row.get(0).and_then(|text| text.parse::<Lsn>().ok()),
            _ => None,
        });
        if let Some(lsn) = lsn {
            self.node.saw_position(lsn);
        }
        Ok(lsn)
    }

    /// A value that never changes once made (a platform account's id), found by `look` once
    /// per connection and remembered under `key` (the database a connection reaches is fixed).
    pub fn remembered(
        &mut self,
        key: String,
        look: impl FnOnce(&mut DbConn) -> Result<i64, DbError>,
    ) -> Result<i64, DbError> {
        if let Some(&value) = self.remembered.get(&key) {
            return Ok(value);
        }
        let value = look(self)?;
        self.remembered.insert(key, value);
        Ok(value)
    }

    /// The primary's WAL position now: what a commit that just finished on this session
    /// reached or passed.
    fn wal_position(&mut self) -> Result<Lsn, DbError> {
        let row = self.query_one(WAL_POSITION_SQL, &[])?;
        let lsn: Lsn = row
            .get::<_, String>(0)
            .parse()
            .map_err(|e: String| DbError::Query(e))?;
        self.node.saw_position(lsn);
        Ok(lsn)
    }

    fn replayed(&mut self) -> Result<Option<Lsn>, DbError> {
        let row = self.query_one(REPLAYED_SQL, &[])?;
        let text: Option<String> = row.get(0);
        let lsn = text.and_then(|t| t.parse::<Lsn>().ok());
        if let Some(lsn) = lsn {
            self.node.saw_position(lsn);
        }
        Ok(lsn)
    }
}

/// Opens a client to `node` with [`session_options`].
pub(crate) fn connect(
    node: &Node,
    settings: &PoolSettings,
    application: &str,
) -> Result<Client, postgres::Error> {
    let mut config = node.spec.pg.clone();
    config
        .connect_timeout(settings.connect_timeout)
        .application_name(application)
        .options(&session_options(node, settings.statement_timeout));
    config.connect(NoTls)
}

/// The settings of every session the server opens to `node` (the `options` startup
/// parameter): the statement timeout and, on a replica, one generic plan per prepared
/// statement. PostgreSQL would otherwise plan a batched lookup (`= ANY($1)`) afresh on every
/// run, since a plan for the array it is given always looks cheaper than one for any array;
/// that planning was a fifth of a balance batch's time. A replica's reads are keyed by a user
/// or an id (a lookup, a page after a cursor), where one plan fits every key; the primary's
/// writes and sweeps, whose ranges and states a custom plan can serve better, keep
/// PostgreSQL's own choice.
pub(crate) fn session_options(node: &Node, statement_timeout: Duration) -> String {
    let mut options = format!("-c statement_timeout={}", statement_timeout.as_millis());
    if !node.is_primary {
        options.push_str(" -c plan_cache_mode=force_generic_plan");
    }
    options
}

/// Reconnection delays: 50 ms doubling to 5 s.
struct Backoff {
    next_attempt: Instant,
    delay: Duration,
    /// The node's [`Node::comebacks`] last seen.
    comebacks: u64,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(5);

    fn failed(&mut self, now: Instant) {
        self.next_attempt = now + self.delay;
        self.delay = (self.delay * 2).min(Self::MAX);
    }

    fn reset(&mut self) {
        self.delay = Self::FIRST;
    }
}

/// Starts `node.pool_size` threads serving the requests of `queue`.
pub(crate) fn spawn(node: &Arc<Node>, queue: Receiver<DbRequest>, settings: &PoolSettings) {
    for i in 0..node.pool_size {
        let (node, queue, settings) = (node.clone(), queue.clone(), settings.clone());
        std::thread::Builder::new()
            .name(format!("db-{}-{i}", node.name()))
            .spawn(move || PoolThread::new(node, settings).run(queue))
            .expect("spawning a database thread");
    }
}

struct PoolThread {
    node: Arc<Node>,
    settings: PoolSettings,
    conn: Option<DbConn>,
    backoff: Backoff,
    /// Jobs taken off the queue while gathering a group of writes or a batch of lookups.
    stash: VecDeque<DbRequest>,
}

impl PoolThread {
    fn new(node: Arc<Node>, settings: PoolSettings) -> PoolThread {
        PoolThread {
            node,
            settings,
            conn: None,
            backoff: Backoff {
                next_attempt: Instant::now(),
                delay: Backoff::FIRST,
                comebacks: 0,
            },
            stash: VecDeque::new(),
        }
    }

    fn run(mut self, queue: Receiver<DbRequest>) {
        loop {
            let request = match self.stash.pop_front() {
                Some(request) => request,
                None => match queue.recv() {
                    Ok(request) => request,
                    Err(_) => return,
                },
            };
            if let Err(e) = self.ensure_connected() {
                self.node.request_done(true);
                let e = match (&request.kind, e) {
                    // A write with no connection to the primary: none is known right now.
                    (DbRequestKind::Write, DbError::Unavailable { reason, .. }) => {
                        DbError::NoPrimary { reason }
                    }
                    (_, e) => e,
                };
                request.task.finish(Err(e));
                continue;
            }
            self.node.busy.fetch_add(1, Ordering::Relaxed);
            match request.kind {
                DbRequestKind::Write => {
                    let mut group = vec![request];
                    while group.len() < self.settings.group_commit {
                        match queue.try_recv() {
                            Ok(next) if matches!(next.kind, DbRequestKind::Write) => {
                                group.push(next)
                            }
                            Ok(read) => self.stash.push_back(read),
                            Err(_) => break,
                        }
                    }
                    self.write(group);
                }
                DbRequestKind::Read {
                    min_position: None, ..
                } if request.task.lookup().is_some() => {
                    let batch = self.gather_lookups(request, &queue);
                    self.lookup(batch);
                }
                DbRequestKind::Read { min_position, wait } => {
                    self.read(request.task, min_position, wait)
                }
            }
            self.node.busy.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn ensure_connected(&mut self) -> Result<(), DbError> {
        let generation = self.node.generation.load(Ordering::Acquire);
        if self
            .conn
            .as_ref()
            .is_some_and(|c| !c.client.is_closed() && c.generation == generation)
        {
            return Ok(());
        }
        if self.conn.take().is_some() {
            self.node.connected.fetch_sub(1, Ordering::Relaxed);
        }
        let now = Instant::now();
        let comebacks = self.node.comebacks.load(Ordering::Acquire);
        if comebacks != self.backoff.comebacks {
            // The node passed a health check since: no reason to wait out the backoff.
            self.backoff.comebacks = comebacks;
            self.backoff.next_attempt = now;
            self.backoff.reset();
        }
        if now < self.backoff.next_attempt {
            return Err(DbError::Unavailable {
                node: self.node.name().to_string(),
                reason: "reconnecting after a failure".into(),
            });
        }
        match connect(&self.node, &self.settings, "coinbit") {
            Ok(client) => {
                self.backoff.reset();
                self.node.connected.fetch_add(1, Ordering::Relaxed);
                self.conn = Some(DbConn {
                    client,
                    statements: HashMap::new(),
                    remembered: HashMap::new(),
                    node: self.node.clone(),
                    generation,
                });
                Ok(())
            }
            Err(e) => {
                self.backoff.failed(now);
                Err(DbError::from_pg(&e, self.node.name()))
            }
        }
    }

    fn conn(&mut self) -> &mut DbConn {
        self.conn.as_mut().expect("connected")
    }

    fn read(&mut self, mut task: Box<dyn Task>, min_position: Option<Lsn>, wait: Duration) {
        let outcome = (|| {
            if let Some(min) = min_position {
                self.reach_position(min, wait)?;
            }
            task.run(self.conn())
        })();
        self.node
            .request_done(outcome.as_ref().is_err_and(DbError::is_node_failure));
        task.finish(outcome.map(|()| None));
    }

    /// Makes sure this node holds commit position `min` before a read. The primary refuses a
    /// position past its own (no write returned it), asking the server only when `min` is past
    /// the position it last saw. A replica waits up to `wait` for its replay to reach it,
    /// looking again after [`FIRST_REPLAY_LOOK`], then twice as long each time: a handful of
    /// looks however long the wait, never a busy loop holding the connection.
    fn reach_position(&mut self, min: Lsn, wait: Duration) -> Result<(), DbError> {
        if self.node.is_primary {
            if self.node.position() >= min || self.conn().wal_position()? >= min {
                return Ok(());
            }
            return Err(DbError::PositionAhead);
        }
        let deadline = Instant::now() + wait;
        let mut pause = FIRST_REPLAY_LOOK;
        loop {
            self.node.replay_checks.fetch_add(1, Ordering::Relaxed);
            if self.conn().replayed()?.is_some_and(|at| at >= min) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(DbError::NotCaughtUp {
                    node: self.node.name().to_string(),
                });
            }
            std::thread::sleep(pause.min(left));
            pause *= 2;
        }
    }

    /// `first` and every lookup of its statement (without a commit position to wait for)
    /// queued behind it, up to [`MAX_BATCH`]; other requests go to the stash, in order.
    fn gather_lookups(
        &mut self,
        first: DbRequest,
        queue: &Receiver<DbRequest>,
    ) -> Vec<Box<dyn Task>> {
        let sql = first.task.lookup().map(|(sql, _)| sql);
        let mut batch = vec![first.task];
        while batch.len() < MAX_BATCH {
            let Ok(next) = queue.try_recv() else { break };
            let same = matches!(
                next.kind,
                DbRequestKind::Read {
                    min_position: None,
                    ..
                }
            ) && next.task.lookup().map(|(sql, _)| sql) == sql;
            if same {
                batch.push(next.task);
            } else {
                self.stash.push_back(next);
            }
        }
        batch
    }

    /// Answers a batch of lookups with one query. When the batch fails on a live connection
    /// (a statement timeout, a refused statement), each lookup runs alone so that only the one
    /// that must fail does; a failed node fails them all (and the client retries elsewhere).
    fn lookup(&mut self, mut batch: Vec<Box<dyn Task>>) {
        let count = batch.len() as u64;
        let outcome = if batch.len() == 1 {
            batch[0].run(self.conn())
        } else {
            let (sql, _) = batch[0].lookup().expect("a lookup");
            let keys: Vec<i64> = batch
                .iter()
                .filter_map(|t| t.lookup())
                .map(|(_, k)| k)
                .collect();
            match self.conn().query(sql, &[&keys]) {
                Ok(rows) => {
                    let mut by_key: HashMap<i64, Vec<&Row>> = HashMap::new();
                    for row in &rows {
                        by_key.entry(row.get::<_, i64>(0)).or_default().push(row);
                    }
                    for task in batch.iter_mut() {
                        let key = task.lookup().expect("a lookup").1;
                        task.found(by_key.get(&key).map_or(&[], Vec::as_slice));
                    }
                    Ok(())
                }
                Err(e) if e.is_node_failure() => Err(e),
                Err(_) => {
                    for mut task in batch {
                        let outcome = task.run(self.conn());
                        self.node
                            .request_done(outcome.as_ref().is_err_and(DbError::is_node_failure));
                        task.finish(outcome.map(|()| None));
                    }
                    return;
                }
            }
        };
        // The breaker counts a batch's failure once: one connection failed, not each read.
        self.node
            .request_done(outcome.as_ref().is_err_and(DbError::is_node_failure));
        self.node.requests.fetch_add(count - 1, Ordering::Relaxed);
        for task in batch {
            task.finish(outcome.clone().map(|()| None));
        }
    }

    /// Commits `group`; the writes that lost a lock conflict run again (up to
    /// [`CONTENTION_RETRIES`] times) as the next group, once the others were answered.
    fn write(&mut self, group: Vec<DbRequest>) {
        let mut group = group;
        let mut retries_left = CONTENTION_RETRIES;
        loop {
            let again = self.write_once(group, retries_left > 0);
            if again.is_empty() {
                return;
            }
            retries_left -= 1;
            self.node
                .retries
                .fetch_add(again.len() as u64, Ordering::Relaxed);
            if let Err(e) = self.ensure_connected() {
                // The connection went with the group that committed: these fail as they
                // would have (the conflict is the answer they had).
                log::debug!("database node {}: no retry: {e}", self.node.name());
                for request in again {
                    request.task.finish(Err(DbError::Contention {
                        node: self.node.name().to_string(),
                    }));
                }
                return;
            }
            group = again;
        }
    }

    /// One group: commits it and answers its writes, but hands back (unanswered) those whose
    /// savepoint lost a lock conflict when `retry` allows it.
    fn write_once(&mut self, mut group: Vec<DbRequest>, retry: bool) -> Vec<DbRequest> {
        let mut again = Vec::new();
        let count = group.len() as u64;
        let generation = self.conn().generation;
        let outcome = self.write_group(&mut group);
        let outcome = outcome.map(|(results, position)| {
            // Committed: a connection lost now loses only the position, not the writes.
            let position = position.map_or_else(|| self.conn().wal_position(), Ok);
            let position = position.unwrap_or_else(|e| {
                log::warn!(
                    "database node {}: committed, but its WAL position is unknown: {e}",
                    self.node.name()
                );
                self.node.position()
            });
            (results, position)
        });
        let node_failed = outcome.as_ref().is_err_and(DbError::is_node_failure);
        if let Err(DbError::ReadOnly { .. }) = &outcome {
            self.node.in_recovery.store(true, Ordering::Relaxed);
        }
        // A lost connection or a read-only answer: this node's connections all go, and the
        // next request connects afresh (to the host that takes writes now, for a several-host
        // primary).
        let lost = match &outcome {
            Err(e) => e.lost_the_node(),
            Ok((results, _)) => results
                .iter()
                .any(|r| matches!(r, Err(DbError::ReadOnly { .. }))),
        };
        if lost {
            self.node.drop_connections(generation);
        }
        match outcome {
            Ok((results, position)) => {
                for (request, result) in group.into_iter().zip(results) {
                    if let Err(DbError::ReadOnly { .. }) = &result {
                        self.node.in_recovery.store(true, Ordering::Relaxed);
                    }
                    if retry && !lost && matches!(result, Err(DbError::Contention { .. })) {
                        again.push(request);
                        continue;
                    }
                    request.task.finish(result.map(|()| Some(position)));
                }
            }
            Err(e) => {
                for request in group {
                    request.task.finish(Err(e.clone()));
                }
            }
        }
        // The breaker counts a group's failure once: one connection failed, not each write.
        self.node.request_done(node_failed);
        self.node.requests.fetch_add(count - 1, Ordering::Relaxed);
        self.node.commits.fetch_add(1, Ordering::Relaxed);
        again
    }

    /// One transaction for the group, one savepoint per write: a row the database refuses
    /// fails alone; a lost connection fails them all. A write alone is a group of one: its
    /// statements (a user and its welcome job's outbox row) commit whole or not at all. With
    /// the commit come the writes' results and the WAL position after it (when it came back).
    fn write_group(&mut self, group: &mut [DbRequest]) -> Result<GroupOutcome, DbError> {
        let conn = self.conn.as_mut().expect("connected");
        let outcome = Self::run_group(conn, group);
        if outcome.is_err() {
            // A statement timeout leaves the transaction aborted on a live connection.
            let _ = conn.simple("ROLLBACK");
        }
        outcome
    }

    /// The round trips of a group of n writes that all pass: n + 1. One savepoint `w` is open
    /// while each write runs: a passed write releases it and opens the next in one round trip
    /// (the last one's commits with the transaction); a refused write rolls back to it, which
    /// leaves it open for the next.
    fn run_group(conn: &mut DbConn, group: &mut [DbRequest]) -> Result<GroupOutcome, DbError> {
        // A write alone needs no savepoint: when it fails, the whole transaction goes.
        let alone = group.len() == 1;
        conn.simple(if alone { "BEGIN" } else { "BEGIN; SAVEPOINT w" })?;
        let last = group.len() - 1;
        let mut results = Vec::with_capacity(group.len());
        for (i, request) in group.iter_mut().enumerate() {
            match request.task.run(conn) {
                Ok(()) => {
                    if i < last {
                        conn.simple("RELEASE SAVEPOINT w; SAVEPOINT w")?;
                    }
                    results.push(Ok(()));
                }
                Err(e) if e.is_node_failure() => return Err(e),
                Err(e) if alone => {
                    let _ = conn.simple("ROLLBACK");
                    return Ok((vec![Err(e)], None));
                }
                Err(e) => {
                    conn.simple("ROLLBACK TO SAVEPOINT w")?;
                    results.push(Err(e));
                }
            }
        }
        let position = conn.commit().map_err(|e| match e {
            // The connection dropped with the COMMIT sent or on its way: it may have committed.
            DbError::Unavailable { node, .. } => DbError::OutcomeUnknown { node },
            e => e,
        })?;
        Ok((results, position))
    }
}
