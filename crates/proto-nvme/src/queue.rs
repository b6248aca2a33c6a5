//! Submission and completion queue entries and SGL descriptors (NVMe Base
//! specification, "Submission Queue Entry", "Completion Queue Entry",
//! "Scatter Gather List"; NVMe over Fabrics, "Capsules").
//!
//! Submission queue entry (64 bytes, little-endian):
//!
//! ```text
//! byte  0      OPC    opcode
//! byte  1      FUSE (bits 1:0), PSDT (bits 7:6; 01b = SGL, required over fabrics)
//! bytes 2-3    CID    command identifier
//! bytes 4-7    NSID   namespace (fabrics commands: byte 4 is FCTYPE)
//! bytes 8-15   CDW2, CDW3
//! bytes 16-23  MPTR   metadata pointer
//! bytes 24-39  DPTR   data pointer: one SGL descriptor over fabrics
//! bytes 40-63  CDW10 .. CDW15
//! ```
//!
//! Completion queue entry (16 bytes):
//!
//! ```text
//! bytes 0-3    DW0 (command specific)
//! bytes 4-7    DW1 (command specific)
//! bytes 8-9    SQHD   submission queue head pointer
//! bytes 10-11  SQID
//! bytes 12-13  CID
//! bytes 14-15  status field (see `Status`), phase tag in bit 0
//! ```

use crate::error::{Error, Result};
use crate::status::Status;
use crate::wire::{fixed, put, put_u16, put_u32, put_u64, u8_at, u16_at, u32_at, u64_at};

/// Size of a submission queue entry.
pub const SQE_LEN: usize = 64;
/// Size of a completion queue entry.
pub const CQE_LEN: usize = 16;
/// Size of an SGL descriptor.
pub const SGL_LEN: usize = 16;

/// PSDT value selecting SGLs for the data transfer (byte 1 bits 7:6 = 01b).
pub const PSDT_SGL: u8 = 0b01;
/// Byte 1 of an SQE using SGLs and no fused operation.
pub const FLAGS_SGL: u8 = PSDT_SGL << 6;

/// A 64-byte submission queue entry with its common fields decoded; the
/// command-specific dwords are available raw (see
/// [`Command`](crate::Command) for the typed view).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sqe {
    /// Opcode.
    pub opcode: u8,
    /// Byte 1: FUSE in bits 1:0, PSDT in bits 7:6.
    pub flags: u8,
    /// Command identifier.
    pub cid: u16,
    /// Namespace identifier; for fabrics commands byte 4 holds FCTYPE and
    /// bytes 5-7 are reserved.
    pub nsid: u32,
    /// Command dword 2.
    pub cdw2: u32,
    /// Command dword 3.
    pub cdw3: u32,
    /// Metadata pointer.
    pub mptr: u64,
    /// Data pointer (one SGL descriptor over fabrics).
    pub dptr: Sgl,
    /// Command dwords 10 to 15.
    pub cdw10: u32,
    /// Command dword 11.
    pub cdw11: u32,
    /// Command dword 12.
    pub cdw12: u32,
    /// Command dword 13.
    pub cdw13: u32,
    /// Command dword 14.
    pub cdw14: u32,
    /// Command dword 15.
    pub cdw15: u32,
}

impl Sqe {
    /// Parses the first [`SQE_LEN`] bytes of `b`. Never fails on content.
    pub fn parse(b: &[u8]) -> Result<Sqe> {
        let b = fixed::<SQE_LEN>(b)?;
        Ok(Sqe {
            opcode: b[0],
            flags: b[1],
            cid: u16_at(b, 2),
            nsid: u32_at(b, 4),
            cdw2: u32_at(b, 8),
            cdw3: u32_at(b, 12),
            mptr: u64_at(b, 16),
            dptr: Sgl(crate::wire::arr(b, 24)),
            cdw10: u32_at(b, 40),
            cdw11: u32_at(b, 44),
            cdw12: u32_at(b, 48),
            cdw13: u32_at(b, 52),
            cdw14: u32_at(b, 56),
            cdw15: u32_at(b, 60),
        })
    }

    /// The 64 bytes of this entry.
    #[must_use]
    pub fn encode(&self) -> [u8; SQE_LEN] {
        let mut b = [0u8; SQE_LEN];
        b[0] = self.opcode;
        b[1] = self.flags;
        put_u16(&mut b, 2, self.cid);
        put_u32(&mut b, 4, self.nsid);
        put_u32(&mut b, 8, self.cdw2);
        put_u32(&mut b, 12, self.cdw3);
        put_u64(&mut b, 16, self.mptr);
        put(&mut b, 24, &self.dptr.0);
        for (i, v) in [
            self.cdw10, self.cdw11, self.cdw12, self.cdw13, self.cdw14, self.cdw15,
        ]
        .into_iter()
        .enumerate()
        {
            put_u32(&mut b, 40 + 4 * i, v);
        }
        b
    }

    /// FUSE (byte 1 bits 1:0): 0 normal, 1 first, 2 second fused command.
    #[must_use]
    pub const fn fuse(&self) -> u8 {
        self.flags & 3
    }

    /// PSDT (byte 1 bits 7:6).
    #[must_use]
    pub const fn psdt(&self) -> u8 {
        self.flags >> 6
    }

    /// Fabrics command type (byte 4), meaningful when `opcode` is
    /// [`FABRICS_OPCODE`](crate::FABRICS_OPCODE).
    #[must_use]
    pub const fn fctype(&self) -> u8 {
        self.nsid as u8
    }

    /// Classifies the data pointer as the TCP transport allows it: PSDT
    /// must select SGLs (a PRP command is an invalid field at byte 1), and
    /// the descriptor must be an in-capsule Data Block (offset sub-type) or
    /// a Transport Data Block (sub-type Ah; length 0 means no data).
    pub fn data_pointer(&self) -> Result<DataPointer> {
        if self.psdt() != PSDT_SGL {
            return Err(Error::InvalidField {
                offset: 1,
                reason: "PSDT must select SGLs over fabrics",
            });
        }
        self.dptr.classify()
    }
}

/// SGL descriptor types (identifier bits 7:4).
pub mod sgl_type {
    /// Data Block.
    pub const DATA_BLOCK: u8 = 0x0;
    /// Bit Bucket.
    pub const BIT_BUCKET: u8 = 0x1;
    /// Segment.
    pub const SEGMENT: u8 = 0x2;
    /// Last Segment.
    pub const LAST_SEGMENT: u8 = 0x3;
    /// Keyed Data Block (RDMA).
    pub const KEYED_DATA_BLOCK: u8 = 0x4;
    /// Transport SGL Data Block.
    pub const TRANSPORT_DATA_BLOCK: u8 = 0x5;
}

/// SGL descriptor sub-types (identifier bits 3:0).
pub mod sgl_subtype {
    /// Address: the address field is a memory address.
    pub const ADDRESS: u8 = 0x0;
    /// Offset: the address field is an offset into the capsule's data.
    pub const OFFSET: u8 = 0x1;
    /// Transport specific (Ah): data moves by the transport's own PDUs.
    pub const TRANSPORT: u8 = 0xa;
}

/// A raw 16-byte SGL descriptor:
///
/// ```text
/// bytes 0-7    address (or offset)
/// bytes 8-11   length
/// bytes 12-14  reserved (keyed descriptors: length is 3 bytes at 8-10, key at 11-14)
/// byte  15     SGL identifier: type (bits 7:4), sub-type (bits 3:0)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Sgl(pub [u8; SGL_LEN]);

impl Sgl {
    /// A Data Block descriptor with the offset sub-type: `len` bytes of
    /// in-capsule data at `offset` from the start of the capsule's data
    /// (identifier 01h). Hosts use it for writes small enough to travel in
    /// the command capsule.
    #[must_use]
    pub fn in_capsule(offset: u64, len: u32) -> Sgl {
        Sgl::new(
            offset,
            len,
            (sgl_type::DATA_BLOCK << 4) | sgl_subtype::OFFSET,
        )
    }

    /// A Transport SGL Data Block descriptor (identifier 5Ah): `len`
    /// bytes transferred by H2CData/C2HData PDUs. Address is zero.
    #[must_use]
    pub fn transport(len: u32) -> Sgl {
        Sgl::new(
            0,
            len,
            (sgl_type::TRANSPORT_DATA_BLOCK << 4) | sgl_subtype::TRANSPORT,
        )
    }

    /// The descriptor a command without data carries: a Transport Data
    /// Block of length 0 (what the Linux host sends).
    #[must_use]
    pub fn null() -> Sgl {
        Sgl::transport(0)
    }

    /// Builds a descriptor from its fields.
    #[must_use]
    pub fn new(addr: u64, len: u32, id: u8) -> Sgl {
        let mut b = [0u8; SGL_LEN];
        put_u64(&mut b, 0, addr);
        put_u32(&mut b, 8, len);
        b[15] = id;
        Sgl(b)
    }

    /// Address (or offset) field.
    #[must_use]
    pub fn addr(&self) -> u64 {
        u64_at(&self.0, 0)
    }

    /// Length field (bytes 8-11).
    #[must_use]
    pub fn len(&self) -> u32 {
        u32_at(&self.0, 8)
    }

    /// Whether the length is zero.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// SGL identifier byte.
    #[must_use]
    pub fn id(&self) -> u8 {
        u8_at(&self.0, 15)
    }

    /// Descriptor type (identifier bits 7:4).
    #[must_use]
    pub fn sgl_type(&self) -> u8 {
        self.id() >> 4
    }

    /// Descriptor sub-type (identifier bits 3:0).
    #[must_use]
    pub fn subtype(&self) -> u8 {
        self.id() & 0xf
    }

    /// Classifies the descriptor for the TCP transport.
    pub fn classify(&self) -> Result<DataPointer> {
        match (self.sgl_type(), self.subtype()) {
            (sgl_type::DATA_BLOCK, sgl_subtype::OFFSET) => Ok(DataPointer::InCapsule {
                offset: self.addr(),
                len: self.len(),
            }),
            (sgl_type::TRANSPORT_DATA_BLOCK, sgl_subtype::TRANSPORT) => {
                Ok(DataPointer::Transport { len: self.len() })
            }
            _ => Err(Error::SglDescriptorType { id: self.id() }),
        }
    }
}

/// Where a command's data is, as the TCP transport allows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPointer {
    /// In the command capsule, `offset` bytes into the in-capsule data.
    InCapsule {
        /// Offset into the in-capsule data (ICDOFF-relative; 0 for TCP).
        offset: u64,
        /// Length in bytes.
        len: u32,
    },
    /// Moved by H2CData (after R2T) or C2HData PDUs; `len` 0 means the
    /// command transfers no data.
    Transport {
        /// Length in bytes.
        len: u32,
    },
}

impl DataPointer {
    /// The data length in bytes.
    #[must_use]
    pub const fn len(&self) -> u32 {
        match *self {
            DataPointer::InCapsule { len, .. } | DataPointer::Transport { len } => len,
        }
    }

    /// Whether the command transfers no data.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// For in-capsule data, the slice of the capsule's data the descriptor
    /// points to; an offset/length outside `capsule_data` is
    /// [`Error::SglOffsetInvalid`]. For transport data, an empty slice.
    pub fn in_capsule_slice<'a>(&self, capsule_data: &'a [u8]) -> Result<&'a [u8]> {
        match *self {
            DataPointer::InCapsule { offset, len } => usize::try_from(offset)
                .ok()
                .and_then(|o| capsule_data.get(o..o.checked_add(len as usize)?))
                .ok_or(Error::SglOffsetInvalid {
                    offset,
                    len,
                    available: capsule_data.len(),
                }),
            DataPointer::Transport { .. } => Ok(&[]),
        }
    }
}

/// A 16-byte completion queue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cqe {
    /// Dword 0 (command specific result).
    pub dw0: u32,
    /// Dword 1 (command specific result).
    pub dw1: u32,
    /// Submission queue head pointer.
    pub sqhd: u16,
    /// Submission queue identifier.
    pub sqid: u16,
    /// Command identifier of the completed command.
    pub cid: u16,
    /// Completion status.
    pub status: Status,
}

impl Cqe {
    /// A completion for `cid` with `status` and zero result dwords.
    #[must_use]
    pub fn new(cid: u16, status: Status) -> Cqe {
        Cqe {
            cid,
            status,
            ..Cqe::default()
        }
    }

    /// Parses the first [`CQE_LEN`] bytes of `b`.
    pub fn parse(b: &[u8]) -> Result<Cqe> {
        let b = fixed::<CQE_LEN>(b)?;
        Ok(Cqe {
            dw0: u32_at(b, 0),
            dw1: u32_at(b, 4),
            sqhd: u16_at(b, 8),
            sqid: u16_at(b, 10),
            cid: u16_at(b, 12),
            status: Status::from_field(u16_at(b, 14)),
        })
    }

    /// The 16 bytes of this entry (phase tag 0).
    #[must_use]
    pub fn encode(&self) -> [u8; CQE_LEN] {
        let mut b = [0u8; CQE_LEN];
        put_u32(&mut b, 0, self.dw0);
        put_u32(&mut b, 4, self.dw1);
        put_u16(&mut b, 8, self.sqhd);
        put_u16(&mut b, 10, self.sqid);
        put_u16(&mut b, 12, self.cid);
        put_u16(&mut b, 14, self.status.to_field());
        b
    }

    /// DW0 and DW1 as one 64-bit value (Property Get of an 8-byte
    /// property).
    #[must_use]
    pub const fn result64(&self) -> u64 {
        self.dw0 as u64 | ((self.dw1 as u64) << 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_sqe_laid_out_by_hand() {
        // A Read of 8 blocks at LBA 0x1234 on namespace 1, cid 0x0a0b,
        // data by C2HData (Transport SGL, 4096 bytes), as the Linux host
        // builds it.
        let mut wire = [0u8; 64];
        wire[0] = 0x02; // Read
        wire[1] = 0x40; // PSDT = 01b
        wire[2..4].copy_from_slice(&[0x0b, 0x0a]);
        wire[4..8].copy_from_slice(&[1, 0, 0, 0]);
        wire[32..36].copy_from_slice(&[0x00, 0x10, 0x00, 0x00]); // length 4096
        wire[39] = 0x5a; // Transport SGL Data Block, sub-type Ah
        wire[40..44].copy_from_slice(&[0x34, 0x12, 0, 0]); // SLBA low
        wire[48..52].copy_from_slice(&[7, 0, 0, 0]); // NLB 0-based
        let sqe = Sqe::parse(&wire).unwrap();
        assert_eq!(sqe.opcode, 2);
        assert_eq!(sqe.cid, 0x0a0b);
        assert_eq!(sqe.nsid, 1);
        assert_eq!(sqe.psdt(), PSDT_SGL);
        assert_eq!(sqe.fuse(), 0);
        assert_eq!(sqe.cdw10, 0x1234);
        assert_eq!(sqe.cdw12, 7);
        assert_eq!(
            sqe.data_pointer().unwrap(),
            DataPointer::Transport { len: 4096 }
        );
        assert_eq!(sqe.dptr, Sgl::transport(4096));
        assert_eq!(sqe.encode(), wire);
        assert!(matches!(
            Sqe::parse(&wire[..63]),
            Err(Error::Truncated { need: 64, have: 63 })
        ));
    }

    #[test]
    fn data_pointer_rules() {
        let mut sqe = Sqe {
            flags: FLAGS_SGL,
            dptr: Sgl::in_capsule(0, 512),
            ..Sqe::default()
        };
        let dp = sqe.data_pointer().unwrap();
        assert_eq!(
            dp,
            DataPointer::InCapsule {
                offset: 0,
                len: 512
            }
        );
        let data = [7u8; 600];
        assert_eq!(dp.in_capsule_slice(&data).unwrap().len(), 512);
        assert!(matches!(
            dp.in_capsule_slice(&data[..511]),
            Err(Error::SglOffsetInvalid { .. })
        ));
        assert!(matches!(
            DataPointer::InCapsule {
                offset: u64::MAX,
                len: 1
            }
            .in_capsule_slice(&data),
            Err(Error::SglOffsetInvalid { .. })
        ));
        assert_eq!(Sgl::in_capsule(0, 1).id(), 0x01);
        assert_eq!(Sgl::null().id(), 0x5a);
        assert!(Sgl::null().is_empty());

        sqe.dptr = Sgl::new(0x1000, 512, 0x00); // Data Block, address
        assert_eq!(sqe.data_pointer(), Err(Error::SglDescriptorType { id: 0 }));
        sqe.dptr = Sgl::new(0, 512, 0x40); // keyed (RDMA)
        assert!(matches!(
            sqe.data_pointer(),
            Err(Error::SglDescriptorType { id: 0x40 })
        ));
        sqe.flags = 0; // PRP
        assert!(matches!(
            sqe.data_pointer(),
            Err(Error::InvalidField { offset: 1, .. })
        ));
    }

    #[test]
    fn cqe_laid_out_by_hand() {
        let wire: [u8; 16] = [
            0x01, 0x00, 0x00, 0x00, // DW0: cntlid 1
            0x00, 0x00, 0x00, 0x00, // DW1
            0x05, 0x00, // SQHD 5
            0x00, 0x00, // SQID 0
            0x34, 0x12, // CID
            0x04, 0x80, // Invalid Field + DNR
        ];
        let cqe = Cqe::parse(&wire).unwrap();
        assert_eq!(cqe.dw0, 1);
        assert_eq!(cqe.sqhd, 5);
        assert_eq!(cqe.cid, 0x1234);
        assert_eq!(cqe.status, Status::INVALID_FIELD.with_dnr());
        assert_eq!(cqe.encode(), wire);
        let c = Cqe {
            dw0: 0x1122_3344,
            dw1: 0x5566_7788,
            ..Cqe::new(1, Status::SUCCESS)
        };
        assert_eq!(c.result64(), 0x5566_7788_1122_3344);
    }
}
