//! fio (`ioengine=nbd`, libnbd) against the engine's NBD target, with crc32c verification:
//! every block written is read back and checked.

mod common;

use common::{Engine, TempDir, run, tool};
use std::time::Duration;

/// Runs a verified fio job (random writes unless `extra` says otherwise) against `uri` and
/// checks that it passed.
fn fio_verify(dir: &TempDir, uri: &str, extra: &[&str]) {
    let mut c = tool("fio");
    c.current_dir(dir.path()).args([
        "--name=verify",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--iodepth=32",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--verify_state_save=0",
        "--output-format=normal",
    ]);
    if !extra.iter().any(|a| a.starts_with("--rw=")) {
        c.arg("--rw=randwrite");
    }
    c.args(extra);
    let out = run(&mut c, Duration::from_secs(150));
    out.assert_success();
    let text = out.text();
    assert!(
        text.contains("err= 0"),
        "fio reported an error: {}",
        out.describe()
    );
    for bad in [
        "verify failed",
        "verify: bad",
        "bad magic header",
        "bad header",
        "fio: pid=",
        "error=",
    ] {
        assert!(
            !text.contains(bad),
            "fio output contains {bad:?}: {}",
            out.describe()
        );
    }
    assert!(
        !text.contains("nbd_connect"),
        "a fio job could not connect: {}",
        out.describe()
    );
    let jobs = extra
        .iter()
        .find_map(|a| a.strip_prefix("--numjobs="))
        .map_or(1, |n| n.parse().expect("numjobs"));
    assert_eq!(
        text.matches("connected to NBD server").count(),
        jobs,
        "not every fio job connected over NBD: {}",
        out.describe()
    );
}

fn file_engine(dir: &TempDir, size: &str) -> Engine {
    let dev = format!("f=uring://{}?size={size}", dir.join("disk.img").display());
    Engine::start(&["--device", &dev, "--export", "f"])
}

#[test]
fn fio_randwrite_4k_verify_file() {
    let dir = TempDir::new("fio4k");
    let mut e = file_engine(&dir, "32MiB");
    fio_verify(&dir, &e.uri("f"), &["--bs=4k", "--size=16M"]);
    e.assert_healthy();
}

#[test]
fn fio_randwrite_64k_verify_file() {
    let dir = TempDir::new("fio64k");
    let mut e = file_engine(&dir, "32MiB");
    fio_verify(&dir, &e.uri("f"), &["--bs=64k", "--size=32M"]);
    e.assert_healthy();
}

#[test]
fn fio_multi_conn_disjoint_regions_file() {
    let dir = TempDir::new("fiomc");
    let mut e = file_engine(&dir, "64MiB");
    // Four jobs, each its own NBD connection, each writing and verifying its own 16 MiB.
    fio_verify(
        &dir,
        &e.uri("f"),
        &[
            "--bs=4k",
            "--size=16M",
            "--numjobs=4",
            "--offset_increment=16M",
            "--group_reporting",
        ],
    );
    e.assert_healthy();
}

/// Two reactors: connections are spread over both, and each submits device I/O from its own
/// reactor. Mixed reads and writes, verified.
#[test]
fn fio_multi_conn_two_reactors_randrw() {
    let dir = TempDir::new("fio2r");
    let dev = format!("f=uring://{}?size=64MiB", dir.join("disk.img").display());
    let mut e = Engine::start(&["--cores", "2", "--device", &dev, "--export", "f"]);
    fio_verify(
        &dir,
        &e.uri("f"),
        &[
            "--rw=randrw",
            "--bs=8k",
            "--size=16M",
            "--numjobs=4",
            "--offset_increment=16M",
            "--group_reporting",
        ],
    );
    e.assert_healthy();
}

#[test]
fn fio_randwrite_verify_ram() {
    let dir = TempDir::new("fioram");
    let mut e = Engine::start(&["--device", "m=malloc:///m?size=32MiB", "--export", "m"]);
    fio_verify(&dir, &e.uri("m"), &["--bs=16k", "--size=32M"]);
    e.assert_healthy();
}
