//! The JSON message a syslog line becomes in its queue.

use std::net::IpAddr;

use serde::Serialize;

use super::parse::{self, Parsed};

/// One received syslog message, as published. The original's field names
/// (`line`, `host`, `tstamp`, `facility`, `severity`) are kept; the rest are added.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// The message as received, framing and trailing line end removed
    /// (invalid UTF-8 replaced).
    pub line: &'a str,
    /// The address it came from.
    pub sender: String,
    /// When it arrived, RFC 3339 in UTC.
    pub received: String,
    /// When it arrived, Unix seconds (the original's field).
    pub tstamp: f64,
    /// What the message itself says: host, timestamp, facility, severity,
    /// app, pid, msgid, structured data, message, and its format.
    #[serde(flatten)]
    pub parsed: Parsed<'a>,
    /// Present, and true, when the message was cut to `--max-body`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// The JSON text of the message `line` from `sender`, arrived at
/// `received_ms` (Unix milliseconds).
pub fn json(line: &str, sender: IpAddr, received_ms: u64, truncated: bool) -> String {
    let record = Record {
        line,
        sender: sender.to_canonical().to_string(),
        received: rfc3339(received_ms),
        tstamp: received_ms as f64 / 1000.0,
        parsed: parse::parse(line),
        truncated,
    };
    // Serializing a struct of strings, options and a finite number cannot fail.
    serde_json::to_string(&record).unwrap_or_default()
}

/// `ms` since the Unix epoch as `YYYY-MM-DDThh:mm:ss.mmmZ`.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let in_day = secs % 86_400;
    let (year, month, day) = civil(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60,
        ms % 1000
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_798_761_599_999), "2026-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(4_107_542_400_123), "2100-03-01T00:00:00.123Z");
    }

    #[test]
    fn records() {
        let ip: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        let value: serde_json::Value =
            serde_json::from_str(&json("<165>Nov  3 01:02:03 h app[9]: hi", ip, 1_500, false))
                .unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "line": "<165>Nov  3 01:02:03 h app[9]: hi",
                "host": "h",
                "sender": "10.1.2.3",
                "timestamp": "Nov  3 01:02:03",
                "received": "1970-01-01T00:00:01.500Z",
                "tstamp": 1.5,
                "facility": "local4",
                "severity": "notice",
                "app": "app",
                "pid": "9",
                "msgid": null,
                "structured_data": null,
                "message": "hi",
                "format": "rfc3164",
            })
        );
        let value: serde_json::Value =
            serde_json::from_str(&json("plain", "::1".parse().unwrap(), 0, true)).unwrap();
        assert_eq!(value["sender"], "::1");
        assert_eq!(value["facility"], serde_json::Value::Null);
        assert_eq!(value["message"], "plain");
        assert_eq!(value["truncated"], true);
    }
}
