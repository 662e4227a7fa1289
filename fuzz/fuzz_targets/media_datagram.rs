//! A datagram on the media port, through what the server does with it before any session
//! is involved, none of it contained: the receive thread's routing (`RouteTable::route`:
//! by source address, else by the server ufrag of a STUN binding request), str0m's parsing
//! into STUN, DTLS, RTP or RTCP (`Receive::new`, called by the shard before the engine),
//! and, for RTCP on a session with the fast path, `Egress::read_feedback`.
//!
//! Input: one byte choosing the source address, then the datagram.
//!
//! Properties: no panic; routing agrees with `stun_server_ufrag` and the table; a ufrag
//! found lies in the STUN message's declared body and holds no ':'; a binding request that
//! str0m's parser reads with a USERNAME routes by that username's first half; a datagram is
//! STUN to str0m only if it is to the demultiplexer; junk never reads as SRTCP.

#![no_main]

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sfu::demux::{RouteTable, Unroutable, is_stun, stun_server_ufrag};
use sfu::egress::{Egress, keys, srtp};
use str0m::crypto::dtls::SrtpProfile;
use str0m::ice::StunMessage;
use str0m::net::{Protocol, Receive};

const KNOWN: &str = "10.0.0.2:5000";
const KNOWN_SHARD: usize = 2;
const UFRAGS: [(&str, usize); 2] = [("srvA", 0), ("srvB", 1)];

fn table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let t = RouteTable::default();
        for (ufrag, shard) in UFRAGS {
            t.add_ufrag(ufrag, shard);
        }
        t.add_addr(KNOWN.parse().unwrap(), KNOWN_SHARD);
        t
    })
}

thread_local! {
    static EGRESS: RefCell<Egress> = RefCell::new({
        let crypto = keys::crypto_provider();
        let (tx, rx) = srtp::session_keys(&crypto, SrtpProfile::AEAD_AES_128_GCM, &[7; 56], false).unwrap();
        Egress::new(tx, rx)
    });
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, datagram)) = data.split_first() else { return };
    let source: SocketAddr = match choice % 3 {
        0 => KNOWN.parse().unwrap(),
        1 => "192.0.2.7:40000".parse().unwrap(),
        _ => "[2001:db8::7]:40000".parse().unwrap(),
    };

    // The receive thread.
    let ufrag = stun_server_ufrag(datagram);
    let routed = table().route(source, datagram);
    let expected = if source == KNOWN.parse().unwrap() {
        Ok(KNOWN_SHARD)
    } else {
        match ufrag {
            None => Err(Unroutable::UnknownSource),
            Some(u) => {
                UFRAGS.iter().find(|(name, _)| *name == u).map(|(_, s)| *s).ok_or(Unroutable::UnknownUfrag)
            }
        }
    };
    assert_eq!(routed, expected);
    if let Some(u) = ufrag {
        assert!(is_stun(datagram), "a ufrag from a datagram that is not STUN");
        assert!(!u.contains(':'), "ufrag {u:?} holds the separator");
        let declared = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
        let start = u.as_ptr() as usize - datagram.as_ptr() as usize;
        assert!(start >= 24 && start + u.len() <= 20 + declared, "ufrag outside the declared body");
    }
    if let Ok(message) = StunMessage::parse(datagram)
        && message.is_binding_request()
        && let Some(username) = message.username()
        && is_stun(datagram)
    {
        let first = username.split(':').next();
        assert_eq!(ufrag, first, "str0m reads USERNAME {username:?}, the demultiplexer {ufrag:?}");
    }

    // The shard, before the engine.
    let local: SocketAddr = "10.0.0.1:7701".parse().unwrap();
    if let Ok(receive) = Receive::new(Protocol::Udp, source, local, datagram) {
        let kind = format!("{:?}", receive.contents);
        assert_eq!(kind.starts_with("Stun"), is_stun(datagram), "str0m parsed {kind}");
    }
    let is_rtcp = datagram.len() >= 8 && datagram[0] >> 6 == 2 && (192..=223).contains(&datagram[1]);
    if is_rtcp {
        EGRESS.with(|e| assert_eq!(e.borrow_mut().read_feedback(datagram, 0), None, "junk read as SRTCP"));
    }
});
