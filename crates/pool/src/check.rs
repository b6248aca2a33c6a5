//! The offline check: what a pool's devices hold, whether the pool imports, and whether its
//! metadata keeps its invariants, as a typed [`Report`].
//!
//! [`check`] runs on a reactor over devices already open; [`check_offline`] opens device URIs
//! read-only, starts a private one-reactor runtime for the check and stops it. The check never
//! writes: import does not write, and the devices are opened read-only. Run it only on a pool
//! no engine is serving (a pool being written changes under the check).
//!
//! Rendering the report is the caller's business; [`Report::render`] gives the text the
//! engine's `--pool-check` and `ballast pool check --offline` print.

use std::fmt::Write as _;
use std::sync::Arc;

use blockdev::{Device, IoBuf};

use crate::assemble::{Found, hex, scan};
use crate::pool::{MemberInfo, Pool, PoolError, PoolErrorKind, PoolUsage, VolumeInfo};
use crate::superblock::{SUPERBLOCK_SIZE, Superblock, SuperblockError};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Damage import worked around (one superblock copy, an older checkpoint, ...): the pool
    /// is usable and consistent.
    Warning,
    /// The metadata violates an invariant.
    Problem,
    /// The pool cannot be examined at all: a device cannot be opened or read, holds no pool,
    /// or the pool cannot be imported.
    Fatal,
}

/// One thing the check found.
#[derive(Debug)]
pub enum Finding {
    /// No device was given.
    NoDevice,
    /// A device could not be opened.
    Open {
        /// The URI as given.
        uri: String,
        /// Why.
        error: String,
    },
    /// The check's reactor could not be started.
    Reactor(String),
    /// A device could not be read.
    Read {
        /// The URI.
        uri: String,
        /// The device error.
        error: blockdev::BlockError,
    },
    /// Neither superblock copy of any device has the pool magic.
    NotAPool {
        /// The URIs.
        uris: Vec<String>,
    },
    /// The pool cannot be imported.
    Unimportable {
        /// The first URI.
        uri: String,
        /// Why.
        error: PoolError,
    },
    /// Damage import worked around (`Pool::import_warnings`).
    ImportWarning(String),
    /// A metadata invariant does not hold (`Pool::check`).
    Invariant(String),
}

impl Finding {
    /// How bad it is.
    pub fn severity(&self) -> Severity {
        match self {
            Finding::ImportWarning(_) => Severity::Warning,
            Finding::Invariant(_) => Severity::Problem,
            Finding::NoDevice
            | Finding::Open { .. }
            | Finding::Reactor(_)
            | Finding::Read { .. }
            | Finding::NotAPool { .. }
            | Finding::Unimportable { .. } => Severity::Fatal,
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::NoDevice => write!(f, "no device given"),
            Finding::Open { uri, error } => write!(f, "{uri}: {error}"),
            Finding::Reactor(e) => write!(f, "starting a reactor (io_uring): {e}"),
            Finding::Read { uri, error } => {
                write!(f, "{uri}: cannot read the superblocks: {error}")
            }
            Finding::NotAPool { uris } => write!(
                f,
                "{}: not a Ballast pool (neither superblock copy has the pool magic)",
                uris.join(", ")
            ),
            Finding::Unimportable { uri, error } => {
                write!(f, "{uri}: the pool cannot be imported: {error}")
            }
            Finding::ImportWarning(w) => f.write_str(w),
            Finding::Invariant(p) => f.write_str(p),
        }
    }
}

/// One device as the check saw it.
#[derive(Debug)]
pub struct DeviceReport {
    /// The URI (relative paths made absolute).
    pub uri: String,
    /// Size in bytes.
    pub size: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Copy A (offset 0) and copy B (offset 4 KiB), decoded or why not; `None` when they
    /// could not be read.
    pub copies: Option<[Result<Superblock, SuperblockError>; 2]>,
}

/// The imported pool, described.
#[derive(Debug)]
pub struct PoolReport {
    /// The current superblock (member 0's copy).
    pub superblock: Superblock,
    /// The members in order.
    pub members: Vec<MemberInfo>,
    /// Capacity figures.
    pub usage: PoolUsage,
    /// Volumes and snapshots, sorted by name.
    pub volumes: Vec<VolumeInfo>,
}

/// The verdict of a check, from its worst finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Consistent (warnings may have been found).
    Clean,
    /// The metadata violates invariants.
    Problems,
    /// The pool cannot be examined (not opened, not a pool, not importable).
    Damaged,
}

impl Verdict {
    /// The exit status `ballast pool check --offline` and `ballast-engine --pool-check` use:
    /// 0 clean, 1 problems, 2 damaged.
    pub fn exit_status(self) -> u8 {
        match self {
            Verdict::Clean => 0,
            Verdict::Problems => 1,
            Verdict::Damaged => 2,
        }
    }
}

/// What the check found.
#[derive(Debug, Default)]
pub struct Report {
    /// The devices, in the order given.
    pub devices: Vec<DeviceReport>,
    /// The pool, when it imported.
    pub pool: Option<PoolReport>,
    /// Everything found, in the order found.
    pub findings: Vec<Finding>,
}

impl Report {
    /// The verdict: the worst finding's.
    pub fn verdict(&self) -> Verdict {
        match self.findings.iter().map(Finding::severity).max() {
            None | Some(Severity::Warning) => Verdict::Clean,
            Some(Severity::Problem) => Verdict::Problems,
            Some(Severity::Fatal) => Verdict::Damaged,
        }
    }

    /// The findings of one severity.
    pub fn findings_of(&self, severity: Severity) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(move |f| f.severity() == severity)
    }

    /// The report as text: the description (for stdout) and the error lines (for stderr,
    /// empty when clean).
    pub fn render(&self) -> (String, String) {
        let mut out = String::new();
        self.render_devices(&mut out);
        let mut err = String::new();
        for f in self.findings_of(Severity::Fatal) {
            let _ = writeln!(err, "error: {f}");
        }
        let Some(pool) = &self.pool else {
            return (out, err);
        };
        for w in self.findings_of(Severity::Warning) {
            let _ = writeln!(out, "warning: {w}");
        }
        render_pool(&mut out, pool);
        let name = &pool.superblock.name;
        let problems: Vec<&Finding> = self.findings_of(Severity::Problem).collect();
        if problems.is_empty() {
            let _ = writeln!(out, "pool {name}: clean");
        } else {
            let _ = writeln!(out, "pool {name}: {} problem(s):", problems.len());
            for p in &problems {
                let _ = writeln!(out, "  {p}");
            }
            let _ = writeln!(
                err,
                "error: pool {name}: {} problem(s) found",
                problems.len()
            );
        }
        (out, err)
    }

    /// Each device's geometry and superblock copies.
    fn render_devices(&self, out: &mut String) {
        for d in &self.devices {
            let _ = writeln!(
                out,
                "device {}: {} ({} bytes), block size {}, opened read-only",
                d.uri,
                human(d.size),
                d.size,
                d.block_size
            );
        }
        for d in &self.devices {
            let Some(copies) = &d.copies else { continue };
            let prefix = if self.devices.len() > 1 {
                format!("{}: ", d.uri)
            } else {
                String::new()
            };
            for (n, c) in ["A", "B"].iter().zip(copies) {
                match c {
                    Ok(sb) => {
                        let _ = writeln!(
                            out,
                            "{prefix}superblock copy {n}: valid (generation {}, member {} of {})",
                            sb.generation,
                            sb.member_index,
                            sb.members.len()
                        );
                    }
                    Err(e) => {
                        let _ = writeln!(out, "{prefix}superblock copy {n}: {e}");
                    }
                }
            }
        }
    }
}

/// The superblock's fields, the members, labels, usage and volumes.
fn render_pool(out: &mut String, pool: &PoolReport) {
    let sb = &pool.superblock;
    let _ = writeln!(out, "pool {:?}", sb.name);
    let _ = writeln!(out, "  uuid            {}", hex(&sb.uuid));
    let _ = writeln!(out, "  generation      {}", sb.generation);
    let _ = writeln!(out, "  cluster size    {}", human(sb.cluster_size as u64));
    let _ = writeln!(out, "  block size      {}", sb.block_size);
    let _ = writeln!(out, "  clusters        {}", sb.total_clusters);
    let _ = writeln!(
        out,
        "  data start      {} ({})",
        sb.data_start,
        human(sb.data_start)
    );
    let _ = writeln!(out, "  checkpoint slot {}", human(sb.checkpoint_bytes));
    let _ = writeln!(out, "  journal         {}", human(sb.journal_bytes));
    for (i, m) in pool.members.iter().enumerate() {
        let _ = writeln!(
            out,
            "  member {i:<8} uuid {}, {} bytes, {} clusters",
            hex(&m.uuid),
            m.size,
            m.clusters
        );
    }
    for (k, v) in &sb.labels {
        let _ = writeln!(out, "  label           {k}={v}");
    }
    let u = &pool.usage;
    let _ = writeln!(
        out,
        "usage: capacity {}, used {}, committed {}",
        human(u.capacity),
        human(u.used),
        human(u.committed)
    );
    if pool.volumes.is_empty() {
        let _ = writeln!(out, "no volumes");
        return;
    }
    let _ = writeln!(out, "volumes:");
    for v in &pool.volumes {
        let _ = writeln!(
            out,
            "  {:<20} {:<8} {:>10} {:>10} allocated  {}{}",
            v.name,
            if v.snapshot { "snapshot" } else { "volume" },
            human(v.size),
            human(v.allocated),
            if v.thin { "thin" } else { "thick" },
            v.origin
                .as_deref()
                .map(|o| format!("  origin {o}"))
                .unwrap_or_default()
        );
    }
}

/// A byte count in binary units ("1.5 MiB").
fn human(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1023.95 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Reads both superblock copies of `dev`, each decoded or why not. A device too small to
/// hold them reads as holding no pool.
pub async fn read_copies(
    dev: &Device,
) -> Result<[Result<Superblock, SuperblockError>; 2], blockdev::BlockError> {
    let bs = dev.geometry().block_size.max(1) as usize;
    let len = (2 * SUPERBLOCK_SIZE).next_multiple_of(bs);
    if dev.geometry().size() < len as u64 {
        return Ok([
            Err(SuperblockError::NotAPool),
            Err(SuperblockError::NotAPool),
        ]);
    }
    let buf = dev.read(0, IoBuf::zeroed(len)).await?;
    Ok([
        Superblock::decode(&buf[..SUPERBLOCK_SIZE]),
        Superblock::decode(&buf[SUPERBLOCK_SIZE..2 * SUPERBLOCK_SIZE]),
    ])
}

/// Checks the pool on `devices` (URI and open device, in any order): reads every superblock
/// copy, imports the pool (ordering the members as their superblocks say) without writing,
/// and verifies its metadata. Runs on a reactor.
pub async fn check(devices: Vec<(String, Device)>) -> Report {
    let mut report = Report::default();
    if devices.is_empty() {
        report.findings.push(Finding::NoDevice);
        return report;
    }
    for (uri, dev) in &devices {
        let g = dev.geometry();
        let copies = match read_copies(dev).await {
            Ok(c) => Some(c),
            Err(error) => {
                report.findings.push(Finding::Read {
                    uri: uri.clone(),
                    error,
                });
                None
            }
        };
        report.devices.push(DeviceReport {
            uri: uri.clone(),
            size: g.size(),
            block_size: g.block_size,
            copies,
        });
    }
    if !report.findings.is_empty() {
        return report;
    }
    let no_magic = |d: &DeviceReport| {
        d.copies
            .iter()
            .flatten()
            .all(|c| matches!(c, Err(SuperblockError::NotAPool)))
    };
    if report.devices.iter().all(no_magic) {
        let uris = report.devices.iter().map(|d| d.uri.clone()).collect();
        report.findings.push(Finding::NotAPool { uris });
        return report;
    }
    let devs: Vec<Device> = devices.iter().map(|(_, d)| d.clone()).collect();
    match import_any_order(devs).await {
        Ok(pool) => describe(&mut report, &pool),
        Err(error) => report.findings.push(Finding::Unimportable {
            uri: devices[0].0.clone(),
            error,
        }),
    }
    report
}

/// Imports the pool on `devs`, given in any order.
async fn import_any_order(devs: Vec<Device>) -> Result<Arc<Pool>, PoolError> {
    if devs.len() == 1 {
        return Pool::import(devs[0].clone()).await;
    }
    let found = scan(&devs).await;
    match found.iter().find(|f| matches!(f, Found::Pool { .. })) {
        Some(f @ Found::Pool { members, .. }) if f.complete() => {
            let ordered = members.iter().map(|m| devs[m.expect("complete")].clone());
            Pool::import_members(ordered.collect()).await
        }
        Some(f) => Err(PoolError::members(format!("missing {}", f.missing()))),
        None => Err(PoolError::new(
            PoolErrorKind::NoSuperblock,
            "no device holds a valid pool superblock",
        )),
    }
}

/// Adds the imported pool's description, warnings and invariant violations to `report`.
fn describe(report: &mut Report, pool: &Pool) {
    report.findings.extend(
        pool.import_warnings()
            .iter()
            .cloned()
            .map(Finding::ImportWarning),
    );
    let mut volumes = pool.list();
    volumes.sort_by(|a, b| a.name.cmp(&b.name));
    report.pool = Some(PoolReport {
        superblock: pool.superblock(),
        members: pool.members(),
        usage: pool.usage(),
        volumes,
    });
    report
        .findings
        .extend(pool.check().into_iter().map(Finding::Invariant));
}

/// The URI opened read-only: `ro` added to file URIs (malloc devices have no such parameter).
pub fn read_only_uri(uri: &str) -> String {
    if uri.starts_with("malloc:") {
        return uri.to_string();
    }
    match uri.split_once('?') {
        Some((_, q)) if q.split('&').any(|kv| kv == "ro" || kv.starts_with("ro=")) => {
            uri.to_string()
        }
        Some(_) => format!("{uri}&ro"),
        None => format!("{uri}?ro"),
    }
}

/// A relative path taken from the current directory; anything else as it is.
fn absolute(uri: &str) -> String {
    if uri.contains("://") || uri.starts_with('/') {
        return uri.to_string();
    }
    std::env::current_dir()
        .map(|d| d.join(uri).display().to_string())
        .unwrap_or_else(|_| uri.to_string())
}

/// The offline check of the pool on `uris` (comma-separated, any order; relative paths are
/// taken from the current directory): opens each read-only, runs [`check`] on a private
/// one-reactor runtime and stops it. Call it from an ordinary thread, not from a reactor.
pub fn check_offline(uris: &str) -> Report {
    let mut report = Report::default();
    let mut devices = Vec::new();
    for (i, uri) in uris.split(',').filter(|u| !u.is_empty()).enumerate() {
        let uri = absolute(uri);
        match blockdev::open_uri(&format!("pool-check{i}"), &read_only_uri(&uri)) {
            Ok(d) => devices.push((uri, d)),
            Err(error) => {
                report.findings.push(Finding::Open {
                    uri,
                    error: error.to_string(),
                });
                return report;
            }
        }
    }
    match run_on_private_reactor(move || check(devices)) {
        Ok(r) => r,
        Err(e) => {
            report.findings.push(Finding::Reactor(e.to_string()));
            report
        }
    }
}

/// Runs the future built by `make` on a fresh one-reactor runtime (interrupt mode, not
/// pinned) and stops the runtime.
fn run_on_private_reactor<T, F>(make: impl FnOnce() -> F + Send + 'static) -> std::io::Result<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = T> + 'static,
{
    let rt = reactor::Runtime::start(reactor::Config {
        cores: 1,
        pin: false,
        mode: reactor::PollMode::Interrupt,
        registered_buffers: 8,
        ..reactor::Config::default()
    })?;
    let (tx, rx) = std::sync::mpsc::channel();
    rt.handles()[0].spawn(move || async move {
        let _ = tx.send(make().await);
    });
    let out = rx.recv();
    rt.shutdown();
    out.map_err(|_| std::io::Error::other("the check stopped without an answer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_uris() {
        assert_eq!(read_only_uri("/x.img"), "/x.img?ro");
        assert_eq!(read_only_uri("uring:///x?size=1G"), "uring:///x?size=1G&ro");
        assert_eq!(read_only_uri("uring:///x?ro"), "uring:///x?ro");
        assert_eq!(read_only_uri("malloc:///m?size=1M"), "malloc:///m?size=1M");
    }

    #[test]
    fn the_verdict_is_the_worst_finding() {
        let mut r = Report::default();
        assert_eq!(r.verdict(), Verdict::Clean);
        r.findings.push(Finding::ImportWarning("copy A".into()));
        assert_eq!(r.verdict(), Verdict::Clean);
        r.findings.push(Finding::Invariant("refcount".into()));
        assert_eq!(r.verdict(), Verdict::Problems);
        r.findings.push(Finding::NoDevice);
        assert_eq!(r.verdict(), Verdict::Damaged);
        assert_eq!(r.verdict().exit_status(), 2);
    }

    #[test]
    fn a_device_without_a_pool_is_damaged_and_named() {
        let r = check_offline("malloc:///blank?size=16M");
        assert_eq!(r.verdict(), Verdict::Damaged);
        assert!(r.pool.is_none());
        let (out, err) = r.render();
        assert!(out.contains("superblock copy A: "), "{out}");
        assert!(
            err.contains("malloc:///blank?size=16M: not a Ballast pool"),
            "{err}"
        );
    }
}
