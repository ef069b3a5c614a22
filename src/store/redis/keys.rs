//! Key names: the original RestMQ's, or the same wrapped in a hash tag per queue
//! for Redis Cluster, so that all of a queue's keys share one slot.

/// How a queue's keys are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// `<q>:UUID`, `<q>:queue`, `queuestat::<q>`, `<q>:queuepolicy`, `<q>:<n>`.
    Legacy,
    /// The same names with `<q>` written `{<q>}`.
    Tagged,
}

/// The keys of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueKeys {
    /// What message keys start with: `<prefix>:<n>`.
    pub prefix: String,
    /// The counter of message numbers.
    pub counter: String,
    /// The list of waiting message keys.
    pub list: String,
    /// The status (1 started, 0 stopped).
    pub status: String,
    /// The policy (1 broadcast, 2 roundrobin).
    pub policy: String,
    /// The eight keys every reliable-delivery script takes first: list, ready,
    /// in flight, delayed, deliveries, dying, config, expires.
    pub eight: [String; 8],
}

impl Naming {
    /// The keys of `queue`.
    pub fn keys(self, queue: &str) -> QueueKeys {
        let prefix = match self {
            Naming::Legacy => queue.to_owned(),
            Naming::Tagged => ["{", queue, "}"].concat(),
        };
        // `concat` sizes each name exactly: a queue's keys are named on every
        // round of requests, and `format!` cost several times as much.
        let key = |suffix: &str| [prefix.as_str(), suffix].concat();
        QueueKeys {
            counter: key(":UUID"),
            list: key(":queue"),
            status: ["queuestat::", prefix.as_str()].concat(),
            policy: key(":queuepolicy"),
            eight: [
                key(":queue"),
                key(":ready"),
                key(":inflight"),
                key(":delayed"),
                key(":deliveries"),
                key(":dying"),
                key(":config"),
                key(":expires"),
            ],
            prefix,
        }
    }
}

impl QueueKeys {
    /// Settings of the queue (a hash).
    pub fn config(&self) -> &str {
        &self.eight[6]
    }

    /// Messages waiting to be moved to the dead-letter queue (a list).
    pub fn dying(&self) -> &str {
        &self.eight[5]
    }

    /// Messages in flight (a sorted set by due time).
    pub fn inflight(&self) -> &str {
        &self.eight[2]
    }

    /// Expiries of messages by number, in ms (a hash).
    pub fn expires(&self) -> &str {
        &self.eight[7]
    }

    /// Delayed messages (a sorted set by due time).
    pub fn delayed(&self) -> &str {
        &self.eight[3]
    }

    /// The list of purges not yet finished: keys [`super::scripts::PURGE`] set
    /// aside, whose messages are still to delete.
    pub fn purging(&self) -> String {
        [self.prefix.as_str(), ":purging"].concat()
    }

    /// The counter numbering the queue's unfinished purges.
    pub fn purges(&self) -> String {
        [self.prefix.as_str(), ":purges"].concat()
    }

    /// The key of message `id`.
    pub fn message(&self, id: u64) -> String {
        crate::store::message_key(&self.prefix, id)
    }

    /// The number in a message key of this queue.
    pub fn id_of(&self, key: &[u8]) -> Option<u64> {
        let key = std::str::from_utf8(key).ok()?;
        key.strip_prefix(self.prefix.as_str())?
            .strip_prefix(':')?
            .parse()
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_and_tagged_names() {
        let keys = Naming::Legacy.keys("jobs");
        assert_eq!(
            (
                keys.counter.as_str(),
                keys.list.as_str(),
                keys.status.as_str(),
                keys.policy.as_str()
            ),
            (
                "jobs:UUID",
                "jobs:queue",
                "queuestat::jobs",
                "jobs:queuepolicy"
            )
        );
        assert_eq!(keys.message(7), "jobs:7");
        assert_eq!(keys.id_of(b"jobs:7"), Some(7));
        assert_eq!(keys.id_of(b"other:7"), None);
        let tagged = Naming::Tagged.keys("a:b");
        assert_eq!(tagged.counter, "{a:b}:UUID");
        assert_eq!(tagged.status, "queuestat::{a:b}");
        assert_eq!(tagged.id_of(b"{a:b}:12"), Some(12));
    }
}
