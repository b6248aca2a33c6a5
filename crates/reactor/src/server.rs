//! The accept loop every TCP server of the data plane shares: a connection cap, per-connection
//! tasks spread over the reactors, accept errors survived, and a stop that wakes the loop and
//! shuts every live connection down.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::core::ReactorHandle;
use crate::net::{ShutdownHandle, TcpListener, TcpStream};

/// What a listener allows its connections: how many at once, how long to finish the
/// protocol's handshake, how long to stay idle. The server enforces the cap; the protocol
/// enforces the times (it knows when its handshake ends and when a connection is idle).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Connections served at once; more are closed right after accept.
    pub max_connections: usize,
    /// Time from accept until the handshake is done (NBD: the export chosen; NVMe/TCP:
    /// ICReq and Connect); a connection still negotiating then is closed.
    pub negotiate_timeout: Duration,
    /// Time a negotiated connection may go with no request in flight and none arriving
    /// before it is closed; `None`: no limit.
    pub idle_timeout: Option<Duration>,
}

impl ListenerLimits {
    /// Default cap on connections per listener.
    pub const MAX_CONNECTIONS: usize = 1024;
    /// Default handshake time.
    pub const NEGOTIATE_TIMEOUT: Duration = Duration::from_secs(10);
}

impl Default for ListenerLimits {
    fn default() -> ListenerLimits {
        ListenerLimits {
            max_connections: ListenerLimits::MAX_CONNECTIONS,
            negotiate_timeout: ListenerLimits::NEGOTIATE_TIMEOUT,
            idle_timeout: None,
        }
    }
}

/// An accepted connection, as a [`Server`] hands it to the protocol's handler on the
/// reactor that serves it.
#[derive(Debug)]
pub struct Connection {
    /// The socket.
    pub stream: TcpStream,
    /// The peer's address.
    pub peer: SocketAddr,
    /// Shuts this connection down from anywhere (the server's stop uses the same handle).
    pub shutdown: ShutdownHandle,
    /// The listener's limits.
    pub limits: ListenerLimits,
}

/// Counters of a [`Server`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections open now.
    pub open: usize,
    /// Connections accepted since the start (including refused ones).
    pub accepted: u64,
    /// Connections closed at once because [`ListenerLimits::max_connections`] were open.
    pub refused: u64,
    /// Accepts that failed (descriptors exhausted, ...).
    pub accept_errors: u64,
}

/// One listener's accept loop and its live connections.
///
/// [`serve`](Self::serve) accepts on the first reactor given and starts each connection's
/// handler on the next reactor in turn, where the connection then lives. At the cap a new
/// connection is closed right after accept. An accept that fails (`EMFILE`, `ENFILE`,
/// `ENOBUFS`, `ENOMEM`: descriptors or memory used up) is retried after a pause, so the loop
/// neither spins nor ends; the error is logged at most once a second. [`stop`](Self::stop)
/// ends the loop and shuts every live connection down (their handlers see end of stream and
/// finish what is in flight).
pub struct Server {
    name: String,
    limits: ListenerLimits,
    conns: Mutex<BTreeMap<u64, ShutdownHandle>>,
    next_id: AtomicU64,
    stopping: AtomicBool,
    listener: Mutex<Option<ShutdownHandle>>,
    accepted: AtomicU64,
    refused: AtomicU64,
    accept_errors: AtomicU64,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Removes a connection from the live set when its task ends (or is dropped at shutdown).
struct Registered {
    server: Arc<Server>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.server.lock_conns().remove(&self.id);
    }
}

impl Server {
    /// A server named `name` (in log lines) with `limits`.
    pub fn new(name: impl Into<String>, limits: ListenerLimits) -> Arc<Server> {
        Arc::new(Server {
            name: name.into(),
            limits,
            conns: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            listener: Mutex::new(None),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
        })
    }

    /// The limits.
    pub fn limits(&self) -> ListenerLimits {
        self.limits
    }

    fn lock_conns(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ShutdownHandle>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts accepting on `listener` on `reactors[0]`; each connection runs
    /// `handler(connection)` as a task on the next reactor in turn. Returns at once.
    pub fn serve<H, Fut>(
        self: &Arc<Self>,
        listener: std::net::TcpListener,
        reactors: Vec<ReactorHandle>,
        handler: H,
    ) where
        H: Fn(Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        assert!(!reactors.is_empty(), "a server needs a reactor");
        let mut listener = TcpListener::from_std(listener);
        *self.listener.lock().unwrap_or_else(|e| e.into_inner()) = Some(listener.shutdown_handle());
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        let server = self.clone();
        let handler = Arc::new(handler);
        reactors[0].clone().spawn(move || async move {
            server.accept_loop(listener, reactors, handler).await;
        });
    }

    async fn accept_loop<H, Fut>(
        self: Arc<Self>,
        listener: TcpListener,
        reactors: Vec<ReactorHandle>,
        handler: Arc<H>,
    ) where
        H: Fn(Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let mut next = 0usize;
        let mut last_log: Option<Instant> = None;
        loop {
            let accepted = listener.accept().await;
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let (mut stream, peer) = match accepted {
                Ok(s) => s,
                Err(e) => {
                    self.accept_errors.fetch_add(1, Ordering::Relaxed);
                    if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        eprintln!(
                            "{}: accept failed: {e} ({} connections open); retrying",
                            self.name,
                            self.lock_conns().len()
                        );
                        last_log = Some(Instant::now());
                    }
                    if !transient_without_pause(&e) {
                        crate::sleep(ACCEPT_BACKOFF).await;
                    }
                    continue;
                }
            };
            self.accepted.fetch_add(1, Ordering::Relaxed);
            let shutdown = stream.shutdown_handle();
            let id = {
                let mut conns = self.lock_conns();
                if conns.len() >= self.limits.max_connections {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    drop(conns);
                    drop(stream);
                    continue;
                }
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                conns.insert(id, shutdown.clone());
                id
            };
            let conn = Connection {
                stream,
                peer,
                shutdown,
                limits: self.limits,
            };
            let reg = Registered {
                server: self.clone(),
                id,
            };
            let h = handler.clone();
            let target = &reactors[next % reactors.len()];
            next = next.wrapping_add(1);
            target.spawn(move || {
                let fut = h(conn);
                async move {
                    let _reg = reg;
                    fut.await;
                }
            });
        }
    }

    /// Stops accepting and shuts every live connection down. Idempotent.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(l) = &*self.listener.lock().unwrap_or_else(|e| e.into_inner()) {
            l.shutdown();
        }
        for h in self.lock_conns().values() {
            h.shutdown();
        }
    }

    /// Whether [`stop`](Self::stop) was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn connection_count(&self) -> usize {
        self.lock_conns().len()
    }

    /// The counters.
    pub fn stats(&self) -> ServerStats {
        ServerStats {
            open: self.connection_count(),
            accepted: self.accepted.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            accept_errors: self.accept_errors.load(Ordering::Relaxed),
        }
    }
}

/// Accept errors that concern only the connection being accepted (it was reset before we
/// took it): the next accept may succeed at once.
fn transient_without_pause(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED) | Some(libc::EINTR) | Some(libc::EPROTO)
    )
}

/// What an idle limit watches on one connection: requests seen and requests in flight.
/// The protocol calls [`request`](Self::request) for every request it parses and
/// [`done`](Self::done) when one completes; [`watch`](Self::watch) closes the connection once
/// a whole limit passed with nothing in flight and no request arriving (a peer that sends a
/// request a byte at a time never completes one, so it is idle too). Costs two cell updates
/// per request and a timer tick a quarter of the limit apart.
#[derive(Debug, Default)]
pub struct IdleWatch {
    seen: std::cell::Cell<u64>,
    busy: std::cell::Cell<u64>,
}

impl IdleWatch {
    /// A request arrived (and is now in flight).
    pub fn request(&self) {
        self.seen.set(self.seen.get().wrapping_add(1));
        self.busy.set(self.busy.get() + 1);
    }

    /// A request completed.
    pub fn done(&self) {
        self.busy.set(self.busy.get().saturating_sub(1));
    }

    /// Spawns, on this reactor, the task that shuts the connection down when it has been idle
    /// for `limit`; it ends with the connection (when `self` is dropped) or after shutting it
    /// down.
    pub fn watch(self: &std::rc::Rc<Self>, limit: Duration, shutdown: ShutdownHandle) {
        let weak = std::rc::Rc::downgrade(self);
        let tick = (limit / 4).max(Duration::from_millis(10));
        crate::spawn_local(async move {
            let mut idle = Duration::ZERO;
            let mut last_seen = None;
            loop {
                crate::sleep(tick).await;
                let Some(w) = weak.upgrade() else { return };
                if !shutdown.is_open() {
                    return;
                }
                let seen = w.seen.get();
                if w.busy.get() == 0 && last_seen == Some(seen) {
                    idle += tick;
                    if idle >= limit {
                        shutdown.shutdown();
                        return;
                    }
                } else {
                    idle = Duration::ZERO;
                }
                last_seen = Some(seen);
            }
        });
    }
}
