//! The engine as a process: clean shutdown on signals, data surviving a restart, and run-time
//! management through the gRPC API with the `ballast` CLI.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::nbd::Client;
use common::{Engine, TempDir, ballast, cli_bin, qemu_io, qemu_io_raw};

#[test]
fn sigterm_flushes_and_data_survives_restart() {
    let dir = TempDir::new("shutdown");
    let path = dir.join("disk.img");
    let dev = format!("f=uring://{}?size=16MiB", path.display());
    let mut e = Engine::start(&["--device", &dev, "--export", "f"]);
    let uri = e.uri("f");
    qemu_io(
        &uri,
        &[
            "write -P 0xa5 0 1M",
            "write -P 0x3c 5M 4k",
            "write -P 0x7e 16380k 4k",
            "read -P 0xa5 0 1M",
        ],
    );
    // Clients still connected while the engine stops must not hold the shutdown up: one in
    // the transmission phase, one that never got past the greeting.
    let mut idle = Client::go(e.nbd_addr, "f");
    assert_eq!(idle.size, 16 << 20);
    let half_open = std::net::TcpStream::connect(e.nbd_addr).expect("connect");
    let started = Instant::now();
    let (status, stderr) = e.terminate(Duration::from_secs(10));
    assert!(status.success(), "engine exited with {status}:\n{stderr}");
    assert!(
        stderr.contains("devices flushed"),
        "no flush reported:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        started.elapsed()
    );
    let mut buf = [0u8; 64];
    match idle.s.read(&mut buf) {
        Ok(0) => {}
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("connection still open after shutdown: {other:?}"),
    }
    drop(half_open);
    assert_eq!(std::fs::metadata(&path).expect("file").len(), 16 << 20);

    // A second engine on the same file, opened by plain path this time, sees the data.
    let dev = format!("g={}", path.display());
    let mut e2 = Engine::start(&["--device", &dev, "--export", "g"]);
    qemu_io(
        &e2.uri("g"),
        &[
            "read -P 0xa5 0 1M",
            "read -P 0x3c 5M 4k",
            "read -P 0x7e 16380k 4k",
            "read -P 0 1M 4M",
        ],
    );
    // SIGINT is a clean stop too.
    e2.signal(libc::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = e2.try_status() {
            break st;
        }
        assert!(Instant::now() < deadline, "no exit after SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit after SIGINT: {status}");
}

/// `"key":{"ops":N` in the CLI's JSON stats.
fn json_ops(json: &str, key: &str) -> u64 {
    let pat = format!("\"{key}\":{{\"ops\":");
    let at = json
        .find(&pat)
        .unwrap_or_else(|| panic!("no {pat} in {json}"))
        + pat.len();
    json[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("bad ops count in {json}"))
}

#[test]
fn cli_manages_devices_and_exports_over_grpc() {
    let cli = cli_bin();
    assert!(cli.is_file());
    let mut e = Engine::start(&[
        "--grpc-listen",
        "127.0.0.1:0",
        "--device",
        "m=malloc:///m?size=8MiB",
        "--export",
        "m",
    ]);
    let api = e
        .grpc
        .clone()
        .expect("engine printed no management API address");
    assert!(api.starts_with("http://127.0.0.1:"), "{api}");
    let ok = |args: &[&str]| {
        let out = ballast(&api, args);
        out.assert_success();
        out.stdout
    };

    let info = ok(&["engine", "info"]);
    assert!(info.contains(&e.nbd_addr.to_string()), "{info}");

    let out = ok(&["device", "create", "r1", "malloc:///r1?size=16MiB"]);
    assert!(out.contains("r1") && out.contains("malloc"), "{out}");
    let out = ok(&["export", "create", "r1", "r1"]);
    assert!(out.contains(&e.uri_for("r1")), "{out}");
    let list = ok(&["export", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("r1 ") && l.contains(&e.uri_for("r1"))),
        "r1 not listed:\n{list}"
    );
    assert!(list.lines().any(|l| l.starts_with("m ")), "{list}");

    // The new export serves I/O.
    qemu_io(
        &e.uri_for("r1"),
        &["write -P 0x61 0 1M", "read -P 0x61 0 1M", "flush"],
    );
    let stats = ok(&["-o", "json", "stats", "r1"]);
    assert!(json_ops(&stats, "write") > 0, "no writes counted: {stats}");
    assert!(json_ops(&stats, "read") > 0, "no reads counted: {stats}");
    let table = ok(&["stats", "r1"]);
    assert!(table.contains("device r1"), "{table}");

    // Errors: clear messages, exit status 1, nothing changed.
    let bad = ballast(&api, &["device", "create", "bad", "bogus://x"]);
    assert_eq!(bad.status.code(), Some(1), "{}", bad.describe());
    assert!(
        bad.stderr.starts_with("error: ") && bad.stderr.contains("bogus"),
        "unclear message: {}",
        bad.describe()
    );
    let dup = ballast(&api, &["device", "create", "r1", "malloc:///x?size=1MiB"]);
    assert_eq!(dup.status.code(), Some(1), "{}", dup.describe());
    assert!(dup.stderr.contains("already exists"), "{}", dup.describe());
    let busy = ballast(&api, &["device", "destroy", "r1"]);
    assert_eq!(busy.status.code(), Some(1), "{}", busy.describe());
    assert!(
        busy.stderr.contains("exported") || busy.stderr.contains("in use"),
        "{}",
        busy.describe()
    );
    let nodev = ballast(&api, &["export", "create", "x", "no-such-device"]);
    assert_eq!(nodev.status.code(), Some(1), "{}", nodev.describe());
    assert!(nodev.stderr.contains("not found"), "{}", nodev.describe());

    // Tear down; a client still connected to the export is told ESHUTDOWN and dropped.
    let mut held = Client::go(e.nbd_addr, "r1");
    assert_eq!(held.read(0, 4096), vec![0x61u8; 4096]);
    ok(&["export", "destroy", "r1"]);
    assert_eq!(
        held.simple(proto_nbd::Command::Read, 0, 4096),
        108,
        "ESHUTDOWN after the export was destroyed"
    );
    common::nbd::assert_closed(&mut held.s, "connection to a destroyed export");
    let list = ok(&["export", "list"]);
    assert!(!list.lines().any(|l| l.starts_with("r1 ")), "{list}");
    let gone = qemu_io_raw(&e.uri_for("r1"), &["read 0 4k"]);
    gone.assert_failure();
    ok(&["device", "destroy", "r1"]);
    let devs = ok(&["device", "list"]);
    assert!(!devs.lines().any(|l| l.starts_with("r1 ")), "{devs}");
    assert!(devs.lines().any(|l| l.starts_with("m ")), "{devs}");
    let again = ballast(&api, &["device", "destroy", "r1"]);
    assert_eq!(again.status.code(), Some(1), "{}", again.describe());
    assert!(again.stderr.contains("not found"), "{}", again.describe());

    // The export configured at start-up was never disturbed.
    qemu_io(&e.uri("m"), &["write -P 0x62 0 4k", "read -P 0x62 0 4k"]);
    e.assert_healthy();

    // An engine that is not there is reported as such.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let down = ballast(&format!("http://127.0.0.1:{port}"), &["device", "list"]);
    assert_eq!(down.status.code(), Some(1), "{}", down.describe());
    assert!(
        down.stderr.contains("cannot reach engine"),
        "{}",
        down.describe()
    );
}
