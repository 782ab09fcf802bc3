//! `apply.sh` against a temp root: the dry run prints the exact changes and writes nothing,
//! `--apply` writes them (and the doctor then passes), a second `--apply` changes nothing,
//! `--undo` puts every value back.
use std::path::Path;
use std::process::Command;

use crate::doctor::checks::{net, Status};
use crate::doctor::host::sysctl_path;
use crate::doctor::testing::{context, FakeHost};

const BEFORE: [(&str, &str); 6] = [
    ("net.core.somaxconn", "4096"),
    ("net.ipv4.tcp_max_syn_backlog", "2048"),
    ("net.core.netdev_max_backlog", "1000"),
    ("net.ipv4.ip_local_port_range", "32768\t60999"),
    ("net.ipv4.tcp_tw_reuse", "1"),
    ("net.ipv4.tcp_migrate_req", "0"),
];

fn apply_sh(root: &Path, args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("apply.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "apply.sh {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn values(fake: &FakeHost) -> Vec<String> {
    BEFORE
        .iter()
        .map(|(key, _)| {
            std::fs::read_to_string(fake.root().join("proc").join(sysctl_path(key))).unwrap()
        })
        .collect()
}

fn net_statuses(fake: &FakeHost) -> Vec<Status> {
    net::checks(&fake.host(), &context("0-1"))
        .into_iter()
        .map(|c| c.status)
        .collect()
}

#[test]
fn dry_run_apply_again_and_undo() {
    let fake = FakeHost::new();
    for (key, value) in BEFORE {
        fake.sysctl(key, value);
    }
    let original = values(&fake);
    let dropin = fake.root().join("etc/sysctl.d/60-coinbit.conf");
    let state = fake.root().join("var/lib/coinbit/tuning.state");

    let shown = apply_sh(fake.root(), &[]);
    for line in [
        "net.core.somaxconn = 4096 -> 65535",
        "net.ipv4.tcp_max_syn_backlog = 2048 -> 65535",
        "net.core.netdev_max_backlog = 1000 -> 16384",
        "net.ipv4.ip_local_port_range = 32768 60999 -> 32768 65535",
        "net.ipv4.tcp_tw_reuse = 1 (unchanged)",
        "net.ipv4.tcp_migrate_req = 0 -> 1",
        "vm.swappiness: not on this kernel, skipped",
        "dry run: 6 change(s)",
    ] {
        assert!(shown.contains(line), "missing {line:?} in\n{shown}");
    }
    assert_eq!(values(&fake), original, "the dry run wrote");
    assert!(!dropin.exists() && !state.exists());
    assert!(net_statuses(&fake).contains(&Status::Warn));

    apply_sh(fake.root(), &["--apply"]);
    assert_eq!(
        values(&fake),
        [
            "65535\n",
            "65535\n",
            "16384\n",
            "32768 65535\n",
            "1\n",
            "1\n"
        ]
    );
    assert_eq!(
        std::fs::read_to_string(&dropin).unwrap(),
        include_str!("../sysctl.conf")
    );
    assert_eq!(net_statuses(&fake), [Status::Pass; 6]);

    let saved = std::fs::read_to_string(&state).unwrap();
    let again = apply_sh(fake.root(), &["--apply"]);
    assert!(again.contains("applied: 0 change(s)"), "{again}");
    assert_eq!(
        std::fs::read_to_string(&state).unwrap(),
        saved,
        "a second --apply must keep the first originals"
    );

    let preview = apply_sh(fake.root(), &["--undo", "--dry-run"]);
    assert!(
        preview.contains("net.core.somaxconn = 65535 -> 4096"),
        "{preview}"
    );
    assert!(state.exists());

    apply_sh(fake.root(), &["--undo"]);
    let normalize = |v: &[String]| {
        v.iter()
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
    };
    assert_eq!(normalize(&values(&fake)), normalize(&original));
    assert!(!dropin.exists() && !state.exists());
    assert!(apply_sh(fake.root(), &["--undo"]).contains("nothing to undo"));
}

#[test]
fn undo_restores_a_drop_in_that_was_there_before() {
    let fake = FakeHost::new();
    fake.sysctl("net.core.somaxconn", "4096");
    fake.file(
        "etc/sysctl.d/60-coinbit.conf",
        "net.core.somaxconn = 1024\n",
    );
    apply_sh(fake.root(), &["--apply"]);
    apply_sh(fake.root(), &["--undo"]);
    let dropin = std::fs::read_to_string(fake.root().join("etc/sysctl.d/60-coinbit.conf")).unwrap();
    assert_eq!(dropin, "net.core.somaxconn = 1024\n");
}
