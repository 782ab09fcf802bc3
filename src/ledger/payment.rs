//! The payment provider's webhook, pure: the Stripe-style signature and the event's shape.
//!
//! `Payment-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` under the
//! shared `PAYMENT_WEBHOOK_SECRET`; several `v1` may be sent (a secret being rolled), one must
//! match, compared in constant time. `t` must lie within the tolerance of now, either way.

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// The request header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Payment-Signature";
/// How far `t` may be from now (s).
pub const TOLERANCE_SECS: u64 = 300;

/// Why a delivery is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// No header, or not `t=...,v1=...` (400).
    Malformed,
    /// `t` outside the tolerance (401).
    Expired,
    /// No `v1` matches (401).
    Mismatch,
}

impl SignatureError {
    /// (status, code, message) of the answer.
    pub fn describe(self) -> (u16, &'static str, &'static str) {
        match self {
            SignatureError::Malformed => (
                400,
                "bad_signature_header",
                "Payment-Signature must be t=<unix seconds>,v1=<hex HMAC-SHA256>",
            ),
            SignatureError::Expired => (
                401,
                "signature_expired",
                "the signature's timestamp is outside the 300 s tolerance",
            ),
            SignatureError::Mismatch => (
                401,
                "invalid_signature",
                "the signature does not match the body",
            ),
        }
    }
}

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header for `body` signed at `timestamp` (what the provider sends; for tests and tools).
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let t = timestamp.to_string();
    let digest = mac(secret, &t, body).finalize().into_bytes();
    format!("t={t},v1={}", crate::auth::hex::encode(&digest))
}

/// Checks a delivery's signature at `now` (unix seconds).
pub fn verify(
    secret: &[u8],
    header: Option<&[u8]>,
    body: &[u8],
    now: u64,
) -> Result<(), SignatureError> {
    let header = header
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or(SignatureError::Malformed)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) if timestamp.is_none() => timestamp = Some(t),
            Some(("v1", hex)) => signatures.push(
                crate::auth::hex::decode_array::<32>(hex.as_bytes())
                    .ok_or(SignatureError::Malformed)?,
            ),
            Some((_, _)) => {}
            None => return Err(SignatureError::Malformed),
        }
    }
    let text = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() || text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::Malformed);
    }
    let t: u64 = text.parse().map_err(|_| SignatureError::Malformed)?;
    if t.abs_diff(now) > TOLERANCE_SECS {
        return Err(SignatureError::Expired);
    }
    let matched = signatures
        .iter()
        .any(|signature| mac(secret, text, body).verify_slice(signature).is_ok());
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// A provider event: `{"id", "type", "data": {"recharge_id", "amount", "currency"}}`.
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub data: Option<EventData>,
}

/// What a payment event pays.
#[derive(Debug, Clone, Deserialize)]
pub struct EventData {
    pub recharge_id: i64,
    pub amount: serde_json::Value,
    pub currency: String,
}

/// The event type that credits a recharge; others are acknowledged and ignored.
pub const PAYMENT_SUCCEEDED: &str = "payment.succeeded";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let secret = b"whsec_test";
        let body = br#"{"id":"evt_1"}"#;
        let now = 1_800_000_000;
        let good = sign(secret, now, body);
        let other = sign(b"other", now, body);
        let (_, other_v1) = other.split_once(",v1=").unwrap();
        let (_, good_v1) = good.split_once(",v1=").unwrap();
        let rolled = format!("t={now},v1={other_v1},v1={good_v1}");
        let cases: Vec<(Option<String>, u64, Result<(), SignatureError>)> = vec![
            (Some(good.clone()), now, Ok(())),
            (Some(good.clone()), now + 300, Ok(())),
            (Some(good.clone()), now - 300, Ok(())),
            (Some(good.clone()), now + 301, Err(SignatureError::Expired)),
            (Some(good.clone()), now - 301, Err(SignatureError::Expired)),
            (Some(other), now, Err(SignatureError::Mismatch)),
            (Some(rolled), now, Ok(())),
            (None, now, Err(SignatureError::Malformed)),
            (Some("garbage".into()), now, Err(SignatureError::Malformed)),
            (
                Some(format!("t={now}")),
                now,
                Err(SignatureError::Malformed),
            ),
            (
                Some(format!("t=-1,v1={good_v1}")),
                now,
                Err(SignatureError::Malformed),
            ),
            (
                Some(format!("t={now},v1=zz")),
                now,
                Err(SignatureError::Malformed),
            ),
        ];
        for (header, at, expected) in cases {
            assert_eq!(
                verify(secret, header.as_deref().map(str::as_bytes), body, at),
                expected,
                "{header:?} at {at}"
            );
        }
        // The body is signed: one byte changed fails.
        assert_eq!(
            verify(secret, Some(good.as_bytes()), br#"{"id":"evt_2"}"#, now),
            Err(SignatureError::Mismatch)
        );
    }
}
