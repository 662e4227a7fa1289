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
