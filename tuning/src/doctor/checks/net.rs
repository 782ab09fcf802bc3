//! Network sysctls: accept and SYN queues for the server, packet backlog, and the loadgen
//! host's local ports and TIME_WAIT reuse. Recommended values come from `sysctl.conf`.
use super::{or_unknown, Check, Context, Status};
use crate::doctor::host::Host;
use crate::doctor::recommended;

/// The kernel caps a listen backlog at 65535 on older kernels (a 16-bit field).
const MAX_BACKLOG: u64 = 65535;
/// Below this a queue is too short for any burst (the old default was 128).
const BACKLOG_FLOOR: u64 = 1024;

pub fn checks(host: &Host, ctx: &Context) -> Vec<Check> {
    // A shard's listener should queue a burst of all its connections at once.
    let burst = ctx.connections_per_shard.min(MAX_BACKLOG);
    let queue = |key: &str, what: &str| {
        let why = format!(
            "{what}; a shard may see {burst} connects at once, overflow costs a 1 s SYN retry"
        );
        at_least(
            host,
            key,
            Threshold {
                fail_below: BACKLOG_FLOOR.min(burst),
                pass_at: burst,
            },
            &why,
        )
    };
    let netdev = recommended::number("net.core.netdev_max_backlog");
    vec![
        queue("net.core.somaxconn", "accept queue cap per listener"),
        queue(
            "net.ipv4.tcp_max_syn_backlog",
            "half-open connections per listener",
        ),
        at_least(
            host,
            "net.core.netdev_max_backlog",
            Threshold {
                fail_below: 0,
                pass_at: netdev,
            },
            "packets queued per CPU before the stack; loopback traffic passes through it too",
        ),
        port_range(host, ctx),
        tw_reuse(host),
        at_least(
            host,
            "net.ipv4.tcp_migrate_req",
            Threshold {
                fail_below: 0,
                pass_at: 1,
            },
            "connections queued on a shard's listener when it closes (restart, scale-down) move to another shard instead of being reset",
        ),
    ]
}

/// `fail_below` and `pass_at` bounds of a numeric sysctl; between them is WARN.
#[derive(Debug, Clone, Copy)]
pub struct Threshold {
    pub fail_below: u64,
    pub pass_at: u64,
}

impl Threshold {
    pub fn grade(self, value: u64) -> Status {
        if value < self.fail_below {
            Status::Fail
        } else if value < self.pass_at {
            Status::Warn
        } else {
            Status::Pass
        }
    }
}

fn at_least(host: &Host, key: &str, t: Threshold, why: &str) -> Check {
    or_unknown(key, host.sysctl_u64(key), |v| match t.grade(v) {
        Status::Pass => Check::pass(key, v.to_string(), format!("{why} (>= {})", t.pass_at)),
        status => Check::bad(
            key,
            status,
            v.to_string(),
            format!("{why}; want >= {}", t.pass_at),
            recommended::fix(key),
        ),
    })
}

fn port_range(host: &Host, ctx: &Context) -> Check {
    const KEY: &str = "net.ipv4.ip_local_port_range";
    let range = host.sysctl(KEY).and_then(|text| {
        let mut parts = text.split_whitespace().map(str::parse::<u64>);
        match (parts.next(), parts.next()) {
            (Some(Ok(lo)), Some(Ok(hi))) if lo <= hi => Ok((lo, hi)),
            _ => Err(crate::doctor::host::Unreadable(format!(
                "{KEY} is {text:?}"
            ))),
        }
    });
    or_unknown(KEY, range, |(lo, hi)| {
        let ports = hi - lo + 1;
        let target = ctx.connection_target();
        let value = format!("{lo}-{hi} ({ports} ports)");
        let why = format!("loadgen host: one client address holds at most {ports} connections to one server address:port; target {target}");
        if ports >= target {
            Check::pass(KEY, value, why)
        } else {
            Check::bad(KEY, Status::Warn, value, format!("{why}; past it, connect() fails with EADDRNOTAVAIL (or spread loadgen over more client addresses)"), recommended::fix(KEY))
        }
    })
}

fn tw_reuse(host: &Host) -> Check {
    const KEY: &str = "net.ipv4.tcp_tw_reuse";
    or_unknown(KEY, host.sysctl_u64(KEY), |v| {
        let why = "loadgen host: lets new outgoing connections take ports still in TIME_WAIT";
        match v {
            1 => Check::pass(KEY, "1", why),
            2 => Check::bad(
                KEY,
                Status::Warn,
                "2 (loopback only)",
                format!("{why}; 2 covers loopback only, not a loadgen on another host"),
                recommended::fix(KEY),
            ),
            _ => Check::bad(
                KEY,
                Status::Warn,
                v.to_string(),
                format!("{why}; off, reconnect-heavy runs run out of ports"),
                recommended::fix(KEY),
            ),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::testing::{context, FakeHost};

    fn statuses(fake: &FakeHost) -> Vec<(String, Status)> {
        checks(&fake.host(), &context("0-1"))
            .into_iter()
            .map(|c| (c.name, c.status))
            .collect()
    }

    #[test]
    fn net_branches_on_fake_trees() {
        use Status::*;
        // two shards of 10,000: queues pass at 10,000, fail below 1024; 20,000 ports wanted.
        let cases: &[([&str; 6], [Status; 6])] = &[
            (
                ["65535", "65535", "16384", "32768\t65535", "1", "1"],
                [Pass, Pass, Pass, Pass, Pass, Pass],
            ),
            (
                ["4096", "2048", "1000", "32768\t60999", "2", "0"],
                [Warn, Warn, Warn, Pass, Warn, Warn],
            ),
            (
                ["128", "512", "1000", "40000 50000", "0", "0"],
                [Fail, Fail, Warn, Warn, Warn, Warn],
            ),
        ];
        let keys = [
            "net.core.somaxconn",
            "net.ipv4.tcp_max_syn_backlog",
            "net.core.netdev_max_backlog",
            "net.ipv4.ip_local_port_range",
            "net.ipv4.tcp_tw_reuse",
            "net.ipv4.tcp_migrate_req",
        ];
        for (values, want) in cases {
            let fake = FakeHost::new();
            for (key, value) in keys.iter().zip(values) {
                fake.sysctl(key, value);
            }
            let got: Vec<Status> = statuses(&fake).into_iter().map(|(_, s)| s).collect();
            assert_eq!(&got, want, "{values:?}");
        }
    }

    #[test]
    fn missing_or_garbled_values_are_unknown() {
        let fake = FakeHost::new();
        fake.sysctl("net.core.somaxconn", "lots")
            .sysctl("net.ipv4.ip_local_port_range", "9 1");
        assert!(statuses(&fake).iter().all(|(_, s)| *s == Status::Unknown));
    }
}
