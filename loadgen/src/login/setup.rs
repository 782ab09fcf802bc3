//! Before the run: one account per virtual user, registered, logged in and (for signed
//! requests) given a key, over a few plain blocking keep-alive connections.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};

use super::{CredentialKind, Identities, Identity, LoginSpec};

/// Connections the setup uses at most (the server hashes passwords on a few threads anyway).
const SETUP_CONNECTIONS: usize = 8;
/// How long one setup request may take; a login waits for Argon2id behind the others.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Tries for a request answered 503 `password_pool_busy` (the server's password threads all
/// taken), a second apart at most.
const BUSY_TRIES: u32 = 20;

/// One answer: status and body.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

/// A blocking keep-alive HTTP/1.1 connection.
struct Conn {
    stream: TcpStream,
    host: String,
    buf: Vec<u8>,
}

impl Conn {
    fn open(target: SocketAddr, host: &str) -> Result<Conn, String> {
        let stream = TcpStream::connect_timeout(&target, SETUP_TIMEOUT)
            .map_err(|e| format!("login: connecting to {target}: {e}"))?;
        stream.set_read_timeout(Some(SETUP_TIMEOUT)).ok();
        stream.set_nodelay(true).ok();
        Ok(Conn {
            stream,
            host: host.to_string(),
            buf: Vec::new(),
        })
    }

    fn send(
        &mut self,
        method: &str,
        path: &str,
        auth: &str,
        body: &Value,
    ) -> Result<Answer, String> {
        let body = body.to_string();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        let io = |e: std::io::Error| format!("login: {method} {path}: {e}");
        self.stream.write_all(request.as_bytes()).map_err(io)?;
        loop {
            if let Some((answer, used)) = parse_answer(&self.buf)? {
                self.buf.drain(..used);
                return Ok(answer);
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).map_err(io)?;
            if n == 0 {
                return Err(format!(
                    "login: {method} {path}: the server closed the connection"
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// `send`, again while the server answers that its password pool is full.
    fn send_retrying(
        &mut self,
        method: &str,
        path: &str,
        auth: &str,
        body: &Value,
    ) -> Result<Answer, String> {
        let mut tries = 0;
        loop {
            let answer = self.send(method, path, auth, body)?;
            tries += 1;
            let busy =
                answer.status == 503 && answer.body.windows(18).any(|w| w == b"password_pool_busy");
            if !busy || tries >= BUSY_TRIES {
                return Ok(answer);
            }
            std::thread::sleep(
                Duration::from_millis(50 * u64::from(tries)).min(Duration::from_secs(1)),
            );
        }
    }
}

/// A whole response at the start of `buf`: it and the bytes it took.
fn parse_answer(buf: &[u8]) -> Result<Option<(Answer, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("login: a malformed response: {e}")),
    };
    let length = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        })
        .unwrap_or(0);
    if buf.len() < head + length {
        return Ok(None);
    }
    let status = response.code.unwrap_or(0);
    let body = buf[head..head + length].to_vec();
    Ok(Some((Answer { status, body }, head + length)))
}

fn expect(answer: &Answer, status: u16, what: &str) -> Result<Value, String> {
    let text = String::from_utf8_lossy(&answer.body);
    if answer.status != status {
        return Err(format!(
            "login: {what} answered {} (expected {status}): {text}",
            answer.status
        ));
    }
    serde_json::from_slice(&answer.body).map_err(|e| format!("login: {what}: {e}: {text}"))
}

/// Virtual user `vu`'s account: registered (unless the spec says they exist), logged in, and
/// with a key when requests are signed.
fn identity(conn: &mut Conn, spec: &LoginSpec, vu: usize, run: &str) -> Result<Identity, String> {
    let email = spec.email_of(vu, run);
    if spec.register {
        let body =
            json!({"name": format!("Load user {vu}"), "email": email, "password": spec.password});
        let answer = conn.send_retrying("POST", "/api/auth/register", "", &body)?;
        expect(&answer, 201, &format!("registering {email}"))?;
    }
    let body = json!({"email": email, "password": spec.password});
    let answer = conn.send_retrying("POST", "/api/auth/login", "", &body)?;
    let session = expect(&answer, 200, &format!("logging in {email}"))?;
    let token = session["token"]
        .as_str()
        .ok_or_else(|| format!("login: no token in the answer for {email}"))?;
    let bearer = format!("Authorization: Bearer {token}\r\n");
    if let Some(account) = &spec.exchange_account {
        let body = json!({"api_key": account.api_key_of(vu, run), "secret": account.secret});
        let path = "/api/enterprise/trading/exchange-accounts";
        let answer = conn.send("POST", path, &bearer, &body)?;
        expect(
            &answer,
            201,
            &format!("linking an exchange account for {email}"),
        )?;
    }
    if spec.credentials == CredentialKind::Session {
        return Ok(Identity::Bearer(bearer.into_bytes()));
    }
    let body = json!({
        "scopes": spec.scopes,
        "label": "loadgen",
        "rate_per_second": spec.rate_per_second,
    });
    let answer = conn.send("POST", "/api/auth/api-keys", &bearer, &body)?;
    let key = expect(&answer, 201, &format!("creating a key for {email}"))?;
    match (key["key_id"].as_str(), key["secret"].as_str()) {
        (Some(key_id), Some(secret)) => Ok(Identity::Key {
            key_id: key_id.to_string(),
            secret: secret.as_bytes().to_vec(),
        }),
        _ => Err(format!(
            "login: no key id or secret in the answer for {email}"
        )),
    }
}

/// Accounts for `count` virtual users on `target`, in virtual user order.
pub fn prepare(
    target: SocketAddr,
    host: &str,
    spec: &LoginSpec,
    count: usize,
) -> Result<Identities, String> {
    spec.validate()?;
    let count = count.max(1);
    let run = format!("{:08x}", fastrand::u32(..));
    let connections = count.min(SETUP_CONNECTIONS);
    let results: Vec<Result<Vec<(usize, Identity)>, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..connections)
            .map(|c| {
                let run = &run;
                scope.spawn(move || {
                    let mut conn = Conn::open(target, host)?;
                    (c..count)
                        .step_by(connections)
                        .map(|vu| Ok((vu, identity(&mut conn, spec, vu, run)?)))
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("login: a setup thread panicked".into()))
            })
            .collect()
    });
    let mut all = Vec::with_capacity(count);
    for result in results {
        all.extend(result?);
    }
    all.sort_by_key(|(vu, _)| *vu);
    Ok(Identities::new(all.into_iter().map(|(_, id)| id).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_cut_by_content_length() {
        let two = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let (first, used) = parse_answer(two).unwrap().unwrap();
        assert_eq!((first.status, first.body.as_slice()), (201, &b"{}"[..]));
        let (second, rest) = parse_answer(&two[used..]).unwrap().unwrap();
        assert_eq!((second.status, used + rest), (200, two.len()));
        assert!(parse_answer(&two[..30]).unwrap().is_none());
        assert!(
            parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
                .unwrap()
                .is_none()
        );
        assert!(parse_answer(b"NOT HTTP\r\n\r\n").is_err());
    }
}
