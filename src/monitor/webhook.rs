//! Alert delivery to `MONITORING_WEBHOOK_URL`: POSTs in the Alertmanager webhook shape
//! (version 4), from a thread of its own with retries, so the monitor never waits on a
//! receiver. A plain HTTP/1.1 client over `std::net`: one small POST per notification needs
//! no HTTP library (and no async runtime); https receivers go behind a TLS proxy.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam::channel::{Sender, TrySendError};
use serde_json::{json, Value};

use super::alerts::{Alert, AlertState};

/// Attempts per notification, and the wait before each retry (doubling).
const ATTEMPTS: u32 = 4;
const FIRST_RETRY: Duration = Duration::from_millis(500);
const IO_TIMEOUT: Duration = Duration::from_secs(3);
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
    let mut response = Vec::new();
    let mut chunk = [0u8; 1024];
    // The status line is all that matters; read until it is complete.
    while !response.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        response.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&response);
    line.split_whitespace()
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

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_851_600_123), "2026-11-28T07:40:00.123Z");
    }
}
