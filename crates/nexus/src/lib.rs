//! The nexus: a volume's controller. It presents one block device over N children (local pool
//! volumes, remote replicas over NVMe/TCP or NBD — any [`blockdev::BlockDevice`]) and keeps
//! them identical:
//!
//! - writes, flushes, unmaps and write-zeroes go to every child that is online or rebuilding
//!   and complete when all have; a child that fails or times out is retired (faulted, with the
//!   reason) and the I/O completes on the others;
//! - reads go to one online child, the one with the fewest I/Os outstanding; a failed read is
//!   retried on another child;
//! - with no online child left, I/O is held for [`NexusOptions::hold_timeout`] and resumes if
//!   a child comes back;
//! - while any child is away, the [dirty-region log](drl) records what is written, durably
//!   before the write is acknowledged, so the child copies only those regions when it returns
//!   (partial rebuild); a new child copies everything, skipping holes ([`rebuild`]).
//!
//! Rebuilds copy in segments under range locks ([`locks`]): a segment being copied excludes
//! application writes to it, which otherwise go to the rebuilding child as well.
//!
//! With [`NexusOptions::health`] the healthy set is published as [`health::HealthRecord`]s
//! for the control plane to store, and a write a retired child missed is not acknowledged
//! before the record without that child is stored ([`health`]).

#![forbid(unsafe_code)]

pub mod drl;
pub mod health;
pub mod locks;
pub mod rebuild;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blockdev::{
    BlockDevice, BlockError, Capabilities, Device, ErrorKind, Extent, Geometry, IoBuf, IoFuture,
    IoKind, WriteFlags, ZeroFlags, check_range,
};

use crate::drl::Drl;
use crate::health::{Health, HealthRecord, HealthSink, HealthState, HealthStatus};
use crate::locks::RangeLocks;

/// Tunables of a nexus.
#[derive(Clone)]
pub struct NexusOptions {
    /// A child I/O not completed within this time retires the child.
    pub io_timeout: Duration,
    /// How long I/O is held when no child is online before it fails.
    pub hold_timeout: Duration,
    /// Bytes per dirty-region-log bit.
    pub region_size: u64,
    /// Bytes copied per rebuild step (one range lock).
    pub rebuild_segment: u64,
    /// Rebuild rate limit in bytes per second (`None`: as fast as the children go).
    pub rebuild_rate: Option<u64>,
    /// This incarnation's epoch: children that can fence (NVMe/TCP, with reservations) are
    /// claimed under it when they join, so an older incarnation's writes to them fail from
    /// then on. `None`: no fencing.
    pub epoch: Option<u64>,
    /// Health persistence: every change of the healthy set is published to this sink as a
    /// [`HealthRecord`], and a write that a retired child missed is acknowledged only once
    /// the sink confirms the record without that child stored (held up to
    /// [`NexusOptions::hold_timeout`], then EIO). `None` (the default): off.
    pub health: Option<Arc<dyn HealthSink>>,
    /// Generation of the previous incarnation's last stored record (0: none): this
    /// incarnation's records continue after it.
    pub health_generation: u64,
    /// The previous incarnation did not close cleanly (its last record says `clean: false`,
    /// or there is none): the children given healthy may differ in the writes that were in
    /// flight at the crash. The first of them that is in sync becomes the only online child
    /// and the others are rebuilt from it — fully, or only the dirty regions when the log
    /// covers them.
    pub unclean_shutdown: bool,
}

impl Default for NexusOptions {
    fn default() -> Self {
        NexusOptions {
            io_timeout: Duration::from_secs(30),
            hold_timeout: Duration::from_secs(30),
            region_size: 1 << 20,
            rebuild_segment: 1 << 20,
            rebuild_rate: None,
            epoch: None,
            health: None,
            health_generation: 0,
            unclean_shutdown: false,
        }
    }
}

impl std::fmt::Debug for NexusOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NexusOptions")
            .field("io_timeout", &self.io_timeout)
            .field("hold_timeout", &self.hold_timeout)
            .field("region_size", &self.region_size)
            .field("rebuild_segment", &self.rebuild_segment)
            .field("rebuild_rate", &self.rebuild_rate)
            .field("epoch", &self.epoch)
            .field("health", &self.health.is_some())
            .field("health_generation", &self.health_generation)
            .field("unclean_shutdown", &self.unclean_shutdown)
            .finish()
    }
}

/// Why a nexus operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum NexusError {
    /// Bad arguments (sizes, names).
    Invalid(String),
    /// No such child.
    NotFound(String),
    /// A device failed.
    Device(BlockError),
}

impl std::fmt::Display for NexusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NexusError::Invalid(w) => write!(f, "{w}"),
            NexusError::NotFound(c) => write!(f, "no child {c:?}"),
            NexusError::Device(e) => write!(f, "device error: {e}"),
        }
    }
}

impl std::error::Error for NexusError {}

impl From<BlockError> for NexusError {
    fn from(e: BlockError) -> Self {
        NexusError::Device(e)
    }
}

/// A child's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChildState {
    /// In sync: written and read.
    Online,
    /// Being brought in sync: written (new writes), not read.
    Rebuilding {
        /// Bytes copied or skipped so far.
        done: u64,
        /// Bytes to go through (the volume, or the dirty regions).
        total: u64,
        /// Only the dirty regions are copied.
        partial: bool,
    },
    /// Out of sync and waiting for a rebuild.
    OutOfSync,
    /// Retired: neither written nor read.
    Faulted {
        /// Why.
        reason: String,
    },
}

/// The nexus's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NexusState {
    /// Every child online.
    Online,
    /// Some child online, some not.
    Degraded,
    /// No child online: I/O is held, then fails.
    Faulted,
}

/// A child as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildStatus {
    /// Name (its URI, or the engine device name).
    pub name: String,
    /// State.
    pub state: ChildState,
    /// I/Os outstanding.
    pub inflight: usize,
}

/// One child.
struct Child {
    name: String,
    dev: Device,
    state: Mutex<ChildState>,
    inflight: AtomicUsize,
}

impl std::fmt::Debug for Child {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Child").field("name", &self.name).finish()
    }
}

impl Child {
    fn from_spec(c: ChildSpec) -> Arc<Child> {
        Arc::new(Child {
            name: c.name,
            dev: c.dev,
            state: Mutex::new(if c.healthy {
                ChildState::Online
            } else {
                ChildState::OutOfSync
            }),
            inflight: AtomicUsize::new(0),
        })
    }
    fn state(&self) -> ChildState {
        self.state.lock().expect("child state").clone()
    }
    fn online(&self) -> bool {
        matches!(*self.state.lock().expect("child state"), ChildState::Online)
    }
    /// Online or rebuilding: receives writes.
    fn writable(&self) -> bool {
        matches!(
            *self.state.lock().expect("child state"),
            ChildState::Online | ChildState::Rebuilding { .. }
        )
    }
}

/// Counts an application I/O in the nexus while it lives.
struct Active<'a>(&'a AtomicUsize);
impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts an I/O outstanding on a child while it lives.
struct Inflight<'a>(&'a Child);
impl<'a> Inflight<'a> {
    fn new(c: &'a Child) -> Self {
        c.inflight.fetch_add(1, Ordering::Relaxed);
        Inflight(c)
    }
}
impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a child operation does, so a write fan-out can give each child its own buffer.
#[derive(Clone, Copy)]
enum WriteOp {
    Write(WriteFlags),
    Zeroes(ZeroFlags),
    Unmap,
    Flush,
}

impl WriteOp {
    fn kind(self) -> IoKind {
        match self {
            WriteOp::Write(_) => IoKind::Write,
            WriteOp::Zeroes(_) => IoKind::WriteZeroes,
            WriteOp::Unmap => IoKind::Unmap,
            WriteOp::Flush => IoKind::Flush,
        }
    }
}

/// The volume controller.
pub struct Nexus {
    name: String,
    size: u64,
    block_size: u32,
    max_io: u32,
    caps: Capabilities,
    opts: NexusOptions,
    children: Mutex<Vec<Arc<Child>>>,
    drl: Drl,
    locks: RangeLocks,
    /// Bumped whenever a child's state changes (rebuild loops notice removals).
    epoch: AtomicU64,
    /// The children that were online when the last online one was lost: they hold every
    /// acknowledged write, so one that answers again may come back online without a rebuild.
    last_online: Mutex<Vec<String>>,
    /// A newer incarnation fenced this one out: every write fails.
    fenced: AtomicBool,
    /// Health persistence, when on.
    health: Option<Health>,
    /// Closed ([`Nexus::close`]): new I/O fails.
    closed: AtomicBool,
    /// Application I/Os in the nexus.
    active: AtomicUsize,
}

impl std::fmt::Debug for Nexus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nexus").field("name", &self.name).finish()
    }
}

/// A child given at creation.
pub struct ChildSpec {
    /// Name.
    pub name: String,
    /// The device.
    pub dev: Device,
    /// Recorded in sync (by the control plane) when the nexus last ran: it may serve reads
    /// and be a rebuild source. Others start out of sync.
    pub healthy: bool,
}

impl std::fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildSpec")
            .field("name", &self.name)
            .field("healthy", &self.healthy)
            .finish()
    }
}

/// Checks what a nexus is created over: at least one child, one recorded healthy, no name
/// twice, every child large enough for `size`, which must be a multiple of the largest
/// block size. Returns that block size.
fn check_children(size: u64, children: &[ChildSpec]) -> Result<u32, NexusError> {
    if children.is_empty() {
        return Err(NexusError::Invalid(
            "a nexus needs at least one child".into(),
        ));
    }
    if !children.iter().any(|c| c.healthy) {
        return Err(NexusError::Invalid(
            "no child is recorded healthy: none can be the source of the others".into(),
        ));
    }
    for (i, c) in children.iter().enumerate() {
        if children[..i].iter().any(|o| o.name == c.name) {
            return Err(NexusError::Invalid(format!(
                "child {:?} given twice",
                c.name
            )));
        }
    }
    let block_size = children
        .iter()
        .map(|c| c.dev.geometry().block_size)
        .max()
        .unwrap_or(512);
    if size == 0 || !size.is_multiple_of(block_size as u64) {
        return Err(NexusError::Invalid(format!(
            "size must be a non-zero multiple of {block_size}"
        )));
    }
    for c in children {
        let have = c.dev.geometry().size();
        if have < size {
            return Err(NexusError::Invalid(format!(
                "child {:?} has {have} bytes, the nexus needs {size}",
                c.name
            )));
        }
    }
    Ok(block_size)
}

/// What the nexus offers: flush, FUA and block status always; unmap and write-zeroes when
/// every child has them.
fn combined_capabilities(children: &[ChildSpec]) -> Capabilities {
    children
        .iter()
        .map(|c| c.dev.capabilities())
        .fold(Capabilities::default(), |a, c| Capabilities {
            flush: true,
            fua: true,
            unmap: c.unmap && (a.unmap || a == Capabilities::default()),
            write_zeroes: c.write_zeroes && (a.write_zeroes || a == Capabilities::default()),
            fast_zero: false,
            block_status: true,
            read_only: false,
            rotational: false,
        })
}

impl Nexus {
    /// A nexus of `size` bytes over `children`, with its dirty-region log on `drl_store`
    /// (`None`: memory only, so it does not survive a restart). At least one child must be
    /// healthy. Children not healthy are out of sync: [`Nexus::rebuild_pending`] (or
    /// [`Nexus::rebuild_child`]) brings them in — partially when the loaded log covers them
    /// (they left this nexus and every write since was logged), else fully.
    pub async fn create(
        name: &str,
        size: u64,
        children: Vec<ChildSpec>,
        drl_store: Option<Device>,
        opts: NexusOptions,
    ) -> Result<Arc<Nexus>, NexusError> {
        let block_size = check_children(size, &children)?;
        let caps = combined_capabilities(&children);
        let max_io = children
            .iter()
            .map(|c| c.dev.geometry().max_io)
            .min()
            .unwrap_or(1 << 20)
            .max(block_size);
        let drl = Drl::new(size, opts.region_size, drl_store);
        drl.load().await?;
        let health = opts.health.clone().map(|sink| Health {
            sink,
            st: Mutex::new(HealthState {
                generation: opts.health_generation,
                ..HealthState::default()
            }),
            required: AtomicU64::new(0),
            confirmed: AtomicU64::new(opts.health_generation),
        });
        let nexus = Nexus {
            name: name.to_string(),
            size,
            block_size,
            max_io,
            caps,
            opts,
            children: Mutex::new(children.into_iter().map(Child::from_spec).collect()),
            drl,
            locks: RangeLocks::default(),
            epoch: AtomicU64::new(0),
            last_online: Mutex::new(Vec::new()),
            fenced: AtomicBool::new(false),
            health,
            closed: AtomicBool::new(false),
            active: AtomicUsize::new(0),
        };
        nexus.claim_children().await?;
        nexus.settle_sources()?;
        nexus.drl.save().await?;
        nexus.publish_first_record();
        Ok(Arc::new(nexus))
    }

    /// Claims every child for this incarnation before anything is written; a child that
    /// cannot be claimed is faulted. Fails when no child in sync is left.
    async fn claim_children(&self) -> Result<(), NexusError> {
        for c in self.snapshot() {
            if let Err(e) = self.fence_child(&c).await {
                *c.state.lock().expect("child state") = ChildState::Faulted {
                    reason: format!("fencing failed: {e}"),
                };
            }
        }
        if !self.snapshot().iter().any(|c| c.online()) {
            return Err(NexusError::Invalid(
                "no child in sync could be fenced for this incarnation".into(),
            ));
        }
        Ok(())
    }

    /// Decides which children may be read from: not those the log records as away, and
    /// after an unclean shutdown only the first healthy one until the others are rebuilt.
    fn settle_sources(&self) -> Result<(), NexusError> {
        // An out-of-sync child the loaded log covers copies only the dirty regions; one it
        // does not cover (never in this nexus, or the log was lost) needs a full copy, so it
        // must not be added now: the log would only know the writes from now on.
        // The log is the durable record of who is out of sync: it is saved before any write
        // that a retired child missed is acknowledged. A child it lists as away is never
        // taken as healthy, whatever the caller says, so it is never a rebuild source.
        for name in self.drl.absent() {
            if let Some(c) = self.child(&name)
                && c.online()
            {
                *c.state.lock().expect("child state") = ChildState::OutOfSync;
            }
        }
        if !self.snapshot().iter().any(|c| c.online()) {
            return Err(NexusError::Invalid(
                "the dirty-region log records every child given as healthy as out of sync: \
                 none can be the source of the others"
                    .into(),
            ));
        }
        // After an unclean shutdown the healthy children may differ where writes were in
        // flight (never acknowledged, landed on some only): the first is the source, the
        // others are rebuilt from it before they serve reads.
        if self.opts.unclean_shutdown {
            for c in self.snapshot().iter().filter(|c| c.online()).skip(1) {
                *c.state.lock().expect("child state") = ChildState::OutOfSync;
            }
        }
        Ok(())
    }

    /// The first record: the store learns that this incarnation runs (a crash from now on
    /// is unclean) and which children it uses, before any write is acknowledged.
    fn publish_first_record(&self) {
        if let Some(h) = &self.health {
            let mut st = h.st.lock().expect("health");
            let healthy = self.online_names();
            st.generation += 1;
            st.recorded = healthy.clone();
            h.required.store(st.generation, Ordering::SeqCst);
            h.sink.publish(HealthRecord {
                nexus: self.name.clone(),
                generation: st.generation,
                healthy,
                clean: false,
            });
        }
    }

    /// The nexus's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Claims `c` under this incarnation's epoch (nothing to do without one, or for a
    /// device that cannot fence).
    async fn fence_child(&self, c: &Child) -> Result<(), BlockError> {
        let Some(epoch) = self.opts.epoch else {
            return Ok(());
        };
        match self.on_child(c, IoKind::Fence, c.dev.fence(epoch)).await {
            Err(e) if e.kind() == ErrorKind::Unsupported => Ok(()),
            r => r,
        }
    }

    /// Whether a newer incarnation has fenced this one out.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }

    /// The dirty-region log.
    pub fn drl(&self) -> &Drl {
        &self.drl
    }

    fn snapshot(&self) -> Vec<Arc<Child>> {
        self.children.lock().expect("children").clone()
    }

    fn child(&self, name: &str) -> Option<Arc<Child>> {
        self.snapshot().into_iter().find(|c| c.name == name)
    }

    /// Changes children's states (or the child list) in `f` under the health lock, then
    /// publishes a record if that changed the healthy set. A write that finds a child's new
    /// state therefore also finds the generation it must wait for.
    fn change(&self, f: impl FnOnce()) {
        let guard = self
            .health
            .as_ref()
            .map(|h| (h, h.st.lock().expect("health")));
        f();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if let Some((h, mut st)) = guard {
            self.publish_locked(h, &mut st);
        }
    }

    fn set_state(&self, c: &Child, s: ChildState) {
        self.change(|| *c.state.lock().expect("child state") = s);
    }

    fn online_names(&self) -> Vec<String> {
        self.snapshot()
            .iter()
            .filter(|c| c.online())
            .map(|c| c.name.clone())
            .collect()
    }

    /// Publishes a record when the online set differs from the last one recorded; one that
    /// drops a child must be stored before writes are acknowledged again.
    fn publish_locked(&self, h: &Health, st: &mut HealthState) {
        // A closed nexus published its last record; a fenced one is no longer the volume's
        // incarnation and must not overwrite the newer one's records.
        if st.closed || self.is_fenced() {
            return;
        }
        let now = self.online_names();
        // With no child online nothing is acknowledged: the last record stands (its children
        // hold every acknowledged write) until one comes back.
        if now.is_empty() {
            return;
        }
        if now.len() == st.recorded.len() && now.iter().all(|n| st.recorded.contains(n)) {
            return;
        }
        st.generation += 1;
        if st.recorded.iter().any(|r| !now.contains(r)) {
            h.required.store(st.generation, Ordering::SeqCst);
        }
        st.recorded = now.clone();
        h.sink.publish(HealthRecord {
            nexus: self.name.clone(),
            generation: st.generation,
            healthy: now,
            clean: false,
        });
    }

    /// Health persistence as it stands (`None`: off).
    pub fn health_status(&self) -> Option<HealthStatus> {
        let h = self.health.as_ref()?;
        let st = h.st.lock().expect("health");
        Some(HealthStatus {
            generation: st.generation,
            required: h.required.load(Ordering::SeqCst),
            confirmed: h.confirmed.load(Ordering::SeqCst),
            healthy: st.recorded.clone(),
            closed: st.closed,
        })
    }

    /// Waits until the sink confirms the record this write depends on stored: the newest
    /// that dropped a child (which missed the write). Up to the hold timeout, then EIO.
    async fn await_stored(&self, kind: IoKind, offset: u64, len: u64) -> Result<(), BlockError> {
        let Some(h) = &self.health else {
            return Ok(());
        };
        // Under the lock: a child retired before this write's targets were chosen has its
        // record's generation in `required` by now.
        let required = {
            let _st = h.st.lock().expect("health");
            h.required.load(Ordering::SeqCst)
        };
        if h.confirmed.load(Ordering::SeqCst) >= required {
            return Ok(());
        }
        let until = Instant::now() + self.opts.hold_timeout;
        loop {
            if h.confirmed.load(Ordering::SeqCst) >= required {
                return Ok(());
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || self.closed.load(Ordering::SeqCst) {
                return Err(BlockError::with_message(
                    ErrorKind::Io,
                    kind,
                    offset,
                    len,
                    format!(
                        "health record {required} of nexus {:?} (without a retired child) was \
                         not confirmed stored",
                        self.name
                    ),
                ));
            }
            // Asked in slices, so a close ends the wait and a failing store is asked again.
            let slice = left.min(Duration::from_millis(100));
            match reactor::sync::timeout(slice, h.sink.stored(&self.name, required)).await {
                Some(Ok(())) => {
                    h.confirmed.fetch_max(required, Ordering::SeqCst);
                    return Ok(());
                }
                Some(Err(_)) => reactor::sleep(slice).await,
                None => {}
            }
        }
    }

    /// Enters an application I/O: fails once the nexus is closed.
    fn enter(&self, kind: IoKind, offset: u64, len: u64) -> Result<Active<'_>, BlockError> {
        self.active.fetch_add(1, Ordering::SeqCst);
        let a = Active(&self.active);
        if self.closed.load(Ordering::SeqCst) {
            return Err(BlockError::with_message(
                ErrorKind::Io,
                kind,
                offset,
                len,
                "the nexus is closed",
            ));
        }
        Ok(a)
    }

    /// Whether the nexus is closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Closes the nexus (destroy, engine shutdown): new I/O fails, the I/O in flight is
    /// waited for (up to the I/O plus the hold timeout), rebuilds stop, every child in use
    /// is flushed, and the last health record is published — `clean: true` when nothing was
    /// in flight any more and the flush succeeded on every online child, which then hold the
    /// same data. Returns whether it was clean. No record follows it.
    pub async fn close(&self) -> bool {
        self.closed.store(true, Ordering::SeqCst);
        let until = Instant::now() + self.opts.io_timeout + self.opts.hold_timeout;
        while self.active.load(Ordering::SeqCst) > 0 && Instant::now() < until {
            reactor::sleep(Duration::from_millis(1)).await;
        }
        let drained = self.active.load(Ordering::SeqCst) == 0;
        // With no child online there is nothing to flush (and the flush would be held).
        let flushed = !self.is_fenced()
            && self.snapshot().iter().any(|c| c.online())
            && self.fan_out(WriteOp::Flush, 0, 0, None).await.is_ok();
        let clean = drained && flushed && !self.is_fenced();
        if let Some(h) = &self.health {
            let mut st = h.st.lock().expect("health");
            if !st.closed && !self.is_fenced() {
                let now = self.online_names();
                if !now.is_empty() {
                    st.recorded = now;
                }
                st.generation += 1;
                st.closed = true;
                h.sink.publish(HealthRecord {
                    nexus: self.name.clone(),
                    generation: st.generation,
                    healthy: st.recorded.clone(),
                    clean,
                });
            }
        }
        clean
    }

    /// The children and their states.
    pub fn children(&self) -> Vec<ChildStatus> {
        self.snapshot()
            .iter()
            .map(|c| ChildStatus {
                name: c.name.clone(),
                state: c.state(),
                inflight: c.inflight.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Names of the children in sync (online): what the control plane records as healthy.
    pub fn healthy(&self) -> Vec<String> {
        self.snapshot()
            .iter()
            .filter(|c| c.online())
            .map(|c| c.name.clone())
            .collect()
    }

    /// Online, degraded or faulted.
    pub fn state(&self) -> NexusState {
        let cs = self.snapshot();
        let online = cs.iter().filter(|c| c.online()).count();
        if online == 0 {
            NexusState::Faulted
        } else if online == cs.len() {
            NexusState::Online
        } else {
            NexusState::Degraded
        }
    }

    /// Retires `c` with `reason` and starts logging writes for it. Returns after the log
    /// records it as absent.
    async fn retire(&self, c: &Child, reason: String) {
        if matches!(c.state(), ChildState::Faulted { .. }) {
            return;
        }
        self.set_state(c, ChildState::Faulted { reason });
        // Writes in flight may land on some children and not on others if the engine
        // crashes now: their regions are logged, so a partial rebuild after an unclean
        // shutdown covers them too.
        for (start, end) in self.locks.held() {
            self.drl.mark(start, end - start);
        }
        self.drl.add_absent(&c.name);
        // Best effort: a log that cannot be saved means a full rebuild later.
        let _ = self.drl.save().await;
    }

    /// Retires child `name` by request (e.g. the control plane fences it).
    pub async fn fault_child(&self, name: &str, reason: &str) -> Result<(), NexusError> {
        let c = self
            .child(name)
            .ok_or_else(|| NexusError::NotFound(name.into()))?;
        self.retire(&c, reason.to_string()).await;
        Ok(())
    }

    /// Adds a child online; it is out of sync until rebuilt (fully, unless the log covers it:
    /// a child that left this nexus and comes back copies only the dirty regions).
    pub async fn add_child(&self, name: &str, dev: Device) -> Result<(), NexusError> {
        if self.child(name).is_some() {
            return Err(NexusError::Invalid(format!(
                "child {name:?} is already there"
            )));
        }
        let g = dev.geometry();
        if g.size() < self.size || g.block_size > self.block_size {
            return Err(NexusError::Invalid(format!(
                "child {name:?} ({} bytes, {}-byte blocks) cannot hold the nexus ({} bytes, \
                 {}-byte blocks)",
                g.size(),
                g.block_size,
                self.size,
                self.block_size
            )));
        }
        let child = Arc::new(Child {
            name: name.to_string(),
            dev,
            state: Mutex::new(ChildState::OutOfSync),
            inflight: AtomicUsize::new(0),
        });
        self.fence_child(&child).await?;
        self.change(|| self.children.lock().expect("children").push(child));
        Ok(())
    }

    /// Removes a child (its I/O in flight completes; no new I/O goes to it). The last online
    /// child cannot be removed.
    pub async fn remove_child(&self, name: &str) -> Result<(), NexusError> {
        let c = self
            .child(name)
            .ok_or_else(|| NexusError::NotFound(name.into()))?;
        if c.online() && self.healthy().len() == 1 {
            return Err(NexusError::Invalid(format!(
                "{name:?} is the last online child"
            )));
        }
        self.change(|| {
            self.children
                .lock()
                .expect("children")
                .retain(|x| x.name != name);
            *c.state.lock().expect("child state") = ChildState::Faulted {
                reason: "removed".into(),
            };
        });
        self.drl.add_absent(name);
        self.drl.save().await?;
        Ok(())
    }

    /// Retires the `failed` children; if that leaves no child online, remembers which of
    /// them were online (they hold every acknowledged write).
    async fn retire_all(&self, failed: &[(Arc<Child>, String)]) {
        let was_online: Vec<String> = failed
            .iter()
            .filter(|(c, _)| c.online())
            .map(|(c, _)| c.name.clone())
            .collect();
        for (c, why) in failed {
            self.retire(c, why.clone()).await;
        }
        if !was_online.is_empty() && !self.snapshot().iter().any(|c| c.online()) {
            *self.last_online.lock().expect("last online") = was_online;
        }
    }

    /// Waits up to the hold timeout for an online child; `None` when none came (or the nexus
    /// was closed). Meanwhile the children that were online last are probed (a one-block read
    /// every 100 ms): one that answers comes back online.
    async fn wait_online(&self) -> Option<()> {
        let until = Instant::now() + self.opts.hold_timeout;
        let mut next_probe = Instant::now();
        loop {
            if self.snapshot().iter().any(|c| c.online()) {
                return Some(());
            }
            if Instant::now() >= until || self.closed.load(Ordering::SeqCst) {
                return None;
            }
            if Instant::now() >= next_probe {
                next_probe = Instant::now() + Duration::from_millis(100);
                let names = self.last_online.lock().expect("last online").clone();
                for name in names {
                    let Some(c) = self.child(&name) else { continue };
                    let probe = IoBuf::zeroed(self.block_size as usize);
                    if self
                        .on_child(&c, IoKind::Read, c.dev.read(0, probe))
                        .await
                        .is_ok()
                        && matches!(c.state(), ChildState::Faulted { .. })
                        && self.fence_child(&c).await.is_ok()
                    {
                        self.set_state(&c, ChildState::Online);
                        self.drl.remove_absent(&name);
                        let _ = self.drl.save().await;
                        self.last_online.lock().expect("last online").clear();
                        break;
                    }
                }
                continue;
            }
            reactor::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Runs one child operation with the I/O timeout.
    async fn on_child<T>(
        &self,
        c: &Child,
        op: IoKind,
        fut: IoFuture<'_, T>,
    ) -> Result<T, BlockError> {
        let _n = Inflight::new(c);
        match reactor::sync::timeout(self.opts.io_timeout, fut).await {
            Some(r) => r,
            None => Err(BlockError::new(ErrorKind::Timeout, op, 0, 0)),
        }
    }

    /// Sends a write-like operation to every writable child; succeeds when it succeeded on
    /// every child that is still writable afterwards and at least one of them is online.
    async fn fan_out(
        &self,
        op: WriteOp,
        offset: u64,
        len: u64,
        buf: Option<IoBuf>,
    ) -> Result<Option<IoBuf>, BlockError> {
        let kind = op.kind();
        if self.is_fenced() {
            return Err(BlockError::with_message(
                ErrorKind::Conflict,
                kind,
                offset,
                len,
                "this nexus was fenced out by a newer incarnation",
            ));
        }
        let _range = if matches!(op, WriteOp::Flush) {
            None
        } else {
            Some(self.locks.lock(offset, offset + len, false).await)
        };
        loop {
            if self.wait_online().await.is_none() {
                return Err(BlockError::new(ErrorKind::Io, kind, offset, len));
            }
            // Log before writing while a child is away: a crash after the write must not
            // leave a region changed but unrecorded.
            if !matches!(op, WriteOp::Flush) && self.drl.tracking() && self.drl.mark(offset, len) {
                self.drl.save().await?;
            }
            let targets: Vec<Arc<Child>> = self
                .snapshot()
                .into_iter()
                .filter(|c| c.writable())
                .collect();
            let mut futs: Vec<IoFuture<'_, ()>> = Vec::with_capacity(targets.len());
            for c in &targets {
                let dev = &c.dev;
                let fut: IoFuture<'_, ()> = match op {
                    WriteOp::Write(flags) => {
                        // Every child gets its own copy: the caller's buffer is kept, so a
                        // write can be held and retried when every child failed.
                        let data = buf.as_ref().expect("a write has data");
                        let mut copy = IoBuf::recycled(data.len());
                        copy.copy_from_slice(data);
                        Box::pin(async move { dev.write(offset, copy, flags).await.map(drop) })
                    }
                    WriteOp::Zeroes(flags) => dev.write_zeroes(offset, len, flags),
                    WriteOp::Unmap => dev.unmap(offset, len),
                    WriteOp::Flush => dev.flush(),
                };
                futs.push(Box::pin(self.on_child(c, kind, fut)));
            }
            let results = reactor::sync::join_all(futs).await;
            let mut failed = Vec::new();
            for (c, r) in targets.iter().zip(results) {
                match r {
                    Ok(()) => {}
                    // Request errors are the caller's, not the child's fault.
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::OutOfRange
                                | ErrorKind::Misaligned
                                | ErrorKind::InvalidArgument
                                | ErrorKind::Unsupported
                                | ErrorKind::NotFast
                        ) =>
                    {
                        return Err(BlockError::new(e.kind(), kind, offset, len));
                    }
                    // A newer incarnation holds the children: this one is fenced out. The
                    // children are fine; they are not retired, the application's write fails.
                    Err(e) if e.kind() == ErrorKind::Conflict => {
                        self.fenced.store(true, Ordering::SeqCst);
                        return Err(BlockError::with_message(
                            ErrorKind::Conflict,
                            kind,
                            offset,
                            len,
                            "this nexus was fenced out by a newer incarnation",
                        ));
                    }
                    Err(e) => failed.push((c.clone(), e)),
                }
            }
            if !failed.is_empty() && !matches!(op, WriteOp::Flush) {
                self.drl.mark(offset, len);
            }
            let reasons: Vec<(Arc<Child>, String)> = failed
                .iter()
                .map(|(c, e)| (c.clone(), format!("{kind:?} failed: {e}")))
                .collect();
            self.retire_all(&reasons).await;
            let ok_online = targets
                .iter()
                .any(|c| c.online() && !failed.iter().any(|(f, _)| Arc::ptr_eq(f, c)));
            if ok_online {
                if !failed.is_empty() {
                    self.drl.save().await?;
                }
                // A write a retired child missed is acknowledged only once the store no
                // longer calls that child healthy. (A flush acknowledges no data.)
                if !matches!(op, WriteOp::Flush) {
                    self.await_stored(kind, offset, len).await?;
                }
                return Ok(buf);
            }
            if failed.iter().any(|(_, e)| e.kind() == ErrorKind::NoSpace) {
                return Err(BlockError::new(ErrorKind::NoSpace, kind, offset, len));
            }
            // Every online child failed: hold and retry (a child may come back).
        }
    }

    async fn do_read(&self, offset: u64, buf: IoBuf) -> Result<IoBuf, BlockError> {
        let len = buf.len() as u64;
        check_range(&self.geometry(), IoKind::Read, offset, len)?;
        let mut buf = Some(buf);
        loop {
            if self.wait_online().await.is_none() {
                return Err(BlockError::new(ErrorKind::Io, IoKind::Read, offset, len));
            }
            let Some(c) = self
                .snapshot()
                .into_iter()
                .filter(|c| c.online())
                .min_by_key(|c| c.inflight.load(Ordering::Relaxed))
            else {
                continue;
            };
            let b = buf.take().unwrap_or_else(|| IoBuf::zeroed(len as usize));
            match self.on_child(&c, IoKind::Read, c.dev.read(offset, b)).await {
                Ok(b) => return Ok(b),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::OutOfRange | ErrorKind::Misaligned | ErrorKind::InvalidArgument
                    ) =>
                {
                    return Err(e);
                }
                // As for writes: a newer incarnation holds the children (a reservation that
                // fences reads too). The child is fine and not retired; the read fails.
                Err(e) if e.kind() == ErrorKind::Conflict => {
                    self.fenced.store(true, Ordering::SeqCst);
                    return Err(BlockError::with_message(
                        ErrorKind::Conflict,
                        IoKind::Read,
                        offset,
                        len,
                        "this nexus was fenced out by a newer incarnation",
                    ));
                }
                Err(e) => {
                    self.retire_all(&[(c.clone(), format!("read failed: {e}"))])
                        .await
                }
            }
        }
    }

    async fn do_block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, BlockError> {
        check_range(&self.geometry(), IoKind::BlockStatus, offset, len)?;
        let c = self
            .snapshot()
            .into_iter()
            .find(|c| c.online())
            .ok_or_else(|| BlockError::new(ErrorKind::Io, IoKind::BlockStatus, offset, len))?;
        self.on_child(&c, IoKind::BlockStatus, c.dev.block_status(offset, len))
            .await
    }
}

impl BlockDevice for Nexus {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "nexus"
    }
    fn geometry(&self) -> Geometry {
        Geometry {
            block_size: self.block_size,
            num_blocks: self.size / self.block_size as u64,
            optimal_io: self.opts.region_size.min(u32::MAX as u64) as u32,
            max_io: self.max_io,
        }
    }
    fn capabilities(&self) -> Capabilities {
        self.caps
    }
    fn read(&self, offset: u64, buf: IoBuf) -> IoFuture<'_, IoBuf> {
        Box::pin(async move {
            let _a = self.enter(IoKind::Read, offset, buf.len() as u64)?;
            self.do_read(offset, buf).await
        })
    }
    fn write(&self, offset: u64, buf: IoBuf, flags: WriteFlags) -> IoFuture<'_, IoBuf> {
        Box::pin(async move {
            let len = buf.len() as u64;
            let _a = self.enter(IoKind::Write, offset, len)?;
            check_range(&self.geometry(), IoKind::Write, offset, len)?;
            self.fan_out(WriteOp::Write(flags), offset, len, Some(buf))
                .await
                .map(|b| b.expect("a write returns its buffer"))
        })
    }
    fn flush(&self) -> IoFuture<'_, ()> {
        Box::pin(async move {
            let _a = self.enter(IoKind::Flush, 0, 0)?;
            self.fan_out(WriteOp::Flush, 0, 0, None).await.map(drop)
        })
    }
    fn unmap(&self, offset: u64, len: u64) -> IoFuture<'_, ()> {
        Box::pin(async move {
            let _a = self.enter(IoKind::Unmap, offset, len)?;
            check_range(&self.geometry(), IoKind::Unmap, offset, len)?;
            self.fan_out(WriteOp::Unmap, offset, len, None)
                .await
                .map(drop)
        })
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> IoFuture<'_, ()> {
        Box::pin(async move {
            let _a = self.enter(IoKind::WriteZeroes, offset, len)?;
            check_range(&self.geometry(), IoKind::WriteZeroes, offset, len)?;
            self.fan_out(WriteOp::Zeroes(flags), offset, len, None)
                .await
                .map(drop)
        })
    }
    fn block_status(&self, offset: u64, len: u64) -> IoFuture<'_, Vec<Extent>> {
        Box::pin(self.do_block_status(offset, len))
    }
}
