//! Load profiles: how many users (closed model) or how many requests per second (open model)
//! are wanted at each moment, and when each open-model request is meant to leave.
//!
//! A [`Profile`] is a piecewise-linear curve over time built from `--stages` (ramps that start
//! at zero, as k6 does) or from a constant target and `--duration`. For the open model the
//! intended send time of request `n` is the moment the area under the rate curve reaches `n`:
//! a fixed schedule that does not care whether earlier responses came back, which is what makes
//! coordinated-omission correction possible. All of this is pure and tested with tables.

use std::time::Duration;

use crate::units::parse_duration;

/// One `--stages` entry: reach `target` linearly over `duration`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stage {
    pub duration: Duration,
    pub target: f64,
}

/// Parses `10s:100,30s:1100,10s:0`.
pub fn parse_stages(text: &str) -> Result<Vec<Stage>, String> {
    let mut stages = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (d, t) = part.split_once(':').ok_or_else(|| {
            format!("stage `{part}` must look like DURATION:TARGET, e.g. 30s:1100")
        })?;
        let duration = parse_duration(d)?;
        let target: f64 = t
            .trim()
            .parse()
            .map_err(|_| format!("stage `{part}`: `{t}` is not a number"))?;
        if !target.is_finite() || target < 0.0 {
            return Err(format!("stage `{part}`: target must be zero or more"));
        }
        stages.push(Stage { duration, target });
    }
    if stages.is_empty() {
        return Err("--stages is empty".into());
    }
    Ok(stages)
}

/// A piecewise-linear load curve: `(seconds since start, value)` break points.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    points: Vec<(f64, f64)>,
    /// Area under the curve at each break point.
    areas: Vec<f64>,
}

impl Profile {
    /// The same value for the whole run.
    pub fn constant(value: f64, duration: Duration) -> Profile {
        Profile::from_points(vec![(0.0, value), (duration.as_secs_f64(), value)])
    }

    /// Ramps starting from zero, as `--stages` describes them.
    pub fn from_stages(stages: &[Stage]) -> Profile {
        let mut points = vec![(0.0, 0.0)];
        let mut t = 0.0;
        for s in stages {
            t += s.duration.as_secs_f64();
            points.push((t, s.target));
        }
        Profile::from_points(points)
    }

    fn from_points(points: Vec<(f64, f64)>) -> Profile {
        let mut areas = vec![0.0];
        for w in points.windows(2) {
            let (t0, v0) = w[0];
            let (t1, v1) = w[1];
            let last = *areas.last().unwrap_or(&0.0);
            areas.push(last + (t1 - t0) * (v0 + v1) / 2.0);
        }
        Profile { points, areas }
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.points.last().map_or(0.0, |p| p.0))
    }

    pub fn peak(&self) -> f64 {
        self.points.iter().map(|p| p.1).fold(0.0, f64::max)
    }

    /// Total area: for a rate profile, the number of requests in the run.
    pub fn total(&self) -> f64 {
        *self.areas.last().unwrap_or(&0.0)
    }

    /// The wanted value at `t` seconds (zero after the end).
    pub fn value_at(&self, t: f64) -> f64 {
        for w in self.points.windows(2) {
            let (t0, v0) = w[0];
            let (t1, v1) = w[1];
            if t >= t0 && t < t1 {
                return v0 + (v1 - v0) * (t - t0) / (t1 - t0);
            }
        }
        0.0
    }

    /// The time in seconds at which the area under the curve reaches `n`, or `None` when the
    /// whole run holds less than that. For a rate curve this is when request `n` (0-based) is
    /// meant to be sent.
    pub fn time_of(&self, n: f64) -> Option<f64> {
        let mut cursor = 0;
        self.time_of_from(n, &mut cursor)
    }

    /// [`Profile::time_of`] for increasing `n`, resuming the segment search at `cursor`.
    pub fn time_of_from(&self, n: f64, cursor: &mut usize) -> Option<f64> {
        while *cursor + 1 < self.points.len() {
            let i = *cursor;
            if n < self.areas[i + 1] {
                let (t0, v0) = self.points[i];
                let (t1, v1) = self.points[i + 1];
                let rest = n - self.areas[i];
                if rest <= 0.0 {
                    return Some(t0);
                }
                // Solve a*x^2 + b*x = rest with a = slope/2, b = v0, in a form that stays
                // accurate when the slope is zero or negative.
                let a = (v1 - v0) / (t1 - t0) / 2.0;
                let b = v0;
                let disc = (b * b + 4.0 * a * rest).max(0.0);
                let denom = b + disc.sqrt();
                let x = if denom > 0.0 { 2.0 * rest / denom } else { 0.0 };
                return Some((t0 + x).min(t1));
            }
            *cursor += 1;
        }
        None
    }
}

/// How many of the `total` users (global index `j`, owned by client thread `j % threads`)
/// client thread `w` runs when `total` are wanted overall.
pub fn users_for_client(total: usize, threads: usize, w: usize) -> usize {
    if total <= w {
        0
    } else {
        (total - w).div_ceil(threads)
    }
}

/// Splits `total` things (connections) over `client threads` as evenly as possible.
pub fn share(total: usize, threads: usize, w: usize) -> usize {
    total / threads + usize::from(w < total % threads)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn stage_parsing() {
        type Case<'a> = (&'a str, Result<Vec<(f64, f64)>, ()>);
        let cases: &[Case] = &[
            (
                "10s:100,30s:1100,10s:0",
                Ok(vec![(10.0, 100.0), (30.0, 1100.0), (10.0, 0.0)]),
            ),
            ("500ms:5", Ok(vec![(0.5, 5.0)])),
            (" 1m:10 , 1s:0 ", Ok(vec![(60.0, 10.0), (1.0, 0.0)])),
            ("", Err(())),
            ("10s", Err(())),
            ("10s:x", Err(())),
            ("10s:-1", Err(())),
            ("abc:10", Err(())),
        ];
        for (text, want) in cases {
            let got = parse_stages(text)
                .map(|v| {
                    v.iter()
                        .map(|s| (s.duration.as_secs_f64(), s.target))
                        .collect::<Vec<_>>()
                })
                .map_err(|_| ());
            assert_eq!(&got, want, "{text}");
        }
    }

    #[test]
    fn constant_rate_schedule() {
        let p = Profile::constant(100.0, secs(2.0));
        assert_eq!(p.total(), 200.0);
        let cases = [
            (0.0, Some(0.0)),
            (1.0, Some(0.01)),
            (150.0, Some(1.5)),
            (200.0, None),
        ];
        for (n, want) in cases {
            let got = p.time_of(n);
            match (got, want) {
                (Some(g), Some(w)) => assert!((g - w).abs() < 1e-9, "n={n}: {g} != {w}"),
                (None, None) => {}
                _ => panic!("n={n}: {got:?} != {want:?}"),
            }
        }
    }

    #[test]
    fn ramp_schedule() {
        // 0 -> 100 req/s over 10 s (500 requests), then 100 for 10 s (1000), then down to 0 (500).
        let stages = parse_stages("10s:100,10s:100,10s:0").unwrap();
        let p = Profile::from_stages(&stages);
        assert_eq!(p.duration(), secs(30.0));
        assert_eq!(p.peak(), 100.0);
        assert!((p.total() - 2000.0).abs() < 1e-9);
        // Area of the ramp up to t is 5 t^2: n = 125 at t = 5.
        let cases = [
            (0.0, 0.0),
            (125.0, 5.0),
            (500.0, 10.0),
            (1000.0, 15.0),
            (1500.0, 20.0),
            // Ramp down: area after 20 s is 100 x - 5 x^2; 375 at x = 5.
            (1875.0, 25.0),
        ];
        for (n, want) in cases {
            let got = p.time_of(n).unwrap();
            assert!((got - want).abs() < 1e-6, "n={n}: {got} != {want}");
        }
        assert_eq!(p.time_of(2000.5), None);
        // A silent first stage: the first request leaves when the rate starts to rise.
        let quiet = Profile::from_stages(&parse_stages("10s:0,10s:100").unwrap());
        assert_eq!(quiet.time_of(0.0), Some(10.0));
        let vals = [
            (0.0, 0.0),
            (5.0, 50.0),
            (15.0, 100.0),
            (25.0, 50.0),
            (31.0, 0.0),
        ];
        for (t, want) in vals {
            assert!((p.value_at(t) - want).abs() < 1e-9, "t={t}");
        }
    }

    #[test]
    fn cursor_search_matches_fresh_search() {
        let p = Profile::from_stages(&parse_stages("1s:50,2s:200,1s:10").unwrap());
        let mut cursor = 0;
        let mut last = 0.0;
        for n in 0..(p.total() as usize) {
            let a = p.time_of(n as f64).unwrap();
            let b = p.time_of_from(n as f64, &mut cursor).unwrap();
            assert!((a - b).abs() < 1e-12);
            assert!(b >= last, "schedule must not go back in time");
            last = b;
        }
    }

    #[test]
    fn splitting_users_and_connections() {
        // (total, client threads) -> per-thread counts
        let cases: &[(usize, usize, &[usize])] = &[
            (10, 3, &[4, 3, 3]),
            (2, 3, &[1, 1, 0]),
            (0, 2, &[0, 0]),
            (1100, 2, &[550, 550]),
        ];
        for (total, threads, want) in cases {
            let users: Vec<_> = (0..*threads)
                .map(|w| users_for_client(*total, *threads, w))
                .collect();
            let conns: Vec<_> = (0..*threads).map(|w| share(*total, *threads, w)).collect();
            assert_eq!(&users, want, "users {total}/{threads}");
            assert_eq!(&conns, want, "share {total}/{threads}");
        }
    }
}

/// Closed-model think time between a response and the user's next request: fixed or uniform in
/// a range (`--think 200ms` or `--think 100ms..300ms`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Think {
    pub min: Duration,
    pub max: Duration,
}

impl Think {
    pub fn parse(text: &str) -> Result<Think, String> {
        let (a, b) = match text.split_once("..") {
            Some((a, b)) => (parse_duration(a)?, parse_duration(b)?),
            None => {
                let d = parse_duration(text)?;
                (d, d)
            }
        };
        if b < a {
            return Err(format!("--think {text}: the range goes backwards"));
        }
        Ok(Think { min: a, max: b })
    }

    pub fn is_zero(&self) -> bool {
        self.max.is_zero()
    }

    pub fn sample(&self, rng: &mut fastrand::Rng) -> Duration {
        if self.min == self.max {
            return self.min;
        }
        let lo = self.min.as_nanos() as u64;
        let hi = self.max.as_nanos() as u64;
        Duration::from_nanos(rng.u64(lo..=hi))
    }
}

#[cfg(test)]
mod think_tests {
    use super::*;

    #[test]
    fn think_parsing_and_sampling() {
        let ms = Duration::from_millis;
        let cases: &[(&str, Option<(Duration, Duration)>)] = &[
            ("0", Some((ms(0), ms(0)))),
            ("200ms", Some((ms(200), ms(200)))),
            ("100ms..300ms", Some((ms(100), ms(300)))),
            ("1s..2s", Some((ms(1000), ms(2000)))),
            ("300ms..100ms", None),
            ("soon", None),
        ];
        for (text, want) in cases {
            let got = Think::parse(text).ok().map(|t| (t.min, t.max));
            assert_eq!(&got, want, "{text}");
        }
        let t = Think::parse("100ms..300ms").unwrap();
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..1000 {
            let d = t.sample(&mut rng);
            assert!(d >= ms(100) && d <= ms(300));
        }
        assert!(Think::parse("0ms").unwrap().is_zero());
    }
}
