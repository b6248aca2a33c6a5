//! `cargo xtask bench-nvmf [SECS [ROUNDS]]`: Ballast's NVMe/TCP initiator against Ballast's
//! NVMe/TCP target, compared with NBD (Ballast's initiator and fio) and the raw file, all on
//! one file on the machine's disk. The measuring is done by the example
//! `crates/engine/examples/nvmf_bench.rs`; this builds it and the engine, pins the engine
//! and the client to different CPUs, and writes docs/benchmarks-nvmf.md.

use std::process::{Command, Stdio};

use crate::bench::{loadavg, machine, sh};
use crate::engine_bench::{ExampleRun, Placement, run_example, write_doc};

/// Runs the benchmark and writes docs/benchmarks-nvmf.md.
pub fn bench_nvmf(args: &[String]) -> Result<(), String> {
    if Command::new("fio")
        .arg("--enghelp=nbd")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_or(true, |s| !s.success())
    {
        return Err("bench-nvmf needs fio with its nbd engine (`apt-get install fio`)".into());
    }
    // The engine on CPU 0, this side (the initiators, fio) on the last CPU.
    let ExampleRun {
        secs,
        rounds,
        placement,
        stdout,
        load_before,
        rev,
    } = run_example("bench-nvmf", "nvmf_bench", args, true, "nvmf-engine.log")?;
    let pinning = match &placement {
        Some(Placement {
            engines: s,
            client: c,
        }) => format!(
            "The engine runs on CPU {s} (`taskset`, `--cores 1`, adaptive polling), the initiators \
             and fio on CPU {c}."
        ),
        None => "No CPU pinning (needs 2+ CPUs and `taskset`).".to_string(),
    };
    let doc = format!(
        "# NVMe/TCP benchmarks\n\n\
         Written by `cargo xtask bench-nvmf {secs} {rounds}` (xtask/src/bench_nvmf.rs, \
         crates/engine/examples/nvmf_bench.rs); every run overwrites this file. Other benchmarks: \
         [benchmarks.md](benchmarks.md) (NBD against other servers), \
         [benchmarks-pool.md](benchmarks-pool.md), [benchmarks-nexus.md](benchmarks-nexus.md).\n\n\
         One `ballast-engine` exports one 1 GiB file (`target/bench/nvmf.img`, io_uring, \
         O_DIRECT, fully written first) over NVMe/TCP and over NBD. The same workloads run \
         through Ballast's NVMe/TCP initiator (`nvmf://`) and Ballast's NBD initiator \
         (`nbd://`), both in the benchmark's process driven by `blockdev::loadgen` (one reactor, \
         one connection/queue), through fio `ioengine=nbd` (libnbd) against the same export, \
         and straight on the file: `uring://` in-process with the same load generator, and fio \
         `ioengine=io_uring, direct=1`. fio has no NVMe/TCP engine that works without the \
         kernel's nvme-tcp module (absent here), so the NVMe/TCP side is measured in-process \
         and compared like for like with the in-process NBD initiator; fio through NBD is the \
         third-party reference. {pinning} The configurations alternate within each round, \
         their order rotating, so drift of the shared disk and other work on the machine hit \
         them alike; figures are medians over the rounds, ratios medians of the per-round \
         ratios. Latency is from submission to completion as the caller sees it (fio: `lat`).\n\n\
         - Date: {}\n- Machine: {}\n- Software: {}, ballast-engine at {rev}\n\
         - Load average (1/5/15 min) before: {load_before}, after: {} (other work on the \
         machine skews results)\n\n{}{}",
        sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        machine(),
        sh("fio", &["--version"]),
        loadavg(),
        crate::plot::image_line("benchmarks-nvmf.md", "Median IOPS of each path"),
        stdout
    );
    write_doc("bench-nvmf", "benchmarks-nvmf.md", &doc)?;
    crate::plot::plot_doc("benchmarks-nvmf.md").map(drop)
}
