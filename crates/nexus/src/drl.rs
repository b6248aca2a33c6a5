//! The dirty-region log: which regions of the volume were written while some child was away,
//! and which children it covers. It is persisted (on a small device of its own, written with
//! FUA) before a write that dirties a new region is acknowledged, so after a crash or an
//! engine restart a returning child still copies only what changed.
//!
//! On-disk layout (little-endian): a 4 KiB header — magic `"BALLASTD"` (8), version (4),
//! header CRC32C (4, of the header with this field zero), region size (8), region count (8),
//! sequence (8, incremented per save), bitmap CRC32C (4), absent count (4), then up to 16
//! absent child names of 64 bytes each (NUL padded) at offset 64 — followed by the bitmap,
//! one bit per region, padded to the device's block size.

use std::sync::Mutex;
use std::task::{Poll, Waker};

use blockdev::{BlockError, Device, IoBuf, WriteFlags};
use crc32c::crc32c;

const MAGIC: &[u8; 8] = b"BALLASTD";
const VERSION: u32 = 1;
const HEADER: usize = 4096;
/// Most children the log can record as absent.
pub const MAX_ABSENT: usize = 16;
const NAME: usize = 64;

#[derive(Debug, Default)]
struct State {
    bits: Vec<u64>,
    absent: Vec<String>,
    /// Changes since the last save started.
    changed: u64,
    saving: bool,
    seq: u64,
    waiters: Vec<Waker>,
}

/// The dirty-region log of one nexus.
pub struct Drl {
    region: u64,
    regions: u64,
    store: Option<Device>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Drl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drl")
            .field("region", &self.region)
            .field("regions", &self.regions)
            .finish()
    }
}

/// What loading a log found.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded {
    /// Nothing valid on the store (new, or damaged: the reason): no child can rebuild partially.
    Empty(String),
    /// A valid log.
    Valid,
}

impl Drl {
    /// An empty log of `size` bytes of volume in regions of `region` bytes, kept on `store`
    /// (`None`: memory only).
    pub fn new(size: u64, region: u64, store: Option<Device>) -> Drl {
        let regions = size.div_ceil(region.max(1));
        Drl {
            region: region.max(1),
            regions,
            store,
            state: Mutex::new(State {
                bits: vec![0; regions.div_ceil(64) as usize],
                ..State::default()
            }),
        }
    }

    /// Bytes per region.
    pub fn region_size(&self) -> u64 {
        self.region
    }

    /// Number of regions.
    pub fn regions(&self) -> u64 {
        self.regions
    }

    fn bytes(&self) -> usize {
        self.regions.div_ceil(8) as usize
    }

    /// Loads the log from its store. A log for another volume size or region size, or a
    /// damaged one, loads as empty (with the reason).
    pub async fn load(&self) -> Result<Loaded, BlockError> {
        let Some(store) = &self.store else {
            return Ok(Loaded::Empty("no store".into()));
        };
        let bs = store.geometry().block_size.max(1) as usize;
        let len = (HEADER + self.bytes()).next_multiple_of(bs);
        if store.geometry().size() < len as u64 {
            return Ok(Loaded::Empty(format!(
                "the log device is smaller than the {len} bytes the log needs"
            )));
        }
        let b = store.read(0, IoBuf::zeroed(len)).await?;
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4"));
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8"));
        if &b[0..8] != MAGIC {
            return Ok(Loaded::Empty("no log written yet".into()));
        }
        let mut h = b[..HEADER].to_vec();
        h[12..16].fill(0);
        if u32_at(8) != VERSION || u32_at(12) != crc32c(&h) {
            return Ok(Loaded::Empty("log header damaged".into()));
        }
        if u64_at(16) != self.region || u64_at(24) != self.regions {
            return Ok(Loaded::Empty(format!(
                "log is for {} regions of {} bytes, not {} of {}",
                u64_at(24),
                u64_at(16),
                self.regions,
                self.region
            )));
        }
        let map = &b[HEADER..HEADER + self.bytes()];
        if u32_at(40) != crc32c(map) {
            return Ok(Loaded::Empty("log bitmap damaged".into()));
        }
        let n = (u32_at(44) as usize).min(MAX_ABSENT);
        let absent = (0..n)
            .map(|i| {
                let f = &b[64 + i * NAME..64 + (i + 1) * NAME];
                let end = f.iter().position(|&c| c == 0).unwrap_or(NAME);
                String::from_utf8_lossy(&f[..end]).into_owned()
            })
            .collect();
        let mut st = self.state.lock().expect("drl");
        for (i, w) in st.bits.iter_mut().enumerate() {
            let mut word = [0u8; 8];
            for (j, x) in word.iter_mut().enumerate() {
                *x = map.get(i * 8 + j).copied().unwrap_or(0);
            }
            *w = u64::from_le_bytes(word);
        }
        st.absent = absent;
        st.seq = u64_at(32);
        Ok(Loaded::Valid)
    }

    /// Children the log covers: every write since each left is recorded.
    pub fn absent(&self) -> Vec<String> {
        self.state.lock().expect("drl").absent.clone()
    }

    /// Whether any child is away (writes must be recorded).
    pub fn tracking(&self) -> bool {
        !self.state.lock().expect("drl").absent.is_empty()
    }

    /// Regions dirty.
    pub fn dirty_count(&self) -> u64 {
        let st = self.state.lock().expect("drl");
        st.bits.iter().map(|w| w.count_ones() as u64).sum()
    }

    /// Whether region `r` is dirty.
    pub fn is_dirty(&self, r: u64) -> bool {
        let st = self.state.lock().expect("drl");
        st.bits
            .get((r / 64) as usize)
            .is_some_and(|w| w & (1 << (r % 64)) != 0)
    }

    /// Marks the regions of `[offset, offset+len)` dirty; true when a bit was newly set (the
    /// log must then be saved before the write is acknowledged).
    pub fn mark(&self, offset: u64, len: u64) -> bool {
        if len == 0 {
            return false;
        }
        let (first, last) = (offset / self.region, (offset + len - 1) / self.region);
        let mut st = self.state.lock().expect("drl");
        let mut new = false;
        for r in first..=last.min(self.regions.saturating_sub(1)) {
            let w = &mut st.bits[(r / 64) as usize];
            if *w & (1 << (r % 64)) == 0 {
                *w |= 1 << (r % 64);
                new = true;
            }
        }
        if new {
            st.changed += 1;
        }
        new
    }

    /// Records `child` as away (the log covers it from now on); true when it was not yet.
    pub fn add_absent(&self, child: &str) -> bool {
        let mut st = self.state.lock().expect("drl");
        if st.absent.iter().any(|a| a == child) || st.absent.len() >= MAX_ABSENT {
            return false;
        }
        st.absent.push(child.to_string());
        st.changed += 1;
        true
    }

    /// `child` is in sync again; when no child is away any more the bitmap is cleared.
    pub fn remove_absent(&self, child: &str) {
        let mut st = self.state.lock().expect("drl");
        st.absent.retain(|a| a != child);
        if st.absent.is_empty() {
            st.bits.iter_mut().for_each(|w| *w = 0);
        }
        st.changed += 1;
    }

    /// Makes the current log durable (no-op without a store). Saves are serialised so an
    /// older image never lands after a newer one; a save that finds nothing changed since
    /// one that started after its caller's change returns at once.
    pub async fn save(&self) -> Result<(), BlockError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let image = std::future::poll_fn(|cx| {
            let mut st = self.state.lock().expect("drl");
            if st.saving {
                st.waiters.push(cx.waker().clone());
                return Poll::Pending;
            }
            if st.changed == 0 {
                return Poll::Ready(None);
            }
            st.saving = true;
            st.changed = 0;
            st.seq += 1;
            Poll::Ready(Some(self.encode(&st, store)))
        })
        .await;
        let Some(image) = image else {
            return Ok(());
        };
        let r = store
            .write(0, image, WriteFlags { fua: true })
            .await
            .map(drop);
        let waiters = {
            let mut st = self.state.lock().expect("drl");
            st.saving = false;
            if r.is_err() {
                st.changed += 1; // not saved: the next save must write
            }
            std::mem::take(&mut st.waiters)
        };
        for w in waiters {
            w.wake();
        }
        r
    }

    fn encode(&self, st: &State, store: &Device) -> IoBuf {
        let bs = store.geometry().block_size.max(1) as usize;
        let len = (HEADER + self.bytes()).next_multiple_of(bs);
        let mut b = IoBuf::zeroed(len);
        let map: Vec<u8> = st
            .bits
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .take(self.bytes())
            .collect();
        b[HEADER..HEADER + map.len()].copy_from_slice(&map);
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.region.to_le_bytes());
        b[24..32].copy_from_slice(&self.regions.to_le_bytes());
        b[32..40].copy_from_slice(&st.seq.to_le_bytes());
        b[40..44].copy_from_slice(&crc32c(&map).to_le_bytes());
        b[44..48].copy_from_slice(&(st.absent.len() as u32).to_le_bytes());
        for (i, a) in st.absent.iter().enumerate() {
            let n = a.len().min(NAME);
            b[64 + i * NAME..64 + i * NAME + n].copy_from_slice(&a.as_bytes()[..n]);
        }
        let crc = crc32c(&b[..HEADER]);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        b
    }
}
