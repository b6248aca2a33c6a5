//! The NBD initiator against a scripted fake server on loopback: malformed replies, silence,
//! closed connections, `ESHUTDOWN`, old servers, refused exports, back-off and reset. Real
//! servers are in `nbd_client.rs`; this double exists to send what no real server sends.

mod nbd_support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blockdev::{BlockDevice, ErrorKind, IoBuf, WriteFlags, ZeroFlags};
use nbd_support::*;
use proto_nbd::{self as nbd, ClientOption, Command, OptionHeader, Request, consts::*};

const SIZE: u64 = 32 << 20;

/// How the fake negotiates.
#[derive(Clone)]
struct Opts {
    structured: bool,
    /// Answer `NBD_OPT_GO` (else `NBD_REP_ERR_UNSUP`, forcing `EXPORT_NAME`).
    go: bool,
    /// Refuse the export with `NBD_REP_ERR_UNKNOWN`.
    unknown: bool,
    /// Pause before reading each request (a slow server: the client's sends back up).
    read_delay: Duration,
    flags: u16,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            structured: true,
            go: true,
            unknown: false,
            read_delay: Duration::ZERO,
            flags: FLAG_HAS_FLAGS
                | FLAG_SEND_FLUSH
                | FLAG_SEND_FUA
                | FLAG_SEND_TRIM
                | FLAG_SEND_WRITE_ZEROES,
        }
    }
}

/// What the fake does with one request.
enum Act {
    /// Answer correctly from its memory.
    Normal,
    /// Send these bytes instead.
    Send(Vec<u8>),
    /// Never answer.
    Silent,
    /// Close the connection.
    Close,
}

type Script = dyn Fn(usize, &Request) -> Act + Send + Sync;

struct Fake {
    port: u16,
    conns: Arc<AtomicUsize>,
    discs: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    socks: Arc<Mutex<Vec<TcpStream>>>,
}

impl Fake {
    fn uri(&self, query: &str) -> String {
        format!("nbd://127.0.0.1:{}/disk{query}", self.port)
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Unblock the accept loop, then close every connection.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        for s in self.socks.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn fake(opts: Opts, script: impl Fn(usize, &Request) -> Act + Send + Sync + 'static) -> Fake {
    fake_on(0, opts, script)
}

fn fake_on(
    port: u16,
    opts: Opts,
    script: impl Fn(usize, &Request) -> Act + Send + Sync + 'static,
) -> Fake {
    let l = TcpListener::bind(("127.0.0.1", port)).expect("bind fake server");
    let port = l.local_addr().unwrap().port();
    let conns = Arc::new(AtomicUsize::new(0));
    let discs = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let socks = Arc::new(Mutex::new(Vec::new()));
    let store = Arc::new(Mutex::new(vec![0u8; SIZE as usize]));
    let script: Arc<Script> = Arc::new(script);
    let (c2, d2, s2, k2) = (conns.clone(), discs.clone(), stop.clone(), socks.clone());
    std::thread::spawn(move || {
        for s in l.incoming() {
            if s2.load(Ordering::SeqCst) {
                break;
            }
            let Ok(s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
            if let Ok(dup) = s.try_clone() {
                k2.lock().unwrap().push(dup);
            }
            let n = c2.fetch_add(1, Ordering::SeqCst);
            let (opts, script, store, discs) =
                (opts.clone(), script.clone(), store.clone(), d2.clone());
            std::thread::spawn(move || {
                let _ = serve(s, n, &opts, &*script, &store, &discs);
            });
        }
    });
    Fake {
        port,
        conns,
        discs,
        stop,
        socks,
    }
}

fn read_n(s: &mut TcpStream, n: usize) -> std::io::Result<Vec<u8>> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v)?;
    Ok(v)
}

/// One connection of the fake: negotiation, then requests until the client leaves.
fn serve(
    mut s: TcpStream,
    conn: usize,
    o: &Opts,
    script: &Script,
    store: &Mutex<Vec<u8>>,
    discs: &AtomicUsize,
) -> std::io::Result<()> {
    s.write_all(&nbd::server_greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))?;
    let cflags = nbd::parse_client_flags(&read_n(&mut s, 4)?).expect("client flags");
    let mut structured = false;
    loop {
        let h = OptionHeader::parse(&read_n(&mut s, nbd::OPTION_HEADER_LEN)?).expect("option");
        let data = read_n(&mut s, h.length as usize)?;
        let opt = nbd::parse_option(h.option, &data).expect("option data");
        let mut out = Vec::new();
        match opt {
            ClientOption::StructuredReply if o.structured => {
                structured = true;
                nbd::rep_ack(&mut out, h.option);
            }
            ClientOption::SetMetaContext { .. } if structured => {
                nbd::rep_meta_context(&mut out, h.option, 7, BASE_ALLOCATION).unwrap();
                nbd::rep_ack(&mut out, h.option);
            }
            ClientOption::Go { .. } if o.unknown => {
                nbd::rep_error(&mut out, h.option, REP_ERR_UNKNOWN, "no such export here");
            }
            ClientOption::Go { .. } if o.go => {
                nbd::rep_info_export(&mut out, h.option, SIZE, o.flags);
                nbd::rep_info_block_size(&mut out, h.option, 1, 4096, 1 << 20);
                nbd::rep_ack(&mut out, h.option);
                s.write_all(&out)?;
                break;
            }
            ClientOption::ExportName(_) => {
                s.write_all(&nbd::export_name_reply(SIZE, o.flags, cflags.no_zeroes))?;
                break;
            }
            ClientOption::Abort => {
                nbd::rep_ack(&mut out, h.option);
                s.write_all(&out)?;
                return Ok(());
            }
            _ => nbd::rep_error(&mut out, h.option, REP_ERR_UNSUP, ""),
        }
        s.write_all(&out)?;
    }
    loop {
        std::thread::sleep(o.read_delay);
        let req = Request::parse(&read_n(&mut s, nbd::REQUEST_LEN)?).expect("request");
        let payload = if req.command == Command::Write {
            read_n(&mut s, req.length as usize)?
        } else {
            Vec::new()
        };
        if req.command == Command::Disconnect {
            discs.fetch_add(1, Ordering::SeqCst);
            return Ok(());
        }
        match script(conn, &req) {
            Act::Normal => {}
            Act::Send(b) => {
                s.write_all(&b)?;
                continue;
            }
            Act::Silent => continue,
            Act::Close => {
                let _ = s.shutdown(Shutdown::Both);
                return Ok(());
            }
        }
        let (off, len) = (req.offset as usize, req.length as usize);
        let mut out = Vec::new();
        match req.command {
            Command::Read => {
                let m = store.lock().unwrap();
                if structured {
                    let h = nbd::offset_data_header(
                        REPLY_FLAG_DONE,
                        req.cookie,
                        req.offset,
                        req.length,
                    )
                    .unwrap();
                    out.extend_from_slice(&h);
                } else {
                    out.extend_from_slice(&nbd::simple_reply(0, req.cookie));
                }
                out.extend_from_slice(&m[off..off + len]);
            }
            Command::Write => {
                store.lock().unwrap()[off..off + len].copy_from_slice(&payload);
                out.extend_from_slice(&nbd::simple_reply(0, req.cookie));
            }
            Command::WriteZeroes | Command::Trim => {
                store.lock().unwrap()[off..off + len].fill(0);
                out.extend_from_slice(&nbd::simple_reply(0, req.cookie));
            }
            Command::BlockStatus => {
                nbd::encode_block_status(
                    &mut out,
                    REPLY_FLAG_DONE,
                    req.cookie,
                    7,
                    &[(req.length, 0)],
                )
                .unwrap();
            }
            _ => out.extend_from_slice(&nbd::simple_reply(0, req.cookie)),
        }
        s.write_all(&out)?;
    }
}

/// A structured chunk: header and payload.
fn chunk(flags: u16, ty: u16, cookie: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = nbd::chunk_header(flags, ty, cookie, payload.len() as u32).to_vec();
    v.extend_from_slice(payload);
    v
}

fn error_payload(errno: u32, msg: &str) -> Vec<u8> {
    let mut p = errno.to_be_bytes().to_vec();
    p.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    p.extend_from_slice(msg.as_bytes());
    p
}

/// Runs `f` with the device on reactor 0 of a fresh runtime.
fn with_dev<T: Send + 'static, Fut: std::future::Future<Output = T> + 'static>(
    uri: &str,
    f: impl FnOnce(Arc<initiator_nbd::NbdDevice>) -> Fut + Send + 'static,
) -> T {
    let dev = open(uri);
    let rt = runtime();
    let out = on(&rt, 0, move || async move {
        let out = f(dev).await;
        // The device is dropped: let its soft disconnects go out before the reactors stop.
        reactor::sleep(Duration::from_millis(100)).await;
        out
    });
    rt.shutdown();
    out
}

/// Reads 4 KiB twice: the first read meets the misbehaviour `bad` on connection 0 and must
/// fail with `kind` and a message containing `text`; the second must succeed on a new
/// connection.
fn first_read_fails(
    opts: Opts,
    kind: ErrorKind,
    text: &'static str,
    bad: impl Fn(&Request) -> Vec<u8> + Send + Sync + 'static,
) {
    let srv = fake(opts, move |conn, req| {
        // Connection 0 is the one negotiated at open, taken over by the first I/O.
        if conn == 0 && req.command == Command::Read {
            Act::Send(bad(req))
        } else {
            Act::Normal
        }
    });
    let (first, second) = with_dev(&srv.uri(""), |d| async move {
        let first = d.read(0, IoBuf::zeroed(4096)).await;
        let second = d.read(0, IoBuf::zeroed(4096)).await;
        (first.map(drop), second.map(drop))
    });
    let e = first.expect_err("the malformed reply fails the read");
    assert_eq!(e.kind(), kind, "{e}");
    assert!(e.to_string().contains(text), "{e}");
    second.expect("the next read reconnects and succeeds");
    assert_eq!(
        srv.conns.load(Ordering::SeqCst),
        2,
        "the broken connection, then a new one"
    );
}

#[test]
fn bad_reply_magic_closes_the_connection() {
    first_read_fails(Opts::default(), ErrorKind::Io, "bad reply magic", |_| {
        vec![0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    });
}

#[test]
fn reply_to_an_unknown_cookie_closes_the_connection() {
    first_read_fails(Opts::default(), ErrorKind::Io, "unknown handle", |r| {
        chunk(REPLY_FLAG_DONE, REPLY_TYPE_NONE, r.cookie + 1000, &[])
    });
}

#[test]
fn data_beyond_the_request_closes_the_connection() {
    first_read_fails(Opts::default(), ErrorKind::Io, "outside the request", |r| {
        // Claims 4 GiB of data; nothing of it may be buffered.
        let mut v =
            nbd::chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, r.cookie, u32::MAX).to_vec();
        v.extend_from_slice(&r.offset.to_be_bytes());
        v
    });
    first_read_fails(Opts::default(), ErrorKind::Io, "outside the request", |r| {
        let mut p = (r.offset + 512).to_be_bytes().to_vec();
        p.extend_from_slice(&vec![1u8; r.length as usize]);
        chunk(REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, r.cookie, &p)
    });
}

#[test]
fn an_incomplete_read_reply_closes_the_connection() {
    first_read_fails(Opts::default(), ErrorKind::Io, "covers 512 of 4096", |r| {
        let mut p = r.offset.to_be_bytes().to_vec();
        p.extend_from_slice(&[9u8; 512]);
        let mut v = chunk(0, REPLY_TYPE_OFFSET_DATA, r.cookie, &p);
        v.extend_from_slice(&nbd::none_chunk(r.cookie));
        v
    });
}

#[test]
fn overlapping_read_chunks_close_the_connection() {
    first_read_fails(Opts::default(), ErrorKind::Io, "overlap", |r| {
        let mut p = r.offset.to_be_bytes().to_vec();
        p.extend_from_slice(&[9u8; 4096]);
        let mut v = chunk(0, REPLY_TYPE_OFFSET_DATA, r.cookie, &p);
        let mut hole = r.offset.to_be_bytes().to_vec();
        hole.extend_from_slice(&512u32.to_be_bytes());
        v.extend_from_slice(&chunk(
            REPLY_FLAG_DONE,
            REPLY_TYPE_OFFSET_HOLE,
            r.cookie,
            &hole,
        ));
        v
    });
}

#[test]
fn malformed_chunks_close_the_connection() {
    // NONE without DONE.
    first_read_fails(
        Opts::default(),
        ErrorKind::Io,
        "without NBD_REPLY_FLAG_DONE",
        |r| chunk(0, REPLY_TYPE_NONE, r.cookie, &[]),
    );
    // An error message longer than its chunk.
    first_read_fails(
        Opts::default(),
        ErrorKind::Io,
        "longer than its chunk",
        |r| {
            let mut p = 5u32.to_be_bytes().to_vec();
            p.extend_from_slice(&4000u16.to_be_bytes());
            p.extend_from_slice(b"short");
            chunk(REPLY_FLAG_DONE, REPLY_TYPE_ERROR, r.cookie, &p)
        },
    );
    // A huge error chunk.
    first_read_fails(Opts::default(), ErrorKind::Io, "error chunk of", |r| {
        nbd::chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_ERROR, r.cookie, 0xffff_0000).to_vec()
    });
    // A type nobody defined, without the error bit.
    first_read_fails(
        Opts::default(),
        ErrorKind::Io,
        "unknown reply chunk type 77",
        |r| chunk(REPLY_FLAG_DONE, 77, r.cookie, &[0; 8]),
    );
    // A hole of length 0.
    first_read_fails(Opts::default(), ErrorKind::Io, "length 0", |r| {
        let mut p = r.offset.to_be_bytes().to_vec();
        p.extend_from_slice(&0u32.to_be_bytes());
        chunk(REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_HOLE, r.cookie, &p)
    });
    // A simple reply to a read once structured replies are on.
    first_read_fails(
        Opts::default(),
        ErrorKind::Io,
        "simple reply to a read",
        |r| {
            let mut v = nbd::simple_reply(0, r.cookie).to_vec();
            v.extend_from_slice(&vec![0u8; r.length as usize]);
            v
        },
    );
    // A structured chunk that was never negotiated.
    let plain = Opts {
        structured: false,
        ..Opts::default()
    };
    first_read_fails(plain, ErrorKind::Io, "bad reply magic", |r| {
        chunk(REPLY_FLAG_DONE, REPLY_TYPE_NONE, r.cookie, &[])
    });
}

#[test]
fn a_huge_block_status_chunk_is_refused_unread() {
    let srv = fake(Opts::default(), |conn, req| {
        if conn == 0 && req.command == Command::BlockStatus {
            let mut v = nbd::chunk_header(
                REPLY_FLAG_DONE,
                REPLY_TYPE_BLOCK_STATUS,
                req.cookie,
                0xffff_fff4,
            )
            .to_vec();
            v.extend_from_slice(&7u32.to_be_bytes());
            Act::Send(v)
        } else {
            Act::Normal
        }
    });
    let (first, second) = with_dev(&srv.uri(""), |d| async move {
        assert!(d.capabilities().block_status);
        let first = d.block_status(0, SIZE).await;
        let second = d.block_status(0, SIZE).await;
        (first, second)
    });
    let e = first.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    assert!(e.to_string().contains("limit"), "{e}");
    let x = second.expect("block status on a new connection");
    assert_eq!((x[0].offset, x[0].len), (0, SIZE));
}

#[test]
fn error_chunks_fail_only_their_request() {
    let srv = fake(Opts::default(), |conn, req| match (conn, req.command) {
        (0, Command::Write) => Act::Send(chunk(
            REPLY_FLAG_DONE,
            REPLY_TYPE_ERROR,
            req.cookie,
            &error_payload(28, "pool is full"),
        )),
        (0, Command::Read) if req.offset == 0 => {
            let mut p = error_payload(5, "bad sector");
            p.extend_from_slice(&(req.offset + 1024).to_be_bytes());
            Act::Send(chunk(
                REPLY_FLAG_DONE,
                REPLY_TYPE_ERROR_OFFSET,
                req.cookie,
                &p,
            ))
        }
        // An error type this client does not know: still an error for the request.
        (0, Command::Trim) => Act::Send(chunk(
            REPLY_FLAG_DONE,
            REPLY_TYPE_FLAG_ERROR | 3,
            req.cookie,
            &error_payload(5, "new kind of error"),
        )),
        (0, Command::WriteZeroes) => Act::Send(nbd::simple_reply(1, req.cookie).to_vec()),
        _ => Act::Normal,
    });
    let r = with_dev(&srv.uri(""), |d| async move {
        let w = d.write(0, IoBuf::zeroed(4096), WriteFlags::default()).await;
        let r = d.read(0, IoBuf::zeroed(4096)).await;
        let t = d.unmap(0, 4096).await;
        let z = d.write_zeroes(0, 4096, ZeroFlags::default()).await;
        let ok = d.read(4096, IoBuf::zeroed(4096)).await;
        (
            w.unwrap_err(),
            r.unwrap_err(),
            t.unwrap_err(),
            z.unwrap_err(),
            ok.map(drop),
        )
    });
    let (w, rd, t, z, ok) = r;
    assert_eq!(w.kind(), ErrorKind::NoSpace, "{w}");
    assert!(w.to_string().contains("pool is full"), "{w}");
    assert_eq!(rd.kind(), ErrorKind::Io, "{rd}");
    assert!(rd.to_string().contains("bad sector"), "{rd}");
    assert_eq!(t.kind(), ErrorKind::Io, "{t}");
    assert_eq!(z.kind(), ErrorKind::ReadOnly, "{z}");
    ok.expect("the connection is still good");
    assert_eq!(srv.conns.load(Ordering::SeqCst), 1, "no reconnection");
}

#[test]
fn a_silent_server_times_out_every_request_on_the_connection() {
    let srv = fake(Opts::default(), |conn, _| {
        if conn == 0 { Act::Silent } else { Act::Normal }
    });
    let (a, b, took, after) = with_dev(&srv.uri("?timeout=200"), |d| async move {
        let t = Instant::now();
        let d2 = d.clone();
        let other = reactor::spawn_local(async move {
            d2.write(8192, IoBuf::zeroed(4096), WriteFlags::default())
                .await
                .map(drop)
        });
        let a = d.read(0, IoBuf::zeroed(4096)).await.map(drop);
        let b = other.await;
        let took = t.elapsed();
        let after = d.read(0, IoBuf::zeroed(4096)).await.map(drop);
        (a, b, took, after)
    });
    for r in [a, b] {
        let e = r.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
        assert!(e.to_string().contains("within 200 ms"), "{e}");
    }
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(2),
        "{took:?}"
    );
    after.expect("a new connection answers");
    assert_eq!(srv.conns.load(Ordering::SeqCst), 2);
}

#[test]
fn a_connection_closed_mid_request_fails_it_as_gone() {
    let srv = fake(Opts::default(), |conn, req| {
        if conn == 0 && req.command == Command::Write {
            Act::Close
        } else {
            Act::Normal
        }
    });
    let (e, after) = with_dev(&srv.uri(""), |d| async move {
        let e = d
            .write(0, IoBuf::zeroed(65536), WriteFlags::default())
            .await
            .unwrap_err();
        (e, d.read(0, IoBuf::zeroed(4096)).await.map(drop))
    });
    assert_eq!(e.kind(), ErrorKind::Gone, "{e}");
    assert!(e.to_string().contains("lost"), "{e}");
    after.expect("reconnected");
}

#[test]
fn eshutdown_retires_the_connection_with_a_soft_disconnect() {
    let srv = fake(Opts::default(), |conn, req| {
        if conn == 0 && req.command == Command::Read {
            Act::Send(nbd::simple_reply(108, req.cookie).to_vec())
        } else {
            Act::Normal
        }
    });
    let (e, after) = with_dev(&srv.uri(""), |d| async move {
        let e = d.read(0, IoBuf::zeroed(4096)).await.unwrap_err();
        (e, d.read(0, IoBuf::zeroed(4096)).await.map(drop))
    });
    assert_eq!(e.kind(), ErrorKind::Gone, "{e}");
    assert!(e.to_string().contains("ESHUTDOWN"), "{e}");
    after.expect("the next request uses a new connection");
    assert_eq!(srv.conns.load(Ordering::SeqCst), 2);
    // The retired connection's, and (when the device is dropped) the new one's.
    let deadline = Instant::now() + Duration::from_secs(5);
    while srv.discs.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(srv.discs.load(Ordering::SeqCst), 2, "NBD_CMD_DISC on each");
}

#[test]
fn old_servers_without_go_or_structured_replies() {
    let srv = fake(
        Opts {
            go: false,
            structured: false,
            ..Opts::default()
        },
        |_, _| Act::Normal,
    );
    let back = with_dev(&srv.uri(""), |d| async move {
        let c = d.capabilities();
        assert!(!c.block_status, "no structured replies, no block status");
        assert_eq!(d.geometry().size(), SIZE);
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        d.write(4096, IoBuf::from_slice(&data), WriteFlags { fua: true })
            .await
            .expect("write");
        let b = d.read(4096, IoBuf::zeroed(8192)).await.expect("read");
        // Without allocation data every range is reported as data.
        let x = d.block_status(0, SIZE).await.expect("status");
        assert_eq!(x.len(), 1);
        (b.to_vec() == data, d.export_info().structured)
    });
    assert_eq!(back, (true, false));
}

#[test]
fn refused_or_broken_negotiations_fail_open() {
    let srv = fake(
        Opts {
            unknown: true,
            ..Opts::default()
        },
        |_, _| Act::Normal,
    );
    let spec =
        initiator_nbd::NbdSpec::parse(&format!("nbd://127.0.0.1:{}/nope", srv.port)).unwrap();
    let e = initiator_nbd::NbdDevice::open("x", &spec).unwrap_err();
    assert!(e.to_string().contains("no export named \"nope\""), "{e}");
    assert!(e.to_string().contains("no such export here"), "{e}");

    // Not an NBD server at all; then one sending a 1 GiB option reply.
    for greeting in [
        b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(),
        [
            nbd::server_greeting(FLAG_FIXED_NEWSTYLE).to_vec(),
            nbd::OptionReplyHeader {
                option: OPT_STRUCTURED_REPLY,
                reply_type: REP_ACK,
                length: 1 << 30,
            }
            .encode()
            .to_vec(),
        ]
        .concat(),
    ] {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let _ = s.write_all(&greeting);
                std::thread::sleep(Duration::from_secs(2));
            }
        });
        let spec = initiator_nbd::NbdSpec::parse(&format!(
            "nbd://127.0.0.1:{port}/x?connect_timeout=1000"
        ))
        .unwrap();
        let t = Instant::now();
        let e = initiator_nbd::NbdDevice::open("x", &spec).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(2), "bounded: {e}");
        let s = e.to_string();
        assert!(
            s.contains("not a newstyle NBD server") || s.contains("option reply of"),
            "{s}"
        );
    }
}

#[test]
fn reconnection_backs_off_and_reset_reconnects() {
    let srv = fake(Opts::default(), |_, _| Act::Normal);
    let port = srv.port;
    let dev = open(&srv.uri("?connect_timeout=500"));
    let rt = runtime();
    let d = dev.clone();
    on(&rt, 0, move || async move {
        d.read(0, IoBuf::zeroed(4096)).await.map(drop)
    })
    .expect("first read");
    drop(srv);

    // The server is gone: the lost connection, then a refused reconnection, then fast
    // failures while backing off.
    let d = dev.clone();
    let errs = on(&rt, 0, move || async move {
        let mut errs = Vec::new();
        for _ in 0..3 {
            let e = d.read(0, IoBuf::zeroed(4096)).await.unwrap_err();
            errs.push((e.kind(), e.to_string()));
        }
        errs
    });
    for (k, m) in &errs {
        assert_eq!(*k, ErrorKind::Gone, "{m}");
    }
    assert!(
        errs.iter().any(|(_, m)| m.contains("next attempt in")),
        "{errs:?}"
    );

    // Back on the same port: the device reconnects within the back-off.
    let srv = fake_on(port, Opts::default(), |_, _| Act::Normal);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = dev.clone();
        let r = on(&rt, 0, move || async move {
            d.read(0, IoBuf::zeroed(4096)).await.map(drop)
        });
        if r.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "no reconnection: {r:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = srv.conns.load(Ordering::SeqCst);
    let d = dev.clone();
    on(&rt, 1, move || async move { d.reset().await }).expect("reset");
    assert_eq!(
        srv.conns.load(Ordering::SeqCst),
        before + 1,
        "reset made a new connection"
    );
    let d = dev.clone();
    on(&rt, 0, move || async move {
        d.read(0, IoBuf::zeroed(4096)).await.map(drop)
    })
    .expect("read after reset");
    drop(dev);
    rt.shutdown();
}

#[test]
fn a_request_abandoned_while_queued_behind_others_is_still_sent_and_answered() {
    // The server reads slowly, so 32 MiB of concurrent writes fill the socket and hold the
    // connection's send side; a read queued behind them is abandoned by its caller (a timeout
    // of its own). It is still sent (nobody else may be left to send it) and its reply is
    // dropped, so it neither lingers as in flight (which would time the connection out
    // later) nor breaks the stream's framing.
    let srv = fake(
        Opts {
            read_delay: Duration::from_millis(20),
            ..Opts::default()
        },
        |_, _| Act::Normal,
    );
    let (abandoned, later, conns) = with_dev(&srv.uri("?timeout=2000"), |d| async move {
        let writes: Vec<_> = (0..32u64)
            .map(|i| {
                let d = d.clone();
                reactor::spawn_local(async move {
                    d.write(i << 20, IoBuf::zeroed(1 << 20), WriteFlags::default())
                        .await
                        .map(drop)
                })
            })
            .collect();
        reactor::sleep(Duration::from_millis(50)).await;
        let abandoned =
            reactor::sync::timeout(Duration::from_millis(20), d.read(4096, IoBuf::zeroed(4096)))
                .await
                .is_none();
        for w in writes {
            w.await.expect("write");
        }
        // Past the abandoned read's deadline.
        reactor::sleep(Duration::from_millis(2500)).await;
        let later = d.read(0, IoBuf::zeroed(4096)).await.map(drop);
        (abandoned, later, d.connections())
    });
    assert!(abandoned, "the read was still queued when abandoned");
    later.expect("the connection is still good");
    assert_eq!(conns, 1);
    assert_eq!(srv.conns.load(Ordering::SeqCst), 1, "never reconnected");
}
