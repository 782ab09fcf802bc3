//! What client threads record and send to the runner: per-endpoint HDR histograms (nanoseconds) and
//! counters, per-thread gauges, and the messages that carry them.
//!
//! Each client thread owns its [`EndpointStats`]; at every reporting interval it ships them in a
//! [`Snapshot`] and starts fresh, so nothing is shared and the runner merges by adding.

use hdrhistogram::Histogram;

/// Histogram bounds: 1 ns to 1 hour at 3 significant figures.
pub const HIST_LOW: u64 = 1;
pub const HIST_HIGH: u64 = 3_600_000_000_000;
pub const HIST_SIGFIG: u8 = 3;

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(HIST_LOW, HIST_HIGH, HIST_SIGFIG).expect("static histogram bounds")
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The server refused the connection (nothing listening, backlog full).
    ConnectRefused,
    /// No response (or no connection) within `--timeout`.
    Timeout,
    /// The connection was reset or closed while the request was outstanding.
    Reset,
    /// The response could not be parsed as HTTP/1.x.
    BadResponse,
    /// A well-formed response with a status the scenario does not expect.
    UnexpectedStatus,
    /// Scheduled (open model) but never sent: no connection was free before the run ended.
    NotSent,
    /// Any other socket error.
    Other,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::ConnectRefused,
        ErrorKind::Timeout,
        ErrorKind::Reset,
        ErrorKind::BadResponse,
        ErrorKind::UnexpectedStatus,
        ErrorKind::NotSent,
        ErrorKind::Other,
    ];
    pub const COUNT: usize = Self::ALL.len();

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::ConnectRefused => "connect_refused",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::BadResponse => "bad_response",
            ErrorKind::UnexpectedStatus => "unexpected_status",
            ErrorKind::NotSent => "not_sent",
            ErrorKind::Other => "other",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Classifies a socket error.
    pub fn from_io(e: &std::io::Error) -> ErrorKind {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused => ErrorKind::ConnectRefused,
            K::TimedOut => ErrorKind::Timeout,
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                ErrorKind::Reset
            }
            _ => ErrorKind::Other,
        }
    }
}

/// Counters and histograms for one endpoint over one interval (or, once merged, the run).
#[derive(Clone, Debug)]
pub struct EndpointStats {
    /// Latency from the intended send time (coordinated-omission corrected).
    pub corrected: Histogram<u64>,
    /// Latency from the actual send time.
    pub uncorrected: Histogram<u64>,
    /// Responses by status code, `(status, count)`, few entries.
    pub statuses: Vec<(u16, u64)>,
    pub errors: [u64; ErrorKind::COUNT],
}

impl Default for EndpointStats {
    fn default() -> Self {
        EndpointStats {
            corrected: new_hist(),
            uncorrected: new_hist(),
            statuses: Vec::new(),
            errors: [0; ErrorKind::COUNT],
        }
    }
}

impl EndpointStats {
    /// A response arrived. Latencies are in nanoseconds.
    #[inline]
    pub fn record_response(
        &mut self,
        status: u16,
        expected: bool,
        corrected_ns: u64,
        uncorrected_ns: u64,
    ) {
        self.corrected.saturating_record(corrected_ns.max(HIST_LOW));
        self.uncorrected
            .saturating_record(uncorrected_ns.max(HIST_LOW));
        match self.statuses.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += 1,
            None => self.statuses.push((status, 1)),
        }
        if !expected {
            self.errors[ErrorKind::UnexpectedStatus.index()] += 1;
        }
    }

    #[inline]
    pub fn record_error(&mut self, kind: ErrorKind) {
        self.errors[kind.index()] += 1;
    }

    /// Responses received (any status).
    pub fn responses(&self) -> u64 {
        self.corrected.len()
    }

    /// Failed requests: transport errors plus unexpected statuses.
    pub fn error_count(&self) -> u64 {
        self.errors.iter().sum()
    }

    /// Requests that ended one way or another: responses plus transport failures.
    pub fn finished(&self) -> u64 {
        self.responses() + self.error_count() - self.errors[ErrorKind::UnexpectedStatus.index()]
    }

    pub fn merge(&mut self, other: &EndpointStats) {
        // Same bounds everywhere, so adding cannot fail.
        let _ = self.corrected.add(&other.corrected);
        let _ = self.uncorrected.add(&other.uncorrected);
        for &(s, n) in &other.statuses {
            match self.statuses.iter_mut().find(|(st, _)| *st == s) {
                Some((_, m)) => *m += n,
                None => self.statuses.push((s, n)),
            }
        }
        for (a, b) in self.errors.iter_mut().zip(other.errors.iter()) {
            *a += b;
        }
    }
}

/// Point-in-time and peak figures of one client thread for one interval.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gauges {
    pub open_conns: u64,
    pub active_users: u64,
    pub in_flight: u64,
    pub peak_in_flight: u64,
    pub peak_open_conns: u64,
}

impl Gauges {
    /// Sums across client threads (peaks of sums are approximated by sums of peaks).
    pub fn add(&mut self, o: &Gauges) {
        self.open_conns += o.open_conns;
        self.active_users += o.active_users;
        self.in_flight += o.in_flight;
        self.peak_in_flight += o.peak_in_flight;
        self.peak_open_conns += o.peak_open_conns;
    }
}

/// One client thread's figures for one reporting interval.
#[derive(Debug)]
pub struct Snapshot {
    pub thread: usize,
    /// Interval number, counted from the common start time.
    pub index: u64,
    /// Seconds since the start at which this snapshot was cut.
    pub cut_at: f64,
    pub endpoints: Vec<EndpointStats>,
    pub gauges: Gauges,
}

/// Whole-run figures of one client thread, sent once at the end.
#[derive(Debug)]
pub struct ClientTotals {
    pub thread: usize,
    /// Successful connects (including reconnects).
    pub connects: u64,
    /// Failed connect attempts by kind.
    pub connect_errors: [u64; ErrorKind::COUNT],
    /// Requests written.
    pub sent: u64,
    /// Requests still outstanding when the drain period ended.
    pub unfinished: u64,
    /// Open-model requests scheduled before the end but never sent.
    pub not_sent: u64,
    /// Open-model requests that had to wait because every connection was busy.
    pub waited_for_conn: u64,
    /// How late the client thread itself sent requests that had a free connection (ns): the client
    /// falling behind its own schedule, not the server being slow.
    pub client_lag: Histogram<u64>,
}

impl ClientTotals {
    /// Zeroed totals for client thread `thread`.
    pub fn new(thread: usize) -> ClientTotals {
        ClientTotals {
            thread,
            connects: 0,
            connect_errors: [0; ErrorKind::COUNT],
            sent: 0,
            unfinished: 0,
            not_sent: 0,
            waited_for_conn: 0,
            client_lag: new_hist(),
        }
    }
}

/// Client-thread-to-runner messages.
#[derive(Debug)]
pub enum Msg {
    /// Initial connections are up (or failed); waiting for the start signal.
    Ready {
        thread: usize,
        connected: u64,
        asked: u64,
    },
    Interval(Snapshot),
    Done(Box<ClientTotals>),
    /// The client thread could not run at all.
    Failed {
        thread: usize,
        error: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_and_merge() {
        let mut a = EndpointStats::default();
        a.record_response(200, true, 2_000, 1_000);
        a.record_response(500, false, 3_000, 3_000);
        a.record_error(ErrorKind::Reset);
        let mut b = EndpointStats::default();
        b.record_response(200, true, 5_000, 5_000);
        b.record_error(ErrorKind::Timeout);
        a.merge(&b);
        assert_eq!(a.responses(), 3);
        assert_eq!(a.statuses.iter().find(|s| s.0 == 200).unwrap().1, 2);
        assert_eq!(a.error_count(), 3); // 500, reset, timeout
        assert_eq!(a.finished(), 5);
        assert_eq!(a.corrected.max(), a.corrected.highest_equivalent(5_000));
        assert_eq!(a.uncorrected.min(), 1_000);
    }

    #[test]
    fn io_error_kinds() {
        use std::io::{Error, ErrorKind as K};
        let cases = [
            (K::ConnectionRefused, ErrorKind::ConnectRefused),
            (K::ConnectionReset, ErrorKind::Reset),
            (K::BrokenPipe, ErrorKind::Reset),
            (K::TimedOut, ErrorKind::Timeout),
            (K::PermissionDenied, ErrorKind::Other),
        ];
        for (k, want) in cases {
            assert_eq!(ErrorKind::from_io(&Error::from(k)), want, "{k:?}");
        }
        let names: std::collections::HashSet<_> = ErrorKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), ErrorKind::COUNT);
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
    }
}
