//! A client's negotiation, through the engine calls the shard makes for it, each contained
//! as in the server (`sfu::testing::ClientFacing`), on a session configured as every
//! participant's is.
//!
//! Input: parts separated by NUL bytes. The first is the client's offer; after an accepted
//! offer the server offers a send-only audio and video m-line (as for new subscriptions);
//! a later part starting with `v=` is the client's answer to that offer when one is
//! pending, else a new offer (in either, `MID0` and `MID1` stand for the mids the server
//! offered last, so a seed can answer); any other part is an ICE candidate line.
//!
//! A panic the containment catches is what the server survives (one session ends): it is
//! reported, once per place, and the fuzzer goes on. A panic that escapes is a crash.

#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Instant;

use huiyi_fuzz::{contained, trace};
use libfuzzer_sys::fuzz_target;
use sfu::MediaConfig;
use sfu::testing::ClientFacing;

fuzz_target!(
    init: contained::report_engine_panics("sdp_offer"),
    |data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else { return };
        contained::run(data, || negotiate(text));
    }
);

fn negotiate(text: &str) {
    let mut parts = text.split('\0');
    let mut session = ClientFacing::new(config(), local(), Instant::now());
    let first = parts.next().unwrap_or_default();
    // The mids of the server's last offer, and whether it awaits an answer.
    let (mut mids, mut pending) = match offer(&mut session, first) {
        Some(m) => (m, true),
        None => (Vec::new(), false),
    };
    for part in parts {
        if session.engine_panicked() {
            break;
        }
        if !part.starts_with("v=") {
            let took = session.candidate(part);
            trace!("candidate {part:?}: taken {took}");
            continue;
        }
        let mut sdp = part.to_string();
        for (i, mid) in mids.iter().enumerate() {
            sdp = sdp.replace(&format!("MID{i}"), mid);
        }
        if pending {
            let result = session.answer(&sdp);
            trace!("answer: {result:?}");
            // A refused answer leaves the offer pending (as in the shard), answerable again.
            pending = result.is_err();
        } else if let Some(m) = offer(&mut session, &sdp) {
            (mids, pending) = (m, true);
        }
    }
}

/// The client's offer; when accepted, the server's own offer that follows, by its mids.
fn offer(session: &mut ClientFacing, sdp: &str) -> Option<Vec<String>> {
    let result = session.offer(sdp);
    trace!("offer: {}", result.as_ref().map(|_| "answered").unwrap_or_else(|e| e));
    let answer = result.ok()?;
    assert!(answer.starts_with("v=0"), "an answer is SDP: {answer:?}");
    let (sdp, mids) = session.server_offer()?;
    trace!("server offer:\n{sdp}");
    Some(mids)
}

fn config() -> &'static MediaConfig {
    static CONFIG: OnceLock<MediaConfig> = OnceLock::new();
    CONFIG.get_or_init(MediaConfig::default)
}

fn local() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 7701))
}
