//! Who calls: authentication per request, before the handler, from the route's [`Access`].
//!
//! A request proves who it is with `Authorization: Bearer <session token>` or with a signed
//! request (`X-CBC-APIKEY`, `X-CBC-TIMESTAMP`, `X-CBC-RECV-WINDOW`, `X-CBC-SIGNATURE`; see
//! [`crate::auth::signature`]). Refused with 401 when the credentials are missing, malformed,
//! unknown, expired or revoked, or the signature, window or replay check fails; 403 when the
//! caller lacks the route's scope or role (or the account is not active); 429 with
//! `Retry-After` when an API key is over its rate.
//!
//! The operator routes (jobs, dead letters, debug routes; the reports when `METRICS_ACCESS` is
//! `operator`) also take the bootstrap operator token ([`crate::auth::operator`]), which the
//! shard's app checks before it asks for a session ([`Accounts::admit_then`]).
//!
//! Speed: each shard keeps the sessions and API keys it looked up in its own cache (no lock),
//! and trusts an entry for `AUTH_CACHE_TTL` (2 s by default) from the moment its lookup was
//! sent; only a miss or a stale entry costs a database round trip (on the primary). So a
//! revoked session or key is refused by the shard that revoked it at once, and by every other
//! shard within `AUTH_CACHE_TTL`: that is the documented bound. Unknown credentials are cached
//! too, so a flood of bad tokens costs one lookup per token and shard per period.
//!
//! A live entry still in use after half its TTL is looked up again in the
//! background while the request is answered from the cache (refresh ahead): a caller in steady
//! use normally waits for a lookup only the first time a shard sees it. The sessions due on a
//! shard go out together, many in one statement.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use crate::auth::bucket::{retry_after_secs, Buckets};
use crate::auth::password::PasswordPool;
use crate::auth::role::{Role, Scope, Scopes};
use crate::auth::secrets::{Sealed, SecretsKey};
use crate::auth::signature::{self, ReplaySet, SignatureError, Signed, SignedHeaders};
use crate::auth::{token, unix_millis};
use crate::config::Config;
use crate::db::{DbClient, DbError};
use crate::http::{Reply, Request, Response, StatusCode};
use crate::queue::{Priority, QueueRuntime};

use super::users::db_error;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Public,
    /// A person logged in: a session token, never an API key (managing keys, logging out).
    Session,
    /// A session, or an API key holding this scope.
    Scoped(Scope),
    /// A session of a user whose role is this one or above (operator < manager < admin), or
    /// the operator token (`OPERATOR_TOKEN`, role operator).
    Staff(Role),
    /// A report: open to all, or `Staff(Operator)` with `METRICS_ACCESS=operator`; the shard
    /// resolves it to one of those before it checks a caller.
    Reports,
    /// A user's own resource (the user the path names): that user's session or API key with
    /// `read`, or staff (an operator, manager or admin session, or the operator token). The
    /// guard admits any session or key with `read`; the handler compares ids through
    /// [`Reader`], and anyone else gets the answer of a resource that does not exist.
    OwnerOrStaff,
}

/// Whose data the caller of an [`Access::OwnerOrStaff`] route may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// Staff: anyone's.
    Staff,
    /// This user's only.
    User(i64),
}

impl Reader {
    /// A staff session reads anyone's data; an API key only its own user's, whatever the
    /// user's role (as [`Access::Staff`] takes no API key).
    pub fn of(principal: &Principal) -> Reader {
        match principal.via {
            Via::Session { .. } if principal.role >= Role::Operator => Reader::Staff,
            _ => Reader::User(principal.user_id),
        }
    }

    pub fn may_read(self, user_id: i64) -> bool {
        match self {
            Reader::Staff => true,
            Reader::User(own) => own == user_id,
        }
    }
}

/// What answers a guarded route, once its caller is known.
pub type GuardedHandler = for<'r> fn(&Accounts, &Principal, &Request<'r>) -> Reply;

/// How the caller proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// A session: its token's SHA-256.
    Session { digest: [u8; 32] },
    /// A signed request with this API key.
    ApiKey { key_id: String },
}

/// The caller of a request that passed its route's [`Access`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: i64,
    pub role: Role,
    pub via: Via,
}

/// Why a request is refused; [`Refusal::response`] is its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401.
    Unauthenticated(&'static str, &'static str),
    /// 403.
    Forbidden(&'static str, &'static str),
    /// 429 after this wait.
    RateLimited(Duration),
    /// The database could not say (503 and the like).
    Database(DbError),
}

impl From<SignatureError> for Refusal {
    fn from(error: SignatureError) -> Self {
        let (code, message) = error.describe();
        Refusal::Unauthenticated(code, message)
    }
}

impl Refusal {
    pub fn response(&self) -> Response {
        match self {
            Refusal::Unauthenticated(code, message) => {
                Response::error(StatusCode(401), code, message)
                    .with_header("WWW-Authenticate", "Bearer")
            }
            Refusal::Forbidden(code, message) => Response::error(StatusCode(403), code, message),
            Refusal::RateLimited(wait) => Response::error(
                StatusCode(429),
                "rate_limited",
                "this API key is over its rate; retry after the time in Retry-After",
            )
            .with_header("Retry-After", retry_after_secs(*wait).to_string()),
            Refusal::Database(error) => db_error(error),
        }
    }
}

const INVALID_SESSION: Refusal = Refusal::Unauthenticated(
    "invalid_session",
    "the session token is unknown, expired or revoked; log in again",
);
const INVALID_KEY: Refusal =
    Refusal::Unauthenticated("invalid_api_key", "the API key is unknown or revoked");

/// The credentials a request carries, parsed; the window of a signed one already checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    Bearer { digest: [u8; 32] },
    Signed(SignedHeaders),
}

/// Reads a request's credentials: a bearer token, or signed headers inside their window at
/// `now_ms`. Both at once is refused: which one counts would be a guess.
pub fn credentials(request: &Request<'_>, now_ms: u64) -> Result<Credentials, Refusal> {
    let bearer = request.header("Authorization");
    let api_key = request.header(signature::API_KEY_HEADER);
    match (bearer, api_key) {
        (None, None) => Err(Refusal::Unauthenticated(
            "missing_credentials",
            "send Authorization: Bearer <session token>, or a signed request (X-CBC-APIKEY, X-CBC-TIMESTAMP, X-CBC-SIGNATURE)",
        )),
        (Some(_), Some(_)) => Err(Refusal::Unauthenticated(
            "ambiguous_credentials",
            "send either a bearer token or a signed request, not both",
        )),
        (Some(value), None) => {
            let token = value
                .strip_prefix(b"Bearer ")
                .ok_or(Refusal::Unauthenticated(
                    "bad_authorization",
                    "Authorization must be `Bearer ` and a session token",
                ))?;
            let digest = token::token_digest(token).ok_or(Refusal::Unauthenticated(
                "bad_authorization",
                "a session token is 64 hex digits",
            ))?;
            Ok(Credentials::Bearer { digest })
        }
        (None, Some(api_key)) => {
            let headers = signature::parse_headers(
                api_key,
                request.header(signature::TIMESTAMP_HEADER),
                request.header(signature::RECV_WINDOW_HEADER),
                request.header(signature::SIGNATURE_HEADER),
            )?;
            signature::check_window(now_ms, headers.timestamp_ms, headers.recv_window_ms)?;
            Ok(Credentials::Signed(headers))
        }
    }
}

/// A session as the database knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub user_id: i64,
    pub role: Role,
    pub active: bool,
    pub expires_at_ms: u64,
}

/// An API key as the database knows it, its secret opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub user_id: i64,
    pub role: Role,
    pub active: bool,
    pub scopes: Scopes,
    pub rate_per_second: u32,
    pub secret: Rc<[u8]>,
}

/// Whether a caller of `role` through `via` (with `scopes` for a key) may call a route of
/// `access`.
pub fn check_access(access: Access, role: Role, via: &Via, scopes: Scopes) -> Result<(), Refusal> {
    let is_session = matches!(via, Via::Session { .. });
    match access {
        Access::Public => Ok(()),
        Access::Session if is_session => Ok(()),
        Access::Session => Err(Refusal::Forbidden(
            "session_required",
            "this route needs a login session; an API key cannot call it",
        )),
        Access::Scoped(_) | Access::OwnerOrStaff if is_session => Ok(()),
        Access::Scoped(scope) if scopes.contains(scope) => Ok(()),
        Access::OwnerOrStaff if scopes.contains(Scope::Read) => Ok(()),
        Access::Scoped(_) | Access::OwnerOrStaff => Err(Refusal::Forbidden(
            "missing_scope",
            "this API key lacks the scope this route needs",
        )),
        Access::Staff(least) if is_session && role >= least => Ok(()),
        // Unresolved, a report is as locked as it can be.
        Access::Reports if is_session && role >= Role::Operator => Ok(()),
        Access::Staff(_) | Access::Reports => Err(Refusal::Forbidden(
            "forbidden",
            "this route needs an operator, manager or admin session",
        )),
    }
}

const INACTIVE: Refusal =
    Refusal::Forbidden("account_inactive", "this account is suspended or closed");

/// Admits a bearer session: the record (`None`: unknown or revoked) must be live at `now_ms`.
pub fn admit_session(
    record: Option<&SessionRecord>,
    digest: [u8; 32],
    access: Access,
    now_ms: u64,
) -> Result<Principal, Refusal> {
    let record = record
        .filter(|r| r.expires_at_ms > now_ms)
        .ok_or(INVALID_SESSION)?;
    if !record.active {
        return Err(INACTIVE);
    }
    let via = Via::Session { digest };
    check_access(access, record.role, &via, Scopes::ALL)?;
    Ok(Principal {
        user_id: record.user_id,
        role: record.role,
        via,
    })
}

/// This shard's guards on signed requests.
#[derive(Debug, Default)]
pub struct ShardGuards {
    replay: ReplaySet,
    buckets: Buckets,
}

/// Admits a signed request: signature, then replay, then scope, then rate.
pub fn admit_signed(
    record: Option<&KeyRecord>,
    headers: &SignedHeaders,
    signed: &Signed<'_>,
    access: Access,
    guards: &mut ShardGuards,
    now_ms: u64,
    now: Instant,
) -> Result<Principal, Refusal> {
    let record = record.ok_or(INVALID_KEY)?;
    signature::verify(&record.secret, signed, &headers.signature)?;
    guards.replay.check_and_record(now_ms, headers)?;
    if !record.active {
        return Err(INACTIVE);
    }
    let via = Via::ApiKey {
        key_id: headers.key_id.clone(),
    };
    check_access(access, record.role, &via, record.scopes)?;
    guards
        .buckets
        .take(&headers.key_id, record.rate_per_second, now)
        .map_err(Refusal::RateLimited)?;
    Ok(Principal {
        user_id: record.user_id,
        role: record.role,
        via,
    })
}

/// A looked-up record (`None`: none such), when its lookup was sent, and whether a refresh
/// of it is under way.
#[derive(Debug, Clone)]
struct Cached<T> {
    record: Option<T>,
    fetched_at: Instant,
    refreshing: bool,
}

/// A cached record trusted now (`None`: known not to exist), and whether the caller should
/// look it up again ahead of its expiry: true once per entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trusted<T> {
    pub record: Option<T>,
    pub refresh: bool,
}

/// Entries of each kind a shard keeps; past it the stale ones go, then all.
const MAX_CACHED: usize = 100_000;

/// This shard's sessions and keys, each trusted for `ttl` after its lookup.
#[derive(Debug)]
pub struct CredentialCache {
    ttl: Duration,
    /// From this age on, a live entry in use is refreshed ahead: half of `ttl`. An entry is
    /// refreshed only if used after this age; from three quarters, 29 % of the entries of
    /// sessions used 2.5 times a second per shard were not, and expired into a lookup on the
    /// request. A hot entry costs twice the lookups it cost without, as rows of a few
    /// statements ([`Accounts::refresh_sessions`]).
    refresh_after: Duration,
    sessions: HashMap<[u8; 32], Cached<SessionRecord>>,
    keys: HashMap<String, Cached<KeyRecord>>,
    /// When either map was last emptied to make room (a flood of unknown credentials).
    cleared_at: Option<Instant>,
    /// Sessions to refresh, waiting for the shard's refresh task (one at a time, so that the
    /// sessions due while a refresh runs go out together in the next).
    due_sessions: Vec<[u8; 32]>,
    session_refresher_running: bool,
}

/// Sessions refreshed by one statement, at most.
const SESSIONS_PER_REFRESH: usize = 512;

fn trusted<T: Clone>(
    entry: Option<&mut Cached<T>>,
    ttl: Duration,
    refresh_after: Duration,
    now: Instant,
) -> Option<Trusted<T>> {
    let entry = entry?;
    let age = now.saturating_duration_since(entry.fetched_at);
    if age >= ttl {
        return None;
    }
    // Only a live record: an unknown token or key id does not come to exist later.
    let refresh = entry.record.is_some() && age >= refresh_after && !entry.refreshing;
    entry.refreshing |= refresh;
    Some(Trusted {
        record: entry.record.clone(),
        refresh,
    })
}

fn store<K: std::hash::Hash + Eq, T>(
    map: &mut HashMap<K, Cached<T>>,
    cleared_at: &mut Option<Instant>,
    (key, record): (K, Option<T>),
    ttl: Duration,
    fetched_at: Instant,
) {
    // A lookup sent before the entry was last written (a revocation on this shard, above all),
    // or before the map was last cleared (which forgot such writes), read an older state: it
    // must not bring a revoked credential back.
    let older = map.get(&key).is_some_and(|e| e.fetched_at > fetched_at);
    if older || cleared_at.is_some_and(|cleared| fetched_at < cleared) {
        return;
    }
    if map.len() >= MAX_CACHED {
        let now = Instant::now();
        map.retain(|_, e| now.saturating_duration_since(e.fetched_at) < ttl);
        if map.len() >= MAX_CACHED {
            map.clear();
            *cleared_at = Some(now);
        }
    }
    map.insert(
        key,
        Cached {
            record,
            fetched_at,
            refreshing: false,
        },
    );
}

impl CredentialCache {
    pub fn new(ttl: Duration) -> Self {
        CredentialCache {
            ttl,
            refresh_after: ttl / 2,
            sessions: HashMap::new(),
            keys: HashMap::new(),
            cleared_at: None,
            due_sessions: Vec::new(),
            session_refresher_running: false,
        }
    }

    /// How long the session refresher gathers sessions due before it looks them up: a
    /// twentieth of the half TTL a refresh has to land in (50 ms of the default 2 s).
    pub fn refresh_gather(&self) -> Duration {
        (self.ttl - self.refresh_after) / 20
    }

    /// Queues a session's refresh; true when the caller must start the refresh task.
    pub fn queue_session_refresh(&mut self, digest: [u8; 32]) -> bool {
        self.due_sessions.push(digest);
        !std::mem::replace(&mut self.session_refresher_running, true)
    }

    /// Whether a full statement's worth of sessions is due: the refresher goes on at once.
    pub fn a_refresh_is_full(&self) -> bool {
        self.due_sessions.len() >= SESSIONS_PER_REFRESH
    }

    /// The next sessions the refresh task looks up, skipping those whose entry was replaced
    /// or dropped since they fell due (a refresh that fell behind looks up only what is still
    /// cached); none (and the task stops) when none wait.
    pub fn take_due_sessions(&mut self) -> Vec<[u8; 32]> {
        let sessions = &self.sessions;
        let mut due = Vec::new();
        let mut taken = 0;
        for digest in &self.due_sessions {
            if due.len() == SESSIONS_PER_REFRESH {
                break;
            }
            taken += 1;
            if sessions.get(digest).is_some_and(|e| e.refreshing) {
                due.push(*digest);
            }
        }
        self.due_sessions.drain(..taken);
        self.session_refresher_running = !due.is_empty();
        due
    }

    /// The session, if looked up less than `ttl` ago.
    pub fn session(&mut self, digest: &[u8; 32], now: Instant) -> Option<Trusted<SessionRecord>> {
        let (ttl, refresh_after) = (self.ttl, self.refresh_after);
        trusted(self.sessions.get_mut(digest), ttl, refresh_after, now)
    }

    pub fn key(&mut self, key_id: &str, now: Instant) -> Option<Trusted<KeyRecord>> {
        let (ttl, refresh_after) = (self.ttl, self.refresh_after);
        trusted(self.keys.get_mut(key_id), ttl, refresh_after, now)
    }

    /// What a lookup sent at `fetched_at` found.
    pub fn store_session(
        &mut self,
        digest: [u8; 32],
        record: Option<SessionRecord>,
        fetched_at: Instant,
    ) {
        let entry = (digest, record);
        store(
            &mut self.sessions,
            &mut self.cleared_at,
            entry,
            self.ttl,
            fetched_at,
        );
    }

    pub fn store_key(&mut self, key_id: String, record: Option<KeyRecord>, fetched_at: Instant) {
        let entry = (key_id, record);
        store(
            &mut self.keys,
            &mut self.cleared_at,
            entry,
            self.ttl,
            fetched_at,
        );
    }

    /// Forgets a session or key revoked on this shard: refused here from now on.
    pub fn revoke(&mut self, via: &Via, now: Instant) {
        match via {
            Via::Session { digest } => self.store_session(*digest, None, now),
            Via::ApiKey { key_id } => self.store_key(key_id.clone(), None, now),
        }
    }

    pub fn revoke_key(&mut self, key_id: &str, now: Instant) {
        self.store_key(key_id.to_string(), None, now);
    }
}

/// What every shard's accounts share: the password pool, the key that seals API secrets and
/// the settings.
pub struct AccountsShared {
    pub passwords: PasswordPool,
    /// `None`: API keys are off (no `SECRETS_KEY`).
    pub secrets_key: Option<SecretsKey>,
    pub session_ttl: Duration,
    pub cache_ttl: Duration,
    pub login_max_failures: u32,
    pub login_lockout_window: Duration,
    pub login_max_client_failures: u32,
    pub trust_forwarded_for: bool,
    /// The financial rules' settings (withdrawals, coupons).
    pub money_rules: super::financial_rules::MoneyRules,
    /// The affiliate settings (shares, hold, conversion bonus, landing page).
    pub affiliate: crate::affiliate::Settings,
    /// The money figures (recharge minimum, bonus...).
    pub figures: crate::ledger::Figures,
    /// The payment webhook's secret; `None`: the webhook answers 503.
    pub payment_webhook_secret: Option<Vec<u8>>,
    /// Trading's exchange client, I/O pool and figures.
    pub trading: Arc<crate::trading::TradingShared>,
}

impl AccountsShared {
    /// Starts the password pool. The config was validated, so its key parses.
    pub fn start(config: &Config) -> std::io::Result<AccountsShared> {
        let auth = &config.auth;
        Ok(AccountsShared {
            passwords: PasswordPool::new(auth.password_hash_threads, auth.password_hash_queue)?,
            secrets_key: auth
                .secrets_key(config.server.debug_routes)
                .unwrap_or_else(|e| panic!("validated at start-up: {e}")),
            session_ttl: Duration::from_millis(auth.session_ttl_ms),
            cache_ttl: Duration::from_millis(auth.auth_cache_ttl_ms),
            login_max_failures: auth.login_max_failures,
            login_lockout_window: Duration::from_millis(auth.login_lockout_window_ms),
            login_max_client_failures: auth.login_max_client_failures,
            trust_forwarded_for: auth.trust_forwarded_for,
            money_rules: super::financial_rules::MoneyRules::from_config(config),
            affiliate: crate::affiliate::Settings::from_config(config),
            figures: config.money.figures(),
            payment_webhook_secret: config.money.webhook_secret(),
            trading: Arc::new(crate::trading::TradingShared::start(config)?),
        })
    }
}

/// Built by the first shard that needs it, then shared by all (the factory keeps it).
pub type SharedAccountsCell = OnceLock<Arc<AccountsShared>>;

/// One shard's accounts: its way to the database, its cache and guards. Clones share them (the
/// futures of later replies hold one); all on the shard's thread.
#[derive(Clone)]
pub struct Accounts {
    pub shared: Arc<AccountsShared>,
    db: Rc<RefCell<DbClient>>,
    pub cache: Rc<RefCell<CredentialCache>>,
    guards: Rc<RefCell<ShardGuards>>,
    /// The shard's task runner: refreshes ahead run there, off the request.
    runtime: Rc<dyn QueueRuntime>,
}

/// A request's parts a handler reads, kept for after a lookup.
struct OwnedRequest {
    method: crate::http::Method,
    path: String,
    query: Option<String>,
    /// Its headers but the credentials (a job's `Idempotency-Key` is read after a lookup).
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    keep_alive: bool,
}

/// Whether a header carries credentials: those stay behind when a request is kept.
fn is_credential(name: &str) -> bool {
    name.eq_ignore_ascii_case("Authorization")
        || name.eq_ignore_ascii_case(signature::SIGNATURE_HEADER)
}

impl OwnedRequest {
    fn of(request: &Request<'_>) -> Self {
        OwnedRequest {
            method: request.method,
            path: request.path.to_string(),
            query: request.query.map(str::to_string),
            headers: request
                .headers
                .iter()
                .filter(|h| !is_credential(h.name))
                .map(|h| (h.name.to_string(), h.value.to_vec()))
                .collect(),
            body: request.body.to_vec(),
            keep_alive: request.keep_alive,
        }
    }

    /// Its headers, as a request holds them.
    fn headers(&self) -> Vec<httparse::Header<'_>> {
        self.headers
            .iter()
            .map(|(name, value)| httparse::Header { name, value })
            .collect()
    }

    /// The request again, with `headers` (from [`OwnedRequest::headers`]).
    fn request<'a>(&'a self, headers: &'a [httparse::Header<'a>]) -> Request<'a> {
        Request {
            method: self.method,
            path: &self.path,
            query: self.query.as_deref(),
            headers,
            body: &self.body,
            keep_alive: self.keep_alive,
        }
    }
}

fn signed_parts<'a>(headers: &'a SignedHeaders, request: &Request<'a>) -> Signed<'a> {
    Signed {
        timestamp: &headers.timestamp_text,
        method: request.method.as_str(),
        path: request.path,
        query: request.query.unwrap_or(""),
        body: request.body,
    }
}

/// A live session's columns (then, in the refresher's statement, its digest).
macro_rules! session_columns {
    () => {
        "SELECT s.user_id, u.role, u.status = 'active', \
         (extract(epoch FROM s.expires_at) * 1000)::bigint"
    };
}
macro_rules! live_sessions {
    () => {
        " FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.revoked_at IS NULL AND "
    };
}
const SELECT_SESSION: &str = concat!(session_columns!(), live_sessions!(), "s.token_sha256 = $1");
const SELECT_SESSIONS: &str = concat!(
    session_columns!(),
    ", s.token_sha256",
    live_sessions!(),
    "s.token_sha256 = ANY($1)"
);

/// A session's row as read (user id, role, active, expiry in Unix ms).
type SessionRow = (i64, String, bool, i64);

fn session_row(row: &postgres::Row) -> SessionRow {
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

/// What a refresh found for each session due (`None`: no live such session). A digest can be
/// due twice (its entry expired and was looked up again while it waited): each gets the row.
fn refreshed(
    due: Vec<[u8; 32]>,
    found: &HashMap<Vec<u8>, SessionRow>,
) -> impl Iterator<Item = ([u8; 32], Option<SessionRecord>)> + '_ {
    due.into_iter().map(|digest| {
        let record = found.get(&digest[..]).cloned().and_then(session_record);
        (digest, record)
    })
}

/// `None` for a role this build does not know (refused as no session).
fn session_record((user_id, role, active, expires_at_ms): SessionRow) -> Option<SessionRecord> {
    Some(SessionRecord {
        user_id,
        role: Role::parse(&role)?,
        active,
        expires_at_ms: u64::try_from(expires_at_ms).unwrap_or(0),
    })
}
const SELECT_KEY: &str = "SELECT k.user_id, u.role, u.status = 'active', k.secret_ciphertext, \
     k.secret_nonce, k.key_version, k.scopes, k.rate_per_second \
     FROM api_keys k JOIN users u ON u.id = k.user_id \
     WHERE k.key_id = $1 AND k.revoked_at IS NULL";

/// What a lookup found for a request's credentials (`None`: no live such session or key).
enum LookedUp {
    Session([u8; 32], Option<SessionRecord>),
    Key(SignedHeaders, Option<KeyRecord>),
}

/// A key's row before its secret is opened (that happens on the shard, with the key).
struct KeyRow {
    user_id: i64,
    role: String,
    active: bool,
    sealed: Sealed,
    scopes: Vec<String>,
    rate_per_second: i32,
}

impl Accounts {
    pub fn new(shared: Arc<AccountsShared>, db: DbClient, runtime: Rc<dyn QueueRuntime>) -> Self {
        let cache = CredentialCache::new(shared.cache_ttl);
        Accounts {
            shared,
            db: Rc::new(RefCell::new(db)),
            cache: Rc::new(RefCell::new(cache)),
            guards: Rc::default(),
            runtime,
        }
    }

    /// The shard's database client, for one synchronous call (never held across an await).
    pub fn db(&self) -> std::cell::RefMut<'_, DbClient> {
        self.db.borrow_mut()
    }

    /// Authenticates `request` for `access`, then answers it with `handler`; or answers the
    /// refusal. A cached caller is answered at once; else after one lookup.
    pub fn guard(&self, request: &Request<'_>, access: Access, handler: GuardedHandler) -> Reply {
        self.admit_then(request, access, handler)
    }

    /// Authenticates `request` for `access`, then answers it with `then`; or answers the
    /// refusal. A cached caller is answered at once; else after one lookup.
    pub fn admit_then<F>(&self, request: &Request<'_>, access: Access, then: F) -> Reply
    where
        F: for<'r> FnOnce(&Accounts, &Principal, &Request<'r>) -> Reply + 'static,
    {
        let now_ms = unix_millis(SystemTime::now());
        let now = Instant::now();
        let credentials = match credentials(request, now_ms) {
            Ok(credentials) => credentials,
            Err(refusal) => return refusal.response().into(),
        };
        let cached = match &credentials {
            Credentials::Bearer { digest } => {
                let trusted = self.cache.borrow_mut().session(digest, now);
                trusted.map(|t| {
                    let admitted = admit_session(t.record.as_ref(), *digest, access, now_ms);
                    (t.refresh, admitted)
                })
            }
            Credentials::Signed(headers) => {
                let trusted = self.cache.borrow_mut().key(&headers.key_id, now);
                trusted.map(|t| {
                    let admitted =
                        self.admit_key(t.record.as_ref(), headers, request, access, now_ms, now);
                    (t.refresh, admitted)
                })
            }
        };
        if let Some((refresh, admitted)) = cached {
            if refresh {
                self.refresh_ahead(credentials);
            }
            return match admitted {
                Ok(principal) => then(self, &principal, request),
                Err(refusal) => refusal.response().into(),
            };
        }
        let owned = OwnedRequest::of(request);
        let accounts = self.clone();
        let lookup = self.look_up(credentials);
        Reply::Later(Box::pin(async move {
            let headers = owned.headers();
            let request = owned.request(&headers);
            let admitted = lookup.await.and_then(|found| {
                let now_ms = unix_millis(SystemTime::now());
                match &found {
                    LookedUp::Session(digest, record) => {
                        admit_session(record.as_ref(), *digest, access, now_ms)
                    }
                    LookedUp::Key(headers, record) => accounts.admit_key(
                        record.as_ref(),
                        headers,
                        &request,
                        access,
                        now_ms,
                        Instant::now(),
                    ),
                }
            });
            match admitted {
                Ok(principal) => match then(&accounts, &principal, &request) {
                    Reply::Ready(response) => response,
                    Reply::Later(pending) => pending.await,
                },
                Err(refusal) => refusal.response(),
            }
        }))
    }

    fn admit_key(
        &self,
        record: Option<&KeyRecord>,
        headers: &SignedHeaders,
        request: &Request<'_>,
        access: Access,
        now_ms: u64,
        now: Instant,
    ) -> Result<Principal, Refusal> {
        let signed = signed_parts(headers, request);
        let mut guards = self.guards.borrow_mut();
        admit_signed(record, headers, &signed, access, &mut guards, now_ms, now)
    }

    /// Looks a cached credential up again off the request, while the request goes on with the
    /// cached entry: a session through the shard's session refresher (many sessions in one
    /// statement), a key in a task of its own. A failed refresh leaves the entry as it was, to
    /// expire at its TTL and be looked up by the request that finds it stale, as without
    /// refreshes.
    fn refresh_ahead(&self, credentials: Credentials) {
        let refresh: Pin<Box<dyn Future<Output = ()>>> = match credentials {
            Credentials::Bearer { digest } => {
                if !self.cache.borrow_mut().queue_session_refresh(digest) {
                    return;
                }
                Box::pin(self.clone().refresh_sessions())
            }
            signed @ Credentials::Signed(_) => {
                let lookup = self.look_up(signed);
                Box::pin(async move {
                    if let Err(refusal) = lookup.await {
                        log::debug!("an API key's refresh ahead failed: {refusal:?}");
                    }
                })
            }
        };
        self.runtime.spawn(Priority::High, refresh);
    }

    /// The shard's session refresher: looks up the sessions due, up to
    /// [`SESSIONS_PER_REFRESH`] in one statement on the primary, until none are due.
    async fn refresh_sessions(self) {
        let gather = self.cache.borrow().refresh_gather();
        loop {
            // The sessions that fall due meanwhile go in the same statement.
            if !self.cache.borrow().a_refresh_is_full() {
                self.runtime.sleep(gather).await;
            }
            let due = self.cache.borrow_mut().take_due_sessions();
            if due.is_empty() {
                return;
            }
            let asked = Instant::now();
            let digests: Vec<Vec<u8>> = due.iter().map(|d| d.to_vec()).collect();
            let pending = self.db().read_primary(move |conn| {
                let rows = conn.query(SELECT_SESSIONS, &[&digests])?;
                Ok(rows
                    .iter()
                    .map(|row| (row.get::<_, Vec<u8>>(4), session_row(row)))
                    .collect::<HashMap<_, _>>())
            });
            match pending.await {
                Ok(found) => {
                    let mut cache = self.cache.borrow_mut();
                    for (digest, record) in refreshed(due, &found) {
                        cache.store_session(digest, record, asked);
                    }
                }
                Err(error) => log::debug!("a sessions' refresh ahead failed: {error}"),
            }
        }
    }

    /// Looks the credentials up on the primary (a plain read there, outside the write groups:
    /// a lookup waited behind other requests' commits when it ran as a write) and caches what
    /// it finds, as of when the lookup was sent.
    fn look_up(
        &self,
        credentials: Credentials,
    ) -> Pin<Box<dyn Future<Output = Result<LookedUp, Refusal>>>> {
        let cache = self.cache.clone();
        let asked = Instant::now();
        match credentials {
            Credentials::Bearer { digest } => {
                let pending = self.db().read_primary(move |conn| {
                    let row = conn.query_opt(SELECT_SESSION, &[&&digest[..]])?;
                    Ok(row.map(|row| session_row(&row)))
                });
                Box::pin(async move {
                    let row = pending.await.map_err(Refusal::Database)?;
                    let record = row.and_then(session_record);
                    cache
                        .borrow_mut()
                        .store_session(digest, record.clone(), asked);
                    Ok(LookedUp::Session(digest, record))
                })
            }
            Credentials::Signed(headers) => {
                let Some(secrets_key) = self.shared.secrets_key.clone() else {
                    return Box::pin(std::future::ready(Err(API_KEYS_OFF)));
                };
                let key_id = headers.key_id.clone();
                let pending = self.db().read_primary(move |conn| {
                    let row = conn.query_opt(SELECT_KEY, &[&key_id])?;
                    Ok(row.map(|row| KeyRow {
                        user_id: row.get(0),
                        role: row.get(1),
                        active: row.get(2),
                        sealed: Sealed {
                            ciphertext: row.get(3),
                            nonce: row.get::<_, Vec<u8>>(4).try_into().unwrap_or_default(),
                            key_version: row.get::<_, i32>(5).try_into().unwrap_or(0),
                        },
                        scopes: row.get(6),
                        rate_per_second: row.get(7),
                    }))
                });
                Box::pin(async move {
                    let row = pending.await.map_err(Refusal::Database)?;
                    let record = row.and_then(|row| open_key(&secrets_key, &headers.key_id, row));
                    cache
                        .borrow_mut()
                        .store_key(headers.key_id.clone(), record.clone(), asked);
                    Ok(LookedUp::Key(headers, record))
                })
            }
        }
    }
}

/// Signed requests while no `SECRETS_KEY` is set.
pub const API_KEYS_OFF: Refusal = Refusal::Unauthenticated(
    "api_keys_disabled",
    "this server has no SECRETS_KEY: API keys are off",
);

fn open_key(secrets_key: &SecretsKey, key_id: &str, row: KeyRow) -> Option<KeyRecord> {
    let Some(secret) = secrets_key.open(key_id, &row.sealed) else {
        log::warn!(
            "API key {key_id}: its secret does not open under SECRETS_KEY version {} (sealed under version {})",
            secrets_key.version,
            row.sealed.key_version
        );
        return None;
    };
    Some(KeyRecord {
        user_id: row.user_id,
        role: Role::parse(&row.role)?,
        active: row.active,
        scopes: row.scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
        rate_per_second: u32::try_from(row.rate_per_second).unwrap_or(1).max(1),
        secret: secret.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(headers: &'a [httparse::Header<'a>]) -> Request<'a> {
        Request {
            method: crate::http::Method::Get,
            path: "/api/auth/me",
            query: None,
            headers,
            body: b"",
            keep_alive: true,
        }
    }

    fn header<'a>(name: &'a str, value: &'a [u8]) -> httparse::Header<'a> {
        httparse::Header { name, value }
    }

    #[test]
    fn a_kept_request_keeps_its_headers_but_the_credentials() {
        let headers = [
            header("Authorization", b"Bearer secret"),
            header("Idempotency-Key", b"order-7"),
            header("x-cbc-signature", b"00"),
        ];
        let owned = OwnedRequest::of(&request(&headers));
        let kept = owned.headers();
        let again = owned.request(&kept);
        assert_eq!(again.header("Idempotency-Key"), Some(&b"order-7"[..]));
        assert_eq!(again.header("Authorization"), None);
        assert_eq!(again.header("X-CBC-SIGNATURE"), None);
        assert_eq!(again.path, "/api/auth/me");
    }

    #[test]
    fn credentials_are_read_from_either_form_and_refused_when_unclear() {
        let token = token::new_token();
        let bearer = format!("Bearer {token}");
        let now = 1_700_000_000_000;
        let cases: Vec<(Vec<httparse::Header<'_>>, Result<&str, &str>)> = vec![
            (vec![], Err("missing_credentials")),
            (
                vec![header("authorization", bearer.as_bytes())],
                Ok("bearer"),
            ),
            (
                vec![header("Authorization", b"Basic abc")],
                Err("bad_authorization"),
            ),
            (
                vec![header("Authorization", b"Bearer 1234")],
                Err("bad_authorization"),
            ),
            (
                vec![
                    header("Authorization", bearer.as_bytes()),
                    header("X-CBC-APIKEY", b"0123456789abcdef0123456789abcdef"),
                ],
                Err("ambiguous_credentials"),
            ),
            (
                vec![header("X-CBC-APIKEY", b"0123456789abcdef0123456789abcdef")],
                Err("bad_signed_headers"),
            ),
            (
                vec![
                    header("X-CBC-APIKEY", b"0123456789abcdef0123456789abcdef"),
                    header("X-CBC-TIMESTAMP", b"1700000000000"),
                    header("X-CBC-SIGNATURE", &[b'a'; 64]),
                ],
                Ok("signed"),
            ),
            (
                vec![
                    header("X-CBC-APIKEY", b"0123456789abcdef0123456789abcdef"),
                    header("X-CBC-TIMESTAMP", b"1700000001001"),
                    header("X-CBC-SIGNATURE", &[b'a'; 64]),
                ],
                Err("timestamp_in_future"),
            ),
        ];
        for (headers, expected) in cases {
            let got = match credentials(&request(&headers), now) {
                Ok(Credentials::Bearer { .. }) => Ok("bearer"),
                Ok(Credentials::Signed(_)) => Ok("signed"),
                Err(Refusal::Unauthenticated(code, _)) => Err(code),
                Err(other) => panic!("{other:?}"),
            };
            assert_eq!(got, expected, "{headers:?}");
        }
    }

    #[test]
    fn access_by_route_role_and_scope() {
        let session = Via::Session { digest: [0; 32] };
        let key = Via::ApiKey { key_id: "k".into() };
        let read: Scopes = [Scope::Read].into_iter().collect();
        let code = |r: Result<(), Refusal>| match r {
            Ok(()) => "ok",
            Err(Refusal::Forbidden(code, _)) => code,
            Err(other) => panic!("{other:?}"),
        };
        let cases = [
            (Access::Public, Role::User, &key, Scopes::default(), "ok"),
            (Access::Session, Role::User, &session, Scopes::ALL, "ok"),
            (
                Access::Session,
                Role::Admin,
                &key,
                Scopes::ALL,
                "session_required",
            ),
            (
                Access::Scoped(Scope::Read),
                Role::User,
                &session,
                Scopes::ALL,
                "ok",
            ),
            (Access::Scoped(Scope::Read), Role::User, &key, read, "ok"),
            (
                Access::Scoped(Scope::Trade),
                Role::User,
                &key,
                read,
                "missing_scope",
            ),
            (
                Access::Staff(Role::Operator),
                Role::Operator,
                &session,
                Scopes::ALL,
                "ok",
            ),
            (
                Access::Staff(Role::Operator),
                Role::Admin,
                &session,
                Scopes::ALL,
                "ok",
            ),
            (
                Access::Staff(Role::Operator),
                Role::AffiliateVip,
                &session,
                Scopes::ALL,
                "forbidden",
            ),
            (
                Access::Staff(Role::Operator),
                Role::Admin,
                &key,
                Scopes::ALL,
                "forbidden",
            ),
            (
                Access::Staff(Role::Admin),
                Role::Manager,
                &session,
                Scopes::ALL,
                "forbidden",
            ),
            (
                Access::OwnerOrStaff,
                Role::User,
                &session,
                Scopes::ALL,
                "ok",
            ),
            (Access::OwnerOrStaff, Role::User, &key, read, "ok"),
            (
                Access::OwnerOrStaff,
                Role::Admin,
                &key,
                [Scope::Trade].into_iter().collect(),
                "missing_scope",
            ),
        ];
        for (access, role, via, scopes, expected) in cases {
            assert_eq!(
                code(check_access(access, role, via, scopes)),
                expected,
                "{access:?} {role:?} {via:?}"
            );
        }
    }

    #[test]
    fn owners_read_their_own_data_and_staff_sessions_anyones() {
        let principal = |role, via| Principal {
            user_id: 7,
            role,
            via,
        };
        let session = || Via::Session { digest: [0; 32] };
        let key = || Via::ApiKey { key_id: "k".into() };
        let user = Reader::of(&principal(Role::AffiliateVip, session()));
        assert_eq!(user, Reader::User(7));
        assert!(user.may_read(7));
        assert!(!user.may_read(8));
        for role in [Role::Operator, Role::Manager, Role::Admin] {
            assert_eq!(Reader::of(&principal(role, session())), Reader::Staff);
            // A staff user's API key reads only its own user, as staff routes take no key.
            assert_eq!(Reader::of(&principal(role, key())), Reader::User(7));
        }
        assert!(Reader::Staff.may_read(8));
    }

    #[test]
    fn sessions_must_be_known_live_and_active() {
        let now = 1_000_000;
        let live = SessionRecord {
            user_id: 7,
            role: Role::User,
            active: true,
            expires_at_ms: now + 1,
        };
        let admitted = admit_session(Some(&live), [1; 32], Access::Session, now).unwrap();
        assert_eq!(admitted.user_id, 7);
        let expired = SessionRecord {
            expires_at_ms: now,
            ..live.clone()
        };
        assert_eq!(
            admit_session(Some(&expired), [1; 32], Access::Session, now),
            Err(INVALID_SESSION)
        );
        assert_eq!(
            admit_session(None, [1; 32], Access::Session, now),
            Err(INVALID_SESSION)
        );
        let suspended = SessionRecord {
            active: false,
            ..live
        };
        assert_eq!(
            admit_session(Some(&suspended), [1; 32], Access::Session, now),
            Err(INACTIVE)
        );
    }

    #[test]
    fn signed_requests_are_checked_for_signature_replay_scope_and_rate() {
        let secret: Rc<[u8]> = Rc::from(&b"secret"[..]);
        let record = KeyRecord {
            user_id: 3,
            role: Role::User,
            active: true,
            scopes: [Scope::Read].into_iter().collect(),
            rate_per_second: 2,
            secret: secret.clone(),
        };
        let now_ms = 1_700_000_000_000;
        let now = Instant::now();
        let mut guards = ShardGuards::default();
        let sign = |timestamp: &str, body: &'static [u8]| {
            let signed = Signed {
                timestamp,
                method: "GET",
                path: "/api/auth/me",
                query: "",
                body,
            };
            crate::auth::hex::encode(&signature::sign(&secret, &signed))
        };
        let mut attempt =
            |timestamp: &str, body: &'static [u8], signature: &str, access: Access| {
                let headers = signature::parse_headers(
                    b"0123456789abcdef0123456789abcdef",
                    Some(timestamp.as_bytes()),
                    None,
                    Some(signature.as_bytes()),
                )
                .unwrap();
                let signed = Signed {
                    timestamp,
                    method: "GET",
                    path: "/api/auth/me",
                    query: "",
                    body,
                };
                admit_signed(
                    Some(&record),
                    &headers,
                    &signed,
                    access,
                    &mut guards,
                    now_ms,
                    now,
                )
            };
        let read = Access::Scoped(Scope::Read);
        let first = sign("1700000000000", b"");
        assert_eq!(
            attempt("1700000000000", b"", &first, read).unwrap().user_id,
            3
        );
        assert_eq!(
            attempt("1700000000000", b"", &first, read),
            Err(SignatureError::Replayed.into())
        );
        assert_eq!(
            attempt("1700000000001", b"", &first, read),
            Err(SignatureError::BadSignature.into())
        );
        let altered = sign("1700000000002", b"");
        assert_eq!(
            attempt("1700000000002", b"{}", &altered, read),
            Err(SignatureError::BadSignature.into())
        );
        let trade = sign("1700000000003", b"");
        assert!(matches!(
            attempt("1700000000003", b"", &trade, Access::Scoped(Scope::Trade)),
            Err(Refusal::Forbidden("missing_scope", _))
        ));
        // Rate 2 a second: one taken above, one more, then 429.
        let second = sign("1700000000004", b"");
        assert!(attempt("1700000000004", b"", &second, read).is_ok());
        let third = sign("1700000000005", b"");
        assert!(matches!(
            attempt("1700000000005", b"", &third, read),
            Err(Refusal::RateLimited(_))
        ));
    }

    fn live_session() -> SessionRecord {
        SessionRecord {
            user_id: 1,
            role: Role::User,
            active: true,
            expires_at_ms: u64::MAX,
        }
    }

    fn trusted_now(record: Option<SessionRecord>, refresh: bool) -> Option<Trusted<SessionRecord>> {
        Some(Trusted { record, refresh })
    }

    #[test]
    fn cache_entries_expire_after_the_ttl_and_revocation_is_immediate_here() {
        let mut cache = CredentialCache::new(Duration::from_millis(100));
        let now = Instant::now();
        let record = live_session();
        assert_eq!(cache.session(&[1; 32], now), None);
        cache.store_session([1; 32], Some(record.clone()), now);
        assert_eq!(
            cache.session(&[1; 32], now),
            trusted_now(Some(record), false)
        );
        assert_eq!(
            cache.session(&[1; 32], now + Duration::from_millis(100)),
            None
        );
        cache.revoke(&Via::Session { digest: [1; 32] }, now);
        assert_eq!(cache.session(&[1; 32], now), trusted_now(None, false));
    }

    #[test]
    fn a_live_entry_in_use_is_refreshed_once_ahead_of_its_expiry() {
        let mut cache = CredentialCache::new(Duration::from_millis(100));
        let t0 = Instant::now();
        let live = Some(live_session());
        cache.store_session([1; 32], live.clone(), t0);
        cache.store_session([2; 32], None, t0);
        let after = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(
            cache.session(&[1; 32], after(49)),
            trusted_now(live.clone(), false)
        );
        // From half the TTL: the first caller refreshes, later ones do not.
        assert_eq!(
            cache.session(&[1; 32], after(50)),
            trusted_now(live.clone(), true)
        );
        assert_eq!(
            cache.session(&[1; 32], after(80)),
            trusted_now(live.clone(), false)
        );
        // An unknown token is never refreshed: it expires.
        assert_eq!(cache.session(&[2; 32], after(90)), trusted_now(None, false));
        // The refresh's answer, as of when it was sent, starts a new period.
        cache.store_session([1; 32], live.clone(), after(50));
        assert_eq!(
            cache.session(&[1; 32], after(99)),
            trusted_now(live.clone(), false)
        );
        assert_eq!(cache.session(&[1; 32], after(100)), trusted_now(live, true));
    }

    /// Digest number `n`.
    fn digest(n: u16) -> [u8; 32] {
        let mut digest = [0; 32];
        digest[..2].copy_from_slice(&n.to_be_bytes());
        digest
    }

    /// Caches session `n` as looked up at `t0` and makes it due at half the 100 ms TTL; true
    /// when its queueing starts the refresher.
    fn fall_due(cache: &mut CredentialCache, n: u16, t0: Instant) -> bool {
        cache.store_session(digest(n), Some(live_session()), t0);
        let trusted = cache.session(&digest(n), t0 + Duration::from_millis(50));
        assert!(trusted.is_some_and(|t| t.refresh), "session {n} is due");
        cache.queue_session_refresh(digest(n))
    }

    #[test]
    fn sessions_due_while_a_refresh_runs_wait_for_the_next_one() {
        let mut cache = CredentialCache::new(Duration::from_millis(100));
        let t0 = Instant::now();
        assert!(
            fall_due(&mut cache, 1, t0),
            "the first starts the refresher"
        );
        assert!(!fall_due(&mut cache, 2, t0));
        assert_eq!(cache.take_due_sessions(), vec![digest(1), digest(2)]);
        // Due while that statement runs: taken by the same task next.
        assert!(!fall_due(&mut cache, 3, t0));
        assert_eq!(cache.take_due_sessions(), vec![digest(3)]);
        assert!(cache.take_due_sessions().is_empty());
        // The task stopped: the next one due starts another.
        assert!(fall_due(&mut cache, 4, t0));
        for n in 5..=SESSIONS_PER_REFRESH as u16 + 5 {
            fall_due(&mut cache, n, t0);
        }
        assert!(cache.a_refresh_is_full());
        assert_eq!(cache.take_due_sessions().len(), SESSIONS_PER_REFRESH);
        assert!(!cache.a_refresh_is_full());
        assert_eq!(cache.take_due_sessions().len(), 2);
    }

    #[test]
    fn a_session_looked_up_again_since_it_fell_due_is_not_refreshed() {
        let mut cache = CredentialCache::new(Duration::from_millis(100));
        let t0 = Instant::now();
        fall_due(&mut cache, 1, t0);
        fall_due(&mut cache, 2, t0);
        // Session 1 expired and was looked up on a request before the refresher came.
        let later = t0 + Duration::from_millis(120);
        cache.store_session(digest(1), Some(live_session()), later);
        assert_eq!(cache.take_due_sessions(), vec![digest(2)]);
    }

    #[test]
    fn a_lookup_sent_before_the_cache_was_emptied_is_not_kept() {
        let mut cache = CredentialCache::new(Duration::from_secs(60));
        let sent = Instant::now();
        cache.revoke(&Via::Session { digest: [1; 32] }, Instant::now());
        // A flood of unknown tokens fills the cache; the next one empties it, revocation too.
        for n in 0..=MAX_CACHED as u32 {
            let mut token = [2; 32];
            token[..4].copy_from_slice(&n.to_be_bytes());
            cache.store_session(token, None, Instant::now());
        }
        assert_eq!(cache.session(&[1; 32], Instant::now()), None);
        // The lookup sent before the revocation comes back: not cached.
        cache.store_session([1; 32], Some(live_session()), sent);
        assert_eq!(cache.session(&[1; 32], Instant::now()), None);
    }

    #[test]
    fn a_refresh_answers_every_session_due_even_one_due_twice() {
        let row: SessionRow = (1, "user".into(), true, 1_900_000_000_000);
        let found = HashMap::from([([1u8; 32].to_vec(), row)]);
        let answers: Vec<_> = refreshed(vec![[1; 32], [2; 32], [1; 32]], &found).collect();
        let live = Some(SessionRecord {
            expires_at_ms: 1_900_000_000_000,
            ..live_session()
        });
        assert_eq!(
            answers,
            vec![([1; 32], live.clone()), ([2; 32], None), ([1; 32], live)]
        );
    }

    #[test]
    fn a_lookup_sent_before_a_revocation_here_does_not_undo_it() {
        let mut cache = CredentialCache::new(Duration::from_millis(100));
        let t0 = Instant::now();
        let live = Some(live_session());
        cache.store_session([1; 32], live.clone(), t0);
        let sent = t0 + Duration::from_millis(80);
        let revoked = t0 + Duration::from_millis(85);
        cache.revoke(&Via::Session { digest: [1; 32] }, revoked);
        // A refresh sent at 80 ms read the session before its revocation committed.
        cache.store_session([1; 32], live.clone(), sent);
        assert_eq!(cache.session(&[1; 32], revoked), trusted_now(None, false));
        // One sent after it is trusted (it read the revoked row, or a new login's).
        cache.store_session([1; 32], live.clone(), t0 + Duration::from_millis(90));
        let later = t0 + Duration::from_millis(90);
        assert_eq!(cache.session(&[1; 32], later), trusted_now(live, false));
    }
}
