//! One forwarding mechanism for devices that wrap another.
//!
//! A wrapper (statistics, a name, a host's view under fencing, fault injection) implements
//! [`Layer`]: it names the device it wraps ([`Layer::inner`]) and overrides only the
//! operations it changes; every other one forwards to the inner device by default. The one
//! `impl BlockDevice for L: Layer` below lists every [`BlockDevice`] method, and
//! `clippy::missing_trait_methods` is denied on it: a method added to `BlockDevice` fails the
//! lint there until it is added to `Layer` with a forwarding default, so no wrapper can fall
//! back to `BlockDevice`'s default (`Unsupported`) and silently stop forwarding.
//!
//! `Layer`'s methods have `BlockDevice`'s names, so a module that imports both traits sees
//! two candidates for every call on a wrapper: implement it by path
//! (`impl blockdev::Layer for X`) rather than importing it.

use crate::{
    BlockDevice, Capabilities, Extent, Geometry, IoBuf, IoFuture, Result, WriteFlags, ZeroFlags,
};

/// A device that wraps another: everything not overridden goes to [`Layer::inner`].
pub trait Layer: Send + Sync {
    /// The wrapped device.
    fn inner(&self) -> &dyn BlockDevice;

    /// See [`BlockDevice::name`].
    fn name(&self) -> &str {
        self.inner().name()
    }
    /// See [`BlockDevice::kind`].
    fn kind(&self) -> &'static str {
        self.inner().kind()
    }
    /// See [`BlockDevice::geometry`].
    fn geometry(&self) -> Geometry {
        self.inner().geometry()
    }
    /// See [`BlockDevice::capabilities`].
    fn capabilities(&self) -> Capabilities {
        self.inner().capabilities()
    }
    /// See [`BlockDevice::refresh_size`].
    fn refresh_size(&self) -> Result<Geometry> {
        self.inner().refresh_size()
    }
    /// See [`BlockDevice::read`].
    fn read(&self, offset: u64, buf: IoBuf) -> IoFuture<'_, IoBuf> {
        self.inner().read(offset, buf)
    }
    /// See [`BlockDevice::write`].
    fn write(&self, offset: u64, buf: IoBuf, flags: WriteFlags) -> IoFuture<'_, IoBuf> {
        self.inner().write(offset, buf, flags)
    }
    /// See [`BlockDevice::flush`].
    fn flush(&self) -> IoFuture<'_, ()> {
        self.inner().flush()
    }
    /// See [`BlockDevice::unmap`].
    fn unmap(&self, offset: u64, len: u64) -> IoFuture<'_, ()> {
        self.inner().unmap(offset, len)
    }
    /// See [`BlockDevice::write_zeroes`].
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> IoFuture<'_, ()> {
        self.inner().write_zeroes(offset, len, flags)
    }
    /// See [`BlockDevice::block_status`].
    fn block_status(&self, offset: u64, len: u64) -> IoFuture<'_, Vec<Extent>> {
        self.inner().block_status(offset, len)
    }
    /// See [`BlockDevice::reset`].
    fn reset(&self) -> IoFuture<'_, ()> {
        self.inner().reset()
    }
    /// See [`BlockDevice::fence`].
    fn fence(&self, key: u64) -> IoFuture<'_, ()> {
        self.inner().fence(key)
    }
}

#[deny(clippy::missing_trait_methods)]
impl<L: Layer> BlockDevice for L {
    fn name(&self) -> &str {
        Layer::name(self)
    }
    fn kind(&self) -> &'static str {
        Layer::kind(self)
    }
    fn geometry(&self) -> Geometry {
        Layer::geometry(self)
    }
    fn capabilities(&self) -> Capabilities {
        Layer::capabilities(self)
    }
    fn refresh_size(&self) -> Result<Geometry> {
        Layer::refresh_size(self)
    }
    fn read(&self, offset: u64, buf: IoBuf) -> IoFuture<'_, IoBuf> {
        Layer::read(self, offset, buf)
    }
    fn write(&self, offset: u64, buf: IoBuf, flags: WriteFlags) -> IoFuture<'_, IoBuf> {
        Layer::write(self, offset, buf, flags)
    }
    fn flush(&self) -> IoFuture<'_, ()> {
        Layer::flush(self)
    }
    fn unmap(&self, offset: u64, len: u64) -> IoFuture<'_, ()> {
        Layer::unmap(self, offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> IoFuture<'_, ()> {
        Layer::write_zeroes(self, offset, len, flags)
    }
    fn block_status(&self, offset: u64, len: u64) -> IoFuture<'_, Vec<Extent>> {
        Layer::block_status(self, offset, len)
    }
    fn reset(&self) -> IoFuture<'_, ()> {
        Layer::reset(self)
    }
    fn fence(&self, key: u64) -> IoFuture<'_, ()> {
        Layer::fence(self, key)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::{Device, ErrorKind};

    /// Records which operations reach it; every one succeeds.
    #[derive(Default)]
    struct Probe {
        seen: AtomicU32,
    }

    const ALL: u32 = (1 << 13) - 1;

    impl Probe {
        fn saw(&self, bit: u32) {
            self.seen.fetch_or(1 << bit, Ordering::Relaxed);
        }
        fn done<T: 'static>(&self, bit: u32, v: T) -> IoFuture<'_, T> {
            self.saw(bit);
            Box::pin(std::future::ready(Ok(v)))
        }
    }

    impl BlockDevice for Probe {
        fn name(&self) -> &str {
            self.saw(0);
            "probe"
        }
        fn kind(&self) -> &'static str {
            self.saw(1);
            "probe"
        }
        fn geometry(&self) -> Geometry {
            self.saw(2);
            Geometry {
                block_size: 512,
                num_blocks: 8,
                optimal_io: 512,
                max_io: 4096,
            }
        }
        fn capabilities(&self) -> Capabilities {
            self.saw(3);
            Capabilities::default()
        }
        fn refresh_size(&self) -> Result<Geometry> {
            self.saw(4);
            Ok(BlockDevice::geometry(self))
        }
        fn read(&self, _: u64, buf: IoBuf) -> IoFuture<'_, IoBuf> {
            self.done(5, buf)
        }
        fn write(&self, _: u64, buf: IoBuf, _: WriteFlags) -> IoFuture<'_, IoBuf> {
            self.done(6, buf)
        }
        fn flush(&self) -> IoFuture<'_, ()> {
            self.done(7, ())
        }
        fn unmap(&self, _: u64, _: u64) -> IoFuture<'_, ()> {
            self.done(8, ())
        }
        fn write_zeroes(&self, _: u64, _: u64, _: ZeroFlags) -> IoFuture<'_, ()> {
            self.done(9, ())
        }
        fn block_status(&self, _: u64, _: u64) -> IoFuture<'_, Vec<Extent>> {
            self.done(10, Vec::new())
        }
        fn reset(&self) -> IoFuture<'_, ()> {
            self.done(11, ())
        }
        fn fence(&self, _: u64) -> IoFuture<'_, ()> {
            self.done(12, ())
        }
    }

    struct Bare(Arc<Probe>);

    impl Layer for Bare {
        fn inner(&self) -> &dyn BlockDevice {
            &*self.0
        }
    }

    /// Calls every operation of `dev` and fails on any error.
    async fn call_every_operation(dev: &dyn BlockDevice) -> Result<()> {
        let _ = (dev.name(), dev.kind(), dev.geometry(), dev.capabilities());
        dev.refresh_size()?;
        dev.read(0, IoBuf::zeroed(512)).await?;
        dev.write(0, IoBuf::zeroed(512), WriteFlags::default())
            .await?;
        dev.flush().await?;
        dev.unmap(0, 512).await?;
        dev.write_zeroes(0, 512, ZeroFlags::default()).await?;
        dev.block_status(0, 512).await?;
        dev.reset().await?;
        dev.fence(1).await
    }

    #[test]
    fn a_layer_that_overrides_nothing_forwards_every_operation() {
        reactor::testing::run_on_reactor(std::time::Duration::from_secs(10), || async {
            let probe = Arc::new(Probe::default());
            let dev: Device = Arc::new(Bare(probe.clone()));
            call_every_operation(&*dev).await.unwrap();
            assert_eq!(
                probe.seen.load(Ordering::Relaxed),
                ALL,
                "an operation was not forwarded"
            );
            // The probe itself is no layer: a plain device keeps BlockDevice's defaults.
            assert_eq!(
                crate::malloc::MallocDevice::new("m", 4096, 512)
                    .fence(1)
                    .await
                    .unwrap_err()
                    .kind(),
                ErrorKind::Unsupported
            );
        });
    }

    #[test]
    fn measured_forwards_every_operation() {
        reactor::testing::run_on_reactor(std::time::Duration::from_secs(10), || async {
            let probe = Arc::new(Probe::default());
            let dev = crate::Measured::new(probe.clone());
            call_every_operation(&dev).await.unwrap();
            assert_eq!(probe.seen.load(Ordering::Relaxed), ALL);
            let s = dev.snapshot();
            assert_eq!((s.read.0, s.write.0, s.flush.0), (1, 1, 1));
        });
    }
}
