//! The database settings that need more than one flag's parsing: node URLs with their weights,
//! the replica strategy and the lag limit.

use std::str::FromStr;
use std::time::Duration;

use super::{ConfigError, DatabaseConfig, READ_REPLICA_VAR_PREFIX};

/// How a read picks among the healthy replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReplicaStrategy {
    /// Each replica in turn.
    RoundRobin,
    /// The replica with the fewest requests in flight.
    LeastConnections,
    /// Smooth weighted round-robin by each replica's weight.
    Weighted,
}

impl ReplicaStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaStrategy::RoundRobin => "round-robin",
            ReplicaStrategy::LeastConnections => "least-connections",
            ReplicaStrategy::Weighted => "weighted",
        }
    }
}

/// What carries a shard's reads to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadDriver {
    /// The DB I/O threads (a queue out, a channel back): every read and write.
    Threads,
    /// The shard's own connections, on its event loop (glommio only): the read of
    /// `GET /api/users/{id}`; the rest stays on the threads.
    Wire,
}

/// Replication lag past which a replica is ejected: WAL bytes not yet replayed, time behind the
/// primary, or both (either one past its limit ejects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagLimit {
    pub bytes: Option<u64>,
    pub time: Option<Duration>,
}

impl FromStr for LagLimit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut limit = LagLimit {
            bytes: None,
            time: None,
        };
        for part in text.split(',').map(str::trim) {
            let digits = part.bytes().take_while(u8::is_ascii_digit).count();
            let (number, unit) = part.split_at(digits);
            let n: u64 = number.parse().map_err(|_| {
                format!("`{part}`: expected a number with a unit (B, kB, MB, GB, ms, s)")
            })?;
            let bytes = |scale: u64| Some(n.saturating_mul(scale));
            match unit.trim().to_ascii_lowercase().as_str() {
                "" | "b" => limit.bytes = bytes(1),
                "kb" => limit.bytes = bytes(1 << 10),
                "mb" => limit.bytes = bytes(1 << 20),
                "gb" => limit.bytes = bytes(1 << 30),
                "ms" => limit.time = Some(Duration::from_millis(n)),
                "s" => limit.time = Some(Duration::from_secs(n)),
                other => {
                    return Err(format!(
                        "`{part}`: unknown unit `{other}` (B, kB, MB, GB, ms, s)"
                    ))
                }
            }
        }
        Ok(limit)
    }
}

/// One database node as configured.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// `primary`, `replica1`, `replica2`, ...
    pub name: String,
    /// The variable it came from, for messages.
    pub variable: String,
    /// The URL without the `weight` parameter and without its password, for messages.
    pub display_url: String,
    pub weight: u32,
    pub pg: postgres::Config,
}

/// The seed's replica weights: 3, 3, 2; replicas past the third weigh 1.
fn default_weight(index: usize) -> u32 {
    match index {
        0 | 1 => 3,
        2 => 2,
        _ => 1,
    }
}

impl DatabaseConfig {
    /// The primary (first) and the replicas, parsed; empty when no database is configured.
    ///
    /// `DATABASE_URL` may name several hosts (`postgres://h1:5432,h2:5432/db`, or libpq's
    /// `host=h1,h2 port=5432,5432 dbname=db`): the primary is then whichever of them takes
    /// writes (`target_session_attrs=read-write` is implied), found again after a failover.
    /// With several hosts and no `DB_READ_REPLICA_n`, the read set is every host of the list,
    /// each a node of its own: a standby serves reads, and a former primary that comes back as
    /// a standby serves them again.
    pub fn nodes(&self) -> Result<Vec<NodeSpec>, ConfigError> {
        let Some(primary) = &self.database_url else {
            if let Some(url) = self.read_replicas.first() {
                return Err(ConfigError::invalid(
                    &format!("{READ_REPLICA_VAR_PREFIX}1"),
                    &redact(url),
                    "read replicas need a primary: set DATABASE_URL too",
                ));
            }
            return Ok(Vec::new());
        };
        let mut primary = parse_node("primary", "DATABASE_URL", primary, None)?;
        let hosts = primary.pg.get_hosts().len();
        if hosts > 1 {
            primary
                .pg
                .target_session_attrs(postgres::config::TargetSessionAttrs::ReadWrite);
        }
        let mut nodes = vec![primary];
        if self.read_replicas.is_empty() && hosts > 1 {
            let each = each_host(&nodes[0]);
            nodes.extend(each);
            return Ok(nodes);
        }
        for (index, url) in self.read_replicas.iter().enumerate() {
            nodes.push(parse_node(
                &format!("replica{}", index + 1),
                &format!("{READ_REPLICA_VAR_PREFIX}{}", index + 1),
                url,
                Some(default_weight(index)),
            )?);
        }
        Ok(nodes)
    }
}

/// Whether `text` is libpq's `key=value ...` form rather than a URL.
fn is_settings(text: &str) -> bool {
    !text.contains("://") && text.contains('=')
}

/// One read node per host of a several-host primary: the same credentials, database and
/// options, one host each, whatever its role.
fn each_host(primary: &NodeSpec) -> Vec<NodeSpec> {
    let all = &primary.pg;
    let ports = all.get_ports();
    all.get_hosts()
        .iter()
        .enumerate()
        .map(|(index, host)| {
            let port = match ports {
                [] => 5432,
                [one] => *one,
                many => many[index.min(many.len() - 1)],
            };
            let mut pg = postgres::Config::new();
            let name = match host {
                postgres::config::Host::Tcp(name) => {
                    pg.host(name);
                    name.clone()
                }
                #[cfg(unix)]
                postgres::config::Host::Unix(path) => {
                    pg.host_path(path);
                    path.display().to_string()
                }
            };
            pg.port(port).ssl_mode(all.get_ssl_mode());
            if let Some(user) = all.get_user() {
                pg.user(user);
            }
            if let Some(password) = all.get_password() {
                pg.password(password);
            }
            if let Some(dbname) = all.get_dbname() {
                pg.dbname(dbname);
            }
            if let Some(options) = all.get_options() {
                pg.options(options);
            }
            if let Some(timeout) = all.get_connect_timeout() {
                pg.connect_timeout(*timeout);
            }
            let user = all.get_user().map(|u| format!("{u}@")).unwrap_or_default();
            let db = all.get_dbname().unwrap_or_default();
            NodeSpec {
                name: format!("replica{}", index + 1),
                variable: "DATABASE_URL".into(),
                display_url: format!("postgres://{user}{name}:{port}/{db}"),
                weight: default_weight(index),
                pg,
            }
        })
        .collect()
}

fn parse_node(
    name: &str,
    variable: &str,
    url: &str,
    default_weight: Option<u32>,
) -> Result<NodeSpec, ConfigError> {
    let bad = |reason: &str| ConfigError::invalid(variable, &redact(url), reason);
    let settings = is_settings(url);
    if !(settings || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(bad(
            "expected a postgres:// or postgresql:// URL, or libpq's `host=... port=...` settings",
        ));
    }
    let (base, query, separator) = if settings {
        ("", url, ' ')
    } else {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        (base, query, '&')
    };
    let mut weight = default_weight;
    let mut kept = Vec::new();
    for pair in query.split(separator).filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("weight", value)) => {
                if default_weight.is_none() {
                    return Err(bad("only read replicas take a weight"));
                }
                weight = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|w| (1..=1000).contains(w))
                        .ok_or_else(|| bad("weight must be a whole number from 1 to 1000"))?,
                );
            }
            _ => kept.push(pair),
        }
    }
    let stripped = if settings {
        kept.join(" ")
    } else if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let pg = postgres::Config::from_str(&stripped).map_err(|e| bad(&e.to_string()))?;
    if pg.get_hosts().is_empty() {
        return Err(bad("the URL names no host"));
    }
    Ok(NodeSpec {
        name: name.to_string(),
        variable: variable.to_string(),
        display_url: redact(&stripped),
        weight: weight.unwrap_or(1),
        pg,
    })
}

/// Words that make a query parameter (or a `key=value` setting) a credential, as part of its
/// name in any case: `password`, `sslpassword`, `client_secret`, `token`...
const CREDENTIAL_WORDS: [&str; 4] = ["password", "passwd", "secret", "token"];

/// The URL with every credential replaced by `***`, for the status body, logs and messages:
/// the userinfo password, and the value of each credential query parameter. Text that is no
/// URL (a `host=... password=...` setting string, say) has its credential settings replaced.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url
            .split(' ')
            .map(redact_setting)
            .collect::<Vec<_>>()
            .join(" ");
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let authority_end = before_query.find('/').unwrap_or(before_query.len());
    let (authority, path) = before_query.split_at(authority_end);
    let mut out = format!("{scheme}://{}{path}", redact_userinfo(authority));
    if let Some(query) = query {
        let redacted: Vec<String> = query.split('&').map(redact_setting).collect();
        out.push('?');
        out.push_str(&redacted.join("&"));
    }
    out
}

/// `user:password@host` as `user:***@host`.
fn redact_userinfo(authority: &str) -> String {
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    }
}

/// `name=value` with the value replaced where the name is a credential's.
fn redact_setting(setting: &str) -> String {
    match setting.split_once('=') {
        Some((name, _value)) if is_credential(name) => format!("{name}=***"),
        _ => setting.to_string(),
    }
}

fn is_credential(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    CREDENTIAL_WORDS.iter().any(|word| name.contains(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_limits() {
        let cases: &[(&str, Option<u64>, Option<u64>)] = &[
            ("16MB,10s", Some(16 << 20), Some(10_000)),
            ("1048576", Some(1 << 20), None),
            ("500ms", None, Some(500)),
            ("2kB , 1s", Some(2048), Some(1000)),
        ];
        for (text, bytes, ms) in cases {
            let limit: LagLimit = text.parse().unwrap();
            assert_eq!(limit.bytes, *bytes, "{text}");
            assert_eq!(limit.time, ms.map(Duration::from_millis), "{text}");
        }
        for bad in ["", "ten", "5 parsecs", "10MB,"] {
            assert!(bad.parse::<LagLimit>().is_err(), "{bad}");
        }
    }

    #[test]
    fn redaction_hides_every_form_of_credential() {
        let cases = [
            ("postgres://h/db", "postgres://h/db"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("postgres://u:pw@h:5432/db", "postgres://u:***@h:5432/db"),
            ("postgres://u:p@w@h/db", "postgres://u:***@h/db"),
            (
                "postgres://u@h/db?password=pw&sslmode=disable",
                "postgres://u@h/db?password=***&sslmode=disable",
            ),
            (
                "postgresql://h?sslpassword=pw&PASSWORD=pw&client_secret=pw&token=pw",
                "postgresql://h?sslpassword=***&PASSWORD=***&client_secret=***&token=***",
            ),
            // No path: the query follows the authority.
            (
                "postgres://u:pw@h?password=pw",
                "postgres://u:***@h?password=***",
            ),
            ("http://a:pw@hook/x?k=v", "http://a:***@hook/x?k=v"),
            (
                "host=h password=pw dbname=db",
                "host=h password=*** dbname=db",
            ),
        ];
        for (url, expected) in cases {
            assert_eq!(redact(url), expected, "{url}");
        }
    }

    #[test]
    fn replica_weights_and_redaction() {
        let node = parse_node(
            "replica1",
            "DB_READ_REPLICA_1",
            "postgres://u:secret@h:5433/db?weight=7&sslmode=disable",
            Some(3),
        )
        .unwrap();
        assert_eq!(node.weight, 7);
        assert_eq!(
            node.display_url,
            "postgres://u:***@h:5433/db?sslmode=disable"
        );
        let node = parse_node("replica3", "DB_READ_REPLICA_3", "postgres://h/db", Some(2)).unwrap();
        assert_eq!(node.weight, 2);
        for (url, default, reason) in [
            ("postgres://h/db?weight=0", Some(3), "weight"),
            ("postgres://h/db?weight=x", Some(3), "weight"),
            ("postgres://h/db?weight=2", None, "only read replicas"),
            ("mysql://h/db", None, "postgres://"),
            ("h:5432", None, "postgres://"),
            ("postgres://u:pw@h/db?sslmode=bogus", None, "sslmode"),
        ] {
            let err = parse_node("n", "V", url, default).unwrap_err().to_string();
            assert!(err.contains(reason), "{url}: {err}");
            assert!(!err.contains("pw@"), "password leaked: {err}");
        }
    }

    fn config(url: &str, replicas: &[&str]) -> DatabaseConfig {
        use clap::Parser;
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            database: DatabaseConfig,
        }
        let mut c = Only::parse_from(["coinbit"]).database;
        c.database_url = Some(url.into());
        c.read_replicas = replicas.iter().map(|r| r.to_string()).collect();
        c
    }

    fn hosts(spec: &NodeSpec) -> Vec<String> {
        let ports = spec.pg.get_ports();
        spec.pg
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| match h {
                postgres::config::Host::Tcp(name) => {
                    format!("{name}:{}", ports.get(i).or(ports.first()).unwrap_or(&5432))
                }
                #[cfg(unix)]
                postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect()
    }

    #[test]
    fn several_hosts_make_a_primary_that_must_take_writes_and_a_read_set_of_every_host() {
        use postgres::config::TargetSessionAttrs;
        for url in [
            "postgres://u:pw@10.0.0.1:5433,10.0.0.2:5434/coinbit?sslmode=disable",
            "host=10.0.0.1,10.0.0.2 port=5433,5434 user=u password=pw dbname=coinbit sslmode=disable",
            "postgres://u:pw@10.0.0.1:5433,10.0.0.2:5434/coinbit?target_session_attrs=read-write",
        ] {
            let nodes = config(url, &[]).nodes().unwrap();
            let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
            assert_eq!(names, ["primary", "replica1", "replica2"], "{url}");
            assert_eq!(
                nodes[0].pg.get_target_session_attrs(),
                TargetSessionAttrs::ReadWrite,
                "{url}"
            );
            assert_eq!(hosts(&nodes[0]), ["10.0.0.1:5433", "10.0.0.2:5434"]);
            assert_eq!(hosts(&nodes[1]), ["10.0.0.1:5433"]);
            assert_eq!(hosts(&nodes[2]), ["10.0.0.2:5434"]);
            for node in &nodes[1..] {
                assert_eq!(node.pg.get_target_session_attrs(), TargetSessionAttrs::Any);
                assert_eq!(node.pg.get_dbname(), Some("coinbit"));
                assert_eq!(node.pg.get_user(), Some("u"));
                assert_eq!(node.pg.get_password(), Some(&b"pw"[..]));
                assert!(!node.display_url.contains("pw"), "{}", node.display_url);
            }
            assert!(!nodes[0].display_url.contains("pw"), "{}", nodes[0].display_url);
        }
        // Replicas given explicitly are the read set; one host keeps its old meaning.
        let nodes = config(
            "postgres://h1,h2/db",
            &["postgres://r1/db", "host=r2 dbname=db weight=5"],
        )
        .nodes()
        .unwrap();
        assert_eq!(hosts(&nodes[1]), ["r1:5432"]);
        assert_eq!(
            (hosts(&nodes[2]), nodes[2].weight),
            (vec!["r2:5432".into()], 5)
        );
        let nodes = config("postgres://h1/db", &[]).nodes().unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(
            nodes[0].pg.get_target_session_attrs(),
            TargetSessionAttrs::Any
        );
    }
}
