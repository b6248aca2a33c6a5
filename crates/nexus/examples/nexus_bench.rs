//! In-process nexus benchmark (no network): a nexus over 1, 2 and 3 file children against the
//! bare first child, and rebuild throughput against a raw copy of the same bytes. Used by
//! `cargo xtask bench-nexus`, which writes docs/benchmarks-nexus.md.
//!
//! Every child is a file on the same disk (the machine has one), so 3 replicas write 3× the
//! bytes to that one disk: the ratios show the nexus's cost plus that disk's limit, not the
//! multi-node case where each replica has its own disk.
//!
//! usage: nexus_bench DIR [SECONDS [ROUNDS]]

use std::time::Instant;

use blockdev::loadgen::{Load, median, run};
use blockdev::{Device, IoBuf, WriteFlags};
use nexus::{ChildSpec, Nexus, NexusOptions};
use reactor::{Config, PollMode, Runtime};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn open(dir: &str, name: &str) -> Device {
    blockdev::open_uri(name, &format!("uring://{dir}/{name}.img?size=1GiB")).expect("open")
}

async fn fill(dev: &Device) {
    for i in 0..GIB / MIB {
        let mut b = IoBuf::zeroed(MIB as usize);
        b[..8].copy_from_slice(&i.to_le_bytes());
        b[MIB as usize - 1] = 1;
        dev.write(i * MIB, b, WriteFlags::default())
            .await
            .expect("fill");
    }
    dev.flush().await.expect("flush");
}

async fn nexus(children: &[&Device]) -> Device {
    let specs = children
        .iter()
        .enumerate()
        .map(|(i, d)| ChildSpec {
            name: format!("c{i}"),
            dev: (*d).clone(),
            healthy: true,
        })
        .collect();
    Nexus::create("bench", GIB, specs, None, NexusOptions::default())
        .await
        .expect("nexus")
}

/// Copies `src` to `dst` in 1 MiB steps, `qd` at a time; returns MiB/s.
async fn raw_copy(src: &Device, dst: &Device, qd: u64) -> f64 {
    let t = Instant::now();
    let mut off = 0;
    while off < GIB {
        let mut batch = Vec::new();
        for k in 0..qd {
            let at = off + k * MIB;
            if at >= GIB {
                break;
            }
            let (s, d) = (src.clone(), dst.clone());
            batch.push(reactor::spawn_local(async move {
                let b = s
                    .read(at, IoBuf::recycled(MIB as usize))
                    .await
                    .expect("read");
                d.write(at, b, WriteFlags::default()).await.expect("write");
            }));
        }
        off += qd * MIB;
        for h in batch {
            h.await;
        }
    }
    dst.flush().await.expect("flush");
    (GIB / MIB) as f64 / t.elapsed().as_secs_f64()
}

async fn bench(dir: String, secs: f64, rounds: usize) -> String {
    let c: Vec<Device> = (0..4).map(|i| open(&dir, &format!("c{i}"))).collect();
    for d in &c[..3] {
        fill(d).await;
    }
    let configs: Vec<(&str, Device)> = vec![
        ("bare child", c[0].clone()),
        ("nexus, 1 replica", nexus(&[&c[0]]).await),
        ("nexus, 2 replicas", nexus(&[&c[0], &c[1]]).await),
        ("nexus, 3 replicas", nexus(&[&c[0], &c[1], &c[2]]).await),
    ];
    let loads = [
        ("4k randwrite QD32", true, 32),
        ("4k randread QD32", false, 32),
        ("4k randwrite QD1", true, 1),
        ("4k randread QD1", false, 1),
    ];
    let mut out = String::new();
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "| workload | bare IOPS | 1 replica | 2 replicas | 3 replicas | 3 ÷ 1 replicas (median) | per-round range | mean µs bare / 1 / 2 / 3 |\n|---|---:|---:|---:|---:|---:|---|---|"
    );
    let mut write_ratio = 0.0;
    for (label, write, qd) in loads {
        let load = Load {
            write,
            bs: 4096,
            qd,
            random: true,
        };
        let mut iops = vec![Vec::new(); configs.len()];
        let mut lat = vec![Vec::new(); configs.len()];
        let mut q = Vec::new();
        for _ in 0..rounds {
            let mut this = Vec::new();
            for (i, (_, dev)) in configs.iter().enumerate() {
                let (x, l) = run(dev.clone(), 0, GIB, load, secs, None).await;
                iops[i].push(x);
                lat[i].push(l);
                this.push(x);
            }
            q.push(this[3] / this[1]);
        }
        let m: Vec<f64> = iops.into_iter().map(median).collect();
        let l: Vec<f64> = lat.into_iter().map(median).collect();
        let ratio = median(q.clone());
        if label == "4k randwrite QD32" {
            write_ratio = ratio;
        }
        let lo = q.iter().copied().fold(f64::MAX, f64::min);
        let hi = q.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "| {label} | {:.0} | {:.0} | {:.0} | {:.0} | {ratio:.2} | {lo:.2}–{hi:.2} | {:.0} / {:.0} / {:.0} / {:.0} |",
            m[0], m[1], m[2], m[3], l[0], l[1], l[2], l[3]
        );
    }
    let _ = writeln!(
        out,
        "\n**{}** 3-replica write IOPS ≥ 0.5× 1-replica (QD32: {write_ratio:.2}×).",
        if write_ratio >= 0.5 { "PASS" } else { "MISS" }
    );
    drop(configs);

    // Rebuild: c3 joins a nexus over c0 (full, every block is data) vs a raw copy c0 → c3.
    let mut rb = Vec::new();
    let mut raw1 = Vec::new();
    let mut raw4 = Vec::new();
    for _ in 0..rounds.min(2) {
        raw1.push(raw_copy(&c[0], &c[3], 1).await);
        raw4.push(raw_copy(&c[0], &c[3], 4).await);
        let n = Nexus::create(
            "rb",
            GIB,
            vec![
                ChildSpec {
                    name: "c0".into(),
                    dev: c[0].clone(),
                    healthy: true,
                },
                ChildSpec {
                    name: "c3".into(),
                    dev: c[3].clone(),
                    healthy: false,
                },
            ],
            None,
            NexusOptions::default(),
        )
        .await
        .expect("nexus");
        let r = n.rebuild_child("c3").await.expect("rebuild");
        rb.push((r.copied + r.zeroed) as f64 / MIB as f64 / r.elapsed.as_secs_f64());
    }
    let (rb, raw1, raw4) = (median(rb), median(raw1), median(raw4));
    let _ = writeln!(
        out,
        "\n| copy of 1 GiB (all data) | MiB/s | rebuild ÷ raw |\n|---|---:|---:|\n| raw copy, 1 MiB at a time | {raw1:.0} | {:.2} |\n| raw copy, 4 × 1 MiB in flight | {raw4:.0} | {:.2} |\n| nexus full rebuild (1 MiB segments under range locks) | {rb:.0} | — |",
        rb / raw1,
        rb / raw4
    );
    let worst = rb / raw1.max(raw4);
    let _ = writeln!(
        out,
        "\n**{}** full rebuild ≥ 0.7× raw copy speed ({worst:.2}× of the faster raw copy).",
        if worst >= 0.7 { "PASS" } else { "MISS" }
    );
    out
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .expect("usage: nexus_bench DIR [SECONDS [ROUNDS]]");
    let secs: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(3.0);
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
        let _ = tx.send(bench(dir, secs, rounds.max(1)).await);
    });
    let out = rx.recv().expect("bench finished");
    rt.shutdown();
    print!("{out}");
}
