//! Shared by the nexus tests: a RAM child behind the shared fault-injection device, test data,
//! a reactor.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use blockdev::fault::{FaultDevice, Ops};
use blockdev::malloc::MallocDevice;
use blockdev::{BlockDevice, ErrorKind, IoBuf};

pub const MIB: u64 = 1 << 20;
pub const SIZE: u64 = 16 * MIB;

pub fn run<T: Send + 'static, F: std::future::Future<Output = T> + 'static>(
    f: impl FnOnce() -> F + Send + 'static,
) -> T {
    reactor::testing::run_on_reactor(Duration::from_secs(300), f)
}

/// A RAM child behind the shared fault-injection device: its I/O fails (`fail`), never
/// completes (`hang`) or takes 2 ms (`slow`) on demand.
pub struct Faulty {
    /// What the nexus gets.
    pub dev: Arc<FaultDevice>,
    /// The RAM underneath, to inspect or write behind the nexus's back.
    pub inner: Arc<MallocDevice>,
}

impl Faulty {
    pub fn new() -> Arc<Faulty> {
        let inner = Arc::new(MallocDevice::new("m", SIZE, 512));
        Arc::new(Faulty {
            dev: FaultDevice::named("faulty", inner.clone()),
            inner,
        })
    }
    pub fn fail(&self, on: bool) {
        if on {
            self.dev.fail(Ops::ALL, ErrorKind::Io)
        } else {
            self.dev.heal()
        }
    }
    pub fn hang(&self, on: bool) {
        if on {
            self.dev.hang(Ops::ALL)
        } else {
            self.dev.release()
        }
    }
    /// Each I/O takes 2 ms (so several are outstanding at once).
    pub fn slow(&self, on: bool) {
        self.dev
            .delay(Duration::from_millis(if on { 2 } else { 0 }))
    }
    pub fn reads(&self) -> u64 {
        self.dev.reads()
    }
    pub async fn content(&self) -> Vec<u8> {
        self.inner
            .read(0, IoBuf::zeroed(SIZE as usize))
            .await
            .unwrap()
            .to_vec()
    }
}

pub fn pattern(seed: u64, len: usize) -> IoBuf {
    let mut b = IoBuf::zeroed(len);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in b.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    b
}
