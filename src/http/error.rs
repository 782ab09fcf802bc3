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
