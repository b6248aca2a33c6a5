//! `malloc://`: a RAM device, allocated on first write, that reports holes.

use std::sync::Mutex;

use crate::{
    BlockDevice, Capabilities, Extent, ExtentState, Geometry, IoBuf, IoFuture, IoKind, Result,
    WriteFlags, ZeroFlags, check_range,
};

/// Granularity of allocation: a chunk is allocated on its first write and freed when wholly
/// unmapped or zeroed.
pub const CHUNK: u64 = 64 * 1024;

/// A memory-backed device. Never-written chunks are holes that read as zeroes.
pub struct MallocDevice {
    name: String,
    geometry: Geometry,
    chunks: Vec<Mutex<Option<Box<[u8]>>>>,
}

impl std::fmt::Debug for MallocDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MallocDevice")
            .field("name", &self.name)
            .field("geometry", &self.geometry)
            .finish()
    }
}

impl MallocDevice {
    /// A device of `size` bytes (rounded down to the block size) with `block_size`-byte blocks.
    pub fn new(name: &str, size: u64, block_size: u32) -> MallocDevice {
        let num_blocks = size / block_size as u64;
        let bytes = num_blocks * block_size as u64;
        let n = bytes.div_ceil(CHUNK) as usize;
        MallocDevice {
            name: name.to_string(),
            geometry: Geometry {
                block_size,
                num_blocks,
                optimal_io: CHUNK as u32,
                max_io: 32 << 20,
            },
            chunks: (0..n).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// Bytes currently allocated.
    pub fn allocated(&self) -> u64 {
        self.chunks
            .iter()
            .filter(|c| c.lock().expect("chunk lock").is_some())
            .count() as u64
            * CHUNK
    }

    /// Calls `f(chunk index, offset in chunk, range in request)` for every chunk piece.
    fn pieces(offset: u64, len: u64, mut f: impl FnMut(usize, usize, std::ops::Range<usize>)) {
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let idx = (pos / CHUNK) as usize;
            let within = (pos % CHUNK) as usize;
            let n = (CHUNK - pos % CHUNK).min(end - pos) as usize;
            let r0 = (pos - offset) as usize;
            f(idx, within, r0..r0 + n);
            pos += n as u64;
        }
    }

    fn do_read(&self, offset: u64, mut buf: IoBuf) -> Result<IoBuf> {
        check_range(&self.geometry, IoKind::Read, offset, buf.len() as u64)?;
        Self::pieces(offset, buf.len() as u64, |i, within, r| {
            let chunk = self.chunks[i].lock().expect("chunk lock");
            match chunk.as_ref() {
                Some(c) => buf[r.clone()].copy_from_slice(&c[within..within + r.len()]),
                None => buf[r].fill(0),
            }
        });
        Ok(buf)
    }

    fn do_write(&self, offset: u64, buf: IoBuf) -> Result<IoBuf> {
        check_range(&self.geometry, IoKind::Write, offset, buf.len() as u64)?;
        Self::pieces(offset, buf.len() as u64, |i, within, r| {
            let mut chunk = self.chunks[i].lock().expect("chunk lock");
            let c = chunk.get_or_insert_with(|| vec![0u8; CHUNK as usize].into_boxed_slice());
            c[within..within + r.len()].copy_from_slice(&buf[r]);
        });
        Ok(buf)
    }

    fn do_zero(&self, op: IoKind, offset: u64, len: u64) -> Result<()> {
        check_range(&self.geometry, op, offset, len)?;
        Self::pieces(offset, len, |i, within, r| {
            let mut chunk = self.chunks[i].lock().expect("chunk lock");
            if within == 0 && r.len() as u64 == CHUNK {
                *chunk = None;
            } else if let Some(c) = chunk.as_mut() {
                c[within..within + r.len()].fill(0);
                if c.iter().all(|&b| b == 0) {
                    *chunk = None;
                }
            }
        });
        Ok(())
    }

    fn do_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        check_range(&self.geometry, IoKind::BlockStatus, offset, len)?;
        let mut out: Vec<Extent> = Vec::new();
        Self::pieces(offset, len, |i, _, r| {
            let state = if self.chunks[i].lock().expect("chunk lock").is_some() {
                ExtentState::Data
            } else {
                ExtentState::Hole
            };
            match out.last_mut() {
                Some(last) if last.state == state => last.len += r.len() as u64,
                _ => out.push(Extent {
                    offset: offset + r.start as u64,
                    len: r.len() as u64,
                    state,
                }),
            }
        });
        Ok(out)
    }
}

impl BlockDevice for MallocDevice {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "malloc"
    }
    fn geometry(&self) -> Geometry {
        self.geometry
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            flush: false,
            fua: true,
            unmap: true,
            write_zeroes: true,
            fast_zero: true,
            block_status: true,
            read_only: false,
            rotational: false,
        }
    }
    fn read(&self, offset: u64, buf: IoBuf) -> IoFuture<'_, IoBuf> {
        Box::pin(std::future::ready(self.do_read(offset, buf)))
    }
    fn write(&self, offset: u64, buf: IoBuf, _flags: WriteFlags) -> IoFuture<'_, IoBuf> {
        Box::pin(std::future::ready(self.do_write(offset, buf)))
    }
    fn flush(&self) -> IoFuture<'_, ()> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn unmap(&self, offset: u64, len: u64) -> IoFuture<'_, ()> {
        Box::pin(std::future::ready(self.do_zero(IoKind::Unmap, offset, len)))
    }
    fn write_zeroes(&self, offset: u64, len: u64, _flags: ZeroFlags) -> IoFuture<'_, ()> {
        Box::pin(std::future::ready(self.do_zero(
            IoKind::WriteZeroes,
            offset,
            len,
        )))
    }
    fn block_status(&self, offset: u64, len: u64) -> IoFuture<'_, Vec<Extent>> {
        Box::pin(std::future::ready(self.do_status(offset, len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn holes_data_and_zeroing() {
        let d = MallocDevice::new("m", 1 << 20, 512);
        assert_eq!(
            d.do_status(0, 1 << 20).unwrap(),
            vec![Extent {
                offset: 0,
                len: 1 << 20,
                state: ExtentState::Hole
            }]
        );
        let mut b = IoBuf::zeroed(4096);
        b.fill(0xab);
        d.do_write(CHUNK - 512, b).unwrap();
        let ext = d.do_status(0, 4 * CHUNK).unwrap();
        assert_eq!(
            ext,
            vec![
                Extent {
                    offset: 0,
                    len: 2 * CHUNK,
                    state: ExtentState::Data
                },
                Extent {
                    offset: 2 * CHUNK,
                    len: 2 * CHUNK,
                    state: ExtentState::Hole
                },
            ]
        );
        let r = d.do_read(CHUNK - 1024, IoBuf::zeroed(2048)).unwrap();
        assert!(r[..512].iter().all(|&x| x == 0) && r[512..].iter().all(|&x| x == 0xab));
        d.do_zero(IoKind::Unmap, 0, 2 * CHUNK).unwrap();
        assert_eq!(d.allocated(), 0);
        assert_eq!(d.do_read(0, IoBuf::zeroed(512)).unwrap()[0], 0);
        assert_eq!(
            d.do_read(1 << 20, IoBuf::zeroed(512)).unwrap_err().kind(),
            ErrorKind::OutOfRange
        );
    }
}
