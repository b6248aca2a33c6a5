//! The pool crate's error: a kind, the context (what was being done, what was found), and
//! the device or metadata error underneath when there is one.
//!
//! Every fallible operation of a pool returns [`PoolError`]. The lower layers keep their own
//! precise detail — a device's [`BlockError`], the metadata state machine's [`MetaError`], a
//! superblock copy's [`crate::superblock::SuperblockError`] (reported per copy by import and
//! the check) — and reach callers as the source of a `PoolError` or in its context.
//! [`PoolErrorKind`] is used only inside this workspace, so it is not `#[non_exhaustive]`:
//! a new kind makes the compiler list every mapping that must decide what it means (the
//! engine's `pools::pool_error`).

use blockdev::BlockError;

use crate::meta::MetaError;

/// What kind of failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolErrorKind {
    /// A device failed (the source is its error).
    Device,
    /// No valid superblock: not a pool, or both copies damaged (reasons in the context).
    NoSuperblock,
    /// No valid checkpoint in either slot.
    NoCheckpoint,
    /// Metadata inconsistent, or a change it rejects (the source is the metadata error).
    Metadata,
    /// A volume or snapshot name already taken in the pool (the context is the name).
    NameTaken,
    /// An operation not allowed on this kind of object (a snapshot where a volume is
    /// needed, or the other way round).
    WrongKind,
    /// No such volume or snapshot.
    NotFound,
    /// Bad arguments.
    Invalid,
    /// Out of space (clusters or metadata room).
    NoSpace,
    /// A metadata write failed: the pool refuses changes until it is imported again.
    ReadOnly,
    /// The member devices given do not make up the pool.
    Members,
}

/// The error underneath, when there is one.
#[derive(Debug)]
enum Source {
    None,
    Device(BlockError),
    Meta(MetaError),
}

/// Why a pool operation failed: a [`PoolErrorKind`] plus context.
#[derive(Debug)]
pub struct PoolError {
    kind: PoolErrorKind,
    context: String,
    source: Source,
}

impl PoolError {
    /// An error of `kind` with `context`: for `NotFound` the name, for the others what was
    /// wrong.
    pub fn new(kind: PoolErrorKind, context: impl Into<String>) -> PoolError {
        PoolError {
            kind,
            context: context.into(),
            source: Source::None,
        }
    }

    /// Bad arguments.
    pub fn invalid(context: impl Into<String>) -> PoolError {
        PoolError::new(PoolErrorKind::Invalid, context)
    }

    /// Out of space.
    pub fn no_space(context: impl Into<String>) -> PoolError {
        PoolError::new(PoolErrorKind::NoSpace, context)
    }

    /// The member devices do not make up the pool.
    pub fn members(context: impl Into<String>) -> PoolError {
        PoolError::new(PoolErrorKind::Members, context)
    }

    /// What kind of failure.
    pub fn kind(&self) -> PoolErrorKind {
        self.kind
    }

    /// The context: the name not found or taken, or what was wrong (the source's text for
    /// device and other metadata errors).
    pub fn context(&self) -> &str {
        &self.context
    }

    /// The device error underneath, if a device failed.
    pub fn device_error(&self) -> Option<&BlockError> {
        match &self.source {
            Source::Device(e) => Some(e),
            Source::None | Source::Meta(_) => None,
        }
    }
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let w = &self.context;
        match self.kind {
            PoolErrorKind::Device => write!(f, "device error: {w}"),
            PoolErrorKind::NoSuperblock => write!(f, "no valid pool superblock: {w}"),
            PoolErrorKind::NoCheckpoint => write!(f, "no valid metadata checkpoint: {w}"),
            PoolErrorKind::Metadata | PoolErrorKind::WrongKind => write!(f, "metadata: {w}"),
            PoolErrorKind::NameTaken => write!(f, "metadata: name {w:?} is taken"),
            PoolErrorKind::NotFound => write!(f, "{w:?} not found"),
            PoolErrorKind::Invalid => write!(f, "{w}"),
            PoolErrorKind::NoSpace => write!(f, "no space: {w}"),
            PoolErrorKind::ReadOnly => write!(
                f,
                "pool is read-only: {w}; import it again once the device is healthy"
            ),
            PoolErrorKind::Members => write!(f, "pool members: {w}"),
        }
    }
}

impl std::error::Error for PoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.source {
            Source::None => None,
            Source::Device(e) => Some(e),
            Source::Meta(e) => Some(e),
        }
    }
}

impl From<BlockError> for PoolError {
    fn from(e: BlockError) -> Self {
        PoolError {
            kind: PoolErrorKind::Device,
            context: e.to_string(),
            source: Source::Device(e),
        }
    }
}

impl From<MetaError> for PoolError {
    fn from(e: MetaError) -> Self {
        let (kind, context) = match &e {
            MetaError::NameTaken(name) => (PoolErrorKind::NameTaken, name.clone()),
            MetaError::WrongKind(_) => (PoolErrorKind::WrongKind, e.to_string()),
            MetaError::NoVolume(_)
            | MetaError::IdTaken(_)
            | MetaError::OutOfRange
            | MetaError::Corrupt(_) => (PoolErrorKind::Metadata, e.to_string()),
        };
        PoolError {
            kind,
            context,
            source: Source::Meta(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_kind_and_the_context() {
        let e = PoolError::new(PoolErrorKind::NotFound, "v");
        assert_eq!(e.to_string(), "\"v\" not found");
        let e = PoolError::from(MetaError::NameTaken("v".into()));
        assert_eq!(e.kind(), PoolErrorKind::NameTaken);
        assert_eq!(e.to_string(), "metadata: name \"v\" is taken");
        assert!(std::error::Error::source(&e).is_some());
        let e = PoolError::new(PoolErrorKind::ReadOnly, "metadata commit failed (EIO)");
        assert_eq!(
            e.to_string(),
            "pool is read-only: metadata commit failed (EIO); import it again once the device \
             is healthy"
        );
    }
}
