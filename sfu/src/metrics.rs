//! Prometheus metrics of the media plane, registered into the process registry.

use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct SfuMetrics {
    pub rooms: IntGauge,
    pub participants: IntGauge,
    pub tracks: IntGauge,
    pub packets_in: IntCounter,
    pub bytes_in: IntCounter,
    pub packets_out: IntCounter,
    pub bytes_out: IntCounter,
    pub send_calls: IntCounter,
    pub send_failures: IntCounter,
    pub rtp_forwarded: IntCounter,
    pub nacks: IntCounter,
    pub retransmitted: IntCounter,
    pub keyframe_requests: IntCounterVec,
    pub dropped_datagrams: IntCounterVec,
    /// Open ICE-TCP connections (RFC 6544).
    pub tcp_connections: IntGauge,
    pub tcp_accepted: IntCounter,
    pub dropped_events: IntCounter,
    pub not_forwarded: IntCounterVec,
    /// `not_forwarded{reason="held"}`, kept at hand: it counts on the packet path (ADR 0028).
    pub held: IntCounter,
    pub bad_input: IntCounterVec,
    pub session_panics: IntCounter,
    pub shard_restarts: IntCounter,
    pub fast_path_sessions: IntCounter,
    pub audio_not_selected: IntCounter,
    /// RED audio sent to subscribers as it came, and unwrapped to its Opus (ADR 0026).
    pub red_passed: IntCounter,
    pub red_unwrapped: IntCounter,
    pub layer_switches: IntCounter,
    pub layer_pauses: IntCounter,
    pub paused_by_bandwidth: IntCounter,
    /// Times a subscriber's estimate fell for overuse or loss (ADR 0025).
    pub estimate_decreases: IntCounter,
    /// Offers that restarted ICE (a client's network changed).
    pub ice_restarts: IntCounter,
    pub paused_by_load: IntCounter,
    pub shard_video_share: GaugeVec,
    pub sessions_ended: IntCounterVec,
    pub srtp_guard: IntCounterVec,
    pub joins_refused: IntCounterVec,
    pub shard_busy: GaugeVec,
    pub shard_lag: GaugeVec,
    pub relay: RelayMetrics,
}

/// The broadcast tier's relay links (ADR 0012).
#[derive(Clone)]
pub struct RelayMetrics {
    pub links: IntGaugeVec,
    pub rooms: IntGaugeVec,
    pub packets: IntCounterVec,
    pub dropped: IntCounterVec,
    pub nacked: IntCounter,
    pub retransmitted: IntCounter,
    pub refused: IntCounterVec,
    pub keyframe_cache: IntCounterVec,
    /// Each link to a child as QUIC sees it on this side (media flows this way), read
    /// once a second, by the child's node name.
    pub child_rtt_us: IntGaugeVec,
    pub child_cwnd_bytes: IntGaugeVec,
    pub child_lost_packets: IntGaugeVec,
}

impl SfuMetrics {
    pub fn new(registry: &Registry) -> Self {
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("metric name");
            registry.register(Box::new(g.clone())).expect("register metric");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("metric name");
            registry.register(Box::new(c.clone())).expect("register metric");
            c
        };
        let float_gauge_vec = |name: &str, help: &str| {
            let g = GaugeVec::new(Opts::new(name, help), &["shard"]).expect("metric name");
            registry.register(Box::new(g.clone())).expect("register metric");
            g
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric name");
            registry.register(Box::new(c.clone())).expect("register metric");
            c
        };
        let red_forwarded = counter_vec(
            "huiyi_red_packets_forwarded_total",
            "RED audio packets (RFC 2198) sent to subscribers, by what they got: red as it came, opus its primary alone",
            &["as"],
        );
        let not_forwarded = counter_vec(
            "huiyi_rtp_not_forwarded_total",
            "RTP packets a subscriber could not be sent, by reason",
            &["reason"],
        );
        Self {
            rooms: gauge("huiyi_rooms", "Rooms with at least one participant on this media node"),
            participants: gauge("huiyi_participants", "Participants with a media session"),
            tracks: gauge("huiyi_tracks", "Published tracks"),
            packets_in: counter("huiyi_udp_packets_in_total", "Datagrams received on the media port"),
            bytes_in: counter("huiyi_udp_bytes_in_total", "Bytes received on the media port"),
            packets_out: counter("huiyi_udp_packets_out_total", "Datagrams sent from the media port"),
            bytes_out: counter("huiyi_udp_bytes_out_total", "Bytes sent from the media port"),
            send_calls: counter(
                "huiyi_udp_send_calls_total",
                "Send system calls on the media port (one GSO send carries several datagrams)",
            ),
            send_failures: counter(
                "huiyi_udp_send_failed_total",
                "Datagrams the kernel refused to send (a full socket buffer, an unreachable peer)",
            ),
            rtp_forwarded: counter("huiyi_rtp_forwarded_total", "RTP packets written to subscribers"),
            nacks: counter("huiyi_nacks_received_total", "NACKs received from subscribers"),
            retransmitted: counter(
                "huiyi_rtp_retransmitted_total",
                "Packets the forwarding fast path resent in answer to subscribers' NACKs",
            ),
            keyframe_requests: counter_vec(
                "huiyi_keyframe_requests_total",
                "Keyframe requests: from subscribers (received) and to publishers (sent, after throttling)",
                &["direction"],
            ),
            dropped_datagrams: counter_vec(
                "huiyi_dropped_datagrams_total",
                "Datagrams dropped before reaching a session, by reason",
                &["reason"],
            ),
            tcp_connections: gauge("huiyi_ice_tcp_connections", "Open ICE-TCP connections (media over TCP)"),
            tcp_accepted: counter("huiyi_ice_tcp_connections_total", "ICE-TCP connections accepted"),
            dropped_events: counter(
                "huiyi_dropped_session_events_total",
                "Session events not delivered because a signaling connection fell behind",
            ),
            held: not_forwarded.with_label_values(&["held"]),
            not_forwarded,
            bad_input: counter_vec(
                "huiyi_bad_signaling_input_total",
                "Client input the media node refused (an unparseable ICE candidate, ...), by kind",
                &["kind"],
            ),
            audio_not_selected: counter(
                "huiyi_audio_not_selected_total",
                "Audio packets not forwarded because their track is not among the room's loudest (top-N)",
            ),
            red_passed: red_forwarded.with_label_values(&["red"]),
            red_unwrapped: red_forwarded.with_label_values(&["opus"]),
            layer_switches: counter(
                "huiyi_layer_switches_total",
                "Switches of a subscriber's video slot from one simulcast layer to another",
            ),
            layer_pauses: counter(
                "huiyi_layer_changes_told_total",
                "Times a simulcast publisher was told to pause or resume layers nobody or somebody takes",
            ),
            paused_by_bandwidth: counter(
                "huiyi_video_paused_for_bandwidth_total",
                "Allocation rounds (every 200 ms) in which a subscriber's video slot was paused to fit its bandwidth estimate",
            ),
            ice_restarts: counter(
                "huiyi_ice_restarts_total",
                "Client offers that restarted ICE (new credentials: the client's network changed), answered with new credentials of ours",
            ),
            estimate_decreases: counter(
                "huiyi_bandwidth_estimate_decreases_total",
                "Times a subscriber's bandwidth estimate fell because its path's queue grew (delay) or it lost more than 20% (ADR 0025)",
            ),
            paused_by_load: counter(
                "huiyi_video_paused_for_load_total",
                "Allocation rounds in which a video slot was paused because its media thread was behind and shed video (ADR 0021)",
            ),
            shard_video_share: float_gauge_vec(
                "huiyi_shard_video_share",
                "The share of the video its subscribers show that a media thread sends: 1 normally, less while it is behind and sheds video (ADR 0021)",
            ),
            session_panics: counter(
                "huiyi_session_panics_total",
                "Sessions ended because their WebRTC engine panicked (a bug; the shard carried on)",
            ),
            fast_path_sessions: counter(
                "huiyi_fast_path_sessions_total",
                "Sessions whose forwarded media is sealed by the SRTP fast path (keys from their own DTLS handshake)",
            ),
            shard_restarts: counter(
                "huiyi_media_thread_restarts_total",
                "Media threads (shards, the receive thread) started again after a panic; their sessions ended with 4008",
            ),
            sessions_ended: counter_vec(
                "huiyi_sessions_ended_total",
                "Sessions ended, by reason",
                &["reason"],
            ),
            srtp_guard: counter_vec(
                "huiyi_srtp_fast_path_guard_total",
                "What the SRTP fast path's windows of seen indexes stopped or forgot, by reason: a seal under an index already sealed or too old (stopped before an AES-GCM nonce reuse: a packet the publisher sent twice, which the rewriter numbers like the first, or a bug upstream), a seal for an SSRC past the per-key cap, a replayed SRTCP packet, an SRTCP sender SSRC forgotten at the per-session cap",
                &["reason"],
            ),
            joins_refused: counter_vec(
                "huiyi_joins_refused_total",
                "Joins the media node refused for its load (ADR 0020), by reason: participants (max_participants_per_node), shard_busy (the room's media thread would work more than max_shard_busy of the time with one more), shard_lag (media waited in its queue longer than max_shard_lag_ms)",
                &["reason"],
            ),
            shard_busy: float_gauge_vec(
                "huiyi_shard_busy_ratio",
                "Share of wall time a media thread works rather than waits for input, smoothed over about half a second",
            ),
            shard_lag: float_gauge_vec(
                "huiyi_shard_lag_seconds",
                "The longest a batch of received media waited in a media thread's queue in the last quarter second",
            ),
            relay: RelayMetrics::new(registry),
        }
    }
}

impl RelayMetrics {
    fn new(registry: &Registry) -> Self {
        fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
            registry.register(Box::new(c.clone())).expect("register metric");
            c
        }
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            register(registry, IntGaugeVec::new(Opts::new(name, help), labels).expect("metric name"))
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(registry, IntCounterVec::new(Opts::new(name, help), labels).expect("metric name"))
        };
        let counter =
            |name: &str, help: &str| register(registry, IntCounter::new(name, help).expect("metric name"));
        Self {
            links: gauge_vec(
                "huiyi_relay_links",
                "Relay links up: to this node's parent (`parent`), from the nodes it feeds (`child`)",
                &["to"],
            ),
            rooms: gauge_vec(
                "huiyi_relay_rooms",
                "Rooms relayed: pulled from the parent (`in`), sent to children (`out`, once per child)",
                &["direction"],
            ),
            packets: counter_vec("huiyi_relay_packets_total", "RTP packets over relay links", &["direction"]),
            dropped: counter_vec(
                "huiyi_relay_dropped_total",
                "Relay packets and messages not delivered, by reason",
                &["reason"],
            ),
            nacked: counter(
                "huiyi_relay_nacked_total",
                "Packets a child asked for again (lost on a relay link)",
            ),
            retransmitted: counter(
                "huiyi_relay_retransmitted_total",
                "Packets sent again to a child from the link's history",
            ),
            refused: counter_vec(
                "huiyi_relay_refused_total",
                "Relay connections refused or closed, by reason (a wrong proof of the cluster secret, a bad message)",
                &["reason"],
            ),
            keyframe_cache: counter_vec(
                "huiyi_keyframe_cache_total",
                "New video sinks of a broadcast started from the cached keyframe and the frames after it (`hit`), or left to wait for a new keyframe (`miss`)",
                &["result"],
            ),
            child_rtt_us: gauge_vec(
                "huiyi_relay_child_rtt_microseconds",
                "Round-trip time of the relay link to each child (QUIC's smoothed estimate)",
                &["child"],
            ),
            child_cwnd_bytes: gauge_vec(
                "huiyi_relay_child_cwnd_bytes",
                "Congestion window of the relay link to each child: media beyond it waits (or is dropped when old)",
                &["child"],
            ),
            child_lost_packets: gauge_vec(
                "huiyi_relay_child_lost_packets",
                "QUIC packets sent to each child and declared lost, over the link's life",
                &["child"],
            ),
        }
    }
}

/// At most one log line a second for a warning that input can repeat (a storm of
/// them would cost more than what they report; the counters keep the count).
pub(crate) struct LogThrottle(std::sync::Mutex<Option<std::time::Instant>>);

impl LogThrottle {
    pub const fn new() -> Self {
        Self(std::sync::Mutex::new(None))
    }

    /// Whether to log now.
    pub fn ready(&self) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < std::time::Duration::from_secs(1)) {
            return false;
        }
        *last = Some(now);
        true
    }
}
