//! Request templates: literal text with `{{variable}}` holes, compiled once, rendered per request.
//!
//! Variables:
//! - `{{user_id}}`: a random user id in `1..=user_ids` (scenario setting, default 10,000)
//! - `{{vu}}`: the virtual user (closed model) or connection (open model) sending the request
//! - `{{seq}}`: a per-thread request counter
//! - `{{rand:A:B}}`: a random integer in `A..=B`
//! - `{{choice:a|b|c}}`: one of the listed words, uniformly
//! - `{{uuid}}`: a random version-4 UUID
//! - `{{now_ms}}`: wall-clock milliseconds since the Unix epoch

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug, PartialEq)]
pub enum Var {
    UserId,
    Vu,
    Seq,
    Rand(i64, i64),
    Choice(Vec<String>),
    Uuid,
    NowMs,
}

#[derive(Clone, Debug, PartialEq)]
enum Segment {
    Lit(Vec<u8>),
    Var(Var),
}

/// A compiled template.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    segments: Vec<Segment>,
}

/// What a rendering may draw on.
pub struct Ctx<'a> {
    pub rng: &'a mut fastrand::Rng,
    pub user_ids: u64,
    pub vu: u64,
    pub seq: u64,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut segments = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                segments.push(Segment::Lit(rest.as_bytes()[..open].to_vec()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| format!("unclosed `{{{{` in template `{text}`"))?;
            segments.push(Segment::Var(parse_var(after[..close].trim())?));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Lit(rest.as_bytes().to_vec()));
        }
        Ok(Template { segments })
    }

    /// True when the template has no variables, so it renders the same every time.
    pub fn is_static(&self) -> bool {
        self.segments.iter().all(|s| matches!(s, Segment::Lit(_)))
    }

    pub fn render(&self, ctx: &mut Ctx<'_>, out: &mut Vec<u8>) {
        for seg in &self.segments {
            match seg {
                Segment::Lit(b) => out.extend_from_slice(b),
                Segment::Var(v) => render_var(v, ctx, out),
            }
        }
    }

    /// Renders into a fresh buffer (for static parts and tests).
    pub fn render_to_vec(&self, ctx: &mut Ctx<'_>) -> Vec<u8> {
        let mut v = Vec::new();
        self.render(ctx, &mut v);
        v
    }
}

fn parse_var(spec: &str) -> Result<Var, String> {
    let (name, arg) = match spec.split_once(':') {
        Some((n, a)) => (n.trim(), Some(a)),
        None => (spec, None),
    };
    Ok(match (name, arg) {
        ("user_id", None) => Var::UserId,
        ("vu", None) => Var::Vu,
        ("seq", None) => Var::Seq,
        ("uuid", None) => Var::Uuid,
        ("now_ms", None) => Var::NowMs,
        ("rand", Some(a)) => {
            let (lo, hi) = a
                .split_once(':')
                .ok_or_else(|| format!("`{{{{{spec}}}}}`: use rand:MIN:MAX"))?;
            let lo: i64 = lo
                .trim()
                .parse()
                .map_err(|_| format!("`{{{{{spec}}}}}`: bad MIN"))?;
            let hi: i64 = hi
                .trim()
                .parse()
                .map_err(|_| format!("`{{{{{spec}}}}}`: bad MAX"))?;
            if lo > hi {
                return Err(format!("`{{{{{spec}}}}}`: MIN is above MAX"));
            }
            Var::Rand(lo, hi)
        }
        ("choice", Some(a)) => {
            let items: Vec<String> = a.split('|').map(|s| s.to_string()).collect();
            if items.iter().any(String::is_empty) {
                return Err(format!("`{{{{{spec}}}}}`: empty choice"));
            }
            Var::Choice(items)
        }
        _ => {
            return Err(format!(
                "unknown template variable `{{{{{spec}}}}}` \
                 (user_id, vu, seq, rand:A:B, choice:a|b, uuid, now_ms)"
            ))
        }
    })
}

fn render_var(v: &Var, ctx: &mut Ctx<'_>, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = match v {
        Var::UserId => write!(out, "{}", ctx.rng.u64(1..=ctx.user_ids.max(1))),
        Var::Vu => write!(out, "{}", ctx.vu),
        Var::Seq => write!(out, "{}", ctx.seq),
        Var::Rand(lo, hi) => write!(out, "{}", ctx.rng.i64(*lo..=*hi)),
        Var::Choice(items) => {
            out.extend_from_slice(items[ctx.rng.usize(..items.len())].as_bytes());
            Ok(())
        }
        Var::Uuid => {
            let a = ctx.rng.u128(..);
            let b = (a & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
            let h = format!("{b:032x}");
            write!(
                out,
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            )
        }
        Var::NowMs => {
            let ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            write!(out, "{ms}")
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &str, seed: u64) -> String {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut ctx = Ctx {
            rng: &mut rng,
            user_ids: 100,
            vu: 7,
            seq: 42,
        };
        String::from_utf8(Template::parse(t).unwrap().render_to_vec(&mut ctx)).unwrap()
    }

    #[test]
    fn parse_and_render() {
        assert!(Template::parse("/health").unwrap().is_static());
        assert!(!Template::parse("/u/{{user_id}}").unwrap().is_static());
        assert_eq!(render("/vu/{{vu}}/{{ seq }}", 1), "/vu/7/42");
        for seed in 0..50 {
            let id: u64 = render("{{user_id}}", seed).parse().unwrap();
            assert!((1..=100).contains(&id));
            let r: i64 = render("{{rand:-5:5}}", seed).parse().unwrap();
            assert!((-5..=5).contains(&r));
            let c = render("{{choice:BTCUSDT|ETHUSDT}}", seed);
            assert!(c == "BTCUSDT" || c == "ETHUSDT");
            let u = render("{{uuid}}", seed);
            assert_eq!(u.len(), 36);
            assert_eq!(&u[14..15], "4", "{u}");
            assert!("89ab".contains(&u[19..20]), "{u}");
        }
        assert!(render("{{now_ms}}", 0).parse::<u128>().unwrap() > 1_600_000_000_000);
    }

    #[test]
    fn bad_templates() {
        for t in [
            "{{user_id",
            "{{nope}}",
            "{{rand:5}}",
            "{{rand:9:1}}",
            "{{choice:a||b}}",
        ] {
            assert!(Template::parse(t).is_err(), "{t}");
        }
    }
}
