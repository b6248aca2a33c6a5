//! The NVMe/TCP target through our own raw-socket host (`common::nvme`, built on
//! `proto-nvme`): discovery, controllers, I/O with and without digests, in-capsule and R2T
//! writes, reservations between two hosts, keep-alive expiry, and bad input — malformed PDUs,
//! wrong digests, unknown opcodes, out-of-range LBAs, absent namespaces — answered with
//! NVMe status or a C2HTermReq on that connection only.

mod common;

use std::time::{Duration, Instant};

use common::nvme::{Answer, HostIdent, Queue, raw_sqe};
use common::{Engine, Rng};
use proto_nvme::{
    Command, DISCOVERY_NQN, DiscoveryLog, GetLogPage, Identify, IdentifyController,
    IdentifyNamespace, ReservationAcquire, ReservationKeys, ReservationRegister,
    ReservationRelease, ReservationReport, ReservationStatus, Status, cns, log_id, rtype,
};

const NQN: &str = "nqn.2024-01.io.ballast:m";
const BS: u32 = 512;

fn engine() -> Engine {
    Engine::start(&["--device", "m=malloc:///m?size=64MiB", "--nvmf-export", "m"])
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

fn ok(a: Answer) -> Vec<u8> {
    let (c, d) = a.cqe();
    assert!(c.status.is_success(), "status {:?}", c.status);
    d
}

fn status(a: Answer) -> Status {
    a.cqe().0.status
}

fn get_log(q: &mut Queue, lid: u8, len: u32) -> Vec<u8> {
    let g = GetLogPage {
        lid,
        numd: len / 4 - 1,
        ..GetLogPage::default()
    };
    ok(q.cmd(Command::GetLogPage(g), 0xffff_ffff, &[], len))
}

fn identify(q: &mut Queue, c: u8, nsid: u32) -> Vec<u8> {
    let id = Identify {
        cns: c,
        ..Identify::default()
    };
    ok(q.cmd(Command::Identify(id), nsid, &[], 4096))
}

#[test]
fn discovery_admin_and_io_with_and_without_digests() {
    let e = engine();
    let addr = e.nvmf_addr.expect("NVMe/TCP address");
    assert_eq!(e.nvmf_uris, vec![format!("nvmf://{addr}/{NQN}")]);
    let host = HostIdent::new(1);

    let mut d = Queue::admin(addr, DISCOVERY_NQN, &host, false);
    let log = DiscoveryLog::parse(&get_log(&mut d, log_id::DISCOVERY, 4096)).unwrap();
    assert_eq!(log.entries.len(), 1, "{log:?}");
    let ent = &log.entries[0];
    assert_eq!(ent.subnqn, NQN);
    assert_eq!(ent.trsvcid, addr.port().to_string());
    assert_eq!(ent.traddr, addr.ip().to_string());
    assert_eq!(ent.trtype, proto_nvme::trtype::TCP);
    drop(d);

    for digests in [false, true] {
        let mut a = Queue::admin(addr, NQN, &host, digests);
        let ic = IdentifyController::parse(&identify(&mut a, cns::CONTROLLER, 0)).unwrap();
        assert_eq!(ic.subnqn, NQN);
        assert_eq!(ic.cntlid, a.cntlid);
        assert!(ic.mn.starts_with("Ballast"));
        assert_eq!(ic.icdoff, 0);
        let ns = IdentifyNamespace::parse(&identify(&mut a, cns::NAMESPACE, 1)).unwrap();
        assert_eq!(ns.nsze, (64 << 20) / u64::from(BS));
        let list = proto_nvme::parse_nsid_list(&identify(&mut a, cns::ACTIVE_NAMESPACES, 0));
        assert_eq!(list, vec![1]);
        let nq = Command::SetFeatures(proto_nvme::SetFeatures {
            fid: proto_nvme::feature_id::NUMBER_OF_QUEUES,
            cdw11: 0x0001_0001,
            ..Default::default()
        });
        let (c, _) = a.cmd(nq, 0, &[], 0).cqe();
        assert_eq!(c.dw0, 0x0001_0001);
        let mut q1 = Queue::io(addr, NQN, &host, a.cntlid, 1, digests);
        let mut q2 = Queue::io(addr, NQN, &host, a.cntlid, 2, digests);
        // 4 KiB in the capsule, 256 KiB through R2T/H2CData (several PDUs), read back on
        // the other queue.
        let small = random(4096, 1);
        let big = random(256 << 10, 2);
        ok(q1.write(1, 8, &small, BS));
        ok(q1.write(1, 1024, &big, BS));
        assert_eq!(ok(q2.read(1, 8, 8, BS)), small);
        assert_eq!(ok(q2.read(1, 1024, 512, BS)), big);
        ok(q1.cmd(Command::Flush, 1, &[], 0));
        let smart = proto_nvme::SmartLog::parse(&get_log(&mut a, log_id::SMART, 512)).unwrap();
        assert_eq!(smart.host_write_commands, 2);
        assert_eq!(smart.host_read_commands, 2);
    }
}

#[test]
fn bad_commands_get_nvme_status() {
    let e = engine();
    let addr = e.nvmf_addr.expect("NVMe/TCP address");
    let host = HostIdent::new(2);
    let mut a = Queue::admin(addr, NQN, &host, true);
    let mut q = Queue::io(addr, NQN, &host, a.cntlid, 1, true);
    let blocks = (64u64 << 20) / u64::from(BS);
    // Unknown opcodes (admin and I/O).
    let cid = a.cid();
    assert_eq!(
        status(a.command(raw_sqe(0xc3, cid, 0), &[])),
        Status::INVALID_OPCODE.with_dnr()
    );
    let cid = q.cid();
    assert_eq!(
        status(q.command(raw_sqe(0x7e, cid, 1), &[])),
        Status::INVALID_OPCODE.with_dnr()
    );
    // Out-of-range LBAs, absent namespaces.
    assert_eq!(
        status(q.read(1, blocks - 1, 2, BS)),
        Status::LBA_OUT_OF_RANGE.with_dnr()
    );
    assert_eq!(
        status(q.write(1, blocks, &[0u8; 512], BS)),
        Status::LBA_OUT_OF_RANGE.with_dnr()
    );
    assert_eq!(
        status(q.read(7, 0, 1, BS)),
        Status::INVALID_NAMESPACE_OR_FORMAT.with_dnr()
    );
    let id = Identify {
        cns: cns::NS_ID_DESCRIPTORS,
        ..Identify::default()
    };
    assert_eq!(
        status(a.cmd(Command::Identify(id), 9, &[], 4096)),
        Status::INVALID_NAMESPACE_OR_FORMAT.with_dnr()
    );
    // Unknown log page, reservation report without extended data.
    let g = GetLogPage {
        lid: 0x42,
        numd: 127,
        ..GetLogPage::default()
    };
    assert_eq!(
        status(a.cmd(Command::GetLogPage(g), 0, &[], 512)),
        Status::INVALID_LOG_PAGE.with_dnr()
    );
    let rr = ReservationReport {
        numd: 15,
        eds: false,
    };
    assert_eq!(
        status(q.cmd(Command::ReservationReport(rr), 1, &[], 64)),
        Status::HOST_ID_INCONSISTENT_FORMAT.with_dnr()
    );
    // The Error log has them, newest first.
    let log = get_log(&mut a, log_id::ERROR, 64);
    let ent = proto_nvme::ErrorLogEntry::parse(&log).unwrap();
    assert_eq!(ent.status, Status::HOST_ID_INCONSISTENT_FORMAT.with_dnr());
    assert_eq!(ent.sqid, 1);
    // The queues still work.
    ok(q.write(1, 0, &[7u8; 512], BS));
    assert_eq!(ok(q.read(1, 0, 1, BS)), vec![7u8; 512]);
}

#[test]
fn connect_errors() {
    let e = Engine::start(&[
        "--device",
        "m=malloc:///m?size=8MiB",
        "--nvmf-export",
        &format!("m,host={}", HostIdent::new(3).nqn),
    ]);
    let addr = e.nvmf_addr.expect("NVMe/TCP address");
    let allowed = HostIdent::new(3);
    let other = HostIdent::new(4);
    // A command before Connect.
    let mut q = Queue::open(addr, false, false);
    let cid = q.cid();
    assert_eq!(
        status(q.command(raw_sqe(0x06, cid, 0), &[])),
        Status::COMMAND_SEQUENCE_ERROR.with_dnr()
    );
    // Unknown subsystem: Connect Invalid Parameters pointing at SUBNQN in the data.
    let c = q.connect("nqn.2024-01.io.ballast:nope", &allowed, 0, 0xffff, 0);
    assert_eq!(c.status, Status::CONNECT_INVALID_PARAMETERS.with_dnr());
    assert_eq!(c.dw0, proto_nvme::connect_invalid_parameter_dw0(true, 256));
    // A host not on the allow-list.
    let c = q.connect(NQN, &other, 0, 0xffff, 0);
    assert_eq!(c.status, Status::CONNECT_INVALID_HOST.with_dnr());
    // The discovery log hides the subsystem from that host, shows it to the allowed one.
    let mut d = Queue::admin(addr, DISCOVERY_NQN, &other, false);
    let log = DiscoveryLog::parse(&get_log(&mut d, log_id::DISCOVERY, 2048)).unwrap();
    assert!(log.entries.is_empty(), "{log:?}");
    let mut d = Queue::admin(addr, DISCOVERY_NQN, &allowed, false);
    let log = DiscoveryLog::parse(&get_log(&mut d, log_id::DISCOVERY, 2048)).unwrap();
    assert_eq!(log.entries.len(), 1);
    // I/O queue of an unknown controller, of another host's controller.
    let a = Queue::admin(addr, NQN, &allowed, false);
    let mut q = Queue::open(addr, false, false);
    let c = q.connect(NQN, &allowed, 1, a.cntlid.wrapping_add(7), 0);
    assert_eq!(c.status, Status::CONNECT_INVALID_PARAMETERS.with_dnr());
    assert_eq!(c.dw0, proto_nvme::connect_invalid_parameter_dw0(true, 16));
    let mut q = Queue::open(addr, false, false);
    let mut impostor = allowed.clone();
    impostor.id = [9; 16];
    let c = q.connect(NQN, &impostor, 1, a.cntlid, 0);
    assert_eq!(c.status, Status::CONNECT_INVALID_PARAMETERS.with_dnr());
    // The right one works; the same QID twice does not.
    let _q1 = Queue::io(addr, NQN, &allowed, a.cntlid, 1, false);
    let mut q = Queue::open(addr, false, false);
    let c = q.connect(NQN, &allowed, 1, a.cntlid, 0);
    assert_eq!(c.status, Status::CONNECT_INVALID_PARAMETERS.with_dnr());
}

fn expect_term(a: Answer, fes: u16) {
    match a {
        Answer::Term(t) => assert_eq!(t.fes, fes, "{t:?}"),
        other => panic!("expected a C2HTermReq with FES {fes}, got {other:?}"),
    }
}

#[test]
fn malformed_pdus_and_digests() {
    let e = engine();
    let addr = e.nvmf_addr.expect("NVMe/TCP address");
    let host = HostIdent::new(5);
    let mut a = Queue::admin(addr, NQN, &host, true);
    let mut good = Queue::io(addr, NQN, &host, a.cntlid, 1, true);

    // An unknown PDU type on a fresh connection.
    let mut q = Queue::open(addr, false, false);
    q.send_raw(&[0x0b, 0, 24, 0, 24, 0, 0, 0]);
    q.send_raw(&[0u8; 16]);
    expect_term(q.wait(0, &[]), 0x01);
    // A second ICReq after setup: PDU sequence error.
    let mut q = Queue::open(addr, false, false);
    q.send_raw(&proto_nvme::IcReq::default().encode());
    expect_term(q.wait(0, &[]), 0x02);
    // A corrupted header digest.
    let mut q = Queue::io(addr, NQN, &host, a.cntlid, 2, true);
    let cid = q.cid();
    let mut sqe = raw_sqe(0x00, cid, 1);
    sqe.flags = proto_nvme::FLAGS_SGL;
    let mut out = Vec::new();
    q.enc.capsule_cmd_pdu(&sqe, &[], &mut out);
    out[20] ^= 0x55;
    q.send_raw(&out);
    expect_term(q.wait(cid, &[]), 0x03);
    // HLEN wrong for the type.
    let mut q = Queue::io(addr, NQN, &host, a.cntlid, 3, false);
    let mut out = Vec::new();
    q.enc.capsule_cmd_pdu(&raw_sqe(0, 1, 1), &[], &mut out);
    out[2] = 70;
    q.send_raw(&out);
    expect_term(q.wait(1, &[]), 0x01);
    // In-capsule data beyond the limit.
    let mut q = Queue::io(addr, NQN, &host, a.cntlid, 4, false);
    let data = vec![1u8; 16384];
    let rw = proto_nvme::ReadWrite {
        slba: 0,
        nlb: 31,
        ..Default::default()
    };
    let sqe = Command::Write(rw).to_sqe(5, 1, proto_nvme::Sgl::in_capsule(0, 16384));
    let mut out = Vec::new();
    q.enc.capsule_cmd_pdu(&sqe, &data, &mut out);
    q.send_raw(&out);
    expect_term(q.wait(5, &[]), 0x05);
    // A corrupted data digest fails only the command; the queue goes on.
    let mut q = Queue::io(addr, NQN, &host, a.cntlid, 5, true);
    let rw = proto_nvme::ReadWrite {
        slba: 16,
        nlb: 7,
        ..Default::default()
    };
    let payload = random(4096, 9);
    let sqe = Command::Write(rw).to_sqe(6, 1, proto_nvme::Sgl::in_capsule(0, 4096));
    let mut out = Vec::new();
    q.enc.capsule_cmd_pdu(&sqe, &payload, &mut out);
    let n = out.len();
    out[n - 1] ^= 0xff;
    q.send_raw(&out);
    assert_eq!(status(q.wait(6, &[])), Status::TRANSIENT_TRANSPORT_ERROR);
    assert_eq!(
        ok(q.read(1, 16, 8, BS)),
        vec![0u8; 4096],
        "the bad write was applied"
    );
    // H2CData with an unknown transfer tag.
    let mut q = Queue::io(addr, NQN, &host, a.cntlid, 6, false);
    let mut out = Vec::new();
    q.enc.h2c_data_pdu(
        &proto_nvme::H2CData {
            cccid: 1,
            ttag: 77,
            datao: 0,
            datal: 512,
            last: true,
        },
        &[0u8; 512],
        &mut out,
    );
    q.send_raw(&out);
    expect_term(q.wait(1, &[]), 0x01);
    // Garbage: a PLEN of 4 GiB never makes the target wait or allocate.
    let mut q = Queue::io(addr, NQN, &host, a.cntlid, 7, false);
    q.send_raw(&[0x04, 0, 72, 72, 0xff, 0xff, 0xff, 0xff]);
    expect_term(q.wait(1, &[]), 0x05);

    // The good queue and the admin queue never noticed.
    let d = random(8192, 3);
    ok(good.write(1, 64, &d, BS));
    assert_eq!(ok(good.read(1, 64, 16, BS)), d);
    ok(a.cmd(Command::KeepAlive, 0, &[], 0));
    let mut e = e;
    e.assert_healthy();
}

fn register(q: &mut Queue, rrega: u8, iekey: bool, crkey: u64, nrkey: u64) -> Status {
    let keys = ReservationKeys {
        crkey,
        other: nrkey,
    }
    .encode();
    let c = Command::ReservationRegister(ReservationRegister {
        rrega,
        iekey,
        cptpl: 0,
    });
    status(q.cmd(c, 1, &keys, 0))
}

fn acquire(q: &mut Queue, racqa: u8, rt: u8, crkey: u64, prkey: u64) -> Status {
    let keys = ReservationKeys {
        crkey,
        other: prkey,
    }
    .encode();
    let c = Command::ReservationAcquire(ReservationAcquire {
        racqa,
        iekey: false,
        rtype: rt,
    });
    status(q.cmd(c, 1, &keys, 0))
}

fn report(q: &mut Queue) -> ReservationStatus {
    let c = Command::ReservationReport(ReservationReport {
        numd: 63,
        eds: true,
    });
    ReservationStatus::parse(&ok(q.cmd(c, 1, &[], 256)), true).unwrap()
}

#[test]
fn reservations_fence_other_hosts() {
    let e = engine();
    let addr = e.nvmf_addr.expect("NVMe/TCP address");
    let (h1, h2) = (HostIdent::new(11), HostIdent::new(12));
    let a1 = Queue::admin(addr, NQN, &h1, false);
    let a2 = Queue::admin(addr, NQN, &h2, false);
    let mut q1 = Queue::io(addr, NQN, &h1, a1.cntlid, 1, false);
    let mut q2 = Queue::io(addr, NQN, &h2, a2.cntlid, 1, false);
    let conflict = Status::RESERVATION_CONFLICT.with_dnr();
    assert_eq!(register(&mut q1, 0, false, 0, 0xaa), Status::SUCCESS);
    assert_eq!(register(&mut q2, 0, false, 0, 0xbb), Status::SUCCESS);
    assert_eq!(
        acquire(&mut q2, 0, rtype::WRITE_EXCLUSIVE, 0xaa, 0),
        conflict
    );
    assert_eq!(
        acquire(&mut q1, 0, rtype::WRITE_EXCLUSIVE, 0xaa, 0),
        Status::SUCCESS
    );
    // Write exclusive: the holder writes, the other host reads but cannot write.
    ok(q1.write(1, 0, &[1u8; 512], BS));
    assert_eq!(status(q2.write(1, 0, &[2u8; 512], BS)), conflict);
    assert_eq!(ok(q2.read(1, 0, 1, BS)), vec![1u8; 512]);
    let r = report(&mut q2);
    assert_eq!(r.rtype, rtype::WRITE_EXCLUSIVE);
    assert_eq!(r.registrants.len(), 2);
    let holder = r.registrants.iter().find(|g| g.rcsts & 1 == 1).unwrap();
    assert_eq!(holder.hostid, h1.id);
    assert_eq!(holder.cntlid, a1.cntlid);
    assert_eq!(holder.rkey, 0xaa);
    // Host 2 preempts host 1 with exclusive access: host 1 is fenced, even for reads.
    assert_eq!(
        acquire(&mut q2, 1, rtype::EXCLUSIVE_ACCESS, 0xbb, 0xaa),
        Status::SUCCESS
    );
    assert_eq!(status(q1.write(1, 0, &[3u8; 512], BS)), conflict);
    assert_eq!(status(q1.read(1, 0, 1, BS)), conflict);
    ok(q2.write(1, 0, &[2u8; 512], BS));
    // Release: everyone again.
    let c = Command::ReservationRelease(ReservationRelease {
        rrela: 0,
        iekey: false,
        rtype: rtype::EXCLUSIVE_ACCESS,
    });
    assert!(
        q2.cmd(c, 1, &0xbbu64.to_le_bytes(), 0)
            .cqe()
            .0
            .status
            .is_success()
    );
    ok(q1.write(1, 0, &[4u8; 512], BS));
    assert_eq!(report(&mut q1).rtype, 0);
}

#[test]
fn keep_alive_timeout_tears_the_controller_down() {
    let e = engine();
    let addr = e.nvmf_addr.expect("NVMe/TCP address");
    let host = HostIdent::new(21);
    let mut a = Queue::open(addr, false, false);
    let c = a.connect(NQN, &host, 0, 0xffff, 1000);
    assert!(c.status.is_success());
    a.enable();
    let mut q = Queue::io(addr, NQN, &host, a.cntlid, 1, false);
    // Keep alive for a while: the controller stays.
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(400));
        ok(a.cmd(Command::KeepAlive, 0, &[], 0));
    }
    ok(q.read(1, 0, 1, BS));
    // Then silence: both queues are closed within a few seconds.
    let t0 = Instant::now();
    assert!(a.recv_pdu().is_none(), "admin queue still open");
    assert!(q.recv_pdu().is_none(), "I/O queue still open");
    let waited = t0.elapsed();
    assert!(
        waited > Duration::from_millis(900) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    // A new association works.
    let a = Queue::admin(addr, NQN, &host, false);
    let mut q = Queue::io(addr, NQN, &host, a.cntlid, 1, false);
    ok(q.read(1, 0, 1, BS));
}

#[test]
fn h2c_data_digest_errors_and_sq_flow_control_off() {
    let e = engine();
    let addr = e.nvmf_addr.expect("NVMe/TCP address");
    let host = HostIdent::new(31);
    let a = Queue::admin(addr, NQN, &host, true);
    // A 64 KiB write by R2T whose H2CData carries a wrong data digest: that command fails
    // with Transient Transport Error, nothing is written, the queue goes on.
    let mut q = Queue::io(addr, NQN, &host, a.cntlid, 1, true);
    let data = random(64 << 10, 4);
    let rw = proto_nvme::ReadWrite {
        slba: 256,
        nlb: 127,
        ..Default::default()
    };
    let sqe = Command::Write(rw).to_sqe(9, 1, proto_nvme::Sgl::transport(64 << 10));
    let mut out = Vec::new();
    q.enc.capsule_cmd_pdu(&sqe, &[], &mut out);
    q.send_raw(&out);
    let r2t = match q.recv_pdu() {
        Some((proto_nvme::PduHeader::R2T(r), _)) => r,
        other => panic!("expected an R2T, got {other:?}"),
    };
    assert_eq!((r2t.cccid, r2t.r2to, r2t.r2tl), (9, 0, 64 << 10));
    // The identifier is in flight (the write waits for its data): another command under it
    // is refused with Command ID Conflict, and the write goes on.
    let mut out = Vec::new();
    let flush = Command::Flush.to_sqe(9, 1, proto_nvme::Sgl::null());
    q.enc.capsule_cmd_pdu(&flush, &[], &mut out);
    q.send_raw(&out);
    assert_eq!(
        status(q.wait(9, &[])),
        Status::COMMAND_ID_CONFLICT.with_dnr()
    );
    let mut out = Vec::new();
    q.enc.h2c_data_pdu(
        &proto_nvme::H2CData {
            cccid: 9,
            ttag: r2t.ttag,
            datao: 0,
            datal: 64 << 10,
            last: true,
        },
        &data,
        &mut out,
    );
    let n = out.len();
    out[n - 2] ^= 0x10;
    q.send_raw(&out);
    assert_eq!(status(q.wait(9, &[])), Status::TRANSIENT_TRANSPORT_ERROR);
    assert_eq!(ok(q.read(1, 256, 128, BS)), vec![0u8; 64 << 10]);
    ok(q.write(1, 256, &data, BS));
    assert_eq!(ok(q.read(1, 256, 128, BS)), data);

    // With SQ flow control disabled a read completes with the C2HData SUCCESS flag alone.
    let mut q = Queue::open(addr, true, true);
    let c = q.connect_with(
        NQN,
        &host,
        2,
        a.cntlid,
        0,
        proto_nvme::CATTR_DISABLE_SQ_FLOW_CONTROL,
    );
    assert!(c.status.is_success(), "{c:?}");
    let cid = q.cid();
    let rw = proto_nvme::ReadWrite {
        slba: 256,
        nlb: 127,
        ..Default::default()
    };
    let sqe = Command::Read(rw).to_sqe(cid, 1, proto_nvme::Sgl::transport(64 << 10));
    let mut out = Vec::new();
    q.enc.capsule_cmd_pdu(&sqe, &[], &mut out);
    q.send_raw(&out);
    match q.recv_pdu() {
        Some((proto_nvme::PduHeader::C2HData(h), d)) => {
            assert!(h.success && h.last, "{h:?}");
            assert_eq!(d, data);
        }
        other => panic!("expected C2HData, got {other:?}"),
    }
    // No CapsuleResp follows: the next PDU is the next command's completion.
    ok(q.cmd(Command::Flush, 1, &[], 0));
}

#[test]
fn sigterm_with_nvme_connections_open() {
    let mut e = engine();
    let addr = e.nvmf_addr.expect("NVMe/TCP address");
    let host = HostIdent::new(41);
    let mut a = Queue::admin(addr, NQN, &host, false);
    let mut q = Queue::io(addr, NQN, &host, a.cntlid, 1, false);
    ok(q.write(1, 0, &[9u8; 4096], BS));
    let (st, err) = e.terminate(Duration::from_secs(20));
    assert!(st.success(), "engine exit {st}\n{err}");
    assert!(a.recv_pdu().is_none());
    assert!(q.recv_pdu().is_none());
}
