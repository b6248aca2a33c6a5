//! Ballast's NVMe/TCP initiator (`nvmf://`, crates/blockdev) against Ballast's NVMe/TCP
//! target (crates/target-nvme, served by `ballast-engine`): the loop the nexus will use to
//! reach remote replicas.
//!
//! An engine exports a file (`uring`, O_DIRECT) as an NVM subsystem; this process opens it
//! with the initiator and runs workers on two reactors (one I/O queue each): every worker
//! owns a region of the namespace and, until told to stop, writes stamped blocks (4 KiB ..
//! 1 MiB at random offsets, every 4 KiB block carrying its worker, write number, offset and
//! CRC32C; some with FUA), zeroes ranges, flushes, and reads random ranges back against its
//! model of the region.
//!
//! - `sustained_verify_load_digests_off_and_on`: no errors allowed; the whole namespace is
//!   read back after each round (digests off, then header and data digests on) and the
//!   backing file compared byte for byte after the engine exits on SIGTERM.
//! - `connections_cut_by_a_proxy_mid_io`: a TCP proxy in this process severs every
//!   connection three times under load and refuses new ones for a while once; the engine
//!   keeps running, so nothing acknowledged may be lost, not even unflushed writes.
//! - `engine_killed_mid_io_and_restarted`: the engine is SIGKILLed under load and started
//!   again on the same port and file; data flushed (or written with FUA) before the kill
//!   must be there, unflushed writes may be lost and are written again.
//!
//! After an error a worker does what a journaling host does: it retries the failed command
//! until it succeeds, reads its whole region back (a block that was flushed and differs is
//! data loss: the test fails; an unflushed one that differs is written again), then
//! flushes. The range of a write that failed is never overwritten with other data later:
//! the target may still complete the original command after the connection is gone, and
//! nothing orders it against the new association's commands. Every wait is bounded.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blockdev::{BlockDevice, IoBuf, WriteFlags, ZeroFlags};
use common::{Engine, Rng, TempDir};
use initiator_nvme::{NvmfDevice, NvmfParams};
use reactor::{Config, PollMode, Runtime};

const MIB: u64 = 1 << 20;
const BLOCK: usize = 4096;
/// Stamp at the start of every 4 KiB block a worker writes.
const MAGIC: &[u8; 8] = b"BLSTNVMF";
/// Longest a worker may take to get a failed command through once the target is back.
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);
/// Longest a step run on the reactors may take.
const STEP_LIMIT: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------------
// Stamped data

/// `len` bytes for worker `worker`'s write number `seq` at absolute offset `at`: every
/// 4 KiB block starts with MAGIC, its own offset, the worker, the write number and the
/// CRC32C of the rest of the block (bytes 32..4096, random).
fn stamped(worker: u32, seq: u32, at: u64, len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    for (i, b) in v.chunks_mut(BLOCK).enumerate() {
        b[..8].copy_from_slice(MAGIC);
        b[8..16].copy_from_slice(&(at + (i * BLOCK) as u64).to_le_bytes());
        b[16..20].copy_from_slice(&worker.to_le_bytes());
        b[20..24].copy_from_slice(&seq.to_le_bytes());
        let crc = proto_nvme::crc32c(&b[32..]);
        b[24..28].copy_from_slice(&crc.to_le_bytes());
        b[28..32].fill(0);
    }
    v
}

/// What a 4 KiB block holds, for failure messages.
fn describe_block(b: &[u8]) -> String {
    if b.iter().all(|&x| x == 0) {
        return "zeroes".into();
    }
    if b.len() < BLOCK || &b[..8] != MAGIC {
        return "unstamped bytes".into();
    }
    let le32 = |r: std::ops::Range<usize>| u32::from_le_bytes(b[r].try_into().expect("4 bytes"));
    let at = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
    let crc_ok = le32(24..28) == proto_nvme::crc32c(&b[32..]);
    format!(
        "worker {} write #{} stamped for offset {at}, CRC {}",
        le32(16..20),
        le32(20..24),
        if crc_ok { "good" } else { "BAD" }
    )
}

/// The first 4 KiB blocks (at most three) where `got` differs from `want`; `at` is the
/// absolute offset of both.
fn differences(got: &[u8], want: &[u8], at: u64) -> Vec<String> {
    got.chunks(BLOCK)
        .zip(want.chunks(BLOCK))
        .enumerate()
        .filter(|(_, (g, w))| g != w)
        .take(3)
        .map(|(i, (g, w))| {
            format!(
                "block at {}: found {}, expected {}",
                at + (i * BLOCK) as u64,
                describe_block(g),
                describe_block(w)
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Reactors

fn runtime() -> Runtime {
    Runtime::start(Config {
        cores: 2,
        mode: PollMode::Interrupt,
        pin: false,
        registered_buffers: 8,
        ..Config::default()
    })
    .expect("start two reactors")
}

/// Runs the future `f` builds on reactor `i`; panics if it takes longer than `limit`.
fn on<T, F>(rt: &Runtime, i: usize, limit: Duration, f: impl FnOnce() -> F + Send + 'static) -> T
where
    T: Send + 'static,
    F: std::future::Future<Output = T> + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    rt.handles()[i].spawn(move || async move {
        let _ = tx.send(f().await);
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("reactor {i}: not done within {limit:?} (or it panicked)"))
}

/// Reads the whole device, 1 MiB at a time from alternating reactors, and compares it with
/// `model`.
fn verify_device(rt: &Runtime, dev: &Arc<NvmfDevice>, model: &[u8], what: &str) {
    let size = model.len() as u64;
    let mut at = 0;
    let mut i = 0;
    while at < size {
        let n = MIB.min(size - at);
        let d = dev.clone();
        let got = on(rt, i % 2, STEP_LIMIT, move || async move {
            d.read(at, IoBuf::zeroed(n as usize))
                .await
                .map(|b| b.to_vec())
        })
        .unwrap_or_else(|e| panic!("{what}: reading {n} bytes at {at}: {e}"));
        let want = &model[at as usize..(at + n) as usize];
        if got != want {
            panic!(
                "{what}: the namespace differs from what was written: {:?}",
                differences(&got, want, at)
            );
        }
        at += n;
        i += 1;
    }
}

/// Compares the backing file with `model`.
fn verify_file(path: &std::path::Path, model: &[u8]) {
    let got = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(
        got.len() as u64 >= model.len() as u64,
        "{} has {} bytes, expected {}",
        path.display(),
        got.len(),
        model.len()
    );
    let got = &got[..model.len()];
    if got != model {
        panic!(
            "the backing file differs from what was written: {:?}",
            differences(got, model, 0)
        );
    }
}

// ---------------------------------------------------------------------------------------
// Workers

/// How a worker treats errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Faults {
    /// Any error fails the test.
    None,
    /// Connections are cut but the target keeps running: acknowledged writes must survive
    /// even unflushed.
    Cuts,
    /// The target is killed and restarted: unflushed writes may be lost.
    Crash,
}

/// What a worker did.
#[derive(Clone, Debug, Default)]
struct Tally {
    writes: u64,
    fua_writes: u64,
    zeroes: u64,
    reads: u64,
    flushes: u64,
    bytes_written: u64,
    bytes_read: u64,
    /// Commands that failed (transport errors while the target was away).
    errors: u64,
    /// Error messages, the first few.
    messages: Vec<String>,
    /// Times the worker went through recovery.
    recoveries: u64,
    /// Unflushed 4 KiB blocks found lost after a reconnection (and written again).
    lost_unflushed: u64,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.writes += o.writes;
        self.fua_writes += o.fua_writes;
        self.zeroes += o.zeroes;
        self.reads += o.reads;
        self.flushes += o.flushes;
        self.bytes_written += o.bytes_written;
        self.bytes_read += o.bytes_read;
        self.errors += o.errors;
        self.recoveries += o.recoveries;
        self.lost_unflushed += o.lost_unflushed;
        for m in &o.messages {
            if self.messages.len() < 6 {
                self.messages.push(m.clone());
            }
        }
    }
}

/// One worker: a region of the namespace, its expected contents, and what is not yet
/// durable.
struct Worker {
    id: u32,
    /// Absolute offset of the region.
    base: u64,
    /// Expected contents of the region.
    model: Vec<u8>,
    /// Per 4 KiB block: changed since the last successful flush (and not by a FUA write).
    unflushed: Vec<bool>,
    /// Ranges (relative to `base`) of writes and zeroings that failed: never overwritten
    /// with other data afterwards.
    tainted: Vec<(u64, u64)>,
    rng: Rng,
    seq: u32,
    faults: Faults,
    tally: Tally,
}

/// An operation that failed and is retried.
enum Redo {
    Write { off: u64, data: Vec<u8>, fua: bool },
    Zeroes { off: u64, len: u64, unmap: bool },
    Nothing,
}

/// An error seen while verifying a region.
enum VerifyError {
    /// The command failed (the target is away; noted in the tally): try again.
    Transport,
    /// Data that was durable is gone or wrong.
    Lost(String),
}

impl Worker {
    fn new(id: u32, base: u64, model: Vec<u8>, faults: Faults) -> Worker {
        let blocks = model.len() / BLOCK;
        Worker {
            id,
            base,
            model,
            unflushed: vec![false; blocks],
            tainted: Vec::new(),
            rng: Rng::new(0x6e76_6d66_0000_0000 ^ u64::from(id) ^ base),
            seq: 0,
            faults,
            tally: Tally::default(),
        }
    }

    fn size(&self) -> u64 {
        self.model.len() as u64
    }

    fn below(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n.max(1)
    }

    /// A random range: 4 KiB .. 1 MiB at a random 4 KiB-aligned offset of the region.
    fn pick(&mut self) -> (u64, u64) {
        let len = BLOCK as u64 * (1 + self.below(256));
        let len = len.min(self.size());
        let off = BLOCK as u64 * self.below((self.size() - len) / BLOCK as u64 + 1);
        (off, len)
    }

    /// A random range overlapping no failed write, if one is found quickly.
    fn pick_untainted(&mut self) -> Option<(u64, u64)> {
        (0..16).find_map(|_| {
            let (off, len) = self.pick();
            let clear = self
                .tainted
                .iter()
                .all(|&(t, tl)| off + len <= t || t + tl <= off);
            clear.then_some((off, len))
        })
    }

    fn mark(&mut self, off: u64, len: u64, durable: bool) {
        let (a, b) = (off as usize / BLOCK, (off + len) as usize / BLOCK);
        self.unflushed[a..b].fill(!durable);
    }

    fn note(&mut self, what: &str, e: &blockdev::BlockError) {
        self.tally.errors += 1;
        if self.tally.messages.len() < 4 {
            self.tally
                .messages
                .push(format!("worker {}: {what}: {e}", self.id));
        }
    }

    async fn write(&mut self, dev: &NvmfDevice, off: u64, data: &[u8], fua: bool) -> bool {
        let r = dev
            .write(self.base + off, IoBuf::from_slice(data), WriteFlags { fua })
            .await;
        match r {
            Ok(_) => {
                self.model[off as usize..off as usize + data.len()].copy_from_slice(data);
                self.mark(off, data.len() as u64, fua);
                self.tally.writes += 1;
                self.tally.fua_writes += u64::from(fua);
                self.tally.bytes_written += data.len() as u64;
                true
            }
            Err(e) => {
                self.note(&format!("write {} at {}", data.len(), self.base + off), &e);
                false
            }
        }
    }

    async fn zero(&mut self, dev: &NvmfDevice, off: u64, len: u64, unmap: bool) -> bool {
        let flags = ZeroFlags {
            may_unmap: unmap,
            ..ZeroFlags::default()
        };
        match dev.write_zeroes(self.base + off, len, flags).await {
            Ok(()) => {
                self.model[off as usize..(off + len) as usize].fill(0);
                self.mark(off, len, false);
                self.tally.zeroes += 1;
                true
            }
            Err(e) => {
                self.note(&format!("write zeroes {len} at {}", self.base + off), &e);
                false
            }
        }
    }

    async fn flush(&mut self, dev: &NvmfDevice) -> bool {
        match dev.flush().await {
            Ok(()) => {
                self.unflushed.fill(false);
                self.tally.flushes += 1;
                true
            }
            Err(e) => {
                self.note("flush", &e);
                false
            }
        }
    }

    /// Reads `[off, off+len)` of the region and compares it with the model. A difference
    /// in a block that is not durable is tolerated (and written again) after a crash.
    async fn check(&mut self, dev: &NvmfDevice, off: u64, len: u64) -> Result<u64, VerifyError> {
        let got = dev
            .read(self.base + off, IoBuf::zeroed(len as usize))
            .await
            .map_err(|e| {
                self.note(&format!("read {len} at {}", self.base + off), &e);
                VerifyError::Transport
            })?;
        self.tally.reads += 1;
        self.tally.bytes_read += len;
        let want = &self.model[off as usize..(off + len) as usize];
        if &got[..] == want {
            return Ok(0);
        }
        let mut lost = Vec::new();
        for (i, (g, w)) in got.chunks(BLOCK).zip(want.chunks(BLOCK)).enumerate() {
            if g == w {
                continue;
            }
            let at = off + (i * BLOCK) as u64;
            let block = at as usize / BLOCK;
            if self.faults == Faults::Crash && self.unflushed[block] {
                lost.push(at);
            } else {
                return Err(VerifyError::Lost(format!(
                    "worker {}: {} block at {} differs: found {}, expected {}",
                    self.id,
                    if self.unflushed[block] {
                        "an acknowledged"
                    } else {
                        "a flushed"
                    },
                    self.base + at,
                    describe_block(g),
                    describe_block(w)
                )));
            }
        }
        // Unflushed blocks the crash took: write them again.
        for &at in &lost {
            let data = self.model[at as usize..at as usize + BLOCK].to_vec();
            if !self.write(dev, at, &data, false).await {
                return Err(VerifyError::Transport);
            }
        }
        Ok(lost.len() as u64)
    }

    /// After a failed command: retry it until it succeeds, read the whole region back
    /// (writing again what a crash took), flush. Gives up after RECOVERY_LIMIT.
    async fn recover(&mut self, dev: &NvmfDevice, redo: Redo) -> Result<(), String> {
        self.tally.recoveries += 1;
        let started = Instant::now();
        let mut redo = redo;
        loop {
            if started.elapsed() > RECOVERY_LIMIT {
                return Err(format!(
                    "worker {}: no recovery within {RECOVERY_LIMIT:?}: {:?}",
                    self.id, self.tally.messages
                ));
            }
            let done = match &redo {
                Redo::Write { off, data, fua } => {
                    let (off, data, fua) = (*off, data.clone(), *fua);
                    self.write(dev, off, &data, fua).await
                }
                Redo::Zeroes { off, len, unmap } => {
                    let (off, len, unmap) = (*off, *len, *unmap);
                    self.zero(dev, off, len, unmap).await
                }
                Redo::Nothing => true,
            };
            if !done {
                reactor::sleep(Duration::from_millis(20)).await;
                continue;
            }
            redo = Redo::Nothing;
            let mut at = 0;
            let mut lost = 0;
            let mut ok = true;
            while at < self.size() {
                let n = MIB.min(self.size() - at);
                match self.check(dev, at, n).await {
                    Ok(l) => lost += l,
                    Err(VerifyError::Lost(m)) => return Err(m),
                    Err(VerifyError::Transport) => {
                        ok = false;
                        break;
                    }
                }
                at += n;
            }
            self.tally.lost_unflushed += lost;
            if ok && self.flush(dev).await {
                return Ok(());
            }
            reactor::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs until `stop`: writes (a third of them FUA), zeroes, reads checked against the
    /// model, flushes. Returns itself (its model) or what went wrong.
    async fn run(mut self, dev: Arc<NvmfDevice>, stop: Arc<AtomicBool>) -> Result<Worker, String> {
        while !stop.load(Ordering::Relaxed) {
            let op = self.below(16);
            match op {
                0..=8 | 13 => {
                    let Some((off, len)) = self.pick_untainted() else {
                        continue;
                    };
                    self.seq += 1;
                    let seed = self.rng.next_u64();
                    let zero = op == 13;
                    let unmap = self.seq.is_multiple_of(2);
                    let ok = if zero {
                        self.zero(&dev, off, len, unmap).await
                    } else {
                        let data = stamped(self.id, self.seq, self.base + off, len as usize, seed);
                        let fua = self.seq.is_multiple_of(3);
                        if self.write(&dev, off, &data, fua).await {
                            true
                        } else {
                            self.fail_or_recover(&dev, Redo::Write { off, data, fua }, off, len)
                                .await?;
                            continue;
                        }
                    };
                    if !ok {
                        self.fail_or_recover(&dev, Redo::Zeroes { off, len, unmap }, off, len)
                            .await?;
                    }
                }
                9..=12 => {
                    let (off, len) = self.pick();
                    match self.check(&dev, off, len).await {
                        Ok(0) => {}
                        // A crash took unflushed data (written again): make sure of the rest.
                        Ok(_) => self.fail_or_recover(&dev, Redo::Nothing, 0, 0).await?,
                        Err(VerifyError::Lost(m)) => return Err(m),
                        Err(VerifyError::Transport) => {
                            self.fail_or_recover(&dev, Redo::Nothing, 0, 0).await?
                        }
                    }
                }
                _ => {
                    if !self.flush(&dev).await {
                        self.fail_or_recover(&dev, Redo::Nothing, 0, 0).await?;
                    }
                }
            }
        }
        Ok(self)
    }

    async fn fail_or_recover(
        &mut self,
        dev: &NvmfDevice,
        redo: Redo,
        off: u64,
        len: u64,
    ) -> Result<(), String> {
        if self.faults == Faults::None {
            return Err(format!("unexpected error: {:?}", self.tally.messages));
        }
        if len > 0 {
            self.tainted.push((off, len));
        }
        self.recover(dev, redo).await
    }
}

/// `per_reactor` workers on each of the two reactors, each owning an equal region of the
/// device (`models` holds the device's expected contents and is updated); they run until
/// `stop` is set, which `drive` does when it returns. Returns the summed tally.
fn run_workers(
    rt: &Runtime,
    dev: &Arc<NvmfDevice>,
    model: &mut [u8],
    per_reactor: usize,
    faults: Faults,
    drive: impl FnOnce(),
) -> Tally {
    let n = 2 * per_reactor;
    let region = model.len() / n;
    assert_eq!(region % BLOCK, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let mut rxs = Vec::new();
    for r in 0..2 {
        let workers: Vec<Worker> = (0..per_reactor)
            .map(|k| {
                let id = (r * per_reactor + k) as u32;
                let base = id as usize * region;
                Worker::new(id, base as u64, model[base..base + region].to_vec(), faults)
            })
            .collect();
        let (dev, stop) = (dev.clone(), stop.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        rt.handles()[r].spawn(move || async move {
            let hs: Vec<_> = workers
                .into_iter()
                .map(|w| reactor::spawn_local(w.run(dev.clone(), stop.clone())))
                .collect();
            let mut out = Vec::new();
            for h in hs {
                out.push(h.await);
            }
            let _ = tx.send(out);
        });
        rxs.push(rx);
    }
    drive();
    stop.store(true, Ordering::Relaxed);
    let mut tally = Tally::default();
    let mut failures = Vec::new();
    for (r, rx) in rxs.into_iter().enumerate() {
        let out = rx
            .recv_timeout(RECOVERY_LIMIT + STEP_LIMIT)
            .unwrap_or_else(|_| panic!("the workers of reactor {r} did not finish (or panicked)"));
        for w in out {
            match w {
                Ok(w) => {
                    tally.add(&w.tally);
                    let base = w.base as usize;
                    model[base..base + w.model.len()].copy_from_slice(&w.model);
                }
                Err(e) => failures.push(e),
            }
        }
    }
    assert!(failures.is_empty(), "workers failed: {failures:#?}");
    tally
}

fn report(what: &str, t: &Tally, dev: &NvmfDevice, secs: f64) {
    eprintln!(
        "{what}: {} writes ({} FUA, {} MiB), {} zeroings, {} reads ({} MiB), {} flushes in {secs:.1} s; \
         {} errors, {} recoveries, {} lost unflushed blocks; {:?}; first errors: {:#?}",
        t.writes,
        t.fua_writes,
        t.bytes_written >> 20,
        t.zeroes,
        t.reads,
        t.bytes_read >> 20,
        t.flushes,
        t.errors,
        t.recoveries,
        t.lost_unflushed,
        dev.stats(),
        t.messages
    );
}

fn engine_args(img: &std::path::Path, size_mib: u64, listen: &str) -> Vec<String> {
    [
        "--cores",
        "2",
        "--poll-mode",
        "interrupt",
        "--no-pool-import",
        "--nvmf-listen",
        listen,
        "--device",
        &format!("d=uring://{}?size={size_mib}MiB", img.display()),
        "--nvmf-export",
        "d",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn start_engine(args: &[String]) -> Engine {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let e = Engine::start(&a);
    assert_eq!(e.nvmf_uris.len(), 1, "{:?}", e.nvmf_uris);
    e
}

/// Opens `uri`, probing the controller on reactor 0 of `rt`.
fn open(rt: &Runtime, uri: &str) -> Arc<NvmfDevice> {
    let p = NvmfParams::parse(uri).unwrap_or_else(|e| panic!("{e}"));
    Arc::new(
        NvmfDevice::open("loop", p, &rt.handles()[0])
            .unwrap_or_else(|e| panic!("opening {uri}: {e}")),
    )
}

/// SIGTERM (the engine flushes every device), exit 0, then the backing file holds `model`.
fn stop_and_compare(mut engine: Engine, img: &std::path::Path, model: &[u8]) {
    engine.assert_healthy();
    let (st, err) = engine.terminate(Duration::from_secs(60));
    assert!(st.success(), "engine exit {st}:\n{err}");
    assert!(!err.contains("panicked"), "engine panicked:\n{err}");
    verify_file(img, model);
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn sustained_verify_load_digests_off_and_on() {
    const SIZE_MIB: u64 = 128;
    let dir = TempDir::new("nvmf-loop");
    let img = dir.join("disk.img");
    let engine = start_engine(&engine_args(&img, SIZE_MIB, "127.0.0.1:0"));
    let base_uri = engine.nvmf_uris[0].clone();
    assert!(
        base_uri.ends_with("/nqn.2024-01.io.ballast:d"),
        "{base_uri}"
    );
    let rt = runtime();
    let mut model = vec![0u8; (SIZE_MIB * MIB) as usize];
    for (round, digests) in [false, true].into_iter().enumerate() {
        let uri = format!(
            "{base_uri}?timeout=20000{}",
            if digests { "&hdgst=1&ddgst=1" } else { "" }
        );
        let dev = open(&rt, &uri);
        assert_eq!(dev.geometry().size(), SIZE_MIB * MIB);
        let t = Instant::now();
        let tally = run_workers(&rt, &dev, &mut model, 4, Faults::None, || {
            std::thread::sleep(Duration::from_secs(5))
        });
        report(
            &format!("round {round} (digests {digests})"),
            &tally,
            &dev,
            t.elapsed().as_secs_f64(),
        );
        assert!(tally.writes >= 16 && tally.reads >= 8, "{tally:?}");
        let d = dev.clone();
        on(&rt, 0, STEP_LIMIT, move || async move { d.flush().await }).expect("flush");
        // Everything, this round's and the last one's, from both reactors.
        verify_device(&rt, &dev, &model, &format!("round {round}"));
        let s = dev.stats();
        assert_eq!(
            (s.associations, s.io_queues),
            (2, 2),
            "the probe of open, then one association with an I/O queue per reactor: {s:?}"
        );
        assert_eq!((s.timeouts, s.resets, s.digest_errors), (0, 0, 0), "{s:?}");
        let info = dev.controller().expect("controller info");
        assert_eq!((info.hdgst, info.ddgst), (digests, digests), "{info:?}");
        assert_eq!(info.subnqn, "nqn.2024-01.io.ballast:d");
        drop(dev);
    }
    rt.shutdown();
    stop_and_compare(engine, &img, &model);
}

/// A TCP proxy: forwards connections to `target` and can sever them all at will or refuse
/// new ones (accepted and closed at once).
struct Proxy {
    addr: SocketAddr,
    inner: Arc<ProxyInner>,
    accept: Option<std::thread::JoinHandle<()>>,
}

struct ProxyInner {
    target: SocketAddr,
    stop: AtomicBool,
    refuse: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
    accepted: AtomicU64,
}

impl Proxy {
    fn start(target: SocketAddr) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        l.set_nonblocking(true).expect("nonblocking listener");
        let addr = l.local_addr().expect("proxy address");
        let inner = Arc::new(ProxyInner {
            target,
            stop: AtomicBool::new(false),
            refuse: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
        });
        let i2 = inner.clone();
        let accept = std::thread::spawn(move || {
            while !i2.stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        i2.accepted.fetch_add(1, Ordering::Relaxed);
                        if i2.refuse.load(Ordering::Relaxed) {
                            let _ = c.shutdown(Shutdown::Both);
                            continue;
                        }
                        let _ = c.set_nonblocking(false);
                        let Ok(s) = TcpStream::connect_timeout(&i2.target, Duration::from_secs(5))
                        else {
                            let _ = c.shutdown(Shutdown::Both);
                            continue;
                        };
                        for x in [&c, &s] {
                            let _ = x.set_nodelay(true);
                        }
                        let (Ok(c2), Ok(s2)) = (c.try_clone(), s.try_clone()) else {
                            continue;
                        };
                        {
                            let mut conns = i2.conns.lock().expect("proxy lock");
                            for x in [&c, &s] {
                                if let Ok(k) = x.try_clone() {
                                    conns.push(k);
                                }
                            }
                        }
                        std::thread::spawn(move || pump(c, s2));
                        std::thread::spawn(move || pump(s, c2));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Proxy {
            addr,
            inner,
            accept: Some(accept),
        }
    }

    /// Cuts every connection now (both sides see the connection reset or closed).
    fn sever(&self) -> usize {
        let conns: Vec<TcpStream> = self
            .inner
            .conns
            .lock()
            .expect("proxy lock")
            .drain(..)
            .collect();
        for c in &conns {
            let _ = c.shutdown(Shutdown::Both);
        }
        conns.len() / 2
    }

    fn refuse(&self, on: bool) {
        self.inner.refuse.store(on, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        self.sever();
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// Copies `from` to `to` until either side ends, then closes both.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[test]
fn connections_cut_by_a_proxy_mid_io() {
    const SIZE_MIB: u64 = 192;
    let dir = TempDir::new("nvmf-cut");
    let img = dir.join("disk.img");
    let engine = start_engine(&engine_args(&img, SIZE_MIB, "127.0.0.1:0"));
    let target = engine.nvmf_addr.expect("NVMe/TCP address");
    let proxy = Proxy::start(target);
    let uri = format!(
        "nvmf://{}/nqn.2024-01.io.ballast:d?timeout=5000&kato=4000",
        proxy.addr
    );
    let rt = runtime();
    let dev = open(&rt, &uri);
    let mut model = vec![0u8; (SIZE_MIB * MIB) as usize];
    let t = Instant::now();
    let mut cuts = Vec::new();
    let tally = run_workers(&rt, &dev, &mut model, 3, Faults::Cuts, || {
        std::thread::sleep(Duration::from_millis(1500));
        for i in 0..3 {
            if i == 2 {
                // The target unreachable for a while: connection attempts fail, back-off.
                proxy.refuse(true);
                cuts.push(proxy.sever());
                std::thread::sleep(Duration::from_millis(1200));
                proxy.refuse(false);
            } else {
                cuts.push(proxy.sever());
            }
            std::thread::sleep(Duration::from_millis(1500));
        }
    });
    report("cuts", &tally, &dev, t.elapsed().as_secs_f64());
    eprintln!(
        "connections severed per cut: {cuts:?}; accepted by the proxy: {}",
        proxy.inner.accepted.load(Ordering::Relaxed)
    );
    assert!(cuts.iter().all(|&n| n >= 1), "nothing to cut: {cuts:?}");
    assert!(tally.errors >= 1, "the cuts were not seen: {tally:?}");
    assert_eq!(tally.lost_unflushed, 0, "the target never went away");
    let s = dev.stats();
    assert!(s.associations >= 4, "an association per cut: {s:?}");
    assert!(s.failed_connects >= 1, "attempts while refused: {s:?}");
    // Every writer went on after the last cut; now all of it, from both reactors.
    let d = dev.clone();
    on(&rt, 1, STEP_LIMIT, move || async move { d.flush().await }).expect("flush");
    verify_device(&rt, &dev, &model, "after the cuts");
    drop(dev);
    rt.shutdown();
    drop(proxy);
    stop_and_compare(engine, &img, &model);
}

#[test]
fn engine_killed_mid_io_and_restarted() {
    const SIZE_MIB: u64 = 192;
    let dir = TempDir::new("nvmf-kill");
    let img = dir.join("disk.img");
    let mut engine = start_engine(&engine_args(&img, SIZE_MIB, "127.0.0.1:0"));
    let addr = engine.nvmf_addr.expect("NVMe/TCP address");
    let uri = format!("{}?timeout=5000&kato=4000", engine.nvmf_uris[0].clone());
    let rt = runtime();
    let dev = open(&rt, &uri);
    let mut model = vec![0u8; (SIZE_MIB * MIB) as usize];
    let t = Instant::now();
    let mut second = None;
    let tally = run_workers(&rt, &dev, &mut model, 3, Faults::Crash, || {
        std::thread::sleep(Duration::from_millis(2000));
        engine.signal(libc::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(20);
        while engine.try_status().is_none() {
            assert!(Instant::now() < deadline, "SIGKILL did not end the engine");
            std::thread::sleep(Duration::from_millis(10));
        }
        // Away long enough for the initiator to back off.
        std::thread::sleep(Duration::from_millis(700));
        second = Some(start_engine(&engine_args(
            &img,
            SIZE_MIB,
            &addr.to_string(),
        )));
        std::thread::sleep(Duration::from_millis(2500));
    });
    let engine2 = second.expect("restarted");
    assert_eq!(engine2.nvmf_addr, Some(addr), "restarted on the same port");
    report("kill", &tally, &dev, t.elapsed().as_secs_f64());
    assert!(tally.errors >= 1, "the kill was not seen: {tally:?}");
    assert!(tally.recoveries >= 6, "every worker recovered: {tally:?}");
    let s = dev.stats();
    assert!(s.associations >= 2, "{s:?}");
    let d = dev.clone();
    on(&rt, 0, STEP_LIMIT, move || async move { d.flush().await }).expect("flush");
    verify_device(&rt, &dev, &model, "after the restart");
    drop(dev);
    rt.shutdown();
    drop(engine);
    stop_and_compare(engine2, &img, &model);
}
