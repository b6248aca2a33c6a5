//! Owned, aligned I/O buffers.
//!
//! io_uring reads and writes memory asynchronously: the kernel may touch a buffer until the
//! completion arrives, long after the call that submitted it returned. Every buffer handed to the
//! ring is therefore *owned* by the operation until completion and returned with the result
//! (see [`crate::Op`]). [`IoBuf`] is the data buffer: aligned to [`ALIGN`] bytes so it satisfies
//! `O_DIRECT`, optionally carved out of a reactor's registered pool so the kernel can skip
//! pinning pages on every I/O (`READ_FIXED` / `WRITE_FIXED`).

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

/// Alignment of every [`IoBuf`]: a page, which satisfies `O_DIRECT` on 512e and 4Kn devices.
pub const ALIGN: usize = 4096;

/// An owned, page-aligned, zero-initialised byte buffer with a length and a capacity.
///
/// The bytes `[0, len)` are the payload; `[len, capacity)` is spare room that receive
/// operations append into. The memory is always initialised (zeroed at allocation, or reused
/// from the pool with its old contents), so every `set_len` up to the capacity is sound.
pub struct IoBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
    origin: Origin,
}

enum Origin {
    /// No allocation (capacity 0).
    Empty,
    Heap,
    Pool {
        pool: Arc<PoolInner>,
        index: u16,
    },
}

// SAFETY: an IoBuf exclusively owns its allocation (heap) or its slot (pool); no other
// reference to the bytes exists, so moving it to or sharing it with another thread is as safe
// as for a Vec<u8>. Pool slots are returned through a Mutex.
unsafe impl Send for IoBuf {}
// SAFETY: &IoBuf only allows reading the bytes; see Send.
unsafe impl Sync for IoBuf {}

impl IoBuf {
    /// A heap buffer of `len` zero bytes (capacity rounded up to [`ALIGN`]).
    pub fn zeroed(len: usize) -> IoBuf {
        let mut b = IoBuf::with_capacity(len);
        b.len = len;
        b
    }

    /// A buffer with no capacity and no allocation: a placeholder to move out of a slot.
    pub fn empty() -> IoBuf {
        IoBuf {
            ptr: NonNull::dangling(),
            len: 0,
            cap: 0,
            origin: Origin::Empty,
        }
    }

    /// An empty heap buffer able to hold `cap` bytes.
    pub fn with_capacity(cap: usize) -> IoBuf {
        let cap = cap.max(1).next_multiple_of(ALIGN);
        let layout = Layout::from_size_align(cap, ALIGN).expect("buffer size overflows");
        // SAFETY: layout has non-zero size (cap >= ALIGN).
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        IoBuf {
            ptr,
            len: 0,
            cap,
            origin: Origin::Heap,
        }
    }

    /// A buffer holding a copy of `data`.
    pub fn from_slice(data: &[u8]) -> IoBuf {
        let mut b = IoBuf::zeroed(data.len());
        b.copy_from_slice(data);
        b
    }

    /// Number of payload bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the buffer can hold.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Sets the payload length. Panics if `len` exceeds the capacity.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.cap,
            "IoBuf::set_len {len} beyond capacity {}",
            self.cap
        );
        self.len = len;
    }

    /// Appends bytes, panicking if they do not fit.
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        let start = self.len;
        self.set_len(start + data.len());
        self[start..].copy_from_slice(data);
    }

    /// The spare room `[len, capacity)`.
    pub fn spare_mut(&mut self) -> &mut [u8] {
        // SAFETY: the allocation is `cap` initialised bytes owned by self; `len <= cap`.
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(self.len), self.cap - self.len)
        }
    }

    /// Raw pointer to the first byte, stable for the buffer's lifetime (moves do not move it).
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Mutable raw pointer to the first byte, stable across moves.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// If this buffer lives in a registered pool: the ring it is registered with and its index.
    pub fn registration(&self) -> Option<(usize, u16)> {
        match &self.origin {
            Origin::Heap | Origin::Empty => None,
            Origin::Pool { pool, index } => Some((pool.ring_id, *index)),
        }
    }
}

impl Default for IoBuf {
    fn default() -> Self {
        IoBuf::empty()
    }
}

impl Deref for IoBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `[0, len)` is initialised memory owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for IoBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: `[0, len)` is initialised memory exclusively owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoBuf")
            .field("len", &self.len)
            .field("cap", &self.cap)
            .field("registered", &self.registration())
            .finish()
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        match &self.origin {
            Origin::Empty => {}
            Origin::Heap => {
                if let Some(class) = class_of(self.cap) {
                    let kept = LARGE
                        .try_with(|l| {
                            let l = &mut l.borrow_mut().0;
                            if l.len() <= class {
                                l.resize_with(class + 1, Vec::new);
                            }
                            if l[class].len() < (CACHE_CLASS_BYTES / self.cap).max(1) {
                                l[class].push(self.ptr);
                                true
                            } else {
                                false
                            }
                        })
                        .unwrap_or(false);
                    if kept {
                        return;
                    }
                }
                let layout = Layout::from_size_align(self.cap, ALIGN).expect("layout was valid");
                // SAFETY: allocated in with_capacity with this very layout, freed once.
                unsafe { dealloc(self.ptr.as_ptr(), layout) }
            }
            Origin::Pool { pool, index } => pool.free.lock().expect("pool lock").push(*index),
        }
    }
}

/// Smallest capacity kept in the large-buffer cache.
const CACHE_MIN: usize = 256 * 1024;
/// Largest capacity kept in the large-buffer cache.
const CACHE_MAX: usize = 4 << 20;
/// Bytes kept per size class and thread (so at most 5 × 8 MiB per thread in all).
const CACHE_CLASS_BYTES: usize = 8 << 20;

/// Recycled large heap buffers by power-of-two capacity (index = log2 of the capacity).
struct LargeCache(Vec<Vec<NonNull<u8>>>);

impl Drop for LargeCache {
    fn drop(&mut self) {
        for (class, bufs) in self.0.iter().enumerate() {
            let layout = Layout::from_size_align(1 << class, ALIGN).expect("valid layout");
            for p in bufs {
                // SAFETY: every pointer here came from an IoBuf of capacity 1 << class,
                // allocated with this layout, whose ownership passed to the cache on drop.
                unsafe { dealloc(p.as_ptr(), layout) }
            }
        }
    }
}

thread_local! {
    /// Allocating and zeroing a fresh megabyte (page faults included) for every large request
    /// costs more than the I/O: large buffers are recycled per thread.
    static LARGE: std::cell::RefCell<LargeCache> = const { std::cell::RefCell::new(LargeCache(Vec::new())) };
}

fn class_of(cap: usize) -> Option<usize> {
    (cap.is_power_of_two() && (CACHE_MIN..=CACHE_MAX).contains(&cap))
        .then(|| cap.trailing_zeros() as usize)
}

impl IoBuf {
    /// A buffer of `len` payload bytes with unspecified (but initialised) contents, recycled
    /// from this thread's cache of large buffers when possible. For reads and receives, which
    /// overwrite the payload anyway.
    pub fn recycled(len: usize) -> IoBuf {
        let cap = len.max(1).next_power_of_two();
        if let Some(class) = class_of(cap) {
            let hit = LARGE
                .try_with(|l| l.borrow_mut().0.get_mut(class).and_then(|v| v.pop()))
                .ok()
                .flatten();
            if let Some(ptr) = hit {
                return IoBuf {
                    ptr,
                    len,
                    cap,
                    origin: Origin::Heap,
                };
            }
            let mut b = IoBuf::with_capacity(cap);
            b.len = len;
            return b;
        }
        IoBuf::zeroed(len)
    }
}

/// A region of aligned memory split into equal buffers, registered with one reactor's ring.
pub(crate) struct BufPool {
    inner: Arc<PoolInner>,
}

pub(crate) struct PoolInner {
    ring_id: usize,
    base: NonNull<u8>,
    buf_size: usize,
    count: usize,
    free: Mutex<Vec<u16>>,
}

// SAFETY: the region is plain memory; each slot is handed to at most one IoBuf at a time
// (guarded by the `free` Mutex), so sharing the pool between threads is sound.
unsafe impl Send for PoolInner {}
// SAFETY: see Send; all mutation of shared state goes through the Mutex.
unsafe impl Sync for PoolInner {}

impl Drop for PoolInner {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.buf_size * self.count, ALIGN).expect("valid");
        // SAFETY: allocated in BufPool::new with this layout; the last Arc is gone, so no IoBuf
        // refers to the region any more.
        unsafe { dealloc(self.base.as_ptr(), layout) }
    }
}

impl BufPool {
    /// Allocates `count` buffers of `buf_size` bytes (rounded to [`ALIGN`]).
    pub(crate) fn new(ring_id: usize, count: usize, buf_size: usize) -> BufPool {
        let count = count.clamp(1, u16::MAX as usize);
        let buf_size = buf_size.max(ALIGN).next_multiple_of(ALIGN);
        let layout = Layout::from_size_align(buf_size * count, ALIGN).expect("pool too large");
        // SAFETY: non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let base = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        let free = (0..count as u16).rev().collect();
        BufPool {
            inner: Arc::new(PoolInner {
                ring_id,
                base,
                buf_size,
                count,
                free: Mutex::new(free),
            }),
        }
    }

    /// The iovecs to register with the ring, one per buffer.
    pub(crate) fn iovecs(&self) -> Vec<libc::iovec> {
        (0..self.inner.count)
            .map(|i| libc::iovec {
                // SAFETY: i < count, so the offset stays inside the allocation.
                iov_base: unsafe { self.inner.base.as_ptr().add(i * self.inner.buf_size) }.cast(),
                iov_len: self.inner.buf_size,
            })
            .collect()
    }

    /// Takes a free buffer of `len` payload bytes, if one is free and `len` fits.
    pub(crate) fn take(&self, len: usize) -> Option<IoBuf> {
        if len > self.inner.buf_size {
            return None;
        }
        let index = self.inner.free.lock().expect("pool lock").pop()?;
        // SAFETY: index < count, so the slot lies inside the allocation.
        let ptr = unsafe {
            self.inner
                .base
                .as_ptr()
                .add(index as usize * self.inner.buf_size)
        };
        Some(IoBuf {
            ptr: NonNull::new(ptr).expect("inside a non-null allocation"),
            len,
            cap: self.inner.buf_size,
            origin: Origin::Pool {
                pool: self.inner.clone(),
                index,
            },
        })
    }
}

/// A buffer an operation can read from: its bytes stay at a stable address while it is moved.
///
/// # Safety
/// `stable_ptr` must point to `bytes_init` initialised bytes that stay valid and unmoved for as
/// long as the value lives, even when the value itself is moved (heap-backed storage).
pub unsafe trait StableBuf: 'static {
    /// Address of the first byte.
    fn stable_ptr(&self) -> *const u8;
    /// Number of initialised payload bytes.
    fn bytes_init(&self) -> usize;
}

/// A buffer an operation can write into.
///
/// # Safety
/// As for [`StableBuf`]; additionally `stable_mut_ptr` must be valid for writes of
/// `bytes_total` bytes.
pub unsafe trait StableBufMut: StableBuf {
    /// Address of the first byte, writable.
    fn stable_mut_ptr(&mut self) -> *mut u8;
    /// Total writable bytes (capacity).
    fn bytes_total(&self) -> usize;
    /// Marks `[0, n)` as the payload after the kernel filled it.
    fn set_init(&mut self, n: usize);
}

// SAFETY: the IoBuf's allocation never moves and `len` bytes are initialised.
unsafe impl StableBuf for IoBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len
    }
}

// SAFETY: the whole capacity is initialised, writable memory owned by the IoBuf.
unsafe impl StableBufMut for IoBuf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn bytes_total(&self) -> usize {
        self.cap
    }
    fn set_init(&mut self, n: usize) {
        self.set_len(n)
    }
}

// SAFETY: a Vec's heap buffer does not move when the Vec is moved; `len` bytes are initialised.
unsafe impl StableBuf for Vec<u8> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: as above; reads are only allowed into the initialised prefix `[0, len)`, so the
// capacity reported is `len` and no uninitialised memory is ever exposed. A Vec's length is
// its receive window and is never changed by an operation (`set_init` is a no-op), so a
// partial receive followed by another into the rest of the window works.
unsafe impl StableBufMut for Vec<u8> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn bytes_total(&self) -> usize {
        self.len()
    }
    fn set_init(&mut self, _n: usize) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_buffers_are_aligned_and_zeroed() {
        let b = IoBuf::zeroed(5000);
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        assert_eq!(b.capacity(), 8192);
        assert!(b.iter().all(|&x| x == 0));
    }

    #[test]
    fn large_buffers_are_recycled() {
        let a = IoBuf::recycled(1 << 20);
        let p = a.as_ptr();
        assert_eq!((a.len(), a.capacity()), (1 << 20, 1 << 20));
        drop(a);
        let b = IoBuf::recycled(700 * 1024);
        assert_eq!(b.as_ptr(), p, "a dropped 1 MiB buffer is reused");
        assert_eq!(b.len(), 700 * 1024);
        let small = IoBuf::recycled(4096);
        assert!(small.iter().all(|&x| x == 0));
    }

    #[test]
    fn pool_recycles_slots() {
        let pool = BufPool::new(3, 2, 4096);
        let a = pool.take(100).unwrap();
        let b = pool.take(4096).unwrap();
        assert!(pool.take(1).is_none());
        assert_eq!(a.registration().unwrap().0, 3);
        assert_ne!(a.registration(), b.registration());
        drop(a);
        assert!(pool.take(1).is_some());
        assert!(pool.take(8192).is_none());
    }
}
