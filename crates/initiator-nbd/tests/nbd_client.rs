//! The NBD initiator against real servers: nbdkit (memory, file, filters injecting errors,
//! delays and block-size policies) and qemu-storage-daemon.

mod nbd_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::{BlockDevice, ErrorKind, ExtentState, IoBuf, WriteFlags, ZeroFlags};
use initiator_nbd::NbdDevice;
use nbd_support::*;
use reactor::Runtime;

const MIB: u64 = 1 << 20;

/// One worker's share of the device: its region's offset and expected contents.
type Region = (u64, Vec<u8>);

/// Random-pattern I/O at queue depth `workers` on each of the two reactors at once: every
/// worker owns a region and, `ops` times, writes 4 KiB..1 MiB of random bytes at a random
/// 4 KiB-aligned offset in it (every fourth write FUA), reads it back and compares CRC-32s.
/// Returns the model of the device (`initial` updated with every write).
fn pattern_io(
    rt: &Runtime,
    dev: &Arc<NbdDevice>,
    initial: Vec<u8>,
    ops: usize,
    seed: u64,
) -> Vec<u8> {
    let workers = 4u64;
    let size = initial.len() as u64;
    let region = size / (2 * workers);
    let mut calls = Vec::new();
    for r in 0..2u64 {
        let mut jobs = Vec::new();
        for w in 0..workers {
            let base = (r * workers + w) * region;
            let model = initial[base as usize..(base + region) as usize].to_vec();
            jobs.push((base, model));
        }
        let dev = dev.clone();
        calls.push(rt.handles()[r as usize].call(move || async move {
            let handles: Vec<_> = jobs
                .into_iter()
                .map(|(base, mut model)| {
                    let dev = dev.clone();
                    reactor::spawn_local(async move {
                        let mut rng = Rng::new(seed ^ base);
                        for i in 0..ops {
                            let len = 4096 * (1 + rng.below(256));
                            let off = 4096 * rng.below((region - len) / 4096 + 1);
                            let mut data = vec![0u8; len as usize];
                            rng.fill(&mut data);
                            let crc = crc32(&data);
                            let flags = WriteFlags { fua: i % 4 == 3 };
                            let at = base + off;
                            dev.write(at, IoBuf::from_slice(&data), flags)
                                .await
                                .unwrap_or_else(|e| panic!("write {len} at {at}: {e}"));
                            let back = dev
                                .read(at, IoBuf::zeroed(len as usize))
                                .await
                                .unwrap_or_else(|e| panic!("read {len} at {at}: {e}"));
                            assert_eq!(crc32(&back), crc, "read-back of {len} bytes at {at}");
                            model[off as usize..(off + len) as usize].copy_from_slice(&data);
                        }
                        (base, model)
                    })
                })
                .collect();
            let mut out: Vec<Region> = Vec::new();
            for h in handles {
                out.push(h.await);
            }
            out
        }));
    }
    let mut model = initial;
    for c in calls {
        for (base, data) in block_on(c) {
            model[base as usize..base as usize + data.len()].copy_from_slice(&data);
        }
    }
    model
}

/// Reads the whole device (1 MiB at a time, alternating reactors) and compares it with
/// `model`, chunk by chunk, by CRC-32.
fn verify(rt: &Runtime, dev: &Arc<NbdDevice>, model: &[u8]) {
    let size = model.len() as u64;
    let mut at = 0;
    let mut i = 0;
    while at < size {
        let n = MIB.min(size - at);
        let d = dev.clone();
        let got = on(rt, i % 2, move || async move {
            d.read(at, IoBuf::zeroed(n as usize))
                .await
                .map(|b| b.to_vec())
        })
        .unwrap_or_else(|e| panic!("read {n} at {at}: {e}"));
        assert_eq!(
            crc32(&got),
            crc32(&model[at as usize..(at + n) as usize]),
            "contents differ in the MiB at {at}"
        );
        at += n;
        i += 1;
    }
}

#[test]
fn nbdkit_memory_pattern_io_on_a_connection_per_reactor() {
    let srv = nbdkit(&["memory", "64M"]);
    let dev = open(&format!("nbd://127.0.0.1:{}/", srv.port));
    let g = dev.geometry();
    assert_eq!((g.block_size, g.size()), (512, 64 * MIB));
    assert!(g.max_io >= 1 << 20, "max_io {}", g.max_io);
    let caps = dev.capabilities();
    assert!(caps.flush && caps.fua && caps.unmap && caps.write_zeroes && caps.block_status);
    assert!(!caps.read_only);
    assert!(dev.multi_conn(), "nbdkit memory allows multi-conn");

    let rt = runtime();
    let model = pattern_io(&rt, &dev, vec![0; (64 * MIB) as usize], 12, 1);
    assert_eq!(dev.connections(), 2, "one connection per reactor");
    let d = dev.clone();
    on(&rt, 0, move || async move { d.flush().await }).expect("flush");
    verify(&rt, &dev, &model);
    drop(dev);
    rt.shutdown();
}

#[test]
fn nbdkit_memory_single_connection_shared_by_reactors() {
    let srv = nbdkit(&["memory", "64M"]);
    let dev = open(&format!("nbd://127.0.0.1:{}/?multi_conn=0", srv.port));
    assert!(!dev.multi_conn());
    let rt = runtime();
    let model = pattern_io(&rt, &dev, vec![0; (64 * MIB) as usize], 8, 2);
    assert_eq!(
        dev.connections(),
        1,
        "the second reactor hands its requests to the first"
    );
    let d = dev.clone();
    on(&rt, 1, move || async move { d.flush().await }).expect("flush from the other reactor");
    verify(&rt, &dev, &model);
    drop(dev);
    rt.shutdown();
}

#[test]
fn simple_replies_when_the_server_offers_no_structured_replies() {
    let srv = nbdkit(&["--no-sr", "memory", "16M"]);
    let dev = open(&format!("nbd://127.0.0.1:{}/", srv.port));
    let info = dev.export_info();
    assert!(!info.structured && info.allocation_context.is_none());
    assert!(!dev.capabilities().block_status);
    let rt = runtime();
    let model = pattern_io(&rt, &dev, vec![0; (16 * MIB) as usize], 6, 7);
    verify(&rt, &dev, &model);
    drop(dev);
    rt.shutdown();
}

#[test]
fn trim_write_zeroes_fua_and_holes_on_nbdkit_memory() {
    let srv = nbdkit(&["memory", "64M"]);
    let dev = open(&format!("nbd://127.0.0.1:{}/", srv.port));
    let rt = runtime();
    let d = dev.clone();
    on(&rt, 0, move || async move {
        // A fresh memory export is one hole.
        let x = d.block_status(0, 8 * MIB).await.expect("block status");
        assert_eq!(x[0].offset, 0);
        assert_eq!(x[0].state, ExtentState::Hole, "{x:?}");

        // Data where written, holes around it.
        let data = vec![0xa5u8; 256 * 1024];
        d.write(MIB, IoBuf::from_slice(&data), WriteFlags { fua: true })
            .await
            .expect("FUA write");
        let x = d.block_status(0, 8 * MIB).await.expect("block status");
        let state_at = |o: u64| {
            x.iter()
                .find(|e| e.offset <= o && o < e.offset + e.len)
                .map(|e| e.state)
        };
        assert_eq!(state_at(0), Some(ExtentState::Hole), "{x:?}");
        assert_eq!(state_at(MIB + 4096), Some(ExtentState::Data), "{x:?}");
        assert_eq!(state_at(4 * MIB), Some(ExtentState::Hole), "{x:?}");
        let mut covered = 0;
        for e in &x {
            assert_eq!(e.offset, covered, "extents are contiguous: {x:?}");
            covered += e.len;
        }
        assert!(covered > 0 && covered <= 8 * MIB);

        // Trim: reads zeroes, reported as a hole again.
        d.unmap(MIB, 256 * 1024).await.expect("trim");
        let b = d.read(MIB, IoBuf::zeroed(256 * 1024)).await.expect("read");
        assert!(b.iter().all(|&v| v == 0), "trimmed range reads zeroes");
        let x = d.block_status(MIB, 256 * 1024).await.expect("block status");
        assert_eq!(x[0].state, ExtentState::Hole, "{x:?}");

        // Write zeroes, with and without leaving holes, and fast-only.
        d.write(2 * MIB, IoBuf::from_slice(&data), WriteFlags::default())
            .await
            .expect("write");
        d.write_zeroes(
            2 * MIB,
            128 * 1024,
            ZeroFlags {
                may_unmap: false,
                fast_only: false,
                fua: true,
            },
        )
        .await
        .expect("write zeroes (no hole, FUA)");
        d.write_zeroes(
            2 * MIB + 128 * 1024,
            128 * 1024,
            ZeroFlags {
                may_unmap: true,
                ..ZeroFlags::default()
            },
        )
        .await
        .expect("write zeroes (may unmap)");
        let b = d
            .read(2 * MIB, IoBuf::zeroed(256 * 1024))
            .await
            .expect("read");
        assert!(b.iter().all(|&v| v == 0), "zeroed range reads zeroes");
        let fast = d
            .write_zeroes(
                3 * MIB,
                4096,
                ZeroFlags {
                    fast_only: true,
                    ..ZeroFlags::default()
                },
            )
            .await;
        match fast {
            Ok(()) => {}
            Err(e) => assert_eq!(e.kind(), ErrorKind::NotFast, "{e}"),
        }

        // Out of range and misaligned requests never reach the server.
        let e = d.read(64 * MIB, IoBuf::zeroed(512)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::OutOfRange);
        let e = d.read(100, IoBuf::zeroed(512)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Misaligned);
        d.flush().await.expect("flush");
    });
    drop(dev);
    rt.shutdown();
}

#[test]
fn qemu_storage_daemon_file_export() {
    let dir = TempDir::new("qsd");
    let img = dir.0.join("disk.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(32 * MIB))
        .expect("sparse image");
    let srv = qsd(&img, 0, true);
    let dev = open(&format!("nbd://127.0.0.1:{}/x", srv.port));
    assert_eq!(dev.geometry().size(), 32 * MIB);
    let caps = dev.capabilities();
    assert!(caps.flush && caps.fua && caps.unmap && caps.write_zeroes && caps.block_status);
    let rt = runtime();

    // A sparse file: holes before anything is written.
    let d = dev.clone();
    let x = on(
        &rt,
        0,
        move || async move { d.block_status(0, 32 * MIB).await },
    )
    .expect("status");
    assert_eq!(x[0].state, ExtentState::Hole, "{x:?}");

    let model = pattern_io(&rt, &dev, vec![0; (32 * MIB) as usize], 8, 3);
    let d = dev.clone();
    on(&rt, 1, move || async move { d.flush().await }).expect("flush");
    verify(&rt, &dev, &model);
    // What the server wrote is in the file.
    let file = std::fs::read(&img).expect("read image");
    assert_eq!(file.len(), model.len());
    assert!(file == model, "the image file holds what was written");

    // Trim and zeroes through qemu's block layer.
    let d = dev.clone();
    on(&rt, 1, move || async move {
        d.write_zeroes(0, MIB, ZeroFlags::default()).await?;
        d.unmap(MIB, MIB).await?;
        let b = d.read(0, IoBuf::zeroed(MIB as usize)).await?;
        assert!(b.iter().all(|&v| v == 0));
        d.flush().await
    })
    .expect("zeroes and trim");
    drop(dev);
    rt.shutdown();
}

#[test]
fn qemu_nbd_single_session() {
    // qemu-nbd without --persistent serves one client session and exits when it ends: the
    // connection negotiated at open must be the one the I/O uses, and dropping the device
    // must end the session cleanly.
    let dir = TempDir::new("qemu-nbd");
    let img = dir.0.join("disk.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(16 * MIB))
        .expect("image");
    let mut srv = qemu_nbd(&img);
    let dev = open(&format!("nbd://127.0.0.1:{}/x", srv.port));
    assert!(!dev.multi_conn(), "qemu-nbd shares one connection");
    let rt = runtime();
    let model = pattern_io(&rt, &dev, vec![0; (16 * MIB) as usize], 6, 8);
    let d = dev.clone();
    on(&rt, 1, move || async move { d.flush().await }).expect("flush");
    verify(&rt, &dev, &model);
    assert_eq!(dev.connections(), 1);
    drop(dev);
    // The soft disconnect ends qemu-nbd's session, and qemu-nbd with it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = srv.child.try_wait().expect("wait qemu-nbd") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "qemu-nbd still running after the disconnect"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "qemu-nbd exited with {status}");
    assert!(
        std::fs::read(&img).expect("image") == model,
        "the image holds what was written"
    );
    rt.shutdown();
}

#[test]
fn read_only_exports_refuse_writes() {
    let srv = nbdkit(&["-r", "memory", "16M"]);
    let dir = TempDir::new("ro");
    let img = dir.0.join("ro.img");
    std::fs::write(&img, vec![7u8; (4 * MIB) as usize]).expect("image");
    let q = qsd(&img, 0, false);
    let rt = runtime();
    for uri in [
        format!("nbd://127.0.0.1:{}/", srv.port),
        format!("nbd://127.0.0.1:{}/x", q.port),
    ] {
        let dev = open(&uri);
        let caps = dev.capabilities();
        assert!(
            caps.read_only && !caps.unmap && !caps.write_zeroes,
            "{uri}: {caps:?}"
        );
        let d = dev.clone();
        on(&rt, 0, move || async move {
            let e = d
                .write(0, IoBuf::zeroed(4096), WriteFlags::default())
                .await
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ReadOnly, "{e}");
            let e = d.unmap(0, 4096).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ReadOnly, "{e}");
            let e = d
                .write_zeroes(0, 4096, ZeroFlags::default())
                .await
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ReadOnly, "{e}");
            d.read(0, IoBuf::zeroed(4096))
                .await
                .expect("reads still work");
        });
    }
    rt.shutdown();
}

#[test]
fn block_size_constraints_are_honoured() {
    // The policy filter rejects (EINVAL) any request breaking the advertised constraints.
    let srv = nbdkit(&[
        "--filter=blocksize-policy",
        "memory",
        "16M",
        "blocksize-minimum=4096",
        "blocksize-preferred=65536",
        "blocksize-maximum=1M",
        "blocksize-error-policy=error",
    ]);
    let dev = open(&format!("nbd://127.0.0.1:{}/", srv.port));
    let g = dev.geometry();
    assert_eq!(
        (g.block_size, g.optimal_io, g.max_io),
        (4096, 65536, 1 << 20)
    );
    let info = dev.export_info();
    assert_eq!((info.min_block, info.max_block), (4096, 1 << 20));
    let rt = runtime();
    let d = dev.clone();
    on(&rt, 0, move || async move {
        // 3 MiB: split into commands of at most 1 MiB.
        let mut data = vec![0u8; 3 << 20];
        Rng::new(9).fill(&mut data);
        d.write(4096, IoBuf::from_slice(&data), WriteFlags::default())
            .await
            .expect("large write");
        let back = d
            .read(4096, IoBuf::zeroed(3 << 20))
            .await
            .expect("large read");
        assert!(back[..] == data[..]);
        let e = d
            .write(512, IoBuf::zeroed(512), WriteFlags::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Misaligned);
    });
    drop(dev);
    rt.shutdown();
}

#[test]
fn server_errors_map_to_error_kinds() {
    let rt = runtime();
    let cases = [
        ("ENOSPC", "error-pwrite-rate=100%", ErrorKind::NoSpace),
        ("EIO", "error-pread-rate=100%", ErrorKind::Io),
        ("EPERM", "error-trim-rate=100%", ErrorKind::ReadOnly),
        ("EINVAL", "error-zero-rate=100%", ErrorKind::InvalidArgument),
        ("ESHUTDOWN", "error-pread-rate=100%", ErrorKind::Gone),
    ];
    for (errno, rate, kind) in cases {
        let srv = nbdkit(&[
            "--filter=error",
            "memory",
            "16M",
            &format!("error={errno}"),
            rate,
        ]);
        let dev = open(&format!("nbd://127.0.0.1:{}/", srv.port));
        let d = dev.clone();
        let got = on(&rt, 0, move || async move {
            let r = if rate.contains("pwrite") {
                d.write(0, IoBuf::zeroed(4096), WriteFlags::default())
                    .await
                    .map(drop)
            } else if rate.contains("pread") {
                d.read(0, IoBuf::zeroed(4096)).await.map(drop)
            } else if rate.contains("trim") {
                d.unmap(0, 4096).await
            } else {
                d.write_zeroes(0, 4096, ZeroFlags::default()).await
            };
            // Other commands on the same connection still work.
            let flushed = d.flush().await;
            (r.unwrap_err(), flushed)
        });
        let (e, flushed) = got;
        assert_eq!(e.kind(), kind, "{errno}: {e}");
        assert!(e.to_string().contains(errno), "{errno}: {e}");
        if errno != "ESHUTDOWN" {
            flushed.expect("the connection survives an error reply");
        }
    }
    rt.shutdown();
}

#[test]
fn a_command_timeout_fails_it_and_the_next_io_reconnects() {
    // Reads take 3 s; the timeout is 300 ms.
    let srv = nbdkit(&["--filter=delay", "memory", "16M", "rdelay=3"]);
    let dev = open(&format!("nbd://127.0.0.1:{}/?timeout=300", srv.port));
    let rt = runtime();
    let d = dev.clone();
    on(&rt, 0, move || async move {
        let t = Instant::now();
        let e = d.read(0, IoBuf::zeroed(4096)).await.unwrap_err();
        let took = t.elapsed();
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
            "timed out after {took:?}"
        );
        // Writes are not delayed: the next I/O gets a fresh connection.
        d.write(0, IoBuf::from_slice(&[1u8; 4096]), WriteFlags::default())
            .await
            .expect("write after the timeout");
        d.flush().await.expect("flush");
    });
    drop(dev);
    rt.shutdown();
}

#[test]
fn unix_socket_export() {
    let dir = TempDir::new("unix");
    let sock = dir.0.join("nbd.sock");
    let _srv = nbdkit_unix(&sock, &["memory", "8M"]);
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let by_uri = initiator_nbd::open_uri("u", &uri).expect("open_uri");
    assert_eq!((by_uri.kind(), by_uri.geometry().size()), ("nbd", 8 * MIB));
    drop(by_uri);
    let dev = open(&uri);
    assert_eq!(dev.geometry().size(), 8 * MIB);
    let rt = runtime();
    let model = pattern_io(&rt, &dev, vec![0; (8 * MIB) as usize], 4, 4);
    // New connections over the socket, on both reactors.
    let d = dev.clone();
    on(&rt, 0, move || async move { d.reset().await }).expect("reset");
    verify(&rt, &dev, &model);
    drop(dev);
    rt.shutdown();
}

#[test]
fn server_killed_mid_io_then_restarted() {
    let dir = TempDir::new("restart");
    let img = dir.0.join("disk.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(16 * MIB))
        .expect("image");
    let mut srv = qsd(&img, 0, true);
    let port = srv.port;
    let dev = open(&format!(
        "nbd://127.0.0.1:{port}/x?timeout=2000&connect_timeout=1000"
    ));
    let rt = runtime();

    // Data made durable before the crash.
    let mut before = vec![0u8; (4 * MIB) as usize];
    Rng::new(5).fill(&mut before);
    let (d, b) = (dev.clone(), before.clone());
    on(&rt, 0, move || async move {
        d.write(0, IoBuf::from_slice(&b), WriteFlags::default())
            .await?;
        d.flush().await
    })
    .expect("write and flush before the crash");

    // A stream of writes from both reactors while the server is killed.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut streams = Vec::new();
    for r in 0..2usize {
        let (d, stop) = (dev.clone(), stop.clone());
        streams.push(rt.handles()[r].call(move || async move {
            let mut errors = Vec::new();
            let mut ok = 0u64;
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let at = 8 * MIB + (r as u64 * 4 + i % 4) * MIB / 2;
                let res = d
                    .write(
                        at,
                        IoBuf::from_slice(&[i as u8; 65536]),
                        WriteFlags::default(),
                    )
                    .await;
                match res {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        errors.push(e.kind());
                        // Do not spin while the server is down.
                        reactor::sleep(Duration::from_millis(20)).await;
                    }
                }
                i += 1;
            }
            (ok, errors)
        }));
    }
    std::thread::sleep(Duration::from_millis(300));
    srv.kill();
    std::thread::sleep(Duration::from_millis(500));
    let mut srv2 = qsd(&img, port, true);
    assert_eq!(srv2.port, port);

    // The device comes back by itself (bounded by the back-off) and the data is there.
    let deadline = Instant::now() + Duration::from_secs(20);
    let back = loop {
        let d = dev.clone();
        match on(&rt, 0, move || async move {
            d.read(0, IoBuf::zeroed((4 * MIB) as usize))
                .await
                .map(|b| b.to_vec())
        }) {
            Ok(b) => break b,
            Err(e) => {
                assert!(
                    matches!(
                        e.kind(),
                        ErrorKind::Gone | ErrorKind::Io | ErrorKind::Timeout
                    ),
                    "unexpected error while the server restarts: {e}"
                );
                assert!(Instant::now() < deadline, "no reconnection: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert!(back == before, "data flushed before the crash survives it");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in streams {
        let (ok, errors) = block_on(s);
        assert!(ok > 0, "writes succeeded around the crash");
        assert!(
            !errors.is_empty(),
            "the crash was seen by in-flight or later I/O"
        );
        for k in errors {
            assert!(
                matches!(k, ErrorKind::Gone | ErrorKind::Io | ErrorKind::Timeout),
                "errors after a crash are transport errors, not {k:?}"
            );
        }
    }
    // reset() forces a fresh connection, which works.
    let d = dev.clone();
    on(&rt, 1, move || async move {
        d.reset().await?;
        d.write(0, IoBuf::from_slice(&[3u8; 4096]), WriteFlags::default())
            .await?;
        d.flush().await
    })
    .expect("reset, then I/O");
    srv2.kill();
    drop(dev);
    rt.shutdown();
}

/// Not a gate: 4 KiB random reads at queue depth 32 (16 per reactor) against nbdkit memory
/// for 3 s, with a connection per reactor and with one shared connection, printed for
/// comparison with fio (`ioengine=nbd`, one connection) on the same server. Run with
/// `cargo test --release -p blockdev --test nbd_client -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput_4k_random_reads() {
    let srv = nbdkit(&["memory", "256M"]);
    let rt = runtime();
    for query in ["", "?multi_conn=0"] {
        let dev = open(&format!("nbd://127.0.0.1:{}/{query}", srv.port));
        let secs = 3.0;
        let mut calls = Vec::new();
        for r in 0..2usize {
            let dev = dev.clone();
            calls.push(rt.handles()[r].call(move || async move {
                let until = Instant::now() + Duration::from_secs_f64(secs);
                let hs: Vec<_> = (0..16u64)
                    .map(|w| {
                        let dev = dev.clone();
                        reactor::spawn_local(async move {
                            let mut rng = Rng::new(w * 31 + r as u64);
                            let mut n = 0u64;
                            let mut buf = IoBuf::zeroed(4096);
                            while Instant::now() < until {
                                let at = 4096 * rng.below(256 * 256);
                                buf = dev.read(at, buf).await.expect("read");
                                n += 1;
                            }
                            n
                        })
                    })
                    .collect();
                let mut total = 0;
                for h in hs {
                    total += h.await;
                }
                total
            }));
        }
        let total: u64 = calls.into_iter().map(block_on).sum();
        println!(
            "nbd initiator: {:.0} IOPS (4 KiB random read, QD32, {} connection(s))",
            total as f64 / secs,
            dev.connections()
        );
    }
    rt.shutdown();
}
