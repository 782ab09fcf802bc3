//! CPU lists such as `0-3,6`, as the kernel writes them in `/sys` and `taskset` reads them,
//! and the CPU quota of the process's cgroup (v2 `cpu.max`), which caps how many CPUs' worth of
//! time it gets whatever its affinity mask allows.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// Where cgroup v2 is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A sorted list of distinct CPU ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(Vec<usize>);

impl CpuList {
    pub fn new(mut cpus: Vec<usize>) -> Self {
        cpus.sort_unstable();
        cpus.dedup();
        CpuList(cpus)
    }

    pub fn ids(&self) -> &[usize] {
        &self.0
    }
}

impl FromStr for CpuList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut cpus = Vec::new();
        for part in s.split(',').map(str::trim) {
            let parse = |n: &str| {
                n.trim()
                    .parse::<usize>()
                    .map_err(|_| format!("`{n}` is not a CPU number"))
            };
            match part.split_once('-') {
                Some((first, last)) => {
                    let (first, last) = (parse(first)?, parse(last)?);
                    if first > last {
                        return Err(format!("range `{part}` runs backwards"));
                    }
                    cpus.extend(first..=last);
                }
                None if part.is_empty() => return Err("empty CPU list entry".to_string()),
                None => cpus.push(parse(part)?),
            }
        }
        Ok(CpuList::new(cpus))
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text: Vec<String> = self.0.iter().map(usize::to_string).collect();
        f.write_str(&text.join(","))
    }
}

/// The CPUs a `cpu.max` line (`<quota> <period>` in microseconds, or `max <period>`) grants:
/// quota / period rounded up, at least 1; `None` when unlimited or unreadable.
pub fn cpus_of_cpu_max(line: &str) -> Option<usize> {
    let mut fields = line.split_whitespace();
    let quota: u64 = fields.next()?.parse().ok()?;
    let period: u64 = fields.next()?.parse().ok().filter(|&p| p > 0)?;
    Some(
        usize::try_from(quota.div_ceil(period))
            .unwrap_or(usize::MAX)
            .max(1),
    )
}

/// The CPU quota of the process's cgroup: the smallest `cpu.max` from its own cgroup up to
/// `root` (a parent's limit binds its children too). `proc_self_cgroup` is
/// `/proc/self/cgroup`'s text, whose `0::<path>` line names the cgroup v2 group; `None` where
/// no group on the way has a quota (or cgroup v2 is not there).
pub fn cgroup_cpu_quota(root: &Path, proc_self_cgroup: &str) -> Option<usize> {
    let own = proc_self_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .unwrap_or("/");
    let mut group = root.join(own.trim().trim_start_matches('/'));
    let mut quota: Option<usize> = None;
    loop {
        let here = std::fs::read_to_string(group.join("cpu.max"))
            .ok()
            .and_then(|line| cpus_of_cpu_max(&line));
        quota = match (quota, here) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if group == root || !group.pop() || !group.starts_with(root) {
            return quota;
        }
    }
}

/// [`cgroup_cpu_quota`] of this process, under [`CGROUP_ROOT`].
pub fn own_cpu_quota() -> Option<usize> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    cgroup_cpu_quota(Path::new(CGROUP_ROOT), &cgroup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_lines_give_whole_cpus_rounded_up() {
        let cases = [
            ("max 100000", None),
            ("max", None),
            ("200000 100000\n", Some(2)),
            ("150000 100000", Some(2)),
            ("50000 100000", Some(1)),
            ("1000 100000", Some(1)),
            ("400000 100000", Some(4)),
            ("100000 0", None),
            ("", None),
            ("lots 100000", None),
        ];
        for (line, cpus) in cases {
            assert_eq!(cpus_of_cpu_max(line), cpus, "{line:?}");
        }
    }

    #[test]
    fn the_tightest_quota_from_the_own_cgroup_up_counts() {
        let root = std::env::temp_dir().join(format!("coinbit-cgroup-{}", std::process::id()));
        let service = root.join("system.slice/coinbit.service");
        std::fs::create_dir_all(&service).unwrap();
        let proc_self = "0::/system.slice/coinbit.service\n";
        assert_eq!(
            cgroup_cpu_quota(&root, proc_self),
            None,
            "no cpu.max anywhere"
        );
        std::fs::write(service.join("cpu.max"), "max 100000\n").unwrap();
        assert_eq!(cgroup_cpu_quota(&root, proc_self), None, "unlimited");
        std::fs::write(root.join("system.slice/cpu.max"), "300000 100000\n").unwrap();
        assert_eq!(cgroup_cpu_quota(&root, proc_self), Some(3), "the parent's");
        std::fs::write(service.join("cpu.max"), "150000 100000\n").unwrap();
        assert_eq!(
            cgroup_cpu_quota(&root, proc_self),
            Some(2),
            "its own, tighter"
        );
        // A container sees its own group as the root: `0::/`.
        std::fs::write(root.join("cpu.max"), "100000 100000\n").unwrap();
        assert_eq!(cgroup_cpu_quota(&root, "0::/\n"), Some(1));
        // cgroup v1 only: no `0::` line, the root is looked at.
        assert_eq!(cgroup_cpu_quota(&root, "4:cpu:/\n"), Some(1));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn parses_lists_and_ranges() {
        let cases: &[(&str, Result<&[usize], ()>)] = &[
            ("0", Ok(&[0])),
            ("0-3", Ok(&[0, 1, 2, 3])),
            ("3,1,1-2", Ok(&[1, 2, 3])),
            (" 4 , 6-7", Ok(&[4, 6, 7])),
            ("3-1", Err(())),
            ("a", Err(())),
            ("1,,2", Err(())),
            ("", Err(())),
        ];
        for (input, expected) in cases {
            let got = input.parse::<CpuList>();
            match expected {
                Ok(ids) => assert_eq!(got.unwrap().ids(), *ids, "{input}"),
                Err(()) => assert!(got.is_err(), "{input} should fail"),
            }
        }
    }
}
