//! Start-up checks: what the kernel must allow before glommio can run.

/// Smallest RLIMIT_MEMLOCK glommio 0.9 starts an executor with.
pub const GLOMMIO_MIN_MEMLOCK: u64 = 512 * 1024;

/// Why the glommio engine cannot run here, with the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "io_uring is unavailable ({reason}); glommio needs it. Fix: allow io_uring \
         (`sysctl kernel.io_uring_disabled=0`; in a container, a seccomp profile that permits \
         io_uring_setup/io_uring_enter/io_uring_register) or run on a host that has it"
    )]
    IoUringUnavailable { reason: String },
    #[error(
        "the locked-memory limit is {have} bytes; glommio needs at least {need}. Fix: `ulimit -l unlimited` \
         (as root), `LimitMEMLOCK=infinity` in the systemd unit, or `memlock` in /etc/security/limits.conf"
    )]
    MemlockTooLow { have: u64, need: u64 },
}

/// Checks memlock and io_uring, in that order.
pub fn check_glommio() -> Result<(), PreflightError> {
    check_memlock(memlock_limit(), GLOMMIO_MIN_MEMLOCK)?;
    probe_io_uring().map_err(|reason| PreflightError::IoUringUnavailable { reason })
}

/// Pure decision over a limit (`None` is unlimited).
pub fn check_memlock(limit: Option<u64>, need: u64) -> Result<(), PreflightError> {
    match limit {
        Some(have) if have < need => Err(PreflightError::MemlockTooLow { have, need }),
        _ => Ok(()),
    }
}

/// The soft RLIMIT_MEMLOCK in bytes, `None` when unlimited.
pub fn memlock_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    if rc != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        None
    } else {
        Some(limit.rlim_cur)
    }
}

/// Sets up and tears down a tiny ring: the only sure test (sysctl, seccomp and kernel build all
/// decide). Returns the errno text when refused.
pub fn probe_io_uring() -> Result<(), String> {
    // struct io_uring_params is 120 bytes; zeroed asks for defaults.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes `params`, which outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        let hint = match err.raw_os_error() {
            Some(libc::ENOSYS) => "the kernel has no io_uring",
            Some(libc::EPERM) => "blocked by kernel.io_uring_disabled or a seccomp filter",
            Some(libc::ENOMEM) => "not enough locked memory for the ring",
            _ => "io_uring_setup failed",
        };
        return Err(format!("{hint}: {err}"));
    }
    // SAFETY: fd is a descriptor we just opened.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memlock_decisions() {
        assert!(check_memlock(None, GLOMMIO_MIN_MEMLOCK).is_ok());
        assert!(check_memlock(Some(8 << 20), GLOMMIO_MIN_MEMLOCK).is_ok());
        let err = check_memlock(Some(64 * 1024), GLOMMIO_MIN_MEMLOCK).unwrap_err();
        assert_eq!(
            err,
            PreflightError::MemlockTooLow {
                have: 65536,
                need: 524288
            }
        );
        assert!(err.to_string().contains("ulimit -l"));
    }
}
