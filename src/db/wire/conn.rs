//! One connection's PostgreSQL wire protocol, sans I/O: bytes in ([`Connection::receive`]),
//! bytes out ([`Connection::take_output`]), answers out in the order the requests went in.
//!
//! A request is `Parse` (the first time this connection uses its statement), `Bind`,
//! `Execute` and `Sync`; its answer ends at the `ReadyForQuery` its `Sync` brings. The server
//! answers in order, so pending requests wait in a FIFO and any number of them may be on the
//! wire at once (pipelined). An `ErrorResponse` fails only the request it belongs to (the
//! server skips to that request's `Sync`); a dead socket or a protocol error fails them all.

use std::collections::{HashSet, VecDeque};
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::{ErrorResponseBody, Message};
use postgres_protocol::message::frontend;
use postgres_protocol::{types, IsNull, Oid};

use crate::db::DbError;

/// The `int8` type's OID: the parameter type of a lookup by key.
pub const INT8: Oid = 20;
/// The `int8[]` type's OID: the parameter type of a lookup of many keys (`= ANY($1)`).
pub const INT8_ARRAY: Oid = 1016;

/// A named prepared statement: parsed once per connection, then bound by name.
#[derive(Debug)]
pub struct Statement {
    pub name: &'static str,
    pub sql: &'static str,
    pub param_types: &'static [Oid],
}

/// A parameter, sent in binary.
#[derive(Debug, Clone, Copy)]
pub enum Param<'a> {
    Int8(i64),
    /// A one-dimensional `int8[]` (no NULLs).
    Int8Array(&'a [i64]),
}

/// One `DataRow`, its columns in binary as the server sent them.
#[derive(Debug, Clone)]
pub struct WireRow {
    buffer: Bytes,
    columns: Vec<Option<Range<usize>>>,
}

impl WireRow {
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// Column `i`'s bytes; `None` for SQL NULL (or no such column).
    pub fn bytes(&self, i: usize) -> Option<&[u8]> {
        let range = self.columns.get(i)?.clone()?;
        Some(&self.buffer[range])
    }

    fn not_null(&self, i: usize) -> Result<&[u8], DbError> {
        self.bytes(i)
            .ok_or_else(|| DbError::Query(format!("column {i} is NULL or missing")))
    }

    /// Column `i` as an `int8`.
    pub fn int8(&self, i: usize) -> Result<i64, DbError> {
        types::int8_from_sql(self.not_null(i)?)
            .map_err(|e| DbError::Query(format!("column {i} is no int8: {e}")))
    }

    /// Column `i` as `text`.
    pub fn text(&self, i: usize) -> Result<&str, DbError> {
        types::text_from_sql(self.not_null(i)?)
            .map_err(|e| DbError::Query(format!("column {i} is no text: {e}")))
    }
}

/// What the connection can say of a request: its rows, or why it failed.
pub type Rows = Result<Vec<WireRow>, DbError>;

/// Startup settings: from the node's URL and the pool's settings.
#[derive(Debug, Clone)]
pub struct Startup {
    pub user: String,
    pub database: Option<String>,
    pub password: Option<Vec<u8>>,
    /// Extra startup parameters (`application_name`, `options`).
    pub parameters: Vec<(String, String)>,
}

enum Phase {
    /// Startup sent; authenticating (with SCRAM's state while it runs).
    Authenticating(Option<Box<ScramSha256>>),
    /// `ReadyForQuery` seen: requests go out as they come.
    Ready,
    /// Failed: every request fails with this.
    Dead(DbError),
}

/// A request on its way: its token (where its answer goes), the statement it parsed (if it
/// did), and the answer so far.
struct Pending<T> {
    token: T,
    parsed: Option<&'static str>,
    rows: Vec<WireRow>,
    error: Option<DbError>,
}

/// One connection's protocol state. `T` is what a request's answer is handed back with.
pub struct Connection<T> {
    node: String,
    user: String,
    password: Option<Vec<u8>>,
    phase: Phase,
    /// Bytes for the server: startup and authentication, then requests.
    out: BytesMut,
    /// Requests made before the connection was ready: sent after its `ReadyForQuery`.
    waiting: BytesMut,
    input: BytesMut,
    /// Statements whose `Parse` went out on this connection.
    prepared: HashSet<&'static str>,
    pending: VecDeque<Pending<T>>,
}

impl<T> Connection<T> {
    /// A connection to `node` (its name in errors), with its startup message queued.
    pub fn new(node: &str, startup: Startup) -> Connection<T> {
        let mut out = BytesMut::new();
        let mut parameters: Vec<(&str, &str)> = vec![("user", &startup.user)];
        if let Some(database) = &startup.database {
            parameters.push(("database", database));
        }
        parameters.extend(
            startup
                .parameters
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let phase = match frontend::startup_message(parameters, &mut out) {
            Ok(()) => Phase::Authenticating(None),
            Err(e) => Phase::Dead(unavailable(node, format!("startup message: {e}"))),
        };
        Connection {
            node: node.to_string(),
            user: startup.user,
            password: startup.password,
            phase,
            out,
            waiting: BytesMut::new(),
            input: BytesMut::new(),
            prepared: HashSet::new(),
            pending: VecDeque::new(),
        }
    }

    pub fn is_dead(&self) -> bool {
        matches!(self.phase, Phase::Dead(_))
    }

    /// Why the connection failed, once it has.
    pub fn failure(&self) -> Option<&DbError> {
        match &self.phase {
            Phase::Dead(e) => Some(e),
            _ => None,
        }
    }

    pub fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Ready)
    }

    /// Requests sent or waiting, not yet answered.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Bytes to write to the server (empty when there are none).
    pub fn take_output(&mut self) -> BytesMut {
        self.out.split()
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Queues `statement` with `params`; its answer comes back with `token`. On a dead
    /// connection the answer is at once: `Err` with the token and the reason.
    pub fn send(
        &mut self,
        statement: &'static Statement,
        params: &[Param],
        token: T,
    ) -> Result<(), (T, DbError)> {
        if let Phase::Dead(e) = &self.phase {
            return Err((token, e.clone()));
        }
        let buf = if self.is_ready() {
            &mut self.out
        } else {
            &mut self.waiting
        };
        let parsed = self
            .prepared
            .insert(statement.name)
            .then_some(statement.name);
        let encoded = encode(statement, parsed.is_some(), params, buf);
        if let Err(reason) = encoded {
            if parsed.is_some() {
                self.prepared.remove(statement.name);
            }
            return Err((token, DbError::Query(reason)));
        }
        self.pending.push_back(Pending {
            token,
            parsed,
            rows: Vec::new(),
            error: None,
        });
        Ok(())
    }

    /// Reads the server's `bytes`; the requests they finish, in order, go to `done`. A
    /// protocol error or a refused startup kills the connection (every request fails).
    pub fn receive(&mut self, bytes: &[u8], done: &mut Vec<(T, Rows)>) {
        self.input.extend_from_slice(bytes);
        while !self.is_dead() {
            let message = match Message::parse(&mut self.input) {
                Ok(Some(message)) => message,
                Ok(None) => return,
                Err(e) => return self.fail(format!("bad message from the server: {e}"), done),
            };
            if let Err(reason) = self.handle(message, done) {
                return self.fail(reason, done);
            }
        }
    }

    /// The socket is gone (or timed out): every request fails with `reason`.
    pub fn fail(&mut self, reason: String, done: &mut Vec<(T, Rows)>) {
        let error = match &self.phase {
            Phase::Dead(e) => e.clone(),
            _ => unavailable(&self.node, reason),
        };
        self.phase = Phase::Dead(error.clone());
        done.extend(
            self.pending
                .drain(..)
                .map(|p| (p.token, Err(error.clone()))),
        );
    }

    fn handle(&mut self, message: Message, done: &mut Vec<(T, Rows)>) -> Result<(), String> {
        if let Phase::Authenticating(scram) = &mut self.phase {
            return match message {
                Message::ReadyForQuery(_) => {
                    self.phase = Phase::Ready;
                    let waiting = self.waiting.split();
                    self.out.unsplit(waiting);
                    Ok(())
                }
                Message::ErrorResponse(body) => {
                    // Refused at startup (a bad password, a database starting up): the node.
                    let (_, message, _) = error_fields(&body)?;
                    Err(format!("refused the connection: {message}"))
                }
                message => {
                    let scram = scram.take();
                    self.authenticate(message, scram)
                }
            };
        }
        let Some(front) = self.pending.front_mut() else {
            return match message {
                Message::NoticeResponse(_) | Message::ParameterStatus(_) => Ok(()),
                // A fatal error with nothing pending: the server is closing (a shutdown).
                Message::ErrorResponse(body) => {
                    let (_, message, _) = error_fields(&body)?;
                    Err(message)
                }
                _ => Err("a message with no request pending".into()),
            };
        };
        match message {
            Message::ParseComplete
            | Message::BindComplete
            | Message::CommandComplete(_)
            | Message::EmptyQueryResponse
            | Message::NoticeResponse(_)
            | Message::ParameterStatus(_) => {}
            Message::DataRow(body) => {
                let columns = body
                    .ranges()
                    .collect()
                    .map_err(|e| format!("bad DataRow: {e}"))?;
                front.rows.push(WireRow {
                    buffer: body.buffer_bytes().clone(),
                    columns,
                });
            }
            Message::ErrorResponse(body) => {
                let (code, message, constraint) = error_fields(&body)?;
                let code = SqlState::from_code(&code);
                if front.error.is_none() {
                    front.error = Some(DbError::from_server(
                        &code,
                        &message,
                        constraint.as_deref(),
                        &self.node,
                    ));
                }
                // The server's fatal errors end the session: fail the rest with it.
                if matches!(code, SqlState::ADMIN_SHUTDOWN | SqlState::CRASH_SHUTDOWN) {
                    let front = self.pending.pop_front().expect("a front");
                    done.push((front.token, Err(front.error.expect("set"))));
                    return Err(message);
                }
            }
            Message::ReadyForQuery(_) => {
                let front = self.pending.pop_front().expect("a front");
                if let (Some(_), Some(name)) = (&front.error, front.parsed) {
                    // Its Parse may be what failed: the next use parses again.
                    self.prepared.remove(name);
                }
                let rows = match front.error {
                    Some(e) => Err(e),
                    None => Ok(front.rows),
                };
                done.push((front.token, rows));
            }
            _ => return Err("an unexpected message".into()),
        }
        Ok(())
    }

    fn authenticate(
        &mut self,
        message: Message,
        scram: Option<Box<ScramSha256>>,
    ) -> Result<(), String> {
        let mut scram = scram;
        let password = || {
            self.password
                .as_deref()
                .ok_or_else(|| "the server asks for a password and the URL has none".to_string())
        };
        let io = |e: std::io::Error| e.to_string();
        match message {
            Message::AuthenticationOk
            | Message::BackendKeyData(_)
            | Message::ParameterStatus(_)
            | Message::NoticeResponse(_) => {}
            Message::AuthenticationCleartextPassword => {
                frontend::password_message(password()?, &mut self.out).map_err(io)?
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = md5_hash(self.user.as_bytes(), password()?, body.salt());
                frontend::password_message(hash.as_bytes(), &mut self.out).map_err(io)?
            }
            Message::AuthenticationSasl(body) => {
                let mut mechanisms = body.mechanisms();
                let mut scram_offered = false;
                while let Some(mechanism) = mechanisms.next().map_err(io)? {
                    scram_offered |= mechanism == SCRAM_SHA_256;
                }
                if !scram_offered {
                    return Err("the server offers no SCRAM-SHA-256".into());
                }
                let state = ScramSha256::new(password()?, ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, state.message(), &mut self.out)
                    .map_err(io)?;
                scram = Some(Box::new(state));
            }
            Message::AuthenticationSaslContinue(body) => {
                let state = scram.as_mut().ok_or("SASL continue before its start")?;
                state.update(body.data()).map_err(io)?;
                frontend::sasl_response(state.message(), &mut self.out).map_err(io)?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let state = scram.as_mut().ok_or("SASL final before its start")?;
                state.finish(body.data()).map_err(io)?;
            }
            _ => return Err("an authentication method this driver does not speak".into()),
        }
        self.phase = Phase::Authenticating(scram);
        Ok(())
    }
}

fn unavailable(node: &str, reason: String) -> DbError {
    DbError::Unavailable {
        node: node.to_string(),
        reason,
    }
}

/// The SQLSTATE, message and constraint of an `ErrorResponse`.
fn error_fields(body: &ErrorResponseBody) -> Result<(String, String, Option<String>), String> {
    let (mut code, mut message, mut constraint) = (String::new(), String::new(), None);
    let mut fields = body.fields();
    while let Some(field) = fields
        .next()
        .map_err(|e| format!("bad ErrorResponse: {e}"))?
    {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'C' => code = value,
            b'M' => message = value,
            b'n' => constraint = Some(value),
            _ => {}
        }
    }
    Ok((code, message, constraint))
}

/// A request's messages: `Parse` when `parse`, then `Bind` (parameters and results binary),
/// `Execute` and `Sync`.
fn encode(
    statement: &Statement,
    parse: bool,
    params: &[Param],
    buf: &mut BytesMut,
) -> Result<(), String> {
    let start = buf.len();
    let encoded = (|| {
        if parse {
            frontend::parse(
                statement.name,
                statement.sql,
                statement.param_types.iter().copied(),
                buf,
            )
            .map_err(|e| e.to_string())?;
        }
        frontend::bind(
            "",
            statement.name,
            Some(1),
            params.iter(),
            |param, buf| {
                match param {
                    Param::Int8(v) => types::int8_to_sql(*v, buf),
                    Param::Int8Array(values) => {
                        let dimension = types::ArrayDimension {
                            len: i32::try_from(values.len())?,
                            lower_bound: 1,
                        };
                        types::array_to_sql(
                            [dimension],
                            INT8,
                            values.iter(),
                            |v, buf| {
                                types::int8_to_sql(*v, buf);
                                Ok(IsNull::No)
                            },
                            buf,
                        )?
                    }
                }
                Ok(IsNull::No)
            },
            Some(1),
            buf,
        )
        .map_err(|e| match e {
            frontend::BindError::Conversion(e) => e.to_string(),
            frontend::BindError::Serialization(e) => e.to_string(),
        })?;
        frontend::execute("", 0, buf).map_err(|e| e.to_string())?;
        frontend::sync(buf);
        Ok(())
    })();
    if encoded.is_err() {
        buf.truncate(start);
    }
    encoded
}

#[cfg(test)]
mod tests;
