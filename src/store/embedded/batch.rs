//! One write transaction in progress: the store's commands, built on a few
//! physical changes that are applied to redb and recorded for the log together.

use std::collections::{HashMap, HashSet};

use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};

use super::db_error;
use super::records::{
    QueueMeta, encode_message, expired, policy_code, policy_from_code, split_message, status_code,
    status_from_code, value_text,
};
use super::wal::Op;
use crate::store::{Message, NewMessage, QueueInfo, Status, StoreError};

pub(super) const QUEUES: TableDefinition<&str, &[u8]> = TableDefinition::new("queues");
pub(super) const MESSAGES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("messages");
pub(super) const PEEKS: TableDefinition<(u64, u64), u64> = TableDefinition::new("peeks");

/// The writer's state that outlives transactions.
pub(super) struct Meta {
    /// Every known queue.
    pub queues: HashMap<String, QueueMeta>,
    /// The id the next new queue gets.
    pub next_id: u64,
}

/// A write transaction's tables, with the commands the writer's jobs run. It
/// lives as long as the transaction, across many batches.
pub(super) struct Batch<'t> {
    queues: Table<'t, &'static str, &'static [u8]>,
    messages: Table<'t, (u64, u64), &'static [u8]>,
    peeks: Table<'t, (u64, u64), u64>,
    meta: &'t mut Meta,
    /// The queues the current batch changed.
    pub touched: HashSet<String>,
    /// The current batch's changes, encoded for the log.
    pub log: Vec<u8>,
    /// The clock for expiry, read once per batch.
    now: u64,
    scratch: Vec<u8>,
}

impl<'t> Batch<'t> {
    /// Opens the tables of `txn`.
    pub fn open(txn: &'t WriteTransaction, meta: &'t mut Meta) -> Result<Batch<'t>, StoreError> {
        Ok(Batch {
            queues: txn.open_table(QUEUES).map_err(db_error)?,
            messages: txn.open_table(MESSAGES).map_err(db_error)?,
            peeks: txn.open_table(PEEKS).map_err(db_error)?,
            meta,
            touched: HashSet::new(),
            log: Vec::new(),
            now: 0,
            scratch: Vec::new(),
        })
    }

    /// Starts a new batch: clears what the previous one recorded.
    pub fn begin(&mut self, now: u64) {
        self.touched.clear();
        self.log.clear();
        self.now = now;
    }

    /// The metadata of a queue as of the changes applied so far.
    pub fn queue_meta(&self, queue: &str) -> Option<QueueMeta> {
        self.meta.queues.get(queue).copied()
    }

    /// The queue's metadata for changing, created if new.
    fn touch(&mut self, queue: &str) -> &mut QueueMeta {
        if !self.touched.contains(queue) {
            self.touched.insert(queue.to_owned());
        }
        let next_id = &mut self.meta.next_id;
        self.meta.queues.entry(queue.to_owned()).or_insert_with(|| {
            let id = *next_id;
            *next_id += 1;
            QueueMeta {
                id,
                info: QueueInfo::default(),
            }
        })
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

    fn insert(
        &mut self,
        queue: &str,
        id: u64,
        expires_at: u64,
        value: &[u8],
    ) -> Result<(), StoreError> {
        let meta = self.touch(queue);
        let qid = meta.id;
        meta.info.last_id = meta.info.last_id.max(id);
        meta.info.len += 1;
        // A queue starts on its first message, unless it was stopped beforehand.
        meta.info.status.get_or_insert(Status::Started);
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

    /// Removes message `id` of `queue`; true when it was there.
    fn remove(&mut self, queue: &str, id: u64) -> Result<bool, StoreError> {
        let Some(qid) = self.meta.queues.get(queue).map(|m| m.id) else {
            return Ok(false);
        };
        let existed = self.messages.remove((qid, id)).map_err(db_error)?.is_some();
        if existed {
            self.peeks.remove((qid, id)).map_err(db_error)?;
            let meta = self.touch(queue);
            meta.info.len = meta.info.len.saturating_sub(1);
            Op::Remove { queue, id }.encode(&mut self.log);
        }
        Ok(existed)
    }

    fn remove_all(&mut self, queue: &str) -> Result<(), StoreError> {
        let Some(qid) = self.meta.queues.get(queue).map(|m| m.id) else {
            return Ok(());
        };
        let range = (qid, 0)..=(qid, u64::MAX);
        self.messages
            .retain_in(range.clone(), |_, _| false)
            .map_err(db_error)?;
        self.peeks
            .retain_in(range, |_, _| false)
            .map_err(db_error)?;
        self.touch(queue).info.len = 0;
        Op::Purge { queue }.encode(&mut self.log);
        Ok(())
    }

    fn set_peeks(&mut self, queue: &str, qid: u64, id: u64, count: u64) -> Result<(), StoreError> {
        self.peeks.insert((qid, id), count).map_err(db_error)?;
        Op::Peeked { queue, id, count }.encode(&mut self.log);
        Ok(())
    }

    fn set_meta(&mut self, queue: &str, status: u8, policy: u8) -> Result<(), StoreError> {
        let (status_value, policy_value) = (status_from_code(status)?, policy_from_code(policy)?);
        let meta = self.touch(queue);
        meta.info.status = status_value;
        meta.info.policy = policy_value;
        Op::Meta {
            queue,
            status,
            policy,
        }
        .encode(&mut self.log);
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
            Op::Peeked { queue, id, count } => match self.meta.queues.get(queue).map(|m| m.id) {
                Some(qid) => self.set_peeks(queue, qid, id, count),
                None => Ok(()),
            },
            Op::Meta {
                queue,
                status,
                policy,
            } => self.set_meta(queue, status, policy),
        }
    }

    // The commands.

    pub fn publish(
        &mut self,
        queue: &str,
        messages: &[NewMessage],
    ) -> Result<Vec<u64>, StoreError> {
        let first = self.meta.queues.get(queue).map_or(0, |m| m.info.last_id) + 1;
        let mut ids = Vec::with_capacity(messages.len());
        for (id, message) in (first..).zip(messages) {
            let expires_at = match message.ttl {
                Some(ttl) if ttl > 0 => self.now.saturating_add(ttl.saturating_mul(1000)),
                _ => 0,
            };
            self.insert(queue, id, expires_at, message.value.as_bytes())?;
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

    /// The head of `queue` that has not expired (with its queue's id), dropping
    /// expired ones on the way.
    fn live_head(&mut self, queue: &str) -> Result<Option<(u64, Message)>, StoreError> {
        let Some(qid) = self.meta.queues.get(queue).map(|m| m.id) else {
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
        let Some((_, message)) = self.live_head(queue)? else {
            return Ok(None);
        };
        self.remove(queue, message.id)?;
        Ok(Some(message))
    }

    pub fn pop_many(&mut self, queue: &str, max: usize) -> Result<Vec<Message>, StoreError> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.pop(queue)? {
                Some(message) => out.push(message),
                None => break,
            }
        }
        Ok(out)
    }

    /// Puts `messages` back under their own numbers (those already there stay).
    pub fn restore(&mut self, queue: &str, messages: &[Message]) -> Result<(), StoreError> {
        for message in messages {
            let present = match self.meta.queues.get(queue) {
                Some(meta) => self
                    .messages
                    .get((meta.id, message.id))
                    .map_err(db_error)?
                    .is_some(),
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

    pub fn delete(&mut self, queue: &str, id: u64) -> Result<bool, StoreError> {
        let Some(qid) = self.meta.queues.get(queue).map(|m| m.id) else {
            return Ok(false);
        };
        let live = match self.messages.get((qid, id)).map_err(db_error)? {
            Some(raw) => !expired(split_message(raw.value())?.0, self.now),
            None => return Ok(false),
        };
        self.remove(queue, id)?;
        Ok(live)
    }

    pub fn purge(&mut self, queue: &str) -> Result<bool, StoreError> {
        let Some(len) = self.meta.queues.get(queue).map(|m| m.info.len) else {
            return Ok(false);
        };
        self.remove_all(queue)?;
        Ok(len > 0)
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

    /// Up to `count` of the newest live messages of `queue`, newest first.
    pub fn latest(&self, queue: &str, count: usize) -> Result<Vec<Message>, StoreError> {
        let Some(qid) = self.meta.queues.get(queue).map(|m| m.id) else {
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
