//! Protocol errors found before a request reaches the router.

use super::response::{Response, StatusCode};

/// Why a request was refused by the codec. Each maps to one status; all close the connection,
/// since the rest of the byte stream cannot be trusted (or, for 413, will not be read). Every
/// one is the client's error, 505 included: the metrics count them apart from server errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("request line longer than {limit} bytes")]
    UriTooLong { limit: usize },
    #[error("request header section larger than {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("more than {limit} request header fields")]
    TooManyHeaders { limit: usize },
    #[error("request body of {length} bytes exceeds the {limit}-byte limit")]
    PayloadTooLarge { length: u64, limit: usize },
    #[error("a request body needs Content-Length: {0}")]
    LengthRequired(&'static str),
    #[error("HTTP version not supported")]
    VersionNotSupported,
}

impl HttpError {
    pub fn status(&self) -> StatusCode {
        match self {
            HttpError::BadRequest(_) => StatusCode::BAD_REQUEST,
            HttpError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            HttpError::HeadersTooLarge { .. } | HttpError::TooManyHeaders { .. } => {
                StatusCode::HEADERS_TOO_LARGE
            }
            HttpError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::LengthRequired(_) => StatusCode::LENGTH_REQUIRED,
            HttpError::VersionNotSupported => StatusCode::VERSION_NOT_SUPPORTED,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            HttpError::BadRequest(_) => "bad_request",
            HttpError::UriTooLong { .. } => "uri_too_long",
            HttpError::HeadersTooLarge { .. } | HttpError::TooManyHeaders { .. } => {
                "headers_too_large"
            }
            HttpError::PayloadTooLarge { .. } => "payload_too_large",
            HttpError::LengthRequired(_) => "length_required",
            HttpError::VersionNotSupported => "http_version_not_supported",
        }
    }

    /// The JSON error response sent before the connection is closed.
    pub fn response(&self) -> Response {
        Response::error(self.status(), self.code(), &self.to_string())
    }
}

/// Bytes of a client's input an error message quotes at most: a message never grows with what
/// was sent.
pub const QUOTED_INPUT_BYTES: usize = 64;
/// Longest error text from a parser (serde's, say) that may embed the input it choked on.
const PARSER_MESSAGE_BYTES: usize = 160;

/// `input` as an error message quotes it: its first [`QUOTED_INPUT_BYTES`] at most, escaped and
/// in double quotes, with `...` after the quote when it was cut.
pub fn quote_input(input: &str) -> String {
    let (shown, cut) = clip(input, QUOTED_INPUT_BYTES);
    format!("{shown:?}{}", if cut { "..." } else { "" })
}

/// A parser's error text, which may quote the input whole, cut to a bounded length.
pub fn clip_parser_message(message: &str) -> String {
    let (shown, cut) = clip(message, PARSER_MESSAGE_BYTES);
    format!("{shown}{}", if cut { "..." } else { "" })
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary, and
/// whether anything was cut.
fn clip(text: &str, max: usize) -> (&str, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let end = (0..=max)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    (&text[..end], true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_input_is_escaped_and_cut_to_a_short_prefix() {
        let long = "a".repeat(1_000_000);
        let cases: [(&str, String); 5] = [
            ("", "\"\"".to_string()),
            ("/x", "\"/x\"".to_string()),
            ("a\"b\n", "\"a\\\"b\\n\"".to_string()),
            (&long, format!("\"{}\"...", "a".repeat(64))),
            // A cut never splits a character: 32 two-byte characters fit, the 33rd does not.
            (&"é".repeat(40), format!("\"{}\"...", "é".repeat(32))),
        ];
        for (input, expected) in cases {
            assert_eq!(quote_input(input), expected, "{input:.20}");
        }
        let message = format!("invalid type: string \"{long}\", expected u32");
        let clipped = clip_parser_message(&message);
        assert!(
            clipped.len() <= PARSER_MESSAGE_BYTES + 3,
            "{}",
            clipped.len()
        );
        assert!(
            clipped.starts_with("invalid type: string \"aaa"),
            "{clipped}"
        );
    }
}
