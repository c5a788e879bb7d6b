//! Checks of values the policy passes share: RFC 9110 tokens (header names, methods) and
//! Gateway API durations within a range, each failure a message naming the field. A leaf.

use portico_crds::gateway_api::Duration;
use std::str::FromStr;

pub(crate) const SECOND: u64 = 1_000;
pub(crate) const HOUR: u64 = 3_600 * SECOND;

/// A Gateway API duration in milliseconds, within `min..=max` (ms); the error names `field`.
pub(crate) fn millis(field: &str, value: &str, min: u64, max: u64) -> Result<u64, String> {
    let d = Duration::from_str(value).map_err(|e| format!("{field} {value:?}: {e}"))?;
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if !(min..=max).contains(&ms) {
        return Err(format!(
            "{field} {value:?} must be between {} and {}",
            human(min),
            human(max)
        ));
    }
    Ok(ms)
}

/// `ms` in the largest whole unit: `1ms`, `10s`, `5m`, `24h`.
pub(crate) fn human(ms: u64) -> String {
    match ms {
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

/// An RFC 9110 token (header names and methods).
pub(crate) fn http_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
