//! Demultiplexing of the one media UDP port: which shard owns a datagram. Known source
//! addresses route directly; a STUN binding request from a new address routes by the
//! server ufrag in its USERNAME attribute (how a peer's first packet finds its session).

use std::net::SocketAddr;

use dashmap::DashMap;

const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const STUN_ATTR_USERNAME: u16 = 0x0006;

/// Is this datagram a STUN message (RFC 5389 header, RFC 7983 first-byte range)?
pub fn is_stun(buf: &[u8]) -> bool {
    buf.len() >= 20 && buf[0] < 2 && buf[4..8] == STUN_MAGIC_COOKIE
}

/// The local (server) ufrag from a STUN USERNAME attribute `server:client`.
pub fn stun_server_ufrag(buf: &[u8]) -> Option<&str> {
    if !is_stun(buf) {
        return None;
    }
    let declared = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    let body = buf.get(20..20 + declared)?;
    let mut i = 0;
    while i + 4 <= body.len() {
        let attr = u16::from_be_bytes([body[i], body[i + 1]]);
        let len = u16::from_be_bytes([body[i + 2], body[i + 3]]) as usize;
        let value = body.get(i + 4..i + 4 + len)?;
        if attr == STUN_ATTR_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next();
        }
        i += 4 + len.div_ceil(4) * 4;
    }
    None
}

/// Routing table shared by the receive thread (reads) and shards (write on session
/// start and end). Values are shard indexes.
#[derive(Debug, Default)]
pub struct RouteTable {
    by_addr: DashMap<SocketAddr, usize>,
    by_ufrag: DashMap<String, usize>,
}

/// Why a datagram found no shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unroutable {
    /// Not STUN, from an address no session uses.
    UnknownSource,
    /// STUN whose username names no session.
    UnknownUfrag,
}

impl RouteTable {
    pub fn route(&self, source: SocketAddr, datagram: &[u8]) -> Result<usize, Unroutable> {
        if let Some(shard) = self.by_addr.get(&source) {
            return Ok(*shard);
        }
        let ufrag = stun_server_ufrag(datagram).ok_or(Unroutable::UnknownSource)?;
        self.by_ufrag.get(ufrag).map(|s| *s).ok_or(Unroutable::UnknownUfrag)
    }

    pub fn add_ufrag(&self, ufrag: &str, shard: usize) {
        self.by_ufrag.insert(ufrag.to_string(), shard);
    }

    pub fn remove_ufrag(&self, ufrag: &str) {
        self.by_ufrag.remove(ufrag);
    }

    /// A session on `shard` proved (by a valid STUN check) that it owns `addr`.
    pub fn add_addr(&self, addr: SocketAddr, shard: usize) {
        self.by_addr.insert(addr, shard);
    }

    pub fn remove_addr(&self, addr: &SocketAddr) {
        self.by_addr.remove(addr);
    }
}

/// A STUN binding request carrying `username` (`server:client`) after a PRIORITY
/// attribute, as a browser's connectivity check looks to the demultiplexer.
#[cfg(any(test, feature = "internals"))]
#[doc(hidden)]
pub fn stun_binding_request(username: &str) -> Vec<u8> {
    let mut attrs = Vec::new();
    attrs.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4]);
    attrs.extend_from_slice(&[0x00, 0x06]);
    attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attrs.extend_from_slice(username.as_bytes());
    while attrs.len() % 4 != 0 {
        attrs.push(0);
    }
    let mut msg = vec![0x00, 0x01];
    msg.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    msg.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    msg.extend_from_slice(&[7; 12]);
    msg.extend_from_slice(&attrs);
    msg
}

#[cfg(test)]
mod tests {
    use super::stun_binding_request as binding_request;
    use super::*;

    #[test]
    fn finds_server_ufrag_in_binding_request() {
        let msg = binding_request("srvUfrag:cli");
        assert_eq!(stun_server_ufrag(&msg), Some("srvUfrag"));
    }

    #[test]
    fn rejects_truncated_and_non_stun() {
        let msg = binding_request("abc:def");
        for cut in 0..msg.len() {
            let _ = stun_server_ufrag(&msg[..cut]);
        }
        assert_eq!(stun_server_ufrag(&[0x80; 40]), None, "RTP is not STUN");
        let mut lying = msg.clone();
        lying[3] = 0xff; // declared length beyond the datagram
        assert_eq!(stun_server_ufrag(&lying), None);
    }

    #[test]
    fn routes_by_address_then_by_ufrag() {
        let table = RouteTable::default();
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        table.add_ufrag("u1", 1);
        assert_eq!(table.route(a, &binding_request("u1:x")), Ok(1));
        assert_eq!(table.route(a, &[0x80, 0, 0, 0]), Err(Unroutable::UnknownSource));
        assert_eq!(table.route(a, &binding_request("nope:x")), Err(Unroutable::UnknownUfrag));
        table.add_addr(b, 0);
        assert_eq!(table.route(b, &[0x80, 0, 0, 0]), Ok(0));
    }
}
