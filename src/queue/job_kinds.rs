//! Job kinds: the seed's side jobs (commissions, notifications, analytics) and, behind
//! `--debug-routes`, kinds that let tests sleep, fail and burn CPU on purpose.

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future::BoxedLocal;
use serde_json::{json, Value};

use super::{Priority, QueueRuntime};

/// What a handler gets for one attempt.
pub struct JobInput {
    pub payload: Value,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub runtime: Rc<dyn QueueRuntime>,
}

/// One registered job kind.
pub struct Kind {
    pub name: &'static str,
    /// Class used when the enqueue does not name one.
    pub class: Priority,
    /// Checked at enqueue: a bad payload is refused with 400 before anything is accepted.
    pub validate: fn(&Value) -> Result<(), String>,
    pub run: fn(JobInput) -> BoxedLocal<Result<Value, String>>,
    /// Registered only with `--debug-routes`.
    pub debug: bool,
}

const KINDS: &[Kind] = &[
    Kind {
        name: "commission",
        class: Priority::Medium,
        validate: validate_commission,
        run: run_commission,
        debug: false,
    },
    Kind {
        name: "notification",
        class: Priority::Low,
        validate: validate_notification,
        run: run_notification,
        debug: false,
    },
    Kind {
        name: "analytics",
        class: Priority::Background,
        validate: validate_analytics,
        run: run_analytics,
        debug: false,
    },
    Kind {
        name: "debug.sleep",
        class: Priority::Medium,
        validate: validate_debug_sleep,
        run: run_debug_sleep,
        debug: true,
    },
    Kind {
        name: "debug.fail",
        class: Priority::Medium,
        validate: validate_debug_fail,
        run: run_debug_fail,
        debug: true,
    },
    Kind {
        name: "debug.spin",
        class: Priority::Medium,
        validate: validate_debug_spin,
        run: run_debug_spin,
        debug: true,
    },
];

/// The kind named `name`, if registered (debug kinds only with `debug`).
pub fn find(name: &str, debug: bool) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name && (debug || !k.debug))
}

/// Names of the registered kinds, for error messages.
pub fn names(debug: bool) -> Vec<&'static str> {
    KINDS
        .iter()
        .filter(|k| debug || !k.debug)
        .map(|k| k.name)
        .collect()
}

fn field<'a>(payload: &'a Value, name: &str) -> Result<&'a Value, String> {
    payload
        .get(name)
        .ok_or_else(|| format!("payload.{name} is required"))
}

fn non_empty_str<'a>(payload: &'a Value, name: &str) -> Result<&'a str, String> {
    field(payload, name)?
        .as_str()
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| format!("payload.{name} must be a non-empty string"))
}

fn user_id(payload: &Value) -> Result<(), String> {
    match field(payload, "user_id")? {
        Value::String(s) if !s.is_empty() => Ok(()),
        Value::Number(n) if n.is_u64() => Ok(()),
        _ => Err("payload.user_id must be a non-empty string or a whole number".into()),
    }
}

fn number_in(payload: &Value, name: &str, low: f64, high: f64) -> Result<Option<f64>, String> {
    match payload.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|x| *x > low && *x <= high)
            .map(Some)
            .ok_or_else(|| {
                format!("payload.{name} must be a number above {low} and at most {high}")
            }),
    }
}

fn whole(payload: &Value, name: &str, max: u64) -> Result<u64, String> {
    field(payload, name)?
        .as_u64()
        .filter(|n| *n <= max)
        .ok_or_else(|| format!("payload.{name} must be a whole number from 0 to {max}"))
}

/// Commission rate when the payload gives none (the affiliate programme's 10 %).
const DEFAULT_COMMISSION_RATE: f64 = 0.10;

fn validate_commission(p: &Value) -> Result<(), String> {
    user_id(p)?;
    number_in(p, "amount", 0.0, 1e15)?.ok_or("payload.amount is required")?;
    number_in(p, "rate", 0.0, 1.0)?;
    Ok(())
}

fn run_commission(input: JobInput) -> BoxedLocal<Result<Value, String>> {
    Box::pin(async move {
        let p = &input.payload;
        let amount = number_in(p, "amount", 0.0, 1e15)?.unwrap_or_default();
        let rate = number_in(p, "rate", 0.0, 1.0)?.unwrap_or(DEFAULT_COMMISSION_RATE);
        let commission = (amount * rate * 1e8).round() / 1e8;
        Ok(
            json!({ "user_id": p["user_id"], "amount": amount, "rate": rate, "commission": commission }),
        )
    })
}

const CHANNELS: [&str; 4] = ["email", "sms", "push", "telegram"];
const MAX_MESSAGE_CHARS: usize = 4096;

fn validate_notification(p: &Value) -> Result<(), String> {
    user_id(p)?;
    let channel = non_empty_str(p, "channel")?;
    if !CHANNELS.contains(&channel) {
        return Err(format!(
            "payload.channel must be one of {}",
            CHANNELS.join(", ")
        ));
    }
    if non_empty_str(p, "message")?.chars().count() > MAX_MESSAGE_CHARS {
        return Err(format!(
            "payload.message is longer than {MAX_MESSAGE_CHARS} characters"
        ));
    }
    Ok(())
}

fn run_notification(input: JobInput) -> BoxedLocal<Result<Value, String>> {
    Box::pin(async move {
        let p = &input.payload;
        let characters = non_empty_str(p, "message")?.chars().count();
        Ok(json!({ "user_id": p["user_id"], "channel": p["channel"], "characters": characters }))
    })
}

fn validate_analytics(p: &Value) -> Result<(), String> {
    non_empty_str(p, "event")?;
    match p.get("properties") {
        None | Some(Value::Object(_)) => Ok(()),
        Some(_) => Err("payload.properties must be an object".into()),
    }
}

fn run_analytics(input: JobInput) -> BoxedLocal<Result<Value, String>> {
    Box::pin(async move {
        let p = &input.payload;
        let properties = p
            .get("properties")
            .and_then(Value::as_object)
            .map_or(0, |o| o.len());
        Ok(json!({ "event": p["event"], "properties": properties }))
    })
}

/// Longest sleep and spin the debug kinds accept (ms).
const MAX_DEBUG_MS: u64 = 600_000;

fn validate_debug_sleep(p: &Value) -> Result<(), String> {
    whole(p, "ms", MAX_DEBUG_MS)?;
    match p.get("effect") {
        None | Some(Value::String(_)) => Ok(()),
        Some(_) => Err("payload.effect must be a string".into()),
    }
}

/// Sleeps `ms`, then records the side effect `effect` (if given): a job cancelled at its timeout
/// never records it.
fn run_debug_sleep(input: JobInput) -> BoxedLocal<Result<Value, String>> {
    Box::pin(async move {
        let ms = whole(&input.payload, "ms", MAX_DEBUG_MS)?;
        input.runtime.sleep(Duration::from_millis(ms)).await;
        if let Some(tag) = input.payload.get("effect").and_then(Value::as_str) {
            crate::app::debug::record_effect(tag);
        }
        Ok(json!({ "slept_ms": ms, "attempt": input.attempt }))
    })
}

fn validate_debug_fail(p: &Value) -> Result<(), String> {
    whole(p, "times", 100).map(drop)
}

/// Fails its first `times` attempts, then succeeds.
fn run_debug_fail(input: JobInput) -> BoxedLocal<Result<Value, String>> {
    Box::pin(async move {
        let times = whole(&input.payload, "times", 100)?;
        if u64::from(input.attempt) <= times {
            Err(format!("planned failure {} of {times}", input.attempt))
        } else {
            Ok(json!({ "attempt": input.attempt }))
        }
    })
}

fn validate_debug_spin(p: &Value) -> Result<(), String> {
    whole(p, "ms", MAX_DEBUG_MS).map(drop)
}

/// Burns `ms` of CPU in slices of about 1 ms, yielding between them so the engine can share
/// the core by class.
fn run_debug_spin(input: JobInput) -> BoxedLocal<Result<Value, String>> {
    Box::pin(async move {
        let ms = whole(&input.payload, "ms", MAX_DEBUG_MS)?;
        let mut left = Duration::from_millis(ms);
        while !left.is_zero() {
            let slice = left.min(Duration::from_millis(1));
            let start = Instant::now();
            while start.elapsed() < slice {
                std::hint::spin_loop();
            }
            left -= slice;
            futures_lite::future::yield_now().await;
        }
        Ok(json!({ "spun_ms": ms }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_checks() {
        let cases = [
            (
                "commission",
                json!({"user_id": "u1", "amount": 100.0}),
                true,
            ),
            (
                "commission",
                json!({"user_id": 7, "amount": 100, "rate": 0.05}),
                true,
            ),
            ("commission", json!({"user_id": "u1"}), false),
            ("commission", json!({"user_id": "u1", "amount": -3}), false),
            (
                "commission",
                json!({"user_id": "u1", "amount": 3, "rate": 2}),
                false,
            ),
            ("commission", json!({"amount": 3}), false),
            (
                "notification",
                json!({"user_id": "u", "channel": "sms", "message": "hi"}),
                true,
            ),
            (
                "notification",
                json!({"user_id": "u", "channel": "fax", "message": "hi"}),
                false,
            ),
            (
                "notification",
                json!({"user_id": "u", "channel": "sms", "message": ""}),
                false,
            ),
            ("analytics", json!({"event": "login"}), true),
            (
                "analytics",
                json!({"event": "login", "properties": 3}),
                false,
            ),
            ("analytics", json!({}), false),
            ("debug.sleep", json!({"ms": 10, "effect": "t"}), true),
            ("debug.sleep", json!({"ms": "10"}), false),
            ("debug.fail", json!({"times": 2}), true),
            ("debug.spin", json!({"ms": 700000}), false),
        ];
        for (kind, payload, ok) in cases {
            let kind = find(kind, true).unwrap();
            assert_eq!(
                (kind.validate)(&payload).is_ok(),
                ok,
                "{} {payload}",
                kind.name
            );
        }
        assert!(
            find("debug.sleep", false).is_none(),
            "debug kinds need --debug-routes"
        );
        assert!(find("commission", false).is_some());
    }
}
