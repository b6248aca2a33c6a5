//! What the pool's one lock per I/O costs, against the alternative the one-owner model
//! would use: a message to the reactor that owns the pool's metadata and its answer.
//!
//! Prints, each as the median of ROUNDS rounds:
//! - a pool volume's 4 KiB read and in-place write (QD1, RAM device) against the RAM device
//!   alone: the whole pool overhead per I/O, the lock included;
//! - an uncontended `std::sync::Mutex` lock + unlock around a map lookup;
//! - the same with a second thread taking the same lock in a loop (contended);
//! - a `ReactorHandle::call` round trip from one reactor to another and back, with adaptive
//!   polling (the engine's default) and with both reactors spinning (poll mode).
//!
//! usage: cargo run --release -p pool --example lock_cost [ROUNDS]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use blockdev::malloc::MallocDevice;
use blockdev::{Device, IoBuf, WriteFlags};
use pool::pool::{CreateOptions, Pool};
use reactor::{Config, PollMode, Runtime};

const OPS: u64 = 200_000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Nanoseconds per lock + lookup + unlock over `OPS` operations.
fn lock_ns(m: &Mutex<BTreeMap<u64, u64>>) -> f64 {
    let t = Instant::now();
    for i in 0..OPS * 10 {
        let g = m.lock().expect("lock");
        black_box(g.get(&(i & 1023)));
    }
    t.elapsed().as_nanos() as f64 / (OPS * 10) as f64
}

/// Nanoseconds per lock while another thread takes the same lock in a loop.
fn contended_ns(m: &Arc<Mutex<BTreeMap<u64, u64>>>) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let other = {
        let (m, stop) = (m.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let g = m.lock().expect("lock");
                black_box(g.get(&7));
            }
        })
    };
    let ns = lock_ns(m);
    stop.store(true, Ordering::Relaxed);
    other.join().expect("join");
    ns
}

/// Microseconds per 4 KiB QD1 read and write of `dev`, at offsets spread over 64 MiB.
async fn io_us(dev: &Device) -> (f64, f64) {
    let mut buf = IoBuf::zeroed(4096);
    let t = Instant::now();
    for i in 0..OPS {
        buf = dev
            .read((i * 7919 % 16384) * 4096, buf)
            .await
            .expect("read");
    }
    let read = t.elapsed().as_nanos() as f64 / OPS as f64 / 1000.0;
    let t = Instant::now();
    for i in 0..OPS {
        buf = dev
            .write((i * 7919 % 16384) * 4096, buf, WriteFlags::default())
            .await
            .expect("write");
    }
    let write = t.elapsed().as_nanos() as f64 / OPS as f64 / 1000.0;
    (read, write)
}

/// Per-I/O figures of a thick volume and of the RAM device alone, on one reactor.
async fn pool_vs_raw() -> [(f64, f64); 2] {
    let raw: Device = Arc::new(MallocDevice::new("raw", 128 << 20, 512));
    let under: Device = Arc::new(MallocDevice::new("under", 256 << 20, 512));
    let pool = Pool::create(under, &CreateOptions::default())
        .await
        .expect("pool");
    pool.create_volume("v", 64 << 20, false)
        .await
        .expect("volume");
    let vol = pool.open("v").expect("open");
    // Written once, so every cluster is data the volume owns (reads and writes in place).
    for dev in [&vol, &raw] {
        for i in 0..64u64 {
            dev.write(i << 20, IoBuf::zeroed(1 << 20), WriteFlags::default())
                .await
                .expect("fill");
        }
    }
    [io_us(&vol).await, io_us(&raw).await]
}

/// Nanoseconds per `call` round trip from reactor 0 to reactor 1.
async fn call_ns(other: reactor::ReactorHandle) -> f64 {
    let t = Instant::now();
    for i in 0..OPS / 4 {
        black_box(other.call(move || async move { i + 1 }).await);
    }
    t.elapsed().as_nanos() as f64 / (OPS / 4) as f64
}

fn on_reactor<T: Send + 'static, F: std::future::Future<Output = T> + 'static>(
    rt: &Runtime,
    make: impl FnOnce() -> F + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    rt.handles()[0].spawn(move || async move {
        let _ = tx.send(make().await);
    });
    rx.recv().expect("answer")
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let map: BTreeMap<u64, u64> = (0..1024).map(|i| (i, i)).collect();
    let m = Arc::new(Mutex::new(map));
    let rt = Runtime::start(Config {
        cores: 2,
        pin: false,
        mode: PollMode::Adaptive,
        ..Config::default()
    })
    .expect("reactors");
    let (mut vol_r, mut vol_w, mut raw_r, mut raw_w) = (vec![], vec![], vec![], vec![]);
    let (mut un, mut con, mut call, mut call_poll) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let [(vr, vw), (rr, rw)] = on_reactor(&rt, pool_vs_raw);
        vol_r.push(vr);
        vol_w.push(vw);
        raw_r.push(rr);
        raw_w.push(rw);
        un.push(lock_ns(&m));
        con.push(contended_ns(&m));
        let other = rt.handles()[1].clone();
        call.push(on_reactor(&rt, move || call_ns(other)));
    }
    rt.shutdown();
    // The best case for a message: both reactors spinning (two cores busy all the time).
    let spinning = Runtime::start(Config {
        cores: 2,
        pin: false,
        mode: PollMode::Poll,
        ..Config::default()
    })
    .expect("reactors");
    for _ in 0..rounds {
        let other = spinning.handles()[1].clone();
        call_poll.push(on_reactor(&spinning, move || call_ns(other)));
    }
    spinning.shutdown();
    let (vr, vw, rr, rw) = (median(vol_r), median(vol_w), median(raw_r), median(raw_w));
    println!("medians of {rounds} rounds ({OPS} I/Os each, RAM device, one reactor, QD1):");
    println!(
        "  pool volume 4k read  {vr:.3} us   RAM device {rr:.3} us   pool overhead {:.0} ns",
        (vr - rr) * 1000.0
    );
    println!(
        "  pool volume 4k write {vw:.3} us   RAM device {rw:.3} us   pool overhead {:.0} ns",
        (vw - rw) * 1000.0
    );
    println!(
        "  Mutex lock + map lookup, uncontended     {:.1} ns",
        median(un)
    );
    println!(
        "  Mutex lock + map lookup, contended       {:.1} ns",
        median(con)
    );
    println!(
        "  cross-reactor call round trip, adaptive  {:.1} ns",
        median(call)
    );
    println!(
        "  cross-reactor call round trip, poll      {:.1} ns",
        median(call_poll)
    );
}
