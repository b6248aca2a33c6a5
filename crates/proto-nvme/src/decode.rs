//! The NVMe/TCP receive side: a framing decoder over the caller's buffer.
//!
//! [`PduDecoder::decode`] looks at the bytes received so far (starting at a
//! PDU boundary) and either says how many more bytes it needs, or returns
//! one complete, validated PDU whose data borrows from the buffer, and its
//! length. [`PduDecoder::decode_header`] stops after the header so that a
//! large data payload can be received straight into its final buffer; the
//! returned [`Frame`] says where the data and its digest are.
//!
//! Every check that fails is a transport error carrying the Fatal Error
//! Status to send in a TermReq (see `docs/nvme.md` for the table). A data
//! digest mismatch is not fatal: the framing is intact, so the decoder
//! returns the PDU as [`Decoded::BadDataDigest`] and the command is failed
//! with Transient Transport Error.

use crate::digest::{DIGEST_LEN, crc32c};
use crate::error::{Error, Result};
use crate::pdu::{
    ADMIN_IN_CAPSULE_DATA, C2HData, CH_LEN, CommonHeader, H2CData, IcReq, IcResp, MAX_PDA,
    MAX_TERM_PLEN, Pdu, PduHeader, PduType, R2T, TermReq, flags,
};
use crate::queue::{Cqe, Sqe};
use crate::wire::{u16_at, u32_at};

/// Which end of the connection the decoder serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A controller (target): receives ICReq, H2CTermReq, CapsuleCmd,
    /// H2CData.
    Controller,
    /// A host (initiator): receives ICResp, C2HTermReq, CapsuleResp,
    /// C2HData, R2T.
    Host,
}

/// Where a PDU's pieces are, once its header is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// The decoded header.
    pub header: PduHeader,
    /// Bytes of header including the header digest (HLEN + 4 or HLEN).
    pub header_len: usize,
    /// Offset of the data from the start of the PDU (PDO, or HLEN for a
    /// TermReq); equals `header_len` plus padding.
    pub data_offset: usize,
    /// Data bytes.
    pub data_len: usize,
    /// Whether a 4-byte data digest follows the data.
    pub data_digest: bool,
    /// Total PDU length (PLEN).
    pub len: usize,
}

impl Frame {
    /// The data of this PDU within the whole PDU's bytes `pdu`.
    #[must_use]
    pub fn data<'a>(&self, pdu: &'a [u8]) -> &'a [u8] {
        pdu.get(self.data_offset..self.data_offset + self.data_len)
            .unwrap_or(&[])
    }

    /// The received data digest within the whole PDU's bytes `pdu`.
    #[must_use]
    pub fn received_data_digest(&self, pdu: &[u8]) -> Option<[u8; DIGEST_LEN]> {
        if !self.data_digest {
            return None;
        }
        let at = self.data_offset + self.data_len;
        pdu.get(at..)?.first_chunk::<DIGEST_LEN>().copied()
    }

    /// Bytes between the header (with digest) and the data.
    #[must_use]
    pub fn padding(&self) -> usize {
        self.data_offset - self.header_len
    }
}

/// Result of [`PduDecoder::decode_header`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderDecoded {
    /// At least `more` further bytes are needed to decode the header.
    Incomplete {
        /// Additional bytes needed.
        more: usize,
    },
    /// The header is complete and valid.
    Header(Frame),
}

/// Result of [`PduDecoder::decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// At least `more` further bytes are needed. Once the common header
    /// has arrived this is exact: the rest of the PDU.
    Incomplete {
        /// Additional bytes needed.
        more: usize,
    },
    /// A complete PDU occupying the first `len` bytes of the buffer.
    Pdu {
        /// The PDU.
        pdu: Pdu<'a>,
        /// Bytes consumed.
        len: usize,
    },
    /// A complete PDU whose data digest did not match. The stream is still
    /// in sync (skip `len` bytes); fail the command the PDU belongs to with
    /// [`Status::TRANSIENT_TRANSPORT_ERROR`](crate::Status::TRANSIENT_TRANSPORT_ERROR).
    BadDataDigest {
        /// The PDU (its data is not trustworthy).
        pdu: Pdu<'a>,
        /// Bytes consumed.
        len: usize,
        /// Digest computed over the received data.
        computed: u32,
        /// Digest received.
        received: u32,
    },
}

/// Validating decoder for one direction of an NVMe/TCP connection.
///
/// It holds only what was negotiated; it never buffers or allocates, and
/// decoding does not change it (so the same bytes may be decoded again
/// while more arrive). The caller moves it from connection setup to the
/// established state with [`establish`](Self::establish) after ICReq and
/// ICResp have been exchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PduDecoder {
    role: Role,
    established: bool,
    hdgst: bool,
    ddgst: bool,
    pda: u8,
    max_data: u32,
    max_in_capsule: u32,
}

/// Default upper bound on the data of one received H2CData/C2HData PDU.
pub const DEFAULT_MAX_DATA: u32 = 1 << 20;

impl PduDecoder {
    /// A decoder for `role` awaiting the initialize-connection PDU: no
    /// digests, data alignment 4 bytes, at most
    /// [`ADMIN_IN_CAPSULE_DATA`] bytes of in-capsule data and
    /// [`DEFAULT_MAX_DATA`] bytes per data PDU.
    #[must_use]
    pub const fn new(role: Role) -> PduDecoder {
        PduDecoder {
            role,
            established: false,
            hdgst: false,
            ddgst: false,
            pda: 0,
            max_data: DEFAULT_MAX_DATA,
            max_in_capsule: ADMIN_IN_CAPSULE_DATA,
        }
    }

    /// Ends connection setup: from now on ICReq/ICResp is a sequence error
    /// and the other PDUs are accepted, with the given digests.
    pub fn establish(&mut self, hdgst: bool, ddgst: bool) {
        self.established = true;
        self.hdgst = hdgst;
        self.ddgst = ddgst;
    }

    /// Sets the data alignment this end asked for (its CPDA as a
    /// controller, HPDA as a host; 0's based dwords).
    pub fn set_pda(&mut self, pda: u8) {
        self.pda = pda.min(MAX_PDA);
    }

    /// Sets the most data accepted in one H2CData PDU (a controller's
    /// MAXH2CDATA) or C2HData PDU (a host's choice).
    pub fn set_max_data(&mut self, max: u32) {
        self.max_data = max;
    }

    /// Sets the most in-capsule data accepted in one CapsuleCmd (8 KiB on
    /// an admin queue; `IOCCSZ * 16 - 64` on an I/O queue).
    pub fn set_max_in_capsule(&mut self, max: u32) {
        self.max_in_capsule = max;
    }

    /// The role.
    #[must_use]
    pub const fn role(&self) -> Role {
        self.role
    }

    /// Whether [`establish`](Self::establish) was called.
    #[must_use]
    pub const fn is_established(&self) -> bool {
        self.established
    }

    /// Whether header digests are expected.
    #[must_use]
    pub const fn header_digest(&self) -> bool {
        self.hdgst
    }

    /// Whether data digests are expected.
    #[must_use]
    pub const fn data_digest(&self) -> bool {
        self.ddgst
    }

    /// Decodes one complete PDU from the start of `buf`.
    pub fn decode<'a>(&self, buf: &'a [u8]) -> Result<Decoded<'a>> {
        let frame = match self.decode_header(buf)? {
            HeaderDecoded::Incomplete { more } => {
                // Once the common header is in, PLEN has passed every
                // check, so ask for the whole PDU at once.
                let more = match CommonHeader::parse(buf) {
                    Ok(ch) => (ch.plen as usize).saturating_sub(buf.len()).max(more),
                    Err(_) => more,
                };
                return Ok(Decoded::Incomplete { more });
            }
            HeaderDecoded::Header(f) => f,
        };
        let Some(pdu_bytes) = buf.get(..frame.len) else {
            return Ok(Decoded::Incomplete {
                more: frame.len - buf.len(),
            });
        };
        let data = frame.data(pdu_bytes);
        let pdu = Pdu {
            header: frame.header,
            data,
        };
        if let Some(received) = frame.received_data_digest(pdu_bytes) {
            let computed = crc32c(data);
            let received = u32::from_le_bytes(received);
            if computed != received {
                return Ok(Decoded::BadDataDigest {
                    pdu,
                    len: frame.len,
                    computed,
                    received,
                });
            }
        }
        Ok(Decoded::Pdu {
            pdu,
            len: frame.len,
        })
    }

    /// Decodes and validates the header of the PDU at the start of `buf`
    /// (checking the header digest), without needing its data.
    pub fn decode_header(&self, buf: &[u8]) -> Result<HeaderDecoded> {
        let Ok(ch) = CommonHeader::parse(buf) else {
            return Ok(HeaderDecoded::Incomplete {
                more: CH_LEN - buf.len(),
            });
        };
        let t = PduType::from_wire(ch.pdu_type).ok_or(field(0, "unknown PDU type"))?;
        if t.from_host() != (self.role == Role::Controller) {
            return Err(field(0, "PDU type not sent in this direction"));
        }
        let is_ic = matches!(t, PduType::IcReq | PduType::IcResp);
        let is_term = matches!(t, PduType::H2CTermReq | PduType::C2HTermReq);
        if !self.established && !is_ic && !is_term {
            return Err(Error::PduSequence("PDU before connection initialization"));
        }
        if self.established && is_ic {
            return Err(Error::PduSequence("repeated connection initialization"));
        }
        let hlen = usize::from(ch.hlen);
        if hlen != t.hlen() {
            return Err(field(2, "HLEN does not match the PDU type"));
        }
        let plen = ch.plen as usize;
        let digests = t.uses_digests();
        let hd = digests && self.hdgst;
        if digests && (ch.flags & flags::HDGSTF != 0) != self.hdgst {
            return Err(field(
                1,
                "HDGSTF does not match the negotiated header digest",
            ));
        }
        let header_len = hlen + if hd { DIGEST_LEN } else { 0 };
        if plen < header_len {
            return Err(field(4, "PLEN shorter than the header"));
        }
        let (data_offset, data_len, dd) = match t {
            PduType::IcReq | PduType::IcResp => {
                if plen != hlen {
                    return Err(field(4, "PLEN of an ICReq/ICResp must be 128"));
                }
                (hlen, 0, false)
            }
            PduType::H2CTermReq | PduType::C2HTermReq => {
                if plen > MAX_TERM_PLEN {
                    return Err(field(4, "TermReq longer than 152 bytes"));
                }
                (hlen, plen - hlen, false)
            }
            PduType::CapsuleResp | PduType::R2T => {
                if ch.flags & flags::DDGSTF != 0 {
                    return Err(field(1, "DDGSTF set on a PDU without data"));
                }
                if plen != header_len {
                    return Err(field(4, "PLEN of a PDU without data"));
                }
                (header_len, 0, false)
            }
            PduType::CapsuleCmd | PduType::H2CData | PduType::C2HData => {
                self.data_layout(t, &ch, header_len)?
            }
        };
        let Some(hdr) = buf.get(..header_len) else {
            return Ok(HeaderDecoded::Incomplete {
                more: header_len - buf.len(),
            });
        };
        if hd {
            let computed = crc32c(&hdr[..hlen]);
            let received = u32_at(hdr, hlen);
            if computed != received {
                return Err(Error::HeaderDigest { computed, received });
            }
        }
        let header = psh(t, ch.flags, hdr, data_len)?;
        Ok(HeaderDecoded::Header(Frame {
            header,
            header_len,
            data_offset,
            data_len,
            data_digest: dd,
            len: plen,
        }))
    }

    /// PDO/PLEN/DDGSTF rules and data limits for PDUs that carry data.
    fn data_layout(
        &self,
        t: PduType,
        ch: &CommonHeader,
        header_len: usize,
    ) -> Result<(usize, usize, bool)> {
        let plen = ch.plen as usize;
        let ddgstf = ch.flags & flags::DDGSTF != 0;
        if ddgstf && !self.ddgst {
            return Err(field(1, "DDGSTF set but data digest not negotiated"));
        }
        let pdo = usize::from(ch.pdo);
        if pdo == 0 {
            // Only a command capsule may come without data, and then it
            // is all header.
            if t != PduType::CapsuleCmd {
                return Err(field(3, "data PDU without data offset"));
            }
            if ddgstf {
                return Err(field(1, "DDGSTF set on a capsule without data"));
            }
            if plen != header_len {
                return Err(field(4, "PLEN of a capsule without data"));
            }
            return Ok((header_len, 0, false));
        }
        if pdo < header_len {
            return Err(field(3, "PDO inside the PDU header"));
        }
        let align = (usize::from(self.pda) + 1) * 4;
        if !pdo.is_multiple_of(align) {
            return Err(field(3, "PDO not aligned as requested by the PDA"));
        }
        let dd = if ddgstf { DIGEST_LEN } else { 0 };
        if plen < pdo + dd {
            return Err(field(4, "PLEN shorter than PDO plus data digest"));
        }
        let data_len = plen - pdo - dd;
        if self.ddgst && data_len > 0 && !ddgstf {
            return Err(field(1, "DDGSTF clear but data digest negotiated"));
        }
        let max = if t == PduType::CapsuleCmd {
            self.max_in_capsule
        } else {
            self.max_data
        };
        if data_len as u64 > u64::from(max) {
            return Err(Error::DataLimitExceeded {
                len: data_len as u64,
                max: u64::from(max),
            });
        }
        Ok((pdo, data_len, ddgstf))
    }
}

fn field(offset: u32, reason: &'static str) -> Error {
    Error::InvalidHeaderField { offset, reason }
}

/// Decodes the PDU-specific header once lengths and digest are checked.
fn psh(t: PduType, f: u8, hdr: &[u8], data_len: usize) -> Result<PduHeader> {
    Ok(match t {
        PduType::IcReq => PduHeader::IcReq(IcReq::from_pdu(hdr)?),
        PduType::IcResp => PduHeader::IcResp(IcResp::from_pdu(hdr)?),
        PduType::H2CTermReq | PduType::C2HTermReq => {
            let term = TermReq {
                fes: u16_at(hdr, 8),
                fei: u32_at(hdr, 10),
            };
            if t == PduType::H2CTermReq {
                PduHeader::H2CTermReq(term)
            } else {
                PduHeader::C2HTermReq(term)
            }
        }
        PduType::CapsuleCmd => PduHeader::CapsuleCmd(Sqe::parse(hdr.get(CH_LEN..).unwrap_or(&[]))?),
        PduType::CapsuleResp => {
            PduHeader::CapsuleResp(Cqe::parse(hdr.get(CH_LEN..).unwrap_or(&[]))?)
        }
        PduType::H2CData | PduType::C2HData => {
            let datal = u32_at(hdr, 16);
            if datal as usize != data_len {
                return Err(field(16, "DATAL does not match PLEN"));
            }
            if datal == 0 {
                return Err(field(16, "data PDU without data"));
            }
            let last = f & flags::LAST_PDU != 0;
            if t == PduType::H2CData {
                PduHeader::H2CData(H2CData {
                    cccid: u16_at(hdr, 8),
                    ttag: u16_at(hdr, 10),
                    datao: u32_at(hdr, 12),
                    datal,
                    last,
                })
            } else {
                let success = f & flags::SUCCESS != 0;
                if success && !last {
                    return Err(field(1, "SUCCESS without LAST_PDU"));
                }
                PduHeader::C2HData(C2HData {
                    cccid: u16_at(hdr, 8),
                    datao: u32_at(hdr, 12),
                    datal,
                    last,
                    success,
                })
            }
        }
        PduType::R2T => {
            let r = R2T {
                cccid: u16_at(hdr, 8),
                ttag: u16_at(hdr, 10),
                r2to: u32_at(hdr, 12),
                r2tl: u32_at(hdr, 16),
            };
            if r.r2tl == 0 {
                return Err(field(16, "R2T for zero bytes"));
            }
            PduHeader::R2T(r)
        }
    })
}

/// Checks a data PDU (H2CData/C2HData, or an R2T) against the command it
/// belongs to: `offset`/`len` must lie within the command's `transfer_len`
/// bytes ([`Error::DataOutOfRange`] otherwise), and, when the receiver
/// requires in-order data, start at `expected_offset`.
pub fn check_data_range(
    offset: u32,
    len: u32,
    transfer_len: u32,
    expected_offset: Option<u32>,
) -> Result<()> {
    let end = u64::from(offset) + u64::from(len);
    if end > u64::from(transfer_len) {
        return Err(Error::DataOutOfRange(
            "data beyond the command's transfer length",
        ));
    }
    if let Some(e) = expected_offset
        && e != offset
    {
        return Err(Error::DataOutOfRange("data offset out of sequence"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::digest_bytes;
    use crate::error::Fes;
    use crate::pdu::PduEncoder;
    use crate::queue::{FLAGS_SGL, Sgl};
    use crate::status::Status;

    fn controller(h: bool, d: bool) -> PduDecoder {
        let mut dec = PduDecoder::new(Role::Controller);
        dec.establish(h, d);
        dec
    }

    fn host(h: bool, d: bool) -> PduDecoder {
        let mut dec = PduDecoder::new(Role::Host);
        dec.establish(h, d);
        dec
    }

    fn expect_pdu<'a>(d: Result<Decoded<'a>>) -> (Pdu<'a>, usize) {
        match d {
            Ok(Decoded::Pdu { pdu, len }) => (pdu, len),
            other => panic!("expected a PDU, got {other:?}"),
        }
    }

    fn fes_of(r: Result<Decoded<'_>>) -> (Fes, u32) {
        let e = r.expect_err("expected an error");
        (e.fes().expect("transport error"), e.fei())
    }

    #[test]
    fn icreq_byte_by_byte() {
        let dec = PduDecoder::new(Role::Controller);
        let mut wire = [0u8; 128];
        wire[..8].copy_from_slice(&[0x00, 0x00, 0x80, 0x00, 0x80, 0x00, 0x00, 0x00]);
        wire[11] = 0x01; // header digest only
        for n in 0..128 {
            match dec.decode(&wire[..n]).unwrap() {
                Decoded::Incomplete { more } => {
                    let want = if n < 8 { 8 - n } else { 128 - n };
                    assert_eq!(more, want, "at {n}");
                }
                other => panic!("{other:?}"),
            }
        }
        let (pdu, len) = expect_pdu(dec.decode(&wire));
        assert_eq!(len, 128);
        assert_eq!(
            pdu.header,
            PduHeader::IcReq(IcReq {
                pfv: 0,
                hpda: 0,
                hdgst: true,
                ddgst: false,
                maxr2t: 0
            })
        );
        // After establish, a second ICReq is a sequence error.
        let mut est = dec;
        est.establish(true, false);
        assert_eq!(fes_of(est.decode(&wire)).0, Fes::PduSequence);
        // Unsupported PFV -> FES 06h at offset 8; HPDA 32 -> 01h at 10.
        let mut bad = wire;
        bad[8] = 1;
        assert_eq!(fes_of(dec.decode(&bad)), (Fes::UnsupportedParameter, 8));
        let mut bad = wire;
        bad[10] = 32;
        assert_eq!(fes_of(dec.decode(&bad)), (Fes::InvalidHeaderField, 10));
        let mut bad = wire;
        bad[4] = 0x84; // plen 132
        assert_eq!(fes_of(dec.decode(&bad)), (Fes::InvalidHeaderField, 4));
    }

    #[test]
    fn capsule_before_icreq_is_a_sequence_error() {
        let dec = PduDecoder::new(Role::Controller);
        let sqe = Sqe::default();
        let h = PduEncoder::new().capsule_cmd_header(&sqe, 0);
        assert_eq!(fes_of(dec.decode(&h)).0, Fes::PduSequence);
    }

    /// A Connect command capsule as the Linux host sends it on the admin
    /// queue: no digests, 1024 bytes of in-capsule data (SGL offset 0).
    fn connect_capsule_bytes() -> Vec<u8> {
        let mut v = vec![
            0x04, 0x00, 0x48, 0x48, // CapsuleCmd, no flags, hlen 72, pdo 72
            0x48, 0x04, 0x00, 0x00, // plen 72 + 1024 = 1096
        ];
        let mut sqe = [0u8; 64];
        sqe[0] = 0x7f; // fabrics
        sqe[1] = 0x40; // SGL
        sqe[2] = 0x00; // cid 0
        sqe[4] = 0x01; // Connect
        sqe[32..36].copy_from_slice(&1024u32.to_le_bytes()); // SGL length
        sqe[39] = 0x01; // Data Block, offset sub-type
        sqe[42..44].copy_from_slice(&0u16.to_le_bytes()); // QID 0
        sqe[44..46].copy_from_slice(&31u16.to_le_bytes()); // SQSIZE 32
        sqe[48..52].copy_from_slice(&120_000u32.to_le_bytes()); // KATO
        v.extend_from_slice(&sqe);
        let mut data = [0u8; 1024];
        data[..16].copy_from_slice(&[0x11; 16]);
        data[16..18].copy_from_slice(&0xffffu16.to_le_bytes());
        data[256..256 + 9].copy_from_slice(b"nqn.a:sub");
        data[512..512 + 10].copy_from_slice(b"nqn.b:host");
        v.extend_from_slice(&data);
        v
    }

    #[test]
    fn connect_capsule_with_data() {
        let wire = connect_capsule_bytes();
        let dec = controller(false, false);
        assert_eq!(
            dec.decode(&wire[..1000]).unwrap(),
            Decoded::Incomplete { more: 96 }
        );
        // Mid-header, the decoder already asks for the whole PDU...
        assert_eq!(
            dec.decode(&wire[..40]).unwrap(),
            Decoded::Incomplete { more: 1056 }
        );
        // ...while the header-only path asks for the header.
        assert_eq!(
            dec.decode_header(&wire[..40]).unwrap(),
            HeaderDecoded::Incomplete { more: 32 }
        );
        let mut longer = wire.clone();
        longer.extend_from_slice(&[0x04, 0x00]);
        let (pdu, len) = expect_pdu(dec.decode(&longer));
        assert_eq!(len, 1096);
        let PduHeader::CapsuleCmd(sqe) = pdu.header else {
            panic!()
        };
        assert_eq!(sqe.opcode, 0x7f);
        assert_eq!(sqe.fctype(), 0x01);
        assert_eq!(pdu.data.len(), 1024);
        let dp = sqe.data_pointer().unwrap();
        assert_eq!(dp.in_capsule_slice(pdu.data).unwrap(), pdu.data);
        // Our encoder produces the same bytes.
        let mut enc = Vec::new();
        PduEncoder::new().capsule_cmd_pdu(&sqe, pdu.data, &mut enc);
        assert_eq!(enc, wire);
        // In-capsule data over the limit: FES 05h.
        let mut small = dec;
        small.set_max_in_capsule(512);
        assert_eq!(fes_of(small.decode(&wire)).0, Fes::DataLimitExceeded);
    }

    #[test]
    fn capsule_with_digests_and_padding() {
        let sqe = Sqe {
            opcode: 0x01,
            flags: FLAGS_SGL,
            nsid: 1,
            dptr: Sgl::in_capsule(0, 8),
            ..Sqe::default()
        };
        let data = *b"abcdefgh";
        let mut dec = controller(true, true);
        dec.set_pda(3); // data aligned to 16 bytes: 72 + 4 -> 80
        let mut wire = Vec::new();
        PduEncoder::with(true, true, 3).capsule_cmd_pdu(&sqe, &data, &mut wire);
        assert_eq!(wire[3], 80);
        assert_eq!(wire.len(), 80 + 8 + 4);
        let (pdu, _) = expect_pdu(dec.decode(&wire));
        assert_eq!(pdu.data, &data);
        assert_eq!(pdu.header, PduHeader::CapsuleCmd(sqe));
        // Corrupt the data: non-fatal, PDU still framed.
        let mut bad = wire.clone();
        bad[81] ^= 1;
        match dec.decode(&bad).unwrap() {
            Decoded::BadDataDigest {
                len,
                computed,
                received,
                ..
            } => {
                assert_eq!(len, wire.len());
                assert_eq!(received, crc32c(&data));
                assert_ne!(computed, received);
            }
            other => panic!("{other:?}"),
        }
        // Corrupt the header: FES 03h.
        let mut bad = wire.clone();
        bad[10] ^= 1;
        assert_eq!(fes_of(dec.decode(&bad)).0, Fes::HeaderDigest);
        // A PDO that breaks the receiver's alignment: 01h at byte 3.
        let mut unaligned = Vec::new();
        PduEncoder::with(true, true, 0).capsule_cmd_pdu(&sqe, &data, &mut unaligned);
        assert_eq!(fes_of(dec.decode(&unaligned)), (Fes::InvalidHeaderField, 3));
    }

    #[test]
    fn digest_flags_must_match_negotiation() {
        let sqe = Sqe::default();
        let with = PduEncoder::with(true, false, 0).capsule_cmd_header(&sqe, 0);
        let without = PduEncoder::new().capsule_cmd_header(&sqe, 0);
        assert_eq!(
            fes_of(controller(false, false).decode(&with)),
            (Fes::InvalidHeaderField, 1)
        );
        assert_eq!(
            fes_of(controller(true, false).decode(&without)),
            (Fes::InvalidHeaderField, 1)
        );
        let mut v = Vec::new();
        PduEncoder::with(false, true, 0).capsule_cmd_pdu(&sqe, &[1], &mut v);
        assert_eq!(
            fes_of(controller(false, false).decode(&v)),
            (Fes::InvalidHeaderField, 1)
        );
        let mut v = Vec::new();
        PduEncoder::new().capsule_cmd_pdu(&sqe, &[1], &mut v);
        assert_eq!(
            fes_of(controller(false, true).decode(&v)),
            (Fes::InvalidHeaderField, 1)
        );
        // A capsule without data is fine with data digests negotiated.
        assert!(matches!(
            controller(false, true).decode(&without),
            Ok(Decoded::Pdu { .. })
        ));
    }

    #[test]
    fn c2h_data_with_and_without_digests() {
        // Laid out by hand: C2HData for cid 3, 8 bytes at offset 4096,
        // LAST_PDU, no digests: pdo 24, plen 32.
        let mut wire = vec![
            0x07, 0x04, 0x18, 0x18, 0x20, 0x00, 0x00, 0x00, // ch
            0x03, 0x00, 0x00, 0x00, // cccid 3
            0x00, 0x10, 0x00, 0x00, // datao 4096
            0x08, 0x00, 0x00, 0x00, // datal 8
            0x00, 0x00, 0x00, 0x00,
        ];
        wire.extend_from_slice(b"01234567");
        let (pdu, len) = expect_pdu(host(false, false).decode(&wire));
        assert_eq!(len, 32);
        assert_eq!(
            pdu.header,
            PduHeader::C2HData(C2HData {
                cccid: 3,
                datao: 4096,
                datal: 8,
                last: true,
                success: false
            })
        );
        assert_eq!(pdu.data, b"01234567");

        // Same with both digests: flags 0x07, pdo 28, plen 40.
        let mut dig = wire[..24].to_vec();
        dig[1] = 0x07;
        dig[3] = 28;
        dig[4] = 40;
        let hd = digest_bytes(&dig[..24]);
        // Known values, computed independently (Python crcmod "crc-32c").
        assert_eq!(hd, [0xea, 0x57, 0xe9, 0x12]);
        assert_eq!(digest_bytes(b"01234567"), [0x20, 0x23, 0x22, 0xac]);
        dig.extend_from_slice(&hd);
        dig.extend_from_slice(b"01234567");
        dig.extend_from_slice(&digest_bytes(b"01234567"));
        let (pdu2, len2) = expect_pdu(host(true, true).decode(&dig));
        assert_eq!(len2, 40);
        assert_eq!(pdu2, pdu);
        let mut out = Vec::new();
        let PduHeader::C2HData(h) = pdu.header else {
            panic!()
        };
        PduEncoder::with(true, true, 0).c2h_data_pdu(&h, pdu.data, &mut out);
        assert_eq!(out, dig);

        // Two-phase decode: header first, data later.
        let HeaderDecoded::Header(frame) = host(true, true).decode_header(&dig[..28]).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (
                frame.header_len,
                frame.data_offset,
                frame.data_len,
                frame.len
            ),
            (28, 28, 8, 40)
        );
        assert!(frame.data_digest);
        assert_eq!(frame.padding(), 0);
        assert_eq!(frame.data(&dig), b"01234567");
        assert_eq!(
            frame.received_data_digest(&dig),
            Some(digest_bytes(b"01234567"))
        );

        // SUCCESS without LAST_PDU.
        let mut bad = wire.clone();
        bad[1] = 0x08;
        assert_eq!(
            fes_of(host(false, false).decode(&bad)),
            (Fes::InvalidHeaderField, 1)
        );
        // DATAL disagreeing with PLEN.
        let mut bad = wire.clone();
        bad[16] = 9;
        assert_eq!(
            fes_of(host(false, false).decode(&bad)),
            (Fes::InvalidHeaderField, 16)
        );
        // C2HData arriving at a controller.
        assert_eq!(
            fes_of(controller(false, false).decode(&wire)),
            (Fes::InvalidHeaderField, 0)
        );
        // Over the host's limit.
        let mut h = host(false, false);
        h.set_max_data(4);
        assert_eq!(fes_of(h.decode(&wire)).0, Fes::DataLimitExceeded);
    }

    #[test]
    fn h2c_data_and_r2t() {
        let enc = PduEncoder::with(true, false, 0);
        let r = R2T {
            cccid: 9,
            ttag: 1,
            r2to: 0,
            r2tl: 8192,
        };
        let r2t = enc.r2t(&r);
        let (pdu, len) = expect_pdu(host(true, false).decode(&r2t));
        assert_eq!(len, 28);
        assert_eq!(pdu.header, PduHeader::R2T(r));
        let h = H2CData {
            cccid: 9,
            ttag: 1,
            datao: 4096,
            datal: 0,
            last: true,
        };
        let mut v = Vec::new();
        enc.h2c_data_pdu(&h, &[5u8; 4096], &mut v);
        let mut dec = controller(true, false);
        dec.set_max_data(4096);
        let (pdu, _) = expect_pdu(dec.decode(&v));
        let PduHeader::H2CData(got) = pdu.header else {
            panic!()
        };
        assert_eq!(got.datal, 4096);
        assert!(got.last);
        assert_eq!(got.ttag, 1);
        check_data_range(got.datao, got.datal, 8192, Some(4096)).unwrap();
        assert_eq!(
            check_data_range(got.datao, got.datal, 8191, None)
                .unwrap_err()
                .fes(),
            Some(Fes::DataOutOfRange)
        );
        assert!(check_data_range(got.datao, got.datal, 8192, Some(0)).is_err());
        dec.set_max_data(4095);
        assert_eq!(fes_of(dec.decode(&v)).0, Fes::DataLimitExceeded);
    }

    #[test]
    fn capsule_resp_and_term_req_from_controller() {
        let enc = PduEncoder::new();
        let cqe = Cqe::new(1, Status::SUCCESS);
        let resp = enc.capsule_resp(&cqe);
        let (pdu, _) = expect_pdu(host(false, false).decode(&resp));
        assert_eq!(pdu.header, PduHeader::CapsuleResp(cqe));
        let t = PduEncoder::term_req(false, 0x03, 0, &[0xaa; 24]);
        let (pdu, len) = expect_pdu(PduDecoder::new(Role::Host).decode(&t));
        assert_eq!(len, 48);
        assert_eq!(
            pdu.header,
            PduHeader::C2HTermReq(TermReq { fes: 3, fei: 0 })
        );
        assert_eq!(pdu.data, &[0xaa; 24]);
        // A TermReq longer than 152 bytes.
        let mut bad = t.to_vec();
        bad[4] = 153;
        assert_eq!(
            fes_of(host(false, false).decode(&bad)),
            (Fes::InvalidHeaderField, 4)
        );
    }

    #[test]
    fn header_field_errors() {
        let dec = controller(false, false);
        let good = PduEncoder::new().capsule_cmd_header(&Sqe::default(), 0);
        let mut b = good.to_vec();
        b[0] = 0x08;
        assert_eq!(fes_of(dec.decode(&b)), (Fes::InvalidHeaderField, 0));
        let mut b = good.to_vec();
        b[2] = 24;
        assert_eq!(fes_of(dec.decode(&b)), (Fes::InvalidHeaderField, 2));
        let mut b = good.to_vec();
        b[4] = 71;
        assert_eq!(fes_of(dec.decode(&b)), (Fes::InvalidHeaderField, 4));
        let mut b = good.to_vec();
        b[3] = 40; // pdo inside the header
        b[4] = 80;
        b.extend_from_slice(&[0; 8]);
        assert_eq!(fes_of(dec.decode(&b)), (Fes::InvalidHeaderField, 3));
        // A huge PLEN is refused before waiting for it.
        let mut b = good.to_vec();
        b[3] = 72;
        b[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(fes_of(dec.decode(&b)).0, Fes::DataLimitExceeded);
    }
}
