//! What to send: a weighted set of endpoints, each a request template with an expected status.
//!
//! A scenario comes from a built-in mix (`builtin:coinbitclub`, the default), from a file
//! (TOML or JSON, see [`file`]), or from the target URL's path (`loadgen http://host:port/x`
//! sends `GET /x` alone, as wrk does). Each endpoint compiles once into a [`RequestBuilder`]
//! that writes wire bytes straight into a connection's buffer; endpoints without variables are
//! pre-rendered and cost one copy per request.

pub mod builtin;
pub mod file;
pub mod template;

use std::path::Path;

pub use template::{Ctx, Template};

/// One kind of request in the mix.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Report name: letters, digits, `_`, `-` and `.` only (it names `.hgrm` files and log tags).
    pub name: String,
    pub method: String,
    /// The path template as written.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    pub weight: u32,
    /// Accepted statuses; empty means any 2xx.
    pub expect: Vec<u16>,
}

impl Endpoint {
    pub fn expects(&self, status: u16) -> bool {
        if self.expect.is_empty() {
            (200..300).contains(&status)
        } else {
            self.expect.contains(&status)
        }
    }
}

/// A weighted set of endpoints.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    /// Upper bound of `{{user_id}}`.
    pub user_ids: u64,
    /// Each virtual user logs in before the run and sends its credentials ([`crate::login`]).
    pub login: Option<crate::login::LoginSpec>,
    cumulative: Vec<u64>,
}

impl Scenario {
    pub fn new(name: String, endpoints: Vec<Endpoint>, user_ids: u64) -> Result<Scenario, String> {
        if endpoints.is_empty() {
            return Err(format!("scenario `{name}` has no requests"));
        }
        let mut cumulative = Vec::with_capacity(endpoints.len());
        let mut sum = 0u64;
        for (i, e) in endpoints.iter().enumerate() {
            if e.weight == 0 {
                return Err(format!("request `{}`: weight must be at least 1", e.name));
            }
            if endpoints[..i].iter().any(|o| o.name == e.name) {
                return Err(format!(
                    "two requests are named `{}`; give them distinct names",
                    e.name
                ));
            }
            if e.name == "all" {
                return Err("`all` is reserved for the overall figures".into());
            }
            if !e.path.starts_with('/') {
                return Err(format!("request `{}`: path must start with `/`", e.name));
            }
            if e.method.is_empty() || !e.method.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(format!(
                    "request `{}`: method `{}` is not valid",
                    e.name, e.method
                ));
            }
            sum += u64::from(e.weight);
            cumulative.push(sum);
        }
        Ok(Scenario {
            name,
            endpoints,
            user_ids,
            login: None,
            cumulative,
        })
    }

    /// A built-in mix by name (`coinbitclub`, `health`, `probes`, `money`).
    pub fn builtin(name: &str) -> Result<Scenario, String> {
        if let Some((_, text)) = builtin::FILES.iter().find(|(n, _)| *n == name) {
            return Scenario::from_text(text, false, &format!("builtin:{name}"));
        }
        let (_, calls) = builtin::MIXES
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| {
                let names: Vec<_> = builtin::MIXES
                    .iter()
                    .map(|(n, _)| n)
                    .chain(builtin::FILES.iter().map(|(n, _)| n))
                    .map(|n| format!("builtin:{n}"))
                    .collect();
                format!("no built-in scenario `{name}` (have {})", names.join(", "))
            })?;
        let endpoints = calls
            .iter()
            .map(|c| Endpoint {
                name: c.name.into(),
                method: c.method.into(),
                path: c.path.into(),
                headers: c
                    .body
                    .map(|_| vec![("Content-Type".to_string(), "application/json".to_string())])
                    .unwrap_or_default(),
                body: c.body.map(str::to_string),
                weight: c.weight,
                expect: vec![c.expect],
            })
            .collect();
        Scenario::new(format!("builtin:{name}"), endpoints, 10_000)
    }

    /// `GET path` alone, for `loadgen http://host:port/path`.
    pub fn single_get(path: &str) -> Scenario {
        let ep = Endpoint {
            name: sanitize_name(&format!("GET {path}")),
            method: "GET".into(),
            path: path.into(),
            headers: Vec::new(),
            body: None,
            weight: 1,
            expect: Vec::new(),
        };
        Scenario {
            name: format!("GET {path}"),
            endpoints: vec![ep],
            user_ids: 10_000,
            login: None,
            cumulative: vec![1],
        }
    }

    /// Loads `builtin:NAME` or a TOML/JSON file.
    pub fn load(spec: &str) -> Result<Scenario, String> {
        if let Some(name) = spec.strip_prefix("builtin:") {
            return Scenario::builtin(name);
        }
        let path = Path::new(spec);
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {spec}: {e}"))?;
        let json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        Scenario::from_text(&text, json, spec)
    }

    /// Builds a scenario from file text; `origin` names it in messages.
    pub fn from_text(text: &str, json: bool, origin: &str) -> Result<Scenario, String> {
        let f = file::parse(text, json).map_err(|e| format!("{origin}: {e}"))?;
        let mut endpoints = Vec::new();
        for r in f.requests {
            let method = r
                .method
                .unwrap_or_else(|| "GET".into())
                .to_ascii_uppercase();
            let name = sanitize_name(&r.name.unwrap_or_else(|| format!("{method} {}", r.path)));
            let mut headers: Vec<(String, String)> = f.headers.clone().into_iter().collect();
            for (k, v) in r.headers {
                headers.retain(|(hk, _)| !hk.eq_ignore_ascii_case(&k));
                headers.push((k, v));
            }
            endpoints.push(Endpoint {
                name,
                method,
                path: r.path,
                headers,
                body: r.body,
                weight: r.weight.unwrap_or(1),
                expect: r.expect.map(file::Expect::into_vec).unwrap_or_default(),
            });
        }
        let name = f.name.unwrap_or_else(|| origin.to_string());
        let mut sc = Scenario::new(name, endpoints, f.user_ids.unwrap_or(10_000))
            .map_err(|e| format!("{origin}: {e}"))?;
        if let Some(login) = f.login {
            login.validate().map_err(|e| format!("{origin}: {e}"))?;
            sc.login = Some(login);
        }
        // Compile every template now so a typo stops the run before it starts.
        for e in &sc.endpoints {
            RequestBuilder::new(e, "check", &[]).map_err(|err| format!("{origin}: {err}"))?;
        }
        Ok(sc)
    }

    /// Picks an endpoint index by weight.
    pub fn pick(&self, rng: &mut fastrand::Rng) -> usize {
        if self.cumulative.len() == 1 {
            return 0;
        }
        let total = *self.cumulative.last().unwrap_or(&1);
        let r = rng.u64(..total);
        self.cumulative.partition_point(|&c| c <= r)
    }
}

/// Keeps letters, digits, `_`, `-`, `.`; everything else becomes `_` (runs collapsed).
pub fn sanitize_name(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        let ok = c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.';
        if ok {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    let trimmed = out.trim_matches('_').to_string();
    if trimmed.is_empty() {
        "request".into()
    } else {
        trimmed
    }
}

/// The wire form of one endpoint's request for one target.
#[derive(Clone, Debug)]
pub enum RequestBuilder {
    /// No variables anywhere: the bytes are the same every time.
    Static(Vec<u8>),
    Dynamic {
        /// `METHOD `
        start: Vec<u8>,
        path: Template,
        /// ` HTTP/1.1\r\nHost: ..\r\n` and the static headers.
        fixed: Vec<u8>,
        headers: Vec<(Vec<u8>, Template)>,
        body: Option<Template>,
    },
}

impl RequestBuilder {
    /// Compiles `ep` for `host` with `extra` headers added to every request.
    pub fn new(
        ep: &Endpoint,
        host: &str,
        extra: &[(String, String)],
    ) -> Result<RequestBuilder, String> {
        let path = Template::parse(&ep.path).map_err(|e| format!("request `{}`: {e}", ep.name))?;
        let body = match &ep.body {
            Some(b) => Some(Template::parse(b).map_err(|e| format!("request `{}`: {e}", ep.name))?),
            None => None,
        };
        let mut fixed = format!(" HTTP/1.1\r\nHost: {host}\r\n").into_bytes();
        let mut headers = Vec::new();
        let all = ep.headers.iter().chain(
            extra
                .iter()
                .filter(|(k, _)| !ep.headers.iter().any(|(ek, _)| ek.eq_ignore_ascii_case(k))),
        );
        for (k, v) in all {
            if k.eq_ignore_ascii_case("host") || k.eq_ignore_ascii_case("content-length") {
                continue;
            }
            let t = Template::parse(v)
                .map_err(|e| format!("request `{}`: header {k}: {e}", ep.name))?;
            if t.is_static() {
                fixed.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
            } else {
                headers.push((format!("{k}: ").into_bytes(), t));
            }
        }
        let start = format!("{} ", ep.method).into_bytes();
        let dynamic = !path.is_static()
            || !headers.is_empty()
            || body.as_ref().is_some_and(|b| !b.is_static());
        let b = RequestBuilder::Dynamic {
            start,
            path,
            fixed,
            headers,
            body,
        };
        if dynamic {
            return Ok(b);
        }
        // Render once; the context is never read for static templates.
        let mut rng = fastrand::Rng::with_seed(0);
        let mut ctx = Ctx {
            rng: &mut rng,
            user_ids: 1,
            vu: 0,
            seq: 0,
        };
        let mut bytes = Vec::new();
        b.write(&mut ctx, &mut bytes, &mut Vec::new());
        Ok(RequestBuilder::Static(bytes))
    }

    /// Appends one request to `out`; `scratch` holds a dynamic body while its length is counted.
    pub fn write(&self, ctx: &mut Ctx<'_>, out: &mut Vec<u8>, scratch: &mut Vec<u8>) {
        match self {
            RequestBuilder::Static(b) => out.extend_from_slice(b),
            RequestBuilder::Dynamic {
                start,
                path,
                fixed,
                headers,
                body,
            } => {
                out.extend_from_slice(start);
                path.render(ctx, out);
                out.extend_from_slice(fixed);
                for (name, t) in headers {
                    out.extend_from_slice(name);
                    t.render(ctx, out);
                    out.extend_from_slice(b"\r\n");
                }
                match body {
                    Some(t) => {
                        scratch.clear();
                        t.render(ctx, scratch);
                        out.extend_from_slice(
                            format!("Content-Length: {}\r\n\r\n", scratch.len()).as_bytes(),
                        );
                        out.extend_from_slice(scratch);
                    }
                    None => out.extend_from_slice(b"\r\n"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(ep: &Endpoint, seed: u64) -> String {
        let b =
            RequestBuilder::new(ep, "127.0.0.1:3000", &[("X-Run".into(), "t1".into())]).unwrap();
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut ctx = Ctx {
            rng: &mut rng,
            user_ids: 9,
            vu: 3,
            seq: 11,
        };
        let mut out = Vec::new();
        b.write(&mut ctx, &mut out, &mut Vec::new());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn builtin_mix_is_valid_and_static_where_it_can_be() {
        for (name, _) in builtin::MIXES {
            let sc = Scenario::builtin(name).unwrap();
            for e in &sc.endpoints {
                let b = RequestBuilder::new(e, "h", &[]).unwrap();
                // Only endpoints with variables (the users calls) are rendered per request.
                let has_vars =
                    e.path.contains("{{") || e.body.as_ref().is_some_and(|b| b.contains("{{"));
                assert_eq!(
                    !matches!(b, RequestBuilder::Static(_)),
                    has_vars,
                    "{}",
                    e.name
                );
            }
        }
        assert!(Scenario::builtin("nope").is_err());
    }

    #[test]
    fn builtin_trading_links_exchange_accounts_and_sends_fresh_signals() {
        let sc = Scenario::builtin("trading").unwrap();
        assert_eq!(sc.name, "builtin:trading");
        let login = sc
            .login
            .as_ref()
            .expect("builtin:trading logs its users in");
        let account = login.exchange_account.as_ref().expect("and links accounts");
        assert_eq!(account.api_key_of(7, "r1"), "loadgen-r1-7");
        let signal = sc.endpoints.iter().find(|e| e.name == "signal").unwrap();
        assert_eq!(signal.method, "POST");
        // Each signal is fresh: sent as it is made, and a new alert (not the same one again).
        let body = signal.body.as_deref().expect("a body");
        assert!(body.contains(r#""time": {{now_ms}}"#), "{body}");
        assert!(body.contains(r#""alert_id": "loadgen-{{uuid}}""#), "{body}");
        assert_eq!(signal.expect, vec![202]);
    }

    #[test]
    fn builtin_money_logs_in_and_keys_its_writes() {
        let sc = Scenario::builtin("money").unwrap();
        assert_eq!(sc.name, "builtin:money");
        let login = sc.login.as_ref().expect("builtin:money logs its users in");
        assert_eq!(login.credentials, crate::login::CredentialKind::Session);
        let posts: Vec<_> = sc.endpoints.iter().filter(|e| e.method == "POST").collect();
        assert_eq!(posts.len(), 3);
        for e in posts {
            let key = e.headers.iter().find(|(k, _)| k == "idempotency-key");
            assert!(key.is_some(), "{} has no Idempotency-Key", e.name);
        }
        let unknown = Scenario::builtin("nope").unwrap_err();
        assert!(unknown.contains("builtin:money"), "{unknown}");
    }

    #[test]
    fn wire_format() {
        let sc = Scenario::builtin("health").unwrap();
        assert_eq!(
            wire(&sc.endpoints[0], 0),
            "GET /health HTTP/1.1\r\nHost: 127.0.0.1:3000\r\nX-Run: t1\r\n\r\n"
        );
        let toml = r#"
            user_ids = 9
            headers = { authorization = "Bearer x" }
            [[requests]]
            name = "order"
            method = "post"
            path = "/api/users/{{user_id}}/orders"
            headers = { content-type = "application/json", x-vu = "{{vu}}" }
            body = '{"seq":{{seq}}}'
            weight = 2
            expect = [200, 201]
        "#;
        let sc = Scenario::from_text(toml, false, "t.toml").unwrap();
        let e = &sc.endpoints[0];
        assert_eq!((e.method.as_str(), e.weight), ("POST", 2));
        assert!(e.expects(201) && !e.expects(204));
        let w = wire(e, 5);
        assert!(w.starts_with("POST /api/users/"), "{w}");
        assert!(w.contains("authorization: Bearer x\r\n"), "{w}");
        assert!(w.contains("x-vu: 3\r\n"), "{w}");
        assert!(w.ends_with("Content-Length: 10\r\n\r\n{\"seq\":11}"), "{w}");
    }

    #[test]
    fn json_and_errors() {
        let json = r#"{"requests":[{"path":"/a","weight":3},{"path":"/b/{{rand:1:2}}"}]}"#;
        let sc = Scenario::from_text(json, true, "t.json").unwrap();
        assert_eq!(sc.endpoints[0].name, "GET_a");
        assert!(sc.endpoints[1].expects(204) && !sc.endpoints[1].expects(404));
        let bad: &[(&str, bool)] = &[
            (r#"{"requests":[]}"#, true),
            (r#"{"requests":[{"path":"a"}]}"#, true),
            (r#"{"requests":[{"path":"/a","weight":0}]}"#, true),
            (r#"{"requests":[{"path":"/a"},{"path":"/a"}]}"#, true),
            (r#"{"requests":[{"path":"/{{bogus}}"}]}"#, true),
            (r#"{"requests":[{"path":"/a","colour":"red"}]}"#, true),
        ];
        for (text, json) in bad {
            assert!(Scenario::from_text(text, *json, "x").is_err(), "{text}");
        }
    }

    #[test]
    fn weighted_pick() {
        let sc = Scenario::builtin("coinbitclub").unwrap();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut counts = vec![0u32; sc.endpoints.len()];
        for _ in 0..100_000 {
            counts[sc.pick(&mut rng)] += 1;
        }
        let total: u32 = sc.endpoints.iter().map(|e| e.weight).sum();
        for (e, c) in sc.endpoints.iter().zip(&counts) {
            let want = 100_000.0 * f64::from(e.weight) / f64::from(total);
            assert!(
                (f64::from(*c) - want).abs() < want * 0.05,
                "{}: {c} vs {want}",
                e.name
            );
        }
    }

    #[test]
    fn names() {
        assert_eq!(
            sanitize_name("GET /api/enterprise/cluster/status"),
            "GET_api_enterprise_cluster_status"
        );
        assert_eq!(sanitize_name("GET /"), "GET");
        assert_eq!(sanitize_name("///"), "request");
    }
}

#[cfg(test)]
mod example_file {
    #[test]
    fn shipped_example_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/example.toml");
        let sc = super::Scenario::load(path).unwrap();
        assert_eq!(sc.endpoints.len(), 4);
        assert!(sc.endpoints[3].expects(503));
    }
}
