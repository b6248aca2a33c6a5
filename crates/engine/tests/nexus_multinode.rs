//! A nexus across three engines on three "nodes" (network namespaces on one bridge, see
//! `common::netns`), its remote replicas reached over NVMe/TCP, and a client (fio) on a
//! fourth node writing through it over NBD with crc32c verification while the network to a
//! replica is cut or a replica's engine is killed. Zero fio errors; the replica comes back by
//! a partial rebuild; afterwards the three backing files are byte-identical. A third test
//! adds latency to one replica (a relay: this kernel has no netem) and measures the effect.
//! The nexus runs
//! as epoch 1 with its own NVMe host identity, so its remote children are fenced with NVMe
//! reservations held by that host throughout.
//!
//! ```text
//!   n3: fio ──NBD──► n0: engine A  nexus n0 = c0 (local file) + r1 + r2, log on a file
//!                                     │ nvmf://10.99.0.2:4420/…:r   │ nvmf://10.99.0.3:4420/…:r
//!                          n1: engine B (file r1.img)        n2: engine C (file r2.img)
//! ```
//!
//! Needs root (namespaces, veth, iptables). Each test builds its own namespaces, named after
//! the test process, so the tests run in parallel; fixed ports are fine inside them.

mod common;

use std::time::{Duration, Instant};

use common::netns::{self, Net};
use common::{Engine, Output, TempDir, ballast, run, tool};

const MIB: u64 = 1 << 20;
/// The nexus size; each replica file is larger (64 MiB).
const NEXUS_MIB: u64 = 48;
/// The remote replicas' NVMe/TCP command timeout: a silent replica is retired after it.
const NVMF_TIMEOUT_MS: u64 = 2000;
/// The nexus engine's NVMe host identifier: it holds the reservations that fence the
/// remote replicas for epoch 1.
const NEXUS_HOST_ID: &str = "6d756c74-696e-4f64-8e00-000000000001";
/// The subsystem each replica engine exports (`--nvmf-export r`).
const REPLICA_NQN: &str = "nqn.2024-01.io.ballast:r";
/// Management API of the nexus engine, inside node 0.
const API: &str = "http://127.0.0.1:10124";
/// Node roles.
const NEXUS_NODE: usize = 0;
const CLIENT_NODE: usize = 3;

/// Node `i`'s replica file and the arguments of the engine serving it over NVMe/TCP.
fn replica_args(dir: &TempDir, i: usize) -> Vec<String> {
    vec![
        "--nvmf-listen".into(),
        "0.0.0.0:4420".into(),
        "--device".into(),
        format!(
            "r=uring://{}?size=64MiB",
            dir.join(&format!("r{i}.img")).display()
        ),
        "--nvmf-export".into(),
        "r".into(),
    ]
}

/// Three engines and a client node; fields drop in order: engines first, then the
/// namespaces, then the files.
struct Cluster {
    /// Engine per node 0..=2 (`None` while killed).
    engines: Vec<Option<Engine>>,
    net: Net,
    dir: TempDir,
}

impl Cluster {
    /// [`Cluster::new`] and [`Cluster::create_nexus`] with both replicas on port 4420.
    fn start(tag: &str) -> Cluster {
        let c = Cluster::new(tag);
        c.create_nexus([4420, 4420]);
        c
    }

    /// Namespaces, the two replica engines and the nexus engine (no nexus yet).
    fn new(tag: &str) -> Cluster {
        let dir = TempDir::new(tag);
        let net = Net::new(4);
        let mut c = Cluster {
            engines: Vec::new(),
            net,
            dir,
        };
        c.engines.push(None);
        for i in 1..=2 {
            let e = c.start_replica(i);
            c.engines.push(Some(e));
        }
        let local = format!("c0=uring://{}?size=64MiB", c.dir.join("c0.img").display());
        let log = format!("log=uring://{}?size=1MiB", c.dir.join("log.img").display());
        let a = c.net.in_node(NEXUS_NODE, || {
            Engine::start(&[
                "--host-id",
                NEXUS_HOST_ID,
                "--grpc-listen",
                "127.0.0.1:10124",
                "--nbd-listen",
                "0.0.0.0:10809",
                "--device",
                &local,
                "--device",
                &log,
            ])
        });
        c.engines[NEXUS_NODE] = Some(a);
        c
    }

    /// Devices r1 and r2 (nvmf:// to nodes 1 and 2 on `ports`, with a short command
    /// timeout) and nexus `n0` (epoch 1) over c0 (local), r1 and r2, exported over NBD on
    /// 10.99.0.1:10809.
    fn create_nexus(&self, ports: [u16; 2]) {
        let c = self;
        for i in 1..=2 {
            let uri = format!(
                "nvmf://{}:{}/{REPLICA_NQN}?timeout={NVMF_TIMEOUT_MS}",
                c.net.addr(i),
                ports[i - 1]
            );
            c.ok(&["device", "create", &format!("r{i}"), &uri]);
        }
        let size = format!("{NEXUS_MIB}MiB");
        let out = c.ok(&[
            "nexus", "create", "n0", &size, "c0", "r1", "r2", "--log", "log", "--epoch", "1",
        ]);
        assert!(out.contains("online"), "{out}");
        c.ok(&["export", "create", "n0", "n0"]);
    }

    fn start_replica(&self, i: usize) -> Engine {
        let args = replica_args(&self.dir, i);
        self.net.in_node(i, || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            Engine::start(&a)
        })
    }

    /// `ballast ARGS...` against the nexus engine (run inside its node).
    fn cli(&self, args: &[&str]) -> Output {
        self.net.in_node(NEXUS_NODE, || ballast(API, args))
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        out.assert_success();
        out.stdout
    }

    fn json(&self) -> String {
        self.ok(&["-o", "json", "nexus", "list"])
    }

    /// The state column of child `child` of n0.
    fn child_state(&self, child: &str) -> String {
        let out = self.ok(&["nexus", "list"]);
        out.lines()
            .find(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() >= 3 && cols[0] == "n0" && cols[1] == child
            })
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or_else(|| panic!("no child {child} in:\n{out}"))
            .to_string()
    }

    /// Waits until `child` is in state `want`; returns how long that took.
    fn wait_state(&self, child: &str, want: &str, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let s = self.child_state(child);
            if s == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "child {child} still {s}, not {want} after {limit:?}:\n{}",
                self.ok(&["nexus", "list"])
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// fio on the client node: sequential 4 KiB writes over 40 MiB at ~8 MB/s (so faults
    /// land mid-run and only part of the volume is dirtied while a replica is away), then a
    /// crc32c verification of everything.
    fn start_fio(&self) -> std::thread::JoinHandle<Output> {
        self.spawn_fio(&["--rw=write", "--size=40M", "--rate_iops=2000"])
    }

    /// fio on the client node through the nexus: 4 KiB writes at queue depth 16 with crc32c
    /// verification after, plus `args`.
    fn spawn_fio(&self, args: &[&str]) -> std::thread::JoinHandle<Output> {
        let uri = format!("nbd://{}:10809/n0", self.net.addr(NEXUS_NODE));
        let ns = self.net.ns(CLIENT_NODE).to_string();
        let cwd = self.dir.path().to_path_buf();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        std::thread::spawn(move || {
            netns::enter(&ns);
            let mut c = tool("fio");
            c.current_dir(&cwd).args([
                "--name=multinode",
                "--ioengine=nbd",
                &format!("--uri={uri}"),
                "--bs=4k",
                "--iodepth=16",
                "--verify=crc32c",
                "--verify_fatal=1",
                "--verify_state_save=0",
            ]);
            c.args(&args);
            run(&mut c, Duration::from_secs(120))
        })
    }

    /// Read operations the nexus engine counted on device `dev`.
    fn reads(&self, dev: &str) -> u64 {
        json_num(&self.ok(&["-o", "json", "stats", dev]), "ops")
    }

    /// Stops every engine with SIGTERM (each must exit 0) and compares the first
    /// `NEXUS_MIB` MiB of the three backing files.
    fn stop_and_compare(&mut self) {
        self.ok(&["export", "destroy", "n0"]);
        for e in self.engines.iter_mut().flatten() {
            let (status, stderr) = e.terminate(Duration::from_secs(20));
            assert!(status.success(), "{stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
        let c0 = sha256_prefix(&self.dir.join("c0.img"), NEXUS_MIB * MIB);
        for i in 1..=2 {
            let r = sha256_prefix(&self.dir.join(&format!("r{i}.img")), NEXUS_MIB * MIB);
            assert_eq!(r, c0, "replica r{i} differs from the local child c0");
        }
    }
}

/// Who holds the reservation on replica node `i`'s namespace: (reservation type, host
/// identifier of the holder), asked by an unregistered host on the client node with a
/// Reservation Report (which changes nothing).
fn reservation(net: &Net, i: usize) -> (u8, Option<[u8; 16]>) {
    use common::nvme::{HostIdent, Queue};
    use proto_nvme::{Command, ReservationReport, ReservationStatus};
    let addr: std::net::SocketAddr = (net.addr(i), 4420).into();
    net.in_node(CLIENT_NODE, || {
        let host = HostIdent::new(0x5a);
        let a = Queue::admin(addr, REPLICA_NQN, &host, false);
        let mut q = Queue::io(addr, REPLICA_NQN, &host, a.cntlid, 1, false);
        let c = Command::ReservationReport(ReservationReport {
            numd: 63,
            eds: true,
        });
        let (cqe, data) = q.cmd(c, 1, &[], 256).cqe();
        assert!(cqe.status.is_success(), "reservation report: {cqe:?}");
        let r = ReservationStatus::parse(&data, true).expect("reservation status");
        let holder = r
            .registrants
            .iter()
            .find(|g| g.rcsts & 1 == 1)
            .map(|g| g.hostid);
        (r.rtype, holder)
    })
}

fn assert_fio_clean(out: &Output) {
    for l in out.stdout.lines().filter(|l| l.contains("IOPS=")) {
        eprintln!("fio: {}", l.trim());
    }
    out.assert_success();
    let text = out.text();
    assert!(text.contains("err= 0"), "fio failed: {}", out.describe());
    for bad in ["verify failed", "bad magic", "bad header", "error="] {
        assert!(!text.contains(bad), "fio: {bad:?}: {}", out.describe());
    }
}

/// A numeric field of the first object in `json` that has it.
fn json_num(json: &str, field: &str) -> u64 {
    let key = format!("\"{field}\":");
    let at = json
        .find(&key)
        .unwrap_or_else(|| panic!("no {field} in {json}"))
        + key.len();
    json[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap_or_else(|e| panic!("{field} in {json}: {e}"))
}

/// The JSON object of child `child` in a nexus listing.
fn child_json(json: &str, child: &str) -> String {
    let key = format!("{{\"name\":\"{child}\"");
    let at = json
        .find(&key)
        .unwrap_or_else(|| panic!("no child {child} in {json}"));
    let end = json[at..].find('}').expect("object end") + at + 1;
    json[at..end].to_string()
}

fn sha256_prefix(path: &std::path::Path, len: u64) -> String {
    let out = run(
        std::process::Command::new("sh").args([
            "-c",
            &format!(
                "head -c {len} '{}' | sha256sum | cut -d' ' -f1",
                path.display()
            ),
        ]),
        Duration::from_secs(60),
    );
    out.assert_success();
    out.stdout.trim().to_string()
}

/// The replica is away (cut off or killed) and fio kept writing: `rebuild` copies only the
/// dirty regions, and the replica ends online with the log cleared.
fn rebuild_partially(c: &Cluster, child: &str) {
    let before = c.json();
    let dirty = json_num(&before, "dirty_regions");
    let region = json_num(&before, "region_size_bytes");
    assert!(
        dirty > 0 && dirty * region < NEXUS_MIB * MIB,
        "expected some but not all regions dirty: {before}"
    );
    let out = c.ok(&["-o", "json", "nexus", "rebuild", "n0", child]);
    let cj = child_json(&out, child);
    // The copy of `dirty` MiB takes longer than the 20 ms after which the command answers.
    assert!(
        cj.contains(r#""state":"rebuilding""#) && cj.contains(r#""partial":true"#),
        "{child} is not rebuilding partially: {out}"
    );
    let total = json_num(&cj, "rebuild_total_bytes");
    assert!(
        total >= dirty * region && total < NEXUS_MIB * MIB,
        "partial rebuild of {total} bytes, {dirty} regions were dirty: {out}"
    );
    let took = c.wait_state(child, "online", Duration::from_secs(60));
    eprintln!(
        "{child}: partial rebuild of {} MiB (of {NEXUS_MIB}) done {took:?} after the command",
        total / MIB
    );
}

fn assert_all_healthy(c: &Cluster) {
    let json = c.json();
    assert!(
        json.contains(r#""state":"online""#) && json.contains(r#""healthy":["c0","r1","r2"]"#),
        "{json}"
    );
    assert!(json.contains(r#""dirty_regions":0"#), "{json}");
}

/// The harness itself: nodes reach each other over the bridge, a cut node is silent (not
/// refusing) until restored, a downed link likewise; a rate limit paces a transfer.
#[test]
fn namespaces_connect_cut_and_restore() {
    use std::net::{SocketAddr, TcpListener, TcpStream};
    let net = Net::new(2);
    let listener = net.in_node(0, || TcpListener::bind("0.0.0.0:7000").expect("bind"));
    let to: SocketAddr = (net.addr(0), 7000).into();
    let connect = |what: &str| {
        net.in_node(1, || {
            TcpStream::connect_timeout(&to, Duration::from_millis(500))
        })
        .map(|_| ())
        .map_err(|e| format!("{what}: {e}"))
    };
    connect("linked").expect("nodes connect over the bridge");
    // Nothing of the segment is in the test's own namespace (no traffic is sent from it:
    // its default route leads off the machine).
    let own = netns::sh(&["ip", "-br", "addr"], netns::CMD_TIMEOUT).expect("ip addr");
    assert!(!own.contains("10.99."), "{own}");
    net.cut(0);
    let e = connect("cut").expect_err("a cut node must not answer");
    assert!(e.contains("timed out"), "a cut looks like silence: {e}");
    net.restore(0);
    connect("restored").expect("restored");
    net.link(1, false);
    assert!(connect("link down").is_err());
    net.link(1, true);
    // Bounded: the route returns with the link; the bridge port forwards at once (no STP).
    let until = Instant::now() + Duration::from_secs(5);
    while let Err(e) = connect("link up") {
        assert!(Instant::now() < until, "{e}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // 256 KiB at 8 Mbit/s (32 KiB burst) takes over 200 ms; the limit goes with the qdisc.
    // (A fresh listener: the probes above wait unaccepted in the first one's backlog.)
    drop(listener);
    let listener = net.in_node(0, || TcpListener::bind("0.0.0.0:7001").expect("bind"));
    let to: SocketAddr = (net.addr(0), 7001).into();
    let transfer = || {
        use std::io::{Read, Write};
        let start = Instant::now();
        let mut tx = net
            .in_node(1, || {
                TcpStream::connect_timeout(&to, Duration::from_secs(2))
            })
            .expect("connect");
        let (mut rx, _) = listener.accept().expect("accept");
        tx.write_all(&vec![7u8; 256 << 10]).expect("send");
        drop(tx);
        rx.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut got = Vec::new();
        rx.read_to_end(&mut got).expect("receive");
        assert_eq!(got.len(), 256 << 10);
        start.elapsed()
    };
    net.rate_limit(1, "8mbit");
    let slow = transfer();
    net.clear_shaping(1);
    let fast = transfer();
    assert!(
        slow >= Duration::from_millis(200) && fast < slow,
        "rate limit: {slow:?} limited, {fast:?} not"
    );
    // netem where the kernel has it (not here: CONFIG_NET_SCH_NETEM is off).
    match net.delay(1, 5) {
        Ok(()) => net.clear_shaping(1),
        Err(e) => eprintln!("no netem: {e}"),
    }
    drop(listener);
    let names: Vec<String> = (0..2).map(|i| net.ns(i).to_string()).collect();
    drop(net);
    let left = netns::sh(&["ip", "netns", "list"], netns::CMD_TIMEOUT).expect("ip netns list");
    for n in names {
        assert!(!left.contains(&n), "{n} left behind:\n{left}");
    }
}

/// The reservation every remote replica should show: Write Exclusive, held by the nexus
/// engine's host.
fn fenced_by_nexus() -> (u8, Option<[u8; 16]>) {
    let id: proto_nvme::HostId = NEXUS_HOST_ID.parse().expect("host id");
    (proto_nvme::rtype::WRITE_EXCLUSIVE, Some(id.0))
}

#[test]
fn network_cut_to_a_replica_retires_it_and_it_rebuilds_partially() {
    let mut c = Cluster::start("mn-cut");
    assert_eq!(reservation(&c.net, 1), fenced_by_nexus());
    let fio = c.start_fio();
    std::thread::sleep(Duration::from_millis(1500));
    // Node 1 goes silent: r1's commands time out after NVMF_TIMEOUT_MS and it is retired.
    c.net.cut(1);
    let took = c.wait_state("r1", "faulted", Duration::from_secs(20));
    eprintln!("r1 retired {took:?} after the cut");
    assert!(
        took >= Duration::from_millis(NVMF_TIMEOUT_MS / 2),
        "retired before its commands could time out: {took:?}"
    );
    let list = c.ok(&["nexus", "list"]);
    assert!(list.contains("degraded"), "{list}");
    std::thread::sleep(Duration::from_millis(1000));
    c.net.restore(1);
    assert!(
        !fio.is_finished(),
        "fio ended before the rebuild: make it longer"
    );
    rebuild_partially(&c, "r1");

    let out = fio.join().expect("fio thread");
    assert_fio_clean(&out);
    assert_all_healthy(&c);
    // The replica's engine kept running: the reconnected nexus still holds the reservation.
    assert_eq!(reservation(&c.net, 1), fenced_by_nexus());
    c.stop_and_compare();
}

#[test]
fn a_replica_engine_killed_and_restarted_is_rebuilt_partially() {
    let mut c = Cluster::start("mn-kill");
    assert_eq!(reservation(&c.net, 2), fenced_by_nexus());
    let fio = c.start_fio();
    std::thread::sleep(Duration::from_millis(1500));
    let e = c.engines[2].as_mut().expect("engine C");
    e.signal(libc::SIGKILL);
    let took = c.wait_state("r2", "faulted", Duration::from_secs(20));
    eprintln!("r2 retired {took:?} after SIGKILL");
    c.engines[2] = None;
    std::thread::sleep(Duration::from_millis(1000));
    // Same node, same address and port.
    let e = c.start_replica(2);
    c.engines[2] = Some(e);
    assert!(
        !fio.is_finished(),
        "fio ended before the rebuild: make it longer"
    );
    rebuild_partially(&c, "r2");

    let out = fio.join().expect("fio thread");
    assert_fio_clean(&out);
    assert_all_healthy(&c);
    // The restarted target lost the reservation (it keeps them in memory); the rebuild
    // claimed the child again before using it.
    assert_eq!(reservation(&c.net, 2), fenced_by_nexus());
    c.stop_and_compare();
}

/// Smallest completion latency fio reported for the job's writes.
fn fio_min_write_latency(out: &Output) -> Duration {
    let text = &out.stdout;
    let w = text
        .find("write: IOPS=")
        .unwrap_or_else(|| panic!("no write section: {}", out.describe()));
    let line = text[w..]
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("lat ("))
        .unwrap_or_else(|| panic!("no write latency: {}", out.describe()));
    // "lat (usec): min=779, max=2003.3k, avg=..."
    let unit = &line[5..9];
    let min: f64 = line
        .split("min=")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("bad latency line {line:?}"));
    let ns = match unit {
        "nsec" => min,
        "usec" => min * 1e3,
        "msec" => min * 1e6,
        _ => panic!("unit {unit:?} in {line:?}"),
    };
    Duration::from_nanos(ns as u64)
}

fn fio_write_iops(out: &Output) -> String {
    out.stdout
        .split("write: IOPS=")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or("?")
        .to_string()
}

/// Added latency (a relay in r1's node holds every byte 10 ms each way; netem is not in this
/// kernel): below the command timeout nothing is retired and fio verifies clean, but every
/// write waits for the slowest replica, so no write completes sooner than r1's round trip;
/// reads go to the child with the fewest I/Os outstanding, which is seldom the slow one.
#[test]
fn added_latency_to_a_replica_slows_writes_and_retires_nothing() {
    const DELAY: Duration = Duration::from_millis(10);
    let mut c = Cluster::new("mn-delay");
    let relay = netns::DelayRelay::start(
        &c.net,
        1,
        (c.net.addr(1), 4421).into(),
        ([127, 0, 0, 1], 4420).into(),
    );
    c.create_nexus([4421, 4420]);
    let job = ["--rw=randwrite", "--size=16M"];
    let base = c.spawn_fio(&job).join().expect("fio thread");
    assert_fio_clean(&base);

    relay.set_delay(DELAY);
    let reads: Vec<u64> = ["c0", "r1", "r2"].iter().map(|d| c.reads(d)).collect();
    let slow = c.spawn_fio(&job).join().expect("fio thread");
    assert_fio_clean(&slow);
    let reads: Vec<u64> = ["c0", "r1", "r2"]
        .iter()
        .zip(&reads)
        .map(|(d, before)| c.reads(d) - before)
        .collect();
    relay.set_delay(Duration::ZERO);
    assert_all_healthy(&c);

    let (b, s) = (fio_min_write_latency(&base), fio_min_write_latency(&slow));
    eprintln!(
        "writes: {} IOPS, min latency {b:?} without delay; {} IOPS, min {s:?} with {DELAY:?} \
         each way to r1; verify reads c0/r1/r2: {reads:?}",
        fio_write_iops(&base),
        fio_write_iops(&slow)
    );
    assert!(
        s >= 2 * DELAY,
        "a write completed in {s:?}, sooner than r1's round trip"
    );
    assert!(b < 2 * DELAY, "writes were slow without delay: {b:?}");
    assert!(
        reads[1] < reads[0] && reads[1] < reads[2],
        "the slow replica served as many reads as the others: {reads:?}"
    );
    c.stop_and_compare();
}
