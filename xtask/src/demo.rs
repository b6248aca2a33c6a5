//! `cargo xtask demo`: the main job on one machine — a local cluster of three engines serving
//! a replicated volume, its health records kept by the embedded store.
//!
//! ```text
//!   clients ── nbd://127.0.0.1:10809/vol0 ─────────────┐
//!           └─ nvmf://127.0.0.1:4420/…:vol0-nvmf ──────┤
//!  node1 (API 10124) ── nexus vol0, epoch 1 ───────────┤ dirty-region log: node1/dirty.log
//!     │ pool/r1 (local)    │ NVMe/TCP r2         │ NVMe/TCP r3
//!     ▼                    ▼                     ▼
//!  node1 pool          node2 (API 10125)     node3 (API 10126)
//!  node1/pool.img      pool/r2, :4421        pool/r3, :4422
//!  store: `ballast nexus health-store target/demo/health.toml` (watches node1)
//! ```
//!
//! Every node is a `ballast-engine` process on 127.0.0.1 with its own ports, NVMe host
//! identity and directory `target/demo/nodeN` holding a 2 GiB sparse file with a pool and a
//! 1 GiB thin replica volume. A second run reuses the files: the engines import their pools at
//! start, the volumes are kept, and the nexus is recreated `--from-health` the stored record,
//! so generations continue and an unclean end (a child out of sync, or no clean last record)
//! is resynchronised. `--fresh` deletes `target/demo` first; `--check` runs the whole life
//! cycle unattended in `target/demo-check/PID` on free ports (see [`check`]).

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use crate::json::{self, Value};
use crate::procs::{self, Proc};

/// The nexus, also its NBD export name.
const NEXUS: &str = "vol0";
/// The nexus's NVMe/TCP export (export names are shared between NBD and NVMe/TCP).
const NVMF_EXPORT: &str = "vol0-nvmf";
/// Prefix of the subsystems `ballast export create --protocol nvmf` makes.
const NQN_PREFIX: &str = "nqn.2024-01.io.ballast";
/// The pool on each node (device `disk`).
const POOL: &str = "pool";
const POOL_FILE_SIZE: &str = "2GiB";
/// Each replica volume and the nexus.
const VOLUME_SIZE: &str = "1GiB";
const LOG_SIZE: &str = "1MiB";
/// NVMe/TCP command timeout of the remote children: a silent replica is retired after it.
const NVMF_TIMEOUT_MS: u32 = 5000;
/// The nexus's epoch. Every run restarts every engine, and reservations live in the engines'
/// memory, so each run's nexus claims its children afresh with the same epoch.
const EPOCH: &str = "1";
/// The NVMe host identifier of each node: node1's holds the reservations on the replicas.
const HOST_IDS: [&str; 3] = [
    "ba11a57d-de00-4000-8000-000000000001",
    "ba11a57d-de00-4000-8000-000000000002",
    "ba11a57d-de00-4000-8000-000000000003",
];
/// Fixed ports of the demo (the check uses free ones): (API, NBD, NVMe/TCP) per node; 0 lets
/// a replica node's engine pick its unused NBD port.
const DEMO_PORTS: [Ports; 3] = [
    Ports {
        api: 10124,
        nbd: 10809,
        nvmf: 4420,
    },
    Ports {
        api: 10125,
        nbd: 0,
        nvmf: 4421,
    },
    Ports {
        api: 10126,
        nbd: 0,
        nvmf: 4422,
    },
];
/// Rebuild rate limit of the demo's nexus, slow enough to watch a rebuild.
const DEMO_REBUILD_RATE: &str = "64MiB";
/// How long an engine may take to listen, a CLI call to answer, the store to acknowledge.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an engine may take to exit after SIGTERM (a nexus waits up to 5 s for the store).
const STOP_GRACE: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
struct Ports {
    api: u16,
    nbd: u16,
    nvmf: u16,
}

/// Where and how a cluster runs.
#[derive(Debug)]
struct Setup {
    /// Prefix of every message.
    tag: &'static str,
    /// Directory holding `ballast-engine` and `ballast`.
    bin: PathBuf,
    /// `target/demo` (or the check's directory): `nodeN/`, `health.toml`, `store.log`.
    dir: PathBuf,
    ports: [Ports; 3],
    rebuild_rate: Option<&'static str>,
}

impl Setup {
    fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node{}", i + 1))
    }

    fn store_file(&self) -> PathBuf {
        self.dir.join("health.toml")
    }

    fn api(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i].api)
    }

    fn nbd_uri(&self) -> String {
        format!("nbd://127.0.0.1:{}/{NEXUS}", self.ports[0].nbd)
    }

    fn nvmf_uri(&self) -> String {
        format!(
            "nvmf://127.0.0.1:{}/{NQN_PREFIX}:{NVMF_EXPORT}",
            self.ports[0].nvmf
        )
    }

    /// The nexus's children, as node1 names its devices.
    fn children(&self) -> [String; 3] {
        [format!("{POOL}/r1"), "r2".into(), "r3".into()]
    }

    fn say(&self, msg: &str) {
        eprintln!("{}: {msg}", self.tag);
    }
}

/// `cargo xtask demo [--fresh] [--check [--debug]]`.
pub fn demo(args: &[String]) -> Result<(), String> {
    let (mut fresh, mut check, mut debug) = (false, false, false);
    for a in args {
        match a.as_str() {
            "--fresh" => fresh = true,
            "--check" => check = true,
            "--debug" => debug = true,
            _ => {
                return Err(format!(
                    "demo: unknown argument {a:?} (demo [--fresh] [--check [--debug]])"
                ));
            }
        }
    }
    if debug {
        if !check {
            return Err("demo: --debug goes with --check".into());
        }
        return check_debug("xtask demo --check --debug");
    }
    crate::build_release()?;
    let bin = crate::root().join("target/release");
    if check {
        return run_check(bin, "xtask demo --check");
    }
    let dir = crate::root().join("target/demo");
    if fresh && dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("removing {}: {e}", dir.display()))?;
    }
    let s = Setup {
        tag: "xtask demo",
        bin,
        dir,
        ports: DEMO_PORTS,
        rebuild_rate: Some(DEMO_REBUILD_RATE),
    };
    ports_free(&s.ports)?;
    install_signal_handlers();
    let mut c = Cluster::up(&s)?;
    println!("{}", s.nbd_uri());
    println!("{}", s.nvmf_uri());
    let ballast = rel(&s.bin.join("ballast"));
    let e = format!("{ballast} --engine {}", s.api(0));
    let nbd = s.nbd_uri();
    let nvmf_port = s.ports[0].nvmf;
    eprintln!(
        "{tag}: serving nexus {NEXUS} on node1 over {POOL}/r1 (local), r2 (NVMe/TCP to node2) \
         and r3 (NVMe/TCP to node3); health records in {store}, logs in {dir}/nodeN/engine.log \
         and {dir}/store.log. Try:\n  \
         qemu-io -f raw -c 'write -P 0xab 0 64M' -c 'read -P 0xab 0 64M' {nbd}\n  \
         nbdinfo --map {nbd}\n  \
         {e} nexus list\n  \
         # a partial rebuild: retire r3 (the store records the smaller healthy set), write while\n  \
         # it is away, then rebuild only the regions it missed ({DEMO_REBUILD_RATE}/s) and watch\n  \
         {e} nexus fault-child {NEXUS} r3\n  \
         qemu-io -f raw -c 'write -P 0xcd 0 256M' {nbd}\n  \
         {e} nexus rebuild {NEXUS} r3\n  \
         {e} nexus list --watch\n  \
         # a Linux host with nvme-tcp: nvme connect -t tcp -a 127.0.0.1 -s {nvmf_port} -n {NQN_PREFIX}:{NVMF_EXPORT}\n\
         Ctrl-C (or SIGTERM) stops it: node1 first (the nexus closes, its last health record is \
         clean), then node2 and node3, the store last; the next run continues from the same files \
         (--fresh starts over).",
        tag = s.tag,
        store = rel(&s.store_file()),
        dir = rel(&s.dir),
    );
    let served = c.serve();
    let stopped = c.shutdown();
    served?;
    let rec = stopped?;
    s.say(&format!("stopped; {rec}"));
    Ok(())
}

/// `xtask test`'s step: the demo's check with the debug binaries the suite built.
pub fn test_step() -> Result<(), String> {
    check_debug("xtask test: demo check")
}

/// The check with debug binaries (built here; usually up to date after the test suite).
fn check_debug(tag: &'static str) -> Result<(), String> {
    let mut b = crate::cargo();
    b.args(["build", "-q", "-p", "ballast-engine", "-p", "ballast-cli"]);
    crate::run(b, "cargo build -p ballast-engine -p ballast-cli")?;
    run_check(crate::root().join("target/debug"), tag)
}

fn run_check(bin: PathBuf, tag: &'static str) -> Result<(), String> {
    // One directory per check, so checks run from two shells of the shared tree do not
    // collide; those of checks no longer running (kept after a failure) go.
    let parent = crate::root().join("target/demo-check");
    for e in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
        let pid = e.file_name().to_string_lossy().parse::<u32>().ok();
        if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let dir = parent.join(std::process::id().to_string());
    let s = Setup {
        tag,
        bin,
        dir,
        ports: free_ports()?,
        rebuild_rate: None,
    };
    install_signal_handlers();
    let start = Instant::now();
    match check(&s) {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&s.dir);
            let _ = std::fs::remove_dir(&parent);
            s.say(&format!("passed in {:.1} s", start.elapsed().as_secs_f64()));
            Ok(())
        }
        Err(e) => Err(format!(
            "{tag} failed after {:.1} s: {e}\n(logs kept in {})",
            start.elapsed().as_secs_f64(),
            rel(&s.dir)
        )),
    }
}

/// The demo's life cycle, unattended:
///
/// 1. A fresh cluster: pools and volumes created, the nexus's first record acknowledged by
///    the store; qemu-io writes patterns through NBD and reads them back; the NVMe/TCP URI
///    serves the same data (node2 opens it as an `nvmf://` device and exports that over NBD
///    to qemu-io); `nexus list` shows three online children, and the store file lists them.
///    SIGTERM: every engine exits 0, the last record is clean.
/// 2. A second run on the same files: pools imported, volumes reused, the nexus recreated
///    from the record with later generations, the data still there. Then node1 is
///    SIGKILLed: the record stays unclean.
/// 3. A third run resynchronises: r2 and r3 start out of sync (the store stores a record with
///    `pool/r1` alone) and are rebuilt from it; all three online again, the data intact, a
///    clean end.
fn check(s: &Setup) -> Result<(), String> {
    let patterns = ["-P 0xa5 0 4M", "-P 0x5a 100M 1M", "-P 0x3c 1020M 4M"];
    let writes: Vec<String> = patterns.iter().map(|p| format!("write {p}")).collect();
    let reads: Vec<String> = patterns.iter().map(|p| format!("read {p}")).collect();
    let all: Vec<String> = writes.iter().chain(&reads).cloned().collect();

    s.say("run 1: a new cluster");
    let mut c = Cluster::up(s)?;
    expect(c.fresh == [true; 3], "run 1 created every volume")?;
    qemu_io(&s.nbd_uri(), &all)?;
    c.read_over_nvmf(&reads)?;
    c.expect_all_online()?;
    let rec = c.shutdown()?;
    expect(
        rec.clean,
        &format!("run 1 ended with a clean record ({rec})"),
    )?;
    let gen1 = rec.generation;

    s.say("run 2: the same files again");
    let mut c = Cluster::up(s)?;
    expect(c.fresh == [false; 3], "run 2 reused every pool and volume")?;
    let r = c.nexus()?;
    let gen2 = num(&r, "health_generation");
    expect(
        gen2 > gen1,
        &format!("run 2's generation {gen2} continues after run 1's {gen1}"),
    )?;
    qemu_io(&s.nbd_uri(), &reads)?;
    c.expect_all_online()?;
    s.say("run 2: SIGKILL to node1 (an unclean end)");
    c.kill(0)?;
    c.shutdown()?;
    let rec = read_record(&s.store_file(), NEXUS)?.ok_or("no record after run 2")?;
    expect(
        !rec.clean,
        &format!("run 2's last record is not clean ({rec})"),
    )?;

    s.say("run 3: resynchronise after the unclean end");
    let mut c = Cluster::up(s)?;
    c.wait_all_online(Duration::from_secs(180))?;
    qemu_io(&s.nbd_uri(), &reads)?;
    c.expect_all_online()?;
    let log = std::fs::read_to_string(s.dir.join("store.log")).unwrap_or_default();
    let alone = format!("healthy [{POOL}/r1]");
    expect(
        log.lines()
            .any(|l| l.starts_with("stored ") && l.ends_with(&alone)),
        &format!("run 3 started with {POOL}/r1 alone in sync (store log:\n{log})"),
    )?;
    let rec = c.shutdown()?;
    expect(
        rec.clean,
        &format!("run 3 ended with a clean record ({rec})"),
    )?;
    Ok(())
}

fn expect(ok: bool, what: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("expected: {what}"))
    }
}

/// The engines and the store; dropping it shuts them down in order.
struct Cluster<'a> {
    s: &'a Setup,
    /// node1..node3 (`None` once stopped).
    engines: [Option<Proc>; 3],
    store: Option<Proc>,
    /// Bytes of the store's log already relayed.
    store_seen: usize,
    /// Which replica volumes this run created (rather than found).
    fresh: [bool; 3],
}

impl<'a> Cluster<'a> {
    /// Starts the engines (replicas first), makes or reuses their pools and volumes, exports
    /// the replicas, starts the store, creates the nexus (from the stored record when there is
    /// one), waits until the store acknowledged its first record, and exports it.
    fn up(s: &'a Setup) -> Result<Cluster<'a>, String> {
        let mut c = Cluster {
            s,
            engines: [None, None, None],
            store: None,
            store_seen: 0,
            fresh: [false; 3],
        };
        for i in [1, 2, 0] {
            c.start_engine(i)?;
        }
        for i in [1, 2, 0] {
            interrupted()?;
            c.fresh[i] = c.replica(i)?;
        }
        c.start_store()?;
        for i in [1, 2] {
            let uri = format!(
                "nvmf://127.0.0.1:{}/{NQN_PREFIX}:r{}?timeout={NVMF_TIMEOUT_MS}",
                s.ports[i].nvmf,
                i + 1
            );
            c.cli(0, &["device", "create", &format!("r{}", i + 1), &uri])?;
        }
        interrupted()?;
        c.create_nexus()?;
        c.cli(0, &["export", "create", NEXUS, NEXUS])?;
        c.cli(
            0,
            &["export", "create", NVMF_EXPORT, NEXUS, "--protocol", "nvmf"],
        )?;
        s.say(&format!(
            "nexus {NEXUS} on node1:\n{}",
            c.cli(0, &["nexus", "list"])?.trim_end()
        ));
        c.relay_store();
        Ok(c)
    }

    fn start_engine(&mut self, i: usize) -> Result<(), String> {
        let s = self.s;
        let dir = s.node_dir(i);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let p = s.ports[i];
        let mut c = child_command(&s.bin.join("ballast-engine"));
        c.args(["--cores", "1", "--no-pin", "--host-id", HOST_IDS[i]])
            // Two cores for three engines: the replicas sleep between I/Os rather than spin.
            .args(["--poll-mode", if i == 0 { "adaptive" } else { "interrupt" }])
            .args(["--grpc-listen", &format!("127.0.0.1:{}", p.api)])
            .args(["--nbd-listen", &format!("127.0.0.1:{}", p.nbd)])
            .args(["--nvmf-listen", &format!("127.0.0.1:{}", p.nvmf)])
            .arg("--device")
            .arg(format!(
                "disk=uring://{}?size={POOL_FILE_SIZE}",
                dir.join("pool.img").display()
            ));
        if i == 0 {
            c.arg("--device").arg(format!(
                "log=uring://{}?size={LOG_SIZE}",
                dir.join("dirty.log").display()
            ));
        }
        let name = format!("node{} (ballast-engine)", i + 1);
        let mut e = Proc::spawn(&name, c, &dir.join("engine.log"), false)?;
        for port in [p.api, p.nbd, p.nvmf] {
            if port != 0 {
                e.wait_port(port, START_TIMEOUT)?;
            }
        }
        self.engines[i] = Some(e);
        Ok(())
    }

    /// Node `i`'s pool and replica volume, made or found (returns whether the volume is new);
    /// nodes 2 and 3 export theirs over NVMe/TCP.
    fn replica(&mut self, i: usize) -> Result<bool, String> {
        let s = self.s;
        let node = format!("node{}", i + 1);
        let img = rel(&s.node_dir(i).join("pool.img"));
        let pools = parse(&self.cli(i, &["-o", "json", "pool", "list"])?)?;
        let pool = items(&pools, "pools")
            .into_iter()
            .find(|p| text(p, "name") == POOL);
        match pool {
            Some(p) if text(p, "state") == "online" => {
                s.say(&format!("{node}: pool {POOL:?} imported from {img}"))
            }
            Some(p) => {
                return Err(format!(
                    "{node}: pool {POOL:?} on {img} is {}: {}; `cargo xtask demo --fresh` \
                     starts over (deletes {})",
                    text(p, "state"),
                    text(p, "reason"),
                    rel(&s.dir)
                ));
            }
            None => {
                self.cli(i, &["pool", "create", POOL, "disk"])?;
                s.say(&format!("{node}: pool {POOL:?} created on {img}"));
            }
        }
        let vol = format!("r{}", i + 1);
        let vols = parse(&self.cli(i, &["-o", "json", "volume", "list", POOL])?)?;
        let fresh = !items(&vols, "volumes")
            .into_iter()
            .any(|v| text(v, "name") == vol);
        if fresh {
            self.cli(i, &["volume", "create", POOL, &vol, VOLUME_SIZE])?;
        }
        let how = if fresh { "created" } else { "reused" };
        if i == 0 {
            s.say(&format!(
                "{node}: volume {POOL}/{vol} {how} (the local child)"
            ));
        } else {
            self.cli(
                i,
                &[
                    "export",
                    "create",
                    &vol,
                    &format!("{POOL}/{vol}"),
                    "--protocol",
                    "nvmf",
                ],
            )?;
            s.say(&format!(
                "{node}: volume {POOL}/{vol} {how}, exported as nvmf://127.0.0.1:{}/{NQN_PREFIX}:{vol}",
                s.ports[i].nvmf
            ));
        }
        Ok(fresh)
    }

    fn start_store(&mut self) -> Result<(), String> {
        let s = self.s;
        let mut c = child_command(&s.bin.join("ballast"));
        c.env_remove("BALLAST_ENGINE")
            .args(["--engine", &s.api(0), "nexus", "health-store"])
            .arg(s.store_file());
        let log = s.dir.join("store.log");
        let mut p = Proc::spawn("the health store", c, &log, false)?;
        // It connects within a second or two; the nexus's first record waits for it anyway.
        let deadline = Instant::now() + START_TIMEOUT;
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("storing nexus health records")
        {
            p.check_alive()?;
            interrupted()?;
            if Instant::now() >= deadline {
                return Err(format!(
                    "the health store did not connect to node1 within {START_TIMEOUT:?}; log {}:\n{}",
                    log.display(),
                    procs::log_tail(&log, 15)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        s.say(&format!(
            "store: `ballast nexus health-store {}` watching node1",
            rel(&s.store_file())
        ));
        self.store = Some(p);
        Ok(())
    }

    /// Creates the nexus: from the stored record when there is one (children it does not
    /// call healthy, and volumes this run had to create, start out of sync; unclean unless
    /// the record is clean), else anew. Then waits for the store to acknowledge its first
    /// record: until then the nexus acknowledges no write.
    fn create_nexus(&mut self) -> Result<(), String> {
        let s = self.s;
        let children = s.children();
        let store = s.store_file();
        let store_arg = store.display().to_string();
        let mut args: Vec<String> = ["nexus", "create", NEXUS, VOLUME_SIZE]
            .iter()
            .map(|a| a.to_string())
            .chain(children.iter().cloned())
            .chain(["--log", "log", "--epoch", EPOCH].map(String::from))
            .collect();
        if let Some(rate) = s.rebuild_rate {
            args.extend(["--rebuild-rate".into(), rate.into()]);
        }
        let how = match read_record(&store, NEXUS)? {
            None => {
                args.push("--persist-health".into());
                "anew".to_string()
            }
            Some(r) if self.fresh.iter().all(|&f| f) => {
                // Every volume is new: nothing to resynchronise, generations go on.
                args.extend([
                    "--persist-health".into(),
                    "--health-generation".into(),
                    r.generation.to_string(),
                ]);
                format!("anew (every volume is new; the stored record was {r})")
            }
            Some(r) => {
                args.extend(["--from-health".into(), store_arg]);
                for (c, _) in children.iter().zip(self.fresh).filter(|(_, f)| *f) {
                    args.extend(["--out-of-sync".into(), c.clone()]);
                }
                let mut how = format!("from the stored record ({r})");
                if !r.clean {
                    how.push_str(
                        "; the last run did not end cleanly: the first child in sync serves \
                         alone and the others are rebuilt from it",
                    );
                }
                how
            }
        };
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cli(0, &a)?;
        s.say(&format!("nexus {NEXUS} created {how}"));
        let deadline = Instant::now() + ACK_TIMEOUT;
        loop {
            let n = self.nexus()?;
            let (g, acked) = (num(&n, "health_generation"), num(&n, "health_acked"));
            if g > 0 && acked >= g {
                self.relay_store();
                s.say(&format!(
                    "the store acknowledged health record {g}: writes complete from now on"
                ));
                return Ok(());
            }
            if let Some(p) = self.store.as_mut() {
                p.check_alive()?;
            }
            interrupted()?;
            if Instant::now() >= deadline {
                return Err(format!(
                    "the store did not acknowledge nexus {NEXUS}'s health record {g} within \
                     {ACK_TIMEOUT:?} (acknowledged: {acked}); writes would hang. Store log:\n{}",
                    procs::log_tail(&s.dir.join("store.log"), 15)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `ballast --engine NODE ARGS...`: its stdout, or an error with its stderr.
    fn cli(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let mut c = Command::new(self.s.bin.join("ballast"));
        c.env_remove("BALLAST_ENGINE")
            .args(["--engine", &self.s.api(i)])
            .args(args);
        run_bounded(c, CLI_TIMEOUT).map_err(|e| format!("node{}: {e}", i + 1))
    }

    /// Nexus `vol0` as `nexus list -o json` shows it.
    fn nexus(&self) -> Result<Value, String> {
        let v = parse(&self.cli(0, &["-o", "json", "nexus", "list"])?)?;
        items(&v, "nexuses")
            .into_iter()
            .find(|n| text(n, "name") == NEXUS)
            .cloned()
            .ok_or_else(|| format!("node1 has no nexus {NEXUS}"))
    }

    /// Fails unless the nexus is online with its three children online, all healthy and the
    /// record stored, and the store file lists them.
    fn expect_all_online(&self) -> Result<(), String> {
        let n = self.nexus()?;
        let want = self.s.children();
        let states: Vec<(String, String)> = items(&n, "children")
            .into_iter()
            .map(|c| (text(c, "name"), text(c, "state")))
            .collect();
        let healthy: Vec<String> = match n.get("healthy") {
            Some(Value::Arr(v)) => v
                .iter()
                .filter_map(|h| match h {
                    Value::Str(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let online = text(&n, "state") == "online"
            && states.len() == 3
            && states
                .iter()
                .zip(&want)
                .all(|((name, st), w)| name == w && st == "online")
            && healthy == want;
        let (g, acked) = (num(&n, "health_generation"), num(&n, "health_acked"));
        expect(
            online && acked >= g,
            &format!(
                "nexus {NEXUS} online with {want:?} online and healthy, record stored; got \
                 {states:?}, healthy {healthy:?}, generation {g} stored {acked}"
            ),
        )?;
        let rec = read_record(&self.s.store_file(), NEXUS)?.ok_or("the store file is empty")?;
        expect(
            rec.healthy == want && rec.generation == g,
            &format!("the store file lists {want:?} at generation {g}; it holds {rec}"),
        )?;
        self.s.say(&format!(
            "nexus {NEXUS}: {} online, store file: {rec}",
            want.join(", ")
        ));
        Ok(())
    }

    /// Waits (bounded) until every child is online, e.g. after the rebuilds of a restart.
    fn wait_all_online(&self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            let n = self.nexus()?;
            if text(&n, "state") == "online"
                && items(&n, "children")
                    .iter()
                    .all(|c| text(c, "state") == "online")
            {
                return Ok(());
            }
            interrupted()?;
            if Instant::now() >= deadline {
                return Err(format!(
                    "nexus {NEXUS} not online after {limit:?}:\n{}",
                    self.cli(0, &["nexus", "list"])?
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Reads through the NVMe/TCP export: node2 opens it as an `nvmf://` device, exports that
    /// over NBD, and qemu-io runs `reads` there.
    fn read_over_nvmf(&self, reads: &[String]) -> Result<(), String> {
        let uri = format!("{}?timeout={NVMF_TIMEOUT_MS}", self.s.nvmf_uri());
        self.cli(1, &["device", "create", "probe", &uri])?;
        self.cli(1, &["export", "create", "probe", "probe", "--read-only"])?;
        let r = qemu_io(
            &format!("nbd://127.0.0.1:{}/probe", self.s.ports[1].nbd),
            reads,
        );
        self.cli(1, &["export", "destroy", "probe"])?;
        self.cli(1, &["device", "destroy", "probe"])?;
        r.map(|()| {
            self.s
                .say(&format!("{} serves the same data", self.s.nvmf_uri()))
        })
    }

    /// Until SIGINT/SIGTERM (Ok) or a child dies (Err); relays what the store stores.
    fn serve(&mut self) -> Result<(), String> {
        loop {
            if let Some(sig) = signalled() {
                self.s.say(&format!(
                    "{sig}: stopping node1, then node2 and node3, then the store"
                ));
                return Ok(());
            }
            for e in self.engines.iter_mut().flatten() {
                e.check_alive()?;
            }
            if let Some(p) = self.store.as_mut() {
                p.check_alive()?;
            }
            self.relay_store();
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Prints the records the store stored since the last call.
    fn relay_store(&mut self) {
        let text = std::fs::read_to_string(self.s.dir.join("store.log")).unwrap_or_default();
        if text.len() <= self.store_seen {
            return;
        }
        let new = &text[self.store_seen..];
        let Some(end) = new.rfind('\n') else { return };
        for line in new[..end].lines().filter(|l| l.starts_with("stored ")) {
            self.s.say(&format!("store: {line}"));
        }
        self.store_seen += end + 1;
    }

    /// SIGKILL to node `i`'s engine.
    fn kill(&mut self, i: usize) -> Result<(), String> {
        let mut e = self.engines[i].take().ok_or("engine already stopped")?;
        procs::signal(e.pid(), "KILL");
        let _ = e.stop(STOP_GRACE);
        Ok(())
    }

    /// SIGTERM to node1 (its nexus closes: children flushed, a last clean record handed to
    /// the store, which it waits for), then to the replicas, then the store. Fails unless
    /// every engine exits 0; returns the stored record.
    fn shutdown(&mut self) -> Result<Record, String> {
        let mut errors = Vec::new();
        for e in self.engines.iter_mut() {
            let Some(mut p) = e.take() else { continue };
            match p.stop(STOP_GRACE) {
                Ok(Some(st)) if st.success() => {}
                Ok(Some(st)) => errors.push(format!(
                    "{} exited with {st}; log {}:\n{}",
                    p.name,
                    p.log.display(),
                    procs::log_tail(&p.log, 10)
                )),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        self.relay_store();
        if let Some(mut p) = self.store.take() {
            let _ = p.stop(Duration::from_secs(5));
        }
        if !errors.is_empty() {
            return Err(errors.join("\n"));
        }
        read_record(&self.s.store_file(), NEXUS)?
            .ok_or_else(|| format!("{} holds no record", rel(&self.s.store_file())))
    }
}

impl Drop for Cluster<'_> {
    fn drop(&mut self) {
        if self.engines.iter().any(Option::is_some) || self.store.is_some() {
            let _ = self.shutdown();
        }
    }
}

/// The stored record of a nexus (the store's file, `[nexus."NAME"]`).
#[derive(Debug)]
struct Record {
    generation: u64,
    healthy: Vec<String>,
    clean: bool,
}

impl std::fmt::Display for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "generation {}, healthy [{}], {}",
            self.generation,
            self.healthy.join(", "),
            if self.clean { "clean" } else { "not clean" }
        )
    }
}

/// Reads `nexus`'s record from the store file (written by `ballast nexus health-store`; the
/// CLI's `--from-health` reads the same file). A missing file or table is `None`.
fn read_record(path: &Path, nexus: &str) -> Result<Option<Record>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let header = format!("[nexus.\"{nexus}\"]");
    let Some(start) = text.lines().position(|l| l.trim() == header) else {
        return Ok(None);
    };
    let (mut generation, mut healthy, mut clean) = (None, None, None);
    for line in text.lines().skip(start + 1) {
        let line = line.trim();
        if line.starts_with('[') {
            break;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim();
        match k.trim() {
            "generation" => generation = v.parse::<u64>().ok(),
            "clean" => clean = v.parse::<bool>().ok(),
            "healthy" => {
                healthy = Some(
                    v.trim_start_matches('[')
                        .trim_end_matches(']')
                        .split(',')
                        .map(|h| h.trim().trim_matches('"').to_string())
                        .filter(|h| !h.is_empty())
                        .collect(),
                )
            }
            _ => {}
        }
    }
    match (generation, healthy, clean) {
        (Some(generation), Some(healthy), Some(clean)) => Ok(Some(Record {
            generation,
            healthy,
            clean,
        })),
        _ => Err(format!(
            "{}: cannot read the record of {nexus:?}",
            path.display()
        )),
    }
}

/// qemu-io (a third-party NBD client) running `cmds` on `uri` (read-only when they are all
/// reads); fails on any failed command or pattern mismatch. Closing the image flushes what
/// was written.
fn qemu_io(uri: &str, cmds: &[String]) -> Result<(), String> {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    if cmds.iter().all(|c| c.starts_with("read ")) {
        c.arg("-r");
    }
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.arg(uri);
    let out = run_bounded(c, Duration::from_secs(120)).map_err(|e| {
        if e.contains("cannot start") {
            format!("{e} (qemu-io is in Debian's qemu-utils; `cargo xtask test` installs it)")
        } else {
            e
        }
    })?;
    let done = out
        .lines()
        .filter(|l| l.starts_with("wrote ") || l.starts_with("read "))
        .count();
    if done != cmds.len() || out.to_lowercase().contains("fail") {
        return Err(format!(
            "qemu-io on {uri}: {done} of {} commands succeeded:\n{out}",
            cmds.len()
        ));
    }
    Ok(())
}

/// Runs `c` with a time limit: its stdout if it exits 0, else an error with its output.
fn run_bounded(mut c: Command, limit: Duration) -> Result<String, String> {
    let line = format!(
        "{} {}",
        rel(Path::new(c.get_program())),
        c.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .map_err(|e| format!("`{line}`: cannot start: {e}"))?;
    let read = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = read(child.stdout.take().map(|o| Box::new(o) as _));
    let err = read(child.stderr.take().map(|o| Box::new(o) as _));
    let st = procs::wait_timeout(&mut child, limit).map_err(|e| format!("`{line}`: {e}"))?;
    let Some(st) = st else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("`{line}` did not finish within {limit:?}"));
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    if st.success() {
        Ok(out)
    } else {
        Err(format!(
            "`{line}` failed ({st}): {}{}",
            err.trim(),
            out.trim()
        ))
    }
}

/// A command for a cluster process: in its own process group, so a Ctrl-C in the terminal
/// reaches only xtask, which stops the processes in order; and sent SIGTERM by the kernel if
/// xtask dies without stopping them (no orphans).
fn child_command(program: &Path) -> Command {
    let mut c = Command::new(program);
    c.process_group(0);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe system calls (prctl, getppid); it allocates nothing.
    unsafe {
        c.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                // xtask is already gone.
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    c
}

static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

/// SIGINT and SIGTERM only set a flag from now on: the cluster is stopped in order.
fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// The signal received, if any.
fn signalled() -> Option<&'static str> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        libc::SIGINT => Some("SIGINT"),
        _ => Some("SIGTERM"),
    }
}

fn interrupted() -> Result<(), String> {
    match signalled() {
        Some(sig) => Err(format!("{sig} during setup; stopped what had started")),
        None => Ok(()),
    }
}

/// Fails if a demo port is taken (another demo or engine running?).
fn ports_free(ports: &[Ports; 3]) -> Result<(), String> {
    let taken: Vec<String> = ports
        .iter()
        .flat_map(|p| [p.api, p.nbd, p.nvmf])
        .filter(|&p| p != 0 && std::net::TcpListener::bind(("127.0.0.1", p)).is_err())
        .map(|p| p.to_string())
        .collect();
    if taken.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "127.0.0.1 port(s) {} in use: is another demo or engine running? (`ss -ltnp`)",
            taken.join(", ")
        ))
    }
}

/// Free ports for a check (held together while picked, so they differ).
fn free_ports() -> Result<[Ports; 3], String> {
    let ls: Vec<std::net::TcpListener> = (0..9)
        .map(|_| std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(|e| format!("bind: {e}")))
        .collect::<Result<_, _>>()?;
    let p: Vec<u16> = ls
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let node = |i: usize| Ports {
        api: p[3 * i],
        nbd: p[3 * i + 1],
        nvmf: p[3 * i + 2],
    };
    Ok([node(0), node(1), node(2)])
}

fn parse(text: &str) -> Result<Value, String> {
    json::parse(text).map_err(|e| format!("cannot parse the CLI's JSON ({e}): {text}"))
}

/// The array `key` of object `v`.
fn items<'v>(v: &'v Value, key: &str) -> Vec<&'v Value> {
    match v.get(key) {
        Some(Value::Arr(a)) => a.iter().collect(),
        _ => Vec::new(),
    }
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::Str(s)) => s.clone(),
        _ => String::new(),
    }
}

fn num(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::num).unwrap_or(0.0) as u64
}

/// `path` relative to the workspace root when inside it (shorter messages).
fn rel(path: &Path) -> String {
    let root = crate::root();
    path.strip_prefix(&root)
        .unwrap_or(path)
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_store_file() {
        let dir = std::env::temp_dir().join(format!("xtask-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("health.toml");
        assert!(read_record(&f, "vol0").unwrap().is_none());
        std::fs::write(
            &f,
            "# comment\n\n[nexus.\"other\"]\ngeneration = 9\nhealthy = []\nclean = false\n\n\
             [nexus.\"vol0\"]\ngeneration = 4\nhealthy = [\"pool/r1\", \"r3\"]\nclean = true\n",
        )
        .unwrap();
        let r = read_record(&f, "vol0").unwrap().unwrap();
        assert_eq!(
            (r.generation, r.healthy.clone(), r.clean),
            (4, vec!["pool/r1".to_string(), "r3".to_string()], true)
        );
        assert_eq!(r.to_string(), "generation 4, healthy [pool/r1, r3], clean");
        let o = read_record(&f, "other").unwrap().unwrap();
        assert!(o.healthy.is_empty() && !o.clean);
        assert!(read_record(&f, "none").unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
