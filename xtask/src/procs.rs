//! Child processes for the benchmark: spawned with their output in a log file, stopped with
//! SIGTERM (then SIGKILL) when dropped, and measured through /proc.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

/// How long a stopped process may take to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(15);

/// A running child process; SIGTERM, then SIGKILL, when dropped.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Option<Child>,
    /// Lines the child wrote on stdout (when spawned with `lines = true`).
    lines: Option<Receiver<String>>,
}

impl Proc {
    /// Spawns `cmd` with stderr (and stdout, unless `lines`) appended to `log`. With `lines`,
    /// stdout is read line by line (see [`Proc::wait_lines`]) and copied to the log too.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path, lines: bool) -> Result<Proc, String> {
        let f = File::create(log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let f2 = f
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        cmd.stdin(Stdio::null()).stderr(Stdio::from(f));
        if lines {
            cmd.stdout(Stdio::piped());
        } else {
            cmd.stdout(Stdio::from(f2));
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("{name}: cannot start {:?}: {e}", cmd.get_program()))?;
        let rx = if lines {
            let out = child.stdout.take().expect("piped stdout");
            let (tx, rx) = channel();
            let logpath = log.to_path_buf();
            std::thread::spawn(move || {
                use std::io::Write;
                let mut logf = std::fs::OpenOptions::new().append(true).open(logpath).ok();
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if let Some(l) = logf.as_mut() {
                        let _ = writeln!(l, "[stdout] {line}");
                    }
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            Some(rx)
        } else {
            None
        };
        Ok(Proc {
            name: name.to_string(),
            log: log.to_path_buf(),
            child: Some(child),
            lines: rx,
        })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Fails (with the log's tail) if the child has exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        let Some(c) = self.child.as_mut() else {
            return Err(format!("{} was already stopped", self.name));
        };
        match c.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => Err(format!(
                "{} exited early ({st}); log {}:\n{}",
                self.name,
                self.log.display(),
                log_tail(&self.log, 15)
            )),
            Err(e) => Err(format!("{}: wait: {e}", self.name)),
        }
    }

    /// Waits (bounded) until the child printed `n` stdout lines that satisfy `keep`.
    pub fn wait_lines(
        &mut self,
        n: usize,
        keep: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<Vec<String>, String> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < n {
            let rx = self.lines.as_ref().expect("spawned with lines");
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(l) if keep(&l) => got.push(l),
                Ok(_) => {}
                Err(_) => {
                    self.check_alive()?;
                    if Instant::now() >= deadline {
                        return Err(format!(
                            "{} printed {} of {n} expected lines within {timeout:?}; log {}:\n{}",
                            self.name,
                            got.len(),
                            self.log.display(),
                            log_tail(&self.log, 15)
                        ));
                    }
                }
            }
        }
        Ok(got)
    }

    /// Waits (bounded) until something accepts TCP connections on 127.0.0.1:`port`.
    pub fn wait_port(&mut self, port: u16, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        loop {
            self.check_alive()?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not listen on port {port} within {timeout:?}; log {}:\n{}",
                    self.name,
                    self.log.display(),
                    log_tail(&self.log, 15)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Returns how it exited (`None` if killed).
    pub fn stop(&mut self, grace: Duration) -> Result<Option<ExitStatus>, String> {
        let Some(mut c) = self.child.take() else {
            return Ok(None);
        };
        if let Ok(Some(st)) = c.try_wait() {
            return Ok(Some(st));
        }
        signal(c.id(), "TERM");
        match wait_timeout(&mut c, grace) {
            Ok(Some(st)) => Ok(Some(st)),
            _ => {
                let _ = c.kill();
                let _ = c.wait();
                Err(format!(
                    "{} ignored SIGTERM for {grace:?} and was killed",
                    self.name
                ))
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.stop(STOP_GRACE);
    }
}

/// Sends signal `sig` (a name like `TERM`) to `pid` with kill(1) (std has no kill(2)).
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `child.wait()` with a time limit; `Ok(None)` if it is still running.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(Some(st));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last `n` lines of a log file.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    lines[from..].join("\n")
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("bind: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

/// User + system CPU time of process `pid` (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start with the state (field 3);
    // utime and stime are fields 14 and 15.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Context switches (voluntary + involuntary) summed over the live threads of `pid`: a proxy
/// for how often the process wakes up.
pub fn context_switches(pid: u32) -> Option<u64> {
    let mut total = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(t) = t else { continue };
        let Ok(s) = std::fs::read_to_string(t.path().join("status")) else {
            continue;
        };
        for line in s.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    Some(total)
}

/// Number of threads of `pid`.
pub fn thread_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.count())
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 if that fails).
pub fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_and_switches() {
        let me = std::process::id();
        assert!(cpu_ticks(me).is_some());
        assert!(context_switches(me).is_some());
        assert!(thread_count(me).unwrap() >= 1);
        assert!(clk_tck() > 0.0);
    }

    #[test]
    fn stops_children_on_drop() {
        let dir = std::env::temp_dir().join(format!("xtask-procs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = Command::new("sleep");
        c.arg("60");
        let mut p = Proc::spawn("sleep", c, &dir.join("sleep.log"), false).unwrap();
        let pid = p.pid();
        p.check_alive().unwrap();
        drop(p);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| s.contains(") Z"))
                    .unwrap_or(true)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
