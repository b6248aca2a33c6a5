//! Is a device blank? What its head holds, before `pool create` formats it.
//!
//! Formatting writes the superblocks, a checkpoint and the journal head over the start of a
//! device, so formatting a device that holds someone's file system, partition table or volume
//! destroys it. [`identify`] looks at the device's first [`HEAD_BYTES`] for the signatures
//! libblkid and `wipefs` know (the offsets and magics below are theirs, from the formats'
//! own specifications), and failing those for any byte that is not zero. A device is blank
//! when its head is all zeroes: a new sparse file, a new thin LUN, a disk cleared with
//! `blkdiscard -z` or `wipefs -a` plus zeroing, a destroyed pool ([`crate::pool::Pool::wipe`]
//! zeroes the head).
//!
//! The head is 1 MiB: every signature below lies inside it (the furthest are the ZFS
//! uberblocks at 128 KiB and the ISO 9660 descriptor at 32 KiB), and partitioning tools align
//! the first partition at 1 MiB, so a partitioned disk's first partition begins just past it
//! (its table, and a GRUB core image after the MBR, lie inside). Signatures at a device's end
//! (md RAID 0.90/1.0 superblocks, the backup GPT) are not looked for: a device whose head
//! is zero but whose tail holds one of them is taken for blank.

use blockdev::{BlockError, Device, IoBuf};

/// How much of a device's start is examined: 1 MiB.
pub const HEAD_BYTES: usize = 1 << 20;

/// What a device's head holds that is not ours to overwrite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Foreign {
    /// A known signature.
    Signature {
        /// What it is, e.g. "an ext4 file system".
        what: &'static str,
        /// Byte offset of the magic on the device.
        offset: u64,
    },
    /// No known signature, but data: the first byte that is not zero.
    Data {
        /// Its offset.
        offset: u64,
    },
}

impl std::fmt::Display for Foreign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Foreign::Signature { what, offset } => {
                write!(f, "found {what} signature at offset {offset}")
            }
            Foreign::Data { offset } => write!(
                f,
                "found data at offset {offset} (no known signature; the first {} KiB of a \
                 blank device are zeroes)",
                HEAD_BYTES / 1024
            ),
        }
    }
}

/// A magic string at a fixed offset.
struct Magic {
    what: &'static str,
    offset: usize,
    bytes: &'static [u8],
}

const fn magic(what: &'static str, offset: usize, bytes: &'static [u8]) -> Magic {
    Magic {
        what,
        offset,
        bytes,
    }
}

/// Signatures at fixed offsets, in the order they are looked for: the more specific first
/// (a FAT or NTFS boot sector also ends in 0x55AA, a protective MBR precedes a GPT header).
const MAGICS: &[Magic] = &[
    // Our own format, in case only part of it is left (the superblocks are checked apart).
    magic("a Ballast pool superblock", 0, b"BALLASTP"),
    magic("a Ballast pool checkpoint", 8192, b"BALLASTC"),
    // XFS: the superblock's sb_magicnum "XFSB" at 0 (xfs_format.h).
    magic("an XFS file system", 0, b"XFSB"),
    // Btrfs: the superblock at 64 KiB, its magic "_BHRfS_M" at offset 0x40 in it.
    magic("a Btrfs file system", 0x10040, b"_BHRfS_M"),
    // LUKS1 and LUKS2: "LUKS\xba\xbe" at 0 (cryptsetup's on-disk format specifications).
    magic("a LUKS encrypted volume", 0, b"LUKS\xba\xbe"),
    // LUKS2 secondary header at 16 KiB (its smallest position).
    magic("a LUKS2 encrypted volume", 0x4000, b"SKUL\xba\xbe"),
    // F2FS: 0xF2F52010 (LE) at 1 KiB.
    magic("an F2FS file system", 1024, b"\x10\x20\xf5\xf2"),
    // bcache: the superblock at 4 KiB, its 16-byte magic at offset 24 in it.
    magic(
        "a bcache device",
        4096 + 24,
        b"\xc6\x85\x73\xf6\x4e\x1a\x45\xca\x82\x65\xf5\x7f\x48\xba\x6d\x81",
    ),
    // Linux md RAID superblock v1.1 (at 0) and v1.2 (at 4 KiB): 0xa92b4efc LE.
    magic("a Linux md RAID member", 0, b"\xfc\x4e\x2b\xa9"),
    magic("a Linux md RAID member", 4096, b"\xfc\x4e\x2b\xa9"),
    // Ceph BlueStore: its label text at 0.
    magic("a Ceph BlueStore device", 0, b"bluestore block device"),
    // ISO 9660: the primary volume descriptor at 32 KiB + 1: "CD001".
    magic("an ISO 9660 file system", 0x8001, b"CD001"),
    // Swap: "SWAPSPACE2" (or the old "SWAP-SPACE") ending a page; pages of 4, 8, 16, 64 KiB.
    magic("a Linux swap area", 4096 - 10, b"SWAPSPACE2"),
    magic("a Linux swap area", 8192 - 10, b"SWAPSPACE2"),
    magic("a Linux swap area", 16384 - 10, b"SWAPSPACE2"),
    magic("a Linux swap area", 65536 - 10, b"SWAPSPACE2"),
    magic("a Linux swap area", 4096 - 10, b"SWAP-SPACE"),
    // Disk images in a file: qcow2 "QFI\xfb", VMDK "KDMV", VHDX "vhdxfile", VDI.
    magic("a qcow2 image", 0, b"QFI\xfb"),
    magic("a VMDK image", 0, b"KDMV"),
    magic("a VHDX image", 0, b"vhdxfile"),
    // NTFS and exFAT: the OEM name at 3; FAT: the file-system type at 54 (FAT12/16) or 82
    // (FAT32). These boot sectors end in 0x55AA too, so they come before the MBR.
    magic("an NTFS file system", 3, b"NTFS    "),
    magic("an exFAT file system", 3, b"EXFAT   "),
    magic("a FAT file system", 54, b"FAT1"),
    magic("a FAT32 file system", 82, b"FAT32   "),
    // GPT: the header's "EFI PART" in LBA 1, for 512- and 4096-byte sectors.
    magic("a GPT partition table", 512, b"EFI PART"),
    magic("a GPT partition table", 4096, b"EFI PART"),
];

/// What `head` (a device's first bytes, at most [`HEAD_BYTES`] are looked at) holds: a known
/// signature, else the first non-zero byte, else nothing (blank).
pub fn identify(head: &[u8]) -> Option<Foreign> {
    let head = &head[..head.len().min(HEAD_BYTES)];
    signature(head).or_else(|| {
        head.iter()
            .position(|&b| b != 0)
            .map(|at| Foreign::Data { offset: at as u64 })
    })
}

/// The first known signature in `head`.
fn signature(head: &[u8]) -> Option<Foreign> {
    let at = |offset: usize, len: usize| head.get(offset..offset + len);
    let found = |what, offset: usize| {
        Some(Foreign::Signature {
            what,
            offset: offset as u64,
        })
    };
    for m in MAGICS {
        if at(m.offset, m.bytes.len()) == Some(m.bytes) {
            return found(m.what, m.offset);
        }
    }
    if let Some(what) = ext_kind(head) {
        return found(what, EXT_MAGIC);
    }
    // LVM2: the label "LABELONE" in one of the first four sectors, "LVM2 001" 24 bytes on.
    for sector in 0..4 {
        let o = sector * 512;
        if at(o, 8) == Some(b"LABELONE") && at(o + 24, 8) == Some(b"LVM2 001") {
            return found("an LVM2 physical volume", o);
        }
    }
    // ZFS: uberblocks (magic 0x00bab10c, either byte order) from 128 KiB in label 0.
    for o in (0x20000..0x40000).step_by(1024) {
        if matches!(
            at(o, 8),
            Some(b"\x0c\xb1\xba\0\0\0\0\0" | b"\0\0\0\0\0\xba\xb1\x0c")
        ) {
            return found("a ZFS pool member", o);
        }
    }
    // A DOS partition table (MBR) or any boot sector: 0x55AA ending sector 0.
    if at(510, 2) == Some(b"\x55\xaa") {
        return found("a DOS partition table (MBR) or boot sector", 510);
    }
    None
}

/// Where the ext2/3/4 superblock's `s_magic` (0xEF53, LE) lies: 1024 + 56.
const EXT_MAGIC: usize = 1080;

/// Which ext file system the superblock at 1 KiB describes, if any: ext4 when it uses a
/// feature ext3 lacks (extents, 64-bit, flex_bg; huge files, group checksums, ...), ext3
/// when it has a journal, else ext2 (the rules of libblkid's `probe_ext4`/`probe_ext3`).
fn ext_kind(head: &[u8]) -> Option<&'static str> {
    if head.get(EXT_MAGIC..EXT_MAGIC + 2) != Some(&[0x53, 0xef]) {
        return None;
    }
    let le32 = |o: usize| {
        head.get(1024 + o..1024 + o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0)
    };
    let (compat, incompat, ro_compat) = (le32(0x5c), le32(0x60), le32(0x64));
    const HAS_JOURNAL: u32 = 0x4;
    const EXT3_INCOMPAT: u32 = 0x2 | 0x4 | 0x10; // filetype, recover, meta_bg
    const EXT3_RO_COMPAT: u32 = 0x1 | 0x2 | 0x4; // sparse_super, large_file, btree_dir
    Some(
        if incompat & !EXT3_INCOMPAT != 0 || ro_compat & !EXT3_RO_COMPAT != 0 {
            "an ext4 file system"
        } else if compat & HAS_JOURNAL != 0 {
            "an ext3 file system"
        } else {
            "an ext2 file system"
        },
    )
}

/// Reads `dev`'s head (its first [`HEAD_BYTES`], or all of a smaller device, in whole blocks)
/// and says what it holds ([`identify`]); `None`: blank.
pub async fn probe(dev: &Device) -> Result<Option<Foreign>, BlockError> {
    let g = dev.geometry();
    let bs = g.block_size.max(1) as u64;
    let len = (HEAD_BYTES as u64).min(g.size() / bs * bs);
    if len == 0 {
        return Ok(None);
    }
    let head = dev.read(0, IoBuf::zeroed(len as usize)).await?;
    Ok(identify(&head))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(offset: usize, bytes: &[u8]) -> Vec<u8> {
        let mut head = vec![0u8; HEAD_BYTES];
        head[offset..offset + bytes.len()].copy_from_slice(bytes);
        head
    }

    fn sig(head: &[u8]) -> (&'static str, u64) {
        match identify(head) {
            Some(Foreign::Signature { what, offset }) => (what, offset),
            other => panic!("expected a signature, found {other:?}"),
        }
    }

    #[test]
    fn zeroes_are_blank_whatever_their_length() {
        assert_eq!(identify(&vec![0u8; HEAD_BYTES]), None);
        assert_eq!(identify(&vec![0u8; 4096]), None);
        assert_eq!(identify(&[]), None);
        // Past the head nothing is looked at.
        let mut long = vec![0u8; HEAD_BYTES + 4096];
        long[HEAD_BYTES + 1] = 1;
        assert_eq!(identify(&long), None);
    }

    #[test]
    fn data_without_a_signature_is_named_by_its_first_byte() {
        let head = with(12345, b"hello");
        assert_eq!(identify(&head), Some(Foreign::Data { offset: 12345 }));
        assert_eq!(
            identify(&head).unwrap().to_string(),
            "found data at offset 12345 (no known signature; the first 1024 KiB of a blank \
             device are zeroes)"
        );
    }

    #[test]
    fn documented_magics_at_documented_offsets_are_named() {
        assert_eq!(sig(&with(0, b"XFSB")), ("an XFS file system", 0));
        assert_eq!(
            sig(&with(0x10040, b"_BHRfS_M")),
            ("a Btrfs file system", 65600)
        );
        assert_eq!(
            sig(&with(0, b"LUKS\xba\xbe\0\x02")),
            ("a LUKS encrypted volume", 0)
        );
        assert_eq!(sig(&with(510, b"\x55\xaa")).1, 510);
        let mut gpt = with(510, b"\x55\xaa");
        gpt[512..520].copy_from_slice(b"EFI PART");
        assert_eq!(sig(&gpt), ("a GPT partition table", 512));
        let mut lvm = with(512, b"LABELONE");
        lvm[512 + 24..512 + 32].copy_from_slice(b"LVM2 001");
        assert_eq!(sig(&lvm), ("an LVM2 physical volume", 512));
        assert_eq!(
            sig(&with(4096, b"\xfc\x4e\x2b\xa9")),
            ("a Linux md RAID member", 4096)
        );
        assert_eq!(
            sig(&with(0x8001, b"CD001")),
            ("an ISO 9660 file system", 32769)
        );
        assert_eq!(
            sig(&with(0x20000 + 3 * 1024, b"\x0c\xb1\xba\0\0\0\0\0")).0,
            "a ZFS pool member"
        );
        assert_eq!(sig(&with(0, b"QFI\xfb")), ("a qcow2 image", 0));
        let mut fat = with(510, b"\x55\xaa");
        fat[82..90].copy_from_slice(b"FAT32   ");
        assert_eq!(sig(&fat), ("a FAT32 file system", 82));
    }

    #[test]
    fn ext_versions_are_told_apart_by_their_features() {
        let ext = |compat: u32, incompat: u32| {
            let mut head = with(EXT_MAGIC, &[0x53, 0xef]);
            head[1024 + 0x5c..1024 + 0x60].copy_from_slice(&compat.to_le_bytes());
            head[1024 + 0x60..1024 + 0x64].copy_from_slice(&incompat.to_le_bytes());
            sig(&head)
        };
        assert_eq!(ext(0, 0x2), ("an ext2 file system", 1080));
        assert_eq!(ext(0x4, 0x2), ("an ext3 file system", 1080));
        assert_eq!(ext(0x4, 0x2 | 0x40 | 0x200), ("an ext4 file system", 1080));
    }

    /// A file of `size` bytes made by `tool` (a real mkfs), its head.
    fn made_by(tool: &str, args: &[&str], size: u64) -> Vec<u8> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "ballast-blank-{}-{n}-{tool}.img",
            std::process::id()
        ));
        let f = std::fs::File::create(&path).expect("create the image");
        f.set_len(size).expect("size the image");
        drop(f);
        let out = std::process::Command::new(tool)
            .args(args)
            .arg(&path)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run {tool} ({e}): install e2fsprogs and util-linux")
            });
        assert!(
            out.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bytes = std::fs::read(&path).expect("read the image");
        let _ = std::fs::remove_file(&path);
        bytes[..HEAD_BYTES.min(bytes.len())].to_vec()
    }

    #[test]
    fn a_real_ext4_file_system_is_named_at_offset_1080() {
        let head = made_by("mkfs.ext4", &["-q", "-F"], 32 << 20);
        assert_eq!(sig(&head), ("an ext4 file system", 1080));
        assert_eq!(
            identify(&head).unwrap().to_string(),
            "found an ext4 file system signature at offset 1080"
        );
    }

    #[test]
    fn a_real_ext2_and_ext3_file_system_are_named() {
        let head = make_ext("ext2");
        assert_eq!(sig(&head), ("an ext2 file system", 1080));
        let head = make_ext("ext3");
        assert_eq!(sig(&head), ("an ext3 file system", 1080));
    }

    fn make_ext(kind: &str) -> Vec<u8> {
        made_by("mkfs.ext4", &["-q", "-F", "-t", kind], 16 << 20)
    }

    #[test]
    fn a_real_swap_area_is_named() {
        // mkswap puts its magic at the end of the first page (of the kernel's page size).
        let (what, offset) = sig(&made_by("mkswap", &[], 16 << 20));
        assert_eq!(what, "a Linux swap area");
        assert!([4086, 8182, 16374, 65526].contains(&offset), "{offset}");
    }
}
