//! Fuzzes the command-level parsers of `proto-nvme`: submission queue
//! entries and their typed views, the SGL data pointer, Connect data, the
//! Identify and log page structures a host parses, NQNs and host IDs.
//!
//! The input is tried as each structure (each parser reads the prefix it
//! needs). Accepted commands and Connect data must round-trip.

#![no_main]

use libfuzzer_sys::fuzz_target;
use proto_nvme::{
    AnaLog, Command, ConnectData, Cqe, DiscoveryLog, DsmRange, HostId, IdentifyController,
    IdentifyNamespace, NsIdDescriptor, QueueType, ReservationStatus, Sqe, validate_nqn,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(sqe) = Sqe::parse(data) {
        assert_eq!(&sqe.encode()[..], &data[..64]);
        for queue in [QueueType::Admin, QueueType::Io] {
            if let Ok(cmd) = Command::parse(&sqe, queue) {
                let again = cmd.to_sqe(sqe.cid, sqe.nsid, sqe.dptr);
                assert_eq!(Command::parse(&again, queue), Ok(cmd));
                if let Command::DatasetManagement(d) = cmd {
                    let _ = DsmRange::parse_list(&data[64..], d.ranges()).map(Iterator::count);
                }
            }
        }
        if let Ok(dp) = sqe.data_pointer() {
            let _ = dp.in_capsule_slice(&data[64..]);
        }
    }
    if let Ok(cqe) = Cqe::parse(data) {
        assert_eq!(Cqe::parse(&cqe.encode()), Ok(cqe));
    }
    if let Ok(c) = ConnectData::parse(data) {
        let wire = c.encode();
        assert_eq!(ConnectData::parse(&wire), Ok(c));
    }
    let _ = IdentifyController::parse(data);
    let _ = IdentifyNamespace::parse(data);
    let _ = NsIdDescriptor::parse_list(data);
    if let Ok(log) = AnaLog::parse(data) {
        assert_eq!(AnaLog::parse(&log.encode(false)), Ok(log));
    }
    let _ = DiscoveryLog::parse(data);
    for eds in [false, true] {
        let _ = ReservationStatus::parse(data, eds);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = validate_nqn(s);
        if let Ok(id) = s.parse::<HostId>() {
            assert_eq!(id.to_string().parse::<HostId>(), Ok(id));
        }
    }
});
