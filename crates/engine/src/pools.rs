//! Storage pools in the engine: a registry of pools by name, each on an engine device, whose
//! volumes and snapshots are engine devices named `POOL/VOLUME`.
//!
//! Every pool operation does device I/O and runs on reactor 0 (`ReactorHandle::call`); the
//! management API awaits it from its own thread. Pool management operations are serialised by
//! one async lock, so an operation never observes another's half-done registration. Devices a
//! pool uses are claimed: the device holding a pool (online, faulted, or being formatted) can
//! be neither exported nor destroyed, and a volume's device is destroyed only through the pool.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use blockdev::{BlockDevice, Device, Measured};
use pool::assemble::{Found, scan};
use pool::pool::{CreateOptions, Pool, PoolError, PoolErrorKind, VolumeInfo};
use pool::superblock::{Superblock, SuperblockError};

use crate::named::Named;
use crate::{DeviceEntry, EngineState, MgmtError};

/// An online pool.
#[derive(Clone, Debug)]
pub struct PoolEntry {
    /// The pool.
    pub pool: Arc<Pool>,
    /// Names of the engine devices holding it, in member order (member 0 holds the metadata).
    pub devices: Vec<String>,
    /// What import found damaged but worked around (`Pool::import_warnings`).
    pub warning: Option<String>,
}

/// A pool found on a device but not served: damaged, or in conflict with an online pool.
#[derive(Clone, Debug)]
pub struct FaultedPool {
    /// The pool's name, when a superblock copy is readable.
    pub name: Option<String>,
    /// Name of the engine device it is listed under (the first of `devices`).
    pub device: String,
    /// The devices found holding it (it may be missing members).
    pub devices: Vec<String>,
    /// Why it is not served.
    pub reason: String,
}

/// The pool registry.
#[derive(Debug, Default)]
pub(crate) struct Pools {
    /// Online pools by name.
    online: BTreeMap<String, PoolEntry>,
    /// Faulted pools by device name.
    faulted: BTreeMap<String, FaultedPool>,
    /// Devices a pool operation is working on (being formatted, imported or closed).
    busy: BTreeSet<String>,
}

/// A pool as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolStatus {
    /// Name (empty when unknown: faulted with no readable superblock).
    pub name: String,
    /// Device holding it (member 0, or the first device found of a faulted pool).
    pub device: String,
    /// Every device holding it, in member order.
    pub devices: Vec<String>,
    /// Labels, sorted by key.
    pub labels: Vec<(String, String)>,
    /// Bytes of data clusters.
    pub capacity: u64,
    /// Bytes of clusters in use.
    pub used: u64,
    /// Sum of volume sizes.
    pub committed: u64,
    /// Writable volumes.
    pub volumes: u32,
    /// Snapshots.
    pub snapshots: u32,
    /// `online`, `read-only` (a metadata write failed: reads only until imported again) or
    /// `faulted`.
    pub state: &'static str,
    /// Why faulted or read-only, or a warning.
    pub reason: String,
    /// Cluster size (0 when unknown).
    pub cluster_size: u32,
}

/// A volume or snapshot as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeStatus {
    /// Pool.
    pub pool: String,
    /// Name within the pool.
    pub name: String,
    /// Engine device name, `POOL/NAME`.
    pub device: String,
    /// Size in bytes.
    pub size: u64,
    /// Bytes mapped.
    pub allocated: u64,
    /// Read-only snapshot.
    pub snapshot: bool,
    /// Thin.
    pub thin: bool,
    /// Origin volume or snapshot, if any.
    pub origin: Option<String>,
}

/// The engine device name of volume `volume` of pool `pool`.
pub fn volume_device_name(pool: &str, volume: &str) -> String {
    format!("{pool}/{volume}")
}

/// What a device holds, as far as pools go.
#[derive(Debug)]
pub enum Probe {
    /// No pool superblock in either copy (bad magic in both): an ordinary device.
    NotAPool,
    /// A pool, imported.
    Pool {
        /// The pool.
        pool: Arc<Pool>,
        /// What import worked around (a damaged superblock copy, checkpoint, ...), if any.
        warning: Option<String>,
    },
    /// A pool that cannot be imported.
    Damaged {
        /// Its name, if a superblock copy is readable.
        name: Option<String>,
        /// The damage, precisely.
        reason: String,
    },
}

/// What each superblock copy holds.
#[derive(Debug)]
pub struct SuperblockCopies {
    /// Copy A (offset 0) and copy B (offset 4 KiB), decoded or why not.
    pub copies: [Result<Superblock, SuperblockError>; 2],
}

impl SuperblockCopies {
    /// Reads both copies (`pool::check::read_copies`).
    pub async fn read(dev: &Device) -> Result<SuperblockCopies, String> {
        pool::check::read_copies(dev)
            .await
            .map(|copies| SuperblockCopies { copies })
            .map_err(|e| format!("cannot read the superblocks: {e}"))
    }

    /// True when neither copy looks like a pool superblock at all.
    pub fn not_a_pool(&self) -> bool {
        self.copies
            .iter()
            .all(|c| matches!(c, Err(SuperblockError::NotAPool)))
    }

    /// The pool name from a valid copy.
    pub fn name(&self) -> Option<String> {
        self.copies
            .iter()
            .find_map(|c| c.as_ref().ok().map(|s| s.name.clone()))
    }
}

/// Finds out whether `dev` holds a pool and imports it. Runs on a reactor.
pub async fn probe(dev: Device) -> Probe {
    let copies = match SuperblockCopies::read(&dev).await {
        Ok(c) => c,
        Err(reason) => return Probe::Damaged { name: None, reason },
    };
    if copies.not_a_pool() {
        return Probe::NotAPool;
    }
    match Pool::import(dev).await {
        Ok(pool) => {
            let w = pool.import_warnings();
            let warning = (!w.is_empty()).then(|| w.join("; "));
            Probe::Pool { pool, warning }
        }
        Err(e) => Probe::Damaged {
            name: copies.name(),
            reason: e.to_string(),
        },
    }
}

/// Maps a pool error to the management error (and so the gRPC status) in one place; `what`
/// says which operation on what, e.g. `creating volume "v" in pool "p"`.
pub fn pool_error(what: &str, e: PoolError) -> MgmtError {
    let m = e.context();
    match e.kind() {
        PoolErrorKind::NotFound => {
            MgmtError::NotFound(format!("{what}: no volume or snapshot {m:?}"))
        }
        PoolErrorKind::Invalid => MgmtError::Invalid(format!("{what}: {m}")),
        PoolErrorKind::NoSpace => MgmtError::NoSpace(format!("{what}: pool out of space: {m}")),
        PoolErrorKind::NameTaken => MgmtError::Exists(format!(
            "{what}: the name {m:?} is taken by another volume or snapshot of the pool"
        )),
        PoolErrorKind::WrongKind => MgmtError::Busy(format!(
            "{what}: not allowed on this kind of object (a snapshot where a volume is needed, \
             or the other way round)"
        )),
        PoolErrorKind::NoSuperblock
        | PoolErrorKind::NoCheckpoint
        | PoolErrorKind::Members
        | PoolErrorKind::ReadOnly => MgmtError::Busy(format!("{what}: {e}")),
        PoolErrorKind::Device | PoolErrorKind::Metadata => {
            MgmtError::Device(format!("{what}: {e}"))
        }
    }
}

fn check_pool_name(name: &str) -> Result<(), MgmtError> {
    if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control() || c == '/') {
        return Err(MgmtError::Invalid(format!(
            "bad pool name {name:?}: 1 to 64 bytes, no '/' or control characters"
        )));
    }
    Ok(())
}

fn status_of(pool: &str, v: VolumeInfo) -> VolumeStatus {
    VolumeStatus {
        pool: pool.to_string(),
        device: volume_device_name(pool, &v.name),
        name: v.name,
        size: v.size,
        allocated: v.allocated,
        snapshot: v.snapshot,
        thin: v.thin,
        origin: v.origin,
    }
}

/// Releases a device marked busy when dropped (also when the operation's future is dropped).
struct BusyGuard<'a> {
    state: &'a EngineState,
    device: String,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.state.pools().busy.remove(&self.device);
    }
}

impl EngineState {
    pub(crate) fn pools(&self) -> std::sync::MutexGuard<'_, Pools> {
        self.pools.lock().expect("pools lock")
    }

    /// Why `device` may not be exported, destroyed or given to another pool, if it belongs to
    /// a pool (its device, a faulted pool's device, or a volume).
    pub(crate) fn pool_claim(&self, device: &str) -> Option<String> {
        if let Some((pool, volume)) = device.split_once('/') {
            return Some(format!(
                "device {device:?} is {} of pool {pool:?}; use `ballast volume destroy {pool} \
                 {volume}`",
                if self.is_snapshot(pool, volume) {
                    format!("snapshot {volume:?}")
                } else {
                    format!("volume {volume:?}")
                }
            ));
        }
        let p = self.pools();
        if let Some(e) = p
            .online
            .values()
            .find(|e| e.devices.iter().any(|d| d == device))
        {
            return Some(format!(
                "device {device:?} holds pool {:?}; close the pool first (`ballast pool close \
                 {}`)",
                e.pool.name(),
                e.pool.name()
            ));
        }
        if let Some(f) = p
            .faulted
            .values()
            .find(|f| f.devices.iter().any(|d| d == device))
        {
            return Some(format!(
                "device {device:?} holds a faulted pool ({}); `ballast pool close {}` releases it",
                f.reason,
                f.name.as_deref().unwrap_or(device)
            ));
        }
        if p.busy.contains(device) {
            return Some(format!("device {device:?} is busy with a pool operation"));
        }
        None
    }

    fn is_snapshot(&self, pool: &str, volume: &str) -> bool {
        self.pools()
            .online
            .get(pool)
            .map(|e| e.pool.list().iter().any(|v| v.name == volume && v.snapshot))
            .unwrap_or(false)
    }

    /// Whether any pool is faulted (an export of a missing `POOL/VOLUME` at start may be its).
    pub(crate) fn has_faulted_pools(&self) -> bool {
        !self.pools().faulted.is_empty()
    }

    /// Whether pool `name` is online.
    pub fn pool_online(&self, name: &str) -> bool {
        self.pools().online.contains_key(name)
    }

    fn online(&self, name: &str) -> Result<Arc<Pool>, MgmtError> {
        let p = self.pools();
        if let Some(e) = p.online.get(name) {
            return Ok(e.pool.clone());
        }
        if let Some(f) = p.faulted.values().find(|f| f.name.as_deref() == Some(name)) {
            return Err(MgmtError::Busy(format!(
                "pool {name:?} is faulted: {}",
                f.reason
            )));
        }
        Err(MgmtError::NotFound(format!("pool {name:?} not found")))
    }

    fn device_of(&self, name: &str) -> Result<Arc<Measured>, MgmtError> {
        self.devices
            .lock()
            .expect("devices lock")
            .get(name)
            .map(|d| d.device.clone())
            .ok_or_else(|| MgmtError::NotFound(format!("device {name:?} not found")))
    }

    /// Opens volume `volume` of `pool` and registers it as device `POOL/VOLUME`.
    fn register_volume(
        &self,
        pool_name: &str,
        pool: &Arc<Pool>,
        volume: &str,
    ) -> Result<(), MgmtError> {
        let dev = pool
            .open(volume)
            .map_err(|e| pool_error(&format!("opening {volume:?} of pool {pool_name:?}"), e))?;
        let name = volume_device_name(pool_name, volume);
        let entry = DeviceEntry::new(format!("pool://{name}"), Arc::new(Named::new(&name, dev)));
        self.devices
            .lock()
            .expect("devices lock")
            .insert(name, entry);
        Ok(())
    }

    fn unregister_volume(&self, pool: &str, volume: &str) -> Option<DeviceEntry> {
        self.devices
            .lock()
            .expect("devices lock")
            .remove(&volume_device_name(pool, volume))
    }

    /// Registers an imported or created pool and its volumes; fails when the name is taken.
    fn register_pool(&self, entry: PoolEntry) -> Result<(), MgmtError> {
        let name = entry.pool.name().to_string();
        {
            let mut p = self.pools();
            if let Some(other) = p.online.get(&name) {
                return Err(MgmtError::Exists(format!(
                    "a pool named {name:?} is already online (on device {:?})",
                    other.devices[0]
                )));
            }
            p.faulted
                .retain(|_, f| !f.devices.iter().any(|d| entry.devices.contains(d)));
            p.online.insert(name.clone(), entry.clone());
        }
        for v in entry.pool.list() {
            self.register_volume(&name, &entry.pool, &v.name)?;
        }
        Ok(())
    }

    /// Finds the pools on `devices` (at start) and imports every complete one; a pool that is
    /// damaged or misses members is recorded as faulted. Returns lines for the log.
    pub(crate) async fn scan_devices(&self, devices: &[String]) -> Vec<String> {
        let names: Vec<String> = devices
            .iter()
            .filter(|d| self.device_of(d).is_ok())
            .cloned()
            .collect();
        let devs: Vec<Device> = names
            .iter()
            .filter_map(|d| self.device_of(d).ok().map(|d| d as Device))
            .collect();
        let found = self.reactors[0]
            .call(move || async move { scan(&devs).await })
            .await;
        let mut log = Vec::new();
        for f in found {
            match self.import_found(&names, f).await {
                Ok(lines) => log.extend(lines),
                Err(lines) => log.extend(lines),
            }
        }
        log
    }

    /// Imports what a scan found among `names`, or records it as faulted. Ok: log lines of a
    /// pool imported; Err: log lines saying why not.
    async fn import_found(&self, names: &[String], f: Found) -> Result<Vec<String>, Vec<String>> {
        let complete = f.complete();
        let missing = f.missing();
        let (sb, members, rejected) = match f {
            Found::Damaged {
                candidate,
                name,
                reason,
            } => {
                let device = names[candidate].clone();
                let line = format!(
                    "error: device {device:?} holds a damaged pool{}: {reason}; it is not served \
                     and the device is not exported (see `ballast pool list`)",
                    name.as_deref()
                        .map(|n| format!(" {n:?}"))
                        .unwrap_or_default()
                );
                self.fault(name, vec![device], reason);
                return Err(vec![line]);
            }
            Found::Pool {
                superblock,
                members,
                rejected,
            } => (superblock, members, rejected),
        };
        let mut log: Vec<String> = rejected
            .iter()
            .map(|(i, why)| format!("warning: device {:?} {why}; it is ignored", names[*i]))
            .collect();
        let present: Vec<String> = members
            .iter()
            .flatten()
            .map(|&i| names[i].clone())
            .collect();
        let name = sb.name.clone();
        if !complete {
            let reason = format!(
                "{} of {} member device(s) found; missing {missing}",
                present.len(),
                members.len()
            );
            log.push(format!(
                "error: pool {name:?} is not served: {reason} (add the missing device(s) and \
                 `ballast pool import {}`)",
                present[0]
            ));
            self.fault(Some(name), present, reason);
            return Err(log);
        }
        let devs: Vec<Device> = present
            .iter()
            .filter_map(|d| self.device_of(d).ok().map(|d| d as Device))
            .collect();
        let imported = self.reactors[0]
            .call(move || async move { Pool::import_members(devs).await })
            .await;
        let where_ = present.join(", ");
        let pool = match imported {
            Ok(p) => p,
            Err(e) => {
                let reason = e.to_string();
                log.push(format!(
                    "error: device(s) {where_} hold a damaged pool {name:?}: {reason}; it is not \
                     served and its devices are not exported (see `ballast pool list`)"
                ));
                self.fault(Some(name), present, reason);
                return Err(log);
            }
        };
        let w = pool.import_warnings();
        let warning = (!w.is_empty()).then(|| w.join("; "));
        if let Some(w) = &warning {
            log.push(format!("device(s) {where_}: pool {name:?}: warning: {w}"));
        }
        let n = pool.list().len();
        match self.register_pool(PoolEntry {
            pool,
            devices: present.clone(),
            warning,
        }) {
            Ok(()) => {
                log.push(format!(
                    "device(s) {where_}: imported pool {name:?} ({n} volume(s) and snapshot(s))"
                ));
                Ok(log)
            }
            Err(e) => {
                let reason = e.to_string();
                log.push(format!(
                    "error: device(s) {where_}: pool {name:?} not imported: {reason}"
                ));
                self.fault(Some(name), present, reason);
                Err(log)
            }
        }
    }

    fn fault(&self, name: Option<String>, devices: Vec<String>, reason: String) {
        let device = devices[0].clone();
        self.pools().faulted.insert(
            device.clone(),
            FaultedPool {
                name,
                device,
                devices,
                reason,
            },
        );
    }

    /// Checks that `device` can be given to a pool operation and marks it busy. A faulted
    /// pool's device is accepted when `retry_faulted` (importing it again).
    fn claim_device(&self, device: &str, retry_faulted: bool) -> Result<BusyGuard<'_>, MgmtError> {
        self.device_of(device)?;
        if let Some(why) = self.nexus_claim(device) {
            return Err(MgmtError::Busy(why));
        }
        if self.nexus_status(device).is_ok() {
            return Err(MgmtError::Busy(format!(
                "device {device:?} is a nexus; it cannot hold a pool"
            )));
        }
        if let Some(export) = self.export_of_device(device) {
            return Err(MgmtError::Busy(format!(
                "device {device:?} is exported as {export:?}; destroy the export first"
            )));
        }
        let retry = retry_faulted
            && self
                .pools()
                .faulted
                .values()
                .any(|f| f.devices.iter().any(|d| d == device));
        if !retry && let Some(why) = self.pool_claim(device) {
            return Err(MgmtError::Busy(why));
        }
        if !self.pools().busy.insert(device.to_string()) {
            return Err(MgmtError::Busy(format!(
                "device {device:?} is busy with a pool operation"
            )));
        }
        Ok(BusyGuard {
            state: self,
            device: device.to_string(),
        })
    }

    /// Formats `devices` (one or several, concatenated in this order) as pool `name`. A
    /// device whose head is not blank (`pool::blank`: a signature or any data in its first
    /// 1 MiB) is refused unless `force`; one holding a pool is refused either way.
    pub async fn create_pool(
        &self,
        name: &str,
        devices: &[String],
        cluster_size: u32,
        force: bool,
    ) -> Result<PoolStatus, MgmtError> {
        let _op = self.pool_ops.lock().await;
        check_pool_name(name)?;
        if devices.is_empty() {
            return Err(MgmtError::Invalid(
                "a pool needs at least one device".into(),
            ));
        }
        if let Some(e) = self.pools().online.get(name) {
            return Err(MgmtError::Exists(format!(
                "pool {name:?} already exists (on device {:?})",
                e.devices[0]
            )));
        }
        let mut busy = Vec::new();
        for d in devices {
            if busy.iter().any(|b: &BusyGuard<'_>| &b.device == d) {
                return Err(MgmtError::Invalid(format!("device {d:?} is given twice")));
            }
            busy.push(self.claim_device(d, false)?);
            self.require_no_pool(d).await?;
            if !force {
                self.require_blank(d).await?;
            }
        }
        let devs: Vec<Device> = devices
            .iter()
            .map(|d| self.device_of(d).map(|d| d as Device))
            .collect::<Result<_, _>>()?;
        let opts = CreateOptions {
            name: name.to_string(),
            cluster_size: if cluster_size == 0 {
                CreateOptions::default().cluster_size
            } else {
                cluster_size
            },
            ..CreateOptions::default()
        };
        let on = devices.join(", ");
        let pool = self.reactors[0]
            .call(move || async move { Pool::create_on(devs, &opts).await })
            .await
            .map_err(|e| pool_error(&format!("creating pool {name:?} on device(s) {on}"), e))?;
        self.register_pool(PoolEntry {
            pool,
            devices: devices.to_vec(),
            warning: None,
        })?;
        self.pool_status(name)
    }

    /// Fails unless `device`'s first 1 MiB is all zeroes, naming what it holds (a file
    /// system, a partition table, data).
    async fn require_blank(&self, device: &str) -> Result<(), MgmtError> {
        let dev: Device = self.device_of(device)?;
        let found = self.reactors[0]
            .call(move || async move { pool::blank::probe(&dev).await })
            .await
            .map_err(|e| MgmtError::Device(format!("device {device:?}: {e}")))?;
        match found {
            None => Ok(()),
            Some(what) => Err(MgmtError::Busy(format!(
                "device {device:?} is not blank: {what}; formatting it would destroy that. \
                 Pass --force (gRPC: force) to format it anyway"
            ))),
        }
    }

    /// Fails unless `device` holds no pool superblock.
    async fn require_no_pool(&self, device: &str) -> Result<(), MgmtError> {
        let dev: Device = self.device_of(device)?;
        let copies = self.reactors[0]
            .call(move || async move { SuperblockCopies::read(&dev).await })
            .await
            .map_err(|e| MgmtError::Device(format!("device {device:?}: {e}")))?;
        if copies.not_a_pool() {
            return Ok(());
        }
        let what = match copies.name() {
            Some(n) => format!("pool {n:?}"),
            None => "a damaged pool".to_string(),
        };
        Err(MgmtError::Exists(format!(
            "device {device:?} already holds {what}; import it with `ballast pool import \
             {device}`, or zero its first 1 MiB to reuse the device"
        )))
    }

    /// Imports the pool on `device` (also retrying a faulted one). A pool spanning several
    /// devices is assembled from the engine's devices that no pool uses.
    pub async fn import_pool(&self, device: &str) -> Result<PoolStatus, MgmtError> {
        let _op = self.pool_ops.lock().await;
        let _busy = self.claim_device(device, true)?;
        // Candidates: this device first, then every device not used otherwise.
        let mut names = vec![device.to_string()];
        let all: Vec<String> = self
            .devices
            .lock()
            .expect("devices lock")
            .keys()
            .filter(|d| !d.contains('/') && d.as_str() != device)
            .cloned()
            .collect();
        for d in all {
            let faulted = self
                .pools()
                .faulted
                .values()
                .any(|f| f.devices.contains(&d));
            if self.export_of_device(&d).is_none() && (faulted || self.pool_claim(&d).is_none()) {
                names.push(d);
            }
        }
        let devs: Vec<Device> = names
            .iter()
            .filter_map(|d| self.device_of(d).ok().map(|d| d as Device))
            .collect();
        let found = self.reactors[0]
            .call(move || async move { scan(&devs).await })
            .await;
        let Some(f) = found.into_iter().find(|f| match f {
            Found::Damaged { candidate, .. } => *candidate == 0,
            Found::Pool { members, .. } => members.contains(&Some(0)),
        }) else {
            return Err(MgmtError::Busy(format!(
                "device {device:?} holds no pool (neither superblock copy has the pool magic)"
            )));
        };
        let mut guards = Vec::new();
        if let Found::Pool { members, .. } = &f {
            for &i in members.iter().flatten().filter(|&&i| i != 0) {
                guards.push(self.claim_device(&names[i], true)?);
            }
        }
        let name = match &f {
            Found::Pool { superblock, .. } => superblock.name.clone(),
            Found::Damaged { .. } => String::new(),
        };
        match self.import_found(&names, f).await {
            Ok(_) => self.pool_status(&name),
            Err(lines) => Err(MgmtError::Busy(
                lines
                    .last()
                    .map(|l| l.trim_start_matches("error: ").to_string())
                    .unwrap_or_else(|| format!("device {device:?}: the pool was not imported")),
            )),
        }
    }

    /// The devices of pool `name` (online or faulted, by pool name or device name).
    fn pool_devices(&self, name: &str) -> Result<Vec<String>, MgmtError> {
        let p = self.pools();
        match p.online.get(name) {
            Some(e) => Ok(e.devices.clone()),
            None => p
                .faulted
                .iter()
                .find(|(d, f)| f.name.as_deref() == Some(name) || d.as_str() == name)
                .map(|(_, f)| f.devices.clone())
                .ok_or_else(|| MgmtError::NotFound(format!("pool {name:?} not found"))),
        }
    }

    /// Closes pool `name` (see [`EngineState::close_pool`]) and wipes every member device
    /// (`Pool::wipe`: the superblocks, then the rest of the first 1 MiB).
    pub async fn destroy_pool(&self, name: &str) -> Result<(), MgmtError> {
        let devices = self.pool_devices(name)?;
        self.close_pool(name).await?;
        for device in devices {
            let dev: Device = self.device_of(&device)?;
            self.reactors[0]
                .call(move || async move { pool::pool::Pool::wipe(&dev).await })
                .await
                .map_err(|e| {
                    pool_error(&format!("erasing pool {name:?} on device {device:?}"), e)
                })?;
        }
        Ok(())
    }

    /// Commits and forgets pool `name` (or a faulted pool, by name or device).
    pub async fn close_pool(&self, name: &str) -> Result<(), MgmtError> {
        let _op = self.pool_ops.lock().await;
        let entry = self.pools().online.get(name).cloned();
        let Some(entry) = entry else {
            let mut p = self.pools();
            let key = p
                .faulted
                .iter()
                .find(|(d, f)| f.name.as_deref() == Some(name) || d.as_str() == name)
                .map(|(d, _)| d.clone());
            return match key {
                Some(k) => {
                    p.faulted.remove(&k);
                    Ok(())
                }
                None => Err(MgmtError::NotFound(format!("pool {name:?} not found"))),
            };
        };
        let volumes = entry.pool.list();
        for v in &volumes {
            let dev = volume_device_name(name, &v.name);
            if let Some(export) = self.export_of_device(&dev) {
                return Err(MgmtError::Busy(format!(
                    "pool {name:?}: device {dev:?} is exported as {export:?}; destroy the export \
                     first"
                )));
            }
        }
        // Unregister first (nothing can be exported any more), then commit.
        let mut removed = Vec::new();
        let _busy: Vec<BusyGuard<'_>> = {
            let mut p = self.pools();
            p.online.remove(name);
            for d in &entry.devices {
                p.busy.insert(d.clone());
            }
            entry
                .devices
                .iter()
                .map(|d| BusyGuard {
                    state: self,
                    device: d.clone(),
                })
                .collect()
        };
        for v in &volumes {
            if let Some(d) = self.unregister_volume(name, &v.name) {
                removed.push((volume_device_name(name, &v.name), d));
            }
        }
        let pool = entry.pool.clone();
        let r = self.reactors[0]
            .call(move || async move {
                match pool.failure() {
                    // Nothing more can be committed; what was durable stays so.
                    Some(_) => Ok(()),
                    None => pool.commit().await,
                }
            })
            .await;
        if let Err(e) = r {
            // Put everything back: the pool stays online.
            self.pools().online.insert(name.to_string(), entry);
            let mut devs = self.devices.lock().expect("devices lock");
            for (n, d) in removed {
                devs.insert(n, d);
            }
            return Err(pool_error(&format!("closing pool {name:?}"), e));
        }
        Ok(())
    }

    /// Grows pool `name` online: takes the space its devices gained since they were opened
    /// (a file extended, a disk grown) and adds `add` as new member devices.
    pub async fn grow_pool(
        &self,
        name: &str,
        add: &[String],
    ) -> Result<(PoolStatus, u64), MgmtError> {
        let _op = self.pool_ops.lock().await;
        let pool = self.online(name)?;
        let old = pool.usage().capacity;
        let members = self.pool_devices(name)?;
        let mut busy = Vec::new();
        for d in add {
            if busy.iter().any(|b: &BusyGuard<'_>| &b.device == d) {
                return Err(MgmtError::Invalid(format!("device {d:?} is given twice")));
            }
            busy.push(self.claim_device(d, false)?);
            self.require_blank(d).await?;
        }
        for d in &members {
            self.device_of(d)?.refresh_size().map_err(|e| {
                MgmtError::Device(format!("pool {name:?}: reading the size of {d:?}: {e}"))
            })?;
        }
        let new_devs: Vec<Device> = add
            .iter()
            .map(|d| self.device_of(d).map(|d| d as Device))
            .collect::<Result<_, _>>()?;
        let p2 = pool.clone();
        self.reactors[0]
            .call(move || async move { p2.grow(new_devs).await })
            .await
            .map_err(|e| pool_error(&format!("growing pool {name:?}"), e))?;
        if let Some(e) = self.pools().online.get_mut(name) {
            e.devices.extend(add.iter().cloned());
        }
        Ok((self.pool_status(name)?, old))
    }

    /// Sets and removes labels of pool `name`.
    pub async fn set_pool_labels(
        &self,
        name: &str,
        set: &[(String, String)],
        remove: &[String],
    ) -> Result<PoolStatus, MgmtError> {
        let _op = self.pool_ops.lock().await;
        let pool = self.online(name)?;
        let changes: Vec<(String, Option<String>)> = set
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .chain(remove.iter().map(|k| (k.clone(), None)))
            .collect();
        self.reactors[0]
            .call(move || async move { pool.set_labels(&changes).await })
            .await
            .map_err(|e| pool_error(&format!("labelling pool {name:?}"), e))?;
        self.pool_status(name)
    }

    fn status_online(name: &str, e: &PoolEntry) -> PoolStatus {
        let u = e.pool.usage();
        let list = e.pool.list();
        let snaps = list.iter().filter(|v| v.snapshot).count() as u32;
        let failure = e.pool.failure();
        PoolStatus {
            name: name.to_string(),
            device: e.devices[0].clone(),
            devices: e.devices.clone(),
            labels: e.pool.labels(),
            capacity: u.capacity,
            used: u.used,
            committed: u.committed,
            volumes: list.len() as u32 - snaps,
            snapshots: snaps,
            state: if failure.is_some() {
                "read-only"
            } else {
                "online"
            },
            reason: failure.or_else(|| e.warning.clone()).unwrap_or_default(),
            cluster_size: e.pool.superblock().cluster_size,
        }
    }

    fn pool_status(&self, name: &str) -> Result<PoolStatus, MgmtError> {
        let p = self.pools();
        let e = p
            .online
            .get(name)
            .ok_or_else(|| MgmtError::NotFound(format!("pool {name:?} not found")))?;
        Ok(Self::status_online(name, e))
    }

    /// Every pool, online and faulted, by name.
    pub fn list_pools(&self) -> Vec<PoolStatus> {
        let p = self.pools();
        let mut out: Vec<PoolStatus> = p
            .online
            .iter()
            .map(|(n, e)| Self::status_online(n, e))
            .collect();
        out.extend(p.faulted.values().map(|f| PoolStatus {
            name: f.name.clone().unwrap_or_default(),
            device: f.device.clone(),
            devices: f.devices.clone(),
            labels: Vec::new(),
            capacity: 0,
            used: 0,
            committed: 0,
            volumes: 0,
            snapshots: 0,
            state: "faulted",
            reason: f.reason.clone(),
            cluster_size: 0,
        }));
        out.sort_by(|a, b| (&a.name, &a.device).cmp(&(&b.name, &b.device)));
        out
    }

    /// The invariant violations of an online pool's metadata.
    pub fn check_pool(&self, name: &str) -> Result<Vec<String>, MgmtError> {
        Ok(self.online(name)?.check())
    }

    fn volume_info(pool: &Pool, name: &str) -> Option<VolumeInfo> {
        pool.list().into_iter().find(|v| v.name == name)
    }

    fn volume_status(&self, pool_name: &str, name: &str) -> Result<VolumeStatus, MgmtError> {
        let pool = self.online(pool_name)?;
        Self::volume_info(&pool, name)
            .map(|v| status_of(pool_name, v))
            .ok_or_else(|| {
                MgmtError::NotFound(format!(
                    "pool {pool_name:?}: no volume or snapshot {name:?}"
                ))
            })
    }

    /// Requires `name` in `pool` to be a volume (`want_snapshot` false) or a snapshot.
    fn require_kind(
        pool_name: &str,
        pool: &Pool,
        name: &str,
        want_snapshot: bool,
        what: &str,
    ) -> Result<(), MgmtError> {
        match Self::volume_info(pool, name) {
            None => Err(MgmtError::NotFound(format!(
                "{what}: pool {pool_name:?} has no {} {name:?}",
                if want_snapshot { "snapshot" } else { "volume" }
            ))),
            Some(v) if v.snapshot != want_snapshot => Err(MgmtError::Busy(format!(
                "{what}: {name:?} is a {}, not a {}",
                if v.snapshot { "snapshot" } else { "volume" },
                if want_snapshot { "snapshot" } else { "volume" }
            ))),
            Some(_) => Ok(()),
        }
    }

    /// Creates a volume and registers its device.
    pub async fn create_volume(
        &self,
        pool_name: &str,
        name: &str,
        size: u64,
        thin: bool,
    ) -> Result<VolumeStatus, MgmtError> {
        let _op = self.pool_ops.lock().await;
        let pool = self.online(pool_name)?;
        let what = format!("creating volume {name:?} in pool {pool_name:?}");
        if Self::volume_info(&pool, name).is_some() {
            return Err(MgmtError::Exists(format!(
                "{what}: the name is taken by another volume or snapshot of the pool"
            )));
        }
        let p2 = pool.clone();
        let n2 = name.to_string();
        self.reactors[0]
            .call(move || async move { p2.create_volume(&n2, size, thin).await })
            .await
            .map_err(|e| pool_error(&what, e))?;
        self.register_volume(pool_name, &pool, name)?;
        self.volume_status(pool_name, name)
    }

    /// Deletes a volume or snapshot that is not exported.
    pub async fn destroy_volume(&self, pool_name: &str, name: &str) -> Result<(), MgmtError> {
        let _op = self.pool_ops.lock().await;
        let pool = self.online(pool_name)?;
        let what = format!("destroying {name:?} of pool {pool_name:?}");
        if Self::volume_info(&pool, name).is_none() {
            return Err(MgmtError::NotFound(format!(
                "{what}: no volume or snapshot {name:?}"
            )));
        }
        let dev = volume_device_name(pool_name, name);
        if let Some(export) = self.export_of_device(&dev) {
            return Err(MgmtError::Busy(format!(
                "{what}: device {dev:?} is exported as {export:?}; destroy the export first"
            )));
        }
        let removed = self.unregister_volume(pool_name, name);
        let n2 = name.to_string();
        let r = self.reactors[0]
            .call(move || async move { pool.delete(&n2).await })
            .await;
        if let Err(e) = r {
            if let Some(d) = removed {
                self.devices.lock().expect("devices lock").insert(dev, d);
            }
            return Err(pool_error(&what, e));
        }
        Ok(())
    }

    /// Resizes a volume.
    pub async fn resize_volume(
        &self,
        pool_name: &str,
        name: &str,
        size: u64,
        force: bool,
    ) -> Result<VolumeStatus, MgmtError> {
        let _op = self.pool_ops.lock().await;
        let pool = self.online(pool_name)?;
        let what = format!("resizing volume {name:?} of pool {pool_name:?}");
        Self::require_kind(pool_name, &pool, name, false, &what)?;
        let old = Self::volume_info(&pool, name).map_or(0, |v| v.size);
        if size < old && !force {
            return Err(MgmtError::Invalid(format!(
                "{what}: shrinking from {old} to {size} bytes discards the data beyond the new \
                 end; pass force (`ballast volume resize --force`) to do it"
            )));
        }
        let n2 = name.to_string();
        self.reactors[0]
            .call(move || async move { pool.resize(&n2, size, force).await })
            .await
            .map_err(|e| pool_error(&what, e))?;
        self.volume_status(pool_name, name)
    }

    /// Snapshots a volume and registers the snapshot's device.
    pub async fn snapshot_volume(
        &self,
        pool_name: &str,
        volume: &str,
        snapshot: &str,
    ) -> Result<VolumeStatus, MgmtError> {
        let _op = self.pool_ops.lock().await;
        let pool = self.online(pool_name)?;
        let what = format!("snapshotting volume {volume:?} of pool {pool_name:?} as {snapshot:?}");
        Self::require_kind(pool_name, &pool, volume, false, &what)?;
        let (p2, v2, s2) = (pool.clone(), volume.to_string(), snapshot.to_string());
        self.reactors[0]
            .call(move || async move { p2.snapshot(&v2, &s2).await })
            .await
            .map_err(|e| pool_error(&what, e))?;
        self.register_volume(pool_name, &pool, snapshot)?;
        self.volume_status(pool_name, snapshot)
    }

    /// Clones a snapshot into a new volume and registers its device.
    pub async fn clone_snapshot(
        &self,
        pool_name: &str,
        snapshot: &str,
        clone: &str,
    ) -> Result<VolumeStatus, MgmtError> {
        let _op = self.pool_ops.lock().await;
        let pool = self.online(pool_name)?;
        let what = format!("cloning snapshot {snapshot:?} of pool {pool_name:?} as {clone:?}");
        Self::require_kind(pool_name, &pool, snapshot, true, &what)?;
        let (p2, s2, c2) = (pool.clone(), snapshot.to_string(), clone.to_string());
        self.reactors[0]
            .call(move || async move { p2.clone_snapshot(&s2, &c2).await })
            .await
            .map_err(|e| pool_error(&what, e))?;
        self.register_volume(pool_name, &pool, clone)?;
        self.volume_status(pool_name, clone)
    }

    /// Reverts a volume to a snapshot.
    pub async fn revert_volume(
        &self,
        pool_name: &str,
        volume: &str,
        snapshot: &str,
    ) -> Result<VolumeStatus, MgmtError> {
        let _op = self.pool_ops.lock().await;
        let pool = self.online(pool_name)?;
        let what = format!("reverting volume {volume:?} of pool {pool_name:?} to {snapshot:?}");
        Self::require_kind(pool_name, &pool, volume, false, &what)?;
        Self::require_kind(pool_name, &pool, snapshot, true, &what)?;
        let (v2, s2) = (volume.to_string(), snapshot.to_string());
        self.reactors[0]
            .call(move || async move { pool.revert(&v2, &s2).await })
            .await
            .map_err(|e| pool_error(&what, e))?;
        self.volume_status(pool_name, volume)
    }

    /// Volumes and snapshots of one online pool, or of all.
    pub fn list_volumes(&self, pool: Option<&str>) -> Result<Vec<VolumeStatus>, MgmtError> {
        let pools: Vec<(String, Arc<Pool>)> = match pool {
            Some(name) => vec![(name.to_string(), self.online(name)?)],
            None => self
                .pools()
                .online
                .iter()
                .map(|(n, e)| (n.clone(), e.pool.clone()))
                .collect(),
        };
        let mut out = Vec::new();
        for (name, p) in pools {
            let mut list: Vec<VolumeStatus> =
                p.list().into_iter().map(|v| status_of(&name, v)).collect();
            list.sort_by(|a, b| a.name.cmp(&b.name));
            out.extend(list);
        }
        Ok(out)
    }

    /// Commits every online pool; returns the failures.
    pub async fn commit_pools(&self) -> Vec<String> {
        let pools: Vec<(String, Arc<Pool>)> = self
            .pools()
            .online
            .iter()
            .map(|(n, e)| (n.clone(), e.pool.clone()))
            .collect();
        self.reactors[0]
            .call(move || async move {
                let mut errs = Vec::new();
                for (n, p) in pools {
                    if let Err(e) = p.commit().await {
                        errs.push(format!("pool {n:?}: {e}"));
                    }
                }
                errs
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pool::meta::MetaError;

    #[test]
    fn errors_map_to_the_right_kind() {
        assert!(matches!(
            pool_error("x", PoolError::new(PoolErrorKind::NotFound, "v")),
            MgmtError::NotFound(_)
        ));
        assert!(matches!(
            pool_error("x", PoolError::no_space("full")),
            MgmtError::NoSpace(_)
        ));
        assert!(matches!(
            pool_error("x", PoolError::from(MetaError::NameTaken("v".into()))),
            MgmtError::Exists(_)
        ));
        assert!(matches!(
            pool_error("x", PoolError::invalid("bad")),
            MgmtError::Invalid(_)
        ));
        let m = pool_error("creating volume \"v\"", PoolError::no_space("pool is full"));
        assert_eq!(
            m.to_string(),
            "creating volume \"v\": pool out of space: pool is full"
        );
    }
}
