//! Ballast's NVMe over Fabrics target on the TCP transport.
//!
//! Serves [`blockdev`] devices as namespaces of NVM subsystems, with the wire format in
//! [`proto_nvme`]. The discovery subsystem (`nqn.2014-08.org.nvmexpress.discovery`) lists
//! every NVM subsystem a host may reach. Each TCP connection is one queue: a Connect on
//! QID 0 creates a controller (dynamic controller model, CNTLID allocated by the subsystem);
//! I/O queues join it with Connect carrying that CNTLID and the same host NQN.
//!
//! Connections are accepted by a [`reactor::Server`] on one reactor and handed round-robin to
//! all reactors; a queue then lives on its reactor. The listener's [`ListenerLimits`] cap the
//! connections, bound the setup (ICReq and Connect) and optionally the time a queue may sit
//! idle. Controller and subsystem state is shared behind short-held
//! locks; the I/O path reads namespaces through a per-queue cache.
//!
//! Supported: ICReq/ICResp with header and data digests, in-capsule data ([`IO_IN_CAPSULE`]
//! bytes on I/O queues), R2T/H2CData for larger writes, C2HData for reads; Property Get/Set
//! (CAP, VS, CC, CSTS), Identify (controller, namespace, active namespace list, namespace
//! identification descriptors), Get/Set Features (number of queues, keep alive timer, async
//! event configuration, volatile write cache, arbitration, power management), Get Log Page
//! (error, SMART/health, changed namespace list, ANA, discovery), Keep Alive with timeout,
//! Async Event Requests, Abort (never aborts), Read, Write, Flush, Write Zeroes, Dataset
//! Management (deallocate), reservations, and per-subsystem host allow-lists.
//!
//! ## Bad input
//! A PDU that breaks framing (bad type, lengths, header digest, sequence, data out of range,
//! limits) gets a C2HTermReq with the Fatal Error Status from the codec and the connection
//! closes; other connections are unaffected. A data digest error fails the command with
//! Transient Transport Error. Commands the target can parse but not honour (unknown opcode,
//! absent namespace, LBAs out of range, bad fields) complete with the matching NVMe status
//! and are recorded in the Error Information log. Nothing is allocated from an untrusted
//! length beyond [`MDTS_BYTES`] per command and [`MAX_IN_FLIGHT_BYTES`] per connection.

#![forbid(unsafe_code)]

mod cmd;
mod conn;
mod errors;
mod queue;
mod resv;
mod subsys;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use blockdev::Device;
use blockdev::fence::Reservations;
use proto_nvme::{AsyncEvent, DISCOVERY_NQN, NqnKind, validate_nqn};
use reactor::{ListenerLimits, ReactorHandle, Server};

pub use errors::status_of;
use subsys::{Namespace, Subsystem, stable_id};

/// Largest data transfer of one command (MDTS = 8: 2^8 pages of 4 KiB).
pub const MDTS_BYTES: u32 = 1 << 20;
/// MDTS as advertised (units of the 4 KiB minimum page size, log2).
pub const MDTS: u8 = 8;
/// In-capsule data accepted on I/O queues (IOCCSZ = (this + 64) / 16).
pub const IO_IN_CAPSULE: u32 = 8192;
/// Largest data of one H2CData PDU (MAXH2CDATA).
pub const MAXH2CDATA: u32 = 128 * 1024;
/// Entries per queue (CAP.MQES + 1).
pub const MAX_QUEUE_SIZE: u32 = 128;
/// I/O queues per controller.
pub const MAX_IO_QUEUES: u16 = 32;
/// Payload bytes buffered concurrently per connection.
pub const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;
/// Connections served at once by default ([`ListenerLimits::max_connections`]); more are
/// closed right after accept.
pub const MAX_CONNECTIONS: usize = ListenerLimits::MAX_CONNECTIONS;
/// Largest NSID (Identify Controller NN).
pub const MAX_NAMESPACES: u32 = 1024;
/// Async Event Requests held per controller (AERL + 1).
pub const MAX_AER: usize = 4;
/// Error Information log entries kept per controller (ELPE + 1).
pub const ERROR_LOG_ENTRIES: usize = 16;
/// NQN prefix of subsystems made for single-device exports: `PREFIX:NAME`.
pub const EXPORT_NQN_PREFIX: &str = "nqn.2024-01.io.ballast";

/// The NQN of the subsystem exporting one device under `name`.
pub fn export_nqn(name: &str) -> String {
    format!("{EXPORT_NQN_PREFIX}:{name}")
}

/// Why a management request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NvmfError {
    /// The subsystem or namespace exists.
    Exists(String),
    /// No such subsystem or namespace.
    NotFound(String),
    /// Malformed NQN, NSID or argument.
    Invalid(String),
}

impl std::fmt::Display for NvmfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NvmfError::Exists(s) | NvmfError::NotFound(s) | NvmfError::Invalid(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for NvmfError {}

/// A namespace as [`NvmfTarget::subsystems`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceInfo {
    /// Namespace ID.
    pub nsid: u32,
    /// Name of the device it serves.
    pub device: String,
    /// Writes are refused.
    pub read_only: bool,
    /// NGUID, hex.
    pub nguid: String,
}

/// A live controller as [`NvmfTarget::subsystems`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerInfo {
    /// Controller ID.
    pub cntlid: u16,
    /// Host NQN.
    pub hostnqn: String,
    /// Host identifier (UUID form).
    pub hostid: String,
    /// Open queues (admin included).
    pub queues: u32,
}

/// A subsystem as [`NvmfTarget::subsystems`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubsystemInfo {
    /// NQN.
    pub nqn: String,
    /// Host NQNs allowed to connect; empty: any host.
    pub allowed_hosts: Vec<String>,
    /// Namespaces by NSID.
    pub namespaces: Vec<NamespaceInfo>,
    /// Live controllers.
    pub controllers: Vec<ControllerInfo>,
}

/// The target: subsystems and the connections to them.
pub struct NvmfTarget {
    subsystems: RwLock<BTreeMap<String, Arc<Subsystem>>>,
    discovery: Arc<Subsystem>,
    listen: Mutex<Option<SocketAddr>>,
    /// The accept loop and the live connections.
    server: Arc<Server>,
    genctr: AtomicU64,
    started: Instant,
}

impl std::fmt::Debug for NvmfTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmfTarget")
            .field(
                "subsystems",
                &self.subsystems.read().map(|s| s.len()).unwrap_or(0),
            )
            .finish()
    }
}

fn check_nqn(nqn: &str) -> Result<(), NvmfError> {
    match validate_nqn(nqn) {
        Ok(NqnKind::Discovery) => Err(NvmfError::Invalid(format!(
            "{nqn:?} is the discovery subsystem's NQN"
        ))),
        Ok(_) => Ok(()),
        Err(e) => Err(NvmfError::Invalid(format!("bad NQN {nqn:?}: {e}"))),
    }
}

impl NvmfTarget {
    /// A target with only the discovery subsystem and the default [`ListenerLimits`].
    pub fn new() -> Arc<NvmfTarget> {
        NvmfTarget::with_limits(ListenerLimits::default())
    }

    /// A target with only the discovery subsystem whose listener enforces `limits`.
    pub fn with_limits(limits: ListenerLimits) -> Arc<NvmfTarget> {
        Arc::new(NvmfTarget {
            subsystems: RwLock::new(BTreeMap::new()),
            discovery: Arc::new(Subsystem::new(DISCOVERY_NQN, true, &[])),
            listen: Mutex::new(None),
            server: Server::new("nvmf", limits),
            genctr: AtomicU64::new(1),
            started: Instant::now(),
        })
    }

    fn subsystem(&self, nqn: &str) -> Result<Arc<Subsystem>, NvmfError> {
        self.subsystems
            .read()
            .expect("subsystems lock")
            .get(nqn)
            .cloned()
            .ok_or_else(|| NvmfError::NotFound(format!("subsystem {nqn:?} not found")))
    }

    pub(crate) fn find(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        if nqn == DISCOVERY_NQN {
            return Some(self.discovery.clone());
        }
        self.subsystems
            .read()
            .expect("subsystems lock")
            .get(nqn)
            .cloned()
    }

    /// The NVM subsystems `hostnqn` may connect to (for the discovery log).
    pub(crate) fn visible_to(&self, hostnqn: &str) -> Vec<String> {
        self.subsystems
            .read()
            .expect("subsystems lock")
            .values()
            .filter(|s| s.host_allowed(hostnqn))
            .map(|s| s.nqn.clone())
            .collect()
    }

    pub(crate) fn genctr(&self) -> u64 {
        self.genctr.load(Ordering::Relaxed)
    }

    pub(crate) fn uptime_hours(&self) -> u64 {
        self.started.elapsed().as_secs() / 3600
    }

    pub(crate) fn listen_addr(&self) -> Option<SocketAddr> {
        *self.listen.lock().expect("listen lock")
    }

    fn discovery_changed(&self) {
        self.genctr.fetch_add(1, Ordering::Relaxed);
        for c in self.discovery.controllers() {
            c.post_event(AsyncEvent::DISCOVERY_CHANGE);
        }
    }

    /// Creates an NVM subsystem with no namespaces. `allowed_hosts` empty admits any host.
    pub fn create_subsystem(&self, nqn: &str, allowed_hosts: &[String]) -> Result<(), NvmfError> {
        check_nqn(nqn)?;
        for h in allowed_hosts {
            validate_nqn(h).map_err(|e| NvmfError::Invalid(format!("bad host NQN {h:?}: {e}")))?;
        }
        {
            let mut s = self.subsystems.write().expect("subsystems lock");
            if s.contains_key(nqn) {
                return Err(NvmfError::Exists(format!(
                    "subsystem {nqn:?} already exists"
                )));
            }
            s.insert(
                nqn.to_string(),
                Arc::new(Subsystem::new(nqn, false, allowed_hosts)),
            );
        }
        self.discovery_changed();
        Ok(())
    }

    /// Removes a subsystem; its controllers are torn down (their connections close).
    pub fn destroy_subsystem(&self, nqn: &str) -> Result<(), NvmfError> {
        let s = self
            .subsystems
            .write()
            .expect("subsystems lock")
            .remove(nqn)
            .ok_or_else(|| NvmfError::NotFound(format!("subsystem {nqn:?} not found")))?;
        s.removed.store(true, Ordering::SeqCst);
        for c in s.controllers() {
            c.teardown();
        }
        self.discovery_changed();
        Ok(())
    }

    /// Adds a host NQN to a subsystem's allow-list.
    pub fn allow_host(&self, nqn: &str, host: &str) -> Result<(), NvmfError> {
        validate_nqn(host)
            .map_err(|e| NvmfError::Invalid(format!("bad host NQN {host:?}: {e}")))?;
        let s = self.subsystem(nqn)?;
        s.hosts.lock().expect("hosts lock").insert(host.to_string());
        self.discovery_changed();
        Ok(())
    }

    /// Removes a host NQN from the allow-list (an empty list admits every host); that host's
    /// controllers are torn down.
    pub fn disallow_host(&self, nqn: &str, host: &str) -> Result<(), NvmfError> {
        let s = self.subsystem(nqn)?;
        if !s.hosts.lock().expect("hosts lock").remove(host) {
            return Err(NvmfError::NotFound(format!(
                "host {host:?} is not on the allow-list of {nqn:?}"
            )));
        }
        for c in s.controllers() {
            if !s.host_allowed(&c.hostnqn) {
                c.teardown();
            }
        }
        self.discovery_changed();
        Ok(())
    }

    /// Adds `device` as a namespace of subsystem `nqn`, at `nsid` or the lowest free NSID;
    /// returns the NSID. Connected controllers get a namespace-changed event. NVMe
    /// reservations on the namespace are kept in `fencing`, the device's fencing state, which
    /// its local users share.
    pub fn add_namespace(
        &self,
        nqn: &str,
        nsid: Option<u32>,
        device: Device,
        fencing: Arc<Reservations>,
        read_only: bool,
    ) -> Result<u32, NvmfError> {
        let s = self.subsystem(nqn)?;
        let read_only = read_only || device.capabilities().read_only;
        let nsid = {
            let mut ns = s.namespaces.write().expect("namespaces lock");
            let nsid = match nsid {
                Some(n) if n == 0 || n > MAX_NAMESPACES => {
                    return Err(NvmfError::Invalid(format!(
                        "NSID {n} outside 1..={MAX_NAMESPACES}"
                    )));
                }
                Some(n) if ns.contains_key(&n) => {
                    return Err(NvmfError::Exists(format!(
                        "namespace {n} of {nqn:?} already exists"
                    )));
                }
                Some(n) => n,
                None => (1..=MAX_NAMESPACES)
                    .find(|n| !ns.contains_key(n))
                    .ok_or_else(|| NvmfError::Invalid(format!("{nqn:?} has no free NSID")))?,
            };
            ns.insert(
                nsid,
                Arc::new(Namespace {
                    nsid,
                    device,
                    read_only,
                    nguid: stable_id("nguid", nqn, nsid),
                    uuid: {
                        let mut u = stable_id("uuid", nqn, nsid);
                        u[6] = (u[6] & 0x0f) | 0x40; // version 4 layout
                        u[8] = (u[8] & 0x3f) | 0x80; // RFC 4122 variant
                        u
                    },
                    resv: fencing,
                }),
            );
            nsid
        };
        s.namespace_changed(nsid);
        Ok(nsid)
    }

    /// Removes a namespace; I/O to it then fails with Invalid Namespace and connected
    /// controllers get a namespace-changed event.
    pub fn remove_namespace(&self, nqn: &str, nsid: u32) -> Result<(), NvmfError> {
        let s = self.subsystem(nqn)?;
        s.namespaces
            .write()
            .expect("namespaces lock")
            .remove(&nsid)
            .ok_or_else(|| NvmfError::NotFound(format!("namespace {nsid} of {nqn:?} not found")))?;
        s.namespace_changed(nsid);
        Ok(())
    }

    /// The subsystem and NSID serving the device named `device`, if any.
    pub fn device_in_use(&self, device: &str) -> Option<(String, u32)> {
        let subs = self.subsystems.read().expect("subsystems lock");
        for s in subs.values() {
            for ns in s.namespaces.read().expect("namespaces lock").values() {
                if ns.device.name() == device {
                    return Some((s.nqn.clone(), ns.nsid));
                }
            }
        }
        None
    }

    /// The NVM subsystems, by NQN.
    pub fn subsystems(&self) -> Vec<SubsystemInfo> {
        let subs = self.subsystems.read().expect("subsystems lock");
        subs.values()
            .map(|s| SubsystemInfo {
                nqn: s.nqn.clone(),
                allowed_hosts: s
                    .hosts
                    .lock()
                    .expect("hosts lock")
                    .iter()
                    .cloned()
                    .collect(),
                namespaces: s
                    .namespaces
                    .read()
                    .expect("namespaces lock")
                    .values()
                    .map(|n| NamespaceInfo {
                        nsid: n.nsid,
                        device: n.device.name().to_string(),
                        read_only: n.read_only,
                        nguid: n.nguid.iter().map(|b| format!("{b:02x}")).collect(),
                    })
                    .collect(),
                controllers: s
                    .controllers()
                    .iter()
                    .map(|c| ControllerInfo {
                        cntlid: c.cntlid,
                        hostnqn: c.hostnqn.clone(),
                        hostid: proto_nvme::HostId(c.hostid).to_string(),
                        queues: c.queues.lock().expect("queues lock").len() as u32,
                    })
                    .collect(),
            })
            .collect()
    }

    /// Starts accepting on `listener` (on reactor `reactors[0]`), handing connections to the
    /// reactors round-robin.
    pub fn serve(self: &Arc<Self>, listener: std::net::TcpListener, reactors: Vec<ReactorHandle>) {
        *self.listen.lock().expect("listen lock") = listener.local_addr().ok();
        let target = self.clone();
        self.server.serve(listener, reactors, move |c| {
            conn::serve_connection(target.clone(), c)
        });
    }

    /// Stops accepting and shuts every open connection down.
    pub fn stop(&self) {
        self.server.stop();
    }

    /// Connections currently open.
    pub fn connection_count(&self) -> usize {
        self.server.connection_count()
    }

    /// The listener's counters (open, accepted, refused at the cap, accept errors).
    pub fn listener_stats(&self) -> reactor::ServerStats {
        self.server.stats()
    }
}
