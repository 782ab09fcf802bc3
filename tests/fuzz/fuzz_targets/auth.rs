//! The accounts API's untrusted input: the registration, login and new API key bodies through
//! the checks their routes run, and the signed-request headers (`X-CBC-APIKEY`,
//! `X-CBC-TIMESTAMP`, `X-CBC-RECV-WINDOW`, `X-CBC-SIGNATURE`) and bearer tokens through the
//! parsers the access check uses.
//!
//! Input layout: the whole input is each body; the same input cut at `\n` gives the header
//! values in that order (fewer pieces: the later headers are absent), a fifth piece being the
//! signed body. The bearer token is the first piece.
//!
//! Checked on every input:
//! - nothing panics;
//! - a refused body gets a 4xx in the error envelope `{"error": {"code", "message"}}`;
//! - accepted signed headers are what the rules allow (a 32 lower-case hex key id, a timestamp
//!   of digits that is the one sent, a window of 1 to 60000 ms, 5000 when absent, a signature
//!   of 64 hex digits), the window check accepts its edges and refuses one step past them, and
//!   a signature over the request verifies while one with a bit flipped does not;
//! - a bearer token is accepted only as 64 hex digits.
#![no_main]

use coinbit::app::accounts;
use coinbit::auth::signature::{
    check_window, parse_headers, sign, verify, SignatureError, Signed, DEFAULT_RECV_WINDOW_MS,
    MAX_FUTURE_MS, MAX_RECV_WINDOW_MS,
};
use coinbit::auth::{hex, token};
use libfuzzer_sys::fuzz_target;

mod refusal;
use refusal::check_refusal;

fn check_signed_headers(input: &[u8]) {
    let mut pieces = input.splitn(5, |b| *b == b'\n');
    let api_key = pieces.next().unwrap_or_default();
    let (timestamp, window, signature) = (pieces.next(), pieces.next(), pieces.next());
    let body = pieces.next().unwrap_or_default();

    let bearer = token::token_digest(api_key);
    assert_eq!(
        bearer.is_some(),
        api_key.len() == 64 && api_key.iter().all(u8::is_ascii_hexdigit),
        "a bearer token is 64 hex digits"
    );

    let Ok(headers) = parse_headers(api_key, timestamp, window, signature) else {
        return;
    };
    assert_eq!(headers.key_id.as_bytes(), api_key);
    assert!(
        headers.key_id.len() == 32
            && headers
                .key_id
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    );
    assert_eq!(Some(headers.timestamp_text.as_bytes()), timestamp);
    assert_eq!(
        headers.timestamp_text.parse::<u64>(),
        Ok(headers.timestamp_ms)
    );
    assert!((1..=MAX_RECV_WINDOW_MS).contains(&headers.recv_window_ms));
    if window.is_none() {
        assert_eq!(headers.recv_window_ms, DEFAULT_RECV_WINDOW_MS);
    }
    let sent = signature.expect("a parsed signature was sent");
    assert_eq!(
        hex::encode(&headers.signature).as_bytes(),
        &sent.to_ascii_lowercase()[..]
    );

    // The window: both edges in, one millisecond past either out.
    let (ts, window) = (headers.timestamp_ms, headers.recv_window_ms);
    assert_eq!(check_window(ts, ts, window), Ok(()));
    assert_eq!(check_window(ts.saturating_add(window), ts, window), Ok(()));
    if let Some(late) = ts.checked_add(window + 1) {
        assert_eq!(check_window(late, ts, window), Err(SignatureError::Expired));
    }
    if let Some(early) = ts.checked_sub(MAX_FUTURE_MS) {
        assert_eq!(check_window(early, ts, window), Ok(()));
    }
    if let Some(earlier) = ts.checked_sub(MAX_FUTURE_MS + 1) {
        assert_eq!(
            check_window(earlier, ts, window),
            Err(SignatureError::FromTheFuture)
        );
    }

    // The signature over this request, keyed by the sent signature's bytes.
    let signed = Signed {
        timestamp: &headers.timestamp_text,
        method: "POST",
        path: "/api/orders",
        query: "",
        body,
    };
    let good = sign(&headers.signature, &signed);
    assert_eq!(verify(&headers.signature, &signed, &good), Ok(()));
    let mut bad = good;
    bad[usize::from(body.first().copied().unwrap_or(0)) % 32] ^= 1;
    assert_eq!(
        verify(&headers.signature, &signed, &bad),
        Err(SignatureError::BadSignature)
    );
}

fuzz_target!(|input: &[u8]| {
    check_refusal(accounts::check_registration_body(input));
    check_refusal(accounts::check_login_body(input));
    check_refusal(accounts::check_new_key_body(input));
    check_signed_headers(input);
});
