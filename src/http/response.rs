//! The engine-neutral response and its encoding.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

/// An HTTP status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StatusCode(pub u16);

impl StatusCode {
    pub const CONTINUE: StatusCode = StatusCode(100);
    pub const OK: StatusCode = StatusCode(200);
    pub const BAD_REQUEST: StatusCode = StatusCode(400);
    pub const NOT_FOUND: StatusCode = StatusCode(404);
    pub const METHOD_NOT_ALLOWED: StatusCode = StatusCode(405);
    pub const LENGTH_REQUIRED: StatusCode = StatusCode(411);
    pub const PAYLOAD_TOO_LARGE: StatusCode = StatusCode(413);
    pub const URI_TOO_LONG: StatusCode = StatusCode(414);
    pub const TOO_MANY_REQUESTS: StatusCode = StatusCode(429);
    pub const HEADERS_TOO_LARGE: StatusCode = StatusCode(431);
    pub const INTERNAL_SERVER_ERROR: StatusCode = StatusCode(500);
    pub const SERVICE_UNAVAILABLE: StatusCode = StatusCode(503);
    pub const VERSION_NOT_SUPPORTED: StatusCode = StatusCode(505);

    /// The status line, ready to write.
    fn status_line(self) -> &'static [u8] {
        match self.0 {
            100 => b"HTTP/1.1 100 Continue\r\n",
            200 => b"HTTP/1.1 200 OK\r\n",
            201 => b"HTTP/1.1 201 Created\r\n",
            202 => b"HTTP/1.1 202 Accepted\r\n",
            204 => b"HTTP/1.1 204 No Content\r\n",
            302 => b"HTTP/1.1 302 Found\r\n",
            400 => b"HTTP/1.1 400 Bad Request\r\n",
            401 => b"HTTP/1.1 401 Unauthorized\r\n",
            403 => b"HTTP/1.1 403 Forbidden\r\n",
            404 => b"HTTP/1.1 404 Not Found\r\n",
            405 => b"HTTP/1.1 405 Method Not Allowed\r\n",
            408 => b"HTTP/1.1 408 Request Timeout\r\n",
            409 => b"HTTP/1.1 409 Conflict\r\n",
            410 => b"HTTP/1.1 410 Gone\r\n",
            411 => b"HTTP/1.1 411 Length Required\r\n",
            413 => b"HTTP/1.1 413 Content Too Large\r\n",
            414 => b"HTTP/1.1 414 URI Too Long\r\n",
            422 => b"HTTP/1.1 422 Unprocessable Content\r\n",
            429 => b"HTTP/1.1 429 Too Many Requests\r\n",
            431 => b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
            500 => b"HTTP/1.1 500 Internal Server Error\r\n",
            501 => b"HTTP/1.1 501 Not Implemented\r\n",
            502 => b"HTTP/1.1 502 Bad Gateway\r\n",
            503 => b"HTTP/1.1 503 Service Unavailable\r\n",
            504 => b"HTTP/1.1 504 Gateway Timeout\r\n",
            505 => b"HTTP/1.1 505 HTTP Version Not Supported\r\n",
            _ => b"HTTP/1.1 500 Internal Server Error\r\n",
        }
    }

    pub fn is_server_error(self) -> bool {
        self.0 >= 500
    }
}

pub const JSON: &str = "application/json";

/// The `Connection` header a response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionHeader {
    /// HTTP/1.1 keeps the connection by default: nothing to say.
    Omit,
    /// The connection ends after this response.
    Close,
    /// An HTTP/1.0 client asked to keep the connection, and it is kept.
    KeepAlive,
}

/// A response: status, content type, extra headers and a body. The codec adds `Server`, `Date`,
/// `Content-Length` and `Connection`.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl Response {
    pub fn new(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Self {
        Response::new(status, JSON, body)
    }

    /// The one error shape: `{"error": {"code": ..., "message": ...}}`.
    pub fn error(status: StatusCode, code: &str, message: &str) -> Self {
        let body = serde_json::json!({ "error": { "code": code, "message": message } });
        Response::json(status, body.to_string())
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Appends the encoded response to `out`. `head_only` omits the body (HEAD).
    pub fn encode(
        &self,
        out: &mut Vec<u8>,
        date: &[u8],
        head_only: bool,
        connection: ConnectionHeader,
    ) {
        out.extend_from_slice(self.status.status_line());
        out.extend_from_slice(b"Server: coinbit\r\nDate: ");
        out.extend_from_slice(date);
        out.extend_from_slice(b"\r\nContent-Type: ");
        out.extend_from_slice(self.content_type.as_bytes());
        out.extend_from_slice(b"\r\nContent-Length: ");
        out.extend_from_slice(itoa::Buffer::new().format(self.body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        match connection {
            ConnectionHeader::Omit => {}
            ConnectionHeader::Close => out.extend_from_slice(b"Connection: close\r\n"),
            ConnectionHeader::KeepAlive => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        }
        out.extend_from_slice(b"\r\n");
        if !head_only {
            out.extend_from_slice(&self.body);
        }
    }
}

/// A future that yields a response later (a database reply, a timer).
pub type PendingResponse = Pin<Box<dyn Future<Output = Response>>>;

/// What a handler returns: a response now, or a future that yields one.
pub enum Reply {
    Ready(Response),
    Later(PendingResponse),
}

impl From<Response> for Reply {
    fn from(response: Response) -> Self {
        Reply::Ready(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_head_without_body_and_close_when_asked() {
        let response = Response::json(StatusCode::OK, "{}").with_header("Allow", "GET");
        let date = b"Sun, 06 Nov 1994 08:49:37 GMT";
        let mut out = Vec::new();
        response.encode(&mut out, date, false, ConnectionHeader::Omit);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "HTTP/1.1 200 OK\r\nServer: coinbit\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Content-Type: application/json\r\nContent-Length: 2\r\nAllow: GET\r\n\r\n{}"
        );
        out.clear();
        response.encode(&mut out, date, true, ConnectionHeader::Close);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with("Content-Length: 2\r\nAllow: GET\r\nConnection: close\r\n\r\n"),
            "{text}"
        );
    }

    #[test]
    fn error_bodies_are_json() {
        let response = Response::error(StatusCode::NOT_FOUND, "not_found", "no \"route\"");
        let value: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(value["error"]["code"], "not_found");
        assert_eq!(value["error"]["message"], "no \"route\"");
    }
}
