//! Key to hash slot: CRC16-XMODEM of the key, or of its `{hash tag}`, mod 16384.
//!
//! The same function Redis Cluster uses (cluster.c `keyHashSlot`), so a slot computed
//! here is the slot the server will check.

use std::sync::OnceLock;

/// Number of hash slots in a Redis Cluster.
pub const SLOTS: usize = 16384;

const fn crc16_table() -> [u16; 256] {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

static CRC16: [u16; 256] = crc16_table();

/// CRC16-XMODEM (polynomial 0x1021, initial value 0), as in Redis's crc16.c.
pub fn crc16(data: &[u8]) -> u16 {
    data.iter().fold(0, |crc, &b| crc16_step(crc, b))
}

/// One byte more into a CRC16-XMODEM.
#[inline]
fn crc16_step(crc: u16, b: u8) -> u16 {
    (crc << 8) ^ CRC16[(((crc >> 8) as u8) ^ b) as usize]
}

/// The part of a key that is hashed: the text between the first `{` and the next `}`
/// when that text is non-empty, else the whole key.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// The hash slot of a key. One pass while no `{` is seen (nearly every key), which is
/// `crc16(hash_tag(key))` without reading the key twice.
pub fn key_slot(key: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &b in key {
        if b == b'{' {
            return crc16(hash_tag(key)) & (SLOTS as u16 - 1);
        }
        crc = crc16_step(crc, b);
    }
    crc & (SLOTS as u16 - 1)
}

/// A short hash tag of `slot`: `{tag}` puts a key in that slot.
pub fn slot_tag(slot: u16) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![String::new(); SLOTS];
        let mut left = SLOTS;
        for n in 0u64.. {
            let t = n.to_string();
            let s = key_slot(t.as_bytes()) as usize;
            if tags[s].is_empty() {
                tags[s] = t;
                left -= 1;
                if left == 0 {
                    break;
                }
            }
        }
        tags
    });
    &tags[slot as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_the_reference_check_value() {
        // The XMODEM check value from the CRC catalogue, also asserted in Redis's crc16.c.
        assert_eq!(crc16(b"123456789"), 0x31c3);
    }

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on redis-server 7.0.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(
            key_slot(b"key:000000000000"),
            crc16(b"key:000000000000") & 16383
        );
        assert_eq!(key_slot(b"a{b"), crc16(b"a{b") & 16383);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") & 16383);
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
        assert_eq!(key_slot(b""), 0);
    }

    #[test]
    fn every_slot_has_a_tag_that_hashes_to_it() {
        for slot in 0..SLOTS as u16 {
            assert_eq!(
                key_slot(format!("{{{}}}x", slot_tag(slot)).as_bytes()),
                slot
            );
        }
    }
}
