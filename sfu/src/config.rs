//! Media node settings, with the defaults a laptop run needs.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// UDP address every peer's media arrives on.
    pub bind: SocketAddr,
    /// ICE-TCP (RFC 6544): a passive TCP candidate for peers whose UDP is blocked, on this
    /// address (None: the UDP address's, port included). Off: `ice_tcp = false`.
    pub ice_tcp: bool,
    pub tcp_bind: Option<SocketAddr>,
    /// Addresses announced as ICE host candidates. Empty: the bind address, or
    /// 127.0.0.1 when bound to an unspecified address.
    pub public_ips: Vec<IpAddr>,
    /// Forwarding threads; a room lives on one. 0 means one per core.
    pub shards: usize,
    /// A connected session that receives nothing for this long is ended.
    pub ice_timeout: Duration,
    /// A session that has not connected this long after joining is ended.
    pub connect_timeout: Duration,
    /// At most one keyframe request per published track in this interval.
    pub keyframe_request_interval: Duration,
    /// Packets kept per outgoing video stream to answer NACKs.
    pub nack_cache_packets: usize,
    /// Participants who may publish, per room (a meeting's size).
    pub max_participants_per_room: usize,
    /// Participants who may only watch (WHEP players, subscribe-only tokens), per room:
    /// a class's audience on this node.
    pub max_viewers_per_room: usize,
    /// Tracks one participant may publish at once (microphone, camera, screen, ...).
    pub max_publications_per_participant: usize,
    /// Participants on this node (all rooms); a join beyond is refused as node full.
    pub max_participants_per_node: usize,
    /// Admission budget of one media thread (ADR 0020): a join is refused as node full
    /// when the room's thread would work more than this share of the time with one
    /// participant more (its measured busy share, scaled by participants).
    pub max_shard_busy: f64,
    /// ... or when received media waited longer than this in its queue (it is behind).
    pub max_shard_lag: Duration,
    /// ICE candidates one session may add; more are refused with an error.
    pub max_candidates_per_session: usize,
    /// m-lines in one offer or answer from a client; more are refused before they reach
    /// a media thread.
    pub max_mlines_per_offer: usize,
    /// Bytes of one SDP offer or answer from a client.
    pub max_sdp_bytes: usize,
    /// Offers one session may send in a burst; then one a second. (Answers are taken only
    /// while the node's own offer is outstanding.)
    pub negotiation_burst: u32,
    /// Datagrams queued per shard before new ones are dropped.
    pub shard_queue: usize,
    /// Bytes of SDP queued per shard before new offers and answers are refused.
    pub shard_queue_sdp_bytes: usize,
    /// Events queued per session for its signaling connection.
    pub session_event_queue: usize,
    /// Loudest speakers forwarded in large rooms.
    pub audio_top_n: usize,
    /// Rooms of at most this many participants forward every audio track.
    pub audio_top_n_above: usize,
    /// Estimate each subscriber's bandwidth from its transport-wide feedback (or its REMB)
    /// on what the fast path sends it, and fit its video layers into it (ADR 0025).
    pub bwe: bool,
    /// Send forwarded RTP through Huiyi's own SRTP fast path (ADR 0009) rather than
    /// str0m's per-stream send path. Needs a GCM SRTP profile; the estimate needs it.
    pub fast_egress: bool,
    /// Where each estimate starts, bits per second.
    pub bwe_initial_bps: u64,
    /// Offer and accept RED (RFC 2198) beside Opus: a publisher that takes it sends each
    /// audio frame again in the next packet, and the router passes that through to
    /// subscribers that took it too and unwraps it for the others (ADR 0026).
    pub opus_red: bool,
    /// The video codecs every session offers and accepts, most preferred first (ADR 0018):
    /// the ones whose keyframes the router finds, so a subscriber switched to another
    /// layer or camera waits for a picture it can decode.
    pub video_codecs: Vec<crate::VideoCodec>,
    /// The broadcast tier: relay links to a parent and from children (ADR 0012).
    pub relay: crate::relay::RelaySettings,
    /// A room pulled from a parent that nobody here watches is let go after this long.
    pub relay_linger: Duration,
    /// Testing only: a join to this room panics its media thread (tests of supervision).
    #[doc(hidden)]
    pub panic_on_join_to: Option<String>,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 7701)),
            ice_tcp: true,
            tcp_bind: None,
            public_ips: Vec::new(),
            shards: 0,
            ice_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(30),
            keyframe_request_interval: Duration::from_millis(500),
            nack_cache_packets: 1024,
            max_participants_per_room: 300,
            max_viewers_per_room: 5_000,
            max_publications_per_participant: 6,
            max_participants_per_node: 5_000,
            max_shard_busy: 0.7,
            max_shard_lag: Duration::from_millis(100),
            max_candidates_per_session: 64,
            max_mlines_per_offer: 256,
            max_sdp_bytes: 512 * 1024,
            negotiation_burst: 10,
            shard_queue: 16_384,
            shard_queue_sdp_bytes: 8 * 1024 * 1024,
            session_event_queue: 1024,
            audio_top_n: 3,
            audio_top_n_above: 10,
            bwe: true,
            fast_egress: true,
            bwe_initial_bps: 10_000_000,
            opus_red: true,
            video_codecs: vec![crate::VideoCodec::Vp8, crate::VideoCodec::H264],
            relay: Default::default(),
            relay_linger: Duration::from_secs(30),
            panic_on_join_to: None,
        }
    }
}

impl MediaConfig {
    pub fn audio_select(&self) -> crate::router::select::AudioSelectConfig {
        crate::router::select::AudioSelectConfig {
            top_n: self.audio_top_n,
            all_up_to: self.audio_top_n_above,
            ..Default::default()
        }
    }

    pub fn shard_count(&self) -> usize {
        if self.shards > 0 {
            self.shards
        } else {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        }
    }
}
