//! Health records: the set of children in sync, made durable by a store outside the nexus
//! (the control plane) before the nexus relies on it.
//!
//! A nexus created with [`NexusOptions::health`](crate::NexusOptions::health) hands a
//! [`HealthRecord`] to its [`HealthSink`] whenever the set of healthy (online) children
//! changes, and once more, with `clean` set, when it is closed. Generations increase by one
//! per record and continue across incarnations when the creator passes the previous record's
//! generation ([`NexusOptions::health_generation`](crate::NexusOptions::health_generation)).
//!
//! The contract:
//!
//! - **Shrinking is durable before it is relied on.** When a record removes a child from the
//!   healthy set (it failed, was faulted or removed), no write that child missed is
//!   acknowledged before the sink confirms that a record of that generation or newer is
//!   stored. The write is held meanwhile; if no confirmation comes within the hold timeout it
//!   fails with EIO. So the store never calls a child healthy that lacks an acknowledged
//!   write, and after a crash a child not recorded healthy is never a rebuild source.
//! - **The first record of an incarnation counts as shrinking**: it says the nexus is running
//!   (`clean: false`), so nothing is acknowledged before the store knows that a crash from
//!   now on is unclean — and it may already list fewer children than the creator gave as
//!   healthy (the dirty-region log or an unclean restart put some out of sync).
//! - **Growing is reported without waiting.** A child coming online (rebuilt, or reinstated
//!   when it was among the last online) is published, and writes go on at once. A store that
//!   is behind then lists too few children: after a crash that costs an unneeded rebuild,
//!   never data.
//! - **Clean shutdown.** [`Nexus::close`](crate::Nexus::close) waits for the I/O in flight,
//!   flushes every child and publishes a last record with `clean: true` when the flush
//!   succeeded on every healthy child (they are then identical). Any other ending leaves the
//!   store's last record at `clean: false`: the healthy children may differ in the writes
//!   that were in flight, and the next incarnation must resynchronise them
//!   ([`NexusOptions::unclean_shutdown`](crate::NexusOptions::unclean_shutdown)).

use std::future::Future;
use std::pin::Pin;

/// One state of a nexus's healthy set, to be stored by the control plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthRecord {
    /// The nexus.
    pub nexus: String,
    /// Increases by one per record of this nexus.
    pub generation: u64,
    /// The children in sync, in the nexus's child order: only these may serve reads or be
    /// rebuild sources when the nexus is created again.
    pub healthy: Vec<String>,
    /// The last record of a cleanly closed nexus: every write reached and was flushed to
    /// every healthy child, so they are identical.
    pub clean: bool,
}

/// Where a nexus's health records go: the engine's side of the control plane's store.
///
/// Both methods are called from the nexus's reactor threads; `publish` must not block.
pub trait HealthSink: Send + Sync {
    /// Takes `record` to be stored. Records of one nexus come in increasing generations; a
    /// newer one supersedes older ones not yet stored.
    fn publish(&self, record: HealthRecord);

    /// Resolves `Ok` once a record of `nexus` with generation `generation` or newer is
    /// durably stored, `Err` when storing failed (the nexus asks again until its hold
    /// timeout). The nexus drops the future when it stops waiting.
    fn stored<'a>(
        &'a self,
        nexus: &'a str,
        generation: u64,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + 'a>>;
}

/// A nexus's health persistence as it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthStatus {
    /// Generation of the newest record published.
    pub generation: u64,
    /// Generation that must be stored before writes are acknowledged (the newest record
    /// that removed a child from the healthy set, or the first record).
    pub required: u64,
    /// Newest generation the sink confirmed stored, as far as the nexus asked.
    pub confirmed: u64,
    /// The healthy set of the newest record.
    pub healthy: Vec<String>,
    /// The last record (clean or not) was published: the nexus is closed.
    pub closed: bool,
}

/// The nexus's side of health persistence.
pub(crate) struct Health {
    pub(crate) sink: std::sync::Arc<dyn HealthSink>,
    /// Generation counter and the last published set. Every change of a child's state
    /// happens under this lock, so a write that saw the change also sees `required`.
    pub(crate) st: std::sync::Mutex<HealthState>,
    pub(crate) required: std::sync::atomic::AtomicU64,
    pub(crate) confirmed: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
pub(crate) struct HealthState {
    pub(crate) generation: u64,
    pub(crate) recorded: Vec<String>,
    pub(crate) closed: bool,
}
