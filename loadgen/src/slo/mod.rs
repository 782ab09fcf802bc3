//! Service-level objectives: `--slo p99<5ms,errors<0.1%,rps>1000`.
//!
//! Parsing and evaluation are pure; the runner feeds the merged, coordinated-omission-corrected
//! overall figures in as [`Measured`] and exits non-zero when any objective is missed.

use serde::Serialize;

use crate::units::{fmt_ns, parse_duration};

/// What an objective looks at.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Metric {
    /// A latency quantile in 0..=1 (`p99` is 0.99).
    Quantile(f64),
    Mean,
    Max,
    /// Failed requests over all requests, 0..=1.
    ErrorRate,
    /// Achieved requests per second.
    Rps,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    fn holds(self, observed: f64, threshold: f64) -> bool {
        match self {
            Cmp::Lt => observed < threshold,
            Cmp::Le => observed <= threshold,
            Cmp::Gt => observed > threshold,
            Cmp::Ge => observed >= threshold,
        }
    }
}

/// One parsed objective. Latency thresholds are in nanoseconds, error rates are fractions.
#[derive(Clone, Debug, PartialEq)]
pub struct Objective {
    pub metric: Metric,
    pub cmp: Cmp,
    pub threshold: f64,
    /// The objective as the user wrote it.
    pub text: String,
}

/// The figures objectives are checked against.
pub trait Measured {
    /// Latency at quantile `q`, in nanoseconds.
    fn quantile_ns(&self, q: f64) -> f64;
    fn mean_ns(&self) -> f64;
    fn max_ns(&self) -> f64;
    fn error_rate(&self) -> f64;
    fn rps(&self) -> f64;
}

/// The outcome of one objective.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub objective: String,
    pub met: bool,
    /// The observed figure, printed in the objective's unit.
    pub observed: String,
}

/// Parses a comma-separated list of objectives.
pub fn parse(text: &str) -> Result<Vec<Objective>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        out.push(parse_one(part)?);
    }
    if out.is_empty() {
        return Err("--slo is empty".into());
    }
    Ok(out)
}

fn parse_one(part: &str) -> Result<Objective, String> {
    let ops: [(&str, Cmp); 4] = [
        ("<=", Cmp::Le),
        (">=", Cmp::Ge),
        ("<", Cmp::Lt),
        (">", Cmp::Gt),
    ];
    let (pos, op, cmp) = ops
        .iter()
        .filter_map(|(op, cmp)| part.find(op).map(|p| (p, *op, *cmp)))
        .min_by_key(|(p, op, _)| (*p, usize::MAX - op.len()))
        .ok_or_else(|| format!("objective `{part}` needs <, <=, > or >= (e.g. p99<5ms)"))?;
    let name = part[..pos].trim().to_ascii_lowercase();
    let value = part[pos + op.len()..].trim();
    let metric = match name.as_str() {
        "mean" | "avg" => Metric::Mean,
        "max" => Metric::Max,
        "errors" | "error_rate" | "err" => Metric::ErrorRate,
        "rps" | "throughput" => Metric::Rps,
        p if p.starts_with('p') => {
            let pct: f64 = p[1..].parse().map_err(|_| {
                format!("objective `{part}`: `{name}` is not a percentile like p99.9")
            })?;
            if !(0.0..=100.0).contains(&pct) {
                return Err(format!(
                    "objective `{part}`: percentile must be within 0..100"
                ));
            }
            Metric::Quantile(pct / 100.0)
        }
        _ => {
            return Err(format!(
                "objective `{part}`: unknown metric `{name}` (pNN, mean, max, errors, rps)"
            ))
        }
    };
    let threshold = match metric {
        Metric::Quantile(_) | Metric::Mean | Metric::Max => parse_duration(value)
            .map_err(|e| format!("objective `{part}`: {e}"))?
            .as_nanos() as f64,
        Metric::ErrorRate => match value.strip_suffix('%') {
            Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
            None => value.parse::<f64>(),
        }
        .map_err(|_| format!("objective `{part}`: `{value}` is not a rate like 0.1%"))?,
        Metric::Rps => value
            .parse::<f64>()
            .map_err(|_| format!("objective `{part}`: `{value}` is not a number"))?,
    };
    Ok(Objective {
        metric,
        cmp,
        threshold,
        text: part.to_string(),
    })
}

/// Checks every objective against the measured figures.
pub fn evaluate(objectives: &[Objective], m: &dyn Measured) -> Vec<Verdict> {
    objectives
        .iter()
        .map(|o| {
            let (observed, shown) = match o.metric {
                Metric::Quantile(q) => {
                    let v = m.quantile_ns(q);
                    (v, fmt_ns(v))
                }
                Metric::Mean => {
                    let v = m.mean_ns();
                    (v, fmt_ns(v))
                }
                Metric::Max => {
                    let v = m.max_ns();
                    (v, fmt_ns(v))
                }
                Metric::ErrorRate => {
                    let v = m.error_rate();
                    (v, format!("{:.3}%", v * 100.0))
                }
                Metric::Rps => {
                    let v = m.rps();
                    (v, format!("{v:.1} req/s"))
                }
            };
            Verdict {
                objective: o.text.clone(),
                met: o.cmp.holds(observed, o.threshold),
                observed: shown,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;
    impl Measured for Fixed {
        fn quantile_ns(&self, q: f64) -> f64 {
            // 1 ms at the median, 4 ms at p99, 10 ms beyond.
            if q <= 0.5 {
                1e6
            } else if q <= 0.99 {
                4e6
            } else {
                10e6
            }
        }
        fn mean_ns(&self) -> f64 {
            1.5e6
        }
        fn max_ns(&self) -> f64 {
            20e6
        }
        fn error_rate(&self) -> f64 {
            0.002
        }
        fn rps(&self) -> f64 {
            5000.0
        }
    }

    #[test]
    fn parsing() {
        type Case<'a> = (&'a str, Option<(Metric, Cmp, f64)>);
        let cases: &[Case] = &[
            ("p99<5ms", Some((Metric::Quantile(0.99), Cmp::Lt, 5e6))),
            ("p99.9<=1s", Some((Metric::Quantile(0.999), Cmp::Le, 1e9))),
            ("P50 < 250us", Some((Metric::Quantile(0.5), Cmp::Lt, 250e3))),
            ("errors<0.1%", Some((Metric::ErrorRate, Cmp::Lt, 0.001))),
            ("errors<0.01", Some((Metric::ErrorRate, Cmp::Lt, 0.01))),
            ("mean<2ms", Some((Metric::Mean, Cmp::Lt, 2e6))),
            ("max<100ms", Some((Metric::Max, Cmp::Lt, 100e6))),
            ("rps>=1000", Some((Metric::Rps, Cmp::Ge, 1000.0))),
            ("p99", None),
            ("p101<5ms", None),
            ("latency<5ms", None),
            ("p99<fast", None),
            ("errors<lots", None),
        ];
        for (text, want) in cases {
            let got = parse_one(text).ok().map(|o| (o.metric, o.cmp, o.threshold));
            match (got, want) {
                (Some((m, c, t)), Some((wm, wc, wt))) => {
                    match (m, wm) {
                        (Metric::Quantile(a), Metric::Quantile(b)) => {
                            assert!((a - b).abs() < 1e-12, "{text}")
                        }
                        _ => assert_eq!(m, *wm, "{text}"),
                    }
                    assert_eq!(c, *wc, "{text}");
                    assert!((t - wt).abs() < 1e-6 * wt.max(1.0), "{text}: {t} != {wt}");
                }
                (None, None) => {}
                _ => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
        assert_eq!(parse("p99<5ms, errors<0.1%").unwrap().len(), 2);
        assert!(parse(" , ").is_err());
    }

    #[test]
    fn evaluation() {
        let cases: &[(&str, bool)] = &[
            ("p50<2ms", true),
            ("p99<5ms", true),
            ("p99<3ms", false),
            ("p99.9<5ms", false),
            ("mean<2ms", true),
            ("max<10ms", false),
            ("errors<0.1%", false),
            ("errors<1%", true),
            ("rps>4000", true),
            ("rps>=6000", false),
        ];
        for (text, met) in cases {
            let objs = parse(text).unwrap();
            let v = evaluate(&objs, &Fixed);
            assert_eq!(v[0].met, *met, "{text}: observed {}", v[0].observed);
        }
    }
}
