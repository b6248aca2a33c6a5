//! NVMe/TCP header and data digests.
//!
//! Both digests are CRC32C (Castagnoli polynomial 1EDC6F41h, reflected,
//! initial value FFFFFFFFh, final XOR FFFFFFFFh — the same CRC as iSCSI)
//! stored little-endian in the 4 bytes that follow what they protect:
//!
//! * the **header digest** (HDGST) covers the PDU header, bytes
//!   `0..hlen` (common header plus PDU-specific header), and sits at
//!   `hlen..hlen+4`;
//! * the **data digest** (DDGST) covers the PDU data only (not the padding
//!   between the header and `pdo`) and sits at the very end of the PDU.
//!
//! The CRC itself comes from the `crc32c` crate, which uses the SSE 4.2
//! `crc32` instruction when the CPU has it.

/// Length of a digest on the wire.
pub const DIGEST_LEN: usize = 4;

/// CRC32C of `data` (e.g. `crc32c(b"123456789") == 0xE306_9283`).
#[must_use]
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// The 4 digest bytes for `data`, as they appear on the wire.
#[must_use]
pub fn digest_bytes(data: &[u8]) -> [u8; DIGEST_LEN] {
    crc32c(data).to_le_bytes()
}

/// A data digest computed over data that arrives (or is sent) in pieces,
/// e.g. the iovecs of one C2HData PDU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataDigest(u32);

impl DataDigest {
    /// A digest over no data yet.
    #[must_use]
    pub const fn new() -> DataDigest {
        DataDigest(0)
    }

    /// Adds the next piece of data.
    pub fn update(&mut self, data: &[u8]) {
        self.0 = crc32c::crc32c_append(self.0, data);
    }

    /// The CRC32C of everything added so far.
    #[must_use]
    pub const fn value(&self) -> u32 {
        self.0
    }

    /// The digest bytes as they appear on the wire.
    #[must_use]
    pub const fn to_bytes(&self) -> [u8; DIGEST_LEN] {
        self.0.to_le_bytes()
    }

    /// Whether the wire digest `received` matches.
    #[must_use]
    pub fn matches(&self, received: [u8; DIGEST_LEN]) -> bool {
        u32::from_le_bytes(received) == self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit-at-a-time reference CRC32C, written from the definition, to
    /// check the library against.
    fn reference(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0x82f6_3b78
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn known_vectors() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(b""), 0);
        // RFC 3720 (iSCSI) B.4 test vectors.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        let inc: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&inc), 0x46dd_794e);
        let dec: Vec<u8> = (0..32).rev().collect();
        assert_eq!(crc32c(&dec), 0x113f_db5c);
        assert_eq!(digest_bytes(b"123456789"), [0x83, 0x92, 0x06, 0xe3]);
    }

    #[test]
    fn library_matches_reference_and_streams() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 3) as u8).collect();
        for len in [0, 1, 7, 8, 9, 63, 64, 65, 1000, 5000] {
            assert_eq!(crc32c(&data[..len]), reference(&data[..len]), "len {len}");
        }
        let mut d = DataDigest::new();
        for piece in data.chunks(333) {
            d.update(piece);
        }
        assert_eq!(d.value(), reference(&data));
        assert!(d.matches(reference(&data).to_le_bytes()));
        assert!(!d.matches([0; 4]));
    }
}
