//! The NVMe/TCP target in process: a reactor runtime serves RAM devices as namespaces on
//! 127.0.0.1 port 0, and the test thread is the host, sending PDUs built by the `proto-nvme`
//! encoders over a std socket (the engine's raw test host, shared with its end-to-end tests).
//! ICReq/ICResp, Connect, Identify, I/O in the capsule and by R2T, digests, bad PDUs, device
//! errors mapped to status, the setup limit — without the engine binary.

#[path = "../../engine/tests/common/nvme.rs"]
#[allow(dead_code)]
mod host;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::fault::{FaultDevice, Ops};
use blockdev::malloc::MallocDevice;
use blockdev::{Device, ErrorKind};
use host::{Answer, HostIdent, Queue, raw_sqe};
use proto_nvme::{Command, Identify, IdentifyController, IdentifyNamespace, Status, cns};
use reactor::{Config, ListenerLimits, PollMode, Runtime};
use target_nvme::{NvmfTarget, export_nqn};

const SIZE: u64 = 8 << 20;
const BS: u32 = 512;

/// A target on a two-reactor runtime: subsystem `m` with a RAM namespace 1 and a
/// [`FaultDevice`] over RAM namespace 2.
struct Served {
    rt: Option<Runtime>,
    target: Arc<NvmfTarget>,
    addr: SocketAddr,
    nqn: String,
    bad: Arc<FaultDevice>,
}

impl Served {
    fn start(limits: ListenerLimits) -> Served {
        let rt = Runtime::start(Config {
            cores: 2,
            mode: PollMode::Interrupt,
            pin: false,
            registered_buffers: 8,
            ..Config::default()
        })
        .expect("start reactors");
        let target = NvmfTarget::with_limits(limits);
        let nqn = export_nqn("m");
        target.create_subsystem(&nqn, &[]).unwrap();
        let m: Device = Arc::new(MallocDevice::new("m", SIZE, BS));
        target
            .add_namespace(&nqn, Some(1), m, Arc::default(), false)
            .unwrap();
        let bad = FaultDevice::new(Arc::new(MallocDevice::new("bad", SIZE, BS)));
        target
            .add_namespace(&nqn, Some(2), bad.clone(), Arc::default(), false)
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        target.serve(listener, rt.handles().to_vec());
        Served {
            rt: Some(rt),
            target,
            addr,
            nqn,
            bad,
        }
    }

    fn new() -> Served {
        Served::start(ListenerLimits::default())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.target.stop();
        if let Some(rt) = self.rt.take() {
            rt.shutdown();
        }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(17) ^ seed)
        .collect()
}

fn ok(a: Answer) -> Vec<u8> {
    let (c, d) = a.cqe();
    assert!(c.status.is_success(), "status {:?}", c.status);
    d
}

fn status(a: Answer) -> Status {
    a.cqe().0.status
}

fn identify(q: &mut Queue, c: u8, nsid: u32) -> Vec<u8> {
    let id = Identify {
        cns: c,
        ..Identify::default()
    };
    ok(q.cmd(Command::Identify(id), nsid, &[], 4096))
}

fn expect_term(a: Answer, fes: u16) {
    match a {
        Answer::Term(t) => assert_eq!(t.fes, fes, "{t:?}"),
        other => panic!("expected a C2HTermReq with FES {fes}, got {other:?}"),
    }
}

/// Reads until end of stream (or a reset); panics if the target keeps the connection open.
fn assert_closed(q: &mut Queue, what: &str) {
    use std::io::Read;
    q.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 256];
    loop {
        match q.s.read(&mut b) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                return;
            }
            Err(e) => panic!("{what}: connection not closed ({e})"),
        }
    }
}

#[test]
fn setup_identify_and_io_in_the_capsule_and_by_r2t_with_and_without_digests() {
    let s = Served::new();
    for digests in [false, true] {
        let host = HostIdent::new(1 + u8::from(digests));
        let mut a = Queue::admin(s.addr, &s.nqn, &host, digests);
        let ic = IdentifyController::parse(&identify(&mut a, cns::CONTROLLER, 0)).unwrap();
        assert_eq!(ic.subnqn, s.nqn);
        assert_eq!(ic.cntlid, a.cntlid);
        assert_eq!(ic.mdts, target_nvme::MDTS);
        let ns = IdentifyNamespace::parse(&identify(&mut a, cns::NAMESPACE, 1)).unwrap();
        assert_eq!(ns.nsze, SIZE / u64::from(BS));
        let mut q = Queue::io(s.addr, &s.nqn, &host, a.cntlid, 1, digests);
        // 4 KiB in the capsule, 64 KiB by R2T and H2CData, read back in C2HData.
        let small = pattern(4096, 3);
        ok(q.write(1, 8, &small, BS));
        let big = pattern(64 * 1024, 5);
        ok(q.write(1, 1024, &big, BS));
        assert_eq!(ok(q.read(1, 8, 8, BS)), small);
        assert_eq!(ok(q.read(1, 1024, 128, BS)), big);
        ok(q.cmd(Command::Flush, 1, &[], 0));
        ok(a.cmd(Command::KeepAlive, 0, &[], 0));
    }
}

#[test]
fn bad_commands_get_their_status_and_the_queue_goes_on() {
    let s = Served::new();
    let host = HostIdent::new(7);
    // Before Connect: Command Sequence Error.
    let mut fresh = Queue::open(s.addr, false, false);
    let cid = fresh.cid();
    assert_eq!(
        status(fresh.command(raw_sqe(0x06, cid, 0), &[])),
        Status::COMMAND_SEQUENCE_ERROR.with_dnr()
    );
    let mut a = Queue::admin(s.addr, &s.nqn, &host, false);
    let mut q = Queue::io(s.addr, &s.nqn, &host, a.cntlid, 1, false);
    let cid = q.cid();
    assert_eq!(
        status(q.command(raw_sqe(0x7e, cid, 1), &[])),
        Status::INVALID_OPCODE.with_dnr()
    );
    assert_eq!(
        status(q.read(9, 0, 1, BS)),
        Status::INVALID_NAMESPACE_OR_FORMAT.with_dnr()
    );
    assert_eq!(
        status(q.read(1, SIZE / u64::from(BS), 1, BS)),
        Status::LBA_OUT_OF_RANGE.with_dnr()
    );
    // The queue still works.
    assert_eq!(ok(q.read(1, 0, 1, BS)), vec![0u8; 512]);
    ok(a.cmd(Command::KeepAlive, 0, &[], 0));
}

#[test]
fn malformed_pdus_close_only_their_connection_and_a_data_digest_error_fails_only_its_command() {
    let s = Served::new();
    let host = HostIdent::new(9);
    let mut a = Queue::admin(s.addr, &s.nqn, &host, true);
    let mut good = Queue::io(s.addr, &s.nqn, &host, a.cntlid, 1, true);
    // An unknown PDU type.
    let mut q = Queue::open(s.addr, false, false);
    q.send_raw(&[0x0b, 0, 24, 0, 24, 0, 0, 0]);
    q.send_raw(&[0u8; 16]);
    expect_term(q.wait(0, &[]), 0x01);
    assert_closed(&mut q, "after an unknown PDU type");
    // A second ICReq: PDU sequence error.
    let mut q = Queue::open(s.addr, false, false);
    q.send_raw(&proto_nvme::IcReq::default().encode());
    expect_term(q.wait(0, &[]), 0x02);
    // A corrupted header digest.
    let mut q = Queue::io(s.addr, &s.nqn, &host, a.cntlid, 2, true);
    let cid = q.cid();
    let mut sqe = raw_sqe(0x00, cid, 1);
    sqe.flags = proto_nvme::FLAGS_SGL;
    let mut out = Vec::new();
    q.enc.capsule_cmd_pdu(&sqe, &[], &mut out);
    out[20] ^= 0x55;
    q.send_raw(&out);
    expect_term(q.wait(cid, &[]), 0x03);
    // H2CData with an unknown transfer tag.
    let mut q = Queue::io(s.addr, &s.nqn, &host, a.cntlid, 3, false);
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
    // A PLEN of 4 GiB: refused before anything is allocated or awaited.
    let mut q = Queue::io(s.addr, &s.nqn, &host, a.cntlid, 4, false);
    q.send_raw(&[0x04, 0, 72, 72, 0xff, 0xff, 0xff, 0xff]);
    expect_term(q.wait(1, &[]), 0x05);
    // A wrong data digest in a capsule: that command fails, the queue goes on.
    let rw = proto_nvme::ReadWrite {
        slba: 16,
        nlb: 7,
        ..Default::default()
    };
    let sqe = Command::Write(rw).to_sqe(6, 1, proto_nvme::Sgl::in_capsule(0, 4096));
    let mut out = Vec::new();
    good.enc.capsule_cmd_pdu(&sqe, &pattern(4096, 1), &mut out);
    let n = out.len();
    out[n - 1] ^= 0xff;
    good.send_raw(&out);
    assert_eq!(status(good.wait(6, &[])), Status::TRANSIENT_TRANSPORT_ERROR);
    assert_eq!(ok(good.read(1, 16, 8, BS)), vec![0u8; 4096]);
    let d = pattern(8192, 4);
    ok(good.write(1, 64, &d, BS));
    assert_eq!(ok(good.read(1, 64, 16, BS)), d);
    ok(a.cmd(Command::KeepAlive, 0, &[], 0));
}

#[test]
fn device_errors_reach_the_host_as_the_documented_status() {
    let s = Served::new();
    let host = HostIdent::new(11);
    let a = Queue::admin(s.addr, &s.nqn, &host, false);
    let mut q = Queue::io(s.addr, &s.nqn, &host, a.cntlid, 1, false);
    let data = pattern(4096, 2);
    for (kind, write, read) in [
        (
            ErrorKind::Conflict,
            Status::RESERVATION_CONFLICT.with_dnr(),
            Status::RESERVATION_CONFLICT.with_dnr(),
        ),
        (
            ErrorKind::Io,
            Status::WRITE_FAULT,
            Status::UNRECOVERED_READ_ERROR,
        ),
        (
            ErrorKind::NoSpace,
            Status::CAPACITY_EXCEEDED.with_dnr(),
            Status::CAPACITY_EXCEEDED.with_dnr(),
        ),
        (
            ErrorKind::Timeout,
            Status::COMMAND_INTERRUPTED,
            Status::COMMAND_INTERRUPTED,
        ),
    ] {
        s.bad.fail(Ops::ALL, kind);
        assert_eq!(status(q.write(2, 0, &data, BS)), write, "write, {kind:?}");
        assert_eq!(status(q.read(2, 0, 8, BS)), read, "read, {kind:?}");
    }
    // Conflict is SCT 0 (generic), SC 83h.
    let c = Status::RESERVATION_CONFLICT;
    assert_eq!((c.sct, c.sc), (0, 0x83));
    s.bad.heal();
    ok(q.write(2, 0, &data, BS));
    assert_eq!(ok(q.read(2, 0, 8, BS)), data);
}

#[test]
fn a_connection_that_does_not_set_up_in_time_is_closed() {
    let s = Served::start(ListenerLimits {
        negotiate_timeout: Duration::from_millis(300),
        ..ListenerLimits::default()
    });
    let t = Instant::now();
    // No ICReq at all.
    let mut silent = std::net::TcpStream::connect(s.addr).unwrap();
    // ICReq but no Connect.
    let mut half = Queue::open(s.addr, false, false);
    // Set up in time: kept.
    let host = HostIdent::new(13);
    let mut a = Queue::admin(s.addr, &s.nqn, &host, false);
    {
        use std::io::Read;
        silent
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut b = [0u8; 8];
        assert!(matches!(silent.read(&mut b), Ok(0) | Err(_)));
    }
    assert_closed(&mut half, "ICReq without Connect");
    assert!(t.elapsed() >= Duration::from_millis(300));
    std::thread::sleep(Duration::from_millis(200));
    ok(a.cmd(Command::KeepAlive, 0, &[], 0));
}

#[test]
fn stop_closes_every_queue() {
    let s = Served::new();
    let host = HostIdent::new(15);
    let mut a = Queue::admin(s.addr, &s.nqn, &host, false);
    let mut q = Queue::io(s.addr, &s.nqn, &host, a.cntlid, 1, false);
    assert_eq!(s.target.connection_count(), 2);
    s.target.stop();
    assert_closed(&mut a, "admin queue at stop");
    assert_closed(&mut q, "I/O queue at stop");
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.target.connection_count() > 0 {
        assert!(Instant::now() < deadline, "queues not gone after stop");
        std::thread::sleep(Duration::from_millis(5));
    }
}
