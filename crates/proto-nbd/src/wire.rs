//! Private helpers for reading and writing big-endian fields.
//!
//! Every read is bounds-checked and reports a caller-chosen error, so parsers
//! never index out of range and never panic.

use crate::consts::MAX_STRING_LEN;
use crate::error::{Error, Result};

/// A forward-only reader over a byte slice.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    /// Error reported when a read runs past the end of `buf`.
    short: Error,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8], short: Error) -> Self {
        Cursor { buf, short }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        match self.buf.split_at_checked(n) {
            Some((head, tail)) => {
                self.buf = tail;
                Ok(head)
            }
            None => Err(self.short.clone()),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        match self.buf.split_first_chunk::<N>() {
            Some((head, tail)) => {
                self.buf = tail;
                Ok(*head)
            }
            None => Err(self.short.clone()),
        }
    }

    pub(crate) fn u16(&mut self) -> Result<u16> {
        self.array().map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        self.array().map(u32::from_be_bytes)
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        self.array().map(u64::from_be_bytes)
    }

    /// Reads a 32-bit length prefix followed by that many bytes of string.
    pub(crate) fn string_u32(&mut self) -> Result<String> {
        let len = self.u32()?;
        let len = usize::try_from(len).map_err(|_| self.short.clone())?;
        let raw = self.bytes(len)?;
        decode_string(raw)
    }
}

/// Checks that `b` holds at least `N` bytes and returns a cursor over exactly
/// the first `N`; shorter input is [`Error::Truncated`].
pub(crate) fn fixed<const N: usize>(b: &[u8]) -> Result<Cursor<'_>> {
    match b.first_chunk::<N>() {
        Some(head) => Ok(Cursor::new(
            head,
            // Unreachable in practice: the parser reads exactly N bytes.
            Error::Truncated {
                need: N,
                have: b.len(),
            },
        )),
        None => Err(Error::Truncated {
            need: N,
            have: b.len(),
        }),
    }
}

/// Validates a protocol string: at most [`MAX_STRING_LEN`] bytes, UTF-8, and
/// no NUL characters ("Conventions" in the protocol document).
pub(crate) fn decode_string(raw: &[u8]) -> Result<String> {
    if raw.len() > MAX_STRING_LEN {
        return Err(Error::TooLarge {
            len: raw.len() as u64,
            max: MAX_STRING_LEN as u64,
        });
    }
    let s = std::str::from_utf8(raw).map_err(|_| Error::BadUtf8)?;
    if s.contains('\0') {
        return Err(Error::Malformed("string contains a NUL character"));
    }
    Ok(s.to_owned())
}

/// Checks a string we are about to send against the protocol's length limit.
pub(crate) fn check_string(s: &str) -> Result<()> {
    if s.len() > MAX_STRING_LEN {
        return Err(Error::TooLarge {
            len: s.len() as u64,
            max: MAX_STRING_LEN as u64,
        });
    }
    Ok(())
}

/// The longest prefix of `s` that is at most `max` bytes and ends on a
/// character boundary.
pub(crate) fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

/// A length that must fit a 32-bit wire field.
pub(crate) fn len_u32(len: usize) -> Result<u32> {
    u32::try_from(len).map_err(|_| Error::TooLarge {
        len: len as u64,
        max: u64::from(u32::MAX),
    })
}

pub(crate) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Builds a fixed-size array from big-endian pieces written in order.
pub(crate) struct ArrayWriter<const N: usize> {
    buf: [u8; N],
    pos: usize,
}

impl<const N: usize> ArrayWriter<N> {
    pub(crate) fn new() -> Self {
        ArrayWriter {
            buf: [0; N],
            pos: 0,
        }
    }

    pub(crate) fn bytes(mut self, v: &[u8]) -> Self {
        // Callers write exactly N bytes in total; a mistake shows up as a
        // short (zero-padded) array in unit tests rather than a panic.
        if let Some(dst) = self.buf.get_mut(self.pos..self.pos + v.len()) {
            dst.copy_from_slice(v);
        }
        self.pos += v.len();
        self
    }

    pub(crate) fn u16(self, v: u16) -> Self {
        self.bytes(&v.to_be_bytes())
    }

    pub(crate) fn u32(self, v: u32) -> Self {
        self.bytes(&v.to_be_bytes())
    }

    pub(crate) fn u64(self, v: u64) -> Self {
        self.bytes(&v.to_be_bytes())
    }

    pub(crate) fn finish(self) -> [u8; N] {
        debug_assert_eq!(self.pos, N, "fixed-size encoder wrote the wrong length");
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_reads_big_endian_and_stops_at_end() {
        let data = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07];
        let mut c = Cursor::new(&data, Error::Malformed("short"));
        assert_eq!(c.u16().unwrap(), 0x0102);
        assert_eq!(c.u32().unwrap(), 0x0304_0506);
        assert_eq!(c.u16(), Err(Error::Malformed("short")));
        assert_eq!(c.remaining(), 1);
        assert_eq!(c.bytes(2), Err(Error::Malformed("short")));
        assert_eq!(c.bytes(1).unwrap(), &[0x07]);
    }

    #[test]
    fn string_rules() {
        assert_eq!(decode_string(b"disk").unwrap(), "disk");
        assert_eq!(decode_string(b"").unwrap(), "");
        assert_eq!(decode_string(&[0xff]), Err(Error::BadUtf8));
        assert!(matches!(decode_string(b"a\0b"), Err(Error::Malformed(_))));
        let long = vec![b'a'; MAX_STRING_LEN + 1];
        assert!(matches!(decode_string(&long), Err(Error::TooLarge { .. })));
        assert!(decode_string(&long[..MAX_STRING_LEN]).is_ok());
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_str("héllo", 2), "h");
        assert_eq!(truncate_str("héllo", 3), "hé");
        assert_eq!(truncate_str("abc", 10), "abc");
        assert_eq!(truncate_str("€", 1), "");
    }
}
