//! A real PostgreSQL primary with streaming replicas for the tests, through the project's own
//! `tests/pg/cluster.sh`, on ports chosen at run time (other suites run on this machine at the
//! same time). A cluster is stopped and deleted when its handle drops, when the test binary
//! exits (shared clusters) and, should a run be killed, by the next run (stale-cluster sweep).
//!
//! One cluster runs at a time in a test binary: a primary and three replicas are four
//! postmasters, and two such clusters starting beside the server on a two-core host starve each
//! other into timeouts. A binary's tests either share one cluster ([`PgCluster::shared`]) or
//! take turns with one of their own ([`PgCluster::start`] waits for the one before to drop).
//! Cargo runs the test binaries one after another, so no two binaries' clusters overlap either.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Condvar, Mutex, OnceLock};

use super::Server;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pg/cluster.sh");
/// Data directories are named `<prefix><pid>-<port>`, so a sweep knows which run owns one.
const DIR_PREFIX: &str = "/tmp/coinbit-test-pg-";

pub struct PgCluster {
    pub dir: PathBuf,
    pub port: u16,
    pub replicas: usize,
    /// This binary's turn to run a cluster, given back when the cluster drops.
    _turn: ClusterTurn,
}

/// Whether a cluster of this binary is running, and the tests waiting for their turn.
static CLUSTER_RUNNING: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

/// The one cluster of this test binary that may run now.
struct ClusterTurn;

impl ClusterTurn {
    fn take() -> ClusterTurn {
        let (running, ended) = &CLUSTER_RUNNING;
        let mut running = running.lock().unwrap_or_else(|e| e.into_inner());
        while *running {
            running = ended.wait(running).unwrap_or_else(|e| e.into_inner());
        }
        *running = true;
        ClusterTurn
    }
}

impl Drop for ClusterTurn {
    fn drop(&mut self) {
        let (running, ended) = &CLUSTER_RUNNING;
        *running.lock().unwrap_or_else(|e| e.into_inner()) = false;
        ended.notify_one();
    }
}

/// Clusters to stop at exit (shared ones live in statics, whose destructors never run).
fn at_exit_list() -> &'static Mutex<Vec<(PathBuf, u16, usize)>> {
    static LIST: OnceLock<Mutex<Vec<(PathBuf, u16, usize)>>> = OnceLock::new();
    LIST.get_or_init(|| {
        extern "C" fn stop_all() {
            if let Some(list) = at_exit_list().lock().ok().map(|l| l.clone()) {
                for (dir, port, replicas) in list {
                    down(&dir, port, replicas);
                }
            }
        }
        // SAFETY: registering a plain function to run at process exit.
        unsafe { libc::atexit(stop_all) };
        Mutex::new(Vec::new())
    })
}

fn script(args: &[&str]) -> Output {
    Command::new("bash")
        .arg(SCRIPT)
        .args(args)
        .output()
        .expect("run tests/pg/cluster.sh")
}

fn down(dir: &std::path::Path, port: u16, replicas: usize) {
    let _ = script(&[
        "down",
        "--purge",
        "--dir",
        dir.to_str().unwrap(),
        "--port",
        &port.to_string(),
        "--replicas",
        &replicas.to_string(),
    ]);
}

/// Stops clusters left by runs that were killed before they could clean up.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(rest) = path
            .to_str()
            .and_then(|p| p.strip_prefix(DIR_PREFIX))
            .map(str::to_string)
        else {
            continue;
        };
        let Some((pid, port)) = rest.split_once('-') else {
            continue;
        };
        let (Ok(pid), Ok(port)) = (pid.parse::<u32>(), port.parse::<u16>()) else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let replicas = (1..10)
            .take_while(|i| path.join(format!("replica{i}")).exists())
            .count();
        down(&path, port, replicas);
    }
}

fn ports_free(base: u16, count: u16) -> bool {
    (base..base + count).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
}

impl PgCluster {
    /// A primary and `replicas` streaming replicas on free ports below 32768, once the
    /// binary's previous cluster has dropped.
    pub fn start(replicas: usize) -> PgCluster {
        static SWEPT: OnceLock<()> = OnceLock::new();
        SWEPT.get_or_init(sweep_stale);
        let mut turn = Some(ClusterTurn::take());
        let mut last_error = String::new();
        for _ in 0..8 {
            let base = 20_000 + fastrand_u16(12_000);
            if !ports_free(base, replicas as u16 + 1) {
                continue;
            }
            let dir = PathBuf::from(format!("{DIR_PREFIX}{}-{base}", std::process::id()));
            at_exit_list()
                .lock()
                .unwrap()
                .push((dir.clone(), base, replicas));
            let cluster = PgCluster {
                dir,
                port: base,
                replicas,
                _turn: turn.take().expect("a turn per attempt"),
            };
            let out = cluster.run(&["up"]);
            if out.status.success() {
                return cluster;
            }
            // Most likely a port taken meanwhile by another suite: try elsewhere.
            last_error = String::from_utf8_lossy(&out.stderr).into_owned();
            drop(cluster); // stops what did start, deletes it, and gives the turn back
            turn = Some(ClusterTurn::take());
            eprintln!("cluster on {base} failed, retrying elsewhere: {last_error}");
        }
        panic!("could not start a PostgreSQL cluster: {last_error}");
    }

    /// The shared cluster of this test binary (one primary, three replicas), which keeps the
    /// binary's turn: a binary that uses it starts no other.
    pub fn shared() -> &'static PgCluster {
        static SHARED: OnceLock<PgCluster> = OnceLock::new();
        SHARED.get_or_init(|| PgCluster::start(3))
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend([
            "--dir".into(),
            self.dir.to_str().unwrap().into(),
            "--port".into(),
            self.port.to_string(),
            "--replicas".into(),
            self.replicas.to_string(),
        ]);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        script(&refs)
    }

    /// `primary`, `replica1`, ...: stops one node (fast shutdown).
    pub fn stop(&self, node: &str) {
        let out = self.run(&["stop", node]);
        assert!(out.status.success(), "stop {node}: {out:?}");
    }

    pub fn start_node(&self, node: &str) {
        let out = self.run(&["start", node]);
        assert!(out.status.success(), "start {node}: {out:?}");
    }

    pub fn node_port(&self, node: &str) -> u16 {
        match node.strip_prefix("replica") {
            Some(i) => self.port + i.parse::<u16>().unwrap(),
            None => self.port,
        }
    }

    pub fn url(&self, node: &str, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}",
            self.node_port(node)
        )
    }

    /// The server's variables for `database` on this cluster.
    pub fn env(&self, database: &str) -> Vec<(String, String)> {
        let mut env = vec![("DATABASE_URL".to_string(), self.url("primary", database))];
        for i in 1..=self.replicas {
            env.push((
                format!("DB_READ_REPLICA_{i}"),
                self.url(&format!("replica{i}"), database),
            ));
        }
        env
    }

    /// Runs SQL on a node with psql; the output, trimmed. Panics on failure.
    pub fn psql(&self, node: &str, database: &str, sql: &str) -> String {
        self.try_psql(node, database, sql)
            .unwrap_or_else(|error| panic!("psql on {node}: {sql}: {error}"))
    }

    /// Runs SQL on a node with psql; the output, trimmed, or psql's error text.
    pub fn try_psql(&self, node: &str, database: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(psql_binary())
            .args(["-X", "-q", "-At", "-h", "127.0.0.1", "-U", "postgres"])
            .args([
                "-p",
                &self.node_port(node).to_string(),
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// A fresh database of its own for one test (replicated to every replica).
    pub fn create_database(&self, name: &str) -> String {
        self.psql("primary", "postgres", &format!("CREATE DATABASE {name}"));
        self.wait_on_every_replica(
            "the new database",
            "postgres",
            &format!("SELECT count(*) = 1 FROM pg_database WHERE datname = '{name}'"),
        );
        name.to_string()
    }

    /// Waits (bounded) until every replica has replayed all the primary had written when
    /// called: what a test pauses or stops must already hold the schema and rows it reads.
    pub fn wait_replicas_caught_up(&self, database: &str) {
        let written = self.psql("primary", database, "SELECT pg_current_wal_lsn()");
        let check = format!("SELECT pg_last_wal_replay_lsn() >= '{written}'::pg_lsn");
        self.wait_on_every_replica(&format!("replay up to {written}"), database, &check);
    }

    /// Waits (bounded) until `check`, a query answering one boolean, is true on every replica:
    /// what a test reads through replicas without read-your-writes must have been replayed.
    pub fn wait_on_every_replica(&self, what: &str, database: &str, check: &str) {
        for i in 1..=self.replicas {
            let replica = format!("replica{i}");
            // A replica that has not replayed the migrations yet answers "relation does not
            // exist": not there yet, like a false, until the bound.
            let mut last = String::new();
            let replayed = super::try_wait_for(std::time::Duration::from_secs(30), || {
                match self.try_psql(&replica, database, check) {
                    Ok(answer) if answer == "t" => Some(()),
                    Ok(answer) => {
                        last = answer;
                        None
                    }
                    Err(error) => {
                        last = error;
                        None
                    }
                }
            });
            assert!(
                replayed.is_some(),
                "timed out waiting for {what} on {replica}: {check} last answered {last:?}"
            );
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        down(&self.dir, self.port, self.replicas);
        if let Ok(mut list) = at_exit_list().lock() {
            list.retain(|(dir, _, _)| *dir != self.dir);
        }
    }
}

pub fn psql_binary() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin/psql"))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| PathBuf::from("psql"))
}

/// A random number below `bound`, from the clock and the pid (no extra crate for one draw).
fn fastrand_u16(bound: u16) -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    (h.finish() % u64::from(bound)) as u16
}

/// A server binary of the installed PostgreSQL (`pg_ctl`, ...), beside psql.
pub fn pg_binary(name: &str) -> PathBuf {
    psql_binary().with_file_name(name)
}

/// A PostgreSQL tool on this cluster's files, as the `postgres` user when the tests run as
/// root (PostgreSQL refuses root).
fn as_postgres(program: PathBuf) -> Command {
    // SAFETY: reading this process's own user id.
    if unsafe { libc::getuid() } == 0 {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

impl PgCluster {
    /// One URL naming several nodes' hosts (`postgres://h1:p1,h2:p2/db`): the server finds
    /// which one takes writes.
    pub fn multi_host_url(&self, nodes: &[&str], database: &str) -> String {
        let hosts: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", self.node_port(n)))
            .collect();
        format!("postgres://postgres@{}/{database}", hosts.join(","))
    }

    /// Promotes the standby `node` to a primary (`pg_ctl promote`, waiting until it is).
    pub fn promote(&self, node: &str) {
        let out = as_postgres(pg_binary("pg_ctl"))
            .args(["promote", "-w", "-t", "60", "-D"])
            .arg(self.dir.join(node))
            .output()
            .expect("run pg_ctl promote");
        assert!(out.status.success(), "promote {node}: {out:?}");
    }

    /// Starts the stopped `node` again as a standby of `leader` (a former primary following
    /// the one promoted in its place; after a clean shutdown it needs no rewind).
    pub fn start_as_standby_of(&self, node: &str, leader: &str) {
        let data = self.dir.join(node);
        std::fs::write(data.join("standby.signal"), "").expect("standby.signal");
        let mut auto = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.auto.conf"))
            .expect("postgresql.auto.conf");
        use std::io::Write;
        writeln!(
            auto,
            "primary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name={node}'",
            self.node_port(leader)
        )
        .expect("write postgresql.auto.conf");
        self.start_node(node);
    }

    /// A server on `database` of this cluster (writes on the primary, reads on every replica),
    /// `extra_env` beside, quick to notice a lost node ([`start_quick_to_fail_over`]).
    pub fn start_server(
        &self,
        engine: &str,
        database: &str,
        extra_env: &[(&str, &str)],
        args: &[&str],
    ) -> Server {
        let cluster_env = self.env(database);
        let env: Vec<(&str, &str)> = cluster_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(extra_env.iter().copied())
            .collect();
        start_quick_to_fail_over(engine, &env, args)
    }
}

/// A server on the database `env` names that notices a lost node within the tests' waits: two
/// connections a pool, a health check every 200 ms, an ejection of 300 ms, connects given up
/// after a second; then `args`.
pub fn start_quick_to_fail_over(engine: &str, env: &[(&str, &str)], args: &[&str]) -> Server {
    let quick = [
        "--pool-size",
        "2",
        "--replica-health-check-interval",
        "200",
        "--ejection-time",
        "300",
        "--connect-timeout",
        "1000",
    ];
    let all: Vec<&str> = quick.iter().chain(args).copied().collect();
    Server::start_with(engine, &all, env)
}

/// This binary's turn to run a database cluster, for tests that start one other than
/// [`PgCluster`] (Patroni's, say): held, no `PgCluster` of this binary starts beside it.
pub struct Turn(#[allow(dead_code)] ClusterTurn);

pub fn take_turn() -> Turn {
    Turn(ClusterTurn::take())
}
