//! Process-level crash consistency of pools: a thin pool volume is written over NBD by libnbd
//! (python3-libnbd) with a flush every few writes while the engine is killed with SIGKILL at
//! a random moment, 20 times. After every kill the pool is checked offline (`ballast-engine
//! --pool-check`), the engine restarts, everything the client saw flushed reads back (or a
//! newer write to the same block), and fio write+verify (crc32c) passes on another region.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Engine, Rng, TOOL_TIMEOUT, TempDir, ballast, run, tool, tool_path};

/// Region written by the crash writer: blocks [0, WRITER_BLOCKS) of the volume after the fio
/// region.
const FIO_REGION: u64 = 8 << 20;
const WRITER_BLOCKS: u64 = 4096; // 16 MiB, 128 clusters of 128 KiB
const CYCLES: usize = 20;

const WRITER: &str = r#"
import nbd, random, struct, sys
uri, cycle, base, nblocks, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
h = nbd.NBD()
h.connect_uri(uri)
rng = random.Random(seed)
seq = 0
pending = []
print("CONNECTED", flush=True)
while True:
    b = rng.randrange(nblocks)
    seq += 1
    stamp = struct.pack('<QQQ', cycle, seq, b)
    h.pwrite(stamp * (4096 // 24) + b'\0' * (4096 % 24), base + b * 4096)
    pending.append("%d:%d" % (b, seq))
    if seq % 8 == 0:
        h.flush()
        print("F " + " ".join(pending), flush=True)
        pending = []
"#;

const READER: &str = r#"
import nbd, struct, sys
uri, base, nblocks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
h = nbd.NBD()
h.connect_uri(uri)
chunk = 256
for first in range(0, nblocks, chunk):
    n = min(chunk, nblocks - first)
    data = h.pread(n * 4096, base + first * 4096)
    for i in range(n):
        blk = data[i * 4096:(i + 1) * 4096]
        if blk == b'\0' * 4096:
            continue
        c, s, b = struct.unpack('<QQQ', blk[:24])
        whole = struct.pack('<QQQ', c, s, b) * (4096 // 24) + b'\0' * (4096 % 24)
        print("%d %d %d %d %d" % (first + i, c, s, b, 1 if blk == whole else 0))
"#;

fn python() -> Command {
    let mut c = Command::new("/usr/bin/python3");
    c.env("PATH", tool_path());
    c
}

fn offline_check(uri: &str) {
    let mut c = Command::new(common::engine_bin());
    c.args(["--pool-check", uri]);
    let out = run(&mut c, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "offline pool check after a SIGKILL: {}",
        out.describe()
    );
}

#[test]
fn sigkill_during_flushed_writes_loses_nothing_flushed() {
    let dir = TempDir::new("pool-crash");
    let img = dir.join("pool.img");
    let dev = format!("d=uring://{}?size=256MiB", img.display());
    // Create the pool and a thin volume once.
    {
        let e = Engine::start(&["--grpc-listen", "127.0.0.1:0", "--device", &dev]);
        let api = e.grpc.clone().expect("management API");
        ballast(&api, &["pool", "create", "p", "d"]).assert_success();
        ballast(&api, &["volume", "create", "p", "v", "64MiB"]).assert_success();
    }
    let check_uri = format!("uring://{}?ro", img.display());
    let mut rng = Rng::new(0xC0FF_EE00);
    // Latest stamp (cycle, seq) each block is known to hold durably.
    let mut durable: HashMap<u64, (u64, u64)> = HashMap::new();
    let base = FIO_REGION;
    for cycle in 1..=CYCLES as u64 {
        let mut e = Engine::start(&["--device", &dev, "--export", "v=p/v"]);
        let uri = e.uri("v");
        // 1. What the client saw flushed before the last kill is there.
        let mut c = python();
        c.args([
            "-c",
            READER,
            &uri,
            &base.to_string(),
            &WRITER_BLOCKS.to_string(),
        ]);
        let out = run(&mut c, TOOL_TIMEOUT);
        assert!(out.status.success(), "reader: {}", out.describe());
        let mut seen: HashMap<u64, (u64, u64)> = HashMap::new();
        for l in out.stdout.lines() {
            let v: Vec<u64> = l
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            assert_eq!(v.len(), 5, "reader line {l:?}");
            assert_eq!(
                v[4], 1,
                "cycle {cycle}: block {} is torn or foreign: {l}",
                v[0]
            );
            assert_eq!(
                v[3], v[0],
                "cycle {cycle}: block {} holds block {}'s data",
                v[0], v[3]
            );
            seen.insert(v[0], (v[1], v[2]));
        }
        for (b, want) in &durable {
            let got = seen.get(b).copied();
            assert!(
                got.is_some_and(|g| g >= *want),
                "cycle {cycle}: block {b} was flushed with stamp {want:?} but reads {got:?}"
            );
        }
        durable = seen;
        // 2. The restarted engine serves correct data: fio write + verify on its own region.
        let mut f = tool("fio");
        f.current_dir(dir.path()).args([
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--size=8M",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--randrepeat=0",
        ]);
        let out = run(&mut f, TOOL_TIMEOUT);
        assert!(
            out.status.success() && out.stdout.contains("err= 0"),
            "cycle {cycle}: fio: {}",
            out.describe()
        );
        // 3. Write with flushes, and kill the engine at a random moment.
        let mut w = python()
            .args([
                "-c",
                WRITER,
                &uri,
                &cycle.to_string(),
                &base.to_string(),
                &WRITER_BLOCKS.to_string(),
                &cycle.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the writer");
        let flushed: Arc<Mutex<Vec<(u64, u64)>>> = Arc::new(Mutex::new(Vec::new()));
        let connected = Arc::new(Mutex::new(false));
        let reader = {
            let out = w.stdout.take().expect("writer stdout");
            let (flushed, connected) = (flushed.clone(), connected.clone());
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines() {
                    let Ok(l) = l else { break };
                    if l == "CONNECTED" {
                        *connected.lock().unwrap() = true;
                    } else if let Some(rest) = l.strip_prefix("F ") {
                        let mut f = flushed.lock().unwrap();
                        for item in rest.split_whitespace() {
                            let (b, s) = item.split_once(':').expect("block:seq");
                            f.push((b.parse().unwrap(), s.parse().unwrap()));
                        }
                    }
                }
            })
        };
        let t = Instant::now();
        while !*connected.lock().unwrap() && t.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(100 + rng.next_u64() % 900));
        e.signal(libc::SIGKILL);
        let t = Instant::now();
        while e.try_status().is_none() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the engine survived SIGKILL"
        );
        drop(e);
        let _ = w.kill();
        let _ = w.wait();
        let _ = reader.join();
        let flushed = flushed.lock().unwrap().clone();
        assert!(
            !flushed.is_empty(),
            "cycle {cycle}: the writer flushed nothing before the kill"
        );
        for (b, s) in flushed {
            let e = durable.entry(b).or_insert((cycle, s));
            *e = (*e).max((cycle, s));
        }
        // 4. The pool is consistent on disk.
        offline_check(&check_uri);
    }
}
