//! The framing, table by table: what goes out for a request, how the server's bytes come back
//! as answers (whole, or cut anywhere), in order.

use super::*;
use crate::db::wire::testing::*;

#[test]
fn startup_message_names_the_user_and_database() {
    let mut conn: Connection<u32> = Connection::new("replica1", startup(None));
    let out = conn.take_output();
    let len = u32::from_be_bytes(out[0..4].try_into().unwrap()) as usize;
    assert_eq!(len, out.len());
    assert_eq!(u32::from_be_bytes(out[4..8].try_into().unwrap()), 196_608);
    let text = String::from_utf8_lossy(&out[8..]);
    for part in [
        "user\0postgres\0",
        "database\0coinbit\0",
        "application_name\0coinbit-wire\0",
    ] {
        assert!(text.contains(part), "{text:?} lacks {part:?}");
    }
    assert!(!conn.is_ready());
}

#[test]
fn requests_before_ready_wait_for_it() {
    let mut conn: Connection<u32> = Connection::new("replica1", startup(None));
    conn.take_output();
    conn.send(&USER_BY_ID, &[Param::Int8(1)], 1).unwrap();
    assert!(!conn.has_output(), "nothing goes out during authentication");
    let mut done = Vec::new();
    let mut bytes = message(b'R', &0u32.to_be_bytes());
    bytes.extend(ready());
    conn.receive(&bytes, &mut done);
    assert_eq!(tags(&conn.take_output()), "PBES");
}

#[test]
fn a_statement_is_parsed_once_and_requests_pipeline() {
    let mut conn = ready_connection::<u32>();
    for token in 1..=3 {
        conn.send(&USER_BY_ID, &[Param::Int8(token.into())], token)
            .unwrap();
    }
    assert_eq!(tags(&conn.take_output()), "PBESBESBES");
    assert_eq!(conn.pending(), 3);
    let mut bytes = answer(true, &[(1, "ana")]);
    bytes.extend(answer(false, &[]));
    bytes.extend(answer(false, &[(3, "bo")]));
    // Cut anywhere: one byte at a time.
    let mut done = Vec::new();
    for byte in &bytes {
        conn.receive(std::slice::from_ref(byte), &mut done);
    }
    let tokens: Vec<u32> = done.iter().map(|(t, _)| *t).collect();
    assert_eq!(tokens, [1, 2, 3]);
    assert_eq!(ids(&done[0].1), [(1, "ana".to_string())]);
    assert!(ids(&done[1].1).is_empty());
    assert_eq!(ids(&done[2].1), [(3, "bo".to_string())]);
    assert_eq!(conn.pending(), 0);
}

#[test]
fn null_columns_read_as_none() {
    let mut conn = ready_connection::<u32>();
    conn.send(&USER_BY_ID, &[Param::Int8(1)], 1).unwrap();
    let mut bytes = message(b'1', b"");
    bytes.extend(message(b'2', b""));
    bytes.extend(data_row(&[Some(&7i64.to_be_bytes()), None]));
    bytes.extend(message(b'C', b"SELECT 1\0"));
    bytes.extend(ready());
    let mut done = Vec::new();
    conn.receive(&bytes, &mut done);
    let rows = done[0].1.as_ref().unwrap();
    assert_eq!(rows[0].int8(0), Ok(7));
    assert_eq!(rows[0].bytes(1), None);
    assert!(rows[0].text(1).is_err());
}

#[test]
fn an_error_fails_its_request_alone() {
    let mut conn = ready_connection::<u32>();
    conn.send(&USER_BY_ID, &[Param::Int8(1)], 1).unwrap();
    conn.send(&USER_BY_ID, &[Param::Int8(2)], 2).unwrap();
    conn.take_output();
    let mut bytes = message(b'1', b"");
    bytes.extend(error(
        "57014",
        "canceling statement due to statement timeout",
    ));
    bytes.extend(ready());
    bytes.extend(answer(false, &[(2, "bo")]));
    let mut done = Vec::new();
    conn.receive(&bytes, &mut done);
    assert_eq!(
        done[0].1.as_ref().unwrap_err(),
        &DbError::Timeout {
            node: "replica1".into()
        }
    );
    assert_eq!(ids(&done[1].1), [(2, "bo".to_string())]);
    assert!(!conn.is_dead());
}

#[test]
fn a_failed_parse_is_parsed_again() {
    let mut conn = ready_connection::<u32>();
    conn.send(&USER_BY_ID, &[Param::Int8(1)], 1).unwrap();
    conn.take_output();
    let mut bytes = error("42P01", "relation \"users\" does not exist");
    bytes.extend(ready());
    let mut done = Vec::new();
    conn.receive(&bytes, &mut done);
    assert!(matches!(done[0].1, Err(DbError::Query(_))));
    conn.send(&USER_BY_ID, &[Param::Int8(1)], 2).unwrap();
    assert_eq!(tags(&conn.take_output()), "PBES");
}

#[test]
fn a_dead_socket_fails_every_pending_request() {
    let mut conn = ready_connection::<u32>();
    for token in 1..=3 {
        conn.send(&USER_BY_ID, &[Param::Int8(1)], token).unwrap();
    }
    let mut done = Vec::new();
    conn.fail("connection reset".into(), &mut done);
    assert_eq!(done.len(), 3);
    for (_, rows) in &done {
        assert!(rows.as_ref().unwrap_err().is_node_failure());
    }
    let (token, e) = conn.send(&USER_BY_ID, &[Param::Int8(1)], 4).unwrap_err();
    assert_eq!(token, 4);
    assert!(e.is_node_failure());
}

#[test]
fn a_shutdown_fails_the_rest_as_the_node() {
    let mut conn = ready_connection::<u32>();
    conn.send(&USER_BY_ID, &[Param::Int8(1)], 1).unwrap();
    conn.send(&USER_BY_ID, &[Param::Int8(2)], 2).unwrap();
    let mut done = Vec::new();
    conn.receive(
        &error(
            "57P01",
            "terminating connection due to administrator command",
        ),
        &mut done,
    );
    assert!(conn.is_dead());
    assert_eq!(done.len(), 2);
    assert!(done
        .iter()
        .all(|(_, r)| r.as_ref().unwrap_err().is_node_failure()));
}

#[test]
fn garbage_from_the_server_kills_the_connection() {
    let mut conn = ready_connection::<u32>();
    conn.send(&USER_BY_ID, &[Param::Int8(1)], 1).unwrap();
    let mut done = Vec::new();
    // A message the protocol has no use for here: a CopyInResponse.
    conn.receive(&message(b'G', &[0, 0, 0]), &mut done);
    assert!(conn.is_dead());
    assert!(done[0].1.as_ref().unwrap_err().is_node_failure());
}

#[test]
fn md5_and_cleartext_answer_with_the_password() {
    for (request, expected) in [
        (message(b'R', &3u32.to_be_bytes()), "secret\0".to_string()),
        (
            message(b'R', &[0, 0, 0, 5, 1, 2, 3, 4]),
            format!("{}\0", md5_hash(b"postgres", b"secret", [1, 2, 3, 4])),
        ),
    ] {
        let mut conn: Connection<u32> = Connection::new("primary", startup(Some("secret")));
        conn.take_output();
        let mut done = Vec::new();
        conn.receive(&request, &mut done);
        let out = conn.take_output();
        assert_eq!(out[0], b'p');
        assert_eq!(&out[5..], expected.as_bytes());
    }
}

#[test]
fn scram_starts_with_its_first_message() {
    let mut conn: Connection<u32> = Connection::new("primary", startup(Some("secret")));
    conn.take_output();
    let mut body = 10u32.to_be_bytes().to_vec();
    body.extend_from_slice(b"SCRAM-SHA-256\0\0");
    let mut done = Vec::new();
    conn.receive(&message(b'R', &body), &mut done);
    let out = conn.take_output();
    assert_eq!(out[0], b'p');
    assert!(String::from_utf8_lossy(&out).contains("SCRAM-SHA-256\0"));
    assert!(String::from_utf8_lossy(&out).contains("n,,n=,r="));
}

#[test]
fn a_password_request_without_one_or_a_refusal_kills_the_connection() {
    for bytes in [
        message(b'R', &3u32.to_be_bytes()),
        error("28P01", "password authentication failed"),
    ] {
        let mut conn: Connection<u32> = Connection::new("primary", startup(None));
        conn.send(&USER_BY_ID, &[Param::Int8(1)], 1).unwrap();
        let mut done = Vec::new();
        conn.receive(&bytes, &mut done);
        assert!(conn.is_dead());
        assert!(done[0].1.as_ref().unwrap_err().is_node_failure());
    }
}
