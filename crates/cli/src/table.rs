//! Human-readable output: aligned tables, binary sizes, latencies, histograms.

use std::fmt::Write as _;

use ballast_api::{Device, DeviceStats, EngineInfo, Export, LatencyBucket, OpStats, Pool, Volume};

/// Column alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Pad on the right (text).
    Left,
    /// Pad on the left (numbers).
    Right,
}

/// A table of text cells printed with aligned columns, two spaces apart.
#[derive(Debug)]
pub struct Table {
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with the given header row and per-column alignment.
    pub fn new(headers: &[(&str, Align)]) -> Self {
        Self {
            align: headers.iter().map(|(_, a)| *a).collect(),
            rows: vec![headers.iter().map(|(h, _)| (*h).to_owned()).collect()],
        }
    }

    /// Appends a row; missing cells are empty.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as lines, each prefixed with `indent`, without trailing
    /// spaces, each ended by a newline.
    pub fn render(&self, indent: &str) -> String {
        let ncols = self.align.len();
        let mut widths = vec![0; ncols];
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::from(indent);
            for (i, w) in widths.iter().enumerate() {
                let cell = row.get(i).map_or("", String::as_str);
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = w - cell.chars().count();
                match self.align[i] {
                    Align::Left => {
                        line.push_str(cell);
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A value with three significant digits at most (two decimals below 10, one
/// below 100, none above).
fn three_digits(v: f64) -> String {
    if v < 9.995 {
        format!("{v:.2}")
    } else if v < 99.95 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// A byte count in binary units: "512 B", "1.5 KiB", "1.0 GiB".
pub fn human_bytes(n: u64) -> String {
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

/// A latency: "850 ns", "12.3 µs", "1.50 ms", "2.00 s".
pub fn human_ns(ns: u64) -> String {
    if ns < 1000 {
        return format!("{ns} ns");
    }
    let ns = ns as f64;
    for (scale, unit) in [(1e3, "µs"), (1e6, "ms")] {
        if ns < scale * 999.5 {
            return format!("{} {unit}", three_digits(ns / scale));
        }
    }
    format!("{} s", three_digits(ns / 1e9))
}

/// An uptime: "45s", "2m 03s", "1h 02m 03s", "3d 04h 05m".
pub fn human_uptime(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d {h:02}h {m:02}m")
    } else if h > 0 {
        format!("{h}h {m:02}m {s:02}s")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

fn or_dash(s: &str) -> String {
    if s.is_empty() { "-" } else { s }.to_owned()
}

/// `ballast engine info`.
pub fn info(i: &EngineInfo) -> String {
    let mut t = Table::new(&[("", Align::Left), ("", Align::Left)]);
    t.rows.clear();
    t.row(vec!["version".into(), or_dash(&i.version)]);
    t.row(vec!["cores".into(), i.cores.to_string()]);
    t.row(vec!["poll mode".into(), or_dash(&i.poll_mode)]);
    t.row(vec!["nbd address".into(), or_dash(&i.nbd_address)]);
    t.row(vec!["nvmf address".into(), or_dash(&i.nvmf_address)]);
    t.row(vec!["uptime".into(), human_uptime(i.uptime_ms)]);
    t.render("")
}

/// `ballast device list` (and the device just created).
pub fn devices(list: &[Device]) -> String {
    if list.is_empty() {
        return "no devices\n".to_owned();
    }
    let mut t = Table::new(&[
        ("NAME", Align::Left),
        ("KIND", Align::Left),
        ("SIZE", Align::Right),
        ("BLOCK", Align::Right),
        ("RO", Align::Left),
        ("CAPABILITIES", Align::Left),
        ("URI", Align::Left),
    ]);
    for d in list {
        t.row(vec![
            d.name.clone(),
            or_dash(&d.kind),
            human_bytes(d.size_bytes),
            d.block_size.to_string(),
            yes_no(d.read_only),
            or_dash(&d.capabilities.join(",")),
            d.uri.clone(),
        ]);
    }
    t.render("")
}

/// `ballast export list` (and the export just created).
pub fn exports(list: &[Export]) -> String {
    if list.is_empty() {
        return "no exports\n".to_owned();
    }
    let mut t = Table::new(&[
        ("NAME", Align::Left),
        ("DEVICE", Align::Left),
        ("RO", Align::Left),
        ("CONNS", Align::Right),
        ("URI", Align::Left),
    ]);
    for e in list {
        t.row(vec![
            e.name.clone(),
            e.device.clone(),
            yes_no(e.read_only),
            e.connections.to_string(),
            or_dash(&e.uri),
        ]);
    }
    t.render("")
}

/// `ballast nvmf list` (and a subsystem just changed): one block per subsystem.
pub fn subsystems(list: &[ballast_api::NvmfSubsystem]) -> String {
    if list.is_empty() {
        return "no NVMe subsystems\n".to_owned();
    }
    let mut out = String::new();
    for s in list {
        out.push_str(&format!("{}\n", s.nqn));
        out.push_str(&format!("  uri    {}\n", or_dash(&s.uri)));
        let hosts = if s.allowed_hosts.is_empty() {
            "any".to_owned()
        } else {
            s.allowed_hosts.join(", ")
        };
        out.push_str(&format!("  hosts  {hosts}\n"));
        if s.namespaces.is_empty() {
            out.push_str("  no namespaces\n");
        } else {
            let mut t = Table::new(&[
                ("NSID", Align::Right),
                ("DEVICE", Align::Left),
                ("RO", Align::Left),
                ("NGUID", Align::Left),
            ]);
            for n in &s.namespaces {
                t.row(vec![
                    n.nsid.to_string(),
                    n.device.clone(),
                    yes_no(n.read_only),
                    n.nguid.clone(),
                ]);
            }
            out.push_str(&t.render("  "));
        }
        if !s.controllers.is_empty() {
            let mut t = Table::new(&[
                ("CNTLID", Align::Right),
                ("QUEUES", Align::Right),
                ("HOSTNQN", Align::Left),
            ]);
            for c in &s.controllers {
                t.row(vec![
                    c.cntlid.to_string(),
                    c.queues.to_string(),
                    c.hostnqn.clone(),
                ]);
            }
            out.push_str(&t.render("  "));
        }
    }
    out
}

/// A share of a total as a percentage: "12%", "<1%" for a small non-zero part.
fn percent(part: u64, total: u64) -> String {
    if total == 0 {
        return "-".to_owned();
    }
    let p = part as f64 * 100.0 / total as f64;
    if part > 0 && p < 1.0 {
        "<1%".to_owned()
    } else {
        format!("{p:.0}%")
    }
}

/// `ballast pool list` (and the pool just created or imported).
pub fn pools(list: &[Pool]) -> String {
    if list.is_empty() {
        return "no pools\n".to_owned();
    }
    let mut t = Table::new(&[
        ("NAME", Align::Left),
        ("STATE", Align::Left),
        ("DEVICE", Align::Left),
        ("CAPACITY", Align::Right),
        ("USED", Align::Right),
        ("USED%", Align::Right),
        ("COMMITTED", Align::Right),
        ("VOLUMES", Align::Right),
        ("SNAPSHOTS", Align::Right),
        ("LABELS", Align::Left),
        ("REASON", Align::Left),
    ]);
    for p in list {
        let online = p.state != "faulted";
        let num = |v: String| if online { v } else { "-".to_owned() };
        let mut labels: Vec<String> = p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        t.row(vec![
            or_dash(&p.name),
            or_dash(&p.state),
            if p.devices.is_empty() {
                p.device.clone()
            } else {
                p.devices.join(",")
            },
            num(human_bytes(p.capacity_bytes)),
            num(human_bytes(p.used_bytes)),
            num(percent(p.used_bytes, p.capacity_bytes)),
            num(human_bytes(p.committed_bytes)),
            num(p.volumes.to_string()),
            num(p.snapshots.to_string()),
            or_dash(&labels.join(",")),
            or_dash(&p.reason),
        ]);
    }
    t.render("")
}

/// A progress bar of `width` cells: `[#####.....]  50%`.
fn progress(done: u64, total: u64, width: usize) -> String {
    let frac = if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).clamp(0.0, 1.0)
    };
    let full = (frac * width as f64).round() as usize;
    format!(
        "[{}{}] {:>3.0}%",
        "#".repeat(full),
        ".".repeat(width - full),
        frac * 100.0
    )
}

/// `ballast nexus list`: one line per nexus, then one per child.
pub fn nexuses(list: &[ballast_api::Nexus]) -> String {
    if list.is_empty() {
        return "no nexuses\n".to_owned();
    }
    let mut t = Table::new(&[
        ("NEXUS", Align::Left),
        ("CHILD", Align::Left),
        ("STATE", Align::Left),
        ("SIZE", Align::Right),
        ("DETAIL", Align::Left),
    ]);
    for n in list {
        let detail = if n.dirty_regions > 0 {
            format!(
                "{} dirty region(s) of {} logged{}",
                n.dirty_regions,
                human_bytes(n.region_size_bytes),
                if n.log_device.is_empty() {
                    String::new()
                } else {
                    format!(" on {}", n.log_device)
                }
            )
        } else if n.log_device.is_empty() {
            "-".to_owned()
        } else {
            format!("log on {}", n.log_device)
        };
        let detail = if !n.persist_health {
            detail
        } else {
            let health = if n.health_acked >= n.health_generation {
                format!("health gen {} stored", n.health_generation)
            } else {
                format!(
                    "health gen {} (stored: {})",
                    n.health_generation, n.health_acked
                )
            };
            if detail == "-" {
                health
            } else {
                format!("{detail}; {health}")
            }
        };
        t.row(vec![
            n.name.clone(),
            "-".to_owned(),
            n.state.clone(),
            human_bytes(n.size_bytes),
            detail,
        ]);
        for c in &n.children {
            let detail = match c.state.as_str() {
                "rebuilding" => format!(
                    "{} {} of {}{}",
                    progress(c.rebuild_done_bytes, c.rebuild_total_bytes, 20),
                    human_bytes(c.rebuild_done_bytes),
                    human_bytes(c.rebuild_total_bytes),
                    if c.partial {
                        " (dirty regions only)"
                    } else {
                        ""
                    }
                ),
                _ => or_dash(&c.reason),
            };
            t.row(vec![
                n.name.clone(),
                c.name.clone(),
                c.state.clone(),
                String::new(),
                detail,
            ]);
        }
    }
    t.render("")
}

/// `ballast volume list` (and the volume just created, snapshotted, ...).
pub fn volumes(list: &[Volume]) -> String {
    if list.is_empty() {
        return "no volumes\n".to_owned();
    }
    let mut t = Table::new(&[
        ("POOL", Align::Left),
        ("NAME", Align::Left),
        ("TYPE", Align::Left),
        ("SIZE", Align::Right),
        ("ALLOCATED", Align::Right),
        ("PROVISIONING", Align::Left),
        ("ORIGIN", Align::Left),
        ("DEVICE", Align::Left),
    ]);
    for v in list {
        let kind = if v.snapshot {
            "snapshot"
        } else if v.origin.is_empty() {
            "volume"
        } else {
            "clone"
        };
        t.row(vec![
            v.pool.clone(),
            v.name.clone(),
            kind.to_owned(),
            human_bytes(v.size_bytes),
            human_bytes(v.allocated_bytes),
            if v.thin { "thin" } else { "thick" }.to_owned(),
            or_dash(&v.origin),
            v.device.clone(),
        ]);
    }
    t.render("")
}

/// `ballast pool check NAME`: "pool NAME: clean" or the problems, one per line.
pub fn check(pool: &str, problems: &[String]) -> String {
    if problems.is_empty() {
        return format!("pool {pool}: clean\n");
    }
    let mut out = format!("pool {pool}: {} problem(s):\n", problems.len());
    for p in problems {
        let _ = writeln!(out, "  {p}");
    }
    out
}

/// Width in characters of the longest histogram bar.
const BAR_WIDTH: u64 = 30;

/// A compact latency histogram, one line per bucket from the first to the
/// last non-empty one: upper bound, count, share of all operations, bar.
/// Empty when all buckets are empty.
pub fn histogram(buckets: &[LatencyBucket], indent: &str) -> String {
    let mut buckets = buckets.to_vec();
    buckets.sort_by_key(|b| b.le_ns);
    let first = buckets.iter().position(|b| b.count > 0);
    let last = buckets.iter().rposition(|b| b.count > 0);
    let (Some(first), Some(last)) = (first, last) else {
        return String::new();
    };
    let total: u64 = buckets.iter().map(|b| b.count).sum();
    let max = buckets.iter().map(|b| b.count).max().unwrap_or(0);
    let mut t = Table::new(&[
        ("", Align::Left),
        ("", Align::Right),
        ("", Align::Right),
        ("", Align::Left),
    ]);
    t.rows.clear();
    for (i, b) in buckets.iter().enumerate().take(last + 1).skip(first) {
        let label = if b.le_ns == u64::MAX {
            match i.checked_sub(1).map(|p| buckets[p].le_ns) {
                Some(prev) => format!("> {}", human_ns(prev)),
                None => "any".to_owned(),
            }
        } else {
            format!("<= {}", human_ns(b.le_ns))
        };
        let pct = b.count as f64 * 100.0 / total as f64;
        let len = if b.count == 0 {
            0
        } else {
            // Ceil, so that every non-empty bucket shows at least one block.
            (u128::from(b.count) * u128::from(BAR_WIDTH)).div_ceil(u128::from(max)) as usize
        };
        t.row(vec![
            label,
            b.count.to_string(),
            format!("{pct:.1}%"),
            "#".repeat(len),
        ]);
    }
    t.render(indent)
}

/// `ballast stats`: for each device a table of operations by kind, the
/// latency summary and the histogram.
pub fn stats(list: &[DeviceStats]) -> String {
    if list.is_empty() {
        return "no devices\n".to_owned();
    }
    let mut out = String::new();
    for (n, s) in list.iter().enumerate() {
        if n > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "device {}", s.device);
        let mut t = Table::new(&[
            ("OP", Align::Left),
            ("OPS", Align::Right),
            ("BYTES", Align::Right),
            ("ERRORS", Align::Right),
        ]);
        let kinds = [
            ("read", &s.read),
            ("write", &s.write),
            ("flush", &s.flush),
            ("unmap", &s.unmap),
            ("write_zeroes", &s.write_zeroes),
        ];
        let (mut ops, mut bytes) = (0u64, 0u64);
        for (name, o) in kinds {
            let o = o.unwrap_or_default();
            ops = ops.saturating_add(o.ops);
            bytes = bytes.saturating_add(o.bytes);
            t.row(op_row(name, &o));
        }
        t.row(vec![
            "total".into(),
            ops.to_string(),
            human_bytes(bytes),
            s.errors.to_string(),
        ]);
        out.push_str(&t.render("  "));
        if ops == 0 && s.latency.iter().all(|b| b.count == 0) {
            out.push_str("  latency: no operations\n");
            continue;
        }
        let _ = writeln!(
            out,
            "  latency: mean {}, p50 {}, p99 {}",
            human_ns(s.latency_mean_ns),
            human_ns(s.latency_p50_ns),
            human_ns(s.latency_p99_ns)
        );
        out.push_str(&histogram(&s.latency, "    "));
    }
    out
}

fn op_row(name: &str, o: &OpStats) -> Vec<String> {
    vec![
        name.to_owned(),
        o.ops.to_string(),
        human_bytes(o.bytes),
        o.errors.to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1 << 30), "1.0 GiB");
        assert_eq!(human_bytes((1 << 20) - 1), "1.0 MiB");
        assert_eq!(human_bytes(10 * (1 << 40)), "10.0 TiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn latencies() {
        assert_eq!(human_ns(0), "0 ns");
        assert_eq!(human_ns(999), "999 ns");
        assert_eq!(human_ns(1000), "1.00 µs");
        assert_eq!(human_ns(12_345), "12.3 µs");
        assert_eq!(human_ns(123_456), "123 µs");
        assert_eq!(human_ns(999_999), "1.00 ms");
        assert_eq!(human_ns(1_500_000), "1.50 ms");
        assert_eq!(human_ns(2_000_000_000), "2.00 s");
        assert_eq!(human_ns(1_234_000_000_000), "1234 s");
    }

    #[test]
    fn uptime() {
        assert_eq!(human_uptime(999), "0s");
        assert_eq!(human_uptime(45_000), "45s");
        assert_eq!(human_uptime(123_000), "2m 03s");
        assert_eq!(human_uptime(3_723_000), "1h 02m 03s");
        assert_eq!(human_uptime(273_900_000), "3d 04h 05m");
    }

    #[test]
    fn aligned_columns() {
        let mut t = Table::new(&[("NAME", Align::Left), ("SIZE", Align::Right)]);
        t.row(vec!["a".into(), "1.0 GiB".into()]);
        t.row(vec!["longname".into(), "0 B".into()]);
        assert_eq!(
            t.render(""),
            "NAME         SIZE\n\
             a         1.0 GiB\n\
             longname      0 B\n"
        );
    }

    #[test]
    fn device_table() {
        let d = Device {
            name: "d0".into(),
            uri: "malloc:///d0?size=1GiB".into(),
            kind: "malloc".into(),
            size_bytes: 1 << 30,
            block_size: 512,
            read_only: false,
            capabilities: vec!["flush".into(), "unmap".into()],
        };
        assert_eq!(
            devices(&[d]),
            "NAME  KIND       SIZE  BLOCK  RO  CAPABILITIES  URI\n\
             d0    malloc  1.0 GiB    512  no  flush,unmap   malloc:///d0?size=1GiB\n"
        );
        assert_eq!(devices(&[]), "no devices\n");
    }

    #[test]
    fn export_table() {
        let e = Export {
            name: "vol0".into(),
            device: "d0".into(),
            read_only: true,
            uri: "nbd://127.0.0.1:10809/vol0".into(),
            connections: 2,
            protocol: "nbd".into(),
        };
        assert_eq!(
            exports(&[e]),
            "NAME  DEVICE  RO   CONNS  URI\n\
             vol0  d0      yes      2  nbd://127.0.0.1:10809/vol0\n"
        );
    }

    #[test]
    fn info_table() {
        let i = EngineInfo {
            version: "0.1.0".into(),
            cores: 2,
            poll_mode: "adaptive".into(),
            nbd_address: String::new(),
            uptime_ms: 61_000,
            nvmf_address: "127.0.0.1:4420".into(),
        };
        assert_eq!(
            info(&i),
            "version       0.1.0\n\
             cores         2\n\
             poll mode     adaptive\n\
             nbd address   -\n\
             nvmf address  127.0.0.1:4420\n\
             uptime        1m 01s\n"
        );
    }

    #[test]
    fn nexus_table_shows_states_and_rebuild_progress() {
        let child = |name: &str, state: &str| ballast_api::NexusChild {
            name: name.into(),
            state: state.into(),
            ..Default::default()
        };
        let n = ballast_api::Nexus {
            name: "n0".into(),
            size_bytes: 1 << 30,
            state: "degraded".into(),
            children: vec![
                child("c0", "online"),
                ballast_api::NexusChild {
                    rebuild_done_bytes: 256 << 20,
                    rebuild_total_bytes: 1 << 30,
                    partial: true,
                    ..child("c1", "rebuilding")
                },
                ballast_api::NexusChild {
                    reason: "write failed: I/O error".into(),
                    ..child("c2", "faulted")
                },
            ],
            log_device: "log".into(),
            dirty_regions: 3,
            region_size_bytes: 1 << 20,
            ..Default::default()
        };
        let t = nexuses(&[n]);
        assert!(t.contains("n0     -      degraded"), "{t}");
        assert!(
            t.contains("3 dirty region(s) of 1.0 MiB logged on log"),
            "{t}"
        );
        assert!(
            t.contains("[#####...............]  25% 256.0 MiB of 1.0 GiB (dirty regions only)"),
            "{t}"
        );
        assert!(
            t.contains("n0     c2     faulted              write failed: I/O error"),
            "{t}"
        );
        assert_eq!(nexuses(&[]), "no nexuses\n");
        let h = ballast_api::Nexus {
            name: "n1".into(),
            state: "online".into(),
            persist_health: true,
            health_generation: 5,
            health_acked: 4,
            ..Default::default()
        };
        let t = nexuses(std::slice::from_ref(&h));
        assert!(t.contains("health gen 5 (stored: 4)"), "{t}");
        let t = nexuses(&[ballast_api::Nexus {
            health_acked: 5,
            log_device: "log".into(),
            ..h
        }]);
        assert!(t.contains("log on log; health gen 5 stored"), "{t}");
        assert_eq!(progress(0, 0, 4), "[####] 100%");
    }

    #[test]
    fn pool_table() {
        let online = Pool {
            name: "p0".into(),
            device: "d0".into(),
            capacity_bytes: 100 << 20,
            used_bytes: 25 << 20,
            committed_bytes: 1 << 30,
            volumes: 2,
            snapshots: 1,
            state: "online".into(),
            reason: String::new(),
            cluster_size: 128 << 10,
            devices: vec!["d0".into(), "d2".into()],
            labels: [("zone".to_string(), "a".to_string())].into(),
        };
        let faulted = Pool {
            name: String::new(),
            device: "d1".into(),
            state: "faulted".into(),
            reason: "no valid pool superblock".into(),
            ..Default::default()
        };
        assert_eq!(
            pools(&[online, faulted]),
            "NAME  STATE    DEVICE   CAPACITY      USED  USED%  COMMITTED  VOLUMES  SNAPSHOTS  LABELS  REASON\n\
             p0    online   d0,d2   100.0 MiB  25.0 MiB    25%    1.0 GiB        2          1  zone=a  -\n\
             -     faulted  d1              -         -      -          -        -          -  -       no valid pool superblock\n"
        );
        assert_eq!(pools(&[]), "no pools\n");
    }

    #[test]
    fn volume_table() {
        let v = Volume {
            pool: "p0".into(),
            name: "db".into(),
            device: "p0/db".into(),
            size_bytes: 1 << 30,
            allocated_bytes: 0,
            snapshot: false,
            thin: true,
            origin: String::new(),
        };
        let s = Volume {
            name: "db-1".into(),
            device: "p0/db-1".into(),
            snapshot: true,
            origin: "db".into(),
            ..v.clone()
        };
        let c = Volume {
            name: "db-2".into(),
            device: "p0/db-2".into(),
            thin: false,
            origin: "db-1".into(),
            ..v.clone()
        };
        assert_eq!(
            volumes(&[v, s, c]),
            "POOL  NAME  TYPE         SIZE  ALLOCATED  PROVISIONING  ORIGIN  DEVICE\n\
             p0    db    volume    1.0 GiB        0 B  thin          -       p0/db\n\
             p0    db-1  snapshot  1.0 GiB        0 B  thin          db      p0/db-1\n\
             p0    db-2  clone     1.0 GiB        0 B  thick         db-1    p0/db-2\n"
        );
        assert_eq!(check("p0", &[]), "pool p0: clean\n");
        assert_eq!(
            check("p0", &["a".into(), "b".into()]),
            "pool p0: 2 problem(s):\n  a\n  b\n"
        );
    }

    fn bucket(le_ns: u64, count: u64) -> LatencyBucket {
        LatencyBucket { le_ns, count }
    }

    #[test]
    fn histogram_trims_empty_ends_and_scales_bars() {
        let h = histogram(
            &[
                bucket(1_000, 0),
                bucket(10_000, 30),
                bucket(100_000, 0),
                bucket(1_000_000, 1),
                bucket(u64::MAX, 0),
            ],
            "",
        );
        let expected = format!(
            "<= 10.0 µs  30  96.8%  {}\n\
             <= 100 µs    0   0.0%\n\
             <= 1.00 ms   1   3.2%  #\n",
            "#".repeat(30)
        );
        assert_eq!(h, expected);
        assert_eq!(histogram(&[bucket(1000, 0)], ""), "");
        assert_eq!(histogram(&[], ""), "");
    }

    #[test]
    fn histogram_unbounded_last_bucket() {
        let h = histogram(&[bucket(1_000_000, 1), bucket(u64::MAX, 1)], "");
        assert!(
            h.ends_with("> 1.00 ms   1  50.0%  ##############################\n"),
            "{h}"
        );
    }

    #[test]
    fn stats_block() {
        let s = DeviceStats {
            device: "d0".into(),
            read: Some(OpStats {
                ops: 4,
                bytes: 16384,
                errors: 0,
            }),
            write: Some(OpStats {
                ops: 1,
                bytes: 4096,
                errors: 1,
            }),
            errors: 1,
            latency: vec![bucket(10_000, 5)],
            latency_mean_ns: 8_000,
            latency_p50_ns: 7_500,
            latency_p99_ns: 9_900,
            ..Default::default()
        };
        let out = stats(&[s]);
        assert_eq!(
            out,
            format!(
                "device d0\n\
                 \x20 OP            OPS     BYTES  ERRORS\n\
                 \x20 read            4  16.0 KiB       0\n\
                 \x20 write           1   4.0 KiB       1\n\
                 \x20 flush           0       0 B       0\n\
                 \x20 unmap           0       0 B       0\n\
                 \x20 write_zeroes    0       0 B       0\n\
                 \x20 total           5  20.0 KiB       1\n\
                 \x20 latency: mean 8.00 µs, p50 7.50 µs, p99 9.90 µs\n\
                 \x20   <= 10.0 µs  5  100.0%  {}\n",
                "#".repeat(30)
            )
        );
        let idle = stats(&[DeviceStats {
            device: "d1".into(),
            ..Default::default()
        }]);
        assert!(idle.ends_with("  latency: no operations\n"), "{idle}");
    }
}
