//! Signed requests, as Binance and Bybit sign them: a program sends its key id and
//! `X-CBC-SIGNATURE` = hex HMAC-SHA256, keyed by the key's secret, over
//! `timestamp + method + path + query + body` (the query without its `?`, the timestamp as
//! sent). The server refuses a timestamp older than the receive window or more than
//! [`MAX_FUTURE_MS`] ahead of its clock, a signature that does not match (compared in constant
//! time), and a signature already seen inside its window ([`ReplaySet`]).
//!
//! The replay set is per shard, like every other piece of request state: a connection stays on
//! the shard that accepted it, so a replay on the same connection, or on any connection that
//! lands on the same shard, is refused. A copy sent on a connection another shard accepted is
//! not seen by this shard's set; the receive window bounds how long such a copy can be used.

use std::collections::HashMap;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::hex;

pub const API_KEY_HEADER: &str = "X-CBC-APIKEY";
pub const TIMESTAMP_HEADER: &str = "X-CBC-TIMESTAMP";
pub const RECV_WINDOW_HEADER: &str = "X-CBC-RECV-WINDOW";
pub const SIGNATURE_HEADER: &str = "X-CBC-SIGNATURE";

/// The receive window when `X-CBC-RECV-WINDOW` is absent (ms).
pub const DEFAULT_RECV_WINDOW_MS: u64 = 5_000;
/// The longest receive window a request may ask for (ms).
pub const MAX_RECV_WINDOW_MS: u64 = 60_000;
/// How far ahead of the server's clock a timestamp may be (ms): clocks drift.
pub const MAX_FUTURE_MS: u64 = 1_000;
/// Hex digits of a key id (16 random bytes).
pub const KEY_ID_HEX_LEN: usize = 32;

/// Why a signed request is refused; each answers 401 with its own code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// A header is missing or not of its form; the text names which and what is expected.
    Malformed(&'static str),
    /// The timestamp is older than the receive window.
    Expired,
    /// The timestamp is more than [`MAX_FUTURE_MS`] ahead.
    FromTheFuture,
    /// The signature does not match the request.
    BadSignature,
    /// The same signature was already accepted inside its window.
    Replayed,
}

impl SignatureError {
    /// The error code and message of the 401.
    pub fn describe(self) -> (&'static str, &'static str) {
        match self {
            SignatureError::Malformed(what) => ("bad_signed_headers", what),
            SignatureError::Expired => (
                "timestamp_expired",
                "X-CBC-TIMESTAMP is older than the receive window",
            ),
            SignatureError::FromTheFuture => (
                "timestamp_in_future",
                "X-CBC-TIMESTAMP is more than 1 s ahead of the server's clock",
            ),
            SignatureError::BadSignature => (
                "bad_signature",
                "X-CBC-SIGNATURE does not match the request",
            ),
            SignatureError::Replayed => (
                "signature_replayed",
                "this signature was already used; sign each request afresh",
            ),
        }
    }
}

/// The signed headers of a request, parsed (owned: a request whose key is looked up in the
/// database is checked after the lookup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    pub key_id: String,
    /// As sent: it is part of what was signed.
    pub timestamp_text: String,
    pub timestamp_ms: u64,
    pub recv_window_ms: u64,
    pub signature: [u8; 32],
}

/// Parses the four headers (`api_key` is present: the caller found it).
pub fn parse_headers(
    api_key: &[u8],
    timestamp: Option<&[u8]>,
    recv_window: Option<&[u8]>,
    signature: Option<&[u8]>,
) -> Result<SignedHeaders, SignatureError> {
    use SignatureError::Malformed;
    let key_id = std::str::from_utf8(api_key)
        .ok()
        .filter(|id| {
            id.len() == KEY_ID_HEX_LEN && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
        .ok_or(Malformed(
            "X-CBC-APIKEY must be a key id: 32 lower-case hex digits",
        ))?;
    let timestamp_text = timestamp
        .and_then(|t| std::str::from_utf8(t).ok())
        .filter(|t| (1..=16).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit()))
        .ok_or(Malformed(
            "X-CBC-TIMESTAMP must be milliseconds since the Unix epoch",
        ))?;
    let timestamp_ms = timestamp_text
        .parse()
        .map_err(|_| Malformed("X-CBC-TIMESTAMP must be milliseconds since the Unix epoch"))?;
    let recv_window_ms = match recv_window {
        None => DEFAULT_RECV_WINDOW_MS,
        Some(text) => std::str::from_utf8(text)
            .ok()
            .filter(|t| t.len() <= 6 && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse().ok())
            .filter(|ms| (1..=MAX_RECV_WINDOW_MS).contains(ms))
            .ok_or(Malformed(
                "X-CBC-RECV-WINDOW must be 1 to 60000 milliseconds",
            ))?,
    };
    let signature = signature
        .and_then(hex::decode_array::<32>)
        .ok_or(Malformed(
            "X-CBC-SIGNATURE must be a hex HMAC-SHA256 (64 hex digits)",
        ))?;
    Ok(SignedHeaders {
        key_id: key_id.to_string(),
        timestamp_text: timestamp_text.to_string(),
        timestamp_ms,
        recv_window_ms,
        signature,
    })
}

/// Whether `timestamp_ms` is inside the window at `now_ms`: at most `recv_window_ms` old and at
/// most [`MAX_FUTURE_MS`] ahead (both edges accepted).
pub fn check_window(
    now_ms: u64,
    timestamp_ms: u64,
    recv_window_ms: u64,
) -> Result<(), SignatureError> {
    if timestamp_ms > now_ms.saturating_add(MAX_FUTURE_MS) {
        Err(SignatureError::FromTheFuture)
    } else if now_ms.saturating_sub(timestamp_ms) > recv_window_ms {
        Err(SignatureError::Expired)
    } else {
        Ok(())
    }
}

/// The request's parts that are signed.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    pub timestamp: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    /// Without the `?`; empty when there is none.
    pub query: &'a str,
    pub body: &'a [u8],
}

/// HMAC-SHA256 of `timestamp + method + path + query + body` under `secret`.
pub fn sign(secret: &[u8], signed: &Signed<'_>) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes a key of any length");
    for part in [
        signed.timestamp.as_bytes(),
        signed.method.as_bytes(),
        signed.path.as_bytes(),
        signed.query.as_bytes(),
        signed.body,
    ] {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Whether `signature` signs `signed` under `secret`, compared in constant time.
pub fn verify(
    secret: &[u8],
    signed: &Signed<'_>,
    signature: &[u8; 32],
) -> Result<(), SignatureError> {
    if bool::from(sign(secret, signed).ct_eq(signature)) {
        Ok(())
    } else {
        Err(SignatureError::BadSignature)
    }
}

/// Signatures accepted on this shard, each kept until its window has passed.
#[derive(Debug, Default)]
pub struct ReplaySet {
    /// Signature -> the time (ms) after which its timestamp is out of the window anyway.
    seen: HashMap<[u8; 32], u64>,
    /// Past this many entries, the expired ones are dropped (it doubles as the set grows).
    prune_at: usize,
}

/// Entries kept before the first prune.
const FIRST_PRUNE_AT: usize = 1_024;

impl ReplaySet {
    /// Records a signature whose request passed every other check; refuses one already seen
    /// and still inside its window.
    pub fn check_and_record(
        &mut self,
        now_ms: u64,
        headers: &SignedHeaders,
    ) -> Result<(), SignatureError> {
        let expires = headers.timestamp_ms.saturating_add(headers.recv_window_ms);
        if self
            .seen
            .get(&headers.signature)
            .is_some_and(|e| *e >= now_ms)
        {
            return Err(SignatureError::Replayed);
        }
        if self.seen.len() >= self.prune_at.max(FIRST_PRUNE_AT) {
            self.seen.retain(|_, expires| *expires >= now_ms);
            self.prune_at = 2 * self.seen.len();
        }
        self.seen.insert(headers.signature, expires);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_ID: &[u8] = b"0123456789abcdef0123456789abcdef";

    /// RFC 4231 test case 2 ("Jefe"), and a request signed as a client would.
    #[test]
    fn signature_vectors() {
        let jefe = Signed {
            timestamp: "what do ya want ",
            method: "for nothing?",
            path: "",
            query: "",
            body: b"",
        };
        assert_eq!(
            hex::encode(&sign(b"Jefe", &jefe)),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let request = Signed {
            timestamp: "1700000000000",
            method: "POST",
            path: "/api/orders",
            query: "symbol=BTCBRL",
            body: br#"{"qty":1}"#,
        };
        let secret = b"secret";
        let signature = sign(secret, &request);
        assert_eq!(verify(secret, &request, &signature), Ok(()));
        // Every signed part counts: change one byte of each and the signature fails.
        let altered = [
            Signed {
                timestamp: "1700000000001",
                ..request
            },
            Signed {
                method: "PUT",
                ..request
            },
            Signed {
                path: "/api/order",
                ..request
            },
            Signed {
                query: "symbol=BTCUSD",
                ..request
            },
            Signed {
                body: br#"{"qty":2}"#,
                ..request
            },
        ];
        for changed in altered {
            assert_eq!(
                verify(secret, &changed, &signature),
                Err(SignatureError::BadSignature),
                "{changed:?}"
            );
        }
        assert_eq!(
            verify(b"other", &request, &signature),
            Err(SignatureError::BadSignature)
        );
    }

    #[test]
    fn window_edges() {
        let now = 1_700_000_000_000;
        let cases = [
            (now, 5_000, Ok(())),
            (now - 5_000, 5_000, Ok(())),
            (now - 5_001, 5_000, Err(SignatureError::Expired)),
            (now - 60_000, 60_000, Ok(())),
            (now + 1_000, 5_000, Ok(())),
            (now + 1_001, 5_000, Err(SignatureError::FromTheFuture)),
            (0, 60_000, Err(SignatureError::Expired)),
            (u64::MAX, 5_000, Err(SignatureError::FromTheFuture)),
        ];
        for (timestamp, window, expected) in cases {
            assert_eq!(
                check_window(now, timestamp, window),
                expected,
                "{timestamp} {window}"
            );
        }
    }

    #[test]
    fn header_parsing() {
        let signature = [b'a'; 64];
        let parse =
            |key: &'static [u8], ts: Option<&'static [u8]>, window: Option<&'static [u8]>| {
                parse_headers(key, ts, window, Some(&signature))
            };
        let parsed = parse(KEY_ID, Some(b"1700000000000"), None).unwrap();
        assert_eq!(parsed.timestamp_ms, 1_700_000_000_000);
        assert_eq!(parsed.recv_window_ms, DEFAULT_RECV_WINDOW_MS);
        assert_eq!(parsed.signature, [0xaa; 32]);
        assert_eq!(
            parse(KEY_ID, Some(b"1"), Some(b"60000"))
                .unwrap()
                .recv_window_ms,
            60_000
        );
        let malformed = |r: Result<SignedHeaders, SignatureError>| {
            matches!(r, Err(SignatureError::Malformed(_)))
        };
        assert!(malformed(parse(b"short", Some(b"1"), None)));
        assert!(malformed(parse(
            b"0123456789ABCDEF0123456789abcdef",
            Some(b"1"),
            None
        )));
        assert!(malformed(parse(KEY_ID, None, None)));
        assert!(malformed(parse(KEY_ID, Some(b"-1"), None)));
        assert!(malformed(parse(KEY_ID, Some(b"12345678901234567"), None)));
        assert!(malformed(parse(KEY_ID, Some(b"1"), Some(b"60001"))));
        assert!(malformed(parse(KEY_ID, Some(b"1"), Some(b"0"))));
        assert!(malformed(parse(KEY_ID, Some(b"1"), Some(b"5s"))));
        assert!(malformed(parse_headers(KEY_ID, Some(b"1"), None, None)));
        assert!(malformed(parse_headers(
            KEY_ID,
            Some(b"1"),
            None,
            Some(b"abc")
        )));
    }

    #[test]
    fn replays_are_refused_inside_the_window_only() {
        let mut set = ReplaySet::default();
        let signature = [b'7'; 64];
        let headers =
            parse_headers(KEY_ID, Some(b"1000"), Some(b"5000"), Some(&signature)).unwrap();
        assert_eq!(set.check_and_record(1_000, &headers), Ok(()));
        assert_eq!(
            set.check_and_record(1_001, &headers),
            Err(SignatureError::Replayed)
        );
        assert_eq!(
            set.check_and_record(6_000, &headers),
            Err(SignatureError::Replayed)
        );
        // Past the window the timestamp check refuses it; the set may forget it.
        assert_eq!(set.check_and_record(6_001, &headers), Ok(()));
        // The set prunes what has expired instead of growing without bound.
        for i in 0..10_000u64 {
            let mut h = headers.clone();
            h.signature[..8].copy_from_slice(&i.to_le_bytes());
            h.timestamp_ms = i;
            h.recv_window_ms = 1;
            set.check_and_record(i, &h).unwrap();
        }
        assert!(set.len() < 3_000, "{} kept", set.len());
    }
}
