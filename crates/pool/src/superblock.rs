//! The superblock: two identical 4 KiB copies at the start of the pool's first device.

use crate::crc::crc32c;

/// Size of one superblock copy.
pub const SUPERBLOCK_SIZE: usize = 4096;
/// Magic at offset 0.
pub const MAGIC: [u8; 8] = *b"BALLASTP";
/// Format version written by this code.
pub const VERSION: u32 = 1;
/// Most devices a pool may span.
pub const MAX_DEVICES: usize = 16;

/// Why a superblock copy was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SuperblockError {
    /// Not a Ballast pool (magic mismatch).
    NotAPool,
    /// A version this code does not understand.
    Version(u32),
    /// Checksum mismatch: the copy is damaged.
    Checksum {
        /// Stored checksum.
        stored: u32,
        /// Computed checksum.
        computed: u32,
    },
    /// A field holds an impossible value.
    Invalid(&'static str),
}

impl std::fmt::Display for SuperblockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SuperblockError::NotAPool => write!(f, "no Ballast pool superblock (bad magic)"),
            SuperblockError::Version(v) => write!(f, "unsupported pool format version {v}"),
            SuperblockError::Checksum { stored, computed } => write!(
                f,
                "superblock checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
            SuperblockError::Invalid(w) => write!(f, "invalid superblock: {w}"),
        }
    }
}

impl std::error::Error for SuperblockError {}

/// One member device of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberDevice {
    /// The device's UUID, written in its own superblock area.
    pub uuid: [u8; 16],
    /// Bytes of the device the pool uses.
    pub size: u64,
}

/// The decoded superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Pool UUID.
    pub uuid: [u8; 16],
    /// Pool name (at most 64 bytes of UTF-8).
    pub name: String,
    /// Cluster size in bytes.
    pub cluster_size: u32,
    /// Block size in bytes.
    pub block_size: u32,
    /// Size of one checkpoint slot.
    pub checkpoint_bytes: u64,
    /// Size of the journal ring.
    pub journal_bytes: u64,
    /// First byte of cluster 0.
    pub data_start: u64,
    /// Number of clusters.
    pub total_clusters: u64,
    /// Rewrite generation; the higher valid copy wins.
    pub generation: u64,
    /// Member devices in concatenation order.
    pub devices: Vec<MemberDevice>,
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Superblock {
    /// Encodes one 4 KiB copy.
    pub fn encode(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut b = [0u8; SUPERBLOCK_SIZE];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[16..32].copy_from_slice(&self.uuid);
        let name = self.name.as_bytes();
        let n = name.len().min(64);
        b[32..32 + n].copy_from_slice(&name[..n]);
        b[96..100].copy_from_slice(&self.cluster_size.to_le_bytes());
        b[100..104].copy_from_slice(&self.block_size.to_le_bytes());
        b[104..112].copy_from_slice(&self.checkpoint_bytes.to_le_bytes());
        b[112..120].copy_from_slice(&self.journal_bytes.to_le_bytes());
        b[120..128].copy_from_slice(&self.data_start.to_le_bytes());
        b[128..136].copy_from_slice(&self.total_clusters.to_le_bytes());
        b[136..144].copy_from_slice(&self.generation.to_le_bytes());
        let count = self.devices.len().min(MAX_DEVICES);
        b[144..148].copy_from_slice(&(count as u32).to_le_bytes());
        for (i, d) in self.devices.iter().take(count).enumerate() {
            let at = 152 + 24 * i;
            b[at..at + 16].copy_from_slice(&d.uuid);
            b[at + 16..at + 24].copy_from_slice(&d.size.to_le_bytes());
        }
        let crc = crc32c(&b);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and verifies one copy.
    pub fn decode(b: &[u8]) -> Result<Superblock, SuperblockError> {
        if b.len() < SUPERBLOCK_SIZE {
            return Err(SuperblockError::Invalid("short superblock"));
        }
        let b = &b[..SUPERBLOCK_SIZE];
        if b[0..8] != MAGIC {
            return Err(SuperblockError::NotAPool);
        }
        let version = get_u32(b, 8);
        if version != VERSION {
            return Err(SuperblockError::Version(version));
        }
        let stored = get_u32(b, 12);
        let mut copy = [0u8; SUPERBLOCK_SIZE];
        copy.copy_from_slice(b);
        copy[12..16].fill(0);
        let computed = crc32c(&copy);
        if stored != computed {
            return Err(SuperblockError::Checksum { stored, computed });
        }
        let name_end = b[32..96].iter().position(|&c| c == 0).unwrap_or(64);
        let name = std::str::from_utf8(&b[32..32 + name_end])
            .map_err(|_| SuperblockError::Invalid("pool name is not UTF-8"))?
            .to_string();
        let cluster_size = get_u32(b, 96);
        if !cluster_size.is_power_of_two() || !(64 * 1024..=4 << 20).contains(&cluster_size) {
            return Err(SuperblockError::Invalid("cluster size"));
        }
        let block_size = get_u32(b, 100);
        if !block_size.is_power_of_two() || block_size < 512 || block_size > cluster_size {
            return Err(SuperblockError::Invalid("block size"));
        }
        let count = get_u32(b, 144) as usize;
        if count == 0 || count > MAX_DEVICES {
            return Err(SuperblockError::Invalid("device count"));
        }
        let devices = (0..count)
            .map(|i| {
                let at = 152 + 24 * i;
                MemberDevice {
                    uuid: b[at..at + 16].try_into().expect("16 bytes"),
                    size: get_u64(b, at + 16),
                }
            })
            .collect();
        let sb = Superblock {
            uuid: b[16..32].try_into().expect("16 bytes"),
            name,
            cluster_size,
            block_size,
            checkpoint_bytes: get_u64(b, 104),
            journal_bytes: get_u64(b, 112),
            data_start: get_u64(b, 120),
            total_clusters: get_u64(b, 128),
            generation: get_u64(b, 136),
            devices,
        };
        if !sb.data_start.is_multiple_of(cluster_size as u64)
            || sb.data_start < 8192 + 2 * sb.checkpoint_bytes + sb.journal_bytes
        {
            return Err(SuperblockError::Invalid("data start overlaps metadata"));
        }
        let capacity: u64 = sb.devices.iter().map(|d| d.size).sum();
        let needed = sb
            .total_clusters
            .checked_mul(cluster_size as u64)
            .and_then(|d| d.checked_add(sb.data_start));
        if needed.is_none_or(|n| n > capacity) {
            return Err(SuperblockError::Invalid("clusters exceed the devices"));
        }
        Ok(sb)
    }

    /// Picks the superblock from the two copies: the valid one with the higher generation.
    /// Returns it and, for each copy, the reason it was rejected (if it was).
    pub fn choose(
        a: &[u8],
        b: &[u8],
    ) -> Result<(Superblock, [Option<SuperblockError>; 2]), [SuperblockError; 2]> {
        match (Superblock::decode(a), Superblock::decode(b)) {
            (Ok(x), Ok(y)) => Ok(if y.generation > x.generation {
                (y, [None, None])
            } else {
                (x, [None, None])
            }),
            (Ok(x), Err(e)) => Ok((x, [None, Some(e)])),
            (Err(e), Ok(y)) => Ok((y, [Some(e), None])),
            (Err(e1), Err(e2)) => Err([e1, e2]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        Superblock {
            uuid: [7; 16],
            name: "pool-a".into(),
            cluster_size: 1 << 20,
            block_size: 512,
            checkpoint_bytes: 4 << 20,
            journal_bytes: 8 << 20,
            data_start: 17 << 20,
            total_clusters: 100,
            generation: 3,
            devices: vec![MemberDevice {
                uuid: [1; 16],
                size: 200 << 20,
            }],
        }
    }

    #[test]
    fn round_trip_and_damage() {
        let sb = sample();
        let bytes = sb.encode();
        assert_eq!(Superblock::decode(&bytes).unwrap(), sb);
        for bit in [0usize, 13 * 8, 40 * 8 + 3, 130 * 8, 4095 * 8 + 7] {
            let mut d = bytes;
            d[bit / 8] ^= 1 << (bit % 8);
            assert!(
                Superblock::decode(&d).is_err(),
                "flip of bit {bit} went unnoticed"
            );
        }
        let mut newer = sb.clone();
        newer.generation = 4;
        let (chosen, _) = Superblock::choose(&bytes, &newer.encode()).unwrap();
        assert_eq!(chosen.generation, 4);
        let mut torn = newer.encode();
        torn[200] ^= 0xff;
        let (chosen, why) = Superblock::choose(&bytes, &torn).unwrap();
        assert_eq!(chosen.generation, 3);
        assert!(matches!(why[1], Some(SuperblockError::Checksum { .. })));
        assert_eq!(
            Superblock::decode(&[0u8; 4096]).unwrap_err(),
            SuperblockError::NotAPool
        );
    }

    #[test]
    fn rejects_impossible_geometry() {
        let mut sb = sample();
        sb.total_clusters = 1000;
        assert!(matches!(
            Superblock::decode(&sb.encode()),
            Err(SuperblockError::Invalid(_))
        ));
        let mut sb = sample();
        sb.data_start = 4096;
        assert!(Superblock::decode(&sb.encode()).is_err());
    }
}
