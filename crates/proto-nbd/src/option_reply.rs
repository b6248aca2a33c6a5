//! Server replies during fixed newstyle option haggling.
//!
//! Each reply is a 20-byte header followed by `length` bytes of data:
//!
//! ```text
//! 64 bits  0x3e889045565a9 (option reply magic)
//! 32 bits  the option code being answered
//! 32 bits  reply type (NBD_REP_*)
//! 32 bits  length of the data that follows (may be 0)
//! ```
//!
//! An option may be answered by several replies (e.g. one `NBD_REP_SERVER`
//! per export); the last one is always `NBD_REP_ACK` or an error. The
//! encoders here append to a caller-owned `Vec<u8>` so a whole answer can be
//! batched into one write.
//!
//! Protocol document sections: "Fixed newstyle negotiation", "Option reply
//! types", and `NBD_REP_INFO`'s information types.

use crate::consts::{
    INFO_BLOCK_SIZE, INFO_DESCRIPTION, INFO_EXPORT, INFO_NAME, MAX_STRING_LEN, OPTION_REPLY_MAGIC,
    REP_ACK, REP_FLAG_ERROR, REP_INFO, REP_META_CONTEXT, REP_SERVER,
};
use crate::error::{Error, Result};
use crate::wire::{
    ArrayWriter, check_string, fixed, len_u32, put_u16, put_u32, put_u64, truncate_str,
};

/// Size of an option reply header.
pub const OPTION_REPLY_HEADER_LEN: usize = 20;

/// The fixed part of a fixed-newstyle option reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    /// Option code being answered.
    pub option: u32,
    /// `NBD_REP_*` reply type.
    pub reply_type: u32,
    /// Number of data bytes following the header.
    pub length: u32,
}

impl OptionReplyHeader {
    /// Parses the first [`OPTION_REPLY_HEADER_LEN`] bytes of `b` (client
    /// side), checking the magic. `length` is not bounded here: a client
    /// should apply its own limit before buffering the data.
    pub fn parse(b: &[u8]) -> Result<OptionReplyHeader> {
        let mut c = fixed::<OPTION_REPLY_HEADER_LEN>(b)?;
        let magic = c.u64()?;
        if magic != OPTION_REPLY_MAGIC {
            return Err(Error::BadMagic {
                expected: OPTION_REPLY_MAGIC,
                found: magic,
            });
        }
        Ok(OptionReplyHeader {
            option: c.u32()?,
            reply_type: c.u32()?,
            length: c.u32()?,
        })
    }

    /// The 20 header bytes.
    #[must_use]
    pub fn encode(&self) -> [u8; OPTION_REPLY_HEADER_LEN] {
        ArrayWriter::new()
            .u64(OPTION_REPLY_MAGIC)
            .u32(self.option)
            .u32(self.reply_type)
            .u32(self.length)
            .finish()
    }

    /// Whether the reply type has bit 31 set (an `NBD_REP_ERR_*`).
    #[must_use]
    pub fn is_error(&self) -> bool {
        self.reply_type & REP_FLAG_ERROR != 0
    }
}

fn put_header(out: &mut Vec<u8>, option: u32, reply_type: u32, length: u32) {
    out.extend_from_slice(
        &OptionReplyHeader {
            option,
            reply_type,
            length,
        }
        .encode(),
    );
}

/// Appends a reply with an arbitrary type and data.
///
/// Fails with [`Error::TooLarge`] (leaving `out` unchanged) only if
/// `payload` is longer than a 32-bit length field can describe.
pub fn encode_option_reply(
    out: &mut Vec<u8>,
    option: u32,
    reply_type: u32,
    payload: &[u8],
) -> Result<()> {
    let length = len_u32(payload.len())?;
    out.reserve(OPTION_REPLY_HEADER_LEN + payload.len());
    put_header(out, option, reply_type, length);
    out.extend_from_slice(payload);
    Ok(())
}

/// `NBD_REP_ACK` (no data): the option succeeded, or a list has ended.
/// After an ACK to `NBD_OPT_GO` both sides are in the transmission phase.
pub fn rep_ack(out: &mut Vec<u8>, option: u32) {
    put_header(out, option, REP_ACK, 0);
}

/// `NBD_REP_SERVER`: one export in the answer to `NBD_OPT_LIST`.
///
/// ```text
/// 32 bits  name length, then the name
/// ```
///
/// Fails with [`Error::TooLarge`] if `name` exceeds [`MAX_STRING_LEN`].
pub fn rep_server(out: &mut Vec<u8>, option: u32, name: &str) -> Result<()> {
    check_string(name)?;
    let name_len = len_u32(name.len())?;
    put_header(out, option, REP_SERVER, 4 + name_len);
    put_u32(out, name_len);
    out.extend_from_slice(name.as_bytes());
    Ok(())
}

/// `NBD_REP_INFO` / `NBD_INFO_EXPORT`: export size and transmission flags.
/// A successful `NBD_OPT_INFO`/`NBD_OPT_GO` must include this before its
/// ACK.
///
/// ```text
/// 16 bits  NBD_INFO_EXPORT (0)
/// 64 bits  export size in bytes
/// 16 bits  transmission flags
/// ```
pub fn rep_info_export(out: &mut Vec<u8>, option: u32, size: u64, transmission_flags: u16) {
    put_header(out, option, REP_INFO, 12);
    put_u16(out, INFO_EXPORT);
    put_u64(out, size);
    put_u16(out, transmission_flags);
}

/// `NBD_REP_INFO` / `NBD_INFO_NAME`: the export's canonical name (16-bit
/// type, then the name filling the rest of the data).
///
/// Fails with [`Error::TooLarge`] if `name` exceeds [`MAX_STRING_LEN`].
pub fn rep_info_name(out: &mut Vec<u8>, option: u32, name: &str) -> Result<()> {
    rep_info_string(out, option, INFO_NAME, name)
}

/// `NBD_REP_INFO` / `NBD_INFO_DESCRIPTION`: human-readable description
/// (16-bit type, then the text filling the rest of the data).
///
/// Fails with [`Error::TooLarge`] if `description` exceeds
/// [`MAX_STRING_LEN`].
pub fn rep_info_description(out: &mut Vec<u8>, option: u32, description: &str) -> Result<()> {
    rep_info_string(out, option, INFO_DESCRIPTION, description)
}

fn rep_info_string(out: &mut Vec<u8>, option: u32, info: u16, s: &str) -> Result<()> {
    check_string(s)?;
    put_header(out, option, REP_INFO, 2 + len_u32(s.len())?);
    put_u16(out, info);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// `NBD_REP_INFO` / `NBD_INFO_BLOCK_SIZE`: block size constraints
/// ("Block size constraints").
///
/// ```text
/// 16 bits  NBD_INFO_BLOCK_SIZE (3)
/// 32 bits  minimum block size    (power of two, at most 64 KiB)
/// 32 bits  preferred block size  (power of two, at least max(min, 512))
/// 32 bits  maximum block size    (multiple of min, or 0xffffffff)
/// ```
///
/// The values are encoded as given; checking them against the rules above
/// is the caller's job.
pub fn rep_info_block_size(
    out: &mut Vec<u8>,
    option: u32,
    minimum: u32,
    preferred: u32,
    maximum: u32,
) {
    put_header(out, option, REP_INFO, 14);
    put_u16(out, INFO_BLOCK_SIZE);
    put_u32(out, minimum);
    put_u32(out, preferred);
    put_u32(out, maximum);
}

/// `NBD_REP_META_CONTEXT`: one metadata context (32-bit id, then the name
/// filling the rest of the data). In answers to
/// `NBD_OPT_LIST_META_CONTEXT` the id should be 0; in answers to
/// `NBD_OPT_SET_META_CONTEXT` it is the id later used in block status
/// chunks.
///
/// Fails with [`Error::TooLarge`] if `name` exceeds [`MAX_STRING_LEN`].
pub fn rep_meta_context(out: &mut Vec<u8>, option: u32, context_id: u32, name: &str) -> Result<()> {
    check_string(name)?;
    put_header(out, option, REP_META_CONTEXT, 4 + len_u32(name.len())?);
    put_u32(out, context_id);
    out.extend_from_slice(name.as_bytes());
    Ok(())
}

/// An error reply (`reply_type` should be one of the `REP_ERR_*` constants,
/// i.e. have bit 31 set) with an optional human-readable `message` as its
/// data. An empty message sends no data.
///
/// The message is cut at a character boundary to [`MAX_STRING_LEN`] bytes
/// so this never fails.
pub fn rep_error(out: &mut Vec<u8>, option: u32, reply_type: u32, message: &str) {
    let message = truncate_str(message, MAX_STRING_LEN);
    // At most MAX_STRING_LEN bytes, so the length always fits.
    let length = u32::try_from(message.len()).unwrap_or(0);
    put_header(out, option, reply_type, length);
    out.extend_from_slice(message.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consts::{OPT_GO, OPT_LIST, OPT_SET_META_CONTEXT, REP_ERR_UNKNOWN, REP_ERR_UNSUP};

    /// Magic + option + type + length, written out by hand.
    fn hdr(option: u32, reply_type: u32, length: u32) -> Vec<u8> {
        let mut v = vec![0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9];
        v.extend_from_slice(&option.to_be_bytes());
        v.extend_from_slice(&reply_type.to_be_bytes());
        v.extend_from_slice(&length.to_be_bytes());
        v
    }

    #[test]
    fn ack() {
        let mut out = Vec::new();
        rep_ack(&mut out, OPT_GO);
        assert_eq!(
            out,
            [
                0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, // magic
                0x00, 0x00, 0x00, 0x07, // NBD_OPT_GO
                0x00, 0x00, 0x00, 0x01, // NBD_REP_ACK
                0x00, 0x00, 0x00, 0x00, // no data
            ]
        );
        let h = OptionReplyHeader::parse(&out).unwrap();
        assert_eq!(
            h,
            OptionReplyHeader {
                option: OPT_GO,
                reply_type: REP_ACK,
                length: 0
            }
        );
        assert!(!h.is_error());
    }

    #[test]
    fn server() {
        let mut out = Vec::new();
        rep_server(&mut out, OPT_LIST, "disk").unwrap();
        let mut want = hdr(OPT_LIST, REP_SERVER, 8);
        want.extend_from_slice(&[0, 0, 0, 4, b'd', b'i', b's', b'k']);
        assert_eq!(out, want);
    }

    #[test]
    fn info_export() {
        let mut out = Vec::new();
        rep_info_export(&mut out, OPT_GO, 1 << 30, 0x0001);
        let mut want = hdr(OPT_GO, REP_INFO, 12);
        want.extend_from_slice(&[
            0x00, 0x00, // NBD_INFO_EXPORT
            0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, // 1 GiB
            0x00, 0x01, // HAS_FLAGS
        ]);
        assert_eq!(out, want);
    }

    #[test]
    fn info_name_and_description() {
        let mut out = Vec::new();
        rep_info_name(&mut out, OPT_GO, "a").unwrap();
        rep_info_description(&mut out, OPT_GO, "").unwrap();
        let mut want = hdr(OPT_GO, REP_INFO, 3);
        want.extend_from_slice(&[0, 1, b'a']);
        want.extend_from_slice(&hdr(OPT_GO, REP_INFO, 2));
        want.extend_from_slice(&[0, 2]);
        assert_eq!(out, want);
        let long = "n".repeat(MAX_STRING_LEN + 1);
        let mut out2 = Vec::new();
        assert!(matches!(
            rep_info_name(&mut out2, OPT_GO, &long),
            Err(Error::TooLarge { .. })
        ));
        assert!(out2.is_empty());
    }

    #[test]
    fn info_block_size() {
        let mut out = Vec::new();
        rep_info_block_size(&mut out, OPT_GO, 512, 4096, 32 << 20);
        let mut want = hdr(OPT_GO, REP_INFO, 14);
        want.extend_from_slice(&[
            0x00, 0x03, // NBD_INFO_BLOCK_SIZE
            0x00, 0x00, 0x02, 0x00, // 512
            0x00, 0x00, 0x10, 0x00, // 4096
            0x02, 0x00, 0x00, 0x00, // 32 MiB
        ]);
        assert_eq!(out, want);
    }

    #[test]
    fn meta_context() {
        let mut out = Vec::new();
        rep_meta_context(&mut out, OPT_SET_META_CONTEXT, 7, "base:allocation").unwrap();
        let mut want = hdr(OPT_SET_META_CONTEXT, REP_META_CONTEXT, 19);
        want.extend_from_slice(&[0, 0, 0, 7]);
        want.extend_from_slice(b"base:allocation");
        assert_eq!(out, want);
    }

    #[test]
    fn errors() {
        let mut out = Vec::new();
        rep_error(&mut out, 42, REP_ERR_UNSUP, "");
        assert_eq!(out, hdr(42, 0x8000_0001, 0));
        let h = OptionReplyHeader::parse(&out).unwrap();
        assert!(h.is_error());

        let mut out = Vec::new();
        rep_error(&mut out, OPT_GO, REP_ERR_UNKNOWN, "no such export");
        let mut want = hdr(OPT_GO, 0x8000_0006, 14);
        want.extend_from_slice(b"no such export");
        assert_eq!(out, want);

        let mut out = Vec::new();
        rep_error(&mut out, OPT_GO, REP_ERR_UNKNOWN, &"é".repeat(3000));
        let h = OptionReplyHeader::parse(&out).unwrap();
        assert_eq!(h.length as usize, MAX_STRING_LEN);
        assert!(std::str::from_utf8(&out[OPTION_REPLY_HEADER_LEN..]).is_ok());
    }

    #[test]
    fn generic_and_parse_errors() {
        let mut out = Vec::new();
        encode_option_reply(&mut out, 9, 0x1234, &[1, 2, 3]).unwrap();
        let mut want = hdr(9, 0x1234, 3);
        want.extend_from_slice(&[1, 2, 3]);
        assert_eq!(out, want);

        assert_eq!(
            OptionReplyHeader::parse(&out[..19]),
            Err(Error::Truncated { need: 20, have: 19 })
        );
        out[0] = 0xff;
        assert!(matches!(
            OptionReplyHeader::parse(&out),
            Err(Error::BadMagic {
                expected: OPTION_REPLY_MAGIC,
                ..
            })
        ));
    }
}
