//! Queue semantics, independent of HTTP: publishing, popping, peeking, deleting,
//! purging, policies and pause states, and streaming to connected consumers
//! ([`hub`]), over any [`Store`].

pub mod hub;
mod name;

use std::sync::Arc;
use std::time::Duration;

pub use name::{MAX_QUEUE_NAME, QueueName};

use self::hub::{Hub, Resume, StreamLimits, Subscription};

use crate::error::Error;
use crate::store::{Message, NewMessage, Policy, QueueInfo, Status, Store, StoreError, StoreEvent};

/// Acts on what other servers sharing the store did: wakes dispatchers, and
/// hands broadcast messages they streamed to this server's consumers.
async fn follow(hub: Hub, mut events: tokio::sync::mpsc::UnboundedReceiver<StoreEvent>) {
    while let Some(event) = events.recv().await {
        match event {
            StoreEvent::Changed(queue) => {
                if let Ok(queue) = QueueName::parse(&queue) {
                    hub.kick(&queue);
                }
            }
            StoreEvent::Streamed { queue, messages } => {
                if let Ok(queue) = QueueName::parse(&queue) {
                    hub.deliver_shared(&queue, messages);
                }
            }
            StoreEvent::Resync => hub.kick_all(),
        }
    }
}

/// The broker: the one way the front doors reach the queues. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    store: Arc<dyn Store>,
    hub: Hub,
}

impl Broker {
    /// A broker over `store`; must be created inside a tokio runtime.
    pub fn new(store: Arc<dyn Store>, limits: StreamLimits) -> Broker {
        let hub = Hub::new(store.clone(), limits);
        if let Some(events) = store.events() {
            tokio::spawn(follow(hub.clone(), events));
        }
        Broker { store, hub }
    }

    /// Succeeds when the store can be reached now.
    pub async fn ready(&self) -> Result<(), Error> {
        Ok(self.store.ping().await?)
    }

    /// A short description of the store behind the broker.
    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// Appends one message to the tail of `queue`; returns its number once durable,
    /// having woken the queue's streaming consumers.
    pub async fn publish(&self, queue: &QueueName, message: NewMessage) -> Result<u64, Error> {
        let ids = self.store.publish(queue.as_str(), vec![message]).await?;
        self.hub.kick(queue);
        match ids[..] {
            [id] => Ok(id),
            _ => Err(Error::Store(StoreError::Corrupted(
                "the store answered one publish with a wrong number of keys".into(),
            ))),
        }
    }

    /// Removes and returns the head of `queue`.
    pub async fn pop(&self, queue: &QueueName) -> Result<Option<Message>, Error> {
        Ok(self.store.pop(queue.as_str()).await?)
    }

    /// Returns the head of `queue` without removing it, with its read count.
    pub async fn peek(&self, queue: &QueueName) -> Result<Option<(Message, u64)>, Error> {
        Ok(self.store.peek(queue.as_str()).await?)
    }

    /// Deletes the message with `key` (`<queue>:<n>`) from `queue`; false when
    /// the key names no waiting message of this queue.
    pub async fn delete(&self, queue: &QueueName, key: &str) -> Result<bool, Error> {
        match queue.parse_key(key) {
            Some(id) => Ok(self.store.delete(queue.as_str(), id).await?),
            None => Ok(false),
        }
    }

    /// Ends every stream of `queue` (after a last `null`), then deletes every
    /// waiting message; true when there were any.
    pub async fn purge(&self, queue: &QueueName) -> Result<bool, Error> {
        self.hub.close_queue(queue);
        Ok(self.store.purge(queue.as_str()).await?)
    }

    /// What is known of `queue`, `None` when never used.
    pub async fn queue(&self, queue: &QueueName) -> Result<Option<QueueInfo>, Error> {
        Ok(self.store.queue(queue.as_str()).await?)
    }

    /// Every listed queue (published to at least once), sorted by name.
    pub async fn queues(&self) -> Result<Vec<(String, QueueInfo)>, Error> {
        Ok(self.store.queues().await?)
    }

    /// Sets the streaming policy of `queue`.
    pub async fn set_policy(&self, queue: &QueueName, policy: Policy) -> Result<(), Error> {
        Ok(self.store.set_policy(queue.as_str(), policy).await?)
    }

    /// Starts or stops streaming delivery of `queue`; starting delivers the backlog.
    pub async fn set_status(&self, queue: &QueueName, status: Status) -> Result<(), Error> {
        self.store.set_status(queue.as_str(), status).await?;
        if status == Status::Started {
            self.hub.kick(queue);
        }
        Ok(())
    }

    /// Connects a streaming consumer to `queue`; refused while shutting down.
    pub fn subscribe(&self, queue: &QueueName, resume: Resume) -> Result<Subscription, Error> {
        self.hub.subscribe(queue, resume).ok_or(Error::ShuttingDown)
    }

    /// Streaming consumers connected to `queue`.
    pub fn consumers(&self, queue: &QueueName) -> usize {
        self.hub.consumers(queue)
    }

    /// Ends every stream for shutdown; new ones are refused.
    pub fn end_streams(&self) {
        self.hub.end_all();
    }

    /// Waits up to `grace` for the streams to close and their undelivered messages
    /// to be back in their queues.
    pub async fn streams_closed(&self, grace: Duration) {
        self.hub.closed(grace).await;
    }

    /// Up to `count` of the newest waiting messages of `queue`, newest first.
    pub async fn latest(&self, queue: &QueueName, count: usize) -> Result<Vec<Message>, Error> {
        Ok(self.store.latest(queue.as_str(), count).await?)
    }

    /// Flushes and closes the store; later calls fail with a 503.
    pub async fn close(&self) -> Result<(), Error> {
        Ok(self.store.close().await?)
    }
}
