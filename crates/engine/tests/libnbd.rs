//! libnbd's tools (nbdinfo, nbdcopy, nbdsh) against the engine: block status maps, copies,
//! export properties.

mod common;

use common::{Engine, TOOL_TIMEOUT, TempDir, nbd_map, qemu_io, random_image, run, sha256, tool};

const K: u64 = 1024;
const M: u64 = 1024 * 1024;
const DATA: u32 = 0;
const HOLE_ZERO: u32 = 3;

/// Checks an `nbdinfo --map` listing: contiguous from 0 to `size`, adjacent extents merged,
/// and equal to `want` (offset, length, type).
fn assert_map(uri: &str, size: u64, want: &[(u64, u64, u32)]) {
    let got = nbd_map(uri);
    let mut at = 0;
    for &(off, len, _) in &got {
        assert_eq!(off, at, "map not contiguous: {got:?}");
        at = off + len;
    }
    assert_eq!(at, size, "map does not cover the export: {got:?}");
    assert_eq!(got, want, "unexpected block status map of {uri}");
}

#[test]
fn nbdinfo_map_ram_export() {
    let mut e = Engine::start(&["--device", "m=malloc:///m?size=16MiB", "--export", "m"]);
    let uri = e.uri("m");
    assert_map(&uri, 16 * M, &[(0, 16 * M, HOLE_ZERO)]);
    qemu_io(&uri, &["write -P 0x11 1M 64k", "write -P 0x22 8M 128k"]);
    assert_map(
        &uri,
        16 * M,
        &[
            (0, M, HOLE_ZERO),
            (M, 64 * K, DATA),
            (M + 64 * K, 7 * M - 64 * K, HOLE_ZERO),
            (8 * M, 128 * K, DATA),
            (8 * M + 128 * K, 8 * M - 128 * K, HOLE_ZERO),
        ],
    );
    // Discarding (and zeroing with holes allowed) gives the space back.
    qemu_io(&uri, &["discard 1M 64k", "write -z 8M 64k"]);
    assert_map(
        &uri,
        16 * M,
        &[
            (0, 8 * M + 64 * K, HOLE_ZERO),
            (8 * M + 64 * K, 64 * K, DATA),
            (8 * M + 128 * K, 8 * M - 128 * K, HOLE_ZERO),
        ],
    );
    e.assert_healthy();
}

#[test]
fn nbdinfo_map_sparse_file_export() {
    let dir = TempDir::new("mapf");
    let dev = format!("f=uring://{}?size=16MiB", dir.join("disk.img").display());
    let mut e = Engine::start(&["--device", &dev, "--export", "f"]);
    let uri = e.uri("f");
    // A file created by size= is sparse.
    assert_map(&uri, 16 * M, &[(0, 16 * M, HOLE_ZERO)]);
    qemu_io(&uri, &["write -P 0x11 0 4M", "write -P 0x22 10M 1M"]);
    assert_map(
        &uri,
        16 * M,
        &[
            (0, 4 * M, DATA),
            (4 * M, 6 * M, HOLE_ZERO),
            (10 * M, M, DATA),
            (11 * M, 5 * M, HOLE_ZERO),
        ],
    );
    // Punch holes.
    qemu_io(
        &uri,
        &["discard 1M 1M", "discard 10M 1M", "read -P 0 1M 1M"],
    );
    assert_map(
        &uri,
        16 * M,
        &[
            (0, M, DATA),
            (M, M, HOLE_ZERO),
            (2 * M, 2 * M, DATA),
            (4 * M, 12 * M, HOLE_ZERO),
        ],
    );
    qemu_io(&uri, &["read -P 0x11 0 1M", "read -P 0x11 2M 2M"]);
    e.assert_healthy();
}

fn nbdcopy_round_trip(dev: &str, dir: &TempDir) {
    let mut e = Engine::start(&["--device", dev, "--export", "d"]);
    let uri = e.uri("d");
    let src = dir.join("src.img");
    let back = dir.join("back.img");
    random_image(&src, 16 << 20, 0xc0b1, &[2, 3, 15]);
    for (from, to) in [
        (src.to_str().expect("utf-8"), uri.as_str()),
        (uri.as_str(), back.to_str().expect("utf-8")),
    ] {
        run(tool("nbdcopy").args([from, to]), TOOL_TIMEOUT).assert_success();
    }
    assert_eq!(std::fs::metadata(&back).expect("copy back").len(), 16 << 20);
    assert_eq!(sha256(&src), sha256(&back), "data changed on the way");
    e.assert_healthy();
}

#[test]
fn nbdcopy_round_trip_file() {
    let dir = TempDir::new("copyf");
    let dev = format!("d=uring://{}?size=16MiB", dir.join("disk.img").display());
    nbdcopy_round_trip(&dev, &dir);
}

#[test]
fn nbdcopy_round_trip_ram() {
    let dir = TempDir::new("copym");
    nbdcopy_round_trip("d=malloc:///d?size=16MiB", &dir);
}

/// `nbdinfo` lines `KEY: VALUE` of one export.
fn nbdinfo(uri: &str) -> String {
    let out = run(tool("nbdinfo").arg(uri), TOOL_TIMEOUT);
    out.assert_success();
    out.stdout
}

#[test]
fn config_file_with_read_only_export() {
    let dir = TempDir::new("conf");
    let conf = dir.join("engine.toml");
    let file = dir.join("disk.img");
    std::fs::write(
        &conf,
        format!(
            r#"
cores = 2
poll_mode = "adaptive"
pin = false
nbd_listen = "127.0.0.1:0"
nvmf_listen = "127.0.0.1:0"
grpc_listen = "none"

[[device]]
name = "ram"
uri = "malloc:///ram?size=8MiB"

[[device]]
name = "file"
uri = "{}?size=4MiB"

[[export]]
name = "ram-ro"
device = "ram"
read_only = true

[[export]]
name = "ram"

[[export]]
name = "file"
"#,
            file.display()
        ),
    )
    .expect("write config");
    let conf = conf.to_str().expect("utf-8").to_string();
    let mut e = Engine::spawn(vec!["--config".into(), conf], 3);
    assert!(
        e.stderr().contains("2 reactor(s), adaptive mode"),
        "cores/poll_mode from the file not applied:\n{}",
        e.stderr()
    );
    let ro = nbdinfo(&e.uri("ram-ro"));
    assert!(ro.contains("is_read_only: true"), "{ro}");
    assert!(ro.contains("export-size: 8388608"), "{ro}");
    let rw = nbdinfo(&e.uri("ram"));
    assert!(rw.contains("is_read_only: false"), "{rw}");
    let f = nbdinfo(&e.uri("file"));
    assert!(f.contains("is_read_only: false"), "{f}");
    assert!(f.contains("export-size: 4194304"), "{f}");
    assert_eq!(std::fs::metadata(&file).expect("file").len(), 4 << 20);
    e.assert_healthy();
}

#[test]
fn nbdsh_export_list_and_flags() {
    let mut e = Engine::start(&[
        "--device",
        "m=malloc:///m?size=8MiB",
        "--export",
        "m",
        "--export",
        "alias=m,ro",
    ]);
    // Python through libnbd: list exports, then check the negotiated flags of one.
    let script = format!(
        r#"
h.set_opt_mode(True)
h.connect_uri("{uri}")
names = []
h.opt_list(lambda name, desc: names.append(name))
print("exports:", sorted(names))
h.set_export_name("m")
h.opt_go()
print("size:", h.get_size())
print("multi_conn:", h.can_multi_conn())
print("trim:", h.can_trim(), "zero:", h.can_zero(), "fua:", h.can_fua(), "df:", h.can_df())
h.pwrite(b"\x5a" * 4096, 8192)
h.flush()
assert h.pread(4096, 8192) == b"\x5a" * 4096
h.shutdown()
"#,
        uri = e.uri("m").trim_end_matches("/m").to_owned() + "/"
    );
    let out = run(tool("nbdsh").args(["-c", &script]), TOOL_TIMEOUT);
    out.assert_success();
    for want in [
        "exports: ['alias', 'm']",
        "size: 8388608",
        "multi_conn: True",
        "trim: True zero: True fua: True df: True",
    ] {
        assert!(
            out.stdout.contains(want),
            "{want:?} missing: {}",
            out.describe()
        );
    }
    e.assert_healthy();
}

/// Every libnbd connection must succeed, in every polling mode. libnbd sends an option's
/// header and data in separate segments (`MSG_MORE`); the engine once reset about half of
/// these connections in interrupt mode because a handshake read could not continue after a
/// partial receive (regression test; see also
/// `bad_input::handshake_messages_split_across_segments`).
#[test]
fn libnbd_clients_connect_reliably_in_every_poll_mode() {
    const RUNS: usize = 10;
    let mut failures = Vec::new();
    for mode in ["interrupt", "poll", "adaptive"] {
        let mut e = Engine::start(&[
            "--poll-mode",
            mode,
            "--device",
            "m=malloc:///m?size=8MiB",
            "--export",
            "m",
        ]);
        let mut failed = 0;
        let mut last = String::new();
        for _ in 0..RUNS {
            let out = run(tool("nbdinfo").arg(e.uri("m")), TOOL_TIMEOUT);
            if !out.status.success() {
                failed += 1;
                last = out.stderr.clone();
            }
        }
        if failed > 0 {
            failures.push(format!(
                "{mode}: {failed} of 20 nbdinfo runs failed, e.g. {last}"
            ));
        }
        e.assert_healthy();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
