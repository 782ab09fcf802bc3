//! One function per production endpoint (the debug ones are in [`super::debug`]). Status bodies
//! come pre-rendered from the monitor's snapshot.

use bytes::Bytes;

use crate::http::{clip_parser_message, Reply, Response, StatusCode};
use crate::monitor::{HealthStatus, Published};

const HEALTH_JSON: &str = "application/health+json";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The live dashboard: one self-contained page (inline script and SVG, nothing fetched from
/// elsewhere) that polls the status endpoints.
const DASHBOARD_HTML: &str = include_str!("../monitor/dashboard.html");

/// `GET /health`: 200 for pass and warn, 503 for fail (RFC draft health+json semantics).
pub fn health(published: &Published) -> Response {
    let status = match published.health_status {
        HealthStatus::Fail => StatusCode::SERVICE_UNAVAILABLE,
        HealthStatus::Pass | HealthStatus::Warn => StatusCode::OK,
    };
    Response::new(status, HEALTH_JSON, published.health.clone())
}

/// `GET /livez`: the shard's event loop answers.
pub fn livez() -> Response {
    Response::new(
        StatusCode::OK,
        HEALTH_JSON,
        Bytes::from_static(br#"{"status":"pass"}"#),
    )
}

/// `GET /readyz`: whether a balancer should send this process traffic: 200 while it serves
/// (this shard answers), 503 once it drains or is leaving. The database's state and the health
/// grade are `/health`'s: a database failover must not pull every instance out at once.
pub fn readyz(draining: bool) -> Response {
    if draining {
        Response::new(
            StatusCode::SERVICE_UNAVAILABLE,
            HEALTH_JSON,
            Bytes::from_static(br#"{"status":"fail","output":"shutting down"}"#),
        )
    } else {
        Response::new(
            StatusCode::OK,
            HEALTH_JSON,
            Bytes::from_static(br#"{"status":"pass"}"#),
        )
    }
}

pub fn json_snapshot(body: Bytes) -> Response {
    Response::json(StatusCode::OK, body)
}

pub fn prometheus(body: Bytes) -> Response {
    Response::new(StatusCode::OK, PROMETHEUS_TEXT, body)
}

/// `GET /dashboard`.
pub fn dashboard() -> Response {
    Response::new(
        StatusCode::OK,
        "text/html; charset=utf-8",
        Bytes::from_static(DASHBOARD_HTML.as_bytes()),
    )
}

/// Deepest nesting of `[` and `{` a JSON request body may have. A deeper body is refused before
/// any parser recurses into it: a parse recurses once per level, and on may's coroutine stacks
/// (128 KiB) a debug build overflowed at about 70 levels.
pub const MAX_JSON_DEPTH: usize = 32;

/// Why a JSON request body was refused.
#[derive(Debug, PartialEq)]
pub enum JsonBodyError {
    /// Nested deeper than [`MAX_JSON_DEPTH`].
    TooDeep,
    /// Not JSON, or not the shape the route expects; the parser's message.
    Invalid(String),
}

impl JsonBodyError {
    /// The 400 answer; `invalid_code` is the route's code for a body it cannot use.
    pub fn response(&self, invalid_code: &str, expected: &str) -> Response {
        match self {
            JsonBodyError::TooDeep => Response::error(
                StatusCode::BAD_REQUEST,
                "json_too_deep",
                &format!("the JSON body nests deeper than {MAX_JSON_DEPTH} levels"),
            ),
            JsonBodyError::Invalid(reason) => Response::error(
                StatusCode::BAD_REQUEST,
                invalid_code,
                &format!("{expected}: {reason}"),
            ),
        }
    }
}

/// Parses a JSON request body: every route that reads a JSON body goes through here, so the
/// nesting limit holds for all of them. Duplicate keys are refused by the body types (serde's
/// derived structs) and, inside free-form values, by [`strict_json`].
pub fn parse_json_body<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, JsonBodyError> {
    if nests_deeper_than(body, MAX_JSON_DEPTH) {
        return Err(JsonBodyError::TooDeep);
    }
    serde_json::from_slice(body)
        .map_err(|e| JsonBodyError::Invalid(clip_parser_message(&e.to_string())))
}

/// Parses a handler's JSON form: the body as `T`, or the 400 `bad_json` answer that says what
/// was `expected` (`json_too_deep` past the nesting limit).
pub fn parse_form<'a, T: serde::Deserialize<'a>>(
    body: &'a [u8],
    expected: &str,
) -> Result<T, Reply> {
    parse_json_body(body).map_err(|e| e.response("bad_json", expected).into())
}

/// Whether `[` and `{` outside strings nest deeper than `limit`: a byte scan, no recursion.
/// Malformed input is left to the parser.
fn nests_deeper_than(body: &[u8], limit: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in body {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// `deserialize_with` for a free-form JSON value (a job's payload): like `serde_json::Value`, but
/// a key twice in one object is an error at any depth instead of the last one winning.
pub fn strict_json<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<serde_json::Value, D::Error> {
    deserializer.deserialize_any(StrictJson)
}

struct StrictJson;

/// One nested value of a [`StrictJson`].
struct StrictElement(serde_json::Value);

impl<'de> serde::Deserialize<'de> for StrictElement {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        strict_json(deserializer).map(StrictElement)
    }
}

impl<'de> serde::de::Visitor<'de> for StrictJson {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<serde_json::Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E>(self, v: i64) -> Result<serde_json::Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<serde_json::Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<serde_json::Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into))
    }
    fn visit_str<E>(self, v: &str) -> Result<serde_json::Value, E> {
        Ok(v.into())
    }
    fn visit_string<E>(self, v: String) -> Result<serde_json::Value, E> {
        Ok(v.into())
    }
    fn visit_unit<E>(self) -> Result<serde_json::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_none<E>(self) -> Result<serde_json::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> Result<serde_json::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictElement(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(items.into())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> Result<serde_json::Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "duplicate key {key:.64?} in an object"
                )));
            }
            let StrictElement(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(object.into())
    }
}

/// Whether a NUL character is in any string or key of `value` (PostgreSQL's text and jsonb
/// refuse it). Walks with a stack of its own, no recursion.
pub fn contains_nul(value: &serde_json::Value) -> bool {
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        match value {
            serde_json::Value::String(s) if s.contains('\0') => return true,
            serde_json::Value::Array(items) => stack.extend(items),
            serde_json::Value::Object(object) => {
                if object.keys().any(|k| k.contains('\0')) {
                    return true;
                }
                stack.extend(object.values());
            }
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_counted_outside_strings_only() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(!nests_deeper_than(deep(32).as_bytes(), 32));
        assert!(nests_deeper_than(deep(33).as_bytes(), 32));
        // Brackets inside strings, escaped quotes included, do not count.
        let quoted = format!(r#"{{"a": "{}\"{}"}}"#, "[".repeat(40), "{".repeat(40));
        assert!(!nests_deeper_than(quoted.as_bytes(), 2));
        assert!(nests_deeper_than(br#"{"a": "\\", "b": [[1]]}"#, 2));
        assert_eq!(
            parse_json_body::<serde_json::Value>(deep(33).as_bytes()),
            Err(JsonBodyError::TooDeep)
        );
    }

    #[test]
    fn a_form_that_does_not_parse_answers_400_with_what_was_expected() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        struct Form {
            code: String,
        }
        let answer = |body: &[u8]| match parse_form::<Form>(body, "expected {\"code\"}") {
            Err(Reply::Ready(response)) => (
                response.status,
                String::from_utf8(response.body.to_vec()).unwrap(),
            ),
            Err(Reply::Later(_)) => panic!("a refusal is answered at once"),
            Ok(form) => panic!("parsed: {form:?}"),
        };
        let (status, body) = answer(br#"{"code": 1}"#);
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body,
            r#"{"error":{"code":"bad_json","message":"expected {\"code\"}: invalid type: integer `1`, expected a string at line 1 column 10"}}"#
        );
        let deep = format!("{}{}", "[".repeat(33), "]".repeat(33));
        let (status, body) = answer(deep.as_bytes());
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains(r#""code":"json_too_deep""#), "{body}");
        assert_eq!(
            parse_form::<Form>(br#"{"code": "A"}"#, "")
                .map(|f| f.code)
                .ok(),
            Some("A".to_string())
        );
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        #[derive(serde::Deserialize, Debug)]
        struct Body {
            #[serde(deserialize_with = "strict_json")]
            payload: serde_json::Value,
        }
        let ok: Body =
            serde_json::from_str(r#"{"payload": {"a": [{"b": 1}, {"b": 2}], "n": 1.5}}"#).unwrap();
        assert_eq!(ok.payload["a"][1]["b"], 2);
        assert_eq!(ok.payload["n"], 1.5);
        for twice in [
            r#"{"payload": {"a": 1, "a": 2}}"#,
            r#"{"payload": [{"x": {"b": 1, "b": 1}}]}"#,
        ] {
            let error = serde_json::from_str::<Body>(twice).unwrap_err();
            assert!(error.to_string().contains("duplicate key"), "{error}");
        }
    }

    #[test]
    fn nul_is_found_in_strings_and_keys() {
        assert!(!contains_nul(&serde_json::json!({"a": ["b", 1]})));
        assert!(contains_nul(&serde_json::json!({"a": ["b\u{0}"]})));
        assert!(contains_nul(&serde_json::json!([{"k\u{0}": 1}])));
    }
}
