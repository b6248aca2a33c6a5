//! Damaged metadata on import: every case is detected and named; where a redundant copy
//! exists the pool still imports, with a warning saying what was damaged.

mod common;

use common::run;
use std::sync::Arc;

use blockdev::crash::CrashDevice;
use blockdev::{Device, IoBuf, WriteFlags};
use pool::pool::{CreateOptions, Pool, PoolError};

/// A pool with a few volumes and data, flushed; returns its disk image.
async fn populated(extra_commits: usize) -> Vec<u8> {
    let disk = Arc::new(CrashDevice::new(24 << 20));
    let dev: Device = disk.clone();
    let pool = Pool::create(
        dev,
        &CreateOptions {
            cluster_size: 64 * 1024,
            ..CreateOptions::default()
        },
    )
    .await
    .unwrap();
    pool.create_volume("a", 1 << 20, true).await.unwrap();
    pool.create_volume("b", 1 << 20, false).await.unwrap();
    let a = pool.open("a").unwrap();
    a.write(0, IoBuf::from_slice(&[7u8; 4096]), WriteFlags { fua: true })
        .await
        .unwrap();
    pool.snapshot("a", "a-snap").await.unwrap();
    for i in 0..extra_commits {
        pool.create_volume(&format!("t{i}"), 65536, true)
            .await
            .unwrap();
        pool.delete(&format!("t{i}")).await.unwrap();
    }
    pool.create_volume("last", 65536, true).await.unwrap();
    disk.crash_image(|_, s| s)
}

async fn import(img: Vec<u8>) -> Result<Arc<Pool>, PoolError> {
    Pool::import(Arc::new(CrashDevice::from_image(img))).await
}

fn names(p: &Pool) -> Vec<String> {
    let mut v: Vec<String> = p.list().into_iter().map(|v| v.name).collect();
    v.sort();
    v
}

#[test]
fn one_damaged_superblock_copy_is_survivable_and_reported() {
    run(|| async {
        let mut img = populated(0).await;
        img[100] ^= 0x40;
        let p = import(img).await.unwrap();
        assert_eq!(names(&p), ["a", "a-snap", "b", "last"]);
        let w = p.import_warnings().join("\n");
        assert!(
            w.contains("superblock copy A") && w.contains("checksum"),
            "{w}"
        );
        assert!(p.check().is_empty());
    });
}

#[test]
fn both_superblock_copies_damaged_is_an_error_naming_both() {
    run(|| async {
        let mut img = populated(0).await;
        img[100] ^= 0x40;
        img[4096 + 130] ^= 0x01;
        let e = import(img).await.unwrap_err().to_string();
        assert!(
            e.contains("copy A") && e.contains("copy B") && e.contains("checksum"),
            "{e}"
        );
        let e = import(vec![0u8; 24 << 20]).await.unwrap_err().to_string();
        assert!(e.contains("bad magic"), "{e}");
    });
}

#[test]
fn damaged_newest_checkpoint_falls_back_to_the_older_one() {
    run(|| async {
        // Enough commits to fill half the journal and force a checkpoint into slot 1.
        let clean = populated(300).await;
        let p = import(clean.clone()).await.unwrap();
        let want = names(&p);
        assert!(p.import_warnings().is_empty(), "{:?}", p.import_warnings());
        let sb = p.superblock().clone();
        drop(p);
        let slot1 = 8192 + sb.checkpoint_bytes as usize;
        assert_eq!(
            &clean[slot1..slot1 + 8],
            b"BALLASTC",
            "a checkpoint was written to slot 1"
        );
        let mut img = clean.clone();
        img[slot1 + 4096 + 40] ^= 0x08; // in the body (the volume maps)
        let p = import(img).await.unwrap();
        let w = p.import_warnings().join("\n");
        assert!(
            w.contains("checkpoint slot 1") && w.contains("body checksum"),
            "{w}"
        );
        assert!(w.contains("newest checkpoint"), "{w}");
        assert_eq!(
            names(&p),
            want,
            "the journal after the older checkpoint restores everything"
        );
        assert!(p.check().is_empty());
        // Both checkpoints damaged: an error naming both.
        let mut img = clean;
        img[slot1 + 4096 + 40] ^= 0x08;
        img[8192 + 20] ^= 0x02;
        let e = import(img).await.unwrap_err().to_string();
        assert!(e.contains("slot 0") && e.contains("slot 1"), "{e}");
    });
}

#[test]
fn a_damaged_journal_block_with_later_records_is_reported() {
    run(|| async {
        let clean = populated(20).await;
        let p = import(clean.clone()).await.unwrap();
        let sb = p.superblock().clone();
        drop(p);
        let jstart = 8192 + 2 * sb.checkpoint_bytes as usize;
        let mut img = clean;
        img[jstart + 5 * 4096 + 100] ^= 0x10;
        let p = import(img).await.unwrap();
        let w = p.import_warnings().join("\n");
        assert!(w.contains("journal block 5") && w.contains("lost"), "{w}");
        assert!(
            p.check().is_empty(),
            "the prefix before the damage is consistent"
        );
    });
}
