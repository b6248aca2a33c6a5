//! `nvmf://HOST:PORT/NQN`: a namespace of a remote NVMe over Fabrics controller, reached over
//! the TCP transport, as a [`BlockDevice`]. The nexus uses it to reach remote replicas.
//!
//! # URI
//!
//! `nvmf://HOST[:PORT]/SUBSYSTEM-NQN[?PARAMS]` — the port defaults to 4420, an IPv6 host is
//! written in brackets, and the NQN (and parameter values) may be percent-encoded. Parameters:
//!
//! | parameter | default | meaning |
//! |---|---|---|
//! | `nsid=N` | 1 | namespace |
//! | `hdgst=1`, `ddgst=1` | off | ask for header / data digests (CRC32C) |
//! | `hostnqn=NQN` | [`host_identity`] | host NQN sent in Connect |
//! | `hostid=UUID` | [`host_identity`] | host identifier sent in Connect |
//! | `kato=MS` | 10000 | Keep Alive Timeout; 0 turns keep-alive off |
//! | `timeout=MS` | 30000 | command timeout (and bound of each connection step) |
//! | `queues=N` | 64 | I/O queues requested (Set Features Number of Queues) |
//! | `qsize=N` | 128 | I/O queue size (2..=1024, at most CAP.MQES + 1) |
//! | `ro` | off | refuse writes |
//!
//! # Connections
//!
//! An *association* is the admin queue and the I/O queues attached to one controller (one
//! CNTLID). The admin queue is set up by the reactor that first needs the association: ICReq
//! and ICResp (digests, CPDA, MAXH2CDATA), Connect, Property Get CAP and VS, Property Set
//! CC.EN = 1 and waiting for CSTS.RDY (at most CAP.TO and the command timeout), Identify
//! Controller (MDTS, IOCCSZ, VWC, ONCS) and Namespace (NSZE, LBA format), Set Features
//! Number of Queues. Keep Alive commands then go out on it every KATO/2 from that reactor.
//!
//! Every reactor that issues I/O gets its own I/O queue (its own TCP connection, its own
//! QID), created on first use and owned by that reactor: commands never cross threads. The
//! device itself is `Send + Sync`; per-reactor queues live in a thread-local table.
//!
//! [`NvmfDevice::open`] (what [`open_uri`] uses) is synchronous: it probes the controller on a
//! reactor it is given (connects, identifies, disconnects) so the geometry is known and an
//! unreachable target is an error at once; the association used for I/O is then made by the
//! first I/O. [`NvmfDevice::connect`], for code already running on a reactor, makes it at
//! once.
//!
//! # Errors, timeouts, reconnects
//!
//! - A completion with an error status fails the I/O: LBA Out of Range → `OutOfRange`,
//!   Capacity Exceeded → `NoSpace`, Reservation Conflict → `Conflict`, Namespace Write
//!   Protected / write to a read-only range → `ReadOnly`, Invalid Opcode → `Unsupported`,
//!   Invalid Field → `InvalidArgument`, path-related statuses → `Gone`, anything else → `Io`;
//!   the status is in the message. The connection stays up.
//! - A command without a completion within `timeout` fails with `Timeout`, and the whole
//!   association is reset: every other outstanding command fails with `Gone`.
//! - A lost connection, a failed Keep Alive, a C2HTermReq or anything from the controller
//!   that breaks the protocol (malformed PDU, header digest error, unknown command
//!   identifier, data outside a transfer) resets the association the same way (`Gone`;
//!   protocol errors `Io`), after an H2CTermReq where the socket allows. A data digest error
//!   fails only that command (`Io`).
//! - The next I/O reconnects. After a connection attempt fails, further attempts wait an
//!   exponential back-off (100 ms doubling to 5 s); an I/O arriving during the back-off fails
//!   at once with `Gone`. [`BlockDevice::reset`] drops the association and reconnects now.
//!
//! I/O larger than the controller's transfer limit is split into several commands, sent one
//! after the other (each straight into or out of the caller's buffer).

mod queue;

#[cfg(any(test, feature = "test-utils"))]
pub mod fake;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::Waker;
use std::time::{Duration, Instant};

use proto_nvme::{
    ADMIN_IN_CAPSULE_DATA, CNTLID_DYNAMIC, CNTRLTYPE_DISCOVERY, Cap, Cc, Command,
    DatasetManagement, DsmRange, Identify, IdentifyController, IdentifyNamespace, NQN_MAX_LEN,
    NumberOfQueues, ONCS_DSM, ONCS_WRITE_ZEROES, PropertyGet, PropertySet, PropertySize, ReadWrite,
    Sct, SetFeatures, Sgl, Status, VWC_PRESENT, Version, WriteZeroes, cns, feature_id, register,
};
use reactor::sync::{LocalMutex, timeout};
use reactor::{IoBuf, block_on};

use blockdev::uri::{self, OpenError, UriError};
use blockdev::{
    BlockDevice, BlockError, Capabilities, Device, ErrorKind, Geometry, IoFuture, IoKind, Result,
    WriteFlags, ZeroFlags, check_range,
};
use queue::{Completion, MAX_QUEUE_SIZE, Queue, QueueSetup, Window, Xfer};

/// Parameters `nvmf://` URIs take.
pub const PARAMS: &[&str] = &[
    "nsid", "hdgst", "ddgst", "hostnqn", "hostid", "kato", "timeout", "queues", "qsize", "ro",
];

/// Default TCP port of NVMe/TCP I/O controllers.
pub const DEFAULT_PORT: u16 = 4420;
/// Default Keep Alive Timeout (ms).
pub const DEFAULT_KATO_MS: u32 = 10_000;
/// Default command timeout (ms).
pub const DEFAULT_TIMEOUT_MS: u32 = 30_000;
/// Default number of I/O queues requested.
pub const DEFAULT_QUEUES: u16 = 64;
/// Default I/O queue size.
pub const DEFAULT_QSIZE: u16 = 128;
/// Entries of the admin queue.
const ADMIN_QSIZE: u16 = 32;
/// Largest single command transfer, whatever MDTS allows.
const MAX_TRANSFER: u32 = 1 << 20;
/// First back-off after a failed connection attempt.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest back-off between connection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often CSTS is read while waiting for RDY.
const RDY_POLL: Duration = Duration::from_millis(10);

/// Connection parameters of an `nvmf://` device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NvmfParams {
    /// Host name or address of the controller.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// NQN of the NVM subsystem.
    pub subnqn: String,
    /// Namespace ID.
    pub nsid: u32,
    /// Ask for header digests.
    pub hdgst: bool,
    /// Ask for data digests.
    pub ddgst: bool,
    /// Host NQN; `None` uses [`host_identity`].
    pub hostnqn: Option<String>,
    /// Host identifier; `None` uses [`host_identity`].
    pub hostid: Option<HostId>,
    /// Keep Alive Timeout in ms (0: no keep-alive).
    pub kato_ms: u32,
    /// Command timeout in ms.
    pub timeout_ms: u32,
    /// I/O queues to request.
    pub queues: u16,
    /// I/O queue size.
    pub qsize: u16,
    /// Refuse writes.
    pub read_only: bool,
}

impl NvmfParams {
    /// Parameters with defaults for `host:port` and `subnqn`.
    pub fn new(host: &str, port: u16, subnqn: &str) -> NvmfParams {
        NvmfParams {
            host: host.to_string(),
            port,
            subnqn: subnqn.to_string(),
            nsid: 1,
            hdgst: false,
            ddgst: false,
            hostnqn: None,
            hostid: None,
            kato_ms: DEFAULT_KATO_MS,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            queues: DEFAULT_QUEUES,
            qsize: DEFAULT_QSIZE,
            read_only: false,
        }
    }

    /// Parses `nvmf://HOST[:PORT]/NQN[?PARAMS]`; the error says what is wrong.
    pub fn parse(uri: &str) -> std::result::Result<NvmfParams, UriError> {
        let parts = uri::split(uri)
            .filter(|p| p.scheme == "nvmf")
            .ok_or_else(|| UriError::new(uri, "expected nvmf://HOST:PORT/NQN"))?;
        if !parts.uri["nvmf://".len()..].contains('/') {
            return Err(parts.error("no subsystem NQN (nvmf://HOST:PORT/NQN)"));
        }
        parts.check_params(PARAMS)?;
        let (host, port) = parts.host_port(DEFAULT_PORT)?;
        let subnqn = parts.decode(parts.path)?;
        check_nqn(&subnqn).map_err(|e| parts.error(format!("subsystem NQN {e}")))?;
        let mut p = NvmfParams::new(&host, port, &subnqn);
        for &(k, v) in &parts.params {
            p.set(k, &parts.decode(v)?).map_err(|e| parts.error(e))?;
        }
        Ok(p)
    }

    /// Sets parameter `k` (one of [`PARAMS`]) from its decoded value `v`.
    fn set(&mut self, k: &str, v: &str) -> std::result::Result<(), String> {
        let num = |max: u64| -> std::result::Result<u64, String> {
            v.parse::<u64>()
                .ok()
                .filter(|&n| n <= max)
                .ok_or_else(|| format!("bad {k} {v:?} (0..={max})"))
        };
        let flag = || -> std::result::Result<bool, String> {
            match v {
                "" | "1" | "true" | "on" | "yes" => Ok(true),
                "0" | "false" | "off" | "no" => Ok(false),
                _ => Err(format!("bad {k} {v:?} (1 or 0)")),
            }
        };
        let at_least = |what: &str, n: u64, min: u64| {
            if n < min {
                Err(format!("{what} must be at least {min}"))
            } else {
                Ok(n)
            }
        };
        match k {
            "nsid" => self.nsid = at_least("nsid", num(0xffff_fffe)?, 1)? as u32,
            "hdgst" => self.hdgst = flag()?,
            "ddgst" => self.ddgst = flag()?,
            "hostnqn" => {
                check_nqn(v).map_err(|e| format!("hostnqn {e}"))?;
                self.hostnqn = Some(v.to_string());
            }
            "hostid" => {
                let id: HostId = v
                    .parse()
                    .map_err(|_| format!("hostid {v:?} is not a UUID"))?;
                self.hostid = Some(id);
            }
            "kato" => self.kato_ms = num(u32::MAX as u64)? as u32,
            "timeout" => self.timeout_ms = at_least("timeout", num(u32::MAX as u64)?, 10)? as u32,
            "queues" => self.queues = at_least("queues", num(0xfffe)?, 1)? as u16,
            "qsize" => {
                self.qsize = num(u16::MAX as u64)? as u16;
                if !(2..=MAX_QUEUE_SIZE).contains(&self.qsize) {
                    return Err(format!("qsize must be in 2..={MAX_QUEUE_SIZE}"));
                }
            }
            "ro" => self.read_only = flag()?,
            other => return Err(format!("unknown parameter {other:?}")),
        }
        Ok(())
    }

    /// The URI these parameters describe (defaults left out).
    pub fn to_uri(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let mut q = Vec::new();
        let d = NvmfParams::new("", 0, "");
        if self.nsid != d.nsid {
            q.push(format!("nsid={}", self.nsid));
        }
        if self.hdgst {
            q.push("hdgst=1".into());
        }
        if self.ddgst {
            q.push("ddgst=1".into());
        }
        if let Some(n) = &self.hostnqn {
            q.push(format!("hostnqn={}", percent_encode(n)));
        }
        if let Some(id) = &self.hostid {
            q.push(format!("hostid={id}"));
        }
        for (k, v, dv) in [
            ("kato", self.kato_ms, d.kato_ms),
            ("timeout", self.timeout_ms, d.timeout_ms),
            ("queues", self.queues.into(), d.queues.into()),
            ("qsize", self.qsize.into(), d.qsize.into()),
        ] {
            if v != dv {
                q.push(format!("{k}={v}"));
            }
        }
        if self.read_only {
            q.push("ro".into());
        }
        let mut s = format!(
            "nvmf://{host}:{}/{}",
            self.port,
            percent_encode(&self.subnqn)
        );
        if !q.is_empty() {
            s.push('?');
            s.push_str(&q.join("&"));
        }
        s
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.into())
    }
}

fn check_nqn(s: &str) -> std::result::Result<(), String> {
    if s.is_empty() {
        return Err("is empty".into());
    }
    if s.len() > NQN_MAX_LEN {
        return Err(format!("is longer than {NQN_MAX_LEN} bytes"));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err("contains control characters".into());
    }
    Ok(())
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A host identifier (a UUID), for [`set_host_identity`].
pub use proto_nvme::HostId;

static HOST_IDENTITY: OnceLock<(String, HostId)> = OnceLock::new();

/// Sets the host NQN and host identifier this process connects with by default (the engine
/// sets its own at start-up). Only the first call takes effect; later calls and calls after a
/// device has used the default return an error.
pub fn set_host_identity(hostnqn: &str, hostid: HostId) -> std::result::Result<(), String> {
    check_nqn(hostnqn).map_err(|e| format!("host NQN {e}"))?;
    if hostid.is_nil() {
        return Err("the host identifier must not be all zeroes".into());
    }
    HOST_IDENTITY
        .set((hostnqn.to_string(), hostid))
        .map_err(|_| "the host identity is already set".to_string())
}

/// The default host NQN and host identifier: what [`set_host_identity`] set, else derived
/// from `/etc/machine-id` (stable across restarts on one machine), else random for this
/// process. The NQN is the UUID form `nqn.2014-08.org.nvmexpress:uuid:<hostid>`.
pub fn host_identity() -> (String, HostId) {
    HOST_IDENTITY
        .get_or_init(|| {
            let id = machine_host_id().unwrap_or_else(random_host_id);
            (id.to_nqn(), id)
        })
        .clone()
}

/// A version-4-shaped UUID made of the machine ID's bits.
fn machine_host_id() -> Option<HostId> {
    let s = std::fs::read_to_string("/etc/machine-id").ok()?;
    let s = s.trim();
    if s.len() != 32 {
        return None;
    }
    let mut b = [0u8; 16];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let id = HostId(b);
    (!id.is_nil()).then_some(id)
}

fn random_host_id() -> HostId {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            let mut b = (t ^ (u128::from(std::process::id()) << 64)).to_le_bytes();
            b[6] = (b[6] & 0x0f) | 0x40;
            b[8] = (b[8] & 0x3f) | 0x80;
            HostId(b)
        })
}

/// Why a command or a connection failed: an error class and a message.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub kind: ErrorKind,
    pub msg: String,
}

impl Failure {
    fn new(kind: ErrorKind, msg: impl Into<String>) -> Failure {
        Failure {
            kind,
            msg: msg.into(),
        }
    }

    fn gone(msg: impl Into<String>) -> Failure {
        Failure::new(ErrorKind::Gone, msg)
    }

    fn io(msg: impl Into<String>) -> Failure {
        Failure::new(ErrorKind::Io, msg)
    }

    fn context(self, what: &str) -> Failure {
        Failure {
            kind: self.kind,
            msg: format!("{what}: {}", self.msg),
        }
    }

    fn block(&self, op: IoKind, offset: u64, len: u64) -> BlockError {
        BlockError::with_message(self.kind, op, offset, len, self.msg.clone())
    }
}

/// Counters of an `nvmf://` device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NvmfStats {
    /// Associations established (admin queue connected and the controller enabled).
    pub associations: u64,
    /// I/O queues connected.
    pub io_queues: u64,
    /// Keep Alive commands completed.
    pub keep_alives: u64,
    /// Commands that timed out.
    pub timeouts: u64,
    /// Associations that failed after being established (or while being set up).
    pub resets: u64,
    /// Connection attempts that failed.
    pub failed_connects: u64,
    /// C2HData PDUs whose data digest did not match.
    pub digest_errors: u64,
}

#[derive(Debug, Default)]
struct Stats {
    associations: AtomicU64,
    io_queues: AtomicU64,
    keep_alives: AtomicU64,
    timeouts: AtomicU64,
    resets: AtomicU64,
    failed_connects: AtomicU64,
    digest_errors: AtomicU64,
}

/// What the controller and namespace said when the association was set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerInfo {
    /// Controller ID.
    pub cntlid: u16,
    /// Model number.
    pub model: String,
    /// Serial number.
    pub serial: String,
    /// Firmware revision.
    pub firmware: String,
    /// NVMe version the controller reports (VS).
    pub version: (u16, u8, u8),
    /// Subsystem NQN from Identify Controller.
    pub subnqn: String,
    /// Header digests in use.
    pub hdgst: bool,
    /// Data digests in use.
    pub ddgst: bool,
    /// I/O queues the controller granted.
    pub io_queues: u16,
    /// Entries per I/O queue.
    pub io_queue_size: u16,
    /// Largest write sent in the command capsule (IOCCSZ), bytes.
    pub in_capsule: u32,
    /// MAXH2CDATA from ICResp, bytes.
    pub maxh2cdata: u32,
    /// Largest transfer of one command, bytes.
    pub max_transfer: u32,
}

/// What stays fixed over the device's life (checked again on every reconnect).
#[derive(Clone, Copy, Debug)]
struct Fixed {
    block_size: u32,
    max_io: u32,
    caps: Capabilities,
}

#[derive(Debug)]
enum Link {
    Down,
    Connecting,
    Up(Up),
}

#[derive(Clone, Copy, Debug)]
struct Up {
    cntlid: u16,
    nr_queues: u16,
    next_qid: u16,
    qsize: u16,
    in_capsule: u32,
}

#[derive(Debug)]
struct State {
    /// Generation of the current (or last) association; every attempt takes a new one.
    epoch: u64,
    link: Link,
    /// Bumped on every change of `link`, for waiters.
    version: u64,
    waiters: Vec<Waker>,
    /// Clones of every socket of the current association, to shut them down from anywhere.
    sockets: Vec<(u64, reactor::TcpStream)>,
    closed: bool,
    /// Consecutive failed connection attempts.
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<String>,
}

/// The part of a device every reactor shares.
#[derive(Debug)]
pub(crate) struct Shared {
    id: u64,
    params: NvmfParams,
    addrs: Vec<SocketAddr>,
    hostnqn: String,
    hostid: [u8; 16],
    state: Mutex<State>,
    /// Generation of the association while it is up, else 0 (read without the lock).
    up_epoch: AtomicU64,
    fixed: OnceLock<Fixed>,
    num_blocks: AtomicU64,
    info: Mutex<Option<ControllerInfo>>,
    stats: Stats,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A reactor's queue of one device.
struct Local {
    queue: Option<Rc<Queue>>,
    gate: Rc<LocalMutex<()>>,
}

thread_local! {
    static LOCAL: RefCell<HashMap<u64, Local>> = RefCell::new(HashMap::new());
}

fn local_queue(id: u64) -> Option<Rc<Queue>> {
    LOCAL.with(|m| m.borrow().get(&id).and_then(|l| l.queue.clone()))
}

fn local_gate(id: u64) -> Rc<LocalMutex<()>> {
    LOCAL.with(|m| {
        m.borrow_mut()
            .entry(id)
            .or_insert_with(|| Local {
                queue: None,
                gate: Rc::new(LocalMutex::new(())),
            })
            .gate
            .clone()
    })
}

fn set_local(id: u64, q: Rc<Queue>) {
    LOCAL.with(|m| {
        m.borrow_mut()
            .entry(id)
            .or_insert_with(|| Local {
                queue: None,
                gate: Rc::new(LocalMutex::new(())),
            })
            .queue = Some(q)
    });
}

/// Drops a queue that ended from its reactor's table.
fn forget_local(q: &Rc<Queue>) {
    let s = q.dev_id;
    let _ = LOCAL.try_with(|m| {
        let mut m = m.borrow_mut();
        if let Some(l) = m.get_mut(&s) {
            if l.queue.as_ref().is_some_and(|x| Rc::ptr_eq(x, q)) {
                l.queue = None;
            }
            if l.queue.is_none() && Rc::strong_count(&l.gate) == 1 {
                m.remove(&s);
            }
        }
    });
}

impl Shared {
    fn new(params: NvmfParams) -> std::result::Result<Arc<Shared>, String> {
        let addrs: Vec<SocketAddr> = (params.host.as_str(), params.port)
            .to_socket_addrs()
            .map_err(|e| format!("resolving {}:{}: {e}", params.host, params.port))?
            .collect();
        if addrs.is_empty() {
            return Err(format!(
                "{}:{} resolves to no address",
                params.host, params.port
            ));
        }
        let (dnqn, did) = host_identity();
        let hostnqn = params.hostnqn.clone().unwrap_or(dnqn);
        let hostid = params.hostid.unwrap_or(did).0;
        Ok(Arc::new(Shared {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            params,
            addrs,
            hostnqn,
            hostid,
            state: Mutex::new(State {
                epoch: 0,
                link: Link::Down,
                version: 0,
                waiters: Vec::new(),
                sockets: Vec::new(),
                closed: false,
                failures: 0,
                retry_at: None,
                last_error: None,
            }),
            up_epoch: AtomicU64::new(0),
            fixed: OnceLock::new(),
            num_blocks: AtomicU64::new(0),
            info: Mutex::new(None),
            stats: Stats::default(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn target(&self) -> String {
        format!(
            "{}:{} {}",
            self.params.host, self.params.port, self.params.subnqn
        )
    }

    /// Records a socket of association `epoch` so that failing or closing it shuts the socket
    /// down; refuses (and closes) it if that association is no longer current.
    pub(crate) fn register(
        &self,
        epoch: u64,
        s: &reactor::TcpStream,
    ) -> std::result::Result<(), Failure> {
        let mut st = self.lock();
        if st.closed || st.epoch != epoch || matches!(st.link, Link::Down) {
            s.shutdown();
            return Err(Failure::gone("the association was reset while connecting"));
        }
        let clone = s
            .try_clone()
            .map_err(|e| Failure::gone(format!("duplicating a socket: {e}")))?;
        st.sockets.push((epoch, clone));
        Ok(())
    }

    fn changed(st: &mut State) -> Vec<Waker> {
        st.version += 1;
        std::mem::take(&mut st.waiters)
    }

    fn shut_sockets(st: &mut State) {
        for (_, s) in st.sockets.drain(..) {
            s.shutdown();
        }
    }

    /// Association `epoch` failed (a queue died, a command timed out, keep-alive failed):
    /// every connection of it is shut down and the next I/O reconnects.
    pub(crate) fn fail(&self, epoch: u64, why: &str) {
        self.end(epoch, why, true)
    }

    /// Ends association `epoch`; `failure` says whether it broke (counted in the stats) or
    /// the host ended it.
    fn end(&self, epoch: u64, why: &str, failure: bool) {
        let wakers = {
            let mut st = self.lock();
            if st.epoch != epoch || matches!(st.link, Link::Down) {
                return;
            }
            if matches!(st.link, Link::Up(_)) {
                // A working association broke: reconnecting at once is allowed.
                st.failures = 0;
                st.retry_at = None;
            }
            st.epoch += 1;
            st.link = Link::Down;
            st.last_error = Some(why.to_string());
            self.up_epoch.store(0, Ordering::Release);
            Self::shut_sockets(&mut st);
            if failure {
                self.stats.resets.fetch_add(1, Ordering::Relaxed);
            }
            Self::changed(&mut st)
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Closes every connection for good (the device is dropped).
    fn close(&self) {
        let wakers = {
            let mut st = self.lock();
            st.closed = true;
            st.epoch += 1;
            st.link = Link::Down;
            self.up_epoch.store(0, Ordering::Release);
            Self::shut_sockets(&mut st);
            Self::changed(&mut st)
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Drops the current association (if any) and allows an immediate reconnect.
    fn drop_association(&self, why: &str) {
        let epoch = {
            let mut st = self.lock();
            st.failures = 0;
            st.retry_at = None;
            st.epoch
        };
        self.end(epoch, why, false);
    }

    /// Waits until the association is up (setting it up on this reactor if nobody is) and
    /// takes a queue ID for a new I/O queue.
    async fn reserve_io_queue(self: &Arc<Self>) -> std::result::Result<QueueSetup, Failure> {
        loop {
            let seen = {
                let mut st = self.lock();
                if st.closed {
                    return Err(Failure::gone("the device is closed"));
                }
                match &mut st.link {
                    Link::Up(up) => {
                        if up.next_qid > up.nr_queues {
                            return Err(Failure::io(format!(
                                "{}: the controller granted {} I/O queues and every one is in use (one per reactor)",
                                self.target(),
                                up.nr_queues
                            )));
                        }
                        let qid = up.next_qid;
                        up.next_qid += 1;
                        return Ok(QueueSetup {
                            qid,
                            qsize: up.qsize,
                            cntlid: up.cntlid,
                            kato: 0,
                            max_data: self.fixed.get().map_or(MAX_TRANSFER, |f| f.max_io),
                            in_capsule: up.in_capsule,
                            epoch: st.epoch,
                            timeout: self.params.timeout(),
                        });
                    }
                    Link::Connecting => Some(st.version),
                    Link::Down => {
                        let now = Instant::now();
                        if let Some(at) = st.retry_at
                            && at > now
                        {
                            return Err(Failure::gone(format!(
                                "{}: not connected; next attempt in {:?} (last error: {})",
                                self.target(),
                                at - now,
                                st.last_error.as_deref().unwrap_or("none")
                            )));
                        }
                        st.epoch += 1;
                        st.link = Link::Connecting;
                        let w = Self::changed(&mut st);
                        drop(st);
                        w.into_iter().for_each(Waker::wake);
                        None
                    }
                }
            };
            match seen {
                Some(v) => self.wait_change(v).await,
                None => self.connect_admin().await?,
            }
        }
    }

    /// Waits until the link state changes from version `seen` (woken from any thread).
    async fn wait_change(&self, seen: u64) {
        std::future::poll_fn(|cx| {
            let mut st = self.lock();
            if st.version != seen {
                std::task::Poll::Ready(())
            } else {
                st.waiters.push(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await
    }

    /// Sets the association up on this reactor (the link is `Connecting` with a fresh
    /// generation) and records the outcome.
    async fn connect_admin(self: &Arc<Self>) -> std::result::Result<(), Failure> {
        let epoch = self.lock().epoch;
        let limit = self.params.timeout() * 2;
        let r = match timeout(limit, self.establish(epoch)).await {
            Some(r) => r,
            None => Err(Failure::gone(format!(
                "setting up the association took longer than {limit:?}"
            ))),
        };
        let (r, wakers) = {
            let mut st = self.lock();
            let current = st.epoch == epoch && matches!(st.link, Link::Connecting) && !st.closed;
            match r {
                Ok(up) if current => {
                    st.link = Link::Up(up);
                    st.failures = 0;
                    st.retry_at = None;
                    st.last_error = None;
                    self.up_epoch.store(epoch, Ordering::Release);
                    self.stats.associations.fetch_add(1, Ordering::Relaxed);
                    (Ok(()), Self::changed(&mut st))
                }
                other => {
                    let f = match other {
                        Err(f) => f,
                        Ok(_) => Failure::gone("the association was reset while it was set up"),
                    }
                    .context(&format!("connecting to {}", self.target()));
                    if st.epoch == epoch {
                        st.epoch += 1;
                        st.link = Link::Down;
                        Self::shut_sockets(&mut st);
                    }
                    st.failures = st.failures.saturating_add(1);
                    let backoff = BACKOFF_MIN
                        .saturating_mul(1 << (st.failures - 1).min(16))
                        .min(BACKOFF_MAX);
                    st.retry_at = Some(Instant::now() + backoff);
                    st.last_error = Some(f.msg.clone());
                    self.stats.failed_connects.fetch_add(1, Ordering::Relaxed);
                    (Err(f), Self::changed(&mut st))
                }
            }
        };
        wakers.into_iter().for_each(Waker::wake);
        r
    }

    /// The admin queue, controller enable, identification and queue count.
    async fn establish(self: &Arc<Self>, epoch: u64) -> std::result::Result<Up, Failure> {
        let p = &self.params;
        let t = p.timeout();
        let (admin, cntlid) = Queue::connect(
            self,
            &self.addrs,
            QueueSetup {
                qid: 0,
                qsize: ADMIN_QSIZE,
                cntlid: CNTLID_DYNAMIC,
                kato: p.kato_ms,
                max_data: 64 * 1024,
                in_capsule: ADMIN_IN_CAPSULE_DATA,
                epoch,
                timeout: t,
            },
        )
        .await?;
        let r = self.bring_up(&admin, cntlid).await;
        match r {
            Ok(up) => {
                if p.kato_ms > 0 {
                    let every = Duration::from_millis(u64::from(p.kato_ms / 2).max(1));
                    let weak = Arc::downgrade(self);
                    reactor::spawn_local(keep_alive(weak, admin, epoch, every));
                }
                Ok(up)
            }
            Err(f) => {
                admin.kill(f.clone());
                Err(f)
            }
        }
    }

    async fn bring_up(&self, admin: &Rc<Queue>, cntlid: u16) -> std::result::Result<Up, Failure> {
        let p = &self.params;
        let cap = Cap::from_u64(property_get(admin, register::CAP, PropertySize::Eight).await?);
        let vs =
            Version::from_u32(property_get(admin, register::VS, PropertySize::Four).await? as u32);
        enable(admin, &cap, p.timeout()).await?;
        let ctrl = IdentifyController::parse(&identify(admin, cns::CONTROLLER, 0).await?)
            .map_err(|e| Failure::io(format!("Identify Controller: {e}")))?;
        if ctrl.cntrltype == CNTRLTYPE_DISCOVERY {
            return Err(Failure::io(format!(
                "{} is a discovery controller, not an I/O controller",
                p.subnqn
            )));
        }
        if ctrl.icdoff != 0 {
            return Err(Failure::io(format!(
                "the controller wants in-capsule data at offset {} (ICDOFF), which is not supported",
                ctrl.icdoff
            )));
        }
        let ns = IdentifyNamespace::parse(&identify(admin, cns::NAMESPACE, p.nsid).await?)
            .map_err(|e| Failure::io(format!("Identify Namespace: {e}")))?;
        let block_size = block_size_of(&ns, p)?;
        let nr_queues = set_number_of_queues(admin, p.queues).await?;
        let max_io = max_transfer(&cap, &ctrl, block_size);
        let read_only = p.read_only || ns.nsattr & 1 != 0;
        let caps = Capabilities {
            flush: ctrl.vwc & VWC_PRESENT != 0,
            fua: !read_only,
            unmap: !read_only && ctrl.oncs & ONCS_DSM != 0,
            write_zeroes: !read_only && ctrl.oncs & ONCS_WRITE_ZEROES != 0,
            fast_zero: false,
            block_status: false,
            read_only,
            rotational: false,
        };
        let fixed = self.same_shape(Fixed {
            block_size,
            max_io,
            caps,
        })?;
        self.num_blocks.store(ns.nsze, Ordering::Relaxed);
        let qsize = p
            .qsize
            .min(cap.mqes.saturating_add(1))
            .clamp(2, MAX_QUEUE_SIZE);
        let in_capsule = ctrl.max_in_capsule_data();
        let (hdgst, ddgst) = admin.digests();
        *self.info.lock().unwrap_or_else(|e| e.into_inner()) = Some(ControllerInfo {
            cntlid,
            model: ctrl.mn.clone(),
            serial: ctrl.sn.clone(),
            firmware: ctrl.fr.clone(),
            version: (vs.major, vs.minor, vs.tertiary),
            subnqn: ctrl.subnqn.clone(),
            hdgst,
            ddgst,
            io_queues: nr_queues,
            io_queue_size: qsize,
            in_capsule,
            maxh2cdata: admin.maxh2cdata(),
            max_transfer: fixed.max_io,
        });
        Ok(Up {
            cntlid,
            nr_queues,
            next_qid: 1,
            qsize,
            in_capsule,
        })
    }

    /// The shape the device was first seen with (it is fixed for its life); a reconnection
    /// must find the same block size and a transfer limit no smaller.
    fn same_shape(&self, now: Fixed) -> std::result::Result<Fixed, Failure> {
        let fixed = *self.fixed.get_or_init(|| now);
        if fixed.block_size != now.block_size {
            return Err(Failure::io(format!(
                "the namespace's block size changed from {} to {} bytes",
                fixed.block_size, now.block_size
            )));
        }
        if fixed.max_io > now.max_io {
            return Err(Failure::io(format!(
                "the controller's transfer limit shrank from {} to {} bytes",
                fixed.max_io, now.max_io
            )));
        }
        Ok(fixed)
    }

    /// This reactor's I/O queue if it is connected and belongs to the current association.
    fn ready_queue(&self) -> Option<Rc<Queue>> {
        local_queue(self.id)
            .filter(|q| q.is_alive() && q.epoch == self.up_epoch.load(Ordering::Acquire))
    }

    /// This reactor's I/O queue, connecting it (and the association) when needed. Connecting
    /// is boxed: its future is large (~15 KiB), and every I/O would otherwise carry and copy
    /// it.
    async fn io_queue(self: &Arc<Self>) -> std::result::Result<Rc<Queue>, Failure> {
        match self.ready_queue() {
            Some(q) => Ok(q),
            None => Box::pin(self.connect_io_queue()).await,
        }
    }

    async fn connect_io_queue(self: &Arc<Self>) -> std::result::Result<Rc<Queue>, Failure> {
        let gate = local_gate(self.id);
        let _g = gate.lock().await;
        if let Some(q) = self.ready_queue() {
            return Ok(q);
        }
        let setup = self.reserve_io_queue().await?;
        let epoch = setup.epoch;
        match Queue::connect(self, &self.addrs, setup).await {
            Ok((q, _)) => {
                set_local(self.id, q.clone());
                self.stats.io_queues.fetch_add(1, Ordering::Relaxed);
                Ok(q)
            }
            Err(f) => {
                self.fail(epoch, &f.msg);
                Err(f.context(&format!("connecting an I/O queue to {}", self.target())))
            }
        }
    }

    fn fixed(&self) -> Fixed {
        *self
            .fixed
            .get()
            .expect("set before the device is handed out")
    }
}

/// Sends Keep Alive on the admin queue every `every` until the association changes.
async fn keep_alive(shared: Weak<Shared>, admin: Rc<Queue>, epoch: u64, every: Duration) {
    loop {
        reactor::sleep(every).await;
        if !admin.is_alive() {
            return;
        }
        let Some(s) = shared.upgrade() else {
            admin.kill(Failure::gone("the device is closed"));
            return;
        };
        if s.lock().epoch != epoch {
            return;
        }
        let sqe = Command::KeepAlive.to_sqe(0, 0, Sgl::null());
        match admin.submit(sqe, Xfer::None).await {
            Ok(c) if c.cqe.status.is_success() => {
                s.stats.keep_alives.fetch_add(1, Ordering::Relaxed);
            }
            Ok(c) => {
                let f = Failure::gone(format!(
                    "Keep Alive failed with {}",
                    queue::status_text(c.cqe.status)
                ));
                admin.kill(f);
                return;
            }
            // The queue is dead already, and the association failed with it.
            Err(_) => return,
        }
    }
}

fn check_admin(c: &Completion, what: &str) -> std::result::Result<(), Failure> {
    if c.cqe.status.is_success() {
        Ok(())
    } else {
        Err(Failure::io(format!(
            "{what} failed with {}",
            queue::status_text(c.cqe.status)
        )))
    }
}

async fn property_get(
    admin: &Rc<Queue>,
    offset: u32,
    size: PropertySize,
) -> std::result::Result<u64, Failure> {
    let c = admin
        .submit(
            Command::PropertyGet(PropertyGet { size, offset }).to_sqe(0, 0, Sgl::null()),
            Xfer::None,
        )
        .await?;
    check_admin(&c, &format!("Property Get {offset:#x}"))?;
    Ok(match size {
        PropertySize::Four => u64::from(c.cqe.dw0),
        PropertySize::Eight => c.cqe.result64(),
    })
}

async fn property_set(
    admin: &Rc<Queue>,
    offset: u32,
    value: u64,
) -> std::result::Result<(), Failure> {
    let c = admin
        .submit(
            Command::PropertySet(PropertySet {
                size: PropertySize::Four,
                offset,
                value,
            })
            .to_sqe(0, 0, Sgl::null()),
            Xfer::None,
        )
        .await?;
    check_admin(&c, &format!("Property Set {offset:#x}"))
}

/// Sets CC.EN and waits for CSTS.RDY (at most CAP.TO and `timeout`); a fatal status
/// (CSTS.CFS) fails at once.
async fn enable(
    admin: &Rc<Queue>,
    cap: &Cap,
    timeout: Duration,
) -> std::result::Result<(), Failure> {
    let cc = Cc {
        en: true,
        css: 0,
        mps: 0,
        ams: 0,
        shn: 0,
        iosqes: 6,
        iocqes: 4,
        crime: false,
    };
    property_set(admin, register::CC, cc.to_u32().into()).await?;
    let ready_within = Duration::from_millis(500 * u64::from(cap.to.max(1))).min(timeout);
    let started = Instant::now();
    loop {
        let csts = proto_nvme::Csts::from_u32(
            property_get(admin, register::CSTS, PropertySize::Four).await? as u32,
        );
        if csts.cfs {
            return Err(Failure::io(
                "the controller reports a fatal status (CSTS.CFS)",
            ));
        }
        if csts.rdy {
            return Ok(());
        }
        if started.elapsed() > ready_within {
            return Err(Failure::gone(format!(
                "the controller was not ready (CSTS.RDY) within {ready_within:?}"
            )));
        }
        reactor::sleep(RDY_POLL).await;
    }
}

/// The namespace's block size, if it is active and its format is one this initiator serves
/// (no metadata, 512 B to 64 KiB blocks).
fn block_size_of(ns: &IdentifyNamespace, p: &NvmfParams) -> std::result::Result<u32, Failure> {
    if ns.nsze == 0 {
        return Err(Failure::gone(format!(
            "namespace {} of {} is not active",
            p.nsid, p.subnqn
        )));
    }
    let fmt = ns
        .current_format()
        .copied()
        .ok_or_else(|| Failure::io("the namespace's LBA format is not described"))?;
    if fmt.ms != 0 {
        return Err(Failure::io(format!(
            "the namespace has {} bytes of metadata per block, which is not supported",
            fmt.ms
        )));
    }
    if !(9..=16).contains(&fmt.lbads) {
        return Err(Failure::io(format!(
            "unsupported block size 2^{} bytes",
            fmt.lbads
        )));
    }
    Ok(1u32 << fmt.lbads)
}

/// Asks for `queues` I/O queues (Set Features Number of Queues); returns how many to use.
async fn set_number_of_queues(admin: &Rc<Queue>, queues: u16) -> std::result::Result<u16, Failure> {
    let want = queues.saturating_sub(1);
    let c = admin
        .submit(
            Command::SetFeatures(SetFeatures {
                fid: feature_id::NUMBER_OF_QUEUES,
                cdw11: NumberOfQueues {
                    nsq: want,
                    ncq: want,
                }
                .to_dword(),
                ..SetFeatures::default()
            })
            .to_sqe(0, 0, Sgl::null()),
            Xfer::None,
        )
        .await?;
    check_admin(&c, "Set Features (Number of Queues)")?;
    let granted = NumberOfQueues::from_dword(c.cqe.dw0);
    Ok(granted.nsq.min(granted.ncq).saturating_add(1).min(queues))
}

/// The largest transfer: the controller's MDTS (in units of its minimum page), this
/// initiator's limit and 64 Ki blocks, rounded down to whole blocks.
fn max_transfer(cap: &Cap, ctrl: &IdentifyController, block_size: u32) -> u32 {
    let page = 4096u64 << cap.mpsmin;
    let mdts = if ctrl.mdts == 0 {
        u64::MAX
    } else {
        page << ctrl.mdts.min(20)
    };
    let max_io = mdts
        .min(u64::from(MAX_TRANSFER))
        .min(65536 * u64::from(block_size));
    (max_io / u64::from(block_size) * u64::from(block_size)).max(u64::from(block_size)) as u32
}

async fn identify(admin: &Rc<Queue>, cns: u8, nsid: u32) -> std::result::Result<IoBuf, Failure> {
    let c = admin
        .submit(
            Command::Identify(Identify {
                cns,
                ..Identify::default()
            })
            .to_sqe(0, nsid, Sgl::null()),
            Xfer::ToHost(Window::whole(IoBuf::zeroed(proto_nvme::IDENTIFY_LEN))),
        )
        .await?;
    check_admin(&c, &format!("Identify (CNS {cns:#x})"))?;
    c.buf
        .ok_or_else(|| Failure::io("Identify completed without its data"))
}

/// The block-device error for a completion status.
fn status_error(s: Status, op: IoKind, offset: u64, len: u64) -> BlockError {
    let code = s.code();
    let kind = match s.sct_kind() {
        Some(Sct::Generic) => match code {
            Status::LBA_OUT_OF_RANGE => ErrorKind::OutOfRange,
            Status::CAPACITY_EXCEEDED => ErrorKind::NoSpace,
            Status::RESERVATION_CONFLICT => ErrorKind::Conflict,
            Status::NAMESPACE_WRITE_PROTECTED => ErrorKind::ReadOnly,
            Status::INVALID_OPCODE => ErrorKind::Unsupported,
            Status::INVALID_FIELD => ErrorKind::InvalidArgument,
            _ => ErrorKind::Io,
        },
        Some(Sct::CommandSpecific) if code == Status::WRITE_TO_READ_ONLY_RANGE => {
            ErrorKind::ReadOnly
        }
        Some(Sct::PathRelated) => ErrorKind::Gone,
        _ => ErrorKind::Io,
    };
    BlockError::with_message(kind, op, offset, len, queue::status_text(s))
}

/// A namespace of a remote NVMe/TCP controller.
#[derive(Debug)]
pub struct NvmfDevice {
    name: String,
    shared: Arc<Shared>,
}

impl Drop for NvmfDevice {
    fn drop(&mut self) {
        self.shared.close();
    }
}

impl NvmfDevice {
    /// Opens the namespace `params` describe as device `name`, blocking the calling thread:
    /// the controller is probed (connected, identified, disconnected) on reactor `on`, so the
    /// geometry is known and an unreachable or unsuitable target is an error now. The
    /// association used for I/O is made by the first I/O, on whichever reactor does it. Call
    /// it off the reactors (the engine opens devices from its management thread); on a
    /// reactor, use [`NvmfDevice::connect`].
    pub fn open(name: &str, params: NvmfParams, on: &reactor::ReactorHandle) -> Result<NvmfDevice> {
        let open_err = |m: String| BlockError::with_message(ErrorKind::Gone, IoKind::Open, 0, 0, m);
        let shared = Shared::new(params).map_err(open_err)?;
        let s2 = shared.clone();
        let r = block_on(on.call(move || async move {
            let r = s2.reserve_io_queue().await.map(drop).map_err(|f| f.msg);
            s2.drop_association("probe finished");
            r
        }));
        r.map_err(open_err)?;
        Ok(NvmfDevice {
            name: name.to_string(),
            shared,
        })
    }

    /// Connects to the namespace `params` describe from the calling reactor (the admin queue
    /// and this reactor's I/O queue live here) and returns the device.
    pub async fn connect(name: &str, params: NvmfParams) -> Result<NvmfDevice> {
        let open_err = |m: String| BlockError::with_message(ErrorKind::Gone, IoKind::Open, 0, 0, m);
        let shared = Shared::new(params).map_err(open_err)?;
        let dev = NvmfDevice {
            name: name.to_string(),
            shared,
        };
        dev.shared
            .io_queue()
            .await
            .map_err(|f| f.block(IoKind::Open, 0, 0))?;
        Ok(dev)
    }

    /// The connection parameters.
    pub fn params(&self) -> &NvmfParams {
        &self.shared.params
    }

    /// What the controller reported when the last association was set up.
    pub fn controller(&self) -> Option<ControllerInfo> {
        self.shared
            .info
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether an association is up now.
    pub fn is_connected(&self) -> bool {
        self.shared.up_epoch.load(Ordering::Acquire) != 0
    }

    /// The error that ended the last association or connection attempt, if any.
    pub fn last_error(&self) -> Option<String> {
        self.shared.lock().last_error.clone()
    }

    /// Counters.
    pub fn stats(&self) -> NvmfStats {
        let s = &self.shared.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NvmfStats {
            associations: l(&s.associations),
            io_queues: l(&s.io_queues),
            keep_alives: l(&s.keep_alives),
            timeouts: l(&s.timeouts),
            resets: l(&s.resets),
            failed_connects: l(&s.failed_connects),
            digest_errors: l(&s.digest_errors),
        }
    }

    /// Closes every connection now (outstanding commands fail with `Gone`); the next I/O
    /// connects again.
    pub fn disconnect(&self) {
        self.shared.drop_association("disconnected by the host");
    }

    fn ro_check(&self, op: IoKind, offset: u64, len: u64) -> Result<()> {
        if self.shared.fixed().caps.read_only {
            return Err(BlockError::new(ErrorKind::ReadOnly, op, offset, len));
        }
        Ok(())
    }

    /// Issues one command on this reactor's queue and checks its status.
    async fn command(
        &self,
        op: IoKind,
        offset: u64,
        len: u64,
        cmd: Command,
        xfer: Xfer,
    ) -> Result<Option<IoBuf>> {
        let s = &self.shared;
        let q = s.io_queue().await.map_err(|f| f.block(op, offset, len))?;
        let c = q
            .submit(cmd.to_sqe(0, s.params.nsid, Sgl::null()), xfer)
            .await
            .map_err(|f| f.block(op, offset, len))?;
        if !c.cqe.status.is_success() {
            return Err(status_error(c.cqe.status, op, offset, len));
        }
        Ok(c.buf)
    }

    /// Reads or writes `buf` at `offset` in commands of at most the transfer limit.
    async fn transfer(&self, write: Option<WriteFlags>, offset: u64, buf: IoBuf) -> Result<IoBuf> {
        let op = if write.is_some() {
            IoKind::Write
        } else {
            IoKind::Read
        };
        let len = buf.len() as u64;
        if write.is_some() {
            self.ro_check(op, offset, len)?;
        }
        check_range(&self.geometry(), op, offset, len)?;
        let f = self.shared.fixed();
        let bs = u64::from(f.block_size);
        let mut buf = buf;
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(u64::from(f.max_io));
            let rw = ReadWrite {
                slba: (offset + done) / bs,
                nlb: (n / bs - 1) as u16,
                fua: write.is_some_and(|w| w.fua),
                ..ReadWrite::default()
            };
            let w = Window::new(buf, done as usize, n as usize);
            let (cmd, xfer) = match write {
                Some(_) => (Command::Write(rw), Xfer::FromHost(w)),
                None => (Command::Read(rw), Xfer::ToHost(w)),
            };
            buf = self
                .command(op, offset, len, cmd, xfer)
                .await?
                .ok_or_else(|| {
                    BlockError::with_message(
                        ErrorKind::Io,
                        op,
                        offset,
                        len,
                        "the controller completed the command before its data moved",
                    )
                })?;
            done += n;
        }
        Ok(buf)
    }

    async fn do_flush(&self) -> Result<()> {
        if !self.shared.fixed().caps.flush {
            return Ok(());
        }
        self.command(IoKind::Flush, 0, 0, Command::Flush, Xfer::None)
            .await
            .map(drop)
    }

    async fn do_write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> Result<()> {
        let op = IoKind::WriteZeroes;
        self.ro_check(op, offset, len)?;
        check_range(&self.geometry(), op, offset, len)?;
        let f = self.shared.fixed();
        if !f.caps.write_zeroes {
            return Err(BlockError::new(ErrorKind::Unsupported, op, offset, len));
        }
        if flags.fast_only {
            return Err(BlockError::with_message(
                ErrorKind::NotFast,
                op,
                offset,
                len,
                "NVMe Write Zeroes does not promise to be fast",
            ));
        }
        let bs = u64::from(f.block_size);
        let (mut lba, end) = (offset / bs, (offset + len) / bs);
        while lba < end {
            let n = (end - lba).min(1 << 16);
            let wz = WriteZeroes {
                slba: lba,
                nlb: (n - 1) as u16,
                deac: flags.may_unmap,
                fua: flags.fua,
                ..WriteZeroes::default()
            };
            self.command(op, offset, len, Command::WriteZeroes(wz), Xfer::None)
                .await?;
            lba += n;
        }
        Ok(())
    }

    /// Fencing with NVMe reservations: this host registers `key` (replacing a key it held
    /// before) and takes a Write Exclusive reservation, preempting the holder if another
    /// host (an older nexus incarnation) holds it — which also removes that host's
    /// registration, so its writes fail with Reservation Conflict from then on.
    async fn do_fence(&self, key: u64) -> Result<()> {
        use proto_nvme::{
            ReservationAcquire, ReservationKeys, ReservationRegister, ReservationReport,
            ReservationStatus, rtype,
        };
        let op = IoKind::Fence;
        if key == 0 {
            return Err(BlockError::with_message(
                ErrorKind::InvalidArgument,
                op,
                0,
                0,
                "a fencing key must not be 0",
            ));
        }
        let keys = |crkey, other| {
            Xfer::FromHost(Window::whole(IoBuf::from_slice(
                &ReservationKeys { crkey, other }.encode(),
            )))
        };
        // Register, or replace the key this host registered before (IEKEY: whatever it was).
        let reg = |rrega, iekey| {
            Command::ReservationRegister(ReservationRegister {
                rrega,
                iekey,
                cptpl: 0,
            })
        };
        if self
            .command(op, 0, 0, reg(0, false), keys(0, key))
            .await
            .is_err()
        {
            self.command(op, 0, 0, reg(2, true), keys(0, key)).await?;
        }
        // Who holds the reservation now (extended format: fabrics host IDs are 128-bit).
        let len = 4096usize;
        let report = Command::ReservationReport(ReservationReport {
            numd: (len / 4 - 1) as u32,
            eds: true,
        });
        let buf = self
            .command(
                op,
                0,
                0,
                report,
                Xfer::ToHost(Window::whole(IoBuf::zeroed(len))),
            )
            .await?
            .ok_or_else(|| BlockError::with_message(ErrorKind::Io, op, 0, 0, "no report data"))?;
        let st = ReservationStatus::parse(&buf, true).map_err(|e| {
            BlockError::with_message(ErrorKind::Io, op, 0, 0, format!("reservation report: {e}"))
        })?;
        let holder = st.registrants.iter().find(|r| r.rcsts & 1 != 0);
        let acquire = |racqa| {
            Command::ReservationAcquire(ReservationAcquire {
                racqa,
                iekey: false,
                rtype: rtype::WRITE_EXCLUSIVE,
            })
        };
        match holder {
            Some(h) if h.rkey == key && st.rtype == rtype::WRITE_EXCLUSIVE => Ok(()),
            Some(h) => self
                .command(op, 0, 0, acquire(1), keys(key, h.rkey))
                .await
                .map(drop),
            None => self
                .command(op, 0, 0, acquire(0), keys(key, 0))
                .await
                .map(drop),
        }
    }

    async fn do_unmap(&self, offset: u64, len: u64) -> Result<()> {
        let op = IoKind::Unmap;
        self.ro_check(op, offset, len)?;
        check_range(&self.geometry(), op, offset, len)?;
        let f = self.shared.fixed();
        if !f.caps.unmap {
            return Err(BlockError::new(ErrorKind::Unsupported, op, offset, len));
        }
        let bs = u64::from(f.block_size);
        let (mut lba, end) = (offset / bs, (offset + len) / bs);
        while lba < end {
            // Up to 256 ranges of up to 2^32 - 1 blocks per command.
            let mut ranges = Vec::new();
            while lba < end && ranges.len() < 256 * proto_nvme::DSM_RANGE_LEN {
                let n = (end - lba).min(u64::from(u32::MAX));
                DsmRange {
                    context_attributes: 0,
                    nlb: n as u32,
                    slba: lba,
                }
                .encode_into(&mut ranges);
                lba += n;
            }
            let nr = ranges.len() / proto_nvme::DSM_RANGE_LEN;
            let dsm = DatasetManagement {
                nr: (nr - 1) as u8,
                ad: true,
                ..DatasetManagement::default()
            };
            let data = Window::whole(IoBuf::from_slice(&ranges));
            self.command(
                op,
                offset,
                len,
                Command::DatasetManagement(dsm),
                Xfer::FromHost(data),
            )
            .await?;
        }
        Ok(())
    }

    async fn do_reset(&self) -> Result<()> {
        self.shared.drop_association("reset requested");
        self.shared
            .io_queue()
            .await
            .map(drop)
            .map_err(|f| f.block(IoKind::Reset, 0, 0))
    }
}

impl BlockDevice for NvmfDevice {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "nvmf"
    }
    fn geometry(&self) -> Geometry {
        let f = self.shared.fixed();
        Geometry {
            block_size: f.block_size,
            num_blocks: self.shared.num_blocks.load(Ordering::Relaxed),
            optimal_io: f.max_io.min(128 * 1024).max(f.block_size),
            max_io: f.max_io,
        }
    }
    fn capabilities(&self) -> Capabilities {
        self.shared.fixed().caps
    }
    fn read(&self, offset: u64, buf: IoBuf) -> IoFuture<'_, IoBuf> {
        Box::pin(self.transfer(None, offset, buf))
    }
    fn write(&self, offset: u64, buf: IoBuf, flags: WriteFlags) -> IoFuture<'_, IoBuf> {
        Box::pin(self.transfer(Some(flags), offset, buf))
    }
    fn flush(&self) -> IoFuture<'_, ()> {
        Box::pin(self.do_flush())
    }
    fn unmap(&self, offset: u64, len: u64) -> IoFuture<'_, ()> {
        Box::pin(self.do_unmap(offset, len))
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> IoFuture<'_, ()> {
        Box::pin(self.do_write_zeroes(offset, len, flags))
    }
    fn reset(&self) -> IoFuture<'_, ()> {
        Box::pin(self.do_reset())
    }
    fn fence(&self, key: u64) -> IoFuture<'_, ()> {
        Box::pin(self.do_fence(key))
    }
}

/// Parses and opens the `nvmf://` device `uri` as device `name` on reactor `on` (blocking: see
/// [`NvmfDevice::open`]).
pub fn open_uri(
    name: &str,
    uri: &str,
    on: &reactor::ReactorHandle,
) -> std::result::Result<Device, OpenError> {
    let params = NvmfParams::parse(uri)?;
    match NvmfDevice::open(name, params, on) {
        Ok(d) => Ok(Arc::new(d)),
        Err(error) => Err(OpenError::Device {
            uri: uri.to_string(),
            error,
        }),
    }
}
