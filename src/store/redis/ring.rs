//! Consistent hashing of queue names over a ring of Redis servers.
//!
//! Each server stands at many points of a 64-bit circle (virtual nodes); a
//! queue belongs to the first point at or after its own hash, so all keys of a
//! queue live on one server, and adding a server to N moves about 1/(N+1) of
//! the queues.

use std::collections::BTreeMap;

/// Points per server on the circle.
const VIRTUAL_NODES: usize = 160;

/// FNV-1a: stable across processes and versions, unlike the standard hasher.
fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV spreads short, similar keys poorly over the high bits; a final mix
    // (from splitmix64) fixes that.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Which server owns which queue.
#[derive(Debug, Clone)]
pub struct Ring {
    points: BTreeMap<u64, usize>,
}

impl Ring {
    /// A ring of servers named `names` (their index is their position here).
    pub fn new(names: &[String]) -> Ring {
        let mut points = BTreeMap::new();
        for (index, name) in names.iter().enumerate() {
            for point in 0..VIRTUAL_NODES {
                points.insert(hash(format!("{name}#{point}").as_bytes()), index);
            }
        }
        Ring { points }
    }

    /// The index of the server that owns `queue`.
    pub fn owner(&self, queue: &str) -> usize {
        let h = hash(queue.as_bytes());
        self.points
            .range(h..)
            .next()
            .or_else(|| self.points.iter().next())
            .map_or(0, |(_, &index)| index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("redis://10.0.0.{i}:6379")).collect()
    }

    #[test]
    fn queues_spread_evenly_and_a_new_server_moves_about_its_share() {
        let three = Ring::new(&names(3));
        let four = Ring::new(&names(4));
        let queues: Vec<String> = (0..20_000).map(|i| format!("queue-{i}")).collect();
        let mut counts = [0usize; 3];
        let mut moved = 0;
        for q in &queues {
            let before = three.owner(q);
            counts[before] += 1;
            let after = four.owner(q);
            if after != before {
                moved += 1;
                assert_eq!(after, 3, "a queue only moves to the new server");
            }
        }
        for count in counts {
            assert!((5_000..8_400).contains(&count), "uneven spread: {counts:?}");
        }
        // About a quarter moves to the fourth server.
        assert!((4_000..6_000).contains(&moved), "{moved} of 20000 moved");
        assert_eq!(Ring::new(&names(1)).owner("anything"), 0);
    }
}
