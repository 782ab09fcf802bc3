//! The library's error type; the binary wraps it in `anyhow`.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad flag, URL, scenario or objective.
    #[error("{0}")]
    Config(String),
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("client thread {thread}: {message}")]
    ClientThread { thread: usize, message: String },
}

impl Error {
    pub fn io(op: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            op: op.into(),
            source,
        }
    }
}
