//! The one place block errors become NVMe completion status.
//!
//! The match has no wildcard arm: a new [`ErrorKind`] does not compile until it is given its
//! status here (and in `target_nbd::errno_of`). The table is in docs/nvme.md.

use blockdev::{BlockError, ErrorKind, IoKind};
use proto_nvme::Status;

/// The NVMe status for a failed device operation.
pub fn status_of(e: &BlockError) -> Status {
    match e.kind() {
        ErrorKind::Io | ErrorKind::Gone => match e.op() {
            IoKind::Read => Status::UNRECOVERED_READ_ERROR,
            _ => Status::WRITE_FAULT,
        },
        ErrorKind::Timeout => Status::COMMAND_INTERRUPTED,
        ErrorKind::OutOfRange => Status::LBA_OUT_OF_RANGE.with_dnr(),
        ErrorKind::Misaligned | ErrorKind::InvalidArgument => Status::INVALID_FIELD.with_dnr(),
        ErrorKind::Unsupported | ErrorKind::NotFast => Status::INVALID_FIELD.with_dnr(),
        ErrorKind::ReadOnly => Status::NAMESPACE_WRITE_PROTECTED.with_dnr(),
        ErrorKind::NoSpace => Status::CAPACITY_EXCEEDED.with_dnr(),
        // Fenced out: the same status a host gets from a namespace another host reserved,
        // which hosts already handle (no retry on this path, no media error counted).
        ErrorKind::Conflict => Status::RESERVATION_CONFLICT.with_dnr(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_kinds() {
        let s = |k, op| status_of(&BlockError::new(k, op, 0, 512));
        assert_eq!(
            s(ErrorKind::Io, IoKind::Read),
            Status::UNRECOVERED_READ_ERROR
        );
        assert_eq!(s(ErrorKind::Io, IoKind::Write), Status::WRITE_FAULT);
        assert_eq!(
            s(ErrorKind::OutOfRange, IoKind::Read),
            Status::LBA_OUT_OF_RANGE.with_dnr()
        );
        assert_eq!(
            s(ErrorKind::NoSpace, IoKind::Write),
            Status::CAPACITY_EXCEEDED.with_dnr()
        );
        assert_eq!(
            s(ErrorKind::ReadOnly, IoKind::Write),
            Status::NAMESPACE_WRITE_PROTECTED.with_dnr()
        );
        assert_eq!(
            s(ErrorKind::Conflict, IoKind::Write),
            Status::RESERVATION_CONFLICT.with_dnr()
        );
        assert_eq!(
            s(ErrorKind::Gone, IoKind::Read),
            Status::UNRECOVERED_READ_ERROR
        );
        assert_eq!(
            s(ErrorKind::Timeout, IoKind::Write),
            Status::COMMAND_INTERRUPTED
        );
        assert_eq!(
            s(ErrorKind::Unsupported, IoKind::Unmap),
            Status::INVALID_FIELD.with_dnr()
        );
    }
}
