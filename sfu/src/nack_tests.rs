//! NACK handling of an outgoing stream configured as a session gets it, tested over a
//! simulated network against a str0m client: a lost packet still in the cache is resent
//! (a hit); one that fell out of the cache is not (a miss). Time is simulated.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, Ssrc};
use str0m::{Candidate, Event, IceCreds, Input, Output, Rtc};

use crate::config::MediaConfig;
use crate::shard::session_rtc;

struct Peer {
    rtc: Rtc,
    next_timeout: Instant,
}

struct Link {
    now: Instant,
    server: Peer,
    client: Peer,
    /// Drop the server's RTP packet with this (SSRC, sequence number), once.
    drop_once: Option<(u32, u16)>,
    /// While true, nothing the client sends reaches the server (holds back NACKs).
    client_muted: bool,
    held: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    received: Vec<(u16, Vec<u8>)>,
    server_nacks: u64,
    connected: (bool, bool),
}

fn rtp_ssrc_seq(datagram: &[u8]) -> Option<(u32, u16)> {
    // SRTP leaves the RTP header in the clear; RTCP uses payload types 200-207.
    if datagram.len() < 12 || datagram[0] >> 6 != 2 || (200..=207).contains(&datagram[1]) {
        return None;
    }
    let seq = u16::from_be_bytes([datagram[2], datagram[3]]);
    let ssrc = u32::from_be_bytes([datagram[8], datagram[9], datagram[10], datagram[11]]);
    Some((ssrc, seq))
}

impl Link {
    fn new(config: &MediaConfig) -> Self {
        let now = Instant::now();
        let server_addr: SocketAddr = "10.0.0.1:7701".parse().unwrap();
        let client_addr: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let mut server = session_rtc(config, IceCreds::new(), now);
        server.add_local_candidate(Candidate::host(server_addr, "udp").unwrap());
        let mut client = Rtc::builder().set_rtp_mode(true).build(now);
        client.add_local_candidate(Candidate::host(client_addr, "udp").unwrap());
        Link {
            now,
            server: Peer { rtc: server, next_timeout: now },
            client: Peer { rtc: client, next_timeout: now },
            drop_once: None,
            client_muted: false,
            held: Vec::new(),
            received: Vec::new(),
            server_nacks: 0,
            connected: (false, false),
        }
    }

    /// Negotiate one video track from server to client, as a subscription is set up.
    fn negotiate_video(&mut self) -> Mid {
        let mut api = self.server.rtc.sdp_api();
        let mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        let (offer, pending) = api.apply().expect("an offer");
        let offer = SdpOffer::from_sdp_string(&offer.to_sdp_string()).unwrap();
        let answer = self.client.rtc.sdp_api().accept_offer(offer).unwrap();
        self.server.rtc.sdp_api().accept_answer(pending, answer).unwrap();
        mid
    }

    fn drain(&mut self, server_side: bool) {
        loop {
            let peer = if server_side { &mut self.server } else { &mut self.client };
            match peer.rtc.poll_output().unwrap() {
                Output::Timeout(t) => {
                    peer.next_timeout = t;
                    return;
                }
                Output::Transmit(t) => {
                    let data = t.contents.to_vec();
                    if server_side {
                        if self.drop_once.is_some() && rtp_ssrc_seq(&data) == self.drop_once {
                            self.drop_once = None;
                            continue;
                        }
                        self.deliver(false, t.source, t.destination, &data);
                    } else if self.client_muted {
                        self.held.push((t.source, t.destination, data));
                    } else {
                        self.deliver(true, t.source, t.destination, &data);
                    }
                }
                Output::Event(e) => match (server_side, e) {
                    (true, Event::Connected) => self.connected.0 = true,
                    (false, Event::Connected) => self.connected.1 = true,
                    (true, Event::MediaEgressStats(s)) => self.server_nacks = self.server_nacks.max(s.nacks),
                    (false, Event::RtpPacket(p)) => {
                        self.received.push((p.header.sequence_number, p.payload.to_vec()))
                    }
                    _ => {}
                },
            }
        }
    }

    fn deliver(&mut self, to_server: bool, source: SocketAddr, destination: SocketAddr, data: &[u8]) {
        let now = self.now;
        let peer = if to_server { &mut self.server } else { &mut self.client };
        let receive = Receive::new(Protocol::Udp, source, destination, data).unwrap();
        peer.rtc.handle_input(Input::Receive(now, receive)).unwrap();
        self.drain(to_server);
    }

    /// Run simulated time forward, handling both peers' timeouts.
    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        loop {
            self.drain(true);
            self.drain(false);
            let next = self.server.next_timeout.min(self.client.next_timeout).max(self.now);
            if next > end {
                self.now = end;
                break;
            }
            self.now = next.max(self.now + Duration::from_micros(100));
            let now = self.now;
            self.server.rtc.handle_input(Input::Timeout(now)).unwrap();
            self.client.rtc.handle_input(Input::Timeout(now)).unwrap();
        }
        self.drain(true);
        self.drain(false);
    }

    fn release_held(&mut self) {
        for (s, d, data) in std::mem::take(&mut self.held) {
            self.deliver(true, s, d, &data);
        }
    }

    fn connect(&mut self) -> (Ssrc, str0m::media::Pt) {
        let mid = self.negotiate_video();
        // The client is the controlling ICE agent; the server is lite.
        for _ in 0..200 {
            self.advance(Duration::from_millis(10));
            if self.connected == (true, true) {
                break;
            }
        }
        assert_eq!(self.connected, (true, true), "simulated peers connect");
        let pt = {
            let config = self.server.rtc.codec_config();
            let media = self.server.rtc.media(mid).unwrap();
            media
                .remote_pts()
                .iter()
                .copied()
                .find(|pt| config.find(|p| p.pt() == *pt).is_some_and(|p| p.spec().codec == Codec::Vp8))
                .expect("VP8 negotiated")
        };
        let ssrc = self.server.rtc.direct_api().stream_tx_by_mid(mid, None).unwrap().ssrc();
        (ssrc, pt)
    }

    fn send(&mut self, ssrc: Ssrc, pt: str0m::media::Pt, seq: u64) {
        let payload = vec![0x10, 0x01, seq as u8, (seq >> 8) as u8];
        let now = self.now;
        let mut api = self.server.rtc.direct_api();
        let stream = api.stream_tx(&ssrc).unwrap();
        stream.write_rtp(RtpWrite::new(pt, seq.into(), seq as u32 * 3000, now, payload).nackable(true));
        self.advance(Duration::from_millis(5));
    }
}

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
