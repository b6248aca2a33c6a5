//! Building the guest: Debian packages fetched with `apt-get download`, unpacked with
//! `dpkg -x` (nothing is installed on the host), a kernel and an initramfs assembled from
//! them, and QEMU unpacked beside them.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cpio;
use crate::modinfo;
use crate::{Error, Result, log};

/// Packages unpacked for the host side: the emulator (with the library packages it needs
/// that the host lacks), its TCG accelerator module (in -common) and firmware. The other
/// packages' own dependencies serve QEMU modules we do not load, so they are not fetched.
pub(crate) const HOST_PACKAGES: &[&str] = &["qemu-system-x86"];
pub(crate) const HOST_EXTRA: &[&str] = &["qemu-system-common", "qemu-system-data", "seabios"];

/// Userland packages for the guest (the kernel package is resolved at build time).
pub(crate) const GUEST_PACKAGES: &[&str] = &[
    "busybox-static",
    "nbd-client",
    "nvme-cli",
    "open-iscsi",
    "e2fsprogs",
];

/// Kernel modules loaded at boot, with everything they depend on.
pub(crate) const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "configfs",
    "crc32c_generic",
    "crc32c-intel",
    "libcrc32c",
    "crc16",
    "ext4",
    "nbd",
    "loop",
    "nvme-core",
    "nvme-fabrics",
    "nvme-tcp",
    "nvmet",
    "nvmet-tcp",
    "scsi_mod",
    "sd_mod",
    "scsi_transport_iscsi",
    "libiscsi",
    "libiscsi_tcp",
    "iscsi_tcp",
];

/// Guest binaries (found in the unpacked packages) and the links made to them, all in
/// `/usr/sbin`.
pub(crate) const BINARIES: &[(&str, &[&str])] = &[
    ("nbd-client", &[]),
    ("nvme", &[]),
    ("iscsiadm", &[]),
    ("iscsid", &[]),
    ("mke2fs", &["mkfs.ext4", "mkfs.ext2"]),
    ("e2fsck", &["fsck.ext4", "fsck.ext2"]),
    ("tune2fs", &[]),
    ("dumpe2fs", &[]),
    ("resize2fs", &[]),
];

/// Configuration files copied from the unpacked packages when present.
const ETC: &[&str] = &["etc/mke2fs.conf", "etc/iscsi", "etc/nvme"];

pub(crate) const INIT: &str = include_str!("init.sh");

const MULTIARCH: &str = "x86_64-linux-gnu";

/// Runs `c`, returning stdout; the error names `what` and carries stderr.
pub(crate) fn checked(c: &mut Command, what: &str) -> Result<String> {
    let out = c
        .output()
        .map_err(|e| Error::new(format!("{what}: cannot start: {e}")))?;
    if !out.status.success() {
        return Err(Error::new(format!(
            "{what}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// apt, used read-only: package lists, downloads. `apt-get update` runs at most once, and
/// only when a look-up or download failed.
struct Apt {
    updated: Cell<bool>,
}

impl Apt {
    fn update(&self) -> Result<bool> {
        if self.updated.replace(true) {
            return Ok(false);
        }
        log("apt-get update (package lists missing or stale)");
        let mut c = if is_root() {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.args(["-n", "apt-get"]);
            c
        };
        c.args(["update", "-qq"]);
        checked(&mut c, "apt-get update")?;
        Ok(true)
    }

    /// Runs `make()`'s command; on failure runs `apt-get update` once and retries.
    fn retry(&self, what: &str, make: impl Fn() -> Command) -> Result<String> {
        match checked(&mut make(), what) {
            Ok(s) => Ok(s),
            Err(e) => {
                if self.update()? {
                    checked(&mut make(), what)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The newest `linux-image-*-amd64` package, as `linux-image-amd64` depends on it.
    fn kernel_package(&self) -> Result<String> {
        let deps = self.depends(&["linux-image-amd64"])?;
        deps.get("linux-image-amd64")
            .into_iter()
            .flatten()
            .flatten()
            .find(|d| d.starts_with("linux-image-") && d.ends_with("-amd64"))
            .cloned()
            .ok_or_else(|| {
                Error::new("apt-cache depends linux-image-amd64 names no linux-image-*-amd64")
            })
    }

    /// Direct dependencies (Depends, Pre-Depends) of each package, as groups of
    /// alternatives; virtual packages are left out.
    fn depends(&self, pkgs: &[&str]) -> Result<BTreeMap<String, Vec<Vec<String>>>> {
        let text = self.retry(&format!("apt-cache depends {}", pkgs.join(" ")), || {
            let mut c = Command::new("apt-cache");
            c.args(["depends", "--no-recommends", "--no-suggests"])
                .args(["--no-conflicts", "--no-breaks", "--no-replaces"])
                .args(["--no-enhances"])
                .args(pkgs);
            c
        })?;
        let mut out: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
        let mut current: Option<String> = None;
        let mut open_group = false;
        for line in text.lines() {
            if !line.starts_with(' ') {
                current = Some(line.trim().to_string());
                out.entry(line.trim().to_string()).or_default();
                open_group = false;
                continue;
            }
            let t = line.trim();
            let (alt, rest) = match t.strip_prefix('|') {
                Some(r) => (true, r),
                None => (false, t),
            };
            let Some(name) = rest
                .strip_prefix("Depends: ")
                .or_else(|| rest.strip_prefix("PreDepends: "))
            else {
                continue;
            };
            let Some(cur) = &current else { continue };
            let groups = out.entry(cur.clone()).or_default();
            let name = name.trim();
            if !open_group || groups.is_empty() {
                groups.push(Vec::new());
            }
            if !name.starts_with('<') {
                groups
                    .last_mut()
                    .expect("group pushed")
                    .push(name.to_string());
            }
            open_group = alt;
        }
        Ok(out)
    }

    /// `apt-get download` of `pkgs` into `dir`.
    fn download(&self, dir: &Path, pkgs: &[String]) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::new(format!("mkdir {dir:?}: {e}")))?;
        log(&format!("apt-get download {}", pkgs.join(" ")));
        self.retry(&format!("apt-get download {}", pkgs.join(" ")), || {
            let mut c = Command::new("apt-get");
            c.current_dir(dir).arg("download").arg("-qq");
            if is_root() {
                // Files in our own directory: no need to drop to the _apt user.
                c.args(["-o", "APT::Sandbox::User=root"]);
            }
            c.args(pkgs);
            c
        })?;
        Ok(())
    }
}

/// Which of `pkgs` dpkg reports as installed on the host.
fn host_installed(pkgs: &BTreeSet<String>) -> BTreeSet<String> {
    if pkgs.is_empty() {
        return BTreeSet::new();
    }
    // Unknown names make dpkg-query exit 1 but it still reports the others.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${db:Status-Abbrev}\n"])
        .args(pkgs)
        .output();
    let Ok(out) = out else {
        return BTreeSet::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (p, st) = l.split_once(' ')?;
            st.starts_with("ii")
                .then(|| p.split(':').next().unwrap_or(p).to_string())
        })
        .collect()
}

/// `pkgs` plus the library packages (`lib*`) they need, transitively, that the host does
/// not have installed: the host's own libraries are used for the rest.
fn with_missing_libs(apt: &Apt, pkgs: &[&str]) -> Result<Vec<String>> {
    let mut all: BTreeSet<String> = pkgs.iter().map(|s| s.to_string()).collect();
    let mut frontier: Vec<String> = all.iter().cloned().collect();
    while !frontier.is_empty() {
        let names: Vec<&str> = frontier.iter().map(String::as_str).collect();
        let deps = apt.depends(&names)?;
        let mut cand = BTreeSet::new();
        for groups in deps.values() {
            for g in groups {
                cand.extend(g.iter().cloned());
            }
        }
        let installed = host_installed(&cand);
        let mut next = Vec::new();
        for groups in deps.values() {
            for g in groups {
                if g.iter().any(|p| installed.contains(p) || all.contains(p)) {
                    continue;
                }
                // The first alternative that is a library package.
                if let Some(p) = g.iter().find(|p| p.starts_with("lib")) {
                    all.insert(p.clone());
                    next.push(p.clone());
                }
            }
        }
        frontier = next;
    }
    Ok(all.into_iter().collect())
}

/// `dpkg -x` of every `.deb` in `debs` into `root`.
fn extract_all(debs: &Path, root: &Path) -> Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(debs)
        .map_err(|e| Error::new(format!("reading {}: {e}", debs.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::new(format!(
            "apt-get download left no .deb files in {}",
            debs.display()
        )));
    }
    for f in files {
        let mut c = Command::new("dpkg");
        c.arg("-x").arg(&f).arg(root);
        checked(&mut c, &format!("dpkg -x {}", f.display()))?;
    }
    Ok(())
}

/// `LD_LIBRARY_PATH` for binaries unpacked under `root`.
pub(crate) fn lib_path(root: &Path) -> String {
    [
        format!("usr/lib/{MULTIARCH}"),
        format!("lib/{MULTIARCH}"),
        "usr/lib".into(),
        "lib".into(),
    ]
    .iter()
    .map(|d| root.join(d).display().to_string())
    .collect::<Vec<_>>()
    .join(":")
}

/// One line of `ldd`: the name asked for and where it resolved (`None`: not found).
#[derive(Debug)]
struct Needed {
    name: String,
    path: Option<PathBuf>,
}

/// The shared objects `bin` loads (from `ldd`, with `libs` as `LD_LIBRARY_PATH`); empty for
/// static binaries. The dynamic loader comes back with its absolute path as its name.
fn ldd(bin: &Path, libs: &str) -> Result<Vec<Needed>> {
    let out = Command::new("ldd")
        .arg(bin)
        .env("LD_LIBRARY_PATH", libs)
        .output()
        .map_err(|e| Error::new(format!("ldd {}: cannot start: {e}", bin.display())))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if text.contains("not a dynamic executable") || err.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        return Err(Error::new(format!(
            "ldd {}: {}: {}",
            bin.display(),
            out.status,
            err.trim()
        )));
    }
    let mut v = Vec::new();
    for l in text.lines() {
        let l = l.trim();
        if let Some((name, rest)) = l.split_once(" => ") {
            let rest = rest.trim();
            let path = if rest.starts_with("not found") {
                None
            } else {
                rest.split_whitespace().next().map(PathBuf::from)
            };
            v.push(Needed {
                name: name.to_string(),
                path,
            });
        } else if let Some(p) = l.split_whitespace().next()
            && p.starts_with('/')
        {
            v.push(Needed {
                name: p.to_string(),
                path: Some(PathBuf::from(p)),
            });
        }
    }
    Ok(v)
}

/// Fails naming every shared library `bin` needs that neither `libs` nor the host has.
fn check_libs(bin: &Path, libs: &str, pkgs: &[String]) -> Result<()> {
    let missing: Vec<String> = ldd(bin, libs)?
        .into_iter()
        .filter(|n| n.path.is_none())
        .map(|n| n.name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::new(format!(
            "{} needs {} which neither the host nor the unpacked packages ({}) provide",
            bin.display(),
            missing.join(", "),
            pkgs.join(" ")
        )))
    }
}

/// `rel` inside `root` with symbolic links resolved inside `root` (the packages' absolute
/// links point into their own tree, not the host's).
fn resolve_in(root: &Path, rel: &str) -> Option<PathBuf> {
    let mut p = root.join(rel.trim_start_matches('/'));
    for _ in 0..16 {
        let md = std::fs::symlink_metadata(&p).ok()?;
        if !md.file_type().is_symlink() {
            return Some(p);
        }
        let target = std::fs::read_link(&p).ok()?;
        p = if target.is_absolute() {
            root.join(target.strip_prefix("/").ok()?)
        } else {
            p.parent()?.join(target)
        };
    }
    None
}

/// Finds binary `name` in the usual directories of an unpacked tree.
fn find_binary(root: &Path, name: &str) -> Option<PathBuf> {
    ["usr/sbin", "sbin", "usr/bin", "bin"]
        .iter()
        .find_map(|d| resolve_in(root, &format!("{d}/{name}")).filter(|p| p.is_file()))
}

fn read(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).map_err(|e| Error::new(format!("reading {}: {e}", p.display())))
}

fn io_err(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::new(format!("{what}: {e}"))
}

/// Adds a file or directory tree from `src` at `dst` (regular files, links kept as links).
fn add_tree(w: &mut cpio::Writer<impl std::io::Write>, src: &Path, dst: &str) -> Result<()> {
    let md = std::fs::symlink_metadata(src)
        .map_err(|e| Error::new(format!("{}: {e}", src.display())))?;
    let ft = md.file_type();
    let e = io_err("writing the initramfs");
    if ft.is_dir() {
        w.dir(dst, 0o755).map_err(&e)?;
        let mut ents: Vec<PathBuf> = std::fs::read_dir(src)
            .map_err(|x| Error::new(format!("{}: {x}", src.display())))?
            .filter_map(|x| x.ok().map(|x| x.path()))
            .collect();
        ents.sort();
        for p in ents {
            let n = p
                .file_name()
                .expect("entry name")
                .to_string_lossy()
                .into_owned();
            add_tree(w, &p, &format!("{dst}/{n}"))?;
        }
    } else if ft.is_symlink() {
        let t = std::fs::read_link(src).map_err(|x| Error::new(format!("{src:?}: {x}")))?;
        w.symlink(dst, &t.to_string_lossy()).map_err(&e)?;
    } else if ft.is_file() {
        use std::os::unix::fs::PermissionsExt;
        w.file(dst, md.permissions().mode(), &read(src)?)
            .map_err(&e)?;
    }
    Ok(())
}

/// What a build produced, recorded in the image directory's `guest.txt`.
#[derive(Debug, Clone)]
pub(crate) struct Built {
    pub kernel_version: String,
    pub packages: Vec<String>,
    pub initrd_bytes: u64,
}

/// The uncompressed ELF kernel inside a bzImage (Debian compresses with xz): QEMU boots it
/// through its PVH entry point, which saves the several seconds the kernel's own
/// decompressor takes under TCG.
fn unpack_vmlinux(bzimage: &Path, dst: &Path) -> Result<()> {
    const XZ_MAGIC: &[u8] = b"\xfd7zXZ\0";
    let data = read(bzimage)?;
    let at = data
        .windows(XZ_MAGIC.len())
        .position(|w| w == XZ_MAGIC)
        .ok_or_else(|| Error::new("no xz stream in the kernel image"))?;
    let xz = dst.with_extension("xz");
    std::fs::write(&xz, &data[at..]).map_err(io_err("writing the kernel's xz stream"))?;
    let out = std::fs::File::create(dst).map_err(io_err("creating vmlinux"))?;
    // The stream is followed by the rest of the bzImage: decode only the first stream.
    let st = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .arg(&xz)
        .stdout(out)
        .status();
    let _ = std::fs::remove_file(&xz);
    match st {
        Ok(s) if s.success() => {}
        Ok(s) => return Err(Error::new(format!("xz -d: {s}"))),
        Err(x) => return Err(Error::new(format!("xz: cannot start: {x}"))),
    }
    let head = read(dst)?;
    if !head.starts_with(b"\x7fELF") {
        return Err(Error::new("the kernel's xz stream is not an ELF image"));
    }
    Ok(())
}

/// Builds a complete image in `out` (which must not exist): `vmlinuz`, `initrd.cpio`, and
/// QEMU unpacked in `host/`.
pub(crate) fn build(out: &Path) -> Result<Built> {
    let apt = Apt {
        updated: Cell::new(false),
    };
    match build_with(&apt, out) {
        Ok(b) => Ok(b),
        Err(first) => {
            // Stale package lists can name versions the mirror no longer has: refresh them
            // (once) and start over.
            match apt.update() {
                Ok(true) => {
                    log(&format!("retrying after apt-get update: {first}"));
                    let _ = std::fs::remove_dir_all(out);
                    build_with(&apt, out)
                }
                Ok(false) => Err(first),
                Err(u) => Err(Error::new(format!("{first} (then {u})"))),
            }
        }
    }
}

fn build_with(apt: &Apt, out: &Path) -> Result<Built> {
    let e = |what: String| move |x: std::io::Error| Error::new(format!("{what}: {x}"));
    std::fs::create_dir_all(out).map_err(e(format!("mkdir {}", out.display())))?;
    let kernel_pkg = apt.kernel_package()?;
    let kver = kernel_pkg
        .strip_prefix("linux-image-")
        .expect("checked prefix")
        .to_string();
    log(&format!("kernel {kernel_pkg}"));

    // Host side: QEMU and the libraries the host lacks.
    let mut host_pkgs = with_missing_libs(apt, HOST_PACKAGES)?;
    host_pkgs.extend(HOST_EXTRA.iter().map(|s| s.to_string()));
    let host = out.join("host");
    apt.download(&out.join("debs-host"), &host_pkgs)?;
    log("unpacking QEMU");
    extract_all(&out.join("debs-host"), &host)?;
    let qemu = host.join("usr/bin/qemu-system-x86_64");
    check_libs(&qemu, &lib_path(&host), &host_pkgs)?;
    let tcg = host.join(format!("usr/lib/{MULTIARCH}/qemu/accel-tcg-x86_64.so"));
    if tcg.exists() {
        check_libs(&tcg, &lib_path(&host), &host_pkgs)?;
    }

    // Guest side.
    let mut guest_pkgs = with_missing_libs(apt, GUEST_PACKAGES)?;
    let mut dl = guest_pkgs.clone();
    dl.push(kernel_pkg.clone());
    let groot = out.join("guest-root");
    apt.download(&out.join("debs-guest"), &dl)?;
    log(&format!("unpacking {kernel_pkg} and the guest tools"));
    extract_all(&out.join("debs-guest"), &groot)?;
    guest_pkgs.push(kernel_pkg.clone());

    let vmlinuz = groot.join(format!("boot/vmlinuz-{kver}"));
    std::fs::copy(&vmlinuz, out.join("vmlinuz")).map_err(e(format!(
        "copying {} (is {kernel_pkg} unpacked?)",
        vmlinuz.display()
    )))?;
    match unpack_vmlinux(&out.join("vmlinuz"), &out.join("vmlinux")) {
        Ok(()) => log("kernel unpacked to vmlinux (boots without decompressing itself)"),
        Err(x) => {
            let _ = std::fs::remove_file(out.join("vmlinux"));
            log(&format!("booting the compressed vmlinuz: {x}"));
        }
    }

    log("assembling the initramfs");
    let initrd = out.join("initrd.cpio");
    let f = std::fs::File::create(&initrd).map_err(e(format!("creating {}", initrd.display())))?;
    let mut w = cpio::Writer::new(BufWriter::new(f));
    initramfs(&mut w, &groot, &kver, &guest_pkgs)?;
    let initrd_bytes = w.len();
    w.finish().map_err(e("writing the initramfs".into()))?;

    for d in ["guest-root", "debs-host", "debs-guest"] {
        let p = out.join(d);
        std::fs::remove_dir_all(&p).map_err(e(format!("removing {}", p.display())))?;
    }
    let mut packages = host_pkgs;
    packages.extend(guest_pkgs);
    Ok(Built {
        kernel_version: kver,
        packages,
        initrd_bytes,
    })
}

/// The initramfs contents, from the unpacked guest packages in `groot`.
fn initramfs(
    w: &mut cpio::Writer<impl std::io::Write>,
    groot: &Path,
    kver: &str,
    pkgs: &[String],
) -> Result<()> {
    let e = io_err("writing the initramfs");
    for d in [
        "proc", "sys", "dev", "tmp", "run", "mnt", "root", "etc", "var/lib", "var/lock",
    ] {
        w.dir(d, 0o755).map_err(&e)?;
    }
    w.symlink("var/run", "../run").map_err(&e)?;
    // The kernel opens /dev/console for init before devtmpfs is mounted.
    w.chardev("dev/console", 0o600, 5, 1).map_err(&e)?;
    w.file("init", 0o755, INIT.as_bytes()).map_err(&e)?;

    // busybox with a link per applet.
    let bb = find_binary(groot, "busybox")
        .ok_or_else(|| Error::new("busybox-static unpacked no busybox binary"))?;
    w.file("bin/busybox", 0o755, &read(&bb)?).map_err(&e)?;
    let list = checked(Command::new(&bb).arg("--list"), "busybox --list")?;
    for applet in list.lines().map(str::trim).filter(|a| !a.is_empty()) {
        if applet != "busybox" && !applet.contains('/') {
            w.symlink(&format!("bin/{applet}"), "busybox").map_err(&e)?;
        }
    }

    // Dynamic binaries, their libraries and the loader.
    let libs = lib_path(groot);
    let mut needed: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (name, links) in BINARIES {
        let bin = find_binary(groot, name).ok_or_else(|| {
            Error::new(format!(
                "no {name} in the unpacked packages ({})",
                pkgs.join(" ")
            ))
        })?;
        check_libs(&bin, &libs, pkgs)?;
        for n in ldd(&bin, &libs)? {
            if let Some(p) = n.path {
                needed.insert(n.name, p);
            }
        }
        w.file(&format!("usr/sbin/{name}"), 0o755, &read(&bin)?)
            .map_err(&e)?;
        for l in *links {
            w.symlink(&format!("usr/sbin/{l}"), name).map_err(&e)?;
        }
    }
    for (name, path) in &needed {
        let dst = if name.starts_with('/') {
            name.trim_start_matches('/').to_string()
        } else {
            format!("lib/{MULTIARCH}/{name}")
        };
        if !w.contains(&dst) {
            w.file(&dst, 0o755, &read(path)?).map_err(&e)?;
        }
    }

    // Kernel modules in load order.
    let mdir = groot.join(format!("lib/modules/{kver}"));
    let index = modinfo::index(&mdir)?;
    let builtin = std::fs::read_to_string(mdir.join("modules.builtin"))
        .map(|t| modinfo::builtin(&t))
        .unwrap_or_default();
    let order = modinfo::load_order(&index, &builtin, MODULES)?;
    let mut list = String::new();
    for p in &order {
        let rel = p
            .strip_prefix(&mdir)
            .expect("module under its directory")
            .to_string_lossy()
            .into_owned();
        w.file(&format!("lib/modules/{kver}/{rel}"), 0o644, &read(p)?)
            .map_err(&e)?;
        list.push_str(&rel);
        list.push('\n');
    }
    w.file("etc/testvm/modules", 0o644, list.as_bytes())
        .map_err(&e)?;

    // Configuration.
    for rel in ETC {
        let src = groot.join(rel);
        if src.exists() {
            add_tree(w, &src, rel)?;
        }
    }
    w.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
        .map_err(&e)?;
    w.file("etc/group", 0o644, b"root:x:0:\n").map_err(&e)?;
    w.file("etc/hosts", 0o644, b"127.0.0.1 localhost testvm\n")
        .map_err(&e)?;
    Ok(())
}
