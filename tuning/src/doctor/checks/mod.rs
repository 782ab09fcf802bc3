//! The host checks, one file per area. Each check reads what it needs through `Host`, decides
//! with a small pure rule, and says what it saw, why it matters and how to fix it.
use serde::Serialize;
use std::fmt;

use super::host::{Host, Layout, Unreadable};

pub mod cpu;
pub mod irq;
pub mod kernel;
pub mod limits;
pub mod memory;
pub mod net;

/// The verdict of one check. Ordered from best to worst, UNKNOWN last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Pass,
    Warn,
    Fail,
    Unknown,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Unknown => "UNKNOWN",
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    /// What was seen, short.
    pub value: String,
    /// Why that is good or bad.
    pub explanation: String,
    /// The command (or edit) that fixes it; present for WARN and FAIL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn new(
        name: &str,
        status: Status,
        value: impl Into<String>,
        explanation: impl Into<String>,
    ) -> Self {
        Check {
            name: name.to_string(),
            status,
            value: value.into(),
            explanation: explanation.into(),
            fix: None,
        }
    }

    pub fn pass(name: &str, value: impl Into<String>, explanation: impl Into<String>) -> Self {
        Check::new(name, Status::Pass, value, explanation)
    }

    /// A WARN or FAIL with its fix.
    pub fn bad(
        name: &str,
        status: Status,
        value: impl Into<String>,
        explanation: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Check {
            fix: Some(fix.into()),
            ..Check::new(name, status, value, explanation)
        }
    }

    /// The value could not be read here (no permission, missing file, other host).
    pub fn unknown(name: &str, why: impl fmt::Display) -> Self {
        Check::new(name, Status::Unknown, "unknown", why.to_string())
    }
}

/// What the server on this host is expected to run.
#[derive(Debug, Clone)]
pub struct Context {
    pub layout: Layout,
    /// Connection target per shard.
    pub connections_per_shard: u64,
    /// NICs for the IRQ check; empty means every interface backed by a device.
    pub ifaces: Vec<String>,
}

/// Connections each shard is expected to hold unless `--connections` says otherwise.
pub const DEFAULT_CONNECTIONS_PER_SHARD: u64 = 10_000;

impl Context {
    pub fn shards(&self) -> u64 {
        self.layout.shards() as u64
    }

    /// Connections the whole server is expected to hold.
    pub fn connection_target(&self) -> u64 {
        self.shards() * self.connections_per_shard
    }
}

/// Every host check, in report order.
pub fn all(host: &Host, ctx: &Context) -> Vec<Check> {
    let mut checks = vec![kernel::io_uring(host)];
    checks.extend(limits::own(host, ctx));
    checks.extend(net::checks(host, ctx));
    checks.extend(cpu::checks(host, ctx));
    checks.extend(memory::checks(host));
    checks.extend(irq::checks(host, ctx));
    checks
}

/// Runs `decide` on a value that could be read, or says UNKNOWN with the reason.
pub(crate) fn or_unknown<T>(
    name: &str,
    value: Result<T, Unreadable>,
    decide: impl FnOnce(T) -> Check,
) -> Check {
    match value {
        Ok(v) => decide(v),
        Err(why) => Check::unknown(name, why),
    }
}

/// The bracketed choice of a sysfs selector such as `always [madvise] never`.
pub(crate) fn selected(text: &str) -> Option<&str> {
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(&text[start..end])
}
