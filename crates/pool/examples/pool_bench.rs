//! In-process pool benchmark (no network): a pool volume vs the raw device under it, on one
//! reactor, same file, same run. Used by `cargo xtask bench-pool`, which writes
//! docs/benchmarks-pool.md.
//!
//! usage: pool_bench FILE [SECONDS]

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use blockdev::{Device, IoBuf, WriteFlags};
use pool::pool::{CreateOptions, Pool};
use reactor::{Config, PollMode, Runtime, spawn_local};

const GIB: u64 = 1 << 30;
const CLUSTER: u64 = 128 * 1024;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[derive(Clone, Copy)]
struct Load {
    write: bool,
    bs: usize,
    qd: usize,
    random: bool,
}

/// Runs `load` against `dev` over `[0, span)` for `secs`; returns IOPS and mean latency (µs).
/// With `fresh`, every write goes to a cluster never written before (`fresh` counts them)
/// and the run ends early once `limit` clusters have been used.
async fn run(
    dev: Device,
    span: u64,
    load: Load,
    secs: f64,
    fresh: Option<Rc<Cell<u64>>>,
    limit: u64,
) -> (f64, f64) {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let ops = Rc::new(Cell::new(0u64));
    let lat = Rc::new(Cell::new(0u64));
    let mut handles = Vec::new();
    for q in 0..load.qd {
        let (dev, ops, lat, fresh) = (dev.clone(), ops.clone(), lat.clone(), fresh.clone());
        handles.push(spawn_local(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((q as u64 + 1) * 7919));
            let blocks = span / load.bs as u64;
            let mut seq = q as u64 * blocks / load.qd as u64;
            while Instant::now() < deadline {
                let block = match (&fresh, load.random) {
                    // First writes: every request goes to a block never written before.
                    (Some(next), _) => {
                        let b = next.get();
                        if b >= limit {
                            break;
                        }
                        next.set(b + 1);
                        b * CLUSTER / load.bs as u64
                    }
                    (None, true) => rng.next() % blocks,
                    (None, false) => {
                        seq = (seq + 1) % blocks;
                        seq
                    }
                };
                let off = block * load.bs as u64;
                let t = Instant::now();
                let buf = reactor::alloc_buf(load.bs);
                let r = if load.write {
                    dev.write(off, buf, WriteFlags::default()).await.map(drop)
                } else {
                    dev.read(off, buf).await.map(drop)
                };
                r.expect("benchmark I/O");
                lat.set(lat.get() + t.elapsed().as_nanos() as u64);
                ops.set(ops.get() + 1);
            }
        }));
    }
    let t0 = Instant::now();
    for h in handles {
        h.await;
    }
    let n = ops.get().max(1);
    (
        n as f64 / t0.elapsed().as_secs_f64(),
        lat.get() as f64 / n as f64 / 1000.0,
    )
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

async fn bench(path: String, secs: f64) -> String {
    let uri = format!("uring://{path}?size=3GiB");
    let raw: Device = blockdev::open_uri("raw", &uri).expect("open the bench file");
    let mut out = String::new();
    let loads = [
        (
            "4k randread QD1",
            Load {
                write: false,
                bs: 4096,
                qd: 1,
                random: true,
            },
        ),
        (
            "4k randread QD32",
            Load {
                write: false,
                bs: 4096,
                qd: 32,
                random: true,
            },
        ),
        (
            "4k randwrite QD1",
            Load {
                write: true,
                bs: 4096,
                qd: 1,
                random: true,
            },
        ),
        (
            "4k randwrite QD32",
            Load {
                write: true,
                bs: 4096,
                qd: 32,
                random: true,
            },
        ),
        (
            "1M read QD8",
            Load {
                write: false,
                bs: 1 << 20,
                qd: 8,
                random: false,
            },
        ),
        (
            "1M write QD8",
            Load {
                write: true,
                bs: 1 << 20,
                qd: 8,
                random: false,
            },
        ),
    ];
    // Raw device: the last GiB of the file (the pool's data area will be elsewhere only in
    // part, so fill it first to compare like with like).
    let fill = Load {
        write: true,
        bs: 1 << 20,
        qd: 8,
        random: false,
    };
    run(raw.clone(), GIB, fill, 3.0, None, 0).await;
    let mut raw_res = Vec::new();
    for (_, l) in loads {
        raw_res.push(run(raw.clone(), GIB, l, secs, None, 0).await);
    }
    // The pool over the same file.
    let t = Instant::now();
    let pool = Pool::create(
        raw.clone(),
        &CreateOptions {
            name: "bench".into(),
            ..CreateOptions::default()
        },
    )
    .await
    .expect("create pool");
    let create_ms = t.elapsed().as_secs_f64() * 1000.0;
    pool.create_volume("thick", GIB, false).await.unwrap();
    let thick = pool.open("thick").unwrap();
    // Fully allocate (write every cluster once).
    let mut off = 0;
    while off < GIB {
        thick
            .write(off, IoBuf::zeroed(1 << 20), WriteFlags::default())
            .await
            .unwrap();
        off += 1 << 20;
    }
    thick.flush().await.unwrap();
    let mut a = Vec::new();
    for (_, l) in loads {
        a.push(run(thick.clone(), GIB, l, secs, None, 0).await);
    }
    // (b) first writes into a thin volume.
    pool.create_volume("thin", GIB, true).await.unwrap();
    let thin = pool.open("thin").unwrap();
    let fresh = Rc::new(Cell::new(0)); // clusters 0.. of the thin volume
    let b1 = run(
        thin.clone(),
        GIB,
        loads[2].1,
        secs,
        Some(fresh.clone()),
        1024,
    )
    .await;
    let b32 = run(
        thin.clone(),
        GIB,
        loads[3].1,
        secs,
        Some(fresh.clone()),
        4096,
    )
    .await;
    thin.flush().await.unwrap();
    // (c) copy-on-write: snapshot the thick volume, then write to it.
    pool.snapshot("thick", "snap").await.unwrap();
    let cow = Rc::new(Cell::new(0)); // clusters 0.. of the thick volume, shared with the snapshot
    let c1 = run(
        thick.clone(),
        GIB,
        loads[2].1,
        secs,
        Some(cow.clone()),
        1024,
    )
    .await;
    let c32 = run(
        thick.clone(),
        GIB,
        loads[3].1,
        secs,
        Some(cow.clone()),
        4096,
    )
    .await;
    let c_read = run(thick.clone(), GIB, loads[1].1, secs, None, 0).await;
    thick.flush().await.unwrap();
    // Metadata cost and import time with 1,000 volumes.
    let sb = pool.superblock().clone();
    for i in 0..1000 {
        pool.create_volume(&format!("v{i:04}"), 1 << 20, true)
            .await
            .unwrap();
    }
    drop((thick, thin));
    drop(pool);
    let t = Instant::now();
    let imported = Pool::import(raw.clone()).await.expect("import");
    let import_ms = t.elapsed().as_secs_f64() * 1000.0;
    let vols = imported.list().len();
    let pool_gib = (sb.total_clusters * sb.cluster_size as u64) as f64 / GIB as f64;

    use std::fmt::Write;
    let _ = writeln!(
        out,
        "| workload | raw IOPS | (a) allocated volume IOPS | (a) ÷ raw | raw mean µs | (a) mean µs |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    for (i, (label, _)) in loads.iter().enumerate() {
        let (r, v) = (raw_res[i], a[i]);
        let _ = writeln!(
            out,
            "| {label} | {:.0} | {:.0} | {:.2} | {:.1} | {:.1} |",
            r.0,
            v.0,
            v.0 / r.0,
            r.1,
            v.1
        );
    }
    let _ = writeln!(
        out,
        "\n| workload | IOPS | mean µs | ÷ raw (same workload) |\n|---|---:|---:|---:|"
    );
    let _ = writeln!(
        out,
        "| (b) thin first writes 4k QD1 | {:.0} | {:.1} | {:.2} |",
        b1.0,
        b1.1,
        b1.0 / raw_res[2].0
    );
    let _ = writeln!(
        out,
        "| (b) thin first writes 4k QD32 | {:.0} | {:.1} | {:.2} |",
        b32.0,
        b32.1,
        b32.0 / raw_res[3].0
    );
    let _ = writeln!(
        out,
        "| (c) after snapshot, first writes (copy-on-write) 4k QD1 | {:.0} | {:.1} | {:.2} |",
        c1.0,
        c1.1,
        c1.0 / raw_res[2].0
    );
    let _ = writeln!(
        out,
        "| (c) after snapshot, first writes (copy-on-write) 4k QD32 | {:.0} | {:.1} | {:.2} |",
        c32.0,
        c32.1,
        c32.0 / raw_res[3].0
    );
    let _ = writeln!(
        out,
        "| (c) reads of a volume with a snapshot 4k QD32 | {:.0} | {:.1} | {:.2} |",
        c_read.0,
        c_read.1,
        c_read.0 / raw_res[1].0
    );
    let _ = writeln!(out, "\n| figure | value |\n|---|---|");
    let _ = writeln!(out, "| cluster size | {} KiB |", sb.cluster_size / 1024);
    let _ = writeln!(
        out,
        "| fixed metadata area (superblocks, 2 checkpoint slots, journal) | {:.1} MiB for a {pool_gib:.2} GiB pool ({:.1} MiB per GiB of pool) |",
        sb.data_start as f64 / 1048576.0,
        sb.data_start as f64 / 1048576.0 / pool_gib
    );
    let _ = writeln!(
        out,
        "| map per GiB of volume | {} KiB (8 bytes per {} KiB cluster) |",
        GIB / sb.cluster_size as u64 * 8 / 1024,
        sb.cluster_size / 1024
    );
    let _ = writeln!(out, "| pool create | {create_ms:.1} ms |");
    let _ = writeln!(
        out,
        "| pool import with {vols} volumes and snapshots | {import_ms:.1} ms |"
    );
    let _ = writeln!(
        out,
        "| process memory (VmRSS) at the end | {:.1} MiB |",
        rss_kib() as f64 / 1024.0
    );
    out
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: pool_bench FILE [SECONDS]");
    let secs: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let rt = Runtime::start(Config {
        cores: 1,
        mode: PollMode::Adaptive,
        pin: true,
        ..Config::default()
    })
    .expect("runtime");
    let (tx, rx) = std::sync::mpsc::channel();
    rt.handles()[0].spawn(move || async move {
        let _ = tx.send(bench(path, secs).await);
    });
    let out = rx.recv().expect("bench finished");
    rt.shutdown();
    print!("{out}");
}
