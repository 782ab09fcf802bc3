//! Each shard's executor of order intents.
//!
//! Every `TRADING_POLL_INTERVAL` a shard claims a batch of due intents (`FOR UPDATE SKIP
//! LOCKED`: shards and server processes share the work, none takes one another holds) and, in
//! the same transaction, settles what needs no exchange: an intent older than
//! `ORDER_INTENT_EXPIRY` that never reached the exchange is expired; an opening one is checked
//! against the user's limits (no debt owed, at most `MAX_OPEN_POSITIONS` open, none on the
//! symbol, the symbol's cooldown after a close) under the user's row lock and holds its place as an
//! `opening` position, so concurrent signals cannot pass the limits together.
//!
//! The exchange calls run on the I/O pool ([`crate::exchange::pool`]), never on the shard; a
//! full pool puts the intent back for a later round. An attempt is marked `maybe_sent` before
//! it starts: the next attempt (after a timeout, a 5xx, a lost answer or a crash) first asks
//! the exchange for the intent's client order id, and places nothing when it is there.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use crate::db::{DbConn, DbError};
use crate::exchange::{Credentials, ExchangeError, Order, OrderRequest, Side};
use crate::queue::{Priority, ShardQueues};

use super::accounts::SealedKey;
use super::close::{self, ClosedBy};
use super::settings::{self, Settings};
use super::signal::Kind;
use super::{Figures, TaskContext, TradingShared};

/// What the exchange part of an intent does.
#[derive(Debug, Clone)]
enum Step {
    Open { stop_loss: i64, take_profit: i64 },
    Close { position_id: i64 },
}

/// A claimed intent that needs the exchange.
#[derive(Debug, Clone)]
struct Job {
    intent_id: i64,
    client_order_id: String,
    /// Whether an earlier attempt may have reached the exchange.
    maybe_sent: bool,
    too_old: bool,
    kind: Kind,
    symbol: String,
    price: i64,
    settings: Settings,
    key: SealedKey,
    step: Step,
}

/// What an attempt came to.
#[derive(Debug)]
enum Came {
    Placed(Order),
    Closed(Order),
    Rejected(String),
    Skipped(String),
    Expired,
    /// It may have reached the exchange: ask first next time.
    Unknown(String),
    /// It reached nothing: try again as before.
    NotSent(String),
}

const CLAIM: &str = "WITH due AS ( \
       SELECT id, maybe_sent FROM order_intents \
       WHERE state IN ('pending', 'placing') AND next_attempt_at <= now() \
       ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED) \
     UPDATE order_intents i SET state = 'placing', attempts = i.attempts + 1, maybe_sent = true, \
       next_attempt_at = now() + $2::bigint * interval '1 millisecond' \
     FROM due, trading_signals s \
     WHERE i.id = due.id AND s.id = i.signal_id \
     RETURNING i.id, i.user_id, i.client_order_id, due.maybe_sent, \
       i.created_at < now() - $3::bigint * interval '1 millisecond', s.kind, s.symbol, s.price";

/// The claimed intents' users' row locks, in id order: each user's checks and reservations
/// run one transaction at a time. `NO KEY UPDATE`, the weakest lock that excludes itself: the
/// key-share locks that every insert referencing a user takes (the fan-out's intents, a
/// position, a ledger row) pass it, where `FOR UPDATE` made a claim and a fan-out to the same
/// users wait for each other.
const LOCK_USERS: &str = "SELECT 1 FROM users WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE";

/// The live exchange keys of users `$1`.
pub(super) const KEYS: &str =
    "SELECT user_id, api_key, secret_ciphertext, secret_nonce, key_version \
     FROM exchange_accounts WHERE user_id = ANY($1) AND deleted_at IS NULL";

fn finish(
    conn: &mut DbConn,
    intent_id: i64,
    state: &str,
    detail: Option<&str>,
) -> Result<(), DbError> {
    conn.query(
        "UPDATE order_intents SET state = $2, detail = $3, done_at = now() WHERE id = $1",
        &[&intent_id, &state, &detail],
    )?;
    conn.query(
        "UPDATE trading_positions SET state = 'failed' WHERE intent_id = $1 AND state = 'opening'",
        &[&intent_id],
    )?;
    // A close that came to nothing leaves its position open to the next close.
    conn.query(
        "UPDATE trading_positions SET close_intent = NULL \
         WHERE close_intent = $1 AND state = 'open'",
        &[&intent_id],
    )?;
    Ok(())
}

/// Claims up to a batch of due intents; settles those that need no exchange; the rest to run.
fn claim(conn: &mut DbConn, figures: &Figures) -> Result<(usize, Vec<Job>), DbError> {
    let lease = figures.claim_lease.as_millis() as i64;
    let expiry = figures.intent_expiry.as_millis() as i64;
    let rows = conn.query(CLAIM, &[&figures.claim_batch, &lease, &expiry])?;
    let claimed = rows.len();
    let mut jobs = Vec::new();
    if rows.is_empty() {
        return Ok((0, jobs));
    }
    // The batch's users at once (a query each, not three an intent): their locks, live keys
    // and settings.
    let mut users: Vec<i64> = rows.iter().map(|row| row.get(1)).collect();
    users.sort_unstable();
    users.dedup();
    conn.query(LOCK_USERS, &[&users])?;
    let keys: HashMap<i64, SealedKey> = conn
        .query(KEYS, &[&users])?
        .into_iter()
        .map(|row| {
            let key = SealedKey::from_parts(row.get(1), row.get(2), row.get(3), row.get(4));
            (row.get(0), key)
        })
        .collect();
    let user_settings = settings::load_many(conn, &users)?;
    for row in rows {
        let intent_id: i64 = row.get(0);
        let user_id: i64 = row.get(1);
        let maybe_sent: bool = row.get(3);
        let too_old: bool = row.get(4);
        let kind_text: String = row.get(5);
        let Some(kind) = Kind::from_db(&kind_text) else {
            finish(conn, intent_id, "skipped", Some("unknown signal kind"))?;
            continue;
        };
        if too_old && !maybe_sent {
            finish(
                conn,
                intent_id,
                "expired",
                Some("not placed within the intent's expiry"),
            )?;
            continue;
        }
        let symbol: String = row.get(6);
        let price: i64 = row.get(7);
        let Some(key) = keys.get(&user_id).cloned() else {
            finish(conn, intent_id, "skipped", Some("no exchange account"))?;
            continue;
        };
        let settings = user_settings.get(&user_id).copied().unwrap_or_default();
        let step = if kind.opens() {
            let held = conn.query_opt(
                "SELECT stop_loss, take_profit FROM trading_positions WHERE intent_id = $1",
                &[&intent_id],
            )?;
            match held {
                Some(p) => Step::Open {
                    stop_loss: p.get(0),
                    take_profit: p.get(1),
                },
                None => match check_limits(conn, user_id, &symbol, figures)? {
                    Some(refusal) => {
                        finish(conn, intent_id, "skipped", Some(refusal))?;
                        continue;
                    }
                    None => {
                        let (stop_loss, take_profit) = settings.protection(kind.long(), price);
                        let side = if kind.long() { "long" } else { "short" };
                        conn.query(
                            "INSERT INTO trading_positions \
                             (user_id, intent_id, symbol, side, stop_loss, take_profit) \
                             VALUES ($1, $2, $3, $4, $5, $6)",
                            &[
                                &user_id,
                                &intent_id,
                                &symbol,
                                &side,
                                &stop_loss,
                                &take_profit,
                            ],
                        )?;
                        Step::Open {
                            stop_loss,
                            take_profit,
                        }
                    }
                },
            }
        } else {
            let side = if kind.long() { "long" } else { "short" };
            let open = conn.query_opt(
                "UPDATE trading_positions SET close_intent = $2 \
                 WHERE id = (SELECT id FROM trading_positions \
                   WHERE user_id = $1 AND symbol = $3 AND side = $4 \
                     AND (state = 'open' AND (close_intent IS NULL OR close_intent = $2)) \
                   LIMIT 1) RETURNING id",
                &[&user_id, &intent_id, &symbol, &side],
            )?;
            match open {
                Some(p) => Step::Close {
                    position_id: p.get(0),
                },
                None => {
                    finish(
                        conn,
                        intent_id,
                        "skipped",
                        Some("no open position on this side"),
                    )?;
                    continue;
                }
            }
        };
        jobs.push(Job {
            intent_id,
            client_order_id: row.get(2),
            maybe_sent,
            too_old,
            kind,
            symbol,
            price,
            settings,
            key,
            step,
        });
    }
    Ok((claimed, jobs))
}

/// The user's limits for a new position on `symbol`: `Some(why)` when refused.
fn check_limits(
    conn: &mut DbConn,
    user_id: i64,
    symbol: &str,
    figures: &Figures,
) -> Result<Option<&'static str>, DbError> {
    let row = conn.query_one(
        "SELECT count(*) FILTER (WHERE state IN ('opening', 'open')), \
                count(*) FILTER (WHERE state IN ('opening', 'open') AND symbol = $2), \
                count(*) FILTER (WHERE state = 'closed' AND symbol = $2 \
                  AND closed_at > now() - $3::bigint * interval '1 millisecond'), \
                (SELECT count(*) FROM ledger_accounts \
                  WHERE user_id = $1 AND kind = 'debt' AND balance > 0) \
         FROM trading_positions WHERE user_id = $1",
        &[
            &user_id,
            &symbol,
            &(figures.symbol_cooldown.as_millis() as i64),
        ],
    )?;
    let (open, on_symbol, cooling, debt): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    Ok(if debt > 0 {
        Some("blocked_by_debt: the user owes the platform; trading resumes once it is paid")
    } else if open >= figures.max_open_positions {
        Some("max_open_positions: the user has as many open positions as allowed")
    } else if on_symbol > 0 {
        Some("position_open_on_symbol: the user has a position on this symbol")
    } else if cooling > 0 {
        Some("symbol_cooldown: a position on this symbol closed within the cooldown")
    } else {
        None
    })
}

fn unknown_or_not_sent(e: ExchangeError) -> Came {
    match e {
        ExchangeError::Unreachable(reason) => Came::NotSent(reason),
        ExchangeError::Rejected { code, message } => Came::Rejected(format!("{code}: {message}")),
        ExchangeError::Auth { code, message } => {
            Came::Rejected(format!("the exchange refused the key ({code}): {message}"))
        }
        ExchangeError::Unknown(reason) => Came::Unknown(reason),
    }
}

/// The exchange part of `job`, on an I/O thread.
fn call(shared: &TradingShared, credentials: &Credentials, job: &Job) -> Came {
    let client = &shared.client;
    match &job.step {
        Step::Open {
            stop_loss,
            take_profit,
            ..
        } => {
            let mut request = OrderRequest {
                client_order_id: job.client_order_id.clone(),
                symbol: job.symbol.clone(),
                side: if job.kind.long() {
                    Side::Buy
                } else {
                    Side::Sell
                },
                quantity: 0,
                stop_loss: *stop_loss,
                take_profit: *take_profit,
            };
            if job.maybe_sent {
                match client.order_by_client_id(credentials, &job.symbol, &job.client_order_id) {
                    Ok(Some(order)) => {
                        request.quantity = order.executed_quantity;
                        return match client.protect(credentials, &request) {
                            Ok(()) => Came::Placed(order),
                            Err(e) => Came::Unknown(format!("protecting the entry: {e}")),
                        };
                    }
                    Ok(None) if job.too_old => return Came::Expired,
                    Ok(None) => {}
                    Err(e) => return Came::Unknown(format!("asking for the order: {e}")),
                }
            }
            let balance = match client.balance(credentials) {
                Ok(balance) => balance,
                Err(ExchangeError::Unknown(reason)) => return Came::NotSent(reason),
                Err(e) => return unknown_or_not_sent(e),
            };
            request.quantity = job.settings.quantity(balance.available, job.price);
            if request.quantity <= 0 {
                return Came::Skipped("the exchange balance is too small for an order".into());
            }
            match client.place_order(credentials, &request) {
                Ok(order) => Came::Placed(order),
                Err(e) => unknown_or_not_sent(e),
            }
        }
        Step::Close { .. } => {
            if job.too_old {
                return match client.order_by_client_id(
                    credentials,
                    &job.symbol,
                    &job.client_order_id,
                ) {
                    Ok(Some(order)) => Came::Closed(order),
                    Ok(None) => Came::Expired,
                    Err(e) => Came::Unknown(format!("asking for the order: {e}")),
                };
            }
            match client.close(credentials, &job.symbol, &job.client_order_id) {
                Ok(order) => Came::Closed(order),
                Err(ExchangeError::Rejected { code, message }) => Came::Skipped(format!(
                    "the exchange has no such position ({code}): {message}"
                )),
                Err(e) => unknown_or_not_sent(e),
            }
        }
    }
}

/// Records what `job`'s attempt came to.
fn record(conn: &mut DbConn, job: &Job, came: &Came) -> Result<(), DbError> {
    let id = job.intent_id;
    match came {
        Came::Placed(order) => {
            conn.query(
                "UPDATE order_intents SET state = 'placed', exchange_order_id = $2, detail = NULL, \
                 done_at = now() WHERE id = $1",
                &[&id, &order.order_id],
            )?;
            let quantity = Some(order.executed_quantity).filter(|q| *q > 0);
            let price = if order.average_price > 0 {
                order.average_price
            } else {
                job.price
            };
            conn.query(
                "UPDATE trading_positions SET state = 'open', quantity = coalesce($2, quantity, 1), \
                 entry_price = $3 WHERE intent_id = $1 AND state = 'opening'",
                &[&id, &quantity, &price],
            )?;
        }
        Came::Closed(order) => {
            let Step::Close { position_id } = job.step else {
                return Ok(());
            };
            conn.query(
                "UPDATE order_intents SET state = 'closed', exchange_order_id = $2, detail = NULL, \
                 done_at = now() WHERE id = $1",
                &[&id, &order.order_id],
            )?;
            let exit = if order.average_price > 0 {
                order.average_price
            } else {
                job.price
            };
            close::close_open(conn, position_id, Some(exit), ClosedBy::Order)?;
        }
        Came::Rejected(detail) => finish(conn, id, "rejected", Some(detail))?,
        Came::Skipped(detail) => finish(conn, id, "skipped", Some(detail))?,
        Came::Expired => finish(
            conn,
            id,
            "expired",
            Some("not placed within the intent's expiry"),
        )?,
        Came::Unknown(detail) => {
            conn.query(
                "UPDATE order_intents SET state = 'placing', maybe_sent = true, detail = $2, \
                 next_attempt_at = now() + least(attempts * 300, 3000) * interval '1 millisecond' \
                 WHERE id = $1",
                &[&id, &detail],
            )?;
        }
        Came::NotSent(detail) => {
            conn.query(
                "UPDATE order_intents SET state = 'pending', maybe_sent = $3, detail = $2, \
                 next_attempt_at = now() + least(attempts * 300, 3000) * interval '1 millisecond' \
                 WHERE id = $1",
                &[&id, &detail, &job.maybe_sent],
            )?;
        }
    }
    Ok(())
}

/// Runs one job: the calls on the pool, then the record.
async fn run(job: Job, context: TaskContext) {
    let TaskContext {
        shared,
        secrets,
        database,
    } = context;
    let mut db = database.client();
    let credentials = secrets.as_ref().and_then(|key| job.key.open(key));
    let came = match credentials {
        None => Came::Rejected(
            "the exchange secret does not open with this server's SECRETS_KEY".into(),
        ),
        Some(credentials) => {
            let worker = shared.clone();
            let task = job.clone();
            match shared.pool.run(move || call(&worker, &credentials, &task)) {
                Ok(answer) => answer
                    .await
                    .unwrap_or_else(|| Came::Unknown("the exchange call panicked".into())),
                Err(_full) => Came::NotSent("the exchange I/O pool is full".into()),
            }
        }
    };
    if let Came::Unknown(reason) | Came::NotSent(reason) = &came {
        log::debug!(
            "trading: intent {} will be retried: {reason}",
            job.intent_id
        );
    }
    let recorded = db.write(move |conn| record(conn, &job, &came)).await;
    if let Err(e) = recorded {
        // The claim's lease runs out and another attempt asks the exchange first.
        log::warn!("trading: recording an intent's outcome failed: {e}");
    }
}

/// Starts the shard's executor: every `every` (at once while claims come back full), a claim,
/// then each job on its own task.
pub fn start(queues: &Rc<ShardQueues>, context: TaskContext, every: Duration) {
    super::claim_loop(queues, context, Priority::High, every, claim, run);
}
