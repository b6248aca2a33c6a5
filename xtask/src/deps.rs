//! The workspace's dependency rules (docs/architecture.md, "Crates"), checked against what
//! the manifests say: `cargo metadata` lists every workspace crate's dependencies, and a crate
//! that depends on one it must never import fails the check. Run by the unit test below, so
//! `cargo xtask test` (and CI) refuses a manifest that breaks the layering.

use std::collections::BTreeMap;
use std::process::Command;

use crate::json::{self, Value};

/// For each workspace crate, the workspace crates it must never depend on (normal or build
/// dependencies; dev-dependencies are tests' business and are not checked).
pub const NEVER: &[(&str, &[&str])] = &[
    ("proto-nbd", &["*"]),
    ("proto-nvme", &["*"]),
    ("reactor", &["*"]),
    ("testvm", &["*"]),
    ("ballast-api", &["*"]),
    (
        "blockdev",
        &[
            "proto-nbd",
            "proto-nvme",
            "initiator-*",
            "target-*",
            "pool",
            "nexus",
            "ballast-*",
        ],
    ),
    (
        "initiator-nbd",
        &[
            "proto-nvme",
            "initiator-nvme",
            "target-*",
            "pool",
            "nexus",
            "ballast-*",
        ],
    ),
    (
        "initiator-nvme",
        &[
            "proto-nbd",
            "initiator-nbd",
            "target-*",
            "pool",
            "nexus",
            "ballast-*",
        ],
    ),
    (
        "target-nbd",
        &[
            "proto-nvme",
            "initiator-*",
            "target-nvme",
            "pool",
            "nexus",
            "ballast-*",
        ],
    ),
    (
        "target-nvme",
        &[
            "proto-nbd",
            "initiator-*",
            "target-nbd",
            "pool",
            "nexus",
            "ballast-*",
        ],
    ),
    (
        "pool",
        &["proto-*", "initiator-*", "target-*", "nexus", "ballast-*"],
    ),
    (
        "nexus",
        &["proto-*", "initiator-*", "target-*", "pool", "ballast-*"],
    ),
    (
        "ballast-cli",
        &[
            "ballast-engine",
            "initiator-*",
            "target-*",
            "nexus",
            "proto-*",
        ],
    ),
    ("ballast-engine", &["ballast-cli"]),
];

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Workspace crate -> the workspace crates it depends on (normal and build dependencies).
pub fn graph() -> Result<BTreeMap<String, Vec<String>>, String> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .output()
        .map_err(|e| format!("cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let meta = json::parse(&String::from_utf8_lossy(&out.stdout))?;
    let str_of = |v: Option<&Value>| match v {
        Some(Value::Str(s)) => s.clone(),
        _ => String::new(),
    };
    let Some(Value::Arr(packages)) = meta.get("packages") else {
        return Err("cargo metadata: no packages".into());
    };
    let names: Vec<String> = packages.iter().map(|p| str_of(p.get("name"))).collect();
    let mut g = BTreeMap::new();
    for p in packages {
        let Some(Value::Arr(deps)) = p.get("dependencies") else {
            continue;
        };
        let mut ours: Vec<String> = deps
            .iter()
            .filter(|d| str_of(d.get("kind")) != "dev")
            .map(|d| str_of(d.get("name")))
            .filter(|n| names.contains(n))
            .collect();
        ours.sort();
        ours.dedup();
        g.insert(str_of(p.get("name")), ours);
    }
    Ok(g)
}

/// Every dependency that breaks a rule, as "crate -> dependency".
pub fn violations(g: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let mut bad = Vec::new();
    for (krate, never) in NEVER {
        for dep in g.get(*krate).into_iter().flatten() {
            if never.iter().any(|p| matches(p, dep)) {
                bad.push(format!("{krate} -> {dep}"));
            }
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crate_graph_follows_the_rules_in_docs_architecture() {
        let g = graph().expect("cargo metadata");
        for (krate, _) in NEVER {
            assert!(g.contains_key(*krate), "no workspace crate named {krate}");
        }
        let ours: Vec<&String> = g.keys().filter(|k| *k != "xtask").collect();
        for k in &ours {
            assert!(
                NEVER.iter().any(|(c, _)| c == k),
                "crate {k} has no rule in xtask/src/deps.rs (and docs/architecture.md)"
            );
        }
        assert_eq!(violations(&g), Vec::<String>::new());
    }

    #[test]
    fn a_forbidden_edge_is_reported() {
        let mut g = BTreeMap::new();
        g.insert("blockdev".to_string(), vec!["proto-nvme".to_string()]);
        g.insert("nexus".to_string(), vec!["blockdev".to_string()]);
        assert_eq!(violations(&g), vec!["blockdev -> proto-nvme".to_string()]);
    }
}
