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
    let mut structured = false;
    let mut base_allocation = false;
    for _ in 0..MAX_OPTIONS {
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
        let opt = header.option;
        let mut out = Vec::new();
        let parsed = match nbd::parse_option(opt, &data) {
            Ok(o) => o,
            Err(e) => {
                nbd::rep_error(
                    &mut out,
                    opt,
                    REP_ERR_INVALID,
                    &format!("malformed option: {e}"),
                );
                send(stream, out).await?;
                continue;
            }
        };
        match parsed {
            ClientOption::ExportName(name) => {
                let Some(export) = server.lookup(&name) else {
                    // This option cannot carry an error: the protocol says close.
                    return Err(bad(format!("unknown export {name:?}")));
                };
                let flags = transmission_flags(&export, structured);
                send(
                    stream,
                    nbd::export_name_reply(export.size(), flags, client.no_zeroes),
                )
                .await?;
                return Ok(Some(Negotiated {
                    export,
                    structured,
                    base_allocation: false,
                }));
            }
            ClientOption::Abort => {
                nbd::rep_ack(&mut out, opt);
                let _ = send(stream, out).await;
                return Ok(None);
            }
            ClientOption::List => {
                for name in server.export_names() {
                    nbd::rep_server(&mut out, opt, &name).map_err(|e| bad(e.to_string()))?;
                }
                nbd::rep_ack(&mut out, opt);
            }
            ClientOption::StartTls => {
                nbd::rep_error(
                    &mut out,
                    opt,
                    REP_ERR_UNSUP,
                    "TLS is not configured on this server",
                );
            }
            ClientOption::Info {
                export,
                info_requests,
            }
            | ClientOption::Go {
                export,
                info_requests,
            } => {
                let go = opt == OPT_GO;
                match server.lookup(&export) {
                    None => nbd::rep_error(
                        &mut out,
                        opt,
                        REP_ERR_UNKNOWN,
                        &format!("no export named {export:?}"),
                    ),
                    Some(ex) => {
                        let flags = transmission_flags(&ex, structured);
                        nbd::rep_info_export(&mut out, opt, ex.size(), flags);
                        if info_requests.contains(&INFO_NAME) {
                            nbd::rep_info_name(&mut out, opt, &ex.name)
                                .map_err(|e| bad(e.to_string()))?;
                        }
                        if info_requests.contains(&INFO_DESCRIPTION) {
                            nbd::rep_info_description(&mut out, opt, &ex.description)
                                .map_err(|e| bad(e.to_string()))?;
                        }
                        let g = ex.device.geometry();
                        let preferred = g.optimal_io.max(g.block_size).min(MAX_PAYLOAD);
                        nbd::rep_info_block_size(
                            &mut out,
                            opt,
                            g.block_size,
                            preferred,
                            MAX_PAYLOAD,
                        );
                        nbd::rep_ack(&mut out, opt);
                        if go {
                            send(stream, out).await?;
                            return Ok(Some(Negotiated {
                                export: ex,
                                structured,
                                base_allocation,
                            }));
                        }
                    }
                }
            }
            ClientOption::StructuredReply => {
                structured = true;
                nbd::rep_ack(&mut out, opt);
            }
            ClientOption::ListMetaContext { export, queries }
            | ClientOption::SetMetaContext { export, queries } => {
                let set = opt == OPT_SET_META_CONTEXT;
                if set && !structured {
                    nbd::rep_error(
                        &mut out,
                        opt,
                        REP_ERR_INVALID,
                        "negotiate structured replies first",
                    );
                } else if server.lookup(&export).is_none() {
                    nbd::rep_error(
                        &mut out,
                        opt,
                        REP_ERR_UNKNOWN,
                        &format!("no export named {export:?}"),
                    );
                } else {
                    let wanted = if set {
                        queries.iter().any(|q| q == BASE_ALLOCATION)
                    } else {
                        queries.is_empty()
                            || queries.iter().any(|q| q == "base:" || q == BASE_ALLOCATION)
                    };
                    if set {
                        base_allocation = wanted;
                    }
                    if wanted {
                        let id = if set { BASE_ALLOCATION_ID } else { 0 };
                        nbd::rep_meta_context(&mut out, opt, id, BASE_ALLOCATION)
                            .map_err(|e| bad(e.to_string()))?;
                    }
                    nbd::rep_ack(&mut out, opt);
                }
            }
            ClientOption::ExtendedHeaders => {
                nbd::rep_error(
                    &mut out,
                    opt,
                    REP_ERR_UNSUP,
                    "extended headers are not supported",
                );
            }
            _ => {
                nbd::rep_error(
                    &mut out,
                    opt,
                    REP_ERR_UNSUP,
                    &format!("option {opt} is not supported"),
                );
            }
        }
        send(stream, out).await?;
    }
    Err(bad("too many options"))
}
