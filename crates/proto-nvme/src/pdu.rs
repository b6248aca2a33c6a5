//! NVMe/TCP PDU layouts and encoders (NVMe TCP Transport specification,
//! "PDU Header Format" and the per-PDU sections).
//!
//! Every PDU starts with an 8-byte common header:
//!
//! ```text
//! byte  0     PDU-Type
//! byte  1     FLAGS   HDGSTF (bit 0), DDGSTF (bit 1), LAST_PDU (bit 2), SUCCESS (bit 3)
//! byte  2     HLEN    header length without the header digest
//! byte  3     PDO     PDU data offset (0 if the PDU has no data)
//! bytes 4-7   PLEN    total PDU length: header, digests, padding, data
//! ```
//!
//! followed by the PDU-specific header (up to `HLEN`), the header digest
//! (4 bytes, when negotiated and the type uses digests), padding up to
//! `PDO`, the data, and the data digest (4 bytes, when negotiated and the
//! PDU carries data). All multi-byte fields are little-endian.

use crate::digest::{DIGEST_LEN, digest_bytes};
use crate::error::{Error, Result};
use crate::queue::{CQE_LEN, Cqe, SQE_LEN, Sqe};
use crate::wire::{fixed, put, put_u16, put_u32, u8_at, u16_at, u32_at};

/// Size of the common header.
pub const CH_LEN: usize = 8;
/// HLEN of ICReq and ICResp.
pub const IC_HLEN: usize = 128;
/// HLEN of H2CTermReq and C2HTermReq.
pub const TERM_HLEN: usize = 24;
/// HLEN of CapsuleCmd (common header + 64-byte SQE).
pub const CMD_HLEN: usize = CH_LEN + SQE_LEN;
/// HLEN of CapsuleResp (common header + 16-byte CQE).
pub const RESP_HLEN: usize = CH_LEN + CQE_LEN;
/// HLEN of H2CData, C2HData and R2T.
pub const DATA_HLEN: usize = 24;
/// Most error data a TermReq may carry (the offending PDU header).
pub const MAX_TERM_DATA: usize = 128;
/// Largest PLEN of a TermReq.
pub const MAX_TERM_PLEN: usize = TERM_HLEN + MAX_TERM_DATA;
/// Smallest MAXH2CDATA a controller may announce.
pub const MIN_MAXH2CDATA: u32 = 4096;
/// Largest HPDA/CPDA value (alignment of (31 + 1) * 4 = 128 bytes).
pub const MAX_PDA: u8 = 31;
/// The only PDU format version defined so far.
pub const PFV_1_0: u16 = 0;
/// In-capsule data limit on an admin queue (NVME_TCP_ADMIN_CCSZ in Linux).
pub const ADMIN_IN_CAPSULE_DATA: u32 = 8192;

/// Common-header flag bits.
pub mod flags {
    /// A header digest follows the PDU header.
    pub const HDGSTF: u8 = 1 << 0;
    /// A data digest follows the PDU data.
    pub const DDGSTF: u8 = 1 << 1;
    /// H2CData/C2HData: last data PDU of the transfer (of the R2T, for
    /// H2CData; of the command, for C2HData).
    pub const LAST_PDU: u8 = 1 << 2;
    /// C2HData: the command completed successfully; no CapsuleResp
    /// follows. Only with LAST_PDU, and only if the host disabled SQ flow
    /// control.
    pub const SUCCESS: u8 = 1 << 3;
}

/// Digest option bits in the ICReq/ICResp DGST field.
pub mod dgst {
    /// Header digest enabled.
    pub const HDGST_ENABLE: u8 = 1 << 0;
    /// Data digest enabled.
    pub const DDGST_ENABLE: u8 = 1 << 1;
}

/// PDU types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PduType {
    /// 00h: Initialize Connection Request (host to controller).
    IcReq = 0x00,
    /// 01h: Initialize Connection Response.
    IcResp = 0x01,
    /// 02h: Host to Controller Terminate Connection Request.
    H2CTermReq = 0x02,
    /// 03h: Controller to Host Terminate Connection Request.
    C2HTermReq = 0x03,
    /// 04h: Command Capsule.
    CapsuleCmd = 0x04,
    /// 05h: Response Capsule.
    CapsuleResp = 0x05,
    /// 06h: Host to Controller Data.
    H2CData = 0x06,
    /// 07h: Controller to Host Data.
    C2HData = 0x07,
    /// 09h: Ready to Transfer.
    R2T = 0x09,
}

impl PduType {
    /// Decodes a PDU-Type byte.
    #[must_use]
    pub const fn from_wire(v: u8) -> Option<PduType> {
        Some(match v {
            0x00 => PduType::IcReq,
            0x01 => PduType::IcResp,
            0x02 => PduType::H2CTermReq,
            0x03 => PduType::C2HTermReq,
            0x04 => PduType::CapsuleCmd,
            0x05 => PduType::CapsuleResp,
            0x06 => PduType::H2CData,
            0x07 => PduType::C2HData,
            0x09 => PduType::R2T,
            _ => return None,
        })
    }

    /// The fixed HLEN of this type.
    #[must_use]
    pub const fn hlen(self) -> usize {
        match self {
            PduType::IcReq | PduType::IcResp => IC_HLEN,
            PduType::CapsuleCmd => CMD_HLEN,
            PduType::CapsuleResp => RESP_HLEN,
            PduType::H2CTermReq | PduType::C2HTermReq => TERM_HLEN,
            PduType::H2CData | PduType::C2HData | PduType::R2T => DATA_HLEN,
        }
    }

    /// Whether the host sends this type (otherwise the controller does).
    #[must_use]
    pub const fn from_host(self) -> bool {
        matches!(
            self,
            PduType::IcReq | PduType::H2CTermReq | PduType::CapsuleCmd | PduType::H2CData
        )
    }

    /// Whether negotiated digests apply to this type. Connection setup and
    /// termination PDUs never carry digests.
    #[must_use]
    pub const fn uses_digests(self) -> bool {
        !matches!(
            self,
            PduType::IcReq | PduType::IcResp | PduType::H2CTermReq | PduType::C2HTermReq
        )
    }
}

/// The 8-byte common header, undecoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommonHeader {
    /// PDU-Type byte.
    pub pdu_type: u8,
    /// FLAGS byte.
    pub flags: u8,
    /// HLEN.
    pub hlen: u8,
    /// PDO.
    pub pdo: u8,
    /// PLEN.
    pub plen: u32,
}

impl CommonHeader {
    /// Parses the first [`CH_LEN`] bytes of `b`.
    pub fn parse(b: &[u8]) -> Result<CommonHeader> {
        let b = fixed::<CH_LEN>(b)?;
        Ok(CommonHeader {
            pdu_type: b[0],
            flags: b[1],
            hlen: b[2],
            pdo: b[3],
            plen: u32_at(b, 4),
        })
    }

    /// The 8 bytes of this header.
    #[must_use]
    pub fn encode(&self) -> [u8; CH_LEN] {
        let mut b = [0u8; CH_LEN];
        b[0] = self.pdu_type;
        b[1] = self.flags;
        b[2] = self.hlen;
        b[3] = self.pdo;
        put_u32(&mut b, 4, self.plen);
        b
    }
}

/// ICReq: the host's first PDU on a connection.
///
/// ```text
/// bytes 0-7     common header: type 00h, flags 0, HLEN 128, PDO 0, PLEN 128
/// bytes 8-9     PFV     PDU format version (0)
/// byte  10      HPDA    host PDU data alignment, 0's based dwords (0..=31)
/// byte  11      DGST    HDGST_ENABLE (bit 0), DDGST_ENABLE (bit 1)
/// bytes 12-15   MAXR2T  maximum outstanding R2Ts per command, 0's based
/// bytes 16-127  reserved
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IcReq {
    /// PDU format version.
    pub pfv: u16,
    /// Host PDU data alignment (0's based dwords): C2HData data must start
    /// at a multiple of `(hpda + 1) * 4` bytes into the PDU.
    pub hpda: u8,
    /// The host asks for header digests.
    pub hdgst: bool,
    /// The host asks for data digests.
    pub ddgst: bool,
    /// Maximum outstanding R2Ts per command, 0's based.
    pub maxr2t: u32,
}

impl IcReq {
    /// Decodes the PDU-specific fields of a complete 128-byte ICReq.
    pub(crate) fn from_pdu(b: &[u8]) -> Result<IcReq> {
        let pfv = u16_at(b, 8);
        if pfv != PFV_1_0 {
            return Err(Error::UnsupportedParameter {
                offset: 8,
                reason: "PDU format version",
            });
        }
        let hpda = u8_at(b, 10);
        if hpda > MAX_PDA {
            return Err(Error::InvalidHeaderField {
                offset: 10,
                reason: "HPDA above 31",
            });
        }
        let dgst = u8_at(b, 11);
        Ok(IcReq {
            pfv,
            hpda,
            hdgst: dgst & dgst::HDGST_ENABLE != 0,
            ddgst: dgst & dgst::DDGST_ENABLE != 0,
            maxr2t: u32_at(b, 12),
        })
    }

    /// The complete 128-byte PDU.
    #[must_use]
    pub fn encode(&self) -> [u8; IC_HLEN] {
        let mut b = ic_common(PduType::IcReq);
        put_u16(&mut b, 8, self.pfv);
        b[10] = self.hpda;
        b[11] = dgst_byte(self.hdgst, self.ddgst);
        put_u32(&mut b, 12, self.maxr2t);
        b
    }
}

/// ICResp: the controller's answer to ICReq.
///
/// ```text
/// bytes 0-7     common header: type 01h, flags 0, HLEN 128, PDO 0, PLEN 128
/// bytes 8-9     PFV
/// byte  10      CPDA        controller PDU data alignment, 0's based dwords
/// byte  11      DGST        digests the connection will use
/// bytes 12-15   MAXH2CDATA  most data bytes per H2CData PDU (>= 4096, dword multiple)
/// bytes 16-127  reserved
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IcResp {
    /// PDU format version.
    pub pfv: u16,
    /// Controller PDU data alignment (0's based dwords): data in PDUs the
    /// host sends must start at a multiple of `(cpda + 1) * 4` bytes.
    pub cpda: u8,
    /// Header digests are enabled.
    pub hdgst: bool,
    /// Data digests are enabled.
    pub ddgst: bool,
    /// Largest data length of one H2CData PDU.
    pub maxh2cdata: u32,
}

impl IcResp {
    /// The usual controller answer: digests enabled where the host asked
    /// for them and the controller allows them. (The Linux host drops the
    /// connection if the digests granted differ from those it asked for.)
    #[must_use]
    pub fn answer(
        req: &IcReq,
        allow_hdgst: bool,
        allow_ddgst: bool,
        cpda: u8,
        maxh2cdata: u32,
    ) -> IcResp {
        IcResp {
            pfv: PFV_1_0,
            cpda,
            hdgst: req.hdgst && allow_hdgst,
            ddgst: req.ddgst && allow_ddgst,
            maxh2cdata,
        }
    }

    pub(crate) fn from_pdu(b: &[u8]) -> Result<IcResp> {
        let pfv = u16_at(b, 8);
        if pfv != PFV_1_0 {
            return Err(Error::UnsupportedParameter {
                offset: 8,
                reason: "PDU format version",
            });
        }
        let cpda = u8_at(b, 10);
        if cpda > MAX_PDA {
            return Err(Error::InvalidHeaderField {
                offset: 10,
                reason: "CPDA above 31",
            });
        }
        let maxh2cdata = u32_at(b, 12);
        if maxh2cdata < MIN_MAXH2CDATA || !maxh2cdata.is_multiple_of(4) {
            return Err(Error::InvalidHeaderField {
                offset: 12,
                reason: "MAXH2CDATA below 4096 or not a dword multiple",
            });
        }
        let dgst = u8_at(b, 11);
        Ok(IcResp {
            pfv,
            cpda,
            hdgst: dgst & dgst::HDGST_ENABLE != 0,
            ddgst: dgst & dgst::DDGST_ENABLE != 0,
            maxh2cdata,
        })
    }

    /// The complete 128-byte PDU.
    #[must_use]
    pub fn encode(&self) -> [u8; IC_HLEN] {
        let mut b = ic_common(PduType::IcResp);
        put_u16(&mut b, 8, self.pfv);
        b[10] = self.cpda;
        b[11] = dgst_byte(self.hdgst, self.ddgst);
        put_u32(&mut b, 12, self.maxh2cdata);
        b
    }
}

fn dgst_byte(h: bool, d: bool) -> u8 {
    (if h { dgst::HDGST_ENABLE } else { 0 }) | (if d { dgst::DDGST_ENABLE } else { 0 })
}

fn ic_common(t: PduType) -> [u8; IC_HLEN] {
    let mut b = [0u8; IC_HLEN];
    put(
        &mut b,
        0,
        &CommonHeader {
            pdu_type: t as u8,
            flags: 0,
            hlen: IC_HLEN as u8,
            pdo: 0,
            plen: IC_HLEN as u32,
        }
        .encode(),
    );
    b
}

/// The fixed part of H2CTermReq / C2HTermReq; the PDU's data (at most
/// [`MAX_TERM_DATA`] bytes, starting at byte 24) is the header of the PDU
/// that caused the error.
///
/// ```text
/// bytes 0-7     common header: type 02h/03h, HLEN 24, PDO 0, PLEN 24 + data
/// bytes 8-9     FES   fatal error status
/// bytes 10-13   FEI   fatal error information
/// bytes 14-23   reserved
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TermReq {
    /// Fatal error status (see [`Fes`](crate::Fes); kept raw so unknown
    /// values from a peer can be logged).
    pub fes: u16,
    /// Fatal error information.
    pub fei: u32,
}

/// H2CData: data the host sends for a write, in answer to an R2T.
///
/// ```text
/// bytes 0-7     common header: type 06h, HLEN 24, flags LAST_PDU
/// bytes 8-9     CCCID  command capsule CID
/// bytes 10-11   TTAG   transfer tag from the R2T
/// bytes 12-15   DATAO  offset of this data within the command's data
/// bytes 16-19   DATAL  bytes of data in this PDU
/// bytes 20-23   reserved
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct H2CData {
    /// CID of the command the data belongs to.
    pub cccid: u16,
    /// Transfer tag of the R2T being answered.
    pub ttag: u16,
    /// Byte offset within the command's data.
    pub datao: u32,
    /// Data length of this PDU.
    pub datal: u32,
    /// Last PDU of the R2T's transfer.
    pub last: bool,
}

/// C2HData: data the controller returns for a read.
///
/// Same layout as [`H2CData`] with bytes 10-11 reserved, and flags
/// LAST_PDU and SUCCESS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct C2HData {
    /// CID of the command the data belongs to.
    pub cccid: u16,
    /// Byte offset within the command's data.
    pub datao: u32,
    /// Data length of this PDU.
    pub datal: u32,
    /// Last data PDU of the command.
    pub last: bool,
    /// Command completed successfully; no CapsuleResp will follow.
    pub success: bool,
}

/// R2T: the controller asks for `r2tl` bytes of a write's data at offset
/// `r2to`.
///
/// ```text
/// bytes 0-7     common header: type 09h, HLEN 24, PDO 0, no data
/// bytes 8-9     CCCID
/// bytes 10-11   TTAG   controller-chosen tag the H2CData PDUs echo
/// bytes 12-15   R2TO   offset
/// bytes 16-19   R2TL   length
/// bytes 20-23   reserved
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct R2T {
    /// CID of the write command.
    pub cccid: u16,
    /// Transfer tag.
    pub ttag: u16,
    /// Requested data offset.
    pub r2to: u32,
    /// Requested data length.
    pub r2tl: u32,
}

/// A decoded PDU header (everything but the data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PduHeader {
    /// ICReq.
    IcReq(IcReq),
    /// ICResp.
    IcResp(IcResp),
    /// H2CTermReq; data is the offending PDU header.
    H2CTermReq(TermReq),
    /// C2HTermReq; data is the offending PDU header.
    C2HTermReq(TermReq),
    /// CapsuleCmd; data is the in-capsule data (possibly empty).
    CapsuleCmd(Sqe),
    /// CapsuleResp.
    CapsuleResp(Cqe),
    /// H2CData.
    H2CData(H2CData),
    /// C2HData.
    C2HData(C2HData),
    /// R2T.
    R2T(R2T),
}

impl PduHeader {
    /// The PDU type.
    #[must_use]
    pub const fn pdu_type(&self) -> PduType {
        match self {
            PduHeader::IcReq(_) => PduType::IcReq,
            PduHeader::IcResp(_) => PduType::IcResp,
            PduHeader::H2CTermReq(_) => PduType::H2CTermReq,
            PduHeader::C2HTermReq(_) => PduType::C2HTermReq,
            PduHeader::CapsuleCmd(_) => PduType::CapsuleCmd,
            PduHeader::CapsuleResp(_) => PduType::CapsuleResp,
            PduHeader::H2CData(_) => PduType::H2CData,
            PduHeader::C2HData(_) => PduType::C2HData,
            PduHeader::R2T(_) => PduType::R2T,
        }
    }
}

/// A complete PDU: its header and its data, borrowed from the receive
/// buffer (padding and digests removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pdu<'a> {
    /// The decoded header.
    pub header: PduHeader,
    /// The PDU data: in-capsule data, H2C/C2H data, or TermReq error data.
    pub data: &'a [u8],
}

/// Largest encoded header: HLEN + header digest + padding to a PDO of at
/// most 255.
pub const MAX_HEADER_BUF: usize = 256;

/// An encoded PDU header (common header, PDU-specific header, header
/// digest, padding up to PDO) on the stack, ready to be sent ahead of the
/// data. Dereferences to the bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HeaderBuf {
    buf: [u8; MAX_HEADER_BUF],
    len: usize,
}

impl HeaderBuf {
    /// The encoded bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

impl std::ops::Deref for HeaderBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl std::fmt::Debug for HeaderBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderBuf")
            .field("bytes", &self.as_bytes())
            .finish()
    }
}

/// Builds PDUs for one direction of a connection, given what was
/// negotiated: digests (from ICResp) and the receiver's data alignment
/// (HPDA from ICReq when the controller sends, CPDA from ICResp when the
/// host sends).
///
/// Header encoders return a [`HeaderBuf`] so that the data can be sent
/// from its own buffer (e.g. `sendmsg` with header, data, and digest as
/// separate iovecs) without copying; the `*_pdu` methods append a whole PDU
/// to a caller's `Vec`, which allocates nothing once its capacity suffices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PduEncoder {
    hdgst: bool,
    ddgst: bool,
    pda: u8,
}

impl PduEncoder {
    /// An encoder without digests or alignment requirement (the state
    /// before ICReq/ICResp).
    #[must_use]
    pub const fn new() -> PduEncoder {
        PduEncoder {
            hdgst: false,
            ddgst: false,
            pda: 0,
        }
    }

    /// An encoder with the given digests and receiver alignment (0's based
    /// dwords, clamped to 31).
    #[must_use]
    pub const fn with(hdgst: bool, ddgst: bool, pda: u8) -> PduEncoder {
        PduEncoder {
            hdgst,
            ddgst,
            pda: if pda > MAX_PDA { MAX_PDA } else { pda },
        }
    }

    /// Whether header digests are sent.
    #[must_use]
    pub const fn header_digest(&self) -> bool {
        self.hdgst
    }

    /// Whether data digests are sent.
    #[must_use]
    pub const fn data_digest(&self) -> bool {
        self.ddgst
    }

    /// The data digest trailer for `data`, if data digests are on.
    #[must_use]
    pub fn data_digest_for(&self, data: &[u8]) -> Option<[u8; DIGEST_LEN]> {
        self.ddgst.then(|| digest_bytes(data))
    }

    /// Total PDU length for a PDU of type `t` carrying `data_len` bytes.
    #[must_use]
    pub fn pdu_len(&self, t: PduType, data_len: usize) -> usize {
        self.layout(t, data_len).2
    }

    /// (flags, pdo, plen) for a PDU of type `t` with `data_len` bytes.
    fn layout(&self, t: PduType, data_len: usize) -> (u8, usize, usize) {
        let hlen = t.hlen();
        let hd = self.hdgst && t.uses_digests();
        let hdr_end = hlen + if hd { DIGEST_LEN } else { 0 };
        let mut f = if hd { flags::HDGSTF } else { 0 };
        if data_len == 0 {
            return (f, 0, hdr_end);
        }
        let align = (usize::from(self.pda) + 1) * 4;
        let pdo = hdr_end.div_ceil(align) * align;
        let dd = self.ddgst && t.uses_digests();
        if dd {
            f |= flags::DDGSTF;
        }
        (f, pdo, pdo + data_len + if dd { DIGEST_LEN } else { 0 })
    }

    /// Writes the common header, `psh` (the PDU-specific bytes from offset
    /// 8 to HLEN), the header digest and padding.
    fn header(&self, t: PduType, extra_flags: u8, psh: &[u8], data_len: usize) -> HeaderBuf {
        let (f, pdo, plen) = self.layout(t, data_len);
        let hlen = t.hlen();
        let mut buf = [0u8; MAX_HEADER_BUF];
        let ch = CommonHeader {
            pdu_type: t as u8,
            flags: f | extra_flags,
            hlen: hlen as u8,
            pdo: pdo as u8,
            plen: u32::try_from(plen).unwrap_or(u32::MAX),
        };
        put(&mut buf, 0, &ch.encode());
        put(&mut buf, CH_LEN, psh);
        let mut len = hlen;
        if f & flags::HDGSTF != 0 {
            let d = digest_bytes(&buf[..hlen]);
            put(&mut buf, hlen, &d);
            len += DIGEST_LEN;
        }
        if data_len > 0 {
            len = pdo; // padding bytes are already zero
        }
        HeaderBuf { buf, len }
    }

    /// A CapsuleResp PDU (no data).
    #[must_use]
    pub fn capsule_resp(&self, cqe: &Cqe) -> HeaderBuf {
        self.header(PduType::CapsuleResp, 0, &cqe.encode(), 0)
    }

    /// An R2T PDU (no data).
    #[must_use]
    pub fn r2t(&self, r: &R2T) -> HeaderBuf {
        let mut psh = [0u8; DATA_HLEN - CH_LEN];
        put_u16(&mut psh, 0, r.cccid);
        put_u16(&mut psh, 2, r.ttag);
        put_u32(&mut psh, 4, r.r2to);
        put_u32(&mut psh, 8, r.r2tl);
        self.header(PduType::R2T, 0, &psh, 0)
    }

    /// The header of a CapsuleCmd carrying `data_len` bytes of in-capsule
    /// data. Send the data and then [`data_digest_for`](Self::data_digest_for)
    /// after it.
    #[must_use]
    pub fn capsule_cmd_header(&self, sqe: &Sqe, data_len: usize) -> HeaderBuf {
        self.header(PduType::CapsuleCmd, 0, &sqe.encode(), data_len)
    }

    /// The header of a C2HData PDU carrying `h.datal` bytes.
    #[must_use]
    pub fn c2h_data_header(&self, h: &C2HData) -> HeaderBuf {
        let mut psh = [0u8; DATA_HLEN - CH_LEN];
        put_u16(&mut psh, 0, h.cccid);
        put_u32(&mut psh, 4, h.datao);
        put_u32(&mut psh, 8, h.datal);
        let f =
            if h.last { flags::LAST_PDU } else { 0 } | if h.success { flags::SUCCESS } else { 0 };
        self.header(PduType::C2HData, f, &psh, h.datal as usize)
    }

    /// The header of an H2CData PDU carrying `h.datal` bytes.
    #[must_use]
    pub fn h2c_data_header(&self, h: &H2CData) -> HeaderBuf {
        let mut psh = [0u8; DATA_HLEN - CH_LEN];
        put_u16(&mut psh, 0, h.cccid);
        put_u16(&mut psh, 2, h.ttag);
        put_u32(&mut psh, 4, h.datao);
        put_u32(&mut psh, 8, h.datal);
        let f = if h.last { flags::LAST_PDU } else { 0 };
        self.header(PduType::H2CData, f, &psh, h.datal as usize)
    }

    /// Appends a whole CapsuleCmd PDU with `data` in the capsule.
    pub fn capsule_cmd_pdu(&self, sqe: &Sqe, data: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&self.capsule_cmd_header(sqe, data.len()));
        self.append_data(data, out);
    }

    /// Appends a whole C2HData PDU; `h.datal` is set from `data`.
    pub fn c2h_data_pdu(&self, h: &C2HData, data: &[u8], out: &mut Vec<u8>) {
        let h = C2HData {
            datal: u32::try_from(data.len()).unwrap_or(u32::MAX),
            ..*h
        };
        out.extend_from_slice(&self.c2h_data_header(&h));
        self.append_data(data, out);
    }

    /// Appends a whole H2CData PDU; `h.datal` is set from `data`.
    pub fn h2c_data_pdu(&self, h: &H2CData, data: &[u8], out: &mut Vec<u8>) {
        let h = H2CData {
            datal: u32::try_from(data.len()).unwrap_or(u32::MAX),
            ..*h
        };
        out.extend_from_slice(&self.h2c_data_header(&h));
        self.append_data(data, out);
    }

    fn append_data(&self, data: &[u8], out: &mut Vec<u8>) {
        if data.is_empty() {
            return;
        }
        out.extend_from_slice(data);
        if let Some(d) = self.data_digest_for(data) {
            out.extend_from_slice(&d);
        }
    }

    /// A TermReq PDU (H2CTermReq if `from_host`, else C2HTermReq) with
    /// `error_data` (cut to [`MAX_TERM_DATA`] bytes; normally the header of
    /// the offending PDU). Never carries digests.
    #[must_use]
    pub fn term_req(from_host: bool, fes: u16, fei: u32, error_data: &[u8]) -> HeaderBuf {
        let t = if from_host {
            PduType::H2CTermReq
        } else {
            PduType::C2HTermReq
        };
        let data = error_data.get(..MAX_TERM_DATA).unwrap_or(error_data);
        let mut buf = [0u8; MAX_HEADER_BUF];
        let ch = CommonHeader {
            pdu_type: t as u8,
            flags: 0,
            hlen: TERM_HLEN as u8,
            pdo: 0,
            plen: (TERM_HLEN + data.len()) as u32,
        };
        put(&mut buf, 0, &ch.encode());
        put_u16(&mut buf, 8, fes);
        put_u32(&mut buf, 10, fei);
        put(&mut buf, TERM_HLEN, data);
        HeaderBuf {
            buf,
            len: TERM_HLEN + data.len(),
        }
    }

    /// The TermReq a receiver sends for a transport error `e` (see
    /// [`Error::fes`]), quoting `offending` (the bytes of the bad PDU that
    /// were received, cut to its header). `None` if `e` is not a transport
    /// error.
    #[must_use]
    pub fn term_req_for(from_host: bool, e: &Error, offending: &[u8]) -> Option<HeaderBuf> {
        let fes = e.fes()?;
        let hlen = offending.get(2).map_or(0, |&h| usize::from(h));
        let quote = offending
            .get(..hlen.clamp(CH_LEN, MAX_TERM_DATA))
            .unwrap_or(offending);
        Some(PduEncoder::term_req(from_host, fes as u16, e.fei(), quote))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::crc32c;
    use crate::queue::Sgl;
    use crate::status::Status;

    #[test]
    fn icreq_as_the_linux_host_sends_it() {
        // Common header: type 0, flags 0, hlen 128, pdo 0, plen 128; PFV 0,
        // HPDA 0, DGST = header + data digest, MAXR2T 0.
        let mut wire = [0u8; 128];
        wire[..8].copy_from_slice(&[0x00, 0x00, 0x80, 0x00, 0x80, 0x00, 0x00, 0x00]);
        wire[11] = 0x03;
        let req = IcReq {
            pfv: 0,
            hpda: 0,
            hdgst: true,
            ddgst: true,
            maxr2t: 0,
        };
        assert_eq!(req.encode(), wire);
        assert_eq!(IcReq::from_pdu(&wire).unwrap(), req);
    }

    #[test]
    fn icresp_layout() {
        let resp = IcResp::answer(
            &IcReq {
                hdgst: true,
                ddgst: true,
                ..IcReq::default()
            },
            true,
            false,
            0,
            0x40_0000,
        );
        let wire = resp.encode();
        assert_eq!(&wire[..8], &[0x01, 0, 0x80, 0, 0x80, 0, 0, 0]);
        assert_eq!(&wire[8..16], &[0, 0, 0, 0x01, 0x00, 0x00, 0x40, 0x00]);
        assert!(wire[16..].iter().all(|&b| b == 0));
        assert_eq!(IcResp::from_pdu(&wire).unwrap(), resp);
    }

    #[test]
    fn capsule_resp_with_and_without_header_digest() {
        let cqe = Cqe {
            dw0: 1,
            sqhd: 3,
            ..Cqe::new(0x0010, Status::SUCCESS)
        };
        let plain = PduEncoder::new().capsule_resp(&cqe);
        let mut expect = vec![0x05, 0x00, 0x18, 0x00, 0x18, 0x00, 0x00, 0x00];
        expect.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0x10, 0, 0, 0]);
        assert_eq!(&plain[..], &expect[..]);

        let dig = PduEncoder::with(true, true, 0).capsule_resp(&cqe);
        // HDGSTF set, PLEN 28, no DDGSTF (no data), digest over bytes 0..24.
        assert_eq!(&dig[..8], &[0x05, 0x01, 0x18, 0x00, 0x1c, 0x00, 0x00, 0x00]);
        assert_eq!(dig.len(), 28);
        assert_eq!(dig[24..28], crc32c(&dig[..24]).to_le_bytes());
        // Known value, computed independently (Python crcmod "crc-32c").
        assert_eq!(&dig[24..28], &[0x31, 0x29, 0x2f, 0x49]);
    }

    #[test]
    fn c2h_data_layouts() {
        let h = C2HData {
            cccid: 7,
            datao: 0,
            datal: 512,
            last: true,
            success: false,
        };
        let plain = PduEncoder::new().c2h_data_header(&h);
        assert_eq!(
            &plain[..],
            &[
                0x07, 0x04, 0x18, 0x18, 0x18, 0x02, 0x00, 0x00, // ch: plen 24+512
                0x07, 0x00, 0x00, 0x00, // cccid, reserved
                0x00, 0x00, 0x00, 0x00, // datao
                0x00, 0x02, 0x00, 0x00, // datal 512
                0x00, 0x00, 0x00, 0x00,
            ]
        );
        let enc = PduEncoder::with(true, true, 0);
        let hb = enc.c2h_data_header(&h);
        // flags HDGSTF|DDGSTF|LAST, pdo 28, plen 28 + 512 + 4.
        assert_eq!(&hb[..4], &[0x07, 0x07, 0x18, 0x1c]);
        assert_eq!(u32_at(&hb, 4), 544);
        assert_eq!(hb.len(), 28);
        // With HPDA 7 (32-byte alignment) the data starts at 32.
        let aligned = PduEncoder::with(true, false, 7).c2h_data_header(&h);
        assert_eq!(aligned[3], 32);
        assert_eq!(aligned.len(), 32);
        assert_eq!(u32_at(&aligned, 4), 32 + 512);
        assert!(aligned[28..32].iter().all(|&b| b == 0));

        let data = vec![0xabu8; 512];
        let mut pdu = Vec::new();
        enc.c2h_data_pdu(&h, &data, &mut pdu);
        assert_eq!(pdu.len(), 544);
        assert_eq!(&pdu[540..], &crc32c(&data).to_le_bytes());
    }

    #[test]
    fn capsule_cmd_without_data_has_pdo_zero() {
        let sqe = Sqe {
            opcode: 0x18,
            flags: crate::queue::FLAGS_SGL,
            dptr: Sgl::null(),
            ..Sqe::default()
        };
        let enc = PduEncoder::with(true, true, 0);
        let h = enc.capsule_cmd_header(&sqe, 0);
        assert_eq!(&h[..8], &[0x04, 0x01, 0x48, 0x00, 0x4c, 0x00, 0x00, 0x00]);
        let mut v = Vec::new();
        enc.capsule_cmd_pdu(&sqe, &[1, 2, 3, 4], &mut v);
        assert_eq!(&v[..4], &[0x04, 0x03, 0x48, 0x4c]);
        assert_eq!(v.len(), 76 + 4 + 4);
    }

    #[test]
    fn term_req_layout() {
        let bad = [0xffu8, 0, 24, 0, 24, 0, 0, 0];
        let e = Error::InvalidHeaderField {
            offset: 0,
            reason: "type",
        };
        let t = PduEncoder::term_req_for(false, &e, &bad).unwrap();
        assert_eq!(
            &t[..24],
            &[
                0x03, 0x00, 0x18, 0x00, 0x20, 0x00, 0x00, 0x00, // plen 24+8
                0x01, 0x00, // FES invalid header field
                0x00, 0x00, 0x00, 0x00, // FEI offset 0
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ]
        );
        assert_eq!(&t[24..], &bad);
        let long = [0u8; 300];
        assert_eq!(PduEncoder::term_req(true, 2, 0, &long).len(), MAX_TERM_PLEN);
        assert!(PduEncoder::term_req_for(true, &Error::InvalidNqn("x"), &bad).is_none());
    }
}
