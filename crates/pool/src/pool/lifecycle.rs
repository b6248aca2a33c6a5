//! The pool as a whole: formatting, import, wipe, grow and labels.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use blockdev::{Device, IoBuf, WriteFlags};

use crate::codec::{
    CheckpointHeader, JOURNAL_BLOCK, decode_checkpoint_body, decode_checkpoint_header,
    decode_journal_block, encode_checkpoint,
};
use crate::meta::{Meta, MetaError};
use crate::superblock::{
    LABEL_BYTES, MAX_DEVICES, MAX_SEGMENTS, MemberDevice, SUPERBLOCK_SIZE, Segment, Superblock,
    check_label, labels_len,
};

use super::{
    CHECKPOINT_START, CreateOptions, FlagGuard, GrowReport, Layout, Pool, PoolError, PoolErrorKind,
    State, Waiters, read_at, read_superblock, uuid_from, write_at, write_superblocks,
};

impl Pool {
    /// Formats `dev` as a new, empty pool.
    pub async fn create(dev: Device, opts: &CreateOptions) -> Result<Arc<Pool>, PoolError> {
        Pool::create_on(vec![dev], opts).await
    }

    /// Formats `devs` as a new, empty pool over their concatenation. Member 0 holds the
    /// metadata; every member carries both superblock copies.
    pub async fn create_on(
        devs: Vec<Device>,
        opts: &CreateOptions,
    ) -> Result<Arc<Pool>, PoolError> {
        if devs.is_empty() || devs.len() > MAX_DEVICES {
            return Err(PoolError::invalid(format!(
                "a pool has 1 to {MAX_DEVICES} devices"
            )));
        }
        let cs = opts.cluster_size as u64;
        if !opts.cluster_size.is_power_of_two()
            || !(64 * 1024..=4 << 20).contains(&opts.cluster_size)
        {
            return Err(PoolError::invalid(
                "cluster size must be a power of two from 64 KiB to 4 MiB",
            ));
        }
        if opts.name.is_empty() || opts.name.len() > 64 {
            return Err(PoolError::invalid("pool name must be 1 to 64 bytes"));
        }
        let block_size = devs
            .iter()
            .map(|d| d.geometry().block_size)
            .max()
            .unwrap_or(512);
        let size = devs[0].geometry().size();
        let others: Vec<u64> = devs[1..].iter().map(|d| d.geometry().size()).collect();
        if let Some(i) = others.iter().position(|&s| s < 2 * cs) {
            return Err(PoolError::no_space(format!(
                "device {} of {} bytes is too small to join a pool (at least two clusters)",
                i + 1,
                others[i]
            )));
        }
        let approx_clusters = (size + others.iter().sum::<u64>()) / cs;
        let checkpoint_bytes = (approx_clusters * 8 * opts.overcommit.max(1) as u64 + (1 << 20))
            .next_multiple_of(4096);
        let journal_bytes = (4u64 << 20)
            .max(approx_clusters * 8)
            .next_multiple_of(JOURNAL_BLOCK as u64);
        let data_start =
            (CHECKPOINT_START + 2 * checkpoint_bytes + journal_bytes).next_multiple_of(cs);
        if data_start + if devs.len() == 1 { cs } else { 0 } > size {
            return Err(PoolError::no_space(format!(
                "device of {size} bytes is too small for a pool"
            )));
        }
        let mut members = vec![MemberDevice {
            uuid: uuid_from(!size),
            size,
        }];
        let mut segments = Vec::new();
        if size - data_start >= cs {
            segments.push(Segment {
                member: 0,
                offset: data_start,
                clusters: (size - data_start) / cs,
            });
        }
        for (i, &s) in others.iter().enumerate() {
            members.push(MemberDevice {
                uuid: uuid_from(s ^ (i as u64 + 1) << 40),
                size: s,
            });
            segments.push(Segment {
                member: i as u32 + 1,
                offset: cs,
                clusters: (s - cs) / cs,
            });
        }
        let total_clusters = segments.iter().map(|s| s.clusters).sum();
        let sb = Superblock {
            uuid: uuid_from(size),
            name: opts.name.clone(),
            cluster_size: opts.cluster_size,
            block_size,
            checkpoint_bytes,
            journal_bytes,
            data_start,
            total_clusters,
            generation: 1,
            members,
            member_index: 0,
            segments,
            labels: Vec::new(),
        };
        let meta = Meta::new(cs, total_clusters);
        let dev = devs[0].clone();
        // An empty checkpoint in slot 0 and a cleared slot 1 and journal head, then the
        // superblocks last: a crash before them leaves no pool, never half a pool.
        write_at(&dev, CHECKPOINT_START, &encode_checkpoint(&meta, 0, 0)).await?;
        write_at(&dev, CHECKPOINT_START + checkpoint_bytes, &[0u8; 4096]).await?;
        write_at(
            &dev,
            CHECKPOINT_START + 2 * checkpoint_bytes,
            &[0u8; JOURNAL_BLOCK],
        )
        .await?;
        dev.flush().await?;
        // Other members first, member 0 last: a crash part way leaves member 0 without a
        // superblock, so no pool is found (the others report a missing member 0).
        let order: Vec<usize> = (1..devs.len()).chain([0]).collect();
        write_superblocks(&devs, &sb, &order).await?;
        Ok(Arc::new(Pool::with_state(devs, sb, meta, 0, 0, 0)))
    }

    pub(super) fn with_state(
        devs: Vec<Device>,
        sb: Superblock,
        meta: Meta,
        seq: u64,
        journal_next: u64,
        slot: u8,
    ) -> Pool {
        let layout = Arc::new(Layout::new(devs, &sb));
        Pool {
            dev: layout.devs[0].clone(),
            current: Mutex::new(sb.clone()),
            applied: AtomicU64::new(seq),
            durable: AtomicU64::new(seq),
            sb,
            warnings: Vec::new(),
            failed: AtomicBool::new(false),
            admin: AtomicBool::new(false),
            writes: AtomicUsize::new(0),
            gate: AtomicBool::new(false),
            state: Mutex::new(State {
                meta,
                seq,
                pending: Vec::new(),
                durable_seq: seq,
                journal_next,
                journal_used: 0,
                slot,
                freed_pending: HashMap::new(),
                reserved: HashSet::new(),
                hint: 0,
                busy: HashSet::new(),
                waiters: Waiters(Vec::new()),
                committing: false,
                failure: None,
                layout,
            }),
        }
    }

    /// Opens an existing pool on one device: superblocks, newest valid checkpoint, journal
    /// replay.
    pub async fn import(dev: Device) -> Result<Arc<Pool>, PoolError> {
        Pool::import_members(vec![dev]).await
    }

    /// Opens an existing pool from its member devices, in member order (see
    /// [`crate::assemble`] to find and order them): the newest superblock, checked against
    /// every member, the newest valid checkpoint, then the journal after it.
    pub async fn import_members(devs: Vec<Device>) -> Result<Arc<Pool>, PoolError> {
        if devs.is_empty() {
            return Err(PoolError::members("no devices given"));
        }
        let mut warnings = Vec::new();
        let copies = read_member_superblocks(&devs, &mut warnings).await?;
        // The newest generation on any member describes the pool (a grow rewrites every
        // member's superblocks; a crash part way leaves some older).
        let sb = copies
            .iter()
            .max_by_key(|c| c.generation)
            .expect("at least one")
            .clone();
        check_members(&sb, &copies, &devs, &mut warnings)?;
        let sb = sb.for_member(0);
        let dev = devs[0].clone();
        let (h, mut meta, slot) = load_checkpoint(&dev, &sb, &mut warnings).await?;
        let replayed = replay_journal(&dev, &sb, &h, &mut meta, &mut warnings).await?;
        let mut pool = Pool::with_state(devs, sb, meta, replayed.seq, replayed.pos, slot);
        pool.warnings = warnings;
        pool.state.lock().expect("pool lock").journal_used = replayed.used;
        Ok(Arc::new(pool))
    }

    /// Erases the pool on `dev`: both superblock copies are zeroed and flushed, so the device
    /// no longer holds a pool, then the rest of its head ([`crate::blank::HEAD_BYTES`]), so
    /// the device is blank again for `pool create` ([`crate::blank::probe`]). The data
    /// beyond is not erased. The pool must not be open. Wipe every member of a pool that
    /// spans several devices.
    pub async fn wipe(dev: &Device) -> Result<(), PoolError> {
        write_at(dev, 0, &[0u8; 2 * SUPERBLOCK_SIZE]).await?;
        dev.flush().await?;
        let bs = dev.geometry().block_size.max(1) as u64;
        let head = (crate::blank::HEAD_BYTES as u64).min(dev.geometry().size() / bs * bs);
        let sb = (2 * SUPERBLOCK_SIZE as u64).next_multiple_of(bs);
        if head > sb {
            dev.write(
                sb,
                IoBuf::zeroed((head - sb) as usize),
                WriteFlags::default(),
            )
            .await?;
            dev.flush().await?;
        }
        Ok(())
    }

    /// Takes the right to rewrite the superblocks.
    pub(super) fn admin(&self) -> Result<FlagGuard<'_>, PoolError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(self.failed_error());
        }
        if self.admin.swap(true, Ordering::AcqRel) {
            return Err(PoolError::invalid(
                "another grow or label change of this pool is in progress",
            ));
        }
        Ok(FlagGuard(&self.admin))
    }

    /// Writes `sb` (next generation) to every member in `devs`, copy A everywhere then copy B.
    pub(super) async fn rewrite_superblocks(
        &self,
        devs: &[Device],
        sb: &Superblock,
    ) -> Result<(), PoolError> {
        let order: Vec<usize> = (0..devs.len()).rev().collect();
        if let Err(e) = write_superblocks(devs, sb, &order).await {
            // A copy may be torn: the others still describe the pool, but this process no
            // longer knows which generation each member holds.
            self.fail(format!("superblock rewrite failed ({e})"));
            return Err(self.failed_error());
        }
        *self.current.lock().expect("superblock lock") = sb.for_member(0);
        Ok(())
    }

    /// Grows the pool online: members whose device grew get a new segment for the added
    /// space, and `new_devices` join as new members. Existing clusters never move. The new
    /// superblock is durable on every member before any new cluster is handed out.
    pub async fn grow(&self, new_devices: Vec<Device>) -> Result<GrowReport, PoolError> {
        let _admin = self.admin()?;
        let cs = self.sb.cluster_size as u64;
        let mut sb = self.superblock();
        let old_clusters = sb.total_clusters;
        let mut devs = self.devices();
        if devs.len() + new_devices.len() > MAX_DEVICES {
            return Err(PoolError::invalid(format!(
                "a pool has at most {MAX_DEVICES} devices"
            )));
        }
        for (i, dev) in devs.iter().enumerate() {
            let have = dev.geometry().size();
            let end = sb
                .segments
                .iter()
                .filter(|s| s.member as usize == i)
                .map(|s| s.offset + s.clusters * cs)
                .max()
                .unwrap_or(if i == 0 { sb.data_start } else { cs });
            sb.members[i].size = have.max(sb.members[i].size);
            if have >= end + cs {
                sb.segments.push(Segment {
                    member: i as u32,
                    offset: end,
                    clusters: (have - end) / cs,
                });
            }
        }
        for dev in &new_devices {
            let g = dev.geometry();
            let size = g.size();
            if g.block_size > self.sb.block_size {
                return Err(PoolError::invalid(format!(
                    "a device with {}-byte blocks cannot join a pool of {}-byte blocks",
                    g.block_size, self.sb.block_size
                )));
            }
            if size < 2 * cs {
                return Err(PoolError::no_space(format!(
                    "a device of {size} bytes is too small to join the pool (at least two \
                     clusters)"
                )));
            }
            sb.members.push(MemberDevice {
                uuid: uuid_from(size ^ (sb.members.len() as u64) << 40),
                size,
            });
            sb.segments.push(Segment {
                member: sb.members.len() as u32 - 1,
                offset: cs,
                clusters: (size - cs) / cs,
            });
            devs.push(dev.clone());
        }
        if sb.segments.len() > MAX_SEGMENTS {
            return Err(PoolError::no_space(format!(
                "the superblock holds at most {MAX_SEGMENTS} segments"
            )));
        }
        sb.total_clusters = sb.segments.iter().map(|s| s.clusters).sum();
        if sb.total_clusters == old_clusters && new_devices.is_empty() {
            return Ok(GrowReport {
                old_clusters,
                new_clusters: old_clusters,
            });
        }
        sb.generation += 1;
        self.rewrite_superblocks(&devs, &sb).await?;
        let layout = Arc::new(Layout::new(devs, &sb));
        let mut st = self.state.lock().expect("pool lock");
        st.meta.grow(sb.total_clusters);
        st.layout = layout;
        Ok(GrowReport {
            old_clusters,
            new_clusters: sb.total_clusters,
        })
    }

    /// Sets (`Some`) or removes (`None`) labels; the superblocks are rewritten.
    pub async fn set_labels(&self, changes: &[(String, Option<String>)]) -> Result<(), PoolError> {
        let _admin = self.admin()?;
        let mut sb = self.superblock();
        for (k, v) in changes {
            match v {
                Some(v) => {
                    check_label(k, v).map_err(PoolError::invalid)?;
                    match sb.labels.iter_mut().find(|(key, _)| key == k) {
                        Some(l) => l.1 = v.clone(),
                        None => sb.labels.push((k.clone(), v.clone())),
                    }
                }
                None => sb.labels.retain(|(key, _)| key != k),
            }
        }
        sb.labels.sort();
        if labels_len(&sb.labels) > LABEL_BYTES {
            return Err(PoolError::no_space(format!(
                "labels take at most {LABEL_BYTES} bytes (as key=value lines)"
            )));
        }
        sb.generation += 1;
        let devs = self.devices();
        self.rewrite_superblocks(&devs, &sb).await
    }
}

/// Each member's own superblock (the valid copy with the higher generation); a damaged copy
/// the other one stands in for is a warning, both damaged an error naming the member.
async fn read_member_superblocks(
    devs: &[Device],
    warnings: &mut Vec<String>,
) -> Result<Vec<Superblock>, PoolError> {
    let mut copies = Vec::new();
    for (i, dev) in devs.iter().enumerate() {
        let member = if devs.len() == 1 {
            String::new()
        } else {
            format!("member {i}: ")
        };
        let (own, damage) = read_superblock(dev).await?.map_err(|[e1, e2]| {
            PoolError::new(
                PoolErrorKind::NoSuperblock,
                format!("{member}superblock copy A: {e1}; copy B: {e2}"),
            )
        })?;
        for (copy, e) in ["A", "B"].iter().zip(damage) {
            if let Some(e) = e {
                warnings.push(format!(
                    "{member}superblock copy {copy}: {e}; the other copy is in use"
                ));
            }
        }
        copies.push(own);
    }
    Ok(copies)
}

/// Checks that `devs` are the members `sb` (the newest superblock) lists, in order, each
/// large enough for its segments; a member with an older superblock is a warning.
fn check_members(
    sb: &Superblock,
    copies: &[Superblock],
    devs: &[Device],
    warnings: &mut Vec<String>,
) -> Result<(), PoolError> {
    if devs.len() != sb.members.len() {
        return Err(PoolError::members(format!(
            "pool {:?} has {} member device(s), {} given",
            sb.name,
            sb.members.len(),
            devs.len()
        )));
    }
    for (i, (own, dev)) in copies.iter().zip(devs).enumerate() {
        if own.uuid != sb.uuid {
            return Err(PoolError::members(format!(
                "device {i} belongs to another pool ({:?})",
                own.name
            )));
        }
        if own.member_uuid() != sb.members[i].uuid {
            return Err(PoolError::members(format!(
                "device {i} is member {} of pool {:?}, not member {i}",
                own.member_index, sb.name
            )));
        }
        if own.generation < sb.generation {
            warnings.push(format!(
                "member {i} holds an older superblock (generation {}, current {}): a grow \
                 or relabel was interrupted; it is rewritten by the next one",
                own.generation, sb.generation
            ));
        }
        let needed = sb
            .segments
            .iter()
            .filter(|s| s.member as usize == i)
            .map(|s| s.offset + s.clusters * sb.cluster_size as u64)
            .max()
            .unwrap_or(0);
        let have = dev.geometry().size();
        if have < needed {
            return Err(PoolError::members(format!(
                "member {i} has {have} bytes, the pool uses {needed}: the device shrank \
                 or is the wrong one"
            )));
        }
    }
    Ok(())
}

/// The newest valid checkpoint of the two slots: its header, the metadata it holds and its
/// slot. A damaged slot is a warning (or, when it is the newer one, says the older was used).
async fn load_checkpoint(
    dev: &Device,
    sb: &Superblock,
    warnings: &mut Vec<String>,
) -> Result<(CheckpointHeader, Meta, u8), PoolError> {
    let cs = sb.cluster_size as u64;
    let mut best: Option<(CheckpointHeader, Meta, u8)> = None;
    let mut why = Vec::new();
    let mut damaged_seq = None;
    for slot in 0..2u8 {
        let at = CHECKPOINT_START + slot as u64 * sb.checkpoint_bytes;
        let hdr = read_at(dev, at, 4096).await?;
        if hdr.iter().all(|&x| x == 0) {
            continue; // never written
        }
        match decode_checkpoint_header(&hdr) {
            Ok(h) if h.body_len + 4096 <= sb.checkpoint_bytes => {
                let len = (h.body_len as usize).next_multiple_of(4096).max(4096);
                let body = read_at(dev, at + 4096, len).await?;
                match decode_checkpoint_body(&h, &body, cs, sb.total_clusters) {
                    Ok(m) if best.as_ref().is_none_or(|(bh, _, _)| h.seq > bh.seq) => {
                        best = Some((h, m, slot))
                    }
                    Ok(_) => {}
                    Err(e) => {
                        damaged_seq = damaged_seq.max(Some(h.seq));
                        why.push(format!("checkpoint slot {slot} (sequence {}): {e}", h.seq))
                    }
                }
            }
            Ok(_) => why.push(format!("checkpoint slot {slot}: body larger than the slot")),
            Err(e) => why.push(format!("checkpoint slot {slot}: {e}")),
        }
    }
    let (h, meta, slot) =
        best.ok_or_else(|| PoolError::new(PoolErrorKind::NoCheckpoint, why.join("; ")))?;
    for w in why {
        warnings.push(format!(
            "{w} (damaged, or torn by a crash while it was written)"
        ));
    }
    if let Some(d) = damaged_seq.filter(|&d| d > h.seq) {
        warnings.push(format!(
            "the newest checkpoint (sequence {d}) is unreadable; recovered from the older \
             one (sequence {}) and the journal after it",
            h.seq
        ));
    }
    Ok((h, meta, slot))
}

/// Where journal replay stopped.
struct Replayed {
    /// The last record applied.
    seq: u64,
    /// The next journal block to write.
    pos: u64,
    /// Journal blocks replayed (written since the checkpoint).
    used: u64,
}

/// Applies the journal records after checkpoint `h` to `meta`, block by block, up to the
/// first block that does not continue the sequence. A damaged block followed by blocks that
/// do continue it means committed metadata is lost: a warning says so.
async fn replay_journal(
    dev: &Device,
    sb: &Superblock,
    h: &CheckpointHeader,
    meta: &mut Meta,
    warnings: &mut Vec<String>,
) -> Result<Replayed, PoolError> {
    let blocks = sb.journal_bytes / JOURNAL_BLOCK as u64;
    let jstart = CHECKPOINT_START + 2 * sb.checkpoint_bytes;
    let block_at = |pos: u64| jstart + pos * JOURNAL_BLOCK as u64;
    let mut r = Replayed {
        seq: h.seq,
        pos: h.journal_pos % blocks,
        used: 0,
    };
    for _ in 0..blocks {
        let blk = read_at(dev, block_at(r.pos), JOURNAL_BLOCK).await?;
        match decode_journal_block(&blk) {
            Ok((first, recs)) if first == r.seq + 1 && !recs.is_empty() => {
                for rec in &recs {
                    meta.apply(rec).map_err(|e| {
                        PoolError::from(MetaError::Corrupt(match e {
                            MetaError::Corrupt(w) => w,
                            _ => "journal record does not apply to the checkpoint",
                        }))
                    })?;
                }
                r.seq += recs.len() as u64;
                r.pos = (r.pos + 1) % blocks;
                r.used += 1;
            }
            Ok(_) => break, // an older lap: the end of the journal
            Err(_) if blk.iter().all(|&x| x == 0) => break,
            Err(e) => {
                // Damaged, or torn by a crash. Records beyond it that continue the sequence
                // would mean committed metadata is being lost: say so.
                for ahead in 1..=64u64.min(blocks - 1) {
                    let p = (r.pos + ahead) % blocks;
                    let later = read_at(dev, block_at(p), JOURNAL_BLOCK).await?;
                    if let Ok((first, _)) = decode_journal_block(&later)
                        && first > r.seq + 1
                    {
                        warnings.push(format!(
                            "journal block {} ({e}) stops replay at sequence {}, but block \
                             {p} holds records from sequence {first}: metadata after \
                             sequence {} is lost (damage, or a crash during a multi-block \
                             commit)",
                            r.pos, r.seq, r.seq
                        ));
                        break;
                    }
                }
                break;
            }
        }
    }
    Ok(r)
}
