//! The crate's error type.

use std::fmt;

use crate::consts;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while decoding (or, for a few encoders,
/// encoding) an NBD message.
///
/// The variants are chosen so a caller can decide what to do next:
///
/// * [`Error::Truncated`] is the only "feed me more bytes" error. It is
///   returned solely by parsers of fixed-size headers when the slice is
///   shorter than the header. Payloads framed by an explicit length (option
///   data) never produce it: an internally inconsistent payload is
///   [`Error::Malformed`].
/// * [`Error::TooLarge`] means a length field (or a string) exceeds a limit.
///   During option haggling a server answers it with
///   [`consts::REP_ERR_TOO_BIG`] (see [`Error::suggested_rep_error`]).
/// * Everything else is a protocol violation by the peer.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A magic number did not match.
    BadMagic {
        /// The magic the protocol requires here.
        expected: u64,
        /// What was actually on the wire.
        found: u64,
    },
    /// The input is shorter than the fixed-size message being parsed.
    Truncated {
        /// Bytes required.
        need: usize,
        /// Bytes supplied.
        have: usize,
    },
    /// A length exceeds the limit this crate (or the protocol) enforces.
    TooLarge {
        /// The offending length.
        len: u64,
        /// The largest accepted value.
        max: u64,
    },
    /// The bytes are structurally invalid; the message says how.
    Malformed(&'static str),
    /// A protocol string was not valid UTF-8.
    BadUtf8,
    /// Flag bits this crate does not know (or the peer may not use) were set.
    /// Carries only the offending bits.
    UnknownFlags(u32),
}

impl Error {
    /// The fixed-newstyle option error reply a server would normally send
    /// when [`parse_option`](crate::parse_option) or
    /// [`OptionHeader::parse`](crate::OptionHeader::parse) fails:
    /// [`consts::REP_ERR_TOO_BIG`] for [`Error::TooLarge`],
    /// [`consts::REP_ERR_INVALID`] for everything else.
    #[must_use]
    pub fn suggested_rep_error(&self) -> u32 {
        match self {
            Error::TooLarge { .. } => consts::REP_ERR_TOO_BIG,
            _ => consts::REP_ERR_INVALID,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadMagic { expected, found } => {
                write!(f, "bad NBD magic: expected {expected:#x}, found {found:#x}")
            }
            Error::Truncated { need, have } => {
                write!(f, "truncated NBD message: need {need} bytes, have {have}")
            }
            Error::TooLarge { len, max } => {
                write!(f, "NBD length {len} exceeds the limit of {max}")
            }
            Error::Malformed(what) => write!(f, "malformed NBD message: {what}"),
            Error::BadUtf8 => f.write_str("NBD string is not valid UTF-8"),
            Error::UnknownFlags(bits) => write!(f, "unknown or unnegotiated NBD flags {bits:#x}"),
        }
    }
}

impl std::error::Error for Error {}
