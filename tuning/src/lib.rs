//! Bare-metal Linux tuning for the `coinbit` server: `coinbit doctor` checks a host (and,
//! with `--server`, the server running on it) against what a tuned thread-per-core box looks
//! like, and explains each finding with the command that fixes it.
//!
//! # Layout
//! - `doctor/mod.rs`: the command line and `run`, which gathers every check into a report.
//! - `doctor/host.rs`: `Host`, the doctor's view of a machine: files read under configurable
//!   `/proc` and `/sys` roots, and the io_uring probe. `Layout`: which CPUs hold shards and
//!   which the monitor.
//! - `doctor/checks/`: one file per area (kernel io_uring, limits, net sysctls, cpu, memory,
//!   irq); each check is a function of a `Host` and the `Context`, returning PASS, WARN, FAIL
//!   or UNKNOWN with the value seen, why it matters and the fix.
//! - `doctor/server.rs`: `--server URL`: reads the server's cluster status over a small HTTP/1.1
//!   GET and checks shard placement and pinning.
//! - `doctor/report.rs`: text and JSON output, exit code.
//! - `doctor/recommended.rs`: the values of `tuning/sysctl.conf`, compiled in, so the doctor's
//!   fixes and the file cannot drift.
//!
//! - `apply_sh_tests.rs`: runs `apply.sh` against a temp root (tests only).
//!
//! The files beside the crate (`sysctl.conf`, `apply.sh`, `coinbit.service`, `README.md`) are
//! the host side of the same advice.
pub mod doctor;

#[cfg(test)]
mod apply_sh_tests;
