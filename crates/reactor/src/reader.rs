//! The buffered receive side of a stream protocol: headers are parsed from a staging buffer,
//! payloads go from it as far as they were received and straight from the socket into their
//! own buffer for the rest (no second copy of the bulk of the data).

use std::io;

use crate::buf::IoBuf;
use crate::net::TcpStream;

/// A staging buffer over a [`TcpStream`]: bytes received but not yet consumed are
/// [`buffered`](Self::buffered); [`fill`](Self::fill) receives until enough are; payloads are
/// read with [`read_into`](Self::read_into), which receives the part not yet buffered straight
/// into the destination (a registered buffer stays registered: no copy through the staging
/// buffer, no allocation).
///
/// One reader per connection, used by the one task that parses the stream. End of stream is
/// `UnexpectedEof`; a receive interrupted by a signal is retried.
///
/// Not cancel-safe: dropping a future of this reader while it receives loses the staging
/// buffer (the kernel still owns it), so the stream is unusable afterwards. Drop one only to
/// end the connection; to bound a wait, shut the socket down instead
/// ([`TcpStream::shutdown_handle`]).
#[derive(Debug)]
pub struct BufReader {
    buf: IoBuf,
    /// Bytes `[start, buf.len())` are received but not consumed.
    start: usize,
}

impl BufReader {
    /// A reader with a staging buffer of `capacity` bytes (the largest header or message
    /// [`fill`](Self::fill) can hold at once).
    pub fn new(capacity: usize) -> BufReader {
        BufReader {
            buf: IoBuf::with_capacity(capacity),
            start: 0,
        }
    }

    /// The staging buffer's capacity.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The bytes received and not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Marks `n` buffered bytes consumed. Panics if fewer are buffered.
    pub fn consume(&mut self, n: usize) {
        assert!(
            n <= self.buf.len() - self.start,
            "consume beyond the buffer"
        );
        self.start += n;
        if self.start == self.buf.len() {
            // Empty: the next receive starts at the beginning, nothing to move.
            self.start = 0;
            self.buf.set_len(0);
        }
    }

    /// Consumes and returns the next `n` buffered bytes (after [`fill`](Self::fill)).
    pub fn take(&mut self, n: usize) -> &[u8] {
        let at = self.start;
        assert!(n <= self.buf.len() - at, "take beyond the buffer");
        self.start += n;
        // Not reset when empty here: the slice borrows the bytes; the next fill resets.
        &self.buf[at..at + n]
    }

    /// Receives until at least `need` bytes are buffered. `need` above the capacity is
    /// `InvalidData` (a peer announcing a header larger than any the protocol allows).
    pub async fn fill(&mut self, stream: &TcpStream, need: usize) -> io::Result<()> {
        let have = self.buf.len() - self.start;
        if have >= need {
            return Ok(());
        }
        if need > self.buf.capacity() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{need} bytes do not fit the {}-byte receive buffer",
                    self.buf.capacity()
                ),
            ));
        }
        if have == 0 {
            self.start = 0;
            self.buf.set_len(0);
        } else if self.start + need > self.buf.capacity() {
            // Move the partial message to the front only when it could not grow in place.
            self.buf.copy_within(self.start.., 0);
            self.buf.set_len(have);
            self.start = 0;
        }
        while self.buf.len() - self.start < need {
            let buf = std::mem::take(&mut self.buf);
            let at = buf.len();
            let (r, b) = stream.recv(buf, at).await;
            self.buf = b;
            match r {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Receives the next `n` bytes of the stream into `dst[at..at + n]`: what is buffered is
    /// copied, the rest received straight into `dst`. `dst`'s payload length becomes at least
    /// `at + n` (a longer payload keeps its length, so a read can be filled piece by piece);
    /// its capacity must hold `at + n`. On error `dst` is returned too, its contents
    /// unspecified.
    pub async fn read_into(
        &mut self,
        stream: &TcpStream,
        mut dst: IoBuf,
        at: usize,
        n: usize,
    ) -> (io::Result<()>, IoBuf) {
        let end = at + n;
        assert!(
            end <= dst.capacity(),
            "read_into beyond the buffer's capacity"
        );
        let full = dst.len().max(end);
        dst.set_len(full);
        let k = n.min(self.buf.len() - self.start);
        dst[at..at + k].copy_from_slice(&self.buf[self.start..self.start + k]);
        self.consume(k);
        if k < n {
            let (r, mut d) = stream.recv_exact(dst, at + k, end).await;
            d.set_len(full);
            return (r, d);
        }
        (Ok(()), dst)
    }

    /// Receives the next `n` bytes into a new vector. For control messages whose length the
    /// caller has bounded; payloads go through [`read_into`](Self::read_into).
    pub async fn read_vec(&mut self, stream: &TcpStream, n: usize) -> io::Result<Vec<u8>> {
        let mut v = Vec::with_capacity(n);
        let step = self.buf.capacity();
        while v.len() < n {
            let want = (n - v.len()).min(step);
            self.fill(stream, want).await?;
            v.extend_from_slice(self.take(want));
        }
        Ok(v)
    }

    /// Receives and drops the next `n` bytes (a payload the protocol says to skip).
    pub async fn skip(&mut self, stream: &TcpStream, n: u64) -> io::Result<()> {
        let mut left = n;
        let step = self.buf.capacity() as u64;
        while left > 0 {
            let want = left.min(step) as usize;
            self.fill(stream, want).await?;
            self.consume(want);
            left -= want as u64;
        }
        Ok(())
    }
}
