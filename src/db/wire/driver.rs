//! A shard's wire connections on glommio: one per node, opened on first use, on the shard's
//! own executor (`glommio::net::TcpStream`). One task per connection moves its bytes: it
//! writes what the requests queued and reads the answers, which go straight to the waiting
//! requests (a local one-shot: no atomics, no thread). A request that gets no answer within
//! its limit closes the connection (its other requests fail as the node's failure, and the
//! next request connects afresh). A lookup by key ([`lookup`]) that comes while a request is in
//! flight on its connection waits, with the others that come meanwhile, until the answer is in:
//! then they go out as one `= ANY($1)` statement ([`super::batch`]). Only the transport: which node, the ejection and the retries
//! stay the read path's ([`crate::db::DbClient`]).

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use super::batch::{self, Gather, KeyedStatements, Split};
use super::conn::{Connection, Param, Rows, Startup, Statement};
use crate::db::pool::{FIRST_REPLAY_LOOK, REPLAYED_SQL, WAL_POSITION_SQL};
use crate::db::{DbError, Lsn, Node};

/// A connection that failed is opened again no sooner than this after: meanwhile its
/// requests fail at once (the read path retries them elsewhere).
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Requests on the wire at once before lookups wait to go out together (a batch).
const IN_FLIGHT: usize = 1;

static WAL_POSITION: Statement = Statement {
    name: "coinbit_wal_position",
    sql: WAL_POSITION_SQL,
    param_types: &[],
};
static REPLAYED: Statement = Statement {
    name: "coinbit_replayed",
    sql: REPLAYED_SQL,
    param_types: &[],
};

/// The settings of every wire connection.
#[derive(Debug, Clone)]
pub struct WireSettings {
    pub statement_timeout: Duration,
    pub connect_timeout: Duration,
}

/// A request's answer slot: written once by the connection's task, read by the request.
#[derive(Default)]
struct Slot {
    rows: RefCell<Option<Rows>>,
    waker: RefCell<Option<Waker>>,
}

/// Where a request's answer goes: one read's slot, or the slots of a batch's reads by key.
enum Token {
    One(Rc<Slot>),
    Batch(&'static KeyedStatements, Vec<(i64, Rc<Slot>)>),
}

fn fill(slot: Rc<Slot>, rows: Rows) {
    *slot.rows.borrow_mut() = Some(rows);
    if let Some(waker) = slot.waker.borrow_mut().take() {
        waker.wake();
    }
}

/// Hands a request's answer to its reads; a refused batch's reads go again alone. Called with
/// the connection not borrowed.
fn answer(shared: &Shared, token: Token, rows: Rows) {
    match token {
        Token::One(slot) => fill(slot, rows),
        Token::Batch(lookup, keys) => match batch::split(keys, rows) {
            Split::Answered(answers) => {
                for (slot, rows) in answers {
                    fill(slot, rows);
                }
            }
            Split::Alone(keys) => {
                for (key, slot) in keys {
                    let sent = shared.conn.borrow_mut().send(
                        &lookup.one,
                        &[Param::Int8(key)],
                        Token::One(slot),
                    );
                    if let Err((token, e)) = sent {
                        answer(shared, token, Err(e));
                    }
                }
                shared.wake_task();
            }
        },
    }
}

/// One connection as its requests and its task share it.
struct Shared {
    conn: RefCell<Connection<Token>>,
    /// Lookups waiting for the request in flight to be answered.
    gather: RefCell<Gather<Rc<Slot>>>,
    /// The task's waker: a new request has bytes to write.
    task: RefCell<Option<Waker>>,
    /// Asked to close (a request timed out).
    close: Cell<bool>,
    /// When the connection died, if it did.
    died: Cell<Option<Instant>>,
}

impl Shared {
    fn wake_task(&self) {
        if let Some(waker) = self.task.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Sends the waiting lookups, a batch per statement, while the connection has room; a
    /// request that cannot go is answered in `done`.
    fn flush(&self, done: &mut Vec<(Token, Rows)>) {
        let mut conn = self.conn.borrow_mut();
        let mut gather = self.gather.borrow_mut();
        while conn.is_ready() && conn.pending() < IN_FLIGHT {
            let Some((lookup, mut keys)) = gather.take() else {
                return;
            };
            let sent = if keys.len() == 1 {
                let (key, slot) = keys.pop().expect("one key");
                conn.send(&lookup.one, &[Param::Int8(key)], Token::One(slot))
            } else {
                let values: Vec<i64> = keys.iter().map(|(key, _)| *key).collect();
                conn.send(
                    &lookup.many,
                    &[Param::Int8Array(&values)],
                    Token::Batch(lookup, keys),
                )
            };
            if let Err((token, e)) = sent {
                done.push((token, Err(e)));
            }
        }
    }
}

/// This shard's connections, by node.
struct Connections {
    executor: usize,
    nodes: Vec<(*const Node, Rc<Shared>)>,
}

thread_local! {
    static CONNECTIONS: RefCell<Option<Connections>> = const { RefCell::new(None) };
}

/// Runs `statement` with `params` on `node` over this shard's connection to it; fails as the
/// node's failure when no answer comes within `limit`. Call on a glommio executor.
pub fn query(
    node: &Arc<Node>,
    settings: &WireSettings,
    statement: &'static Statement,
    params: &[Param],
    limit: Duration,
) -> Pin<Box<dyn Future<Output = Rows>>> {
    let shared = connection(node, settings);
    let slot: Rc<Slot> = Rc::default();
    let sent = shared
        .conn
        .borrow_mut()
        .send(statement, params, Token::One(slot.clone()));
    if let Err((_, e)) = sent {
        return Box::pin(std::future::ready(Err(e)));
    }
    shared.wake_task();
    wait(shared, slot, node, limit)
}

/// Looks up `key` on `node` over this shard's connection to it: at once when the connection
/// has nothing in flight, else with the lookups that come meanwhile as one batch (the rows of
/// its key, none or one). Fails as the node's failure when no answer comes within `limit`.
/// Call on a glommio executor.
pub fn lookup(
    node: &Arc<Node>,
    settings: &WireSettings,
    statements: &'static KeyedStatements,
    key: i64,
    limit: Duration,
) -> Pin<Box<dyn Future<Output = Rows>>> {
    let shared = connection(node, settings);
    let at_once = {
        let conn = shared.conn.borrow();
        // A dead connection answers at once (with its failure).
        conn.is_dead()
            || (conn.is_ready() && conn.pending() < IN_FLIGHT && shared.gather.borrow().is_empty())
    };
    if at_once {
        return query(node, settings, &statements.one, &[Param::Int8(key)], limit);
    }
    let slot: Rc<Slot> = Rc::default();
    shared
        .gather
        .borrow_mut()
        .push(statements, key, slot.clone());
    shared.wake_task();
    wait(shared, slot, node, limit)
}

/// The answer `slot` gets, or the node's failure when none comes within `limit` (the
/// connection then closes).
fn wait(
    shared: Rc<Shared>,
    slot: Rc<Slot>,
    node: &Node,
    limit: Duration,
) -> Pin<Box<dyn Future<Output = Rows>>> {
    let name = node.name().to_string();
    Box::pin(async move {
        let answered = poll_fn(|cx| match slot.rows.borrow_mut().take() {
            Some(rows) => Poll::Ready(Some(rows)),
            None => {
                *slot.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        });
        let timeout = async {
            glommio::timer::sleep(limit).await;
            None
        };
        match futures_lite::future::or(answered, timeout).await {
            Some(rows) => rows,
            None => {
                // A node that does not answer: its connection goes (and with it the requests
                // queued behind this one), the next request connects afresh.
                shared.close.set(true);
                shared.wake_task();
                Err(DbError::Unavailable {
                    node: name,
                    reason: format!("no answer within {} ms", limit.as_millis()),
                })
            }
        }
    })
}

/// A position the node answers as one text column (`None` for NULL), noted as seen.
async fn position(
    node: &Arc<Node>,
    settings: &WireSettings,
    statement: &'static Statement,
    limit: Duration,
) -> Result<Option<Lsn>, DbError> {
    let rows = query(node, settings, statement, &[], limit).await?;
    let lsn = rows
        .first()
        .and_then(|row| row.bytes(0))
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
        .and_then(|text| text.parse::<Lsn>().ok());
    if let Some(lsn) = lsn {
        node.saw_position(lsn);
    }
    Ok(lsn)
}

/// Makes sure `node` holds commit position `min` before a read, as the DB I/O threads do: the
/// primary refuses a position past its own (asking only when `min` is past the one it last
/// saw); a replica is asked for its replay position up to `wait`, after
/// [`FIRST_REPLAY_LOOK`] and then twice as long each time (a timer on the shard, no thread
/// asleep).
pub async fn reach_position(
    node: &Arc<Node>,
    settings: &WireSettings,
    min: Lsn,
    wait: Duration,
    limit: Duration,
) -> Result<(), DbError> {
    if node.is_primary {
        if node.position() >= min
            || position(node, settings, &WAL_POSITION, limit)
                .await?
                .is_some_and(|at| at >= min)
        {
            return Ok(());
        }
        return Err(DbError::PositionAhead);
    }
    let deadline = Instant::now() + wait;
    let mut pause = FIRST_REPLAY_LOOK;
    loop {
        node.replay_checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if position(node, settings, &REPLAYED, limit)
            .await?
            .is_some_and(|at| at >= min)
        {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(DbError::NotCaughtUp {
                node: node.name().to_string(),
            });
        }
        glommio::timer::sleep(pause.min(left)).await;
        pause *= 2;
    }
}

/// This shard's live connection to `node`, opened (its task spawned) when there is none.
fn connection(node: &Arc<Node>, settings: &WireSettings) -> Rc<Shared> {
    let executor = glommio::executor().id();
    CONNECTIONS.with(|all| {
        let mut all = all.borrow_mut();
        let all = match &mut *all {
            // A shard restarted on this thread: the old executor's tasks are gone.
            Some(c) if c.executor == executor => c,
            other => other.insert(Connections {
                executor,
                nodes: Vec::new(),
            }),
        };
        let key = Arc::as_ptr(node);
        let at = all.nodes.iter().position(|(k, _)| *k == key);
        if let Some(at) = at {
            let shared = &all.nodes[at].1;
            let usable = match shared.died.get() {
                None => !shared.close.get(),
                // Failed a moment ago: its requests fail at once for a while.
                Some(died) => died.elapsed() < RECONNECT_PAUSE,
            };
            if usable {
                return shared.clone();
            }
        }
        let shared = open(node, settings);
        match at {
            Some(at) => all.nodes[at].1 = shared.clone(),
            None => all.nodes.push((key, shared.clone())),
        }
        shared
    })
}

/// The startup of `node`'s connections: user, database and password from its URL.
fn startup(node: &Node, settings: &WireSettings) -> Startup {
    let pg = &node.spec.pg;
    Startup {
        user: pg
            .get_user()
            .map(str::to_string)
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "postgres".into()),
        database: pg.get_dbname().map(str::to_string),
        password: pg.get_password().map(<[u8]>::to_vec),
        parameters: vec![
            ("application_name".into(), "coinbit-wire".into()),
            (
                "options".into(),
                crate::db::pool::session_options(node, settings.statement_timeout),
            ),
        ],
    }
}

/// The host and port of `node` (its first host; TCP only).
fn address(node: &Node) -> Result<String, String> {
    let pg = &node.spec.pg;
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    match pg.get_hosts().first() {
        Some(postgres::config::Host::Tcp(host)) => Ok(format!("{host}:{port}")),
        Some(postgres::config::Host::Unix(path)) => Err(format!(
            "the wire driver speaks TCP only, not the socket in {}",
            path.display()
        )),
        None => Err("no host".into()),
    }
}

fn open(node: &Arc<Node>, settings: &WireSettings) -> Rc<Shared> {
    let shared = Rc::new(Shared {
        conn: RefCell::new(Connection::new(node.name(), startup(node, settings))),
        gather: RefCell::default(),
        task: RefCell::new(None),
        close: Cell::new(false),
        died: Cell::new(None),
    });
    let address = address(node);
    let connect_timeout = settings.connect_timeout;
    let task = shared.clone();
    glommio::spawn_local(async move {
        let reason = match address {
            Ok(address) => run(&task, &address, connect_timeout).await,
            Err(reason) => reason,
        };
        let mut done = Vec::new();
        let error = {
            let mut conn = task.conn.borrow_mut();
            conn.fail(reason, &mut done);
            conn.failure().cloned().expect("failed")
        };
        task.died.set(Some(Instant::now()));
        let waiting: Vec<Rc<Slot>> = task.gather.borrow_mut().drain().collect();
        for slot in waiting {
            fill(slot, Err(error.clone()));
        }
        for (token, rows) in done {
            answer(&task, token, rows);
        }
    })
    .detach();
    shared
}

/// Connects and moves the connection's bytes until it fails; the reason it did.
async fn run(shared: &Shared, address: &str, connect_timeout: Duration) -> String {
    let mut stream = match TcpStream::connect_timeout(address, connect_timeout).await {
        Ok(stream) => stream,
        Err(e) => return format!("cannot connect to {address}: {e}"),
    };
    let _ = stream.set_nodelay(true);
    let mut writing = bytes::BytesMut::new();
    let mut reading = vec![0u8; READ_CHUNK];
    let mut done = Vec::new();
    poll_fn(|cx| {
        let polled = drive(
            shared,
            &mut stream,
            &mut writing,
            &mut reading,
            &mut done,
            cx,
        );
        // Answers go out after the connection's borrow ends: a woken request may send again.
        for (token, rows) in done.drain(..) {
            answer(shared, token, rows);
        }
        polled
    })
    .await
}

/// One turn of the connection's task: writes what is queued, reads what came, until the
/// socket has nothing more either way (then waits for it or for a new request).
fn drive(
    shared: &Shared,
    stream: &mut TcpStream,
    writing: &mut bytes::BytesMut,
    reading: &mut [u8],
    done: &mut Vec<(Token, Rows)>,
    cx: &mut Context<'_>,
) -> Poll<String> {
    loop {
        if shared.close.get() {
            return Poll::Ready("closed after a request got no answer in time".into());
        }
        if shared.conn.borrow().is_dead() {
            return Poll::Ready("the connection failed".into());
        }
        shared.flush(done);
        if writing.is_empty() {
            *writing = shared.conn.borrow_mut().take_output();
        }
        let mut progress = false;
        while !writing.is_empty() {
            match Pin::new(&mut *stream).poll_write(cx, writing) {
                Poll::Ready(Ok(0)) => return Poll::Ready("the socket took no bytes".into()),
                Poll::Ready(Ok(n)) => {
                    let _ = writing.split_to(n);
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(format!("write: {e}")),
                Poll::Pending => break,
            }
        }
        match Pin::new(&mut *stream).poll_read(cx, reading) {
            Poll::Ready(Ok(0)) => return Poll::Ready("the server closed the connection".into()),
            Poll::Ready(Ok(n)) => {
                shared.conn.borrow_mut().receive(&reading[..n], done);
                progress = true;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(format!("read: {e}")),
            Poll::Pending => {}
        }
        if !progress {
            *shared.task.borrow_mut() = Some(cx.waker().clone());
            return Poll::Pending;
        }
    }
}
