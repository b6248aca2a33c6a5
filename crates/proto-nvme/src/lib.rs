//! A codec for NVMe over Fabrics on the TCP transport, as described in
//! the NVM Express Base specification, the NVMe over Fabrics
//! specification, the NVM Command Set specification and the NVMe TCP
//! Transport specification. Section names quoted in the docs of this crate
//! refer to those documents.
//!
//! The crate does no I/O: decoders take byte slices, encoders write into
//! caller-provided buffers or return fixed-size arrays. Sockets, queues,
//! timers and every policy decision belong to the caller (the NVMe/TCP
//! target and the `nvmf` initiator). `docs/nvme.md` in the repository has
//! the layouts and the error tables in one place.
//!
//! # Layers
//!
//! * **Transport** ([`PduDecoder`], [`PduEncoder`], [`Pdu`]): the NVMe/TCP
//!   PDUs — ICReq/ICResp, TermReq, command and response capsules,
//!   H2CData/C2HData, R2T — with header and data digests (CRC32C,
//!   [`crc32c()`]). Every framing error is an [`Error`] whose
//!   [`fes`](Error::fes)/[`fei`](Error::fei) go into the TermReq sent
//!   before closing the connection.
//! * **Queue entries** ([`Sqe`], [`Cqe`], [`Sgl`], [`Status`]): the 64-byte
//!   command and 16-byte completion, the SGL data pointer as TCP uses it,
//!   completion status codes.
//! * **Commands** ([`Command`]): typed views of admin, fabrics and NVM I/O
//!   commands; [`Error::status`] maps a command that cannot be parsed to
//!   its completion status.
//! * **Fabrics** ([`ConnectData`], [`Cap`], [`Cc`], [`Csts`], [`Version`]):
//!   Connect data and response, controller properties.
//! * **Data structures** ([`IdentifyController`], [`IdentifyNamespace`],
//!   [`NsIdDescriptor`], [`ErrorLogEntry`], [`SmartLog`], [`AnaLog`],
//!   [`DiscoveryLog`], [`ReservationStatus`], [`AsyncEvent`], feature
//!   values): what a controller returns, encoded and parsed.
//! * **Names** ([`validate_nqn`], [`HostId`]).
//!
//! # How a connection proceeds
//!
//! The host opens a TCP connection and sends an ICReq (PDU format version,
//! its data alignment HPDA, the digests it wants, MAXR2T); the controller
//! answers with an ICResp (digests granted, its alignment CPDA, MAXH2CDATA).
//! From then on both ends use the digests granted, and the host sends
//! command capsules: first a fabrics Connect (with 1024 bytes of Connect
//! data in the capsule) creating the admin queue or an I/O queue, then
//! ordinary commands. A write's data travels in the capsule when it is
//! small enough, otherwise the controller asks for it with R2T PDUs and
//! the host sends H2CData PDUs; a read's data comes back in C2HData PDUs.
//! Every command ends with a response capsule carrying its completion,
//! unless the last C2HData carried the SUCCESS flag.
//!
//! # Robustness
//!
//! Decoders never panic and never allocate according to an untrusted
//! length: a PDU's length is checked against the negotiated limits before
//! the decoder asks for more bytes, and variable-length data structures are
//! bounded by the bytes supplied. The crate contains no `unsafe` code.
//!
//! # Example: a controller's receive loop
//!
//! ```
//! use proto_nvme::{
//!     Cqe, Decoded, IcReq, IcResp, PduDecoder, PduEncoder, PduHeader, Role, Status,
//! };
//!
//! let mut rx = PduDecoder::new(Role::Controller);
//! // The host's ICReq, as it would arrive from the socket.
//! let wire = IcReq { hdgst: true, ..IcReq::default() }.encode();
//!
//! let Decoded::Pdu { pdu, len } = rx.decode(&wire)? else { panic!("need more bytes") };
//! assert_eq!(len, 128);
//! let PduHeader::IcReq(req) = pdu.header else { unreachable!() };
//! let resp = IcResp::answer(&req, true, true, 0, 128 * 1024);
//! let _send_first = resp.encode();
//! rx.establish(resp.hdgst, resp.ddgst);
//! let tx = PduEncoder::with(resp.hdgst, resp.ddgst, req.hpda);
//!
//! // ... later, complete a command:
//! let reply = tx.capsule_resp(&Cqe::new(7, Status::SUCCESS));
//! assert_eq!(reply.len(), 24 + 4); // header digest included
//! # Ok::<(), proto_nvme::Error>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod command;
mod decode;
mod digest;
mod error;
mod fabrics;
mod features;
mod identify;
mod log;
mod nqn;
mod pdu;
mod queue;
mod status;
mod wire;

#[cfg(test)]
mod random_tests;

pub use command::{
    Abort, Authentication, CATTR_DISABLE_SQ_FLOW_CONTROL, Command, Connect, DSM_RANGE_LEN,
    DataDirection, DatasetManagement, DsmRange, FABRICS_OPCODE, GetFeatures, GetLogPage, Identify,
    PropertyGet, PropertySet, PropertySize, QueueType, ReadWrite, ReservationAcquire,
    ReservationKeys, ReservationRegister, ReservationRelease, ReservationReport, SetFeatures,
    WriteZeroes, admin_opcode, fctype, io_opcode, rtype,
};
pub use decode::{
    DEFAULT_MAX_DATA, Decoded, Frame, HeaderDecoded, PduDecoder, Role, check_data_range,
};
pub use digest::{DIGEST_LEN, DataDigest, crc32c, digest_bytes};
pub use error::{Error, Fes, Result};
pub use fabrics::{
    CAP_CSS_ADMIN_ONLY, CAP_CSS_IO_SETS, CAP_CSS_NVM, CNTLID_DYNAMIC, CONNECT_DATA_LEN,
    CONNECT_HOSTNQN_OFFSET, CONNECT_SUBNQN_OFFSET, Cap, Cc, ConnectData, ConnectResponse, Csts,
    NQN_FIELD_LEN, SHN_ABRUPT, SHN_NONE, SHN_NORMAL, SHST_COMPLETE, SHST_NORMAL, SHST_OCCURRING,
    Version, connect_invalid_parameter_dw0, connect_success_dw0, register,
};
pub use features::{
    ASYNC_EVENT_RESERVATION_LOG, Arbitration, AsyncEvent, NumberOfQueues, PowerManagement,
    async_event_config, async_event_notice, async_event_type, feature_id, feature_select,
    host_identifier_extended, keep_alive_timeout_ms, reservation_persistence_ptpl,
    resv_notification_mask, volatile_write_cache_enabled,
};
pub use identify::{
    CMIC_ANA, CMIC_MULTI_CONTROLLER, CNTRLTYPE_DISCOVERY, CNTRLTYPE_IO, CTRATT_HOST_ID_128,
    IDENTIFY_LEN, IdentifyController, IdentifyNamespace, LbaFormat, MAX_LBA_FORMATS, MAX_NSID_LIST,
    NMIC_SHARED, NSFEAT_OPTPERF, NSFEAT_THIN, NsIdDescriptor, OAES_ANA_CHANGE,
    OAES_DISCOVERY_CHANGE, OAES_NS_ATTRIBUTE, ONCS_DSM, ONCS_RESERVATIONS, ONCS_WRITE_ZEROES,
    RESCAP_ALL_TYPES_IEKEY, RESCAP_PTPL, SGLS_FABRICS, VWC_PRESENT, cns, encode_nsid_list, nidt,
    parse_nsid_list,
};
pub use log::{
    ANA_LSP_RGO, AnaGroup, AnaLog, AnaState, DISCOVERY_RECORD_LEN, DiscoveryEntry, DiscoveryLog,
    ERROR_LOG_ENTRY_LEN, ErrorLogEntry, RESV_EXTENDED_LEN, RESV_REGULAR_LEN, Registrant,
    ReservationStatus, SECTYPE_NONE, SECTYPE_TLS12, SECTYPE_TLS13, SMART_LOG_LEN, SmartLog,
    TREQ_DISABLE_SQFLOW, TREQ_NOT_REQUIRED, TREQ_NOT_SPECIFIED, TREQ_REQUIRED, adrfam,
    copy_log_window, encode_changed_ns_list, log_id, subtype, trtype,
};
pub use nqn::{DISCOVERY_NQN, HostId, NQN_MAX_LEN, NqnKind, UUID_NQN_PREFIX, validate_nqn};
pub use pdu::{
    ADMIN_IN_CAPSULE_DATA, C2HData, CH_LEN, CMD_HLEN, CommonHeader, DATA_HLEN, H2CData, HeaderBuf,
    IC_HLEN, IcReq, IcResp, MAX_HEADER_BUF, MAX_PDA, MAX_TERM_DATA, MAX_TERM_PLEN, MIN_MAXH2CDATA,
    PFV_1_0, Pdu, PduEncoder, PduHeader, PduType, R2T, RESP_HLEN, TERM_HLEN, TermReq, dgst, flags,
};
pub use queue::{
    CQE_LEN, Cqe, DataPointer, FLAGS_SGL, PSDT_SGL, SGL_LEN, SQE_LEN, Sgl, Sqe, sgl_subtype,
    sgl_type,
};
pub use status::{Sct, Status};
