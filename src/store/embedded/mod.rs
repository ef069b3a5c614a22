//! The embedded store: queues in a redb file, written by one thread, made durable
//! by a write-ahead log with group commit.
//!
//! Every change goes to a single writer thread as a job. The writer takes every job
//! waiting, applies them in one redb transaction committed without fsync (a run of
//! pops of one queue in one pass over its head), appends the batch's changes to
//! the write-ahead log as one frame, fdatasyncs the log, and answers the jobs.
//! Jobs that arrive meanwhile wait for the next batch, so concurrent publishes
//! share one fsync (group commit), and an answered publish is on disk.
//!
//! The writer syncs the log itself rather than handing batches to a thread of
//! their own: overlapping the next batch with the sync made batches smaller and
//! cost two thread wake-ups per batch, which measured slower for small messages
//! and large ones alike (see `bench/NOTES.md`).
//!
//! Most pops skip the writer: the hand-off between threads costs more than
//! redb's work for a pop. The writer copies a popped queue's next messages into
//! memory, and the threads serving requests take them there, each recording
//! its pop in a file mapped into memory before answering, so that a killed
//! restmq does not bring it back (see `cache.rs`). Logging those pops with a
//! write to the log instead, one system call each on the connection threads,
//! measured slower than the writer's batched hand-off (see `bench/NOTES.md`).
//!
//! A job is answered only after every earlier batch is synced, so nothing can be
//! delivered before it is durable. Changes that need no durability of their own
//! (a pop, a peek) are logged too but do not wait for a sync of their own: a crash
//! can bring back a message popped in the last moments, never lose a published
//! one. A pop or receive that took only messages of earlier batches does not
//! wait for its own batch's sync either (see [`answer_settled`]).
//!
//! Since the log makes batches durable, redb's own commits need not follow them:
//! one redb transaction stays open across many batches and is committed (without
//! fsync) every [`BATCHES_PER_COMMIT`] batches, and durably only at checkpoints:
//! when the log fills up, at start (after replaying the log) and at close. Reads
//! that need the messages themselves run as writer jobs, on the open transaction.
//!
//! Queue metadata (id, counter, length, status, policy) lives in memory, owned by
//! the writer; readers see a snapshot the writer refreshes after each batch.

mod batch;
mod cache;
mod records;
mod wal;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::thread::JoinHandle;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use tokio::sync::{mpsc, oneshot};

use self::batch::{Batch, CONFIGS, DELIVERIES, DUE, HELD, MESSAGES, Meta, PEEKS, QUEUES};
use self::cache::PopCache;
use self::records::QueueMeta;
use self::wal::{Op, Wal};
use super::{
    Clock, Message, NewMessage, Policy, QueueConfig, QueueInfo, Received, Status, Store,
    StoreError, StoreFuture,
};

/// Where the log's position at the last checkpoint is kept.
const STATE: TableDefinition<&str, u64> = TableDefinition::new("state");
const WAL_GENERATION: &str = "wal_generation";
const WAL_LSN: &str = "wal_lsn";
/// Every record of the file of pops numbered below this is applied.
const POPS_APPLIED: &str = "pops_applied";

/// The files inside the data directory.
const DB_FILE: &str = "restmq.redb";
const WAL_FILE: &str = "restmq.wal";
/// The records of pops answered from the cache (see `cache.rs`).
const POPS_FILE: &str = "restmq.pops";
/// Jobs applied in one transaction at most; bounds a commit's size and latency.
const MAX_BATCH: usize = 4096;
/// Message bytes applied in one transaction at most, for the same reason.
const MAX_BATCH_BYTES: usize = 16 << 20;
/// Jobs waiting for the writer at most; publishers wait beyond that.
const QUEUE_DEPTH: usize = 16 * 1024;
/// Batches applied in one redb transaction before it is committed.
const BATCHES_PER_COMMIT: u32 = 128;
/// Log bytes written in one redb transaction before it is committed: bounds the
/// memory an open transaction holds.
const BYTES_PER_COMMIT: usize = 8 << 20;

/// How the embedded store writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// Sync the log before acknowledging publishes and other changes. When false,
    /// changes are acknowledged once written to the operating system: a crash of
    /// restmq loses nothing, a crash of the machine can lose the latest changes.
    pub fsync: bool,
    /// Memory redb keeps of the store's file, in bytes: its page cache and
    /// write buffer.
    pub cache_bytes: usize,
}

impl EmbeddedOptions {
    /// The default of [`EmbeddedOptions::cache_bytes`]: redb's own (1 GiB).
    pub const DEFAULT_CACHE_BYTES: usize = 1 << 30;
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            fsync: true,
            cache_bytes: Self::DEFAULT_CACHE_BYTES,
        }
    }
}

/// Queue storage in a redb file and a write-ahead log inside a data directory.
pub struct EmbeddedStore {
    jobs: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    cache: Arc<PopCache>,
    clock: Arc<dyn Clock>,
    dir: PathBuf,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// What readers share with the writer.
struct Shared {
    /// Metadata of every known queue, as of the last batch applied.
    meta: RwLock<HashMap<String, QueueMeta>>,
    /// Set when the log could not be written or synced: from then on every change
    /// is refused, since whether earlier ones reached the disk is unknown.
    failed: OnceLock<String>,
    /// Messages dead-lettered by the batches applied.
    dead_lettered: super::DeadLettered,
}

impl Shared {
    fn fail(&self, error: &StoreError) {
        if self.failed.set(error.to_string()).is_ok() {
            tracing::error!(error = %error, "the store stopped accepting changes; restart restmq");
        }
    }

    fn failure(&self) -> Option<StoreError> {
        self.failed.get().map(|why| {
            StoreError::Unavailable(format!(
                "the store stopped after an I/O error ({why}); restart restmq"
            ))
        })
    }
}

pub(super) fn db_error(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Corrupted(why) => StoreError::Corrupted(why),
        redb::Error::DatabaseAlreadyOpen => {
            StoreError::Unavailable("the data directory is in use by another process".into())
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

fn io_error(what: &str) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Unavailable(format!("{what}: {e}"))
}

/// Reads through a lock even if a thread panicked while holding it: the data
/// behind these locks is replaced whole, never left half-written.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir`, replaying its log; it reads
    /// the time from `clock`. Blocking: call it before serving or from a
    /// blocking task.
    pub fn open(
        dir: &Path,
        options: EmbeddedOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
        let db = Database::builder()
            .set_cache_size(options.cache_bytes)
            .create(dir.join(DB_FILE))
            .map_err(db_error)?;

        let mut txn = db.begin_write().map_err(db_error)?;
        txn.set_durability(Durability::None).map_err(db_error)?;
        txn.open_table(QUEUES).map_err(db_error)?;
        txn.open_table(MESSAGES).map_err(db_error)?;
        txn.open_table(PEEKS).map_err(db_error)?;
        txn.open_table(DELIVERIES).map_err(db_error)?;
        txn.open_table(HELD).map_err(db_error)?;
        txn.open_table(DUE).map_err(db_error)?;
        txn.open_table(CONFIGS).map_err(db_error)?;
        txn.open_table(STATE).map_err(db_error)?;
        txn.commit().map_err(db_error)?;

        let mut meta = Meta {
            queues: HashMap::new(),
            next_id: 1,
            configs: HashMap::new(),
            cache: Arc::new(PopCache::disabled()),
            pops_applied: 0,
        };
        let (generation, lsn, pops_applied) = {
            let txn = db.begin_read().map_err(db_error)?;
            let table = txn.open_table(QUEUES).map_err(db_error)?;
            for entry in table.iter().map_err(db_error)? {
                let (name, record) = entry.map_err(db_error)?;
                let record = QueueMeta::decode(record.value())?;
                meta.next_id = meta.next_id.max(record.id + 1);
                meta.queues.insert(name.value().to_owned(), record);
            }
            let configs = txn.open_table(CONFIGS).map_err(db_error)?;
            for entry in configs.iter().map_err(db_error)? {
                let (name, json) = entry.map_err(db_error)?;
                let config: QueueConfig = serde_json::from_slice(json.value())
                    .map_err(|e| StoreError::Corrupted(format!("unreadable settings: {e}")))?;
                meta.configs.insert(name.value().to_owned(), config);
            }
            let state = txn.open_table(STATE).map_err(db_error)?;
            let get = |key| -> Result<Option<u64>, StoreError> {
                Ok(state.get(key).map_err(db_error)?.map(|v| v.value()))
            };
            (
                get(WAL_GENERATION)?.unwrap_or(1),
                get(WAL_LSN)?.unwrap_or(0),
                get(POPS_APPLIED)?.unwrap_or(0),
            )
        };
        meta.pops_applied = pops_applied;

        let (wal, replay) = Wal::open(&dir.join(WAL_FILE), generation, lsn)?;
        let shared = Arc::new(Shared {
            meta: RwLock::new(HashMap::new()),
            failed: OnceLock::new(),
            dead_lettered: super::DeadLettered::default(),
        });
        let mut writer = Writer {
            db,
            meta,
            wal,
            clock: clock.clone(),
            fsync: options.fsync,
            shared: shared.clone(),
            pace: Pace::default(),
        };
        writer.recover(&replay)?;
        if !replay.is_empty() {
            tracing::info!(frames = replay.len(), "replayed the write-ahead log");
        }
        let pops = dir.join(POPS_FILE);
        let next = writer.recover_pops(&pops)?;
        let cache = Arc::new(PopCache::open(&pops, next));
        writer.meta.cache = cache.clone();
        *write(&shared.meta) = writer.meta.queues.clone();

        let (jobs, rx) = mpsc::channel(QUEUE_DEPTH);
        let handle = std::thread::Builder::new()
            .name("restmq-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(io_error("cannot start the writer"))?;
        Ok(EmbeddedStore {
            jobs,
            shared,
            cache,
            clock,
            dir: dir.to_owned(),
            writer: Mutex::new(Some(handle)),
        })
    }

    /// Runs `f` in the writer's next transaction and resolves once it is durable
    /// (or, for a job that is not `durable`, once every earlier change is).
    fn submit<'a, T, F>(&'a self, durable: bool, weight: usize, f: F) -> StoreFuture<'a, T>
    where
        T: Send + 'static,
        F: for<'b, 't> FnOnce(&'b mut Batch<'t>) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit_settled(durable, weight, f, |_: &T, _: &Batch<'_>| false)
    }

    /// As [`EmbeddedStore::submit`], with `settled` telling whether what the
    /// job returned was all there before its batch: then its answer need not
    /// wait for that batch's sync (see [`Work::waits_for`]).
    fn submit_settled<'a, T, F, S>(
        &'a self,
        durable: bool,
        weight: usize,
        f: F,
        settled: S,
    ) -> StoreFuture<'a, T>
    where
        T: Send + 'static,
        F: for<'b, 't> FnOnce(&'b mut Batch<'t>) -> Result<T, StoreError> + Send + 'static,
        S: Fn(&T, &Batch<'_>) -> bool + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let task = Task {
            durable,
            weight,
            f: Some(f),
            settled,
            out: None,
            tx,
        };
        Box::pin(self.run(Box::new(task), rx))
    }

    /// Sends `job` to the writer and waits for its answer on `rx`.
    async fn run<T>(
        &self,
        job: Box<dyn Work>,
        rx: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.jobs
            .send(Msg::Work(job))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Whether the queue may have messages to take (visible, or hidden ones that
    /// may have come due); lets empty pops skip the writer.
    fn has_waiting(&self, queue: &str) -> bool {
        read(&self.shared.meta)
            .get(queue)
            .is_some_and(|m| m.info.len + m.info.inflight + m.info.delayed > 0)
    }
}

impl Store for EmbeddedStore {
    fn describe(&self) -> String {
        format!("embedded redb {}", self.dir.display())
    }

    fn publish<'a>(
        &'a self,
        queue: &'a str,
        messages: Vec<NewMessage>,
    ) -> StoreFuture<'a, Vec<u64>> {
        let queue = queue.to_owned();
        let weight = messages.iter().map(|m| m.value.len()).sum();
        self.submit(true, weight, move |b| b.publish(&queue, &messages))
    }

    fn pop<'a>(&'a self, queue: &'a str) -> StoreFuture<'a, Option<Message>> {
        let popped = self.pop_many(queue, 1);
        Box::pin(async move { Ok(popped.await?.pop()) })
    }

    fn pop_many<'a>(&'a self, queue: &'a str, max: usize) -> StoreFuture<'a, Vec<Message>> {
        // Nothing is taken until the future runs, as with any other store.
        Box::pin(async move {
            if self.shared.failure().is_none() {
                let now = self.clock.now();
                if let Some(taken) = self.cache.take(queue, max, now, &self.shared.meta) {
                    if taken.refill {
                        // Not waited for; should the writer's queue be full,
                        // the cache runs dry and a pop through the writer
                        // fills it.
                        let job = RefillJob {
                            queue: queue.to_owned(),
                        };
                        let _ = self.jobs.try_send(Msg::Work(Box::new(job)));
                    }
                    return Ok(taken.messages);
                }
            }
            if !self.has_waiting(queue) {
                return Ok(Vec::new());
            }
            let (tx, rx) = oneshot::channel();
            let job = PopJob {
                queue: queue.to_owned(),
                max,
                out: None,
                tx,
            };
            self.run(Box::new(job), rx).await
        })
    }

    fn restore<'a>(&'a self, queue: &'a str, messages: Vec<Message>) -> StoreFuture<'a, ()> {
        let queue = queue.to_owned();
        let weight = messages.iter().map(|m| m.value.len()).sum();
        self.submit(true, weight, move |b| b.restore(&queue, &messages))
    }

    fn receive<'a>(
        &'a self,
        queue: &'a str,
        max: usize,
        visibility_ms: u64,
    ) -> StoreFuture<'a, Vec<Received>> {
        if !self.has_waiting(queue) {
            return Box::pin(async { Ok(Vec::new()) });
        }
        let queue = queue.to_owned();
        let name = queue.clone();
        self.submit_settled(
            false,
            0,
            move |b| b.receive(&queue, max, visibility_ms),
            move |received: &Vec<Received>, b: &Batch<'_>| {
                b.settled(&name, received.iter().map(|r| r.message.id))
            },
        )
    }

    fn ack<'a>(
        &'a self,
        queue: &'a str,
        receipts: Vec<(u64, u32)>,
    ) -> StoreFuture<'a, Vec<(u64, u32)>> {
        let queue = queue.to_owned();
        self.submit(true, 0, move |b| b.ack(&queue, &receipts))
    }

    fn nack<'a>(
        &'a self,
        queue: &'a str,
        id: u64,
        delivery: u32,
        delay_ms: u64,
    ) -> StoreFuture<'a, bool> {
        let queue = queue.to_owned();
        self.submit(true, 0, move |b| b.nack(&queue, id, delivery, delay_ms))
    }

    fn extend<'a>(
        &'a self,
        queue: &'a str,
        id: u64,
        delivery: u32,
        visibility_ms: u64,
    ) -> StoreFuture<'a, bool> {
        let queue = queue.to_owned();
        self.submit(true, 0, move |b| {
            b.extend(&queue, id, delivery, visibility_ms)
        })
    }

    fn next_due<'a>(&'a self, queue: &'a str) -> StoreFuture<'a, Option<u64>> {
        let hidden = read(&self.shared.meta)
            .get(queue)
            .is_some_and(|m| m.info.inflight + m.info.delayed > 0);
        if !hidden {
            return Box::pin(async { Ok(None) });
        }
        let queue = queue.to_owned();
        self.submit(false, 0, move |b| b.next_due(&queue))
    }

    fn config<'a>(&'a self, queue: &'a str) -> StoreFuture<'a, QueueConfig> {
        let queue = queue.to_owned();
        self.submit(false, 0, move |b| Ok(b.config(&queue)))
    }

    fn set_config<'a>(&'a self, queue: &'a str, config: QueueConfig) -> StoreFuture<'a, ()> {
        let queue = queue.to_owned();
        self.submit(true, 0, move |b| b.set_config(&queue, config))
    }

    fn redrive<'a>(&'a self, from: &'a str, to: &'a str) -> StoreFuture<'a, u64> {
        let (from, to) = (from.to_owned(), to.to_owned());
        self.submit(true, 0, move |b| b.redrive(&from, &to))
    }

    fn peek<'a>(&'a self, queue: &'a str) -> StoreFuture<'a, Option<(Message, u64)>> {
        if !self.has_waiting(queue) {
            return Box::pin(async { Ok(None) });
        }
        let queue = queue.to_owned();
        self.submit(false, 0, move |b| b.peek(&queue))
    }

    fn delete<'a>(&'a self, queue: &'a str, id: u64) -> StoreFuture<'a, bool> {
        let queue = queue.to_owned();
        self.submit(true, 0, move |b| b.delete(&queue, id))
    }

    fn purge<'a>(&'a self, queue: &'a str) -> StoreFuture<'a, bool> {
        let queue = queue.to_owned();
        self.submit(true, 0, move |b| b.purge(&queue))
    }

    fn set_policy<'a>(&'a self, queue: &'a str, policy: Policy) -> StoreFuture<'a, ()> {
        let queue = queue.to_owned();
        self.submit(true, 0, move |b| b.set_policy(&queue, policy))
    }

    fn set_status<'a>(&'a self, queue: &'a str, status: Status) -> StoreFuture<'a, ()> {
        let queue = queue.to_owned();
        self.submit(true, 0, move |b| b.set_status(&queue, status))
    }

    fn queue<'a>(&'a self, queue: &'a str) -> StoreFuture<'a, Option<QueueInfo>> {
        let info = read(&self.shared.meta).get(queue).map(|m| m.info);
        Box::pin(async move { Ok(info) })
    }

    fn queues(&self) -> StoreFuture<'_, Vec<(String, QueueInfo)>> {
        let mut all: Vec<(String, QueueInfo)> = read(&self.shared.meta)
            .iter()
            .filter(|(_, m)| m.info.listed())
            .map(|(name, m)| (name.clone(), m.info))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Box::pin(async move { Ok(all) })
    }

    fn latest<'a>(&'a self, queue: &'a str, count: usize) -> StoreFuture<'a, Vec<Message>> {
        let queue = queue.to_owned();
        self.submit(false, 0, move |b| b.latest(&queue, count))
    }

    fn dead_lettered(&self) -> Vec<(String, u64)> {
        self.shared.dead_lettered.counts()
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        let state = match self.shared.failure() {
            Some(failure) => Err(failure),
            None if self.jobs.is_closed() => Err(StoreError::Closed),
            None => Ok(()),
        };
        Box::pin(async move { state })
    }

    fn close(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            let closed = match self.jobs.send(Msg::Close(tx)).await {
                Ok(()) => rx.await.unwrap_or(Ok(())),
                Err(_) => Ok(()),
            };
            let handle = self
                .writer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(handle) = handle {
                tokio::task::spawn_blocking(move || handle.join())
                    .await
                    .map_err(|e| StoreError::Unavailable(format!("writer join failed: {e}")))?
                    .map_err(|_| StoreError::Unavailable("the writer thread panicked".into()))?;
            }
            closed
        })
    }
}

enum Msg {
    Work(Box<dyn Work>),
    Close(oneshot::Sender<Result<(), StoreError>>),
}

/// A job for the writer: applied inside a transaction, answered once durable.
trait Work: Send {
    /// Whether its answer must wait until its own changes are synced.
    fn durable(&self) -> bool;
    /// Bytes of message data it carries, to bound a batch.
    fn weight(&self) -> usize;
    fn apply(&mut self, batch: &mut Batch<'_>) -> Result<(), StoreError>;
    fn finish(self: Box<Self>, outcome: Result<(), StoreError>);
    /// What the job pops, when it is a pop: the writer takes a run of pops of
    /// one queue together.
    fn pops(&self) -> Option<(&str, usize)> {
        None
    }
    /// Gives a pop taken with others in a run its messages.
    fn popped(&mut self, _messages: Vec<Message>) {}
    /// Whether its answer must wait until `batch`, which applied it, is synced.
    /// Only a pop or receive that took messages already durable need not.
    fn waits_for(&self, _batch: &Batch<'_>) -> bool {
        true
    }
}

/// A pop: its own job type, so that the writer can tell pops apart and take a
/// run of them in one pass (see [`apply_all`]).
struct PopJob {
    queue: String,
    max: usize,
    out: Option<Result<Vec<Message>, StoreError>>,
    tx: oneshot::Sender<Result<Vec<Message>, StoreError>>,
}

impl Work for PopJob {
    fn durable(&self) -> bool {
        false
    }

    fn weight(&self) -> usize {
        0
    }

    fn apply(&mut self, batch: &mut Batch<'_>) -> Result<(), StoreError> {
        self.out = Some(Ok(batch.pop_many(&self.queue, self.max)?));
        batch.cache_head(&self.queue)
    }

    fn finish(self: Box<Self>, outcome: Result<(), StoreError>) {
        // The caller may have gone away (a closed connection); nothing to tell then.
        let _ = self.tx.send(answer(outcome, self.out));
    }

    fn pops(&self) -> Option<(&str, usize)> {
        Some((&self.queue, self.max))
    }

    fn popped(&mut self, messages: Vec<Message>) {
        self.out = Some(Ok(messages));
    }

    fn waits_for(&self, batch: &Batch<'_>) -> bool {
        match &self.out {
            Some(Ok(messages)) => !batch.settled(&self.queue, messages.iter().map(|m| m.id)),
            Some(Err(_)) | None => true,
        }
    }
}

/// Fills a queue's cache up, asked by a pop that found it half empty.
struct RefillJob {
    queue: String,
}

impl Work for RefillJob {
    fn durable(&self) -> bool {
        false
    }

    fn weight(&self) -> usize {
        0
    }

    fn apply(&mut self, batch: &mut Batch<'_>) -> Result<(), StoreError> {
        batch.cache_head(&self.queue)
    }

    fn finish(self: Box<Self>, _outcome: Result<(), StoreError>) {}

    fn waits_for(&self, _batch: &Batch<'_>) -> bool {
        false
    }
}

/// Applies `jobs` in order, taking each run of pops of one queue in one pass:
/// the same messages, in the same order, as popping for each job in turn.
fn apply_all(jobs: &mut [Box<dyn Work>], batch: &mut Batch<'_>) -> Result<(), StoreError> {
    let mut i = 0;
    while i < jobs.len() {
        let (run, wanted) = pops_ahead(&jobs[i..]);
        let queue = match jobs[i].pops() {
            Some((queue, _)) if run > 1 => queue.to_owned(),
            _ => {
                jobs[i].apply(batch)?;
                i += 1;
                continue;
            }
        };
        let mut messages = batch.pop_many(&queue, wanted)?.into_iter();
        for job in &mut jobs[i..i + run] {
            let max = job.pops().map_or(0, |(_, max)| max);
            job.popped(messages.by_ref().take(max).collect());
        }
        batch.cache_head(&queue)?;
        i += run;
    }
    Ok(())
}

/// How many of `jobs`, from the first, pop the same queue, and how many
/// messages they want in all.
fn pops_ahead(jobs: &[Box<dyn Work>]) -> (usize, usize) {
    let Some((queue, _)) = jobs.first().and_then(|job| job.pops()) else {
        return (0, 0);
    };
    jobs.iter()
        .map_while(|job| job.pops())
        .take_while(|(q, _)| *q == queue)
        .fold((0, 0), |(run, wanted), (_, max)| (run + 1, wanted + max))
}

/// The answer to a job, once its batch has come to `outcome`.
fn answer<T>(
    outcome: Result<(), StoreError>,
    out: Option<Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match (outcome, out) {
        (Ok(()), Some(out)) => out,
        (Ok(()), None) => Err(StoreError::Unavailable("the change was not applied".into())),
        (Err(e), _) => Err(e),
    }
}

struct Task<T, F, S> {
    durable: bool,
    weight: usize,
    f: Option<F>,
    /// Whether what it returned was all there before its batch.
    settled: S,
    out: Option<Result<T, StoreError>>,
    tx: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F, S> Work for Task<T, F, S>
where
    T: Send + 'static,
    F: for<'b, 't> FnOnce(&'b mut Batch<'t>) -> Result<T, StoreError> + Send + 'static,
    S: Fn(&T, &Batch<'_>) -> bool + Send + 'static,
{
    fn durable(&self) -> bool {
        self.durable
    }

    fn weight(&self) -> usize {
        self.weight
    }

    fn apply(&mut self, batch: &mut Batch<'_>) -> Result<(), StoreError> {
        if let Some(f) = self.f.take() {
            match f(batch) {
                Ok(out) => self.out = Some(Ok(out)),
                // A refusal is decided before anything changes: the rest of the
                // batch goes on, and only this job is refused.
                Err(refused @ StoreError::Full(_)) => self.out = Some(Err(refused)),
                Err(
                    e
                    @ (StoreError::Unavailable(_) | StoreError::Closed | StoreError::Corrupted(_)),
                ) => {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn finish(self: Box<Self>, outcome: Result<(), StoreError>) {
        // The caller may have gone away (a closed connection); nothing to tell then.
        let _ = self.tx.send(answer(outcome, self.out));
    }

    fn waits_for(&self, batch: &Batch<'_>) -> bool {
        match &self.out {
            Some(Ok(out)) => !(self.settled)(out, batch),
            Some(Err(_)) | None => true,
        }
    }
}

/// The writer thread: sole owner of the write side and of the metadata.
struct Writer {
    db: Database,
    meta: Meta,
    wal: Wal,
    clock: Arc<dyn Clock>,
    fsync: bool,
    shared: Arc<Shared>,
    pace: Pace,
}

/// Why the writer stopped filling a transaction.
enum Stop {
    /// Enough batches: commit and open another.
    Commit,
    /// The log is full: commit durably and start it over.
    Checkpoint,
    /// Asked to close.
    Close(oneshot::Sender<Result<(), StoreError>>),
    /// Every sender is gone.
    Disconnected,
}

/// The jobs waiting, up to a batch's bounds, and whether a stop came with them.
fn receive(rx: &mut mpsc::Receiver<Msg>) -> (Vec<Box<dyn Work>>, Option<Stop>) {
    let mut jobs = Vec::new();
    let mut bytes = 0;
    let mut next = rx.blocking_recv();
    loop {
        match next {
            None => return (jobs, Some(Stop::Disconnected)),
            Some(Msg::Close(reply)) => return (jobs, Some(Stop::Close(reply))),
            Some(Msg::Work(job)) => {
                bytes += job.weight();
                jobs.push(job);
            }
        }
        if jobs.len() >= MAX_BATCH || bytes >= MAX_BATCH_BYTES {
            return (jobs, None);
        }
        next = match rx.try_recv() {
            Ok(msg) => Some(msg),
            Err(mpsc::error::TryRecvError::Empty) => return (jobs, None),
            Err(mpsc::error::TryRecvError::Disconnected) => None,
        };
    }
}

/// Answers the jobs of `batch` that need not wait for its sync (pops and
/// receives of messages already durable) and returns the others. The batch is
/// in the log already, which survives a crash of restmq, so what they took
/// stays taken after one; and consumers do not wait for the sync of other
/// clients' publishes.
fn answer_settled(jobs: Vec<Box<dyn Work>>, batch: &Batch<'_>) -> Vec<Box<dyn Work>> {
    if jobs.iter().all(|job| job.waits_for(batch)) {
        return jobs;
    }
    let (settled, waiting) = jobs.into_iter().partition(|job| !job.waits_for(batch));
    answer_all(settled, &Ok(()));
    waiting
}

/// Answers applied jobs, in order, with the outcome of their batch.
fn answer_all(jobs: Vec<Box<dyn Work>>, outcome: &Result<(), StoreError>) {
    for job in jobs {
        job.finish(outcome.clone());
    }
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let reply = loop {
            let stop = match self.shared.failure() {
                Some(failure) => refuse_all(&mut rx, &failure),
                None => self.transaction(&mut rx),
            };
            match stop {
                Stop::Commit | Stop::Checkpoint => continue,
                Stop::Close(reply) => break Some(reply),
                Stop::Disconnected => break None,
            }
        };
        // Jobs sent after the close find the channel shut and fail as Closed.
        drop(rx);
        let closed = self.close();
        if let Some(reply) = reply {
            let _ = reply.send(closed);
        }
    }

    /// Runs one redb transaction: fills it with batches until a stop, then commits
    /// it. Any failure stops the store (see [`Shared::failed`]).
    fn transaction(&mut self, rx: &mut mpsc::Receiver<Msg>) -> Stop {
        let txn = match self.db.begin_write().map_err(db_error).and_then(|mut txn| {
            txn.set_durability(Durability::None).map_err(db_error)?;
            Ok(txn)
        }) {
            Ok(txn) => txn,
            Err(e) => {
                self.shared.fail(&e);
                return Stop::Commit;
            }
        };
        let (stop, filled) = self.fill(&txn, rx);
        let committed = filled.and_then(|()| {
            let checkpoint = matches!(stop, Stop::Checkpoint | Stop::Close(_) | Stop::Disconnected);
            self.finish(txn, checkpoint)
        });
        if let Err(e) = committed {
            self.shared.fail(&e);
        }
        stop
    }

    /// Applies batches of jobs in `txn`, logging and syncing each before
    /// answering its jobs.
    fn fill(
        &mut self,
        txn: &WriteTransaction,
        rx: &mut mpsc::Receiver<Msg>,
    ) -> (Stop, Result<(), StoreError>) {
        let mut batch = match Batch::open(txn, &mut self.meta) {
            Ok(batch) => batch,
            Err(e) => return (Stop::Commit, Err(e)),
        };
        let cache = batch.cache();
        let mut batches = 0;
        let mut logged = 0;
        loop {
            let (mut jobs, stop) = receive(rx);
            if let Some(yielding) = self.pace.batch(jobs.len()) {
                set_yielding(yielding);
            }
            if !jobs.is_empty() {
                batch.begin(self.clock.now());
                let applied = batch
                    .apply_cached_pops()
                    .and_then(|()| apply_all(&mut jobs, &mut batch))
                    .and_then(|()| batch.write_meta());
                if let Err(e) = applied {
                    answer_all(jobs, &Err(e.clone()));
                    return (stop.unwrap_or(Stop::Commit), Err(e));
                }
                cache.publish_meta(
                    batch.drained.iter().map(|(name, n)| (name.as_str(), *n)),
                    batch
                        .touched
                        .iter()
                        .filter_map(|name| Some((name.as_str(), batch.queue_meta(name)?))),
                    &self.shared.meta,
                );
                for queue in &batch.dead_lettered {
                    self.shared.dead_lettered.add(queue, 1);
                }
                if !batch.log.is_empty() {
                    let durable = self.fsync && jobs.iter().any(|job| job.durable());
                    // Without fsync no frame is ever synced by a batch: padded
                    // each, a frame the kernel wrote back is never rewritten.
                    let written = self.wal.append(&batch.log, durable || !self.fsync);
                    if let (Ok(()), Some(upto)) = (&written, batch.pops_upto) {
                        cache.written(upto);
                    }
                    if written.is_ok() && durable {
                        jobs = answer_settled(jobs, &batch);
                    }
                    let synced =
                        written.and_then(|()| if durable { self.wal.sync() } else { Ok(()) });
                    if let Err(e) = synced {
                        // Applied but maybe not durable: refuse everything from
                        // now on rather than answer for changes that may vanish.
                        answer_all(jobs, &Err(e.clone()));
                        return (stop.unwrap_or(Stop::Commit), Err(e));
                    }
                    logged += batch.log.len();
                }
                answer_all(jobs, &Ok(()));
                batches += 1;
            }
            if let Some(stop) = stop {
                return (stop, Ok(()));
            }
            if self.wal.wants_checkpoint() {
                return (Stop::Checkpoint, Ok(()));
            }
            if batches >= BATCHES_PER_COMMIT || logged >= BYTES_PER_COMMIT {
                return (Stop::Commit, Ok(()));
            }
        }
    }

    /// Commits `txn`; a checkpoint commits it durably and starts the log over.
    fn finish(&mut self, mut txn: WriteTransaction, checkpoint: bool) -> Result<(), StoreError> {
        if !checkpoint {
            return txn.commit().map_err(db_error);
        }
        let generation = self.wal.generation() + 1;
        txn.set_durability(Durability::Immediate)
            .map_err(db_error)?;
        // Saves the allocator state with the commit, so a restart after a crash
        // need not rebuild it from the whole file.
        txn.set_quick_repair(true);
        {
            let mut state = txn.open_table(STATE).map_err(db_error)?;
            state.insert(WAL_GENERATION, generation).map_err(db_error)?;
            state.insert(WAL_LSN, self.wal.lsn()).map_err(db_error)?;
            state
                .insert(POPS_APPLIED, self.meta.pops_applied)
                .map_err(db_error)?;
        }
        txn.commit().map_err(db_error)?;
        self.wal.restart(generation);
        Ok(())
    }

    /// Applies the log frames read back at start, then checkpoints.
    fn recover(&mut self, frames: &[Vec<u8>]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_error)?;
        {
            let mut batch = Batch::open(&txn, &mut self.meta)?;
            batch.begin(self.clock.now());
            for frame in frames {
                for op in Op::decode_all(frame)? {
                    batch.replay(&op)?;
                }
            }
            batch.write_meta()?;
        }
        self.finish(txn, true)
    }

    /// Applies the pops recorded in the file of pops at `path` beyond those
    /// the log said were applied, then checkpoints; returns the number of the
    /// next record.
    fn recover_pops(&mut self, path: &Path) -> Result<u64, StoreError> {
        let file = match std::fs::read(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_error("cannot read the file of pops")(e)),
        };
        let (records, next) = cache::records(&file, self.meta.pops_applied);
        if records.is_empty() {
            return Ok(next);
        }
        let txn = self.db.begin_write().map_err(db_error)?;
        {
            let mut batch = Batch::open(&txn, &mut self.meta)?;
            batch.begin(self.clock.now());
            batch.remove_recorded(&records)?;
            batch.write_meta()?;
        }
        self.meta.pops_applied = next;
        self.finish(txn, true)?;
        tracing::info!(
            pops = records.len(),
            "applied the pops recorded since the log"
        );
        Ok(next)
    }

    /// Closes the database.
    fn close(self) -> Result<(), StoreError> {
        // The last transaction was committed durably unless the store failed;
        // pops answered from the cache since its last batch are in the file
        // of pops, applied at the next start.
        self.meta.cache.close();
        let failure = self.shared.failure();
        self.db.close().map_err(db_error)?;
        failure.map_or(Ok(()), Err)
    }
}

/// How busy the writer is, from the jobs in its recent batches; it decides the
/// writer thread's scheduling class.
///
/// Busy (batches of several jobs on average), the writer runs in Linux's
/// `SCHED_BATCH` class: its wake-ups, one per batch, wait for a free core or
/// the next scheduling tick instead of preempting a thread serving
/// connections in mid-request, which cost both threads a context switch;
/// batches grow, and each pop costs less CPU. Serving lone requests, it runs
/// in the default class, so that a lone request's job runs at once.
#[derive(Debug, Default)]
struct Pace {
    /// Jobs per batch, averaged over about the last 8 batches, times 8.
    jobs_x8: usize,
    busy: bool,
}

impl Pace {
    /// Jobs per batch (on average) above which the writer yields, and below
    /// which it stops yielding: apart, so that it does not flap.
    const BUSY_ABOVE: usize = 4;
    const IDLE_BELOW: usize = 2;

    /// Counts a batch of `jobs`; returns the new class when it changes (true:
    /// yield to the connections).
    fn batch(&mut self, jobs: usize) -> Option<bool> {
        // A burst counts as 64 jobs at most: one does not keep it yielding long.
        self.jobs_x8 = self.jobs_x8 - self.jobs_x8 / 8 + jobs.min(64);
        let busy = if self.busy {
            self.jobs_x8 >= 8 * Self::IDLE_BELOW
        } else {
            self.jobs_x8 > 8 * Self::BUSY_ABOVE
        };
        (busy != self.busy).then(|| {
            self.busy = busy;
            busy
        })
    }
}

/// Puts the calling thread in the `SCHED_BATCH` class (`yielding`) or back in
/// the default one (see [`Pace`]). A thread needs no privilege to move itself
/// between these two, so this does not fail in practice; if it does, the
/// thread stays as it was.
#[cfg(target_os = "linux")]
fn set_yielding(yielding: bool) {
    let class = if yielding {
        libc::SCHED_BATCH
    } else {
        libc::SCHED_OTHER
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call; pid 0 is
    // the calling thread, whose scheduling class is all that changes.
    if unsafe { libc::sched_setscheduler(0, class, &param) } != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "the writer keeps its scheduling class"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn set_yielding(_yielding: bool) {}

/// Once the store failed: answers every job with the failure until told to stop.
fn refuse_all(rx: &mut mpsc::Receiver<Msg>, failure: &StoreError) -> Stop {
    let refused = Err(failure.clone());
    loop {
        let (jobs, stop) = receive(rx);
        answer_all(jobs, &refused);
        if let Some(stop) = stop {
            return stop;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(value: &str) -> NewMessage {
        NewMessage {
            value: value.to_owned(),
            ttl: None,
            delay: None,
        }
    }

    fn open(dir: &Path) -> EmbeddedStore {
        EmbeddedStore::open(
            dir,
            EmbeddedOptions::default(),
            Arc::new(super::super::SystemClock),
        )
        .expect("open")
    }

    async fn publish(store: &EmbeddedStore, queue: &str, values: impl IntoIterator<Item = String>) {
        let messages = values.into_iter().map(|v| message(&v)).collect();
        store.publish(queue, messages).await.expect("publish");
    }

    async fn pop_value(store: &EmbeddedStore, queue: &str) -> Option<String> {
        store.pop(queue).await.expect("pop").map(|m| m.value)
    }

    fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        mutex.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn len(store: &EmbeddedStore, queue: &str) -> u64 {
        store.queue(queue).await.expect("info").map_or(0, |i| i.len)
    }

    /// Pops answered from the cache are recorded in the file of pops: they
    /// stay taken over restarts that did not let the writer apply them, and
    /// the records of one run do not count in the next.
    #[tokio::test]
    async fn pops_answered_from_the_cache_stay_taken_across_restarts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open(dir.path());
        publish(&store, "q", (0..10).map(|i| format!("m{i}"))).await;
        assert_eq!(pop_value(&store, "q").await.as_deref(), Some("m0"));
        assert_eq!(store.cache.cached("q"), 9, "the writer cached the rest");
        for i in 1..4 {
            assert_eq!(pop_value(&store, "q").await, Some(format!("m{i}")));
        }
        assert_eq!(store.cache.cached("q"), 6, "answered from the cache");
        assert_eq!(len(&store, "q").await, 6, "the length counts them at once");
        store.close().await.expect("close");
        assert!(
            matches!(store.pop("q").await, Err(StoreError::Closed)),
            "a closed store answers no pop, cached or not"
        );

        let store = open(dir.path());
        assert_eq!(len(&store, "q").await, 6);
        assert_eq!(pop_value(&store, "q").await.as_deref(), Some("m4"));
        assert_eq!(pop_value(&store, "q").await.as_deref(), Some("m5"));
        assert_eq!(store.cache.cached("q"), 4);
        store.close().await.expect("close");

        let store = open(dir.path());
        let mut rest = Vec::new();
        while let Some(value) = pop_value(&store, "q").await {
            rest.push(value);
        }
        assert_eq!(rest, ["m6", "m7", "m8", "m9"]);
        assert_eq!(len(&store, "q").await, 0);
    }

    /// Pops through the cache and through the writer take every message once,
    /// in order, however many fills it takes.
    #[tokio::test]
    async fn pops_take_every_message_once_in_order_through_cache_and_writer() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open(dir.path());
        publish(&store, "q", (0..700).map(|i| format!("m{i}"))).await;
        let (mut from_cache, mut last, mut taken) = (0, 0, 0);
        for i in 0..700 {
            let cached = store.cache.cached("q");
            let popped = store.pop_many("q", 3 - i % 3).await.expect("pop");
            assert!(!popped.is_empty(), "pop {i} found messages left");
            if cached > 0 {
                from_cache += 1;
            }
            for m in popped {
                assert_eq!(m.value, format!("m{}", m.id - 1), "in order, each once");
                assert!(m.id > last, "{} after {last}", m.id);
                last = m.id;
                taken += 1;
            }
            if len(&store, "q").await == 0 {
                break;
            }
        }
        assert!(
            from_cache > 100,
            "{from_cache} pops answered from the cache"
        );
        // Rising numbers from 1 to 700, 700 of them: each message once.
        assert_eq!((taken, last), (700, 700));
        assert_eq!(pop_value(&store, "q").await, None);
    }

    /// Pops on many threads at once, through the cache and the writer, while
    /// a producer publishes and one consumer puts some of what it took back:
    /// every message is taken once (again after each put-back), each
    /// consumer's in order, and a restart finds the queue empty.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_pops_take_every_message_once() {
        const TOTAL: u64 = 10_000;
        const CONSUMERS: usize = 6;
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(open(dir.path()));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let put_back = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let producer = {
            let (store, done) = (store.clone(), done.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while n < TOTAL {
                    let next = (n + 1 + n % 5).min(TOTAL);
                    publish(&store, "q", (n..next).map(|i| format!("m{i}"))).await;
                    n = next;
                }
                done.store(true, std::sync::atomic::Ordering::SeqCst);
            })
        };
        let consumers: Vec<_> = (0..CONSUMERS)
            .map(|c| {
                let (store, done, put_back) = (store.clone(), done.clone(), put_back.clone());
                tokio::spawn(async move {
                    let mut kept = Vec::new();
                    let mut last = 0;
                    for i in 0usize.. {
                        let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                        let popped = store.pop_many("q", 1 + (i + c) % 4).await.expect("pop");
                        if popped.is_empty() {
                            if finished && len(&store, "q").await == 0 {
                                break;
                            }
                            tokio::task::yield_now().await;
                            continue;
                        }
                        if c == 0 && i % 5 == 0 {
                            lock(&put_back).extend(popped.iter().map(|m| m.id));
                            store.restore("q", popped).await.expect("restore");
                            continue;
                        }
                        for m in popped {
                            // Put back messages come again, to any consumer:
                            // only the others must come in order.
                            if !lock(&put_back).contains(&m.id) {
                                assert!(m.id > last, "consumer {c}: {} after {last}", m.id);
                                last = m.id;
                            }
                            kept.push(m.id);
                        }
                    }
                    kept
                })
            })
            .collect();
        producer.await.expect("producer");
        let mut times = HashMap::new();
        for consumer in consumers {
            for id in consumer.await.expect("consumer") {
                *times.entry(id).or_insert(0) += 1;
            }
        }
        for id in 1..=TOTAL {
            assert_eq!(times.get(&id), Some(&1), "message {id} kept once");
        }
        assert!(!lock(&put_back).is_empty(), "some messages were put back");
        let store = Arc::into_inner(store).expect("the only owner");
        store.close().await.expect("close");
        let store = open(dir.path());
        assert_eq!(len(&store, "q").await, 0);
        assert_eq!(pop_value(&store, "q").await, None);
    }

    /// What else runs on a queue sees the pops answered from its cache, and
    /// the cache never hands out a message those commands took or put back.
    #[tokio::test]
    async fn other_commands_see_the_cache_pops_and_empty_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open(dir.path());
        publish(&store, "q", (0..10).map(|i| format!("m{i}"))).await;
        let first = store.pop("q").await.expect("pop").expect("a message");
        let second = store.pop("q").await.expect("pop").expect("a message");
        assert_eq!(store.cache.cached("q"), 8);
        // A delete of a cached message: the cache does not hand it out.
        assert!(store.delete("q", second.id + 1).await.expect("delete"));
        assert_eq!(pop_value(&store, "q").await.as_deref(), Some("m3"));
        // Put back: it comes before the rest.
        store
            .restore("q", vec![first.clone()])
            .await
            .expect("restore");
        assert_eq!(pop_value(&store, "q").await.as_deref(), Some("m0"));
        assert_eq!(pop_value(&store, "q").await.as_deref(), Some("m4"));
        // A receive takes what the cache had next, and while it is in flight
        // the queue is not cached: its return comes before newer messages.
        let received = store.receive("q", 2, 60_000).await.expect("receive");
        let values: Vec<_> = received.iter().map(|r| r.message.value.as_str()).collect();
        assert_eq!(values, ["m5", "m6"]);
        assert_eq!(pop_value(&store, "q").await.as_deref(), Some("m7"));
        assert_eq!(store.cache.cached("q"), 0);
        assert_eq!(len(&store, "q").await, 2);
        assert!(store.purge("q").await.expect("purge"));
        assert_eq!(pop_value(&store, "q").await, None);
        assert_eq!(len(&store, "q").await, 0);
    }

    /// Messages that come back to a queue (their time in flight ran out) are
    /// not cached by the batch that brings them back: the cache would hand
    /// them out before that batch is in the log, and a crash then would hide
    /// them again, to be delivered a second time.
    #[tokio::test]
    async fn messages_coming_back_are_cached_only_once_logged() {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = Arc::new(super::super::ManualClock::new(1_000_000));
        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), clock.clone())
            .expect("open");
        publish(&store, "q", (0..4).map(|i| format!("m{i}"))).await;
        let received = store.receive("q", 4, 1_000).await.expect("receive");
        assert_eq!(received.len(), 4);
        clock.advance(2_000);
        // This pop's batch brings all four back, and takes the first.
        assert_eq!(pop_value(&store, "q").await.as_deref(), Some("m0"));
        assert_eq!(store.cache.cached("q"), 0, "not cached in that batch");
        assert_eq!(pop_value(&store, "q").await.as_deref(), Some("m1"));
        assert_eq!(store.cache.cached("q"), 2, "cached by the next one");
        assert_eq!(pop_value(&store, "q").await.as_deref(), Some("m2"));
        assert_eq!(pop_value(&store, "q").await.as_deref(), Some("m3"));
        assert_eq!(pop_value(&store, "q").await, None);
    }

    /// A pop of several is answered from the cache only when it holds them
    /// all: the store may hold more than the cache.
    #[tokio::test]
    async fn a_pop_of_several_gets_all_the_queue_has() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open(dir.path());
        publish(&store, "q", (0..3).map(|i| format!("m{i}"))).await;
        assert_eq!(pop_value(&store, "q").await.as_deref(), Some("m0"));
        assert_eq!(store.cache.cached("q"), 2);
        publish(&store, "q", (3..6).map(|i| format!("m{i}"))).await;
        let popped = store.pop_many("q", 4).await.expect("pop");
        let values: Vec<_> = popped.iter().map(|m| m.value.as_str()).collect();
        assert_eq!(values, ["m1", "m2", "m3", "m4"]);
    }

    /// Messages taken together forget their peeks and deliveries as messages
    /// taken one by one do: put back, they count from the start again.
    #[tokio::test]
    async fn a_run_of_pops_forgets_peeks_and_deliveries() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(
            dir.path(),
            EmbeddedOptions::default(),
            Arc::new(super::super::SystemClock),
        )
        .expect("open");
        let ids = store
            .publish("q", vec![message("a"), message("b"), message("c")])
            .await
            .expect("publish");
        let received = store.receive("q", 1, 60_000).await.expect("receive");
        assert_eq!(received[0].delivery, 1);
        let nacked = store.nack("q", ids[0], 1, 0).await.expect("nack");
        assert!(nacked, "back in the queue");
        let (peeked, peeks) = store.peek("q").await.expect("peek").expect("a head");
        assert_eq!((peeked.id, peeks), (ids[0], 1));

        let popped = store.pop_many("q", 3).await.expect("pop");
        assert_eq!(popped.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
        store
            .restore("q", popped[..1].to_vec())
            .await
            .expect("restore");

        let (_, peeks) = store.peek("q").await.expect("peek").expect("put back");
        assert_eq!(peeks, 1, "peeks count again from the start");
        let received = store.receive("q", 1, 60_000).await.expect("receive");
        assert_eq!(received[0].message.id, ids[0]);
        assert_eq!(
            received[0].delivery, 1,
            "deliveries count again from the start"
        );
        store.close().await.expect("close");
    }

    /// Lone requests keep the default class; batches of several jobs on
    /// average move the writer to yielding, and back once they shrink.
    #[test]
    fn the_writer_yields_only_while_busy() {
        let mut pace = Pace::default();
        for _ in 0..100 {
            assert_eq!(pace.batch(1), None, "lone jobs never yield");
        }
        let changes: Vec<_> = (0..20).filter_map(|_| pace.batch(12)).collect();
        assert_eq!(changes, [true], "busy batches yield, once");
        assert_eq!(pace.batch(1), None, "one small batch does not flap");
        let changes: Vec<_> = (0..40).filter_map(|_| pace.batch(1)).collect();
        assert_eq!(changes, [false], "lone jobs again stop yielding, once");
    }

    /// The class really changes, both ways, on the thread that asks.
    #[cfg(target_os = "linux")]
    #[test]
    fn yielding_moves_the_thread_between_classes() {
        let classes = std::thread::spawn(|| {
            // SAFETY: sched_getscheduler(0) only reads the calling thread's class.
            let class = || unsafe { libc::sched_getscheduler(0) };
            set_yielding(true);
            let yielding = class();
            set_yielding(false);
            (yielding, class())
        })
        .join()
        .expect("thread");
        assert_eq!(classes, (libc::SCHED_BATCH, libc::SCHED_OTHER));
    }
}
