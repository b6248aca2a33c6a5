//! The initiator against the fake controller ([`super::fake`]): every I/O path, digests and
//! padding, transfer splitting, status mapping, timeouts, lost connections, malformed PDUs,
//! back-off and reset.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto_nvme::Status;
use reactor::{Config, IoBuf, PollMode, Runtime};

use super::fake::{FakeConfig, FakeTarget, Fault};
use super::*;
use blockdev::{BlockDevice, ErrorKind, WriteFlags, ZeroFlags};

/// A boxed future, for joining several of different types.
type Fut<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

fn runtime(cores: usize) -> Runtime {
    Runtime::start(Config {
        cores,
        mode: PollMode::Interrupt,
        pin: false,
        registered_buffers: 4,
        ..Config::default()
    })
    .expect("start reactors")
}

/// Runs the future `f` builds on reactor `i` and returns its output.
fn on<T, F>(rt: &Runtime, i: usize, f: impl FnOnce() -> F + Send + 'static) -> T
where
    T: Send + 'static,
    F: Future<Output = T> + 'static,
{
    block_on(rt.handles()[i].call(f))
}

/// Polls every future until all are done; outputs in order.
async fn join_all<T>(futs: Vec<Fut<'_, T>>) -> Vec<T> {
    reactor::sync::join_all(futs).await
}

fn pattern(seed: u64, len: usize) -> IoBuf {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut b = IoBuf::zeroed(len);
    for chunk in b.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let v = x.to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    b
}

/// The reactor devices are opened (probed) on, as the engine opens them on one of its own.
fn probe() -> &'static reactor::ReactorHandle {
    static PROBE: std::sync::OnceLock<reactor::ReactorHandle> = std::sync::OnceLock::new();
    PROBE.get_or_init(|| {
        let rt = runtime(1);
        let h = rt.handles()[0].clone();
        // Serves every test of this binary until the process exits.
        std::mem::forget(rt);
        h
    })
}

fn open(t: &FakeTarget, query: &str) -> Arc<NvmfDevice> {
    let p = NvmfParams::parse(&t.uri(query)).expect("parse");
    Arc::new(NvmfDevice::open("fake", p, probe()).expect("open"))
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn parses_and_prints_uris() {
    let p = NvmfParams::parse("nvmf://10.0.0.1/nqn.2024-01.io.ballast:vol1").unwrap();
    assert_eq!(
        p,
        NvmfParams::new("10.0.0.1", 4420, "nqn.2024-01.io.ballast:vol1")
    );
    let u = "nvmf://[::1]:4421/nqn.a%3Ab?nsid=2&hdgst=1&ddgst=1&hostnqn=nqn.2014-08.org.nvmexpress:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427&hostid=1b4e28ba-2fa1-11d2-883f-0016d3cca427&kato=2000&timeout=500&queues=4&qsize=64&ro";
    let p = NvmfParams::parse(u).unwrap();
    assert_eq!(
        (p.host.as_str(), p.port, p.subnqn.as_str()),
        ("::1", 4421, "nqn.a:b")
    );
    assert_eq!(p.nsid, 2);
    assert!(p.hdgst && p.ddgst && p.read_only);
    assert_eq!(
        (p.kato_ms, p.timeout_ms, p.queues, p.qsize),
        (2000, 500, 4, 64)
    );
    assert_eq!(
        p.hostid.unwrap().to_string(),
        "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    );
    assert_eq!(NvmfParams::parse(&p.to_uri()).unwrap(), p);
    for bad in [
        "nvmf://h",
        "nvmf://h/",
        "nvmf://:4420/n",
        "nvmf://h:0/n",
        "nvmf://h:x/n",
        "nvmf://[::1/n",
        "nvmf://h/n?nsid=0",
        "nvmf://h/n?qsize=1",
        "nvmf://h/n?qsize=4096",
        "nvmf://h/n?hdgst=maybe",
        "nvmf://h/n?hostid=xyz",
        "nvmf://h/n?what=1",
        "nvmf://h/n%zz",
    ] {
        assert!(NvmfParams::parse(bad).is_err(), "{bad} should not parse");
    }
    let (nqn, id) = host_identity();
    assert!(nqn.starts_with("nqn.2014-08.org.nvmexpress:uuid:"));
    assert_eq!(host_identity(), (nqn, id), "stable");
}

#[test]
fn statuses_map_to_error_kinds() {
    let k = |s: Status| status_error(s, IoKind::Write, 0, 512).kind();
    assert_eq!(k(Status::LBA_OUT_OF_RANGE), ErrorKind::OutOfRange);
    assert_eq!(k(Status::CAPACITY_EXCEEDED.with_dnr()), ErrorKind::NoSpace);
    assert_eq!(k(Status::RESERVATION_CONFLICT), ErrorKind::Conflict);
    assert_eq!(k(Status::NAMESPACE_WRITE_PROTECTED), ErrorKind::ReadOnly);
    assert_eq!(k(Status::WRITE_TO_READ_ONLY_RANGE), ErrorKind::ReadOnly);
    assert_eq!(k(Status::INVALID_OPCODE), ErrorKind::Unsupported);
    assert_eq!(k(Status::INVALID_FIELD), ErrorKind::InvalidArgument);
    assert_eq!(k(Status::ANA_INACCESSIBLE), ErrorKind::Gone);
    assert_eq!(k(Status::WRITE_FAULT), ErrorKind::Io);
    assert_eq!(k(Status::INTERNAL_ERROR), ErrorKind::Io);
    let msg = status_error(Status::RESERVATION_CONFLICT, IoKind::Write, 0, 512).to_string();
    assert!(msg.contains("sc=0x83"), "{msg}");
}

/// Writes of every size class (in the capsule, R2T in one and several pieces, beyond the
/// transfer limit) at once from two reactors, read back and compared; FUA, flush, write
/// zeroes, unmap; with and without digests and with a padded data offset.
#[test]
fn every_io_path_with_and_without_digests() {
    let rt = runtime(2);
    for (query, cpda, digests) in [("", 0u8, false), ("hdgst=1&ddgst=1", 3u8, true)] {
        let t = FakeTarget::start(FakeConfig {
            cpda,
            c2h_chunk: 100 * 1024,
            ..FakeConfig::default()
        });
        // Through the URI registry, as the engine opens it.
        let dev = crate::open_uri("fake", &t.uri(query), probe()).expect("open_uri");
        let g = dev.geometry();
        assert_eq!((g.block_size, g.num_blocks), (512, 32 * 2048));
        assert_eq!(g.max_io, 1 << 20);
        let caps = dev.capabilities();
        assert!(caps.flush && caps.fua && caps.unmap && caps.write_zeroes && !caps.read_only);
        wait_until("the probe to disconnect", Duration::from_secs(5), || {
            t.counts().open == 0
        });

        let sizes: [(u64, usize); 7] = [
            (0, 512),
            (4096, 4096),
            (65536, 8192),
            (131072, 8704),
            (1 << 20, 300 * 1024),
            (2 << 20, (1 << 20) + (512 << 10)),
            (5 << 20, 64 * 1024),
        ];
        for r in 0..2 {
            let d = dev.clone();
            let base = r as u64 * (8 << 20);
            on(&rt, r, move || async move {
                let writes = sizes
                    .iter()
                    .enumerate()
                    .map(|(i, &(off, len))| {
                        let d = d.clone();
                        Box::pin(async move {
                            let flags = WriteFlags { fua: i % 2 == 0 };
                            d.write(base + off, pattern(base + off, len), flags).await
                        }) as Fut<'_, _>
                    })
                    .collect();
                for w in join_all::<crate::Result<IoBuf>>(writes).await {
                    w.expect("write");
                }
                d.flush().await.expect("flush");
                let reads: Vec<Fut<'_, (u64, crate::Result<IoBuf>)>> = sizes
                    .iter()
                    .map(|&(off, len)| {
                        let d = d.clone();
                        Box::pin(async move { (off, d.read(base + off, IoBuf::zeroed(len)).await) })
                            as Fut<'_, _>
                    })
                    .collect();
                for (off, r) in join_all(reads).await {
                    let got = r.expect("read");
                    assert!(
                        got[..] == pattern(base + off, got.len())[..],
                        "data read at {off} differs"
                    );
                }
            });
        }
        let c = t.counts();
        assert_eq!(c.io_connects, 2, "one I/O queue per reactor: {c:?}");
        assert!(c.in_capsule_writes > 0 && c.r2t_writes > 0, "{c:?}");
        assert_eq!(
            t.read_data(4096, 4096),
            pattern(4096, 4096).to_vec(),
            "the controller has the data"
        );

        let d = dev.clone();
        on(&rt, 0, move || async move {
            d.write_zeroes(4096, 4096, ZeroFlags::default())
                .await
                .expect("write zeroes");
            d.write_zeroes(
                65536,
                8192,
                ZeroFlags {
                    may_unmap: true,
                    fua: true,
                    ..ZeroFlags::default()
                },
            )
            .await
            .expect("write zeroes, may unmap");
            d.unmap(1 << 20, 300 * 1024).await.expect("unmap");
            for (off, len) in [(4096, 4096), (65536, 8192), (1 << 20, 300 * 1024)] {
                let b = d.read(off, IoBuf::zeroed(len)).await.expect("read");
                assert!(b.iter().all(|&x| x == 0), "zeroes at {off}");
            }
            let e = d
                .write_zeroes(
                    0,
                    512,
                    ZeroFlags {
                        fast_only: true,
                        ..ZeroFlags::default()
                    },
                )
                .await
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::NotFast);
            let size = d.geometry().size();
            let e = d.read(size - 512, IoBuf::zeroed(1024)).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::OutOfRange);
            let e = d.read(100, IoBuf::zeroed(512)).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Misaligned);
        });
        drop(dev);
        wait_until("connections to close", Duration::from_secs(5), || {
            t.counts().open == 0
        });
        let _ = digests;
    }
    rt.shutdown();
}

#[test]
fn controller_details_and_transfer_limit() {
    let rt = runtime(1);
    let t = FakeTarget::start(FakeConfig {
        mdts: 1, // 8 KiB per command
        block_size: 4096,
        blocks: 1024,
        ..FakeConfig::default()
    });
    let p = NvmfParams::parse(&t.uri("hdgst=1&ddgst=1&qsize=16")).unwrap();
    let dev = Arc::new(on(&rt, 0, move || async move {
        NvmfDevice::connect("d", p).await.expect("connect")
    }));
    assert!(dev.is_connected());
    let info = dev.controller().expect("identified");
    assert_eq!(info.max_transfer, 8192);
    assert_eq!(info.io_queue_size, 16);
    assert_eq!(info.subnqn, "nqn.2024-01.io.ballast:fake");
    assert!(info.hdgst && info.ddgst);
    assert_eq!(dev.geometry().max_io, 8192);
    assert_eq!(dev.geometry().block_size, 4096);
    let before = t.counts().io_commands;
    let d = dev.clone();
    on(&rt, 0, move || async move {
        d.write(0, pattern(9, 64 * 1024), WriteFlags::default())
            .await
            .expect("write");
        let b = d.read(0, IoBuf::zeroed(64 * 1024)).await.expect("read");
        assert!(b[..] == pattern(9, 64 * 1024)[..]);
    });
    assert_eq!(
        t.counts().io_commands - before,
        16,
        "64 KiB in 8 KiB commands"
    );
    // More commands than the queue holds wait for a free slot.
    let d = dev.clone();
    on(&rt, 0, move || async move {
        let futs = (0..40u64)
            .map(|i| {
                let d = d.clone();
                Box::pin(async move { d.read(i * 4096, IoBuf::zeroed(4096)).await }) as Fut<'_, _>
            })
            .collect();
        for r in join_all::<crate::Result<IoBuf>>(futs).await {
            r.expect("read");
        }
    });
    rt.shutdown();
}

#[test]
fn lost_connection_fails_outstanding_commands_and_reconnects() {
    let rt = runtime(1);
    let t = FakeTarget::start(FakeConfig::default());
    let dev = open(&t, "");
    t.set_fault(Fault::Stall);
    let d = dev.clone();
    let h = rt.handles()[0].clone();
    let pending = h.call(move || async move { d.read(0, IoBuf::zeroed(4096)).await.map(drop) });
    wait_until("the stalled command", Duration::from_secs(5), || {
        t.counts().io_commands > 0
    });
    t.kill_connections();
    let e = block_on(pending).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Gone, "{e}");
    t.set_fault(Fault::None);
    let d = dev.clone();
    on(&rt, 0, move || async move {
        d.read(0, IoBuf::zeroed(4096))
            .await
            .expect("read after reconnect");
    });
    let s = dev.stats();
    assert_eq!(s.associations, 3, "probe, first, reconnect: {s:?}");
    assert!(s.resets >= 1, "{s:?}");
    rt.shutdown();
}

#[test]
fn timeout_fails_the_command_and_resets_the_association() {
    let rt = runtime(1);
    let t = FakeTarget::start(FakeConfig::default());
    let dev = open(&t, "timeout=300");
    let d = dev.clone();
    on(
        &rt,
        0,
        move || async move { d.flush().await.expect("flush") },
    );
    t.set_fault(Fault::Stall);
    let d = dev.clone();
    let (a, b, took) = on(&rt, 0, move || async move {
        let started = Instant::now();
        let d2 = d.clone();
        let r = join_all(vec![
            Box::pin(async move { d.read(0, IoBuf::zeroed(4096)).await.map(drop) }) as Fut<'_, _>,
            Box::pin(async move {
                reactor::sleep(Duration::from_millis(100)).await;
                d2.write(8192, pattern(1, 4096), WriteFlags::default())
                    .await
                    .map(drop)
            }),
        ])
        .await;
        let mut r = r.into_iter();
        (r.next().unwrap(), r.next().unwrap(), started.elapsed())
    });
    let a = a.unwrap_err();
    assert_eq!(a.kind(), ErrorKind::Timeout, "{a}");
    let b = b.unwrap_err();
    assert_eq!(b.kind(), ErrorKind::Gone, "the other command: {b}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(dev.stats().timeouts, 1);
    t.set_fault(Fault::None);
    let d = dev.clone();
    on(&rt, 0, move || async move {
        d.read(0, IoBuf::zeroed(4096))
            .await
            .expect("read after the reset");
    });
    assert_eq!(dev.stats().associations, 3);
    rt.shutdown();
}

#[test]
fn unreachable_target_backs_off_and_reset_reconnects() {
    let rt = runtime(1);
    let t = FakeTarget::start(FakeConfig::default());
    let dev = open(&t, "timeout=1000");
    t.set_fault(Fault::RefuseConnect);
    t.kill_connections();
    let d = dev.clone();
    let (first, second) = on(&rt, 0, move || async move {
        let a = d.read(0, IoBuf::zeroed(512)).await.unwrap_err();
        let b = d.read(0, IoBuf::zeroed(512)).await.unwrap_err();
        (a, b)
    });
    assert_eq!(first.kind(), ErrorKind::Gone, "{first}");
    assert_eq!(second.kind(), ErrorKind::Gone, "{second}");
    assert!(second.to_string().contains("next attempt in"), "{second}");
    assert_eq!(
        dev.stats().failed_connects,
        1,
        "no attempt during the back-off"
    );
    assert!(dev.last_error().is_some());
    std::thread::sleep(Duration::from_millis(150));
    let d = dev.clone();
    on(&rt, 0, move || async move {
        d.read(0, IoBuf::zeroed(512)).await.unwrap_err();
    });
    assert_eq!(dev.stats().failed_connects, 2, "an attempt after 100 ms");
    t.set_fault(Fault::None);
    // The back-off is 200 ms now; reset() reconnects at once.
    let d = dev.clone();
    on(&rt, 0, move || async move {
        d.reset().await.expect("reset reconnects");
        d.read(0, IoBuf::zeroed(512)).await.expect("read");
    });
    assert!(dev.is_connected());
    rt.shutdown();
}

#[test]
fn bad_pdus_close_the_connection_without_panicking() {
    let rt = runtime(1);
    let t = FakeTarget::start(FakeConfig::default());
    let dev = open(&t, "hdgst=1&ddgst=1&timeout=2000");
    for (fault, kind) in [
        (Fault::Garbage, ErrorKind::Io),
        (Fault::UnknownCid, ErrorKind::Io),
        (Fault::Drop, ErrorKind::Gone),
    ] {
        let before = t.counts().term_reqs;
        t.set_fault(fault);
        let d = dev.clone();
        let e = on(&rt, 0, move || async move {
            d.read(0, IoBuf::zeroed(4096)).await.unwrap_err()
        });
        assert_eq!(e.kind(), kind, "{fault:?}: {e}");
        if kind == ErrorKind::Io {
            assert!(e.to_string().contains("protocol error"), "{e}");
            wait_until("an H2CTermReq", Duration::from_secs(5), || {
                t.counts().term_reqs > before
            });
        }
        t.set_fault(Fault::None);
        let d = dev.clone();
        on(&rt, 0, move || async move {
            d.read(0, IoBuf::zeroed(4096))
                .await
                .expect("read after reconnect");
        });
    }
    // A data digest error fails the command only.
    let assoc = dev.stats().associations;
    t.set_fault(Fault::BadDataDigest);
    let d = dev.clone();
    let e = on(&rt, 0, move || async move {
        d.read(0, IoBuf::zeroed(4096)).await.unwrap_err()
    });
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.to_string().contains("data digest"), "{e}");
    t.set_fault(Fault::None);
    let d = dev.clone();
    on(&rt, 0, move || async move {
        d.read(0, IoBuf::zeroed(4096)).await.expect("read");
    });
    assert_eq!(dev.stats().associations, assoc, "the connection stayed up");
    assert_eq!(dev.stats().digest_errors, 1);
    rt.shutdown();
}

#[test]
fn error_statuses_fail_the_io_and_keep_the_connection() {
    let rt = runtime(1);
    let t = FakeTarget::start(FakeConfig::default());
    let dev = open(&t, "");
    for (st, kind) in [
        (Status::RESERVATION_CONFLICT, ErrorKind::Conflict),
        (Status::CAPACITY_EXCEEDED, ErrorKind::NoSpace),
        (Status::LBA_OUT_OF_RANGE.with_dnr(), ErrorKind::OutOfRange),
        (Status::WRITE_FAULT, ErrorKind::Io),
    ] {
        t.set_fault(Fault::Status(st));
        let d = dev.clone();
        let e = on(&rt, 0, move || async move {
            d.write(0, pattern(3, 64 * 1024), WriteFlags::default())
                .await
                .unwrap_err()
        });
        assert_eq!(e.kind(), kind, "{st:?}: {e}");
    }
    t.set_fault(Fault::None);
    assert_eq!(dev.stats().associations, 2, "probe and one association");
    assert_eq!(dev.stats().resets, 0);
    rt.shutdown();
}

#[test]
fn keep_alive_runs_and_a_silent_controller_is_dropped() {
    let rt = runtime(1);
    let t = FakeTarget::start(FakeConfig::default());
    let dev = open(&t, "kato=200&timeout=300");
    assert_eq!(t.counts().kato_ms, 200);
    let d = dev.clone();
    on(
        &rt,
        0,
        move || async move { d.flush().await.expect("flush") },
    );
    std::thread::sleep(Duration::from_millis(700));
    assert!(dev.stats().keep_alives >= 3, "{:?}", dev.stats());
    assert!(dev.is_connected());
    t.set_fault(Fault::StallKeepAlive);
    wait_until("the association to drop", Duration::from_secs(5), || {
        !dev.is_connected()
    });
    assert!(dev.stats().timeouts >= 1);
    t.set_fault(Fault::None);
    let d = dev.clone();
    on(&rt, 0, move || async move {
        d.flush().await.expect("flush after reconnect")
    });
    rt.shutdown();
}

#[test]
fn open_fails_cleanly_and_drop_disconnects() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let p = NvmfParams::parse(&format!("nvmf://{closed}/nqn.x:y?timeout=500")).unwrap();
    let e = NvmfDevice::open("x", p, probe()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Gone, "{e}");
    assert!(e.to_string().contains("cannot connect"), "{e}");

    let rt = runtime(1);
    let t = FakeTarget::start(FakeConfig::default());
    let dev = open(&t, "");
    let d = dev.clone();
    on(
        &rt,
        0,
        move || async move { d.flush().await.expect("flush") },
    );
    wait_until(
        "admin and one I/O queue open",
        Duration::from_secs(5),
        || t.counts().open == 2,
    );
    drop(dev);
    wait_until("the connections to close", Duration::from_secs(5), || {
        t.counts().open == 0
    });
    rt.shutdown();
}

#[test]
fn an_early_r2t_is_answered_after_the_current_one() {
    let rt = runtime(1);
    let t = FakeTarget::start(FakeConfig {
        eager_r2t: true,
        r2t_chunk: 256 * 1024,
        maxh2cdata: 4096,
        ..FakeConfig::default()
    });
    let dev = open(&t, "ddgst=1");
    let d = dev.clone();
    on(&rt, 0, move || async move {
        let data = pattern(77, 1 << 20);
        d.write(4096, IoBuf::from_slice(&data), WriteFlags::default())
            .await
            .expect("write");
        let b = d.read(4096, IoBuf::zeroed(1 << 20)).await.expect("read");
        assert!(b[..] == data[..]);
    });
    assert_eq!(t.read_data(4096, 1 << 20), pattern(77, 1 << 20).to_vec());
    assert_eq!(dev.stats().resets, 0);
    rt.shutdown();
}

/// Polls each future once (they must all be pending), in order.
async fn poll_once(futs: &mut [Fut<'_, crate::Result<()>>]) {
    std::future::poll_fn(|cx| {
        for f in futs.iter_mut() {
            assert!(f.as_mut().poll(cx).is_pending(), "expected to wait");
        }
        std::task::Poll::Ready(())
    })
    .await
}

#[test]
fn a_command_dropped_after_it_was_queued_goes_out_and_frees_its_slot_when_answered() {
    let rt = runtime(1);
    let t = FakeTarget::start(FakeConfig::default());
    // Two commands at a time (queue size 3).
    let dev = open(&t, "qsize=3&timeout=2000");
    let d = dev.clone();
    on(&rt, 0, move || async move {
        d.read(0, IoBuf::zeroed(4096)).await.expect("connect");
        // The write takes the socket (its send is under way); the read is queued behind it
        // in the outbox. The read's caller then gives up: its capsule still goes out whole
        // (the framing stays intact) and the queue lives on.
        let mut futs: Vec<Fut<'_, _>> = vec![
            Box::pin(unit(d.write(0, pattern(3, 4096), WriteFlags::default()))),
            Box::pin(unit(d.read(4096, IoBuf::zeroed(4096)))),
        ];
        poll_once(&mut futs).await;
        let read = futs.pop().expect("read");
        drop(read);
        let write = futs.pop().expect("write");
        write.await.expect("write");
        d.read(0, IoBuf::zeroed(4096))
            .await
            .expect("the queue lives on");
    });
    assert_eq!(t.counts().io_commands, 4, "the dropped read was sent");
    // Both slots are free again once the controller answered the dropped read: two
    // commands the controller does not answer are both sent (a slot still held for the
    // dropped read would hold the second back).
    t.set_fault(Fault::Stall);
    let d = dev.clone();
    let pending = rt.handles()[0].call(move || async move {
        join_all(vec![
            Box::pin(unit(d.read(0, IoBuf::zeroed(4096)))) as Fut<'_, _>,
            Box::pin(unit(d.read(4096, IoBuf::zeroed(4096)))),
        ])
        .await
        .into_iter()
        .map(|r| r.map_err(|e| e.kind()))
        .collect::<Vec<_>>()
    });
    wait_until("both commands on the wire", Duration::from_secs(1), || {
        t.counts().io_commands == 6
    });
    let r = block_on(pending);
    assert_eq!(r, [Err(ErrorKind::Timeout), Err(ErrorKind::Timeout)]);
    rt.shutdown();
}

#[test]
fn a_command_dropped_while_it_is_sent_goes_out_whole_and_the_queue_lives_on() {
    let rt = runtime(1);
    let t = FakeTarget::start(FakeConfig::default());
    let dev = open(&t, "timeout=2000");
    let d = dev.clone();
    on(&rt, 0, move || async move {
        d.read(0, IoBuf::zeroed(4096)).await.expect("connect");
        let mut futs: Vec<Fut<'_, _>> = vec![Box::pin(unit(d.write(
            0,
            pattern(4, 8192),
            WriteFlags::default(),
        )))];
        poll_once(&mut futs).await;
        // Its caller was the one sending: the send goes on without it, the capsule goes
        // out whole and the stream keeps its framing.
        drop(futs);
        d.read(0, IoBuf::zeroed(4096))
            .await
            .expect("read on the same association");
    });
    assert_eq!(t.counts().io_commands, 3, "the dropped write was sent");
    let s = dev.stats();
    assert_eq!(s.resets, 0, "{s:?}");
    assert_eq!(s.associations, 2, "probe, first: {s:?}");
    rt.shutdown();
}

/// `Result<T>` to `Result<()>`, to join futures of different outputs.
async fn unit<T>(f: impl Future<Output = crate::Result<T>>) -> crate::Result<()> {
    f.await.map(drop)
}

#[test]
fn reads_end_with_a_capsule_response_or_a_success_flag() {
    let rt = runtime(1);
    for c2h_success in [false, true] {
        let t = FakeTarget::start(FakeConfig {
            c2h_success,
            c2h_chunk: 64 * 1024,
            ..FakeConfig::default()
        });
        let dev = open(&t, "ddgst=1&hdgst=1");
        let d = dev.clone();
        on(&rt, 0, move || async move {
            let data = pattern(9, 1 << 20);
            d.write(0, IoBuf::from_slice(&data), WriteFlags::default())
                .await
                .expect("write");
            // One C2HData PDU, and sixteen.
            for len in [4096usize, 1 << 20] {
                let b = d.read(0, IoBuf::zeroed(len)).await.expect("read");
                assert!(b[..] == data[..len], "{len} bytes read back");
            }
        });
        let s = dev.stats();
        assert_eq!((s.resets, s.digest_errors), (0, 0), "{s:?}");
        drop(dev);
    }
    rt.shutdown();
}
