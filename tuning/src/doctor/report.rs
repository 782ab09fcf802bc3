//! The report: one line per check in text, or one JSON document for automation.
use serde::Serialize;

use super::checks::{Check, Context, Status};

/// Every check of one run, and the layout they were judged against.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub layout: LayoutSummary,
    pub checks: Vec<Check>,
    pub summary: Summary,
    /// 1 when any check FAILs, else 0.
    pub exit_code: i32,
}

/// What the checks assumed about the server.
#[derive(Debug, Clone, Serialize)]
pub struct LayoutSummary {
    pub online_cpus: String,
    pub shard_cpus: String,
    pub shards: usize,
    pub monitor_cpu: usize,
    pub monitor_shares_core: bool,
    pub connections_per_shard: u64,
    pub connection_target: u64,
    /// `policy` (from the CPUs and options) or `server` (read from `--server`).
    pub source: &'static str,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub pass: usize,
    pub warn: usize,
    pub fail: usize,
    pub unknown: usize,
}

impl Report {
    pub fn new(ctx: &Context, source: &'static str, checks: Vec<Check>) -> Report {
        let mut summary = Summary::default();
        for c in &checks {
            *match c.status {
                Status::Pass => &mut summary.pass,
                Status::Warn => &mut summary.warn,
                Status::Fail => &mut summary.fail,
                Status::Unknown => &mut summary.unknown,
            } += 1;
        }
        let layout = LayoutSummary {
            online_cpus: ctx.layout.online.to_string(),
            shard_cpus: ctx.layout.shard_cpus.to_string(),
            shards: ctx.layout.shards(),
            monitor_cpu: ctx.layout.monitor_cpu,
            monitor_shares_core: ctx.layout.shares_core,
            connections_per_shard: ctx.connections_per_shard,
            connection_target: ctx.connection_target(),
            source,
        };
        Report {
            layout,
            checks,
            exit_code: i32::from(summary.fail > 0),
            summary,
        }
    }

    /// `STATUS  name  value  — explanation; fix: command`, aligned, then a summary line.
    pub fn text(&self) -> String {
        let l = &self.layout;
        let monitor = if l.monitor_shares_core {
            "shares a core"
        } else {
            "own core"
        };
        let mut out = format!(
            "coinbit doctor: {} shard(s) on cpus {}, monitor on cpu {} ({monitor}), {} connections ({} per shard; layout from {})\n",
            l.shards, l.shard_cpus, l.monitor_cpu, l.connection_target, l.connections_per_shard, l.source
        );
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &self.checks {
            out.push_str(&format!(
                "{:<7}  {:<width$}  {}  — {}",
                c.status.to_string(),
                c.name,
                c.value,
                c.explanation
            ));
            if let Some(fix) = &c.fix {
                out.push_str(&format!("; fix: {fix}"));
            }
            out.push('\n');
        }
        let s = &self.summary;
        out.push_str(&format!(
            "{} PASS, {} WARN, {} FAIL, {} UNKNOWN\n",
            s.pass, s.warn, s.fail, s.unknown
        ));
        out
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }
}
