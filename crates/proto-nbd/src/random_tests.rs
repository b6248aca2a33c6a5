//! Hand-rolled randomized tests: a tiny deterministic PRNG drives thousands
//! of round trips and "parse arbitrary bytes" runs. Failures are
//! reproducible because the seeds are fixed.

use crate::consts::{
    IHAVEOPT, INFO_BLOCK_SIZE, INFO_EXPORT, OPTION_REPLY_MAGIC, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC,
    STRUCTURED_REPLY_MAGIC,
};
use crate::{
    ChunkHeader, ClientOption, Command, OPTION_HEADER_LEN, OptionHeader, OptionReplyHeader,
    Request, SimpleReply, chunk_header, parse_client_flags, parse_option, parse_server_greeting,
    simple_reply,
};

/// SplitMix64: small, fast, and good enough to scatter test inputs.
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

    fn bool(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }

    fn bytes(&mut self, max_len: u64) -> Vec<u8> {
        let len = self.below(max_len + 1) as usize;
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    /// A valid protocol string: short, mixed ASCII and multi-byte
    /// characters, never NUL.
    fn string(&mut self, max_chars: u64) -> String {
        const POOL: &[char] = &['a', 'z', '0', ':', '-', '/', ' ', 'é', 'ß', '€', '𝄞'];
        let n = self.below(max_chars + 1);
        (0..n)
            .map(|_| POOL[self.below(POOL.len() as u64) as usize])
            .collect()
    }

    /// Occasionally an interesting boundary value instead of a random one.
    fn edgy_u32(&mut self) -> u32 {
        match self.below(6) {
            0 => 0,
            1 => u32::MAX,
            2 => self.below(16) as u32,
            _ => self.u32(),
        }
    }
}

fn random_option(rng: &mut Rng) -> ClientOption {
    let infos = |rng: &mut Rng| -> Vec<u16> {
        let n = rng.below(6);
        (0..n)
            .map(|_| match rng.below(3) {
                0 => INFO_EXPORT,
                1 => INFO_BLOCK_SIZE,
                _ => rng.u16(),
            })
            .collect()
    };
    let queries = |rng: &mut Rng| -> Vec<String> {
        let n = rng.below(5);
        (0..n).map(|_| rng.string(20)).collect()
    };
    match rng.below(11) {
        0 => ClientOption::ExportName(rng.string(30)),
        1 => ClientOption::Abort,
        2 => ClientOption::List,
        3 => ClientOption::StartTls,
        4 => ClientOption::Info {
            export: rng.string(30),
            info_requests: infos(rng),
        },
        5 => ClientOption::Go {
            export: rng.string(30),
            info_requests: infos(rng),
        },
        6 => ClientOption::StructuredReply,
        7 => ClientOption::ListMetaContext {
            export: rng.string(30),
            queries: queries(rng),
        },
        8 => ClientOption::SetMetaContext {
            export: rng.string(30),
            queries: queries(rng),
        },
        9 => ClientOption::ExtendedHeaders,
        // Codes 12 and above are unassigned.
        _ => ClientOption::Unknown(12 + rng.below(1000) as u32),
    }
}

/// Feeds `b` to every parser in the crate; only panics matter here.
fn parse_everything(b: &[u8]) {
    let _ = parse_server_greeting(b);
    let _ = parse_client_flags(b);
    let _ = OptionHeader::parse(b);
    let _ = OptionHeader::parse_unbounded(b);
    let _ = OptionReplyHeader::parse(b);
    let _ = Request::parse(b);
    let _ = SimpleReply::parse(b);
    let _ = ChunkHeader::parse(b);
    for code in 0..=12 {
        let _ = parse_option(code, b);
    }
}

#[test]
fn parsers_never_panic_on_random_bytes() {
    let mut rng = Rng(0x5eed_0001);
    let prefixes: [&[u8]; 6] = [
        &IHAVEOPT.to_be_bytes(),
        &OPTION_REPLY_MAGIC.to_be_bytes(),
        &REQUEST_MAGIC.to_be_bytes(),
        &SIMPLE_REPLY_MAGIC.to_be_bytes(),
        &STRUCTURED_REPLY_MAGIC.to_be_bytes(),
        b"NBDMAGICIHAVEOPT",
    ];
    for _ in 0..20_000 {
        let mut b = Vec::new();
        // Half the time start with a real magic so parsing gets past it.
        if rng.bool() {
            b.extend_from_slice(prefixes[rng.below(prefixes.len() as u64) as usize]);
        }
        let max = if rng.below(10) == 0 { 300 } else { 40 };
        b.extend_from_slice(&rng.bytes(max));
        parse_everything(&b);
    }
}

/// Option data shaped like the nested layouts (name, count, items) but with
/// length and count fields that are only sometimes right.
fn plausible_payload(rng: &mut Rng) -> Vec<u8> {
    let mut p = Vec::new();
    let put_str = |rng: &mut Rng, p: &mut Vec<u8>| {
        let s = rng.string(8);
        let len = if rng.below(5) == 0 {
            rng.edgy_u32()
        } else {
            s.len() as u32
        };
        p.extend_from_slice(&len.to_be_bytes());
        p.extend_from_slice(s.as_bytes());
    };
    put_str(rng, &mut p);
    let n = rng.below(4);
    if rng.bool() {
        // NBD_OPT_INFO / NBD_OPT_GO shape.
        let count = if rng.below(5) == 0 { rng.below(8) } else { n };
        p.extend_from_slice(&(count as u16).to_be_bytes());
        for _ in 0..n {
            p.extend_from_slice(&rng.u16().to_be_bytes());
        }
    } else {
        // Meta context shape.
        let count = if rng.below(5) == 0 {
            rng.edgy_u32()
        } else {
            n as u32
        };
        p.extend_from_slice(&count.to_be_bytes());
        for _ in 0..n {
            put_str(rng, &mut p);
        }
    }
    if rng.below(5) == 0 {
        p.extend_from_slice(&rng.bytes(3));
    }
    if rng.below(5) == 0 {
        let keep = rng.below(p.len() as u64 + 1) as usize;
        p.truncate(keep);
    }
    p
}

#[test]
fn option_parser_survives_plausible_garbage() {
    // Structured-looking payloads reach the nested length checks far more
    // often than uniform noise does.
    let mut rng = Rng(0x5eed_0002);
    let mut nested_accepted = 0;
    for _ in 0..20_000 {
        let p = plausible_payload(&mut rng);
        let code = match rng.below(3) {
            0 => rng.below(13) as u32,
            1 => [6, 7][rng.below(2) as usize],
            _ => [9, 10][rng.below(2) as usize],
        };
        if let Ok(opt) = parse_option(code, &p) {
            if matches!(
                opt,
                ClientOption::Info { .. }
                    | ClientOption::Go { .. }
                    | ClientOption::ListMetaContext { .. }
                    | ClientOption::SetMetaContext { .. }
            ) {
                nested_accepted += 1;
            }
            // Anything accepted must re-encode to a message that parses back
            // to the same value.
            let mut wire = Vec::new();
            opt.encode(&mut wire).expect("accepted option re-encodes");
            let h = OptionHeader::parse(&wire).unwrap();
            assert_eq!(
                parse_option(h.option, &wire[OPTION_HEADER_LEN..]).unwrap(),
                opt
            );
        }
    }
    // Make sure the generator actually reaches the successful nested paths.
    assert!(
        nested_accepted > 1000,
        "only {nested_accepted} nested options parsed"
    );
}

#[test]
fn mutated_valid_options_never_panic() {
    let mut rng = Rng(0x5eed_0003);
    for _ in 0..10_000 {
        let mut wire = Vec::new();
        random_option(&mut rng).encode(&mut wire).unwrap();
        match rng.below(3) {
            0 => {
                // Flip a few bytes anywhere (including length fields).
                for _ in 0..=rng.below(3) {
                    let i = rng.below(wire.len() as u64) as usize;
                    wire[i] ^= 1 << rng.below(8);
                }
            }
            1 => {
                let keep = rng.below(wire.len() as u64 + 1) as usize;
                wire.truncate(keep);
            }
            _ => wire.extend_from_slice(&rng.bytes(8)),
        }
        parse_everything(&wire);
        if let Ok(h) = OptionHeader::parse(&wire) {
            let _ = parse_option(h.option, wire.get(OPTION_HEADER_LEN..).unwrap_or(&[]));
        }
    }
}

#[test]
fn options_round_trip() {
    let mut rng = Rng(0x5eed_0004);
    for _ in 0..10_000 {
        let opt = random_option(&mut rng);
        let mut wire = Vec::new();
        opt.encode(&mut wire).unwrap();
        let h = OptionHeader::parse(&wire).unwrap();
        assert_eq!(h.option, opt.code());
        assert_eq!(h.length as usize, wire.len() - OPTION_HEADER_LEN);
        let back = parse_option(h.option, &wire[OPTION_HEADER_LEN..]).unwrap();
        assert_eq!(back, opt);
    }
}

#[test]
fn requests_round_trip() {
    let mut rng = Rng(0x5eed_0005);
    for _ in 0..10_000 {
        let r = Request {
            flags: rng.u16(),
            command: Command::from_wire(rng.below(12) as u16),
            cookie: rng.next_u64(),
            offset: rng.next_u64(),
            length: rng.edgy_u32(),
        };
        let wire = r.encode();
        assert_eq!(Request::parse(&wire), Ok(r));
        // Any strict prefix is reported as truncated, never misparsed.
        let cut = rng.below(wire.len() as u64) as usize;
        assert!(Request::parse(&wire[..cut]).is_err());
    }
}

#[test]
fn replies_round_trip() {
    let mut rng = Rng(0x5eed_0006);
    for _ in 0..10_000 {
        let (error, cookie) = (rng.edgy_u32(), rng.next_u64());
        assert_eq!(
            SimpleReply::parse(&simple_reply(error, cookie)),
            Ok(SimpleReply { error, cookie })
        );
        let h = ChunkHeader {
            flags: rng.u16(),
            reply_type: rng.u16(),
            cookie: rng.next_u64(),
            length: rng.edgy_u32(),
        };
        let wire = chunk_header(h.flags, h.reply_type, h.cookie, h.length);
        assert_eq!(ChunkHeader::parse(&wire), Ok(h));
    }
}

#[test]
fn client_flags_accept_exactly_the_known_bits() {
    let mut rng = Rng(0x5eed_0007);
    for _ in 0..10_000 {
        let raw = if rng.bool() {
            rng.u32()
        } else {
            rng.below(4) as u32
        };
        match parse_client_flags(&raw.to_be_bytes()) {
            Ok(f) => assert_eq!(f.bits(), raw),
            Err(crate::Error::UnknownFlags(bits)) => {
                assert_ne!(bits, 0);
                assert_eq!(bits, raw & !3);
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
}
