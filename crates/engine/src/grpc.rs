//! The management API: gRPC over tonic, on a control thread with its own small tokio runtime
//! (the data path never touches tokio).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;

use ballast_api::engine::v1 as pb;
use ballast_api::{EngineServer, EngineService};
use nexus::health::HealthRecord;
use tokio::sync::{broadcast, mpsc};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::health::{HealthHub, WatcherGuard};
use crate::{EngineState, MgmtError};

struct Service {
    state: Arc<EngineState>,
}

fn status(e: MgmtError) -> Status {
    match e {
        MgmtError::Invalid(m) => Status::invalid_argument(m),
        MgmtError::NotFound(m) => Status::not_found(m),
        MgmtError::Exists(m) => Status::already_exists(m),
        MgmtError::Busy(m) => Status::failed_precondition(m),
        MgmtError::NoSpace(m) => Status::resource_exhausted(m),
        MgmtError::Device(m) => Status::internal(m),
    }
}

fn device_pb(name: &str, e: &crate::DeviceEntry) -> pb::Device {
    use blockdev::BlockDevice;
    let g = e.device.geometry();
    let caps = e.device.capabilities();
    pb::Device {
        name: name.to_string(),
        uri: e.uri.clone(),
        kind: e.device.kind().to_string(),
        size_bytes: g.size(),
        block_size: g.block_size,
        read_only: caps.read_only,
        capabilities: caps.names().into_iter().map(String::from).collect(),
    }
}

fn pool_pb(p: crate::pools::PoolStatus) -> pb::Pool {
    pb::Pool {
        name: p.name,
        device: p.device,
        capacity_bytes: p.capacity,
        used_bytes: p.used,
        committed_bytes: p.committed,
        volumes: p.volumes,
        snapshots: p.snapshots,
        state: p.state.to_string(),
        reason: p.reason,
        cluster_size: p.cluster_size,
        devices: p.devices,
        labels: p.labels.into_iter().collect(),
    }
}

fn volume_pb(v: crate::pools::VolumeStatus) -> pb::Volume {
    pb::Volume {
        pool: v.pool,
        name: v.name,
        device: v.device,
        size_bytes: v.size,
        allocated_bytes: v.allocated,
        snapshot: v.snapshot,
        thin: v.thin,
        origin: v.origin.unwrap_or_default(),
    }
}

fn op(t: (u64, u64, u64)) -> Option<pb::OpStats> {
    Some(pb::OpStats {
        ops: t.0,
        bytes: t.1,
        errors: t.2,
    })
}

impl Service {
    /// NVMe/TCP exports in the shape of `Export`.
    fn nvmf_exports(&self) -> Vec<pb::Export> {
        self.state
            .nvmf_exports()
            .into_iter()
            .map(|(name, s)| {
                let ns = s.namespaces.iter().find(|n| n.nsid == 1);
                pb::Export {
                    name,
                    device: ns.map(|n| n.device.clone()).unwrap_or_default(),
                    read_only: ns.is_some_and(|n| n.read_only),
                    uri: self.state.nvmf_uri(&s.nqn),
                    connections: s.controllers.len() as u32,
                    protocol: "nvmf".into(),
                }
            })
            .collect()
    }

    fn subsystem_pb(&self, s: target_nvme::SubsystemInfo) -> pb::NvmfSubsystem {
        pb::NvmfSubsystem {
            uri: self.state.nvmf_uri(&s.nqn),
            nqn: s.nqn,
            allowed_hosts: s.allowed_hosts,
            namespaces: s
                .namespaces
                .into_iter()
                .map(|n| pb::NvmfNamespace {
                    nsid: n.nsid,
                    device: n.device,
                    read_only: n.read_only,
                    nguid: n.nguid,
                })
                .collect(),
            controllers: s
                .controllers
                .into_iter()
                .map(|c| pb::NvmfController {
                    cntlid: u32::from(c.cntlid),
                    hostnqn: c.hostnqn,
                    hostid: c.hostid,
                    queues: c.queues,
                })
                .collect(),
        }
    }
}

fn record_pb(r: HealthRecord) -> pb::NexusHealthRecord {
    pb::NexusHealthRecord {
        nexus: r.nexus,
        generation: r.generation,
        healthy: r.healthy,
        clean: r.clean,
    }
}

/// The `WatchNexusHealth` stream (the generated trait's `BoxStream`).
type RecordStream = tonic::codegen::BoxStream<pb::NexusHealthRecord>;

/// Feeds one `WatchNexusHealth` stream: the pending records, then each new one (a record
/// already sent for a nexus, or an older one, is skipped), until the watcher goes away or
/// the engine shuts down. A watcher that fell behind gets the pending records again.
async fn forward_health(
    hub: Arc<HealthHub>,
    pending: Vec<HealthRecord>,
    mut rx: broadcast::Receiver<HealthRecord>,
    guard: WatcherGuard,
    tx: mpsc::Sender<Result<pb::NexusHealthRecord, Status>>,
) {
    let _guard = guard;
    let mut sent: HashMap<String, u64> = HashMap::new();
    let mut queue: VecDeque<HealthRecord> = pending.into();
    loop {
        while let Some(r) = queue.pop_front() {
            if sent.get(&r.nexus).is_some_and(|&g| g >= r.generation) {
                continue;
            }
            sent.insert(r.nexus.clone(), r.generation);
            if tx.send(Ok(record_pb(r))).await.is_err() {
                return;
            }
        }
        // The next record, or the watcher hung up.
        let next = {
            let mut recv = std::pin::pin!(rx.recv());
            let mut gone = std::pin::pin!(tx.closed());
            std::future::poll_fn(|cx| {
                if gone.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                recv.as_mut().poll(cx).map(Some)
            })
            .await
        };
        match next {
            None | Some(Err(broadcast::error::RecvError::Closed)) => return,
            Some(Ok(r)) => queue.push_back(r),
            Some(Err(broadcast::error::RecvError::Lagged(_))) => queue.extend(hub.pending()),
        }
    }
}

#[tonic::async_trait]
impl EngineService for Service {
    async fn watch_nexus_health(
        &self,
        _: Request<pb::WatchNexusHealthRequest>,
    ) -> Result<Response<RecordStream>, Status> {
        let hub = self.state.health.clone();
        let (pending, rx, guard) = hub
            .subscribe()
            .ok_or_else(|| Status::unavailable("the engine is shutting down"))?;
        let (tx, out) = mpsc::channel(64);
        tokio::spawn(forward_health(hub, pending, rx, guard, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }

    async fn ack_nexus_health(
        &self,
        r: Request<pb::AckNexusHealthRequest>,
    ) -> Result<Response<pb::AckNexusHealthReply>, Status> {
        let r = r.into_inner();
        self.state
            .health
            .ack(&r.nexus, r.generation)
            .map_err(status)?;
        Ok(Response::new(pb::AckNexusHealthReply {}))
    }

    async fn create_nvmf_subsystem(
        &self,
        r: Request<pb::CreateNvmfSubsystemRequest>,
    ) -> Result<Response<pb::NvmfSubsystem>, Status> {
        let r = r.into_inner();
        let s = self
            .state
            .create_nvmf_subsystem(&r.nqn, &r.allowed_hosts)
            .map_err(status)?;
        Ok(Response::new(self.subsystem_pb(s)))
    }

    async fn destroy_nvmf_subsystem(
        &self,
        r: Request<pb::DestroyNvmfSubsystemRequest>,
    ) -> Result<Response<pb::DestroyNvmfSubsystemReply>, Status> {
        self.state
            .destroy_nvmf_subsystem(&r.into_inner().nqn)
            .map_err(status)?;
        Ok(Response::new(pb::DestroyNvmfSubsystemReply {}))
    }

    async fn add_nvmf_namespace(
        &self,
        r: Request<pb::AddNvmfNamespaceRequest>,
    ) -> Result<Response<pb::NvmfSubsystem>, Status> {
        let r = r.into_inner();
        let s = self
            .state
            .add_nvmf_namespace(
                &r.nqn,
                &r.device,
                (r.nsid != 0).then_some(r.nsid),
                r.read_only,
            )
            .map_err(status)?;
        Ok(Response::new(self.subsystem_pb(s)))
    }

    async fn remove_nvmf_namespace(
        &self,
        r: Request<pb::RemoveNvmfNamespaceRequest>,
    ) -> Result<Response<pb::NvmfSubsystem>, Status> {
        let r = r.into_inner();
        let s = self
            .state
            .remove_nvmf_namespace(&r.nqn, r.nsid)
            .map_err(status)?;
        Ok(Response::new(self.subsystem_pb(s)))
    }

    async fn allow_nvmf_host(
        &self,
        r: Request<pb::NvmfHostRequest>,
    ) -> Result<Response<pb::NvmfSubsystem>, Status> {
        let r = r.into_inner();
        let s = self
            .state
            .set_nvmf_host(&r.nqn, &r.host, true)
            .map_err(status)?;
        Ok(Response::new(self.subsystem_pb(s)))
    }

    async fn disallow_nvmf_host(
        &self,
        r: Request<pb::NvmfHostRequest>,
    ) -> Result<Response<pb::NvmfSubsystem>, Status> {
        let r = r.into_inner();
        let s = self
            .state
            .set_nvmf_host(&r.nqn, &r.host, false)
            .map_err(status)?;
        Ok(Response::new(self.subsystem_pb(s)))
    }

    async fn list_nvmf_subsystems(
        &self,
        _: Request<pb::ListNvmfSubsystemsRequest>,
    ) -> Result<Response<pb::ListNvmfSubsystemsReply>, Status> {
        let subsystems = self
            .state
            .nvmf()
            .subsystems()
            .into_iter()
            .map(|s| self.subsystem_pb(s))
            .collect();
        Ok(Response::new(pb::ListNvmfSubsystemsReply { subsystems }))
    }

    async fn get_info(
        &self,
        _: Request<pb::GetInfoRequest>,
    ) -> Result<Response<pb::EngineInfo>, Status> {
        Ok(Response::new(pb::EngineInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            cores: self.state.cores as u32,
            poll_mode: self.state.mode.to_string(),
            nbd_address: self.state.nbd_addr.to_string(),
            uptime_ms: self.state.started.elapsed().as_millis() as u64,
            nvmf_address: self
                .state
                .nvmf_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
        }))
    }

    async fn create_device(
        &self,
        r: Request<pb::CreateDeviceRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        let r = r.into_inner();
        let e = self.state.create_device(&r.name, &r.uri).map_err(status)?;
        Ok(Response::new(device_pb(&r.name, &e)))
    }

    async fn destroy_device(
        &self,
        r: Request<pb::DestroyDeviceRequest>,
    ) -> Result<Response<pb::DestroyDeviceReply>, Status> {
        self.state
            .destroy_device(&r.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DestroyDeviceReply {}))
    }

    async fn list_devices(
        &self,
        _: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesReply>, Status> {
        let devices = self
            .state
            .devices()
            .iter()
            .map(|(n, e)| device_pb(n, e))
            .collect();
        Ok(Response::new(pb::ListDevicesReply { devices }))
    }

    async fn create_export(
        &self,
        r: Request<pb::CreateExportRequest>,
    ) -> Result<Response<pb::Export>, Status> {
        let r = r.into_inner();
        match r.protocol.as_str() {
            "" | "nbd" => {
                if !r.allowed_hosts.is_empty() {
                    return Err(Status::invalid_argument(
                        "allowed hosts apply to NVMe/TCP exports only",
                    ));
                }
            }
            "nvmf" => {
                self.state
                    .create_nvmf_export(&r.name, &r.device, r.read_only, &r.allowed_hosts)
                    .map_err(status)?;
                let e = self
                    .nvmf_exports()
                    .into_iter()
                    .find(|e| e.name == r.name)
                    .ok_or_else(|| Status::internal("export vanished"))?;
                return Ok(Response::new(e));
            }
            p => {
                return Err(Status::invalid_argument(format!(
                    "unknown protocol {p:?}: nbd or nvmf"
                )));
            }
        }
        self.state
            .create_export(&r.name, &r.device, r.read_only)
            .map_err(status)?;
        let info = self.state.exports().into_iter().find(|e| e.name == r.name);
        let read_only = info.map(|i| i.read_only).unwrap_or(r.read_only);
        Ok(Response::new(pb::Export {
            uri: self.state.export_uri(&r.name),
            name: r.name,
            device: r.device,
            read_only,
            connections: 0,
            protocol: "nbd".into(),
        }))
    }

    async fn destroy_export(
        &self,
        r: Request<pb::DestroyExportRequest>,
    ) -> Result<Response<pb::DestroyExportReply>, Status> {
        self.state
            .destroy_export(&r.into_inner().name)
            .map_err(status)?;
        Ok(Response::new(pb::DestroyExportReply {}))
    }

    async fn list_exports(
        &self,
        _: Request<pb::ListExportsRequest>,
    ) -> Result<Response<pb::ListExportsReply>, Status> {
        let mut exports: Vec<pb::Export> = self
            .state
            .exports()
            .into_iter()
            .map(|e| pb::Export {
                uri: self.state.export_uri(&e.name),
                name: e.name,
                device: e.device,
                read_only: e.read_only,
                connections: e.connections,
                protocol: "nbd".into(),
            })
            .collect();
        exports.extend(self.nvmf_exports());
        exports.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(pb::ListExportsReply { exports }))
    }

    async fn get_stats(
        &self,
        r: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsReply>, Status> {
        let want = r.into_inner().device;
        let devs = self.state.devices();
        if !want.is_empty() && !devs.iter().any(|(n, _)| *n == want) {
            return Err(Status::not_found(format!("device {want:?} not found")));
        }
        let devices = devs
            .iter()
            .filter(|(n, _)| want.is_empty() || *n == want)
            .map(|(n, e)| {
                let s = e.device.snapshot();
                pb::DeviceStats {
                    device: n.clone(),
                    read: op(s.read),
                    write: op(s.write),
                    flush: op(s.flush),
                    unmap: op(s.unmap),
                    write_zeroes: op(s.write_zeroes),
                    errors: s.errors(),
                    latency: s
                        .latency
                        .iter()
                        .map(|&(le_ns, count)| pb::LatencyBucket { le_ns, count })
                        .collect(),
                    latency_mean_ns: s.mean_ns,
                    latency_p50_ns: s.p50_ns,
                    latency_p99_ns: s.p99_ns,
                }
            })
            .collect();
        Ok(Response::new(pb::GetStatsReply { devices }))
    }

    async fn create_pool(
        &self,
        r: Request<pb::CreatePoolRequest>,
    ) -> Result<Response<pb::Pool>, Status> {
        let r = r.into_inner();
        let devices: Vec<String> = (!r.device.is_empty())
            .then_some(r.device)
            .into_iter()
            .chain(r.devices)
            .collect();
        let p = self
            .state
            .create_pool(&r.name, &devices, r.cluster_size, r.force)
            .await
            .map_err(status)?;
        Ok(Response::new(pool_pb(p)))
    }

    async fn grow_pool(
        &self,
        r: Request<pb::GrowPoolRequest>,
    ) -> Result<Response<pb::GrowPoolReply>, Status> {
        let r = r.into_inner();
        let (p, old) = self
            .state
            .grow_pool(&r.name, &r.add_devices)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GrowPoolReply {
            pool: Some(pool_pb(p)),
            old_capacity_bytes: old,
        }))
    }

    async fn set_pool_labels(
        &self,
        r: Request<pb::SetPoolLabelsRequest>,
    ) -> Result<Response<pb::Pool>, Status> {
        let r = r.into_inner();
        let set: Vec<(String, String)> = r.set.into_iter().collect();
        let p = self
            .state
            .set_pool_labels(&r.name, &set, &r.remove)
            .await
            .map_err(status)?;
        Ok(Response::new(pool_pb(p)))
    }

    async fn import_pool(
        &self,
        r: Request<pb::ImportPoolRequest>,
    ) -> Result<Response<pb::Pool>, Status> {
        let p = self
            .state
            .import_pool(&r.into_inner().device)
            .await
            .map_err(status)?;
        Ok(Response::new(pool_pb(p)))
    }

    async fn close_pool(
        &self,
        r: Request<pb::ClosePoolRequest>,
    ) -> Result<Response<pb::ClosePoolReply>, Status> {
        self.state
            .close_pool(&r.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ClosePoolReply {}))
    }

    async fn destroy_pool(
        &self,
        r: Request<pb::DestroyPoolRequest>,
    ) -> Result<Response<pb::DestroyPoolReply>, Status> {
        self.state
            .destroy_pool(&r.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DestroyPoolReply {}))
    }

    async fn list_pools(
        &self,
        _: Request<pb::ListPoolsRequest>,
    ) -> Result<Response<pb::ListPoolsReply>, Status> {
        let pools = self.state.list_pools().into_iter().map(pool_pb).collect();
        Ok(Response::new(pb::ListPoolsReply { pools }))
    }

    async fn check_pool(
        &self,
        r: Request<pb::CheckPoolRequest>,
    ) -> Result<Response<pb::CheckPoolReply>, Status> {
        let problems = self
            .state
            .check_pool(&r.into_inner().name)
            .map_err(status)?;
        Ok(Response::new(pb::CheckPoolReply { problems }))
    }

    async fn create_volume(
        &self,
        r: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let r = r.into_inner();
        let v = self
            .state
            .create_volume(&r.pool, &r.name, r.size_bytes, r.thin)
            .await
            .map_err(status)?;
        Ok(Response::new(volume_pb(v)))
    }

    async fn destroy_volume(
        &self,
        r: Request<pb::DestroyVolumeRequest>,
    ) -> Result<Response<pb::DestroyVolumeReply>, Status> {
        let r = r.into_inner();
        self.state
            .destroy_volume(&r.pool, &r.name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DestroyVolumeReply {}))
    }

    async fn resize_volume(
        &self,
        r: Request<pb::ResizeVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let r = r.into_inner();
        let v = self
            .state
            .resize_volume(&r.pool, &r.name, r.size_bytes, r.force)
            .await
            .map_err(status)?;
        Ok(Response::new(volume_pb(v)))
    }

    async fn snapshot_volume(
        &self,
        r: Request<pb::SnapshotVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let r = r.into_inner();
        let v = self
            .state
            .snapshot_volume(&r.pool, &r.volume, &r.snapshot)
            .await
            .map_err(status)?;
        Ok(Response::new(volume_pb(v)))
    }

    async fn clone_snapshot(
        &self,
        r: Request<pb::CloneSnapshotRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let r = r.into_inner();
        let v = self
            .state
            .clone_snapshot(&r.pool, &r.snapshot, &r.clone)
            .await
            .map_err(status)?;
        Ok(Response::new(volume_pb(v)))
    }

    async fn revert_volume(
        &self,
        r: Request<pb::RevertVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let r = r.into_inner();
        let v = self
            .state
            .revert_volume(&r.pool, &r.volume, &r.snapshot)
            .await
            .map_err(status)?;
        Ok(Response::new(volume_pb(v)))
    }

    async fn list_volumes(
        &self,
        r: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesReply>, Status> {
        let pool = r.into_inner().pool;
        let volumes = self
            .state
            .list_volumes((!pool.is_empty()).then_some(pool.as_str()))
            .map_err(status)?
            .into_iter()
            .map(volume_pb)
            .collect();
        Ok(Response::new(pb::ListVolumesReply { volumes }))
    }

    async fn create_nexus(
        &self,
        r: Request<pb::CreateNexusRequest>,
    ) -> Result<Response<pb::Nexus>, Status> {
        let r = r.into_inner();
        let log = (!r.log_device.is_empty()).then_some(r.log_device.as_str());
        let n = self
            .state
            .create_nexus(
                &r.name,
                r.size_bytes,
                &r.children,
                &r.out_of_sync,
                log,
                crate::nexuses::CreateOptions {
                    epoch: (r.epoch != 0).then_some(r.epoch),
                    persist_health: r.persist_health,
                    unclean: r.unclean,
                    previous_generation: r.health_generation,
                    rebuild_rate: (r.rebuild_rate_bytes != 0).then_some(r.rebuild_rate_bytes),
                },
            )
            .await
            .map_err(status)?;
        Ok(Response::new(nexus_pb(n)))
    }

    async fn destroy_nexus(
        &self,
        r: Request<pb::DestroyNexusRequest>,
    ) -> Result<Response<pb::DestroyNexusReply>, Status> {
        self.state
            .destroy_nexus(&r.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DestroyNexusReply {}))
    }

    async fn list_nexuses(
        &self,
        _: Request<pb::ListNexusesRequest>,
    ) -> Result<Response<pb::ListNexusesReply>, Status> {
        let nexuses = self
            .state
            .list_nexuses()
            .into_iter()
            .map(nexus_pb)
            .collect();
        Ok(Response::new(pb::ListNexusesReply { nexuses }))
    }

    async fn add_nexus_child(
        &self,
        r: Request<pb::NexusChildRequest>,
    ) -> Result<Response<pb::Nexus>, Status> {
        let r = r.into_inner();
        let n = self
            .state
            .add_nexus_child(&r.nexus, &r.child)
            .await
            .map_err(status)?;
        Ok(Response::new(nexus_pb(n)))
    }

    async fn remove_nexus_child(
        &self,
        r: Request<pb::NexusChildRequest>,
    ) -> Result<Response<pb::Nexus>, Status> {
        let r = r.into_inner();
        let n = self
            .state
            .remove_nexus_child(&r.nexus, &r.child)
            .await
            .map_err(status)?;
        Ok(Response::new(nexus_pb(n)))
    }

    async fn fault_nexus_child(
        &self,
        r: Request<pb::NexusChildRequest>,
    ) -> Result<Response<pb::Nexus>, Status> {
        let r = r.into_inner();
        let reason = if r.reason.is_empty() {
            "faulted by request"
        } else {
            r.reason.as_str()
        };
        let n = self
            .state
            .fault_nexus_child(&r.nexus, &r.child, reason)
            .await
            .map_err(status)?;
        Ok(Response::new(nexus_pb(n)))
    }

    async fn rebuild_nexus_child(
        &self,
        r: Request<pb::NexusChildRequest>,
    ) -> Result<Response<pb::Nexus>, Status> {
        let r = r.into_inner();
        let n = self
            .state
            .rebuild_nexus_child(&r.nexus, &r.child)
            .await
            .map_err(status)?;
        Ok(Response::new(nexus_pb(n)))
    }
}

fn nexus_pb(n: crate::nexuses::NexusStatus) -> pb::Nexus {
    pb::Nexus {
        name: n.name,
        size_bytes: n.size,
        state: n.state.to_string(),
        children: n
            .children
            .into_iter()
            .map(|c| pb::NexusChild {
                name: c.name,
                state: c.state.to_string(),
                reason: c.reason,
                rebuild_done_bytes: c.rebuild_done,
                rebuild_total_bytes: c.rebuild_total,
                partial: c.partial,
            })
            .collect(),
        log_device: n.log_device,
        dirty_regions: n.dirty_regions,
        region_size_bytes: n.region_size,
        healthy: n.healthy,
        persist_health: n.persist_health,
        health_generation: n.health_generation,
        health_acked: n.health_acked,
    }
}

/// Starts the API on `addr` in a control thread; returns its stop switch, thread and address.
pub(crate) fn spawn(
    state: Arc<EngineState>,
    addr: SocketAddr,
) -> anyhow::Result<(
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
    SocketAddr,
)> {
    let std_listener = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("binding management API on {addr}: {e}"))?;
    std_listener.set_nonblocking(true)?;
    let bound = std_listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let t = std::thread::Builder::new()
        .name("grpc".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                let svc = EngineServer::new(Service { state });
                let r = tonic::transport::Server::builder()
                    .serve_with_incoming_shutdown(svc, incoming, async {
                        let _ = rx.await;
                    })
                    .await;
                if let Err(e) = r {
                    eprintln!("ballast-engine: management API failed: {e}");
                }
            });
        })?;
    Ok((tx, t, bound))
}
