//! Opening devices by URI.
//!
//! - `malloc:///NAME?size=SIZE[&block_size=N]` — RAM device (the path part is informational).
//! - `uring:///PATH[?size=SIZE][&ro][&direct=0]` or a plain absolute path — a file or block
//!   device; `size` creates the file or grows it to that size.
//! - `nvmf://HOST[:PORT]/NQN[?nsid=N&hdgst=1&ddgst=1&hostnqn=…&hostid=…&kato=MS&timeout=MS&queues=N&qsize=N&ro]`
//!   — a namespace of a remote NVMe/TCP controller ([`crate::nvmf`]).
//! - `nbd://HOST[:PORT]/EXPORT[?timeout=MS&connect_timeout=MS&multi_conn=0]` or
//!   `nbd+unix:///EXPORT?socket=PATH` — a remote NBD export ([`crate::nbd`]).
//!
//! Sizes take the suffixes K, M, G, T (powers of 1024; `KiB`, `MiB`, `GiB`, `TiB` too).

use std::path::Path;
use std::sync::Arc;

use crate::malloc::MallocDevice;
use crate::nbd::{NbdDevice, NbdSpec};
use crate::nvmf::{NvmfDevice, NvmfParams};
use crate::uring::{OpenFlags, UringDevice};
use crate::{Device, Result};

/// A parsed device URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// A RAM device.
    Malloc {
        /// Size in bytes.
        size: u64,
        /// Logical block size.
        block_size: u32,
    },
    /// A file or block device.
    Uring {
        /// Path.
        path: String,
        /// Create or grow to this size.
        size: Option<u64>,
        /// Open read-only.
        read_only: bool,
        /// Use O_DIRECT.
        direct: bool,
    },
    /// A namespace of a remote NVMe/TCP controller.
    Nvmf(NvmfParams),
    /// A remote NBD export.
    Nbd(NbdSpec),
}

/// Parses a size such as `1GiB`, `512M`, `4096`.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("bad size unit {other:?} in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} overflows"))
}

impl DeviceSpec {
    /// Parses a device URI; the error explains what is wrong.
    pub fn parse(uri: &str) -> std::result::Result<DeviceSpec, String> {
        if uri.starts_with("nvmf://") {
            return NvmfParams::parse(uri).map(DeviceSpec::Nvmf);
        }
        let (scheme, rest) = match uri.split_once("://") {
            Some((s, r)) => (s, r),
            None if uri.starts_with('/') => ("uring", uri),
            None => {
                return Err(format!(
                    "{uri:?}: expected SCHEME://... or an absolute path"
                ));
            }
        };
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut params = Vec::new();
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            params.push((k.to_string(), v.to_string()));
        }
        let get = |k: &str| {
            params
                .iter()
                .find(|(pk, _)| pk == k)
                .map(|(_, v)| v.as_str())
        };
        for (k, _) in &params {
            let known: &[&str] = match scheme {
                "malloc" => &["size", "block_size"],
                "nbd" | "nbd+unix" => crate::nbd::PARAMS,
                _ => &["size", "ro", "direct"],
            };
            if !known.contains(&k.as_str()) {
                return Err(format!(
                    "{uri:?}: unknown parameter {k:?} (known: {})",
                    known.join(", ")
                ));
            }
        }
        match scheme {
            "malloc" => {
                let size = parse_size(
                    get("size").ok_or_else(|| format!("{uri:?}: malloc needs ?size="))?,
                )?;
                let block_size = match get("block_size") {
                    Some(b) => b
                        .parse::<u32>()
                        .map_err(|_| format!("bad block_size {b:?}"))?,
                    None => 512,
                };
                if !block_size.is_power_of_two() || !(512..=65536).contains(&block_size) {
                    return Err(format!(
                        "block_size {block_size} must be a power of two in 512..=65536"
                    ));
                }
                if size < block_size as u64 {
                    return Err(format!("{uri:?}: size must be at least one block"));
                }
                Ok(DeviceSpec::Malloc { size, block_size })
            }
            "uring" | "file" => {
                let path = if path.starts_with('/') {
                    path.to_string()
                } else {
                    format!("/{path}")
                };
                let size = get("size").map(parse_size).transpose()?;
                let read_only = matches!(get("ro"), Some("" | "1" | "true"));
                let direct = !matches!(get("direct"), Some("0" | "false"));
                Ok(DeviceSpec::Uring {
                    path,
                    size,
                    read_only,
                    direct,
                })
            }
            "nbd" | "nbd+unix" => NbdSpec::parse(scheme, path, &params)
                .map(DeviceSpec::Nbd)
                .map_err(|e| format!("{uri:?}: {e}")),
            other => Err(format!(
                "{uri:?}: unknown scheme {other:?} (malloc, uring, nvmf, nbd, nbd+unix)"
            )),
        }
    }

    /// Opens the device as `name`.
    pub fn open(&self, name: &str) -> Result<Device> {
        Ok(match self {
            DeviceSpec::Malloc { size, block_size } => {
                Arc::new(MallocDevice::new(name, *size, *block_size))
            }
            DeviceSpec::Uring {
                path,
                size,
                read_only,
                direct,
            } => Arc::new(UringDevice::open(
                name,
                Path::new(path),
                &OpenFlags {
                    read_only: *read_only,
                    size: *size,
                    direct: *direct,
                },
            )?),
            DeviceSpec::Nvmf(p) => Arc::new(NvmfDevice::open(name, p.clone())?),
            DeviceSpec::Nbd(s) => Arc::new(NbdDevice::open(name, s)?),
        })
    }
}

/// Parses and opens `uri` as device `name`.
pub fn open_uri(name: &str, uri: &str) -> std::result::Result<Device, String> {
    let spec = DeviceSpec::parse(uri)?;
    spec.open(name).map_err(|e| format!("opening {uri:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_uris() {
        assert_eq!(
            DeviceSpec::parse("malloc:///ram0?size=64MiB").unwrap(),
            DeviceSpec::Malloc {
                size: 64 << 20,
                block_size: 512
            }
        );
        assert_eq!(
            DeviceSpec::parse("/tmp/x.img").unwrap(),
            DeviceSpec::Uring {
                path: "/tmp/x.img".into(),
                size: None,
                read_only: false,
                direct: true
            }
        );
        assert_eq!(
            DeviceSpec::parse("uring:///dev/sdb?ro").unwrap(),
            DeviceSpec::Uring {
                path: "/dev/sdb".into(),
                size: None,
                read_only: true,
                direct: true
            }
        );
        assert!(DeviceSpec::parse("malloc:///x").is_err());
        assert!(DeviceSpec::parse("malloc:///x?size=1G&bogus=1").is_err());
        assert!(DeviceSpec::parse("nvmf://h/").is_err());
        assert!(DeviceSpec::parse("nvmf://h/x?bogus=1").is_err());
        assert!(matches!(
            DeviceSpec::parse("nbd://10.1.2.3:10900/pool1/db?timeout=500").unwrap(),
            DeviceSpec::Nbd(s) if s.export == "pool1/db"
                && s.timeout == std::time::Duration::from_millis(500)
        ));
        assert!(matches!(
            DeviceSpec::parse("nbd+unix:///x?socket=/run/s").unwrap(),
            DeviceSpec::Nbd(s) if s.addr == crate::nbd::NbdAddr::Unix("/run/s".into())
        ));
        assert!(DeviceSpec::parse("nbd://h/x?bogus=1").is_err());
        assert!(DeviceSpec::parse("nbd:///x").is_err());
        assert!(parse_size("12Q").is_err());
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
    }
}
