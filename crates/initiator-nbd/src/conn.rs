//! One connection in the transmission phase: requests pipelined under cookies, a reader task
//! matching replies (simple and structured) to them, a watchdog failing the connection when a
//! request outlives its deadline, and the rules for dying.
//!
//! Everything here is reactor-local (`Rc`, `RefCell`): a connection is used only by the
//! reactor that opened it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use proto_nbd::{self as nbd, ChunkHeader, Command, Errno, Request, SimpleReply, consts::*};
use reactor::sync::{OneshotSender, oneshot};
use reactor::{Chunk, IoBuf, Outbox, TcpStream};

use super::handshake::{ExportInfo, disconnect_request};
use super::{Inner, detach, err};
use blockdev::{BlockError, ErrorKind, Extent, ExtentState, IoKind, Result};

/// Receive staging buffer: headers and small payloads are parsed from it; read data beyond
/// what it already holds goes straight into the caller's buffer.
const RX_BUF: usize = 64 * 1024;
/// Largest error chunk accepted: the error, a message of at most 4 KiB (the protocol's string
/// limit) and an offset, with room to spare.
const MAX_ERROR_CHUNK: u32 = 16 * 1024;
/// Largest block-status chunk accepted (131,071 extents); a server describing a range in more
/// pieces than that is cut off rather than buffered without bound.
const MAX_STATUS_CHUNK: u32 = 4 + 8 * (128 * 1024 - 1);

/// A command for a connection. Ranges are checked and within one command's limits.
#[derive(Debug)]
pub(crate) enum Cmd {
    Read {
        offset: u64,
        buf: IoBuf,
    },
    Write {
        offset: u64,
        buf: IoBuf,
        fua: bool,
    },
    Flush,
    Trim {
        offset: u64,
        len: u64,
    },
    Zeroes {
        offset: u64,
        len: u64,
        no_hole: bool,
        fast: bool,
        fua: bool,
    },
    BlockStatus {
        offset: u64,
        len: u64,
    },
    /// Only make sure a connection is up (`reset`).
    Connect,
}

impl Cmd {
    /// The operation, offset and length, for errors.
    pub(crate) fn what(&self) -> (IoKind, u64, u64) {
        match self {
            Cmd::Read { offset, buf } => (IoKind::Read, *offset, buf.len() as u64),
            Cmd::Write { offset, buf, .. } => (IoKind::Write, *offset, buf.len() as u64),
            Cmd::Flush => (IoKind::Flush, 0, 0),
            Cmd::Trim { offset, len } => (IoKind::Unmap, *offset, *len),
            Cmd::Zeroes { offset, len, .. } => (IoKind::WriteZeroes, *offset, *len),
            Cmd::BlockStatus { offset, len } => (IoKind::BlockStatus, *offset, *len),
            Cmd::Connect => (IoKind::Reset, 0, 0),
        }
    }
}

/// What a completed command gives back.
#[derive(Debug)]
pub(crate) enum Done {
    /// The read data, or the written buffer returned.
    Buf(IoBuf),
    /// Success without data.
    Unit,
    /// Block status.
    Extents(Vec<Extent>),
}

/// A request sent and not yet answered in full.
struct Pending {
    command: u16,
    op: IoKind,
    offset: u64,
    len: u64,
    /// A fast-zero request: `ENOTSUP` means "not fast".
    fast_zero: bool,
    /// Read destination; out of the map only while the reader receives into it.
    buf: Option<IoBuf>,
    /// Bytes of a read described by data and hole chunks so far.
    covered: u64,
    /// The first error chunk.
    error: Option<BlockError>,
    extents: Option<Vec<Extent>>,
    deadline: Instant,
    tx: OneshotSender<Result<Done>>,
}

impl Pending {
    fn finish(self, r: Result<Done>) {
        self.tx.send(r);
    }
}

/// Why the reader stopped.
enum ReadEnd {
    /// End of stream or a socket error.
    Closed(String),
    /// The server broke the protocol: the connection cannot be trusted.
    Protocol(String),
}

/// What a reply chunk is checked against: its request (whose range was checked not to
/// overflow before it was sent).
#[derive(Clone, Copy)]
struct Req {
    command: u16,
    offset: u64,
    len: u64,
}

impl Req {
    /// The end of the request's range.
    fn end(&self) -> u64 {
        self.offset + self.len
    }
}

fn proto<T>(msg: impl Into<String>) -> std::result::Result<T, ReadEnd> {
    Err(ReadEnd::Protocol(msg.into()))
}

fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// The block-device error kind of an NBD error value ("Error values").
///
/// The protocol asks clients to treat values it does not define like `EINVAL`; here they are
/// `Io` instead: our requests are validated before they are sent, so an unexplained error is
/// the server's trouble, and a nexus must retire the replica rather than fail the
/// application's request as if it were malformed (it passes `InvalidArgument` through).
pub(crate) fn errno_kind(errno: u32, fast_zero: bool) -> ErrorKind {
    match errno {
        // EPERM, and EROFS (not a protocol value, but servers pass it through).
        1 | 30 => ErrorKind::ReadOnly,
        5 | 12 => ErrorKind::Io,
        22 | 75 => ErrorKind::InvalidArgument,
        28 => ErrorKind::NoSpace,
        95 if fast_zero => ErrorKind::NotFast,
        95 => ErrorKind::Unsupported,
        108 => ErrorKind::Gone,
        _ => ErrorKind::Io,
    }
}

fn errno_name(errno: u32) -> String {
    match Errno::from_wire(errno) {
        Some(e) => e.to_string(),
        None => format!("error {errno}"),
    }
}

/// `base:allocation` descriptors as extents from `offset`, clipped to `len` bytes (a server
/// may describe more than was asked), adjacent equal states merged. `HOLE` without `ZERO`
/// reads as undefined data, so it counts as data.
fn to_extents(
    offset: u64,
    len: u64,
    descriptors: &[u8],
) -> std::result::Result<Vec<Extent>, ReadEnd> {
    let end = offset + len;
    let mut out: Vec<Extent> = Vec::new();
    let mut pos = offset;
    for d in descriptors.chunks_exact(8) {
        let n = u64::from(be_u32(d, 0));
        let flags = be_u32(d, 4);
        if n == 0 {
            return proto("block status descriptor of length 0");
        }
        if pos >= end {
            break;
        }
        let n = n.min(end - pos);
        let state = match (flags & STATE_HOLE != 0, flags & STATE_ZERO != 0) {
            (true, true) => ExtentState::Hole,
            (false, true) => ExtentState::Zero,
            _ => ExtentState::Data,
        };
        match out.last_mut() {
            Some(last) if last.state == state => last.len += n,
            _ => out.push(Extent {
                offset: pos,
                len: n,
                state,
            }),
        }
        pos += n;
    }
    Ok(out)
}

/// The reply stream's receive side: the reactor's buffered reader (headers parsed from its
/// staging buffer, read data received straight into the caller's buffer).
type Rx = reactor::BufReader;

impl From<std::io::Error> for ReadEnd {
    fn from(e: std::io::Error) -> ReadEnd {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ReadEnd::Closed("the server closed the connection".into())
        } else {
            ReadEnd::Closed(format!("receiving: {e}"))
        }
    }
}

/// A transmission-phase connection owned by one reactor.
pub(crate) struct Conn {
    pub(crate) id: u64,
    /// The device's reset epoch when this connection was made; an older one is not used.
    pub(crate) epoch: u64,
    sock: Rc<TcpStream>,
    pub(crate) info: ExportInfo,
    inner: Arc<Inner>,
    inflight: RefCell<HashMap<u64, Pending>>,
    /// Every request goes through here: requests issued together leave in one send.
    outbox: Outbox,
    dead: RefCell<Option<(ErrorKind, String)>>,
    /// The server said `ESHUTDOWN`: no new requests; a soft disconnect was sent.
    retired: Cell<bool>,
    next_cookie: Cell<u64>,
    /// The watchdog parks here while nothing is in flight.
    watchdog: RefCell<Option<Waker>>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.id)
            .field("inflight", &self.inflight.borrow().len())
            .field("dead", &self.dead.borrow())
            .finish()
    }
}

/// Where a request's future is between queueing and the end of its send, for when it is
/// dropped there (a caller's own timeout or select).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Not queued for sending yet: the request is forgotten, the server never saw it.
    Queued,
    /// In the outbox: it goes out whole (the outbox finishes a batch whose sender stopped
    /// waiting) and its reply will come and be dropped; only if the send failed must the
    /// connection go.
    Sending,
    /// On the wire: its reply will come and be dropped.
    Sent,
}

struct SendGuard<'a> {
    conn: &'a Conn,
    cookie: u64,
    stage: Stage,
}

impl Drop for SendGuard<'_> {
    fn drop(&mut self) {
        match self.stage {
            Stage::Queued => {
                self.conn.take_pending(self.cookie);
            }
            Stage::Sending if self.conn.outbox.failed() => self.conn.fail(
                ErrorKind::Gone,
                "a request was abandoned and its send failed; connection closed".into(),
            ),
            Stage::Sending | Stage::Sent => {}
        }
    }
}

impl Conn {
    /// Takes over a negotiated socket and starts its reader and watchdog.
    pub(crate) fn start(
        inner: Arc<Inner>,
        sock: TcpStream,
        info: ExportInfo,
        id: u64,
        epoch: u64,
    ) -> Rc<Conn> {
        let sock = Rc::new(sock);
        let conn = Rc::new(Conn {
            id,
            epoch,
            sock: sock.clone(),
            info,
            inner,
            inflight: RefCell::new(HashMap::new()),
            outbox: Outbox::eager(sock),
            dead: RefCell::new(None),
            retired: Cell::new(false),
            next_cookie: Cell::new(1),
            watchdog: RefCell::new(None),
        });
        reactor::spawn_local(conn.clone().reader());
        reactor::spawn_local(watchdog(Rc::downgrade(&conn)));
        conn
    }

    /// Whether new requests may use this connection.
    pub(crate) fn usable(&self) -> bool {
        self.dead.borrow().is_none() && !self.retired.get() && self.epoch == self.inner.epoch()
    }

    fn death(&self, op: IoKind, offset: u64, len: u64) -> Option<BlockError> {
        self.dead
            .borrow()
            .as_ref()
            .map(|(k, m)| err(*k, op, offset, len, m.clone()))
    }

    /// Sends `cmd` and waits for its reply. Fails with the connection's error if it dies
    /// first (the watchdog kills it when a request outlives the command timeout).
    pub(crate) async fn run(&self, cmd: Cmd) -> Result<Done> {
        let (op, offset, len) = cmd.what();
        let (command, flags, payload, dest, fast_zero) = match cmd {
            Cmd::Read { buf, .. } => (CMD_READ, 0, None, Some(buf), false),
            Cmd::Write { buf, fua, .. } => (
                CMD_WRITE,
                if fua { CMD_FLAG_FUA } else { 0 },
                Some(buf),
                None,
                false,
            ),
            Cmd::Flush => (CMD_FLUSH, 0, None, None, false),
            Cmd::Trim { .. } => (CMD_TRIM, 0, None, None, false),
            Cmd::Zeroes {
                no_hole, fast, fua, ..
            } => {
                let mut f = 0;
                if no_hole {
                    f |= CMD_FLAG_NO_HOLE;
                }
                if fast {
                    f |= CMD_FLAG_FAST_ZERO;
                }
                if fua {
                    f |= CMD_FLAG_FUA;
                }
                (CMD_WRITE_ZEROES, f, None, None, fast)
            }
            Cmd::BlockStatus { .. } => (CMD_BLOCK_STATUS, 0, None, None, false),
            Cmd::Connect => return Ok(Done::Unit),
        };
        if let Some(e) = self.death(op, offset, len) {
            return Err(e);
        }
        let length = u32::try_from(len).map_err(|_| {
            err(
                ErrorKind::InvalidArgument,
                op,
                offset,
                len,
                "too long for NBD",
            )
        })?;
        let cookie = self.next_cookie.get();
        self.next_cookie.set(cookie.wrapping_add(1));
        let (tx, rx) = oneshot();
        let was_idle = {
            let mut m = self.inflight.borrow_mut();
            let idle = m.is_empty();
            m.insert(
                cookie,
                Pending {
                    command,
                    op,
                    offset,
                    len,
                    fast_zero,
                    buf: dest,
                    covered: 0,
                    error: None,
                    extents: None,
                    deadline: Instant::now() + self.inner.spec.timeout,
                    tx,
                },
            );
            idle
        };
        if was_idle && let Some(w) = self.watchdog.borrow_mut().take() {
            w.wake();
        }
        let header = Request {
            flags,
            command: Command::from_wire(command),
            cookie,
            offset,
            length,
        }
        .encode();
        let mut written = None;
        let mut guard = SendGuard {
            conn: self,
            cookie,
            stage: Stage::Queued,
        };
        {
            if self.dead.borrow().is_none() {
                guard.stage = Stage::Sending;
                let hdr = Chunk::copy(&header);
                let (r, back) = match payload {
                    Some(buf) => {
                        let len = buf.len();
                        let data = Chunk::Kept { buf, start: 0, len };
                        self.outbox.send_keep([hdr, data]).await
                    }
                    None => self.outbox.send_keep([hdr]).await,
                };
                written = back;
                guard.stage = Stage::Sent;
                if let Err(e) = r {
                    self.fail(
                        ErrorKind::Gone,
                        format!("sending to {}: {e}", self.inner.peer),
                    );
                }
            }
        }
        guard.stage = Stage::Sent;
        drop(guard);
        let reply = match rx.await {
            Some(r) => r,
            None => Err(self
                .death(op, offset, len)
                .unwrap_or_else(|| err(ErrorKind::Gone, op, offset, len, "request dropped"))),
        }?;
        Ok(match (reply, written) {
            (Done::Unit, Some(b)) => Done::Buf(b),
            (r, _) => r,
        })
    }

    /// Kills the connection: every request in flight fails with `kind`, the socket is shut
    /// down (the reader then ends), and the device forgets it. Idempotent.
    pub(crate) fn fail(&self, kind: ErrorKind, msg: String) {
        if self.dead.borrow().is_some() {
            return;
        }
        *self.dead.borrow_mut() = Some((kind, msg.clone()));
        self.sock.shutdown();
        self.inner.forget_socket(self.id);
        detach(self.inner.id, self.id);
        let pending: Vec<Pending> = self.inflight.borrow_mut().drain().map(|(_, p)| p).collect();
        for p in pending {
            let e = err(kind, p.op, p.offset, p.len, msg.clone());
            p.finish(Err(e));
        }
        if let Some(w) = self.watchdog.borrow_mut().take() {
            w.wake();
        }
    }

    /// A soft disconnect (`NBD_CMD_DISC`, bounded to a second), then the connection is closed.
    pub(crate) async fn disconnect(self: Rc<Self>, why: &str) {
        let _ = reactor::sync::timeout(Duration::from_secs(1), async {
            if self.dead.borrow().is_none() {
                let disc = Chunk::copy(&disconnect_request());
                let _ = self.outbox.send([disc]).await;
            }
        })
        .await;
        self.fail(ErrorKind::Gone, why.to_string());
    }

    /// The server is shutting down (`ESHUTDOWN`): take no new requests, and initiate a soft
    /// disconnect as the protocol requires. Requests in flight still get their replies; the
    /// server then closes the connection.
    fn retire(self: &Rc<Self>) {
        if self.retired.replace(true) {
            return;
        }
        detach(self.inner.id, self.id);
        let conn = self.clone();
        reactor::spawn_local(async move {
            let _ = reactor::sync::timeout(Duration::from_secs(1), async {
                if conn.dead.borrow().is_none() {
                    let disc = Chunk::copy(&disconnect_request());
                    let _ = conn.outbox.send([disc]).await;
                }
            })
            .await;
        });
    }

    fn take_pending(&self, cookie: u64) -> Option<Pending> {
        self.inflight.borrow_mut().remove(&cookie)
    }

    fn errno_error(&self, p: &Pending, errno: u32, msg: &str) -> BlockError {
        let mut text = format!("{} replied {}", self.inner.peer, errno_name(errno));
        if !msg.is_empty() {
            text.push_str(": ");
            text.push_str(msg);
        }
        err(errno_kind(errno, p.fast_zero), p.op, p.offset, p.len, text)
    }

    async fn reader(self: Rc<Self>) {
        let mut rx = Rx::new(RX_BUF);
        let end = loop {
            if let Err(e) = self.read_one(&mut rx).await {
                break e;
            }
        };
        let (kind, msg) = match end {
            _ if self.inner.is_closed() => (ErrorKind::Gone, "device closed".to_string()),
            _ if self.epoch != self.inner.epoch() => {
                (ErrorKind::Gone, "connection reset".to_string())
            }
            ReadEnd::Closed(m) => (
                ErrorKind::Gone,
                format!("connection to {} lost: {m}", self.inner.peer),
            ),
            ReadEnd::Protocol(m) => (
                ErrorKind::Io,
                format!(
                    "protocol error from {}: {m}; connection closed",
                    self.inner.peer
                ),
            ),
        };
        self.fail(kind, msg);
    }

    async fn read_one(self: &Rc<Self>, rx: &mut Rx) -> std::result::Result<(), ReadEnd> {
        rx.fill(&self.sock, 4).await?;
        let magic = be_u32(rx.buffered(), 0);
        if magic == SIMPLE_REPLY_MAGIC {
            rx.fill(&self.sock, nbd::SIMPLE_REPLY_LEN).await?;
            let r = SimpleReply::parse(rx.take(nbd::SIMPLE_REPLY_LEN))
                .map_err(|e| ReadEnd::Protocol(e.to_string()))?;
            self.on_simple(r, rx).await
        } else if magic == STRUCTURED_REPLY_MAGIC && self.info.structured {
            rx.fill(&self.sock, nbd::CHUNK_HEADER_LEN).await?;
            let h = ChunkHeader::parse(rx.take(nbd::CHUNK_HEADER_LEN))
                .map_err(|e| ReadEnd::Protocol(e.to_string()))?;
            self.on_chunk(h, rx).await
        } else {
            proto(format!("bad reply magic {magic:#010x}"))
        }
    }

    async fn on_simple(
        self: &Rc<Self>,
        r: SimpleReply,
        rx: &mut Rx,
    ) -> std::result::Result<(), ReadEnd> {
        let Some((command, len)) = self
            .inflight
            .borrow()
            .get(&r.cookie)
            .map(|p| (p.command, p.len))
        else {
            return proto(format!("reply to unknown handle {:#x}", r.cookie));
        };
        if r.error != 0 {
            if let Some(p) = self.take_pending(r.cookie) {
                let e = self.errno_error(&p, r.error, "");
                p.finish(Err(e));
            }
            if r.error == Errno::Eshutdown.to_wire() {
                self.retire();
            }
            return Ok(());
        }
        match command {
            CMD_READ => {
                if self.info.structured {
                    return proto(
                        "simple reply to a read after structured replies were negotiated",
                    );
                }
                let buf = self
                    .inflight
                    .borrow_mut()
                    .get_mut(&r.cookie)
                    .and_then(|p| p.buf.take());
                match buf {
                    Some(buf) => {
                        let (res, buf) = rx.read_into(&self.sock, buf, 0, len as usize).await;
                        res?;
                        if let Some(p) = self.take_pending(r.cookie) {
                            p.finish(Ok(Done::Buf(buf)));
                        }
                    }
                    None => rx.skip(&self.sock, len).await?,
                }
            }
            CMD_BLOCK_STATUS => return proto("simple reply to NBD_CMD_BLOCK_STATUS"),
            _ => {
                if let Some(p) = self.take_pending(r.cookie) {
                    p.finish(Ok(Done::Unit));
                }
            }
        }
        Ok(())
    }

    async fn on_chunk(
        self: &Rc<Self>,
        h: ChunkHeader,
        rx: &mut Rx,
    ) -> std::result::Result<(), ReadEnd> {
        let Some(req) = self.inflight.borrow().get(&h.cookie).map(|p| Req {
            command: p.command,
            offset: p.offset,
            len: p.len,
        }) else {
            return proto(format!("reply chunk for unknown handle {:#x}", h.cookie));
        };
        match h.reply_type {
            REPLY_TYPE_NONE => {
                if h.length != 0 {
                    return proto("NBD_REPLY_TYPE_NONE with a payload");
                }
                if !h.is_done() {
                    return proto("NBD_REPLY_TYPE_NONE without NBD_REPLY_FLAG_DONE");
                }
            }
            REPLY_TYPE_OFFSET_DATA | REPLY_TYPE_OFFSET_HOLE if req.command != CMD_READ => {
                let what = if h.reply_type == REPLY_TYPE_OFFSET_DATA {
                    "data"
                } else {
                    "hole"
                };
                return proto(format!(
                    "{what} chunk in reply to a command that is not a read"
                ));
            }
            REPLY_TYPE_OFFSET_DATA => self.on_data(&h, req, rx).await?,
            REPLY_TYPE_OFFSET_HOLE => self.on_hole(&h, req, rx).await?,
            REPLY_TYPE_BLOCK_STATUS => self.on_block_status(&h, req, rx).await?,
            t if t & REPLY_TYPE_FLAG_ERROR != 0 => self.on_error(&h, req, rx).await?,
            t => return proto(format!("unknown reply chunk type {t}")),
        }
        if h.is_done() {
            self.complete(h.cookie)?;
        }
        Ok(())
    }

    /// An `OFFSET_DATA` chunk: its data goes straight into the read's buffer.
    async fn on_data(
        &self,
        h: &ChunkHeader,
        req: Req,
        rx: &mut Rx,
    ) -> std::result::Result<(), ReadEnd> {
        let (Req { offset, len, .. }, end, sock) = (req, req.end(), &self.sock);
        if h.length < 9 {
            return proto(format!("data chunk of {} bytes", h.length));
        }
        let n = u64::from(h.length - 8);
        rx.fill(sock, 8).await?;
        let at = be_u64(rx.take(8), 0);
        if at < offset || at.checked_add(n).is_none_or(|e| e > end) {
            return proto(format!(
                "data chunk of {n} bytes at {at} outside the request ({len} bytes at {offset})"
            ));
        }
        let buf = self
            .inflight
            .borrow_mut()
            .get_mut(&h.cookie)
            .and_then(|p| p.buf.take());
        match buf {
            Some(buf) => {
                let rel = (at - offset) as usize;
                let (res, buf) = rx.read_into(sock, buf, rel, n as usize).await;
                res?;
                if let Some(p) = self.inflight.borrow_mut().get_mut(&h.cookie) {
                    p.buf = Some(buf);
                }
            }
            None => rx.skip(sock, n).await?,
        }
        self.cover(h.cookie, n)?;
        Ok(())
    }

    /// An `OFFSET_HOLE` chunk: that part of the read's buffer is zeroed.
    async fn on_hole(
        &self,
        h: &ChunkHeader,
        req: Req,
        rx: &mut Rx,
    ) -> std::result::Result<(), ReadEnd> {
        let (Req { offset, len, .. }, end, sock) = (req, req.end(), &self.sock);
        if h.length != 12 {
            return proto(format!("hole chunk of {} bytes", h.length));
        }
        rx.fill(sock, 12).await?;
        let d = rx.take(12);
        let (at, n) = (be_u64(d, 0), u64::from(be_u32(d, 8)));
        if n == 0 {
            return proto("hole chunk of length 0");
        }
        if at < offset || at + n > end {
            return proto(format!(
                "hole of {n} bytes at {at} outside the request ({len} bytes at {offset})"
            ));
        }
        if let Some(b) = self
            .inflight
            .borrow_mut()
            .get_mut(&h.cookie)
            .and_then(|p| p.buf.as_mut())
        {
            let rel = (at - offset) as usize;
            b[rel..rel + n as usize].fill(0);
        }
        self.cover(h.cookie, n)?;
        Ok(())
    }

    /// A `BLOCK_STATUS` chunk: the extents of `base:allocation`.
    async fn on_block_status(
        &self,
        h: &ChunkHeader,
        req: Req,
        rx: &mut Rx,
    ) -> std::result::Result<(), ReadEnd> {
        if req.command != CMD_BLOCK_STATUS {
            return proto("block status chunk in reply to another command");
        }
        if h.length < 12 || !(h.length - 4).is_multiple_of(8) {
            return proto(format!("block status chunk of {} bytes", h.length));
        }
        if h.length > MAX_STATUS_CHUNK {
            return proto(format!(
                "block status chunk of {} bytes (limit {MAX_STATUS_CHUNK})",
                h.length
            ));
        }
        let d = rx.read_vec(&self.sock, h.length as usize).await?;
        let context = be_u32(&d, 0);
        if Some(context) != self.info.allocation_context {
            return proto(format!(
                "block status for unknown metadata context {context}"
            ));
        }
        let extents = to_extents(req.offset, req.len, &d[4..])?;
        if let Some(p) = self.inflight.borrow_mut().get_mut(&h.cookie) {
            if p.extents.is_some() {
                return proto("two block status chunks for one metadata context");
            }
            p.extents = Some(extents);
        }
        Ok(())
    }

    /// An error chunk: the request fails with the first error its reply carries.
    async fn on_error(
        self: &Rc<Self>,
        h: &ChunkHeader,
        req: Req,
        rx: &mut Rx,
    ) -> std::result::Result<(), ReadEnd> {
        let (Req { offset, len, .. }, end) = (req, req.end());
        if h.length < 6 || h.length > MAX_ERROR_CHUNK {
            return proto(format!("error chunk of {} bytes", h.length));
        }
        let d = rx.read_vec(&self.sock, h.length as usize).await?;
        let errno = be_u32(&d, 0);
        let mlen = usize::from(be_u16(&d, 4));
        if 6 + mlen > d.len() {
            return proto("error message longer than its chunk");
        }
        if errno == 0 {
            return proto("error chunk with error value 0");
        }
        let msg = String::from_utf8_lossy(&d[6..6 + mlen]).into_owned();
        if h.reply_type == REPLY_TYPE_ERROR_OFFSET {
            if d.len() != 6 + mlen + 8 {
                return proto("NBD_REPLY_TYPE_ERROR_OFFSET of the wrong length");
            }
            let at = be_u64(&d, 6 + mlen);
            if at < offset || at >= end {
                return proto(format!(
                    "error offset {at} outside the request ({len} bytes at {offset})"
                ));
            }
        }
        // Unknown error types (bit 15) still fail the request ("Structured reply
        // types"); the first error of a reply is the one reported.
        let e = self
            .inflight
            .borrow()
            .get(&h.cookie)
            .map(|p| self.errno_error(p, errno, &msg));
        if let Some(p) = self.inflight.borrow_mut().get_mut(&h.cookie)
            && p.error.is_none()
        {
            p.error = e;
        }
        if errno == Errno::Eshutdown.to_wire() {
            self.retire();
        }
        Ok(())
    }

    /// Counts `n` more bytes of a read as described.
    fn cover(&self, cookie: u64, n: u64) -> std::result::Result<(), ReadEnd> {
        if let Some(p) = self.inflight.borrow_mut().get_mut(&cookie) {
            p.covered += n;
            if p.covered > p.len {
                return proto("read reply chunks overlap");
            }
        }
        Ok(())
    }

    /// The last chunk of a structured reply arrived: answer the request.
    fn complete(&self, cookie: u64) -> std::result::Result<(), ReadEnd> {
        let Some(mut p) = self.take_pending(cookie) else {
            return Ok(());
        };
        if let Some(e) = p.error.take() {
            p.finish(Err(e));
            return Ok(());
        }
        let bad = |p: Pending, why: String| {
            let e = err(ErrorKind::Io, p.op, p.offset, p.len, why.clone());
            p.finish(Err(e));
            proto(why)
        };
        match p.command {
            CMD_READ if p.covered != p.len => {
                let why = format!("read reply covers {} of {} bytes", p.covered, p.len);
                bad(p, why)
            }
            CMD_READ => match p.buf.take() {
                Some(b) => {
                    p.finish(Ok(Done::Buf(b)));
                    Ok(())
                }
                None => bad(p, "read data went missing".into()),
            },
            CMD_BLOCK_STATUS => match p.extents.take() {
                Some(x) if !x.is_empty() => {
                    p.finish(Ok(Done::Extents(x)));
                    Ok(())
                }
                _ => bad(p, "block status reply without extents".into()),
            },
            _ => {
                p.finish(Ok(Done::Unit));
                Ok(())
            }
        }
    }
}

/// Fails the connection once a request in flight is past its deadline. Parks while nothing is
/// in flight, so an idle connection costs no wake-ups; ticks at a quarter of the timeout
/// (10 ms to 1 s) otherwise.
async fn watchdog(conn: Weak<Conn>) {
    loop {
        let tick = {
            let Some(c) = conn.upgrade() else { return };
            let idle = poll_fn(|cx| {
                if c.dead.borrow().is_some() {
                    return Poll::Ready(false);
                }
                if c.inflight.borrow().is_empty() {
                    *c.watchdog.borrow_mut() = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                Poll::Ready(true)
            });
            if !idle.await {
                return;
            }
            (c.inner.spec.timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
        };
        reactor::sleep(tick).await;
        let Some(c) = conn.upgrade() else { return };
        let now = Instant::now();
        let late = c.inflight.borrow().values().any(|p| p.deadline <= now);
        if late {
            let t = c.inner.spec.timeout;
            c.fail(
                ErrorKind::Timeout,
                format!(
                    "no reply from {} within {} ms; connection closed",
                    c.inner.peer,
                    t.as_millis()
                ),
            );
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_map_to_kinds() {
        assert_eq!(errno_kind(1, false), ErrorKind::ReadOnly);
        assert_eq!(errno_kind(30, false), ErrorKind::ReadOnly);
        assert_eq!(errno_kind(5, false), ErrorKind::Io);
        assert_eq!(errno_kind(28, false), ErrorKind::NoSpace);
        assert_eq!(errno_kind(22, false), ErrorKind::InvalidArgument);
        assert_eq!(errno_kind(95, true), ErrorKind::NotFast);
        assert_eq!(errno_kind(95, false), ErrorKind::Unsupported);
        assert_eq!(errno_kind(108, false), ErrorKind::Gone);
        assert_eq!(errno_kind(75, false), ErrorKind::InvalidArgument);
        assert_eq!(errno_kind(9999, false), ErrorKind::Io);
    }

    fn descs(v: &[(u32, u32)]) -> Vec<u8> {
        v.iter()
            .flat_map(|&(l, f)| [l.to_be_bytes(), f.to_be_bytes()].concat())
            .collect()
    }

    #[test]
    fn extents_are_clipped_and_merged() {
        let d = descs(&[
            (4096, 0),
            (4096, 0),
            (8192, 3),
            (4096, 2),
            (4096, 1),
            (1 << 20, 3),
        ]);
        let x = to_extents(4096, 6 * 4096, &d).ok().unwrap();
        let want = [
            (4096, 8192, ExtentState::Data),
            (12288, 8192, ExtentState::Hole),
            (20480, 4096, ExtentState::Zero),
            // HOLE without ZERO reads undefined: data.
            (24576, 4096, ExtentState::Data),
        ];
        assert_eq!(x.len(), want.len());
        for (e, (o, l, s)) in x.iter().zip(want) {
            assert_eq!((e.offset, e.len, e.state), (o, l, s));
        }
        assert!(to_extents(0, 4096, &descs(&[(0, 0)])).is_err());
    }
}
