//! The pool's metadata as a deterministic state machine.
//!
//! Every change is a [`Record`]; [`Meta::apply`] validates and applies it. The same records
//! replayed on the same checkpoint give the same state, which is what makes the journal work:
//! the live state is the last checkpoint plus the records committed after it. Reference counts
//! of physical clusters are not stored; they are derived from the maps ([`Meta::rebuild_refcounts`])
//! and maintained by `apply`.

use std::collections::BTreeMap;

/// Map entry value of an unallocated cluster (a hole: reads as zeroes).
pub const HOLE: u64 = 0;
/// Entry flag: allocated, but reads as zeroes until written.
pub const ZERO_FLAG: u64 = 1 << 62;
const CLUSTER_MASK: u64 = (1 << 48) - 1;

/// A decoded map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// Not allocated.
    Hole,
    /// Allocated physical cluster holding data.
    Data(u64),
    /// Allocated physical cluster that reads as zeroes.
    Zero(u64),
}

impl Mapping {
    /// Decodes an on-disk entry.
    pub fn decode(e: u64) -> Mapping {
        if e & CLUSTER_MASK == 0 {
            return Mapping::Hole;
        }
        let c = (e & CLUSTER_MASK) - 1;
        if e & ZERO_FLAG != 0 {
            Mapping::Zero(c)
        } else {
            Mapping::Data(c)
        }
    }

    /// Encodes for disk.
    pub fn encode(self) -> u64 {
        match self {
            Mapping::Hole => HOLE,
            Mapping::Data(c) => c + 1,
            Mapping::Zero(c) => (c + 1) | ZERO_FLAG,
        }
    }

    /// The physical cluster, if allocated.
    pub fn cluster(self) -> Option<u64> {
        match self {
            Mapping::Hole => None,
            Mapping::Data(c) | Mapping::Zero(c) => Some(c),
        }
    }
}

/// Volume or snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A writable volume (or clone).
    Volume = 1,
    /// A read-only point-in-time snapshot.
    Snapshot = 2,
}

/// One volume or snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeMeta {
    /// Stable id.
    pub id: u64,
    /// Unique name within the pool.
    pub name: String,
    /// Volume or snapshot.
    pub kind: Kind,
    /// Thin (allocate on write) or thick (allocated at creation).
    pub thin: bool,
    /// Size in bytes.
    pub size: u64,
    /// The snapshot this was cloned from or snapshotted off.
    pub origin: Option<u64>,
    /// Logical cluster -> entry.
    pub map: Vec<u64>,
}

/// A metadata change, as journaled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// Create an empty volume.
    CreateVolume {
        /// New id.
        id: u64,
        /// Name.
        name: String,
        /// Bytes.
        size: u64,
        /// Thin.
        thin: bool,
    },
    /// Delete a volume or snapshot; its clusters lose a reference.
    Delete {
        /// Id.
        id: u64,
    },
    /// Set one map entry (allocation, copy-on-write, unmap, zeroing).
    SetMap {
        /// Volume id.
        id: u64,
        /// Logical cluster.
        index: u64,
        /// New entry.
        entry: u64,
    },
    /// Freeze `source`'s current map as snapshot `id`.
    Snapshot {
        /// Volume snapshotted.
        source: u64,
        /// New snapshot id.
        id: u64,
        /// Name.
        name: String,
    },
    /// A writable volume `id` sharing `snapshot`'s clusters.
    Clone {
        /// Snapshot cloned.
        snapshot: u64,
        /// New volume id.
        id: u64,
        /// Name.
        name: String,
    },
    /// Make `volume`'s contents `snapshot`'s again.
    Revert {
        /// Volume.
        volume: u64,
        /// Snapshot.
        snapshot: u64,
    },
    /// Change a volume's size (clusters past the new end are released).
    Resize {
        /// Volume.
        id: u64,
        /// New size in bytes.
        size: u64,
    },
}

/// Why a record cannot apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaError {
    /// No such volume.
    NoVolume(u64),
    /// Name taken.
    NameTaken(String),
    /// Id taken.
    IdTaken(u64),
    /// Operation not valid for this kind (e.g. writing a snapshot).
    WrongKind(u64),
    /// Index or cluster out of range.
    OutOfRange,
    /// Malformed bytes.
    Corrupt(&'static str),
}

impl std::fmt::Display for MetaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetaError::NoVolume(id) => write!(f, "no volume with id {id}"),
            MetaError::NameTaken(n) => write!(f, "name {n:?} is taken"),
            MetaError::IdTaken(id) => write!(f, "id {id} is taken"),
            MetaError::WrongKind(id) => write!(f, "operation not allowed on {id}"),
            MetaError::OutOfRange => write!(f, "index or cluster out of range"),
            MetaError::Corrupt(w) => write!(f, "corrupt metadata: {w}"),
        }
    }
}

impl std::error::Error for MetaError {}

/// The whole metadata state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Bytes per cluster.
    pub cluster_size: u64,
    /// Physical clusters in the pool.
    pub total_clusters: u64,
    /// Volumes and snapshots by id.
    pub volumes: BTreeMap<u64, VolumeMeta>,
    /// References to each physical cluster.
    refcount: Vec<u32>,
}

impl Meta {
    /// An empty pool.
    pub fn new(cluster_size: u64, total_clusters: u64) -> Meta {
        Meta {
            cluster_size,
            total_clusters,
            volumes: BTreeMap::new(),
            refcount: vec![0; total_clusters as usize],
        }
    }

    fn clusters_for(&self, size: u64) -> usize {
        size.div_ceil(self.cluster_size) as usize
    }

    fn name_taken(&self, name: &str) -> bool {
        self.volumes.values().any(|v| v.name == name)
    }

    /// Adds physical clusters up to `total_clusters` (a grown pool); never shrinks.
    pub fn grow(&mut self, total_clusters: u64) {
        if total_clusters > self.total_clusters {
            self.total_clusters = total_clusters;
            self.refcount.resize(total_clusters as usize, 0);
        }
    }

    /// References to physical cluster `c`.
    pub fn refcount(&self, c: u64) -> u32 {
        self.refcount.get(c as usize).copied().unwrap_or(0)
    }

    /// Physical clusters referenced by nothing.
    pub fn free_count(&self) -> u64 {
        self.refcount.iter().filter(|&&r| r == 0).count() as u64
    }

    fn incref(&mut self, e: u64) {
        if let Some(c) = Mapping::decode(e).cluster() {
            self.refcount[c as usize] += 1;
        }
    }

    /// Drops a reference; returns the cluster if it became free.
    fn decref(&mut self, e: u64) -> Option<u64> {
        let c = Mapping::decode(e).cluster()?;
        let r = &mut self.refcount[c as usize];
        *r = r.saturating_sub(1);
        (*r == 0).then_some(c)
    }

    fn check_entry(&self, e: u64) -> Result<(), MetaError> {
        match Mapping::decode(e).cluster() {
            Some(c) if c >= self.total_clusters => Err(MetaError::OutOfRange),
            _ if e & !(CLUSTER_MASK | ZERO_FLAG) != 0 => {
                Err(MetaError::Corrupt("unknown map entry bits"))
            }
            _ => Ok(()),
        }
    }

    fn new_object(&mut self, id: u64, name: &str) -> Result<(), MetaError> {
        if self.volumes.contains_key(&id) {
            return Err(MetaError::IdTaken(id));
        }
        if self.name_taken(name) {
            return Err(MetaError::NameTaken(name.to_string()));
        }
        Ok(())
    }

    /// Applies a record; on error nothing changed. Returns clusters that became free.
    pub fn apply(&mut self, rec: &Record) -> Result<Vec<u64>, MetaError> {
        let mut freed = Vec::new();
        match rec {
            Record::CreateVolume {
                id,
                name,
                size,
                thin,
            } => {
                self.new_object(*id, name)?;
                let n = self.clusters_for(*size);
                self.volumes.insert(
                    *id,
                    VolumeMeta {
                        id: *id,
                        name: name.clone(),
                        kind: Kind::Volume,
                        thin: *thin,
                        size: *size,
                        origin: None,
                        map: vec![HOLE; n],
                    },
                );
            }
            Record::Delete { id } => {
                let v = self.volumes.remove(id).ok_or(MetaError::NoVolume(*id))?;
                for e in v.map {
                    freed.extend(self.decref(e));
                }
            }
            Record::SetMap { id, index, entry } => {
                self.check_entry(*entry)?;
                let v = self.volumes.get(id).ok_or(MetaError::NoVolume(*id))?;
                if v.kind != Kind::Volume {
                    return Err(MetaError::WrongKind(*id));
                }
                let old = *v.map.get(*index as usize).ok_or(MetaError::OutOfRange)?;
                self.incref(*entry);
                freed.extend(self.decref(old));
                self.volumes.get_mut(id).expect("checked").map[*index as usize] = *entry;
            }
            Record::Snapshot { source, id, name } => {
                self.new_object(*id, name)?;
                let src = self
                    .volumes
                    .get(source)
                    .ok_or(MetaError::NoVolume(*source))?;
                if src.kind != Kind::Volume {
                    return Err(MetaError::WrongKind(*source));
                }
                let snap = VolumeMeta {
                    id: *id,
                    name: name.clone(),
                    kind: Kind::Snapshot,
                    origin: Some(*source),
                    ..src.clone()
                };
                for &e in &snap.map {
                    self.incref(e);
                }
                self.volumes.insert(*id, snap);
            }
            Record::Clone { snapshot, id, name } => {
                self.new_object(*id, name)?;
                let s = self
                    .volumes
                    .get(snapshot)
                    .ok_or(MetaError::NoVolume(*snapshot))?;
                if s.kind != Kind::Snapshot {
                    return Err(MetaError::WrongKind(*snapshot));
                }
                let vol = VolumeMeta {
                    id: *id,
                    name: name.clone(),
                    kind: Kind::Volume,
                    origin: Some(*snapshot),
                    ..s.clone()
                };
                for &e in &vol.map {
                    self.incref(e);
                }
                self.volumes.insert(*id, vol);
            }
            Record::Revert { volume, snapshot } => {
                let s = self
                    .volumes
                    .get(snapshot)
                    .ok_or(MetaError::NoVolume(*snapshot))?;
                let v = self
                    .volumes
                    .get(volume)
                    .ok_or(MetaError::NoVolume(*volume))?;
                if s.kind != Kind::Snapshot || v.kind != Kind::Volume {
                    return Err(MetaError::WrongKind(*volume));
                }
                let (new_map, new_size) = (s.map.clone(), s.size);
                let old_map =
                    std::mem::take(&mut self.volumes.get_mut(volume).expect("checked").map);
                for &e in &new_map {
                    self.incref(e);
                }
                for e in old_map {
                    freed.extend(self.decref(e));
                }
                let v = self.volumes.get_mut(volume).expect("checked");
                v.map = new_map;
                v.size = new_size;
            }
            Record::Resize { id, size } => {
                let n = self.clusters_for(*size);
                let v = self.volumes.get(id).ok_or(MetaError::NoVolume(*id))?;
                if v.kind != Kind::Volume {
                    return Err(MetaError::WrongKind(*id));
                }
                let dropped: Vec<u64> = v.map.iter().skip(n).copied().collect();
                for e in dropped {
                    freed.extend(self.decref(e));
                }
                let v = self.volumes.get_mut(id).expect("checked");
                v.map.resize(n, HOLE);
                v.size = *size;
            }
        }
        Ok(freed)
    }

    /// Recomputes reference counts from the maps (after loading a checkpoint).
    pub fn rebuild_refcounts(&mut self) -> Result<(), MetaError> {
        self.refcount = vec![0; self.total_clusters as usize];
        let entries: Vec<u64> = self
            .volumes
            .values()
            .flat_map(|v| v.map.iter().copied())
            .collect();
        for e in entries {
            self.check_entry(e)?;
            self.incref(e);
        }
        Ok(())
    }

    /// Every invariant; each violation described precisely.
    pub fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut counts = vec![0u32; self.total_clusters as usize];
        let mut names = std::collections::HashSet::new();
        for v in self.volumes.values() {
            if !names.insert(&v.name) {
                problems.push(format!("name {:?} used twice", v.name));
            }
            if v.map.len() != self.clusters_for(v.size) {
                problems.push(format!(
                    "volume {:?}: map has {} entries for {} bytes",
                    v.name,
                    v.map.len(),
                    v.size
                ));
            }
            for (i, &e) in v.map.iter().enumerate() {
                match Mapping::decode(e).cluster() {
                    Some(c) if c >= self.total_clusters => problems.push(format!(
                        "volume {:?} cluster {i}: physical cluster {c} beyond the pool",
                        v.name
                    )),
                    Some(c) => counts[c as usize] += 1,
                    None => {}
                }
            }
        }
        for (c, (&want, &have)) in counts.iter().zip(&self.refcount).enumerate() {
            if want != have {
                problems.push(format!(
                    "physical cluster {c}: {want} references, counted {have}"
                ));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    #[test]
    fn snapshots_clones_and_refcounts_stay_consistent() {
        for seed in 1..200u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut m = Meta::new(1 << 16, 64);
            let mut next_id = 1;
            for step in 0..300 {
                let ids: Vec<u64> = m.volumes.keys().copied().collect();
                let pick = |rng: &mut Rng| ids.get(rng.below(ids.len() as u64) as usize).copied();
                let rec = match rng.below(8) {
                    0 => {
                        next_id += 1;
                        Record::CreateVolume {
                            id: next_id,
                            name: format!("v{next_id}"),
                            size: rng.below(8) << 16,
                            thin: true,
                        }
                    }
                    1 => match pick(&mut rng) {
                        Some(id) => Record::Delete { id },
                        None => continue,
                    },
                    2..=4 => {
                        let Some(id) = pick(&mut rng) else { continue };
                        let len = m.volumes[&id].map.len() as u64;
                        let free = (0..m.total_clusters).find(|&c| m.refcount(c) == 0);
                        let entry = match (rng.below(3), free) {
                            (0, _) | (_, None) => HOLE,
                            (1, Some(c)) => Mapping::Data(c).encode(),
                            (_, Some(c)) => Mapping::Zero(c).encode(),
                        };
                        Record::SetMap {
                            id,
                            index: rng.below(len + 1),
                            entry,
                        }
                    }
                    5 => {
                        let Some(id) = pick(&mut rng) else { continue };
                        next_id += 1;
                        Record::Snapshot {
                            source: id,
                            id: next_id,
                            name: format!("s{next_id}"),
                        }
                    }
                    6 => {
                        let Some(id) = pick(&mut rng) else { continue };
                        if rng.below(2) == 0 {
                            next_id += 1;
                            Record::Clone {
                                snapshot: id,
                                id: next_id,
                                name: format!("c{next_id}"),
                            }
                        } else {
                            let Some(v) = pick(&mut rng) else { continue };
                            Record::Revert {
                                volume: v,
                                snapshot: id,
                            }
                        }
                    }
                    _ => {
                        let Some(id) = pick(&mut rng) else { continue };
                        Record::Resize {
                            id,
                            size: rng.below(10) << 15,
                        }
                    }
                };
                let before = m.clone();
                match m.apply(&rec) {
                    Ok(freed) => {
                        for c in freed {
                            assert_eq!(m.refcount(c), 0, "seed {seed} step {step}");
                        }
                    }
                    Err(_) => assert_eq!(
                        m, before,
                        "a failed record changed state (seed {seed} step {step}: {rec:?})"
                    ),
                }
                let problems = m.check();
                assert!(
                    problems.is_empty(),
                    "seed {seed} step {step} {rec:?}: {problems:?}"
                );
            }
            let mut rebuilt = m.clone();
            rebuilt.rebuild_refcounts().unwrap();
            assert_eq!(rebuilt, m);
            // Deleting everything in any order frees every cluster.
            let ids: Vec<u64> = m.volumes.keys().copied().collect();
            for id in ids.into_iter().rev() {
                m.apply(&Record::Delete { id }).unwrap();
            }
            assert_eq!(m.free_count(), m.total_clusters);
        }
    }

    #[test]
    fn map_entries_round_trip() {
        for map in [
            Mapping::Hole,
            Mapping::Data(0),
            Mapping::Data(12345),
            Mapping::Zero(7),
        ] {
            assert_eq!(Mapping::decode(map.encode()), map);
        }
    }
}
