//! The exchanges the platform trades on for its subscribers, through one interface.
//!
//! [`ExchangeClient`] is what the trading code sees: balance, place an order under a client
//! order id, find an order by that id, positions, close. [`binance::BinanceClient`] speaks the
//! USDT-M futures REST API (signed as Binance signs: HMAC-SHA256 over the query string, hex, as
//! the last `signature` parameter, the key in `X-MBX-APIKEY`); its base URL is the
//! `EXCHANGE_BASE_URL` setting, which tests point at the bundled simulator ([`sim`], the
//! `exchange-sim` binary).
//!
//! The calls block (plain sockets with timeouts): the server makes them on [`pool::IoPool`]'s
//! threads, never on a shard.
//!
//! Prices are integers in cents of the quote asset (USDT), quantities in thousandths of the
//! base asset: the wire's decimal strings are parsed to and from those, never through floats.

pub mod binance;
pub mod fixed;
pub mod pool;
pub mod sign;
pub mod sim;
pub mod wire;

/// A user's key on an exchange.
#[derive(Clone)]
pub struct Credentials {
    pub api_key: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    // Never print the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials {{ api_key: {}, secret: <redacted> }}",
            self.api_key
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "BUY",
            Side::Sell => "SELL",
        }
    }

    pub fn parse(text: &str) -> Option<Side> {
        match text {
            "BUY" => Some(Side::Buy),
            "SELL" => Some(Side::Sell),
            _ => None,
        }
    }

    pub fn opposite(self) -> Side {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }
}

/// An order to open a position: a market entry with its stop-loss and take-profit (both
/// mandatory), under a client order id the caller chose (deterministic, so that a retry can
/// ask for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRequest {
    pub client_order_id: String,
    pub symbol: String,
    pub side: Side,
    /// Thousandths of the base asset.
    pub quantity: i64,
    /// Cents.
    pub stop_loss: i64,
    /// Cents.
    pub take_profit: i64,
}

/// An order as the exchange reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub order_id: i64,
    pub client_order_id: String,
    pub symbol: String,
    pub side: Side,
    /// `NEW`, `FILLED`, `CANCELED`...
    pub status: String,
    /// Thousandths.
    pub executed_quantity: i64,
    /// Cents; 0 before a fill.
    pub average_price: i64,
}

/// An open position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub symbol: String,
    /// Thousandths; negative: short.
    pub amount: i64,
    /// Cents.
    pub entry_price: i64,
    /// Cents.
    pub mark_price: i64,
    /// Cents.
    pub unrealized_profit: i64,
}

/// The futures wallet's balance in the quote asset, cents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balance {
    pub balance: i64,
    pub available: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    /// The exchange answered no: nothing was done.
    #[error("refused by the exchange ({code}): {message}")]
    Rejected { code: i64, message: String },
    /// The key or its signature was refused.
    #[error("the exchange refused the key ({code}): {message}")]
    Auth { code: i64, message: String },
    /// Nothing was sent (no connection): nothing was done.
    #[error("the exchange is unreachable: {0}")]
    Unreachable(String),
    /// Sent, but no clear answer (timeout, 5xx, connection lost): it may or may not have been
    /// done. Ask by client order id before trying again.
    #[error("outcome unknown: {0}")]
    Unknown(String),
}

impl ExchangeError {
    /// Whether the request may have taken effect.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, ExchangeError::Unknown(_))
    }
}

pub type ExchangeResult<T> = Result<T, ExchangeError>;

/// One exchange, as the trading code uses it. Every call blocks: run it on [`pool::IoPool`].
pub trait ExchangeClient: Send + Sync {
    fn balance(&self, credentials: &Credentials) -> ExchangeResult<Balance>;
    /// Places the entry, then its stop-loss and take-profit; each under an id derived from
    /// the request's client order id, and each skipped when already there, so that calling
    /// it again after an unknown outcome completes the order and never doubles it.
    fn place_order(&self, credentials: &Credentials, order: &OrderRequest)
        -> ExchangeResult<Order>;
    /// Places the stop-loss and take-profit of `order`'s entry (already placed) that are not
    /// there yet.
    fn protect(&self, credentials: &Credentials, order: &OrderRequest) -> ExchangeResult<()>;
    /// The order with this client order id; `None`: the exchange has none.
    fn order_by_client_id(
        &self,
        credentials: &Credentials,
        symbol: &str,
        client_order_id: &str,
    ) -> ExchangeResult<Option<Order>>;
    fn positions(&self, credentials: &Credentials) -> ExchangeResult<Vec<Position>>;
    /// Closes the position on `symbol` with a reduce-only market order under
    /// `client_order_id`; the order placed, or the one already under that id.
    fn close(
        &self,
        credentials: &Credentials,
        symbol: &str,
        client_order_id: &str,
    ) -> ExchangeResult<Order>;
}
