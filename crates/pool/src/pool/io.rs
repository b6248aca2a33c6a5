//! A volume or snapshot as a block device: the I/O path.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use blockdev::{
    BlockDevice, BlockError, Capabilities, Device, ErrorKind, Extent, ExtentState, Geometry, IoBuf,
    IoFuture, IoKind, WriteFlags, ZeroFlags, check_range,
};

use crate::meta::{Mapping, Record};

use super::{PieceFuture, Pool, Run, join_all, push_run};

/// A volume or snapshot of a pool, as a block device.
pub struct PoolVolume {
    pub(super) pool: Arc<Pool>,
    pub(super) id: u64,
    pub(super) name: String,
    pub(super) read_only: bool,
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

/// What [`PoolVolume::probe`] found.
struct Probe {
    /// The volume's size in bytes.
    size: u64,
    mapping: Mapping,
    /// The mapped cluster's reference count (0 for a hole).
    rc: u32,
    /// For data: the member device and byte offset of the cluster.
    data: Option<(Device, u64)>,
}

impl Probe {
    /// Where to write in place: the cluster is data this volume alone references.
    fn owned(self) -> Option<(Device, u64)> {
        self.data.filter(|_| self.rc == 1)
    }
}

impl PoolVolume {
    fn size(&self) -> u64 {
        let st = self.pool.state.lock().expect("pool lock");
        st.meta.volumes.get(&self.id).map(|v| v.size).unwrap_or(0)
    }

    /// Everything the I/O path needs to know about logical cluster `index`, under one lock:
    /// the volume's size, the cluster's mapping and reference count, and where its data lies
    /// (member device and byte offset) when it is mapped to data.
    fn probe(&self, index: u64) -> Result<Probe, BlockError> {
        let st = self.pool.state.lock().expect("pool lock");
        let v = st
            .meta
            .volumes
            .get(&self.id)
            .ok_or_else(|| BlockError::new(ErrorKind::Gone, IoKind::Read, 0, 0))?;
        let mapping = Mapping::decode(v.map.get(index as usize).copied().unwrap_or(0));
        let rc = mapping.cluster().map(|c| st.meta.refcount(c)).unwrap_or(0);
        let data = match mapping {
            Mapping::Data(c) => {
                let (dev, off) = st.layout.locate(c);
                Some((dev.clone(), off))
            }
            Mapping::Hole | Mapping::Zero(_) => None,
        };
        Ok(Probe {
            size: v.size,
            mapping,
            rc,
            data,
        })
    }

    /// Logical cluster `index`'s mapping and reference count.
    fn mapping(&self, index: u64) -> Result<(Mapping, u32), BlockError> {
        self.probe(index).map(|p| (p.mapping, p.rc))
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
            let p = self.probe(index)?;
            check_range(&self.geometry_for(p.size), IoKind::Read, offset, len)?;
            if let Some((dev, off)) = p.data {
                return dev.read(off + within, buf).await;
            }
        }
        // Allocated clusters that lie next to each other on one member are read as one run;
        // runs are read concurrently. A request that is one run reads straight into `buf`.
        // The size check, the map and the layout are read under one lock.
        let mut runs: Vec<Run> = Vec::new();
        let layout = {
            let st = self.pool.state.lock().expect("pool lock");
            let v = st
                .meta
                .volumes
                .get(&self.id)
                .ok_or_else(|| BlockError::new(ErrorKind::Gone, IoKind::Read, offset, len))?;
            check_range(&self.geometry_for(v.size), IoKind::Read, offset, len)?;
            let layout = st.layout.clone();
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
            layout
        };
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

    /// Checks that `[offset, offset+len)` lies inside the volume and finds where the whole of
    /// it lies when every cluster of it is owned by this volume alone and they are contiguous
    /// on one member: (member device, byte offset). One lock.
    fn owned_run(&self, offset: u64, len: u64) -> Result<Option<(Device, u64)>, BlockError> {
        let st = self.pool.state.lock().expect("pool lock");
        let size = st.meta.volumes.get(&self.id).map_or(0, |v| v.size);
        check_range(&self.geometry_for(size), IoKind::Write, offset, len)?;
        let Some(v) = st.meta.volumes.get(&self.id) else {
            return Ok(None);
        };
        let mut runs: Vec<Run> = Vec::new();
        for (index, within, at, n) in self.pieces(offset, len) {
            match Mapping::decode(v.map.get(index as usize).copied().unwrap_or(0)) {
                Mapping::Data(c) if st.meta.refcount(c) == 1 => {
                    let (member, off) = st.layout.locate_member(c);
                    push_run(&mut runs, at as usize, n as usize, member, off + within);
                }
                _ => return Ok(None),
            }
            if runs.len() > 1 {
                return Ok(None);
            }
        }
        Ok(runs
            .first()
            .map(|r| (st.layout.devs[r.member].clone(), r.dev_off)))
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
        let in_place = |(dev, off): (Device, u64)| async move {
            dev.write(off + within, IoBuf::from_slice(data), WriteFlags { fua })
                .await
                .map(drop)
        };
        if let Some(at) = self.probe(index)?.owned() {
            // Owned cluster: in place.
            return in_place(at).await;
        }
        let _guard = self.lock_cluster(index).await;
        // Re-read the mapping: another writer may have allocated it meanwhile.
        let p = self.probe(index)?;
        let (m, rc) = (p.mapping, p.rc);
        if let Some(at) = p.owned() {
            return in_place(at).await;
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
            // caller's buffer (one lock for the size check, the lookup and its place).
            let p = self.probe(index)?;
            check_range(&self.geometry_for(p.size), IoKind::Write, offset, len)?;
            if let Some((dev, off)) = p.owned() {
                let buf = dev.write(off + within, buf, flags).await?;
                // FUA promises the data survives a crash, so the mapping that leads to it
                // must too: commit if any metadata is not durable yet (a commit in flight
                // included: commit() waits for it).
                if flags.fua && self.pool.not_durable() {
                    self.pool
                        .commit()
                        .await
                        .map_err(|_| BlockError::new(ErrorKind::Io, IoKind::Write, offset, len))?;
                }
                return Ok(buf);
            }
        }
        // Clusters this volume owns, contiguous on one member: one write, in place.
        if let Some((dev, off)) = self.owned_run(offset, len)? {
            let buf = dev.write(off, buf, flags).await?;
            if flags.fua && self.pool.not_durable() {
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

    pub(super) async fn do_zero(
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
