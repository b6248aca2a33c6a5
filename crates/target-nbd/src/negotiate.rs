//! The handshake phase: greeting, client flags, option haggling.

use std::io;
use std::sync::Arc;

use proto_nbd::{self as nbd, ClientOption, OptionHeader, consts::*};
use reactor::TcpStream;

use crate::{Export, MAX_PAYLOAD, NbdServer};

/// Id of the `base:allocation` metadata context on every connection.
pub(crate) const BASE_ALLOCATION_ID: u32 = 1;
const BASE_ALLOCATION: &str = "base:allocation";
/// Options accepted before the client must pick an export.
const MAX_OPTIONS: usize = 256;

/// What negotiation settled.
pub(crate) struct Negotiated {
    pub(crate) export: Arc<Export>,
    pub(crate) structured: bool,
    pub(crate) base_allocation: bool,
}

pub(crate) fn transmission_flags(export: &Export, structured: bool) -> u16 {
    let caps = export.device.capabilities();
    let mut f =
        FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_SEND_CACHE | FLAG_CAN_MULTI_CONN;
    if export.read_only {
        f |= FLAG_READ_ONLY;
    } else {
        f |= FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO;
        if caps.unmap {
            f |= FLAG_SEND_TRIM;
        }
    }
    if caps.rotational {
        f |= FLAG_ROTATIONAL;
    }
    if structured {
        f |= FLAG_SEND_DF;
    }
    f
}

async fn send(stream: &TcpStream, out: Vec<u8>) -> io::Result<()> {
    stream.send_all(out).await.0
}

async fn recv_exact(stream: &TcpStream, n: usize) -> io::Result<Vec<u8>> {
    let (r, buf) = stream.recv_exact(vec![0u8; n], 0, n).await;
    r.map(|()| buf)
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Runs the handshake; `Ok(None)` when the client aborted or only listed exports.
pub(crate) async fn negotiate(
    server: &NbdServer,
    stream: &TcpStream,
) -> io::Result<Option<Negotiated>> {
    let no_zeroes = greet(stream).await?;
    let mut haggle = Haggle {
        server,
        no_zeroes,
        structured: false,
        base_allocation: false,
    };
    for _ in 0..MAX_OPTIONS {
        let (opt, data) = read_option(stream).await?;
        let mut out = Vec::new();
        let step = match nbd::parse_option(opt, &data) {
            Ok(parsed) => haggle.answer(opt, parsed, &mut out)?,
            Err(e) => {
                let msg = format!("malformed option: {e}");
                nbd::rep_error(&mut out, opt, REP_ERR_INVALID, &msg);
                Step::Continue
            }
        };
        match step {
            Step::Continue => send(stream, out).await?,
            Step::Enter(n) => {
                send(stream, out).await?;
                return Ok(Some(n));
            }
            Step::Abort => {
                let _ = send(stream, out).await;
                return Ok(None);
            }
        }
    }
    Err(bad("too many options"))
}

/// Sends the greeting and reads the client's flags; returns whether the client asked for
/// `NO_ZEROES`. Clients that do not speak fixed newstyle are refused.
async fn greet(stream: &TcpStream) -> io::Result<bool> {
    send(
        stream,
        nbd::server_greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_vec(),
    )
    .await?;
    let cf = recv_exact(stream, 4).await?;
    let client = nbd::parse_client_flags(&cf).map_err(|e| bad(format!("client flags: {e}")))?;
    if !client.fixed_newstyle {
        return Err(bad("client does not speak fixed newstyle"));
    }
    Ok(client.no_zeroes)
}

/// Reads one option: its code and data. Data over the protocol's bound gets
/// `NBD_REP_ERR_TOO_BIG` and ends the handshake (it is never read, nor allocated for).
async fn read_option(stream: &TcpStream) -> io::Result<(u32, Vec<u8>)> {
    let hdr = recv_exact(stream, nbd::OPTION_HEADER_LEN).await?;
    let header = match OptionHeader::parse(&hdr) {
        Ok(h) => h,
        Err(nbd::Error::TooLarge { .. }) => {
            let h = OptionHeader::parse_unbounded(&hdr).map_err(|e| bad(e.to_string()))?;
            let mut out = Vec::new();
            nbd::rep_error(&mut out, h.option, REP_ERR_TOO_BIG, "option data too large");
            send(stream, out).await?;
            return Err(bad("oversized option"));
        }
        Err(e) => return Err(bad(format!("option header: {e}"))),
    };
    let data = recv_exact(stream, header.length as usize).await?;
    Ok((header.option, data))
}

/// How the handshake goes on after an option.
enum Step {
    /// Send the replies and read the next option.
    Continue,
    /// Send the replies and enter transmission.
    Enter(Negotiated),
    /// Send the replies (best effort) and close.
    Abort,
}

/// What the options so far have settled.
struct Haggle<'a> {
    server: &'a NbdServer,
    no_zeroes: bool,
    structured: bool,
    base_allocation: bool,
}

impl Haggle<'_> {
    /// Answers one parsed option into `out`.
    fn answer(&mut self, opt: u32, parsed: ClientOption, out: &mut Vec<u8>) -> io::Result<Step> {
        match parsed {
            ClientOption::ExportName(name) => return self.export_name(&name, out),
            ClientOption::Abort => {
                nbd::rep_ack(out, opt);
                return Ok(Step::Abort);
            }
            ClientOption::List => {
                for name in self.server.export_names() {
                    nbd::rep_server(out, opt, &name).map_err(|e| bad(e.to_string()))?;
                }
                nbd::rep_ack(out, opt);
            }
            ClientOption::StartTls => {
                let msg = "TLS is not configured on this server";
                nbd::rep_error(out, opt, REP_ERR_UNSUP, msg);
            }
            ClientOption::Info {
                export,
                info_requests,
            }
            | ClientOption::Go {
                export,
                info_requests,
            } => return self.info_or_go(opt, &export, &info_requests, out),
            ClientOption::StructuredReply => {
                self.structured = true;
                nbd::rep_ack(out, opt);
            }
            ClientOption::ListMetaContext { export, queries }
            | ClientOption::SetMetaContext { export, queries } => {
                self.meta_context(opt, &export, &queries, out)?;
            }
            ClientOption::ExtendedHeaders => {
                let msg = "extended headers are not supported";
                nbd::rep_error(out, opt, REP_ERR_UNSUP, msg);
            }
            _ => {
                let msg = format!("option {opt} is not supported");
                nbd::rep_error(out, opt, REP_ERR_UNSUP, &msg);
            }
        }
        Ok(Step::Continue)
    }

    /// `NBD_OPT_EXPORT_NAME`: enter transmission, or close for an unknown export (the option
    /// cannot carry an error: the protocol says close).
    fn export_name(&self, name: &str, out: &mut Vec<u8>) -> io::Result<Step> {
        let Some(export) = self.server.lookup(name) else {
            return Err(bad(format!("unknown export {name:?}")));
        };
        let flags = transmission_flags(&export, self.structured);
        out.extend_from_slice(&nbd::export_name_reply(
            export.size(),
            flags,
            self.no_zeroes,
        ));
        Ok(Step::Enter(Negotiated {
            export,
            structured: self.structured,
            base_allocation: false,
        }))
    }

    /// `NBD_OPT_INFO` and `NBD_OPT_GO`: describe the export; GO then enters transmission.
    fn info_or_go(
        &self,
        opt: u32,
        export: &str,
        info_requests: &[u16],
        out: &mut Vec<u8>,
    ) -> io::Result<Step> {
        let Some(ex) = self.server.lookup(export) else {
            let msg = format!("no export named {export:?}");
            nbd::rep_error(out, opt, REP_ERR_UNKNOWN, &msg);
            return Ok(Step::Continue);
        };
        let flags = transmission_flags(&ex, self.structured);
        nbd::rep_info_export(out, opt, ex.size(), flags);
        if info_requests.contains(&INFO_NAME) {
            nbd::rep_info_name(out, opt, &ex.name).map_err(|e| bad(e.to_string()))?;
        }
        if info_requests.contains(&INFO_DESCRIPTION) {
            nbd::rep_info_description(out, opt, &ex.description).map_err(|e| bad(e.to_string()))?;
        }
        let g = ex.device.geometry();
        let preferred = g.optimal_io.max(g.block_size).min(MAX_PAYLOAD);
        nbd::rep_info_block_size(out, opt, g.block_size, preferred, MAX_PAYLOAD);
        nbd::rep_ack(out, opt);
        if opt != OPT_GO {
            return Ok(Step::Continue);
        }
        Ok(Step::Enter(Negotiated {
            export: ex,
            structured: self.structured,
            base_allocation: self.base_allocation,
        }))
    }

    /// `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`: only `base:allocation`
    /// exists; SET requires structured replies.
    fn meta_context(
        &mut self,
        opt: u32,
        export: &str,
        queries: &[String],
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        let set = opt == OPT_SET_META_CONTEXT;
        if set && !self.structured {
            let msg = "negotiate structured replies first";
            nbd::rep_error(out, opt, REP_ERR_INVALID, msg);
            return Ok(());
        }
        if self.server.lookup(export).is_none() {
            let msg = format!("no export named {export:?}");
            nbd::rep_error(out, opt, REP_ERR_UNKNOWN, &msg);
            return Ok(());
        }
        let wanted = if set {
            queries.iter().any(|q| q == BASE_ALLOCATION)
        } else {
            queries.is_empty() || queries.iter().any(|q| q == "base:" || q == BASE_ALLOCATION)
        };
        if set {
            self.base_allocation = wanted;
        }
        if wanted {
            let id = if set { BASE_ALLOCATION_ID } else { 0 };
            nbd::rep_meta_context(out, opt, id, BASE_ALLOCATION).map_err(|e| bad(e.to_string()))?;
        }
        nbd::rep_ack(out, opt);
        Ok(())
    }
}
