//! Queue semantics, independent of HTTP: publishing, popping, peeking, deleting,
//! purging, policies and pause states, over any [`Store`].

mod name;

use std::sync::Arc;

pub use name::{MAX_QUEUE_NAME, QueueName};

use crate::error::Error;
use crate::store::{Message, NewMessage, Policy, QueueInfo, Status, Store, StoreError};

/// The broker: the one way the front doors reach the queues. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    store: Arc<dyn Store>,
}

impl Broker {
    /// A broker over `store`.
    pub fn new(store: Arc<dyn Store>) -> Broker {
        Broker { store }
    }

    /// A short description of the store behind the broker.
    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// Appends one message to the tail of `queue`; returns its number once durable.
    pub async fn publish(&self, queue: &QueueName, message: NewMessage) -> Result<u64, Error> {
        match self.store.publish(queue.as_str(), vec![message]).await?[..] {
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

    /// Deletes every waiting message of `queue`; true when there were any.
    pub async fn purge(&self, queue: &QueueName) -> Result<bool, Error> {
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

    /// Starts or stops streaming delivery of `queue`.
    pub async fn set_status(&self, queue: &QueueName, status: Status) -> Result<(), Error> {
        Ok(self.store.set_status(queue.as_str(), status).await?)
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
