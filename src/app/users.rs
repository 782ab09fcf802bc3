//! The users API: `GET /api/users/{id}` (a read, on a replica), and the database answers the
//! user routes share. A user is read by that user (a session, or an API key with `read`) or by
//! staff (a staff session, the operator token); anyone else gets the 404 of an id that does
//! not exist, so ids do not tell who has an account. `POST /api/users` is registration ([`super::accounts::register`]): one
//! code path for both of its paths.
//!
//! Read-your-writes: a created user's response carries `X-Commit-LSN`, the WAL position its
//! commit reached; a read that sends it back (as `X-Min-LSN`) is answered only by a replica
//! that has replayed it, or else by the primary.

use serde_json::json;

use crate::db::wire::{KeyedStatements, Statement, INT8, INT8_ARRAY};
use crate::db::{DbClient, DbError, Lookup, Lsn, Row, WireLookup, WireRow};
use crate::http::{quote_input, Reply, Request, Response, StatusCode};

use super::access::Reader;

/// Response header with a write's commit position.
pub const COMMIT_LSN_HEADER: &str = "X-Commit-LSN";
/// Request header with the position a read must see.
pub const MIN_LSN_HEADER: &str = "X-Min-LSN";

/// The commit position a read must see (`X-Min-LSN`), or the 400 `bad_lsn` for a malformed one.
pub(super) fn min_position(request: &Request<'_>) -> Result<Option<Lsn>, Response> {
    match request.header(MIN_LSN_HEADER) {
        None => Ok(None),
        Some(value) => match std::str::from_utf8(value).ok().map(str::parse::<Lsn>) {
            Some(Ok(lsn)) => Ok(Some(lsn)),
            _ => Err(Response::error(
                StatusCode::BAD_REQUEST,
                "bad_lsn",
                &format!("{MIN_LSN_HEADER} must be a WAL position as {COMMIT_LSN_HEADER} gives it, e.g. 0/16B3748"),
            )),
        },
    }
}

/// A user by id: alone, and for a batch of reads queued together.
static SELECT_USER: Lookup = Lookup {
    one: "SELECT id, name, email, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
          FROM users WHERE id = $1",
    many: "SELECT id, name, email, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
           FROM users WHERE id = ANY($1)",
};
/// [`SELECT_USER`]'s statements for the shard's own connections (`DB_READ_DRIVER=wire`).
static WIRE_SELECT_USER: WireLookup<User> = WireLookup {
    statements: KeyedStatements {
        one: Statement {
            name: "coinbit_select_user",
            sql: SELECT_USER.one,
            param_types: &[INT8],
        },
        many: Statement {
            name: "coinbit_select_users",
            sql: SELECT_USER.many,
            param_types: &[INT8_ARRAY],
        },
    },
    map: User::from_wire,
};

#[derive(Debug, Clone, serde::Serialize)]
struct User {
    id: i64,
    name: String,
    email: String,
    created_at: String,
}

impl User {
    fn from_row(row: &Row) -> User {
        User {
            id: row.get(0),
            name: row.get(1),
            email: row.get(2),
            created_at: row.get(3),
        }
    }

    fn from_wire(row: &WireRow) -> Result<User, DbError> {
        Ok(User {
            id: row.int8(0)?,
            name: row.text(1)?.to_string(),
            email: row.text(2)?.to_string(),
            created_at: row.text(3)?.to_string(),
        })
    }
}

/// Checks a user's name and email (as they will be trimmed); the message says what to fix.
pub(super) fn check_name_and_email(name: &str, email: &str) -> Result<(), &'static str> {
    let name = name.trim();
    // PostgreSQL's text has no NUL character.
    if name.contains('\0') {
        return Err("name must not contain the NUL character");
    }
    if email.contains('\0') {
        return Err("email must not contain the NUL character");
    }
    if name.is_empty() || name.chars().count() > 100 {
        return Err("name must be 1 to 100 characters");
    }
    let email = email.trim();
    let well_formed = email
        .split_once('@')
        .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'));
    if !well_formed || email.len() > 254 || email.chars().any(char::is_whitespace) {
        return Err("email must look like name@example.com (at most 254 characters)");
    }
    Ok(())
}

/// The answer to a user that does not exist, or that the caller may not read: the same bytes.
fn user_not_found(id: i64) -> Response {
    Response::error(
        StatusCode::NOT_FOUND,
        "user_not_found",
        &format!("no user with id {id}"),
    )
}

/// `GET /api/users/{id}`: 200 with the user; 404 when there is none, or when `reader` may not
/// read it (answered without a query: a caller's own user always exists).
pub fn get(db: Option<&mut DbClient>, reader: Reader, request: &Request<'_>) -> Reply {
    let Some(db) = db else {
        return not_configured();
    };
    let id = request.path.rsplit('/').next().unwrap_or_default();
    let Some(id) = id.parse::<i64>().ok().filter(|id| *id > 0) else {
        return Response::error(
            StatusCode::BAD_REQUEST,
            "bad_id",
            &format!(
                "user id must be a positive whole number, got {}",
                quote_input(id)
            ),
        )
        .into();
    };
    let min_position = match min_position(request) {
        Ok(min) => min,
        Err(response) => return response.into(),
    };
    if !reader.may_read(id) {
        return user_not_found(id).into();
    }
    let pending = db.lookup_wire(
        min_position,
        &SELECT_USER,
        id,
        User::from_row,
        &WIRE_SELECT_USER,
    );
    Reply::Later(Box::pin(async move {
        match pending.await {
            Ok(Some(user)) => Response::json(StatusCode::OK, json!(user).to_string()),
            Ok(None) => user_not_found(id),
            Err(e) => db_error(&e),
        }
    }))
}

fn not_configured() -> Reply {
    db_error(&DbError::NotConfigured).into()
}

/// The one mapping from a database error to an answer. Node details go to the log, not to
/// the client.
pub fn db_error(error: &DbError) -> Response {
    let (status, code, message) = match error {
        DbError::NotConfigured => (
            StatusCode::SERVICE_UNAVAILABLE,
            "database_not_configured",
            "this server runs without a database (DATABASE_URL is unset)",
        ),
        DbError::Unavailable { .. } | DbError::NotCaughtUp { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "the database is unavailable; retry later",
        ),
        DbError::Busy { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "database_busy",
            "the database pool is full; retry later",
        ),
        DbError::ReadOnly { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "database_read_only",
            "the primary database is in recovery and takes no writes; retry later",
        ),
        DbError::Timeout { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "database_timeout",
            "the database did not answer in time; retry later",
        ),
        DbError::NoPrimary { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no_primary",
            "no primary database takes writes right now (a failover may be under way); retry later",
        ),
        DbError::OutcomeUnknown { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "outcome_unknown",
            "the database connection dropped during the commit: the change may or may not have been made; repeat the request with the same Idempotency-Key to learn which, or check before repeating",
        ),
        DbError::Contention { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "database_contention",
            "the write met a conflicting one and was rolled back; retry (a money request with the same Idempotency-Key)",
        ),
        DbError::PositionAhead => (
            StatusCode::BAD_REQUEST,
            "lsn_ahead",
            "X-Min-LSN is ahead of the database's WAL position: send the X-Commit-LSN a write returned",
        ),
        DbError::Conflict { .. } => (
            StatusCode(409),
            "conflict",
            "the change conflicts with existing data",
        ),
        DbError::Query(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "database_error",
            "the database refused the request",
        ),
    };
    // No primary: the node's state change is logged once, not every write it refuses.
    if status.is_server_error()
        && !matches!(error, DbError::NotConfigured | DbError::NoPrimary { .. })
    {
        log::warn!("{error}");
    }
    let response = Response::error(status, code, message);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.with_header("Retry-After", "1")
    } else {
        response
    }
}

/// The answer to a user row's failed insert: a taken email is the client's 409, anything else
/// the database's error.
pub(super) fn write_failed(error: &DbError) -> Response {
    match error {
        DbError::Conflict { constraint } if constraint.as_deref() == Some("users_email_key") => {
            Response::error(
                StatusCode(409),
                "email_taken",
                "a user with this email already exists",
            )
        }
        other => db_error(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        for (name, email, ok) in [
            ("Ana", "ana@example.com", true),
            ("", "ana@example.com", false),
            (&"x".repeat(101), "ana@example.com", false),
            ("Ana", "ana", false),
            ("Ana", "@example.com", false),
            ("Ana", "ana@localhost", false),
            ("Ana", "a na@example.com", false),
        ] {
            assert_eq!(
                check_name_and_email(name, email).is_ok(),
                ok,
                "{name:?} {email:?}"
            );
        }
    }

    #[test]
    fn every_database_error_has_one_answer() {
        let node = || "replica1".to_string();
        for (error, status) in [
            (DbError::NotConfigured, 503),
            (
                DbError::Unavailable {
                    node: node(),
                    reason: "ECONNRESET".into(),
                },
                503,
            ),
            (DbError::Busy { node: node() }, 503),
            (DbError::ReadOnly { node: node() }, 503),
            (DbError::Contention { node: node() }, 503),
            (DbError::Timeout { node: node() }, 503),
            (
                DbError::NoPrimary {
                    reason: "replica1 ECONNRESET".into(),
                },
                503,
            ),
            (DbError::OutcomeUnknown { node: node() }, 503),
            (
                DbError::Conflict {
                    constraint: Some("dup".into()),
                },
                409,
            ),
            (DbError::Query("syntax".into()), 500),
        ] {
            let response = db_error(&error);
            assert_eq!(response.status.0, status, "{error:?}");
            let body = String::from_utf8_lossy(&response.body).into_owned();
            assert!(
                !body.contains("replica1") && !body.contains("ECONNRESET"),
                "leaks: {body}"
            );
        }
    }
}
