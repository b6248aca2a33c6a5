//! The Ballast engine: wires reactors, devices, the NBD and NVMe/TCP targets and the
//! management API.
//!
//! [`Engine::start`] brings up the reactors, opens the configured devices (each wrapped in
//! [`blockdev::Measured`] for statistics), imports the pools they hold (their volumes become
//! devices named `POOL/VOLUME`), creates the exports (NBD exports and NVMe/TCP subsystems),
//! starts the NBD and NVMe/TCP listeners and, unless disabled, the gRPC management API on a
//! control thread. [`Engine::shutdown`] stops
//! accepting, closes connections, commits every pool, flushes every device and stops the
//! reactors.

pub mod config;
pub mod devices;
mod grpc;
pub mod health;
mod named;
pub mod nexuses;
pub mod pools;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use blockdev::fence::Reservations;
use blockdev::{BlockDevice, Device, Measured, OpenError};
use reactor::{Config as ReactorConfig, ReactorHandle, Runtime};
use target_nbd::NbdServer;
use target_nvme::NvmfTarget;

pub use config::EngineConfig;

/// A device the engine owns.
#[derive(Clone, Debug)]
pub struct DeviceEntry {
    /// The URI it was opened from.
    pub uri: String,
    /// The device, wrapped for statistics.
    pub device: Arc<Measured>,
    /// Who may write it ([`blockdev::fence`]): shared by the NVMe/TCP namespaces exporting
    /// the device and by this engine's nexuses using it, so fencing holds whichever way
    /// writes arrive.
    pub fencing: Arc<Reservations>,
}

impl DeviceEntry {
    /// `device`, opened from `uri`, wrapped for statistics, with no one fenced.
    pub fn new(uri: String, device: Device) -> DeviceEntry {
        DeviceEntry {
            uri,
            device: Arc::new(Measured::new(device)),
            fencing: Arc::new(Reservations::new()),
        }
    }
}

/// State shared by the data plane and the management API.
pub struct EngineState {
    devices: Mutex<BTreeMap<String, DeviceEntry>>,
    pools: Mutex<pools::Pools>,
    nexuses: Mutex<nexuses::Nexuses>,
    /// Health records of the nexuses with health persistence, for the control plane.
    health: Arc<health::HealthHub>,
    /// Serialises pool management operations (they await device I/O).
    pool_ops: tokio::sync::Mutex<()>,
    nbd: Arc<NbdServer>,
    nbd_addr: SocketAddr,
    nvmf: Arc<NvmfTarget>,
    nvmf_addr: Option<SocketAddr>,
    reactors: Vec<ReactorHandle>,
    cores: usize,
    mode: reactor::PollMode,
    started: Instant,
}

impl std::fmt::Debug for EngineState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineState")
            .field("nbd_addr", &self.nbd_addr)
            .finish()
    }
}

/// Why a management request failed; mapped to a gRPC status in one place.
#[derive(Debug)]
pub enum MgmtError {
    /// Bad arguments.
    Invalid(String),
    /// Name not found.
    NotFound(String),
    /// Name taken.
    Exists(String),
    /// Not possible in the current state (device in use).
    Busy(String),
    /// Out of space.
    NoSpace(String),
    /// The device failed.
    Device(String),
}

impl std::fmt::Display for MgmtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MgmtError::Invalid(s)
            | MgmtError::NotFound(s)
            | MgmtError::Exists(s)
            | MgmtError::Busy(s)
            | MgmtError::NoSpace(s)
            | MgmtError::Device(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for MgmtError {}

impl EngineState {
    /// The NBD listener's address.
    pub fn nbd_addr(&self) -> SocketAddr {
        self.nbd_addr
    }

    /// The `nbd://` URI of an export.
    pub fn export_uri(&self, name: &str) -> String {
        format!("nbd://{}/{}", self.nbd_addr, name)
    }

    /// The NVMe/TCP listener's address, if the target is enabled.
    pub fn nvmf_addr(&self) -> Option<SocketAddr> {
        self.nvmf_addr
    }

    /// The NVMe-oF target (for subsystem management).
    pub fn nvmf(&self) -> &Arc<NvmfTarget> {
        &self.nvmf
    }

    /// The `nvmf://HOST:PORT/NQN` URI of a subsystem (empty when the target is disabled).
    pub fn nvmf_uri(&self, nqn: &str) -> String {
        self.nvmf_addr
            .map(|a| format!("nvmf://{a}/{nqn}"))
            .unwrap_or_default()
    }

    /// What exports `device`, for "in use" errors: an NBD export name or an NVMe namespace.
    pub fn export_of_device(&self, device: &str) -> Option<String> {
        if let Some(e) = self.nbd.device_in_use(device) {
            return Some(e);
        }
        self.nvmf
            .device_in_use(device)
            .map(|(nqn, nsid)| format!("namespace {nsid} of NVMe subsystem {nqn}"))
    }

    /// Opens `uri` as device `name`.
    pub fn create_device(&self, name: &str, uri: &str) -> Result<DeviceEntry, MgmtError> {
        if name.is_empty() || name.len() > 256 || name.chars().any(|c| c.is_control() || c == '/') {
            return Err(MgmtError::Invalid(format!("bad device name {name:?}")));
        }
        if self
            .devices
            .lock()
            .expect("devices lock")
            .contains_key(name)
        {
            return Err(MgmtError::Exists(format!("device {name:?} already exists")));
        }
        let dev = devices::open(name, uri, &self.reactors[0]).map_err(|e| match e {
            OpenError::Uri(e) => MgmtError::Invalid(e.to_string()),
            e @ OpenError::Device { .. } => MgmtError::Device(e.to_string()),
        })?;
        let entry = DeviceEntry::new(uri.to_string(), dev);
        let mut devs = self.devices.lock().expect("devices lock");
        if devs.contains_key(name) {
            return Err(MgmtError::Exists(format!("device {name:?} already exists")));
        }
        devs.insert(name.to_string(), entry.clone());
        Ok(entry)
    }

    /// Flushes and closes a device that no export and no pool uses.
    pub async fn destroy_device(&self, name: &str) -> Result<(), MgmtError> {
        if self
            .devices
            .lock()
            .expect("devices lock")
            .contains_key(name)
            && let Some(why) = self.pool_claim(name).or_else(|| self.nexus_claim(name))
        {
            return Err(MgmtError::Busy(why));
        }
        if self.nexus_status(name).is_ok() {
            return Err(MgmtError::Busy(format!(
                "device {name:?} is a nexus; use `ballast nexus destroy {name}`"
            )));
        }
        if let Some(export) = self.export_of_device(name) {
            return Err(MgmtError::Busy(format!(
                "device {name:?} is exported as {export:?}; destroy the export first"
            )));
        }
        let entry = self
            .devices
            .lock()
            .expect("devices lock")
            .remove(name)
            .ok_or_else(|| MgmtError::NotFound(format!("device {name:?} not found")))?;
        let dev = entry.device.clone();
        self.reactors[0]
            .call(move || async move { dev.flush().await })
            .await
            .map_err(|e| MgmtError::Device(format!("flushing {name:?}: {e}")))
    }

    /// Devices by name.
    pub fn devices(&self) -> Vec<(String, DeviceEntry)> {
        self.devices
            .lock()
            .expect("devices lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Exports `device` as `name`.
    pub fn create_export(
        &self,
        name: &str,
        device: &str,
        read_only: bool,
    ) -> Result<(), MgmtError> {
        if self.nvmf_exports().iter().any(|(n, _)| n == name) {
            return Err(MgmtError::Exists(format!(
                "export {name:?} already exists (NVMe/TCP)"
            )));
        }
        let dev = self.exportable(device)?;
        self.nbd
            .add_export(name, dev.device, read_only)
            .map_err(|e| match e {
                target_nbd::ExportError::Exists(_) => MgmtError::Exists(e.to_string()),
                target_nbd::ExportError::NotFound(_) => MgmtError::NotFound(e.to_string()),
                target_nbd::ExportError::BadName(_) => MgmtError::Invalid(e.to_string()),
            })
    }

    /// Looks a device up for exporting: it must exist and not hold a pool.
    fn exportable(&self, device: &str) -> Result<DeviceEntry, MgmtError> {
        let dev = self
            .devices
            .lock()
            .expect("devices lock")
            .get(device)
            .cloned()
            .ok_or_else(|| MgmtError::NotFound(format!("device {device:?} not found")))?;
        if !device.contains('/')
            && let Some(why) = self.pool_claim(device)
        {
            return Err(MgmtError::Busy(format!("cannot export: {why}")));
        }
        if let Some(why) = self.nexus_claim(device) {
            return Err(MgmtError::Busy(format!("cannot export: {why}")));
        }
        Ok(dev)
    }

    /// Exports `device` over NVMe/TCP as `name`: subsystem `nqn.2024-01.io.ballast:NAME`
    /// with the device as namespace 1, reachable by the hosts in `allow_hosts` (any host when
    /// empty). Returns the subsystem NQN.
    pub fn create_nvmf_export(
        &self,
        name: &str,
        device: &str,
        read_only: bool,
        allow_hosts: &[String],
    ) -> Result<String, MgmtError> {
        self.nvmf_target()?;
        if self.nbd.exports().iter().any(|e| e.name == name) {
            return Err(MgmtError::Exists(format!(
                "export {name:?} already exists (NBD)"
            )));
        }
        let dev = self.exportable(device)?;
        let nqn = target_nvme::export_nqn(name);
        self.nvmf
            .create_subsystem(&nqn, allow_hosts)
            .map_err(nvmf_err)?;
        if let Err(e) = self
            .nvmf
            .add_namespace(&nqn, Some(1), dev.device, dev.fencing, read_only)
        {
            let _ = self.nvmf.destroy_subsystem(&nqn);
            return Err(nvmf_err(e));
        }
        Ok(nqn)
    }

    /// The NVMe-oF target, or Busy when it is disabled.
    fn nvmf_target(&self) -> Result<&Arc<NvmfTarget>, MgmtError> {
        if self.nvmf_addr.is_none() {
            return Err(MgmtError::Busy(
                "the NVMe/TCP target is disabled (--nvmf-listen off)".into(),
            ));
        }
        Ok(&self.nvmf)
    }

    /// One NVM subsystem's description.
    pub fn nvmf_subsystem(&self, nqn: &str) -> Result<target_nvme::SubsystemInfo, MgmtError> {
        self.nvmf
            .subsystems()
            .into_iter()
            .find(|s| s.nqn == nqn)
            .ok_or_else(|| MgmtError::NotFound(format!("subsystem {nqn:?} not found")))
    }

    /// Creates an empty NVM subsystem.
    pub fn create_nvmf_subsystem(
        &self,
        nqn: &str,
        allowed_hosts: &[String],
    ) -> Result<target_nvme::SubsystemInfo, MgmtError> {
        self.nvmf_target()?
            .create_subsystem(nqn, allowed_hosts)
            .map_err(nvmf_err)?;
        self.nvmf_subsystem(nqn)
    }

    /// Removes an NVM subsystem (its controllers are torn down).
    pub fn destroy_nvmf_subsystem(&self, nqn: &str) -> Result<(), MgmtError> {
        self.nvmf.destroy_subsystem(nqn).map_err(nvmf_err)
    }

    /// Adds `device` as a namespace of `nqn` (at `nsid`, or the lowest free NSID).
    pub fn add_nvmf_namespace(
        &self,
        nqn: &str,
        device: &str,
        nsid: Option<u32>,
        read_only: bool,
    ) -> Result<target_nvme::SubsystemInfo, MgmtError> {
        let target = self.nvmf_target()?;
        let dev = self.exportable(device)?;
        target
            .add_namespace(nqn, nsid, dev.device, dev.fencing, read_only)
            .map_err(nvmf_err)?;
        self.nvmf_subsystem(nqn)
    }

    /// Removes namespace `nsid` of `nqn`.
    pub fn remove_nvmf_namespace(
        &self,
        nqn: &str,
        nsid: u32,
    ) -> Result<target_nvme::SubsystemInfo, MgmtError> {
        self.nvmf.remove_namespace(nqn, nsid).map_err(nvmf_err)?;
        self.nvmf_subsystem(nqn)
    }

    /// Adds (`allow`) or removes a host NQN on a subsystem's allow-list.
    pub fn set_nvmf_host(
        &self,
        nqn: &str,
        host: &str,
        allow: bool,
    ) -> Result<target_nvme::SubsystemInfo, MgmtError> {
        if allow {
            self.nvmf.allow_host(nqn, host)
        } else {
            self.nvmf.disallow_host(nqn, host)
        }
        .map_err(nvmf_err)?;
        self.nvmf_subsystem(nqn)
    }

    /// The NVMe/TCP exports: subsystems named `nqn.2024-01.io.ballast:NAME`, as (name, info).
    pub fn nvmf_exports(&self) -> Vec<(String, target_nvme::SubsystemInfo)> {
        let prefix = format!("{}:", target_nvme::EXPORT_NQN_PREFIX);
        self.nvmf
            .subsystems()
            .into_iter()
            .filter_map(|s| Some((s.nqn.strip_prefix(&prefix)?.to_string(), s)))
            .collect()
    }

    /// Removes an export (NBD, or NVMe/TCP: its subsystem and controllers go).
    pub fn destroy_export(&self, name: &str) -> Result<(), MgmtError> {
        match self.nbd.remove_export(name) {
            Ok(()) => Ok(()),
            Err(e) => {
                let nqn = target_nvme::export_nqn(name);
                if self.nvmf_exports().iter().any(|(n, _)| n == name) {
                    self.nvmf.destroy_subsystem(&nqn).map_err(nvmf_err)
                } else {
                    Err(MgmtError::NotFound(e.to_string()))
                }
            }
        }
    }

    /// The exports.
    pub fn exports(&self) -> Vec<target_nbd::ExportInfo> {
        self.nbd.exports()
    }

    /// Commits every pool, then flushes every device; returns how many devices were flushed
    /// and the failures.
    pub async fn flush_all(&self) -> (usize, Vec<String>) {
        let mut pool_errors = self.commit_pools().await;
        let devs: Vec<Arc<Measured>> = self.devices().into_iter().map(|(_, d)| d.device).collect();
        let n = devs.len();
        let errors = self.reactors[0]
            .call(move || async move {
                let mut errs = Vec::new();
                for d in devs {
                    if let Err(e) = d.flush().await {
                        errs.push(format!("{}: {e}", d.name()));
                    }
                }
                errs
            })
            .await;
        pool_errors.extend(errors);
        (n, pool_errors)
    }
}

/// The one mapping of NVMe-oF target management errors.
pub fn nvmf_err(e: target_nvme::NvmfError) -> MgmtError {
    match e {
        target_nvme::NvmfError::Exists(m) => MgmtError::Exists(m),
        target_nvme::NvmfError::NotFound(m) => MgmtError::NotFound(m),
        target_nvme::NvmfError::Invalid(m) => MgmtError::Invalid(m),
    }
}

/// A running engine.
pub struct Engine {
    state: Arc<EngineState>,
    runtime: Option<Runtime>,
    listener: std::net::TcpListener,
    nvmf_listener: Option<std::net::TcpListener>,
    grpc: Option<(
        tokio::sync::oneshot::Sender<()>,
        std::thread::JoinHandle<()>,
        SocketAddr,
    )>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("nbd", &self.state.nbd_addr)
            .finish()
    }
}

impl Engine {
    /// Starts everything in `cfg`; fails without side effects left running.
    pub fn start(cfg: &EngineConfig) -> anyhow::Result<Engine> {
        if cfg.cores == 0 || cfg.cores > 256 {
            bail!("--cores must be between 1 and 256");
        }
        let listener = std::net::TcpListener::bind(cfg.nbd_listen)
            .with_context(|| format!("binding NBD listener on {}", cfg.nbd_listen))?;
        let nbd_addr = listener.local_addr()?;
        let nvmf_listener = match cfg.nvmf_listen {
            Some(a) => Some(
                std::net::TcpListener::bind(a)
                    .with_context(|| format!("binding NVMe/TCP listener on {a}"))?,
            ),
            None => None,
        };
        let nvmf_addr = match &nvmf_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        // Descriptors bound how many connections the listeners may hold: raise the soft
        // limit to the hard one, then size the caps below it, with headroom for the
        // management API and the devices (a flood of data connections must not lock the
        // operator out).
        let fd_limit = reactor::raise_fd_limit().unwrap_or(1024);
        let listeners = 1 + usize::from(nvmf_listener.is_some());
        let limits = cfg.limits.listener_limits(fd_limit, listeners);
        let runtime = Runtime::start(ReactorConfig {
            cores: cfg.cores,
            mode: cfg.poll_mode,
            pin: cfg.pin,
            ..ReactorConfig::default()
        })
        .context("starting reactors (io_uring)")?;
        let state = Arc::new(EngineState {
            devices: Mutex::new(BTreeMap::new()),
            pools: Mutex::new(pools::Pools::default()),
            nexuses: Mutex::new(nexuses::Nexuses::default()),
            health: Arc::new(health::HealthHub::default()),
            pool_ops: tokio::sync::Mutex::new(()),
            nbd: NbdServer::with_limits(limits),
            nbd_addr,
            nvmf: NvmfTarget::with_limits(limits),
            nvmf_addr,
            reactors: runtime.handles().to_vec(),
            cores: cfg.cores,
            mode: cfg.poll_mode,
            started: Instant::now(),
        });
        let mut engine = Engine {
            state: state.clone(),
            runtime: Some(runtime),
            listener,
            nvmf_listener,
            grpc: None,
        };
        for d in &cfg.devices {
            state
                .create_device(&d.name, &d.uri)
                .with_context(|| format!("device {:?}", d.name))?;
        }
        if cfg.pool_import {
            let names: Vec<String> = cfg.devices.iter().map(|d| d.name.clone()).collect();
            for line in block_on(state.scan_devices(&names)) {
                eprintln!("ballast-engine: {line}");
            }
        }
        for e in &cfg.exports {
            let device = e.device_name();
            if let Err(err) = state.create_export(&e.name, device, e.read_only) {
                // An export of a volume whose pool could not be imported, or of a device a
                // pool holds, is skipped with an error: everything else is still served.
                let faulted_volume = device
                    .split_once('/')
                    .is_some_and(|(p, _)| !state.pool_online(p) && state.has_faulted_pools());
                let faulted_device = !device.contains('/') && state.pool_claim(device).is_some();
                if faulted_volume || faulted_device {
                    eprintln!(
                        "ballast-engine: error: export {:?} not created: {err}{}",
                        e.name,
                        if faulted_volume {
                            " (its pool may be one of the faulted pools)"
                        } else {
                            ""
                        }
                    );
                    continue;
                }
                return Err(anyhow::Error::new(err).context(format!("export {:?}", e.name)));
            }
        }
        for e in &cfg.nvmf_exports {
            state
                .create_nvmf_export(&e.name, e.device_name(), e.read_only, &e.allow_hosts)
                .map_err(|err| {
                    anyhow::Error::new(err).context(format!("NVMe/TCP export {:?}", e.name))
                })?;
        }
        let l2 = engine.listener.try_clone()?;
        state.nbd.serve(l2, state.reactors.clone());
        if let Some(l) = &engine.nvmf_listener {
            state.nvmf.serve(l.try_clone()?, state.reactors.clone());
        }
        if let Some(addr) = cfg.grpc_listen {
            engine.grpc = Some(grpc::spawn(state.clone(), addr)?);
        }
        Ok(engine)
    }

    /// Shared state (for the management API and tests).
    pub fn state(&self) -> &Arc<EngineState> {
        &self.state
    }

    /// The management API's address, if running.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().map(|g| g.2)
    }

    /// Stops accepting, closes connections (waiting up to 5 s for them to finish), closes
    /// every nexus (drained, flushed, its last health record out to a connected watcher,
    /// whose acks are awaited for up to [`nexuses::FINAL_ACK_WAIT`]), stops the management
    /// API, commits every pool, flushes every device and stops the reactors. Returns the
    /// failures.
    pub fn shutdown(mut self) -> Vec<String> {
        self.state.nbd.stop();
        self.state.nvmf.stop();
        let deadline = Instant::now() + Duration::from_secs(5);
        while (self.state.nbd.connection_count() > 0 || self.state.nvmf.connection_count() > 0)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        // The management API still serves: the store gets the last records and acks them.
        let last = block_on(self.state.close_nexuses());
        let hub = &self.state.health;
        let until = Instant::now() + nexuses::FINAL_ACK_WAIT;
        while !last.iter().all(|(n, g)| hub.is_acked(n, *g))
            && hub.watchers() > 0
            && Instant::now() < until
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        hub.close();
        if let Some((tx, t, _)) = self.grpc.take() {
            let _ = tx.send(());
            let _ = t.join();
        }
        let (_, errors) = block_on(self.state.flush_all());
        if let Some(rt) = self.runtime.take() {
            rt.shutdown();
        }
        errors
    }
}

/// Runs a future to completion on the calling (non-reactor) thread: the runtime's
/// [`reactor::block_on`], re-exported for the engine's users.
pub use reactor::block_on;
