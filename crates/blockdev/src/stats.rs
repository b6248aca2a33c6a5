//! Per-device statistics: operation counters and a latency histogram.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use crate::{BlockDevice, Device, IoBuf, IoFuture, Result, WriteFlags, ZeroFlags};

/// Number of histogram buckets: bucket `i` counts latencies in `(2^(i-1), 2^i]` µs, the first
/// `<= 1 µs` and the last everything above ~0.5 s.
pub const BUCKETS: usize = 20;

/// A lock-free log2 latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Records one latency.
    pub fn record(&self, ns: u64) {
        let us = ns.div_ceil(1000).max(1);
        let idx = (64 - (us - 1).leading_zeros()) as usize;
        self.buckets[idx.min(BUCKETS - 1)].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Upper bound of bucket `i` in nanoseconds.
    pub fn bound_ns(i: usize) -> u64 {
        if i == BUCKETS - 1 {
            u64::MAX
        } else {
            (1u64 << i) * 1000
        }
    }

    /// (upper bound ns, count) per bucket, mean, p50 and p99 (bucket upper bounds).
    pub fn snapshot(&self) -> (Vec<(u64, u64)>, u64, u64, u64) {
        let b: Vec<(u64, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, c)| (Self::bound_ns(i), c.load(Relaxed)))
            .collect();
        let n = self.count.load(Relaxed);
        let mean = self.sum_ns.load(Relaxed).checked_div(n).unwrap_or(0);
        let q = |frac: f64| {
            let want = (n as f64 * frac).ceil() as u64;
            let mut acc = 0;
            for &(bound, c) in &b {
                acc += c;
                if acc >= want && want > 0 {
                    return bound;
                }
            }
            0
        };
        (b.clone(), mean, q(0.5), q(0.99))
    }
}

/// Counters of one kind of operation.
#[derive(Debug, Default)]
pub struct OpCounters {
    /// Completed operations.
    pub ops: AtomicU64,
    /// Bytes moved (or affected, for unmap and zeroes).
    pub bytes: AtomicU64,
    /// Failed operations.
    pub errors: AtomicU64,
}

impl OpCounters {
    fn note<T>(&self, r: &Result<T>, bytes: u64) {
        match r {
            Ok(_) => {
                self.ops.fetch_add(1, Relaxed);
                self.bytes.fetch_add(bytes, Relaxed);
            }
            Err(_) => {
                self.errors.fetch_add(1, Relaxed);
            }
        }
    }

    /// (ops, bytes, errors).
    pub fn get(&self) -> (u64, u64, u64) {
        (
            self.ops.load(Relaxed),
            self.bytes.load(Relaxed),
            self.errors.load(Relaxed),
        )
    }
}

/// A point-in-time copy of a device's statistics.
#[derive(Clone, Debug, Default)]
pub struct StatsSnapshot {
    /// (ops, bytes, errors) of reads.
    pub read: (u64, u64, u64),
    /// Of writes.
    pub write: (u64, u64, u64),
    /// Of flushes.
    pub flush: (u64, u64, u64),
    /// Of unmaps.
    pub unmap: (u64, u64, u64),
    /// Of write-zeroes.
    pub write_zeroes: (u64, u64, u64),
    /// Histogram buckets: (upper bound ns, count).
    pub latency: Vec<(u64, u64)>,
    /// Mean latency.
    pub mean_ns: u64,
    /// Median latency (bucket bound).
    pub p50_ns: u64,
    /// 99th percentile latency (bucket bound).
    pub p99_ns: u64,
}

impl StatsSnapshot {
    /// Failed operations of all kinds.
    pub fn errors(&self) -> u64 {
        self.read.2 + self.write.2 + self.flush.2 + self.unmap.2 + self.write_zeroes.2
    }
}

/// Wraps a device, counting every operation and timing reads, writes and flushes.
pub struct Measured {
    inner: Device,
    read: OpCounters,
    write: OpCounters,
    flush: OpCounters,
    unmap: OpCounters,
    zeroes: OpCounters,
    latency: Histogram,
}

impl std::fmt::Debug for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Measured")
            .field("device", &self.inner.name())
            .finish()
    }
}

impl Measured {
    /// Wraps `inner`.
    pub fn new(inner: Device) -> Measured {
        Measured {
            inner,
            read: OpCounters::default(),
            write: OpCounters::default(),
            flush: OpCounters::default(),
            unmap: OpCounters::default(),
            zeroes: OpCounters::default(),
            latency: Histogram::default(),
        }
    }

    /// The wrapped device.
    pub fn inner(&self) -> &Device {
        &self.inner
    }

    /// Current statistics.
    pub fn snapshot(&self) -> StatsSnapshot {
        let (latency, mean_ns, p50_ns, p99_ns) = self.latency.snapshot();
        StatsSnapshot {
            read: self.read.get(),
            write: self.write.get(),
            flush: self.flush.get(),
            unmap: self.unmap.get(),
            write_zeroes: self.zeroes.get(),
            latency,
            mean_ns,
            p50_ns,
            p99_ns,
        }
    }
}

impl crate::Layer for Measured {
    fn inner(&self) -> &dyn BlockDevice {
        &*self.inner
    }
    fn read(&self, offset: u64, buf: IoBuf) -> IoFuture<'_, IoBuf> {
        Box::pin(async move {
            let t = Instant::now();
            let n = buf.len() as u64;
            let r = self.inner.read(offset, buf).await;
            self.latency.record(t.elapsed().as_nanos() as u64);
            self.read.note(&r, n);
            r
        })
    }
    fn write(&self, offset: u64, buf: IoBuf, flags: WriteFlags) -> IoFuture<'_, IoBuf> {
        Box::pin(async move {
            let t = Instant::now();
            let n = buf.len() as u64;
            let r = self.inner.write(offset, buf, flags).await;
            self.latency.record(t.elapsed().as_nanos() as u64);
            self.write.note(&r, n);
            r
        })
    }
    fn flush(&self) -> IoFuture<'_, ()> {
        Box::pin(async move {
            let t = Instant::now();
            let r = self.inner.flush().await;
            self.latency.record(t.elapsed().as_nanos() as u64);
            self.flush.note(&r, 0);
            r
        })
    }
    fn unmap(&self, offset: u64, len: u64) -> IoFuture<'_, ()> {
        Box::pin(async move {
            let r = self.inner.unmap(offset, len).await;
            self.unmap.note(&r, len);
            r
        })
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> IoFuture<'_, ()> {
        Box::pin(async move {
            let r = self.inner.write_zeroes(offset, len, flags).await;
            self.zeroes.note(&r, len);
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles() {
        let h = Histogram::default();
        for _ in 0..98 {
            h.record(3_000); // 3 µs -> bucket (2,4]
        }
        h.record(900_000);
        h.record(900_000);
        let (b, mean, p50, p99) = h.snapshot();
        assert_eq!(b.iter().map(|x| x.1).sum::<u64>(), 100);
        assert_eq!(p50, 4_000);
        assert_eq!(p99, 1_024_000);
        assert_eq!(mean, (98 * 3_000 + 2 * 900_000) / 100);
    }
}
