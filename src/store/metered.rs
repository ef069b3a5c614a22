//! A store that measures another: how long each operation takes, and what
//! happens to each queue's messages, for `/metrics`. Counting here, where every
//! path to the queues passes (HTTP, commands, streams), keeps the counts whole.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

use super::{
    Message, NewMessage, Policy, QueueConfig, QueueInfo, Received, Status, Store, StoreEvent,
    StoreFuture,
};
use crate::metrics::{Metrics, QueueCounters, StoreOp};

/// `inner`, measured into `metrics`.
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    /// Measures `inner`.
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> MeteredStore {
        MeteredStore { inner, metrics }
    }

    /// Times `operation`; once it succeeds, `count` says what its outcome adds
    /// to the counters of `queue`.
    fn timed<'a, T: Send + 'a>(
        &'a self,
        operation: StoreOp,
        queue: &'a str,
        future: StoreFuture<'a, T>,
        count: impl FnOnce(&T) -> Tally + Send + 'a,
    ) -> StoreFuture<'a, T> {
        Box::pin(async move {
            let started = Instant::now();
            let result = future.await;
            self.metrics.store(operation, started.elapsed());
            if let Ok(value) = &result {
                let tally = count(value);
                // An empty pop, say, need not look its queue up.
                if tally != Tally::default() {
                    self.metrics.count(queue, |counters| tally.add_to(counters));
                }
            }
            result
        })
    }

    /// Times `operation`, counting nothing.
    fn just_timed<'a, T: Send + 'a>(
        &'a self,
        operation: StoreOp,
        future: StoreFuture<'a, T>,
    ) -> StoreFuture<'a, T> {
        Box::pin(async move {
            let started = Instant::now();
            let result = future.await;
            self.metrics.store(operation, started.elapsed());
            result
        })
    }
}

/// What an operation adds to its queue's counters.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    published: usize,
    consumed: usize,
    acked: usize,
    redelivered: usize,
    returned: usize,
}

impl Tally {
    fn add_to(&self, counters: &QueueCounters) {
        let add = |counter: &AtomicU64, n: usize| {
            if n > 0 {
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
        };
        add(&counters.published, self.published);
        add(&counters.consumed, self.consumed);
        add(&counters.acked, self.acked);
        add(&counters.redelivered, self.redelivered);
        add(&counters.returned, self.returned);
    }
}

impl Store for MeteredStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn publish<'a>(
        &'a self,
        queue: &'a str,
        messages: Vec<NewMessage>,
    ) -> StoreFuture<'a, Vec<u64>> {
        let inner = self.inner.publish(queue, messages);
        self.timed(StoreOp::Publish, queue, inner, |ids| Tally {
            published: ids.len(),
            ..Tally::default()
        })
    }

    fn pop<'a>(&'a self, queue: &'a str) -> StoreFuture<'a, Option<Message>> {
        let inner = self.inner.pop(queue);
        self.timed(StoreOp::Pop, queue, inner, |popped| Tally {
            consumed: usize::from(popped.is_some()),
            ..Tally::default()
        })
    }

    fn pop_many<'a>(&'a self, queue: &'a str, max: usize) -> StoreFuture<'a, Vec<Message>> {
        let inner = self.inner.pop_many(queue, max);
        self.timed(StoreOp::Pop, queue, inner, |popped| Tally {
            consumed: popped.len(),
            ..Tally::default()
        })
    }

    fn restore<'a>(&'a self, queue: &'a str, messages: Vec<Message>) -> StoreFuture<'a, ()> {
        let returned = messages.len();
        let inner = self.inner.restore(queue, messages);
        self.timed(StoreOp::Restore, queue, inner, move |()| Tally {
            returned,
            ..Tally::default()
        })
    }

    fn receive<'a>(
        &'a self,
        queue: &'a str,
        max: usize,
        visibility_ms: u64,
    ) -> StoreFuture<'a, Vec<Received>> {
        let inner = self.inner.receive(queue, max, visibility_ms);
        self.timed(StoreOp::Receive, queue, inner, |received| Tally {
            consumed: received.len(),
            redelivered: received.iter().filter(|r| r.delivery > 1).count(),
            ..Tally::default()
        })
    }

    fn ack<'a>(
        &'a self,
        queue: &'a str,
        receipts: Vec<(u64, u32)>,
    ) -> StoreFuture<'a, Vec<(u64, u32)>> {
        let asked = receipts.len();
        let inner = self.inner.ack(queue, receipts);
        // All or none: with any receipt stale, nothing was acknowledged.
        self.timed(StoreOp::Ack, queue, inner, move |stale| Tally {
            acked: if stale.is_empty() { asked } else { 0 },
            ..Tally::default()
        })
    }

    fn nack<'a>(
        &'a self,
        queue: &'a str,
        id: u64,
        delivery: u32,
        delay_ms: u64,
    ) -> StoreFuture<'a, bool> {
        self.just_timed(
            StoreOp::Nack,
            self.inner.nack(queue, id, delivery, delay_ms),
        )
    }

    fn extend<'a>(
        &'a self,
        queue: &'a str,
        id: u64,
        delivery: u32,
        visibility_ms: u64,
    ) -> StoreFuture<'a, bool> {
        self.just_timed(
            StoreOp::Extend,
            self.inner.extend(queue, id, delivery, visibility_ms),
        )
    }

    fn next_due<'a>(&'a self, queue: &'a str) -> StoreFuture<'a, Option<u64>> {
        self.just_timed(StoreOp::NextDue, self.inner.next_due(queue))
    }

    fn config<'a>(&'a self, queue: &'a str) -> StoreFuture<'a, QueueConfig> {
        self.just_timed(StoreOp::Config, self.inner.config(queue))
    }

    fn set_config<'a>(&'a self, queue: &'a str, config: QueueConfig) -> StoreFuture<'a, ()> {
        self.just_timed(StoreOp::SetConfig, self.inner.set_config(queue, config))
    }

    fn redrive<'a>(&'a self, from: &'a str, to: &'a str) -> StoreFuture<'a, u64> {
        self.just_timed(StoreOp::Redrive, self.inner.redrive(from, to))
    }

    fn peek<'a>(&'a self, queue: &'a str) -> StoreFuture<'a, Option<(Message, u64)>> {
        self.just_timed(StoreOp::Peek, self.inner.peek(queue))
    }

    fn delete<'a>(&'a self, queue: &'a str, id: u64) -> StoreFuture<'a, bool> {
        self.just_timed(StoreOp::Delete, self.inner.delete(queue, id))
    }

    fn purge<'a>(&'a self, queue: &'a str) -> StoreFuture<'a, bool> {
        self.just_timed(StoreOp::Purge, self.inner.purge(queue))
    }

    fn set_policy<'a>(&'a self, queue: &'a str, policy: Policy) -> StoreFuture<'a, ()> {
        self.just_timed(StoreOp::SetPolicy, self.inner.set_policy(queue, policy))
    }

    fn set_status<'a>(&'a self, queue: &'a str, status: Status) -> StoreFuture<'a, ()> {
        self.just_timed(StoreOp::SetStatus, self.inner.set_status(queue, status))
    }

    fn queue<'a>(&'a self, queue: &'a str) -> StoreFuture<'a, Option<QueueInfo>> {
        self.just_timed(StoreOp::Queue, self.inner.queue(queue))
    }

    fn queues(&self) -> StoreFuture<'_, Vec<(String, QueueInfo)>> {
        self.just_timed(StoreOp::Queues, self.inner.queues())
    }

    fn latest<'a>(&'a self, queue: &'a str, count: usize) -> StoreFuture<'a, Vec<Message>> {
        self.just_timed(StoreOp::Latest, self.inner.latest(queue, count))
    }

    fn close(&self) -> StoreFuture<'_, ()> {
        self.inner.close()
    }

    fn dead_lettered(&self) -> Vec<(String, u64)> {
        self.inner.dead_lettered()
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        self.just_timed(StoreOp::Ping, self.inner.ping())
    }

    fn events(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<StoreEvent>> {
        self.inner.events()
    }

    fn shared(&self) -> bool {
        self.inner.shared()
    }

    fn share<'a>(&'a self, queue: &'a str, messages: &'a [Message]) -> StoreFuture<'a, ()> {
        self.just_timed(StoreOp::Share, self.inner.share(queue, messages))
    }
}
