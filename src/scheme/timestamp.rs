//! Timestamps of timestamped schemes: parsing and the tolerance window.

/// How a scheme writes its timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampFormat {
    /// Decimal unix seconds (Stripe, Slack, Standard Webhooks, Paddle).
    Unix,
    /// RFC 3339 in UTC, e.g. `2021-07-25T10:00:00Z` (Zendesk).
    Rfc3339,
}

/// Parses a timestamp value into unix seconds; `None` when it is not one.
pub fn parse(value: &[u8], format: TimestampFormat) -> Option<i64> {
    match format {
        TimestampFormat::Unix => {
            // Digits only (no sign, no spaces, no fraction), at most 12 of
            // them: year 33658 is far enough and no overflow is possible.
            if value.is_empty() || value.len() > 12 || !value.iter().all(u8::is_ascii_digit) {
                return None;
            }
            value
                .iter()
                .try_fold(0i64, |acc, d| Some(acc * 10 + i64::from(d - b'0')))
        }
        TimestampFormat::Rfc3339 => {
            let text = std::str::from_utf8(value).ok()?;
            let t = humantime::parse_rfc3339(text).ok()?;
            let secs = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
            i64::try_from(secs).ok()
        }
    }
}

/// Parses `--at` style input: unix seconds or RFC 3339.
pub fn parse_instant(text: &str) -> Option<i64> {
    parse(text.as_bytes(), TimestampFormat::Unix)
        .or_else(|| parse(text.as_bytes(), TimestampFormat::Rfc3339))
}

/// Seconds since the epoch now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// RFC 3339 text for messages.
pub fn format(unix: i64) -> String {
    let secs = u64::try_from(unix).unwrap_or(0);
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_and_rfc3339() {
        assert_eq!(
            parse(b"1614265330", TimestampFormat::Unix),
            Some(1614265330)
        );
        for bad in [
            &b""[..],
            b"-1",
            b" 1",
            b"1.5",
            b"0x10",
            b"1234567890123",
            b"abc",
        ] {
            assert_eq!(parse(bad, TimestampFormat::Unix), None, "{bad:?}");
        }
        assert_eq!(
            parse(b"2021-07-25T10:00:00Z", TimestampFormat::Rfc3339),
            Some(1627207200)
        );
        assert_eq!(parse(b"yesterday", TimestampFormat::Rfc3339), None);
        assert_eq!(parse_instant("2021-07-25T10:00:00Z"), Some(1627207200));
        assert_eq!(parse_instant("1627207200"), Some(1627207200));
        assert_eq!(format(1627207200), "2021-07-25T10:00:00Z");
    }
}
