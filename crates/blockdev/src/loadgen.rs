//! A small load generator for in-process benchmarks: `qd` tasks on the calling reactor issue
//! reads or writes of `bs` bytes, random or sequential, for a fixed time.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::{Device, WriteFlags};

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Writes (else reads).
    pub write: bool,
    /// Request size in bytes.
    pub bs: usize,
    /// Requests in flight.
    pub qd: usize,
    /// Random offsets (else sequential, each task in its own part of the span).
    pub random: bool,
}

/// First writes: every request goes to a unit never written before.
#[derive(Clone, Debug)]
pub struct Fresh {
    /// Next unit to use (shared between runs to keep going where the last one stopped).
    pub next: Rc<Cell<u64>>,
    /// Bytes per unit (e.g. a pool cluster).
    pub unit: u64,
    /// The run ends once this many units were used.
    pub limit: u64,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// What a run measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// Completed requests per second.
    pub iops: f64,
    /// Mean latency (submission to completion, as the caller sees it), µs.
    pub mean_us: f64,
    /// 99th percentile latency, µs (exact: every latency is kept).
    pub p99_us: f64,
}

/// Runs `load` against `dev` over `[base, base+span)` for `secs` seconds; returns IOPS and
/// mean latency in µs. Panics on an I/O error (a benchmark must not hide one).
pub async fn run(
    dev: Device,
    base: u64,
    span: u64,
    load: Load,
    secs: f64,
    fresh: Option<Fresh>,
) -> (f64, f64) {
    let s = run_sampled(dev, base, span, load, secs, fresh).await;
    (s.iops, s.mean_us)
}

/// As [`run`], also keeping every latency for the 99th percentile.
pub async fn run_sampled(
    dev: Device,
    base: u64,
    span: u64,
    load: Load,
    secs: f64,
    fresh: Option<Fresh>,
) -> Sample {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let lats: Rc<RefCell<Vec<u32>>> = Rc::new(RefCell::new(Vec::new()));
    let mut handles = Vec::new();
    for q in 0..load.qd {
        let (dev, lats, fresh) = (dev.clone(), lats.clone(), fresh.clone());
        handles.push(reactor::spawn_local(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((q as u64 + 1) * 7919));
            let blocks = span / load.bs as u64;
            let mut seq = q as u64 * blocks / load.qd as u64;
            let mut mine = Vec::new();
            while Instant::now() < deadline {
                let block = match (&fresh, load.random) {
                    (Some(f), _) => {
                        let b = f.next.get();
                        if b >= f.limit {
                            break;
                        }
                        f.next.set(b + 1);
                        b * f.unit / load.bs as u64
                    }
                    (None, true) => rng.next() % blocks,
                    (None, false) => {
                        seq = (seq + 1) % blocks;
                        seq
                    }
                };
                let off = base + block * load.bs as u64;
                let t = Instant::now();
                let buf = reactor::alloc_buf(load.bs);
                let r = if load.write {
                    dev.write(off, buf, WriteFlags::default()).await.map(drop)
                } else {
                    dev.read(off, buf).await.map(drop)
                };
                r.expect("benchmark I/O");
                // Nanoseconds, saturating at ~4.3 s.
                mine.push(u32::try_from(t.elapsed().as_nanos()).unwrap_or(u32::MAX));
            }
            lats.borrow_mut().extend_from_slice(&mine);
        }));
    }
    let t0 = Instant::now();
    for h in handles {
        h.await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let mut lats = lats.take();
    let n = lats.len().max(1);
    let sum: u64 = lats.iter().map(|&l| u64::from(l)).sum();
    lats.sort_unstable();
    let p99 = lats
        .get((lats.len() * 99).div_ceil(100).saturating_sub(1))
        .copied()
        .unwrap_or(0);
    Sample {
        iops: lats.len() as f64 / elapsed,
        mean_us: sum as f64 / n as f64 / 1000.0,
        p99_us: f64::from(p99) / 1000.0,
    }
}

/// The median of `v` (the mean of the middle two for an even count; 0 when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A distribution-free confidence interval for the median of the population `v` was drawn
/// from: the order statistics x(k) and x(n+1-k), 1-based, for the narrowest pair that holds
/// the median with probability at least `level`. The median lies below x(k) only if fewer
/// than k values do, which happens with probability P(B ≤ k-1), B ~ Binomial(n, 1/2); the same
/// above x(n+1-k). Returns (low, high, the confidence reached), or `None` when `v` has too few
/// values for `level` (95 % needs at least 6).
pub fn median_interval(mut v: Vec<f64>, level: f64) -> Option<(f64, f64, f64)> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let all = 2f64.powi(i32::try_from(n).ok()?);
    let (mut below, mut choose, mut best) = (0.0, 1.0, None);
    for k in 1..=n / 2 {
        // `choose` is C(n, k-1): after this, `below` is P(B ≤ k-1).
        below += choose / all;
        choose = choose * (n - k + 1) as f64 / k as f64;
        let confidence = 1.0 - 2.0 * below;
        if confidence < level {
            break;
        }
        best = Some((v[k - 1], v[n - k], confidence));
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(Vec::new()), 0.0);
    }

    #[test]
    fn median_interval_uses_the_binomial_order_statistics() {
        let v: Vec<f64> = (1..=9).rev().map(f64::from).collect();
        // Nine values: x(2)..x(8) holds the median with 1 - 2 * (1 + 9) / 512 = 96.1 %;
        // x(3)..x(7) only with 1 - 2 * 46 / 512 = 82 %.
        let (lo, hi, c) = median_interval(v.clone(), 0.95).unwrap();
        assert_eq!((lo, hi), (2.0, 8.0));
        assert!((c - (1.0 - 20.0 / 512.0)).abs() < 1e-12, "{c}");
        let (lo, hi, c) = median_interval(v, 0.80).unwrap();
        assert_eq!((lo, hi), (3.0, 7.0));
        assert!((c - (1.0 - 92.0 / 512.0)).abs() < 1e-12, "{c}");
        // Six values: only min..max, 1 - 2 / 64 = 96.9 %; five cannot reach 95 % (93.75 %).
        let six = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(
            median_interval(six, 0.95).map(|r| (r.0, r.1)),
            Some((1.0, 6.0))
        );
        assert_eq!(median_interval(vec![1.0; 5], 0.95), None);
        assert_eq!(median_interval(Vec::new(), 0.95), None);
    }
}
