//! Error values carried in replies ("Error values" in the protocol document).

use std::fmt;
use std::io;

/// An error value as it appears in the 32-bit error field of a simple reply
/// or of a structured error chunk.
///
/// The protocol fixes these numbers independently of the host's `errno`
/// values (they merely coincide with the common Linux ones), so always use
/// [`Errno::to_wire`] rather than a platform constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Errno {
    /// `EPERM` (1): operation not permitted, e.g. a write to a read-only
    /// export.
    Eperm,
    /// `EIO` (5): input/output error.
    Eio,
    /// `ENOMEM` (12): out of memory. Servers should avoid sending it.
    Enomem,
    /// `EINVAL` (22): invalid argument, unknown command or flag, bad
    /// alignment, out-of-range read.
    Einval,
    /// `ENOSPC` (28): no space, or a write beyond the end of the export.
    Enospc,
    /// `EOVERFLOW` (75): a `DF` read too large to send in one chunk.
    Eoverflow,
    /// `ENOTSUP` (95): a fast-zero request that cannot be done fast.
    Enotsup,
    /// `ESHUTDOWN` (108): the server is shutting down.
    Eshutdown,
}

impl Errno {
    /// Every defined value, in wire order.
    pub const ALL: [Errno; 8] = [
        Errno::Eperm,
        Errno::Eio,
        Errno::Enomem,
        Errno::Einval,
        Errno::Enospc,
        Errno::Eoverflow,
        Errno::Enotsup,
        Errno::Eshutdown,
    ];

    /// The value to put in a reply's error field.
    #[must_use]
    pub const fn to_wire(self) -> u32 {
        match self {
            Errno::Eperm => 1,
            Errno::Eio => 5,
            Errno::Enomem => 12,
            Errno::Einval => 22,
            Errno::Enospc => 28,
            Errno::Eoverflow => 75,
            Errno::Enotsup => 95,
            Errno::Eshutdown => 108,
        }
    }

    /// Decodes a wire value. Returns `None` for zero (success) and for values
    /// the protocol does not define; the document asks clients to treat the
    /// latter like `EINVAL`.
    #[must_use]
    pub const fn from_wire(value: u32) -> Option<Errno> {
        Some(match value {
            1 => Errno::Eperm,
            5 => Errno::Eio,
            12 => Errno::Enomem,
            22 => Errno::Einval,
            28 => Errno::Enospc,
            75 => Errno::Eoverflow,
            95 => Errno::Enotsup,
            108 => Errno::Eshutdown,
            _ => return None,
        })
    }

    /// Maps a local I/O error onto the closest protocol value, following the
    /// document's advice (quota and file-size errors become `ENOSPC`);
    /// anything unrecognised becomes `EIO`.
    #[must_use]
    pub fn from_io_error(err: &io::Error) -> Errno {
        use io::ErrorKind as K;
        match err.kind() {
            K::PermissionDenied | K::ReadOnlyFilesystem => Errno::Eperm,
            K::OutOfMemory => Errno::Enomem,
            K::InvalidInput => Errno::Einval,
            K::StorageFull | K::QuotaExceeded | K::FileTooLarge => Errno::Enospc,
            K::Unsupported => Errno::Enotsup,
            _ => Errno::Eio,
        }
    }

    /// The conventional symbolic name, e.g. `"EINVAL"`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Errno::Eperm => "EPERM",
            Errno::Eio => "EIO",
            Errno::Enomem => "ENOMEM",
            Errno::Einval => "EINVAL",
            Errno::Enospc => "ENOSPC",
            Errno::Eoverflow => "EOVERFLOW",
            Errno::Enotsup => "ENOTSUP",
            Errno::Eshutdown => "ESHUTDOWN",
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.to_wire())
    }
}

impl From<Errno> for u32 {
    fn from(e: Errno) -> u32 {
        e.to_wire()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_values_match_the_document() {
        let expected = [1u32, 5, 12, 22, 28, 75, 95, 108];
        for (e, v) in Errno::ALL.iter().zip(expected) {
            assert_eq!(e.to_wire(), v);
            assert_eq!(Errno::from_wire(v), Some(*e));
        }
    }

    #[test]
    fn unknown_and_zero_decode_to_none() {
        assert_eq!(Errno::from_wire(0), None);
        assert_eq!(Errno::from_wire(2), None);
        assert_eq!(Errno::from_wire(u32::MAX), None);
    }

    #[test]
    fn io_errors_map_sensibly() {
        let e = |k| Errno::from_io_error(&io::Error::from(k));
        assert_eq!(e(io::ErrorKind::PermissionDenied), Errno::Eperm);
        assert_eq!(e(io::ErrorKind::InvalidInput), Errno::Einval);
        assert_eq!(e(io::ErrorKind::StorageFull), Errno::Enospc);
        assert_eq!(e(io::ErrorKind::QuotaExceeded), Errno::Enospc);
        assert_eq!(e(io::ErrorKind::Unsupported), Errno::Enotsup);
        assert_eq!(e(io::ErrorKind::UnexpectedEof), Errno::Eio);
        assert_eq!(Errno::Einval.to_string(), "EINVAL (22)");
    }
}
