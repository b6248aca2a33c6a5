//! The one place block errors become NBD error numbers.
//!
//! The match has no wildcard arm: a new [`ErrorKind`] does not compile until it is given its
//! errno here (and in `target_nvme::status_of`). The table is in docs/nbd.md.

use blockdev::{BlockError, ErrorKind, IoKind};
use proto_nbd::Errno;

/// The NBD errno for a failed device operation.
pub fn errno_of(e: &BlockError) -> Errno {
    match e.kind() {
        ErrorKind::Io | ErrorKind::Timeout | ErrorKind::Gone => Errno::Eio,
        ErrorKind::OutOfRange => match e.op() {
            // The protocol asks for ENOSPC when a write goes past the end.
            IoKind::Write | IoKind::WriteZeroes => Errno::Enospc,
            _ => Errno::Einval,
        },
        ErrorKind::Misaligned | ErrorKind::InvalidArgument => Errno::Einval,
        ErrorKind::Unsupported | ErrorKind::NotFast => Errno::Enotsup,
        ErrorKind::ReadOnly => Errno::Eperm,
        ErrorKind::NoSpace => Errno::Enospc,
        // Fenced out (a newer nexus incarnation or another host holds the device): the
        // client may not write here; EPERM is the protocol's "operation not permitted",
        // distinct from a failed medium (EIO), so a client need not retry.
        ErrorKind::Conflict => Errno::Eperm,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_every_kind() {
        let e = |k, op| errno_of(&BlockError::new(k, op, 0, 512));
        assert_eq!(e(ErrorKind::OutOfRange, IoKind::Write), Errno::Enospc);
        assert_eq!(e(ErrorKind::OutOfRange, IoKind::Read), Errno::Einval);
        assert_eq!(e(ErrorKind::NoSpace, IoKind::Write), Errno::Enospc);
        assert_eq!(e(ErrorKind::ReadOnly, IoKind::Write), Errno::Eperm);
        assert_eq!(e(ErrorKind::NotFast, IoKind::WriteZeroes), Errno::Enotsup);
        assert_eq!(e(ErrorKind::Io, IoKind::Flush), Errno::Eio);
        assert_eq!(e(ErrorKind::Conflict, IoKind::Write), Errno::Eperm);
        assert_eq!(e(ErrorKind::Conflict, IoKind::Flush), Errno::Eperm);
        assert_eq!(e(ErrorKind::Timeout, IoKind::Read), Errno::Eio);
        assert_eq!(e(ErrorKind::Gone, IoKind::Read), Errno::Eio);
        assert_eq!(e(ErrorKind::Misaligned, IoKind::Read), Errno::Einval);
        assert_eq!(e(ErrorKind::InvalidArgument, IoKind::Read), Errno::Einval);
        assert_eq!(e(ErrorKind::Unsupported, IoKind::Unmap), Errno::Enotsup);
    }
}
