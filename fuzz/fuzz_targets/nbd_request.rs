//! Fuzzes the transmission-phase and handshake parsers of `proto-nbd`:
//! `Request::parse`, `parse_client_flags`, and the client-side reply
//! parsers.

#![no_main]

use libfuzzer_sys::fuzz_target;
use proto_nbd::{
    ChunkHeader, OptionReplyHeader, Request, SimpleReply, parse_client_flags, parse_server_greeting,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = Request::parse(data) {
        // A parsed request re-encodes to exactly the bytes it came from.
        assert_eq!(&request.encode()[..], &data[..proto_nbd::REQUEST_LEN]);
    }
    if let Ok(flags) = parse_client_flags(data) {
        assert_eq!(flags.encode()[..], data[..4]);
    }
    let _ = parse_server_greeting(data);
    let _ = SimpleReply::parse(data);
    let _ = ChunkHeader::parse(data);
    let _ = OptionReplyHeader::parse(data);
});
