//! The peer protocol on the wire: length-prefixed frames (u32 big-endian length, then a tag
//! byte and the fields), and the authentication handshake.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::core::{Dep, Entry, Msg, NodeId, Outcome, Refusal, Term};

/// The largest frame accepted (a report of many leases stays far below it).
pub const MAX_FRAME: usize = 4 << 20;
/// Protocol version, in the handshake.
pub const VERSION: u8 = 1;

/// A frame between two authenticated peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A protocol message.
    Msg(Msg),
    /// Liveness, both ways, with the sender's view of the deployments it serves:
    /// (deployment, busy slots, queued requests, capacity).
    Ping {
        /// Whether the sender is leaving (it owns nothing new).
        leaving: bool,
        /// Global load of the deployments the sender owns.
        status: Vec<(Dep, u32, u32, u32)>,
    },
}

/// A frame that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("malformed peer frame: {0}")]
pub struct Malformed(pub &'static str);

fn put_dep(b: &mut BytesMut, d: &str) {
    let bytes = d.as_bytes();
    b.put_u16(bytes.len().min(u16::MAX as usize) as u16);
    b.put_slice(&bytes[..bytes.len().min(u16::MAX as usize)]);
}

fn put_addr(b: &mut BytesMut, a: &SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            b.put_u8(4);
            b.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            b.put_u8(6);
            b.put_slice(&ip.octets());
        }
    }
    b.put_u16(a.port());
}

fn put_opt_addr(b: &mut BytesMut, a: &Option<SocketAddr>) {
    match a {
        Some(a) => put_addr(b, a),
        None => b.put_u8(0),
    }
}

fn put_term(b: &mut BytesMut, t: &Term) {
    b.put_u64(t.owner);
    b.put_u64(t.seq);
}

fn refusal_code(r: Refusal) -> u8 {
    match r {
        Refusal::NotOwner => 0,
        Refusal::QueueTimeout => 1,
        Refusal::QueueFull => 2,
        Refusal::NoPods => 3,
        Refusal::NoQuorum => 4,
    }
}

/// Appends `frame` (with its length prefix) to `b`.
pub fn encode(frame: &Frame, b: &mut BytesMut) {
    let start = b.len();
    b.put_u32(0);
    match frame {
        Frame::Ping { leaving, status } => {
            b.put_u8(0);
            b.put_u8(u8::from(*leaving));
            b.put_u32(status.len() as u32);
            for (d, busy, queued, cap) in status {
                put_dep(b, d);
                b.put_u32(*busy);
                b.put_u32(*queued);
                b.put_u32(*cap);
            }
        }
        Frame::Msg(m) => match m {
            Msg::Acquire {
                dep,
                req,
                wait,
                avoid,
            } => {
                b.put_u8(1);
                put_dep(b, dep);
                b.put_u64(*req);
                b.put_u64(*wait);
                put_opt_addr(b, avoid);
            }
            Msg::Queued { dep, req } => {
                b.put_u8(2);
                put_dep(b, dep);
                b.put_u64(*req);
            }
            Msg::Grant {
                dep,
                req,
                term,
                pod,
                park,
            } => {
                b.put_u8(3);
                put_dep(b, dep);
                b.put_u64(*req);
                put_term(b, term);
                put_addr(b, pod);
                b.put_u8(u8::from(*park));
            }
            Msg::Recall { dep } => {
                b.put_u8(14);
                put_dep(b, dep);
            }
            Msg::Refuse { dep, req, reason } => {
                b.put_u8(4);
                put_dep(b, dep);
                b.put_u64(*req);
                b.put_u8(refusal_code(*reason));
            }
            Msg::Release {
                dep,
                req,
                pod,
                outcome,
            } => {
                b.put_u8(5);
                put_dep(b, dep);
                b.put_u64(*req);
                put_addr(b, pod);
                match outcome {
                    Outcome::Success(us) => {
                        b.put_u8(0);
                        b.put_u64(*us);
                    }
                    Outcome::Failure => b.put_u8(1),
                    Outcome::Unknown => b.put_u8(2),
                }
            }
            Msg::Cancel { dep, req } => {
                b.put_u8(6);
                put_dep(b, dep);
                b.put_u64(*req);
            }
            Msg::Claim { dep, term } => {
                b.put_u8(7);
                put_dep(b, dep);
                put_term(b, term);
            }
            Msg::Report { dep, term, leases } => {
                b.put_u8(8);
                put_dep(b, dep);
                put_term(b, term);
                b.put_u32(leases.len() as u32);
                for e in leases {
                    b.put_u64(e.holder);
                    b.put_u64(e.req);
                    put_addr(b, &e.pod);
                    b.put_u64(e.expires_in.map_or(u64::MAX, |t| t.min(u64::MAX - 1)));
                }
            }
            Msg::Nack { dep, term } => {
                b.put_u8(9);
                put_dep(b, dep);
                put_term(b, term);
            }
            Msg::Note { dep, req, pod } => {
                b.put_u8(10);
                put_dep(b, dep);
                b.put_u64(*req);
                put_addr(b, pod);
            }
            Msg::NoteAck { dep, req } => {
                b.put_u8(11);
                put_dep(b, dep);
                b.put_u64(*req);
            }
            Msg::Unnote { dep, req } => {
                b.put_u8(12);
                put_dep(b, dep);
                b.put_u64(*req);
            }
            Msg::Yield { dep, term } => {
                b.put_u8(13);
                put_dep(b, dep);
                put_term(b, term);
            }
        },
    }
    let len = (b.len() - start - 4) as u32;
    b[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Reads fields off a frame body.
struct Reader {
    b: Bytes,
}

impl Reader {
    fn need(&self, n: usize) -> Result<(), Malformed> {
        if self.b.remaining() < n {
            Err(Malformed("truncated"))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, Malformed> {
        self.need(1)?;
        Ok(self.b.get_u8())
    }
    fn u16(&mut self) -> Result<u16, Malformed> {
        self.need(2)?;
        Ok(self.b.get_u16())
    }
    fn u32(&mut self) -> Result<u32, Malformed> {
        self.need(4)?;
        Ok(self.b.get_u32())
    }
    fn u64(&mut self) -> Result<u64, Malformed> {
        self.need(8)?;
        Ok(self.b.get_u64())
    }
    fn dep(&mut self) -> Result<Dep, Malformed> {
        let n = self.u16()? as usize;
        self.need(n)?;
        let s = std::str::from_utf8(&self.b[..n]).map_err(|_| Malformed("deployment not UTF-8"))?;
        let d: Dep = s.into();
        self.b.advance(n);
        Ok(d)
    }
    fn addr_tagged(&mut self, tag: u8) -> Result<SocketAddr, Malformed> {
        let ip = match tag {
            4 => {
                self.need(4)?;
                let mut o = [0u8; 4];
                self.b.copy_to_slice(&mut o);
                IpAddr::V4(Ipv4Addr::from(o))
            }
            6 => {
                self.need(16)?;
                let mut o = [0u8; 16];
                self.b.copy_to_slice(&mut o);
                IpAddr::V6(Ipv6Addr::from(o))
            }
            _ => return Err(Malformed("address family")),
        };
        Ok(SocketAddr::new(ip, self.u16()?))
    }
    fn addr(&mut self) -> Result<SocketAddr, Malformed> {
        let tag = self.u8()?;
        self.addr_tagged(tag)
    }
    fn opt_addr(&mut self) -> Result<Option<SocketAddr>, Malformed> {
        match self.u8()? {
            0 => Ok(None),
            tag => self.addr_tagged(tag).map(Some),
        }
    }
    fn term(&mut self) -> Result<Term, Malformed> {
        Ok(Term {
            owner: self.u64()?,
            seq: self.u64()?,
        })
    }
}

/// Reads one frame body (without its length prefix).
pub fn decode(body: Bytes) -> Result<Frame, Malformed> {
    let mut r = Reader { b: body };
    let tag = r.u8()?;
    let frame = match tag {
        0 => {
            let leaving = r.u8()? != 0;
            let n = r.u32()? as usize;
            let mut status = Vec::with_capacity(n.min(4096));
            for _ in 0..n {
                status.push((r.dep()?, r.u32()?, r.u32()?, r.u32()?));
            }
            Frame::Ping { leaving, status }
        }
        1 => Frame::Msg(Msg::Acquire {
            dep: r.dep()?,
            req: r.u64()?,
            wait: r.u64()?,
            avoid: r.opt_addr()?,
        }),
        2 => Frame::Msg(Msg::Queued {
            dep: r.dep()?,
            req: r.u64()?,
        }),
        3 => Frame::Msg(Msg::Grant {
            dep: r.dep()?,
            req: r.u64()?,
            term: r.term()?,
            pod: r.addr()?,
            park: r.u8()? != 0,
        }),
        14 => Frame::Msg(Msg::Recall { dep: r.dep()? }),
        4 => Frame::Msg(Msg::Refuse {
            dep: r.dep()?,
            req: r.u64()?,
            reason: match r.u8()? {
                0 => Refusal::NotOwner,
                1 => Refusal::QueueTimeout,
                2 => Refusal::QueueFull,
                3 => Refusal::NoPods,
                4 => Refusal::NoQuorum,
                _ => return Err(Malformed("refusal code")),
            },
        }),
        5 => Frame::Msg(Msg::Release {
            dep: r.dep()?,
            req: r.u64()?,
            pod: r.addr()?,
            outcome: match r.u8()? {
                0 => Outcome::Success(r.u64()?),
                1 => Outcome::Failure,
                2 => Outcome::Unknown,
                _ => return Err(Malformed("outcome code")),
            },
        }),
        6 => Frame::Msg(Msg::Cancel {
            dep: r.dep()?,
            req: r.u64()?,
        }),
        7 => Frame::Msg(Msg::Claim {
            dep: r.dep()?,
            term: r.term()?,
        }),
        8 => {
            let dep = r.dep()?;
            let term = r.term()?;
            let n = r.u32()? as usize;
            let mut leases = Vec::with_capacity(n.min(4096));
            for _ in 0..n {
                let holder = r.u64()?;
                let req = r.u64()?;
                let pod = r.addr()?;
                let exp = r.u64()?;
                leases.push(Entry {
                    holder,
                    req,
                    pod,
                    expires_in: (exp != u64::MAX).then_some(exp),
                });
            }
            Frame::Msg(Msg::Report { dep, term, leases })
        }
        9 => Frame::Msg(Msg::Nack {
            dep: r.dep()?,
            term: r.term()?,
        }),
        10 => Frame::Msg(Msg::Note {
            dep: r.dep()?,
            req: r.u64()?,
            pod: r.addr()?,
        }),
        11 => Frame::Msg(Msg::NoteAck {
            dep: r.dep()?,
            req: r.u64()?,
        }),
        12 => Frame::Msg(Msg::Unnote {
            dep: r.dep()?,
            req: r.u64()?,
        }),
        13 => Frame::Msg(Msg::Yield {
            dep: r.dep()?,
            term: r.term()?,
        }),
        _ => return Err(Malformed("unknown frame type")),
    };
    if r.b.has_remaining() {
        return Err(Malformed("trailing bytes"));
    }
    Ok(frame)
}

/// The first message on a connection, from the side that dialed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// The dialer's node id (process incarnation).
    pub node: NodeId,
    /// The address the dialer is known by.
    pub addr: SocketAddr,
    /// A fresh random challenge.
    pub nonce: [u8; 16],
}

impl Hello {
    /// Encodes the hello frame.
    pub fn encode(&self, b: &mut BytesMut) {
        b.put_slice(b"IGC");
        b.put_u8(VERSION);
        b.put_u64(self.node);
        put_addr(b, &self.addr);
        b.put_slice(&self.nonce);
    }
    /// Decodes a hello frame.
    pub fn decode(body: Bytes) -> Result<Hello, Malformed> {
        let mut r = Reader { b: body };
        r.need(4)?;
        if &r.b[..3] != b"IGC" {
            return Err(Malformed("not an infergate peer"));
        }
        r.b.advance(3);
        if r.u8()? != VERSION {
            return Err(Malformed("protocol version"));
        }
        let node = r.u64()?;
        let addr = r.addr()?;
        r.need(16)?;
        let mut nonce = [0u8; 16];
        r.b.copy_to_slice(&mut nonce);
        Ok(Hello { node, addr, nonce })
    }
}

/// The answer to a hello: who the acceptor is, its challenge, and its proof of the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge {
    /// The acceptor's node id.
    pub node: NodeId,
    /// The acceptor's address.
    pub addr: SocketAddr,
    /// The acceptor's random challenge.
    pub nonce: [u8; 16],
    /// HMAC over both nonces and the acceptor's identity.
    pub mac: [u8; 32],
}

impl Challenge {
    /// Encodes the challenge frame.
    pub fn encode(&self, b: &mut BytesMut) {
        b.put_u64(self.node);
        put_addr(b, &self.addr);
        b.put_slice(&self.nonce);
        b.put_slice(&self.mac);
    }
    /// Decodes a challenge frame.
    pub fn decode(body: Bytes) -> Result<Challenge, Malformed> {
        let mut r = Reader { b: body };
        let node = r.u64()?;
        let addr = r.addr()?;
        r.need(48)?;
        let mut nonce = [0u8; 16];
        r.b.copy_to_slice(&mut nonce);
        let mut mac = [0u8; 32];
        r.b.copy_to_slice(&mut mac);
        Ok(Challenge {
            node,
            addr,
            nonce,
            mac,
        })
    }
}

/// HMAC-SHA256 of a handshake transcript under the shared secret.
pub fn handshake_mac(
    secret: &[u8],
    role: &[u8],
    nonces: (&[u8; 16], &[u8; 16]),
    node: NodeId,
    addr: SocketAddr,
) -> [u8; 32] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(b"infergate-cluster-v1");
    ctx.update(role);
    ctx.update(nonces.0);
    ctx.update(nonces.1);
    ctx.update(&node.to_be_bytes());
    ctx.update(addr.to_string().as_bytes());
    let tag = ctx.sign();
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Constant-time check of a handshake MAC.
pub fn mac_ok(
    secret: &[u8],
    role: &[u8],
    nonces: (&[u8; 16], &[u8; 16]),
    node: NodeId,
    addr: SocketAddr,
    mac: &[u8],
) -> bool {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut msg = Vec::with_capacity(96);
    msg.extend_from_slice(b"infergate-cluster-v1");
    msg.extend_from_slice(role);
    msg.extend_from_slice(nonces.0);
    msg.extend_from_slice(nonces.1);
    msg.extend_from_slice(&node.to_be_bytes());
    msg.extend_from_slice(addr.to_string().as_bytes());
    ring::hmac::verify(&key, &msg, mac).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(f: Frame) {
        let mut b = BytesMut::new();
        encode(&f, &mut b);
        let len = u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
        assert_eq!(len, b.len() - 4);
        let back = decode(b.freeze().slice(4..)).expect("decodes");
        assert_eq!(back, f);
    }

    #[test]
    fn every_frame_round_trips() {
        let dep: Dep = "ep/blue".into();
        let pod: SocketAddr = "10.1.2.3:5001".parse().unwrap();
        let v6: SocketAddr = "[fd00::1]:80".parse().unwrap();
        let term = Term { owner: 7, seq: 9 };
        for m in [
            Msg::Acquire {
                dep: dep.clone(),
                req: 1,
                wait: 500,
                avoid: Some(v6),
            },
            Msg::Acquire {
                dep: dep.clone(),
                req: 1,
                wait: 0,
                avoid: None,
            },
            Msg::Queued {
                dep: dep.clone(),
                req: 2,
            },
            Msg::Grant {
                dep: dep.clone(),
                req: 3,
                term,
                pod,
                park: true,
            },
            Msg::Recall { dep: dep.clone() },
            Msg::Refuse {
                dep: dep.clone(),
                req: 4,
                reason: Refusal::QueueFull,
            },
            Msg::Release {
                dep: dep.clone(),
                req: 5,
                pod,
                outcome: Outcome::Success(1234),
            },
            Msg::Release {
                dep: dep.clone(),
                req: 5,
                pod,
                outcome: Outcome::Failure,
            },
            Msg::Cancel {
                dep: dep.clone(),
                req: 6,
            },
            Msg::Claim {
                dep: dep.clone(),
                term,
            },
            Msg::Report {
                dep: dep.clone(),
                term,
                leases: vec![
                    Entry {
                        holder: 1,
                        req: 2,
                        pod,
                        expires_in: None,
                    },
                    Entry {
                        holder: 3,
                        req: 4,
                        pod: v6,
                        expires_in: Some(5000),
                    },
                ],
            },
            Msg::Nack {
                dep: dep.clone(),
                term,
            },
            Msg::Note {
                dep: dep.clone(),
                req: 8,
                pod,
            },
            Msg::NoteAck {
                dep: dep.clone(),
                req: 8,
            },
            Msg::Unnote {
                dep: dep.clone(),
                req: 8,
            },
            Msg::Yield {
                dep: dep.clone(),
                term,
            },
        ] {
            round(Frame::Msg(m));
        }
        round(Frame::Ping {
            leaving: true,
            status: vec![(dep, 3, 4, 8)],
        });
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        for body in [
            &b""[..],
            &[99],
            &[1, 0, 5, b'a'],
            &[3, 0, 0],
            &[0, 1, 255, 255, 255, 255],
        ] {
            assert!(decode(Bytes::copy_from_slice(body)).is_err());
        }
    }

    #[test]
    fn a_mac_checks_only_with_the_same_secret_and_transcript() {
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let addr: SocketAddr = "127.0.0.1:7946".parse().unwrap();
        let mac = handshake_mac(b"0123456789abcdef", b"A", (&a, &b), 5, addr);
        assert!(mac_ok(b"0123456789abcdef", b"A", (&a, &b), 5, addr, &mac));
        assert!(!mac_ok(b"0123456789abcdefX", b"A", (&a, &b), 5, addr, &mac));
        assert!(!mac_ok(b"0123456789abcdef", b"C", (&a, &b), 5, addr, &mac));
        assert!(!mac_ok(b"0123456789abcdef", b"A", (&b, &a), 5, addr, &mac));
        assert!(!mac_ok(b"0123456789abcdef", b"A", (&a, &b), 6, addr, &mac));
    }
}
