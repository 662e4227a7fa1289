//! NACK handling of an outgoing stream configured as a session gets it, tested over a
//! simulated network against a str0m client: a lost packet still in the cache is resent
//! (a hit); one that fell out of the cache is not (a miss). Time is simulated.

use std::time::Duration;

use crate::config::MediaConfig;
use crate::testing::Link;

#[test]
fn lost_packet_in_cache_is_resent() {
    let mut link = Link::new(&MediaConfig::default());
    let (ssrc, pt) = link.connect();
    link.drop_once = Some((*ssrc, 5));
    for seq in 1..=30 {
        link.send(ssrc, pt, seq);
    }
    link.advance(Duration::from_secs(6));
    let got: Vec<u16> = link.received.iter().map(|(s, _)| *s).collect();
    assert!(got.contains(&5), "the dropped packet arrived by retransmission: {got:?}");
    let resent = link.received.iter().find(|(s, _)| *s == 5).unwrap();
    assert_eq!(resent.1, vec![0x10, 0x01, 5, 0], "retransmission carries the original payload");
    assert!(link.server_nacks >= 1, "the server saw the NACK");
}

#[test]
fn lost_packet_evicted_from_cache_is_not_resent() {
    let config = MediaConfig { nack_cache_packets: 8, ..MediaConfig::default() };
    let mut link = Link::new(&config);
    let (ssrc, pt) = link.connect();
    link.drop_once = Some((*ssrc, 5));
    // Hold the client's NACKs back until 40 newer packets pushed seq 5 out of the cache.
    link.client_muted = true;
    for seq in 1..=45 {
        link.send(ssrc, pt, seq);
    }
    link.client_muted = false;
    link.release_held();
    link.advance(Duration::from_secs(6));
    let got: Vec<u16> = link.received.iter().map(|(s, _)| *s).collect();
    assert!(!got.contains(&5), "seq 5 fell out of an 8-packet cache and cannot be resent: {got:?}");
    assert!(got.contains(&45), "later packets flow: {got:?}");
    assert!(link.server_nacks >= 1, "the NACK reached the server and missed");
}

/// The forwarding fast path (egress/): packets protected with the keys learnt from the
/// server's DTLS handshake decrypt at a str0m client, and a packet lost on the way is
/// resent from the slot's history on the RTX stream when the client's NACK (SRTCP,
/// decrypted by the fast path) names it.
#[test]
fn fast_path_packets_decrypt_and_a_lost_one_is_resent_over_rtx() {
    use std::sync::Arc;

    use crate::egress::{self, Egress, Outgoing};
    use crate::testing::{CLIENT_ADDR, SERVER_ADDR};

    let mut link = Link::new(&MediaConfig::default());
    let (ssrc, pt) = link.connect();
    let captured = egress::keys::take_captured();
    assert_eq!(captured.len(), 1, "the server's handshake exported its keying material once");
    let c = &captured[0];
    let crypto = egress::keys::crypto_provider();
    let (tx, rx) = egress::srtp::session_keys(&crypto, c.profile, &c.material, c.local_is_client)
        .expect("str0m negotiates a GCM profile");
    let mut egress = Egress::new(tx, rx);
    let mid = link.server.rtc.direct_api().stream_tx(&ssrc).unwrap().mid();
    let mut slot = crate::shard::slot_out(&mut link.server.rtc, mid, ssrc).expect("slot state");
    assert!(slot.rtx_ssrc.is_some(), "the client negotiated RTX for VP8");
    assert!(slot.ext.mid.is_some(), "the client negotiated the mid extension");

    let (server, client) = (SERVER_ADDR.parse().unwrap(), CLIENT_ADDR.parse().unwrap());
    link.log_to_server = true;
    // Across a rollover of the 16-bit sequence number, so the ROC is exercised too.
    let first = 65_530u64;
    for seq in first..first + 20 {
        let payload: Arc<[u8]> = vec![0x10, 0x01, seq as u8, (seq >> 8) as u8].into();
        let p = Outgoing {
            pt: *pt,
            seq,
            timestamp: seq as u32 * 3000,
            marker: true,
            payload: &payload,
            vp8: None,
            audio_level: None,
            orientation: None,
            content_type: None,
        };
        slot.remember(&p);
        let datagram = egress.seal(&slot, &p).expect("sealed").to_vec();
        if seq != first + 10 {
            link.deliver(false, server, client, &datagram);
        }
        link.advance(Duration::from_millis(5));
    }
    let lost = (first + 10) as u16;
    assert!(!link.received.iter().any(|(s, _)| *s == lost));
    assert_eq!(link.received.len(), 19, "every other packet decrypted at the client");

    // The client NACKs within a few hundred milliseconds.
    link.advance(Duration::from_millis(500));
    let mut resent = 0;
    for datagram in std::mem::take(&mut link.to_server) {
        for (media, seq) in egress.read_feedback(&datagram, 0).unwrap_or_default() {
            assert_eq!(media, *ssrc);
            let Some(again) = egress.reseal(&mut slot, seq, 1_000_000) else { continue };
            let again = again.to_vec();
            link.deliver(false, server, client, &again);
            resent += 1;
        }
    }
    assert!(resent >= 1, "the client's NACK named the lost packet");
    let got = link.received.iter().find(|(s, _)| *s == lost).expect("the lost packet arrived over RTX");
    assert_eq!(got.1, vec![0x10, 0x01, lost as u8, (lost >> 8) as u8]);
}
