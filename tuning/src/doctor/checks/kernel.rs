//! Kernel: can the server get an io_uring (glommio's engine), or will it fall back to epoll?
use super::{Check, Status};
use crate::doctor::host::{Host, ProbeOutcome};

const NAME: &str = "io_uring";
const ENABLE: &str = "sysctl -w kernel.io_uring_disabled=0";

/// What the kernel reports: `kernel.io_uring_disabled` (absent before Linux 6.6), its group,
/// the seccomp mode of this process, the kernel release and what `io_uring_setup` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoUringFacts {
    pub disabled: Option<u64>,
    pub group: Option<i64>,
    pub seccomp: Option<u64>,
    pub release: Option<(u32, u32)>,
    pub probe: ProbeOutcome,
}

pub fn io_uring(host: &Host) -> Check {
    let seccomp = host
        .proc("self/status")
        .ok()
        .and_then(|s| status_field(&s, "Seccomp").and_then(|v| v.parse().ok()));
    let facts = IoUringFacts {
        disabled: host.sysctl_u64("kernel.io_uring_disabled").ok(),
        group: host
            .sysctl("kernel.io_uring_group")
            .ok()
            .and_then(|g| g.parse().ok()),
        seccomp,
        release: host
            .sysctl("kernel.osrelease")
            .ok()
            .and_then(|r| kernel_version(&r)),
        probe: host.io_uring_probe(),
    };
    judge_io_uring(&facts)
}

/// The rule: glommio needs Linux 5.8+ and a ring it is allowed to create.
pub fn judge_io_uring(f: &IoUringFacts) -> Check {
    let fallback = "the server falls back to the may (epoll) engine";
    if let Some((major, minor)) = f.release {
        if (major, minor) < (5, 8) {
            return Check::bad(
                NAME,
                Status::Fail,
                format!("kernel {major}.{minor}"),
                format!("glommio needs Linux 5.8 or later; {fallback}"),
                "boot a kernel >= 5.8 (a distribution LTS kernel of 5.15 or later)",
            );
        }
    }
    if f.disabled == Some(2) {
        return Check::bad(
            NAME,
            Status::Fail,
            "io_uring_disabled=2",
            format!("io_uring is off for every process; {fallback}"),
            ENABLE,
        );
    }
    match f.probe {
        Ok(()) if f.disabled == Some(1) => {
            let group = f.group.map_or("the io_uring group".to_string(), |g| format!("group {g}"));
            Check::bad(
                NAME,
                Status::Warn,
                "io_uring_disabled=1",
                format!("rings work here, but only for {group} and CAP_SYS_ADMIN: the server's user must have one of them"),
                format!("{ENABLE}  (or: sysctl -w kernel.io_uring_group=<gid of the server's user>)"),
            )
        }
        Ok(()) => Check::pass(NAME, "available", "io_uring_setup succeeded; glommio can run"),
        Err(errno) if errno == libc::EPERM || errno == libc::ENOSYS => {
            let name = if errno == libc::EPERM { "EPERM" } else { "ENOSYS" };
            if f.seccomp == Some(2) {
                Check::bad(
                    NAME,
                    Status::Fail,
                    format!("blocked ({name}, seccomp filter)"),
                    format!("a seccomp filter (a container runtime's default profile) refuses io_uring_setup; {fallback}"),
                    "run with a seccomp profile that allows io_uring_setup, io_uring_enter and io_uring_register (docker/podman: --security-opt seccomp=<profile>)",
                )
            } else if errno == libc::ENOSYS {
                Check::bad(
                    NAME,
                    Status::Fail,
                    "blocked (ENOSYS)",
                    format!("this kernel has no io_uring (CONFIG_IO_URING off); {fallback}"),
                    "boot a kernel built with CONFIG_IO_URING=y",
                )
            } else {
                Check::bad(NAME, Status::Fail, "blocked (EPERM)", format!("io_uring_setup is refused; {fallback}"), ENABLE)
            }
        }
        Err(errno) => Check::bad(
            NAME,
            Status::Fail,
            format!("io_uring_setup failed: {}", std::io::Error::from_raw_os_error(errno)),
            format!("a ring could not be created (on kernels before 5.12 rings count against memlock); {fallback}"),
            "raise the memlock limit (see the memlock check) and retry",
        ),
    }
}

/// `field:\tvalue` from a `/proc/<pid>/status` text.
pub fn status_field<'a>(status: &'a str, field: &str) -> Option<&'a str> {
    status.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == field).then(|| value.trim())
    })
}

/// `(major, minor)` of a release string such as `6.8.0-45-generic`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::testing::FakeHost;

    /// (io_uring_disabled, seccomp, osrelease, probe) -> status, value fragment
    type Case = (
        Option<&'static str>,
        &'static str,
        &'static str,
        ProbeOutcome,
        Status,
        &'static str,
    );

    #[test]
    fn io_uring_branches_on_fake_trees() {
        let cases: &[Case] = &[
            (Some("0"), "0", "6.8.0", Ok(()), Status::Pass, "available"),
            (
                None,
                "0",
                "5.15.0-91-generic",
                Ok(()),
                Status::Pass,
                "available",
            ),
            (
                Some("1"),
                "0",
                "6.8.0",
                Ok(()),
                Status::Warn,
                "io_uring_disabled=1",
            ),
            (
                Some("2"),
                "0",
                "6.8.0",
                Err(libc::EPERM),
                Status::Fail,
                "io_uring_disabled=2",
            ),
            (
                Some("0"),
                "2",
                "6.8.0",
                Err(libc::EPERM),
                Status::Fail,
                "seccomp",
            ),
            (
                Some("0"),
                "0",
                "6.8.0",
                Err(libc::EPERM),
                Status::Fail,
                "EPERM",
            ),
            (
                None,
                "0",
                "6.8.0",
                Err(libc::ENOSYS),
                Status::Fail,
                "ENOSYS",
            ),
            (
                Some("0"),
                "0",
                "6.8.0",
                Err(libc::ENOMEM),
                Status::Fail,
                "failed",
            ),
            (None, "0", "5.4.0", Ok(()), Status::Fail, "kernel 5.4"),
        ];
        for (disabled, seccomp, release, probe, status, fragment) in cases {
            let fake = FakeHost::new().with_probe(*probe);
            fake.proc(
                "self/status",
                &format!("Name:\tdoctor\nSeccomp:\t{seccomp}\n"),
            );
            fake.sysctl("kernel.osrelease", release);
            if let Some(d) = disabled {
                fake.sysctl("kernel.io_uring_disabled", d)
                    .sysctl("kernel.io_uring_group", "-1");
            }
            let check = io_uring(&fake.host());
            assert_eq!(
                check.status, *status,
                "{disabled:?} {seccomp} {release} {probe:?}: {check:?}"
            );
            assert!(check.value.contains(fragment), "{check:?}");
            assert_eq!(check.fix.is_some(), *status != Status::Pass, "{check:?}");
        }
    }
}
