//! Datagrams from a participant's own address into its session, after its offer was
//! answered and its first connectivity check passed: what any client holding a token can
//! send the server's engine (DTLS handshake records, SRTP, SRTCP, more STUN), through the
//! shard's calls (`sfu::testing::ClientFacing::datagram`: `Receive::new`, then `accepts`
//! and `handle_input` contained, then the drain).
//!
//! Input: records of a kind byte and a 16-bit length: kind 0 is a datagram of that many
//! following bytes; kind 1 moves the clock that many milliseconds and fires the session's
//! timer; kind 2 is another valid binding request (a connectivity check).
//!
//! A panic the containment catches is what the server survives (one session ends): it is
//! reported, once per place, and the fuzzer goes on. A panic that escapes is a crash.

#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use huiyi_fuzz::{contained, trace};
use libfuzzer_sys::fuzz_target;
use sfu::MediaConfig;
use sfu::egress::keys;
use sfu::testing::ClientFacing;
use str0m::ice::{StunMessage, TransId};

/// The client's offer: the browser-like seed of the SDP target.
const OFFER: &str = include_str!("../seeds/browser_offer.sdp");
const CLIENT_UFRAG: &str = "cLi3";

fuzz_target!(
    init: contained::report_engine_panics("session_datagram"),
    |data: &[u8]| {
        contained::run(data, || exchange(data));
    }
);

fn exchange(mut data: &[u8]) {
    let mut now = Instant::now();
    let mut session = ClientFacing::new(config(), server(), now);
    let answer = session.offer(OFFER).expect("the seed offer is accepted");
    let line = |prefix: &str| answer.lines().find_map(|l| l.strip_prefix(prefix)).map(str::trim).unwrap();
    let (ufrag, pwd) = (line("a=ice-ufrag:").to_string(), line("a=ice-pwd:").to_string());
    let check = binding_request(&ufrag, &pwd);
    assert!(session.datagram(client(), &check, now), "the first connectivity check is taken");
    trace!("check taken; engine sent {}", session.sent);

    while data.len() >= 3 && !session.engine_panicked() {
        let (kind, len) = (data[0], usize::from(u16::from_be_bytes([data[1], data[2]])));
        data = &data[3..];
        match kind % 3 {
            0 => {
                let take = len.min(data.len());
                let took = session.datagram(client(), &data[..take], now);
                trace!("datagram of {take} bytes: taken {took}; engine sent {}", session.sent);
                data = &data[take..];
            }
            1 => {
                now += Duration::from_millis(len as u64);
                session.timeout(now);
            }
            _ => {
                session.datagram(client(), &binding_request(&ufrag, &pwd), now);
            }
        }
    }
}

/// A browser's connectivity check: USERNAME, PRIORITY, ICE-CONTROLLING, USE-CANDIDATE,
/// MESSAGE-INTEGRITY under the server's password, FINGERPRINT.
fn binding_request(server_ufrag: &str, server_pwd: &str) -> Vec<u8> {
    let username = format!("{server_ufrag}:{CLIENT_UFRAG}");
    let message = StunMessage::binding_request(&username, TransId::new(), true, 7, 2_130_706_431, true);
    let crypto = keys::crypto_provider();
    let mut buf = vec![0u8; 512];
    let n = message
        .to_bytes(Some(server_pwd.as_bytes()), &mut buf, |key, parts| {
            crypto.sha1_hmac_provider.sha1_hmac(key, parts)
        })
        .expect("a binding request serializes");
    buf.truncate(n);
    buf
}

fn config() -> &'static MediaConfig {
    static CONFIG: OnceLock<MediaConfig> = OnceLock::new();
    CONFIG.get_or_init(MediaConfig::default)
}

fn server() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 7701))
}

fn client() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 2], 5000))
}
