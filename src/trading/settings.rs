//! A user's trading settings: leverage 5x (1 to 10), stop-loss 2x the leverage in percent of
//! the margin (2x to 5x), take-profit 3x (1x to 6x), size 30 % of the exchange balance (10 to
//! 50 %). The bounds are database constraints too (migration 0008).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::db::{DbConn, DbError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Settings {
    pub leverage: i32,
    pub stop_loss_multiplier: i32,
    pub take_profit_multiplier: i32,
    pub size_percent: i32,
    pub enabled: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            leverage: 5,
            stop_loss_multiplier: 2,
            take_profit_multiplier: 3,
            size_percent: 30,
            enabled: true,
        }
    }
}

/// (name, low, high) of each bounded setting.
pub const BOUNDS: [(&str, i32, i32); 4] = [
    ("leverage", 1, 10),
    ("stop_loss_multiplier", 2, 5),
    ("take_profit_multiplier", 1, 6),
    ("size_percent", 10, 50),
];

/// A change: the fields given.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    pub leverage: Option<i64>,
    pub stop_loss_multiplier: Option<i64>,
    pub take_profit_multiplier: Option<i64>,
    pub size_percent: Option<i64>,
    pub enabled: Option<bool>,
}

impl Settings {
    /// `change` applied; the error lists each field out of its bounds (the 422's body).
    pub fn apply(self, change: &Change) -> Result<Settings, Value> {
        let given = [
            change.leverage,
            change.stop_loss_multiplier,
            change.take_profit_multiplier,
            change.size_percent,
        ];
        let mut values = [
            self.leverage,
            self.stop_loss_multiplier,
            self.take_profit_multiplier,
            self.size_percent,
        ];
        let mut wrong = Vec::new();
        for (i, ((name, low, high), value)) in BOUNDS.iter().zip(given).enumerate() {
            match value {
                None => {}
                Some(v) if (*low as i64..=*high as i64).contains(&v) => values[i] = v as i32,
                Some(v) => {
                    wrong.push(json!({ "field": name, "value": v, "min": low, "max": high }))
                }
            }
        }
        if !wrong.is_empty() {
            return Err(json!(wrong));
        }
        Ok(Settings {
            leverage: values[0],
            stop_loss_multiplier: values[1],
            take_profit_multiplier: values[2],
            size_percent: values[3],
            enabled: change.enabled.unwrap_or(self.enabled),
        })
    }

    /// The stop-loss and take-profit prices (cents) of an entry at `price`: the margin loses
    /// `stop_loss_multiplier x leverage` %, or gains `take_profit_multiplier x leverage` %,
    /// so the price moves the multiplier in percent.
    pub fn protection(&self, long: bool, price: i64) -> (i64, i64) {
        let sl = price * self.stop_loss_multiplier as i64 / 100;
        let tp = price * self.take_profit_multiplier as i64 / 100;
        if long {
            ((price - sl).max(1), price + tp)
        } else {
            (price + sl, (price - tp).max(1))
        }
    }

    /// The quantity (thousandths) `size_percent` of `balance` (cents) buys at `leverage` and
    /// `price` (cents).
    pub fn quantity(&self, balance: i64, price: i64) -> i64 {
        let notional = balance as i128 * self.size_percent as i128 * self.leverage as i128 / 100;
        (notional * 1000 / price.max(1) as i128) as i64
    }
}

macro_rules! select_settings {
    ($tail:literal) => {
        concat!(
            "SELECT leverage, stop_loss_multiplier, take_profit_multiplier, size_percent, enabled \
             FROM trading_settings WHERE user_id = $1",
            $tail
        )
    };
}
const SELECT: &str = select_settings!("");
/// The row, locked for a change.
const SELECT_FOR_UPDATE: &str = select_settings!(" FOR UPDATE");
const SELECT_MANY: &str =
    "SELECT user_id, leverage, stop_loss_multiplier, take_profit_multiplier, \
     size_percent, enabled FROM trading_settings WHERE user_id = ANY($1)";
const UPSERT: &str = "INSERT INTO trading_settings \
     (user_id, leverage, stop_loss_multiplier, take_profit_multiplier, size_percent, enabled) \
     VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (user_id) DO UPDATE SET leverage = $2, stop_loss_multiplier = $3, \
     take_profit_multiplier = $4, size_percent = $5, enabled = $6, updated_at = now()";

/// The user's settings (the defaults without a row).
pub fn load(conn: &mut DbConn, user_id: i64) -> Result<Settings, DbError> {
    Ok(match conn.query_opt(SELECT, &[&user_id])? {
        Some(row) => from_row(&row, 0),
        None => Settings::default(),
    })
}

/// The settings of those of `users` that have a row (the others take the defaults).
pub fn load_many(conn: &mut DbConn, users: &[i64]) -> Result<HashMap<i64, Settings>, DbError> {
    let rows = conn.query(SELECT_MANY, &[&users])?;
    Ok(rows
        .iter()
        .map(|row| (row.get(0), from_row(row, 1)))
        .collect())
}

/// The settings in `row`'s columns from `first` on, in [`SELECT`]'s order.
fn from_row(row: &postgres::Row, first: usize) -> Settings {
    Settings {
        leverage: row.get(first),
        stop_loss_multiplier: row.get(first + 1),
        take_profit_multiplier: row.get(first + 2),
        size_percent: row.get(first + 3),
        enabled: row.get(first + 4),
    }
}

/// Applies `change` under the settings row's lock; the 422 body when out of bounds.
pub fn update(
    conn: &mut DbConn,
    user_id: i64,
    change: &Change,
) -> Result<Result<Settings, Value>, DbError> {
    // The settings row's own lock (made first if missing), not the user's: the executor locks
    // users in id order for a batch's checks, and a write group holding several users' locks
    // taken in request order could deadlock with it.
    conn.query(
        "INSERT INTO trading_settings (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING",
        &[&user_id],
    )?;
    let current = from_row(&conn.query_one(SELECT_FOR_UPDATE, &[&user_id])?, 0);
    let next = match current.apply(change) {
        Ok(next) => next,
        Err(wrong) => return Ok(Err(wrong)),
    };
    conn.query(
        UPSERT,
        &[
            &user_id,
            &next.leverage,
            &next.stop_loss_multiplier,
            &next.take_profit_multiplier,
            &next.size_percent,
            &next.enabled,
        ],
    )?;
    Ok(Ok(next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_protection_and_size() {
        let s = Settings::default();
        assert!(s
            .apply(&Change {
                leverage: Some(11),
                ..Change::default()
            })
            .is_err());
        assert!(s
            .apply(&Change {
                stop_loss_multiplier: Some(1),
                ..Change::default()
            })
            .is_err());
        assert!(s
            .apply(&Change {
                size_percent: Some(51),
                ..Change::default()
            })
            .is_err());
        let changed = s
            .apply(&Change {
                leverage: Some(10),
                ..Change::default()
            })
            .unwrap();
        assert_eq!(changed.leverage, 10);
        // 100.00 long: stop at 98.00, profit at 103.00; short the reverse.
        assert_eq!(s.protection(true, 10_000), (9_800, 10_300));
        assert_eq!(s.protection(false, 10_000), (10_200, 9_700));
        // 1000.00 at 30 % and 5x is 1500.00 of notional: 15 units at 100.00.
        assert_eq!(s.quantity(100_000, 10_000), 15_000);
    }
}
