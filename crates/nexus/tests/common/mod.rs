//! Shared by the nexus tests: a RAM child with injected faults, test data, a reactor.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use blockdev::malloc::MallocDevice;
use blockdev::{
    BlockDevice, BlockError, Capabilities, ErrorKind, Extent, Geometry, IoBuf, IoFuture, IoKind,
    WriteFlags, ZeroFlags,
};

pub const MIB: u64 = 1 << 20;
pub const SIZE: u64 = 16 * MIB;

pub fn run<T: Send + 'static, F: std::future::Future<Output = T> + 'static>(
    f: impl FnOnce() -> F + Send + 'static,
) -> T {
    reactor::testing::run_on_reactor(Duration::from_secs(300), f)
}

/// A child whose I/O fails (`fail`) or never completes (`hang`) on demand.
pub struct Faulty {
    pub inner: Arc<MallocDevice>,
    pub fail: AtomicBool,
    pub hang: AtomicBool,
    pub reads: AtomicU64,
    /// Each I/O takes 2 ms (so several are outstanding at once).
    pub slow: AtomicBool,
}

impl std::fmt::Debug for Faulty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Faulty")
    }
}

impl Faulty {
    pub fn new() -> Arc<Faulty> {
        Arc::new(Faulty {
            inner: Arc::new(MallocDevice::new("m", SIZE, 512)),
            fail: AtomicBool::new(false),
            hang: AtomicBool::new(false),
            reads: AtomicU64::new(0),
            slow: AtomicBool::new(false),
        })
    }
    fn gate<'a, T: 'a>(&'a self, op: IoKind, f: IoFuture<'a, T>) -> IoFuture<'a, T> {
        Box::pin(async move {
            while self.hang.load(Ordering::SeqCst) {
                reactor::sleep(Duration::from_millis(5)).await;
            }
            if self.slow.load(Ordering::SeqCst) {
                reactor::sleep(Duration::from_millis(2)).await;
            }
            if self.fail.load(Ordering::SeqCst) {
                return Err(BlockError::new(ErrorKind::Io, op, 0, 0));
            }
            f.await
        })
    }
    pub async fn content(&self) -> Vec<u8> {
        self.inner
            .read(0, IoBuf::zeroed(SIZE as usize))
            .await
            .unwrap()
            .to_vec()
    }
}

impl BlockDevice for Faulty {
    fn name(&self) -> &str {
        "faulty"
    }
    fn kind(&self) -> &'static str {
        "test"
    }
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn read(&self, offset: u64, buf: IoBuf) -> IoFuture<'_, IoBuf> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.gate(IoKind::Read, self.inner.read(offset, buf))
    }
    fn write(&self, offset: u64, buf: IoBuf, flags: WriteFlags) -> IoFuture<'_, IoBuf> {
        self.gate(IoKind::Write, self.inner.write(offset, buf, flags))
    }
    fn flush(&self) -> IoFuture<'_, ()> {
        self.gate(IoKind::Flush, self.inner.flush())
    }
    fn unmap(&self, offset: u64, len: u64) -> IoFuture<'_, ()> {
        self.gate(IoKind::Unmap, self.inner.unmap(offset, len))
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> IoFuture<'_, ()> {
        self.gate(
            IoKind::WriteZeroes,
            self.inner.write_zeroes(offset, len, flags),
        )
    }
    fn block_status(&self, offset: u64, len: u64) -> IoFuture<'_, Vec<Extent>> {
        self.gate(IoKind::BlockStatus, self.inner.block_status(offset, len))
    }
}

pub fn pattern(seed: u64, len: usize) -> IoBuf {
    let mut b = IoBuf::zeroed(len);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in b.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    b
}
