//! `ballast-engine`: the Ballast data plane.

use std::path::PathBuf;

use anyhow::Context;
use ballast_engine::config::{self, EngineConfig, ExportConfig, FileConfig, NvmfExportConfig};
use clap::Parser;

/// Ballast's data plane: serves block devices over NBD and NVMe/TCP from io_uring reactors,
/// configured by flags, a TOML file, and at run time over the gRPC management API (`ballast`
/// CLI).
///
/// Device URIs: `malloc:///NAME?size=1GiB[&block_size=4096]` (RAM, reports holes),
/// `uring:///PATH[?size=10GiB][&ro][&direct=0]` or a plain absolute path (file or block device
/// through io_uring with O_DIRECT; `size` creates or grows a file).
///
/// Every device given at start is probed for a storage pool: a pool found is imported and its
/// volumes and snapshots become devices named `POOL/VOLUME` (exportable like any device,
/// e.g. `--export vol0=pool0/vol0`); a damaged pool is reported, listed as faulted and not
/// served. Pools are managed at run time with `ballast pool ...` and `ballast volume ...`.
///
/// NVMe/TCP exports (`--nvmf-export NAME=DEVICE`) are NVM subsystems named
/// `nqn.2024-01.io.ballast:NAME` with the device as namespace 1; the discovery subsystem lists
/// them (`nvme discover -t tcp -a HOST -s 4420`).
///
/// Prints one `nbd://HOST:PORT/NAME` line per NBD export and one `nvmf://HOST:PORT/NQN` line
/// per NVMe/TCP subsystem on stdout once serving, and runs until
/// SIGINT or SIGTERM, then closes every nexus (flushed; nexuses with health persistence hand a
/// last, clean record to a connected store and wait up to 5 s for its ack), commits every
/// pool, flushes every device and exits.
///
/// `ballast-engine --pool-check URI` instead verifies the pool on URI offline (opened
/// read-only; no engine may be using it) and exits: 0 clean, 1 problems found, 2 the pool
/// cannot be imported (the damage is printed).
#[derive(Parser, Debug)]
#[command(name = "ballast-engine", version)]
struct Args {
    /// Number of reactors (threads, one per core, pinned) [default: 1].
    #[arg(long)]
    cores: Option<usize>,
    /// How idle reactors wait: poll (busy), interrupt (sleep), adaptive (poll under load,
    /// sleep when idle) [default: adaptive].
    #[arg(long)]
    poll_mode: Option<String>,
    /// Do not pin reactors to CPUs.
    #[arg(long)]
    no_pin: bool,
    /// NBD listen address; port 0 picks a free port [default: 127.0.0.1:10809].
    #[arg(long)]
    nbd_listen: Option<String>,
    /// Management gRPC listen address, or `none` [default: 127.0.0.1:10124].
    #[arg(long)]
    grpc_listen: Option<String>,
    /// NVMe/TCP listen address (port 0 picks a free port), or `off` [default:
    /// 127.0.0.1:4420].
    #[arg(long)]
    nvmf_listen: Option<String>,
    /// A device to create: NAME=URI (repeatable).
    #[arg(long = "device", value_name = "NAME=URI")]
    devices: Vec<String>,
    /// An export to create: NAME[=DEVICE][,ro] (repeatable; DEVICE defaults to NAME; a pool
    /// volume is DEVICE POOL/VOLUME).
    #[arg(long = "export", value_name = "NAME[=DEVICE][,ro]")]
    exports: Vec<String>,
    /// An NVMe/TCP export to create: NAME[=DEVICE][,ro][,host=HOSTNQN]... (repeatable;
    /// subsystem `nqn.2024-01.io.ballast:NAME`, DEVICE as namespace 1; `host=` entries make an
    /// allow-list, none admits any host).
    #[arg(long = "nvmf-export", value_name = "NAME[=DEVICE][,ro][,host=NQN]")]
    nvmf_exports: Vec<String>,
    /// The NVMe host identifier (a UUID) this engine uses when it connects to NVMe/TCP
    /// targets (`nvmf://` devices); its host NQN is the UUID form. It is who holds the
    /// reservations a nexus fences its children with, so each engine needs its own
    /// [default: derived from /etc/machine-id].
    #[arg(long, value_name = "UUID")]
    host_id: Option<String>,
    /// Connections each data listener (NBD, NVMe/TCP) serves at once; more are closed at
    /// accept. Lowered so that the listeners leave an eighth of the descriptor limit (at least
    /// 256) for the management API and devices [default: 1024].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Milliseconds a new connection has to finish its handshake (NBD: choose an export;
    /// NVMe/TCP: ICReq and Connect) before it is closed [default: 10000].
    #[arg(long, value_name = "MS")]
    negotiate_timeout: Option<u64>,
    /// Milliseconds a negotiated connection may sit with no request in flight and none
    /// arriving before it is closed; 0: no limit [default: 0].
    #[arg(long, value_name = "MS")]
    idle_timeout: Option<u64>,
    /// A TOML file with the same settings (`cores`, `poll_mode`, `pin`, `nbd_listen`,
    /// `grpc_listen`, `nvmf_listen`, `pool_import`, `max_connections`,
    /// `negotiate_timeout_ms`, `idle_timeout_ms`, `[[device]]` name/uri, `[[export]]`
    /// name/device/read_only, `[[nvmf_export]]` name/device/read_only/allow_hosts); flags
    /// override its values and add devices and exports.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Do not probe the devices given at start for pools: they stay plain devices (also
    /// `pool_import = false` in the TOML file).
    #[arg(long)]
    no_pool_import: bool,
    /// Check the pool on URI offline and exit (0 clean, 1 problems, 2 not importable); the
    /// device is opened read-only. A pool over several devices: URI,URI,... in any order.
    /// No other flag applies.
    #[arg(long, value_name = "URI", exclusive = true)]
    pool_check: Option<String>,
}

fn build_config(a: Args) -> anyhow::Result<EngineConfig> {
    let mut cfg = EngineConfig::default();
    if let Some(path) = &a.config {
        FileConfig::load(path)
            .and_then(|f| f.apply(&mut cfg))
            .map_err(anyhow::Error::msg)?;
    }
    if let Some(c) = a.cores {
        cfg.cores = c;
    }
    if let Some(m) = &a.poll_mode {
        cfg.poll_mode = m.parse().map_err(anyhow::Error::msg)?;
    }
    if a.no_pin {
        cfg.pin = false;
    }
    if a.no_pool_import {
        cfg.pool_import = false;
    }
    if let Some(l) = &a.nbd_listen {
        cfg.nbd_listen = l.parse().with_context(|| format!("--nbd-listen {l}"))?;
    }
    if let Some(l) = &a.grpc_listen {
        cfg.grpc_listen = config::parse_optional_addr(l).map_err(anyhow::Error::msg)?;
    }
    if let Some(n) = a.max_connections {
        if n == 0 {
            anyhow::bail!("--max-connections must be at least 1");
        }
        cfg.limits.max_connections = Some(n);
    }
    if let Some(ms) = a.negotiate_timeout {
        cfg.limits.negotiate_timeout = config::parse_millis("--negotiate-timeout", ms, false)
            .map_err(anyhow::Error::msg)?
            .expect("positive");
    }
    if let Some(ms) = a.idle_timeout {
        cfg.limits.idle_timeout =
            config::parse_millis("--idle-timeout", ms, true).map_err(anyhow::Error::msg)?;
    }
    for d in &a.devices {
        cfg.devices
            .push(config::parse_device(d).map_err(anyhow::Error::msg)?);
    }
    if let Some(l) = &a.nvmf_listen {
        cfg.nvmf_listen = config::parse_optional_addr(l).map_err(anyhow::Error::msg)?;
    }
    for e in &a.exports {
        cfg.exports
            .push(ExportConfig::parse(e).map_err(anyhow::Error::msg)?);
    }
    for e in &a.nvmf_exports {
        cfg.nvmf_exports
            .push(NvmfExportConfig::parse(e).map_err(anyhow::Error::msg)?);
    }
    Ok(cfg)
}

fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a live sigset_t; the signals are valid. Blocking them here,
    // before any thread starts, makes every thread inherit the mask, so only sigwait sees them.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    set
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(uri) = &args.pool_check {
        let report = pool::check::check_offline(uri);
        let (out, err) = report.render();
        print!("{out}");
        eprint!("{err}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        std::process::exit(report.verdict().exit_status().into());
    }
    if let Some(id) = &args.host_id {
        let id: initiator_nvme::HostId = id
            .parse()
            .map_err(|e| anyhow::anyhow!("--host-id {id:?}: {e}"))?;
        initiator_nvme::set_host_identity(&id.to_nqn(), id).map_err(anyhow::Error::msg)?;
    }
    let cfg = build_config(args)?;
    let set = block_signals();
    let engine = ballast_engine::Engine::start(&cfg)?;
    if let Some(a) = engine.grpc_addr() {
        eprintln!("ballast-engine: management API on http://{a}");
    }
    eprintln!(
        "ballast-engine: {} reactor(s), {} mode, NBD on {}",
        cfg.cores,
        cfg.poll_mode,
        engine.state().nbd_addr()
    );
    if let Some(a) = engine.state().nvmf_addr() {
        eprintln!("ballast-engine: NVMe/TCP on {a}");
    }
    for e in engine.state().exports() {
        println!("{}", engine.state().export_uri(&e.name));
    }
    for s in engine.state().nvmf().subsystems() {
        println!("{}", engine.state().nvmf_uri(&s.nqn));
    }
    use std::io::Write;
    std::io::stdout().flush()?;
    let mut sig: libc::c_int = 0;
    // SAFETY: waits for one of the signals blocked above; both pointers are live.
    unsafe { libc::sigwait(&set, &mut sig) };
    eprintln!("ballast-engine: signal {sig}, shutting down");
    let errors = engine.shutdown();
    for e in &errors {
        eprintln!("ballast-engine: flush failed: {e}");
    }
    if !errors.is_empty() {
        std::process::exit(1);
    }
    eprintln!("ballast-engine: devices flushed, bye");
    Ok(())
}
