//! Volume management: create, delete, snapshot, clone, revert, resize, open; allocation.

use std::sync::Arc;

use blockdev::{Device, IoKind, ZeroFlags};

use crate::meta::{Kind, Mapping, Record};

use super::{Pool, PoolError, PoolErrorKind, PoolVolume, State};

impl Pool {
    pub(super) fn id_of(st: &State, name: &str) -> Result<u64, PoolError> {
        st.meta
            .volumes
            .values()
            .find(|v| v.name == name)
            .map(|v| v.id)
            .ok_or_else(|| PoolError::new(PoolErrorKind::NotFound, name))
    }

    pub(super) fn next_id(st: &State) -> u64 {
        st.meta.volumes.keys().next_back().copied().unwrap_or(0) + 1
    }

    pub(super) fn check_name(name: &str) -> Result<(), PoolError> {
        if name.is_empty()
            || name.len() > crate::codec::MAX_NAME
            || name.chars().any(|c| c.is_control() || c == '/')
        {
            return Err(PoolError::invalid(format!("bad name {name:?}")));
        }
        Ok(())
    }

    /// Creates a volume; thick volumes get every cluster allocated (reading as zeroes).
    pub async fn create_volume(&self, name: &str, size: u64, thin: bool) -> Result<(), PoolError> {
        Self::check_name(name)?;
        let bs = self.sb.block_size as u64;
        if size == 0 || !size.is_multiple_of(bs) {
            return Err(PoolError::invalid(format!(
                "size must be a non-zero multiple of {bs}"
            )));
        }
        {
            let mut st = self.state.lock().expect("pool lock");
            let id = Self::next_id(&st);
            let clusters = size.div_ceil(self.sb.cluster_size as u64);
            if !thin && clusters > st.meta.free_count() {
                return Err(PoolError::no_space(format!(
                    "thick volume needs {clusters} clusters"
                )));
            }
            self.push(
                &mut st,
                Record::CreateVolume {
                    id,
                    name: name.into(),
                    size,
                    thin,
                },
            )?;
            if !thin {
                self.allocate_zeroed(&mut st, id, 0..clusters)?;
            }
        }
        self.commit().await
    }

    /// Deletes a volume or snapshot (any order; clusters shared with others stay).
    pub async fn delete(&self, name: &str) -> Result<(), PoolError> {
        let _quiet = self.quiesce().await;
        {
            let mut st = self.state.lock().expect("pool lock");
            let id = Self::id_of(&st, name)?;
            self.push(&mut st, Record::Delete { id })?;
        }
        self.commit().await
    }

    /// Snapshots volume `source` as `name` (acknowledged writes before the call are in it).
    pub async fn snapshot(&self, source: &str, name: &str) -> Result<(), PoolError> {
        Self::check_name(name)?;
        let _quiet = self.quiesce().await;
        self.flush_data().await?;
        {
            let mut st = self.state.lock().expect("pool lock");
            let src = Self::id_of(&st, source)?;
            let id = Self::next_id(&st);
            self.push(
                &mut st,
                Record::Snapshot {
                    source: src,
                    id,
                    name: name.into(),
                },
            )?;
        }
        self.commit().await
    }

    /// Creates writable volume `name` from snapshot `snapshot`.
    pub async fn clone_snapshot(&self, snapshot: &str, name: &str) -> Result<(), PoolError> {
        Self::check_name(name)?;
        {
            let mut st = self.state.lock().expect("pool lock");
            let s = Self::id_of(&st, snapshot)?;
            let id = Self::next_id(&st);
            self.push(
                &mut st,
                Record::Clone {
                    snapshot: s,
                    id,
                    name: name.into(),
                },
            )?;
        }
        self.commit().await
    }

    /// Reverts `volume` to `snapshot`'s contents.
    pub async fn revert(&self, volume: &str, snapshot: &str) -> Result<(), PoolError> {
        let _quiet = self.quiesce().await;
        {
            let mut st = self.state.lock().expect("pool lock");
            let v = Self::id_of(&st, volume)?;
            let s = Self::id_of(&st, snapshot)?;
            self.push(
                &mut st,
                Record::Revert {
                    volume: v,
                    snapshot: s,
                },
            )?;
        }
        self.commit().await
    }

    /// Resizes a volume; shrinking requires `force`.
    pub async fn resize(
        self: &Arc<Self>,
        volume: &str,
        size: u64,
        force: bool,
    ) -> Result<(), PoolError> {
        let cs = self.sb.cluster_size as u64;
        let (id, old, thin) = {
            let st = self.state.lock().expect("pool lock");
            let id = Self::id_of(&st, volume)?;
            let v = &st.meta.volumes[&id];
            if v.kind != Kind::Volume {
                return Err(PoolError::invalid(format!("{volume:?} is a snapshot")));
            }
            (id, v.size, v.thin)
        };
        if size < old && !force {
            return Err(PoolError::invalid("shrinking loses data; pass force"));
        }
        if size == 0 || !size.is_multiple_of(self.sb.block_size as u64) {
            return Err(PoolError::invalid("bad size"));
        }
        if size < old {
            // The cluster the new end falls in keeps its allocation: zero what lies past the
            // new end, so growing again later reads zeroes there, not the old data.
            let tail_end = size.next_multiple_of(cs).min(old);
            if tail_end > size {
                let vol = PoolVolume {
                    pool: self.clone(),
                    id,
                    name: volume.into(),
                    read_only: false,
                };
                vol.do_zero(
                    IoKind::WriteZeroes,
                    size,
                    tail_end - size,
                    ZeroFlags::default(),
                )
                .await
                .map_err(PoolError::from)?;
            }
        }
        let _quiet = self.quiesce().await;
        {
            let mut st = self.state.lock().expect("pool lock");
            let (first_new, end) = (old.div_ceil(cs), size.div_ceil(cs));
            if !thin && end > first_new && end - first_new > st.meta.free_count() {
                return Err(PoolError::no_space(format!(
                    "growing a thick volume needs {} more clusters",
                    end - first_new
                )));
            }
            self.push(&mut st, Record::Resize { id, size })?;
            if !thin {
                // A thick volume stays fully allocated.
                self.allocate_zeroed(&mut st, id, first_new..end)?;
            }
        }
        self.commit().await
    }

    /// Opens a volume or snapshot (read-only) as a block device.
    pub fn open(self: &Arc<Self>, name: &str) -> Result<Device, PoolError> {
        let st = self.state.lock().expect("pool lock");
        let id = Self::id_of(&st, name)?;
        let read_only = st.meta.volumes[&id].kind == Kind::Snapshot;
        Ok(Arc::new(PoolVolume {
            pool: self.clone(),
            id,
            name: name.into(),
            read_only,
        }))
    }

    /// Maps logical clusters `range` of volume `id` to fresh clusters that read as zeroes
    /// (thick provisioning).
    pub(super) fn allocate_zeroed(
        &self,
        st: &mut State,
        id: u64,
        range: std::ops::Range<u64>,
    ) -> Result<(), PoolError> {
        for index in range {
            let c = self
                .alloc_locked(st)
                .ok_or_else(|| PoolError::no_space("pool is full"))?;
            st.reserved.remove(&c);
            self.push(
                st,
                Record::SetMap {
                    id,
                    index,
                    entry: Mapping::Zero(c).encode(),
                },
            )?;
        }
        Ok(())
    }

    /// Picks a free cluster: unreferenced, not freed by an uncommitted record, not reserved.
    pub(super) fn alloc_locked(&self, st: &mut State) -> Option<u64> {
        let n = st.meta.total_clusters;
        for i in 0..n {
            let c = (st.hint + i) % n;
            if st.meta.refcount(c) == 0
                && !st.freed_pending.contains_key(&c)
                && !st.reserved.contains(&c)
            {
                st.reserved.insert(c);
                st.hint = c + 1;
                return Some(c);
            }
        }
        None
    }
}
