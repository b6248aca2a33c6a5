//! One TCP connection = one queue: connection setup (ICReq/ICResp), the receive loop (command
//! capsules, H2CData), R2T, and completions (CapsuleResp, C2HData).

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::io;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use proto_nvme::{
    Command, ConnectData, Cqe, DataDirection, DataPointer, FABRICS_OPCODE, Frame, HeaderDecoded,
    IcResp, PduDecoder, PduEncoder, PduHeader, QueueType, R2T, Role, Sqe, Status, check_data_range,
    connect_invalid_parameter_dw0, connect_success_dw0, crc32c, fctype,
};
use reactor::sync::{LocalSemaphore, Permit};
use reactor::{
    BufReader, Chunk, Connection, IdleWatch, IoBuf, Outbox, ShutdownHandle, TcpStream, spawn_local,
    spawn_now,
};

use crate::queue::{QueueCtx, Reply};
use crate::subsys::Controller;
use crate::{IO_IN_CAPSULE, MAX_IN_FLIGHT_BYTES, MAX_IO_QUEUES, MAX_QUEUE_SIZE, MAXH2CDATA};
use crate::{MDTS_BYTES, NvmfTarget, cmd};

/// Receive buffer for headers and capsules (in-capsule data is bounded well below it).
const RECV_BUF: usize = 64 * 1024;
/// Unit of the in-flight byte budget.
const BYTE_UNIT: usize = 64 * 1024;
/// Command tasks per connection (at most a queue's worth, plus slack for misbehaving hosts).
const MAX_TASKS: usize = 2 * MAX_QUEUE_SIZE as usize;

/// Write data being collected with R2T/H2CData.
struct Transfer {
    sqe: Sqe,
    cmd: Command,
    buf: IoBuf,
    len: u32,
    received: u32,
    bad_digest: bool,
    bytes: Permit,
    task: Permit,
}

/// Shared state of one connection, owned by its reactor.
pub(crate) struct Conn {
    /// What commands see of this queue.
    ctx: QueueCtx,
    stream: Rc<TcpStream>,
    /// Registered with the controller by Connect, so that tearing the controller down
    /// closes this queue.
    shutdown: ShutdownHandle,
    /// Commands seen and in flight, for the listener's idle limit.
    activity: Rc<IdleWatch>,
    enc: Cell<PduEncoder>,
    /// Everything sent goes through here: completions ready together leave in one send.
    outbox: Outbox,
    broken: Cell<bool>,
    pub(crate) qid: Cell<u16>,
    /// Set by Connect; commands borrow it through the connection (no reference count
    /// touched per command).
    ctrl: OnceCell<Arc<Controller>>,
    sq_entries: Cell<u32>,
    sqhd: Cell<u16>,
    sqflow_off: Cell<bool>,
    inflight: RefCell<CidSet>,
    transfers: RefCell<HashMap<u16, Transfer>>,
    next_ttag: Cell<u16>,
    bytes: LocalSemaphore,
    tasks: LocalSemaphore,
}

/// The command identifiers in flight on a queue: one bit per identifier (8 KiB), set and
/// tested without hashing on every command.
struct CidSet {
    words: Box<[u64]>,
}

impl Default for CidSet {
    fn default() -> CidSet {
        CidSet {
            words: vec![0u64; (1 << 16) / 64].into_boxed_slice(),
        }
    }
}

impl CidSet {
    fn contains(&self, cid: u16) -> bool {
        self.words[usize::from(cid >> 6)] & (1 << (cid & 63)) != 0
    }

    fn insert(&mut self, cid: u16) {
        self.words[usize::from(cid >> 6)] |= 1 << (cid & 63);
    }

    fn remove(&mut self, cid: u16) {
        self.words[usize::from(cid >> 6)] &= !(1 << (cid & 63));
    }
}

/// A command refused before it ran: its completion, and how the receive loop goes on.
struct Refused(Reply, Next);

/// How the receive loop goes on after a PDU.
enum Next {
    Continue,
    Close,
}

/// Serves one accepted connection until the host disconnects, misbehaves, or its controller
/// is torn down. A connection that has not sent ICReq and Connect within the listener's
/// `negotiate_timeout` is closed, and so is one idle for its `idle_timeout`.
pub(crate) async fn serve_connection(target: Arc<NvmfTarget>, c: Connection) {
    let Connection {
        stream,
        shutdown,
        limits,
        ..
    } = c;
    let local = stream.local_addr().ok();
    let stream = Rc::new(stream);
    let conn = Rc::new(Conn {
        ctx: QueueCtx::new(target, local),
        stream: stream.clone(),
        shutdown,
        activity: Rc::new(IdleWatch::default()),
        enc: Cell::new(PduEncoder::new()),
        outbox: Outbox::new(stream),
        broken: Cell::new(false),
        qid: Cell::new(0),
        ctrl: OnceCell::new(),
        sq_entries: Cell::new(1),
        sqhd: Cell::new(0),
        sqflow_off: Cell::new(false),
        inflight: RefCell::new(CidSet::default()),
        transfers: RefCell::new(HashMap::new()),
        next_ttag: Cell::new(0),
        bytes: LocalSemaphore::new(MAX_IN_FLIGHT_BYTES / BYTE_UNIT),
        tasks: LocalSemaphore::new(MAX_TASKS),
    });
    // A connection that does not finish setting up in time is dropped.
    let weak: Weak<Conn> = Rc::downgrade(&conn);
    let setup = limits.negotiate_timeout;
    spawn_local(async move {
        reactor::sleep(setup).await;
        if let Some(c) = weak.upgrade()
            && c.ctrl.get().is_none()
        {
            c.stream.shutdown();
        }
    });
    if let Some(idle) = limits.idle_timeout {
        conn.activity.watch(idle, conn.shutdown.clone());
    }
    let _ = conn.run().await;
    conn.broken.set(true);
    conn.transfers.borrow_mut().clear();
    // Let commands in flight finish before the queue goes away.
    drop(conn.tasks.acquire_many(MAX_TASKS).await);
    if let Some(ctrl) = conn.ctrl.get() {
        ctrl.queues
            .lock()
            .expect("queues lock")
            .remove(&conn.qid.get());
        if conn.qid.get() == 0 {
            // The admin queue ends the association: the controller and its I/O queues go.
            ctrl.teardown();
        }
    }
}

impl Conn {
    async fn run(self: &Rc<Self>) -> io::Result<()> {
        let mut rd = BufReader::new(RECV_BUF);
        let mut dec = PduDecoder::new(Role::Controller);
        // Connection setup: ICReq.
        let frame = match self.header(&mut rd, &dec).await? {
            Some(f) => f,
            None => return Ok(()),
        };
        let PduHeader::IcReq(req) = frame.header else {
            // A TermReq before setup.
            return Ok(());
        };
        rd.fill(&self.stream, frame.len).await?;
        rd.consume(frame.len);
        let resp = IcResp::answer(&req, true, true, 0, MAXH2CDATA);
        self.send(&resp.encode()).await?;
        dec.establish(resp.hdgst, resp.ddgst);
        dec.set_max_data(MAXH2CDATA);
        self.enc
            .set(PduEncoder::with(resp.hdgst, resp.ddgst, req.hpda));
        loop {
            if self.broken.get() {
                return Ok(());
            }
            let Some(frame) = self.header(&mut rd, &dec).await? else {
                return Ok(());
            };
            let next = match frame.header {
                PduHeader::CapsuleCmd(_) => self.capsule(&mut rd, &mut dec, &frame).await?,
                PduHeader::H2CData(h) => self.h2c_data(&mut rd, &frame, h).await?,
                // The host gives up on the connection.
                _ => Next::Close,
            };
            if let Next::Close = next {
                return Ok(());
            }
        }
    }

    /// Decodes the next PDU header; on a fatal error sends a C2HTermReq and returns `None`.
    async fn header(&self, rd: &mut BufReader, dec: &PduDecoder) -> io::Result<Option<Frame>> {
        loop {
            match dec.decode_header(rd.buffered()) {
                Ok(HeaderDecoded::Header(f)) => return Ok(Some(f)),
                Ok(HeaderDecoded::Incomplete { more }) => {
                    let need = rd.buffered().len() + more;
                    rd.fill(&self.stream, need).await?;
                }
                Err(e) => {
                    self.fatal(&e, rd.buffered()).await;
                    return Ok(None);
                }
            }
        }
    }

    /// Sends the C2HTermReq for a transport error and marks the connection for closing.
    async fn fatal(&self, e: &proto_nvme::Error, offending: &[u8]) {
        if let Some(t) = PduEncoder::term_req_for(false, e, offending) {
            let _ = self.send(&t).await;
        }
        self.broken.set(true);
    }

    async fn send(&self, bytes: &[u8]) -> io::Result<()> {
        self.outbox.send([Chunk::copy(bytes)]).await
    }

    fn fail_send(&self) {
        self.broken.set(true);
        self.stream.shutdown();
    }

    /// A command capsule: receive its data, admit the command, and start it.
    async fn capsule(
        self: &Rc<Self>,
        rd: &mut BufReader,
        dec: &mut PduDecoder,
        frame: &Frame,
    ) -> io::Result<Next> {
        let PduHeader::CapsuleCmd(sqe) = frame.header else {
            return Ok(Next::Close);
        };
        // Every capsule ends in exactly one completion (`queue_completion`), which marks it
        // done.
        self.activity.request();
        let (data, bad_digest) = self.capsule_data(rd, frame).await?;
        let entries = self.sq_entries.get().max(1);
        self.sqhd
            .set(((u32::from(self.sqhd.get()) + 1) % entries) as u16);
        let Some(ctrl) = self.ctrl.get() else {
            if sqe.opcode == FABRICS_OPCODE && sqe.fctype() == fctype::CONNECT {
                return self.connect(dec, &sqe, &data, bad_digest).await;
            }
            let r = Reply::status(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
            self.reply_now(&sqe, r).await;
            return Ok(Next::Continue);
        };
        let (cmd, dp) = match self.admit(ctrl, &sqe, bad_digest) {
            Ok(c) => c,
            Err(Refused(r, next)) => {
                self.reply_now(&sqe, r).await;
                return Ok(next);
            }
        };
        let task = self.tasks.acquire().await;
        self.inflight.borrow_mut().insert(sqe.cid);
        self.dispatch(sqe, cmd, dp, data, task).await;
        Ok(Next::Continue)
    }

    /// Receives a capsule's in-capsule data and its digest; returns the data (empty when
    /// the digest is wrong) and whether it was.
    async fn capsule_data(&self, rd: &mut BufReader, frame: &Frame) -> io::Result<(IoBuf, bool)> {
        // The header (checked by `header`) is buffered; the data, as for H2CData, goes from
        // the staging buffer as far as it was received and straight from the socket for the
        // rest, into a buffer of its own: a capsule never has to be whole in the staging
        // buffer.
        rd.consume(frame.header_len);
        rd.skip(&self.stream, frame.padding() as u64).await?;
        let mut data = IoBuf::empty();
        if frame.data_len > 0 {
            let mut buf = reactor::alloc_buf(frame.data_len);
            buf.set_len(0);
            let (r, buf) = rd.read_into(&self.stream, buf, 0, frame.data_len).await;
            r?;
            data = buf;
        }
        let mut bad_digest = false;
        if frame.data_digest {
            rd.fill(&self.stream, 4).await?;
            let got = u32::from_le_bytes(rd.buffered()[..4].try_into().expect("4 bytes"));
            rd.consume(4);
            bad_digest = crc32c(&data) != got;
        }
        if bad_digest {
            data = IoBuf::empty();
        }
        Ok((data, bad_digest))
    }

    /// Checks a command on a connected queue before it runs: identifier free, command
    /// parsed, data intact, data pointer valid and within MDTS, a task slot free. A refused
    /// command is completed at once (and recorded in the Error Information log where the
    /// specification locates the error); Disconnect is "refused" with success and a close.
    fn admit(
        &self,
        ctrl: &Controller,
        sqe: &Sqe,
        bad_digest: bool,
    ) -> Result<(Command, DataPointer), Refused> {
        let refuse = |s: Status| Refused(Reply::status(s), Next::Continue);
        let qid = self.qid.get();
        if self.inflight.borrow().contains(sqe.cid) {
            return Err(refuse(Status::COMMAND_ID_CONFLICT.with_dnr()));
        }
        let qtype = if qid == 0 {
            QueueType::Admin
        } else {
            QueueType::Io
        };
        let cmd = Command::parse(sqe, qtype).map_err(|e| {
            ctrl.log_error(qid, sqe.cid, e.status(), e.error_location(), sqe.nsid, 0);
            refuse(e.status())
        })?;
        if bad_digest {
            return Err(refuse(Status::TRANSIENT_TRANSPORT_ERROR));
        }
        match cmd {
            Command::Connect(_) => return Err(refuse(Status::COMMAND_SEQUENCE_ERROR.with_dnr())),
            Command::Disconnect { .. } => return Err(Refused(Reply::ok(), Next::Close)),
            _ => {}
        }
        let dp = sqe.data_pointer().map_err(|e| {
            ctrl.log_error(qid, sqe.cid, e.status(), e.error_location(), sqe.nsid, 0);
            refuse(e.status())
        })?;
        if dp.len() > MDTS_BYTES {
            return Err(refuse(Status::INVALID_FIELD.with_dnr()));
        }
        if self.tasks.available() == 0 {
            // More commands in flight than any queue may hold: the host ignores SQSIZE.
            // Waiting here could stall the H2CData the running commands wait for.
            return Err(refuse(Status::COMMAND_INTERRUPTED));
        }
        Ok((cmd, dp))
    }

    /// Starts an admitted command with its data: in-capsule data at once, data the host
    /// has yet to send after an R2T, none at once.
    async fn dispatch(
        self: &Rc<Self>,
        sqe: Sqe,
        cmd: Command,
        dp: DataPointer,
        data: IoBuf,
        task: Permit,
    ) {
        let to_controller = matches!(
            sqe.data_direction(),
            DataDirection::HostToController | DataDirection::Bidirectional
        );
        match dp {
            DataPointer::InCapsule { .. } if to_controller && !dp.is_empty() => {
                match dp.in_capsule_slice(&data) {
                    Ok(s) => {
                        // The usual case (offset 0, the whole capsule) moves the buffer.
                        let buf = if s.len() == data.len() {
                            data
                        } else {
                            copy_to_buf(s)
                        };
                        self.start(sqe, cmd, Some(buf), task, None);
                    }
                    Err(e) => {
                        drop(task);
                        self.complete(&sqe, Reply::status(e.status())).await;
                    }
                }
            }
            DataPointer::Transport { len } if to_controller && len > 0 => {
                self.request_data(sqe, cmd, len, task);
            }
            _ => self.start(sqe, cmd, None, task, None),
        }
    }

    /// Asks the host for a command's data with one R2T for the whole transfer, once the
    /// in-flight byte budget allows it (in a task of its own: the receive loop goes on, and
    /// so do the H2CData of other commands).
    fn request_data(self: &Rc<Self>, sqe: Sqe, cmd: Command, len: u32, task: Permit) {
        let c = self.clone();
        spawn_local(async move {
            let bytes = c.bytes.acquire_many(units(len)).await;
            if c.broken.get() {
                c.inflight.borrow_mut().remove(sqe.cid);
                return;
            }
            let ttag = c.next_ttag.get();
            c.next_ttag.set(ttag.wrapping_add(1));
            let mut buf = reactor::alloc_buf(len as usize);
            buf.set_len(0);
            c.transfers.borrow_mut().insert(
                ttag,
                Transfer {
                    sqe,
                    cmd,
                    buf,
                    len,
                    received: 0,
                    bad_digest: false,
                    bytes,
                    task,
                },
            );
            let r2t = c.enc.get().r2t(&R2T {
                cccid: sqe.cid,
                ttag,
                r2to: 0,
                r2tl: len,
            });
            if c.send(&r2t).await.is_err() {
                c.fail_send();
            }
        });
    }

    /// H2CData for a pending R2T.
    async fn h2c_data(
        self: &Rc<Self>,
        rd: &mut BufReader,
        frame: &Frame,
        h: proto_nvme::H2CData,
    ) -> io::Result<Next> {
        // The header as received, quoted in a TermReq if the PDU is refused.
        let header =
            |rd: &BufReader| rd.buffered()[..frame.header_len.min(rd.buffered().len())].to_vec();
        let t = self.transfers.borrow_mut().remove(&h.ttag);
        let mut t = match t {
            Some(t) if t.sqe.cid == h.cccid => t,
            Some(t) => {
                self.transfers.borrow_mut().insert(h.ttag, t);
                let e = proto_nvme::Error::InvalidHeaderField {
                    offset: 8,
                    reason: "CCCID does not match the R2T",
                };
                self.fatal(&e, &header(rd)).await;
                return Ok(Next::Close);
            }
            None => {
                let e = proto_nvme::Error::InvalidHeaderField {
                    offset: 10,
                    reason: "unknown transfer tag",
                };
                self.fatal(&e, &header(rd)).await;
                return Ok(Next::Close);
            }
        };
        if let Err(e) = check_data_range(h.datao, h.datal, t.len, Some(t.received)) {
            self.fatal(&e, &header(rd)).await;
            return Ok(Next::Close);
        }
        rd.consume(frame.header_len);
        rd.skip(&self.stream, frame.padding() as u64).await?;
        let at = t.buf.len();
        let (r, buf) = rd
            .read_into(&self.stream, t.buf, at, h.datal as usize)
            .await;
        t.buf = buf;
        r?;
        if frame.data_digest {
            rd.fill(&self.stream, 4).await?;
            let got = u32::from_le_bytes(rd.buffered()[..4].try_into().expect("4 bytes"));
            rd.consume(4);
            if crc32c(&t.buf[at..]) != got {
                t.bad_digest = true;
            }
        }
        t.received += h.datal;
        if t.received < t.len {
            self.transfers.borrow_mut().insert(h.ttag, t);
            return Ok(Next::Continue);
        }
        if self.ctrl.get().is_none() {
            return Ok(Next::Close);
        }
        if t.bad_digest {
            drop(t.task);
            self.complete(&t.sqe, Reply::status(Status::TRANSIENT_TRANSPORT_ERROR))
                .await;
            return Ok(Next::Continue);
        }
        self.start(t.sqe, t.cmd, Some(t.buf), t.task, Some(t.bytes));
        Ok(Next::Continue)
    }

    /// Runs a command in its own task and completes it. I/O commands get a task of their
    /// own kind: an admin command's future is several times larger, and every I/O would
    /// otherwise allocate and copy that much.
    fn start(
        self: &Rc<Self>,
        sqe: Sqe,
        cmd: Command,
        data: Option<IoBuf>,
        task: Permit,
        bytes: Option<Permit>,
    ) {
        let c = self.clone();
        if self.qid.get() == 0 {
            spawn_local(async move {
                let _task = task;
                let _bytes = c.data_budget(&sqe, bytes).await;
                let ctrl = c.ctrl.get().expect("a command runs on a connected queue");
                if let Some(r) = cmd::admin(&c.ctx, ctrl, &sqe, cmd, data).await {
                    c.complete(&sqe, r).await;
                }
            });
        } else {
            // Polled at once: the device I/O is queued before the receive loop goes on.
            spawn_now(async move {
                let _task = task;
                let _bytes = c.data_budget(&sqe, bytes).await;
                let ctrl = c.ctrl.get().expect("a command runs on a connected queue");
                let r = cmd::io(&c.ctx, ctrl, &sqe, cmd, data).await;
                c.complete(&sqe, r).await;
            });
        }
    }

    /// The in-flight byte budget a command holds while it runs: what its data took on the
    /// way in (`bytes`, for writes), else what it returns.
    async fn data_budget(&self, sqe: &Sqe, bytes: Option<Permit>) -> Permit {
        if let Some(b) = bytes {
            return b;
        }
        let out = match sqe.data_direction() {
            DataDirection::ControllerToHost | DataDirection::Bidirectional => sqe.dptr.len(),
            _ => 0,
        };
        self.bytes.acquire_many(units(out)).await
    }

    /// Completes a command that never became a task.
    async fn reply_now(&self, sqe: &Sqe, r: Reply) {
        self.inflight.borrow_mut().insert(sqe.cid);
        self.complete(sqe, r).await;
    }

    /// Sends a command's data (if any) and completion, logging failures.
    pub(crate) async fn complete(&self, sqe: &Sqe, r: Reply) {
        // Queued now; only the wait for the send is part of this future, which every
        // command's task carries.
        let Some(sending) = self.queue_completion(sqe, r) else {
            return;
        };
        if sending.await.is_err() {
            self.fail_send();
        }
    }

    /// Queues a command's data (if any) and completion on the outbox; `None` if the
    /// connection is broken.
    fn queue_completion(
        &self,
        sqe: &Sqe,
        r: Reply,
    ) -> Option<impl Future<Output = io::Result<()>> + '_> {
        let cid = sqe.cid;
        self.inflight.borrow_mut().remove(cid);
        self.activity.done();
        if !r.status.is_success()
            && let Some(ctrl) = self.ctrl.get()
            && sqe.opcode != proto_nvme::admin_opcode::ASYNC_EVENT_REQUEST
        {
            ctrl.log_error(self.qid.get(), cid, r.status, 0xffff, sqe.nsid, 0);
        }
        let cqe = Cqe {
            dw0: r.dw0,
            dw1: r.dw1,
            sqhd: if self.sqflow_off.get() {
                0
            } else {
                self.sqhd.get()
            },
            sqid: self.qid.get(),
            cid,
            status: r.status,
        };
        let enc = self.enc.get();
        if self.broken.get() {
            return None;
        }
        // Header, data and digest (C2HData), then the response unless the data PDU carries
        // the success: one message, gathered with whatever else is ready to go.
        let mut out: [Option<Chunk>; 4] = [None, None, None, None];
        match r.data {
            Some(data) if r.status.is_success() && !data.is_empty() => {
                let success = self.sqflow_off.get();
                let hdr = enc.c2h_data_header(&proto_nvme::C2HData {
                    cccid: cid,
                    datao: 0,
                    datal: data.len() as u32,
                    last: true,
                    success,
                });
                out[0] = Some(Chunk::copy(&hdr));
                out[2] = enc.data_digest_for(&data).map(|d| Chunk::copy(&d));
                out[1] = Some(Chunk::Buf(data));
                if !success {
                    out[3] = Some(Chunk::copy(&enc.capsule_resp(&cqe)));
                }
            }
            _ => out[0] = Some(Chunk::copy(&enc.capsule_resp(&cqe))),
        }
        Some(self.outbox.send(out.into_iter().flatten()))
    }

    /// Connect: creates a controller (admin queue) or joins one (I/O queue).
    async fn connect(
        self: &Rc<Self>,
        dec: &mut PduDecoder,
        sqe: &Sqe,
        data: &[u8],
        bad_digest: bool,
    ) -> io::Result<Next> {
        match self.do_connect(dec, sqe, data, bad_digest) {
            Ok(ctrl) => {
                self.sqhd.set((1 % self.sq_entries.get().max(1)) as u16);
                self.reply_now(sqe, Reply::dw0(connect_success_dw0(ctrl.cntlid, 0)))
                    .await;
                if self.qid.get() == 0 {
                    self.spawn_admin_tasks(&ctrl);
                }
                Ok(Next::Continue)
            }
            Err(r) => {
                self.reply_now(sqe, r).await;
                Ok(Next::Continue)
            }
        }
    }

    fn do_connect(
        self: &Rc<Self>,
        dec: &mut PduDecoder,
        sqe: &Sqe,
        data: &[u8],
        bad_digest: bool,
    ) -> Result<Arc<Controller>, Reply> {
        let invalid = |in_data: bool, offset: u16| Reply {
            dw0: connect_invalid_parameter_dw0(in_data, offset),
            ..Reply::status(Status::CONNECT_INVALID_PARAMETERS.with_dnr())
        };
        let Ok(Command::Connect(c)) = Command::parse(sqe, QueueType::Admin) else {
            return Err(Reply::status(Status::INVALID_FIELD.with_dnr()));
        };
        if bad_digest {
            return Err(Reply::status(Status::TRANSIENT_TRANSPORT_ERROR));
        }
        if c.recfmt != 0 {
            return Err(Reply::status(
                Status::CONNECT_INCOMPATIBLE_FORMAT.with_dnr(),
            ));
        }
        let dp = sqe.data_pointer().map_err(|e| Reply::status(e.status()))?;
        let bytes = match dp {
            DataPointer::InCapsule { .. } => dp
                .in_capsule_slice(data)
                .map_err(|e| Reply::status(e.status()))?,
            DataPointer::Transport { .. } => {
                return Err(Reply::status(Status::DATA_SGL_LENGTH_INVALID.with_dnr()));
            }
        };
        let cd = ConnectData::parse(bytes).map_err(|e| match e {
            proto_nvme::Error::ConnectInvalidParameter {
                in_data, offset, ..
            } => invalid(in_data, offset),
            other => Reply::status(other.status()),
        })?;
        let Some(sub) = self.ctx.target.find(cd.subnqn) else {
            return Err(invalid(true, proto_nvme::CONNECT_SUBNQN_OFFSET as u16));
        };
        if sub.removed.load(Ordering::SeqCst) {
            return Err(invalid(true, proto_nvme::CONNECT_SUBNQN_OFFSET as u16));
        }
        if proto_nvme::validate_nqn(cd.hostnqn).is_err() {
            return Err(invalid(true, proto_nvme::CONNECT_HOSTNQN_OFFSET as u16));
        }
        if !sub.host_allowed(cd.hostnqn) {
            return Err(Reply::status(Status::CONNECT_INVALID_HOST.with_dnr()));
        }
        let entries = c.queue_entries();
        if !(2..=MAX_QUEUE_SIZE).contains(&entries) {
            return Err(invalid(false, 44));
        }
        let ctrl = if c.qid == 0 {
            if cd.cntlid != proto_nvme::CNTLID_DYNAMIC {
                return Err(invalid(true, 16));
            }
            let (hostnqn, hostid) = (cd.hostnqn, cd.hostid);
            let s2 = sub.clone();
            sub.add_controller(|id| Controller::new(id, s2, hostnqn, hostid, c.kato))
                .ok_or_else(|| Reply::status(Status::CONNECT_CONTROLLER_BUSY))?
        } else {
            if sub.discovery {
                return Err(invalid(false, 42));
            }
            let ctrl = sub
                .controller(cd.cntlid)
                .filter(|c| !c.is_dead())
                .ok_or_else(|| invalid(true, 16))?;
            if ctrl.hostnqn != cd.hostnqn {
                return Err(invalid(true, proto_nvme::CONNECT_HOSTNQN_OFFSET as u16));
            }
            if ctrl.hostid != cd.hostid {
                return Err(invalid(true, 0));
            }
            if !ctrl.enabled() {
                return Err(Reply::status(Status::COMMAND_SEQUENCE_ERROR.with_dnr()));
            }
            let granted = match ctrl.state().io_queues {
                0 => MAX_IO_QUEUES,
                n => n,
            };
            if c.qid > granted {
                return Err(invalid(false, 42));
            }
            ctrl
        };
        {
            let mut q = ctrl.queues.lock().expect("queues lock");
            if q.contains_key(&c.qid) {
                return Err(invalid(false, 42));
            }
            q.insert(c.qid, self.shutdown.clone());
        }
        if c.qid > 0 {
            dec.set_max_in_capsule(IO_IN_CAPSULE);
        }
        ctrl.touch();
        self.qid.set(c.qid);
        self.sq_entries.set(entries);
        self.sqflow_off.set(c.sq_flow_control_disabled());
        // A queue connects once: a second Connect was refused above (no controller yet).
        let _ = self.ctrl.set(ctrl.clone());
        Ok(ctrl)
    }

    /// The admin queue's helpers: completes Async Event Requests as events arrive, and
    /// tears the controller down when the keep-alive timer expires.
    fn spawn_admin_tasks(self: &Rc<Self>, ctrl: &Arc<Controller>) {
        let c = self.clone();
        let ctl = ctrl.clone();
        spawn_local(async move {
            loop {
                let next = std::future::poll_fn(|cx| {
                    if ctl.is_dead() || c.broken.get() {
                        return std::task::Poll::Ready(None);
                    }
                    match ctl.take_event(cx.waker()) {
                        Some(x) => std::task::Poll::Ready(Some(x)),
                        None => std::task::Poll::Pending,
                    }
                })
                .await;
                let Some((cid, ev)) = next else { return };
                let sqe = Sqe {
                    cid,
                    opcode: proto_nvme::admin_opcode::ASYNC_EVENT_REQUEST,
                    ..Sqe::default()
                };
                c.complete(&sqe, Reply::dw0(ev.to_dw0())).await;
            }
        });
        let ctl = ctrl.clone();
        spawn_local(async move {
            loop {
                let kato = u64::from(ctl.kato_ms.load(Ordering::Relaxed));
                let check = if kato == 0 { 1000 } else { (kato / 4).max(100) };
                reactor::sleep(Duration::from_millis(check)).await;
                if ctl.is_dead() {
                    return;
                }
                // The specification lets a controller add its own delay to KATO; half of
                // KATO (at least a second) absorbs hosts that send Keep Alive late.
                if kato > 0 && ctl.idle_ms() > kato + (kato / 2).max(1000) {
                    eprintln!(
                        "nvmf: controller {} of {} ({}): keep alive timeout ({} ms) expired",
                        ctl.cntlid, ctl.subsys.nqn, ctl.hostnqn, kato
                    );
                    ctl.teardown();
                    return;
                }
            }
        });
    }
}

fn units(len: u32) -> usize {
    (len as usize).div_ceil(BYTE_UNIT)
}

/// `s` in a buffer from the reactor's registered pool when one is free (the device then
/// writes it with `WRITE_FIXED`), without zeroing it first.
fn copy_to_buf(s: &[u8]) -> IoBuf {
    let mut b = reactor::alloc_buf(s.len());
    b.set_len(s.len());
    b.copy_from_slice(s);
    b
}
