//! Every JSON body the API parses, through the same checks its routes run: the job enqueue body
//! (with and without the debug kinds), a replay's options and a registration (`POST /api/users`
//! and `POST /api/auth/register`).
//!
//! Checked on every input: nothing panics, and a refused body gets a 4xx in the error envelope
//! `{"error": {"code", "message"}}` with a non-empty code.
#![no_main]

use coinbit::app::{accounts, jobs};
use libfuzzer_sys::fuzz_target;

mod refusal;
use refusal::check_refusal;

/// The server's default `QUEUE_MAX_PAYLOAD_BYTES`.
const MAX_PAYLOAD_BYTES: usize = 65_536;

fuzz_target!(|body: &[u8]| {
    check_refusal(jobs::check_enqueue_body(body, false, MAX_PAYLOAD_BYTES));
    check_refusal(jobs::check_enqueue_body(body, true, MAX_PAYLOAD_BYTES));
    check_refusal(jobs::check_replay_body(body));
    check_refusal(accounts::check_registration_body(body));
});
