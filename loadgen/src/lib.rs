//! `loadgen`: the CoinBitClub load generator.
//!
//! A thread-per-core HTTP/1.1 client for measuring the server the way its users will meet it,
//! and for never being the bottleneck while doing so. Each client thread is pinned to one CPU
//! and owns everything it touches — its epoll instance, its keep-alive connections, its share
//! of the virtual users or of the fixed schedule, and its own HDR histograms. Client threads never
//! share state: every reporting interval each ships its histograms and counters over a channel
//! and starts fresh; the runner merges them into the progress line, the timeline, the
//! HdrHistogram interval log and, at the end, the summary and SLO verdicts.
//!
//! Two load models. **Closed**: `--users N` virtual users, each sending its next request when
//! the previous one is answered (plus think time). **Open**: `--rate R` requests per second on a
//! fixed schedule computed up front; latency is measured from each request's *intended* send
//! time, so a stalled server cannot hide its stall by slowing the client down (coordinated
//! omission), and the uncorrected latency is kept beside it. Both follow `--stages` ramps.
//!
//! # Layout
//! - [`cli`]: flags, validation and guardrails, [`cli::Config`].
//! - [`scenario`]: built-in CoinBitClub mixes, TOML/JSON scenario files, request templates.
//! - [`schedule`]: load profiles (stages), the open model's intended send times, think time.
//! - [`client`]: the per-CPU event loop, connection state machine, sans-I/O response parser.
//! - [`stats`]: what client threads record and the messages they send.
//! - [`runner`]: starts the client threads, merges intervals, builds the summary, writes the files.
//! - [`report`]: summary table, `.hgrm`, interval log, `summary.json`, `report.html`, progress.
//! - [`login`]: logged-in load: an account per virtual user before the run, and its session
//!   token or signed-request headers on each of its requests.
//! - [`slo`]: `--slo` parsing and evaluation.
//! - [`units`]: durations and number formatting.

pub mod cli;
pub mod client;
pub mod error;
pub mod login;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod schedule;
pub mod slo;
pub mod stats;
pub mod units;

pub use cli::{Args, Config};
pub use error::Error;
pub use runner::{run, stop_flag, Outcome, EXIT_SLO_MISSED};
