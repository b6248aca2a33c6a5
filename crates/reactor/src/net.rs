//! TCP through the reactor's ring.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use io_uring::{opcode, types};

use crate::buf::{StableBuf, StableBufMut};
use crate::op::{self, Op};

/// A listening TCP socket whose accepts go through the ring.
#[derive(Debug)]
pub struct TcpListener {
    inner: std::net::TcpListener,
}

impl TcpListener {
    /// Binds (with `SO_REUSEADDR`, as std does) to `addr`.
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        Ok(TcpListener {
            inner: std::net::TcpListener::bind(addr)?,
        })
    }

    /// Wraps an already bound std listener.
    pub fn from_std(inner: std::net::TcpListener) -> TcpListener {
        TcpListener { inner }
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
        Ok((TcpStream { inner: stream }, peer))
    }
}

/// A connected TCP stream; every receive and send is a ring operation. `Send`, so a stream
/// accepted on one reactor can be handed to another.
#[derive(Debug)]
pub struct TcpStream {
    inner: std::net::TcpStream,
}

impl TcpStream {
    /// Connects (blocking connect, then ring I/O).
    pub fn connect(addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
        let s = std::net::TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        Ok(TcpStream { inner: s })
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
        Ok(TcpStream { inner: s })
    }

    /// Another handle to the same socket (a duplicated descriptor), e.g. for another thread
    /// to [`shutdown`](Self::shutdown) a connection a reactor is blocked receiving on.
    pub fn try_clone(&self) -> io::Result<TcpStream> {
        Ok(TcpStream {
            inner: self.inner.try_clone()?,
        })
    }

    /// Wraps a std stream.
    pub fn from_std(inner: std::net::TcpStream) -> TcpStream {
        TcpStream { inner }
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

    /// Gives the descriptor up.
    pub fn into_fd(self) -> OwnedFd {
        self.inner.into()
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
