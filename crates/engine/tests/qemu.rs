//! QEMU's NBD client (qemu-img, qemu-io) against the engine.

mod common;

use common::{Engine, TOOL_TIMEOUT, TempDir, qemu_io, qemu_io_raw, random_image, run, tool};

const MIB: usize = 1 << 20;

/// Converts a 32 MiB random image (with zero regions) into the export, then compares.
fn convert_and_compare(dir: &TempDir, uri: &str) {
    let src = dir.join("src.img");
    random_image(&src, 32 * MIB, 0x5eed_1234, &[0, 5, 6, 17, 31]);
    let src = src.to_str().expect("utf-8 path");
    run(
        tool("qemu-img").args(["convert", "-n", "-f", "raw", "-O", "raw", src, uri]),
        TOOL_TIMEOUT,
    )
    .assert_success();
    let out = run(
        tool("qemu-img").args(["compare", "-f", "raw", "-F", "raw", src, uri]),
        TOOL_TIMEOUT,
    );
    out.assert_success();
    assert!(
        out.stdout.contains("Images are identical."),
        "{}",
        out.describe()
    );
    // And a change is noticed: compare is really reading the export.
    qemu_io(uri, &["write -P 0x77 20M 4k"]);
    let out = run(
        tool("qemu-img").args(["compare", "-f", "raw", "-F", "raw", src, uri]),
        TOOL_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.describe());
    assert!(
        out.stdout.contains("Content mismatch at offset 20971520"),
        "{}",
        out.describe()
    );
}

#[test]
fn qemu_img_convert_compare_file() {
    let dir = TempDir::new("qimgf");
    let dev = format!("f=uring://{}?size=32MiB", dir.join("disk.img").display());
    let mut e = Engine::start(&["--device", &dev, "--export", "f"]);
    convert_and_compare(&dir, &e.uri("f"));
    e.assert_healthy();
}

#[test]
fn qemu_img_convert_compare_ram() {
    let dir = TempDir::new("qimgm");
    let mut e = Engine::start(&["--device", "m=malloc:///m?size=32MiB", "--export", "m"]);
    convert_and_compare(&dir, &e.uri("m"));
    e.assert_healthy();
}

/// Unaligned writes (read-modify-write in the client), discard, write-zeroes.
fn io_patterns(uri: &str) {
    qemu_io(
        uri,
        &[
            "write -P 0xab 100 3000",
            "read -P 0xab 100 3000",
            "write -P 0xcd 4095 4099",
            "read -P 0xcd 4095 4099",
            "read -P 0xab 100 3000",
            "write -P 0x11 1M 1M",
            "read -P 0x11 1M 1M",
            "discard 0 1M",
            "read -P 0 0 1M",
            "read -P 0x11 1M 1M",
            "write -P 0xee 2M 64k",
            "write -z 2M 64k",
            "read -P 0 2M 64k",
            "write -P 0x99 -f 3M 128k",
            "flush",
            "read -P 0x99 3M 128k",
        ],
    );
    // A fresh connection sees the same data.
    qemu_io(
        uri,
        &[
            "read -P 0 0 1M",
            "read -P 0x11 1M 1M",
            "read -P 0 2M 64k",
            "read -P 0x99 3M 128k",
        ],
    );
    // The checks are real: a wrong pattern is reported.
    let out = qemu_io_raw(uri, &["read -P 0x12 1M 4k"]);
    assert!(
        out.text().contains("Pattern verification failed"),
        "qemu-io did not notice a wrong pattern: {}",
        out.describe()
    );
}

#[test]
fn qemu_io_patterns_file() {
    let dir = TempDir::new("qiof");
    let dev = format!("f=uring://{}?size=16MiB", dir.join("disk.img").display());
    let mut e = Engine::start(&["--device", &dev, "--export", "f"]);
    io_patterns(&e.uri("f"));
    e.assert_healthy();
}

#[test]
fn qemu_io_patterns_ram() {
    let mut e = Engine::start(&["--device", "m=malloc:///m?size=16MiB", "--export", "m"]);
    io_patterns(&e.uri("m"));
    e.assert_healthy();
}

#[test]
fn qemu_io_write_to_read_only_export_fails() {
    let mut e = Engine::start(&[
        "--device",
        "m=malloc:///m?size=16MiB",
        "--export",
        "m",
        "--export",
        "ro=m,ro",
    ]);
    qemu_io(&e.uri("m"), &["write -P 0x3c 0 64k"]);
    // Opened read-write, the client refuses because the export is read-only.
    let out = qemu_io_raw(&e.uri("ro"), &["write -P 0x44 0 4k"]);
    out.assert_failure();
    assert!(
        out.text().contains("Permission denied") || out.text().contains("read-only"),
        "{}",
        out.describe()
    );
    // Reads work on it, and the data is untouched.
    let mut c = tool("qemu-io");
    c.args(["-r", "-f", "raw", &e.uri("ro"), "-c", "read -P 0x3c 0 64k"]);
    let out = run(&mut c, TOOL_TIMEOUT);
    out.assert_success();
    assert!(
        !out.text().contains("Pattern verification failed"),
        "{}",
        out.describe()
    );
    e.assert_healthy();
}
