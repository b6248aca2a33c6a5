//! The one fault-injection device every crate's tests share: errors, hangs and delays on
//! demand, over any device.
//!
//! A [`FaultDevice`] wraps a device ([`crate::Layer`]: whatever it does not inject goes
//! through) and is steered while I/O runs, from any thread:
//! - [`FaultDevice::fail`]: the chosen operations fail with an error kind (a disk that went
//!   away: `fail(Ops::WRITES, ErrorKind::Io)`);
//! - [`FaultDevice::hang`]: they wait, without completing, until [`FaultDevice::release`]
//!   (a stuck path; the caller's timeouts fire);
//! - [`FaultDevice::delay`]: every I/O takes at least this long (several in flight at once);
//! - [`FaultDevice::from_offset`]: only I/O reaching at or past an offset is affected (say,
//!   data writes but not the metadata in front of them).
//!
//! Hung and delayed operations wait on the reactor's timers, so it must be polled on a
//! reactor. The inner operation starts only after the fault passed: a failed write changes
//! nothing underneath.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{
    BlockDevice, BlockError, Device, ErrorKind, Extent, IoBuf, IoFuture, IoKind, WriteFlags,
    ZeroFlags,
};

/// A set of operations faults apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ops(u32);

impl Ops {
    /// None.
    pub const NONE: Ops = Ops(0);
    /// Reads.
    pub const READ: Ops = Ops(1);
    /// Writes.
    pub const WRITE: Ops = Ops(2);
    /// Flushes.
    pub const FLUSH: Ops = Ops(4);
    /// Unmaps.
    pub const UNMAP: Ops = Ops(8);
    /// Write-zeroes.
    pub const WRITE_ZEROES: Ops = Ops(16);
    /// Block-status queries.
    pub const BLOCK_STATUS: Ops = Ops(32);
    /// Everything that changes data or makes it durable.
    pub const WRITES: Ops = Ops(2 | 4 | 8 | 16);
    /// Every I/O.
    pub const ALL: Ops = Ops(63);

    fn of(op: IoKind) -> Ops {
        match op {
            IoKind::Read => Ops::READ,
            IoKind::Write => Ops::WRITE,
            IoKind::Flush => Ops::FLUSH,
            IoKind::Unmap => Ops::UNMAP,
            IoKind::WriteZeroes => Ops::WRITE_ZEROES,
            IoKind::BlockStatus => Ops::BLOCK_STATUS,
            IoKind::Reset | IoKind::Open | IoKind::Fence => Ops::NONE,
        }
    }

    fn has(self, op: IoKind) -> bool {
        self.0 & Ops::of(op).0 != 0
    }
}

impl std::ops::BitOr for Ops {
    type Output = Ops;
    fn bitor(self, o: Ops) -> Ops {
        Ops(self.0 | o.0)
    }
}

/// A device with injected faults (see the module documentation).
pub struct FaultDevice {
    inner: Device,
    name: Option<String>,
    /// The operations that fail, and with what.
    fail: Mutex<(Ops, ErrorKind)>,
    hang: AtomicU32,
    delay_us: AtomicU64,
    from: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
}

impl std::fmt::Debug for FaultDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultDevice")
            .field("inner", &self.inner.name())
            .field("fail", &*self.fail.lock().expect("fault lock"))
            .field("hang", &self.hang.load(SeqCst))
            .finish()
    }
}

impl FaultDevice {
    /// `inner`, with no fault yet.
    pub fn new(inner: Device) -> Arc<FaultDevice> {
        Arc::new(FaultDevice::build(inner, None))
    }

    /// `inner` under the name `name`.
    pub fn named(name: &str, inner: Device) -> Arc<FaultDevice> {
        Arc::new(FaultDevice::build(inner, Some(name.to_string())))
    }

    fn build(inner: Device, name: Option<String>) -> FaultDevice {
        FaultDevice {
            inner,
            name,
            fail: Mutex::new((Ops::NONE, ErrorKind::Io)),
            hang: AtomicU32::new(0),
            delay_us: AtomicU64::new(0),
            from: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        }
    }

    /// The wrapped device.
    pub fn device(&self) -> &Device {
        &self.inner
    }

    /// From now on `ops` fail with `kind` (other operations go through).
    pub fn fail(&self, ops: Ops, kind: ErrorKind) {
        *self.fail.lock().expect("fault lock") = (ops, kind);
    }

    /// No operation fails any more.
    pub fn heal(&self) {
        self.fail.lock().expect("fault lock").0 = Ops::NONE;
    }

    /// From now on `ops` wait without completing until [`FaultDevice::release`] (those
    /// already waiting keep waiting).
    pub fn hang(&self, ops: Ops) {
        self.hang.store(ops.0, SeqCst);
    }

    /// Hung operations go on (and new ones no longer hang).
    pub fn release(&self) {
        self.hang.store(0, SeqCst);
    }

    /// Every I/O waits `d` before it starts (zero: none).
    pub fn delay(&self, d: Duration) {
        self.delay_us.store(d.as_micros() as u64, SeqCst);
    }

    /// Only I/O whose range ends past `offset` is affected by faults (0: all).
    pub fn from_offset(&self, offset: u64) {
        self.from.store(offset, SeqCst);
    }

    /// Reads that reached this device (failed ones included).
    pub fn reads(&self) -> u64 {
        self.reads.load(SeqCst)
    }

    /// Writes that reached this device (failed ones included).
    pub fn writes(&self) -> u64 {
        self.writes.load(SeqCst)
    }

    fn affected(&self, offset: u64, len: u64) -> bool {
        let from = self.from.load(SeqCst);
        from == 0 || offset.saturating_add(len.max(1)) > from
    }

    /// Runs `io` once the faults for `op` on `[offset, offset+len)` let it.
    fn gate<'a, T: 'a>(
        &'a self,
        op: IoKind,
        offset: u64,
        len: u64,
        io: impl FnOnce(&'a dyn BlockDevice) -> IoFuture<'a, T> + 'a,
    ) -> IoFuture<'a, T> {
        Box::pin(async move {
            let hit = self.affected(offset, len);
            while hit && Ops(self.hang.load(SeqCst)).has(op) {
                reactor::sleep(Duration::from_millis(1)).await;
            }
            let delay = self.delay_us.load(SeqCst);
            if hit && delay > 0 {
                reactor::sleep(Duration::from_micros(delay)).await;
            }
            let (fail, kind) = *self.fail.lock().expect("fault lock");
            if hit && fail.has(op) {
                return Err(BlockError::with_message(
                    kind,
                    op,
                    offset,
                    len,
                    "injected fault",
                ));
            }
            io(&*self.inner).await
        })
    }
}

impl crate::Layer for FaultDevice {
    fn inner(&self) -> &dyn BlockDevice {
        &*self.inner
    }
    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_else(|| self.inner.name())
    }
    fn read(&self, offset: u64, buf: IoBuf) -> IoFuture<'_, IoBuf> {
        self.reads.fetch_add(1, SeqCst);
        let len = buf.len() as u64;
        self.gate(IoKind::Read, offset, len, move |d| d.read(offset, buf))
    }
    fn write(&self, offset: u64, buf: IoBuf, flags: WriteFlags) -> IoFuture<'_, IoBuf> {
        self.writes.fetch_add(1, SeqCst);
        let len = buf.len() as u64;
        self.gate(IoKind::Write, offset, len, move |d| {
            d.write(offset, buf, flags)
        })
    }
    fn flush(&self) -> IoFuture<'_, ()> {
        self.gate(IoKind::Flush, 0, 0, |d| d.flush())
    }
    fn unmap(&self, offset: u64, len: u64) -> IoFuture<'_, ()> {
        self.gate(IoKind::Unmap, offset, len, move |d| d.unmap(offset, len))
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> IoFuture<'_, ()> {
        self.gate(IoKind::WriteZeroes, offset, len, move |d| {
            d.write_zeroes(offset, len, flags)
        })
    }
    fn block_status(&self, offset: u64, len: u64) -> IoFuture<'_, Vec<Extent>> {
        self.gate(IoKind::BlockStatus, offset, len, move |d| {
            d.block_status(offset, len)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::malloc::MallocDevice;

    #[test]
    fn faults_fail_hang_and_delay_only_what_they_name() {
        reactor::testing::run_on_reactor(Duration::from_secs(10), || async {
            let f = FaultDevice::named("f", Arc::new(MallocDevice::new("m", 1 << 20, 512)));
            assert_eq!(f.name(), "f");
            f.write(0, IoBuf::zeroed(512), WriteFlags::default())
                .await
                .unwrap();
            f.fail(Ops::WRITES, ErrorKind::Gone);
            let e = f
                .write(512, IoBuf::zeroed(512), WriteFlags::default())
                .await
                .unwrap_err();
            assert_eq!(
                (e.kind(), e.op(), e.offset()),
                (ErrorKind::Gone, IoKind::Write, 512)
            );
            assert_eq!(f.flush().await.unwrap_err().kind(), ErrorKind::Gone);
            f.read(0, IoBuf::zeroed(512)).await.unwrap();
            f.heal();
            // Only writes past 64 KiB hang; the others go through meanwhile.
            f.from_offset(64 << 10);
            f.hang(Ops::WRITE);
            let f2 = f.clone();
            let hung = reactor::spawn_local(async move {
                f2.write(128 << 10, IoBuf::zeroed(512), WriteFlags::default())
                    .await
                    .map(drop)
            });
            f.write(0, IoBuf::zeroed(512), WriteFlags::default())
                .await
                .unwrap();
            reactor::sleep(Duration::from_millis(20)).await;
            assert_eq!(f.writes(), 4);
            f.release();
            hung.await.unwrap();
            f.delay(Duration::from_millis(15));
            let t = std::time::Instant::now();
            f.read(64 << 10, IoBuf::zeroed(512)).await.unwrap();
            assert!(t.elapsed() >= Duration::from_millis(15));
            assert_eq!(f.reads(), 2);
        });
    }
}
