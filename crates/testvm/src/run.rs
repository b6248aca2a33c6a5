//! Booting the guest under QEMU (TCG) with a test script, bounded in time.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{Error, Guest, Result, cpio, image};

/// How a guest run is set up.
#[derive(Debug, Clone)]
pub struct RunOpts {
    /// Hard limit for the whole run, boot included; QEMU is killed when it expires.
    pub timeout: Duration,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Guest CPUs.
    pub cpus: u32,
    /// `(host port, guest port)` TCP forwards from the host's 127.0.0.1 into the guest; a
    /// host port of 0 picks a free one (see [`Running::host_port`]).
    pub hostfwd: Vec<(u16, u16)>,
    /// Raw disk images attached as virtio-blk devices (`/dev/vda`, `/dev/vdb`, ...).
    pub disks: Vec<PathBuf>,
    /// Extra files put into the guest: (absolute path, contents, mode).
    pub files: Vec<(String, Vec<u8>, u32)>,
    /// Extra words for the kernel command line.
    pub kernel_args: Vec<String>,
    /// Extra QEMU arguments.
    pub qemu_args: Vec<String>,
    /// Copy the console to stderr as it arrives.
    pub echo: bool,
    /// Connect the console to this process's terminal instead of capturing it (for a
    /// person at a shell; the run's output then has no console and no exit status).
    pub interactive: bool,
}

impl Default for RunOpts {
    fn default() -> Self {
        RunOpts {
            timeout: Duration::from_secs(300),
            memory_mib: 1024,
            cpus: 1,
            hostfwd: Vec::new(),
            disks: Vec::new(),
            files: Vec::new(),
            kernel_args: Vec::new(),
            qemu_args: Vec::new(),
            echo: false,
            interactive: false,
        }
    }
}

impl RunOpts {
    /// Sets the time limit.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Sets the number of guest CPUs.
    pub fn cpus(mut self, n: u32) -> Self {
        self.cpus = n;
        self
    }

    /// Forwards host port `host` (0: any free port) to `guest`.
    pub fn hostfwd(mut self, host: u16, guest: u16) -> Self {
        self.hostfwd.push((host, guest));
        self
    }

    /// Attaches a raw disk image.
    pub fn disk(mut self, path: impl Into<PathBuf>) -> Self {
        self.disks.push(path.into());
        self
    }

    /// Puts a file into the guest.
    pub fn file(mut self, path: &str, data: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.files.push((path.to_string(), data.into(), mode));
        self
    }

    /// Copies the console to stderr while the guest runs.
    pub fn echo(mut self, on: bool) -> Self {
        self.echo = on;
        self
    }
}

/// What a guest run did.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// The test script's exit status; `None` if the guest never reported one (timeout,
    /// panic, QEMU failure).
    pub status: Option<i32>,
    /// Whether the run hit its time limit and QEMU was killed.
    pub timed_out: bool,
    /// Everything on the serial console (`\r` removed).
    pub console: String,
    /// QEMU's own stderr.
    pub qemu_stderr: String,
    /// QEMU's exit status.
    pub qemu_status: Option<ExitStatus>,
    /// From starting QEMU to the guest's init being ready to run the script.
    pub boot: Option<Duration>,
    /// The whole run.
    pub elapsed: Duration,
}

impl RunOutput {
    /// Whether the script exited 0.
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// The console between the guest being ready and the script's exit: what the script
    /// (and the kernel meanwhile) printed.
    pub fn script_output(&self) -> &str {
        let start = self
            .console
            .find("testvm-ready ")
            .and_then(|i| self.console[i..].find('\n').map(|j| i + j + 1))
            .unwrap_or(0);
        let end = self.console[start..]
            .find("testvm-exit ")
            .map_or(self.console.len(), |j| start + j);
        &self.console[start..end]
    }

    /// A report for assertion messages: outcome, timings, console, QEMU's stderr.
    pub fn describe(&self) -> String {
        let what = match (self.status, self.timed_out) {
            (Some(s), _) => format!("the guest script exited with {s}"),
            (None, true) => "the guest run timed out (QEMU killed)".to_string(),
            (None, false) => format!(
                "the guest reported no exit status (QEMU exited with {})",
                self.qemu_status
                    .map_or_else(|| "?".to_string(), |s| s.to_string())
            ),
        };
        format!(
            "{what}; boot {:?}, total {:?}\n--- guest console ---\n{}\n--- qemu stderr ---\n{}",
            self.boot, self.elapsed, self.console, self.qemu_stderr
        )
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound, then released).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::new(format!("binding 127.0.0.1:0: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::new(format!("local_addr: {e}")))
}

/// A fresh per-run directory under the system temp dir.
fn temp_dir() -> Result<PathBuf> {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let p = std::env::temp_dir().join(format!(
        "testvm-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&p).map_err(|e| Error::new(format!("mkdir {}: {e}", p.display())))?;
    Ok(p)
}

fn nonce() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!(
        "{:012x}",
        (t ^ ((std::process::id() as u64) << 40)) & 0xffff_ffff_ffff
    )
}

/// The base initramfs with a second archive appended holding `/test.sh` and `files`.
fn write_initrd(g: &Guest, dst: &Path, script: &str, opts: &RunOpts) -> Result<()> {
    let e = |x: std::io::Error| Error::new(format!("writing {}: {x}", dst.display()));
    std::fs::copy(g.initrd(), dst).map_err(|x| {
        Error::new(format!(
            "copying {} (rebuild with `cargo xtask vm build`): {x}",
            g.initrd().display()
        ))
    })?;
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(dst)
        .map_err(e)?;
    let mut w = cpio::Writer::new(std::io::BufWriter::new(f));
    w.file("test.sh", 0o755, script.as_bytes()).map_err(e)?;
    for (path, data, mode) in &opts.files {
        w.file(path, *mode, data).map_err(e)?;
    }
    w.finish().map_err(e)?;
    Ok(())
}

/// When the guest's init said it was ready (set by the console reader).
type ReadyAt = Arc<Mutex<Option<Instant>>>;

/// A guest that is running; QEMU is killed when this is dropped.
#[derive(Debug)]
pub struct Running {
    child: Option<Child>,
    console: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    ready: ReadyAt,
    readers: Vec<JoinHandle<()>>,
    started: Instant,
    timeout: Duration,
    nonce: String,
    ports: Vec<(u16, u16)>,
    tmp: PathBuf,
}

fn reader(
    mut r: impl Read + Send + 'static,
    buf: Arc<Mutex<Vec<u8>>>,
    echo: bool,
    ready: Option<(ReadyAt, Vec<u8>)>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            let n = match r.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if echo {
                let mut e = std::io::stderr().lock();
                let _ = e.write_all(&chunk[..n]);
                let _ = e.flush();
            }
            let mut b = buf.lock().expect("console lock");
            let from = b.len();
            b.extend_from_slice(&chunk[..n]);
            if let Some((at, marker)) = &ready {
                let mut at = at.lock().expect("ready lock");
                if at.is_none() {
                    let s = from.saturating_sub(marker.len());
                    if b[s..].windows(marker.len()).any(|w| w == marker) {
                        *at = Some(Instant::now());
                    }
                }
            }
        }
    })
}

pub(crate) fn spawn(g: &Guest, script: &str, opts: RunOpts) -> Result<Running> {
    let tmp = temp_dir()?;
    let r = spawn_in(g, script, &opts, &tmp);
    if r.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    r
}

/// Starts QEMU with its per-run files in `tmp` (which the returned `Running` removes).
fn spawn_in(g: &Guest, script: &str, opts: &RunOpts, tmp: &Path) -> Result<Running> {
    let initrd = tmp.join("initrd.cpio");
    write_initrd(g, &initrd, script, opts)?;
    let host = g.dir().join("host");
    let mut last_err = String::new();
    for _attempt in 0..5 {
        let mut ports = Vec::new();
        for &(h, gp) in &opts.hostfwd {
            ports.push((if h == 0 { free_port()? } else { h }, gp));
        }
        let nonce = nonce();
        let mut append =
            format!("console=ttyS0 quiet panic=-1 mitigations=off testvm.nonce={nonce}");
        for a in &opts.kernel_args {
            append.push(' ');
            append.push_str(a);
        }
        let mut netdev = "user,id=n0".to_string();
        for (h, gp) in &ports {
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{h}-:{gp}"));
        }
        let mut c = Command::new(g.qemu());
        c.env("LD_LIBRARY_PATH", image::lib_path(&host))
            .env(
                "QEMU_MODULE_DIR",
                host.join("usr/lib/x86_64-linux-gnu/qemu"),
            )
            .arg("-L")
            .arg(host.join("usr/share/qemu"))
            .arg("-L")
            .arg(host.join("usr/share/seabios"))
            .args(["-machine", "pc", "-accel", "tcg", "-cpu", "max"])
            .args(["-m", &opts.memory_mib.to_string()])
            .args(["-smp", &opts.cpus.to_string()])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .arg("-serial")
            // mon: lets a person leave with Ctrl-A X (and keeps Ctrl-C for the guest).
            .arg(if opts.interactive {
                "mon:stdio"
            } else {
                "stdio"
            })
            .arg("-no-reboot")
            .arg("-kernel")
            .arg(g.kernel())
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", &append])
            .args(["-netdev", &netdev])
            .args(["-device", "virtio-net-pci,netdev=n0,romfile="]);
        for (i, d) in opts.disks.iter().enumerate() {
            c.arg("-drive").arg(format!(
                "file={},format=raw,if=none,id=d{i},cache=none,aio=threads",
                d.display()
            ));
            c.args(["-device", &format!("virtio-blk-pci,drive=d{i}")]);
        }
        c.args(&opts.qemu_args);
        if opts.interactive {
            c.stdin(Stdio::inherit()).stdout(Stdio::inherit());
        } else {
            c.stdin(Stdio::null()).stdout(Stdio::piped());
        }
        c.stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = c.spawn().map_err(|e| {
            Error::new(format!(
                "starting {} (rebuild with `cargo xtask vm build`): {e}",
                g.qemu().display()
            ))
        })?;
        let console = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let ready = Arc::new(Mutex::new(None));
        let marker = format!("testvm-ready {nonce}").into_bytes();
        let mut readers = vec![reader(
            child.stderr.take().expect("piped stderr"),
            stderr.clone(),
            opts.echo || opts.interactive,
            None,
        )];
        if let Some(out) = child.stdout.take() {
            readers.push(reader(
                out,
                console.clone(),
                opts.echo,
                Some((ready.clone(), marker)),
            ));
        }
        let mut r = Running {
            child: Some(child),
            console,
            stderr,
            ready,
            readers,
            started,
            timeout: opts.timeout,
            nonce,
            ports,
            tmp: tmp.to_path_buf(),
        };
        if opts.hostfwd.iter().any(|&(h, _)| h == 0) {
            // A picked port may have been taken in the meantime: QEMU then fails at once.
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until && r.exited().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            if r.exited().is_some() {
                let err = r.qemu_stderr();
                if err.contains("forward") {
                    last_err = err;
                    r.tmp = PathBuf::new(); // keep the directory for the next attempt
                    drop(r);
                    continue;
                }
            }
        }
        return Ok(r);
    }
    Err(Error::new(format!(
        "QEMU could not set up host port forwarding after 5 attempts: {last_err}"
    )))
}

impl Running {
    /// The host port forwarded to `guest_port`.
    pub fn host_port(&self, guest_port: u16) -> Option<u16> {
        self.ports
            .iter()
            .find(|(_, g)| *g == guest_port)
            .map(|(h, _)| *h)
    }

    /// Every `(host port, guest port)` forward, with picked host ports filled in.
    pub fn forwards(&self) -> &[(u16, u16)] {
        &self.ports
    }

    /// The console so far (`\r` removed).
    pub fn console(&self) -> String {
        let b = self.console.lock().expect("console lock");
        String::from_utf8_lossy(&b).replace('\r', "")
    }

    fn qemu_stderr(&self) -> String {
        let b = self.stderr.lock().expect("stderr lock");
        String::from_utf8_lossy(&b).into_owned()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits until the console contains `needle`; false if it did not within `timeout`
    /// (or QEMU exited first).
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.console().contains(needle) {
                return true;
            }
            if Instant::now() > deadline || self.exited().is_some() {
                return self.console().contains(needle);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the guest to power off (or kills it when the run's time limit expires)
    /// and returns what happened.
    pub fn wait(mut self) -> RunOutput {
        let deadline = self.started + self.timeout;
        let mut timed_out = false;
        let mut qemu_status = None;
        if let Some(mut child) = self.child.take() {
            qemu_status = loop {
                match child.try_wait() {
                    Ok(Some(st)) => break Some(st),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    Ok(None) | Err(_) => {
                        timed_out = true;
                        let _ = child.kill();
                        break child.wait().ok();
                    }
                }
            };
        }
        for h in self.readers.drain(..) {
            let _ = h.join();
        }
        let console = self.console();
        let marker = format!("testvm-exit {} ", self.nonce);
        let status = console.rfind(&marker).and_then(|i| {
            let rest = &console[i + marker.len()..];
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            digits.parse().ok()
        });
        let ready = *self.ready.lock().expect("ready lock");
        RunOutput {
            status,
            timed_out: timed_out && status.is_none(),
            console,
            qemu_stderr: self.qemu_stderr(),
            qemu_status,
            boot: ready.map(|t| t.duration_since(self.started)),
            elapsed: self.started.elapsed(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}
