//! The Linux kernel's NBD client against the engine: `nbd-client` and `nbd.ko` in a QEMU
//! guest (crates/testvm; Debian's 6.1 kernel under TCG) attach a file-backed export as
//! `/dev/nbd0`, write and read it with O_DIRECT, put ext4 on it, and check files across
//! remounts and reconnects. The host then checks what reached the backing file: the
//! O_DIRECT region byte for byte, every file extracted with `debugfs`, and `e2fsck -fn`.
//!
//! The guest image is built on first use (about 90 MB of Debian packages, a minute or
//! two); `cargo xtask vm build` builds it ahead.

mod common;

use common::{Engine, TempDir, require_tool, run};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// MiB offset and length of the region written with O_DIRECT, beyond the file system.
const RAW_AT_MIB: u64 = 224;
const RAW_MIB: u64 = 8;

/// The script the guest runs. `@PORT@` is the engine's NBD port (the guest reaches the
/// host's 127.0.0.1 as 10.0.2.2). Lines starting `GUEST ` are checked by the host.
const SCRIPT: &str = r#"
set -eu -o pipefail
attach() { nbd-client 10.0.2.2 @PORT@ /dev/nbd0 -N f -b 4096; }
attach
echo "GUEST size $(blockdev --getsize64 /dev/nbd0)"

# O_DIRECT writes (flushed) beyond the file system, read back with O_DIRECT.
dd if=/dev/urandom of=/tmp/pattern bs=1M count=@RAW_MIB@ 2>/dev/null
dd if=/tmp/pattern of=/dev/nbd0 bs=1M seek=@RAW_AT@ oflag=direct conv=fsync 2>/dev/null
dd if=/dev/nbd0 of=/tmp/back bs=1M skip=@RAW_AT@ count=@RAW_MIB@ iflag=direct 2>/dev/null
echo "GUEST raw-written $(sha256sum </tmp/pattern | cut -d' ' -f1)"
echo "GUEST raw-read $(sha256sum </tmp/back | cut -d' ' -f1)"

# ext4 on the first 192 MiB (no discard: the raw region above must survive).
mkfs.ext4 -q -F -E nodiscard -b 4096 /dev/nbd0 192M
mkdir -p /mnt
mount -t ext4 /dev/nbd0 /mnt
mkdir /mnt/dir
for i in 1 2 3 4; do
    dd if=/dev/urandom of=/mnt/dir/f$i bs=64k count=$((i * 40)) 2>/dev/null
done
dd if=/dev/urandom of=/mnt/small bs=1 count=4097 2>/dev/null
(cd /mnt && sha256sum dir/f1 dir/f2 dir/f3 dir/f4 small) >/tmp/sums
sed 's/^/GUEST sum /' /tmp/sums
sync
umount /mnt

# Remount with the page cache dropped: the data comes back over NBD.
echo 3 >/proc/sys/vm/drop_caches
mount -t ext4 /dev/nbd0 /mnt
(cd /mnt && sha256sum -c /tmp/sums) | sed 's/^/GUEST remount /'
umount /mnt

# A new connection.
nbd-client -d /dev/nbd0
attach
mount -t ext4 /dev/nbd0 /mnt
(cd /mnt && sha256sum -c /tmp/sums) | sed 's/^/GUEST reconnect /'
dd if=/dev/nbd0 of=/tmp/back2 bs=1M skip=@RAW_AT@ count=@RAW_MIB@ iflag=direct 2>/dev/null
echo "GUEST raw-reread $(sha256sum </tmp/back2 | cut -d' ' -f1)"
umount /mnt
nbd-client -d /dev/nbd0
echo "GUEST done"
"#;

/// A tool from e2fsprogs (in /sbin, which the test's PATH may lack).
fn e2fs_tool(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/sbin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    require_tool(name)
}

/// `sha256sum` of `data`, through a file in `dir`.
fn sha256_of(dir: &TempDir, name: &str, data: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
    common::sha256(&p)
}

#[test]
fn guest_kernel_nbd_client_ext4_and_direct_io() {
    // The image first: building it may take minutes, the engine should not wait on that.
    let guest = testvm::Guest::ensure().unwrap_or_else(|e| {
        panic!("cannot build the test guest: {e}\n(`cargo xtask vm build` builds it by hand)")
    });
    let dir = TempDir::new("guest-nbd");
    let img = dir.join("disk.img");
    let dev = format!("f=uring://{}?size=256MiB", img.display());
    let mut engine = Engine::start(&["--device", &dev, "--export", "f"]);
    let script = SCRIPT
        .replace("@PORT@", &engine.nbd_addr.port().to_string())
        .replace("@RAW_AT@", &RAW_AT_MIB.to_string())
        .replace("@RAW_MIB@", &RAW_MIB.to_string());
    let out = guest
        .run(
            &script,
            testvm::RunOpts::default().timeout(Duration::from_secs(420)),
        )
        .unwrap_or_else(|e| panic!("cannot run the guest: {e}"));
    eprintln!(
        "guest: boot {:?}, whole run {:?}",
        out.boot.unwrap_or_default(),
        out.elapsed
    );
    let report = || {
        format!(
            "{}\n--- engine stderr ---\n{}",
            out.describe(),
            engine.stderr()
        )
    };
    assert!(out.success(), "{}", report());

    // What the guest reported.
    let lines: Vec<&str> = out
        .script_output()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("GUEST "))
        .collect();
    let value = |key: &str| -> String {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("the guest printed no {key:?} line\n{}", report()))
    };
    assert_eq!(value("size "), (256u64 << 20).to_string(), "{}", report());
    let raw = value("raw-written ");
    assert_eq!(raw.len(), 64, "not a SHA-256: {raw:?}");
    assert_eq!(value("raw-read "), raw, "O_DIRECT read-back differs");
    assert_eq!(
        value("raw-reread "),
        raw,
        "read-back after reconnect differs"
    );
    let sums: BTreeMap<String, String> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("sum "))
        .filter_map(|l| {
            let (h, f) = l.split_once("  ")?;
            Some((f.trim().to_string(), h.to_string()))
        })
        .collect();
    assert_eq!(sums.len(), 5, "file checksums: {sums:?}\n{}", report());
    for phase in ["remount ", "reconnect "] {
        let ok = lines
            .iter()
            .filter_map(|l| l.strip_prefix(phase))
            .filter(|l| l.ends_with(": OK"))
            .count();
        assert_eq!(ok, sums.len(), "{phase}verification\n{}", report());
    }
    assert!(lines.contains(&"done"), "{}", report());
    engine.assert_healthy();
    let (st, err) = engine.terminate(Duration::from_secs(30));
    assert!(st.success(), "engine exit {st}\n{err}");

    // What reached the backing file.
    let data = std::fs::read(&img).unwrap_or_else(|e| panic!("reading {}: {e}", img.display()));
    let region = &data[(RAW_AT_MIB << 20) as usize..((RAW_AT_MIB + RAW_MIB) << 20) as usize];
    assert_eq!(
        sha256_of(&dir, "region", region),
        raw,
        "the O_DIRECT region in the backing file differs from what the guest wrote"
    );
    let fsck = run(
        Command::new(e2fs_tool("e2fsck")).arg("-fn").arg(&img),
        Duration::from_secs(120),
    );
    fsck.assert_success();
    for (file, sum) in &sums {
        let dst = dir.join("extracted");
        let _ = std::fs::remove_file(&dst);
        let out = run(
            Command::new(e2fs_tool("debugfs"))
                .arg("-R")
                .arg(format!("dump /{file} {}", dst.display()))
                .arg(&img),
            Duration::from_secs(60),
        );
        out.assert_success();
        assert!(
            dst.is_file(),
            "debugfs did not extract /{file}: {}",
            out.describe()
        );
        assert_eq!(
            &common::sha256(&dst),
            sum,
            "/{file} read on the host differs from what the guest wrote"
        );
    }
}
