//! Bare-metal host tuning checks (`coinbit doctor`).
pub mod doctor {
    /// Entry point of `coinbit doctor`; returns the process exit code.
    pub fn main_with_args(_args: &[String]) -> i32 {
        0
    }
}
