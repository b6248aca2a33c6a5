//! The NBD protocol as the engine speaks it, checked byte by byte with the hand-written
//! client: negotiation options, structured replies, block status, every command, large
//! pipelined payloads and multi-connection consistency.

mod common;

use std::io::Write;

use common::Engine;
use common::nbd::{Client, assert_closed, option, read_n, start};
use proto_nbd::{self as nbd, ClientOption, Command, consts::*};

const M: u64 = 1 << 20;
const EINVAL: u32 = 22;

fn engine(size_mib: u64) -> Engine {
    let dev = format!("m=malloc:///m?size={size_mib}MiB");
    Engine::start(&["--device", &dev, "--export", "m", "--export", "ro=m,ro"])
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

#[test]
fn export_name_option_ends_negotiation() {
    let mut e = engine(16);
    for no_zeroes in [true, false] {
        let mut s = start(e.nbd_addr, no_zeroes);
        let mut out = Vec::new();
        ClientOption::ExportName("m".into())
            .encode(&mut out)
            .expect("encode");
        s.write_all(&out).expect("send");
        let reply = read_n(&mut s, if no_zeroes { 10 } else { 10 + 124 });
        assert_eq!(be_u64(&reply), 16 * M);
        let flags = u16::from_be_bytes([reply[8], reply[9]]);
        assert_ne!(flags & FLAG_HAS_FLAGS, 0);
        assert_eq!(flags & FLAG_READ_ONLY, 0);
        assert!(reply[10..].iter().all(|&b| b == 0));
        let mut c = Client {
            s,
            size: 16 * M,
            flags,
            cookie: 0,
        };
        assert_eq!(c.write(0, &[9u8; 512]), 0);
        assert_eq!(c.read(0, 512), vec![9u8; 512]);
        c.disconnect();
    }
    // An unknown name cannot be refused with an error reply: the server closes.
    let mut s = start(e.nbd_addr, true);
    let mut out = Vec::new();
    ClientOption::ExportName("nope".into())
        .encode(&mut out)
        .expect("encode");
    s.write_all(&out).expect("send");
    let rest = assert_closed(&mut s, "EXPORT_NAME of an unknown export");
    assert!(rest.is_empty(), "{rest:?}");
    e.assert_healthy();
}

#[test]
fn list_info_meta_context_and_abort() {
    let mut e = engine(16);
    let mut s = start(e.nbd_addr, true);

    let r = option(&mut s, &ClientOption::List);
    let names: Vec<String> = r
        .iter()
        .filter(|(h, _)| h.reply_type == REP_SERVER)
        .map(|(_, d)| {
            let n = be_u32(d) as usize;
            String::from_utf8(d[4..4 + n].to_vec()).expect("utf-8 name")
        })
        .collect();
    assert_eq!(names, ["m", "ro"]);
    assert_eq!(r.last().expect("replies").0.reply_type, REP_ACK);

    let r = option(
        &mut s,
        &ClientOption::Info {
            export: "ro".into(),
            info_requests: vec![INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE],
        },
    );
    let info = |kind: u16| {
        r.iter()
            .find(|(h, d)| h.reply_type == REP_INFO && d[..2] == kind.to_be_bytes())
            .map(|(_, d)| d[2..].to_vec())
            .unwrap_or_else(|| panic!("no NBD_INFO {kind} in {r:?}"))
    };
    let export = info(INFO_EXPORT);
    assert_eq!(be_u64(&export), 16 * M);
    let flags = u16::from_be_bytes([export[8], export[9]]);
    assert_ne!(flags & FLAG_READ_ONLY, 0, "ro export without READ_ONLY");
    assert_eq!(flags & FLAG_SEND_TRIM, 0, "read-only export offers TRIM");
    assert_eq!(info(INFO_NAME), b"ro");
    assert!(!info(INFO_DESCRIPTION).is_empty());
    let bs = info(INFO_BLOCK_SIZE);
    assert_eq!(
        (be_u32(&bs), be_u32(&bs[8..])),
        (512, 32 << 20),
        "min and max block size"
    );
    assert!(be_u32(&bs[4..]).is_power_of_two() && be_u32(&bs[4..]) >= 512);
    assert_eq!(r.last().expect("replies").0.reply_type, REP_ACK);

    let r = option(
        &mut s,
        &ClientOption::Info {
            export: "nope".into(),
            info_requests: vec![],
        },
    );
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0.reply_type, REP_ERR_UNKNOWN);

    // Listing contexts works before structured replies; setting them does not.
    let r = option(
        &mut s,
        &ClientOption::ListMetaContext {
            export: "m".into(),
            queries: vec![],
        },
    );
    assert_eq!(r[0].0.reply_type, REP_META_CONTEXT, "{r:?}");
    assert_eq!(&r[0].1[4..], BASE_ALLOCATION.as_bytes());
    let r = option(
        &mut s,
        &ClientOption::SetMetaContext {
            export: "m".into(),
            queries: vec![BASE_ALLOCATION.into()],
        },
    );
    assert_eq!(r[0].0.reply_type, REP_ERR_INVALID, "{r:?}");
    let r = option(&mut s, &ClientOption::StartTls);
    assert!(r[0].0.is_error(), "STARTTLS without TLS: {r:?}");
    let r = option(&mut s, &ClientOption::ExtendedHeaders);
    assert_eq!(r[0].0.reply_type, REP_ERR_UNSUP, "{r:?}");

    let r = option(&mut s, &ClientOption::Abort);
    assert_eq!(r[0].0.reply_type, REP_ACK);
    assert_closed(&mut s, "after NBD_OPT_ABORT");
    e.assert_healthy();
}

#[test]
fn endless_negotiation_is_cut_off() {
    let mut e = engine(16);
    let mut s = start(e.nbd_addr, true);
    let mut one = Vec::new();
    ClientOption::List.encode(&mut one).expect("encode");
    let mut replies = 0usize;
    let mut closed = false;
    for _ in 0..10_000 {
        if s.write_all(&one).is_err() {
            closed = true;
            break;
        }
        let mut h = [0u8; nbd::OPTION_REPLY_HEADER_LEN];
        let mut got_ack = false;
        // Each LIST is answered with REP_SERVER per export and an ACK.
        for _ in 0..3 {
            if std::io::Read::read_exact(&mut s, &mut h).is_err() {
                closed = true;
                break;
            }
            let h = nbd::OptionReplyHeader::parse(&h).expect("reply");
            let _ = read_n(&mut s, h.length as usize);
            if h.reply_type == REP_ACK {
                got_ack = true;
                break;
            }
        }
        if closed {
            break;
        }
        assert!(got_ack);
        replies += 1;
    }
    assert!(
        closed,
        "server answered {replies} options without ending the handshake"
    );
    e.assert_healthy();
}

#[test]
fn structured_replies_and_block_status() {
    let mut e = engine(16);
    let mut c = Client::go_structured(e.nbd_addr, "m", true);
    assert_ne!(c.flags & FLAG_SEND_DF, 0);
    let data: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 256) as u8).collect();
    assert_eq!(c.write(M, &data), 0);

    // A read comes back as data chunks covering the range exactly.
    let ck = c.send(0, Command::Read, M - 4096, 65536 + 8192);
    let mut got = vec![0xffu8; 65536 + 8192];
    for (h, d) in c.chunks(ck) {
        match h.reply_type {
            REPLY_TYPE_OFFSET_DATA => {
                let at = (be_u64(&d) - (M - 4096)) as usize;
                got[at..at + d.len() - 8].copy_from_slice(&d[8..]);
            }
            REPLY_TYPE_OFFSET_HOLE => {
                let at = (be_u64(&d) - (M - 4096)) as usize;
                got[at..at + be_u32(&d[8..]) as usize].fill(0);
            }
            REPLY_TYPE_NONE => {}
            t => panic!("unexpected chunk type {t} in a read reply"),
        }
    }
    assert_eq!(&got[..4096], &[0u8; 4096][..]);
    assert_eq!(&got[4096..4096 + 65536], &data[..]);
    assert_eq!(&got[4096 + 65536..], &[0u8; 4096][..]);

    // A DF read is one chunk.
    let ck = c.send(CMD_FLAG_DF, Command::Read, M, 65536);
    let chunks = c.chunks(ck);
    assert_eq!(chunks.len(), 1, "DF read in several chunks");
    assert_eq!(chunks[0].0.reply_type, REPLY_TYPE_OFFSET_DATA);
    assert_eq!(&chunks[0].1[8..], &data[..]);

    // Errors on reads are error chunks.
    let ck = c.send(0, Command::Read, 16 * M, 512);
    let chunks = c.chunks(ck);
    assert!(chunks[0].0.is_error(), "{chunks:?}");
    assert_eq!(be_u32(&chunks[0].1), EINVAL);
    // Other commands still get simple replies.
    assert_eq!(c.simple(Command::Flush, 0, 0), 0);

    // Block status: hole, data, hole; each extent is (length, flags).
    let ck = c.send(0, Command::BlockStatus, 0, (4 * M) as u32);
    let chunks = c.chunks(ck);
    let (h, d) = &chunks[0];
    assert_eq!(h.reply_type, REPLY_TYPE_BLOCK_STATUS);
    assert_eq!(be_u32(d), 1, "context id of base:allocation");
    let ext: Vec<(u32, u32)> = d[4..]
        .chunks(8)
        .map(|x| (be_u32(x), be_u32(&x[4..])))
        .collect();
    let hz = STATE_HOLE | STATE_ZERO;
    assert_eq!(
        ext,
        [(M as u32, hz), (65536, 0), ((3 * M - 65536) as u32, hz)]
    );
    // REQ_ONE: a single extent, not beyond the request.
    let ck = c.send(CMD_FLAG_REQ_ONE, Command::BlockStatus, M, (2 * M) as u32);
    let chunks = c.chunks(ck);
    assert_eq!(&chunks[0].1[4..], &[0, 1, 0, 0, 0, 0, 0, 0][..]);
    // Past the end: EINVAL (as a simple reply or an error chunk: both are allowed).
    let ck = c.send(0, Command::BlockStatus, 16 * M, 512);
    assert_eq!(c.any_reply(ck), EINVAL);
    let ck = c.send(0, Command::Unknown(0x55), 0, 512);
    assert_eq!(c.any_reply(ck), EINVAL);
    // The connection is still in step.
    let ck = c.send(CMD_FLAG_DF, Command::Read, M, 512);
    assert_eq!(&c.chunks(ck)[0].1[8..], &data[..512]);
    c.disconnect();

    // Without a negotiated context BLOCK_STATUS is refused, and without structured replies
    // so is DF.
    let mut c = Client::go(e.nbd_addr, "m");
    assert_eq!(c.simple(Command::BlockStatus, 0, 512), EINVAL);
    let ck = c.send(CMD_FLAG_DF, Command::Read, 0, 512);
    assert_eq!(c.reply(ck), EINVAL);
    c.disconnect();
    e.assert_healthy();
}

#[test]
fn every_command_with_its_flags() {
    let mut e = engine(16);
    let mut c = Client::go(e.nbd_addr, "m");
    let f = c.flags;
    for (flag, name) in [
        (FLAG_SEND_FLUSH, "FLUSH"),
        (FLAG_SEND_FUA, "FUA"),
        (FLAG_SEND_TRIM, "TRIM"),
        (FLAG_SEND_WRITE_ZEROES, "WRITE_ZEROES"),
        (FLAG_SEND_FAST_ZERO, "FAST_ZERO"),
        (FLAG_SEND_CACHE, "CACHE"),
        (FLAG_CAN_MULTI_CONN, "CAN_MULTI_CONN"),
    ] {
        assert_ne!(f & flag, 0, "transmission flags {f:#x} lack {name}");
    }
    let ones = vec![1u8; 128 * 1024];
    // FUA write.
    let ck = c.send(CMD_FLAG_FUA, Command::Write, 0, ones.len() as u32);
    c.send_payload(&ones);
    assert_eq!(c.reply(ck), 0);
    assert_eq!(c.read(0, 4096), vec![1u8; 4096]);
    // Trim reads back as zeroes on a RAM device.
    assert_eq!(c.simple(Command::Trim, 0, 65536), 0);
    assert_eq!(c.read(0, 65536), vec![0u8; 65536]);
    assert_eq!(c.read(65536, 4096), vec![1u8; 4096]);
    // Write zeroes, with NO_HOLE, FAST_ZERO and FUA.
    for flags in [
        0,
        CMD_FLAG_NO_HOLE,
        CMD_FLAG_FAST_ZERO,
        CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
    ] {
        assert_eq!(c.write(65536, &[2u8; 4096]), 0);
        let ck = c.send(flags, Command::WriteZeroes, 65536, 4096);
        assert_eq!(c.reply(ck), 0, "WRITE_ZEROES flags {flags:#x}");
        assert_eq!(c.read(65536, 8192)[..4096], [0u8; 4096]);
    }
    assert_eq!(c.read(65536 + 4096, 4096), vec![1u8; 4096]);
    // Cache and flush.
    assert_eq!(c.simple(Command::Cache, 0, 65536), 0);
    assert_eq!(c.simple(Command::Flush, 0, 0), 0);
    // Flags a command does not take are refused.
    let ck = c.send(CMD_FLAG_NO_HOLE, Command::Read, 0, 512);
    assert_eq!(c.reply(ck), EINVAL);
    // A zero-length read has no meaning here: refused, connection kept.
    assert_eq!(c.simple(Command::Read, 0, 0), EINVAL);
    assert_eq!(c.read(65536 + 4096, 512), vec![1u8; 512]);
    c.disconnect();
    e.assert_healthy();
}

/// Three 32 MiB writes sent back to back exceed the per-connection in-flight budget
/// (64 MiB): the server must apply back-pressure, not deadlock or drop data.
#[test]
fn pipelined_maximum_size_writes() {
    let mut e = engine(96);
    let mut c = Client::go(e.nbd_addr, "m");
    let len = 32u32 << 20;
    let bufs: Vec<Vec<u8>> = (0..3u8)
        .map(|i| {
            let mut v = vec![0u8; len as usize];
            common::Rng::new(u64::from(i) + 1).fill(&mut v);
            v
        })
        .collect();
    let mut cookies = Vec::new();
    // Send from a second thread so neither side blocks the other on full socket buffers.
    let mut w = c.s.try_clone().expect("clone socket");
    let to_send: Vec<Vec<u8>> = (0..3u64)
        .map(|i| {
            let mut msg = nbd::Request {
                flags: 0,
                command: Command::Write,
                cookie: 100 + i,
                offset: i * u64::from(len),
                length: len,
            }
            .encode()
            .to_vec();
            msg.extend_from_slice(&bufs[i as usize]);
            cookies.push(100 + i);
            msg
        })
        .collect();
    let sender = std::thread::spawn(move || {
        for m in to_send {
            w.write_all(&m).expect("send write");
        }
    });
    let mut answered: Vec<u64> = Vec::new();
    for _ in 0..3 {
        let r = nbd::SimpleReply::parse(&read_n(&mut c.s, nbd::SIMPLE_REPLY_LEN)).expect("reply");
        assert_eq!(r.error, 0, "write {} failed", r.cookie);
        answered.push(r.cookie);
    }
    sender.join().expect("sender");
    answered.sort_unstable();
    assert_eq!(answered, cookies);
    c.cookie = 200;
    assert_eq!(c.simple(Command::Flush, 0, 0), 0);
    for (i, b) in bufs.iter().enumerate() {
        let got = c.read(i as u64 * u64::from(len), len);
        assert!(got == *b, "32 MiB block {i} read back differently");
    }
    c.disconnect();
    e.assert_healthy();
}

#[test]
fn writes_on_one_connection_are_seen_on_another() {
    let mut e = engine(16);
    let mut a = Client::go(e.nbd_addr, "m");
    let mut b = Client::go(e.nbd_addr, "m");
    let ro = Client::go(e.nbd_addr, "ro");
    for i in 0..32u64 {
        let block = vec![i as u8 + 1; 4096];
        assert_eq!(a.write(i * 8192, &block), 0);
        assert_eq!(a.simple(Command::Flush, 0, 0), 0);
        assert_eq!(b.read(i * 8192, 4096), block);
        assert_eq!(b.write(i * 8192 + 4096, &block), 0);
        assert_eq!(a.read(i * 8192 + 4096, 4096), block);
    }
    let mut ro = ro;
    assert_eq!(ro.read(31 * 8192, 4096), vec![32u8; 4096]);
    for c in [a, b, ro] {
        c.disconnect();
    }
    e.assert_healthy();
}
