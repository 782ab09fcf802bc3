//! CPUs: frequency governor, isolated and tickless CPUs against the shard layout, clocksource.
use super::{or_unknown, Check, Context, Status};
use crate::doctor::host::{CpuSet, Host, Layout, Unreadable};

pub fn checks(host: &Host, ctx: &Context) -> Vec<Check> {
    vec![
        governor(host, &ctx.layout),
        isolation(host, &ctx.layout, Isolation::ISOLCPUS),
        isolation(host, &ctx.layout, Isolation::NOHZ_FULL),
        clocksource(host),
    ]
}

fn governor(host: &Host, layout: &Layout) -> Check {
    const NAME: &str = "cpu_governor";
    let cpus = layout.shard_cpus.with(layout.monitor_cpu);
    let mut seen: Vec<(usize, String)> = Vec::new();
    for cpu in cpus.iter() {
        if let Ok(g) = host.sys(&format!(
            "devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"
        )) {
            seen.push((cpu, g.trim().to_string()));
        }
    }
    if seen.is_empty() {
        return Check::unknown(NAME, "no cpufreq interface (a virtual machine, or no cpufreq driver): the frequency is not set from this host");
    }
    let slow: CpuSet = seen
        .iter()
        .filter(|(_, g)| g != "performance")
        .map(|(cpu, _)| *cpu)
        .collect();
    if slow.is_empty() {
        return Check::pass(
            NAME,
            "performance",
            format!("cpus {cpus} run at full frequency"),
        );
    }
    let names: Vec<&str> = {
        let mut n: Vec<&str> = seen
            .iter()
            .filter(|(_, g)| g != "performance")
            .map(|(_, g)| g.as_str())
            .collect();
        n.sort_unstable();
        n.dedup();
        n
    };
    Check::bad(
        NAME,
        Status::Warn,
        format!("{} on cpus {slow}", names.join(",")),
        "a shard that wakes from idle runs at a low clock for milliseconds: latency and throughput both suffer",
        "cpupower frequency-set -g performance  (or: echo performance | tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor)",
    )
}

/// One CPU-isolation kernel parameter: its name, where sysfs shows it, what it does.
pub struct Isolation {
    pub param: &'static str,
    pub sysfs: &'static str,
    pub effect: &'static str,
}

impl Isolation {
    pub const ISOLCPUS: Isolation = Isolation {
        param: "isolcpus",
        sysfs: "devices/system/cpu/isolated",
        effect: "kept out of the scheduler's load balancing",
    };
    pub const NOHZ_FULL: Isolation = Isolation {
        param: "nohz_full",
        sysfs: "devices/system/cpu/nohz_full",
        effect: "without the periodic tick while one task runs",
    };
}

fn isolation(host: &Host, layout: &Layout, iso: Isolation) -> Check {
    // sysfs shows the effective set; without the file, fall back to the command line.
    let set = host
        .sys(iso.sysfs)
        .and_then(|s| {
            CpuSet::parse(&s).ok_or_else(|| Unreadable(format!("{} is {s:?}", iso.sysfs)))
        })
        .or_else(|_| {
            host.proc("cmdline")
                .map(|cmdline| cmdline_cpus(&cmdline, iso.param))
        });
    or_unknown(iso.param, set, |set| judge_isolation(&iso, &set, layout))
}

/// The rule: isolation is optional; when set it should cover the shard CPUs and leave a
/// housekeeping CPU for the kernel and the server's unpinned threads (DB I/O).
pub fn judge_isolation(iso: &Isolation, set: &CpuSet, layout: &Layout) -> Check {
    let name = iso.param;
    let fix = format!(
        "set {name}={} on the kernel command line (GRUB_CMDLINE_LINUX in /etc/default/grub, then update-grub and reboot), or remove it",
        layout.shard_cpus
    );
    if set.is_empty() {
        return Check::pass(
            name,
            "not set",
            format!("optional: shard CPUs could be {}", iso.effect),
        );
    }
    let value = set.to_string();
    let housekeeping = layout.online.difference(set);
    if housekeeping.is_empty() {
        return Check::bad(
            name,
            Status::Fail,
            value,
            "every CPU is isolated: the kernel's housekeeping and the server's unpinned threads (DB I/O) pile onto one CPU",
            fix,
        );
    }
    let idle = set.difference(&layout.shard_cpus.with(layout.monitor_cpu));
    if !idle.is_empty() {
        return Check::bad(
            name,
            Status::Warn,
            value,
            format!("cpus {idle} are isolated but hold no shard: they sit idle"),
            fix,
        );
    }
    let bare = layout.shard_cpus.difference(set);
    if !bare.is_empty() {
        return Check::bad(
            name,
            Status::Warn,
            value,
            format!("shards on cpus {bare} are not: shards see uneven jitter"),
            fix,
        );
    }
    Check::pass(
        name,
        value,
        format!(
            "shard CPUs are {}; cpus {housekeeping} do housekeeping",
            iso.effect
        ),
    )
}

/// CPUs named by `param=` on a kernel command line (flags such as `domain,managed_irq,` are
/// skipped); empty when absent.
pub fn cmdline_cpus(cmdline: &str, param: &str) -> CpuSet {
    let prefix = format!("{param}=");
    cmdline
        .split_whitespace()
        .take_while(|w| *w != "--")
        .filter_map(|w| w.strip_prefix(prefix.as_str()))
        .last()
        .map(|v| {
            let list: Vec<&str> = v
                .split(',')
                .filter(|p| p.starts_with(|c: char| c.is_ascii_digit()))
                .collect();
            CpuSet::parse(&list.join(",")).unwrap_or_default()
        })
        .unwrap_or_default()
}

fn clocksource(host: &Host) -> Check {
    const NAME: &str = "clocksource";
    const DIR: &str = "devices/system/clocksource/clocksource0";
    // Sources clock_gettime reads in user space (vDSO), without a system call.
    const FAST: [&str; 4] = [
        "tsc",
        "kvm-clock",
        "arch_sys_counter",
        "hyperv_clocksource_tsc_page",
    ];
    or_unknown(
        NAME,
        host.sys(&format!("{DIR}/current_clocksource")),
        |current| {
            let current = current.trim();
            let available = host
                .sys(&format!("{DIR}/available_clocksource"))
                .unwrap_or_default();
            let why = "every request reads the clock (timeouts, latency histograms)";
            if FAST.contains(&current) {
                Check::pass(
                    NAME,
                    current,
                    format!("{why}; {current} is read without a system call"),
                )
            } else if available.split_whitespace().any(|s| s == "tsc") {
                Check::bad(
                NAME,
                Status::Warn,
                current,
                format!("{why}; {current} costs a system call or an I/O port read each time, and tsc is available"),
                format!("echo tsc > /sys/{DIR}/current_clocksource  (persist: clocksource=tsc on the kernel command line)"),
            )
            } else {
                Check::bad(
                    NAME,
                    Status::Warn,
                    current,
                    format!("{why}; {current} is slow and no tsc is offered (unstable TSC?)"),
                    "check dmesg for 'TSC unstable'; enable invariant TSC in the firmware",
                )
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::testing::{context, FakeHost};

    fn by_name(fake: &FakeHost, online: &str, name: &str) -> Check {
        checks(&fake.host(), &context(online))
            .into_iter()
            .find(|c| c.name == name)
            .unwrap()
    }

    #[test]
    fn governor_branches() {
        let cases = [
            (&["performance"; 4][..], Status::Pass),
            (
                &["performance", "performance", "powersave", "performance"][..],
                Status::Warn,
            ),
            (&[][..], Status::Unknown),
        ];
        for (governors, want) in cases {
            let fake = FakeHost::new();
            for (cpu, g) in governors.iter().enumerate() {
                fake.sys(
                    &format!("devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"),
                    &format!("{g}\n"),
                );
            }
            let check = by_name(&fake, "0-3", "cpu_governor");
            assert_eq!(check.status, want, "{governors:?}: {check:?}");
        }
    }

    #[test]
    fn isolation_branches() {
        // 8 CPUs: monitor on 7, shards on 0-6.
        let cases = [
            (Some(""), "", Status::Pass, "not set"),
            (Some("0-6\n"), "", Status::Pass, "0-6"),
            (Some("0-7"), "", Status::Fail, "0-7"),
            (Some("1-3"), "", Status::Warn, "1-3"),
            (
                None,
                "ro isolcpus=managed_irq,domain,0-6 quiet",
                Status::Pass,
                "0-6",
            ),
            (None, "ro quiet -- isolcpus=0-6", Status::Pass, "not set"),
        ];
        for (sysfs, cmdline, want, value) in cases {
            let fake = FakeHost::new();
            fake.proc("cmdline", cmdline);
            if let Some(s) = sysfs {
                fake.sys("devices/system/cpu/isolated", s);
            }
            let check = by_name(&fake, "0-7", "isolcpus");
            assert_eq!(
                (check.status, check.value.as_str()),
                (want, value),
                "{sysfs:?} {cmdline}: {check:?}"
            );
        }
        let layout = Layout::from_policy(CpuSet::parse("0-7").unwrap(), Some(3), None);
        let idle = judge_isolation(
            &Isolation::NOHZ_FULL,
            &CpuSet::parse("0-6").unwrap(),
            &layout,
        );
        assert_eq!(idle.status, Status::Warn, "{idle:?}");
        assert!(idle.explanation.contains("3-6"), "{idle:?}");
        // Neither the sysfs file nor the command line readable.
        assert_eq!(
            by_name(&FakeHost::new(), "0-7", "nohz_full").status,
            Status::Unknown
        );
    }

    #[test]
    fn clocksource_branches() {
        let cases = [
            (Some("tsc"), "tsc hpet acpi_pm", Status::Pass),
            (Some("kvm-clock"), "kvm-clock tsc", Status::Pass),
            (Some("hpet"), "tsc hpet acpi_pm", Status::Warn),
            (Some("acpi_pm"), "hpet acpi_pm", Status::Warn),
            (None, "", Status::Unknown),
        ];
        for (current, available, want) in cases {
            let fake = FakeHost::new();
            let dir = "devices/system/clocksource/clocksource0";
            fake.sys(&format!("{dir}/available_clocksource"), available);
            if let Some(c) = current {
                fake.sys(&format!("{dir}/current_clocksource"), &format!("{c}\n"));
            }
            let check = by_name(&fake, "0-1", "clocksource");
            assert_eq!(check.status, want, "{current:?}: {check:?}");
            assert_eq!(check.fix.is_some(), want == Status::Warn);
        }
    }
}
