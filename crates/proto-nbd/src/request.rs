//! Transmission-phase requests (client -> server).
//!
//! Protocol document sections: "Request message", "Request types",
//! "Command flags".

use crate::consts::{
    CMD_BLOCK_STATUS, CMD_CACHE, CMD_DISC, CMD_FLUSH, CMD_READ, CMD_RESIZE, CMD_TRIM, CMD_WRITE,
    CMD_WRITE_ZEROES, REQUEST_MAGIC,
};
use crate::error::{Error, Result};
use crate::wire::{ArrayWriter, fixed};

/// Size of a (compact) request header.
pub const REQUEST_LEN: usize = 28;

/// The command type of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// `NBD_CMD_READ` (0).
    Read,
    /// `NBD_CMD_WRITE` (1): `length` bytes of data follow the header.
    Write,
    /// `NBD_CMD_DISC` (2): soft disconnect; no reply is sent.
    Disconnect,
    /// `NBD_CMD_FLUSH` (3).
    Flush,
    /// `NBD_CMD_TRIM` (4).
    Trim,
    /// `NBD_CMD_CACHE` (5).
    Cache,
    /// `NBD_CMD_WRITE_ZEROES` (6).
    WriteZeroes,
    /// `NBD_CMD_BLOCK_STATUS` (7).
    BlockStatus,
    /// `NBD_CMD_RESIZE` (8, experimental).
    Resize,
    /// Any other value. Not a parse error: the server answers it with
    /// `EINVAL` and keeps the connection.
    Unknown(u16),
}

impl Command {
    /// Decodes a command type. Never fails.
    #[must_use]
    pub const fn from_wire(v: u16) -> Command {
        match v {
            CMD_READ => Command::Read,
            CMD_WRITE => Command::Write,
            CMD_DISC => Command::Disconnect,
            CMD_FLUSH => Command::Flush,
            CMD_TRIM => Command::Trim,
            CMD_CACHE => Command::Cache,
            CMD_WRITE_ZEROES => Command::WriteZeroes,
            CMD_BLOCK_STATUS => Command::BlockStatus,
            CMD_RESIZE => Command::Resize,
            other => Command::Unknown(other),
        }
    }

    /// The 16-bit type field for this command.
    #[must_use]
    pub const fn to_wire(self) -> u16 {
        match self {
            Command::Read => CMD_READ,
            Command::Write => CMD_WRITE,
            Command::Disconnect => CMD_DISC,
            Command::Flush => CMD_FLUSH,
            Command::Trim => CMD_TRIM,
            Command::Cache => CMD_CACHE,
            Command::WriteZeroes => CMD_WRITE_ZEROES,
            Command::BlockStatus => CMD_BLOCK_STATUS,
            Command::Resize => CMD_RESIZE,
            Command::Unknown(v) => v,
        }
    }
}

/// A request header ("Request message"):
///
/// ```text
/// 32 bits  0x25609513 (NBD_REQUEST_MAGIC)
/// 16 bits  command flags (NBD_CMD_FLAG_*)
/// 16 bits  type (NBD_CMD_*)
/// 64 bits  cookie (called "handle" in older text), echoed in the reply
/// 64 bits  offset
/// 32 bits  length
/// ```
///
/// For [`Command::Write`] the header is followed by `length` bytes of data,
/// which the caller reads separately (after checking `length` against its
/// maximum block size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags, unvalidated: whether a flag is allowed depends on the
    /// command and on what was negotiated, which is the server's call.
    pub flags: u16,
    /// The command type.
    pub command: Command,
    /// Opaque value the reply must echo.
    pub cookie: u64,
    /// Byte offset into the export.
    pub offset: u64,
    /// Byte count (for writes, also the size of the data that follows).
    pub length: u32,
}

impl Request {
    /// Parses the first [`REQUEST_LEN`] bytes of `b`.
    ///
    /// This is a syntax check only: the magic must match (an
    /// extended-header request is rejected as [`Error::BadMagic`]), while
    /// unknown commands become [`Command::Unknown`] and flags, offset and
    /// length are passed through for the server to judge.
    pub fn parse(b: &[u8]) -> Result<Request> {
        let mut c = fixed::<REQUEST_LEN>(b)?;
        let magic = c.u32()?;
        if magic != REQUEST_MAGIC {
            return Err(Error::BadMagic {
                expected: u64::from(REQUEST_MAGIC),
                found: u64::from(magic),
            });
        }
        Ok(Request {
            flags: c.u16()?,
            command: Command::from_wire(c.u16()?),
            cookie: c.u64()?,
            offset: c.u64()?,
            length: c.u32()?,
        })
    }

    /// The 28 header bytes, as a client sends them.
    #[must_use]
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        ArrayWriter::new()
            .u32(REQUEST_MAGIC)
            .u16(self.flags)
            .u16(self.command.to_wire())
            .u64(self.cookie)
            .u64(self.offset)
            .u32(self.length)
            .finish()
    }

    /// Whether `length` bytes of data follow this header on the wire (only
    /// for [`Command::Write`] without extended headers).
    #[must_use]
    pub fn has_payload(&self) -> bool {
        self.command == Command::Write
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consts::CMD_FLAG_FUA;

    #[test]
    fn write_request_from_the_document_layout() {
        let wire: [u8; 28] = [
            0x25, 0x60, 0x95, 0x13, // NBD_REQUEST_MAGIC
            0x00, 0x01, // NBD_CMD_FLAG_FUA
            0x00, 0x01, // NBD_CMD_WRITE
            0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // cookie
            0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, // offset 1 MiB
            0x00, 0x00, 0x10, 0x00, // length 4096
        ];
        let r = Request::parse(&wire).unwrap();
        assert_eq!(
            r,
            Request {
                flags: CMD_FLAG_FUA,
                command: Command::Write,
                cookie: 0x0102_0304_0506_0708,
                offset: 1 << 20,
                length: 4096,
            }
        );
        assert!(r.has_payload());
        assert_eq!(r.encode(), wire);
    }

    #[test]
    fn unknown_command_is_not_an_error() {
        let r = Request {
            flags: 0xffff,
            command: Command::Unknown(0x4242),
            cookie: 0,
            offset: u64::MAX,
            length: u32::MAX,
        };
        let parsed = Request::parse(&r.encode()).unwrap();
        assert_eq!(parsed, r);
        assert!(!parsed.has_payload());
    }

    #[test]
    fn every_command_round_trips() {
        for v in 0..=20u16 {
            assert_eq!(Command::from_wire(v).to_wire(), v);
        }
        assert_eq!(Command::from_wire(2), Command::Disconnect);
        assert_eq!(Command::from_wire(7), Command::BlockStatus);
        assert_eq!(Command::from_wire(9), Command::Unknown(9));
    }

    #[test]
    fn truncated_and_bad_magic() {
        let wire = Request {
            flags: 0,
            command: Command::Read,
            cookie: 1,
            offset: 0,
            length: 512,
        }
        .encode();
        assert_eq!(
            Request::parse(&wire[..27]),
            Err(Error::Truncated { need: 28, have: 27 })
        );
        assert_eq!(
            Request::parse(&[]),
            Err(Error::Truncated { need: 28, have: 0 })
        );
        let mut ext = wire;
        ext[..4].copy_from_slice(&crate::consts::EXTENDED_REQUEST_MAGIC.to_be_bytes());
        assert_eq!(
            Request::parse(&ext),
            Err(Error::BadMagic {
                expected: 0x2560_9513,
                found: 0x21e4_1c71
            })
        );
        // A longer buffer (e.g. header followed by write data) is fine.
        let mut longer = wire.to_vec();
        longer.extend_from_slice(&[0xaa; 512]);
        assert_eq!(Request::parse(&longer), Request::parse(&wire));
    }
}
