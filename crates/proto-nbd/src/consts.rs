//! Numeric constants of the NBD protocol.
//!
//! Names follow the protocol document with the leading `NBD_` dropped, so
//! `NBD_OPT_GO` is [`OPT_GO`] and `NBD_CMD_FLAG_FUA` is [`CMD_FLAG_FUA`]. The
//! integer type of each constant is the width of the wire field that carries
//! it, so a constant can be compared with a parsed field without casts.
//!
//! All multi-byte values travel big-endian ("network byte order"), as the
//! document's "Conventions" section requires.

// ---------------------------------------------------------------------------
// Magic numbers ("Newstyle negotiation", "Fixed newstyle negotiation",
// "Request message", "Simple reply message", "Structured reply chunk message")
// ---------------------------------------------------------------------------

/// First 8 bytes the server sends: ASCII `NBDMAGIC` (a.k.a. `INIT_PASSWD`).
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// ASCII `IHAVEOPT`: second word of the newstyle greeting, and the prefix of
/// every option the client sends during option haggling.
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// Prefix of every fixed-newstyle option reply sent by the server.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Prefix of a (compact) transmission-phase request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Prefix of a simple reply (historically `NBD_REPLY_MAGIC`).
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Prefix of each structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// Prefix of an extended-header request. Extended headers are not
/// implemented by this crate; the value is kept so it can be recognised.
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
/// Prefix of an extended-header reply chunk (not implemented, see above).
pub const EXTENDED_REPLY_MAGIC: u32 = 0x6e8a_278c;

// ---------------------------------------------------------------------------
// Handshake flags (16 bits, server -> client; "Handshake flags")
// ---------------------------------------------------------------------------

/// The server speaks fixed newstyle negotiation.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// The server can omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;

// ---------------------------------------------------------------------------
// Client flags (32 bits, client -> server; "Client flags")
// ---------------------------------------------------------------------------

/// The client speaks fixed newstyle negotiation.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// The client asks the server to omit the 124 zero bytes.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;
/// Every client flag this crate knows; any other bit is a protocol error.
pub const CLIENT_FLAGS_KNOWN: u32 = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;

// ---------------------------------------------------------------------------
// Transmission flags (16 bits, server -> client; "Transmission flags")
// ---------------------------------------------------------------------------

/// Always set: marks the field as meaningful.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
/// The export is read-only; writes will fail.
pub const FLAG_READ_ONLY: u16 = 1 << 1;
/// `NBD_CMD_FLUSH` is supported.
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
/// `NBD_CMD_FLAG_FUA` is supported.
pub const FLAG_SEND_FUA: u16 = 1 << 3;
/// Hint: the export behaves like rotating media.
pub const FLAG_ROTATIONAL: u16 = 1 << 4;
/// `NBD_CMD_TRIM` is supported.
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
/// `NBD_CMD_WRITE_ZEROES` (and `NBD_CMD_FLAG_NO_HOLE`) are supported.
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// `NBD_CMD_FLAG_DF` is honoured on reads (needs structured replies).
pub const FLAG_SEND_DF: u16 = 1 << 7;
/// Flush/FUA effects are visible across all connections to the export.
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// `NBD_CMD_RESIZE` is supported (experimental extension).
pub const FLAG_SEND_RESIZE: u16 = 1 << 9;
/// `NBD_CMD_CACHE` is understood.
pub const FLAG_SEND_CACHE: u16 = 1 << 10;
/// `NBD_CMD_FLAG_FAST_ZERO` is honoured on write-zeroes.
pub const FLAG_SEND_FAST_ZERO: u16 = 1 << 11;
/// Block status requests may carry a payload (extended headers only).
pub const FLAG_BLOCK_STAT_PAYLOAD: u16 = 1 << 12;

// ---------------------------------------------------------------------------
// Option codes (32 bits; "Option types")
// ---------------------------------------------------------------------------

/// Select an export and enter transmission (cannot report errors).
pub const OPT_EXPORT_NAME: u32 = 1;
/// End negotiation politely.
pub const OPT_ABORT: u32 = 2;
/// List exports.
pub const OPT_LIST: u32 = 3;
/// Withdrawn experimental option; treat as unknown.
pub const OPT_PEEK_EXPORT: u32 = 4;
/// Upgrade the connection to TLS.
pub const OPT_STARTTLS: u32 = 5;
/// Query an export without entering transmission.
pub const OPT_INFO: u32 = 6;
/// Query an export and enter transmission on success.
pub const OPT_GO: u32 = 7;
/// Enable structured replies.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// List metadata contexts.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// Select metadata contexts for `NBD_CMD_BLOCK_STATUS`.
pub const OPT_SET_META_CONTEXT: u32 = 10;
/// Enable extended (64-bit) headers. Recognised, not implemented.
pub const OPT_EXTENDED_HEADERS: u32 = 11;

// ---------------------------------------------------------------------------
// Option reply types (32 bits; "Option reply types")
// ---------------------------------------------------------------------------

/// Success / end of a list. No payload.
pub const REP_ACK: u32 = 1;
/// One export in the answer to `NBD_OPT_LIST`.
pub const REP_SERVER: u32 = 2;
/// One information item in the answer to `NBD_OPT_INFO`/`NBD_OPT_GO`.
pub const REP_INFO: u32 = 3;
/// One metadata context in the answer to the meta-context options.
pub const REP_META_CONTEXT: u32 = 4;

/// Bit 31 marks an option reply type as an error.
pub const REP_FLAG_ERROR: u32 = 1 << 31;
/// The option is not known to this server.
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
/// The option is known but forbidden by policy.
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR | 2;
/// The option is syntactically or semantically invalid.
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
/// The option is not supported on this platform/build.
pub const REP_ERR_PLATFORM: u32 = REP_FLAG_ERROR | 4;
/// TLS must be negotiated first.
pub const REP_ERR_TLS_REQD: u32 = REP_FLAG_ERROR | 5;
/// The requested export does not exist.
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
/// The server is shutting down.
pub const REP_ERR_SHUTDOWN: u32 = REP_FLAG_ERROR | 7;
/// The client must request `NBD_INFO_BLOCK_SIZE` before `NBD_OPT_GO`.
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_FLAG_ERROR | 8;
/// The request or reply is too large to process.
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR | 9;
/// Extended headers must be negotiated first.
pub const REP_ERR_EXT_HEADER_REQD: u32 = REP_FLAG_ERROR | 10;

// ---------------------------------------------------------------------------
// Information types (16 bits; inside `NBD_REP_INFO`)
// ---------------------------------------------------------------------------

/// Export size and transmission flags (mandatory before a successful ACK).
pub const INFO_EXPORT: u16 = 0;
/// Canonical export name.
pub const INFO_NAME: u16 = 1;
/// Human-readable export description.
pub const INFO_DESCRIPTION: u16 = 2;
/// Minimum / preferred / maximum block sizes.
pub const INFO_BLOCK_SIZE: u16 = 3;

// ---------------------------------------------------------------------------
// Command types (16 bits; "Request types")
// ---------------------------------------------------------------------------

/// Read `length` bytes at `offset`.
pub const CMD_READ: u16 = 0;
/// Write the `length` bytes that follow the request header.
pub const CMD_WRITE: u16 = 1;
/// Soft disconnect; no reply.
pub const CMD_DISC: u16 = 2;
/// Persist all completed writes.
pub const CMD_FLUSH: u16 = 3;
/// Discard hint.
pub const CMD_TRIM: u16 = 4;
/// Prefetch hint.
pub const CMD_CACHE: u16 = 5;
/// Zero a range without a data payload.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// Query metadata (e.g. allocation) for a range.
pub const CMD_BLOCK_STATUS: u16 = 7;
/// Resize the export (experimental extension).
pub const CMD_RESIZE: u16 = 8;

// ---------------------------------------------------------------------------
// Command flags (16 bits; "Command flags")
// ---------------------------------------------------------------------------

/// Force unit access: reply only once the data is durable.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// Write-zeroes must not punch a hole.
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// Don't fragment: at most one content chunk in a structured read reply.
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// Block status: only one extent per context.
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// Write-zeroes: fail fast with `ENOTSUP` unless zeroing is cheap.
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;
/// Length describes a payload (extended headers only).
pub const CMD_FLAG_PAYLOAD_LEN: u16 = 1 << 5;

// ---------------------------------------------------------------------------
// Structured reply flags and types ("Structured reply flags",
// "Structured reply types")
// ---------------------------------------------------------------------------

/// This chunk is the last one for its cookie.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;

/// Empty final chunk.
pub const REPLY_TYPE_NONE: u16 = 0;
/// Offset + data.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// Offset + length of a range that reads as zeroes.
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// Context id + (length, flags) extent descriptors.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// 64-bit block status (extended headers only; not implemented).
pub const REPLY_TYPE_BLOCK_STATUS_EXT: u16 = 6;
/// Bit 15 marks a structured reply type as an error chunk.
pub const REPLY_TYPE_FLAG_ERROR: u16 = 1 << 15;
/// Error without an offset.
pub const REPLY_TYPE_ERROR: u16 = REPLY_TYPE_FLAG_ERROR | 1;
/// Error at a given offset.
pub const REPLY_TYPE_ERROR_OFFSET: u16 = REPLY_TYPE_FLAG_ERROR | 2;

// ---------------------------------------------------------------------------
// `base:allocation` metadata context ("`base:allocation` metadata context")
// ---------------------------------------------------------------------------

/// Name of the one metadata context the protocol itself defines.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// Extent is unallocated (a hole).
pub const STATE_HOLE: u32 = 1 << 0;
/// Extent reads as zeroes.
pub const STATE_ZERO: u32 = 1 << 1;

// ---------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------

/// Longest string the protocol allows (export names, queries, messages), in
/// bytes ("Conventions").
pub const MAX_STRING_LEN: usize = 4096;

/// Default TCP port for newstyle negotiation.
pub const DEFAULT_PORT: u16 = 10809;
