//! The NBD server in process: a reactor runtime serves RAM devices on 127.0.0.1 port 0, and
//! the test thread talks to it with exact bytes built by the `proto-nbd` encoders over a std
//! socket (the engine's raw test client, shared with its end-to-end tests). Negotiation,
//! every command, errors mapped to errnos, malformed input closing only its connection, and
//! the listener's limits — without the engine binary.

#[path = "../../engine/tests/common/nbd.rs"]
#[allow(dead_code)]
mod client;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::fault::{FaultDevice, Ops};
use blockdev::malloc::MallocDevice;
use blockdev::{Device, ErrorKind};
use client::{Client, assert_closed, connect, greeting, option, start};
use proto_nbd::{ClientFlags, ClientOption, Command, Request, consts::*};
use reactor::{Config, ListenerLimits, PollMode, Runtime};
use target_nbd::NbdServer;

const SIZE: u64 = 4 << 20;
const EPERM: u32 = 1;
const EIO: u32 = 5;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;
const EOVERFLOW: u32 = 75;

/// A server on a two-reactor runtime with exports `m` (RAM), `ro` (the same device,
/// read-only) and `bad` (a [`FaultDevice`] over RAM device).
struct Served {
    rt: Option<Runtime>,
    server: Arc<NbdServer>,
    addr: SocketAddr,
    bad: Arc<FaultDevice>,
}

impl Served {
    fn start(limits: ListenerLimits) -> Served {
        let rt = Runtime::start(Config {
            cores: 2,
            mode: PollMode::Interrupt,
            pin: false,
            registered_buffers: 8,
            ..Config::default()
        })
        .expect("start reactors");
        let server = NbdServer::with_limits(limits);
        let m: Device = Arc::new(MallocDevice::new("m", SIZE, 512));
        server.add_export("m", m.clone(), false).unwrap();
        server.add_export("ro", m, true).unwrap();
        let bad = FaultDevice::new(Arc::new(MallocDevice::new("bad", SIZE, 512)));
        server.add_export("bad", bad.clone(), false).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        server.serve(listener, rt.handles().to_vec());
        Served {
            rt: Some(rt),
            server,
            addr,
            bad,
        }
    }

    fn new() -> Served {
        Served::start(ListenerLimits::default())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.server.stop();
        if let Some(rt) = self.rt.take() {
            rt.shutdown();
        }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn option_haggling_lists_describes_refuses_and_goes() {
    let s = Served::new();
    let mut c = start(s.addr, true);
    // LIST: one SERVER reply per export, then ACK.
    let r = option(&mut c, &ClientOption::List);
    let names: Vec<String> = r
        .iter()
        .filter(|(h, _)| h.reply_type == REP_SERVER)
        .map(|(_, d)| String::from_utf8(d[4..].to_vec()).unwrap())
        .collect();
    assert_eq!(names, ["bad", "m", "ro"]);
    assert_eq!(r.last().unwrap().0.reply_type, REP_ACK);
    // INFO with NAME and DESCRIPTION: export info, name, description, block size, ACK.
    let r = option(
        &mut c,
        &ClientOption::Info {
            export: "ro".into(),
            info_requests: vec![INFO_NAME, INFO_DESCRIPTION],
        },
    );
    let infos: Vec<u16> = r
        .iter()
        .filter(|(h, _)| h.reply_type == REP_INFO)
        .map(|(_, d)| u16::from_be_bytes([d[0], d[1]]))
        .collect();
    assert_eq!(
        infos,
        [INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE]
    );
    let export = &r[0].1;
    assert_eq!(u64::from_be_bytes(export[2..10].try_into().unwrap()), SIZE);
    let flags = u16::from_be_bytes([export[10], export[11]]);
    assert_ne!(flags & FLAG_READ_ONLY, 0, "ro is read-only");
    // An unknown export, STARTTLS and SET_META_CONTEXT before STRUCTURED_REPLY are errors,
    // and the handshake goes on.
    let r = option(
        &mut c,
        &ClientOption::Go {
            export: "nope".into(),
            info_requests: vec![],
        },
    );
    assert_eq!(r.last().unwrap().0.reply_type, REP_ERR_UNKNOWN);
    let r = option(&mut c, &ClientOption::StartTls);
    assert_eq!(r.last().unwrap().0.reply_type, REP_ERR_UNSUP);
    let r = option(
        &mut c,
        &ClientOption::SetMetaContext {
            export: "m".into(),
            queries: vec!["base:allocation".into()],
        },
    );
    assert_eq!(r.last().unwrap().0.reply_type, REP_ERR_INVALID);
    // GO enters transmission.
    let mut out = Vec::new();
    ClientOption::Go {
        export: "m".into(),
        info_requests: vec![],
    }
    .encode(&mut out)
    .unwrap();
    c.write_all(&out).unwrap();
    let mut t = Client::finish_go(c);
    assert_eq!(t.size, SIZE);
    assert_eq!(t.read(0, 512), vec![0u8; 512]);
    t.disconnect();
}

#[test]
fn export_name_enters_transmission_and_an_unknown_name_closes() {
    let s = Served::new();
    let mut c = start(s.addr, false);
    let mut out = Vec::new();
    ClientOption::ExportName("m".into())
        .encode(&mut out)
        .unwrap();
    c.write_all(&out).unwrap();
    // Size, flags, and 124 zero bytes (the client did not ask for NO_ZEROES).
    let reply = client::read_n(&mut c, 8 + 2 + 124);
    assert_eq!(u64::from_be_bytes(reply[..8].try_into().unwrap()), SIZE);
    assert!(reply[10..].iter().all(|&b| b == 0));
    let mut c = start(s.addr, true);
    let mut out = Vec::new();
    ClientOption::ExportName("nope".into())
        .encode(&mut out)
        .unwrap();
    c.write_all(&out).unwrap();
    assert_closed(&mut c, "EXPORT_NAME of an unknown export");
}

#[test]
fn malformed_handshakes_and_a_bad_request_magic_close_only_their_connection() {
    let s = Served::new();
    let mut good = Client::go(s.addr, "m");
    // No FIXED_NEWSTYLE.
    let mut c = connect(s.addr);
    greeting(&mut c);
    c.write_all(&0u32.to_be_bytes()).unwrap();
    assert_closed(&mut c, "client without FIXED_NEWSTYLE");
    // An option header without IHAVEOPT.
    let mut c = connect(s.addr);
    greeting(&mut c);
    c.write_all(
        &ClientFlags {
            fixed_newstyle: true,
            no_zeroes: true,
        }
        .encode(),
    )
    .unwrap();
    c.write_all(&[0x42; 16]).unwrap();
    assert_closed(&mut c, "option without IHAVEOPT");
    // Transmission: a request with a bad magic.
    let mut bad = Client::go(s.addr, "m");
    let mut req = Request {
        flags: 0,
        command: Command::Read,
        cookie: 1,
        offset: 0,
        length: 512,
    }
    .encode();
    req[0] ^= 0xff;
    bad.s.write_all(&req).unwrap();
    assert_closed(&mut bad.s, "request with a bad magic");
    // The first connection is untouched.
    let data = pattern(4096, 1);
    assert_eq!(good.write(8192, &data), 0);
    assert_eq!(good.read(8192, 4096), data);
    good.disconnect();
}

#[test]
fn every_command_over_structured_replies_with_block_status() {
    let s = Served::new();
    let mut c = Client::go_structured(s.addr, "m", true);
    assert_ne!(c.flags & FLAG_SEND_DF, 0);
    let data = pattern(64 * 1024, 7);
    // WRITE with FUA, then READ: one OFFSET_DATA chunk carrying the data.
    let w = c.send(CMD_FLAG_FUA, Command::Write, 1 << 20, data.len() as u32);
    c.send_payload(&data);
    assert_eq!(c.any_reply(w), 0);
    let r = c.send(0, Command::Read, 1 << 20, data.len() as u32);
    let chunks = c.chunks(r);
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].0.reply_type, REPLY_TYPE_OFFSET_DATA);
    assert_eq!(
        u64::from_be_bytes(chunks[0].1[..8].try_into().unwrap()),
        1 << 20
    );
    assert_eq!(&chunks[0].1[8..], &data[..]);
    // FLUSH and CACHE succeed.
    let f = c.send(0, Command::Flush, 0, 0);
    assert_eq!(c.any_reply(f), 0);
    let k = c.send(0, Command::Cache, 0, 4096);
    assert_eq!(c.any_reply(k), 0);
    // BLOCK_STATUS: the written 64 KiB are data, the rest of the first MiB a hole.
    let b = c.send(0, Command::BlockStatus, 0, 2 << 20);
    let chunks = c.chunks(b);
    assert_eq!(chunks[0].0.reply_type, REPLY_TYPE_BLOCK_STATUS);
    let d = &chunks[0].1;
    assert_eq!(
        u32::from_be_bytes(d[..4].try_into().unwrap()),
        1,
        "context id"
    );
    let ext: Vec<(u32, u32)> = d[4..]
        .chunks(8)
        .map(|e| {
            (
                u32::from_be_bytes(e[..4].try_into().unwrap()),
                u32::from_be_bytes(e[4..].try_into().unwrap()),
            )
        })
        .collect();
    assert_eq!(ext[0], (1 << 20, STATE_HOLE | STATE_ZERO));
    assert_eq!(ext[1], (64 * 1024, 0));
    // TRIM and WRITE_ZEROES: the data reads back as zeroes.
    let t = c.send(0, Command::Trim, 1 << 20, 32 * 1024);
    assert_eq!(c.any_reply(t), 0);
    let z = c.send(
        CMD_FLAG_NO_HOLE,
        Command::WriteZeroes,
        (1 << 20) + 32 * 1024,
        32 * 1024,
    );
    assert_eq!(c.any_reply(z), 0);
    let r = c.send(0, Command::Read, 1 << 20, 64 * 1024);
    let chunks = c.chunks(r);
    assert!(chunks[0].1[8..].iter().all(|&b| b == 0));
    c.disconnect();
}

#[test]
fn bad_requests_get_their_errno_and_the_connection_goes_on() {
    let s = Served::new();
    let mut c = Client::go(s.addr, "m");
    // Misaligned, past the end (read: EINVAL, write: ENOSPC), zero length, unknown flag.
    assert_eq!(c.simple(Command::Read, 100, 512), EINVAL);
    assert_eq!(c.simple(Command::Read, SIZE, 512), EINVAL);
    let w = c.send(0, Command::Write, SIZE - 512, 1024);
    c.send_payload(&[0u8; 1024]);
    assert_eq!(c.reply(w), ENOSPC);
    assert_eq!(c.simple(Command::Read, 0, 0), EINVAL);
    let r = c.send(0x8000, Command::Read, 0, 512);
    assert_eq!(c.reply(r), EINVAL);
    // A read too large with DF is EOVERFLOW only with structured replies; here EINVAL.
    assert_eq!(c.simple(Command::Read, 0, 64 << 20), EINVAL);
    // Still serving.
    assert_eq!(c.read(0, 512).len(), 512);
    c.disconnect();
    // Writes to a read-only export: EPERM, payload read and dropped.
    let mut r = Client::go(s.addr, "ro");
    assert_eq!(r.write(0, &[1u8; 4096]), EPERM);
    assert_eq!(r.read(0, 4096), vec![0u8; 4096]);
    r.disconnect();
}

#[test]
fn an_oversized_write_gets_eoverflow_and_then_the_connection_closes() {
    let s = Served::new();
    let mut c = Client::go(s.addr, "m");
    let w = c.send(0, Command::Write, 0, target_nbd::MAX_PAYLOAD + 512);
    assert_eq!(c.reply(w), EOVERFLOW);
    assert_closed(&mut c.s, "after a write payload it cannot skip");
    let mut again = Client::go(s.addr, "m");
    assert_eq!(again.read(0, 512).len(), 512);
    again.disconnect();
}

#[test]
fn device_errors_reach_the_client_as_the_documented_errno() {
    let s = Served::new();
    let mut c = Client::go(s.addr, "bad");
    for (kind, errno) in [
        (ErrorKind::Conflict, EPERM),
        (ErrorKind::NoSpace, ENOSPC),
        (ErrorKind::ReadOnly, EPERM),
        (ErrorKind::Io, EIO),
        (ErrorKind::Timeout, EIO),
        (ErrorKind::Gone, EIO),
        (ErrorKind::InvalidArgument, EINVAL),
    ] {
        s.bad.fail(Ops::ALL, kind);
        assert_eq!(
            c.write(0, &[9u8; 512]),
            errno,
            "a write failing with {kind:?}"
        );
        assert_eq!(
            c.simple(Command::Flush, 0, 0),
            errno,
            "a flush failing with {kind:?}"
        );
    }
    s.bad.heal();
    assert_eq!(c.write(0, &[9u8; 512]), 0);
    c.disconnect();
    // With structured replies a failed read is one ERROR chunk with the errno.
    let mut c = Client::go_structured(s.addr, "bad", false);
    s.bad.fail(Ops::ALL, ErrorKind::Conflict);
    let r = c.send(0, Command::Read, 0, 512);
    let chunks = c.chunks(r);
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].0.reply_type, REPLY_TYPE_ERROR);
    assert_eq!(
        u32::from_be_bytes(chunks[0].1[..4].try_into().unwrap()),
        EPERM
    );
    s.bad.heal();
    c.disconnect();
}

#[test]
fn a_client_that_does_not_negotiate_in_time_is_closed_and_the_cap_holds() {
    let s = Served::start(ListenerLimits {
        max_connections: 3,
        negotiate_timeout: Duration::from_millis(300),
        idle_timeout: None,
    });
    let t = Instant::now();
    let mut idle = connect(s.addr);
    greeting(&mut idle);
    let mut negotiated = Client::go(s.addr, "m");
    let mut third = connect(s.addr);
    greeting(&mut third);
    // The fourth is over the cap: closed without a greeting.
    let mut over = connect(s.addr);
    assert!(assert_closed(&mut over, "a connection over the cap").is_empty());
    assert_closed(&mut idle, "a client that never negotiated");
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_closed(&mut third, "a second client that never negotiated");
    // The negotiated one is not subject to the handshake limit.
    assert_eq!(negotiated.read(0, 512).len(), 512);
    negotiated.disconnect();
}

#[test]
fn stop_closes_every_live_connection_and_accepts_no_more() {
    let s = Served::new();
    let mut a = Client::go(s.addr, "m");
    let mut b = start(s.addr, true);
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.server.connection_count() < 2 {
        assert!(Instant::now() < deadline, "connections not registered");
        std::thread::sleep(Duration::from_millis(5));
    }
    s.server.stop();
    assert_closed(&mut a.s, "a negotiated connection at stop");
    assert_closed(&mut b, "a negotiating connection at stop");
    while s.server.connection_count() > 0 {
        assert!(Instant::now() < deadline, "connections not gone after stop");
        std::thread::sleep(Duration::from_millis(5));
    }
}
