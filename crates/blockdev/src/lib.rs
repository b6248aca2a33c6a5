//! Block devices: the capability traits every Ballast storage object speaks.
//!
//! A [`BlockDevice`] has a [`Geometry`], advertises [`Capabilities`], and performs I/O on
//! owned [`IoBuf`]s: a read takes a buffer whose length says how much to read and gives it
//! back filled; a write takes the data and gives the buffer back once it is durable as far as
//! the flags ask. Optional operations (unmap, write-zeroes, block status, reset) default to
//! [`ErrorKind::Unsupported`], so a backend opts in to what it can do and says so in its
//! capabilities.
//!
//! Devices are `Send + Sync` and shared between reactors; each I/O is submitted on the calling
//! reactor's ring (a file descriptor is usable from every ring), so futures are `!Send` and
//! run where they were created.
//!
//! This crate is the contract and the local backends, chosen by URI ([`open_uri`]):
//! - `uring:///path` or a plain path: a file or block device through io_uring with `O_DIRECT`;
//! - `malloc:///name?size=1GiB`: memory, allocated on first write, reporting holes.
//!
//! Remote devices are the initiator crates' (`initiator-nvme` for `nvmf://`, `initiator-nbd`
//! for `nbd://`); the engine wires URI schemes to their openers.
//!
//! Devices that wrap another implement [`Layer`] rather than [`BlockDevice`]: every
//! operation they do not change is forwarded, so a wrapper cannot forget one. [`Measured`]
//! counts operations and times them; [`fence::HostView`] checks I/O against the device's
//! [`fence::Reservations`], the protocol-neutral fencing state (register, acquire, preempt,
//! release with keys and a holder) that the NVMe/TCP target maps NVMe reservations onto.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use reactor::IoBuf;

#[cfg(feature = "test-utils")]
pub mod crash;
mod error;
#[cfg(feature = "test-utils")]
pub mod fault;
pub mod fence;
mod layer;
#[cfg(feature = "test-utils")]
pub mod loadgen;
pub mod malloc;
mod stats;
pub mod uri;
pub mod uring;

pub use error::{BlockError, ErrorKind, IoKind, Result};
pub use layer::Layer;
pub use stats::{Histogram, Measured, OpCounters, StatsSnapshot};
pub use uri::{DeviceSpec, OpenError, UriError, open_uri};

/// A boxed, reactor-local I/O future.
pub type IoFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + 'a>>;

/// Size and shape of a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Logical block size in bytes: offsets and lengths of I/O are multiples of it.
    pub block_size: u32,
    /// Number of logical blocks.
    pub num_blocks: u64,
    /// Preferred I/O size in bytes (at least the block size).
    pub optimal_io: u32,
    /// Largest single I/O in bytes.
    pub max_io: u32,
}

impl Geometry {
    /// Capacity in bytes.
    pub fn size(&self) -> u64 {
        self.num_blocks * self.block_size as u64
    }
}

/// What a device can do beyond read and write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Has a volatile cache that [`BlockDevice::flush`] persists.
    pub flush: bool,
    /// Supports forced-unit-access writes ([`WriteFlags::fua`]) natively.
    pub fua: bool,
    /// Supports [`BlockDevice::unmap`].
    pub unmap: bool,
    /// Supports [`BlockDevice::write_zeroes`].
    pub write_zeroes: bool,
    /// Write-zeroes can be done without writing data (fast zero).
    pub fast_zero: bool,
    /// Reports allocation through [`BlockDevice::block_status`].
    pub block_status: bool,
    /// Only reads are allowed.
    pub read_only: bool,
    /// Rotational media (seeks are expensive).
    pub rotational: bool,
}

impl Capabilities {
    /// Names of the capabilities that are set, for display.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let pairs = [
            (self.flush, "flush"),
            (self.fua, "fua"),
            (self.unmap, "unmap"),
            (self.write_zeroes, "write_zeroes"),
            (self.fast_zero, "fast_zero"),
            (self.block_status, "block_status"),
            (self.read_only, "read_only"),
            (self.rotational, "rotational"),
        ];
        for (on, name) in pairs {
            if on {
                v.push(name);
            }
        }
        v
    }
}

/// Flags of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct WriteFlags {
    /// Forced unit access: the data is durable when the write completes.
    pub fua: bool,
}

/// Flags of write-zeroes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ZeroFlags {
    /// The range may be deallocated (it must still read as zeroes).
    pub may_unmap: bool,
    /// Fail with [`ErrorKind::NotFast`] rather than write zero bytes slowly.
    pub fast_only: bool,
    /// The zeroes must be durable when the operation completes.
    pub fua: bool,
}

/// Allocation state of an extent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtentState {
    /// Allocated, holding data.
    Data,
    /// Allocated, known to read as zeroes.
    Zero,
    /// Not allocated; reads as zeroes.
    Hole,
}

/// A run of bytes in one allocation state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Start, in bytes.
    pub offset: u64,
    /// Length, in bytes.
    pub len: u64,
    /// Its state.
    pub state: ExtentState,
}

/// A block device.
///
/// All offsets and lengths are in bytes and must be multiples of the block size and inside the
/// device; implementations check with [`check_range`] and fail with `Misaligned` /
/// `OutOfRange`. Futures must be polled on a reactor thread.
pub trait BlockDevice: Send + Sync {
    /// The device's name (unique within an engine).
    fn name(&self) -> &str;
    /// A short name of the backend ("uring", "malloc", ...).
    fn kind(&self) -> &'static str;
    /// Size and shape.
    fn geometry(&self) -> Geometry;
    /// Optional capabilities.
    fn capabilities(&self) -> Capabilities;
    /// Re-reads the size of the storage underneath (a file or disk grown since it was
    /// opened) and returns the geometry from now on. Devices of fixed size return
    /// [`BlockDevice::geometry`].
    fn refresh_size(&self) -> Result<Geometry> {
        Ok(self.geometry())
    }

    /// Reads `buf.len()` bytes at `offset` into `buf`.
    fn read(&self, offset: u64, buf: IoBuf) -> IoFuture<'_, IoBuf>;
    /// Writes `buf` at `offset`.
    fn write(&self, offset: u64, buf: IoBuf, flags: WriteFlags) -> IoFuture<'_, IoBuf>;
    /// Makes every completed write durable.
    fn flush(&self) -> IoFuture<'_, ()>;

    /// Deallocates a range; afterwards it reads as zeroes or as its old data (advisory).
    fn unmap(&self, offset: u64, len: u64) -> IoFuture<'_, ()> {
        unsupported(IoKind::Unmap, offset, len)
    }
    /// Makes a range read as zeroes.
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> IoFuture<'_, ()> {
        let _ = flags;
        unsupported(IoKind::WriteZeroes, offset, len)
    }
    /// Allocation map of `[offset, offset+len)`: extents in order, covering at least the first
    /// byte, at most the range.
    fn block_status(&self, offset: u64, len: u64) -> IoFuture<'_, Vec<Extent>> {
        Box::pin(async move {
            Ok(vec![Extent {
                offset,
                len,
                state: ExtentState::Data,
            }])
        })
    }
    /// Resets the device (drops in-flight state, reconnects).
    fn reset(&self) -> IoFuture<'_, ()> {
        unsupported(IoKind::Reset, 0, 0)
    }
    /// Fences the device for this handle's writer under `key` (a nexus incarnation's epoch;
    /// non-zero): afterwards writes through handles of any other writer fail with
    /// [`ErrorKind::Conflict`], while this one's go on. A newer incarnation fencing with its
    /// own key shuts this one out in turn. Devices that fence by themselves (a remote
    /// namespace, claimed at its target) implement it; local ones are fenced through a
    /// [`fence::HostView`], and return `Unsupported` here.
    fn fence(&self, key: u64) -> IoFuture<'_, ()> {
        let _ = key;
        unsupported(IoKind::Fence, 0, 0)
    }
}

/// A shared device handle.
pub type Device = Arc<dyn BlockDevice>;

fn unsupported<T: 'static>(op: IoKind, offset: u64, len: u64) -> IoFuture<'static, T> {
    Box::pin(async move { Err(BlockError::new(ErrorKind::Unsupported, op, offset, len)) })
}

/// Checks that `[offset, offset+len)` is block-aligned and inside a device of geometry `g`.
pub fn check_range(g: &Geometry, op: IoKind, offset: u64, len: u64) -> Result<()> {
    let bs = g.block_size as u64;
    if !offset.is_multiple_of(bs) || !len.is_multiple_of(bs) {
        return Err(BlockError::new(ErrorKind::Misaligned, op, offset, len));
    }
    match offset.checked_add(len) {
        Some(end) if end <= g.size() => Ok(()),
        _ => Err(BlockError::new(ErrorKind::OutOfRange, op, offset, len)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_checks() {
        let g = Geometry {
            block_size: 512,
            num_blocks: 8,
            optimal_io: 4096,
            max_io: 1 << 20,
        };
        assert!(check_range(&g, IoKind::Read, 0, 4096).is_ok());
        assert_eq!(
            check_range(&g, IoKind::Read, 512, 4096).unwrap_err().kind(),
            ErrorKind::OutOfRange
        );
        assert_eq!(
            check_range(&g, IoKind::Read, 1, 512).unwrap_err().kind(),
            ErrorKind::Misaligned
        );
        assert_eq!(
            check_range(&g, IoKind::Read, u64::MAX - 511, 512)
                .unwrap_err()
                .kind(),
            ErrorKind::OutOfRange
        );
    }
}
