//! Storage pools: Ballast's own on-disk format for thin volumes, snapshots and clones.
//!
//! The format and its crash-consistency argument are documented byte by byte in
//! `docs/pool-format.md`: checksums, the superblock (one pool over one device or several,
//! concatenated; labels), the metadata journal and checkpoints, the metadata state machine,
//! and the I/O layer that serves volumes as `blockdev` devices.

#![forbid(unsafe_code)]

pub mod assemble;
pub mod blank;
pub mod check;
pub mod codec;
pub mod crc;
pub mod error;
pub mod meta;
pub mod pool;
pub mod superblock;
