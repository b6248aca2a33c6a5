//! TCP through the reactor's ring.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use io_uring::{opcode, types};

use crate::buf::{StableBuf, StableBufMut};
use crate::op::{self, Op};

/// Shuts a socket down from any thread, for as long as the socket is open, and does nothing
/// once it is closed: obtained from [`TcpStream::shutdown_handle`] or
/// [`TcpListener::shutdown_handle`]. Lets a server stop its live connections (or wake the
/// accept it is blocked in) without owning them, and without the raw descriptor that, once
/// closed and reused, would shut down some other socket.
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    /// The descriptor while the socket is open; `None` once its owner let it go.
    fd: Arc<Mutex<Option<RawFd>>>,
}

impl ShutdownHandle {
    /// Shuts both directions down: a pending receive or accept completes (end of stream, or
    /// an error for an accept), and the peer sees the connection end. Does nothing after the
    /// socket was closed.
    pub fn shutdown(&self) {
        let fd = self.fd.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fd) = *fd {
            // SAFETY: shutdown(2) takes no memory. `fd` is open: its owner (a `HandleGuard`)
            // sets it to `None` under this lock before the socket is closed, and we hold the
            // lock, so the descriptor cannot be closed and reused under us.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
    }

    /// Whether the socket is still open.
    pub fn is_open(&self) -> bool {
        self.fd.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }
}

/// Held by a socket that gave out [`ShutdownHandle`]s: disarms them when dropped, which a
/// socket type ensures happens before its descriptor closes (it is declared before the
/// descriptor's owner, and fields drop in declaration order).
#[derive(Debug)]
struct HandleGuard(ShutdownHandle);

impl HandleGuard {
    fn new(fd: RawFd) -> HandleGuard {
        HandleGuard(ShutdownHandle {
            fd: Arc::new(Mutex::new(Some(fd))),
        })
    }
}

impl Drop for HandleGuard {
    fn drop(&mut self) {
        *self.0.fd.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// A listening TCP socket whose accepts go through the ring.
#[derive(Debug)]
pub struct TcpListener {
    /// Before `inner`: disarms the shutdown handles before the socket closes.
    guard: Option<HandleGuard>,
    inner: std::net::TcpListener,
}

impl TcpListener {
    /// Binds (with `SO_REUSEADDR`, as std does) to `addr`.
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        Ok(TcpListener::from_std(std::net::TcpListener::bind(addr)?))
    }

    /// Wraps an already bound std listener.
    pub fn from_std(inner: std::net::TcpListener) -> TcpListener {
        TcpListener { guard: None, inner }
    }

    /// A handle that shuts this listener down from any thread, waking a pending
    /// [`accept`](Self::accept) with an error; inert once the listener is dropped.
    pub fn shutdown_handle(&mut self) -> ShutdownHandle {
        let fd = self.inner.as_raw_fd();
        self.guard
            .get_or_insert_with(|| HandleGuard::new(fd))
            .0
            .clone()
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Accepts one connection.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (r, res) = op::accept(self.inner.as_raw_fd()).await;
        let fd = r? as RawFd;
        // SAFETY: the kernel returned a fresh descriptor that nobody else owns.
        let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
        let peer = stream.peer_addr().unwrap_or_else(|_| {
            let _ = &res.addr;
            SocketAddr::from(([0, 0, 0, 0], 0))
        });
        let _ = stream.set_nodelay(true);
        Ok((TcpStream::from_std(stream), peer))
    }
}

/// A connected TCP stream; every receive and send is a ring operation. `Send`, so a stream
/// accepted on one reactor can be handed to another.
#[derive(Debug)]
pub struct TcpStream {
    /// Before `inner`: disarms the shutdown handles before the socket closes.
    guard: Option<HandleGuard>,
    inner: std::net::TcpStream,
}

impl TcpStream {
    /// Connects (blocking connect, then ring I/O).
    pub fn connect(addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
        let s = std::net::TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        Ok(TcpStream::from_std(s))
    }

    /// Connects through the ring (`IORING_OP_CONNECT`): the reactor keeps running while the
    /// handshake is under way. Bound it with [`crate::sync::timeout`]; dropping the future
    /// cancels the attempt and closes the socket once the kernel lets go of it.
    pub async fn connect_async(addr: SocketAddr) -> io::Result<TcpStream> {
        let (domain, raw) = sockaddr_of(&addr);
        // SAFETY: plain syscall; the result is checked and then owned.
        let fd = unsafe {
            libc::socket(
                domain,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                libc::IPPROTO_TCP,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let res = ConnectRes { addr: raw, sock };
        let entry = opcode::Connect::new(
            types::Fd(fd),
            (&*res.addr.0 as *const libc::sockaddr_storage).cast(),
            res.addr.1,
        )
        .build();
        // SAFETY: the address is boxed in `res`, and the socket stays open in `res`, until
        // the kernel completes the operation (or it is parked in the reactor if dropped).
        let (r, _, res) = unsafe { Op::submit(entry, res) }.await;
        if r < 0 {
            return Err(io::Error::from_raw_os_error(-r));
        }
        let s = std::net::TcpStream::from(res.sock);
        s.set_nodelay(true)?;
        Ok(TcpStream::from_std(s))
    }

    /// Another handle to the same socket (a duplicated descriptor), e.g. for another thread
    /// to [`shutdown`](Self::shutdown) a connection a reactor is blocked receiving on.
    pub fn try_clone(&self) -> io::Result<TcpStream> {
        Ok(TcpStream::from_std(self.inner.try_clone()?))
    }

    /// Wraps a std stream.
    pub fn from_std(inner: std::net::TcpStream) -> TcpStream {
        TcpStream { guard: None, inner }
    }

    /// A handle that shuts this connection down from any thread (another reactor, the
    /// management plane) without owning it; inert once the stream is dropped. Every handle
    /// of a stream is the same one.
    pub fn shutdown_handle(&mut self) -> ShutdownHandle {
        let fd = self.inner.as_raw_fd();
        self.guard
            .get_or_insert_with(|| HandleGuard::new(fd))
            .0
            .clone()
    }

    /// The raw descriptor.
    pub fn fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }

    /// The local address (the one the peer connected to).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Receives into `buf[at..capacity]`; the payload becomes `at` plus the bytes received.
    pub async fn recv<B: StableBufMut + Unpin>(&self, buf: B, at: usize) -> (io::Result<usize>, B) {
        op::recv(self.fd(), buf, at, usize::MAX).await
    }

    /// Receives until `buf` holds exactly `len` bytes in total (never more: the stream's next
    /// message stays unread), or fails with `UnexpectedEof`.
    pub async fn recv_exact<B: StableBufMut + Unpin>(
        &self,
        mut buf: B,
        mut at: usize,
        len: usize,
    ) -> (io::Result<()>, B) {
        assert!(len <= buf.bytes_total());
        while at < len {
            let (r, b) = op::recv(self.fd(), buf, at, len).await;
            buf = b;
            match r {
                Ok(0) => return (Err(io::ErrorKind::UnexpectedEof.into()), buf),
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        buf.set_init(len);
        (Ok(()), buf)
    }

    /// Sends all of `buf`'s payload.
    pub async fn send_all<B: StableBuf + Unpin>(&self, buf: B) -> (io::Result<()>, B) {
        self.send_rest(buf, 0).await
    }

    /// Sends all of `a` then all of `b`, gathering both into one `sendmsg` where possible.
    pub async fn send_all2<A: StableBuf + Unpin, B: StableBuf + Unpin>(
        &self,
        a: A,
        b: B,
    ) -> (io::Result<()>, A, B) {
        let (mut a, mut b) = (a, b);
        let (mut at_a, mut at_b) = (0, 0);
        loop {
            if at_a == a.bytes_init() {
                let (r, b) = self.send_rest(b, at_b).await;
                return (r, a, b);
            }
            let (r, a2, b2) = op::send2(self.fd(), a, at_a, b, at_b).await;
            a = a2;
            b = b2;
            match r {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), a, b),
                Ok(n) => {
                    let from_a = n.min(a.bytes_init() - at_a);
                    at_a += from_a;
                    at_b += n - from_a;
                    if at_a == a.bytes_init() && at_b == b.bytes_init() {
                        return (Ok(()), a, b);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), a, b),
            }
        }
    }

    async fn send_rest<B: StableBuf + Unpin>(
        &self,
        mut buf: B,
        mut at: usize,
    ) -> (io::Result<()>, B) {
        while at < buf.bytes_init() {
            let (r, b) = op::send(self.fd(), buf, at).await;
            buf = b;
            match r {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// Shuts both directions down (pending receives then see end of stream).
    pub fn shutdown(&self) {
        let _ = self.inner.shutdown(std::net::Shutdown::Both);
    }

    /// Gives the descriptor up (its shutdown handles become inert).
    pub fn into_fd(self) -> OwnedFd {
        let TcpStream { guard, inner } = self;
        drop(guard);
        inner.into()
    }
}

/// What a connect operation owns until it completes: the peer address and the socket.
struct ConnectRes {
    addr: (Box<libc::sockaddr_storage>, libc::socklen_t),
    sock: OwnedFd,
}

/// The address family and the `sockaddr` of `addr`, boxed so its address is stable.
fn sockaddr_of(addr: &SocketAddr) -> (libc::c_int, (Box<libc::sockaddr_storage>, libc::socklen_t)) {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid (empty) value.
    let mut st: Box<libc::sockaddr_storage> = Box::new(unsafe { std::mem::zeroed() });
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut *st as *mut libc::sockaddr_storage).cast(), sin) };
            (
                libc::AF_INET,
                (
                    st,
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                ),
            )
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut *st as *mut libc::sockaddr_storage).cast(), sin6) };
            (
                libc::AF_INET6,
                (
                    st,
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                ),
            )
        }
    }
}
