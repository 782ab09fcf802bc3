//! Every JSON body the API parses, through the same checks its routes run: the job enqueue body
//! (with and without the debug kinds), a replay's options and a new user.
//!
//! Checked on every input: nothing panics, and a refused body gets a 4xx in the error envelope
//! `{"error": {"code", "message"}}` with a non-empty code.
#![no_main]

use coinbit::app::{jobs, users};
use coinbit::http::Response;
use libfuzzer_sys::fuzz_target;

/// The server's default `QUEUE_MAX_PAYLOAD_BYTES`.
const MAX_PAYLOAD_BYTES: usize = 65_536;

fn check_refusal(result: Result<(), Response>) {
    let Err(response) = result else { return };
    let status = response.status.0;
    assert!(
        (400..500).contains(&status),
        "a body was refused with {status}"
    );
    let value: serde_json::Value =
        serde_json::from_slice(&response.body).expect("an error body that is not JSON");
    let code = value["error"]["code"]
        .as_str()
        .expect("an error without a code");
    assert!(!code.is_empty(), "an empty error code");
    assert!(
        value["error"]["message"].is_string(),
        "an error without a message"
    );
}

fuzz_target!(|body: &[u8]| {
    check_refusal(jobs::check_enqueue_body(body, false, MAX_PAYLOAD_BYTES));
    check_refusal(jobs::check_enqueue_body(body, true, MAX_PAYLOAD_BYTES));
    check_refusal(jobs::check_replay_body(body));
    check_refusal(users::check_new_user_body(body));
});
