//! Hostile and malformed NBD traffic from a minimal hand-written client (std `TcpStream` plus
//! the `proto-nbd` encoders): the server must answer with the protocol's errno or close that
//! one connection, never allocate on a client's say-so, never panic, and keep serving others.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::nbd::{Client, assert_closed, connect, greeting, option_reply, read_n};
use common::{Engine, ballast, qemu_io};
use proto_nbd::{
    self as nbd, ClientFlags, ClientOption, Command, OptionHeader, OptionReplyHeader, Request,
    consts::*,
};

const SIZE: u64 = 16 << 20;
const EPERM: u32 = 1;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;
const EOVERFLOW: u32 = 75;
const FIXED: ClientFlags = ClientFlags {
    fixed_newstyle: true,
    no_zeroes: false,
};

/// An engine with a 16 MiB RAM export `m` and a read-only export `ro` of the same device.
fn engine() -> Engine {
    Engine::start(&[
        "--device",
        "m=malloc:///m?size=16MiB",
        "--export",
        "m",
        "--export",
        "ro=m,ro",
    ])
}

/// The engine still serves: a fresh raw client reads and writes, and so does qemu-io; and it
/// has not died or panicked.
fn assert_still_serves(e: &mut Engine) {
    e.assert_healthy();
    let mut c = Client::go(e.nbd_addr, "m");
    assert_eq!(c.size, SIZE);
    let data = vec![0x5au8; 4096];
    assert_eq!(c.write(SIZE - 4096, &data), 0);
    assert_eq!(c.read(SIZE - 4096, 4096), data);
    c.disconnect();
    qemu_io(&e.uri("m"), &["read -P 0x5a 16380k 4k"]);
    e.assert_healthy();
}

/// Peak virtual memory of a process, in KiB.
fn vm_peak_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmPeak:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmPeak")
}

#[test]
fn garbage_client_flags_close_the_connection() {
    let mut e = engine();
    // Unknown bits in the client flags.
    let mut s = connect(e.nbd_addr);
    greeting(&mut s);
    s.write_all(&[0xde, 0xad, 0xbe, 0xef]).expect("send");
    assert_closed(&mut s, "unknown client flags");
    // A client that does not speak fixed newstyle.
    let mut s = connect(e.nbd_addr);
    greeting(&mut s);
    s.write_all(&0u32.to_be_bytes()).expect("send");
    assert_closed(&mut s, "client without FIXED_NEWSTYLE");
    // Text where the flags and options belong.
    let mut s = connect(e.nbd_addr);
    greeting(&mut s);
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_closed(&mut s, "HTTP request");
    // Flags fine, then an option header without IHAVEOPT.
    let mut s = connect(e.nbd_addr);
    greeting(&mut s);
    s.write_all(&FIXED.encode()).expect("send");
    let _ = s.write_all(&[0x11; 16]);
    assert_closed(&mut s, "option header without IHAVEOPT");
    // Connect and vanish at once.
    drop(connect(e.nbd_addr));
    assert_still_serves(&mut e);
}

#[test]
fn huge_option_length_is_refused_without_allocating() {
    let mut e = engine();
    let before = vm_peak_kib(e.pid());
    for length in [u32::MAX, nbd::MAX_OPTION_LEN + 1] {
        let mut s = connect(e.nbd_addr);
        greeting(&mut s);
        let cf = ClientFlags {
            fixed_newstyle: true,
            no_zeroes: true,
        };
        s.write_all(&cf.encode()).expect("flags");
        let h = OptionHeader {
            option: OPT_GO,
            length,
        };
        s.write_all(&h.encode()).expect("option header");
        // A few bytes of "data", far fewer than announced.
        s.write_all(&[0u8; 64]).expect("some data");
        let got = assert_closed(&mut s, "oversized option");
        // An error reply before the close is allowed (NBD_REP_ERR_TOO_BIG), nothing else.
        if !got.is_empty() {
            let r = OptionReplyHeader::parse(&got).expect("an option reply");
            assert_eq!(r.option, OPT_GO);
            assert_eq!(r.reply_type, REP_ERR_TOO_BIG, "reply {r:?}");
        }
    }
    let after = vm_peak_kib(e.pid());
    assert!(
        after < before + 512 * 1024,
        "VmPeak grew from {before} KiB to {after} KiB: the server allocated on the client's say-so"
    );
    assert_still_serves(&mut e);
}

#[test]
fn malformed_options_get_errors_and_the_handshake_continues() {
    let mut e = engine();
    let mut s = connect(e.nbd_addr);
    greeting(&mut s);
    s.write_all(&FIXED.encode()).expect("flags");
    // GO whose name length points past the option data.
    let mut data = Vec::new();
    data.extend_from_slice(&1000u32.to_be_bytes());
    data.extend_from_slice(b"m");
    data.extend_from_slice(&0u16.to_be_bytes());
    let h = OptionHeader {
        option: OPT_GO,
        length: data.len() as u32,
    };
    s.write_all(&h.encode()).expect("send");
    s.write_all(&data).expect("send");
    let (r, _) = option_reply(&mut s);
    assert_eq!(r.option, OPT_GO);
    assert_eq!(r.reply_type, REP_ERR_INVALID, "{r:?}");
    // An unknown option.
    let h = OptionHeader {
        option: 0x7777,
        length: 0,
    };
    s.write_all(&h.encode()).expect("send");
    let (r, _) = option_reply(&mut s);
    assert_eq!((r.option, r.reply_type), (0x7777, REP_ERR_UNSUP), "{r:?}");
    // GO for an export that does not exist.
    let mut opt = Vec::new();
    ClientOption::Go {
        export: "nope".into(),
        info_requests: vec![],
    }
    .encode(&mut opt)
    .expect("encode");
    s.write_all(&opt).expect("send");
    let (r, _) = option_reply(&mut s);
    assert_eq!(r.reply_type, REP_ERR_UNKNOWN, "{r:?}");
    // The same connection can still enter transmission.
    let mut opt = Vec::new();
    ClientOption::Go {
        export: "m".into(),
        info_requests: vec![],
    }
    .encode(&mut opt)
    .expect("encode");
    s.write_all(&opt).expect("send");
    let mut c = Client::finish_go(s);
    assert_eq!(c.size, SIZE);
    assert_eq!(c.read(0, 512), vec![0u8; 512]);
    c.disconnect();
    assert_still_serves(&mut e);
}

#[test]
fn bad_requests_get_errno_and_the_connection_continues() {
    let mut e = engine();
    let mut c = Client::go(e.nbd_addr, "m");
    assert_eq!(c.size, SIZE);
    assert_eq!(c.flags & FLAG_READ_ONLY, 0);
    let block = vec![0xc3u8; 512];

    assert_eq!(
        c.simple(Command::Read, SIZE, 512),
        EINVAL,
        "read at the end"
    );
    assert_eq!(
        c.simple(Command::Read, SIZE - 512, 1024),
        EINVAL,
        "read across the end"
    );
    assert_eq!(
        c.simple(Command::Read, u64::MAX - 511, 512),
        EINVAL,
        "read at 2^64-512"
    );
    assert_eq!(c.simple(Command::Read, 1, 512), EINVAL, "misaligned offset");
    assert_eq!(c.simple(Command::Read, 0, 100), EINVAL, "misaligned length");
    assert_eq!(c.simple(Command::Read, 0, 0), EINVAL, "zero-length read");
    assert_eq!(c.write(SIZE, &block), ENOSPC, "write at the end");
    assert_eq!(
        c.write(SIZE - 512, &[0u8; 1024]),
        ENOSPC,
        "write across the end"
    );
    assert_eq!(c.write(u64::MAX - 511, &block), ENOSPC, "write at 2^64-512");
    assert_eq!(c.write(1, &block), EINVAL, "misaligned write");
    assert_eq!(
        c.simple(Command::Unknown(0x55), 0, 512),
        EINVAL,
        "unknown command 0x55"
    );
    let ck = c.send(0x8000, Command::Read, 0, 512);
    assert_eq!(c.reply(ck), EINVAL, "unknown command flag");
    assert_eq!(
        c.simple(Command::Flush, 0, 512),
        EINVAL,
        "flush with a range"
    );

    // Framing survived all of that: real I/O works on the same connection.
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(c.write(4096, &data), 0);
    assert_eq!(c.simple(Command::Flush, 0, 0), 0);
    assert_eq!(c.read(4096, 8192), data);
    c.disconnect();

    // A read-only export refuses every kind of write with EPERM, and still reads.
    let mut r = Client::go(e.nbd_addr, "ro");
    assert_ne!(
        r.flags & FLAG_READ_ONLY,
        0,
        "ro export not flagged read-only"
    );
    assert_eq!(r.write(0, &block), EPERM, "write to a read-only export");
    assert_eq!(r.simple(Command::Trim, 0, 512), EPERM, "trim on read-only");
    assert_eq!(
        r.simple(Command::WriteZeroes, 0, 512),
        EPERM,
        "write zeroes on read-only"
    );
    assert_eq!(r.read(4096, 8192), data);
    r.disconnect();
    assert_still_serves(&mut e);
}

#[test]
fn oversized_write_gets_eoverflow_then_close() {
    let mut e = engine();
    let mut c = Client::go(e.nbd_addr, "m");
    let ck = c.send(0, Command::Write, 0, 0x7FFF_FFFF);
    assert_eq!(c.reply(ck), EOVERFLOW, "write of 0x7FFFFFFF bytes");
    let rest = assert_closed(&mut c.s, "after EOVERFLOW");
    assert!(
        rest.is_empty(),
        "unexpected bytes after EOVERFLOW: {rest:?}"
    );
    // Just over the advertised maximum payload behaves the same way.
    let mut c = Client::go(e.nbd_addr, "m");
    let ck = c.send(0, Command::Write, 0, (32 << 20) + 512);
    assert_eq!(c.reply(ck), EOVERFLOW, "write of 32 MiB + 512");
    assert_closed(&mut c.s, "after EOVERFLOW");
    assert_still_serves(&mut e);
}

#[test]
fn truncated_request_and_bad_magic() {
    let mut e = engine();
    // 10 bytes of a request, then the client goes away.
    let mut c = Client::go(e.nbd_addr, "m");
    let req = Request {
        flags: 0,
        command: Command::Read,
        cookie: 1,
        offset: 0,
        length: 512,
    }
    .encode();
    c.s.write_all(&req[..10]).expect("send");
    drop(c);
    // A write whose payload is cut short.
    let mut c = Client::go(e.nbd_addr, "m");
    c.send(0, Command::Write, 0, 65536);
    c.send_payload(&[1u8; 1000]);
    drop(c);
    // A request with a bad magic: framing is lost, the server must close.
    let mut c = Client::go(e.nbd_addr, "m");
    let mut bad = req;
    bad[..4].copy_from_slice(&0xdead_beefu32.to_be_bytes());
    c.s.write_all(&bad).expect("send");
    let rest = assert_closed(&mut c.s, "bad request magic");
    assert!(rest.is_empty(), "reply to a bad magic: {rest:?}");
    // A good request followed by a bad one: the first is answered, then the close.
    let mut c = Client::go(e.nbd_addr, "m");
    let ck = c.send(0, Command::Read, 0, 512);
    c.s.write_all(&bad).expect("send");
    assert_eq!(c.reply(ck), 0);
    assert_eq!(read_n(&mut c.s, 512).len(), 512);
    assert_closed(&mut c.s, "bad magic after a good request");
    assert_still_serves(&mut e);
}

/// Requests and payloads that arrive in several TCP segments must be reassembled.
#[test]
fn transmission_messages_split_across_segments() {
    let mut e = engine();
    let mut c = Client::go(e.nbd_addr, "m");
    let data = vec![0x42u8; 4096];
    let req = Request {
        flags: 0,
        command: Command::Write,
        cookie: 7,
        offset: 8192,
        length: 4096,
    }
    .encode();
    for part in [
        &req[..5],
        &req[5..20],
        &req[20..],
        &data[..100],
        &data[100..],
    ] {
        c.s.write_all(part).expect("send");
        c.s.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(30));
    }
    assert_eq!(c.reply(7), 0);
    c.cookie = 7;
    assert_eq!(c.read(8192, 4096), data);
    c.disconnect();
    assert_still_serves(&mut e);
}

/// Handshake messages that arrive in several TCP segments must be reassembled, as they are
/// for requests. libnbd (fio, nbdinfo, nbdcopy) sends an option's header and data in separate
/// `send` calls with `MSG_MORE`, so real clients depend on it. Regression test: handshake
/// reads into a `Vec<u8>` once shrank their window after a partial receive, and the next
/// receive of zero bytes was taken for EOF, so the connection was reset.
#[test]
fn handshake_messages_split_across_segments() {
    let e = engine();
    let pause = || std::thread::sleep(Duration::from_millis(50));
    let mut opt = Vec::new();
    ClientOption::Go {
        export: "m".into(),
        info_requests: vec![INFO_BLOCK_SIZE],
    }
    .encode(&mut opt)
    .expect("encode");
    let flags = ClientFlags {
        fixed_newstyle: true,
        no_zeroes: true,
    }
    .encode();
    // Each step splits a different message; each is tried on its own connection.
    let splits: [(&str, Vec<Vec<u8>>); 3] = [
        (
            "client flags in 2 + 2 bytes",
            vec![flags[..2].to_vec(), flags[2..].to_vec(), opt.clone()],
        ),
        (
            "option header in 8 + 8 bytes",
            vec![flags.to_vec(), opt[..8].to_vec(), opt[8..].to_vec()],
        ),
        (
            "option data in 5 + rest bytes",
            vec![flags.to_vec(), opt[..21].to_vec(), opt[21..].to_vec()],
        ),
    ];
    let mut failures = Vec::new();
    for (what, parts) in splits {
        let mut s = connect(e.nbd_addr);
        greeting(&mut s);
        for p in &parts {
            let _ = s.write_all(p);
            pause();
        }
        let mut hdr = [0u8; nbd::OPTION_REPLY_HEADER_LEN];
        match s.read_exact(&mut hdr) {
            Ok(()) => {
                let h = OptionReplyHeader::parse(&hdr).expect("option reply");
                assert!(!h.is_error(), "{what}: error reply {h:?}");
            }
            Err(err) => failures.push(format!("{what}: no reply, connection closed ({err})")),
        }
    }
    assert!(
        failures.is_empty(),
        "the server dropped split handshake messages:\n{}",
        failures.join("\n")
    );
}

/// A connection the server should close: opened at `opened`, read until end of stream.
/// Returns how long after `opened` the server closed it, or `None` if it stayed open for
/// `patience`.
fn closed_after(mut s: TcpStream, opened: Instant, patience: Duration) -> Option<Duration> {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut buf = [0u8; 4096];
    let until = Instant::now() + patience;
    while Instant::now() < until {
        match s.read(&mut buf) {
            Ok(0) => return Some(opened.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return Some(opened.elapsed()),
        }
    }
    None
}

/// A client that negotiates slowly: after the greeting and its flags it sends an option
/// header one byte every 200 ms, for as long as the server lets it.
fn slow_client(addr: SocketAddr) -> (TcpStream, std::thread::JoinHandle<()>) {
    let mut s = connect(addr);
    greeting(&mut s);
    s.write_all(&FIXED.encode()).expect("flags");
    let mut w = s.try_clone().expect("clone");
    let t = std::thread::spawn(move || {
        let h = OptionHeader {
            option: OPT_GO,
            length: 4,
        }
        .encode();
        for b in h.iter().cycle() {
            if w.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    (s, t)
}

#[test]
fn clients_that_never_finish_negotiating_are_closed_and_a_flood_locks_out_neither_clients_nor_the_api()
 {
    const LIMIT: Duration = Duration::from_millis(1500);
    let mut e = Engine::start(&[
        "--device",
        "m=malloc:///m?size=16MiB",
        "--export",
        "m",
        "--nvmf-export",
        "n=m",
        "--grpc-listen",
        "127.0.0.1:0",
        "--negotiate-timeout",
        "1500",
        "--max-connections",
        "24",
    ]);
    let api = e.grpc.clone().expect("management API");
    let nvmf = e.nvmf_addr.expect("NVMe/TCP listener");
    let opened = Instant::now();
    // Fill the NBD listener: 20 clients that connect and say nothing, 4 that trickle an
    // option header a byte at a time.
    let idle: Vec<TcpStream> = (0..20).map(|_| connect(e.nbd_addr)).collect();
    let slow: Vec<_> = (0..4).map(|_| slow_client(e.nbd_addr)).collect();
    // And the NVMe/TCP listener: 24 connections that never send ICReq.
    let idle_nvme: Vec<TcpStream> = (0..24).map(|_| connect(nvmf)).collect();
    std::thread::sleep(Duration::from_millis(200));
    // Beyond the cap: closed at once, long before the negotiation limit.
    for _ in 0..5 {
        let t = Instant::now();
        let s = connect(e.nbd_addr);
        let took = closed_after(s, t, LIMIT / 2);
        assert!(took.is_some(), "a connection beyond the cap was kept open");
    }
    // The management API answers while both data listeners are full.
    ballast(&api, &["device", "list"]).assert_success();
    // Every one of them is closed after the limit (not before it, and not much later).
    let mut waits = Vec::new();
    for s in idle.into_iter().chain(idle_nvme) {
        waits.push(std::thread::spawn(move || {
            closed_after(s, opened, Duration::from_secs(15))
        }));
    }
    for (s, t) in slow {
        waits.push(std::thread::spawn(move || {
            let r = closed_after(s, opened, Duration::from_secs(15));
            let _ = t.join();
            r
        }));
    }
    let took: Vec<Option<Duration>> = waits
        .into_iter()
        .map(|w| w.join().expect("waiter"))
        .collect();
    eprintln!("closed after: {took:?}");
    for took in took {
        let took = took.expect("a client that never negotiated was held open for 15 s");
        assert!(
            took >= LIMIT - Duration::from_millis(250) && took < LIMIT + Duration::from_secs(4),
            "closed after {took:?}, the limit is {LIMIT:?}"
        );
    }
    // Room again: a new client negotiates and does I/O, and so does a real one.
    assert_still_serves(&mut e);
    ballast(&api, &["device", "list"]).assert_success();
}

#[test]
fn an_idle_limit_closes_negotiated_connections_with_nothing_in_flight_and_keeps_busy_ones() {
    let mut e = Engine::start(&[
        "--device",
        "m=malloc:///m?size=16MiB",
        "--export",
        "m",
        "--idle-timeout",
        "1000",
    ]);
    let idle = Client::go(e.nbd_addr, "m");
    let opened = Instant::now();
    let mut busy = Client::go(e.nbd_addr, "m");
    let watcher = {
        let s = idle.s.try_clone().expect("clone");
        std::thread::spawn(move || closed_after(s, opened, Duration::from_secs(10)))
    };
    // The busy client sends a request every 250 ms for 3 s: never idle for a second.
    while opened.elapsed() < Duration::from_secs(3) {
        assert_eq!(busy.read(0, 4096).len(), 4096);
        std::thread::sleep(Duration::from_millis(250));
    }
    let took = watcher
        .join()
        .expect("watcher")
        .expect("an idle connection was kept past its limit");
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    busy.disconnect();
    assert_still_serves(&mut e);
}
