//! The reactor: one thread, one io_uring, one single-threaded executor.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use slab::Slab;

use crate::buf::{BufPool, IoBuf};
use crate::mode::{Adaptive, PollMode};

/// user_data of the doorbell read that wakes a sleeping reactor.
const DOORBELL: u64 = u64::MAX;
/// user_data of cancellation requests, whose completions carry no interest.
const CANCEL: u64 = u64::MAX - 1;
/// user_data bit of operations expected to complete soon (see `Core::inflight`).
pub(crate) const SHORT_OP: u64 = 1 << 62;

thread_local! {
    static CURRENT: RefCell<Option<Rc<Core>>> = const { RefCell::new(None) };
}

/// Runs `f` with the current thread's reactor. Panics outside a reactor thread.
pub(crate) fn with_core<R>(f: impl FnOnce(&Rc<Core>) -> R) -> R {
    CURRENT.with(|c| {
        let c = c.borrow();
        let core = c.as_ref().expect("not on a reactor thread");
        f(core)
    })
}

pub(crate) fn try_core() -> Option<Rc<Core>> {
    // During thread teardown (after a panic unwound out of the loop) the slot may be gone.
    CURRENT
        .try_with(|c| c.try_borrow().ok().and_then(|c| c.clone()))
        .ok()
        .flatten()
}

type Task = Pin<Box<dyn Future<Output = ()>>>;
/// Passes over the run queue per loop iteration: tasks spawned or woken by a pass run in the
/// next one, before the ring is entered; bounded so that tasks waking each other cannot keep
/// the reactor from its completions.
const TASK_PASSES: usize = 4;
type Message = Box<dyn FnOnce() + Send>;

/// The part of a reactor other threads may touch: its mailbox, remote wake-ups, its doorbell.
pub(crate) struct Shared {
    pub(crate) id: usize,
    mailbox: Mutex<VecDeque<Message>>,
    remote_wakes: Mutex<Vec<usize>>,
    sleeping: AtomicBool,
    stop: AtomicBool,
    doorbell: OwnedFd,
    pub(crate) stats: ReactorStats,
}

impl Shared {
    fn ring_doorbell(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writing 8 bytes from a live u64 to an eventfd we own.
            let r =
                unsafe { libc::write(self.doorbell.as_raw_fd(), (&one as *const u64).cast(), 8) };
            debug_assert!(r == 8 || r == -1);
            self.stats.doorbells.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn post(&self, msg: Message) {
        self.mailbox.lock().expect("mailbox lock").push_back(msg);
        self.ring_doorbell();
    }

    pub(crate) fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.sleeping.store(true, Ordering::SeqCst);
        self.ring_doorbell();
    }

    fn has_remote_work(&self) -> bool {
        !self.mailbox.lock().expect("mailbox lock").is_empty()
            || !self.remote_wakes.lock().expect("wake lock").is_empty()
            || self.stop.load(Ordering::SeqCst)
    }
}

/// Counters a reactor keeps about itself; readable from any thread.
#[derive(Debug, Default)]
pub struct ReactorStats {
    /// Loop iterations that found work.
    pub busy_iterations: AtomicU64,
    /// Times the reactor blocked in `io_uring_enter`.
    pub sleeps: AtomicU64,
    /// Completions reaped from the ring.
    pub completions: AtomicU64,
    /// Tasks polled.
    pub polls: AtomicU64,
    /// Doorbells rung by other threads to wake this reactor.
    pub doorbells: AtomicU64,
}

struct WakeHandle {
    task: usize,
    queued: AtomicBool,
    shared: Arc<Shared>,
}

impl Wake for WakeHandle {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        match try_core() {
            Some(core) if core.shared.id == self.shared.id => {
                core.runq.borrow_mut().push_back(self.task)
            }
            _ => {
                self.shared
                    .remote_wakes
                    .lock()
                    .expect("wake lock")
                    .push(self.task);
                self.shared.ring_doorbell();
            }
        }
    }
}

struct TaskSlot {
    future: Option<Task>,
    wake: Arc<WakeHandle>,
    waker: Waker,
}

/// State of one in-flight ring operation.
pub(crate) enum OpSlot {
    /// Submitted; the waker of the future awaiting it, once polled.
    Pending(Option<Waker>),
    /// Completed: result and CQE flags, not yet collected.
    Done(i32, u32),
    /// The future was dropped before completion: the resources the kernel may still touch are
    /// kept here until the completion arrives.
    Abandoned(#[allow(dead_code)] Box<dyn Any>),
}

/// A reactor's thread-local state.
pub(crate) struct Core {
    pub(crate) shared: Arc<Shared>,
    ring: RefCell<IoUring>,
    pub(crate) ops: RefCell<Slab<OpSlot>>,
    tasks: RefCell<Slab<TaskSlot>>,
    runq: RefCell<VecDeque<usize>>,
    pub(crate) pool: BufPool,
    mode: PollMode,
    tuner: RefCell<Adaptive>,
    doorbell_buf: Box<Cell<u64>>,
    pending_submit: Cell<usize>,
    /// Short operations (device I/O, sends) in the ring: their completions are due soon.
    pub(crate) inflight: Cell<usize>,
    /// User-space timers ([`Deadline`]): deadline and a sequence number, and whom to wake.
    /// Checked once per loop iteration while any exist; they cost no ring operation.
    timers: RefCell<BTreeMap<(Instant, u64), Waker>>,
    timer_seq: Cell<u64>,
}

/// Reactor configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Number of reactors (threads), one per core.
    pub cores: usize,
    /// Pin reactor `i` to CPU `i` (modulo the CPUs available).
    pub pin: bool,
    /// How reactors wait when idle.
    pub mode: PollMode,
    /// Submission queue size of each ring.
    pub ring_entries: u32,
    /// Registered buffers per reactor and their size.
    pub registered_buffers: usize,
    /// Size of each registered buffer.
    pub registered_buffer_size: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cores: 1,
            pin: true,
            mode: PollMode::Adaptive,
            ring_entries: 512,
            registered_buffers: 256,
            registered_buffer_size: 128 * 1024,
        }
    }
}

impl Core {
    fn new(id: usize, cfg: &Config, shared: Arc<Shared>) -> io::Result<Core> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_cqsize(cfg.ring_entries * 4)
            .build(cfg.ring_entries)?;
        let pool = BufPool::new(id, cfg.registered_buffers, cfg.registered_buffer_size);
        let iovecs = pool.iovecs();
        // SAFETY: the iovecs describe the pool's allocation, which the Core keeps alive (and
        // IoBufs keep alive through their Arc) for longer than the ring, dropped first.
        unsafe { ring.submitter().register_buffers(&iovecs)? };
        Ok(Core {
            shared,
            ring: RefCell::new(ring),
            ops: RefCell::new(Slab::with_capacity(1024)),
            tasks: RefCell::new(Slab::with_capacity(256)),
            runq: RefCell::new(VecDeque::with_capacity(256)),
            pool,
            mode: cfg.mode,
            tuner: RefCell::new(Adaptive::new(Instant::now())),
            doorbell_buf: Box::new(Cell::new(0)),
            pending_submit: Cell::new(0),
            inflight: Cell::new(0),
            timers: RefCell::new(BTreeMap::new()),
            timer_seq: Cell::new(0),
        })
    }

    /// Pushes a submission queue entry, submitting first if the queue is full.
    ///
    /// # Safety
    /// Every pointer in `entry` must stay valid until its completion is reaped (the caller
    /// parks the memory in an [`Op`] or in the op slot).
    pub(crate) unsafe fn push(&self, entry: &squeue::Entry) {
        let mut ring = self.ring.borrow_mut();
        loop {
            // SAFETY: forwarded from the caller's contract.
            if unsafe { ring.submission().push(entry) }.is_ok() {
                self.pending_submit.set(self.pending_submit.get() + 1);
                return;
            }
            if let Err(e) = ring.submit() {
                if e.raw_os_error() != Some(libc::EBUSY) && e.raw_os_error() != Some(libc::EINTR) {
                    panic!("io_uring submit failed: {e}");
                }
                // Completion queue full: make room by reaping into the op slots.
                drop(ring);
                self.reap();
                ring = self.ring.borrow_mut();
            }
        }
    }

    fn arm_doorbell(&self) {
        let entry = opcode::Read::new(
            types::Fd(self.shared.doorbell.as_raw_fd()),
            self.doorbell_buf.as_ptr().cast(),
            8,
        )
        .build()
        .user_data(DOORBELL);
        // SAFETY: doorbell_buf is boxed in the Core, which outlives the ring's use of it.
        unsafe { self.push(&entry) };
    }

    /// Moves completions into their op slots and wakes the waiting futures.
    fn reap(&self) -> u64 {
        let mut n = 0;
        let mut rearm = false;
        loop {
            let cqe: Option<cqueue::Entry> = self.ring.borrow_mut().completion().next();
            let Some(cqe) = cqe else { break };
            n += 1;
            match cqe.user_data() {
                DOORBELL => rearm = true,
                CANCEL => {}
                ud => {
                    if ud & SHORT_OP != 0 {
                        self.inflight.set(self.inflight.get().saturating_sub(1));
                    }
                    let key = (ud & !SHORT_OP) as usize;
                    let mut ops = self.ops.borrow_mut();
                    let Some(slot) = ops.get_mut(key) else {
                        continue;
                    };
                    match slot {
                        OpSlot::Pending(w) => {
                            let w = w.take();
                            *slot = OpSlot::Done(cqe.result(), cqe.flags());
                            drop(ops);
                            if let Some(w) = w {
                                w.wake();
                            }
                        }
                        OpSlot::Abandoned(_) => {
                            ops.remove(key);
                        }
                        OpSlot::Done(..) => {}
                    }
                }
            }
        }
        if rearm {
            self.arm_doorbell();
        }
        self.shared
            .stats
            .completions
            .fetch_add(n, Ordering::Relaxed);
        n
    }

    pub(crate) fn submit(&self) {
        let mut ring = self.ring.borrow_mut();
        let flagged = ring.submission().taskrun();
        if self.pending_submit.get() > 0 || flagged {
            match ring.submit() {
                Ok(_) => self.pending_submit.set(0),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EINTR)) => {}
                Err(e) => panic!("io_uring submit failed: {e}"),
            }
        }
    }

    /// Wakes the tasks whose timers are due; returns how many.
    fn fire_timers(&self) -> u64 {
        if self.timers.borrow().is_empty() {
            return 0;
        }
        let now = Instant::now();
        let mut fired = 0;
        loop {
            let due = {
                let mut t = self.timers.borrow_mut();
                match t.first_key_value() {
                    Some((k, _)) if k.0 <= now => t.pop_first().map(|(_, w)| w),
                    _ => None,
                }
            };
            let Some(w) = due else { break };
            w.wake();
            fired += 1;
        }
        fired
    }

    /// How long until the first timer is due (zero if it is), if there is one.
    fn next_timer(&self) -> Option<Duration> {
        let t = self.timers.borrow();
        let (k, _) = t.first_key_value()?;
        Some(k.0.saturating_duration_since(Instant::now()))
    }

    /// Blocks until a completion (including the doorbell) arrives, or `timeout` passes.
    fn park(&self, timeout: Option<Duration>) {
        self.shared.sleeping.store(true, Ordering::SeqCst);
        if self.shared.has_remote_work() {
            self.shared.sleeping.store(false, Ordering::SeqCst);
            return;
        }
        self.shared.stats.sleeps.fetch_add(1, Ordering::Relaxed);
        let ring = self.ring.borrow();
        let r = match timeout {
            None => ring.submit_and_wait(1),
            Some(t) => {
                let ts = types::Timespec::new()
                    .sec(t.as_secs())
                    .nsec(t.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                ring.submitter().submit_with_args(1, &args)
            }
        };
        match r {
            Ok(_) => self.pending_submit.set(0),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::ETIME | libc::EBUSY)
                ) =>
            {
                if e.raw_os_error() == Some(libc::ETIME) {
                    self.pending_submit.set(0);
                }
            }
            Err(e) => panic!("io_uring wait failed: {e}"),
        }
        self.shared.sleeping.store(false, Ordering::SeqCst);
    }

    /// Submits what is queued and waits up to `t` for a completion.
    fn wait_completion(&self, t: Duration) {
        let ring = self.ring.borrow();
        let ts = types::Timespec::new()
            .sec(t.as_secs())
            .nsec(t.subsec_nanos());
        let args = types::SubmitArgs::new().timespec(&ts);
        match ring.submitter().submit_with_args(1, &args) {
            Ok(_) => self.pending_submit.set(0),
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => self.pending_submit.set(0),
            Err(_) => {}
        }
    }

    fn spawn_task(&self, future: Task) {
        let (key, _) = self.insert_task(Some(future), true);
        self.runq.borrow_mut().push_back(key);
    }

    /// A new task slot holding `future`, marked queued or not; returns its key and waker.
    fn insert_task(&self, future: Option<Task>, queued: bool) -> (usize, Waker) {
        let mut tasks = self.tasks.borrow_mut();
        let entry = tasks.vacant_entry();
        let key = entry.key();
        let wake = Arc::new(WakeHandle {
            task: key,
            queued: AtomicBool::new(queued),
            shared: self.shared.clone(),
        });
        let waker = Waker::from(wake.clone());
        entry.insert(TaskSlot {
            future,
            wake,
            waker: waker.clone(),
        });
        (key, waker)
    }

    /// Inserts `future` as a task and polls it once at once (see [`spawn_now`]).
    fn spawn_polled(&self, mut future: Task) {
        // The slot is empty while the future runs; not queued until something wakes it.
        let (key, waker) = self.insert_task(None, false);
        // No borrow is held while it runs: it may spawn, wake or drop other tasks. A wake
        // meanwhile queues the key; the run queue finds the future back in its slot.
        let mut cx = Context::from_waker(&waker);
        let ready = future.as_mut().poll(&mut cx).is_ready();
        self.shared.stats.polls.fetch_add(1, Ordering::Relaxed);
        let mut tasks = self.tasks.borrow_mut();
        if ready {
            tasks.remove(key);
        } else if let Some(slot) = tasks.get_mut(key) {
            slot.future = Some(future);
        }
    }

    /// Polls every runnable task once, then the tasks those spawned or woke, for at most
    /// [`TASK_PASSES`] passes; returns how many were polled. A request's task spawned by a
    /// connection's receive task thus queues its device I/O before the ring is entered, and
    /// both go in with one submission instead of one loop iteration apart.
    fn run_tasks(&self) -> u64 {
        {
            let mut remote = self.shared.remote_wakes.lock().expect("wake lock");
            if !remote.is_empty() {
                self.runq.borrow_mut().extend(remote.drain(..));
            }
        }
        let mut polled = 0;
        for _ in 0..TASK_PASSES {
            polled += self.run_pass();
            if self.runq.borrow().is_empty() {
                break;
            }
        }
        self.shared.stats.polls.fetch_add(polled, Ordering::Relaxed);
        polled
    }

    /// Polls the tasks that are runnable now once each.
    fn run_pass(&self) -> u64 {
        let mut polled = 0;
        let budget = self.runq.borrow().len();
        for _ in 0..budget {
            let Some(key) = self.runq.borrow_mut().pop_front() else {
                break;
            };
            let (mut fut, waker) = {
                let mut tasks = self.tasks.borrow_mut();
                let Some(slot) = tasks.get_mut(key) else {
                    continue;
                };
                slot.wake.queued.store(false, Ordering::Release);
                let Some(f) = slot.future.take() else {
                    continue;
                };
                (f, slot.waker.clone())
            };
            polled += 1;
            let mut cx = Context::from_waker(&waker);
            if fut.as_mut().poll(&mut cx).is_ready() {
                self.tasks.borrow_mut().remove(key);
            } else if let Some(slot) = self.tasks.borrow_mut().get_mut(key) {
                slot.future = Some(fut);
            }
        }
        polled
    }

    fn run_mailbox(&self) -> u64 {
        let msgs: Vec<Message> = {
            let mut mb = self.shared.mailbox.lock().expect("mailbox lock");
            if mb.is_empty() {
                return 0;
            }
            mb.drain(..).collect()
        };
        let n = msgs.len() as u64;
        for m in msgs {
            m();
        }
        n
    }

    fn run(&self) {
        self.arm_doorbell();
        // Events not yet reported to the adaptive tuner, and when the current idle stretch
        // began. The busy path reads no clock: the tuner hears about work once it dries up.
        let mut unreported: u64 = 0;
        let mut idle_since: Option<Instant> = None;
        loop {
            let mut work = self.run_mailbox();
            work += self.fire_timers();
            work += self.run_tasks();
            self.submit();
            work += self.reap();
            if self.shared.stop.load(Ordering::SeqCst) {
                break;
            }
            if work > 0 || !self.runq.borrow().is_empty() {
                self.shared
                    .stats
                    .busy_iterations
                    .fetch_add(1, Ordering::Relaxed);
                unreported += work;
                idle_since = None;
                continue;
            }
            match self.mode {
                PollMode::Poll => std::hint::spin_loop(),
                PollMode::Interrupt => self.park(self.next_timer()),
                PollMode::Adaptive => {
                    let now = Instant::now();
                    let since = *idle_since.get_or_insert(now);
                    let mut tuner = self.tuner.borrow_mut();
                    if unreported > 0 {
                        tuner.activity(now, unreported);
                        unreported = 0;
                    }
                    // A completion of device I/O or a send is due soon: sleeping now would add a
                    // wake-up (tens of µs in a VM) to it. Keep polling, within a bound.
                    let spin = if self.inflight.get() > 0 {
                        crate::mode::MAX_SPIN_INFLIGHT
                    } else {
                        tuner.spin_window(now)
                    };
                    drop(tuner);
                    if now.duration_since(since) >= spin {
                        self.park(self.next_timer());
                        idle_since = None;
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
        }
        self.shutdown();
    }

    /// Drops every task, cancels what is still in the ring and waits (bounded) for the kernel
    /// to let go of the memory those operations reference.
    fn shutdown(&self) {
        let tasks: Vec<TaskSlot> = self.tasks.borrow_mut().drain().collect();
        drop(tasks);
        let keys: Vec<usize> = self.ops.borrow().iter().map(|(k, _)| k).collect();
        for k in keys {
            // The op's user_data may carry SHORT_OP: cancel both forms.
            for ud in [k as u64, k as u64 | SHORT_OP] {
                let e = opcode::AsyncCancel::new(ud).build().user_data(CANCEL);
                // SAFETY: a cancel request references no memory.
                unsafe { self.push(&e) };
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while self
            .ops
            .borrow()
            .iter()
            .any(|(_, s)| matches!(s, OpSlot::Abandoned(_) | OpSlot::Pending(_)))
            && Instant::now() < deadline
        {
            // Not `park`: it returns at once once `stop` is set, without submitting the
            // cancellations, which then never complete.
            self.wait_completion(Duration::from_millis(50));
            self.reap();
        }
        let stuck: Vec<OpSlot> = self.ops.borrow_mut().drain().collect();
        // Whatever the kernel still holds must never be freed: leak it rather than risk a
        // use-after-free (only reachable if the kernel ignores cancellation for 2 s).
        for s in stuck {
            if !matches!(s, OpSlot::Done(..)) {
                std::mem::forget(s);
            }
        }
    }
}

/// Spawns a task on the current reactor. Must be called on a reactor thread.
pub fn spawn_local<F, T>(future: F) -> JoinHandle<T>
where
    F: Future<Output = T> + 'static,
    T: 'static,
{
    let state = Rc::new(RefCell::new(JoinState {
        value: None,
        waker: None,
    }));
    let s2 = state.clone();
    let task = async move {
        let v = future.await;
        let mut st = s2.borrow_mut();
        st.value = Some(v);
        if let Some(w) = st.waker.take() {
            w.wake();
        }
    };
    with_core(|c| c.spawn_task(Box::pin(task)));
    JoinHandle { state }
}

struct JoinState<T> {
    value: Option<T>,
    waker: Option<Waker>,
}

/// Spawns a detached task and polls it once right away, inside the caller's own poll: the
/// operations it queues on the ring go in with the next submission, ahead of anything the
/// caller queues after it. Meant for a request's task spawned by a connection's receive
/// loop: its device I/O is submitted before the loop re-arms its receive, not one pass
/// later. Must be called on a reactor thread.
pub fn spawn_now<F>(future: F)
where
    F: Future<Output = ()> + 'static,
{
    let core = with_core(Rc::clone);
    core.spawn_polled(Box::pin(future));
}

/// Awaits a spawned task's output. Dropping it detaches the task, which keeps running.
pub struct JoinHandle<T> {
    state: Rc<RefCell<JoinState<T>>>,
}

impl<T> std::fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinHandle")
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut st = self.state.borrow_mut();
        match st.value.take() {
            Some(v) => Poll::Ready(v),
            None => {
                st.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// The id of the reactor running the calling thread, if any.
pub fn current_id() -> Option<usize> {
    CURRENT.with(|c| c.borrow().as_ref().map(|c| c.shared.id))
}

/// A handle to the reactor running the calling thread, if any: lets a reactor-local object
/// tell other reactors where to send it work.
pub fn current_handle() -> Option<ReactorHandle> {
    try_core().map(|c| ReactorHandle {
        shared: c.shared.clone(),
    })
}

/// A buffer for `len` bytes to read or receive into: registered, from the current reactor's
/// pool, when one is free and large enough; otherwise a recycled large buffer or a new one.
/// Its contents are unspecified (initialised, possibly stale): callers overwrite them.
pub fn alloc_buf(len: usize) -> IoBuf {
    try_core()
        .and_then(|c| c.pool.take(len))
        .unwrap_or_else(|| IoBuf::recycled(len))
}

/// A cloneable, thread-safe handle to one reactor: send it work.
#[derive(Clone)]
pub struct ReactorHandle {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for ReactorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReactorHandle")
            .field("id", &self.shared.id)
            .finish()
    }
}

impl ReactorHandle {
    /// The reactor's index.
    pub fn id(&self) -> usize {
        self.shared.id
    }

    /// Runs `f` on the reactor thread (through its mailbox).
    pub fn post(&self, f: impl FnOnce() + Send + 'static) {
        self.shared.post(Box::new(f));
    }

    /// Spawns the future built by `make` on the reactor. `make` runs on the reactor thread, so
    /// the future itself need not be `Send`.
    pub fn spawn<F, Fut>(&self, make: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.post(move || {
            spawn_local(make());
        });
    }

    /// Runs the future built by `make` on the reactor and returns its output to the caller,
    /// which may be any thread or executor (the reply wakes a standard `Waker`).
    pub fn call<F, Fut, T>(&self, make: F) -> impl Future<Output = T> + Send + 'static
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = crate::sync::oneshot();
        self.spawn(move || async move {
            tx.send(make().await);
        });
        async move { rx.await.expect("reactor stopped before answering") }
    }

    /// This reactor's counters.
    pub fn stats(&self) -> &ReactorStats {
        &self.shared.stats
    }
}

/// A set of running reactors, one thread each.
pub struct Runtime {
    handles: Vec<ReactorHandle>,
    threads: Vec<std::thread::JoinHandle<()>>,
    mode: PollMode,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("reactors", &self.handles.len())
            .finish()
    }
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned descriptor is checked and then owned.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pin_to_cpu(index: usize) {
    // SAFETY: cpu_set_t is plain data; zeroed is its empty value.
    let mut allowed: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: reads this thread's affinity into a properly sized set.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut allowed) }
        != 0
    {
        return;
    }
    let cpus: Vec<usize> =
        // SAFETY: CPU_ISSET only reads the set.
        (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &allowed) }).collect();
    if cpus.is_empty() {
        return;
    }
    // SAFETY: as above.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the cpu index comes from the allowed set, inside CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpus[index % cpus.len()], &mut set) };
    // SAFETY: sets this thread's affinity from a valid set; failure is harmless.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
}

impl Runtime {
    /// Starts `cfg.cores` reactors and returns once each has its ring set up.
    pub fn start(cfg: Config) -> io::Result<Runtime> {
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        for id in 0..cfg.cores.max(1) {
            let shared = Arc::new(Shared {
                id,
                mailbox: Mutex::new(VecDeque::new()),
                remote_wakes: Mutex::new(Vec::new()),
                sleeping: AtomicBool::new(false),
                stop: AtomicBool::new(false),
                doorbell: eventfd()?,
                stats: ReactorStats::default(),
            });
            let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
            let cfg2 = cfg.clone();
            let sh = shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("reactor-{id}"))
                .spawn(move || {
                    if cfg2.pin {
                        pin_to_cpu(id);
                    }
                    let core = match Core::new(id, &cfg2, sh) {
                        Ok(c) => Rc::new(c),
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    CURRENT.with(|c| *c.borrow_mut() = Some(core.clone()));
                    let _ = ready_tx.send(Ok(()));
                    core.run();
                    CURRENT.with(|c| c.borrow_mut().take());
                })?;
            ready_rx
                .recv()
                .map_err(|_| io::Error::other("reactor thread died during start"))??;
            handles.push(ReactorHandle { shared });
            threads.push(t);
        }
        Ok(Runtime {
            handles,
            threads,
            mode: cfg.mode,
        })
    }

    /// Handles to every reactor, by index.
    pub fn handles(&self) -> &[ReactorHandle] {
        &self.handles
    }

    /// The reactors' polling mode.
    pub fn mode(&self) -> PollMode {
        self.mode
    }

    /// Stops every reactor (tasks are dropped) and joins the threads.
    pub fn shutdown(self) {
        for h in &self.handles {
            h.shared.request_stop();
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// A point in time as a future: ready once the reactor's clock passes it. Kept in the
/// reactor's user-space timer list (no ring operation), checked once per loop iteration; a
/// sleeping reactor wakes for the first one. For timeouts that usually do not fire (an I/O
/// deadline), this costs far less than a ring timeout that must be cancelled.
#[derive(Debug)]
pub struct Deadline {
    at: Instant,
    /// The timer-list entry while registered.
    key: Option<(Instant, u64)>,
}

impl Deadline {
    /// Ready at `at`.
    pub fn at(at: Instant) -> Deadline {
        Deadline { at, key: None }
    }

    /// Ready after `d`.
    pub fn after(d: Duration) -> Deadline {
        Deadline::at(Instant::now() + d)
    }
}

impl Future for Deadline {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.at {
            if let Some(k) = self.key.take() {
                with_core(|c| c.timers.borrow_mut().remove(&k));
            }
            return Poll::Ready(());
        }
        let at = self.at;
        let key = *self.key.get_or_insert_with(|| {
            with_core(|c| {
                let n = c.timer_seq.get();
                c.timer_seq.set(n + 1);
                (at, n)
            })
        });
        with_core(|c| {
            let mut t = c.timers.borrow_mut();
            match t.get_mut(&key) {
                Some(w) if w.will_wake(cx.waker()) => {}
                Some(w) => *w = cx.waker().clone(),
                None => {
                    t.insert(key, cx.waker().clone());
                }
            }
        });
        Poll::Pending
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        if let Some(k) = self.key.take()
            && let Some(c) = try_core()
        {
            c.timers.borrow_mut().remove(&k);
        }
    }
}
