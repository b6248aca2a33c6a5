//! Shared by the NBD initiator tests: reactors, a blocking executor for the test thread,
//! free ports, child servers killed on drop, data patterns.

#![allow(dead_code)]

use std::future::Future;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use initiator_nbd::{NbdDevice, NbdSpec};
use reactor::{Config, PollMode, Runtime};

/// Two reactors (the machine has two cores), unpinned.
pub fn runtime() -> Runtime {
    Runtime::start(Config {
        cores: 2,
        mode: PollMode::Adaptive,
        pin: false,
        registered_buffers: 16,
        ..Config::default()
    })
    .expect("start reactors")
}

/// Drives a `Send` future on the test thread, parking between polls.
pub fn block_on<T>(f: impl Future<Output = T> + Send) -> T {
    struct W(std::thread::Thread);
    impl std::task::Wake for W {
        fn wake(self: Arc<Self>) {
            self.0.unpark()
        }
    }
    let waker = std::task::Waker::from(Arc::new(W(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

/// Runs the future built by `make` on reactor `i` and waits for it.
pub fn on<F, Fut, T>(rt: &Runtime, i: usize, make: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    block_on(rt.handles()[i].call(make))
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// Waits (bounded) until something accepts connections on `port`.
pub fn wait_port(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("server exited before listening on {port}: {st}");
        }
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded) until a Unix socket accepts connections.
pub fn wait_unix(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("server exited before listening on {}: {st}", path.display());
        }
        assert!(
            Instant::now() < deadline,
            "nothing listens on {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child server, killed (and reaped) when dropped.
pub struct Server {
    pub child: Child,
    pub port: u16,
}

impl Server {
    /// Kills the server now (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tool(name: &str) -> Command {
    if Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        panic!("{name} is not installed (cargo xtask test installs it)");
    }
    Command::new(name)
}

/// `nbdkit -f -p PORT ARGS...` on 127.0.0.1, ready to accept.
pub fn nbdkit(args: &[&str]) -> Server {
    let port = free_port();
    let mut child = tool("nbdkit")
        .args(["--exit-with-parent", "-f", "-i", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn nbdkit");
    wait_port(port, &mut child);
    Server { child, port }
}

/// `nbdkit -f -U SOCKET ARGS...`, ready to accept.
pub fn nbdkit_unix(socket: &Path, args: &[&str]) -> Server {
    let mut child = tool("nbdkit")
        .args(["--exit-with-parent", "-f", "-U"])
        .arg(socket)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn nbdkit");
    wait_unix(socket, &mut child);
    Server { child, port: 0 }
}

/// qemu-storage-daemon exporting `image` (a raw file) as `x` on `port` (0: a free one).
pub fn qsd(image: &Path, port: u16, writable: bool) -> Server {
    let port = if port == 0 { free_port() } else { port };
    let mut child = tool("qemu-storage-daemon")
        .arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=f,filename={}",
            image.display()
        ))
        .arg("--nbd-server")
        .arg(format!(
            "addr.type=inet,addr.host=127.0.0.1,addr.port={port}"
        ))
        .arg("--export")
        .arg(format!(
            "type=nbd,id=e,node-name=f,name=x,writable={}",
            if writable { "on" } else { "off" }
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn qemu-storage-daemon");
    wait_port(port, &mut child);
    Server { child, port }
}

/// Waits (bounded) until a socket listens on 127.0.0.1:`port`, without connecting to it
/// (a server serving a single session would take a test connection for its client).
pub fn wait_listen(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let want = format!("0100007F:{port:04X}");
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        // Fields: sl, local_address, rem_address, st (0A = LISTEN), ...
        let listening = table.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == want && f[3] == "0A"
        });
        if listening {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("server exited before listening on {port}: {st}");
        }
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `qemu-nbd` serving `image` (raw) as `x` for one session (it exits when the client leaves).
pub fn qemu_nbd(image: &Path) -> Server {
    let port = free_port();
    let mut child = tool("qemu-nbd")
        .args(["-f", "raw", "-b", "127.0.0.1", "-x", "x", "-p"])
        .arg(port.to_string())
        .arg(image)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn qemu-nbd");
    wait_listen(port, &mut child);
    Server { child, port }
}

/// A per-test directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        // No commas or colons: the path goes into qemu option strings.
        let p = std::env::temp_dir().join(format!(
            "ballast-nbd-{tag}-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Opens `uri` (an `nbd://` or `nbd+unix://` URI) as an NBD device.
pub fn open(uri: &str) -> Arc<NbdDevice> {
    let spec = NbdSpec::parse(uri).expect("parse NBD URI");
    Arc::new(NbdDevice::open("nbd0", &spec).unwrap_or_else(|e| panic!("open {uri}: {e}")))
}

/// A small deterministic generator (xorshift64*).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// CRC-32 (IEEE), table-driven: the checksum of test patterns.
pub fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0xEDB8_8320
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    let mut c = !0u32;
    for &b in data {
        c = t[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}
