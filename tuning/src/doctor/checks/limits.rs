//! Resource limits: locked memory for glommio's rings and buffers, open files for the
//! connection target. Read from `/proc/<pid>/limits`, so the same rule judges this shell
//! (`memlock`, `nofile`) and a running server (`server.memlock`, `server.nofile`).
use super::{or_unknown, Check, Context, Status};
use crate::doctor::host::{Host, Unreadable};

/// glommio refuses to start an executor below this (`MemLockLimit`).
pub const GLOMMIO_MIN_MEMLOCK: u64 = 512 * 1024;
/// glommio's default registered-buffer memory per executor; below it, it falls back to
/// unregistered buffers.
pub const GLOMMIO_IO_MEMORY_PER_SHARD: u64 = 10 * 1024 * 1024;
/// Descriptors beyond the connections: listeners, DB connections, rings, eventfds, logs.
pub const NOFILE_SLACK: u64 = 1024;

/// A soft and hard limit; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// This process's limits, which a server started from this shell would inherit.
pub fn own(host: &Host, ctx: &Context) -> Vec<Check> {
    judge(
        &Names::SHELL,
        host.proc("self/limits"),
        ctx.shards(),
        ctx.connection_target(),
    )
}

/// The check names and the fix wording for one process.
pub struct Names {
    pub memlock: &'static str,
    pub nofile: &'static str,
    /// Who the limit belongs to, for explanations.
    pub whose: &'static str,
}

impl Names {
    pub const SHELL: Names = Names { memlock: "memlock", nofile: "nofile", whose: "this shell (a server started from it inherits them; under systemd the unit's Limit*= settings apply instead)" };
    pub const SERVER: Names = Names {
        memlock: "server.memlock",
        nofile: "server.nofile",
        whose: "the running server",
    };
}

/// Both limit checks from a `/proc/<pid>/limits` text.
pub fn judge(
    names: &Names,
    limits: Result<String, Unreadable>,
    shards: u64,
    target: u64,
) -> Vec<Check> {
    let parsed = limits.map(|text| {
        (
            parse(&text, "Max locked memory"),
            parse(&text, "Max open files"),
        )
    });
    let (memlock, nofile) = match parsed {
        Ok((m, n)) => (m, n),
        Err(why) => (Err(why.clone()), Err(why)),
    };
    vec![
        or_unknown(names.memlock, memlock, |l| judge_memlock(names, l, shards)),
        or_unknown(names.nofile, nofile, |l| judge_nofile(names, l, target)),
    ]
}

pub fn judge_memlock(names: &Names, limit: Limit, shards: u64) -> Check {
    let want = shards * GLOMMIO_IO_MEMORY_PER_SHARD;
    let value = format!("soft {}, hard {}", bytes(limit.soft), bytes(limit.hard));
    let fix = "LimitMEMLOCK=infinity in coinbit.service (shell: ulimit -l unlimited; PAM: '<user> - memlock unlimited' in /etc/security/limits.d/coinbit.conf)";
    let soft = limit.soft.unwrap_or(u64::MAX);
    let explanation = format!(
        "for {}; {shards} shard(s) want {} (10 MiB of registered buffers each)",
        names.whose,
        bytes(Some(want))
    );
    if soft < GLOMMIO_MIN_MEMLOCK {
        Check::bad(
            names.memlock,
            Status::Fail,
            value,
            format!("below 512 KiB glommio refuses to start (MemLockLimit), {explanation}"),
            fix,
        )
    } else if soft < want {
        Check::bad(
            names.memlock,
            Status::Warn,
            value,
            format!("glommio starts but falls back to unregistered buffers, {explanation}"),
            fix,
        )
    } else {
        Check::pass(names.memlock, value, explanation)
    }
}

pub fn judge_nofile(names: &Names, limit: Limit, target: u64) -> Check {
    let need = target + NOFILE_SLACK;
    let value = format!("soft {}, hard {}", count(limit.soft), count(limit.hard));
    let explanation = format!(
        "for {}; {target} connections + {NOFILE_SLACK} spare need {need}",
        names.whose
    );
    let fix = format!("LimitNOFILE={} in coinbit.service (shell: ulimit -n {need}); beyond fs.nr_open raise it first", need.next_power_of_two());
    let fits = |l: Option<u64>| l.map_or(true, |l| l >= need);
    if fits(limit.soft) {
        Check::pass(names.nofile, value, explanation)
    } else if fits(limit.hard) {
        Check::bad(
            names.nofile,
            Status::Warn,
            value,
            format!("the soft limit is short but the hard limit allows it, {explanation}"),
            fix,
        )
    } else {
        Check::bad(
            names.nofile,
            Status::Fail,
            value,
            format!("connections past the limit fail with EMFILE, {explanation}"),
            fix,
        )
    }
}

/// The soft and hard columns of one row of a `limits` file.
pub fn parse(text: &str, row: &str) -> Result<Limit, Unreadable> {
    let line = text
        .lines()
        .find(|l| l.starts_with(row))
        .ok_or_else(|| Unreadable(format!("no '{row}' row in limits")))?;
    let mut cols = line[row.len()..].split_whitespace();
    let mut next = || -> Result<Option<u64>, Unreadable> {
        match cols.next() {
            Some("unlimited") => Ok(None),
            Some(n) => n
                .parse()
                .map(Some)
                .map_err(|_| Unreadable(format!("bad '{row}' row: {line:?}"))),
            None => Err(Unreadable(format!("short '{row}' row: {line:?}"))),
        }
    };
    Ok(Limit {
        soft: next()?,
        hard: next()?,
    })
}

fn bytes(v: Option<u64>) -> String {
    match v {
        None => "unlimited".into(),
        Some(b) if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        Some(b) if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        Some(b) => format!("{b} B"),
    }
}

fn count(v: Option<u64>) -> String {
    v.map_or("unlimited".into(), |n| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::testing::{context, FakeHost};

    fn limits_file(memlock: &str, nofile: &str) -> String {
        format!(
            "Limit                     Soft Limit           Hard Limit           Units     \n\
             Max open files            {nofile} files     \n\
             Max locked memory         {memlock} bytes     \n"
        )
    }

    #[test]
    fn limits_branches_on_fake_trees() {
        // two CPUs: two shards, 20,000 connections, 20 MiB of buffers
        let cases = [
            ("65536 65536", "1048576 1048576", Status::Fail, Status::Pass),
            ("8388608 8388608", "20000 20000", Status::Warn, Status::Fail),
            (
                "20971520 unlimited",
                "4096 1048576",
                Status::Pass,
                Status::Warn,
            ),
            (
                "unlimited unlimited",
                "unlimited unlimited",
                Status::Pass,
                Status::Pass,
            ),
            ("524288 524288", "21024 21024", Status::Warn, Status::Pass),
        ];
        for (memlock, nofile, want_memlock, want_nofile) in cases {
            let fake = FakeHost::new();
            fake.proc("self/limits", &limits_file(memlock, nofile));
            let checks = own(&fake.host(), &context("0-1"));
            assert_eq!(
                (checks[0].status, checks[1].status),
                (want_memlock, want_nofile),
                "{memlock} / {nofile}: {checks:#?}"
            );
        }
    }

    #[test]
    fn unreadable_limits_are_unknown() {
        let fake = FakeHost::new();
        let checks = own(&fake.host(), &context("0-1"));
        assert!(
            checks.iter().all(|c| c.status == Status::Unknown),
            "{checks:#?}"
        );
        fake.proc(
            "self/limits",
            "Limit Soft Hard Units\nMax open files x y files\n",
        );
        let checks = own(&fake.host(), &context("0-1"));
        assert!(
            checks.iter().all(|c| c.status == Status::Unknown),
            "{checks:#?}"
        );
    }
}
