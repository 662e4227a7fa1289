//! The forwarding fast path's reading of a peer's SRTCP (`Egress::read_feedback`: SRTCP
//! unprotection, its replay windows, then the generic NACKs of the plain compound packet),
//! fed packets sealed with the peer's keys by an SRTCP sender written apart from it
//! (src/srtcp.rs), plus replays, altered packets and junk; and `nack::lost_packets` on
//! every plain packet.
//!
//! Input: one byte of settings (AES-256, which end is the DTLS client), then records of
//! `op` (low two bits: 0 seal, 1 replay the last sealed, 2 alter it, 3 junk; next two bits:
//! which of four sender SSRCs), a signed 16-bit step from that SSRC's highest index, a
//! length, and that many bytes.
//!
//! Properties, from RFC 3711 §3.3.2 rather than from this implementation's window size:
//! a packet with an index above every one accepted from its SSRC, or up to 63 below the
//! highest and not seen, is read, and gives exactly the NACKs of its plain text; an index
//! accepted before is refused; altered packets and junk never read; `lost_packets` names at
//! most 17 packets per 4 bytes.

#![no_main]

use std::collections::HashSet;

use huiyi_fuzz::srtcp::SrtcpSealer;
use libfuzzer_sys::fuzz_target;
use sfu::egress::{Egress, keys, nack, srtp};
use str0m::crypto::dtls::SrtpProfile;

const SENDERS: [u32; 4] = [0x1111_1111, 0x2222_2222, 0x0000_0000, 0xffff_ffff];

#[derive(Default, Clone)]
struct Sender {
    highest: Option<u32>,
    accepted: HashSet<u32>,
}

fuzz_target!(|data: &[u8]| {
    let Some((&settings, mut rest)) = data.split_first() else { return };
    let key_len = if settings & 1 != 0 { 32 } else { 16 };
    let profile = if key_len == 32 { SrtpProfile::AEAD_AES_256_GCM } else { SrtpProfile::AEAD_AES_128_GCM };
    let local_is_client = settings & 2 != 0;
    let material: Vec<u8> =
        (0..2 * (key_len + 12)).map(|i| (i as u8).wrapping_mul(37).wrapping_add(11)).collect();
    let crypto = keys::crypto_provider();
    let (tx, rx) = srtp::session_keys(&crypto, profile, &material, local_is_client).expect("a GCM profile");
    let mut egress = Egress::new(tx, rx);
    let mut peer = SrtcpSealer::new(&crypto, key_len, &material, !local_is_client);

    let mut senders = vec![Sender::default(); SENDERS.len()];
    let mut last: Option<Vec<u8>> = None;
    while rest.len() >= 4 {
        let (op, step, len) = (rest[0], i16::from_be_bytes([rest[1], rest[2]]), usize::from(rest[3]));
        let take = len.min(rest.len() - 4);
        let bytes = &rest[4..4 + take];
        rest = &rest[4 + take..];
        let which = usize::from(op >> 2) % SENDERS.len();
        match op & 3 {
            0 => {
                // A compound packet from this sender: the first header's SSRC is its own.
                let mut plain = bytes.to_vec();
                plain.resize(plain.len().max(8), 0);
                plain[4..8].copy_from_slice(&SENDERS[which].to_be_bytes());
                check_lost_packets(&plain);
                let sender = &mut senders[which];
                let base = i64::from(sender.highest.unwrap_or(0));
                let index = (base + i64::from(step)).clamp(0, i64::from(i32::MAX)) as u32;
                let packet = peer.seal(&plain, index);
                let read = egress.read_feedback(&packet, 0);
                let must_read = !sender.accepted.contains(&index)
                    && sender.highest.is_none_or(|high| index > high || high - index < 64);
                if sender.accepted.contains(&index) {
                    assert_eq!(read, None, "replayed SRTCP index {index} was read");
                } else if must_read {
                    assert!(
                        read.is_some(),
                        "fresh SRTCP index {index} (highest {:?}) refused",
                        sender.highest
                    );
                }
                if let Some(lost) = read {
                    assert_eq!(lost, nack::lost_packets(&plain), "NACKs differ from the plain packet's");
                    sender.accepted.insert(index);
                    sender.highest = Some(sender.highest.map_or(index, |h| h.max(index)));
                }
                last = Some(packet);
            }
            1 => {
                if let Some(packet) = &last {
                    assert_eq!(egress.read_feedback(packet, 0), None, "a packet was read twice");
                }
            }
            2 => {
                if let Some(packet) = &last {
                    let mut altered = packet.clone();
                    let at = usize::from(step as u16) % altered.len();
                    altered[at] ^= 1 << (len % 8);
                    assert_eq!(egress.read_feedback(&altered, 0), None, "an altered packet was read");
                }
            }
            _ => {
                assert_eq!(egress.read_feedback(bytes, 0), None, "junk was read");
                check_lost_packets(bytes);
            }
        }
    }
});

fn check_lost_packets(plain: &[u8]) {
    let lost = nack::lost_packets(plain);
    assert!(
        lost.len() <= 17 * (plain.len() / 4),
        "{} lost packets named in {} bytes",
        lost.len(),
        plain.len()
    );
}
