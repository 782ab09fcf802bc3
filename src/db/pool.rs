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
use postgres::{Client, NoTls, Row, Statement};

use super::error::DbError;
use super::lsn::Lsn;
use super::node::Node;

/// The most lookups one query answers.
const MAX_BATCH: usize = 128;
/// The first pause of a read waiting for a replica to replay its commit: replay usually
/// trails by well under a millisecond, so most reads look twice at most.
const FIRST_REPLAY_LOOK: Duration = Duration::from_millis(1);

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
    /// A lookup's row (or none) out of a batch's result, kept until [`Task::finish`].
    fn found(&mut self, _row: Option<&Row>) {}
    /// Sends the result (with the commit position for writes), or the error.
    fn finish(self: Box<Self>, outcome: Result<Option<Lsn>, DbError>);
}

/// A connection as queries see it: prepared statements cached per connection.
pub struct DbConn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
    node: Arc<Node>,
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

    /// The primary's WAL position now: what a commit that just finished on this session
    /// reached or passed.
    fn wal_position(&mut self) -> Result<Lsn, DbError> {
        let row = self.query_one("SELECT pg_current_wal_insert_lsn()::text", &[])?;
        let lsn: Lsn = row
            .get::<_, String>(0)
            .parse()
            .map_err(|e: String| DbError::Query(e))?;
        self.node.saw_position(lsn);
        Ok(lsn)
    }

    fn replayed(&mut self) -> Result<Option<Lsn>, DbError> {
        let row = self.query_one("SELECT pg_last_wal_replay_lsn()::text", &[])?;
        let text: Option<String> = row.get(0);
        let lsn = text.and_then(|t| t.parse::<Lsn>().ok());
        if let Some(lsn) = lsn {
            self.node.saw_position(lsn);
        }
        Ok(lsn)
    }
}

/// Opens a client to `node` with the statement timeout set for the session.
pub(crate) fn connect(
    node: &Node,
    settings: &PoolSettings,
    application: &str,
) -> Result<Client, postgres::Error> {
    let mut config = node.spec.pg.clone();
    config
        .connect_timeout(settings.connect_timeout)
        .application_name(application)
        .options(&format!(
            "-c statement_timeout={}",
            settings.statement_timeout.as_millis()
        ));
    config.connect(NoTls)
}

/// Reconnection delays: 50 ms doubling to 5 s.
struct Backoff {
    next_attempt: Instant,
    delay: Duration,
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
        if self.conn.as_ref().is_some_and(|c| !c.client.is_closed()) {
            return Ok(());
        }
        if self.conn.take().is_some() {
            self.node.connected.fetch_sub(1, Ordering::Relaxed);
        }
        let now = Instant::now();
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
                    node: self.node.clone(),
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
                    let by_key: HashMap<i64, &Row> =
                        rows.iter().map(|row| (row.get::<_, i64>(0), row)).collect();
                    for task in batch.iter_mut() {
                        let key = task.lookup().expect("a lookup").1;
                        task.found(by_key.get(&key).copied());
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

    fn write(&mut self, mut group: Vec<DbRequest>) {
        let count = group.len() as u64;
        let outcome = self.write_group(&mut group);
        let outcome = outcome.and_then(|results| {
            let position = self.conn().wal_position()?;
            Ok((results, position))
        });
        let node_failed = outcome.as_ref().is_err_and(DbError::is_node_failure);
        if let Err(DbError::ReadOnly { .. }) = &outcome {
            self.node.in_recovery.store(true, Ordering::Relaxed);
        }
        match outcome {
            Ok((results, position)) => {
                for (request, result) in group.into_iter().zip(results) {
                    if let Err(DbError::ReadOnly { .. }) = &result {
                        self.node.in_recovery.store(true, Ordering::Relaxed);
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
    }

    /// One transaction for the group, one savepoint per write: a row the database refuses
    /// fails alone; a lost connection fails them all. A write alone is a group of one: its
    /// statements (a user and its welcome job's outbox row) commit whole or not at all.
    fn write_group(
        &mut self,
        group: &mut [DbRequest],
    ) -> Result<Vec<Result<(), DbError>>, DbError> {
        let conn = self.conn.as_mut().expect("connected");
        let outcome = Self::run_group(conn, group);
        if outcome.is_err() {
            // A statement timeout leaves the transaction aborted on a live connection.
            let _ = conn.simple("ROLLBACK");
        }
        outcome
    }

    fn run_group(
        conn: &mut DbConn,
        group: &mut [DbRequest],
    ) -> Result<Vec<Result<(), DbError>>, DbError> {
        conn.simple("BEGIN")?;
        // A write alone needs no savepoint: when it fails, the whole transaction goes.
        let alone = group.len() == 1;
        let mut results = Vec::with_capacity(group.len());
        for request in group.iter_mut() {
            if !alone {
                conn.simple("SAVEPOINT w")?;
            }
            match request.task.run(conn) {
                Ok(()) => {
                    if !alone {
                        conn.simple("RELEASE SAVEPOINT w")?;
                    }
                    results.push(Ok(()));
                }
                Err(e) if e.is_node_failure() => return Err(e),
                Err(e) if alone => {
                    let _ = conn.simple("ROLLBACK");
                    return Ok(vec![Err(e)]);
                }
                Err(e) => {
                    conn.simple("ROLLBACK TO SAVEPOINT w")?;
                    results.push(Err(e));
                }
            }
        }
        conn.simple("COMMIT")?;
        Ok(results)
    }
}
