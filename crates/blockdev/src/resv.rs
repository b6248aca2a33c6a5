//! Reservations as a property of the storage, not of the protocol that reaches it.
//!
//! A replica may be written by a nexus in the same engine (directly) and by a nexus on
//! another node (through the engine's NVMe/TCP target). Fencing must hold for both: once a
//! newer incarnation has taken the replica over, the older one's writes fail *whichever way
//! they arrive*. So the NVMe reservation state (registrants keyed by 128-bit host identifier,
//! the holder and type: [`proto_nvme::resv`]) lives with the device
//! ([`BlockDevice::reservations`]): the target's namespace for that device uses it, and a
//! local user goes through a [`HostView`], which registers and checks under the engine's own
//! host identifier — the same identity the engine's NVMe/TCP initiator presents, so a host is
//! one registrant whether it reaches the device locally or over the network.
//!
//! The state is in memory: a restarted engine starts with no reservations (PTPL, persistence
//! through power loss, is not supported); a nexus claims its children again when it rebuilds
//! them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use proto_nvme::resv::{Access, Reservations as State};
use proto_nvme::{Status, rtype};

use crate::{
    BlockDevice, BlockError, Capabilities, Device, ErrorKind, Extent, Geometry, IoBuf, IoFuture,
    IoKind, Result, WriteFlags, ZeroFlags,
};

/// The reservation state of one device, shared by everything that reaches it.
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

    /// Runs `f` on the state (a Reservation Register, Acquire, Release or Report).
    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut s = self.state.lock().expect("reservations lock");
        let out = f(&mut s);
        self.held.store(s.is_held(), Ordering::SeqCst);
        out
    }

    /// Whether `host` may perform `access` now (the specification's access table).
    pub fn check(&self, host: &[u8; 16], access: Access) -> std::result::Result<(), Status> {
        if !self.held.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.state
            .lock()
            .expect("reservations lock")
            .check(host, access)
    }

    /// Claims the device for `host` under `key`, the way a nexus fences its children:
    /// registers `key` (replacing whatever key `host` had), then holds a Write Exclusive
    /// reservation, preempting (and unregistering) whoever held it. From then on only `host`
    /// writes.
    pub fn claim(&self, host: &[u8; 16], key: u64) -> std::result::Result<(), Status> {
        use proto_nvme::ReservationRegister;
        self.with(|s| {
            // Register, or replace the key (IEKEY: whatever it was).
            let reg = |rrega, iekey| ReservationRegister {
                rrega,
                iekey,
                cptpl: 0,
            };
            if s.register(host, 0, reg(0, false), 0, key).is_err() {
                s.register(host, 0, reg(2, true), 0, key)?;
            }
            let report = s.report();
            let holder = report.registrants.iter().find(|r| r.rcsts & 1 != 0);
            match holder {
                Some(h) if h.hostid == *host && report.rtype == rtype::WRITE_EXCLUSIVE => Ok(()),
                Some(h) => s.acquire(host, 1, false, rtype::WRITE_EXCLUSIVE, key, h.rkey),
                None => s.acquire(host, 0, false, rtype::WRITE_EXCLUSIVE, key, 0),
            }
        })
    }
}

/// A device as one host uses it locally: its I/O is checked against the device's
/// reservations under the host's identifier, and [`BlockDevice::fence`] claims the device for
/// the host ([`Reservations::claim`]) — unless the device fences by itself (a remote replica,
/// claimed at its target), which is then left to do so. Devices without reservations pass
/// through unchecked (and cannot fence unless they do it themselves).
pub struct HostView {
    dev: Device,
    host: [u8; 16],
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
    /// `dev` as `host` uses it.
    pub fn new(dev: Device, host: [u8; 16]) -> HostView {
        let resv = dev.reservations();
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
}

impl BlockDevice for HostView {
    fn name(&self) -> &str {
        self.dev.name()
    }
    fn kind(&self) -> &'static str {
        self.dev.kind()
    }
    fn geometry(&self) -> Geometry {
        self.dev.geometry()
    }
    fn capabilities(&self) -> Capabilities {
        self.dev.capabilities()
    }
    fn refresh_size(&self) -> Result<Geometry> {
        self.dev.refresh_size()
    }
    fn read(&self, offset: u64, buf: IoBuf) -> IoFuture<'_, IoBuf> {
        let len = buf.len() as u64;
        match self.check(IoKind::Read, offset, len, Access::Read) {
            Ok(()) => self.dev.read(offset, buf),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
    fn write(&self, offset: u64, buf: IoBuf, flags: WriteFlags) -> IoFuture<'_, IoBuf> {
        let len = buf.len() as u64;
        match self.check(IoKind::Write, offset, len, Access::Write) {
            Ok(()) => self.dev.write(offset, buf, flags),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
    fn flush(&self) -> IoFuture<'_, ()> {
        match self.check(IoKind::Flush, 0, 0, Access::Write) {
            Ok(()) => self.dev.flush(),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
    fn unmap(&self, offset: u64, len: u64) -> IoFuture<'_, ()> {
        match self.check(IoKind::Unmap, offset, len, Access::Write) {
            Ok(()) => self.dev.unmap(offset, len),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> IoFuture<'_, ()> {
        match self.check(IoKind::WriteZeroes, offset, len, Access::Write) {
            Ok(()) => self.dev.write_zeroes(offset, len, flags),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
    fn block_status(&self, offset: u64, len: u64) -> IoFuture<'_, Vec<Extent>> {
        self.dev.block_status(offset, len)
    }
    fn reservations(&self) -> Option<Arc<Reservations>> {
        self.resv.clone()
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
                Some(r) => r.claim(&self.host, key).map_err(|s| {
                    BlockError::with_message(
                        ErrorKind::Conflict,
                        IoKind::Fence,
                        0,
                        0,
                        format!("claiming the device failed: {s:?}"),
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

    const OLD: [u8; 16] = [1; 16];
    const NEW: [u8; 16] = [2; 16];

    fn block_on<F: std::future::Future<Output = ()> + 'static>(
        f: impl FnOnce() -> F + Send + 'static,
    ) {
        reactor::testing::run_on_reactor(std::time::Duration::from_secs(10), f)
    }

    #[test]
    fn a_newer_claim_shuts_the_older_host_out_of_writes_only() {
        block_on(|| async {
            let dev: Device = Arc::new(crate::stats::Measured::new(Arc::new(MallocDevice::new(
                "m",
                1 << 20,
                512,
            ))));
            let old = HostView::new(dev.clone(), OLD);
            let new = HostView::new(dev.clone(), NEW);
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
            let report = dev.reservations().unwrap().with(|s| s.report());
            assert_eq!(report.registrants.len(), 1);
            assert_eq!(report.registrants[0].hostid, NEW);
        });
    }

    #[test]
    fn devices_without_reservations_pass_through_and_cannot_fence() {
        block_on(|| async {
            let dev: Device = Arc::new(MallocDevice::new("m", 1 << 20, 512));
            let v = HostView::new(dev, OLD);
            assert_eq!(v.fence(1).await.unwrap_err().kind(), ErrorKind::Unsupported);
            v.write(0, IoBuf::zeroed(512), WriteFlags::default())
                .await
                .unwrap();
        });
    }
}
