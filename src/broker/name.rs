//! Queue names and message keys.

use std::fmt;

use crate::error::Error;

/// Longest queue name accepted, in bytes.
pub const MAX_QUEUE_NAME: usize = 256;

/// A valid queue name: 1 to 256 bytes of UTF-8 without control characters.
/// `/`, `:` and spaces are allowed, as in the original RestMQ.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueName(String);

impl QueueName {
    /// Checks a queue name.
    pub fn parse(name: &str) -> Result<QueueName, Error> {
        if name.is_empty() {
            return Err(Error::InvalidQueueName("it is empty"));
        }
        if name.len() > MAX_QUEUE_NAME {
            return Err(Error::InvalidQueueName("it is longer than 256 bytes"));
        }
        if name.chars().any(char::is_control) {
            return Err(Error::InvalidQueueName("it contains control characters"));
        }
        Ok(QueueName(name.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key of message `id` of this queue: `<queue>:<id>`.
    pub fn key(&self, id: u64) -> String {
        crate::store::message_key(&self.0, id)
    }

    /// The message number in `key` when the key belongs to this queue.
    pub fn parse_key(&self, key: &str) -> Option<u64> {
        let id = key.strip_prefix(self.0.as_str())?.strip_prefix(':')?;
        // Only the canonical spelling names a message: no sign, no leading zero.
        if id.starts_with('0') || !id.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        id.parse().ok().filter(|&id| id > 0)
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(QueueName::parse("jobs").is_ok());
        assert!(QueueName::parse("a/b:c d").is_ok());
        assert!(QueueName::parse(&"x".repeat(256)).is_ok());
        assert!(QueueName::parse(&"x".repeat(257)).is_err());
        assert!(QueueName::parse("").is_err());
        assert!(QueueName::parse("a\nb").is_err());
        assert!(QueueName::parse("a\u{7f}").is_err());
    }

    #[test]
    fn keys_round_trip_only_for_their_queue() {
        let q = QueueName::parse("a:b").unwrap();
        assert_eq!(q.key(12), "a:b:12");
        assert_eq!(q.parse_key("a:b:12"), Some(12));
        assert_eq!(q.parse_key("a:12"), None);
        assert_eq!(q.parse_key("a:b:"), None);
        assert_eq!(q.parse_key("a:b:0"), None);
        assert_eq!(q.parse_key("a:b:+3"), None);
        assert_eq!(q.parse_key("a:b:012"), None);
        assert_eq!(q.parse_key("a:b:99999999999999999999999"), None);
    }
}
