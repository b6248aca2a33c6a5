//! A device that keeps volatile and durable writes apart, for crash-consistency tests.
//!
//! Writes land in a volatile list; [`BlockDevice::flush`] (and FUA writes) make them durable.
//! [`CrashDevice::crash_image`] returns what a disk could hold after power loss: the durable
//! image plus any subset of the volatile writes, some of them torn at sector boundaries —
//! chosen by the caller's coin flips so property tests are reproducible.

use std::sync::Mutex;

use crate::{
    BlockDevice, Capabilities, Geometry, IoBuf, IoFuture, IoKind, Result, WriteFlags, ZeroFlags,
    check_range,
};

/// Sector size at which volatile writes may tear.
pub const SECTOR: usize = 512;

/// The crash-simulating RAM device.
pub struct CrashDevice {
    geometry: Mutex<Geometry>,
    durable: Mutex<Vec<u8>>,
    volatile: Mutex<Vec<(u64, Vec<u8>)>>,
    /// (flushes left before the crash, xorshift state for its coin flips)
    armed: Mutex<Option<(u32, u64)>>,
    captured: Mutex<Option<Vec<u8>>>,
}

impl std::fmt::Debug for CrashDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrashDevice")
            .field("size", &self.geometry().size())
            .finish()
    }
}

impl CrashDevice {
    /// A zeroed device of `size` bytes.
    pub fn new(size: u64) -> CrashDevice {
        CrashDevice::from_image(vec![0; size as usize])
    }

    /// A device whose durable contents are `image`.
    pub fn from_image(image: Vec<u8>) -> CrashDevice {
        let geometry = Geometry {
            block_size: SECTOR as u32,
            num_blocks: image.len() as u64 / SECTOR as u64,
            optimal_io: 4096,
            max_io: 32 << 20,
        };
        CrashDevice {
            geometry: Mutex::new(geometry),
            durable: Mutex::new(image),
            volatile: Mutex::new(Vec::new()),
            armed: Mutex::new(None),
            captured: Mutex::new(None),
        }
    }

    /// Grows the device to `size` bytes (a disk or file extended underneath); the new space
    /// reads as zeroes and is durable.
    pub fn grow(&self, size: u64) {
        let mut d = self.durable.lock().expect("lock");
        if size as usize > d.len() {
            d.resize(size as usize, 0);
            self.geometry.lock().expect("lock").num_blocks = size / SECTOR as u64;
        }
    }

    /// Writes not yet flushed.
    pub fn volatile_writes(&self) -> usize {
        self.volatile.lock().expect("lock").len()
    }

    /// The disk after a crash: the durable image with each volatile write kept whole, torn (a
    /// prefix of its sectors) or lost, as `choose(i, sectors)` decides for write `i`:
    /// `sectors` keeps them all, 0 loses it.
    pub fn crash_image(&self, mut choose: impl FnMut(usize, usize) -> usize) -> Vec<u8> {
        let mut img = self.durable.lock().expect("lock").clone();
        for (i, (off, data)) in self.volatile.lock().expect("lock").iter().enumerate() {
            let sectors = data.len().div_ceil(SECTOR);
            let keep = choose(i, sectors).min(sectors) * SECTOR;
            let keep = keep.min(data.len());
            img[*off as usize..*off as usize + keep].copy_from_slice(&data[..keep]);
        }
        img
    }

    /// Arms a crash at the `flushes`-th flush from now (1 = the next): at that moment, before
    /// the flush makes anything durable, the disk a power loss would leave is captured (each
    /// volatile write kept, torn or lost, by a generator seeded with `seed`). The device keeps
    /// working; [`CrashDevice::take_captured`] returns the image.
    pub fn arm(&self, flushes: u32, seed: u64) {
        *self.armed.lock().expect("lock") = Some((flushes.max(1), seed | 1));
    }

    /// The image captured by an armed crash, once it happened.
    pub fn take_captured(&self) -> Option<Vec<u8>> {
        self.captured.lock().expect("lock").take()
    }

    fn flush_point(&self) {
        let mut armed = self.armed.lock().expect("lock");
        let Some((left, mut rng)) = *armed else {
            return;
        };
        if left > 1 {
            *armed = Some((left - 1, rng));
            return;
        }
        *armed = None;
        drop(armed);
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let img = self.crash_image(|_, sectors| match next() % 3 {
            0 => 0,
            1 => sectors,
            _ => (next() % (sectors as u64 + 1)) as usize,
        });
        *self.captured.lock().expect("lock") = Some(img);
    }

    fn persist(&self) {
        self.flush_point();
        let mut d = self.durable.lock().expect("lock");
        for (off, data) in self.volatile.lock().expect("lock").drain(..) {
            d[off as usize..off as usize + data.len()].copy_from_slice(&data);
        }
    }

    fn do_read(&self, offset: u64, mut buf: IoBuf) -> Result<IoBuf> {
        check_range(&self.geometry(), IoKind::Read, offset, buf.len() as u64)?;
        let len = buf.len();
        buf.copy_from_slice(
            &self.durable.lock().expect("lock")[offset as usize..offset as usize + len],
        );
        for (woff, data) in self.volatile.lock().expect("lock").iter() {
            let (s, e) = (
                offset.max(*woff),
                (offset + len as u64).min(woff + data.len() as u64),
            );
            if s < e {
                buf[(s - offset) as usize..(e - offset) as usize]
                    .copy_from_slice(&data[(s - woff) as usize..(e - woff) as usize]);
            }
        }
        Ok(buf)
    }

    fn do_write(&self, op: IoKind, offset: u64, data: Vec<u8>, fua: bool) -> Result<()> {
        check_range(&self.geometry(), op, offset, data.len() as u64)?;
        self.volatile.lock().expect("lock").push((offset, data));
        if fua {
            self.persist();
        }
        Ok(())
    }
}

impl BlockDevice for CrashDevice {
    fn name(&self) -> &str {
        "crash"
    }
    fn kind(&self) -> &'static str {
        "crash"
    }
    fn geometry(&self) -> Geometry {
        *self.geometry.lock().expect("lock")
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            flush: true,
            fua: true,
            unmap: true,
            write_zeroes: true,
            ..Capabilities::default()
        }
    }
    fn read(&self, offset: u64, buf: IoBuf) -> IoFuture<'_, IoBuf> {
        Box::pin(std::future::ready(self.do_read(offset, buf)))
    }
    fn write(&self, offset: u64, buf: IoBuf, flags: WriteFlags) -> IoFuture<'_, IoBuf> {
        let r = self
            .do_write(IoKind::Write, offset, buf.to_vec(), flags.fua)
            .map(|()| buf);
        Box::pin(std::future::ready(r))
    }
    fn flush(&self) -> IoFuture<'_, ()> {
        self.persist();
        Box::pin(std::future::ready(Ok(())))
    }
    fn unmap(&self, offset: u64, len: u64) -> IoFuture<'_, ()> {
        Box::pin(std::future::ready(self.do_write(
            IoKind::Unmap,
            offset,
            vec![0; len as usize],
            false,
        )))
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> IoFuture<'_, ()> {
        Box::pin(std::future::ready(self.do_write(
            IoKind::WriteZeroes,
            offset,
            vec![0; len as usize],
            flags.fua,
        )))
    }
}
