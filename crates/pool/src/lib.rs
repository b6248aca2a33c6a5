//! Storage pools: Ballast's own on-disk format for thin volumes, snapshots and clones.
//!
//! The format and its crash-consistency argument are documented byte by byte in
//! `docs/pool-format.md`. This crate is being built bottom-up: the checksum, the superblock
//! codec and the metadata state machine exist; the I/O layer over `blockdev` comes next.

#![forbid(unsafe_code)]

pub mod codec;
pub mod crc;
pub mod meta;
pub mod pool;
pub mod superblock;
