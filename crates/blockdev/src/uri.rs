//! Opening local devices by URI, and the pieces every URI parser shares.
//!
//! - `malloc:///NAME?size=SIZE[&block_size=N]` — RAM device (the path part is informational).
//! - `uring:///PATH[?size=SIZE][&ro][&direct=0]` or a plain absolute path — a file or block
//!   device; `size` creates the file or grows it to that size.
//!
//! Remote schemes (`nvmf://`, `nbd://`, `nbd+unix://`) belong to the initiator crates; the
//! engine wires each scheme to its opener. They share [`split`], [`UriError`] and
//! [`parse_size`] from here.
//!
//! Sizes take the suffixes K, M, G, T (powers of 1024; `KiB`, `MiB`, `GiB`, `TiB` too).

use std::path::Path;
use std::sync::Arc;

use crate::malloc::MallocDevice;
use crate::uring::{OpenFlags, UringDevice};
use crate::{BlockError, Device};

/// A device URI that cannot be used: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriError {
    uri: String,
    reason: String,
}

impl UriError {
    /// `uri` is wrong because of `reason`.
    pub fn new(uri: &str, reason: impl Into<String>) -> UriError {
        UriError {
            uri: uri.to_string(),
            reason: reason.into(),
        }
    }

    /// Why the URI is wrong, without the URI.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl std::fmt::Display for UriError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.uri, self.reason)
    }
}

impl std::error::Error for UriError {}

/// Why opening a device by URI failed: the URI is wrong, or the device would not open.
#[derive(Debug)]
pub enum OpenError {
    /// The URI does not parse, or names an unknown scheme or parameter.
    Uri(UriError),
    /// The URI is fine; opening the device failed.
    Device {
        /// The URI.
        uri: String,
        /// Why.
        error: BlockError,
    },
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Uri(e) => e.fmt(f),
            OpenError::Device { uri, error } => write!(f, "opening {uri:?}: {error}"),
        }
    }
}

impl std::error::Error for OpenError {}

impl From<UriError> for OpenError {
    fn from(e: UriError) -> OpenError {
        OpenError::Uri(e)
    }
}

/// A URI cut into its parts: `SCHEME://AUTHORITY/PATH?K=V&K=V`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UriParts<'a> {
    /// The whole URI, for error messages.
    pub uri: &'a str,
    /// Before `://`.
    pub scheme: &'a str,
    /// Between `://` and the first `/` (empty for `scheme:///path`).
    pub authority: &'a str,
    /// After the first `/` following the authority, without the query (not decoded).
    pub path: &'a str,
    /// Query parameters in order (not decoded); a key without `=` has an empty value.
    pub params: Vec<(&'a str, &'a str)>,
}

impl<'a> UriParts<'a> {
    /// The value of parameter `k`, if given.
    pub fn get(&self, k: &str) -> Option<&'a str> {
        self.params.iter().find(|(pk, _)| *pk == k).map(|(_, v)| *v)
    }

    /// Fails on a parameter not in `known`.
    pub fn check_params(&self, known: &[&str]) -> Result<(), UriError> {
        match self.params.iter().find(|(k, _)| !known.contains(k)) {
            Some((k, _)) => Err(self.error(format!(
                "unknown parameter {k:?} (known: {})",
                known.join(", ")
            ))),
            None => Ok(()),
        }
    }

    /// An error about this URI.
    pub fn error(&self, reason: impl Into<String>) -> UriError {
        UriError::new(self.uri, reason)
    }

    /// `s` with its `%XX` escapes decoded; it must be UTF-8 then.
    pub fn decode(&self, s: &str) -> Result<String, UriError> {
        reactor::percent_decode(s).map_err(|e| self.error(format!("{s:?}: {e}")))
    }

    /// The authority as host and port: `HOST`, `HOST:PORT`, `[IPV6]` or `[IPV6]:PORT`
    /// (the host without brackets), `default_port` when none is given; port 0 is refused.
    pub fn host_port(&self, default_port: u16) -> Result<(String, u16), UriError> {
        let a = self.authority;
        let (host, port) = if let Some(v6) = a.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| self.error(format!("unclosed '[' in {a:?}")))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| self.error("expected :PORT after ]"))?,
                ),
            };
            (h, port)
        } else {
            match a.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (a, None),
            }
        };
        if host.is_empty() {
            return Err(self.error("no host"));
        }
        let port = match port {
            None => default_port,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| self.error(format!("bad port {p:?}")))?,
        };
        Ok((host.to_string(), port))
    }
}

/// Cuts `uri` into scheme, authority, path and query parameters; `None` without `://`.
pub fn split(uri: &str) -> Option<UriParts<'_>> {
    let (scheme, rest) = uri.split_once("://")?;
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = main.split_once('/').unwrap_or((main, ""));
    let params = query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .collect();
    Some(UriParts {
        uri,
        scheme,
        authority,
        path,
        params,
    })
}

/// A parsed local device URI.
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
}

/// Parses a size such as `1GiB`, `512M`, `4096`.
fn parse_size(s: &str) -> std::result::Result<u64, String> {
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
    /// Parses a local device URI (`malloc://`, `uring://`, `file://` or an absolute path);
    /// the error explains what is wrong.
    pub fn parse(uri: &str) -> Result<DeviceSpec, UriError> {
        let parts = match split(uri) {
            Some(p) => p,
            // A plain path is a `uring://` URI without its scheme (it may take the same
            // parameters).
            None if uri.starts_with('/') => return DeviceSpec::parse(&format!("uring://{uri}")),
            None => {
                return Err(UriError::new(
                    uri,
                    "expected SCHEME://... or an absolute path",
                ));
            }
        };
        let size = |v: &str| parse_size(v).map_err(|e| parts.error(e));
        match parts.scheme {
            "malloc" => {
                parts.check_params(&["size", "block_size"])?;
                let size = size(
                    parts
                        .get("size")
                        .ok_or_else(|| parts.error("malloc needs ?size="))?,
                )?;
                let block_size = match parts.get("block_size") {
                    Some(b) => b
                        .parse::<u32>()
                        .map_err(|_| parts.error(format!("bad block_size {b:?}")))?,
                    None => 512,
                };
                if !block_size.is_power_of_two() || !(512..=65536).contains(&block_size) {
                    return Err(parts.error(format!(
                        "block_size {block_size} must be a power of two in 512..=65536"
                    )));
                }
                if size < block_size as u64 {
                    return Err(parts.error("size must be at least one block"));
                }
                Ok(DeviceSpec::Malloc { size, block_size })
            }
            "uring" | "file" => {
                parts.check_params(&["size", "ro", "direct"])?;
                let path = uri.split_once("://").map_or("", |(_, r)| r);
                let path = path.split_once('?').map_or(path, |(p, _)| p);
                let path = if path.starts_with('/') {
                    path.to_string()
                } else {
                    format!("/{path}")
                };
                Ok(DeviceSpec::Uring {
                    path,
                    size: parts.get("size").map(size).transpose()?,
                    read_only: matches!(parts.get("ro"), Some("" | "1" | "true")),
                    direct: !matches!(parts.get("direct"), Some("0" | "false")),
                })
            }
            other => Err(parts.error(format!(
                "{other:?} is not a local device scheme (malloc, uring, file)"
            ))),
        }
    }

    /// Opens the device as `name`.
    pub fn open(&self, name: &str) -> crate::Result<Device> {
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
        })
    }
}

/// Parses and opens the local device `uri` as device `name`.
pub fn open_uri(name: &str, uri: &str) -> Result<Device, OpenError> {
    let spec = DeviceSpec::parse(uri)?;
    spec.open(name).map_err(|error| OpenError::Device {
        uri: uri.to_string(),
        error,
    })
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
        assert_eq!(
            DeviceSpec::parse("/tmp/x.img?ro&size=1M").unwrap(),
            DeviceSpec::Uring {
                path: "/tmp/x.img".into(),
                size: Some(1 << 20),
                read_only: true,
                direct: true
            }
        );
        assert!(DeviceSpec::parse("/tmp/x.img?bogus").is_err());
        assert!(DeviceSpec::parse("malloc:///x").is_err());
        assert!(DeviceSpec::parse("malloc:///x?size=1G&bogus=1").is_err());
        // Remote schemes are the initiators' (the engine wires them).
        let e = DeviceSpec::parse("nvmf://h/nqn.x").unwrap_err();
        assert!(e.reason().contains("not a local device scheme"), "{e}");
        assert!(parse_size("12Q").is_err());
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
    }

    #[test]
    fn splits_uris_into_parts() {
        let p = split("nbd://[::1]:10900/pool1/db?timeout=500&ro").unwrap();
        assert_eq!(p.scheme, "nbd");
        assert_eq!(p.authority, "[::1]:10900");
        assert_eq!(p.path, "pool1/db");
        assert_eq!(p.get("timeout"), Some("500"));
        assert_eq!(p.get("ro"), Some(""));
        assert_eq!(p.get("socket"), None);
        assert!(p.check_params(&["timeout", "ro"]).is_ok());
        let e = p.check_params(&["timeout"]).unwrap_err();
        assert!(e.to_string().contains("unknown parameter \"ro\""), "{e}");
        assert!(split("/just/a/path").is_none());
        assert_eq!(p.host_port(1).unwrap(), ("::1".to_string(), 10900));
        let host_port = |u: &str| split(u).unwrap().host_port(4420);
        assert_eq!(host_port("x://h/").unwrap(), ("h".to_string(), 4420));
        assert_eq!(
            host_port("x://[fe80::1]/").unwrap(),
            ("fe80::1".to_string(), 4420)
        );
        assert!(host_port("x://h:0/").is_err());
        assert!(host_port("x://:80/").is_err());
        assert!(host_port("x://[::1/").is_err());
        assert!(host_port("x://[::1]x/").is_err());
    }

    #[test]
    fn percent_decoding_takes_only_two_hex_digits() {
        let p = split("x://h/").unwrap();
        assert_eq!(p.decode("a%2Fb%20c").unwrap(), "a/b c");
        assert!(p.decode("%+1").is_err(), "a sign is not a hex digit");
        assert!(p.decode("%2").is_err());
        assert!(p.decode("%zz").is_err());
        assert!(p.decode("%ff").is_err(), "not UTF-8 once decoded");
        assert_eq!(p.decode("").unwrap(), "");
    }
}
