//! The transmission phase of one connection.

use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use blockdev::{BlockError, ExtentState, WriteFlags, ZeroFlags};
use proto_nbd::{self as nbd, Command, Errno, Request, consts::*};
use reactor::sync::LocalSemaphore;
use reactor::{BufReader, Chunk, Connection, IdleWatch, IoBuf, Outbox, TcpStream, spawn_now};

use crate::errors::errno_of;
use crate::negotiate::{BASE_ALLOCATION_ID, Negotiated, negotiate};
use crate::{Export, MAX_EXTENTS, MAX_IN_FLIGHT, MAX_IN_FLIGHT_BYTES, MAX_PAYLOAD, NbdServer};

/// Size of the receive buffer request headers are parsed from.
const RECV_BUF: usize = 64 * 1024;
/// Unit of the in-flight byte budget.
const BYTE_UNIT: usize = 64 * 1024;

struct Conn {
    stream: Rc<TcpStream>,
    export: Arc<Export>,
    structured: bool,
    base_allocation: bool,
    /// Every reply goes through here: replies ready together leave in one send.
    outbox: Outbox,
    broken: Cell<bool>,
    /// Requests seen and in flight, for the listener's idle limit.
    activity: Rc<IdleWatch>,
}

/// A reply to send: header bytes and optional data.
enum Reply {
    Done,
    ReadData(IoBuf),
    Extents(Vec<(u32, u32)>),
}

impl Conn {
    async fn reply(&self, req: &Request, r: Result<Reply, Errno>) {
        // Queued now; only the wait for the send is part of this future, which every
        // request's task carries.
        let Some(sending) = self.queue_reply(req, r) else {
            return;
        };
        if sending.await.is_err() {
            self.fail();
        }
    }

    /// Queues a request's reply on the outbox; `None` if the connection is broken (or
    /// breaks here).
    fn queue_reply(
        &self,
        req: &Request,
        r: Result<Reply, Errno>,
    ) -> Option<impl Future<Output = io::Result<()>> + '_> {
        let cookie = req.cookie;
        if self.broken.get() {
            return None;
        }
        let mut out: [Option<Chunk>; 2] = [None, None];
        match r {
            Err(e) if self.structured && req.command == Command::Read => {
                // Structured replies were negotiated: a read's error must be a chunk.
                let mut v = Vec::with_capacity(64);
                nbd::encode_error_chunk(&mut v, REPLY_FLAG_DONE, cookie, e.to_wire(), "");
                out[0] = Some(Chunk::copy(&v));
            }
            Err(e) => out[0] = Some(Chunk::copy(&nbd::simple_reply(e.to_wire(), cookie))),
            Ok(Reply::Done) => out[0] = Some(Chunk::copy(&nbd::simple_reply(0, cookie))),
            Ok(Reply::ReadData(data)) => {
                if self.structured {
                    match nbd::offset_data_header(
                        REPLY_FLAG_DONE,
                        cookie,
                        req.offset,
                        data.len() as u32,
                    ) {
                        Ok(h) => out[0] = Some(Chunk::copy(&h)),
                        Err(_) => {
                            self.fail();
                            return None;
                        }
                    }
                } else {
                    out[0] = Some(Chunk::copy(&nbd::simple_reply(0, cookie)));
                }
                out[1] = Some(Chunk::Buf(data));
            }
            Ok(Reply::Extents(ext)) => {
                let mut v = Vec::with_capacity(32 + ext.len() * 8);
                match nbd::encode_block_status(
                    &mut v,
                    REPLY_FLAG_DONE,
                    cookie,
                    BASE_ALLOCATION_ID,
                    &ext,
                ) {
                    Ok(()) => out[0] = Some(Chunk::Vec(v)),
                    Err(_) => {
                        self.fail();
                        return None;
                    }
                }
            }
        }
        Some(self.outbox.send(out.into_iter().flatten()))
    }

    /// The connection cannot go on: no more replies, the socket is shut down.
    fn fail(&self) {
        self.broken.set(true);
        self.stream.shutdown();
    }
}

/// Serves one accepted connection until the client disconnects or misbehaves. A client that
/// has not finished negotiating within the listener's `negotiate_timeout` is closed, and so
/// is a negotiated one idle for its `idle_timeout`.
pub(crate) async fn serve_connection(server: &NbdServer, c: Connection) {
    let Connection {
        stream,
        shutdown,
        limits,
        ..
    } = c;
    let handshake = reactor::sync::timeout(limits.negotiate_timeout, negotiate(server, &stream));
    let neg = match handshake.await {
        Some(Ok(Some(n))) => n,
        Some(Ok(None) | Err(_)) => return,
        None => {
            // Out of time. The handshake's receive is being cancelled; shutting the socket
            // down ends the connection now even if the kernel still holds that receive (the
            // descriptor's close alone would wait for it).
            shutdown.shutdown();
            return;
        }
    };
    let Negotiated {
        export,
        structured,
        base_allocation,
    } = neg;
    export.connections.fetch_add(1, Ordering::Relaxed);
    let stream = Rc::new(stream);
    let activity = Rc::new(IdleWatch::default());
    if let Some(idle) = limits.idle_timeout {
        activity.watch(idle, shutdown);
    }
    let conn = Rc::new(Conn {
        stream: stream.clone(),
        export: export.clone(),
        structured,
        base_allocation,
        outbox: Outbox::new(stream),
        broken: Cell::new(false),
        activity,
    });
    let requests = LocalSemaphore::new(MAX_IN_FLIGHT);
    let bytes = LocalSemaphore::new(MAX_IN_FLIGHT_BYTES / BYTE_UNIT);
    let _ = transmission(&conn, &requests, &bytes).await;
    // Let in-flight requests finish before the socket goes away.
    std::mem::forget(requests.acquire_many(MAX_IN_FLIGHT).await);
    export.connections.fetch_sub(1, Ordering::Relaxed);
}

async fn transmission(
    conn: &Rc<Conn>,
    requests: &LocalSemaphore,
    bytes: &LocalSemaphore,
) -> io::Result<()> {
    let mut rd = BufReader::new(RECV_BUF);
    loop {
        rd.fill(&conn.stream, nbd::REQUEST_LEN).await?;
        let req = match Request::parse(rd.take(nbd::REQUEST_LEN)) {
            Ok(r) => r,
            // A bad magic means we lost framing: nothing can be trusted after it.
            Err(_) => return Err(io::ErrorKind::InvalidData.into()),
        };
        conn.activity.request();
        if conn.export.removed.load(Ordering::SeqCst) || conn.broken.get() {
            conn.reply(&req, Err(Errno::Eshutdown)).await;
            return Ok(());
        }
        if req.command == Command::Disconnect {
            return Ok(());
        }
        let mut payload = None;
        if req.command == Command::Write {
            if req.length > MAX_PAYLOAD {
                // We cannot buffer it and skipping it unread would desynchronise the stream.
                conn.reply(&req, Err(Errno::Eoverflow)).await;
                return Err(io::ErrorKind::InvalidData.into());
            }
            if let Err(e) = validate(conn, &req) {
                rd.skip(&conn.stream, u64::from(req.length)).await?;
                conn.reply(&req, Err(e)).await;
                conn.activity.done();
                continue;
            }
        } else if let Err(e) = validate(conn, &req) {
            conn.reply(&req, Err(e)).await;
            conn.activity.done();
            continue;
        }
        let permit = requests.acquire().await;
        let units = match req.command {
            Command::Read | Command::Write => (req.length as usize).div_ceil(BYTE_UNIT).max(1),
            _ => 0,
        };
        let byte_permits = bytes.acquire_many(units).await;
        if req.command == Command::Write {
            // Straight into a registered buffer, which the device then writes with
            // WRITE_FIXED.
            let len = req.length as usize;
            let (r, data) = rd
                .read_into(&conn.stream, reactor::alloc_buf(len), 0, len)
                .await;
            r?;
            payload = Some(data);
        }
        let c = conn.clone();
        // Polled at once: the device I/O is queued before the loop reads the next request.
        spawn_now(async move {
            let r = execute(&c, &req, payload).await;
            c.reply(&req, r).await;
            c.activity.done();
            drop(byte_permits);
            drop(permit);
        });
    }
}

/// Checks a request against the negotiated features and the export, before touching data.
fn validate(conn: &Conn, req: &Request) -> Result<(), Errno> {
    let ex = &conn.export;
    let size = ex.size();
    let bs = ex.device.geometry().block_size as u64;
    let allowed = match req.command {
        Command::Read => CMD_FLAG_DF,
        Command::Write => CMD_FLAG_FUA,
        Command::Trim => CMD_FLAG_FUA,
        Command::WriteZeroes => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
        Command::BlockStatus => CMD_FLAG_REQ_ONE,
        Command::Flush | Command::Cache => 0,
        _ => return Err(Errno::Einval),
    };
    if req.flags & !allowed != 0 {
        return Err(Errno::Einval);
    }
    if req.flags & CMD_FLAG_DF != 0 && !conn.structured {
        return Err(Errno::Einval);
    }
    let writes = matches!(
        req.command,
        Command::Write | Command::Trim | Command::WriteZeroes
    );
    if writes && ex.read_only {
        return Err(Errno::Eperm);
    }
    if req.command == Command::BlockStatus && !conn.base_allocation {
        return Err(Errno::Einval);
    }
    if req.command == Command::Flush {
        return if req.offset == 0 && req.length == 0 {
            Ok(())
        } else {
            Err(Errno::Einval)
        };
    }
    if req.length == 0 {
        return Err(Errno::Einval);
    }
    if req.command == Command::Read && req.length > MAX_PAYLOAD {
        return Err(if req.flags & CMD_FLAG_DF != 0 {
            Errno::Eoverflow
        } else {
            Errno::Einval
        });
    }
    let end = req.offset.checked_add(req.length as u64);
    if end.is_none_or(|e| e > size) {
        return Err(if writes { Errno::Enospc } else { Errno::Einval });
    }
    if matches!(
        req.command,
        Command::Read | Command::Write | Command::Trim | Command::WriteZeroes
    ) && (!req.offset.is_multiple_of(bs) || !(req.length as u64).is_multiple_of(bs))
    {
        return Err(Errno::Einval);
    }
    Ok(())
}

fn map<T>(r: Result<T, BlockError>) -> Result<T, Errno> {
    r.map_err(|e| errno_of(&e))
}

async fn execute(conn: &Conn, req: &Request, payload: Option<IoBuf>) -> Result<Reply, Errno> {
    let dev = &conn.export.device;
    let fua = req.flags & CMD_FLAG_FUA != 0;
    let ok = Ok(Reply::Done);
    match req.command {
        Command::Read => {
            let buf = reactor::alloc_buf(req.length as usize);
            map(dev.read(req.offset, buf).await).map(Reply::ReadData)
        }
        Command::Write => {
            let data = payload.expect("write payload read");
            map(dev.write(req.offset, data, WriteFlags { fua }).await)?;
            ok
        }
        Command::Flush => {
            map(dev.flush().await)?;
            ok
        }
        Command::Trim => {
            // Trim is advisory: a device that cannot deallocate simply keeps the data.
            if dev.capabilities().unmap {
                map(dev.unmap(req.offset, req.length as u64).await)?;
            }
            if fua {
                map(dev.flush().await)?;
            }
            ok
        }
        Command::WriteZeroes => {
            let flags = ZeroFlags {
                may_unmap: req.flags & CMD_FLAG_NO_HOLE == 0,
                fast_only: req.flags & CMD_FLAG_FAST_ZERO != 0,
                fua,
            };
            if dev.capabilities().write_zeroes {
                map(dev.write_zeroes(req.offset, req.length as u64, flags).await)?;
            } else if flags.fast_only {
                return Err(Errno::Enotsup);
            } else {
                let zero = IoBuf::zeroed(req.length as usize);
                map(dev.write(req.offset, zero, WriteFlags { fua }).await)?;
            }
            ok
        }
        Command::Cache => ok,
        Command::BlockStatus => {
            let ext = map(dev.block_status(req.offset, req.length as u64).await)?;
            let mut out: Vec<(u32, u32)> = Vec::new();
            let end = req.offset + req.length as u64;
            for e in ext {
                let start = e.offset.max(req.offset);
                let stop = (e.offset + e.len).min(end);
                if stop <= start {
                    continue;
                }
                let flags = match e.state {
                    ExtentState::Data => 0,
                    ExtentState::Zero => STATE_ZERO,
                    ExtentState::Hole => STATE_HOLE | STATE_ZERO,
                };
                out.push(((stop - start) as u32, flags));
                if out.len() >= MAX_EXTENTS || req.flags & CMD_FLAG_REQ_ONE != 0 {
                    break;
                }
            }
            if out.is_empty() {
                // The device described nothing: report the whole range as data.
                out.push((req.length, 0));
            }
            Ok(Reply::Extents(out))
        }
        _ => Err(Errno::Einval),
    }
}
