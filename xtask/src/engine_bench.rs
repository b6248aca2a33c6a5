//! What `bench-nvmf` and `bench-nexus` share: each is an example of the engine crate
//! (`crates/engine/examples/*_bench.rs`) that starts release `ballast-engine`s itself and
//! prints Markdown. This builds the engine and the example, places the engines and the
//! example's process on different CPUs, runs it, and writes the doc.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::bench::{cpu_pair, loadavg, sh};

/// Which CPU the engines run on and which the example's own process (the client side).
#[derive(Clone, Debug)]
pub struct Placement {
    pub engines: String,
    pub client: String,
}

/// One run of a benchmark example.
#[derive(Debug)]
pub struct ExampleRun {
    /// SECS and ROUNDS as given (validated).
    pub secs: String,
    pub rounds: String,
    /// `None` without 2+ CPUs or `taskset`.
    pub placement: Option<Placement>,
    /// The example's Markdown.
    pub stdout: String,
    /// Load average before the run.
    pub load_before: String,
    /// The commit built, and whether tracked files outside docs/ had uncommitted changes.
    pub rev: String,
}

/// Runs `cargo xtask TASK [SECS [ROUNDS]]`: builds the release engine and example
/// `example`, then runs `example ENGINE target/bench SECS ROUNDS [ENGINE_CPU CLIENT_CPU]`
/// under `taskset -c CLIENT_CPU`. The engines go on the first CPU when `engines_first`, else
/// on the last, and the client on the other. `log_hint` names the engine logs for errors.
pub fn run_example(
    task: &str,
    example: &str,
    args: &[String],
    engines_first: bool,
    log_hint: &str,
) -> Result<ExampleRun, String> {
    let secs = args.first().cloned().unwrap_or_else(|| "3".into());
    let rounds = args.get(1).cloned().unwrap_or_else(|| "3".into());
    if secs.parse::<f64>().map_or(true, |s| s <= 0.0)
        || rounds.parse::<usize>().map_or(true, |r| r == 0)
    {
        return Err(format!(
            "{task}: SECS and ROUNDS must be positive numbers (got {secs:?}, {rounds:?})"
        ));
    }
    crate::build_release()?;
    let mut b = crate::cargo();
    b.args([
        "build",
        "--release",
        "-p",
        "ballast-engine",
        "--example",
        example,
    ]);
    crate::run(b, &format!("cargo build --release --example {example}"))?;
    let root = crate::root();
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let placement = cpu_pair().map(|(first, last)| {
        let (engines, client) = if engines_first {
            (first, last)
        } else {
            (last, first)
        };
        Placement { engines, client }
    });
    let bin = root.join("target/release/examples").join(example);
    let mut c = match &placement {
        Some(p) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &p.client]).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    c.arg(root.join("target/release/ballast-engine"))
        .arg(&dir)
        .arg(&secs)
        .arg(&rounds);
    if let Some(p) = &placement {
        c.arg(&p.engines).arg(&p.client);
    }
    let load_before = loadavg();
    let root_s = root.display().to_string();
    let git = |args: &[&str]| sh("git", &[&["-C", root_s.as_str()], args].concat());
    let mut rev = git(&["rev-parse", "--short", "HEAD"]);
    // Changes to what is built; docs/ is left out (a previous run's doc is one of them).
    let changed = git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ".",
        ":(exclude)docs",
    ]);
    if !changed.is_empty() && changed != "?" {
        rev.push_str(" with uncommitted changes");
    }
    let out = c
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{example}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{example} failed ({}); the engine logs are {}",
            out.status,
            dir.join(log_hint).display()
        ));
    }
    Ok(ExampleRun {
        secs,
        rounds,
        placement,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        load_before,
        rev,
    })
}

/// Writes `doc` to docs/`name`, prints it, and says so.
pub fn write_doc(task: &str, name: &str, doc: &str) -> Result<(), String> {
    let path: PathBuf = crate::root().join("docs").join(name);
    std::fs::write(&path, doc).map_err(|e| format!("writing {}: {e}", path.display()))?;
    print!("{doc}");
    eprintln!("xtask {task}: wrote {}", path.display());
    Ok(())
}
