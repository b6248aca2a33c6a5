//! NVMe/TCP benchmark: one `ballast-engine` serves one file (O_DIRECT) over NVMe/TCP and NBD;
//! the same workloads run through
//!
//! - Ballast's NVMe/TCP initiator (`nvmf://`, in this process, `blockdev::loadgen`),
//! - Ballast's NBD initiator (`nbd://`, in this process, the same load generator),
//! - fio `ioengine=nbd` (libnbd) against the same NBD export, the third-party reference,
//! - the file itself through io_uring in this process (`uring://`, the same load
//!   generator) and through fio `ioengine=io_uring, direct=1`: the disk's own figures.
//!
//! fio has no NVMe/TCP engine that works without the kernel's nvme-tcp module, so the NVMe/TCP
//! side is driven in-process; the in-process NBD figures make the like-for-like comparison.
//! Configurations alternate (their order rotating) within every round, so drift of the
//! shared disk hits all alike; ratios are medians of the per-round ratios.
//!
//! Prints the results as Markdown on stdout (progress on stderr). Used by
//! `cargo xtask bench-nvmf`, which writes docs/benchmarks-nvmf.md.
//!
//! usage: nvmf_bench ENGINE DIR [SECS [ROUNDS [SERVER_CPU CLIENT_CPU]]]
//! (with CPUs given, the engine runs under `taskset -c SERVER_CPU` and fio with
//! `--cpus_allowed=CLIENT_CPU`; the caller pins this process to CLIENT_CPU.)
//!
//! Environment: `NVMF_BENCH_CLIENT_MODE=poll|interrupt|adaptive` sets how the client reactor
//! waits (default adaptive, the engine's default); `NVMF_BENCH_ENGINE_MODE` (same values,
//! default adaptive) sets the engine's `--poll-mode`; `NVMF_BENCH_ONLY=TEXT` runs only the
//! workloads whose label contains TEXT (e.g. `QD32`), for quick looks. Both are named in the
//! output.

mod bench_common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bench_common::{CpuMeter, Engine, GIB, MIB, fill, on, range};
use blockdev::Device;
use blockdev::loadgen::{Load, Sample, median, median_interval, run_sampled};
use reactor::{Config, PollMode, Runtime};
/// Warm-up before each in-process measurement (discarded).
const WARMUP_SECS: f64 = 0.5;
/// fio's ramp before measuring.
const FIO_RAMP_SECS: u64 = 1;

#[derive(Clone, Copy, Debug)]
struct Workload {
    label: &'static str,
    rw: &'static str,
    load: Load,
}

const WORKLOADS: [Workload; 6] = [
    Workload {
        label: "4k randread QD1",
        rw: "randread",
        load: Load {
            write: false,
            bs: 4096,
            qd: 1,
            random: true,
        },
    },
    Workload {
        label: "4k randwrite QD1",
        rw: "randwrite",
        load: Load {
            write: true,
            bs: 4096,
            qd: 1,
            random: true,
        },
    },
    Workload {
        label: "4k randread QD32",
        rw: "randread",
        load: Load {
            write: false,
            bs: 4096,
            qd: 32,
            random: true,
        },
    },
    Workload {
        label: "4k randwrite QD32",
        rw: "randwrite",
        load: Load {
            write: true,
            bs: 4096,
            qd: 32,
            random: true,
        },
    },
    Workload {
        label: "1M seq read QD8",
        rw: "read",
        load: Load {
            write: false,
            bs: 1 << 20,
            qd: 8,
            random: false,
        },
    },
    Workload {
        label: "1M seq write QD8",
        rw: "write",
        load: Load {
            write: true,
            bs: 1 << 20,
            qd: 8,
            random: false,
        },
    },
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Nvmf,
    Nbd,
    FioNbd,
    Raw,
    FioRaw,
}

const PATHS: [Route; 5] = [
    Route::Nvmf,
    Route::Nbd,
    Route::FioNbd,
    Route::Raw,
    Route::FioRaw,
];

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::Nvmf => "NVMe/TCP, Ballast initiator",
            Route::Nbd => "NBD, Ballast initiator",
            Route::FioNbd => "NBD, fio (libnbd)",
            Route::Raw => "raw file, io_uring in-process",
            Route::FioRaw => "raw file, fio io_uring",
        }
    }

    /// Through the engine (its CPU time is measured).
    fn served(self) -> bool {
        matches!(self, Route::Nvmf | Route::Nbd | Route::FioNbd)
    }
}

/// One measurement.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    s: Sample,
    /// Engine CPU time in % of one core (served paths only).
    cpu: Option<f64>,
    /// The client's CPU time (this process, or fio) in % of one core.
    client_cpu: f64,
}

struct Env {
    secs: f64,
    img: PathBuf,
    nbd_uri: String,
    client_cpu: Option<String>,
    engine_pid: u32,
    rt: Runtime,
    nvmf: Device,
    nbd: Device,
    raw: Device,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!(
            "usage: nvmf_bench ENGINE DIR [SECS [ROUNDS [SERVER_CPU CLIENT_CPU]]]\n(use `cargo xtask bench-nvmf`)"
        );
        std::process::exit(2);
    }
    let engine_bin = PathBuf::from(&args[0]);
    let dir = PathBuf::from(&args[1]);
    let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let rounds: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3);
    let (server_cpu, client_cpu) = match (args.get(4), args.get(5)) {
        (Some(s), Some(c)) => (Some(s.clone()), Some(c.clone())),
        _ => (None, None),
    };
    std::fs::create_dir_all(&dir).expect("bench directory");
    let dir = dir.canonicalize().expect("bench directory");
    let img = dir.join("nvmf.img");

    let client_mode: PollMode = match std::env::var("NVMF_BENCH_CLIENT_MODE") {
        Ok(m) => m
            .parse()
            .unwrap_or_else(|e| panic!("NVMF_BENCH_CLIENT_MODE: {e}")),
        Err(_) => PollMode::Adaptive,
    };
    let engine_mode: PollMode = match std::env::var("NVMF_BENCH_ENGINE_MODE") {
        Ok(m) => m
            .parse()
            .unwrap_or_else(|e| panic!("NVMF_BENCH_ENGINE_MODE: {e}")),
        Err(_) => PollMode::Adaptive,
    };
    let only = std::env::var("NVMF_BENCH_ONLY").ok();
    let rt = Runtime::start(Config {
        cores: 1,
        pin: false,
        mode: client_mode,
        ..Config::default()
    })
    .expect("start a reactor");
    eprintln!("nvmf_bench: writing {} (1 GiB, O_DIRECT)", img.display());
    let _ = std::fs::remove_file(&img);
    let raw = blockdev::open_uri("raw", &format!("uring://{}?size=1GiB", img.display()))
        .expect("open the file");
    let fill_dev = raw.clone();
    on(&rt, move || async move { fill(&fill_dev).await });

    let mut engine = Engine::start(
        &engine_bin,
        &format!("uring://{}", img.display()),
        &dir.join("nvmf-engine.log"),
        server_cpu.as_deref(),
        &engine_mode.to_string(),
    );
    let (nbd_uri, nvmf_uri) = (engine.nbd_uri.clone(), engine.nvmf_uri.clone());
    eprintln!("nvmf_bench: engine serves {nbd_uri} and {nvmf_uri}");
    let open = |name: &str, uri: &str| {
        ballast_engine::devices::open(name, uri, &rt.handles()[0]).unwrap_or_else(|e| panic!("{e}"))
    };
    let nvmf = open("nvmf", &nvmf_uri);
    let nbd = open("nbd", &nbd_uri);
    let env = Env {
        secs,
        img: img.clone(),
        nbd_uri,
        client_cpu,
        engine_pid: engine.pid(),
        rt,
        nvmf,
        nbd,
        raw,
    };

    // results[workload][path] = one Run per round.
    let mut results: Vec<Vec<Vec<Run>>> = vec![vec![Vec::new(); PATHS.len()]; WORKLOADS.len()];
    let started = Instant::now();
    for round in 0..rounds {
        for (w, wl) in WORKLOADS.iter().enumerate() {
            if only.as_deref().is_some_and(|o| !wl.label.contains(o)) {
                continue;
            }
            for k in 0..PATHS.len() {
                let p = (k + round) % PATHS.len();
                let r = measure(&env, wl, PATHS[p]);
                eprintln!(
                    "nvmf_bench: round {} {:<18} {:<30} {:>9.0} IOPS {:>8.1} µs mean {:>8.1} µs p99, client {:.0}% CPU{}",
                    round + 1,
                    wl.label,
                    PATHS[p].label(),
                    r.s.iops,
                    r.s.mean_us,
                    r.s.p99_us,
                    r.client_cpu,
                    r.cpu
                        .map_or(String::new(), |c| format!(", engine {c:.0}% CPU"))
                );
                results[w][p].push(r);
            }
        }
    }
    let total = started.elapsed();
    let Env {
        rt, nvmf, nbd, raw, ..
    } = env;
    drop((nvmf, nbd, raw));
    rt.shutdown();
    engine.stop();
    let _ = std::fs::remove_file(&img);
    let mut notes = format!(
        "The engine's reactor runs in {engine_mode} mode, the client's in {client_mode} mode. Reactors in adaptive (or poll) mode \
         spin while there is work, so their CPU % is near 100 under load and CPU µs/IO (CPU \
         time ÷ requests) is an upper bound, not the cost of a request."
    );
    if let Some(o) = &only {
        notes.push_str(&format!(" Only the workloads matching {o:?} were run."));
    }
    print!("{}", report(&results, secs, rounds, total, &notes));
}

fn measure(env: &Env, wl: &Workload, path: Route) -> Run {
    let dev = match path {
        Route::Nvmf => Some(env.nvmf.clone()),
        Route::Nbd => Some(env.nbd.clone()),
        Route::Raw => Some(env.raw.clone()),
        Route::FioNbd | Route::FioRaw => None,
    };
    match dev {
        Some(dev) => {
            let (load, secs) = (wl.load, env.secs);
            let d = dev.clone();
            on(&env.rt, move || async move {
                run_sampled(d, 0, GIB, load, WARMUP_SECS, None).await
            });
            let meter = CpuMeter::start(&[std::process::id(), env.engine_pid]);
            let s = on(&env.rt, move || async move {
                run_sampled(dev, 0, GIB, load, secs, None).await
            });
            let pct = meter.pct();
            Run {
                s,
                cpu: path.served().then_some(pct[1]),
                client_cpu: pct[0],
            }
        }
        None => fio(env, wl, path == Route::FioNbd),
    }
}

/// One fio job; engine CPU is sampled inside the measured window.
fn fio(env: &Env, wl: &Workload, nbd: bool) -> Run {
    let mut c = Command::new("fio");
    c.arg(format!("--name={}", wl.rw))
        .arg(format!("--rw={}", wl.rw))
        .arg(format!("--bs={}", wl.load.bs))
        .arg(format!("--iodepth={}", wl.load.qd))
        .args([
            "--numjobs=1",
            "--time_based",
            "--randrepeat=0",
            "--norandommap",
            "--thread",
            "--size=1G",
            "--output-format=terse",
            "--lat_percentiles=1",
            "--clat_percentiles=0",
        ])
        .arg(format!("--runtime={}", env.secs.ceil() as u64))
        .arg(format!("--ramp_time={FIO_RAMP_SECS}"));
    if let Some(cpu) = &env.client_cpu {
        c.arg(format!("--cpus_allowed={cpu}"));
    }
    if nbd {
        c.arg("--ioengine=nbd")
            .arg(format!("--uri={}", env.nbd_uri));
    } else {
        c.args(["--ioengine=io_uring", "--direct=1"])
            .arg(format!("--filename={}", env.img.display()));
    }
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = c.spawn().expect("fio (apt-get install fio)");
    // CPU of the engine and of fio inside the measured window.
    std::thread::sleep(Duration::from_millis(FIO_RAMP_SECS * 1000 + 300));
    let meter = CpuMeter::start(&[child.id(), env.engine_pid]);
    std::thread::sleep(Duration::from_secs_f64((env.secs.ceil() - 0.6).max(0.2)));
    let pct = meter.pct();
    let (client_cpu, cpu) = (pct[0], nbd.then_some(pct[1]));
    let out = child.wait_with_output().expect("fio");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fio failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .rfind(|l| l.starts_with("3;"))
        .unwrap_or_else(|| panic!("no terse line from fio: {stdout}"));
    let f: Vec<&str> = line.split(';').collect();
    // Terse v3 (0-based): read IOPS 7, lat mean 39, percentiles 17..37; the write side
    // 41 fields on.
    let at = if wl.load.write { 41 } else { 0 };
    let num = |i: usize| -> f64 {
        f.get(i + at)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("fio terse field {} in {line}", i + at))
    };
    let p99 = f[17 + at..37 + at]
        .iter()
        .find_map(|v| v.strip_prefix("99.000000%="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    Run {
        s: Sample {
            iops: num(7),
            mean_us: num(39),
            p99_us: p99,
        },
        cpu,
        client_cpu,
    }
}

fn report(
    results: &[Vec<Vec<Run>>],
    secs: f64,
    rounds: usize,
    total: Duration,
    notes: &str,
) -> String {
    let idx = |p: Route| PATHS.iter().position(|&x| x == p).expect("path");
    let w_idx = |label: &str| {
        WORKLOADS
            .iter()
            .position(|w| w.label == label)
            .expect("workload")
    };
    // Per-round ratios a/b of a metric.
    let ratios = |w: usize, a: Route, b: Route, lat: bool| -> Vec<f64> {
        results[w][idx(a)]
            .iter()
            .zip(&results[w][idx(b)])
            .map(|(x, y)| {
                if lat {
                    x.s.mean_us / y.s.mean_us
                } else {
                    x.s.iops / y.s.iops
                }
            })
            .collect()
    };
    // Workloads left out by NVMF_BENCH_ONLY have no results and no rows.
    let ran = |w: usize| !results[w][idx(Route::Nvmf)].is_empty();
    let x2 = |v: f64| format!("{v:.2}×");
    let mut out = String::new();
    out.push_str("## Targets\n\n");
    let mut target = |label: &str, lat: bool| {
        let w = w_idx(label);
        if !ran(w) {
            // Left out by NVMF_BENCH_ONLY: nothing to judge.
            out.push_str(&format!("- **not run** {label}\n"));
            return;
        }
        let r = ratios(w, Route::Nvmf, Route::Nbd, lat);
        let m = median(r.clone());
        let pass = if lat { m <= 1.0 } else { m >= 1.0 };
        // Whether this run can tell the two apart at all: a 95 % interval for the median
        // per-round ratio that holds 1.00 means it cannot.
        let interval = median_interval(r.clone(), 0.95);
        let parity = interval.is_some_and(|(lo, hi, _)| lo <= 1.0 && hi >= 1.0);
        let verdict = match (pass, parity) {
            (true, _) => "PASS",
            (false, true) => "MISS (within noise)",
            (false, false) => "MISS",
        };
        let noise = match interval {
            Some((lo, hi, c)) => format!(
                "; {:.0} % interval of the median ratio {}–{}: {}",
                c * 100.0,
                x2(lo),
                x2(hi),
                if parity {
                    "this run cannot tell the two apart"
                } else if lo > 1.0 {
                    "NVMe/TCP measurably higher"
                } else {
                    "NVMe/TCP measurably lower"
                }
            ),
            None => "; too few rounds for a 95 % interval (6 at least)".to_string(),
        };
        let rf = ratios(w, Route::Nvmf, Route::FioNbd, lat);
        let med = |p: Route, f: fn(&Run) -> f64| median(results[w][idx(p)].iter().map(f).collect());
        let (what, unit, f): (&str, &str, fn(&Run) -> f64) = if lat {
            ("mean latency", "µs", |r| r.s.mean_us)
        } else {
            ("IOPS", "", |r| r.s.iops)
        };
        out.push_str(&format!(
            "- **{verdict}** {label}: NVMe/TCP {what} {} NBD's (both through Ballast's \
             initiators): {:.1}{unit} vs {:.1}{unit}, ratio {} (rounds {}{noise}); against fio \
             through NBD ({:.1}{unit}): {} (rounds {})\n",
            if lat { "≤" } else { "≥" },
            med(Route::Nvmf, f),
            med(Route::Nbd, f),
            x2(m),
            range(&r, x2),
            med(Route::FioNbd, f),
            x2(median(rf.clone())),
            range(&rf, x2),
        ));
    };
    target("4k randread QD32", false);
    target("4k randwrite QD32", false);
    target("4k randread QD1", true);
    target("4k randwrite QD1", true);
    out.push_str(
        "\nRatios are medians of the per-round ratios (the range shows the rounds); figures are \
         medians over the rounds. The interval of a median ratio is distribution-free: with n \
         rounds it runs from the k-th smallest to the k-th largest per-round ratio, k the \
         largest for which the median lies inside with at least 95 % probability (binomial, \
         p = ½; 9 rounds: the 2nd smallest to the 2nd largest, 96 %). A MISS whose interval \
         holds 1.00× is marked \"within noise\": the run cannot tell NVMe/TCP from NBD there.\n\n",
    );

    out.push_str("## Summary: median IOPS\n\n");
    out.push_str(
        "| workload | NVMe/TCP (Ballast) | NBD (Ballast) | NBD (fio) | raw in-process | raw fio | \
         NVMe/TCP ÷ NBD (Ballast) | NVMe/TCP ÷ NBD (fio) | NVMe/TCP ÷ raw in-process |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for (w, wl) in WORKLOADS.iter().enumerate().filter(|(w, _)| ran(*w)) {
        let iops = |p: Route| median(results[w][idx(p)].iter().map(|r| r.s.iops).collect());
        let rr = |b: Route| {
            let r = ratios(w, Route::Nvmf, b, false);
            format!("{} ({})", x2(median(r.clone())), range(&r, x2))
        };
        out.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} |\n",
            wl.label,
            iops(Route::Nvmf),
            iops(Route::Nbd),
            iops(Route::FioNbd),
            iops(Route::Raw),
            iops(Route::FioRaw),
            rr(Route::Nbd),
            rr(Route::FioNbd),
            rr(Route::Raw),
        ));
    }

    out.push_str("\n## Every path\n\n");
    out.push_str(
        "| workload | path | IOPS | IOPS range | MiB/s | mean lat µs | p99 lat µs | engine CPU % | \
         engine CPU µs/IO | client CPU µs/IO |\n\
         |---|---|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for (w, wl) in WORKLOADS.iter().enumerate().filter(|(w, _)| ran(*w)) {
        for p in PATHS {
            let runs = &results[w][idx(p)];
            let m = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
            let iops: Vec<f64> = runs.iter().map(|r| r.s.iops).collect();
            // CPU time per request: less sensitive than IOPS to other work on the machine.
            let per_io = |pct: f64, iops: f64| pct / 100.0 / iops * 1e6;
            let (cpu, cpu_io) = if p.served() {
                (
                    format!("{:.0}", m(&|r| r.cpu.unwrap_or(f64::NAN))),
                    format!("{:.1}", m(&|r| per_io(r.cpu.unwrap_or(f64::NAN), r.s.iops))),
                )
            } else {
                ("—".into(), "—".into())
            };
            let client_io = m(&|r| per_io(r.client_cpu, r.s.iops));
            out.push_str(&format!(
                "| {} | {} | {:.0} | {} | {:.1} | {:.1} | {:.1} | {cpu} | {cpu_io} | {client_io:.1} |\n",
                wl.label,
                p.label(),
                m(&|r| r.s.iops),
                range(&iops, |v| format!("{v:.0}")),
                m(&|r| r.s.iops) * wl.load.bs as f64 / MIB as f64,
                m(&|r| r.s.mean_us),
                m(&|r| r.s.p99_us),
            ));
        }
    }
    out.push_str(&format!(
        "\n{rounds} round(s); each in-process run {secs} s after a {WARMUP_SECS} s warm-up, each \
         fio job {} s after a {FIO_RAMP_SECS} s ramp; whole run {:.0} s. {notes}\n",
        secs.ceil(),
        total.as_secs_f64()
    ));
    out
}
