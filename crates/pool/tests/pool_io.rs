//! A pool on a RAM device driven through the block-device traits on a real reactor.

mod common;

use common::run;
use std::sync::Arc;

use blockdev::malloc::MallocDevice;
use blockdev::{Device, IoBuf, WriteFlags, ZeroFlags};
use pool::pool::{CreateOptions, Pool};

fn pattern(seed: u8, len: usize) -> IoBuf {
    let mut b = IoBuf::zeroed(len);
    for (i, x) in b.iter_mut().enumerate() {
        *x = seed ^ (i as u8).wrapping_mul(31);
    }
    b
}

async fn read(dev: &Device, off: u64, len: usize) -> Vec<u8> {
    dev.read(off, IoBuf::zeroed(len)).await.unwrap().to_vec()
}

#[test]
fn volumes_snapshots_clones_survive_reimport() {
    run(|| async {
        let disk: Device = Arc::new(MallocDevice::new("disk", 64 << 20, 512));
        let pool = Pool::create(disk.clone(), &CreateOptions::default())
            .await
            .unwrap();
        let cs = pool.superblock().cluster_size as u64;
        pool.create_volume("v", 8 * cs, true).await.unwrap();
        let v = pool.open("v").unwrap();
        // Never-written blocks read as zeroes; partial-cluster writes keep the rest zero.
        assert!(read(&v, 0, 4096).await.iter().all(|&b| b == 0));
        v.write(cs + 4096, pattern(1, 8192), WriteFlags::default())
            .await
            .unwrap();
        assert_eq!(read(&v, cs + 4096, 8192).await, pattern(1, 8192).to_vec());
        assert!(read(&v, cs, 4096).await.iter().all(|&b| b == 0));
        v.flush().await.unwrap();
        pool.snapshot("v", "s1").await.unwrap();
        // Copy-on-write: the volume changes, the snapshot does not.
        v.write(cs + 4096, pattern(2, 4096), WriteFlags::default())
            .await
            .unwrap();
        let s1 = pool.open("s1").unwrap();
        assert_eq!(read(&s1, cs + 4096, 8192).await, pattern(1, 8192).to_vec());
        let now = read(&v, cs + 4096, 8192).await;
        assert_eq!(&now[..4096], &pattern(2, 4096)[..]);
        assert_eq!(&now[4096..], &pattern(1, 8192)[4096..]);
        assert!(
            s1.write(0, pattern(3, 512), WriteFlags::default())
                .await
                .is_err()
        );
        pool.clone_snapshot("s1", "c1").await.unwrap();
        let c1 = pool.open("c1").unwrap();
        assert_eq!(read(&c1, cs + 4096, 8192).await, pattern(1, 8192).to_vec());
        c1.write(0, pattern(4, 4096), WriteFlags { fua: true })
            .await
            .unwrap();
        // Discard frees whole clusters.
        let before = pool.usage().used;
        v.unmap(cs, cs).await.unwrap();
        v.flush().await.unwrap();
        assert!(read(&v, cs, cs as usize).await.iter().all(|&b| b == 0));
        assert!(pool.usage().used < before);
        let ext = v.block_status(0, 8 * cs).await.unwrap();
        assert!(
            ext.iter().all(|e| e.state == blockdev::ExtentState::Hole),
            "{ext:?}"
        );
        assert!(pool.check().is_empty());
        drop((v, s1, c1));
        // Re-import from the device: the same state.
        let listed = pool.list();
        let p2 = Pool::import(disk.clone()).await.unwrap();
        assert_eq!(p2.list(), listed);
        assert!(p2.check().is_empty());
        let c1 = p2.open("c1").unwrap();
        assert_eq!(read(&c1, 0, 4096).await, pattern(4, 4096).to_vec());
        assert_eq!(read(&c1, cs + 4096, 8192).await, pattern(1, 8192).to_vec());
        // Delete in any order; everything is reclaimed.
        p2.delete("s1").await.unwrap();
        p2.delete("v").await.unwrap();
        p2.delete("c1").await.unwrap();
        assert_eq!(p2.usage().used, 0);
    });
}

#[test]
fn thin_pool_out_of_space_fails_cleanly_and_recovers() {
    run(|| async {
        let disk: Device = Arc::new(MallocDevice::new("disk", 32 << 20, 512));
        let pool = Pool::create(
            disk.clone(),
            &CreateOptions {
                cluster_size: 64 * 1024,
                ..CreateOptions::default()
            },
        )
        .await
        .unwrap();
        let cap = pool.usage().capacity;
        pool.create_volume("big", cap * 2, true).await.unwrap();
        let v = pool.open("big").unwrap();
        let mut off = 0;
        let err = loop {
            match v.write(off, pattern(5, 65536), WriteFlags::default()).await {
                Ok(_) => off += 65536,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), blockdev::ErrorKind::NoSpace);
        assert_eq!(off, cap);
        v.flush().await.unwrap();
        assert!(pool.check().is_empty());
        // Free space, and writes continue.
        v.write_zeroes(
            0,
            65536 * 4,
            ZeroFlags {
                may_unmap: true,
                ..ZeroFlags::default()
            },
        )
        .await
        .unwrap();
        v.flush().await.unwrap();
        v.write(off, pattern(6, 65536), WriteFlags::default())
            .await
            .unwrap();
        assert_eq!(read(&v, off, 65536).await, pattern(6, 65536).to_vec());
    });
}

#[test]
fn thick_volumes_read_zero_and_never_leak_old_data() {
    run(|| async {
        let disk: Device = Arc::new(MallocDevice::new("disk", 32 << 20, 512));
        let pool = Pool::create(
            disk.clone(),
            &CreateOptions {
                cluster_size: 64 * 1024,
                ..CreateOptions::default()
            },
        )
        .await
        .unwrap();
        pool.create_volume("a", 1 << 20, true).await.unwrap();
        let a = pool.open("a").unwrap();
        for i in 0..16 {
            a.write(i * 65536, pattern(9, 65536), WriteFlags::default())
                .await
                .unwrap();
        }
        a.flush().await.unwrap();
        pool.delete("a").await.unwrap();
        pool.create_volume("b", 1 << 20, false).await.unwrap();
        let b = pool.open("b").unwrap();
        assert!(read(&b, 0, 1 << 20).await.iter().all(|&x| x == 0));
        b.write(512, pattern(7, 512), WriteFlags::default())
            .await
            .unwrap();
        let r = read(&b, 0, 65536).await;
        assert!(r[..512].iter().all(|&x| x == 0) && r[1024..].iter().all(|&x| x == 0));
    });
}

#[test]
fn resize_keeps_thick_allocated_and_never_resurrects_old_data() {
    run(|| async {
        let disk: Device = Arc::new(MallocDevice::new("disk", 32 << 20, 512));
        let pool = Pool::create(
            disk,
            &CreateOptions {
                cluster_size: 64 * 1024,
                ..CreateOptions::default()
            },
        )
        .await
        .unwrap();
        // Thick grows stay fully allocated.
        pool.create_volume("t", 8 * 65536, false).await.unwrap();
        pool.resize("t", 16 * 65536, false).await.unwrap();
        let t = pool.list().into_iter().find(|v| v.name == "t").unwrap();
        assert_eq!(t.allocated, 16 * 65536);
        // Shrinking into a cluster and growing back reads zeroes past the old end.
        pool.create_volume("s", 1 << 20, true).await.unwrap();
        let s = pool.open("s").unwrap();
        s.write(0, pattern(0xaa, 1 << 20), WriteFlags::default())
            .await
            .unwrap();
        assert!(
            pool.resize("s", 4096, false).await.is_err(),
            "shrink needs force"
        );
        pool.resize("s", 4096, true).await.unwrap();
        pool.resize("s", 1 << 20, false).await.unwrap();
        let s = pool.open("s").unwrap();
        let r = read(&s, 0, 1 << 20).await;
        assert_eq!(&r[..4096], &pattern(0xaa, 4096)[..]);
        assert!(
            r[4096..].iter().all(|&b| b == 0),
            "old data came back after shrink + grow"
        );
        assert!(pool.check().is_empty());
    });
}
