//! Engine configuration: command-line flags and the optional TOML file.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use reactor::PollMode;
use serde::Deserialize;

/// A device to create at start-up.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Device name.
    pub name: String,
    /// Device URI (`malloc:///...`, `uring:///...` or a path).
    pub uri: String,
}

/// An export to create at start-up.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// Export name (the NBD export name).
    pub name: String,
    /// Device served; defaults to the export's name.
    #[serde(default)]
    pub device: Option<String>,
    /// Refuse writes.
    #[serde(default)]
    pub read_only: bool,
}

impl ExportConfig {
    /// Parses `NAME[=DEVICE][,ro]`.
    pub fn parse(s: &str) -> Result<ExportConfig, String> {
        let (spec, ro) = match s.strip_suffix(",ro") {
            Some(x) => (x, true),
            None => (s, false),
        };
        let (name, device) = match spec.split_once('=') {
            Some((n, d)) => (n.to_string(), Some(d.to_string())),
            None => (spec.to_string(), None),
        };
        if name.is_empty() || device.as_deref() == Some("") {
            return Err(format!("bad export {s:?}: expected NAME[=DEVICE][,ro]"));
        }
        Ok(ExportConfig {
            name,
            device,
            read_only: ro,
        })
    }

    /// The device name this export serves.
    pub fn device_name(&self) -> &str {
        self.device.as_deref().unwrap_or(&self.name)
    }
}

/// A device exported over NVMe/TCP at start-up: subsystem `nqn.2024-01.io.ballast:NAME`
/// with the device as namespace 1.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmfExportConfig {
    /// Export name; the subsystem NQN is `nqn.2024-01.io.ballast:NAME`.
    pub name: String,
    /// Device served; defaults to the export's name.
    #[serde(default)]
    pub device: Option<String>,
    /// Refuse writes.
    #[serde(default)]
    pub read_only: bool,
    /// Host NQNs allowed to connect; empty admits any host.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
}

impl NvmfExportConfig {
    /// Parses `NAME[=DEVICE][,ro][,host=HOSTNQN]...`.
    pub fn parse(s: &str) -> Result<NvmfExportConfig, String> {
        let mut parts = s.split(',');
        let spec = parts.next().unwrap_or("");
        let (name, device) = match spec.split_once('=') {
            Some((n, d)) => (n.to_string(), Some(d.to_string())),
            None => (spec.to_string(), None),
        };
        if name.is_empty() || device.as_deref() == Some("") {
            return Err(format!(
                "bad NVMe/TCP export {s:?}: expected NAME[=DEVICE][,ro][,host=HOSTNQN]..."
            ));
        }
        let mut e = NvmfExportConfig {
            name,
            device,
            read_only: false,
            allow_hosts: Vec::new(),
        };
        for p in parts {
            match p.split_once('=') {
                None if p == "ro" => e.read_only = true,
                Some(("host", h)) if !h.is_empty() => e.allow_hosts.push(h.to_string()),
                _ => {
                    return Err(format!(
                        "bad NVMe/TCP export option {p:?} in {s:?}: expected ro or host=HOSTNQN"
                    ));
                }
            }
        }
        Ok(e)
    }

    /// The device name this export serves.
    pub fn device_name(&self) -> &str {
        self.device.as_deref().unwrap_or(&self.name)
    }
}

/// Parses `NAME=URI`.
pub fn parse_device(s: &str) -> Result<DeviceConfig, String> {
    match s.split_once('=') {
        Some((n, u)) if !n.is_empty() && !u.is_empty() => Ok(DeviceConfig {
            name: n.to_string(),
            uri: u.to_string(),
        }),
        _ => Err(format!("bad device {s:?}: expected NAME=URI")),
    }
}

/// Everything the engine needs to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Reactors (one per core).
    pub cores: usize,
    /// Reactor polling mode.
    pub poll_mode: PollMode,
    /// Pin reactors to CPUs.
    pub pin: bool,
    /// NBD listen address.
    pub nbd_listen: SocketAddr,
    /// Management gRPC listen address; `None` disables the API.
    pub grpc_listen: Option<SocketAddr>,
    /// NVMe/TCP listen address; `None` disables the NVMe-oF target.
    pub nvmf_listen: Option<SocketAddr>,
    /// Devices to create.
    pub devices: Vec<DeviceConfig>,
    /// Exports to create.
    pub exports: Vec<ExportConfig>,
    /// NVMe/TCP exports to create.
    pub nvmf_exports: Vec<NvmfExportConfig>,
    /// Probe every device given at start for a pool and import it.
    pub pool_import: bool,
    /// What each data listener (NBD, NVMe/TCP) allows its connections.
    pub limits: LimitsConfig,
}

/// Limits of the data listeners: a client cannot hold a connection without negotiating, nor
/// (optionally) while idle, and the listeners together cannot use up the descriptors the
/// management API and the devices need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Connections per listener; `None`: [`reactor::ListenerLimits::MAX_CONNECTIONS`]. Either
    /// way capped so that all listeners together leave [`fd_headroom`] descriptors free.
    pub max_connections: Option<usize>,
    /// Time to finish the handshake (NBD: choose an export; NVMe/TCP: ICReq and Connect).
    pub negotiate_timeout: Duration,
    /// Time a negotiated connection may go with nothing in flight and nothing arriving;
    /// `None`: no limit (NBD clients such as the Linux kernel's keep idle connections open
    /// for as long as a device is in use; NVMe/TCP hosts are bounded by keep-alive instead).
    pub idle_timeout: Option<Duration>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: None,
            negotiate_timeout: reactor::ListenerLimits::NEGOTIATE_TIMEOUT,
            idle_timeout: None,
        }
    }
}

/// Descriptors kept free for everything but the data listeners' connections (the management
/// API and its clients, devices, pools, outgoing `nbd://`/`nvmf://` connections, the ring):
/// an eighth of the limit, at least 256.
pub fn fd_headroom(fd_limit: u64) -> u64 {
    (fd_limit / 8).max(256)
}

impl LimitsConfig {
    /// The limits of each of `listeners` data listeners in a process allowed `fd_limit`
    /// descriptors: the configured cap, lowered so that the listeners' connections together
    /// leave [`fd_headroom`] descriptors free (at least one connection each).
    pub fn listener_limits(&self, fd_limit: u64, listeners: usize) -> reactor::ListenerLimits {
        let wanted = self
            .max_connections
            .unwrap_or(reactor::ListenerLimits::MAX_CONNECTIONS);
        let usable = fd_limit.saturating_sub(fd_headroom(fd_limit)) / listeners.max(1) as u64;
        reactor::ListenerLimits {
            max_connections: wanted.min(usable as usize).max(1),
            negotiate_timeout: self.negotiate_timeout,
            idle_timeout: self.idle_timeout,
        }
    }
}

/// Milliseconds as a duration; 0 is `None` where `zero_is_none`, else refused.
pub fn parse_millis(what: &str, v: u64, zero_is_none: bool) -> Result<Option<Duration>, String> {
    match v {
        0 if zero_is_none => Ok(None),
        0 => Err(format!("{what} must be a positive number of milliseconds")),
        ms => Ok(Some(Duration::from_millis(ms))),
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            cores: 1,
            poll_mode: PollMode::Adaptive,
            pin: true,
            nbd_listen: "127.0.0.1:10809".parse().expect("valid"),
            grpc_listen: Some("127.0.0.1:10124".parse().expect("valid")),
            nvmf_listen: Some("127.0.0.1:4420".parse().expect("valid")),
            devices: Vec::new(),
            exports: Vec::new(),
            nvmf_exports: Vec::new(),
            pool_import: true,
            limits: LimitsConfig::default(),
        }
    }
}

/// The TOML file's shape; every key optional, flags win over the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Reactors.
    pub cores: Option<usize>,
    /// `poll`, `interrupt` or `adaptive`.
    pub poll_mode: Option<String>,
    /// Pin reactors to CPUs.
    pub pin: Option<bool>,
    /// NBD listen address.
    pub nbd_listen: Option<String>,
    /// gRPC listen address, or `"none"`.
    pub grpc_listen: Option<String>,
    /// NVMe/TCP listen address, or `"off"`.
    pub nvmf_listen: Option<String>,
    /// Import the pools found on the devices (default true).
    pub pool_import: Option<bool>,
    /// Connections per data listener.
    pub max_connections: Option<usize>,
    /// Handshake limit, milliseconds.
    pub negotiate_timeout_ms: Option<u64>,
    /// Idle limit, milliseconds; 0 disables it.
    pub idle_timeout_ms: Option<u64>,
    /// Devices.
    #[serde(default, rename = "device")]
    pub devices: Vec<DeviceConfig>,
    /// Exports.
    #[serde(default, rename = "export")]
    pub exports: Vec<ExportConfig>,
    /// NVMe/TCP exports.
    #[serde(default, rename = "nvmf_export")]
    pub nvmf_exports: Vec<NvmfExportConfig>,
}

impl FileConfig {
    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<FileConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Applies the file on top of `cfg`.
    pub fn apply(self, cfg: &mut EngineConfig) -> Result<(), String> {
        if let Some(c) = self.cores {
            cfg.cores = c;
        }
        if let Some(m) = self.poll_mode {
            cfg.poll_mode = m.parse()?;
        }
        if let Some(p) = self.pin {
            cfg.pin = p;
        }
        if let Some(a) = self.nbd_listen {
            cfg.nbd_listen = a.parse().map_err(|e| format!("nbd_listen {a:?}: {e}"))?;
        }
        if let Some(a) = self.grpc_listen {
            cfg.grpc_listen = parse_optional_addr(&a)?;
        }
        if let Some(i) = self.pool_import {
            cfg.pool_import = i;
        }
        if let Some(a) = self.nvmf_listen {
            cfg.nvmf_listen = parse_optional_addr(&a)?;
        }
        if let Some(n) = self.max_connections {
            if n == 0 {
                return Err("max_connections must be at least 1".into());
            }
            cfg.limits.max_connections = Some(n);
        }
        if let Some(ms) = self.negotiate_timeout_ms {
            cfg.limits.negotiate_timeout =
                parse_millis("negotiate_timeout_ms", ms, false)?.expect("positive");
        }
        if let Some(ms) = self.idle_timeout_ms {
            cfg.limits.idle_timeout = parse_millis("idle_timeout_ms", ms, true)?;
        }
        cfg.devices.extend(self.devices);
        cfg.exports.extend(self.exports);
        cfg.nvmf_exports.extend(self.nvmf_exports);
        Ok(())
    }
}

/// Parses an address, or `none` / `off` for disabled.
pub fn parse_optional_addr(a: &str) -> Result<Option<SocketAddr>, String> {
    if a == "none" || a == "off" || a.is_empty() {
        return Ok(None);
    }
    a.parse()
        .map(Some)
        .map_err(|e| format!("address {a:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs_and_files() {
        assert_eq!(
            ExportConfig::parse("a=dev,ro").unwrap(),
            ExportConfig {
                name: "a".into(),
                device: Some("dev".into()),
                read_only: true
            }
        );
        assert_eq!(ExportConfig::parse("a").unwrap().device_name(), "a");
        assert!(ExportConfig::parse("=x").is_err());
        assert!(parse_device("x").is_err());
        let f: FileConfig = toml::from_str(
            "cores = 2\npoll_mode = \"poll\"\ngrpc_listen = \"none\"\npool_import = false\n\
             [[device]]\nname = \"d\"\nuri = \"malloc:///d?size=1M\"\n\
             [[export]]\nname = \"d\"\nread_only = true\n",
        )
        .unwrap();
        let mut cfg = EngineConfig::default();
        f.apply(&mut cfg).unwrap();
        assert_eq!(cfg.cores, 2);
        assert_eq!(cfg.poll_mode, PollMode::Poll);
        assert_eq!(cfg.grpc_listen, None);
        assert!(!cfg.pool_import);
        assert_eq!(cfg.devices.len(), 1);
        assert!(cfg.exports[0].read_only);
        assert!(toml::from_str::<FileConfig>("bogus = 1").is_err());
        assert_eq!(cfg.nvmf_listen, Some("127.0.0.1:4420".parse().unwrap()));
        let f: FileConfig = toml::from_str(
            "nvmf_listen = \"off\"\n[[nvmf_export]]\nname = \"v\"\ndevice = \"d\"\n\
             allow_hosts = [\"nqn.2014-08.org.nvmexpress:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427\"]\n",
        )
        .unwrap();
        f.apply(&mut cfg).unwrap();
        assert_eq!(cfg.nvmf_listen, None);
        assert_eq!(cfg.nvmf_exports[0].device_name(), "d");
        assert_eq!(cfg.nvmf_exports[0].allow_hosts.len(), 1);
    }

    #[test]
    fn parses_nvmf_exports() {
        let e = NvmfExportConfig::parse(
            "v=pool/v,ro,host=nqn.2014-08.io.x:h1,host=nqn.2014-08.io.x:h2",
        )
        .unwrap();
        assert_eq!(e.name, "v");
        assert_eq!(e.device_name(), "pool/v");
        assert!(e.read_only);
        assert_eq!(e.allow_hosts.len(), 2);
        assert_eq!(NvmfExportConfig::parse("d").unwrap().device_name(), "d");
        assert!(NvmfExportConfig::parse("d,bogus").is_err());
        assert!(NvmfExportConfig::parse("=d").is_err());
    }

    #[test]
    fn listener_caps_leave_descriptors_for_the_api_and_devices() {
        let l = LimitsConfig::default();
        // A generous limit: the default cap.
        assert_eq!(l.listener_limits(1 << 20, 2).max_connections, 1024);
        // The common soft limit of 1024: two listeners share 768.
        assert_eq!(l.listener_limits(1024, 2).max_connections, 384);
        // A configured cap above what the descriptors allow is lowered...
        let big = LimitsConfig {
            max_connections: Some(100_000),
            ..l
        };
        assert_eq!(big.listener_limits(65_536, 2).max_connections, 28_672);
        // ...one below it is kept; a tiny limit still allows a connection.
        let small = LimitsConfig {
            max_connections: Some(16),
            ..l
        };
        assert_eq!(small.listener_limits(65_536, 2).max_connections, 16);
        assert_eq!(l.listener_limits(100, 2).max_connections, 1);
        assert_eq!(
            l.listener_limits(1024, 2).negotiate_timeout,
            Duration::from_secs(10)
        );
    }

    #[test]
    fn parses_limits_from_the_file() {
        let mut cfg = EngineConfig::default();
        let f: FileConfig = toml::from_str(
            "max_connections = 64\nnegotiate_timeout_ms = 2500\nidle_timeout_ms = 60000\n",
        )
        .unwrap();
        f.apply(&mut cfg).unwrap();
        assert_eq!(cfg.limits.max_connections, Some(64));
        assert_eq!(cfg.limits.negotiate_timeout, Duration::from_millis(2500));
        assert_eq!(cfg.limits.idle_timeout, Some(Duration::from_secs(60)));
        let f: FileConfig = toml::from_str("idle_timeout_ms = 0\n").unwrap();
        f.apply(&mut cfg).unwrap();
        assert_eq!(cfg.limits.idle_timeout, None);
        let f: FileConfig = toml::from_str("negotiate_timeout_ms = 0\n").unwrap();
        assert!(f.apply(&mut cfg).is_err());
    }
}
