//! NVMe/TCP management through the `ballast` CLI against a live engine: exports with
//! `--protocol nvmf`, subsystems with several namespaces and allow-lists, devices in use,
//! namespace-changed asynchronous events reaching a connected host, and hosts losing their
//! controllers when their subsystem or permission goes. The host side is the raw-socket client
//! of `common::nvme`.

mod common;

use common::nvme::{Answer, HostIdent, Queue};
use common::{Engine, TempDir, ballast, cli_bin};
use proto_nvme::{AsyncEvent, Command, GetLogPage, Identify, SetFeatures, Sgl, cns, log_id};

const BS: u32 = 512;

#[test]
fn cli_manages_nvmf_subsystems() {
    assert!(cli_bin().is_file());
    let e = Engine::start(&[
        "--grpc-listen",
        "127.0.0.1:0",
        "--device",
        "d0=malloc:///d0?size=8MiB",
        "--device",
        "d1=malloc:///d1?size=8MiB",
        "--device",
        "d2=malloc:///d2?size=4MiB",
    ]);
    let api = e.grpc.clone().expect("management API address");
    let addr = e.nvmf_addr.expect("NVMe/TCP address");
    let ok = |args: &[&str]| {
        let out = ballast(&api, args);
        out.assert_success();
        out.stdout
    };
    let fails = |args: &[&str]| {
        let out = ballast(&api, args);
        out.assert_failure();
        out.stderr
    };
    let info = ok(&["engine", "info"]);
    assert!(info.contains(&addr.to_string()), "{info}");

    // The one-step export.
    let vol = "nqn.2024-01.io.ballast:v";
    let out = ok(&["export", "create", "v", "d0", "--protocol", "nvmf"]);
    assert!(out.contains(&format!("nvmf://{addr}/{vol}")), "{out}");
    let list = ok(&["export", "list", "-o", "json"]);
    assert!(list.contains("\"protocol\":\"nvmf\""), "{list}");
    let err = fails(&["device", "destroy", "d0"]);
    assert!(err.contains("namespace 1"), "{err}");
    let err = fails(&["export", "create", "v", "d1"]);
    assert!(err.contains("already exists"), "{err}");
    let h1 = HostIdent::new(1);
    let a = Queue::admin(addr, vol, &h1, false);
    let mut q = Queue::io(addr, vol, &h1, a.cntlid, 1, false);
    ok_io(q.write(1, 0, &[5u8; 512], BS));

    // A subsystem built by hand, with an allow-list.
    let h2 = HostIdent::new(2);
    let multi = "nqn.2024-01.io.test:multi";
    ok(&["nvmf", "create-subsystem", multi, "--allow-host", &h1.nqn]);
    let out = ok(&["nvmf", "add-ns", multi, "d1"]);
    assert!(out.contains("d1"), "{out}");
    let err = fails(&["nvmf", "add-ns", multi, "d2", "--nsid", "1"]);
    assert!(err.contains("already exists"), "{err}");
    let err = fails(&["nvmf", "create-subsystem", "not-an-nqn"]);
    assert!(err.contains("NQN"), "{err}");
    let mut m = Queue::admin(addr, multi, &h1, false);
    // Namespace attribute notices on; an Async Event Request waits.
    let aec = Command::SetFeatures(SetFeatures {
        fid: proto_nvme::feature_id::ASYNC_EVENT_CONFIG,
        cdw11: proto_nvme::async_event_config::NAMESPACE_ATTRIBUTE,
        ..Default::default()
    });
    assert!(m.cmd(aec, 0, &[], 0).cqe().0.status.is_success());
    let aer_cid = m.cid();
    let sqe = Command::AsyncEventRequest.to_sqe(aer_cid, 0, Sgl::null());
    let mut out = Vec::new();
    m.enc.capsule_cmd_pdu(&sqe, &[], &mut out);
    m.send_raw(&out);
    let out = ok(&["nvmf", "add-ns", multi, "d2", "--nsid", "5", "--read-only"]);
    assert!(out.contains("d2"), "{out}");
    let (c, _) = m.wait(aer_cid, &[]).cqe();
    assert_eq!(c.dw0, AsyncEvent::NAMESPACE_CHANGED.to_dw0());
    let g = GetLogPage {
        lid: log_id::CHANGED_NS,
        numd: 1023,
        ..GetLogPage::default()
    };
    let (_, page) = m.cmd(Command::GetLogPage(g), 0xffff_ffff, &[], 4096).cqe();
    // Only what changed since this controller connected; reading the log clears it.
    assert_eq!(proto_nvme::parse_nsid_list(&page), vec![5]);
    let (_, page) = m.cmd(Command::GetLogPage(g), 0xffff_ffff, &[], 4096).cqe();
    assert!(proto_nvme::parse_nsid_list(&page).is_empty());
    let id = Identify {
        cns: cns::ACTIVE_NAMESPACES,
        ..Identify::default()
    };
    let (_, page) = m.cmd(Command::Identify(id), 0, &[], 4096).cqe();
    assert_eq!(proto_nvme::parse_nsid_list(&page), vec![1, 5]);
    let mut mq = Queue::io(addr, multi, &h1, m.cntlid, 1, false);
    let c = mq.write(5, 0, &[1u8; 512], BS).cqe().0;
    assert_eq!(
        c.status,
        proto_nvme::Status::NAMESPACE_WRITE_PROTECTED.with_dnr()
    );
    let list = ok(&["nvmf", "list", "-o", "json"]);
    assert!(
        list.contains(&h1.nqn) && list.contains("\"nsid\":5"),
        "{list}"
    );
    let list = ok(&["nvmf", "list"]);
    assert!(list.contains(multi) && list.contains(vol), "{list}");

    // Host 2 is not allowed until it is added; removing host 1 drops its controller.
    let mut q2 = Queue::open(addr, false, false);
    let c = q2.connect(multi, &h2, 0, 0xffff, 0);
    assert_eq!(
        c.status,
        proto_nvme::Status::CONNECT_INVALID_HOST.with_dnr()
    );
    ok(&["nvmf", "allow-host", multi, &h2.nqn]);
    let _m2 = Queue::admin(addr, multi, &h2, false);
    ok(&["nvmf", "disallow-host", multi, &h1.nqn]);
    assert!(m.recv_pdu().is_none(), "host 1's admin queue still open");
    assert!(mq.recv_pdu().is_none(), "host 1's I/O queue still open");

    // Removing a namespace: its I/O fails with Invalid Namespace.
    let mut m2 = Queue::admin(addr, multi, &h2, false);
    let mut q22 = Queue::io(addr, multi, &h2, m2.cntlid, 1, false);
    ok(&["nvmf", "remove-ns", multi, "5"]);
    let c = q22.read(5, 0, 1, BS).cqe().0;
    assert_eq!(
        c.status,
        proto_nvme::Status::INVALID_NAMESPACE_OR_FORMAT.with_dnr()
    );
    ok_io(q22.read(1, 0, 1, BS));
    ok(&["device", "destroy", "d2"]);
    ok(&["nvmf", "destroy-subsystem", multi]);
    assert!(m2.recv_pdu().is_none());
    assert!(q22.recv_pdu().is_none());

    // Destroying the export closes its host's queues and frees the device.
    ok(&["export", "destroy", "v"]);
    assert!(q.recv_pdu().is_none(), "export's I/O queue still open");
    ok(&["device", "destroy", "d0"]);
    let list = ok(&["nvmf", "list"]);
    assert!(list.contains("no NVMe subsystems"), "{list}");
    drop(a);
}

#[test]
fn pool_volume_over_nvmf() {
    let dir = TempDir::new("nvme-pool");
    let img = dir.join("p.img");
    let dev = format!("pd=uring://{}?size=64MiB", img.display());
    let e = Engine::start(&["--grpc-listen", "127.0.0.1:0", "--device", &dev]);
    let api = e.grpc.clone().expect("management API address");
    let addr = e.nvmf_addr.expect("NVMe/TCP address");
    let ok = |args: &[&str]| {
        let out = ballast(&api, args);
        out.assert_success();
        out.stdout
    };
    let fails = |args: &[&str]| {
        let out = ballast(&api, args);
        out.assert_failure();
        out.stderr
    };
    ok(&["pool", "create", "p", "pd"]);
    ok(&["volume", "create", "p", "v", "16MiB"]);
    let out = ok(&["export", "create", "pv", "p/v", "--protocol", "nvmf"]);
    assert!(out.contains("nqn.2024-01.io.ballast:pv"), "{out}");
    let nqn = "nqn.2024-01.io.ballast:pv";
    let h = HostIdent::new(7);
    let a = Queue::admin(addr, nqn, &h, true);
    let mut q = Queue::io(addr, nqn, &h, a.cntlid, 1, true);
    let id = Identify {
        cns: cns::NAMESPACE,
        ..Identify::default()
    };
    let mut a = a;
    let (_, page) = a.cmd(Command::Identify(id), 1, &[], 4096).cqe();
    let ns = proto_nvme::IdentifyNamespace::parse(&page).unwrap();
    let bs = 1u32 << ns.current_format().unwrap().lbads;
    assert_eq!(ns.nsze * u64::from(bs), 16 << 20);
    let data: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    ok_io(q.write(1, 8, &data, bs));
    let (c, back) = q.read(1, 8, (data.len() / bs as usize) as u16, bs).cqe();
    assert!(c.status.is_success());
    assert_eq!(back, data);
    ok_io(q.cmd(Command::Flush, 1, &[], 0));
    // The volume is in use while exported.
    let err = fails(&["volume", "destroy", "p", "v"]);
    assert!(err.contains("NVMe subsystem"), "{err}");
    let err = fails(&["pool", "close", "p"]);
    assert!(err.contains("NVMe subsystem"), "{err}");
    ok(&["export", "destroy", "pv"]);
    assert!(q.recv_pdu().is_none());
    ok(&["volume", "destroy", "p", "v"]);
}

fn ok_io(a: Answer) {
    let (c, _) = a.cqe();
    assert!(c.status.is_success(), "{c:?}");
}
