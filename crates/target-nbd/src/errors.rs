//! The one place block errors become NBD error numbers.

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
        _ => Errno::Eio,
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
    }
}
