//! Pools over several devices, online grow, labels, and a pool that loses its metadata
//! device's writes going read-only.

mod common;

use common::run;
use std::sync::Arc;

use blockdev::crash::CrashDevice;
use blockdev::fault::{FaultDevice, Ops};
use blockdev::{Device, ErrorKind, IoBuf, WriteFlags};
use pool::assemble::{Found, scan};
use pool::pool::{CreateOptions, Pool, PoolErrorKind};

const CS: u64 = 64 * 1024;

fn opts() -> CreateOptions {
    CreateOptions {
        name: "multi".into(),
        cluster_size: CS as u32,
        ..CreateOptions::default()
    }
}

fn pattern(seed: u64, len: usize) -> IoBuf {
    let mut b = IoBuf::zeroed(len);
    for (i, x) in b.iter_mut().enumerate() {
        *x = (seed as u8) ^ (i as u8).wrapping_mul(31) ^ (i >> 9) as u8;
    }
    b
}

async fn read(dev: &Device, off: u64, len: usize) -> Vec<u8> {
    dev.read(off, IoBuf::zeroed(len)).await.unwrap().to_vec()
}

/// Writes a distinct pattern to every cluster of `v` and flushes.
async fn fill(v: &Device, clusters: u64, seed: u64) {
    for c in 0..clusters {
        v.write(
            c * CS,
            pattern(seed + c, CS as usize),
            WriteFlags::default(),
        )
        .await
        .unwrap();
    }
    v.flush().await.unwrap();
}

async fn verify(v: &Device, clusters: u64, seed: u64) {
    for c in 0..clusters {
        assert_eq!(
            read(v, c * CS, CS as usize).await,
            pattern(seed + c, CS as usize).to_vec(),
            "cluster {c}"
        );
    }
}

fn crash_dev(size: u64) -> (Arc<CrashDevice>, Device) {
    let d = Arc::new(CrashDevice::new(size));
    (d.clone(), d)
}

#[test]
fn a_pool_spans_devices_and_imports_from_them_in_any_order() {
    run(|| async {
        let devs: Vec<Device> = [24u64 << 20, 8 << 20, 16 << 20]
            .iter()
            .map(|&s| crash_dev(s).1)
            .collect();
        let pool = Pool::create_on(devs.clone(), &opts()).await.unwrap();
        let members = pool.members();
        assert_eq!(members.len(), 3);
        // Every member but the metadata one gives all but its first cluster.
        assert_eq!(members[1].clusters, (8 << 20) / CS - 1);
        assert_eq!(members[2].clusters, (16 << 20) / CS - 1);
        let total: u64 = members.iter().map(|m| m.clusters).sum();
        assert_eq!(pool.usage().capacity, total * CS);
        // A thick volume takes every cluster, so data lands on every member.
        pool.create_volume("all", total * CS, false).await.unwrap();
        let v = pool.open("all").unwrap();
        fill(&v, total, 7).await;
        assert!(pool.check().is_empty());
        drop((v, pool));

        // Found and ordered whatever the order of the candidates; an unrelated device is
        // ignored.
        let other: Device = crash_dev(4 << 20).1;
        let candidates = vec![devs[2].clone(), other, devs[0].clone(), devs[1].clone()];
        let found = scan(&candidates).await;
        assert_eq!(found.len(), 1);
        let Found::Pool {
            superblock,
            members,
            rejected,
        } = &found[0]
        else {
            panic!("not a pool: {found:?}")
        };
        assert_eq!(superblock.name, "multi");
        assert_eq!(members, &[Some(2), Some(3), Some(0)]);
        assert!(rejected.is_empty());
        let ordered: Vec<Device> = members
            .iter()
            .map(|m| candidates[m.unwrap()].clone())
            .collect();
        let pool = Pool::import_members(ordered).await.unwrap();
        assert!(
            pool.import_warnings().is_empty(),
            "{:?}",
            pool.import_warnings()
        );
        let v = pool.open("all").unwrap();
        verify(&v, total, 7).await;

        // A missing member is named; the wrong order is refused.
        let found = scan(&[devs[0].clone(), devs[2].clone()]).await;
        assert!(!found[0].complete());
        assert!(
            found[0].missing().starts_with("member 1 "),
            "{}",
            found[0].missing()
        );
        let e = Pool::import_members(vec![devs[0].clone(), devs[2].clone()])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("3 member device(s), 2 given"), "{e}");
        let e = Pool::import_members(vec![devs[0].clone(), devs[2].clone(), devs[1].clone()])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("is member 2"), "{e}");
    });
}

#[test]
fn a_pool_grows_online_when_its_device_grows_or_a_device_joins() {
    run(|| async {
        let (raw0, d0) = crash_dev(16 << 20);
        let pool = Pool::create(d0.clone(), &opts()).await.unwrap();
        let before = pool.usage().capacity / CS;
        pool.create_volume("v", 4 * before * CS, true)
            .await
            .unwrap();
        let v = pool.open("v").unwrap();
        fill(&v, before, 1).await;
        // Full: the next cluster is refused.
        let e = v
            .write(before * CS, pattern(0, 4096), WriteFlags::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoSpace);

        // Nothing changed: nothing to do.
        let r = pool.grow(Vec::new()).await.unwrap();
        assert_eq!(r.old_clusters, r.new_clusters);

        // The device grows underneath; the pool takes the new space while the volume is open.
        raw0.grow(24 << 20);
        let r = pool.grow(Vec::new()).await.unwrap();
        assert_eq!(r.new_clusters, before + (8 << 20) / CS);
        // And a second device joins.
        let (_raw1, d1) = crash_dev(8 << 20);
        let r = pool.grow(vec![d1.clone()]).await.unwrap();
        let after = r.new_clusters;
        assert_eq!(after, before + (8 << 20) / CS + (8 << 20) / CS - 1);
        assert_eq!(pool.usage().capacity, after * CS);
        // The new space is used: existing data stays where it was.
        for c in before..after {
            v.write(c * CS, pattern(1 + c, CS as usize), WriteFlags::default())
                .await
                .unwrap();
        }
        v.flush().await.unwrap();
        verify(&v, after, 1).await;
        assert!(pool.check().is_empty());
        drop((v, pool));

        let pool = Pool::import_members(vec![d0.clone(), d1.clone()])
            .await
            .unwrap();
        assert_eq!(pool.usage().capacity, after * CS);
        assert_eq!(pool.superblock().segments.len(), 3);
        verify(&pool.open("v").unwrap(), after, 1).await;
        assert!(pool.check().is_empty());
        // The old single-device view is refused now.
        assert!(Pool::import(d0).await.is_err());
    });
}

#[test]
fn a_crash_at_any_flush_point_of_a_grow_leaves_the_old_or_the_new_pool() {
    run(|| async {
        for point in 1u32.. {
            let (raw, dev) = crash_dev(16 << 20);
            let pool = Pool::create(dev.clone(), &opts()).await.unwrap();
            pool.create_volume("v", 4 << 20, true).await.unwrap();
            let v = pool.open("v").unwrap();
            fill(&v, 4, 3).await;
            let before = pool.usage().capacity;
            raw.grow(32 << 20);
            raw.arm(point, point as u64 * 7919);
            let r = pool.grow(Vec::new()).await.unwrap();
            let Some(image) = raw.take_captured() else {
                // The grow finished before this flush point: every point was tried.
                assert!(point > 2, "a grow flushes at least twice");
                break;
            };
            let reopened: Device = Arc::new(CrashDevice::from_image(image));
            let p2 = Pool::import(reopened).await.unwrap();
            let cap = p2.usage().capacity;
            assert!(
                cap == before || cap == r.new_clusters * CS,
                "crash at flush {point}: capacity {cap}, neither {before} nor {}",
                r.new_clusters * CS
            );
            assert!(p2.check().is_empty());
            verify(&p2.open("v").unwrap(), 4, 3).await;
        }
    });
}

#[test]
fn labels_are_kept_in_the_superblock() {
    run(|| async {
        let dev = crash_dev(16 << 20).1;
        let pool = Pool::create(dev.clone(), &opts()).await.unwrap();
        assert!(pool.labels().is_empty());
        let set = |k: &str, v: Option<&str>| (k.to_string(), v.map(str::to_string));
        pool.set_labels(&[set("zone", Some("a")), set("tier", Some("fast"))])
            .await
            .unwrap();
        pool.set_labels(&[set("zone", Some("b")), set("gone", None)])
            .await
            .unwrap();
        let want = vec![
            ("tier".to_string(), "fast".to_string()),
            ("zone".to_string(), "b".to_string()),
        ];
        assert_eq!(pool.labels(), want);
        // Bad keys and values are refused and change nothing.
        for bad in [
            set("", Some("x")),
            set("a=b", Some("x")),
            set("k", Some("a\nb")),
        ] {
            let e = pool.set_labels(&[bad]).await.unwrap_err();
            assert_eq!(e.kind(), PoolErrorKind::Invalid, "{e}");
        }
        let many: Vec<_> = (0..40)
            .map(|i| (format!("key{i:02}"), Some("v".repeat(60))))
            .collect();
        assert_eq!(
            pool.set_labels(&many).await.unwrap_err().kind(),
            PoolErrorKind::NoSpace
        );
        assert_eq!(pool.labels(), want);
        drop(pool);
        let pool = Pool::import(dev).await.unwrap();
        assert_eq!(pool.labels(), want);
        assert!(pool.superblock().generation >= 3);
    });
}

#[test]
fn a_failed_metadata_commit_makes_the_pool_read_only_and_loses_nothing_acknowledged() {
    run(|| async {
        let (_raw, inner) = crash_dev(16 << 20);
        // Its writes and flushes fail on demand (a disk that went away).
        let dev = FaultDevice::new(inner.clone());
        let pool = Pool::create(dev.clone(), &opts()).await.unwrap();
        pool.create_volume("v", 1 << 20, true).await.unwrap();
        let v = pool.open("v").unwrap();
        fill(&v, 2, 5).await;
        // A write that allocates, then the disk fails before its mapping is committed.
        v.write(2 * CS, pattern(9, 4096), WriteFlags::default())
            .await
            .unwrap();
        dev.fail(Ops::WRITES, ErrorKind::Io);
        let e = v.flush().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io);
        dev.heal();
        let why = pool.failure().expect("the pool is read-only");
        assert!(why.contains("metadata commit failed"), "{why}");
        // Even with the disk back, this pool refuses writes, flushes and metadata changes
        // (its journal position is unknown), but reads go on.
        let e = v
            .write(0, pattern(1, 4096), WriteFlags::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io);
        assert!(v.flush().await.is_err());
        assert_eq!(
            pool.create_volume("w", 1 << 20, true)
                .await
                .unwrap_err()
                .kind(),
            PoolErrorKind::ReadOnly
        );
        assert!(pool.grow(Vec::new()).await.is_err());
        verify(&v, 2, 5).await;
        drop((v, pool));
        // Imported again: everything flushed before the failure is there, the pool is whole.
        let pool = Pool::import(inner).await.unwrap();
        assert!(pool.failure().is_none());
        assert!(pool.check().is_empty());
        let v = pool.open("v").unwrap();
        verify(&v, 2, 5).await;
        v.write(0, pattern(11, 4096), WriteFlags { fua: true })
            .await
            .unwrap();
    });
}

#[test]
fn a_snapshot_waits_for_writes_in_flight_so_none_is_lost() {
    run(|| async {
        let inner = crash_dev(16 << 20).1;
        let probe = Pool::create(inner.clone(), &opts()).await.unwrap();
        let data_start = probe.superblock().data_start;
        drop(probe);
        // Its data writes (past the metadata) stall on demand (a slow disk).
        let slow = FaultDevice::new(inner.clone());
        slow.from_offset(data_start);
        Pool::wipe(&inner).await.unwrap();
        let pool = Pool::create(slow.clone(), &opts()).await.unwrap();
        pool.create_volume("v", 1 << 20, true).await.unwrap();
        let v = pool.open("v").unwrap();
        fill(&v, 1, 1).await; // cluster 0 allocated, owned by v alone
        // Write A to cluster 0 stalls in the device...
        slow.hang(Ops::WRITE);
        let v2 = v.clone();
        let a = reactor::spawn_local(async move {
            v2.write(0, pattern(0xA, 4096), WriteFlags::default())
                .await
                .unwrap();
        });
        reactor::sleep(std::time::Duration::from_millis(20)).await;
        // ... while a snapshot is taken: it must wait for A.
        let p2 = pool.clone();
        let snap = reactor::spawn_local(async move { p2.snapshot("v", "s").await.unwrap() });
        reactor::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            pool.list().iter().all(|i| i.name != "s"),
            "snapshot did not wait"
        );
        slow.release();
        a.await;
        snap.await;
        // Write C to the same cluster after the snapshot copies it, A included.
        v.write(8192, pattern(0xC, 4096), WriteFlags { fua: true })
            .await
            .unwrap();
        let got = read(&v, 0, 12288).await;
        assert_eq!(&got[..4096], &pattern(0xA, 4096)[..], "write A lost");
        assert_eq!(&got[8192..], &pattern(0xC, 4096)[..]);
        let s = pool.open("s").unwrap();
        assert_eq!(read(&s, 0, 4096).await, pattern(0xA, 4096).to_vec());
        assert_eq!(
            read(&s, 8192, 4096).await,
            pattern(1, CS as usize)[8192..12288].to_vec()
        );
        assert!(pool.check().is_empty());
    });
}
