//! Which CPU each shard and the monitor run on.

/// Where the shards and the monitor run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// CPU of each shard, by shard id.
    pub shard_cpus: Vec<usize>,
    pub monitor_cpu: usize,
    /// The monitor shares its CPU with a shard (fewer than 4 CPUs, or asked for).
    pub monitor_shares_core: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("no CPU is available to this process")]
    NoCpus,
    #[error("SHARD_CPUS names CPU {cpu}, which this process may not use (allowed: {allowed:?})")]
    ShardCpuNotAllowed { cpu: usize, allowed: Vec<usize> },
    #[error("MONITOR_CORE={cpu} is not a CPU this process may use (allowed: {allowed:?})")]
    MonitorCpuNotAllowed { cpu: usize, allowed: Vec<usize> },
    #[error("no CPU is left for shards once the monitor core {monitor} is reserved")]
    NothingLeft { monitor: usize },
}

/// With this many CPUs or more, the monitor gets a core of its own.
pub const DEDICATED_MONITOR_MIN_CPUS: usize = 4;

/// Decides placement from the CPUs the process may use, its cgroup's CPU quota (in whole CPUs)
/// and the operator's overrides. Without `SHARDS`, one shard per chosen CPU, but no more than
/// the quota: a shard beyond it would only take time slices from the others. Shards beyond the
/// chosen CPUs wrap around (two shards on a CPU), which is allowed but logged.
pub fn place(
    available: &[usize],
    cpu_quota: Option<usize>,
    shards: Option<usize>,
    shard_cpus: Option<&[usize]>,
    monitor_core: Option<usize>,
) -> Result<Placement, PlacementError> {
    let (&last, _) = available.split_last().ok_or(PlacementError::NoCpus)?;
    let allowed = || available.to_vec();
    let monitor_cpu = monitor_core.unwrap_or(last);
    if !available.contains(&monitor_cpu) {
        return Err(PlacementError::MonitorCpuNotAllowed {
            cpu: monitor_cpu,
            allowed: allowed(),
        });
    }
    let candidates: Vec<usize> = match shard_cpus {
        Some(cpus) => {
            if let Some(&cpu) = cpus.iter().find(|c| !available.contains(c)) {
                return Err(PlacementError::ShardCpuNotAllowed {
                    cpu,
                    allowed: allowed(),
                });
            }
            cpus.to_vec()
        }
        None if available.len() >= DEDICATED_MONITOR_MIN_CPUS => available
            .iter()
            .copied()
            .filter(|&c| c != monitor_cpu)
            .collect(),
        None => available.to_vec(),
    };
    if candidates.is_empty() {
        return Err(PlacementError::NothingLeft {
            monitor: monitor_cpu,
        });
    }
    let count = shards.unwrap_or(candidates.len().min(cpu_quota.unwrap_or(usize::MAX)).max(1));
    let shard_cpus: Vec<usize> = (0..count)
        .map(|i| candidates[i % candidates.len()])
        .collect();
    let monitor_shares_core = shard_cpus.contains(&monitor_cpu);
    Ok(Placement {
        shard_cpus,
        monitor_cpu,
        monitor_shares_core,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_of_placements() {
        type Case<'a> = (
            &'a [usize],
            Option<usize>,
            Option<&'a [usize]>,
            Option<usize>,
            Result<(Vec<usize>, usize, bool), PlacementError>,
        );
        let cases: Vec<Case> = vec![
            // Two CPUs: both run shards, the monitor shares the last.
            (&[0, 1], None, None, None, Ok((vec![0, 1], 1, true))),
            // Sixteen CPUs: the last is the monitor's alone.
            (
                &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
                None,
                None,
                None,
                Ok(((0..15).collect(), 15, false)),
            ),
            (
                &[0, 1, 2, 3],
                None,
                None,
                Some(0),
                Ok((vec![1, 2, 3], 0, false)),
            ),
            (
                &[0, 1, 2, 3],
                Some(2),
                None,
                None,
                Ok((vec![0, 1], 3, false)),
            ),
            // More shards than CPUs wrap around.
            (&[0, 1], Some(3), None, None, Ok((vec![0, 1, 0], 1, true))),
            // Explicit CPUs, the monitor on the same one (the one-core bench).
            (&[0, 1], None, Some(&[0]), Some(0), Ok((vec![0], 0, true))),
            (
                &[0, 1],
                None,
                Some(&[5]),
                None,
                Err(PlacementError::ShardCpuNotAllowed {
                    cpu: 5,
                    allowed: vec![0, 1],
                }),
            ),
            (
                &[0, 1],
                None,
                None,
                Some(9),
                Err(PlacementError::MonitorCpuNotAllowed {
                    cpu: 9,
                    allowed: vec![0, 1],
                }),
            ),
            (&[], None, None, None, Err(PlacementError::NoCpus)),
        ];
        for (available, shards, cpus, monitor, expected) in cases {
            let got = place(available, None, shards, cpus, monitor)
                .map(|p| (p.shard_cpus, p.monitor_cpu, p.monitor_shares_core));
            assert_eq!(
                got, expected,
                "available {available:?} shards {shards:?} cpus {cpus:?} monitor {monitor:?}"
            );
        }
    }

    #[test]
    fn the_cpu_quota_caps_the_default_shard_count() {
        let sixteen: Vec<usize> = (0..16).collect();
        // available, quota, SHARDS, SHARD_CPUS -> shard CPUs
        type Case<'a> = (
            &'a [usize],
            Option<usize>,
            Option<usize>,
            Option<&'a [usize]>,
            &'a [usize],
        );
        let cases: [Case; 7] = [
            (&sixteen, Some(2), None, None, &[0, 1]),
            (&sixteen, Some(1), None, None, &[0]),
            (&sixteen, Some(64), None, None, &sixteen[..15]),
            (&[0, 1], Some(1), None, None, &[0]),
            (&[0, 1, 2, 3], Some(1), None, Some(&[2, 3]), &[2]),
            // SHARDS is the operator's word: the quota does not override it.
            (&sixteen, Some(2), Some(4), None, &[0, 1, 2, 3]),
            (&[0, 1], None, None, None, &[0, 1]),
        ];
        for (available, quota, shards, cpus, expected) in cases {
            let got = place(available, quota, shards, cpus, None).unwrap();
            assert_eq!(
                got.shard_cpus, expected,
                "quota {quota:?} shards {shards:?}"
            );
        }
    }
}
