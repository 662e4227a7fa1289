//! The router: rooms, their sources (incoming tracks) and sinks (outgoing slots), and
//! every decision about a packet, with no I/O. It holds no socket, channel or clock: the
//! shard feeds it packets and timeouts (`handle_input`), tells it what membership and
//! negotiation changed (the calls in `members.rs` and `slots.rs`), and carries out what it
//! asks for (`poll_output`): packets for sinks, keyframe requests, events (ADR 0010).

mod allocation;
mod codec;
pub mod forward;
mod gop;
mod members;
mod relay;
mod room;
pub mod rtp;
pub mod select;
mod sink;
mod slots;
mod source;
pub mod speaker;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::format::Codec;
use str0m::media::{Mid, Rid};

pub use codec::{CodecKey, PayloadTypes, h264_profile};
pub use forward::{Forwarded, SourcePacket};
pub use relay::RelayedTrack;
pub use sink::Strategy;
pub use source::{Fed, SinkKey, SourceKey};

use crate::api::{SessionEvent, SessionId, ShownTrack, TrackKind};
use crate::fasthash::FastMap;
use crate::metrics::SfuMetrics;
use crate::placed::PlacedMap;
use forward::{Arrived, Decision};
use room::Room;
use rtp::starts_keyframe;
use select::AudioSelectConfig;
use sink::Sink;

/// How often the router looks at every room (speakers, layers, allocation).
pub const HOUSEKEEPING: Duration = Duration::from_millis(200);
/// What a relay link is sent from the keyframe caches at once, at most (its QUIC datagram
/// queue holds 1 MiB; a layer whose group does not fit waits for a keyframe).
const RELAY_REPLAY_BYTES: usize = 768 * 1024;
/// Headers and SRTP tag on top of an RTP payload, for send-rate accounting.
const RTP_OVERHEAD_BYTES: u64 = 40;

#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Members who may publish, per room.
    pub max_participants_per_room: usize,
    /// Members who may only watch, per room.
    pub max_viewers_per_room: usize,
    /// At most one keyframe request per source layer in this interval.
    pub keyframe_request_interval: Duration,
    pub audio: AudioSelectConfig,
}

/// What the router is fed.
#[derive(Debug)]
pub enum Input {
    /// A packet of `source`'s simulcast layer `layer` (0 without simulcast).
    Packet { source: SourceKey, layer: u8, rid: Option<Rid>, packet: SourcePacket },
    /// The time moved on: housekeeping is due when `poll_timeout` said so.
    Timeout,
    /// A subscriber's bandwidth estimate for what it is sent (bits per second).
    Estimate { endpoint: SessionId, bps: u64 },
    /// A subscriber asked for a keyframe on one of its sinks.
    KeyframeWanted { sink: SinkKey },
    /// A relay link's next node asked for a keyframe of one layer of what a sink carries.
    LayerKeyframeWanted { sink: SinkKey, layer: u8 },
}

/// What the router asks its driver to do.
#[derive(Debug)]
pub enum Output {
    /// Send a packet on a sink; `at` is the sink's place among its endpoint's sinks, in the
    /// order they were added (a hint: the shard keeps its own in the same order).
    Forward { sink: SinkKey, at: u32, packet: Forwarded },
    /// Ask a source's publisher for a keyframe on this SSRC (already throttled).
    KeyframeRequest { source: SourceKey, ssrc: u32 },
    /// Tell an endpoint's signaling connection.
    Event { to: SessionId, event: SessionEvent },
    /// The endpoint has sources waiting for new sinks: offer them (see `Router::slots_to_add`).
    OfferNeeded(SessionId),
    /// A relay link that feeds another node should carry this newly published source.
    RelaySource { to: SessionId, source: SourceKey },
}

/// One endpoint: a participant's WebRTC session, or a relay link to another node.
struct Endpoint {
    room: String,
    participant_id: String,
    can_subscribe: bool,
    relay: bool,
    /// Its first negotiation finished: sinks may be offered to it.
    negotiated: bool,
    /// The video sources it shows (None: it never said; it gets every one).
    view: Option<Vec<ShownTrack>>,
    /// Which sink carries each source.
    sink_of: FastMap<SourceKey, Mid>,
    /// Sources that need a new sink in its next offer.
    to_add: Vec<SourceKey>,
    sinks: PlacedMap<Mid, Sink>,
    /// What the payload types of the media it sends mean.
    codecs: PayloadTypes,
    /// The latest bandwidth estimate for what it is sent (bits per second).
    estimate: Option<u64>,
    /// Media bytes sent to it since the last measurement, and the measured rate.
    sent_bytes: u64,
    sent_bps: u64,
}

pub struct Router {
    config: RouterConfig,
    metrics: SfuMetrics,
    rooms: FastMap<String, Room>,
    endpoints: FastMap<SessionId, Endpoint>,
    outputs: VecDeque<Output>,
    /// Packet arrival times become milliseconds since this instant.
    epoch: Instant,
    next_housekeeping: Instant,
    last_measure: Instant,
    /// The share of each subscriber's video its media thread sends while it is behind
    /// (1.0: all it shows; `shed_video`).
    video_share: f64,
    now: Instant,
    /// Sinks negotiated whose first packets wait until then (`sink_negotiated_from`).
    starts: Vec<(Instant, SinkKey)>,
}

impl Router {
    pub fn new(config: RouterConfig, metrics: SfuMetrics, now: Instant) -> Self {
        Self {
            config,
            metrics,
            rooms: FastMap::default(),
            endpoints: FastMap::default(),
            outputs: VecDeque::new(),
            epoch: now,
            next_housekeeping: now + HOUSEKEEPING,
            last_measure: now,
            video_share: 1.0,
            now,
            starts: Vec::new(),
        }
    }

    pub fn handle_input(&mut self, input: Input, now: Instant) {
        self.now = self.now.max(now);
        match input {
            Input::Packet { source, layer, rid, packet } => self.on_packet(source, layer, rid, packet),
            Input::Timeout => {
                let due: Vec<SinkKey> =
                    self.starts.iter().filter(|(at, _)| *at <= self.now).map(|(_, key)| *key).collect();
                if !due.is_empty() {
                    self.starts.retain(|(at, _)| *at > self.now);
                    for key in due {
                        self.start_sink(key);
                    }
                }
                if self.now >= self.next_housekeeping {
                    self.housekeeping();
                    self.next_housekeeping = self.now + HOUSEKEEPING;
                }
            }
            Input::Estimate { endpoint, bps } => {
                if let Some(e) = self.endpoints.get_mut(&endpoint) {
                    // A fall of a fifth or more is fitted now, not at the next round.
                    let fell = e.estimate.is_some_and(|before| bps < before - before / 5);
                    e.estimate = Some(bps);
                    if fell {
                        self.allocate_bandwidth();
                    }
                }
            }
            Input::KeyframeWanted { sink } => {
                let wanted = self
                    .endpoints
                    .get(&sink.0)
                    .and_then(|e| e.sinks.get(&sink.1))
                    .and_then(|s| Some((s.source?, s.current.or(s.target)?)));
                if let Some((source, layer)) = wanted {
                    self.request_keyframe(source, layer, self.now);
                }
            }
            Input::LayerKeyframeWanted { sink, layer } => {
                let source =
                    self.endpoints.get(&sink.0).and_then(|e| e.sinks.get(&sink.1)).and_then(|s| s.source);
                if let Some(source) = source {
                    self.request_keyframe(source, layer, self.now);
                }
            }
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Whether the next `Input::Timeout` runs housekeeping (not only held sink starts).
    pub fn housekeeping_due(&self, now: Instant) -> bool {
        now >= self.next_housekeeping
    }

    /// When the router next wants `Input::Timeout`.
    pub fn poll_timeout(&self) -> Instant {
        self.starts.iter().map(|(at, _)| *at).fold(self.next_housekeeping, Instant::min)
    }

    fn emit(&mut self, to: SessionId, event: SessionEvent) {
        self.outputs.push_back(Output::Event { to, event });
    }

    /// The packet path: one packet from a source to each sink that carries it.
    fn on_packet(&mut self, key: SourceKey, layer: u8, rid: Option<Rid>, packet: SourcePacket) {
        let now = packet.arrival;
        let Some(owner) = self.endpoints.get(&key.0) else { return };
        let Some(room) = self.rooms.get_mut(&owner.room) else { return };
        let room_size = room.participants();
        let Room { sources, speakers, audio, .. } = room;
        let Some(source) = sources.get_mut(&key) else { return };
        let resumed = !source.arriving(now).get(layer as usize).copied().unwrap_or(false);
        let Some(state) = source.layers.get_mut(layer as usize) else { return };
        if state.ssrc != Some(packet.ssrc) {
            state.ssrc = Some(packet.ssrc);
            state.rid = rid;
        }
        state.last_packet = Some(now);
        state.bytes += packet.payload.len() as u64;
        if source.format.is_none_or(|(pt, _)| pt != packet.pt) {
            let table = source.codecs.as_ref().unwrap_or(&owner.codecs);
            let Some(codec) = table.iter().find(|(pt, _)| *pt == packet.pt).map(|(_, c)| *c) else {
                return;
            };
            source.video_codec = codec.video_codec();
            source.format = Some((packet.pt, codec));
        }
        if source.held {
            // A host muted it; its owner has not unmuted it yet.
            self.metrics.held.inc();
            return;
        }
        let keyframe = source.video_codec.is_some_and(|c| starts_keyframe(c, &packet.payload));
        if keyframe {
            source.layers[layer as usize].keyframe_throttle.keyframe_received();
        }
        if source.cache_keyframes {
            let gop = &mut source.layers[layer as usize].gop;
            if resumed && !keyframe {
                gop.forget(); // what came before the pause is not this group's
            }
            gop.record(&packet, keyframe);
        }
        let video = source.track.kind == TrackKind::Video;
        if !video {
            let level = packet.audio_level.map(|l| l.unsigned_abs().min(127));
            if let Some(level) = level {
                speakers.record(key.0, level, now);
            }
            let verdict = audio.on_packet(key, level, packet.voice_activity, now, room_size);
            if !verdict.forward {
                self.metrics.audio_not_selected.inc();
                return;
            }
            if verdict.admitted.is_some() {
                let room = owner.room.clone();
                self.sync_room_audio(&room);
            }
        }
        if resumed && video {
            // A layer (re)started: sinks waiting for it switch at this very keyframe.
            self.retarget_layers(key, now);
        }
        self.forward_to_sinks(key, layer, keyframe, &packet);
    }

    fn forward_to_sinks(&mut self, key: SourceKey, layer: u8, keyframe: bool, packet: &SourcePacket) {
        let Router { rooms, endpoints, outputs, metrics, epoch, .. } = self;
        let Some(room) = endpoints.get(&key.0).and_then(|e| rooms.get(&e.room)) else { return };
        let Some(source) = room.sources.get(&key) else { return };
        let Some(format) = source.format else { return };
        let red_primary = if format.1.codec == Codec::Red {
            let Some(start) = rtp::red::primary_start(&packet.payload) else {
                metrics.not_forwarded.with_label_values(&["malformed_red"]).inc();
                tracing::debug!(
                    session = key.0,
                    "RED payload whose blocks run past its end; packet not forwarded"
                );
                return;
            };
            Some(start)
        } else {
            None
        };
        let arrived = Arrived {
            packet,
            layer,
            keyframe,
            format,
            video: source.track.kind == TrackKind::Video,
            vp8: source.video_codec == Some(rtp::VideoCodec::Vp8),
            arrival_ms: packet.arrival.saturating_duration_since(*epoch).as_millis() as u64,
            red_primary,
            unwrapped: Default::default(),
        };
        let mut wants_keyframe = false;
        let mut retarget = false;
        for &Fed { sink: sink_key, at } in &source.sinks {
            let Some(endpoint) = endpoints.get_mut(&sink_key.0) else { continue };
            let Some(sink) = endpoint.sinks.at_mut(at, &sink_key.1) else { continue };
            match forward::decide(sink, &arrived) {
                Decision::Send { packet, switched } => {
                    sink.sent = true;
                    if switched {
                        metrics.layer_switches.inc();
                    }
                    endpoint.sent_bytes += packet.payload.len() as u64 + RTP_OVERHEAD_BYTES;
                    if arrived.red_primary.is_some() {
                        match Arc::ptr_eq(&packet.payload, &arrived.packet.payload) {
                            true => metrics.red_passed.inc(),
                            false => metrics.red_unwrapped.inc(),
                        }
                    }
                    outputs.push_back(Output::Forward { sink: sink_key, at, packet });
                }
                Decision::Skip => {}
                Decision::WaitsForKeyframe => wants_keyframe = true,
                Decision::Retarget => retarget = true,
                Decision::NoCodec => {
                    metrics.not_forwarded.with_label_values(&["no_matching_codec"]).inc();
                    tracing::debug!(
                        subscriber = %endpoint.participant_id,
                        codec = ?format.1.codec,
                        "subscriber negotiated no payload type for this codec; packet not forwarded"
                    );
                }
            }
        }
        let now = packet.arrival;
        if wants_keyframe {
            self.request_keyframe(key, layer, now);
        }
        if retarget {
            self.retarget_layers(key, now);
        }
    }

    /// Start a sink that waits for its first keyframe from its source's cached group of
    /// pictures (a relay sink: every layer's), then live; false when there is none.
    fn start_from_cache(&mut self, sink_key: SinkKey) -> bool {
        let Router { rooms, endpoints, outputs, metrics, epoch, now, .. } = self;
        let Some(Endpoint { room, sinks, sent_bytes, .. }) = endpoints.get_mut(&sink_key.0) else {
            return false;
        };
        let Some(room) = rooms.get(room.as_str()) else { return false };
        let Some(at) = sinks.place(&sink_key.1) else { return false };
        let Some(sink) = sinks.at_mut(at, &sink_key.1) else { return false };
        // Only a sink that sent nothing of its source yet: one paused and started again
        // has numbered these packets already (the fast path refuses an index twice).
        let (Some(key), true, None, false) = (sink.source, sink.active, sink.current, sink.sent) else {
            return false;
        };
        let Some(source) = room.sources.get(&key).filter(|s| s.cache_keyframes) else { return false };
        let Some(format) = source.format else { return false };
        let layers: Vec<u8> = match (sink.strategy, sink.target) {
            (Strategy::Relay, _) => (0..select::MAX_LAYERS as u8).collect(),
            (_, Some(target)) => vec![target],
            (_, None) => return false,
        };
        let codec = source.video_codec;
        let arrival_ms = now.saturating_duration_since(*epoch).as_millis() as u64;
        let arriving = source.arriving(*now);
        // A relay link takes every layer's group, within what its datagram queue holds.
        let mut budget = RELAY_REPLAY_BYTES;
        let mut sent = false;
        for layer in layers {
            // A layer that stopped keeps a stale group: nobody starts from it.
            if !arriving.get(usize::from(layer)).copied().unwrap_or(false) {
                continue;
            }
            let Some(gop) = source.layers.get(usize::from(layer)).map(|l| &l.gop) else { continue };
            let Some(packets) = gop.packets() else { continue };
            if sink.strategy == Strategy::Relay {
                if gop.bytes() > budget {
                    continue;
                }
                budget -= gop.bytes();
            }
            for cached in packets {
                let arrived = Arrived {
                    packet: cached,
                    layer,
                    keyframe: codec.is_some_and(|c| starts_keyframe(c, &cached.payload)),
                    format,
                    video: true,
                    vp8: codec == Some(rtp::VideoCodec::Vp8),
                    // As if it came now: the sink's clock runs on into the live packets.
                    arrival_ms,
                    red_primary: None,
                    unwrapped: Default::default(),
                };
                if let Decision::Send { mut packet, .. } = forward::decide(sink, &arrived) {
                    sink.sent = true;
                    packet.arrival = *now;
                    *sent_bytes += packet.payload.len() as u64 + RTP_OVERHEAD_BYTES;
                    outputs.push_back(Output::Forward { sink: sink_key, at, packet });
                    sent = true;
                }
            }
        }
        let result = if sent { "hit" } else { "miss" };
        metrics.relay.keyframe_cache.with_label_values(&[result]).inc();
        sent
    }

    /// Ask for a keyframe of one layer of a source, at most once per throttle interval
    /// (a request within it is deferred to its end).
    fn request_keyframe(&mut self, key: SourceKey, layer: u8, now: Instant) {
        let Some(room) = self.endpoints.get(&key.0).and_then(|e| self.rooms.get_mut(&e.room)) else { return };
        let Some(state) = room.sources.get_mut(&key).and_then(|s| s.layers.get_mut(layer as usize)) else {
            return;
        };
        let Some(ssrc) = state.ssrc else { return };
        if state.keyframe_throttle.request(now) {
            self.outputs.push_back(Output::KeyframeRequest { source: key, ssrc });
        }
    }

    fn housekeeping(&mut self) {
        let now = self.now;
        self.announce_speakers();
        self.measure_rates();
        self.allocate_bandwidth();
        // Deferred keyframe requests whose throttle interval ended.
        let mut video = Vec::new();
        for room in self.rooms.values_mut() {
            let size = room.participants();
            room.audio.trim(now, size);
            for (key, source) in room.sources.iter_mut() {
                for state in source.layers.iter_mut() {
                    if state.keyframe_throttle.poll(now)
                        && let Some(ssrc) = state.ssrc
                    {
                        self.outputs.push_back(Output::KeyframeRequest { source: *key, ssrc });
                    }
                }
                if source.track.kind == TrackKind::Video {
                    video.push(*key);
                }
            }
        }
        // Layers that stopped or started arriving, and layers nobody takes.
        for key in video {
            self.retarget_layers(key, now);
            self.pause_unneeded_layers(key, now);
        }
    }

    /// Tell every room whose dominant speaker changed.
    fn announce_speakers(&mut self) {
        let now = self.now;
        for room in self.rooms.values_mut() {
            let Some(speaker) = room.speakers.poll(now) else { continue };
            let Some(member) = room.members.iter().find(|m| m.session == speaker) else { continue };
            room.dominant = Some(speaker);
            let participant_id = member.participant_id.clone();
            for m in room.members.iter().filter(|m| !m.hidden) {
                let event = SessionEvent::ActiveSpeaker { participant_id: participant_id.clone() };
                self.outputs.push_back(Output::Event { to: m.session, event });
            }
        }
    }
}

#[cfg(test)]
mod tests;
