//! Options sent by the client during option haggling.
//!
//! Every option is a 16-byte [`OptionHeader`] followed by `length` bytes of
//! option-specific data. A server reads the header, reads exactly `length`
//! more bytes, and hands both to [`parse_option`].
//!
//! Protocol document sections: "Newstyle negotiation" (generic option
//! format) and "Option types".

use crate::consts::{
    IHAVEOPT, OPT_ABORT, OPT_EXPORT_NAME, OPT_EXTENDED_HEADERS, OPT_GO, OPT_INFO, OPT_LIST,
    OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT, OPT_STARTTLS, OPT_STRUCTURED_REPLY,
};
use crate::error::{Error, Result};
use crate::wire::{
    ArrayWriter, Cursor, check_string, decode_string, fixed, len_u32, put_u16, put_u32,
};

/// Size of an option header.
pub const OPTION_HEADER_LEN: usize = 16;

/// Largest option payload [`OptionHeader::parse`] accepts, so a server never
/// allocates an unbounded buffer on a client's say-so. Every option the
/// protocol defines fits comfortably: the longest realistic one is a
/// meta-context request with a few 4 KiB query strings.
pub const MAX_OPTION_LEN: u32 = 64 * 1024;

/// The fixed part of a client option ("Newstyle negotiation"):
///
/// ```text
/// 64 bits  IHAVEOPT (0x49484156454F5054)
/// 32 bits  option code
/// 32 bits  length of the option data that follows
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// Option code, e.g. [`OPT_GO`](crate::consts::OPT_GO).
    pub option: u32,
    /// Number of data bytes following the header.
    pub length: u32,
}

impl OptionHeader {
    /// Parses the first [`OPTION_HEADER_LEN`] bytes of `b`.
    ///
    /// Fails with [`Error::BadMagic`] if the `IHAVEOPT` prefix is missing and
    /// with [`Error::TooLarge`] if `length` exceeds [`MAX_OPTION_LEN`]. In the
    /// latter case the header was otherwise well formed; a server that wants
    /// to answer with `NBD_REP_ERR_TOO_BIG` instead of disconnecting can call
    /// [`OptionHeader::parse_unbounded`] to learn the option code, discard
    /// `length` bytes without buffering them, and reply.
    pub fn parse(b: &[u8]) -> Result<OptionHeader> {
        let h = Self::parse_unbounded(b)?;
        if h.length > MAX_OPTION_LEN {
            return Err(Error::TooLarge {
                len: u64::from(h.length),
                max: u64::from(MAX_OPTION_LEN),
            });
        }
        Ok(h)
    }

    /// Like [`OptionHeader::parse`] but without the [`MAX_OPTION_LEN`]
    /// check. Never allocate `length` bytes based on this result.
    pub fn parse_unbounded(b: &[u8]) -> Result<OptionHeader> {
        let mut c = fixed::<OPTION_HEADER_LEN>(b)?;
        let magic = c.u64()?;
        if magic != IHAVEOPT {
            return Err(Error::BadMagic {
                expected: IHAVEOPT,
                found: magic,
            });
        }
        Ok(OptionHeader {
            option: c.u32()?,
            length: c.u32()?,
        })
    }

    /// The 16 header bytes, as a client sends them.
    #[must_use]
    pub fn encode(&self) -> [u8; OPTION_HEADER_LEN] {
        ArrayWriter::new()
            .u64(IHAVEOPT)
            .u32(self.option)
            .u32(self.length)
            .finish()
    }
}

/// A decoded client option ("Option types").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOption {
    /// `NBD_OPT_EXPORT_NAME` (1): the whole payload is the export name (empty
    /// means the default export). Ends negotiation; the server answers with
    /// [`export_name_reply`](crate::export_name_reply) or closes the
    /// connection, never with an option reply.
    ExportName(String),
    /// `NBD_OPT_ABORT` (2): the client is leaving. Reply [`REP_ACK`] (the
    /// client may not wait for it). Per the document, any payload is
    /// ignored rather than rejected.
    ///
    /// [`REP_ACK`]: crate::consts::REP_ACK
    Abort,
    /// `NBD_OPT_LIST` (3): answer with one `NBD_REP_SERVER` per export, then
    /// `NBD_REP_ACK`. Takes no data.
    List,
    /// `NBD_OPT_STARTTLS` (5): upgrade to TLS. Takes no data.
    StartTls,
    /// `NBD_OPT_INFO` (6): describe an export without entering transmission.
    Info {
        /// Export name (empty means the default export).
        export: String,
        /// Requested `NBD_INFO_*` items, in the order sent. Unknown types are
        /// kept; the server must ignore the ones it does not understand.
        info_requests: Vec<u16>,
    },
    /// `NBD_OPT_GO` (7): like [`ClientOption::Info`], then enter transmission
    /// once the server replies `NBD_REP_ACK`.
    Go {
        /// Export name (empty means the default export).
        export: String,
        /// Requested `NBD_INFO_*` items, in the order sent.
        info_requests: Vec<u16>,
    },
    /// `NBD_OPT_STRUCTURED_REPLY` (8): enable structured replies. Takes no
    /// data.
    StructuredReply,
    /// `NBD_OPT_LIST_META_CONTEXT` (9): list metadata contexts matching the
    /// queries (all contexts if there are none).
    ListMetaContext {
        /// Export the contexts are for.
        export: String,
        /// Query strings, e.g. `"base:"` or `"base:allocation"`.
        queries: Vec<String>,
    },
    /// `NBD_OPT_SET_META_CONTEXT` (10): select the metadata contexts that
    /// `NBD_CMD_BLOCK_STATUS` will report (none if there are no queries).
    SetMetaContext {
        /// Export the contexts are for.
        export: String,
        /// Query strings.
        queries: Vec<String>,
    },
    /// `NBD_OPT_EXTENDED_HEADERS` (11). Takes no data. This crate does not
    /// implement extended headers, so a server typically answers
    /// `NBD_REP_ERR_UNSUP`.
    ExtendedHeaders,
    /// Any other option code (including the withdrawn `NBD_OPT_PEEK_EXPORT`).
    /// Its payload is not inspected; a server answers `NBD_REP_ERR_UNSUP`
    /// and carries on ("Compatibility and interoperability": servers must
    /// not fail to parse the next option).
    Unknown(u32),
}

impl ClientOption {
    /// The option code this value is sent with.
    #[must_use]
    pub fn code(&self) -> u32 {
        match self {
            ClientOption::ExportName(_) => OPT_EXPORT_NAME,
            ClientOption::Abort => OPT_ABORT,
            ClientOption::List => OPT_LIST,
            ClientOption::StartTls => OPT_STARTTLS,
            ClientOption::Info { .. } => OPT_INFO,
            ClientOption::Go { .. } => OPT_GO,
            ClientOption::StructuredReply => OPT_STRUCTURED_REPLY,
            ClientOption::ListMetaContext { .. } => OPT_LIST_META_CONTEXT,
            ClientOption::SetMetaContext { .. } => OPT_SET_META_CONTEXT,
            ClientOption::ExtendedHeaders => OPT_EXTENDED_HEADERS,
            ClientOption::Unknown(code) => *code,
        }
    }

    /// Appends the complete option (header and data) to `out`, as a client
    /// sends it. [`ClientOption::Unknown`] is sent with no data.
    ///
    /// Fails with [`Error::TooLarge`] if a string exceeds
    /// [`MAX_STRING_LEN`](crate::consts::MAX_STRING_LEN), if there are more than 65535 info requests, or if
    /// the data would exceed [`MAX_OPTION_LEN`]; `out` is left unchanged on
    /// error.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        let mut data = Vec::new();
        match self {
            ClientOption::ExportName(name) => {
                check_string(name)?;
                data.extend_from_slice(name.as_bytes());
            }
            ClientOption::Info {
                export,
                info_requests,
            }
            | ClientOption::Go {
                export,
                info_requests,
            } => {
                put_string_u32(&mut data, export)?;
                let n = u16::try_from(info_requests.len()).map_err(|_| Error::TooLarge {
                    len: info_requests.len() as u64,
                    max: u64::from(u16::MAX),
                })?;
                put_u16(&mut data, n);
                for &r in info_requests {
                    put_u16(&mut data, r);
                }
            }
            ClientOption::ListMetaContext { export, queries }
            | ClientOption::SetMetaContext { export, queries } => {
                put_string_u32(&mut data, export)?;
                put_u32(&mut data, len_u32(queries.len())?);
                for q in queries {
                    put_string_u32(&mut data, q)?;
                }
            }
            ClientOption::Abort
            | ClientOption::List
            | ClientOption::StartTls
            | ClientOption::StructuredReply
            | ClientOption::ExtendedHeaders
            | ClientOption::Unknown(_) => {}
        }
        let length = len_u32(data.len())?;
        if length > MAX_OPTION_LEN {
            return Err(Error::TooLarge {
                len: u64::from(length),
                max: u64::from(MAX_OPTION_LEN),
            });
        }
        let header = OptionHeader {
            option: self.code(),
            length,
        };
        out.extend_from_slice(&header.encode());
        out.extend_from_slice(&data);
        Ok(())
    }
}

fn put_string_u32(out: &mut Vec<u8>, s: &str) -> Result<()> {
    check_string(s)?;
    put_u32(out, len_u32(s.len())?);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Decodes the data of option `option` (the code from its
/// [`OptionHeader`]). `payload` must be exactly the `length` bytes that
/// followed the header.
///
/// Validation is strict and never trusts a count or length field beyond what
/// `payload` can actually hold:
///
/// * options without data (`LIST`, `STARTTLS`, `STRUCTURED_REPLY`,
///   `EXTENDED_HEADERS`) reject a non-empty payload with
///   [`Error::Malformed`]; `ABORT` ignores its payload as the document
///   recommends;
/// * embedded length fields must describe the payload exactly — short or
///   trailing bytes are [`Error::Malformed`];
/// * strings must be UTF-8 ([`Error::BadUtf8`]), free of NUL, and at most
///   [`MAX_STRING_LEN`](crate::consts::MAX_STRING_LEN) bytes ([`Error::TooLarge`]);
/// * a payload longer than [`MAX_OPTION_LEN`] is [`Error::TooLarge`].
///
/// Unrecognised codes give `Ok(ClientOption::Unknown(code))`, not an error.
/// On error a server normally answers with
/// [`Error::suggested_rep_error`] (except for `NBD_OPT_EXPORT_NAME`, which
/// cannot be answered: close the connection).
pub fn parse_option(option: u32, payload: &[u8]) -> Result<ClientOption> {
    if payload.len() > MAX_OPTION_LEN as usize {
        return Err(Error::TooLarge {
            len: payload.len() as u64,
            max: u64::from(MAX_OPTION_LEN),
        });
    }
    let no_data = |opt: ClientOption| {
        if payload.is_empty() {
            Ok(opt)
        } else {
            Err(Error::Malformed("option takes no data"))
        }
    };
    match option {
        OPT_EXPORT_NAME => Ok(ClientOption::ExportName(decode_string(payload)?)),
        OPT_ABORT => Ok(ClientOption::Abort),
        OPT_LIST => no_data(ClientOption::List),
        OPT_STARTTLS => no_data(ClientOption::StartTls),
        OPT_INFO | OPT_GO => {
            let (export, info_requests) = parse_info_request(payload)?;
            Ok(if option == OPT_INFO {
                ClientOption::Info {
                    export,
                    info_requests,
                }
            } else {
                ClientOption::Go {
                    export,
                    info_requests,
                }
            })
        }
        OPT_STRUCTURED_REPLY => no_data(ClientOption::StructuredReply),
        OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
            let (export, queries) = parse_meta_context_request(payload)?;
            Ok(if option == OPT_LIST_META_CONTEXT {
                ClientOption::ListMetaContext { export, queries }
            } else {
                ClientOption::SetMetaContext { export, queries }
            })
        }
        OPT_EXTENDED_HEADERS => no_data(ClientOption::ExtendedHeaders),
        other => Ok(ClientOption::Unknown(other)),
    }
}

/// Shared data layout of `NBD_OPT_INFO` and `NBD_OPT_GO`:
///
/// ```text
/// 32 bits       name length N (at most payload length - 6)
/// N bytes       export name
/// 16 bits       number of information requests R
/// R x 16 bits   NBD_INFO_* codes
/// ```
fn parse_info_request(payload: &[u8]) -> Result<(String, Vec<u16>)> {
    let mut c = Cursor::new(
        payload,
        Error::Malformed("NBD_OPT_INFO/GO data shorter than its length fields"),
    );
    let export = c.string_u32()?;
    let count = usize::from(c.u16()?);
    // The count must account for every remaining byte: no more, no less.
    if c.remaining() != count * 2 {
        return Err(Error::Malformed(
            "NBD_OPT_INFO/GO request count does not match the data length",
        ));
    }
    let mut info_requests = Vec::with_capacity(count);
    for _ in 0..count {
        info_requests.push(c.u16()?);
    }
    Ok((export, info_requests))
}

/// Shared data layout of `NBD_OPT_LIST_META_CONTEXT` and
/// `NBD_OPT_SET_META_CONTEXT`:
///
/// ```text
/// 32 bits   export name length N, then N bytes of name
/// 32 bits   number of queries Q
/// Q times:  32 bits query length L, then L bytes of query
/// ```
fn parse_meta_context_request(payload: &[u8]) -> Result<(String, Vec<String>)> {
    let mut c = Cursor::new(
        payload,
        Error::Malformed("meta context data shorter than its length fields"),
    );
    let export = c.string_u32()?;
    let count = c.u32()?;
    // Each query needs at least its 4-byte length, so a count the remaining
    // data cannot hold is rejected before anything is allocated for it.
    let count = usize::try_from(count)
        .ok()
        .filter(|&n| n <= c.remaining() / 4)
        .ok_or(Error::Malformed(
            "meta context query count exceeds what the data can hold",
        ))?;
    let mut queries = Vec::with_capacity(count);
    for _ in 0..count {
        queries.push(c.string_u32()?);
    }
    if c.remaining() != 0 {
        return Err(Error::Malformed(
            "trailing bytes after meta context queries",
        ));
    }
    Ok((export, queries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consts::{INFO_BLOCK_SIZE, INFO_EXPORT, MAX_STRING_LEN, OPT_PEEK_EXPORT};

    fn header_bytes(option: u32, length: u32) -> Vec<u8> {
        let mut v = b"IHAVEOPT".to_vec();
        v.extend_from_slice(&option.to_be_bytes());
        v.extend_from_slice(&length.to_be_bytes());
        v
    }

    #[test]
    fn full_opt_go_with_one_info_request() {
        // Built by hand from the document's layout.
        let wire: &[u8] = &[
            b'I', b'H', b'A', b'V', b'E', b'O', b'P', b'T', // magic
            0x00, 0x00, 0x00, 0x07, // NBD_OPT_GO
            0x00, 0x00, 0x00, 0x0c, // length 12 = 4 + 4 + 2 + 2
            0x00, 0x00, 0x00, 0x04, // name length
            b'd', b'i', b's', b'k', // name
            0x00, 0x01, // one information request
            0x00, 0x03, // NBD_INFO_BLOCK_SIZE
        ];
        let h = OptionHeader::parse(wire).unwrap();
        assert_eq!(
            h,
            OptionHeader {
                option: OPT_GO,
                length: 12
            }
        );
        let payload = &wire[OPTION_HEADER_LEN..];
        assert_eq!(payload.len(), h.length as usize);
        let opt = parse_option(h.option, payload).unwrap();
        assert_eq!(
            opt,
            ClientOption::Go {
                export: "disk".into(),
                info_requests: vec![INFO_BLOCK_SIZE],
            }
        );
        let mut re = Vec::new();
        opt.encode(&mut re).unwrap();
        assert_eq!(re, wire);
    }

    #[test]
    fn info_with_empty_name_and_no_requests() {
        let opt = parse_option(OPT_INFO, &[0, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(
            opt,
            ClientOption::Info {
                export: String::new(),
                info_requests: vec![],
            }
        );
    }

    #[test]
    fn info_length_mismatches_are_rejected() {
        // Name length larger than the data.
        assert!(matches!(
            parse_option(OPT_GO, &[0, 0, 0, 9, b'd', b'i', b's', b'k', 0, 0]),
            Err(Error::Malformed(_))
        ));
        // Count says 2, only one present.
        assert!(matches!(
            parse_option(OPT_GO, &[0, 0, 0, 0, 0, 2, 0, 3]),
            Err(Error::Malformed(_))
        ));
        // Trailing byte after the requests.
        assert!(matches!(
            parse_option(OPT_GO, &[0, 0, 0, 0, 0, 1, 0, 3, 0]),
            Err(Error::Malformed(_))
        ));
        // Too short to hold even the fixed fields.
        assert!(matches!(
            parse_option(OPT_GO, &[0, 0, 0, 0, 0]),
            Err(Error::Malformed(_))
        ));
        // Name length near u32::MAX must not be trusted.
        assert!(matches!(
            parse_option(OPT_INFO, &[0xff, 0xff, 0xff, 0xfa, 0, 0]),
            Err(Error::Malformed(_))
        ));
        // Invalid UTF-8 in the name.
        assert_eq!(
            parse_option(OPT_GO, &[0, 0, 0, 1, 0xc3, 0, 0]),
            Err(Error::BadUtf8)
        );
    }

    #[test]
    fn export_name() {
        assert_eq!(
            parse_option(OPT_EXPORT_NAME, b"vol0"),
            Ok(ClientOption::ExportName("vol0".into()))
        );
        assert_eq!(
            parse_option(OPT_EXPORT_NAME, b""),
            Ok(ClientOption::ExportName(String::new()))
        );
        assert_eq!(parse_option(OPT_EXPORT_NAME, &[0xfe]), Err(Error::BadUtf8));
        assert!(matches!(
            parse_option(OPT_EXPORT_NAME, b"a\0"),
            Err(Error::Malformed(_))
        ));
        assert!(matches!(
            parse_option(OPT_EXPORT_NAME, &vec![b'x'; MAX_STRING_LEN + 1]),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn dataless_options() {
        assert_eq!(parse_option(OPT_LIST, &[]), Ok(ClientOption::List));
        assert_eq!(parse_option(OPT_STARTTLS, &[]), Ok(ClientOption::StartTls));
        assert_eq!(
            parse_option(OPT_STRUCTURED_REPLY, &[]),
            Ok(ClientOption::StructuredReply)
        );
        assert_eq!(
            parse_option(OPT_EXTENDED_HEADERS, &[]),
            Ok(ClientOption::ExtendedHeaders)
        );
        for code in [
            OPT_LIST,
            OPT_STARTTLS,
            OPT_STRUCTURED_REPLY,
            OPT_EXTENDED_HEADERS,
        ] {
            assert_eq!(
                parse_option(code, &[0]),
                Err(Error::Malformed("option takes no data")),
                "option {code}"
            );
        }
        // ABORT: the server should ignore stray data rather than reject it.
        assert_eq!(parse_option(OPT_ABORT, &[]), Ok(ClientOption::Abort));
        assert_eq!(parse_option(OPT_ABORT, &[1, 2]), Ok(ClientOption::Abort));
    }

    #[test]
    fn unknown_options_are_not_errors() {
        assert_eq!(
            parse_option(OPT_PEEK_EXPORT, &[1, 2, 3]),
            Ok(ClientOption::Unknown(OPT_PEEK_EXPORT))
        );
        assert_eq!(
            parse_option(0xdead_beef, &[]),
            Ok(ClientOption::Unknown(0xdead_beef))
        );
        assert_eq!(parse_option(0, &[]), Ok(ClientOption::Unknown(0)));
    }

    #[test]
    fn meta_context_requests() {
        let mut p = Vec::new();
        p.extend_from_slice(&4u32.to_be_bytes());
        p.extend_from_slice(b"disk");
        p.extend_from_slice(&2u32.to_be_bytes());
        p.extend_from_slice(&15u32.to_be_bytes());
        p.extend_from_slice(b"base:allocation");
        p.extend_from_slice(&5u32.to_be_bytes());
        p.extend_from_slice(b"qemu:");
        let want_queries = vec!["base:allocation".to_string(), "qemu:".to_string()];
        assert_eq!(
            parse_option(OPT_SET_META_CONTEXT, &p),
            Ok(ClientOption::SetMetaContext {
                export: "disk".into(),
                queries: want_queries.clone(),
            })
        );
        assert_eq!(
            parse_option(OPT_LIST_META_CONTEXT, &p),
            Ok(ClientOption::ListMetaContext {
                export: "disk".into(),
                queries: want_queries,
            })
        );
        // Trailing garbage.
        let mut t = p.clone();
        t.push(0);
        assert!(matches!(
            parse_option(OPT_SET_META_CONTEXT, &t),
            Err(Error::Malformed(_))
        ));
        // Truncated last query.
        assert!(matches!(
            parse_option(OPT_SET_META_CONTEXT, &p[..p.len() - 1]),
            Err(Error::Malformed(_))
        ));
        // Zero queries is valid.
        let z = [0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            parse_option(OPT_LIST_META_CONTEXT, &z),
            Ok(ClientOption::ListMetaContext {
                export: String::new(),
                queries: vec![],
            })
        );
    }

    #[test]
    fn meta_context_huge_count_is_rejected_before_allocating() {
        // Claims 4 billion queries in 8 bytes of data.
        let p = [0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        assert_eq!(
            parse_option(OPT_SET_META_CONTEXT, &p),
            Err(Error::Malformed(
                "meta context query count exceeds what the data can hold"
            ))
        );
    }

    #[test]
    fn header_errors() {
        let good = header_bytes(OPT_LIST, 0);
        assert_eq!(
            OptionHeader::parse(&good[..15]),
            Err(Error::Truncated { need: 16, have: 15 })
        );
        let mut bad = good.clone();
        bad[7] = b'X';
        assert!(matches!(
            OptionHeader::parse(&bad),
            Err(Error::BadMagic {
                expected: IHAVEOPT,
                ..
            })
        ));
        let big = header_bytes(OPT_GO, MAX_OPTION_LEN + 1);
        assert_eq!(
            OptionHeader::parse(&big),
            Err(Error::TooLarge {
                len: u64::from(MAX_OPTION_LEN) + 1,
                max: u64::from(MAX_OPTION_LEN),
            })
        );
        assert_eq!(
            OptionHeader::parse(&big).unwrap_err().suggested_rep_error(),
            crate::consts::REP_ERR_TOO_BIG
        );
        assert_eq!(
            OptionHeader::parse_unbounded(&big),
            Ok(OptionHeader {
                option: OPT_GO,
                length: MAX_OPTION_LEN + 1
            })
        );
        let max = header_bytes(OPT_GO, MAX_OPTION_LEN);
        assert!(OptionHeader::parse(&max).is_ok());
        // Extra bytes after the header are not examined.
        let mut longer = good.clone();
        longer.extend_from_slice(&[9, 9, 9]);
        assert_eq!(OptionHeader::parse(&longer), OptionHeader::parse(&good));
    }

    #[test]
    fn oversized_payload_is_rejected() {
        let p = vec![0u8; MAX_OPTION_LEN as usize + 1];
        assert!(matches!(
            parse_option(OPT_EXPORT_NAME, &p),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn encode_rejects_oversized_strings() {
        let opt = ClientOption::Go {
            export: "x".repeat(MAX_STRING_LEN + 1),
            info_requests: vec![INFO_EXPORT],
        };
        let mut out = vec![1, 2];
        assert!(matches!(opt.encode(&mut out), Err(Error::TooLarge { .. })));
        assert_eq!(out, [1, 2]);
    }
}
