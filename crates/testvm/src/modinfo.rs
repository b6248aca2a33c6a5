//! Kernel module dependencies, read from each `.ko` file's `.modinfo` ELF section (the
//! host may lack `depmod`/`modinfo`, and a package's tree has no `modules.dep`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// A module name as the kernel compares them (`-` and `_` are the same).
pub fn normalize(name: &str) -> String {
    name.trim_end_matches(".ko").replace('-', "_")
}

/// The `key=value` strings of an ELF64 little-endian object's `.modinfo` section.
pub fn modinfo(elf: &[u8]) -> Option<Vec<(String, String)>> {
    let u16_at = |o: usize| -> Option<u64> {
        Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?) as u64)
    };
    let u32_at = |o: usize| -> Option<u64> {
        Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?) as u64)
    };
    let u64_at =
        |o: usize| -> Option<u64> { Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?)) };
    // ELFCLASS64, little endian.
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let shoff = usize::try_from(u64_at(0x28)?).ok()?;
    let shentsize = usize::try_from(u16_at(0x3a)?).ok()?;
    let shnum = usize::try_from(u16_at(0x3c)?).ok()?;
    let shstrndx = usize::try_from(u16_at(0x3e)?).ok()?;
    let section = |i: usize| -> Option<(u64, usize, usize)> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        let name = u32_at(h)?;
        let off = usize::try_from(u64_at(h + 24)?).ok()?;
        let size = usize::try_from(u64_at(h + 32)?).ok()?;
        Some((name, off, size))
    };
    let (_, stroff, strsize) = section(shstrndx)?;
    let strtab = elf.get(stroff..stroff.checked_add(strsize)?)?;
    for i in 0..shnum {
        let (name, off, size) = section(i)?;
        let n = strtab.get(usize::try_from(name).ok()?..)?;
        let n = &n[..n.iter().position(|&b| b == 0)?];
        if n != b".modinfo" {
            continue;
        }
        let data = elf.get(off..off.checked_add(size)?)?;
        return Some(
            data.split(|&b| b == 0)
                .filter_map(|s| {
                    let s = std::str::from_utf8(s).ok()?;
                    let (k, v) = s.split_once('=')?;
                    Some((k.to_string(), v.to_string()))
                })
                .collect(),
        );
    }
    None
}

/// The modules a module needs loaded first: `depends=` plus `softdep=` "pre:" names.
fn needs(info: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in info {
        match k.as_str() {
            "depends" => out.extend(v.split(',').filter(|s| !s.is_empty()).map(normalize)),
            "softdep" => {
                let mut pre = false;
                for w in v.split_whitespace() {
                    match w {
                        "pre:" => pre = true,
                        "post:" => pre = false,
                        m if pre => out.push(normalize(m)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Every `.ko` under `dir` (a `lib/modules/VERSION` tree), by normalized name.
pub fn index(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d)
            .map_err(|e| Error::new(format!("reading {}: {e}", d.display())))?;
        for ent in rd {
            let ent = ent.map_err(|e| Error::new(format!("reading {}: {e}", d.display())))?;
            let p = ent.path();
            let ft = ent
                .file_type()
                .map_err(|e| Error::new(format!("{}: {e}", p.display())))?;
            if ft.is_dir() {
                stack.push(p);
            } else if let Some(n) = p.file_name().and_then(|n| n.to_str())
                && let Some(stem) = n.strip_suffix(".ko")
            {
                out.insert(normalize(stem), p);
            }
        }
    }
    Ok(out)
}

/// The files of `wanted` modules and of everything they need, in an order that loads each
/// module after its dependencies. Names in `builtin` (compiled into the kernel) are
/// skipped; soft dependencies that are neither a module nor built in (aliases such as
/// `crc32c`) are ignored; a wanted module that is neither is an error.
pub fn load_order(
    index: &BTreeMap<String, PathBuf>,
    builtin: &BTreeSet<String>,
    wanted: &[&str],
) -> Result<Vec<PathBuf>> {
    fn visit(
        name: &str,
        index: &BTreeMap<String, PathBuf>,
        done: &mut BTreeSet<String>,
        on_path: &mut Vec<String>,
        out: &mut Vec<PathBuf>,
    ) -> Result<()> {
        if done.contains(name) {
            return Ok(());
        }
        if on_path.iter().any(|n| n == name) {
            return Err(Error::new(format!(
                "module dependency cycle: {} -> {name}",
                on_path.join(" -> ")
            )));
        }
        let Some(path) = index.get(name) else {
            return Ok(());
        };
        let data = std::fs::read(path)
            .map_err(|e| Error::new(format!("reading {}: {e}", path.display())))?;
        let info = modinfo(&data)
            .ok_or_else(|| Error::new(format!("{}: no .modinfo section", path.display())))?;
        on_path.push(name.to_string());
        for dep in needs(&info) {
            visit(&dep, index, done, on_path, out)?;
        }
        on_path.pop();
        done.insert(name.to_string());
        out.push(path.clone());
        Ok(())
    }
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for w in wanted {
        let n = normalize(w);
        if !index.contains_key(&n) {
            if builtin.contains(&n) {
                continue;
            }
            return Err(Error::new(format!(
                "kernel module {w} is neither a module file nor built in"
            )));
        }
        visit(&n, index, &mut done, &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}

/// Normalized names from a `modules.builtin` file (`kernel/path/name.ko` lines).
pub fn builtin(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.rsplit('/').next())
        .filter(|n| n.ends_with(".ko"))
        .map(normalize)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 object with a section-name table and a `.modinfo` section.
    fn elf_with_modinfo(info: &[u8]) -> Vec<u8> {
        let shstr = b"\0.shstrtab\0.modinfo\0";
        let mut v = vec![0u8; 64];
        v[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let shstr_off = v.len();
        v.extend_from_slice(shstr);
        let info_off = v.len();
        v.extend_from_slice(info);
        while !v.len().is_multiple_of(8) {
            v.push(0);
        }
        let shoff = v.len();
        // Section 0 (null), 1 (.shstrtab), 2 (.modinfo).
        let sections: [(u32, usize, usize); 3] = [
            (0, 0, 0),
            (1, shstr_off, shstr.len()),
            (11, info_off, info.len()),
        ];
        for (name, off, size) in sections {
            let mut h = [0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            v.extend_from_slice(&h);
        }
        v[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        v[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        v[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        v[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        v
    }

    #[test]
    fn reads_depends_and_softdeps() {
        let elf = elf_with_modinfo(
            b"license=GPL\0depends=nvme-core,nvme-fabrics\0softdep=pre: crc32c post: x\0",
        );
        let info = modinfo(&elf).expect("modinfo");
        assert_eq!(info[0], ("license".into(), "GPL".into()));
        assert_eq!(needs(&info), ["nvme_core", "nvme_fabrics", "crc32c"]);
        assert!(modinfo(b"not an elf").is_none());
        assert!(modinfo(&elf[..70]).is_none(), "truncated file accepted");
    }

    #[test]
    fn orders_dependencies_first() {
        let dir = std::env::temp_dir().join(format!("testvm-modinfo-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("kernel/sub")).expect("mkdir");
        let write = |rel: &str, info: &[u8]| {
            std::fs::write(dir.join(rel), elf_with_modinfo(info)).expect("write");
        };
        write("kernel/a.ko", b"depends=b-mod,c\0");
        write("kernel/sub/b-mod.ko", b"depends=c\0softdep=pre: crc32c\0");
        write("kernel/c.ko", b"depends=\0");
        let idx = index(&dir).expect("index");
        let order = load_order(&idx, &BTreeSet::new(), &["a", "c"]).expect("order");
        let names: Vec<String> = order
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["c.ko", "b-mod.ko", "a.ko"]);
        let builtin = builtin("kernel/fs/ext4/ext4.ko\n");
        assert!(
            load_order(&idx, &builtin, &["ext4"])
                .expect("builtin")
                .is_empty()
        );
        assert!(load_order(&idx, &builtin, &["missing"]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
