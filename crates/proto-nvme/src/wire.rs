//! Private helpers for little-endian fields at fixed offsets.
//!
//! NVMe and NVMe/TCP store every multi-byte field little-endian. Parsers
//! first check a structure's length (so every offset read afterwards is in
//! range); the helpers still never index out of bounds: a read past the end
//! yields zero and a write past the end is dropped, with a debug assertion
//! so that a wrong offset shows up in tests rather than in production.

use crate::error::{Error, Result};

/// Checks that `b` holds at least `N` bytes and returns the first `N`.
pub(crate) fn fixed<const N: usize>(b: &[u8]) -> Result<&[u8; N]> {
    b.first_chunk::<N>().ok_or(Error::Truncated {
        need: N,
        have: b.len(),
    })
}

/// Reads `N` bytes at `off`.
pub(crate) fn arr<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    match b.get(off..).and_then(|t| t.first_chunk::<N>()) {
        Some(a) => *a,
        None => {
            debug_assert!(false, "read of {N} bytes at {off} past {}", b.len());
            [0; N]
        }
    }
}

pub(crate) fn u8_at(b: &[u8], off: usize) -> u8 {
    arr::<1>(b, off)[0]
}

pub(crate) fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(arr(b, off))
}

pub(crate) fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(arr(b, off))
}

pub(crate) fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(arr(b, off))
}

pub(crate) fn u128_at(b: &[u8], off: usize) -> u128 {
    u128::from_le_bytes(arr(b, off))
}

/// Writes `v` at `off`.
pub(crate) fn put(b: &mut [u8], off: usize, v: &[u8]) {
    match b.get_mut(off..off.saturating_add(v.len())) {
        Some(dst) => dst.copy_from_slice(v),
        None => debug_assert!(
            false,
            "write of {} bytes at {off} past {}",
            v.len(),
            b.len()
        ),
    }
}

pub(crate) fn put_u16(b: &mut [u8], off: usize, v: u16) {
    put(b, off, &v.to_le_bytes());
}

pub(crate) fn put_u32(b: &mut [u8], off: usize, v: u32) {
    put(b, off, &v.to_le_bytes());
}

pub(crate) fn put_u64(b: &mut [u8], off: usize, v: u64) {
    put(b, off, &v.to_le_bytes());
}

pub(crate) fn put_u128(b: &mut [u8], off: usize, v: u128) {
    put(b, off, &v.to_le_bytes());
}

/// Bits `lo..=hi` of `v`.
pub(crate) const fn bits(v: u32, lo: u32, hi: u32) -> u32 {
    (v >> lo) & (u32::MAX >> (31 - (hi - lo)))
}

pub(crate) const fn bit(v: u32, n: u32) -> bool {
    v & (1 << n) != 0
}

/// Writes an ASCII field padded with spaces (serial number, model number,
/// firmware revision). Longer strings are cut at the field size.
pub(crate) fn put_ascii_padded(b: &mut [u8], off: usize, len: usize, s: &str) {
    let mut field = vec![b' '; len];
    let n = s.len().min(len);
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
    put(b, off, &field);
}

/// Writes a string NUL-padded into a field of `len` bytes. At most
/// `len - 1` bytes are written so the field stays NUL-terminated.
pub(crate) fn put_str_nul(b: &mut [u8], off: usize, len: usize, s: &str) {
    let mut field = vec![0u8; len];
    let n = s.len().min(len.saturating_sub(1));
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
    put(b, off, &field);
}

/// Reads a space- or NUL-padded text field, dropping the padding; bytes
/// that are not UTF-8 are replaced.
pub(crate) fn get_padded_string(b: &[u8], off: usize, len: usize) -> String {
    let raw = b.get(off..off + len).unwrap_or(&[]);
    let end = raw
        .iter()
        .rposition(|&c| c != b' ' && c != 0)
        .map_or(0, |p| p + 1);
    let raw = &raw[..end];
    let raw = match raw.iter().position(|&c| c == 0) {
        Some(p) => &raw[..p],
        None => raw,
    };
    String::from_utf8_lossy(raw).into_owned()
}

/// Reads a NUL-terminated UTF-8 string from a field of `len` bytes. The
/// terminator must be present within the field.
pub(crate) fn get_str_nul(b: &[u8], off: usize, len: usize) -> Option<&str> {
    let raw = b.get(off..off + len)?;
    let end = raw.iter().position(|&c| c == 0)?;
    std::str::from_utf8(&raw[..end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn little_endian_reads_and_writes() {
        let mut b = [0u8; 16];
        put_u16(&mut b, 0, 0x0102);
        put_u32(&mut b, 2, 0x0304_0506);
        put_u64(&mut b, 6, 0x0708_090a_0b0c_0d0e);
        assert_eq!(&b[..6], &[0x02, 0x01, 0x06, 0x05, 0x04, 0x03]);
        assert_eq!(u16_at(&b, 0), 0x0102);
        assert_eq!(u32_at(&b, 2), 0x0304_0506);
        assert_eq!(u64_at(&b, 6), 0x0708_090a_0b0c_0d0e);
        assert_eq!(u8_at(&b, 6), 0x0e);
        assert!(matches!(
            fixed::<17>(&b),
            Err(Error::Truncated { need: 17, have: 16 })
        ));
    }

    #[test]
    fn bit_helpers() {
        assert_eq!(bits(0xabcd_1234, 16, 31), 0xabcd);
        assert_eq!(bits(0xabcd_1234, 0, 7), 0x34);
        assert_eq!(bits(0xffff_ffff, 0, 31), 0xffff_ffff);
        assert!(bit(0x4000_0000, 30));
        assert!(!bit(0x4000_0000, 31));
    }

    #[test]
    fn padded_strings() {
        let mut b = [0xffu8; 12];
        put_ascii_padded(&mut b, 1, 8, "abc");
        assert_eq!(&b[1..9], b"abc     ");
        assert_eq!(get_padded_string(&b, 1, 8), "abc");
        put_ascii_padded(&mut b, 1, 4, "abcdefg");
        assert_eq!(&b[1..5], b"abcd");
        put_str_nul(&mut b, 0, 4, "wxyz");
        assert_eq!(&b[..4], b"wxy\0");
        assert_eq!(get_str_nul(&b, 0, 4), Some("wxy"));
        assert_eq!(get_str_nul(b"abcd", 0, 4), None);
        assert_eq!(get_padded_string(b"ab\0\0", 0, 4), "ab");
    }
}
