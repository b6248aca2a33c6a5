//! Small synchronisation primitives for reactor tasks.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

struct OneshotInner<T> {
    value: Option<T>,
    waker: Option<Waker>,
    sender_gone: bool,
}

/// Sending half of a thread-safe one-shot channel.
pub struct OneshotSender<T> {
    inner: Arc<Mutex<OneshotInner<T>>>,
}

/// Receiving half: a future resolving to the value, or `None` if the sender was dropped.
pub struct OneshotReceiver<T> {
    inner: Arc<Mutex<OneshotInner<T>>>,
}

impl<T> std::fmt::Debug for OneshotSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OneshotSender")
    }
}
impl<T> std::fmt::Debug for OneshotReceiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OneshotReceiver")
    }
}

/// A channel carrying one value between any threads or executors.
pub fn oneshot<T>() -> (OneshotSender<T>, OneshotReceiver<T>) {
    let inner = Arc::new(Mutex::new(OneshotInner {
        value: None,
        waker: None,
        sender_gone: false,
    }));
    (
        OneshotSender {
            inner: inner.clone(),
        },
        OneshotReceiver { inner },
    )
}

impl<T> OneshotSender<T> {
    /// Delivers the value and wakes the receiver.
    pub fn send(self, v: T) {
        let w = {
            let mut g = self.inner.lock().expect("oneshot lock");
            g.value = Some(v);
            g.waker.take()
        };
        if let Some(w) = w {
            w.wake();
        }
    }
}

impl<T> Drop for OneshotSender<T> {
    fn drop(&mut self) {
        let w = {
            let mut g = self.inner.lock().expect("oneshot lock");
            g.sender_gone = true;
            g.waker.take()
        };
        if let Some(w) = w {
            w.wake();
        }
    }
}

impl<T> Future for OneshotReceiver<T> {
    type Output = Option<T>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut g = self.inner.lock().expect("oneshot lock");
        if let Some(v) = g.value.take() {
            return Poll::Ready(Some(v));
        }
        if g.sender_gone {
            return Poll::Ready(None);
        }
        g.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A reactor-local async mutex (FIFO), for serialising writes to one socket.
///
/// Each waiting `lock()` has one entry in the queue, however often it is polled (several
/// futures of one task may wait at once, and a task is polled for any of its wake-ups), and
/// removes it when it gets the lock or is dropped. An unlock wakes the first waiter; one
/// woken but dropped before taking the lock passes the wake-up on.
pub struct LocalMutex<T> {
    locked: Cell<bool>,
    waiters: RefCell<VecDeque<(u64, Waker)>>,
    next_waiter: Cell<u64>,
    value: RefCell<T>,
}

impl<T> std::fmt::Debug for LocalMutex<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalMutex")
            .field("locked", &self.locked.get())
            .finish()
    }
}

/// A `lock()` in progress: its entry in the waiters' queue, if it has one.
struct LockWaiter<'a, T> {
    m: &'a LocalMutex<T>,
    id: Option<u64>,
}

impl<T> LockWaiter<'_, T> {
    /// Removes this waiter's entry; true if it was still queued (not woken by an unlock).
    fn dequeue(&mut self) -> bool {
        let Some(id) = self.id.take() else {
            return false;
        };
        let mut w = self.m.waiters.borrow_mut();
        match w.iter().position(|(i, _)| *i == id) {
            Some(p) => {
                w.remove(p);
                true
            }
            None => false,
        }
    }
}

impl<T> Drop for LockWaiter<'_, T> {
    fn drop(&mut self) {
        let had_entry = self.id.is_some();
        if had_entry && !self.dequeue() && !self.m.locked.get() {
            // An unlock woke this waiter, which gives up: wake the next one instead.
            self.m.wake_next();
        }
    }
}

impl<T> LocalMutex<T> {
    /// A new unlocked mutex.
    pub fn new(v: T) -> Self {
        LocalMutex {
            locked: Cell::new(false),
            waiters: RefCell::new(VecDeque::new()),
            next_waiter: Cell::new(0),
            value: RefCell::new(v),
        }
    }

    fn wake_next(&self) {
        let w = self.waiters.borrow_mut().pop_front();
        if let Some((_, w)) = w {
            w.wake();
        }
    }

    /// Waits for the lock.
    pub async fn lock(&self) -> LocalMutexGuard<'_, T> {
        let mut waiter = LockWaiter { m: self, id: None };
        std::future::poll_fn(|cx| {
            if !self.locked.get() {
                waiter.dequeue();
                self.locked.set(true);
                return Poll::Ready(());
            }
            let mut w = self.waiters.borrow_mut();
            match waiter
                .id
                .and_then(|id| w.iter_mut().find(|(i, _)| *i == id))
            {
                Some((_, wk)) => {
                    if !wk.will_wake(cx.waker()) {
                        *wk = cx.waker().clone();
                    }
                }
                None => {
                    // First wait, or woken by an unlock and beaten to the lock by another
                    // locker: (back) to the front of the queue if woken, else to the end.
                    let id = self.next_waiter.get();
                    self.next_waiter.set(id + 1);
                    if waiter.id.is_some() {
                        w.push_front((id, cx.waker().clone()));
                    } else {
                        w.push_back((id, cx.waker().clone()));
                    }
                    waiter.id = Some(id);
                }
            }
            Poll::Pending
        })
        .await;
        waiter.id = None;
        LocalMutexGuard {
            m: self,
            v: self.value.borrow_mut(),
        }
    }
}

/// Holds a [`LocalMutex`]; unlocks on drop.
pub struct LocalMutexGuard<'a, T> {
    m: &'a LocalMutex<T>,
    v: std::cell::RefMut<'a, T>,
}

impl<T> std::fmt::Debug for LocalMutexGuard<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalMutexGuard")
    }
}

impl<T> Deref for LocalMutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.v
    }
}
impl<T> DerefMut for LocalMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.v
    }
}

impl<T> Drop for LocalMutexGuard<'_, T> {
    fn drop(&mut self) {
        self.m.locked.set(false);
        self.m.wake_next();
    }
}

/// A reactor-local counting semaphore bounding work in flight.
#[derive(Clone)]
pub struct LocalSemaphore {
    inner: Rc<SemInner>,
}

struct SemInner {
    permits: Cell<usize>,
    waiters: RefCell<VecDeque<Waker>>,
}

impl std::fmt::Debug for LocalSemaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSemaphore")
            .field("permits", &self.inner.permits.get())
            .finish()
    }
}

/// A permit; released on drop.
#[derive(Debug)]
pub struct Permit {
    sem: LocalSemaphore,
    count: usize,
}

impl LocalSemaphore {
    /// A semaphore with `n` permits.
    pub fn new(n: usize) -> Self {
        LocalSemaphore {
            inner: Rc::new(SemInner {
                permits: Cell::new(n),
                waiters: RefCell::new(VecDeque::new()),
            }),
        }
    }

    /// Waits for a permit.
    pub async fn acquire(&self) -> Permit {
        self.acquire_many(1).await
    }

    /// Waits until `n` permits are free and takes them together (one permit object).
    pub async fn acquire_many(&self, n: usize) -> Permit {
        std::future::poll_fn(|cx| {
            let p = self.inner.permits.get();
            if p >= n {
                self.inner.permits.set(p - n);
                Poll::Ready(())
            } else {
                self.inner
                    .waiters
                    .borrow_mut()
                    .push_back(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        Permit {
            sem: self.clone(),
            count: n,
        }
    }

    /// Permits currently free.
    pub fn available(&self) -> usize {
        self.inner.permits.get()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.count == 0 {
            return;
        }
        let i = &self.sem.inner;
        i.permits.set(i.permits.get() + self.count);
        // Waiters may want several permits each: let every one of them look again.
        for w in i.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

/// A boxed future, for [`join_all`].
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + 'a>>;

/// Runs every future to completion concurrently; their outputs in order.
pub async fn join_all<T>(futs: Vec<BoxFuture<'_, T>>) -> Vec<T> {
    let mut futs: Vec<_> = futs.into_iter().map(Some).collect();
    let mut out: Vec<Option<T>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if let Some(fut) = f {
                match fut.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        *o = Some(v);
                        *f = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future completed"))
        .collect()
}

/// Resolves to the output of whichever future finishes first.
pub async fn select<A, B, T>(a: A, b: B) -> T
where
    A: Future<Output = T>,
    B: Future<Output = T>,
{
    let mut a = std::pin::pin!(a);
    let mut b = std::pin::pin!(b);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = a.as_mut().poll(cx) {
            return Poll::Ready(v);
        }
        b.as_mut().poll(cx)
    })
    .await
}

/// Runs `fut` for at most `d`; `None` if the time ran out (the future is dropped, cancelling
/// its ring operations). The deadline is a user-space timer ([`crate::Deadline`]): a timeout
/// that does not fire costs no ring operation.
pub async fn timeout<F: Future>(d: std::time::Duration, fut: F) -> Option<F::Output> {
    let deadline = crate::Deadline::after(d);
    select(async { Some(fut.await) }, async {
        deadline.await;
        None
    })
    .await
}
