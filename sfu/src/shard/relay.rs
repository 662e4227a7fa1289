//! Relay endpoints in a shard (ADR 0012): a link that feeds a child node this room's
//! sources, or a link that brings a parent node's tracks into this room. The router sees
//! both as hidden endpoints; this file turns what it forwards into the link's datagrams,
//! and what the link brings into sources and packets.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use str0m::format::Codec;
use str0m::media::Mid;
use str0m::rtp::ExtensionValues;
use tokio::sync::oneshot;
use tracing::{debug, info};

use super::Shard;
use crate::api::{
    JoinRequest, LeaveReason, MediaError, SessionEvent, SessionId, TrackInfo, TrackKind, TrackSource,
};
use crate::fasthash::FastMap;
use crate::relay::LinkOut;
use crate::relay::repair::Repair;
use crate::relay::wire::{
    Control, MAX_TRACKS_PER_ROOM, RelayPacket, WireCodec, WireTrack, flow_id, split_flow,
};
use crate::router::{self, CodecKey, Forwarded, PayloadTypes, RelayedTrack, SinkKey, SourcePacket};

/// Packets kept per flow to answer a child's NACKs (about 4 s of a 2.5 Mbit/s layer, and
/// a start from the keyframe cache).
const HISTORY_PER_FLOW: usize = 1024;
/// Packets one link may send again per housekeeping round (200 ms): 5,000 a second, a
/// fifth of what a class of three 2.5 Mbit/s layers sends.
const RESENDS_PER_ROUND: u32 = 1000;

/// A relay link's end in this shard.
pub(super) struct RelayEndpoint {
    pub room: String,
    pub link: LinkOut,
    /// This room's slot on the link (the high bits of its flow ids).
    pub slot: u32,
    pub side: Side,
}

pub(super) enum Side {
    /// Sends this room's sources to a child node.
    Feeds {
        tracks: FastMap<Mid, u32>,
        next_track: u32,
        history: FastMap<u64, VecDeque<(u16, Bytes)>>,
        /// Packets it may still send again before the next housekeeping round (a child
        /// that asks for everything must not multiply what the link carries).
        resend_budget: u32,
    },
    /// Brings a parent node's tracks into this room.
    Brings {
        mids: FastMap<u32, Mid>,
        /// The simulcast layer of each incoming SSRC (keyframe requests name SSRCs).
        layers: FastMap<u32, u8>,
        /// Loss repair: what each flow skipped, asked for again until it comes.
        repair: Repair,
        /// Since when nobody in the room takes media (the link lets go after a while).
        idle_since: Option<Instant>,
    },
}

/// What a relay link hands the shard that holds its room.
pub(crate) enum RelayInput {
    /// A join: `brings` is the parent's tracks for a link that brings a room in, None for a
    /// link that feeds a child.
    Join {
        room: String,
        node: String,
        link: LinkOut,
        slot: u32,
        brings: Option<Vec<WireTrack>>,
        reply: oneshot::Sender<Result<SessionId, MediaError>>,
    },
    Track {
        endpoint: SessionId,
        track: WireTrack,
    },
    Untrack {
        endpoint: SessionId,
        track: u32,
    },
    /// Media from the parent, in the order the link received it.
    Packets {
        endpoint: SessionId,
        packets: Vec<(RelayPacket, Instant)>,
    },
    Keyframe {
        endpoint: SessionId,
        flow: u64,
    },
    /// The child can take a room's flows (all, or one track's) now.
    Ready {
        endpoint: SessionId,
        tracks: Vec<u32>,
    },
    Nack {
        endpoint: SessionId,
        flow: u64,
        seqs: Vec<u16>,
    },
}

impl Shard {
    pub(super) fn handle_relay(&mut self, input: RelayInput) {
        match input {
            RelayInput::Join { room, node, link, slot, brings, reply } => {
                let _ = reply.send(self.relay_join(room, node, link, slot, brings));
            }
            RelayInput::Track { endpoint, track } => self.relay_track(endpoint, track),
            RelayInput::Untrack { endpoint, track } => {
                let mid = match self.relays.get_mut(&endpoint).map(|r| &mut r.side) {
                    Some(Side::Brings { mids, .. }) => mids.remove(&track),
                    _ => None,
                };
                if let Some(mid) = mid {
                    self.router.unpublish(endpoint, mid);
                    self.carry_out();
                }
            }
            RelayInput::Packets { endpoint, packets } => {
                // Routed first, carried out per subscriber after (`carry_out_by_sink`).
                for (packet, at) in packets {
                    self.relay_packet(endpoint, packet, at);
                }
                self.carry_out_by_sink();
                self.send_engine_written();
            }
            RelayInput::Keyframe { endpoint, flow } => {
                let (_, track, layer) = split_flow(flow);
                let mid = match self.relays.get(&endpoint).map(|r| &r.side) {
                    Some(Side::Feeds { tracks, .. }) => {
                        tracks.iter().find(|(_, t)| **t == track).map(|(m, _)| *m)
                    }
                    _ => None,
                };
                if let Some(mid) = mid {
                    self.route(router::Input::LayerKeyframeWanted { sink: (endpoint, mid), layer });
                }
            }
            RelayInput::Nack { endpoint, flow, seqs } => self.relay_resend(endpoint, flow, &seqs),
            RelayInput::Ready { endpoint, tracks: ready } => {
                let mids: Vec<Mid> = match self.relays.get(&endpoint).map(|r| &r.side) {
                    Some(Side::Feeds { tracks, .. }) => {
                        tracks.iter().filter(|(_, t)| ready.contains(t)).map(|(m, _)| *m).collect()
                    }
                    _ => Vec::new(),
                };
                let now = Instant::now();
                for mid in mids {
                    // Live from its cached keyframe on (or from a fresh one).
                    self.router.sink_negotiated(endpoint, mid, Vec::new(), now);
                }
                self.carry_out();
            }
        }
    }

    fn relay_join(
        &mut self,
        room: String,
        node: String,
        link: LinkOut,
        slot: u32,
        brings: Option<Vec<WireTrack>>,
    ) -> Result<SessionId, MediaError> {
        let now = Instant::now();
        let id = self.new_session_id();
        let name = format!("relay:{node}");
        let request = JoinRequest {
            room: room.clone(),
            participant_id: name.clone(),
            identity: name.clone(),
            name,
            can_publish: brings.is_some(),
            can_subscribe: brings.is_none(),
            replaces: false,
            continues: false,
        };
        self.router.join(id, &request, true, now)?;
        self.room_placement.insert(room.clone(), self.index);
        let direction = if brings.is_some() { "in" } else { "out" };
        self.metrics.relay.rooms.with_label_values(&[direction]).inc();
        info!(%room, node = %node, direction, "relay link joined the room");
        match brings {
            Some(tracks) => {
                let side = Side::Brings {
                    mids: FastMap::default(),
                    layers: FastMap::default(),
                    repair: Repair::default(),
                    idle_since: None,
                };
                self.relays.insert(id, RelayEndpoint { room, link, slot, side });
                for track in tracks {
                    self.relay_track(id, track);
                }
            }
            None => {
                let side = Side::Feeds {
                    tracks: FastMap::default(),
                    next_track: 0,
                    history: FastMap::default(),
                    resend_budget: RESENDS_PER_ROUND,
                };
                self.relays.insert(id, RelayEndpoint { room: room.clone(), link: link.clone(), slot, side });
                let tracks: Vec<WireTrack> = self
                    .router
                    .room_sources(id)
                    .into_iter()
                    .filter_map(|key| self.feed_source(id, key))
                    .collect();
                link.send(Control::Room { room, slot, tracks });
            }
        }
        self.carry_out();
        Ok(id)
    }

    /// A link that feeds a child carries `key` from now on; what to announce of it.
    pub(super) fn feed_source(&mut self, id: SessionId, key: router::SourceKey) -> Option<WireTrack> {
        let relayed = self.router.relayed_track(key)?;
        let Some(Side::Feeds { tracks, next_track, .. }) = self.relays.get_mut(&id).map(|r| &mut r.side)
        else {
            return None;
        };
        if tracks.len() >= MAX_TRACKS_PER_ROOM as usize {
            self.metrics.relay.dropped.with_label_values(&["too_many_tracks"]).inc();
            return None;
        }
        // Track numbers go round; one still live is skipped.
        while tracks.values().any(|t| t == next_track) {
            *next_track = (*next_track + 1) % MAX_TRACKS_PER_ROOM;
        }
        let track = *next_track;
        *next_track = (*next_track + 1) % MAX_TRACKS_PER_ROOM;
        let mid = Mid::from(format!("r{track}").as_str());
        tracks.insert(mid, track);
        // The sink goes live when the child says it routes the track (`Ready`).
        self.router.slots_added(id, &[(mid, key)], Instant::now());
        Some(wire_track(track, &relayed))
    }

    /// The router's output for a relay endpoint; false when `to` is not one.
    pub(super) fn relay_event(&mut self, to: SessionId, event: &SessionEvent) -> bool {
        let Some(relay) = self.relays.get_mut(&to) else { return false };
        if let (SessionEvent::Slots(slots), Side::Feeds { tracks, history, .. }) = (event, &mut relay.side) {
            // A track that ended: the child forgets it, and so does the link's history.
            for slot in slots.iter().filter(|s| s.track.is_none()) {
                if let Some(track) = tracks.remove(&Mid::from(slot.mid.as_str())) {
                    relay.link.send(Control::Untrack { slot: relay.slot, track });
                    for layer in 0..4 {
                        history.remove(&flow_id(relay.slot, track, layer));
                    }
                }
            }
        }
        true
    }

    /// A packet the router forwards on a link to a child: one datagram, kept for NACKs.
    pub(super) fn relay_forward(&mut self, (id, mid): SinkKey, f: Forwarded) {
        let Some(relay) = self.relays.get_mut(&id) else { return };
        let Side::Feeds { tracks, history, .. } = &mut relay.side else { return };
        let Some(track) = tracks.get(&mid) else { return };
        let flow = flow_id(relay.slot, *track, f.layer);
        let packet = RelayPacket {
            flow,
            pt: f.pt,
            seq: f.seq as u16,
            timestamp: f.timestamp,
            marker: f.marker,
            ssrc: f.source_ssrc,
            audio_level: f.audio_level,
            payload: Bytes::new(),
        };
        let datagram = packet.encode_with(&f.payload);
        let kept = history.entry(flow).or_default();
        if kept.len() >= HISTORY_PER_FLOW {
            kept.pop_front();
        }
        kept.push_back((packet.seq, datagram.clone()));
        match relay.link.datagram(datagram) {
            Ok(()) => self.metrics.relay.packets.with_label_values(&["out"]).inc(),
            Err(reason) => self.metrics.relay.dropped.with_label_values(&[reason]).inc(),
        }
    }

    fn relay_resend(&mut self, id: SessionId, flow: u64, seqs: &[u16]) {
        let Some(relay) = self.relays.get_mut(&id) else { return };
        let Side::Feeds { history, resend_budget, .. } = &mut relay.side else { return };
        self.metrics.relay.nacked.inc_by(seqs.len() as u64);
        let Some(kept) = history.get(&flow) else { return };
        let Some(newest) = kept.back().map(|(s, _)| *s) else { return };
        for seq in seqs {
            if *resend_budget == 0 {
                self.metrics.relay.dropped.with_label_values(&["resend_budget"]).inc();
                return;
            }
            // Packets of a flow are kept in sequence: the one asked for is found by its
            // distance from the newest.
            let back = usize::from(newest.wrapping_sub(*seq));
            let Some((s, datagram)) = kept.len().checked_sub(back + 1).and_then(|i| kept.get(i)) else {
                continue;
            };
            if s == seq && relay.link.datagram(datagram.clone()).is_ok() {
                *resend_budget -= 1;
                self.metrics.relay.retransmitted.inc();
            }
        }
    }

    /// A track a parent announced: a source of this room from now on.
    fn relay_track(&mut self, id: SessionId, wire: WireTrack) {
        let Some(relayed) = relayed_from_wire(&wire) else {
            self.metrics.relay.dropped.with_label_values(&["bad_track"]).inc();
            debug!(track = %wire.id, kind = %wire.kind, "relay track with an unknown kind or codec");
            return;
        };
        let Some(relay) = self.relays.get_mut(&id) else { return };
        let slot = relay.slot;
        let link = relay.link.clone();
        let Side::Brings { mids, .. } = &mut relay.side else { return };
        if wire.track >= MAX_TRACKS_PER_ROOM {
            return;
        }
        if let std::collections::hash_map::Entry::Vacant(e) = mids.entry(wire.track) {
            let mid = Mid::from(format!("r{}", wire.track).as_str());
            e.insert(mid);
            self.router.publish_relayed(id, mid, relayed, Instant::now());
            self.carry_out();
        }
        // Told from here, once the track is known here: its media (the cached keyframe
        // first) follows at once.
        link.send(Control::Ready { slot, tracks: vec![wire.track] });
    }

    fn relay_packet(&mut self, id: SessionId, p: RelayPacket, at: Instant) {
        let Some(relay) = self.relays.get_mut(&id) else { return };
        let slot = relay.slot;
        let Side::Brings { mids, layers, repair, .. } = &mut relay.side else { return };
        let (_, track, layer) = split_flow(p.flow);
        let Some(mid) = mids.get(&track).copied() else {
            self.metrics.relay.dropped.with_label_values(&["unknown_flow"]).inc();
            return;
        };
        self.metrics.relay.packets.with_label_values(&["in"]).inc();
        layers.insert(p.ssrc, layer);
        // Loss on the link: ask the parent again for what a jump skipped (and, from
        // housekeeping, again while it does not come).
        let seqs = repair.arrived(p.flow, p.seq, at);
        if !seqs.is_empty() {
            relay.link.send(Control::Nack { flow: flow_id(slot, track, layer), seqs });
        }
        let packet = SourcePacket {
            ssrc: p.ssrc,
            seq: p.seq,
            timestamp: p.timestamp,
            marker: p.marker,
            pt: p.pt,
            payload: p.payload.as_ref().into(),
            audio_level: p.audio_level.map(|(l, _)| l),
            voice_activity: p.audio_level.map(|(_, v)| v),
            arrival: at,
        };
        self.routing_ext = ExtensionValues::default();
        // Carried out by the caller, for the whole batch.
        self.router.handle_input(
            router::Input::Packet { source: (id, mid), layer, rid: None, packet },
            Instant::now(),
        );
    }

    /// A keyframe request for a source a link brings goes up the link (the router has
    /// throttled it already); false when the source is not relayed.
    pub(super) fn relay_keyframe_request(&mut self, owner: SessionId, mid: Mid, ssrc: u32) -> bool {
        let Some(relay) = self.relays.get(&owner) else { return false };
        let Side::Brings { mids, layers, .. } = &relay.side else { return true };
        let track = mids.iter().find(|(_, m)| **m == mid).map(|(t, _)| *t);
        if let Some(track) = track {
            let layer = layers.get(&ssrc).copied().unwrap_or(0);
            relay.link.send(Control::Keyframe { flow: flow_id(relay.slot, track, layer) });
            self.metrics.keyframe_requests.with_label_values(&["relayed"]).inc();
        }
        true
    }

    /// Links that bring a room nobody here takes any more let go of it after the linger.
    pub(super) fn relay_housekeeping(&mut self, now: Instant) {
        let mut done = Vec::new();
        for (id, relay) in self.relays.iter_mut() {
            if let Side::Feeds { resend_budget, .. } = &mut relay.side {
                *resend_budget = RESENDS_PER_ROUND;
                continue;
            }
            let Side::Brings { idle_since, repair, .. } = &mut relay.side else { continue };
            for (flow, seqs) in repair.due(now) {
                relay.link.send(Control::Nack { flow, seqs });
            }
            if self.router.audience(*id) > 0 {
                *idle_since = None;
            } else if now.duration_since(*idle_since.get_or_insert(now)) >= self.config.relay_linger {
                done.push(*id);
            }
        }
        for id in done {
            self.end_session(id, LeaveReason::Left);
        }
        self.viewers.replace_shard(self.index, self.router.viewers_by_room());
    }

    /// A relay endpoint leaves its room; a link that brought the room in tells its parent.
    pub(super) fn end_relay(&mut self, id: SessionId, reason: LeaveReason) -> bool {
        let Some(relay) = self.relays.remove(&id) else { return false };
        let direction = match relay.side {
            Side::Brings { .. } => {
                relay.link.release(&relay.room, id);
                "in"
            }
            Side::Feeds { .. } => "out",
        };
        self.metrics.relay.rooms.with_label_values(&[direction]).dec();
        info!(room = %relay.room, direction, reason = reason.as_str(), "relay link left the room");
        let departure = self.router.leave(id, reason);
        self.carry_out();
        if departure.room_closed {
            self.room_placement.remove_if(&relay.room, |_, shard| *shard == self.index);
        }
        true
    }
}

fn wire_track(track: u32, relayed: &RelayedTrack) -> WireTrack {
    WireTrack {
        track,
        id: relayed.track.id.clone(),
        kind: relayed.track.kind.as_str().into(),
        source: relayed.track.source.as_str().into(),
        muted: relayed.track.muted,
        participant: relayed.participant.clone(),
        name: relayed.participant.clone(),
        codecs: relayed.codecs.iter().filter_map(|(pt, c)| wire_codec(*pt, c)).collect(),
    }
}

fn wire_codec(pt: u8, c: &CodecKey) -> Option<WireCodec> {
    let name = match c.codec {
        Codec::Opus => "opus",
        Codec::Red => "red",
        Codec::Vp8 => "vp8",
        Codec::Vp9 => "vp9",
        Codec::H264 => "h264",
        Codec::Av1 => "av1",
        _ => return None,
    };
    let (packetization_mode, profile) = c.h264.unwrap_or((None, None));
    Some(WireCodec { pt, name: name.into(), clock_rate: c.clock_rate, packetization_mode, profile })
}

fn relayed_from_wire(w: &WireTrack) -> Option<RelayedTrack> {
    let kind = match w.kind.as_str() {
        "audio" => TrackKind::Audio,
        "video" => TrackKind::Video,
        _ => return None,
    };
    let source = TrackSource::parse(&w.source).unwrap_or(match kind {
        TrackKind::Audio => TrackSource::Microphone,
        TrackKind::Video => TrackSource::Camera,
    });
    let codecs: PayloadTypes = w
        .codecs
        .iter()
        .filter_map(|c| {
            let codec = match c.name.as_str() {
                "opus" => Codec::Opus,
                "red" => Codec::Red,
                "vp8" => Codec::Vp8,
                "vp9" => Codec::Vp9,
                "h264" => Codec::H264,
                "av1" => Codec::Av1,
                _ => return None,
            };
            let h264 = (codec == Codec::H264).then_some((c.packetization_mode, c.profile));
            Some((c.pt, CodecKey { codec, clock_rate: c.clock_rate, h264 }))
        })
        .collect();
    if codecs.is_empty() || w.id.len() > 64 || w.participant.len() > 128 {
        return None;
    }
    let track = TrackInfo { id: w.id.clone(), kind, source, muted: w.muted };
    Some(RelayedTrack { track, participant: w.participant.clone(), codecs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_track_survives_the_wire() {
        let vp8 = CodecKey { codec: Codec::Vp8, clock_rate: 90_000, h264: None };
        let h264 = CodecKey { codec: Codec::H264, clock_rate: 90_000, h264: Some((Some(1), Some(0x42))) };
        let relayed = RelayedTrack {
            track: TrackInfo {
                id: "TR_x".into(),
                kind: TrackKind::Video,
                source: TrackSource::Screen,
                muted: false,
            },
            participant: "PA_teacher".into(),
            codecs: vec![(96, vp8), (102, h264)],
        };
        let back = relayed_from_wire(&wire_track(4, &relayed)).expect("parses");
        assert_eq!(back.track, relayed.track);
        assert_eq!(back.participant, relayed.participant);
        assert_eq!(back.codecs, relayed.codecs);
        let opus = CodecKey { codec: Codec::Opus, clock_rate: 48_000, h264: None };
        let microphone = RelayedTrack {
            track: TrackInfo {
                kind: TrackKind::Audio,
                source: TrackSource::Microphone,
                ..relayed.track.clone()
            },
            codecs: vec![(111, opus), (63, CodecKey::opus_red())],
            ..relayed
        };
        let back = relayed_from_wire(&wire_track(5, &microphone)).expect("parses");
        assert_eq!(back.codecs, microphone.codecs, "RED crosses as a format of its own");
    }

    #[test]
    fn a_track_with_nothing_playable_is_refused() {
        let mut w = WireTrack {
            track: 0,
            id: "t".into(),
            kind: "video".into(),
            source: "camera".into(),
            muted: false,
            participant: "p".into(),
            name: "p".into(),
            codecs: vec![WireCodec {
                pt: 96,
                name: "theora".into(),
                clock_rate: 90_000,
                packetization_mode: None,
                profile: None,
            }],
        };
        assert!(relayed_from_wire(&w).is_none());
        w.kind = "data".into();
        assert!(relayed_from_wire(&w).is_none());
    }
}
