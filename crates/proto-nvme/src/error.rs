//! The crate's error type and its two mappings to the wire: a transport
//! error becomes an NVMe/TCP *Fatal Error Status* (sent in a TermReq before
//! the connection is closed), a command error becomes an NVMe [`Status`].

use std::fmt;

use crate::status::Status;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Fatal Error Status: why a connection is being terminated (the FES field
/// of H2CTermReq/C2HTermReq, TCP transport specification "Terminate
/// Connection Request").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Fes {
    /// 01h: a PDU header field is invalid; FEI is the byte offset of the
    /// field from the start of the PDU.
    InvalidHeaderField = 0x01,
    /// 02h: a PDU arrived that is not allowed in the connection's state.
    PduSequence = 0x02,
    /// 03h: the header digest did not match.
    HeaderDigest = 0x03,
    /// 04h: data outside the range of the command's data transfer.
    DataOutOfRange = 0x04,
    /// 05h: a data transfer limit (MAXH2CDATA, in-capsule data size, or
    /// the number of outstanding R2Ts) was exceeded. Called "R2T Limit
    /// Exceeded" in revision 1.0 of the TCP transport specification.
    DataLimitExceeded = 0x05,
    /// 06h: a parameter (for example the PDU format version) is not
    /// supported; FEI is the byte offset of the parameter.
    UnsupportedParameter = 0x06,
}

impl Fes {
    /// Decodes a FES value received in a TermReq.
    #[must_use]
    pub const fn from_wire(v: u16) -> Option<Fes> {
        Some(match v {
            0x01 => Fes::InvalidHeaderField,
            0x02 => Fes::PduSequence,
            0x03 => Fes::HeaderDigest,
            0x04 => Fes::DataOutOfRange,
            0x05 => Fes::DataLimitExceeded,
            0x06 => Fes::UnsupportedParameter,
            _ => return None,
        })
    }
}

/// Everything that can go wrong while decoding NVMe/TCP PDUs, NVMe
/// commands and NVMe data structures.
///
/// The variants fall in three groups:
///
/// * **Transport errors** ([`Error::fes`] is `Some`): the byte stream of a
///   connection is unusable. The receiver sends a TermReq with that FES and
///   [`Error::fei`], then closes the connection.
/// * **Command errors** (everything else that comes out of a command or
///   data-structure parser): the command fails with [`Error::status`] and
///   the connection goes on.
/// * [`Error::Truncated`]: a fixed-size structure was given too few bytes.
///   The PDU decoder never returns it (it reports "need more bytes"
///   instead); for a command's data it means the host sent less than the
///   command requires.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A PDU header field is invalid ([`Fes::InvalidHeaderField`]).
    InvalidHeaderField {
        /// Byte offset of the field from the start of the PDU.
        offset: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// A PDU is not allowed here ([`Fes::PduSequence`]).
    PduSequence(&'static str),
    /// Header digest mismatch ([`Fes::HeaderDigest`]).
    HeaderDigest {
        /// CRC32C computed over the received header.
        computed: u32,
        /// Digest found on the wire.
        received: u32,
    },
    /// Data offset/length outside the command's transfer
    /// ([`Fes::DataOutOfRange`]).
    DataOutOfRange(&'static str),
    /// A negotiated data limit was exceeded ([`Fes::DataLimitExceeded`]).
    DataLimitExceeded {
        /// The offending length (or count).
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A parameter value is not supported ([`Fes::UnsupportedParameter`]).
    UnsupportedParameter {
        /// Byte offset of the parameter from the start of the PDU.
        offset: u32,
        /// What is not supported.
        reason: &'static str,
    },
    /// A fixed-size structure is shorter than required.
    Truncated {
        /// Bytes required.
        need: usize,
        /// Bytes supplied.
        have: usize,
    },
    /// The opcode (or fabrics command type) is not one this crate knows for
    /// the queue it arrived on.
    InvalidOpcode {
        /// The opcode.
        opcode: u8,
        /// The fabrics command type, for opcode 7Fh.
        fctype: Option<u8>,
    },
    /// A command or data-structure field holds an invalid value.
    InvalidField {
        /// Byte offset of the field within the submission queue entry (or
        /// the data structure being parsed).
        offset: u16,
        /// What is wrong.
        reason: &'static str,
    },
    /// The data pointer's SGL descriptor has a type or sub-type the TCP
    /// transport does not allow.
    SglDescriptorType {
        /// The SGL identifier byte (type in bits 7:4, sub-type in 3:0).
        id: u8,
    },
    /// An in-capsule data SGL points outside the capsule's data.
    SglOffsetInvalid {
        /// Offset from the SGL descriptor.
        offset: u64,
        /// Length from the SGL descriptor.
        len: u32,
        /// Bytes of in-capsule data present.
        available: usize,
    },
    /// A Connect command or its data is invalid. The Connect response
    /// carries the location: use
    /// [`connect_invalid_parameter_dw0`](crate::connect_invalid_parameter_dw0).
    ConnectInvalidParameter {
        /// `true` if the offset is within the 1024-byte Connect data,
        /// `false` if it is within the submission queue entry.
        in_data: bool,
        /// Byte offset of the invalid parameter.
        offset: u16,
        /// What is wrong.
        reason: &'static str,
    },
    /// An NVMe Qualified Name is malformed.
    InvalidNqn(&'static str),
}

impl Error {
    /// The Fatal Error Status for a transport error, `None` for errors that
    /// fail a single command.
    #[must_use]
    pub fn fes(&self) -> Option<Fes> {
        Some(match self {
            Error::InvalidHeaderField { .. } => Fes::InvalidHeaderField,
            Error::PduSequence(_) => Fes::PduSequence,
            Error::HeaderDigest { .. } => Fes::HeaderDigest,
            Error::DataOutOfRange(_) => Fes::DataOutOfRange,
            Error::DataLimitExceeded { .. } => Fes::DataLimitExceeded,
            Error::UnsupportedParameter { .. } => Fes::UnsupportedParameter,
            _ => return None,
        })
    }

    /// Fatal Error Information for the TermReq: the byte offset of the
    /// offending field for [`Fes::InvalidHeaderField`] and
    /// [`Fes::UnsupportedParameter`], zero (reserved) otherwise.
    #[must_use]
    pub fn fei(&self) -> u32 {
        match self {
            Error::InvalidHeaderField { offset, .. }
            | Error::UnsupportedParameter { offset, .. } => *offset,
            _ => 0,
        }
    }

    /// Whether the connection must be terminated (a transport error).
    #[must_use]
    pub fn is_fatal(&self) -> bool {
        self.fes().is_some()
    }

    /// The completion status for a command that failed with this error.
    /// Transport errors map to Transient Transport Error (they should have
    /// terminated the connection instead; the mapping exists so that every
    /// error has a status).
    #[must_use]
    pub fn status(&self) -> Status {
        match self {
            Error::InvalidOpcode { .. } => Status::INVALID_OPCODE.with_dnr(),
            Error::InvalidField { .. } | Error::InvalidNqn(_) => Status::INVALID_FIELD.with_dnr(),
            Error::Truncated { .. } => Status::DATA_SGL_LENGTH_INVALID.with_dnr(),
            Error::SglDescriptorType { .. } => Status::SGL_DESCRIPTOR_TYPE_INVALID.with_dnr(),
            Error::SglOffsetInvalid { .. } => Status::SGL_OFFSET_INVALID.with_dnr(),
            Error::ConnectInvalidParameter { .. } => Status::CONNECT_INVALID_PARAMETERS.with_dnr(),
            _ => Status::TRANSIENT_TRANSPORT_ERROR,
        }
    }

    /// The parameter error location for the Error Information log page
    /// (byte offset in bits 7:0, bit in 10:8; 0xFFFF when unknown): known
    /// for field errors within a submission queue entry.
    #[must_use]
    pub fn error_location(&self) -> u16 {
        match self {
            Error::InvalidField { offset, .. } if *offset < 64 => *offset,
            Error::ConnectInvalidParameter {
                in_data: false,
                offset,
                ..
            } => *offset,
            Error::InvalidOpcode { .. } => 0,
            Error::SglDescriptorType { .. } | Error::SglOffsetInvalid { .. } => 24,
            _ => 0xffff,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidHeaderField { offset, reason } => {
                write!(
                    f,
                    "invalid NVMe/TCP PDU header field at byte {offset}: {reason}"
                )
            }
            Error::PduSequence(what) => write!(f, "NVMe/TCP PDU sequence error: {what}"),
            Error::HeaderDigest { computed, received } => write!(
                f,
                "NVMe/TCP header digest mismatch: computed {computed:#010x}, received {received:#010x}"
            ),
            Error::DataOutOfRange(what) => write!(f, "NVMe/TCP data transfer out of range: {what}"),
            Error::DataLimitExceeded { len, max } => {
                write!(f, "NVMe/TCP data transfer limit exceeded: {len} > {max}")
            }
            Error::UnsupportedParameter { offset, reason } => {
                write!(
                    f,
                    "unsupported NVMe/TCP parameter at byte {offset}: {reason}"
                )
            }
            Error::Truncated { need, have } => {
                write!(
                    f,
                    "truncated NVMe structure: need {need} bytes, have {have}"
                )
            }
            Error::InvalidOpcode {
                opcode,
                fctype: Some(t),
            } => write!(
                f,
                "invalid NVMe opcode {opcode:#04x} (fabrics type {t:#04x})"
            ),
            Error::InvalidOpcode {
                opcode,
                fctype: None,
            } => write!(f, "invalid NVMe opcode {opcode:#04x}"),
            Error::InvalidField { offset, reason } => {
                write!(f, "invalid NVMe field at byte {offset}: {reason}")
            }
            Error::SglDescriptorType { id } => {
                write!(f, "SGL descriptor type {id:#04x} not supported over TCP")
            }
            Error::SglOffsetInvalid {
                offset,
                len,
                available,
            } => write!(
                f,
                "in-capsule SGL offset {offset} length {len} outside {available} bytes of data"
            ),
            Error::ConnectInvalidParameter {
                in_data,
                offset,
                reason,
            } => write!(
                f,
                "invalid Connect parameter at {} byte {offset}: {reason}",
                if *in_data { "data" } else { "command" }
            ),
            Error::InvalidNqn(what) => write!(f, "invalid NQN: {what}"),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_errors_have_fes_and_fei() {
        let e = Error::InvalidHeaderField {
            offset: 2,
            reason: "hlen",
        };
        assert_eq!(e.fes(), Some(Fes::InvalidHeaderField));
        assert_eq!(e.fei(), 2);
        assert!(e.is_fatal());
        let e = Error::HeaderDigest {
            computed: 1,
            received: 2,
        };
        assert_eq!(e.fes(), Some(Fes::HeaderDigest));
        assert_eq!(e.fei(), 0);
        assert_eq!(
            Error::DataLimitExceeded { len: 9, max: 8 }.fes(),
            Some(Fes::DataLimitExceeded)
        );
        for v in 1..=6 {
            assert_eq!(Fes::from_wire(v).map(|f| f as u16), Some(v));
        }
        assert_eq!(Fes::from_wire(0), None);
        assert_eq!(Fes::from_wire(7), None);
    }

    #[test]
    fn command_errors_map_to_status() {
        let e = Error::InvalidOpcode {
            opcode: 0x42,
            fctype: None,
        };
        assert!(!e.is_fatal());
        assert_eq!(e.status(), Status::INVALID_OPCODE.with_dnr());
        assert_eq!(
            Error::InvalidField {
                offset: 40,
                reason: "x"
            }
            .error_location(),
            40
        );
        assert_eq!(
            Error::ConnectInvalidParameter {
                in_data: true,
                offset: 256,
                reason: "subnqn"
            }
            .status(),
            Status::CONNECT_INVALID_PARAMETERS.with_dnr()
        );
        assert_eq!(
            Error::SglDescriptorType { id: 0x30 }.status(),
            Status::SGL_DESCRIPTOR_TYPE_INVALID.with_dnr()
        );
    }
}
