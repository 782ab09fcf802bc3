//! [`ExchangeClient`] over Binance's USDT-M futures REST API (`/fapi`), or anything that speaks
//! it (the bundled simulator).
//!
//! Every call opens a connection (plain HTTP: an `https://` base needs a TLS-terminating
//! proxy in front), sends a signed request and reads the answer within the timeout. A 5xx, a
//! timeout or a lost connection after the request was sent is [`ExchangeError::Unknown`]: as
//! Binance documents, the request may have been carried out.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::sign::{self, API_KEY_HEADER, DEFAULT_RECV_WINDOW_MS};
use super::{
    fixed, wire, Balance, Credentials, ExchangeClient, ExchangeError, ExchangeResult, Order,
    OrderRequest, Position, Side,
};

/// The code of a refused duplicate client order id: the order is already there.
const DUPLICATE_CLIENT_ID: i64 = -4116;
/// "Order does not exist."
const NO_SUCH_ORDER: i64 = -2013;
/// Codes that mean the key, its permissions or its signature were refused.
const AUTH_CODES: [i64; 4] = [-2015, -2014, -1022, -1002];

/// Where a Binance-style API is, and how long to wait for it.
#[derive(Debug, Clone)]
pub struct BinanceClient {
    /// `host:port`.
    authority: String,
    timeout: Duration,
}

impl BinanceClient {
    /// A client of `base_url` (`http://host[:port]`); the error says why one cannot be made.
    pub fn new(base_url: &str, timeout: Duration) -> Result<BinanceClient, String> {
        let rest = if let Some(rest) = base_url.strip_prefix("http://") {
            rest
        } else if base_url.starts_with("https://") {
            return Err(format!(
                "{base_url}: this build speaks plain HTTP to exchanges; put a TLS-terminating proxy in front and give its http:// address"
            ));
        } else {
            return Err(format!("{base_url}: expected http://host[:port]"));
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(format!(
                "{base_url}: expected http://host[:port] with no path"
            ));
        }
        let authority = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(BinanceClient { authority, timeout })
    }

    /// The same client with another timeout.
    pub fn with_timeout(self, timeout: Duration) -> BinanceClient {
        BinanceClient { timeout, ..self }
    }

    /// Sends a signed request with `params` (a `timestamp` and `recvWindow` are added).
    fn signed(
        &self,
        credentials: &Credentials,
        method: &str,
        path: &str,
        params: &str,
    ) -> ExchangeResult<Value> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut all = params.to_string();
        if !all.is_empty() {
            all.push('&');
        }
        all.push_str(&format!(
            "recvWindow={DEFAULT_RECV_WINDOW_MS}&timestamp={timestamp}"
        ));
        let query = sign::signed_query(&credentials.secret, &all);
        let address = self
            .authority
            .to_socket_addrs()
            .map_err(|e| ExchangeError::Unreachable(format!("{}: {e}", self.authority)))?
            .next()
            .ok_or_else(|| ExchangeError::Unreachable(self.authority.clone()))?;
        let mut stream = TcpStream::connect_timeout(&address, self.timeout)
            .map_err(|e| ExchangeError::Unreachable(format!("{}: {e}", self.authority)))?;
        let _ = stream.set_nodelay(true);
        let unknown = |e: std::io::Error| ExchangeError::Unknown(format!("{method} {path}: {e}"));
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(unknown)?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(unknown)?;
        wire::write_request(
            &mut stream,
            method,
            &self.authority,
            &format!("{path}?{query}"),
            &[(API_KEY_HEADER, &credentials.api_key)],
            b"",
        )
        .map_err(unknown)?;
        let (status, body) = wire::read_response(&mut stream).map_err(unknown)?;
        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status >= 500 {
            return Err(ExchangeError::Unknown(format!(
                "{method} {path}: {status} {value}"
            )));
        }
        if status >= 400 {
            let code = value["code"].as_i64().unwrap_or(-1);
            let message = value["msg"].as_str().unwrap_or("").to_string();
            return Err(if status == 401 || AUTH_CODES.contains(&code) {
                ExchangeError::Auth { code, message }
            } else {
                ExchangeError::Rejected { code, message }
            });
        }
        if value.is_null() {
            return Err(ExchangeError::Unknown(format!(
                "{method} {path}: {status} with a body that is not JSON"
            )));
        }
        Ok(value)
    }

    /// Places one order; a duplicate client id answers the order already there.
    fn place_one(
        &self,
        credentials: &Credentials,
        symbol: &str,
        client_order_id: &str,
        params: &str,
    ) -> ExchangeResult<Order> {
        let params = format!("symbol={symbol}&newClientOrderId={client_order_id}&{params}");
        match self.signed(credentials, "POST", "/fapi/v1/order", &params) {
            Ok(value) => parse_order(&value),
            Err(ExchangeError::Rejected { code, .. }) if code == DUPLICATE_CLIENT_ID => self
                .order_by_client_id(credentials, symbol, client_order_id)?
                .ok_or_else(|| {
                    ExchangeError::Unknown(format!(
                        "{client_order_id}: a duplicate the exchange cannot find"
                    ))
                }),
            Err(e) => Err(e),
        }
    }

    /// `order` with its fill: a market order's answer may not report one yet (status `NEW`,
    /// nothing executed, no average price: Binance's `ACK` answer, or a market order not yet
    /// matched when it answered), and then the order, asked for once, does. A failed question
    /// keeps the answer as it was: the order is placed either way.
    fn with_fill(&self, credentials: &Credentials, order: Order) -> Order {
        if order.average_price > 0 && order.executed_quantity > 0 {
            return order;
        }
        match self.order_by_client_id(credentials, &order.symbol, &order.client_order_id) {
            Ok(Some(asked)) if asked.average_price > 0 => asked,
            _ => order,
        }
    }
}

fn field<'a>(value: &'a Value, name: &str) -> ExchangeResult<&'a str> {
    value[name]
        .as_str()
        .ok_or_else(|| ExchangeError::Unknown(format!("the answer lacks {name}: {value}")))
}

fn decimal(value: &Value, name: &str, decimals: u32) -> ExchangeResult<i64> {
    let text = field(value, name)?;
    fixed::parse_truncating(text, decimals)
        .ok_or_else(|| ExchangeError::Unknown(format!("{name} is not a decimal: {text}")))
}

fn parse_order(value: &Value) -> ExchangeResult<Order> {
    Ok(Order {
        order_id: value["orderId"]
            .as_i64()
            .ok_or_else(|| ExchangeError::Unknown(format!("the answer lacks orderId: {value}")))?,
        client_order_id: field(value, "clientOrderId")?.to_string(),
        symbol: field(value, "symbol")?.to_string(),
        side: Side::parse(field(value, "side")?)
            .ok_or_else(|| ExchangeError::Unknown(format!("bad side: {value}")))?,
        status: field(value, "status")?.to_string(),
        executed_quantity: decimal(value, "executedQty", 3)?,
        average_price: decimal(value, "avgPrice", 2)?,
    })
}

/// The ids of an order's stop-loss and take-profit, derived from its own.
pub fn protection_ids(client_order_id: &str) -> (String, String) {
    (
        format!("{client_order_id}-sl"),
        format!("{client_order_id}-tp"),
    )
}

impl ExchangeClient for BinanceClient {
    fn balance(&self, credentials: &Credentials) -> ExchangeResult<Balance> {
        let value = self.signed(credentials, "GET", "/fapi/v2/balance", "")?;
        let usdt = value
            .as_array()
            .and_then(|list| list.iter().find(|a| a["asset"] == "USDT"));
        match usdt {
            Some(asset) => Ok(Balance {
                balance: decimal(asset, "balance", 2)?,
                available: decimal(asset, "availableBalance", 2)?,
            }),
            None => Ok(Balance {
                balance: 0,
                available: 0,
            }),
        }
    }

    fn place_order(
        &self,
        credentials: &Credentials,
        order: &OrderRequest,
    ) -> ExchangeResult<Order> {
        let entry = self.place_one(
            credentials,
            &order.symbol,
            &order.client_order_id,
            &format!(
                "side={}&type=MARKET&quantity={}",
                order.side.as_str(),
                fixed::fmt(order.quantity, 3)
            ),
        )?;
        let entry = self.with_fill(credentials, entry);
        // The entry is placed: a failure from here leaves it unprotected, and the caller must
        // come back (ask for the entry, then protect it again).
        self.protect(credentials, order).map_err(|e| match e {
            ExchangeError::Unknown(_) => e,
            other => ExchangeError::Unknown(format!(
                "the entry is placed, its protection is not: {other}"
            )),
        })?;
        Ok(entry)
    }

    fn protect(&self, credentials: &Credentials, order: &OrderRequest) -> ExchangeResult<()> {
        let (stop_id, profit_id) = protection_ids(&order.client_order_id);
        let exit = order.side.opposite().as_str();
        for (id, kind, price) in [
            (stop_id, "STOP_MARKET", order.stop_loss),
            (profit_id, "TAKE_PROFIT_MARKET", order.take_profit),
        ] {
            self.place_one(
                credentials,
                &order.symbol,
                &id,
                &format!(
                    "side={exit}&type={kind}&stopPrice={}&closePosition=true",
                    fixed::fmt(price, 2)
                ),
            )?;
        }
        Ok(())
    }

    fn order_by_client_id(
        &self,
        credentials: &Credentials,
        symbol: &str,
        client_order_id: &str,
    ) -> ExchangeResult<Option<Order>> {
        let params = format!("symbol={symbol}&origClientOrderId={client_order_id}");
        match self.signed(credentials, "GET", "/fapi/v1/order", &params) {
            Ok(value) => parse_order(&value).map(Some),
            Err(ExchangeError::Rejected { code, .. }) if code == NO_SUCH_ORDER => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn positions(&self, credentials: &Credentials) -> ExchangeResult<Vec<Position>> {
        let value = self.signed(credentials, "GET", "/fapi/v2/positionRisk", "")?;
        let list = value.as_array().cloned().unwrap_or_default();
        let mut positions = Vec::new();
        for p in &list {
            let amount = decimal(p, "positionAmt", 3)?;
            if amount == 0 {
                continue;
            }
            positions.push(Position {
                symbol: field(p, "symbol")?.to_string(),
                amount,
                entry_price: decimal(p, "entryPrice", 2)?,
                mark_price: decimal(p, "markPrice", 2)?,
                unrealized_profit: decimal(p, "unRealizedProfit", 2)?,
            });
        }
        Ok(positions)
    }

    fn close(
        &self,
        credentials: &Credentials,
        symbol: &str,
        client_order_id: &str,
    ) -> ExchangeResult<Order> {
        if let Some(done) = self.order_by_client_id(credentials, symbol, client_order_id)? {
            return Ok(done);
        }
        let position = self
            .positions(credentials)?
            .into_iter()
            .find(|p| p.symbol == symbol);
        let held = position.as_ref().map_or(0, |p| p.amount);
        if held == 0 {
            return Err(ExchangeError::Rejected {
                code: -2022,
                message: format!("no open position on {symbol}"),
            });
        }
        let side = if held > 0 { Side::Sell } else { Side::Buy };
        let placed = self.place_one(
            credentials,
            symbol,
            client_order_id,
            &format!(
                "side={}&type=MARKET&quantity={}&reduceOnly=true",
                side.as_str(),
                fixed::fmt(held.abs(), 3)
            ),
        )?;
        let mut closed = self.with_fill(credentials, placed);
        // Still no fill reported: the mark price read just before the close prices it. Without
        // a price the exit would be the entry, a profit of 0 and no commission.
        let mark = position.map_or(0, |p| p.mark_price);
        if closed.average_price <= 0 && mark > 0 {
            log::warn!(
                "exchange: close {client_order_id} on {symbol} reported no fill; priced at the                  mark price {}",
                fixed::fmt(mark, 2)
            );
            closed.average_price = mark;
        }
        Ok(closed)
    }
}
