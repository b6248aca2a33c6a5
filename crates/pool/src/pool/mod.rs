//! A pool on one device or several: the shared state, the metadata queries, and the gate
//! that holds volume writes off while an existing map changes. The rest is split by seam:
//!
//! - `lifecycle`: formatting, import (superblocks, checkpoint, journal replay), wipe, grow
//!   and labels — what happens to the pool as a whole;
//! - `commit`: making applied metadata records durable (journal, checkpoints);
//! - `volumes`: creating, deleting, snapshotting, cloning, reverting and resizing volumes,
//!   and cluster allocation;
//! - `io`: a volume or snapshot as a block device ([`PoolVolume`]): reads, in-place and
//!   copy-on-write writes, write-zeroes, block status.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use blockdev::{BlockError, Device, IoBuf, WriteFlags};

use crate::meta::{Kind, Mapping, Meta, Record};
use crate::superblock::{SUPERBLOCK_SIZE, Segment, Superblock};

pub use crate::error::{PoolError, PoolErrorKind};

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
    /// Where clusters live. Under this lock with the maps, so the I/O path finds a cluster's
    /// mapping and its place on a member in one lock; replaced whole by a grow.
    layout: Arc<Layout>,
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
    state: Mutex<State>,
    /// The sequence number of the last record applied (`State::seq`) and of the last durable
    /// one (`State::durable_seq`), readable without the lock: a FUA write finds out whether
    /// it must commit without taking it.
    applied: AtomicU64,
    durable: AtomicU64,
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
        PoolError::new(
            PoolErrorKind::ReadOnly,
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

    /// The member devices, in order.
    fn devices(&self) -> Vec<Device> {
        self.state.lock().expect("pool lock").layout.devs.clone()
    }

    /// The member device and byte offset of cluster `c`.
    fn locate(&self, c: u64) -> (Device, u64) {
        let st = self.state.lock().expect("pool lock");
        let (d, off) = st.layout.locate(c);
        (d.clone(), off)
    }

    /// Whether some applied metadata is not durable yet (pending, or being committed).
    fn not_durable(&self) -> bool {
        self.applied.load(Ordering::Acquire) > self.durable.load(Ordering::Acquire)
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

mod commit;
mod io;
mod lifecycle;
mod volumes;

pub use io::PoolVolume;
