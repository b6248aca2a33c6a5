//! In-process pool benchmark (no network): a pool volume vs the raw device under it, on one
//! reactor, same file, same run. Used by `cargo xtask bench-pool`, which writes
//! docs/benchmarks-pool.md.
//!
//! The raw workloads run on the last GiB of the file (inside the pool's free space, which the
//! pool never reads), alternating with the same workload on the volume, `ROUNDS` times: each
//! ratio is the median of per-round ratios, so a disk whose speed drifts during the run moves
//! both sides alike.
//!
//! usage: pool_bench FILE [SECONDS [ROUNDS]]

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use blockdev::loadgen::{Fresh, Load, median, run};
use blockdev::{Device, IoBuf, WriteFlags};
use pool::pool::{CreateOptions, Pool};
use reactor::{Config, PollMode, Runtime};

const GIB: u64 = 1 << 30;
const CLUSTER: u64 = 128 * 1024;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Writes `[base, base+len)` once, 1 MiB at a time, and flushes.
async fn fill(dev: &Device, base: u64, len: u64) {
    let mut off = 0;
    while off < len {
        dev.write(base + off, IoBuf::zeroed(1 << 20), WriteFlags::default())
            .await
            .expect("fill");
        off += 1 << 20;
    }
    dev.flush().await.expect("flush");
}

async fn bench(path: String, secs: f64, rounds: usize) -> String {
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
    // The pool over the file, a thick volume fully written, and the raw comparison region
    // (the file's last GiB: free pool clusters) written too, so both read allocated blocks.
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
    fill(&thick, 0, GIB).await;
    let raw_base = raw.geometry().size() - GIB;
    fill(&raw, raw_base, GIB).await;
    // (a) alternating raw and volume, `rounds` times per workload.
    let mut raw_res = Vec::new();
    let mut a = Vec::new();
    let mut ratios = Vec::new();
    for (_, l) in loads {
        let (mut r_iops, mut r_lat, mut v_iops, mut v_lat, mut q) =
            (vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..rounds {
            let r = run(raw.clone(), raw_base, GIB, l, secs, None).await;
            let v = run(thick.clone(), 0, GIB, l, secs, None).await;
            r_iops.push(r.0);
            r_lat.push(r.1);
            v_iops.push(v.0);
            v_lat.push(v.1);
            q.push(v.0 / r.0);
        }
        raw_res.push((median(r_iops), median(r_lat)));
        a.push((median(v_iops), median(v_lat)));
        ratios.push((
            median(q.clone()),
            q.iter().copied().fold(f64::MAX, f64::min),
            q.iter().copied().fold(0.0, f64::max),
        ));
    }
    // (b) first writes into a thin volume.
    pool.create_volume("thin", GIB, true).await.unwrap();
    let thin = pool.open("thin").unwrap();
    let fresh = Rc::new(Cell::new(0)); // clusters 0.. of the thin volume
    let b1 = run(
        thin.clone(),
        0,
        GIB,
        loads[2].1,
        secs,
        Some(Fresh {
            next: fresh.clone(),
            unit: CLUSTER,
            limit: 1024,
        }),
    )
    .await;
    let b32 = run(
        thin.clone(),
        0,
        GIB,
        loads[3].1,
        secs,
        Some(Fresh {
            next: fresh.clone(),
            unit: CLUSTER,
            limit: 4096,
        }),
    )
    .await;
    thin.flush().await.unwrap();
    // (c) copy-on-write: snapshot the thick volume, then write to it.
    pool.snapshot("thick", "snap").await.unwrap();
    let cow = Rc::new(Cell::new(0)); // clusters 0.. of the thick volume, shared with the snapshot
    let c1 = run(
        thick.clone(),
        0,
        GIB,
        loads[2].1,
        secs,
        Some(Fresh {
            next: cow.clone(),
            unit: CLUSTER,
            limit: 1024,
        }),
    )
    .await;
    let c32 = run(
        thick.clone(),
        0,
        GIB,
        loads[3].1,
        secs,
        Some(Fresh {
            next: cow.clone(),
            unit: CLUSTER,
            limit: 4096,
        }),
    )
    .await;
    let c_read = run(thick.clone(), 0, GIB, loads[1].1, secs, None).await;
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
        "| workload | raw IOPS | (a) allocated volume IOPS | (a) ÷ raw (median) | per-round range | raw mean µs | (a) mean µs |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---|---:|---:|");
    for (i, (label, _)) in loads.iter().enumerate() {
        let (r, v, q) = (raw_res[i], a[i], ratios[i]);
        let _ = writeln!(
            out,
            "| {label} | {:.0} | {:.0} | {:.2} | {:.2}–{:.2} | {:.1} | {:.1} |",
            r.0, v.0, q.0, q.1, q.2, r.1, v.1
        );
    }
    let qd32 = ratios[1].0.min(ratios[3].0);
    let _ = writeln!(
        out,
        "\n**{}** (a) ≥ 0.95× raw IOPS at QD32 (worse of read and write: {qd32:.2}×).",
        if qd32 >= 0.95 { "PASS" } else { "MISS" }
    );
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
    let path = args
        .next()
        .expect("usage: pool_bench FILE [SECONDS [ROUNDS]]");
    let secs: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let rounds: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
    let rt = Runtime::start(Config {
        cores: 1,
        mode: PollMode::Adaptive,
        pin: true,
        ..Config::default()
    })
    .expect("runtime");
    let (tx, rx) = std::sync::mpsc::channel();
    rt.handles()[0].spawn(move || async move {
        let _ = tx.send(bench(path, secs, rounds.max(1)).await);
    });
    let out = rx.recv().expect("bench finished");
    rt.shutdown();
    print!("{out}");
}
