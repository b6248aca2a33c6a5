//! Nexus benchmark: replication to remote replicas over NVMe/TCP, rebuild throughput, and
//! partial rebuilds against the amount of data dirtied.
//!
//! One local replica (a file through io_uring, `uring://`, in this process) and two remote
//! ones: each a `ballast-engine` serving its own file over NVMe/TCP on 127.0.0.1, reached
//! through Ballast's initiator (`nvmf://`). This process runs one reactor that drives 4k
//! random I/O (`blockdev::loadgen`) against
//!
//! - the bare local file,
//! - a nexus over the local replica alone (1 replica),
//! - a nexus over the local replica and one remote (2 replicas),
//! - a nexus over the local replica and both remotes (3 replicas),
//!
//! once with remote replicas on RAM devices of their own (as on other nodes, whose disks share
//! nothing with this one: the target's set-up) and once with them on files on the local
//! replica's disk (every write then reaches that disk once per replica),
//!
//! the four alternating (their order rotating) within every round, so drift of the shared
//! disk and other work on the machine hit them alike; ratios are medians of per-round ratios.
//!
//! Then: a full rebuild of a remote replica (joining a nexus over the local file) against a
//! raw sequential copy of the same GiB from the local file to that replica (1 MiB at a time,
//! and 4 × 1 MiB in flight); and partial rebuilds of a faulted remote replica after writes to
//! 16, 64, 256 and 1024 random distinct 1 MiB regions (the dirty-region log on a RAM device).
//!
//! Prints the results as Markdown on stdout (progress on stderr). Used by
//! `cargo xtask bench-nexus`, which writes docs/benchmarks-nexus.md.
//!
//! usage: nexus_bench ENGINE DIR [SECS [ROUNDS [REPLICA_CPU NEXUS_CPU]]]
//! (with CPUs given, both replica engines run under `taskset -c REPLICA_CPU`; the caller pins
//! this process to NEXUS_CPU.)
//!
//! Environment: `NEXUS_BENCH_REPLICA_MODE=poll|interrupt|adaptive` sets how the replica
//! engines' reactors wait (default interrupt: the two engines share one core, and adaptive
//! reactors spin while their file I/O is in flight, each taking the core from the other —
//! on separate nodes each would have its own); `NEXUS_BENCH_ONLY=TEXT`
//! runs only the parts whose label contains TEXT (a workload such as `QD32`, `rebuild` for
//! the full rebuild, `partial`), for quick looks. Both are named in the output.

mod bench_common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bench_common::{CpuMeter, Engine, GIB, MIB, fill, on, range};
use blockdev::loadgen::{Load, Sample, median, run_sampled};
use blockdev::{Device, IoBuf, WriteFlags};
use nexus::rebuild::RebuildReport;
use nexus::{ChildSpec, ChildState, Nexus, NexusOptions};
use reactor::{Config, PollMode, Runtime};

/// Warm-up before each measurement (discarded).
const WARMUP_SECS: f64 = 0.5;
/// Regions dirtied before each partial rebuild (1 MiB each; the last is every region).
const PARTIAL_REGIONS: [u64; 4] = [16, 64, 256, 1024];
/// The partial-rebuild rule covers cases with at least this many dirty regions (below, the
/// rebuild's fixed costs — a flush, a log save — weigh more than the copying).
const PROPORTIONAL_FROM: u64 = 64;
/// Time per dirtied MiB must stay within this factor of the all-dirty case's (either way).
const PROPORTIONAL_FACTOR: f64 = 2.0;

#[derive(Clone, Copy, Debug)]
struct Workload {
    label: &'static str,
    load: Load,
}

const fn random4k(write: bool, qd: usize) -> Load {
    Load {
        write,
        bs: 4096,
        qd,
        random: true,
    }
}

const WORKLOADS: [Workload; 4] = [
    Workload {
        label: "4k randwrite QD32",
        load: random4k(true, 32),
    },
    Workload {
        label: "4k randread QD32",
        load: random4k(false, 32),
    },
    Workload {
        label: "4k randwrite QD1",
        load: random4k(true, 1),
    },
    Workload {
        label: "4k randread QD1",
        load: random4k(false, 1),
    },
];

const CONFIGS: [&str; 4] = ["bare local file", "1 replica", "2 replicas", "3 replicas"];

/// Where the remote replicas keep their data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    /// On RAM devices of their own engines: as on other nodes, every replica's writes land on
    /// a device of its own, so the figures show what replication costs the nexus.
    OwnDevices,
    /// On files on this machine's one disk, beside the local replica: every write lands on
    /// the disk once per replica, so the disk's own IOPS ÷ replicas bounds the nexus.
    SharedDisk,
}

/// One measurement.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    s: Sample,
    /// This process (the nexus) in % of one core.
    nexus_cpu: f64,
    /// Both replica engines together, in % of one core.
    engines_cpu: f64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!(
            "usage: nexus_bench ENGINE DIR [SECS [ROUNDS [REPLICA_CPU NEXUS_CPU]]]\n(use `cargo xtask bench-nexus`)"
        );
        std::process::exit(2);
    }
    let engine_bin = PathBuf::from(&args[0]);
    let dir = PathBuf::from(&args[1]);
    let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let rounds: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3).max(1);
    let replica_cpu = args.get(4).cloned();
    let replica_mode =
        std::env::var("NEXUS_BENCH_REPLICA_MODE").unwrap_or_else(|_| "interrupt".into());
    replica_mode
        .parse::<PollMode>()
        .unwrap_or_else(|e| panic!("NEXUS_BENCH_REPLICA_MODE: {e}"));
    let only = std::env::var("NEXUS_BENCH_ONLY").ok();
    let wanted = |label: &str| only.as_deref().is_none_or(|o| label.contains(o));
    std::fs::create_dir_all(&dir).expect("bench directory");
    let dir = dir.canonicalize().expect("bench directory");
    let imgs: Vec<PathBuf> = ["local", "replica1", "replica2"]
        .iter()
        .map(|n| dir.join(format!("nexus-{n}.img")))
        .collect();

    let rt = Runtime::start(Config {
        cores: 1,
        pin: false,
        mode: PollMode::Adaptive,
        ..Config::default()
    })
    .expect("start a reactor");
    let started = Instant::now();
    // Every file fully written first, so reads and rebuilds see data everywhere.
    let files: Vec<Device> = imgs
        .iter()
        .enumerate()
        .map(|(i, img)| {
            let _ = std::fs::remove_file(img);
            blockdev::open_uri(
                &format!("f{i}"),
                &format!("uring://{}?size=1GiB", img.display()),
            )
            .expect("open a file")
        })
        .collect();
    for (f, img) in files.iter().zip(&imgs) {
        eprintln!("nexus_bench: writing {} (1 GiB, O_DIRECT)", img.display());
        let f = f.clone();
        on(&rt, move || async move { fill(&f).await });
    }
    let local = files[0].clone();
    drop(files);

    // Two replica engines over files on the same disk as the local replica, and two over RAM
    // devices of their own (standing in for other nodes' disks, which share nothing with
    // this one).
    let mut engines: Vec<Engine> = (1..=2)
        .map(|i| format!("uring://{}", imgs[i].display()))
        .chain((1..=2).map(|_| "malloc:///ram?size=1GiB".to_string()))
        .enumerate()
        .map(|(i, dev)| {
            Engine::start(
                &engine_bin,
                &dev,
                &dir.join(format!("nexus-replica{i}.log")),
                replica_cpu.as_deref(),
                &replica_mode,
            )
        })
        .collect();
    let engine_pids: Vec<u32> = engines.iter().map(Engine::pid).collect();
    let mut remotes: Vec<Device> = engines
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let name = format!("replica{}{}", i % 2 + 1, if i < 2 { "" } else { "-ram" });
            eprintln!("nexus_bench: {name} is {}", e.nvmf_uri);
            ballast_engine::devices::open(&name, &e.nvmf_uri, &rt.handles()[0])
                .expect("open nvmf://")
        })
        .collect();
    let ram_remotes = remotes.split_off(2);

    let mut out = String::new();
    let mut targets = Vec::new();
    if WORKLOADS.iter().any(|w| wanted(w.label)) {
        for (setup, devs, pids) in [
            (Setup::OwnDevices, &ram_remotes, &engine_pids[2..]),
            (Setup::SharedDisk, &remotes, &engine_pids[..2]),
        ] {
            let (t, text) = replication(&rt, &local, (setup, devs, pids), secs, rounds, &wanted);
            targets.push(t);
            out.push_str(&text);
        }
    }
    if wanted("rebuild") {
        let (t, text) = full_rebuild(&rt, &local, &remotes[0], engine_pids[0], rounds);
        targets.push(t);
        out.push_str(&text);
    }
    if wanted("partial") {
        let (t, text) = partial_rebuilds(&rt, &local, &remotes[0], rounds);
        targets.push(t);
        out.push_str(&text);
    }
    let total = started.elapsed();

    // The devices go on the reactor they were used on; then the engines flush and exit.
    on(
        &rt,
        move || async move { drop((local, remotes, ram_remotes)) },
    );
    rt.shutdown();
    for e in &mut engines {
        e.stop();
    }
    for img in &imgs {
        let _ = std::fs::remove_file(img);
    }
    let why = if replica_mode == "interrupt" {
        " (`--poll-mode interrupt`: the two share one core, and adaptive reactors spin while \
         their file I/O is in flight, each taking the core from the other; on separate nodes \
         each would have cores of its own; `NEXUS_BENCH_REPLICA_MODE` picks another mode)"
    } else {
        ""
    };
    let mut notes = format!(
        "{rounds} round(s) of {secs} s per workload and configuration, each after a \
         {WARMUP_SECS} s warm-up; whole run {:.0} s. The replica engines run in \
         {replica_mode} mode{why}; this process's reactor in adaptive mode (the engine's \
         default). Reactors in adaptive (or poll) mode spin while I/O is in flight, so CPU % \
         under load is near 100 for a busy reactor and CPU µs/IO (CPU time ÷ requests) is an \
         upper bound, not the cost of a request; the benchmark process's CPU % well under 100 \
         under load means other work on the machine took its core, and those figures are \
         lower than the code's.",
        total.as_secs_f64()
    );
    if let Some(o) = &only {
        notes.push_str(&format!(" Only the parts matching {o:?} were run."));
    }
    print!("## Targets\n\n{}\n\n{out}\n{notes}\n", targets.join("\n"));
}

fn pass(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

fn x2(v: f64) -> String {
    format!("{v:.2}×")
}

/// A nexus named `name` over `children` (name, device, healthy), no fencing.
async fn nexus(name: &str, children: Vec<(&str, Device, bool)>, log: Option<Device>) -> Arc<Nexus> {
    let specs = children
        .into_iter()
        .map(|(n, dev, healthy)| ChildSpec {
            name: n.to_string(),
            dev,
            healthy,
        })
        .collect();
    Nexus::create(name, GIB, specs, log, NexusOptions::default())
        .await
        .expect("create a nexus")
}

/// 4k random I/O: the bare local file, then a nexus over 1, 2 and 3 replicas. Returns the
/// target line and the section.
fn replication(
    rt: &Runtime,
    local: &Device,
    (setup, remotes, engine_pids): (Setup, &[Device], &[u32]),
    secs: f64,
    rounds: usize,
    wanted: &dyn Fn(&str) -> bool,
) -> (String, String) {
    let (l, r1, r2) = (local.clone(), remotes[0].clone(), remotes[1].clone());
    let devs: Vec<Device> = on(rt, move || async move {
        let n1: Device = nexus("n1", vec![("local", l.clone(), true)], None).await;
        let n2: Device = nexus(
            "n2",
            vec![("local", l.clone(), true), ("replica1", r1.clone(), true)],
            None,
        )
        .await;
        let n3: Device = nexus(
            "n3",
            vec![
                ("local", l.clone(), true),
                ("replica1", r1, true),
                ("replica2", r2, true),
            ],
            None,
        )
        .await;
        vec![l, n1, n2, n3]
    });
    let mut pids = vec![std::process::id()];
    pids.extend_from_slice(engine_pids);
    // results[workload][config] = one Run per round.
    let mut results = vec![vec![Vec::<Run>::new(); CONFIGS.len()]; WORKLOADS.len()];
    for round in 0..rounds {
        for (w, wl) in WORKLOADS.iter().enumerate() {
            if !wanted(wl.label) {
                continue;
            }
            for k in 0..CONFIGS.len() {
                let c = (k + round) % CONFIGS.len();
                let (d, load) = (devs[c].clone(), wl.load);
                on(rt, move || async move {
                    run_sampled(d, 0, GIB, load, WARMUP_SECS, None).await
                });
                let meter = CpuMeter::start(&pids);
                let d = devs[c].clone();
                let s = on(rt, move || async move {
                    run_sampled(d, 0, GIB, load, secs, None).await
                });
                let pct = meter.pct();
                let r = Run {
                    s,
                    nexus_cpu: pct[0],
                    engines_cpu: pct[1..].iter().sum(),
                };
                eprintln!(
                    "nexus_bench: {setup:?} round {} {:<18} {:<16} {:>8.0} IOPS {:>8.1} µs mean, nexus {:.0}% CPU, replica engines {:.0}% CPU",
                    round + 1,
                    wl.label,
                    CONFIGS[c],
                    r.s.iops,
                    r.s.mean_us,
                    r.nexus_cpu,
                    r.engines_cpu
                );
                results[w][c].push(r);
            }
        }
    }
    on(rt, move || async move { drop(devs) });

    // Per-round ratios of config a to config b.
    let ratios = |w: usize, a: usize, b: usize, f: fn(&Run) -> f64| -> Vec<f64> {
        results[w][a]
            .iter()
            .zip(&results[w][b])
            .map(|(x, y)| f(x) / f(y))
            .collect()
    };
    let med = |w: usize, c: usize, f: fn(&Run) -> f64| -> f64 {
        median(results[w][c].iter().map(f).collect())
    };
    let iops: fn(&Run) -> f64 = |r| r.s.iops;
    let lat: fn(&Run) -> f64 = |r| r.s.mean_us;
    let ran: Vec<usize> = (0..WORKLOADS.len())
        .filter(|&w| !results[w][0].is_empty())
        .collect();

    let target = match WORKLOADS
        .iter()
        .position(|w| w.label == "4k randwrite QD32")
        .filter(|w| ran.contains(w))
    {
        Some(w) => {
            let q = ratios(w, 3, 1, iops);
            let m = median(q.clone());
            match setup {
                Setup::OwnDevices => format!(
                    "- **{}** 3-replica write IOPS ≥ 0.5× 1-replica (4k randwrite QD32; the \
                     remote replicas on devices of their own, as on other nodes): {:.0} vs \
                     {:.0} IOPS, ratio {} (rounds {}); 2 replicas: {}. With 3 replicas this \
                     process (nexus, local I/O, both initiators) used {:.0}% of its core, the \
                     replica engines {:.0}% of theirs.",
                    pass(m >= 0.5),
                    med(w, 3, iops),
                    med(w, 1, iops),
                    x2(m),
                    range(&q, x2),
                    x2(median(ratios(w, 2, 1, iops))),
                    med(w, 3, |r| r.nexus_cpu),
                    med(w, 3, |r| r.engines_cpu),
                ),
                Setup::SharedDisk => format!(
                    "- (not the target's set-up) with all three replicas on this machine's one \
                     disk, 3 ÷ 1 replicas at 4k randwrite QD32 is {} (rounds {}), 2 ÷ 1 {}: \
                     the disk bounds it, writing every block once per replica: at most the \
                     bare file's {:.0} IOPS ÷ 3 = {} of 1 replica's {:.0}.",
                    x2(m),
                    range(&q, x2),
                    x2(median(ratios(w, 2, 1, iops))),
                    med(w, 0, iops),
                    x2(med(w, 0, iops) / 3.0 / med(w, 1, iops)),
                    med(w, 1, iops),
                ),
            }
        }
        None => "- (4k randwrite QD32 was not run)".to_string(),
    };

    let both = |v: Vec<f64>| format!("{} ({})", x2(median(v.clone())), range(&v, x2));
    let mut s = String::from(match setup {
        Setup::OwnDevices => {
            "## Replication: 4k random I/O, remote replicas on devices of their own\n\n\
             Each remote replica engine serves a 1 GiB RAM device (`malloc://`), standing in \
             for the disk of another node: no write of one replica waits behind another's on \
             a shared device, so these figures show what replicating costs the nexus (its \
             core, the initiators, the network stack). The local replica and the bare volume \
             are the file on this machine's disk, as below. Reads go to the child with the \
             fewest I/Os outstanding, so at QD32 the faster RAM replicas take more of them.\n"
        }
        Setup::SharedDisk => {
            "## Replication: 4k random I/O, all replicas on one disk\n\n\
             Both remote replica engines serve files on this machine's one disk, beside the \
             local replica's: every write reaches the disk once per replica, so at QD32 the \
             disk's own IOPS ÷ replicas is the bound.\n"
        }
    });
    for (intro, f, digits) in [
        (
            "Median IOPS; ratios are medians of the per-round ratios (range over the rounds).",
            iops,
            0,
        ),
        (
            "Median mean latency in µs (submission to completion as the caller sees it; at QD1 \
             this is the figure that matters); ratios as above, of latencies.",
            lat,
            1,
        ),
    ] {
        s.push_str(&format!(
            "\n{intro}\n\n\
             | workload | bare local file | 1 replica | 2 replicas | 3 replicas | 2 ÷ 1 | 3 ÷ 1 |\n\
             |---|--:|--:|--:|--:|--:|--:|\n"
        ));
        for &w in &ran {
            let cells: Vec<String> = (0..CONFIGS.len())
                .map(|c| format!("{:.digits$}", med(w, c, f)))
                .collect();
            s.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                WORKLOADS[w].label,
                cells.join(" | "),
                both(ratios(w, 2, 1, f)),
                both(ratios(w, 3, 1, f)),
            ));
        }
    }
    s.push_str(
        "\nEvery configuration (medians; CPU of the benchmark's process — the load generator, \
         the nexus, the local file's I/O and the initiator — and of both replica engines \
         together, in % of one core). Reads go to the online child with the fewest I/Os \
         outstanding, the local one on a tie, so at QD1 every read goes to the local replica \
         (the replica engines stay idle) and at QD32 they spread over all.\n\n\
         | workload | configuration | IOPS | IOPS range | mean µs | p99 µs | process CPU % | \
         process CPU µs/IO | replica engines CPU % |\n\
         |---|---|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for &w in &ran {
        for (c, label) in CONFIGS.iter().enumerate() {
            let runs = &results[w][c];
            let m = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
            let v: Vec<f64> = runs.iter().map(iops).collect();
            s.push_str(&format!(
                "| {} | {label} | {:.0} | {} | {:.1} | {:.1} | {:.0} | {:.1} | {:.0} |\n",
                WORKLOADS[w].label,
                m(&iops),
                range(&v, |x| format!("{x:.0}")),
                m(&lat),
                m(&|r| r.s.p99_us),
                m(&|r| r.nexus_cpu),
                m(&|r| r.nexus_cpu / 100.0 / r.s.iops * 1e6),
                m(&|r| r.engines_cpu),
            ));
        }
    }
    (target, s)
}

/// Copies the first GiB of `src` to `dst` in 1 MiB steps, `qd` at a time, then flushes;
/// returns MiB/s.
async fn raw_copy(src: Device, dst: Device, qd: u64) -> f64 {
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

/// The full rebuild of remote `replica` (joining a nexus over the local file) vs raw copies
/// local → replica. Returns the target line and the section.
fn full_rebuild(
    rt: &Runtime,
    local: &Device,
    replica: &Device,
    engine_pid: u32,
    rounds: usize,
) -> (String, String) {
    const WAYS: [&str; 3] = [
        "raw copy, 1 MiB at a time",
        "raw copy, 4 × 1 MiB in flight",
        "nexus full rebuild (1 MiB segments under range locks, four at a time)",
    ];
    // mibs[way] and engine CPU % per round.
    let mut mibs = vec![Vec::new(); WAYS.len()];
    let mut cpu = vec![Vec::new(); WAYS.len()];
    for round in 0..rounds {
        for k in 0..WAYS.len() {
            let way = (k + round) % WAYS.len();
            let (l, r) = (local.clone(), replica.clone());
            let meter = CpuMeter::start(&[engine_pid]);
            let v = on(rt, move || async move {
                match way {
                    0 => raw_copy(l, r, 1).await,
                    1 => raw_copy(l, r, 4).await,
                    _ => {
                        let n = nexus(
                            "rebuild",
                            vec![("local", l, true), ("replica1", r, false)],
                            None,
                        )
                        .await;
                        let rep = n.rebuild_child("replica1").await.expect("rebuild");
                        assert!(!rep.partial && rep.copied + rep.zeroed == GIB, "{rep:?}");
                        (rep.copied + rep.zeroed) as f64 / MIB as f64 / rep.elapsed.as_secs_f64()
                    }
                }
            });
            let c = meter.pct()[0];
            eprintln!(
                "nexus_bench: round {} {:<55} {v:>6.0} MiB/s, replica engine {c:.0}% CPU",
                round + 1,
                WAYS[way]
            );
            mibs[way].push(v);
            cpu[way].push(c);
        }
    }
    // Per round: the rebuild against the faster raw copy of that round.
    let q: Vec<f64> = (0..rounds)
        .map(|i| mibs[2][i] / mibs[0][i].max(mibs[1][i]))
        .collect();
    let m = median(q.clone());
    let target = format!(
        "- **{}** full rebuild ≥ 0.7× raw copy speed (1 GiB to a remote replica): {:.0} vs \
         {:.0} MiB/s (per round, the faster of the two raw copies), ratio {} (rounds {}); \
         against the raw copy 1 MiB at a time, like the rebuild: {}",
        pass(m >= 0.7),
        median(mibs[2].clone()),
        median(mibs[0].clone()).max(median(mibs[1].clone())),
        x2(m),
        range(&q, x2),
        x2(median(
            (0..rounds).map(|i| mibs[2][i] / mibs[0][i]).collect()
        )),
    );
    let mut s = String::from(
        "\n## Full rebuild vs a raw copy\n\n\
         1 GiB (all data) from the local file to remote replica 1 over NVMe/TCP. The raw copies \
         read the file and write the replica through the same two devices, without a nexus. \
         The rebuild copies 1 MiB segments, four at a time (each under a range lock: block \
         status of the source, read, write to the replica); the first raw copy goes one 1 MiB \
         step at a time, the second keeps four in flight, like the rebuild.\n\n\
         | copy | MiB/s (median) | range | rebuild ÷ this (median of rounds) | replica engine \
         CPU % |\n|---|--:|--:|--:|--:|\n",
    );
    for (way, label) in WAYS.iter().enumerate() {
        let rq: Vec<f64> = (0..rounds).map(|i| mibs[2][i] / mibs[way][i]).collect();
        s.push_str(&format!(
            "| {label} | {:.0} | {} | {} | {:.0} |\n",
            median(mibs[way].clone()),
            range(&mibs[way], |x| format!("{x:.0}")),
            if way == 2 {
                "—".to_string()
            } else {
                x2(median(rq))
            },
            median(cpu[way].clone()),
        ));
    }
    (target, s)
}

/// One partial rebuild: a nexus over the local file and remote `replica` with a dirty-region
/// log in RAM; the replica faulted, `regions` random distinct 1 MiB regions written in full,
/// the replica rebuilt. Returns the rebuild's report.
async fn partial_once(local: Device, replica: Device, regions: u64, seed: u64) -> RebuildReport {
    let log = blockdev::open_uri("drl", "malloc:///drl?size=1MiB").expect("log device");
    let n = nexus(
        "partial",
        vec![("local", local, true), ("replica1", replica, true)],
        Some(log),
    )
    .await;
    n.fault_child("replica1", "benchmark").await.expect("fault");
    // A Fisher–Yates shuffle of the regions; the first `regions` are dirtied.
    let count = GIB / MIB;
    let mut order: Vec<u64> = (0..count).collect();
    let mut x = seed | 1;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let dev: Device = n.clone();
    for &r in &order[..regions as usize] {
        let mut b = IoBuf::zeroed(MIB as usize);
        b[..8].copy_from_slice(&(seed ^ r).to_le_bytes());
        dev.write(r * MIB, b, WriteFlags::default())
            .await
            .expect("write a region");
    }
    assert_eq!(n.drl().dirty_count(), regions, "dirty regions");
    let rep = n.rebuild_child("replica1").await.expect("partial rebuild");
    assert!(
        n.children().iter().all(|c| c.state == ChildState::Online),
        "every child online after the rebuild"
    );
    rep
}

/// Partial rebuilds after 16 … 1024 dirtied regions. Returns the target line and the section.
fn partial_rebuilds(
    rt: &Runtime,
    local: &Device,
    replica: &Device,
    rounds: usize,
) -> (String, String) {
    let cases = PARTIAL_REGIONS.len();
    let mut reports: Vec<Vec<RebuildReport>> = vec![Vec::new(); cases];
    for round in 0..rounds {
        for k in 0..cases {
            let case = (k + round) % cases;
            let regions = PARTIAL_REGIONS[case];
            let (l, r) = (local.clone(), replica.clone());
            let seed = 0x9E37_79B9_7F4A_7C15 ^ ((round * cases + case) as u64 + 1);
            let rep = on(rt, move || async move {
                partial_once(l, r, regions, seed).await
            });
            eprintln!(
                "nexus_bench: round {} partial rebuild, {regions:>4} dirty regions: {} MiB \
                 copied, {} MiB zeroed in {:.3} s",
                round + 1,
                rep.copied / MIB,
                rep.zeroed / MIB,
                rep.elapsed.as_secs_f64()
            );
            reports[case].push(rep);
        }
    }
    let all = cases - 1;
    let secs = |r: &RebuildReport| r.elapsed.as_secs_f64();
    // Per round: seconds per dirtied MiB of each case ÷ that of the all-dirty case.
    let norm = |case: usize| -> Vec<f64> {
        (0..rounds)
            .map(|i| {
                let per = |c: usize| secs(&reports[c][i]) / PARTIAL_REGIONS[c] as f64;
                per(case) / per(all)
            })
            .collect()
    };
    let exact = |case: usize| {
        reports[case].iter().all(|r| {
            r.partial && r.total == PARTIAL_REGIONS[case] * MIB && r.copied + r.zeroed == r.total
        })
    };
    let mut s = String::from(
        "\n## Partial rebuild vs data dirtied\n\n\
         A nexus over the local file and remote replica 1 with a dirty-region log (1 MiB \
         regions) on a RAM device; the replica is faulted, random distinct regions are written \
         in full (1 MiB writes through the nexus), then the replica is rebuilt. Copied is what \
         the rebuild read and wrote plus what it zeroed (its report); time per MiB is \
         relative to the case with every region dirty, as the median of per-round ratios.\n\n\
         | dirty regions | dirtied MiB | copied MiB | copied = dirtied (every round) | seconds \
         (median) | range | MiB/s | time per dirtied MiB ÷ all-dirty case | range |\n\
         |--:|--:|--:|---|--:|--:|--:|--:|--:|\n",
    );
    for (case, &regions) in PARTIAL_REGIONS.iter().enumerate() {
        let t: Vec<f64> = reports[case].iter().map(secs).collect();
        let copied = median(
            reports[case]
                .iter()
                .map(|r| (r.copied + r.zeroed) as f64 / MIB as f64)
                .collect(),
        );
        let n = norm(case);
        s.push_str(&format!(
            "| {regions} | {regions} | {copied:.0} | {} | {:.3} | {} | {:.0} | {} | {} |\n",
            if exact(case) { "yes" } else { "**no**" },
            median(t.clone()),
            range(&t, |x| format!("{x:.3}")),
            regions as f64 / median(t),
            x2(median(n.clone())),
            range(&n, x2),
        ));
    }
    let checked: Vec<usize> = (0..cases)
        .filter(|&c| PARTIAL_REGIONS[c] >= PROPORTIONAL_FROM)
        .collect();
    let worst = checked
        .iter()
        .map(|&c| median(norm(c)))
        .fold(
            1.0,
            |w: f64, v| {
                if (v.ln()).abs() > w.ln().abs() { v } else { w }
            },
        );
    let in_band = checked.iter().all(|&c| {
        let m = median(norm(c));
        (1.0 / PROPORTIONAL_FACTOR..=PROPORTIONAL_FACTOR).contains(&m)
    });
    let all_exact = (0..cases).all(exact);
    let target = format!(
        "- **{}** partial rebuild time proportional to the data dirtied: for every case with \
         ≥ {PROPORTIONAL_FROM} dirty regions, time per dirtied MiB within {}–{} of the \
         all-dirty case's (median of per-round ratios; furthest: {}), and bytes copied equal to \
         the dirty regions exactly in every run ({})",
        pass(in_band && all_exact),
        x2(1.0 / PROPORTIONAL_FACTOR),
        x2(PROPORTIONAL_FACTOR),
        x2(worst),
        if all_exact { "yes" } else { "no" },
    );
    (target, s)
}
