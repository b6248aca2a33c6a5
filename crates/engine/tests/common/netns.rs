//! Network namespaces for multi-node tests (needs root): a few "nodes" on one private
//! Ethernet segment, processes started inside them, links cut and restored.
//!
//! ```text
//!   ns bnt<pid>-<seq>-n0      ns bnt<pid>-<seq>-n1     ...
//!   eth0 10.99.0.1/24         eth0 10.99.0.2/24
//!     │ veth                    │ veth
//!   ──p0──────────── br0 ───────p1──── ...   ns bnt<pid>-<seq>-sw (the switch)
//! ```
//!
//! Nothing is created or changed in the test's own namespace: each veth pair is made inside
//! the switch namespace with its peer put straight into the node's, addresses exist only
//! inside the nodes, and traffic never leaves the machine. Names carry the test process id
//! and a per-process sequence number, so parallel test processes never collide; a [`Net`]
//! deletes its namespaces (and with them every veth and the bridge) on drop, killing any
//! process still inside, and [`Net::new`] first removes namespaces left by test processes
//! that no longer exist (a test killed by a timeout runs no destructor).
//!
//! Processes run in a node either through [`Net::in_node`] (a closure on a thread that joined
//! the node's namespace with `setns`; whatever it spawns — engines, `ballast`, fio — lives
//! there) or through [`Net::exec`] (`ip netns exec`). Every external command is bounded.
//!
//! Faults: [`Net::cut`] drops every IPv4 packet in and out of a node's `eth0` with iptables
//! inside that node (TCP peers see silence, not resets), [`Net::restore`] removes the rules;
//! [`Net::link`] takes `eth0` down or up; [`Net::rate_limit`] shapes a node's egress with
//! `tbf`; [`Net::delay`] adds netem delay where the kernel has `sch_netem` — the project's
//! machines do not, so [`DelayRelay`] adds latency to chosen TCP connections in user space.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long one `ip`/`iptables`/`tc` invocation may take.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(15);

/// Prefix of every namespace this harness makes: `bnt<pid>-<seq>-<role>`.
const PREFIX: &str = "bnt";

/// The node interface's name inside each node namespace.
pub const DEV: &str = "eth0";

/// Runs `args[0] args[1..]` with a time limit; Ok(stdout) when it exits 0, Err(description)
/// otherwise. Never panics (it is also used from `Drop`).
pub fn sh(args: &[&str], timeout: Duration) -> Result<String, String> {
    let line = args.join(" ");
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .env("PATH", format!("{}:/usr/sbin:/sbin", super::tool_path()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `{line}`: {e}"))?;
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    // Outputs here are a few lines; read them on threads so a full pipe cannot stall it.
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("`{line}` did not finish within {timeout:?}"));
            }
            Err(e) => return Err(format!("waiting for `{line}`: {e}")),
        }
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if status.success() {
        Ok(out)
    } else {
        Err(format!(
            "`{line}` exited with {status}: {}{}",
            out,
            err.trim()
        ))
    }
}

fn must(args: &[&str]) -> String {
    sh(args, CMD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}

/// Moves the calling thread into network namespace `ns` (a name under `/run/netns`). Only
/// this thread changes; processes it spawns from then on start in `ns`.
pub fn enter(ns: &str) {
    let path = format!("/run/netns/{ns}");
    let f = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: `f` is an open namespace file we own for the duration of the call; setns with
    // CLONE_NEWNET changes only the calling thread's network namespace and touches no memory.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        r,
        0,
        "setns({path}): {} (multi-node tests need root)",
        std::io::Error::last_os_error()
    );
}

/// Whether this process may make network namespaces; the message says why not.
pub fn check_privileges() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("multi-node tests need root (network namespaces, veth, iptables)".into());
    }
    for tool in ["ip", "iptables", "tc"] {
        sh(&[tool, "-V"], CMD_TIMEOUT).map_err(|e| {
            format!(
                "`{tool}` is needed by the multi-node tests ({e}); `cargo xtask test` installs \
                 iproute2 and iptables"
            )
        })?;
    }
    Ok(())
}

/// Deletes namespaces of this harness whose test process is gone, killing what still runs
/// in them (engines a killed test left behind).
fn sweep_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        delete_ns(&name);
    }
}

/// Kills every process in `ns`, then deletes it (with its links). Never panics.
fn delete_ns(ns: &str) {
    if let Ok(pids) = sh(&["ip", "netns", "pids", ns], CMD_TIMEOUT) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: plain kill(2) of a process found inside a namespace this harness made.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let _ = sh(&["ip", "netns", "del", ns], CMD_TIMEOUT);
}

/// A switch namespace with a bridge and `nodes` node namespaces on it; deleted on drop.
#[derive(Debug)]
pub struct Net {
    switch: String,
    nodes: Vec<String>,
}

impl Net {
    /// Makes `nodes` namespaces (`n0`, `n1`, ...) with `eth0` = 10.99.0.(i+1)/24 and `lo` up,
    /// each linked by a veth to a bridge in a switch namespace. Panics (after cleaning up)
    /// when a step fails.
    pub fn new(nodes: usize) -> Net {
        assert!((1..=200).contains(&nodes), "1..=200 nodes");
        if let Err(e) = check_privileges() {
            panic!("{e}");
        }
        sweep_stale();
        // Safety net: the nodes' subnet is unreachable from the machine's own namespace, so
        // a process that failed to enter a node cannot send a packet off the machine.
        // (Idempotent; the route stays, harmlessly, after the tests.)
        must(&["ip", "route", "replace", "blackhole", "10.99.0.0/24"]);
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let base = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut net = Net {
            switch: format!("{base}-sw"),
            nodes: Vec::new(),
        };
        // From here on, a panic drops `net`, which deletes whatever exists so far.
        let sw = net.switch.clone();
        must(&["ip", "netns", "add", &sw]);
        must(&["ip", "-n", &sw, "link", "set", "lo", "up"]);
        must(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"]);
        must(&["ip", "-n", &sw, "link", "set", "br0", "up"]);
        for i in 0..nodes {
            let ns = format!("{base}-n{i}");
            must(&["ip", "netns", "add", &ns]);
            net.nodes.push(ns.clone());
            let port = format!("p{i}");
            must(&[
                "ip", "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", DEV,
                "netns", &ns,
            ]);
            must(&["ip", "-n", &sw, "link", "set", &port, "master", "br0"]);
            must(&["ip", "-n", &sw, "link", "set", &port, "up"]);
            let cidr = format!("{}/24", net.addr(i));
            must(&["ip", "-n", &ns, "addr", "add", &cidr, "dev", DEV]);
            must(&["ip", "-n", &ns, "link", "set", DEV, "up"]);
            must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        net
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`'s namespace name.
    pub fn ns(&self, i: usize) -> &str {
        &self.nodes[i]
    }

    /// Node `i`'s address on the segment.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 99, 0, (i + 1) as u8)
    }

    /// Runs `f` on a thread inside node `i`'s namespace and returns its result (a panic in
    /// `f` is propagated). Sockets `f` opens and processes it spawns belong to the node;
    /// what it returns (an `Engine`, a socket) may be used from anywhere afterwards.
    pub fn in_node<T: Send, F: FnOnce() -> T + Send>(&self, i: usize, f: F) -> T {
        let ns = self.nodes[i].clone();
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                enter(&ns);
                f()
            });
            match h.join() {
                Ok(v) => v,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    /// `ip netns exec NS ARGS...` in node `i`, bounded; Ok(stdout) or Err(description).
    pub fn exec(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["ip", "netns", "exec", self.nodes[i].as_str()];
        full.extend_from_slice(args);
        sh(&full, CMD_TIMEOUT)
    }

    fn must_exec(&self, i: usize, args: &[&str]) -> String {
        self.exec(i, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Cuts node `i` off the network: iptables inside it drops every IPv4 packet arriving on
    /// or leaving through `eth0` (its loopback still works). Peers see silence.
    pub fn cut(&self, i: usize) {
        self.must_exec(
            i,
            &[
                "iptables", "-w", "10", "-I", "INPUT", "-i", DEV, "-j", "DROP",
            ],
        );
        self.must_exec(
            i,
            &[
                "iptables", "-w", "10", "-I", "OUTPUT", "-o", DEV, "-j", "DROP",
            ],
        );
    }

    /// Undoes [`Net::cut`].
    pub fn restore(&self, i: usize) {
        self.must_exec(
            i,
            &[
                "iptables", "-w", "10", "-D", "INPUT", "-i", DEV, "-j", "DROP",
            ],
        );
        self.must_exec(
            i,
            &[
                "iptables", "-w", "10", "-D", "OUTPUT", "-o", DEV, "-j", "DROP",
            ],
        );
    }

    /// Takes node `i`'s `eth0` down or brings it up (its address and subnet route come back
    /// with it).
    pub fn link(&self, i: usize, up: bool) {
        must(&[
            "ip",
            "-n",
            &self.nodes[i],
            "link",
            "set",
            DEV,
            if up { "up" } else { "down" },
        ]);
    }

    /// Shapes what node `i` sends to `rate` (tc syntax, e.g. `20mbit`) with a token bucket
    /// (`tbf`, burst 32 KiB, at most 50 ms queued).
    pub fn rate_limit(&self, i: usize, rate: &str) {
        self.must_exec(
            i,
            &[
                "tc", "qdisc", "replace", "dev", DEV, "root", "tbf", "rate", rate, "burst", "32k",
                "latency", "50ms",
            ],
        );
    }

    /// Delays what node `i` sends by `ms` with netem; Err when the kernel has no `sch_netem`
    /// (as on the project's machines), or on any other failure.
    pub fn delay(&self, i: usize, ms: u32) -> Result<(), String> {
        let d = format!("{ms}ms");
        self.exec(
            i,
            &[
                "tc", "qdisc", "replace", "dev", DEV, "root", "netem", "delay", &d,
            ],
        )
        .map(|_| ())
    }

    /// Removes any qdisc set by [`Net::rate_limit`] or [`Net::delay`] on node `i`.
    pub fn clear_shaping(&self, i: usize) {
        let _ = self.exec(i, &["tc", "qdisc", "del", "dev", DEV, "root"]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.nodes.iter().chain(std::iter::once(&self.switch)) {
            delete_ns(ns);
        }
    }
}

/// A TCP relay inside a node that holds every byte for a settable time before passing it on,
/// in each direction: added latency, as netem's `delay` would add (the project's kernels have
/// no `sch_netem`). Clients connect to `listen` on the node; each connection is relayed to
/// `target`, connected from inside the same node. Bandwidth is not limited and order is kept.
/// Dropping it stops accepting and closes every relayed connection.
#[derive(Debug)]
pub struct DelayRelay {
    delay_us: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: Option<JoinHandle<()>>,
}

impl DelayRelay {
    /// Starts relaying `listen` to `target` inside node `i`, with no delay yet.
    pub fn start(net: &Net, i: usize, listen: SocketAddr, target: SocketAddr) -> DelayRelay {
        let delay_us = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let threads: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::new(Mutex::new(Vec::new()));
        let listener = net.in_node(i, || {
            let l = TcpListener::bind(listen).unwrap_or_else(|e| panic!("bind {listen}: {e}"));
            l.set_nonblocking(true).expect("nonblocking listener");
            l
        });
        let ns = net.ns(i).to_string();
        let (d, st, cs, ts) = (
            delay_us.clone(),
            stop.clone(),
            conns.clone(),
            threads.clone(),
        );
        let accept = std::thread::spawn(move || {
            // Connections to the target are made from inside the node.
            enter(&ns);
            while !st.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(_) => break,
                };
                let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
                    continue; // the client sees its connection closed
                };
                let _ = client.set_nonblocking(false);
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let pairs = [(&client, &server), (&server, &client)];
                for (from, to) in pairs {
                    let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    let mut t = ts.lock().expect("relay threads");
                    t.extend(pump(from, to, d.clone()));
                }
                let mut c = cs.lock().expect("relay conns");
                c.push(client);
                c.push(server);
            }
        });
        DelayRelay {
            delay_us,
            stop,
            conns,
            threads,
            accept: Some(accept),
        }
    }

    /// Holds every byte for `d` from now on (each direction, so the round trip grows by 2d).
    pub fn set_delay(&self, d: Duration) {
        self.delay_us.store(d.as_micros() as u64, Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, each chunk sent `delay` after it arrived: a reader thread stamps
/// chunks, a writer thread sends them when due. Both end when either side closes.
fn pump(mut from: TcpStream, mut to: TcpStream, delay_us: Arc<AtomicU64>) -> [JoinHandle<()>; 2] {
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        // Dropping `tx` tells the writer the stream ended.
    });
    let writer = std::thread::spawn(move || {
        while let Ok((at, data)) = rx.recv() {
            let due = at + Duration::from_micros(delay_us.load(Ordering::SeqCst));
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&data).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    [reader, writer]
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        for c in self
            .conns
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
        {
            let _ = c.shutdown(Shutdown::Both);
        }
        let threads = self
            .threads
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for t in threads {
            let _ = t.join();
        }
    }
}
