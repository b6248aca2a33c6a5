//! `ballast`, the operator CLI of the Ballast engine: argument parsing,
//! the gRPC calls, and output formatting. `main.rs` only wires these up.

pub mod args;
pub mod json;
pub mod table;

use std::error::Error as _;
use std::fmt;
use std::time::Duration;

use ballast_api::{
    CreateDeviceRequest, CreateExportRequest, DestroyDeviceRequest, DestroyExportRequest,
    EngineClient, GetInfoRequest, GetStatsRequest, ListDevicesRequest, ListExportsRequest,
};
use tonic::transport::{Channel, Endpoint};

pub use args::{Cli, Command, DeviceCommand, EngineCommand, ExportCommand, OutputFormat};

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

/// Runs one parsed command line and returns what to print on stdout.
pub async fn run(cli: &Cli) -> Result<String, CliError> {
    let mut client = connect(&cli.engine).await?;
    let err = |s| call_error(&cli.engine, s);
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
        Command::Device(DeviceCommand::Create { name, uri }) => {
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
        Command::Device(DeviceCommand::Destroy { name }) => {
            let req = DestroyDeviceRequest { name: name.clone() };
            client.destroy_device(req).await.map_err(err)?;
            if json {
                "{}".to_owned()
            } else {
                format!("destroyed device {name:?}\n")
            }
        }
        Command::Device(DeviceCommand::List) => {
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
        Command::Export(ExportCommand::Create {
            name,
            device,
            read_only,
        }) => {
            let req = CreateExportRequest {
                name: name.clone(),
                device: device.clone(),
                read_only: *read_only,
            };
            let exp = client.create_export(req).await.map_err(err)?.into_inner();
            if json {
                json::export(&exp)
            } else {
                table::exports(std::slice::from_ref(&exp))
            }
        }
        Command::Export(ExportCommand::Destroy { name }) => {
            let req = DestroyExportRequest { name: name.clone() };
            client.destroy_export(req).await.map_err(err)?;
            if json {
                "{}".to_owned()
            } else {
                format!("destroyed export {name:?}\n")
            }
        }
        Command::Export(ExportCommand::List) => {
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
