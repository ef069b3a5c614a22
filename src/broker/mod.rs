//! Queue semantics, independent of HTTP: publishing, popping, peeking, deleting,
//! purging, policies and pause states, and streaming to connected consumers
//! ([`hub`]), over any [`Store`].

pub mod hub;
mod name;
mod receipt;

use std::sync::Arc;
use std::time::Duration;

pub use name::{MAX_QUEUE_NAME, QueueName};
pub use receipt::Receipt;

use self::hub::{Hub, Refused, Resume, StreamLimits, Subscription};

use crate::error::Error;
use crate::store::{
    Message, NewMessage, Policy, QueueConfig, QueueInfo, Received, Status, Store, StoreError,
    StoreEvent,
};

/// Longest time span, in seconds, handed to a store: about a century. A ttl,
/// delay or visibility is any non-negative integer, but a store doing sums on
/// it must not overflow (Redis's Lua numbers are doubles, and `SET … EX`
/// refuses one past its range); anything longer is as good as forever.
pub const LONGEST: u64 = 100 * 365 * 24 * 3600;

/// A message with its ttl and delay kept within [`LONGEST`].
fn bounded(message: NewMessage) -> NewMessage {
    NewMessage {
        ttl: message.ttl.map(|s| s.min(LONGEST)),
        delay: message.delay.map(|s| s.min(LONGEST)),
        ..message
    }
}

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

/// The error a refused consumer is answered with.
fn refused(why: Refused) -> Error {
    match why {
        Refused::ShuttingDown => Error::ShuttingDown,
        Refused::TooMany { limit } => Error::TooManyConsumers { limit },
        Refused::TooManyOfQueue { limit } => Error::TooManyQueueConsumers { limit },
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

    /// Messages moved to dead-letter queues since the store opened, by the
    /// queue they left.
    pub fn dead_lettered(&self) -> Vec<(String, u64)> {
        self.store.dead_lettered()
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
        let ids = self
            .store
            .publish(queue.as_str(), vec![bounded(message)])
            .await?;
        self.hub.kick(queue);
        match ids[..] {
            [id] => Ok(id),
            _ => Err(Error::Store(StoreError::Corrupted(
                "the store answered one publish with a wrong number of keys".into(),
            ))),
        }
    }

    /// Appends messages to `queue`, all or none; returns their numbers in order.
    pub async fn publish_batch(
        &self,
        queue: &QueueName,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<u64>, Error> {
        let messages = messages.into_iter().map(bounded).collect();
        let ids = self.store.publish(queue.as_str(), messages).await?;
        self.hub.kick(queue);
        Ok(ids)
    }

    /// Removes and returns the head of `queue`.
    pub async fn pop(&self, queue: &QueueName) -> Result<Option<Message>, Error> {
        Ok(self.store.pop(queue.as_str()).await?)
    }

    /// Removes and returns up to `max` messages from the head of `queue`.
    pub async fn pop_many(&self, queue: &QueueName, max: usize) -> Result<Vec<Message>, Error> {
        Ok(self.store.pop_many(queue.as_str(), max).await?)
    }

    /// Receives up to `max` messages of `queue`, each hidden for `visibility`
    /// seconds (the queue's setting when `None`), with its receipt.
    pub async fn receive(
        &self,
        queue: &QueueName,
        max: usize,
        visibility: Option<u64>,
    ) -> Result<Vec<(Received, Receipt)>, Error> {
        let visibility = match visibility {
            Some(seconds) => seconds,
            None => self.store.config(queue.as_str()).await?.visibility,
        }
        .min(LONGEST);
        let received = self
            .store
            .receive(queue.as_str(), max, visibility * 1000)
            .await?;
        Ok(received
            .into_iter()
            .map(|r| {
                let receipt = Receipt {
                    queue: queue.clone(),
                    id: r.message.id,
                    delivery: r.delivery,
                };
                (r, receipt)
            })
            .collect())
    }

    /// Waits up to `wait` for `take` to find something: it is tried at once, then
    /// whenever a message arrives (a publish, a release, another server's
    /// announcement) or a hidden one comes due.
    pub async fn wait_for<T, F, Fut>(
        &self,
        queue: &QueueName,
        wait: Duration,
        mut take: F,
    ) -> Result<Vec<T>, Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Vec<T>, Error>>,
    {
        let deadline = tokio::time::Instant::now() + wait;
        let arrivals = self.hub.arrivals(queue);
        let mut parked = None;
        loop {
            let arrival = arrivals.notified();
            tokio::pin!(arrival);
            arrival.as_mut().enable();
            let got = take().await?;
            let now = tokio::time::Instant::now();
            // At shutdown, a long poll answers with what it has (maybe
            // nothing) while its connection can still carry the answer.
            if !got.is_empty() || now >= deadline || self.hub.closing() {
                return Ok(got);
            }
            let mut until = deadline;
            if let Some(due) = self.store.next_due(queue.as_str()).await? {
                let wall = crate::store::now_millis();
                let after = Duration::from_millis(due.saturating_sub(wall));
                until = until.min(now + after);
            }
            parked.get_or_insert_with(|| self.hub.park(queue));
            tokio::select! {
                () = arrival => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Acknowledges deliveries: their messages are deleted. If one of a queue's
    /// receipts is stale, none of that queue's is acknowledged, and the stale
    /// ones are reported.
    pub async fn ack(&self, receipts: &[Receipt]) -> Result<(), Error> {
        let mut by_queue: Vec<(&QueueName, Vec<(u64, u32)>)> = Vec::new();
        for receipt in receipts {
            match by_queue.iter_mut().find(|(q, _)| *q == &receipt.queue) {
                Some((_, list)) => list.push((receipt.id, receipt.delivery)),
                None => by_queue.push((&receipt.queue, vec![(receipt.id, receipt.delivery)])),
            }
        }
        let mut stale = Vec::new();
        for (queue, list) in by_queue {
            for (id, delivery) in self.store.ack(queue.as_str(), list).await? {
                stale.push(Receipt {
                    queue: queue.clone(),
                    id,
                    delivery,
                });
            }
        }
        if stale.is_empty() {
            Ok(())
        } else {
            Err(Error::StaleReceipts(
                stale.iter().map(ToString::to_string).collect(),
            ))
        }
    }

    /// Releases a delivery: its message is visible again after `delay` seconds.
    pub async fn nack(&self, receipt: &Receipt, delay: u64) -> Result<(), Error> {
        let queue = receipt.queue.as_str();
        let done = self
            .store
            .nack(
                queue,
                receipt.id,
                receipt.delivery,
                delay.min(LONGEST) * 1000,
            )
            .await?;
        if !done {
            return Err(Error::StaleReceipts(vec![receipt.to_string()]));
        }
        self.hub.kick(&receipt.queue);
        Ok(())
    }

    /// Hides a delivered message `visibility` more seconds from now.
    pub async fn extend(&self, receipt: &Receipt, visibility: u64) -> Result<(), Error> {
        let queue = receipt.queue.as_str();
        let done = self
            .store
            .extend(
                queue,
                receipt.id,
                receipt.delivery,
                visibility.min(LONGEST) * 1000,
            )
            .await?;
        if done {
            Ok(())
        } else {
            Err(Error::StaleReceipts(vec![receipt.to_string()]))
        }
    }

    /// The settings of `queue`.
    pub async fn config(&self, queue: &QueueName) -> Result<QueueConfig, Error> {
        Ok(self.store.config(queue.as_str()).await?)
    }

    /// Sets the settings of `queue`; its dead-letter queue must be a valid name
    /// other than the queue's own.
    pub async fn set_config(&self, queue: &QueueName, config: QueueConfig) -> Result<(), Error> {
        let dead = QueueName::parse(&config.dead_letter_of(queue.as_str())).map_err(|_| {
            Error::InvalidParameter {
                name: "dead_letter",
                reason: "it must be a valid queue name",
            }
        })?;
        if &dead == queue {
            return Err(Error::InvalidParameter {
                name: "dead_letter",
                reason: "it must be another queue",
            });
        }
        Ok(self.store.set_config(queue.as_str(), config).await?)
    }

    /// Moves every message of `queue`'s dead-letter queue back to `queue`;
    /// returns the dead-letter queue and how many moved.
    pub async fn redrive(&self, queue: &QueueName) -> Result<(String, u64), Error> {
        let dead = self
            .store
            .config(queue.as_str())
            .await?
            .dead_letter_of(queue.as_str());
        let moved = self.store.redrive(&dead, queue.as_str()).await?;
        if moved > 0 {
            self.hub.kick(queue);
        }
        Ok((dead, moved))
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

    /// Receives for a consumer that takes its own messages (a WebSocket with
    /// acknowledgements): nothing while `queue` is stopped, and a stop, once
    /// answered, is not overtaken by a receive that read the status before it.
    pub async fn receive_unless_stopped(
        &self,
        queue: &QueueName,
        max: usize,
        visibility: Option<u64>,
    ) -> Result<Vec<(Received, Receipt)>, Error> {
        self.hub
            .in_pass(queue, async {
                let status = self
                    .store
                    .queue(queue.as_str())
                    .await?
                    .and_then(|i| i.status);
                if status == Some(Status::Stopped) {
                    return Ok(Vec::new());
                }
                self.receive(queue, max, visibility).await
            })
            .await
    }

    /// Starts or stops streaming delivery of `queue`; starting delivers the backlog.
    pub async fn set_status(&self, queue: &QueueName, status: Status) -> Result<(), Error> {
        self.store.set_status(queue.as_str(), status).await?;
        match status {
            Status::Started => self.hub.kick(queue),
            Status::Stopped => self.hub.settle(queue).await,
        }
        Ok(())
    }

    /// Connects a streaming consumer to `queue`; refused while shutting down or
    /// when a consumer limit is reached.
    pub fn subscribe(&self, queue: &QueueName, resume: Resume) -> Result<Subscription, Error> {
        self.hub.subscribe(queue, resume).map_err(refused)
    }

    /// Registers a consumer of `queue` that receives its messages itself, to be
    /// counted, limited and ended like the streamed ones.
    pub fn watch(&self, queue: &QueueName) -> Result<Subscription, Error> {
        self.hub.watch(queue).map_err(refused)
    }

    /// What wakes those waiting for messages of `queue` (a publish, a release,
    /// a resume, another server's announcement).
    pub fn arrivals(&self, queue: &QueueName) -> Arc<tokio::sync::Notify> {
        self.hub.arrivals(queue)
    }

    /// When the next hidden message of `queue` comes due, on the wall clock.
    pub async fn next_due(&self, queue: &QueueName) -> Result<Option<u64>, Error> {
        Ok(self.store.next_due(queue.as_str()).await?)
    }

    /// Long-polling requests waiting on `queue` now.
    pub fn waiting(&self, queue: &QueueName) -> usize {
        self.hub.waiting(queue)
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
