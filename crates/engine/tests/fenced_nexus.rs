//! What a host sees, on each protocol, when it writes through a nexus that a newer
//! incarnation of the same volume has fenced out: the nexus answers `Conflict`, which the NBD
//! target sends as `EPERM` (qemu-io, a real client, reports "Operation not permitted") and
//! the NVMe/TCP target as Reservation Conflict (SCT 0, SC 83h, DNR) — not `EIO` or Internal
//! Error. The NVMe side is checked twice: with our raw host (`common::nvme`, exact status
//! bytes) and with the Linux kernel's NVMe/TCP host in the QEMU guest (crates/testvm), which
//! logs the status and fails the write with `EBADE` ("Invalid exchange", the block layer's
//! reservation-conflict status) where it used to log `I/O Error (sct 0x0 / sc 0x6)`.

mod common;

use std::time::Duration;

use common::nvme::{Answer, HostIdent, Queue};
use common::{Engine, TempDir, ballast, nexus_incarnation, qemu_io_try};
use proto_nvme::Status;

fn ok(api: &str, args: &[&str]) -> String {
    let out = ballast(api, args);
    out.assert_success();
    out.stdout
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

/// A volume over one replica (on engine `b`, exported over NVMe/TCP) with two incarnations:
/// `old` (epoch 1) wrote (0x11 over NBD in the first MiB, then 0x44 over NVMe/TCP in its
/// first 4 KiB), then `new` (epoch 2, another engine and host identity) took the
/// replica over and wrote. Each exports its nexus over NBD (`n`) and NVMe/TCP (`nv`).
struct Fenced {
    old: Engine,
    old_api: String,
    new: Engine,
    _replica: Engine,
    _dir: TempDir,
}

impl Fenced {
    fn set_up(name: &str) -> Fenced {
        let dir = TempDir::new(name);
        let replica = format!("r=uring://{}?size=64MiB", dir.join("r.img").display());
        let b = Engine::start(&["--device", &replica, "--nvmf-export", "r"]);
        let target = b.nvmf_uris[0].clone();
        let incarnation =
            |host_id: &str, epoch: &str| nexus_incarnation(&target, host_id, epoch, true);
        let (old, old_api) = incarnation("7c9e6679-7425-40de-944b-e07fc1f90ae7", "1");
        // Before the newer incarnation: the old one writes, over both protocols.
        let (ok1, text) = qemu_io_try(&old.uri_for("n"), &["write -P 0x11 0 1M", "flush"]);
        assert!(ok1, "the first incarnation cannot write over NBD: {text}");
        let old_nvmf = old.nvmf_addr.expect("NVMe/TCP listener");
        let nqn = target_nvme::export_nqn("nv");
        assert_eq!(
            nvme_write_status(old_nvmf, &nqn, &HostIdent::new(0x31), 0x44),
            Status::SUCCESS
        );
        let (new, _) = incarnation("9b2f6a0e-3c1d-4e8a-8f6b-2d7e5a4c3b1a", "2");
        let (ok2, text) = qemu_io_try(&new.uri_for("n"), &["write -P 0x22 1M 1M", "flush"]);
        assert!(ok2, "the new incarnation cannot write: {text}");
        Fenced {
            old,
            old_api,
            new,
            _replica: b,
            _dir: dir,
        }
    }
}

#[test]
fn a_host_writing_through_a_fenced_nexus_sees_eperm_over_nbd_and_reservation_conflict_over_nvme() {
    let nqn = target_nvme::export_nqn("nv");
    let host = HostIdent::new(0x31);
    let f = Fenced::set_up("fenced-nexus");
    let (old, old_api, new) = (&f.old, &f.old_api, &f.new);
    let old_nvmf = old.nvmf_addr.expect("NVMe/TCP listener");

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
    let list = ok(old_api, &["nexus", "list"]);
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
    drop(f);
}

/// The guest's script: connect to the old incarnation's NVMe/TCP export, write with O_DIRECT
/// (refused), read (allowed: the fence is Write Exclusive), and print the kernel's log.
const GUEST_SCRIPT: &str = r#"
set -u
say() { echo "GUEST $*"; }
nvme connect -t tcp -a 10.0.2.2 -s @PORT@ -n @NQN@ -i 1 | sed 's/^/GUEST connect /'
i=0
while [ ! -e /dev/nvme0n1 ]; do
    i=$((i + 1)); [ $i -gt 300 ] && { say no-device; exit 1; }; sleep 0.1
done
dd if=/dev/zero of=/dev/nvme0n1 bs=4096 count=1 oflag=direct 2>/tmp/dd.err
say write-exit $?
sed 's/^/GUEST dd /' /tmp/dd.err
dd if=/dev/nvme0n1 of=/dev/null bs=4096 count=1 iflag=direct 2>/dev/null
say read-exit $?
dmesg | grep -i nvme | sed 's/^/GUEST dmesg /'
nvme disconnect -n @NQN@ >/dev/null
exit 0
"#;

#[test]
fn the_kernels_nvme_host_writing_through_a_fenced_nexus_gets_a_reservation_conflict() {
    let guest = testvm::Guest::ensure().unwrap_or_else(|e| {
        panic!("cannot build the test guest: {e}\n(`cargo xtask vm build` builds it by hand)")
    });
    let f = Fenced::set_up("fenced-nexus-kernel");
    let port = f.old.nvmf_addr.expect("NVMe/TCP listener").port();
    let script = GUEST_SCRIPT
        .replace("@PORT@", &port.to_string())
        .replace("@NQN@", &target_nvme::export_nqn("nv"));
    let out = guest
        .run(
            &script,
            testvm::RunOpts::default().timeout(Duration::from_secs(300)),
        )
        .unwrap_or_else(|e| panic!("cannot run the guest: {e}"));
    let report = || format!("{}\n--- old engine ---\n{}", out.describe(), f.old.stderr());
    assert!(out.success(), "{}", report());
    let lines: Vec<&str> = out
        .script_output()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("GUEST "))
        .collect();
    for l in &lines {
        eprintln!("guest: {l}");
    }
    let has = |s: &str| lines.iter().any(|l| l.contains(s));
    assert!(
        has("write-exit 1"),
        "the fenced write succeeded\n{}",
        report()
    );
    // The block layer's status for a reservation conflict is EBADE.
    assert!(
        has("Invalid exchange"),
        "dd's error is not EBADE\n{}",
        report()
    );
    // The kernel logs the NVMe status: Reservation Conflict (0x83), not Internal Error (0x6).
    assert!(
        has("sc 0x83") || has("Reservation Conflict"),
        "the kernel did not log a reservation conflict\n{}",
        report()
    );
    assert!(
        !has("sc 0x6 "),
        "the kernel logged an internal error\n{}",
        report()
    );
    assert!(
        has("read-exit 0"),
        "reads are not fenced (Write Exclusive)\n{}",
        report()
    );
}
