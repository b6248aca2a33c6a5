//! Command line of `ballast` (clap derive).

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Operator CLI of the Ballast storage engine.
///
/// Talks to a running `ballast-engine` over its management gRPC API. Create
/// block devices (RAM or file backed), export them over NBD, and watch their
/// I/O statistics.
///
/// Example:
///   ballast device create d0 'malloc:///d0?size=1GiB'
///   ballast export create vol0 d0
///   nbd-client -N vol0 127.0.0.1 /dev/nbd0
///   ballast stats d0
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

    /// Exports of devices over the engine's NBD target: create, destroy, list.
    #[command(subcommand)]
    Export(ExportCommand),

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
    /// Export DEVICE over NBD under the export name NAME.
    ///
    /// NBD clients then connect with the export name, e.g.
    /// `nbd-client -N NAME HOST /dev/nbd0` (see `ballast engine info` for the
    /// NBD address).
    Create {
        /// Unique export name, the name NBD clients ask for.
        #[arg(value_name = "NAME")]
        name: String,
        /// Name of the device to export.
        #[arg(value_name = "DEVICE")]
        device: String,
        /// Let clients only read, even if the device is writable.
        #[arg(long)]
        read_only: bool,
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
            }) => {
                assert_eq!(
                    (name.as_str(), device.as_str(), read_only),
                    ("e", "d", true)
                );
            }
            other => panic!("unexpected {other:?}"),
        }
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
