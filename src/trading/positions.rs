//! A user's positions: the list (newest first), one, and a manual close.
//!
//! A manual close goes the way a close signal goes: in one transaction, under the position's
//! row lock, a signal of origin `manual_close` (kind `close_long` / `close_short`, the
//! position's symbol, its entry price as the fallback exit), its one order intent (the
//! deterministic client order id `cb{signal}u{user}`) and the position's `close_intent`, which
//! marks it closing. The executor then places the close order as for any close intent, and
//! the close's record charges the commission ([`super::close`]).

use serde_json::{json, Value};

use super::signal::client_order_id;
use crate::db::{DbConn, DbError};

macro_rules! select_positions {
    ($where:literal) => {
        concat!(
            "SELECT p.id, p.symbol, p.side, p.state, p.quantity, p.entry_price, p.stop_loss, \
               p.take_profit, p.exit_price, p.profit, p.close_intent, i.state, \
               to_char(p.opened_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
               to_char(p.closed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
               p.commission_due, c.commission, c.currency, p.closed_by \
             FROM trading_positions p \
             LEFT JOIN order_intents i ON i.id = p.close_intent \
             LEFT JOIN commission_charges c ON c.position_id = p.id::text ",
            $where
        )
    };
}

const PAGE: &str = select_positions!(
    "WHERE p.user_id = $1 AND ($2::bigint IS NULL OR p.id < $2) ORDER BY p.id DESC LIMIT $3"
);
const ONE: &str = select_positions!("WHERE p.id = $1 AND p.user_id = $2");

fn position_json(row: &postgres::Row) -> Value {
    let commission = row
        .get::<_, Option<i64>>(15)
        .map(|amount| json!({ "amount": amount, "currency": row.get::<_, String>(16) }));
    json!({
        "id": row.get::<_, i64>(0),
        "symbol": row.get::<_, String>(1),
        "side": row.get::<_, String>(2),
        "state": row.get::<_, String>(3),
        "quantity": row.get::<_, Option<i64>>(4),
        "entry_price": row.get::<_, Option<i64>>(5),
        "stop_loss": row.get::<_, i64>(6),
        "take_profit": row.get::<_, i64>(7),
        "exit_price": row.get::<_, Option<i64>>(8),
        "profit": row.get::<_, Option<i64>>(9),
        "close_intent": row.get::<_, Option<i64>>(10).map(|id| json!({
            "id": id,
            "state": row.get::<_, Option<String>>(11),
        })),
        "opened_at": row.get::<_, String>(12),
        "closed_at": row.get::<_, Option<String>>(13),
        "closed_by": row.get::<_, Option<String>>(17),
        "commission_due": row.get::<_, bool>(14),
        "commission": commission,
    })
}

/// The user's positions, newest first: `limit` of them with ids below `cursor` (exclusive).
pub fn page(
    conn: &mut DbConn,
    user_id: i64,
    cursor: Option<i64>,
    limit: i64,
) -> Result<Vec<(i64, Value)>, DbError> {
    let rows = conn.query(PAGE, &[&user_id, &cursor, &limit])?;
    Ok(rows.iter().map(|r| (r.get(0), position_json(r))).collect())
}

/// The user's position `id`; `None`: missing or another user's.
pub fn one(conn: &mut DbConn, user_id: i64, id: i64) -> Result<Option<Value>, DbError> {
    Ok(conn
        .query_opt(ONE, &[&id, &user_id])?
        .map(|r| position_json(&r)))
}

/// What a manual close came to.
#[derive(Debug, Clone, PartialEq)]
pub enum CloseRequest {
    /// The close intent written: its JSON.
    Taken(Value),
    /// Missing or another user's.
    NotFound,
    /// Closed, closing, not open yet or failed: the position's state and why.
    Conflict(&'static str, String),
}

/// Writes the close intent of the user's position `id` (see the module's note).
pub fn request_close(conn: &mut DbConn, user_id: i64, id: i64) -> Result<CloseRequest, DbError> {
    let Some(row) = conn.query_opt(
        "SELECT state, close_intent, symbol, side, entry_price FROM trading_positions \
         WHERE id = $1 AND user_id = $2 FOR UPDATE",
        &[&id, &user_id],
    )?
    else {
        return Ok(CloseRequest::NotFound);
    };
    let state: String = row.get(0);
    let close_intent: Option<i64> = row.get(1);
    match (state.as_str(), close_intent) {
        ("open", None) => {}
        ("open", Some(intent)) => {
            return Ok(CloseRequest::Conflict(
                "position_closing",
                format!("the position is being closed (intent {intent})"),
            ))
        }
        ("closed", _) => {
            return Ok(CloseRequest::Conflict(
                "position_closed",
                "the position is closed".into(),
            ))
        }
        (other, _) => {
            return Ok(CloseRequest::Conflict(
                "position_not_open",
                format!("the position is {other}"),
            ))
        }
    }
    let (symbol, side): (String, String) = (row.get(2), row.get(3));
    let entry: Option<i64> = row.get(4);
    let kind = if side == "long" {
        "close_long"
    } else {
        "close_short"
    };
    // One signal a close request: its fingerprint is the position and this transaction.
    let signal = conn.query_one(
        "INSERT INTO trading_signals (fingerprint, kind, symbol, price, alert_at, intents, origin) \
         VALUES (sha256(convert_to('manual-close:' || $1::bigint || ':' || txid_current(), 'UTF8')), \
           $2, $3, $4, now(), 1, 'manual_close') RETURNING id",
        &[&id, &kind, &symbol, &entry.unwrap_or(1)],
    )?;
    let signal_id: i64 = signal.get(0);
    let intent = conn.query_one(
        "INSERT INTO order_intents (signal_id, user_id, client_order_id) VALUES ($1, $2, $3) \
         RETURNING id, client_order_id, state",
        &[&signal_id, &user_id, &client_order_id(signal_id, user_id)],
    )?;
    let intent_id: i64 = intent.get(0);
    conn.query(
        "UPDATE trading_positions SET close_intent = $2 WHERE id = $1",
        &[&id, &intent_id],
    )?;
    Ok(CloseRequest::Taken(json!({
        "id": intent_id,
        "signal_id": signal_id,
        "position_id": id,
        "client_order_id": intent.get::<_, String>(1),
        "state": intent.get::<_, String>(2),
    })))
}
