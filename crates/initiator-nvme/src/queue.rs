//! One NVMe/TCP queue: a TCP connection on the reactor that created it, its command table,
//! its receive task and the R2T answers.
//!
//! A queue lives on one reactor: the receive task, the senders and every caller poll on that
//! thread, so the state is `Rc`/`RefCell` without locks. PDUs are sent whole, in order,
//! through the queue's [`Outbox`]: capsules issued while a send is in flight leave together
//! in the next `sendmsg` (one system call and segment for many commands under load); the
//! receive task reads PDUs through a staging buffer and moves read data straight into the
//! caller's buffer.
//!
//! A command occupies a slot from submission until the controller completes it, even when
//! the caller stops waiting (its future dropped): the command identifier is reused only once
//! the controller has answered, so a late completion can never complete somebody else's
//! command. The identifier carries the slot index and a per-slot generation. A caller that
//! stops waiting before its capsule was queued frees the slot at once (the controller never
//! saw the command); once queued the capsule goes out whole, and the slot waits for the
//! answer, even when its caller was the one sending (the outbox finishes a batch without it).
//!
//! I/O queues are connected with SQ flow control disabled, so a controller may end a
//! successful read with its last C2HData PDU (SUCCESS flag) instead of a CapsuleResp: one
//! PDU per read instead of two. The admin queue keeps flow control.
//!
//! Command timeouts are kept by a watchdog task per queue rather than a timer per command:
//! every command has a deadline; the watchdog parks while no command is outstanding and
//! otherwise checks every tenth of the timeout (10 ms to 1 s). Commands past their deadline
//! fail with `Timeout` and the queue is killed.
//!
//! Anything the controller sends that breaks the protocol (a malformed PDU, a header digest
//! error, a completion or data for an unknown command, data outside a command's transfer)
//! *kills* the queue: an H2CTermReq is sent when possible, the socket is shut down, every
//! outstanding command fails, and the association is reported failed so that the next I/O
//! reconnects. A data digest error fails only the command the data belongs to (the framing
//! is intact).

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Weak;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use proto_nvme::{
    C2HData, CATTR_DISABLE_SQ_FLOW_CONTROL, CONNECT_DATA_LEN, CommonHeader, Connect, ConnectData,
    ConnectResponse, Cqe, Decoded, Fes, Frame, H2CData, HeaderDecoded, IcReq, Pdu, PduDecoder,
    PduEncoder, PduHeader, R2T, Role, Sgl, Sqe, Status, check_data_range, crc32c, digest_bytes,
};
use reactor::sync::{LocalSemaphore, Permit, timeout};
use reactor::{Chunk, IoBuf, Outbox, StableBuf, TcpStream, spawn_local};

use super::{Failure, Shared};
use blockdev::ErrorKind;

/// Size of the staging buffer PDUs are received into (read data mostly bypasses it).
const RX_BUF: usize = 64 * 1024;
/// Bits of a command identifier that select the slot; the rest is the slot's generation.
const SLOT_BITS: u32 = 10;
/// Most slots a queue can have (the largest queue size accepted).
pub(crate) const MAX_QUEUE_SIZE: u16 = 1 << SLOT_BITS;
/// Longest a TermReq may wait for the send lock before the connection is closed anyway.
const TERM_REQ_WAIT: Duration = Duration::from_secs(1);

/// What a queue is created with.
#[derive(Clone, Debug)]
pub(crate) struct QueueSetup {
    /// Queue identifier: 0 for the admin queue.
    pub qid: u16,
    /// Entries in the submission queue (SQSIZE + 1); one fewer may be outstanding.
    pub qsize: u16,
    /// Controller to attach to (`CNTLID_DYNAMIC` for the admin queue).
    pub cntlid: u16,
    /// Keep Alive Timeout for the Connect command, in ms (admin queue only).
    pub kato: u32,
    /// Largest data the controller may send for one command (bytes).
    pub max_data: u32,
    /// Most data a command may carry in its capsule once connected.
    pub in_capsule: u32,
    /// Association generation the queue belongs to.
    pub epoch: u64,
    /// Command timeout.
    pub timeout: Duration,
}

/// A part of a buffer handed to a command: `len` bytes from `start`.
#[derive(Debug)]
pub(crate) struct Window {
    pub buf: IoBuf,
    pub start: usize,
    pub len: usize,
}

impl Window {
    pub fn new(buf: IoBuf, start: usize, len: usize) -> Window {
        assert!(
            start.checked_add(len).is_some_and(|e| e <= buf.len()),
            "window beyond its buffer"
        );
        Window { buf, start, len }
    }

    pub fn whole(buf: IoBuf) -> Window {
        let len = buf.len();
        Window { buf, start: 0, len }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

// SAFETY: the bytes are `buf[start..start + len]`, inside the IoBuf's payload (checked in
// `Window::new`), whose heap allocation does not move when the Window or the IoBuf moves.
unsafe impl StableBuf for Window {
    fn stable_ptr(&self) -> *const u8 {
        self.bytes().as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len
    }
}

/// A command's data.
#[derive(Debug)]
pub(crate) enum Xfer {
    /// No data.
    None,
    /// The controller sends data into the window (read, identify).
    ToHost(Window),
    /// The host sends the window: in the capsule when it fits, else on R2T.
    FromHost(Window),
}

/// A completed command: its completion entry and the buffer it was given.
#[derive(Debug)]
pub(crate) struct Completion {
    pub cqe: Cqe,
    pub buf: Option<IoBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    None,
    ToHost,
    FromHost,
}

struct Cmd {
    cid: u16,
    /// The command as sent, for messages.
    sqe: Sqe,
    /// When the watchdog fails it.
    deadline: Instant,
    dir: Dir,
    /// A write whose data went in the capsule (an R2T for it is a protocol error).
    in_capsule: bool,
    buf: Option<IoBuf>,
    base: usize,
    len: usize,
    /// Bytes moved so far (received for reads, sent on R2T for writes).
    moved: usize,
    /// An R2T is being answered (the buffer is with the sending task).
    r2t_active: bool,
    /// The next R2T, received while the previous one's last data was still on its way out
    /// (the controller had all of it already); answered by the same task.
    next_r2t: Option<R2T>,
    data_error: Option<String>,
    done: Option<Result<Cqe, Failure>>,
    waker: Option<Waker>,
    /// The caller stopped waiting; free the slot when the controller answers.
    abandoned: bool,
    _permit: Permit,
}

/// The staging receive buffer: the reactor's buffered reader (PDU headers parsed from it,
/// read data received straight into the command's buffer).
type Rx = reactor::BufReader;

/// What a failed receive means, for the message.
fn recv_err(e: std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        "connection closed by the controller".into()
    } else {
        format!("receive failed: {e}")
    }
}

/// One queue (TCP connection) of an association.
pub(crate) struct Queue {
    shared: Weak<Shared>,
    /// The device's identifier (its key in the reactor's queue table).
    pub dev_id: u64,
    pub epoch: u64,
    pub qid: u16,
    peer: SocketAddr,
    stream: Rc<TcpStream>,
    enc: PduEncoder,
    dec: PduDecoder,
    maxh2cdata: u32,
    in_capsule: Cell<u32>,
    /// SQ flow control is disabled (I/O queues): C2HData may carry SUCCESS.
    sqflow_off: bool,
    timeout: Duration,
    /// Serialises PDUs on the socket; holds a reusable header buffer.
    /// Everything sent goes through here: capsules ready together leave in one send.
    outbox: Outbox,
    slots: RefCell<Vec<Option<Cmd>>>,
    generations: RefCell<Vec<u16>>,
    free: RefCell<Vec<u16>>,
    depth: LocalSemaphore,
    dead: RefCell<Option<Failure>>,
    /// The watchdog, parked while no command is outstanding.
    watchdog: RefCell<Option<Waker>>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("qid", &self.qid)
            .field("epoch", &self.epoch)
            .field("peer", &self.peer)
            .field("dead", &self.dead.borrow().is_some())
            .finish()
    }
}

/// Where a command's caller is, for when its future is dropped there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Not queued for sending yet: the controller never sees the command, its slot is freed.
    Queued,
    /// In the outbox: it goes out whole (the outbox finishes a batch whose sender stopped
    /// waiting); the slot stays.
    Sending,
    /// On the wire: the slot stays until the controller answers.
    Sent,
}

/// Frees the slot of a command whose caller stopped waiting before it completed.
struct SlotGuard<'a> {
    q: &'a Queue,
    cid: u16,
    stage: &'a Cell<Stage>,
    armed: bool,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let idx = slot_of(self.cid);
        let sending = {
            let mut slots = self.q.slots.borrow_mut();
            let Some(Some(cmd)) = slots.get_mut(idx) else {
                return;
            };
            if cmd.cid != self.cid {
                return;
            }
            if cmd.done.is_some() || self.stage.get() == Stage::Queued {
                slots[idx] = None;
                drop(slots);
                self.q.free.borrow_mut().push(idx as u16);
                return;
            }
            cmd.abandoned = true;
            cmd.waker = None;
            self.stage.get() == Stage::Sending
        };
        if sending && self.q.outbox.failed() {
            self.q.kill(Failure::gone(format!(
                "queue {} to {}: a command was abandoned while its capsule was being sent",
                self.q.qid, self.q.peer
            )));
        }
    }
}

fn slot_of(cid: u16) -> usize {
    usize::from(cid) & ((1 << SLOT_BITS) - 1)
}

impl Queue {
    /// Opens a TCP connection to one of `addrs`, exchanges ICReq/ICResp, starts the receive
    /// task and sends the fabrics Connect. Returns the queue and the controller ID.
    pub async fn connect(
        shared: &std::sync::Arc<Shared>,
        addrs: &[SocketAddr],
        setup: QueueSetup,
    ) -> Result<(Rc<Queue>, u16), Failure> {
        let (stream, peer) = tcp_connect(addrs, setup.timeout).await?;
        let stream = Rc::new(stream);
        // Registered before anything else: a failure or close of the association from any
        // thread shuts the connection down, even in the middle of the handshake.
        shared.register(setup.epoch, &stream)?;
        let p = &shared.params;
        let ic = timeout(setup.timeout, initialize(&stream, p.hdgst, p.ddgst))
            .await
            .unwrap_or_else(|| {
                Err(Failure::gone(format!(
                    "{peer}: no ICResp within {:?}",
                    setup.timeout
                )))
            })
            .map_err(|f| f.context(&format!("{peer}")))?;
        let mut dec = PduDecoder::new(Role::Host);
        dec.establish(ic.hdgst, ic.ddgst);
        dec.set_max_data(setup.max_data.max(4096));
        let qsize = setup.qsize.clamp(2, MAX_QUEUE_SIZE);
        let depth = usize::from(qsize) - 1;
        let q = Rc::new(Queue {
            shared: std::sync::Arc::downgrade(shared),
            dev_id: shared.id,
            epoch: setup.epoch,
            qid: setup.qid,
            peer,
            stream: stream.clone(),
            enc: PduEncoder::with(ic.hdgst, ic.ddgst, ic.cpda),
            dec,
            maxh2cdata: ic.maxh2cdata,
            in_capsule: Cell::new(CONNECT_DATA_LEN as u32),
            sqflow_off: setup.qid > 0,
            timeout: setup.timeout,
            outbox: Outbox::eager(stream),
            slots: RefCell::new((0..depth).map(|_| None).collect()),
            generations: RefCell::new(vec![0; depth]),
            free: RefCell::new((0..depth as u16).rev().collect()),
            depth: LocalSemaphore::new(depth),
            dead: RefCell::new(None),
            watchdog: RefCell::new(None),
        });
        spawn_local(watchdog(Rc::downgrade(&q)));
        let rq = q.clone();
        spawn_local(async move {
            let why = match rq.recv_loop().await {
                Ok(()) => Failure::gone("receive loop ended"),
                Err(f) => f,
            };
            rq.kill(why);
            super::forget_local(&rq);
        });
        let data = ConnectData {
            hostid: shared.hostid,
            cntlid: setup.cntlid,
            subnqn: &p.subnqn,
            hostnqn: &shared.hostnqn,
        }
        .encode();
        let connect = proto_nvme::Command::Connect(Connect {
            recfmt: 0,
            qid: setup.qid,
            sqsize: qsize - 1,
            cattr: if setup.qid > 0 {
                CATTR_DISABLE_SQ_FLOW_CONTROL
            } else {
                0
            },
            kato: if setup.qid == 0 { setup.kato } else { 0 },
        });
        let c = q
            .submit(
                connect.to_sqe(0, 0, Sgl::null()),
                Xfer::FromHost(Window::whole(IoBuf::from_slice(&data))),
            )
            .await
            .map_err(|f| {
                q.kill(f.clone());
                f.context(&format!("Connect of queue {} to {peer}", setup.qid))
            })?;
        let cntlid = match ConnectResponse::from_cqe(&c.cqe) {
            ConnectResponse::Success { cntlid, authreq: 0 } => cntlid,
            ConnectResponse::Success { .. } => {
                q.kill(Failure::gone("authentication required"));
                return Err(Failure::gone(format!(
                    "{peer}: the controller requires in-band authentication, which is not supported"
                )));
            }
            ConnectResponse::InvalidParameter { in_data, offset } => {
                let f = Failure::gone(format!(
                    "{peer}: Connect of queue {} refused: invalid parameter at byte {offset} of the {} (subsystem {:?}, host {:?})",
                    setup.qid,
                    if in_data { "Connect data" } else { "command" },
                    p.subnqn,
                    shared.hostnqn
                ));
                q.kill(f.clone());
                return Err(f);
            }
            ConnectResponse::Failed(s) => {
                let f = Failure::gone(format!(
                    "{peer}: Connect of queue {} refused with {s}",
                    setup.qid
                ));
                q.kill(f.clone());
                return Err(f);
            }
        };
        q.in_capsule.set(setup.in_capsule);
        Ok((q, cntlid))
    }

    /// Whether the queue can take commands.
    pub fn is_alive(&self) -> bool {
        self.dead.borrow().is_none()
    }

    /// Negotiated header digest and data digest.
    pub fn digests(&self) -> (bool, bool) {
        (self.enc.header_digest(), self.enc.data_digest())
    }

    /// MAXH2CDATA the controller announced.
    pub fn maxh2cdata(&self) -> u32 {
        self.maxh2cdata
    }

    fn check_alive(&self) -> Result<(), Failure> {
        match &*self.dead.borrow() {
            Some(f) => Err(f.clone()),
            None => Ok(()),
        }
    }

    /// Sends `sqe` (its CID and data pointer are filled in here) with `xfer` and waits for
    /// the completion. A command without a completion within the queue's command timeout
    /// fails with [`ErrorKind::Timeout`] and the queue is killed (every other command fails
    /// with [`ErrorKind::Gone`]); see [`watchdog`]. The completion may carry an error status:
    /// callers check it.
    pub async fn submit(self: &Rc<Self>, sqe: Sqe, xfer: Xfer) -> Result<Completion, Failure> {
        self.submit_inner(sqe, xfer).await
    }

    async fn submit_inner(
        self: &Rc<Self>,
        mut sqe: Sqe,
        xfer: Xfer,
    ) -> Result<Completion, Failure> {
        self.check_alive()?;
        let permit = self.depth.acquire().await;
        self.check_alive()?;
        let idx = self
            .free
            .borrow_mut()
            .pop()
            .expect("a permit guarantees a free slot") as usize;
        let cid = {
            let mut g = self.generations.borrow_mut();
            g[idx] = (g[idx] + 1) & ((1 << (16 - SLOT_BITS)) - 1);
            (g[idx] << SLOT_BITS) | idx as u16
        };
        let (dir, window) = match xfer {
            Xfer::None => (Dir::None, None),
            Xfer::ToHost(w) => (Dir::ToHost, Some(w)),
            Xfer::FromHost(w) => (Dir::FromHost, Some(w)),
        };
        let (base, len) = window.as_ref().map_or((0, 0), |w| (w.start, w.len));
        let in_capsule = dir == Dir::FromHost && len <= self.in_capsule.get() as usize;
        sqe.cid = cid;
        sqe.dptr = match dir {
            Dir::None => Sgl::null(),
            _ if in_capsule => Sgl::in_capsule(0, len as u32),
            _ => Sgl::transport(len as u32),
        };
        // An in-capsule write's buffer goes out with the capsule and is put back after.
        let (slot_buf, capsule_data) = match window {
            Some(w) if in_capsule => (None, Some(w)),
            Some(w) => (Some(w.buf), None),
            None => (None, None),
        };
        self.slots.borrow_mut()[idx] = Some(Cmd {
            cid,
            sqe,
            deadline: Instant::now() + self.timeout,
            dir,
            in_capsule,
            buf: slot_buf,
            base,
            len,
            moved: 0,
            r2t_active: false,
            next_r2t: None,
            data_error: None,
            done: None,
            waker: None,
            abandoned: false,
            _permit: permit,
        });
        if let Some(w) = self.watchdog.borrow_mut().take() {
            w.wake();
        }
        let stage = Cell::new(Stage::Queued);
        let mut guard = SlotGuard {
            q: self,
            cid,
            stage: &stage,
            armed: true,
        };
        let hdr = self
            .enc
            .capsule_cmd_header(&sqe, capsule_data.as_ref().map_or(0, |w| w.len));
        let (r, back) = self.send_pdu(&hdr, capsule_data, Some(&stage)).await;
        stage.set(Stage::Sent);
        if let Some(buf) = back {
            self.with_cmd(cid, |c| c.buf = Some(buf));
        }
        if let Err(f) = r {
            self.kill(f.clone());
            return Err(f);
        }
        let out = poll_fn(|cx| {
            let mut slots = self.slots.borrow_mut();
            let Some(Some(cmd)) = slots.get_mut(idx) else {
                return Poll::Ready(Err(Failure::gone("command slot vanished")));
            };
            match cmd.done.take() {
                // Completed, but the task that sent its data has not given the buffer back
                // yet: it wakes us when it does.
                Some(res) if cmd.r2t_active => {
                    cmd.done = Some(res);
                    cmd.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
                Some(res) => {
                    let buf = cmd.buf.take();
                    slots[idx] = None;
                    drop(slots);
                    self.free.borrow_mut().push(idx as u16);
                    Poll::Ready(res.map(|cqe| Completion { cqe, buf }))
                }
                None => {
                    cmd.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await;
        guard.armed = false;
        out
    }

    fn with_cmd<R>(&self, cid: u16, f: impl FnOnce(&mut Cmd) -> R) -> Option<R> {
        let mut slots = self.slots.borrow_mut();
        match slots.get_mut(slot_of(cid)) {
            Some(Some(c)) if c.cid == cid => Some(f(c)),
            _ => None,
        }
    }

    /// Records the outcome of a command and wakes its caller (or frees an abandoned slot).
    fn complete(&self, cid: u16, res: Result<Cqe, Failure>) {
        let idx = slot_of(cid);
        let waker = {
            let mut slots = self.slots.borrow_mut();
            let Some(Some(cmd)) = slots.get_mut(idx) else {
                return;
            };
            if cmd.abandoned {
                slots[idx] = None;
                drop(slots);
                self.free.borrow_mut().push(idx as u16);
                return;
            }
            cmd.done = Some(res);
            cmd.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Sends one PDU: `hdr` and optionally data from a window (with its digest when data
    /// digests are on). Returns the window's buffer. `stage` becomes `Sending` once the
    /// socket is ours. The PDU is queued by this call; the future only waits for the send
    /// (and stays small: every command carries one).
    fn send_pdu(
        &self,
        hdr: &[u8],
        data: Option<Window>,
        stage: Option<&Cell<Stage>>,
    ) -> impl std::future::Future<Output = (Result<(), Failure>, Option<IoBuf>)> + '_ {
        let queued = match self.check_alive() {
            Err(f) => Err((f, data.map(|w| w.buf))),
            Ok(()) => {
                if let Some(st) = stage {
                    st.set(Stage::Sending);
                }
                let mut out: [Option<Chunk>; 3] = [Some(Chunk::copy(hdr)), None, None];
                if let Some(w) = data {
                    out[2] = self
                        .enc
                        .data_digest()
                        .then(|| Chunk::copy(&digest_bytes(w.bytes())));
                    out[1] = Some(Chunk::Kept {
                        buf: w.buf,
                        start: w.start,
                        len: w.len,
                    });
                }
                Ok(self.outbox.send_keep(out.into_iter().flatten()))
            }
        };
        async move {
            match queued {
                Err((f, buf)) => (Err(f), buf),
                Ok(sending) => {
                    let (r, buf) = sending.await;
                    (
                        r.map_err(|e| Failure::gone(format!("sending to {}: {e}", self.peer))),
                        buf,
                    )
                }
            }
        }
    }

    /// Fails every outstanding command with `why`, closes the connection and reports the
    /// association failed. Idempotent.
    pub fn kill(&self, why: Failure) {
        if self.dead.borrow().is_some() {
            return;
        }
        *self.dead.borrow_mut() = Some(why.clone());
        self.stream.shutdown();
        let mut wakers = Vec::new();
        let mut freed = Vec::new();
        {
            let mut slots = self.slots.borrow_mut();
            for (i, s) in slots.iter_mut().enumerate() {
                let Some(cmd) = s else { continue };
                if cmd.abandoned {
                    freed.push(i as u16);
                } else if cmd.done.is_none() {
                    cmd.done = Some(Err(why.clone()));
                    wakers.extend(cmd.waker.take());
                }
            }
            for &i in &freed {
                slots[usize::from(i)] = None;
            }
        }
        self.free.borrow_mut().extend(freed);
        wakers.extend(self.watchdog.borrow_mut().take());
        for w in wakers {
            w.wake();
        }
        if let Some(s) = self.shared.upgrade() {
            s.fail(self.epoch, &why.msg);
        }
    }

    /// Receives and dispatches PDUs until the connection ends or breaks the protocol.
    async fn recv_loop(self: &Rc<Self>) -> Result<(), Failure> {
        let mut rx = Rx::new(RX_BUF);
        let eof = |e: std::io::Error| Failure::gone(format!("{}: {}", self.peer, recv_err(e)));
        loop {
            let frame = loop {
                match self.dec.decode_header(rx.buffered()) {
                    Ok(HeaderDecoded::Header(f)) => break f,
                    Ok(HeaderDecoded::Incomplete { more }) => {
                        let n = rx.buffered().len() + more;
                        rx.fill(&self.stream, n).await.map_err(eof)?;
                    }
                    Err(e) => return Err(self.protocol_error(&e, rx.buffered()).await),
                }
            };
            if let PduHeader::C2HData(h) = frame.header {
                self.on_c2h_data(&mut rx, &frame, h).await?;
                continue;
            }
            rx.fill(&self.stream, frame.len).await.map_err(eof)?;
            let pdu_bytes = &rx.buffered()[..frame.len];
            match self.dec.decode(pdu_bytes) {
                Ok(Decoded::Pdu { pdu, len }) => {
                    let r = self.on_pdu(pdu);
                    if let Err(e) = r {
                        let quoted = pdu_bytes.to_vec();
                        return Err(self.protocol_error(&e, &quoted).await);
                    }
                    rx.consume(len);
                }
                Ok(_) => {
                    let e = proto_nvme::Error::InvalidHeaderField {
                        offset: 4,
                        reason: "PDU without data carries a data digest",
                    };
                    let quoted = pdu_bytes.to_vec();
                    return Err(self.protocol_error(&e, &quoted).await);
                }
                Err(e) => {
                    let quoted = pdu_bytes.to_vec();
                    return Err(self.protocol_error(&e, &quoted).await);
                }
            }
            if let Some(f) = self.dead.borrow().clone() {
                return Err(f);
            }
        }
    }

    /// A complete PDU other than C2HData.
    fn on_pdu(self: &Rc<Self>, pdu: Pdu<'_>) -> Result<(), proto_nvme::Error> {
        match pdu.header {
            PduHeader::CapsuleResp(cqe) => self.on_completion(cqe),
            PduHeader::R2T(r) => self.on_r2t(r),
            PduHeader::C2HTermReq(t) => {
                self.kill(Failure::gone(format!(
                    "{} terminated the connection (C2HTermReq FES {:#x} FEI {:#x})",
                    self.peer, t.fes, t.fei
                )));
                Ok(())
            }
            _ => Err(proto_nvme::Error::InvalidHeaderField {
                offset: 0,
                reason: "unexpected PDU type from a controller",
            }),
        }
    }

    fn on_completion(&self, cqe: Cqe) -> Result<(), proto_nvme::Error> {
        let res = self.with_cmd(cqe.cid, |c| {
            if cqe.status.is_success() {
                if let Some(e) = c.data_error.take() {
                    return Err(Failure::io(e));
                }
                if c.dir == Dir::ToHost && c.moved != c.len {
                    return Err(Failure::io(format!(
                        "the controller completed a read with {} of {} bytes",
                        c.moved, c.len
                    )));
                }
            }
            Ok(cqe)
        });
        match res {
            Some(r) => {
                self.complete(cqe.cid, r);
                Ok(())
            }
            None => Err(proto_nvme::Error::InvalidHeaderField {
                offset: 20,
                reason: "completion for an unknown command identifier",
            }),
        }
    }

    fn on_r2t(self: &Rc<Self>, r: R2T) -> Result<(), proto_nvme::Error> {
        let bad = |reason| proto_nvme::Error::InvalidHeaderField { offset: 8, reason };
        let start = self.with_cmd(r.cccid, |c| {
            if c.dir != Dir::FromHost || c.in_capsule {
                return Err(bad("R2T for a command without data to send"));
            }
            if c.r2t_active {
                // MAXR2T is 0: another R2T is legal only once the controller has all the
                // data of the one being answered (its last PDU is leaving now).
                if c.next_r2t.is_some() {
                    return Err(bad("more R2Ts outstanding than MAXR2T allows"));
                }
                check_data_range(r.r2to, r.r2tl, c.len as u32, Some(c.moved as u32))?;
                c.next_r2t = Some(r);
                return Ok(false);
            }
            if c.buf.is_none() {
                return Err(bad("R2T for a command whose data is not here"));
            }
            check_data_range(r.r2to, r.r2tl, c.len as u32, Some(c.moved as u32))?;
            c.r2t_active = true;
            Ok(true)
        });
        match start {
            Some(Ok(true)) => {
                let q = self.clone();
                spawn_local(async move { q.answer_r2t(r).await });
                Ok(())
            }
            Some(Ok(false)) => Ok(()),
            Some(Err(e)) => Err(e),
            None => Err(bad("R2T for an unknown command identifier")),
        }
    }

    /// Sends the data an R2T asked for, in H2CData PDUs of at most MAXH2CDATA bytes, and
    /// the data of any R2T that arrives meanwhile.
    async fn answer_r2t(self: Rc<Self>, first: R2T) {
        let Some((mut buf, base)) = self
            .with_cmd(first.cccid, |c| c.buf.take().map(|b| (b, c.base)))
            .flatten()
        else {
            return;
        };
        let mut r = first;
        loop {
            let end = r.r2to + r.r2tl;
            // Where the next R2T must start: the controller may send it as soon as it has
            // the last byte of this one.
            self.with_cmd(r.cccid, |c| c.moved = end as usize);
            let mut off = r.r2to;
            while off < end {
                let n = (end - off).min(self.maxh2cdata);
                let h = H2CData {
                    cccid: r.cccid,
                    ttag: r.ttag,
                    datao: off,
                    datal: n,
                    last: off + n == end,
                };
                let hdr = self.enc.h2c_data_header(&h);
                let w = Window::new(buf, base + off as usize, n as usize);
                let (res, back) = self.send_pdu(&hdr, Some(w), None).await;
                buf = back.expect("send_pdu gives the window back");
                if let Err(f) = res {
                    self.kill(f);
                    self.r2t_done(r.cccid, buf);
                    return;
                }
                off += n;
            }
            let next = self.with_cmd(r.cccid, |c| c.next_r2t.take()).flatten();
            match next {
                Some(n) => r = n,
                None => break,
            }
        }
        self.r2t_done(r.cccid, buf);
    }

    /// Gives the command its buffer back after answering R2Ts. The controller may have
    /// completed the command already (it had all the data before this task resumed): its
    /// caller waits for the buffer, so it is woken now.
    fn r2t_done(&self, cid: u16, buf: IoBuf) {
        let waker = self
            .with_cmd(cid, |c| {
                c.buf = Some(buf);
                c.r2t_active = false;
                if c.done.is_some() {
                    c.waker.take()
                } else {
                    None
                }
            })
            .flatten();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// A C2HData PDU: its data goes into the command's buffer, from the staging buffer as
    /// far as it was received already and straight from the socket for the rest.
    async fn on_c2h_data(
        self: &Rc<Self>,
        rx: &mut Rx,
        frame: &Frame,
        h: C2HData,
    ) -> Result<(), Failure> {
        let eof = |e: std::io::Error| Failure::gone(format!("{}: {}", self.peer, recv_err(e)));
        rx.fill(&self.stream, frame.data_offset)
            .await
            .map_err(eof)?;
        let check = self.with_cmd(h.cccid, |c| {
            if c.dir != Dir::ToHost || c.buf.is_none() {
                return Err(proto_nvme::Error::InvalidHeaderField {
                    offset: 8,
                    reason: "C2HData for a command without data to receive",
                });
            }
            check_data_range(h.datao, h.datal, c.len as u32, Some(c.moved as u32))?;
            if h.success && c.moved + h.datal as usize != c.len {
                return Err(proto_nvme::Error::InvalidHeaderField {
                    offset: 1,
                    reason: "SUCCESS on C2HData that does not end the transfer",
                });
            }
            Ok(c.base)
        });
        let base = match check {
            Some(Ok(b)) => b,
            Some(Err(e)) => {
                let quoted = rx.buffered()[..frame.header_len].to_vec();
                return Err(self.protocol_error(&e, &quoted).await);
            }
            None => {
                let e = proto_nvme::Error::InvalidHeaderField {
                    offset: 8,
                    reason: "C2HData for an unknown command identifier",
                };
                let quoted = rx.buffered()[..frame.header_len].to_vec();
                return Err(self.protocol_error(&e, &quoted).await);
            }
        };
        if h.success && !self.sqflow_off {
            // Only allowed when SQ flow control was disabled in Connect (I/O queues).
            let e = proto_nvme::Error::InvalidHeaderField {
                offset: 1,
                reason: "C2HData SUCCESS without SQ flow control disabled",
            };
            let quoted = rx.buffered()[..frame.header_len].to_vec();
            return Err(self.protocol_error(&e, &quoted).await);
        }
        rx.consume(frame.data_offset);
        let mut buf = self
            .with_cmd(h.cccid, |c| c.buf.take())
            .flatten()
            .expect("checked above");
        let dst = base + h.datao as usize;
        let n = h.datal as usize;
        let (r, b) = rx.read_into(&self.stream, buf, dst, n).await;
        buf = b;
        r.map_err(|e| {
            Failure::gone(format!(
                "{}: receiving read data: {}",
                self.peer,
                recv_err(e)
            ))
        })?;
        let mut digest_error = None;
        if frame.data_digest {
            rx.fill(&self.stream, 4).await.map_err(eof)?;
            let got = u32::from_le_bytes(rx.buffered()[..4].try_into().expect("4 bytes"));
            rx.consume(4);
            let want = crc32c(&buf[dst..dst + n]);
            if got != want {
                digest_error = Some(format!(
                    "data digest error in C2HData from {} (received {got:#010x}, computed {want:#010x})",
                    self.peer
                ));
            }
        }
        if digest_error.is_some()
            && let Some(s) = self.shared.upgrade()
        {
            s.stats
                .digest_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let placed = self.with_cmd(h.cccid, |c| {
            c.buf = Some(buf);
            c.moved += n;
            if let Some(e) = digest_error {
                c.data_error.get_or_insert(e);
            }
        });
        if placed.is_none() {
            return Err(self
                .dead
                .borrow()
                .clone()
                .unwrap_or_else(|| Failure::gone("command vanished while receiving its data")));
        }
        if h.success {
            // The last data PDU stands for a successful completion (checked above: it ends
            // the transfer).
            let cqe = Cqe {
                sqid: self.qid,
                ..Cqe::new(h.cccid, Status::SUCCESS)
            };
            if let Err(e) = self.on_completion(cqe) {
                return Err(self.protocol_error(&e, &[]).await);
            }
        }
        Ok(())
    }

    /// Sends an H2CTermReq for `e` (quoting the offending PDU header) when the socket is
    /// free, and returns the failure that kills the queue.
    async fn protocol_error(&self, e: &proto_nvme::Error, offending: &[u8]) -> Failure {
        let f = Failure::io(format!("protocol error from {}: {e}", self.peer));
        let fes = e.fes().unwrap_or(Fes::InvalidHeaderField);
        let term = PduEncoder::term_req_for(true, e, offending)
            .unwrap_or_else(|| PduEncoder::term_req(true, fes as u16, e.fei(), offending));
        if !self.outbox.busy() {
            let send = self.outbox.send([Chunk::copy(&term)]);
            let _ = timeout(TERM_REQ_WAIT, send).await;
        }
        f
    }
}

impl Queue {
    /// Whether a command occupies a slot.
    fn busy(&self) -> bool {
        self.free.borrow().len() < self.slots.borrow().len()
    }

    /// Fails the commands past their deadline with `Timeout`, then kills the queue (the
    /// others fail with `Gone`). Returns whether any was late.
    fn expire(&self, now: Instant) -> bool {
        let late: Vec<(u16, String)> = self
            .slots
            .borrow()
            .iter()
            .flatten()
            .filter(|c| c.done.is_none() && c.deadline <= now)
            .map(|c| (c.cid, describe(&c.sqe, self.qid == 0)))
            .collect();
        let Some((_, first)) = late.first() else {
            return false;
        };
        let why = format!(
            "queue {} to {} reset: a {first} command timed out",
            self.qid, self.peer
        );
        if let Some(s) = self.shared.upgrade() {
            s.stats
                .timeouts
                .fetch_add(late.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        for (cid, what) in late {
            self.complete(
                cid,
                Err(Failure::new(
                    ErrorKind::Timeout,
                    format!(
                        "{what} on queue {} to {}: no completion within {:?}",
                        self.qid, self.peer, self.timeout
                    ),
                )),
            );
        }
        self.kill(Failure::gone(why));
        true
    }
}

/// Fails the queue's commands that outlive the command timeout. Parks while no command is
/// outstanding (an idle queue costs no wake-ups) and checks every tenth of the timeout
/// (10 ms to 1 s) otherwise; ends with the queue.
async fn watchdog(q: std::rc::Weak<Queue>) {
    loop {
        let busy = poll_fn(|cx| {
            let Some(q) = q.upgrade() else {
                return Poll::Ready(None);
            };
            if q.dead.borrow().is_some() {
                return Poll::Ready(None);
            }
            if q.busy() {
                return Poll::Ready(Some(q.timeout));
            }
            *q.watchdog.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        let Some(t) = busy else { return };
        reactor::sleep((t / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))).await;
        let Some(q) = q.upgrade() else { return };
        if q.expire(Instant::now()) {
            return;
        }
    }
}

/// Connects to the first address of `addrs` that answers.
async fn tcp_connect(
    addrs: &[SocketAddr],
    t: Duration,
) -> Result<(TcpStream, SocketAddr), Failure> {
    let mut errors = Vec::new();
    for &a in addrs {
        match timeout(t, TcpStream::connect_async(a)).await {
            Some(Ok(s)) => return Ok((s, a)),
            Some(Err(e)) => errors.push(format!("{a}: {e}")),
            None => errors.push(format!("{a}: no answer within {t:?}")),
        }
    }
    Err(Failure::gone(format!(
        "cannot connect: {}",
        errors.join("; ")
    )))
}

/// What ICResp granted.
struct IcResult {
    hdgst: bool,
    ddgst: bool,
    cpda: u8,
    maxh2cdata: u32,
}

/// Sends ICReq and reads ICResp (or a C2HTermReq).
async fn initialize(stream: &TcpStream, hdgst: bool, ddgst: bool) -> Result<IcResult, Failure> {
    let req = IcReq {
        pfv: 0,
        hpda: 0,
        hdgst,
        ddgst,
        maxr2t: 0,
    };
    let (r, _) = stream.send_all(req.encode().to_vec()).await;
    r.map_err(|e| Failure::gone(format!("sending ICReq: {e}")))?;
    let (r, ch) = stream.recv_exact(vec![0u8; 8], 0, 8).await;
    r.map_err(|e| Failure::gone(format!("receiving ICResp: {e}")))?;
    let plen = CommonHeader::parse(&ch)
        .map(|h| h.plen as usize)
        .unwrap_or(0);
    if !(8..=256).contains(&plen) {
        return Err(Failure::io(format!(
            "the controller answered ICReq with a PDU of {plen} bytes"
        )));
    }
    let mut pdu = ch;
    pdu.resize(plen, 0);
    let (r, pdu) = stream.recv_exact(pdu, 8, plen).await;
    r.map_err(|e| Failure::gone(format!("receiving ICResp: {e}")))?;
    let dec = PduDecoder::new(Role::Host);
    match dec.decode(&pdu) {
        Ok(Decoded::Pdu { pdu, .. }) => match pdu.header {
            PduHeader::IcResp(resp) => Ok(IcResult {
                hdgst: resp.hdgst,
                ddgst: resp.ddgst,
                cpda: resp.cpda,
                maxh2cdata: resp.maxh2cdata,
            }),
            PduHeader::C2HTermReq(t) => Err(Failure::gone(format!(
                "the controller refused the connection (C2HTermReq FES {:#x} FEI {:#x})",
                t.fes, t.fei
            ))),
            other => Err(Failure::io(format!(
                "the controller answered ICReq with {:?}",
                other.pdu_type()
            ))),
        },
        Ok(_) => Err(Failure::io("incomplete ICResp")),
        Err(e) => Err(Failure::io(format!("bad ICResp: {e}"))),
    }
}

/// A short name of a command for messages.
pub(crate) fn describe(sqe: &Sqe, admin: bool) -> String {
    use proto_nvme::{FABRICS_OPCODE, admin_opcode, fctype, io_opcode};
    if sqe.opcode == FABRICS_OPCODE {
        return match sqe.fctype() {
            fctype::CONNECT => "Connect".into(),
            fctype::PROPERTY_GET => "Property Get".into(),
            fctype::PROPERTY_SET => "Property Set".into(),
            t => format!("fabrics command {t:#04x}"),
        };
    }
    if admin {
        return match sqe.opcode {
            admin_opcode::IDENTIFY => "Identify".into(),
            admin_opcode::SET_FEATURES => "Set Features".into(),
            admin_opcode::GET_FEATURES => "Get Features".into(),
            admin_opcode::KEEP_ALIVE => "Keep Alive".into(),
            o => format!("admin opcode {o:#04x}"),
        };
    }
    match sqe.opcode {
        io_opcode::READ => "Read".into(),
        io_opcode::WRITE => "Write".into(),
        io_opcode::FLUSH => "Flush".into(),
        io_opcode::WRITE_ZEROES => "Write Zeroes".into(),
        io_opcode::DATASET_MANAGEMENT => "Dataset Management".into(),
        o => format!("opcode {o:#04x}"),
    }
}

/// The status of a completion as a message.
pub(crate) fn status_text(s: Status) -> String {
    format!("NVMe status {s}")
}
