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
//! It also owns the socket layer every protocol shares: [`TcpStream`] / [`TcpListener`] over
//! the ring, [`BufReader`] (the buffered receive side of a stream protocol), [`Server`] (the
//! accept loop: connection cap, per-connection tasks spread over the reactors, stop), and
//! [`ShutdownHandle`] (shutting a socket down from another thread, safely); plus
//! [`block_on`] and [`percent_decode`].
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
mod reader;
pub mod server;
pub mod sync;
pub mod testing;
mod util;

pub use buf::{ALIGN, IoBuf, StableBuf, StableBufMut};
pub use core::{
    Config, Deadline, JoinHandle, ReactorHandle, ReactorStats, Runtime, alloc_buf, current_handle,
    current_id, spawn_local, spawn_now,
};
pub use mode::PollMode;
pub use net::{ShutdownHandle, TcpListener, TcpStream};
pub use op::sleep;
pub use outbox::{Chunk, Outbox, SMALL_CHUNK};
pub use reader::BufReader;
pub use server::{Connection, IdleWatch, ListenerLimits, Server, ServerStats};
pub use util::{PercentDecodeError, block_on, fd_limits, percent_decode, raise_fd_limit};
