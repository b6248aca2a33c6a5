//! Reservations of one namespace (NVM Command Set specification, "Reservations"): the
//! registrants, keyed by host identifier, and the reservation they may hold. Pure state, no
//! I/O: a target's queues (or a local user of the same storage) call in with the host's
//! identity and apply the returned status.
//!
//! Registrations belong to a *host* (its 128-bit host identifier), so every controller of the
//! same host shares them. A reservation has a type ([`rtype`]) and a holder; for the
//! "all registrants" types every registrant is a holder.

use std::collections::BTreeMap;

use crate::{Registrant, ReservationRegister, ReservationStatus, Status, rtype};

/// A host's registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reg {
    key: u64,
    /// The controller the host last registered through (reported in Reservation Report).
    cntlid: u16,
}

/// Reservation state of one namespace.
#[derive(Debug, Default, Clone)]
pub struct Reservations {
    regs: BTreeMap<[u8; 16], Reg>,
    /// Holder (for the all-registrants types: the host that acquired it; every registrant
    /// holds it).
    holder: Option<[u8; 16]>,
    rtype: u8,
    generation: u32,
}

/// What kind of I/O command is checked against the reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read (and Compare, Verify).
    Read,
    /// Write, Write Zeroes, Dataset Management, Flush.
    Write,
}

fn conflict() -> Status {
    Status::RESERVATION_CONFLICT.with_dnr()
}

fn invalid() -> Status {
    Status::INVALID_FIELD.with_dnr()
}

const fn all_registrants(t: u8) -> bool {
    matches!(
        t,
        rtype::WRITE_EXCLUSIVE_ALL_REGS | rtype::EXCLUSIVE_ACCESS_ALL_REGS
    )
}

impl Reservations {
    /// Whether a reservation is held (I/O must be checked).
    pub fn is_held(&self) -> bool {
        self.rtype != 0
    }

    fn is_holder(&self, host: &[u8; 16]) -> bool {
        if self.rtype == 0 {
            return false;
        }
        if all_registrants(self.rtype) {
            return self.regs.contains_key(host);
        }
        self.holder.as_ref() == Some(host)
    }

    fn key_ok(&self, host: &[u8; 16], crkey: u64, iekey: bool) -> Result<(), Status> {
        match self.regs.get(host) {
            Some(r) if iekey || r.key == crkey => Ok(()),
            _ => Err(conflict()),
        }
    }

    fn clear_reservation(&mut self) {
        self.holder = None;
        self.rtype = 0;
    }

    /// Drops the reservation when its holder is no longer registered (for the
    /// all-registrants types: when no registrant is left).
    fn settle(&mut self) {
        if self.rtype == 0 {
            return;
        }
        let gone = if all_registrants(self.rtype) {
            self.regs.is_empty()
        } else {
            self.holder.is_none_or(|h| !self.regs.contains_key(&h))
        };
        if gone {
            self.clear_reservation();
        }
    }

    /// The access check of the specification's table "Command Behavior in the Presence of a
    /// Reservation" for an I/O command from `host`.
    pub fn check(&self, host: &[u8; 16], access: Access) -> Result<(), Status> {
        if self.rtype == 0 || self.is_holder(host) {
            return Ok(());
        }
        let registered = self.regs.contains_key(host);
        let ok = match (self.rtype, access) {
            (rtype::WRITE_EXCLUSIVE, Access::Read) => true,
            (rtype::WRITE_EXCLUSIVE, Access::Write) => false,
            (rtype::EXCLUSIVE_ACCESS, _) => false,
            (rtype::WRITE_EXCLUSIVE_REG_ONLY | rtype::WRITE_EXCLUSIVE_ALL_REGS, Access::Read) => {
                true
            }
            (
                rtype::WRITE_EXCLUSIVE_REG_ONLY
                | rtype::WRITE_EXCLUSIVE_ALL_REGS
                | rtype::EXCLUSIVE_ACCESS_REG_ONLY
                | rtype::EXCLUSIVE_ACCESS_ALL_REGS,
                _,
            ) => registered,
            _ => false,
        };
        if ok { Ok(()) } else { Err(conflict()) }
    }

    /// Reservation Register: `rrega` 0 register, 1 unregister, 2 replace; `cptpl` 3 (persist
    /// through power loss) is not supported.
    pub fn register(
        &mut self,
        host: &[u8; 16],
        cntlid: u16,
        cmd: ReservationRegister,
        crkey: u64,
        nrkey: u64,
    ) -> Result<(), Status> {
        let ReservationRegister {
            rrega,
            iekey,
            cptpl,
        } = cmd;
        if cptpl == 1 || cptpl == 3 {
            return Err(invalid());
        }
        match rrega {
            0 => match self.regs.get_mut(host) {
                Some(r) if r.key == nrkey => {
                    r.cntlid = cntlid;
                    Ok(())
                }
                Some(_) => Err(conflict()),
                None => {
                    self.regs.insert(*host, Reg { key: nrkey, cntlid });
                    self.generation = self.generation.wrapping_add(1);
                    Ok(())
                }
            },
            1 => {
                self.key_ok(host, crkey, iekey)?;
                self.regs.remove(host);
                self.settle();
                self.generation = self.generation.wrapping_add(1);
                Ok(())
            }
            2 => {
                match self.regs.get_mut(host) {
                    Some(r) if iekey || r.key == crkey => {
                        r.key = nrkey;
                        r.cntlid = cntlid;
                    }
                    Some(_) => return Err(conflict()),
                    // Not registered: with IEKEY the host registers with the new key.
                    None if iekey => {
                        self.regs.insert(*host, Reg { key: nrkey, cntlid });
                    }
                    None => return Err(conflict()),
                }
                self.generation = self.generation.wrapping_add(1);
                Ok(())
            }
            _ => Err(invalid()),
        }
    }

    /// Reservation Acquire: `racqa` 0 acquire, 1 preempt, 2 preempt and abort (treated as
    /// preempt: commands in flight are not aborted).
    pub fn acquire(
        &mut self,
        host: &[u8; 16],
        racqa: u8,
        iekey: bool,
        rt: u8,
        crkey: u64,
        prkey: u64,
    ) -> Result<(), Status> {
        if !(rtype::WRITE_EXCLUSIVE..=rtype::EXCLUSIVE_ACCESS_ALL_REGS).contains(&rt) {
            return Err(invalid());
        }
        self.key_ok(host, crkey, iekey)?;
        match racqa {
            0 => {
                if self.rtype == 0 {
                    self.rtype = rt;
                    self.holder = Some(*host);
                    Ok(())
                } else if self.is_holder(host) && self.rtype == rt {
                    Ok(())
                } else {
                    Err(conflict())
                }
            }
            1 | 2 => {
                self.preempt(host, rt, prkey)?;
                self.generation = self.generation.wrapping_add(1);
                Ok(())
            }
            _ => Err(invalid()),
        }
    }

    fn remove_key(&mut self, key: u64, except: &[u8; 16]) {
        self.regs.retain(|h, r| h == except || r.key != key);
    }

    fn preempt(&mut self, host: &[u8; 16], rt: u8, prkey: u64) -> Result<(), Status> {
        if self.rtype == 0 {
            // No reservation: remove the registrants holding PRKEY.
            if prkey == 0 {
                return Err(invalid());
            }
            self.remove_key(prkey, host);
            return Ok(());
        }
        if all_registrants(self.rtype) {
            if prkey == 0 {
                // Every other registrant goes; the preempting host takes a new reservation.
                self.regs.retain(|h, _| h == host);
                self.rtype = rt;
                self.holder = Some(*host);
            } else {
                self.remove_key(prkey, host);
                self.settle();
            }
            return Ok(());
        }
        let holder_key = self.holder.and_then(|h| self.regs.get(&h)).map(|r| r.key);
        if holder_key == Some(prkey) {
            // Preempting the holder: its registration (and every other with that key) goes
            // and the preempting host holds the reservation, possibly of another type.
            self.remove_key(prkey, host);
            self.rtype = rt;
            self.holder = Some(*host);
            Ok(())
        } else {
            if prkey == 0 {
                return Err(invalid());
            }
            self.remove_key(prkey, host);
            self.settle();
            Ok(())
        }
    }

    /// Reservation Release: `rrela` 0 release, 1 clear (also removes every registrant).
    pub fn release(
        &mut self,
        host: &[u8; 16],
        rrela: u8,
        iekey: bool,
        rt: u8,
        crkey: u64,
    ) -> Result<(), Status> {
        self.key_ok(host, crkey, iekey)?;
        match rrela {
            0 => {
                if self.rtype == 0 || !self.is_holder(host) {
                    return Ok(());
                }
                if self.rtype != rt {
                    return Err(invalid());
                }
                self.clear_reservation();
                Ok(())
            }
            1 => {
                self.clear_reservation();
                self.regs.clear();
                self.generation = self.generation.wrapping_add(1);
                Ok(())
            }
            _ => Err(invalid()),
        }
    }

    /// The Reservation Report data.
    pub fn report(&self) -> ReservationStatus {
        ReservationStatus {
            generation: self.generation,
            rtype: self.rtype,
            ptpls: false,
            registrants: self
                .regs
                .iter()
                .map(|(h, r)| Registrant {
                    cntlid: r.cntlid,
                    rcsts: u8::from(self.is_holder(h)),
                    hostid: *h,
                    rkey: r.key,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 16] = [1; 16];
    const B: [u8; 16] = [2; 16];
    const C: [u8; 16] = [3; 16];

    fn reg(rrega: u8, iekey: bool, cptpl: u8) -> ReservationRegister {
        ReservationRegister {
            rrega,
            iekey,
            cptpl,
        }
    }

    fn conflict_err() -> Result<(), Status> {
        Err(conflict())
    }

    #[test]
    fn register_acquire_release() {
        let mut r = Reservations::default();
        assert_eq!(r.register(&A, 1, reg(0, false, 0), 0, 0xa), Ok(()));
        // Registering again with another key conflicts; with the same key is a no-op.
        assert_eq!(r.register(&A, 1, reg(0, false, 0), 0, 0xb), conflict_err());
        assert_eq!(r.register(&A, 1, reg(0, false, 0), 0, 0xa), Ok(()));
        assert_eq!(r.register(&B, 2, reg(0, false, 0), 0, 0xb), Ok(()));
        assert_eq!(r.report().generation, 2);
        // Wrong key, unregistered host.
        assert_eq!(
            r.acquire(&A, 0, false, rtype::WRITE_EXCLUSIVE, 0xb, 0),
            conflict_err()
        );
        assert_eq!(
            r.acquire(&C, 0, false, rtype::WRITE_EXCLUSIVE, 0, 0),
            conflict_err()
        );
        assert_eq!(
            r.acquire(&A, 0, false, rtype::WRITE_EXCLUSIVE, 0xa, 0),
            Ok(())
        );
        assert!(r.is_held());
        assert_eq!(
            r.acquire(&B, 0, false, rtype::WRITE_EXCLUSIVE, 0xb, 0),
            conflict_err()
        );
        // Write exclusive: everyone reads, only the holder writes.
        assert_eq!(r.check(&A, Access::Write), Ok(()));
        assert_eq!(r.check(&B, Access::Write), conflict_err());
        assert_eq!(r.check(&C, Access::Write), conflict_err());
        assert_eq!(r.check(&C, Access::Read), Ok(()));
        let rep = r.report();
        assert_eq!(rep.rtype, rtype::WRITE_EXCLUSIVE);
        assert_eq!(rep.registrants.len(), 2);
        assert_eq!(rep.registrants[0].rcsts, 1);
        assert_eq!(rep.registrants[1].rcsts, 0);
        // Release with the wrong type is invalid; a non-holder's release does nothing.
        assert_eq!(
            r.release(&A, 0, false, rtype::EXCLUSIVE_ACCESS, 0xa),
            Err(invalid())
        );
        assert_eq!(r.release(&B, 0, false, rtype::WRITE_EXCLUSIVE, 0xb), Ok(()));
        assert!(r.is_held());
        assert_eq!(r.release(&A, 0, false, rtype::WRITE_EXCLUSIVE, 0xa), Ok(()));
        assert!(!r.is_held());
        assert_eq!(r.check(&C, Access::Write), Ok(()));
    }

    #[test]
    fn access_table() {
        let cases = [
            // (type, registered non-holder read/write, unregistered read/write)
            (rtype::WRITE_EXCLUSIVE, true, false, true, false),
            (rtype::EXCLUSIVE_ACCESS, false, false, false, false),
            (rtype::WRITE_EXCLUSIVE_REG_ONLY, true, true, true, false),
            (rtype::EXCLUSIVE_ACCESS_REG_ONLY, true, true, false, false),
            (rtype::WRITE_EXCLUSIVE_ALL_REGS, true, true, true, false),
            (rtype::EXCLUSIVE_ACCESS_ALL_REGS, true, true, false, false),
        ];
        for (t, rr, rw, ur, uw) in cases {
            let mut r = Reservations::default();
            r.register(&A, 1, reg(0, false, 0), 0, 1).unwrap();
            r.register(&B, 2, reg(0, false, 0), 0, 2).unwrap();
            r.acquire(&A, 0, false, t, 1, 0).unwrap();
            let ok = |h, a| r.check(h, a).is_ok();
            assert!(ok(&A, Access::Read) && ok(&A, Access::Write), "type {t}");
            assert_eq!(ok(&B, Access::Read), rr, "type {t} registrant read");
            assert_eq!(ok(&B, Access::Write), rw, "type {t} registrant write");
            assert_eq!(ok(&C, Access::Read), ur, "type {t} other read");
            assert_eq!(ok(&C, Access::Write), uw, "type {t} other write");
        }
    }

    #[test]
    fn preempt_and_clear() {
        let mut r = Reservations::default();
        r.register(&A, 1, reg(0, false, 0), 0, 1).unwrap();
        r.register(&B, 2, reg(0, false, 0), 0, 2).unwrap();
        r.acquire(&A, 0, false, rtype::EXCLUSIVE_ACCESS, 1, 0)
            .unwrap();
        // B preempts A: A's registration goes, B holds the reservation.
        r.acquire(&B, 1, false, rtype::WRITE_EXCLUSIVE, 2, 1)
            .unwrap();
        let rep = r.report();
        assert_eq!(rep.rtype, rtype::WRITE_EXCLUSIVE);
        assert_eq!(rep.registrants.len(), 1);
        assert_eq!(rep.registrants[0].hostid, B);
        assert_eq!(r.check(&A, Access::Write), conflict_err());
        // A, no longer registered, cannot even release.
        assert_eq!(
            r.release(&A, 0, false, rtype::WRITE_EXCLUSIVE, 1),
            conflict_err()
        );
        // Unregistering the holder drops the reservation.
        r.register(&B, 2, reg(1, false, 0), 2, 0).unwrap();
        assert!(!r.is_held());
        // Clear removes everything.
        r.register(&A, 1, reg(0, false, 0), 0, 1).unwrap();
        r.register(&C, 3, reg(0, false, 0), 0, 3).unwrap();
        r.acquire(&C, 0, false, rtype::WRITE_EXCLUSIVE_ALL_REGS, 3, 0)
            .unwrap();
        assert_eq!(r.check(&A, Access::Write), Ok(()));
        assert_eq!(r.check(&B, Access::Write), conflict_err());
        r.release(&A, 1, false, 0, 1).unwrap();
        assert!(!r.is_held());
        assert!(r.report().registrants.is_empty());
    }

    #[test]
    fn replace_and_bad_fields() {
        let mut r = Reservations::default();
        assert_eq!(r.register(&A, 1, reg(2, false, 0), 0, 5), conflict_err());
        r.register(&A, 1, reg(2, true, 0), 0, 5).unwrap();
        r.register(&A, 1, reg(2, false, 0), 5, 6).unwrap();
        assert_eq!(r.report().registrants[0].rkey, 6);
        assert_eq!(r.register(&A, 1, reg(3, false, 0), 0, 0), Err(invalid()));
        assert_eq!(r.register(&A, 1, reg(0, false, 3), 0, 6), Err(invalid()));
        assert_eq!(r.acquire(&A, 0, false, 0, 6, 0), Err(invalid()));
        assert_eq!(r.acquire(&A, 0, false, 7, 6, 0), Err(invalid()));
        assert_eq!(r.acquire(&A, 3, false, 1, 6, 0), Err(invalid()));
    }
}
