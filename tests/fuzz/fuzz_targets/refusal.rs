//! What every body target checks of a refusal (included by the targets with `mod refusal;`).

use coinbit::http::Response;

/// A refused body gets a 4xx in the error envelope `{"error": {"code", "message"}}` with a
/// non-empty code.
pub fn check_refusal(result: Result<(), Response>) {
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
