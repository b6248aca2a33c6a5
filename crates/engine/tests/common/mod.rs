//! Shared harness for the engine's integration tests: spawn `ballast-engine`, learn its
//! addresses, run external tools with a time limit, temporary directories, test data.
//!
//! Every wait here is bounded, every child is killed on drop, and every engine listens on
//! port 0, so tests can run in parallel (nextest runs each test in its own process).

#![allow(dead_code)]

pub mod nbd;
pub mod netns;
pub mod nvme;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an engine may take to print its export URIs.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Default limit for one external tool run.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// The engine binary under test.
pub fn engine_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ballast-engine"))
}

/// `PATH` with `/usr/bin` first (libnbd's tools and python3-libnbd want the system python).
pub fn tool_path() -> String {
    match std::env::var("PATH") {
        Ok(p) if !p.is_empty() => format!("/usr/bin:{p}"),
        _ => "/usr/bin:/bin:/usr/sbin:/sbin".to_string(),
    }
}

/// Where `name` is installed; panics (the test fails, it is not skipped) when it is missing.
pub fn require_tool(name: &str) -> PathBuf {
    for dir in tool_path().split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "required tool `{name}` is not installed; run `cargo xtask test`, which installs the \
         NBD test tools (fio, libnbd-bin, python3-libnbd, qemu-utils, nbdkit) and runs the tests"
    );
}

/// A command for an external tool, checked to exist, with `/usr/bin` first in `PATH`.
pub fn tool(name: &str) -> Command {
    let path = require_tool(name);
    let mut c = Command::new(path);
    c.env("PATH", tool_path());
    c
}

/// What a finished command did.
#[derive(Debug)]
pub struct Output {
    /// The command line, for messages.
    pub cmdline: String,
    /// Exit status.
    pub status: ExitStatus,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

impl Output {
    /// stdout and stderr together.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// A description for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "`{}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline, self.status, self.stdout, self.stderr
        )
    }

    /// Panics unless the command exited 0.
    pub fn assert_success(&self) -> &Self {
        assert!(self.status.success(), "{}", self.describe());
        self
    }

    /// Panics if the command exited 0.
    pub fn assert_failure(&self) -> &Self {
        assert!(
            !self.status.success(),
            "expected failure: {}",
            self.describe()
        );
        self
    }
}

fn cmdline(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn collect<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut v);
        }
        v
    })
}

/// Runs `cmd` to completion with stdin closed, capturing its output; kills it and panics
/// if it takes longer than `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let line = cmdline(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{line}`: {e}"));
    let out = collect(child.stdout.take());
    let err = collect(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                let stdout = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
                let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
                panic!(
                    "`{line}` did not finish within {timeout:?}\n--- stdout ---\n{stdout}\n\
                     --- stderr ---\n{stderr}"
                );
            }
            Err(e) => panic!("waiting for `{line}`: {e}"),
        }
    };
    Output {
        cmdline: line,
        status,
        stdout: String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned(),
    }
}

/// A temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, empty directory unique to this process and call.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "ballast-it-{tag}-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        TempDir(p)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `ballast-engine`, killed (SIGKILL) on drop if still running.
#[derive(Debug)]
pub struct Engine {
    child: Option<Child>,
    args: Vec<String>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    /// The `nbd://` URIs it printed, one per export.
    pub uris: Vec<String>,
    /// The NBD listener's address.
    pub nbd_addr: SocketAddr,
    /// The `nvmf://` URIs it printed, one per NVMe/TCP subsystem.
    pub nvmf_uris: Vec<String>,
    /// The NVMe/TCP listener's address, if enabled.
    pub nvmf_addr: Option<SocketAddr>,
    /// The management API's URL (`http://ADDR`), if enabled.
    pub grpc: Option<String>,
}

impl Engine {
    /// Starts an engine with `args`, adding `--no-pin --nbd-listen 127.0.0.1:0
    /// --nvmf-listen 127.0.0.1:0 --grpc-listen none` where the arguments do not say otherwise
    /// (and no `--config` is given), and waits until it printed one URI per `--export` and
    /// `--nvmf-export`.
    pub fn start(args: &[&str]) -> Engine {
        let has = |f: &str| {
            args.iter()
                .any(|a| *a == f || a.starts_with(&format!("{f}=")))
        };
        let mut full: Vec<String> = Vec::new();
        full.push("--no-pin".into());
        if !has("--config") {
            if !has("--nbd-listen") {
                full.extend(["--nbd-listen".into(), "127.0.0.1:0".into()]);
            }
            if !has("--grpc-listen") {
                full.extend(["--grpc-listen".into(), "none".into()]);
            }
            if !has("--nvmf-listen") {
                full.extend(["--nvmf-listen".into(), "127.0.0.1:0".into()]);
            }
        }
        full.extend(args.iter().map(|s| s.to_string()));
        let exports = args.iter().filter(|a| **a == "--export").count();
        let nvmf = args.iter().filter(|a| **a == "--nvmf-export").count();
        Engine::spawn_with(full, exports, nvmf)
    }

    /// Starts an engine with exactly `args` and waits for `exports` URI lines on stdout and
    /// the "NBD on" line on stderr.
    pub fn spawn(args: Vec<String>, exports: usize) -> Engine {
        Engine::spawn_with(args, exports, 0)
    }

    /// As [`Engine::spawn`], also waiting for `nvmf` `nvmf://` URI lines and the
    /// "NVMe/TCP on" line when `nvmf` > 0.
    pub fn spawn_with(args: Vec<String>, exports: usize, nvmf: usize) -> Engine {
        let mut child = Command::new(engine_bin())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", engine_bin().display()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(out) = child.stdout.take() {
            let lines = stdout.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines() {
                    let Ok(l) = l else { break };
                    lines.lock().expect("stdout lock").push(l);
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            let text = stderr.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(err);
                let mut line = String::new();
                loop {
                    line.clear();
                    match r.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => text.lock().expect("stderr lock").push_str(&line),
                    }
                }
            });
        }
        let mut e = Engine {
            child: Some(child),
            args,
            stdout,
            stderr,
            uris: Vec::new(),
            nbd_addr: "0.0.0.0:0".parse().expect("addr"),
            nvmf_uris: Vec::new(),
            nvmf_addr: None,
            grpc: None,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let uris: Vec<String> = e
                .stdout
                .lock()
                .expect("stdout lock")
                .iter()
                .filter(|l| l.starts_with("nbd://"))
                .cloned()
                .collect();
            let nvmf_uris: Vec<String> = e
                .stdout
                .lock()
                .expect("stdout lock")
                .iter()
                .filter(|l| l.starts_with("nvmf://"))
                .cloned()
                .collect();
            let err = e.stderr();
            let nbd = err
                .lines()
                .find_map(|l| l.split_once(", NBD on ").map(|(_, a)| a.trim().to_string()));
            let nvmf_line = err.lines().find_map(|l| {
                l.split_once("NVMe/TCP on ")
                    .map(|(_, a)| a.trim().to_string())
            });
            let nvmf_ready = nvmf == 0 || (nvmf_line.is_some() && nvmf_uris.len() >= nvmf);
            if let Some(addr) = nbd.filter(|_| uris.len() >= exports && nvmf_ready) {
                e.nvmf_addr = nvmf_line.and_then(|a| a.parse().ok());
                e.nvmf_uris = nvmf_uris;
                e.nbd_addr = addr
                    .parse()
                    .unwrap_or_else(|x| panic!("bad NBD address {addr:?}: {x}"));
                e.grpc = err.lines().find_map(|l| {
                    l.split_once("management API on ")
                        .map(|(_, a)| a.trim().to_string())
                });
                e.uris = uris;
                for u in &e.uris {
                    assert!(
                        u.starts_with(&format!("nbd://{}/", e.nbd_addr)),
                        "URI {u} does not match the NBD address {}",
                        e.nbd_addr
                    );
                }
                return e;
            }
            if let Some(st) = e.try_status() {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "ballast-engine {:?} exited early with {st}\n--- stdout ---\n{}\n\
                     --- stderr ---\n{}",
                    e.args,
                    e.stdout.lock().expect("stdout lock").join("\n"),
                    e.stderr()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "ballast-engine {:?} printed {} of {exports} URIs within {START_TIMEOUT:?}\n\
                     --- stderr ---\n{}",
                    e.args,
                    uris.len(),
                    err
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The URI of export `name`, as printed by the engine.
    pub fn uri(&self, name: &str) -> String {
        let suffix = format!("/{name}");
        self.uris
            .iter()
            .find(|u| u.ends_with(&suffix))
            .cloned()
            .unwrap_or_else(|| panic!("engine printed no URI for export {name:?}: {:?}", self.uris))
    }

    /// The URI an export created later (over gRPC) will have.
    pub fn uri_for(&self, name: &str) -> String {
        format!("nbd://{}/{name}", self.nbd_addr)
    }

    /// Everything the engine wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The exit status, if the engine has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("try_wait"))
    }

    /// Panics unless the engine is still running and has not logged a panic.
    pub fn assert_healthy(&mut self) {
        if let Some(st) = self.try_status() {
            panic!("engine exited with {st}\n--- stderr ---\n{}", self.stderr());
        }
        let err = self.stderr();
        assert!(!err.contains("panicked"), "engine panicked:\n{err}");
    }

    /// Sends `signal` to the engine.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = self.pid() as libc::pid_t;
        assert!(pid > 0, "engine not running");
        // SAFETY: sends a signal to our own child process, which has not been reaped yet
        // (we hold its `Child` and only wait through it).
        let r = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            r,
            0,
            "kill({pid}, {signal}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// Sends SIGTERM and waits up to `timeout` for the engine to exit; panics on timeout.
    /// Returns the exit status and the complete stderr.
    pub fn terminate(&mut self, timeout: Duration) -> (ExitStatus, String) {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_status() {
                // Let the reader thread drain the last lines.
                let until = Instant::now() + Duration::from_secs(2);
                while Instant::now() < until && !self.stderr().contains("bye") {
                    std::thread::sleep(Duration::from_millis(10));
                }
                self.child = None;
                return (st, self.stderr());
            }
            if Instant::now() > deadline {
                panic!(
                    "engine did not exit within {timeout:?} of SIGTERM\n--- stderr ---\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A small deterministic PRNG (xorshift64*), for test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Writes a file of `size` random bytes with the 1 MiB regions starting at each offset in
/// `zero_mib` (in MiB) left all zero.
pub fn random_image(path: &Path, size: usize, seed: u64, zero_mib: &[usize]) -> Vec<u8> {
    let mut data = vec![0u8; size];
    Rng::new(seed).fill(&mut data);
    for &m in zero_mib {
        let start = m << 20;
        let end = (start + (1 << 20)).min(size);
        data[start..end].fill(0);
    }
    std::fs::write(path, &data).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    data
}

/// `sha256sum FILE`'s digest.
pub fn sha256(path: &Path) -> String {
    let out = run(tool("sha256sum").arg(path), TOOL_TIMEOUT);
    out.assert_success();
    out.stdout
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("no digest from {}", out.describe()))
        .to_string()
}

/// Runs `qemu-io -f raw URI -c CMD...` and checks that it exited 0 and that no pattern check
/// failed.
pub fn qemu_io(uri: &str, cmds: &[&str]) -> Output {
    let out = qemu_io_raw(uri, cmds);
    out.assert_success();
    let text = out.text();
    assert!(
        !text.contains("Pattern verification failed") && !text.contains("failed:"),
        "qemu-io reported a failure: {}",
        out.describe()
    );
    out
}

/// Runs `qemu-io -f raw URI -c CMD...` without judging the result.
pub fn qemu_io_raw(uri: &str, cmds: &[&str]) -> Output {
    let mut c = tool("qemu-io");
    c.args(["-f", "raw", uri]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    run(&mut c, TOOL_TIMEOUT)
}

/// Runs `qemu-io` on `uri` and judges it leniently: whether it exited 0 with no "failed" or
/// "error" in its output, and that output (for writes a fenced nexus refuses).
pub fn qemu_io_try(uri: &str, cmds: &[&str]) -> (bool, String) {
    let out = qemu_io_raw(uri, cmds);
    let text = out.text();
    let ok = out.status.success() && !text.contains("failed") && !text.contains("error");
    (ok, text)
}

/// Starts an engine running one incarnation of a 32 MiB volume: nexus `n` at `epoch` over
/// the remote replica `target` (an `nvmf://` URI), under NVMe host identity `host_id`,
/// exported over NBD as `n` and, with `nvmf`, over NVMe/TCP as `nv`. Returns the engine and
/// its management API address.
pub fn nexus_incarnation(target: &str, host_id: &str, epoch: &str, nvmf: bool) -> (Engine, String) {
    let dev = format!("r={target}?timeout=5000");
    let e = Engine::start(&[
        "--grpc-listen",
        "127.0.0.1:0",
        "--host-id",
        host_id,
        "--device",
        &dev,
    ]);
    let api = e.grpc.clone().expect("management API address");
    let ok = |args: &[&str]| {
        ballast(&api, args).assert_success();
    };
    ok(&["nexus", "create", "n", "32MiB", "r", "--epoch", epoch]);
    ok(&["export", "create", "n", "n"]);
    if nvmf {
        ok(&["export", "create", "nv", "n", "--protocol", "nvmf"]);
    }
    (e, api)
}

/// One line of `nbdinfo --map`: offset, length, type.
pub fn nbd_map(uri: &str) -> Vec<(u64, u64, u32)> {
    let out = run(tool("nbdinfo").args(["--map", uri]), TOOL_TIMEOUT);
    out.assert_success();
    out.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let num = |i: usize| -> u64 {
                f.get(i)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("bad nbdinfo --map line {l:?}"))
            };
            (num(0), num(1), num(2) as u32)
        })
        .collect()
}

/// The `ballast` CLI next to the engine binary, built first if it is not there (binaries of
/// other packages are not built for this package's tests).
pub fn cli_bin() -> PathBuf {
    let engine = engine_bin();
    let dir = engine.parent().expect("engine dir");
    let cli = dir.join("ballast");
    if cli.is_file() {
        return cli;
    }
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(p) => p.to_string(),
    };
    let target_dir = dir.parent().expect("target dir");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut c = Command::new(cargo);
    c.current_dir(ws).args([
        "build",
        "-p",
        "ballast-cli",
        "--bin",
        "ballast",
        "--profile",
    ]);
    c.arg(profile).arg("--target-dir").arg(target_dir);
    run(&mut c, Duration::from_secs(600)).assert_success();
    assert!(cli.is_file(), "{} not built", cli.display());
    cli
}

/// Runs `ballast --engine ENGINE ARGS...` (60 s limit).
pub fn ballast(engine: &str, args: &[&str]) -> Output {
    let mut c = Command::new(cli_bin());
    c.env_remove("BALLAST_ENGINE")
        .arg("--engine")
        .arg(engine)
        .args(args);
    run(&mut c, Duration::from_secs(60))
}
