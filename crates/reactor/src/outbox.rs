//! Gathered sends: messages queued by concurrent tasks of one connection leave in one
//! `sendmsg`.
//!
//! A server answering many requests at once (NVMe/TCP completions, NBD replies) would
//! otherwise send each answer on its own: one system call, one TCP segment and one wake-up of
//! the peer per answer. With an [`Outbox`] a task that finds no send in flight sends what is
//! queued; whatever other tasks queue meanwhile goes out together in the next `sendmsg`, made
//! by one of them once this one completes (a task sends at most one batch, so none is held up
//! sending for the others). Every caller still returns only once its own bytes were handed to
//! the kernel, so buffers and budgets tied to a message live as long as before.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::os::fd::RawFd;
use std::task::{Poll, Waker};

use io_uring::{opcode, types};

use crate::buf::IoBuf;
use crate::net::TcpStream;
use crate::op::Op;

/// Bytes a [`Chunk::Small`] holds inline.
pub const SMALL_CHUNK: usize = 64;

/// Most iovecs one `sendmsg` takes (Linux's `UIO_MAXIOV`).
const MAX_IOV: usize = 1024;

/// One piece of a gathered send.
pub enum Chunk {
    /// A few bytes held inline (headers, digests): no allocation.
    Small {
        /// The bytes, `len` of them used.
        bytes: [u8; SMALL_CHUNK],
        /// Bytes used.
        len: u8,
    },
    /// A data buffer.
    Buf(IoBuf),
    /// Bytes on the heap.
    Vec(Vec<u8>),
    /// `len` bytes of `buf` from `start`; the buffer is given back to the message's sender
    /// ([`Outbox::send`] returns it).
    Kept {
        /// The buffer.
        buf: IoBuf,
        /// First byte to send.
        start: usize,
        /// Bytes to send.
        len: usize,
    },
}

impl Chunk {
    /// A copy of `b`: inline when it fits, else on the heap.
    pub fn copy(b: &[u8]) -> Chunk {
        if b.len() <= SMALL_CHUNK {
            let mut bytes = [0u8; SMALL_CHUNK];
            bytes[..b.len()].copy_from_slice(b);
            Chunk::Small {
                bytes,
                len: b.len() as u8,
            }
        } else {
            Chunk::Vec(b.to_vec())
        }
    }

    /// The bytes to send.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Chunk::Small { bytes, len } => &bytes[..usize::from(*len)],
            Chunk::Buf(b) => b,
            Chunk::Vec(v) => v,
            Chunk::Kept { buf, start, len } => &buf[*start..*start + *len],
        }
    }
}

impl From<IoBuf> for Chunk {
    fn from(b: IoBuf) -> Chunk {
        Chunk::Buf(b)
    }
}

impl From<Vec<u8>> for Chunk {
    fn from(v: Vec<u8>) -> Chunk {
        Chunk::Vec(v)
    }
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Chunk({} bytes)", self.as_slice().len())
    }
}

/// What a vectored send owns until it completes.
struct ChunksRes {
    chunks: Vec<Chunk>,
    iov: Vec<libc::iovec>,
    msg: Box<libc::msghdr>,
}

/// Sends the bytes of `chunks` after the first `skip` with one `sendmsg` (may be partial, at
/// most [`MAX_IOV`] pieces); returns the bytes sent and the chunks.
async fn sendv(fd: RawFd, chunks: Vec<Chunk>, mut skip: usize) -> (io::Result<usize>, Vec<Chunk>) {
    let mut iov = Vec::with_capacity(chunks.len().min(MAX_IOV));
    for c in &chunks {
        let s = c.as_slice();
        if skip >= s.len() {
            skip -= s.len();
            continue;
        }
        iov.push(libc::iovec {
            iov_base: s[skip..].as_ptr() as *mut _,
            iov_len: s.len() - skip,
        });
        skip = 0;
        if iov.len() == MAX_IOV {
            break;
        }
    }
    if iov.is_empty() {
        return (Ok(0), chunks);
    }
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
    msg.msg_iov = iov.as_ptr() as *mut _;
    msg.msg_iovlen = iov.len();
    let entry = opcode::SendMsg::new(types::Fd(fd), &*msg as *const libc::msghdr)
        .flags(libc::MSG_NOSIGNAL as u32)
        .build();
    let res = ChunksRes { chunks, iov, msg };
    // SAFETY: the iovecs point into heap memory owned by `res` until completion and not
    // touched meanwhile: the `chunks` vector's own buffer (inline bytes of `Small` chunks;
    // the vector is not modified, so its buffer does not move) and the heap buffers of `Buf`
    // and `Vec` chunks; the iovec array and the msghdr are heap memory in `res` too.
    let (r, _, res) = unsafe { Op::submit_short(entry, res) }.await;
    let ChunksRes { chunks, iov, msg } = res;
    drop((iov, msg));
    (
        if r < 0 {
            Err(io::Error::from_raw_os_error(-r))
        } else {
            Ok(r as usize)
        },
        chunks,
    )
}

impl TcpStream {
    /// Sends every byte of `chunks`, in order, gathering them into as few `sendmsg` calls as
    /// possible; gives the chunks back.
    pub async fn send_chunks(&self, mut chunks: Vec<Chunk>) -> (io::Result<()>, Vec<Chunk>) {
        let total: usize = chunks.iter().map(|c| c.as_slice().len()).sum();
        let mut at = 0;
        while at < total {
            let (r, c) = sendv(self.fd(), chunks, at).await;
            chunks = c;
            match r {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), chunks),
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), chunks),
            }
        }
        (Ok(()), chunks)
    }
}

/// A connection's send queue: concurrent tasks' messages are sent in order, those queued
/// while a send is in flight together in the next one. For one reactor (not `Sync`).
#[derive(Default)]
pub struct Outbox {
    queue: RefCell<Vec<Chunk>>,
    /// The message of each [`Chunk::Kept`] in `queue`, in order.
    kept_ids: RefCell<Vec<u64>>,
    /// Kept buffers of messages sent (or failed), waiting for their senders.
    returned: RefCell<Vec<(u64, IoBuf)>>,
    /// Messages whose sender stopped waiting: their kept buffers are dropped.
    abandoned: RefCell<Vec<u64>>,
    /// An emptied vector kept for the next batch (no allocation per batch).
    spare: RefCell<Vec<Chunk>>,
    flushing: Cell<bool>,
    /// Messages queued so far.
    queued: Cell<u64>,
    /// Messages sent so far (the first `sent` queued ones).
    sent: Cell<u64>,
    /// A send failed (or a flusher gave up midway): the stream is unusable.
    failed: Cell<Option<io::ErrorKind>>,
    waiters: RefCell<Vec<Waker>>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("queued", &self.queued.get())
            .field("sent", &self.sent.get())
            .field("failed", &self.failed.get())
            .finish()
    }
}

/// A sender waiting for its message: if it stops waiting (its future dropped), its kept
/// buffer is not kept for it.
struct Waiting<'a> {
    ob: &'a Outbox,
    /// 0 once the wait ended normally (or nothing is kept for it).
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.id != 0 && self.ob.take_returned(self.id).is_none() {
            self.ob.abandoned.borrow_mut().push(self.id);
        }
    }
}

/// Ends a flush: wakes the waiters, and marks the outbox failed if the flusher was dropped
/// midway (part of a message may have been sent: nothing more can follow it).
struct FlushGuard<'a> {
    ob: &'a Outbox,
    finished: bool,
}

impl Drop for FlushGuard<'_> {
    fn drop(&mut self) {
        if !self.finished && self.ob.failed.get().is_none() {
            self.ob.failed.set(Some(io::ErrorKind::BrokenPipe));
        }
        self.ob.flushing.set(false);
        self.ob.wake_all();
    }
}

impl Outbox {
    /// An empty outbox.
    pub fn new() -> Outbox {
        Outbox::default()
    }

    fn wake_all(&self) {
        let ws = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in ws {
            w.wake();
        }
    }

    /// Whether a send is in progress.
    pub fn busy(&self) -> bool {
        self.flushing.get()
    }

    /// Whether a send failed: the stream is unusable.
    pub fn failed(&self) -> bool {
        self.failed.get().is_some()
    }

    /// Sends `chunks` (one message) on `stream` after every message queued before it;
    /// returns once they were handed to the kernel, or the error that ended the stream.
    pub async fn send(
        &self,
        stream: &TcpStream,
        chunks: impl IntoIterator<Item = Chunk>,
    ) -> io::Result<()> {
        self.send_keep(stream, chunks).await.0
    }

    /// As [`Outbox::send`], and gives back the buffer of the message's [`Chunk::Kept`] (at
    /// most one per message), whether the send succeeded or not.
    pub async fn send_keep(
        &self,
        stream: &TcpStream,
        chunks: impl IntoIterator<Item = Chunk>,
    ) -> (io::Result<()>, Option<IoBuf>) {
        let me = self.queued.get() + 1;
        if let Some(k) = self.failed.get() {
            let kept = chunks.into_iter().find_map(|c| match c {
                Chunk::Kept { buf, .. } => Some(buf),
                _ => None,
            });
            return (Err(k.into()), kept);
        }
        let mut kept = false;
        {
            let mut q = self.queue.borrow_mut();
            let mut ids = self.kept_ids.borrow_mut();
            for c in chunks {
                if matches!(c, Chunk::Kept { .. }) {
                    ids.push(me);
                    kept = true;
                }
                q.push(c);
            }
        }
        self.queued.set(me);
        let mut waiting = Waiting {
            ob: self,
            id: if kept { me } else { 0 },
        };
        let r = self.deliver(stream, me).await;
        waiting.id = 0;
        (r, self.take_returned(me))
    }

    fn take_returned(&self, me: u64) -> Option<IoBuf> {
        let mut r = self.returned.borrow_mut();
        let i = r.iter().position(|(id, _)| *id == me)?;
        Some(r.swap_remove(i).1)
    }

    /// Moves the kept buffers of `batch` (taken from the queue together with their ids) to
    /// `returned`, and drops the rest.
    fn give_back(&self, batch: &mut Vec<Chunk>, ids: &mut std::vec::Drain<'_, u64>) {
        let mut ret = self.returned.borrow_mut();
        let mut gone = self.abandoned.borrow_mut();
        for c in batch.drain(..) {
            if let Chunk::Kept { buf, .. } = c
                && let Some(id) = ids.next()
            {
                match gone.iter().position(|g| *g == id) {
                    Some(i) => drop(gone.swap_remove(i)),
                    None => ret.push((id, buf)),
                }
            }
        }
    }

    /// Waits until message `me` was sent by another task, or — when no send is in flight —
    /// sends it together with everything queued so far (one batch). A task sends at most
    /// one batch: messages queued meanwhile are sent by one of their own senders, woken when
    /// this batch is done, so no task is kept sending on behalf of others indefinitely.
    async fn deliver(&self, stream: &TcpStream, me: u64) -> io::Result<()> {
        enum Next {
            Sent,
            Failed(io::ErrorKind),
            Send,
        }
        let next = poll_fn(|cx| {
            if self.sent.get() >= me {
                Poll::Ready(Next::Sent)
            } else if let Some(k) = self.failed.get() {
                Poll::Ready(Next::Failed(k))
            } else if !self.flushing.get() {
                Poll::Ready(Next::Send)
            } else {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        match next {
            Next::Sent => return Ok(()),
            Next::Failed(k) => return Err(k.into()),
            Next::Send => {}
        }
        self.flushing.set(true);
        let mut guard = FlushGuard {
            ob: self,
            finished: false,
        };
        let upto = self.queued.get();
        let mut batch = std::mem::take(&mut *self.spare.borrow_mut());
        std::mem::swap(&mut batch, &mut *self.queue.borrow_mut());
        let mut ids = std::mem::take(&mut *self.kept_ids.borrow_mut());
        let (r, mut batch) = stream.send_chunks(batch).await;
        self.give_back(&mut batch, &mut ids.drain(..));
        *self.spare.borrow_mut() = batch;
        if let Err(e) = r {
            self.failed.set(Some(e.kind()));
            // Nothing queued behind can be sent any more: its kept buffers go back too.
            let mut rest = std::mem::take(&mut *self.queue.borrow_mut());
            let mut ids = std::mem::take(&mut *self.kept_ids.borrow_mut());
            self.give_back(&mut rest, &mut ids.drain(..));
            return Err(e);
        }
        self.sent.set(upto);
        // Dropping the guard ends the flush and wakes the waiters: those whose messages were
        // in the batch return, and the first of the others to run sends the next batch.
        guard.finished = true;
        drop(guard);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::rc::Rc;

    use super::*;
    use crate::testing::run_on_reactor;

    #[test]
    fn concurrent_messages_arrive_whole_and_in_order() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).unwrap();
            all
        });
        run_on_reactor(std::time::Duration::from_secs(20), move || async move {
            let s = Rc::new(TcpStream::connect(addr).unwrap());
            let ob = Rc::new(Outbox::new());
            let mut tasks = Vec::new();
            for i in 0..200u32 {
                let (s, ob) = (s.clone(), ob.clone());
                tasks.push(crate::spawn_local(async move {
                    let head = Chunk::copy(&i.to_le_bytes());
                    let mut body = IoBuf::zeroed(1000 + i as usize * 37);
                    body.fill(i as u8);
                    ob.send(&s, [head, Chunk::Buf(body)]).await.unwrap();
                }));
            }
            for t in tasks {
                t.await;
            }
            assert!(!ob.failed());
            s.shutdown();
        });
        let all = reader.join().unwrap();
        // Each message is whole: a 4-byte index then its body of that byte.
        let mut at = 0;
        let mut seen = Vec::new();
        while at < all.len() {
            let i = u32::from_le_bytes(all[at..at + 4].try_into().unwrap());
            let n = 1000 + i as usize * 37;
            assert!(all[at + 4..at + 4 + n].iter().all(|&b| b == i as u8));
            seen.push(i);
            at += 4 + n;
        }
        // Tasks queue in spawn order, so the messages leave in that order.
        assert_eq!(seen, (0..200).collect::<Vec<_>>());
    }

    #[test]
    fn a_failed_stream_fails_every_later_send() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        run_on_reactor(std::time::Duration::from_secs(20), move || async move {
            let s = TcpStream::connect(addr).unwrap();
            let (peer, _) = l.accept().unwrap();
            drop(peer);
            s.shutdown();
            let ob = Outbox::new();
            assert!(ob.send(&s, [Chunk::copy(b"x")]).await.is_err());
            assert!(ob.failed());
            assert!(ob.send(&s, [Chunk::copy(b"y")]).await.is_err());
        });
    }
}
