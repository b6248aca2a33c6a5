//! A fake NVMe/TCP controller for tests of the `nvmf://` initiator (and of whatever stacks on
//! it): one namespace in memory, served by blocking threads on `127.0.0.1`, with faults to
//! inject — stalls, dropped connections, malformed PDUs, bad digests, unknown command
//! identifiers, error statuses, refused connections.
//!
//! It implements only what a host needs to see (ICReq/ICResp, Connect, Property Get/Set,
//! Identify, Set Features Number of Queues, Keep Alive, Read, Write with in-capsule data or
//! R2T, Flush, Write Zeroes, Dataset Management) and checks little of what it receives. Reads
//! are sent in several C2HData PDUs and writes asked for with several R2Ts when the transfer
//! exceeds the configured chunk sizes, to exercise reassembly.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use proto_nvme::{
    C2HData, CAP_CSS_NVM, CNTRLTYPE_IO, Cap, Cc, Command, ConnectData, Cqe, Csts, Decoded,
    DsmRange, FABRICS_OPCODE, IcResp, IdentifyController, IdentifyNamespace, NumberOfQueues,
    ONCS_DSM, ONCS_WRITE_ZEROES, PduDecoder, PduEncoder, PduHeader, QueueType, R2T, Role,
    SGLS_FABRICS, Sqe, Status, VWC_PRESENT, Version, cns, connect_success_dw0, feature_id,
    register,
};

/// What the fake controller looks like.
#[derive(Clone, Debug)]
pub struct FakeConfig {
    /// Subsystem NQN it answers to (any NQN is accepted; this is what Identify reports).
    pub subnqn: String,
    /// Block size (a power of two, 512..=65536).
    pub block_size: u32,
    /// Namespace size in blocks.
    pub blocks: u64,
    /// MDTS (0: no limit).
    pub mdts: u8,
    /// In-capsule data an I/O command may carry (IOCCSZ * 16 - 64).
    pub in_capsule: u32,
    /// MAXH2CDATA announced in ICResp.
    pub maxh2cdata: u32,
    /// CPDA announced in ICResp.
    pub cpda: u8,
    /// Grant digests the host asks for.
    pub allow_digests: bool,
    /// Largest C2HData PDU (reads are split into PDUs of this size).
    pub c2h_chunk: u32,
    /// Largest R2T (writes beyond the capsule are asked for in pieces of this size).
    pub r2t_chunk: u32,
    /// Send the R2T for the next piece as soon as the first data of the current one
    /// arrives (before its last PDU: the host must queue it).
    pub eager_r2t: bool,
    /// I/O queues granted at most.
    pub max_queues: u16,
    /// CAP.MQES (0's based queue size limit).
    pub mqes: u16,
    /// Report a volatile write cache.
    pub vwc: bool,
    /// Report Write Zeroes and Dataset Management.
    pub oncs: bool,
    /// End successful reads with a C2HData PDU carrying SUCCESS (no CapsuleResp) on queues
    /// whose Connect disabled SQ flow control, as the Linux and Ballast targets do.
    pub c2h_success: bool,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            subnqn: "nqn.2024-01.io.ballast:fake".into(),
            block_size: 512,
            blocks: 32 * 2048,
            mdts: 0,
            in_capsule: 8192,
            maxh2cdata: 64 * 1024,
            cpda: 0,
            allow_digests: true,
            c2h_chunk: 128 * 1024,
            r2t_chunk: 256 * 1024,
            eager_r2t: false,
            max_queues: 8,
            mqes: 127,
            vwc: true,
            oncs: true,
            c2h_success: true,
        }
    }
}

/// A misbehaviour applied to I/O commands (queue ID > 0) until cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Behave.
    None,
    /// I/O commands get no answer; the connection stays open.
    Stall,
    /// The connection of an I/O command is closed without an answer.
    Drop,
    /// Read data is sent with a wrong data digest (when data digests are on).
    BadDataDigest,
    /// I/O completions carry a command identifier that was never used.
    UnknownCid,
    /// Garbage bytes are sent instead of an answer.
    Garbage,
    /// I/O commands complete with this status.
    Status(Status),
    /// New connections are closed right after ICReq.
    RefuseConnect,
    /// Keep Alive commands get no answer.
    StallKeepAlive,
}

/// Counters of a fake controller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FakeCounts {
    /// Connections that sent an ICReq.
    pub connections: u64,
    /// Admin queue Connect commands.
    pub admin_connects: u64,
    /// I/O queue Connect commands.
    pub io_connects: u64,
    /// Keep Alive commands.
    pub keep_alives: u64,
    /// I/O commands received.
    pub io_commands: u64,
    /// H2CTermReq PDUs received.
    pub term_reqs: u64,
    /// Connections open now.
    pub open: u64,
    /// Commands with data received through R2T.
    pub r2t_writes: u64,
    /// Commands with in-capsule data.
    pub in_capsule_writes: u64,
    /// KATO of the last admin queue Connect (ms).
    pub kato_ms: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    admin_connects: AtomicU64,
    io_connects: AtomicU64,
    keep_alives: AtomicU64,
    io_commands: AtomicU64,
    term_reqs: AtomicU64,
    open: AtomicU64,
    r2t_writes: AtomicU64,
    in_capsule_writes: AtomicU64,
    kato: AtomicU64,
}

struct Inner {
    cfg: FakeConfig,
    data: Mutex<Vec<u8>>,
    fault: Mutex<Fault>,
    stop: AtomicBool,
    streams: Mutex<Vec<TcpStream>>,
    next_cntlid: AtomicU16,
    cc: Mutex<u32>,
    counts: Counters,
}

/// A running fake controller; stopped (every connection closed) when dropped.
pub struct FakeTarget {
    addr: SocketAddr,
    inner: Arc<Inner>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeTarget")
            .field("addr", &self.addr)
            .finish()
    }
}

impl FakeTarget {
    /// Starts a controller on `127.0.0.1` (a free port).
    pub fn start(cfg: FakeConfig) -> FakeTarget {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake target");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("local address");
        let size = (cfg.blocks * u64::from(cfg.block_size)) as usize;
        let inner = Arc::new(Inner {
            cfg,
            data: Mutex::new(vec![0; size]),
            fault: Mutex::new(Fault::None),
            stop: AtomicBool::new(false),
            streams: Mutex::new(Vec::new()),
            next_cntlid: AtomicU16::new(1),
            cc: Mutex::new(0),
            counts: Counters::default(),
        });
        let i2 = inner.clone();
        let accept = std::thread::spawn(move || {
            while !i2.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_nodelay(true);
                        if let Ok(c) = s.try_clone() {
                            i2.streams.lock().expect("streams").push(c);
                        }
                        let i3 = i2.clone();
                        std::thread::spawn(move || {
                            i3.counts.open.fetch_add(1, Ordering::SeqCst);
                            // The clone kept for kill_connections would keep the socket
                            // open: shut it down explicitly when the connection ends.
                            let closer = s.try_clone();
                            let _ = serve(&i3, s);
                            if let Ok(c) = closer {
                                let _ = c.shutdown(Shutdown::Both);
                            }
                            i3.counts.open.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        FakeTarget {
            addr,
            inner,
            accept: Some(accept),
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// An `nvmf://` URI for it, with `query` appended (e.g. `"hdgst=1&ddgst=1"`).
    pub fn uri(&self, query: &str) -> String {
        let mut u = format!("nvmf://{}/{}", self.addr, self.inner.cfg.subnqn);
        if !query.is_empty() {
            u.push('?');
            u.push_str(query);
        }
        u
    }

    /// Sets the fault applied from now on.
    pub fn set_fault(&self, f: Fault) {
        *self.inner.fault.lock().expect("fault") = f;
    }

    /// Closes every open connection (a network failure as the host sees it).
    pub fn kill_connections(&self) {
        for s in self.inner.streams.lock().expect("streams").drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// The counters.
    pub fn counts(&self) -> FakeCounts {
        let c = &self.inner.counts;
        let l = |a: &AtomicU64| a.load(Ordering::SeqCst);
        FakeCounts {
            connections: l(&c.connections),
            admin_connects: l(&c.admin_connects),
            io_connects: l(&c.io_connects),
            keep_alives: l(&c.keep_alives),
            io_commands: l(&c.io_commands),
            term_reqs: l(&c.term_reqs),
            open: l(&c.open),
            r2t_writes: l(&c.r2t_writes),
            in_capsule_writes: l(&c.in_capsule_writes),
            kato_ms: l(&c.kato),
        }
    }

    /// A copy of `len` bytes of the namespace at `offset`.
    pub fn read_data(&self, offset: u64, len: usize) -> Vec<u8> {
        let d = self.inner.data.lock().expect("data");
        d[offset as usize..offset as usize + len].to_vec()
    }
}

impl Drop for FakeTarget {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.kill_connections();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

type Io<T> = std::io::Result<T>;

fn bad(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

/// Reads one whole PDU.
fn read_pdu(s: &mut TcpStream, dec: &PduDecoder) -> Io<Vec<u8>> {
    let mut buf = vec![0u8; 8];
    s.read_exact(&mut buf)?;
    loop {
        match dec.decode(&buf) {
            Ok(Decoded::Incomplete { more }) => {
                let at = buf.len();
                buf.resize(at + more, 0);
                s.read_exact(&mut buf[at..])?;
            }
            Ok(_) => return Ok(buf),
            Err(e) => return Err(bad(&format!("bad PDU from the host: {e}"))),
        }
    }
}

struct Conn<'a> {
    inner: &'a Inner,
    s: TcpStream,
    dec: PduDecoder,
    enc: PduEncoder,
    qid: Option<u16>,
    /// The queue's Connect disabled SQ flow control.
    sqflow_off: bool,
    /// Commands that arrived while a write's data was awaited.
    backlog: std::collections::VecDeque<(Sqe, Vec<u8>)>,
}

fn serve(inner: &Inner, mut s: TcpStream) -> Io<()> {
    let cfg = &inner.cfg;
    let mut dec = PduDecoder::new(Role::Controller);
    let ic = read_pdu(&mut s, &dec)?;
    let Ok(Decoded::Pdu { pdu, .. }) = dec.decode(&ic) else {
        return Err(bad("no ICReq"));
    };
    let PduHeader::IcReq(req) = pdu.header else {
        return Err(bad("first PDU is not ICReq"));
    };
    inner.counts.connections.fetch_add(1, Ordering::SeqCst);
    if *inner.fault.lock().expect("fault") == Fault::RefuseConnect {
        return Ok(());
    }
    let resp = IcResp::answer(
        &req,
        cfg.allow_digests,
        cfg.allow_digests,
        cfg.cpda,
        cfg.maxh2cdata,
    );
    s.write_all(&resp.encode())?;
    dec.establish(resp.hdgst, resp.ddgst);
    dec.set_pda(cfg.cpda);
    dec.set_max_data(cfg.maxh2cdata);
    dec.set_max_in_capsule(cfg.in_capsule.max(8192));
    let mut c = Conn {
        inner,
        s,
        dec,
        enc: PduEncoder::with(resp.hdgst, resp.ddgst, req.hpda),
        qid: None,
        sqflow_off: false,
        backlog: std::collections::VecDeque::new(),
    };
    loop {
        if let Some((sqe, data)) = c.backlog.pop_front() {
            c.command(sqe, data)?;
            continue;
        }
        let raw = read_pdu(&mut c.s, &c.dec)?;
        let (sqe, data) = match c.dec.decode(&raw) {
            Ok(Decoded::Pdu { pdu, .. }) => match pdu.header {
                PduHeader::CapsuleCmd(sqe) => (sqe, pdu.data.to_vec()),
                PduHeader::H2CTermReq(_) => {
                    inner.counts.term_reqs.fetch_add(1, Ordering::SeqCst);
                    return Ok(());
                }
                _ => return Err(bad("unexpected PDU")),
            },
            _ => return Err(bad("undecodable PDU")),
        };
        c.command(sqe, data)?;
    }
}

impl Conn<'_> {
    fn reply(&mut self, cqe: Cqe) -> Io<()> {
        self.s.write_all(&self.enc.capsule_resp(&cqe))
    }

    fn ok(&mut self, sqe: &Sqe, dw0: u32) -> Io<()> {
        self.reply(Cqe {
            dw0,
            sqid: self.qid.unwrap_or(0),
            ..Cqe::new(sqe.cid, Status::SUCCESS)
        })
    }

    fn status(&mut self, sqe: &Sqe, st: Status) -> Io<()> {
        self.reply(Cqe::new(sqe.cid, st))
    }

    /// Sends read data; with `success` the last PDU completes the command.
    fn send_data(&mut self, cid: u16, data: &[u8], corrupt: bool, success: bool) -> Io<()> {
        let chunk = self.inner.cfg.c2h_chunk.max(1) as usize;
        let mut off = 0;
        while off < data.len() {
            let n = chunk.min(data.len() - off);
            let h = C2HData {
                cccid: cid,
                datao: off as u32,
                datal: n as u32,
                last: off + n == data.len(),
                success: success && off + n == data.len(),
            };
            let mut out = Vec::new();
            self.enc.c2h_data_pdu(&h, &data[off..off + n], &mut out);
            if corrupt && self.enc.data_digest() {
                let l = out.len();
                out[l - 1] ^= 0xff;
            }
            self.s.write_all(&out)?;
            off += n;
        }
        Ok(())
    }

    fn send_r2t(&mut self, cid: u16, ttag: u16, off: usize, len: usize) -> Io<()> {
        let r = R2T {
            cccid: cid,
            ttag,
            r2to: off as u32,
            r2tl: len as u32,
        };
        self.s.write_all(&self.enc.r2t(&r))
    }

    /// Receives a command's data: in the capsule, or asked for with R2Ts.
    fn receive_data(&mut self, sqe: &Sqe, capsule: Vec<u8>) -> Io<Vec<u8>> {
        let dp = sqe.data_pointer().map_err(|e| bad(&e.to_string()))?;
        if let proto_nvme::DataPointer::InCapsule { .. } = dp {
            self.inner
                .counts
                .in_capsule_writes
                .fetch_add(1, Ordering::SeqCst);
            return Ok(dp
                .in_capsule_slice(&capsule)
                .map_err(|e| bad(&e.to_string()))?
                .to_vec());
        }
        self.inner.counts.r2t_writes.fetch_add(1, Ordering::SeqCst);
        let len = dp.len() as usize;
        let mut out = vec![0u8; len];
        let step = self.inner.cfg.r2t_chunk.max(4096) as usize;
        let eager = self.inner.cfg.eager_r2t;
        let mut off = 0;
        let mut ttag = 0u16;
        let mut sent_next = false;
        while off < len {
            let n = step.min(len - off);
            ttag = ttag.wrapping_add(1);
            if !sent_next {
                self.send_r2t(sqe.cid, ttag, off, n)?;
            }
            sent_next = false;
            let mut got = 0;
            while got < n {
                let raw = read_pdu(&mut self.s, &self.dec)?;
                match self.dec.decode(&raw) {
                    Ok(Decoded::Pdu { pdu, .. }) => match pdu.header {
                        PduHeader::H2CData(h) => {
                            if h.cccid != sqe.cid || h.ttag != ttag {
                                return Err(bad("H2CData for another transfer"));
                            }
                            let at = h.datao as usize;
                            if at != off + got || at + pdu.data.len() > off + n {
                                return Err(bad("H2CData out of order"));
                            }
                            out[at..at + pdu.data.len()].copy_from_slice(pdu.data);
                            got += pdu.data.len();
                            if h.last != (got == n) {
                                return Err(bad("LAST_PDU misplaced"));
                            }
                            let next = off + n;
                            if eager && !sent_next && got < n && next < len {
                                self.send_r2t(
                                    sqe.cid,
                                    ttag.wrapping_add(1),
                                    next,
                                    step.min(len - next),
                                )?;
                                sent_next = true;
                            }
                        }
                        PduHeader::CapsuleCmd(other) => {
                            self.backlog.push_back((other, pdu.data.to_vec()));
                        }
                        _ => return Err(bad("expected H2CData")),
                    },
                    Ok(Decoded::BadDataDigest { .. }) => return Err(bad("H2C data digest")),
                    _ => return Err(bad("undecodable H2CData")),
                }
            }
            off += n;
        }
        Ok(out)
    }

    fn command(&mut self, sqe: Sqe, data: Vec<u8>) -> Io<()> {
        let qt = if self.qid.unwrap_or(0) == 0 {
            QueueType::Admin
        } else {
            QueueType::Io
        };
        let cmd = match Command::parse(&sqe, qt) {
            Ok(c) => c,
            Err(_) => return self.status(&sqe, Status::INVALID_OPCODE),
        };
        if sqe.opcode == FABRICS_OPCODE
            && let Command::Connect(conn) = cmd
        {
            let cd = ConnectData::parse(&data).map_err(|e| bad(&e.to_string()))?;
            let cntlid = if conn.qid == 0 {
                self.inner
                    .counts
                    .admin_connects
                    .fetch_add(1, Ordering::SeqCst);
                self.inner
                    .counts
                    .kato
                    .store(u64::from(conn.kato), Ordering::SeqCst);
                self.inner.next_cntlid.fetch_add(1, Ordering::SeqCst)
            } else {
                self.inner.counts.io_connects.fetch_add(1, Ordering::SeqCst);
                cd.cntlid
            };
            self.qid = Some(conn.qid);
            self.sqflow_off = conn.sq_flow_control_disabled();
            return self.ok(&sqe, connect_success_dw0(cntlid, 0));
        }
        if self.qid.is_none() {
            return self.status(&sqe, Status::COMMAND_SEQUENCE_ERROR);
        }
        if qt == QueueType::Admin {
            return self.admin(sqe, cmd);
        }
        self.inner.counts.io_commands.fetch_add(1, Ordering::SeqCst);
        let fault = *self.inner.fault.lock().expect("fault");
        match fault {
            Fault::Stall => return Ok(()),
            Fault::Drop => return Err(bad("dropping the connection (fault)")),
            Fault::Garbage => {
                self.s.write_all(&[0xee; 64])?;
                return Ok(());
            }
            // Fails before asking for any data.
            Fault::Status(st) => return self.status(&sqe, st),
            _ => {}
        }
        let bs = u64::from(self.inner.cfg.block_size);
        let size = self.inner.cfg.blocks * bs;
        let range = |slba: u64, blocks: u64| -> Option<(usize, usize)> {
            let off = slba.checked_mul(bs)?;
            let len = blocks * bs;
            (off + len <= size).then_some((off as usize, len as usize))
        };
        let st = match cmd {
            Command::Read(rw) => match range(rw.slba, u64::from(rw.nlb) + 1) {
                Some((off, len)) => {
                    let d = self.inner.data.lock().expect("data")[off..off + len].to_vec();
                    let success = self.sqflow_off
                        && self.inner.cfg.c2h_success
                        && fault != Fault::UnknownCid
                        && !d.is_empty();
                    self.send_data(sqe.cid, &d, fault == Fault::BadDataDigest, success)?;
                    if success {
                        return Ok(());
                    }
                    Status::SUCCESS
                }
                None => Status::LBA_OUT_OF_RANGE,
            },
            Command::Write(rw) => {
                let d = self.receive_data(&sqe, data)?;
                match range(rw.slba, u64::from(rw.nlb) + 1) {
                    Some((off, len)) if len == d.len() => {
                        self.inner.data.lock().expect("data")[off..off + len].copy_from_slice(&d);
                        Status::SUCCESS
                    }
                    Some(_) => Status::DATA_SGL_LENGTH_INVALID,
                    None => Status::LBA_OUT_OF_RANGE,
                }
            }
            Command::Flush => Status::SUCCESS,
            Command::WriteZeroes(wz) => match range(wz.slba, u64::from(wz.nlb) + 1) {
                Some((off, len)) => {
                    self.inner.data.lock().expect("data")[off..off + len].fill(0);
                    Status::SUCCESS
                }
                None => Status::LBA_OUT_OF_RANGE,
            },
            Command::DatasetManagement(dsm) => {
                let d = self.receive_data(&sqe, data)?;
                let mut st = Status::SUCCESS;
                let ranges = DsmRange::parse_list(&d, dsm.ranges())
                    .map_err(|e| bad(&e.to_string()))?
                    .collect::<Vec<_>>();
                for r in ranges {
                    match range(r.slba, u64::from(r.nlb)) {
                        Some((off, len)) if dsm.ad => {
                            self.inner.data.lock().expect("data")[off..off + len].fill(0)
                        }
                        Some(_) => {}
                        None => st = Status::LBA_OUT_OF_RANGE,
                    }
                }
                st
            }
            _ => Status::INVALID_OPCODE,
        };
        if fault == Fault::UnknownCid {
            return self.reply(Cqe::new(sqe.cid ^ 0x8000, st));
        }
        self.status(&sqe, st)
    }

    fn admin(&mut self, sqe: Sqe, cmd: Command) -> Io<()> {
        let cfg = &self.inner.cfg;
        match cmd {
            Command::PropertyGet(p) => {
                let v: u64 = match p.offset {
                    register::CAP => Cap {
                        mqes: cfg.mqes,
                        cqr: true,
                        to: 2,
                        css: CAP_CSS_NVM,
                        ..Cap::default()
                    }
                    .to_u64(),
                    register::VS => Version::V1_3.to_u32().into(),
                    register::CC => (*self.inner.cc.lock().expect("cc")).into(),
                    register::CSTS => {
                        let cc = Cc::from_u32(*self.inner.cc.lock().expect("cc"));
                        Csts {
                            rdy: cc.en,
                            ..Csts::default()
                        }
                        .to_u32()
                        .into()
                    }
                    _ => return self.status(&sqe, Status::INVALID_FIELD),
                };
                self.reply(Cqe {
                    dw0: v as u32,
                    dw1: (v >> 32) as u32,
                    ..Cqe::new(sqe.cid, Status::SUCCESS)
                })
            }
            Command::PropertySet(p) if p.offset == register::CC => {
                *self.inner.cc.lock().expect("cc") = p.value as u32;
                self.ok(&sqe, 0)
            }
            Command::Identify(id) => {
                let data = match id.cns {
                    cns::CONTROLLER => IdentifyController {
                        vid: 0x1b36,
                        sn: "FAKE0001".into(),
                        mn: "Ballast fake NVMe/TCP controller".into(),
                        fr: "1.0".into(),
                        mdts: cfg.mdts,
                        cntlid: 1,
                        ver: Version::V1_3.to_u32(),
                        cntrltype: CNTRLTYPE_IO,
                        kas: 1,
                        sqes: 0x66,
                        cqes: 0x44,
                        maxcmd: cfg.mqes + 1,
                        nn: 1,
                        oncs: if cfg.oncs {
                            ONCS_DSM | ONCS_WRITE_ZEROES
                        } else {
                            0
                        },
                        vwc: if cfg.vwc { VWC_PRESENT } else { 0 },
                        sgls: SGLS_FABRICS,
                        subnqn: cfg.subnqn.clone(),
                        ioccsz: (cfg.in_capsule + 64) / 16,
                        iorcsz: 1,
                        msdbd: 1,
                        ..IdentifyController::default()
                    }
                    .encode(),
                    cns::NAMESPACE if sqe.nsid == 1 => {
                        IdentifyNamespace::simple(cfg.blocks, cfg.block_size.trailing_zeros() as u8)
                            .encode()
                    }
                    cns::NAMESPACE => vec![0; 4096],
                    _ => return self.status(&sqe, Status::INVALID_FIELD),
                };
                self.send_data(sqe.cid, &data, false, false)?;
                self.ok(&sqe, 0)
            }
            Command::SetFeatures(f) if f.fid == feature_id::NUMBER_OF_QUEUES => {
                let g = NumberOfQueues::from_dword(f.cdw11).grant(cfg.max_queues);
                self.ok(&sqe, g.to_dword())
            }
            Command::KeepAlive => {
                self.inner.counts.keep_alives.fetch_add(1, Ordering::SeqCst);
                if *self.inner.fault.lock().expect("fault") == Fault::StallKeepAlive {
                    return Ok(());
                }
                self.ok(&sqe, 0)
            }
            _ => self.status(&sqe, Status::INVALID_OPCODE),
        }
    }
}
