//! The Prometheus text format (version 0.0.4), written once for every family of `/metrics`:
//! HELP and TYPE once per family, then its samples, label values escaped.
//!
//! The renderer, the queues and the database tier each add their families to one
//! [`PromWriter`]; none of them writes a `#` line or a brace itself.

use std::fmt::{self, Display, Write as _};

use hdrhistogram::Histogram;

/// The TYPE of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample's labels: name and value, in the order they are written.
pub type Labels<'a> = &'a [(&'a str, &'a dyn Display)];

/// The text of `/metrics`, family by family.
pub struct PromWriter {
    out: String,
    /// The family whose samples are being written.
    family: &'static str,
    /// Families written so far: a name may open one family only.
    written: Vec<&'static str>,
}

impl PromWriter {
    pub fn with_capacity(bytes: usize) -> Self {
        PromWriter {
            out: String::with_capacity(bytes),
            family: "",
            written: Vec::new(),
        }
    }

    /// Opens a family: writes its HELP and TYPE lines; the samples that follow belong to it.
    pub fn family(&mut self, name: &'static str, kind: Kind, help: &str) {
        debug_assert!(!self.written.contains(&name), "family {name} written twice");
        self.written.push(name);
        self.family = name;
        let _ = writeln!(
            self.out,
            "# HELP {name} {help}\n# TYPE {name} {}",
            kind.as_str()
        );
    }

    /// One sample of the open family.
    pub fn sample(&mut self, labels: Labels<'_>, value: impl Display) {
        self.sample_of("", labels, value);
    }

    /// A histogram of the open family, a `Histogram` of microseconds: cumulative buckets at
    /// `bounds` (seconds), `+Inf`, the sum (seconds, given: a histogram rounds its values) and
    /// the count, each with `labels` first.
    pub fn histogram(
        &mut self,
        labels: Labels<'_>,
        bounds: &[f64],
        micros: &Histogram<u64>,
        sum_seconds: f64,
    ) {
        let mut with_le: Vec<(&str, &dyn Display)> = labels.to_vec();
        with_le.push(("le", &""));
        for le in bounds {
            let count = if micros.is_empty() {
                0
            } else {
                micros.count_between(0, (le * 1e6) as u64)
            };
            *with_le.last_mut().expect("le pushed") = ("le", le);
            self.sample_of("_bucket", &with_le, count);
        }
        *with_le.last_mut().expect("le pushed") = ("le", &"+Inf");
        self.sample_of("_bucket", &with_le, micros.len());
        self.sample_of("_sum", labels, sum_seconds);
        self.sample_of("_count", labels, micros.len());
    }

    /// The text written.
    pub fn finish(self) -> String {
        self.out
    }

    fn sample_of(&mut self, suffix: &str, labels: Labels<'_>, value: impl Display) {
        let _ = write!(self.out, "{}{suffix}", self.family);
        for (i, (name, label)) in labels.iter().enumerate() {
            let open = if i == 0 { "{" } else { "," };
            let _ = write!(self.out, "{open}{name}=\"");
            let _ = write!(Escaped(&mut self.out), "{label}");
            self.out.push('"');
        }
        if !labels.is_empty() {
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// Writes a label value as the text format wants it: backslash, double quote and line feed
/// escaped.
struct Escaped<'a>(&'a mut String);

impl fmt::Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '\\' => self.0.push_str("\\\\"),
                '"' => self.0.push_str("\\\""),
                '\n' => self.0.push_str("\\n"),
                c => self.0.push(c),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_help_type_labels_and_escapes_label_values() {
        let mut w = PromWriter::with_capacity(256);
        w.family("up", Kind::Gauge, "1 while up.");
        w.sample(&[], 1);
        w.family("hits_total", Kind::Counter, "Hits.");
        w.sample(&[("shard", &0), ("route", &"a\"b\\c\nd")], 2.5);
        assert_eq!(
            w.finish(),
            "# HELP up 1 while up.\n# TYPE up gauge\nup 1\n\
             # HELP hits_total Hits.\n# TYPE hits_total counter\n\
             hits_total{shard=\"0\",route=\"a\\\"b\\\\c\\nd\"} 2.5\n"
        );
    }

    #[test]
    fn a_histogram_has_cumulative_buckets_inf_sum_and_count() {
        let mut h = crate::metrics::latency_histogram();
        h.record(1_000).unwrap();
        h.record(300_000).unwrap();
        let mut w = PromWriter::with_capacity(256);
        w.family("wait_seconds", Kind::Histogram, "Wait.");
        w.histogram(&[("class", &"high")], &[0.01, 1.0], &h, 0.301);
        let text = w.finish();
        let samples: Vec<&str> = text.lines().skip(2).collect();
        assert_eq!(
            samples,
            [
                "wait_seconds_bucket{class=\"high\",le=\"0.01\"} 1",
                "wait_seconds_bucket{class=\"high\",le=\"1\"} 2",
                "wait_seconds_bucket{class=\"high\",le=\"+Inf\"} 2",
                "wait_seconds_sum{class=\"high\"} 0.301",
                "wait_seconds_count{class=\"high\"} 2",
            ]
        );
    }

    #[test]
    #[should_panic(expected = "written twice")]
    fn a_family_opens_once() {
        let mut w = PromWriter::with_capacity(64);
        w.family("up", Kind::Gauge, "Up.");
        w.family("up", Kind::Gauge, "Up.");
    }
}
