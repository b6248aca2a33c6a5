//! Ballast's thread-per-core runtime.
//!
//! One [`Runtime`] runs one reactor per configured core, each a pinned thread owning
//!
//! - an **io_uring** through which *all* of its I/O goes — files, block devices, sockets,
//!   timers and the doorbell that wakes it;
//! - a **single-threaded executor**: tasks are `!Send` futures spawned with [`spawn_local`],
//!   polled only on this thread, so the I/O path needs no locks;
//! - a **mailbox**: other threads (other reactors, the management plane) post closures with
//!   [`ReactorHandle::post`], [`ReactorHandle::spawn`] or [`ReactorHandle::call`]; an eventfd
//!   *doorbell*, kept armed as a read in the ring, wakes the reactor if it sleeps;
//! - a pool of **registered aligned buffers** ([`alloc_buf`]) used with `READ_FIXED` /
//!   `WRITE_FIXED`.
//!
//! How an idle reactor waits is its [`PollMode`]: `poll` spins, `interrupt` blocks in
//! `io_uring_enter`, `adaptive` (default) spins for a window sized from the measured event
//! rate and blocks once work dries up ([`mode::Adaptive`]).
//!
//! ## Ownership contract
//! Every ring operation owns its buffers until the kernel completes it: operations take buffers
//! by value and give them back with the result. A future dropped early (a timeout, a closed
//! connection) parks its buffers in the reactor and requests cancellation; they are freed when
//! the completion arrives, never before.

mod buf;
mod core;
pub mod mode;
mod net;
pub mod op;
mod outbox;
pub mod sync;
pub mod testing;

pub use buf::{ALIGN, IoBuf, StableBuf, StableBufMut};
pub use core::{
    Config, Deadline, JoinHandle, ReactorHandle, ReactorStats, Runtime, alloc_buf, current_handle,
    current_id, spawn_local, spawn_now,
};
pub use mode::PollMode;
pub use net::{TcpListener, TcpStream};
pub use op::sleep;
pub use outbox::{Chunk, Outbox, SMALL_CHUNK};
