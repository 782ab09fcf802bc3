//! The database tier: a PostgreSQL primary for writes and read replicas chosen by strategy.
//!
//! Shards never hold a database client: the `postgres` crate runs a tokio runtime inside each
//! client, so clients live on DB I/O threads ([`pool`], one per pooled connection, a pool per
//! node). A shard sends a request over the node's bounded crossbeam queue and awaits the reply on a
//! flume channel (`recv_async`), which any executor can poll: nothing here depends on an engine.
//! A full queue answers [`DbError::Busy`] at once instead of queueing without bound.
//!
//! # Layout
//! - [`replica_choice`]: replica choice by strategy (pure, per shard).
//! - [`availability`]: ejection, half-open probes and the circuit breaker (pure).
//! - [`node`]: one node's queue and the atomics every thread reads.
//! - [`pool`]: the DB I/O threads: connections, prepared statements, group commit.
//! - [`health_check`]: the health checks (role, lag, round-trip time), on the monitor core.
//! - [`deadline`]: the bound on a read's wait for its node's answer.
//! - [`migrate`]: the embedded schema migrations.
//! - [`admin`]: one-off administration subcommands (`coinbit grant-role`).
//! - [`wire`]: a shard's own connections, the wire protocol on its event loop (`DB_READ_DRIVER=wire`).
//! - [`status`]: what `/health`, the cluster status and `/metrics` say about the nodes.

pub mod admin;
pub mod availability;
mod deadline;
pub mod error;
pub mod health_check;
pub mod lsn;
pub mod migrate;
pub mod node;
pub mod pool;
pub mod replica_choice;
pub mod status;
pub mod wire;

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{DatabaseConfig, ReadDriver, ReplicaStrategy};
pub use error::DbError;
pub use lsn::Lsn;
pub use node::Node;
pub use pool::DbConn;
use pool::{DbRequest, DbRequestKind, PoolSettings, Task};
pub use postgres::Row;
use replica_choice::{Candidate, ReplicaChooser};
use wire::driver::WireSettings;
pub use wire::WireRow;

/// A future that a handler awaits inside `Reply::Later`.
pub type DbFuture<T> = Pin<Box<dyn Future<Output = Result<T, DbError>>>>;

/// Why the database tier could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot prepare the database at {variable}={url}: {reason}")]
pub struct DbStartError {
    pub variable: String,
    pub url: String,
    pub reason: String,
}

/// The nodes and the settings that decide where a query goes. Shared by every shard (through
/// [`DbClient`]), the pool threads, the checker and the monitor.
#[derive(Debug)]
pub struct Database {
    /// The primary first, then the replicas in order.
    pub nodes: Vec<Arc<Node>>,
    pub strategy: ReplicaStrategy,
    pub read_your_writes_wait: Duration,
    pub check_interval: Duration,
    pub group_commit: usize,
    /// How long a read waits for its node's answer before it counts the node as failed (and
    /// a replica's read goes to the primary): the longest a pool thread can take on a node
    /// that answers, a connect, a wait for replay and a statement.
    pub read_answer_limit: Duration,
    /// With `DB_READ_DRIVER=wire`, the settings of the shards' own connections ([`wire`]).
    pub wire_reads: Option<WireSettings>,
    /// The primary's position once its schema was current ([`migrate::Migrated`]): a replica
    /// is picked for reads only once the health check saw it replay this far, so no read meets
    /// a replica still without the tables a migration just made.
    pub schema_position: Lsn,
}

impl Database {
    /// Applies the migrations to the primary, then starts the pools and the health checker
    /// (pinned to `checker_cpu`). `None` when no database is configured.
    pub fn start(
        config: &DatabaseConfig,
        checker_cpu: Option<usize>,
    ) -> Result<Option<Arc<Database>>, DbStartError> {
        let specs = config.nodes().map_err(|e| DbStartError {
            variable: "DATABASE_URL".into(),
            url: String::new(),
            reason: e.to_string(),
        })?;
        if specs.is_empty() {
            return Ok(None);
        }
        let primary = &specs[0];
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
        let migrated =
            migrate::apply(&primary.pg, connect_timeout).map_err(|reason| DbStartError {
                variable: primary.variable.clone(),
                url: primary.display_url.clone(),
                reason,
            })?;
        let policy = availability::Policy {
            ejection_time: Duration::from_millis(config.ejection_time_ms),
            breaker_failures: config.breaker_failures,
            max_lag: config.max_replica_lag,
        };
        let settings = PoolSettings {
            statement_timeout: Duration::from_millis(config.statement_timeout_ms),
            connect_timeout,
            group_commit: config.group_commit,
        };
        let nodes: Vec<Arc<Node>> = specs
            .into_iter()
            .enumerate()
            .map(|(index, spec)| {
                let (sender, queue) = crossbeam::channel::bounded(config.queue_size);
                // Writes have nowhere else to go: the primary is asked again sooner.
                let policy = if index == 0 {
                    availability::Policy {
                        ejection_time: policy
                            .ejection_time
                            .min(Duration::from_millis(config.primary_retry_ms)),
                        ..policy
                    }
                } else {
                    policy
                };
                let node = Node::new(
                    spec,
                    index == 0,
                    sender,
                    config.queue_size,
                    config.pool_size,
                    policy,
                );
                pool::spawn(&node, queue, &settings);
                node
            })
            .collect();
        let database = Arc::new(Database {
            nodes,
            strategy: config.replica_strategy,
            read_your_writes_wait: Duration::from_millis(config.read_your_writes_wait_ms),
            check_interval: Duration::from_millis(config.replica_health_check_interval_ms),
            group_commit: config.group_commit,
            read_answer_limit: settings.connect_timeout
                + Duration::from_millis(config.read_your_writes_wait_ms)
                + settings.statement_timeout,
            wire_reads: (config.read_driver == ReadDriver::Wire).then_some(WireSettings {
                statement_timeout: settings.statement_timeout,
                connect_timeout: settings.connect_timeout,
            }),
            schema_position: migrated.schema_position.unwrap_or_default(),
        });
        health_check::spawn(database.clone(), settings, checker_cpu);
        log::info!(
            "database: primary {} and {} replicas ({}), {} connections each",
            database.primary().spec.display_url,
            database.replicas().len(),
            database.strategy.as_str(),
            config.pool_size
        );
        Ok(Some(database))
    }

    pub fn primary(&self) -> &Arc<Node> {
        &self.nodes[0]
    }

    pub fn replicas(&self) -> &[Arc<Node>] {
        &self.nodes[1..]
    }

    /// Whether `replica` may be picked for a read: routable, and seen holding the schema.
    fn serves_reads(&self, replica: &Node) -> bool {
        replica.routable() && self.holds_schema(replica)
    }

    /// Whether `node` was seen at or past [`Database::schema_position`].
    fn holds_schema(&self, node: &Node) -> bool {
        node.position() >= self.schema_position
    }

    /// A routable replica not yet seen holding the schema: it takes no reads, the health check
    /// looks at it every tick, and the status names it `behind-schema`.
    pub fn behind_schema(&self, node: &Node) -> bool {
        !node.is_primary && node.routable() && !self.holds_schema(node)
    }

    /// A shard's handle, with its own chooser.
    pub fn client(self: &Arc<Self>) -> DbClient {
        DbClient {
            chooser: ReplicaChooser::new(self.strategy, self.replicas().len()),
            db: self.clone(),
        }
    }
}

/// A committed write's value and the WAL position its commit reached.
#[derive(Debug)]
pub struct Written<T> {
    pub value: T,
    pub commit_position: Lsn,
}

/// One shard's way to the database. Owned by the shard: its chooser state is its own.
pub struct DbClient {
    db: Arc<Database>,
    chooser: ReplicaChooser,
}

impl DbClient {
    /// Runs `query` on the primary (grouped with other writes into one transaction when they
    /// arrive together). Fails at once when the primary is shut out ([`DbError::NoPrimary`]) or
    /// in recovery. A connection lost during the COMMIT answers [`DbError::OutcomeUnknown`]:
    /// the write may have committed.
    pub fn write<T, F>(&mut self, query: F) -> DbFuture<Written<T>>
    where
        T: Send + 'static,
        F: FnMut(&mut DbConn) -> Result<T, DbError> + Send + 'static,
    {
        let primary = self.db.primary().clone();
        if let Err(e) = writable(&primary) {
            return Box::pin(std::future::ready(Err(e)));
        }
        let pending = submit(
            &primary,
            DbRequestKind::Write,
            move |reply| -> Box<dyn Task> {
                Box::new(Typed {
                    query,
                    value: None,
                    reply,
                })
            },
        );
        Box::pin(async move {
            let (value, position) = pending.await?;
            Ok(Written {
                value,
                commit_position: position.unwrap_or_default(),
            })
        })
    }

    /// Runs `query` on a replica picked by the strategy. With `min_position` (a commit position
    /// the client got from a write) only a replica that has replayed it answers, after a
    /// bounded wait; else the primary does. A replica that fails is retried on the primary (and
    /// when the primary is out too, on another routable replica), so a replica going down fails
    /// no read. With no routable replica, the primary reads.
    pub fn read<T, F>(&mut self, min_position: Option<Lsn>, query: F) -> DbFuture<T>
    where
        T: Send + 'static,
        F: FnMut(&mut DbConn) -> Result<T, DbError> + Send + Clone + 'static,
    {
        self.read_task(min_position, move |reply| {
            Box::new(Typed {
                query: query.clone(),
                value: None,
                reply,
            })
        })
    }

    /// Runs `query` as a read on the primary, outside any write group: for a read that must see
    /// every commit but would delay the group's commit if it ran inside it (the ledger check).
    /// Fails at once when the primary is shut out.
    pub fn read_primary<T, F>(&mut self, query: F) -> DbFuture<T>
    where
        T: Send + 'static,
        F: FnMut(&mut DbConn) -> Result<T, DbError> + Send + 'static,
    {
        let primary = self.db.primary().clone();
        if !primary.routable() {
            return Box::pin(std::future::ready(Err(shut_out(&primary))));
        }
        let (reply, answer) = read_reply(&primary, self.db.read_answer_limit);
        let kind = DbRequestKind::Read {
            min_position: None,
            wait: Duration::ZERO,
        };
        let task = Box::new(Typed {
            query,
            value: None,
            reply,
        });
        let pending = queue(&primary, DbRequest { kind, task }, answer);
        Box::pin(async move { pending.await.map(|(value, _)| value) })
    }

    /// Like [`DbClient::read`] for the row of one key (an `int8`, in column 0), which `map`
    /// turns into the answer. Alone it runs `sql.one` (`... WHERE key = $1`); lookups of one
    /// statement that wait in a node's queue together are answered by one `sql.many`
    /// (`... WHERE key = ANY($1)`).
    pub fn lookup<T>(
        &mut self,
        min_position: Option<Lsn>,
        sql: &'static Lookup,
        key: i64,
        map: fn(&Row) -> T,
    ) -> DbFuture<Option<T>>
    where
        T: Send + 'static,
    {
        self.read_task(min_position, keyed(sql, key, first_row(map)))
    }

    /// Like [`DbClient::lookup`] for a key with any number of rows (a user's accounts):
    /// `map` gets all of them, in the statement's order, and none when there are none.
    /// Batched the same way: one `sql.many` answers every such lookup queued together.
    pub fn lookup_rows<T>(
        &mut self,
        min_position: Option<Lsn>,
        sql: &'static Lookup,
        key: i64,
        map: fn(&[&Row]) -> T,
    ) -> DbFuture<T>
    where
        T: Send + 'static,
    {
        self.read_task(min_position, keyed(sql, key, map))
    }

    /// Like [`DbClient::lookup`], over this shard's own connection ([`wire`]) when
    /// `DB_READ_DRIVER=wire`; else as `lookup` does. Same node choice, same wait for a commit
    /// position, same retries: only the transport differs. The lookups that wait for a
    /// connection while a request is in flight on it go out together as one `= ANY($1)`
    /// ([`wire::batch`]), as the threads batch theirs.
    pub fn lookup_wire<T>(
        &mut self,
        min_position: Option<Lsn>,
        sql: &'static Lookup,
        key: i64,
        map: fn(&Row) -> T,
        wire: &'static WireLookup<T>,
    ) -> DbFuture<Option<T>>
    where
        T: Send + 'static,
    {
        let Some(settings) = self.db.wire_reads.clone() else {
            return self.lookup(min_position, sql, key, map);
        };
        let limit = self.db.read_answer_limit;
        self.route(min_position, move |node, min, wait| {
            if node.finds_primary() {
                // A several-host primary is found again by the pool's client after a failover.
                return thread_read(node, min, wait, limit, keyed(sql, key, first_row(map)));
            }
            node.in_flight.fetch_add(1, Ordering::Relaxed);
            let in_flight = InFlight(node.clone());
            let settings = settings.clone();
            Box::pin(async move {
                let node = &in_flight.0;
                let rows = async {
                    if let Some(min) = min {
                        wire::driver::reach_position(node, &settings, min, wait, limit).await?;
                    }
                    wire::driver::lookup(node, &settings, &wire.statements, key, limit).await
                }
                .await;
                node.request_done(rows.as_ref().is_err_and(DbError::is_node_failure));
                drop(in_flight);
                rows?.first().map(wire.map).transpose()
            })
        })
    }

    /// A read on the DB I/O threads: `task` builds the request for each node asked.
    fn read_task<T, M>(&mut self, min_position: Option<Lsn>, task: M) -> DbFuture<T>
    where
        T: Send + 'static,
        M: Fn(Reply<T>) -> Box<dyn Task> + 'static,
    {
        let limit = self.db.read_answer_limit;
        self.route(min_position, move |node, min, wait| {
            thread_read(node, min, wait, limit, &task)
        })
    }

    /// The routing of every read: `send` asks one node (with the commit position to wait
    /// for, and how long a replica may wait for it); it is called again for the primary when
    /// the replica picked fails, and for another replica when the primary fails too.
    fn route<T, S>(&mut self, min_position: Option<Lsn>, send: S) -> DbFuture<T>
    where
        T: 'static,
        S: Fn(&Arc<Node>, Option<Lsn>, Duration) -> DbFuture<T> + 'static,
    {
        let primary = self.db.primary().clone();
        // A position past the primary's last known one came from no write this server saw:
        // no replica waits for it; the primary checks it and refuses it if it is ahead.
        let past_known = min_position.is_some_and(|min| min > primary.position());
        let send = Rc::new(send);
        let read_primary = {
            let send = send.clone();
            move || -> DbFuture<T> {
                if !primary.routable() {
                    return Box::pin(std::future::ready(Err(shut_out(&primary))));
                }
                send(&primary, min_position, Duration::ZERO)
            }
        };
        let replica = if past_known {
            None
        } else {
            self.pick_replica(min_position)
        };
        let Some(replica) = replica else {
            return read_primary();
        };
        let wait = self.db.read_your_writes_wait;
        let first = send(&replica, min_position, wait);
        let db = self.db.clone();
        Box::pin(async move {
            match first.await {
                Ok(value) => Ok(value),
                Err(e) if matches!(e, DbError::NotCaughtUp { .. }) || e.is_node_failure() => {
                    match read_primary().await {
                        // The primary is out too (a failover under way): another replica
                        // that is routable answers, so that losing a host fails no read.
                        Err(failed) if failed.is_node_failure() => {
                            let Some(other) = db
                                .replicas()
                                .iter()
                                .find(|r| !Arc::ptr_eq(r, &replica) && db.serves_reads(r))
                                .cloned()
                            else {
                                return Err(failed);
                            };
                            send(&other, min_position, wait).await
                        }
                        answered => answered,
                    }
                }
                Err(e) => Err(e),
            }
        })
    }

    fn pick_replica(&mut self, min_position: Option<Lsn>) -> Option<Arc<Node>> {
        let replicas = self.db.replicas();
        if replicas.is_empty() {
            return None;
        }
        let mut candidates: Vec<Candidate> = replicas
            .iter()
            .map(|r| Candidate {
                routable: self.db.serves_reads(r),
                weight: r.spec.weight,
                in_flight: r.in_flight.load(Ordering::Relaxed),
            })
            .collect();
        // Prefer replicas known to have replayed the position; if none is known to, any may
        // (the pool thread waits for it).
        if let Some(min) = min_position {
            let caught_up = |i: usize| candidates[i].routable && replicas[i].position() >= min;
            if (0..replicas.len()).any(caught_up) {
                let keep: Vec<bool> = (0..replicas.len()).map(caught_up).collect();
                for (c, keep) in candidates.iter_mut().zip(keep) {
                    c.routable = keep;
                }
            }
        }
        self.chooser.pick(&candidates).map(|i| replicas[i].clone())
    }
}

/// A read on `node`'s DB I/O threads, answered `Unavailable` past `limit`.
fn thread_read<T, M>(
    node: &Arc<Node>,
    min_position: Option<Lsn>,
    wait: Duration,
    limit: Duration,
    task: M,
) -> DbFuture<T>
where
    T: Send + 'static,
    M: FnOnce(Reply<T>) -> Box<dyn Task>,
{
    let (reply, answer) = read_reply(node, limit);
    let kind = DbRequestKind::Read { min_position, wait };
    let pending = queue(
        node,
        DbRequest {
            kind,
            task: task(reply),
        },
        answer,
    );
    Box::pin(async move { pending.await.map(|(value, _)| value) })
}

/// A lookup's statement and row mapping for the wire driver ([`DbClient::lookup_wire`]).
pub struct WireLookup<T: 'static> {
    /// Its statements for one key (`$1` an `int8`) and for many (`= ANY($1)`), named.
    pub statements: wire::KeyedStatements,
    pub map: fn(&WireRow) -> Result<T, DbError>,
}

fn shut_out(node: &Node) -> DbError {
    let health = node.health_snapshot();
    DbError::Unavailable {
        node: node.name().to_string(),
        reason: health
            .reason
            .unwrap_or_else(|| "shut out by its health checks".into()),
    }
}

fn writable(primary: &Node) -> Result<(), DbError> {
    if !primary.routable() {
        // Answered at once: no write waits for a primary to be found.
        let reason = match shut_out(primary) {
            DbError::Unavailable { reason, .. } => reason,
            other => other.to_string(),
        };
        return Err(DbError::NoPrimary { reason });
    }
    if primary.in_recovery.load(Ordering::Relaxed) {
        return Err(DbError::ReadOnly {
            node: primary.name().to_string(),
        });
    }
    Ok(())
}

/// Where a request's result goes: the value, and the commit position for writes.
type Reply<T> = flume::Sender<Answer<T>>;
/// A request's result as its caller receives it.
type Answer<T> = Result<(T, Option<Lsn>), DbError>;

/// A read's reply channel: answered `Unavailable` by the [`deadline`] thread when `node` has
/// not answered within `limit`.
fn read_reply<T: Send + 'static>(
    node: &Arc<Node>,
    limit: Duration,
) -> (Reply<T>, flume::Receiver<Answer<T>>) {
    let (reply, answer) = flume::bounded(1);
    // Weak: a request answered in time leaves nothing alive here but an empty entry.
    let unanswered = reply.downgrade();
    let node = node.clone();
    deadline::at(Instant::now() + limit, move || {
        if let Some(reply) = unanswered.upgrade() {
            let _ = reply.try_send(Err(DbError::Unavailable {
                node: node.name().to_string(),
                reason: format!("no answer within {} ms", limit.as_millis()),
            }));
        }
    });
    (reply, answer)
}

/// Sends a request's outcome with the value its query kept. `try_send`: a read's slot may already
/// hold its deadline's answer, and a pool thread never waits on a reply.
fn answer<T>(reply: Reply<T>, value: Option<T>, outcome: Result<Option<Lsn>, DbError>) {
    let result = outcome.and_then(|position| {
        value
            .map(|value| (value, position))
            .ok_or_else(|| DbError::Query("the query produced no result".into()))
    });
    let _ = reply.try_send(result);
}

/// The typed side of a request: the query and where its result goes.
struct Typed<T, F> {
    query: F,
    value: Option<T>,
    reply: Reply<T>,
}

impl<T, F> Task for Typed<T, F>
where
    T: Send,
    F: FnMut(&mut DbConn) -> Result<T, DbError> + Send,
{
    fn run(&mut self, conn: &mut DbConn) -> Result<(), DbError> {
        self.value = Some((self.query)(conn)?);
        Ok(())
    }

    fn finish(self: Box<Self>, outcome: Result<Option<Lsn>, DbError>) {
        let Typed { value, reply, .. } = *self;
        answer(reply, value, outcome);
    }
}

/// The statements of a lookup by key: for one key (`$1`) and for many (`= ANY($1)`, an array).
#[derive(Debug)]
pub struct Lookup {
    pub one: &'static str,
    pub many: &'static str,
}

/// A lookup by key: alone, or answered from a batch's rows. `map` turns the key's rows (one
/// for [`DbClient::lookup`], any number for [`DbClient::lookup_rows`]) into the answer.
struct Keyed<T, M> {
    sql: &'static Lookup,
    key: i64,
    map: M,
    value: Option<T>,
    reply: Reply<T>,
}

/// [`DbClient::lookup`]'s map of a key's rows: the first, if any.
fn first_row<T: 'static>(
    map: fn(&Row) -> T,
) -> impl Fn(&[&Row]) -> Option<T> + Copy + Send + 'static {
    move |rows: &[&Row]| rows.first().map(|row| map(row))
}

/// The requests of a lookup by key, for each node asked.
fn keyed<T, M>(sql: &'static Lookup, key: i64, map: M) -> impl Fn(Reply<T>) -> Box<dyn Task>
where
    T: Send + 'static,
    M: Fn(&[&Row]) -> T + Copy + Send + 'static,
{
    move |reply| {
        Box::new(Keyed {
            sql,
            key,
            map,
            value: None,
            reply,
        })
    }
}

impl<T: Send, M: Fn(&[&Row]) -> T + Send> Task for Keyed<T, M> {
    fn run(&mut self, conn: &mut DbConn) -> Result<(), DbError> {
        let rows = conn.query(self.sql.one, &[&self.key])?;
        self.found(&rows.iter().collect::<Vec<_>>());
        Ok(())
    }

    fn lookup(&self) -> Option<(&'static str, i64)> {
        Some((self.sql.many, self.key))
    }

    fn found(&mut self, rows: &[&Row]) {
        self.value = Some((self.map)(rows));
    }

    fn finish(self: Box<Self>, outcome: Result<Option<Lsn>, DbError>) {
        let Keyed { value, reply, .. } = *self;
        answer(reply, value, outcome);
    }
}

/// Counts a request in flight on a node from the moment it is queued until its reply is read
/// (or the waiting request is dropped): what least-connections compares.
struct InFlight(Arc<Node>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Queues the request `task` builds around its reply channel; the future is its answer.
fn submit<T>(
    node: &Arc<Node>,
    kind: DbRequestKind,
    task: impl FnOnce(Reply<T>) -> Box<dyn Task>,
) -> impl Future<Output = Result<(T, Option<Lsn>), DbError>>
where
    T: Send + 'static,
{
    let (reply, answer) = flume::bounded(1);
    queue(
        node,
        DbRequest {
            kind,
            task: task(reply),
        },
        answer,
    )
}

fn queue<T>(
    node: &Arc<Node>,
    request: DbRequest,
    answer: flume::Receiver<Result<(T, Option<Lsn>), DbError>>,
) -> impl Future<Output = Result<(T, Option<Lsn>), DbError>>
where
    T: Send + 'static,
{
    node.in_flight.fetch_add(1, Ordering::Relaxed);
    let guard = InFlight(node.clone());
    let sent = node.queue.try_send(request).map_err(|e| match e {
        crossbeam::channel::TrySendError::Full(_) => DbError::Busy {
            node: node.name().to_string(),
        },
        crossbeam::channel::TrySendError::Disconnected(_) => DbError::Unavailable {
            node: node.name().to_string(),
            reason: "its database threads stopped".into(),
        },
    });
    let node = node.name().to_string();
    async move {
        let _guard = guard;
        sent?;
        answer.recv_async().await.unwrap_or_else(|_| {
            Err(DbError::Unavailable {
                node,
                reason: "its database thread stopped".into(),
            })
        })
    }
}
