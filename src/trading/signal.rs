//! A signal as the webhook takes it, and its fan-out.
//!
//! The body (a TradingView alert): `{"signal": "SINAL LONG FORTE", "symbol": "BTCUSDT",
//! "price": "50000.25", "time": 1765000000000 | "2026-12-06T08:00:00Z", "secret": "...",
//! "alert_id": "..."}`. `signal` is one of `SINAL LONG FORTE` / `SINAL SHORT FORTE` (open),
//! `FECHE LONG` / `FECHE SHORT` (close), or `open_long`... ; `ticker` may stand for `symbol`.
//! The alert's fingerprint is the SHA-256 of its `alert_id`, else of its kind, symbol, time and
//! price: the same alert delivered twice makes one signal.

use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::db::{DbConn, DbError};
use crate::exchange::fixed;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    OpenLong,
    OpenShort,
    CloseLong,
    CloseShort,
}

impl Kind {
    pub fn parse(text: &str) -> Option<Kind> {
        match text.trim().to_ascii_uppercase().as_str() {
            "SINAL LONG FORTE" | "OPEN_LONG" => Some(Kind::OpenLong),
            "SINAL SHORT FORTE" | "OPEN_SHORT" => Some(Kind::OpenShort),
            "FECHE LONG" | "CLOSE_LONG" => Some(Kind::CloseLong),
            "FECHE SHORT" | "CLOSE_SHORT" => Some(Kind::CloseShort),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::OpenLong => "open_long",
            Kind::OpenShort => "open_short",
            Kind::CloseLong => "close_long",
            Kind::CloseShort => "close_short",
        }
    }

    pub fn from_db(text: &str) -> Option<Kind> {
        Kind::parse(text)
    }

    pub fn opens(self) -> bool {
        matches!(self, Kind::OpenLong | Kind::OpenShort)
    }

    /// Whether it is about the long side.
    pub fn long(self) -> bool {
        matches!(self, Kind::OpenLong | Kind::CloseLong)
    }
}

/// The webhook's body.
#[derive(Debug, Deserialize)]
pub struct Form {
    pub signal: Option<String>,
    #[serde(alias = "ticker")]
    pub symbol: Option<String>,
    pub price: Option<Value>,
    pub time: Option<Value>,
    pub secret: Option<String>,
    pub alert_id: Option<String>,
}

/// A valid signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    pub kind: Kind,
    pub symbol: String,
    /// Cents.
    pub price: i64,
    /// Unix ms.
    pub alert_at_ms: i64,
    pub fingerprint: [u8; 32],
}

/// Why a signal is refused (422).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    Field(&'static str, &'static str),
    Stale { age_ms: i64 },
    Future,
}

impl Invalid {
    pub fn body(&self) -> (&'static str, String) {
        match self {
            Invalid::Field(field, what) => ("invalid_signal", format!("{field}: {what}")),
            Invalid::Stale { age_ms } => (
                "signal_stale",
                format!("the signal is {age_ms} ms old: a signal is valid for 30 s"),
            ),
            Invalid::Future => (
                "signal_from_the_future",
                "the signal's time is ahead of this server's clock".into(),
            ),
        }
    }
}

/// How far ahead of our clock an alert's time may be (clocks differ).
const CLOCK_SKEW_MS: i64 = 5_000;

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DDTHH:MM:SS[.fff]Z` as unix ms.
fn parse_rfc3339(text: &str) -> Option<i64> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, mi, s) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let ms = if fraction.is_empty() {
        0
    } else {
        let digits: String = fraction.chars().take(3).collect();
        format!("{digits:0<3}").parse::<i64>().ok()?
    };
    Some(((days_from_civil(y, mo, da) * 24 + h) * 60 + mi) * 60_000 + s * 1000 + ms)
}

fn decimal_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Checks `form` at `now_ms` with `validity_ms`.
pub fn validate(form: &Form, now_ms: i64, validity_ms: i64) -> Result<Signal, Invalid> {
    let kind = form
        .signal
        .as_deref()
        .and_then(Kind::parse)
        .ok_or(Invalid::Field(
            "signal",
            "one of SINAL LONG FORTE, SINAL SHORT FORTE, FECHE LONG, FECHE SHORT",
        ))?;
    let symbol = form
        .symbol
        .as_deref()
        .map(str::to_ascii_uppercase)
        .filter(|s| (2..=20).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric()))
        .ok_or(Invalid::Field(
            "symbol",
            "2 to 20 letters and digits, e.g. BTCUSDT",
        ))?;
    let price = form
        .price
        .as_ref()
        .and_then(decimal_text)
        .and_then(|t| fixed::parse_truncating(&t, 2))
        .filter(|p| *p > 0)
        .ok_or(Invalid::Field(
            "price",
            "a positive decimal, e.g. \"50000.25\"",
        ))?;
    let alert_at_ms = match &form.time {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.parse::<i64>().ok().or_else(|| parse_rfc3339(s)),
        _ => None,
    }
    .ok_or(Invalid::Field(
        "time",
        "unix milliseconds or an RFC 3339 UTC time (…Z)",
    ))?;
    if alert_at_ms > now_ms + CLOCK_SKEW_MS {
        return Err(Invalid::Future);
    }
    if now_ms - alert_at_ms > validity_ms {
        return Err(Invalid::Stale {
            age_ms: now_ms - alert_at_ms,
        });
    }
    let fingerprint: [u8; 32] = match &form.alert_id {
        Some(id) if !id.is_empty() => Sha256::digest(format!("id:{id}").as_bytes()).into(),
        _ => Sha256::digest(format!("{}|{symbol}|{alert_at_ms}|{price}", kind.as_str()).as_bytes())
            .into(),
    };
    Ok(Signal {
        kind,
        symbol,
        price,
        alert_at_ms,
        fingerprint,
    })
}

/// What taking a signal came to.
pub enum Taken {
    /// New: the signal's JSON, with its intents written.
    Fresh(Value),
    /// The same alert was taken before: the first signal's JSON.
    Duplicate(Value),
}

macro_rules! signal_columns {
    () => {
        "id, kind, symbol, price, \
         to_char(alert_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
         to_char(received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), intents, \
         origin"
    };
}
const SELECT_SIGNAL: &str = concat!(
    "SELECT ",
    signal_columns!(),
    " FROM trading_signals WHERE fingerprint = $1"
);
const SIGNAL_BY_ID: &str = concat!(
    "SELECT ",
    signal_columns!(),
    " FROM trading_signals WHERE id = $1"
);
/// The fan-out: signal `$1`'s intents, one per active subscriber, and their count on the
/// signal, in one statement (the intents' rows stay in the database: only the count comes back).
const FAN_OUT: &str = concat!(
    "WITH fanned AS ( \
       INSERT INTO order_intents (signal_id, user_id, client_order_id) \
       SELECT $1, a.user_id, 'cb' || $1::bigint || 'u' || a.user_id \
       FROM exchange_accounts a JOIN users u ON u.id = a.user_id \
       LEFT JOIN trading_settings s ON s.user_id = a.user_id \
       WHERE a.deleted_at IS NULL AND u.status = 'active' AND coalesce(s.enabled, true) \
       RETURNING 1) \
     UPDATE trading_signals SET intents = (SELECT count(*) FROM fanned)::integer \
     WHERE id = $1 RETURNING ",
    signal_columns!()
);

fn signal_json(row: &postgres::Row) -> Value {
    json!({
        "id": row.get::<_, i64>(0),
        "kind": row.get::<_, String>(1),
        "symbol": row.get::<_, String>(2),
        "price": row.get::<_, i64>(3),
        "alert_at": row.get::<_, String>(4),
        "received_at": row.get::<_, String>(5),
        "intents": row.get::<_, i32>(6),
        "origin": row.get::<_, String>(7),
    })
}

/// The client order id of the intent of `signal_id` for `user_id`: deterministic, so that a
/// retry asks the exchange for it; within Binance's 36 characters of `[.A-Za-z0-9:/_-]`.
pub fn client_order_id(signal_id: i64, user_id: i64) -> String {
    format!("cb{signal_id}u{user_id}")
}

/// Where a signal came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The alert source's webhook.
    Webhook,
    /// An operator, on behalf of the platform.
    Operator,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Webhook => "webhook",
            Origin::Operator => "operator",
        }
    }
}

/// Records the signal and, in the same transaction, one intent per active subscriber (a live
/// exchange account, an active user, trading enabled); a fingerprint taken before answers the
/// first signal.
pub fn take(conn: &mut DbConn, signal: &Signal, origin: Origin) -> Result<Taken, DbError> {
    let inserted = conn.query_opt(
        "INSERT INTO trading_signals (fingerprint, kind, symbol, price, alert_at, origin) \
         VALUES ($1, $2, $3, $4, to_timestamp($5::bigint / 1000.0), $6) \
         ON CONFLICT (fingerprint) DO NOTHING RETURNING id",
        &[
            &signal.fingerprint.as_slice(),
            &signal.kind.as_str(),
            &signal.symbol,
            &signal.price,
            &signal.alert_at_ms,
            &origin.as_str(),
        ],
    )?;
    let Some(row) = inserted else {
        let first = conn.query_one(SELECT_SIGNAL, &[&signal.fingerprint.as_slice()])?;
        return Ok(Taken::Duplicate(signal_json(&first)));
    };
    let id: i64 = row.get(0);
    let row = conn.query_one(FAN_OUT, &[&id])?;
    Ok(Taken::Fresh(signal_json(&row)))
}

/// The signal `id` and every subscriber's intent on it (by user); `None`: no such signal.
pub fn with_intents(conn: &mut DbConn, id: i64) -> Result<Option<Value>, DbError> {
    let Some(row) = conn.query_opt(SIGNAL_BY_ID, &[&id])? else {
        return Ok(None);
    };
    let intents: Vec<Value> = conn
        .query(
            "SELECT id, user_id, client_order_id, state, attempts, detail, exchange_order_id, \
               to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
               to_char(done_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') \
             FROM order_intents WHERE signal_id = $1 ORDER BY user_id",
            &[&id],
        )?
        .iter()
        .map(|i| {
            json!({
                "id": i.get::<_, i64>(0),
                "user_id": i.get::<_, i64>(1),
                "client_order_id": i.get::<_, String>(2),
                "state": i.get::<_, String>(3),
                "attempts": i.get::<_, i32>(4),
                "detail": i.get::<_, Option<String>>(5),
                "exchange_order_id": i.get::<_, Option<i64>>(6),
                "created_at": i.get::<_, String>(7),
                "done_at": i.get::<_, Option<String>>(8),
            })
        })
        .collect();
    Ok(Some(
        json!({ "signal": signal_json(&row), "intents": intents }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(signal: &str, time: Value) -> Form {
        Form {
            signal: Some(signal.into()),
            symbol: Some("btcusdt".into()),
            price: Some(json!("50000.25")),
            time: Some(time),
            secret: None,
            alert_id: None,
        }
    }

    #[test]
    fn kinds_validity_and_fingerprints() {
        let now = 1_765_008_000_000;
        let s = validate(&form("SINAL LONG FORTE", json!(now - 1_000)), now, 30_000).unwrap();
        assert_eq!(
            (s.kind, s.symbol.as_str(), s.price),
            (Kind::OpenLong, "BTCUSDT", 5_000_025)
        );
        assert_eq!(Kind::parse("FECHE SHORT"), Some(Kind::CloseShort));
        assert!(matches!(
            validate(&form("SINAL LONG FORTE", json!(now - 31_000)), now, 30_000),
            Err(Invalid::Stale { .. })
        ));
        assert_eq!(
            validate(&form("SINAL LONG FORTE", json!(now + 60_000)), now, 30_000),
            Err(Invalid::Future)
        );
        assert!(validate(&form("COMPRA", json!(now)), now, 30_000).is_err());
        // 2025-12-06T08:00:00Z is 1765008000000.
        let iso = validate(
            &form("FECHE LONG", json!("2025-12-06T08:00:00.000Z")),
            now,
            30_000,
        )
        .unwrap();
        assert_eq!(iso.alert_at_ms, now);
        let again = validate(&form("FECHE LONG", json!(now)), now, 30_000).unwrap();
        assert_eq!(iso.fingerprint, again.fingerprint);
        assert_ne!(iso.fingerprint, s.fingerprint);
    }
}
