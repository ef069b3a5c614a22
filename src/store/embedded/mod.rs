//! The embedded store: queues in a redb file, written by one thread with group commit.
//!
//! Every change goes to a single writer thread as a job. The writer takes every job
//! waiting, applies them in order in one write transaction and commits once, so
//! concurrent publishes share one fsync instead of paying one each. A job's caller
//! hears back only after that commit, so a resolved publish is on disk.
//!
//! Queue metadata (id, counter, length, status, policy) lives in memory, owned by
//! the writer; readers see a snapshot the writer refreshes after each commit.
//!
//! Tables:
//! - `queues`: name -> metadata record (see [`QueueMeta::encode`]);
//! - `messages`: (queue id, message number) -> expiry (8 bytes, ms, 0 = none) + value;
//!   the key order is the FIFO order of each queue;
//! - `peeks`: (queue id, message number) -> times the message was peeked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use super::{
    Message, NewMessage, Policy, QueueInfo, Status, Store, StoreError, StoreFuture, now_millis,
};

const QUEUES: TableDefinition<&str, &[u8]> = TableDefinition::new("queues");
const MESSAGES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("messages");
const PEEKS: TableDefinition<(u64, u64), u64> = TableDefinition::new("peeks");

/// The file inside the data directory.
const FILE_NAME: &str = "restmq.redb";
/// Jobs applied in one transaction at most; bounds a commit's size and latency.
const MAX_BATCH: usize = 4096;
/// Jobs waiting for the writer at most; publishers wait beyond that.
const QUEUE_DEPTH: usize = 16 * 1024;
/// Non-durable commits allowed in a row: redb keeps memory for each until a
/// durable commit, so a long run of pops is made durable now and then.
const MAX_NON_DURABLE: u32 = 1000;

/// How the embedded store writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// Commit publishes and other changes with fsync before acknowledging them.
    /// When false, a crash (of restmq or of the machine) loses the changes made since
    /// the last durable commit; one commit in [`MAX_NON_DURABLE`] is durable anyway.
    pub fsync: bool,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions { fsync: true }
    }
}

/// Queue storage in a redb file inside a data directory.
pub struct EmbeddedStore {
    jobs: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    path: PathBuf,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// What readers share with the writer.
struct Shared {
    /// Metadata of every known queue, as of the last commit.
    meta: RwLock<HashMap<String, QueueMeta>>,
    /// The database for read transactions; `None` once closed.
    db: RwLock<Option<Arc<Database>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct QueueMeta {
    /// Internal number of the queue, the first half of its messages' keys.
    id: u64,
    info: QueueInfo,
}

const META_VERSION: u8 = 1;
const META_LEN: usize = 27;

impl QueueMeta {
    /// version (1) | id (8) | last id (8) | len (8) | status (1) | policy (1), big-endian.
    fn encode(&self) -> [u8; META_LEN] {
        let mut out = [0u8; META_LEN];
        out[0] = META_VERSION;
        out[1..9].copy_from_slice(&self.id.to_be_bytes());
        out[9..17].copy_from_slice(&self.info.last_id.to_be_bytes());
        out[17..25].copy_from_slice(&self.info.len.to_be_bytes());
        out[25] = match self.info.status {
            None => 0,
            Some(Status::Started) => 1,
            Some(Status::Stopped) => 2,
        };
        out[26] = self.info.policy.map_or(0, Policy::code);
        out
    }

    fn decode(bytes: &[u8]) -> Result<QueueMeta, StoreError> {
        let bad = || StoreError::Corrupted("unreadable queue record".into());
        if bytes.len() != META_LEN || bytes[0] != META_VERSION {
            return Err(bad());
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let status = match bytes[25] {
            0 => None,
            1 => Some(Status::Started),
            2 => Some(Status::Stopped),
            _ => return Err(bad()),
        };
        let policy = match bytes[26] {
            0 => None,
            code => Some(Policy::from_code(code).ok_or_else(bad)?),
        };
        Ok(QueueMeta {
            id: u64_at(1),
            info: QueueInfo {
                last_id: u64_at(9),
                len: u64_at(17),
                status,
                policy,
            },
        })
    }
}

fn encode_message(out: &mut Vec<u8>, expires_at: u64, value: &str) {
    out.clear();
    out.extend_from_slice(&expires_at.to_be_bytes());
    out.extend_from_slice(value.as_bytes());
}

/// Splits a stored message into its expiry (ms since the epoch, 0 = none) and value.
fn decode_message(raw: &[u8]) -> Result<(u64, String), StoreError> {
    let bad = || StoreError::Corrupted("unreadable message record".into());
    if raw.len() < 8 {
        return Err(bad());
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&raw[..8]);
    let value = String::from_utf8(raw[8..].to_vec()).map_err(|_| bad())?;
    Ok((u64::from_be_bytes(b), value))
}

fn expired(expires_at: u64, now: u64) -> bool {
    expires_at != 0 && expires_at <= now
}

fn db_error(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Corrupted(why) => StoreError::Corrupted(why),
        redb::Error::DatabaseAlreadyOpen => {
            StoreError::Unavailable("the data directory is in use by another process".into())
        }
        other => StoreError::Unavailable(other.to_string()),
    }
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
    /// Opens (creating if needed) the store in `dir`. Blocking: call it before
    /// serving or from a blocking task.
    pub fn open(dir: &Path, options: EmbeddedOptions) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
        let path = dir.join(FILE_NAME);
        let db = Database::builder().create(&path).map_err(db_error)?;

        let txn = db.begin_write().map_err(db_error)?;
        txn.open_table(QUEUES).map_err(db_error)?;
        txn.open_table(MESSAGES).map_err(db_error)?;
        txn.open_table(PEEKS).map_err(db_error)?;
        txn.commit().map_err(db_error)?;

        let mut meta = HashMap::new();
        let mut next_id = 1;
        {
            let txn = db.begin_read().map_err(db_error)?;
            let table = txn.open_table(QUEUES).map_err(db_error)?;
            for entry in table.iter().map_err(db_error)? {
                let (name, record) = entry.map_err(db_error)?;
                let record = QueueMeta::decode(record.value())?;
                next_id = next_id.max(record.id + 1);
                meta.insert(name.value().to_owned(), record);
            }
        }

        let db = Arc::new(db);
        let shared = Arc::new(Shared {
            meta: RwLock::new(meta.clone()),
            db: RwLock::new(Some(db.clone())),
        });
        let (jobs, rx) = mpsc::channel(QUEUE_DEPTH);
        let writer = Writer {
            db,
            meta,
            next_id,
            fsync: options.fsync,
            non_durable: 0,
            shared: shared.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("restmq-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer: {e}")))?;
        Ok(EmbeddedStore {
            jobs,
            shared,
            path,
            writer: Mutex::new(Some(handle)),
        })
    }

    /// Runs `f` in the writer's next transaction and resolves after its commit.
    fn submit<'a, T, F>(&'a self, durable: bool, f: F) -> StoreFuture<'a, T>
    where
        T: Send + 'static,
        F: for<'b, 't> FnOnce(&'b mut Batch<'t>) -> Result<T, StoreError> + Send + 'static,
    {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            let task = Task {
                durable,
                f: Some(f),
                out: None,
                tx,
            };
            self.jobs
                .send(Msg::Work(Box::new(task)))
                .await
                .map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn db(&self) -> Result<Arc<Database>, StoreError> {
        read(&self.shared.db).clone().ok_or(StoreError::Closed)
    }
}

impl Store for EmbeddedStore {
    fn describe(&self) -> String {
        format!("embedded redb {}", self.path.display())
    }

    fn publish<'a>(
        &'a self,
        queue: &'a str,
        messages: Vec<NewMessage>,
    ) -> StoreFuture<'a, Vec<u64>> {
        let queue = queue.to_owned();
        self.submit(true, move |b| b.publish(&queue, &messages))
    }

    fn pop<'a>(&'a self, queue: &'a str) -> StoreFuture<'a, Option<Message>> {
        if !self.has_waiting(queue) {
            return Box::pin(async { Ok(None) });
        }
        let queue = queue.to_owned();
        self.submit(false, move |b| b.pop(&queue))
    }

    fn peek<'a>(&'a self, queue: &'a str) -> StoreFuture<'a, Option<(Message, u64)>> {
        if !self.has_waiting(queue) {
            return Box::pin(async { Ok(None) });
        }
        let queue = queue.to_owned();
        self.submit(false, move |b| b.peek(&queue))
    }

    fn delete<'a>(&'a self, queue: &'a str, id: u64) -> StoreFuture<'a, bool> {
        let queue = queue.to_owned();
        self.submit(true, move |b| b.delete(&queue, id))
    }

    fn purge<'a>(&'a self, queue: &'a str) -> StoreFuture<'a, bool> {
        let queue = queue.to_owned();
        self.submit(true, move |b| b.purge(&queue))
    }

    fn set_policy<'a>(&'a self, queue: &'a str, policy: Policy) -> StoreFuture<'a, ()> {
        let queue = queue.to_owned();
        self.submit(true, move |b| {
            b.touch(&queue).info.policy = Some(policy);
            Ok(())
        })
    }

    fn set_status<'a>(&'a self, queue: &'a str, status: Status) -> StoreFuture<'a, ()> {
        let queue = queue.to_owned();
        self.submit(true, move |b| {
            b.touch(&queue).info.status = Some(status);
            Ok(())
        })
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
        let qid = read(&self.shared.meta).get(queue).map(|m| m.id);
        Box::pin(async move {
            let Some(qid) = qid else {
                return Ok(Vec::new());
            };
            let db = self.db()?;
            tokio::task::spawn_blocking(move || {
                let txn = db.begin_read().map_err(db_error)?;
                let table = txn.open_table(MESSAGES).map_err(db_error)?;
                let now = now_millis();
                let mut out = Vec::with_capacity(count.min(1024));
                for entry in table
                    .range((qid, 0)..=(qid, u64::MAX))
                    .map_err(db_error)?
                    .rev()
                {
                    if out.len() >= count {
                        break;
                    }
                    let (key, raw) = entry.map_err(db_error)?;
                    let (expires_at, value) = decode_message(raw.value())?;
                    if !expired(expires_at, now) {
                        out.push(Message {
                            id: key.value().1,
                            value,
                        });
                    }
                }
                Ok(out)
            })
            .await
            .map_err(|e| StoreError::Unavailable(format!("read task failed: {e}")))?
        })
    }

    fn close(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            if self.jobs.send(Msg::Close(tx)).await.is_ok() {
                let _ = rx.await;
            }
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
            Ok(())
        })
    }
}

impl EmbeddedStore {
    /// Whether the queue may have messages; lets empty pops skip the writer.
    fn has_waiting(&self, queue: &str) -> bool {
        read(&self.shared.meta)
            .get(queue)
            .is_some_and(|m| m.info.len > 0)
    }
}

enum Msg {
    Work(Box<dyn Work>),
    Close(oneshot::Sender<()>),
}

/// A job for the writer: applied inside a transaction, answered after it ends.
trait Work: Send {
    fn durable(&self) -> bool;
    fn apply(&mut self, batch: &mut Batch<'_>) -> Result<(), StoreError>;
    fn finish(self: Box<Self>, outcome: Result<(), StoreError>);
}

struct Task<T, F> {
    durable: bool,
    f: Option<F>,
    out: Option<T>,
    tx: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Work for Task<T, F>
where
    T: Send + 'static,
    F: for<'b, 't> FnOnce(&'b mut Batch<'t>) -> Result<T, StoreError> + Send + 'static,
{
    fn durable(&self) -> bool {
        self.durable
    }

    fn apply(&mut self, batch: &mut Batch<'_>) -> Result<(), StoreError> {
        if let Some(f) = self.f.take() {
            self.out = Some(f(batch)?);
        }
        Ok(())
    }

    fn finish(self: Box<Self>, outcome: Result<(), StoreError>) {
        let answer = match (outcome, self.out) {
            (Ok(()), Some(out)) => Ok(out),
            (Ok(()), None) => Err(StoreError::Unavailable("the change was not applied".into())),
            (Err(e), _) => Err(e),
        };
        // The caller may have gone away (a closed connection); nothing to tell then.
        let _ = self.tx.send(answer);
    }
}

/// The writer thread: sole owner of the write side and of the metadata.
struct Writer {
    db: Arc<Database>,
    meta: HashMap<String, QueueMeta>,
    next_id: u64,
    fsync: bool,
    non_durable: u32,
    shared: Arc<Shared>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut closing = None;
        while closing.is_none() {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            let mut jobs = Vec::new();
            match first {
                Msg::Work(job) => jobs.push(job),
                Msg::Close(reply) => closing = Some(reply),
            }
            while closing.is_none() && jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Msg::Work(job)) => jobs.push(job),
                    Ok(Msg::Close(reply)) => closing = Some(reply),
                    Err(_) => break,
                }
            }
            if !jobs.is_empty() {
                self.commit(jobs);
            }
        }
        // Jobs sent after the close find the channel shut and fail as Closed.
        drop(rx);
        self.close();
        if let Some(reply) = closing {
            let _ = reply.send(());
        }
    }

    /// Applies `jobs` in order in one transaction and answers each after the commit.
    fn commit(&mut self, mut jobs: Vec<Box<dyn Work>>) {
        let durable =
            (self.fsync && jobs.iter().any(|j| j.durable())) || self.non_durable >= MAX_NON_DURABLE;
        let mut undo = HashMap::new();
        let outcome = self.transact(&mut jobs, &mut undo, durable);
        match &outcome {
            Ok(()) => {
                if durable {
                    self.non_durable = 0;
                } else {
                    self.non_durable += 1;
                }
                let mut shared = write(&self.shared.meta);
                for name in undo.into_keys() {
                    if let Some(meta) = self.meta.get(&name) {
                        shared.insert(name, *meta);
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, jobs = jobs.len(), "store commit failed");
                for (name, before) in undo {
                    match before {
                        Some(meta) => self.meta.insert(name, meta),
                        None => self.meta.remove(&name),
                    };
                }
            }
        }
        for job in jobs {
            job.finish(outcome.clone());
        }
    }

    fn transact(
        &mut self,
        jobs: &mut [Box<dyn Work>],
        undo: &mut HashMap<String, Option<QueueMeta>>,
        durable: bool,
    ) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(db_error)?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(db_error)?;
        {
            let mut batch = Batch {
                queues: txn.open_table(QUEUES).map_err(db_error)?,
                messages: txn.open_table(MESSAGES).map_err(db_error)?,
                peeks: txn.open_table(PEEKS).map_err(db_error)?,
                meta: &mut self.meta,
                next_id: &mut self.next_id,
                undo,
                now: now_millis(),
                scratch: Vec::new(),
            };
            for job in jobs.iter_mut() {
                job.apply(&mut batch)?;
            }
            batch.write_meta()?;
        }
        txn.commit().map_err(db_error)
    }

    fn close(self) {
        let slot = write(&self.shared.db).take();
        drop(slot);
        match Arc::try_unwrap(self.db) {
            Ok(db) => {
                if let Err(e) = db.close() {
                    tracing::error!(error = %e, "closing the store failed");
                }
            }
            // A read still holds the database; it closes when that read ends.
            Err(_) => tracing::debug!("store closes after the last read"),
        }
    }
}

/// One write transaction in progress, with the commands the jobs apply.
struct Batch<'t> {
    queues: Table<'t, &'static str, &'static [u8]>,
    messages: Table<'t, (u64, u64), &'static [u8]>,
    peeks: Table<'t, (u64, u64), u64>,
    meta: &'t mut HashMap<String, QueueMeta>,
    next_id: &'t mut u64,
    /// The metadata of every queue touched, as it was before the batch.
    undo: &'t mut HashMap<String, Option<QueueMeta>>,
    now: u64,
    scratch: Vec<u8>,
}

impl Batch<'_> {
    /// The queue's metadata for changing, created if new; remembers the original.
    fn touch(&mut self, queue: &str) -> &mut QueueMeta {
        if !self.undo.contains_key(queue) {
            self.undo
                .insert(queue.to_owned(), self.meta.get(queue).copied());
        }
        let next_id = &mut *self.next_id;
        self.meta.entry(queue.to_owned()).or_insert_with(|| {
            let id = *next_id;
            *next_id += 1;
            QueueMeta {
                id,
                info: QueueInfo::default(),
            }
        })
    }

    fn write_meta(&mut self) -> Result<(), StoreError> {
        for name in self.undo.keys() {
            if let Some(meta) = self.meta.get(name) {
                self.queues
                    .insert(name.as_str(), meta.encode().as_slice())
                    .map_err(db_error)?;
            }
        }
        Ok(())
    }

    fn publish(&mut self, queue: &str, messages: &[NewMessage]) -> Result<Vec<u64>, StoreError> {
        let now = self.now;
        let meta = self.touch(queue);
        let qid = meta.id;
        let first = meta.info.last_id + 1;
        let count = messages.len() as u64;
        meta.info.last_id += count;
        meta.info.len += count;
        // A queue starts on its first message, unless it was stopped beforehand.
        meta.info.status.get_or_insert(Status::Started);
        let mut ids = Vec::with_capacity(messages.len());
        for (id, message) in (first..).zip(messages) {
            let expires_at = match message.ttl {
                Some(ttl) if ttl > 0 => now.saturating_add(ttl.saturating_mul(1000)),
                _ => 0,
            };
            encode_message(&mut self.scratch, expires_at, &message.value);
            self.messages
                .insert((qid, id), self.scratch.as_slice())
                .map_err(db_error)?;
            ids.push(id);
        }
        Ok(ids)
    }

    /// The first stored message of queue `qid`: its number and raw record.
    fn head(&self, qid: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let mut range = self
            .messages
            .range((qid, 0)..=(qid, u64::MAX))
            .map_err(db_error)?;
        match range.next() {
            Some(entry) => {
                let (key, raw) = entry.map_err(db_error)?;
                Ok(Some((key.value().1, raw.value().to_vec())))
            }
            None => Ok(None),
        }
    }

    /// Removes message `id` of `queue`; true when it was there.
    fn remove(&mut self, queue: &str, qid: u64, id: u64) -> Result<bool, StoreError> {
        let existed = self.messages.remove((qid, id)).map_err(db_error)?.is_some();
        if existed {
            self.peeks.remove((qid, id)).map_err(db_error)?;
            let meta = self.touch(queue);
            meta.info.len = meta.info.len.saturating_sub(1);
        }
        Ok(existed)
    }

    /// The head of `queue` that has not expired, dropping expired ones on the way.
    fn live_head(&mut self, queue: &str) -> Result<Option<(u64, u64, String)>, StoreError> {
        let Some(qid) = self.meta.get(queue).map(|m| m.id) else {
            return Ok(None);
        };
        while let Some((id, raw)) = self.head(qid)? {
            let (expires_at, value) = decode_message(&raw)?;
            if !expired(expires_at, self.now) {
                return Ok(Some((qid, id, value)));
            }
            self.remove(queue, qid, id)?;
        }
        Ok(None)
    }

    fn pop(&mut self, queue: &str) -> Result<Option<Message>, StoreError> {
        let Some((qid, id, value)) = self.live_head(queue)? else {
            return Ok(None);
        };
        self.remove(queue, qid, id)?;
        Ok(Some(Message { id, value }))
    }

    fn peek(&mut self, queue: &str) -> Result<Option<(Message, u64)>, StoreError> {
        let Some((qid, id, value)) = self.live_head(queue)? else {
            return Ok(None);
        };
        let reads = self
            .peeks
            .get((qid, id))
            .map_err(db_error)?
            .map_or(0, |g| g.value())
            + 1;
        self.peeks.insert((qid, id), reads).map_err(db_error)?;
        Ok(Some((Message { id, value }, reads)))
    }

    fn delete(&mut self, queue: &str, id: u64) -> Result<bool, StoreError> {
        let Some(qid) = self.meta.get(queue).map(|m| m.id) else {
            return Ok(false);
        };
        let live = match self.messages.get((qid, id)).map_err(db_error)? {
            Some(raw) => !expired(decode_message(raw.value())?.0, self.now),
            None => return Ok(false),
        };
        self.remove(queue, qid, id)?;
        Ok(live)
    }

    fn purge(&mut self, queue: &str) -> Result<bool, StoreError> {
        let Some(meta) = self.meta.get(queue).copied() else {
            return Ok(false);
        };
        let range = (meta.id, 0)..=(meta.id, u64::MAX);
        self.messages
            .retain_in(range.clone(), |_, _| false)
            .map_err(db_error)?;
        self.peeks
            .retain_in(range, |_, _| false)
            .map_err(db_error)?;
        self.touch(queue).info.len = 0;
        Ok(meta.info.len > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_records_round_trip() {
        let meta = QueueMeta {
            id: 7,
            info: QueueInfo {
                len: 3,
                last_id: 99,
                status: Some(Status::Stopped),
                policy: Some(Policy::RoundRobin),
            },
        };
        assert_eq!(QueueMeta::decode(&meta.encode()).ok(), Some(meta));
        assert!(QueueMeta::decode(&[0u8; 3]).is_err());
        let mut bad = meta.encode();
        bad[26] = 9;
        assert!(QueueMeta::decode(&bad).is_err());
    }

    #[test]
    fn message_records_round_trip() {
        let mut buf = Vec::new();
        encode_message(&mut buf, 42, "héllo");
        assert_eq!(decode_message(&buf).ok(), Some((42, "héllo".to_owned())));
        assert!(decode_message(&[1, 2]).is_err());
    }
}
