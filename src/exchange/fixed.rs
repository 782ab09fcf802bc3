//! Fixed-point decimals as the exchange writes them ("50000.25", "0.012"), to and from
//! integers in minor units, without floats.

/// `value` with `decimals` digits after the point: `fmt(5000025, 2)` is `"50000.25"`.
pub fn fmt(value: i64, decimals: u32) -> String {
    let scale = 10i64.pow(decimals);
    let sign = if value < 0 { "-" } else { "" };
    let abs = value.unsigned_abs();
    if decimals == 0 {
        return format!("{sign}{abs}");
    }
    let scale = scale as u64;
    format!(
        "{sign}{}.{:0width$}",
        abs / scale,
        abs % scale,
        width = decimals as usize
    )
}

/// Parses a decimal into units of `10^-decimals`; more digits than that are refused (no
/// silent rounding), as is anything but `[-]digits[.digits]`.
pub fn parse(text: &str, decimals: u32) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let fraction = fraction.trim_end_matches('0');
    if fraction.len() > decimals as usize {
        return None;
    }
    let mut value: i64 = whole.parse::<i64>().ok()?;
    value = value.checked_mul(10i64.pow(decimals))?;
    if !fraction.is_empty() {
        let padded = format!("{fraction:0<width$}", width = decimals as usize);
        value = value.checked_add(padded.parse::<i64>().ok()?)?;
    }
    Some(if negative { -value } else { value })
}

/// Parses a decimal the exchange wrote, dropping digits past `decimals` (toward zero): an
/// exchange may write "50000.12000000" or more places than the platform keeps.
pub fn parse_truncating(text: &str, decimals: u32) -> Option<i64> {
    match text.split_once('.') {
        Some((whole, fraction)) if fraction.len() > decimals as usize => parse(
            &format!("{whole}.{}", &fraction[..decimals as usize]),
            decimals,
        ),
        _ => parse(text, decimals),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_without_floats() {
        assert_eq!(fmt(5_000_025, 2), "50000.25");
        assert_eq!(fmt(-12, 3), "-0.012");
        assert_eq!(fmt(7, 0), "7");
        assert_eq!(parse("50000.25", 2), Some(5_000_025));
        assert_eq!(parse("50000.2500", 2), Some(5_000_025));
        assert_eq!(parse("-0.012", 3), Some(-12));
        assert_eq!(parse("3", 3), Some(3000));
        assert_eq!(parse("0.0001", 3), None);
        assert_eq!(parse("1e5", 2), None);
        assert_eq!(parse(".5", 2), None);
        assert_eq!(parse_truncating("50000.12999999", 2), Some(5_000_012));
        assert_eq!(parse_truncating("-1.239", 2), Some(-123));
    }
}
