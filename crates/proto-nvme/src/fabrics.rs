//! Fabrics specifics: the Connect command's data and response, and the
//! controller properties (registers) reached by Property Get/Set (NVMe over
//! Fabrics specification "Connect Command and Response", "Property
//! Definitions"; NVMe Base specification "Controller Registers").

use crate::error::{Error, Result};
use crate::queue::Cqe;
use crate::wire::{bit, bits, fixed, get_str_nul, put, put_str_nul, put_u16, u16_at};

/// Size of the Connect command's data.
pub const CONNECT_DATA_LEN: usize = 1024;
/// Size of an NQN field in Connect data and Identify Controller.
pub const NQN_FIELD_LEN: usize = 256;
/// CNTLID in Connect data asking the subsystem to allocate a controller
/// (dynamic controller model).
pub const CNTLID_DYNAMIC: u16 = 0xffff;

/// Byte offset of SUBNQN in Connect data.
pub const CONNECT_SUBNQN_OFFSET: usize = 256;
/// Byte offset of HOSTNQN in Connect data.
pub const CONNECT_HOSTNQN_OFFSET: usize = 512;

/// The 1024-byte data of a Connect command:
///
/// ```text
/// bytes 0-15     HOSTID   host identifier (a UUID)
/// bytes 16-17    CNTLID   FFFFh: allocate; on I/O queues the admin queue's controller
/// bytes 18-255   reserved
/// bytes 256-511  SUBNQN   NUL-terminated UTF-8
/// bytes 512-767  HOSTNQN  NUL-terminated UTF-8
/// bytes 768-1023 reserved
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectData<'a> {
    /// Host identifier.
    pub hostid: [u8; 16],
    /// Controller ID.
    pub cntlid: u16,
    /// NQN of the subsystem to connect to.
    pub subnqn: &'a str,
    /// NQN of the host.
    pub hostnqn: &'a str,
}

impl<'a> ConnectData<'a> {
    /// Parses Connect data. A missing NUL terminator or bad UTF-8 in an
    /// NQN is [`Error::ConnectInvalidParameter`] locating the field (for
    /// the Connect response's IATTR/IPO). The NQN text itself is not
    /// validated here; see [`validate_nqn`](crate::validate_nqn).
    pub fn parse(data: &'a [u8]) -> Result<ConnectData<'a>> {
        let b = fixed::<CONNECT_DATA_LEN>(data)?;
        let nqn = |off: usize, reason| {
            get_str_nul(b, off, NQN_FIELD_LEN).ok_or(Error::ConnectInvalidParameter {
                in_data: true,
                offset: off as u16,
                reason,
            })
        };
        Ok(ConnectData {
            hostid: crate::wire::arr(b, 0),
            cntlid: u16_at(b, 16),
            subnqn: nqn(
                CONNECT_SUBNQN_OFFSET,
                "SUBNQN not a NUL-terminated UTF-8 string",
            )?,
            hostnqn: nqn(
                CONNECT_HOSTNQN_OFFSET,
                "HOSTNQN not a NUL-terminated UTF-8 string",
            )?,
        })
    }

    /// The 1024 bytes of this data. NQNs longer than 255 bytes are cut.
    #[must_use]
    pub fn encode(&self) -> [u8; CONNECT_DATA_LEN] {
        let mut b = [0u8; CONNECT_DATA_LEN];
        put(&mut b, 0, &self.hostid);
        put_u16(&mut b, 16, self.cntlid);
        put_str_nul(&mut b, CONNECT_SUBNQN_OFFSET, NQN_FIELD_LEN, self.subnqn);
        put_str_nul(&mut b, CONNECT_HOSTNQN_OFFSET, NQN_FIELD_LEN, self.hostnqn);
        b
    }
}

/// Completion DW0 of a successful Connect: CNTLID (15:0) and AUTHREQ
/// (31:16; 0 when no authentication is required).
#[must_use]
pub const fn connect_success_dw0(cntlid: u16, authreq: u16) -> u32 {
    cntlid as u32 | ((authreq as u32) << 16)
}

/// Completion DW0 of a Connect failed with Connect Invalid Parameters:
/// IPO, the byte offset of the bad parameter (15:0), and IATTR (23:16):
/// bit 0 set when the offset is within the Connect data, clear when within
/// the SQE.
#[must_use]
pub const fn connect_invalid_parameter_dw0(in_data: bool, offset: u16) -> u32 {
    offset as u32 | ((in_data as u32) << 16)
}

/// A Connect response as a host reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectResponse {
    /// Connected.
    Success {
        /// Controller ID.
        cntlid: u16,
        /// Authentication requirements (bit 1 ATR, bit 2 ASCR).
        authreq: u16,
    },
    /// Connect Invalid Parameters.
    InvalidParameter {
        /// The offset is within the Connect data (else within the SQE).
        in_data: bool,
        /// Byte offset of the parameter.
        offset: u16,
    },
    /// Any other failure.
    Failed(crate::Status),
}

impl ConnectResponse {
    /// Interprets the completion of a Connect command.
    #[must_use]
    pub fn from_cqe(cqe: &Cqe) -> ConnectResponse {
        let s = cqe.status;
        if s.is_success() {
            ConnectResponse::Success {
                cntlid: cqe.dw0 as u16,
                authreq: (cqe.dw0 >> 16) as u16,
            }
        } else if s.code() == crate::Status::CONNECT_INVALID_PARAMETERS {
            ConnectResponse::InvalidParameter {
                in_data: bit(cqe.dw0, 16),
                offset: cqe.dw0 as u16,
            }
        } else {
            ConnectResponse::Failed(s)
        }
    }
}

/// Controller property offsets reachable over fabrics.
pub mod register {
    /// Controller Capabilities (8 bytes).
    pub const CAP: u32 = 0x00;
    /// Version (4 bytes).
    pub const VS: u32 = 0x08;
    /// Controller Configuration (4 bytes).
    pub const CC: u32 = 0x14;
    /// Controller Status (4 bytes).
    pub const CSTS: u32 = 0x1c;
    /// NVM Subsystem Reset (4 bytes).
    pub const NSSR: u32 = 0x20;
    /// The value written to NSSR to reset the subsystem ("NVMe").
    pub const NSSR_RESET: u32 = 0x4e56_4d65;

    /// The access size of a property, `None` for offsets not defined over
    /// fabrics.
    #[must_use]
    pub fn size(offset: u32) -> Option<crate::PropertySize> {
        match offset {
            CAP => Some(crate::PropertySize::Eight),
            VS | CC | CSTS | NSSR => Some(crate::PropertySize::Four),
            _ => None,
        }
    }
}

/// Controller Capabilities (CAP, offset 0, 64 bits).
///
/// ```text
/// 15:0   MQES    maximum queue entries, 0's based
/// 16     CQR     contiguous queues required (1 over fabrics)
/// 18:17  AMS     arbitration mechanisms supported
/// 31:24  TO      ready timeout, 500 ms units
/// 35:32  DSTRD   doorbell stride (0 over fabrics)
/// 36     NSSRS   NVM subsystem reset supported
/// 44:37  CSS     command sets supported (bit 37: NVM; bit 43: I/O command sets; bit 44: admin only)
/// 45     BPS     boot partitions
/// 47:46  CPS     controller power scope
/// 51:48  MPSMIN  minimum memory page size 2^(12+MPSMIN)
/// 55:52  MPSMAX
/// 56     PMRS, 57 CMBS, 58 NSSS, 60:59 CRMS
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cap {
    /// Maximum queue entries supported, 0's based.
    pub mqes: u16,
    /// Contiguous queues required.
    pub cqr: bool,
    /// Arbitration mechanisms supported.
    pub ams: u8,
    /// Timeout in 500 ms units.
    pub to: u8,
    /// Doorbell stride.
    pub dstrd: u8,
    /// NVM subsystem reset supported.
    pub nssrs: bool,
    /// Command sets supported (bit 0 of this field is the NVM command set).
    pub css: u8,
    /// Boot partition support.
    pub bps: bool,
    /// Controller power scope.
    pub cps: u8,
    /// Memory page size minimum (2^(12 + MPSMIN)).
    pub mpsmin: u8,
    /// Memory page size maximum.
    pub mpsmax: u8,
    /// Persistent memory region supported.
    pub pmrs: bool,
    /// Controller memory buffer supported.
    pub cmbs: bool,
    /// NVM subsystem shutdown supported.
    pub nsss: bool,
    /// Controller ready modes supported.
    pub crms: u8,
}

/// CAP.CSS bit: NVM command set.
pub const CAP_CSS_NVM: u8 = 1 << 0;
/// CAP.CSS bit: one or more I/O command sets (CC.CSS = 110b).
pub const CAP_CSS_IO_SETS: u8 = 1 << 6;
/// CAP.CSS bit: no I/O command set (discovery and admin-only controllers).
pub const CAP_CSS_ADMIN_ONLY: u8 = 1 << 7;

impl Cap {
    /// Decodes the 64-bit register.
    #[must_use]
    pub const fn from_u64(v: u64) -> Cap {
        const fn f(v: u64, lo: u32, w: u32) -> u8 {
            ((v >> lo) & ((1u64 << w) - 1)) as u8
        }
        Cap {
            mqes: v as u16,
            cqr: (v >> 16) & 1 != 0,
            ams: f(v, 17, 2),
            to: f(v, 24, 8),
            dstrd: f(v, 32, 4),
            nssrs: (v >> 36) & 1 != 0,
            css: f(v, 37, 8),
            bps: (v >> 45) & 1 != 0,
            cps: f(v, 46, 2),
            mpsmin: f(v, 48, 4),
            mpsmax: f(v, 52, 4),
            pmrs: (v >> 56) & 1 != 0,
            cmbs: (v >> 57) & 1 != 0,
            nsss: (v >> 58) & 1 != 0,
            crms: f(v, 59, 2),
        }
    }

    /// Encodes the 64-bit register.
    #[must_use]
    pub const fn to_u64(&self) -> u64 {
        self.mqes as u64
            | ((self.cqr as u64) << 16)
            | (((self.ams & 3) as u64) << 17)
            | ((self.to as u64) << 24)
            | (((self.dstrd & 0xf) as u64) << 32)
            | ((self.nssrs as u64) << 36)
            | ((self.css as u64) << 37)
            | ((self.bps as u64) << 45)
            | (((self.cps & 3) as u64) << 46)
            | (((self.mpsmin & 0xf) as u64) << 48)
            | (((self.mpsmax & 0xf) as u64) << 52)
            | ((self.pmrs as u64) << 56)
            | ((self.cmbs as u64) << 57)
            | ((self.nsss as u64) << 58)
            | (((self.crms & 3) as u64) << 59)
    }
}

/// Version (VS, offset 08h): major 31:16, minor 15:8, tertiary 7:0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Version {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u8,
    /// Tertiary version.
    pub tertiary: u8,
}

impl Version {
    /// NVMe 1.3.0.
    pub const V1_3: Version = Version::new(1, 3, 0);
    /// NVMe 1.4.0.
    pub const V1_4: Version = Version::new(1, 4, 0);
    /// NVMe 2.0.0.
    pub const V2_0: Version = Version::new(2, 0, 0);

    /// A version.
    #[must_use]
    pub const fn new(major: u16, minor: u8, tertiary: u8) -> Version {
        Version {
            major,
            minor,
            tertiary,
        }
    }

    /// Decodes the register.
    #[must_use]
    pub const fn from_u32(v: u32) -> Version {
        Version::new((v >> 16) as u16, (v >> 8) as u8, v as u8)
    }

    /// Encodes the register.
    #[must_use]
    pub const fn to_u32(self) -> u32 {
        ((self.major as u32) << 16) | ((self.minor as u32) << 8) | self.tertiary as u32
    }
}

/// Controller Configuration (CC, offset 14h).
///
/// ```text
/// 0      EN      enable
/// 6:4    CSS     I/O command set selected (000b NVM, 110b all I/O sets, 111b admin only)
/// 10:7   MPS     memory page size 2^(12+MPS)
/// 13:11  AMS     arbitration mechanism
/// 15:14  SHN     shutdown notification: 01b normal, 10b abrupt
/// 19:16  IOSQES  I/O SQ entry size 2^n (6 = 64 bytes)
/// 23:20  IOCQES  I/O CQ entry size 2^n (4 = 16 bytes)
/// 24     CRIME   controller ready independent of media enable
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cc {
    /// Enable.
    pub en: bool,
    /// I/O command set selected.
    pub css: u8,
    /// Memory page size.
    pub mps: u8,
    /// Arbitration mechanism selected.
    pub ams: u8,
    /// Shutdown notification.
    pub shn: u8,
    /// I/O submission queue entry size (log2).
    pub iosqes: u8,
    /// I/O completion queue entry size (log2).
    pub iocqes: u8,
    /// Controller ready independent of media enable.
    pub crime: bool,
}

/// CC.SHN: no notification.
pub const SHN_NONE: u8 = 0;
/// CC.SHN: normal shutdown.
pub const SHN_NORMAL: u8 = 1;
/// CC.SHN: abrupt shutdown.
pub const SHN_ABRUPT: u8 = 2;

impl Cc {
    /// Decodes the register.
    #[must_use]
    pub const fn from_u32(v: u32) -> Cc {
        Cc {
            en: bit(v, 0),
            css: bits(v, 4, 6) as u8,
            mps: bits(v, 7, 10) as u8,
            ams: bits(v, 11, 13) as u8,
            shn: bits(v, 14, 15) as u8,
            iosqes: bits(v, 16, 19) as u8,
            iocqes: bits(v, 20, 23) as u8,
            crime: bit(v, 24),
        }
    }

    /// Encodes the register.
    #[must_use]
    pub const fn to_u32(&self) -> u32 {
        self.en as u32
            | (((self.css & 7) as u32) << 4)
            | (((self.mps & 0xf) as u32) << 7)
            | (((self.ams & 7) as u32) << 11)
            | (((self.shn & 3) as u32) << 14)
            | (((self.iosqes & 0xf) as u32) << 16)
            | (((self.iocqes & 0xf) as u32) << 20)
            | ((self.crime as u32) << 24)
    }
}

/// Controller Status (CSTS, offset 1Ch).
///
/// ```text
/// 0      RDY    ready
/// 1      CFS    controller fatal status
/// 3:2    SHST   shutdown status: 00b normal operation, 01b occurring, 10b complete
/// 4      NSSRO  NVM subsystem reset occurred
/// 5      PP     processing paused
/// 6      ST     shutdown type
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Csts {
    /// Ready.
    pub rdy: bool,
    /// Controller fatal status.
    pub cfs: bool,
    /// Shutdown status.
    pub shst: u8,
    /// NVM subsystem reset occurred.
    pub nssro: bool,
    /// Processing paused.
    pub pp: bool,
    /// Shutdown type.
    pub st: bool,
}

/// CSTS.SHST: normal operation.
pub const SHST_NORMAL: u8 = 0;
/// CSTS.SHST: shutdown processing occurring.
pub const SHST_OCCURRING: u8 = 1;
/// CSTS.SHST: shutdown processing complete.
pub const SHST_COMPLETE: u8 = 2;

impl Csts {
    /// Decodes the register.
    #[must_use]
    pub const fn from_u32(v: u32) -> Csts {
        Csts {
            rdy: bit(v, 0),
            cfs: bit(v, 1),
            shst: bits(v, 2, 3) as u8,
            nssro: bit(v, 4),
            pp: bit(v, 5),
            st: bit(v, 6),
        }
    }

    /// Encodes the register.
    #[must_use]
    pub const fn to_u32(&self) -> u32 {
        self.rdy as u32
            | ((self.cfs as u32) << 1)
            | (((self.shst & 3) as u32) << 2)
            | ((self.nssro as u32) << 4)
            | ((self.pp as u32) << 5)
            | ((self.st as u32) << 6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Status;

    #[test]
    fn connect_data_offsets() {
        let mut raw = [0u8; 1024];
        raw[..16].copy_from_slice(&[0xab; 16]);
        raw[16] = 0xff;
        raw[17] = 0xff;
        raw[256..256 + 36].copy_from_slice(b"nqn.2014-08.org.nvmexpress.discovery");
        raw[512..512 + 14].copy_from_slice(b"nqn.2024-01.x:");
        let d = ConnectData::parse(&raw).unwrap();
        assert_eq!(d.hostid, [0xab; 16]);
        assert_eq!(d.cntlid, CNTLID_DYNAMIC);
        assert_eq!(d.subnqn, "nqn.2014-08.org.nvmexpress.discovery");
        assert_eq!(d.hostnqn, "nqn.2024-01.x:");
        assert_eq!(d.encode(), raw);
        assert!(matches!(
            ConnectData::parse(&raw[..1023]),
            Err(Error::Truncated { need: 1024, .. })
        ));
        let mut unterminated = raw;
        unterminated[512..768].fill(b'a');
        assert_eq!(
            ConnectData::parse(&unterminated).unwrap_err(),
            Error::ConnectInvalidParameter {
                in_data: true,
                offset: 512,
                reason: "HOSTNQN not a NUL-terminated UTF-8 string"
            }
        );
        let mut bad_utf8 = raw;
        bad_utf8[256] = 0xff;
        assert!(matches!(
            ConnectData::parse(&bad_utf8),
            Err(Error::ConnectInvalidParameter { offset: 256, .. })
        ));
    }

    #[test]
    fn connect_responses() {
        assert_eq!(connect_success_dw0(1, 0), 1);
        assert_eq!(connect_invalid_parameter_dw0(true, 256), 0x0001_0100);
        assert_eq!(connect_invalid_parameter_dw0(false, 42), 42);
        let ok = Cqe {
            dw0: 0x0000_0005,
            ..Cqe::default()
        };
        assert_eq!(
            ConnectResponse::from_cqe(&ok),
            ConnectResponse::Success {
                cntlid: 5,
                authreq: 0
            }
        );
        let bad = Cqe {
            dw0: 0x0001_0200,
            status: Status::CONNECT_INVALID_PARAMETERS.with_dnr(),
            ..Cqe::default()
        };
        assert_eq!(
            ConnectResponse::from_cqe(&bad),
            ConnectResponse::InvalidParameter {
                in_data: true,
                offset: 512
            }
        );
        let host = Cqe {
            status: Status::CONNECT_INVALID_HOST,
            ..Cqe::default()
        };
        assert_eq!(
            ConnectResponse::from_cqe(&host),
            ConnectResponse::Failed(Status::CONNECT_INVALID_HOST)
        );
    }

    #[test]
    fn registers() {
        // MQES 127, CQR, TO 30 (15 s), CSS NVM, MPSMIN 0, MPSMAX 0.
        let cap = Cap {
            mqes: 127,
            cqr: true,
            to: 30,
            css: CAP_CSS_NVM,
            ..Cap::default()
        };
        assert_eq!(cap.to_u64(), 0x0000_0020_1e01_007f);
        assert_eq!(Cap::from_u64(cap.to_u64()), cap);
        let all = Cap::from_u64(u64::MAX);
        assert_eq!(all.to_u64(), 0x1fff_ffff_ff07_ffff);
        // CC as Linux writes it to enable: EN, IOSQES 6, IOCQES 4.
        let cc = Cc::from_u32(0x0046_0001);
        assert!(cc.en);
        assert_eq!(
            (cc.iosqes, cc.iocqes, cc.css, cc.mps, cc.shn),
            (6, 4, 0, 0, 0)
        );
        assert_eq!(cc.to_u32(), 0x0046_0001);
        assert_eq!(Cc::from_u32(0x0046_4001).shn, SHN_NORMAL);
        let csts = Csts {
            rdy: true,
            shst: SHST_COMPLETE,
            ..Csts::default()
        };
        assert_eq!(csts.to_u32(), 0x9);
        assert_eq!(Csts::from_u32(0x9), csts);
        assert_eq!(Version::V1_3.to_u32(), 0x0001_0300);
        assert_eq!(Version::from_u32(0x0002_0100), Version::new(2, 1, 0));
        assert!(Version::V1_4 > Version::V1_3);
        assert_eq!(
            register::size(register::CAP),
            Some(crate::PropertySize::Eight)
        );
        assert_eq!(
            register::size(register::CSTS),
            Some(crate::PropertySize::Four)
        );
        assert_eq!(register::size(0x24), None);
    }
}
