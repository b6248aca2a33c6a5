//! A minimal hand-written NBD client over a std `TcpStream`, built on the `proto-nbd`
//! encoders, for feeding the server exact bytes (good and bad) and checking exact replies.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use proto_nbd::{
    self as nbd, ClientFlags, ClientOption, Command, OptionReplyHeader, Request, SimpleReply,
    consts::*,
};

/// Read and write timeout of raw sockets.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.set_nodelay(true).expect("nodelay");
    s
}

pub fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v)
        .unwrap_or_else(|e| panic!("reading {n} bytes from the server: {e}"));
    v
}

/// Reads the 18-byte greeting and checks it.
pub fn greeting(s: &mut TcpStream) -> u16 {
    let g = read_n(s, nbd::SERVER_GREETING_LEN);
    let flags = nbd::parse_server_greeting(&g).expect("server greeting");
    assert!(
        flags & FLAG_FIXED_NEWSTYLE != 0,
        "server is not fixed newstyle"
    );
    flags
}

/// Asserts that the server closes the connection (EOF or reset) within the I/O timeout,
/// draining up to 1 MiB of whatever it still sends; returns what it sent.
pub fn assert_closed(s: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                assert!(got.len() < 1 << 20, "{what}: server keeps sending data");
            }
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
                return got;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("{what}: connection not closed by the server ({e})"),
        }
        assert!(Instant::now() < deadline, "{what}: connection not closed");
    }
}

/// Reads one option reply: header and (bounded) payload.
pub fn option_reply(s: &mut TcpStream) -> (OptionReplyHeader, Vec<u8>) {
    let h = OptionReplyHeader::parse(&read_n(s, nbd::OPTION_REPLY_HEADER_LEN))
        .expect("option reply header");
    assert!(h.length < 1 << 20, "option reply of {} bytes", h.length);
    let data = read_n(s, h.length as usize);
    (h, data)
}

/// A client in the transmission phase.
pub struct Client {
    /// The socket.
    pub s: TcpStream,
    /// Export size.
    pub size: u64,
    /// Transmission flags.
    pub flags: u16,
    /// Last cookie used.
    pub cookie: u64,
}

impl Client {
    /// Handshakes with `NBD_OPT_GO` for `export` (no structured replies: simple replies only).
    pub fn go(addr: SocketAddr, export: &str) -> Client {
        let mut s = connect(addr);
        greeting(&mut s);
        let cf = ClientFlags {
            fixed_newstyle: true,
            no_zeroes: true,
        };
        s.write_all(&cf.encode()).expect("client flags");
        let mut opt = Vec::new();
        ClientOption::Go {
            export: export.into(),
            info_requests: vec![],
        }
        .encode(&mut opt)
        .expect("encode GO");
        s.write_all(&opt).expect("send GO");
        Client::finish_go(s)
    }

    /// Reads the replies to `NBD_OPT_GO` up to the ACK.
    pub fn finish_go(mut s: TcpStream) -> Client {
        let (mut size, mut flags) = (None, 0);
        for _ in 0..16 {
            let (h, data) = option_reply(&mut s);
            assert_eq!(h.option, OPT_GO, "reply to another option");
            assert!(!h.is_error(), "GO refused: {:#x} {:?}", h.reply_type, data);
            match h.reply_type {
                REP_ACK => {
                    return Client {
                        s,
                        size: size.expect("no NBD_INFO_EXPORT before ACK"),
                        flags,
                        cookie: 0,
                    };
                }
                REP_INFO if data.len() >= 12 && data[..2] == INFO_EXPORT.to_be_bytes() => {
                    size = Some(u64::from_be_bytes(data[2..10].try_into().expect("8")));
                    flags = u16::from_be_bytes([data[10], data[11]]);
                }
                _ => {}
            }
        }
        panic!("no ACK to GO within 16 replies");
    }

    /// Sends one request (and its payload); returns its cookie.
    pub fn send(&mut self, flags: u16, command: Command, offset: u64, length: u32) -> u64 {
        self.cookie += 1;
        let r = Request {
            flags,
            command,
            cookie: self.cookie,
            offset,
            length,
        };
        self.s.write_all(&r.encode()).expect("send request");
        self.cookie
    }

    pub fn send_payload(&mut self, data: &[u8]) {
        self.s.write_all(data).expect("send payload");
    }

    /// Reads a simple reply for `cookie` and returns its error value.
    pub fn reply(&mut self, cookie: u64) -> u32 {
        let r =
            SimpleReply::parse(&read_n(&mut self.s, nbd::SIMPLE_REPLY_LEN)).expect("simple reply");
        assert_eq!(r.cookie, cookie, "reply cookie");
        r.error
    }

    /// Reads `len` bytes at `offset`; panics on error.
    pub fn read(&mut self, offset: u64, len: u32) -> Vec<u8> {
        let c = self.send(0, Command::Read, offset, len);
        assert_eq!(self.reply(c), 0, "read {offset}+{len}");
        read_n(&mut self.s, len as usize)
    }

    /// Writes `data` at `offset` and returns the error value.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> u32 {
        let c = self.send(0, Command::Write, offset, data.len() as u32);
        self.send_payload(data);
        self.reply(c)
    }

    /// Sends a request without payload and returns the error value.
    pub fn simple(&mut self, command: Command, offset: u64, len: u32) -> u32 {
        let c = self.send(0, command, offset, len);
        self.reply(c)
    }

    pub fn disconnect(mut self) {
        self.send(0, Command::Disconnect, 0, 0);
        assert_closed(&mut self.s, "after NBD_CMD_DISC");
    }
}

/// Connects, reads the greeting and sends the client flags (fixed newstyle, and `no_zeroes`
/// if asked): the socket is ready for options.
pub fn start(addr: SocketAddr, no_zeroes: bool) -> TcpStream {
    let mut s = connect(addr);
    let flags = greeting(&mut s);
    assert!(
        flags & FLAG_NO_ZEROES != 0,
        "server does not offer NO_ZEROES"
    );
    let cf = ClientFlags {
        fixed_newstyle: true,
        no_zeroes,
    };
    s.write_all(&cf.encode()).expect("client flags");
    s
}

/// Sends one option and reads its replies up to the final one (`NBD_REP_ACK` or an error).
pub fn option(s: &mut TcpStream, opt: &ClientOption) -> Vec<(OptionReplyHeader, Vec<u8>)> {
    let mut out = Vec::new();
    opt.encode(&mut out).expect("encode option");
    s.write_all(&out).expect("send option");
    let mut replies = Vec::new();
    for _ in 0..1024 {
        let (h, data) = option_reply(s);
        assert_eq!(h.option, opt.code(), "reply {h:?} to another option");
        let last = h.reply_type == REP_ACK || h.is_error();
        replies.push((h, data));
        if last {
            return replies;
        }
    }
    panic!("no final reply to {opt:?}");
}

/// A structured reply chunk: header and payload.
pub type Chunk = (nbd::ChunkHeader, Vec<u8>);

impl Client {
    /// Negotiates structured replies and, if `base_allocation`, the `base:allocation`
    /// metadata context, then enters transmission on `export`.
    pub fn go_structured(addr: SocketAddr, export: &str, base_allocation: bool) -> Client {
        let mut s = start(addr, true);
        let r = option(&mut s, &ClientOption::StructuredReply);
        assert_eq!(r.last().map(|x| x.0.reply_type), Some(REP_ACK), "{r:?}");
        if base_allocation {
            let r = option(
                &mut s,
                &ClientOption::SetMetaContext {
                    export: export.into(),
                    queries: vec![BASE_ALLOCATION.into()],
                },
            );
            assert_eq!(r.len(), 2, "expected one context and ACK: {r:?}");
            assert_eq!(r[0].0.reply_type, REP_META_CONTEXT);
            assert_eq!(&r[0].1[4..], BASE_ALLOCATION.as_bytes());
        }
        let mut out = Vec::new();
        ClientOption::Go {
            export: export.into(),
            info_requests: vec![],
        }
        .encode(&mut out)
        .expect("encode GO");
        s.write_all(&out).expect("send GO");
        Client::finish_go(s)
    }

    /// Reads one structured reply chunk (payload up to 64 MiB).
    pub fn chunk(&mut self) -> Chunk {
        let h = nbd::ChunkHeader::parse(&read_n(&mut self.s, nbd::CHUNK_HEADER_LEN))
            .expect("structured reply chunk");
        assert!(h.length <= 64 << 20, "chunk of {} bytes", h.length);
        let data = read_n(&mut self.s, h.length as usize);
        (h, data)
    }

    /// Reads chunks for `cookie` up to the one flagged DONE.
    pub fn chunks(&mut self, cookie: u64) -> Vec<Chunk> {
        let mut v = Vec::new();
        loop {
            let c = self.chunk();
            assert_eq!(c.0.cookie, cookie, "chunk for another request");
            let done = c.0.is_done();
            v.push(c);
            if done {
                return v;
            }
        }
    }

    /// Reads the reply to `cookie`, simple or structured (both are allowed for commands
    /// other than READ once structured replies are negotiated), and returns its error value
    /// (0 for success; data chunks are skipped).
    pub fn any_reply(&mut self, cookie: u64) -> u32 {
        let magic = read_n(&mut self.s, 4);
        let mut head = magic.clone();
        if magic[..] == SIMPLE_REPLY_MAGIC.to_be_bytes() {
            head.extend(read_n(&mut self.s, nbd::SIMPLE_REPLY_LEN - 4));
            let r = SimpleReply::parse(&head).expect("simple reply");
            assert_eq!(r.cookie, cookie, "reply cookie");
            return r.error;
        }
        head.extend(read_n(&mut self.s, nbd::CHUNK_HEADER_LEN - 4));
        let mut h = nbd::ChunkHeader::parse(&head).expect("simple or structured reply");
        let mut error = 0;
        loop {
            assert_eq!(h.cookie, cookie, "chunk for another request");
            assert!(h.length <= 64 << 20, "chunk of {} bytes", h.length);
            let data = read_n(&mut self.s, h.length as usize);
            if h.is_error() && error == 0 {
                error = u32::from_be_bytes(data[..4].try_into().expect("errno"));
            }
            if h.is_done() {
                return error;
            }
            h = self.chunk_header();
        }
    }

    fn chunk_header(&mut self) -> nbd::ChunkHeader {
        nbd::ChunkHeader::parse(&read_n(&mut self.s, nbd::CHUNK_HEADER_LEN))
            .expect("structured reply chunk")
    }
}
