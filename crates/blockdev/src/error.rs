//! The one error type of block devices.

use std::fmt;
use std::io;

/// What an I/O was doing when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoKind {
    /// Read.
    Read,
    /// Write.
    Write,
    /// Flush.
    Flush,
    /// Unmap (discard, trim).
    Unmap,
    /// Write zeroes.
    WriteZeroes,
    /// Block status query.
    BlockStatus,
    /// Reset.
    Reset,
    /// Opening or probing the device.
    Open,
    /// Fencing: claiming the device for one writer.
    Fence,
}

/// The class of a block error, which protocol targets map to their wire status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The device failed the I/O (media or transport error).
    Io,
    /// Offset or length outside the device.
    OutOfRange,
    /// Offset or length not a multiple of the block size.
    Misaligned,
    /// The device does not support the operation.
    Unsupported,
    /// Writes to a read-only device.
    ReadOnly,
    /// No space left (thin provisioning).
    NoSpace,
    /// A request that can never succeed (bad arguments).
    InvalidArgument,
    /// The operation would not be fast (write-zeroes with `fast_only`).
    NotFast,
    /// The I/O timed out.
    Timeout,
    /// The device is gone (destroyed, disconnected).
    Gone,
    /// The device refused the I/O because another host holds a reservation on it (the
    /// caller has been fenced off).
    Conflict,
}

/// A failed block-device operation: what failed, where, and why.
#[derive(Debug)]
pub struct BlockError {
    kind: ErrorKind,
    op: IoKind,
    offset: u64,
    len: u64,
    source: Option<io::Error>,
}

impl BlockError {
    /// A new error.
    pub fn new(kind: ErrorKind, op: IoKind, offset: u64, len: u64) -> Self {
        BlockError {
            kind,
            op,
            offset,
            len,
            source: None,
        }
    }

    /// An error of `kind` with a message saying why (a protocol status, a peer's address),
    /// shown after the description.
    pub fn with_message(
        kind: ErrorKind,
        op: IoKind,
        offset: u64,
        len: u64,
        msg: impl Into<String>,
    ) -> Self {
        BlockError {
            kind,
            op,
            offset,
            len,
            source: Some(io::Error::other(msg.into())),
        }
    }

    /// An error caused by an OS error, classified from its errno.
    pub fn from_io(op: IoKind, offset: u64, len: u64, e: io::Error) -> Self {
        let kind = match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => ErrorKind::NoSpace,
            Some(libc::EINVAL) => ErrorKind::InvalidArgument,
            Some(libc::EOPNOTSUPP) => ErrorKind::Unsupported,
            Some(libc::EROFS) | Some(libc::EPERM) | Some(libc::EACCES) => ErrorKind::ReadOnly,
            Some(libc::ETIMEDOUT) | Some(libc::ECANCELED) => ErrorKind::Timeout,
            Some(libc::ENODEV) | Some(libc::ENXIO) => ErrorKind::Gone,
            _ => ErrorKind::Io,
        };
        BlockError {
            kind,
            op,
            offset,
            len,
            source: Some(e),
        }
    }

    /// The error class.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The operation that failed.
    pub fn op(&self) -> IoKind {
        self.op
    }

    /// Byte offset of the failed request.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Byte length of the failed request.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the failed request had zero length.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ErrorKind::Io => "I/O error",
            ErrorKind::OutOfRange => "range beyond end of device",
            ErrorKind::Misaligned => "offset or length not aligned to the block size",
            ErrorKind::Unsupported => "operation not supported by the device",
            ErrorKind::ReadOnly => "device is read-only",
            ErrorKind::NoSpace => "no space left",
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::NotFast => "cannot zero fast",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Gone => "device is gone",
            ErrorKind::Conflict => "reservation conflict",
        };
        write!(
            f,
            "{:?} of {} bytes at offset {}: {what}",
            self.op, self.len, self.offset
        )?;
        if let Some(s) = &self.source {
            write!(f, " ({s})")?;
        }
        Ok(())
    }
}

impl std::error::Error for BlockError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

/// Result of block operations.
pub type Result<T> = std::result::Result<T, BlockError>;
