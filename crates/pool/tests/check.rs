//! The offline check (`pool::check`): a typed report of the devices, the pool and every
//! finding with its severity, and the verdict taken from the worst finding.

mod common;

use common::run;
use std::sync::Arc;

use blockdev::crash::CrashDevice;
use blockdev::{Device, IoBuf, WriteFlags};
use pool::check::{Finding, Severity, Verdict, check};
use pool::pool::{CreateOptions, Pool};

/// A pool "p" with a volume holding data and a snapshot of it, flushed; its disk image.
async fn populated() -> Vec<u8> {
    let disk = Arc::new(CrashDevice::new(24 << 20));
    let dev: Device = disk.clone();
    let opts = CreateOptions {
        name: "p".into(),
        cluster_size: 64 * 1024,
        ..CreateOptions::default()
    };
    let pool = Pool::create(dev, &opts).await.unwrap();
    pool.create_volume("vol", 1 << 20, true).await.unwrap();
    let v = pool.open("vol").unwrap();
    v.write(0, IoBuf::from_slice(&[7u8; 4096]), WriteFlags { fua: true })
        .await
        .unwrap();
    pool.snapshot("vol", "snap").await.unwrap();
    disk.crash_image(|_, s| s)
}

fn device(img: Vec<u8>) -> Vec<(String, Device)> {
    vec![("disk.img".into(), Arc::new(CrashDevice::from_image(img)))]
}

#[test]
fn a_clean_pool_is_described_and_clean() {
    let report = run(|| async { check(device(populated().await)).await });
    assert_eq!(report.verdict(), Verdict::Clean);
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    let pool = report.pool.as_ref().expect("imported");
    assert_eq!(pool.superblock.name, "p");
    let names: Vec<&str> = pool.volumes.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["snap", "vol"]);
    let copies = report.devices[0].copies.as_ref().expect("read");
    assert!(copies.iter().all(Result::is_ok));
    let (out, err) = report.render();
    assert!(
        out.contains("superblock copy A: valid (generation 1"),
        "{out}"
    );
    assert!(out.ends_with("pool p: clean\n"), "{out}");
    assert_eq!(err, "");
}

#[test]
fn a_damaged_superblock_copy_is_a_warning_and_the_pool_still_clean() {
    let report = run(|| async {
        let mut img = populated().await;
        img[100] ^= 0x40;
        check(device(img)).await
    });
    assert_eq!(report.verdict(), Verdict::Clean);
    let warnings: Vec<String> = report
        .findings_of(Severity::Warning)
        .map(ToString::to_string)
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("superblock copy A:"),
        "{warnings:?}"
    );
    let copies = report.devices[0].copies.as_ref().expect("read");
    assert!(copies[0].is_err() && copies[1].is_ok());
    let (out, _) = report.render();
    assert!(out.contains("warning: superblock copy A"), "{out}");
}

#[test]
fn a_pool_with_both_superblock_copies_damaged_is_fatal_and_names_both() {
    let report = run(|| async {
        let mut img = populated().await;
        img[100] ^= 0x40;
        img[4096 + 100] ^= 0x40;
        check(device(img)).await
    });
    assert_eq!(report.verdict(), Verdict::Damaged);
    assert_eq!(report.verdict().exit_status(), 2);
    assert!(report.pool.is_none());
    assert!(
        matches!(&report.findings[..], [Finding::Unimportable { uri, .. }] if uri == "disk.img"),
        "{:?}",
        report.findings
    );
    let (out, err) = report.render();
    assert!(
        out.contains("copy A: superblock checksum mismatch")
            && out.contains("copy B: superblock checksum mismatch"),
        "{out}"
    );
    assert!(
        err.starts_with("error: disk.img: the pool cannot be imported: "),
        "{err}"
    );
}

#[test]
fn a_pool_over_two_devices_given_in_reverse_order_is_assembled() {
    let report = run(|| async {
        let d0 = Arc::new(CrashDevice::new(24 << 20));
        let d1 = Arc::new(CrashDevice::new(8 << 20));
        let opts = CreateOptions {
            name: "wide".into(),
            cluster_size: 64 * 1024,
            ..CreateOptions::default()
        };
        let pool = Pool::create_on(vec![d0.clone(), d1.clone()], &opts)
            .await
            .unwrap();
        pool.create_volume("v", 4 << 20, false).await.unwrap();
        drop(pool);
        let devs: Vec<(String, Device)> = vec![
            (
                "d1".into(),
                Arc::new(CrashDevice::from_image(d1.crash_image(|_, s| s))),
            ),
            (
                "d0".into(),
                Arc::new(CrashDevice::from_image(d0.crash_image(|_, s| s))),
            ),
        ];
        check(devs).await
    });
    assert_eq!(report.verdict(), Verdict::Clean, "{:?}", report.findings);
    let pool = report.pool.as_ref().expect("imported");
    assert_eq!(pool.members.len(), 2);
    let (out, _) = report.render();
    assert!(
        out.contains("d1: superblock copy A: valid (generation 1, member 1 of 2)"),
        "{out}"
    );
}

#[test]
fn no_device_is_fatal() {
    let report = run(|| async { check(Vec::new()).await });
    assert_eq!(report.verdict(), Verdict::Damaged);
    assert_eq!(report.render().1, "error: no device given\n");
}
