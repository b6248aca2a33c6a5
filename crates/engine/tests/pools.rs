//! Storage pools in the engine, driven through the `ballast` CLI: pools on file devices, thin
//! and thick volumes exported over NBD, snapshots, clones and reverts checked with qemu-io,
//! nbdinfo and fio; import on restart; online and offline checks; damaged superblocks.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use common::{
    Engine, Output, TOOL_TIMEOUT, TempDir, ballast, cli_bin, nbd_map, qemu_io, qemu_io_raw, run,
    tool,
};

const MIB: u64 = 1 << 20;
/// The default cluster size.
const CLUSTER: u64 = 128 << 10;

/// An engine with the management API on a free port; returns it and the API's URL.
fn engine(args: &[&str]) -> (Engine, String) {
    let mut full = vec!["--grpc-listen", "127.0.0.1:0"];
    full.extend_from_slice(args);
    let e = Engine::start(&full);
    let api = e
        .grpc
        .clone()
        .expect("engine printed no management API address");
    (e, api)
}

/// `ballast ARGS` must succeed; returns its stdout.
fn ok(api: &str, args: &[&str]) -> String {
    let out = ballast(api, args);
    out.assert_success();
    out.stdout
}

/// `ballast ARGS` must fail with exit status 1 and an `error: ` line containing `needle`.
fn fails(api: &str, args: &[&str], needle: &str) -> Output {
    let out = ballast(api, args);
    assert_eq!(out.status.code(), Some(1), "{}", out.describe());
    assert!(
        out.stderr.starts_with("error: ") && out.stderr.contains(needle),
        "expected an error containing {needle:?}: {}",
        out.describe()
    );
    out
}

/// The table row of `ballast ... list` whose first columns are `first` (whitespace-separated).
fn row<'a>(table: &'a str, first: &[&str]) -> &'a str {
    table
        .lines()
        .find(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() >= first.len() && cols[..first.len()] == *first
        })
        .unwrap_or_else(|| panic!("no row starting with {first:?} in:\n{table}"))
}

fn file_device(dir: &TempDir, name: &str, size: &str) -> String {
    format!(
        "{name}=uring://{}?size={size}",
        dir.join(&format!("{name}.img")).display()
    )
}

/// Flips every bit of the byte at `offset` of `path`.
fn flip_byte(path: &Path, offset: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).expect("read byte");
    b[0] ^= 0xff;
    f.write_all_at(&b, offset).expect("write byte");
    f.sync_all().expect("sync");
}

/// `qemu-io -r` (read-only open, as snapshots need) with pattern checks.
fn qemu_io_ro(uri: &str, cmds: &[&str]) -> Output {
    let mut c = tool("qemu-io");
    c.args(["-r", "-f", "raw", uri]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let out = run(&mut c, TOOL_TIMEOUT);
    out.assert_success();
    let text = out.text();
    assert!(
        !text.contains("Pattern verification failed") && !text.contains("failed:"),
        "qemu-io reported a failure: {}",
        out.describe()
    );
    out
}

/// `ballast pool check --offline URI`.
fn offline_check(uri: &str) -> Output {
    let mut c = std::process::Command::new(cli_bin());
    c.env_remove("BALLAST_ENGINE")
        .args(["pool", "check", "--offline", uri]);
    run(&mut c, Duration::from_secs(60))
}

#[test]
fn pool_volumes_snapshots_clones_over_nbd() {
    let dir = TempDir::new("pool-nbd");
    let d0 = file_device(&dir, "d0", "128MiB");
    let d1 = file_device(&dir, "d1", "64MiB");
    let (mut e, api) = engine(&["--device", &d0, "--device", &d1]);

    let out = ok(&api, &["pool", "create", "p0", "d0"]);
    let r = row(&out, &["p0", "online", "d0"]);
    assert!(r.contains("MiB"), "{out}");
    assert_eq!(ok(&api, &["pool", "list"]).lines().count(), 2);

    let out = ok(&api, &["volume", "create", "p0", "thin", "32MiB"]);
    assert!(
        row(&out, &["p0", "thin", "volume"]).contains("thin"),
        "{out}"
    );
    let out = ok(
        &api,
        &["volume", "create", "p0", "thick", "8MiB", "--thick"],
    );
    let r = row(&out, &["p0", "thick", "volume"]);
    assert!(
        r.contains("thick") && r.contains("8.0 MiB    8.0 MiB"),
        "{out}"
    );
    let json = ok(&api, &["-o", "json", "volume", "list", "p0"]);
    assert!(
        json.contains(r#"{"pool":"p0","name":"thin","device":"p0/thin","size_bytes":33554432,"allocated_bytes":0,"snapshot":false,"thin":true,"origin":""}"#),
        "{json}"
    );
    let devs = ok(&api, &["device", "list"]);
    assert!(
        row(&devs, &["p0/thin", "pool-volume"]).contains("32.0 MiB"),
        "{devs}"
    );

    ok(&api, &["export", "create", "thin", "p0/thin"]);
    ok(&api, &["export", "create", "thick", "p0/thick"]);
    let thin = e.uri_for("thin");
    let thick = e.uri_for("thick");

    // A new thin volume is all holes; a thick one is allocated and reads as zeroes.
    assert_eq!(nbd_map(&thin), vec![(0, 32 * MIB, 3)]);
    let map = nbd_map(&thick);
    assert!(
        map.iter().all(|&(_, _, t)| t & 1 == 0),
        "thick volume has holes: {map:?}"
    );
    qemu_io(
        &thick,
        &[
            "read -P 0 0 8M",
            "write -P 0x7c 1M 4k",
            "read -P 0x7c 1M 4k",
        ],
    );

    // Writes allocate whole clusters; the rest stays holes.
    qemu_io(
        &thin,
        &[
            "write -P 0xa1 0 1M",
            "write -P 0xa2 4M 64k",
            "flush",
            "read -P 0xa1 0 1M",
            "read -P 0 1M 3M",
            "read -P 0xa2 4M 64k",
        ],
    );
    assert_eq!(
        nbd_map(&thin),
        vec![
            (0, MIB, 0),
            (MIB, 3 * MIB, 3),
            (4 * MIB, CLUSTER, 0),
            (4 * MIB + CLUSTER, 28 * MIB - CLUSTER, 3),
        ]
    );
    let list = ok(&api, &["volume", "list"]);
    assert!(row(&list, &["p0", "thin"]).contains("1.1 MiB"), "{list}");

    // A snapshot keeps the data of its moment; the volume moves on.
    let out = ok(&api, &["volume", "snapshot", "p0", "thin", "snap1"]);
    let r = row(&out, &["p0", "snap1", "snapshot"]);
    assert!(r.contains(" thin ") && r.contains("p0/snap1"), "{out}");
    qemu_io(
        &thin,
        &["write -P 0xb1 0 512k", "write -P 0xb2 8M 128k", "flush"],
    );
    ok(&api, &["export", "create", "snap1", "p0/snap1"]);
    let exports = ok(&api, &["export", "list"]);
    assert!(
        row(&exports, &["snap1", "p0/snap1"]).contains("yes"),
        "{exports}"
    );
    let snap = e.uri_for("snap1");
    qemu_io_ro(
        &snap,
        &[
            "read -P 0xa1 0 1M",
            "read -P 0xa2 4M 64k",
            "read -P 0 8M 128k",
        ],
    );
    qemu_io(
        &thin,
        &[
            "read -P 0xb1 0 512k",
            "read -P 0xa1 512k 512k",
            "read -P 0xb2 8M 128k",
        ],
    );
    // Snapshots are read-only.
    qemu_io_raw(&snap, &["write -P 1 0 4k"]).assert_failure();
    let map = nbd_map(&snap);
    assert_eq!(map[0], (0, MIB, 0), "{map:?}");

    // A clone starts as the snapshot and is writable; the snapshot stays as it was.
    let out = ok(&api, &["volume", "clone", "p0", "snap1", "clone1"]);
    assert!(
        row(&out, &["p0", "clone1", "clone"]).contains("snap1"),
        "{out}"
    );
    ok(&api, &["export", "create", "clone1", "p0/clone1"]);
    let clone = e.uri_for("clone1");
    qemu_io(
        &clone,
        &[
            "read -P 0xa1 0 1M",
            "read -P 0xa2 4M 64k",
            "write -P 0xc1 0 64k",
            "read -P 0xc1 0 64k",
            "read -P 0xa1 64k 960k",
        ],
    );
    qemu_io_ro(&snap, &["read -P 0xa1 0 1M"]);
    qemu_io(&thin, &["read -P 0xb1 0 512k"]);

    // Revert: the volume gets the snapshot's contents back (seen through its export).
    let out = ok(&api, &["volume", "revert", "p0", "thin", "snap1"]);
    assert!(
        row(&out, &["p0", "thin", "volume"]).contains("p0/thin"),
        "{out}"
    );
    qemu_io(
        &thin,
        &[
            "read -P 0xa1 0 1M",
            "read -P 0xa2 4M 64k",
            "read -P 0 8M 128k",
        ],
    );
    qemu_io(&clone, &["read -P 0xc1 0 64k"]);

    let list = ok(&api, &["volume", "list", "p0"]);
    assert!(
        row(&list, &["p0", "snap1", "snapshot"]).contains(" thin "),
        "{list}"
    );
    assert!(
        row(&list, &["p0", "clone1", "clone"]).contains("snap1"),
        "{list}"
    );
    let pools = ok(&api, &["pool", "list"]);
    let r = row(&pools, &["p0", "online", "d0"]);
    let cols: Vec<&str> = r.split_whitespace().collect();
    // ... VOLUMES SNAPSHOTS LABELS REASON at the end (no labels, no reason: "-").
    assert_eq!(cols[cols.len() - 4..], ["3", "1", "-", "-"], "{pools}");
    let stats = ok(&api, &["stats", "p0/thin"]);
    assert!(stats.contains("device p0/thin"), "{stats}");
    assert!(!row(&stats, &["write"]).contains(" 0 B "), "{stats}");
    let out = ok(&api, &["pool", "check", "p0"]);
    assert_eq!(out, "pool p0: clean\n");
    let json = ok(&api, &["-o", "json", "pool", "check", "p0"]);
    assert_eq!(json.trim(), r#"{"pool":"p0","problems":[]}"#);

    // Error paths: clear messages, exit status 1, nothing changed.
    fails(
        &api,
        &["volume", "create", "nope", "v", "1MiB"],
        "pool \"nope\" not found",
    );
    fails(&api, &["volume", "list", "nope"], "not found");
    fails(&api, &["pool", "check", "nope"], "not found");
    fails(&api, &["volume", "create", "p0", "thin", "1MiB"], "taken");
    fails(&api, &["volume", "create", "p0", "snap1", "1MiB"], "taken");
    fails(
        &api,
        &["volume", "snapshot", "p0", "thin", "clone1"],
        "taken",
    );
    fails(
        &api,
        &["volume", "create", "p0", "huge", "1TiB", "--thick"],
        "out of space",
    );
    fails(&api, &["volume", "create", "p0", "odd", "1000"], "multiple");
    fails(&api, &["volume", "create", "p0", "a/b", "1MiB"], "bad name");
    fails(
        &api,
        &["volume", "snapshot", "p0", "snap1", "s2"],
        "is a snapshot",
    );
    fails(
        &api,
        &["volume", "clone", "p0", "thin", "c2"],
        "is a volume",
    );
    fails(
        &api,
        &["volume", "revert", "p0", "thin", "clone1"],
        "not a snapshot",
    );
    fails(&api, &["volume", "resize", "p0", "thin", "1MiB"], "--force");
    fails(
        &api,
        &["volume", "destroy", "p0", "nope"],
        "no volume or snapshot \"nope\"",
    );
    fails(&api, &["pool", "create", "p0", "d1"], "already exists");
    fails(&api, &["pool", "create", "p9", "d0"], "holds pool \"p0\"");
    fails(&api, &["pool", "create", "a/b", "d1"], "bad pool name");
    fails(
        &api,
        &["pool", "create", "p9", "nodev"],
        "device \"nodev\" not found",
    );
    fails(&api, &["pool", "import", "d1"], "holds no pool");
    fails(&api, &["pool", "import", "d0"], "holds pool \"p0\"");
    fails(
        &api,
        &["pool", "create", "p9", "d1", "--cluster-size", "3000"],
        "cluster size",
    );
    fails(
        &api,
        &["volume", "destroy", "p0", "thin"],
        "exported as \"thin\"",
    );
    fails(
        &api,
        &["volume", "destroy", "p0", "snap1"],
        "exported as \"snap1\"",
    );
    fails(
        &api,
        &["device", "destroy", "p0/clone1"],
        "volume destroy p0 clone1",
    );
    fails(
        &api,
        &["device", "destroy", "p0/thick"],
        "volume destroy p0 thick",
    );
    fails(&api, &["device", "destroy", "d0"], "holds pool \"p0\"");
    fails(
        &api,
        &["export", "create", "raw", "d0"],
        "holds pool \"p0\"",
    );
    fails(
        &api,
        &["device", "create", "p0/x", "malloc:///x?size=1MiB"],
        "bad device name",
    );
    fails(&api, &["pool", "close", "p0"], "exported");
    qemu_io(&thin, &["read -P 0xa1 0 1M"]);

    // Resize grows (new space reads as zeroes), and shrinks with --force.
    ok(&api, &["export", "destroy", "thick"]);
    let out = ok(&api, &["volume", "resize", "p0", "thick", "16MiB"]);
    assert!(row(&out, &["p0", "thick"]).contains("16.0 MiB"), "{out}");
    ok(&api, &["export", "create", "thick", "p0/thick"]);
    qemu_io(&thick, &["read -P 0x7c 1M 4k", "read -P 0 8M 8M"]);
    ok(&api, &["export", "destroy", "thick"]);
    ok(
        &api,
        &["volume", "resize", "p0", "thick", "4MiB", "--force"],
    );

    // Destroying, once unexported, removes the device too.
    ok(&api, &["export", "destroy", "snap1"]);
    let out = ok(&api, &["volume", "destroy", "p0", "snap1"]);
    assert!(out.contains("destroyed"), "{out}");
    let devs = ok(&api, &["device", "list"]);
    assert!(!devs.contains("p0/snap1"), "{devs}");
    qemu_io(&clone, &["read -P 0xa1 64k 960k"]);
    qemu_io(&thin, &["read -P 0xa1 0 1M"]);
    ok(&api, &["volume", "destroy", "p0", "thick"]);
    assert_eq!(ok(&api, &["pool", "check", "p0"]), "pool p0: clean\n");

    // Closing: refused while exported, then the devices go and the pool device is plain.
    ok(&api, &["export", "destroy", "thin"]);
    ok(&api, &["export", "destroy", "clone1"]);
    ok(&api, &["pool", "close", "p0"]);
    assert_eq!(ok(&api, &["pool", "list"]), "no pools\n");
    let devs = ok(&api, &["device", "list"]);
    assert!(!devs.contains("p0/"), "{devs}");
    // Re-importing at run time brings it back as it was.
    let out = ok(&api, &["pool", "import", "d0"]);
    assert!(row(&out, &["p0", "online", "d0"]).contains(" 2 "), "{out}");
    ok(&api, &["export", "create", "clone1", "p0/clone1"]);
    qemu_io(&clone, &["read -P 0xc1 0 64k", "read -P 0xa1 64k 960k"]);
    e.assert_healthy();
}

#[test]
fn fio_verify_on_a_pool_volume() {
    let dir = TempDir::new("pool-fio");
    let d0 = file_device(&dir, "d0", "128MiB");
    let (mut e, api) = engine(&["--device", &d0]);
    ok(
        &api,
        &["pool", "create", "p0", "d0", "--cluster-size", "64KiB"],
    );
    ok(&api, &["volume", "create", "p0", "v", "48MiB"]);
    ok(&api, &["export", "create", "v", "p0/v"]);
    let uri = e.uri_for("v");
    let mut c = tool("fio");
    c.current_dir(dir.path()).args([
        "--name=verify",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--rw=randwrite",
        "--bs=4k",
        "--size=32M",
        "--iodepth=32",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--verify_state_save=0",
    ]);
    let out = run(&mut c, Duration::from_secs(300));
    out.assert_success();
    let text = out.text();
    assert!(text.contains("err= 0"), "{}", out.describe());
    for bad in ["verify failed", "bad magic header", "bad header", "error="] {
        assert!(
            !text.contains(bad),
            "fio output contains {bad:?}: {}",
            out.describe()
        );
    }
    let list = ok(&api, &["volume", "list"]);
    assert!(row(&list, &["p0", "v"]).contains("32.0 MiB"), "{list}");
    assert_eq!(ok(&api, &["pool", "check", "p0"]), "pool p0: clean\n");
    e.assert_healthy();
}

#[test]
fn pools_are_imported_on_restart_and_checked_offline() {
    let dir = TempDir::new("pool-import");
    let d0 = file_device(&dir, "d0", "64MiB");
    let d1 = file_device(&dir, "d1", "64MiB");
    let p0_img = dir.join("d0.img");
    let p0_path = p0_img.to_str().expect("utf-8 path");
    {
        let (mut e, api) = engine(&["--device", &d0, "--device", &d1]);
        ok(&api, &["pool", "create", "p0", "d0"]);
        ok(&api, &["pool", "create", "p1", "d1"]);
        ok(&api, &["volume", "create", "p0", "vol", "16MiB"]);
        ok(
            &api,
            &["volume", "create", "p1", "other", "8MiB", "--thick"],
        );
        ok(&api, &["export", "create", "vol", "p0/vol"]);
        ok(&api, &["export", "create", "other", "p1/other"]);
        // Not flushed by the client: the shutdown commits and flushes.
        qemu_io(
            &e.uri_for("vol"),
            &["write -P 0x5a 0 1M", "write -P 0x5b 10M 256k"],
        );
        qemu_io(&e.uri_for("other"), &["write -P 0x6a 0 64k"]);
        ok(&api, &["volume", "snapshot", "p0", "vol", "before"]);
        qemu_io(&e.uri_for("vol"), &["write -P 0x5c 0 64k"]);
        let (status, stderr) = e.terminate(Duration::from_secs(20));
        assert!(status.success(), "{stderr}");
        assert!(stderr.contains("devices flushed"), "{stderr}");
    }

    // Restarted with the same devices: the pools are imported, volumes exported by name.
    let volumes;
    {
        let (mut e, api) = engine(&["--device", &d0, "--device", &d1, "--export", "vol=p0/vol"]);
        let err = e.stderr();
        assert!(err.contains("imported pool \"p0\""), "{err}");
        assert!(err.contains("imported pool \"p1\""), "{err}");
        qemu_io(
            &e.uri("vol"),
            &[
                "read -P 0x5c 0 64k",
                "read -P 0x5a 64k 960k",
                "read -P 0x5b 10M 256k",
            ],
        );
        ok(&api, &["export", "create", "before", "p0/before"]);
        qemu_io_ro(&e.uri_for("before"), &["read -P 0x5a 0 1M"]);
        volumes = ok(&api, &["volume", "list"]);
        assert!(
            row(&volumes, &["p0", "before", "snapshot"]).contains("vol"),
            "{volumes}"
        );
        assert!(
            row(&volumes, &["p1", "other", "volume"]).contains("thick"),
            "{volumes}"
        );
        assert_eq!(ok(&api, &["pool", "check", "p0"]), "pool p0: clean\n");
        assert_eq!(ok(&api, &["pool", "check", "p1"]), "pool p1: clean\n");
        let (status, stderr) = e.terminate(Duration::from_secs(20));
        assert!(status.success(), "{stderr}");
    }

    // --no-pool-import: plain devices.
    {
        let (mut e, api) = engine(&["--device", &d0, "--no-pool-import"]);
        assert_eq!(ok(&api, &["pool", "list"]), "no pools\n");
        assert!(!ok(&api, &["device", "list"]).contains("p0/"));
        e.terminate(Duration::from_secs(20));
    }

    // Offline check of the stopped engine's pool: clean, and it lists the volumes.
    let out = offline_check(p0_path);
    out.assert_success();
    assert!(out.stdout.contains("pool p0: clean"), "{}", out.describe());
    assert!(
        out.stdout.contains("superblock copy A: valid"),
        "{}",
        out.describe()
    );
    assert!(out.stdout.contains("before"), "{}", out.describe());
    let direct = run(
        std::process::Command::new(common::engine_bin()).args(["--pool-check", p0_path]),
        Duration::from_secs(60),
    );
    direct.assert_success();
    assert_eq!(direct.stdout, out.stdout);

    // One damaged superblock copy: the other one is used, nothing wrong with the pool.
    flip_byte(&p0_img, 100);
    let out = offline_check(p0_path);
    out.assert_success();
    assert!(out.stdout.contains("pool p0: clean"), "{}", out.describe());
    assert!(
        out.stdout
            .contains("superblock copy A: superblock checksum mismatch")
            && out.stdout.contains("copy B: valid")
            && out.stdout.contains("warning: superblock copy A"),
        "{}",
        out.describe()
    );
    {
        let (mut e, api) = engine(&["--device", &d0, "--export", "vol=p0/vol"]);
        qemu_io(&e.uri("vol"), &["read -P 0x5c 0 64k"]);
        let pools = ok(&api, &["pool", "list"]);
        let r = row(&pools, &["p0", "online"]);
        assert!(
            r.contains("superblock copy A: superblock checksum mismatch"),
            "{pools}"
        );
        let list = ok(&api, &["volume", "list"]);
        assert_eq!(row(&list, &["p0", "vol"]), row(&volumes, &["p0", "vol"]));
        assert_eq!(
            row(&list, &["p0", "before"]),
            row(&volumes, &["p0", "before"])
        );
        e.terminate(Duration::from_secs(20));
    }

    // Both copies damaged: the pool cannot be imported; the check names both copies.
    flip_byte(&p0_img, 4096 + 100);
    let out = offline_check(p0_path);
    assert_eq!(out.status.code(), Some(2), "{}", out.describe());
    let text = out.text();
    assert!(
        text.contains("copy A: superblock checksum mismatch")
            && text.contains("copy B: superblock checksum mismatch"),
        "{}",
        out.describe()
    );
    assert!(text.contains("cannot be imported"), "{}", out.describe());

    // An engine given the damaged device and a good pool serves the good one and lists the
    // damaged one as faulted; the export of its volume is skipped, not fatal.
    // (Of the two exports asked for, one is printed.)
    let args = [
        "--no-pin",
        "--nbd-listen",
        "127.0.0.1:0",
        "--nvmf-listen",
        "127.0.0.1:0",
        "--grpc-listen",
        "127.0.0.1:0",
        "--device",
        &d0,
        "--device",
        &d1,
        "--export",
        "other=p1/other",
        "--export",
        "vol=p0/vol",
    ];
    let mut e = Engine::spawn(args.iter().map(|a| a.to_string()).collect(), 1);
    let api = e.grpc.clone().expect("management API address");
    let err = e.stderr();
    assert!(
        err.contains("device \"d0\" holds a damaged pool") && err.contains("copy B"),
        "{err}"
    );
    assert!(err.contains("export \"vol\" not created"), "{err}");
    qemu_io(&e.uri("other"), &["read -P 0x6a 0 64k", "read -P 0 64k 1M"]);
    let pools = ok(&api, &["pool", "list"]);
    let r = row(&pools, &["p1", "online", "d1"]);
    assert!(r.contains("64.0 MiB") || r.contains("MiB"), "{pools}");
    let r = row(&pools, &["-", "faulted", "d0"]);
    assert!(r.contains("copy A") && r.contains("copy B"), "{pools}");
    let json = ok(&api, &["-o", "json", "pool", "list"]);
    assert!(
        json.contains(r#""device":"d0","#) && json.contains(r#""state":"faulted""#),
        "{json}"
    );
    // The damaged device is neither exported nor given to a new pool; its volumes are gone.
    fails(&api, &["export", "create", "raw", "d0"], "faulted pool");
    fails(&api, &["pool", "create", "p9", "d0"], "faulted pool");
    fails(&api, &["volume", "list", "p0"], "not found");
    fails(&api, &["pool", "import", "d0"], "copy A");
    fails(&api, &["device", "destroy", "d0"], "faulted pool");
    // Closing the faulted entry (by device) releases the device.
    ok(&api, &["pool", "close", "d0"]);
    let pools = ok(&api, &["pool", "list"]);
    assert!(!pools.contains("faulted"), "{pools}");
    ok(&api, &["device", "destroy", "d0"]);
    e.assert_healthy();
}

#[test]
fn grown_thick_volume_stays_fully_allocated() {
    let dir = TempDir::new("pool-thick-grow");
    let d0 = file_device(&dir, "d0", "64MiB");
    let (mut e, api) = engine(&["--device", &d0]);
    ok(&api, &["pool", "create", "p0", "d0"]);
    ok(&api, &["volume", "create", "p0", "t", "8MiB", "--thick"]);
    let out = ok(&api, &["volume", "resize", "p0", "t", "16MiB"]);
    assert!(
        row(&out, &["p0", "t"]).contains("16.0 MiB   16.0 MiB"),
        "a grown thick volume is not fully allocated:\n{out}"
    );
    ok(&api, &["export", "create", "t", "p0/t"]);
    let map = nbd_map(&e.uri_for("t"));
    assert!(
        map.iter().all(|&(_, _, t)| t & 1 == 0),
        "holes in a thick volume: {map:?}"
    );
    e.assert_healthy();
}

#[test]
fn shrink_then_grow_reads_zeroes() {
    let dir = TempDir::new("pool-shrink-grow");
    let d0 = file_device(&dir, "d0", "64MiB");
    let (mut e, api) = engine(&["--device", &d0]);
    ok(&api, &["pool", "create", "p0", "d0"]);
    ok(&api, &["volume", "create", "p0", "v", "1MiB"]);
    ok(&api, &["export", "create", "v", "p0/v"]);
    qemu_io(&e.uri_for("v"), &["write -P 0xaa 0 1M"]);
    ok(&api, &["export", "destroy", "v"]);
    ok(&api, &["volume", "resize", "p0", "v", "4096", "--force"]);
    ok(&api, &["volume", "resize", "p0", "v", "1MiB"]);
    ok(&api, &["export", "create", "v", "p0/v"]);
    // Everything past the 4 KiB kept must read as zeroes, the rest of cluster 0 included.
    qemu_io(
        &e.uri_for("v"),
        &["read -P 0xaa 0 4k", "read -P 0 4k 1020k"],
    );
    e.assert_healthy();
}

#[test]
fn destroyed_pool_leaves_a_plain_reusable_device() {
    let dir = TempDir::new("pool-destroy");
    let d0 = file_device(&dir, "d0", "64MiB");
    let (mut e, api) = engine(&["--device", &d0]);
    ok(&api, &["pool", "create", "p0", "d0"]);
    ok(&api, &["volume", "create", "p0", "v", "8MiB"]);
    ok(&api, &["export", "create", "v", "p0/v"]);
    fails(&api, &["pool", "destroy", "p0"], "export");
    ok(&api, &["export", "destroy", "v"]);
    let out = ok(&api, &["pool", "destroy", "p0"]);
    assert!(out.contains("destroyed pool \"p0\""), "{out}");
    assert!(!ok(&api, &["pool", "list"]).contains("p0"));
    fails(&api, &["pool", "destroy", "p0"], "not found");
    // The device holds no pool any more: import refuses it, a new pool can be made on it.
    fails(&api, &["pool", "import", "d0"], "");
    ok(&api, &["pool", "create", "p1", "d0"]);
    ok(&api, &["pool", "destroy", "p1"]);
    let (st, _) = e.terminate(Duration::from_secs(10));
    assert!(st.success());
    let out = offline_check(&format!("uring://{}?ro", dir.join("d0.img").display()));
    assert_eq!(out.status.code(), Some(2), "{}", out.describe());
}

#[test]
fn pools_over_several_devices_grow_online_and_carry_labels() {
    let dir = TempDir::new("pool-multi");
    let d0 = file_device(&dir, "d0", "48MiB");
    let d1 = file_device(&dir, "d1", "32MiB");
    let d2 = file_device(&dir, "d2", "32MiB");
    let d1_img = dir.join("d1.img");
    let capacity = |api: &str| -> u64 {
        let json = ok(api, &["-o", "json", "pool", "list"]);
        let at = json.find("\"capacity_bytes\":").expect("capacity") + 17;
        json[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let before;
    {
        let (mut e, api) = engine(&["--device", &d0, "--device", &d1, "--device", &d2]);
        let out = ok(&api, &["pool", "create", "wide", "d0", "d1"]);
        assert!(row(&out, &["wide", "online"]).contains("d0,d1"), "{out}");
        before = capacity(&api);
        // Bigger than either device alone: the volume spans both.
        assert!(before > 64 * MIB, "capacity {before}");
        ok(&api, &["volume", "create", "wide", "v", "64MiB", "--thick"]);
        ok(&api, &["export", "create", "v", "wide/v"]);
        let v = e.uri_for("v");
        qemu_io(&v, &["write -P 0x31 0 8M", "write -P 0x32 56M 8M", "flush"]);
        // A member of an online pool is claimed.
        fails(
            &api,
            &["export", "create", "raw1", "d1"],
            "holds pool \"wide\"",
        );

        // The member's file grows underneath; the pool takes the space while serving.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&d1_img)
            .unwrap()
            .set_len(48 * MIB)
            .unwrap();
        let out = ok(&api, &["pool", "grow", "wide"]);
        assert!(out.contains("grew from"), "{out}");
        let grown = capacity(&api);
        assert_eq!(grown, before + 16 * MIB);
        // And a third device joins.
        let out = ok(&api, &["pool", "grow", "wide", "d2"]);
        assert!(row(&out, &["wide", "online"]).contains("d0,d1,d2"), "{out}");
        assert_eq!(capacity(&api), grown + 32 * MIB - CLUSTER);
        ok(&api, &["volume", "resize", "wide", "v", "100MiB"]);
        qemu_io(&v, &["write -P 0x33 92M 8M", "flush", "read -P 0x31 0 8M"]);

        // Labels: set, change, remove; bad ones are refused.
        ok(&api, &["pool", "label", "wide", "zone=a", "tier=hdd"]);
        let out = ok(&api, &["pool", "label", "wide", "tier=ssd", "zone-"]);
        assert!(row(&out, &["wide", "online"]).contains("tier=ssd"), "{out}");
        assert!(!out.contains("zone="), "{out}");
        fails(&api, &["pool", "label", "wide", "a b"], "KEY=VALUE");
        fails(&api, &["pool", "label", "wide", "=x"], "label keys");
        let json = ok(&api, &["-o", "json", "pool", "list"]);
        assert!(
            json.contains(r#""devices":["d0","d1","d2"],"labels":{"tier":"ssd"}"#),
            "{json}"
        );
        assert_eq!(ok(&api, &["pool", "check", "wide"]), "pool wide: clean\n");
        let (status, stderr) = e.terminate(Duration::from_secs(20));
        assert!(status.success(), "{stderr}");
    }
    let grown_total = before + 16 * MIB + 32 * MIB - CLUSTER;

    // Restarted with the devices in another order: found, ordered, imported.
    {
        let (mut e, api) = engine(&[
            "--device", &d2, "--device", &d1, "--device", &d0, "--export", "v=wide/v",
        ]);
        let err = e.stderr();
        assert!(err.contains("imported pool \"wide\""), "{err}");
        assert_eq!(capacity(&api), grown_total);
        qemu_io(
            &e.uri("v"),
            &[
                "read -P 0x31 0 8M",
                "read -P 0x32 56M 8M",
                "read -P 0x33 92M 8M",
            ],
        );
        let out = ok(&api, &["pool", "list"]);
        assert!(row(&out, &["wide", "online"]).contains("tier=ssd"), "{out}");
        let (status, stderr) = e.terminate(Duration::from_secs(20));
        assert!(status.success(), "{stderr}");
    }

    // Offline: all members, in any order, are clean; a missing one is named.
    let img = |n: &str| dir.join(&format!("{n}.img")).display().to_string();
    let all = format!("{},{},{}", img("d2"), img("d0"), img("d1"));
    let out = offline_check(&all);
    assert_eq!(out.status.code(), Some(0), "{}", out.describe());
    assert!(out.stdout.contains("member 2 of 3"), "{}", out.describe());
    assert!(
        out.stdout.contains("label           tier=ssd"),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout.contains("pool wide: clean"),
        "{}",
        out.describe()
    );
    let out = offline_check(&format!("{},{}", img("d0"), img("d2")));
    assert_eq!(out.status.code(), Some(2), "{}", out.describe());
    assert!(
        out.stderr.contains("missing member 1"),
        "{}",
        out.describe()
    );

    // A member missing: the pool is faulted, named, and its other devices are not exported;
    // once the device is there, `pool import` assembles it.
    {
        let (mut e, api) = engine(&["--device", &d0, "--device", &d2]);
        let err = e.stderr();
        assert!(
            err.contains(
                "pool \"wide\" is not served: 2 of 3 member device(s) found; missing member 1"
            ),
            "{err}"
        );
        let out = ok(&api, &["pool", "list"]);
        assert!(row(&out, &["wide", "faulted"]).contains("d0,d2"), "{out}");
        fails(&api, &["export", "create", "raw2", "d2"], "faulted pool");
        ok(&api, &["device", "create", "d1", &d1["d1=".len()..]]);
        let out = ok(&api, &["pool", "import", "d2"]);
        assert!(row(&out, &["wide", "online"]).contains("d0,d1,d2"), "{out}");
        assert_eq!(capacity(&api), grown_total);
        ok(&api, &["export", "create", "v", "wide/v"]);
        qemu_io(&e.uri_for("v"), &["read -P 0x33 92M 8M"]);
        // Destroying the pool erases every member's superblocks.
        ok(&api, &["export", "destroy", "v"]);
        ok(&api, &["pool", "destroy", "wide"]);
        ok(&api, &["pool", "create", "again", "d1"]);
        ok(&api, &["pool", "create", "again2", "d2", "d0"]);
        let (status, stderr) = e.terminate(Duration::from_secs(20));
        assert!(status.success(), "{stderr}");
    }
}

/// A file of `size` bytes starting with `head`.
fn file_with(path: &Path, head: &[u8], size: u64) {
    let f = std::fs::File::create(path).expect("create image");
    f.set_len(size).expect("size image");
    f.write_all_at(head, 0).expect("write head");
}

#[test]
fn pool_create_refuses_a_device_holding_data_unless_forced() {
    let dir = TempDir::new("pool-blank");
    let text = b"Dear diary, today I kept my notes on a raw disk.\n";
    let notes = dir.join("notes.img");
    file_with(&notes, text, 64 * MIB);
    // A real ext4 file system, made by mkfs.ext4 (e2fsprogs).
    let ext4 = dir.join("ext4.img");
    file_with(&ext4, b"", 64 * MIB);
    let mkfs = run(
        tool("mkfs.ext4").args(["-q", "-F"]).arg(&ext4),
        Duration::from_secs(60),
    );
    mkfs.assert_success();
    let uri = |p: &Path| format!("uring://{}", p.display());
    let (notes_uri, ext4_uri) = (uri(&notes), uri(&ext4));
    let blank = file_device(&dir, "blank", "64MiB");
    let (mut e, api) = engine(&[
        "--device",
        &format!("notes={notes_uri}"),
        "--device",
        &format!("fs={ext4_uri}"),
        "--device",
        &blank,
    ]);

    // The defect: a file starting with other content was formatted without a word.
    fails(
        &api,
        &["pool", "create", "p0", "notes"],
        "device \"notes\" is not blank: found data at offset 0",
    );
    fails(
        &api,
        &["pool", "create", "p0", "fs"],
        "device \"fs\" is not blank: found an ext4 file system signature at offset 1080",
    );
    // With a blank first member, a non-blank second refuses the whole pool.
    fails(
        &api,
        &["pool", "create", "p0", "blank", "fs"],
        "found an ext4 file system signature at offset 1080",
    );
    let mut head = vec![0u8; text.len()];
    std::fs::File::open(&notes)
        .and_then(|f| f.read_exact_at(&mut head, 0))
        .expect("read notes");
    assert_eq!(head, text, "a refused device was written to");
    assert_eq!(ok(&api, &["pool", "list"]), "no pools\n");
    // A fresh sparse file is all zeroes: blank, no --force needed.
    ok(&api, &["pool", "create", "p0", "blank"]);
    // --force formats what holds data.
    let out = ok(&api, &["pool", "create", "p1", "notes", "--force"]);
    row(&out, &["p1", "online", "notes"]);
    ok(&api, &["volume", "create", "p1", "v", "8MiB"]);
    // A device holding a Ballast pool is refused even with --force, as before.
    ok(&api, &["pool", "close", "p1"]);
    fails(
        &api,
        &["pool", "create", "p2", "notes", "--force"],
        "device \"notes\" already holds pool \"p1\"",
    );
    // Destroyed, a pool leaves a blank device behind.
    ok(&api, &["pool", "destroy", "p0"]);
    ok(&api, &["pool", "create", "p3", "blank"]);
    let (st, stderr) = e.terminate(Duration::from_secs(10));
    assert!(st.success(), "{stderr}");
}
