//! `cargo xtask bench [--quick] [--runtime SECS]`: the engine against its peers in one run,
//! on one backing file; writes docs/benchmarks.md.
//!
//! Peers: raw io_uring `O_DIRECT` on the file (fio), qemu-storage-daemon's NBD export, nbdkit's
//! file plugin, and for the protocol ceiling nbdkit's memory plugin vs Ballast's RAM export.
//! Every figure that matters is a ratio against a peer measured in the same invocation.

use std::fmt::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{cargo, root, run};

/// A child process killed when dropped.
struct Server {
    child: Child,
    name: &'static str,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM first (the engine flushes), then make sure.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(name: &'static str, cmd: &mut Command, port: u16) -> Result<Server, String> {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {name}: {e}"))?;
        let s = Server { child, name };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("{} did not listen on port {port}", s.name))
    }

    fn cpu_ticks(&self) -> u64 {
        cpu_ticks(self.child.id())
    }
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces): utime is field 14, stime 15.
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

fn ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

#[derive(Clone, Copy)]
struct Job {
    label: &'static str,
    rw: &'static str,
    bs: &'static str,
    qd: u32,
}

const JOBS: [Job; 6] = [
    Job {
        label: "4k randread QD1",
        rw: "randread",
        bs: "4k",
        qd: 1,
    },
    Job {
        label: "4k randread QD32",
        rw: "randread",
        bs: "4k",
        qd: 32,
    },
    Job {
        label: "4k randwrite QD1",
        rw: "randwrite",
        bs: "4k",
        qd: 1,
    },
    Job {
        label: "4k randwrite QD32",
        rw: "randwrite",
        bs: "4k",
        qd: 32,
    },
    Job {
        label: "1M read QD8",
        rw: "read",
        bs: "1M",
        qd: 8,
    },
    Job {
        label: "1M write QD8",
        rw: "write",
        bs: "1M",
        qd: 8,
    },
];

#[derive(Clone, Copy, Default)]
struct Res {
    iops: f64,
    mean_us: f64,
    p99_us: f64,
    cpu: Option<f64>,
}

fn parse_fio(json: &str, write: bool) -> Result<Res, String> {
    let script = format!(
        "import json,sys\ntext=sys.stdin.read()\nd=json.loads(text[text.find('{{'):])\nj=d['jobs'][0]['{}']\n\
         p=j['clat_ns'].get('percentile',{{}})\nprint(j['iops'], j['lat_ns']['mean']/1000.0, p.get('99.000000',0)/1000.0)",
        if write { "write" } else { "read" }
    );
    let mut c = Command::new("python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("python3: {e}"))?;
    use std::io::Write;
    c.stdin
        .take()
        .expect("piped")
        .write_all(json.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = c.wait_with_output().map_err(|e| e.to_string())?;
    let s = String::from_utf8_lossy(&out.stdout);
    let v: Vec<f64> = s
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() != 3 {
        return Err(format!(
            "cannot parse fio output: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(Res {
        iops: v[0],
        mean_us: v[1],
        p99_us: v[2],
        cpu: None,
    })
}

fn fio(target: &[String], job: &Job, runtime: u32) -> Result<Res, String> {
    let out = Command::new("fio")
        .args([
            "--name=bench",
            &format!("--rw={}", job.rw),
            &format!("--bs={}", job.bs),
            &format!("--iodepth={}", job.qd),
            "--time_based",
            &format!("--runtime={runtime}"),
            "--ramp_time=1",
            "--size=1G",
            "--output-format=json",
            "--randrepeat=0",
        ])
        .args(target)
        .output()
        .map_err(|e| format!("fio: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "fio failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse_fio(
        &String::from_utf8_lossy(&out.stdout),
        job.rw.contains("write"),
    )
}

fn nbd_target(port: u16, name: &str) -> Vec<String> {
    vec![
        "--ioengine=nbd".into(),
        format!("--uri=nbd://127.0.0.1:{port}/{name}"),
    ]
}

fn run_jobs(
    server: Option<&Server>,
    target: &[String],
    jobs: &[Job],
    runtime: u32,
) -> Result<Vec<Res>, String> {
    let hz = ticks_per_sec();
    let mut out = Vec::new();
    for j in jobs {
        let t0 = Instant::now();
        let c0 = server.map(|s| s.cpu_ticks());
        let mut r = fio(target, j, runtime)?;
        if let (Some(s), Some(c0)) = (server, c0) {
            let secs = t0.elapsed().as_secs_f64();
            r.cpu = Some((s.cpu_ticks() - c0) as f64 / hz / secs * 100.0);
        }
        eprintln!(
            "  {:<18} {:>9.0} IOPS  {:>8.1} µs mean  {:>8.1} µs p99",
            j.label, r.iops, r.mean_us, r.p99_us
        );
        out.push(r);
    }
    Ok(out)
}

fn engine_cmd(port: u16, mode: &str) -> Command {
    let mut c = Command::new(root().join("target/release/ballast-engine"));
    c.args([
        "--nbd-listen",
        &format!("127.0.0.1:{port}"),
        "--grpc-listen",
        "none",
        "--cores",
        "1",
        "--poll-mode",
        mode,
    ]);
    c
}

fn prepare_disk(path: &Path) -> Result<(), String> {
    let full = std::fs::metadata(path)
        .map(|m| m.len() == 1 << 30)
        .unwrap_or(false);
    if full {
        return Ok(());
    }
    eprintln!("bench: writing the 1 GiB backing file");
    let mut c = Command::new("fio");
    c.args([
        "--name=fill",
        "--rw=write",
        "--bs=1M",
        "--size=1G",
        "--direct=1",
        "--ioengine=io_uring",
        "--iodepth=8",
        "--refill_buffers",
    ])
    .arg(format!("--filename={}", path.display()))
    .stdout(Stdio::null());
    run(c, "filling the backing file")
}

fn idle_cpu(mode: &str, secs: u64) -> Result<f64, String> {
    let port = 11900;
    let mut c = engine_cmd(port, mode);
    for i in 0..4 {
        c.args([
            "--device",
            &format!("r{i}=malloc:///r{i}?size=256MiB"),
            "--export",
            &format!("r{i}"),
        ]);
    }
    let s = Server::start("ballast-engine", &mut c, port)?;
    std::thread::sleep(Duration::from_secs(2));
    let c0 = s.cpu_ticks();
    std::thread::sleep(Duration::from_secs(secs));
    let pct = (s.cpu_ticks() - c0) as f64 / ticks_per_sec() / secs as f64 * 100.0;
    eprintln!("  idle {mode:<10} {pct:.2}% of a core");
    Ok(pct)
}

fn table(out: &mut String, peers: &[(&str, &[Res])], jobs: &[Job]) {
    let _ = write!(out, "| workload |");
    for (p, _) in peers {
        let _ = write!(out, " {p} IOPS | mean µs | p99 µs | CPU % |");
    }
    out.push('\n');
    let _ = write!(out, "|---|");
    for _ in peers {
        let _ = write!(out, "---:|---:|---:|---:|");
    }
    out.push('\n');
    for (i, j) in jobs.iter().enumerate() {
        let _ = write!(out, "| {} |", j.label);
        for (_, r) in peers {
            let r = r[i];
            let cpu = r
                .cpu
                .map(|c| format!("{c:.0}"))
                .unwrap_or_else(|| "—".into());
            let _ = write!(
                out,
                " {:.0} | {:.1} | {:.1} | {} |",
                r.iops, r.mean_us, r.p99_us, cpu
            );
        }
        out.push('\n');
    }
}

fn cmd_out(c: &str, args: &[&str]) -> String {
    Command::new(c)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub fn bench(args: &[String]) -> Result<(), String> {
    let quick = args.iter().any(|a| a == "--quick");
    let runtime: u32 = args
        .iter()
        .position(|a| a == "--runtime")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 3 } else { 10 });
    let idle_secs = if quick { 10 } else { 30 };
    let mut b = cargo();
    b.args(["build", "--release", "-p", "ballast-engine"]);
    run(b, "cargo build --release")?;
    let dir: PathBuf = root().join("target/bench");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let disk = dir.join("disk.img");
    prepare_disk(&disk)?;
    let d = disk.display().to_string();
    let port = 11810;

    eprintln!("raw io_uring O_DIRECT:");
    let raw_t = vec![
        "--ioengine=io_uring".to_string(),
        "--direct=1".into(),
        format!("--filename={d}"),
    ];
    let raw = run_jobs(None, &raw_t, &JOBS, runtime)?;

    eprintln!("ballast NBD (file, adaptive):");
    let ballast = {
        let mut c = engine_cmd(port, "adaptive");
        c.args(["--device", &format!("disk={d}"), "--export", "disk"]);
        let s = Server::start("ballast-engine", &mut c, port)?;
        run_jobs(Some(&s), &nbd_target(port, "disk"), &JOBS, runtime)?
    };
    eprintln!("qemu-storage-daemon NBD:");
    let qsd = {
        let mut c = Command::new("qemu-storage-daemon");
        c.args([
            "--blockdev",
            &format!("driver=file,node-name=f,filename={d},cache.direct=on,aio=io_uring"),
            "--nbd-server",
            &format!("addr.type=inet,addr.host=127.0.0.1,addr.port={port}"),
            "--export",
            "type=nbd,id=e,node-name=f,name=disk,writable=on",
        ]);
        let s = Server::start("qemu-storage-daemon", &mut c, port)?;
        run_jobs(Some(&s), &nbd_target(port, "disk"), &JOBS, runtime)?
    };
    eprintln!("nbdkit file:");
    let nbdkit_file = {
        let mut c = Command::new("nbdkit");
        c.args([
            "-f",
            "-p",
            &port.to_string(),
            "--exit-with-parent",
            "file",
            &d,
            "cache=none",
        ]);
        let s = Server::start("nbdkit", &mut c, port)?;
        run_jobs(Some(&s), &nbd_target(port, ""), &JOBS, runtime)?
    };
    let ram_jobs = [JOBS[0], JOBS[1], JOBS[2], JOBS[3]];
    eprintln!("ballast RAM export:");
    let ballast_ram = {
        let mut c = engine_cmd(port, "adaptive");
        c.args(["--device", "ram=malloc:///ram?size=1GiB", "--export", "ram"]);
        let s = Server::start("ballast-engine", &mut c, port)?;
        run_jobs(Some(&s), &nbd_target(port, "ram"), &ram_jobs, runtime)?
    };
    eprintln!("nbdkit memory:");
    let nbdkit_mem = {
        let mut c = Command::new("nbdkit");
        c.args([
            "-f",
            "-p",
            &port.to_string(),
            "--exit-with-parent",
            "memory",
            "1G",
        ]);
        let s = Server::start("nbdkit", &mut c, port)?;
        run_jobs(Some(&s), &nbd_target(port, ""), &ram_jobs, runtime)?
    };
    let mode_job = [JOBS[1]];
    let mut modes = Vec::new();
    for mode in ["poll", "interrupt", "adaptive"] {
        eprintln!("ballast NBD (file, {mode}) 4k randread QD32:");
        let mut c = engine_cmd(port, mode);
        c.args(["--device", &format!("disk={d}"), "--export", "disk"]);
        let s = Server::start("ballast-engine", &mut c, port)?;
        let r = run_jobs(Some(&s), &nbd_target(port, "disk"), &mode_job, runtime)?;
        modes.push((mode, r[0]));
    }
    eprintln!("idle CPU, 4 exports, no I/O, {idle_secs} s:");
    let mut idle = Vec::new();
    for mode in ["poll", "interrupt", "adaptive"] {
        idle.push((mode, idle_cpu(mode, idle_secs)?));
    }

    // Targets.
    let qd32 = ballast[1].iops;
    let ratio_qsd = qd32 / qsd[1].iops;
    let ratio_ceiling = ballast_ram[1].iops / nbdkit_mem[1].iops;
    let overhead = nbdkit_mem[0].mean_us; // one NBD round trip with no disk behind it
    let qd1_limit = raw[0].mean_us + 1.5 * overhead;
    let adaptive_idle = idle
        .iter()
        .find(|(m, _)| *m == "adaptive")
        .map(|x| x.1)
        .unwrap_or(f64::NAN);
    let poll_iops = modes
        .iter()
        .find(|(m, _)| *m == "poll")
        .map(|x| x.1.iops)
        .unwrap_or(f64::NAN);
    let adaptive_iops = modes
        .iter()
        .find(|(m, _)| *m == "adaptive")
        .map(|x| x.1.iops)
        .unwrap_or(f64::NAN);
    let pf = |ok: bool| if ok { "PASS" } else { "FAIL" };

    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Produced by `cargo xtask bench{}` (fio {runtime} s per job after 1 s ramp, 1 reactor). \
         Absolute figures drift on shared machines; compare the ratios, which come from peers \
         measured in the same run on the same 1 GiB backing file (`target/bench/disk.img`, \
         fully written).\n",
        if quick { " --quick" } else { "" }
    );
    let cpu = cmd_out(
        "sh",
        &["-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
    );
    let _ = writeln!(
        md,
        "Machine: {} CPUs,{}, kernel {}; {}; date {}.\n",
        cmd_out("nproc", &[]),
        cpu,
        cmd_out("uname", &["-r"]),
        cmd_out("fio", &["--version"]),
        cmd_out("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
    );
    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(md, "| target | measured | result |\n|---|---|---|");
    let _ = writeln!(
        md,
        "| 4k randread QD32 through Ballast ≥ 2.5× qemu-storage-daemon | {ratio_qsd:.2}× ({qd32:.0} vs {:.0} IOPS) | {} |",
        qsd[1].iops,
        pf(ratio_qsd >= 2.5)
    );
    let _ = writeln!(
        md,
        "| Ballast RAM export 4k randread QD32 ≥ 0.8× nbdkit memory (the NBD ceiling) | {ratio_ceiling:.2}× ({:.0} vs {:.0} IOPS) | {} |",
        ballast_ram[1].iops,
        nbdkit_mem[1].iops,
        pf(ratio_ceiling >= 0.8)
    );
    let _ = writeln!(
        md,
        "| QD1 read latency ≤ raw + 1.5 × protocol overhead (overhead = nbdkit memory QD1 mean latency) | {:.1} µs ≤ {:.1} + 1.5 × {:.1} = {qd1_limit:.1} µs | {} |",
        ballast[0].mean_us,
        raw[0].mean_us,
        overhead,
        pf(ballast[0].mean_us <= qd1_limit)
    );
    let _ = writeln!(
        md,
        "| adaptive idle CPU < 1% of a core | {adaptive_idle:.2}% | {} |",
        pf(adaptive_idle < 1.0)
    );
    let _ = writeln!(
        md,
        "| adaptive loaded IOPS within 5% of poll | {:.3}× ({adaptive_iops:.0} vs {poll_iops:.0}) | {} |\n",
        adaptive_iops / poll_iops,
        pf(adaptive_iops >= 0.95 * poll_iops)
    );
    let _ = writeln!(md, "## File-backed: Ballast vs peers\n");
    table(
        &mut md,
        &[
            ("raw", &raw),
            ("Ballast", &ballast),
            ("qsd", &qsd),
            ("nbdkit file", &nbdkit_file),
        ],
        &JOBS,
    );
    let _ = writeln!(md, "\nRatios of Ballast to each peer (IOPS):\n");
    let _ = writeln!(
        md,
        "| workload | ÷ raw | ÷ qsd | ÷ nbdkit file |\n|---|---:|---:|---:|"
    );
    for (i, j) in JOBS.iter().enumerate() {
        let b = ballast[i].iops;
        let _ = writeln!(
            md,
            "| {} | {:.2} | {:.2} | {:.2} |",
            j.label,
            b / raw[i].iops,
            b / qsd[i].iops,
            b / nbdkit_file[i].iops
        );
    }
    let _ = writeln!(
        md,
        "\n## RAM: Ballast malloc export vs nbdkit memory (protocol ceiling)\n"
    );
    let _ = writeln!(
        md,
        "Both exports start empty (reads of holes; Ballast answers them from its allocation map without touching memory).\n"
    );
    table(
        &mut md,
        &[
            ("Ballast RAM", &ballast_ram),
            ("nbdkit memory", &nbdkit_mem),
        ],
        &ram_jobs,
    );
    let _ = writeln!(md, "\n## Polling modes\n");
    let _ = writeln!(
        md,
        "| mode | 4k randread QD32 IOPS (file) | engine CPU % under load | idle CPU % (4 exports, {idle_secs} s) |\n|---|---:|---:|---:|"
    );
    for ((m, r), (_, i)) in modes.iter().zip(&idle) {
        let _ = writeln!(
            md,
            "| {m} | {:.0} | {:.0} | {i:.2} |",
            r.iops,
            r.cpu.unwrap_or(0.0)
        );
    }
    let path = root().join("docs/benchmarks.md");
    std::fs::write(&path, &md).map_err(|e| format!("writing {}: {e}", path.display()))?;
    println!("{md}");
    eprintln!("bench: wrote {}", path.display());
    Ok(())
}
