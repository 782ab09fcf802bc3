//! What a closed position leads to, inside the transaction that records the close.
//!
//! The commission on a profitable close is charged through the ledger exactly once per
//! position: [`on_closed`] runs in the same transaction that marks the position closed (so a
//! crash before the commit leaves neither, and the retried close does both) and calls
//! [`crate::ledger::commission::charge`], which claims the position's id (its decimal text)
//! once and adds the affiliate share in the same group. A loss charges nothing.
//!
//! Profit is in USDT cents, taken as USD. A BRL user's commission is converted at a recorded
//! USD->BRL rate ([`record_rate`]): the one recorded for the close's day (UTC), else the latest
//! recorded before it, else the first recorded after it. With no rate recorded at all the
//! charge is deferred: the position is marked `commission_due` in the closing transaction, and
//! the transaction that records the first rate charges every position so marked. The two
//! take one advisory lock (shared to defer, exclusive to record), so a deferral is either seen
//! by the recording or sees its rate: never charged twice (the ledger's claim) and never lost.

use crate::db::{DbConn, DbError};
use crate::ledger::commission::{self, Position, Refused, RATE_SCALE};
use crate::ledger::per_currency::Currency;
use crate::ledger::store;

/// A position just closed, as the ledger's charge needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedPosition {
    pub position_id: i64,
    pub user_id: i64,
    pub symbol: String,
    /// Cents of the quote asset (USDT); negative: a loss, which is never charged.
    pub profit: i64,
}

/// What a close's commission came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commission {
    /// Not a profit, or no such user any more.
    None,
    /// Charged now: the amount in the user's currency.
    Charged(i64),
    /// Waiting for a recorded rate.
    Deferred,
    /// Charged before (a retried close finds the ledger's claim).
    AlreadyCharged,
}

/// What closed a position (`trading_positions.closed_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedBy {
    /// The platform's close order (a close signal or a user's close).
    Order,
    /// Its stop-loss fired on the exchange.
    StopLoss,
    /// Its take-profit fired on the exchange.
    TakeProfit,
    /// The exchange no longer holds it and neither protection filled: no exit is known.
    Exchange,
}

impl ClosedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            ClosedBy::Order => "order",
            ClosedBy::StopLoss => "stop_loss",
            ClosedBy::TakeProfit => "take_profit",
            ClosedBy::Exchange => "exchange",
        }
    }
}

/// Closes open position `id` at `exit` (cents; `None`: unknown, so no profit) and charges
/// its commission in the same transaction. Only the update that closes it goes on to the
/// charge: exactly once a position. A close by anything but the platform's own order leaves
/// alone a position a close order is working on (that order's outcome records it). Returns
/// whether this call closed it.
pub fn close_open(
    conn: &mut DbConn,
    position_id: i64,
    exit: Option<i64>,
    by: ClosedBy,
) -> Result<bool, DbError> {
    let closed = conn.query_opt(
        "UPDATE trading_positions SET state = 'closed', closed_at = now(), closed_by = $3, \
           exit_price = $2, \
           profit = (($2 - entry_price) * quantity / 1000) * CASE side WHEN 'long' THEN 1 ELSE -1 END \
         WHERE id = $1 AND state = 'open' AND ($3 = 'order' OR close_intent IS NULL) \
         RETURNING user_id, symbol, profit",
        &[&position_id, &exit, &by.as_str()],
    )?;
    let Some(row) = closed else {
        return Ok(false);
    };
    let (user_id, symbol, profit): (i64, String, Option<i64>) =
        (row.get(0), row.get(1), row.get(2));
    match profit {
        Some(profit) => on_closed(
            conn,
            &ClosedPosition {
                position_id,
                user_id,
                symbol,
                profit,
            },
        )?,
        None => log::warn!(
            "trading: position {position_id} of user {user_id} on {symbol} was closed on the \
             exchange without its stop-loss or take-profit: no exit price, no commission"
        ),
    }
    Ok(true)
}

/// The advisory lock between deferring a charge and recording a rate: "fxrates" in ASCII.
const RATES_LOCK: i64 = 0x0066_7872_6174_6573;

const RATE_FOR_POSITION: &str = "SELECT f.rate FROM fx_rates f, trading_positions p \
     WHERE p.id = $2 AND f.currency = $1 \
     ORDER BY f.day <= (p.closed_at AT TIME ZONE 'UTC')::date DESC, \
       CASE WHEN f.day <= (p.closed_at AT TIME ZONE 'UTC')::date THEN f.day END DESC NULLS LAST, \
       f.day \
     LIMIT 1";

/// Called once per position, in the transaction that closes it.
pub fn on_closed(conn: &mut DbConn, closed: &ClosedPosition) -> Result<(), DbError> {
    if closed.profit <= 0 {
        log::debug!(
            "trading: position {} of user {} on {} closed with {} cents: no commission",
            closed.position_id,
            closed.user_id,
            closed.symbol,
            closed.profit
        );
        return Ok(());
    }
    let came = charge_once(conn, closed.position_id, closed.user_id, closed.profit)?;
    log::debug!(
        "trading: position {} of user {} on {} closed with {} cents: {came:?}",
        closed.position_id,
        closed.user_id,
        closed.symbol,
        closed.profit
    );
    Ok(())
}

/// Charges the commission on `profit` (USD cents) of a closed position, or defers it.
fn charge_once(
    conn: &mut DbConn,
    position_id: i64,
    user_id: i64,
    profit: i64,
) -> Result<Commission, DbError> {
    let Some(currency) = store::user_currency(conn, user_id)? else {
        return Ok(Commission::None);
    };
    let fx_rate = if currency == Currency::Usd {
        None
    } else {
        conn.query("SELECT pg_advisory_xact_lock_shared($1)", &[&RATES_LOCK])?;
        let rate = conn.query_opt(RATE_FOR_POSITION, &[&currency.as_str(), &position_id])?;
        match rate {
            Some(row) => Some(row.get::<_, i64>(0)),
            None => {
                conn.query(
                    "UPDATE trading_positions SET commission_due = true WHERE id = $1",
                    &[&position_id],
                )?;
                return Ok(Commission::Deferred);
            }
        }
    };
    let position = Position {
        user_id,
        position_id: position_id.to_string(),
        profit,
        profit_currency: Currency::Usd,
        fx_rate,
    };
    let came = match commission::charge(conn, &position)? {
        Ok(charged) => Commission::Charged(charged.commission),
        Err(Refused::AlreadyCharged) => Commission::AlreadyCharged,
        Err(Refused::UnknownUser) => Commission::None,
        Err(Refused::RateRequired) => {
            return Err(DbError::Query(format!(
                "position {position_id}: the commission needs a rate it was given"
            )))
        }
    };
    conn.query(
        "UPDATE trading_positions SET commission_due = false WHERE id = $1 AND commission_due",
        &[&position_id],
    )?;
    Ok(came)
}

/// A rate recorded, and the deferred charges it made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub currency: Currency,
    /// `YYYY-MM-DD`.
    pub day: String,
    /// [`RATE_SCALE`] units of `currency` per USD.
    pub rate: i64,
    /// Deferred commissions charged in the same transaction.
    pub charged: usize,
}

/// Whether `text` is a calendar date `YYYY-MM-DD` (years 2000 to 2999).
pub fn valid_day(text: &str) -> bool {
    let b = text.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let number = |s: &str| -> Option<u32> {
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (Some(y), Some(m), Some(d)) = (number(&text[..4]), number(&text[5..7]), number(&text[8..]))
    else {
        return false;
    };
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (2000..3000).contains(&y) && (1..=days).contains(&d)
}

/// Records `rate` ([`RATE_SCALE`] units of `currency` per USD) for `day` (`YYYY-MM-DD`, checked
/// by [`valid_day`]; `None`: today, UTC) and, in the same transaction, charges every commission
/// deferred for want of one.
pub fn record_rate(
    conn: &mut DbConn,
    currency: Currency,
    day: Option<&str>,
    rate: i64,
    recorded_by: i64,
) -> Result<Recorded, DbError> {
    debug_assert!(rate > 0 && currency != Currency::Usd, "{RATE_SCALE}");
    conn.query("SELECT pg_advisory_xact_lock($1)", &[&RATES_LOCK])?;
    let row = conn.query_one(
        "INSERT INTO fx_rates (currency, day, rate, recorded_by) \
         VALUES ($1, coalesce($2::text::date, (now() AT TIME ZONE 'UTC')::date), $3, $4) \
         ON CONFLICT (currency, day) DO UPDATE \
           SET rate = EXCLUDED.rate, recorded_by = EXCLUDED.recorded_by, recorded_at = now() \
         RETURNING to_char(day, 'YYYY-MM-DD')",
        &[&currency.as_str(), &day, &rate, &recorded_by],
    )?;
    let due = conn.query(
        "SELECT p.id, p.user_id, p.profit FROM trading_positions p JOIN users u ON u.id = p.user_id \
         WHERE p.commission_due AND u.currency = $1 ORDER BY p.id FOR UPDATE OF p",
        &[&currency.as_str()],
    )?;
    let mut charged = 0;
    for position in due {
        let came = charge_once(conn, position.get(0), position.get(1), position.get(2))?;
        charged += usize::from(came != Commission::Deferred);
    }
    Ok(Recorded {
        currency,
        day: row.get(0),
        rate,
        charged,
    })
}

#[cfg(test)]
mod tests {
    use super::valid_day;

    #[test]
    fn days() {
        for (text, ok) in [
            ("2026-12-06", true),
            ("2028-02-29", true),
            ("2026-02-29", false),
            ("2000-02-29", true),
            ("2100-02-29", false),
            ("2026-13-01", false),
            ("2026-04-31", false),
            ("2026-00-10", false),
            ("2026-1-01", false),
            ("26-12-06x", false),
            ("2026-12-+6", false),
            ("1999-12-31", false),
        ] {
            assert_eq!(valid_day(text), ok, "{text}");
        }
    }
}
