//! Byte layouts of journal records, journal blocks and checkpoints (see docs/pool-format.md).

use crate::crc::crc32c;
use crate::meta::{Kind, Meta, MetaError, Record, VolumeMeta};

/// Journal block size.
pub const JOURNAL_BLOCK: usize = 4096;
/// Journal block magic.
pub const JOURNAL_MAGIC: [u8; 8] = *b"BALLASTJ";
/// Journal block header: magic (8), first sequence (8), record count (4), payload bytes (4),
/// CRC32C of the block with this field zero (4), reserved (4).
pub const JOURNAL_HEADER: usize = 32;
/// Checkpoint magic.
pub const CHECKPOINT_MAGIC: [u8; 8] = *b"BALLASTC";
/// Longest volume name.
pub const MAX_NAME: usize = 255;

const T_CREATE: u16 = 1;
const T_DELETE: u16 = 2;
const T_SETMAP: u16 = 3;
const T_SNAPSHOT: u16 = 4;
const T_CLONE: u16 = 5;
const T_REVERT: u16 = 6;
const T_RESIZE: u16 = 7;

struct Cur<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MetaError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or(MetaError::Corrupt("truncated"))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, MetaError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, MetaError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u64(&mut self) -> Result<u64, MetaError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn name(&mut self) -> Result<String, MetaError> {
        let n = self.u16()? as usize;
        if n > MAX_NAME {
            return Err(MetaError::Corrupt("name too long"));
        }
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| MetaError::Corrupt("name not UTF-8"))
    }
}

fn put_name(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(MAX_NAME)];
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

impl Record {
    /// Appends type (2), payload length (2), payload.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut p = Vec::with_capacity(32);
        let t = match self {
            Record::CreateVolume {
                id,
                name,
                size,
                thin,
            } => {
                p.extend_from_slice(&id.to_le_bytes());
                p.extend_from_slice(&size.to_le_bytes());
                p.push(*thin as u8);
                put_name(&mut p, name);
                T_CREATE
            }
            Record::Delete { id } => {
                p.extend_from_slice(&id.to_le_bytes());
                T_DELETE
            }
            Record::SetMap { id, index, entry } => {
                p.extend_from_slice(&id.to_le_bytes());
                p.extend_from_slice(&index.to_le_bytes());
                p.extend_from_slice(&entry.to_le_bytes());
                T_SETMAP
            }
            Record::Snapshot { source, id, name } => {
                p.extend_from_slice(&source.to_le_bytes());
                p.extend_from_slice(&id.to_le_bytes());
                put_name(&mut p, name);
                T_SNAPSHOT
            }
            Record::Clone { snapshot, id, name } => {
                p.extend_from_slice(&snapshot.to_le_bytes());
                p.extend_from_slice(&id.to_le_bytes());
                put_name(&mut p, name);
                T_CLONE
            }
            Record::Revert { volume, snapshot } => {
                p.extend_from_slice(&volume.to_le_bytes());
                p.extend_from_slice(&snapshot.to_le_bytes());
                T_REVERT
            }
            Record::Resize { id, size } => {
                p.extend_from_slice(&id.to_le_bytes());
                p.extend_from_slice(&size.to_le_bytes());
                T_RESIZE
            }
        };
        out.extend_from_slice(&t.to_le_bytes());
        out.extend_from_slice(&(p.len() as u16).to_le_bytes());
        out.extend_from_slice(&p);
    }

    /// Decodes one record from the front of `b`; returns it and the bytes consumed.
    pub fn decode(b: &[u8]) -> Result<(Record, usize), MetaError> {
        let mut c = Cur { b, at: 0 };
        let t = c.u16()?;
        let len = c.u16()? as usize;
        let mut p = Cur {
            b: c.take(len)?,
            at: 0,
        };
        let rec = match t {
            T_CREATE => {
                let id = p.u64()?;
                let size = p.u64()?;
                let thin = p.u8()? != 0;
                Record::CreateVolume {
                    id,
                    size,
                    thin,
                    name: p.name()?,
                }
            }
            T_DELETE => Record::Delete { id: p.u64()? },
            T_SETMAP => Record::SetMap {
                id: p.u64()?,
                index: p.u64()?,
                entry: p.u64()?,
            },
            T_SNAPSHOT => Record::Snapshot {
                source: p.u64()?,
                id: p.u64()?,
                name: p.name()?,
            },
            T_CLONE => Record::Clone {
                snapshot: p.u64()?,
                id: p.u64()?,
                name: p.name()?,
            },
            T_REVERT => Record::Revert {
                volume: p.u64()?,
                snapshot: p.u64()?,
            },
            T_RESIZE => Record::Resize {
                id: p.u64()?,
                size: p.u64()?,
            },
            _ => return Err(MetaError::Corrupt("unknown record type")),
        };
        if p.at != len {
            return Err(MetaError::Corrupt("record length mismatch"));
        }
        Ok((rec, 4 + len))
    }
}

/// Packs records into one journal block; returns how many fit.
pub fn encode_journal_block(first_seq: u64, records: &[Record]) -> ([u8; JOURNAL_BLOCK], usize) {
    let mut payload = Vec::with_capacity(JOURNAL_BLOCK);
    let mut n = 0;
    for r in records {
        let mut one = Vec::new();
        r.encode(&mut one);
        if JOURNAL_HEADER + payload.len() + one.len() > JOURNAL_BLOCK {
            break;
        }
        payload.extend_from_slice(&one);
        n += 1;
    }
    let mut b = [0u8; JOURNAL_BLOCK];
    b[0..8].copy_from_slice(&JOURNAL_MAGIC);
    b[8..16].copy_from_slice(&first_seq.to_le_bytes());
    b[16..20].copy_from_slice(&(n as u32).to_le_bytes());
    b[20..24].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    b[JOURNAL_HEADER..JOURNAL_HEADER + payload.len()].copy_from_slice(&payload);
    let crc = crc32c(&b);
    b[24..28].copy_from_slice(&crc.to_le_bytes());
    (b, n)
}

/// Decodes a journal block: its first sequence number and records. `Err` for anything that is
/// not a whole, valid block (the end of the journal, or a torn write).
pub fn decode_journal_block(b: &[u8]) -> Result<(u64, Vec<Record>), MetaError> {
    if b.len() < JOURNAL_BLOCK || b[0..8] != JOURNAL_MAGIC {
        return Err(MetaError::Corrupt("not a journal block"));
    }
    let b = &b[..JOURNAL_BLOCK];
    let stored = u32::from_le_bytes(b[24..28].try_into().expect("4"));
    let mut copy = [0u8; JOURNAL_BLOCK];
    copy.copy_from_slice(b);
    copy[24..28].fill(0);
    if crc32c(&copy) != stored {
        return Err(MetaError::Corrupt("journal block checksum"));
    }
    let seq = u64::from_le_bytes(b[8..16].try_into().expect("8"));
    let count = u32::from_le_bytes(b[16..20].try_into().expect("4")) as usize;
    let len = u32::from_le_bytes(b[20..24].try_into().expect("4")) as usize;
    if len > JOURNAL_BLOCK - JOURNAL_HEADER {
        return Err(MetaError::Corrupt("journal payload length"));
    }
    let mut at = JOURNAL_HEADER;
    let end = JOURNAL_HEADER + len;
    let mut recs = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let (r, n) = Record::decode(&b[at..end])?;
        recs.push(r);
        at += n;
    }
    if at != end {
        return Err(MetaError::Corrupt("journal block has trailing bytes"));
    }
    Ok((seq, recs))
}

/// Encodes a checkpoint: a 4 KiB header block followed by the body, padded to 4 KiB.
/// `seq` is the last record included; `journal_pos` where replay starts.
pub fn encode_checkpoint(meta: &Meta, seq: u64, journal_pos: u64) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(meta.volumes.len() as u64).to_le_bytes());
    for v in meta.volumes.values() {
        body.extend_from_slice(&v.id.to_le_bytes());
        body.push(v.kind as u8);
        body.push(v.thin as u8);
        put_name(&mut body, &v.name);
        body.extend_from_slice(&v.size.to_le_bytes());
        body.extend_from_slice(&v.origin.unwrap_or(0).to_le_bytes());
        body.extend_from_slice(&(v.map.len() as u64).to_le_bytes());
        for e in &v.map {
            body.extend_from_slice(&e.to_le_bytes());
        }
    }
    let mut out = vec![0u8; 4096];
    out[0..8].copy_from_slice(&CHECKPOINT_MAGIC);
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    out[16..24].copy_from_slice(&(body.len() as u64).to_le_bytes());
    out[24..28].copy_from_slice(&crc32c(&body).to_le_bytes());
    out[32..40].copy_from_slice(&journal_pos.to_le_bytes());
    let hcrc = crc32c(&out[..4096]);
    out[28..32].copy_from_slice(&hcrc.to_le_bytes());
    out.extend_from_slice(&body);
    out.resize(out.len().next_multiple_of(4096), 0);
    out
}

/// A checkpoint header: sequence, body length, body checksum, journal position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointHeader {
    /// Last record included.
    pub seq: u64,
    /// Body bytes following the header block.
    pub body_len: u64,
    /// CRC32C of the body.
    pub body_crc: u32,
    /// Journal position where replay starts.
    pub journal_pos: u64,
}

/// Decodes a checkpoint header block.
pub fn decode_checkpoint_header(b: &[u8]) -> Result<CheckpointHeader, MetaError> {
    if b.len() < 4096 || b[0..8] != CHECKPOINT_MAGIC {
        return Err(MetaError::Corrupt("no checkpoint"));
    }
    let mut copy = [0u8; 4096];
    copy.copy_from_slice(&b[..4096]);
    let stored = u32::from_le_bytes(copy[28..32].try_into().expect("4"));
    copy[28..32].fill(0);
    if crc32c(&copy) != stored {
        return Err(MetaError::Corrupt("checkpoint header checksum"));
    }
    Ok(CheckpointHeader {
        seq: u64::from_le_bytes(b[8..16].try_into().expect("8")),
        body_len: u64::from_le_bytes(b[16..24].try_into().expect("8")),
        body_crc: u32::from_le_bytes(b[24..28].try_into().expect("4")),
        journal_pos: u64::from_le_bytes(b[32..40].try_into().expect("8")),
    })
}

/// Decodes a checkpoint body into metadata for a pool of the given geometry.
pub fn decode_checkpoint_body(
    h: &CheckpointHeader,
    body: &[u8],
    cluster_size: u64,
    total_clusters: u64,
) -> Result<Meta, MetaError> {
    let body = body
        .get(..h.body_len as usize)
        .ok_or(MetaError::Corrupt("checkpoint body truncated"))?;
    if crc32c(body) != h.body_crc {
        return Err(MetaError::Corrupt("checkpoint body checksum"));
    }
    let mut c = Cur { b: body, at: 0 };
    let mut meta = Meta::new(cluster_size, total_clusters);
    let n = c.u64()?;
    for _ in 0..n {
        let id = c.u64()?;
        let kind = match c.u8()? {
            1 => Kind::Volume,
            2 => Kind::Snapshot,
            _ => return Err(MetaError::Corrupt("volume kind")),
        };
        let thin = c.u8()? != 0;
        let name = c.name()?;
        let size = c.u64()?;
        let origin = match c.u64()? {
            0 => None,
            o => Some(o),
        };
        let count = c.u64()?;
        if count != size.div_ceil(cluster_size) {
            return Err(MetaError::Corrupt("map length does not match volume size"));
        }
        let raw = c.take(
            (count as usize)
                .checked_mul(8)
                .ok_or(MetaError::Corrupt("map length"))?,
        )?;
        let map = raw
            .chunks_exact(8)
            .map(|e| u64::from_le_bytes(e.try_into().expect("8")))
            .collect();
        if meta
            .volumes
            .insert(
                id,
                VolumeMeta {
                    id,
                    name,
                    kind,
                    thin,
                    size,
                    origin,
                    map,
                },
            )
            .is_some()
        {
            return Err(MetaError::Corrupt("duplicate volume id"));
        }
    }
    if c.at != body.len() {
        return Err(MetaError::Corrupt("checkpoint has trailing bytes"));
    }
    meta.rebuild_refcounts()?;
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::Mapping;

    fn sample_records() -> Vec<Record> {
        vec![
            Record::CreateVolume {
                id: 1,
                name: "vol".into(),
                size: 3 << 16,
                thin: true,
            },
            Record::SetMap {
                id: 1,
                index: 2,
                entry: Mapping::Data(5).encode(),
            },
            Record::Snapshot {
                source: 1,
                id: 2,
                name: "snap".into(),
            },
            Record::Clone {
                snapshot: 2,
                id: 3,
                name: "clone".into(),
            },
            Record::SetMap {
                id: 3,
                index: 0,
                entry: Mapping::Zero(6).encode(),
            },
            Record::Revert {
                volume: 1,
                snapshot: 2,
            },
            Record::Resize {
                id: 3,
                size: 5 << 16,
            },
            Record::Delete { id: 2 },
        ]
    }

    #[test]
    fn journal_blocks_round_trip_and_detect_damage() {
        let recs = sample_records();
        let (block, n) = encode_journal_block(41, &recs);
        assert_eq!(n, recs.len());
        let (seq, back) = decode_journal_block(&block).unwrap();
        assert_eq!((seq, back), (41, recs));
        for i in [0usize, 9, 17, 25, 40, 100, 4095] {
            let mut d = block;
            d[i] ^= 0x10;
            assert!(
                decode_journal_block(&d).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
        assert!(decode_journal_block(&[0u8; 4096]).is_err());
    }

    #[test]
    fn full_blocks_split() {
        let recs: Vec<Record> = (0..1000)
            .map(|i| Record::SetMap {
                id: 1,
                index: i,
                entry: 0,
            })
            .collect();
        let (_, n) = encode_journal_block(0, &recs);
        assert!(n > 100 && n < 1000);
    }

    #[test]
    fn checkpoints_round_trip() {
        let mut m = Meta::new(1 << 16, 32);
        for r in sample_records() {
            m.apply(&r).unwrap();
        }
        let bytes = encode_checkpoint(&m, 99, 8192);
        let h = decode_checkpoint_header(&bytes).unwrap();
        assert_eq!((h.seq, h.journal_pos), (99, 8192));
        let back = decode_checkpoint_body(&h, &bytes[4096..], 1 << 16, 32).unwrap();
        assert_eq!(back, m);
        let mut d = bytes.clone();
        d[4096 + 20] ^= 1;
        assert!(decode_checkpoint_body(&h, &d[4096..], 1 << 16, 32).is_err());
    }
}
