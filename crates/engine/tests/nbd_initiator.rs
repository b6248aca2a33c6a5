//! The NBD initiator (`nbd://` devices) against our own NBD target: engine B opens an export
//! of engine A as a device and exports it again; QEMU's and libnbd's clients, talking to B,
//! see A's data and A's holes.

mod common;

use common::{Engine, TOOL_TIMEOUT, TempDir, nbd_map, qemu_io, random_image, run, tool};

const MIB: usize = 1 << 20;

#[test]
fn an_engine_reexports_another_engines_export_over_nbd() {
    let dir = TempDir::new("nbdinit");
    let mut a = Engine::start(&[
        "--cores",
        "2",
        "--device",
        "m=malloc:///m?size=32MiB",
        "--export",
        "m",
    ]);
    let remote = format!("r={}?timeout=10000", a.uri("m"));
    let mut b = Engine::start(&["--cores", "2", "--device", &remote, "--export", "r"]);

    // Write through B (B's target -> B's initiator -> A's target -> A's RAM), compare on A.
    let src = dir.join("src.img");
    random_image(&src, 32 * MIB, 0xb0b, &[0, 3, 4, 20]);
    let src = src.to_str().expect("utf-8 path");
    run(
        tool("qemu-img").args(["convert", "-n", "-f", "raw", "-O", "raw", src, &b.uri("r")]),
        TOOL_TIMEOUT,
    )
    .assert_success();
    for uri in [a.uri("m"), b.uri("r")] {
        let out = run(
            tool("qemu-img").args(["compare", "-f", "raw", "-F", "raw", src, &uri]),
            TOOL_TIMEOUT,
        );
        out.assert_success();
        assert!(
            out.stdout.contains("Images are identical."),
            "{uri}: {}",
            out.describe()
        );
    }

    // Zeroes and discards travel too; A's holes show through B's block status.
    qemu_io(
        &b.uri("r"),
        &["write -z 8M 1M", "discard 9M 1M", "read -P 0 8M 2M"],
    );
    let map = nbd_map(&b.uri("r"));
    let hole_at = |off: u64| {
        map.iter()
            .find(|(o, l, _)| *o <= off && off < o + l)
            .map(|(_, _, t)| t & 1 == 1)
            .unwrap_or_else(|| panic!("no extent at {off}: {map:?}"))
    };
    assert!(!hole_at(1 << 20), "data at 1 MiB: {map:?}");
    assert!(
        hole_at(9 << 20),
        "discarded MiB at 9 MiB is a hole: {map:?}"
    );
    a.assert_healthy();
    b.assert_healthy();
}
