//! `cargo xtask`: the project's tasks.
//!
//! - `demo`  — build and run a local three-node cluster serving a replicated volume (`demo.rs`).
//! - `test`  — install what the tests need (when missing) and run the whole suite.
//! - `bench` — benchmarks against peers, written to docs/benchmarks.md.
//! - `plot`  — redraws the charts (docs/benchmarks*.svg) from the benchmark documents.
//! - `vm`    — the test guest (crates/testvm): build it, run a script or a shell in it.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod bench;
mod bench_nexus;
mod bench_nvmf;
mod demo;
#[cfg(test)]
mod deps;
mod engine_bench;
mod json;
mod plot;
mod procs;
mod vm;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(mut c: Command, what: &str) -> Result<(), String> {
    let st = c
        .status()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({st})"))
    }
}

const USAGE: &str = "usage: cargo xtask <demo [--fresh] [--check [--debug]] | test [--lint] [NEXTEST ARGS...] | bench [--quick] [--runtime SECS] [--idle SECS] [--rounds N] | bench-pool [SECS [ROUNDS]] | bench-nexus [SECS [ROUNDS]] | bench-nvmf [SECS [ROUNDS]] | plot | vm build | vm run SCRIPT [--timeout SECS] [--hostfwd HOST:GUEST]... [--disk PATH]... [--cpus N] [--quiet] | vm shell [same flags]>";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("demo") => demo::demo(&args[1..]),
        Some("test") => test(&args[1..]),
        Some("bench") => bench::bench(&args[1..]),
        Some("bench-pool") => bench_pool(&args[1..]),
        Some("bench-nexus") => bench_nexus::bench_nexus(&args[1..]),
        Some("bench-nvmf") => bench_nvmf::bench_nvmf(&args[1..]),
        Some("plot") => plot::plot(&args[1..]),
        Some("vm") => vm::vm(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(USAGE.to_string()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Builds the release engine and CLI.
fn build_release() -> Result<(), String> {
    let mut b = cargo();
    b.args([
        "build",
        "--release",
        "-p",
        "ballast-engine",
        "-p",
        "ballast-cli",
    ]);
    run(b, "cargo build --release")
}

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

fn python_has_nbd() -> bool {
    Command::new("/usr/bin/python3")
        .args(["-c", "import nbd"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Installs the Debian packages the tests use, when their tools are missing.
fn ensure_tools() -> Result<(), String> {
    let mut missing: Vec<&str> = Vec::new();
    let checks: [(&str, &str, &str); 12] = [
        ("fio", "--version", "fio"),
        ("nbdinfo", "--version", "libnbd-bin"),
        ("nbdcopy", "--version", "libnbd-bin"),
        ("nbdsh", "--version", "libnbd-bin"),
        ("nbdkit", "--version", "nbdkit"),
        ("qemu-img", "--version", "qemu-utils"),
        ("qemu-io", "--version", "qemu-utils"),
        ("qemu-storage-daemon", "--version", "qemu-system-common"),
        // Pool tests make real file systems and swap to prove `pool create` refuses them.
        ("mkfs.ext4", "-V", "e2fsprogs"),
        ("mkswap", "--version", "util-linux"),
        // Multi-node tests: namespaces and veth (ip), link cuts (iptables).
        ("ip", "-V", "iproute2"),
        ("iptables", "-V", "iptables"),
    ];
    for (tool, arg, pkg) in checks {
        if !have(tool, arg) && !missing.contains(&pkg) {
            missing.push(pkg);
        }
    }
    if !python_has_nbd() && !missing.contains(&"python3-libnbd") {
        missing.push("python3-libnbd");
    }
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask test: installing missing test tools: {}",
        missing.join(" ")
    );
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let sudo = uid.ok().as_deref() != Some("0");
    if sudo && !have("sudo", "--version") {
        return Err(format!(
            "missing test tools need `apt-get install {}`, but this is not root and sudo is \
             not installed; install them as root and rerun",
            missing.join(" ")
        ));
    }
    if sudo {
        eprintln!("xtask test: not root, using sudo for apt-get");
    }
    let apt = |args: &[&str]| {
        let mut c = if sudo {
            Command::new("sudo")
        } else {
            Command::new("apt-get")
        };
        if sudo {
            c.args(["DEBIAN_FRONTEND=noninteractive", "apt-get"]);
        }
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run(apt(&["update", "-qq"]), "apt-get update")?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(missing.iter().copied());
    run(apt(&args), "apt-get install")
}

fn test(args: &[String]) -> Result<(), String> {
    ensure_tools()?;
    if let Err(e) = vm::ensure_for_tests() {
        eprintln!("xtask test: cannot build the guest image ({e}); the guest tests will fail");
    }
    let ci = std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false);
    let lint = ci || args.iter().any(|a| a == "--lint");
    let rest: Vec<&String> = args.iter().filter(|a| *a != "--lint").collect();
    if lint {
        let mut f = cargo();
        f.args(["fmt", "--all", "--check"]);
        run(f, "cargo fmt --check")?;
        let mut c = cargo();
        c.args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]);
        run(c, "cargo clippy -D warnings")?;
    }
    let nextest = cargo()
        .args(["nextest", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let nextest = nextest || {
        eprintln!("xtask test: installing cargo-nextest");
        let mut i = cargo();
        i.args(["install", "cargo-nextest", "--locked"]);
        run(i, "cargo install cargo-nextest").is_ok()
    };
    let mut t = cargo();
    if nextest {
        t.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    } else {
        eprintln!("xtask test: cargo-nextest unavailable, using cargo test");
        t.args(["test", "--workspace", "--no-fail-fast"]);
    }
    t.args(&rest);
    let st = t
        .status()
        .map_err(|e| format!("tests: cannot start: {e}"))?;
    // The demo's life cycle (`cargo xtask demo --check`) with the debug binaries, after a
    // whole-suite run only; see docs/testing.md.
    let demo = if rest.is_empty() {
        demo::test_step()
    } else {
        eprintln!("xtask test: demo check skipped (nextest arguments given)");
        Ok(())
    };
    if !st.success() {
        // Exit with the runner's own status (nextest uses distinct codes).
        let code = st.code().unwrap_or(1);
        if let Err(e) = &demo {
            eprintln!("xtask: {e}");
        }
        eprintln!("xtask test: tests failed ({st})");
        std::process::exit(if code == 0 { 1 } else { code });
    }
    demo
}

/// The in-process pool benchmark (`crates/pool/examples/pool_bench.rs`): a pool volume vs the
/// raw file under it, no network; writes docs/benchmarks-pool.md.
fn bench_pool(args: &[String]) -> Result<(), String> {
    let secs = args.first().cloned().unwrap_or_else(|| "5".into());
    let rounds = args.get(1).cloned().unwrap_or_else(|| "3".into());
    let mut b = cargo();
    b.args([
        "build",
        "--release",
        "-p",
        "pool",
        "--example",
        "pool_bench",
    ]);
    run(b, "cargo build --release --example pool_bench")?;
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let img = dir.join("pool.img");
    let _ = std::fs::remove_file(&img);
    let out = Command::new(root().join("target/release/examples/pool_bench"))
        .arg(&img)
        .arg(&secs)
        .arg(&rounds)
        .output()
        .map_err(|e| format!("pool_bench: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "pool_bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = |c: &str, a: &[&str]| {
        Command::new(c)
            .args(a)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let doc = format!(
        "# Pool benchmarks\n\nWritten by `cargo xtask bench-pool {secs} {rounds}` on {}; kernel {}, {} CPUs. \
         In-process (no network): one reactor drives 4k random and 1M sequential I/O through \
         `blockdev` traits at the given queue depth on a 3 GiB file (`uring`, O_DIRECT, \
         `target/bench/pool.img`) holding a pool. The raw side runs on the file's last GiB \
         (free pool clusters, written first), alternating with the same workload on the pool \
         volume, {rounds} rounds of {secs} s each; the ratio is the median of the per-round \
         ratios (their range is shown), so drift of the shared disk hits both sides alike. \
         Absolute figures drift between runs.\n\n\
         (a) a thick 1 GiB volume, fully written first; (b) first writes into a thin volume \
         (every write allocates and zero-fills a 128 KiB cluster); (c) first writes into \
         clusters shared with a snapshot (copy-on-write: read 128 KiB, write 128 KiB).\n\n{}",
        text("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        text("uname", &["-r"]),
        text("nproc", &[]),
        String::from_utf8_lossy(&out.stdout)
    );
    let _ = std::fs::remove_file(&img);
    let nbd = pool_over_nbd(&dir, &secs, rounds.parse().unwrap_or(3))?;
    let doc = format!("{doc}\n{nbd}");
    let path = root().join("docs/benchmarks-pool.md");
    std::fs::write(&path, &doc).map_err(|e| e.to_string())?;
    print!("{doc}");
    Ok(())
}

/// A thick pool volume vs a bare file, both exported by one engine over NBD, through fio.
fn pool_over_nbd(dir: &Path, secs: &str, rounds: usize) -> Result<String, String> {
    build_release()?;
    let (nbd_port, api_port) = (procs::free_port()?, procs::free_port()?);
    let (pool_img, bare_img) = (dir.join("pool-nbd.img"), dir.join("bare-nbd.img"));
    let _ = std::fs::remove_file(&pool_img);
    let _ = std::fs::remove_file(&bare_img);
    let mut c = Command::new(root().join("target/release/ballast-engine"));
    c.args([
        "--cores",
        "1",
        "--nbd-listen",
        &format!("127.0.0.1:{nbd_port}"),
    ])
    .args(["--grpc-listen", &format!("127.0.0.1:{api_port}")])
    .arg("--device")
    .arg(format!("d=uring://{}?size=2GiB", pool_img.display()))
    .arg("--device")
    .arg(format!("f=uring://{}?size=1GiB", bare_img.display()))
    .args(["--export", "f"]);
    let mut engine = procs::Proc::spawn("ballast-engine", c, &dir.join("pool-nbd.log"), false)?;
    engine.wait_port(api_port, std::time::Duration::from_secs(20))?;
    let api = format!("http://127.0.0.1:{api_port}");
    for args in [
        &["pool", "create", "p", "d"][..],
        &["volume", "create", "p", "v", "1GiB", "--thick"],
        &["export", "create", "v", "p/v"],
    ] {
        let mut c = Command::new(root().join("target/release/ballast"));
        c.arg("--engine")
            .arg(&api)
            .args(args)
            .stdout(std::process::Stdio::null());
        run(c, &format!("ballast {}", args.join(" ")))?;
    }
    let fio = |export: &str, rw: &str, bs: &str, qd: &str, timed: bool| -> Result<f64, String> {
        let mut c = Command::new("fio");
        c.args([
            "--name=b",
            "--ioengine=nbd",
            "--size=1G",
            "--output-format=terse",
        ])
        .arg(format!("--uri=nbd://127.0.0.1:{nbd_port}/{export}"))
        .args([
            format!("--rw={rw}"),
            format!("--bs={bs}"),
            format!("--iodepth={qd}"),
        ]);
        if timed {
            c.args([
                "--time_based",
                &format!("--runtime={secs}"),
                "--ramp_time=1",
            ]);
        }
        let out = c.output().map_err(|e| format!("fio: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "fio failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // Terse v3: field 8 is read IOPS, field 49 write IOPS (1-based).
        let line = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
            .to_string();
        let f: Vec<&str> = line.split(';').collect();
        let idx = if rw.contains("write") { 48 } else { 7 };
        f.get(idx)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("cannot parse fio: {line}"))
    };
    let rss = |pid: u32| -> f64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
            .unwrap_or(0.0)
            / 1024.0
    };
    for e in ["f", "v"] {
        fio(e, "write", "1M", "8", false)?;
    }
    let mut rows = String::new();
    let mut pass = true;
    for (label, rw) in [
        ("4k randread QD32", "randread"),
        ("4k randwrite QD32", "randwrite"),
    ] {
        // Alternate so drift hits both alike; the ratio is the median of the rounds'.
        let (mut bare, mut vol, mut q) = (0.0, 0.0, Vec::new());
        for _ in 0..rounds.max(1) {
            let b = fio("f", rw, "4k", "32", true)?;
            let v = fio("v", rw, "4k", "32", true)?;
            bare += b;
            vol += v;
            q.push(v / b);
        }
        q.sort_by(f64::total_cmp);
        let med = if q.len() % 2 == 1 {
            q[q.len() / 2]
        } else {
            (q[q.len() / 2 - 1] + q[q.len() / 2]) / 2.0
        };
        pass &= med >= 0.9;
        let n = q.len() as f64;
        rows.push_str(&format!(
            "| {label} | {:.0} | {:.0} | {med:.2} | {:.2}–{:.2} |\n",
            bare / n,
            vol / n,
            q[0],
            q[q.len() - 1]
        ));
    }
    let engine_rss = rss(engine.pid());
    let _ = engine.stop(std::time::Duration::from_secs(10));
    let _ = std::fs::remove_file(&pool_img);
    let _ = std::fs::remove_file(&bare_img);
    Ok(format!(
        "## Through NBD\n\nOne engine (`--cores 1`) exports a bare 1 GiB file and a thick 1 GiB pool \
         volume (on a second file), both filled first; fio `ioengine=nbd`, {secs} s per job, each \
         job alternated {rounds} times between the two exports (mean IOPS; the ratio is the \
         median of the rounds' ratios, their range shown).\n\n\
         | workload | bare file IOPS | pool volume IOPS | volume ÷ bare (median) | per-round range |\n\
         |---|---:|---:|---:|---|\n{rows}\n\
         **{}** pool volume ≥ 0.9× the bare-file export's IOPS.\n\n\
         Engine memory (VmRSS) after the runs, with the pool (2 GiB, one 1 GiB thick volume) \
         and both exports: {engine_rss:.1} MiB.\n",
        if pass { "PASS" } else { "MISS" }
    ))
}
