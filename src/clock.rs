//! Time as the sidecar reads and writes it: Unix seconds (certificate
//! validity, OCSP and CRL times are whole seconds), RFC 3339 for logs and
//! output, and elapsed seconds for histograms.

/// Now, in Unix seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Unix seconds as RFC 3339 (`2026-12-03T08:28:06Z`); the number itself
/// when out of range.
pub fn fmt_time(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// Now as RFC 3339, for log lines.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Seconds since `start`, for duration histograms.
pub fn seconds_since(start: tokio::time::Instant) -> f64 {
    start.elapsed().as_secs_f64()
}
