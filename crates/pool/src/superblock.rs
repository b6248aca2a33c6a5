//! The superblock: two identical 4 KiB copies at the start of every member device of a pool
//! (each copy also says which member it is on).

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
    /// The member's UUID (each copy of the superblock on a member names which one it is on).
    pub uuid: [u8; 16],
    /// The member's size in bytes when the superblock was written.
    pub size: u64,
}

/// A run of clusters on one member. The pool's clusters are the segments' clusters in order:
/// segment 0 holds clusters `0..clusters`, segment 1 the next ones, and so on. Growing a member
/// or adding one appends a segment, so existing cluster numbers never move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Index into [`Superblock::members`].
    pub member: u32,
    /// Byte offset of the segment's first cluster on the member (cluster aligned).
    pub offset: u64,
    /// Number of clusters.
    pub clusters: u64,
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
    /// First byte of cluster 0 on member 0 (the metadata lies before it).
    pub data_start: u64,
    /// Number of clusters (the sum over the segments).
    pub total_clusters: u64,
    /// Rewrite generation; the higher valid copy wins.
    pub generation: u64,
    /// Member devices; member 0 holds the metadata.
    pub members: Vec<MemberDevice>,
    /// Which member this copy was read from (or is written to).
    pub member_index: u32,
    /// Cluster runs in pool order.
    pub segments: Vec<Segment>,
    /// Labels, `key=value`, sorted by key.
    pub labels: Vec<(String, String)>,
}

/// Most segments a superblock holds.
pub const MAX_SEGMENTS: usize = 64;
const MEMBERS_AT: usize = 160;
const SEGMENTS_AT: usize = MEMBERS_AT + 32 * MAX_DEVICES;
const LABELS_AT: usize = SEGMENTS_AT + 24 * MAX_SEGMENTS;
/// Bytes available for labels (`key=value` lines).
pub const LABEL_BYTES: usize = SUPERBLOCK_SIZE - LABELS_AT;

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Why a label is not acceptable, if it is not.
pub fn check_label(key: &str, value: &str) -> Result<(), &'static str> {
    let ok = |s: &str| !s.chars().any(|c| c.is_control() || c == '\n');
    if key.is_empty() || key.len() > 63 || key.contains('=') || !ok(key) {
        return Err("label keys are 1 to 63 bytes without '=' or control characters");
    }
    if value.len() > 255 || !ok(value) {
        return Err("label values are at most 255 bytes without control characters");
    }
    Ok(())
}

/// The encoded size of `labels`.
pub fn labels_len(labels: &[(String, String)]) -> usize {
    labels.iter().map(|(k, v)| k.len() + v.len() + 2).sum()
}

impl Superblock {
    /// Encodes the copy for member `self.member_index`.
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
        let members = self.members.len().min(MAX_DEVICES);
        b[144..148].copy_from_slice(&(members as u32).to_le_bytes());
        b[148..152].copy_from_slice(&self.member_index.to_le_bytes());
        let segments = self.segments.len().min(MAX_SEGMENTS);
        b[152..156].copy_from_slice(&(segments as u32).to_le_bytes());
        for (i, d) in self.members.iter().take(members).enumerate() {
            let at = MEMBERS_AT + 32 * i;
            b[at..at + 16].copy_from_slice(&d.uuid);
            b[at + 16..at + 24].copy_from_slice(&d.size.to_le_bytes());
        }
        for (i, s) in self.segments.iter().take(segments).enumerate() {
            let at = SEGMENTS_AT + 24 * i;
            b[at..at + 4].copy_from_slice(&s.member.to_le_bytes());
            b[at + 8..at + 16].copy_from_slice(&s.offset.to_le_bytes());
            b[at + 16..at + 24].copy_from_slice(&s.clusters.to_le_bytes());
        }
        let mut at = LABELS_AT;
        for (k, v) in &self.labels {
            let line = format!("{k}={v}\n");
            if at + line.len() > SUPERBLOCK_SIZE {
                break;
            }
            b[at..at + line.len()].copy_from_slice(line.as_bytes());
            at += line.len();
        }
        b[156..160].copy_from_slice(&((at - LABELS_AT) as u32).to_le_bytes());
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
        let cs = cluster_size as u64;
        let block_size = get_u32(b, 100);
        if !block_size.is_power_of_two() || block_size < 512 || block_size > cluster_size {
            return Err(SuperblockError::Invalid("block size"));
        }
        let count = get_u32(b, 144) as usize;
        if count == 0 || count > MAX_DEVICES {
            return Err(SuperblockError::Invalid("member count"));
        }
        let member_index = get_u32(b, 148);
        if member_index as usize >= count {
            return Err(SuperblockError::Invalid("member index"));
        }
        let nseg = get_u32(b, 152) as usize;
        if nseg == 0 || nseg > MAX_SEGMENTS {
            return Err(SuperblockError::Invalid("segment count"));
        }
        let members: Vec<MemberDevice> = (0..count)
            .map(|i| {
                let at = MEMBERS_AT + 32 * i;
                MemberDevice {
                    uuid: b[at..at + 16].try_into().expect("16 bytes"),
                    size: get_u64(b, at + 16),
                }
            })
            .collect();
        let segments: Vec<Segment> = (0..nseg)
            .map(|i| {
                let at = SEGMENTS_AT + 24 * i;
                Segment {
                    member: get_u32(b, at),
                    offset: get_u64(b, at + 8),
                    clusters: get_u64(b, at + 16),
                }
            })
            .collect();
        let llen = get_u32(b, 156) as usize;
        if llen > LABEL_BYTES {
            return Err(SuperblockError::Invalid("labels length"));
        }
        let text = std::str::from_utf8(&b[LABELS_AT..LABELS_AT + llen])
            .map_err(|_| SuperblockError::Invalid("labels are not UTF-8"))?;
        let mut labels = Vec::new();
        for line in text.split_terminator('\n') {
            let (k, v) = line
                .split_once('=')
                .ok_or(SuperblockError::Invalid("label without '='"))?;
            check_label(k, v).map_err(SuperblockError::Invalid)?;
            labels.push((k.to_string(), v.to_string()));
        }
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
            members,
            member_index,
            segments,
            labels,
        };
        let meta_end = (2 * SUPERBLOCK_SIZE as u64)
            .checked_add(sb.checkpoint_bytes.saturating_mul(2))
            .and_then(|x| x.checked_add(sb.journal_bytes));
        if !sb.data_start.is_multiple_of(cs) || meta_end.is_none_or(|m| sb.data_start < m) {
            return Err(SuperblockError::Invalid("data start overlaps metadata"));
        }
        let mut total = 0u64;
        for s in &sb.segments {
            let member = sb
                .members
                .get(s.member as usize)
                .ok_or(SuperblockError::Invalid("segment names a missing member"))?;
            let floor = if s.member == 0 { sb.data_start } else { cs };
            let end = s
                .clusters
                .checked_mul(cs)
                .and_then(|n| n.checked_add(s.offset));
            if !s.offset.is_multiple_of(cs)
                || s.offset < floor
                || end.is_none_or(|e| e > member.size)
            {
                return Err(SuperblockError::Invalid("segment outside its member"));
            }
            total = total
                .checked_add(s.clusters)
                .ok_or(SuperblockError::Invalid("cluster count"))?;
        }
        if total != sb.total_clusters {
            return Err(SuperblockError::Invalid(
                "cluster count differs from the segments' sum",
            ));
        }
        Ok(sb)
    }

    /// The copy for member `index`.
    pub fn for_member(&self, index: u32) -> Superblock {
        Superblock {
            member_index: index,
            ..self.clone()
        }
    }

    /// The UUID of the member this copy is on.
    pub fn member_uuid(&self) -> [u8; 16] {
        self.members[self.member_index as usize].uuid
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
            members: vec![MemberDevice {
                uuid: [1; 16],
                size: 200 << 20,
            }],
            member_index: 0,
            segments: vec![Segment {
                member: 0,
                offset: 17 << 20,
                clusters: 100,
            }],
            labels: vec![("tier".into(), "fast".into())],
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
        sb.segments[0].clusters = 1000;
        assert!(matches!(
            Superblock::decode(&sb.encode()),
            Err(SuperblockError::Invalid(_))
        ));
        let mut sb = sample();
        sb.data_start = 4096;
        assert!(Superblock::decode(&sb.encode()).is_err());
    }
}
