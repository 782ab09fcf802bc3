//! Fake `/proc` and `/sys` trees in a temp dir, for tests.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::checks::{Context, DEFAULT_CONNECTIONS_PER_SHARD};
use super::host::{sysctl_path, CpuSet, Host, IoUringProbe, Layout};

/// A temp directory holding `proc/` and `sys/`, removed on drop.
pub struct FakeHost {
    root: PathBuf,
    probe: IoUringProbe,
}

impl FakeHost {
    pub fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("coinbit-doctor-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for dir in ["proc", "sys"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        FakeHost {
            root,
            probe: IoUringProbe::Assume(Ok(())),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Writes `text` at `rel` under the tree (`proc/...` or `sys/...`).
    pub fn file(&self, rel: &str, text: &str) -> &Self {
        let path = self.root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        self
    }

    pub fn proc(&self, rel: &str, text: &str) -> &Self {
        self.file(&format!("proc/{rel}"), text)
    }

    pub fn sys(&self, rel: &str, text: &str) -> &Self {
        self.file(&format!("sys/{rel}"), text)
    }

    pub fn sysctl(&self, key: &str, value: &str) -> &Self {
        self.proc(&sysctl_path(key), &format!("{value}\n"))
    }

    /// Makes `proc/<rel>` a symlink to `target`.
    pub fn link(&self, rel: &str, target: &str) -> &Self {
        let path = self.root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, path).unwrap();
        self
    }

    pub fn with_probe(mut self, outcome: Result<(), i32>) -> Self {
        self.probe = IoUringProbe::Assume(outcome);
        self
    }

    pub fn host(&self) -> Host {
        Host::new(self.root.join("proc"), self.root.join("sys"), self.probe)
    }
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A context for `online` CPUs under the server's policy, 10,000 connections per shard.
pub fn context(online: &str) -> Context {
    Context {
        layout: Layout::from_policy(CpuSet::parse(online).unwrap(), None, None),
        connections_per_shard: DEFAULT_CONNECTIONS_PER_SHARD,
        ifaces: Vec::new(),
    }
}
