//! Request-head parsing over `httparse`, with this server's size limits.

use std::mem::MaybeUninit;

use super::conn::Limits;
use super::error::HttpError;
use super::request::Method;

/// Most header fields in one request; more is answered like an oversized header section (431).
pub const MAX_HEADERS: usize = 64;

/// Bytes of empty lines accepted before a request line.
const MAX_LEADING_BLANK_BYTES: usize = 16;

/// Uninitialised header slots for one parse (no per-request memset).
pub type HeaderSlots<'b> = [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS];

pub fn header_slots<'b>() -> HeaderSlots<'b> {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// A complete request head.
#[derive(Debug)]
pub struct Head<'b, 'h> {
    pub method: Method,
    pub path: &'b str,
    pub query: Option<&'b str>,
    pub headers: &'h [httparse::Header<'b>],
    /// Bytes of the request line and header section, blank line included.
    pub head_len: usize,
    /// Body bytes that follow the head.
    pub content_length: usize,
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// HTTP/1.0: a persistent connection must be announced with `Connection: keep-alive`.
    pub http10: bool,
}

/// Parses the head at the start of `buf`. `Ok(None)` means more bytes are needed (and the ones so
/// far are within the limits).
pub fn parse_head<'b, 'h>(
    buf: &'b [u8],
    limits: &Limits,
    slots: &'h mut HeaderSlots<'b>,
) -> Result<Option<Head<'b, 'h>>, HttpError> {
    let line_len = match request_line_len(buf, limits.max_request_line) {
        Err(too_long @ HttpError::UriTooLong { .. }) => {
            return Err(malformed_line_start(buf, limits.max_request_line).unwrap_or(too_long))
        }
        other => other?,
    };
    // The head is judged on the bytes up to the header limit only, as a client that sends a
    // little at a time would have it judged: a flaw past the limit must not turn a 431 into a
    // 400 just because the bytes came in one read. A head within the limit ends inside them.
    let window = match line_len {
        Some(line) => &buf[..buf.len().min(line + limits.max_header_bytes)],
        None => buf,
    };
    let mut request = httparse::Request::new(&mut []);
    let status = request.parse_with_uninit_headers(window, slots);
    let head_len = match status {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            let header_bytes = buf.len() - line_len.unwrap_or(buf.len());
            if header_bytes > limits.max_header_bytes {
                return Err(HttpError::HeadersTooLarge {
                    limit: limits.max_header_bytes,
                });
            }
            return Ok(None);
        }
        Err(e) => return Err(parse_failure(e)),
    };
    // A complete head always has its request line.
    let line_len = line_len.unwrap_or(head_len);
    if head_len - line_len > limits.max_header_bytes {
        return Err(HttpError::HeadersTooLarge {
            limit: limits.max_header_bytes,
        });
    }
    let method = Method::from_bytes(request.method.unwrap_or(""));
    let target = request.path.unwrap_or("");
    let minor_version = request.version.unwrap_or(1);
    let headers: &'h [httparse::Header<'b>] = request.headers;

    let (path, query) = split_target(target)?;
    let framing = Framing::read(headers, minor_version)?;
    if framing.content_length > limits.max_body_bytes as u64 {
        return Err(HttpError::PayloadTooLarge {
            length: framing.content_length,
            limit: limits.max_body_bytes,
        });
    }
    check_host(framing.hosts, minor_version)?;
    Ok(Some(Head {
        method,
        path,
        query,
        headers,
        head_len,
        content_length: framing.content_length as usize,
        keep_alive: framing.keep_alive,
        // RFC 9110 section 10.1.1: a 100-continue expectation from HTTP/1.0 is ignored.
        expect_continue: framing.expect_continue && minor_version >= 1,
        http10: minor_version == 0,
    }))
}

fn parse_failure(e: httparse::Error) -> HttpError {
    match e {
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders { limit: MAX_HEADERS },
        httparse::Error::Version => HttpError::VersionNotSupported,
        e => HttpError::BadRequest(parse_error_text(e)),
    }
}

/// The error in the first `limit` bytes of a request line that is too long, if they hold one.
/// A malformed start is answered 400 however the bytes arrive: a read that brings only that start
/// is refused by the parser before the line could be measured, so a read that brings the whole
/// line must be refused the same way, not with 414.
fn malformed_line_start(buf: &[u8], limit: usize) -> Option<HttpError> {
    let start = buf.iter().position(|b| *b != b'\r' && *b != b'\n')?;
    let line_start = &buf[..buf.len().min(start + limit)];
    // No header slots: the line is still incomplete within `limit`, so none are reached.
    match httparse::Request::new(&mut []).parse(line_start) {
        Err(e) => Some(parse_failure(e)),
        Ok(_) => None,
    }
}

/// Length of the request line including its line break, once it is complete; an error when it
/// is (or has already grown) longer than the limit.
fn request_line_len(buf: &[u8], limit: usize) -> Result<Option<usize>, HttpError> {
    // Leading blank lines are allowed before a request (RFC 9112 section 2.2), a few of them:
    // an endless stream of line breaks must not grow the buffer past the line limit.
    let start = buf
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(buf.len());
    if start > MAX_LEADING_BLANK_BYTES {
        return Err(HttpError::BadRequest(
            "too many empty lines before the request",
        ));
    }
    let scan_end = buf.len().min(start + limit + 2);
    match buf[start..scan_end].iter().position(|b| *b == b'\n') {
        Some(newline) => {
            let without_crlf = if newline > 0 && buf[start + newline - 1] == b'\r' {
                newline - 1
            } else {
                newline
            };
            if without_crlf > limit {
                return Err(HttpError::UriTooLong { limit });
            }
            Ok(Some(start + newline + 1))
        }
        None if buf.len() - start > limit + 1 => Err(HttpError::UriTooLong { limit }),
        None => Ok(None),
    }
}

fn split_target(target: &str) -> Result<(&str, Option<&str>), HttpError> {
    // Absolute form (`http://host/path`) is accepted as RFC 9112 requires; the authority is
    // ignored. The common origin form skips the search.
    let origin = match (!target.starts_with('/'))
        .then(|| target.find("://"))
        .flatten()
    {
        Some(scheme_end) => {
            let after = &target[scheme_end + 3..];
            after.find('/').map(|slash| &after[slash..]).unwrap_or("/")
        }
        None => target,
    };
    if !(origin.starts_with('/') || origin == "*") {
        return Err(HttpError::BadRequest("request target must be a path"));
    }
    // A byte scan: targets are short, and `str::split_once` sets up a searcher per call.
    Ok(match origin.bytes().position(|b| b == b'?') {
        Some(at) => (&origin[..at], Some(&origin[at + 1..])),
        None => (origin, None),
    })
}

/// How the message is framed and whether the connection persists.
struct Framing {
    content_length: u64,
    keep_alive: bool,
    expect_continue: bool,
    /// Host header fields seen.
    hosts: usize,
}

impl Framing {
    fn read(headers: &[httparse::Header<'_>], minor_version: u8) -> Result<Framing, HttpError> {
        let mut content_length: Option<u64> = None;
        // The last Transfer-Encoding value: its final coding decides the refusal.
        let mut transfer_codings: Option<&[u8]> = None;
        // HTTP/1.1 persists by default, HTTP/1.0 only when asked.
        let mut keep_alive = minor_version >= 1;
        let mut expect_continue = false;
        let mut hosts = 0usize;
        for header in headers {
            let name = header.name;
            if name.eq_ignore_ascii_case("content-length") {
                let value = parse_content_length(header.value)?;
                if content_length.is_some_and(|seen| seen != value) {
                    return Err(HttpError::BadRequest("conflicting Content-Length headers"));
                }
                content_length = Some(value);
            } else if name.eq_ignore_ascii_case("host") {
                hosts += 1;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                transfer_codings = Some(header.value);
            } else if name.eq_ignore_ascii_case("connection") {
                for token in header.value.split(|b| *b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        keep_alive = false;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") && minor_version == 0 {
                        keep_alive = true;
                    }
                }
            } else if name.eq_ignore_ascii_case("expect") {
                expect_continue = header
                    .value
                    .trim_ascii()
                    .eq_ignore_ascii_case(b"100-continue");
            }
        }
        if let Some(codings) = transfer_codings {
            return Err(refuse_transfer_coding(
                codings,
                content_length.is_some(),
                minor_version,
            ));
        }
        Ok(Framing {
            content_length: content_length.unwrap_or(0),
            keep_alive,
            expect_continue,
            hosts,
        })
    }
}

/// RFC 9112 section 3.2: an HTTP/1.1 request without Host, or any request with more than one,
/// is answered 400. HTTP/1.0 predates Host and may leave it out.
fn check_host(hosts: usize, minor_version: u8) -> Result<(), HttpError> {
    match hosts {
        0 if minor_version >= 1 => Err(HttpError::BadRequest("missing Host header")),
        0 | 1 => Ok(()),
        _ => Err(HttpError::BadRequest("more than one Host header")),
    }
}

/// Bodies are framed by Content-Length only; a request with Transfer-Encoding gets the 4xx
/// RFC 9112 gives it: 400 where its framing cannot be trusted (both headers, section 6.3; an
/// HTTP/1.0 request, section 6.1; chunked not the final coding, section 6.3), else 411, which
/// a server may answer to a body without Content-Length (section 6.3).
fn refuse_transfer_coding(codings: &[u8], content_length: bool, minor_version: u8) -> HttpError {
    let chunked_last = codings
        .rsplit(|b| *b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
    if content_length {
        HttpError::BadRequest("both Content-Length and Transfer-Encoding")
    } else if minor_version == 0 {
        HttpError::BadRequest("Transfer-Encoding in an HTTP/1.0 request")
    } else if !chunked_last {
        HttpError::BadRequest("Transfer-Encoding without chunked as the final coding")
    } else {
        HttpError::LengthRequired("chunked request bodies are not accepted")
    }
}

fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::BadRequest("invalid Content-Length"));
    }
    Ok(value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

fn parse_error_text(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid method or request target",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_request_line: 64,
            max_header_bytes: 128,
            max_body_bytes: 1000,
        }
    }

    /// (path, query, head length, content length, keep-alive)
    type Summary = (String, Option<String>, usize, usize, bool);
    type Expected<'a> = (&'a str, Option<&'a str>, usize, usize, bool);

    fn parse(input: &str) -> Result<Option<Summary>, HttpError> {
        let mut slots = header_slots();
        parse_head(input.as_bytes(), &limits(), &mut slots).map(|head| {
            head.map(|h| {
                (
                    h.path.to_string(),
                    h.query.map(str::to_string),
                    h.head_len,
                    h.content_length,
                    h.keep_alive,
                )
            })
        })
    }

    #[test]
    fn table_of_heads() {
        let long_path = format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(80));
        let long_unfinished = format!("GET /{}", "a".repeat(80));
        let big_headers = format!(
            "GET / HTTP/1.1\r\nHost: h\r\nX: {}\r\n\r\n",
            "v".repeat(200)
        );
        let big_unfinished_headers = format!("GET / HTTP/1.1\r\nHost: h\r\nX: {}", "v".repeat(200));
        let cases: Vec<(&str, Result<Option<Expected>, HttpError>)> = vec![
            (
                "GET /health HTTP/1.1\r\nHost: h\r\n\r\n",
                Ok(Some(("/health", None, 33, 0, true))),
            ),
            (
                "GET /a?b=1 HTTP/1.0\r\n\r\n",
                Ok(Some(("/a", Some("b=1"), 23, 0, false))),
            ),
            (
                "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                Ok(Some(("/", None, 42, 0, true))),
            ),
            (
                "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                Ok(Some(("/", None, 46, 0, false))),
            ),
            (
                "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n",
                Ok(Some(("/x", None, 48, 5, true))),
            ),
            (
                "\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
                Ok(Some(("/", None, 29, 0, true))),
            ),
            (
                "GET http://h:1/p?q HTTP/1.1\r\nHost: h\r\n\r\n",
                Ok(Some(("/p", Some("q"), 40, 0, true))),
            ),
            ("GET /health HTTP/1.1\r\nHost: x", Ok(None)),
            (
                "GET /health HTTP/1.1\r\n\r\n",
                Err(HttpError::BadRequest("missing Host header")),
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                Err(HttpError::BadRequest("more than one Host header")),
            ),
            (
                "GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n",
                Err(HttpError::BadRequest("more than one Host header")),
            ),
            (
                "GET / HTTP/1.0\r\n\r\n",
                Ok(Some(("/", None, 18, 0, false))),
            ),
            ("GET /hea", Ok(None)),
            (&long_path, Err(HttpError::UriTooLong { limit: 64 })),
            (&long_unfinished, Err(HttpError::UriTooLong { limit: 64 })),
            (&big_headers, Err(HttpError::HeadersTooLarge { limit: 128 })),
            (
                &big_unfinished_headers,
                Err(HttpError::HeadersTooLarge { limit: 128 }),
            ),
            (
                "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 2000\r\n\r\n",
                Err(HttpError::PayloadTooLarge {
                    length: 2000,
                    limit: 1000,
                }),
            ),
            (
                "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: x\r\n\r\n",
                Err(HttpError::BadRequest("invalid Content-Length")),
            ),
            (
                "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                Err(HttpError::BadRequest("conflicting Content-Length headers")),
            ),
            (
                "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
                Err(HttpError::LengthRequired(
                    "chunked request bodies are not accepted",
                )),
            ),
            (
                "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                Err(HttpError::BadRequest(
                    "Transfer-Encoding without chunked as the final coding",
                )),
            ),
            (
                "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                Err(HttpError::BadRequest(
                    "Transfer-Encoding in an HTTP/1.0 request",
                )),
            ),
            (
                "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                Err(HttpError::BadRequest(
                    "both Content-Length and Transfer-Encoding",
                )),
            ),
            (
                "GET noslash HTTP/1.1\r\nHost: h\r\n\r\n",
                Err(HttpError::BadRequest("request target must be a path")),
            ),
            (
                "G@T / HTTP/1.1\r\nHost: h\r\n\r\n",
                Err(HttpError::BadRequest("invalid method or request target")),
            ),
            (
                "GET / HTTP/2.0\r\n\r\n",
                Err(HttpError::VersionNotSupported),
            ),
            (
                "GET / HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n",
                Err(HttpError::BadRequest("invalid header name")),
            ),
        ];
        for (input, expected) in cases {
            let expected = expected
                .map(|o| o.map(|(p, q, h, c, k)| (p.to_string(), q.map(str::to_string), h, c, k)));
            assert_eq!(parse(input), expected, "{input:?}");
        }
    }

    /// Whether `bytes` hold a whole head (`Ok(false)`: more are needed), or the refusal.
    fn head_complete(bytes: &[u8], limits: &Limits) -> Result<bool, HttpError> {
        let mut slots = header_slots();
        parse_head(bytes, limits, &mut slots).map(|head| head.is_some())
    }

    /// Found by the codec fuzz target: a too-long line with a bad byte early on was 414 when it
    /// came in one read and 400 when its start came first. The answer must not depend on how
    /// the bytes arrive.
    #[test]
    fn a_too_long_line_is_answered_alike_whatever_the_reads() {
        let limits = Limits {
            max_request_line: 64,
            max_header_bytes: 8192,
            max_body_bytes: 0,
        };
        let answer = |bytes: &[u8]| head_complete(bytes, &limits);
        let malformed = format!("GE[T /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(100));
        let whole = answer(malformed.as_bytes());
        assert!(matches!(whole, Err(HttpError::BadRequest(_))), "{whole:?}");
        assert_eq!(answer(&malformed.as_bytes()[..10]), whole);
        let well_formed = format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(100));
        assert_eq!(
            answer(well_formed.as_bytes()),
            Err(HttpError::UriTooLong { limit: 64 })
        );
        assert_eq!(answer(&well_formed.as_bytes()[..10]), Ok(false));
    }

    /// Found by the codec fuzz target: a header section past the limit with a flaw beyond the
    /// limit was 400 in one read and 431 when it came in parts.
    #[test]
    fn a_too_large_header_section_is_431_whatever_the_reads() {
        let limits = Limits {
            max_request_line: 64,
            max_header_bytes: 64,
            max_body_bytes: 0,
        };
        let answer = |bytes: &[u8]| head_complete(bytes, &limits);
        let head = format!(
            "GET / HTTP/1.1\r\nHost: h\r\nX-Long: {}\r\nBad Header\r\n\r\n",
            "v".repeat(80)
        );
        let too_large = Err(HttpError::HeadersTooLarge { limit: 64 });
        assert_eq!(answer(head.as_bytes()), too_large);
        assert_eq!(answer(&head.as_bytes()[..100]), too_large);
        // A flaw inside the limit is a 400 either way.
        let early = "GET / HTTP/1.1\r\nBad Header\r\nHost: h\r\n\r\n";
        assert!(matches!(
            answer(early.as_bytes()),
            Err(HttpError::BadRequest(_))
        ));
        assert!(matches!(
            answer(&early.as_bytes()[..24]),
            Err(HttpError::BadRequest(_))
        ));
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut input = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
        for i in 0..=MAX_HEADERS {
            input.push_str(&format!("h{i}: v\r\n"));
        }
        input.push_str("\r\n");
        let mut slots = header_slots();
        let big = Limits {
            max_request_line: 64,
            max_header_bytes: 8192,
            max_body_bytes: 0,
        };
        assert_eq!(
            parse_head(input.as_bytes(), &big, &mut slots).unwrap_err(),
            HttpError::TooManyHeaders { limit: MAX_HEADERS }
        );
    }
}
