//! Fuzzes the NVMe/TCP stream decoder of `proto-nvme`.
//!
//! Input layout: byte 0 chooses the negotiated state (bit 0 role: host or
//! controller; bit 1 header digest; bit 2 data digest; bit 3 connection
//! established; bits 4-6 the data alignment PDA), byte 1 scales the data
//! limits; the rest is the received byte stream, decoded PDU after PDU the
//! way a connection would. Every accepted PDU must re-encode into bytes
//! that decode to the same PDU.

#![no_main]

use libfuzzer_sys::fuzz_target;
use proto_nvme::{Decoded, HeaderDecoded, Pdu, PduDecoder, PduEncoder, PduHeader, Role};

fuzz_target!(|data: &[u8]| {
    let Some((&[cfg, limits], mut stream)) = data.split_first_chunk::<2>() else {
        return;
    };
    let role = if cfg & 1 != 0 {
        Role::Host
    } else {
        Role::Controller
    };
    let (hdgst, ddgst) = (cfg & 2 != 0, cfg & 4 != 0);
    let pda = (cfg >> 4) & 7;
    let mut dec = PduDecoder::new(role);
    if cfg & 8 != 0 {
        dec.establish(hdgst, ddgst);
    }
    dec.set_pda(pda);
    dec.set_max_data(u32::from(limits) * 64);
    dec.set_max_in_capsule(u32::from(limits) * 32);

    while !stream.is_empty() {
        // The header-only path must agree with the full decode.
        let header = dec.decode_header(stream);
        let (pdu, len) = match dec.decode(stream) {
            Ok(Decoded::Pdu { pdu, len }) | Ok(Decoded::BadDataDigest { pdu, len, .. }) => {
                let Ok(HeaderDecoded::Header(frame)) = header else {
                    panic!("decode accepted what decode_header did not: {header:?}");
                };
                assert_eq!(frame.header, pdu.header);
                assert_eq!(frame.len, len);
                (pdu, len)
            }
            Ok(Decoded::Incomplete { more }) => {
                assert!(more > 0);
                return;
            }
            Err(e) => {
                // decode fails only where decode_header does.
                assert_eq!(header, Err(e.clone()));
                // Every transport error yields a TermReq.
                if e.is_fatal() {
                    let from_host = role == Role::Host;
                    let t = PduEncoder::term_req_for(from_host, &e, stream).expect("fatal");
                    assert!(t.len() <= proto_nvme::MAX_TERM_PLEN);
                }
                return;
            }
        };
        assert!(len <= stream.len());
        check_reencode(
            &dec,
            &pdu,
            hdgst && cfg & 8 != 0,
            ddgst && cfg & 8 != 0,
            pda,
        );
        if !dec.is_established() && matches!(pdu.header, PduHeader::IcReq(_) | PduHeader::IcResp(_))
        {
            dec.establish(hdgst, ddgst);
        }
        stream = &stream[len..];
    }
});

fn check_reencode(dec: &PduDecoder, pdu: &Pdu<'_>, h: bool, d: bool, pda: u8) {
    let enc = PduEncoder::with(h, d, pda);
    let mut wire = Vec::new();
    match pdu.header {
        PduHeader::CapsuleCmd(sqe) => enc.capsule_cmd_pdu(&sqe, pdu.data, &mut wire),
        PduHeader::H2CData(hd) => enc.h2c_data_pdu(&hd, pdu.data, &mut wire),
        PduHeader::C2HData(hd) => enc.c2h_data_pdu(&hd, pdu.data, &mut wire),
        PduHeader::CapsuleResp(c) => wire.extend_from_slice(&enc.capsule_resp(&c)),
        PduHeader::R2T(r) => wire.extend_from_slice(&enc.r2t(&r)),
        PduHeader::IcReq(r) => wire.extend_from_slice(&r.encode()),
        PduHeader::IcResp(r) => wire.extend_from_slice(&r.encode()),
        PduHeader::H2CTermReq(t) | PduHeader::C2HTermReq(t) => {
            wire.extend_from_slice(&PduEncoder::term_req(
                matches!(pdu.header, PduHeader::H2CTermReq(_)),
                t.fes,
                t.fei,
                pdu.data,
            ))
        }
    }
    match dec.decode(&wire) {
        Ok(Decoded::Pdu { pdu: again, len }) => {
            assert_eq!(len, wire.len());
            assert_eq!(again, *pdu);
        }
        other => panic!("re-encoded PDU did not decode: {other:?}"),
    }
}
