//! The accounts API: registration, login and logout, who am I, and API keys.
//!
//! - `POST /api/auth/register` and `POST /api/users` (the same handler)
//!   `{name, email, password, country?}`: 201 with `{"user": ...}`, `Location: /api/users/{id}`
//!   and `X-Commit-LSN` (a `GET /api/users/{id}` that sends it back as `X-Min-LSN` reads the
//!   new row); 409 when the email is taken; 422 for a bad field, or a `role`/`status`/`currency`
//!   in the body (a role is never chosen by the person registering). The user's welcome
//!   notification is a durable job written in the user's own transaction: both or neither.
//! - `POST /api/auth/login` `{email, password}`: 200 with a session token; 401 for a wrong
//!   email or password alike (the answer never says whether the email exists, and an unknown
//!   email costs the same Argon2id check); 429 with `Retry-After` once `LOGIN_MAX_FAILURES`
//!   failures for that email fall inside `LOGIN_LOCKOUT_WINDOW` since its last success, or
//!   `LOGIN_MAX_CLIENT_FAILURES` failures from that client, whatever the emails, fall inside the
//!   window (a success does not reset the client's count: one's own account would otherwise
//!   unlock a guessing run). A locked-out attempt is not checked nor counted. The client is
//!   known only with `TRUST_FORWARDED_FOR` (see [`client_of`]).
//! - `POST /api/auth/logout` (a session): 204; the token is refused from then on.
//! - `GET /api/auth/me` (a session, or a key with `read`): the caller's user.
//! - `POST /api/auth/api-keys` (a session) `{scopes, label?, rate_per_second?}`: 201 with the
//!   key id and the secret, shown this once; `GET` lists the caller's keys without secrets;
//!   `DELETE /api/auth/api-keys/{key_id}`: 204, or 404 for a key that is not the caller's.
//!
//! Every query of this API runs on the primary (a user, session or key just written reads back
//! at once, whatever the replicas' lag) but `me`'s read of the caller's row, which is
//! `GET /api/users/{id}`'s read: a replica by the strategy, batched with the reads queued with
//! it, and the primary when that replica does not have the row yet.

use std::time::Instant;

use serde::Deserialize;
use serde_json::{json, Value};

use super::access::{Accounts, Principal, Via};
use super::handlers::parse_json_body;
use super::users::{check_name_and_email, db_error, write_failed, COMMIT_LSN_HEADER};
use crate::auth::role::{Scope, Scopes};
use crate::auth::{hex, token};
use crate::db::{DbError, Lookup, Row};
use crate::http::{Reply, Request, Response, StatusCode};

/// Most characters of a password (Argon2id takes any length; this bounds the work).
const MAX_PASSWORD_CHARS: usize = 128;
const MIN_PASSWORD_CHARS: usize = 8;
/// The fields of a user every answer shows, in [`user_json`]'s order (a macro: the SQL that
/// lists them is a `&'static str`, as prepared statements are cached by it).
macro_rules! user_columns {
    () => {
        "id, name, email, role, country, currency, status, \
         to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
    };
}
const INSERT_ACCOUNT: &str = concat!(
    "INSERT INTO users (name, email, password_hash, country, currency) \
     VALUES ($1, $2, $3, $4, $5) RETURNING ",
    user_columns!()
);
const SELECT_ACCOUNT: &str = concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1");
/// The same read as `GET /api/users/{id}`'s: alone, or batched with others queued with it.
static LOOKUP_ACCOUNT: Lookup = Lookup {
    one: SELECT_ACCOUNT,
    many: concat!("SELECT ", user_columns!(), " FROM users WHERE id = ANY($1)"),
};

fn user_json(row: &Row) -> Value {
    json!({
        "id": row.get::<_, i64>(0),
        "name": row.get::<_, String>(1),
        "email": row.get::<_, String>(2),
        "role": row.get::<_, String>(3),
        "country": row.get::<_, Option<String>>(4),
        "currency": row.get::<_, String>(5),
        "status": row.get::<_, String>(6),
        "created_at": row.get::<_, String>(7),
    })
}

fn invalid(code: &str, message: &str) -> Response {
    Response::error(StatusCode(422), code, message)
}

fn pool_full() -> Response {
    Response::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "password_pool_busy",
        "too many logins and registrations at once; retry later",
    )
    .with_header("Retry-After", "1")
}

/// Accounts need the database; without one their routes answer 503.
fn no_accounts() -> Reply {
    db_error(&DbError::NotConfigured).into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    name: String,
    email: String,
    password: String,
    #[serde(default)]
    country: Option<String>,
    // Named so that a body carrying them gets a 422 that says why, not a parse error.
    #[serde(default)]
    role: Option<Value>,
    #[serde(default)]
    status: Option<Value>,
    #[serde(default)]
    currency: Option<Value>,
}

/// A checked registration: trimmed name, lower-case email, upper-case country.
#[derive(Debug, PartialEq, Eq)]
struct NewAccount {
    name: String,
    email: String,
    password: String,
    country: Option<String>,
}

impl NewAccount {
    /// BRL for Brazil, USD everywhere else.
    fn currency(&self) -> &'static str {
        if self.country.as_deref() == Some("BR") {
            "BRL"
        } else {
            "USD"
        }
    }
}

fn check_password(password: &str) -> Result<(), &'static str> {
    let chars = password.chars().count();
    if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&chars) {
        return Err("password must be 8 to 128 characters");
    }
    if password.contains('\0') {
        return Err("password must not contain the NUL character");
    }
    Ok(())
}

fn parse_registration(body: &[u8]) -> Result<NewAccount, Response> {
    let expected = "expected {\"name\": string, \"email\": string, \"password\": string, \"country\": two letters (optional)}";
    let form: Registration = parse_json_body(body).map_err(|e| e.response("bad_json", expected))?;
    for (field, value) in [
        ("role", &form.role),
        ("status", &form.status),
        ("currency", &form.currency),
    ] {
        if value.is_some() {
            return Err(invalid(
                "field_not_allowed",
                &format!("{field} is set by the platform, not at registration"),
            ));
        }
    }
    check_name_and_email(&form.name, &form.email).map_err(|m| invalid("invalid_user", m))?;
    check_password(&form.password).map_err(|m| invalid("invalid_password", m))?;
    let country = match form.country {
        None => None,
        Some(country) if country.len() == 2 && country.bytes().all(|b| b.is_ascii_alphabetic()) => {
            Some(country.to_ascii_uppercase())
        }
        Some(_) => {
            return Err(invalid(
                "invalid_country",
                "country must be a two-letter ISO 3166 code, e.g. BR",
            ))
        }
    };
    Ok(NewAccount {
        name: form.name.trim().to_string(),
        email: form.email.trim().to_lowercase(),
        password: form.password,
        country,
    })
}

/// Checks a registration body as the route does, without a database or a hash: the 400 or 422
/// it would answer, if any. An entry point of the body fuzz target (tests/fuzz).
pub fn check_registration_body(body: &[u8]) -> Result<(), Response> {
    parse_registration(body).map(drop)
}

/// `POST /api/auth/register` and `POST /api/users`.
pub fn register(accounts: Option<&Accounts>, request: &Request<'_>) -> Reply {
    let Some(accounts) = accounts else {
        return no_accounts();
    };
    let account = match parse_registration(request.body) {
        Ok(account) => account,
        Err(response) => return response.into(),
    };
    let Ok(hashing) = accounts.shared.passwords.hash(account.password.clone()) else {
        return pool_full().into();
    };
    let accounts = accounts.clone();
    Reply::Later(Box::pin(async move {
        let Some(hash) = hashing.await else {
            return pool_full();
        };
        let currency = account.currency();
        let pending = accounts.db().write(move |conn| {
            let row = conn.query_one(
                INSERT_ACCOUNT,
                &[
                    &account.name,
                    &account.email,
                    &hash,
                    &account.country,
                    &currency,
                ],
            )?;
            let user = user_json(&row);
            // The welcome notification is durable: it commits with the user or not at all.
            let welcome = json!({
                "user_id": user["id"],
                "channel": "email",
                "message": format!("Welcome, {}!", account.name),
            });
            crate::queue::durable::insert(conn, "notification", &welcome)?;
            Ok(user)
        });
        match pending.await {
            Ok(written) => {
                let user = written.value;
                let location = format!("/api/users/{}", user["id"]);
                Response::json(StatusCode(201), json!({ "user": user }).to_string())
                    .with_header("Location", location)
                    .with_header(COMMIT_LSN_HEADER, written.commit_position.to_string())
            }
            Err(e) => write_failed(&e),
        }
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    email: String,
    password: String,
}

/// Parses a login body: the credentials to check, or the 400 (not JSON of that shape) or the
/// 401 (a field longer than any account's, answered as a wrong password) to answer at once.
fn parse_credentials(body: &[u8]) -> Result<Credentials, Response> {
    let form: Credentials = parse_json_body(body).map_err(|e| {
        e.response(
            "bad_json",
            "expected {\"email\": string, \"password\": string}",
        )
    })?;
    if form.password.chars().count() > MAX_PASSWORD_CHARS || form.email.len() > 254 {
        return Err(wrong_credentials());
    }
    Ok(form)
}

/// Checks a login body as the route does before any database work: the answer it would give
/// at once, if any. An entry point of the auth fuzz target (tests/fuzz).
pub fn check_login_body(body: &[u8]) -> Result<(), Response> {
    parse_credentials(body).map(drop)
}

/// The failure that, once it leaves the lockout window, lets logins in again: the
/// `LOGIN_MAX_FAILURES`-th newest since the email's last success. Its row means locked out; its
/// value is how long still (ms).
const LOCKED_FOR: &str = "SELECT greatest(0, (extract(epoch FROM \
         (attempted_at + $2::bigint * interval '1 millisecond' - now())) * 1000)::bigint) \
     FROM login_attempts \
     WHERE email = $1 AND NOT succeeded \
       AND attempted_at > now() - $2::bigint * interval '1 millisecond' \
       AND attempted_at > coalesce((SELECT max(attempted_at) FROM login_attempts \
                                    WHERE email = $1 AND succeeded), '-infinity') \
     ORDER BY attempted_at DESC OFFSET $3 LIMIT 1";
const SELECT_LOGIN: &str =
    "SELECT id, password_hash FROM users WHERE email = $1 AND status = 'active'";
const INSERT_ATTEMPT: &str =
    "INSERT INTO login_attempts (email, client, succeeded) VALUES ($1, $2, $3) RETURNING id";
const INSERT_SESSION: &str = "INSERT INTO sessions (user_id, token_sha256, expires_at) \
     VALUES ($1, $2, now() + $3::bigint * interval '1 millisecond') \
     RETURNING to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

/// The same for a client: its `LOGIN_MAX_CLIENT_FAILURES`-th newest failure inside the window,
/// whatever the emails.
const CLIENT_LOCKED_FOR: &str = "SELECT greatest(0, (extract(epoch FROM \
         (attempted_at + $2::bigint * interval '1 millisecond' - now())) * 1000)::bigint) \
     FROM login_attempts \
     WHERE client = $1 AND NOT succeeded \
       AND attempted_at > now() - $2::bigint * interval '1 millisecond' \
     ORDER BY attempted_at DESC OFFSET $3 LIMIT 1";

/// Whose failures locked a login out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LockedBy {
    Email,
    Client,
}

/// What the login's first look at the database found.
enum LoginLookup {
    /// Locked out for this many more ms.
    Locked(LockedBy, i64),
    /// The user's id and password hash, if there is such an active user with a password.
    Found(Option<(i64, String)>),
}

fn wrong_credentials() -> Response {
    Response::error(
        StatusCode(401),
        "invalid_credentials",
        "the email or the password is wrong",
    )
}

fn locked_out(by: LockedBy, retry_after_ms: i64) -> Response {
    let secs = (u64::try_from(retry_after_ms).unwrap_or(0))
        .div_ceil(1_000)
        .max(1);
    let message = match by {
        LockedBy::Email => {
            "too many failed logins for this email; retry after the time in Retry-After"
        }
        LockedBy::Client => {
            "too many failed logins from this client; retry after the time in Retry-After"
        }
    };
    Response::error(StatusCode(429), "too_many_failed_logins", message)
        .with_header("Retry-After", secs.to_string())
}

/// The login's client address, or "" when unknown. Requests do not carry the connection's
/// peer address (the engines do not hand it to the request), so the client is known only
/// behind a proxy trusted to write `X-Forwarded-For` (`TRUST_FORWARDED_FOR`): its last
/// address, the one that proxy appended (the ones before it are whatever the client sent).
/// Without that setting, no header is believed and only the per-email lockout applies.
fn client_of(request: &Request<'_>, trust_forwarded_for: bool) -> String {
    if !trust_forwarded_for {
        return String::new();
    }
    let last_header = request
        .headers
        .iter()
        .rev()
        .find(|h| h.name.eq_ignore_ascii_case("X-Forwarded-For"));
    last_header
        .and_then(|h| h.value.rsplit(|b| *b == b',').next())
        .and_then(|last| std::str::from_utf8(last).ok())
        .and_then(|last| last.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| ip.to_string())
        .unwrap_or_default()
}

/// `POST /api/auth/login`.
pub fn login(accounts: Option<&Accounts>, request: &Request<'_>) -> Reply {
    let Some(accounts) = accounts else {
        return no_accounts();
    };
    let form = match parse_credentials(request.body) {
        Ok(form) => form,
        Err(response) => return response.into(),
    };
    let email = form.email.trim().to_lowercase();
    let shared = accounts.shared.clone();
    let client = client_of(request, shared.trust_forwarded_for);
    let window_ms = i64::try_from(shared.login_lockout_window.as_millis()).unwrap_or(i64::MAX);
    let skip = i64::from(shared.login_max_failures) - 1;
    let client_skip = i64::from(shared.login_max_client_failures) - 1;
    let lookup = {
        let (email, client) = (email.clone(), client.clone());
        accounts.db().write(move |conn| {
            if !client.is_empty() {
                let locked =
                    conn.query_opt(CLIENT_LOCKED_FOR, &[&client, &window_ms, &client_skip])?;
                if let Some(row) = locked {
                    return Ok(LoginLookup::Locked(LockedBy::Client, row.get(0)));
                }
            }
            if let Some(row) = conn.query_opt(LOCKED_FOR, &[&email, &window_ms, &skip])? {
                return Ok(LoginLookup::Locked(LockedBy::Email, row.get(0)));
            }
            let user = conn.query_opt(SELECT_LOGIN, &[&email])?;
            Ok(LoginLookup::Found(user.and_then(|row| {
                Some((row.get::<_, i64>(0), row.get::<_, Option<String>>(1)?))
            })))
        })
    };
    let accounts = accounts.clone();
    Reply::Later(Box::pin(async move {
        let user = match lookup.await {
            Ok(written) => match written.value {
                LoginLookup::Locked(by, ms) => return locked_out(by, ms),
                LoginLookup::Found(user) => user,
            },
            Err(e) => return db_error(&e),
        };
        let (user_id, hash) = match user {
            Some((id, hash)) => (Some(id), Some(hash)),
            None => (None, None),
        };
        let Ok(verifying) = shared.passwords.verify(hash, form.password) else {
            return pool_full();
        };
        let matched = verifying.await;
        let session = match (matched, user_id) {
            (true, Some(user_id)) => Some((user_id, token::new_token())),
            _ => None,
        };
        let ttl_ms = i64::try_from(shared.session_ttl.as_millis()).unwrap_or(i64::MAX);
        let record = session.clone();
        let written = accounts.db().write(move |conn| {
            conn.query_one(INSERT_ATTEMPT, &[&email, &client, &record.is_some()])?;
            let Some((user_id, token)) = &record else {
                return Ok(None);
            };
            let digest = token::token_digest(token.as_bytes()).expect("a fresh token is hex");
            let row = conn.query_one(INSERT_SESSION, &[user_id, &&digest[..], &ttl_ms])?;
            Ok(Some(row.get::<_, String>(0)))
        });
        match (written.await, session) {
            (Ok(written), Some((user_id, token))) => Response::json(
                StatusCode::OK,
                json!({
                    "token": token,
                    "token_type": "Bearer",
                    "expires_at": written.value,
                    "user_id": user_id,
                })
                .to_string(),
            ),
            (Ok(_), None) => wrong_credentials(),
            (Err(e), _) => db_error(&e),
        }
    }))
}

/// `POST /api/auth/logout`: revokes the caller's session.
pub fn logout(accounts: &Accounts, caller: &Principal, _: &Request<'_>) -> Reply {
    let Via::Session { digest } = caller.via else {
        unreachable!("the route admits sessions only");
    };
    let pending = accounts.db().write(move |conn| {
        conn.query(
            "UPDATE sessions SET revoked_at = now() \
             WHERE token_sha256 = $1 AND revoked_at IS NULL RETURNING id",
            &[&&digest[..]],
        )
    });
    let accounts = accounts.clone();
    let via = caller.via.clone();
    Reply::Later(Box::pin(async move {
        match pending.await {
            Ok(_) => {
                accounts.cache.borrow_mut().revoke(&via, Instant::now());
                Response::new(StatusCode(204), "application/json", "")
            }
            Err(e) => db_error(&e),
        }
    }))
}

/// `GET /api/auth/me`.
pub fn me(accounts: &Accounts, caller: &Principal, _: &Request<'_>) -> Reply {
    let user_id = caller.user_id;
    let via = match caller.via {
        Via::Session { .. } => "session",
        Via::ApiKey { .. } => "api_key",
    };
    let read = accounts
        .db()
        .lookup(None, &LOOKUP_ACCOUNT, user_id, user_json);
    let accounts = accounts.clone();
    Reply::Later(Box::pin(async move {
        let found = match read.await {
            Ok(Some(user)) => Ok(Some(user)),
            // A replica behind the user's registration: the primary has the row.
            Ok(None) => {
                let primary = accounts.db().read_primary(move |conn| {
                    Ok(conn
                        .query_opt(SELECT_ACCOUNT, &[&user_id])?
                        .map(|row| user_json(&row)))
                });
                primary.await
            }
            Err(e) => Err(e),
        };
        match found {
            Ok(Some(mut user)) => {
                user["authenticated_by"] = via.into();
                Response::json(StatusCode::OK, user.to_string())
            }
            // Deleted since its session was cached: as if the session were gone.
            Ok(None) => Response::error(
                StatusCode(401),
                "invalid_session",
                "the session token is unknown, expired or revoked; log in again",
            ),
            Err(e) => db_error(&e),
        }
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    scopes: Vec<String>,
    #[serde(default)]
    label: String,
    #[serde(default = "default_rate")]
    rate_per_second: u32,
}

fn default_rate() -> u32 {
    10
}

/// Most requests a second a key may be given.
const MAX_KEY_RATE: u32 = 10_000;

fn parse_new_key(body: &[u8]) -> Result<(Scopes, String, i32), Response> {
    let expected = "expected {\"scopes\": [\"read\" | \"trade\" | \"withdraw\", ...], \"label\": string (optional), \"rate_per_second\": 1 to 10000 (optional)}";
    let form: NewKey = parse_json_body(body).map_err(|e| e.response("bad_json", expected))?;
    let mut scopes = Scopes::default();
    for name in &form.scopes {
        let scope = Scope::parse(name).ok_or_else(|| {
            invalid(
                "invalid_scope",
                "scopes are \"read\", \"trade\" and \"withdraw\"",
            )
        })?;
        scopes = scopes.with(scope);
    }
    if scopes == Scopes::default() {
        return Err(invalid("invalid_scope", "a key needs at least one scope"));
    }
    if form.label.chars().count() > 100 || form.label.contains('\0') {
        return Err(invalid(
            "invalid_label",
            "label must be at most 100 characters, without NUL",
        ));
    }
    if !(1..=MAX_KEY_RATE).contains(&form.rate_per_second) {
        return Err(invalid(
            "invalid_rate",
            "rate_per_second must be 1 to 10000",
        ));
    }
    Ok((scopes, form.label, form.rate_per_second as i32))
}

/// Checks a new key's body as the route does: the 400 or 422 it would answer, if any. An entry
/// point of the auth fuzz target (tests/fuzz).
pub fn check_new_key_body(body: &[u8]) -> Result<(), Response> {
    parse_new_key(body).map(drop)
}

/// `POST /api/auth/api-keys`: a new key; its secret is in this answer and nowhere else.
pub fn create_key(accounts: &Accounts, caller: &Principal, request: &Request<'_>) -> Reply {
    let Some(secrets_key) = &accounts.shared.secrets_key else {
        return Response::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_keys_disabled",
            "this server has no SECRETS_KEY: API keys are off",
        )
        .into();
    };
    let (scopes, label, rate) = match parse_new_key(request.body) {
        Ok(key) => key,
        Err(response) => return response.into(),
    };
    let key_id = hex::encode(&token::random_bytes::<16>());
    let secret = hex::encode(&token::random_bytes::<32>());
    let sealed = secrets_key.seal(&key_id, secret.as_bytes());
    let user_id = caller.user_id;
    let scope_names: Vec<String> = scopes.names().into_iter().map(String::from).collect();
    let row_key_id = key_id.clone();
    let pending = accounts.db().write(move |conn| {
        let version = i32::try_from(sealed.key_version).unwrap_or(i32::MAX);
        let row = conn.query_one(
            "INSERT INTO api_keys (key_id, user_id, label, secret_ciphertext, secret_nonce, \
                                   key_version, scopes, rate_per_second) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             RETURNING to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[
                &row_key_id,
                &user_id,
                &label,
                &sealed.ciphertext,
                &&sealed.nonce[..],
                &version,
                &scope_names,
                &rate,
            ],
        )?;
        Ok((label.clone(), scope_names.clone(), row.get::<_, String>(0)))
    });
    Reply::Later(Box::pin(async move {
        match pending.await {
            Ok(written) => {
                let (label, scopes, created_at) = written.value;
                Response::json(
                    StatusCode(201),
                    json!({
                        "key_id": key_id,
                        "secret": secret,
                        "label": label,
                        "scopes": scopes,
                        "rate_per_second": rate,
                        "created_at": created_at,
                    })
                    .to_string(),
                )
                .with_header("Location", format!("/api/auth/api-keys/{key_id}"))
            }
            Err(e) => db_error(&e),
        }
    }))
}

/// `GET /api/auth/api-keys`: the caller's live keys, without secrets.
pub fn list_keys(accounts: &Accounts, caller: &Principal, _: &Request<'_>) -> Reply {
    let user_id = caller.user_id;
    let pending = accounts.db().write(move |conn| {
        let rows = conn.query(
            "SELECT key_id, label, scopes, rate_per_second, \
                    to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
             FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL ORDER BY id",
            &[&user_id],
        )?;
        Ok(rows
            .iter()
            .map(|row| {
                json!({
                    "key_id": row.get::<_, String>(0),
                    "label": row.get::<_, String>(1),
                    "scopes": row.get::<_, Vec<String>>(2),
                    "rate_per_second": row.get::<_, i32>(3),
                    "created_at": row.get::<_, String>(4),
                })
            })
            .collect::<Vec<_>>())
    });
    Reply::Later(Box::pin(async move {
        match pending.await {
            Ok(written) => {
                Response::json(StatusCode::OK, json!({ "keys": written.value }).to_string())
            }
            Err(e) => db_error(&e),
        }
    }))
}

fn key_not_found() -> Response {
    Response::error(
        StatusCode::NOT_FOUND,
        "api_key_not_found",
        "you have no live API key with this id",
    )
}

/// `DELETE /api/auth/api-keys/{key_id}`: revokes one of the caller's keys. Another user's key
/// answers 404, as one that does not exist.
pub fn delete_key(accounts: &Accounts, caller: &Principal, request: &Request<'_>) -> Reply {
    let key_id = request.path.rsplit('/').next().unwrap_or_default();
    let well_formed = key_id.len() == 32
        && key_id
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !well_formed {
        return key_not_found().into();
    }
    let key_id = key_id.to_string();
    let user_id = caller.user_id;
    let row_key_id = key_id.clone();
    let pending = accounts.db().write(move |conn| {
        let rows = conn.query(
            "UPDATE api_keys SET revoked_at = now() \
             WHERE key_id = $1 AND user_id = $2 AND revoked_at IS NULL RETURNING id",
            &[&row_key_id, &user_id],
        )?;
        Ok(!rows.is_empty())
    });
    let accounts = accounts.clone();
    Reply::Later(Box::pin(async move {
        match pending.await {
            Ok(written) if written.value => {
                accounts
                    .cache
                    .borrow_mut()
                    .revoke_key(&key_id, Instant::now());
                Response::new(StatusCode(204), "application/json", "")
            }
            Ok(_) => key_not_found(),
            Err(e) => db_error(&e),
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_bodies() {
        let ok = parse_registration(
            br#"{"name":" Ana ","email":" Ana@Example.com ","password":"correct horse","country":"br"}"#,
        )
        .unwrap();
        assert_eq!(
            ok,
            NewAccount {
                name: "Ana".into(),
                email: "ana@example.com".into(),
                password: "correct horse".into(),
                country: Some("BR".into()),
            }
        );
        assert_eq!(ok.currency(), "BRL");
        let us =
            parse_registration(br#"{"name":"Bo","email":"bo@example.com","password":"12345678"}"#)
                .unwrap();
        assert_eq!((us.country.as_deref(), us.currency()), (None, "USD"));
        let code = |body: &[u8]| {
            let response = parse_registration(body).unwrap_err();
            let body: Value = serde_json::from_slice(&response.body).unwrap();
            (
                response.status.0,
                body["error"]["code"].as_str().unwrap().to_string(),
            )
        };
        for (body, status, expected) in [
            (
                &br#"{"name":"A","email":"a@x.io","password":"12345678","role":"admin"}"#[..],
                422,
                "field_not_allowed",
            ),
            (
                br#"{"name":"A","email":"a@x.io","password":"12345678","status":"active"}"#,
                422,
                "field_not_allowed",
            ),
            (
                br#"{"name":"A","email":"a@x.io","password":"1234567"}"#,
                422,
                "invalid_password",
            ),
            (
                br#"{"name":"","email":"a@x.io","password":"12345678"}"#,
                422,
                "invalid_user",
            ),
            (
                br#"{"name":"A","email":"a","password":"12345678"}"#,
                422,
                "invalid_user",
            ),
            (
                br#"{"name":"A","email":"a@x.io","password":"12345678","country":"BRA"}"#,
                422,
                "invalid_country",
            ),
            (
                br#"{"name":"A","email":"a@x.io","password":"12345678","admin":true}"#,
                400,
                "bad_json",
            ),
            (br#"{"name":"A","email":"a@x.io"}"#, 400, "bad_json"),
            (b"not json", 400, "bad_json"),
        ] {
            assert_eq!(
                code(body),
                (status, expected.to_string()),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let long = format!(
            r#"{{"name":"A","email":"a@x.io","password":"{}"}}"#,
            "x".repeat(129)
        );
        assert_eq!(code(long.as_bytes()).1, "invalid_password");
    }

    #[test]
    fn the_client_is_the_trusted_proxys_last_address() {
        let client = |values: &[&str], trust: bool| {
            let headers: Vec<httparse::Header<'_>> = values
                .iter()
                .map(|v| httparse::Header {
                    name: "x-forwarded-for",
                    value: v.as_bytes(),
                })
                .collect();
            let request = Request {
                method: crate::http::Method::Post,
                path: "/api/auth/login",
                query: None,
                headers: &headers,
                body: b"",
                keep_alive: true,
            };
            client_of(&request, trust)
        };
        assert_eq!(client(&["203.0.113.7"], false), "");
        assert_eq!(client(&[], true), "");
        assert_eq!(client(&["203.0.113.7"], true), "203.0.113.7");
        assert_eq!(client(&["1.1.1.1, 203.0.113.7 "], true), "203.0.113.7");
        assert_eq!(
            client(&["1.1.1.1", "10.0.0.1,2001:db8::1"], true),
            "2001:db8::1"
        );
        assert_eq!(client(&["203.0.113.7, not an address"], true), "");
    }

    #[test]
    fn key_bodies() {
        let (scopes, label, rate) =
            parse_new_key(br#"{"scopes":["read","trade"],"label":"bot"}"#).unwrap();
        assert_eq!(
            (scopes.names(), label.as_str(), rate),
            (vec!["read", "trade"], "bot", 10)
        );
        for body in [
            &br#"{"scopes":[]}"#[..],
            br#"{"scopes":["admin"]}"#,
            br#"{"scopes":["read"],"rate_per_second":0}"#,
            br#"{"scopes":["read"],"rate_per_second":10001}"#,
        ] {
            assert_eq!(
                parse_new_key(body).unwrap_err().status.0,
                422,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(
            parse_new_key(br#"{"scopes":["read"],"user_id":2}"#)
                .unwrap_err()
                .status
                .0,
            400
        );
    }
}
