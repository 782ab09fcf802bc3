//! Why a shard's generation failed to start or died: which shard, which generation, what it was
//! doing and what went wrong, kept apart until the error is shown (glommio's `ErrorEnhancer`
//! carries an operation and its target beside the cause the same way).

use std::fmt;
use std::io;

/// A generation's start or death, with its context.
#[derive(Debug)]
pub struct ShardError {
    pub shard: usize,
    pub generation: u64,
    pub operation: ShardOperation,
    pub cause: ShardFailure,
}

/// What the generation was doing when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardOperation {
    /// Starting the thread the generation runs on (or is awaited from).
    StartThread,
    /// Starting the glommio executor of the shard's thread.
    StartExecutor,
    /// Picking a free may carrier thread for the generation.
    PickCarrier,
    /// Queueing a coroutine to the generation's carrier thread.
    StartCoroutine,
    StartQueueLoop,
    StartRequestGate,
    StartHeartbeat,
    /// Binding the shard's listener.
    Listen,
    /// Serving: the generation had started.
    Serve,
}

/// What went wrong.
#[derive(Debug)]
pub enum ShardFailure {
    Io(io::Error),
    /// A task panicked past its own containment; the panic's message.
    Panicked(String),
    /// The shard's thread ended without the engine's containment (glommio's join error).
    ThreadEnded(String),
    /// The shard's thread ended without sending how.
    Vanished,
    /// The generation stopped sending heartbeats and the monitor replaced it.
    Replaced,
    /// Shutdown began while every carrier thread of the shard was stuck.
    NoFreeCarrier,
}

impl ShardError {
    pub fn new(
        shard: usize,
        generation: u64,
        operation: ShardOperation,
        cause: ShardFailure,
    ) -> Self {
        ShardError {
            shard,
            generation,
            operation,
            cause,
        }
    }
}

impl fmt::Display for ShardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (shard {}, generation {}, while {})",
            self.cause, self.shard, self.generation, self.operation
        )
    }
}

impl std::error::Error for ShardError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            ShardFailure::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl fmt::Display for ShardOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ShardOperation::StartThread => "starting its thread",
            ShardOperation::StartExecutor => "starting the glommio executor",
            ShardOperation::PickCarrier => "picking a carrier thread",
            ShardOperation::StartCoroutine => "starting a coroutine",
            ShardOperation::StartQueueLoop => "starting the queue loop",
            ShardOperation::StartRequestGate => "starting the request gate",
            ShardOperation::StartHeartbeat => "starting the heartbeat",
            ShardOperation::Listen => "binding its listener",
            ShardOperation::Serve => "serving",
        })
    }
}

impl fmt::Display for ShardFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShardFailure::Io(e) => write!(f, "{e}"),
            ShardFailure::Panicked(message) => write!(f, "panicked: {message}"),
            ShardFailure::ThreadEnded(why) => write!(f, "its thread ended abnormally: {why}"),
            ShardFailure::Vanished => f.write_str("its thread ended without a word"),
            ShardFailure::Replaced => {
                f.write_str("stopped sending heartbeats; replaced by the monitor")
            }
            ShardFailure::NoFreeCarrier => {
                f.write_str("shutdown began while every carrier thread was stuck")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    #[test]
    fn says_what_failed_where_and_keeps_an_io_cause_as_its_source() {
        let refused = io::Error::from_raw_os_error(libc::EADDRINUSE);
        let shown = refused.to_string();
        let error = ShardError::new(2, 3, ShardOperation::Listen, ShardFailure::Io(refused));
        assert_eq!(
            error.to_string(),
            format!("{shown} (shard 2, generation 3, while binding its listener)")
        );
        let source = error.source().and_then(|s| s.downcast_ref::<io::Error>());
        assert_eq!(
            source.and_then(io::Error::raw_os_error),
            Some(libc::EADDRINUSE)
        );

        let panic = ShardError::new(
            0,
            1,
            ShardOperation::Serve,
            ShardFailure::Panicked("boom".into()),
        );
        assert_eq!(
            panic.to_string(),
            "panicked: boom (shard 0, generation 1, while serving)"
        );
        assert!(panic.source().is_none());
    }
}
