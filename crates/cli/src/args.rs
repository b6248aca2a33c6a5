//! Command line of `ballast` (clap derive).

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Operator CLI of the Ballast storage engine.
///
/// Talks to a running `ballast-engine` over its management gRPC API. Create
/// block devices (RAM or file backed), pools on them with thin or thick
/// volumes, snapshots and clones, export devices and volumes over NBD, and
/// watch their I/O statistics.
///
/// Example:
///   ballast device create d0 'malloc:///d0?size=1GiB'
///   ballast export create vol0 d0
///   nbd-client -N vol0 127.0.0.1 /dev/nbd0
///   ballast stats d0
///
///   ballast device create disk1 '/var/tmp/disk1.img?size=10GiB'
///   ballast pool create pool1 disk1
///   ballast volume create pool1 db 4GiB
///   ballast export create db pool1/db
///   ballast volume snapshot pool1 db db-monday
#[derive(Debug, Parser)]
#[command(
    name = "ballast",
    version,
    propagate_version = true,
    verbatim_doc_comment
)]
pub struct Cli {
    /// URL of the engine's management API (http://HOST:PORT; "http://" may be
    /// left out).
    #[arg(
        long,
        global = true,
        env = "BALLAST_ENGINE",
        value_name = "URL",
        default_value = ballast_api::DEFAULT_ENDPOINT
    )]
    pub engine: String,

    /// Output format: aligned human-readable tables, or JSON for scripts.
    #[arg(
        long,
        short = 'o',
        global = true,
        value_enum,
        value_name = "FORMAT",
        default_value_t = OutputFormat::Table
    )]
    pub output: OutputFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns, human-readable sizes and latencies.
    Table,
    /// One JSON document on stdout; field names as in the gRPC API, sizes in
    /// bytes, latencies in nanoseconds.
    Json,
}

/// Top-level subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The engine itself.
    #[command(subcommand)]
    Engine(EngineCommand),

    /// Block devices: create, destroy, list.
    #[command(subcommand)]
    Device(DeviceCommand),

    /// Exports of devices over NBD or NVMe/TCP: create, destroy, list.
    #[command(subcommand)]
    Export(ExportCommand),

    /// NVMe-oF/TCP subsystems: create, destroy, namespaces, host allow-lists, list.
    ///
    /// `ballast export create NAME DEVICE --protocol nvmf` is the one-step form
    /// (subsystem nqn.2024-01.io.ballast:NAME, DEVICE as namespace 1); these
    /// commands build subsystems with several namespaces. Hosts find them with
    /// `nvme discover -t tcp -a HOST -s PORT` and connect with `nvme connect`.
    #[command(subcommand)]
    Nvmf(NvmfCommand),

    /// Storage pools: create, import, close, destroy, grow, label, list, check.
    ///
    /// A pool is one device or several (concatenated) formatted with Ballast's
    /// pool format; it holds thin or thick volumes, their snapshots and clones. Each volume or snapshot
    /// is also an engine device named POOL/VOLUME, exported with
    /// `ballast export create NAME POOL/VOLUME`.
    #[command(subcommand)]
    Pool(PoolCommand),

    /// Volumes of pools: create, destroy, resize, snapshot, clone, revert, list.
    #[command(subcommand)]
    Volume(VolumeCommand),

    /// Nexuses: volumes replicated synchronously over several devices.
    ///
    /// A nexus writes to all its children (pool volumes, files, remote replicas
    /// opened as nbd:// or nvmf:// devices) and reads from one; a failing child
    /// is retired and I/O goes on; children are rebuilt in the background. The
    /// nexus is an engine device of its own name: export it with
    /// `ballast export create NAME NEXUS`. With --persist-health its healthy set
    /// is stored (`ballast nexus health-store`) before the nexus relies on it.
    #[command(subcommand)]
    Nexus(NexusCommand),

    /// I/O statistics per device.
    ///
    /// For each device (or only DEVICE): operations, bytes and errors per kind
    /// of operation (read, write, flush, unmap, write_zeroes), mean/p50/p99
    /// latency and a compact latency histogram. Counters are totals since the
    /// device was created.
    Stats(StatsArgs),
}

/// `ballast engine ...`
#[derive(Debug, Subcommand)]
pub enum EngineCommand {
    /// Show the engine's version, cores, polling mode, NBD address and uptime.
    Info,
}

/// `ballast device ...`
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Open (or create) a block device and register it under NAME.
    ///
    /// URI forms:
    ///   malloc:///NAME?size=1GiB[&block_size=4096]
    ///       RAM-backed device of the given size (contents lost when destroyed)
    ///   uring:///path/to/file[?size=10GiB][&ro][&direct=0]
    ///       file or block device, I/O through io_uring; size= creates the file
    ///       or grows it to that size, ro opens it read-only, direct=0 turns
    ///       off O_DIRECT
    ///   /path/to/file[?size=...]
    ///       an absolute path: same as uring:///path/to/file
    ///
    /// Sizes take the suffixes K, M, G, T (powers of 1024; KiB, MiB, GiB, TiB
    /// too). Quote URIs that contain '?' or '&' so the shell leaves them alone.
    #[command(verbatim_doc_comment)]
    Create {
        /// Unique name of the new device.
        #[arg(value_name = "NAME")]
        name: String,
        /// Where the data lives: malloc:///NAME?size=SIZE, uring:///PATH[?size=SIZE]
        /// or an absolute PATH[?size=SIZE].
        #[arg(value_name = "URI")]
        uri: String,
    },

    /// Close a device and forget its name.
    ///
    /// Fails while the device is still exported. A file's data is kept; a
    /// malloc device's data is freed.
    Destroy {
        /// Name of the device to destroy.
        #[arg(value_name = "NAME")]
        name: String,
    },

    /// List all devices with their kind, size, block size and capabilities.
    List,
}

/// `ballast export ...`
#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// Export DEVICE under the export name NAME, over NBD (default) or NVMe/TCP.
    ///
    /// NBD clients then connect with the export name, e.g.
    /// `nbd-client -N NAME HOST /dev/nbd0`. With `--protocol nvmf` the export
    /// is the NVMe subsystem nqn.2024-01.io.ballast:NAME with DEVICE as
    /// namespace 1: `nvme connect -t tcp -a HOST -s PORT -n
    /// nqn.2024-01.io.ballast:NAME` (see `ballast engine info` for the
    /// addresses).
    Create {
        /// Unique export name, the name NBD clients ask for (NVMe/TCP: the
        /// last part of the subsystem NQN).
        #[arg(value_name = "NAME")]
        name: String,
        /// Name of the device to export.
        #[arg(value_name = "DEVICE")]
        device: String,
        /// Let clients only read, even if the device is writable.
        #[arg(long)]
        read_only: bool,
        /// Protocol: nbd or nvmf (NVMe-oF/TCP).
        #[arg(long, value_enum, default_value_t = Protocol::Nbd)]
        protocol: Protocol,
        /// NVMe/TCP: a host NQN allowed to connect (repeatable; none admits every
        /// host).
        #[arg(long = "allow-host", value_name = "HOSTNQN")]
        allow_hosts: Vec<String>,
    },

    /// Remove an export; clients connected to it are disconnected.
    Destroy {
        /// Name of the export to remove.
        #[arg(value_name = "NAME")]
        name: String,
    },

    /// List all exports with their device, mode, URI and open connections.
    List,
}

/// Export protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// NBD (fixed newstyle).
    Nbd,
    /// NVMe over Fabrics on TCP.
    Nvmf,
}

/// `ballast nvmf ...`
#[derive(Debug, Subcommand)]
pub enum NvmfCommand {
    /// Create an empty NVM subsystem NQN.
    CreateSubsystem {
        /// Subsystem NQN, e.g. nqn.2024-01.io.example:db.
        #[arg(value_name = "NQN")]
        nqn: String,
        /// A host NQN allowed to connect (repeatable; none admits every host).
        #[arg(long = "allow-host", value_name = "HOSTNQN")]
        allow_hosts: Vec<String>,
    },

    /// Destroy a subsystem; connected hosts lose their controllers.
    DestroySubsystem {
        /// Subsystem NQN.
        #[arg(value_name = "NQN")]
        nqn: String,
    },

    /// Add DEVICE as a namespace of subsystem NQN.
    AddNs {
        /// Subsystem NQN.
        #[arg(value_name = "NQN")]
        nqn: String,
        /// Engine device to serve (a pool volume is POOL/VOLUME).
        #[arg(value_name = "DEVICE")]
        device: String,
        /// Namespace ID (1..1024) [default: the lowest free one].
        #[arg(long)]
        nsid: Option<u32>,
        /// Refuse writes even if the device is writable.
        #[arg(long)]
        read_only: bool,
    },

    /// Remove namespace NSID from subsystem NQN.
    RemoveNs {
        /// Subsystem NQN.
        #[arg(value_name = "NQN")]
        nqn: String,
        /// Namespace ID.
        #[arg(value_name = "NSID")]
        nsid: u32,
    },

    /// Allow HOSTNQN to connect to subsystem NQN.
    AllowHost {
        /// Subsystem NQN.
        #[arg(value_name = "NQN")]
        nqn: String,
        /// Host NQN.
        #[arg(value_name = "HOSTNQN")]
        host: String,
    },

    /// Remove HOSTNQN from the allow-list (an empty list admits every host);
    /// its controllers are torn down.
    DisallowHost {
        /// Subsystem NQN.
        #[arg(value_name = "NQN")]
        nqn: String,
        /// Host NQN.
        #[arg(value_name = "HOSTNQN")]
        host: String,
    },

    /// List subsystems with their namespaces, allowed hosts and controllers.
    List,
}

/// `ballast pool ...`
#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Format DEVICE (or several, concatenated) as a new, empty pool NAME.
    /// Everything on them is lost.
    ///
    /// Each DEVICE is an engine device (see `ballast device list`) that is
    /// neither exported nor holding a pool already, and whose first 1 MiB is
    /// all zeroes (a new file or disk): a device with a file system,
    /// partition table or other signature, or any data there, is refused,
    /// naming what was found, unless --force is given. The first holds the
    /// metadata; every one carries the pool's superblocks, so the engine finds
    /// and orders them again at start.
    Create {
        /// Pool name (1 to 64 bytes, no '/').
        #[arg(value_name = "NAME")]
        name: String,
        /// Engine devices to format, in concatenation order.
        #[arg(value_name = "DEVICE", required = true, num_args = 1..)]
        devices: Vec<String>,
        /// Allocation unit: a power of two from 64KiB to 4MiB; snapshots copy
        /// a whole cluster on the first write to it [default: 128KiB].
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        cluster_size: Option<u64>,
        /// Format the devices even if their first 1 MiB holds a file system,
        /// partition table or other data (it is overwritten). A device that
        /// holds a Ballast pool is refused even so.
        #[arg(long)]
        force: bool,
    },

    /// Open the pool on DEVICE and register its volumes as devices POOL/VOLUME.
    ///
    /// The engine does this by itself for the devices it is started with;
    /// use it for devices created later, or to retry a faulted pool. A pool
    /// over several devices is imported by naming any of them: the others are
    /// found among the engine's devices that no pool or export uses.
    Import {
        /// Engine device holding the pool (any member).
        #[arg(value_name = "DEVICE")]
        device: String,
    },

    /// Make a pool's metadata durable and stop serving it.
    ///
    /// Its volume devices disappear; its device stays, as a plain device.
    /// Fails while any volume is exported. A faulted pool is closed by its
    /// name, or by its device's name when its name is unknown.
    Close {
        /// Pool name (or a faulted pool's device).
        #[arg(value_name = "NAME")]
        name: String,
    },

    /// Destroy a pool: close it and zero the first 1 MiB of its devices.
    ///
    /// Its devices stay, as plain devices that no longer hold a pool (both
    /// superblock copies are erased first) and are blank for `pool create`;
    /// the data beyond is not erased. Fails while any volume is exported.
    Destroy {
        /// Pool name (or a faulted pool's device).
        #[arg(value_name = "NAME")]
        name: String,
    },

    /// Grow a pool while it serves: take the space its devices gained and add
    /// new devices.
    ///
    /// Extend a member's file or disk first (e.g. `truncate -s +10G FILE`),
    /// then run `ballast pool grow NAME`; or name new engine devices to add
    /// them as members. Existing data does not move.
    Grow {
        /// Pool name.
        #[arg(value_name = "NAME")]
        name: String,
        /// Engine devices to add (none: only take the space the members gained).
        #[arg(value_name = "DEVICE")]
        add: Vec<String>,
    },

    /// Set or remove pool labels: KEY=VALUE sets, KEY- removes.
    ///
    /// Labels are kept in the pool's superblocks and shown by `ballast pool
    /// list`; the control plane selects pools by them (e.g. zone=a, tier=ssd).
    Label {
        /// Pool name.
        #[arg(value_name = "NAME")]
        name: String,
        /// KEY=VALUE to set, KEY- to remove.
        #[arg(value_name = "LABEL", required = true, num_args = 1..)]
        labels: Vec<String>,
    },

    /// List pools: state, devices, capacity, used and committed space, labels.
    List,

    /// Verify a pool's metadata; exits 1 and lists the problems if any.
    ///
    /// `ballast pool check NAME` checks an online pool through the engine.
    /// `ballast pool check --offline URI` checks the pool on a device no
    /// engine is using, in this process (the device opened read-only): exit
    /// status 0 clean, 1 problems found, 2 the pool cannot be imported (the
    /// damage is named).
    #[command(group(clap::ArgGroup::new("what").required(true).args(["name", "offline"])))]
    Check {
        /// Name of an online pool.
        #[arg(value_name = "NAME")]
        name: Option<String>,
        /// Check the pool on this device URI (a path or uring:///PATH) offline
        /// instead, opened read-only; a pool over several devices takes them
        /// all, comma-separated, in any order. The report is text (no JSON).
        #[arg(long, value_name = "URI")]
        offline: Option<String>,
    },
}

/// `ballast nexus ...`
#[derive(Debug, Subcommand)]
pub enum NexusCommand {
    /// Create nexus NAME of SIZE over the engine devices CHILD...
    Create {
        /// Nexus name (also its engine device name).
        #[arg(value_name = "NAME")]
        name: String,
        /// Size, e.g. 10GiB (at most the smallest child).
        #[arg(value_name = "SIZE", value_parser = parse_size)]
        size: u64,
        /// Engine devices to replicate over.
        #[arg(value_name = "CHILD", required = true, num_args = 1..)]
        children: Vec<String>,
        /// A child that is not in sync (rebuilt from the others); repeatable.
        #[arg(long, value_name = "CHILD")]
        out_of_sync: Vec<String>,
        /// Engine device keeping the dirty-region log, so a child that returns
        /// after a restart copies only what it missed.
        #[arg(long, value_name = "DEVICE")]
        log: Option<String>,
        /// This incarnation's epoch: nvmf:// children are fenced (NVMe
        /// reservations) so older incarnations can no longer write them.
        #[arg(long, value_name = "N", default_value_t = 0)]
        epoch: u64,
        /// Persist the healthy set: the nexus makes a health record whenever
        /// its healthy children change, and acknowledges no write a retired
        /// child missed before a store (`ballast nexus health-store`, later the
        /// control plane) has acknowledged the record without that child.
        /// Without a store running, such writes fail after 30 s.
        #[arg(long)]
        persist_health: bool,
        /// The previous incarnation did not shut down cleanly (its last
        /// record says clean = false): the first child in sync serves alone and
        /// the other children in sync are rebuilt from it in full.
        #[arg(long)]
        unclean: bool,
        /// Generation of the previous incarnation's last health record: this
        /// one's records continue after it.
        #[arg(long, value_name = "N", default_value_t = 0)]
        health_generation: u64,
        /// Recreate from the record stored for NAME in FILE (written by
        /// `ballast nexus health-store`): children not in its healthy set are
        /// out of sync, --unclean unless the record is clean, generations
        /// continue after it; implies --persist-health.
        #[arg(long, value_name = "FILE")]
        from_health: Option<std::path::PathBuf>,
        /// Rebuild rate limit in bytes per second (e.g. 100MiB): rebuilds copy
        /// at most this fast, leaving the rest of the bandwidth to the
        /// application. Default: as fast as the children go.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        rebuild_rate: Option<u64>,
    },
    /// Destroy a nexus that is not exported (its children stay).
    ///
    /// The nexus is closed first: I/O drained, children flushed, and with
    /// --persist-health its last health record (clean when that worked) is
    /// handed to the store.
    Destroy {
        /// Nexus name.
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// List nexuses, their children, states and rebuild progress.
    ///
    /// With health persistence, DETAIL shows the newest health record's
    /// generation and whether the store has acknowledged it ("health gen 5
    /// stored", or "health gen 5 (stored: 4)" while writes a retired child
    /// missed may be held for it).
    List {
        /// Refresh every second while a rebuild runs (a live progress bar).
        #[arg(long)]
        watch: bool,
    },
    /// Add engine device CHILD to nexus NAME; it is rebuilt in the background.
    AddChild {
        /// Nexus name.
        #[arg(value_name = "NAME")]
        name: String,
        /// Engine device.
        #[arg(value_name = "CHILD")]
        child: String,
    },
    /// Remove CHILD from nexus NAME (the device stays).
    RemoveChild {
        /// Nexus name.
        #[arg(value_name = "NAME")]
        name: String,
        /// Engine device.
        #[arg(value_name = "CHILD")]
        child: String,
    },
    /// Retire CHILD of nexus NAME: no more I/O goes to it.
    FaultChild {
        /// Nexus name.
        #[arg(value_name = "NAME")]
        name: String,
        /// Engine device.
        #[arg(value_name = "CHILD")]
        child: String,
        /// Why (shown in `nexus list`).
        #[arg(long, default_value = "faulted by request")]
        reason: String,
    },
    /// Rebuild a faulted or out-of-sync CHILD of nexus NAME.
    Rebuild {
        /// Nexus name.
        #[arg(value_name = "NAME")]
        name: String,
        /// Engine device.
        #[arg(value_name = "CHILD")]
        child: String,
    },
    /// Store the health records of the engine's nexuses in FILE, until stopped
    ///
    /// A minimal single-node stand-in for the control plane's store: it
    /// watches the engine's health records (nexuses created with
    /// --persist-health), writes each to FILE durably (a temporary file,
    /// fsync, rename, fsync of the directory), then acknowledges it — which
    /// releases the writes the nexus held for it. FILE is TOML, one table per
    /// nexus: [nexus."NAME"] with generation, healthy (the children in sync)
    /// and clean. Records of other nexuses already in FILE are kept. When the
    /// engine goes away it reconnects every second. Each record stored is
    /// printed on stdout.
    ///
    /// After an engine restart, recreate a nexus from its record:
    ///   ballast nexus create NAME SIZE CHILD... --from-health FILE
    #[command(verbatim_doc_comment)]
    HealthStore {
        /// The store file (created if missing).
        #[arg(value_name = "FILE")]
        file: std::path::PathBuf,
    },
}

/// `ballast volume ...`
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create volume NAME of SIZE in POOL (thin unless --thick).
    ///
    /// The volume becomes device POOL/NAME: export it with
    /// `ballast export create EXPORT POOL/NAME`.
    Create {
        /// Pool name.
        #[arg(value_name = "POOL")]
        pool: String,
        /// Volume name (unique in the pool, no '/').
        #[arg(value_name = "NAME")]
        name: String,
        /// Size, e.g. 10GiB, 512M, 1048576 (a multiple of the pool's block size).
        #[arg(value_name = "SIZE", value_parser = parse_size)]
        size: u64,
        /// Allocate all the space now instead of on first write.
        #[arg(long)]
        thick: bool,
    },

    /// Delete a volume or snapshot (refused while its device is exported).
    Destroy {
        /// Pool name.
        #[arg(value_name = "POOL")]
        pool: String,
        /// Volume or snapshot name.
        #[arg(value_name = "NAME")]
        name: String,
    },

    /// Change a volume's size (shrinking needs --force and loses the data
    /// beyond the new end).
    Resize {
        /// Pool name.
        #[arg(value_name = "POOL")]
        pool: String,
        /// Volume name.
        #[arg(value_name = "NAME")]
        name: String,
        /// New size, e.g. 20GiB.
        #[arg(value_name = "SIZE", value_parser = parse_size)]
        size: u64,
        /// Allow shrinking.
        #[arg(long)]
        force: bool,
    },

    /// Take a read-only snapshot of VOLUME, device POOL/SNAPSHOT.
    Snapshot {
        /// Pool name.
        #[arg(value_name = "POOL")]
        pool: String,
        /// Volume to snapshot.
        #[arg(value_name = "VOLUME")]
        volume: String,
        /// Name of the new snapshot.
        #[arg(value_name = "SNAPSHOT")]
        snapshot: String,
    },

    /// Create writable volume CLONE from SNAPSHOT, device POOL/CLONE.
    Clone {
        /// Pool name.
        #[arg(value_name = "POOL")]
        pool: String,
        /// Snapshot to clone.
        #[arg(value_name = "SNAPSHOT")]
        snapshot: String,
        /// Name of the new volume.
        #[arg(value_name = "CLONE")]
        clone: String,
    },

    /// Give VOLUME the contents (and size) of SNAPSHOT; later writes are lost.
    Revert {
        /// Pool name.
        #[arg(value_name = "POOL")]
        pool: String,
        /// Volume to revert.
        #[arg(value_name = "VOLUME")]
        volume: String,
        /// Snapshot to revert to.
        #[arg(value_name = "SNAPSHOT")]
        snapshot: String,
    },

    /// List the volumes and snapshots of POOL, or of every pool.
    List {
        /// Only this pool.
        #[arg(value_name = "POOL")]
        pool: Option<String>,
    },
}

/// Parses a size: a number of bytes with an optional binary unit suffix
/// (K, M, G, T, also KiB/KB, MiB/MB, ..., all powers of 1024), e.g. `1GiB`,
/// `512M`, `4096`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad size {s:?}: expected e.g. 10GiB, 512M or 4096"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "bad size unit {other:?} in {s:?}: use K, M, G or T (KiB, MiB, GiB, TiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// `ballast stats [DEVICE]`
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Only this device (default: all devices).
    #[arg(value_name = "DEVICE")]
    pub device: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_export_create() {
        let cli = Cli::try_parse_from([
            "ballast",
            "--engine",
            "http://h:1",
            "export",
            "create",
            "e",
            "d",
            "--read-only",
            "-o",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.engine, "http://h:1");
        assert_eq!(cli.output, OutputFormat::Json);
        match cli.command {
            Command::Export(ExportCommand::Create {
                name,
                device,
                read_only,
                protocol,
                allow_hosts,
            }) => {
                assert_eq!(
                    (name.as_str(), device.as_str(), read_only),
                    ("e", "d", true)
                );
                assert_eq!(protocol, Protocol::Nbd);
                assert!(allow_hosts.is_empty());
            }
            other => panic!("unexpected {other:?}"),
        }
        let cli = Cli::try_parse_from([
            "ballast",
            "export",
            "create",
            "v",
            "p/v",
            "--protocol",
            "nvmf",
            "--allow-host",
            "nqn.2014-08.io.x:a",
            "--allow-host",
            "nqn.2014-08.io.x:b",
        ])
        .unwrap();
        match cli.command {
            Command::Export(ExportCommand::Create {
                protocol,
                allow_hosts,
                ..
            }) => {
                assert_eq!(protocol, Protocol::Nvmf);
                assert_eq!(allow_hosts.len(), 2);
            }
            other => panic!("unexpected {other:?}"),
        }
        let cli = Cli::try_parse_from([
            "ballast",
            "nvmf",
            "add-ns",
            "nqn.2024-01.io.x:s",
            "d0",
            "--nsid",
            "3",
        ])
        .unwrap();
        match cli.command {
            Command::Nvmf(NvmfCommand::AddNs { nsid, device, .. }) => {
                assert_eq!((nsid, device.as_str()), (Some(3), "d0"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("128KiB"), Ok(128 << 10));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2t"), Ok(2 << 40));
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("1X").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn parses_pool_and_volume_commands() {
        let cli = Cli::try_parse_from([
            "ballast",
            "pool",
            "create",
            "p",
            "d",
            "--cluster-size",
            "64KiB",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Pool(PoolCommand::Create {
                cluster_size: Some(65536),
                ..
            })
        ));
        let cli = Cli::try_parse_from(["ballast", "volume", "create", "p", "v", "1G", "--thick"])
            .unwrap();
        assert!(matches!(
            cli.command,
            Command::Volume(VolumeCommand::Create {
                size: 1073741824,
                thick: true,
                ..
            })
        ));
        let cli = Cli::try_parse_from(["ballast", "pool", "check", "--offline", "/x"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Pool(PoolCommand::Check {
                name: None,
                offline: Some(_)
            })
        ));
        assert!(Cli::try_parse_from(["ballast", "pool", "check"]).is_err());
        assert!(Cli::try_parse_from(["ballast", "pool", "check", "p", "--offline", "/x"]).is_err());
        assert!(Cli::try_parse_from(["ballast", "volume", "create", "p", "v", "lots"]).is_err());
    }

    #[test]
    fn stats_device_is_optional() {
        let cli = Cli::try_parse_from(["ballast", "stats"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Stats(StatsArgs { device: None })
        ));
    }
}
