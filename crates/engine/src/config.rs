//! Engine configuration: command-line flags and the optional TOML file.

use std::net::SocketAddr;
use std::path::Path;

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
}
