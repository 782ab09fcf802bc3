//! Logged-in load: each virtual user gets its own account once, before the run, and every
//! request it sends carries that account's credentials.
//!
//! A scenario file asks for it with a `[login]` table (see [`LoginSpec`]):
//!
//! ```toml
//! [login]
//! credentials = "session"        # or "api_key"
//! # register = true              # register each user first (default); false: they exist
//! # email = "loadgen-{run}-{vu}@loadgen.example.com"   # {vu}: the virtual user, {run}: per run
//! # password = "loadgen password"
//! # scopes = ["read", "trade"]   # api_key: the key's scopes
//! # rate_per_second = 10000      # api_key: the key's rate
//! # [login.exchange_account]     # link an exchange account after logging in
//! # api_key = "loadgen-{run}-{vu}"
//! # secret = "..."
//! ```
//!
//! Before the load starts, [`prepare`] registers (`POST /api/auth/register`) and logs in
//! (`POST /api/auth/login`) one user per virtual user, on a few plain blocking connections, and
//! with `api_key` creates a key for each (`POST /api/auth/api-keys`); with an
//! `exchange_account` each links one (`POST /api/enterprise/trading/exchange-accounts`). During the run
//! [`Identities::decorate`] adds to each request, after its template is rendered:
//! - `session`: `Authorization: Bearer <that user's token>`;
//! - `api_key`: `X-CBC-APIKEY`, `X-CBC-TIMESTAMP` and `X-CBC-SIGNATURE`, the signature computed
//!   by the server's own code (`coinbit::auth::signature::sign`) over the rendered request's
//!   timestamp, method, path, query and body.
//!
//! A virtual user is the closed model's user or the open model's connection (`{{vu}}`).
//! The server refuses a signature it has seen inside its window, and two identical requests
//! signed in the same millisecond have the same signature: each virtual user's timestamps are
//! made strictly increasing ([`Signer`]). A virtual user that signs more than 1,000 identical
//! requests a second on average runs its timestamps ahead of the clock, and past the server's
//! 1 s tolerance for the future its requests are refused (401 `timestamp_in_future`): use more
//! virtual users rather than faster ones.

mod setup;

use std::time::{SystemTime, UNIX_EPOCH};

use coinbit::auth::hex;
use coinbit::auth::signature::{self, Signed};
use serde::Deserialize;

pub use setup::prepare;

/// Which credentials requests carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// `Authorization: Bearer <session token>`.
    Session,
    /// A request signed with an API key.
    ApiKey,
}

/// The `[login]` table of a scenario file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginSpec {
    pub credentials: CredentialKind,
    #[serde(default = "yes")]
    pub register: bool,
    /// `{vu}` is the virtual user, `{run}` a random word per run (so that a rerun against the
    /// same database registers new users).
    #[serde(default = "default_email")]
    pub email: String,
    #[serde(default = "default_password")]
    pub password: String,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    #[serde(default = "default_rate")]
    pub rate_per_second: u32,
    /// After logging in, each virtual user links an exchange account, so that trading
    /// signals fan out to it.
    #[serde(default)]
    pub exchange_account: Option<ExchangeAccountSpec>,
}

/// `[login.exchange_account]`: the key and secret each virtual user links
/// (`POST /api/enterprise/trading/exchange-accounts`, which checks them against the exchange:
/// point the server at an `exchange-sim --any-account SECRET:BALANCE`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeAccountSpec {
    /// `{vu}` and `{run}` as in `email`: each virtual user has its own.
    #[serde(default = "default_exchange_key")]
    pub api_key: String,
    pub secret: String,
}

fn default_exchange_key() -> String {
    "loadgen-{run}-{vu}".into()
}

fn yes() -> bool {
    true
}

fn default_email() -> String {
    "loadgen-{run}-{vu}@loadgen.example.com".into()
}

fn default_password() -> String {
    "loadgen password".into()
}

fn default_scopes() -> Vec<String> {
    vec!["read".into(), "trade".into()]
}

fn default_rate() -> u32 {
    10_000
}

impl LoginSpec {
    /// Checks what can be checked before any request.
    pub fn validate(&self) -> Result<(), String> {
        if !self.email.contains("{vu}") {
            return Err("login: email must contain {vu}: each virtual user has its own".into());
        }
        if self.credentials == CredentialKind::ApiKey && self.scopes.is_empty() {
            return Err("login: an API key needs at least one scope".into());
        }
        if let Some(account) = &self.exchange_account {
            if !account.api_key.contains("{vu}") {
                return Err("login: exchange_account.api_key must contain {vu}".into());
            }
        }
        Ok(())
    }

    /// The email of virtual user `vu` in run `run`.
    pub fn email_of(&self, vu: usize, run: &str) -> String {
        per_user(&self.email, vu, run)
    }
}

/// `template` with `{vu}` and `{run}` filled in.
fn per_user(template: &str, vu: usize, run: &str) -> String {
    template
        .replace("{vu}", &vu.to_string())
        .replace("{run}", run)
}

impl ExchangeAccountSpec {
    /// The API key of virtual user `vu` in run `run`.
    pub fn api_key_of(&self, vu: usize, run: &str) -> String {
        per_user(&self.api_key, vu, run)
    }
}

/// One virtual user's credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// The whole header line, `Authorization: Bearer ...\r\n`.
    Bearer(Vec<u8>),
    Key {
        key_id: String,
        secret: Vec<u8>,
    },
}

/// Every virtual user's credentials, by virtual user.
#[derive(Clone, Debug)]
pub struct Identities {
    list: Vec<Identity>,
}

/// A client thread's signing state: each of its virtual users' last timestamp.
#[derive(Debug, Default)]
pub struct Signer {
    last_ms: Vec<u64>,
}

impl Signer {
    /// A timestamp for `slot` no earlier than `now_ms` and later than its previous one.
    fn timestamp(&mut self, slot: usize, now_ms: u64) -> u64 {
        if self.last_ms.len() <= slot {
            self.last_ms.resize(slot + 1, 0);
        }
        let ts = now_ms.max(self.last_ms[slot] + 1);
        self.last_ms[slot] = ts;
        ts
    }
}

/// Where a request's head ends (the index of its blank line's `\r\n`) and its parts.
struct Parsed<'a> {
    blank_line: usize,
    method: &'a str,
    path: &'a str,
    query: &'a str,
    body: &'a [u8],
}

fn parse(request: &[u8]) -> Option<Parsed<'_>> {
    let blank_line = request.windows(4).position(|w| w == b"\r\n\r\n")? + 2;
    let line_end = request.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&request[..line_end]).ok()?;
    let mut words = line.split(' ');
    let (method, target) = (words.next()?, words.next()?);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Some(Parsed {
        blank_line,
        method,
        path,
        query,
        body: &request[blank_line + 2..],
    })
}

impl Identities {
    pub fn new(list: Vec<Identity>) -> Identities {
        assert!(!list.is_empty(), "at least one identity");
        Identities { list }
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Adds virtual user `vu`'s credentials to the request that starts at `out[start..]` (one
    /// whole request, as a template rendered it).
    pub fn decorate(&self, vu: u64, out: &mut Vec<u8>, start: usize, signer: &mut Signer) {
        let slot = (vu % self.list.len() as u64) as usize;
        let Some(parsed) = parse(&out[start..]) else {
            return;
        };
        let at = start + parsed.blank_line;
        let added = match &self.list[slot] {
            Identity::Bearer(line) => line.clone(),
            Identity::Key { key_id, secret } => {
                let now_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let timestamp = signer.timestamp(slot, now_ms).to_string();
                let sig = signature::sign(
                    secret,
                    &Signed {
                        timestamp: &timestamp,
                        method: parsed.method,
                        path: parsed.path,
                        query: parsed.query,
                        body: parsed.body,
                    },
                );
                format!(
                    "{}: {key_id}\r\n{}: {timestamp}\r\n{}: {}\r\n",
                    signature::API_KEY_HEADER,
                    signature::TIMESTAMP_HEADER,
                    signature::SIGNATURE_HEADER,
                    hex::encode(&sig)
                )
                .into_bytes()
            }
        };
        out.splice(at..at, added);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coinbit::auth::signature::{parse_headers, verify};

    fn header<'a>(request: &'a str, name: &str) -> Option<&'a str> {
        request
            .split("\r\n")
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
    }

    #[test]
    fn a_bearer_token_goes_in_the_head() {
        let ids = Identities::new(vec![
            Identity::Bearer(b"Authorization: Bearer aa\r\n".to_vec()),
            Identity::Bearer(b"Authorization: Bearer bb\r\n".to_vec()),
        ]);
        let mut out = b"previous".to_vec();
        out.extend_from_slice(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}");
        ids.decorate(3, &mut out, 8, &mut Signer::default());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "previousPOST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nAuthorization: Bearer bb\r\n\r\n{}"
        );
    }

    /// The signature the server checks: parsed by the server's parser, it verifies against
    /// the request as sent, and a second identical request gets a later timestamp.
    #[test]
    fn a_signed_request_verifies_as_the_server_checks_it() {
        let key_id = "0123456789abcdef0123456789abcdef".to_string();
        let secret = b"s3cret".to_vec();
        let ids = Identities::new(vec![Identity::Key {
            key_id: key_id.clone(),
            secret: secret.clone(),
        }]);
        let mut signer = Signer::default();
        let request = b"POST /api/orders?side=buy HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\n{\"qty\":1}";
        let mut seen = Vec::new();
        for _ in 0..3 {
            let mut out = request.to_vec();
            ids.decorate(0, &mut out, 0, &mut signer);
            let text = String::from_utf8(out).unwrap();
            assert!(text.ends_with("\r\n\r\n{\"qty\":1}"), "{text}");
            let headers = parse_headers(
                header(&text, "X-CBC-APIKEY").unwrap().as_bytes(),
                header(&text, "X-CBC-TIMESTAMP").map(str::as_bytes),
                None,
                header(&text, "X-CBC-SIGNATURE").map(str::as_bytes),
            )
            .unwrap();
            assert_eq!(headers.key_id, key_id);
            let signed = Signed {
                timestamp: &headers.timestamp_text,
                method: "POST",
                path: "/api/orders",
                query: "side=buy",
                body: b"{\"qty\":1}",
            };
            assert_eq!(verify(&secret, &signed, &headers.signature), Ok(()));
            seen.push(headers.timestamp_ms);
        }
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    }

    #[test]
    fn specs() {
        let spec: LoginSpec = toml::from_str("credentials = \"api_key\"").unwrap();
        assert_eq!(spec.credentials, CredentialKind::ApiKey);
        assert!(spec.register && spec.validate().is_ok());
        assert_eq!(
            spec.email_of(7, "ab12"),
            "loadgen-ab12-7@loadgen.example.com"
        );
        let fixed: LoginSpec =
            toml::from_str("credentials = \"session\"\nemail = \"a@b.co\"").unwrap();
        assert!(fixed.validate().is_err());
        assert!(toml::from_str::<LoginSpec>("credentials = \"cookie\"").is_err());
    }
}
