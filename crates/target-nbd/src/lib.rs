//! Ballast's NBD server.
//!
//! Serves [`blockdev`] devices as named exports over the NBD protocol (fixed newstyle), with
//! the wire format in [`proto_nbd`]. Negotiation supports `NBD_OPT_GO`, `INFO`, `LIST`,
//! `ABORT`, `EXPORT_NAME`, `STRUCTURED_REPLY` and the `base:allocation` metadata context; the
//! transmission phase READ, WRITE, FLUSH, TRIM, WRITE_ZEROES (with `FAST_ZERO` and
//! `NO_HOLE`), CACHE, BLOCK_STATUS and DISC, with FUA. Exports may be read-only.
//!
//! Connections are accepted by a [`reactor::Server`] on one reactor and spread round-robin
//! over all reactors; each connection then lives entirely on its reactor. The listener's
//! [`ListenerLimits`] cap the connections, bound the handshake (a client that has not chosen
//! an export by then is closed) and optionally the time a connection may sit idle. Requests on a connection run concurrently
//! (bounded: [`MAX_IN_FLIGHT`] requests and [`MAX_IN_FLIGHT_BYTES`] of payload) and replies go
//! out in completion order. Every device is shared by all connections, and a flush on one makes
//! the writes completed on all of them durable, so exports advertise `CAN_MULTI_CONN`.
//!
//! ## Bad input
//! A malformed handshake or a request with a bad magic closes that connection only. A request
//! the server can parse but not honour (unknown command or flag, misaligned or out-of-range
//! range, write to a read-only export, payload beyond [`MAX_PAYLOAD`]) is answered with the
//! protocol's errno, and the connection continues. Payloads above [`MAX_PAYLOAD`] cannot be
//! skipped safely and close the connection after the error reply. Nothing is allocated from an
//! untrusted length beyond these bounds.

#![forbid(unsafe_code)]

mod conn;
mod errors;
mod negotiate;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use blockdev::Device;
use reactor::{ListenerLimits, ReactorHandle, Server};

pub use errors::errno_of;

/// Largest read or write payload accepted (and advertised as the maximum block size).
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Requests processed concurrently per connection.
pub const MAX_IN_FLIGHT: usize = 128;
/// Payload bytes buffered concurrently per connection.
pub const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;
/// Connections served at once by default ([`ListenerLimits::max_connections`]); more are
/// closed right after accept.
pub const MAX_CONNECTIONS: usize = ListenerLimits::MAX_CONNECTIONS;
/// Block status descriptors sent in one reply (the client asks again for the rest).
pub const MAX_EXTENTS: usize = 1024;

/// One named export.
pub struct Export {
    name: String,
    device: Device,
    read_only: bool,
    description: String,
    connections: AtomicU32,
    removed: AtomicBool,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("name", &self.name)
            .field("read_only", &self.read_only)
            .finish()
    }
}

impl Export {
    fn size(&self) -> u64 {
        self.device.geometry().size()
    }
}

/// What [`NbdServer::exports`] reports about an export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    /// Export name.
    pub name: String,
    /// Name of the device it serves.
    pub device: String,
    /// Read-only.
    pub read_only: bool,
    /// Connections currently open to it.
    pub connections: u32,
}

/// The server: a set of exports and the connections to them.
pub struct NbdServer {
    exports: RwLock<BTreeMap<String, Arc<Export>>>,
    /// The accept loop and the live connections.
    server: Arc<Server>,
}

impl std::fmt::Debug for NbdServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdServer")
            .field(
                "exports",
                &self.exports.read().map(|e| e.len()).unwrap_or(0),
            )
            .finish()
    }
}

/// Why an export could not be added or removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportError {
    /// The name is taken.
    Exists(String),
    /// No such export.
    NotFound(String),
    /// The name is empty, too long or contains control characters.
    BadName(String),
}

impl std::fmt::Display for ExportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExportError::Exists(n) => write!(f, "export {n:?} already exists"),
            ExportError::NotFound(n) => write!(f, "export {n:?} not found"),
            ExportError::BadName(n) => {
                write!(
                    f,
                    "bad export name {n:?}: 1 to 256 printable characters, no '/' or '?'"
                )
            }
        }
    }
}

impl std::error::Error for ExportError {}

impl NbdServer {
    /// A server with no exports and the default [`ListenerLimits`].
    pub fn new() -> Arc<NbdServer> {
        NbdServer::with_limits(ListenerLimits::default())
    }

    /// A server with no exports whose listener enforces `limits`.
    pub fn with_limits(limits: ListenerLimits) -> Arc<NbdServer> {
        Arc::new(NbdServer {
            exports: RwLock::new(BTreeMap::new()),
            server: Server::new("nbd", limits),
        })
    }

    /// Adds an export named `name` serving `device`.
    pub fn add_export(
        &self,
        name: &str,
        device: Device,
        read_only: bool,
    ) -> Result<(), ExportError> {
        if name.is_empty()
            || name.len() > 256
            || name.chars().any(|c| c.is_control() || c == '/' || c == '?')
        {
            return Err(ExportError::BadName(name.to_string()));
        }
        let mut ex = self.exports.write().expect("exports lock");
        if ex.contains_key(name) {
            return Err(ExportError::Exists(name.to_string()));
        }
        let read_only = read_only || device.capabilities().read_only;
        let description = format!("Ballast {} device {}", device.kind(), device.name());
        ex.insert(
            name.to_string(),
            Arc::new(Export {
                name: name.to_string(),
                device,
                read_only,
                description,
                connections: AtomicU32::new(0),
                removed: AtomicBool::new(false),
            }),
        );
        Ok(())
    }

    /// Removes an export. Connections to it get `ESHUTDOWN` on their next request and close.
    pub fn remove_export(&self, name: &str) -> Result<(), ExportError> {
        let e = self
            .exports
            .write()
            .expect("exports lock")
            .remove(name)
            .ok_or_else(|| ExportError::NotFound(name.to_string()))?;
        e.removed.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Whether any export serves the device named `device`.
    pub fn device_in_use(&self, device: &str) -> Option<String> {
        self.exports
            .read()
            .expect("exports lock")
            .values()
            .find(|e| e.device.name() == device)
            .map(|e| e.name.clone())
    }

    /// The exports, by name.
    pub fn exports(&self) -> Vec<ExportInfo> {
        self.exports
            .read()
            .expect("exports lock")
            .values()
            .map(|e| ExportInfo {
                name: e.name.clone(),
                device: e.device.name().to_string(),
                read_only: e.read_only,
                connections: e.connections.load(Ordering::Relaxed),
            })
            .collect()
    }

    fn lookup(&self, name: &str) -> Option<Arc<Export>> {
        self.exports
            .read()
            .expect("exports lock")
            .get(name)
            .cloned()
    }

    fn export_names(&self) -> Vec<String> {
        self.exports
            .read()
            .expect("exports lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Starts accepting on `listener` (on reactor `reactors[0]`), handing connections to the
    /// reactors round-robin.
    pub fn serve(self: &Arc<Self>, listener: std::net::TcpListener, reactors: Vec<ReactorHandle>) {
        let nbd = self.clone();
        self.server.serve(listener, reactors, move |c| {
            let nbd = nbd.clone();
            async move { conn::serve_connection(&nbd, c).await }
        });
    }

    /// Stops accepting and shuts every open connection down (their in-flight requests still
    /// complete on the device).
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
