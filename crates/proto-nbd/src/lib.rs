//! A codec for the NBD (Network Block Device) protocol, as described in the
//! NBD project's protocol document (`doc/proto.md` in the
//! NetworkBlockDevice/nbd repository). Section names quoted in the docs of
//! this crate refer to that document.
//!
//! The crate does no I/O and has no dependencies: parsers turn byte slices
//! into typed messages (`&[u8] -> Result<T, Error>`), encoders turn messages
//! into bytes. Sockets, buffering, TLS and all policy decisions belong to the
//! caller. Only *fixed newstyle* negotiation with compact (non-extended)
//! headers is supported.
//!
//! # How a connection proceeds
//!
//! **Handshake phase.** The server speaks first with an 18-byte
//! [greeting](server_greeting) (two magic words and its handshake flags).
//! The client answers with a 4-byte [flags word](parse_client_flags). Then
//! the client sends options, one at a time, each an
//! [`OptionHeader`] plus data (decoded by [`parse_option`]), and the server
//! answers each with one or more option replies ([`rep_ack`], [`rep_info_export`],
//! [`rep_error`], ...; all framed by an [`OptionReplyHeader`]). Options
//! negotiate features (structured replies, metadata contexts), ask about
//! exports (`NBD_OPT_LIST`, `NBD_OPT_INFO`), or end the handshake:
//! `NBD_OPT_GO` ends it when the server's answer concludes with
//! `NBD_REP_ACK`; the legacy `NBD_OPT_EXPORT_NAME` ends it with the special
//! [`export_name_reply`] (which cannot carry an error; a server that refuses
//! must close the connection). `NBD_OPT_ABORT` ends the session instead.
//!
//! **Transmission phase.** The client sends 28-byte [`Request`]s (a write is
//! followed by its data); each names a command, an offset, a length, and a
//! cookie. The server may process and answer requests in any order, matching
//! replies to requests by cookie. A reply is either a 16-byte
//! [simple reply](simple_reply) (followed by data for a successful read), or,
//! if structured replies were negotiated, one or more
//! [structured chunks](chunk_header) — data, holes, block-status extents,
//! errors — of which the last carries `NBD_REPLY_FLAG_DONE`. The client ends
//! the session with `NBD_CMD_DISC`, which gets no reply.
//!
//! # Robustness
//!
//! Parsers never panic and never allocate based on an untrusted count or
//! length beyond what the supplied bytes can hold. Fixed-size headers are
//! parsed from the front of a slice (extra bytes are ignored, too few give
//! [`Error::Truncated`]); option data must be exactly the length announced
//! in its header. Option payloads are capped at [`MAX_OPTION_LEN`].
//!
//! # Example
//!
//! ```
//! use proto_nbd::{consts, parse_option, ClientOption, OptionHeader};
//!
//! // A client asks to enter transmission on export "disk".
//! let mut wire = Vec::new();
//! ClientOption::Go { export: "disk".into(), info_requests: vec![] }
//!     .encode(&mut wire)
//!     .unwrap();
//!
//! // The server decodes it...
//! let header = OptionHeader::parse(&wire)?;
//! let data = &wire[proto_nbd::OPTION_HEADER_LEN..];
//! let opt = parse_option(header.option, data)?;
//! assert!(matches!(opt, ClientOption::Go { ref export, .. } if export == "disk"));
//!
//! // ...and answers with the export's size and flags, then ACK.
//! let mut reply = Vec::new();
//! proto_nbd::rep_info_export(&mut reply, header.option, 1 << 30, consts::FLAG_HAS_FLAGS);
//! proto_nbd::rep_ack(&mut reply, header.option);
//! assert_eq!(reply.len(), 20 + 12 + 20);
//! # Ok::<(), proto_nbd::Error>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod consts;
mod errno;
mod error;
mod handshake;
mod option;
mod option_reply;
mod reply;
mod request;
mod wire;

#[cfg(test)]
mod random_tests;

pub use errno::Errno;
pub use error::{Error, Result};
pub use handshake::{
    CLIENT_FLAGS_LEN, ClientFlags, EXPORT_NAME_REPLY_ZEROES, SERVER_GREETING_LEN,
    export_name_reply, parse_client_flags, parse_server_greeting, server_greeting,
};
pub use option::{ClientOption, MAX_OPTION_LEN, OPTION_HEADER_LEN, OptionHeader, parse_option};
pub use option_reply::{
    OPTION_REPLY_HEADER_LEN, OptionReplyHeader, encode_option_reply, rep_ack, rep_error,
    rep_info_block_size, rep_info_description, rep_info_export, rep_info_name, rep_meta_context,
    rep_server,
};
pub use reply::{
    CHUNK_HEADER_LEN, ChunkHeader, MAX_BLOCK_STATUS_EXTENTS, MAX_OFFSET_DATA_LEN,
    OFFSET_DATA_HEADER_LEN, SIMPLE_REPLY_LEN, SimpleReply, chunk_header, encode_block_status,
    encode_error_chunk, encode_error_offset_chunk, encode_offset_hole, none_chunk,
    offset_data_header, simple_reply,
};
pub use request::{Command, REQUEST_LEN, Request};
