//! A simulated network between one server session (configured as the shard configures
//! every session) and a str0m client, with time passed in: for tests of behaviour that
//! lives inside a session (NACK answers) and for benchmarks of the packet path.
//! Not part of the media plane's API.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, Ssrc};
use str0m::{Candidate, Event, IceCreds, Input, Output, Rtc};

use crate::config::MediaConfig;
#[cfg(feature = "internals")]
pub use crate::shard::ClientFacing;
use crate::shard::session_rtc;

pub const SERVER_ADDR: &str = "10.0.0.1:7701";
pub const CLIENT_ADDR: &str = "10.0.0.2:5000";

pub struct Peer {
    pub rtc: Rtc,
    next_timeout: Instant,
}

pub struct Link {
    pub now: Instant,
    pub server: Peer,
    pub client: Peer,
    /// Drop the server's RTP packet with this (SSRC, sequence number), once.
    pub drop_once: Option<(u32, u16)>,
    /// While true, nothing the client sends reaches the server (holds back NACKs).
    pub client_muted: bool,
    /// When false, the server's datagrams are counted, not delivered (for benchmarks of
    /// the sending side).
    pub deliver_to_client: bool,
    pub sent_datagrams: u64,
    held: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    pub received: Vec<(u16, Vec<u8>)>,
    pub server_nacks: u64,
    /// Every datagram the client sent the server, when `log_to_server` is set.
    pub log_to_server: bool,
    pub to_server: Vec<Vec<u8>>,
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
    pub fn new(config: &MediaConfig) -> Self {
        let now = Instant::now();
        let (server_addr, client_addr) = (SERVER_ADDR.parse().unwrap(), CLIENT_ADDR.parse().unwrap());
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
            deliver_to_client: true,
            sent_datagrams: 0,
            held: Vec::new(),
            received: Vec::new(),
            server_nacks: 0,
            log_to_server: false,
            to_server: Vec::new(),
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

    pub fn drain(&mut self, server_side: bool) {
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
                        self.sent_datagrams += 1;
                        if self.drop_once.is_some() && rtp_ssrc_seq(&data) == self.drop_once {
                            self.drop_once = None;
                            continue;
                        }
                        if self.deliver_to_client {
                            self.deliver(false, t.source, t.destination, &data);
                        }
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

    pub fn deliver(&mut self, to_server: bool, source: SocketAddr, destination: SocketAddr, data: &[u8]) {
        if to_server && self.log_to_server {
            self.to_server.push(data.to_vec());
        }
        let now = self.now;
        let peer = if to_server { &mut self.server } else { &mut self.client };
        let receive = Receive::new(Protocol::Udp, source, destination, data).unwrap();
        peer.rtc.handle_input(Input::Receive(now, receive)).unwrap();
        self.drain(to_server);
    }

    /// Run simulated time forward, handling both peers' timeouts.
    pub fn advance(&mut self, by: Duration) {
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

    pub fn release_held(&mut self) {
        for (s, d, data) in std::mem::take(&mut self.held) {
            self.deliver(true, s, d, &data);
        }
    }

    pub fn connect(&mut self) -> (Ssrc, str0m::media::Pt) {
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

    pub fn send(&mut self, ssrc: Ssrc, pt: str0m::media::Pt, seq: u64) {
        let payload = vec![0x10, 0x01, seq as u8, (seq >> 8) as u8];
        let now = self.now;
        let mut api = self.server.rtc.direct_api();
        let stream = api.stream_tx(&ssrc).unwrap();
        stream.write_rtp(RtpWrite::new(pt, seq.into(), seq as u32 * 3000, now, payload).nackable(true));
        self.advance(Duration::from_millis(5));
    }
}
