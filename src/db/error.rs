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
    /// Anything else the database refused.
    #[error("database error: {0}")]
    Query(String),
}

impl DbError {
    /// Classifies a driver error on `node`.
    pub fn from_pg(error: &postgres::Error, node: &str) -> DbError {
        let unavailable = || DbError::Unavailable {
            node: node.to_string(),
            reason: error.to_string(),
        };
        let Some(db) = error.as_db_error() else {
            // No SQLSTATE: I/O, a closed connection, a protocol error.
            return unavailable();
        };
        match *db.code() {
            SqlState::UNIQUE_VIOLATION => DbError::Conflict {
                constraint: db.constraint().map(str::to_string),
            },
            SqlState::QUERY_CANCELED => DbError::Timeout {
                node: node.to_string(),
            },
            SqlState::READ_ONLY_SQL_TRANSACTION => DbError::ReadOnly {
                node: node.to_string(),
            },
            SqlState::ADMIN_SHUTDOWN
            | SqlState::CRASH_SHUTDOWN
            | SqlState::CANNOT_CONNECT_NOW
            | SqlState::TOO_MANY_CONNECTIONS => unavailable(),
            _ => DbError::Query(db.message().to_string()),
        }
    }

    /// True when the node itself failed (it counts towards its breaker), not the request.
    pub fn is_node_failure(&self) -> bool {
        matches!(self, DbError::Unavailable { .. } | DbError::Timeout { .. })
    }
}
