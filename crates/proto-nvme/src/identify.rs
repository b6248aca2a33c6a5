//! Identify data structures (NVMe Base specification "Identify Controller
//! Data Structure", "Active Namespace ID list", "Namespace Identification
//! Descriptor"; NVM Command Set specification "Identify Namespace Data
//! Structure"). Each is 4096 bytes.

use crate::error::{Error, Result};
use crate::fabrics::NQN_FIELD_LEN;
use crate::wire::{
    arr, fixed, get_padded_string, get_str_nul, put, put_ascii_padded, put_str_nul, put_u16,
    put_u32, put_u64, put_u128, u16_at, u32_at, u64_at, u128_at,
};

/// Size of every Identify data structure.
pub const IDENTIFY_LEN: usize = 4096;

/// CNS values of the Identify command.
pub mod cns {
    /// Identify Namespace (NVM command set) for NSID.
    pub const NAMESPACE: u8 = 0x00;
    /// Identify Controller.
    pub const CONTROLLER: u8 = 0x01;
    /// Active Namespace ID list: active NSIDs greater than NSID.
    pub const ACTIVE_NAMESPACES: u8 = 0x02;
    /// Namespace Identification Descriptor list for NSID.
    pub const NS_ID_DESCRIPTORS: u8 = 0x03;
    /// I/O command set specific Identify Namespace.
    pub const CS_NAMESPACE: u8 = 0x05;
    /// I/O command set specific Identify Controller.
    pub const CS_CONTROLLER: u8 = 0x06;
    /// I/O command set independent Identify Namespace.
    pub const CS_INDEPENDENT_NAMESPACE: u8 = 0x08;
}

/// Identify Controller fields a fabrics target fills in (the rest of the
/// 4096 bytes encode as zero). Byte offsets:
///
/// ```text
/// 0 VID(2)  2 SSVID(2)  4 SN(20, ASCII, space padded)  24 MN(40)  64 FR(8)
/// 72 RAB  73 IEEE(3)  76 CMIC  77 MDTS  78 CNTLID(2)  80 VER(4)
/// 84 RTD3R(4)  88 RTD3E(4)  92 OAES(4)  96 CTRATT(4)  111 CNTRLTYPE  112 FGUID(16)
/// 256 OACS(2)  258 ACL  259 AERL  260 FRMW  261 LPA  262 ELPE  263 NPSS
/// 320 KAS(2)  342 ANATT  343 ANACAP  344 ANAGRPMAX(4)  348 NANAGRPID(4)
/// 512 SQES  513 CQES  514 MAXCMD(2)  516 NN(4)  520 ONCS(2)  522 FUSES(2)
/// 524 FNA  525 VWC  526 AWUN(2)  528 AWUPF(2)  532 ACWU(2)  536 SGLS(4)  540 MNAN(4)
/// 768 SUBNQN(256, NUL terminated)
/// 1792 IOCCSZ(4)  1796 IORCSZ(4)  1800 ICDOFF(2)  1802 FCATT  1803 MSDBD  1804 OFCS(2)  1806 DCTYPE
/// 2048 PSD0..PSD31 (32 bytes each)
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdentifyController {
    /// PCI vendor ID.
    pub vid: u16,
    /// PCI subsystem vendor ID.
    pub ssvid: u16,
    /// Serial number (at most 20 ASCII characters).
    pub sn: String,
    /// Model number (at most 40).
    pub mn: String,
    /// Firmware revision (at most 8).
    pub fr: String,
    /// Recommended arbitration burst.
    pub rab: u8,
    /// IEEE OUI identifier.
    pub ieee: [u8; 3],
    /// Controller multi-path I/O and namespace sharing capabilities
    /// (bit 0 multiple ports, bit 1 multiple controllers, bit 3 ANA).
    pub cmic: u8,
    /// Maximum data transfer size: 2^MDTS units of the minimum page size;
    /// 0 = no limit.
    pub mdts: u8,
    /// Controller ID.
    pub cntlid: u16,
    /// Version (as the VS register).
    pub ver: u32,
    /// RTD3 resume latency.
    pub rtd3r: u32,
    /// RTD3 entry latency.
    pub rtd3e: u32,
    /// Optional asynchronous events supported (bit 8 namespace attribute,
    /// bit 11 ANA change, bit 31 discovery log change).
    pub oaes: u32,
    /// Controller attributes (bit 0: 128-bit host identifier).
    pub ctratt: u32,
    /// Controller type: 1 I/O, 2 discovery, 3 administrative.
    pub cntrltype: u8,
    /// FRU globally unique identifier.
    pub fguid: [u8; 16],
    /// Optional admin command support.
    pub oacs: u16,
    /// Abort command limit, 0's based.
    pub acl: u8,
    /// Asynchronous event request limit, 0's based.
    pub aerl: u8,
    /// Firmware updates.
    pub frmw: u8,
    /// Log page attributes (bit 2: extended data for Get Log Page).
    pub lpa: u8,
    /// Error log page entries, 0's based.
    pub elpe: u8,
    /// Number of power states supported, 0's based.
    pub npss: u8,
    /// Keep alive support: granularity in 100 ms units (0 = not supported).
    pub kas: u16,
    /// ANA transition time in seconds.
    pub anatt: u8,
    /// ANA capabilities (bit 0 optimized, 1 non-optimized, 2
    /// inaccessible, 3 persistent loss, 4 change state reported; bit 6:
    /// ANAGRPID does not change while attached; bit 7: non-zero ANAGRPID).
    pub anacap: u8,
    /// ANA group identifier maximum.
    pub anagrpmax: u32,
    /// Number of ANA group identifiers.
    pub nanagrpid: u32,
    /// SQ entry size: required (3:0) and maximum (7:4) as log2; 0x66.
    pub sqes: u8,
    /// CQ entry size: 0x44.
    pub cqes: u8,
    /// Maximum outstanding commands.
    pub maxcmd: u16,
    /// Number of namespaces (largest valid NSID).
    pub nn: u32,
    /// Optional NVM command support (bit 2 DSM, bit 3 Write Zeroes, bit 5
    /// reservations).
    pub oncs: u16,
    /// Fused operation support.
    pub fuses: u16,
    /// Format NVM attributes.
    pub fna: u8,
    /// Volatile write cache: bit 0 present; bits 2:1 say whether Flush
    /// accepts the broadcast NSID FFFFFFFFh (11b: yes, 10b: no).
    pub vwc: u8,
    /// Atomic write unit normal, 0's based blocks.
    pub awun: u16,
    /// Atomic write unit power fail, 0's based blocks.
    pub awupf: u16,
    /// Atomic compare & write unit.
    pub acwu: u16,
    /// SGL support (bits 1:0 = 01b SGLs supported; bit 2 keyed; bit 20
    /// offset sub-type; ...).
    pub sgls: u32,
    /// Maximum number of allowed namespaces.
    pub mnan: u32,
    /// NVM subsystem NQN.
    pub subnqn: String,
    /// I/O queue command capsule supported size in 16-byte units (>= 4).
    pub ioccsz: u32,
    /// I/O queue response capsule supported size in 16-byte units (>= 1).
    pub iorcsz: u32,
    /// In-capsule data offset in 16-byte units (0 for TCP).
    pub icdoff: u16,
    /// Fabrics controller attributes (bit 0: static controller model).
    pub fcatt: u8,
    /// Maximum SGL data block descriptors (1 for TCP).
    pub msdbd: u8,
    /// Optional fabric commands supported (bit 0: Disconnect).
    pub ofcs: u16,
    /// Discovery controller type.
    pub dctype: u8,
    /// Power state 0 maximum power in centiwatts (PSD0 bytes 0-1); other
    /// power state fields are zero.
    pub ps0_max_power: u16,
}

/// CMIC bit: the NVM subsystem may contain more than one controller.
pub const CMIC_MULTI_CONTROLLER: u8 = 1 << 1;
/// CMIC bit: asymmetric namespace access reporting.
pub const CMIC_ANA: u8 = 1 << 3;
/// ONCS bit: Dataset Management.
pub const ONCS_DSM: u16 = 1 << 2;
/// ONCS bit: Write Zeroes.
pub const ONCS_WRITE_ZEROES: u16 = 1 << 3;
/// ONCS bit: reservations.
pub const ONCS_RESERVATIONS: u16 = 1 << 5;
/// VWC bit: a volatile write cache is present.
pub const VWC_PRESENT: u8 = 1 << 0;
/// SGLS value for a TCP controller: SGLs supported without alignment
/// requirement (bits 1:0 = 01b) and the offset sub-type for in-capsule
/// data (bit 20). Keyed SGLs (bit 2) are RDMA only.
pub const SGLS_FABRICS: u32 = 1 | (1 << 20);
/// CTRATT bit: 128-bit host identifier.
pub const CTRATT_HOST_ID_128: u32 = 1 << 0;
/// OAES bit: namespace attribute notices.
pub const OAES_NS_ATTRIBUTE: u32 = 1 << 8;
/// OAES bit: ANA change notices.
pub const OAES_ANA_CHANGE: u32 = 1 << 11;
/// OAES bit: discovery log page change notices.
pub const OAES_DISCOVERY_CHANGE: u32 = 1 << 31;
/// CNTRLTYPE: I/O controller.
pub const CNTRLTYPE_IO: u8 = 1;
/// CNTRLTYPE: discovery controller.
pub const CNTRLTYPE_DISCOVERY: u8 = 2;

impl IdentifyController {
    /// The 4096-byte structure.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; IDENTIFY_LEN];
        put_u16(&mut b, 0, self.vid);
        put_u16(&mut b, 2, self.ssvid);
        put_ascii_padded(&mut b, 4, 20, &self.sn);
        put_ascii_padded(&mut b, 24, 40, &self.mn);
        put_ascii_padded(&mut b, 64, 8, &self.fr);
        b[72] = self.rab;
        put(&mut b, 73, &self.ieee);
        b[76] = self.cmic;
        b[77] = self.mdts;
        put_u16(&mut b, 78, self.cntlid);
        put_u32(&mut b, 80, self.ver);
        put_u32(&mut b, 84, self.rtd3r);
        put_u32(&mut b, 88, self.rtd3e);
        put_u32(&mut b, 92, self.oaes);
        put_u32(&mut b, 96, self.ctratt);
        b[111] = self.cntrltype;
        put(&mut b, 112, &self.fguid);
        put_u16(&mut b, 256, self.oacs);
        b[258] = self.acl;
        b[259] = self.aerl;
        b[260] = self.frmw;
        b[261] = self.lpa;
        b[262] = self.elpe;
        b[263] = self.npss;
        put_u16(&mut b, 320, self.kas);
        b[342] = self.anatt;
        b[343] = self.anacap;
        put_u32(&mut b, 344, self.anagrpmax);
        put_u32(&mut b, 348, self.nanagrpid);
        b[512] = self.sqes;
        b[513] = self.cqes;
        put_u16(&mut b, 514, self.maxcmd);
        put_u32(&mut b, 516, self.nn);
        put_u16(&mut b, 520, self.oncs);
        put_u16(&mut b, 522, self.fuses);
        b[524] = self.fna;
        b[525] = self.vwc;
        put_u16(&mut b, 526, self.awun);
        put_u16(&mut b, 528, self.awupf);
        put_u16(&mut b, 532, self.acwu);
        put_u32(&mut b, 536, self.sgls);
        put_u32(&mut b, 540, self.mnan);
        put_str_nul(&mut b, 768, NQN_FIELD_LEN, &self.subnqn);
        put_u32(&mut b, 1792, self.ioccsz);
        put_u32(&mut b, 1796, self.iorcsz);
        put_u16(&mut b, 1800, self.icdoff);
        b[1802] = self.fcatt;
        b[1803] = self.msdbd;
        put_u16(&mut b, 1804, self.ofcs);
        b[1806] = self.dctype;
        put_u16(&mut b, 2048, self.ps0_max_power);
        b
    }

    /// Parses the structure (at least 4096 bytes).
    pub fn parse(b: &[u8]) -> Result<IdentifyController> {
        let b = fixed::<IDENTIFY_LEN>(b)?;
        Ok(IdentifyController {
            vid: u16_at(b, 0),
            ssvid: u16_at(b, 2),
            sn: get_padded_string(b, 4, 20),
            mn: get_padded_string(b, 24, 40),
            fr: get_padded_string(b, 64, 8),
            rab: b[72],
            ieee: arr(b, 73),
            cmic: b[76],
            mdts: b[77],
            cntlid: u16_at(b, 78),
            ver: u32_at(b, 80),
            rtd3r: u32_at(b, 84),
            rtd3e: u32_at(b, 88),
            oaes: u32_at(b, 92),
            ctratt: u32_at(b, 96),
            cntrltype: b[111],
            fguid: arr(b, 112),
            oacs: u16_at(b, 256),
            acl: b[258],
            aerl: b[259],
            frmw: b[260],
            lpa: b[261],
            elpe: b[262],
            npss: b[263],
            kas: u16_at(b, 320),
            anatt: b[342],
            anacap: b[343],
            anagrpmax: u32_at(b, 344),
            nanagrpid: u32_at(b, 348),
            sqes: b[512],
            cqes: b[513],
            maxcmd: u16_at(b, 514),
            nn: u32_at(b, 516),
            oncs: u16_at(b, 520),
            fuses: u16_at(b, 522),
            fna: b[524],
            vwc: b[525],
            awun: u16_at(b, 526),
            awupf: u16_at(b, 528),
            acwu: u16_at(b, 532),
            sgls: u32_at(b, 536),
            mnan: u32_at(b, 540),
            subnqn: get_str_nul(b, 768, NQN_FIELD_LEN)
                .map(str::to_owned)
                .unwrap_or_else(|| get_padded_string(b, 768, NQN_FIELD_LEN)),
            ioccsz: u32_at(b, 1792),
            iorcsz: u32_at(b, 1796),
            icdoff: u16_at(b, 1800),
            fcatt: b[1802],
            msdbd: b[1803],
            ofcs: u16_at(b, 1804),
            dctype: b[1806],
            ps0_max_power: u16_at(b, 2048),
        })
    }

    /// The most in-capsule data an I/O queue command may carry:
    /// `IOCCSZ * 16 - 64` bytes.
    #[must_use]
    pub const fn max_in_capsule_data(&self) -> u32 {
        (self.ioccsz.saturating_mul(16)).saturating_sub(64)
    }
}

/// An LBA format descriptor (4 bytes): metadata size (15:0), LBA data
/// size as a power of two (23:16), relative performance (25:24).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LbaFormat {
    /// Metadata bytes per block.
    pub ms: u16,
    /// LBA data size, log2 (9 = 512 bytes, 12 = 4096).
    pub lbads: u8,
    /// Relative performance (0 best .. 3 degraded).
    pub rp: u8,
}

/// Most LBA formats an Identify Namespace can describe.
pub const MAX_LBA_FORMATS: usize = 64;

/// Identify Namespace (NVM command set) fields a target fills in. Byte
/// offsets:
///
/// ```text
/// 0 NSZE(8)  8 NCAP(8)  16 NUSE(8)  24 NSFEAT  25 NLBAF  26 FLBAS  27 MC  28 DPC  29 DPS
/// 30 NMIC  31 RESCAP  32 FPI  33 DLFEAT  34 NAWUN(2)  36 NAWUPF(2)  38 NACWU(2)
/// 40 NABSN(2)  42 NABO(2)  44 NABSPF(2)  46 NOIOB(2)  48 NVMCAP(16)
/// 64 NPWG(2)  66 NPWA(2)  68 NPDG(2)  70 NPDA(2)  72 NOWS(2)
/// 92 ANAGRPID(4)  99 NSATTR  100 NVMSETID(2)  102 ENDGID(2)  104 NGUID(16)  120 EUI64(8)
/// 128 LBAF0 .. LBAF63 (4 bytes each)
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdentifyNamespace {
    /// Namespace size in blocks.
    pub nsze: u64,
    /// Namespace capacity in blocks.
    pub ncap: u64,
    /// Namespace utilization in blocks.
    pub nuse: u64,
    /// Namespace features (bit 0 thin provisioning, bit 1 NAWUN/NAWUPF
    /// valid, bit 2 deallocated errors, bit 4 NPWG..NOWS valid).
    pub nsfeat: u8,
    /// Number of LBA formats, 0's based; set by `encode` from `lbaf`.
    pub nlbaf: u8,
    /// Formatted LBA size: format index (3:0).
    pub flbas: u8,
    /// Metadata capabilities.
    pub mc: u8,
    /// End-to-end data protection capabilities.
    pub dpc: u8,
    /// End-to-end data protection type settings.
    pub dps: u8,
    /// Multi-path I/O and sharing (bit 0: may be attached to more than one
    /// controller).
    pub nmic: u8,
    /// Reservation capabilities (bit 0 persist through power loss, bits
    /// 1-6 the six reservation types, bit 7 ignore existing key).
    pub rescap: u8,
    /// Format progress indicator.
    pub fpi: u8,
    /// Deallocate logical block features (bits 2:0 = 001b: deallocated
    /// blocks read as zero; bit 3: Write Zeroes may deallocate).
    pub dlfeat: u8,
    /// Namespace atomic write unit normal.
    pub nawun: u16,
    /// Namespace atomic write unit power fail.
    pub nawupf: u16,
    /// Namespace atomic compare & write unit.
    pub nacwu: u16,
    /// Namespace atomic boundary size normal.
    pub nabsn: u16,
    /// Namespace atomic boundary offset.
    pub nabo: u16,
    /// Namespace atomic boundary size power fail.
    pub nabspf: u16,
    /// Namespace optimal I/O boundary.
    pub noiob: u16,
    /// NVM capacity in bytes.
    pub nvmcap: u128,
    /// Preferred write granularity, 0's based blocks.
    pub npwg: u16,
    /// Preferred write alignment, 0's based blocks.
    pub npwa: u16,
    /// Preferred deallocate granularity, 0's based blocks.
    pub npdg: u16,
    /// Preferred deallocate alignment, 0's based blocks.
    pub npda: u16,
    /// Optimal write size, 0's based blocks.
    pub nows: u16,
    /// ANA group identifier.
    pub anagrpid: u32,
    /// Namespace attributes (bit 0 write protected).
    pub nsattr: u8,
    /// NVM set identifier.
    pub nvmsetid: u16,
    /// Endurance group identifier.
    pub endgid: u16,
    /// Namespace globally unique identifier.
    pub nguid: [u8; 16],
    /// IEEE extended unique identifier.
    pub eui64: [u8; 8],
    /// LBA formats (1 to 64).
    pub lbaf: Vec<LbaFormat>,
}

/// NSFEAT bit: thin provisioning.
pub const NSFEAT_THIN: u8 = 1 << 0;
/// NSFEAT bit: NPWG, NPWA, NPDG, NPDA and NOWS are valid.
pub const NSFEAT_OPTPERF: u8 = 1 << 4;
/// NMIC bit: the namespace may be attached to several controllers.
pub const NMIC_SHARED: u8 = 1 << 0;
/// RESCAP: persist through power loss.
pub const RESCAP_PTPL: u8 = 1 << 0;
/// RESCAP: all six reservation types and Ignore Existing Key.
pub const RESCAP_ALL_TYPES_IEKEY: u8 = 0x7e | 0x80;

impl IdentifyNamespace {
    /// A plain namespace of `blocks` blocks of `2^lbads` bytes: fully
    /// provisioned, one LBA format.
    #[must_use]
    pub fn simple(blocks: u64, lbads: u8) -> IdentifyNamespace {
        IdentifyNamespace {
            nsze: blocks,
            ncap: blocks,
            nuse: blocks,
            lbaf: vec![LbaFormat {
                ms: 0,
                lbads,
                rp: 0,
            }],
            ..IdentifyNamespace::default()
        }
    }

    /// The LBA format in use (FLBAS bits 3:0 and 6:5 select it).
    #[must_use]
    pub fn current_format(&self) -> Option<&LbaFormat> {
        let idx = usize::from(self.flbas & 0xf) | (usize::from(self.flbas & 0x60) >> 1);
        self.lbaf.get(idx)
    }

    /// The 4096-byte structure. NLBAF is taken from `lbaf` (at most 64
    /// formats are written).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; IDENTIFY_LEN];
        put_u64(&mut b, 0, self.nsze);
        put_u64(&mut b, 8, self.ncap);
        put_u64(&mut b, 16, self.nuse);
        b[24] = self.nsfeat;
        let n = self.lbaf.len().clamp(1, MAX_LBA_FORMATS);
        b[25] = (n - 1) as u8;
        b[26] = self.flbas;
        b[27] = self.mc;
        b[28] = self.dpc;
        b[29] = self.dps;
        b[30] = self.nmic;
        b[31] = self.rescap;
        b[32] = self.fpi;
        b[33] = self.dlfeat;
        for (off, v) in [
            (34, self.nawun),
            (36, self.nawupf),
            (38, self.nacwu),
            (40, self.nabsn),
            (42, self.nabo),
            (44, self.nabspf),
            (46, self.noiob),
            (64, self.npwg),
            (66, self.npwa),
            (68, self.npdg),
            (70, self.npda),
            (72, self.nows),
            (100, self.nvmsetid),
            (102, self.endgid),
        ] {
            put_u16(&mut b, off, v);
        }
        put_u128(&mut b, 48, self.nvmcap);
        put_u32(&mut b, 92, self.anagrpid);
        b[99] = self.nsattr;
        put(&mut b, 104, &self.nguid);
        put(&mut b, 120, &self.eui64);
        for (i, f) in self.lbaf.iter().take(MAX_LBA_FORMATS).enumerate() {
            let v = u32::from(f.ms) | (u32::from(f.lbads) << 16) | (u32::from(f.rp & 3) << 24);
            put_u32(&mut b, 128 + 4 * i, v);
        }
        b
    }

    /// Parses the structure (at least 4096 bytes).
    pub fn parse(b: &[u8]) -> Result<IdentifyNamespace> {
        let b = fixed::<IDENTIFY_LEN>(b)?;
        let nlbaf = b[25];
        if usize::from(nlbaf) >= MAX_LBA_FORMATS {
            return Err(Error::InvalidField {
                offset: 25,
                reason: "more than 64 LBA formats",
            });
        }
        let lbaf = (0..=usize::from(nlbaf))
            .map(|i| {
                let v = u32_at(b, 128 + 4 * i);
                LbaFormat {
                    ms: v as u16,
                    lbads: (v >> 16) as u8,
                    rp: ((v >> 24) & 3) as u8,
                }
            })
            .collect();
        Ok(IdentifyNamespace {
            nsze: u64_at(b, 0),
            ncap: u64_at(b, 8),
            nuse: u64_at(b, 16),
            nsfeat: b[24],
            nlbaf,
            flbas: b[26],
            mc: b[27],
            dpc: b[28],
            dps: b[29],
            nmic: b[30],
            rescap: b[31],
            fpi: b[32],
            dlfeat: b[33],
            nawun: u16_at(b, 34),
            nawupf: u16_at(b, 36),
            nacwu: u16_at(b, 38),
            nabsn: u16_at(b, 40),
            nabo: u16_at(b, 42),
            nabspf: u16_at(b, 44),
            noiob: u16_at(b, 46),
            nvmcap: u128_at(b, 48),
            npwg: u16_at(b, 64),
            npwa: u16_at(b, 66),
            npdg: u16_at(b, 68),
            npda: u16_at(b, 70),
            nows: u16_at(b, 72),
            anagrpid: u32_at(b, 92),
            nsattr: b[99],
            nvmsetid: u16_at(b, 100),
            endgid: u16_at(b, 102),
            nguid: arr(b, 104),
            eui64: arr(b, 120),
            lbaf,
        })
    }
}

/// Most NSIDs in an Active Namespace ID list or Changed Namespace List.
pub const MAX_NSID_LIST: usize = IDENTIFY_LEN / 4;

/// Encodes a list of NSIDs into a zero-filled 4096-byte structure (Active
/// Namespace ID list, CNS 02h). For Identify, pass the active NSIDs
/// greater than the command's NSID, in increasing order; at most 1024 are
/// written.
#[must_use]
pub fn encode_nsid_list(nsids: &[u32]) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    for (i, &n) in nsids.iter().take(MAX_NSID_LIST).enumerate() {
        put_u32(&mut b, 4 * i, n);
    }
    b
}

/// Decodes an NSID list: entries up to the first zero.
#[must_use]
pub fn parse_nsid_list(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32_at(c, 0))
        .take_while(|&n| n != 0)
        .collect()
}

/// A Namespace Identification Descriptor (CNS 03h list entry): NIDT
/// (byte 0), NIDL (byte 1), reserved (2-3), NID (NIDL bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NsIdDescriptor {
    /// NIDT 1: IEEE EUI-64 (8 bytes).
    Eui64([u8; 8]),
    /// NIDT 2: NGUID (16 bytes).
    Nguid([u8; 16]),
    /// NIDT 3: UUID (16 bytes).
    Uuid([u8; 16]),
    /// NIDT 4: command set identifier (1 byte; 0 = NVM).
    Csi(u8),
}

/// NIDT values.
pub mod nidt {
    /// IEEE Extended Unique Identifier.
    pub const EUI64: u8 = 1;
    /// Namespace Globally Unique Identifier.
    pub const NGUID: u8 = 2;
    /// Namespace UUID.
    pub const UUID: u8 = 3;
    /// Command Set Identifier.
    pub const CSI: u8 = 4;
}

impl NsIdDescriptor {
    fn parts(&self) -> (u8, &[u8]) {
        match self {
            NsIdDescriptor::Eui64(v) => (nidt::EUI64, v),
            NsIdDescriptor::Nguid(v) => (nidt::NGUID, v),
            NsIdDescriptor::Uuid(v) => (nidt::UUID, v),
            NsIdDescriptor::Csi(v) => (nidt::CSI, std::slice::from_ref(v)),
        }
    }

    /// Encodes a descriptor list into a zero-filled 4096-byte structure;
    /// the zeroed tail terminates the list.
    #[must_use]
    pub fn encode_list(list: &[NsIdDescriptor]) -> Vec<u8> {
        let mut b = vec![0u8; IDENTIFY_LEN];
        let mut at = 0;
        for d in list {
            let (t, id) = d.parts();
            if at + 4 + id.len() > IDENTIFY_LEN {
                break;
            }
            b[at] = t;
            b[at + 1] = id.len() as u8;
            put(&mut b, at + 4, id);
            at += 4 + id.len();
        }
        b
    }

    /// Decodes a descriptor list, stopping at a descriptor with NIDL 0.
    /// Unknown NIDT values are skipped; a known NIDT with the wrong NIDL,
    /// or a descriptor running past the end, is [`Error::InvalidField`].
    pub fn parse_list(b: &[u8]) -> Result<Vec<NsIdDescriptor>> {
        let mut out = Vec::new();
        let mut at = 0usize;
        while let Some(hdr) = b.get(at..at + 4) {
            let (t, l) = (hdr[0], usize::from(hdr[1]));
            if l == 0 {
                break;
            }
            let field = || Error::InvalidField {
                offset: u16::try_from(at).unwrap_or(u16::MAX),
                reason: "bad namespace identification descriptor",
            };
            let id = b.get(at + 4..at + 4 + l).ok_or_else(field)?;
            let d = match (t, l) {
                (nidt::EUI64, 8) => Some(NsIdDescriptor::Eui64(arr(id, 0))),
                (nidt::NGUID, 16) => Some(NsIdDescriptor::Nguid(arr(id, 0))),
                (nidt::UUID, 16) => Some(NsIdDescriptor::Uuid(arr(id, 0))),
                (nidt::CSI, 1) => Some(NsIdDescriptor::Csi(id[0])),
                (nidt::EUI64..=nidt::CSI, _) => return Err(field()),
                _ => None,
            };
            out.extend(d);
            at += 4 + l;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller() -> IdentifyController {
        IdentifyController {
            vid: 0x1b36,
            ssvid: 0x1af4,
            sn: "0123456789abcdef".into(),
            mn: "Ballast".into(),
            fr: "0.1".into(),
            rab: 6,
            ieee: [0x00, 0x14, 0x9e],
            cmic: CMIC_MULTI_CONTROLLER | CMIC_ANA,
            mdts: 5,
            cntlid: 3,
            ver: 0x0001_0400,
            oaes: OAES_NS_ATTRIBUTE | OAES_ANA_CHANGE,
            ctratt: CTRATT_HOST_ID_128,
            cntrltype: CNTRLTYPE_IO,
            acl: 3,
            aerl: 3,
            lpa: 0x04,
            elpe: 127,
            kas: 10,
            anatt: 10,
            anacap: 0x5f,
            anagrpmax: 32,
            nanagrpid: 32,
            sqes: 0x66,
            cqes: 0x44,
            maxcmd: 128,
            nn: 1024,
            oncs: ONCS_DSM | ONCS_WRITE_ZEROES | ONCS_RESERVATIONS,
            vwc: VWC_PRESENT,
            sgls: SGLS_FABRICS,
            subnqn: "nqn.2024-01.io.ballast:vol1".into(),
            ioccsz: 260,
            iorcsz: 1,
            msdbd: 1,
            ofcs: 1,
            ..IdentifyController::default()
        }
    }

    #[test]
    fn identify_controller_offsets() {
        let c = controller();
        let b = c.encode();
        assert_eq!(b.len(), 4096);
        assert_eq!(&b[0..4], &[0x36, 0x1b, 0xf4, 0x1a]);
        assert_eq!(&b[4..24], b"0123456789abcdef    ");
        assert_eq!(&b[24..31], b"Ballast");
        assert!(b[31..64].iter().all(|&c| c == b' '));
        assert_eq!(&b[64..72], b"0.1     ");
        assert_eq!(b[76], 0x0a);
        assert_eq!(b[77], 5);
        assert_eq!(&b[78..84], &[3, 0, 0x00, 0x04, 0x01, 0x00]);
        assert_eq!(&b[92..96], &[0x00, 0x09, 0x00, 0x00]);
        assert_eq!(b[96], 1);
        assert_eq!(b[111], 1);
        assert_eq!(b[259], 3);
        assert_eq!(b[262], 127);
        assert_eq!(&b[320..322], &[10, 0]);
        assert_eq!(b[342], 10);
        assert_eq!(&b[344..352], &[32, 0, 0, 0, 32, 0, 0, 0]);
        assert_eq!(&b[512..520], &[0x66, 0x44, 128, 0, 0x00, 0x04, 0, 0]);
        assert_eq!(&b[520..522], &[0x2c, 0x00]);
        assert_eq!(b[525], 1);
        assert_eq!(&b[536..540], &[0x01, 0x00, 0x10, 0x00]);
        assert_eq!(&b[768..768 + 27], b"nqn.2024-01.io.ballast:vol1");
        assert_eq!(b[768 + 27], 0);
        assert_eq!(&b[1792..1804], &[4, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(IdentifyController::parse(&b).unwrap(), c);
        assert_eq!(c.max_in_capsule_data(), 260 * 16 - 64);
        assert!(matches!(
            IdentifyController::parse(&b[..4095]),
            Err(Error::Truncated { .. })
        ));
    }

    #[test]
    fn identify_namespace_offsets() {
        let mut ns = IdentifyNamespace::simple(0x20_0000, 12);
        ns.nsfeat = NSFEAT_THIN | NSFEAT_OPTPERF;
        ns.nmic = NMIC_SHARED;
        ns.rescap = RESCAP_ALL_TYPES_IEKEY;
        ns.dlfeat = 0x09;
        ns.npwg = 7;
        ns.nows = 7;
        ns.anagrpid = 2;
        ns.nguid = [0x11; 16];
        ns.eui64 = [0x22; 8];
        ns.nvmcap = 1 << 33;
        let b = ns.encode();
        assert_eq!(&b[0..8], &[0, 0, 0x20, 0, 0, 0, 0, 0]);
        assert_eq!(b[24], 0x11);
        assert_eq!(b[25], 0); // one format
        assert_eq!(b[30], 1);
        assert_eq!(b[31], 0xfe);
        assert_eq!(b[33], 0x09);
        assert_eq!(&b[48..56], &[0, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(&b[64..66], &[7, 0]);
        assert_eq!(&b[72..74], &[7, 0]);
        assert_eq!(&b[92..96], &[2, 0, 0, 0]);
        assert_eq!(&b[104..120], &[0x11; 16]);
        assert_eq!(&b[120..128], &[0x22; 8]);
        assert_eq!(&b[128..132], &[0, 0, 12, 0]); // LBAF0: LBADS 12
        let back = IdentifyNamespace::parse(&b).unwrap();
        assert_eq!(back, ns);
        assert_eq!(back.current_format().unwrap().lbads, 12);
        let mut bad = b.clone();
        bad[25] = 64;
        assert!(IdentifyNamespace::parse(&bad).is_err());
    }

    #[test]
    fn nsid_lists_and_descriptors() {
        let b = encode_nsid_list(&[1, 2, 7]);
        assert_eq!(&b[..16], &[1, 0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(parse_nsid_list(&b), vec![1, 2, 7]);
        let many: Vec<u32> = (1..=2000).collect();
        assert_eq!(parse_nsid_list(&encode_nsid_list(&many)).len(), 1024);

        let list = [
            NsIdDescriptor::Eui64([1; 8]),
            NsIdDescriptor::Nguid([2; 16]),
            NsIdDescriptor::Uuid([3; 16]),
            NsIdDescriptor::Csi(0),
        ];
        let b = NsIdDescriptor::encode_list(&list);
        assert_eq!(&b[..4], &[1, 8, 0, 0]);
        assert_eq!(&b[12..16], &[2, 16, 0, 0]);
        assert_eq!(&b[32..36], &[3, 16, 0, 0]);
        assert_eq!(&b[52..57], &[4, 1, 0, 0, 0]);
        assert_eq!(NsIdDescriptor::parse_list(&b).unwrap(), list.to_vec());
        let mut bad = b.clone();
        bad[1] = 9;
        assert!(NsIdDescriptor::parse_list(&bad).is_err());
        // Unknown types are skipped.
        let mut unk = vec![0x7f, 2, 0, 0, 9, 9];
        unk.extend_from_slice(&[4, 1, 0, 0, 2]);
        assert_eq!(
            NsIdDescriptor::parse_list(&unk).unwrap(),
            vec![NsIdDescriptor::Csi(2)]
        );
    }
}
