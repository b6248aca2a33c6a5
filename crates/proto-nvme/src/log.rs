//! Log pages and the Reservation Report data structure (NVMe Base
//! specification "Log Page Identifiers" and the per-page sections; NVMe
//! over Fabrics "Discovery Log Page"; NVM Command Set "Reservation Status
//! Data Structure").
//!
//! Encoders build the whole page; a Get Log Page is answered with the
//! window the host asked for ([`copy_log_window`]).

use crate::error::{Error, Result};
use crate::fabrics::NQN_FIELD_LEN;
use crate::status::Status;
use crate::wire::{
    arr, get_padded_string, get_str_nul, put, put_ascii_padded, put_str_nul, put_u16, put_u32,
    put_u64, put_u128, u16_at, u32_at, u64_at, u128_at,
};

/// Log page identifiers (Get Log Page LID).
pub mod log_id {
    /// Supported Log Pages.
    pub const SUPPORTED: u8 = 0x00;
    /// Error Information.
    pub const ERROR: u8 = 0x01;
    /// SMART / Health Information.
    pub const SMART: u8 = 0x02;
    /// Firmware Slot Information.
    pub const FW_SLOT: u8 = 0x03;
    /// Changed Namespace List.
    pub const CHANGED_NS: u8 = 0x04;
    /// Commands Supported and Effects.
    pub const CMD_EFFECTS: u8 = 0x05;
    /// Asymmetric Namespace Access.
    pub const ANA: u8 = 0x0c;
    /// Discovery (discovery controllers).
    pub const DISCOVERY: u8 = 0x70;
    /// Reservation Notification.
    pub const RESERVATION: u8 = 0x80;
}

/// Copies the window `[lpo, lpo + out.len())` of `page` into `out`,
/// zero-filling past the end of the page, as a Get Log Page with offset
/// LPO returns it. An offset beyond the page is [`Error::InvalidField`]
/// (at CDW12, byte 48 of the SQE).
pub fn copy_log_window(page: &[u8], lpo: u64, out: &mut [u8]) -> Result<()> {
    let start = usize::try_from(lpo)
        .ok()
        .filter(|&s| s <= page.len())
        .ok_or(Error::InvalidField {
            offset: 48,
            reason: "log page offset beyond the log page",
        })?;
    let src = &page[start..];
    let n = src.len().min(out.len());
    out[..n].copy_from_slice(&src[..n]);
    out[n..].fill(0);
    Ok(())
}

/// Size of an Error Information log entry.
pub const ERROR_LOG_ENTRY_LEN: usize = 64;

/// One Error Information log entry:
///
/// ```text
/// bytes 0-7    error count (unique, increasing; 0 = empty entry)
/// bytes 8-9    SQID      10-11 CID     12-13 status field (phase bit 0)
/// bytes 14-15  parameter error location (byte 7:0, bit 10:8)
/// bytes 16-23  LBA       24-27 NSID    28 vendor specific log page  29 transport type
/// bytes 32-39  command specific information  40-41 transport type specific information
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ErrorLogEntry {
    /// Error count.
    pub error_count: u64,
    /// Submission queue ID.
    pub sqid: u16,
    /// Command ID.
    pub cid: u16,
    /// Status of the failed command.
    pub status: Status,
    /// Parameter error location (0xFFFF: not specific to a parameter).
    pub param_error_location: u16,
    /// First LBA that had an error.
    pub lba: u64,
    /// Namespace.
    pub nsid: u32,
    /// Vendor specific information available (log page ID).
    pub vs: u8,
    /// Transport type (3 = TCP).
    pub trtype: u8,
    /// Command specific information.
    pub csi: u64,
    /// Transport type specific information.
    pub ttsi: u16,
}

impl ErrorLogEntry {
    /// The 64 bytes of this entry.
    #[must_use]
    pub fn encode(&self) -> [u8; ERROR_LOG_ENTRY_LEN] {
        let mut b = [0u8; ERROR_LOG_ENTRY_LEN];
        put_u64(&mut b, 0, self.error_count);
        put_u16(&mut b, 8, self.sqid);
        put_u16(&mut b, 10, self.cid);
        put_u16(&mut b, 12, self.status.to_field());
        put_u16(&mut b, 14, self.param_error_location);
        put_u64(&mut b, 16, self.lba);
        put_u32(&mut b, 24, self.nsid);
        b[28] = self.vs;
        b[29] = self.trtype;
        put_u64(&mut b, 32, self.csi);
        put_u16(&mut b, 40, self.ttsi);
        b
    }

    /// Parses one entry.
    pub fn parse(b: &[u8]) -> Result<ErrorLogEntry> {
        let b = crate::wire::fixed::<ERROR_LOG_ENTRY_LEN>(b)?;
        Ok(ErrorLogEntry {
            error_count: u64_at(b, 0),
            sqid: u16_at(b, 8),
            cid: u16_at(b, 10),
            status: Status::from_field(u16_at(b, 12)),
            param_error_location: u16_at(b, 14),
            lba: u64_at(b, 16),
            nsid: u32_at(b, 24),
            vs: b[28],
            trtype: b[29],
            csi: u64_at(b, 32),
            ttsi: u16_at(b, 40),
        })
    }
}

/// Size of the SMART / Health Information log page.
pub const SMART_LOG_LEN: usize = 512;

/// SMART / Health Information (log 02h), 512 bytes:
///
/// ```text
/// 0 critical warning  1-2 composite temperature (kelvin)  3 available spare (%)
/// 4 available spare threshold  5 percentage used  6 endurance group critical warning summary
/// 32 data units read (16)  48 data units written (16)  64 host read commands (16)
/// 80 host write commands (16)  96 controller busy time, minutes (16)  112 power cycles (16)
/// 128 power on hours (16)  144 unsafe shutdowns (16)  160 media errors (16)
/// 176 error log entries (16)  192 warning temperature time (4)  196 critical temperature time (4)
/// 200 temperature sensors 1-8 (2 each)
/// ```
///
/// Data units are thousands of 512-byte units, rounded up
/// ([`SmartLog::data_units`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SmartLog {
    /// Critical warning bits.
    pub critical_warning: u8,
    /// Composite temperature in kelvin.
    pub temperature: u16,
    /// Available spare, percent.
    pub available_spare: u8,
    /// Available spare threshold, percent.
    pub available_spare_threshold: u8,
    /// Percentage used.
    pub percentage_used: u8,
    /// Endurance group critical warning summary.
    pub endurance_group_warning: u8,
    /// Data units read.
    pub data_units_read: u128,
    /// Data units written.
    pub data_units_written: u128,
    /// Host read commands.
    pub host_read_commands: u128,
    /// Host write commands.
    pub host_write_commands: u128,
    /// Controller busy time in minutes.
    pub controller_busy_time: u128,
    /// Power cycles.
    pub power_cycles: u128,
    /// Power on hours.
    pub power_on_hours: u128,
    /// Unsafe shutdowns.
    pub unsafe_shutdowns: u128,
    /// Media and data integrity errors.
    pub media_errors: u128,
    /// Number of error information log entries over the controller's life.
    pub error_log_entries: u128,
    /// Minutes above the warning temperature.
    pub warning_temp_time: u32,
    /// Minutes above the critical temperature.
    pub critical_temp_time: u32,
    /// Temperature sensors (kelvin, 0 = not implemented).
    pub temp_sensors: [u16; 8],
}

impl SmartLog {
    /// Converts a byte count into SMART data units: thousands of 512-byte
    /// units, rounded up (1 means 1 to 512,000 bytes).
    #[must_use]
    pub const fn data_units(bytes: u128) -> u128 {
        bytes.div_ceil(512 * 1000)
    }

    /// The 512-byte page.
    #[must_use]
    pub fn encode(&self) -> [u8; SMART_LOG_LEN] {
        let mut b = [0u8; SMART_LOG_LEN];
        b[0] = self.critical_warning;
        put_u16(&mut b, 1, self.temperature);
        b[3] = self.available_spare;
        b[4] = self.available_spare_threshold;
        b[5] = self.percentage_used;
        b[6] = self.endurance_group_warning;
        for (i, v) in self.counters().into_iter().enumerate() {
            put_u128(&mut b, 32 + 16 * i, v);
        }
        put_u32(&mut b, 192, self.warning_temp_time);
        put_u32(&mut b, 196, self.critical_temp_time);
        for (i, &t) in self.temp_sensors.iter().enumerate() {
            put_u16(&mut b, 200 + 2 * i, t);
        }
        b
    }

    fn counters(&self) -> [u128; 10] {
        [
            self.data_units_read,
            self.data_units_written,
            self.host_read_commands,
            self.host_write_commands,
            self.controller_busy_time,
            self.power_cycles,
            self.power_on_hours,
            self.unsafe_shutdowns,
            self.media_errors,
            self.error_log_entries,
        ]
    }

    /// Parses the page.
    pub fn parse(b: &[u8]) -> Result<SmartLog> {
        let b = crate::wire::fixed::<SMART_LOG_LEN>(b)?;
        let c = |i: usize| u128_at(b, 32 + 16 * i);
        let mut temp_sensors = [0u16; 8];
        for (i, t) in temp_sensors.iter_mut().enumerate() {
            *t = u16_at(b, 200 + 2 * i);
        }
        Ok(SmartLog {
            critical_warning: b[0],
            temperature: u16_at(b, 1),
            available_spare: b[3],
            available_spare_threshold: b[4],
            percentage_used: b[5],
            endurance_group_warning: b[6],
            data_units_read: c(0),
            data_units_written: c(1),
            host_read_commands: c(2),
            host_write_commands: c(3),
            controller_busy_time: c(4),
            power_cycles: c(5),
            power_on_hours: c(6),
            unsafe_shutdowns: c(7),
            media_errors: c(8),
            error_log_entries: c(9),
            warning_temp_time: u32_at(b, 192),
            critical_temp_time: u32_at(b, 196),
            temp_sensors,
        })
    }
}

/// Changed Namespace List (log 04h): up to 1024 NSIDs, zero-filled; more
/// than 1024 changes are reported as a single FFFFFFFFh entry.
#[must_use]
pub fn encode_changed_ns_list(nsids: &[u32]) -> Vec<u8> {
    if nsids.len() > crate::identify::MAX_NSID_LIST {
        let mut b = vec![0u8; crate::identify::IDENTIFY_LEN];
        put_u32(&mut b, 0, u32::MAX);
        return b;
    }
    crate::identify::encode_nsid_list(nsids)
}

/// ANA states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AnaState {
    /// 01h: optimized.
    Optimized = 0x01,
    /// 02h: non-optimized.
    NonOptimized = 0x02,
    /// 03h: inaccessible.
    Inaccessible = 0x03,
    /// 04h: persistent loss.
    PersistentLoss = 0x04,
    /// 0Fh: change (transitioning).
    Change = 0x0f,
}

impl AnaState {
    /// Decodes an ANA state (low nibble of the descriptor's state byte).
    #[must_use]
    pub const fn from_wire(v: u8) -> Option<AnaState> {
        Some(match v & 0xf {
            0x01 => AnaState::Optimized,
            0x02 => AnaState::NonOptimized,
            0x03 => AnaState::Inaccessible,
            0x04 => AnaState::PersistentLoss,
            0x0f => AnaState::Change,
            _ => return None,
        })
    }

    /// The status an I/O command gets on a namespace in this state, or
    /// `None` if I/O is allowed (optimized, non-optimized).
    #[must_use]
    pub const fn io_status(self) -> Option<Status> {
        match self {
            AnaState::Optimized | AnaState::NonOptimized => None,
            AnaState::Inaccessible => Some(Status::ANA_INACCESSIBLE),
            AnaState::PersistentLoss => Some(Status::ANA_PERSISTENT_LOSS),
            AnaState::Change => Some(Status::ANA_TRANSITION),
        }
    }
}

/// One ANA group descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnaGroup {
    /// ANA group ID.
    pub grpid: u32,
    /// Change count of this group.
    pub chgcnt: u64,
    /// State.
    pub state: AnaState,
    /// Namespaces in the group (in increasing order).
    pub nsids: Vec<u32>,
}

/// ANA log page LSP bit: return groups only (no NSID lists).
pub const ANA_LSP_RGO: u8 = 1 << 0;

/// The ANA log page (0Ch):
///
/// ```text
/// header:     0-7 change count  8-9 number of group descriptors  10-15 reserved
/// descriptor: 0-3 ANAGRPID  4-7 number of NSIDs  8-15 change count  16 state (3:0)
///             17-31 reserved  32.. NSIDs (4 bytes each)
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AnaLog {
    /// Change count of the log.
    pub chgcnt: u64,
    /// Group descriptors.
    pub groups: Vec<AnaGroup>,
}

impl AnaLog {
    /// Encodes the page; with `groups_only` (LSP RGO) every descriptor has
    /// zero NSIDs.
    #[must_use]
    pub fn encode(&self, groups_only: bool) -> Vec<u8> {
        let mut b = vec![0u8; 16];
        put_u64(&mut b, 0, self.chgcnt);
        put_u16(
            &mut b,
            8,
            u16::try_from(self.groups.len()).unwrap_or(u16::MAX),
        );
        for g in self.groups.iter().take(usize::from(u16::MAX)) {
            let nsids: &[u32] = if groups_only { &[] } else { &g.nsids };
            let mut d = [0u8; 32];
            put_u32(&mut d, 0, g.grpid);
            put_u32(&mut d, 4, u32::try_from(nsids.len()).unwrap_or(u32::MAX));
            put_u64(&mut d, 8, g.chgcnt);
            d[16] = g.state as u8;
            b.extend_from_slice(&d);
            for n in nsids {
                b.extend_from_slice(&n.to_le_bytes());
            }
        }
        b
    }

    /// Parses the page. Counts are checked against the bytes present
    /// ([`Error::Truncated`] otherwise); an unknown state is
    /// [`Error::InvalidField`].
    pub fn parse(b: &[u8]) -> Result<AnaLog> {
        let h = crate::wire::fixed::<16>(b)?;
        let ngrps = usize::from(u16_at(h, 8));
        let mut at = 16;
        let mut groups = Vec::new();
        for _ in 0..ngrps {
            let d = b.get(at..at + 32).ok_or(Error::Truncated {
                need: at + 32,
                have: b.len(),
            })?;
            let n = u32_at(d, 4) as usize;
            let list_end = n
                .checked_mul(4)
                .and_then(|l| (at + 32).checked_add(l))
                .filter(|&e| e <= b.len())
                .ok_or(Error::Truncated {
                    need: at + 32 + n.saturating_mul(4),
                    have: b.len(),
                })?;
            let state = AnaState::from_wire(d[16]).ok_or(Error::InvalidField {
                offset: u16::try_from(at + 16).unwrap_or(u16::MAX),
                reason: "unknown ANA state",
            })?;
            groups.push(AnaGroup {
                grpid: u32_at(d, 0),
                chgcnt: u64_at(d, 8),
                state,
                nsids: b[at + 32..list_end]
                    .chunks_exact(4)
                    .map(|c| u32_at(c, 0))
                    .collect(),
            });
            at = list_end;
        }
        Ok(AnaLog {
            chgcnt: u64_at(h, 0),
            groups,
        })
    }
}

/// Size of the discovery log page header and of each entry.
pub const DISCOVERY_RECORD_LEN: usize = 1024;

/// Transport types (TRTYPE).
pub mod trtype {
    /// RDMA.
    pub const RDMA: u8 = 1;
    /// Fibre Channel.
    pub const FC: u8 = 2;
    /// TCP.
    pub const TCP: u8 = 3;
    /// Intra-host (loop).
    pub const LOOP: u8 = 254;
}

/// Address families (ADRFAM).
pub mod adrfam {
    /// IPv4.
    pub const IPV4: u8 = 1;
    /// IPv6.
    pub const IPV6: u8 = 2;
}

/// Subsystem types (SUBTYPE).
pub mod subtype {
    /// Referral to another discovery subsystem.
    pub const DISCOVERY_REFERRAL: u8 = 1;
    /// An NVM subsystem.
    pub const NVM: u8 = 2;
    /// The current discovery subsystem.
    pub const CURRENT_DISCOVERY: u8 = 3;
}

/// TREQ: secure channel not specified.
pub const TREQ_NOT_SPECIFIED: u8 = 0;
/// TREQ: secure channel required.
pub const TREQ_REQUIRED: u8 = 1;
/// TREQ: secure channel not required.
pub const TREQ_NOT_REQUIRED: u8 = 2;
/// TREQ bit: SQ flow control disable supported.
pub const TREQ_DISABLE_SQFLOW: u8 = 1 << 2;
/// TCP TSAS SECTYPE: no security.
pub const SECTYPE_NONE: u8 = 0;
/// TCP TSAS SECTYPE: TLS 1.2.
pub const SECTYPE_TLS12: u8 = 1;
/// TCP TSAS SECTYPE: TLS 1.3.
pub const SECTYPE_TLS13: u8 = 2;

/// One discovery log page entry (1024 bytes):
///
/// ```text
/// 0 TRTYPE  1 ADRFAM  2 SUBTYPE  3 TREQ  4-5 PORTID  6-7 CNTLID  8-9 ASQSZ  10-11 EFLAGS
/// 32-63    TRSVCID (ASCII, space padded; the TCP port)
/// 256-511  SUBNQN (NUL terminated)
/// 512-767  TRADDR (ASCII, space padded; the IP address)
/// 768-1023 TSAS (TCP: byte 768 SECTYPE)
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiscoveryEntry {
    /// Transport type ([`trtype`]).
    pub trtype: u8,
    /// Address family ([`adrfam`]).
    pub adrfam: u8,
    /// Subsystem type ([`subtype`]).
    pub subtype: u8,
    /// Transport requirements.
    pub treq: u8,
    /// Port ID.
    pub portid: u16,
    /// Controller ID (FFFFh: dynamic).
    pub cntlid: u16,
    /// Admin max SQ size.
    pub asqsz: u16,
    /// Entry flags.
    pub eflags: u16,
    /// Transport service ID (e.g. "4420").
    pub trsvcid: String,
    /// Subsystem NQN.
    pub subnqn: String,
    /// Transport address (e.g. "10.0.0.1").
    pub traddr: String,
    /// TCP security type (first TSAS byte).
    pub sectype: u8,
}

impl DiscoveryEntry {
    /// The 1024 bytes of this entry.
    #[must_use]
    pub fn encode(&self) -> [u8; DISCOVERY_RECORD_LEN] {
        let mut b = [0u8; DISCOVERY_RECORD_LEN];
        b[0] = self.trtype;
        b[1] = self.adrfam;
        b[2] = self.subtype;
        b[3] = self.treq;
        put_u16(&mut b, 4, self.portid);
        put_u16(&mut b, 6, self.cntlid);
        put_u16(&mut b, 8, self.asqsz);
        put_u16(&mut b, 10, self.eflags);
        put_ascii_padded(&mut b, 32, 32, &self.trsvcid);
        put_str_nul(&mut b, 256, NQN_FIELD_LEN, &self.subnqn);
        put_ascii_padded(&mut b, 512, 256, &self.traddr);
        b[768] = self.sectype;
        b
    }

    /// Parses one entry; text fields lose their padding.
    pub fn parse(b: &[u8]) -> Result<DiscoveryEntry> {
        let b = crate::wire::fixed::<DISCOVERY_RECORD_LEN>(b)?;
        Ok(DiscoveryEntry {
            trtype: b[0],
            adrfam: b[1],
            subtype: b[2],
            treq: b[3],
            portid: u16_at(b, 4),
            cntlid: u16_at(b, 6),
            asqsz: u16_at(b, 8),
            eflags: u16_at(b, 10),
            trsvcid: get_padded_string(b, 32, 32),
            subnqn: get_str_nul(b, 256, NQN_FIELD_LEN)
                .map(str::to_owned)
                .unwrap_or_else(|| get_padded_string(b, 256, NQN_FIELD_LEN)),
            traddr: get_padded_string(b, 512, 256),
            sectype: b[768],
        })
    }
}

/// The discovery log page (70h): a 1024-byte header (GENCTR at 0,
/// NUMREC at 8, RECFMT at 16) followed by NUMREC 1024-byte entries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiscoveryLog {
    /// Generation counter: changes whenever the entries change.
    pub genctr: u64,
    /// Record format (0).
    pub recfmt: u16,
    /// Entries.
    pub entries: Vec<DiscoveryEntry>,
}

impl DiscoveryLog {
    /// The whole page.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; DISCOVERY_RECORD_LEN];
        put_u64(&mut b, 0, self.genctr);
        put_u64(&mut b, 8, self.entries.len() as u64);
        put_u16(&mut b, 16, self.recfmt);
        for e in &self.entries {
            b.extend_from_slice(&e.encode());
        }
        b
    }

    /// Parses a page, reading as many of NUMREC entries as `b` holds (a
    /// host may fetch the header first and the entries later).
    pub fn parse(b: &[u8]) -> Result<DiscoveryLog> {
        let h = crate::wire::fixed::<DISCOVERY_RECORD_LEN>(b)?;
        let numrec = u64_at(h, 8);
        let entries = b[DISCOVERY_RECORD_LEN..]
            .chunks_exact(DISCOVERY_RECORD_LEN)
            .take(usize::try_from(numrec).unwrap_or(usize::MAX))
            .map(DiscoveryEntry::parse)
            .collect::<Result<Vec<_>>>()?;
        Ok(DiscoveryLog {
            genctr: u64_at(h, 0),
            recfmt: u16_at(h, 16),
            entries,
        })
    }

    /// NUMREC from a page header.
    pub fn numrec(b: &[u8]) -> Result<u64> {
        Ok(u64_at(crate::wire::fixed::<24>(b)?, 8))
    }
}

/// One registered controller in a Reservation Report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Registrant {
    /// Controller ID (FFFFh if the registrant has no controller).
    pub cntlid: u16,
    /// Reservation status: bit 0 set if this registrant holds the
    /// reservation.
    pub rcsts: u8,
    /// Host identifier (128-bit; the regular format carries the first 8
    /// bytes only).
    pub hostid: [u8; 16],
    /// Reservation key.
    pub rkey: u64,
}

/// The Reservation Report data (NVM command set "Reservation Status Data
/// Structure"), in either format:
///
/// ```text
/// header:   0-3 GEN  4 RTYPE  5-6 REGCTL  9 PTPLS  (regular: 24 bytes; extended: 64)
/// regular registrant (24 bytes):  0-1 CNTLID  2 RCSTS  8-15 HOSTID (64-bit)  16-23 RKEY
/// extended registrant (64 bytes): 0-1 CNTLID  2 RCSTS  8-15 RKEY  16-31 HOSTID (128-bit)
/// ```
///
/// Fabrics hosts use 128-bit host identifiers, so a controller answers a
/// report without EDS with [`Status::HOST_ID_INCONSISTENT_FORMAT`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReservationStatus {
    /// Generation: incremented by Register/Preempt.
    pub generation: u32,
    /// Reservation type held (0 = none).
    pub rtype: u8,
    /// Persist through power loss state.
    pub ptpls: bool,
    /// Registrants.
    pub registrants: Vec<Registrant>,
}

/// Size of the regular reservation status header and registrant entry.
pub const RESV_REGULAR_LEN: usize = 24;
/// Size of the extended reservation status header and registrant entry.
pub const RESV_EXTENDED_LEN: usize = 64;

impl ReservationStatus {
    /// Encodes the structure in the extended (`eds`) or regular format.
    #[must_use]
    pub fn encode(&self, eds: bool) -> Vec<u8> {
        let unit = if eds {
            RESV_EXTENDED_LEN
        } else {
            RESV_REGULAR_LEN
        };
        let mut b = vec![0u8; unit * (1 + self.registrants.len())];
        put_u32(&mut b, 0, self.generation);
        b[4] = self.rtype;
        put_u16(
            &mut b,
            5,
            u16::try_from(self.registrants.len()).unwrap_or(u16::MAX),
        );
        b[9] = u8::from(self.ptpls);
        for (i, r) in self.registrants.iter().enumerate() {
            let at = unit * (i + 1);
            put_u16(&mut b, at, r.cntlid);
            b[at + 2] = r.rcsts;
            if eds {
                put_u64(&mut b, at + 8, r.rkey);
                put(&mut b, at + 16, &r.hostid);
            } else {
                put(&mut b, at + 8, &r.hostid[..8]);
                put_u64(&mut b, at + 16, r.rkey);
            }
        }
        b
    }

    /// Parses the structure in the given format, reading as many of REGCTL
    /// registrants as `b` holds (the host may have asked for fewer bytes).
    pub fn parse(b: &[u8], eds: bool) -> Result<ReservationStatus> {
        let unit = if eds {
            RESV_EXTENDED_LEN
        } else {
            RESV_REGULAR_LEN
        };
        if b.len() < unit {
            return Err(Error::Truncated {
                need: unit,
                have: b.len(),
            });
        }
        let regctl = usize::from(u16_at(b, 5));
        let registrants = b[unit..]
            .chunks_exact(unit)
            .take(regctl)
            .map(|e| {
                let mut hostid = [0u8; 16];
                let rkey = if eds {
                    hostid = arr(e, 16);
                    u64_at(e, 8)
                } else {
                    hostid[..8].copy_from_slice(&arr::<8>(e, 8));
                    u64_at(e, 16)
                };
                Registrant {
                    cntlid: u16_at(e, 0),
                    rcsts: e[2],
                    hostid,
                    rkey,
                }
            })
            .collect();
        Ok(ReservationStatus {
            generation: u32_at(b, 0),
            rtype: b[4],
            ptpls: b[9] & 1 != 0,
            registrants,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_window() {
        let page: Vec<u8> = (0..100).collect();
        let mut out = [0xffu8; 8];
        copy_log_window(&page, 96, &mut out).unwrap();
        assert_eq!(out, [96, 97, 98, 99, 0, 0, 0, 0]);
        copy_log_window(&page, 100, &mut out).unwrap();
        assert_eq!(out, [0; 8]);
        assert!(copy_log_window(&page, 101, &mut out).is_err());
        assert!(copy_log_window(&page, u64::MAX, &mut out).is_err());
    }

    #[test]
    fn error_log_entry_layout() {
        let e = ErrorLogEntry {
            error_count: 1,
            sqid: 1,
            cid: 0x22,
            status: Status::LBA_OUT_OF_RANGE.with_dnr(),
            param_error_location: 40,
            lba: 0x1000,
            nsid: 1,
            trtype: trtype::TCP,
            ..ErrorLogEntry::default()
        };
        let b = e.encode();
        assert_eq!(
            &b[..32],
            &[
                1, 0, 0, 0, 0, 0, 0, 0, // error count
                1, 0, 0x22, 0, // sqid, cid
                0x00, 0x81, // status field
                40, 0, // location
                0, 0x10, 0, 0, 0, 0, 0, 0, // lba
                1, 0, 0, 0, // nsid
                0, 3, 0, 0
            ]
        );
        assert_eq!(ErrorLogEntry::parse(&b).unwrap(), e);
    }

    #[test]
    fn smart_log_layout() {
        let s = SmartLog {
            critical_warning: 0,
            temperature: 310,
            available_spare: 100,
            available_spare_threshold: 10,
            data_units_read: SmartLog::data_units(512_001),
            data_units_written: SmartLog::data_units(512_000),
            host_read_commands: 7,
            power_on_hours: 1 << 70,
            temp_sensors: [300, 0, 0, 0, 0, 0, 0, 0],
            ..SmartLog::default()
        };
        assert_eq!(SmartLog::data_units(0), 0);
        assert_eq!(SmartLog::data_units(1), 1);
        let b = s.encode();
        assert_eq!(&b[..6], &[0, 0x36, 0x01, 100, 10, 0]);
        assert_eq!(b[32], 2);
        assert_eq!(b[48], 1);
        assert_eq!(b[64], 7);
        assert_eq!(b[128 + 8], 0x40);
        assert_eq!(&b[200..202], &[0x2c, 0x01]);
        assert_eq!(SmartLog::parse(&b).unwrap(), s);
    }

    #[test]
    fn changed_ns_list_overflow() {
        let b = encode_changed_ns_list(&[3, 4]);
        assert_eq!(&b[..12], &[3, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0]);
        let many: Vec<u32> = (1..=1025).collect();
        let b = encode_changed_ns_list(&many);
        assert_eq!(&b[..8], &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        assert_eq!(b.len(), 4096);
    }

    #[test]
    fn ana_log_layout() {
        let log = AnaLog {
            chgcnt: 5,
            groups: vec![
                AnaGroup {
                    grpid: 1,
                    chgcnt: 5,
                    state: AnaState::Optimized,
                    nsids: vec![1, 2],
                },
                AnaGroup {
                    grpid: 2,
                    chgcnt: 3,
                    state: AnaState::Inaccessible,
                    nsids: vec![3],
                },
            ],
        };
        let b = log.encode(false);
        assert_eq!(b.len(), 16 + 32 + 8 + 32 + 4);
        assert_eq!(&b[..16], &[5, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[16..24], &[1, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(b[32], 0x01);
        assert_eq!(&b[48..56], &[1, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(b[56 + 16], 0x03);
        assert_eq!(AnaLog::parse(&b).unwrap(), log);
        let rgo = log.encode(true);
        assert_eq!(rgo.len(), 16 + 64);
        assert_eq!(&rgo[20..24], &[0, 0, 0, 0]);
        assert!(matches!(
            AnaLog::parse(&b[..60]),
            Err(Error::Truncated { .. })
        ));
        let mut bad = b.clone();
        bad[32] = 7;
        assert!(matches!(
            AnaLog::parse(&bad),
            Err(Error::InvalidField { .. })
        ));
        assert_eq!(
            AnaState::Inaccessible.io_status(),
            Some(Status::ANA_INACCESSIBLE)
        );
        assert_eq!(AnaState::Change.io_status(), Some(Status::ANA_TRANSITION));
        assert_eq!(AnaState::NonOptimized.io_status(), None);
    }

    #[test]
    fn discovery_log_layout() {
        let e = DiscoveryEntry {
            trtype: trtype::TCP,
            adrfam: adrfam::IPV4,
            subtype: subtype::NVM,
            treq: TREQ_NOT_REQUIRED | TREQ_DISABLE_SQFLOW,
            portid: 1,
            cntlid: 0xffff,
            asqsz: 32,
            eflags: 0,
            trsvcid: "4420".into(),
            subnqn: "nqn.2024-01.io.ballast:vol1".into(),
            traddr: "127.0.0.1".into(),
            sectype: SECTYPE_NONE,
        };
        let log = DiscoveryLog {
            genctr: 9,
            recfmt: 0,
            entries: vec![e.clone()],
        };
        let b = log.encode();
        assert_eq!(b.len(), 2048);
        assert_eq!(
            &b[..18],
            &[9, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        let r = &b[1024..];
        assert_eq!(&r[..10], &[3, 1, 2, 6, 1, 0, 0xff, 0xff, 32, 0]);
        assert_eq!(&r[32..40], b"4420    ");
        assert_eq!(&r[256..256 + 27], b"nqn.2024-01.io.ballast:vol1");
        assert_eq!(r[256 + 27], 0);
        assert_eq!(&r[512..521], b"127.0.0.1");
        assert_eq!(r[767], b' ');
        assert_eq!(r[768], 0);
        assert_eq!(DiscoveryLog::parse(&b).unwrap(), log);
        assert_eq!(DiscoveryLog::numrec(&b).unwrap(), 1);
        // Only the header fetched.
        assert!(DiscoveryLog::parse(&b[..1024]).unwrap().entries.is_empty());
        // NUL-padded addresses (as some targets send) parse too.
        let mut nul = b.clone();
        nul[1024 + 512 + 9..1024 + 768].fill(0);
        assert_eq!(
            DiscoveryLog::parse(&nul).unwrap().entries[0].traddr,
            "127.0.0.1"
        );
    }

    #[test]
    fn reservation_report_both_formats() {
        let st = ReservationStatus {
            generation: 3,
            rtype: crate::command::rtype::WRITE_EXCLUSIVE,
            ptpls: false,
            registrants: vec![
                Registrant {
                    cntlid: 1,
                    rcsts: 1,
                    hostid: [0xa1; 16],
                    rkey: 0x1111,
                },
                Registrant {
                    cntlid: 2,
                    rcsts: 0,
                    hostid: [0xb2; 16],
                    rkey: 0x2222,
                },
            ],
        };
        let ext = st.encode(true);
        assert_eq!(ext.len(), 64 * 3);
        assert_eq!(&ext[..10], &[3, 0, 0, 0, 1, 2, 0, 0, 0, 0]);
        assert_eq!(&ext[64..67], &[1, 0, 1]);
        assert_eq!(&ext[72..80], &0x1111u64.to_le_bytes());
        assert_eq!(&ext[80..96], &[0xa1; 16]);
        assert_eq!(ReservationStatus::parse(&ext, true).unwrap(), st);

        let reg = st.encode(false);
        assert_eq!(reg.len(), 24 * 3);
        assert_eq!(&reg[24..27], &[1, 0, 1]);
        assert_eq!(&reg[32..40], &[0xa1; 8]);
        assert_eq!(&reg[40..48], &0x1111u64.to_le_bytes());
        let back = ReservationStatus::parse(&reg, false).unwrap();
        assert_eq!(back.registrants[1].rkey, 0x2222);
        assert_eq!(back.registrants[1].hostid[..8], [0xb2; 8]);
        assert_eq!(back.registrants[1].hostid[8..], [0; 8]);
        // Truncated by the host's NUMD: only whole entries are returned.
        assert_eq!(
            ReservationStatus::parse(&ext[..100], true)
                .unwrap()
                .registrants
                .len(),
            0
        );
        assert!(ReservationStatus::parse(&ext[..10], true).is_err());
    }
}
