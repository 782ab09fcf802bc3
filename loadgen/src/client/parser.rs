//! Sans-I/O HTTP/1.x response framing: bytes in, "a response ended with status S" out.
//!
//! It finds where each response ends (Content-Length, chunked, or until close) without copying
//! the body, so pipelined responses can be split straight out of a connection's read buffer.

/// Response heads larger than this are a bad response.
pub const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    Trailer,
    UntilClose,
}

/// What [`ResponseParser::advance`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The bytes so far end inside a response; read more.
    NeedMore,
    /// A response ended. `close`: the server will close the connection after it.
    Done { status: u16, close: bool },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError(pub String);

#[derive(Debug)]
pub struct ResponseParser {
    state: State,
    status: u16,
    close: bool,
    /// Bytes of the current response consumed so far.
    seen: u64,
}

impl Default for ResponseParser {
    fn default() -> Self {
        ResponseParser {
            state: State::Head,
            status: 0,
            close: false,
            seen: 0,
        }
    }
}

impl ResponseParser {
    /// True when part of a response has been consumed but it has not ended.
    pub fn mid_response(&self) -> bool {
        self.seen > 0
    }

    /// At end of stream: a response framed by the close ends here.
    pub fn eof(&mut self) -> Option<Step> {
        if self.state == State::UntilClose {
            let status = self.status;
            *self = ResponseParser::default();
            return Some(Step::Done {
                status,
                close: true,
            });
        }
        None
    }

    /// Consumes bytes from `buf` up to the end of one response (or all of `buf` when it ends
    /// inside one). `head_request`: the response answers a HEAD, so it has no body.
    /// Returns how many bytes were consumed and what was found.
    pub fn advance(&mut self, buf: &[u8], head_request: bool) -> Result<(usize, Step), ParseError> {
        let mut pos = 0;
        loop {
            let rest = &buf[pos..];
            match self.state {
                State::Head => {
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let mut resp = httparse::Response::new(&mut headers);
                    match resp.parse(rest) {
                        Ok(httparse::Status::Partial) => {
                            if rest.len() > MAX_HEAD {
                                return Err(ParseError(format!(
                                    "response head over {MAX_HEAD} bytes"
                                )));
                            }
                            return Ok((pos, Step::NeedMore));
                        }
                        Err(e) => return Err(ParseError(format!("malformed response head: {e}"))),
                        Ok(httparse::Status::Complete(n)) => {
                            pos += n;
                            self.seen += n as u64;
                            let status = resp.code.unwrap_or(0);
                            if (100..200).contains(&status) && status != 101 {
                                continue; // interim response; the real one follows
                            }
                            self.status = status;
                            let mut length = None;
                            let mut chunked = false;
                            let mut close = resp.version == Some(0);
                            for h in resp.headers.iter() {
                                if h.name.eq_ignore_ascii_case("content-length") {
                                    let v = std::str::from_utf8(h.value)
                                        .ok()
                                        .and_then(|s| s.trim().parse::<u64>().ok())
                                        .ok_or_else(|| ParseError("bad Content-Length".into()))?;
                                    length = Some(v);
                                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                                    chunked = contains_token(h.value, b"chunked");
                                } else if h.name.eq_ignore_ascii_case("connection") {
                                    if contains_token(h.value, b"close") {
                                        close = true;
                                    } else if contains_token(h.value, b"keep-alive") {
                                        close = false;
                                    }
                                }
                            }
                            self.close = close;
                            self.state = if head_request || status == 204 || status == 304 {
                                return Ok((pos, self.finish()));
                            } else if chunked {
                                State::ChunkSize
                            } else if let Some(len) = length {
                                if len == 0 {
                                    return Ok((pos, self.finish()));
                                }
                                State::Body(len)
                            } else {
                                self.close = true;
                                State::UntilClose
                            };
                        }
                    }
                }
                State::Body(remaining) | State::ChunkData(remaining) => {
                    let take = remaining.min(rest.len() as u64);
                    pos += take as usize;
                    self.seen += take;
                    let left = remaining - take;
                    if left > 0 {
                        self.state = if matches!(self.state, State::Body(_)) {
                            State::Body(left)
                        } else {
                            State::ChunkData(left)
                        };
                        return Ok((pos, Step::NeedMore));
                    }
                    if matches!(self.state, State::Body(_)) {
                        return Ok((pos, self.finish()));
                    }
                    self.state = State::ChunkDataEnd;
                }
                State::ChunkDataEnd => {
                    if rest.len() < 2 {
                        return Ok((pos, Step::NeedMore));
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(ParseError("chunk not followed by CRLF".into()));
                    }
                    pos += 2;
                    self.seen += 2;
                    self.state = State::ChunkSize;
                }
                State::ChunkSize | State::Trailer => {
                    let Some(eol) = find_crlf(rest) else {
                        if rest.len() > 4096 {
                            return Err(ParseError("chunk size or trailer line too long".into()));
                        }
                        return Ok((pos, Step::NeedMore));
                    };
                    let line = &rest[..eol];
                    pos += eol + 2;
                    self.seen += eol as u64 + 2;
                    if self.state == State::Trailer {
                        if line.is_empty() {
                            return Ok((pos, self.finish()));
                        }
                        continue;
                    }
                    let hex = line.split(|&b| b == b';').next().unwrap_or(b"");
                    let size = std::str::from_utf8(hex)
                        .ok()
                        .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                        .ok_or_else(|| ParseError("bad chunk size".into()))?;
                    self.state = if size == 0 {
                        State::Trailer
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::UntilClose => {
                    pos += rest.len();
                    self.seen += rest.len() as u64;
                    return Ok((pos, Step::NeedMore));
                }
            }
        }
    }

    fn finish(&mut self) -> Step {
        let step = Step::Done {
            status: self.status,
            close: self.close,
        };
        *self = ResponseParser::default();
        step
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes, the way a socket might deliver it.
    fn run(input: &[u8], step: usize, head: bool) -> Result<(Vec<(u16, bool)>, bool), ParseError> {
        let mut p = ResponseParser::default();
        let mut buf = Vec::new();
        let mut done = Vec::new();
        for piece in input.chunks(step) {
            buf.extend_from_slice(piece);
            loop {
                let (n, s) = p.advance(&buf, head)?;
                buf.drain(..n);
                match s {
                    Step::Done { status, close } => done.push((status, close)),
                    Step::NeedMore => break,
                }
            }
        }
        if let Some(Step::Done { status, close }) = p.eof() {
            done.push((status, close));
        }
        Ok((done, p.mid_response()))
    }

    #[test]
    fn framing() {
        type Want = Result<Vec<(u16, bool)>, ()>;
        let cases: &[(&str, &[u8], bool, Want)] = &[
            ("content-length", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false, Ok(vec![(200, false)])),
            (
                "pipelined",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
                false,
                Ok(vec![(200, false), (404, false)]),
            ),
            (
                "chunked",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n",
                false,
                Ok(vec![(200, false)]),
            ),
            ("connection close", b"HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", false, Ok(vec![(503, true)])),
            ("http/1.0", b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", false, Ok(vec![(200, true)])),
            ("until close", b"HTTP/1.1 200 OK\r\n\r\nbody without length", false, Ok(vec![(200, true)])),
            ("no body for 204", b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false, Ok(vec![(204, false), (200, false)])),
            ("head", b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", true, Ok(vec![(200, false)])),
            ("100 continue", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", false, Ok(vec![(201, false)])),
            ("garbage", b"SSH-2.0-OpenSSH\r\n\r\n", false, Err(())),
            ("bad length", b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false, Err(())),
            ("bad chunk", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", false, Err(())),
        ];
        for (name, input, head, want) in cases {
            for step in [1, 3, 7, input.len()] {
                let got = run(input, step, *head).map(|(d, _)| d).map_err(|_| ());
                assert_eq!(&got, want, "{name} (pieces of {step})");
            }
        }
    }

    #[test]
    fn truncated_response_is_mid_response() {
        let (done, mid) = run(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
            4,
            false,
        )
        .unwrap();
        assert!(done.is_empty());
        assert!(mid);
    }

    #[test]
    fn oversized_head() {
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        while big.len() <= MAX_HEAD {
            big.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let mut p = ResponseParser::default();
        assert!(p.advance(&big, false).is_err());
    }
}
