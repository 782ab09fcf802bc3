//! A batch through a connection's framing: one `= ANY($1)` out, its rows back to the reads they
//! answer (in whatever order the server sends them), a missing key answered with no row, and a
//! failure that fails only what it should.

use postgres_protocol::types;

use super::*;
use crate::db::wire::conn::{Connection, Param, INT8, INT8_ARRAY};
use crate::db::wire::testing::*;
use crate::db::DbError;

static USERS: KeyedStatements = KeyedStatements {
    one: Statement {
        name: "u1",
        sql: "SELECT id, name FROM users WHERE id = $1",
        param_types: &[INT8],
    },
    many: Statement {
        name: "un",
        sql: "SELECT id, name FROM users WHERE id = ANY($1)",
        param_types: &[INT8_ARRAY],
    },
};

static OTHER: KeyedStatements = KeyedStatements {
    one: Statement {
        name: "o1",
        sql: "SELECT id FROM other WHERE id = $1",
        param_types: &[INT8],
    },
    many: Statement {
        name: "on",
        sql: "SELECT id FROM other WHERE id = ANY($1)",
        param_types: &[INT8_ARRAY],
    },
};

type Reads = Vec<(i64, u32)>;

/// Sends the reads `keys` (key, read) as one batch on `conn`.
fn send_batch(conn: &mut Connection<Reads>, keys: &[(i64, u32)]) {
    let values: Vec<i64> = keys.iter().map(|(key, _)| *key).collect();
    conn.send(&USERS.many, &[Param::Int8Array(&values)], keys.to_vec())
        .unwrap();
}

/// The keys of the `int8[]` the `Bind` in `bytes` carries (its one parameter).
fn bound_keys(bytes: &[u8]) -> Vec<i64> {
    let mut at = 0;
    while bytes[at] != b'B' {
        at += 1 + u32::from_be_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
    }
    let body = &bytes[at + 5..];
    // The portal's and the statement's names, each ends with a NUL.
    let mut rest = body;
    for _ in 0..2 {
        let end = rest.iter().position(|b| *b == 0).unwrap();
        rest = &rest[end + 1..];
    }
    let formats = u16::from_be_bytes(rest[..2].try_into().unwrap()) as usize;
    rest = &rest[2 + 2 * formats..];
    assert_eq!(u16::from_be_bytes(rest[..2].try_into().unwrap()), 1);
    let len = i32::from_be_bytes(rest[2..6].try_into().unwrap()) as usize;
    let array = types::array_from_sql(&rest[6..6 + len]).unwrap();
    assert_eq!(array.element_type(), INT8);
    let mut keys = Vec::new();
    let mut values = array.values();
    while let Some(value) =
        postgres::fallible_iterator::FallibleIterator::next(&mut values).unwrap()
    {
        keys.push(types::int8_from_sql(value.unwrap()).unwrap());
    }
    keys
}

/// Each read's answer (by read), from a batch answered with `rows`.
fn answered(keys: Reads, rows: Rows) -> Vec<(u32, Rows)> {
    match split(keys, rows) {
        Split::Answered(mut answers) => {
            answers.sort_by_key(|(read, _)| *read);
            answers
        }
        Split::Alone(keys) => panic!("answered nothing, sends {keys:?} alone"),
    }
}

#[test]
fn a_batch_answers_each_read_with_its_own_row_and_a_missing_key_with_none() {
    let mut conn = ready_connection::<Reads>();
    // Read 2 asks for a key with no row; reads 1 and 4 for the same key.
    let reads = [(3, 1), (1, 2), (2, 3), (3, 4), (5, 5)];
    send_batch(&mut conn, &reads);
    let out = conn.take_output();
    assert_eq!(tags(&out), "PBES");
    assert_eq!(bound_keys(&out), [3, 1, 2, 3, 5]);
    // The server's order is its own.
    let bytes = answer(true, &[(5, "eve"), (1, "ana"), (3, "cy")]);
    let mut done = Vec::new();
    for byte in &bytes {
        conn.receive(std::slice::from_ref(byte), &mut done);
    }
    assert_eq!(done.len(), 1);
    let (keys, rows) = done.pop().unwrap();
    let answers = answered(keys, rows);
    let got: Vec<(u32, Vec<(i64, String)>)> = answers
        .iter()
        .map(|(read, rows)| (*read, ids(rows)))
        .collect();
    let row = |id: i64, name: &str| vec![(id, name.to_string())];
    assert_eq!(
        got,
        [
            (1, row(3, "cy")),
            (2, row(1, "ana")),
            (3, vec![]),
            (4, row(3, "cy")),
            (5, row(5, "eve")),
        ]
    );
}

#[test]
fn a_refused_batch_sends_each_read_alone_and_only_its_failure_fails() {
    let mut conn = ready_connection::<Reads>();
    send_batch(&mut conn, &[(1, 1), (2, 2)]);
    conn.take_output();
    let mut bytes = message(b'1', b"");
    bytes.extend(error("22P02", "invalid input syntax"));
    bytes.extend(ready());
    let mut done = Vec::new();
    conn.receive(&bytes, &mut done);
    let (keys, rows) = done.pop().unwrap();
    assert!(matches!(rows, Err(DbError::Query(_))));
    let Split::Alone(alone) = split(keys, rows) else {
        panic!("a refused batch answers its reads")
    };
    assert_eq!(alone, [(1, 1), (2, 2)]);
    // Alone, each its own request: the first is refused, the second answered.
    for (key, read) in alone {
        conn.send(&USERS.one, &[Param::Int8(key)], vec![(key, read)])
            .unwrap();
    }
    assert_eq!(tags(&conn.take_output()), "PBESBES");
    let mut bytes = error("22P02", "invalid input syntax");
    bytes.extend(ready());
    bytes.extend(answer(true, &[(2, "bo")]));
    conn.receive(&bytes, &mut done);
    assert!(matches!(done[0].1, Err(DbError::Query(_))));
    assert_eq!(ids(&done[1].1), [(2, "bo".to_string())]);
}

#[test]
fn a_failed_node_fails_every_read_of_the_batch() {
    // A statement timeout is the node's failure, as on the DB I/O threads: the read path
    // retries each read elsewhere.
    let mut conn = ready_connection::<Reads>();
    send_batch(&mut conn, &[(1, 1), (2, 2)]);
    let mut bytes = message(b'1', b"");
    bytes.extend(error(
        "57014",
        "canceling statement due to statement timeout",
    ));
    bytes.extend(ready());
    let mut done = Vec::new();
    conn.receive(&bytes, &mut done);
    // A lost socket fails the batch sent after it.
    send_batch(&mut conn, &[(3, 3), (4, 4)]);
    conn.fail("connection reset".into(), &mut done);
    assert_eq!(done.len(), 2);
    let timeout = DbError::Timeout {
        node: "replica1".into(),
    };
    for (keys, rows) in done {
        let answers = answered(keys, rows);
        assert_eq!(answers.len(), 2);
        for (read, rows) in answers {
            let e = rows.unwrap_err();
            assert!(e.is_node_failure());
            assert_eq!(read <= 2, e == timeout, "read {read}: {e}");
        }
    }
}

#[test]
fn a_row_without_an_int8_key_fails_the_batch() {
    let mut conn = ready_connection::<Reads>();
    send_batch(&mut conn, &[(1, 1), (2, 2)]);
    let mut bytes = message(b'1', b"");
    bytes.extend(message(b'2', b""));
    bytes.extend(data_row(&[None, Some(b"ana")]));
    bytes.extend(message(b'C', b"SELECT 1\0"));
    bytes.extend(ready());
    let mut done = Vec::new();
    conn.receive(&bytes, &mut done);
    let (keys, rows) = done.pop().unwrap();
    for (_, rows) in answered(keys, rows) {
        assert!(matches!(rows, Err(DbError::Query(_))));
    }
}

#[test]
fn the_waiting_reads_go_a_statement_at_a_time_at_most_max_batch_together() {
    let mut gather = Gather::default();
    for read in 0..MAX_BATCH as u32 + 2 {
        gather.push(&USERS, read.into(), read);
        if read == 1 {
            gather.push(&OTHER, 7, 1000);
        }
    }
    let (lookup, first) = gather.take().unwrap();
    assert!(std::ptr::eq(lookup, &USERS));
    assert_eq!(first.len(), MAX_BATCH);
    assert_eq!(first[..3], [(0, 0), (1, 1), (2, 2)]);
    let (lookup, rest) = gather.take().unwrap();
    assert!(std::ptr::eq(lookup, &USERS));
    assert_eq!(rest, [(128, 128), (129, 129)]);
    let (lookup, other) = gather.take().unwrap();
    assert!(std::ptr::eq(lookup, &OTHER));
    assert_eq!(other, [(7, 1000)]);
    assert!(gather.take().is_none() && gather.is_empty());

    gather.push(&USERS, 1, 1);
    gather.push(&OTHER, 2, 2);
    assert_eq!(gather.drain().collect::<Vec<_>>(), [1, 2]);
    assert!(gather.is_empty());
}
