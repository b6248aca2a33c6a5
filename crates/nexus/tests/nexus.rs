//! The nexus over RAM children with injected faults: fan-out, balanced reads, children
//! retired on errors and timeouts with the application's I/O succeeding, I/O held while no
//! child is online, full rebuild skipping holes, partial rebuild from the dirty-region log
//! (also after a restart), rebuild under concurrent writes, rate limit.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::malloc::MallocDevice;
use blockdev::{BlockDevice, Device, ErrorKind, IoBuf, WriteFlags};
use common::{Faulty, MIB, SIZE, pattern, run};
use nexus::{ChildSpec, ChildState, Nexus, NexusOptions, NexusState};

fn opts() -> NexusOptions {
    NexusOptions {
        io_timeout: Duration::from_millis(300),
        hold_timeout: Duration::from_secs(3),
        ..NexusOptions::default()
    }
}

fn spec(name: &str, c: &Arc<Faulty>, healthy: bool) -> ChildSpec {
    ChildSpec {
        name: name.into(),
        dev: c.dev.clone(),
        healthy,
    }
}

async fn nexus_over(children: &[(&str, &Arc<Faulty>)], drl: Option<Device>) -> Arc<Nexus> {
    Nexus::create(
        "n",
        SIZE,
        children.iter().map(|(n, c)| spec(n, c, true)).collect(),
        drl,
        opts(),
    )
    .await
    .unwrap()
}

/// Writes `n` 64 KiB blocks at spread offsets (seeded), returns (offset, seed) pairs.
async fn write_some(n: &Nexus, count: u64, seed: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for i in 0..count {
        let off = ((seed * 7 + i * 13) % (SIZE / (64 << 10))) * (64 << 10);
        n.write(off, pattern(seed + i, 64 << 10), WriteFlags::default())
            .await
            .unwrap();
        out.push((off, seed + i));
    }
    n.flush().await.unwrap();
    out
}

async fn check(n: &Nexus, written: &[(u64, u64)]) {
    // Later writes to the same offset win.
    let mut last = std::collections::BTreeMap::new();
    for &(off, seed) in written {
        last.insert(off, seed);
    }
    for (off, seed) in last {
        let got = n.read(off, IoBuf::zeroed(64 << 10)).await.unwrap();
        assert_eq!(&got[..], &pattern(seed, 64 << 10)[..], "offset {off}");
    }
}

#[test]
fn writes_reach_every_child_and_a_failing_child_is_retired_without_errors() {
    run(|| async {
        let (a, b, c) = (Faulty::new(), Faulty::new(), Faulty::new());
        let n = nexus_over(&[("a", &a), ("b", &b), ("c", &c)], None).await;
        assert_eq!(n.state(), NexusState::Online);
        let mut w = write_some(&n, 40, 1).await;
        assert_eq!(a.content().await, b.content().await);
        assert_eq!(a.content().await, c.content().await);
        // Child b fails: the application's writes and reads go on.
        b.fail(true);
        w.extend(write_some(&n, 40, 100).await);
        check(&n, &w).await;
        assert_eq!(n.state(), NexusState::Degraded);
        let st = n.children();
        match &st[1].state {
            ChildState::Faulted { reason } => assert!(reason.contains("failed"), "{reason}"),
            s => panic!("b is {s:?}"),
        }
        assert_eq!(n.healthy(), vec!["a".to_string(), "c".to_string()]);
        // The log records what b missed.
        assert_eq!(n.drl().absent(), vec!["b".to_string()]);
        assert!(n.drl().dirty_count() > 0);
        assert_eq!(a.content().await, c.content().await);
        // Reads are balanced by outstanding I/O: with 16 at once both online children serve.
        a.slow(true);
        c.slow(true);
        let (ra, rc) = (a.reads(), c.reads());
        let reads: Vec<_> = (0..16u64)
            .map(|i| {
                let n = n.clone();
                reactor::spawn_local(async move {
                    n.read(i * (64 << 10), IoBuf::zeroed(64 << 10))
                        .await
                        .unwrap()
                })
            })
            .collect();
        for r in reads {
            r.await;
        }
        let (da, dc) = (a.reads() - ra, c.reads() - rc);
        assert_eq!(da + dc, 16);
        assert!(da.abs_diff(dc) <= 2, "reads not balanced: a {da}, c {dc}");
        // A child that hangs is retired after the I/O timeout.
        c.hang(true);
        let t = Instant::now();
        w.extend(write_some(&n, 4, 300).await);
        assert!(t.elapsed() >= Duration::from_millis(250));
        assert!(matches!(n.children()[2].state, ChildState::Faulted { .. }));
        c.hang(false);
        check(&n, &w).await;
        assert_eq!(n.healthy(), vec!["a".to_string()]);
    });
}

#[test]
fn io_is_held_while_no_child_is_online_and_resumes_when_one_answers() {
    run(|| async {
        let (a, b) = (Faulty::new(), Faulty::new());
        let n = nexus_over(&[("a", &a), ("b", &b)], None).await;
        let w = write_some(&n, 8, 1).await;
        a.fail(true);
        b.fail(true);
        // Both fail: the write is held, not failed...
        let n2 = n.clone();
        let held = reactor::spawn_local(async move {
            n2.write(0, pattern(77, 4096), WriteFlags::default()).await
        });
        reactor::sleep(Duration::from_millis(300)).await;
        assert_eq!(n.state(), NexusState::Faulted);
        // ... and completes once a child that was online last answers again.
        b.fail(false);
        held.await.expect("held write completes");
        assert_eq!(n.healthy(), vec!["b".to_string()]);
        let got = n.read(0, IoBuf::zeroed(4096)).await.unwrap();
        assert_eq!(&got[..], &pattern(77, 4096)[..]);
        let _ = w;
        // With nothing coming back, held I/O fails after the hold timeout.
        b.fail(true);
        let t = Instant::now();
        let e = n
            .write(0, pattern(78, 4096), WriteFlags::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io);
        assert!(t.elapsed() >= Duration::from_secs(2), "{:?}", t.elapsed());
    });
}

#[test]
fn a_new_child_is_rebuilt_fully_skipping_holes_while_writes_go_on() {
    run(|| async {
        let a = Faulty::new();
        let n = nexus_over(&[("a", &a)], None).await;
        let mut w = write_some(&n, 30, 5).await;
        let data = a.inner.allocated();
        let b = Faulty::new();
        n.add_child("b", b.dev.clone()).await.unwrap();
        assert_eq!(n.children()[1].state, ChildState::OutOfSync);
        // Writes keep coming while b is rebuilt (every I/O takes 2 ms, so they interleave).
        a.slow(true);
        b.slow(true);
        let n2 = n.clone();
        let writer = reactor::spawn_local(async move { write_some(&n2, 60, 500).await });
        let r = n.rebuild_child("b").await.unwrap();
        w.extend(writer.await);
        assert!(!r.partial);
        assert_eq!(r.total, SIZE);
        assert_eq!(r.copied + r.zeroed, SIZE);
        assert!(r.copied < SIZE / 2, "holes were copied: {r:?}");
        a.slow(false);
        b.slow(false);
        assert_eq!(n.state(), NexusState::Online);
        n.flush().await.unwrap();
        assert_eq!(a.content().await, b.content().await);
        // Thin stays thin: b holds about what a holds.
        assert!(b.inner.allocated() <= a.inner.allocated() + (1 << 20));
        assert!(data > 0);
        // Every write is on both: fail a, read from b.
        a.fail(true);
        check(&n, &w).await;
    });
}

#[test]
fn a_returning_child_copies_only_the_dirty_regions_also_after_a_restart() {
    run(|| async {
        let (a, b) = (Faulty::new(), Faulty::new());
        let log: Device = Arc::new(MallocDevice::new("log", MIB, 512));
        let n = nexus_over(&[("a", &a), ("b", &b)], Some(log.clone())).await;
        let mut w = write_some(&n, 50, 1).await;
        b.fail(true);
        // Three 64 KiB writes in three distinct 1 MiB regions while b is away.
        for (i, off) in [0u64, 5 * MIB, 9 * MIB + 4096 * 16].iter().enumerate() {
            n.write(
                *off,
                pattern(900 + i as u64, 64 << 10),
                WriteFlags::default(),
            )
            .await
            .unwrap();
            w.push((*off, 900 + i as u64));
        }
        n.flush().await.unwrap();
        assert_eq!(n.drl().dirty_count(), 3);
        // The engine restarts: a new nexus over the same children and log. Even told b is
        // healthy (a stale record), the log — saved before any write b missed was
        // acknowledged — keeps it out of sync.
        drop(n);
        b.fail(false);
        let n = Nexus::create(
            "n",
            SIZE,
            vec![spec("a", &a, true), spec("b", &b, true)],
            Some(log.clone()),
            opts(),
        )
        .await
        .unwrap();
        assert_eq!(n.children()[1].state, ChildState::OutOfSync);
        assert_eq!(n.healthy(), vec!["a".to_string()]);
        assert_eq!(n.drl().dirty_count(), 3);
        let r = n.rebuild_child("b").await.unwrap();
        assert!(r.partial, "{r:?}");
        assert_eq!(r.total, 3 * MIB);
        assert!(r.copied + r.zeroed == 3 * MIB, "{r:?}");
        assert_eq!(a.content().await, b.content().await);
        assert_eq!(n.state(), NexusState::Online);
        // In sync again: the log is empty and covers no one.
        assert_eq!(n.drl().dirty_count(), 0);
        assert!(n.drl().absent().is_empty());
        a.fail(true);
        check(&n, &w).await;
    });
}

#[test]
fn a_child_the_log_does_not_cover_is_rebuilt_fully_and_rates_are_limited() {
    run(|| async {
        let (a, b) = (Faulty::new(), Faulty::new());
        let w = {
            let n = nexus_over(&[("a", &a)], None).await;
            write_some(&n, 20, 3).await
        };
        // b was never part of this nexus: no log covers it, whatever it holds.
        let n = Nexus::create(
            "n",
            SIZE,
            vec![spec("a", &a, true), spec("b", &b, false)],
            None,
            NexusOptions {
                rebuild_rate: Some(64 * MIB),
                ..opts()
            },
        )
        .await
        .unwrap();
        // b is out of sync, and no log covers it: a full copy, at most 64 MiB/s.
        let r = n.rebuild_child("b").await.unwrap();
        assert!(!r.partial, "{r:?}");
        let floor = Duration::from_secs_f64((r.copied + r.zeroed) as f64 / (64 * MIB) as f64);
        assert!(
            r.elapsed >= floor.mul_f64(0.9),
            "{r:?} faster than the limit"
        );
        assert_eq!(a.content().await, b.content().await);
        // A child added later is not covered either.
        let c = Faulty::new();
        n.add_child("c", c.dev.clone()).await.unwrap();
        let r = n.rebuild_child("c").await.unwrap();
        assert!(!r.partial);
        let floor = Duration::from_secs_f64((r.copied + r.zeroed) as f64 / (64 * MIB) as f64);
        assert!(
            r.elapsed >= floor.mul_f64(0.9),
            "{r:?} faster than the limit"
        );
        assert_eq!(a.content().await, c.content().await);
        check(&n, &w).await;
    });
}

#[test]
fn bad_requests_fail_without_retiring_children() {
    run(|| async {
        let (a, b) = (Faulty::new(), Faulty::new());
        let n = nexus_over(&[("a", &a), ("b", &b)], None).await;
        let e = n
            .write(SIZE, pattern(1, 4096), WriteFlags::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::OutOfRange);
        let e = n.read(100, IoBuf::zeroed(512)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Misaligned);
        assert_eq!(n.state(), NexusState::Online);
        assert!(
            Nexus::create("x", SIZE * 2, vec![spec("a", &a, true)], None, opts())
                .await
                .is_err()
        );
        assert!(
            Nexus::create("x", SIZE, vec![spec("a", &a, false)], None, opts())
                .await
                .is_err()
        );
        assert!(n.remove_child("b").await.is_ok());
        assert!(
            n.remove_child("a").await.is_err(),
            "the last online child stays"
        );
    });
}

#[test]
fn a_conflict_from_a_child_fails_the_io_and_retires_nothing() {
    run(|| async {
        let (a, b) = (Faulty::new(), Faulty::new());
        let n = nexus_over(&[("a", &a), ("b", &b)], None).await;
        n.write(0, pattern(1, 4096), WriteFlags::default())
            .await
            .unwrap();
        // A newer incarnation holds both children under a reservation that fences reads too.
        for c in [&a, &b] {
            c.dev.fail(blockdev::fault::Ops::ALL, ErrorKind::Conflict);
        }
        let e = n.read(0, IoBuf::zeroed(4096)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        assert!(n.is_fenced());
        let e = n
            .write(0, pattern(2, 4096), WriteFlags::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        assert_eq!(n.state(), NexusState::Online, "no child was retired");
    });
}
