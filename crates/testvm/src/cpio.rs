//! A writer for the `newc` cpio format, the one the kernel unpacks as an initramfs.
//!
//! Each member is a 110-byte ASCII header (`070701` and thirteen 8-digit hex fields), the
//! NUL-terminated name padded to a multiple of four bytes, then the data padded likewise.
//! The archive ends with a member named `TRAILER!!!`. Archives may be concatenated; the
//! kernel unpacks them one after another.

use std::collections::BTreeSet;
use std::io::{self, Write};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Writes a cpio archive; parent directories are added automatically before their members.
#[derive(Debug)]
pub struct Writer<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
    dirs: BTreeSet<String>,
    names: BTreeSet<String>,
}

impl<W: Write> Writer<W> {
    /// A writer appending to `out`.
    pub fn new(out: W) -> Self {
        Writer {
            out,
            written: 0,
            next_ino: 1,
            dirs: BTreeSet::new(),
            names: BTreeSet::new(),
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.written
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.written == 0
    }

    /// Whether `path` (relative, no leading `/`) was already added.
    pub fn contains(&self, path: &str) -> bool {
        let p = path.trim_start_matches('/').trim_end_matches('/');
        self.names.contains(p) || self.dirs.contains(p)
    }

    /// A directory (and its parents).
    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        let p = path
            .trim_start_matches('/')
            .trim_end_matches('/')
            .to_string();
        if p.is_empty() || self.dirs.contains(&p) {
            return Ok(());
        }
        self.parents(&p)?;
        self.member(&p, S_IFDIR | (mode & 0o7777), 2, (0, 0), &[])?;
        self.dirs.insert(p);
        Ok(())
    }

    /// A regular file with `data`.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let p = self.new_name(path)?;
        self.member(&p, S_IFREG | (mode & 0o7777), 1, (0, 0), data)
    }

    /// A symbolic link at `path` pointing to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let p = self.new_name(path)?;
        self.member(&p, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// A character device node.
    pub fn chardev(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        let p = self.new_name(path)?;
        self.member(&p, S_IFCHR | (mode & 0o7777), 1, (major, minor), &[])
    }

    /// Writes the trailer and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.member("TRAILER!!!", 0, 1, (0, 0), &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn new_name(&mut self, path: &str) -> io::Result<String> {
        let p = path.trim_start_matches('/').to_string();
        if p.is_empty() || p.ends_with('/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpio: bad member name {path:?}"),
            ));
        }
        if !self.names.insert(p.clone()) || self.dirs.contains(&p) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("cpio: {path} added twice"),
            ));
        }
        self.parents(&p)?;
        Ok(p)
    }

    fn parents(&mut self, p: &str) -> io::Result<()> {
        if let Some((parent, _)) = p.rsplit_once('/') {
            self.dir(parent, 0o755)?;
        }
        Ok(())
    }

    fn member(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpio: {name} is larger than 4 GiB"),
            )
        })?;
        let namesize = u32::try_from(name.len() + 1)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio: name too long"))?;
        let ino = if name == "TRAILER!!!" {
            0
        } else {
            self.next_ino += 1;
            self.next_ino
        };
        let fields: [u32; 13] = [
            ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
        ];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for f in fields {
            header.push_str(&format!("{f:08X}"));
        }
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0; 3][..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, mode, rdev major, rdev minor, data) of every member, parsed back.
    fn parse(mut b: &[u8]) -> Vec<(String, u32, u32, u32, Vec<u8>)> {
        let total = b.len();
        let mut out = Vec::new();
        loop {
            assert_eq!(&b[..6], b"070701", "magic at {}", total - b.len());
            let field = |i: usize| {
                let s = std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).expect("ascii");
                u32::from_str_radix(s, 16).expect("hex")
            };
            let (mode, size, maj, min, namesize) =
                (field(1), field(6), field(9), field(10), field(11));
            let name = std::str::from_utf8(&b[110..110 + namesize as usize - 1])
                .expect("name")
                .to_string();
            assert_eq!(b[110 + namesize as usize - 1], 0);
            let data_at = (110 + namesize as usize).div_ceil(4) * 4;
            let data = b[data_at..data_at + size as usize].to_vec();
            let next = (data_at + size as usize).div_ceil(4) * 4;
            b = &b[next..];
            if name == "TRAILER!!!" {
                assert!(b.is_empty(), "data after the trailer");
                return out;
            }
            out.push((name, mode, maj, min, data));
        }
    }

    #[test]
    fn round_trip_with_parents_and_padding() {
        let mut w = Writer::new(Vec::new());
        w.file("/a/b/c.txt", 0o644, b"hello").expect("file");
        w.symlink("bin/sh", "busybox").expect("link");
        w.chardev("dev/console", 0o600, 5, 1).expect("dev");
        w.dir("a", 0o700).expect("existing dir is a no-op");
        w.file("x", 0o755, &[7u8; 9]).expect("file");
        assert!(w.contains("a/b") && w.contains("/x") && !w.contains("y"));
        assert!(w.file("x", 0o644, b"").is_err(), "duplicate accepted");
        let out = w.finish().expect("finish");
        assert_eq!(out.len() % 4, 0);
        let m = parse(&out);
        let names: Vec<&str> = m.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "a",
                "a/b",
                "a/b/c.txt",
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "x"
            ]
        );
        assert_eq!(m[0].1, S_IFDIR | 0o755);
        assert_eq!(m[2].1, S_IFREG | 0o644);
        assert_eq!(m[2].4, b"hello");
        assert_eq!(m[4].1, S_IFLNK | 0o777);
        assert_eq!(m[4].4, b"busybox");
        assert_eq!((m[6].1, m[6].2, m[6].3), (S_IFCHR | 0o600, 5, 1));
        assert_eq!(m[7].4, vec![7u8; 9]);
    }

    #[test]
    fn concatenated_archives_stay_aligned() {
        let mut a = Writer::new(Vec::new());
        a.file("one", 0o644, b"1").expect("file");
        let mut buf = a.finish().expect("finish");
        assert_eq!(buf.len() % 4, 0);
        let mut b = Writer::new(Vec::new());
        b.file("two", 0o644, b"22").expect("file");
        buf.extend(b.finish().expect("finish"));
        assert_eq!(buf.len() % 4, 0);
    }
}
