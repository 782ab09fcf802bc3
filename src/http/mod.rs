//! HTTP/1.1, sans-I/O: bytes in, requests out, responses in, bytes out.
//!
//! Nothing here reads a socket or starts a timer. An engine feeds the bytes it read into a
//! [`Connection`], which parses every complete request in its buffer (pipelining), hands each to
//! a [`Service`], encodes the responses into one output buffer, and says what the engine must do
//! next ([`Step`]). Limits (line, header and body sizes) and timeouts are decided here, so every
//! engine enforces the same ones.
//!
//! # Layout
//! - [`parse`]: the request head parser over `httparse`, with the size limits.
//! - [`request`] / [`response`]: the engine-neutral request and response types.
//! - [`conn`]: the per-connection state machine.
//! - [`pool`]: the shard's connection buffers, lent while a connection works.
//! - [`date`]: the cached `Date` header value.
//! - [`error`]: protocol errors and their statuses.

pub mod conn;
pub mod date;
pub mod error;
pub mod parse;
pub mod pool;
pub mod request;
pub mod response;

pub use conn::{Connection, Limits, Service, Step, Timeouts, TurnWait};
pub use date::HttpDate;
pub use error::{clip_parser_message, quote_input, HttpError};
pub use pool::BufferPool;
pub use request::{Method, Request};
pub use response::{ConnectionHeader, Reply, Response, StatusCode};
