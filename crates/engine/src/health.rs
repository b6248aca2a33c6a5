//! The engine's side of the nexus health contract: the [`HealthSink`] of every nexus created
//! with health persistence, between the nexuses (on the reactors) and the control plane's
//! store (a `WatchNexusHealth` stream and `AckNexusHealth` calls on the gRPC thread).
//!
//! Per nexus name the hub keeps the latest record and the newest generation acknowledged as
//! stored. A watcher that connects gets the latest unacknowledged record of each nexus, then
//! every new record. A nexus waiting for a generation to be stored is woken by the ack.
//! Entries outlive their nexus, so a nexus created again under the same name continues the
//! generations (an old ack can never release a new incarnation's writes).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use nexus::health::{HealthRecord, HealthSink};
use tokio::sync::broadcast;

use crate::MgmtError;

/// Records a slow watcher may fall behind by before it is sent a fresh snapshot.
const BACKLOG: usize = 1024;
/// Wakers kept per nexus (waiting writes ask again every 100 ms anyway).
const MAX_WAKERS: usize = 256;

#[derive(Debug, Default)]
struct Entry {
    /// The newest record.
    latest: Option<HealthRecord>,
    /// Newest generation acknowledged as stored.
    acked: u64,
    /// Nexus tasks waiting for an ack.
    wakers: Vec<Waker>,
}

impl Entry {
    fn generation(&self) -> u64 {
        self.latest.as_ref().map_or(0, |r| r.generation)
    }
}

#[derive(Debug)]
struct Inner {
    nexuses: BTreeMap<String, Entry>,
    /// `None` once the engine shuts down: watch streams end.
    tx: Option<broadcast::Sender<HealthRecord>>,
}

/// Health records of every nexus with health persistence, and their acknowledgements.
#[derive(Debug)]
pub struct HealthHub {
    inner: Mutex<Inner>,
    watchers: Arc<AtomicUsize>,
}

/// Counts a connected watcher while it lives.
#[derive(Debug)]
pub struct WatcherGuard(Arc<AtomicUsize>);

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Default for HealthHub {
    fn default() -> Self {
        HealthHub {
            inner: Mutex::new(Inner {
                nexuses: BTreeMap::new(),
                tx: Some(broadcast::channel(BACKLOG).0),
            }),
            watchers: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl HealthHub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("health hub")
    }

    /// A nexus `name` is being created with health persistence and the previous
    /// incarnation's last generation `previous`: returns the generation its records continue
    /// after (the higher of `previous` and the last one this engine made for the name).
    pub fn register(&self, name: &str, previous: u64) -> u64 {
        let mut g = self.lock();
        let e = g.nexuses.entry(name.to_string()).or_default();
        let base = previous.max(e.generation());
        // The previous record is stored (that is where `previous` comes from); this
        // incarnation's records are all newer, so this releases nothing of theirs.
        e.acked = e.acked.max(base);
        base
    }

    /// Acknowledges that `nexus`'s record `generation` (and older ones) is stored.
    pub fn ack(&self, nexus: &str, generation: u64) -> Result<(), MgmtError> {
        let wakers = {
            let mut g = self.lock();
            let e = g.nexuses.get_mut(nexus).ok_or_else(|| {
                MgmtError::NotFound(format!("nexus {nexus:?} has made no health record"))
            })?;
            if generation > e.generation() {
                return Err(MgmtError::Invalid(format!(
                    "nexus {nexus:?} made no health record {generation} (the newest is {})",
                    e.generation()
                )));
            }
            e.acked = e.acked.max(generation);
            std::mem::take(&mut e.wakers)
        };
        for w in wakers {
            w.wake();
        }
        Ok(())
    }

    /// The newest generation of `nexus` and the newest acknowledged (0, 0 when none).
    pub fn status(&self, nexus: &str) -> (u64, u64) {
        self.lock()
            .nexuses
            .get(nexus)
            .map_or((0, 0), |e| (e.generation(), e.acked))
    }

    /// Whether `nexus`'s record `generation` is acknowledged.
    pub fn is_acked(&self, nexus: &str, generation: u64) -> bool {
        self.lock()
            .nexuses
            .get(nexus)
            .is_some_and(|e| e.acked >= generation)
    }

    /// The latest record of each nexus that is not acknowledged yet.
    pub fn pending(&self) -> Vec<HealthRecord> {
        Self::pending_of(&self.lock())
    }

    fn pending_of(g: &Inner) -> Vec<HealthRecord> {
        g.nexuses
            .values()
            .filter_map(|e| e.latest.clone().filter(|r| r.generation > e.acked))
            .collect()
    }

    /// Connects a watcher: the records not yet acknowledged, and a receiver of every new
    /// one (records published between the two may be in both). `None` once shutting down.
    pub fn subscribe(
        &self,
    ) -> Option<(
        Vec<HealthRecord>,
        broadcast::Receiver<HealthRecord>,
        WatcherGuard,
    )> {
        let g = self.lock();
        let rx = g.tx.as_ref()?.subscribe();
        self.watchers.fetch_add(1, Ordering::SeqCst);
        Some((
            Self::pending_of(&g),
            rx,
            WatcherGuard(self.watchers.clone()),
        ))
    }

    /// Watchers connected.
    pub fn watchers(&self) -> usize {
        self.watchers.load(Ordering::SeqCst)
    }

    /// Ends every watch stream (engine shutdown) once it has sent what is queued.
    pub fn close(&self) {
        self.lock().tx = None;
    }
}

impl HealthSink for HealthHub {
    fn publish(&self, record: HealthRecord) {
        let mut g = self.lock();
        let e = g.nexuses.entry(record.nexus.clone()).or_default();
        if record.generation <= e.generation() {
            return;
        }
        e.latest = Some(record.clone());
        // Sent under the lock: a watcher subscribing meanwhile sees it either in its
        // snapshot or on its receiver (or both), never in neither.
        if let Some(tx) = &g.tx {
            let _ = tx.send(record);
        }
    }

    fn stored<'a>(
        &'a self,
        nexus: &'a str,
        generation: u64,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + 'a>> {
        Box::pin(std::future::poll_fn(move |cx| {
            let mut g = self.lock();
            let Some(e) = g.nexuses.get_mut(nexus) else {
                return Poll::Ready(Err(format!("nexus {nexus:?} has no health records")));
            };
            if e.acked >= generation {
                return Poll::Ready(Ok(()));
            }
            if !e.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                if e.wakers.len() >= MAX_WAKERS {
                    e.wakers.remove(0);
                }
                e.wakers.push(cx.waker().clone());
            }
            Poll::Pending
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: &str, generation: u64) -> HealthRecord {
        HealthRecord {
            nexus: n.into(),
            generation,
            healthy: vec!["c0".into()],
            clean: false,
        }
    }

    #[test]
    fn pending_acks_and_generations() {
        let hub = HealthHub::default();
        assert_eq!(hub.register("n", 0), 0);
        hub.publish(rec("n", 1));
        hub.publish(rec("n", 2));
        hub.publish(rec("n", 2)); // not newer: ignored
        assert_eq!(hub.status("n"), (2, 0));
        assert_eq!(hub.pending(), vec![rec("n", 2)]);
        assert!(matches!(hub.ack("n", 3), Err(MgmtError::Invalid(_))));
        assert!(matches!(hub.ack("x", 1), Err(MgmtError::NotFound(_))));
        hub.ack("n", 1).unwrap();
        assert!(!hub.is_acked("n", 2));
        hub.ack("n", 2).unwrap();
        hub.ack("n", 1).unwrap(); // an older ack changes nothing
        assert_eq!(hub.status("n"), (2, 2));
        assert!(hub.pending().is_empty());
        // A new incarnation continues after the generations made here, whatever it is told.
        assert_eq!(hub.register("n", 0), 2);
        assert_eq!(hub.register("n", 9), 9);
        assert_eq!(hub.status("n"), (2, 9));
        hub.publish(rec("n", 10));
        assert_eq!(hub.pending(), vec![rec("n", 10)]);
    }

    #[test]
    fn a_watcher_gets_the_pending_records_then_new_ones_and_ends_on_close() {
        let hub = HealthHub::default();
        hub.publish(rec("a", 1));
        hub.publish(rec("b", 5));
        hub.ack("b", 5).unwrap();
        let (pending, mut rx, guard) = hub.subscribe().unwrap();
        assert_eq!(pending, vec![rec("a", 1)]);
        assert_eq!(hub.watchers(), 1);
        hub.publish(rec("b", 6));
        assert_eq!(rx.try_recv().unwrap(), rec("b", 6));
        hub.close();
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Closed)
        ));
        assert!(hub.subscribe().is_none());
        drop(guard);
        assert_eq!(hub.watchers(), 0);
    }
}
