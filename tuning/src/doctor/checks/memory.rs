//! Memory: transparent hugepages and swap.
use super::{or_unknown, selected, Check, Status};
use crate::doctor::host::{Host, Unreadable};
use crate::doctor::recommended;

pub fn checks(host: &Host) -> Vec<Check> {
    vec![transparent_hugepages(host), swap(host)]
}

fn transparent_hugepages(host: &Host) -> Check {
    const NAME: &str = "transparent_hugepages";
    const DIR: &str = "kernel/mm/transparent_hugepage";
    let read = |file: &str| -> Result<String, Unreadable> {
        let text = host.sys(&format!("{DIR}/{file}"))?;
        selected(&text)
            .map(str::to_string)
            .ok_or_else(|| Unreadable(format!("{DIR}/{file} is {text:?}")))
    };
    let both = read("enabled").and_then(|enabled| Ok((enabled, read("defrag")?)));
    or_unknown(NAME, both, |(enabled, defrag)| {
        let value = format!("enabled={enabled} defrag={defrag}");
        if enabled == "always" || defrag == "always" {
            Check::bad(
                NAME,
                Status::Warn,
                value,
                "with 'always', page faults stall on compaction and khugepaged rewrites memory under the shards: latency spikes",
                format!("echo madvise > /sys/{DIR}/enabled; echo defer+madvise > /sys/{DIR}/defrag  (persist: transparent_hugepage=madvise on the kernel command line)"),
            )
        } else {
            Check::pass(
                NAME,
                value,
                "huge pages only where asked for (madvise), no stalls on compaction",
            )
        }
    })
}

fn swap(host: &Host) -> Check {
    const NAME: &str = "swap";
    const KEY: &str = "vm.swappiness";
    or_unknown(NAME, host.proc("swaps"), |swaps| {
        // The first line is the header.
        let devices: Vec<&str> = swaps
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        if devices.is_empty() {
            return Check::pass(NAME, "none", "no swap: a shard's memory is never paged out");
        }
        let swappiness = host.sysctl_u64(KEY);
        let value = format!(
            "{} ({}), swappiness {}",
            devices.len(),
            devices.join(","),
            swappiness
                .as_ref()
                .map_or("unknown".to_string(), u64::to_string)
        );
        match swappiness {
            Ok(s) if s <= 10 => Check::pass(NAME, value, "swap is on but used only under real memory pressure"),
            Ok(_) => Check::bad(
                NAME,
                Status::Warn,
                value,
                "the kernel pages out idle memory early; a shard touching swapped pages stalls every connection it owns",
                format!("{}  (or: swapoff -a)", recommended::fix(KEY)),
            ),
            Err(why) => Check::unknown(NAME, format!("swap is on; {why}")),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::testing::FakeHost;

    #[test]
    fn thp_branches() {
        let cases = [
            (
                Some((
                    "always [madvise] never",
                    "always defer defer+madvise [madvise] never",
                )),
                Status::Pass,
            ),
            (
                Some(("always madvise [never]", "[defer] madvise never")),
                Status::Pass,
            ),
            (
                Some((
                    "[always] madvise never",
                    "always defer defer+madvise [madvise] never",
                )),
                Status::Warn,
            ),
            (
                Some(("always [madvise] never", "[always] defer madvise never")),
                Status::Warn,
            ),
            (Some(("garbled", "[always]")), Status::Unknown),
            (None, Status::Unknown),
        ];
        for (files, want) in cases {
            let fake = FakeHost::new();
            if let Some((enabled, defrag)) = files {
                fake.sys("kernel/mm/transparent_hugepage/enabled", enabled);
                fake.sys("kernel/mm/transparent_hugepage/defrag", defrag);
            }
            assert_eq!(checks(&fake.host())[0].status, want, "{files:?}");
        }
    }

    #[test]
    fn swap_branches() {
        let header = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";
        let device = "/dev/sda2                               partition\t8388604\t\t0\t\t-2\n";
        let cases = [
            (Some(header.to_string()), Some("60"), Status::Pass),
            (Some(format!("{header}{device}")), Some("60"), Status::Warn),
            (Some(format!("{header}{device}")), Some("1"), Status::Pass),
            (Some(format!("{header}{device}")), None, Status::Unknown),
            (None, Some("1"), Status::Unknown),
        ];
        for (swaps, swappiness, want) in cases {
            let fake = FakeHost::new();
            if let Some(s) = &swaps {
                fake.proc("swaps", s);
            }
            if let Some(s) = swappiness {
                fake.sysctl("vm.swappiness", s);
            }
            assert_eq!(
                checks(&fake.host())[1].status,
                want,
                "{swaps:?} {swappiness:?}"
            );
        }
    }
}
