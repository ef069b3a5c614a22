//! One write transaction in progress: the store's commands, built on a few
//! physical changes that are applied to redb and recorded for the log together.
//!
//! A message is visible (in `messages`, in key order), or hidden (in `held`:
//! received and in flight, or delayed) until it is due (`due` indexes hidden
//! messages by time). Hidden messages that came due are settled lazily, at the
//! start of every command that reads the queue: back among the visible ones
//! under their own key (so at their place in key order), dropped if expired, or
//! moved to the dead-letter queue after `max_receives` receives.

use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;

use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};

use super::cache::{Drained, PopCache};
use super::db_error;
use super::records::{
    Held, HeldState, QueueMeta, encode_message, expired, policy_code, policy_from_code,
    split_message, status_code, status_from_code, value_text,
};
use super::wal::Op;
use crate::store::{Message, NewMessage, QueueConfig, QueueInfo, Received, Status, StoreError};

pub(super) const QUEUES: TableDefinition<&str, &[u8]> = TableDefinition::new("queues");
pub(super) const MESSAGES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("messages");
pub(super) const PEEKS: TableDefinition<(u64, u64), u64> = TableDefinition::new("peeks");
/// Receives so far of visible messages that were received before.
pub(super) const DELIVERIES: TableDefinition<(u64, u64), u32> = TableDefinition::new("deliveries");
/// Hidden messages: (queue id, message number) -> [`Held`] record.
pub(super) const HELD: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("held");
/// Hidden messages by the time they are due: (queue id, due, message number).
pub(super) const DUE: TableDefinition<(u64, u64, u64), ()> = TableDefinition::new("due");
/// Settings of queues, as JSON.
pub(super) const CONFIGS: TableDefinition<&str, &[u8]> = TableDefinition::new("configs");

/// The writer's state that outlives transactions.
pub(super) struct Meta {
    /// Every known queue.
    pub queues: HashMap<String, QueueMeta>,
    /// The id the next new queue gets.
    pub next_id: u64,
    /// Settings of the queues that have some.
    pub configs: HashMap<String, QueueConfig>,
    /// The queues' heads copied for pops on the connection threads.
    pub cache: Arc<PopCache>,
    /// Every record of the file of pops numbered below this is applied.
    pub pops_applied: u64,
}

/// A write transaction's tables, with the commands the writer's jobs run. It
/// lives as long as the transaction, across many batches.
pub(super) struct Batch<'t> {
    queues: Table<'t, &'static str, &'static [u8]>,
    messages: Table<'t, (u64, u64), &'static [u8]>,
    peeks: Table<'t, (u64, u64), u64>,
    deliveries: Table<'t, (u64, u64), u32>,
    held: Table<'t, (u64, u64), &'static [u8]>,
    due: Table<'t, (u64, u64, u64), ()>,
    configs: Table<'t, &'static str, &'static [u8]>,
    meta: &'t mut Meta,
    /// The queues the current batch changed.
    pub touched: HashSet<String>,
    /// The current batch's changes, encoded for the log.
    pub log: Vec<u8>,
    /// The clock, read once per batch.
    now: u64,
    scratch: Vec<u8>,
    /// The queues the current batch moved a message from to its dead-letter
    /// queue, once per message.
    pub dead_lettered: Vec<String>,
    /// For each queue (by id) the current batch gave new messages, its last
    /// message number before the batch: the messages above it are durable only
    /// once the batch is.
    fresh: HashMap<u64, u64>,
    /// The queues (by id) to which the current batch brought back a message
    /// under its old number (come due, returned, put back): the cache must not
    /// hand it out before the batch is in the log, where a new one is kept
    /// out by `fresh`.
    revealed: HashSet<u64>,
    /// Pops taken from the cache that the current batch applied, by queue.
    pub drained: Vec<(String, u64)>,
    /// When the current batch applied pops taken from the cache: the number
    /// of the first record it does not cover.
    pub pops_upto: Option<u64>,
}

impl<'t> Batch<'t> {
    /// Opens the tables of `txn`.
    pub fn open(txn: &'t WriteTransaction, meta: &'t mut Meta) -> Result<Batch<'t>, StoreError> {
        Ok(Batch {
            queues: txn.open_table(QUEUES).map_err(db_error)?,
            messages: txn.open_table(MESSAGES).map_err(db_error)?,
            peeks: txn.open_table(PEEKS).map_err(db_error)?,
            deliveries: txn.open_table(DELIVERIES).map_err(db_error)?,
            held: txn.open_table(HELD).map_err(db_error)?,
            due: txn.open_table(DUE).map_err(db_error)?,
            configs: txn.open_table(CONFIGS).map_err(db_error)?,
            meta,
            touched: HashSet::new(),
            log: Vec::new(),
            now: 0,
            scratch: Vec::new(),
            dead_lettered: Vec::new(),
            fresh: HashMap::new(),
            revealed: HashSet::new(),
            drained: Vec::new(),
            pops_upto: None,
        })
    }

    /// Starts a new batch at time `now`: clears what the previous one recorded.
    pub fn begin(&mut self, now: u64) {
        self.touched.clear();
        self.log.clear();
        self.dead_lettered.clear();
        self.fresh.clear();
        self.revealed.clear();
        self.drained.clear();
        self.pops_upto = None;
        self.now = now;
    }

    /// Whether the messages of `queue` numbered `ids` were all there before the
    /// current batch, so that handing them out need not wait for the batch to
    /// be durable.
    pub fn settled(&self, queue: &str, ids: impl IntoIterator<Item = u64>) -> bool {
        let before = self
            .meta
            .queues
            .get(queue)
            .and_then(|meta| self.fresh.get(&meta.id));
        before.is_none_or(|&before| ids.into_iter().all(|id| id <= before))
    }

    /// Notes that message `id` of queue `qid` is new if it is above `last_id`,
    /// the queue's last number before it.
    fn note_fresh(&mut self, qid: u64, last_id: u64, id: u64) {
        if id > last_id {
            self.fresh.entry(qid).or_insert(last_id);
        }
    }

    /// The metadata of a queue as of the changes applied so far.
    pub fn queue_meta(&self, queue: &str) -> Option<QueueMeta> {
        self.meta.queues.get(queue).copied()
    }

    fn qid(&self, queue: &str) -> Option<u64> {
        self.meta.queues.get(queue).map(|m| m.id)
    }

    /// The settings of `queue`.
    pub fn config(&self, queue: &str) -> QueueConfig {
        self.meta.configs.get(queue).cloned().unwrap_or_default()
    }

    /// Changes the queue's metadata with `change`, the queue created if new.
    fn touch<R>(&mut self, queue: &str, change: impl FnOnce(&mut QueueMeta) -> R) -> R {
        if !self.touched.contains(queue) {
            self.touched.insert(queue.to_owned());
        }
        // Looked up first: the name is copied only for a new queue.
        if let Some(meta) = self.meta.queues.get_mut(queue) {
            return change(meta);
        }
        let next_id = &mut self.meta.next_id;
        let meta = self.meta.queues.entry(queue.to_owned()).or_insert_with(|| {
            let id = *next_id;
            *next_id += 1;
            QueueMeta {
                id,
                info: QueueInfo::default(),
            }
        });
        change(meta)
    }

    /// Writes the metadata of every queue the batch touched to its table.
    pub fn write_meta(&mut self) -> Result<(), StoreError> {
        for name in &self.touched {
            if let Some(meta) = self.meta.queues.get(name) {
                self.queues
                    .insert(name.as_str(), meta.encode().as_slice())
                    .map_err(db_error)?;
            }
        }
        Ok(())
    }

    // The physical changes: each applies to the tables and records itself in
    // the log, and replaying the log applies them again the same way.

    /// Makes message `id` visible.
    fn insert(
        &mut self,
        queue: &str,
        id: u64,
        expires_at: u64,
        value: &[u8],
    ) -> Result<(), StoreError> {
        let (qid, last_id) = self.touch(queue, |meta| {
            let last_id = meta.info.last_id;
            meta.info.last_id = last_id.max(id);
            meta.info.len += 1;
            // A queue starts on its first message, unless it was stopped beforehand.
            meta.info.status.get_or_insert(Status::Started);
            (meta.id, last_id)
        });
        self.note_fresh(qid, last_id, id);
        if id <= last_id {
            self.revealed.insert(qid);
        }
        encode_message(&mut self.scratch, expires_at, value);
        self.messages
            .insert((qid, id), self.scratch.as_slice())
            .map_err(db_error)?;
        Op::Insert {
            queue,
            id,
            expires_at,
            value,
        }
        .encode(&mut self.log);
        Ok(())
    }

    /// Removes visible message `id` of `queue`; true when it was there.
    fn remove(&mut self, queue: &str, id: u64) -> Result<bool, StoreError> {
        let Some(qid) = self.qid(queue) else {
            return Ok(false);
        };
        let existed = self.messages.remove((qid, id)).map_err(db_error)?.is_some();
        if existed {
            self.removed(queue, qid, id)?;
        }
        Ok(existed)
    }

    /// Removes the first visible message of queue `qid`, in one descent of the
    /// tree (a pop's whole cost in redb): its number and raw record.
    fn remove_head(&mut self, queue: &str, qid: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let mut cursor = self
            .messages
            .lower_bound_mut(Bound::Included((qid, 0)))
            .map_err(db_error)?;
        let ours = match cursor.peek_next().map_err(db_error)? {
            Some((key, _)) => key.value().0 == qid,
            None => false,
        };
        let head = if ours {
            cursor
                .remove_next()
                .map_err(db_error)?
                .map(|(key, raw)| (key.value().1, raw.value().to_vec()))
        } else {
            None
        };
        cursor.close().map_err(db_error)?;
        if let Some((id, _)) = &head {
            self.removed(queue, qid, *id)?;
        }
        Ok(head)
    }

    /// What goes with removing visible message `id`: its counts, the queue's
    /// length, and the log.
    fn removed(&mut self, queue: &str, qid: u64, id: u64) -> Result<(), StoreError> {
        self.peeks.remove((qid, id)).map_err(db_error)?;
        self.deliveries.remove((qid, id)).map_err(db_error)?;
        self.touch(queue, |meta| {
            meta.info.len = meta.info.len.saturating_sub(1)
        });
        Op::Remove { queue, id }.encode(&mut self.log);
        Ok(())
    }

    /// As [`Batch::removed`] for messages taken together, `ids` in key order:
    /// the queue's length changes once, and the tables of peeks and deliveries
    /// are searched message by message only when they hold one in the run.
    fn removed_run(&mut self, queue: &str, qid: u64, ids: &[u64]) -> Result<(), StoreError> {
        let (Some(&first), Some(&last)) = (ids.first(), ids.last()) else {
            return Ok(());
        };
        let run = (qid, first)..=(qid, last);
        if self
            .peeks
            .range(run.clone())
            .map_err(db_error)?
            .next()
            .is_some()
        {
            for &id in ids {
                self.peeks.remove((qid, id)).map_err(db_error)?;
            }
        }
        if self
            .deliveries
            .range(run)
            .map_err(db_error)?
            .next()
            .is_some()
        {
            for &id in ids {
                self.deliveries.remove((qid, id)).map_err(db_error)?;
            }
        }
        let taken = ids.len() as u64;
        self.touch(queue, |meta| {
            meta.info.len = meta.info.len.saturating_sub(taken)
        });
        for &id in ids {
            Op::Remove { queue, id }.encode(&mut self.log);
        }
        Ok(())
    }

    fn remove_all(&mut self, queue: &str) -> Result<(), StoreError> {
        let Some(qid) = self.qid(queue) else {
            return Ok(());
        };
        let range = (qid, 0)..=(qid, u64::MAX);
        self.messages
            .retain_in(range.clone(), |_, _| false)
            .map_err(db_error)?;
        self.peeks
            .retain_in(range.clone(), |_, _| false)
            .map_err(db_error)?;
        self.deliveries
            .retain_in(range.clone(), |_, _| false)
            .map_err(db_error)?;
        self.held.retain_in(range, |_, _| false).map_err(db_error)?;
        self.due
            .retain_in((qid, 0, 0)..=(qid, u64::MAX, u64::MAX), |_, _| false)
            .map_err(db_error)?;
        self.touch(queue, |meta| {
            meta.info.len = 0;
            meta.info.inflight = 0;
            meta.info.delayed = 0;
        });
        Op::Purge { queue }.encode(&mut self.log);
        Ok(())
    }

    fn set_peeks(&mut self, queue: &str, qid: u64, id: u64, count: u64) -> Result<(), StoreError> {
        self.peeks.insert((qid, id), count).map_err(db_error)?;
        Op::Peeked { queue, id, count }.encode(&mut self.log);
        Ok(())
    }

    /// Records how many times a visible message was received (0: never).
    fn set_deliveries(&mut self, queue: &str, id: u64, count: u32) -> Result<(), StoreError> {
        let Some(qid) = self.qid(queue) else {
            return Ok(());
        };
        if count == 0 {
            self.deliveries.remove((qid, id)).map_err(db_error)?;
        } else {
            self.deliveries.insert((qid, id), count).map_err(db_error)?;
        }
        Op::Deliveries { queue, id, count }.encode(&mut self.log);
        Ok(())
    }

    fn set_meta(&mut self, queue: &str, status: u8, policy: u8) -> Result<(), StoreError> {
        let (status_value, policy_value) = (status_from_code(status)?, policy_from_code(policy)?);
        self.touch(queue, |meta| {
            meta.info.status = status_value;
            meta.info.policy = policy_value;
        });
        Op::Meta {
            queue,
            status,
            policy,
        }
        .encode(&mut self.log);
        Ok(())
    }

    /// Hides message `id` as `record` says, replacing any record it had.
    fn hold(&mut self, queue: &str, id: u64, record: &Held) -> Result<(), StoreError> {
        self.unhold_quietly(queue, id)?;
        let (qid, last_id) = self.touch(queue, |meta| {
            let last_id = meta.info.last_id;
            meta.info.last_id = last_id.max(id);
            meta.info.status.get_or_insert(Status::Started);
            match record.state {
                HeldState::InFlight => meta.info.inflight += 1,
                HeldState::Delayed => meta.info.delayed += 1,
            }
            (meta.id, last_id)
        });
        self.note_fresh(qid, last_id, id);
        let mut encoded = Vec::with_capacity(record.value.len() + 32);
        record.encode(&mut encoded);
        self.held
            .insert((qid, id), encoded.as_slice())
            .map_err(db_error)?;
        self.due
            .insert((qid, record.due, id), ())
            .map_err(db_error)?;
        Op::Hold {
            queue,
            id,
            record: &encoded,
        }
        .encode(&mut self.log);
        Ok(())
    }

    /// Removes the hidden record of message `id`, without logging (the caller logs).
    fn unhold_quietly(&mut self, queue: &str, id: u64) -> Result<Option<Held>, StoreError> {
        let Some(qid) = self.qid(queue) else {
            return Ok(None);
        };
        let Some(raw) = self.held.remove((qid, id)).map_err(db_error)? else {
            return Ok(None);
        };
        let held = Held::decode(raw.value())?;
        drop(raw);
        self.due.remove((qid, held.due, id)).map_err(db_error)?;
        self.touch(queue, |meta| match held.state {
            HeldState::InFlight => meta.info.inflight = meta.info.inflight.saturating_sub(1),
            HeldState::Delayed => meta.info.delayed = meta.info.delayed.saturating_sub(1),
        });
        Ok(Some(held))
    }

    /// Removes the hidden record of message `id`.
    fn unhold(&mut self, queue: &str, id: u64) -> Result<Option<Held>, StoreError> {
        let held = self.unhold_quietly(queue, id)?;
        if held.is_some() {
            Op::Unhold { queue, id }.encode(&mut self.log);
        }
        Ok(held)
    }

    fn write_config(&mut self, queue: &str, config: QueueConfig) -> Result<(), StoreError> {
        let json = serde_json::to_vec(&config)
            .map_err(|e| StoreError::Corrupted(format!("cannot encode settings: {e}")))?;
        self.configs
            .insert(queue, json.as_slice())
            .map_err(db_error)?;
        Op::Config { queue, json: &json }.encode(&mut self.log);
        self.meta.configs.insert(queue.to_owned(), config);
        Ok(())
    }

    /// Applies a change read back from the log.
    pub fn replay(&mut self, op: &Op<'_>) -> Result<(), StoreError> {
        match *op {
            Op::Insert {
                queue,
                id,
                expires_at,
                value,
            } => self.insert(queue, id, expires_at, value),
            Op::Remove { queue, id } => self.remove(queue, id).map(drop),
            Op::Purge { queue } => self.remove_all(queue),
            Op::Peeked { queue, id, count } => match self.qid(queue) {
                Some(qid) => self.set_peeks(queue, qid, id, count),
                None => Ok(()),
            },
            Op::Meta {
                queue,
                status,
                policy,
            } => self.set_meta(queue, status, policy),
            Op::Deliveries { queue, id, count } => self.set_deliveries(queue, id, count),
            Op::Hold { queue, id, record } => self.hold(queue, id, &Held::decode(record)?),
            Op::Unhold { queue, id } => self.unhold(queue, id).map(drop),
            Op::Config { queue, json } => {
                let config = serde_json::from_slice(json)
                    .map_err(|e| StoreError::Corrupted(format!("unreadable settings: {e}")))?;
                self.write_config(queue, config)
            }
            Op::Popped { upto } => {
                self.meta.pops_applied = self.meta.pops_applied.max(upto);
                Ok(())
            }
        }
    }

    // The cache of queues' heads (see `cache.rs`).

    /// The cache of queues' heads.
    pub fn cache(&self) -> Arc<PopCache> {
        self.meta.cache.clone()
    }

    /// Applies the pops taken from the cache since the last batch.
    pub fn apply_cached_pops(&mut self) -> Result<(), StoreError> {
        let drained = self.meta.cache.drain(None);
        self.apply_drained(drained)
    }

    /// Applies the pops taken from the cache and empties `queue`'s: what runs
    /// next on the queue sees it as if every pop had gone through the writer.
    fn uncache(&mut self, queue: &str) -> Result<(), StoreError> {
        let drained = self.meta.cache.drain(Some(queue));
        self.apply_drained(drained)
    }

    fn apply_drained(&mut self, drained: Drained) -> Result<(), StoreError> {
        if drained.pops.is_empty() {
            return Ok(());
        }
        for (queue, mut ids) in drained.pops {
            let count = ids.len() as u64;
            ids.sort_unstable();
            if let (Some(qid), Some(&first), Some(&last)) =
                (self.qid(&queue), ids.first(), ids.last())
            {
                // The cache holds a run of the queue's head, so the messages
                // taken are one: removed in one pass, as a pop of several.
                let mut removed = Vec::with_capacity(ids.len());
                let mut gone = self
                    .messages
                    .extract_from_if((qid, first)..=(qid, last), |(_, id), _| {
                        ids.binary_search(&id).is_ok()
                    })
                    .map_err(db_error)?;
                for entry in gone.by_ref() {
                    removed.push(entry.map_err(db_error)?.0.value().1);
                }
                gone.close().map_err(db_error)?;
                self.removed_run(&queue, qid, &removed)?;
            }
            self.drained.push((queue, count));
        }
        Op::Popped { upto: drained.upto }.encode(&mut self.log);
        self.meta.pops_applied = drained.upto;
        self.pops_upto = Some(drained.upto);
        Ok(())
    }

    /// Removes the messages named by `records` (queue id, message number)
    /// that are visible still: the pops recorded in the file of pops, applied
    /// at start.
    pub fn remove_recorded(&mut self, records: &[(u64, u64)]) -> Result<(), StoreError> {
        let names: HashMap<u64, String> = self
            .meta
            .queues
            .iter()
            .map(|(name, m)| (m.id, name.clone()))
            .collect();
        for (qid, id) in records {
            if let Some(queue) = names.get(qid) {
                self.remove(queue, *id)?;
            }
        }
        Ok(())
    }

    /// Copies the head of `queue` into the cache (the messages after what it
    /// holds), when it has room: only messages whose arrival is in the log
    /// already (none published or brought back in this batch, which the
    /// cache would hand out before the batch is logged), and none while the
    /// queue has hidden messages, whose return comes first.
    pub fn cache_head(&mut self, queue: &str) -> Result<(), StoreError> {
        let Some(meta) = self.queue_meta(queue) else {
            return Ok(());
        };
        if meta.info.inflight + meta.info.delayed > 0 {
            return self.uncache(queue);
        }
        if meta.info.len == 0 || self.revealed.contains(&meta.id) {
            return Ok(());
        }
        let Some(room) = self.meta.cache.room(queue) else {
            return Ok(());
        };
        let qid = meta.id;
        let last = self.fresh.get(&qid).copied().unwrap_or(u64::MAX);
        let mut head = Vec::new();
        let mut bytes = 0;
        for entry in self
            .messages
            .range((qid, room.from)..=(qid, last))
            .map_err(db_error)?
        {
            if head.len() >= room.messages || bytes >= room.bytes {
                break;
            }
            let (key, raw) = entry.map_err(db_error)?;
            let (expires_at, value) = split_message(raw.value())?;
            let value = value_text(value)?;
            bytes += value.len();
            head.push(Message {
                id: key.value().1,
                value,
                expires_at,
            });
        }
        self.meta.cache.fill(queue, qid, head);
        Ok(())
    }

    // The commands.

    /// Brings back the hidden messages of `queue` that came due: visible again,
    /// dropped when expired, or moved to the dead-letter queue.
    fn settle(&mut self, queue: &str) -> Result<(), StoreError> {
        self.uncache(queue)?;
        let Some(meta) = self.queue_meta(queue) else {
            return Ok(());
        };
        if meta.info.inflight + meta.info.delayed == 0 {
            return Ok(());
        }
        let qid = meta.id;
        loop {
            let next = {
                let mut range = self
                    .due
                    .range((qid, 0, 0)..=(qid, self.now, u64::MAX))
                    .map_err(db_error)?;
                match range.next() {
                    Some(entry) => Some(entry.map_err(db_error)?.0.value().2),
                    None => None,
                }
            };
            let Some(id) = next else { return Ok(()) };
            let Some(held) = self.unhold(queue, id)? else {
                continue;
            };
            self.release(queue, id, held)?;
        }
    }

    /// A hidden message's time is up: back among the visible ones, unless
    /// expired, or received too many times (then to the dead-letter queue).
    fn release(&mut self, queue: &str, id: u64, held: Held) -> Result<(), StoreError> {
        if expired(held.expires_at, self.now) || self.dead_letter(queue, &held)? {
            return Ok(());
        }
        self.make_visible(queue, id, &held)
    }

    fn make_visible(&mut self, queue: &str, id: u64, held: &Held) -> Result<(), StoreError> {
        self.insert(queue, id, held.expires_at, &held.value)?;
        self.set_deliveries(queue, id, held.deliveries)
    }

    /// Moves an in-flight message received `max_receives` times to the queue's
    /// dead-letter queue (under a new key there); true when it did.
    fn dead_letter(&mut self, queue: &str, held: &Held) -> Result<bool, StoreError> {
        let config = self.config(queue);
        let received = u64::from(held.deliveries);
        if held.state != HeldState::InFlight
            || config.max_receives == 0
            || received < config.max_receives
        {
            return Ok(false);
        }
        let dead = config.dead_letter_of(queue);
        let id = self.queue_meta(&dead).map_or(0, |m| m.info.last_id) + 1;
        self.insert(&dead, id, held.expires_at, &held.value)?;
        self.dead_lettered.push(queue.to_owned());
        Ok(true)
    }

    pub fn publish(
        &mut self,
        queue: &str,
        messages: &[NewMessage],
    ) -> Result<Vec<u64>, StoreError> {
        let config = self.config(queue);
        let info = self.queue_meta(queue).map(|m| m.info).unwrap_or_default();
        let held = info.len + info.inflight + info.delayed;
        if config.max_len > 0 && held + messages.len() as u64 > config.max_len {
            return Err(StoreError::Full(config.max_len));
        }
        let first = info.last_id + 1;
        let mut ids = Vec::with_capacity(messages.len());
        for (id, message) in (first..).zip(messages) {
            let expires_at = config.expiry(self.now, message.ttl);
            match message.delay.filter(|&d| d > 0) {
                None => self.insert(queue, id, expires_at, message.value.as_bytes())?,
                Some(delay) => {
                    let record = Held {
                        state: HeldState::Delayed,
                        due: self.now.saturating_add(delay.saturating_mul(1000)),
                        deliveries: 0,
                        expires_at,
                        value: message.value.as_bytes().to_vec(),
                    };
                    self.hold(queue, id, &record)?;
                }
            }
            ids.push(id);
        }
        Ok(ids)
    }

    /// The first visible message of queue `qid`: its number and raw record.
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

    /// The visible head of `queue` that has not expired (with its queue's id),
    /// settling due messages first and dropping expired ones on the way.
    fn live_head(&mut self, queue: &str) -> Result<Option<(u64, Message)>, StoreError> {
        self.settle(queue)?;
        let Some(qid) = self.qid(queue) else {
            return Ok(None);
        };
        while let Some((id, raw)) = self.head(qid)? {
            let (expires_at, value) = split_message(&raw)?;
            if !expired(expires_at, self.now) {
                let value = value_text(value)?;
                return Ok(Some((
                    qid,
                    Message {
                        id,
                        value,
                        expires_at,
                    },
                )));
            }
            self.remove(queue, id)?;
        }
        Ok(None)
    }

    pub fn pop(&mut self, queue: &str) -> Result<Option<Message>, StoreError> {
        self.settle(queue)?;
        self.pop_one(queue)
    }

    /// Pops the head of a settled queue.
    fn pop_one(&mut self, queue: &str) -> Result<Option<Message>, StoreError> {
        let Some(qid) = self.qid(queue) else {
            return Ok(None);
        };
        // Expired messages on the way are removed as well.
        while let Some((id, raw)) = self.remove_head(queue, qid)? {
            let (expires_at, value) = split_message(&raw)?;
            if !expired(expires_at, self.now) {
                return Ok(Some(Message {
                    id,
                    value: value_text(value)?,
                    expires_at,
                }));
            }
        }
        Ok(None)
    }

    /// Takes up to `max` messages from the head of `queue`, in key order,
    /// removing expired ones on the way. One pass over the tree: redb rewrites
    /// each leaf once for all the messages taken from it, where taking them one
    /// by one rewrites it, and descends to it, once per message.
    pub fn pop_many(&mut self, queue: &str, max: usize) -> Result<Vec<Message>, StoreError> {
        self.settle(queue)?;
        if max == 1 {
            // In place, where a pass rewrites the leaf it takes from.
            return Ok(self.pop_one(queue)?.into_iter().collect());
        }
        let Some(qid) = self.qid(queue) else {
            return Ok(Vec::new());
        };
        let now = self.now;
        let mut out = Vec::new();
        let mut taken = Vec::new();
        {
            let mut head = self
                .messages
                .extract_from_if((qid, 0)..=(qid, u64::MAX), |_, _| true)
                .map_err(db_error)?;
            while out.len() < max {
                let Some(entry) = head.next() else { break };
                let (key, raw) = entry.map_err(db_error)?;
                let id = key.value().1;
                taken.push(id);
                let (expires_at, value) = split_message(raw.value())?;
                if !expired(expires_at, now) {
                    out.push(Message {
                        id,
                        value: value_text(value)?,
                        expires_at,
                    });
                }
            }
            head.close().map_err(db_error)?;
        }
        self.removed_run(queue, qid, &taken)?;
        Ok(out)
    }

    /// Puts `messages` back under their own numbers (those already there stay).
    pub fn restore(&mut self, queue: &str, messages: &[Message]) -> Result<(), StoreError> {
        // Put back ahead of what the cache holds, which must come after them.
        self.uncache(queue)?;
        for message in messages {
            let present = match self.qid(queue) {
                Some(qid) => {
                    self.messages
                        .get((qid, message.id))
                        .map_err(db_error)?
                        .is_some()
                        || self
                            .held
                            .get((qid, message.id))
                            .map_err(db_error)?
                            .is_some()
                }
                None => false,
            };
            if !present {
                self.insert(
                    queue,
                    message.id,
                    message.expires_at,
                    message.value.as_bytes(),
                )?;
            }
        }
        Ok(())
    }

    pub fn receive(
        &mut self,
        queue: &str,
        max: usize,
        visibility_ms: u64,
    ) -> Result<Vec<Received>, StoreError> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some((qid, message)) = self.live_head(queue)? else {
                break;
            };
            let before = self
                .deliveries
                .get((qid, message.id))
                .map_err(db_error)?
                .map_or(0, |g| g.value());
            self.remove(queue, message.id)?;
            let record = Held {
                state: HeldState::InFlight,
                due: self.now.saturating_add(visibility_ms),
                deliveries: before.saturating_add(1),
                expires_at: message.expires_at,
                value: message.value.as_bytes().to_vec(),
            };
            self.hold(queue, message.id, &record)?;
            out.push(Received {
                message,
                delivery: record.deliveries,
            });
        }
        Ok(out)
    }

    /// The in-flight record of a delivery still valid now.
    fn current(&self, queue: &str, id: u64, delivery: u32) -> Result<Option<Held>, StoreError> {
        let Some(qid) = self.qid(queue) else {
            return Ok(None);
        };
        let Some(raw) = self.held.get((qid, id)).map_err(db_error)? else {
            return Ok(None);
        };
        let held = Held::decode(raw.value())?;
        let valid =
            held.state == HeldState::InFlight && held.deliveries == delivery && held.due > self.now;
        Ok(valid.then_some(held))
    }

    pub fn ack(
        &mut self,
        queue: &str,
        receipts: &[(u64, u32)],
    ) -> Result<Vec<(u64, u32)>, StoreError> {
        let mut stale = Vec::new();
        for &(id, delivery) in receipts {
            if self.current(queue, id, delivery)?.is_none() {
                stale.push((id, delivery));
            }
        }
        if stale.is_empty() {
            for &(id, _) in receipts {
                self.unhold(queue, id)?;
            }
        }
        Ok(stale)
    }

    pub fn nack(
        &mut self,
        queue: &str,
        id: u64,
        delivery: u32,
        delay_ms: u64,
    ) -> Result<bool, StoreError> {
        if self.current(queue, id, delivery)?.is_none() {
            return Ok(false);
        }
        let Some(held) = self.unhold(queue, id)? else {
            return Ok(false);
        };
        if expired(held.expires_at, self.now) || self.dead_letter(queue, &held)? {
            return Ok(true);
        }
        if delay_ms == 0 {
            self.make_visible(queue, id, &held)?;
            return Ok(true);
        }
        let record = Held {
            state: HeldState::Delayed,
            due: self.now.saturating_add(delay_ms),
            ..held
        };
        self.hold(queue, id, &record)?;
        Ok(true)
    }

    pub fn extend(
        &mut self,
        queue: &str,
        id: u64,
        delivery: u32,
        visibility_ms: u64,
    ) -> Result<bool, StoreError> {
        let Some(held) = self.current(queue, id, delivery)? else {
            return Ok(false);
        };
        let record = Held {
            due: self.now.saturating_add(visibility_ms),
            ..held
        };
        self.hold(queue, id, &record)?;
        Ok(true)
    }

    pub fn next_due(&self, queue: &str) -> Result<Option<u64>, StoreError> {
        let Some(qid) = self.qid(queue) else {
            return Ok(None);
        };
        let mut range = self
            .due
            .range((qid, 0, 0)..=(qid, u64::MAX, u64::MAX))
            .map_err(db_error)?;
        match range.next() {
            Some(entry) => Ok(Some(entry.map_err(db_error)?.0.value().1)),
            None => Ok(None),
        }
    }

    pub fn set_config(&mut self, queue: &str, config: QueueConfig) -> Result<(), StoreError> {
        self.write_config(queue, config)
    }

    pub fn redrive(&mut self, from: &str, to: &str) -> Result<u64, StoreError> {
        let mut moved = 0;
        while let Some(message) = self.pop(from)? {
            let id = self.queue_meta(to).map_or(0, |m| m.info.last_id) + 1;
            self.insert(to, id, message.expires_at, message.value.as_bytes())?;
            moved += 1;
        }
        Ok(moved)
    }

    pub fn peek(&mut self, queue: &str) -> Result<Option<(Message, u64)>, StoreError> {
        let Some((qid, message)) = self.live_head(queue)? else {
            return Ok(None);
        };
        let count = self
            .peeks
            .get((qid, message.id))
            .map_err(db_error)?
            .map_or(0, |g| g.value())
            + 1;
        self.set_peeks(queue, qid, message.id, count)?;
        Ok(Some((message, count)))
    }

    /// Deletes message `id`, visible or hidden; true when it was there, unexpired.
    pub fn delete(&mut self, queue: &str, id: u64) -> Result<bool, StoreError> {
        self.uncache(queue)?;
        let Some(qid) = self.qid(queue) else {
            return Ok(false);
        };
        if let Some(held) = self.unhold(queue, id)? {
            return Ok(!expired(held.expires_at, self.now));
        }
        let live = match self.messages.get((qid, id)).map_err(db_error)? {
            Some(raw) => !expired(split_message(raw.value())?.0, self.now),
            None => return Ok(false),
        };
        self.remove(queue, id)?;
        Ok(live)
    }

    pub fn purge(&mut self, queue: &str) -> Result<bool, StoreError> {
        self.uncache(queue)?;
        let Some(info) = self.queue_meta(queue).map(|m| m.info) else {
            return Ok(false);
        };
        self.remove_all(queue)?;
        Ok(info.len + info.inflight + info.delayed > 0)
    }

    pub fn set_policy(
        &mut self,
        queue: &str,
        policy: crate::store::Policy,
    ) -> Result<(), StoreError> {
        let status = self.meta.queues.get(queue).and_then(|m| m.info.status);
        self.set_meta(queue, status_code(status), policy_code(Some(policy)))
    }

    pub fn set_status(&mut self, queue: &str, status: Status) -> Result<(), StoreError> {
        let policy = self.meta.queues.get(queue).and_then(|m| m.info.policy);
        self.set_meta(queue, status_code(Some(status)), policy_code(policy))
    }

    /// Up to `count` of the newest live visible messages of `queue`, newest first.
    pub fn latest(&self, queue: &str, count: usize) -> Result<Vec<Message>, StoreError> {
        let Some(qid) = self.qid(queue) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(count.min(1024));
        let range = self
            .messages
            .range((qid, 0)..=(qid, u64::MAX))
            .map_err(db_error)?;
        for entry in range.rev() {
            if out.len() >= count {
                break;
            }
            let (key, raw) = entry.map_err(db_error)?;
            let (expires_at, value) = split_message(raw.value())?;
            if !expired(expires_at, self.now) {
                out.push(Message {
                    id: key.value().1,
                    value: value_text(value)?,
                    expires_at,
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use redb::{Database, Durability};

    use super::*;
    use crate::store::embedded::records::QueueMeta;

    fn message(value: &str, delay: Option<u64>) -> NewMessage {
        NewMessage {
            value: value.to_owned(),
            ttl: None,
            delay,
        }
    }

    fn ids(messages: &[Message]) -> impl Iterator<Item = u64> + '_ {
        messages.iter().map(|m| m.id)
    }

    #[test]
    fn only_messages_of_an_earlier_batch_are_settled() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let db = Database::create(dir.path().join("t.redb")).expect("a database");
        let mut txn = db.begin_write().expect("a transaction");
        txn.set_durability(Durability::None).expect("no fsync");
        let mut meta = Meta {
            queues: HashMap::<String, QueueMeta>::new(),
            next_id: 1,
            configs: HashMap::new(),
            cache: Arc::new(PopCache::disabled()),
            pops_applied: 0,
        };
        let mut batch = Batch::open(&txn, &mut meta).expect("the tables");
        batch.begin(1_000);
        batch
            .publish("q", &[message("a", None), message("b", None)])
            .expect("published");
        let first = batch.pop("q").expect("popped").expect("a message");
        assert!(
            !batch.settled("q", [first.id]),
            "a message published in the same batch is not durable yet"
        );

        batch.begin(2_000);
        for (queue, value, delay) in [
            ("q", "c", None),
            ("q", "later", Some(60)),
            ("other", "x", None),
            ("delayed", "d", Some(60)),
        ] {
            batch
                .publish(queue, &[message(value, delay)])
                .expect("published");
        }
        assert!(
            !batch.settled("delayed", [1]),
            "a delayed message is new too"
        );
        let taken = batch.pop_many("q", 2).expect("popped");
        let values: Vec<&str> = taken.iter().map(|m| m.value.as_str()).collect();
        assert_eq!(values, ["b", "c"]);
        assert!(
            batch.settled("q", [taken[0].id]),
            "b came in the first batch"
        );
        assert!(!batch.settled("q", ids(&taken)), "c came in this one");
        assert!(
            batch.settled("empty", []),
            "a queue the batch never touched"
        );

        batch.begin(3_000);
        let rest = batch.pop_many("q", 10).expect("popped");
        assert!(rest.is_empty(), "the delayed message is not due yet");
        assert!(
            batch.settled("q", ids(&taken)),
            "every batch before is settled"
        );
        let other = batch.pop("other").expect("popped").expect("x");
        assert!(batch.settled("other", [other.id]));
    }
}
