//! Fencing: who may write a device, in terms no protocol owns.
//!
//! A replica may be written by a nexus in the same engine (directly) and by a nexus on
//! another node (through the engine's NVMe/TCP target). Fencing must hold for both: once a
//! newer incarnation has taken the replica over, the older one's writes fail *whichever way
//! they arrive*. So the state lives with the storage — the engine keeps one
//! [`Reservations`] per device it owns and hands the same table to the NVMe/TCP target
//! exporting the device and to local users through a [`HostView`].
//!
//! The model is persistent reservations as NVMe and SCSI share them: *registrants*, each a
//! host (a 128-bit [`HostId`]) with a key; at most one *reservation* of a [`Mode`] with a
//! holder; and the operations register / unregister / replace key, acquire, preempt (remove
//! the registrants holding a key, taking their reservation), release and clear. An operation
//! that names a current key must match the caller's registration ([`Key::Current`]) unless
//! it asks to ignore it ([`Key::Any`]). The protocol crates map their commands onto these
//! operations and [`FenceError`] back onto their status (target-nvme: Reservation Register,
//! Acquire, Release and Report; RESERVATION CONFLICT). A nexus only needs [`Reservations::claim`]:
//! register under its epoch and take Write Exclusive, preempting whoever held it.
//!
//! The state is in memory: a restarted engine starts with no reservations (persistence
//! through power loss is not supported); a nexus claims its children again when it rebuilds
//! them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::{
    BlockDevice, BlockError, Device, ErrorKind, IoBuf, IoFuture, IoKind, Result, WriteFlags,
    ZeroFlags,
};

/// A host's identity: 128 bits (an NVMe host identifier, a SCSI initiator's port id hashed).
pub type HostId = [u8; 16];

/// The kind of reservation: who may read and who may write while it is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Everyone reads; only the holder writes.
    WriteExclusive,
    /// Only the holder reads or writes.
    ExclusiveAccess,
    /// Everyone reads; registrants write; one registrant holds it.
    WriteExclusiveRegistrantsOnly,
    /// Registrants read and write; one registrant holds it.
    ExclusiveAccessRegistrantsOnly,
    /// Everyone reads; registrants write; every registrant holds it.
    WriteExclusiveAllRegistrants,
    /// Registrants read and write; every registrant holds it.
    ExclusiveAccessAllRegistrants,
}

impl Mode {
    const fn all_registrants(self) -> bool {
        matches!(
            self,
            Mode::WriteExclusiveAllRegistrants | Mode::ExclusiveAccessAllRegistrants
        )
    }
}

/// What an I/O does, for the access check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads (and compares, verifies, block status).
    Read,
    /// Writes, write-zeroes, unmap, flush.
    Write,
}

/// The key an operation presents as the caller's current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// Must equal the caller's registered key.
    Current(u64),
    /// Whatever the caller registered (NVMe's IEKEY); the caller must still be registered.
    Any,
}

/// Why a fencing operation or an access was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceError {
    /// Not allowed in the current state: not registered, a wrong key, another holder, or an
    /// access the reservation forbids.
    Conflict,
    /// A request that can never succeed (a zero key to preempt with, a release of another
    /// mode than held).
    Invalid(&'static str),
}

impl std::fmt::Display for FenceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FenceError::Conflict => f.write_str("reservation conflict"),
            FenceError::Invalid(why) => write!(f, "invalid fencing request: {why}"),
        }
    }
}

impl std::error::Error for FenceError {}

/// One registrant, as [`Reservations::report`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registrant {
    /// Who.
    pub host: HostId,
    /// Its key.
    pub key: u64,
    /// The path it last registered through, as the protocol numbers paths (the NVMe
    /// controller ID); 0 for local users.
    pub path: u16,
    /// Whether it holds the reservation.
    pub holds: bool,
}

/// A copy of the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Bumped by every change of registrations (and by preempt and clear).
    pub generation: u32,
    /// The reservation held, if any.
    pub mode: Option<Mode>,
    /// Every registrant, ordered by host.
    pub registrants: Vec<Registrant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reg {
    key: u64,
    path: u16,
}

#[derive(Debug, Default, Clone)]
struct State {
    regs: BTreeMap<HostId, Reg>,
    /// The host that acquired the reservation (for the all-registrants modes every
    /// registrant holds it).
    holder: Option<HostId>,
    mode: Option<Mode>,
    generation: u32,
}

type Outcome = std::result::Result<(), FenceError>;

impl State {
    fn is_holder(&self, host: &HostId) -> bool {
        match self.mode {
            None => false,
            Some(m) if m.all_registrants() => self.regs.contains_key(host),
            Some(_) => self.holder.as_ref() == Some(host),
        }
    }

    fn key_ok(&self, host: &HostId, key: Key) -> Outcome {
        match (self.regs.get(host), key) {
            (Some(_), Key::Any) => Ok(()),
            (Some(r), Key::Current(k)) if r.key == k => Ok(()),
            _ => Err(FenceError::Conflict),
        }
    }

    fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    fn clear_reservation(&mut self) {
        self.holder = None;
        self.mode = None;
    }

    /// Drops the reservation when its holder is no longer registered (for the
    /// all-registrants modes: when no registrant is left).
    fn settle(&mut self) {
        let gone = match self.mode {
            None => return,
            Some(m) if m.all_registrants() => self.regs.is_empty(),
            Some(_) => self.holder.is_none_or(|h| !self.regs.contains_key(&h)),
        };
        if gone {
            self.clear_reservation();
        }
    }

    fn check(&self, host: &HostId, access: Access) -> Outcome {
        let Some(mode) = self.mode else {
            return Ok(());
        };
        if self.is_holder(host) {
            return Ok(());
        }
        let registered = self.regs.contains_key(host);
        let ok = match (mode, access) {
            (Mode::WriteExclusive, Access::Read) => true,
            (Mode::WriteExclusive, Access::Write) | (Mode::ExclusiveAccess, _) => false,
            (
                Mode::WriteExclusiveRegistrantsOnly | Mode::WriteExclusiveAllRegistrants,
                Access::Read,
            ) => true,
            (
                Mode::WriteExclusiveRegistrantsOnly
                | Mode::WriteExclusiveAllRegistrants
                | Mode::ExclusiveAccessRegistrantsOnly
                | Mode::ExclusiveAccessAllRegistrants,
                _,
            ) => registered,
        };
        if ok {
            Ok(())
        } else {
            Err(FenceError::Conflict)
        }
    }

    fn register(&mut self, host: &HostId, key: u64, path: u16) -> Outcome {
        match self.regs.get_mut(host) {
            Some(r) if r.key == key => {
                r.path = path;
                Ok(())
            }
            Some(_) => Err(FenceError::Conflict),
            None => {
                self.regs.insert(*host, Reg { key, path });
                self.bump();
                Ok(())
            }
        }
    }

    fn unregister(&mut self, host: &HostId, current: Key) -> Outcome {
        self.key_ok(host, current)?;
        self.regs.remove(host);
        self.settle();
        self.bump();
        Ok(())
    }

    fn replace_key(&mut self, host: &HostId, current: Key, new: u64, path: u16) -> Outcome {
        match self.regs.get_mut(host) {
            Some(r) if current == Key::Any || current == Key::Current(r.key) => {
                r.key = new;
                r.path = path;
            }
            Some(_) => return Err(FenceError::Conflict),
            // Not registered: ignoring the current key, the host registers with the new one.
            None if current == Key::Any => {
                self.regs.insert(*host, Reg { key: new, path });
            }
            None => return Err(FenceError::Conflict),
        }
        self.bump();
        Ok(())
    }

    fn acquire(&mut self, host: &HostId, current: Key, mode: Mode) -> Outcome {
        self.key_ok(host, current)?;
        match self.mode {
            None => {
                self.mode = Some(mode);
                self.holder = Some(*host);
                Ok(())
            }
            Some(m) if m == mode && self.is_holder(host) => Ok(()),
            Some(_) => Err(FenceError::Conflict),
        }
    }

    fn remove_key(&mut self, key: u64, except: &HostId) {
        self.regs.retain(|h, r| h == except || r.key != key);
    }

    fn preempt(&mut self, host: &HostId, current: Key, mode: Mode, victim: u64) -> Outcome {
        self.key_ok(host, current)?;
        match self.mode {
            None => {
                // No reservation: remove the registrants holding the victim key.
                if victim == 0 {
                    return Err(FenceError::Invalid("no key to preempt"));
                }
                self.remove_key(victim, host);
            }
            Some(m) if m.all_registrants() => {
                if victim == 0 {
                    // Every other registrant goes; the preempting host takes a new
                    // reservation.
                    self.regs.retain(|h, _| h == host);
                    self.mode = Some(mode);
                    self.holder = Some(*host);
                } else {
                    self.remove_key(victim, host);
                    self.settle();
                }
            }
            Some(_) => {
                let holder_key = self.holder.and_then(|h| self.regs.get(&h)).map(|r| r.key);
                if holder_key == Some(victim) {
                    // Preempting the holder: its registration (and every other with that
                    // key) goes and the preempting host holds the reservation, possibly of
                    // another mode.
                    self.remove_key(victim, host);
                    self.mode = Some(mode);
                    self.holder = Some(*host);
                } else {
                    if victim == 0 {
                        return Err(FenceError::Invalid("no key to preempt"));
                    }
                    self.remove_key(victim, host);
                    self.settle();
                }
            }
        }
        self.bump();
        Ok(())
    }

    fn release(&mut self, host: &HostId, current: Key, mode: Mode) -> Outcome {
        self.key_ok(host, current)?;
        match self.mode {
            // Nothing held, or held by someone else: nothing to do.
            None => Ok(()),
            Some(_) if !self.is_holder(host) => Ok(()),
            Some(m) if m != mode => Err(FenceError::Invalid("release of another mode than held")),
            Some(_) => {
                self.clear_reservation();
                Ok(())
            }
        }
    }

    fn clear(&mut self, host: &HostId, current: Key) -> Outcome {
        self.key_ok(host, current)?;
        self.clear_reservation();
        self.regs.clear();
        self.bump();
        Ok(())
    }

    fn report(&self) -> Report {
        Report {
            generation: self.generation,
            mode: self.mode,
            registrants: self
                .regs
                .iter()
                .map(|(h, r)| Registrant {
                    host: *h,
                    key: r.key,
                    path: r.path,
                    holds: self.is_holder(h),
                })
                .collect(),
        }
    }
}

/// The fencing state of one device, shared by everything that reaches it.
#[derive(Debug, Default)]
pub struct Reservations {
    /// Set while a reservation is held, so unreserved I/O skips the lock.
    held: AtomicBool,
    state: Mutex<State>,
}

impl Reservations {
    /// No registrants, no reservation.
    pub fn new() -> Reservations {
        Reservations::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut s = self.state.lock().expect("reservations lock");
        let out = f(&mut s);
        self.held.store(s.mode.is_some(), Ordering::SeqCst);
        out
    }

    /// Whether a reservation is held (I/O must be checked).
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }

    /// Whether `host` may perform `access` now.
    pub fn check(&self, host: &HostId, access: Access) -> Outcome {
        if !self.is_held() {
            return Ok(());
        }
        self.state
            .lock()
            .expect("reservations lock")
            .check(host, access)
    }

    /// Registers `host` with `key`, through `path`. Registering again with the same key only
    /// updates the path; with another key it conflicts (use [`Reservations::replace_key`]).
    pub fn register(&self, host: &HostId, key: u64, path: u16) -> Outcome {
        self.with(|s| s.register(host, key, path))
    }

    /// Removes `host`'s registration; a reservation it held goes with it.
    pub fn unregister(&self, host: &HostId, current: Key) -> Outcome {
        self.with(|s| s.unregister(host, current))
    }

    /// Gives `host` the key `new`; with [`Key::Any`] an unregistered host registers.
    pub fn replace_key(&self, host: &HostId, current: Key, new: u64, path: u16) -> Outcome {
        self.with(|s| s.replace_key(host, current, new, path))
    }

    /// Takes a reservation of `mode` for `host`, which must be registered; conflicts while
    /// anyone else holds one (holding it already, in the same mode, is success).
    pub fn acquire(&self, host: &HostId, current: Key, mode: Mode) -> Outcome {
        self.with(|s| s.acquire(host, current, mode))
    }

    /// Removes every other registrant holding the key `victim`; if that is the holder,
    /// `host` takes the reservation, in `mode`. In an all-registrants reservation a victim
    /// key of 0 removes every other registrant and gives `host` a new reservation.
    pub fn preempt(&self, host: &HostId, current: Key, mode: Mode, victim: u64) -> Outcome {
        self.with(|s| s.preempt(host, current, mode, victim))
    }

    /// Gives up `host`'s reservation of `mode`; a host that holds none is not refused.
    pub fn release(&self, host: &HostId, current: Key, mode: Mode) -> Outcome {
        self.with(|s| s.release(host, current, mode))
    }

    /// Drops the reservation and every registration (a registered host's reset of the
    /// device's fencing).
    pub fn clear(&self, host: &HostId, current: Key) -> Outcome {
        self.with(|s| s.clear(host, current))
    }

    /// The registrants and the reservation.
    pub fn report(&self) -> Report {
        self.with(|s| s.report())
    }

    /// Claims the device for `host` under `key`, the way a nexus fences its children:
    /// registers `key` (replacing whatever key `host` had), then holds a Write Exclusive
    /// reservation, preempting (and unregistering) whoever held it. From then on only `host`
    /// writes.
    pub fn claim(&self, host: &HostId, key: u64) -> Outcome {
        self.with(|s| {
            if s.register(host, key, 0).is_err() {
                s.replace_key(host, Key::Any, key, 0)?;
            }
            let holder = s.regs.keys().find(|h| s.is_holder(h)).copied();
            match holder {
                Some(h) if h == *host && s.mode == Some(Mode::WriteExclusive) => Ok(()),
                Some(h) => {
                    let victim = s.regs.get(&h).map_or(0, |r| r.key);
                    s.preempt(host, Key::Current(key), Mode::WriteExclusive, victim)
                }
                None => s.acquire(host, Key::Current(key), Mode::WriteExclusive),
            }
        })
    }
}

/// A device as one host uses it locally: its I/O is checked against the device's
/// reservations under the host's identifier, and [`BlockDevice::fence`] claims the device for
/// the host ([`Reservations::claim`]) — unless the device fences by itself (a remote replica,
/// claimed at its target), which is then left to do so. Without reservations I/O passes
/// through unchecked (and the view cannot fence unless the device does it itself).
pub struct HostView {
    dev: Device,
    host: HostId,
    resv: Option<Arc<Reservations>>,
}

impl std::fmt::Debug for HostView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostView")
            .field("dev", &self.dev.name())
            .finish()
    }
}

impl HostView {
    /// `dev` as `host` uses it, fenced through `resv` (the table the engine keeps for it).
    pub fn new(dev: Device, resv: Option<Arc<Reservations>>, host: HostId) -> HostView {
        HostView { dev, host, resv }
    }

    fn check(&self, op: IoKind, offset: u64, len: u64, access: Access) -> Result<()> {
        match &self.resv {
            Some(r) => r.check(&self.host, access).map_err(|_| {
                BlockError::with_message(
                    ErrorKind::Conflict,
                    op,
                    offset,
                    len,
                    "reservation conflict: another host holds this device",
                )
            }),
            None => Ok(()),
        }
    }

    /// Runs `io` if the reservation allows `access`.
    fn checked<'a, T: 'static>(
        &'a self,
        op: IoKind,
        offset: u64,
        len: u64,
        access: Access,
        io: impl FnOnce(&'a Device) -> IoFuture<'a, T>,
    ) -> IoFuture<'a, T> {
        match self.check(op, offset, len, access) {
            Ok(()) => io(&self.dev),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

impl crate::Layer for HostView {
    fn inner(&self) -> &dyn BlockDevice {
        &*self.dev
    }
    fn read(&self, offset: u64, buf: IoBuf) -> IoFuture<'_, IoBuf> {
        let len = buf.len() as u64;
        self.checked(IoKind::Read, offset, len, Access::Read, |d| {
            d.read(offset, buf)
        })
    }
    fn write(&self, offset: u64, buf: IoBuf, flags: WriteFlags) -> IoFuture<'_, IoBuf> {
        let len = buf.len() as u64;
        self.checked(IoKind::Write, offset, len, Access::Write, |d| {
            d.write(offset, buf, flags)
        })
    }
    fn flush(&self) -> IoFuture<'_, ()> {
        self.checked(IoKind::Flush, 0, 0, Access::Write, |d| d.flush())
    }
    fn unmap(&self, offset: u64, len: u64) -> IoFuture<'_, ()> {
        self.checked(IoKind::Unmap, offset, len, Access::Write, |d| {
            d.unmap(offset, len)
        })
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> IoFuture<'_, ()> {
        self.checked(IoKind::WriteZeroes, offset, len, Access::Write, |d| {
            d.write_zeroes(offset, len, flags)
        })
    }
    fn fence(&self, key: u64) -> IoFuture<'_, ()> {
        Box::pin(async move {
            // A device that fences by itself (a remote replica: NVMe reservations at its
            // target) is claimed there; the others through their local table.
            match self.dev.fence(key).await {
                Err(e) if e.kind() == ErrorKind::Unsupported => {}
                r => return r,
            }
            match &self.resv {
                None => Err(BlockError::new(ErrorKind::Unsupported, IoKind::Fence, 0, 0)),
                Some(_) if key == 0 => Err(BlockError::with_message(
                    ErrorKind::InvalidArgument,
                    IoKind::Fence,
                    0,
                    0,
                    "a fencing key must not be 0",
                )),
                Some(r) => r.claim(&self.host, key).map_err(|e| {
                    BlockError::with_message(
                        ErrorKind::Conflict,
                        IoKind::Fence,
                        0,
                        0,
                        format!("claiming the device failed: {e}"),
                    )
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::malloc::MallocDevice;

    const A: HostId = [1; 16];
    const B: HostId = [2; 16];
    const C: HostId = [3; 16];
    const OLD: HostId = A;
    const NEW: HostId = B;

    fn block_on<F: std::future::Future<Output = ()> + 'static>(
        f: impl FnOnce() -> F + Send + 'static,
    ) {
        reactor::testing::run_on_reactor(std::time::Duration::from_secs(10), f)
    }

    const CONFLICT: Outcome = Err(FenceError::Conflict);

    fn cur(k: u64) -> Key {
        Key::Current(k)
    }

    #[test]
    fn register_acquire_release() {
        let r = Reservations::new();
        assert_eq!(r.register(&A, 0xa, 1), Ok(()));
        // Registering again with another key conflicts; with the same key is a no-op.
        assert_eq!(r.register(&A, 0xb, 1), CONFLICT);
        assert_eq!(r.register(&A, 0xa, 1), Ok(()));
        assert_eq!(r.register(&B, 0xb, 2), Ok(()));
        assert_eq!(r.report().generation, 2);
        // Wrong key, unregistered host.
        assert_eq!(r.acquire(&A, cur(0xb), Mode::WriteExclusive), CONFLICT);
        assert_eq!(r.acquire(&C, cur(0), Mode::WriteExclusive), CONFLICT);
        assert_eq!(r.acquire(&A, cur(0xa), Mode::WriteExclusive), Ok(()));
        assert!(r.is_held());
        assert_eq!(r.acquire(&B, cur(0xb), Mode::WriteExclusive), CONFLICT);
        // Write exclusive: everyone reads, only the holder writes.
        assert_eq!(r.check(&A, Access::Write), Ok(()));
        assert_eq!(r.check(&B, Access::Write), CONFLICT);
        assert_eq!(r.check(&C, Access::Write), CONFLICT);
        assert_eq!(r.check(&C, Access::Read), Ok(()));
        let rep = r.report();
        assert_eq!(rep.mode, Some(Mode::WriteExclusive));
        assert_eq!(rep.registrants.len(), 2);
        assert!(rep.registrants[0].holds && rep.registrants[0].path == 1);
        assert!(!rep.registrants[1].holds);
        // Release of another mode is invalid; a non-holder's release does nothing.
        assert!(matches!(
            r.release(&A, cur(0xa), Mode::ExclusiveAccess),
            Err(FenceError::Invalid(_))
        ));
        assert_eq!(r.release(&B, cur(0xb), Mode::WriteExclusive), Ok(()));
        assert!(r.is_held());
        assert_eq!(r.release(&A, cur(0xa), Mode::WriteExclusive), Ok(()));
        assert!(!r.is_held());
        assert_eq!(r.check(&C, Access::Write), Ok(()));
    }

    #[test]
    fn access_table() {
        use Mode::*;
        let cases = [
            // (mode, registered non-holder read/write, unregistered read/write)
            (WriteExclusive, true, false, true, false),
            (ExclusiveAccess, false, false, false, false),
            (WriteExclusiveRegistrantsOnly, true, true, true, false),
            (ExclusiveAccessRegistrantsOnly, true, true, false, false),
            (WriteExclusiveAllRegistrants, true, true, true, false),
            (ExclusiveAccessAllRegistrants, true, true, false, false),
        ];
        for (m, rr, rw, ur, uw) in cases {
            let r = Reservations::new();
            r.register(&A, 1, 1).unwrap();
            r.register(&B, 2, 2).unwrap();
            r.acquire(&A, cur(1), m).unwrap();
            let ok = |h, a| r.check(h, a).is_ok();
            assert!(ok(&A, Access::Read) && ok(&A, Access::Write), "{m:?}");
            assert_eq!(ok(&B, Access::Read), rr, "{m:?} registrant read");
            assert_eq!(ok(&B, Access::Write), rw, "{m:?} registrant write");
            assert_eq!(ok(&C, Access::Read), ur, "{m:?} other read");
            assert_eq!(ok(&C, Access::Write), uw, "{m:?} other write");
        }
    }

    #[test]
    fn preempt_and_clear() {
        let r = Reservations::new();
        r.register(&A, 1, 1).unwrap();
        r.register(&B, 2, 2).unwrap();
        r.acquire(&A, cur(1), Mode::ExclusiveAccess).unwrap();
        // B preempts A: A's registration goes, B holds the reservation.
        r.preempt(&B, cur(2), Mode::WriteExclusive, 1).unwrap();
        let rep = r.report();
        assert_eq!(rep.mode, Some(Mode::WriteExclusive));
        assert_eq!(rep.registrants.len(), 1);
        assert_eq!(rep.registrants[0].host, B);
        assert_eq!(r.check(&A, Access::Write), CONFLICT);
        // A, no longer registered, cannot even release.
        assert_eq!(r.release(&A, cur(1), Mode::WriteExclusive), CONFLICT);
        // Unregistering the holder drops the reservation.
        r.unregister(&B, cur(2)).unwrap();
        assert!(!r.is_held());
        // Clear removes everything.
        r.register(&A, 1, 1).unwrap();
        r.register(&C, 3, 3).unwrap();
        r.acquire(&C, cur(3), Mode::WriteExclusiveAllRegistrants)
            .unwrap();
        assert_eq!(r.check(&A, Access::Write), Ok(()));
        assert_eq!(r.check(&B, Access::Write), CONFLICT);
        r.clear(&A, cur(1)).unwrap();
        assert!(!r.is_held());
        assert!(r.report().registrants.is_empty());
    }

    #[test]
    fn replace_and_bad_fields() {
        let r = Reservations::new();
        assert_eq!(r.replace_key(&A, cur(0), 5, 1), CONFLICT);
        r.replace_key(&A, Key::Any, 5, 1).unwrap();
        r.replace_key(&A, cur(5), 6, 1).unwrap();
        assert_eq!(r.report().registrants[0].key, 6);
        // Preempting with no key when nothing is held can never succeed.
        assert!(matches!(
            r.preempt(&A, cur(6), Mode::WriteExclusive, 0),
            Err(FenceError::Invalid(_))
        ));
    }

    #[test]
    fn a_newer_claim_shuts_the_older_host_out_of_writes_only() {
        block_on(|| async {
            let dev: Device = Arc::new(MallocDevice::new("m", 1 << 20, 512));
            let resv = Arc::new(Reservations::new());
            let old = HostView::new(dev.clone(), Some(resv.clone()), OLD);
            let new = HostView::new(dev.clone(), Some(resv.clone()), NEW);
            old.fence(1).await.unwrap();
            old.write(0, IoBuf::zeroed(4096), WriteFlags::default())
                .await
                .unwrap();
            // The older incarnation's host claimed it; the newer one takes over.
            new.fence(2).await.unwrap();
            let e = old
                .write(0, IoBuf::zeroed(4096), WriteFlags::default())
                .await
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Conflict);
            assert_eq!(old.flush().await.unwrap_err().kind(), ErrorKind::Conflict);
            // Write Exclusive: the old host still reads.
            old.read(0, IoBuf::zeroed(4096)).await.unwrap();
            new.write(0, IoBuf::zeroed(4096), WriteFlags::default())
                .await
                .unwrap();
            // Claiming again under the same key is idempotent.
            new.fence(2).await.unwrap();
            // The older host was unregistered by the preemption; it cannot take the device
            // back by acquiring, only by preempting with a claim of its own.
            let report = resv.report();
            assert_eq!(report.registrants.len(), 1);
            assert_eq!(report.registrants[0].host, NEW);
        });
    }

    #[test]
    fn devices_without_reservations_pass_through_and_cannot_fence() {
        block_on(|| async {
            let dev: Device = Arc::new(MallocDevice::new("m", 1 << 20, 512));
            let v = HostView::new(dev, None, OLD);
            assert_eq!(v.fence(1).await.unwrap_err().kind(), ErrorKind::Unsupported);
            v.write(0, IoBuf::zeroed(512), WriteFlags::default())
                .await
                .unwrap();
        });
    }
}
