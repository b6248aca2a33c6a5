//! The Linux kernel's NVMe/TCP host against the engine: `nvme-cli` and `nvme-tcp.ko` in a QEMU
//! guest (crates/testvm; Debian's 6.1 kernel under TCG) discover the engine's subsystem,
//! connect with and without header and data digests and two I/O queues, identify the
//! controller and namespace, write and read with O_DIRECT, put ext4 on the namespace and check
//! files across a remount and a reconnect, then exercise reservations between two hosts
//! (a second `nvme connect` with another host NQN and host ID): the holder of a
//! write-exclusive reservation writes, the other host reads but gets a reservation conflict
//! on writes until the reservation is released. The host then checks what reached the backing
//! file: the O_DIRECT region and the reservation test block byte for byte, every file
//! extracted with `debugfs`, and `e2fsck -fn`.

mod common;

use common::{Engine, TempDir, require_tool, run};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const NQN: &str = "nqn.2024-01.io.ballast:vol";
/// The second host's identity.
const H2ID: &str = "5c1e1b2a-7a47-4c6e-9d0c-2f4e8a1b3c5d";
/// MiB offset and length of the region written with O_DIRECT, beyond the file system.
const RAW_AT_MIB: u64 = 224;
const RAW_MIB: u64 = 8;
/// MiB offset of the 4 KiB block the reservation test writes.
const RESV_AT_MIB: u64 = 200;

/// The script the guest runs. Lines starting `GUEST ` are checked by the host.
const SCRIPT: &str = r#"
set -eu -o pipefail
A=10.0.2.2
P=@PORT@
NQN=@NQN@
H2ID=@H2ID@
H2NQN=nqn.2014-08.org.nvmexpress:uuid:$H2ID
say() { echo "GUEST $*"; }
waitfor() {
    i=0
    while [ ! -e "$1" ]; do
        i=$((i + 1))
        if [ $i -gt 300 ]; then echo "timed out waiting for $1"; ls /dev /sys/block; exit 1; fi
        sleep 0.1
    done
}
waitgone() {
    i=0
    while [ -e "$1" ]; do
        i=$((i + 1))
        if [ $i -gt 300 ]; then echo "$1 did not go away"; exit 1; fi
        sleep 0.1
    done
}
say hostnqn $(cat /etc/nvme/hostnqn)

nvme discover -t tcp -a $A -s $P >/tmp/disc
sed 's/^/GUEST disc /' /tmp/disc

nvme connect -t tcp -a $A -s $P -n $NQN -i 1 -W 1 | sed 's/^/GUEST connect /'
waitfor /dev/nvme0n1
nvme list | sed 's/^/GUEST list /'
nvme id-ctrl /dev/nvme0 | grep -E '^(mn|nn|subnqn|cntrltype|mdts|ioccsz|oncs|icdoff|vwc) ' | sed 's/^/GUEST idctrl /'
nvme id-ns /dev/nvme0n1 | grep -E '^(nsze|ncap|nmic|rescap|anagrpid) ' | sed 's/^/GUEST idns /'
say ioqueues $(ls -d /sys/block/nvme0c0n1/mq/* 2>/dev/null | wc -l)
say size $(blockdev --getsize64 /dev/nvme0n1)
BS=$(blockdev --getss /dev/nvme0n1)
say bs $BS

# O_DIRECT writes (flushed) beyond the file system, read back with O_DIRECT.
dd if=/dev/urandom of=/tmp/pattern bs=1M count=@RAW_MIB@ 2>/dev/null
dd if=/tmp/pattern of=/dev/nvme0n1 bs=1M seek=@RAW_AT@ oflag=direct conv=fsync 2>/dev/null
dd if=/dev/nvme0n1 of=/tmp/back bs=1M skip=@RAW_AT@ count=@RAW_MIB@ iflag=direct 2>/dev/null
say raw-written $(sha256sum </tmp/pattern | cut -d' ' -f1)
say raw-read $(sha256sum </tmp/back | cut -d' ' -f1)

# ext4 on the first 192 MiB (no discard: the regions above must survive).
mkfs.ext4 -q -F -E nodiscard -b 4096 /dev/nvme0n1 192M
mkdir -p /mnt
mount -t ext4 /dev/nvme0n1 /mnt
mkdir /mnt/dir
for i in 1 2 3 4; do
    dd if=/dev/urandom of=/mnt/dir/f$i bs=64k count=$((i * 40)) 2>/dev/null
done
dd if=/dev/urandom of=/mnt/small bs=1 count=4097 2>/dev/null
(cd /mnt && sha256sum dir/f1 dir/f2 dir/f3 dir/f4 small) >/tmp/sums
sed 's/^/GUEST sum /' /tmp/sums
sync
umount /mnt
echo 3 >/proc/sys/vm/drop_caches
mount -t ext4 /dev/nvme0n1 /mnt
(cd /mnt && sha256sum -c /tmp/sums) | sed 's/^/GUEST remount /'
umount /mnt

# Disconnect; reconnect with header and data digests.
nvme disconnect -n $NQN | sed 's/^/GUEST disconnect /'
waitgone /dev/nvme0n1
nvme connect -t tcp -a $A -s $P -n $NQN -i 1 -W 1 --hdr-digest --data-digest | sed 's/^/GUEST connect /'
waitfor /dev/nvme0n1
mount -t ext4 /dev/nvme0n1 /mnt
(cd /mnt && sha256sum -c /tmp/sums) | sed 's/^/GUEST reconnect /'
dd if=/dev/nvme0n1 of=/tmp/back2 bs=1M skip=@RAW_AT@ count=@RAW_MIB@ iflag=direct 2>/dev/null
say raw-reread $(sha256sum </tmp/back2 | cut -d' ' -f1)
umount /mnt

# Reservations: host 1 (nvme0) and a second host (nvme1) on the same subsystem.
LBA=$((@RESV_AT@ * 1048576 / BS))
NLB=$((4096 / BS - 1))
dd if=/dev/urandom of=/tmp/blk1 bs=4096 count=1 2>/dev/null
dd if=/dev/urandom of=/tmp/blk2 bs=4096 count=1 2>/dev/null
say blk1 $(sha256sum </tmp/blk1 | cut -d' ' -f1)
say blk2 $(sha256sum </tmp/blk2 | cut -d' ' -f1)
wr() { nvme io-passthru /dev/$1 -n 1 -o 1 -l 4096 -w -i $2 -4 $LBA -6 $NLB >/tmp/out 2>&1; }
rd() { nvme io-passthru /dev/$1 -n 1 -o 2 -l 4096 -r -b -4 $LBA -6 $NLB >$2 2>/tmp/err; }
# nvme-cli 2.3 refuses a second controller to the same address even for another host NQN,
# so the second host's controller is created through the kernel's fabrics device directly.
exec 3<>/dev/nvme-fabrics
echo "nqn=$NQN,transport=tcp,traddr=$A,trsvcid=$P,hostnqn=$H2NQN,hostid=$H2ID,nr_io_queues=1,duplicate_connect" >&3
read -r created <&3
exec 3>&-
say connect2 $created
waitfor /dev/nvme1
waitfor /sys/block/nvme0c1n1
nvme resv-register /dev/nvme0 -n 1 -k 0xaa -r 0 | sed 's/^/GUEST reg1 /'
nvme resv-register /dev/nvme1 -n 1 -k 0xbb -r 0 | sed 's/^/GUEST reg2 /'
if nvme resv-acquire /dev/nvme1 -n 1 -c 0xaa -t 1 -a 0 >/tmp/out 2>&1; then say acq2-badkey ok; else say acq2-badkey refused; fi
nvme resv-acquire /dev/nvme0 -n 1 -c 0xaa -t 1 -a 0 | sed 's/^/GUEST acq1 /'
nvme resv-report /dev/nvme1 -n 1 -e | sed 's/^/GUEST held /'
if wr nvme1 /tmp/blk2; then say h2-write-held ok; else say h2-write-held refused; fi
sed 's/^/GUEST h2w /' /tmp/out
if rd nvme1 /tmp/r2; then say h2-read ok; else say h2-read failed; cat /tmp/err; fi
if wr nvme0 /tmp/blk1; then say h1-write ok; else say h1-write refused; cat /tmp/out; fi
rd nvme1 /tmp/r2
say h2-read-after $(sha256sum </tmp/r2 | cut -d' ' -f1)
nvme resv-release /dev/nvme0 -n 1 -c 0xaa -t 1 -a 0 | sed 's/^/GUEST rel1 /'
nvme resv-report /dev/nvme0 -n 1 -e | sed 's/^/GUEST released /'
if wr nvme1 /tmp/blk2; then say h2-write-free ok; else say h2-write-free refused; cat /tmp/out; fi
rd nvme0 /tmp/r1
say h1-read-after $(sha256sum </tmp/r1 | cut -d' ' -f1)
nvme disconnect -d nvme1 | sed 's/^/GUEST disconnect /'
nvme disconnect -n $NQN | sed 's/^/GUEST disconnect /'
waitgone /dev/nvme0n1
say done
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

/// The value of `key : value` in lines (nvme-cli's id-ctrl / id-ns / resv-report format).
fn field<'a>(lines: &[&'a str], prefix: &str, key: &str) -> Option<&'a str> {
    lines.iter().find_map(|l| {
        let rest = l.strip_prefix(prefix)?;
        let (k, v) = rest.split_once(':')?;
        (k.trim() == key).then(|| v.trim())
    })
}

#[test]
fn guest_kernel_nvme_tcp_host() {
    let guest = testvm::Guest::ensure().unwrap_or_else(|e| {
        panic!("cannot build the test guest: {e}\n(`cargo xtask vm build` builds it by hand)")
    });
    let dir = TempDir::new("guest-nvme");
    let img = dir.join("disk.img");
    let dev = format!("vol=uring://{}?size=256MiB", img.display());
    let mut engine = Engine::start(&["--cores", "2", "--device", &dev, "--nvmf-export", "vol"]);
    let addr = engine.nvmf_addr.expect("NVMe/TCP address");
    assert_eq!(engine.nvmf_uris, vec![format!("nvmf://{addr}/{NQN}")]);
    let script = SCRIPT
        .replace("@PORT@", &addr.port().to_string())
        .replace("@NQN@", NQN)
        .replace("@H2ID@", H2ID)
        .replace("@RAW_AT@", &RAW_AT_MIB.to_string())
        .replace("@RAW_MIB@", &RAW_MIB.to_string())
        .replace("@RESV_AT@", &RESV_AT_MIB.to_string());
    let out = guest
        .run(
            &script,
            testvm::RunOpts::default().timeout(Duration::from_secs(480)),
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
    let has = |key: &str| lines.contains(&key);

    // Discovery lists the subsystem at the listener's address.
    for (k, v) in [
        ("trtype", "tcp".to_string()),
        ("adrfam", "ipv4".to_string()),
        ("subnqn", NQN.to_string()),
        ("trsvcid", addr.port().to_string()),
        ("traddr", addr.ip().to_string()),
    ] {
        assert_eq!(
            field(&lines, "disc ", k),
            Some(v.as_str()),
            "discovery {k}\n{}",
            report()
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("list ") && l.contains("Ballast")),
        "nvme list shows no Ballast controller\n{}",
        report()
    );
    assert_eq!(field(&lines, "idctrl ", "subnqn"), Some(NQN));
    assert_eq!(field(&lines, "idctrl ", "mn"), Some("Ballast NVMe/TCP"));
    assert_eq!(field(&lines, "idctrl ", "nn"), Some("1024"));
    assert_eq!(field(&lines, "idctrl ", "icdoff"), Some("0"));
    assert_eq!(value("size "), (256u64 << 20).to_string(), "{}", report());
    let bs: u64 = value("bs ").parse().expect("block size");
    let nsze = field(&lines, "idns ", "nsze").expect("nsze");
    assert_eq!(
        u64::from_str_radix(nsze.trim_start_matches("0x"), 16).ok(),
        Some((256u64 << 20) / bs),
        "nsze {nsze}"
    );
    assert_eq!(value("ioqueues "), "2", "I/O queues\n{}", report());

    // Data through the kernel's block layer.
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

    // Reservations.
    assert!(
        has("acq2-badkey refused"),
        "acquire with another host's key\n{}",
        report()
    );
    assert_eq!(field(&lines, "held ", "rtype"), Some("1"), "{}", report());
    assert_eq!(field(&lines, "held ", "regctl"), Some("2"), "{}", report());
    assert!(has("h2-write-held refused"), "{}", report());
    let conflict = lines
        .iter()
        .filter_map(|l| l.strip_prefix("h2w "))
        .any(|l| {
            l.to_ascii_lowercase().contains("reservation")
                && l.to_ascii_lowercase().contains("conflict")
        });
    assert!(conflict, "no reservation conflict reported\n{}", report());
    assert!(has("h2-read ok"), "{}", report());
    assert!(has("h1-write ok"), "{}", report());
    let blk1 = value("blk1 ");
    let blk2 = value("blk2 ");
    assert_eq!(value("h2-read-after "), blk1, "host 2 reads host 1's write");
    assert_eq!(
        field(&lines, "released ", "rtype"),
        Some("0"),
        "{}",
        report()
    );
    assert!(has("h2-write-free ok"), "{}", report());
    assert_eq!(value("h1-read-after "), blk2, "host 1 reads host 2's write");
    assert!(has("done"), "{}", report());
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
    let block = &data[(RESV_AT_MIB << 20) as usize..((RESV_AT_MIB << 20) + 4096) as usize];
    assert_eq!(
        sha256_of(&dir, "block", block),
        blk2,
        "reservation test block"
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
