//! `cargo xtask vm`: the test guest of `crates/testvm` by hand.
//!
//! - `vm build` — build the guest image if it is not cached; print where it is.
//! - `vm run SCRIPT [--timeout SECS] [--hostfwd HOST:GUEST]... [--disk PATH]... [--cpus N]
//!   [--quiet]` — boot the guest, run the `/bin/sh` script in it, show the console, exit
//!   with the script's status.
//! - `vm shell [same flags]` — boot the guest with a shell on this terminal (`exit` or
//!   Ctrl-A X leaves; the time limit defaults to an hour).

use std::path::PathBuf;
use std::time::Duration;

pub const USAGE: &str = "vm build | vm run SCRIPT [--timeout SECS] [--hostfwd HOST:GUEST]... \
                         [--disk PATH]... [--cpus N] [--quiet] | vm shell [same flags]";

pub fn vm(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("build") if args.len() == 1 => build(),
        Some("run") => run(&args[1..]),
        Some("shell") => shell(&args[1..]),
        _ => Err(format!("usage: cargo xtask {USAGE}")),
    }
}

/// Makes sure the guest image exists, saying what is downloaded when it does not; for
/// `cargo xtask test`.
pub fn ensure_for_tests() -> Result<(), String> {
    if let Some(g) = testvm::Guest::cached() {
        eprintln!(
            "xtask test: guest image for kernel-client tests cached in {}",
            g.dir().display()
        );
        return Ok(());
    }
    eprintln!(
        "xtask test: building the guest image for kernel-client tests in {}: apt-get download \
         (about 90 MB, unpacked with dpkg -x, nothing installed) of linux-image-*-amd64, \
         busybox-static, nbd-client, nvme-cli, open-iscsi, e2fsprogs, qemu-system-x86 with its \
         firmware and the libraries the host lacks",
        testvm::Guest::image_dir().display()
    );
    testvm::Guest::ensure()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn build() -> Result<(), String> {
    let g = testvm::Guest::ensure().map_err(|e| e.to_string())?;
    println!(
        "guest image: {}\n  kernel {} ({})\n  initramfs {}\n  qemu {}",
        g.dir().display(),
        g.kernel_version(),
        g.kernel().display(),
        g.initrd().display(),
        g.qemu().display()
    );
    Ok(())
}

/// The guest with an interactive shell on the console.
fn shell(args: &[String]) -> Result<(), String> {
    let mut opts = testvm::RunOpts::default().timeout(Duration::from_secs(3600));
    opts.interactive = true;
    let (opts, script) = parse(args, opts)?;
    if script.is_some() {
        return Err(format!("usage: cargo xtask {USAGE}"));
    }
    let g = testvm::Guest::ensure().map_err(|e| e.to_string())?;
    let running = g
        .spawn(
            "echo 'testvm shell: exit (or Ctrl-A X) powers off'\n\
             setsid cttyhack sh -l </dev/console >/dev/console 2>&1\n",
            opts,
        )
        .map_err(|e| e.to_string())?;
    for (h, gp) in running.forwards() {
        eprintln!("xtask vm: host 127.0.0.1:{h} -> guest port {gp}");
    }
    let out = running.wait();
    if out.timed_out {
        return Err("the guest shell hit its time limit; QEMU was killed".into());
    }
    Ok(())
}

/// The flags shared by `run` and `shell`, and the script argument if any.
fn parse(
    args: &[String],
    mut opts: testvm::RunOpts,
) -> Result<(testvm::RunOpts, Option<PathBuf>), String> {
    let mut script: Option<PathBuf> = None;
    let mut it = args.iter();
    let value = |it: &mut std::slice::Iter<'_, String>, flag: &str| {
        it.next()
            .cloned()
            .ok_or_else(|| format!("{flag} needs a value; usage: cargo xtask {USAGE}"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--timeout" => {
                let v = value(&mut it, a)?;
                let s: u64 = v.parse().map_err(|_| format!("bad --timeout {v:?}"))?;
                opts.timeout = Duration::from_secs(s);
            }
            "--hostfwd" => {
                let v = value(&mut it, a)?;
                let (h, g) = v
                    .split_once(':')
                    .and_then(|(h, g)| Some((h.parse().ok()?, g.parse().ok()?)))
                    .ok_or_else(|| format!("bad --hostfwd {v:?} (want HOSTPORT:GUESTPORT)"))?;
                opts = opts.hostfwd(h, g);
            }
            "--disk" => opts = opts.disk(value(&mut it, a)?),
            "--cpus" => {
                let v = value(&mut it, a)?;
                opts.cpus = v.parse().map_err(|_| format!("bad --cpus {v:?}"))?;
            }
            "--quiet" => opts.echo = false,
            s if s.starts_with('-') => {
                return Err(format!("unknown flag {s}; usage: cargo xtask {USAGE}"));
            }
            _ if script.is_none() => script = Some(PathBuf::from(a)),
            _ => return Err(format!("usage: cargo xtask {USAGE}")),
        }
    }
    Ok((opts, script))
}

fn run(args: &[String]) -> Result<(), String> {
    let (opts, script) = parse(args, testvm::RunOpts::default().echo(true))?;
    let script = script.ok_or_else(|| format!("usage: cargo xtask {USAGE}"))?;
    let text = std::fs::read_to_string(&script)
        .map_err(|e| format!("reading {}: {e}", script.display()))?;
    let g = testvm::Guest::ensure().map_err(|e| e.to_string())?;
    let echo = opts.echo;
    let running = g.spawn(&text, opts).map_err(|e| e.to_string())?;
    for (h, gp) in running.forwards() {
        eprintln!("xtask vm: host 127.0.0.1:{h} -> guest port {gp}");
    }
    let out = running.wait();
    if !echo {
        print!("{}", out.console);
    }
    let boot = out
        .boot
        .map_or_else(|| "-".to_string(), |d| format!("{:.1} s", d.as_secs_f64()));
    eprintln!(
        "xtask vm: boot {boot}, total {:.1} s",
        out.elapsed.as_secs_f64()
    );
    match out.status {
        Some(0) => Ok(()),
        Some(s) => {
            eprintln!("xtask vm: the script exited with {s}");
            std::process::exit(s.clamp(1, 255));
        }
        None => {
            if !echo && !out.qemu_stderr.is_empty() {
                eprintln!("--- qemu stderr ---\n{}", out.qemu_stderr);
            }
            Err(if out.timed_out {
                "the guest run timed out; QEMU was killed".to_string()
            } else {
                "the guest reported no exit status (kernel panic or QEMU failure?)".to_string()
            })
        }
    }
}
