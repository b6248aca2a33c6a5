//! Fixed newstyle negotiation, client side, over any byte transport.
//!
//! The same code runs blocking (the probe made when a device is opened, on whatever thread
//! opens it) and through a reactor's ring (every connection after that): it is written against
//! the small [`Wire`] trait, whose blocking implementation never returns `Pending` (so
//! `reactor::block_on` finishes it in one poll).

use std::io::{self, Read, Write};

use proto_nbd::{self as nbd, ClientFlags, ClientOption, OptionReplyHeader, Request, consts::*};

/// Largest option reply we read (the longest legitimate one is an info or error string of at
/// most 4 KiB plus a few fields); a longer one ends the negotiation.
pub(crate) const MAX_OPTION_REPLY: u32 = 64 * 1024;

/// Largest read or write sent as one command, whatever the server allows.
pub(crate) const MAX_PAYLOAD: u32 = 32 << 20;

/// What one negotiation learnt about the export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags (`NBD_FLAG_*`).
    pub flags: u16,
    /// Minimum block size (1 when the server gave none).
    pub min_block: u32,
    /// Preferred block size (4096 when the server gave none).
    pub preferred_block: u32,
    /// Maximum block size (`u32::MAX` when the server gave none or said "no limit").
    pub max_block: u32,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// The id of the `base:allocation` metadata context, if the server selected it.
    pub allocation_context: Option<u32>,
}

impl ExportInfo {
    /// Whether transmission flag `f` is set.
    pub fn has(&self, f: u16) -> bool {
        self.flags & f != 0
    }
}

/// A byte stream the negotiation runs over.
pub(crate) trait Wire {
    /// Reads exactly `n` bytes (callers bound `n`).
    async fn read_exact(&mut self, n: usize) -> io::Result<Vec<u8>>;
    /// Writes all of `data`.
    async fn write_all(&mut self, data: Vec<u8>) -> io::Result<()>;
}

/// A connected reactor socket: every read and write is a ring operation.
pub(crate) struct RingWire<'a>(pub(crate) &'a reactor::TcpStream);

impl Wire for RingWire<'_> {
    async fn read_exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let (r, v) = self.0.recv_exact(vec![0u8; n], 0, n).await;
        r.map(|()| v)
    }
    async fn write_all(&mut self, data: Vec<u8>) -> io::Result<()> {
        self.0.send_all(data).await.0
    }
}

/// A blocking std stream (with read/write timeouts set by the caller).
pub(crate) struct BlockingWire<S>(pub(crate) S);

impl<S: Read + Write> Wire for BlockingWire<S> {
    async fn read_exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; n];
        self.0.read_exact(&mut v)?;
        Ok(v)
    }
    async fn write_all(&mut self, data: Vec<u8>) -> io::Result<()> {
        self.0.write_all(&data)
    }
}

/// Why a negotiation failed.
#[derive(Debug)]
pub(crate) enum HandshakeError {
    /// The transport failed (refused, reset, closed, timed out).
    Io(io::Error),
    /// The server broke the protocol or refused what we need; the text says how.
    Refused(String),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Io(e) => write!(f, "{e}"),
            HandshakeError::Refused(s) => f.write_str(s),
        }
    }
}

impl From<io::Error> for HandshakeError {
    fn from(e: io::Error) -> Self {
        HandshakeError::Io(e)
    }
}

impl From<nbd::Error> for HandshakeError {
    fn from(e: nbd::Error) -> Self {
        HandshakeError::Refused(format!("negotiation: {e}"))
    }
}

fn refused<T>(msg: impl Into<String>) -> Result<T, HandshakeError> {
    Err(HandshakeError::Refused(msg.into()))
}

async fn send_option<W: Wire>(w: &mut W, opt: &ClientOption) -> Result<(), HandshakeError> {
    let mut out = Vec::new();
    opt.encode(&mut out)?;
    w.write_all(out).await?;
    Ok(())
}

/// Reads one option reply to `option`: its type and its (bounded) data.
async fn read_reply<W: Wire>(w: &mut W, option: u32) -> Result<(u32, Vec<u8>), HandshakeError> {
    let h = OptionReplyHeader::parse(&w.read_exact(nbd::OPTION_REPLY_HEADER_LEN).await?)?;
    if h.option != option {
        return refused(format!(
            "server answered option {} while option {option} was asked",
            h.option
        ));
    }
    if h.length > MAX_OPTION_REPLY {
        return refused(format!(
            "option reply of {} bytes (limit {MAX_OPTION_REPLY})",
            h.length
        ));
    }
    let data = w.read_exact(h.length as usize).await?;
    Ok((h.reply_type, data))
}

/// The name of an `NBD_REP_ERR_*` reply type, for messages.
fn rep_error_name(t: u32) -> String {
    let name = match t {
        REP_ERR_UNSUP => "NBD_REP_ERR_UNSUP",
        REP_ERR_POLICY => "NBD_REP_ERR_POLICY",
        REP_ERR_INVALID => "NBD_REP_ERR_INVALID",
        REP_ERR_PLATFORM => "NBD_REP_ERR_PLATFORM",
        REP_ERR_TLS_REQD => "NBD_REP_ERR_TLS_REQD",
        REP_ERR_UNKNOWN => "NBD_REP_ERR_UNKNOWN",
        REP_ERR_SHUTDOWN => "NBD_REP_ERR_SHUTDOWN",
        REP_ERR_BLOCK_SIZE_REQD => "NBD_REP_ERR_BLOCK_SIZE_REQD",
        REP_ERR_TOO_BIG => "NBD_REP_ERR_TOO_BIG",
        other => return format!("reply type {other:#x}"),
    };
    name.to_string()
}

fn error_text(t: u32, data: &[u8]) -> String {
    let msg = String::from_utf8_lossy(&data[..data.len().min(nbd::consts::MAX_STRING_LEN)]);
    if msg.is_empty() {
        rep_error_name(t)
    } else {
        format!("{}: {msg}", rep_error_name(t))
    }
}

fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Negotiates `export` from the greeting to the transmission phase: fixed newstyle,
/// structured replies, the `base:allocation` context (when structured replies are on), then
/// `NBD_OPT_GO` asking for block sizes (falling back to `NBD_OPT_EXPORT_NAME` if the server
/// does not know `GO`).
pub(crate) async fn negotiate<W: Wire>(
    w: &mut W,
    export: &str,
) -> Result<ExportInfo, HandshakeError> {
    let greeting = w.read_exact(nbd::SERVER_GREETING_LEN).await?;
    let hflags = nbd::parse_server_greeting(&greeting)
        .map_err(|e| HandshakeError::Refused(format!("not a newstyle NBD server ({e})")))?;
    if hflags & FLAG_FIXED_NEWSTYLE == 0 {
        return refused("server does not speak fixed newstyle negotiation");
    }
    let no_zeroes = hflags & FLAG_NO_ZEROES != 0;
    let cflags = ClientFlags {
        fixed_newstyle: true,
        no_zeroes,
    };
    w.write_all(cflags.encode().to_vec()).await?;

    send_option(w, &ClientOption::StructuredReply).await?;
    let structured = match read_reply(w, OPT_STRUCTURED_REPLY).await? {
        (REP_ACK, _) => true,
        (t, _) if t & REP_FLAG_ERROR != 0 => false,
        (t, _) => return refused(format!("unexpected reply {t} to NBD_OPT_STRUCTURED_REPLY")),
    };

    let mut allocation_context = None;
    if structured {
        send_option(
            w,
            &ClientOption::SetMetaContext {
                export: export.to_string(),
                queries: vec![BASE_ALLOCATION.to_string()],
            },
        )
        .await?;
        // One NBD_REP_META_CONTEXT per selected context, then ACK; an error means none. We
        // asked for one context: a long list is a broken server.
        let mut replies = 0;
        loop {
            replies += 1;
            if replies > 64 {
                return refused("endless replies to NBD_OPT_SET_META_CONTEXT");
            }
            match read_reply(w, OPT_SET_META_CONTEXT).await? {
                (REP_META_CONTEXT, d) => {
                    if d.len() < 4 {
                        return refused("NBD_REP_META_CONTEXT shorter than its id");
                    }
                    if &d[4..] == BASE_ALLOCATION.as_bytes() {
                        allocation_context = Some(be_u32(&d, 0));
                    }
                }
                (REP_ACK, _) => break,
                (t, _) if t & REP_FLAG_ERROR != 0 => {
                    allocation_context = None;
                    break;
                }
                (t, _) => {
                    return refused(format!("unexpected reply {t} to NBD_OPT_SET_META_CONTEXT"));
                }
            }
        }
    }

    send_option(
        w,
        &ClientOption::Go {
            export: export.to_string(),
            info_requests: vec![INFO_BLOCK_SIZE],
        },
    )
    .await?;
    let mut export_info: Option<(u64, u16)> = None;
    let mut sizes: Option<(u32, u32, u32)> = None;
    // A server sends a handful of NBD_REP_INFO before its ACK; bound the loop anyway.
    let mut replies = 0;
    loop {
        replies += 1;
        if replies > 256 {
            return refused("endless replies to NBD_OPT_GO");
        }
        match read_reply(w, OPT_GO).await? {
            (REP_INFO, d) => {
                if d.len() < 2 {
                    return refused("NBD_REP_INFO without a type");
                }
                match be_u16(&d, 0) {
                    INFO_EXPORT if d.len() >= 12 => {
                        export_info = Some((be_u64(&d, 2), be_u16(&d, 10)));
                    }
                    INFO_BLOCK_SIZE if d.len() >= 14 => {
                        sizes = Some((be_u32(&d, 2), be_u32(&d, 6), be_u32(&d, 10)));
                    }
                    INFO_EXPORT | INFO_BLOCK_SIZE => {
                        return refused("NBD_REP_INFO shorter than its type requires");
                    }
                    _ => {} // names, descriptions, future types: not needed
                }
            }
            (REP_ACK, _) => break,
            (REP_ERR_UNSUP, _) => {
                // An old server: enter transmission the legacy way (no error is possible).
                send_option(w, &ClientOption::ExportName(export.to_string())).await?;
                let n = if no_zeroes {
                    10
                } else {
                    10 + nbd::EXPORT_NAME_REPLY_ZEROES
                };
                let d = w.read_exact(n).await?;
                export_info = Some((be_u64(&d, 0), be_u16(&d, 8)));
                break;
            }
            (t, d) if t & REP_FLAG_ERROR != 0 => {
                // Leave politely; the error is what the caller needs.
                let _ = send_option(w, &ClientOption::Abort).await;
                let what = if t == REP_ERR_UNKNOWN {
                    format!("no export named {export:?}")
                } else {
                    format!("server refused export {export:?}")
                };
                return refused(format!("{what} ({})", error_text(t, &d)));
            }
            (t, _) => return refused(format!("unexpected reply {t} to NBD_OPT_GO")),
        }
    }
    let Some((size, flags)) = export_info else {
        return refused("server accepted NBD_OPT_GO without NBD_INFO_EXPORT");
    };
    // Flags without NBD_FLAG_HAS_FLAGS mean nothing.
    let flags = if flags & FLAG_HAS_FLAGS != 0 {
        flags
    } else {
        0
    };
    let (min_block, preferred_block, max_block) = match sizes {
        Some(s) => check_block_sizes(s)?,
        None => (1, 4096, u32::MAX),
    };
    Ok(ExportInfo {
        size,
        flags,
        min_block,
        preferred_block,
        max_block,
        structured,
        allocation_context,
    })
}

/// Checks `NBD_INFO_BLOCK_SIZE` against the protocol's rules ("Block size constraints"):
/// minimum a power of two up to 64 KiB, preferred a power of two not below it, maximum a
/// multiple of the minimum (or `0xffffffff`). A preferred size that breaks the rules is only a
/// hint and is replaced; a bad minimum or maximum ends the negotiation.
fn check_block_sizes((min, pref, max): (u32, u32, u32)) -> Result<(u32, u32, u32), HandshakeError> {
    if !min.is_power_of_two() || min > 64 * 1024 {
        return refused(format!("invalid minimum block size {min}"));
    }
    if max != u32::MAX && (max < min || !max.is_multiple_of(min)) {
        return refused(format!("invalid maximum block size {max} (minimum {min})"));
    }
    if max != u32::MAX && max < 512 {
        return refused(format!("maximum block size {max} is below 512 bytes"));
    }
    let pref = if pref.is_power_of_two() && pref >= min {
        pref
    } else {
        4096.max(min)
    };
    Ok((min, pref, max))
}

/// The 28 bytes of `NBD_CMD_DISC`.
pub(crate) fn disconnect_request() -> [u8; nbd::REQUEST_LEN] {
    Request {
        flags: 0,
        command: nbd::Command::Disconnect,
        cookie: 0,
        offset: 0,
        length: 0,
    }
    .encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_size_rules() {
        assert_eq!(
            check_block_sizes((1, 4096, u32::MAX)).unwrap(),
            (1, 4096, u32::MAX)
        );
        assert_eq!(
            check_block_sizes((4096, 65536, 32 << 20)).unwrap(),
            (4096, 65536, 32 << 20)
        );
        // A bad preferred size is replaced, not fatal.
        assert_eq!(
            check_block_sizes((512, 3, 1 << 20)).unwrap(),
            (512, 4096, 1 << 20)
        );
        assert!(check_block_sizes((3, 4096, 1 << 20)).is_err());
        assert!(check_block_sizes((128 * 1024, 128 * 1024, u32::MAX)).is_err());
        assert!(check_block_sizes((4096, 4096, 6000)).is_err());
        assert!(check_block_sizes((1, 4096, 256)).is_err());
    }
}
