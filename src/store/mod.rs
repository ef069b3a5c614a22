//! Storage under the broker.
//!
//! A [`Store`] keeps queues of opaque string messages, each message numbered from
//! 1 per queue (the number is never reused), plus each queue's policy and status.
//! It knows nothing of consumers, HTTP or policies' meaning: the broker gives
//! those their semantics. Every store answers the same conformance tests.

pub mod embedded;
mod metered;
pub mod redis;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

pub use embedded::{EmbeddedOptions, EmbeddedStore};
pub use metered::MeteredStore;
pub use redis::{RedisOptions, RedisStore, RedisTarget};

/// What a store operation returns; boxed so that `Arc<dyn Store>` works.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A message to append to a queue.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewMessage {
    /// The message body, stored and returned as is.
    pub value: String,
    /// Seconds after which the message is dropped undelivered; `None` keeps it.
    pub ttl: Option<u64>,
    /// Seconds the message stays invisible after it is published.
    pub delay: Option<u64>,
}

/// A message received with a visibility timeout: hidden from other consumers
/// until acknowledged, released, or its time runs out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The message.
    pub message: Message,
    /// How many times it has been received, this time included (from 1). A
    /// receipt names the message and this number.
    pub delivery: u32,
}

/// Settings of a queue, set with `/config/<q>`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Seconds a received message stays hidden when a receive names no visibility.
    pub visibility: u64,
    /// Receives without acknowledgement after which a message moves to the
    /// dead-letter queue; 0 never moves it.
    pub max_receives: u64,
    /// The dead-letter queue; `None` means `<q>.dead`.
    pub dead_letter: Option<String>,
    /// Most messages the queue holds (waiting, in flight or delayed); 0 is no limit.
    pub max_len: u64,
    /// Seconds a message is kept at most, whatever its ttl; 0 keeps it.
    pub retention: u64,
    /// Seconds a message published through the SQS door without a
    /// `DelaySeconds` of its own stays invisible: the queue's SQS
    /// `DelaySeconds` attribute. HTTP publishes name their own `delay`.
    pub delay: u64,
}

/// Visibility of received messages when neither the request nor the queue says.
pub const DEFAULT_VISIBILITY: u64 = 30;

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            visibility: DEFAULT_VISIBILITY,
            max_receives: 0,
            dead_letter: None,
            max_len: 0,
            retention: 0,
            delay: 0,
        }
    }
}

impl QueueConfig {
    /// The dead-letter queue of `queue` under these settings.
    pub fn dead_letter_of(&self, queue: &str) -> String {
        self.dead_letter
            .clone()
            .unwrap_or_else(|| format!("{queue}.dead"))
    }

    /// When a message published at `now` with `ttl` seconds expires (0: never),
    /// `retention` considered.
    pub fn expiry(&self, now: u64, ttl: Option<u64>) -> u64 {
        let after = |secs: u64| now.saturating_add(secs.saturating_mul(1000));
        match (ttl.filter(|&t| t > 0), self.retention) {
            (None, 0) => 0,
            (Some(ttl), 0) => after(ttl),
            (None, keep) => after(keep),
            (Some(ttl), keep) => after(ttl.min(keep)),
        }
    }
}

/// The time, in milliseconds since the Unix epoch. Stores read it through this,
/// so that tests can drive it ([`ManualClock`]).
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> u64;
}

/// The system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        now_millis()
    }
}

/// A clock that moves only when told to, for tests.
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    /// A clock showing `now`.
    pub fn new(now: u64) -> ManualClock {
        ManualClock(std::sync::atomic::AtomicU64::new(now))
    }

    /// Moves the clock forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A message read from a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The message's number in its queue: its key is `<queue>:<id>`.
    pub id: u64,
    /// The message body as published.
    pub value: String,
    /// When the message expires, in ms since the Unix epoch; 0 for never. Kept so
    /// that a message put back into its queue keeps its deadline.
    pub expires_at: u64,
}

/// How streamed messages are spread over a queue's consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Every consumer receives every message.
    Broadcast,
    /// Each message goes to one consumer, in turn.
    RoundRobin,
}

impl Policy {
    /// The number the original RestMQ stores for this policy (1 or 2).
    pub fn code(self) -> u8 {
        match self {
            Policy::Broadcast => 1,
            Policy::RoundRobin => 2,
        }
    }

    /// The policy's name in the HTTP contract.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Broadcast => "broadcast",
            Policy::RoundRobin => "roundrobin",
        }
    }

    /// Parses a policy name as given to `POST /p/<q>`.
    pub fn from_name(name: &str) -> Option<Policy> {
        match name {
            "broadcast" => Some(Policy::Broadcast),
            "roundrobin" => Some(Policy::RoundRobin),
            _ => None,
        }
    }

    /// Parses the stored number of a policy.
    pub fn from_code(code: u8) -> Option<Policy> {
        match code {
            1 => Some(Policy::Broadcast),
            2 => Some(Policy::RoundRobin),
            _ => None,
        }
    }
}

/// Whether streaming delivery of a queue runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Streaming consumers receive messages (status 1).
    Started,
    /// Streaming delivery is paused; messages accumulate (status 0).
    Stopped,
}

impl Status {
    /// The number the original RestMQ stores for this status (1 or 0).
    pub fn code(self) -> u8 {
        match self {
            Status::Started => 1,
            Status::Stopped => 0,
        }
    }
}

/// What a store knows of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueInfo {
    /// Messages waiting (messages whose TTL ran out count until they are reached).
    pub len: u64,
    /// The number of the last message published: 0 when none ever was.
    pub last_id: u64,
    /// The status, `None` when never set.
    pub status: Option<Status>,
    /// The policy, `None` when never set.
    pub policy: Option<Policy>,
    /// Messages received and not yet acknowledged (hidden until their time runs out).
    pub inflight: u64,
    /// Messages published with a delay, or released with one, not yet visible.
    pub delayed: u64,
}

impl QueueInfo {
    /// Whether the queue appears in queue lists: it does from its first message on,
    /// and stays listed after a purge.
    pub fn listed(&self) -> bool {
        self.last_id > 0
    }
}

/// What other servers sharing the store did, for this server's consumers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// Messages arrived in a queue, or it was resumed.
    Changed(String),
    /// Broadcast messages another server took from a queue and streamed.
    Streamed {
        /// The queue.
        queue: String,
        /// The messages, in order.
        messages: Vec<Message>,
    },
    /// Announcements may have been missed (a reconnection): every queue may
    /// have changed.
    Resync,
}

/// A store failure. Logical outcomes (an empty queue, an unknown key) are not errors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The storage cannot be reached or written now; the request may be retried.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The store is closing or closed.
    #[error("storage is shutting down")]
    Closed,
    /// The stored data could not be read back.
    #[error("storage corrupted: {0}")]
    Corrupted(String),
    /// The queue holds its maximum number of messages (its `max_len`).
    #[error("the queue is full ({0} messages)")]
    Full(u64),
}

/// The storage contract every store fulfils; every operation is atomic.
pub trait Store: Send + Sync + 'static {
    /// A short description of the store, shown in the `redis` fields of the legacy API.
    fn describe(&self) -> String;

    /// Appends messages to the tail of a queue, all or none, creating the queue on
    /// its first message. Returns their numbers in order. Once this resolves, the
    /// messages are durable as configured.
    fn publish<'a>(
        &'a self,
        queue: &'a str,
        messages: Vec<NewMessage>,
    ) -> StoreFuture<'a, Vec<u64>>;

    /// Removes and returns the head of a queue, skipping (and dropping) expired messages.
    fn pop<'a>(&'a self, queue: &'a str) -> StoreFuture<'a, Option<Message>>;

    /// Removes and returns up to `max` messages from the head of a queue, in order.
    fn pop_many<'a>(&'a self, queue: &'a str, max: usize) -> StoreFuture<'a, Vec<Message>>;

    /// Puts messages taken from a queue back, under their own numbers: at the head,
    /// in key order. Used when a message taken for a consumer could not reach it.
    fn restore<'a>(&'a self, queue: &'a str, messages: Vec<Message>) -> StoreFuture<'a, ()>;

    /// Receives up to `max` messages from the head, hiding each for
    /// `visibility_ms`; they come back at the head when that time runs out
    /// unacknowledged (or go to the dead-letter queue after `max_receives`).
    fn receive<'a>(
        &'a self,
        queue: &'a str,
        max: usize,
        visibility_ms: u64,
    ) -> StoreFuture<'a, Vec<Received>>;

    /// Acknowledges deliveries `(id, delivery)` of `queue`, deleting their
    /// messages: all of them, or, if any is stale (acknowledged, released, or its
    /// time ran out), none. Returns the stale ones.
    fn ack<'a>(
        &'a self,
        queue: &'a str,
        receipts: Vec<(u64, u32)>,
    ) -> StoreFuture<'a, Vec<(u64, u32)>>;

    /// Releases a delivery: the message is visible again after `delay_ms` (at
    /// once for 0). False, and nothing done, when the delivery is stale.
    fn nack<'a>(
        &'a self,
        queue: &'a str,
        id: u64,
        delivery: u32,
        delay_ms: u64,
    ) -> StoreFuture<'a, bool>;

    /// Hides a delivered message for `visibility_ms` from now. False, and
    /// nothing done, when the delivery is stale.
    fn extend<'a>(
        &'a self,
        queue: &'a str,
        id: u64,
        delivery: u32,
        visibility_ms: u64,
    ) -> StoreFuture<'a, bool>;

    /// When the next hidden message of `queue` (in flight or delayed) is due.
    fn next_due<'a>(&'a self, queue: &'a str) -> StoreFuture<'a, Option<u64>>;

    /// The settings of `queue` (the defaults when never set).
    fn config<'a>(&'a self, queue: &'a str) -> StoreFuture<'a, QueueConfig>;

    /// Sets the settings of `queue`.
    fn set_config<'a>(&'a self, queue: &'a str, config: QueueConfig) -> StoreFuture<'a, ()>;

    /// Moves every waiting message of `from` to the tail of `to`, in order
    /// (each under a new key of `to`). Returns how many moved.
    fn redrive<'a>(&'a self, from: &'a str, to: &'a str) -> StoreFuture<'a, u64>;

    /// Returns the head of a queue without removing it, counting this read: the
    /// second value is the number of peeks of that message so far, from 1.
    fn peek<'a>(&'a self, queue: &'a str) -> StoreFuture<'a, Option<(Message, u64)>>;

    /// Deletes one message by number; true when it was waiting in the queue.
    fn delete<'a>(&'a self, queue: &'a str, id: u64) -> StoreFuture<'a, bool>;

    /// Deletes every waiting message of a queue; true when there were any. The queue
    /// stays listed and its numbering continues.
    fn purge<'a>(&'a self, queue: &'a str) -> StoreFuture<'a, bool>;

    /// Sets a queue's policy.
    fn set_policy<'a>(&'a self, queue: &'a str, policy: Policy) -> StoreFuture<'a, ()>;

    /// Sets a queue's status.
    fn set_status<'a>(&'a self, queue: &'a str, status: Status) -> StoreFuture<'a, ()>;

    /// What is known of a queue; `None` when it was never published to nor configured.
    fn queue<'a>(&'a self, queue: &'a str) -> StoreFuture<'a, Option<QueueInfo>>;

    /// Every listed queue, sorted by name.
    fn queues(&self) -> StoreFuture<'_, Vec<(String, QueueInfo)>>;

    /// Up to `count` of the most recently published waiting messages, newest first.
    fn latest<'a>(&'a self, queue: &'a str, count: usize) -> StoreFuture<'a, Vec<Message>>;

    /// Flushes and releases the storage; later operations fail with [`StoreError::Closed`].
    fn close(&self) -> StoreFuture<'_, ()>;

    /// Succeeds when the storage can be reached now.
    fn ping(&self) -> StoreFuture<'_, ()>;

    /// Messages this store moved to dead-letter queues since it opened, by the
    /// queue they left.
    fn dead_lettered(&self) -> Vec<(String, u64)>;

    /// What other servers sharing this storage do, once: `None` for a store no
    /// other server can share.
    fn events(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<StoreEvent>> {
        None
    }

    /// Whether other servers may stream the same queues.
    fn shared(&self) -> bool {
        false
    }

    /// Tells other servers about broadcast messages this one took and streamed,
    /// for their own consumers.
    fn share<'a>(&'a self, _queue: &'a str, _messages: &'a [Message]) -> StoreFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
}

/// Messages a store moved to dead-letter queues since it opened, by the queue
/// they left; kept in memory, as a process's metrics are.
#[derive(Debug, Default)]
pub struct DeadLettered(Mutex<HashMap<String, u64>>);

impl DeadLettered {
    /// Counts `count` messages that left `queue` for its dead-letter queue.
    pub fn add(&self, queue: &str, count: u64) {
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match counts.get_mut(queue) {
            Some(total) => *total += count,
            None => {
                counts.insert(queue.to_owned(), count);
            }
        }
    }

    /// Every count so far.
    pub fn counts(&self) -> Vec<(String, u64)> {
        let counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        counts.iter().map(|(q, n)| (q.clone(), *n)).collect()
    }
}

/// Milliseconds since the Unix epoch, the clock of message expiry.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The key of message `id` of a queue whose keys start with `prefix`:
/// `<prefix>:<id>`. Sized once, as a key is named for every message answered.
pub fn message_key(prefix: &str, id: u64) -> String {
    // itoa rather than `write!`: every publish and pop makes a key, and the
    // formatting machinery cost more than the rest of it.
    let mut digits = itoa::Buffer::new();
    let id = digits.format(id);
    let mut key = String::with_capacity(prefix.len() + 1 + id.len());
    key.push_str(prefix);
    key.push(':');
    key.push_str(id);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_stored_before_the_delay_existed_still_read() {
        let old =
            r#"{"visibility":40,"max_receives":2,"dead_letter":"dlq","max_len":0,"retention":60}"#;
        let config: QueueConfig = serde_json::from_str(old).expect("an old config reads");
        assert_eq!(config.visibility, 40);
        assert_eq!(config.dead_letter.as_deref(), Some("dlq"));
        assert_eq!(config.delay, 0);
    }
}
