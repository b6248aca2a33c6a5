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
use std::future::{Future, poll_fn};
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};

use io_uring::{opcode, types};

use crate::buf::IoBuf;
use crate::net::TcpStream;
use crate::op::Op;

/// Bytes a [`Chunk::Small`] holds inline: every protocol header we send fits (the largest,
/// an NVMe/TCP command capsule's, is 72 bytes, 76 with its header digest), so no header
/// costs an allocation.
pub const SMALL_CHUNK: usize = 80;

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
/// The iovecs of the bytes of `chunks` after the first `skip` (empty pieces left out).
fn iovecs(chunks: &[Chunk], mut skip: usize) -> impl Iterator<Item = libc::iovec> + '_ {
    chunks.iter().filter_map(move |c| {
        let s = c.as_slice();
        if skip >= s.len() {
            skip -= s.len();
            return None;
        }
        let v = libc::iovec {
            iov_base: s[skip..].as_ptr() as *mut _,
            iov_len: s.len() - skip,
        };
        skip = 0;
        Some(v)
    })
}

async fn sendv(fd: RawFd, chunks: Vec<Chunk>, skip: usize) -> (io::Result<usize>, Vec<Chunk>) {
    let iov: Vec<libc::iovec> = iovecs(&chunks, skip).take(MAX_IOV).collect();
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
    pub async fn send_chunks(&self, chunks: Vec<Chunk>) -> (io::Result<()>, Vec<Chunk>) {
        self.send_chunks_from(chunks, 0).await
    }

    /// As [`TcpStream::send_chunks`], for the bytes after the first `at`.
    async fn send_chunks_from(
        &self,
        mut chunks: Vec<Chunk>,
        mut at: usize,
    ) -> (io::Result<()>, Vec<Chunk>) {
        let total: usize = chunks.iter().map(|c| c.as_slice().len()).sum();
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
///
/// A batch, once begun, is sent to its end even if the task sending it stops waiting (a
/// caller's own timeout): the send then continues as a task of its own, so one impatient
/// caller never breaks the framing of a stream others share. The outbox shares the socket with
/// its owner for that; dropping the outbox while such a send is still in flight shuts the
/// socket down.
pub struct Outbox {
    inner: Rc<Inner>,
}

struct Inner {
    /// The connection's socket, shared with its owner so a detached send never uses a
    /// descriptor closed and reused meanwhile.
    stream: Rc<TcpStream>,
    queue: RefCell<Vec<Chunk>>,
    /// The message of each [`Chunk::Kept`] in `queue`, in order.
    kept_ids: RefCell<Vec<u64>>,
    /// Kept buffers of messages sent (or failed), waiting for their senders.
    returned: RefCell<Vec<(u64, IoBuf)>>,
    /// Messages whose sender stopped waiting: their kept buffers are dropped.
    abandoned: RefCell<Vec<u64>>,
    /// An emptied vector kept for the next batch (no allocation per batch).
    spare: RefCell<Vec<Chunk>>,
    /// Send a message at once, with a `sendmsg` of its own, when nothing is queued or in
    /// flight (see [`Outbox::eager`]).
    eager: bool,
    /// Bytes at the head of the queue already sent by such a direct send (it was partial).
    head_sent: Cell<usize>,
    flushing: Cell<bool>,
    /// Messages queued so far.
    queued: Cell<u64>,
    /// Messages sent so far (the first `sent` queued ones).
    sent: Cell<u64>,
    /// The last message whose sender stopped waiting before it was sent: a batch's send
    /// goes on until it is sent, since nobody else will send it.
    orphan: Cell<u64>,
    /// A send failed (or was dropped midway at reactor shutdown): the stream is unusable.
    failed: Cell<Option<io::ErrorKind>>,
    waiters: RefCell<Vec<Waker>>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("queued", &self.inner.queued.get())
            .field("sent", &self.inner.sent.get())
            .field("failed", &self.inner.failed.get())
            .finish()
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        // A detached send still holds the socket open: the connection is going away, so
        // make that send end instead of waiting on a peer that may never read.
        if self.inner.flushing.get() {
            self.inner.stream.shutdown();
        }
    }
}

/// A sender waiting for its message. If it stops waiting (its future dropped), its kept
/// buffer is not kept for it, and its message is still sent: by the batch in flight, or by
/// a send begun here when none is.
struct Waiting<'a> {
    ob: &'a Rc<Inner>,
    me: u64,
    kept: bool,
    done: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let ob = self.ob;
        if self.kept && ob.take_returned(self.me).is_none() {
            ob.abandoned.borrow_mut().push(self.me);
        }
        if ob.sent.get() >= self.me || ob.failed.get().is_some() {
            return;
        }
        ob.orphan.set(ob.orphan.get().max(self.me));
        // `flush` marks the outbox busy at once: only begin one that will run.
        if !ob.flushing.get() && crate::core::try_core().is_some() {
            go_on(flush(ob.clone()));
        }
    }
}

/// Where a message stands once [`Outbox::send_keep`] has queued it.
enum Queued<'a> {
    /// Sent (or failed) already: the outcome and the message's kept buffer.
    Done(io::Result<()>, Option<IoBuf>),
    /// In the queue: the sender waits for a batch to carry it.
    Wait(Waiting<'a>),
}

/// The buffer of the first [`Chunk::Kept`] among `chunks`.
fn first_kept(chunks: impl IntoIterator<Item = Chunk>) -> Option<IoBuf> {
    chunks.into_iter().find_map(|c| match c {
        Chunk::Kept { buf, .. } => Some(buf),
        _ => None,
    })
}

/// What a direct send did.
enum Direct {
    /// Every byte went.
    All,
    /// The first `n` bytes went (possibly none: the socket's buffer is full).
    Part(usize),
    /// The stream failed.
    Failed(io::ErrorKind),
}

/// Most pieces a direct send takes (a request is a header, its data and a digest); a message
/// of more goes by the ring.
const DIRECT_IOV: usize = 4;

/// Sends `chunks` with one non-blocking `sendmsg` on `fd`, now.
fn send_now(fd: RawFd, chunks: &[Chunk]) -> Direct {
    let empty = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let mut iov = [empty; DIRECT_IOV];
    let mut n = 0;
    for v in iovecs(chunks, 0) {
        if n == DIRECT_IOV {
            return Direct::Part(0);
        }
        iov[n] = v;
        n += 1;
    }
    if n == 0 {
        return Direct::All;
    }
    let total: usize = iov[..n].iter().map(|v| v.iov_len).sum();
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = n;
    loop {
        // SAFETY: the iovecs point into `chunks`, borrowed (so alive and unmoved) for the
        // call, and into `iov`, alive too; the call is synchronous and keeps no pointer.
        let r = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if r >= 0 {
            let n = r as usize;
            return if n >= total {
                Direct::All
            } else {
                Direct::Part(n)
            };
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Direct::Part(0),
            k => return Direct::Failed(k),
        }
    }
}

/// A batch's send, boxed so that it can outlive the task that began it.
type Flush = Pin<Box<dyn Future<Output = ()>>>;

/// Holds the batch send a task is driving; if the task stops waiting, the send goes on as a
/// task of its own.
struct Detach(Option<Flush>);

impl Drop for Detach {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            go_on(f);
        }
    }
}

/// Runs a batch's send as a task of its own (unless the reactor is gone: dropping it then
/// marks the outbox failed).
fn go_on(f: Flush) {
    if crate::core::try_core().is_some() {
        drop(crate::spawn_local(f));
    }
}

/// Ends a batch: wakes the waiters, and marks the outbox failed if the send was dropped
/// midway (only at reactor shutdown: part of a message may have been sent, nothing more can
/// follow it).
struct FlushGuard {
    ob: Rc<Inner>,
    finished: bool,
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        if !self.finished && self.ob.failed.get().is_none() {
            self.ob.failed.set(Some(io::ErrorKind::BrokenPipe));
        }
        self.ob.flushing.set(false);
        self.ob.wake_all();
    }
}

impl Inner {
    fn wake_all(&self) {
        let ws = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in ws {
            w.wake();
        }
    }

    /// Takes every queued chunk and the ids of its kept ones, leaving the spare vector as
    /// the queue.
    fn take_queue(&self) -> (Vec<Chunk>, Vec<u64>) {
        let mut batch = std::mem::take(&mut *self.spare.borrow_mut());
        std::mem::swap(&mut batch, &mut *self.queue.borrow_mut());
        (batch, std::mem::take(&mut *self.kept_ids.borrow_mut()))
    }

    /// Empties the queue after a direct send (it held only that message); returns the
    /// message's kept buffer.
    fn take_direct(&self) -> Option<IoBuf> {
        let (mut batch, _) = self.take_queue();
        let kept = first_kept(batch.drain(..));
        *self.spare.borrow_mut() = batch;
        kept
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
}

/// Sends one batch: every message queued so far; then records the outcome and wakes the
/// waiters. Goes on with the next batch only while a message whose sender stopped waiting
/// is left unsent (nobody else would send it).
fn flush(ob: Rc<Inner>) -> Flush {
    ob.flushing.set(true);
    Box::pin(async move {
        let mut guard = FlushGuard {
            ob: ob.clone(),
            finished: false,
        };
        loop {
            let upto = ob.queued.get();
            let (batch, mut ids) = ob.take_queue();
            let from = ob.head_sent.replace(0);
            let (r, mut batch) = ob.stream.send_chunks_from(batch, from).await;
            ob.give_back(&mut batch, &mut ids.drain(..));
            *ob.spare.borrow_mut() = batch;
            if let Err(e) = r {
                ob.failed.set(Some(e.kind()));
                // Nothing queued behind can be sent any more: its kept buffers go back too.
                let (mut rest, mut ids) = ob.take_queue();
                ob.give_back(&mut rest, &mut ids.drain(..));
                break;
            }
            ob.sent.set(upto);
            if ob.sent.get() >= ob.orphan.get() {
                break;
            }
        }
        // Dropping the guard ends the flush and wakes the waiters: those whose messages
        // were sent return, and the first of the others to run sends the next batch.
        guard.finished = true;
    })
}

impl Outbox {
    /// An empty outbox sending on `stream`.
    pub fn new(stream: Rc<TcpStream>) -> Outbox {
        Outbox::with(stream, false)
    }

    /// An outbox for a client's requests: a message queued while nothing else is queued or
    /// being sent goes out at once, with a non-blocking `sendmsg` of its own, before the
    /// caller goes on — as a request leaves a client that writes it to its socket (libnbd
    /// does). The peer can start on the first request while the next ones are still being
    /// issued, instead of receiving them together after the last. What the socket does not
    /// take at once, and whatever is queued behind it, is gathered as in [`Outbox::new`].
    pub fn eager(stream: Rc<TcpStream>) -> Outbox {
        Outbox::with(stream, true)
    }

    fn with(stream: Rc<TcpStream>, eager: bool) -> Outbox {
        Outbox {
            inner: Rc::new(Inner {
                stream,
                queue: RefCell::default(),
                kept_ids: RefCell::default(),
                returned: RefCell::default(),
                abandoned: RefCell::default(),
                spare: RefCell::default(),
                eager,
                head_sent: Cell::new(0),
                flushing: Cell::new(false),
                queued: Cell::new(0),
                sent: Cell::new(0),
                orphan: Cell::new(0),
                failed: Cell::new(None),
                waiters: RefCell::default(),
            }),
        }
    }

    /// Whether a send is in progress.
    pub fn busy(&self) -> bool {
        self.inner.flushing.get()
    }

    /// Whether a send failed: the stream is unusable.
    pub fn failed(&self) -> bool {
        self.inner.failed.get().is_some()
    }

    /// Sends `chunks` (one message) after every message queued before it; the future returns
    /// once they were handed to the kernel, or with the error that ended the stream. The
    /// message is queued by this call, not when the future is first polled: messages leave
    /// in the order of the calls, and the future does not carry the chunks (it stays small,
    /// which matters to the tasks that hold one per request). If the caller stops waiting (or
    /// never polls), the message is still sent whole.
    pub fn send(
        &self,
        chunks: impl IntoIterator<Item = Chunk>,
    ) -> impl Future<Output = io::Result<()>> + '_ {
        let sending = self.send_keep(chunks);
        async move { sending.await.0 }
    }

    /// As [`Outbox::send`], and gives back the buffer of the message's [`Chunk::Kept`] (at
    /// most one per message), whether the send succeeded or not.
    pub fn send_keep(
        &self,
        chunks: impl IntoIterator<Item = Chunk>,
    ) -> impl Future<Output = (io::Result<()>, Option<IoBuf>)> + '_ {
        let ob = &self.inner;
        let me = ob.queued.get() + 1;
        let queued = match ob.failed.get() {
            Some(k) => Queued::Done(Err(k.into()), first_kept(chunks)),
            None => {
                // An eager outbox with nothing queued or in flight sends the message now.
                let direct = ob.eager && !ob.flushing.get() && ob.queue.borrow().is_empty();
                let mut kept = false;
                {
                    let mut q = ob.queue.borrow_mut();
                    let mut ids = ob.kept_ids.borrow_mut();
                    for c in chunks {
                        if matches!(c, Chunk::Kept { .. }) {
                            ids.push(me);
                            kept = true;
                        }
                        q.push(c);
                    }
                }
                ob.queued.set(me);
                let outcome = if direct {
                    send_now(ob.stream.fd(), &ob.queue.borrow())
                } else {
                    Direct::Part(0)
                };
                match outcome {
                    Direct::All => {
                        ob.sent.set(me);
                        Queued::Done(Ok(()), ob.take_direct())
                    }
                    Direct::Failed(k) => {
                        ob.failed.set(Some(k));
                        Queued::Done(Err(k.into()), ob.take_direct())
                    }
                    Direct::Part(n) => {
                        // The rest goes with the next batch, its first `n` bytes skipped.
                        ob.head_sent.set(n);
                        Queued::Wait(Waiting {
                            ob,
                            me,
                            kept,
                            done: false,
                        })
                    }
                }
            }
        };
        async move {
            let mut waiting = match queued {
                Queued::Wait(w) => w,
                Queued::Done(r, kept) => return (r, kept),
            };
            let r = self.deliver(me).await;
            waiting.done = true;
            (r, ob.take_returned(me))
        }
    }

    /// Waits until message `me` was sent, or — when no send is in flight — sends it
    /// together with everything queued so far (one batch). A task sends at most one batch:
    /// messages queued meanwhile are sent by one of their own senders, woken when this batch
    /// is done, so no task is kept sending on behalf of others indefinitely.
    async fn deliver(&self, me: u64) -> io::Result<()> {
        let ob = &self.inner;
        loop {
            let send = poll_fn(|cx| {
                if ob.sent.get() >= me {
                    Poll::Ready(Ok(false))
                } else if let Some(k) = ob.failed.get() {
                    Poll::Ready(Err(io::Error::from(k)))
                } else if !ob.flushing.get() {
                    Poll::Ready(Ok(true))
                } else {
                    ob.waiters.borrow_mut().push(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await?;
            if !send {
                return Ok(());
            }
            let mut sending = Detach(Some(flush(ob.clone())));
            if let Some(f) = sending.0.as_mut() {
                f.await;
            }
            sending.0 = None;
            // The batch held this message: the next round sees it sent (or failed).
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::rc::Rc;

    use super::*;
    use crate::testing::run_on_reactor;

    /// Beyond what loopback's socket buffers take (receive buffers grow to 32 MiB here), so a
    /// send of it blocks while the peer does not read.
    const BIG: usize = 96 << 20;

    /// A peer that accepts one connection, waits `delay` before reading, then reads to the
    /// end; joining it gives every byte received.
    fn peer(
        delay: std::time::Duration,
    ) -> (std::net::SocketAddr, std::thread::JoinHandle<Vec<u8>>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            std::thread::sleep(delay);
            let mut all = Vec::new();
            s.read_to_end(&mut all).unwrap();
            all
        });
        (addr, reader)
    }

    /// A repeating pattern whose period (251) is no power of two, so a misplaced chunk shows.
    fn pattern() -> Vec<u8> {
        (0..251 * 4096).map(|i| (i % 251) as u8).collect()
    }

    /// [`BIG`] bytes of the pattern.
    fn big_pattern() -> IoBuf {
        let mut big = IoBuf::zeroed(BIG);
        let pattern = pattern();
        for c in big.chunks_mut(pattern.len()) {
            c.copy_from_slice(&pattern[..c.len()]);
        }
        big
    }

    /// Whether `b` is the pattern from its start.
    fn is_pattern(b: &[u8]) -> bool {
        let pattern = pattern();
        b.chunks(pattern.len()).all(|c| c == &pattern[..c.len()])
    }

    #[test]
    fn concurrent_messages_arrive_whole_and_in_order() {
        let (addr, reader) = peer(std::time::Duration::ZERO);
        run_on_reactor(std::time::Duration::from_secs(20), move || async move {
            let s = Rc::new(TcpStream::connect(addr).unwrap());
            let ob = Rc::new(Outbox::new(s.clone()));
            let mut tasks = Vec::new();
            for i in 0..200u32 {
                let ob = ob.clone();
                tasks.push(crate::spawn_local(async move {
                    let head = Chunk::copy(&i.to_le_bytes());
                    let mut body = IoBuf::zeroed(1000 + i as usize * 37);
                    body.fill(i as u8);
                    ob.send([head, Chunk::Buf(body)]).await.unwrap();
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
    fn an_eager_outbox_sends_at_once_and_finishes_a_partial_send_in_order() {
        // The first message goes out with a sendmsg of its own before `send_keep` returns;
        // the big one fills the socket buffers (the peer is not reading yet), so its direct
        // send is partial and its rest, and everything behind it, goes by ring batches.
        let (addr, reader) = peer(std::time::Duration::from_millis(300));
        run_on_reactor(std::time::Duration::from_secs(20), move || async move {
            let s = Rc::new(TcpStream::connect(addr).unwrap());
            let ob = Rc::new(Outbox::eager(s.clone()));
            let first = ob.send_keep([
                Chunk::copy(b"one"),
                Chunk::Kept {
                    buf: IoBuf::from_slice(b"xxONExx"),
                    start: 2,
                    len: 3,
                },
            ]);
            // Sent already: nothing queued, nothing in flight.
            assert!(!ob.busy());
            let (r, back) = first.await;
            r.unwrap();
            assert_eq!(&back.expect("the kept buffer comes back")[..], b"xxONExx");
            let big = big_pattern();
            let ob2 = ob.clone();
            let big_send = crate::spawn_local(async move {
                ob2.send([Chunk::copy(b"head"), Chunk::Buf(big)]).await
            });
            let mut tails = Vec::new();
            for i in 0..20u8 {
                let ob = ob.clone();
                tails.push(crate::spawn_local(async move {
                    ob.send([Chunk::copy(&[i])]).await
                }));
            }
            big_send.await.unwrap();
            for t in tails {
                t.await.unwrap();
            }
            assert!(!ob.failed());
            s.shutdown();
        });
        let all = reader.join().unwrap();
        assert_eq!(all.len(), 6 + 4 + BIG + 20);
        assert_eq!(&all[..10], b"oneONEhead");
        assert!(is_pattern(&all[10..10 + BIG]));
        assert_eq!(&all[10 + BIG..], (0..20u8).collect::<Vec<_>>());
    }

    #[test]
    fn a_failed_stream_fails_every_later_send() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        run_on_reactor(std::time::Duration::from_secs(20), move || async move {
            let s = Rc::new(TcpStream::connect(addr).unwrap());
            let (peer, _) = l.accept().unwrap();
            drop(peer);
            s.shutdown();
            for ob in [Outbox::new(s.clone()), Outbox::eager(s.clone())] {
                assert!(ob.send([Chunk::copy(b"x")]).await.is_err());
                assert!(ob.failed());
                assert!(ob.send([Chunk::copy(b"y")]).await.is_err());
            }
        });
    }

    #[test]
    fn a_sender_that_stops_waiting_midway_leaves_its_message_whole_and_the_stream_usable() {
        // Not reading yet: the big message fills the socket buffers and its send blocks.
        let (addr, reader) = peer(std::time::Duration::from_millis(300));
        run_on_reactor(std::time::Duration::from_secs(20), move || async move {
            let s = Rc::new(TcpStream::connect(addr).unwrap());
            let ob = Outbox::new(s.clone());
            let big = big_pattern();
            let gave_up = crate::sync::timeout(
                std::time::Duration::from_millis(50),
                ob.send([Chunk::copy(b"head"), Chunk::Buf(big)]),
            )
            .await;
            assert!(gave_up.is_none(), "the send should still be blocked");
            assert!(
                !ob.failed(),
                "one caller giving up must not break the stream"
            );
            ob.send([Chunk::copy(b"tail")]).await.unwrap();
            s.shutdown();
        });
        let all = reader.join().unwrap();
        assert_eq!(all.len(), 4 + BIG + 4);
        assert_eq!(&all[..4], b"head");
        assert!(is_pattern(&all[4..4 + BIG]));
        assert_eq!(&all[4 + BIG..], b"tail");
    }

    #[test]
    fn a_message_whose_sender_stopped_waiting_before_it_was_sent_is_still_sent() {
        let (addr, reader) = peer(std::time::Duration::from_millis(300));
        run_on_reactor(std::time::Duration::from_secs(20), move || async move {
            let s = Rc::new(TcpStream::connect(addr).unwrap());
            let ob = Rc::new(Outbox::new(s.clone()));
            let o = ob.clone();
            let big = crate::spawn_local(async move {
                o.send([Chunk::Buf(IoBuf::zeroed(BIG))]).await.unwrap();
            });
            crate::sleep(std::time::Duration::from_millis(20)).await;
            // Queued behind the blocked batch; its sender gives up. Nobody else sends after
            // it, so the batch in flight must go on with it.
            let gave_up = crate::sync::timeout(
                std::time::Duration::from_millis(20),
                ob.send([Chunk::copy(b"tail")]),
            )
            .await;
            assert!(gave_up.is_none(), "the tail should still be queued");
            big.await;
            assert!(!ob.failed());
            s.shutdown();
        });
        let all = reader.join().unwrap();
        assert_eq!(all.len(), BIG + 4);
        assert_eq!(&all[BIG..], b"tail");
    }
}
