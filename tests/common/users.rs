//! The users API as the database tests use it: create a user, and read-your-writes (a read
//! that presents the write's `X-Commit-LSN`).

use super::{Client, Response};

pub fn create_user(client: &mut Client, name: &str, email: &str) -> Response {
    let body = serde_json::json!({ "name": name, "email": email }).to_string();
    client.request(
        "POST",
        "/api/users",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

/// Creates a user, then reads it back presenting the write's `X-Commit-LSN`: the read must be
/// the fresh row, never a stale answer. Returns the user's id.
pub fn write_then_read_own_write(client: &mut Client, name: &str, email: &str) -> i64 {
    let created = create_user(client, name, email);
    assert_eq!(created.status, 201, "{email}: {}", created.text());
    let lsn = created
        .header("X-Commit-LSN")
        .expect("X-Commit-LSN")
        .to_string();
    let id = created.json()["id"].as_i64().unwrap();
    let read = client.request(
        "GET",
        &format!("/api/users/{id}"),
        &[("X-Min-LSN", &lsn)],
        b"",
    );
    assert_eq!(read.status, 200, "{email}: stale read: {}", read.text());
    assert_eq!(read.json()["email"], email, "{email}: the read's row");
    id
}
