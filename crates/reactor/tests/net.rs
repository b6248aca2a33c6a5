//! The shared socket layer against the real kernel: the buffered reader, the accept loop with
//! its cap and stop, shutdown handles and the idle limit.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reactor::{
    BufReader, Config, IdleWatch, IoBuf, ListenerLimits, PollMode, Runtime, Server, block_on,
};

/// One test exhausts the process's descriptors: the tests of this file run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn runtime(cores: usize) -> Runtime {
    Runtime::start(Config {
        cores,
        mode: PollMode::Interrupt,
        pin: false,
        registered_buffers: 8,
        ..Config::default()
    })
    .expect("start runtime")
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads `\n`-terminated headers of the form `LEN\n` followed by LEN payload bytes, and
/// answers each with the payload's byte sum: headers through `fill`/`buffered`/`consume`,
/// payloads through `read_into` (straight into their own buffer), bad headers skipped with
/// `skip`.
#[test]
fn buffered_reader_parses_headers_and_payloads_split_anyhow_across_receives() {
    let _serial = serial();
    let rt = runtime(1);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    rt.handles()[0].spawn(move || async move {
        let l = reactor::TcpListener::from_std(listener);
        let (s, _) = l.accept().await.unwrap();
        let mut rd = BufReader::new(64);
        loop {
            // A header: up to the newline, at most 16 bytes.
            let mut need = 1;
            let nl = loop {
                if rd.fill(&s, need).await.is_err() {
                    return;
                }
                if let Some(p) = rd.buffered().iter().position(|&b| b == b'\n') {
                    break p;
                }
                need = rd.buffered().len() + 1;
                assert!(need <= 16, "header too long");
            };
            let len: usize = std::str::from_utf8(&rd.buffered()[..nl])
                .unwrap()
                .parse()
                .unwrap();
            rd.consume(nl + 1);
            // The payload at offset 8 of a buffer that already holds 8 bytes of its own.
            let mut dst = IoBuf::with_capacity(8 + len);
            dst.extend_from_slice(b"prefix!!");
            let (r, dst) = rd.read_into(&s, dst, 8, len).await;
            r.unwrap();
            assert_eq!(dst.len(), 8 + len);
            assert_eq!(&dst[..8], b"prefix!!");
            let sum: u64 = dst[8..].iter().map(|&b| u64::from(b)).sum();
            // Then a trailer of 3 bytes to drop.
            rd.skip(&s, 3).await.unwrap();
            let (r, _) = s.send_all(format!("{sum}\n").into_bytes()).await;
            r.unwrap();
        }
    });
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    let mut stream = Vec::new();
    let mut expect = Vec::new();
    for len in [0usize, 1, 5, 63, 64, 65, 200, 4096] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        stream.extend_from_slice(format!("{len}\n").as_bytes());
        stream.extend_from_slice(&payload);
        stream.extend_from_slice(b"xyz");
        expect.push(payload.iter().map(|&b| u64::from(b)).sum::<u64>());
    }
    // Sent in odd-sized pieces with pauses, so messages straddle receives every which way.
    for piece in stream.chunks(37) {
        c.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut answers = String::new();
    let mut r = std::io::BufReader::new(c);
    for _ in 0..expect.len() {
        std::io::BufRead::read_line(&mut r, &mut answers).unwrap();
    }
    let got: Vec<u64> = answers.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(got, expect);
    rt.shutdown();
}

#[test]
fn buffered_reader_refuses_a_fill_beyond_its_capacity_and_reports_end_of_stream() {
    let _serial = serial();
    let rt = runtime(1);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let out = rt.handles()[0].call(move || async move {
        let l = reactor::TcpListener::from_std(listener);
        let (s, _) = l.accept().await.unwrap();
        let mut rd = BufReader::new(4096);
        let cap = rd.capacity();
        let too_big = rd.fill(&s, cap + 1).await.unwrap_err().kind();
        rd.fill(&s, 4).await.unwrap();
        let first = rd.take(4).to_vec();
        let eof = rd.fill(&s, 1).await.unwrap_err().kind();
        (too_big, first, eof)
    });
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.write_all(b"abcd").unwrap();
    drop(c);
    let (too_big, first, eof) = block_on(out);
    assert_eq!(too_big, std::io::ErrorKind::InvalidData);
    assert_eq!(first, b"abcd");
    assert_eq!(eof, std::io::ErrorKind::UnexpectedEof);
    rt.shutdown();
}

/// An echo handler for the server tests.
async fn echo(c: reactor::Connection) {
    let mut buf = IoBuf::with_capacity(4096);
    loop {
        let (r, b) = c.stream.recv(buf, 0).await;
        buf = b;
        match r {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let (r, _) = c.stream.send_all(IoBuf::from_slice(&buf)).await;
                if r.is_err() {
                    return;
                }
                buf.set_len(0);
            }
        }
    }
}

fn echo_once(c: &mut std::net::TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    c.write_all(msg)?;
    let mut back = vec![0u8; msg.len()];
    c.read_exact(&mut back)?;
    Ok(back)
}

#[test]
fn server_spreads_connections_over_reactors_caps_them_and_stop_closes_the_live_ones() {
    let _serial = serial();
    let rt = runtime(2);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(
        "test",
        ListenerLimits {
            max_connections: 3,
            ..ListenerLimits::default()
        },
    );
    let reactors_seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = reactors_seen.clone();
    server.serve(listener, rt.handles().to_vec(), move |c| {
        seen.lock()
            .unwrap()
            .push(reactor::current_id().expect("on a reactor"));
        echo(c)
    });
    let mut open: Vec<std::net::TcpStream> = (0..3)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    for c in &mut open {
        assert_eq!(echo_once(c, b"hi").unwrap(), b"hi");
    }
    assert_eq!(server.connection_count(), 3);
    let mut ids = reactors_seen.lock().unwrap().clone();
    ids.sort();
    assert_eq!(ids, vec![0, 0, 1], "connections take the reactors in turn");
    // The fourth is closed at once: the client reads end of stream.
    let mut extra = std::net::TcpStream::connect(addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut b = [0u8; 1];
    assert!(matches!(extra.read(&mut b), Ok(0) | Err(_)));
    assert_eq!(server.stats().refused, 1);
    // Closing one makes room again.
    drop(open.pop());
    wait_until("a connection to end", Duration::from_secs(5), || {
        server.connection_count() == 2
    });
    let mut again = std::net::TcpStream::connect(addr).unwrap();
    assert_eq!(echo_once(&mut again, b"yo").unwrap(), b"yo");
    open.push(again);
    // Stop: every live connection sees end of stream, and nothing is accepted any more.
    server.stop();
    for c in &mut open {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(matches!(c.read(&mut b), Ok(0) | Err(_)));
    }
    wait_until("every connection to end", Duration::from_secs(5), || {
        server.connection_count() == 0
    });
    rt.shutdown();
}

#[test]
fn server_survives_descriptor_exhaustion_and_accepts_again_once_descriptors_are_free() {
    let _serial = serial();
    // Use up the descriptors, then free them: the accept loop must pause, not spin or end.
    let rt = runtime(1);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new("test", ListenerLimits::default());
    server.serve(listener, rt.handles().to_vec(), echo);
    let (soft, _) = reactor::fd_limits().unwrap();
    let mut hog = Vec::new();
    // Keep ~4 descriptors free for the client socket; the accepted ones then fail.
    let budget = soft.min(65_536) as usize;
    for _ in 0..budget {
        match std::fs::File::open("/dev/null") {
            Ok(f) => hog.push(f),
            Err(_) => break,
        }
    }
    let free_some = hog.len().saturating_sub(2);
    hog.truncate(free_some);
    let clients: Vec<_> = (0..2)
        .filter_map(|_| std::net::TcpStream::connect(addr).ok())
        .collect();
    wait_until("an accept error", Duration::from_secs(5), || {
        server.stats().accept_errors > 0
    });
    let errors_before = server.stats().accept_errors;
    std::thread::sleep(Duration::from_millis(300));
    let errors_after = server.stats().accept_errors;
    // 300 ms at one retry per 50 ms: no more than a handful, not a spin.
    assert!(
        errors_after - errors_before <= 10,
        "accept retried {} times in 300 ms",
        errors_after - errors_before
    );
    drop(hog);
    drop(clients);
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(echo_once(&mut c, b"back").unwrap(), b"back");
    server.stop();
    rt.shutdown();
}

#[test]
fn a_shutdown_handle_wakes_a_pending_receive_and_is_inert_once_the_socket_is_closed() {
    let _serial = serial();
    let rt = runtime(1);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let got = rt.handles()[0].call(move || async move {
        let l = reactor::TcpListener::from_std(listener);
        let (mut s, _) = l.accept().await.unwrap();
        let h = s.shutdown_handle();
        tx.send(h.clone()).unwrap();
        let (r, _) = s.recv(IoBuf::with_capacity(16), 0).await;
        drop(s);
        (r.unwrap(), h.is_open())
    });
    let _c = std::net::TcpStream::connect(addr).unwrap();
    let h = rx.recv().unwrap();
    assert!(h.is_open());
    h.shutdown();
    let (n, open_after) = block_on(got);
    assert_eq!(n, 0, "the receive sees end of stream");
    assert!(!open_after, "the handle is disarmed when the socket closes");
    // Harmless now (the descriptor number may belong to another socket).
    h.shutdown();
    rt.shutdown();
}

#[test]
fn an_idle_watch_closes_a_connection_idle_for_its_limit_but_not_one_with_work_in_flight() {
    let _serial = serial();
    let rt = runtime(1);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Peer port -> milliseconds from accept to end of stream.
    let closed_after = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let server = Server::new("test", ListenerLimits::default());
    let c2 = closed_after.clone();
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    server.serve(listener, rt.handles().to_vec(), move |mut c| {
        let c2 = c2.clone();
        let busy = first.swap(false, std::sync::atomic::Ordering::SeqCst);
        let started = Instant::now();
        async move {
            let watch = std::rc::Rc::new(IdleWatch::default());
            watch.watch(Duration::from_millis(200), c.stream.shutdown_handle());
            // The first connection has a request in flight throughout: never idle.
            if busy {
                watch.request();
            }
            let (r, _) = c.stream.recv(IoBuf::with_capacity(16), 0).await;
            if matches!(r, Ok(0)) {
                c2.lock()
                    .unwrap()
                    .insert(c.peer.port(), started.elapsed().as_millis());
            }
            drop(watch);
        }
    });
    let mut busy = std::net::TcpStream::connect(addr).unwrap();
    wait_until(
        "the first connection to be served",
        Duration::from_secs(5),
        || server.connection_count() == 1,
    );
    let mut idle = std::net::TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 1];
    assert!(matches!(idle.read(&mut b), Ok(0) | Err(_)));
    let port = idle.local_addr().unwrap().port();
    wait_until(
        "the server to record the close",
        Duration::from_secs(5),
        || closed_after.lock().unwrap().contains_key(&port),
    );
    let ms = closed_after.lock().unwrap()[&port];
    assert!(ms >= 200, "closed after {ms} ms, before the limit");
    busy.set_read_timeout(Some(Duration::from_millis(600)))
        .unwrap();
    let e = busy.read(&mut b).unwrap_err();
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "a connection with a request in flight was closed: {e}"
    );
    server.stop();
    rt.shutdown();
}
