//! NVMe reservations (NVM Command Set specification, "Reservations") mapped onto the
//! device's protocol-neutral fencing state ([`blockdev::fence::Reservations`]), which local
//! users of the same device share: a host fenced out here is fenced out there too.
//!
//! The commands' fields become fencing operations: Register's RREGA 0/1/2 → register /
//! unregister / replace key, Acquire's RACQA 0 → acquire, 1 and 2 → preempt (preempt and
//! abort does not abort commands in flight), Release's RRELA 0/1 → release / clear; IEKEY →
//! [`Key::Any`]; the reservation type → [`Mode`]. Refusals come back as RESERVATION CONFLICT,
//! impossible requests as INVALID FIELD, both with Do Not Retry.

use blockdev::fence::{Access, FenceError, HostId, Key, Mode, Reservations};
use proto_nvme::{
    Registrant, ReservationAcquire, ReservationKeys, ReservationRegister, ReservationRelease,
    ReservationStatus, Status, rtype,
};

fn invalid() -> Status {
    Status::INVALID_FIELD.with_dnr()
}

/// The NVMe status of a refusal.
pub(crate) fn status_of(e: FenceError) -> Status {
    match e {
        FenceError::Conflict => Status::RESERVATION_CONFLICT.with_dnr(),
        FenceError::Invalid(_) => invalid(),
    }
}

/// The mode an NVMe reservation type stands for.
fn mode_of(t: u8) -> Result<Mode, Status> {
    Ok(match t {
        rtype::WRITE_EXCLUSIVE => Mode::WriteExclusive,
        rtype::EXCLUSIVE_ACCESS => Mode::ExclusiveAccess,
        rtype::WRITE_EXCLUSIVE_REG_ONLY => Mode::WriteExclusiveRegistrantsOnly,
        rtype::EXCLUSIVE_ACCESS_REG_ONLY => Mode::ExclusiveAccessRegistrantsOnly,
        rtype::WRITE_EXCLUSIVE_ALL_REGS => Mode::WriteExclusiveAllRegistrants,
        rtype::EXCLUSIVE_ACCESS_ALL_REGS => Mode::ExclusiveAccessAllRegistrants,
        _ => return Err(invalid()),
    })
}

/// The NVMe reservation type of a mode.
fn rtype_of(m: Mode) -> u8 {
    match m {
        Mode::WriteExclusive => rtype::WRITE_EXCLUSIVE,
        Mode::ExclusiveAccess => rtype::EXCLUSIVE_ACCESS,
        Mode::WriteExclusiveRegistrantsOnly => rtype::WRITE_EXCLUSIVE_REG_ONLY,
        Mode::ExclusiveAccessRegistrantsOnly => rtype::EXCLUSIVE_ACCESS_REG_ONLY,
        Mode::WriteExclusiveAllRegistrants => rtype::WRITE_EXCLUSIVE_ALL_REGS,
        Mode::ExclusiveAccessAllRegistrants => rtype::EXCLUSIVE_ACCESS_ALL_REGS,
    }
}

fn key(iekey: bool, crkey: u64) -> Key {
    if iekey { Key::Any } else { Key::Current(crkey) }
}

/// The access check of the specification's table "Command Behavior in the Presence of a
/// Reservation" for an I/O command from `host`.
pub(crate) fn check(r: &Reservations, host: &HostId, access: Access) -> Result<(), Status> {
    r.check(host, access).map_err(status_of)
}

/// Reservation Register from `host` through controller `cntlid`; CPTPL (persist through power
/// loss) is not supported.
pub(crate) fn register(
    r: &Reservations,
    host: &HostId,
    cntlid: u16,
    cmd: ReservationRegister,
    keys: ReservationKeys,
) -> Result<(), Status> {
    if cmd.cptpl == 1 || cmd.cptpl == 3 {
        return Err(invalid());
    }
    let current = key(cmd.iekey, keys.crkey);
    match cmd.rrega {
        0 => r.register(host, keys.other, cntlid),
        1 => r.unregister(host, current),
        2 => r.replace_key(host, current, keys.other, cntlid),
        _ => return Err(invalid()),
    }
    .map_err(status_of)
}

/// Reservation Acquire from `host`.
pub(crate) fn acquire(
    r: &Reservations,
    host: &HostId,
    cmd: ReservationAcquire,
    keys: ReservationKeys,
) -> Result<(), Status> {
    let mode = mode_of(cmd.rtype)?;
    let current = key(cmd.iekey, keys.crkey);
    match cmd.racqa {
        0 => r.acquire(host, current, mode),
        1 | 2 => r.preempt(host, current, mode, keys.other),
        _ => return Err(invalid()),
    }
    .map_err(status_of)
}

/// Reservation Release from `host` (RRELA 1 is Clear).
pub(crate) fn release(
    r: &Reservations,
    host: &HostId,
    cmd: ReservationRelease,
    crkey: u64,
) -> Result<(), Status> {
    let current = key(cmd.iekey, crkey);
    match cmd.rrela {
        0 => r.release(host, current, mode_of(cmd.rtype)?),
        1 => r.clear(host, current),
        _ => return Err(invalid()),
    }
    .map_err(status_of)
}

/// The Reservation Report data.
pub(crate) fn report(r: &Reservations) -> ReservationStatus {
    let rep = r.report();
    ReservationStatus {
        generation: rep.generation,
        rtype: rep.mode.map_or(0, rtype_of),
        ptpls: false,
        registrants: rep
            .registrants
            .iter()
            .map(|g| Registrant {
                cntlid: g.path,
                rcsts: u8::from(g.holds),
                hostid: g.host,
                rkey: g.key,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: HostId = [1; 16];

    fn reg(rrega: u8, iekey: bool, cptpl: u8) -> ReservationRegister {
        ReservationRegister {
            rrega,
            iekey,
            cptpl,
        }
    }

    fn keys(crkey: u64, other: u64) -> ReservationKeys {
        ReservationKeys { crkey, other }
    }

    #[test]
    fn nvme_fields_map_onto_fencing_and_back() {
        let r = Reservations::new();
        let conflict = Err(Status::RESERVATION_CONFLICT.with_dnr());
        assert_eq!(register(&r, &A, 1, reg(2, false, 0), keys(0, 5)), conflict);
        register(&r, &A, 1, reg(2, true, 0), keys(0, 5)).unwrap();
        register(&r, &A, 7, reg(2, false, 0), keys(5, 6)).unwrap();
        let rep = report(&r);
        assert_eq!((rep.registrants[0].rkey, rep.registrants[0].cntlid), (6, 7));
        assert_eq!(
            register(&r, &A, 1, reg(3, false, 0), keys(0, 0)),
            Err(invalid())
        );
        assert_eq!(
            register(&r, &A, 1, reg(0, false, 3), keys(0, 6)),
            Err(invalid())
        );
        let acq = |racqa, rtype| ReservationAcquire {
            racqa,
            iekey: false,
            rtype,
        };
        assert_eq!(acquire(&r, &A, acq(0, 0), keys(6, 0)), Err(invalid()));
        assert_eq!(acquire(&r, &A, acq(0, 7), keys(6, 0)), Err(invalid()));
        assert_eq!(acquire(&r, &A, acq(3, 1), keys(6, 0)), Err(invalid()));
        acquire(&r, &A, acq(0, rtype::EXCLUSIVE_ACCESS_REG_ONLY), keys(6, 0)).unwrap();
        let rep = report(&r);
        assert_eq!(rep.rtype, rtype::EXCLUSIVE_ACCESS_REG_ONLY);
        assert_eq!(rep.registrants[0].rcsts, 1);
        assert_eq!(check(&r, &[9; 16], Access::Read), conflict);
        let rel = |rrela, rtype| ReservationRelease {
            rrela,
            iekey: false,
            rtype,
        };
        assert_eq!(
            release(&r, &A, rel(0, rtype::WRITE_EXCLUSIVE), 6),
            Err(invalid())
        );
        release(&r, &A, rel(1, 0), 6).unwrap();
        assert_eq!(report(&r).registrants.len(), 0);
        for t in 1..=6 {
            assert_eq!(rtype_of(mode_of(t).unwrap()), t);
        }
    }
}
