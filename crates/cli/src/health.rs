//! `ballast nexus health-store FILE`: a minimal single-node store of nexus health records
//! (until the control plane exists), and reading its file back for `nexus create
//! --from-health`.
//!
//! The file is TOML, one table per nexus:
//!
//! ```toml
//! [nexus."n0"]
//! generation = 5
//! healthy = ["c0", "c1"]
//! clean = false
//! ```
//!
//! Every record is written to a temporary file next to FILE, fsynced, renamed over FILE and
//! the directory fsynced, and only then acknowledged to the engine.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ballast_api::{
    AckNexusHealthRequest, EngineClient, NexusHealthRecord, WatchNexusHealthRequest,
};
use serde::Deserialize;
use tonic::transport::{Channel, Endpoint};

use crate::{CliError, normalize_url, root_cause};

/// One nexus's stored record.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Stored {
    /// Generation of the record.
    pub generation: u64,
    /// Children in sync.
    pub healthy: Vec<String>,
    /// The nexus closed cleanly (its last record).
    pub clean: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    #[serde(default)]
    nexus: BTreeMap<String, Stored>,
}

/// Reads a store file; a missing file is an empty store.
pub fn load(path: &Path) -> Result<BTreeMap<String, Stored>, CliError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(CliError::Local(format!("reading {}: {e}", path.display()))),
    };
    toml::from_str::<StoreFile>(&text)
        .map(|f| f.nexus)
        .map_err(|e| CliError::Local(format!("{}: {e}", path.display())))
}

/// The record stored for `nexus` in `path`.
pub fn record(path: &Path, nexus: &str) -> Result<Stored, CliError> {
    load(path)?.remove(nexus).ok_or_else(|| {
        CliError::Local(format!(
            "{} holds no health record of nexus {nexus:?}",
            path.display()
        ))
    })
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The file's text.
pub fn render(store: &BTreeMap<String, Stored>) -> String {
    let mut out = String::from(
        "# Nexus health records, written by `ballast nexus health-store`. After an engine\n\
         # restart: ballast nexus create NAME SIZE CHILD... --from-health THIS-FILE\n",
    );
    for (name, r) in store {
        let healthy: Vec<String> = r.healthy.iter().map(|h| toml_string(h)).collect();
        out.push_str(&format!(
            "\n[nexus.{}]\ngeneration = {}\nhealthy = [{}]\nclean = {}\n",
            toml_string(name),
            r.generation,
            healthy.join(", "),
            r.clean
        ));
    }
    out
}

/// Replaces `path` with `text` durably: temporary file, fsync, rename, fsync of the
/// directory.
pub fn write_durably(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "health".into());
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(&dir)?.sync_all()
}

/// A client without a call timeout (the watch stream lasts as long as the engine).
async fn connect_streaming(url: &str) -> Result<EngineClient<Channel>, CliError> {
    let url = normalize_url(url);
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| CliError::InvalidUrl {
            url: url.clone(),
            reason: root_cause(&e),
        })?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| CliError::Unreachable {
            url: url.clone(),
            reason: root_cause(&e),
        })?;
    Ok(EngineClient::new(channel))
}

/// Why one session with the engine ended.
enum Ended {
    /// The engine went away or ended the stream: reconnect.
    Engine(String),
    /// The store failed: stop (acknowledging what is not stored would break the contract).
    Store(CliError),
}

/// One connection: store and acknowledge every record until the stream ends.
async fn session(
    url: &str,
    path: &Path,
    store: &mut BTreeMap<String, Stored>,
) -> Result<(), Ended> {
    let mut client = connect_streaming(url)
        .await
        .map_err(|e| Ended::Engine(e.to_string()))?;
    let mut stream = client
        .watch_nexus_health(WatchNexusHealthRequest {})
        .await
        .map_err(|e| Ended::Engine(e.message().to_string()))?
        .into_inner();
    eprintln!(
        "ballast: storing nexus health records of {url} in {}",
        path.display()
    );
    loop {
        let rec: NexusHealthRecord = match stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(Ended::Engine("the engine ended the stream".into())),
            Err(e) => return Err(Ended::Engine(e.message().to_string())),
        };
        store.insert(
            rec.nexus.clone(),
            Stored {
                generation: rec.generation,
                healthy: rec.healthy.clone(),
                clean: rec.clean,
            },
        );
        write_durably(path, &render(store)).map_err(|e| {
            Ended::Store(CliError::Local(format!("writing {}: {e}", path.display())))
        })?;
        client
            .ack_nexus_health(AckNexusHealthRequest {
                nexus: rec.nexus.clone(),
                generation: rec.generation,
            })
            .await
            .map_err(|e| Ended::Engine(e.message().to_string()))?;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "stored {} generation {}: healthy [{}]{}",
            rec.nexus,
            rec.generation,
            rec.healthy.join(", "),
            if rec.clean { ", clean" } else { "" }
        );
        let _ = out.flush();
    }
}

/// `ballast nexus health-store FILE`: runs until the store fails (or the process is
/// stopped), reconnecting to the engine every second while it is away.
pub async fn run_store(url: &str, path: &Path) -> Result<String, CliError> {
    let mut store = load(path)?;
    // Fail early on a place that cannot be written.
    write_durably(path, &render(&store))
        .map_err(|e| CliError::Local(format!("writing {}: {e}", path.display())))?;
    let mut reported = String::new();
    loop {
        match session(url, path, &mut store).await {
            Ok(()) => {}
            Err(Ended::Store(e)) => return Err(e),
            Err(Ended::Engine(why)) => {
                if why != reported {
                    eprintln!("ballast: engine at {url}: {why}; retrying every second");
                    reported = why;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_file_round_trips() {
        let mut m = BTreeMap::new();
        m.insert(
            "n0".to_string(),
            Stored {
                generation: 7,
                healthy: vec!["c0".into(), "pool \"a\"\\x".into()],
                clean: false,
            },
        );
        m.insert(
            "n 1".to_string(),
            Stored {
                generation: 1,
                healthy: vec![],
                clean: true,
            },
        );
        let text = render(&m);
        let dir = std::env::temp_dir().join(format!("ballast-cli-health-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("h.toml");
        write_durably(&path, &text).unwrap();
        assert_eq!(load(&path).unwrap(), m);
        assert_eq!(record(&path, "n0").unwrap().generation, 7);
        assert!(record(&path, "zz").is_err());
        assert!(load(&dir.join("missing.toml")).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
