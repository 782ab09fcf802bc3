//! Database errors, cheap to move between threads. The app maps each to one HTTP answer.

use postgres::error::SqlState;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbError {
    /// No `DATABASE_URL`: the server runs without a database.
    #[error("no database is configured (set DATABASE_URL)")]
    NotConfigured,
    /// The node refused, dropped or cannot be reached, or is shut out (ejected, breaker open).
    #[error("database node {node} is unavailable: {reason}")]
    Unavailable { node: String, reason: String },
    /// The node's pool and its queue are full.
    #[error("database node {node} is busy: its pool and queue are full")]
    Busy { node: String },
    /// The primary reports it is in recovery (a standby): it takes no writes.
    #[error("database node {node} is in recovery and takes no writes")]
    ReadOnly { node: String },
    /// The statement ran past the statement timeout.
    #[error("a statement on database node {node} ran past the statement timeout")]
    Timeout { node: String },
    /// A unique constraint (named, when the server says which) refused the row.
    #[error("conflict on {}", .constraint.as_deref().unwrap_or("a unique constraint"))]
    Conflict { constraint: Option<String> },
    /// A replica had not replayed the requested position in time (the read then goes to the
    /// primary; never reaches a client).
    #[error("replica {node} has not replayed the requested position")]
    NotCaughtUp { node: String },
    /// A read presented a commit position past the primary's current WAL position: no write
    /// returned it, so no replica will ever replay it.
    #[error("the requested position is ahead of the primary's WAL position")]
    PositionAhead,
    /// No node is known to take writes: the primary is down, shut out, or being looked for
    /// again after a failover. Answered at once, without waiting on the network.
    #[error("no primary database is known: {reason}")]
    NoPrimary { reason: String },
    /// The connection dropped while the write's COMMIT was on its way or its answer was: the
    /// transaction may or may not have committed. Money requests resolve it by repeating the
    /// request with the same Idempotency-Key.
    #[error("database node {node} dropped the connection during COMMIT: the outcome is unknown")]
    OutcomeUnknown { node: String },
    /// The statement lost a lock conflict (a deadlock, a serialization failure) and was rolled
    /// back: the same request may well pass when retried.
    #[error("a statement on database node {node} lost a lock conflict and was rolled back")]
    Contention { node: String },
    /// Anything else the database refused.
    #[error("database error: {0}")]
    Query(String),
}

/// A driver error with what it wraps: the server's message (`db error` alone says nothing),
/// or the I/O error under `error connecting to server`.
pub(crate) fn reason(error: &postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    match std::error::Error::source(error) {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    }
}

impl DbError {
    /// Classifies a driver error on `node`.
    pub fn from_pg(error: &postgres::Error, node: &str) -> DbError {
        let Some(db) = error.as_db_error() else {
            // No SQLSTATE: I/O, a closed connection, a protocol error.
            return DbError::Unavailable {
                node: node.to_string(),
                reason: reason(error),
            };
        };
        DbError::from_server(db.code(), db.message(), db.constraint(), node)
    }

    /// Classifies an error the server sent (its SQLSTATE, message and constraint) on `node`:
    /// the one mapping for the `postgres` client and the wire driver ([`super::wire`]).
    pub fn from_server(
        code: &SqlState,
        message: &str,
        constraint: Option<&str>,
        node: &str,
    ) -> DbError {
        match *code {
            SqlState::UNIQUE_VIOLATION => DbError::Conflict {
                constraint: constraint.map(str::to_string),
            },
            SqlState::QUERY_CANCELED => DbError::Timeout {
                node: node.to_string(),
            },
            SqlState::T_R_DEADLOCK_DETECTED | SqlState::T_R_SERIALIZATION_FAILURE => {
                DbError::Contention {
                    node: node.to_string(),
                }
            }
            SqlState::READ_ONLY_SQL_TRANSACTION => DbError::ReadOnly {
                node: node.to_string(),
            },
            SqlState::ADMIN_SHUTDOWN
            | SqlState::CRASH_SHUTDOWN
            | SqlState::CANNOT_CONNECT_NOW
            | SqlState::TOO_MANY_CONNECTIONS => DbError::Unavailable {
                node: node.to_string(),
                reason: format!("{message} ({})", code.code()),
            },
            _ => DbError::Query(message.to_string()),
        }
    }

    /// True when the node itself failed (it counts towards its breaker), not the request.
    pub fn is_node_failure(&self) -> bool {
        matches!(
            self,
            DbError::Unavailable { .. } | DbError::Timeout { .. } | DbError::OutcomeUnknown { .. }
        )
    }

    /// True when the node's connections are to be dropped and its server found again: the
    /// connection was lost, or the node turned out to be read-only (SQLSTATE 25006).
    pub fn lost_the_node(&self) -> bool {
        matches!(
            self,
            DbError::Unavailable { .. } | DbError::OutcomeUnknown { .. } | DbError::ReadOnly { .. }
        )
    }
}
