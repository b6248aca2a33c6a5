//! A small Linux guest for tests that need the kernel's own storage clients and targets
//! (nbd, nvme-tcp, nvmet-tcp, iscsi_tcp), which the host kernel lacks.
//!
//! [`Guest::ensure`] builds the guest once per machine from Debian packages and caches it
//! outside the source tree (`$BALLAST_VM_CACHE`, else `/var/tmp/ballast-vm`): Debian's
//! `linux-image-*-amd64` kernel, an initramfs with busybox, the needed modules, nbd-client,
//! nvme-cli, open-iscsi and e2fsprogs, and QEMU unpacked beside it (packages are fetched with
//! `apt-get download` and unpacked with `dpkg -x`; nothing is installed on the host).
//! [`Guest::run`] boots it under QEMU's TCG with a shell script as the test, and returns the
//! script's exit status and the console log. Inside the guest the host's `127.0.0.1` is
//! `10.0.2.2` (QEMU user networking).
//!
//! ```no_run
//! let guest = testvm::Guest::ensure()?;
//! let out = guest.run("uname -r; lsmod | grep nbd", testvm::RunOpts::default())?;
//! assert_eq!(out.status, Some(0), "{}", out.describe());
//! # Ok::<(), testvm::Error>(())
//! ```

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub mod cpio;
mod image;
pub mod modinfo;
mod run;

pub use run::{RunOpts, RunOutput, Running, free_port};

/// Bumped when the image layout changes in a way the recipe hash does not capture.
const LAYOUT: u32 = 2;

/// An error with a message that says what failed and why.
#[derive(Debug, Clone)]
pub struct Error(String);

impl Error {
    /// An error with `msg`.
    pub fn new(msg: impl Into<String>) -> Error {
        Error(msg.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn log(msg: &str) {
    eprintln!("testvm: {msg}");
}

/// The cache directory: `$BALLAST_VM_CACHE`, else `/var/tmp/ballast-vm`.
pub fn cache_root() -> PathBuf {
    match std::env::var_os("BALLAST_VM_CACHE") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from("/var/tmp/ballast-vm"),
    }
}

/// FNV-1a, to name an image after its recipe.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Everything that decides an image's contents, so a changed recipe gets a new directory.
fn recipe() -> String {
    format!(
        "layout {LAYOUT}\nhost {:?} {:?}\nguest {:?}\nmodules {:?}\nbinaries {:?}\ninit {}\n",
        image::HOST_PACKAGES,
        image::HOST_EXTRA,
        image::GUEST_PACKAGES,
        image::MODULES,
        image::BINARIES,
        image::INIT
    )
}

/// A built guest image in the cache.
#[derive(Debug, Clone)]
pub struct Guest {
    dir: PathBuf,
    kernel_version: String,
}

/// An exclusive `flock` on a file, released when dropped (also when the process dies).
#[derive(Debug)]
struct Lock {
    _file: File,
}

fn lock(path: &Path, timeout: Duration) -> Result<Lock> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::new(format!("opening {}: {e}", path.display())))?;
    let deadline = Instant::now() + timeout;
    let mut said = false;
    loop {
        // SAFETY: flock on a descriptor we own and keep open for the call; no memory is
        // passed.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            return Ok(Lock { _file: f });
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(Error::new(format!("flock {}: {err}", path.display())));
        }
        if Instant::now() > deadline {
            return Err(Error::new(format!(
                "another process has held {} for over {timeout:?} (a guest build?)",
                path.display()
            )));
        }
        if !said {
            log("waiting for another process building the guest image");
            said = true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Images of other recipes (older or newer checkouts) unused for this long are removed
/// after a build.
const PRUNE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

fn prune(root: &Path, keep: &Path) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for ent in rd.flatten() {
        let p = ent.path();
        let is_image = ent.file_name().to_string_lossy().starts_with("guest-");
        let unused = std::fs::metadata(p.join("guest.txt"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > PRUNE_AFTER);
        if is_image && p != keep && unused {
            log(&format!("removing {} (unused for a week)", p.display()));
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}

impl Guest {
    /// The directory the current recipe's image lives in (it may not exist yet).
    pub fn image_dir() -> PathBuf {
        cache_root().join(format!("guest-{:016x}", fnv1a(recipe().as_bytes())))
    }

    /// The cached image, if it was built.
    pub fn cached() -> Option<Guest> {
        let dir = Self::image_dir();
        let info = std::fs::read_to_string(dir.join("guest.txt")).ok()?;
        // Mark it used, so pruning after another recipe's build leaves it alone.
        if let Ok(f) = std::fs::File::options()
            .write(true)
            .open(dir.join("guest.txt"))
        {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
        let kernel_version = info
            .lines()
            .find_map(|l| l.strip_prefix("kernel "))?
            .to_string();
        Some(Guest {
            dir,
            kernel_version,
        })
    }

    /// The cached image, built first if it is missing (downloads about 90 MB of Debian
    /// packages; a few minutes). Concurrent callers wait for one build.
    pub fn ensure() -> Result<Guest> {
        if let Some(g) = Self::cached() {
            return Ok(g);
        }
        let root = cache_root();
        std::fs::create_dir_all(&root)
            .map_err(|e| Error::new(format!("creating {}: {e}", root.display())))?;
        let _lock = lock(&root.join("build.lock"), Duration::from_secs(1800))?;
        if let Some(g) = Self::cached() {
            return Ok(g);
        }
        let dir = Self::image_dir();
        // Leftovers of builds that were killed (we hold the lock: none is running).
        if let Ok(rd) = std::fs::read_dir(&root) {
            for ent in rd.flatten() {
                let n = ent.file_name().to_string_lossy().into_owned();
                if n.starts_with("guest-") && n.contains(".tmp") {
                    let _ = std::fs::remove_dir_all(ent.path());
                }
            }
        }
        let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
        log(&format!(
            "building the guest image in {} (Debian packages via apt-get download, unpacked \
             with dpkg -x; nothing is installed)",
            dir.display()
        ));
        let t0 = Instant::now();
        let built = match image::build(&tmp) {
            Ok(b) => b,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(Error::new(format!("building the guest image: {e}")));
            }
        };
        let info = format!(
            "kernel {}\ninitrd_bytes {}\npackages {}\nbuild_seconds {}\n",
            built.kernel_version,
            built.initrd_bytes,
            built.packages.join(" "),
            t0.elapsed().as_secs()
        );
        let fail = |e: std::io::Error| Error::new(format!("finishing {}: {e}", dir.display()));
        std::fs::write(tmp.join("guest.txt"), info).map_err(fail)?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).map_err(fail)?;
        log(&format!(
            "guest image ready in {} ({} s, kernel {}, initramfs {} MiB)",
            dir.display(),
            t0.elapsed().as_secs(),
            built.kernel_version,
            built.initrd_bytes >> 20
        ));
        prune(&root, &dir);
        Self::cached()
            .ok_or_else(|| Error::new(format!("{} unreadable after build", dir.display())))
    }

    /// The image directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The guest kernel's version (`uname -r`).
    pub fn kernel_version(&self) -> &str {
        &self.kernel_version
    }

    /// The kernel image: the uncompressed ELF `vmlinux` when the build could unpack it
    /// (faster to boot under TCG), else Debian's `vmlinuz`.
    pub fn kernel(&self) -> PathBuf {
        let elf = self.dir.join("vmlinux");
        if elf.is_file() {
            elf
        } else {
            self.dir.join("vmlinuz")
        }
    }

    /// The base initramfs (the test script is appended per run).
    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initrd.cpio")
    }

    /// The unpacked QEMU binary.
    pub fn qemu(&self) -> PathBuf {
        self.dir.join("host/usr/bin/qemu-system-x86_64")
    }

    /// Boots the guest, runs `script` (a `/bin/sh` script) as `/test.sh` and waits for it.
    pub fn run(&self, script: &str, opts: RunOpts) -> Result<RunOutput> {
        Ok(self.spawn(script, opts)?.wait())
    }

    /// Boots the guest with `script` and returns while it runs (for tests that talk to the
    /// guest through forwarded ports).
    pub fn spawn(&self, script: &str, opts: RunOpts) -> Result<Running> {
        run::spawn(self, script, opts)
    }
}
