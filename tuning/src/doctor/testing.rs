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

/// Serves one HTTP request on a loopback port with `body` (chunked when asked); returns the
/// server's base URL.
pub fn serve_once(status_line: &'static str, body: String, chunked: bool) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        assert!(request.starts_with(b"GET /api/enterprise/cluster/status HTTP/1.1\r\n"));
        let response = if chunked {
            let (a, b) = body.split_at(body.len() / 2);
            format!(
                "{status_line}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                a.len(),
                b.len()
            )
        } else {
            format!("{status_line}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        };
        let _ = conn.write_all(response.as_bytes());
        // Keep the connection open: the client must stop at the announced length.
        std::thread::sleep(std::time::Duration::from_millis(200));
    });
    url
}
