//! The HdrHistogram interval log (`latency.hlog`): one line per interval and per series, each a
//! base64 V2+DEFLATE histogram, readable by HdrHistogram's `HistogramLogProcessor`, its plotter
//! and the Rust crate's `IntervalLogIterator`. The untagged series is all endpoints; tagged
//! series are per endpoint (`Tag=health`). Lines are written as intervals complete, so a long
//! run does not hold its histograms in memory.

use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;

pub struct IntervalLog {
    text: String,
    serializer: V2DeflateSerializer,
    buf: Vec<u8>,
}

impl IntervalLog {
    /// Starts a log whose timestamps count from `start`.
    pub fn new(start: SystemTime, comment: &str) -> IntervalLog {
        let secs = start
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs_f64();
        let mut text = String::new();
        for line in comment.lines() {
            let _ = writeln!(text, "#{line}");
        }
        let _ = writeln!(
            text,
            "#[Histograms hold nanoseconds; Interval_Max is in milliseconds]"
        );
        let _ = writeln!(text, "#[StartTime: {secs:.3} (seconds since epoch)]");
        let _ = writeln!(text, "#[BaseTime: {secs:.3} (seconds since epoch)]");
        let _ = writeln!(text, "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"");
        IntervalLog {
            text,
            serializer: V2DeflateSerializer::new(),
            buf: Vec::new(),
        }
    }

    /// Appends one interval histogram; `tag` is a plain name without `,` or whitespace.
    pub fn write(&mut self, h: &Histogram<u64>, start: f64, length: f64, tag: Option<&str>) {
        self.buf.clear();
        if self.serializer.serialize(h, &mut self.buf).is_err() {
            log::warn!("could not serialize an interval histogram; the interval log skips it");
            return;
        }
        if let Some(t) = tag {
            let _ = write!(self.text, "Tag={t},");
        }
        let _ = write!(
            self.text,
            "{start:.3},{length:.3},{:.3},",
            h.max() as f64 / 1e6
        );
        base64::engine::general_purpose::STANDARD.encode_string(&self.buf, &mut self.text);
        self.text.push('\n');
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_hist;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;

    #[test]
    fn parses_back() {
        let mut log = IntervalLog::new(SystemTime::now(), "loadgen test");
        let mut a = new_hist();
        a.record(1_500_000).unwrap();
        a.record(2_500_000).unwrap();
        log.write(&a, 0.0, 1.0, None);
        log.write(&a, 0.0, 1.0, Some("health"));
        log.write(&new_hist(), 1.0, 0.5, None);
        let mut seen = Vec::new();
        for e in IntervalLogIterator::new(log.as_str().as_bytes()) {
            match e.unwrap() {
                LogEntry::Interval(i) => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(i.encoded_histogram())
                        .unwrap();
                    let h: Histogram<u64> = Deserializer::new()
                        .deserialize(&mut bytes.as_slice())
                        .unwrap();
                    seen.push((
                        i.tag().map(|t| t.as_str().to_string()),
                        i.start_timestamp().as_secs_f64(),
                        h.len(),
                        i.max(),
                    ));
                }
                LogEntry::StartTime(_) | LogEntry::BaseTime(_) => {}
            }
        }
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0].0, None);
        assert_eq!(seen[1].0.as_deref(), Some("health"));
        assert_eq!(seen[0].2, 2);
        assert!((seen[0].3 - 2.5).abs() < 0.01);
        assert_eq!(seen[2].1, 1.0);
        assert_eq!(seen[2].2, 0);
    }
}
