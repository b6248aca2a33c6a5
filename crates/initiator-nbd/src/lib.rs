//! `nbd://`: a remote NBD export as a block device (the NBD initiator).
//!
//! - `nbd://HOST[:PORT]/EXPORT[?timeout=MS&connect_timeout=MS&multi_conn=0|1]` — TCP (port
//!   10809 by default; an IPv6 host in brackets). The export name is the rest of the path,
//!   percent-decoded (it may contain `/`).
//! - `nbd+unix:///EXPORT?socket=PATH[&...]` — a Unix-domain socket.
//!
//! # Opening
//! [`NbdDevice::open`] resolves the host and negotiates once with blocking I/O on the calling
//! thread (bounded by `connect_timeout`), to learn the export's size, flags and block sizes.
//! That connection is kept, idle, for the first reactor that does I/O (so a server serving
//! one session, like `qemu-nbd` without `--persistent`, works). Call it off the reactors (the
//! engine opens devices from its management thread). The geometry is fixed from then on:
//! block size = max(512, the server's minimum block size), `max_io` = the server's maximum
//! (at most 32 MiB), `optimal_io` = its preferred size.
//!
//! # Connections
//! Every connection negotiates fixed newstyle, `NBD_OPT_STRUCTURED_REPLY`,
//! `NBD_OPT_SET_META_CONTEXT base:allocation` and `NBD_OPT_GO` with `NBD_INFO_BLOCK_SIZE`
//! (falling back to `NBD_OPT_EXPORT_NAME` for servers without `GO`).
//!
//! - If the server sets `NBD_FLAG_CAN_MULTI_CONN` (and `multi_conn=0` was not given), each
//!   reactor opens its own connection, lazily, on its first I/O (the first one takes over the
//!   connection made at open).
//! - Otherwise there is one connection, on the reactor that does the first I/O (the *owner*);
//!   other reactors hand their requests to it through its mailbox
//!   ([`reactor::ReactorHandle::spawn`]) and get the result back through a one-shot channel.
//!
//! Requests are pipelined (each has a unique cookie) and a reader task per connection matches
//! simple and structured replies (`OFFSET_DATA`, `OFFSET_HOLE`, `BLOCK_STATUS`, `NONE`,
//! `ERROR`, `ERROR_OFFSET`) to them; read data is received straight into the caller's buffer.
//!
//! # Errors
//! - NBD error values: `EIO`/`ENOMEM` → [`ErrorKind::Io`], `ENOSPC` → `NoSpace`,
//!   `EPERM`/`EROFS` → `ReadOnly`, `EINVAL`/`EOVERFLOW` → `InvalidArgument`, `ENOTSUP` →
//!   `Unsupported` (`NotFast` for a fast zero), `ESHUTDOWN` → `Gone` (and the connection is
//!   retired with a soft disconnect), values the protocol does not define → `Io`.
//! - A request without a reply after `timeout` (default 30 s) fails with `Timeout`, and so
//!   does everything else in flight on that connection, which is closed: the server's state is
//!   unknown, and a late reply must not be mistaken for a new one.
//! - A lost connection fails its requests with `Gone`; a malformed reply (bad magic, unknown
//!   cookie, a chunk outside its request, lengths beyond the limits) with `Io`, and closes the
//!   connection.
//! - The next I/O reconnects. Failed attempts back off exponentially (100 ms doubling to 5 s);
//!   I/O during a back-off fails at once with `Gone` rather than waiting. [`BlockDevice::reset`]
//!   closes every connection, clears the back-off and connects again.
//! - A reconnection must find the same export: not smaller, not newly read-only, not missing
//!   a capability the device advertised.

mod conn;
mod handshake;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use proto_nbd::consts::*;
use reactor::sync::LocalMutex;
use reactor::{ReactorHandle, TcpStream};

use blockdev::uri::{self, OpenError, UriError};
use blockdev::{
    BlockDevice, BlockError, Capabilities, Device, ErrorKind, Extent, ExtentState, Geometry, IoBuf,
    IoFuture, IoKind, Result, WriteFlags, ZeroFlags, check_range,
};
use conn::{Cmd, Conn, Done};
pub use handshake::ExportInfo;
use handshake::{BlockingWire, MAX_PAYLOAD, RingWire, negotiate};

/// Parameters `nbd://` and `nbd+unix://` URIs take.
pub const PARAMS: &[&str] = &["timeout", "connect_timeout", "multi_conn", "socket"];

/// Default command timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default bound on connecting and negotiating.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// First reconnection back-off.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest reconnection back-off.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Trim, write-zeroes and block-status requests are split into pieces of at most this many
/// bytes (a multiple of every block size; the wire length is 32 bits).
const MAX_NON_DATA: u64 = 1 << 30;

/// Where the server is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NbdAddr {
    /// TCP.
    Tcp {
        /// Host name or address (IPv6 without brackets).
        host: String,
        /// Port.
        port: u16,
    },
    /// A Unix-domain socket.
    Unix(PathBuf),
}

/// A parsed `nbd://` or `nbd+unix://` URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NbdSpec {
    /// The server.
    pub addr: NbdAddr,
    /// Export name (may be empty: the server's default export).
    pub export: String,
    /// Command timeout.
    pub timeout: Duration,
    /// Bound on connecting and negotiating.
    pub connect_timeout: Duration,
    /// `Some(false)`: one connection even if the server allows several; `None`/`Some(true)`:
    /// one per reactor when the server sets `NBD_FLAG_CAN_MULTI_CONN`.
    pub multi_conn: Option<bool>,
}

fn millis(k: &str, v: &str) -> std::result::Result<Duration, String> {
    match v.parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
        _ => Err(format!(
            "{k}={v:?}: expected a positive number of milliseconds"
        )),
    }
}

impl NbdSpec {
    /// Parses `nbd://HOST[:PORT]/EXPORT[?...]` or `nbd+unix:///EXPORT?socket=PATH[&...]`;
    /// the error says what is wrong.
    pub fn parse(uri: &str) -> std::result::Result<NbdSpec, UriError> {
        let parts =
            uri::split(uri).ok_or_else(|| UriError::new(uri, "expected nbd://HOST:PORT/EXPORT"))?;
        parts.check_params(PARAMS)?;
        let export = parts.decode(parts.path)?;
        if export.len() > MAX_STRING_LEN {
            return Err(parts.error(format!("export name longer than {MAX_STRING_LEN} bytes")));
        }
        let addr = match parts.scheme {
            "nbd" => {
                if parts.get("socket").is_some() {
                    return Err(parts.error("socket= is for nbd+unix:// URIs"));
                }
                let (host, port) = parts.host_port(DEFAULT_PORT)?;
                NbdAddr::Tcp { host, port }
            }
            "nbd+unix" => {
                if !parts.authority.is_empty() {
                    return Err(
                        parts.error("nbd+unix:// takes no host (nbd+unix:///EXPORT?socket=PATH)")
                    );
                }
                let socket = parts
                    .get("socket")
                    .ok_or_else(|| parts.error("nbd+unix:// needs ?socket=PATH"))?;
                if socket.is_empty() {
                    return Err(parts.error("empty socket path"));
                }
                NbdAddr::Unix(PathBuf::from(parts.decode(socket)?))
            }
            other => return Err(parts.error(format!("not an NBD scheme: {other:?}"))),
        };
        let multi_conn = match parts.get("multi_conn") {
            None => None,
            Some("1" | "true" | "") => Some(true),
            Some("0" | "false") => Some(false),
            Some(v) => return Err(parts.error(format!("multi_conn={v:?}: expected 0 or 1"))),
        };
        let millis = |k: &str| {
            parts
                .get(k)
                .map(|v| millis(k, v).map_err(|e| parts.error(e)))
                .transpose()
        };
        Ok(NbdSpec {
            addr,
            export,
            timeout: millis("timeout")?.unwrap_or(DEFAULT_TIMEOUT),
            connect_timeout: millis("connect_timeout")?.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            multi_conn,
        })
    }
}

/// An error with a message (the peer, what it said).
fn err(kind: ErrorKind, op: IoKind, offset: u64, len: u64, msg: impl Into<String>) -> BlockError {
    BlockError::with_message(kind, op, offset, len, msg)
}

/// Resolved server address.
#[derive(Debug)]
enum Target {
    Tcp(Vec<SocketAddr>),
    Unix(PathBuf),
}

/// Reconnection back-off, shared by the device's reactors.
#[derive(Debug, Default)]
struct Backoff {
    /// No attempt before this.
    next: Option<Instant>,
    delay: Duration,
    last_error: String,
}

/// A connection's socket as registered for closing from any thread.
#[derive(Debug)]
struct ConnEntry {
    id: u64,
    reactor: Option<ReactorHandle>,
    /// A duplicate of the connection's descriptor.
    sock: TcpStream,
}

/// What every reactor using the device shares.
#[derive(Debug)]
pub(crate) struct Inner {
    name: String,
    /// Keys the device's per-reactor state.
    id: u64,
    spec: NbdSpec,
    target: Target,
    /// The server, for messages.
    peer: String,
    info: ExportInfo,
    geometry: Geometry,
    multi_conn: bool,
    /// Single-connection mode: the reactor that owns the connection.
    owner: OnceLock<ReactorHandle>,
    /// Bumped by `reset`: connections made before are not used again.
    epoch: AtomicU64,
    closed: AtomicBool,
    sockets: Mutex<Vec<ConnEntry>>,
    /// The connection negotiated at open, until a reactor takes it over.
    spare: Mutex<Option<OwnedFd>>,
    next_conn: AtomicU64,
    backoff: Mutex<Backoff>,
}

static NEXT_DEVICE: AtomicU64 = AtomicU64::new(1);

/// A device's state on one reactor.
struct Slot {
    conn: RefCell<Option<Rc<Conn>>>,
    /// Held while connecting, so concurrent I/O waits for one attempt.
    connecting: LocalMutex<()>,
    device: Weak<Inner>,
}

thread_local! {
    /// Per-reactor state of every NBD device used on this thread, by device id.
    static SLOTS: RefCell<HashMap<u64, Rc<Slot>>> = RefCell::new(HashMap::new());
}

fn slot(inner: &Arc<Inner>) -> Rc<Slot> {
    SLOTS.with(|m| {
        let mut m = m.borrow_mut();
        if let Some(s) = m.get(&inner.id) {
            return s.clone();
        }
        // Drop the slots of devices gone since.
        m.retain(|_, s| s.device.strong_count() > 0);
        let s = Rc::new(Slot {
            conn: RefCell::new(None),
            connecting: LocalMutex::new(()),
            device: Arc::downgrade(inner),
        });
        m.insert(inner.id, s.clone());
        s
    })
}

/// Forgets connection `conn` of device `dev` on this reactor (it died or retired).
fn detach(dev: u64, conn: u64) {
    let old = SLOTS
        .try_with(|m| {
            let s = m.borrow().get(&dev).cloned()?;
            let mut c = s.conn.borrow_mut();
            if c.as_ref().is_some_and(|c| c.id == conn) {
                c.take()
            } else {
                None
            }
        })
        .ok()
        .flatten();
    drop(old);
}

/// Soft-disconnects connection `conn` of device `dev` if this reactor still has it.
fn disconnect_here(dev: u64, conn: u64, sock: TcpStream) {
    let found = SLOTS
        .try_with(|m| {
            let s = m.borrow().get(&dev).cloned()?;
            let c = s.conn.borrow().clone();
            c.filter(|c| c.id == conn)
        })
        .ok()
        .flatten();
    match found {
        Some(c) => {
            reactor::spawn_local(async move {
                c.disconnect("device closed").await;
                drop(sock);
            });
        }
        None => sock.shutdown(),
    }
}

impl Inner {
    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn forget_socket(&self, id: u64) {
        self.sockets
            .lock()
            .expect("nbd sockets lock")
            .retain(|e| e.id != id);
    }

    /// Whether a new connection's export is the one the device was opened on.
    fn compatible(&self, new: &ExportInfo) -> std::result::Result<(), String> {
        let old = &self.info;
        if new.size < old.size {
            return Err(format!(
                "export {:?} shrank from {} to {} bytes",
                self.spec.export, old.size, new.size
            ));
        }
        if new.has(FLAG_READ_ONLY) && !old.has(FLAG_READ_ONLY) {
            return Err(format!("export {:?} became read-only", self.spec.export));
        }
        let needed = FLAG_SEND_FLUSH
            | FLAG_SEND_FUA
            | FLAG_SEND_TRIM
            | FLAG_SEND_WRITE_ZEROES
            | FLAG_SEND_FAST_ZERO
            | if self.multi_conn {
                FLAG_CAN_MULTI_CONN
            } else {
                0
            };
        let lost = old.flags & !new.flags & needed;
        if lost != 0 {
            return Err(format!(
                "export {:?} lost transmission flags {lost:#x}",
                self.spec.export
            ));
        }
        if old.structured && !new.structured {
            return Err("the server no longer offers structured replies".into());
        }
        if old.allocation_context.is_some() && new.allocation_context.is_none() {
            return Err("the server no longer offers base:allocation".into());
        }
        if new.min_block > self.geometry.block_size
            || (new.max_block != u32::MAX && new.max_block < self.geometry.max_io)
        {
            return Err(format!(
                "block sizes changed to {}..{}",
                new.min_block, new.max_block
            ));
        }
        Ok(())
    }

    /// Connects and negotiates, on this reactor.
    async fn connect(&self) -> std::result::Result<(TcpStream, ExportInfo), String> {
        let sock = match &self.target {
            Target::Tcp(addrs) => {
                let mut last = None;
                let mut sock = None;
                for a in addrs {
                    match TcpStream::connect_async(*a).await {
                        Ok(s) => {
                            sock = Some(s);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                match sock {
                    Some(s) => s,
                    None => {
                        return Err(format!(
                            "connecting to {}: {}",
                            self.peer,
                            last.map(|e| e.to_string()).unwrap_or_default()
                        ));
                    }
                }
            }
            Target::Unix(path) => {
                // A local connect does not wait for a peer: done directly.
                let s = std::os::unix::net::UnixStream::connect(path)
                    .map_err(|e| format!("connecting to {}: {e}", self.peer))?;
                // The reactor's stream type only receives and sends on its descriptor, which
                // works on any stream socket.
                TcpStream::from_std(std::net::TcpStream::from(OwnedFd::from(s)))
            }
        };
        let info = negotiate(&mut RingWire(&sock), &self.spec.export)
            .await
            .map_err(|e| format!("negotiating with {}: {e}", self.peer))?;
        Ok((sock, info))
    }

    /// This reactor's usable connection, connecting if there is none.
    async fn get_conn(self: &Arc<Self>, slot: &Slot) -> std::result::Result<Rc<Conn>, String> {
        let usable = |slot: &Slot| slot.conn.borrow().clone().filter(|c| c.usable());
        if let Some(c) = usable(slot) {
            return Ok(c);
        }
        let _connecting = slot.connecting.lock().await;
        if let Some(c) = usable(slot) {
            return Ok(c);
        }
        if self.is_closed() {
            return Err("device closed".into());
        }
        let epoch = self.epoch();
        let spare = self.spare.lock().expect("nbd spare lock").take();
        if let Some(fd) = spare {
            let sock = TcpStream::from_std(std::net::TcpStream::from(fd));
            let conn = self.install(slot, sock, self.info, epoch);
            return self.still_current(conn, epoch);
        }
        {
            let b = self.backoff.lock().expect("nbd backoff lock");
            if let Some(next) = b.next {
                let now = Instant::now();
                if now < next {
                    return Err(format!(
                        "not connected to {}; next attempt in {} ms (last error: {})",
                        self.peer,
                        (next - now).as_millis(),
                        b.last_error
                    ));
                }
            }
        }
        let attempt = reactor::sync::timeout(self.spec.connect_timeout, self.connect()).await;
        let attempt = match attempt {
            Some(r) => r,
            None => Err(format!(
                "connecting to {} timed out after {} ms",
                self.peer,
                self.spec.connect_timeout.as_millis()
            )),
        };
        let attempt = attempt.and_then(|(sock, info)| {
            self.compatible(&info)?;
            Ok((sock, info))
        });
        let (sock, info) = match attempt {
            Ok(v) => v,
            Err(e) => {
                let mut b = self.backoff.lock().expect("nbd backoff lock");
                b.delay = if b.delay.is_zero() {
                    BACKOFF_MIN
                } else {
                    (b.delay * 2).min(BACKOFF_MAX)
                };
                b.next = Some(Instant::now() + b.delay);
                b.last_error = e.clone();
                return Err(e);
            }
        };
        *self.backoff.lock().expect("nbd backoff lock") = Backoff::default();
        let conn = self.install(slot, sock, info, epoch);
        self.still_current(conn, epoch)
    }

    /// A connection installed after the device was closed or reset (since `epoch` was read)
    /// may have been missed by the sweep of sockets: it is failed instead of used.
    fn still_current(&self, conn: Rc<Conn>, epoch: u64) -> std::result::Result<Rc<Conn>, String> {
        if self.is_closed() || self.epoch() != epoch {
            let why = "device closed or reset while connecting";
            conn.fail(ErrorKind::Gone, why.into());
            return Err(why.into());
        }
        Ok(conn)
    }

    /// Makes a negotiated socket this reactor's connection.
    fn install(
        self: &Arc<Self>,
        slot: &Slot,
        sock: TcpStream,
        info: ExportInfo,
        epoch: u64,
    ) -> Rc<Conn> {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        if let Ok(dup) = sock.try_clone() {
            self.sockets
                .lock()
                .expect("nbd sockets lock")
                .push(ConnEntry {
                    id,
                    reactor: reactor::current_handle(),
                    sock: dup,
                });
        }
        let conn = Conn::start(self.clone(), sock, info, id, epoch);
        let old = slot.conn.borrow_mut().replace(conn.clone());
        drop(old);
        conn
    }

    /// Runs `cmd` on this reactor's connection.
    async fn local(self: Arc<Self>, cmd: Cmd) -> Result<Done> {
        let (op, offset, len) = cmd.what();
        let slot = slot(&self);
        let conn = self
            .get_conn(&slot)
            .await
            .map_err(|m| err(ErrorKind::Gone, op, offset, len, m))?;
        conn.run(cmd).await
    }

    /// Runs `cmd` where the device's connection for this reactor lives.
    async fn submit(self: &Arc<Self>, cmd: Cmd) -> Result<Done> {
        if self.multi_conn {
            return self.clone().local(cmd).await;
        }
        let (op, offset, len) = cmd.what();
        let Some(here) = reactor::current_handle() else {
            return Err(err(
                ErrorKind::InvalidArgument,
                op,
                offset,
                len,
                "NBD device used off a reactor thread",
            ));
        };
        let owner = self.owner.get_or_init(|| here.clone());
        if owner.id() == here.id() {
            return self.clone().local(cmd).await;
        }
        let (tx, rx) = reactor::sync::oneshot();
        let inner = self.clone();
        owner.spawn(move || async move { tx.send(inner.local(cmd).await) });
        rx.await.unwrap_or_else(|| {
            Err(err(
                ErrorKind::Gone,
                op,
                offset,
                len,
                "the reactor owning the NBD connection stopped",
            ))
        })
    }

    /// Closes every connection (hard) and clears the back-off.
    fn invalidate(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        drop(self.spare.lock().expect("nbd spare lock").take());
        *self.backoff.lock().expect("nbd backoff lock") = Backoff::default();
        let entries = std::mem::take(&mut *self.sockets.lock().expect("nbd sockets lock"));
        for e in entries {
            e.sock.shutdown();
        }
    }

    /// The device is being dropped: soft-disconnect every connection on its reactor.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(fd) = self.spare.lock().expect("nbd spare lock").take() {
            // Never used: nothing else writes to it, and the request fits the empty buffer.
            let mut s = std::net::TcpStream::from(fd);
            let _ = std::io::Write::write_all(&mut s, &handshake::disconnect_request());
        }
        let entries = std::mem::take(&mut *self.sockets.lock().expect("nbd sockets lock"));
        for e in entries {
            let (dev, id, sock) = (self.id, e.id, e.sock);
            match e.reactor {
                Some(r) => r.post(move || disconnect_here(dev, id, sock)),
                None => sock.shutdown(),
            }
        }
    }
}

/// A remote NBD export.
#[derive(Debug)]
pub struct NbdDevice {
    inner: Arc<Inner>,
    caps: Capabilities,
}

fn geometry_of(info: &ExportInfo) -> Geometry {
    let block_size = info.min_block.max(512);
    let max = info.max_block.min(MAX_PAYLOAD);
    let max_io = (max / block_size * block_size).max(block_size);
    Geometry {
        block_size,
        num_blocks: info.size / u64::from(block_size),
        optimal_io: info.preferred_block.clamp(block_size, max_io),
        max_io,
    }
}

fn capabilities_of(info: &ExportInfo) -> Capabilities {
    let ro = info.has(FLAG_READ_ONLY);
    let write_zeroes = info.has(FLAG_SEND_WRITE_ZEROES) && !ro;
    Capabilities {
        flush: info.has(FLAG_SEND_FLUSH),
        fua: info.has(FLAG_SEND_FUA),
        unmap: info.has(FLAG_SEND_TRIM) && !ro,
        write_zeroes,
        fast_zero: write_zeroes && info.has(FLAG_SEND_FAST_ZERO),
        block_status: info.allocation_context.is_some(),
        read_only: ro,
        rotational: info.has(FLAG_ROTATIONAL),
    }
}

/// The blocking negotiation made by [`NbdDevice::open`]: the export, and the connection
/// (in the transmission phase, timeouts cleared) for the first reactor to take over.
fn probe(
    target: &Target,
    peer: &str,
    spec: &NbdSpec,
) -> std::result::Result<(ExportInfo, OwnedFd), String> {
    let t = Some(spec.connect_timeout);
    let fail = |e: std::io::Error| format!("connecting to {peer}: {e}");
    let negotiated = |e| format!("negotiating with {peer}: {e}");
    match target {
        Target::Tcp(addrs) => {
            let mut last = None;
            for a in addrs {
                match std::net::TcpStream::connect_timeout(a, spec.connect_timeout) {
                    Ok(s) => {
                        s.set_read_timeout(t)
                            .and_then(|()| s.set_write_timeout(t))
                            .and_then(|()| s.set_nodelay(true))
                            .map_err(fail)?;
                        let mut w = BlockingWire(s);
                        let info = reactor::block_on(negotiate(&mut w, &spec.export))
                            .map_err(negotiated)?;
                        let s = w.0;
                        s.set_read_timeout(None)
                            .and_then(|()| s.set_write_timeout(None))
                            .map_err(fail)?;
                        return Ok((info, OwnedFd::from(s)));
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(format!(
                "connecting to {peer}: {}",
                last.map(|e| e.to_string()).unwrap_or_default()
            ))
        }
        Target::Unix(path) => {
            let s = std::os::unix::net::UnixStream::connect(path).map_err(fail)?;
            s.set_read_timeout(t)
                .and_then(|()| s.set_write_timeout(t))
                .map_err(fail)?;
            let mut w = BlockingWire(s);
            let info = reactor::block_on(negotiate(&mut w, &spec.export)).map_err(negotiated)?;
            let s = w.0;
            s.set_read_timeout(None)
                .and_then(|()| s.set_write_timeout(None))
                .map_err(fail)?;
            Ok((info, OwnedFd::from(s)))
        }
    }
}

/// Parses and opens the `nbd://` or `nbd+unix://` device `uri` as device `name` (blocking:
/// see [`NbdDevice::open`]).
pub fn open_uri(name: &str, uri: &str) -> std::result::Result<Device, OpenError> {
    let spec = NbdSpec::parse(uri)?;
    match NbdDevice::open(name, &spec) {
        Ok(d) => Ok(Arc::new(d)),
        Err(error) => Err(OpenError::Device {
            uri: uri.to_string(),
            error,
        }),
    }
}

impl NbdDevice {
    /// Opens export `spec` as device `name`: resolves the server's address and negotiates once
    /// (blocking, bounded by the connect timeout) to learn the export's geometry.
    pub fn open(name: &str, spec: &NbdSpec) -> Result<NbdDevice> {
        let open_err = |kind, msg: String| err(kind, IoKind::Open, 0, 0, msg);
        let (target, peer) = match &spec.addr {
            NbdAddr::Tcp { host, port } => {
                let addrs: Vec<SocketAddr> = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(|e| open_err(ErrorKind::Gone, format!("resolving {host}: {e}")))?
                    .collect();
                if addrs.is_empty() {
                    return Err(open_err(ErrorKind::Gone, format!("{host} has no address")));
                }
                let peer = if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                };
                (Target::Tcp(addrs), peer)
            }
            NbdAddr::Unix(p) => (Target::Unix(p.clone()), format!("unix:{}", p.display())),
        };
        let (info, first) =
            probe(&target, &peer, spec).map_err(|m| open_err(ErrorKind::Gone, m))?;
        let geometry = geometry_of(&info);
        let caps = capabilities_of(&info);
        let multi_conn = spec.multi_conn.unwrap_or(true) && info.has(FLAG_CAN_MULTI_CONN);
        Ok(NbdDevice {
            inner: Arc::new(Inner {
                name: name.to_string(),
                id: NEXT_DEVICE.fetch_add(1, Ordering::Relaxed),
                spec: spec.clone(),
                target,
                peer,
                info,
                geometry,
                multi_conn,
                owner: OnceLock::new(),
                epoch: AtomicU64::new(0),
                closed: AtomicBool::new(false),
                sockets: Mutex::new(Vec::new()),
                spare: Mutex::new(Some(first)),
                next_conn: AtomicU64::new(1),
                backoff: Mutex::new(Backoff::default()),
            }),
            caps,
        })
    }

    /// What the negotiation at open learnt about the export.
    pub fn export_info(&self) -> ExportInfo {
        self.inner.info
    }

    /// Whether each reactor uses its own connection.
    pub fn multi_conn(&self) -> bool {
        self.inner.multi_conn
    }

    /// Connections open now (all reactors).
    pub fn connections(&self) -> usize {
        self.inner.sockets.lock().expect("nbd sockets lock").len()
    }

    fn max_io(&self) -> u64 {
        u64::from(self.inner.geometry.max_io)
    }

    fn writable(&self, op: IoKind, offset: u64, len: u64) -> Result<()> {
        if self.caps.read_only {
            return Err(err(
                ErrorKind::ReadOnly,
                op,
                offset,
                len,
                "the export is read-only",
            ));
        }
        Ok(())
    }

    async fn do_read(&self, offset: u64, buf: IoBuf) -> Result<IoBuf> {
        let len = buf.len() as u64;
        check_range(&self.inner.geometry, IoKind::Read, offset, len)?;
        if len == 0 {
            return Ok(buf);
        }
        let max = self.max_io();
        if len <= max {
            return expect_buf(self.inner.submit(Cmd::Read { offset, buf }).await);
        }
        // Larger than one command: pieces in turn through bounce buffers.
        let mut buf = buf;
        let mut at = 0;
        while at < len {
            let n = (len - at).min(max);
            let piece = IoBuf::recycled(n as usize);
            let piece = expect_buf(
                self.inner
                    .submit(Cmd::Read {
                        offset: offset + at,
                        buf: piece,
                    })
                    .await,
            )?;
            buf[at as usize..(at + n) as usize].copy_from_slice(&piece);
            at += n;
        }
        Ok(buf)
    }

    async fn do_write(&self, offset: u64, buf: IoBuf, flags: WriteFlags) -> Result<IoBuf> {
        let len = buf.len() as u64;
        self.writable(IoKind::Write, offset, len)?;
        check_range(&self.inner.geometry, IoKind::Write, offset, len)?;
        if len == 0 {
            return Ok(buf);
        }
        let fua = flags.fua && self.caps.fua;
        let max = self.max_io();
        let buf = if len <= max {
            expect_buf(self.inner.submit(Cmd::Write { offset, buf, fua }).await)?
        } else {
            let mut at = 0;
            while at < len {
                let n = (len - at).min(max);
                let piece = IoBuf::from_slice(&buf[at as usize..(at + n) as usize]);
                expect_buf(
                    self.inner
                        .submit(Cmd::Write {
                            offset: offset + at,
                            buf: piece,
                            fua,
                        })
                        .await,
                )?;
                at += n;
            }
            buf
        };
        if flags.fua && !fua {
            self.do_flush().await?;
        }
        Ok(buf)
    }

    async fn do_flush(&self) -> Result<()> {
        // Without NBD_FLAG_SEND_FLUSH the server has no volatile cache to flush.
        if !self.caps.flush {
            return Ok(());
        }
        self.inner.submit(Cmd::Flush).await.map(drop)
    }

    async fn do_unmap(&self, offset: u64, len: u64) -> Result<()> {
        self.writable(IoKind::Unmap, offset, len)?;
        if !self.caps.unmap {
            return Err(BlockError::new(
                ErrorKind::Unsupported,
                IoKind::Unmap,
                offset,
                len,
            ));
        }
        check_range(&self.inner.geometry, IoKind::Unmap, offset, len)?;
        let mut at = 0;
        while at < len {
            let n = (len - at).min(MAX_NON_DATA);
            self.inner
                .submit(Cmd::Trim {
                    offset: offset + at,
                    len: n,
                })
                .await?;
            at += n;
        }
        Ok(())
    }

    async fn do_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> Result<()> {
        let op = IoKind::WriteZeroes;
        self.writable(op, offset, len)?;
        if !self.caps.write_zeroes {
            return Err(BlockError::new(ErrorKind::Unsupported, op, offset, len));
        }
        check_range(&self.inner.geometry, op, offset, len)?;
        if flags.fast_only && !self.caps.fast_zero {
            return Err(err(
                ErrorKind::NotFast,
                op,
                offset,
                len,
                "the server cannot promise fast zeroing",
            ));
        }
        let fua = flags.fua && self.caps.fua;
        let mut at = 0;
        while at < len {
            let n = (len - at).min(MAX_NON_DATA);
            self.inner
                .submit(Cmd::Zeroes {
                    offset: offset + at,
                    len: n,
                    no_hole: !flags.may_unmap,
                    fast: flags.fast_only,
                    fua,
                })
                .await?;
            at += n;
        }
        if flags.fua && !fua {
            self.do_flush().await?;
        }
        Ok(())
    }

    async fn do_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        check_range(&self.inner.geometry, IoKind::BlockStatus, offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        if !self.caps.block_status {
            return Ok(vec![Extent {
                offset,
                len,
                state: ExtentState::Data,
            }]);
        }
        let len = len.min(MAX_NON_DATA);
        match self.inner.submit(Cmd::BlockStatus { offset, len }).await? {
            Done::Extents(x) => Ok(x),
            other => Err(unexpected(IoKind::BlockStatus, offset, len, &other)),
        }
    }

    async fn do_reset(&self) -> Result<()> {
        self.inner.invalidate();
        self.inner.submit(Cmd::Connect).await.map(drop)
    }
}

fn unexpected(op: IoKind, offset: u64, len: u64, got: &Done) -> BlockError {
    err(
        ErrorKind::Io,
        op,
        offset,
        len,
        format!("internal: unexpected completion {got:?}"),
    )
}

fn expect_buf(r: Result<Done>) -> Result<IoBuf> {
    match r? {
        Done::Buf(b) => Ok(b),
        other => Err(unexpected(IoKind::Read, 0, 0, &other)),
    }
}

impl Drop for NbdDevice {
    fn drop(&mut self) {
        self.inner.close();
    }
}

impl BlockDevice for NbdDevice {
    fn name(&self) -> &str {
        &self.inner.name
    }
    fn kind(&self) -> &'static str {
        "nbd"
    }
    fn geometry(&self) -> Geometry {
        self.inner.geometry
    }
    fn capabilities(&self) -> Capabilities {
        self.caps
    }
    fn read(&self, offset: u64, buf: IoBuf) -> IoFuture<'_, IoBuf> {
        Box::pin(self.do_read(offset, buf))
    }
    fn write(&self, offset: u64, buf: IoBuf, flags: WriteFlags) -> IoFuture<'_, IoBuf> {
        Box::pin(self.do_write(offset, buf, flags))
    }
    fn flush(&self) -> IoFuture<'_, ()> {
        Box::pin(self.do_flush())
    }
    fn unmap(&self, offset: u64, len: u64) -> IoFuture<'_, ()> {
        Box::pin(self.do_unmap(offset, len))
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> IoFuture<'_, ()> {
        Box::pin(self.do_zeroes(offset, len, flags))
    }
    fn block_status(&self, offset: u64, len: u64) -> IoFuture<'_, Vec<Extent>> {
        Box::pin(self.do_status(offset, len))
    }
    fn reset(&self) -> IoFuture<'_, ()> {
        Box::pin(self.do_reset())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(uri: &str) -> std::result::Result<NbdSpec, UriError> {
        NbdSpec::parse(uri)
    }

    #[test]
    fn parses_nbd_uris() {
        let s = parse("nbd://10.0.0.1:10900/pool1/db?timeout=500").unwrap();
        assert_eq!(
            s.addr,
            NbdAddr::Tcp {
                host: "10.0.0.1".into(),
                port: 10900
            }
        );
        assert_eq!(s.export, "pool1/db");
        assert_eq!(s.timeout, Duration::from_millis(500));
        assert_eq!(s.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(s.multi_conn, None);

        let s = parse("nbd://[::1]/a%20b?multi_conn=0&connect_timeout=20").unwrap();
        assert_eq!(
            s.addr,
            NbdAddr::Tcp {
                host: "::1".into(),
                port: 10809
            }
        );
        assert_eq!(s.export, "a b");
        assert_eq!(s.multi_conn, Some(false));
        assert_eq!(s.connect_timeout, Duration::from_millis(20));

        let s = parse("nbd://host").unwrap();
        assert_eq!(s.export, "");
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);

        let s = parse("nbd+unix:///disk?socket=/run/nbd.sock").unwrap();
        assert_eq!(s.addr, NbdAddr::Unix("/run/nbd.sock".into()));
        assert_eq!(s.export, "disk");

        for bad in [
            "nbd:///x",
            "nbd://h:99999/x",
            "nbd://h:1/x?timeout=0",
            "nbd://h:1/x?timeout=abc",
            "nbd://h/x?socket=/s",
            "nbd://[::1/x",
            "nbd://h/%zz",
            "nbd+unix:///x",
            "nbd+unix://h/x?socket=/s",
            "nbd://h/x?multi_conn=2",
            "nbd://h/x?bogus=1",
            "nbd://h/%+1",
        ] {
            assert!(parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn geometry_follows_block_sizes() {
        let mut info = ExportInfo {
            size: (64 << 20) + 100,
            flags: FLAG_HAS_FLAGS,
            min_block: 1,
            preferred_block: 4096,
            max_block: u32::MAX,
            structured: true,
            allocation_context: None,
        };
        let g = geometry_of(&info);
        assert_eq!(
            (g.block_size, g.num_blocks, g.optimal_io, g.max_io),
            (512, (64 << 20) / 512, 4096, 32 << 20)
        );
        info.min_block = 4096;
        info.preferred_block = 65536;
        info.max_block = 1 << 20;
        let g = geometry_of(&info);
        assert_eq!(
            (g.block_size, g.num_blocks, g.optimal_io, g.max_io),
            (4096, (64 << 20) / 4096, 65536, 1 << 20)
        );
        info.flags |= FLAG_READ_ONLY | FLAG_SEND_TRIM | FLAG_SEND_FLUSH;
        let c = capabilities_of(&info);
        assert!(c.read_only && c.flush && !c.unmap && !c.block_status);
    }
}
