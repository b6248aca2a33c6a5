//! A RAM device that fails on demand, for the target crates' in-process tests (both include
//! this file): errors of a chosen `blockdev::ErrorKind` reach the protocol's error mapping.

use std::sync::Mutex;

use blockdev::malloc::MallocDevice;
use blockdev::{
    BlockDevice, BlockError, Capabilities, ErrorKind, Geometry, IoBuf, IoFuture, IoKind, WriteFlags,
};

/// A RAM device whose reads, writes and flushes fail with `fail`'s kind while it is set.
pub struct Failing {
    inner: MallocDevice,
    /// The kind every I/O fails with; `None`: I/O succeeds.
    pub fail: Mutex<Option<ErrorKind>>,
}

impl Failing {
    /// A RAM device of `size` bytes in blocks of `block_size`.
    pub fn new(name: &str, size: u64, block_size: u32) -> Failing {
        Failing {
            inner: MallocDevice::new(name, size, block_size),
            fail: Mutex::new(None),
        }
    }
}

impl Failing {
    fn check(&self, op: IoKind, offset: u64, len: u64) -> Result<(), BlockError> {
        match *self.fail.lock().unwrap() {
            Some(kind) => Err(BlockError::new(kind, op, offset, len)),
            None => Ok(()),
        }
    }
}

impl BlockDevice for Failing {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn kind(&self) -> &'static str {
        "failing"
    }
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn read(&self, offset: u64, buf: IoBuf) -> IoFuture<'_, IoBuf> {
        Box::pin(async move {
            self.check(IoKind::Read, offset, buf.len() as u64)?;
            self.inner.read(offset, buf).await
        })
    }
    fn write(&self, offset: u64, buf: IoBuf, flags: WriteFlags) -> IoFuture<'_, IoBuf> {
        Box::pin(async move {
            self.check(IoKind::Write, offset, buf.len() as u64)?;
            self.inner.write(offset, buf, flags).await
        })
    }
    fn flush(&self) -> IoFuture<'_, ()> {
        Box::pin(async move {
            self.check(IoKind::Flush, 0, 0)?;
            self.inner.flush().await
        })
    }
}
