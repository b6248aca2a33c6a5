//! Range locks: application writes hold their range shared, a rebuild holds the segment it
//! copies exclusively, so a segment is never copied while a write to it is in flight.

use std::sync::Mutex;
use std::task::{Poll, Waker};

#[derive(Debug, Default)]
struct Inner {
    /// (start, end, exclusive, id)
    held: Vec<(u64, u64, bool, u64)>,
    next_id: u64,
    waiters: Vec<Waker>,
}

/// A set of byte ranges locked shared or exclusive.
#[derive(Debug, Default)]
pub struct RangeLocks {
    inner: Mutex<Inner>,
}

/// A held range; released when dropped.
#[derive(Debug)]
pub struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    id: u64,
}

impl RangeLocks {
    /// Locks `[start, end)`: shared locks coexist; an exclusive one excludes every overlap.
    pub async fn lock(&self, start: u64, end: u64, exclusive: bool) -> RangeGuard<'_> {
        let id = std::future::poll_fn(|cx| {
            let mut g = self.inner.lock().expect("range locks");
            let blocked = g
                .held
                .iter()
                .any(|&(s, e, x, _)| s < end && start < e && (x || exclusive));
            if blocked {
                g.waiters.push(cx.waker().clone());
                Poll::Pending
            } else {
                g.next_id += 1;
                let id = g.next_id;
                g.held.push((start, end, exclusive, id));
                Poll::Ready(id)
            }
        })
        .await;
        RangeGuard { locks: self, id }
    }
}

impl RangeLocks {
    /// The ranges held now, shared or exclusive.
    pub fn held(&self) -> Vec<(u64, u64)> {
        let g = self.inner.lock().expect("range locks");
        g.held.iter().map(|&(s, e, _, _)| (s, e)).collect()
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let waiters = {
            let mut g = self.locks.inner.lock().expect("range locks");
            g.held.retain(|h| h.3 != self.id);
            std::mem::take(&mut g.waiters)
        };
        for w in waiters {
            w.wake();
        }
    }
}
