//! `cargo xtask bench-nexus [SECS [ROUNDS]]`: the nexus over a local replica and remote
//! replicas in other `ballast-engine` processes over NVMe/TCP, rebuild against a raw copy,
//! partial rebuilds against the data dirtied. The measuring is done by the example
//! `crates/engine/examples/nexus_bench.rs`; this builds it and the engine, places the nexus
//! and the replica engines on different CPUs, and writes docs/benchmarks-nexus.md.

use crate::bench::{loadavg, machine, sh};
use crate::engine_bench::{ExampleRun, Placement, run_example, write_doc};

/// Runs the benchmark and writes docs/benchmarks-nexus.md.
pub fn bench_nexus(args: &[String]) -> Result<(), String> {
    // The nexus on CPU 0, both replica engines on the last CPU.
    let ExampleRun {
        secs,
        rounds,
        placement,
        stdout,
        load_before,
        rev,
    } = run_example(
        "bench-nexus",
        "nexus_bench",
        args,
        false,
        "nexus-replica*.log",
    )?;
    let pinning = match &placement {
        Some(Placement { engines, client }) => format!(
            "The benchmark's process (the load generator, the nexus, the local replica's I/O \
             and the NVMe/TCP initiator) runs on CPU {client}, both replica engines on CPU \
             {engines} (`taskset`, `--cores 1` each; their polling mode, and why, is in the last \
             paragraph), so the two remote replicas share one core."
        ),
        None => "No CPU pinning (needs 2+ CPUs and `taskset`).".to_string(),
    };
    let doc = format!(
        "# Nexus benchmarks\n\n\
         Written by `cargo xtask bench-nexus {secs} {rounds}` (xtask/src/bench_nexus.rs, \
         crates/engine/examples/nexus_bench.rs); every run overwrites this file. Other \
         benchmarks: [benchmarks-nvmf.md](benchmarks-nvmf.md) (the NVMe/TCP initiator and \
         target alone), [benchmarks-pool.md](benchmarks-pool.md), \
         [benchmarks.md](benchmarks.md).\n\n\
         The nexus runs in the benchmark's process on one reactor, with one local replica — a \
         1 GiB file through io_uring with O_DIRECT (`uring://`) — and up to two remote \
         replicas: each a separate `ballast-engine` serving a 1 GiB device over NVMe/TCP on \
         127.0.0.1, reached through Ballast's NVMe/TCP initiator (`nvmf://`, one I/O queue \
         each). The bare volume is the local file alone. 4k random I/O from \
         `blockdev::loadgen` (over the whole GiB) goes to the bare file and to a nexus over 1 \
         (local), 2 (local + one remote) and 3 (local + two remote) replicas, in two set-ups: \
         remote replicas on devices of their own (RAM, standing in for other nodes' disks: \
         the target's set-up, since replicas live on separate nodes) and remote replicas on \
         files on this machine's one disk beside the local one (every write then reaches the \
         disk once per replica, which bounds 3 replicas to a third of the disk's IOPS). \
         {pinning} The network is loopback and the replicas' CPU is one core for two. The \
         four configurations alternate within every round, their order rotating, so drift of \
         the shared disk and other work on the machine hit them alike; figures are medians \
         over the rounds, ratios medians of the per-round ratios. Rebuilds copy to the first \
         file-backed remote replica: a full rebuild (the replica joins a nexus over the local \
         file; 1 MiB segments, four at a time) against a raw copy of the same GiB through the \
         same two devices, and partial rebuilds after writes to random distinct 1 MiB \
         regions; the rules of each target are stated in its line.\n\n\
         - Date: {}\n- Machine: {}\n- Software: ballast-engine at {rev}\n\
         - Load average (1/5/15 min) before: {load_before}, after: {} (other work on the \
         machine skews results)\n\n{}{}",
        sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        machine(),
        loadavg(),
        crate::plot::image_line(
            "benchmarks-nexus.md",
            "Median IOPS of the bare file and of 1, 2 and 3 replicas"
        ),
        stdout
    );
    write_doc("bench-nexus", "benchmarks-nexus.md", &doc)?;
    crate::plot::plot_doc("benchmarks-nexus.md").map(drop)
}
