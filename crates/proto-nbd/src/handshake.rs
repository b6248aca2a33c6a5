//! The opening exchange of fixed newstyle negotiation and the reply that
//! ends negotiation via `NBD_OPT_EXPORT_NAME`.
//!
//! Protocol document sections: "Newstyle negotiation", "Fixed newstyle
//! negotiation", "Handshake flags", "Client flags".

use crate::consts::{
    CLIENT_FLAGS_KNOWN, FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, FLAG_NO_ZEROES, IHAVEOPT, NBDMAGIC,
};
use crate::error::{Error, Result};
use crate::wire::{ArrayWriter, fixed};

/// Size of the server greeting: two magics and the handshake flags.
pub const SERVER_GREETING_LEN: usize = 18;
/// Size of the client's flags word.
pub const CLIENT_FLAGS_LEN: usize = 4;
/// Number of reserved zero bytes that follow the `NBD_OPT_EXPORT_NAME` reply
/// unless both sides agreed on `NO_ZEROES`.
pub const EXPORT_NAME_REPLY_ZEROES: usize = 124;

/// The first message of a newstyle connection, sent by the server:
///
/// ```text
/// 64 bits  NBDMAGIC  (0x4e42444d41474943)
/// 64 bits  IHAVEOPT  (0x49484156454F5054)
/// 16 bits  handshake flags (FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES)
/// ```
///
/// ("Newstyle negotiation".) A fixed-newstyle server passes at least
/// [`FLAG_FIXED_NEWSTYLE`](crate::consts::FLAG_FIXED_NEWSTYLE).
#[must_use]
pub fn server_greeting(handshake_flags: u16) -> [u8; SERVER_GREETING_LEN] {
    ArrayWriter::new()
        .u64(NBDMAGIC)
        .u64(IHAVEOPT)
        .u16(handshake_flags)
        .finish()
}

/// Client-side counterpart of [`server_greeting`]: checks both magics and
/// returns the handshake flags. Unknown handshake flags are returned as-is;
/// the document tells clients to ignore bits they do not understand.
pub fn parse_server_greeting(b: &[u8]) -> Result<u16> {
    let mut c = fixed::<SERVER_GREETING_LEN>(b)?;
    let magic = c.u64()?;
    if magic != NBDMAGIC {
        return Err(Error::BadMagic {
            expected: NBDMAGIC,
            found: magic,
        });
    }
    let magic = c.u64()?;
    if magic != IHAVEOPT {
        return Err(Error::BadMagic {
            expected: IHAVEOPT,
            found: magic,
        });
    }
    c.u16()
}

/// The 32-bit flags word the client sends right after the greeting
/// ("Client flags").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientFlags {
    /// `NBD_FLAG_C_FIXED_NEWSTYLE`: the client speaks fixed newstyle.
    pub fixed_newstyle: bool,
    /// `NBD_FLAG_C_NO_ZEROES`: omit the 124 zero bytes after the
    /// `NBD_OPT_EXPORT_NAME` reply.
    pub no_zeroes: bool,
}

impl ClientFlags {
    /// The wire representation of these flags.
    #[must_use]
    pub const fn bits(self) -> u32 {
        let mut v = 0;
        if self.fixed_newstyle {
            v |= FLAG_C_FIXED_NEWSTYLE;
        }
        if self.no_zeroes {
            v |= FLAG_C_NO_ZEROES;
        }
        v
    }

    /// The 4 bytes a client sends.
    #[must_use]
    pub const fn encode(self) -> [u8; CLIENT_FLAGS_LEN] {
        self.bits().to_be_bytes()
    }

    /// Checks the rule that a client may only set flags matching what the
    /// server advertised in `handshake_flags`: `NO_ZEROES` requires the
    /// server's `NBD_FLAG_NO_ZEROES`. Returns [`Error::UnknownFlags`] with
    /// the unadvertised bits; the server must then drop the connection.
    ///
    /// `FIXED_NEWSTYLE` is accepted either way (servers may honour it from
    /// any client).
    pub fn validate_against(self, handshake_flags: u16) -> Result<()> {
        if self.no_zeroes && handshake_flags & FLAG_NO_ZEROES == 0 {
            return Err(Error::UnknownFlags(FLAG_C_NO_ZEROES));
        }
        Ok(())
    }
}

/// Parses the client's flags word (the first 4 bytes of `b`).
///
/// Any bit other than `FIXED_NEWSTYLE` and `NO_ZEROES` yields
/// [`Error::UnknownFlags`] carrying the unknown bits: the document requires
/// the server to close the connection in that case.
pub fn parse_client_flags(b: &[u8]) -> Result<ClientFlags> {
    let raw = fixed::<CLIENT_FLAGS_LEN>(b)?.u32()?;
    let unknown = raw & !CLIENT_FLAGS_KNOWN;
    if unknown != 0 {
        return Err(Error::UnknownFlags(unknown));
    }
    Ok(ClientFlags {
        fixed_newstyle: raw & FLAG_C_FIXED_NEWSTYLE != 0,
        no_zeroes: raw & FLAG_C_NO_ZEROES != 0,
    })
}

/// The server's answer to `NBD_OPT_EXPORT_NAME`, which ends negotiation
/// without an option-reply header ("Newstyle negotiation"):
///
/// ```text
/// 64 bits   export size in bytes
/// 16 bits   transmission flags
/// 124 bytes zeroes, omitted when `no_zeroes` (both sides set NO_ZEROES)
/// ```
///
/// If the server cannot accept the export it has no way to say so here; it
/// must close the connection instead of calling this.
#[must_use]
pub fn export_name_reply(size: u64, transmission_flags: u16, no_zeroes: bool) -> Vec<u8> {
    let pad = if no_zeroes {
        0
    } else {
        EXPORT_NAME_REPLY_ZEROES
    };
    let mut out = Vec::with_capacity(10 + pad);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&transmission_flags.to_be_bytes());
    out.resize(10 + pad, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consts::{FLAG_FIXED_NEWSTYLE, FLAG_HAS_FLAGS, FLAG_SEND_FLUSH};

    #[test]
    fn greeting_layout() {
        let g = server_greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        let expected: [u8; 18] = [
            b'N', b'B', b'D', b'M', b'A', b'G', b'I', b'C', // NBDMAGIC
            b'I', b'H', b'A', b'V', b'E', b'O', b'P', b'T', // IHAVEOPT
            0x00, 0x03, // flags
        ];
        assert_eq!(g, expected);
        assert_eq!(parse_server_greeting(&g), Ok(0x0003));
    }

    #[test]
    fn greeting_parse_errors() {
        let g = server_greeting(1);
        assert_eq!(
            parse_server_greeting(&g[..17]),
            Err(Error::Truncated { need: 18, have: 17 })
        );
        let mut bad = g;
        bad[0] = b'X';
        assert!(matches!(
            parse_server_greeting(&bad),
            Err(Error::BadMagic {
                expected: NBDMAGIC,
                ..
            })
        ));
        let mut bad = g;
        bad[15] = b'X';
        assert!(matches!(
            parse_server_greeting(&bad),
            Err(Error::BadMagic {
                expected: IHAVEOPT,
                ..
            })
        ));
    }

    #[test]
    fn client_flags() {
        assert_eq!(
            parse_client_flags(&[0, 0, 0, 0]),
            Ok(ClientFlags {
                fixed_newstyle: false,
                no_zeroes: false
            })
        );
        let both = parse_client_flags(&[0, 0, 0, 3]).unwrap();
        assert!(both.fixed_newstyle && both.no_zeroes);
        assert_eq!(both.encode(), [0, 0, 0, 3]);
        assert_eq!(
            parse_client_flags(&[0x80, 0, 0, 1]),
            Err(Error::UnknownFlags(0x8000_0000))
        );
        assert_eq!(
            parse_client_flags(&[0, 0, 0, 4]),
            Err(Error::UnknownFlags(4))
        );
        assert_eq!(
            parse_client_flags(&[0, 0, 1]),
            Err(Error::Truncated { need: 4, have: 3 })
        );
    }

    #[test]
    fn client_flags_must_match_the_server() {
        let f = ClientFlags {
            fixed_newstyle: true,
            no_zeroes: true,
        };
        assert_eq!(
            f.validate_against(FLAG_FIXED_NEWSTYLE),
            Err(Error::UnknownFlags(FLAG_C_NO_ZEROES))
        );
        assert_eq!(
            f.validate_against(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES),
            Ok(())
        );
    }

    #[test]
    fn export_name_reply_layout() {
        let flags = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH;
        let short = export_name_reply(0x1_0000_0000, flags, true);
        assert_eq!(short, [0, 0, 0, 1, 0, 0, 0, 0, 0x00, 0x05]);
        let long = export_name_reply(0x1_0000_0000, flags, false);
        assert_eq!(long.len(), 134);
        assert_eq!(&long[..10], &short[..]);
        assert!(long[10..].iter().all(|&b| b == 0));
    }
}
