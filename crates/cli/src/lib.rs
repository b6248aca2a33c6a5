//! `ballast`, the operator CLI of the Ballast engine: argument parsing,
//! the gRPC calls, and output formatting. `main.rs` only wires these up.

#![forbid(unsafe_code)]

pub mod args;
pub mod health;
pub mod json;
pub mod table;

use std::error::Error as _;
use std::fmt;
use std::time::Duration;

use ballast_api::{
    CheckPoolRequest, CloneSnapshotRequest, ClosePoolRequest, CreateDeviceRequest,
    CreateExportRequest, CreatePoolRequest, CreateVolumeRequest, DestroyDeviceRequest,
    DestroyExportRequest, DestroyPoolRequest, DestroyVolumeRequest, EngineClient, GetInfoRequest,
    GetStatsRequest, GrowPoolRequest, ImportPoolRequest, ListDevicesRequest, ListExportsRequest,
    ListPoolsRequest, ListVolumesRequest, ResizeVolumeRequest, RevertVolumeRequest,
    SetPoolLabelsRequest, SnapshotVolumeRequest,
};
use tonic::transport::{Channel, Endpoint};

pub use args::{
    Cli, Command, DeviceCommand, EngineCommand, ExportCommand, NexusCommand, NvmfCommand,
    OutputFormat, PoolCommand, Protocol, VolumeCommand,
};

/// How long to wait for the TCP connection to the engine.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for any one call.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a command failed. `Display` is the message printed after `error: `.
#[derive(Debug)]
pub enum CliError {
    /// The `--engine` URL is not a valid URI.
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The engine could not be reached (connection refused, timeout, ...).
    Unreachable {
        /// The engine URL.
        url: String,
        /// Root cause, e.g. "Connection refused (os error 111)".
        reason: String,
    },
    /// The engine answered with an error status.
    Status(tonic::Status),
    /// The command ran but its verdict is a failure (a pool check that found problems, an
    /// offline check's exit status): print `stdout` and `stderr` as they are and exit with
    /// `code`.
    Exit {
        /// What to print on stdout.
        stdout: String,
        /// What to print on stderr.
        stderr: String,
        /// Exit status.
        code: u8,
    },
    /// A command failed before or without asking the engine (bad arguments, a file that
    /// cannot be read or written).
    Local(String),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidUrl { url, reason } => write!(f, "invalid engine URL {url:?}: {reason}"),
            Self::Unreachable { url, reason } => {
                write!(f, "cannot reach engine at {url}: {reason}")
            }
            Self::Status(s) if s.message().is_empty() => write!(f, "{}", s.code().description()),
            Self::Status(s) => f.write_str(s.message()),
            Self::Exit { stderr, code, .. } if stderr.is_empty() => {
                write!(f, "exit status {code}")
            }
            Self::Exit { stderr, .. } => f.write_str(stderr.trim_end()),
            Self::Local(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for CliError {}

/// The innermost cause of an error, as text ("Connection refused (os error
/// 111)" rather than "transport error").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The engine URL with `http://` added when no scheme is given.
pub fn normalize_url(url: &str) -> String {
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

/// A client connected to the engine at `url`.
pub async fn connect(url: &str) -> Result<EngineClient<Channel>, CliError> {
    let url = normalize_url(url);
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| CliError::InvalidUrl {
            url: url.clone(),
            reason: root_cause(&e),
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| CliError::Unreachable {
            url: url.clone(),
            reason: root_cause(&e),
        })?;
    Ok(EngineClient::new(channel))
}

/// Maps a failed call to a `CliError`: statuses made up by the client from a
/// transport failure (they carry a source error) mean the engine is gone.
fn call_error(url: &str, status: tonic::Status) -> CliError {
    match status.source() {
        Some(src) if status.code() == tonic::Code::Unavailable => CliError::Unreachable {
            url: normalize_url(url),
            reason: root_cause(src),
        },
        _ => CliError::Status(status),
    }
}

/// `ballast pool check --offline URI`: checks the pool on the device(s) in this process
/// (`pool::check`, read-only, on a private reactor) and prints its report; the exit status
/// says the verdict (0 clean, 1 problems, 2 damaged).
pub fn offline_check(uri: &str) -> Result<String, CliError> {
    let report = pool::check::check_offline(uri);
    let (stdout, stderr) = report.render();
    match report.verdict().exit_status() {
        0 => {
            // Warnings (if any) still reach the operator.
            eprint!("{stderr}");
            Ok(stdout)
        }
        code => Err(CliError::Exit {
            stdout,
            stderr,
            code,
        }),
    }
}

/// `ballast nvmf ...`.
async fn nvmf(
    client: &mut EngineClient<Channel>,
    cmd: &NvmfCommand,
    json: bool,
    url: &str,
) -> Result<String, CliError> {
    use ballast_api::{
        AddNvmfNamespaceRequest, CreateNvmfSubsystemRequest, DestroyNvmfSubsystemRequest,
        ListNvmfSubsystemsRequest, NvmfHostRequest, RemoveNvmfNamespaceRequest,
    };
    let err = |s| call_error(url, s);
    let one = |s: ballast_api::NvmfSubsystem| {
        if json {
            json::subsystem(&s)
        } else {
            table::subsystems(std::slice::from_ref(&s))
        }
    };
    Ok(match cmd {
        NvmfCommand::CreateSubsystem { nqn, allow_hosts } => {
            let req = CreateNvmfSubsystemRequest {
                nqn: nqn.clone(),
                allowed_hosts: allow_hosts.clone(),
            };
            one(client
                .create_nvmf_subsystem(req)
                .await
                .map_err(err)?
                .into_inner())
        }
        NvmfCommand::DestroySubsystem { nqn } => {
            let req = DestroyNvmfSubsystemRequest { nqn: nqn.clone() };
            client.destroy_nvmf_subsystem(req).await.map_err(err)?;
            if json {
                "{}".to_owned()
            } else {
                format!("destroyed subsystem {nqn:?}\n")
            }
        }
        NvmfCommand::AddNs {
            nqn,
            device,
            nsid,
            read_only,
        } => {
            let req = AddNvmfNamespaceRequest {
                nqn: nqn.clone(),
                device: device.clone(),
                nsid: nsid.unwrap_or(0),
                read_only: *read_only,
            };
            one(client
                .add_nvmf_namespace(req)
                .await
                .map_err(err)?
                .into_inner())
        }
        NvmfCommand::RemoveNs { nqn, nsid } => {
            let req = RemoveNvmfNamespaceRequest {
                nqn: nqn.clone(),
                nsid: *nsid,
            };
            one(client
                .remove_nvmf_namespace(req)
                .await
                .map_err(err)?
                .into_inner())
        }
        NvmfCommand::AllowHost { nqn, host } => {
            let req = NvmfHostRequest {
                nqn: nqn.clone(),
                host: host.clone(),
            };
            one(client.allow_nvmf_host(req).await.map_err(err)?.into_inner())
        }
        NvmfCommand::DisallowHost { nqn, host } => {
            let req = NvmfHostRequest {
                nqn: nqn.clone(),
                host: host.clone(),
            };
            one(client
                .disallow_nvmf_host(req)
                .await
                .map_err(err)?
                .into_inner())
        }
        NvmfCommand::List => {
            let list = client
                .list_nvmf_subsystems(ListNvmfSubsystemsRequest {})
                .await
                .map_err(err)?
                .into_inner()
                .subsystems;
            if json {
                json::subsystems(&list)
            } else {
                table::subsystems(&list)
            }
        }
    })
}

/// Runs one parsed command line and returns what to print on stdout.
pub async fn run(cli: &Cli) -> Result<String, CliError> {
    if let Command::Pool(PoolCommand::Check {
        offline: Some(uri), ..
    }) = &cli.command
    {
        return offline_check(uri);
    }
    if let Command::Nexus(NexusCommand::HealthStore { file }) = &cli.command {
        return health::run_store(&cli.engine, file).await;
    }
    // `nexus create --from-health FILE`: the stored record, read before anything is asked.
    let stored = match &cli.command {
        Command::Nexus(NexusCommand::Create {
            name,
            from_health: Some(file),
            ..
        }) => Some(health::record(file, name)?),
        _ => None,
    };
    let mut client = connect(&cli.engine).await?;
    let url = &cli.engine;
    let err = |s| call_error(url, s);
    let json = cli.output == OutputFormat::Json;
    let out = match &cli.command {
        Command::Engine(EngineCommand::Info) => {
            let info = client
                .get_info(GetInfoRequest {})
                .await
                .map_err(err)?
                .into_inner();
            if json {
                json::info(&info)
            } else {
                table::info(&info)
            }
        }
        Command::Device(cmd) => device_command(&mut client, cmd, json, url).await?,
        Command::Export(cmd) => export_command(&mut client, cmd, json, url).await?,
        Command::Nvmf(cmd) => return nvmf(&mut client, cmd, json, &cli.engine).await,
        Command::Pool(cmd) => pool_command(&mut client, cmd, json, url).await?,
        Command::Volume(cmd) => volume_command(&mut client, cmd, json, url).await?,
        Command::Nexus(cmd) => nexus_command(&mut client, cmd, json, stored.as_ref())
            .await
            .map_err(err)?,
        Command::Stats(args) => {
            let req = GetStatsRequest {
                device: args.device.clone().unwrap_or_default(),
            };
            let list = client
                .get_stats(req)
                .await
                .map_err(err)?
                .into_inner()
                .devices;
            if json {
                json::stats(&list)
            } else {
                table::stats(&list)
            }
        }
    };
    Ok(if out.ends_with('\n') { out } else { out + "\n" })
}

/// `ballast device ...`.
async fn device_command(
    client: &mut EngineClient<Channel>,
    cmd: &DeviceCommand,
    json: bool,
    url: &str,
) -> Result<String, CliError> {
    let err = |s| call_error(url, s);
    Ok(match cmd {
        DeviceCommand::Create { name, uri } => {
            let req = CreateDeviceRequest {
                name: name.clone(),
                uri: uri.clone(),
            };
            let dev = client.create_device(req).await.map_err(err)?.into_inner();
            if json {
                json::device(&dev)
            } else {
                table::devices(std::slice::from_ref(&dev))
            }
        }
        DeviceCommand::Destroy { name } => {
            let req = DestroyDeviceRequest { name: name.clone() };
            client.destroy_device(req).await.map_err(err)?;
            if json {
                "{}".to_owned()
            } else {
                format!("destroyed device {name:?}\n")
            }
        }
        DeviceCommand::List => {
            let list = client
                .list_devices(ListDevicesRequest {})
                .await
                .map_err(err)?
                .into_inner()
                .devices;
            if json {
                json::devices(&list)
            } else {
                table::devices(&list)
            }
        }
    })
}

/// `ballast export ...`.
async fn export_command(
    client: &mut EngineClient<Channel>,
    cmd: &ExportCommand,
    json: bool,
    url: &str,
) -> Result<String, CliError> {
    let err = |s| call_error(url, s);
    Ok(match cmd {
        ExportCommand::Create {
            name,
            device,
            read_only,
            protocol,
            allow_hosts,
        } => {
            let req = CreateExportRequest {
                name: name.clone(),
                device: device.clone(),
                read_only: *read_only,
                protocol: match protocol {
                    Protocol::Nbd => "nbd".into(),
                    Protocol::Nvmf => "nvmf".into(),
                },
                allowed_hosts: allow_hosts.clone(),
            };
            let exp = client.create_export(req).await.map_err(err)?.into_inner();
            if json {
                json::export(&exp)
            } else {
                table::exports(std::slice::from_ref(&exp))
            }
        }
        ExportCommand::Destroy { name } => {
            let req = DestroyExportRequest { name: name.clone() };
            client.destroy_export(req).await.map_err(err)?;
            if json {
                "{}".to_owned()
            } else {
                format!("destroyed export {name:?}\n")
            }
        }
        ExportCommand::List => {
            let list = client
                .list_exports(ListExportsRequest {})
                .await
                .map_err(err)?
                .into_inner()
                .exports;
            if json {
                json::exports(&list)
            } else {
                table::exports(&list)
            }
        }
    })
}

/// `ballast pool ...` (all but `check --offline`, which needs no engine).
async fn pool_command(
    client: &mut EngineClient<Channel>,
    cmd: &PoolCommand,
    json: bool,
    url: &str,
) -> Result<String, CliError> {
    let err = |s| call_error(url, s);
    Ok(match cmd {
        PoolCommand::Create {
            name,
            devices,
            cluster_size,
            force,
        } => {
            let cluster_size = match cluster_size {
                None => 0,
                Some(c) => u32::try_from(*c).map_err(|_| {
                    CliError::Local(format!("cluster size {c} is too large (at most 4MiB)"))
                })?,
            };
            let req = CreatePoolRequest {
                name: name.clone(),
                device: devices[0].clone(),
                cluster_size,
                devices: devices[1..].to_vec(),
                force: *force,
            };
            let p = client.create_pool(req).await.map_err(err)?.into_inner();
            if json {
                json::pool(&p)
            } else {
                table::pools(std::slice::from_ref(&p))
            }
        }
        PoolCommand::Grow { name, add } => {
            let req = GrowPoolRequest {
                name: name.clone(),
                add_devices: add.clone(),
            };
            let r = client.grow_pool(req).await.map_err(err)?.into_inner();
            let p = r.pool.unwrap_or_default();
            if json {
                json::pool(&p)
            } else {
                format!(
                    "pool {name:?} grew from {} to {}\n{}",
                    table::human_bytes(r.old_capacity_bytes),
                    table::human_bytes(p.capacity_bytes),
                    table::pools(std::slice::from_ref(&p))
                )
            }
        }
        PoolCommand::Label { name, labels } => {
            let req = labels_request(name, labels)?;
            let p = client.set_pool_labels(req).await.map_err(err)?.into_inner();
            if json {
                json::pool(&p)
            } else {
                table::pools(std::slice::from_ref(&p))
            }
        }
        PoolCommand::Import { device } => {
            let req = ImportPoolRequest {
                device: device.clone(),
            };
            let p = client.import_pool(req).await.map_err(err)?.into_inner();
            if json {
                json::pool(&p)
            } else {
                table::pools(std::slice::from_ref(&p))
            }
        }
        PoolCommand::Close { name } => {
            let req = ClosePoolRequest { name: name.clone() };
            client.close_pool(req).await.map_err(err)?;
            if json {
                "{}".to_owned()
            } else {
                format!("closed pool {name:?}\n")
            }
        }
        PoolCommand::Destroy { name } => {
            let req = DestroyPoolRequest { name: name.clone() };
            client.destroy_pool(req).await.map_err(err)?;
            if json {
                "{}".to_owned()
            } else {
                format!("destroyed pool {name:?}\n")
            }
        }
        PoolCommand::List => {
            let list = client
                .list_pools(ListPoolsRequest {})
                .await
                .map_err(err)?
                .into_inner()
                .pools;
            if json {
                json::pools(&list)
            } else {
                table::pools(&list)
            }
        }
        PoolCommand::Check { name, .. } => {
            let name = name.clone().unwrap_or_default();
            let req = CheckPoolRequest { name: name.clone() };
            let problems = client
                .check_pool(req)
                .await
                .map_err(err)?
                .into_inner()
                .problems;
            check_verdict(&name, &problems, json)?
        }
    })
}

/// `ballast pool label NAME KEY=VALUE... KEY-...` as a request.
fn labels_request(name: &str, labels: &[String]) -> Result<SetPoolLabelsRequest, CliError> {
    let mut req = SetPoolLabelsRequest {
        name: name.to_string(),
        ..Default::default()
    };
    for l in labels {
        if let Some((k, v)) = l.split_once('=') {
            req.set.insert(k.to_string(), v.to_string());
        } else if let Some(k) = l.strip_suffix('-') {
            req.remove.push(k.to_string());
        } else {
            return Err(CliError::Local(format!(
                "label {l:?}: write KEY=VALUE to set it or KEY- to remove it"
            )));
        }
    }
    Ok(req)
}

/// What `ballast pool check NAME` prints: the report, and exit status 1 when the engine
/// found problems.
fn check_verdict(name: &str, problems: &[String], json: bool) -> Result<String, CliError> {
    let out = if json {
        json::check(name, problems) + "\n"
    } else {
        table::check(name, problems)
    };
    if problems.is_empty() {
        return Ok(out);
    }
    Err(CliError::Exit {
        stdout: out,
        stderr: format!(
            "error: pool {name:?}: {} problem(s) found\n",
            problems.len()
        ),
        code: 1,
    })
}

/// `ballast volume ...`.
async fn volume_command(
    client: &mut EngineClient<Channel>,
    cmd: &VolumeCommand,
    json: bool,
    url: &str,
) -> Result<String, CliError> {
    let err = |s| call_error(url, s);
    Ok(match cmd {
        VolumeCommand::Create {
            pool,
            name,
            size,
            thick,
        } => {
            let req = CreateVolumeRequest {
                pool: pool.clone(),
                name: name.clone(),
                size_bytes: *size,
                thin: !thick,
            };
            let v = client.create_volume(req).await.map_err(err)?.into_inner();
            volume_out(json, &v)
        }
        VolumeCommand::Destroy { pool, name } => {
            let req = DestroyVolumeRequest {
                pool: pool.clone(),
                name: name.clone(),
            };
            client.destroy_volume(req).await.map_err(err)?;
            if json {
                "{}".to_owned()
            } else {
                format!("destroyed {name:?} of pool {pool:?}\n")
            }
        }
        VolumeCommand::Resize {
            pool,
            name,
            size,
            force,
        } => {
            let req = ResizeVolumeRequest {
                pool: pool.clone(),
                name: name.clone(),
                size_bytes: *size,
                force: *force,
            };
            let v = client.resize_volume(req).await.map_err(err)?.into_inner();
            volume_out(json, &v)
        }
        VolumeCommand::Snapshot {
            pool,
            volume,
            snapshot,
        } => {
            let req = SnapshotVolumeRequest {
                pool: pool.clone(),
                volume: volume.clone(),
                snapshot: snapshot.clone(),
            };
            let v = client.snapshot_volume(req).await.map_err(err)?.into_inner();
            volume_out(json, &v)
        }
        VolumeCommand::Clone {
            pool,
            snapshot,
            clone,
        } => {
            let req = CloneSnapshotRequest {
                pool: pool.clone(),
                snapshot: snapshot.clone(),
                clone: clone.clone(),
            };
            let v = client.clone_snapshot(req).await.map_err(err)?.into_inner();
            volume_out(json, &v)
        }
        VolumeCommand::Revert {
            pool,
            volume,
            snapshot,
        } => {
            let req = RevertVolumeRequest {
                pool: pool.clone(),
                volume: volume.clone(),
                snapshot: snapshot.clone(),
            };
            let v = client.revert_volume(req).await.map_err(err)?.into_inner();
            volume_out(json, &v)
        }
        VolumeCommand::List { pool } => {
            let req = ListVolumesRequest {
                pool: pool.clone().unwrap_or_default(),
            };
            let list = client
                .list_volumes(req)
                .await
                .map_err(err)?
                .into_inner()
                .volumes;
            if json {
                json::volumes(&list)
            } else {
                table::volumes(&list)
            }
        }
    })
}

async fn nexus_command(
    client: &mut EngineClient<Channel>,
    cmd: &NexusCommand,
    json: bool,
    stored: Option<&health::Stored>,
) -> Result<String, tonic::Status> {
    use ballast_api::{
        CreateNexusRequest, DestroyNexusRequest, ListNexusesRequest, NexusChildRequest,
    };
    let one = |n: ballast_api::Nexus| {
        if json {
            json::nexus(&n)
        } else {
            table::nexuses(std::slice::from_ref(&n))
        }
    };
    let child = |name: &str, child: &str, reason: &str| NexusChildRequest {
        nexus: name.to_string(),
        child: child.to_string(),
        reason: reason.to_string(),
    };
    Ok(match cmd {
        NexusCommand::Create {
            name,
            size,
            children,
            out_of_sync,
            log,
            epoch,
            persist_health,
            unclean,
            health_generation,
            from_health: _,
            rebuild_rate,
        } => {
            let mut req = CreateNexusRequest {
                name: name.clone(),
                size_bytes: *size,
                children: children.clone(),
                out_of_sync: out_of_sync.clone(),
                log_device: log.clone().unwrap_or_default(),
                epoch: *epoch,
                persist_health: *persist_health,
                unclean: *unclean,
                health_generation: *health_generation,
                rebuild_rate_bytes: rebuild_rate.unwrap_or(0),
            };
            // From the stored record: only its healthy children are in sync.
            if let Some(r) = stored {
                for c in children {
                    if !r.healthy.contains(c) && !req.out_of_sync.contains(c) {
                        req.out_of_sync.push(c.clone());
                    }
                }
                req.unclean |= !r.clean;
                req.health_generation = req.health_generation.max(r.generation);
                req.persist_health = true;
            }
            one(client.create_nexus(req).await?.into_inner())
        }
        NexusCommand::Destroy { name } => {
            let req = DestroyNexusRequest { name: name.clone() };
            client.destroy_nexus(req).await?;
            if json {
                "{}".to_owned()
            } else {
                format!("destroyed nexus {name:?}\n")
            }
        }
        NexusCommand::List { watch } => loop {
            let list = client
                .list_nexuses(ListNexusesRequest {})
                .await?
                .into_inner()
                .nexuses;
            let text = if json {
                json::nexuses(&list)
            } else {
                table::nexuses(&list)
            };
            let rebuilding = list
                .iter()
                .flat_map(|n| &n.children)
                .any(|c| c.state == "rebuilding");
            if !*watch || !rebuilding {
                break text;
            }
            use std::io::{IsTerminal, Write};
            let mut out = std::io::stdout();
            if out.is_terminal() {
                // Clear the screen and redraw in place.
                let _ = write!(out, "\x1b[H\x1b[2J{text}");
            } else {
                let _ = writeln!(out, "{text}");
            }
            let _ = out.flush();
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        },
        NexusCommand::AddChild { name, child: c } => one(client
            .add_nexus_child(child(name, c, ""))
            .await?
            .into_inner()),
        NexusCommand::RemoveChild { name, child: c } => one(client
            .remove_nexus_child(child(name, c, ""))
            .await?
            .into_inner()),
        NexusCommand::FaultChild {
            name,
            child: c,
            reason,
        } => one(client
            .fault_nexus_child(child(name, c, reason))
            .await?
            .into_inner()),
        NexusCommand::Rebuild { name, child: c } => one(client
            .rebuild_nexus_child(child(name, c, ""))
            .await?
            .into_inner()),
        // Handled before connecting (it keeps reconnecting).
        NexusCommand::HealthStore { .. } => unreachable!("health-store runs on its own"),
    })
}

fn volume_out(json: bool, v: &ballast_api::Volume) -> String {
    if json {
        json::volume(v)
    } else {
        table::volumes(std::slice::from_ref(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_messages_print_plainly() {
        let e = CliError::Status(tonic::Status::not_found("device \"x\" not found"));
        assert_eq!(e.to_string(), "device \"x\" not found");
        let e = CliError::Status(tonic::Status::internal(""));
        assert_eq!(e.to_string(), "Internal error");
    }

    #[test]
    fn urls_get_a_scheme() {
        assert_eq!(normalize_url("127.0.0.1:1"), "http://127.0.0.1:1");
        assert_eq!(normalize_url("http://h:2"), "http://h:2");
    }

    #[test]
    fn unreachable_engine_is_reported() {
        // Bind then drop a listener to get a port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let url = format!("127.0.0.1:{port}");
        let err = rt.block_on(connect(&url)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("cannot reach engine at http://127.0.0.1:{port}: ")),
            "{msg}"
        );
    }
}
