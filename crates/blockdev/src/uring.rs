//! `uring://`: a file or raw block device through io_uring with `O_DIRECT`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use reactor::op;

use crate::{
    BlockDevice, BlockError, Capabilities, ErrorKind, Extent, ExtentState, Geometry, IoBuf,
    IoFuture, IoKind, Result, WriteFlags, ZeroFlags, check_range,
};

/// How to open a [`UringDevice`].
#[derive(Clone, Debug, Default)]
pub struct OpenFlags {
    /// Open read-only.
    pub read_only: bool,
    /// Create a regular file of this size if missing, or grow a smaller one to it.
    pub size: Option<u64>,
    /// Bypass the page cache (`O_DIRECT`); falls back to buffered I/O where unsupported.
    pub direct: bool,
}

/// A file or block device served through the calling reactor's ring.
#[derive(Debug)]
pub struct UringDevice {
    name: String,
    path: PathBuf,
    file: File,
    geometry: Geometry,
    /// Blocks now: the size may grow underneath (`refresh_size`).
    num_blocks: std::sync::atomic::AtomicU64,
    block_device: bool,
    direct: bool,
    read_only: bool,
}

const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKSSZGET: libc::c_ulong = 0x1268;
const BLKDISCARD: libc::c_ulong = 0x1277;
const BLKZEROOUT: libc::c_ulong = 0x127f;

fn ioctl_range(file: &File, req: libc::c_ulong, offset: u64, len: u64) -> io::Result<()> {
    let range: [u64; 2] = [offset, len];
    // SAFETY: BLKDISCARD/BLKZEROOUT read a [u64; 2] from the pointer, which is live here.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), req, range.as_ptr()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl UringDevice {
    /// Opens `path` as device `name`.
    pub fn open(name: &str, path: &Path, flags: &OpenFlags) -> Result<UringDevice> {
        let open_err = |e: io::Error| BlockError::from_io(IoKind::Open, 0, 0, e);
        let meta = std::fs::metadata(path);
        let is_blk = meta
            .as_ref()
            .map(|m| m.file_type().is_block_device())
            .unwrap_or(false);
        if let (Err(e), None) = (&meta, flags.size) {
            return Err(open_err(io::Error::new(e.kind(), e.to_string())));
        }
        let mut direct = flags.direct;
        let open = |direct: bool| {
            let mut o = OpenOptions::new();
            o.read(true).write(!flags.read_only);
            if !is_blk && flags.size.is_some() && !flags.read_only {
                o.create(true);
            }
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(path)
        };
        let file = match open(direct) {
            Ok(f) => f,
            Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                direct = false;
                open(false).map_err(open_err)?
            }
            Err(e) => return Err(open_err(e)),
        };
        let (size, block_size) = if is_blk {
            let mut size: u64 = 0;
            // SAFETY: BLKGETSIZE64 writes a u64 through the pointer, which is live here.
            if unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size) } < 0 {
                return Err(open_err(io::Error::last_os_error()));
            }
            let mut ss: libc::c_int = 512;
            // SAFETY: BLKSSZGET writes an int through the pointer, which is live here.
            unsafe { libc::ioctl(file.as_raw_fd(), BLKSSZGET, &mut ss) };
            (size, ss as u32)
        } else {
            let mut len = file.metadata().map_err(open_err)?.len();
            if let Some(want) = flags.size
                && len < want
                && !flags.read_only
            {
                file.set_len(want).map_err(open_err)?;
                len = want;
            }
            (
                len,
                if direct {
                    probe_direct_block_size(&file)
                } else {
                    512
                },
            )
        };
        Ok(UringDevice {
            name: name.to_string(),
            path: path.to_path_buf(),
            file,
            geometry: Geometry {
                block_size,
                num_blocks: size / block_size as u64,
                optimal_io: 128 * 1024,
                max_io: 32 << 20,
            },
            num_blocks: std::sync::atomic::AtomicU64::new(size / block_size as u64),
            block_device: is_blk,
            direct,
            read_only: flags.read_only,
        })
    }

    /// The path opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether I/O bypasses the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    fn fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    fn ro_check(&self, op: IoKind, offset: u64, len: u64) -> Result<()> {
        if self.read_only {
            return Err(BlockError::new(ErrorKind::ReadOnly, op, offset, len));
        }
        Ok(())
    }

    async fn do_read(&self, offset: u64, buf: IoBuf) -> Result<IoBuf> {
        let len = buf.len();
        check_range(&self.geometry(), IoKind::Read, offset, len as u64)?;
        let err = |e| BlockError::from_io(IoKind::Read, offset, len as u64, e);
        let (r, mut buf) = op::read_at(self.fd(), offset, buf).await;
        let mut done = r.map_err(err)?;
        // Short reads are rare (end of a file that shrank underneath us): finish through a
        // bounce buffer, and treat end of file as zeroes.
        while done < len {
            let (r, tail) =
                op::read_at(self.fd(), offset + done as u64, IoBuf::zeroed(len - done)).await;
            let m = r.map_err(err)?;
            if m == 0 {
                buf[done..].fill(0);
                break;
            }
            buf[done..done + m].copy_from_slice(&tail[..m]);
            done += m;
        }
        Ok(buf)
    }

    async fn do_write(&self, offset: u64, buf: IoBuf, flags: WriteFlags) -> Result<IoBuf> {
        let len = buf.len() as u64;
        self.ro_check(IoKind::Write, offset, len)?;
        check_range(&self.geometry(), IoKind::Write, offset, len)?;
        let rw = if flags.fua { libc::RWF_DSYNC } else { 0 };
        let (r, buf) = op::write_at(self.fd(), offset, buf, rw).await;
        match r {
            Ok(n) if n as u64 == len => Ok(buf),
            Ok(n) => {
                // A short write: finish it from a copy of the rest.
                let rest = IoBuf::from_slice(&buf[n..]);
                let (r2, _) = op::write_at(self.fd(), offset + n as u64, rest, rw).await;
                match r2 {
                    Ok(m) if n + m == buf.len() => Ok(buf),
                    Ok(_) => Err(BlockError::new(ErrorKind::Io, IoKind::Write, offset, len)),
                    Err(e) => Err(BlockError::from_io(IoKind::Write, offset, len, e)),
                }
            }
            Err(e) => Err(BlockError::from_io(IoKind::Write, offset, len, e)),
        }
    }

    async fn do_flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        op::fsync(self.fd(), true)
            .await
            .map_err(|e| BlockError::from_io(IoKind::Flush, 0, 0, e))
    }

    async fn do_unmap(&self, offset: u64, len: u64) -> Result<()> {
        self.ro_check(IoKind::Unmap, offset, len)?;
        check_range(&self.geometry(), IoKind::Unmap, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let r = if self.block_device {
            ioctl_range(&self.file, BLKDISCARD, offset, len)
        } else {
            op::fallocate(
                self.fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
            .await
        };
        r.map_err(|e| BlockError::from_io(IoKind::Unmap, offset, len, e))
    }

    async fn do_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> Result<()> {
        self.ro_check(IoKind::WriteZeroes, offset, len)?;
        check_range(&self.geometry(), IoKind::WriteZeroes, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let err = |e| BlockError::from_io(IoKind::WriteZeroes, offset, len, e);
        let fast = if self.block_device {
            ioctl_range(&self.file, BLKZEROOUT, offset, len)
        } else {
            let mode = if flags.may_unmap {
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
            } else {
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
            };
            op::fallocate(self.fd(), mode, offset, len).await
        };
        match fast {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                if flags.fast_only {
                    return Err(BlockError::new(
                        ErrorKind::NotFast,
                        IoKind::WriteZeroes,
                        offset,
                        len,
                    ));
                }
                let chunk = 1u64 << 20;
                let mut pos = offset;
                while pos < offset + len {
                    let n = chunk.min(offset + len - pos);
                    let (r, _) = op::write_at(self.fd(), pos, IoBuf::zeroed(n as usize), 0).await;
                    r.map_err(err)?;
                    pos += n;
                }
            }
            Err(e) => return Err(err(e)),
        }
        if flags.fua {
            self.do_flush().await?;
        }
        Ok(())
    }

    fn do_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        check_range(&self.geometry(), IoKind::BlockStatus, offset, len)?;
        let end = offset + len;
        if self.block_device {
            return Ok(vec![Extent {
                offset,
                len,
                state: ExtentState::Data,
            }]);
        }
        let seek = |pos: u64, whence: i32| -> Option<u64> {
            // SAFETY: lseek on our own descriptor; SEEK_DATA/SEEK_HOLE do not move data.
            let r = unsafe { libc::lseek(self.fd(), pos as libc::off_t, whence) };
            if r < 0 { None } else { Some(r as u64) }
        };
        let bs = self.geometry.block_size as u64;
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end && out.len() < 1024 {
            // ENXIO from SEEK_DATA: no data after pos, the rest is a hole.
            let data = seek(pos, libc::SEEK_DATA).unwrap_or(end).min(end);
            if data > pos {
                // Round the hole inwards to whole blocks; a partial block is data.
                let hole_end = (data / bs * bs).max(pos);
                if hole_end > pos {
                    out.push(Extent {
                        offset: pos,
                        len: hole_end - pos,
                        state: ExtentState::Hole,
                    });
                }
                if hole_end < data {
                    out.push(Extent {
                        offset: hole_end,
                        len: data - hole_end,
                        state: ExtentState::Data,
                    });
                }
                pos = data;
                continue;
            }
            let hole = seek(pos, libc::SEEK_HOLE).unwrap_or(end).min(end);
            let hole = hole.div_ceil(bs) * bs;
            let hole = hole.clamp(pos + bs, end.max(pos + bs)).min(end);
            match out.last_mut() {
                Some(last) if last.state == ExtentState::Data && last.offset + last.len == pos => {
                    last.len += hole - pos
                }
                _ => out.push(Extent {
                    offset: pos,
                    len: hole - pos,
                    state: ExtentState::Data,
                }),
            }
            pos = hole;
        }
        Ok(out)
    }
}

fn probe_direct_block_size(file: &File) -> u32 {
    let mut buf = IoBuf::zeroed(512);
    // SAFETY: pread into a live, 4096-aligned buffer of 512 bytes we own.
    let r = unsafe { libc::pread(file.as_raw_fd(), buf.as_mut_ptr().cast(), 512, 0) };
    if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        4096
    } else {
        512
    }
}

impl BlockDevice for UringDevice {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "uring"
    }
    fn geometry(&self) -> Geometry {
        Geometry {
            num_blocks: self.num_blocks.load(std::sync::atomic::Ordering::Relaxed),
            ..self.geometry
        }
    }
    fn refresh_size(&self) -> Result<Geometry> {
        let err = |e: io::Error| BlockError::from_io(IoKind::Open, 0, 0, e);
        let size = if self.block_device {
            let mut size: u64 = 0;
            // SAFETY: BLKGETSIZE64 writes a u64 through the pointer, which is live here.
            if unsafe { libc::ioctl(self.file.as_raw_fd(), BLKGETSIZE64, &mut size) } < 0 {
                return Err(err(io::Error::last_os_error()));
            }
            size
        } else {
            self.file.metadata().map_err(err)?.len()
        };
        self.num_blocks.store(
            size / self.geometry.block_size as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(self.geometry())
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            flush: true,
            fua: true,
            unmap: !self.read_only,
            write_zeroes: !self.read_only,
            fast_zero: !self.read_only && !self.block_device,
            block_status: !self.block_device,
            read_only: self.read_only,
            rotational: false,
        }
    }
    fn read(&self, offset: u64, buf: IoBuf) -> IoFuture<'_, IoBuf> {
        Box::pin(self.do_read(offset, buf))
    }
    fn write(&self, offset: u64, buf: IoBuf, flags: WriteFlags) -> IoFuture<'_, IoBuf> {
        Box::pin(self.do_write(offset, buf, flags))
    }
    fn flush(&self) -> IoFuture<'_, ()> {
        Box::pin(self.do_flush())
    }
    fn unmap(&self, offset: u64, len: u64) -> IoFuture<'_, ()> {
        Box::pin(self.do_unmap(offset, len))
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> IoFuture<'_, ()> {
        Box::pin(self.do_zeroes(offset, len, flags))
    }
    fn block_status(&self, offset: u64, len: u64) -> IoFuture<'_, Vec<Extent>> {
        Box::pin(std::future::ready(self.do_status(offset, len)))
    }
}
