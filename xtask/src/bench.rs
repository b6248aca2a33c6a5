//! `cargo xtask bench [--quick] [--runtime SECS] [--idle SECS]`: Ballast's NBD target against
//! its peers on one backing file, written to docs/benchmarks.md (overwritten) and stdout.
//!
//! Sections: (1) the same 1 GiB file through Ballast, qemu-storage-daemon, nbdkit-file and raw
//! io_uring O_DIRECT; (2) Ballast's RAM export against `nbdkit memory` (the protocol
//! ceiling); (3) 4k random reads in each polling mode; (4) idle CPU with 4 exports in each
//! polling mode. Then the targets from the issue, as PASS/FAIL lines.
//!
//! Every child runs under a [`Proc`] guard (SIGTERM, then SIGKILL, when dropped) and every
//! wait is bounded, so a failing step never leaves a server behind.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::json;
use crate::procs::{self, Proc};

const USAGE: &str = "usage: cargo xtask bench [--quick] [--runtime SECS] [--idle SECS] [--rounds N]
  --quick          3 s per fio job, a 10 s idle sample, 1 round of the polling-mode runs
                   (default: 10 s, 30 s, 5 rounds: the machine drifts between runs)
  --runtime SECS   seconds of measurement per fio job (after a 2 s ramp)
  --idle SECS      seconds of the idle CPU sample per polling mode
  --rounds N       rounds of the polling-mode comparison (medians are reported)";

/// How long a server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// fio's ramp (warm-up) before measuring.
const RAMP_SECS: u64 = 2;
/// Size of the backing file and of the RAM exports.
const GIB: u64 = 1 << 30;

#[derive(Debug, Clone)]
struct Opts {
    quick: bool,
    runtime: u64,
    idle: u64,
    rounds: usize,
    cmdline: String,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        let mut o = Opts {
            quick: false,
            runtime: 0,
            idle: 0,
            rounds: 0,
            cmdline: String::new(),
        };
        let (mut runtime, mut idle, mut rounds) = (None, None, None);
        let mut it = args.iter();
        let num = |flag: &str, v: Option<&String>| -> Result<u64, String> {
            v.and_then(|s| s.parse::<u64>().ok())
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{flag} needs a positive number\n{USAGE}"))
        };
        while let Some(a) = it.next() {
            match a.as_str() {
                "--quick" => o.quick = true,
                "--runtime" => runtime = Some(num(a, it.next())?),
                "--idle" => idle = Some(num(a, it.next())?),
                "--rounds" => rounds = Some(num(a, it.next())? as usize),
                "-h" | "--help" => return Err(USAGE.to_string()),
                other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            }
        }
        o.runtime = runtime.unwrap_or(if o.quick { 3 } else { 10 });
        o.idle = idle.unwrap_or(if o.quick { 10 } else { 30 });
        o.rounds = rounds.unwrap_or(if o.quick { 1 } else { 5 });
        o.cmdline = std::iter::once("cargo xtask bench".to_string())
            .chain(args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        Ok(o)
    }
}

/// One fio workload.
#[derive(Debug, Clone, Copy)]
struct Workload {
    key: &'static str,
    label: &'static str,
    rw: &'static str,
    bs: &'static str,
    qd: u32,
}

const RR1: Workload = Workload {
    key: "rr1",
    label: "4k randread QD1",
    rw: "randread",
    bs: "4k",
    qd: 1,
};
const RR32: Workload = Workload {
    key: "rr32",
    label: "4k randread QD32",
    rw: "randread",
    bs: "4k",
    qd: 32,
};
const WORKLOADS: [Workload; 6] = [
    RR1,
    RR32,
    Workload {
        key: "rw1",
        label: "4k randwrite QD1",
        rw: "randwrite",
        bs: "4k",
        qd: 1,
    },
    Workload {
        key: "rw32",
        label: "4k randwrite QD32",
        rw: "randwrite",
        bs: "4k",
        qd: 32,
    },
    Workload {
        key: "sr",
        label: "1M seq read QD8",
        rw: "read",
        bs: "1M",
        qd: 8,
    },
    Workload {
        key: "sw",
        label: "1M seq write QD8",
        rw: "write",
        bs: "1M",
        qd: 8,
    },
];

/// What one fio run measured.
#[derive(Debug, Clone, Copy)]
struct Measure {
    iops: f64,
    mib_s: f64,
    mean_us: f64,
    p99_us: f64,
    /// The server's CPU over the measured window, % of one core (`None`: no server).
    cpu: Option<f64>,
}

/// Where fio sends I/O.
#[derive(Debug, Clone)]
enum Target {
    Nbd(String),
    File(PathBuf),
}

#[derive(Debug)]
struct Row {
    section: &'static str,
    peer: String,
    wl: Workload,
    res: Result<Measure, String>,
}

#[derive(Debug)]
struct Idle {
    cpu: f64,
    wakeups: f64,
    threads: usize,
    secs: f64,
}

#[derive(Debug)]
struct Env {
    root: PathBuf,
    dir: PathBuf,
    logs: PathBuf,
    disk: PathBuf,
    engine: PathBuf,
    /// CPU list for servers (`taskset -c`), and for fio (`--cpus_allowed`).
    server_cpu: Option<String>,
    fio_cpu: Option<String>,
    clk: f64,
    opts: Opts,
}

#[derive(Debug, Default)]
struct Results {
    rows: Vec<Row>,
    idle: Vec<(&'static str, Result<Idle, String>)>,
    /// Steps that failed outside a measurement (server start, prefill, stop).
    errors: Vec<String>,
    notes: Vec<String>,
}

impl Results {
    fn get(&self, section: &str, peer: &str, key: &str) -> Option<&Measure> {
        self.rows
            .iter()
            .find(|r| r.section == section && r.peer == peer && r.wl.key == key)
            .and_then(|r| r.res.as_ref().ok())
    }
}

/// Medians over the successful rounds of one (section, peer, workload).
#[derive(Debug, Clone, Copy)]
struct Agg {
    med: Measure,
    min_iops: f64,
    max_iops: f64,
    ok: usize,
    total: usize,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn agg(r: &Results, section: &str, peer: &str, key: &str) -> Option<Agg> {
    let rows: Vec<&Row> = r
        .rows
        .iter()
        .filter(|x| x.section == section && x.peer == peer && x.wl.key == key)
        .collect();
    let ms: Vec<&Measure> = rows.iter().filter_map(|x| x.res.as_ref().ok()).collect();
    let col =
        |f: &dyn Fn(&Measure) -> Option<f64>| median(ms.iter().filter_map(|m| f(m)).collect());
    Some(Agg {
        med: Measure {
            iops: col(&|m| Some(m.iops))?,
            mib_s: col(&|m| Some(m.mib_s))?,
            mean_us: col(&|m| Some(m.mean_us))?,
            p99_us: col(&|m| Some(m.p99_us))?,
            cpu: col(&|m| m.cpu),
        },
        min_iops: ms.iter().map(|m| m.iops).fold(f64::INFINITY, f64::min),
        max_iops: ms.iter().map(|m| m.iops).fold(0.0, f64::max),
        ok: ms.len(),
        total: rows.len(),
    })
}

const S_FILE: &str = "file";
const S_RAM: &str = "ram";
const S_MODES: &str = "modes";

const BALLAST: &str = "Ballast";
const QSD: &str = "qemu-storage-daemon";
/// qemu-storage-daemon with its default thread-pool AIO (the configuration behind the design
/// brief's baseline figure), as a second, weaker reference.
const QSD_THREADS: &str = "qsd aio=threads";
const NBDKIT_FILE: &str = "nbdkit file";
const RAW: &str = "raw io_uring O_DIRECT";
const BALLAST_RAM: &str = "Ballast RAM";
const NBDKIT_MEM: &str = "nbdkit memory";
const MODES: [&str; 3] = ["poll", "interrupt", "adaptive"];

pub fn bench(args: &[String]) -> Result<(), String> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return Ok(());
    }
    let opts = Opts::parse(args)?;
    crate::ensure_tools()?;
    let ok = Command::new("fio")
        .arg("--enghelp=nbd")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        return Err("this fio has no nbd ioengine (`fio --enghelp=nbd` failed)".into());
    }
    let mut b = crate::cargo();
    b.args(["build", "--release", "-p", "ballast-engine"]);
    crate::run(b, "cargo build --release -p ballast-engine")?;

    let env = setup(opts)?;
    let started = Instant::now();
    let load_before = loadavg();
    let mut r = Results::default();
    if env.server_cpu.is_some() {
        r.notes.push(format!(
            "Servers run on CPU {} (`taskset`), fio on CPU {} (`--cpus_allowed`); Ballast uses \
             `--cores 1`, so every server gets the same single core.",
            env.server_cpu.as_deref().unwrap_or("?"),
            env.fio_cpu.as_deref().unwrap_or("?")
        ));
    } else {
        r.notes
            .push("No CPU pinning (needs 2+ CPUs and `taskset`).".to_string());
    }

    prepare_disk(&env)?;
    section_file(&env, &mut r);
    section_ram(&env, &mut r);
    section_modes(&env, &mut r);
    section_idle(&env, &mut r);

    let doc = report(&env, &r, &load_before, started.elapsed());
    let path = env.root.join("docs/benchmarks.md");
    std::fs::create_dir_all(env.root.join("docs")).map_err(|e| format!("docs/: {e}"))?;
    std::fs::write(&path, &doc).map_err(|e| format!("writing {}: {e}", path.display()))?;
    println!("{doc}");
    eprintln!("xtask bench: wrote {}", path.display());
    crate::plot::plot_doc("benchmarks.md")?;
    let failed = r.errors.len() + r.rows.iter().filter(|x| x.res.is_err()).count();
    let failed = failed + r.idle.iter().filter(|x| x.1.is_err()).count();
    if failed > 0 {
        return Err(format!(
            "{failed} benchmark step(s) failed; see docs/benchmarks.md and target/bench/logs"
        ));
    }
    Ok(())
}

fn setup(opts: Opts) -> Result<Env, String> {
    let root = crate::root();
    let dir = root.join("target/bench");
    let logs = dir.join("logs");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).map_err(|e| format!("creating {}: {e}", logs.display()))?;
    let (server_cpu, fio_cpu) = cpu_pair().unzip();
    Ok(Env {
        disk: dir.join("disk.img"),
        engine: root.join("target/release/ballast-engine"),
        root,
        dir,
        logs,
        server_cpu,
        fio_cpu,
        clk: procs::clk_tck(),
        opts,
    })
}

/// Writes the whole backing file once, so every read hits allocated blocks.
fn prepare_disk(env: &Env) -> Result<(), String> {
    eprintln!(
        "xtask bench: writing {} (1 GiB, O_DIRECT)",
        env.disk.display()
    );
    let _ = std::fs::remove_file(&env.disk);
    let mut c = Command::new("fio");
    c.args([
        "--name=fill",
        "--rw=write",
        "--bs=1M",
        "--iodepth=8",
        "--ioengine=io_uring",
        "--direct=1",
        "--size=1G",
    ])
    .arg(format!("--filename={}", env.disk.display()));
    run_bounded(c, &env.logs.join("fill-disk.log"), Duration::from_secs(300))?;
    let len = std::fs::metadata(&env.disk).map(|m| m.len()).unwrap_or(0);
    if len != GIB {
        return Err(format!(
            "{} is {len} bytes after filling, expected {GIB}",
            env.disk.display()
        ));
    }
    Ok(())
}

/// Runs a command to completion within `limit`, output to `log`.
fn run_bounded(c: Command, log: &Path, limit: Duration) -> Result<(), String> {
    let name = c.get_program().to_string_lossy().into_owned();
    let mut p = Proc::spawn(&name, c, log, false)?;
    let deadline = Instant::now() + limit;
    loop {
        match p.check_alive() {
            Ok(()) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(()) => {
                let _ = p.stop(Duration::from_secs(5));
                return Err(format!("{name} took longer than {limit:?}; killed"));
            }
            Err(_) => break,
        }
    }
    match p.stop(Duration::from_secs(1)) {
        Ok(Some(st)) if st.success() => Ok(()),
        Ok(st) => Err(format!(
            "{name} failed ({st:?}); log {}:\n{}",
            log.display(),
            procs::log_tail(log, 15)
        )),
        Err(e) => Err(e),
    }
}

/// A command for a server process, on the servers' CPU when pinning.
fn server_cmd(env: &Env, program: &Path) -> Command {
    match &env.server_cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Starts Ballast with `devices` (NAME=URI), exporting each, on a free port; returns the
/// guard and the export URIs in the order given.
fn start_ballast(
    env: &Env,
    tag: &str,
    mode: &str,
    devices: &[(&str, String)],
    grpc: bool,
) -> Result<(Proc, Vec<String>), String> {
    let mut c = server_cmd(env, &env.engine);
    c.args(["--cores", "1", "--poll-mode", mode])
        .args(["--nbd-listen", "127.0.0.1:0"])
        .args(["--grpc-listen", if grpc { "127.0.0.1:0" } else { "none" }]);
    for (name, uri) in devices {
        c.arg("--device").arg(format!("{name}={uri}"));
        c.arg("--export").arg(name);
    }
    let log = env.logs.join(format!("{tag}.log"));
    let mut p = Proc::spawn(&format!("ballast-engine ({tag})"), c, &log, true)?;
    let lines = p.wait_lines(devices.len(), |l| l.starts_with("nbd://"), START_TIMEOUT)?;
    let mut uris = Vec::new();
    for (name, _) in devices {
        let u = lines
            .iter()
            .find(|l| l.rsplit('/').next() == Some(name))
            .ok_or_else(|| format!("engine printed no URI for export {name}: {lines:?}"))?;
        uris.push(u.clone());
    }
    Ok((p, uris))
}

fn start_qsd(env: &Env, aio: &str) -> Result<(Proc, String), String> {
    let port = procs::free_port()?;
    let mut c = server_cmd(env, Path::new("qemu-storage-daemon"));
    c.arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=f,filename={},cache.direct=on,aio={aio}",
            env.disk.display()
        ))
        .arg("--nbd-server")
        .arg(format!(
            "addr.type=inet,addr.host=127.0.0.1,addr.port={port}"
        ))
        .args([
            "--export",
            "type=nbd,id=e,node-name=f,name=disk,writable=on",
        ]);
    let mut p = Proc::spawn(QSD, c, &env.logs.join("qsd.log"), false)?;
    p.wait_port(port, START_TIMEOUT)?;
    Ok((p, format!("nbd://127.0.0.1:{port}/disk")))
}

fn start_nbdkit(env: &Env, tag: &str, plugin_args: &[String]) -> Result<(Proc, String), String> {
    let port = procs::free_port()?;
    let mut c = server_cmd(env, Path::new("nbdkit"));
    c.args(["--exit-with-parent", "-f", "-i", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(plugin_args);
    let mut p = Proc::spawn(tag, c, &env.logs.join(format!("{tag}.log")), false)?;
    p.wait_port(port, START_TIMEOUT)?;
    Ok((p, format!("nbd://127.0.0.1:{port}/")))
}

/// Stops a server; a non-zero exit or a needed SIGKILL is recorded as an error.
fn stop(p: &mut Proc, r: &mut Results) {
    match p.stop(procs::STOP_GRACE) {
        Ok(Some(st)) if st.success() => {}
        // qemu-storage-daemon and nbdkit exit on SIGTERM by the signal or with status 0.
        Ok(Some(st)) if st.code().is_none() && !p.name.starts_with("ballast") => {}
        Ok(st) => r.errors.push(format!(
            "{} did not exit cleanly ({st:?}); log {}",
            p.name,
            p.log.display()
        )),
        Err(e) => r.errors.push(e),
    }
}

/// Writes a whole NBD export once (1M sequential), so reads hit data, not holes.
fn prefill(env: &Env, tag: &str, uri: &str) -> Result<(), String> {
    let mut c = Command::new("fio");
    c.args([
        "--name=prefill",
        "--rw=write",
        "--bs=1M",
        "--iodepth=8",
        "--ioengine=nbd",
        "--size=1G",
    ])
    .arg(format!("--uri={uri}"));
    run_bounded(
        c,
        &env.logs.join(format!("prefill-{tag}.log")),
        Duration::from_secs(300),
    )
}

/// Runs one fio job against `target`, sampling `server`'s CPU inside the measured window.
fn fio(
    env: &Env,
    tag: &str,
    target: &Target,
    wl: &Workload,
    server: Option<u32>,
) -> Result<Measure, String> {
    let rt = env.opts.runtime;
    let out = env.logs.join(format!("{tag}.json"));
    let mut c = Command::new("fio");
    c.arg(format!("--name={}", wl.key))
        .arg(format!("--rw={}", wl.rw))
        .arg(format!("--bs={}", wl.bs))
        .arg(format!("--iodepth={}", wl.qd))
        .args([
            "--numjobs=1",
            "--time_based",
            "--randrepeat=0",
            "--norandommap",
        ])
        .arg(format!("--runtime={rt}"))
        .arg(format!("--ramp_time={RAMP_SECS}"))
        .args(["--output-format=json", "--lat_percentiles=1"])
        .arg(format!("--output={}", out.display()));
    if let Some(cpu) = &env.fio_cpu {
        c.arg(format!("--cpus_allowed={cpu}"));
    }
    match target {
        Target::Nbd(uri) => {
            c.arg("--ioengine=nbd").arg(format!("--uri={uri}"));
        }
        Target::File(p) => {
            c.args(["--ioengine=io_uring", "--direct=1", "--size=1G"])
                .arg(format!("--filename={}", p.display()));
        }
    }
    let log = env.logs.join(format!("{tag}.log"));
    let mut p = Proc::spawn(&format!("fio {tag}"), c, &log, false)?;
    let t0 = Instant::now();
    // The CPU window: from 0.5 s into the measurement to 0.3 s before its end.
    let win_a = t0 + Duration::from_millis(RAMP_SECS * 1000 + 500);
    let win_b = (t0 + Duration::from_millis((RAMP_SECS + rt) * 1000 - 300))
        .max(win_a + Duration::from_millis(200));
    let limit = t0 + Duration::from_secs(RAMP_SECS + rt + 60);
    let mut a: Option<(Instant, u64)> = None;
    let mut cpu = None;
    loop {
        if p.check_alive().is_err() {
            break;
        }
        let now = Instant::now();
        if let Some(pid) = server {
            match a {
                None if now >= win_a => a = procs::cpu_ticks(pid).map(|t| (Instant::now(), t)),
                Some((ta, ca)) if cpu.is_none() && now >= win_b => {
                    cpu = procs::cpu_ticks(pid).map(|cb| {
                        cb.saturating_sub(ca) as f64 / env.clk / ta.elapsed().as_secs_f64() * 100.0
                    });
                }
                _ => {}
            }
        }
        if now >= limit {
            let _ = p.stop(Duration::from_secs(5));
            return Err(format!("fio {tag} did not finish in time; killed"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    match p.stop(Duration::from_secs(1)) {
        Ok(Some(st)) if st.success() => {}
        other => {
            return Err(format!(
                "fio {tag} failed ({other:?}): {}",
                procs::log_tail(&log, 8).replace('\n', " | ")
            ));
        }
    }
    if server.is_some() && cpu.is_none() {
        return Err(format!("fio {tag} ended before the CPU window closed"));
    }
    let text = std::fs::read_to_string(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut m = parse_fio(&text, wl.rw).map_err(|e| format!("fio {tag}: {e}"))?;
    m.cpu = cpu;
    Ok(m)
}

/// Pulls IOPS, bandwidth, mean and p99 latency (submission to completion) out of fio's JSON.
fn parse_fio(text: &str, rw: &str) -> Result<Measure, String> {
    let start = text
        .find("{\n")
        .or_else(|| text.find('{'))
        .ok_or("no JSON in fio's output")?;
    let v = json::parse(&text[start..])?;
    let job = v.get("jobs").and_then(|j| j.at(0)).ok_or("no jobs[0]")?;
    if let Some(e) = job.get("error").and_then(json::Value::num)
        && e != 0.0
    {
        return Err(format!("fio job error {e}"));
    }
    let dir = if rw.contains("read") { "read" } else { "write" };
    let d = job.get(dir).ok_or(format!("no {dir} stats"))?;
    let num = |p: &[&str]| d.path(p).and_then(json::Value::num);
    let iops = num(&["iops"]).ok_or("no iops")?;
    let bw = num(&["bw_bytes"]).unwrap_or(0.0);
    let mean = num(&["lat_ns", "mean"]).ok_or("no lat_ns.mean")?;
    let p99 = num(&["lat_ns", "percentile", "99.000000"])
        .or_else(|| num(&["clat_ns", "percentile", "99.000000"]))
        .ok_or("no p99 latency")?;
    if iops <= 0.0 {
        return Err("fio measured no I/O".into());
    }
    Ok(Measure {
        iops,
        mib_s: bw / (1024.0 * 1024.0),
        mean_us: mean / 1000.0,
        p99_us: p99 / 1000.0,
        cpu: None,
    })
}

/// Runs `wls` against one server (or the raw file) and records the rows.
fn run_all(
    env: &Env,
    r: &mut Results,
    section: &'static str,
    peer: &str,
    target: &Target,
    server: Option<u32>,
    wls: &[Workload],
) {
    for wl in wls {
        let n = r
            .rows
            .iter()
            .filter(|x| x.section == section && x.peer == peer && x.wl.key == wl.key)
            .count();
        let tag = format!("{section}-{}-{}-{}", slug(peer), wl.key, n + 1);
        eprintln!("xtask bench: {peer}: {} ...", wl.label);
        let res = fio(env, &tag, target, wl, server);
        match &res {
            Ok(m) => eprintln!(
                "xtask bench:   {:.0} IOPS, {:.1} MiB/s, mean {:.1} us, p99 {:.1} us{}",
                m.iops,
                m.mib_s,
                m.mean_us,
                m.p99_us,
                m.cpu
                    .map(|c| format!(", server CPU {c:.1}%"))
                    .unwrap_or_default()
            ),
            Err(e) => eprintln!("xtask bench:   FAILED: {e}"),
        }
        r.rows.push(Row {
            section,
            peer: peer.to_string(),
            wl: *wl,
            res,
        });
    }
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

fn fail_rows(r: &mut Results, section: &'static str, peer: &str, wls: &[Workload], e: &str) {
    eprintln!("xtask bench: {peer}: FAILED: {e}");
    for wl in wls {
        r.rows.push(Row {
            section,
            peer: peer.to_string(),
            wl: *wl,
            res: Err(e.to_string()),
        });
    }
}

fn section_file(env: &Env, r: &mut Results) {
    let disk = env.disk.display().to_string();
    match start_ballast(
        env,
        "ballast-file",
        "adaptive",
        &[("disk", disk.clone())],
        false,
    ) {
        Ok((mut p, uris)) => {
            let pid = p.pid();
            run_all(
                env,
                r,
                S_FILE,
                BALLAST,
                &Target::Nbd(uris[0].clone()),
                Some(pid),
                &WORKLOADS,
            );
            stop(&mut p, r);
        }
        Err(e) => fail_rows(r, S_FILE, BALLAST, &WORKLOADS, &e),
    }
    match start_qsd(env, "io_uring") {
        Ok((mut p, uri)) => {
            let pid = p.pid();
            run_all(
                env,
                r,
                S_FILE,
                QSD,
                &Target::Nbd(uri),
                Some(pid),
                &WORKLOADS,
            );
            stop(&mut p, r);
        }
        Err(e) => fail_rows(r, S_FILE, QSD, &WORKLOADS, &e),
    }
    match start_qsd(env, "threads") {
        Ok((mut p, uri)) => {
            let pid = p.pid();
            run_all(
                env,
                r,
                S_FILE,
                QSD_THREADS,
                &Target::Nbd(uri),
                Some(pid),
                &WORKLOADS,
            );
            stop(&mut p, r);
        }
        Err(e) => fail_rows(r, S_FILE, QSD_THREADS, &WORKLOADS, &e),
    }
    let args = vec!["file".to_string(), disk, "cache=none".to_string()];
    match start_nbdkit(env, "nbdkit-file", &args) {
        Ok((mut p, uri)) => {
            let pid = p.pid();
            run_all(
                env,
                r,
                S_FILE,
                NBDKIT_FILE,
                &Target::Nbd(uri),
                Some(pid),
                &WORKLOADS,
            );
            stop(&mut p, r);
        }
        Err(e) => fail_rows(r, S_FILE, NBDKIT_FILE, &WORKLOADS, &e),
    }
    run_all(
        env,
        r,
        S_FILE,
        RAW,
        &Target::File(env.disk.clone()),
        None,
        &WORKLOADS,
    );
}

fn section_ram(env: &Env, r: &mut Results) {
    let dev = [("ram", "malloc:///ram?size=1GiB".to_string())];
    match start_ballast(env, "ballast-ram", "adaptive", &dev, false) {
        Ok((mut p, uris)) => {
            let pid = p.pid();
            match prefill(env, "ballast-ram", &uris[0]) {
                Ok(()) => run_all(
                    env,
                    r,
                    S_RAM,
                    BALLAST_RAM,
                    &Target::Nbd(uris[0].clone()),
                    Some(pid),
                    &WORKLOADS,
                ),
                Err(e) => fail_rows(r, S_RAM, BALLAST_RAM, &WORKLOADS, &e),
            }
            stop(&mut p, r);
        }
        Err(e) => fail_rows(r, S_RAM, BALLAST_RAM, &WORKLOADS, &e),
    }
    let args = vec!["memory".to_string(), "1G".to_string()];
    match start_nbdkit(env, "nbdkit-memory", &args) {
        Ok((mut p, uri)) => {
            let pid = p.pid();
            match prefill(env, "nbdkit-memory", &uri) {
                Ok(()) => run_all(
                    env,
                    r,
                    S_RAM,
                    NBDKIT_MEM,
                    &Target::Nbd(uri),
                    Some(pid),
                    &WORKLOADS,
                ),
                Err(e) => fail_rows(r, S_RAM, NBDKIT_MEM, &WORKLOADS, &e),
            }
            stop(&mut p, r);
        }
        Err(e) => fail_rows(r, S_RAM, NBDKIT_MEM, &WORKLOADS, &e),
    }
}

/// Per polling mode: 4k random reads at QD32 from the file and the RAM export, and QD1 from
/// RAM (latency without a disk). Repeated `rounds` times, the order of the modes rotating
/// each round, so drift on the machine does not favour one mode.
fn section_modes(env: &Env, r: &mut Results) {
    let devs = [
        ("disk", env.disk.display().to_string()),
        ("ram", "malloc:///ram?size=1GiB".to_string()),
    ];
    for round in 0..env.opts.rounds {
        for i in 0..MODES.len() {
            let mode = MODES[(i + round) % MODES.len()];
            let file_peer = format!("{mode} / file");
            let ram_peer = format!("{mode} / RAM");
            let tag = format!("ballast-{mode}-{}", round + 1);
            eprintln!(
                "xtask bench: polling modes, round {} of {}: {mode}",
                round + 1,
                env.opts.rounds
            );
            match start_ballast(env, &tag, mode, &devs, false) {
                Ok((mut p, uris)) => {
                    let pid = p.pid();
                    let file = Target::Nbd(uris[0].clone());
                    run_all(env, r, S_MODES, &file_peer, &file, Some(pid), &[RR32]);
                    match prefill(env, &tag, &uris[1]) {
                        Ok(()) => {
                            let ram = Target::Nbd(uris[1].clone());
                            run_all(env, r, S_MODES, &ram_peer, &ram, Some(pid), &[RR32, RR1]);
                        }
                        Err(e) => fail_rows(r, S_MODES, &ram_peer, &[RR32, RR1], &e),
                    }
                    stop(&mut p, r);
                }
                Err(e) => {
                    fail_rows(r, S_MODES, &file_peer, &[RR32], &e);
                    fail_rows(r, S_MODES, &ram_peer, &[RR32, RR1], &e);
                }
            }
        }
    }
}

/// Idle CPU per polling mode: 4 exports (2 RAM, 2 file), management API on, no I/O.
fn section_idle(env: &Env, r: &mut Results) {
    let idle_file = env.dir.join("idle.img");
    let devs = [
        ("ram0", "malloc:///ram0?size=256MiB".to_string()),
        ("ram1", "malloc:///ram1?size=256MiB".to_string()),
        ("disk0", env.disk.display().to_string()),
        (
            "disk1",
            format!("uring://{}?size=256MiB", idle_file.display()),
        ),
    ];
    for mode in MODES {
        eprintln!(
            "xtask bench: idle CPU, {mode} mode, 4 exports, {} s ...",
            env.opts.idle
        );
        let res = (|| {
            let (mut p, _) = start_ballast(env, &format!("idle-{mode}"), mode, &devs, true)?;
            let pid = p.pid();
            std::thread::sleep(Duration::from_secs(2));
            p.check_alive()?;
            let t0 = Instant::now();
            let c0 = procs::cpu_ticks(pid).ok_or("cannot read /proc/PID/stat")?;
            let s0 = procs::context_switches(pid).unwrap_or(0);
            std::thread::sleep(Duration::from_secs(env.opts.idle));
            let c1 = procs::cpu_ticks(pid).ok_or("cannot read /proc/PID/stat")?;
            let s1 = procs::context_switches(pid).unwrap_or(0);
            let secs = t0.elapsed().as_secs_f64();
            let threads = procs::thread_count(pid).unwrap_or(0);
            p.check_alive()?;
            let mut errs = Results::default();
            stop(&mut p, &mut errs);
            if let Some(e) = errs.errors.pop() {
                return Err(e);
            }
            Ok(Idle {
                cpu: c1.saturating_sub(c0) as f64 / env.clk / secs * 100.0,
                wakeups: s1.saturating_sub(s0) as f64 / secs,
                threads,
                secs,
            })
        })();
        match &res {
            Ok(i) => eprintln!(
                "xtask bench:   {:.2}% of a core, {:.0} context switches/s",
                i.cpu, i.wakeups
            ),
            Err(e) => eprintln!("xtask bench:   FAILED: {e}"),
        }
        r.idle.push((mode, res));
    }
    let _ = std::fs::remove_file(idle_file);
}

// ---------------------------------------------------------------------------------------
// Report

pub(crate) fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            let s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_else(|| "?".into())
}

/// The first and the last CPU (`"0"`, `"N-1"`), to keep a server and its client apart with
/// `taskset`; `None` with fewer than 2 CPUs or without `taskset`.
pub(crate) fn cpu_pair() -> Option<(String, String)> {
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let taskset = Command::new("taskset")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    (ncpu >= 2 && taskset).then(|| ("0".to_string(), (ncpu - 1).to_string()))
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

pub(crate) fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kib| format!(", {:.0} GiB RAM", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    format!("{ncpu} × {model}, Linux {kernel}{mem}")
}

fn f0(x: f64) -> String {
    format!("{x:.0}")
}
fn f1(x: f64) -> String {
    format!("{x:.1}")
}
fn pct(x: Option<f64>) -> String {
    x.map(|c| format!("{c:.1}")).unwrap_or_else(|| "—".into())
}
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "—".into(),
    }
}

fn short_err(e: &str) -> String {
    let one = e.lines().next().unwrap_or(e).replace('|', "/");
    if one.chars().count() > 90 {
        format!("{}…", one.chars().take(90).collect::<String>())
    } else {
        one
    }
}

/// A table of workload × peer rows with the IOPS ratio of `reference` to each row.
fn peer_table(out: &mut String, r: &Results, section: &str, peers: &[&str], reference: &str) {
    let _ = writeln!(
        out,
        "| workload | server | IOPS | MiB/s | mean lat µs | p99 lat µs | server CPU % | {reference} IOPS ÷ this |"
    );
    let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|--:|");
    for wl in WORKLOADS {
        let refm = r.get(section, reference, wl.key).map(|m| m.iops);
        for peer in peers {
            let row = r
                .rows
                .iter()
                .find(|x| x.section == section && x.peer == *peer && x.wl.key == wl.key);
            match row.map(|x| &x.res) {
                Some(Ok(m)) => {
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {} | {} | {} | {} | {} |",
                        wl.label,
                        peer,
                        f0(m.iops),
                        f1(m.mib_s),
                        f1(m.mean_us),
                        f1(m.p99_us),
                        pct(m.cpu),
                        ratio(refm, Some(m.iops))
                    );
                }
                Some(Err(e)) => {
                    let _ = writeln!(
                        out,
                        "| {} | {} | failed: {} | | | | | |",
                        wl.label,
                        peer,
                        short_err(e)
                    );
                }
                None => {}
            }
        }
    }
}

struct Goal {
    ok: Option<bool>,
    text: String,
}

fn targets(r: &Results) -> Vec<Goal> {
    let iops = |s: &str, p: &str, k: &str| r.get(s, p, k).map(|m| m.iops);
    let mean = |s: &str, p: &str, k: &str| r.get(s, p, k).map(|m| m.mean_us);
    let mut t = Vec::new();

    let (b, q) = (iops(S_FILE, BALLAST, "rr32"), iops(S_FILE, QSD, "rr32"));
    let raw = iops(S_FILE, RAW, "rr32");
    t.push(match (b, q) {
        (Some(b), Some(q)) => Goal {
            ok: Some(b >= 2.5 * q),
            text: format!(
                "4k random read QD32, Ballast file export ≥ 2.5× qemu-storage-daemon: {} vs {} IOPS = {:.2}×{}",
                f0(b),
                f0(q),
                b / q,
                raw.map(|raw| format!(
                    " (the disk itself, raw io_uring at QD32, does {:.2}× qemu-storage-daemon)",
                    raw / q
                ))
                .unwrap_or_default()
            ),
        },
        _ => missing("4k random read QD32, Ballast ≥ 2.5× qemu-storage-daemon"),
    });
    let q = iops(S_FILE, QSD_THREADS, "rr32");
    if let (Some(b), Some(q)) = (b, q) {
        t.push(Goal {
            ok: Some(b >= 2.5 * q),
            text: format!(
                "4k random read QD32, Ballast file export ≥ 2.5× qemu-storage-daemon with its \
                 default aio=threads: {} vs {} IOPS = {:.2}×",
                f0(b),
                f0(q),
                b / q
            ),
        });
    }

    let (b, n) = (
        iops(S_RAM, BALLAST_RAM, "rr32"),
        iops(S_RAM, NBDKIT_MEM, "rr32"),
    );
    t.push(match (b, n) {
        (Some(b), Some(n)) => Goal {
            ok: Some(b >= 0.8 * n),
            text: format!(
                "4k random read QD32, Ballast RAM export ≥ 0.8× nbdkit memory (the ceiling): {} vs {} IOPS = {:.2}×",
                f0(b),
                f0(n),
                b / n
            ),
        },
        _ => missing("4k random read QD32, Ballast RAM ≥ 0.8× nbdkit memory"),
    });

    let (b, raw, proto) = (
        mean(S_FILE, BALLAST, "rr1"),
        mean(S_FILE, RAW, "rr1"),
        mean(S_RAM, NBDKIT_MEM, "rr1"),
    );
    t.push(match (b, raw, proto) {
        (Some(b), Some(raw), Some(p)) => {
            let limit = raw + 1.5 * p;
            Goal {
                ok: Some(b <= limit),
                text: format!(
                    "4k random read QD1 mean latency, Ballast file export ≤ raw + 1.5 × protocol overhead: \
                     {b:.1} µs ≤ {raw:.1} + 1.5 × {p:.1} = {limit:.1} µs"
                ),
            }
        }
        _ => missing("4k random read QD1 latency, Ballast ≤ raw + 1.5 × protocol overhead"),
    });

    let idle = r
        .idle
        .iter()
        .find(|(m, _)| *m == "adaptive")
        .and_then(|(_, x)| x.as_ref().ok());
    t.push(match idle {
        Some(i) => Goal {
            ok: Some(i.cpu < 1.0),
            text: format!(
                "adaptive mode idle CPU (4 exports, no I/O, {:.0} s) < 1% of a core: {:.2}%",
                i.secs, i.cpu
            ),
        },
        None => missing("adaptive idle CPU < 1% of a core"),
    });

    for (what, peer) in [("file", "file"), ("RAM", "RAM")] {
        let a = agg(r, S_MODES, &format!("adaptive / {peer}"), "rr32").map(|x| x.med.iops);
        let p = agg(r, S_MODES, &format!("poll / {peer}"), "rr32").map(|x| x.med.iops);
        t.push(match (a, p) {
            (Some(a), Some(p)) => Goal {
                ok: Some(a >= 0.95 * p),
                text: format!(
                    "adaptive loaded IOPS within 5% of poll (4k random read QD32, {what} export): \
                     {} vs {} IOPS = {:+.1}%",
                    f0(a),
                    f0(p),
                    (a / p - 1.0) * 100.0
                ),
            },
            _ => missing(&format!(
                "adaptive loaded IOPS within 5% of poll ({what} export)"
            )),
        });
    }
    t
}

fn missing(what: &str) -> Goal {
    Goal {
        ok: None,
        text: format!("{what}: not measured (a step failed)"),
    }
}

fn report(env: &Env, r: &Results, load_before: &str, took: Duration) -> String {
    let o = &env.opts;
    let mut s = String::new();
    let rev = sh(
        "git",
        &[
            "-C",
            &env.root.display().to_string(),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    );
    let dirty = Command::new("git")
        .args([
            "-C",
            &env.root.display().to_string(),
            "status",
            "--porcelain",
            "--untracked-files=no",
            "crates",
        ])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Written by `cargo xtask bench` (xtask/src/bench.rs); every run overwrites this file. \
         All numbers below come from one run on one machine, so compare rows with each other, \
         not with other machines. Pool volumes against the raw device (in-process and over \
         NBD), metadata size, import time and memory are in \
         [benchmarks-pool.md](benchmarks-pool.md) (`cargo xtask bench-pool`); Ballast's NVMe/TCP \
         initiator and target against NBD and the raw file in \
         [benchmarks-nvmf.md](benchmarks-nvmf.md) (`cargo xtask bench-nvmf`).\n"
    );
    let _ = writeln!(s, "- Command: `{}`", o.cmdline);
    let _ = writeln!(s, "- Date: {}", sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]));
    let _ = writeln!(s, "- Machine: {}", machine());
    let _ = writeln!(
        s,
        "- Software: {}, {}, {}, ballast-engine at {rev}{}",
        sh("fio", &["--version"]),
        sh("qemu-storage-daemon", &["--version"]),
        sh("nbdkit", &["--version"]),
        if dirty {
            " (uncommitted changes in crates/)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "- Each fio job: {RAMP_SECS} s ramp, then {} s measured; idle sample {} s per mode; {} round(s) of the polling-mode runs; whole run {:.0} s",
        o.runtime,
        o.idle,
        o.rounds,
        took.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "- Load average (1/5/15 min) before: {load_before}, after: {} (other work on the machine skews results)",
        loadavg()
    );
    for n in &r.notes {
        let _ = writeln!(s, "- {n}");
    }

    let _ = writeln!(s, "\n## Targets\n");
    for t in targets(r) {
        let tag = match t.ok {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "NOT MEASURED",
        };
        let _ = writeln!(s, "- **{tag}** {}", t.text);
    }
    let _ = writeln!(
        s,
        "\nProtocol overhead = mean latency of a 4k read from `nbdkit memory` at QD1 (an NBD \
         round trip with no disk behind it). Latency target: Ballast file QD1 mean ≤ raw \
         io_uring QD1 mean + 1.5 × protocol overhead."
    );

    let _ = write!(
        s,
        "\n{}",
        crate::plot::image_line("benchmarks.md", "IOPS of each server")
    );
    let _ = writeln!(s, "## Summary: Ballast IOPS ÷ peer IOPS\n");
    let _ = writeln!(
        s,
        "| workload | ÷ qemu-storage-daemon | ÷ nbdkit file | ÷ raw io_uring | Ballast RAM ÷ nbdkit memory |"
    );
    let _ = writeln!(s, "|---|--:|--:|--:|--:|");
    for wl in WORKLOADS {
        let i = |sec: &str, p: &str| r.get(sec, p, wl.key).map(|m| m.iops);
        let b = i(S_FILE, BALLAST);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            wl.label,
            ratio(b, i(S_FILE, QSD)),
            ratio(b, i(S_FILE, NBDKIT_FILE)),
            ratio(b, i(S_FILE, RAW)),
            ratio(i(S_RAM, BALLAST_RAM), i(S_RAM, NBDKIT_MEM))
        );
    }

    let _ = writeln!(s, "\n## 1. One file, four ways\n");
    let _ = writeln!(
        s,
        "`target/bench/disk.img`, 1 GiB, fully written before the run; each server is stopped \
         before the next starts. fio uses `ioengine=nbd` (libnbd, one connection) for the \
         servers and `ioengine=io_uring, direct=1` on the file for raw. Ballast: \
         `ballast-engine --cores 1 --poll-mode adaptive --device disk=PATH --export disk`. \
         qemu-storage-daemon: `driver=file, cache.direct=on, aio=io_uring`. nbdkit: \
         `nbdkit file PATH cache=none` (nbdkit 1.32 has no O_DIRECT; `cache=none` drops pages \
         after each request, so random reads come from the disk, but writes still go through \
         the page cache and sequential reads get kernel readahead: its write and sequential \
         numbers are not O_DIRECT numbers). Server CPU is user + system time \
         of the server process (all threads) inside the measured window, in % of one core.\n"
    );
    peer_table(
        &mut s,
        r,
        S_FILE,
        &[BALLAST, QSD, QSD_THREADS, NBDKIT_FILE, RAW],
        BALLAST,
    );

    let _ = writeln!(s, "\n## 2. RAM: Ballast vs the protocol ceiling\n");
    let _ = writeln!(
        s,
        "Ballast `malloc:///ram?size=1GiB` vs `nbdkit memory 1G`. Both exports are prefilled \
         (1M sequential writes over the whole 1 GiB) before measuring, so reads return data, \
         not holes.\n"
    );
    peer_table(&mut s, r, S_RAM, &[BALLAST_RAM, NBDKIT_MEM], BALLAST_RAM);

    let _ = writeln!(s, "\n## 3. Polling modes under load\n");
    let _ = writeln!(
        s,
        "One engine per mode (`--poll-mode`), serving the file and a prefilled 1 GiB RAM \
         export; {} round(s), the order of the modes rotating each round. Values are medians \
         over the rounds; the IOPS range shows how much the rounds differed.\n",
        o.rounds
    );
    let _ = writeln!(
        s,
        "| mode | export | workload | IOPS | IOPS range | mean lat µs | p99 lat µs | engine CPU % | IOPS vs poll |"
    );
    let _ = writeln!(s, "|---|---|---|--:|--:|--:|--:|--:|--:|");
    for (export, wl) in [("file", RR32), ("RAM", RR32), ("RAM", RR1)] {
        let poll = agg(r, S_MODES, &format!("poll / {export}"), wl.key).map(|x| x.med.iops);
        for mode in MODES {
            let peer = format!("{mode} / {export}");
            match agg(r, S_MODES, &peer, wl.key) {
                Some(a) => {
                    let m = a.med;
                    let vs = poll
                        .map(|p| format!("{:+.1}%", (m.iops / p - 1.0) * 100.0))
                        .unwrap_or_else(|| "—".into());
                    let failed = if a.ok < a.total {
                        format!(" ({} of {} rounds failed)", a.total - a.ok, a.total)
                    } else {
                        String::new()
                    };
                    let _ = writeln!(
                        s,
                        "| {mode} | {export} | {} | {}{failed} | {}–{} | {} | {} | {} | {vs} |",
                        wl.label,
                        f0(m.iops),
                        f0(a.min_iops),
                        f0(a.max_iops),
                        f1(m.mean_us),
                        f1(m.p99_us),
                        pct(m.cpu)
                    );
                }
                None => {
                    let _ = writeln!(s, "| {mode} | {export} | {} | failed | | | | | |", wl.label);
                }
            }
        }
    }

    let _ = writeln!(s, "\n## 4. Idle CPU\n");
    let _ = writeln!(
        s,
        "`ballast-engine --cores 1` with 4 exports (2 RAM, 2 file) and the management API on, \
         no client; sampled for {} s starting 2 s after it is serving. Context switches are \
         summed over the engine's threads (how often it wakes).\n",
        o.idle
    );
    let _ = writeln!(
        s,
        "| mode | CPU % of one core | context switches/s | threads |"
    );
    let _ = writeln!(s, "|---|--:|--:|--:|");
    for (mode, res) in &r.idle {
        match res {
            Ok(i) => {
                let _ = writeln!(
                    s,
                    "| {mode} | {:.2} | {:.0} | {} |",
                    i.cpu, i.wakeups, i.threads
                );
            }
            Err(e) => {
                let _ = writeln!(s, "| {mode} | failed: {} | | |", short_err(e));
            }
        }
    }

    let errs: Vec<String> = r
        .errors
        .iter()
        .cloned()
        .chain(r.rows.iter().filter_map(|x| {
            x.res
                .as_ref()
                .err()
                .map(|e| format!("{} / {}: {}", x.peer, x.wl.label, e))
        }))
        .chain(
            r.idle
                .iter()
                .filter_map(|(m, x)| x.as_ref().err().map(|e| format!("idle {m}: {e}"))),
        )
        .collect();
    if !errs.is_empty() {
        let _ = writeln!(s, "\n## Problems in this run\n");
        for e in errs {
            let _ = writeln!(s, "- {}", e.replace('\n', " "));
        }
    }
    let _ = writeln!(
        s,
        "\nRaw fio JSON and server logs of the run: `target/bench/logs/`."
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_options() {
        let o = Opts::parse(&[]).unwrap();
        assert_eq!((o.runtime, o.idle, o.rounds, o.quick), (10, 30, 5, false));
        let o = Opts::parse(&["--quick".into()]).unwrap();
        assert_eq!((o.runtime, o.idle, o.rounds), (3, 10, 1));
        assert_eq!(o.cmdline, "cargo xtask bench --quick");
        let o = Opts::parse(&["--quick".into(), "--runtime".into(), "5".into()]).unwrap();
        assert_eq!((o.runtime, o.idle), (5, 10));
        assert!(Opts::parse(&["--runtime".into()]).is_err());
        assert!(Opts::parse(&["--runtime".into(), "0".into()]).is_err());
        assert!(Opts::parse(&["--bogus".into()]).is_err());
    }

    #[test]
    fn parses_fio_json() {
        let text = r#"note: both iodepth >= 1 and synchronous I/O engine are selected
{
  "fio version" : "fio-3.33",
  "jobs" : [ { "jobname" : "rr32", "error" : 0,
      "read" : { "iops" : 50000.5, "bw_bytes" : 204802048,
        "lat_ns" : { "mean" : 640.0e3, "percentile" : { "99.000000" : 1204224 } } },
      "write" : { "iops" : 0.0 } } ]
}
"#;
        let m = parse_fio(text, "randread").unwrap();
        assert_eq!(m.iops, 50000.5);
        assert!((m.mib_s - 195.3).abs() < 0.1);
        assert_eq!(m.mean_us, 640.0);
        assert!((m.p99_us - 1204.224).abs() < 1e-9);
        assert!(parse_fio(text, "randwrite").is_err());
    }

    #[test]
    fn medians_over_rounds() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        let mut r = Results::default();
        for (iops, cpu) in [(100.0, Some(50.0)), (300.0, None), (200.0, Some(70.0))] {
            r.rows.push(Row {
                section: S_MODES,
                peer: "poll / RAM".into(),
                wl: RR32,
                res: Ok(Measure {
                    iops,
                    mib_s: 1.0,
                    mean_us: iops / 10.0,
                    p99_us: 2.0,
                    cpu,
                }),
            });
        }
        r.rows.push(Row {
            section: S_MODES,
            peer: "poll / RAM".into(),
            wl: RR32,
            res: Err("x".into()),
        });
        let a = agg(&r, S_MODES, "poll / RAM", "rr32").unwrap();
        assert_eq!((a.med.iops, a.min_iops, a.max_iops), (200.0, 100.0, 300.0));
        assert_eq!((a.ok, a.total), (3, 4));
        assert_eq!(a.med.mean_us, 20.0);
        assert_eq!(a.med.cpu, Some(60.0));
        assert!(agg(&r, S_MODES, "adaptive / RAM", "rr32").is_none());
    }

    #[test]
    fn targets_report_missing_steps() {
        let r = Results::default();
        let t = targets(&r);
        assert_eq!(t.len(), 6);
        assert!(t.iter().all(|x| x.ok.is_none()));
    }
}
