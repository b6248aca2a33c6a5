//! Finding pools among devices: which device holds which member of which pool.
//!
//! Every member device of a pool carries both superblock copies, each naming the pool (UUID)
//! and which member it is on. Scanning reads them from every candidate device, groups the
//! devices by pool and orders each group by the newest superblock's member list, so a pool is
//! imported only with all its members, in order, whatever order the devices were given in.

use blockdev::Device;

use crate::pool::read_superblock;
use crate::superblock::{Superblock, SuperblockError};

/// What a scan found.
#[derive(Debug)]
pub enum Found {
    /// A pool: its newest superblock and, for each member in order, the index of the
    /// candidate device holding it (`None`: not among the candidates).
    Pool {
        /// The newest superblock any member holds (member 0's view).
        superblock: Superblock,
        /// Candidate index per member.
        members: Vec<Option<usize>>,
        /// Candidates that claim membership but do not fit (a second device with the same
        /// member identity, e.g. a copied image), with the reason.
        rejected: Vec<(usize, String)>,
    },
    /// A candidate whose superblock copies are both damaged (at least one has the pool
    /// magic), or that could not be read.
    Damaged {
        /// Candidate index.
        candidate: usize,
        /// Pool name, if the damaged copy still shows it.
        name: Option<String>,
        /// What is wrong, precisely.
        reason: String,
    },
}

impl Found {
    /// Whether every member was found.
    pub fn complete(&self) -> bool {
        matches!(self, Found::Pool { members, .. } if members.iter().all(Option::is_some))
    }

    /// Which members are missing, as text (empty when complete).
    pub fn missing(&self) -> String {
        let Found::Pool {
            superblock,
            members,
            ..
        } = self
        else {
            return String::new();
        };
        members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.is_none())
            .map(|(i, _)| {
                format!(
                    "member {i} (uuid {}, {} bytes)",
                    hex(&superblock.members[i].uuid),
                    superblock.members[i].size
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Lower-case hex of a UUID.
pub fn hex(u: &[u8; 16]) -> String {
    u.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the superblocks of every candidate and groups them into pools. Candidates that hold
/// no pool at all (no pool magic in either copy) are not mentioned.
pub async fn scan(candidates: &[Device]) -> Vec<Found> {
    let mut found = Vec::new();
    // (candidate, its chosen copy)
    let mut copies: Vec<(usize, Superblock)> = Vec::new();
    for (i, dev) in candidates.iter().enumerate() {
        match read_superblock(dev).await {
            Err(e) => found.push(Found::Damaged {
                candidate: i,
                name: None,
                reason: format!("cannot read the superblocks: {e}"),
            }),
            Ok(Ok((sb, _))) => copies.push((i, sb)),
            Ok(Err([SuperblockError::NotAPool, SuperblockError::NotAPool])) => {}
            Ok(Err([a, b])) => found.push(Found::Damaged {
                candidate: i,
                name: None,
                reason: format!("superblock copy A: {a}; copy B: {b}"),
            }),
        }
    }
    let mut uuids: Vec<[u8; 16]> = copies.iter().map(|(_, sb)| sb.uuid).collect();
    uuids.sort();
    uuids.dedup();
    for uuid in uuids {
        let group: Vec<&(usize, Superblock)> =
            copies.iter().filter(|(_, sb)| sb.uuid == uuid).collect();
        let newest = group
            .iter()
            .map(|(_, sb)| sb)
            .max_by_key(|sb| sb.generation)
            .expect("a group has a member")
            .for_member(0);
        let mut members = vec![None; newest.members.len()];
        let mut rejected = Vec::new();
        for (i, sb) in &group {
            let own = sb.member_uuid();
            match newest.members.iter().position(|m| m.uuid == own) {
                Some(slot) if members[slot].is_none() => members[slot] = Some(*i),
                Some(slot) => rejected.push((
                    *i,
                    format!(
                        "also claims to be member {slot} of pool {:?} (a copy of another \
                         device?)",
                        newest.name
                    ),
                )),
                None => rejected.push((
                    *i,
                    format!(
                        "claims membership of pool {:?} but its newest superblock does not \
                         list it",
                        newest.name
                    ),
                )),
            }
        }
        found.push(Found::Pool {
            superblock: newest,
            members,
            rejected,
        });
    }
    found
}
