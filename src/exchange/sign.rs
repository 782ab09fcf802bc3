//! Binance's request signature: HMAC-SHA256, keyed with the API secret, over the request's
//! parameters as sent (the query string, then the body), in lowercase hex, sent as the last
//! parameter `signature`; the API key goes in the `X-MBX-APIKEY` header. Every signed request
//! carries `timestamp` (ms) and may carry `recvWindow` (ms, default 5000): the exchange refuses
//! one older than that.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::auth::hex;

pub const API_KEY_HEADER: &str = "X-MBX-APIKEY";
pub const DEFAULT_RECV_WINDOW_MS: u64 = 5_000;

fn mac(secret: &[u8], payload: &[u8]) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(payload);
    mac
}

/// The signature of `payload` (query string, then body), in hex.
pub fn sign(secret: &[u8], payload: &[u8]) -> String {
    hex::encode(&mac(secret, payload).finalize().into_bytes())
}

/// Whether `signature` (hex) signs `payload`, compared in constant time.
pub fn verify(secret: &[u8], payload: &[u8], signature: &str) -> bool {
    let expected = sign(secret, payload);
    expected.len() == signature.len() && bool::from(expected.as_bytes().ct_eq(signature.as_bytes()))
}

/// `params` with `signature=` appended: the query string to send.
pub fn signed_query(secret: &[u8], params: &str) -> String {
    format!("{params}&signature={}", sign(secret, params.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of Binance's API documentation ("SIGNED Endpoint Examples").
    #[test]
    fn matches_binances_documented_example() {
        let secret = b"NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j";
        let params = "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559";
        assert_eq!(
            sign(secret, params.as_bytes()),
            "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"
        );
        assert!(verify(
            secret,
            params.as_bytes(),
            &sign(secret, params.as_bytes())
        ));
        assert!(!verify(
            secret,
            b"symbol=LTCBTC",
            &sign(secret, params.as_bytes())
        ));
    }
}
