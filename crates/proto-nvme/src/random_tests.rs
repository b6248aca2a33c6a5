//! Hand-rolled randomized tests: a small deterministic PRNG drives round
//! trips, streams of PDUs fed in random pieces, and "parse arbitrary bytes"
//! runs. Failures reproduce because the seeds are fixed.

use crate::*;

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    fn u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn u16(&mut self) -> u16 {
        (self.next_u64() >> 48) as u16
    }

    fn u8(&mut self) -> u8 {
        (self.next_u64() >> 56) as u8
    }

    fn bool(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }

    fn bytes(&mut self, max_len: u64) -> Vec<u8> {
        let len = self.below(max_len + 1) as usize;
        (0..len).map(|_| self.u8()).collect()
    }

    fn fill(&mut self, b: &mut [u8]) {
        for x in b {
            *x = self.u8();
        }
    }
}

/// Feeds `b` to every parser; only panics matter.
fn parse_everything(b: &[u8]) {
    for role in [Role::Controller, Role::Host] {
        let mut d = PduDecoder::new(role);
        let _ = d.decode(b);
        let _ = d.decode_header(b);
        d.establish(true, true);
        d.set_pda(3);
        let _ = d.decode(b);
        d.establish(false, false);
        let _ = d.decode(b);
    }
    if let Ok(sqe) = Sqe::parse(b) {
        let _ = Command::parse(&sqe, QueueType::Admin);
        let _ = Command::parse(&sqe, QueueType::Io);
        let _ = sqe.data_pointer().map(|dp| dp.in_capsule_slice(b));
    }
    let _ = Cqe::parse(b);
    let _ = CommonHeader::parse(b);
    let _ = ConnectData::parse(b);
    let _ = IdentifyController::parse(b);
    let _ = IdentifyNamespace::parse(b);
    let _ = NsIdDescriptor::parse_list(b);
    let _ = parse_nsid_list(b);
    let _ = ErrorLogEntry::parse(b);
    let _ = SmartLog::parse(b);
    let _ = AnaLog::parse(b);
    let _ = DiscoveryLog::parse(b);
    let _ = ReservationStatus::parse(b, true);
    let _ = ReservationStatus::parse(b, false);
    let _ = ReservationKeys::parse(b);
    let _ = DsmRange::parse_list(b, 3).map(Iterator::count);
    if let Ok(s) = std::str::from_utf8(b) {
        let _ = validate_nqn(s);
        let _ = s.parse::<HostId>();
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(1);
    for _ in 0..20_000 {
        let b = rng.bytes(300);
        parse_everything(&b);
    }
    // Bytes with a plausible common header, so the decoder gets past the
    // first checks more often.
    for _ in 0..50_000 {
        let mut b = rng.bytes(200);
        if b.len() >= 8 {
            b[0] = [0, 1, 2, 3, 4, 5, 6, 7, 9][rng.below(9) as usize];
            b[2] = [24u8, 72, 128][rng.below(3) as usize];
            let plen = rng.below(b.len() as u64 + 8) as u32;
            b[4..8].copy_from_slice(&plen.to_le_bytes());
            if rng.bool() {
                b[3] = (rng.below(40) * 4) as u8;
            }
        }
        parse_everything(&b);
    }
    let mut big = vec![0u8; 4096];
    for _ in 0..300 {
        rng.fill(&mut big);
        parse_everything(&big);
    }
}

fn random_sqe(rng: &mut Rng) -> Sqe {
    let mut b = [0u8; 64];
    rng.fill(&mut b);
    Sqe::parse(&b).unwrap()
}

fn random_pdu_bytes(rng: &mut Rng, enc: &PduEncoder, from_host: bool, out: &mut Vec<u8>) {
    let data = rng.bytes(300);
    let nonempty = if data.is_empty() {
        vec![1u8]
    } else {
        data.clone()
    };
    if from_host {
        match rng.below(2) {
            0 => enc.capsule_cmd_pdu(&random_sqe(rng), &data, out),
            _ => enc.h2c_data_pdu(
                &H2CData {
                    cccid: rng.u16(),
                    ttag: rng.u16(),
                    datao: rng.u32(),
                    datal: 0,
                    last: rng.bool(),
                },
                &nonempty,
                out,
            ),
        }
    } else {
        match rng.below(3) {
            0 => {
                let mut c = [0u8; 16];
                rng.fill(&mut c);
                out.extend_from_slice(&enc.capsule_resp(&Cqe::parse(&c).unwrap()));
            }
            1 => out.extend_from_slice(&enc.r2t(&R2T {
                cccid: rng.u16(),
                ttag: rng.u16(),
                r2to: rng.u32(),
                r2tl: rng.u32().max(1),
            })),
            _ => {
                let last = rng.bool();
                enc.c2h_data_pdu(
                    &C2HData {
                        cccid: rng.u16(),
                        datao: rng.u32(),
                        datal: 0,
                        last,
                        success: last && rng.bool(),
                    },
                    &nonempty,
                    out,
                );
            }
        }
    }
}

/// Random valid PDU streams, cut into random pieces, decode to exactly
/// the PDUs that were encoded, whatever the digests and alignment.
#[test]
fn streams_decode_in_any_pieces() {
    let mut rng = Rng(2);
    for _ in 0..400 {
        let (h, d, pda) = (rng.bool(), rng.bool(), rng.below(8) as u8);
        let from_host = rng.bool();
        let enc = PduEncoder::with(h, d, pda);
        let mut dec = PduDecoder::new(if from_host {
            Role::Controller
        } else {
            Role::Host
        });
        dec.establish(h, d);
        dec.set_pda(pda);
        let mut stream = Vec::new();
        let mut lens = Vec::new();
        for _ in 0..rng.below(8) + 1 {
            let before = stream.len();
            random_pdu_bytes(&mut rng, &enc, from_host, &mut stream);
            lens.push(stream.len() - before);
        }
        // Deliver in random pieces, decoding whenever bytes arrive.
        let mut buf: Vec<u8> = Vec::new();
        let mut fed = 0;
        let mut got = Vec::new();
        while fed < stream.len() || !buf.is_empty() {
            if fed < stream.len() {
                let n = (rng.below(97) as usize + 1).min(stream.len() - fed);
                buf.extend_from_slice(&stream[fed..fed + n]);
                fed += n;
            }
            while !buf.is_empty() {
                match dec.decode(&buf).expect("valid stream") {
                    Decoded::Incomplete { more } => {
                        assert!(more > 0);
                        assert!(fed < stream.len(), "stream ended mid-PDU");
                        break;
                    }
                    Decoded::Pdu { len, pdu } => {
                        // The decoded PDU re-encodes to the same bytes.
                        let mut again = Vec::new();
                        match pdu.header {
                            PduHeader::CapsuleCmd(sqe) => {
                                enc.capsule_cmd_pdu(&sqe, pdu.data, &mut again);
                            }
                            PduHeader::H2CData(hd) => enc.h2c_data_pdu(&hd, pdu.data, &mut again),
                            PduHeader::C2HData(hd) => enc.c2h_data_pdu(&hd, pdu.data, &mut again),
                            PduHeader::CapsuleResp(c) => {
                                again.extend_from_slice(&enc.capsule_resp(&c));
                            }
                            PduHeader::R2T(r) => again.extend_from_slice(&enc.r2t(&r)),
                            other => panic!("unexpected {other:?}"),
                        }
                        assert_eq!(&again[..], &buf[..len]);
                        got.push(len);
                        buf.drain(..len);
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(got, lens);
    }
}

/// Flipping any single byte of a digest-protected PDU is caught: either a
/// transport error or a data digest mismatch, never a silently different
/// PDU.
#[test]
fn single_byte_corruption_is_detected_with_digests() {
    let mut rng = Rng(3);
    for _ in 0..200 {
        let enc = PduEncoder::with(true, true, 0);
        let mut dec = PduDecoder::new(Role::Host);
        dec.establish(true, true);
        let mut pdu = Vec::new();
        random_pdu_bytes(&mut rng, &enc, false, &mut pdu);
        let Decoded::Pdu { pdu: orig, .. } = dec.decode(&pdu).unwrap() else {
            panic!()
        };
        let orig_header = orig.header;
        let orig_data = orig.data.to_vec();
        let at = rng.below(pdu.len() as u64) as usize;
        let mut bad = pdu.clone();
        bad[at] ^= 1 << rng.below(8);
        match dec.decode(&bad) {
            Err(e) => assert!(e.is_fatal()),
            Ok(Decoded::BadDataDigest { .. } | Decoded::Incomplete { .. }) => {}
            Ok(Decoded::Pdu { pdu: p, .. }) => {
                // Only the (unprotected) padding may change unnoticed; at
                // PDA 0 there is none, so the PDU must be identical.
                assert_eq!(p.header, orig_header, "flip at {at}");
                assert_eq!(p.data, &orig_data[..], "flip at {at}");
            }
        }
    }
}

#[test]
fn commands_round_trip_through_sqes() {
    let mut rng = Rng(4);
    let mut parsed = 0;
    for _ in 0..50_000 {
        let mut sqe = random_sqe(&mut rng);
        sqe.opcode = match rng.below(3) {
            0 => FABRICS_OPCODE,
            _ => rng.below(0x20) as u8,
        };
        if sqe.opcode == FABRICS_OPCODE {
            sqe.nsid = [0u32, 1, 4, 5, 6, 8][rng.below(6) as usize];
            sqe.cdw10 &= !0xfe; // property size 0 or 1 mostly
        }
        let queue = if rng.bool() {
            QueueType::Admin
        } else {
            QueueType::Io
        };
        let Ok(cmd) = Command::parse(&sqe, queue) else {
            continue;
        };
        parsed += 1;
        // Re-encoding and parsing again gives the same command.
        let again = cmd.to_sqe(sqe.cid, sqe.nsid, sqe.dptr);
        assert_eq!(Command::parse(&again, queue), Ok(cmd), "{sqe:?}");
        assert_eq!(again.cid, sqe.cid);
    }
    assert!(parsed > 10_000);
}

#[test]
fn structures_round_trip() {
    let mut rng = Rng(5);
    for _ in 0..500 {
        let cqe = Cqe {
            dw0: rng.u32(),
            dw1: rng.u32(),
            sqhd: rng.u16(),
            sqid: rng.u16(),
            cid: rng.u16(),
            status: Status::from_field(rng.u16() & !1),
        };
        assert_eq!(Cqe::parse(&cqe.encode()).unwrap(), cqe);

        let cap = Cap::from_u64(rng.next_u64());
        assert_eq!(Cap::from_u64(cap.to_u64()), cap);
        let cc = Cc::from_u32(rng.u32());
        assert_eq!(Cc::from_u32(cc.to_u32()), cc);
        let csts = Csts::from_u32(rng.u32());
        assert_eq!(Csts::from_u32(csts.to_u32()), csts);
        let ev = AsyncEvent::from_dw0(rng.u32());
        assert_eq!(AsyncEvent::from_dw0(ev.to_dw0()), ev);

        let log = AnaLog {
            chgcnt: rng.next_u64(),
            groups: (0..rng.below(5))
                .map(|i| AnaGroup {
                    grpid: i as u32 + 1,
                    chgcnt: rng.next_u64(),
                    state: [
                        AnaState::Optimized,
                        AnaState::NonOptimized,
                        AnaState::Inaccessible,
                        AnaState::PersistentLoss,
                        AnaState::Change,
                    ][rng.below(5) as usize],
                    nsids: (0..rng.below(6)).map(|_| rng.u32()).collect(),
                })
                .collect(),
        };
        assert_eq!(AnaLog::parse(&log.encode(false)).unwrap(), log);

        let st = ReservationStatus {
            generation: rng.u32(),
            rtype: rng.u8(),
            ptpls: rng.bool(),
            registrants: (0..rng.below(4))
                .map(|_| {
                    let mut hostid = [0u8; 16];
                    rng.fill(&mut hostid);
                    Registrant {
                        cntlid: rng.u16(),
                        rcsts: rng.u8(),
                        hostid,
                        rkey: rng.next_u64(),
                    }
                })
                .collect(),
        };
        assert_eq!(
            ReservationStatus::parse(&st.encode(true), true).unwrap(),
            st
        );

        let mut e = [0u8; 64];
        rng.fill(&mut e);
        let entry = ErrorLogEntry::parse(&e).unwrap();
        assert_eq!(ErrorLogEntry::parse(&entry.encode()).unwrap(), entry);
        let mut s = [0u8; 512];
        rng.fill(&mut s);
        let smart = SmartLog::parse(&s).unwrap();
        assert_eq!(SmartLog::parse(&smart.encode()).unwrap(), smart);
    }
}
