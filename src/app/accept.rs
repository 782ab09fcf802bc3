//! The app's part in a connection's life outside its requests: whether an accepted connection
//! is served, and the counts of connections closed by their deadlines.

use super::ShardApp;
use crate::http::conn::TimeoutKind;
use crate::http::{ConnectionHeader, Response, Service, StatusCode};
use crate::shard::Control;

/// What an engine does with a connection it has just accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum AcceptDecision {
    Serve,
    /// Write these bytes (a 503 with `Retry-After`), then close.
    Refuse(Vec<u8>),
}

impl ShardApp {
    /// Counts a connection accepted and decides whether it is served: past the shard's `cap`,
    /// or while the monitor has [`Control::refuse_new_connections`] on (memory critical), it
    /// gets a 503 and is counted as refused. Open connections are not affected.
    pub fn accept_or_refuse(&mut self, cap: usize, control: &Control) -> AcceptDecision {
        let connections = &mut self.metrics.connections;
        connections.accepted += 1;
        let response = if connections.open as usize >= cap {
            connections.rejected_at_cap += 1;
            Response::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                "this server is at its connection limit; retry later",
            )
            .with_header("Retry-After", "1")
        } else if control.refuse_new_connections() {
            connections.rejected_overload += 1;
            Response::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "memory is critical on this server; retry later",
            )
            .with_header("Retry-After", "5")
        } else {
            return AcceptDecision::Serve;
        };
        let mut out = Vec::with_capacity(256);
        response.encode(&mut out, self.date(), false, ConnectionHeader::Close);
        AcceptDecision::Refuse(out)
    }

    /// Counts a connection closed by its read deadline.
    pub fn count_timeout(&mut self, kind: TimeoutKind) {
        let connections = &mut self.metrics.connections;
        match kind {
            TimeoutKind::RequestRead => connections.request_timeouts += 1,
            TimeoutKind::Idle => connections.idle_timeouts += 1,
        }
    }
}
