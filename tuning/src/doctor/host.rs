//! The doctor's view of a machine: files under configurable `/proc` and `/sys` roots (so tests
//! can point them at a fake tree), the io_uring probe, and the CPU layout the server will use.
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// Why a value could not be read; shown as the explanation of an UNKNOWN line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable(pub String);

impl fmt::Display for Unreadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Outcome of an `io_uring_setup` call: `Ok` or the errno it failed with.
pub type ProbeOutcome = Result<(), i32>;

/// Where the io_uring answer comes from.
#[derive(Debug, Clone, Copy)]
pub enum IoUringProbe {
    /// Call `io_uring_setup` on this machine.
    Live,
    /// Use this outcome (tests, or a report reproduced from elsewhere).
    Assume(ProbeOutcome),
}

/// A machine as the doctor reads it.
#[derive(Debug, Clone)]
pub struct Host {
    proc_root: PathBuf,
    sys_root: PathBuf,
    probe: IoUringProbe,
}

impl Host {
    pub fn new(
        proc_root: impl Into<PathBuf>,
        sys_root: impl Into<PathBuf>,
        probe: IoUringProbe,
    ) -> Self {
        Host {
            proc_root: proc_root.into(),
            sys_root: sys_root.into(),
            probe,
        }
    }

    /// This machine: `/proc`, `/sys`, a live probe.
    pub fn live() -> Self {
        Host::new("/proc", "/sys", IoUringProbe::Live)
    }

    /// Path of `rel` under the proc root.
    pub fn proc_path(&self, rel: &str) -> PathBuf {
        self.proc_root.join(rel)
    }

    /// Path of `rel` under the sys root.
    pub fn sys_path(&self, rel: &str) -> PathBuf {
        self.sys_root.join(rel)
    }

    /// Text of a file under the proc root.
    pub fn proc(&self, rel: &str) -> Result<String, Unreadable> {
        read(&self.proc_path(rel))
    }

    /// Text of a file under the sys root.
    pub fn sys(&self, rel: &str) -> Result<String, Unreadable> {
        read(&self.sys_path(rel))
    }

    /// A sysctl by its dotted name (`net.core.somaxconn`), trimmed.
    pub fn sysctl(&self, key: &str) -> Result<String, Unreadable> {
        self.proc(&sysctl_path(key)).map(|s| s.trim().to_string())
    }

    /// A sysctl parsed as an integer.
    pub fn sysctl_u64(&self, key: &str) -> Result<u64, Unreadable> {
        let text = self.sysctl(key)?;
        text.parse()
            .map_err(|_| Unreadable(format!("{key} is {text:?}, not a number")))
    }

    /// Names in a directory under the proc root.
    pub fn proc_dir(&self, rel: &str) -> Result<Vec<String>, Unreadable> {
        list(&self.proc_path(rel))
    }

    /// Names in a directory under the sys root.
    pub fn sys_dir(&self, rel: &str) -> Result<Vec<String>, Unreadable> {
        list(&self.sys_path(rel))
    }

    /// What `io_uring_setup` answers here.
    pub fn io_uring_probe(&self) -> ProbeOutcome {
        match self.probe {
            IoUringProbe::Assume(outcome) => outcome,
            IoUringProbe::Live => io_uring_setup_probe(),
        }
    }

    /// CPUs online (`/sys/devices/system/cpu/online`), else those this process may use.
    pub fn online_cpus(&self) -> CpuSet {
        self.sys("devices/system/cpu/online")
            .ok()
            .and_then(|s| CpuSet::parse(&s))
            .filter(|set| !set.is_empty())
            .unwrap_or_else(|| {
                let n = std::thread::available_parallelism().map_or(1, |n| n.get());
                (0..n).collect()
            })
    }
}

/// `/proc/sys` relative path of a dotted sysctl name.
pub fn sysctl_path(key: &str) -> String {
    format!("sys/{}", key.replace('.', "/"))
}

fn read(path: &Path) -> Result<String, Unreadable> {
    std::fs::read_to_string(path)
        .map_err(|e| Unreadable(format!("cannot read {}: {e}", path.display())))
}

fn list(path: &Path) -> Result<Vec<String>, Unreadable> {
    let entries = std::fs::read_dir(path)
        .map_err(|e| Unreadable(format!("cannot list {}: {e}", path.display())))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn io_uring_setup_probe() -> ProbeOutcome {
    // struct io_uring_params is 120 bytes; zeroed asks for nothing special.
    let mut params = [0u64; 15];
    // SAFETY: io_uring_setup reads and writes only the 120-byte params buffer we own.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    // SAFETY: fd is the ring we just created and nothing else holds it.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn io_uring_setup_probe() -> ProbeOutcome {
    Err(libc::ENOSYS)
}

/// A set of CPU numbers, read and written in the kernel's list format (`0-3,8,10-11`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuSet(BTreeSet<usize>);

impl CpuSet {
    /// Parses the list format; `None` when it is not one. An empty string is the empty set.
    pub fn parse(text: &str) -> Option<CpuSet> {
        let mut set = BTreeSet::new();
        for part in text
            .trim()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            match part.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi): (usize, usize) = (lo.parse().ok()?, hi.parse().ok()?);
                    if hi < lo {
                        return None;
                    }
                    set.extend(lo..=hi);
                }
                None => {
                    set.insert(part.parse().ok()?);
                }
            }
        }
        Some(CpuSet(set))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, cpu: usize) -> bool {
        self.0.contains(&cpu)
    }

    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().copied()
    }

    pub fn is_subset(&self, other: &CpuSet) -> bool {
        self.0.is_subset(&other.0)
    }

    pub fn difference(&self, other: &CpuSet) -> CpuSet {
        CpuSet(self.0.difference(&other.0).copied().collect())
    }

    pub fn intersection(&self, other: &CpuSet) -> CpuSet {
        CpuSet(self.0.intersection(&other.0).copied().collect())
    }

    pub fn with(&self, cpu: usize) -> CpuSet {
        let mut set = self.0.clone();
        set.insert(cpu);
        CpuSet(set)
    }
}

impl FromIterator<usize> for CpuSet {
    fn from_iter<I: IntoIterator<Item = usize>>(iter: I) -> Self {
        CpuSet(iter.into_iter().collect())
    }
}

impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cpus: Vec<usize> = self.iter().collect();
        let mut first = true;
        let mut i = 0;
        while i < cpus.len() {
            let mut j = i;
            while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
                j += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if j == i {
                write!(f, "{}", cpus[i])?;
            } else {
                write!(f, "{}-{}", cpus[i], cpus[j])?;
            }
            i = j + 1;
        }
        Ok(())
    }
}

/// Which CPUs run shards and which the monitor: from the server's policy, or as a running
/// server reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// CPUs the server may use.
    pub online: CpuSet,
    /// One shard per CPU in this set.
    pub shard_cpus: CpuSet,
    pub monitor_cpu: usize,
    /// The monitor shares its core with a shard (fewer than 4 CPUs).
    pub shares_core: bool,
}

/// With this many CPUs or more, the monitor gets a core of its own.
pub const DEDICATED_MONITOR_MIN_CPUS: usize = 4;

impl Layout {
    /// The server's policy: one shard per CPU; with 4 or more CPUs the monitor core (the last
    /// online CPU unless `monitor` says otherwise) holds no shard; with fewer it shares.
    /// `shards` caps the shard count.
    pub fn from_policy(online: CpuSet, shards: Option<usize>, monitor: Option<usize>) -> Layout {
        let monitor_cpu = monitor.or_else(|| online.iter().last()).unwrap_or(0);
        let shares_core = online.len() < DEDICATED_MONITOR_MIN_CPUS;
        let candidates: Vec<usize> = online
            .iter()
            .filter(|&cpu| shares_core || cpu != monitor_cpu)
            .collect();
        let count = shards
            .unwrap_or(candidates.len())
            .min(candidates.len())
            .max(1);
        let shard_cpus = candidates.into_iter().take(count).collect();
        Layout {
            online,
            shard_cpus,
            monitor_cpu,
            shares_core,
        }
    }

    pub fn shards(&self) -> usize {
        self.shard_cpus.len().max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_round_trip() {
        for (text, shown) in [
            ("0-3,8,10-11", "0-3,8,10-11"),
            ("5", "5"),
            ("", ""),
            ("1,0,2", "0-2"),
        ] {
            assert_eq!(CpuSet::parse(text).unwrap().to_string(), shown, "{text}");
        }
        assert_eq!(CpuSet::parse("3-1"), None);
        assert_eq!(CpuSet::parse("x"), None);
    }

    #[test]
    fn policy_reserves_a_monitor_core_from_four_cpus() {
        let cases = [
            // (online, shards, monitor) -> (shard cpus, monitor, shares)
            ("0-1", None, None, "0-1", 1, true),
            ("0-2", None, None, "0-2", 2, true),
            ("0-3", None, None, "0-2", 3, false),
            ("0-7", Some(2), None, "0-1", 7, false),
            ("0-7", None, Some(0), "1-7", 0, false),
        ];
        for (online, shards, monitor, want, want_monitor, want_shares) in cases {
            let layout = Layout::from_policy(CpuSet::parse(online).unwrap(), shards, monitor);
            assert_eq!(
                layout.shard_cpus.to_string(),
                want,
                "{online} {shards:?} {monitor:?}"
            );
            assert_eq!(
                (layout.monitor_cpu, layout.shares_core),
                (want_monitor, want_shares)
            );
        }
    }
}
