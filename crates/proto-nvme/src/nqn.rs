//! NVMe Qualified Names and host identifiers (NVMe Base specification
//! "NVMe Qualified Names").
//!
//! An NQN is UTF-8, at most 223 bytes, in one of two forms:
//!
//! * `nqn.YYYY-MM.reverse.domain[:user-string]`: a date the domain was
//!   owned and the domain reversed, optionally followed by a colon and
//!   anything the owner chooses. The well-known discovery NQN
//!   `nqn.2014-08.org.nvmexpress.discovery` has this form.
//! * `nqn.2014-08.org.nvmexpress:uuid:xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`:
//!   a name derived from a UUID, as hosts without a domain use (Linux's
//!   default host NQN).

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The well-known NQN of discovery subsystems.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
/// The prefix of UUID-based NQNs.
pub const UUID_NQN_PREFIX: &str = "nqn.2014-08.org.nvmexpress:uuid:";
/// Longest NQN, in bytes.
pub const NQN_MAX_LEN: usize = 223;

/// What kind of NQN [`validate_nqn`] accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NqnKind {
    /// The well-known discovery NQN.
    Discovery,
    /// A UUID-based NQN, with the UUID.
    Uuid(HostId),
    /// A domain-based NQN.
    Domain,
}

/// Checks that `s` is a well-formed NQN and says which kind it is.
pub fn validate_nqn(s: &str) -> Result<NqnKind> {
    if s.len() > NQN_MAX_LEN {
        return Err(Error::InvalidNqn("longer than 223 bytes"));
    }
    if s == DISCOVERY_NQN {
        return Ok(NqnKind::Discovery);
    }
    if let Some(uuid) = s.strip_prefix(UUID_NQN_PREFIX) {
        return uuid
            .parse::<HostId>()
            .map(NqnKind::Uuid)
            .map_err(|_| Error::InvalidNqn("malformed UUID in a UUID-based NQN"));
    }
    let rest = s
        .strip_prefix("nqn.")
        .ok_or(Error::InvalidNqn("does not start with \"nqn.\""))?;
    let date = rest
        .get(..7)
        .ok_or(Error::InvalidNqn("missing yyyy-mm date"))?;
    let d = date.as_bytes();
    let digits = |r: &[u8]| r.iter().all(u8::is_ascii_digit);
    if !(digits(&d[..4]) && d[4] == b'-' && digits(&d[5..7])) {
        return Err(Error::InvalidNqn("date is not yyyy-mm"));
    }
    let month = (d[5] - b'0') * 10 + (d[6] - b'0');
    if !(1..=12).contains(&month) {
        return Err(Error::InvalidNqn("month out of range"));
    }
    let rest = rest
        .get(7..)
        .and_then(|r| r.strip_prefix('.'))
        .ok_or(Error::InvalidNqn("missing '.' after the date"))?;
    let (domain, user) = match rest.split_once(':') {
        Some((d, u)) => (d, Some(u)),
        None => (rest, None),
    };
    if domain.is_empty()
        || domain.split('.').any(|label| {
            label.is_empty()
                || label.len() > 63
                || !label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
    {
        return Err(Error::InvalidNqn("reverse domain name is not valid"));
    }
    if user == Some("") {
        return Err(Error::InvalidNqn("empty string after ':'"));
    }
    if s.contains('\0') {
        return Err(Error::InvalidNqn("contains NUL"));
    }
    Ok(NqnKind::Domain)
}

/// A 128-bit host identifier (the HOSTID of Connect data), usually a
/// UUID. Displays and parses in the 8-4-4-4-12 hex form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct HostId(pub [u8; 16]);

impl HostId {
    /// The UUID-based NQN for this identifier.
    #[must_use]
    pub fn to_nqn(&self) -> String {
        format!("{UUID_NQN_PREFIX}{self}")
    }

    /// Whether all bytes are zero (not a valid host identifier).
    #[must_use]
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostId({self})")
    }
}

impl FromStr for HostId {
    type Err = Error;

    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (either case).
    fn from_str(s: &str) -> Result<HostId> {
        let bad = Error::InvalidNqn("host identifier is not a UUID");
        let b = s.as_bytes();
        if b.len() != 36 {
            return Err(bad);
        }
        let mut out = [0u8; 16];
        let mut n = 0;
        let mut i = 0;
        while i < 36 {
            if matches!(i, 8 | 13 | 18 | 23) {
                if b[i] != b'-' {
                    return Err(bad);
                }
                i += 1;
                continue;
            }
            let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
            let (Some(hi), Some(lo)) = (hex(b[i]), b.get(i + 1).copied().and_then(hex)) else {
                return Err(bad);
            };
            out[n] = (hi << 4) | lo;
            n += 1;
            i += 2;
        }
        Ok(HostId(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_forms() {
        assert_eq!(validate_nqn(DISCOVERY_NQN), Ok(NqnKind::Discovery));
        assert_eq!(
            validate_nqn("nqn.2014-08.com.example:nvme:nvm-subsystem-sn-d78432"),
            Ok(NqnKind::Domain)
        );
        assert_eq!(validate_nqn("nqn.2024-01.io.ballast"), Ok(NqnKind::Domain));
        let id: HostId = "f81d4fae-7dec-11d0-a765-00a0c91e6bf6".parse().unwrap();
        assert_eq!(
            validate_nqn("nqn.2014-08.org.nvmexpress:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"),
            Ok(NqnKind::Uuid(id))
        );
        let long = format!("nqn.2024-01.io.ballast:{}", "x".repeat(223 - 23));
        assert_eq!(long.len(), 223);
        assert!(validate_nqn(&long).is_ok());
    }

    #[test]
    fn rejected_forms() {
        for bad in [
            "",
            "nqn.",
            "iqn.2024-01.io.ballast:x",
            "nqn.24-01.io.ballast:x",
            "nqn.2024-13.io.ballast:x",
            "nqn.2024-1.io.ballast:x",
            "nqn.2024-01io.ballast:x",
            "nqn.2024-01.:x",
            "nqn.2024-01.io..ballast:x",
            "nqn.2024-01.io.bal last:x",
            "nqn.2024-01.io.ballast:",
            "nqn.2014-08.org.nvmexpress:uuid:not-a-uuid",
            "nqn.2024-01.io.ballast:a\0b",
        ] {
            assert!(validate_nqn(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("nqn.2024-01.io.ballast:{}", "x".repeat(201));
        assert_eq!(
            validate_nqn(&long),
            Err(Error::InvalidNqn("longer than 223 bytes"))
        );
    }

    #[test]
    fn host_id_format() {
        let id = HostId([
            0xf8, 0x1d, 0x4f, 0xae, 0x7d, 0xec, 0x11, 0xd0, 0xa7, 0x65, 0x00, 0xa0, 0xc9, 0x1e,
            0x6b, 0xf6,
        ]);
        assert_eq!(id.to_string(), "f81d4fae-7dec-11d0-a765-00a0c91e6bf6");
        assert_eq!(
            "F81D4FAE-7DEC-11D0-A765-00A0C91E6BF6"
                .parse::<HostId>()
                .unwrap(),
            id
        );
        assert_eq!(
            id.to_nqn(),
            "nqn.2014-08.org.nvmexpress:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
        );
        assert!(!id.is_nil());
        assert!(HostId::default().is_nil());
        for bad in [
            "f81d4fae7dec-11d0-a765-00a0c91e6bf6x",
            "f81d4fae-7dec-11d0-a765-00a0c91e6bfg",
            "f81d4fae-7dec-11d0-a765+00a0c91e6bf6",
            "",
        ] {
            assert!(bad.parse::<HostId>().is_err(), "{bad}");
        }
    }
}
