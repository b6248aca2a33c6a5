//! TCP through the reactor's ring.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::buf::{StableBuf, StableBufMut};
use crate::op;

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
