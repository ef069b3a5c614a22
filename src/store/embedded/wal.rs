//! The write-ahead log that makes batches durable with one sequential fdatasync.
//!
//! Every batch of changes the writer applies to redb (without waiting for the disk)
//! is also appended here as one frame; the batch is acknowledged once the log is
//! synced. redb itself is made durable only at checkpoints, after which the log
//! starts over. On open, frames written since the last checkpoint are replayed.
//!
//! The file is written over in place, never truncated: a frame names the log's
//! generation (raised by every checkpoint) and its sequence number, and is
//! checksummed, so stale or torn frames end the replay. A frame that is synced
//! is padded to a page boundary, so that writing a later frame never rewrites a
//! page of a synced one. A frame that is not synced (a batch of pops and reads,
//! whose changes a crash of the machine may undo) is not padded: the next frame
//! follows it on its page. A torn rewrite of that page can then lose it, and
//! the replay ends there, but only before the next sync, which makes the page
//! whole again before any later frame counts as durable; so padding pop
//! batches, which would fill a page each, buys nothing. The file's pages are
//! zero-filled ahead of use so that a sync writes data only, not file-size
//! metadata.
//!
//! Every write covers whole pages: a frame is written with what precedes it on
//! its first page (kept in memory) and zeros to the end of its last page, which
//! the next frame, if unpadded, writes over. A write to part of a page the
//! kernel does not hold in its cache makes it read the page from the disk
//! first, and the writer waits for that read; the log's pages ahead of the
//! next frame are written long before their turn (zero-filled, or by the
//! previous generation), so a system reclaiming cold page cache drops them.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::records::{corrupted, u64_at};
use crate::store::StoreError;

/// Frames start on multiples of this.
const PAGE: usize = 4096;
/// magic (4) | generation (8) | sequence (8) | payload length (4) | crc32 (4)
const HEADER: usize = 28;
/// The magic of a frame padded to a page boundary.
const MAGIC: u32 = 0x524d_5131;
/// The magic of a frame that the next one follows directly; its checksum
/// covers the magic too, so that a damaged magic cannot move the next frame.
const MAGIC_UNPADDED: u32 = 0x524d_5132;
/// Size of a new log file.
const INITIAL_SIZE: u64 = 1 << 20;
/// The file grows by at least this much when a frame does not fit.
const GROWTH: u64 = 4 << 20;
/// A checkpoint starts the log over once this much of it is used. Every write
/// waits while one runs, for a time that grows with what it writes to redb:
/// small ones keep the longest waits short, and each costs about a
/// millisecond more than the pages it writes (`bench/NOTES.md`, "Checkpoints").
pub(super) const CHECKPOINT_AT: u64 = 8 << 20;

/// One change recorded in a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Op<'a> {
    /// A message stored at `id`.
    Insert {
        queue: &'a str,
        id: u64,
        expires_at: u64,
        value: &'a [u8],
    },
    /// Message `id` removed (popped, taken, deleted or expired).
    Remove { queue: &'a str, id: u64 },
    /// Every message of the queue removed.
    Purge { queue: &'a str },
    /// Message `id` peeked `count` times so far.
    Peeked { queue: &'a str, id: u64, count: u64 },
    /// The queue's status and policy codes set.
    Meta {
        queue: &'a str,
        status: u8,
        policy: u8,
    },
    /// A visible message's delivery count set (0: forgotten).
    Deliveries { queue: &'a str, id: u64, count: u32 },
    /// A message hidden (in flight or delayed), or its record replaced.
    Hold {
        queue: &'a str,
        id: u64,
        /// The encoded held record.
        record: &'a [u8],
    },
    /// A hidden message's record removed.
    Unhold { queue: &'a str, id: u64 },
    /// The queue's settings, as JSON.
    Config { queue: &'a str, json: &'a [u8] },
    /// Every pop recorded in the file of pops below number `upto` applied
    /// (see `cache.rs`); recorded under an empty queue name.
    Popped { upto: u64 },
}

impl Op<'_> {
    /// Appends the encoding of this change to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let queue = |out: &mut Vec<u8>, kind: u8, queue: &str| {
            out.push(kind);
            // Queue names are at most 256 bytes, checked by the broker.
            out.extend_from_slice(&(queue.len() as u16).to_be_bytes());
            out.extend_from_slice(queue.as_bytes());
        };
        match *self {
            Op::Insert {
                queue: q,
                id,
                expires_at,
                value,
            } => {
                queue(out, 1, q);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&expires_at.to_be_bytes());
                out.extend_from_slice(&(value.len() as u64).to_be_bytes());
                out.extend_from_slice(value);
            }
            Op::Remove { queue: q, id } => {
                queue(out, 2, q);
                out.extend_from_slice(&id.to_be_bytes());
            }
            Op::Purge { queue: q } => queue(out, 3, q),
            Op::Peeked {
                queue: q,
                id,
                count,
            } => {
                queue(out, 4, q);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&count.to_be_bytes());
            }
            Op::Meta {
                queue: q,
                status,
                policy,
            } => {
                queue(out, 5, q);
                out.push(status);
                out.push(policy);
            }
            Op::Deliveries {
                queue: q,
                id,
                count,
            } => {
                queue(out, 6, q);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&u64::from(count).to_be_bytes());
            }
            Op::Hold {
                queue: q,
                id,
                record,
            } => {
                queue(out, 7, q);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&(record.len() as u64).to_be_bytes());
                out.extend_from_slice(record);
            }
            Op::Unhold { queue: q, id } => {
                queue(out, 8, q);
                out.extend_from_slice(&id.to_be_bytes());
            }
            Op::Config { queue: q, json } => {
                queue(out, 9, q);
                out.extend_from_slice(&(json.len() as u64).to_be_bytes());
                out.extend_from_slice(json);
            }
            Op::Popped { upto } => {
                queue(out, 10, "");
                out.extend_from_slice(&upto.to_be_bytes());
            }
        }
    }

    /// Decodes every change of a frame's payload.
    pub fn decode_all(mut payload: &[u8]) -> Result<Vec<Op<'_>>, StoreError> {
        let bad = || corrupted("unreadable log record");
        let mut ops = Vec::new();
        while let Some((&kind, rest)) = payload.split_first() {
            let (queue, mut rest) = take_str(rest).ok_or_else(bad)?;
            let mut u64_field = || -> Result<u64, StoreError> {
                let (field, tail) = take(rest, 8).ok_or_else(bad)?;
                rest = tail;
                Ok(u64_at(field, 0))
            };
            let op = match kind {
                1 => {
                    let id = u64_field()?;
                    let expires_at = u64_field()?;
                    let len = usize::try_from(u64_field()?).map_err(|_| bad())?;
                    let (value, tail) = take(rest, len).ok_or_else(bad)?;
                    rest = tail;
                    Op::Insert {
                        queue,
                        id,
                        expires_at,
                        value,
                    }
                }
                2 => Op::Remove {
                    queue,
                    id: u64_field()?,
                },
                3 => Op::Purge { queue },
                4 => {
                    let id = u64_field()?;
                    let count = u64_field()?;
                    Op::Peeked { queue, id, count }
                }
                5 => {
                    let (codes, tail) = take(rest, 2).ok_or_else(bad)?;
                    rest = tail;
                    Op::Meta {
                        queue,
                        status: codes[0],
                        policy: codes[1],
                    }
                }
                6 => {
                    let id = u64_field()?;
                    let count = u32::try_from(u64_field()?).map_err(|_| bad())?;
                    Op::Deliveries { queue, id, count }
                }
                7 => {
                    let id = u64_field()?;
                    let len = usize::try_from(u64_field()?).map_err(|_| bad())?;
                    let (record, tail) = take(rest, len).ok_or_else(bad)?;
                    rest = tail;
                    Op::Hold { queue, id, record }
                }
                8 => Op::Unhold {
                    queue,
                    id: u64_field()?,
                },
                9 => {
                    let len = usize::try_from(u64_field()?).map_err(|_| bad())?;
                    let (json, tail) = take(rest, len).ok_or_else(bad)?;
                    rest = tail;
                    Op::Config { queue, json }
                }
                10 => Op::Popped { upto: u64_field()? },
                _ => return Err(bad()),
            };
            ops.push(op);
            payload = rest;
        }
        Ok(ops)
    }
}

fn take(bytes: &[u8], n: usize) -> Option<(&[u8], &[u8])> {
    (bytes.len() >= n).then(|| bytes.split_at(n))
}

fn take_str(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let (len, rest) = take(bytes, 2)?;
    let (name, rest) = take(rest, usize::from(u16::from_be_bytes([len[0], len[1]])))?;
    Some((std::str::from_utf8(name).ok()?, rest))
}

fn padded(len: usize) -> usize {
    len.div_ceil(PAGE) * PAGE
}

fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    let covered = if header[..4] == MAGIC_UNPADDED.to_be_bytes() {
        &header[..24]
    } else {
        &header[4..24]
    };
    hasher.update(covered);
    hasher.update(payload);
    hasher.finalize()
}

/// The payloads of the valid frames of `generation` that follow sequence number
/// `after`, in order, up to the first frame that is stale, torn or missing.
fn frames(data: &[u8], generation: u64, after: u64) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut expected = after + 1;
    while at + HEADER <= data.len() {
        let header = &data[at..at + HEADER];
        let len = u32::from_be_bytes([header[20], header[21], header[22], header[23]]) as usize;
        let padded_frame = header[..4] == MAGIC.to_be_bytes();
        let valid = (padded_frame || header[..4] == MAGIC_UNPADDED.to_be_bytes())
            && u64_at(header, 4) == generation
            && u64_at(header, 12) == expected
            && len <= data.len() - at - HEADER;
        if !valid {
            break;
        }
        let payload = &data[at + HEADER..at + HEADER + len];
        let crc = u32::from_be_bytes([header[24], header[25], header[26], header[27]]);
        if checksum(header, payload) != crc {
            break;
        }
        out.push(payload);
        expected += 1;
        at += HEADER + len;
        if padded_frame {
            at = padded(at);
        }
    }
    out
}

/// The log file and where the next frame goes.
pub(super) struct Wal {
    file: File,
    generation: u64,
    /// Sequence number of the last frame written.
    lsn: u64,
    /// Where the next frame starts.
    offset: u64,
    /// Bytes of the file already written (frames or zeros).
    size: u64,
    /// What the page holding `offset` holds before it: the start of the next write.
    head: Vec<u8>,
    frame: Vec<u8>,
}

impl Wal {
    /// Opens (creating) the log at `path` and returns it with the payloads of the
    /// frames to replay: those of `generation` after sequence number `lsn`.
    pub fn open(path: &Path, generation: u64, lsn: u64) -> Result<(Wal, Vec<Vec<u8>>), StoreError> {
        let io = |e: io::Error| {
            StoreError::Unavailable(format!("write-ahead log {}: {e}", path.display()))
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(io)?;
        let replay = frames(&data, generation, lsn)
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect();
        let mut wal = Wal {
            file,
            generation,
            lsn,
            offset: 0,
            size: data.len() as u64,
            head: Vec::new(),
            frame: Vec::new(),
        };
        if wal.size < INITIAL_SIZE {
            wal.grow(INITIAL_SIZE).map_err(io)?;
        }
        Ok((wal, replay))
    }

    /// Sequence number of the last frame written.
    pub fn lsn(&self) -> u64 {
        self.lsn
    }

    /// The generation frames are written with.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether enough of the log is used that a checkpoint should start it over.
    pub fn wants_checkpoint(&self) -> bool {
        self.offset >= CHECKPOINT_AT
    }

    /// Starts the log over with a new generation, once redb holds everything
    /// written so far durably. Earlier frames become stale.
    pub fn restart(&mut self, generation: u64) {
        self.generation = generation;
        self.offset = 0;
        self.head.clear();
    }

    /// Writes one frame holding `payload`, not synced (see [`Wal::sync`]).
    /// A frame to be synced must be `padded`: see the module's documentation.
    pub fn append(&mut self, payload: &[u8], padded: bool) -> Result<(), StoreError> {
        self.write_frame(payload, padded)
            .map_err(|e| StoreError::Unavailable(format!("writing the write-ahead log: {e}")))
    }

    fn write_frame(&mut self, payload: &[u8], pad: bool) -> io::Result<()> {
        let lsn = self.lsn + 1;
        self.frame.clear();
        self.frame.extend_from_slice(&self.head);
        let at = self.frame.len();
        let magic = if pad { MAGIC } else { MAGIC_UNPADDED };
        self.frame.extend_from_slice(&magic.to_be_bytes());
        self.frame.extend_from_slice(&self.generation.to_be_bytes());
        self.frame.extend_from_slice(&lsn.to_be_bytes());
        let len = u32::try_from(payload.len())
            .map_err(|_| io::Error::other("a batch too large for one log frame"))?;
        self.frame.extend_from_slice(&len.to_be_bytes());
        let crc = checksum(&self.frame[at..at + HEADER - 4], payload);
        self.frame.extend_from_slice(&crc.to_be_bytes());
        self.frame.extend_from_slice(payload);
        if pad {
            // To the end of the page the frame ends on.
            self.frame.resize(padded(self.frame.len()), 0);
        }
        // Where the next frame starts; the zeros after it complete its page.
        let used = self.frame.len();
        self.frame.resize(padded(used), 0);

        let start = self.offset - at as u64;
        let end = start + self.frame.len() as u64;
        if end > self.size {
            self.grow(end.max(self.size + GROWTH))?;
        }
        self.file.write_all_at(&self.frame, start)?;
        self.offset = start + used as u64;
        self.head.clear();
        self.head
            .extend_from_slice(&self.frame[used - used % PAGE..used]);
        self.lsn = lsn;
        Ok(())
    }

    /// Syncs the log: every frame written is on disk once this returns.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.file
            .sync_data()
            .map_err(|e| StoreError::Unavailable(format!("syncing the write-ahead log: {e}")))
    }

    /// Zero-fills the file up to `size` and syncs it, so that later frames
    /// overwrite allocated blocks and their syncs carry no size change.
    fn grow(&mut self, size: u64) -> io::Result<()> {
        let zeros = vec![0u8; 1 << 20];
        let mut at = self.size;
        while at < size {
            let n = usize::try_from(size - at).map_or(zeros.len(), |left| left.min(zeros.len()));
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        self.file.sync_all()?;
        self.size = size;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Op<'static>> {
        vec![
            Op::Insert {
                queue: "a/b",
                id: 7,
                expires_at: 99,
                value: "héllo".as_bytes(),
            },
            Op::Remove { queue: "a", id: 1 },
            Op::Purge { queue: "q" },
            Op::Peeked {
                queue: "q",
                id: 3,
                count: 2,
            },
            Op::Meta {
                queue: "q",
                status: 2,
                policy: 1,
            },
            Op::Deliveries {
                queue: "q",
                id: 4,
                count: 2,
            },
            Op::Hold {
                queue: "q",
                id: 5,
                record: b"held",
            },
            Op::Unhold { queue: "q", id: 5 },
            Op::Popped { upto: 12 },
            Op::Config {
                queue: "q",
                json: b"{}",
            },
        ]
    }

    #[test]
    fn ops_round_trip() {
        let mut buf = Vec::new();
        for op in sample() {
            op.encode(&mut buf);
        }
        assert_eq!(Op::decode_all(&buf).expect("decode"), sample());
        assert!(Op::decode_all(&buf[..buf.len() - 1]).is_err());
        assert!(Op::decode_all(&[9, 0, 0]).is_err());
    }

    #[test]
    fn replay_stops_at_stale_torn_or_missing_frames() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("wal");
        let (mut wal, replay) = Wal::open(&path, 1, 0).expect("open");
        assert!(replay.is_empty());
        for payload in [&b"one"[..], b"two", b"three"] {
            wal.append(payload, true).expect("append");
        }
        drop(wal);
        let (_, replay) = Wal::open(&path, 1, 0).expect("reopen");
        assert_eq!(
            replay,
            vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
        // A generation's frames follow its checkpoint's sequence number, or none count.
        let (_, replay) = Wal::open(&path, 1, 1).expect("reopen");
        assert!(replay.is_empty());
        // Another generation: nothing.
        let (mut wal, replay) = Wal::open(&path, 2, 3).expect("reopen");
        assert!(replay.is_empty());
        // Writing generation 2 over the start leaves older frames behind it stale.
        wal.restart(2);
        wal.append(b"new", true).expect("append");
        drop(wal);
        let (_, replay) = Wal::open(&path, 2, 3).expect("reopen");
        assert_eq!(replay, vec![b"new".to_vec()]);
        // A flipped byte in a payload ends the replay there.
        let file = OpenOptions::new().write(true).open(&path).expect("file");
        file.write_all_at(b"X", HEADER as u64).expect("corrupt");
        let (_, replay) = Wal::open(&path, 2, 3).expect("reopen");
        assert!(replay.is_empty());
    }

    #[test]
    fn unpadded_frames_are_followed_directly_and_replayed_in_order() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("wal");
        let (mut wal, _) = Wal::open(&path, 1, 0).expect("open");
        let frames = [
            (&b"pop"[..], false),
            (b"pop2", false),
            (b"publish", true),
            (b"pop3", false),
        ];
        for (payload, pad) in frames {
            wal.append(payload, pad).expect("append");
        }
        // The unpadded frames and the padded one share the first page, which
        // the padded one fills; the next frame starts the second.
        assert_eq!(wal.offset, (PAGE + HEADER + 4) as u64);
        drop(wal);
        let (_, replay) = Wal::open(&path, 1, 0).expect("reopen");
        let expected: Vec<Vec<u8>> = frames.iter().map(|(p, _)| p.to_vec()).collect();
        assert_eq!(replay, expected);
        // The magic is checksummed: one of an unpadded frame turned into the
        // padded one's ends the replay there rather than skipping ahead.
        let file = OpenOptions::new().write(true).open(&path).expect("file");
        file.write_all_at(&MAGIC.to_be_bytes(), (HEADER + 3) as u64)
            .expect("corrupt");
        let (_, replay) = Wal::open(&path, 1, 0).expect("reopen");
        assert_eq!(replay, vec![b"pop".to_vec()]);
    }

    #[test]
    fn every_write_covers_whole_pages() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("wal");
        let (mut wal, _) = Wal::open(&path, 1, 0).expect("open");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("file");
        let page = |n: u64| {
            let mut buf = vec![0u8; PAGE];
            file.read_exact_at(&mut buf, n * PAGE as u64).expect("read");
            buf
        };
        // What an earlier generation left on the first pages.
        file.write_all_at(&[0xff; 3 * PAGE], 0).expect("stale");

        wal.append(b"pop", false).expect("append");
        let first = HEADER + 3;
        assert!(
            page(0)[first..].iter().all(|&b| b == 0),
            "the rest of the page is written with the frame"
        );
        // The next write starts at the page's start, from the log's own copy.
        file.write_all_at(b"XXXX", 0).expect("damage");
        wal.append(b"publish", true).expect("append");
        assert_eq!(&page(0)[..4], MAGIC_UNPADDED.to_be_bytes());
        assert_eq!(page(1), vec![0xff; PAGE], "a padded frame ends on its page");
        wal.append(&[7u8; PAGE], false).expect("append");
        assert!(page(2)[HEADER..].iter().all(|&b| b == 0));
        drop(wal);
        let (_, replay) = Wal::open(&path, 1, 0).expect("reopen");
        assert_eq!(
            replay,
            vec![b"pop".to_vec(), b"publish".to_vec(), vec![7u8; PAGE]]
        );
    }
}
