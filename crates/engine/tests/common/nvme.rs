//! A small blocking NVMe/TCP host built on `proto-nvme`, for tests that need exact control of
//! the bytes (bad input, digests, reservations from several hosts).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use proto_nvme::{
    Command, ConnectData, Cqe, Decoded, FLAGS_SGL, H2CData, IcReq, IcResp, PduDecoder, PduEncoder,
    PduHeader, PropertySet, PropertySize, Role, Sgl, Sqe, TermReq, register,
};

/// What the target sent back for a command.
#[derive(Debug)]
pub enum Answer {
    /// A completion, with the data that came before it.
    Done(Cqe, Vec<u8>),
    /// A C2HTermReq: the connection is being closed.
    Term(TermReq),
    /// The connection closed.
    Closed,
}

impl Answer {
    /// The completion, or a panic saying what came instead.
    pub fn cqe(self) -> (Cqe, Vec<u8>) {
        match self {
            Answer::Done(c, d) => (c, d),
            other => panic!("expected a completion, got {other:?}"),
        }
    }
}

/// One queue (one TCP connection) of a host.
pub struct Queue {
    pub s: TcpStream,
    pub dec: PduDecoder,
    pub enc: PduEncoder,
    buf: Vec<u8>,
    next_cid: u16,
    /// In-capsule data limit the host uses (8 KiB: admin queue and our I/O queues).
    pub in_capsule: usize,
    pub maxh2cdata: u32,
    pub qid: u16,
    pub cntlid: u16,
}

/// A host identity.
#[derive(Clone, Debug)]
pub struct HostIdent {
    pub nqn: String,
    pub id: [u8; 16],
}

impl HostIdent {
    pub fn new(n: u8) -> HostIdent {
        let id = [n; 16];
        HostIdent {
            nqn: proto_nvme::HostId(id).to_nqn(),
            id,
        }
    }
}

impl Queue {
    /// Opens a TCP connection and exchanges ICReq/ICResp.
    pub fn open(addr: SocketAddr, hdgst: bool, ddgst: bool) -> Queue {
        let s = TcpStream::connect(addr).expect("connect to the NVMe/TCP listener");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_nodelay(true).unwrap();
        let mut q = Queue {
            s,
            dec: PduDecoder::new(Role::Host),
            enc: PduEncoder::new(),
            buf: Vec::new(),
            next_cid: 1,
            in_capsule: 8192,
            maxh2cdata: 4096,
            qid: 0,
            cntlid: 0,
        };
        let req = IcReq {
            hdgst,
            ddgst,
            ..IcReq::default()
        };
        q.s.write_all(&req.encode()).unwrap();
        match q.recv_pdu() {
            Some((PduHeader::IcResp(r), _)) => {
                assert_eq!((r.hdgst, r.ddgst), (hdgst, ddgst), "digests granted: {r:?}");
                assert_eq!(r.cpda, 0);
                q.establish(r);
            }
            other => panic!("expected ICResp, got {other:?}"),
        }
        q
    }

    fn establish(&mut self, r: IcResp) {
        self.dec.establish(r.hdgst, r.ddgst);
        self.dec.set_max_data(16 << 20);
        self.enc = PduEncoder::with(r.hdgst, r.ddgst, r.cpda);
        self.maxh2cdata = r.maxh2cdata;
    }

    /// Receives one PDU (its header and data), `None` when the connection closed.
    pub fn recv_pdu(&mut self) -> Option<(PduHeader, Vec<u8>)> {
        loop {
            match self.dec.decode(&self.buf) {
                Ok(Decoded::Pdu { pdu, len }) => {
                    let out = (pdu.header, pdu.data.to_vec());
                    self.buf.drain(..len);
                    return Some(out);
                }
                Ok(Decoded::BadDataDigest { .. }) => panic!("bad data digest from the target"),
                Ok(Decoded::Incomplete { more }) => {
                    let mut tmp = vec![0u8; more.max(1)];
                    match self.s.read(&mut tmp) {
                        Ok(0) | Err(_) => return None,
                        Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                    }
                }
                Err(e) => panic!("target sent a bad PDU: {e}"),
            }
        }
    }

    /// Sends raw bytes (errors ignored: the target may have closed).
    pub fn send_raw(&mut self, b: &[u8]) {
        let _ = self.s.write_all(b);
    }

    pub fn cid(&mut self) -> u16 {
        let c = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1).max(1);
        c
    }

    /// Sends a command with `data_out` (in the capsule when it fits, else by R2T) and waits
    /// for its completion, collecting C2HData.
    pub fn command(&mut self, mut sqe: Sqe, data_out: &[u8]) -> Answer {
        sqe.flags = FLAGS_SGL;
        if !data_out.is_empty() && data_out.len() <= self.in_capsule {
            sqe.dptr = Sgl::in_capsule(0, data_out.len() as u32);
            let mut out = Vec::new();
            self.enc.capsule_cmd_pdu(&sqe, data_out, &mut out);
            self.send_raw(&out);
        } else {
            if !data_out.is_empty() {
                sqe.dptr = Sgl::transport(data_out.len() as u32);
            }
            let mut out = Vec::new();
            self.enc.capsule_cmd_pdu(&sqe, &[], &mut out);
            self.send_raw(&out);
        }
        self.wait(sqe.cid, data_out)
    }

    /// Waits for the completion of `cid`, answering R2Ts from `data_out`.
    pub fn wait(&mut self, cid: u16, data_out: &[u8]) -> Answer {
        let mut data = Vec::new();
        loop {
            let Some((h, d)) = self.recv_pdu() else {
                return Answer::Closed;
            };
            match h {
                PduHeader::CapsuleResp(c) if c.cid == cid => return Answer::Done(c, data),
                PduHeader::CapsuleResp(c) => panic!("completion for another command: {c:?}"),
                PduHeader::C2HData(c) => {
                    assert_eq!(c.cccid, cid);
                    assert_eq!(c.datao as usize, data.len());
                    data.extend_from_slice(&d);
                    if c.success {
                        return Answer::Done(Cqe::new(cid, proto_nvme::Status::SUCCESS), data);
                    }
                }
                PduHeader::R2T(r) => {
                    assert_eq!(r.cccid, cid);
                    let mut off = r.r2to as usize;
                    let end = off + r.r2tl as usize;
                    while off < end {
                        let n = (end - off).min(self.maxh2cdata as usize);
                        let h = H2CData {
                            cccid: cid,
                            ttag: r.ttag,
                            datao: off as u32,
                            datal: n as u32,
                            last: off + n == end,
                        };
                        let mut out = Vec::new();
                        self.enc.h2c_data_pdu(&h, &data_out[off..off + n], &mut out);
                        self.send_raw(&out);
                        off += n;
                    }
                }
                PduHeader::C2HTermReq(t) => return Answer::Term(t),
                other => panic!("unexpected PDU {other:?}"),
            }
        }
    }

    /// A typed command with data.
    pub fn cmd(&mut self, c: Command, nsid: u32, data_out: &[u8], data_in: u32) -> Answer {
        let cid = self.cid();
        let dptr = if data_in > 0 {
            Sgl::transport(data_in)
        } else {
            Sgl::null()
        };
        let sqe = c.to_sqe(cid, nsid, dptr);
        self.command(sqe, data_out)
    }

    /// Fabrics Connect; returns the completion.
    pub fn connect(
        &mut self,
        subnqn: &str,
        host: &HostIdent,
        qid: u16,
        cntlid: u16,
        kato: u32,
    ) -> Cqe {
        self.connect_with(subnqn, host, qid, cntlid, kato, 0)
    }

    /// Fabrics Connect with connect attributes `cattr`.
    pub fn connect_with(
        &mut self,
        subnqn: &str,
        host: &HostIdent,
        qid: u16,
        cntlid: u16,
        kato: u32,
        cattr: u8,
    ) -> Cqe {
        let data = ConnectData {
            hostid: host.id,
            cntlid,
            subnqn,
            hostnqn: &host.nqn,
        }
        .encode();
        let c = Command::Connect(proto_nvme::Connect {
            recfmt: 0,
            qid,
            sqsize: 31,
            cattr,
            kato,
        });
        let (cqe, _) = self.cmd(c, 0, &data, 0).cqe();
        if cqe.status.is_success() {
            self.qid = qid;
            self.cntlid = cqe.dw0 as u16;
        }
        cqe
    }

    /// Property Set CC.EN = 1 (with 64/16-byte queue entries), then checks CSTS.RDY.
    pub fn enable(&mut self) {
        let cc = proto_nvme::Cc {
            en: true,
            iosqes: 6,
            iocqes: 4,
            ..Default::default()
        };
        let (c, _) = self
            .cmd(
                Command::PropertySet(PropertySet {
                    size: PropertySize::Four,
                    offset: register::CC,
                    value: u64::from(cc.to_u32()),
                }),
                0,
                &[],
                0,
            )
            .cqe();
        assert!(c.status.is_success(), "{c:?}");
        let (c, _) = self
            .cmd(
                Command::PropertyGet(proto_nvme::PropertyGet {
                    size: PropertySize::Four,
                    offset: register::CSTS,
                }),
                0,
                &[],
                0,
            )
            .cqe();
        assert_eq!(c.dw0 & 1, 1, "CSTS.RDY after enable: {c:?}");
    }

    /// An admin connection to `subnqn`, enabled.
    pub fn admin(addr: SocketAddr, subnqn: &str, host: &HostIdent, digests: bool) -> Queue {
        let mut q = Queue::open(addr, digests, digests);
        let c = q.connect(subnqn, host, 0, 0xffff, 30_000);
        assert!(c.status.is_success(), "admin connect: {c:?}");
        q.enable();
        q
    }

    /// An I/O queue `qid` of controller `cntlid`.
    pub fn io(
        addr: SocketAddr,
        subnqn: &str,
        host: &HostIdent,
        cntlid: u16,
        qid: u16,
        digests: bool,
    ) -> Queue {
        let mut q = Queue::open(addr, digests, digests);
        let c = q.connect(subnqn, host, qid, cntlid, 0);
        assert!(c.status.is_success(), "I/O connect: {c:?}");
        q
    }

    pub fn read(&mut self, nsid: u32, slba: u64, blocks: u16, bs: u32) -> Answer {
        let rw = proto_nvme::ReadWrite {
            slba,
            nlb: blocks - 1,
            ..Default::default()
        };
        self.cmd(Command::Read(rw), nsid, &[], u32::from(blocks) * bs)
    }

    pub fn write(&mut self, nsid: u32, slba: u64, data: &[u8], bs: u32) -> Answer {
        let rw = proto_nvme::ReadWrite {
            slba,
            nlb: (data.len() as u32 / bs - 1) as u16,
            ..Default::default()
        };
        self.cmd(Command::Write(rw), nsid, data, 0)
    }
}

/// An SQE with an arbitrary opcode and no data (for unknown opcodes).
pub fn raw_sqe(opcode: u8, cid: u16, nsid: u32) -> Sqe {
    Sqe {
        opcode,
        flags: FLAGS_SGL,
        cid,
        nsid,
        dptr: Sgl::null(),
        ..Sqe::default()
    }
}
