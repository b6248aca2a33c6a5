//! What a host sees, on each protocol, when it writes through a nexus that a newer
//! incarnation of the same volume has fenced out: the nexus answers `Conflict`, which the NBD
//! target sends as `EPERM` (qemu-io, a real client, reports "Operation not permitted") and
//! the NVMe/TCP target as Reservation Conflict (SCT 0, SC 83h, DNR) — not `EIO` or Internal
//! Error. The NVMe side is checked with our raw host (`common::nvme`, exact status bytes);
//! the Linux kernel's host is only in the QEMU guest tests.

mod common;

use std::time::Duration;

use common::nvme::{Answer, HostIdent, Queue};
use common::{Engine, TempDir, ballast, run, tool};
use proto_nvme::Status;

fn ok(api: &str, args: &[&str]) -> String {
    let out = ballast(api, args);
    out.assert_success();
    out.stdout
}

/// `qemu-io` on `uri`: whether it succeeded, and its output.
fn qemu_io_try(uri: &str, cmds: &[&str]) -> (bool, String) {
    let mut c = tool("qemu-io");
    c.args(["-f", "raw", uri]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let out = run(&mut c, Duration::from_secs(60));
    let text = out.text();
    let ok = out.status.success() && !text.contains("failed") && !text.contains("error");
    (ok, text)
}

/// The status of an NVMe write of 4 KiB of `byte` at block 0 of namespace 1 of `nqn` at
/// `addr`, through a fresh controller of `host`.
fn nvme_write_status(addr: std::net::SocketAddr, nqn: &str, host: &HostIdent, byte: u8) -> Status {
    let a = Queue::admin(addr, nqn, host, false);
    let mut q = Queue::io(addr, nqn, host, a.cntlid, 1, false);
    match q.write(1, 0, &[byte; 4096], 512) {
        Answer::Done(c, _) => c.status,
        other => panic!("expected a completion, got {other:?}"),
    }
}

#[test]
fn a_host_writing_through_a_fenced_nexus_sees_eperm_over_nbd_and_reservation_conflict_over_nvme() {
    let dir = TempDir::new("fenced-nexus");
    // Engine B holds the replica and exports it over NVMe/TCP.
    let replica = format!("r=uring://{}?size=64MiB", dir.join("r.img").display());
    let b = Engine::start(&["--device", &replica, "--nvmf-export", "r"]);
    let target = b.nvmf_uris[0].clone();
    // Two engines, each with its own NVMe host identity, each running an incarnation of the
    // volume over that replica, exported over NBD (`n`) and NVMe/TCP (`nv`).
    let incarnation = |host_id: &str, epoch: &str| {
        let dev = format!("r={target}?timeout=5000");
        let e = Engine::start(&[
            "--grpc-listen",
            "127.0.0.1:0",
            "--host-id",
            host_id,
            "--device",
            &dev,
        ]);
        let api = e.grpc.clone().expect("management API address");
        ok(
            &api,
            &["nexus", "create", "n", "32MiB", "r", "--epoch", epoch],
        );
        ok(&api, &["export", "create", "n", "n"]);
        ok(&api, &["export", "create", "nv", "n", "--protocol", "nvmf"]);
        (e, api)
    };
    let nqn = target_nvme::export_nqn("nv");
    let host = HostIdent::new(0x31);
    let (old, old_api) = incarnation("7c9e6679-7425-40de-944b-e07fc1f90ae7", "1");
    let old_nvmf = old.nvmf_addr.expect("NVMe/TCP listener");
    // Before the newer incarnation: both protocols write.
    let (ok1, text) = qemu_io_try(&old.uri_for("n"), &["write -P 0x11 0 1M", "flush"]);
    assert!(ok1, "the first incarnation cannot write over NBD: {text}");
    assert_eq!(
        nvme_write_status(old_nvmf, &nqn, &host, 0x44),
        Status::SUCCESS
    );

    let (new, _new_api) = incarnation("9b2f6a0e-3c1d-4e8a-8f6b-2d7e5a4c3b1a", "2");
    let (ok2, text) = qemu_io_try(&new.uri_for("n"), &["write -P 0x22 1M 1M", "flush"]);
    assert!(ok2, "the new incarnation cannot write: {text}");

    // NBD: the write fails with EPERM, which qemu-io reports by name.
    let (ok3, text) = qemu_io_try(&old.uri_for("n"), &["write -P 0x33 0 64k"]);
    assert!(!ok3, "the fenced incarnation could still write: {text}");
    assert!(
        text.contains("Operation not permitted"),
        "qemu-io should report EPERM for a fenced write: {text}"
    );
    // NVMe/TCP: Reservation Conflict, do not retry.
    let s = nvme_write_status(old_nvmf, &nqn, &host, 0x55);
    assert_eq!(s, Status::RESERVATION_CONFLICT.with_dnr(), "{s:?}");
    assert_eq!((s.sct, s.sc), (0, 0x83));
    // The old nexus says it is fenced and did not retire its child for it.
    let list = ok(&old_api, &["nexus", "list"]);
    assert!(list.contains("fenced"), "{list}");
    assert!(!list.contains("faulted"), "{list}");
    // The refused writes reached nothing: the new incarnation reads the old data.
    let (ok4, text) = qemu_io_try(
        &new.uri_for("n"),
        &[
            "read -P 0x44 0 4k",
            "read -P 0x11 4k 1020k",
            "read -P 0x22 1M 1M",
        ],
    );
    assert!(ok4, "{text}");
    drop((old, new, b));
}
