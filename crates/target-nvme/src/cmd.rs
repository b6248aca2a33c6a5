//! Command execution: the admin command set (with the fabrics property commands) and the NVM
//! I/O command set. Each function returns the completion, or `None` for an Async Event
//! Request, which completes later.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use blockdev::{WriteFlags, ZeroFlags};
use proto_nvme::{
    AnaGroup, AnaLog, AnaState, CAP_CSS_NVM, CMIC_ANA, CMIC_MULTI_CONTROLLER, CNTRLTYPE_DISCOVERY,
    CNTRLTYPE_IO, CTRATT_HOST_ID_128, Cap, Cc, Command, DiscoveryEntry, DiscoveryLog, DsmRange,
    IDENTIFY_LEN, IdentifyController, IdentifyNamespace, LbaFormat, NMIC_SHARED, NSFEAT_OPTPERF,
    NsIdDescriptor, NumberOfQueues, OAES_ANA_CHANGE, OAES_DISCOVERY_CHANGE, OAES_NS_ATTRIBUTE,
    ONCS_DSM, ONCS_RESERVATIONS, ONCS_WRITE_ZEROES, PropertySize, RESCAP_ALL_TYPES_IEKEY,
    ReservationKeys, SGLS_FABRICS, SHST_COMPLETE, SmartLog, Sqe, Status, Version, adrfam, cns,
    copy_log_window, encode_changed_ns_list, encode_nsid_list, feature_id, feature_select, log_id,
    register, subtype, trtype,
};
use reactor::IoBuf;

use crate::queue::{QueueCtx, Reply};
use crate::subsys::{Controller, Namespace};
use crate::{
    ERROR_LOG_ENTRIES, IO_IN_CAPSULE, MAX_AER, MAX_IO_QUEUES, MAX_NAMESPACES, MAX_QUEUE_SIZE, MDTS,
    MDTS_BYTES, status_of,
};
use blockdev::fence::Access;

const NSID_ALL: u32 = 0xffff_ffff;
/// Largest zero buffer written at once when a device cannot write zeroes itself.
const ZERO_CHUNK: u64 = 1 << 20;

fn invalid_field() -> Reply {
    Reply::status(Status::INVALID_FIELD.with_dnr())
}

fn invalid_ns() -> Reply {
    Reply::status(Status::INVALID_NAMESPACE_OR_FORMAT.with_dnr())
}

/// `page` cut to the host's buffer: `want` bytes from offset `lpo`, at most the SGL length.
fn window(sqe: &Sqe, page: &[u8], lpo: u64, want: u64) -> Reply {
    let len = want
        .min(u64::from(sqe.dptr.len()))
        .min(u64::from(MDTS_BYTES)) as usize;
    let mut out = IoBuf::zeroed(len);
    match copy_log_window(page, lpo, &mut out) {
        Ok(()) => Reply::data(out),
        Err(e) => Reply::status(e.status()),
    }
}

fn cap(discovery: bool) -> u64 {
    let _ = discovery;
    Cap {
        mqes: (MAX_QUEUE_SIZE - 1) as u16,
        cqr: true,
        to: 10,
        css: CAP_CSS_NVM,
        ..Cap::default()
    }
    .to_u64()
}

fn version(discovery: bool) -> Version {
    if discovery {
        Version::V1_3
    } else {
        Version::V1_4
    }
}

/// Executes an admin command.
pub(crate) async fn admin(
    conn: &QueueCtx,
    ctrl: &Arc<Controller>,
    sqe: &Sqe,
    cmd: Command,
    _data: Option<IoBuf>,
) -> Option<Reply> {
    ctrl.touch();
    let discovery = ctrl.subsys.discovery;
    let fabrics_only = matches!(
        cmd,
        Command::PropertyGet(_)
            | Command::PropertySet(_)
            | Command::AuthenticationSend(_)
            | Command::AuthenticationReceive(_)
    );
    if !fabrics_only && !ctrl.enabled() {
        return Some(Reply::status(Status::COMMAND_SEQUENCE_ERROR.with_dnr()));
    }
    Some(match cmd {
        Command::PropertyGet(p) => property_get(ctrl, p, discovery),
        Command::PropertySet(p) => property_set(ctrl, p),
        Command::Identify(id) => identify(conn, ctrl, sqe, id.cns),
        Command::GetLogPage(g) => {
            if g.ot || g.lpo % 4 != 0 {
                return Some(invalid_field());
            }
            let page = match log_page(conn, ctrl, g.lid, g.lsp, g.rae) {
                Ok(p) => p,
                Err(r) => return Some(r),
            };
            window(sqe, &page, g.lpo, g.len())
        }
        Command::SetFeatures(f) => set_features(ctrl, f, discovery),
        Command::GetFeatures(f) => get_features(ctrl, f, discovery),
        Command::AsyncEventRequest => {
            if ctrl.push_aer(sqe.cid) {
                return None;
            }
            Reply::status(Status::ASYNC_EVENT_LIMIT_EXCEEDED.with_dnr())
        }
        Command::KeepAlive => Reply::ok(),
        // Nothing is ever aborted: DW0 bit 0 says so.
        Command::Abort(_) => Reply::dw0(1),
        _ => Reply::status(Status::INVALID_OPCODE.with_dnr()),
    })
}

/// Property Get: CAP, VS, CC or CSTS.
fn property_get(ctrl: &Controller, p: proto_nvme::PropertyGet, discovery: bool) -> Reply {
    if register::size(p.offset) != Some(p.size) && p.offset != register::CAP {
        return invalid_field();
    }
    let st = ctrl.state();
    let v: u64 = match p.offset {
        register::CAP => cap(discovery),
        register::VS => u64::from(version(discovery).to_u32()),
        register::CC => u64::from(st.cc),
        register::CSTS => u64::from(st.csts),
        _ => return invalid_field(),
    };
    let v = if p.size == PropertySize::Four {
        v & 0xffff_ffff
    } else {
        v
    };
    Reply {
        dw0: v as u32,
        dw1: (v >> 32) as u32,
        ..Reply::ok()
    }
}

/// Property Set of CC: enabling makes the controller ready, disabling resets it, a shutdown
/// notification completes at once.
fn property_set(ctrl: &Controller, p: proto_nvme::PropertySet) -> Reply {
    if p.offset != register::CC || p.size != PropertySize::Four {
        return invalid_field();
    }
    let mut st = ctrl.state();
    let new = Cc::from_u32(p.value as u32);
    let old = Cc::from_u32(st.cc);
    if new.en && !old.en {
        st.csts |= 1;
    }
    if !new.en && old.en {
        // Controller reset: not ready; shutdown state cleared.
        st.csts &= !1;
        st.csts &= !(3 << 2);
    }
    if new.shn != 0 {
        st.csts = (st.csts & !(3 << 2)) | (u32::from(SHST_COMPLETE) << 2);
    } else if old.shn != 0 {
        st.csts &= !(3 << 2);
    }
    st.cc = p.value as u32;
    ctrl.publish_ready(&st);
    Reply::ok()
}

/// Set Features: queues, keep-alive, async events, the write cache; nothing is saveable.
fn set_features(ctrl: &Controller, f: proto_nvme::SetFeatures, discovery: bool) -> Reply {
    if f.sv {
        return Reply::status(Status::FEATURE_NOT_SAVEABLE.with_dnr());
    }
    let mut st = ctrl.state();
    match f.fid {
        feature_id::NUMBER_OF_QUEUES => {
            let req = NumberOfQueues::from_dword(f.cdw11);
            if req.nsq == 0xffff || req.ncq == 0xffff || discovery {
                return invalid_field();
            }
            let g = req.grant(MAX_IO_QUEUES);
            st.io_queues = g.nsq.min(g.ncq) + 1;
            Reply::dw0(g.to_dword())
        }
        feature_id::KEEP_ALIVE_TIMER => {
            ctrl.kato_ms.store(f.cdw11, Ordering::Relaxed);
            Reply::ok()
        }
        feature_id::ASYNC_EVENT_CONFIG => {
            st.aec = f.cdw11;
            Reply::ok()
        }
        feature_id::VOLATILE_WRITE_CACHE if !discovery => {
            st.vwc = f.cdw11 & 1 != 0;
            Reply::ok()
        }
        feature_id::ARBITRATION | feature_id::POWER_MANAGEMENT => Reply::ok(),
        _ => invalid_field(),
    }
}

/// Get Features: current, default or supported capabilities.
fn get_features(ctrl: &Controller, f: proto_nvme::GetFeatures, discovery: bool) -> Reply {
    let st = ctrl.state();
    if f.sel == feature_select::SUPPORTED_CAPABILITIES {
        return match f.fid {
            feature_id::NUMBER_OF_QUEUES
            | feature_id::KEEP_ALIVE_TIMER
            | feature_id::ASYNC_EVENT_CONFIG
            | feature_id::VOLATILE_WRITE_CACHE
            | feature_id::ARBITRATION
            | feature_id::POWER_MANAGEMENT => Reply::dw0(1 << 2),
            _ => invalid_field(),
        };
    }
    let default = f.sel == feature_select::DEFAULT;
    match f.fid {
        feature_id::NUMBER_OF_QUEUES => {
            let n = if st.io_queues == 0 || default {
                MAX_IO_QUEUES
            } else {
                st.io_queues
            } - 1;
            Reply::dw0(NumberOfQueues { nsq: n, ncq: n }.to_dword())
        }
        feature_id::KEEP_ALIVE_TIMER => Reply::dw0(if default {
            0
        } else {
            ctrl.kato_ms.load(Ordering::Relaxed)
        }),
        feature_id::ASYNC_EVENT_CONFIG => Reply::dw0(if default { 0 } else { st.aec }),
        feature_id::VOLATILE_WRITE_CACHE if !discovery => Reply::dw0(u32::from(default || st.vwc)),
        feature_id::ARBITRATION | feature_id::POWER_MANAGEMENT => Reply::dw0(0),
        _ => invalid_field(),
    }
}

fn lbads(bs: u32) -> u8 {
    bs.trailing_zeros() as u8
}

fn identify(conn: &QueueCtx, ctrl: &Arc<Controller>, sqe: &Sqe, c: u8) -> Reply {
    let sub = &ctrl.subsys;
    let page: Vec<u8> = match c {
        cns::CONTROLLER => identify_controller(ctrl).encode(),
        cns::NAMESPACE if !sub.discovery => {
            if sqe.nsid == 0 || (sqe.nsid > MAX_NAMESPACES && sqe.nsid != NSID_ALL) {
                return invalid_ns();
            }
            match conn.namespace(sub, sqe.nsid) {
                Some(ns) => identify_namespace(&ns).encode(),
                None => vec![0u8; IDENTIFY_LEN],
            }
        }
        cns::ACTIVE_NAMESPACES if !sub.discovery => {
            if sqe.nsid >= 0xffff_fffe {
                return invalid_ns();
            }
            let list: Vec<u32> = sub.nsids().into_iter().filter(|&n| n > sqe.nsid).collect();
            encode_nsid_list(&list)
        }
        cns::NS_ID_DESCRIPTORS if !sub.discovery => match conn.namespace(sub, sqe.nsid) {
            Some(ns) => NsIdDescriptor::encode_list(&[
                NsIdDescriptor::Nguid(ns.nguid),
                NsIdDescriptor::Uuid(ns.uuid),
                NsIdDescriptor::Csi(0),
            ]),
            None => return invalid_ns(),
        },
        _ => return invalid_field(),
    };
    window(sqe, &page, 0, IDENTIFY_LEN as u64)
}

fn identify_controller(ctrl: &Controller) -> IdentifyController {
    let sub = &ctrl.subsys;
    let common = IdentifyController {
        sn: sub.serial.clone(),
        mn: "Ballast NVMe/TCP".to_string(),
        fr: env!("CARGO_PKG_VERSION").to_string(),
        mdts: MDTS,
        cntlid: ctrl.cntlid,
        ver: version(sub.discovery).to_u32(),
        acl: 3,
        aerl: (MAX_AER - 1) as u8,
        // Extended data for Get Log Page (offsets).
        lpa: 1 << 2,
        elpe: (ERROR_LOG_ENTRIES - 1) as u8,
        kas: 10,
        sqes: 0x66,
        cqes: 0x44,
        maxcmd: MAX_QUEUE_SIZE as u16,
        sgls: SGLS_FABRICS,
        subnqn: sub.nqn.clone(),
        msdbd: 1,
        ..IdentifyController::default()
    };
    if sub.discovery {
        return IdentifyController {
            cntrltype: CNTRLTYPE_DISCOVERY,
            oaes: OAES_DISCOVERY_CHANGE,
            ..common
        };
    }
    IdentifyController {
        cntrltype: CNTRLTYPE_IO,
        cmic: CMIC_MULTI_CONTROLLER | CMIC_ANA,
        oaes: OAES_NS_ATTRIBUTE | OAES_ANA_CHANGE,
        ctratt: CTRATT_HOST_ID_128,
        anatt: 10,
        // Optimized state reported; ANAGRPID does not change while attached.
        anacap: 1 | (1 << 6),
        anagrpmax: 1,
        nanagrpid: 1,
        nn: MAX_NAMESPACES,
        mnan: MAX_NAMESPACES,
        oncs: ONCS_DSM | ONCS_WRITE_ZEROES | ONCS_RESERVATIONS,
        // Present; Flush does not take the broadcast NSID (bits 2:1 = 10b).
        vwc: 1 | (2 << 1),
        ioccsz: (IO_IN_CAPSULE + 64) / 16,
        iorcsz: 1,
        // Disconnect supported.
        ofcs: 1,
        ..common
    }
}

fn identify_namespace(ns: &Namespace) -> IdentifyNamespace {
    let g = ns.device.geometry();
    let caps = ns.device.capabilities();
    let blocks = g.num_blocks;
    let units = |bytes: u32| ((bytes / g.block_size).max(1) - 1).min(u32::from(u16::MAX)) as u16;
    IdentifyNamespace {
        nsze: blocks,
        ncap: blocks,
        nuse: blocks,
        nsfeat: NSFEAT_OPTPERF,
        nmic: NMIC_SHARED,
        rescap: RESCAP_ALL_TYPES_IEKEY,
        // Write Zeroes may deallocate.
        dlfeat: if caps.write_zeroes { 1 << 3 } else { 0 },
        nvmcap: u128::from(g.size()),
        npwg: units(g.optimal_io),
        npwa: units(g.optimal_io),
        nows: units(g.optimal_io),
        anagrpid: 1,
        nsattr: u8::from(ns.read_only),
        nguid: ns.nguid,
        lbaf: vec![LbaFormat {
            ms: 0,
            lbads: lbads(g.block_size),
            rp: 0,
        }],
        ..IdentifyNamespace::default()
    }
}

fn log_page(
    conn: &QueueCtx,
    ctrl: &Arc<Controller>,
    lid: u8,
    lsp: u8,
    rae: bool,
) -> Result<Vec<u8>, Reply> {
    let sub = &ctrl.subsys;
    let bad = || Reply::status(Status::INVALID_LOG_PAGE.with_dnr());
    Ok(match lid {
        log_id::ERROR => {
            let st = ctrl.state();
            let mut page = vec![0u8; 64 * ERROR_LOG_ENTRIES];
            for (i, e) in st.errors.iter().enumerate() {
                page[64 * i..64 * (i + 1)].copy_from_slice(&e.encode());
            }
            page
        }
        log_id::SMART if !sub.discovery => {
            let c = &ctrl.counters;
            let get = |a: &std::sync::atomic::AtomicU64| u128::from(a.load(Ordering::Relaxed));
            let errors = u128::from(ctrl.state().error_count);
            SmartLog {
                temperature: 293,
                available_spare: 100,
                available_spare_threshold: 10,
                data_units_read: SmartLog::data_units(get(&c.read_bytes)),
                data_units_written: SmartLog::data_units(get(&c.written_bytes)),
                host_read_commands: get(&c.read_cmds),
                host_write_commands: get(&c.write_cmds),
                power_cycles: 1,
                power_on_hours: u128::from(conn.target.uptime_hours()),
                media_errors: get(&c.media_errors),
                error_log_entries: errors,
                ..SmartLog::default()
            }
            .encode()
            .to_vec()
        }
        log_id::CHANGED_NS if !sub.discovery => {
            let mut st = ctrl.state();
            let page = if st.changed_overflow {
                encode_changed_ns_list(&vec![0; proto_nvme::MAX_NSID_LIST + 1])
            } else {
                encode_changed_ns_list(&st.changed_ns.iter().copied().collect::<Vec<_>>())
            };
            if !rae {
                st.changed_ns.clear();
                st.changed_overflow = false;
                st.masked.remove(&log_id::CHANGED_NS);
            }
            page
        }
        log_id::ANA if !sub.discovery => {
            let chgcnt = sub.ana_chgcnt.load(Ordering::Relaxed);
            if !rae {
                ctrl.state().masked.remove(&log_id::ANA);
            }
            AnaLog {
                chgcnt,
                groups: vec![AnaGroup {
                    grpid: 1,
                    chgcnt,
                    state: AnaState::Optimized,
                    nsids: sub.nsids(),
                }],
            }
            .encode(lsp & proto_nvme::ANA_LSP_RGO != 0)
        }
        log_id::DISCOVERY if sub.discovery => {
            if !rae {
                ctrl.state().masked.remove(&log_id::DISCOVERY);
            }
            discovery_log(conn, &ctrl.hostnqn).encode()
        }
        _ => return Err(bad()),
    })
}

fn discovery_log(conn: &QueueCtx, hostnqn: &str) -> DiscoveryLog {
    let t = &conn.target;
    let listen = t.listen_addr();
    // Report the address the host reached us on when listening on a wildcard address.
    let addr = match (listen, conn.local) {
        (Some(l), Some(local)) if l.ip().is_unspecified() => {
            std::net::SocketAddr::new(local.ip(), l.port())
        }
        (Some(l), _) => l,
        (None, Some(local)) => local,
        (None, None) => std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
    };
    let entries = t
        .visible_to(hostnqn)
        .into_iter()
        .map(|nqn| DiscoveryEntry {
            trtype: trtype::TCP,
            adrfam: if addr.is_ipv4() {
                adrfam::IPV4
            } else {
                adrfam::IPV6
            },
            subtype: subtype::NVM,
            treq: proto_nvme::TREQ_NOT_REQUIRED,
            portid: 1,
            cntlid: proto_nvme::CNTLID_DYNAMIC,
            asqsz: 32,
            eflags: 0,
            trsvcid: addr.port().to_string(),
            subnqn: nqn,
            traddr: addr.ip().to_string(),
            sectype: proto_nvme::SECTYPE_NONE,
        })
        .collect();
    DiscoveryLog {
        genctr: t.genctr(),
        recfmt: 0,
        entries,
    }
}

/// Executes an I/O command.
pub(crate) async fn io(
    conn: &QueueCtx,
    ctrl: &Arc<Controller>,
    sqe: &Sqe,
    cmd: Command,
    data: Option<IoBuf>,
) -> Reply {
    if !ctrl.enabled() {
        return Reply::status(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
    }
    let Some(ns) = conn.namespace(&ctrl.subsys, sqe.nsid) else {
        return invalid_ns();
    };
    match io_ns(ctrl, sqe, &ns, cmd, data).await {
        Ok(r) => r,
        Err(s) => Reply::status(s),
    }
}

fn check_resv(ctrl: &Controller, ns: &Namespace, access: Access) -> Result<(), Status> {
    crate::resv::check(&ns.resv, &ctrl.hostid, access)
}

fn writable(ns: &Namespace) -> Result<(), Status> {
    if ns.read_only {
        Err(Status::NAMESPACE_WRITE_PROTECTED.with_dnr())
    } else {
        Ok(())
    }
}

async fn io_ns(
    ctrl: &Controller,
    sqe: &Sqe,
    ns: &Namespace,
    cmd: Command,
    data: Option<IoBuf>,
) -> Result<Reply, Status> {
    let dev = &ns.device;
    let g = dev.geometry();
    let shift = lbads(g.block_size);
    let bs = u64::from(g.block_size);
    let c = &ctrl.counters;
    let dev_err = |e: blockdev::BlockError| {
        if matches!(e.kind(), blockdev::ErrorKind::Io) {
            c.media_errors.fetch_add(1, Ordering::Relaxed);
        }
        status_of(&e)
    };
    match cmd {
        Command::Read(rw) => {
            rw.check_range(g.num_blocks)?;
            let len = rw.data_len(shift);
            if len != u64::from(sqe.dptr.len()) {
                return Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr());
            }
            if len > u64::from(MDTS_BYTES) {
                return Err(Status::INVALID_FIELD.with_dnr());
            }
            check_resv(ctrl, ns, Access::Read)?;
            let buf = reactor::alloc_buf(len as usize);
            let buf = dev.read(rw.slba << shift, buf).await.map_err(dev_err)?;
            c.read_cmds.fetch_add(1, Ordering::Relaxed);
            c.read_bytes.fetch_add(len, Ordering::Relaxed);
            Ok(Reply::data(buf))
        }
        Command::Write(rw) => {
            rw.check_range(g.num_blocks)?;
            let len = rw.data_len(shift);
            let data = data.ok_or(Status::DATA_SGL_LENGTH_INVALID.with_dnr())?;
            if data.len() as u64 != len {
                return Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr());
            }
            writable(ns)?;
            check_resv(ctrl, ns, Access::Write)?;
            dev.write(rw.slba << shift, data, WriteFlags { fua: rw.fua })
                .await
                .map_err(dev_err)?;
            c.write_cmds.fetch_add(1, Ordering::Relaxed);
            c.written_bytes.fetch_add(len, Ordering::Relaxed);
            Ok(Reply::ok())
        }
        Command::Flush => {
            check_resv(ctrl, ns, Access::Write)?;
            dev.flush().await.map_err(dev_err)?;
            Ok(Reply::ok())
        }
        Command::WriteZeroes(w) => {
            w.check_range(g.num_blocks)?;
            writable(ns)?;
            check_resv(ctrl, ns, Access::Write)?;
            let off = w.slba << shift;
            let len = u64::from(w.blocks()) << shift;
            if dev.capabilities().write_zeroes {
                let flags = ZeroFlags {
                    may_unmap: w.deac,
                    fast_only: false,
                    fua: w.fua,
                };
                dev.write_zeroes(off, len, flags).await.map_err(dev_err)?;
            } else {
                let mut at = 0;
                while at < len {
                    let n = (len - at).min(ZERO_CHUNK);
                    let z = IoBuf::zeroed(n as usize);
                    dev.write(off + at, z, WriteFlags { fua: w.fua })
                        .await
                        .map_err(dev_err)?;
                    at += n;
                }
            }
            c.write_cmds.fetch_add(1, Ordering::Relaxed);
            Ok(Reply::ok())
        }
        Command::DatasetManagement(d) => {
            let data = data.unwrap_or_else(IoBuf::empty);
            let ranges: Vec<DsmRange> = DsmRange::parse_list(&data, d.ranges())
                .map_err(|e| e.status())?
                .collect();
            if !d.ad {
                return Ok(Reply::ok());
            }
            writable(ns)?;
            for r in &ranges {
                if r.slba
                    .checked_add(u64::from(r.nlb))
                    .is_none_or(|e| e > g.num_blocks)
                {
                    return Err(Status::LBA_OUT_OF_RANGE.with_dnr());
                }
            }
            check_resv(ctrl, ns, Access::Write)?;
            // Deallocation is advisory: a device that cannot unmap keeps its data.
            if dev.capabilities().unmap {
                for r in ranges.iter().filter(|r| r.nlb > 0) {
                    dev.unmap(r.slba * bs, u64::from(r.nlb) * bs)
                        .await
                        .map_err(dev_err)?;
                }
            }
            Ok(Reply::ok())
        }
        Command::ReservationRegister(r) => {
            let keys =
                ReservationKeys::parse(data.as_deref().unwrap_or(&[])).map_err(|e| e.status())?;
            crate::resv::register(&ns.resv, &ctrl.hostid, ctrl.cntlid, r, keys)?;
            Ok(Reply::ok())
        }
        Command::ReservationAcquire(a) => {
            let keys =
                ReservationKeys::parse(data.as_deref().unwrap_or(&[])).map_err(|e| e.status())?;
            crate::resv::acquire(&ns.resv, &ctrl.hostid, a, keys)?;
            Ok(Reply::ok())
        }
        Command::ReservationRelease(r) => {
            let keys = ReservationKeys::parse_release(data.as_deref().unwrap_or(&[]))
                .map_err(|e| e.status())?;
            crate::resv::release(&ns.resv, &ctrl.hostid, r, keys.crkey)?;
            Ok(Reply::ok())
        }
        Command::ReservationReport(r) => {
            if !r.eds {
                return Err(Status::HOST_ID_INCONSISTENT_FORMAT.with_dnr());
            }
            let page = crate::resv::report(&ns.resv).encode(true);
            Ok(window(sqe, &page, 0, r.len()))
        }
        _ => Err(Status::INVALID_OPCODE.with_dnr()),
    }
}
