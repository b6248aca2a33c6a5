//! Typed views of the commands a fabrics controller serves (NVMe Base
//! specification "Admin Command Set", NVM Command Set specification, NVMe
//! over Fabrics "Fabrics Command Set").
//!
//! [`Command::parse`] turns a [`Sqe`] into a [`Command`] whose variants
//! hold the command dwords decoded into named fields;
//! [`Command::to_sqe`] does the reverse for an initiator. Parsing is a
//! syntax check: unknown opcodes are [`Error::InvalidOpcode`], and a field
//! is rejected only where it cannot be interpreted at all. Whether a value
//! is acceptable (an LBA range, a feature, a queue size) is the
//! controller's decision, helped by the checks offered here.

use crate::error::{Error, Result};
use crate::queue::{FLAGS_SGL, Sgl, Sqe};
use crate::status::Status;
use crate::wire::{bit, bits, fixed, put_u64, u32_at, u64_at};

/// Admin command opcodes.
pub mod admin_opcode {
    /// Delete I/O Submission Queue (not used over fabrics).
    pub const DELETE_IO_SQ: u8 = 0x00;
    /// Create I/O Submission Queue (not used over fabrics).
    pub const CREATE_IO_SQ: u8 = 0x01;
    /// Get Log Page.
    pub const GET_LOG_PAGE: u8 = 0x02;
    /// Delete I/O Completion Queue (not used over fabrics).
    pub const DELETE_IO_CQ: u8 = 0x04;
    /// Create I/O Completion Queue (not used over fabrics).
    pub const CREATE_IO_CQ: u8 = 0x05;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Abort.
    pub const ABORT: u8 = 0x08;
    /// Set Features.
    pub const SET_FEATURES: u8 = 0x09;
    /// Get Features.
    pub const GET_FEATURES: u8 = 0x0a;
    /// Asynchronous Event Request.
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0c;
    /// Keep Alive.
    pub const KEEP_ALIVE: u8 = 0x18;
}

/// NVM command set I/O opcodes.
pub mod io_opcode {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
    /// Write Uncorrectable.
    pub const WRITE_UNCORRECTABLE: u8 = 0x04;
    /// Compare.
    pub const COMPARE: u8 = 0x05;
    /// Write Zeroes.
    pub const WRITE_ZEROES: u8 = 0x08;
    /// Dataset Management.
    pub const DATASET_MANAGEMENT: u8 = 0x09;
    /// Verify.
    pub const VERIFY: u8 = 0x0c;
    /// Reservation Register.
    pub const RESERVATION_REGISTER: u8 = 0x0d;
    /// Reservation Report.
    pub const RESERVATION_REPORT: u8 = 0x0e;
    /// Reservation Acquire.
    pub const RESERVATION_ACQUIRE: u8 = 0x11;
    /// Reservation Release.
    pub const RESERVATION_RELEASE: u8 = 0x15;
}

/// The fabrics opcode (any queue); byte 4 of the SQE holds the
/// [`fctype`].
pub const FABRICS_OPCODE: u8 = 0x7f;

/// Fabrics command types (SQE byte 4 when the opcode is 7Fh).
pub mod fctype {
    /// Property Set.
    pub const PROPERTY_SET: u8 = 0x00;
    /// Connect.
    pub const CONNECT: u8 = 0x01;
    /// Property Get.
    pub const PROPERTY_GET: u8 = 0x04;
    /// Authentication Send.
    pub const AUTHENTICATION_SEND: u8 = 0x05;
    /// Authentication Receive.
    pub const AUTHENTICATION_RECEIVE: u8 = 0x06;
    /// Disconnect.
    pub const DISCONNECT: u8 = 0x08;
}

/// The queue a command arrived on: opcodes mean different things on the
/// admin queue (QID 0) and on I/O queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// The admin queue.
    Admin,
    /// An I/O queue.
    Io,
}

/// Direction of a command's data, from the opcode (or fabrics type) bits
/// 1:0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDirection {
    /// 00b: no data.
    None,
    /// 01b: host to controller (the controller sends R2Ts or reads
    /// in-capsule data).
    HostToController,
    /// 10b: controller to host (the controller sends C2HData).
    ControllerToHost,
    /// 11b: bidirectional.
    Bidirectional,
}

impl Sqe {
    /// The data direction implied by the opcode (fabrics: by FCTYPE).
    #[must_use]
    pub const fn data_direction(&self) -> DataDirection {
        let code = if self.opcode == FABRICS_OPCODE {
            self.fctype()
        } else {
            self.opcode
        };
        match code & 3 {
            0 => DataDirection::None,
            1 => DataDirection::HostToController,
            2 => DataDirection::ControllerToHost,
            _ => DataDirection::Bidirectional,
        }
    }
}

/// A parsed command. Namespace ID, CID and data pointer stay in the
/// [`Sqe`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Get Log Page (admin 02h).
    GetLogPage(GetLogPage),
    /// Identify (admin 06h).
    Identify(Identify),
    /// Abort (admin 08h).
    Abort(Abort),
    /// Set Features (admin 09h).
    SetFeatures(SetFeatures),
    /// Get Features (admin 0Ah).
    GetFeatures(GetFeatures),
    /// Asynchronous Event Request (admin 0Ch): completes when an event
    /// occurs.
    AsyncEventRequest,
    /// Keep Alive (admin 18h).
    KeepAlive,
    /// Fabrics Property Set (admin queue).
    PropertySet(PropertySet),
    /// Fabrics Property Get (admin queue).
    PropertyGet(PropertyGet),
    /// Fabrics Connect (first command on every queue).
    Connect(Connect),
    /// Fabrics Authentication Send.
    AuthenticationSend(Authentication),
    /// Fabrics Authentication Receive.
    AuthenticationReceive(Authentication),
    /// Fabrics Disconnect (I/O queues): the controller deletes the queue.
    Disconnect {
        /// Record format (0).
        recfmt: u16,
    },
    /// Flush (I/O 00h).
    Flush,
    /// Write (I/O 01h).
    Write(ReadWrite),
    /// Read (I/O 02h).
    Read(ReadWrite),
    /// Write Zeroes (I/O 08h).
    WriteZeroes(WriteZeroes),
    /// Dataset Management (I/O 09h); the ranges are the command's data.
    DatasetManagement(DatasetManagement),
    /// Reservation Register (I/O 0Dh); keys are the command's data.
    ReservationRegister(ReservationRegister),
    /// Reservation Report (I/O 0Eh).
    ReservationReport(ReservationReport),
    /// Reservation Acquire (I/O 11h); keys are the command's data.
    ReservationAcquire(ReservationAcquire),
    /// Reservation Release (I/O 15h); the key is the command's data.
    ReservationRelease(ReservationRelease),
}

/// Get Log Page fields (CDW10-14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GetLogPage {
    /// Log page identifier (CDW10 7:0; see [`log_id`](crate::log_id)).
    pub lid: u8,
    /// Log specific field (CDW10 14:8); for the ANA log bit 0 is RGO.
    pub lsp: u8,
    /// Retain Asynchronous Event (CDW10 bit 15).
    pub rae: bool,
    /// Number of dwords, 0's based (NUMDU:NUMDL, CDW11 15:0 and CDW10
    /// 31:16).
    pub numd: u32,
    /// Log specific identifier (CDW11 31:16).
    pub lsi: u16,
    /// Log page offset in bytes (CDW13:CDW12).
    pub lpo: u64,
    /// UUID index (CDW14 6:0).
    pub uuid_index: u8,
    /// Offset type: LPO is an index, not bytes (CDW14 bit 23).
    pub ot: bool,
    /// Command set identifier (CDW14 31:24).
    pub csi: u8,
}

impl GetLogPage {
    /// Bytes requested: `(numd + 1) * 4`.
    #[must_use]
    pub const fn len(&self) -> u64 {
        (self.numd as u64 + 1) * 4
    }

    /// Never true: at least one dword is always requested.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        false
    }
}

/// Identify fields (CDW10-11, 14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Identify {
    /// Controller or Namespace Structure (CDW10 7:0; see [`cns`](crate::cns)).
    pub cns: u8,
    /// Controller identifier (CDW10 31:16).
    pub cntid: u16,
    /// CNS specific identifier (CDW11 15:0).
    pub cnssid: u16,
    /// Command set identifier (CDW11 31:24).
    pub csi: u8,
    /// UUID index (CDW14 6:0).
    pub uuid_index: u8,
}

/// Abort fields (CDW10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Abort {
    /// Submission queue of the command to abort (15:0).
    pub sqid: u16,
    /// CID of the command to abort (31:16).
    pub cid: u16,
}

/// Set Features fields (CDW10-15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetFeatures {
    /// Feature identifier (CDW10 7:0; see [`feature_id`](crate::feature_id)).
    pub fid: u8,
    /// Save across power cycles (CDW10 bit 31).
    pub sv: bool,
    /// Feature specific value (CDW11).
    pub cdw11: u32,
    /// Feature specific (CDW12).
    pub cdw12: u32,
    /// Feature specific (CDW13).
    pub cdw13: u32,
    /// UUID index (CDW14 6:0).
    pub uuid_index: u8,
    /// Feature specific (CDW15).
    pub cdw15: u32,
}

/// Get Features fields (CDW10-11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GetFeatures {
    /// Feature identifier (CDW10 7:0).
    pub fid: u8,
    /// Select (CDW10 10:8): 0 current, 1 default, 2 saved, 3 supported
    /// capabilities.
    pub sel: u8,
    /// Feature specific (CDW11).
    pub cdw11: u32,
    /// UUID index (CDW14 6:0).
    pub uuid_index: u8,
}

/// Size of a property access (ATTRIB bits 2:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertySize {
    /// 0: 4 bytes.
    Four,
    /// 1: 8 bytes.
    Eight,
}

impl PropertySize {
    fn from_attrib(a: u8) -> Result<PropertySize> {
        match a & 7 {
            0 => Ok(PropertySize::Four),
            1 => Ok(PropertySize::Eight),
            _ => Err(Error::InvalidField {
                offset: 40,
                reason: "property size must be 4 or 8 bytes",
            }),
        }
    }

    const fn attrib(self) -> u32 {
        match self {
            PropertySize::Four => 0,
            PropertySize::Eight => 1,
        }
    }

    /// Bytes.
    #[must_use]
    pub const fn bytes(self) -> usize {
        match self {
            PropertySize::Four => 4,
            PropertySize::Eight => 8,
        }
    }
}

/// Property Set fields (SQE bytes 40, 44-47, 48-55).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PropertySet {
    /// Access size.
    pub size: PropertySize,
    /// Property offset (see [`register`](crate::register)).
    pub offset: u32,
    /// Value (only the low 4 bytes for a 4-byte access).
    pub value: u64,
}

/// Property Get fields (SQE bytes 40, 44-47). The value comes back in
/// completion DW0 (and DW1 for 8 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PropertyGet {
    /// Access size.
    pub size: PropertySize,
    /// Property offset.
    pub offset: u32,
}

/// Connect fields (SQE bytes 40-51); the 1024-byte
/// [`ConnectData`](crate::ConnectData) is the command's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Connect {
    /// Record format (bytes 40-41; 0).
    pub recfmt: u16,
    /// Queue to create: 0 admin, else I/O (bytes 42-43).
    pub qid: u16,
    /// Submission queue size, 0's based (bytes 44-45).
    pub sqsize: u16,
    /// Connect attributes (byte 46): bit 2 disables SQ flow control,
    /// bits 1:0 priority class.
    pub cattr: u8,
    /// Keep alive timeout in milliseconds (bytes 48-51; admin queue only).
    pub kato: u32,
}

/// Connect attribute: the host does not use SQ head pointer flow control.
pub const CATTR_DISABLE_SQ_FLOW_CONTROL: u8 = 1 << 2;

impl Connect {
    /// Whether the host disabled SQ flow control (then C2HData may carry
    /// SUCCESS and SQHD is reserved).
    #[must_use]
    pub const fn sq_flow_control_disabled(&self) -> bool {
        self.cattr & CATTR_DISABLE_SQ_FLOW_CONTROL != 0
    }

    /// Queue entries: `sqsize + 1`.
    #[must_use]
    pub const fn queue_entries(&self) -> u32 {
        self.sqsize as u32 + 1
    }
}

/// Authentication Send/Receive fields (SQE bytes 41-47).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Authentication {
    /// Security protocol specific 0 (byte 41).
    pub spsp0: u8,
    /// Security protocol specific 1 (byte 42).
    pub spsp1: u8,
    /// Security protocol (byte 43; E9h for NVMe in-band authentication).
    pub secp: u8,
    /// Transfer length (Send) or allocation length (Receive), bytes 44-47.
    pub len: u32,
}

/// Read and Write fields (CDW10-15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadWrite {
    /// Starting LBA (CDW11:CDW10).
    pub slba: u64,
    /// Number of logical blocks, 0's based (CDW12 15:0).
    pub nlb: u16,
    /// Directive type (CDW12 23:20).
    pub dtype: u8,
    /// Protection information field (CDW12 29:26).
    pub prinfo: u8,
    /// Force Unit Access (CDW12 bit 30).
    pub fua: bool,
    /// Limited Retry (CDW12 bit 31).
    pub lr: bool,
    /// Dataset management hints (CDW13 7:0).
    pub dsm: u8,
    /// Directive specific (CDW13 31:16).
    pub dspec: u16,
    /// Initial logical block reference tag (CDW14).
    pub reftag: u32,
    /// Logical block application tag (CDW15 15:0).
    pub lbat: u16,
    /// Logical block application tag mask (CDW15 31:16).
    pub lbatm: u16,
}

impl ReadWrite {
    /// Number of logical blocks: `nlb + 1`.
    #[must_use]
    pub const fn blocks(&self) -> u32 {
        self.nlb as u32 + 1
    }

    /// Checks the LBA range against a namespace of `nsze` blocks:
    /// [`Status::LBA_OUT_OF_RANGE`] if it extends past the end.
    pub fn check_range(&self, nsze: u64) -> Result<(), Status> {
        lba_range(self.slba, self.blocks(), nsze)
    }

    /// Bytes transferred for a block size of `2^lbads`.
    #[must_use]
    pub const fn data_len(&self, lbads: u8) -> u64 {
        (self.blocks() as u64) << lbads
    }
}

fn lba_range(slba: u64, blocks: u32, nsze: u64) -> Result<(), Status> {
    match slba.checked_add(u64::from(blocks)) {
        Some(end) if end <= nsze => Ok(()),
        _ => Err(Status::LBA_OUT_OF_RANGE.with_dnr()),
    }
}

/// Write Zeroes fields (CDW10-15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteZeroes {
    /// Starting LBA.
    pub slba: u64,
    /// Number of logical blocks, 0's based (CDW12 15:0).
    pub nlb: u16,
    /// Deallocate (CDW12 bit 25): the controller may deallocate the blocks
    /// (they must still read back as zeroes).
    pub deac: bool,
    /// Protection information field (CDW12 29:26).
    pub prinfo: u8,
    /// Force Unit Access (CDW12 bit 30).
    pub fua: bool,
    /// Limited Retry (CDW12 bit 31).
    pub lr: bool,
    /// Initial logical block reference tag (CDW14).
    pub reftag: u32,
    /// Application tag (CDW15 15:0).
    pub lbat: u16,
    /// Application tag mask (CDW15 31:16).
    pub lbatm: u16,
}

impl WriteZeroes {
    /// Number of logical blocks: `nlb + 1`.
    #[must_use]
    pub const fn blocks(&self) -> u32 {
        self.nlb as u32 + 1
    }

    /// Checks the LBA range against a namespace of `nsze` blocks.
    pub fn check_range(&self, nsze: u64) -> Result<(), Status> {
        lba_range(self.slba, self.blocks(), nsze)
    }
}

/// Dataset Management fields (CDW10-11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DatasetManagement {
    /// Number of ranges, 0's based (CDW10 7:0).
    pub nr: u8,
    /// Integral Dataset for Read (CDW11 bit 0).
    pub idr: bool,
    /// Integral Dataset for Write (CDW11 bit 1).
    pub idw: bool,
    /// Deallocate (CDW11 bit 2).
    pub ad: bool,
}

impl DatasetManagement {
    /// Number of ranges: `nr + 1`.
    #[must_use]
    pub const fn ranges(&self) -> usize {
        self.nr as usize + 1
    }

    /// Bytes of range data the command carries.
    #[must_use]
    pub const fn data_len(&self) -> usize {
        self.ranges() * DSM_RANGE_LEN
    }
}

/// Size of one Dataset Management range.
pub const DSM_RANGE_LEN: usize = 16;

/// One Dataset Management range:
///
/// ```text
/// bytes 0-3    context attributes
/// bytes 4-7    length in logical blocks (not 0's based)
/// bytes 8-15   starting LBA
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DsmRange {
    /// Context attributes.
    pub context_attributes: u32,
    /// Number of logical blocks.
    pub nlb: u32,
    /// Starting LBA.
    pub slba: u64,
}

impl DsmRange {
    /// Decodes the first `count` ranges of a Dataset Management command's
    /// data; fewer bytes than needed is [`Error::Truncated`].
    pub fn parse_list(data: &[u8], count: usize) -> Result<impl Iterator<Item = DsmRange> + '_> {
        let need = count * DSM_RANGE_LEN;
        let data = data.get(..need).ok_or(Error::Truncated {
            need,
            have: data.len(),
        })?;
        Ok(data.chunks_exact(DSM_RANGE_LEN).map(|r| DsmRange {
            context_attributes: u32_at(r, 0),
            nlb: u32_at(r, 4),
            slba: u64_at(r, 8),
        }))
    }

    /// Appends the 16 bytes of this range.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.context_attributes.to_le_bytes());
        out.extend_from_slice(&self.nlb.to_le_bytes());
        out.extend_from_slice(&self.slba.to_le_bytes());
    }
}

/// Reservation types (RTYPE).
pub mod rtype {
    /// Write Exclusive.
    pub const WRITE_EXCLUSIVE: u8 = 1;
    /// Exclusive Access.
    pub const EXCLUSIVE_ACCESS: u8 = 2;
    /// Write Exclusive - Registrants Only.
    pub const WRITE_EXCLUSIVE_REG_ONLY: u8 = 3;
    /// Exclusive Access - Registrants Only.
    pub const EXCLUSIVE_ACCESS_REG_ONLY: u8 = 4;
    /// Write Exclusive - All Registrants.
    pub const WRITE_EXCLUSIVE_ALL_REGS: u8 = 5;
    /// Exclusive Access - All Registrants.
    pub const EXCLUSIVE_ACCESS_ALL_REGS: u8 = 6;
}

/// Reservation Register fields (CDW10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReservationRegister {
    /// Register action (2:0): 0 register, 1 unregister, 2 replace.
    pub rrega: u8,
    /// Ignore Existing Key (bit 3).
    pub iekey: bool,
    /// Change Persist Through Power Loss state (31:30): 0 no change,
    /// 2 clear, 3 set.
    pub cptpl: u8,
}

/// Reservation Report fields (CDW10-11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReservationReport {
    /// Number of dwords to return, 0's based (CDW10).
    pub numd: u32,
    /// Extended data structure: 128-bit host identifiers (CDW11 bit 0).
    pub eds: bool,
}

impl ReservationReport {
    /// Bytes requested: `(numd + 1) * 4`.
    #[must_use]
    pub const fn len(&self) -> u64 {
        (self.numd as u64 + 1) * 4
    }

    /// Never true.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        false
    }
}

/// Reservation Acquire fields (CDW10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReservationAcquire {
    /// Acquire action (2:0): 0 acquire, 1 preempt, 2 preempt and abort.
    pub racqa: u8,
    /// Ignore Existing Key (bit 3).
    pub iekey: bool,
    /// Reservation type (15:8; see [`rtype`]).
    pub rtype: u8,
}

/// Reservation Release fields (CDW10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReservationRelease {
    /// Release action (2:0): 0 release, 1 clear.
    pub rrela: u8,
    /// Ignore Existing Key (bit 3).
    pub iekey: bool,
    /// Reservation type (15:8).
    pub rtype: u8,
}

/// Data of Reservation Register (16 bytes) and Acquire (16 bytes): the
/// current key and a second key (new key for Register, preempt key for
/// Acquire). Release carries only the current key (8 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReservationKeys {
    /// Current reservation key (bytes 0-7).
    pub crkey: u64,
    /// New (Register) or preempt (Acquire) key (bytes 8-15); 0 for
    /// Release.
    pub other: u64,
}

impl ReservationKeys {
    /// Parses Register/Acquire data (16 bytes).
    pub fn parse(data: &[u8]) -> Result<ReservationKeys> {
        let b = fixed::<16>(data)?;
        Ok(ReservationKeys {
            crkey: u64_at(b, 0),
            other: u64_at(b, 8),
        })
    }

    /// Parses Release data (8 bytes).
    pub fn parse_release(data: &[u8]) -> Result<ReservationKeys> {
        let b = fixed::<8>(data)?;
        Ok(ReservationKeys {
            crkey: u64_at(b, 0),
            other: 0,
        })
    }

    /// The 16 bytes of Register/Acquire data.
    #[must_use]
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        put_u64(&mut b, 0, self.crkey);
        put_u64(&mut b, 8, self.other);
        b
    }
}

fn invalid_opcode(sqe: &Sqe) -> Error {
    Error::InvalidOpcode {
        opcode: sqe.opcode,
        fctype: (sqe.opcode == FABRICS_OPCODE).then_some(sqe.fctype()),
    }
}

const fn lo16(v: u32) -> u16 {
    v as u16
}

const fn hi16(v: u32) -> u16 {
    (v >> 16) as u16
}

impl Command {
    /// Decodes the command in `sqe`, which arrived on a `queue`.
    pub fn parse(sqe: &Sqe, queue: QueueType) -> Result<Command> {
        if sqe.opcode == FABRICS_OPCODE {
            return Command::parse_fabrics(sqe, queue);
        }
        let (c10, c11, c12, c13, c14, c15) = (
            sqe.cdw10, sqe.cdw11, sqe.cdw12, sqe.cdw13, sqe.cdw14, sqe.cdw15,
        );
        let uuid_index = bits(c14, 0, 6) as u8;
        Ok(match queue {
            QueueType::Admin => match sqe.opcode {
                admin_opcode::GET_LOG_PAGE => Command::GetLogPage(GetLogPage {
                    lid: bits(c10, 0, 7) as u8,
                    lsp: bits(c10, 8, 14) as u8,
                    rae: bit(c10, 15),
                    numd: (u32::from(lo16(c11)) << 16) | u32::from(hi16(c10)),
                    lsi: hi16(c11),
                    lpo: u64::from(c12) | (u64::from(c13) << 32),
                    uuid_index,
                    ot: bit(c14, 23),
                    csi: bits(c14, 24, 31) as u8,
                }),
                admin_opcode::IDENTIFY => Command::Identify(Identify {
                    cns: bits(c10, 0, 7) as u8,
                    cntid: hi16(c10),
                    cnssid: lo16(c11),
                    csi: bits(c11, 24, 31) as u8,
                    uuid_index,
                }),
                admin_opcode::ABORT => Command::Abort(Abort {
                    sqid: lo16(c10),
                    cid: hi16(c10),
                }),
                admin_opcode::SET_FEATURES => Command::SetFeatures(SetFeatures {
                    fid: bits(c10, 0, 7) as u8,
                    sv: bit(c10, 31),
                    cdw11: c11,
                    cdw12: c12,
                    cdw13: c13,
                    uuid_index,
                    cdw15: c15,
                }),
                admin_opcode::GET_FEATURES => Command::GetFeatures(GetFeatures {
                    fid: bits(c10, 0, 7) as u8,
                    sel: bits(c10, 8, 10) as u8,
                    cdw11: c11,
                    uuid_index,
                }),
                admin_opcode::ASYNC_EVENT_REQUEST => Command::AsyncEventRequest,
                admin_opcode::KEEP_ALIVE => Command::KeepAlive,
                _ => return Err(invalid_opcode(sqe)),
            },
            QueueType::Io => match sqe.opcode {
                io_opcode::FLUSH => Command::Flush,
                io_opcode::READ | io_opcode::WRITE => {
                    let rw = ReadWrite {
                        slba: u64::from(c10) | (u64::from(c11) << 32),
                        nlb: lo16(c12),
                        dtype: bits(c12, 20, 23) as u8,
                        prinfo: bits(c12, 26, 29) as u8,
                        fua: bit(c12, 30),
                        lr: bit(c12, 31),
                        dsm: bits(c13, 0, 7) as u8,
                        dspec: hi16(c13),
                        reftag: c14,
                        lbat: lo16(c15),
                        lbatm: hi16(c15),
                    };
                    if sqe.opcode == io_opcode::READ {
                        Command::Read(rw)
                    } else {
                        Command::Write(rw)
                    }
                }
                io_opcode::WRITE_ZEROES => Command::WriteZeroes(WriteZeroes {
                    slba: u64::from(c10) | (u64::from(c11) << 32),
                    nlb: lo16(c12),
                    deac: bit(c12, 25),
                    prinfo: bits(c12, 26, 29) as u8,
                    fua: bit(c12, 30),
                    lr: bit(c12, 31),
                    reftag: c14,
                    lbat: lo16(c15),
                    lbatm: hi16(c15),
                }),
                io_opcode::DATASET_MANAGEMENT => Command::DatasetManagement(DatasetManagement {
                    nr: bits(c10, 0, 7) as u8,
                    idr: bit(c11, 0),
                    idw: bit(c11, 1),
                    ad: bit(c11, 2),
                }),
                io_opcode::RESERVATION_REGISTER => {
                    Command::ReservationRegister(ReservationRegister {
                        rrega: bits(c10, 0, 2) as u8,
                        iekey: bit(c10, 3),
                        cptpl: bits(c10, 30, 31) as u8,
                    })
                }
                io_opcode::RESERVATION_REPORT => Command::ReservationReport(ReservationReport {
                    numd: c10,
                    eds: bit(c11, 0),
                }),
                io_opcode::RESERVATION_ACQUIRE => Command::ReservationAcquire(ReservationAcquire {
                    racqa: bits(c10, 0, 2) as u8,
                    iekey: bit(c10, 3),
                    rtype: bits(c10, 8, 15) as u8,
                }),
                io_opcode::RESERVATION_RELEASE => Command::ReservationRelease(ReservationRelease {
                    rrela: bits(c10, 0, 2) as u8,
                    iekey: bit(c10, 3),
                    rtype: bits(c10, 8, 15) as u8,
                }),
                _ => return Err(invalid_opcode(sqe)),
            },
        })
    }

    fn parse_fabrics(sqe: &Sqe, queue: QueueType) -> Result<Command> {
        let admin = queue == QueueType::Admin;
        let c10 = sqe.cdw10;
        Ok(match sqe.fctype() {
            fctype::CONNECT => Command::Connect(Connect {
                recfmt: lo16(c10),
                qid: hi16(c10),
                sqsize: lo16(sqe.cdw11),
                cattr: bits(sqe.cdw11, 16, 23) as u8,
                kato: sqe.cdw12,
            }),
            fctype::PROPERTY_GET if admin => Command::PropertyGet(PropertyGet {
                size: PropertySize::from_attrib(c10 as u8)?,
                offset: sqe.cdw11,
            }),
            fctype::PROPERTY_SET if admin => {
                let size = PropertySize::from_attrib(c10 as u8)?;
                let mut value = u64::from(sqe.cdw12) | (u64::from(sqe.cdw13) << 32);
                if size == PropertySize::Four {
                    value &= 0xffff_ffff;
                }
                Command::PropertySet(PropertySet {
                    size,
                    offset: sqe.cdw11,
                    value,
                })
            }
            t @ (fctype::AUTHENTICATION_SEND | fctype::AUTHENTICATION_RECEIVE) => {
                let a = Authentication {
                    spsp0: bits(c10, 8, 15) as u8,
                    spsp1: bits(c10, 16, 23) as u8,
                    secp: bits(c10, 24, 31) as u8,
                    len: sqe.cdw11,
                };
                if t == fctype::AUTHENTICATION_SEND {
                    Command::AuthenticationSend(a)
                } else {
                    Command::AuthenticationReceive(a)
                }
            }
            fctype::DISCONNECT if !admin => Command::Disconnect { recfmt: lo16(c10) },
            _ => return Err(invalid_opcode(sqe)),
        })
    }

    /// Opcode, fabrics type, and CDW10-15 of this command. Long by design: one short arm per
    /// command, a table kept whole so that every encoding sits beside the others and beside
    /// [`Command::parse`]'s.
    fn wire(&self) -> (u8, Option<u8>, [u32; 6]) {
        let uuid = |u: u8| u32::from(u & 0x7f);
        let b = |v: bool, n: u32| u32::from(v) << n;
        match *self {
            Command::GetLogPage(g) => (
                admin_opcode::GET_LOG_PAGE,
                None,
                [
                    u32::from(g.lid)
                        | (u32::from(g.lsp & 0x7f) << 8)
                        | b(g.rae, 15)
                        | ((g.numd & 0xffff) << 16),
                    (g.numd >> 16) | (u32::from(g.lsi) << 16),
                    g.lpo as u32,
                    (g.lpo >> 32) as u32,
                    uuid(g.uuid_index) | b(g.ot, 23) | (u32::from(g.csi) << 24),
                    0,
                ],
            ),
            Command::Identify(i) => (
                admin_opcode::IDENTIFY,
                None,
                [
                    u32::from(i.cns) | (u32::from(i.cntid) << 16),
                    u32::from(i.cnssid) | (u32::from(i.csi) << 24),
                    0,
                    0,
                    uuid(i.uuid_index),
                    0,
                ],
            ),
            Command::Abort(a) => (
                admin_opcode::ABORT,
                None,
                [u32::from(a.sqid) | (u32::from(a.cid) << 16), 0, 0, 0, 0, 0],
            ),
            Command::SetFeatures(s) => (
                admin_opcode::SET_FEATURES,
                None,
                [
                    u32::from(s.fid) | b(s.sv, 31),
                    s.cdw11,
                    s.cdw12,
                    s.cdw13,
                    uuid(s.uuid_index),
                    s.cdw15,
                ],
            ),
            Command::GetFeatures(g) => (
                admin_opcode::GET_FEATURES,
                None,
                [
                    u32::from(g.fid) | (u32::from(g.sel & 7) << 8),
                    g.cdw11,
                    0,
                    0,
                    uuid(g.uuid_index),
                    0,
                ],
            ),
            Command::AsyncEventRequest => (admin_opcode::ASYNC_EVENT_REQUEST, None, [0; 6]),
            Command::KeepAlive => (admin_opcode::KEEP_ALIVE, None, [0; 6]),
            Command::PropertySet(p) => (
                FABRICS_OPCODE,
                Some(fctype::PROPERTY_SET),
                [
                    p.size.attrib(),
                    p.offset,
                    p.value as u32,
                    (p.value >> 32) as u32,
                    0,
                    0,
                ],
            ),
            Command::PropertyGet(p) => (
                FABRICS_OPCODE,
                Some(fctype::PROPERTY_GET),
                [p.size.attrib(), p.offset, 0, 0, 0, 0],
            ),
            Command::Connect(c) => (
                FABRICS_OPCODE,
                Some(fctype::CONNECT),
                [
                    u32::from(c.recfmt) | (u32::from(c.qid) << 16),
                    u32::from(c.sqsize) | (u32::from(c.cattr) << 16),
                    c.kato,
                    0,
                    0,
                    0,
                ],
            ),
            Command::AuthenticationSend(a) | Command::AuthenticationReceive(a) => (
                FABRICS_OPCODE,
                Some(if matches!(self, Command::AuthenticationSend(_)) {
                    fctype::AUTHENTICATION_SEND
                } else {
                    fctype::AUTHENTICATION_RECEIVE
                }),
                [
                    (u32::from(a.spsp0) << 8)
                        | (u32::from(a.spsp1) << 16)
                        | (u32::from(a.secp) << 24),
                    a.len,
                    0,
                    0,
                    0,
                    0,
                ],
            ),
            Command::Disconnect { recfmt } => (
                FABRICS_OPCODE,
                Some(fctype::DISCONNECT),
                [u32::from(recfmt), 0, 0, 0, 0, 0],
            ),
            Command::Flush => (io_opcode::FLUSH, None, [0; 6]),
            Command::Read(rw) | Command::Write(rw) => (
                if matches!(self, Command::Read(_)) {
                    io_opcode::READ
                } else {
                    io_opcode::WRITE
                },
                None,
                [
                    rw.slba as u32,
                    (rw.slba >> 32) as u32,
                    u32::from(rw.nlb)
                        | (u32::from(rw.dtype & 0xf) << 20)
                        | (u32::from(rw.prinfo & 0xf) << 26)
                        | b(rw.fua, 30)
                        | b(rw.lr, 31),
                    u32::from(rw.dsm) | (u32::from(rw.dspec) << 16),
                    rw.reftag,
                    u32::from(rw.lbat) | (u32::from(rw.lbatm) << 16),
                ],
            ),
            Command::WriteZeroes(w) => (
                io_opcode::WRITE_ZEROES,
                None,
                [
                    w.slba as u32,
                    (w.slba >> 32) as u32,
                    u32::from(w.nlb)
                        | b(w.deac, 25)
                        | (u32::from(w.prinfo & 0xf) << 26)
                        | b(w.fua, 30)
                        | b(w.lr, 31),
                    0,
                    w.reftag,
                    u32::from(w.lbat) | (u32::from(w.lbatm) << 16),
                ],
            ),
            Command::DatasetManagement(d) => (
                io_opcode::DATASET_MANAGEMENT,
                None,
                [
                    u32::from(d.nr),
                    b(d.idr, 0) | b(d.idw, 1) | b(d.ad, 2),
                    0,
                    0,
                    0,
                    0,
                ],
            ),
            Command::ReservationRegister(r) => (
                io_opcode::RESERVATION_REGISTER,
                None,
                [
                    u32::from(r.rrega & 7) | b(r.iekey, 3) | (u32::from(r.cptpl & 3) << 30),
                    0,
                    0,
                    0,
                    0,
                    0,
                ],
            ),
            Command::ReservationReport(r) => (
                io_opcode::RESERVATION_REPORT,
                None,
                [r.numd, b(r.eds, 0), 0, 0, 0, 0],
            ),
            Command::ReservationAcquire(r) => (
                io_opcode::RESERVATION_ACQUIRE,
                None,
                [
                    u32::from(r.racqa & 7) | b(r.iekey, 3) | (u32::from(r.rtype) << 8),
                    0,
                    0,
                    0,
                    0,
                    0,
                ],
            ),
            Command::ReservationRelease(r) => (
                io_opcode::RESERVATION_RELEASE,
                None,
                [
                    u32::from(r.rrela & 7) | b(r.iekey, 3) | (u32::from(r.rtype) << 8),
                    0,
                    0,
                    0,
                    0,
                    0,
                ],
            ),
        }
    }

    /// Builds the submission queue entry for this command: SGL data
    /// pointer `dptr` (use [`Sgl::null`] when there is no data), PSDT set
    /// to SGL. `nsid` is ignored for fabrics commands (byte 4 holds
    /// FCTYPE).
    #[must_use]
    pub fn to_sqe(&self, cid: u16, nsid: u32, dptr: Sgl) -> Sqe {
        let (opcode, fct, c) = self.wire();
        Sqe {
            opcode,
            flags: FLAGS_SGL,
            cid,
            nsid: fct.map_or(nsid, u32::from),
            cdw2: 0,
            cdw3: 0,
            mptr: 0,
            dptr,
            cdw10: c[0],
            cdw11: c[1],
            cdw12: c[2],
            cdw13: c[3],
            cdw14: c[4],
            cdw15: c[5],
        }
    }

    /// The queue type this command is sent on (Connect: either; `None`).
    #[must_use]
    pub fn queue_type(&self) -> Option<QueueType> {
        match self {
            Command::Connect(_)
            | Command::AuthenticationSend(_)
            | Command::AuthenticationReceive(_) => None,
            Command::GetLogPage(_)
            | Command::Identify(_)
            | Command::Abort(_)
            | Command::SetFeatures(_)
            | Command::GetFeatures(_)
            | Command::AsyncEventRequest
            | Command::KeepAlive
            | Command::PropertySet(_)
            | Command::PropertyGet(_) => Some(QueueType::Admin),
            _ => Some(QueueType::Io),
        }
    }
}

/// Writes `v` at `off` of a 64-byte SQE image (test helper shared with
/// other modules' tests).
#[cfg(test)]
pub(crate) fn sqe_with(opcode: u8, fields: &[(usize, u32)]) -> Sqe {
    let mut b = [0u8; 64];
    b[0] = opcode;
    b[1] = FLAGS_SGL;
    for &(off, v) in fields {
        crate::wire::put_u32(&mut b, off, v);
    }
    Sqe::parse(&b).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_with_fua_from_hand_laid_dwords() {
        // SLBA 0x1_0000_0010 (CDW10/11), NLB 7 (8 blocks), FUA (CDW12 bit 30).
        let sqe = sqe_with(
            0x02,
            &[
                (4, 1),
                (40, 0x10),
                (44, 1),
                (48, 0x4000_0007),
                (52, 0x0005_0003),
            ],
        );
        let Command::Read(rw) = Command::parse(&sqe, QueueType::Io).unwrap() else {
            panic!()
        };
        assert_eq!(rw.slba, 0x1_0000_0010);
        assert_eq!(rw.nlb, 7);
        assert_eq!(rw.blocks(), 8);
        assert!(rw.fua);
        assert!(!rw.lr);
        assert_eq!(rw.dsm, 3);
        assert_eq!(rw.dspec, 5);
        assert_eq!(rw.data_len(12), 8 * 4096);
        assert_eq!(rw.check_range(0x1_0000_0018), Ok(()));
        assert_eq!(
            rw.check_range(0x1_0000_0017),
            Err(Status::LBA_OUT_OF_RANGE.with_dnr())
        );
        let round = Command::Read(rw).to_sqe(0, 1, Sgl::null());
        assert_eq!(round.cdw10, sqe.cdw10);
        assert_eq!(round.cdw11, sqe.cdw11);
        assert_eq!(round.cdw12, sqe.cdw12);
        assert_eq!(round.cdw13, sqe.cdw13);
        assert_eq!(sqe.data_direction(), DataDirection::ControllerToHost);
        assert_eq!(
            sqe_with(0x01, &[]).data_direction(),
            DataDirection::HostToController
        );
    }

    #[test]
    fn opcodes_depend_on_the_queue() {
        let sqe = sqe_with(0x02, &[(40, 0x00ff_0002)]); // 02h on admin: Get Log Page
        let Command::GetLogPage(g) = Command::parse(&sqe, QueueType::Admin).unwrap() else {
            panic!()
        };
        assert_eq!(g.lid, 0x02);
        assert_eq!(g.numd, 0xff);
        assert_eq!(g.len(), 1024);
        assert!(matches!(
            Command::parse(&sqe_with(0x0c, &[]), QueueType::Io),
            Err(Error::InvalidOpcode { opcode: 0x0c, .. })
        ));
        assert_eq!(
            Command::parse(&sqe_with(0x0c, &[]), QueueType::Admin),
            Ok(Command::AsyncEventRequest)
        );
        assert_eq!(
            Command::parse(&sqe_with(0x18, &[]), QueueType::Admin),
            Ok(Command::KeepAlive)
        );
        // Property Get on an I/O queue; Disconnect on the admin queue.
        let pg = sqe_with(0x7f, &[(4, 4)]);
        assert!(matches!(
            Command::parse(&pg, QueueType::Io),
            Err(Error::InvalidOpcode {
                opcode: 0x7f,
                fctype: Some(4)
            })
        ));
        let dis = sqe_with(0x7f, &[(4, 8)]);
        assert!(Command::parse(&dis, QueueType::Admin).is_err());
        assert_eq!(
            Command::parse(&dis, QueueType::Io),
            Ok(Command::Disconnect { recfmt: 0 })
        );
    }

    #[test]
    fn get_log_page_fields() {
        // LID 0Ch (ANA), LSP 1 (RGO), RAE, NUMDL 0x0003, NUMDU 0x0001,
        // LSI 0x0022, LPO 0x1_0000_0200.
        let sqe = sqe_with(
            0x02,
            &[
                (40, 0x0003_810c),
                (44, 0x0022_0001),
                (48, 0x200),
                (52, 1),
                (56, (1 << 23) | 5),
            ],
        );
        let cmd = Command::parse(&sqe, QueueType::Admin).unwrap();
        let Command::GetLogPage(g) = cmd else {
            panic!()
        };
        assert_eq!(
            g,
            GetLogPage {
                lid: 0x0c,
                lsp: 1,
                rae: true,
                numd: 0x0001_0003,
                lsi: 0x22,
                lpo: 0x1_0000_0200,
                uuid_index: 5,
                ot: true,
                csi: 0
            }
        );
        let back = cmd.to_sqe(sqe.cid, sqe.nsid, sqe.dptr);
        assert_eq!(back, sqe);
    }

    #[test]
    fn identify_abort_features() {
        let sqe = sqe_with(0x06, &[(40, 0x0005_0001), (44, 0x0200_0007)]);
        assert_eq!(
            Command::parse(&sqe, QueueType::Admin).unwrap(),
            Command::Identify(Identify {
                cns: 1,
                cntid: 5,
                cnssid: 7,
                csi: 2,
                uuid_index: 0
            })
        );
        let sqe = sqe_with(0x08, &[(40, 0x0011_0002)]);
        assert_eq!(
            Command::parse(&sqe, QueueType::Admin).unwrap(),
            Command::Abort(Abort { sqid: 2, cid: 0x11 })
        );
        // Set Features: Number of Queues (07h) with save; 4 SQs, 4 CQs.
        let sqe = sqe_with(0x09, &[(40, 0x8000_0007), (44, 0x0003_0003)]);
        let Command::SetFeatures(s) = Command::parse(&sqe, QueueType::Admin).unwrap() else {
            panic!()
        };
        assert_eq!((s.fid, s.sv, s.cdw11), (7, true, 0x0003_0003));
        // Get Features: Volatile Write Cache, SEL = supported capabilities.
        let sqe = sqe_with(0x0a, &[(40, 0x0306)]);
        let Command::GetFeatures(g) = Command::parse(&sqe, QueueType::Admin).unwrap() else {
            panic!()
        };
        assert_eq!((g.fid, g.sel), (6, 3));
    }

    #[test]
    fn fabrics_commands() {
        // Connect: RECFMT 0, QID 1, SQSIZE 127, CATTR disable SQ flow
        // control, KATO 0.
        let sqe = sqe_with(0x7f, &[(4, 1), (40, 0x0001_0000), (44, 0x0004_007f)]);
        let cmd = Command::parse(&sqe, QueueType::Io).unwrap();
        let Command::Connect(c) = cmd else { panic!() };
        assert_eq!((c.recfmt, c.qid, c.sqsize, c.kato), (0, 1, 127, 0));
        assert!(c.sq_flow_control_disabled());
        assert_eq!(c.queue_entries(), 128);
        assert_eq!(cmd.to_sqe(0, 0, sqe.dptr), sqe);
        // Property Get CAP (8 bytes at 0) and Set CC (4 bytes at 14h).
        let sqe = sqe_with(0x7f, &[(4, 4), (40, 1), (44, 0)]);
        assert_eq!(
            Command::parse(&sqe, QueueType::Admin).unwrap(),
            Command::PropertyGet(PropertyGet {
                size: PropertySize::Eight,
                offset: 0
            })
        );
        let sqe = sqe_with(
            0x7f,
            &[(4, 0), (40, 0), (44, 0x14), (48, 0x0046_0001), (52, 9)],
        );
        assert_eq!(
            Command::parse(&sqe, QueueType::Admin).unwrap(),
            Command::PropertySet(PropertySet {
                size: PropertySize::Four,
                offset: 0x14,
                value: 0x0046_0001
            })
        );
        let bad = sqe_with(0x7f, &[(4, 4), (40, 2)]);
        assert!(matches!(
            Command::parse(&bad, QueueType::Admin),
            Err(Error::InvalidField { offset: 40, .. })
        ));
        let auth = sqe_with(0x7f, &[(4, 5), (40, 0xe901_0100), (44, 64)]);
        assert_eq!(
            Command::parse(&auth, QueueType::Admin).unwrap(),
            Command::AuthenticationSend(Authentication {
                spsp0: 1,
                spsp1: 1,
                secp: 0xe9,
                len: 64
            })
        );
        assert!(matches!(
            Command::parse(&sqe_with(0x7f, &[(4, 0x42)]), QueueType::Admin),
            Err(Error::InvalidOpcode {
                fctype: Some(0x42),
                ..
            })
        ));
    }

    #[test]
    fn write_zeroes_dsm_reservations() {
        let sqe = sqe_with(0x08, &[(40, 100), (48, (1 << 25) | 15)]);
        let Command::WriteZeroes(w) = Command::parse(&sqe, QueueType::Io).unwrap() else {
            panic!()
        };
        assert!(w.deac);
        assert!(!w.fua);
        assert_eq!((w.slba, w.blocks()), (100, 16));
        assert_eq!(w.check_range(116), Ok(()));

        let sqe = sqe_with(0x09, &[(40, 1), (44, 4)]);
        let Command::DatasetManagement(d) = Command::parse(&sqe, QueueType::Io).unwrap() else {
            panic!()
        };
        assert!(d.ad && !d.idr && !d.idw);
        assert_eq!(d.ranges(), 2);
        assert_eq!(d.data_len(), 32);
        let data: Vec<u8> = [
            [0u8, 0, 0, 0, 8, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0],
            [1u8, 0, 0, 0, 1, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0],
        ]
        .concat();
        let ranges: Vec<DsmRange> = DsmRange::parse_list(&data, d.ranges()).unwrap().collect();
        assert_eq!(
            ranges,
            vec![
                DsmRange {
                    context_attributes: 0,
                    nlb: 8,
                    slba: 0x10
                },
                DsmRange {
                    context_attributes: 1,
                    nlb: 1,
                    slba: 0xffff
                }
            ]
        );
        let mut enc = Vec::new();
        for r in &ranges {
            r.encode_into(&mut enc);
        }
        assert_eq!(enc, data);
        assert!(matches!(
            DsmRange::parse_list(&data[..31], 2),
            Err(Error::Truncated { need: 32, have: 31 })
        ));

        // Register: replace (2), IEKEY, CPTPL = 3 (persist).
        let sqe = sqe_with(0x0d, &[(40, 0xc000_000a)]);
        assert_eq!(
            Command::parse(&sqe, QueueType::Io).unwrap(),
            Command::ReservationRegister(ReservationRegister {
                rrega: 2,
                iekey: true,
                cptpl: 3
            })
        );
        let sqe = sqe_with(0x11, &[(40, 0x0000_0201)]);
        assert_eq!(
            Command::parse(&sqe, QueueType::Io).unwrap(),
            Command::ReservationAcquire(ReservationAcquire {
                racqa: 1,
                iekey: false,
                rtype: rtype::EXCLUSIVE_ACCESS
            })
        );
        let sqe = sqe_with(0x15, &[(40, 0x0000_0101)]);
        assert_eq!(
            Command::parse(&sqe, QueueType::Io).unwrap(),
            Command::ReservationRelease(ReservationRelease {
                rrela: 1,
                iekey: false,
                rtype: 1
            })
        );
        let sqe = sqe_with(0x0e, &[(40, 1023), (44, 1)]);
        let Command::ReservationReport(r) = Command::parse(&sqe, QueueType::Io).unwrap() else {
            panic!()
        };
        assert!(r.eds);
        assert_eq!(r.len(), 4096);
        let keys = ReservationKeys {
            crkey: 0x1122,
            other: 0x3344,
        };
        assert_eq!(ReservationKeys::parse(&keys.encode()).unwrap(), keys);
        assert_eq!(
            ReservationKeys::parse_release(&keys.encode()[..8])
                .unwrap()
                .crkey,
            0x1122
        );
    }
}
