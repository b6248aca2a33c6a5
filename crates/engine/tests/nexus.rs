//! Nexuses in the engine, through the `ballast` CLI and over NBD: fio writes with crc32c
//! verification through a nexus while a child is retired, brought back by a partial rebuild,
//! and a new child is added and rebuilt fully — all under load. Zero fio errors; afterwards
//! every child holds the same bytes.

mod common;

use std::time::{Duration, Instant};

use common::{Engine, TempDir, ballast, nexus_incarnation, qemu_io_try, run, tool};

const MIB: u64 = 1 << 20;

fn ok(api: &str, args: &[&str]) -> String {
    let out = ballast(api, args);
    out.assert_success();
    out.stdout
}

fn file_device(dir: &TempDir, name: &str, size: &str) -> String {
    format!(
        "{name}=uring://{}?size={size}",
        dir.join(&format!("{name}.img")).display()
    )
}

/// fio writing 40 MiB of 4k random blocks to `uri` at `rate` IOPS (so events land mid-run),
/// then verifying every block (crc32c), in a thread.
fn fio_in_background(
    dir: &TempDir,
    uri: &str,
    name: &str,
    rate: u32,
) -> std::thread::JoinHandle<common::Output> {
    let (dir, uri, name) = (dir.path().to_path_buf(), uri.to_string(), name.to_string());
    std::thread::spawn(move || {
        let mut c = tool("fio");
        c.current_dir(&dir).args([
            format!("--name={name}"),
            "--ioengine=nbd".into(),
            format!("--uri={uri}"),
            "--rw=randwrite".into(),
            "--bs=4k".into(),
            "--size=40M".into(),
            "--iodepth=16".into(),
            format!("--rate_iops={rate}"),
            "--verify=crc32c".into(),
            "--verify_fatal=1".into(),
            "--verify_state_save=0".into(),
        ]);
        run(&mut c, Duration::from_secs(240))
    })
}

/// fio finished without an error or a verification failure.
fn assert_fio_clean(out: &common::Output) {
    out.assert_success();
    let text = out.text();
    assert!(text.contains("err= 0"), "fio failed: {}", out.describe());
    for bad in ["verify failed", "bad magic", "bad header", "error="] {
        assert!(!text.contains(bad), "fio: {bad:?}: {}", out.describe());
    }
}

/// The state column of child `child` in `ballast nexus list`.
fn child_state(api: &str, nexus: &str, child: &str) -> String {
    let out = ok(api, &["nexus", "list"]);
    out.lines()
        .find(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() >= 3 && cols[0] == nexus && cols[1] == child
        })
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or_else(|| panic!("no child {child} in:\n{out}"))
        .to_string()
}

fn wait_state(api: &str, nexus: &str, child: &str, want: &str, limit: Duration) {
    let until = Instant::now() + limit;
    loop {
        let s = child_state(api, nexus, child);
        if s == want {
            return;
        }
        assert!(
            Instant::now() < until,
            "child {child} still {s}, not {want}:\n{}",
            ok(api, &["nexus", "list"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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

#[test]
fn fio_verify_through_a_nexus_while_children_fail_and_rebuild() {
    let dir = TempDir::new("nexus-fio");
    let devs = [
        file_device(&dir, "c0", "64MiB"),
        file_device(&dir, "c1", "64MiB"),
        file_device(&dir, "c2", "64MiB"),
        file_device(&dir, "log", "1MiB"),
    ];
    let mut args = vec!["--grpc-listen", "127.0.0.1:0"];
    for d in &devs {
        args.extend(["--device", d.as_str()]);
    }
    let mut e = Engine::start(&args);
    let api = e.grpc.clone().expect("management API address");

    let out = ok(
        &api,
        &["nexus", "create", "n0", "48MiB", "c0", "c1", "--log", "log"],
    );
    assert!(out.contains("n0") && out.contains("online"), "{out}");
    // Children are claimed.
    let busy = ballast(&api, &["export", "create", "raw", "c1"]);
    assert_eq!(busy.status.code(), Some(1), "{}", busy.describe());
    assert!(
        busy.stderr.contains("child of nexus"),
        "{}",
        busy.describe()
    );
    ok(&api, &["export", "create", "n0", "n0"]);
    let uri = e.uri_for("n0");

    // fio writes (rate-limited so the changes below land mid-run), then verifies all.
    let fio = fio_in_background(&dir, &uri, "nexus", 2500);
    std::thread::sleep(Duration::from_millis(1500));
    let out = ok(
        &api,
        &[
            "nexus",
            "fault-child",
            "n0",
            "c1",
            "--reason",
            "test: pulled",
        ],
    );
    assert!(
        out.contains("degraded") && out.contains("test: pulled"),
        "{out}"
    );
    std::thread::sleep(Duration::from_millis(1000));
    // c1 returns: only the regions written meanwhile are copied.
    let out = ok(&api, &["nexus", "rebuild", "n0", "c1"]);
    assert!(out.contains("c1"), "{out}");
    wait_state(&api, "n0", "c1", "online", Duration::from_secs(60));
    // A third child joins under load: a full copy.
    ok(&api, &["nexus", "add-child", "n0", "c2"]);
    wait_state(&api, "n0", "c2", "online", Duration::from_secs(120));

    assert_fio_clean(&fio.join().expect("fio thread"));
    let list = ok(&api, &["nexus", "list"]);
    assert!(
        list.lines().next_back().is_some() && !list.contains("faulted"),
        "{list}"
    );
    let json = ok(&api, &["-o", "json", "nexus", "list"]);
    assert!(
        json.contains(r#""state":"online""#) && json.contains(r#""healthy":["c0","c1","c2"]"#),
        "{json}"
    );
    assert!(json.contains(r#""dirty_regions":0"#), "{json}");

    // Every child holds the same bytes.
    ok(&api, &["export", "destroy", "n0"]);
    let (status, stderr) = e.terminate(Duration::from_secs(20));
    assert!(status.success(), "{stderr}");
    let sums: Vec<String> = ["c0", "c1", "c2"]
        .iter()
        .map(|c| sha256_prefix(&dir.join(&format!("{c}.img")), 48 * MIB))
        .collect();
    assert_eq!(
        sums[0], sums[1],
        "c1 differs from c0 after its partial rebuild"
    );
    assert_eq!(
        sums[0], sums[2],
        "c2 differs from c0 after its full rebuild"
    );
}

/// A free TCP port on 127.0.0.1 (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[test]
fn a_remote_replica_engine_killed_under_load_is_retired_and_partially_rebuilt() {
    let dir = TempDir::new("nexus-remote");
    // Engine B serves the remote replica over NBD on a fixed port (it restarts on it).
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let replica = file_device(&dir, "r", "64MiB");
    let b_args = [
        "--nbd-listen",
        listen.as_str(),
        "--device",
        replica.as_str(),
        "--export",
        "r",
    ];
    let mut b = Engine::start(&b_args);

    // Engine A: a local child, the remote one as an nbd:// device, the log; the nexus.
    let local = file_device(&dir, "c0", "64MiB");
    let log = file_device(&dir, "log", "1MiB");
    let remote = format!("rb=nbd://{listen}/r?timeout=5000");
    let mut a = Engine::start(&[
        "--grpc-listen",
        "127.0.0.1:0",
        "--device",
        &local,
        "--device",
        &remote,
        "--device",
        &log,
    ]);
    let api = a.grpc.clone().expect("management API address");
    ok(
        &api,
        &["nexus", "create", "n0", "48MiB", "c0", "rb", "--log", "log"],
    );
    ok(&api, &["export", "create", "n0", "n0"]);
    let uri = a.uri_for("n0");

    let fio = fio_in_background(&dir, &uri, "remote", 2500);
    // The replica's engine dies mid-run: its child is retired, fio sees nothing.
    std::thread::sleep(Duration::from_millis(1500));
    b.signal(libc::SIGKILL);
    let _ = b.try_status();
    wait_state(&api, "n0", "rb", "faulted", Duration::from_secs(30));
    let list = ok(&api, &["nexus", "list"]);
    assert!(list.contains("degraded"), "{list}");
    std::thread::sleep(Duration::from_millis(800));
    // It comes back on the same port; the returning replica copies only what it missed.
    drop(b);
    let _b2 = Engine::start(&b_args);
    ok(&api, &["nexus", "rebuild", "n0", "rb"]);
    wait_state(&api, "n0", "rb", "online", Duration::from_secs(60));

    assert_fio_clean(&fio.join().expect("fio thread"));
    let json = ok(&api, &["-o", "json", "nexus", "list"]);
    assert!(json.contains(r#""healthy":["c0","rb"]"#), "{json}");

    ok(&api, &["export", "destroy", "n0"]);
    let (status, stderr) = a.terminate(Duration::from_secs(20));
    assert!(status.success(), "{stderr}");
    drop(_b2);
    assert_eq!(
        sha256_prefix(&dir.join("c0.img"), 48 * MIB),
        sha256_prefix(&dir.join("r.img"), 48 * MIB),
        "the remote replica differs after its partial rebuild"
    );
}

#[test]
fn a_newer_nexus_incarnation_fences_the_older_one_out() {
    let dir = TempDir::new("nexus-fence");
    // Engine B holds the replica and exports it over NVMe/TCP.
    let replica = file_device(&dir, "r", "64MiB");
    let b = Engine::start(&["--device", &replica, "--nvmf-export", "r"]);
    let target = b.nvmf_uris[0].clone();
    // Two engines, each with its own NVMe host identity, each running an incarnation of the
    // same volume over that replica.
    let incarnation =
        |host_id: &str, epoch: &str| nexus_incarnation(&target, host_id, epoch, false);
    let (old, old_api) = incarnation("7c9e6679-7425-40de-944b-e07fc1f90ae7", "1");
    let (ok1, text) = qemu_io_try(&old.uri_for("n"), &["write -P 0x11 0 1M", "flush"]);
    assert!(ok1, "the first incarnation cannot write: {text}");

    let (new, new_api) = incarnation("9b2f6a0e-3c1d-4e8a-8f6b-2d7e5a4c3b1a", "2");
    // The new incarnation writes; the old one is refused and says it was fenced.
    let (ok2, text) = qemu_io_try(&new.uri_for("n"), &["write -P 0x22 1M 1M", "flush"]);
    assert!(ok2, "the new incarnation cannot write: {text}");
    let (ok3, text) = qemu_io_try(&old.uri_for("n"), &["write -P 0x33 0 64k"]);
    assert!(!ok3, "the fenced incarnation could still write: {text}");
    let list = ok(&old_api, &["nexus", "list"]);
    assert!(list.contains("fenced"), "{list}");
    // Its child was not retired for it: the replica is fine, only this incarnation is out.
    assert!(!list.contains("faulted"), "{list}");
    let list = ok(&new_api, &["nexus", "list"]);
    assert!(
        list.contains("online") && !list.contains("fenced"),
        "{list}"
    );
    // What the new one reads is what was written before and by it, not the refused write.
    let (ok4, text) = qemu_io_try(
        &new.uri_for("n"),
        &["read -P 0x11 0 1M", "read -P 0x22 1M 1M"],
    );
    assert!(ok4, "{text}");
    drop((old, new, b));
}

#[test]
fn a_local_replica_is_fenced_like_a_remote_one() {
    let dir = TempDir::new("nexus-fence-local");
    // Engine A holds the replica, exports it over NVMe/TCP (so another node can reach it
    // when the volume moves) and runs the first incarnation over it directly.
    let replica = file_device(&dir, "r", "64MiB");
    let a = Engine::start(&[
        "--grpc-listen",
        "127.0.0.1:0",
        "--host-id",
        "7c9e6679-7425-40de-944b-e07fc1f90ae7",
        "--device",
        &replica,
        "--nvmf-export",
        "r",
    ]);
    let a_api = a.grpc.clone().expect("management API address");
    // Without fencing an exported device cannot be a child: nothing would keep the
    // export's hosts from writing behind the nexus.
    let out = ballast(&a_api, &["nexus", "create", "n", "32MiB", "r"]);
    assert!(!out.status.success(), "{}", out.text());
    assert!(out.text().contains("exported"), "{}", out.text());
    ok(
        &a_api,
        &["nexus", "create", "n", "32MiB", "r", "--epoch", "1"],
    );
    ok(&a_api, &["export", "create", "n", "n"]);
    let (w1, text) = qemu_io_try(&a.uri_for("n"), &["write -P 0x11 0 1M", "flush"]);
    assert!(w1, "the local incarnation cannot write: {text}");

    // Engine B (another host) takes the volume over through the replica's NVMe/TCP export.
    let dev = format!("r={}?timeout=5000", a.nvmf_uris[0]);
    let b = Engine::start(&[
        "--grpc-listen",
        "127.0.0.1:0",
        "--host-id",
        "9b2f6a0e-3c1d-4e8a-8f6b-2d7e5a4c3b1a",
        "--device",
        &dev,
    ]);
    let b_api = b.grpc.clone().expect("management API address");
    ok(
        &b_api,
        &["nexus", "create", "n", "32MiB", "r", "--epoch", "2"],
    );
    ok(&b_api, &["export", "create", "n", "n"]);
    let (w2, text) = qemu_io_try(&b.uri_for("n"), &["write -P 0x22 1M 1M", "flush"]);
    assert!(
        w2,
        "the remote incarnation cannot write: {text}\n{}",
        ok(&b_api, &["nexus", "list"])
    );
    // The local incarnation's writes reach the replica without any network, and are
    // refused all the same: the reservation is the device's, not the target's.
    let (w3, text) = qemu_io_try(&a.uri_for("n"), &["write -P 0x33 0 64k"]);
    assert!(
        !w3,
        "the fenced local incarnation could still write: {text}"
    );
    let list = ok(&a_api, &["nexus", "list"]);
    assert!(
        list.contains("fenced") && !list.contains("faulted"),
        "{list}"
    );

    // And the other way round: a newer incarnation back on A (epoch 3, local child) shuts
    // B's remote writes out.
    ok(&a_api, &["export", "destroy", "n"]);
    ok(&a_api, &["nexus", "destroy", "n"]);
    ok(
        &a_api,
        &["nexus", "create", "n3", "32MiB", "r", "--epoch", "3"],
    );
    ok(&a_api, &["export", "create", "n3", "n3"]);
    let (w4, text) = qemu_io_try(&b.uri_for("n"), &["write -P 0x44 0 64k"]);
    assert!(!w4, "the remote incarnation could still write: {text}");
    let list = ok(&b_api, &["nexus", "list"]);
    assert!(list.contains("fenced"), "{list}");
    // The newest incarnation sees what the two before it wrote, and nothing refused.
    let (r, text) = qemu_io_try(
        &a.uri_for("n3"),
        &[
            "read -P 0x11 0 1M",
            "read -P 0x22 1M 1M",
            "write -P 0x55 2M 64k",
        ],
    );
    assert!(r, "{text}");
    drop((b, a));
}

#[test]
fn nexus_list_watch_follows_a_rate_limited_rebuild_to_the_end() {
    let dir = TempDir::new("nexus-watch");
    let (c0, c1) = (
        file_device(&dir, "c0", "64MiB"),
        file_device(&dir, "c1", "64MiB"),
    );
    let e = Engine::start(&[
        "--grpc-listen",
        "127.0.0.1:0",
        "--device",
        &c0,
        "--device",
        &c1,
    ]);
    let api = e.grpc.clone().expect("management API address");
    ok(
        &api,
        &[
            "nexus",
            "create",
            "n",
            "48MiB",
            "c0",
            "--rebuild-rate",
            "12MiB",
        ],
    );
    ok(&api, &["export", "create", "n", "n"]);
    // Data everywhere (holes would be skipped, not copied).
    let (w, text) = qemu_io_try(&e.uri_for("n"), &["write -P 0x5a 0 48M", "flush"]);
    assert!(w, "{text}");
    // A new child copies 48 MiB at 12 MiB/s: about four seconds.
    let started = Instant::now();
    ok(&api, &["nexus", "add-child", "n", "c1"]);
    let mut watch = std::process::Command::new(common::cli_bin());
    watch.args(["--engine", &api, "nexus", "list", "--watch"]);
    let out = run(&mut watch, Duration::from_secs(60));
    let took = started.elapsed();
    assert!(out.status.success(), "{}", out.text());
    // Not a terminal: one table per second, each printed whole.
    let percents: Vec<u32> = out
        .stdout
        .lines()
        .filter(|l| l.contains(" c1 ") && l.contains("rebuilding"))
        .filter_map(|l| {
            let pct = l.split('%').next()?.rsplit(' ').next()?;
            pct.trim().parse().ok()
        })
        .collect();
    assert!(
        percents.len() >= 2,
        "expected several progress snapshots: {}",
        out.stdout
    );
    assert!(
        percents.windows(2).all(|w| w[0] <= w[1]) && percents.first() < percents.last(),
        "progress must only grow: {percents:?}\n{}",
        out.stdout
    );
    // It ends by itself, with the final state: the child online.
    let last = out.stdout.rsplit("NEXUS").next().unwrap_or_default();
    assert!(
        last.lines()
            .any(|l| l.contains(" c1 ") && l.contains("online")),
        "{}",
        out.stdout
    );
    // The rate limit held: 48 MiB at 12 MiB/s cannot take much under four seconds.
    assert!(took >= Duration::from_secs(3), "rebuild took only {took:?}");
    let (r, text) = qemu_io_try(&e.uri_for("n"), &["read -P 0x5a 0 48M"]);
    assert!(r, "{text}");
    drop(e);
    assert_eq!(
        sha256_prefix(&dir.join("c0.img"), 48 * MIB),
        sha256_prefix(&dir.join("c1.img"), 48 * MIB)
    );
}

/// An nbdkit server (a real third-party NBD server) serving `file` through `filters`, killed
/// when dropped. Its output goes to `file` with the extension `.nbdkit.log`; when the test
/// fails, dropping it prints that log and whether nbdkit had already exited.
struct Nbdkit {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Nbdkit {
    fn start(port: u16, file: &std::path::Path, filter: &str, params: &[String]) -> Nbdkit {
        let log = file.with_extension("nbdkit.log");
        let out = std::fs::File::create(&log).expect("nbdkit log");
        let mut c = tool("nbdkit");
        c.args(["--exit-with-parent", "-f", "-i", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .arg(format!("--filter={filter}"))
            .arg("file")
            .arg(file)
            .args(params)
            .stdout(out.try_clone().expect("nbdkit log"))
            .stderr(out);
        let mut child = c.spawn().expect("start nbdkit");
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() >= until {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "nbdkit did not listen on {port}:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Nbdkit { child, log }
    }
}

impl Drop for Nbdkit {
    fn drop(&mut self) {
        let state = match self.child.try_wait() {
            Ok(None) => "was still running".to_string(),
            Ok(Some(status)) => format!("had already exited ({status})"),
            Err(e) => format!("could not be waited for ({e})"),
        };
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "nbdkit {state}; the last lines of its log, {}:",
                self.log.display()
            );
            for l in &lines[lines.len().saturating_sub(200)..] {
                eprintln!("  {l}");
            }
        }
    }
}

/// Sends one command character to nbdkit's pause filter and waits for its echo.
fn pause_control(sock: &std::path::Path, cmd: u8) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock).expect("pause socket");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(&[cmd]).expect("send");
    let mut echo = [0u8; 1];
    let _ = s.read(&mut echo);
}

#[test]
fn injected_device_errors_and_timeouts_retire_children_without_application_errors() {
    let dir = TempDir::new("nexus-inject");
    for name in ["ke", "kp"] {
        std::fs::File::create(dir.join(&format!("{name}.img")))
            .and_then(|f| f.set_len(64 * MIB))
            .expect("create image");
    }
    // Two replicas behind nbdkit: one fails every request while `inject` exists (error
    // filter), one stops answering while paused (pause filter).
    let inject = dir.join("inject");
    let sock = dir.join("pause.sock");
    let (pe, pp) = (free_port(), free_port());
    let _ke = Nbdkit::start(
        pe,
        &dir.join("ke.img"),
        "error",
        &[
            "error-rate=100%".into(),
            format!("error-file={}", inject.display()),
        ],
    );
    let _kp = Nbdkit::start(
        pp,
        &dir.join("kp.img"),
        "pause",
        &[format!("pause-control={}", sock.display())],
    );
    let local = file_device(&dir, "c0", "64MiB");
    let (ke, kp) = (
        format!("ke=nbd://127.0.0.1:{pe}/?timeout=2000"),
        format!("kp=nbd://127.0.0.1:{pp}/?timeout=2000"),
    );
    let mut e = Engine::start(&[
        "--grpc-listen",
        "127.0.0.1:0",
        "--device",
        &local,
        "--device",
        &ke,
        "--device",
        &kp,
    ]);
    let api = e.grpc.clone().expect("management API address");
    ok(&api, &["nexus", "create", "n0", "48MiB", "c0", "ke", "kp"]);
    ok(&api, &["export", "create", "n0", "n0"]);
    let uri = e.uri_for("n0");
    let fio = fio_in_background(&dir, &uri, "inject", 2000);
    std::thread::sleep(Duration::from_millis(1000));
    // Device errors on ke.
    std::fs::write(&inject, b"").expect("inject");
    wait_state(&api, "n0", "ke", "faulted", Duration::from_secs(20));
    // kp stops answering: retired after the 2 s command timeout.
    pause_control(&sock, b'p');
    wait_state(&api, "n0", "kp", "faulted", Duration::from_secs(20));
    let list = ok(&api, &["nexus", "list"]);
    assert!(list.contains("degraded"), "{list}");
    // Both recover and are rebuilt from what the log recorded.
    std::fs::remove_file(&inject).expect("stop injecting");
    pause_control(&sock, b'r');
    ok(&api, &["nexus", "rebuild", "n0", "ke"]);
    ok(&api, &["nexus", "rebuild", "n0", "kp"]);
    wait_state(&api, "n0", "ke", "online", Duration::from_secs(60));
    wait_state(&api, "n0", "kp", "online", Duration::from_secs(60));

    assert_fio_clean(&fio.join().expect("fio thread"));
    ok(&api, &["export", "destroy", "n0"]);
    let (status, stderr) = e.terminate(Duration::from_secs(20));
    assert!(status.success(), "{stderr}");
    let want = sha256_prefix(&dir.join("c0.img"), 48 * MIB);
    for r in ["ke", "kp"] {
        assert_eq!(
            sha256_prefix(&dir.join(&format!("{r}.img")), 48 * MIB),
            want,
            "{r} differs after its rebuild"
        );
    }
}

/// `ballast nexus health-store FILE` against one engine, killed when dropped (or stopped).
/// What it prints (a line per record stored) is appended to FILE.log.
struct HealthStore(Option<std::process::Child>);

impl HealthStore {
    fn start(api: &str, file: &std::path::Path) -> HealthStore {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file.with_extension("log"))
            .expect("store log");
        let child = std::process::Command::new(common::cli_bin())
            .env_remove("BALLAST_ENGINE")
            .arg("--engine")
            .arg(api)
            .args(["nexus", "health-store"])
            .arg(file)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start ballast nexus health-store");
        HealthStore(Some(child))
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for HealthStore {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The record of `nexus` in a store file: (generation, healthy, clean).
fn stored(file: &std::path::Path, nexus: &str) -> Option<(u64, Vec<String>, bool)> {
    let text = std::fs::read_to_string(file).ok()?;
    let t: toml::Table = toml::from_str(&text).expect("the store file is TOML");
    let r = t.get("nexus")?.get(nexus)?;
    let generation = r.get("generation")?.as_integer()? as u64;
    let healthy = r
        .get("healthy")?
        .as_array()?
        .iter()
        .map(|v| v.as_str().expect("a child name").to_string())
        .collect();
    Some((generation, healthy, r.get("clean")?.as_bool()?))
}

/// Waits until the store file holds a record of `nexus` that `ok` accepts; returns it.
fn wait_stored(
    file: &std::path::Path,
    nexus: &str,
    limit: Duration,
    ok: impl Fn(&(u64, Vec<String>, bool)) -> bool,
) -> (u64, Vec<String>, bool) {
    let until = Instant::now() + limit;
    loop {
        if let Some(r) = stored(file, nexus).filter(&ok) {
            return r;
        }
        assert!(
            Instant::now() < until,
            "the store never held the record wanted; it holds {:?}",
            stored(file, nexus)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A field of nexus `name` in `ballast -o json nexus list` (a number or a bool), as text.
fn json_field(api: &str, field: &str) -> String {
    let json = ok(api, &["-o", "json", "nexus", "list"]);
    let key = format!("\"{field}\":");
    let at = json
        .find(&key)
        .unwrap_or_else(|| panic!("no {field} in {json}"));
    json[at + key.len()..]
        .split([',', '}'])
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_retired_child_leaves_the_stored_healthy_set_before_a_write_it_missed_is_acknowledged() {
    let dir = TempDir::new("nexus-health");
    let devs = [
        file_device(&dir, "c0", "64MiB"),
        file_device(&dir, "c1", "64MiB"),
        file_device(&dir, "log", "1MiB"),
    ];
    let mut args = vec!["--grpc-listen", "127.0.0.1:0"];
    for d in &devs {
        args.extend(["--device", d.as_str()]);
    }
    let mut e = Engine::start(&args);
    let api = e.grpc.clone().expect("management API address");
    let file = dir.join("health.toml");
    let mut store = HealthStore::start(&api, &file);

    let out = ok(
        &api,
        &[
            "nexus",
            "create",
            "n0",
            "48MiB",
            "c0",
            "c1",
            "--log",
            "log",
            "--persist-health",
        ],
    );
    assert!(out.contains("health gen 1"), "{out}");
    let first = wait_stored(&file, "n0", Duration::from_secs(10), |_| true);
    assert_eq!(first, (1, strings(&["c0", "c1"]), false));
    ok(&api, &["export", "create", "n0", "n0"]);
    let uri = e.uri_for("n0");

    // Under fio verify load, c1 is faulted: the store drops it; c1 is rebuilt: the store
    // gets it back. fio sees no error (its writes wait for the store only briefly).
    let fio = fio_in_background(&dir, &uri, "health", 2500);
    std::thread::sleep(Duration::from_millis(1500));
    ok(
        &api,
        &["nexus", "fault-child", "n0", "c1", "--reason", "test"],
    );
    let r = wait_stored(&file, "n0", Duration::from_secs(10), |r| r.0 >= 2);
    assert_eq!(r, (2, strings(&["c0"]), false));
    std::thread::sleep(Duration::from_millis(800));
    ok(&api, &["nexus", "rebuild", "n0", "c1"]);
    wait_state(&api, "n0", "c1", "online", Duration::from_secs(60));
    let r = wait_stored(&file, "n0", Duration::from_secs(10), |r| r.0 >= 3);
    assert_eq!(r, (3, strings(&["c0", "c1"]), false));
    assert_fio_clean(&fio.join().expect("fio thread"));

    // The store stops. c1 is faulted again: a write it misses is held — it is not
    // acknowledged while the store still calls c1 healthy.
    store.stop();
    ok(
        &api,
        &["nexus", "fault-child", "n0", "c1", "--reason", "test 2"],
    );
    assert_eq!(json_field(&api, "health_generation"), "4");
    assert_eq!(json_field(&api, "health_acked"), "3");
    let u2 = uri.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let writer = std::thread::spawn(move || {
        let out = qemu_io_try(&u2, &["write -P 0x5a 0 64k"]);
        let _ = tx.send(());
        out
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        rx.try_recv().is_err(),
        "the write completed while the store still listed c1 as healthy"
    );
    assert_eq!(
        stored(&file, "n0").expect("record"),
        (3, strings(&["c0", "c1"]), false)
    );
    // The store comes back: it gets the pending record, stores and acknowledges it, and
    // only then does the write complete.
    let t = Instant::now();
    let _store = HealthStore::start(&api, &file);
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the held write did not complete once the record was stored");
    let (wrote, text) = writer.join().expect("qemu-io thread");
    assert!(wrote, "{text}");
    assert_eq!(
        stored(&file, "n0").expect("record"),
        (4, strings(&["c0"]), false),
        "the write completed before the store dropped c1"
    );
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    assert_eq!(json_field(&api, "health_acked"), "4");
    let (read, text) = qemu_io_try(&uri, &["read -P 0x5a 0 64k"]);
    assert!(read, "{text}");

    // c1 is rebuilt; destroying the nexus leaves a clean last record of both children.
    ok(&api, &["nexus", "rebuild", "n0", "c1"]);
    wait_state(&api, "n0", "c1", "online", Duration::from_secs(60));
    ok(&api, &["export", "destroy", "n0"]);
    ok(&api, &["nexus", "destroy", "n0"]);
    let r = wait_stored(&file, "n0", Duration::from_secs(10), |r| r.2);
    assert_eq!(r, (6, strings(&["c0", "c1"]), true));
    let (status, stderr) = e.terminate(Duration::from_secs(20));
    assert!(status.success(), "{stderr}");
    assert_eq!(
        sha256_prefix(&dir.join("c0.img"), 48 * MIB),
        sha256_prefix(&dir.join("c1.img"), 48 * MIB),
        "c1 differs from c0 after its rebuilds"
    );
}

#[test]
fn after_a_kill_the_nexus_is_recreated_from_the_stored_healthy_set_and_resynchronised() {
    let dir = TempDir::new("nexus-health-restart");
    let devs = [
        file_device(&dir, "c0", "64MiB"),
        file_device(&dir, "c1", "64MiB"),
        file_device(&dir, "c2", "64MiB"),
    ];
    let mut args = vec!["--grpc-listen", "127.0.0.1:0"];
    for d in &devs {
        args.extend(["--device", d.as_str()]);
    }
    let file = dir.join("health.toml");
    // No dirty-region log: the store's record is all that says c2 is stale.
    let e1 = Engine::start(&args);
    let api = e1.grpc.clone().expect("management API address");
    let store = HealthStore::start(&api, &file);
    ok(
        &api,
        &[
            "nexus",
            "create",
            "n0",
            "32MiB",
            "c0",
            "c1",
            "c2",
            "--persist-health",
        ],
    );
    ok(&api, &["export", "create", "n0", "n0"]);
    let uri = e1.uri_for("n0");
    let (w, text) = qemu_io_try(&uri, &["write -P 0x11 0 8M", "flush"]);
    assert!(w, "{text}");
    // c2 is retired; the writes after it reach c0 and c1 only.
    ok(&api, &["nexus", "fault-child", "n0", "c2"]);
    let (w, text) = qemu_io_try(&uri, &["write -P 0x22 4M 8M", "flush"]);
    assert!(w, "{text}");
    let before = stored(&file, "n0").expect("record");
    assert_eq!(
        (before.1.clone(), before.2),
        (strings(&["c0", "c1"]), false)
    );

    // The engine is killed: no clean record. A write in flight at that moment landed on c1
    // only (never acknowledged): simulated by writing c1's file directly.
    let mut e1 = e1;
    e1.signal(libc::SIGKILL);
    let _ = e1.try_status();
    drop(e1);
    drop(store);
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("c1.img"))
            .expect("open c1.img");
        f.seek(SeekFrom::Start(20 * MIB)).expect("seek");
        f.write_all(&[0x77; 64 << 10]).expect("stray write");
        f.sync_all().expect("sync");
    }
    assert_ne!(
        sha256_prefix(&dir.join("c0.img"), 32 * MIB),
        sha256_prefix(&dir.join("c1.img"), 32 * MIB)
    );

    // A new engine; the nexus is recreated from the stored record, the stale child first.
    let mut e2 = Engine::start(&args);
    let api = e2.grpc.clone().expect("management API address");
    let _store = HealthStore::start(&api, &file);
    let f = file.to_str().expect("utf-8 path");
    let out = ok(
        &api,
        &[
            "nexus",
            "create",
            "n0",
            "32MiB",
            "c2",
            "c0",
            "c1",
            "--from-health",
            f,
        ],
    );
    // Not recorded healthy: c2 is out of sync; unclean: c0 (the first healthy) serves alone
    // and c1 is rebuilt from it. The incarnation's first record (its generations continue
    // the stored ones) says so.
    wait_stored(&file, "n0", Duration::from_secs(10), |r| r.0 > before.0);
    // The store prints its line only after the engine acknowledged the write: wait for it.
    let want = format!("stored n0 generation {}: healthy [c0]\n", before.0 + 1);
    let until = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = std::fs::read_to_string(file.with_extension("log")).expect("store log");
        if log.contains(&want) || Instant::now() >= until {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(log.contains(&want), "created as:\n{out}\nstored:\n{log}");
    for c in ["c2", "c1"] {
        wait_state(&api, "n0", c, "online", Duration::from_secs(120));
    }
    wait_stored(&file, "n0", Duration::from_secs(10), |r| r.1.len() == 3);
    ok(&api, &["export", "create", "n0", "n0"]);
    let uri = e2.uri_for("n0");
    let (r, text) = qemu_io_try(
        &uri,
        &[
            "read -P 0x11 0 4M",
            "read -P 0x22 4M 8M",
            "read -P 0 20M 64k",
        ],
    );
    assert!(r, "{text}");

    // A clean shutdown: the last record says so.
    ok(&api, &["export", "destroy", "n0"]);
    let (status, stderr) = e2.terminate(Duration::from_secs(30));
    assert!(status.success(), "{stderr}");
    let last = stored(&file, "n0").expect("record");
    assert!(last.2, "not clean after SIGTERM: {last:?}");
    assert_eq!(last.1, strings(&["c2", "c0", "c1"]));
    let want = sha256_prefix(&dir.join("c0.img"), 32 * MIB);
    for c in ["c1", "c2"] {
        assert_eq!(
            sha256_prefix(&dir.join(&format!("{c}.img")), 32 * MIB),
            want,
            "{c} differs from the source c0"
        );
    }
}
