//! Feature identifiers and value layouts (NVMe Base specification "Feature
//! Values"), and the Asynchronous Event Request completion (DW0).

use crate::wire::{bit, bits};

/// Feature identifiers (Set/Get Features FID).
pub mod feature_id {
    /// Arbitration.
    pub const ARBITRATION: u8 = 0x01;
    /// Power Management.
    pub const POWER_MANAGEMENT: u8 = 0x02;
    /// Temperature Threshold.
    pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
    /// Error Recovery.
    pub const ERROR_RECOVERY: u8 = 0x05;
    /// Volatile Write Cache.
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    /// Number of Queues.
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    /// Interrupt Coalescing (PCIe only).
    pub const INTERRUPT_COALESCING: u8 = 0x08;
    /// Write Atomicity Normal.
    pub const WRITE_ATOMICITY: u8 = 0x0a;
    /// Asynchronous Event Configuration.
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0b;
    /// Timestamp.
    pub const TIMESTAMP: u8 = 0x0e;
    /// Keep Alive Timer.
    pub const KEEP_ALIVE_TIMER: u8 = 0x0f;
    /// Host Behavior Support.
    pub const HOST_BEHAVIOR: u8 = 0x16;
    /// Host Identifier.
    pub const HOST_IDENTIFIER: u8 = 0x81;
    /// Reservation Notification Mask.
    pub const RESERVATION_NOTIFICATION_MASK: u8 = 0x82;
    /// Reservation Persistence.
    pub const RESERVATION_PERSISTENCE: u8 = 0x83;
}

/// Get Features SEL values.
pub mod feature_select {
    /// Current value.
    pub const CURRENT: u8 = 0;
    /// Default value.
    pub const DEFAULT: u8 = 1;
    /// Saved value.
    pub const SAVED: u8 = 2;
    /// Supported capabilities (DW0 bit 0 saveable, bit 1 namespace
    /// specific, bit 2 changeable).
    pub const SUPPORTED_CAPABILITIES: u8 = 3;
}

/// Number of Queues (07h), in Set Features CDW11 and in the completion
/// DW0 of both Set and Get: submission queues (15:0) and completion
/// queues (31:16), both 0's based and not counting the admin queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NumberOfQueues {
    /// Submission queues requested/allocated, 0's based.
    pub nsq: u16,
    /// Completion queues requested/allocated, 0's based.
    pub ncq: u16,
}

impl NumberOfQueues {
    /// Decodes CDW11 or DW0.
    #[must_use]
    pub const fn from_dword(v: u32) -> NumberOfQueues {
        NumberOfQueues {
            nsq: v as u16,
            ncq: (v >> 16) as u16,
        }
    }

    /// Encodes CDW11 or DW0.
    #[must_use]
    pub const fn to_dword(self) -> u32 {
        self.nsq as u32 | ((self.ncq as u32) << 16)
    }

    /// What a controller allocating at most `max` I/O queues of each kind
    /// answers (the smaller of the request and `max`, 0's based). A request
    /// of FFFFh is invalid (the caller returns Invalid Field).
    #[must_use]
    pub fn grant(self, max: u16) -> NumberOfQueues {
        let cap = max.saturating_sub(1);
        NumberOfQueues {
            nsq: self.nsq.min(cap),
            ncq: self.ncq.min(cap),
        }
    }
}

/// Arbitration (01h): burst (2:0), low (15:8), medium (23:16) and high
/// (31:24) priority weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Arbitration {
    /// Arbitration burst (log2; 7 = no limit).
    pub ab: u8,
    /// Low priority weight.
    pub lpw: u8,
    /// Medium priority weight.
    pub mpw: u8,
    /// High priority weight.
    pub hpw: u8,
}

impl Arbitration {
    /// Decodes the dword.
    #[must_use]
    pub const fn from_dword(v: u32) -> Arbitration {
        Arbitration {
            ab: bits(v, 0, 2) as u8,
            lpw: bits(v, 8, 15) as u8,
            mpw: bits(v, 16, 23) as u8,
            hpw: bits(v, 24, 31) as u8,
        }
    }

    /// Encodes the dword.
    #[must_use]
    pub const fn to_dword(self) -> u32 {
        (self.ab & 7) as u32
            | ((self.lpw as u32) << 8)
            | ((self.mpw as u32) << 16)
            | ((self.hpw as u32) << 24)
    }
}

/// Power Management (02h): power state (4:0), workload hint (7:5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PowerManagement {
    /// Power state.
    pub ps: u8,
    /// Workload hint.
    pub wh: u8,
}

impl PowerManagement {
    /// Decodes the dword.
    #[must_use]
    pub const fn from_dword(v: u32) -> PowerManagement {
        PowerManagement {
            ps: bits(v, 0, 4) as u8,
            wh: bits(v, 5, 7) as u8,
        }
    }

    /// Encodes the dword.
    #[must_use]
    pub const fn to_dword(self) -> u32 {
        (self.ps & 0x1f) as u32 | (((self.wh & 7) as u32) << 5)
    }
}

/// Volatile Write Cache (06h): bit 0 enables the cache.
#[must_use]
pub const fn volatile_write_cache_enabled(v: u32) -> bool {
    bit(v, 0)
}

/// Keep Alive Timer (0Fh): the timeout in milliseconds (CDW11 / DW0); 0
/// disables keep alive.
#[must_use]
pub const fn keep_alive_timeout_ms(v: u32) -> u32 {
    v
}

/// Host Identifier (81h): CDW11 bit 0 (EXHID) selects a 128-bit
/// identifier (16 bytes of data) over a 64-bit one (8 bytes). Fabrics
/// controllers require 128-bit identifiers; the identifier is the HOSTID of
/// the Connect data and cannot be changed by Set Features.
#[must_use]
pub const fn host_identifier_extended(cdw11: u32) -> bool {
    bit(cdw11, 0)
}

/// Reservation Notification Mask (82h): a set bit suppresses the
/// notification.
pub mod resv_notification_mask {
    /// Registration preempted (bit 1).
    pub const REGPRE: u32 = 1 << 1;
    /// Reservation released (bit 2).
    pub const RESREL: u32 = 1 << 2;
    /// Reservation preempted (bit 3).
    pub const RESPRE: u32 = 1 << 3;
}

/// Reservation Persistence (83h): bit 0 PTPL (persist through power
/// loss).
#[must_use]
pub const fn reservation_persistence_ptpl(v: u32) -> bool {
    bit(v, 0)
}

/// Asynchronous Event Configuration (0Bh) bits.
pub mod async_event_config {
    /// SMART / health critical warnings (7:0).
    pub const SMART_CRITICAL_WARNINGS: u32 = 0xff;
    /// Namespace attribute notices.
    pub const NAMESPACE_ATTRIBUTE: u32 = 1 << 8;
    /// Firmware activation notices.
    pub const FIRMWARE_ACTIVATION: u32 = 1 << 9;
    /// Telemetry log notices.
    pub const TELEMETRY_LOG: u32 = 1 << 10;
    /// ANA change notices.
    pub const ANA_CHANGE: u32 = 1 << 11;
    /// Discovery log page change notices.
    pub const DISCOVERY_LOG_CHANGE: u32 = 1 << 31;
}

/// Asynchronous event types (AER completion DW0 bits 2:0).
pub mod async_event_type {
    /// Error status.
    pub const ERROR: u8 = 0;
    /// SMART / health status.
    pub const SMART: u8 = 1;
    /// Notice.
    pub const NOTICE: u8 = 2;
    /// I/O command specific status (e.g. reservation log page available).
    pub const IO_COMMAND_SPECIFIC: u8 = 6;
    /// Vendor specific.
    pub const VENDOR: u8 = 7;
}

/// Asynchronous event information for [`async_event_type::NOTICE`].
pub mod async_event_notice {
    /// Namespace attribute changed (read the Changed Namespace List).
    pub const NAMESPACE_ATTRIBUTE_CHANGED: u8 = 0x00;
    /// Firmware activation starting.
    pub const FIRMWARE_ACTIVATION_STARTING: u8 = 0x01;
    /// Telemetry log changed.
    pub const TELEMETRY_LOG_CHANGED: u8 = 0x02;
    /// Asymmetric namespace access change (read the ANA log page).
    pub const ANA_CHANGE: u8 = 0x03;
    /// Discovery log page change.
    pub const DISCOVERY_LOG_CHANGE: u8 = 0xf0;
}

/// Asynchronous event information for
/// [`async_event_type::IO_COMMAND_SPECIFIC`]: reservation log page
/// available.
pub const ASYNC_EVENT_RESERVATION_LOG: u8 = 0x00;

/// An Asynchronous Event Request completion (DW0): event type (2:0),
/// event information (15:8), associated log page (23:16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AsyncEvent {
    /// Event type ([`async_event_type`]).
    pub event_type: u8,
    /// Event information ([`async_event_notice`], ...).
    pub info: u8,
    /// Log page to read to clear the event ([`log_id`](crate::log_id)).
    pub log_page: u8,
}

impl AsyncEvent {
    /// "Namespace attribute changed": read the Changed Namespace List.
    pub const NAMESPACE_CHANGED: AsyncEvent = AsyncEvent {
        event_type: async_event_type::NOTICE,
        info: async_event_notice::NAMESPACE_ATTRIBUTE_CHANGED,
        log_page: crate::log::log_id::CHANGED_NS,
    };
    /// "ANA change": read the ANA log page.
    pub const ANA_CHANGE: AsyncEvent = AsyncEvent {
        event_type: async_event_type::NOTICE,
        info: async_event_notice::ANA_CHANGE,
        log_page: crate::log::log_id::ANA,
    };
    /// "Discovery log page change".
    pub const DISCOVERY_CHANGE: AsyncEvent = AsyncEvent {
        event_type: async_event_type::NOTICE,
        info: async_event_notice::DISCOVERY_LOG_CHANGE,
        log_page: crate::log::log_id::DISCOVERY,
    };
    /// "Reservation log page available".
    pub const RESERVATION_LOG: AsyncEvent = AsyncEvent {
        event_type: async_event_type::IO_COMMAND_SPECIFIC,
        info: ASYNC_EVENT_RESERVATION_LOG,
        log_page: crate::log::log_id::RESERVATION,
    };

    /// Decodes completion DW0.
    #[must_use]
    pub const fn from_dw0(v: u32) -> AsyncEvent {
        AsyncEvent {
            event_type: bits(v, 0, 2) as u8,
            info: bits(v, 8, 15) as u8,
            log_page: bits(v, 16, 23) as u8,
        }
    }

    /// Encodes completion DW0.
    #[must_use]
    pub const fn to_dw0(self) -> u32 {
        (self.event_type & 7) as u32 | ((self.info as u32) << 8) | ((self.log_page as u32) << 16)
    }

    /// The Asynchronous Event Configuration bit that enables this event,
    /// if it is a notice that can be masked.
    #[must_use]
    pub const fn config_bit(self) -> Option<u32> {
        if self.event_type != async_event_type::NOTICE {
            return None;
        }
        match self.info {
            async_event_notice::NAMESPACE_ATTRIBUTE_CHANGED => {
                Some(async_event_config::NAMESPACE_ATTRIBUTE)
            }
            async_event_notice::FIRMWARE_ACTIVATION_STARTING => {
                Some(async_event_config::FIRMWARE_ACTIVATION)
            }
            async_event_notice::TELEMETRY_LOG_CHANGED => Some(async_event_config::TELEMETRY_LOG),
            async_event_notice::ANA_CHANGE => Some(async_event_config::ANA_CHANGE),
            async_event_notice::DISCOVERY_LOG_CHANGE => {
                Some(async_event_config::DISCOVERY_LOG_CHANGE)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_of_queues() {
        // The Linux host asks for 4 I/O queues: NSQR = NCQR = 3.
        let q = NumberOfQueues::from_dword(0x0003_0003);
        assert_eq!((q.nsq, q.ncq), (3, 3));
        assert_eq!(q.grant(2).to_dword(), 0x0001_0001);
        assert_eq!(q.grant(64), q);
        assert_eq!(NumberOfQueues { nsq: 1, ncq: 2 }.to_dword(), 0x0002_0001);
    }

    #[test]
    fn small_features() {
        let a = Arbitration {
            ab: 7,
            lpw: 1,
            mpw: 2,
            hpw: 3,
        };
        assert_eq!(a.to_dword(), 0x0302_0107);
        assert_eq!(Arbitration::from_dword(0x0302_0107), a);
        let p = PowerManagement { ps: 2, wh: 1 };
        assert_eq!(p.to_dword(), 0x22);
        assert_eq!(PowerManagement::from_dword(0x22), p);
        assert!(volatile_write_cache_enabled(1));
        assert!(!volatile_write_cache_enabled(2));
        assert!(host_identifier_extended(1));
        assert!(reservation_persistence_ptpl(1));
        assert_eq!(keep_alive_timeout_ms(5000), 5000);
    }

    #[test]
    fn async_event_dw0() {
        // ANA change: type 2, info 03h, log page 0Ch.
        assert_eq!(AsyncEvent::ANA_CHANGE.to_dw0(), 0x000c_0302);
        assert_eq!(AsyncEvent::NAMESPACE_CHANGED.to_dw0(), 0x0004_0002);
        assert_eq!(AsyncEvent::DISCOVERY_CHANGE.to_dw0(), 0x0070_f002);
        assert_eq!(AsyncEvent::RESERVATION_LOG.to_dw0(), 0x0080_0006);
        assert_eq!(AsyncEvent::from_dw0(0x000c_0302), AsyncEvent::ANA_CHANGE);
        assert_eq!(
            AsyncEvent::ANA_CHANGE.config_bit(),
            Some(async_event_config::ANA_CHANGE)
        );
        assert_eq!(AsyncEvent::RESERVATION_LOG.config_bit(), None);
    }
}
