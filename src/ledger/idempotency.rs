//! Idempotent money requests: the first outcome of each (caller, `Idempotency-Key`) is stored
//! with its effect, in the same write (one savepoint of a group commit), and a repeat gets it
//! back byte for byte.
//!
//! Inside the write: `pg_try_advisory_xact_lock` on the (caller, key) pair; taken by another
//! transaction means the same key is in flight there ([`Outcome::InFlight`], 409). Else the
//! stored record: same fingerprint (SHA-256 of method, path and body) replays it; another
//! fingerprint is [`Outcome::Reused`] (422); none applies the effect and stores its outcome,
//! final 4xx answers included. Two repeats in one group commit share the transaction (the lock
//! is the session's): the second finds the first's record, as the savepoint before it was
//! released. Records live [`KEPT_HOURS`] hours; [`purge`] removes older ones.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::db::{DbConn, DbError};
use crate::queue::sweeps::Sweep;

/// The request header that names a money request.
pub const HEADER: &str = "Idempotency-Key";
/// The response header on a replayed outcome.
pub const REPLAYED_HEADER: &str = "Idempotency-Replayed";
/// How long an outcome is kept and replayed.
pub const KEPT_HOURS: i64 = 24;

/// Why an `Idempotency-Key` header is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    Missing,
    Malformed,
}

/// Checks an `Idempotency-Key` value: 1 to 255 visible ASCII characters.
pub fn parse_key(value: Option<&[u8]>) -> Result<String, KeyError> {
    let value = value.ok_or(KeyError::Missing)?;
    if value.is_empty() || value.len() > 255 || !value.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(KeyError::Malformed);
    }
    String::from_utf8(value.to_vec()).map_err(|_| KeyError::Malformed)
}

/// SHA-256 over the method, the path and the body, each framed by its length (so no two
/// requests share a fingerprint by moving bytes between the parts).
pub fn fingerprint(method: &str, path: &str, body: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in [method.as_bytes(), path.as_bytes(), body] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

/// A request's answer as stored: status and JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(status: u16, body: &serde_json::Value) -> Answer {
        Answer {
            status,
            body: body.to_string().into_bytes(),
        }
    }
}

/// What an idempotent write came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The effect ran now; this is its answer (stored).
    Fresh(Answer),
    /// The stored answer of an earlier request with this key and fingerprint.
    Replayed(Answer),
    /// The same key is being applied by another transaction right now.
    InFlight,
    /// The key was used for another request (another fingerprint).
    Reused,
}

/// A request's identity for idempotency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyed {
    pub user_id: i64,
    pub key: String,
    pub fingerprint: [u8; 32],
}

const LOCK: &str = "SELECT pg_try_advisory_xact_lock(hashtextextended($2, $1))";
const LOOK: &str = "SELECT fingerprint, status, body FROM idempotency_keys \
     WHERE user_id = $1 AND key = $2 AND created_at > now() - $3::bigint * interval '1 hour'";
/// A record past its time, not purged yet, is replaced.
const STORE: &str = "INSERT INTO idempotency_keys (user_id, key, fingerprint, status, body) \
     VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (user_id, key) DO UPDATE \
     SET fingerprint = EXCLUDED.fingerprint, status = EXCLUDED.status, body = EXCLUDED.body, \
         created_at = now() \
     WHERE idempotency_keys.created_at <= now() - $6::bigint * interval '1 hour' \
     RETURNING 1";

/// Runs `effect` once per (user, key): see the module's note. Call it inside a `db().write`
/// closure; `effect` makes its changes on `conn` and answers (a 4xx it answers is stored too).
/// An error from `effect` stores nothing and fails the write (its savepoint rolls back).
pub fn run<F>(conn: &mut DbConn, keyed: &Keyed, effect: F) -> Result<Outcome, DbError>
where
    F: FnOnce(&mut DbConn) -> Result<Answer, DbError>,
{
    let locked: bool = conn.query_one(LOCK, &[&keyed.user_id, &keyed.key])?.get(0);
    if !locked {
        return Ok(Outcome::InFlight);
    }
    if let Some(row) = conn.query_opt(LOOK, &[&keyed.user_id, &keyed.key, &KEPT_HOURS])? {
        let stored: &[u8] = row.get(0);
        if stored != keyed.fingerprint {
            return Ok(Outcome::Reused);
        }
        let status: i32 = row.get(1);
        return Ok(Outcome::Replayed(Answer {
            status: u16::try_from(status).unwrap_or(500),
            body: row.get(2),
        }));
    }
    let answer = effect(conn)?;
    let stored = conn.query(
        STORE,
        &[
            &keyed.user_id,
            &keyed.key,
            &&keyed.fingerprint[..],
            &i32::from(answer.status),
            &answer.body,
            &KEPT_HOURS,
        ],
    )?;
    if stored.is_empty() {
        // A live record appeared after the look: only another transaction holding the lock
        // could write it, and the lock was ours. Refuse rather than answer twice.
        return Err(DbError::Query(
            "an idempotency record appeared under its lock".into(),
        ));
    }
    Ok(Outcome::Fresh(answer))
}

/// Deletes the records older than [`KEPT_HOURS`], at most `batch` of them; returns how many.
pub fn purge(conn: &mut DbConn, batch: i64) -> Result<u64, DbError> {
    let rows = conn.query(
        "WITH old AS (SELECT user_id, key FROM idempotency_keys \
                      WHERE created_at <= now() - $1::bigint * interval '1 hour' \
                      ORDER BY created_at LIMIT $2) \
         DELETE FROM idempotency_keys k USING old \
         WHERE k.user_id = old.user_id AND k.key = old.key RETURNING 1",
        &[&KEPT_HOURS, &batch],
    )?;
    Ok(rows.len() as u64)
}

/// Records one purge deletes at most per statement.
const PURGE_BATCH: i64 = 5_000;

/// The purge of records older than [`KEPT_HOURS`], in batches every `every` (one shard per
/// process runs it; several processes purging at once only share the work).
pub fn purge_sweep(every: Duration) -> Sweep {
    Sweep {
        name: "idempotency purge",
        counted: "old record(s) purged",
        level: log::Level::Debug,
        every,
        batch_size: PURGE_BATCH,
        batch: Arc::new(purge),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let long = "k".repeat(255);
        let too_long = "k".repeat(256);
        type Case<'a> = (Option<&'a [u8]>, Result<&'a str, KeyError>);
        let cases: [Case; 7] = [
            (None, Err(KeyError::Missing)),
            (Some(b""), Err(KeyError::Malformed)),
            (Some(b"a b"), Err(KeyError::Malformed)),
            (Some(b"caf\xc3\xa9"), Err(KeyError::Malformed)),
            (Some(b"7f3c-9a1e_ok:1"), Ok("7f3c-9a1e_ok:1")),
            (Some(long.as_bytes()), Ok(long.as_str())),
            (Some(too_long.as_bytes()), Err(KeyError::Malformed)),
        ];
        for (value, expected) in cases {
            assert_eq!(
                parse_key(value).as_deref(),
                expected.as_deref(),
                "{value:?}"
            );
        }
    }

    #[test]
    fn fingerprints_frame_their_parts() {
        let a = fingerprint("POST", "/a", b"{}");
        assert_eq!(a, fingerprint("POST", "/a", b"{}"));
        assert_ne!(a, fingerprint("POST", "/a", b"{ }"));
        assert_ne!(a, fingerprint("POST", "/b", b"{}"));
        assert_ne!(
            fingerprint("POST", "/ab", b"c"),
            fingerprint("POST", "/a", b"bc")
        );
    }
}
