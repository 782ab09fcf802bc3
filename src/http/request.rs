//! The engine-neutral request, borrowed from the connection's read buffer.

/// Request methods the router knows; anything else is `Other` (and gets 405 or 404).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Other,
}

impl Method {
    pub fn from_bytes(method: &str) -> Method {
        match method {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Options => "OPTIONS",
            Method::Other => "OTHER",
        }
    }
}

/// One parsed request. It borrows the connection's buffer: a handler that answers later copies
/// what it needs before returning its future.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: Method,
    /// Path without the query string, e.g. `/api/enterprise/metrics`.
    pub path: &'a str,
    /// The query string after `?`, if any.
    pub query: Option<&'a str>,
    pub(crate) headers: &'a [httparse::Header<'a>],
    pub body: &'a [u8],
    /// Whether the connection stays open after this request.
    pub keep_alive: bool,
}

impl<'a> Request<'a> {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// A query parameter's raw value (`a=1&b=2`); no percent-decoding.
    pub fn query_param(&self, name: &str) -> Option<&'a str> {
        self.query?.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then_some(value)
        })
    }
}
