//! Alert delivery to `MONITORING_WEBHOOK_URL`: POSTs in the Alertmanager webhook shape
//! (version 4), from a thread of its own with retries, so the monitor never waits on a
//! receiver. A plain HTTP/1.1 client over `std::net`: one small POST per notification needs
//! no HTTP library (and no async runtime); https receivers go behind a TLS proxy.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{Sender, TrySendError};
use serde_json::{json, Value};

use super::alerts::{Alert, AlertState};

/// Attempts per notification, and the wait before each retry (doubling).
const ATTEMPTS: u32 = 4;
const FIRST_RETRY: Duration = Duration::from_millis(500);
const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// The most of a receiver's answer read: its status line and headers (the body is not read).
const MAX_RESPONSE_HEAD: usize = 8 * 1024;
/// The longest a receiver may take over its status line and headers, however it trickles them.
const RESPONSE_HEAD_TIME: Duration = Duration::from_secs(5);
/// Notifications waiting for the thread; past it new ones are dropped and counted.
const QUEUE: usize = 256;

/// Where the webhook POSTs: `http://host[:port][/path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            "expected an http:// URL (the webhook client speaks plain HTTP; put a TLS proxy in \
             front of an https receiver)"
                .to_string()
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => (
                host,
                port.parse::<u16>()
                    .map_err(|_| format!("the port {port:?} is not a number"))?,
            ),
            _ => (authority, 80),
        };
        if host.is_empty() {
            return Err("the URL names no host".into());
        }
        Ok(Target {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            path: path.to_string(),
        })
    }
}

/// Delivery counters, shown by the alerts endpoint.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
    pub retries: AtomicU64,
}

/// The monitor's end: hands payloads to the delivery thread without waiting.
pub struct Webhook {
    queue: Sender<Vec<u8>>,
    pub stats: Arc<DeliveryStats>,
    pub url: String,
}

impl Webhook {
    /// Starts the delivery thread.
    pub fn start(url: &str) -> Result<Webhook, String> {
        let target = Target::parse(url)?;
        let (queue, payloads) = crossbeam::channel::bounded::<Vec<u8>>(QUEUE);
        let stats = Arc::new(DeliveryStats::default());
        let thread_stats = stats.clone();
        std::thread::Builder::new()
            .name("alert-webhook".into())
            .spawn(move || {
                for payload in payloads {
                    deliver(&target, &payload, &thread_stats);
                }
            })
            .map_err(|e| format!("cannot start the webhook thread: {e}"))?;
        Ok(Webhook {
            queue,
            stats,
            url: url.to_string(),
        })
    }

    /// Queues one notification; never blocks.
    pub fn send(&self, payload: Vec<u8>) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.queue.try_send(payload)
        {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            log::warn!("alert webhook: queue full, a notification was dropped");
        }
    }
}

fn deliver(target: &Target, payload: &[u8], stats: &DeliveryStats) {
    let mut wait = FIRST_RETRY;
    for attempt in 1..=ATTEMPTS {
        match post(target, payload) {
            Ok(status) if (200..300).contains(&status) => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(status) => log::warn!(
                "alert webhook {}:{}{}: answered {status} (attempt {attempt} of {ATTEMPTS})",
                target.host,
                target.port,
                target.path
            ),
            Err(e) => log::warn!(
                "alert webhook {}:{}{}: {e} (attempt {attempt} of {ATTEMPTS})",
                target.host,
                target.port,
                target.path
            ),
        }
        if attempt < ATTEMPTS {
            stats.retries.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(wait);
            wait *= 2;
        }
    }
    stats.failed.fetch_add(1, Ordering::Relaxed);
}

/// One POST; returns the response's status code.
fn post(target: &Target, payload: &[u8]) -> std::io::Result<u16> {
    let addr = (target.host.as_str(), target.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("the host resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nUser-Agent: coinbit/{}\r\nConnection: close\r\n\r\n",
        target.path,
        target.host,
        target.port,
        payload.len(),
        env!("CARGO_PKG_VERSION")
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(payload)?;
    read_status(
        &mut stream,
        MAX_RESPONSE_HEAD,
        Instant::now() + RESPONSE_HEAD_TIME,
    )
}

/// Reads the answer's head (status line and headers) within `max_head` bytes and by
/// `deadline`, and returns its status code. The body is left unread: the connection closes
/// (`Connection: close` was asked for).
fn read_status(stream: &mut TcpStream, max_head: usize, deadline: Instant) -> std::io::Result<u16> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= max_head {
            return Err(std::io::Error::other(format!(
                "the answer's head is over {max_head} bytes"
            )));
        }
        let late = || {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the answer's head did not arrive in time",
            )
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(late());
        }
        stream.set_read_timeout(Some(left))?;
        let want = chunk.len().min(max_head - head.len());
        // A socket read timeout surfaces as WouldBlock on Linux (TimedOut elsewhere): either
        // way the deadline has passed.
        let n = match stream.read(&mut chunk[..want]) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(late())
            }
            read => read?,
        };
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let status_line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    String::from_utf8_lossy(status_line)
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("no HTTP status line in the answer"))
}

/// The Alertmanager webhook body (version 4) for one alert's notification.
pub fn payload(alert: &Alert, external_url: &str) -> Value {
    let status = if alert.state == AlertState::Resolved {
        "resolved"
    } else {
        "firing"
    };
    let labels = json!({
        "alertname": alert.name,
        "severity": alert.severity,
        "service": "coinbit",
    });
    let annotations = json!({
        "summary": alert.message,
        "value": alert.value,
        "threshold": alert.threshold,
        "action": alert.action,
    });
    let ends_at = alert
        .resolved_ms
        .map(rfc3339)
        .unwrap_or_else(|| "0001-01-01T00:00:00Z".to_string());
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{}\"}}", alert.name),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "coinbit-webhook",
        "groupLabels": { "alertname": alert.name },
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": external_url,
        "alerts": [{
            "status": status,
            "labels": labels,
            "annotations": annotations,
            "startsAt": rfc3339(alert.first_seen_ms),
            "endsAt": ends_at,
            "generatorURL": format!("{external_url}/api/enterprise/alerts"),
            "fingerprint": fingerprint(&alert.id),
        }],
    })
}

/// A stable 16-hex-digit id of an alert (FNV-1a of its id).
fn fingerprint(id: &str) -> String {
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// Milliseconds since the epoch as RFC 3339 UTC (`2026-11-28T07:40:00.123Z`).
pub fn rfc3339(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_table() {
        let ok = |host: &str, port, path: &str| {
            Ok(Target {
                host: host.into(),
                port,
                path: path.into(),
            })
        };
        assert_eq!(Target::parse("http://h:9/a/b"), ok("h", 9, "/a/b"));
        assert_eq!(Target::parse("http://h"), ok("h", 80, "/"));
        assert_eq!(Target::parse("http://[::1]:7/x"), ok("::1", 7, "/x"));
        assert!(Target::parse("https://h/").unwrap_err().contains("TLS"));
        assert!(Target::parse("http://h:port/").is_err());
        assert!(Target::parse("http:///x").is_err());
    }

    /// A receiver on a local port that answers every connection with `answer`, after reading
    /// the request's first bytes.
    fn receiver(answer: fn(&mut TcpStream) -> std::io::Result<()>) -> Target {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                std::thread::spawn(move || {
                    let _ = stream.read(&mut [0u8; 1024]);
                    let _ = answer(&mut stream);
                });
            }
        });
        Target {
            host: "127.0.0.1".into(),
            port,
            path: "/hook".into(),
        }
    }

    /// A status line that never ends, as fast as the client takes it.
    fn endless_line(stream: &mut TcpStream) -> std::io::Result<()> {
        stream.write_all(b"HTTP/1.1 200 OK")?;
        loop {
            stream.write_all(&[b'x'; 4096])?;
        }
    }

    /// A status line that never ends, a byte every 20 ms.
    fn trickle(stream: &mut TcpStream) -> std::io::Result<()> {
        stream.write_all(b"HTTP/1.1 200 OK")?;
        loop {
            stream.write_all(b"x")?;
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `deliver` on a thread of its own, as the webhook does; the stats once it is done.
    fn deliver_within(target: Target, limit: Duration) -> Arc<DeliveryStats> {
        let stats = Arc::new(DeliveryStats::default());
        let (done, finished) = crossbeam::channel::bounded(1);
        let thread_stats = stats.clone();
        std::thread::spawn(move || {
            deliver(&target, b"{}", &thread_stats);
            let _ = done.send(());
        });
        finished
            .recv_timeout(limit)
            .expect("the delivery did not end in time");
        stats
    }

    /// Sends a request to `target` and reads its answer's status within `allowed` on a
    /// thread of its own; panics if that takes over `limit`.
    fn read_status_within(
        target: &Target,
        allowed: Duration,
        limit: Duration,
    ) -> std::io::Result<u16> {
        let mut stream = TcpStream::connect((target.host.as_str(), target.port)).unwrap();
        stream.write_all(b"POST /hook HTTP/1.1\r\n\r\n").unwrap();
        let (done, finished) = crossbeam::channel::bounded(1);
        std::thread::spawn(move || {
            let read = read_status(&mut stream, MAX_RESPONSE_HEAD, Instant::now() + allowed);
            let _ = done.send(read);
        });
        finished
            .recv_timeout(limit)
            .expect("the answer was still being read")
    }

    #[test]
    fn an_endless_answer_is_read_up_to_the_head_cap_and_the_delivery_fails() {
        let target = receiver(endless_line);
        let allowed = Duration::from_secs(10);
        let error = read_status_within(&target, allowed, allowed * 2).unwrap_err();
        assert!(error.to_string().contains("over 8192 bytes"), "{error}");
        // Every attempt fails the same way (4 attempts, 3.5 s of retry waits).
        let stats = deliver_within(target, Duration::from_secs(15));
        assert_eq!(stats.failed.load(Ordering::Relaxed), 1);
        assert_eq!(stats.delivered.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_answer_that_trickles_is_given_up_at_the_deadline() {
        let target = receiver(trickle);
        let error = read_status_within(&target, Duration::from_millis(300), Duration::from_secs(5))
            .unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut, "{error}");
    }

    #[test]
    fn a_complete_head_gives_its_status() {
        let target =
            receiver(|stream| stream.write_all(b"HTTP/1.1 204 No Content\r\nServer: t\r\n\r\n"));
        let stats = deliver_within(target, Duration::from_secs(10));
        assert_eq!(stats.delivered.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_851_600_123), "2026-11-28T07:40:00.123Z");
    }
}
