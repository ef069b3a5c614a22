//! Pops answered on the connection threads, without a hop to the writer.
//!
//! A pop sent to the writer thread costs two thread hand-offs (there and back),
//! which measured at about a third of a pop's CPU on this store. So, after a
//! pop, the writer copies the next messages of the queue (up to
//! [`FILL_MESSAGES`]) into this cache, leaving them in the store, and later
//! pops take them from here on the thread serving the request. Each such pop
//! first writes a small record naming the message into a file mapped into
//! memory (`restmq.pops`): a write to memory, no system call, that survives a
//! crash of restmq as the log does (the kernel owns the page), so the message
//! stays taken as a GET promises (see the README, Durability). The writer
//! removes the messages taken from the store at the start of its next batch,
//! which logs the removals and the number of the last record they cover; a
//! restart applies the records beyond it.
//!
//! The cache is only a copy of a queue's head, and the writer throws it away
//! before anything else it runs touches that head (pops of its own, receives,
//! deletes, purges, puts back), so every other command sees the queue as if
//! every pop had gone through the writer. A queue with messages in flight or
//! delayed is not cached: their return must come before newer messages. Nor
//! is a message whose arrival (published, or brought back) is not yet in the
//! log: a pop answered from here does not wait for the log.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};

use super::records::{QueueMeta, expired, u64_at};
use crate::store::Message;

/// The messages a fill copies at most, per queue.
pub(super) const FILL_MESSAGES: usize = 256;
/// The message bytes a fill copies at most, per queue (at least one message).
const FILL_BYTES: usize = 1 << 20;
/// The message bytes all queues' caches hold at most.
const BUDGET_BYTES: usize = 32 << 20;
/// One record: sequence number, queue id, message number, check; 8 bytes each.
const RECORD: usize = 32;
/// Records the file holds: pops not yet applied by the writer, at most.
const SLOTS: u64 = 1 << 17;
const CHECK_SEED: u64 = 0x7265_7374_6d71_706f;

/// The cache of every queue, and the file of records of its pops.
pub(super) struct PopCache {
    inner: Mutex<Inner>,
}

struct Inner {
    queues: HashMap<String, Cached>,
    /// None when the file could not be mapped: every pop goes to the writer.
    ring: Option<Ring>,
    /// The sequence number of the next record.
    next: u64,
    /// Records numbered below this are applied in a frame written to the log:
    /// their slots may be reused.
    free_from: u64,
    /// Message bytes held by all queues' caches.
    bytes: usize,
    /// The queues with messages taken since the writer last drained.
    taking: Vec<String>,
}

struct Cached {
    qid: u64,
    messages: VecDeque<Message>,
    bytes: usize,
    /// The number of the last message cached (taken or not): a fill goes on
    /// after it.
    last: Option<u64>,
    /// Whether a fill was asked for and has not come yet.
    asked: bool,
    /// Whether a pop took from it since caches were last emptied for room.
    used: bool,
    /// Messages taken and not yet handed to the writer.
    taken: Vec<u64>,
    /// Messages taken whose removal the writer has not yet published in the
    /// readers' metadata (see [`PopCache::publish_meta`]).
    unapplied: u64,
}

/// What a pop from the cache got.
pub(super) struct Taken {
    pub messages: Vec<Message>,
    /// Whether the writer should be asked to fill the cache up.
    pub refill: bool,
}

/// Where a fill goes on, and how much it may copy.
pub(super) struct Room {
    /// The message to start from (0: the queue's head).
    pub from: u64,
    /// How many messages it may copy.
    pub messages: usize,
    /// How many bytes of values it may copy (at least one message).
    pub bytes: usize,
}

/// What the writer takes to apply: every queue's taken messages, and the
/// sequence number below which all records are covered by them.
pub(super) struct Drained {
    pub pops: Vec<(String, Vec<u64>)>,
    pub upto: u64,
}

fn check(seq: u64, qid: u64, id: u64) -> u64 {
    // splitmix64 over the fields: a torn or stale slot does not pass.
    let mut x = CHECK_SEED;
    for v in [seq, qid, id] {
        x ^= v;
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
    }
    x
}

fn encode(seq: u64, qid: u64, id: u64) -> [u8; RECORD] {
    let mut out = [0u8; RECORD];
    out[0..8].copy_from_slice(&seq.to_be_bytes());
    out[8..16].copy_from_slice(&qid.to_be_bytes());
    out[16..24].copy_from_slice(&id.to_be_bytes());
    out[24..32].copy_from_slice(&check(seq, qid, id).to_be_bytes());
    out
}

/// The records of `file` numbered `from` or above, as (queue id, message
/// number), in sequence order; slots that are torn, stale or empty are skipped.
pub(super) fn records(file: &[u8], from: u64) -> (Vec<(u64, u64)>, u64) {
    let mut found: Vec<(u64, u64, u64)> = file
        .chunks_exact(RECORD)
        .filter_map(|slot| {
            let (seq, qid, id) = (u64_at(slot, 0), u64_at(slot, 8), u64_at(slot, 16));
            (seq >= from && u64_at(slot, 24) == check(seq, qid, id)).then_some((seq, qid, id))
        })
        .collect();
    found.sort_unstable();
    let next = found.last().map_or(from, |&(seq, _, _)| seq + 1);
    (found.into_iter().map(|(_, q, id)| (q, id)).collect(), next)
}

/// The mapped file of records.
struct Ring {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is only written under the cache's mutex, and unmapped
// once, when the last owner drops it.
unsafe impl Send for Ring {}

impl Ring {
    #[cfg(target_os = "linux")]
    fn map(file: &File) -> std::io::Result<Ring> {
        use std::os::fd::AsRawFd;
        let len = (SLOTS as usize) * RECORD;
        // Allocated, not sparse: a first write to a page of a hole could fail
        // (a full disk) and would kill the process through the mapping.
        // SAFETY: a plain system call on a file descriptor we hold open.
        let allocated = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
        if allocated != 0 {
            return Err(std::io::Error::from_raw_os_error(allocated));
        }
        // SAFETY: a fresh shared mapping of a file we hold open, of its length;
        // nothing else in this process maps it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base =
            NonNull::new(base.cast::<u8>()).ok_or_else(|| std::io::Error::other("null mapping"))?;
        Ok(Ring { base, len })
    }

    #[cfg(not(target_os = "linux"))]
    fn map(_file: &File) -> std::io::Result<Ring> {
        Err(std::io::Error::other(
            "the file of pops is mapped on Linux only",
        ))
    }

    fn write(&mut self, seq: u64, qid: u64, id: u64) {
        let at = (seq % SLOTS) as usize * RECORD;
        let record = encode(seq, qid, id);
        debug_assert!(at + RECORD <= self.len);
        // SAFETY: `at + RECORD` is within the mapping (`SLOTS` slots), and the
        // caller holds the mutex that guards every access to it.
        unsafe {
            std::ptr::copy_nonoverlapping(record.as_ptr(), self.base.as_ptr().add(at), RECORD);
        }
    }

    fn sync(&self) {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: the range is exactly the live mapping made in `map`.
            let synced = unsafe { libc::msync(self.base.as_ptr().cast(), self.len, libc::MS_SYNC) };
            if synced != 0 {
                tracing::warn!(error = %std::io::Error::last_os_error(), "cannot sync the file of pops; a crash of the machine now may bring back its last pops");
            }
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        // SAFETY: unmaps exactly the mapping made in `map`, which nothing uses
        // any more.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

impl Cached {
    /// Whether nothing of it is left to hand out, drain or count.
    fn spent(&self) -> bool {
        self.messages.is_empty() && self.taken.is_empty() && self.unapplied == 0
    }

    /// Drops the messages cached; returns their bytes. Only once its taken
    /// messages are drained (or as they are): the next fill reads the head.
    fn clear(&mut self) -> usize {
        self.messages.clear();
        self.last = None;
        self.asked = false;
        std::mem::take(&mut self.bytes)
    }
}

impl Inner {
    /// Forgets queue `name` once nothing of it is left to hand out or count.
    fn drop_if_spent(&mut self, name: &str) {
        if self.queues.get(name).is_some_and(Cached::spent) {
            self.queues.remove(name);
        }
    }

    /// Empties the caches no pop took from since the last call (and whose
    /// taken messages are drained), and starts counting again.
    fn evict_idle(&mut self) {
        let mut freed = 0;
        for entry in self.queues.values_mut() {
            if !entry.used && entry.taken.is_empty() {
                freed += entry.clear();
            }
            entry.used = false;
        }
        self.bytes -= freed;
        self.queues.retain(|_, e| !e.spent());
    }
}

impl PopCache {
    /// A cache recording its pops in `path` from record `next` on; without a
    /// mapping (it failed), every pop goes to the writer.
    pub fn open(path: &Path, next: u64) -> PopCache {
        let ring = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .and_then(|file| Ring::map(&file));
        let ring = match ring {
            Ok(ring) => Some(ring),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot map the file of pops; every pop goes through the writer");
                None
            }
        };
        PopCache::with(ring, next)
    }

    /// A cache that never holds anything (for replaying the log).
    pub fn disabled() -> PopCache {
        PopCache::with(None, 0)
    }

    fn with(ring: Option<Ring>, next: u64) -> PopCache {
        PopCache {
            inner: Mutex::new(Inner {
                queues: HashMap::new(),
                ring,
                next,
                free_from: next,
                bytes: 0,
                taking: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes up to `max` messages of `queue` from its cache, recording each
    /// before it is handed out; expired ones are taken and not handed out.
    /// None when the cache cannot answer (it holds fewer than `max`, the file
    /// is full, or the queue has hidden messages): the pop goes to the writer.
    pub fn take(
        &self,
        queue: &str,
        max: usize,
        now: u64,
        meta: &RwLock<HashMap<String, QueueMeta>>,
    ) -> Option<Taken> {
        let mut inner = self.lock();
        let Inner {
            queues,
            ring,
            next,
            free_from,
            bytes,
            taking,
        } = &mut *inner;
        let ring = ring.as_mut()?;
        let entry = queues.get_mut(queue)?;
        // A pop of several takes them all here or all from the store, where
        // there may be more than the cache holds.
        if entry.messages.len() < max.max(1) {
            return None;
        }
        let mut meta = meta.write().unwrap_or_else(PoisonError::into_inner);
        let info = &mut meta.get_mut(queue)?.info;
        if info.inflight + info.delayed > 0 {
            return None;
        }
        let mut out = Vec::new();
        let mut taken = 0;
        while out.len() < max && *next < *free_from + SLOTS {
            let Some(message) = entry.messages.pop_front() else {
                break;
            };
            ring.write(*next, entry.qid, message.id);
            *next += 1;
            if entry.taken.is_empty() {
                taking.push(queue.to_owned());
            }
            entry.taken.push(message.id);
            entry.bytes -= message.value.len();
            *bytes -= message.value.len();
            taken += 1;
            if !expired(message.expires_at, now) {
                out.push(message);
            }
        }
        entry.unapplied += taken;
        entry.used = true;
        info.len = info.len.saturating_sub(taken);
        // Asked before it runs dry, so that pops keep finding messages here
        // while the writer copies more.
        let refill = !entry.asked && entry.messages.len() < FILL_MESSAGES / 2;
        entry.asked |= refill;
        // Only expired ones (or none) taken: the writer looks further.
        (!out.is_empty()).then_some(Taken {
            messages: out,
            refill,
        })
    }

    /// Hands every queue's taken messages to the writer; with `forget`, also
    /// empties that queue's cache, whose messages are in the store still.
    pub fn drain(&self, forget: Option<&str>) -> Drained {
        let mut inner = self.lock();
        let inner = &mut *inner;
        if let Some(entry) = forget.and_then(|name| inner.queues.get_mut(name)) {
            inner.bytes -= entry.clear();
        }
        let pops = std::mem::take(&mut inner.taking)
            .into_iter()
            .filter_map(|name| {
                let entry = inner.queues.get_mut(&name)?;
                let ids = std::mem::take(&mut entry.taken);
                (!ids.is_empty()).then_some((name, ids))
            })
            .collect();
        if let Some(name) = forget {
            inner.drop_if_spent(name);
        }
        Drained {
            pops,
            upto: inner.next,
        }
    }

    /// Whether `queue`'s cache may take more, and from where: after what it
    /// holds, or from the head when it holds nothing. When the caches are all
    /// full, those no pop took from since the last time this happened are
    /// emptied to make room.
    pub fn room(&self, queue: &str) -> Option<Room> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        // Answered, whether or not there is room: a later pop may ask again.
        if let Some(entry) = inner.queues.get_mut(queue) {
            entry.asked = false;
        }
        inner.ring.as_ref()?;
        if inner.bytes >= BUDGET_BYTES {
            inner.evict_idle();
        }
        let budget = BUDGET_BYTES.checked_sub(inner.bytes).filter(|&b| b > 0)?;
        // After what was cached, even if all of it was taken: messages taken
        // since the writer last drained are in the store still.
        let (from, held, bytes) = match inner.queues.get(queue) {
            Some(entry) => (
                entry.last.map_or(0, |last| last + 1),
                entry.messages.len(),
                entry.bytes,
            ),
            None => (0, 0, 0),
        };
        (held < FILL_MESSAGES && bytes < FILL_BYTES).then(|| Room {
            from,
            messages: FILL_MESSAGES - held,
            bytes: (FILL_BYTES - bytes).min(budget),
        })
    }

    /// Caches `messages`, which follow what queue `queue` (id `qid`) has
    /// cached, or start at its head in the store.
    pub fn fill(&self, queue: &str, qid: u64, messages: Vec<Message>) {
        let Some(last) = messages.last().map(|m| m.id) else {
            return;
        };
        let mut inner = self.lock();
        let size: usize = messages.iter().map(|m| m.value.len()).sum();
        inner.bytes += size;
        let entry = inner
            .queues
            .entry(queue.to_owned())
            .or_insert_with(|| Cached {
                qid,
                messages: VecDeque::new(),
                bytes: 0,
                last: None,
                asked: false,
                used: true,
                taken: Vec::new(),
                unapplied: 0,
            });
        entry.qid = qid;
        entry.bytes += size;
        entry.last = Some(last);
        entry.messages.extend(messages);
    }

    /// Publishes the writer's metadata of the queues a batch touched to the
    /// readers, less the pops taken since the batch drained them, and counts
    /// the `drained` pops as published. Under the cache's lock, so a pop
    /// between the two cannot be counted twice or not at all.
    pub fn publish_meta<'a>(
        &self,
        drained: impl IntoIterator<Item = (&'a str, u64)>,
        touched: impl IntoIterator<Item = (&'a str, QueueMeta)>,
        meta: &RwLock<HashMap<String, QueueMeta>>,
    ) {
        let mut inner = self.lock();
        let mut spent = Vec::new();
        for (name, applied) in drained {
            if let Some(entry) = inner.queues.get_mut(name) {
                entry.unapplied = entry.unapplied.saturating_sub(applied);
                spent.push(name);
            }
        }
        let mut shared = meta.write().unwrap_or_else(PoisonError::into_inner);
        for (name, mut m) in touched {
            let pending = inner.queues.get(name).map_or(0, |e| e.unapplied);
            m.info.len = m.info.len.saturating_sub(pending);
            shared.insert(name.to_owned(), m);
        }
        drop(shared);
        for name in spent {
            inner.drop_if_spent(name);
        }
    }

    /// Records numbered below `upto` are applied in a frame now in the log.
    pub fn written(&self, upto: u64) {
        let mut inner = self.lock();
        inner.free_from = inner.free_from.max(upto);
    }

    /// Stops answering pops (they go to the writer, which is closed) and
    /// writes the records to the disk, so that a crash of the machine after a
    /// clean stop does not bring back the pops they record.
    pub fn close(&self) {
        if let Some(ring) = self.lock().ring.take() {
            ring.sync();
        }
    }

    /// How many messages of `queue` are cached.
    #[cfg(test)]
    pub fn cached(&self, queue: &str) -> usize {
        self.lock()
            .queues
            .get(queue)
            .map_or(0, |e| e.messages.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: u64, size: usize) -> Message {
        Message {
            id,
            value: "m".repeat(size),
            expires_at: 0,
        }
    }

    fn meta_of(queues: &[&str]) -> RwLock<HashMap<String, QueueMeta>> {
        let all = queues
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mut m = QueueMeta {
                    id: i as u64 + 1,
                    info: Default::default(),
                };
                m.info.len = u64::MAX / 2;
                (name.to_string(), m)
            })
            .collect();
        RwLock::new(all)
    }

    /// Pops wait for the writer once the file holds as many records not yet
    /// applied as it has slots, and go on once it has applied them.
    #[test]
    fn a_full_file_of_pops_sends_pops_to_the_writer() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = PopCache::open(&dir.path().join("pops"), 1);
        let meta = meta_of(&["q"]);
        cache.fill("q", 1, (1..=SLOTS + 2).map(|id| message(id, 1)).collect());
        for _ in 0..SLOTS {
            assert!(cache.take("q", 1, 0, &meta).is_some());
        }
        assert!(cache.take("q", 1, 0, &meta).is_none(), "no free slot");
        let drained = cache.drain(None);
        assert_eq!(drained.upto, SLOTS + 1);
        assert!(
            cache.take("q", 1, 0, &meta).is_none(),
            "drained, not yet written"
        );
        cache.written(drained.upto);
        let taken = cache.take("q", 1, 0, &meta).expect("a free slot again");
        assert_eq!(taken.messages[0].id, SLOTS + 1);
    }

    /// Once the caches hold all they may, the next fill empties those no pop
    /// took from since the last time, and only those.
    #[test]
    fn full_caches_make_room_by_emptying_idle_ones() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = PopCache::open(&dir.path().join("pops"), 1);
        let meta = meta_of(&["idle", "busy", "new"]);
        let half = BUDGET_BYTES / 2;
        cache.fill("idle", 1, vec![message(1, half)]);
        cache.fill("busy", 2, vec![message(1, 1), message(2, half)]);
        assert!(cache.room("new").is_none(), "full, and both filled since");
        assert!(cache.take("busy", 1, 0, &meta).is_some());
        let room = cache.room("new").expect("the idle cache emptied");
        assert_eq!((room.from, room.messages), (0, FILL_MESSAGES));
        assert_eq!(cache.cached("idle"), 0);
        assert_eq!(cache.cached("busy"), 1, "taken from: kept");
        assert!(cache.take("idle", 1, 0, &meta).is_none());
    }

    #[test]
    fn records_read_back_in_order_and_bad_slots_are_skipped() {
        let mut file = vec![0u8; 8 * RECORD];
        for (slot, (seq, qid, id)) in [(5, 1, 10), (3, 1, 8), (4, 2, 9), (1, 1, 2)]
            .into_iter()
            .enumerate()
        {
            file[slot * RECORD..(slot + 1) * RECORD].copy_from_slice(&encode(seq, qid, id));
        }
        // A torn slot: its check does not match.
        let mut torn = encode(9, 1, 99);
        torn[20] ^= 1;
        file[4 * RECORD..5 * RECORD].copy_from_slice(&torn);
        let (found, next) = records(&file, 3);
        assert_eq!(
            found,
            vec![(1, 8), (2, 9), (1, 10)],
            "stale 1 and torn 9 skipped"
        );
        assert_eq!(next, 6);
        assert_eq!(records(&file, 6), (Vec::new(), 6));
    }
}
