//! The recommended sysctl values, read from `tuning/sysctl.conf` at compile time so the
//! doctor's fixes and the file that `apply.sh` installs are one source.
const SYSCTL_CONF: &str = include_str!("../../sysctl.conf");

/// `(key, value)` for every setting in `sysctl.conf`, in file order.
pub fn settings() -> impl Iterator<Item = (&'static str, &'static str)> {
    SYSCTL_CONF.lines().filter_map(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let (key, value) = line.split_once('=')?;
        Some((key.trim(), value.trim()))
    })
}

/// The recommended value of `key`. Panics if `sysctl.conf` lacks it: a test runs every check
/// that asks, so a missing key fails the build's tests, not a user's run.
pub fn value(key: &str) -> &'static str {
    settings()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("tuning/sysctl.conf has no {key}"))
}

/// The recommended value as a number (the first field for multi-value keys).
pub fn number(key: &str) -> u64 {
    let v = value(key);
    v.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{key} = {v} is not a number"))
}

/// `sysctl -w key="value"` for the recommended value.
pub fn fix(key: &str) -> String {
    let v = value(key);
    if v.contains(char::is_whitespace) {
        format!("sysctl -w {key}=\"{v}\"  (all of them: tuning/apply.sh --apply)")
    } else {
        format!("sysctl -w {key}={v}  (all of them: tuning/apply.sh --apply)")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_setting_parses_and_is_commented() {
        let text = super::SYSCTL_CONF;
        let mut previous = "";
        for line in text.lines() {
            let line = line.trim();
            if !line.is_empty() && !line.starts_with('#') {
                assert!(line.contains(" = "), "{line}");
                assert!(previous.starts_with('#'), "{line} has no comment above it");
            }
            previous = line;
        }
        assert!(super::settings().count() >= 6);
    }
}
