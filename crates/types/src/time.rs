use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, the time unit of every Liaison timestamp.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A timestamp in milliseconds since the Unix epoch as RFC 3339 UTC with
/// milliseconds (`2026-12-01T10:50:01.123Z`), the form every human-readable
/// text of Liaison uses; `-` for 0 or a negative time (none).
pub fn rfc3339(ms: i64) -> String {
    if ms <= 0 {
        return "-".to_owned();
    }
    let t = UNIX_EPOCH + std::time::Duration::from_millis(ms.unsigned_abs());
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_rfc3339() {
        assert_eq!(rfc3339(1_796_112_349_155), "2026-12-01T08:05:49.155Z");
        assert_eq!(rfc3339(0), "-");
    }
}
