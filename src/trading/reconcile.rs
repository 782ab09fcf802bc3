//! Closes the exchange made by itself: a stop-loss or take-profit that fired.
//!
//! An open position carries its stop-loss and take-profit on the exchange, where they fire
//! without the platform placing anything. Every `TRADING_RECONCILE_INTERVAL` each shard takes
//! a batch of open positions no close order is working on and that were not asked about
//! within the interval (`FOR UPDATE SKIP LOCKED`, stamped `checked_at`: shards and server
//! processes share them, each asked about about once an interval), asks each of their users'
//! exchange accounts for its positions (one call a user, on the I/O pool), and for a position
//! the exchange no longer holds asks for its stop-loss and take-profit by client order id
//! (the entry's, with `-sl` / `-tp`). The one filled closes the position at its fill, and the
//! commission is charged as for any close ([`close::close_open`], in the same transaction:
//! exactly once, whoever closes it). A position gone with neither filled (closed by hand on
//! the exchange, liquidated) is closed without an exit price, so without a commission, and
//! logged. Any error leaves the position open for the next sweep.

use std::collections::HashMap;
use std::rc::Rc;

use crate::db::{DbConn, DbError};
use crate::exchange::{Credentials, ExchangeClient, ExchangeResult};
use crate::queue::{Priority, ShardQueues};

use super::accounts::SealedKey;
use super::close::{self, ClosedBy};
use super::execute::KEYS;
use super::{Figures, TaskContext};

/// An open position as the sweep asks about it.
#[derive(Debug, Clone)]
struct Open {
    position_id: i64,
    symbol: String,
    long: bool,
    /// The entry order's client order id: its protection's are this with `-sl` / `-tp`.
    entry_client_order_id: String,
}

/// What the exchange says of an open position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// Still held: nothing to do.
    Held,
    /// Gone: closed by what, at what fill (cents; `None`: no protection filled).
    Gone(ClosedBy, Option<i64>),
}

/// One user's key and open positions to ask about.
type UserWork = (SealedKey, Vec<Open>);

const CLAIM: &str = "WITH due AS ( \
       SELECT id FROM trading_positions \
       WHERE state = 'open' AND close_intent IS NULL \
         AND (checked_at IS NULL OR checked_at <= now() - $2::bigint * interval '1 millisecond') \
       ORDER BY checked_at NULLS FIRST, id LIMIT $1 FOR UPDATE SKIP LOCKED) \
     UPDATE trading_positions p SET checked_at = now() \
     FROM due, order_intents i \
     WHERE p.id = due.id AND i.id = p.intent_id \
     RETURNING p.id, p.user_id, p.symbol, p.side, i.client_order_id";

/// Takes a batch of positions due for a look, with their users' live keys.
fn claim(conn: &mut DbConn, figures: &Figures) -> Result<(usize, Vec<UserWork>), DbError> {
    let every = figures.reconcile_interval.as_millis() as i64;
    let rows = conn.query(CLAIM, &[&figures.claim_batch, &every])?;
    let claimed = rows.len();
    let mut by_user: HashMap<i64, Vec<Open>> = HashMap::new();
    for row in rows {
        by_user.entry(row.get(1)).or_default().push(Open {
            position_id: row.get(0),
            symbol: row.get(2),
            long: row.get::<_, String>(3) == "long",
            entry_client_order_id: row.get(4),
        });
    }
    if by_user.is_empty() {
        return Ok((claimed, Vec::new()));
    }
    let users: Vec<i64> = by_user.keys().copied().collect();
    let mut work = Vec::new();
    for row in conn.query(KEYS, &[&users])? {
        let user_id: i64 = row.get(0);
        if let Some(open) = by_user.remove(&user_id) {
            let key = SealedKey::from_parts(row.get(1), row.get(2), row.get(3), row.get(4));
            work.push((key, open));
        }
    }
    // A user whose account was removed: their positions wait for a key (asked again later).
    Ok((claimed, work))
}

/// What the exchange says of each of one user's `open` positions, on an I/O thread.
fn ask(
    client: &dyn ExchangeClient,
    credentials: &Credentials,
    open: &[Open],
) -> ExchangeResult<Vec<(i64, Found)>> {
    let held = client.positions(credentials)?;
    let mut found = Vec::with_capacity(open.len());
    for position in open {
        let still_held = held.iter().any(|p| {
            p.symbol == position.symbol
                && if position.long {
                    p.amount > 0
                } else {
                    p.amount < 0
                }
        });
        if still_held {
            found.push((position.position_id, Found::Held));
            continue;
        }
        let mut gone = Found::Gone(ClosedBy::Exchange, None);
        for (suffix, by) in [("-sl", ClosedBy::StopLoss), ("-tp", ClosedBy::TakeProfit)] {
            let id = format!("{}{suffix}", position.entry_client_order_id);
            let order = client.order_by_client_id(credentials, &position.symbol, &id)?;
            if let Some(order) = order.filter(|o| o.executed_quantity > 0 && o.average_price > 0) {
                gone = Found::Gone(by, Some(order.average_price));
                break;
            }
        }
        found.push((position.position_id, gone));
    }
    Ok(found)
}

/// Asks about one user's positions and records those the exchange closed.
async fn sweep_user((key, open): UserWork, context: TaskContext) {
    let TaskContext {
        shared,
        secrets,
        database,
    } = context;
    let Some(credentials) = secrets.as_ref().and_then(|s| key.open(s)) else {
        log::warn!("trading: an exchange secret does not open with this server's SECRETS_KEY");
        return;
    };
    let worker = shared.clone();
    let asked = match shared
        .pool
        .run(move || ask(worker.client.as_ref(), &credentials, &open))
    {
        Ok(answer) => answer.await,
        // Asked again at the next sweep.
        Err(_full) => return,
    };
    let gone: Vec<(i64, ClosedBy, Option<i64>)> = match asked {
        Some(Ok(found)) => found
            .into_iter()
            .filter_map(|(id, found)| match found {
                Found::Gone(by, exit) => Some((id, by, exit)),
                Found::Held => None,
            })
            .collect(),
        Some(Err(e)) => {
            log::debug!("trading: asking an exchange account for its positions failed: {e}");
            return;
        }
        None => return,
    };
    if gone.is_empty() {
        return;
    }
    let recorded = database
        .client()
        .write(move |conn| {
            for (position_id, by, exit) in &gone {
                close::close_open(conn, *position_id, *exit, *by)?;
            }
            Ok(())
        })
        .await;
    if let Err(e) = recorded {
        log::warn!("trading: recording a close the exchange made failed: {e}");
    }
}

/// Starts the shard's sweep: every `TRADING_RECONCILE_INTERVAL` (at once while claims come
/// back full), a batch of open positions, each user's on its own task.
pub fn start(queues: &Rc<ShardQueues>, context: TaskContext) {
    let every = context.shared.figures.reconcile_interval;
    super::claim_loop(queues, context, Priority::Medium, every, claim, sweep_user);
}
