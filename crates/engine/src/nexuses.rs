//! Nexuses in the engine: a nexus replicates over engine devices (its children: pool volumes
//! `POOL/VOLUME`, files, remote replicas opened as `nbd://` or `nvmf://` devices) and is
//! itself an engine device under its own name, exported like any other.
//!
//! A device that is a child of a nexus is in use: it cannot be exported, destroyed or given
//! to another nexus. Rebuilds run in the background on reactor 0; their progress is in
//! [`NexusStatus`].
//!
//! A nexus created with health persistence publishes its health records through the engine's
//! [`HealthHub`](crate::health::HealthHub) (the `WatchNexusHealth` / `AckNexusHealth` API).
//! Destroying a nexus, and shutting the engine down, closes it: I/O drained, children
//! flushed, a last record (`clean` when that all worked) delivered to a connected watcher,
//! whose ack is awaited for up to [`FINAL_ACK_WAIT`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::Device;
use nexus::{ChildSpec, ChildState, Nexus, NexusError, NexusOptions, NexusState};

use crate::health::HealthHub;
use crate::{DeviceEntry, EngineState, MgmtError};

/// A nexus the engine serves.
#[derive(Clone, Debug)]
pub struct NexusEntry {
    /// The nexus.
    pub nexus: Arc<Nexus>,
    /// Engine device holding its dirty-region log, if any.
    pub log_device: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// Created with health persistence.
    pub persist_health: bool,
    /// This incarnation's epoch (fencing), if any.
    pub epoch: Option<u64>,
}

/// How long closing a nexus with health persistence waits for its last record to be
/// acknowledged, while a watcher is connected.
pub const FINAL_ACK_WAIT: Duration = Duration::from_secs(5);

/// Options of a nexus being created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CreateOptions {
    /// This incarnation's epoch (fencing), if any.
    pub epoch: Option<u64>,
    /// Publish health records and hold writes a retired child missed until the record
    /// without it is acknowledged as stored.
    pub persist_health: bool,
    /// The previous incarnation's last record says it did not close cleanly: the first
    /// child in sync serves alone and the other children in sync are rebuilt from it.
    pub unclean: bool,
    /// Generation of the previous incarnation's last record (0: none).
    pub previous_generation: u64,
    /// Rebuild rate limit in bytes per second.
    pub rebuild_rate: Option<u64>,
}

/// The nexus registry.
#[derive(Debug, Default)]
pub(crate) struct Nexuses {
    by_name: BTreeMap<String, NexusEntry>,
    /// Names being created (the creation awaits the reactor): a second creation of the same
    /// name fails at once instead of racing the first (and its health records).
    creating: std::collections::BTreeSet<String>,
}

/// Holds a name in [`Nexuses::creating`] while it lives.
struct Creating<'a>(&'a EngineState, String);

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        self.0.nexuses().creating.remove(&self.1);
    }
}

/// A child as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildStatus {
    /// Engine device name.
    pub name: String,
    /// `online`, `rebuilding`, `out-of-sync` or `faulted`.
    pub state: &'static str,
    /// Why faulted.
    pub reason: String,
    /// Rebuild progress: bytes done and to do (0/0 when not rebuilding).
    pub rebuild_done: u64,
    /// See `rebuild_done`.
    pub rebuild_total: u64,
    /// The rebuild copies only dirty regions.
    pub partial: bool,
}

/// A nexus as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NexusStatus {
    /// Name (also its engine device name).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// `online`, `degraded`, `faulted` or `fenced`.
    pub state: &'static str,
    /// Children in order.
    pub children: Vec<ChildStatus>,
    /// Engine device holding the dirty-region log ("" when in memory).
    pub log_device: String,
    /// Regions recorded dirty for absent children, and the region size.
    pub dirty_regions: u64,
    /// Bytes per region.
    pub region_size: u64,
    /// Children the control plane should record as healthy (in sync).
    pub healthy: Vec<String>,
    /// Created with health persistence.
    pub persist_health: bool,
    /// Newest health record made, and newest acknowledged as stored (0 when none).
    pub health_generation: u64,
    /// See `health_generation`.
    pub health_acked: u64,
}

fn nexus_error(what: &str, e: NexusError) -> MgmtError {
    match e {
        NexusError::Invalid(m) => MgmtError::Invalid(format!("{what}: {m}")),
        NexusError::NotFound(c) => MgmtError::NotFound(format!("{what}: no child {c:?}")),
        e => MgmtError::Device(format!("{what}: {e}")),
    }
}

fn status_of(name: &str, e: &NexusEntry, hub: &HealthHub) -> NexusStatus {
    let n = &e.nexus;
    let (health_generation, health_acked) = if e.persist_health {
        hub.status(name)
    } else {
        (0, 0)
    };
    NexusStatus {
        name: name.to_string(),
        size: e.size,
        state: match n.state() {
            _ if n.is_fenced() => "fenced",
            NexusState::Online => "online",
            NexusState::Degraded => "degraded",
            NexusState::Faulted => "faulted",
        },
        children: n
            .children()
            .into_iter()
            .map(|c| {
                let (state, reason, done, total, partial) = match c.state {
                    ChildState::Online => ("online", String::new(), 0, 0, false),
                    ChildState::OutOfSync => ("out-of-sync", String::new(), 0, 0, false),
                    ChildState::Rebuilding {
                        done,
                        total,
                        partial,
                    } => ("rebuilding", String::new(), done, total, partial),
                    ChildState::Faulted { reason } => ("faulted", reason, 0, 0, false),
                };
                ChildStatus {
                    name: c.name,
                    state,
                    reason,
                    rebuild_done: done,
                    rebuild_total: total,
                    partial,
                }
            })
            .collect(),
        log_device: e.log_device.clone().unwrap_or_default(),
        dirty_regions: n.drl().dirty_count(),
        region_size: n.drl().region_size(),
        healthy: n.healthy(),
        persist_health: e.persist_health,
        health_generation,
        health_acked,
    }
}

impl EngineState {
    pub(crate) fn nexuses(&self) -> std::sync::MutexGuard<'_, Nexuses> {
        self.nexuses.lock().expect("nexus lock")
    }

    /// Why `device` cannot be used otherwise, if a nexus uses it (as a child or its log).
    pub(crate) fn nexus_claim(&self, device: &str) -> Option<String> {
        for (name, e) in &self.nexuses().by_name {
            if e.nexus.children().iter().any(|c| c.name == device) {
                return Some(format!(
                    "device {device:?} is a child of nexus {name:?}; `ballast nexus remove-child \
                     {name} {device}` first"
                ));
            }
            if e.log_device.as_deref() == Some(device) {
                return Some(format!(
                    "device {device:?} holds the dirty-region log of nexus {name:?}"
                ));
            }
        }
        None
    }

    /// A device that may become a child of a nexus (fenced: with an epoch): as
    /// [`EngineState::child_device`], and used through this engine's NVMe host identity
    /// ([`blockdev::fence::HostView`]), so the device's reservations hold for the nexus as
    /// they do for hosts reaching it over NVMe/TCP: a newer incarnation elsewhere that
    /// claims the device shuts this nexus's writes out, and this nexus's claim shuts theirs
    /// out. A fenced nexus may use a device exported over NVMe/TCP (a replica other nodes
    /// can reach when the volume moves): once it claimed the device, other hosts' writes
    /// fail.
    fn nexus_child(&self, device: &str, fenced: bool) -> Result<Device, MgmtError> {
        let entry = self.usable_device(device, fenced)?;
        let host = initiator_nvme::host_identity().1;
        Ok(Arc::new(blockdev::fence::HostView::new(
            entry.device,
            Some(entry.fencing),
            host.0,
        )))
    }

    /// A device that may become a log: it exists, is not exported, and no pool or nexus
    /// uses it.
    fn child_device(&self, device: &str) -> Result<Device, MgmtError> {
        self.usable_device(device, false)
            .map(|e| e.device as Device)
    }

    /// A device no pool, nexus or export uses (`nvmf_export_ok`: except an NVMe/TCP export).
    fn usable_device(&self, device: &str, nvmf_export_ok: bool) -> Result<DeviceEntry, MgmtError> {
        let dev = self
            .devices
            .lock()
            .expect("devices lock")
            .get(device)
            .cloned()
            .ok_or_else(|| MgmtError::NotFound(format!("device {device:?} not found")))?;
        if let Some(why) = self.nexus_claim(device) {
            return Err(MgmtError::Busy(why));
        }
        let export = match self.nbd.device_in_use(device) {
            Some(e) => Some(e),
            None if nvmf_export_ok => None,
            None => self.export_of_device(device),
        };
        if let Some(export) = export {
            return Err(MgmtError::Busy(format!(
                "device {device:?} is exported as {export:?}; destroy the export first (a \
                 nexus with an epoch may use a device exported over NVMe/TCP: its \
                 reservation keeps other hosts' writes out)"
            )));
        }
        if !device.contains('/')
            && let Some(why) = self.pool_claim(device)
        {
            return Err(MgmtError::Busy(why));
        }
        Ok(dev)
    }

    /// Creates nexus `name` of `size` bytes over the engine devices `children`; those in
    /// `out_of_sync` are rebuilt from the others in the background. The nexus becomes engine
    /// device `name`.
    pub async fn create_nexus(
        &self,
        name: &str,
        size: u64,
        children: &[String],
        out_of_sync: &[String],
        log_device: Option<&str>,
        options: CreateOptions,
    ) -> Result<NexusStatus, MgmtError> {
        if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control() || c == '/') {
            return Err(MgmtError::Invalid(format!(
                "bad nexus name {name:?}: 1 to 64 bytes, no '/' or control characters"
            )));
        }
        if self
            .devices
            .lock()
            .expect("devices lock")
            .contains_key(name)
        {
            return Err(MgmtError::Exists(format!(
                "a device named {name:?} already exists"
            )));
        }
        if let Some(c) = out_of_sync.iter().find(|c| !children.contains(c)) {
            return Err(MgmtError::Invalid(format!(
                "out-of-sync child {c:?} is not among the children"
            )));
        }
        if !self.nexuses().creating.insert(name.to_string()) {
            return Err(MgmtError::Exists(format!(
                "nexus {name:?} is being created"
            )));
        }
        let _creating = Creating(self, name.to_string());
        let mut specs = Vec::new();
        for c in children {
            specs.push(ChildSpec {
                name: c.clone(),
                dev: self.nexus_child(c, options.epoch.is_some())?,
                healthy: !out_of_sync.contains(c),
            });
        }
        let log = match log_device {
            Some(d) if children.iter().any(|c| c == d) => {
                return Err(MgmtError::Invalid(format!(
                    "device {d:?} cannot be both a child and the log"
                )));
            }
            Some(d) => Some(self.child_device(d)?),
            None => None,
        };
        let (n2, s2) = (name.to_string(), size);
        let mut opts = NexusOptions {
            epoch: options.epoch,
            unclean_shutdown: options.unclean,
            rebuild_rate: options.rebuild_rate,
            ..NexusOptions::default()
        };
        if options.persist_health {
            opts.health_generation = self.health.register(name, options.previous_generation);
            opts.health = Some(self.health.clone());
        }
        let nexus = self.reactors[0]
            .call(move || async move { Nexus::create(&n2, s2, specs, log, opts).await })
            .await
            .map_err(|e| nexus_error(&format!("creating nexus {name:?}"), e))?;
        let entry = NexusEntry {
            nexus: nexus.clone(),
            log_device: log_device.map(str::to_string),
            size,
            persist_health: options.persist_health,
            epoch: options.epoch,
        };
        {
            let mut devs = self.devices.lock().expect("devices lock");
            if devs.contains_key(name) {
                return Err(MgmtError::Exists(format!(
                    "a device named {name:?} already exists"
                )));
            }
            devs.insert(
                name.to_string(),
                DeviceEntry::new(format!("nexus://{name}"), nexus.clone()),
            );
        }
        self.nexuses().by_name.insert(name.to_string(), entry);
        self.start_rebuilds(&nexus);
        self.nexus_status(name)
    }

    fn start_rebuilds(&self, nexus: &Arc<Nexus>) {
        let n = nexus.clone();
        self.reactors[0].spawn(move || async move { n.rebuild_pending() });
    }

    /// One nexus's status.
    pub fn nexus_status(&self, name: &str) -> Result<NexusStatus, MgmtError> {
        let g = self.nexuses();
        let e = g
            .by_name
            .get(name)
            .ok_or_else(|| MgmtError::NotFound(format!("nexus {name:?} not found")))?;
        Ok(status_of(name, e, &self.health))
    }

    /// Every nexus, by name.
    pub fn list_nexuses(&self) -> Vec<NexusStatus> {
        self.nexuses()
            .by_name
            .iter()
            .map(|(n, e)| status_of(n, e, &self.health))
            .collect()
    }

    fn nexus_of(&self, name: &str) -> Result<Arc<Nexus>, MgmtError> {
        self.nexuses()
            .by_name
            .get(name)
            .map(|e| e.nexus.clone())
            .ok_or_else(|| MgmtError::NotFound(format!("nexus {name:?} not found")))
    }

    /// Destroys a nexus that is not exported: it is closed (I/O drained, children flushed,
    /// its last health record published — `clean` when all that worked) and its device
    /// removed; the children stay, as plain devices. With health persistence and a watcher
    /// connected, waits up to [`FINAL_ACK_WAIT`] for the last record's ack.
    pub async fn destroy_nexus(&self, name: &str) -> Result<(), MgmtError> {
        let nexus = self.nexus_of(name)?;
        if let Some(export) = self.export_of_device(name) {
            return Err(MgmtError::Busy(format!(
                "nexus {name:?} is exported as {export:?}; destroy the export first"
            )));
        }
        self.devices.lock().expect("devices lock").remove(name);
        let persist = self
            .nexuses()
            .by_name
            .remove(name)
            .is_some_and(|e| e.persist_health);
        let n = nexus.clone();
        self.reactors[0]
            .call(move || async move { n.close().await })
            .await;
        if persist {
            let generation = self.health.status(name).0;
            let until = Instant::now() + FINAL_ACK_WAIT;
            while !self.health.is_acked(name, generation)
                && self.health.watchers() > 0
                && Instant::now() < until
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(())
    }

    /// Closes every nexus (engine shutdown): each is drained, flushed and publishes its last
    /// health record; their devices are removed. Returns the nexuses with health persistence
    /// and the generation of their last record.
    pub(crate) async fn close_nexuses(&self) -> Vec<(String, u64)> {
        let all: Vec<(String, NexusEntry)> = std::mem::take(&mut self.nexuses().by_name)
            .into_iter()
            .collect();
        {
            let mut devs = self.devices.lock().expect("devices lock");
            for (name, _) in &all {
                devs.remove(name);
            }
        }
        let nexuses: Vec<Arc<Nexus>> = all.iter().map(|(_, e)| e.nexus.clone()).collect();
        self.reactors[0]
            .call(move || async move {
                let futs: Vec<reactor::sync::BoxFuture<'_, bool>> = nexuses
                    .iter()
                    .map(|n| Box::pin(n.close()) as reactor::sync::BoxFuture<'_, bool>)
                    .collect();
                reactor::sync::join_all(futs).await;
            })
            .await;
        all.into_iter()
            .filter(|(_, e)| e.persist_health)
            .map(|(name, _)| {
                let generation = self.health.status(&name).0;
                (name, generation)
            })
            .collect()
    }

    /// Adds engine device `child` to nexus `name`; it is rebuilt in the background.
    pub async fn add_nexus_child(&self, name: &str, child: &str) -> Result<NexusStatus, MgmtError> {
        let nexus = self.nexus_of(name)?;
        let fenced = self
            .nexuses()
            .by_name
            .get(name)
            .is_some_and(|e| e.epoch.is_some());
        let dev = self.nexus_child(child, fenced)?;
        let (n2, c2) = (nexus.clone(), child.to_string());
        self.reactors[0]
            .call(move || async move { n2.add_child(&c2, dev).await })
            .await
            .map_err(|e| nexus_error(&format!("adding {child:?} to nexus {name:?}"), e))?;
        self.start_rebuilds(&nexus);
        self.nexus_status(name)
    }

    /// Removes `child` from nexus `name` (the device stays).
    pub async fn remove_nexus_child(
        &self,
        name: &str,
        child: &str,
    ) -> Result<NexusStatus, MgmtError> {
        let nexus = self.nexus_of(name)?;
        let c2 = child.to_string();
        self.reactors[0]
            .call(move || async move { nexus.remove_child(&c2).await })
            .await
            .map_err(|e| nexus_error(&format!("removing {child:?} from nexus {name:?}"), e))?;
        self.nexus_status(name)
    }

    /// Retires `child` of nexus `name` (the control plane fences it, or a test fails it).
    pub async fn fault_nexus_child(
        &self,
        name: &str,
        child: &str,
        reason: &str,
    ) -> Result<NexusStatus, MgmtError> {
        let nexus = self.nexus_of(name)?;
        let (c2, r2) = (child.to_string(), reason.to_string());
        self.reactors[0]
            .call(move || async move { nexus.fault_child(&c2, &r2).await })
            .await
            .map_err(|e| nexus_error(&format!("faulting {child:?} of nexus {name:?}"), e))?;
        self.nexus_status(name)
    }

    /// Starts rebuilding faulted or out-of-sync `child` of nexus `name` (a returning replica:
    /// only the regions written while it was away are copied).
    pub async fn rebuild_nexus_child(
        &self,
        name: &str,
        child: &str,
    ) -> Result<NexusStatus, MgmtError> {
        let nexus = self.nexus_of(name)?;
        let state = nexus
            .children()
            .into_iter()
            .find(|c| c.name == child)
            .map(|c| c.state)
            .ok_or_else(|| MgmtError::NotFound(format!("nexus {name:?} has no child {child:?}")))?;
        if !matches!(state, ChildState::Faulted { .. } | ChildState::OutOfSync) {
            return Err(MgmtError::Busy(format!(
                "child {child:?} of nexus {name:?} is {state:?}: nothing to rebuild"
            )));
        }
        let c2 = child.to_string();
        self.reactors[0].spawn(move || async move {
            let _ = nexus.rebuild_child(&c2).await;
        });
        // Let it start, so the status shows it rebuilding.
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.nexus_status(name)
    }
}
