//! The shard's own PostgreSQL connections (issue 19, first step): the wire protocol driven on
//! the shard's event loop, with no thread hop, no lock and no channel between a read and its
//! socket. Off by default (`DB_READ_DRIVER=threads`); with `DB_READ_DRIVER=wire` the read of
//! `GET /api/users/{id}` takes it on glommio. Writes, migrations, health checks and admin stay
//! on the DB I/O threads ([`super::pool`]).
//!
//! # Layout
//! - [`conn`]: one connection's protocol, sans I/O (startup and authentication, named
//!   prepared statements, pipelined requests answered in order, errors).
//! - [`batch`]: the lookups by key that wait for a connection while a request is in flight,
//!   sent as one `= ANY($1)` statement, and its rows handed back to them.
//! - [`driver`]: the connections of one shard on glommio, one per node, opened on first use.

pub mod batch;
pub mod conn;
pub mod driver;
#[cfg(test)]
mod testing;

pub use batch::KeyedStatements;
pub use conn::{Param, Statement, WireRow, INT8, INT8_ARRAY};
