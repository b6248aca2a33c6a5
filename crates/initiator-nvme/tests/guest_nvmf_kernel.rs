//! Ballast's NVMe/TCP initiator (`nvmf://`) against the Linux kernel's NVMe/TCP target:
//! `nvmet` + `nvmet-tcp` in a QEMU guest (crates/testvm; Debian's 6.1 kernel under TCG),
//! configured through configfs with a namespace on a loop device over a tmpfs file and a TCP
//! port forwarded from the host.
//!
//! Two associations, one without digests and one with header and data digests: each writes
//! random patterns (4 KiB .. 1 MiB at random offsets) from two reactors with several
//! commands in flight, flushes, reads everything back from the other reactor, zeroes and
//! deallocates ranges; the second also reads the first one's data, and stays idle for longer
//! than the Keep Alive Timeout (the target drops hosts that miss keep-alives) before more
//! I/O. After the initiator disconnects, the guest hashes every region straight from the
//! namespace's backing file, and the host compares the hashes with what it wrote.
//!
//! The guest image is built on first use; `cargo xtask vm build` builds it ahead.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::{BlockDevice, IoBuf, WriteFlags, ZeroFlags};
use initiator_nvme::NvmfDevice;
use reactor::{Config, PollMode, Runtime};

const NQN: &str = "nqn.2024-01.io.ballast:kernel-target";
const SIZE_MIB: u64 = 256;
/// Keep Alive Timeout asked for (the target rounds it up to whole seconds).
const KATO_MS: u64 = 2000;

/// Sets up the target, says `GUEST ready`, waits for the host's list of regions on port
/// 5555 and prints their SHA-256 read from the backing file.
const SCRIPT: &str = r#"
set -eu
NQN=@NQN@
say() { echo "GUEST $*"; }
truncate -s @SIZE@M /tmp/ns.img
LOOP=$(losetup -f)
losetup "$LOOP" /tmp/ns.img
cd /sys/kernel/config/nvmet
mkdir "subsystems/$NQN"
echo 1 >"subsystems/$NQN/attr_allow_any_host"
mkdir "subsystems/$NQN/namespaces/1"
echo -n "$LOOP" >"subsystems/$NQN/namespaces/1/device_path"
echo 1 >"subsystems/$NQN/namespaces/1/enable"
mkdir ports/1
echo tcp >ports/1/addr_trtype
echo ipv4 >ports/1/addr_adrfam
echo 0.0.0.0 >ports/1/addr_traddr
echo 4420 >ports/1/addr_trsvcid
ln -s "/sys/kernel/config/nvmet/subsystems/$NQN" "ports/1/subsystems/$NQN"
nc -l -p 5555 >/tmp/regions &
NC=$!
say ready "$LOOP"
wait $NC
say regions $(wc -l </tmp/regions)
while read -r off len; do
    sum=$(dd if=/tmp/ns.img bs=4096 skip=$((off / 4096)) count=$((len / 4096)) 2>/dev/null | sha256sum | cut -d' ' -f1)
    say sum "$off" "$len" "$sum"
done </tmp/regions
dmesg | grep -i nvmet | tail -n 20 | sed 's/^/GUEST dmesg /'
say done
"#;

type Fut<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Polls every future until all are done; outputs in order.
async fn join_all<T>(futs: Vec<Fut<'_, T>>) -> Vec<T> {
    let mut futs: Vec<_> = futs.into_iter().map(Some).collect();
    let mut out: Vec<Option<T>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if let Some(fut) = f {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *o = Some(v);
                        *f = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.expect("done")).collect()
}

/// Runs the futures `fs` build, one per reactor, at the same time; their outputs in order.
fn on_each<T, F>(rt: &Runtime, limit: Duration, fs: Vec<Box<dyn FnOnce() -> F + Send>>) -> Vec<T>
where
    T: Send + 'static,
    F: Future<Output = T> + 'static,
{
    let rxs: Vec<_> = fs
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            let (tx, rx) = std::sync::mpsc::channel();
            rt.handles()[i].spawn(move || async move {
                let _ = tx.send(f().await);
            });
            rx
        })
        .collect();
    let deadline = Instant::now() + limit;
    rxs.into_iter()
        .enumerate()
        .map(|(i, rx)| {
            rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| {
                    panic!("reactor {i}: not done within {limit:?} (or it panicked)")
                })
        })
        .collect()
}

fn on<T, F>(rt: &Runtime, i: usize, limit: Duration, f: impl FnOnce() -> F + Send + 'static) -> T
where
    T: Send + 'static,
    F: Future<Output = T> + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    rt.handles()[i].spawn(move || async move {
        let _ = tx.send(f().await);
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("reactor {i}: not done within {limit:?} (or it panicked)"))
}

/// xorshift64*: reproducible randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    let mut v = vec![0u8; len];
    for c in v.chunks_mut(8) {
        let x = r.next().to_le_bytes();
        c.copy_from_slice(&x[..c.len()]);
    }
    v
}

fn sha256(data: &[u8]) -> String {
    let mut c = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils) on the host");
    c.stdin
        .take()
        .expect("stdin")
        .write_all(data)
        .expect("feeding sha256sum");
    let out = c.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A region written with a pattern: offset, length, pattern seed (0: zeroes).
#[derive(Clone, Copy, Debug)]
struct Region {
    off: u64,
    len: usize,
    seed: u64,
}

impl Region {
    fn expected(&self) -> Vec<u8> {
        if self.seed == 0 {
            vec![0; self.len]
        } else {
            pattern(self.seed, self.len)
        }
    }
}

/// `count` regions of 4 KiB .. 1 MiB at random 4 KiB-aligned offsets, each inside its own
/// MiB of `[base, base + count MiB)`.
fn regions(rng: &mut Rng, base: u64, count: u64) -> Vec<Region> {
    let mut slots: Vec<u64> = (0..count).collect();
    for i in (1..slots.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        slots.swap(i, j);
    }
    slots
        .into_iter()
        .map(|slot| {
            let len = 4096usize << rng.below(9);
            let room = (1u64 << 20) - len as u64;
            let off = base + (slot << 20) + rng.below(room / 4096 + 1) * 4096;
            Region {
                off,
                len,
                seed: rng.next() | 1,
            }
        })
        .collect()
}

/// Writes `regs` (several at once) and returns errors.
async fn write_all(d: Arc<NvmfDevice>, regs: Vec<Region>) -> Vec<String> {
    let futs = regs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let d = d.clone();
            let r = *r;
            Box::pin(async move {
                let flags = WriteFlags { fua: i % 3 == 0 };
                d.write(r.off, IoBuf::from_slice(&r.expected()), flags)
                    .await
                    .map(drop)
                    .map_err(|e| format!("write {r:?}: {e}"))
            }) as Fut<'_, _>
        })
        .collect();
    join_all::<Result<(), String>>(futs)
        .await
        .into_iter()
        .filter_map(|r| r.err())
        .collect()
}

/// Reads `regs` back (several at once) and returns mismatches and errors.
async fn check_all(d: Arc<NvmfDevice>, regs: Vec<Region>) -> Vec<String> {
    let futs = regs
        .iter()
        .map(|r| {
            let d = d.clone();
            let r = *r;
            Box::pin(async move {
                match d.read(r.off, IoBuf::zeroed(r.len)).await {
                    Ok(b) if b[..] == r.expected()[..] => Ok(()),
                    Ok(_) => Err(format!("data read back differs: {r:?}")),
                    Err(e) => Err(format!("read {r:?}: {e}")),
                }
            }) as Fut<'_, _>
        })
        .collect();
    join_all::<Result<(), String>>(futs)
        .await
        .into_iter()
        .filter_map(|r| r.err())
        .collect()
}

#[test]
fn guest_kernel_target_serves_the_initiator() {
    let guest = testvm::Guest::ensure().unwrap_or_else(|e| {
        panic!("cannot build the test guest: {e}\n(`cargo xtask vm build` builds it by hand)")
    });
    let script = SCRIPT
        .replace("@NQN@", NQN)
        .replace("@SIZE@", &SIZE_MIB.to_string());
    let mut vm = guest
        .spawn(
            &script,
            testvm::RunOpts::default()
                .timeout(Duration::from_secs(540))
                .hostfwd(0, 4420)
                .hostfwd(0, 5555),
        )
        .unwrap_or_else(|e| panic!("cannot start the guest: {e}"));
    assert!(
        vm.wait_for("GUEST ready", Duration::from_secs(180)),
        "the guest did not set the target up:\n{}",
        vm.console()
    );
    let port = vm.host_port(4420).expect("forwarded NVMe/TCP port");
    let check_port = vm.host_port(5555).expect("forwarded check port");

    let rt = Runtime::start(Config {
        cores: 2,
        mode: PollMode::Interrupt,
        pin: false,
        registered_buffers: 8,
        ..Config::default()
    })
    .expect("start reactors");
    let limit = Duration::from_secs(180);
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut written: Vec<Region> = Vec::new();

    for (round, query) in ["", "hdgst=1&ddgst=1&"].into_iter().enumerate() {
        let uri = format!("nvmf://127.0.0.1:{port}/{NQN}?{query}kato={KATO_MS}&timeout=20000");
        let started = Instant::now();
        // Through the URI registry, as the engine opens devices (a probe: connect, identify,
        // disconnect).
        let via_uri =
            initiator_nvme::open_uri("kernel", &uri, &rt.handles()[0]).unwrap_or_else(|e| {
                panic!(
                    "opening {uri}: {e}\n--- guest console ---\n{}",
                    vm.console()
                )
            });
        eprintln!("round {round}: opened {uri} in {:?}", started.elapsed());
        assert_eq!(via_uri.geometry().size(), SIZE_MIB << 20);
        drop(via_uri);
        // The concrete type, for the NVMe-specific accessors.
        let dev: Arc<NvmfDevice> = Arc::new(
            NvmfDevice::open(
                "kernel",
                initiator_nvme::NvmfParams::parse(&uri).unwrap(),
                &rt.handles()[0],
            )
            .expect("open"),
        );
        let g = dev.geometry();
        assert_eq!(g.size(), SIZE_MIB << 20, "{g:?}");
        assert_eq!(g.block_size, 512);
        let caps = dev.capabilities();
        assert!(caps.flush && caps.write_zeroes && caps.unmap, "{caps:?}");

        // Writes from both reactors at once, several in flight on each.
        let regs = regions(&mut rng, (round as u64 * 64) << 20, 48);
        let halves: Vec<Vec<Region>> = vec![
            regs.iter().step_by(2).copied().collect(),
            regs.iter().skip(1).step_by(2).copied().collect(),
        ];
        let t = Instant::now();
        let errs: Vec<Vec<String>> = on_each(
            &rt,
            limit,
            halves
                .iter()
                .map(|h| {
                    let (d, h) = (dev.clone(), h.clone());
                    Box::new(move || write_all(d, h)) as Box<dyn FnOnce() -> _ + Send>
                })
                .collect(),
        );
        let bytes: usize = regs.iter().map(|r| r.len).sum();
        eprintln!(
            "round {round}: wrote {} regions, {} KiB, in {:?}",
            regs.len(),
            bytes >> 10,
            t.elapsed()
        );
        assert!(errs.iter().all(|e| e.is_empty()), "{errs:?}");
        let d = dev.clone();
        on(&rt, 0, limit, move || async move { d.flush().await }).expect("flush");

        // Read back, each half from the other reactor; the previous round's data too.
        let mut back = halves.clone();
        back.reverse();
        back[0].extend(written.iter().copied());
        let t = Instant::now();
        let errs: Vec<Vec<String>> = on_each(
            &rt,
            limit,
            back.iter()
                .map(|h| {
                    let (d, h) = (dev.clone(), h.clone());
                    Box::new(move || check_all(d, h)) as Box<dyn FnOnce() -> _ + Send>
                })
                .collect(),
        );
        eprintln!("round {round}: read back in {:?}", t.elapsed());
        assert!(errs.iter().all(|e| e.is_empty()), "{errs:?}");
        written.extend(regs.iter().copied());

        // Zero one region, deallocate another.
        let zero = written.len() - 1;
        let unmap = written.len() - 2;
        let (z, u) = (written[zero], written[unmap]);
        let d = dev.clone();
        let r = on(&rt, 1, limit, move || async move {
            d.write_zeroes(z.off, z.len as u64, ZeroFlags::default())
                .await
                .map_err(|e| format!("write zeroes: {e}"))?;
            d.unmap(u.off, u.len as u64)
                .await
                .map_err(|e| format!("deallocate: {e}"))?;
            let b = d
                .read(z.off, IoBuf::zeroed(z.len))
                .await
                .map_err(|e| format!("read: {e}"))?;
            if b.iter().any(|&x| x != 0) {
                return Err("a zeroed region does not read as zeroes".to_string());
            }
            Ok(())
        });
        r.unwrap_or_else(|e| panic!("{e}"));
        written[zero].seed = 0;
        written.remove(unmap);

        if round == 1 {
            // Idle longer than the Keep Alive Timeout: the target would drop a silent host.
            let before = dev.stats();
            std::thread::sleep(Duration::from_millis(KATO_MS * 5 / 2));
            let d = dev.clone();
            let w = written.clone();
            let errs = on(&rt, 0, limit, move || check_all(d, w));
            assert!(errs.is_empty(), "after the idle period: {errs:?}");
            let after = dev.stats();
            assert_eq!(
                after.associations, before.associations,
                "reconnected after the idle period: {after:?}"
            );
            assert!(
                after.keep_alives >= before.keep_alives + 2,
                "keep-alives: {before:?} -> {after:?}"
            );
        }
        let s = dev.stats();
        assert_eq!(s.io_queues, 2, "one I/O queue per reactor: {s:?}");
        assert_eq!((s.timeouts, s.resets, s.digest_errors), (0, 0, 0), "{s:?}");
        let info = dev.controller().expect("controller info");
        eprintln!("round {round}: {info:?}\n{s:?}");
        assert_eq!((info.hdgst, info.ddgst), (round == 1, round == 1));
        assert_eq!(info.subnqn, NQN);
        assert!(info.model.contains("Linux"), "{info:?}");
        drop(dev);
    }
    rt.shutdown();

    // The guest hashes each region from the backing file.
    let list: String = written
        .iter()
        .map(|r| format!("{} {}\n", r.off, r.len))
        .collect();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", check_port)).expect("check port");
    s.write_all(list.as_bytes()).expect("sending the regions");
    drop(s);
    assert!(
        vm.wait_for("GUEST done", Duration::from_secs(240)),
        "the guest did not hash the regions:\n{}",
        vm.console()
    );
    let out = vm.wait();
    assert!(out.success(), "{}", out.describe());
    let sums: BTreeMap<(u64, usize), String> = out
        .script_output()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("GUEST sum "))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let off = w.next()?.parse().ok()?;
            let len = w.next()?.parse().ok()?;
            Some(((off, len), w.next()?.to_string()))
        })
        .collect();
    assert_eq!(sums.len(), written.len(), "{}", out.describe());
    for r in &written {
        assert_eq!(
            sums.get(&(r.off, r.len)),
            Some(&sha256(&r.expected())),
            "the target's backing file differs at {r:?}"
        );
    }
    eprintln!(
        "checked {} regions in the backing file; guest boot {:?}, whole run {:?}",
        written.len(),
        out.boot.unwrap_or_default(),
        out.elapsed
    );
}
