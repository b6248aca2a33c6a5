//! Health persistence: the healthy set published as records to a sink (here a double of the
//! control plane's store that confirms only when told), writes that a retired child missed
//! held until the record without it is confirmed stored (EIO after the hold timeout when it
//! never is), generations, the clean record of a closed nexus, and the resynchronisation of
//! the healthy children after an unclean shutdown.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blockdev::{BlockDevice, ErrorKind, IoBuf, WriteFlags};
use common::{Faulty, MIB, SIZE, pattern, run};
use nexus::health::{HealthRecord, HealthSink};
use nexus::{ChildSpec, ChildState, Nexus, NexusOptions, NexusState};

/// A store double: keeps every record published; confirms a generation only when the test
/// says so (`confirm`), or fails every request to store (`failing`).
#[derive(Debug, Default)]
struct Store {
    records: Mutex<Vec<HealthRecord>>,
    confirmed: AtomicU64,
    failing: AtomicBool,
}

impl Store {
    fn confirm(&self, generation: u64) {
        self.confirmed.fetch_max(generation, Ordering::SeqCst);
    }
    fn records(&self) -> Vec<HealthRecord> {
        self.records.lock().unwrap().clone()
    }
    fn last(&self) -> HealthRecord {
        self.records().last().cloned().expect("a record")
    }
}

impl HealthSink for Store {
    fn publish(&self, record: HealthRecord) {
        self.records.lock().unwrap().push(record);
    }
    fn stored<'a>(
        &'a self,
        _nexus: &'a str,
        generation: u64,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + 'a>> {
        Box::pin(async move {
            loop {
                if self.failing.load(Ordering::SeqCst) {
                    return Err("the store is down".into());
                }
                if self.confirmed.load(Ordering::SeqCst) >= generation {
                    return Ok(());
                }
                reactor::sleep(Duration::from_millis(5)).await;
            }
        })
    }
}

fn opts(store: &Arc<Store>, hold: Duration) -> NexusOptions {
    NexusOptions {
        io_timeout: Duration::from_millis(300),
        hold_timeout: hold,
        health: Some(store.clone()),
        ..NexusOptions::default()
    }
}

fn spec(name: &str, c: &Arc<Faulty>, healthy: bool) -> ChildSpec {
    ChildSpec {
        name: name.into(),
        dev: c.dev.clone(),
        healthy,
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Starts a 4 KiB write at `off` in the background; the flag is set when it completes.
fn write_in_background(
    n: &Arc<Nexus>,
    off: u64,
    seed: u64,
) -> (
    reactor::JoinHandle<Result<IoBuf, blockdev::BlockError>>,
    Arc<AtomicBool>,
) {
    let (n, done) = (n.clone(), Arc::new(AtomicBool::new(false)));
    let d2 = done.clone();
    let h = reactor::spawn_local(async move {
        let r = n
            .write(off, pattern(seed, 4096), WriteFlags::default())
            .await;
        d2.store(true, Ordering::SeqCst);
        r
    });
    (h, done)
}

#[test]
fn a_write_a_failed_child_missed_is_acknowledged_only_once_the_record_without_it_is_stored() {
    run(|| async {
        let store = Arc::new(Store::default());
        let (a, b) = (Faulty::new(), Faulty::new());
        let n = Nexus::create(
            "n",
            SIZE,
            vec![spec("a", &a, true), spec("b", &b, true)],
            None,
            opts(&store, Duration::from_secs(30)),
        )
        .await
        .unwrap();
        // The first record says the nexus runs over a and b; nothing is acknowledged before
        // it is stored.
        assert_eq!(
            store.records(),
            vec![HealthRecord {
                nexus: "n".into(),
                generation: 1,
                healthy: names(&["a", "b"]),
                clean: false,
            }]
        );
        let (w, done) = write_in_background(&n, 0, 1);
        reactor::sleep(Duration::from_millis(200)).await;
        assert!(
            !done.load(Ordering::SeqCst),
            "acknowledged before the first record was stored"
        );
        store.confirm(1);
        w.await.unwrap();

        // b fails during a write: the write reached a, but b is still healthy in the store.
        b.fail(true);
        let (w1, done1) = write_in_background(&n, 64 << 10, 2);
        reactor::sleep(Duration::from_millis(100)).await;
        assert!(matches!(n.children()[1].state, ChildState::Faulted { .. }));
        let rec = store.last();
        assert_eq!((rec.generation, rec.healthy.clone()), (2, names(&["a"])));
        assert!(!rec.clean);
        // A write issued after b was retired (b misses it too) waits as well.
        let (w2, done2) = write_in_background(&n, 128 << 10, 3);
        reactor::sleep(Duration::from_millis(400)).await;
        assert!(
            !done1.load(Ordering::SeqCst) && !done2.load(Ordering::SeqCst),
            "a write b missed was acknowledged while the store still called b healthy"
        );
        // Confirming an older generation releases nothing.
        store.confirm(1);
        reactor::sleep(Duration::from_millis(150)).await;
        assert!(!done1.load(Ordering::SeqCst) && !done2.load(Ordering::SeqCst));
        let t = Instant::now();
        store.confirm(2);
        w1.await.unwrap();
        w2.await.unwrap();
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        // From now on writes go straight through; the data is on a.
        n.write(MIB, pattern(4, 4096), WriteFlags::default())
            .await
            .unwrap();
        for (off, seed) in [(0, 1), (64 << 10, 2), (128 << 10, 3), (MIB, 4)] {
            let got = n.read(off, IoBuf::zeroed(4096)).await.unwrap();
            assert_eq!(&got[..], &pattern(seed, 4096)[..], "offset {off}");
        }
        assert_eq!(n.health_status().unwrap().confirmed, 2);
    });
}

#[test]
fn a_store_that_never_confirms_holds_the_write_then_it_fails_with_eio() {
    run(|| async {
        let hold = Duration::from_millis(1500);
        let store = Arc::new(Store::default());
        let (a, b, c) = (Faulty::new(), Faulty::new(), Faulty::new());
        let n = Nexus::create(
            "n",
            SIZE,
            vec![
                spec("a", &a, true),
                spec("b", &b, true),
                spec("c", &c, true),
            ],
            None,
            opts(&store, hold),
        )
        .await
        .unwrap();
        store.confirm(1);
        n.write(0, pattern(1, 4096), WriteFlags::default())
            .await
            .unwrap();
        // b fails and the record without it is never confirmed: held, then EIO.
        b.fail(true);
        let t = Instant::now();
        let e = n
            .write(4096, pattern(2, 4096), WriteFlags::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io, "{e}");
        assert!(t.elapsed() >= hold, "failed after {:?}", t.elapsed());
        assert!(t.elapsed() < hold * 3, "held for {:?}", t.elapsed());
        // A store that fails to store: the same.
        store.failing.store(true, Ordering::SeqCst);
        let t = Instant::now();
        let e = n
            .write(8192, pattern(3, 4096), WriteFlags::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io);
        assert!(t.elapsed() >= hold, "failed after {:?}", t.elapsed());
        // The nexus itself is fine: once the store works and confirms, writes go on.
        store.failing.store(false, Ordering::SeqCst);
        store.confirm(2);
        n.write(8192, pattern(3, 4096), WriteFlags::default())
            .await
            .unwrap();
        assert_eq!(n.state(), NexusState::Degraded);
        // Flushes acknowledge no data: they are not held.
        c.fail(true);
        let t = Instant::now();
        n.flush().await.unwrap();
        assert!(t.elapsed() < hold, "flush held {:?}", t.elapsed());
        assert_eq!(store.last().healthy, names(&["a"]));
        // And reads never are.
        let got = n.read(8192, IoBuf::zeroed(4096)).await.unwrap();
        assert_eq!(&got[..], &pattern(3, 4096)[..]);
    });
}

#[test]
fn generations_increase_by_one_per_change_and_a_growing_set_is_not_waited_for() {
    run(|| async {
        let store = Arc::new(Store::default());
        let (a, b) = (Faulty::new(), Faulty::new());
        // The previous incarnation's last record was generation 41.
        let n = Nexus::create(
            "n",
            SIZE,
            vec![spec("a", &a, true), spec("b", &b, true)],
            None,
            NexusOptions {
                health_generation: 41,
                ..opts(&store, Duration::from_secs(30))
            },
        )
        .await
        .unwrap();
        store.confirm(42);
        n.write(0, pattern(1, 4096), WriteFlags::default())
            .await
            .unwrap();
        n.fault_child("b", "test").await.unwrap();
        store.confirm(43);
        n.write(MIB, pattern(2, 4096), WriteFlags::default())
            .await
            .unwrap();
        // b is rebuilt: a record with it again, not waited for (writes go on unconfirmed).
        n.rebuild_child("b").await.unwrap();
        let t = Instant::now();
        n.write(2 * MIB, pattern(3, 4096), WriteFlags::default())
            .await
            .unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        // A child added (out of sync) changes nothing; removing an online one does.
        let c = Faulty::new();
        n.add_child("c", c.dev.clone()).await.unwrap();
        n.remove_child("a").await.unwrap();
        let recs = store.records();
        let got: Vec<(u64, Vec<String>)> = recs
            .iter()
            .map(|r| (r.generation, r.healthy.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (42, names(&["a", "b"])),
                (43, names(&["a"])),
                (44, names(&["a", "b"])),
                (45, names(&["b"])),
            ]
        );
        assert!(recs.iter().all(|r| !r.clean && r.nexus == "n"));
        let st = n.health_status().unwrap();
        assert_eq!((st.generation, st.required), (45, 45));
        // The write after the removal waits for 45.
        let (w, done) = write_in_background(&n, 3 * MIB, 4);
        reactor::sleep(Duration::from_millis(200)).await;
        assert!(!done.load(Ordering::SeqCst));
        store.confirm(45);
        w.await.unwrap();
    });
}

#[test]
fn closing_flushes_every_child_and_publishes_a_last_clean_record() {
    run(|| async {
        let store = Arc::new(Store::default());
        let (a, b) = (Faulty::new(), Faulty::new());
        let n = Nexus::create(
            "n",
            SIZE,
            vec![spec("a", &a, true), spec("b", &b, true)],
            None,
            opts(&store, Duration::from_secs(30)),
        )
        .await
        .unwrap();
        store.confirm(1);
        for i in 0..8 {
            n.write(i * MIB, pattern(i, 64 << 10), WriteFlags::default())
                .await
                .unwrap();
        }
        assert!(n.close().await, "closing was not clean");
        assert_eq!(
            store.last(),
            HealthRecord {
                nexus: "n".into(),
                generation: 2,
                healthy: names(&["a", "b"]),
                clean: true,
            }
        );
        assert_eq!(a.content().await, b.content().await);
        // Closed: I/O fails, and nothing is published any more.
        let e = n
            .write(0, pattern(9, 4096), WriteFlags::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io);
        n.fault_child("b", "after close").await.unwrap();
        assert_eq!(store.records().len(), 2);

        // A nexus whose children all fail their last flush does not close clean.
        let store = Arc::new(Store::default());
        let (a, b) = (Faulty::new(), Faulty::new());
        let n = Nexus::create(
            "m",
            SIZE,
            vec![spec("a", &a, true), spec("b", &b, true)],
            None,
            opts(&store, Duration::from_millis(300)),
        )
        .await
        .unwrap();
        store.confirm(1);
        n.write(0, pattern(1, 4096), WriteFlags::default())
            .await
            .unwrap();
        a.fail(true);
        b.fail(true);
        assert!(!n.close().await);
        let last = store.last();
        assert!(!last.clean, "{last:?}");
        // The children that were online last stay the record's healthy set.
        assert!(!last.healthy.is_empty(), "{last:?}");
    });
}

#[test]
fn after_an_unclean_shutdown_the_first_healthy_child_is_the_source_of_the_others() {
    run(|| async {
        // The previous incarnation crashed: a write in flight landed on b only, and c was
        // retired (recorded not healthy) long before, so it lacks later writes.
        let (a, b, c) = (Faulty::new(), Faulty::new(), Faulty::new());
        for d in [&a, &b, &c] {
            d.inner
                .write(0, pattern(1, 4 * MIB as usize), WriteFlags::default())
                .await
                .unwrap();
        }
        for d in [&a, &b] {
            d.inner
                .write(4 * MIB, pattern(2, MIB as usize), WriteFlags::default())
                .await
                .unwrap();
        }
        b.inner
            .write(9 * MIB, pattern(3, 4096), WriteFlags::default())
            .await
            .unwrap();
        assert_ne!(a.content().await, b.content().await);
        let store = Arc::new(Store::default());
        // c is given first: only the record decides who may be a source.
        let n = Nexus::create(
            "n",
            SIZE,
            vec![
                spec("c", &c, false),
                spec("a", &a, true),
                spec("b", &b, true),
            ],
            None,
            NexusOptions {
                unclean_shutdown: true,
                health_generation: 7,
                ..opts(&store, Duration::from_secs(30))
            },
        )
        .await
        .unwrap();
        // Only a serves: b is out of sync until rebuilt from it.
        assert_eq!(n.healthy(), names(&["a"]));
        assert_eq!(n.children()[2].state, ChildState::OutOfSync);
        assert_eq!(
            (store.last().generation, store.last().healthy),
            (8, names(&["a"]))
        );
        store.confirm(8);
        let rc = n.rebuild_child("c").await.unwrap();
        let rb = n.rebuild_child("b").await.unwrap();
        assert!(!rb.partial && !rc.partial);
        let want = a.content().await;
        assert_eq!(b.content().await, want, "b still differs from the source");
        assert_eq!(c.content().await, want, "c still differs from the source");
        let got = n.read(4 * MIB, IoBuf::zeroed(MIB as usize)).await.unwrap();
        assert_eq!(&got[..], &pattern(2, MIB as usize)[..]);
        assert_eq!(n.healthy(), names(&["c", "a", "b"]));
        assert_eq!(n.state(), NexusState::Online);

        // Control: told the shutdown was clean, both stay online and b keeps its stray
        // write (nothing resynchronises them).
        let (a, b) = (Faulty::new(), Faulty::new());
        b.inner
            .write(0, pattern(3, 4096), WriteFlags::default())
            .await
            .unwrap();
        let n = Nexus::create(
            "m",
            SIZE,
            vec![spec("a", &a, true), spec("b", &b, true)],
            None,
            opts(&store, Duration::from_secs(30)),
        )
        .await
        .unwrap();
        assert_eq!(n.healthy(), names(&["a", "b"]));
    });
}
