//! Lookups by key that wait for one connection, answered by one statement: the keys read while
//! a request is in flight gather here and go out together as one `... WHERE key = ANY($1)`
//! (a batch), as the DB I/O threads batch theirs ([`crate::db::pool`]); the batch's rows then
//! go back to the reads they answer, by key. Sans I/O, like [`super::conn`].
//!
//! A batch's failure is each read's as the threads have it: a failed node fails them all (the
//! read path retries elsewhere); any other error (a refused statement) sends each read again
//! alone, so that only the one that must fail does.

use std::collections::{HashMap, VecDeque};

use super::conn::{Rows, Statement};

/// The most keys in one batch (as the DB I/O threads' batches).
pub const MAX_BATCH: usize = 128;

/// A lookup by key's statements: for one key (`$1`, an `int8`) and for many (`= ANY($1)`, an
/// `int8[]`). Column 0 of a row is its key.
#[derive(Debug)]
pub struct KeyedStatements {
    pub one: Statement,
    pub many: Statement,
}

/// The lookups waiting for a connection, by statement, in the order they came.
pub struct Gather<T> {
    groups: VecDeque<(&'static KeyedStatements, Vec<(i64, T)>)>,
}

impl<T> Default for Gather<T> {
    fn default() -> Self {
        Gather {
            groups: VecDeque::new(),
        }
    }
}

impl<T> Gather<T> {
    pub fn push(&mut self, lookup: &'static KeyedStatements, key: i64, token: T) {
        match self
            .groups
            .iter_mut()
            .find(|(l, _)| std::ptr::eq(*l, lookup))
        {
            Some((_, keys)) => keys.push((key, token)),
            None => self.groups.push_back((lookup, vec![(key, token)])),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The next request: the oldest statement's waiting keys, at most [`MAX_BATCH`] of them.
    pub fn take(&mut self) -> Option<(&'static KeyedStatements, Vec<(i64, T)>)> {
        let (lookup, keys) = self.groups.front_mut()?;
        let lookup = *lookup;
        if keys.len() > MAX_BATCH {
            return Some((lookup, keys.drain(..MAX_BATCH).collect()));
        }
        self.groups.pop_front().map(|(_, keys)| (lookup, keys))
    }

    /// Every waiting lookup, taken out (the connection failed).
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.groups
            .drain(..)
            .flat_map(|(_, keys)| keys.into_iter().map(|(_, token)| token))
    }
}

/// What a batch's answer makes of its reads.
#[derive(Debug)]
pub enum Split<T> {
    /// Each read's answer: its row, or none for a key with no row.
    Answered(Vec<(T, Rows)>),
    /// The batch was refused: each read is to go again alone.
    Alone(Vec<(i64, T)>),
}

/// The answers of the reads of `keys` from their batch's `rows`.
pub fn split<T>(keys: Vec<(i64, T)>, rows: Rows) -> Split<T> {
    let every = |keys: Vec<(i64, T)>, e: crate::db::DbError| {
        Split::Answered(keys.into_iter().map(|(_, t)| (t, Err(e.clone()))).collect())
    };
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) if e.is_node_failure() => return every(keys, e),
        Err(_) => return Split::Alone(keys),
    };
    let mut by_key = HashMap::with_capacity(rows.len());
    for row in rows {
        match row.int8(0) {
            Ok(key) => by_key.insert(key, row),
            Err(e) => return every(keys, e),
        };
    }
    Split::Answered(
        keys.into_iter()
            .map(|(key, t)| (t, Ok(by_key.get(&key).cloned().into_iter().collect())))
            .collect(),
    )
}

#[cfg(test)]
mod tests;
