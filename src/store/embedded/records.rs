//! How queue metadata and messages are laid out in the redb tables.

use crate::store::{Policy, QueueInfo, Status, StoreError};

/// A queue's metadata: its internal id and what the broker sees of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct QueueMeta {
    /// Internal number of the queue, the first half of its messages' keys.
    pub id: u64,
    pub info: QueueInfo,
}

/// Version 1 records (27 bytes) lack the in-flight and delayed counts.
const META_V1: u8 = 1;
const META_V1_LEN: usize = 27;
const META_VERSION: u8 = 2;
/// Length of an encoded [`QueueMeta`].
pub(super) const META_LEN: usize = 43;

/// The stored number of a status: 0 unset, 1 started, 2 stopped.
pub(super) fn status_code(status: Option<Status>) -> u8 {
    match status {
        None => 0,
        Some(Status::Started) => 1,
        Some(Status::Stopped) => 2,
    }
}

pub(super) fn status_from_code(code: u8) -> Result<Option<Status>, StoreError> {
    match code {
        0 => Ok(None),
        1 => Ok(Some(Status::Started)),
        2 => Ok(Some(Status::Stopped)),
        _ => Err(corrupted("unknown status")),
    }
}

/// The stored number of a policy: 0 unset, else [`Policy::code`].
pub(super) fn policy_code(policy: Option<Policy>) -> u8 {
    policy.map_or(0, Policy::code)
}

pub(super) fn policy_from_code(code: u8) -> Result<Option<Policy>, StoreError> {
    match code {
        0 => Ok(None),
        code => Policy::from_code(code)
            .map(Some)
            .ok_or_else(|| corrupted("unknown policy")),
    }
}

pub(super) fn corrupted(what: &str) -> StoreError {
    StoreError::Corrupted(what.to_owned())
}

/// Reads a big-endian u64 at `at`; the caller checked the length.
pub(super) fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(b)
}

impl QueueMeta {
    /// version (1) | id (8) | last id (8) | len (8) | status (1) | policy (1) |
    /// in flight (8) | delayed (8), big-endian.
    pub fn encode(&self) -> [u8; META_LEN] {
        let mut out = [0u8; META_LEN];
        out[0] = META_VERSION;
        out[1..9].copy_from_slice(&self.id.to_be_bytes());
        out[9..17].copy_from_slice(&self.info.last_id.to_be_bytes());
        out[17..25].copy_from_slice(&self.info.len.to_be_bytes());
        out[25] = status_code(self.info.status);
        out[26] = policy_code(self.info.policy);
        out[27..35].copy_from_slice(&self.info.inflight.to_be_bytes());
        out[35..43].copy_from_slice(&self.info.delayed.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<QueueMeta, StoreError> {
        let v2 = match (bytes.first(), bytes.len()) {
            (Some(&META_VERSION), META_LEN) => true,
            (Some(&META_V1), META_V1_LEN) => false,
            _ => return Err(corrupted("unreadable queue record")),
        };
        Ok(QueueMeta {
            id: u64_at(bytes, 1),
            info: QueueInfo {
                last_id: u64_at(bytes, 9),
                len: u64_at(bytes, 17),
                status: status_from_code(bytes[25])?,
                policy: policy_from_code(bytes[26])?,
                inflight: if v2 { u64_at(bytes, 27) } else { 0 },
                delayed: if v2 { u64_at(bytes, 35) } else { 0 },
            },
        })
    }
}

/// A stored message: expiry (8 bytes, ms since the epoch, 0 = none) then the value.
pub(super) fn encode_message(out: &mut Vec<u8>, expires_at: u64, value: &[u8]) {
    out.clear();
    out.extend_from_slice(&expires_at.to_be_bytes());
    out.extend_from_slice(value);
}

/// Splits a stored message into its expiry and value bytes.
pub(super) fn split_message(raw: &[u8]) -> Result<(u64, &[u8]), StoreError> {
    if raw.len() < 8 {
        return Err(corrupted("unreadable message record"));
    }
    Ok((u64_at(raw, 0), &raw[8..]))
}

/// A stored value as text; values are stored from strings, so this fails only on corruption.
pub(super) fn value_text(value: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(value.to_vec()).map_err(|_| corrupted("message value is not UTF-8"))
}

/// Why a message is hidden.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HeldState {
    /// Received, not yet acknowledged.
    InFlight,
    /// Published or released with a delay.
    Delayed,
}

impl HeldState {
    pub fn code(self) -> u8 {
        match self {
            HeldState::InFlight => 1,
            HeldState::Delayed => 2,
        }
    }

    pub fn from_code(code: u8) -> Result<HeldState, StoreError> {
        match code {
            1 => Ok(HeldState::InFlight),
            2 => Ok(HeldState::Delayed),
            _ => Err(corrupted("unknown held state")),
        }
    }
}

/// A hidden message, stored until it is due (its visibility or delay ran out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Held {
    pub state: HeldState,
    pub due: u64,
    pub deliveries: u32,
    pub expires_at: u64,
    pub value: Vec<u8>,
}

const HELD_HEADER: usize = 22;

impl Held {
    /// version (1) | state (1) | due (8) | deliveries (4) | expiry (8) | value.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        out.push(1);
        out.push(self.state.code());
        out.extend_from_slice(&self.due.to_be_bytes());
        out.extend_from_slice(&self.deliveries.to_be_bytes());
        out.extend_from_slice(&self.expires_at.to_be_bytes());
        out.extend_from_slice(&self.value);
    }

    pub fn decode(raw: &[u8]) -> Result<Held, StoreError> {
        if raw.len() < HELD_HEADER || raw[0] != 1 {
            return Err(corrupted("unreadable held message"));
        }
        Ok(Held {
            state: HeldState::from_code(raw[1])?,
            due: u64_at(raw, 2),
            deliveries: u32::from_be_bytes([raw[10], raw[11], raw[12], raw[13]]),
            expires_at: u64_at(raw, 14),
            value: raw[HELD_HEADER..].to_vec(),
        })
    }
}

pub(super) fn expired(expires_at: u64, now: u64) -> bool {
    expires_at != 0 && expires_at <= now
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
                inflight: 2,
                delayed: 1,
            },
        };
        assert_eq!(QueueMeta::decode(&meta.encode()).ok(), Some(meta));
        assert!(QueueMeta::decode(&[0u8; 3]).is_err());
        // A version 1 record (before in-flight and delayed counts) still reads.
        let mut v1 = meta.encode()[..27].to_vec();
        v1[0] = 1;
        let old = QueueMeta::decode(&v1).expect("a version 1 record");
        assert_eq!((old.info.len, old.info.inflight), (3, 0));
        let mut bad = meta.encode();
        bad[26] = 9;
        assert!(QueueMeta::decode(&bad).is_err());
    }

    #[test]
    fn message_records_round_trip() {
        let mut buf = Vec::new();
        encode_message(&mut buf, 42, "héllo".as_bytes());
        let (expires_at, value) = split_message(&buf).expect("split");
        assert_eq!(
            (expires_at, value_text(value).ok()),
            (42, Some("héllo".to_owned()))
        );
        assert!(split_message(&[1, 2]).is_err());
    }
}

#[cfg(test)]
mod held_tests {
    use super::*;

    #[test]
    fn held_records_round_trip() {
        let held = Held {
            state: HeldState::Delayed,
            due: 1234,
            deliveries: 3,
            expires_at: 99,
            value: b"v".to_vec(),
        };
        let mut buf = Vec::new();
        held.encode(&mut buf);
        assert_eq!(Held::decode(&buf).ok(), Some(held));
        assert!(Held::decode(&buf[..5]).is_err());
    }
}
