//! Rebuild: bring an out-of-sync child in sync from an online one, while application I/O goes
//! on.
//!
//! The child first becomes `Rebuilding`, so every new write reaches it too. Then the volume is
//! copied segment by segment, a few at a time, each under an exclusive range lock that waits for the writes in
//! flight to that segment (issued before the child was writable) and holds new ones off while
//! it is copied. Holes and zero extents of the source (its `block_status`) are not copied but
//! zeroed with unmap allowed, so a thin child stays thin. A child the dirty-region log covers
//! (it left this nexus and came back) copies only the dirty regions. When done, the child is
//! online and, once no child is away, the log is cleared.

use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::{ExtentState, IoBuf, WriteFlags, ZeroFlags};

use crate::{Child, ChildState, Nexus, NexusError};

/// Segments a rebuild copies at once: one at a time leaves the source and the child idle
/// between a segment's read and its write.
const REBUILD_DEPTH: usize = 4;

/// What a rebuild did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RebuildReport {
    /// Only the dirty regions were gone through.
    pub partial: bool,
    /// Bytes gone through (the volume, or the dirty regions).
    pub total: u64,
    /// Bytes read from the source and written to the child.
    pub copied: u64,
    /// Bytes zeroed (holes and zero extents of the source).
    pub zeroed: u64,
    /// How long it took.
    pub elapsed: Duration,
}

impl Nexus {
    /// Starts a rebuild of every out-of-sync child in the background (on this reactor).
    pub fn rebuild_pending(self: &Arc<Self>) {
        for c in self.snapshot() {
            if c.state() == ChildState::OutOfSync {
                let me = self.clone();
                let name = c.name.clone();
                drop(reactor::spawn_local(async move {
                    let _ = me.rebuild_child(&name).await;
                }));
            }
        }
    }

    /// Rebuilds child `name` (out of sync or faulted) from an online child; returns when it
    /// is online, or fails leaving it out of sync.
    pub async fn rebuild_child(&self, name: &str) -> Result<RebuildReport, NexusError> {
        let c = self
            .child(name)
            .ok_or_else(|| NexusError::NotFound(name.into()))?;
        match c.state() {
            ChildState::OutOfSync | ChildState::Faulted { .. } => {}
            s => {
                return Err(NexusError::Invalid(format!(
                    "child {name:?} is {s:?}, not out of sync"
                )));
            }
        }
        let partial = self.drl.absent().iter().any(|a| a == name);
        let region = self.drl.region_size();
        let total = if partial {
            self.drl.dirty_count() * region
        } else {
            self.size
        };
        self.set_state(
            &c,
            ChildState::Rebuilding {
                done: 0,
                total,
                partial,
            },
        );
        let r = self.copy(&c, partial, total).await;
        match &r {
            Ok(_) => {
                self.set_state(&c, ChildState::Online);
                self.drl.remove_absent(name);
                self.drl.save().await?;
            }
            Err(e) => {
                // A child still rebuilding (not retired meanwhile) goes back out of sync.
                if matches!(c.state(), ChildState::Rebuilding { .. }) {
                    self.set_state(
                        &c,
                        ChildState::Faulted {
                            reason: format!("rebuild failed: {e}"),
                        },
                    );
                }
            }
        }
        r
    }

    async fn copy(
        &self,
        c: &Child,
        partial: bool,
        total: u64,
    ) -> Result<RebuildReport, NexusError> {
        let start = Instant::now();
        // A returning child may have lost its reservation (its target restarted): claim it
        // for this incarnation again before copying. Its connection may still be backing
        // off from the outage, so transient errors are retried for a few seconds.
        let mut tries = 0;
        loop {
            match self.fence_child(c).await {
                Ok(()) => break,
                Err(e) if e.kind() != blockdev::ErrorKind::Conflict && tries < 50 => {
                    tries += 1;
                    reactor::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(NexusError::Device(e)),
            }
        }
        let seg = if partial {
            self.drl.region_size()
        } else {
            self.opts.rebuild_segment.max(self.block_size as u64)
        };
        let mut report = RebuildReport {
            partial,
            total,
            copied: 0,
            zeroed: 0,
            elapsed: Duration::ZERO,
        };
        let mut done = 0u64;
        let mut off = 0u64;
        while off < self.size {
            // The next few segments to copy, copied at once (each under its own lock).
            let mut batch = Vec::with_capacity(REBUILD_DEPTH);
            while off < self.size && batch.len() < REBUILD_DEPTH {
                let len = seg.min(self.size - off);
                if !partial || self.drl.is_dirty(off / self.drl.region_size()) {
                    batch.push((off, len));
                }
                off += len;
            }
            if batch.is_empty() {
                continue;
            }
            if self.is_closed() {
                return Err(NexusError::Invalid(format!(
                    "nexus {:?} closed during the rebuild of {:?}",
                    self.name, c.name
                )));
            }
            if !matches!(c.state(), ChildState::Rebuilding { .. }) || self.child(&c.name).is_none()
            {
                return Err(NexusError::Invalid(format!(
                    "child {:?} left during its rebuild",
                    c.name
                )));
            }
            let copies: Vec<reactor::sync::BoxFuture<'_, _>> = batch
                .iter()
                .map(|&(at, len)| {
                    Box::pin(self.copy_segment(c, at, len)) as reactor::sync::BoxFuture<'_, _>
                })
                .collect();
            for r in reactor::sync::join_all(copies).await {
                let (copied, zeroed) = r?;
                report.copied += copied;
                report.zeroed += zeroed;
            }
            done += batch.iter().map(|&(_, len)| len).sum::<u64>();
            if let ChildState::Rebuilding { partial, total, .. } = c.state() {
                *c.state.lock().expect("child state") = ChildState::Rebuilding {
                    done,
                    total,
                    partial,
                };
            }
            if let Some(rate) = self.opts.rebuild_rate.filter(|&r| r > 0) {
                let due =
                    Duration::from_secs_f64((report.copied + report.zeroed) as f64 / rate as f64);
                let spent = start.elapsed();
                if due > spent {
                    reactor::sleep(due - spent).await;
                }
            }
        }
        self.on_child(c, blockdev::IoKind::Flush, c.dev.flush())
            .await
            .map_err(NexusError::Device)?;
        report.elapsed = start.elapsed();
        Ok(report)
    }

    /// Copies `[off, off+len)` into `c` from an online child, under an exclusive range lock;
    /// returns the bytes copied and zeroed.
    async fn copy_segment(&self, c: &Child, off: u64, len: u64) -> Result<(u64, u64), NexusError> {
        let _lock = self.locks.lock(off, off + len, true).await;
        loop {
            let Some(src) = self
                .snapshot()
                .into_iter()
                .filter(|s| s.online() && s.name != c.name)
                .min_by_key(|s| s.inflight.load(std::sync::atomic::Ordering::Relaxed))
            else {
                return Err(NexusError::Invalid(
                    "no online child to rebuild from".into(),
                ));
            };
            match self.copy_from(&src, c, off, len).await {
                Ok(r) => return Ok(r),
                Err((true, e)) => {
                    // The source failed: retire it, try another.
                    self.retire(&src, format!("read failed during a rebuild: {e}"))
                        .await;
                }
                Err((false, e)) => {
                    self.retire(c, format!("rebuild write failed: {e}")).await;
                    return Err(NexusError::Device(e));
                }
            }
        }
    }

    /// Copies one segment; on error says whether the source (true) or the target failed.
    async fn copy_from(
        &self,
        src: &Child,
        dst: &Child,
        off: u64,
        len: u64,
    ) -> Result<(u64, u64), (bool, blockdev::BlockError)> {
        let extents = if src.dev.capabilities().block_status {
            self.on_child(
                src,
                blockdev::IoKind::BlockStatus,
                src.dev.block_status(off, len),
            )
            .await
            .map_err(|e| (true, e))?
        } else {
            Vec::new()
        };
        let (mut copied, mut zeroed) = (0, 0);
        let mut pos = off;
        let mut ext = extents.into_iter().peekable();
        while pos < off + len {
            // The extent covering `pos` (block status may return less than asked: the rest
            // is taken as data).
            let (n, data) = match ext.peek() {
                Some(e) if e.offset <= pos && pos < e.offset + e.len => {
                    let n = (e.offset + e.len).min(off + len) - pos;
                    let data = e.state == ExtentState::Data;
                    ext.next();
                    (n, data)
                }
                _ => (off + len - pos, true),
            };
            if data || !dst.dev.capabilities().write_zeroes {
                let buf = if data {
                    self.on_child(
                        src,
                        blockdev::IoKind::Read,
                        src.dev.read(pos, IoBuf::recycled(n as usize)),
                    )
                    .await
                    .map_err(|e| (true, e))?
                } else {
                    IoBuf::zeroed(n as usize)
                };
                self.on_child(
                    dst,
                    blockdev::IoKind::Write,
                    Box::pin(async move {
                        dst.dev
                            .write(pos, buf, WriteFlags::default())
                            .await
                            .map(drop)
                    }),
                )
                .await
                .map_err(|e| (false, e))?;
                if data {
                    copied += n;
                } else {
                    zeroed += n;
                }
            } else {
                let flags = ZeroFlags {
                    may_unmap: true,
                    ..ZeroFlags::default()
                };
                self.on_child(
                    dst,
                    blockdev::IoKind::WriteZeroes,
                    dst.dev.write_zeroes(pos, n, flags),
                )
                .await
                .map_err(|e| (false, e))?;
                zeroed += n;
            }
            pos += n;
        }
        Ok((copied, zeroed))
    }
}
