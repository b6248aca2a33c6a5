//! Completion status (NVMe Base specification, "Completion Queue Entry" —
//! Status Field, and the status code tables that follow it).
//!
//! The 16-bit status half of completion dword 3 is laid out as:
//!
//! ```text
//! bit  15    DNR   Do Not Retry
//! bit  14    M     More (more status information in the Error log page)
//! bits 13:12 CRD   Command Retry Delay (index into CRDT1..3)
//! bits 11:9  SCT   Status Code Type
//! bits 8:1   SC    Status Code
//! bit  0     P     Phase Tag (reserved over fabrics; always 0 here)
//! ```

use std::fmt;

/// Status Code Type values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Sct {
    /// 0h: Generic Command Status.
    Generic = 0,
    /// 1h: Command Specific Status.
    CommandSpecific = 1,
    /// 2h: Media and Data Integrity Errors.
    MediaError = 2,
    /// 3h: Path Related Status.
    PathRelated = 3,
    /// 7h: Vendor Specific.
    VendorSpecific = 7,
}

/// A command completion status: type, code, and the retry/more bits.
///
/// The associated constants name the codes a target is likely to return;
/// any other combination can be built with [`Status::new`]. Constants come
/// without DNR; add it with [`Status::with_dnr`] when a retry cannot help.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Status {
    /// Status Code Type (3 bits; see [`Sct`]).
    pub sct: u8,
    /// Status Code.
    pub sc: u8,
    /// Command Retry Delay index (2 bits).
    pub crd: u8,
    /// More information is available in the Error Information log page.
    pub more: bool,
    /// Do Not Retry.
    pub dnr: bool,
}

macro_rules! codes {
    ($ctor:ident: $($(#[$doc:meta])* $name:ident = $sc:expr;)*) => {
        $( $(#[$doc])* pub const $name: Status = Status::$ctor($sc); )*
    };
}

impl Status {
    /// A status with the given type and code, no CRD/More/DNR.
    #[must_use]
    pub const fn new(sct: Sct, sc: u8) -> Status {
        Status {
            sct: sct as u8,
            sc,
            crd: 0,
            more: false,
            dnr: false,
        }
    }

    const fn generic(sc: u8) -> Status {
        Status::new(Sct::Generic, sc)
    }

    const fn specific(sc: u8) -> Status {
        Status::new(Sct::CommandSpecific, sc)
    }

    const fn media(sc: u8) -> Status {
        Status::new(Sct::MediaError, sc)
    }

    const fn path(sc: u8) -> Status {
        Status::new(Sct::PathRelated, sc)
    }

    codes! { generic:
        /// Successful Completion.
        SUCCESS = 0x00;
        /// Invalid Command Opcode.
        INVALID_OPCODE = 0x01;
        /// Invalid Field in Command.
        INVALID_FIELD = 0x02;
        /// Command ID Conflict.
        COMMAND_ID_CONFLICT = 0x03;
        /// Data Transfer Error.
        DATA_TRANSFER_ERROR = 0x04;
        /// Commands Aborted due to Power Loss Notification.
        ABORTED_POWER_LOSS = 0x05;
        /// Internal Error.
        INTERNAL_ERROR = 0x06;
        /// Command Abort Requested.
        ABORT_REQUESTED = 0x07;
        /// Command Aborted due to SQ Deletion.
        ABORTED_SQ_DELETION = 0x08;
        /// Command Aborted due to Failed Fused Command.
        ABORTED_FAILED_FUSED = 0x09;
        /// Command Aborted due to Missing Fused Command.
        ABORTED_MISSING_FUSED = 0x0a;
        /// Invalid Namespace or Format.
        INVALID_NAMESPACE_OR_FORMAT = 0x0b;
        /// Command Sequence Error.
        COMMAND_SEQUENCE_ERROR = 0x0c;
        /// Invalid SGL Segment Descriptor.
        SGL_SEGMENT_DESCRIPTOR_INVALID = 0x0d;
        /// Invalid Number of SGL Descriptors.
        SGL_DESCRIPTOR_COUNT_INVALID = 0x0e;
        /// Data SGL Length Invalid.
        DATA_SGL_LENGTH_INVALID = 0x0f;
        /// Metadata SGL Length Invalid.
        METADATA_SGL_LENGTH_INVALID = 0x10;
        /// SGL Descriptor Type Invalid.
        SGL_DESCRIPTOR_TYPE_INVALID = 0x11;
        /// Invalid Use of Controller Memory Buffer.
        INVALID_CMB_USE = 0x12;
        /// PRP Offset Invalid.
        PRP_OFFSET_INVALID = 0x13;
        /// Atomic Write Unit Exceeded.
        ATOMIC_WRITE_UNIT_EXCEEDED = 0x14;
        /// Operation Denied.
        OPERATION_DENIED = 0x15;
        /// SGL Offset Invalid.
        SGL_OFFSET_INVALID = 0x16;
        /// Host Identifier Inconsistent Format.
        HOST_ID_INCONSISTENT_FORMAT = 0x18;
        /// Keep Alive Timer Expired.
        KEEP_ALIVE_EXPIRED = 0x19;
        /// Keep Alive Timeout Invalid.
        KEEP_ALIVE_INVALID = 0x1a;
        /// Command Aborted due to Preempt and Abort.
        ABORTED_PREEMPT = 0x1b;
        /// Sanitize Failed.
        SANITIZE_FAILED = 0x1c;
        /// Sanitize In Progress.
        SANITIZE_IN_PROGRESS = 0x1d;
        /// SGL Data Block Granularity Invalid.
        SGL_GRANULARITY_INVALID = 0x1e;
        /// Command Not Supported for Queue in CMB.
        NOT_SUPPORTED_FOR_CMB_QUEUE = 0x1f;
        /// Namespace is Write Protected.
        NAMESPACE_WRITE_PROTECTED = 0x20;
        /// Command Interrupted.
        COMMAND_INTERRUPTED = 0x21;
        /// Transient Transport Error (e.g. a data digest error).
        TRANSIENT_TRANSPORT_ERROR = 0x22;
        /// Admin Command Media Not Ready.
        ADMIN_MEDIA_NOT_READY = 0x24;
        /// LBA Out of Range.
        LBA_OUT_OF_RANGE = 0x80;
        /// Capacity Exceeded.
        CAPACITY_EXCEEDED = 0x81;
        /// Namespace Not Ready.
        NAMESPACE_NOT_READY = 0x82;
        /// Reservation Conflict.
        RESERVATION_CONFLICT = 0x83;
        /// Format In Progress.
        FORMAT_IN_PROGRESS = 0x84;
    }

    codes! { specific:
        /// Completion Queue Invalid.
        COMPLETION_QUEUE_INVALID = 0x00;
        /// Invalid Queue Identifier.
        INVALID_QUEUE_IDENTIFIER = 0x01;
        /// Invalid Queue Size.
        INVALID_QUEUE_SIZE = 0x02;
        /// Abort Command Limit Exceeded.
        ABORT_LIMIT_EXCEEDED = 0x03;
        /// Asynchronous Event Request Limit Exceeded.
        ASYNC_EVENT_LIMIT_EXCEEDED = 0x05;
        /// Invalid Firmware Slot.
        INVALID_FIRMWARE_SLOT = 0x06;
        /// Invalid Firmware Image.
        INVALID_FIRMWARE_IMAGE = 0x07;
        /// Invalid Interrupt Vector.
        INVALID_INTERRUPT_VECTOR = 0x08;
        /// Invalid Log Page.
        INVALID_LOG_PAGE = 0x09;
        /// Invalid Format.
        INVALID_FORMAT = 0x0a;
        /// Invalid Queue Deletion.
        INVALID_QUEUE_DELETION = 0x0c;
        /// Feature Identifier Not Saveable.
        FEATURE_NOT_SAVEABLE = 0x0d;
        /// Feature Not Changeable.
        FEATURE_NOT_CHANGEABLE = 0x0e;
        /// Feature Not Namespace Specific.
        FEATURE_NOT_NAMESPACE_SPECIFIC = 0x0f;
        /// Overlapping Range.
        OVERLAPPING_RANGE = 0x14;
        /// Namespace Insufficient Capacity.
        NAMESPACE_INSUFFICIENT_CAPACITY = 0x15;
        /// Namespace Identifier Unavailable.
        NAMESPACE_ID_UNAVAILABLE = 0x16;
        /// Namespace Already Attached.
        NAMESPACE_ALREADY_ATTACHED = 0x18;
        /// Namespace Is Private.
        NAMESPACE_IS_PRIVATE = 0x19;
        /// Namespace Not Attached.
        NAMESPACE_NOT_ATTACHED = 0x1a;
        /// Controller List Invalid.
        CONTROLLER_LIST_INVALID = 0x1c;
        /// ANA Group Identifier Invalid.
        ANA_GROUP_ID_INVALID = 0x24;
        /// ANA Attach Failed.
        ANA_ATTACH_FAILED = 0x25;
        /// NVM command set: Conflicting Attributes (e.g. Dataset Management).
        CONFLICTING_ATTRIBUTES = 0x80;
        /// NVM command set: Invalid Protection Information.
        INVALID_PROTECTION_INFORMATION = 0x81;
        /// NVM command set: Attempted Write to Read Only Range.
        WRITE_TO_READ_ONLY_RANGE = 0x82;
        /// Fabrics: Incompatible Format (Connect RECFMT).
        CONNECT_INCOMPATIBLE_FORMAT = 0x80;
        /// Fabrics: Controller Busy.
        CONNECT_CONTROLLER_BUSY = 0x81;
        /// Fabrics: Connect Invalid Parameters (DW0 locates the parameter).
        CONNECT_INVALID_PARAMETERS = 0x82;
        /// Fabrics: Connect Restart Discovery.
        CONNECT_RESTART_DISCOVERY = 0x83;
        /// Fabrics: Connect Invalid Host.
        CONNECT_INVALID_HOST = 0x84;
        /// Fabrics: Invalid Queue Type.
        INVALID_QUEUE_TYPE = 0x85;
        /// Fabrics: Discover Restart.
        DISCOVER_RESTART = 0x90;
        /// Fabrics: Authentication Required.
        AUTHENTICATION_REQUIRED = 0x91;
    }

    codes! { media:
        /// Write Fault.
        WRITE_FAULT = 0x80;
        /// Unrecovered Read Error.
        UNRECOVERED_READ_ERROR = 0x81;
        /// End-to-end Guard Check Error.
        GUARD_CHECK_ERROR = 0x82;
        /// End-to-end Application Tag Check Error.
        APPLICATION_TAG_CHECK_ERROR = 0x83;
        /// End-to-end Reference Tag Check Error.
        REFERENCE_TAG_CHECK_ERROR = 0x84;
        /// Compare Failure.
        COMPARE_FAILURE = 0x85;
        /// Access Denied.
        ACCESS_DENIED = 0x86;
        /// Deallocated or Unwritten Logical Block.
        DEALLOCATED_OR_UNWRITTEN = 0x87;
    }

    codes! { path:
        /// Internal Path Error.
        INTERNAL_PATH_ERROR = 0x00;
        /// Asymmetric Access Persistent Loss.
        ANA_PERSISTENT_LOSS = 0x01;
        /// Asymmetric Access Inaccessible.
        ANA_INACCESSIBLE = 0x02;
        /// Asymmetric Access Transition.
        ANA_TRANSITION = 0x03;
        /// Controller Pathing Error.
        CONTROLLER_PATHING_ERROR = 0x60;
        /// Host Pathing Error.
        HOST_PATHING_ERROR = 0x70;
        /// Command Aborted By Host.
        ABORTED_BY_HOST = 0x71;
    }

    /// The same status with Do Not Retry set.
    #[must_use]
    pub const fn with_dnr(mut self) -> Status {
        self.dnr = true;
        self
    }

    /// The same status with More set.
    #[must_use]
    pub const fn with_more(mut self) -> Status {
        self.more = true;
        self
    }

    /// The same status with a Command Retry Delay index (0..=3).
    #[must_use]
    pub const fn with_crd(mut self, crd: u8) -> Status {
        self.crd = crd & 3;
        self
    }

    /// Whether this is Successful Completion (type and code zero).
    #[must_use]
    pub const fn is_success(self) -> bool {
        self.sct == 0 && self.sc == 0
    }

    /// The Status Code Type, if it is one the specification defines.
    #[must_use]
    pub const fn sct_kind(self) -> Option<Sct> {
        Some(match self.sct {
            0 => Sct::Generic,
            1 => Sct::CommandSpecific,
            2 => Sct::MediaError,
            3 => Sct::PathRelated,
            7 => Sct::VendorSpecific,
            _ => return None,
        })
    }

    /// Type and code only (CRD/More/DNR cleared), for comparing against
    /// the constants.
    #[must_use]
    pub const fn code(self) -> Status {
        Status {
            sct: self.sct,
            sc: self.sc,
            crd: 0,
            more: false,
            dnr: false,
        }
    }

    /// The 16-bit status field as stored in completion dword 3 bits 31:16,
    /// with the phase tag bit 0 clear.
    #[must_use]
    pub const fn to_field(self) -> u16 {
        ((self.sc as u16) << 1)
            | (((self.sct & 7) as u16) << 9)
            | (((self.crd & 3) as u16) << 12)
            | ((self.more as u16) << 14)
            | ((self.dnr as u16) << 15)
    }

    /// Decodes a 16-bit status field (the phase tag bit is ignored).
    #[must_use]
    pub const fn from_field(v: u16) -> Status {
        Status {
            sc: (v >> 1) as u8,
            sct: ((v >> 9) & 7) as u8,
            crd: ((v >> 12) & 3) as u8,
            more: v & (1 << 14) != 0,
            dnr: v & (1 << 15) != 0,
        }
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Status(sct={:#x}, sc={:#04x}", self.sct, self.sc)?;
        if self.crd != 0 {
            write!(f, ", crd={}", self.crd)?;
        }
        if self.more {
            f.write_str(", more")?;
        }
        if self.dnr {
            f.write_str(", dnr")?;
        }
        f.write_str(")")
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_layout_matches_the_specification() {
        // Invalid Field in Command with DNR: SC=02h at bits 8:1, DNR bit 15.
        assert_eq!(Status::INVALID_FIELD.with_dnr().to_field(), 0x8004);
        // LBA Out of Range: SC=80h -> 0x100.
        assert_eq!(Status::LBA_OUT_OF_RANGE.to_field(), 0x0100);
        // Connect Invalid Parameters: SCT=1 (bit 9), SC=82h (bits 8:1).
        assert_eq!(Status::CONNECT_INVALID_PARAMETERS.to_field(), 0x0304);
        // ANA Inaccessible: SCT=3 (bits 10:9), SC=02h.
        assert_eq!(Status::ANA_INACCESSIBLE.to_field(), 0x0604);
        // Write Fault: SCT=2, SC=80h.
        assert_eq!(Status::WRITE_FAULT.to_field(), 0x0500);
        // More + CRD=2.
        assert_eq!(
            Status::INTERNAL_ERROR.with_more().with_crd(2).to_field(),
            0x4000 | 0x2000 | 0x000c
        );
    }

    #[test]
    fn round_trip_every_field_value() {
        for v in 0..=u16::MAX {
            let s = Status::from_field(v);
            assert_eq!(s.to_field(), v & !1);
        }
        let s = Status::from_field(0x8004 | 1);
        assert_eq!(s.code(), Status::INVALID_FIELD);
        assert!(s.dnr);
        assert!(!s.is_success());
        assert!(Status::SUCCESS.is_success());
        assert_eq!(Status::ANA_TRANSITION.sct_kind(), Some(Sct::PathRelated));
        assert_eq!(Status::from_field(5 << 9).sct_kind(), None);
    }
}
