//! What the sans-I/O tests of [`super::conn`] and [`super::batch`] share: the server's
//! messages as bytes, a connection past its startup, the frontend messages' tags.

use super::conn::{Connection, Rows, Startup, Statement, INT8};

pub static USER_BY_ID: Statement = Statement {
    name: "u1",
    sql: "SELECT id, name FROM users WHERE id = $1",
    param_types: &[INT8],
};

/// One backend message: its tag, its length, its body.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

pub fn ready() -> Vec<u8> {
    message(b'Z', b"I")
}

pub fn data_row(columns: &[Option<&[u8]>]) -> Vec<u8> {
    let mut body = (columns.len() as u16).to_be_bytes().to_vec();
    for column in columns {
        match column {
            Some(bytes) => {
                body.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                body.extend_from_slice(bytes);
            }
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    message(b'D', &body)
}

pub fn error(code: &str, text: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [(b'S', "ERROR"), (b'C', code), (b'M', text)] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    message(b'E', &body)
}

/// The answer to one request: Parse/Bind complete, `rows` rows of (id, name), the command tag.
pub fn answer(parsed: bool, rows: &[(i64, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    if parsed {
        out.extend(message(b'1', b""));
    }
    out.extend(message(b'2', b""));
    for (id, name) in rows {
        out.extend(data_row(&[Some(&id.to_be_bytes()), Some(name.as_bytes())]));
    }
    out.extend(message(b'C', format!("SELECT {}\0", rows.len()).as_bytes()));
    out.extend(ready());
    out
}

/// The tags of the frontend messages in `bytes` (after the startup message).
pub fn tags(mut bytes: &[u8]) -> String {
    let mut tags = String::new();
    while !bytes.is_empty() {
        tags.push(bytes[0] as char);
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        bytes = &bytes[1 + len..];
    }
    tags
}

pub fn startup(password: Option<&str>) -> Startup {
    Startup {
        user: "postgres".into(),
        database: Some("coinbit".into()),
        password: password.map(|p| p.as_bytes().to_vec()),
        parameters: vec![("application_name".into(), "coinbit-wire".into())],
    }
}

/// A connection past a trust startup, its startup bytes taken.
pub fn ready_connection<T>() -> Connection<T> {
    let mut conn = Connection::new("replica1", startup(None));
    conn.take_output();
    let mut done = Vec::new();
    let mut bytes = message(b'R', &0u32.to_be_bytes());
    bytes.extend(message(b'S', b"TimeZone\0UTC\0"));
    bytes.extend(message(b'K', &[0, 0, 0, 7, 0, 0, 0, 9]));
    bytes.extend(ready());
    conn.receive(&bytes, &mut done);
    assert!(conn.is_ready() && done.is_empty());
    conn
}

pub fn ids(rows: &Rows) -> Vec<(i64, String)> {
    rows.as_ref()
        .unwrap()
        .iter()
        .map(|r| (r.int8(0).unwrap(), r.text(1).unwrap().to_string()))
        .collect()
}
