//! `--server URL`: read a running server's cluster status and check it against the host:
//! engine, shard placement (distinct CPUs, the monitor core free of shards), that each thread
//! is pinned to the CPU it claims, and the server process's own limits.
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde::Deserialize;

use super::checks::kernel::status_field;
use super::checks::limits::{self, Names};
use super::checks::{Check, Context, Status};
use super::host::{CpuSet, Host, Layout, Unreadable};

/// Path asked for when the URL names none.
pub const STATUS_PATH: &str = "/api/enterprise/cluster/status";
const TIMEOUT: Duration = Duration::from_secs(3);

/// `GET /api/enterprise/cluster/status`, the fields the doctor reads.
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterStatus {
    #[serde(default)]
    pub engine: String,
    #[serde(default)]
    pub pid: Option<u32>,
    pub monitor: Monitor,
    pub shards: Vec<Shard>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Monitor {
    pub cpu: usize,
    #[serde(default)]
    pub tid: Option<u32>,
    #[serde(default)]
    pub shares_core: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Shard {
    pub id: usize,
    pub cpu: usize,
    #[serde(default)]
    pub tid: Option<u32>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub heartbeat_age_ms: Option<u64>,
}

impl ClusterStatus {
    /// The layout the server runs, on a host with `online` CPUs.
    pub fn layout(&self, online: CpuSet) -> Layout {
        Layout {
            online,
            shard_cpus: self.shards.iter().map(|s| s.cpu).collect(),
            monitor_cpu: self.monitor.cpu,
            shares_core: self.monitor.shares_core,
        }
    }
}

/// Fetches and parses the status, or the FAIL line saying why it could not.
pub fn fetch(url: &str) -> Result<ClusterStatus, Check> {
    let fail = |why: String| {
        Check::bad(
            "server",
            Status::Fail,
            url,
            why,
            "start the server, or pass the URL of its listener (http://host:port)",
        )
    };
    let body = http_get(url).map_err(fail)?;
    serde_json::from_str(&body).map_err(|e| {
        Check::bad(
            "server",
            Status::Fail,
            url,
            format!("the cluster status is not what the doctor expects: {e}"),
            "run a matching coinbit version",
        )
    })
}

/// The checks on a server whose status was read. `ctx` carries the server's layout.
pub fn checks(host: &Host, url: &str, status: &ClusterStatus, ctx: &Context) -> Vec<Check> {
    let pid = status.pid.map_or("unknown".to_string(), |p| p.to_string());
    let mut out = vec![
        Check::pass(
            "server",
            url,
            format!(
                "engine {}, {} shard(s), pid {pid}",
                status.engine,
                status.shards.len()
            ),
        ),
        engine(status),
        shard_states(status),
        placement(status),
    ];
    match visible_pid(host, status) {
        Ok(pid) => {
            out.push(pinning(host, pid, status));
            out.extend(limits::judge(
                &Names::SERVER,
                host.proc(&format!("{pid}/limits")),
                ctx.shards(),
                ctx.connection_target(),
            ));
        }
        Err(why) => {
            for name in [
                "server.pinning",
                Names::SERVER.memlock,
                Names::SERVER.nofile,
            ] {
                out.push(Check::unknown(name, &why));
            }
        }
    }
    out
}

fn engine(status: &ClusterStatus) -> Check {
    const NAME: &str = "server.engine";
    match status.engine.as_str() {
        "glommio" => Check::pass(NAME, "glommio", "io_uring engine"),
        "may" => Check::bad(
            NAME,
            Status::Warn,
            "may",
            "serving on the epoll fallback: io_uring was unavailable to the server (see io_uring and memlock)",
            "fix the io_uring and memlock checks, then restart the server",
        ),
        other => Check::unknown(NAME, format!("engine {other:?} is not one the doctor knows")),
    }
}

fn shard_states(status: &ClusterStatus) -> Check {
    const NAME: &str = "server.shards";
    let off: Vec<String> = status
        .shards
        .iter()
        .filter(|s| s.state.as_deref().is_some_and(|st| st != "running"))
        .map(|s| format!("shard {} {}", s.id, s.state.as_deref().unwrap_or("")))
        .collect();
    let value = format!(
        "{}/{} running",
        status.shards.len() - off.len(),
        status.shards.len()
    );
    if status.shards.is_empty() {
        return Check::bad(
            NAME,
            Status::Fail,
            "0 shards",
            "the server reports no shards",
            "check the server's log (RUST_LOG=info)",
        );
    }
    if off.is_empty() {
        let worst = status
            .shards
            .iter()
            .filter_map(|s| s.heartbeat_age_ms)
            .max();
        Check::pass(
            NAME,
            value,
            worst.map_or("every shard running".into(), |ms| {
                format!("every shard running; oldest heartbeat {ms} ms")
            }),
        )
    } else {
        Check::bad(
            NAME,
            Status::Warn,
            value,
            off.join(", "),
            "check the server's log (RUST_LOG=info) for the shard's restarts",
        )
    }
}

/// Distinct shard CPUs, and the monitor core free of shards unless the server says it shares.
pub fn placement(status: &ClusterStatus) -> Check {
    const NAME: &str = "server.placement";
    let fix = "restart the server with --shards / --monitor-core that give each shard its own CPU and the monitor one of its own";
    let mut seen = std::collections::BTreeMap::new();
    for s in &status.shards {
        seen.entry(s.cpu).or_insert_with(Vec::new).push(s.id);
    }
    let doubled: Vec<String> = seen
        .iter()
        .filter(|(_, ids)| ids.len() > 1)
        .map(|(cpu, ids)| format!("cpu {cpu}: shards {ids:?}"))
        .collect();
    let cpus: CpuSet = seen.keys().copied().collect();
    let value = format!(
        "shards on cpus {cpus}, monitor on cpu {}",
        status.monitor.cpu
    );
    if !doubled.is_empty() {
        return Check::bad(
            NAME,
            Status::Fail,
            value,
            format!(
                "two shards share a CPU ({}): they take turns on one core",
                doubled.join("; ")
            ),
            fix,
        );
    }
    match (seen.get(&status.monitor.cpu), status.monitor.shares_core) {
        (Some(ids), false) => Check::bad(
            NAME,
            Status::Fail,
            value,
            format!(
                "shard {ids:?} sits on the monitor core, which the server says it does not share"
            ),
            fix,
        ),
        (_, true) => Check::pass(
            NAME,
            value,
            "the monitor shares a core (the server has fewer than 4 CPUs)",
        ),
        (None, false) => Check::pass(
            NAME,
            value,
            "one CPU per shard; the monitor core holds no shard",
        ),
    }
}

/// The server's pid when this host can see it and all its threads; else why not.
pub fn visible_pid(host: &Host, status: &ClusterStatus) -> Result<u32, String> {
    let pid = status.pid.ok_or("the status names no pid")?;
    let tasks = host
        .proc_dir(&format!("{pid}/task"))
        .map_err(|_| format!("pid {pid} is not visible here (the server runs on another host or in another pid namespace)"))?;
    let tids = status
        .shards
        .iter()
        .filter_map(|s| s.tid)
        .chain(status.monitor.tid);
    if let Some(missing) = tids.map(|t| t.to_string()).find(|t| !tasks.contains(t)) {
        return Err(format!("pid {pid} here has no thread {missing}: not the server (another host or pid namespace)"));
    }
    Ok(pid)
}

/// Each shard thread (and the monitor's) pinned to exactly the CPU it claims.
fn pinning(host: &Host, pid: u32, status: &ClusterStatus) -> Check {
    const NAME: &str = "server.pinning";
    let threads = status
        .shards
        .iter()
        .map(|s| (format!("shard {}", s.id), s.tid, s.cpu))
        .chain(std::iter::once((
            "monitor".to_string(),
            status.monitor.tid,
            status.monitor.cpu,
        )));
    let mut checked = 0;
    let mut wrong = Vec::new();
    for (who, tid, cpu) in threads {
        let Some(tid) = tid else { continue };
        let allowed = match allowed_cpus(host, pid, tid) {
            Ok(a) => a,
            Err(why) => return Check::unknown(NAME, why),
        };
        checked += 1;
        if allowed != std::iter::once(cpu).collect() {
            wrong.push(format!(
                "{who} (tid {tid}) claims cpu {cpu} but may run on {allowed}"
            ));
        }
    }
    if checked == 0 {
        return Check::unknown(NAME, "the status names no thread ids");
    }
    let value = format!("{}/{checked} threads pinned", checked - wrong.len());
    if wrong.is_empty() {
        Check::pass(NAME, value, "every thread runs only on the CPU it claims")
    } else {
        Check::bad(
            NAME,
            Status::Fail,
            value,
            wrong.join("; "),
            "restart the server; if it persists, widen CPUAffinity= in coinbit.service (or the cgroup cpuset) to include every shard CPU",
        )
    }
}

fn allowed_cpus(host: &Host, pid: u32, tid: u32) -> Result<CpuSet, Unreadable> {
    let rel = format!("{pid}/task/{tid}/status");
    let text = host.proc(&rel)?;
    status_field(&text, "Cpus_allowed_list")
        .and_then(CpuSet::parse)
        .ok_or_else(|| Unreadable(format!("no Cpus_allowed_list in {rel}")))
}

/// A small HTTP/1.1 GET: the body of a 200 answer, or why there is none.
pub fn http_get(url: &str) -> Result<String, String> {
    if url.starts_with("https://") {
        return Err("https is not supported; give the server's plain http listener".into());
    }
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (authority, path) = match rest.find('/') {
        Some(i) if &rest[i..] != "/" => (&rest[..i], &rest[i..]),
        Some(i) => (&rest[..i], STATUS_PATH),
        None => (rest, STATUS_PATH),
    };
    let address = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        && !authority.ends_with(']')
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addrs = address
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?;
    let mut last = format!("{authority} resolves to no address");
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    let mut stream = stream.ok_or(last)?;
    let io = |e: std::io::Error| format!("GET {path} from {authority}: {e}");
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io)?;
    let (response, eof) = read_response(&mut stream).map_err(io)?;
    let (status, body) =
        parse_response(&response, eof).map_err(|e| format!("GET {path} from {authority}: {e}"))?;
    if status != 200 {
        return Err(format!(
            "GET {path} answered {status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(200)
                .collect::<String>()
        ));
    }
    String::from_utf8(body).map_err(|_| format!("GET {path}: the body is not UTF-8"))
}

/// Reads until the body announced by the headers is complete or the peer closes; says which.
fn read_response(stream: &mut TcpStream) -> std::io::Result<(Vec<u8>, bool)> {
    const LIMIT: usize = 16 << 20;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    while buf.len() <= LIMIT && parse_response(&buf, false).is_err() {
        match stream.read(&mut chunk) {
            Ok(0) => return Ok((buf, true)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // A signal to this process (the doctor runs inside others, tests among them) is
            // not the server's answer: read again.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok((buf, false))
}

/// Status code and body of a whole response; `Err` while it is incomplete or malformed.
/// `eof`: the peer has closed, which ends a body sent without a length.
fn parse_response(buf: &[u8], eof: bool) -> Result<(u16, Vec<u8>), String> {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no complete response head")?;
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "response head is not text")?;
    let status_line = head.split("\r\n").next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| format!("not an HTTP response: {status_line:?}"))?;
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let body = &buf[end + 4..];
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        return dechunk(body).map(|b| (status, b));
    }
    match header("content-length") {
        Some(len) => {
            let len: usize = len.parse().map_err(|_| "bad content-length")?;
            if body.len() < len {
                return Err("the body is cut short".into());
            }
            Ok((status, body[..len].to_vec()))
        }
        None if eof => Ok((status, body.to_vec())),
        None => Err("the body runs to the end of the stream".into()),
    }
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk incomplete")?;
        let size_text = std::str::from_utf8(&body[..line_end]).map_err(|_| "bad chunk size")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            return Err("chunk incomplete".into());
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}
