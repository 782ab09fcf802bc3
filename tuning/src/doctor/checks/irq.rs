//! Interrupts: irqbalance, and where the NIC's queue interrupts land against the shard CPUs.
use std::collections::BTreeSet;

use super::{or_unknown, Check, Context, Status};
use crate::doctor::host::{CpuSet, Host, Layout, Unreadable};

pub fn checks(host: &Host, ctx: &Context) -> Vec<Check> {
    vec![irqbalance(host), nic_irq_affinity(host, ctx)]
}

fn irqbalance(host: &Host) -> Check {
    const NAME: &str = "irqbalance";
    // Without pid 1 in view (hidepid, or a pid namespace) other processes may be hidden.
    let entries = host.proc("1/comm").and_then(|_| host.proc_dir(""));
    or_unknown(NAME, entries, |entries| {
        let running = entries
            .iter()
            .filter(|e| e.bytes().all(|b| b.is_ascii_digit()))
            .find(|pid| {
                host.proc(&format!("{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "irqbalance")
            });
        match running {
            Some(pid) => Check::bad(
                NAME,
                Status::Warn,
                format!("running (pid {pid})"),
                "it moves IRQs between CPUs every 10 s, undoing any pinning against the shard CPUs",
                "systemctl disable --now irqbalance  (or keep it off the shard CPUs: IRQBALANCE_BANNED_CPULIST=<shard cpus> in /etc/default/irqbalance)",
            ),
            None => Check::pass(NAME, "not running", "IRQ affinity stays where it is set"),
        }
    })
}

/// One NIC interrupt and the CPUs it may run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicIrq {
    pub nic: String,
    pub irq: u32,
    pub affinity: CpuSet,
}

fn nic_irq_affinity(host: &Host, ctx: &Context) -> Check {
    or_unknown(NAME, nic_irqs(host, &ctx.ifaces), |irqs| {
        judge_nic_irqs(&irqs, &ctx.layout)
    })
}

const NAME: &str = "nic_irq_affinity";

/// The rule: each queue interrupt pinned to one CPU, either spread over the shard CPUs or all
/// kept off them (on the monitor core); not floating, not piled on one shard.
pub fn judge_nic_irqs(irqs: &[NicIrq], layout: &Layout) -> Check {
    if irqs.is_empty() {
        return Check::unknown(NAME, "no NIC queue interrupts found (no device-backed interface, or a virtual NIC without its own IRQs)");
    }
    let nics: BTreeSet<&str> = irqs.iter().map(|i| i.nic.as_str()).collect();
    let nics = nics.into_iter().collect::<Vec<_>>().join(",");
    let used: CpuSet = irqs.iter().flat_map(|i| i.affinity.iter()).collect();
    let value = format!("{nics}: {} IRQs on cpus {used}", irqs.len());
    let fix = || pin_commands(irqs, &layout.shard_cpus);
    let floating: Vec<String> = irqs
        .iter()
        .filter(|i| i.affinity.len() != 1)
        .map(|i| i.irq.to_string())
        .collect();
    if !floating.is_empty() {
        return Check::bad(
            NAME,
            Status::Warn,
            value,
            format!("IRQs {} are not pinned: the kernel delivers them where it likes, often all to one CPU", floating.join(",")),
            fix(),
        );
    }
    let on_shards = irqs
        .iter()
        .filter(|i| i.affinity.is_subset(&layout.shard_cpus))
        .count();
    if on_shards == 0 {
        return Check::pass(
            NAME,
            value,
            format!(
                "kept off the shard CPUs ({}): packet work stays away from the event loops",
                layout.shard_cpus
            ),
        );
    }
    if on_shards < irqs.len() {
        return Check::bad(
            NAME,
            Status::Warn,
            value,
            "some queues are on shard CPUs and some are not: shards get uneven packet work",
            fix(),
        );
    }
    let want = irqs.len().min(layout.shard_cpus.len());
    if used.len() < want {
        return Check::bad(
            NAME,
            Status::Warn,
            value,
            format!(
                "{} queues share {} CPU(s) of {} shards: those shards do everyone's packet work",
                irqs.len(),
                used.len(),
                layout.shard_cpus.len()
            ),
            fix(),
        );
    }
    Check::pass(
        NAME,
        value,
        format!(
            "one CPU per queue, spread over the shard CPUs ({})",
            layout.shard_cpus
        ),
    )
}

/// Commands that pin the queues round-robin over `cpus`.
fn pin_commands(irqs: &[NicIrq], cpus: &CpuSet) -> String {
    let cpus: Vec<usize> = cpus.iter().collect();
    let pins: Vec<String> = irqs
        .iter()
        .zip(cpus.iter().cycle())
        .map(|(i, cpu)| format!("echo {cpu} > /proc/irq/{}/smp_affinity_list", i.irq))
        .collect();
    format!("stop irqbalance first, then: {}", pins.join("; "))
}

/// Queue interrupts of the NICs named (or of every device-backed interface) with their
/// affinity. PCI devices list theirs in `msi_irqs/`; others (virtio) are matched by name in
/// `/proc/interrupts`. Config and control interrupts are left out.
pub fn nic_irqs(host: &Host, ifaces: &[String]) -> Result<Vec<NicIrq>, Unreadable> {
    let ifaces = if ifaces.is_empty() {
        host.sys_dir("class/net")?
            .into_iter()
            .filter(|n| {
                host.sys_path(&format!("class/net/{n}/device"))
                    .symlink_metadata()
                    .is_ok()
            })
            .collect()
    } else {
        ifaces.to_vec()
    };
    let table = interrupts(&host.proc("interrupts")?);
    let mut found = Vec::new();
    for nic in ifaces {
        let device = host.sys_path(&format!("class/net/{nic}/device"));
        let devname = std::fs::read_link(&device)
            .ok()
            .and_then(|t| t.file_name().map(|f| f.to_string_lossy().into_owned()));
        let msi: Option<BTreeSet<u32>> = host
            .sys_dir(&format!("class/net/{nic}/device/msi_irqs"))
            .ok()
            .map(|names| names.iter().filter_map(|n| n.parse().ok()).collect());
        for (irq, names) in &table {
            let control = names
                .iter()
                .any(|n| n.contains("config") || n.contains("async"));
            let ours = match &msi {
                Some(set) => set.contains(irq),
                None => names.iter().any(|n| {
                    n == &nic
                        || n.starts_with(&format!("{nic}-"))
                        || devname
                            .as_ref()
                            .is_some_and(|d| n.starts_with(&format!("{d}-")))
                }),
            };
            if ours && !control {
                let text = host.proc(&format!("irq/{irq}/smp_affinity_list"))?;
                let affinity = CpuSet::parse(&text).ok_or_else(|| {
                    Unreadable(format!("irq/{irq}/smp_affinity_list is {text:?}"))
                })?;
                found.push(NicIrq {
                    nic: nic.clone(),
                    irq: *irq,
                    affinity,
                });
            }
        }
    }
    Ok(found)
}

/// `(irq, words after the per-CPU counts)` for each numbered line of `/proc/interrupts`.
fn interrupts(text: &str) -> Vec<(u32, Vec<String>)> {
    text.lines()
        .filter_map(|line| {
            let (irq, rest) = line.trim_start().split_once(':')?;
            let irq = irq.parse().ok()?;
            let names = rest
                .split_whitespace()
                .skip_while(|w| w.bytes().all(|b| b.is_ascii_digit()))
                .map(str::to_string)
                .collect();
            Some((irq, names))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::testing::{context, FakeHost};

    const INTERRUPTS: &str = "           CPU0       CPU1       CPU2       CPU3\n \
         26:          0         13          0          0  IO-APIC   4-edge      ttyS0\n \
         37:          0          0          0          0  PCI-MSIX-0000:00:03.0   0-edge      virtio2-config\n \
         38:          0       3171          0          0  PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0\n \
         39:       2357          0          0          0  PCI-MSIX-0000:00:03.0   2-edge      virtio2-output.0\n \
         40:          5          0          0          0  PCI-MSIX-0000:00:04.0   0-edge      virtio20-input.0\n\
        LOC:      30381      28666      1000       1000   Local timer interrupts\n";

    /// A 4-CPU host (shards 0-2, monitor 3) with eth0 on virtio2, IRQs 38 and 39 at `affinity`.
    fn virtio_host(affinity: [&str; 2]) -> FakeHost {
        let fake = FakeHost::new();
        fake.proc("interrupts", INTERRUPTS)
            .link("sys/class/net/eth0/device", "../../../devices/virtio2");
        fake.sys("class/net/lo/mtu", "65536");
        for (irq, a) in [
            (38, affinity[0]),
            (39, affinity[1]),
            (37, "0-3"),
            (40, "0-3"),
        ] {
            fake.proc(&format!("irq/{irq}/smp_affinity_list"), &format!("{a}\n"));
        }
        fake
    }

    fn nic_check(fake: &FakeHost) -> Check {
        checks(&fake.host(), &context("0-3")).remove(1)
    }

    #[test]
    fn nic_irq_branches() {
        let cases = [
            (["0", "1"], Status::Pass, "spread"),
            (["3", "3"], Status::Pass, "kept off"),
            (["0-3", "1"], Status::Warn, "not pinned"),
            (["3", "1"], Status::Warn, "some queues"),
            (["1", "1"], Status::Warn, "share 1 CPU"),
        ];
        for (affinity, want, fragment) in cases {
            let check = nic_check(&virtio_host(affinity));
            assert_eq!(check.status, want, "{affinity:?}: {check:?}");
            assert!(
                check.explanation.contains(fragment) || check.explanation.starts_with("one CPU"),
                "{check:?}"
            );
            assert!(check.value.starts_with("eth0: 2 IRQs"), "{check:?}");
            if want == Status::Warn {
                let fix = check.fix.unwrap();
                assert!(fix.contains("echo 0 > /proc/irq/38/smp_affinity_list; echo 1 > /proc/irq/39/smp_affinity_list"), "{fix}");
            }
        }
    }

    #[test]
    fn pci_nics_list_their_irqs_in_msi_irqs() {
        let fake = virtio_host(["1", "2"]);
        fake.sys("class/net/eth1/device/msi_irqs/39", "msix")
            .sys("class/net/eth1/device/msi_irqs/40", "msix");
        let irqs = nic_irqs(&fake.host(), &["eth1".to_string()]).unwrap();
        assert_eq!(irqs.iter().map(|i| i.irq).collect::<Vec<_>>(), [39, 40]);
    }

    #[test]
    fn nic_irqs_unknown_without_nics_or_tables() {
        let fake = FakeHost::new();
        fake.proc("interrupts", INTERRUPTS)
            .sys("class/net/lo/mtu", "65536");
        assert_eq!(nic_check(&fake).status, Status::Unknown);
        assert_eq!(nic_check(&FakeHost::new()).status, Status::Unknown);
        let unreadable = virtio_host(["1", "2"]);
        std::fs::remove_file(unreadable.root().join("proc/irq/39/smp_affinity_list")).unwrap();
        assert_eq!(nic_check(&unreadable).status, Status::Unknown);
    }

    #[test]
    fn irqbalance_branches() {
        let fake = FakeHost::new();
        fake.proc("1/comm", "systemd\n");
        assert_eq!(
            checks(&fake.host(), &context("0-3"))[0].status,
            Status::Pass
        );
        fake.proc("812/comm", "irqbalance\n");
        let check = checks(&fake.host(), &context("0-3")).remove(0);
        assert_eq!(
            (check.status, check.value.as_str()),
            (Status::Warn, "running (pid 812)")
        );
        let missing = Host::new(
            "/nonexistent-proc",
            "/nonexistent-sys",
            crate::doctor::host::IoUringProbe::Assume(Ok(())),
        );
        assert_eq!(checks(&missing, &context("0-3"))[0].status, Status::Unknown);
    }
}
