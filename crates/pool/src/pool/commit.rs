//! Making applied metadata records durable: the journal, checkpoints, and a failed commit.

use std::sync::atomic::Ordering;
use std::task::Poll;

use blockdev::BlockError;

use crate::codec::{JOURNAL_BLOCK, encode_checkpoint, encode_journal_block};
use crate::meta::Record;

use super::{CHECKPOINT_START, Pool, PoolError, PoolErrorKind, State, join_all, write_at};

impl Pool {
    pub(super) fn push(&self, st: &mut State, rec: Record) -> Result<(), PoolError> {
        if let Some(f) = &st.failure {
            return Err(PoolError::new(PoolErrorKind::ReadOnly, f.clone()));
        }
        let freed = st.meta.apply(&rec)?;
        st.seq += 1;
        let seq = st.seq;
        self.applied.store(seq, Ordering::Release);
        st.freed_pending.extend(freed.into_iter().map(|c| (c, seq)));
        st.pending.push(rec);
        Ok(())
    }

    /// Makes every applied record durable: flushes data, then writes the journal (and a
    /// checkpoint when the journal fills) and flushes again.
    pub async fn commit(&self) -> Result<(), PoolError> {
        // One commit at a time; a commit that finds nothing pending is free.
        std::future::poll_fn(|cx| {
            let mut st = self.state.lock().expect("pool lock");
            if st.committing {
                st.waiters.0.push(cx.waker().clone());
                Poll::Pending
            } else {
                st.committing = true;
                Poll::Ready(())
            }
        })
        .await;
        let r = if self.failed.load(Ordering::Acquire) {
            Err(self.failed_error())
        } else {
            self.commit_inner().await
        };
        let waiters = {
            let mut st = self.state.lock().expect("pool lock");
            st.committing = false;
            std::mem::take(&mut st.waiters.0)
        };
        for w in waiters {
            w.wake();
        }
        r
    }

    pub(super) async fn commit_inner(&self) -> Result<(), PoolError> {
        // Take the records first, then flush: every record taken describes data whose write
        // completed before the record was pushed, so this flush makes that data durable before
        // any journal block that points at it. (Flushing first would let a write complete
        // between the flush and the take, and its record reach the disk before its data.)
        let blocks = self.sb.journal_bytes / JOURNAL_BLOCK as u64;
        let taken = {
            let mut st = self.state.lock().expect("pool lock");
            if st.pending.is_empty() {
                None
            } else {
                let records = std::mem::take(&mut st.pending);
                let last = st.seq;
                let mut encoded = Vec::new();
                let mut seq = st.durable_seq + 1;
                let mut rest = &records[..];
                while !rest.is_empty() {
                    let (blk, n) = encode_journal_block(seq, rest);
                    encoded.push(blk);
                    seq += n as u64;
                    rest = &rest[n..];
                }
                let start = st.journal_next;
                let end = (start + encoded.len() as u64) % blocks;
                // Past half the ring since the last checkpoint: checkpoint the state as of
                // `last`, replay starting after this commit's blocks. The blocks are written
                // too, so the older checkpoint plus the journal stays a complete fallback.
                let checkpoint = (st.journal_used + encoded.len() as u64 > blocks / 2)
                    .then(|| (encode_checkpoint(&st.meta, last, end), 1 - st.slot));
                Some((encoded, last, start, end, checkpoint))
            }
        };
        let Some((encoded, last_seq, start, end, checkpoint)) = taken else {
            return self.flush_data().await.map_err(PoolError::from);
        };
        // The records are out of `pending`: if they do not reach the disk, later ones cannot
        // follow them in order, so any failure from here on makes the pool read-only.
        let r = self
            .write_journal(&encoded, start, end, checkpoint.as_ref())
            .await;
        if let Err(e) = r {
            self.fail(format!("metadata commit failed ({e})"));
            return Err(self.failed_error());
        }
        let mut st = self.state.lock().expect("pool lock");
        st.journal_next = end;
        match checkpoint {
            Some((_, slot)) => {
                st.slot = slot;
                st.journal_used = 0;
            }
            None => st.journal_used += encoded.len() as u64,
        }
        st.durable_seq = last_seq;
        self.durable.store(last_seq, Ordering::Release);
        st.freed_pending.retain(|_, &mut s| s > last_seq);
        Ok(())
    }

    /// Flushes every member device.
    pub(super) async fn flush_data(&self) -> Result<(), BlockError> {
        let devs = self.devices();
        if let [only] = &devs[..] {
            return only.flush().await;
        }
        join_all(devs.iter().map(|d| d.flush()).collect()).await
    }

    pub(super) async fn write_journal(
        &self,
        encoded: &[[u8; JOURNAL_BLOCK]],
        start: u64,
        end: u64,
        checkpoint: Option<&(Vec<u8>, u8)>,
    ) -> Result<(), PoolError> {
        let blocks = self.sb.journal_bytes / JOURNAL_BLOCK as u64;
        self.flush_data().await?;
        let jstart = CHECKPOINT_START + 2 * self.sb.checkpoint_bytes;
        let mut pos = start;
        for blk in encoded {
            write_at(&self.dev, jstart + pos * JOURNAL_BLOCK as u64, blk).await?;
            pos = (pos + 1) % blocks;
        }
        // The block after the tail must not look like a continuation from an older lap.
        write_at(
            &self.dev,
            jstart + end * JOURNAL_BLOCK as u64,
            &[0u8; JOURNAL_BLOCK],
        )
        .await?;
        if let Some((bytes, slot)) = checkpoint {
            if bytes.len() as u64 > self.sb.checkpoint_bytes {
                return Err(PoolError::no_space(
                    "metadata does not fit its checkpoint slot",
                ));
            }
            // The journal blocks must be durable before the checkpoint that skips them.
            self.dev.flush().await?;
            write_at(
                &self.dev,
                CHECKPOINT_START + *slot as u64 * self.sb.checkpoint_bytes,
                bytes,
            )
            .await?;
        }
        self.dev.flush().await?;
        Ok(())
    }

    /// Whether applied metadata changes are not durable yet: waiting for a commit, or in
    /// one that has not finished. Takes no lock.
    pub fn has_pending(&self) -> bool {
        self.not_durable()
    }
}
