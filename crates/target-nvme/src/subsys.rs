//! Subsystems, namespaces and controllers: the state shared by every queue of a controller
//! (which may live on different reactors), behind short-held locks. The I/O path reads it
//! through per-queue caches ([`Subsystem::ns_generation`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::Waker;
use std::time::Instant;

use blockdev::Device;
use proto_nvme::{AsyncEvent, ErrorLogEntry, Status, async_event_config, trtype};
use reactor::ShutdownHandle;

use crate::{ERROR_LOG_ENTRIES, MAX_AER};

/// One namespace: a device under an NSID.
pub(crate) struct Namespace {
    pub(crate) nsid: u32,
    pub(crate) device: Device,
    pub(crate) read_only: bool,
    pub(crate) nguid: [u8; 16],
    pub(crate) uuid: [u8; 16],
    /// The device's fencing state ([`blockdev::fence`]), on which NVMe reservations are
    /// mapped ([`crate::resv`]): shared with local users of the device, so a host fenced
    /// out here is fenced out there too.
    pub(crate) resv: Arc<blockdev::fence::Reservations>,
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("nsid", &self.nsid)
            .field("device", &self.device.name())
            .finish()
    }
}

/// FNV-1a over `parts`, from `seed`.
fn fnv(seed: u64, parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for p in parts {
        for &b in *p {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        h = (h ^ 0xff).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// 16 stable bytes derived from the subsystem NQN, the NSID and a purpose tag.
pub(crate) fn stable_id(tag: &str, nqn: &str, nsid: u32) -> [u8; 16] {
    let n = nsid.to_le_bytes();
    let parts: [&[u8]; 3] = [tag.as_bytes(), nqn.as_bytes(), &n];
    let a = fnv(1, &parts).to_be_bytes();
    let b = fnv(2, &parts).to_be_bytes();
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a);
    out[8..].copy_from_slice(&b);
    out
}

/// A subsystem: the discovery subsystem or an NVM subsystem with namespaces.
pub(crate) struct Subsystem {
    pub(crate) nqn: String,
    pub(crate) discovery: bool,
    pub(crate) serial: String,
    pub(crate) hosts: Mutex<BTreeSet<String>>,
    pub(crate) namespaces: RwLock<BTreeMap<u32, Arc<Namespace>>>,
    /// Bumped on every namespace change; queues re-read their namespace cache when it moves.
    pub(crate) ns_gen: AtomicU64,
    pub(crate) ctrls: Mutex<BTreeMap<u16, Arc<Controller>>>,
    next_cntlid: Mutex<u16>,
    pub(crate) ana_chgcnt: AtomicU64,
    pub(crate) removed: AtomicBool,
}

impl std::fmt::Debug for Subsystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subsystem").field("nqn", &self.nqn).finish()
    }
}

impl Subsystem {
    pub(crate) fn new(nqn: &str, discovery: bool, hosts: &[String]) -> Subsystem {
        let h = fnv(7, &[nqn.as_bytes()]);
        Subsystem {
            nqn: nqn.to_string(),
            discovery,
            serial: format!("{h:016x}")[..16].to_string(),
            hosts: Mutex::new(hosts.iter().cloned().collect()),
            namespaces: RwLock::new(BTreeMap::new()),
            ns_gen: AtomicU64::new(1),
            ctrls: Mutex::new(BTreeMap::new()),
            next_cntlid: Mutex::new(1),
            ana_chgcnt: AtomicU64::new(1),
            removed: AtomicBool::new(false),
        }
    }

    /// Whether `hostnqn` may connect (an empty allow-list admits every host).
    pub(crate) fn host_allowed(&self, hostnqn: &str) -> bool {
        let h = self.hosts.lock().expect("hosts lock");
        h.is_empty() || h.contains(hostnqn)
    }

    pub(crate) fn ns_generation(&self) -> u64 {
        self.ns_gen.load(Ordering::Acquire)
    }

    pub(crate) fn nsids(&self) -> Vec<u32> {
        self.namespaces
            .read()
            .expect("namespaces lock")
            .keys()
            .copied()
            .collect()
    }

    /// Registers a new controller with a free CNTLID (1..=FFEFh).
    pub(crate) fn add_controller(
        self: &Arc<Self>,
        make: impl FnOnce(u16) -> Controller,
    ) -> Option<Arc<Controller>> {
        let mut ctrls = self.ctrls.lock().expect("ctrls lock");
        let mut next = self.next_cntlid.lock().expect("cntlid lock");
        for _ in 0..0xfff0u32 {
            let id = *next;
            *next = if id >= 0xffef { 1 } else { id + 1 };
            if let std::collections::btree_map::Entry::Vacant(v) = ctrls.entry(id) {
                let c = Arc::new(make(id));
                v.insert(c.clone());
                return Some(c);
            }
        }
        None
    }

    pub(crate) fn controller(&self, cntlid: u16) -> Option<Arc<Controller>> {
        self.ctrls.lock().expect("ctrls lock").get(&cntlid).cloned()
    }

    /// Every live controller.
    pub(crate) fn controllers(&self) -> Vec<Arc<Controller>> {
        self.ctrls
            .lock()
            .expect("ctrls lock")
            .values()
            .cloned()
            .collect()
    }

    /// Tells every controller that `nsid` changed (added, removed, resized).
    pub(crate) fn namespace_changed(&self, nsid: u32) {
        self.ns_gen.fetch_add(1, Ordering::AcqRel);
        self.ana_chgcnt.fetch_add(1, Ordering::Relaxed);
        for c in self.controllers() {
            c.namespace_changed(nsid);
        }
    }
}

/// Per-controller counters for the SMART / Health log page.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) read_bytes: AtomicU64,
    pub(crate) written_bytes: AtomicU64,
    pub(crate) read_cmds: AtomicU64,
    pub(crate) write_cmds: AtomicU64,
    pub(crate) media_errors: AtomicU64,
}

/// Mutable controller state (registers, features, events, error log).
#[derive(Debug)]
pub(crate) struct CtrlState {
    pub(crate) cc: u32,
    pub(crate) csts: u32,
    /// I/O queues granted by Set Features Number of Queues (not 0's based).
    pub(crate) io_queues: u16,
    pub(crate) aec: u32,
    pub(crate) vwc: bool,
    pub(crate) aer_cids: VecDeque<u16>,
    pub(crate) events: VecDeque<AsyncEvent>,
    /// Events whose log page the host has not read yet (no new event of that kind until).
    pub(crate) masked: BTreeSet<u8>,
    pub(crate) changed_ns: BTreeSet<u32>,
    pub(crate) changed_overflow: bool,
    pub(crate) errors: VecDeque<ErrorLogEntry>,
    pub(crate) error_count: u64,
}

/// A controller: created by Connect on an admin queue; its I/O queues join it by CNTLID.
pub(crate) struct Controller {
    pub(crate) cntlid: u16,
    pub(crate) subsys: Arc<Subsystem>,
    pub(crate) hostnqn: String,
    pub(crate) hostid: [u8; 16],
    pub(crate) kato_ms: AtomicU32,
    /// Milliseconds since `born` at the last Keep Alive (or admin command).
    pub(crate) last_ka_ms: AtomicU64,
    pub(crate) born: Instant,
    pub(crate) dead: AtomicBool,
    /// CSTS.RDY, mirrored out of `st` so that every I/O command can check it without the
    /// lock; written with `st` held.
    ready: AtomicBool,
    pub(crate) st: Mutex<CtrlState>,
    /// Open queues: QID to the handle that closes its connection.
    pub(crate) queues: Mutex<BTreeMap<u16, ShutdownHandle>>,
    pub(crate) counters: Counters,
    aer_waker: Mutex<Option<Waker>>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("cntlid", &self.cntlid)
            .field("subsys", &self.subsys.nqn)
            .field("hostnqn", &self.hostnqn)
            .finish()
    }
}

impl Controller {
    pub(crate) fn new(
        cntlid: u16,
        subsys: Arc<Subsystem>,
        hostnqn: &str,
        hostid: [u8; 16],
        kato_ms: u32,
    ) -> Controller {
        Controller {
            cntlid,
            subsys,
            hostnqn: hostnqn.to_string(),
            hostid,
            kato_ms: AtomicU32::new(kato_ms),
            last_ka_ms: AtomicU64::new(0),
            born: Instant::now(),
            dead: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            st: Mutex::new(CtrlState {
                cc: 0,
                csts: 0,
                io_queues: 0,
                aec: 0,
                vwc: true,
                aer_cids: VecDeque::new(),
                events: VecDeque::new(),
                masked: BTreeSet::new(),
                changed_ns: BTreeSet::new(),
                changed_overflow: false,
                errors: VecDeque::new(),
                error_count: 0,
            }),
            queues: Mutex::new(BTreeMap::new()),
            counters: Counters::default(),
            aer_waker: Mutex::new(None),
        }
    }

    pub(crate) fn state(&self) -> std::sync::MutexGuard<'_, CtrlState> {
        self.st.lock().expect("controller lock")
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    pub(crate) fn enabled(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Publishes CSTS.RDY after `st.csts` changed (the caller holds the state lock).
    pub(crate) fn publish_ready(&self, st: &CtrlState) {
        self.ready.store(st.csts & 1 != 0, Ordering::Release);
    }

    pub(crate) fn touch(&self) {
        self.last_ka_ms
            .store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Milliseconds since the last keep-alive.
    pub(crate) fn idle_ms(&self) -> u64 {
        (self.born.elapsed().as_millis() as u64)
            .saturating_sub(self.last_ka_ms.load(Ordering::Relaxed))
    }

    /// Records a failed command in the Error Information log.
    pub(crate) fn log_error(
        &self,
        sqid: u16,
        cid: u16,
        status: Status,
        location: u16,
        nsid: u32,
        lba: u64,
    ) {
        let mut st = self.state();
        st.error_count += 1;
        let e = ErrorLogEntry {
            error_count: st.error_count,
            sqid,
            cid,
            status,
            param_error_location: location,
            lba,
            nsid,
            vs: 0,
            trtype: trtype::TCP,
            csi: 0,
            ttsi: 0,
        };
        st.errors.push_front(e);
        st.errors.truncate(ERROR_LOG_ENTRIES);
    }

    /// Queues an asynchronous event if the host enabled it and it is not masked.
    pub(crate) fn post_event(&self, ev: AsyncEvent) {
        {
            let mut st = self.state();
            if let Some(bit) = ev.config_bit()
                && st.aec & bit == 0
            {
                return;
            }
            if !st.masked.insert(ev.log_page) {
                return;
            }
            st.events.push_back(ev);
        }
        self.wake_aer();
    }

    pub(crate) fn namespace_changed(&self, nsid: u32) {
        {
            let mut st = self.state();
            if st.changed_ns.len() >= proto_nvme::MAX_NSID_LIST {
                st.changed_overflow = true;
            } else {
                st.changed_ns.insert(nsid);
            }
        }
        self.post_event(AsyncEvent::NAMESPACE_CHANGED);
        if self.state().aec & async_event_config::ANA_CHANGE != 0 {
            self.post_event(AsyncEvent::ANA_CHANGE);
        }
    }

    pub(crate) fn wake_aer(&self) {
        if let Some(w) = self.aer_waker.lock().expect("waker lock").take() {
            w.wake();
        }
    }

    /// An outstanding Async Event Request paired with an event, if both exist; else parks
    /// `waker` for [`Controller::wake_aer`].
    pub(crate) fn take_event(&self, waker: &Waker) -> Option<(u16, AsyncEvent)> {
        let mut st = self.state();
        if !st.aer_cids.is_empty() && !st.events.is_empty() {
            let cid = st.aer_cids.pop_front()?;
            let ev = st.events.pop_front()?;
            return Some((cid, ev));
        }
        *self.aer_waker.lock().expect("waker lock") = Some(waker.clone());
        None
    }

    /// Holds an Async Event Request; false if [`MAX_AER`] are already outstanding.
    pub(crate) fn push_aer(&self, cid: u16) -> bool {
        let ok = {
            let mut st = self.state();
            if st.aer_cids.len() >= MAX_AER {
                false
            } else {
                st.aer_cids.push_back(cid);
                true
            }
        };
        self.wake_aer();
        ok
    }

    /// Ends the controller: removes it from its subsystem and shuts every queue's socket
    /// down (their connections then end). Idempotent.
    pub(crate) fn teardown(&self) {
        if self.dead.swap(true, Ordering::SeqCst) {
            return;
        }
        self.subsys
            .ctrls
            .lock()
            .expect("ctrls lock")
            .remove(&self.cntlid);
        for q in self.queues.lock().expect("queues lock").values() {
            q.shutdown();
        }
        self.wake_aer();
    }
}
