//! What the engine's benchmark examples (`nvmf_bench`, `nexus_bench`) share: a replica
//! `ballast-engine` serving one file over NBD and NVMe/TCP, the client reactor, filling a
//! file, and CPU time of processes from /proc.
//!
//! (A directory with `mod.rs`, not `bench_common.rs`, so cargo does not take it for an
//! example of its own.)

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use blockdev::{Device, IoBuf, WriteFlags};
use reactor::Runtime;

pub const GIB: u64 = 1 << 30;
pub const MIB: u64 = 1 << 20;

/// Writes the first GiB of `dev` once (1 MiB at a time, every 4 KiB block tagged with its
/// offset), so every read hits allocated blocks.
pub async fn fill(dev: &Device) {
    for i in 0..GIB / MIB {
        let mut b = IoBuf::zeroed(MIB as usize);
        for (j, c) in b.chunks_mut(4096).enumerate() {
            c[..8].copy_from_slice(&(i * MIB + j as u64 * 4096).to_le_bytes());
            c[8] = 0xa5;
        }
        dev.write(i * MIB, b, WriteFlags::default())
            .await
            .expect("fill");
    }
    dev.flush().await.expect("flush");
}

/// Runs the future `f` builds on the runtime's first reactor and waits for it.
pub fn on<T, F>(rt: &Runtime, f: impl FnOnce() -> F + Send + 'static) -> T
where
    T: Send + 'static,
    F: std::future::Future<Output = T> + 'static,
{
    let (tx, rx) = mpsc::channel();
    rt.handles()[0].spawn(move || async move {
        let _ = tx.send(f().await);
    });
    rx.recv_timeout(Duration::from_secs(600))
        .expect("the client reactor did not finish (or panicked)")
}

/// A `ballast-engine` serving one file as device `disk`: over NBD (export `disk`) and over
/// NVMe/TCP (subsystem `…:nv`), both on 127.0.0.1 with ports it picks. SIGKILLed when
/// dropped unless [`Engine::stop`]ped.
#[derive(Debug)]
pub struct Engine {
    child: Child,
    /// `nbd://127.0.0.1:PORT/disk`.
    pub nbd_uri: String,
    /// `nvmf://127.0.0.1:PORT/NQN`.
    pub nvmf_uri: String,
}

impl Engine {
    /// Starts `bin` over the device `dev` (a URI such as `uring:///path`; one reactor, `mode`
    /// polling), under `taskset -c CPU` when `cpu` is given, its stderr in `log`; waits
    /// (30 s at most) for its URIs.
    pub fn start(bin: &Path, dev: &str, log: &Path, cpu: Option<&str>, mode: &str) -> Engine {
        let mut c = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpu]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        c.args(["--cores", "1", "--poll-mode", mode, "--no-pool-import"])
            .args([
                "--nbd-listen",
                "127.0.0.1:0",
                "--nvmf-listen",
                "127.0.0.1:0",
            ])
            .args(["--grpc-listen", "none"])
            .arg("--device")
            .arg(format!("disk={dev}"))
            .args(["--export", "disk", "--nvmf-export", "nv=disk"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).expect("engine log"));
        let mut child = c.spawn().expect("start ballast-engine");
        let out = child.stdout.take().expect("engine stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                // Keep draining after the receiver is gone, so the engine never blocks on
                // stdout.
                let _ = tx.send(l);
            }
        });
        let mut engine = Engine {
            child,
            nbd_uri: String::new(),
            nvmf_uri: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while engine.nbd_uri.is_empty() || engine.nvmf_uri.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let l = rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "the engine exited or printed no URIs within 30 s; see {}",
                    log.display()
                )
            });
            if l.starts_with("nbd://") {
                engine.nbd_uri = l;
            } else if l.starts_with("nvmf://") {
                engine.nvmf_uri = l;
            }
        }
        engine
    }

    /// The engine's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM (the engine flushes and exits), SIGKILL after 30 s.
    pub fn stop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signals our own child, which has not been reaped (we hold its `Child`).
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
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

impl Drop for Engine {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// User + system CPU ticks of process `pid` (all threads); 0 if it cannot be read.
pub fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces): state is field 3; utime
    // and stime are fields 14 and 15.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// Clock ticks per second.
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU time of some processes over a window: [`CpuMeter::start`] at its beginning,
/// [`CpuMeter::pct`] at its end.
#[derive(Debug)]
pub struct CpuMeter {
    pids: Vec<u32>,
    ticks: Vec<u64>,
    t: Instant,
}

impl CpuMeter {
    /// Starts measuring `pids`.
    pub fn start(pids: &[u32]) -> CpuMeter {
        CpuMeter {
            pids: pids.to_vec(),
            ticks: pids.iter().map(|&p| cpu_ticks(p)).collect(),
            t: Instant::now(),
        }
    }

    /// CPU time of each process since the start, in % of one core.
    pub fn pct(&self) -> Vec<f64> {
        let secs = self.t.elapsed().as_secs_f64();
        let clk = clk_tck();
        self.pids
            .iter()
            .zip(&self.ticks)
            .map(|(&p, &t0)| cpu_ticks(p).saturating_sub(t0) as f64 / clk / secs * 100.0)
            .collect()
    }
}

/// min–max of `v` formatted with `fmt`.
pub fn range(v: &[f64], fmt: impl Fn(f64) -> String) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{}–{}", fmt(lo), fmt(hi))
}
