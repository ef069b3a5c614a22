//! Streaming delivery: the consumers connected to each queue, and the dispatcher
//! that feeds them.
//!
//! Each queue with consumers has one dispatcher task, the only one that takes
//! messages from the store for streaming. A publish wakes it once the store has
//! the message; it then pops what its consumers have room for and hands each
//! message to every consumer (broadcast) or to the next one in turn with room
//! (roundrobin). Nothing polls: the dispatcher sleeps until a publish, a
//! resume, a new consumer or a consumer with a full buffer catching up wakes it.
//!
//! A message in consumers' buffers is a [`Delivery`] counting its holders. A
//! consumer marks it written when it hands it to its connection; if every holder
//! lets go of it unwritten (their connections closed first), the message goes back
//! to its queue, under its own key, and the dispatcher is woken to deliver it again.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::sync::{Notify, mpsc};

use super::QueueName;
use crate::store::{Message, Policy, Status, Store};

/// Messages popped from the store in one go for streaming, at most.
const POP_BATCH: usize = 64;
/// First pause before a dispatcher retries after the store failed; it doubles
/// up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Limits of streaming delivery.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Messages buffered for one consumer; a broadcast consumer whose buffer is
    /// full is disconnected as too slow.
    pub consumer_buffer: usize,
    /// Recently streamed messages kept per queue for SSE clients that resume.
    pub resume_buffer: usize,
    /// Consumers of every queue together, at most; `None`: no limit but the
    /// connections'.
    pub max_consumers: Option<usize>,
    /// Consumers of one queue, at most; `None`: no limit of its own.
    pub max_queue_consumers: Option<usize>,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            consumer_buffer: 1000,
            resume_buffer: 100,
            max_consumers: None,
            max_queue_consumers: None,
        }
    }
}

/// Why a consumer was not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The server is shutting down.
    ShuttingDown,
    /// The server has [`StreamLimits::max_consumers`] consumers already.
    TooMany {
        /// The limit.
        limit: usize,
    },
    /// The queue has [`StreamLimits::max_queue_consumers`] consumers already.
    TooManyOfQueue {
        /// The limit.
        limit: usize,
    },
}

/// Why a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The queue was deleted (`DELETE /q/<q>`): streams send a last `null`.
    Deleted,
    /// The server is shutting down.
    Shutdown,
    /// The consumer fell too far behind (its buffer was full).
    TooSlow,
}

impl End {
    fn code(self) -> u8 {
        match self {
            End::Deleted => 1,
            End::Shutdown => 2,
            End::TooSlow => 3,
        }
    }

    fn from_code(code: u8) -> Option<End> {
        match code {
            1 => Some(End::Deleted),
            2 => Some(End::Shutdown),
            3 => Some(End::TooSlow),
            _ => None,
        }
    }
}

/// A message as streamed: its key and its JSON form, made once for every consumer.
#[derive(Debug)]
pub struct Streamed {
    /// The message's number.
    pub id: u64,
    /// `<queue>:<id>`.
    pub key: String,
    /// `{"key":…,"value":…}`.
    pub json: Bytes,
}

impl Streamed {
    fn new(queue: &QueueName, message: &Message) -> Streamed {
        let key = queue.key(message.id);
        let mut json = String::with_capacity(key.len() + message.value.len() + 32);
        crate::json::open_message(&mut json, &key, &message.value);
        json.push('}');
        Streamed {
            id: message.id,
            key,
            json: Bytes::from(json),
        }
    }
}

/// A message handed to consumers, shared by all of them.
pub struct Delivery {
    /// What consumers send.
    pub streamed: Arc<Streamed>,
    message: Message,
    queue: Arc<QueueName>,
    /// Consumers holding it, plus the dispatcher while it hands it out.
    holders: AtomicUsize,
    /// Whether some consumer handed it to its connection.
    written: AtomicBool,
    /// Where it goes back if nobody writes it; `None` for a message another
    /// server took from its queue and shared.
    returns: Option<mpsc::UnboundedSender<Return>>,
}

impl Delivery {
    /// A message of `queue` to hand out, held `holders` times to begin with;
    /// `returns` is where it goes back if nobody writes it.
    fn new(
        queue: &Arc<QueueName>,
        message: Message,
        holders: usize,
        returns: Option<mpsc::UnboundedSender<Return>>,
    ) -> Arc<Delivery> {
        Arc::new(Delivery {
            streamed: Arc::new(Streamed::new(queue, &message)),
            message,
            queue: queue.clone(),
            holders: AtomicUsize::new(holders),
            written: AtomicBool::new(false),
            returns,
        })
    }

    /// Lets go of one hold; true when this was the last and nobody wrote it.
    fn release(&self) -> bool {
        self.holders.fetch_sub(1, Ordering::AcqRel) == 1 && !self.written.load(Ordering::Acquire)
    }
}

/// One consumer's hold on a [`Delivery`]. Dropping it unwritten counts as the
/// consumer never getting the message.
pub struct Held(Option<Arc<Delivery>>);

impl Held {
    fn new(delivery: &Arc<Delivery>) -> Held {
        delivery.holders.fetch_add(1, Ordering::AcqRel);
        Held(Some(delivery.clone()))
    }

    /// The message to send.
    pub fn streamed(&self) -> Option<&Arc<Streamed>> {
        self.0.as_ref().map(|d| &d.streamed)
    }

    /// The consumer handed the message to its connection.
    pub fn written(mut self) {
        if let Some(delivery) = self.0.take() {
            delivery.written.store(true, Ordering::Release);
            delivery.release();
        }
    }

    /// Lets go without sending the message back to its queue (it was purged,
    /// or the dispatcher takes care of it).
    fn discard(mut self) {
        if let Some(delivery) = self.0.take() {
            delivery.holders.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(delivery) = self.0.take() {
            if let (true, Some(returns)) = (delivery.release(), &delivery.returns) {
                // The receiving end lives as long as the hub; if it is gone the
                // server is past shutdown and the store closed.
                let _ = returns.send(Return::Message {
                    queue: delivery.queue.clone(),
                    message: delivery.message.clone(),
                });
            }
        }
    }
}

/// What the returner is asked to do.
enum Return {
    /// Put a message back into its queue.
    Message {
        queue: Arc<QueueName>,
        message: Message,
    },
    /// Answer once everything sent before is back in its queue.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// What a consumer and its dispatcher share.
struct Link {
    /// Why the stream must end now, as an [`End`] code; 0 while it runs.
    end: AtomicU8,
    /// The consumer's task, woken when the stream ends: registered on every
    /// wait, which costs an atomic swap where a `Notify` takes a lock twice.
    waker: AtomicWaker,
}

impl Link {
    fn end(&self, why: End) {
        if self
            .end
            .compare_exchange(0, why.code(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.waker.wake();
        }
    }

    fn ended(&self) -> Option<End> {
        End::from_code(self.end.load(Ordering::Acquire))
    }
}

/// The dispatcher's side of a consumer.
struct Consumer {
    tx: mpsc::Sender<Held>,
    link: Arc<Link>,
    /// A consumer that takes messages itself (a WebSocket with acknowledgements):
    /// the dispatcher feeds it nothing, only ends it.
    passive: bool,
}

/// A queue's streaming state, guarded by one lock.
struct Streams {
    consumers: Vec<Consumer>,
    /// Recently streamed messages, oldest first, for SSE resumption.
    recent: VecDeque<Arc<Streamed>>,
    /// Whether a dispatcher task is running for the queue.
    running: bool,
    /// Next consumer in turn under roundrobin.
    turn: usize,
}

/// One queue's slot in the hub.
struct Slot {
    name: Arc<QueueName>,
    wake: Notify,
    /// Wakes long-polling requests: messages may have arrived.
    arrivals: Arc<Notify>,
    /// Long-polling requests parked on the queue now.
    waiting: AtomicUsize,
    /// Subscriptions of the queue alive (ended ones included until dropped),
    /// for [`StreamLimits::max_queue_consumers`].
    subscribed: AtomicUsize,
    streams: Mutex<Streams>,
    /// Held by the dispatcher for each pass, from reading the queue's status
    /// to handing out (or putting back) what it popped, so that a pause can
    /// wait for a pass that read the status before it.
    pass: tokio::sync::Mutex<()>,
}

impl Slot {
    fn streams(&self) -> std::sync::MutexGuard<'_, Streams> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A long-polling request counted as parked on its queue until dropped.
pub struct Parked(Arc<Slot>);

impl Drop for Parked {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a resuming consumer starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Only what is streamed from now on.
    Live,
    /// After the message with this number.
    After(u64),
}

/// A consumer's end of its stream.
pub struct Subscription {
    /// Messages streamed before it connected that a resume asked for, oldest first.
    pub replay: VecDeque<Arc<Streamed>>,
    /// Set when the resume point is older than what the hub kept: the number asked
    /// for, and the oldest key kept (`None` when nothing is kept).
    pub gap: Option<(u64, Option<String>)>,
    rx: mpsc::Receiver<Held>,
    link: Arc<Link>,
    slot: Arc<Slot>,
    hub: Arc<Inner>,
}

/// What a consumer gets next.
pub enum Next {
    /// A message to send; mark it [`Held::written`] once handed to the connection.
    Message(Held),
    /// The stream is over.
    End(Option<End>),
}

impl Subscription {
    /// Waits for the next message, or the end of the stream.
    pub async fn next(&mut self) -> Next {
        std::future::poll_fn(|cx| {
            // Registered before looking: an end after the look wakes us.
            self.link.waker.register(cx.waker());
            if let Some(why) = self.link.ended() {
                return Poll::Ready(Next::End(Some(why)));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(held)) => {
                    // A full buffer stopped the dispatcher; now there is room.
                    if self.rx.len() + 1 == self.rx.max_capacity() {
                        self.slot.wake.notify_one();
                    }
                    Poll::Ready(Next::Message(held))
                }
                Poll::Ready(None) => Poll::Ready(Next::End(self.link.ended())),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// A message already waiting, without waiting for one.
    pub fn try_next(&mut self) -> Option<Held> {
        if self.link.ended().is_some() {
            return None;
        }
        self.rx.try_recv().ok()
    }

    /// Why the stream ended, if it did.
    pub fn ended(&self) -> Option<End> {
        self.link.ended()
    }

    /// The queue streamed.
    pub fn queue(&self) -> &QueueName {
        &self.slot.name
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let deleted = self.link.ended() == Some(End::Deleted);
        self.link.end(End::Shutdown);
        self.rx.close();
        while let Ok(held) = self.rx.try_recv() {
            if deleted {
                held.discard();
            } else {
                drop(held);
            }
        }
        // Lets the dispatcher drop this consumer, and stop if it was the last.
        self.slot.wake.notify_one();
        self.slot.subscribed.fetch_sub(1, Ordering::AcqRel);
        self.hub.release();
    }
}

struct Inner {
    store: Arc<dyn Store>,
    limits: StreamLimits,
    slots: RwLock<HashMap<Arc<QueueName>, Arc<Slot>>>,
    returns: mpsc::UnboundedSender<Return>,
    /// Subscriptions alive.
    live: AtomicUsize,
    idle: Notify,
    /// Set at shutdown: no new subscriptions.
    closing: AtomicBool,
}

/// The streaming consumers of every queue. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl Hub {
    /// A hub over `store`; must be created inside a tokio runtime.
    pub fn new(store: Arc<dyn Store>, limits: StreamLimits) -> Hub {
        let (returns, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            store,
            limits,
            slots: RwLock::new(HashMap::new()),
            returns,
            live: AtomicUsize::new(0),
            idle: Notify::new(),
            closing: AtomicBool::new(false),
        });
        tokio::spawn(return_loop(Arc::downgrade(&inner), rx));
        Hub { inner }
    }

    /// Wakes the queue's dispatcher, if it has one: a message arrived or the
    /// queue was resumed.
    pub fn kick(&self, queue: &QueueName) {
        self.inner.kick(queue);
    }

    /// Waits for a dispatcher pass of `queue` in progress to finish: once a
    /// pause is stored, a pass that read the status before it could still
    /// pop what is published after the pause returns.
    pub async fn settle(&self, queue: &QueueName) {
        let slot = read(&self.inner.slots).get(queue).cloned();
        if let Some(slot) = slot {
            drop(slot.pass.lock().await);
        }
    }

    /// Runs `pass` as a pass of `queue`, as the dispatcher runs its own: a
    /// pause waits ([`Hub::settle`]) for a pass that read the status before it.
    pub async fn in_pass<T>(&self, queue: &QueueName, pass: impl Future<Output = T>) -> T {
        let slot = read(&self.inner.slots).get(queue).cloned();
        match slot {
            Some(slot) => {
                let _pass = slot.pass.lock().await;
                pass.await
            }
            None => pass.await,
        }
    }

    /// Registers a consumer of `queue`; refused when shutting down or when a
    /// consumer limit is reached.
    pub fn subscribe(&self, queue: &QueueName, resume: Resume) -> Result<Subscription, Refused> {
        self.register(queue, resume, false)
    }

    /// Registers a consumer of `queue` that takes its messages itself: it is
    /// counted, limited and ended (queue deleted, shutdown) like the others, but
    /// fed nothing.
    pub fn watch(&self, queue: &QueueName) -> Result<Subscription, Refused> {
        self.register(queue, Resume::Live, true)
    }

    fn register(
        &self,
        queue: &QueueName,
        resume: Resume,
        passive: bool,
    ) -> Result<Subscription, Refused> {
        let inner = &self.inner;
        if inner.closing.load(Ordering::Acquire) {
            return Err(Refused::ShuttingDown);
        }
        let slot = inner.slot(queue);
        // Each count is taken only if it stays within its limit, so that
        // consumers registering at once cannot together go past it.
        let limits = inner.limits;
        if !take_one(&inner.live, limits.max_consumers) {
            return Err(Refused::TooMany {
                limit: limits.max_consumers.unwrap_or(usize::MAX),
            });
        }
        if !take_one(&slot.subscribed, limits.max_queue_consumers) {
            inner.release();
            return Err(Refused::TooManyOfQueue {
                limit: limits.max_queue_consumers.unwrap_or(usize::MAX),
            });
        }
        let (tx, rx) = mpsc::channel(inner.limits.consumer_buffer.max(1));
        let link = Arc::new(Link {
            end: AtomicU8::new(0),
            waker: AtomicWaker::new(),
        });
        let mut replay = VecDeque::new();
        let mut gap = None;
        let spawn = {
            let mut streams = slot.streams();
            if let Resume::After(after) = resume {
                match (streams.recent.front(), streams.recent.back()) {
                    (Some(oldest), Some(newest)) if after < newest.id => {
                        if after + 1 < oldest.id {
                            gap = Some((after, Some(oldest.key.clone())));
                        }
                        replay.extend(streams.recent.iter().filter(|s| s.id > after).cloned());
                    }
                    (Some(_), Some(_)) => {}
                    _ => gap = Some((after, None)),
                }
            }
            streams.consumers.push(Consumer {
                tx,
                link: link.clone(),
                passive,
            });
            !std::mem::replace(&mut streams.running, true)
        };
        if spawn {
            tokio::spawn(dispatch(inner.clone(), slot.clone()));
        } else {
            slot.wake.notify_one();
        }
        Ok(Subscription {
            replay,
            gap,
            rx,
            link,
            slot,
            hub: inner.clone(),
        })
    }

    /// Ends every stream of `queue` (they send a last `null`) and drops what their
    /// buffers hold; the caller then purges the queue.
    pub fn close_queue(&self, queue: &QueueName) {
        let slot = read(&self.inner.slots).get(queue).cloned();
        if let Some(slot) = slot {
            let mut streams = slot.streams();
            for consumer in streams.consumers.drain(..) {
                consumer.link.end(End::Deleted);
            }
            streams.recent.clear();
        }
    }

    /// Hands broadcast messages another server took from `queue` to this
    /// server's consumers; nothing goes back to the queue from here.
    pub fn deliver_shared(&self, queue: &QueueName, messages: Vec<Message>) {
        let Some(slot) = read(&self.inner.slots).get(queue).cloned() else {
            return;
        };
        let mut streams = slot.streams();
        for message in messages {
            let delivery = Delivery::new(&slot.name, message, 0, None);
            if broadcast(&mut streams, &delivery) {
                remember(
                    &mut streams,
                    &delivery.streamed,
                    self.inner.limits.resume_buffer,
                );
            }
        }
    }

    /// Wakes every dispatcher and long poll: announcements may have been missed.
    pub fn kick_all(&self) {
        for slot in read(&self.inner.slots).values() {
            slot.wake.notify_one();
            slot.arrivals.notify_waiters();
        }
    }

    /// What wakes requests waiting for messages of `queue`.
    pub fn arrivals(&self, queue: &QueueName) -> Arc<Notify> {
        self.inner.slot(queue).arrivals.clone()
    }

    /// Counts a long-polling request parked on `queue` while the guard lives.
    pub fn park(&self, queue: &QueueName) -> Parked {
        let slot = self.inner.slot(queue);
        slot.waiting.fetch_add(1, Ordering::Relaxed);
        Parked(slot)
    }

    /// Long-polling requests parked on `queue` now.
    pub fn waiting(&self, queue: &QueueName) -> usize {
        read(&self.inner.slots)
            .get(queue)
            .map_or(0, |slot| slot.waiting.load(Ordering::Relaxed))
    }

    /// Consumers of `queue` connected now.
    pub fn consumers(&self, queue: &QueueName) -> usize {
        read(&self.inner.slots)
            .get(queue)
            .map_or(0, |slot| slot.streams().consumers.len())
    }

    /// Whether the server is shutting down.
    pub fn closing(&self) -> bool {
        self.inner.closing.load(Ordering::Acquire)
    }

    /// Ends every stream for shutdown, and wakes every long poll so that it
    /// answers now rather than be cut off; new subscriptions are refused.
    pub fn end_all(&self) {
        let inner = &self.inner;
        inner.closing.store(true, Ordering::Release);
        let slots: Vec<Arc<Slot>> = read(&inner.slots).values().cloned().collect();
        for slot in slots {
            slot.arrivals.notify_waiters();
            let mut streams = slot.streams();
            for consumer in streams.consumers.drain(..) {
                consumer.link.end(End::Shutdown);
            }
            drop(streams);
            slot.wake.notify_one();
        }
    }

    /// Waits (up to `grace`) until every stream is gone and the messages they did
    /// not send are back in their queues.
    pub async fn closed(&self, grace: std::time::Duration) {
        let inner = &self.inner;
        let all_gone = async {
            loop {
                let idle = inner.idle.notified();
                if inner.live.load(Ordering::Acquire) == 0 {
                    break;
                }
                idle.await;
            }
        };
        if tokio::time::timeout(grace, all_gone).await.is_err() {
            tracing::warn!(
                streams = inner.live.load(Ordering::Acquire),
                "streams still open at shutdown"
            );
        }
        let (flushed, done) = tokio::sync::oneshot::channel();
        if inner.returns.send(Return::Flush(flushed)).is_ok()
            && tokio::time::timeout(grace, done).await.is_err()
        {
            tracing::warn!("undelivered messages still being returned at shutdown");
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Adds one to `count` unless that would take it past `limit`; true when added.
fn take_one(count: &AtomicUsize, limit: Option<usize>) -> bool {
    let limit = limit.unwrap_or(usize::MAX);
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_ok()
}

impl Inner {
    /// A subscription is gone: uncounts it, and wakes shutdown when it was the last.
    fn release(&self) {
        if self.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    fn kick(&self, queue: &QueueName) {
        if let Some(slot) = read(&self.slots).get(queue) {
            slot.wake.notify_one();
            slot.arrivals.notify_waiters();
        }
    }

    fn slot(&self, queue: &QueueName) -> Arc<Slot> {
        if let Some(slot) = read(&self.slots).get(queue) {
            return slot.clone();
        }
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        slots
            .entry(Arc::new(queue.clone()))
            .or_insert_with_key(|name| {
                Arc::new(Slot {
                    name: name.clone(),
                    wake: Notify::new(),
                    arrivals: Arc::new(Notify::new()),
                    waiting: AtomicUsize::new(0),
                    subscribed: AtomicUsize::new(0),
                    pass: tokio::sync::Mutex::new(()),
                    streams: Mutex::new(Streams {
                        consumers: Vec::new(),
                        recent: VecDeque::new(),
                        running: false,
                        turn: 0,
                    }),
                })
            })
            .clone()
    }
}

/// Puts back the messages whose consumers went away, then wakes their queues.
async fn return_loop(hub: std::sync::Weak<Inner>, mut rx: mpsc::UnboundedReceiver<Return>) {
    while let Some(first) = rx.recv().await {
        let mut by_queue: HashMap<Arc<QueueName>, Vec<Message>> = HashMap::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(request) = next {
            match request {
                Return::Message { queue, message } => {
                    by_queue.entry(queue).or_default().push(message);
                }
                Return::Flush(done) => flushes.push(done),
            }
            next = rx.try_recv().ok();
        }
        let Some(hub) = hub.upgrade() else { return };
        for (queue, mut messages) in by_queue {
            messages.sort_by_key(|m| m.id);
            let count = messages.len();
            match hub.store.restore(queue.as_str(), messages).await {
                Ok(()) => tracing::debug!(%queue, count, "returned undelivered messages"),
                Err(e) => {
                    tracing::error!(%queue, count, error = %e, "cannot return undelivered messages")
                }
            }
            hub.kick(&queue);
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// A queue's dispatcher: runs while the queue has consumers.
async fn dispatch(hub: Arc<Inner>, slot: Arc<Slot>) {
    let mut retry = None;
    loop {
        match drain(&hub, &slot).await {
            Ok(()) => retry = None,
            Err(e) => {
                // The store failed (Redis restarting, say): what woke us must
                // not be lost, so try again, backing off, until it works.
                let delay = retry.map_or(RETRY_FIRST, |d: Duration| (d * 2).min(RETRY_MAX));
                tracing::warn!(queue = %slot.name, error = %e, ?delay, "streaming delivery failed; retrying");
                retry = Some(delay);
            }
        }
        {
            let mut streams = slot.streams();
            streams
                .consumers
                .retain(|c| !c.tx.is_closed() && c.link.ended().is_none());
            if streams.consumers.is_empty() {
                streams.running = false;
                return;
            }
        }
        match retry {
            None => slot.wake.notified().await,
            Some(delay) => {
                tokio::select! {
                    () = slot.wake.notified() => {}
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Streams what the queue holds while its consumers have room.
async fn drain(hub: &Inner, slot: &Slot) -> Result<(), crate::store::StoreError> {
    let queue = slot.name.as_str();
    loop {
        let _pass = slot.pass.lock().await;
        let info = hub.store.queue(queue).await?.unwrap_or_default();
        if info.status == Some(Status::Stopped) {
            return Ok(());
        }
        let policy = info.policy.unwrap_or(Policy::Broadcast);
        let room = {
            let mut streams = slot.streams();
            streams
                .consumers
                .retain(|c| !c.tx.is_closed() && c.link.ended().is_none());
            match policy {
                // Every consumer gets every message: pop what the roomiest can
                // take; one with less room that fills up is behind, and ends.
                Policy::Broadcast => streams
                    .consumers
                    .iter()
                    .filter(|c| !c.passive)
                    .map(|c| c.tx.capacity())
                    .max()
                    .unwrap_or(0)
                    .min(POP_BATCH),
                Policy::RoundRobin => streams
                    .consumers
                    .iter()
                    .filter(|c| !c.passive)
                    .map(|c| c.tx.capacity())
                    .sum::<usize>()
                    .min(POP_BATCH),
            }
        };
        if room == 0 {
            return Ok(());
        }
        let messages = hub.store.pop_many(queue, room).await?;
        if messages.is_empty() {
            return Ok(());
        }
        // The status was read before the pop: a pause that landed in between
        // must hold these back. Read again; if paused now, put them back
        // (a pause after the pop may deliver or not, either is in order).
        let now = hub.store.queue(queue).await?.unwrap_or_default();
        if now.status == Some(Status::Stopped) {
            hub.store.restore(queue, messages).await?;
            return Ok(());
        }
        // Consumers of other servers sharing the store get broadcast messages too.
        let shared = (policy == Policy::Broadcast && hub.store.shared()).then(|| messages.clone());
        let undelivered = hand_out(hub, slot, policy, messages);
        if let Some(mut shared) = shared {
            shared.retain(|m| !undelivered.iter().any(|u| u.id == m.id));
            if !shared.is_empty() {
                if let Err(e) = hub.store.share(queue, &shared).await {
                    tracing::warn!(%queue, error = %e, "cannot share streamed messages");
                }
            }
        }
        if !undelivered.is_empty() {
            // Nobody could take them: back at the head, for the next consumer.
            hub.store.restore(queue, undelivered).await?;
            return Ok(());
        }
    }
}

/// Gives messages to consumers; returns those no consumer took.
fn hand_out(hub: &Inner, slot: &Slot, policy: Policy, messages: Vec<Message>) -> Vec<Message> {
    let mut undelivered = Vec::new();
    let mut streams = slot.streams();
    for message in messages {
        // Held once by the dispatcher itself while it hands the message out.
        let delivery = Delivery::new(&slot.name, message, 1, Some(hub.returns.clone()));
        let taken = match policy {
            Policy::Broadcast => broadcast(&mut streams, &delivery),
            Policy::RoundRobin => round_robin(&mut streams, &delivery),
        };
        if taken {
            remember(&mut streams, &delivery.streamed, hub.limits.resume_buffer);
        }
        // Dropping the dispatcher's hold: if no consumer took the message, or every
        // one already let go of it unwritten, it is the dispatcher's to put back.
        if delivery.release() {
            undelivered.push(delivery.message.clone());
        }
    }
    undelivered
}

/// Keeps a streamed message for SSE clients that resume.
fn remember(streams: &mut Streams, streamed: &Arc<Streamed>, keep: usize) {
    streams.recent.push_back(streamed.clone());
    while streams.recent.len() > keep {
        streams.recent.pop_front();
    }
}

/// Hands `delivery` to every consumer; a consumer with a full buffer is ended
/// as too slow. True when at least one took it.
fn broadcast(streams: &mut Streams, delivery: &Arc<Delivery>) -> bool {
    let mut taken = false;
    streams
        .consumers
        .retain(|consumer| match consumer.tx.try_send(Held::new(delivery)) {
            Ok(()) => {
                taken = true;
                true
            }
            Err(mpsc::error::TrySendError::Full(held)) => {
                held.discard();
                consumer.link.end(End::TooSlow);
                false
            }
            Err(mpsc::error::TrySendError::Closed(held)) => {
                held.discard();
                false
            }
        });
    taken
}

/// Hands `delivery` to the next consumer in turn with room. True when one took it.
fn round_robin(streams: &mut Streams, delivery: &Arc<Delivery>) -> bool {
    let count = streams.consumers.len();
    for step in 0..count {
        let at = (streams.turn + step) % count;
        if streams.consumers[at].passive {
            continue;
        }
        match streams.consumers[at].tx.try_send(Held::new(delivery)) {
            Ok(()) => {
                streams.turn = (at + 1) % count;
                return true;
            }
            Err(
                mpsc::error::TrySendError::Full(held) | mpsc::error::TrySendError::Closed(held),
            ) => {
                held.discard();
            }
        }
    }
    false
}
