//! Transmission-phase replies (server -> client): simple replies and
//! structured reply chunks.
//!
//! Without `NBD_OPT_STRUCTURED_REPLY` every request gets one
//! [simple reply](simple_reply) (followed by the data for a successful
//! read). With it, a server answers with one or more
//! [chunks](chunk_header) carrying the request's cookie; the last chunk has
//! [`REPLY_FLAG_DONE`](crate::consts::REPLY_FLAG_DONE) set. Reads and
//! block-status queries must then use chunks; other commands may still use
//! a simple reply.
//!
//! Protocol document sections: "Simple reply message", "Structured reply
//! chunk message", "Structured reply flags", "Structured reply types".

use crate::consts::{
    MAX_STRING_LEN, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, REPLY_TYPE_ERROR,
    REPLY_TYPE_ERROR_OFFSET, REPLY_TYPE_FLAG_ERROR, REPLY_TYPE_NONE, REPLY_TYPE_OFFSET_DATA,
    REPLY_TYPE_OFFSET_HOLE, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC,
};
use crate::error::{Error, Result};
use crate::wire::{ArrayWriter, fixed, put_u16, put_u32, put_u64, truncate_str};

/// Size of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Size of a structured reply chunk header.
pub const CHUNK_HEADER_LEN: usize = 20;
/// Size of an `NBD_REPLY_TYPE_OFFSET_DATA` chunk up to its data: the chunk
/// header plus the 64-bit offset.
pub const OFFSET_DATA_HEADER_LEN: usize = 28;
/// Largest data length one `NBD_REPLY_TYPE_OFFSET_DATA` chunk can carry
/// (the 32-bit chunk length also covers the 8-byte offset).
pub const MAX_OFFSET_DATA_LEN: u32 = u32::MAX - 8;

/// A simple reply ("Simple reply message"):
///
/// ```text
/// 32 bits  0x67446698 (NBD_SIMPLE_REPLY_MAGIC)
/// 32 bits  error (0 for success; see Errno)
/// 64 bits  cookie of the request
/// ```
///
/// For a successful read, exactly `length` bytes of data follow; after an
/// error nothing follows.
#[must_use]
pub fn simple_reply(error: u32, cookie: u64) -> [u8; SIMPLE_REPLY_LEN] {
    ArrayWriter::new()
        .u32(SIMPLE_REPLY_MAGIC)
        .u32(error)
        .u64(cookie)
        .finish()
}

/// A decoded simple reply header (client side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    /// Error value; 0 means success.
    pub error: u32,
    /// Cookie of the request being answered.
    pub cookie: u64,
}

impl SimpleReply {
    /// Parses the first [`SIMPLE_REPLY_LEN`] bytes of `b`, checking the
    /// magic.
    pub fn parse(b: &[u8]) -> Result<SimpleReply> {
        let mut c = fixed::<SIMPLE_REPLY_LEN>(b)?;
        let magic = c.u32()?;
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(Error::BadMagic {
                expected: u64::from(SIMPLE_REPLY_MAGIC),
                found: u64::from(magic),
            });
        }
        Ok(SimpleReply {
            error: c.u32()?,
            cookie: c.u64()?,
        })
    }
}

/// A structured reply chunk header ("Structured reply chunk message"):
///
/// ```text
/// 32 bits  0x668e33ef (NBD_STRUCTURED_REPLY_MAGIC)
/// 16 bits  flags (NBD_REPLY_FLAG_DONE)
/// 16 bits  type (NBD_REPLY_TYPE_*)
/// 64 bits  cookie of the request
/// 32 bits  length of the payload that follows
/// ```
#[must_use]
pub fn chunk_header(
    flags: u16,
    reply_type: u16,
    cookie: u64,
    length: u32,
) -> [u8; CHUNK_HEADER_LEN] {
    ArrayWriter::new()
        .u32(STRUCTURED_REPLY_MAGIC)
        .u16(flags)
        .u16(reply_type)
        .u64(cookie)
        .u32(length)
        .finish()
}

/// The usual final chunk: `NBD_REPLY_TYPE_NONE` with
/// `NBD_REPLY_FLAG_DONE` and no payload. It reports success unless an
/// earlier chunk of the same reply was an error.
#[must_use]
pub fn none_chunk(cookie: u64) -> [u8; CHUNK_HEADER_LEN] {
    chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0)
}

/// A decoded structured reply chunk header (client side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// `NBD_REPLY_FLAG_*` bits.
    pub flags: u16,
    /// `NBD_REPLY_TYPE_*`.
    pub reply_type: u16,
    /// Cookie of the request being answered.
    pub cookie: u64,
    /// Payload length that follows the header. Unbounded: apply a limit
    /// before buffering.
    pub length: u32,
}

impl ChunkHeader {
    /// Parses the first [`CHUNK_HEADER_LEN`] bytes of `b`, checking the
    /// magic.
    pub fn parse(b: &[u8]) -> Result<ChunkHeader> {
        let mut c = fixed::<CHUNK_HEADER_LEN>(b)?;
        let magic = c.u32()?;
        if magic != STRUCTURED_REPLY_MAGIC {
            return Err(Error::BadMagic {
                expected: u64::from(STRUCTURED_REPLY_MAGIC),
                found: u64::from(magic),
            });
        }
        Ok(ChunkHeader {
            flags: c.u16()?,
            reply_type: c.u16()?,
            cookie: c.u64()?,
            length: c.u32()?,
        })
    }

    /// Whether this is the last chunk for its cookie.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.flags & REPLY_FLAG_DONE != 0
    }

    /// Whether the type is in the error category (bit 15 set).
    #[must_use]
    pub fn is_error(&self) -> bool {
        self.reply_type & REPLY_TYPE_FLAG_ERROR != 0
    }
}

/// Header of an `NBD_REPLY_TYPE_OFFSET_DATA` chunk: the chunk header with
/// length `data_len + 8`, then the 64-bit absolute `offset`. The caller
/// sends `data_len` bytes of data right after it (e.g. with a vectored
/// write, avoiding a copy).
///
/// Fails with [`Error::Malformed`] if `data_len` is 0 (a data chunk must
/// describe at least one byte) and with [`Error::TooLarge`] above
/// [`MAX_OFFSET_DATA_LEN`]; larger reads must be split into several chunks.
pub fn offset_data_header(
    flags: u16,
    cookie: u64,
    offset: u64,
    data_len: u32,
) -> Result<[u8; OFFSET_DATA_HEADER_LEN]> {
    if data_len == 0 {
        return Err(Error::Malformed("OFFSET_DATA chunk must carry data"));
    }
    let Some(length) = data_len.checked_add(8) else {
        return Err(Error::TooLarge {
            len: u64::from(data_len),
            max: u64::from(MAX_OFFSET_DATA_LEN),
        });
    };
    Ok(ArrayWriter::new()
        .bytes(&chunk_header(flags, REPLY_TYPE_OFFSET_DATA, cookie, length))
        .u64(offset)
        .finish())
}

/// Appends an `NBD_REPLY_TYPE_OFFSET_HOLE` chunk: `hole_len` bytes starting
/// at `offset` read as zeroes.
///
/// ```text
/// chunk header (type 2, length 12)
/// 64 bits  offset
/// 32 bits  hole size (the document requires it to be nonzero)
/// ```
pub fn encode_offset_hole(out: &mut Vec<u8>, flags: u16, cookie: u64, offset: u64, hole_len: u32) {
    out.extend_from_slice(&chunk_header(flags, REPLY_TYPE_OFFSET_HOLE, cookie, 12));
    put_u64(out, offset);
    put_u32(out, hole_len);
}

/// Appends an `NBD_REPLY_TYPE_ERROR` chunk.
///
/// ```text
/// chunk header (type 0x8001, length 6 + message length)
/// 32 bits  error (the document requires it to be nonzero)
/// 16 bits  message length
/// message bytes (optional, human-readable)
/// ```
///
/// The message is cut at a character boundary to [`MAX_STRING_LEN`] bytes,
/// so this never fails. Usually sent with
/// [`REPLY_FLAG_DONE`](crate::consts::REPLY_FLAG_DONE).
pub fn encode_error_chunk(out: &mut Vec<u8>, flags: u16, cookie: u64, errno: u32, message: &str) {
    let (msg, msg_len) = error_message(message);
    out.extend_from_slice(&chunk_header(
        flags,
        REPLY_TYPE_ERROR,
        cookie,
        6 + u32::from(msg_len),
    ));
    put_u32(out, errno);
    put_u16(out, msg_len);
    out.extend_from_slice(msg.as_bytes());
}

/// Appends an `NBD_REPLY_TYPE_ERROR_OFFSET` chunk: like
/// [`encode_error_chunk`], followed by the 64-bit offset at which the error
/// occurred (which must lie inside the request's range).
pub fn encode_error_offset_chunk(
    out: &mut Vec<u8>,
    flags: u16,
    cookie: u64,
    errno: u32,
    message: &str,
    offset: u64,
) {
    let (msg, msg_len) = error_message(message);
    out.extend_from_slice(&chunk_header(
        flags,
        REPLY_TYPE_ERROR_OFFSET,
        cookie,
        14 + u32::from(msg_len),
    ));
    put_u32(out, errno);
    put_u16(out, msg_len);
    out.extend_from_slice(msg.as_bytes());
    put_u64(out, offset);
}

fn error_message(message: &str) -> (&str, u16) {
    let msg = truncate_str(message, MAX_STRING_LEN);
    // MAX_STRING_LEN < u16::MAX, so the conversion cannot fail.
    let len = u16::try_from(msg.len()).unwrap_or(0);
    (msg, len)
}

/// Largest number of extents one block status chunk can carry.
pub const MAX_BLOCK_STATUS_EXTENTS: usize = (u32::MAX as usize - 4) / 8;

/// Appends an `NBD_REPLY_TYPE_BLOCK_STATUS` chunk for one metadata context.
///
/// ```text
/// chunk header (type 5, length 4 + 8 * extents)
/// 32 bits  metadata context id (from NBD_OPT_SET_META_CONTEXT)
/// per extent: 32 bits length (nonzero), 32 bits status flags
/// ```
///
/// `extents` holds `(length, flags)` pairs describing consecutive ranges
/// starting at the request's offset; for `base:allocation` the flags are
/// [`STATE_HOLE`](crate::consts::STATE_HOLE) and
/// [`STATE_ZERO`](crate::consts::STATE_ZERO). A successful block status
/// reply has exactly one such chunk per selected context.
///
/// Fails (leaving `out` unchanged) with [`Error::Malformed`] if `extents`
/// is empty or contains a zero length, and with [`Error::TooLarge`] beyond
/// [`MAX_BLOCK_STATUS_EXTENTS`].
pub fn encode_block_status(
    out: &mut Vec<u8>,
    flags: u16,
    cookie: u64,
    context_id: u32,
    extents: &[(u32, u32)],
) -> Result<()> {
    if extents.is_empty() {
        return Err(Error::Malformed(
            "block status chunk needs at least one extent",
        ));
    }
    if extents.iter().any(|&(len, _)| len == 0) {
        return Err(Error::Malformed("block status extent with zero length"));
    }
    if extents.len() > MAX_BLOCK_STATUS_EXTENTS {
        return Err(Error::TooLarge {
            len: extents.len() as u64,
            max: MAX_BLOCK_STATUS_EXTENTS as u64,
        });
    }
    // Bounded by MAX_BLOCK_STATUS_EXTENTS above, so this fits in u32.
    let length = u32::try_from(4 + 8 * extents.len()).map_err(|_| Error::TooLarge {
        len: extents.len() as u64,
        max: MAX_BLOCK_STATUS_EXTENTS as u64,
    })?;
    out.reserve(CHUNK_HEADER_LEN + 4 + 8 * extents.len());
    out.extend_from_slice(&chunk_header(
        flags,
        REPLY_TYPE_BLOCK_STATUS,
        cookie,
        length,
    ));
    put_u32(out, context_id);
    for &(len, status) in extents {
        put_u32(out, len);
        put_u32(out, status);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consts::{STATE_HOLE, STATE_ZERO};
    use crate::errno::Errno;

    #[test]
    fn simple_reply_layout() {
        let r = simple_reply(Errno::Eio.to_wire(), 0xaabb_ccdd_eeff_0011);
        assert_eq!(
            r,
            [
                0x67, 0x44, 0x66, 0x98, // magic
                0x00, 0x00, 0x00, 0x05, // EIO
                0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x00, 0x11, // cookie
            ]
        );
        assert_eq!(
            SimpleReply::parse(&r),
            Ok(SimpleReply {
                error: 5,
                cookie: 0xaabb_ccdd_eeff_0011
            })
        );
        assert_eq!(
            SimpleReply::parse(&r[..15]),
            Err(Error::Truncated { need: 16, have: 15 })
        );
        let chunk = chunk_header(0, 0, 0, 0);
        assert!(matches!(
            SimpleReply::parse(&chunk),
            Err(Error::BadMagic {
                found: 0x668e_33ef,
                ..
            })
        ));
    }

    #[test]
    fn chunk_header_layout() {
        let h = chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_ERROR, 7, 6);
        assert_eq!(
            h,
            [
                0x66, 0x8e, 0x33, 0xef, // magic
                0x00, 0x01, // DONE
                0x80, 0x01, // NBD_REPLY_TYPE_ERROR
                0, 0, 0, 0, 0, 0, 0, 7, // cookie
                0, 0, 0, 6, // length
            ]
        );
        let p = ChunkHeader::parse(&h).unwrap();
        assert!(p.is_done() && p.is_error());
        assert_eq!(p.length, 6);
        assert_eq!(
            ChunkHeader::parse(&h[..19]),
            Err(Error::Truncated { need: 20, have: 19 })
        );
        let simple = simple_reply(0, 1);
        assert!(matches!(
            ChunkHeader::parse(&[simple.as_slice(), &[0; 4]].concat()),
            Err(Error::BadMagic { .. })
        ));
        let n = ChunkHeader::parse(&none_chunk(3)).unwrap();
        assert_eq!(
            n,
            ChunkHeader {
                flags: REPLY_FLAG_DONE,
                reply_type: REPLY_TYPE_NONE,
                cookie: 3,
                length: 0
            }
        );
        assert!(!n.is_error());
    }

    #[test]
    fn offset_data_header_layout() {
        let h = offset_data_header(REPLY_FLAG_DONE, 0x11, 0x2000, 512).unwrap();
        assert_eq!(
            h,
            [
                0x66, 0x8e, 0x33, 0xef, // magic
                0x00, 0x01, // DONE
                0x00, 0x01, // NBD_REPLY_TYPE_OFFSET_DATA
                0, 0, 0, 0, 0, 0, 0, 0x11, // cookie
                0x00, 0x00, 0x02, 0x08, // length = 512 + 8
                0, 0, 0, 0, 0, 0, 0x20, 0x00, // offset
            ]
        );
        assert!(offset_data_header(0, 0, 0, MAX_OFFSET_DATA_LEN).is_ok());
        assert!(matches!(
            offset_data_header(0, 0, 0, MAX_OFFSET_DATA_LEN + 1),
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(
            offset_data_header(0, 0, 0, 0),
            Err(Error::Malformed(_))
        ));
    }

    #[test]
    fn offset_hole_layout() {
        let mut out = Vec::new();
        encode_offset_hole(&mut out, 0, 9, 4096, 65536);
        let mut want = chunk_header(0, REPLY_TYPE_OFFSET_HOLE, 9, 12).to_vec();
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0x10, 0x00]);
        want.extend_from_slice(&[0, 1, 0, 0]);
        assert_eq!(out, want);
    }

    #[test]
    fn error_chunks() {
        let mut out = Vec::new();
        encode_error_chunk(&mut out, REPLY_FLAG_DONE, 1, 22, "bad");
        let mut want = chunk_header(REPLY_FLAG_DONE, 0x8001, 1, 9).to_vec();
        want.extend_from_slice(&[0, 0, 0, 22, 0, 3, b'b', b'a', b'd']);
        assert_eq!(out, want);

        let mut out = Vec::new();
        encode_error_offset_chunk(&mut out, 0, 1, 5, "", 0x1000);
        let mut want = chunk_header(0, 0x8002, 1, 14).to_vec();
        want.extend_from_slice(&[0, 0, 0, 5, 0, 0]);
        want.extend_from_slice(&0x1000u64.to_be_bytes());
        assert_eq!(out, want);

        let mut out = Vec::new();
        encode_error_chunk(&mut out, 0, 1, 5, &"x".repeat(70_000));
        let h = ChunkHeader::parse(&out).unwrap();
        assert_eq!(h.length as usize, 6 + MAX_STRING_LEN);
        assert_eq!(out.len(), CHUNK_HEADER_LEN + 6 + MAX_STRING_LEN);
        assert_eq!(&out[24..26], &[0x10, 0x00]);
    }

    #[test]
    fn block_status_chunk() {
        let mut out = Vec::new();
        encode_block_status(
            &mut out,
            REPLY_FLAG_DONE,
            0x55,
            1,
            &[(4096, 0), (8192, STATE_HOLE | STATE_ZERO)],
        )
        .unwrap();
        let want: Vec<u8> = [
            &[0x66, 0x8e, 0x33, 0xef][..], // magic
            &[0x00, 0x01],                 // DONE
            &[0x00, 0x05],                 // NBD_REPLY_TYPE_BLOCK_STATUS
            &[0, 0, 0, 0, 0, 0, 0, 0x55],  // cookie
            &[0, 0, 0, 20],                // length = 4 + 2 * 8
            &[0, 0, 0, 1],                 // context id
            &[0, 0, 0x10, 0x00, 0, 0, 0, 0],
            &[0, 0, 0x20, 0x00, 0, 0, 0, 3],
        ]
        .concat();
        assert_eq!(out, want);

        let mut out = vec![0xee];
        assert!(matches!(
            encode_block_status(&mut out, 0, 0, 1, &[]),
            Err(Error::Malformed(_))
        ));
        assert!(matches!(
            encode_block_status(&mut out, 0, 0, 1, &[(512, 0), (0, 0)]),
            Err(Error::Malformed(_))
        ));
        assert_eq!(out, [0xee]);
    }
}
