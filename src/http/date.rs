//! The `Date` header value, formatted once a second per shard rather than per response.

use std::time::SystemTime;

/// An IMF-fixdate such as `Sun, 06 Nov 1994 08:49:37 GMT` (always 29 bytes).
#[derive(Debug, Clone)]
pub struct HttpDate {
    text: [u8; 29],
    second: u64,
}

impl HttpDate {
    pub fn now() -> Self {
        let mut date = HttpDate {
            text: [b' '; 29],
            second: u64::MAX,
        };
        date.refresh(SystemTime::now());
        date
    }

    /// Re-formats the date if `now` is in a later second than the cached one.
    pub fn refresh(&mut self, now: SystemTime) {
        let second = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if second != self.second {
            let formatted = httpdate::fmt_http_date(now);
            self.text.copy_from_slice(&formatted.as_bytes()[..29]);
            self.second = second;
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_and_only_changes_on_a_new_second() {
        let mut date = HttpDate::now();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        date.refresh(t);
        assert_eq!(date.as_bytes(), b"Sun, 06 Nov 1994 08:49:37 GMT");
        date.refresh(t + Duration::from_millis(900));
        assert_eq!(date.as_bytes(), b"Sun, 06 Nov 1994 08:49:37 GMT");
        date.refresh(t + Duration::from_secs(1));
        assert_eq!(date.as_bytes(), b"Sun, 06 Nov 1994 08:49:38 GMT");
    }
}
