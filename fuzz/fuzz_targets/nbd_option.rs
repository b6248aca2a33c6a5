//! Fuzzes the option-haggling parsers of `proto-nbd`.
//!
//! Input layout: the first 4 bytes (big-endian) choose the option code, the
//! rest is the option data handed to `parse_option`. The whole input is
//! also tried as an option header and as the start of a full option
//! (header + data) the way a server would read it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use proto_nbd::{OPTION_HEADER_LEN, OptionHeader, parse_option};

fuzz_target!(|data: &[u8]| {
    if let Some((code, payload)) = data.split_first_chunk::<4>() {
        // Fold the code into the assigned range most of the time so the
        // fuzzer spends its effort on the real decoders.
        let raw = u32::from_be_bytes(*code);
        let option = if raw & 0x8000_0000 == 0 {
            raw % 13
        } else {
            raw
        };
        if let Ok(opt) = parse_option(option, payload) {
            // Whatever is accepted must survive a round trip.
            let mut wire = Vec::new();
            opt.encode(&mut wire).expect("accepted option re-encodes");
            let header = OptionHeader::parse(&wire).expect("re-encoded header parses");
            let again = parse_option(header.option, &wire[OPTION_HEADER_LEN..])
                .expect("re-encoded option parses");
            assert_eq!(again, opt);
        }
    }

    let _ = OptionHeader::parse_unbounded(data);
    if let Ok(header) = OptionHeader::parse(data) {
        let rest = &data[OPTION_HEADER_LEN..];
        let len = header.length as usize;
        if let Some(payload) = rest.get(..len) {
            let _ = parse_option(header.option, payload);
        }
    }
});
