//! Sampling on the monitor core, every `MONITORING_METRICS_INTERVAL`: CPU of the process and of
//! each shard's thread (from /proc), resident memory against the host's total, and the traffic
//! of the interval (latency percentiles and error rate from the merged HDR histograms).

use std::collections::HashMap;
use std::time::Instant;

use hdrhistogram::Histogram;

/// One sample: every metric the thresholds, trends, score and dashboard read.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// CPU of the whole process, % of the CPUs it may use.
    pub process_cpu: f64,
    /// CPU of each shard's thread, % of one CPU, by shard id.
    pub shard_cpu: Vec<f64>,
    /// CPU of the monitor thread itself, % of one CPU.
    pub monitor_cpu: f64,
    /// Mean CPU of the active shards: what the CPU alert and auto-scaling read.
    pub cpu: f64,
    /// Resident memory, % of the host's total.
    pub memory: f64,
    pub rss_bytes: u64,
    /// p99 of the responses of the interval (ms); 0 when none.
    pub response_time_ms: f64,
    pub latency_p50_ms: f64,
    pub latency_p90_ms: f64,
    pub latency_p99_ms: f64,
    pub request_rate: f64,
    /// Failures the server caused (5xx of routed requests), % of the interval's responses.
    pub error_rate: f64,
    /// Open client connections.
    pub concurrent_users: u64,
    /// Jobs waiting in the per-core queues ([`super::merge::ClusterState::queued_jobs`]).
    pub queued_jobs: u64,
    pub active_shards: usize,
    /// The health score worked out from this sample.
    pub health_score: u8,
}

/// The traffic of one sampling interval, merged over the shards.
pub struct IntervalTraffic<'a> {
    pub seconds: f64,
    pub requests: u64,
    pub server_errors: u64,
    pub latency: &'a Histogram<u64>,
}

impl Sample {
    /// Fills the traffic fields from the interval's merged counters and histogram.
    pub fn set_traffic(&mut self, traffic: &IntervalTraffic<'_>) {
        let ms = |q: f64| {
            if traffic.latency.is_empty() {
                0.0
            } else {
                traffic.latency.value_at_quantile(q) as f64 / 1000.0
            }
        };
        self.latency_p50_ms = ms(0.50);
        self.latency_p90_ms = ms(0.90);
        self.latency_p99_ms = ms(0.99);
        self.response_time_ms = self.latency_p99_ms;
        self.request_rate = if traffic.seconds > 0.0 {
            traffic.requests as f64 / traffic.seconds
        } else {
            0.0
        };
        self.error_rate = if traffic.requests > 0 {
            100.0 * traffic.server_errors as f64 / traffic.requests as f64
        } else {
            0.0
        };
    }
}

/// CPU time of threads and of the process between two readings, from /proc.
pub struct CpuMeter {
    ticks_per_second: f64,
    cpus: f64,
    threads: HashMap<i32, u64>,
    process: Option<u64>,
    last_at: Option<Instant>,
}

/// CPU readings of one interval, in % of one CPU (threads) and of all CPUs (process).
pub struct CpuReading {
    pub process: f64,
    pub threads: HashMap<i32, f64>,
}

impl CpuMeter {
    pub fn new(cpus: usize) -> Self {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        CpuMeter {
            ticks_per_second: if ticks > 0 { ticks as f64 } else { 100.0 },
            cpus: cpus.max(1) as f64,
            threads: HashMap::new(),
            process: None,
            last_at: None,
        }
    }

    /// Reads the process and the given threads; a thread seen for the first time reads 0.
    pub fn read(&mut self, tids: &[i32], now: Instant) -> CpuReading {
        let elapsed = self
            .last_at
            .map(|at| now.saturating_duration_since(at).as_secs_f64())
            .unwrap_or(0.0);
        self.last_at = Some(now);
        let percent = |before: Option<u64>, after: Option<u64>, cpus: f64| match (before, after) {
            (Some(b), Some(a)) if elapsed > 0.0 => {
                100.0 * a.saturating_sub(b) as f64 / self.ticks_per_second / elapsed / cpus
            }
            _ => 0.0,
        };
        let process_now = read_ticks("/proc/self/stat");
        let process = percent(self.process, process_now, self.cpus);
        self.process = process_now;
        let mut threads = HashMap::new();
        let mut seen = HashMap::new();
        for &tid in tids.iter().filter(|&&t| t > 0) {
            let now_ticks = read_ticks(&format!("/proc/self/task/{tid}/stat"));
            threads.insert(
                tid,
                percent(self.threads.get(&tid).copied(), now_ticks, 1.0),
            );
            if let Some(t) = now_ticks {
                seen.insert(tid, t);
            }
        }
        self.threads = seen;
        CpuReading { process, threads }
    }
}

/// utime + stime of a /proc `stat` file, in clock ticks.
fn read_ticks(path: &str) -> Option<u64> {
    parse_stat_ticks(&std::fs::read_to_string(path).ok()?)
}

/// The fields after the command name (which may hold spaces and parentheses) start at field 3;
/// utime and stime are fields 14 and 15.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident memory of the process in bytes, and that as % of the host's memory.
pub fn memory() -> (u64, f64) {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let rss = pages * page;
    let total = mem_total_bytes();
    let percent = if total > 0 {
        100.0 * rss as f64 / total as f64
    } else {
        0.0
    };
    (rss, percent)
}

fn mem_total_bytes() -> u64 {
    static TOTAL: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TOTAL.get_or_init(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .map(|kib| kib * 1024)
            .unwrap_or(0)
    })
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_skip_a_command_name_with_spaces_and_parentheses() {
        let stat = "42 (shard (1) x) S 1 42 42 0 -1 4194560 100 0 0 0 250 17 0 0 20 0 3 0";
        assert_eq!(parse_stat_ticks(stat), Some(267));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn this_thread_burning_cpu_reads_as_busy() {
        // The CPU time the kernel accounts to this thread, read independently of /proc.
        fn thread_cpu() -> f64 {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
            ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
        }
        let tid = crate::shard::current_tid();
        let mut meter = CpuMeter::new(1);
        let start = Instant::now();
        let cpu_before = thread_cpu();
        meter.read(&[tid], start);
        // Spin until the thread has had 200 ms of CPU: on a loaded host that takes longer, and
        // the share it reads is then lower, but it must match what the kernel gave the thread.
        while thread_cpu() - cpu_before < 0.2 {
            std::hint::black_box((0..1000u64).sum::<u64>());
        }
        let end = Instant::now();
        let reading = meter.read(&[tid], end);
        let wall = end.duration_since(start).as_secs_f64();
        let expected = 100.0 * (thread_cpu() - cpu_before) / wall;
        // /proc counts whole clock ticks (10 ms): allow two of them either way.
        let tolerance = 100.0 * 0.02 / wall + 1.0;
        let busy = reading.threads[&tid];
        assert!(
            busy > 0.0 && (busy - expected).abs() <= tolerance,
            "read {busy:.1} %, the kernel gave {expected:.1} % (tolerance {tolerance:.1})"
        );
        let (rss, percent) = memory();
        assert!(rss > 0 && percent > 0.0 && percent < 100.0);
    }
}
