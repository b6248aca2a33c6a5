//! A pool on a device: create, import, metadata commits, and volumes as block devices.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Poll, Waker};

use blockdev::{
    BlockDevice, BlockError, Capabilities, Device, ErrorKind, Extent, ExtentState, Geometry, IoBuf,
    IoFuture, IoKind, WriteFlags, ZeroFlags, check_range,
};

use crate::codec::{
    JOURNAL_BLOCK, decode_checkpoint_body, decode_checkpoint_header, decode_journal_block,
    encode_checkpoint, encode_journal_block,
};
use crate::meta::{Kind, Mapping, Meta, MetaError, Record};
use crate::superblock::{
    LABEL_BYTES, MAX_DEVICES, MAX_SEGMENTS, MemberDevice, SUPERBLOCK_SIZE, Segment, Superblock,
    check_label, labels_len,
};

/// Why a pool operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum PoolError {
    /// The device failed.
    Device(BlockError),
    /// No valid superblock: not a pool, or both copies damaged (reasons given).
    NoSuperblock(String),
    /// No valid checkpoint in either slot.
    NoCheckpoint(String),
    /// Metadata inconsistent or rejected.
    Meta(MetaError),
    /// No such volume or snapshot.
    NotFound(String),
    /// Bad arguments.
    Invalid(String),
    /// Out of space (clusters or metadata room).
    NoSpace(String),
    /// A metadata write failed: the pool refuses changes until it is imported again.
    Failed(String),
    /// The member devices given do not make up the pool.
    Members(String),
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolError::Device(e) => write!(f, "device error: {e}"),
            PoolError::NoSuperblock(w) => write!(f, "no valid pool superblock: {w}"),
            PoolError::NoCheckpoint(w) => write!(f, "no valid metadata checkpoint: {w}"),
            PoolError::Meta(e) => write!(f, "metadata: {e}"),
            PoolError::NotFound(n) => write!(f, "{n:?} not found"),
            PoolError::Invalid(w) => write!(f, "{w}"),
            PoolError::NoSpace(w) => write!(f, "no space: {w}"),
            PoolError::Failed(w) => write!(
                f,
                "pool is read-only: {w}; import it again once the device is healthy"
            ),
            PoolError::Members(w) => write!(f, "pool members: {w}"),
        }
    }
}

impl std::error::Error for PoolError {}

impl From<BlockError> for PoolError {
    fn from(e: BlockError) -> Self {
        PoolError::Device(e)
    }
}
impl From<MetaError> for PoolError {
    fn from(e: MetaError) -> Self {
        PoolError::Meta(e)
    }
}

/// Pool creation parameters.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// Pool name.
    pub name: String,
    /// Cluster size (power of two, 64 KiB – 4 MiB).
    pub cluster_size: u32,
    /// Logical clusters (over all volumes and snapshots) the metadata can describe, as a
    /// multiple of the pool's physical clusters.
    pub overcommit: u32,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            name: "pool".into(),
            cluster_size: 128 * 1024,
            overcommit: 4,
        }
    }
}

const CHECKPOINT_START: u64 = 2 * SUPERBLOCK_SIZE as u64;

struct Waiters(Vec<Waker>);

struct State {
    meta: Meta,
    /// Sequence number of the last record applied in memory.
    seq: u64,
    /// Records applied in memory, not yet in the journal.
    pending: Vec<Record>,
    /// Sequence number of the last durable record.
    durable_seq: u64,
    /// Next journal block (index within the ring).
    journal_next: u64,
    /// Journal blocks written since the last checkpoint.
    journal_used: u64,
    /// Checkpoint slot written last (0 or 1).
    slot: u8,
    /// Clusters freed by records not yet durable: not reusable until then.
    freed_pending: HashMap<u64, u64>,
    /// Clusters handed out in memory whose mapping record is not yet applied.
    reserved: HashSet<u64>,
    /// Next cluster to consider for allocation.
    hint: u64,
    /// Logical clusters being allocated or copied: (volume id, index).
    busy: HashSet<(u64, u64)>,
    waiters: Waiters,
    committing: bool,
    /// Why the pool went read-only (a metadata write failed), if it did.
    failure: Option<String>,
}

/// Where clusters live: the member devices and the segments in pool order.
struct Layout {
    devs: Vec<Device>,
    /// (first cluster, segment)
    segs: Vec<(u64, Segment)>,
    cs: u64,
}

impl Layout {
    fn new(devs: Vec<Device>, sb: &Superblock) -> Layout {
        let mut first = 0;
        let segs = sb
            .segments
            .iter()
            .map(|s| {
                let at = first;
                first += s.clusters;
                (at, *s)
            })
            .collect();
        Layout {
            devs,
            segs,
            cs: sb.cluster_size as u64,
        }
    }

    /// The member device and byte offset of cluster `c`.
    fn locate(&self, c: u64) -> (&Device, u64) {
        let (member, off) = self.locate_member(c);
        (&self.devs[member], off)
    }

    /// The member index and byte offset of cluster `c`.
    fn locate_member(&self, c: u64) -> (usize, u64) {
        let (first, s) = self
            .segs
            .iter()
            .rev()
            .find(|(first, _)| *first <= c)
            .expect("cluster 0 is in the first segment");
        (s.member as usize, s.offset + (c - first) * self.cs)
    }
}

/// A piece of a request that is one device I/O: `len` bytes at `at` in the request, at
/// `dev_off` on member `member`.
struct Run {
    at: usize,
    len: usize,
    member: usize,
    dev_off: u64,
}

/// Appends a piece, extending the last run when it continues it on the device.
fn push_run(runs: &mut Vec<Run>, at: usize, len: usize, member: usize, dev_off: u64) {
    if let Some(r) = runs.last_mut()
        && r.member == member
        && r.at + r.len == at
        && r.dev_off + r.len as u64 == dev_off
    {
        r.len += len;
        return;
    }
    runs.push(Run {
        at,
        len,
        member,
        dev_off,
    });
}

/// A pool on one device or several (concatenated).
pub struct Pool {
    /// Member 0: superblocks, checkpoints and journal, then data.
    dev: Device,
    /// The superblock as created or imported: its fixed fields (cluster size, block size,
    /// metadata areas) never change. The current one (grown, relabelled) is `current`.
    sb: Superblock,
    current: Mutex<Superblock>,
    layout: RwLock<Arc<Layout>>,
    state: Mutex<State>,
    warnings: Vec<String>,
    /// A metadata write failed: writes and changes are refused (`State::failure` says why).
    failed: AtomicBool,
    /// A superblock rewrite (grow, labels) is in progress.
    admin: AtomicBool,
    /// Volume writes (and write-zeroes, unmaps) in flight.
    writes: AtomicUsize,
    /// Set while a metadata operation that changes existing maps (snapshot, revert, delete,
    /// resize) waits for in-flight writes to drain: new writes wait.
    gate: AtomicBool,
}

/// A write in flight (see [`Pool::enter_write`]).
struct WriteGuard<'a>(&'a Pool);
impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        let p = self.0;
        if p.writes.fetch_sub(1, Ordering::SeqCst) == 1 && p.gate.load(Ordering::SeqCst) {
            p.wake_all();
        }
    }
}

/// Writes are held off while this lives (see [`Pool::quiesce`]).
struct GateGuard<'a>(&'a Pool);
impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        self.0.gate.store(false, Ordering::SeqCst);
        self.0.wake_all();
    }
}

/// A member device as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Member UUID.
    pub uuid: [u8; 16],
    /// Bytes of the device the pool knows of.
    pub size: u64,
    /// Clusters the pool uses on it.
    pub clusters: u64,
}

/// What a grow did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrowReport {
    /// Clusters before.
    pub old_clusters: u64,
    /// Clusters after.
    pub new_clusters: u64,
}

/// Clears a flag when dropped.
struct FlagGuard<'a>(&'a AtomicBool);
impl Drop for FlagGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("name", &self.sb.name).finish()
    }
}

/// Capacity figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolUsage {
    /// Bytes of data clusters.
    pub capacity: u64,
    /// Bytes of clusters referenced.
    pub used: u64,
    /// Bytes promised to volumes (sum of sizes; may exceed capacity when thin).
    pub committed: u64,
}

/// One volume or snapshot, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Snapshot (read-only) or volume.
    pub snapshot: bool,
    /// Thin.
    pub thin: bool,
    /// Bytes allocated (clusters mapped).
    pub allocated: u64,
    /// Origin snapshot or volume name, if it still exists.
    pub origin: Option<String>,
}

fn uuid_from(seed: u64) -> [u8; 16] {
    let mut u = [0u8; 16];
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    u[..8].copy_from_slice(&(t as u64 ^ seed).to_le_bytes());
    u[8..].copy_from_slice(
        &(std::process::id() as u64)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .to_le_bytes(),
    );
    u
}

async fn write_at(dev: &Device, offset: u64, data: &[u8]) -> Result<(), BlockError> {
    dev.write(offset, IoBuf::from_slice(data), WriteFlags::default())
        .await
        .map(drop)
}

async fn read_at(dev: &Device, offset: u64, len: usize) -> Result<IoBuf, BlockError> {
    dev.read(offset, IoBuf::zeroed(len)).await
}

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
            return Err(PoolError::Invalid(format!(
                "a pool has 1 to {MAX_DEVICES} devices"
            )));
        }
        let cs = opts.cluster_size as u64;
        if !opts.cluster_size.is_power_of_two()
            || !(64 * 1024..=4 << 20).contains(&opts.cluster_size)
        {
            return Err(PoolError::Invalid(
                "cluster size must be a power of two from 64 KiB to 4 MiB".into(),
            ));
        }
        if opts.name.is_empty() || opts.name.len() > 64 {
            return Err(PoolError::Invalid("pool name must be 1 to 64 bytes".into()));
        }
        let block_size = devs
            .iter()
            .map(|d| d.geometry().block_size)
            .max()
            .unwrap_or(512);
        let size = devs[0].geometry().size();
        let others: Vec<u64> = devs[1..].iter().map(|d| d.geometry().size()).collect();
        if let Some(i) = others.iter().position(|&s| s < 2 * cs) {
            return Err(PoolError::NoSpace(format!(
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
            return Err(PoolError::NoSpace(format!(
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

    fn with_state(
        devs: Vec<Device>,
        sb: Superblock,
        meta: Meta,
        seq: u64,
        journal_next: u64,
        slot: u8,
    ) -> Pool {
        Pool {
            dev: devs[0].clone(),
            layout: RwLock::new(Arc::new(Layout::new(devs, &sb))),
            current: Mutex::new(sb.clone()),
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
            }),
        }
    }

    /// Opens an existing pool on one device: superblocks, newest valid checkpoint, journal
    /// replay.
    pub async fn import(dev: Device) -> Result<Arc<Pool>, PoolError> {
        Pool::import_members(vec![dev]).await
    }

    /// Opens an existing pool from its member devices, in member order (see
    /// [`crate::assemble`] to find and order them).
    pub async fn import_members(devs: Vec<Device>) -> Result<Arc<Pool>, PoolError> {
        if devs.is_empty() {
            return Err(PoolError::Members("no devices given".into()));
        }
        let mut warnings = Vec::new();
        let mut copies = Vec::new();
        for (i, dev) in devs.iter().enumerate() {
            let (own, damage) = read_superblock(dev).await?.map_err(|[e1, e2]| {
                PoolError::NoSuperblock(if devs.len() == 1 {
                    format!("superblock copy A: {e1}; copy B: {e2}")
                } else {
                    format!("member {i}: superblock copy A: {e1}; copy B: {e2}")
                })
            })?;
            for (copy, e) in ["A", "B"].iter().zip(damage) {
                if let Some(e) = e {
                    warnings.push(if devs.len() == 1 {
                        format!("superblock copy {copy}: {e}; the other copy is in use")
                    } else {
                        format!("member {i}: superblock copy {copy}: {e}; the other copy is in use")
                    });
                }
            }
            copies.push(own);
        }
        // The newest generation on any member describes the pool (a grow rewrites every
        // member's superblocks; a crash part way leaves some older).
        let sb = copies
            .iter()
            .max_by_key(|c| c.generation)
            .expect("at least one")
            .clone();
        if devs.len() != sb.members.len() {
            return Err(PoolError::Members(format!(
                "pool {:?} has {} member device(s), {} given",
                sb.name,
                sb.members.len(),
                devs.len()
            )));
        }
        for (i, (own, dev)) in copies.iter().zip(&devs).enumerate() {
            if own.uuid != sb.uuid {
                return Err(PoolError::Members(format!(
                    "device {i} belongs to another pool ({:?})",
                    own.name
                )));
            }
            if own.member_uuid() != sb.members[i].uuid {
                return Err(PoolError::Members(format!(
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
                return Err(PoolError::Members(format!(
                    "member {i} has {have} bytes, the pool uses {needed}: the device shrank \
                     or is the wrong one"
                )));
            }
        }
        let sb = sb.for_member(0);
        let dev = devs[0].clone();
        let cs = sb.cluster_size as u64;
        let mut best: Option<(crate::codec::CheckpointHeader, Meta, u8)> = None;
        let mut why = Vec::new();
        let mut damaged_seq = None;
        for slot in 0..2u8 {
            let at = CHECKPOINT_START + slot as u64 * sb.checkpoint_bytes;
            let hdr = read_at(&dev, at, 4096).await?;
            if hdr.iter().all(|&x| x == 0) {
                continue; // never written
            }
            match decode_checkpoint_header(&hdr) {
                Ok(h) if h.body_len + 4096 <= sb.checkpoint_bytes => {
                    let len = (h.body_len as usize).next_multiple_of(4096).max(4096);
                    let body = read_at(&dev, at + 4096, len).await?;
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
        let (h, mut meta, slot) = best.ok_or_else(|| PoolError::NoCheckpoint(why.join("; ")))?;
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
        // Replay the journal from the checkpoint's position.
        let blocks = sb.journal_bytes / JOURNAL_BLOCK as u64;
        let jstart = CHECKPOINT_START + 2 * sb.checkpoint_bytes;
        let block_at = |pos: u64| jstart + pos * JOURNAL_BLOCK as u64;
        let mut pos = h.journal_pos % blocks;
        let mut seq = h.seq;
        let mut used = 0;
        for _ in 0..blocks {
            let blk = read_at(&dev, block_at(pos), JOURNAL_BLOCK).await?;
            match decode_journal_block(&blk) {
                Ok((first, recs)) if first == seq + 1 && !recs.is_empty() => {
                    for r in &recs {
                        meta.apply(r).map_err(|e| {
                            PoolError::Meta(MetaError::Corrupt(match e {
                                MetaError::Corrupt(w) => w,
                                _ => "journal record does not apply to the checkpoint",
                            }))
                        })?;
                    }
                    seq += recs.len() as u64;
                    pos = (pos + 1) % blocks;
                    used += 1;
                }
                Ok(_) => break, // an older lap: the end of the journal
                Err(_) if blk.iter().all(|&x| x == 0) => break,
                Err(e) => {
                    // Damaged, or torn by a crash. Records beyond it that continue the sequence
                    // would mean committed metadata is being lost: say so.
                    for ahead in 1..=64u64.min(blocks - 1) {
                        let p = (pos + ahead) % blocks;
                        let later = read_at(&dev, block_at(p), JOURNAL_BLOCK).await?;
                        if let Ok((first, _)) = decode_journal_block(&later)
                            && first > seq + 1
                        {
                            warnings.push(format!(
                                "journal block {pos} ({e}) stops replay at sequence {seq}, but \
                                     block {p} holds records from sequence {first}: metadata \
                                     after sequence {seq} is lost (damage, or a crash during a \
                                     multi-block commit)"
                            ));
                            break;
                        }
                    }
                    break;
                }
            }
        }
        let mut pool = Pool::with_state(devs, sb, meta, seq, pos, slot);
        pool.warnings = warnings;
        pool.state.lock().expect("pool lock").journal_used = used;
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

    /// What import found damaged but could work around (empty for a clean pool).
    pub fn import_warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The current superblock (member 0's copy).
    pub fn superblock(&self) -> Superblock {
        self.current.lock().expect("superblock lock").clone()
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.sb.name
    }

    /// The member devices, in order, with the clusters used on each.
    pub fn members(&self) -> Vec<MemberInfo> {
        let sb = self.superblock();
        sb.members
            .iter()
            .enumerate()
            .map(|(i, m)| MemberInfo {
                uuid: m.uuid,
                size: m.size,
                clusters: sb
                    .segments
                    .iter()
                    .filter(|s| s.member as usize == i)
                    .map(|s| s.clusters)
                    .sum(),
            })
            .collect()
    }

    /// The pool's labels, sorted by key.
    pub fn labels(&self) -> Vec<(String, String)> {
        self.superblock().labels
    }

    /// Why the pool is read-only, if a metadata write failed.
    pub fn failure(&self) -> Option<String> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        self.state.lock().expect("pool lock").failure.clone()
    }

    fn failed_error(&self) -> PoolError {
        PoolError::Failed(
            self.failure()
                .unwrap_or_else(|| "a metadata write failed".into()),
        )
    }

    /// Marks the pool read-only: metadata in memory is ahead of the disk and can no longer be
    /// made durable in order.
    fn fail(&self, why: String) {
        let mut st = self.state.lock().expect("pool lock");
        st.failure.get_or_insert(why);
        self.failed.store(true, Ordering::Release);
    }

    /// Capacity, used and committed bytes.
    pub fn usage(&self) -> PoolUsage {
        let st = self.state.lock().expect("pool lock");
        let cs = self.sb.cluster_size as u64;
        let free = st.meta.free_count();
        PoolUsage {
            capacity: st.meta.total_clusters * cs,
            used: (st.meta.total_clusters - free) * cs,
            committed: st
                .meta
                .volumes
                .values()
                .filter(|v| v.kind == Kind::Volume)
                .map(|v| v.size)
                .sum(),
        }
    }

    /// Invariant violations of the in-memory metadata (empty when consistent).
    pub fn check(&self) -> Vec<String> {
        self.state.lock().expect("pool lock").meta.check()
    }

    /// Volumes and snapshots.
    pub fn list(&self) -> Vec<VolumeInfo> {
        let st = self.state.lock().expect("pool lock");
        let cs = self.sb.cluster_size as u64;
        st.meta
            .volumes
            .values()
            .map(|v| VolumeInfo {
                name: v.name.clone(),
                size: v.size,
                snapshot: v.kind == Kind::Snapshot,
                thin: v.thin,
                allocated: v
                    .map
                    .iter()
                    .filter(|&&e| Mapping::decode(e).cluster().is_some())
                    .count() as u64
                    * cs,
                origin: v
                    .origin
                    .and_then(|o| st.meta.volumes.get(&o))
                    .map(|o| o.name.clone()),
            })
            .collect()
    }

    fn id_of(st: &State, name: &str) -> Result<u64, PoolError> {
        st.meta
            .volumes
            .values()
            .find(|v| v.name == name)
            .map(|v| v.id)
            .ok_or_else(|| PoolError::NotFound(name.into()))
    }

    fn next_id(st: &State) -> u64 {
        st.meta.volumes.keys().next_back().copied().unwrap_or(0) + 1
    }

    fn push(&self, st: &mut State, rec: Record) -> Result<(), PoolError> {
        if let Some(f) = &st.failure {
            return Err(PoolError::Failed(f.clone()));
        }
        let freed = st.meta.apply(&rec)?;
        st.seq += 1;
        let seq = st.seq;
        st.freed_pending.extend(freed.into_iter().map(|c| (c, seq)));
        st.pending.push(rec);
        Ok(())
    }

    fn check_name(name: &str) -> Result<(), PoolError> {
        if name.is_empty()
            || name.len() > crate::codec::MAX_NAME
            || name.chars().any(|c| c.is_control() || c == '/')
        {
            return Err(PoolError::Invalid(format!("bad name {name:?}")));
        }
        Ok(())
    }

    /// Creates a volume; thick volumes get every cluster allocated (reading as zeroes).
    pub async fn create_volume(&self, name: &str, size: u64, thin: bool) -> Result<(), PoolError> {
        Self::check_name(name)?;
        let bs = self.sb.block_size as u64;
        if size == 0 || !size.is_multiple_of(bs) {
            return Err(PoolError::Invalid(format!(
                "size must be a non-zero multiple of {bs}"
            )));
        }
        {
            let mut st = self.state.lock().expect("pool lock");
            let id = Self::next_id(&st);
            let clusters = size.div_ceil(self.sb.cluster_size as u64);
            if !thin && clusters > st.meta.free_count() {
                return Err(PoolError::NoSpace(format!(
                    "thick volume needs {clusters} clusters"
                )));
            }
            self.push(
                &mut st,
                Record::CreateVolume {
                    id,
                    name: name.into(),
                    size,
                    thin,
                },
            )?;
            if !thin {
                self.allocate_zeroed(&mut st, id, 0..clusters)?;
            }
        }
        self.commit().await
    }

    /// Deletes a volume or snapshot (any order; clusters shared with others stay).
    pub async fn delete(&self, name: &str) -> Result<(), PoolError> {
        let _quiet = self.quiesce().await;
        {
            let mut st = self.state.lock().expect("pool lock");
            let id = Self::id_of(&st, name)?;
            self.push(&mut st, Record::Delete { id })?;
        }
        self.commit().await
    }

    /// Snapshots volume `source` as `name` (acknowledged writes before the call are in it).
    pub async fn snapshot(&self, source: &str, name: &str) -> Result<(), PoolError> {
        Self::check_name(name)?;
        let _quiet = self.quiesce().await;
        self.flush_data().await?;
        {
            let mut st = self.state.lock().expect("pool lock");
            let src = Self::id_of(&st, source)?;
            let id = Self::next_id(&st);
            self.push(
                &mut st,
                Record::Snapshot {
                    source: src,
                    id,
                    name: name.into(),
                },
            )?;
        }
        self.commit().await
    }

    /// Creates writable volume `name` from snapshot `snapshot`.
    pub async fn clone_snapshot(&self, snapshot: &str, name: &str) -> Result<(), PoolError> {
        Self::check_name(name)?;
        {
            let mut st = self.state.lock().expect("pool lock");
            let s = Self::id_of(&st, snapshot)?;
            let id = Self::next_id(&st);
            self.push(
                &mut st,
                Record::Clone {
                    snapshot: s,
                    id,
                    name: name.into(),
                },
            )?;
        }
        self.commit().await
    }

    /// Reverts `volume` to `snapshot`'s contents.
    pub async fn revert(&self, volume: &str, snapshot: &str) -> Result<(), PoolError> {
        let _quiet = self.quiesce().await;
        {
            let mut st = self.state.lock().expect("pool lock");
            let v = Self::id_of(&st, volume)?;
            let s = Self::id_of(&st, snapshot)?;
            self.push(
                &mut st,
                Record::Revert {
                    volume: v,
                    snapshot: s,
                },
            )?;
        }
        self.commit().await
    }

    /// Resizes a volume; shrinking requires `force`.
    pub async fn resize(
        self: &Arc<Self>,
        volume: &str,
        size: u64,
        force: bool,
    ) -> Result<(), PoolError> {
        let cs = self.sb.cluster_size as u64;
        let (id, old, thin) = {
            let st = self.state.lock().expect("pool lock");
            let id = Self::id_of(&st, volume)?;
            let v = &st.meta.volumes[&id];
            if v.kind != Kind::Volume {
                return Err(PoolError::Invalid(format!("{volume:?} is a snapshot")));
            }
            (id, v.size, v.thin)
        };
        if size < old && !force {
            return Err(PoolError::Invalid(
                "shrinking loses data; pass force".into(),
            ));
        }
        if size == 0 || !size.is_multiple_of(self.sb.block_size as u64) {
            return Err(PoolError::Invalid("bad size".into()));
        }
        if size < old {
            // The cluster the new end falls in keeps its allocation: zero what lies past the
            // new end, so growing again later reads zeroes there, not the old data.
            let tail_end = size.next_multiple_of(cs).min(old);
            if tail_end > size {
                let vol = PoolVolume {
                    pool: self.clone(),
                    id,
                    name: volume.into(),
                    read_only: false,
                };
                vol.do_zero(
                    IoKind::WriteZeroes,
                    size,
                    tail_end - size,
                    ZeroFlags::default(),
                )
                .await
                .map_err(PoolError::Device)?;
            }
        }
        let _quiet = self.quiesce().await;
        {
            let mut st = self.state.lock().expect("pool lock");
            let (first_new, end) = (old.div_ceil(cs), size.div_ceil(cs));
            if !thin && end > first_new && end - first_new > st.meta.free_count() {
                return Err(PoolError::NoSpace(format!(
                    "growing a thick volume needs {} more clusters",
                    end - first_new
                )));
            }
            self.push(&mut st, Record::Resize { id, size })?;
            if !thin {
                // A thick volume stays fully allocated.
                self.allocate_zeroed(&mut st, id, first_new..end)?;
            }
        }
        self.commit().await
    }

    /// Opens a volume or snapshot (read-only) as a block device.
    pub fn open(self: &Arc<Self>, name: &str) -> Result<Device, PoolError> {
        let st = self.state.lock().expect("pool lock");
        let id = Self::id_of(&st, name)?;
        let read_only = st.meta.volumes[&id].kind == Kind::Snapshot;
        Ok(Arc::new(PoolVolume {
            pool: self.clone(),
            id,
            name: name.into(),
            read_only,
        }))
    }

    /// Maps logical clusters `range` of volume `id` to fresh clusters that read as zeroes
    /// (thick provisioning).
    fn allocate_zeroed(
        &self,
        st: &mut State,
        id: u64,
        range: std::ops::Range<u64>,
    ) -> Result<(), PoolError> {
        for index in range {
            let c = self
                .alloc_locked(st)
                .ok_or_else(|| PoolError::NoSpace("pool is full".into()))?;
            st.reserved.remove(&c);
            self.push(
                st,
                Record::SetMap {
                    id,
                    index,
                    entry: Mapping::Zero(c).encode(),
                },
            )?;
        }
        Ok(())
    }

    /// Picks a free cluster: unreferenced, not freed by an uncommitted record, not reserved.
    fn alloc_locked(&self, st: &mut State) -> Option<u64> {
        let n = st.meta.total_clusters;
        for i in 0..n {
            let c = (st.hint + i) % n;
            if st.meta.refcount(c) == 0
                && !st.freed_pending.contains_key(&c)
                && !st.reserved.contains(&c)
            {
                st.reserved.insert(c);
                st.hint = c + 1;
                return Some(c);
            }
        }
        None
    }

    /// Makes every applied record durable: flushes data, then writes the journal (and a
    /// checkpoint when the journal fills) and flushes again.
    pub async fn commit(&self) -> Result<(), PoolError> {
        // One commit at a time; a commit that finds nothing pending is free.
        std::future::poll_fn(|cx| {
            let mut st = self.state.lock().expect("pool lock");
            if st.committing {
                st.waiters.0.push(cx.waker().clone());
                Poll::Pending
            } else {
                st.committing = true;
                Poll::Ready(())
            }
        })
        .await;
        let r = if self.failed.load(Ordering::Acquire) {
            Err(self.failed_error())
        } else {
            self.commit_inner().await
        };
        let waiters = {
            let mut st = self.state.lock().expect("pool lock");
            st.committing = false;
            std::mem::take(&mut st.waiters.0)
        };
        for w in waiters {
            w.wake();
        }
        r
    }

    async fn commit_inner(&self) -> Result<(), PoolError> {
        // Take the records first, then flush: every record taken describes data whose write
        // completed before the record was pushed, so this flush makes that data durable before
        // any journal block that points at it. (Flushing first would let a write complete
        // between the flush and the take, and its record reach the disk before its data.)
        let blocks = self.sb.journal_bytes / JOURNAL_BLOCK as u64;
        let taken = {
            let mut st = self.state.lock().expect("pool lock");
            if st.pending.is_empty() {
                None
            } else {
                let records = std::mem::take(&mut st.pending);
                let last = st.seq;
                let mut encoded = Vec::new();
                let mut seq = st.durable_seq + 1;
                let mut rest = &records[..];
                while !rest.is_empty() {
                    let (blk, n) = encode_journal_block(seq, rest);
                    encoded.push(blk);
                    seq += n as u64;
                    rest = &rest[n..];
                }
                let start = st.journal_next;
                let end = (start + encoded.len() as u64) % blocks;
                // Past half the ring since the last checkpoint: checkpoint the state as of
                // `last`, replay starting after this commit's blocks. The blocks are written
                // too, so the older checkpoint plus the journal stays a complete fallback.
                let checkpoint = (st.journal_used + encoded.len() as u64 > blocks / 2)
                    .then(|| (encode_checkpoint(&st.meta, last, end), 1 - st.slot));
                Some((encoded, last, start, end, checkpoint))
            }
        };
        let Some((encoded, last_seq, start, end, checkpoint)) = taken else {
            return self.flush_data().await.map_err(PoolError::from);
        };
        // The records are out of `pending`: if they do not reach the disk, later ones cannot
        // follow them in order, so any failure from here on makes the pool read-only.
        let r = self
            .write_journal(&encoded, start, end, checkpoint.as_ref())
            .await;
        if let Err(e) = r {
            self.fail(format!("metadata commit failed ({e})"));
            return Err(self.failed_error());
        }
        let mut st = self.state.lock().expect("pool lock");
        st.journal_next = end;
        match checkpoint {
            Some((_, slot)) => {
                st.slot = slot;
                st.journal_used = 0;
            }
            None => st.journal_used += encoded.len() as u64,
        }
        st.durable_seq = last_seq;
        st.freed_pending.retain(|_, &mut s| s > last_seq);
        Ok(())
    }

    /// Flushes every member device.
    async fn flush_data(&self) -> Result<(), BlockError> {
        let devs = self.layout.read().expect("layout lock").devs.clone();
        if let [only] = &devs[..] {
            return only.flush().await;
        }
        join_all(devs.iter().map(|d| d.flush()).collect()).await
    }

    async fn write_journal(
        &self,
        encoded: &[[u8; JOURNAL_BLOCK]],
        start: u64,
        end: u64,
        checkpoint: Option<&(Vec<u8>, u8)>,
    ) -> Result<(), PoolError> {
        let blocks = self.sb.journal_bytes / JOURNAL_BLOCK as u64;
        self.flush_data().await?;
        let jstart = CHECKPOINT_START + 2 * self.sb.checkpoint_bytes;
        let mut pos = start;
        for blk in encoded {
            write_at(&self.dev, jstart + pos * JOURNAL_BLOCK as u64, blk).await?;
            pos = (pos + 1) % blocks;
        }
        // The block after the tail must not look like a continuation from an older lap.
        write_at(
            &self.dev,
            jstart + end * JOURNAL_BLOCK as u64,
            &[0u8; JOURNAL_BLOCK],
        )
        .await?;
        if let Some((bytes, slot)) = checkpoint {
            if bytes.len() as u64 > self.sb.checkpoint_bytes {
                return Err(PoolError::NoSpace(
                    "metadata does not fit its checkpoint slot".into(),
                ));
            }
            // The journal blocks must be durable before the checkpoint that skips them.
            self.dev.flush().await?;
            write_at(
                &self.dev,
                CHECKPOINT_START + *slot as u64 * self.sb.checkpoint_bytes,
                bytes,
            )
            .await?;
        }
        self.dev.flush().await?;
        Ok(())
    }

    /// Whether metadata changes are waiting for a commit.
    pub fn has_pending(&self) -> bool {
        !self.state.lock().expect("pool lock").pending.is_empty()
    }

    fn wake_all(&self) {
        let waiters = std::mem::take(&mut self.state.lock().expect("pool lock").waiters.0);
        for w in waiters {
            w.wake();
        }
    }

    /// Waits until no metadata operation holds writes off.
    async fn gate_open(&self) {
        std::future::poll_fn(|cx| {
            let mut st = self.state.lock().expect("pool lock");
            if self.gate.load(Ordering::SeqCst) {
                st.waiters.0.push(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    /// Registers a volume write; waits while a snapshot, revert, delete or resize drains.
    async fn enter_write(&self) -> WriteGuard<'_> {
        loop {
            if !self.gate.load(Ordering::SeqCst) {
                self.writes.fetch_add(1, Ordering::SeqCst);
                if !self.gate.load(Ordering::SeqCst) {
                    return WriteGuard(self);
                }
                drop(WriteGuard(self)); // backs out, waking the drainer if last
            }
            self.gate_open().await;
        }
    }

    /// Holds new writes off and waits for those in flight to complete: a write that is in
    /// flight while a cluster becomes shared (snapshot) or freed (revert, delete, shrink)
    /// could otherwise land in the shared or reused cluster after the map changed.
    async fn quiesce(&self) -> GateGuard<'_> {
        while self.gate.swap(true, Ordering::SeqCst) {
            self.gate_open().await;
        }
        let guard = GateGuard(self);
        std::future::poll_fn(|cx| {
            let mut st = self.state.lock().expect("pool lock");
            if self.writes.load(Ordering::SeqCst) == 0 {
                Poll::Ready(())
            } else {
                st.waiters.0.push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        guard
    }

    fn layout(&self) -> Arc<Layout> {
        self.layout.read().expect("layout lock").clone()
    }

    /// The member device and byte offset of cluster `c`.
    fn locate(&self, c: u64) -> (Device, u64) {
        let l = self.layout.read().expect("layout lock");
        let (d, off) = l.locate(c);
        (d.clone(), off)
    }

    /// Takes the right to rewrite the superblocks.
    fn admin(&self) -> Result<FlagGuard<'_>, PoolError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(self.failed_error());
        }
        if self.admin.swap(true, Ordering::AcqRel) {
            return Err(PoolError::Invalid(
                "another grow or label change of this pool is in progress".into(),
            ));
        }
        Ok(FlagGuard(&self.admin))
    }

    /// Writes `sb` (next generation) to every member in `devs`, copy A everywhere then copy B.
    async fn rewrite_superblocks(&self, devs: &[Device], sb: &Superblock) -> Result<(), PoolError> {
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
        let mut devs = self.layout.read().expect("layout lock").devs.clone();
        if devs.len() + new_devices.len() > MAX_DEVICES {
            return Err(PoolError::Invalid(format!(
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
                return Err(PoolError::Invalid(format!(
                    "a device with {}-byte blocks cannot join a pool of {}-byte blocks",
                    g.block_size, self.sb.block_size
                )));
            }
            if size < 2 * cs {
                return Err(PoolError::NoSpace(format!(
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
            return Err(PoolError::NoSpace(format!(
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
        *self.layout.write().expect("layout lock") = layout;
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
                    check_label(k, v).map_err(|w| PoolError::Invalid(w.into()))?;
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
            return Err(PoolError::NoSpace(format!(
                "labels take at most {LABEL_BYTES} bytes (as key=value lines)"
            )));
        }
        sb.generation += 1;
        let devs = self.layout.read().expect("layout lock").devs.clone();
        self.rewrite_superblocks(&devs, &sb).await
    }
}

/// Reads both superblock copies of `dev`: the chosen copy and what was wrong with each, or
/// why neither is usable.
#[allow(clippy::type_complexity)]
pub async fn read_superblock(
    dev: &Device,
) -> Result<
    Result<
        (Superblock, [Option<crate::superblock::SuperblockError>; 2]),
        [crate::superblock::SuperblockError; 2],
    >,
    BlockError,
> {
    let bs = dev.geometry().block_size.max(1) as usize;
    let len = (2 * SUPERBLOCK_SIZE).next_multiple_of(bs);
    if dev.geometry().size() < len as u64 {
        use crate::superblock::SuperblockError::NotAPool;
        return Ok(Err([NotAPool, NotAPool]));
    }
    let buf = read_at(dev, 0, len).await?;
    Ok(Superblock::choose(
        &buf[..SUPERBLOCK_SIZE],
        &buf[SUPERBLOCK_SIZE..2 * SUPERBLOCK_SIZE],
    ))
}

/// Writes both copies of `sb` to the members, in `order`: copy A on each, flush all, then
/// copy B on each, flush all — so every member always has one whole copy.
async fn write_superblocks(
    devs: &[Device],
    sb: &Superblock,
    order: &[usize],
) -> Result<(), BlockError> {
    for at in [0, SUPERBLOCK_SIZE as u64] {
        for &i in order {
            write_at(&devs[i], at, &sb.for_member(i as u32).encode()).await?;
        }
        for &i in order {
            devs[i].flush().await?;
        }
    }
    Ok(())
}

type PieceFuture<'a> = reactor::sync::BoxFuture<'a, Result<(), BlockError>>;

/// Runs every future to completion concurrently; the first error, if any.
async fn join_all(futs: Vec<PieceFuture<'_>>) -> Result<(), BlockError> {
    reactor::sync::join_all(futs).await.into_iter().collect()
}

/// A volume or snapshot of a pool, as a block device.
pub struct PoolVolume {
    pool: Arc<Pool>,
    id: u64,
    name: String,
    read_only: bool,
}

impl std::fmt::Debug for PoolVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolVolume")
            .field("name", &self.name)
            .finish()
    }
}

struct BusyGuard<'a> {
    pool: &'a Pool,
    key: (u64, u64),
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        let waiters = {
            let mut st = self.pool.state.lock().expect("pool lock");
            st.busy.remove(&self.key);
            std::mem::take(&mut st.waiters.0)
        };
        for w in waiters {
            w.wake();
        }
    }
}

impl PoolVolume {
    fn size(&self) -> u64 {
        let st = self.pool.state.lock().expect("pool lock");
        st.meta.volumes.get(&self.id).map(|v| v.size).unwrap_or(0)
    }

    /// The volume's size and logical cluster `index`'s mapping and reference count, under one
    /// lock.
    fn probe(&self, index: u64) -> Result<(u64, Mapping, u32), BlockError> {
        let st = self.pool.state.lock().expect("pool lock");
        let v = st
            .meta
            .volumes
            .get(&self.id)
            .ok_or_else(|| BlockError::new(ErrorKind::Gone, IoKind::Read, 0, 0))?;
        let m = Mapping::decode(v.map.get(index as usize).copied().unwrap_or(0));
        let rc = m.cluster().map(|c| st.meta.refcount(c)).unwrap_or(0);
        Ok((v.size, m, rc))
    }

    /// Logical cluster `index`'s mapping and reference count.
    fn mapping(&self, index: u64) -> Result<(Mapping, u32), BlockError> {
        self.probe(index).map(|(_, m, rc)| (m, rc))
    }

    /// The logical cluster and offset within it, when `[offset, offset+len)` is non-empty
    /// and inside one cluster.
    fn single_cluster(&self, offset: u64, len: u64) -> Option<(u64, u64)> {
        let cs = self.pool.sb.cluster_size as u64;
        let last = offset.checked_add(len)?.checked_sub(1)?;
        (len > 0 && offset / cs == last / cs).then_some((offset / cs, offset % cs))
    }

    fn geometry_for(&self, size: u64) -> Geometry {
        let bs = self.pool.sb.block_size;
        Geometry {
            block_size: bs,
            num_blocks: size / bs as u64,
            optimal_io: self.pool.sb.cluster_size,
            max_io: 32 << 20,
        }
    }

    async fn lock_cluster(&self, index: u64) -> BusyGuard<'_> {
        let key = (self.id, index);
        std::future::poll_fn(|cx| {
            let mut st = self.pool.state.lock().expect("pool lock");
            if st.busy.contains(&key) {
                st.waiters.0.push(cx.waker().clone());
                Poll::Pending
            } else {
                st.busy.insert(key);
                Poll::Ready(())
            }
        })
        .await;
        BusyGuard {
            pool: &self.pool,
            key,
        }
    }

    fn pieces(&self, offset: u64, len: u64) -> Vec<(u64, u64, u64, u64)> {
        // (logical cluster, offset within cluster, offset within request, length)
        let cs = self.pool.sb.cluster_size as u64;
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < offset + len {
            let n = (cs - pos % cs).min(offset + len - pos);
            out.push((pos / cs, pos % cs, pos - offset, n));
            pos += n;
        }
        out
    }

    async fn do_read(&self, offset: u64, mut buf: IoBuf) -> Result<IoBuf, BlockError> {
        let len = buf.len() as u64;
        if let Some((index, within)) = self.single_cluster(offset, len) {
            // Fast path: one cluster, one lock, read straight into the caller's buffer.
            let (size, m, _) = self.probe(index)?;
            check_range(&self.geometry_for(size), IoKind::Read, offset, len)?;
            if let Mapping::Data(c) = m {
                let (dev, off) = self.pool.locate(c);
                return dev.read(off + within, buf).await;
            }
        }
        check_range(&self.geometry(), IoKind::Read, offset, len)?;
        // Allocated clusters that lie next to each other on one member are read as one run;
        // runs are read concurrently. A request that is one run reads straight into `buf`.
        let layout = self.pool.layout();
        let mut runs: Vec<Run> = Vec::new();
        {
            let st = self.pool.state.lock().expect("pool lock");
            let v = st
                .meta
                .volumes
                .get(&self.id)
                .ok_or_else(|| BlockError::new(ErrorKind::Gone, IoKind::Read, offset, len))?;
            for (index, within, at, n) in self.pieces(offset, len) {
                let (at, n) = (at as usize, n as usize);
                match Mapping::decode(v.map.get(index as usize).copied().unwrap_or(0)) {
                    Mapping::Hole | Mapping::Zero(_) => buf[at..at + n].fill(0),
                    Mapping::Data(c) => {
                        let (member, off) = layout.locate_member(c);
                        push_run(&mut runs, at, n, member, off + within);
                    }
                }
            }
        }
        if let [r] = &runs[..]
            && r.len == buf.len()
        {
            return layout.devs[r.member].read(r.dev_off, buf).await;
        }
        let parts: Vec<blockdev::IoFuture<'_, IoBuf>> = runs
            .iter()
            .map(|r| layout.devs[r.member].read(r.dev_off, IoBuf::recycled(r.len)))
            .collect();
        let parts: Vec<IoBuf> = reactor::sync::join_all(parts)
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        for (r, part) in runs.iter().zip(parts) {
            buf[r.at..r.at + r.len].copy_from_slice(&part);
        }
        Ok(buf)
    }

    /// Where the whole of `[offset, offset+len)` lies when every cluster of it is owned by
    /// this volume alone and they are contiguous on one member: (member, byte offset).
    fn owned_run(&self, layout: &Layout, offset: u64, len: u64) -> Option<(usize, u64)> {
        let st = self.pool.state.lock().expect("pool lock");
        let v = st.meta.volumes.get(&self.id)?;
        let mut runs: Vec<Run> = Vec::new();
        for (index, within, at, n) in self.pieces(offset, len) {
            match Mapping::decode(v.map.get(index as usize).copied().unwrap_or(0)) {
                Mapping::Data(c) if st.meta.refcount(c) == 1 => {
                    let (member, off) = layout.locate_member(c);
                    push_run(&mut runs, at as usize, n as usize, member, off + within);
                }
                _ => return None,
            }
            if runs.len() > 1 {
                return None;
            }
        }
        runs.first().map(|r| (r.member, r.dev_off))
    }

    /// Writes one piece inside logical cluster `index`.
    async fn write_piece(
        &self,
        index: u64,
        within: u64,
        data: &[u8],
        fua: bool,
    ) -> Result<(), BlockError> {
        let cs = self.pool.sb.cluster_size as u64;
        let err = |k| BlockError::new(k, IoKind::Write, index * cs + within, data.len() as u64);
        let in_place = |c: u64| async move {
            let (dev, off) = self.pool.locate(c);
            dev.write(off + within, IoBuf::from_slice(data), WriteFlags { fua })
                .await
                .map(drop)
        };
        if let (Mapping::Data(c), 1) = self.mapping(index)? {
            // Owned cluster: in place.
            return in_place(c).await;
        }
        let _guard = self.lock_cluster(index).await;
        // Re-read the mapping: another writer may have allocated it meanwhile.
        let (m, rc) = self.mapping(index)?;
        if let (Mapping::Data(c), 1) = (m, rc) {
            return in_place(c).await;
        }
        // Build the whole new cluster: the old contents (zeroes, or the shared cluster's data
        // for copy-on-write) with the new piece on top.
        let mut full = match m {
            Mapping::Data(old) if data.len() as u64 != cs => {
                let (dev, off) = self.pool.locate(old);
                dev.read(off, IoBuf::zeroed(cs as usize)).await?
            }
            _ => IoBuf::zeroed(cs as usize),
        };
        full[within as usize..within as usize + data.len()].copy_from_slice(data);
        // A zero cluster we own is reused; otherwise allocate.
        let target = match (m, rc) {
            (Mapping::Zero(c), 1) => c,
            _ => {
                let mut st = self.pool.state.lock().expect("pool lock");
                self.pool
                    .alloc_locked(&mut st)
                    .ok_or_else(|| err(ErrorKind::NoSpace))?
            }
        };
        let (dev, off) = self.pool.locate(target);
        let r = dev.write(off, full, WriteFlags { fua }).await;
        let mut st = self.pool.state.lock().expect("pool lock");
        st.reserved.remove(&target);
        r?;
        self.pool
            .push(
                &mut st,
                Record::SetMap {
                    id: self.id,
                    index,
                    entry: Mapping::Data(target).encode(),
                },
            )
            .map_err(|_| err(ErrorKind::Gone))?;
        Ok(())
    }

    async fn do_write(
        &self,
        offset: u64,
        buf: IoBuf,
        flags: WriteFlags,
    ) -> Result<IoBuf, BlockError> {
        if self.read_only {
            return Err(BlockError::new(
                ErrorKind::ReadOnly,
                IoKind::Write,
                offset,
                buf.len() as u64,
            ));
        }
        if self.pool.failed.load(Ordering::Relaxed) {
            // The metadata cannot be made durable any more: refuse rather than acknowledge.
            return Err(BlockError::new(
                ErrorKind::Io,
                IoKind::Write,
                offset,
                buf.len() as u64,
            ));
        }
        let len = buf.len() as u64;
        if let Some((index, within)) = self.single_cluster(offset, len) {
            // Fast path: one cluster this volume owns alone, written in place from the
            // caller's buffer (one lock for the size check and the lookup).
            let (size, m, rc) = self.probe(index)?;
            check_range(&self.geometry_for(size), IoKind::Write, offset, len)?;
            if let (Mapping::Data(c), 1) = (m, rc) {
                let (dev, off) = self.pool.locate(c);
                let buf = dev.write(off + within, buf, flags).await?;
                // FUA promises the data survives a crash, so the mapping that leads to it
                // must too: commit if any metadata is still pending.
                if flags.fua && self.pool.has_pending() {
                    self.pool
                        .commit()
                        .await
                        .map_err(|_| BlockError::new(ErrorKind::Io, IoKind::Write, offset, len))?;
                }
                return Ok(buf);
            }
        }
        check_range(&self.geometry(), IoKind::Write, offset, len)?;
        // Clusters this volume owns, contiguous on one member: one write, in place.
        let layout = self.pool.layout();
        if let Some((member, off)) = self.owned_run(&layout, offset, len) {
            let buf = layout.devs[member].write(off, buf, flags).await?;
            if flags.fua && self.pool.has_pending() {
                self.pool
                    .commit()
                    .await
                    .map_err(|_| BlockError::new(ErrorKind::Io, IoKind::Write, offset, len))?;
            }
            return Ok(buf);
        }
        let pieces = self.pieces(offset, len);
        // Clusters are independent: write them concurrently (a 1 MiB write spans 8 clusters).
        let writes: Vec<PieceFuture<'_>> = pieces
            .iter()
            .map(|&(index, within, at, n)| {
                Box::pin(self.write_piece(
                    index,
                    within,
                    &buf[at as usize..(at + n) as usize],
                    false,
                )) as PieceFuture<'_>
            })
            .collect();
        join_all(writes).await?;
        if flags.fua {
            self.pool.commit().await.map_err(|_| {
                BlockError::new(ErrorKind::Io, IoKind::Write, offset, buf.len() as u64)
            })?;
        }
        Ok(buf)
    }

    async fn do_zero(
        &self,
        op: IoKind,
        offset: u64,
        len: u64,
        flags: ZeroFlags,
    ) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::new(ErrorKind::ReadOnly, op, offset, len));
        }
        if self.pool.failed.load(Ordering::Relaxed) {
            return Err(BlockError::new(ErrorKind::Io, op, offset, len));
        }
        check_range(&self.geometry(), op, offset, len)?;
        let cs = self.pool.sb.cluster_size as u64;
        for (index, within, _, n) in self.pieces(offset, len) {
            if within == 0 && n == cs {
                let _g = self.lock_cluster(index).await;
                let mut st = self.pool.state.lock().expect("pool lock");
                let v = &st.meta.volumes[&self.id];
                let cur = Mapping::decode(v.map[index as usize]);
                let thin = v.thin;
                let rc = cur.cluster().map(|c| st.meta.refcount(c)).unwrap_or(0);
                let entry = match cur {
                    Mapping::Hole => continue,
                    // Keep a thick volume's (or a no-unmap request's) allocation, owned.
                    Mapping::Data(c) | Mapping::Zero(c)
                        if (!thin || !flags.may_unmap) && rc == 1 =>
                    {
                        Mapping::Zero(c)
                    }
                    _ => Mapping::Hole,
                };
                self.pool
                    .push(
                        &mut st,
                        Record::SetMap {
                            id: self.id,
                            index,
                            entry: entry.encode(),
                        },
                    )
                    .map_err(|_| BlockError::new(ErrorKind::Gone, op, offset, len))?;
            } else {
                let (m, _) = self.mapping(index)?;
                if matches!(m, Mapping::Data(_)) {
                    self.write_piece(index, within, &vec![0u8; n as usize], false)
                        .await?;
                }
            }
        }
        if flags.fua {
            self.pool
                .commit()
                .await
                .map_err(|_| BlockError::new(ErrorKind::Io, op, offset, len))?;
        }
        Ok(())
    }

    fn do_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, BlockError> {
        check_range(&self.geometry(), IoKind::BlockStatus, offset, len)?;
        let mut out: Vec<Extent> = Vec::new();
        for (index, _, at, n) in self.pieces(offset, len) {
            let (m, _) = self.mapping(index)?;
            let state = match m {
                Mapping::Hole => ExtentState::Hole,
                Mapping::Zero(_) => ExtentState::Zero,
                Mapping::Data(_) => ExtentState::Data,
            };
            match out.last_mut() {
                Some(l) if l.state == state => l.len += n,
                _ => out.push(Extent {
                    offset: offset + at,
                    len: n,
                    state,
                }),
            }
        }
        Ok(out)
    }
}

impl BlockDevice for PoolVolume {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "pool-volume"
    }
    fn geometry(&self) -> Geometry {
        self.geometry_for(self.size())
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            flush: true,
            fua: true,
            unmap: !self.read_only,
            write_zeroes: !self.read_only,
            fast_zero: !self.read_only,
            block_status: true,
            read_only: self.read_only,
            rotational: false,
        }
    }
    fn read(&self, offset: u64, buf: IoBuf) -> IoFuture<'_, IoBuf> {
        Box::pin(self.do_read(offset, buf))
    }
    fn write(&self, offset: u64, buf: IoBuf, flags: WriteFlags) -> IoFuture<'_, IoBuf> {
        Box::pin(async move {
            let _w = self.pool.enter_write().await;
            self.do_write(offset, buf, flags).await
        })
    }
    fn flush(&self) -> IoFuture<'_, ()> {
        Box::pin(async move {
            self.pool
                .commit()
                .await
                .map_err(|_| BlockError::new(ErrorKind::Io, IoKind::Flush, 0, 0))
        })
    }
    fn unmap(&self, offset: u64, len: u64) -> IoFuture<'_, ()> {
        Box::pin(async move {
            let _w = self.pool.enter_write().await;
            let flags = ZeroFlags {
                may_unmap: true,
                ..ZeroFlags::default()
            };
            self.do_zero(IoKind::Unmap, offset, len, flags).await
        })
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> IoFuture<'_, ()> {
        Box::pin(async move {
            let _w = self.pool.enter_write().await;
            self.do_zero(IoKind::WriteZeroes, offset, len, flags).await
        })
    }
    fn block_status(&self, offset: u64, len: u64) -> IoFuture<'_, Vec<Extent>> {
        Box::pin(std::future::ready(self.do_status(offset, len)))
    }
}
