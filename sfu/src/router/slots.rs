//! Which sink carries which source: audio sinks follow the room's top-N selection, video
//! sinks what the client shows. A free sink is reused; with none free the source waits for
//! a new one in the endpoint's next offer (`slots_to_add`, then `slots_added`).

use std::time::Instant;

use str0m::media::Mid;

use super::codec::PayloadTypes;
use super::select::{MAX_LAYERS, Quality};
use super::sink::Sink;
use super::source::{Fed, Source, SourceKey};
use super::{Endpoint, Output, Router, SinkKey};
use crate::api::{SessionEvent, SessionId, ShownTrack, SlotInfo, TrackKind};
use crate::fasthash::FastMap;

/// A source that needs a new sink in an endpoint's next offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSlot {
    pub source: SourceKey,
    pub kind: TrackKind,
    /// Who publishes it and its track id (the new m-line's msid).
    pub participant_id: String,
    pub track_id: String,
}

impl Router {
    /// The sources `id` needs new sinks for, to put in one offer. Call `slots_added` with
    /// the mids the offer gave them.
    pub fn slots_to_add(&mut self, id: SessionId) -> Vec<NewSlot> {
        let Some(endpoint) = self.endpoints.get_mut(&id) else { return Vec::new() };
        if !endpoint.negotiated {
            return Vec::new();
        }
        let Some(room) = self.rooms.get(&endpoint.room) else { return Vec::new() };
        let mut added = Vec::new();
        for key in std::mem::take(&mut endpoint.to_add) {
            if endpoint.sink_of.contains_key(&key) || added.iter().any(|a: &NewSlot| a.source == key) {
                continue;
            }
            let Some(source) = room.sources.get(&key) else { continue };
            let wanted = match source.track.kind {
                TrackKind::Audio => room.audio.is_selected(key),
                TrackKind::Video => wanted_quality(&endpoint.view, &source.track.id).is_some(),
            };
            if wanted {
                added.push(NewSlot {
                    source: key,
                    kind: source.track.kind,
                    participant_id: source.owner_participant.clone(),
                    track_id: source.track.id.clone(),
                });
            }
        }
        added
    }

    /// Sources `slots_to_add` gave that found no place this time: they wait for the next.
    pub fn add_later(&mut self, id: SessionId, sources: Vec<SourceKey>) {
        if let Some(endpoint) = self.endpoints.get_mut(&id) {
            for key in sources {
                if !endpoint.to_add.contains(&key) {
                    endpoint.to_add.push(key);
                }
            }
        }
    }

    /// The offer for `slots_to_add` gave these sources these mids: their sinks exist now
    /// (active once `sink_negotiated`). Returns what the endpoint is told they carry.
    pub fn slots_added(&mut self, id: SessionId, added: &[(Mid, SourceKey)], now: Instant) -> Vec<SlotInfo> {
        self.now = self.now.max(now);
        let Some(endpoint) = self.endpoints.get_mut(&id) else { return Vec::new() };
        let Some(room) = self.rooms.get_mut(&endpoint.room) else { return Vec::new() };
        let mut told = Vec::new();
        for (mid, key) in added {
            let Some(source) = room.sources.get_mut(key) else { continue };
            let kind = source.track.kind;
            let mut sink = Sink::new(
                kind,
                if endpoint.relay { super::Strategy::Relay } else { Sink::strategy_for(kind) },
            );
            sink.assign(Some(*key));
            sink.wanted = match kind {
                TrackKind::Audio => 0,
                TrackKind::Video => {
                    wanted_quality(&endpoint.view, &source.track.id).unwrap_or(MAX_LAYERS as u8 - 1)
                }
            };
            sink.order = view_order(&endpoint.view, &source.track.id);
            if kind == TrackKind::Video {
                sink.target = sink.choose_target(source.arriving(now));
            }
            endpoint.sink_of.insert(*key, *mid);
            endpoint.sinks.insert(*mid, sink);
            if let Some(at) = endpoint.sinks.place(mid) {
                source.sinks.push(Fed { sink: (id, *mid), at });
            }
            told.push(SlotInfo {
                mid: mid.to_string(),
                track: Some((source.owner_participant.clone(), source.track.id.clone())),
            });
        }
        told
    }

    /// The peer negotiated sink `mid` with these payload types (again after every
    /// renegotiation): it forwards from its first negotiation on, starting with a keyframe
    /// of what it carries.
    pub fn sink_negotiated(&mut self, id: SessionId, mid: Mid, payload_types: PayloadTypes, now: Instant) {
        self.sink_negotiated_from(id, mid, payload_types, now, now);
    }

    /// `sink_negotiated`, with the sink's first packets held until `start_at` (just after
    /// the peer's DTLS came up); `Input::Timeout` at `poll_timeout` starts it then.
    pub fn sink_negotiated_from(
        &mut self,
        id: SessionId,
        mid: Mid,
        payload_types: PayloadTypes,
        start_at: Instant,
        now: Instant,
    ) {
        self.now = self.now.max(now);
        let Some(sink) = self.endpoints.get_mut(&id).and_then(|e| e.sinks.get_mut(&mid)) else { return };
        sink.set_payload_types(payload_types);
        if sink.active || self.starts.iter().any(|(_, key)| *key == (id, mid)) {
            return;
        }
        if start_at > self.now {
            self.starts.push((start_at, (id, mid)));
            return;
        }
        self.start_sink((id, mid));
    }

    /// A negotiated sink goes live: from the cached keyframe, or waiting for a new one.
    pub(super) fn start_sink(&mut self, (id, mid): SinkKey) {
        let now = self.now;
        let Some(sink) = self.endpoints.get_mut(&id).and_then(|e| e.sinks.get_mut(&mid)) else { return };
        if std::mem::replace(&mut sink.active, true) {
            return;
        }
        if let (Some(key), Some(layer)) = (sink.source, sink.target)
            && !self.start_from_cache((id, mid))
        {
            self.request_keyframe(key, layer, now);
        }
    }

    /// Give `id` a sink for each selected audio source of its room (top-N in large rooms),
    /// reusing sinks of sources no longer selected.
    pub(super) fn sync_audio_slots(&mut self, id: SessionId) {
        let Some(endpoint) = self.endpoints.get_mut(&id) else { return };
        if !endpoint.can_subscribe || !endpoint.negotiated || endpoint.relay {
            return;
        }
        let Some(room) = self.rooms.get_mut(&endpoint.room) else { return };
        let desired: Vec<SourceKey> =
            room.audio.selected().filter(|k| k.0 != id && room.sources.contains_key(k)).collect();
        let mut changes = Vec::new();
        let mut offer = false;
        for key in desired {
            if endpoint.sink_of.contains_key(&key) {
                continue;
            }
            // A sink whose source is no longer selected is free.
            let free = endpoint
                .sinks
                .iter()
                .filter(|(_, sink)| sink.kind == TrackKind::Audio)
                .find(|(_, sink)| sink.source.is_none_or(|k| !room.audio.is_selected(k)))
                .map(|(mid, _)| *mid);
            offer |= free.is_none() && !endpoint.to_add.contains(&key);
            place_source(endpoint, &mut room.sources, id, key, free, &mut changes);
        }
        if offer {
            self.outputs.push_back(Output::OfferNeeded(id));
        }
        if !changes.is_empty() {
            self.emit(id, SessionEvent::Slots(changes));
        }
    }

    /// Make `id`'s video sinks carry what it shows: free the sinks of sources it stopped
    /// showing, reuse them for new ones, ask for new sinks when there are none.
    pub(super) fn sync_video_slots(&mut self, id: SessionId) {
        let now = self.now;
        let Some(endpoint) = self.endpoints.get_mut(&id) else { return };
        if !endpoint.can_subscribe || !endpoint.negotiated || endpoint.relay {
            return;
        }
        let Some(room) = self.rooms.get_mut(&endpoint.room) else { return };
        let mut desired: Vec<(SourceKey, Quality)> = room
            .sources
            .iter()
            .filter(|(key, s)| key.0 != id && s.track.kind == TrackKind::Video)
            .filter_map(|(key, s)| wanted_quality(&endpoint.view, &s.track.id).map(|q| (*key, q)))
            .collect();
        desired.sort_unstable_by_key(|(key, _)| *key);
        let mut changes = Vec::new();
        let mut keyframes = Vec::new();
        let mut resume = Vec::new();
        let mut offer = false;
        // Free the sinks of sources no longer shown.
        let stale: Vec<Mid> = endpoint
            .sinks
            .iter()
            .filter(|(_, sink)| sink.kind == TrackKind::Video)
            .filter(|(_, sink)| sink.source.is_some_and(|k| !desired.iter().any(|(d, _)| *d == k)))
            .map(|(mid, _)| *mid)
            .collect();
        for mid in stale {
            reassign_sink(endpoint, &mut room.sources, id, mid, None);
            changes.push(slot_info(&room.sources, mid, None));
        }
        for (key, quality) in desired {
            let mid = match endpoint.sink_of.get(&key) {
                Some(mid) => *mid,
                None => {
                    let free = endpoint
                        .sinks
                        .iter()
                        .filter(|(_, sink)| sink.kind == TrackKind::Video && sink.source.is_none())
                        .map(|(mid, _)| *mid)
                        .min();
                    offer |= free.is_none() && !endpoint.to_add.contains(&key);
                    match place_source(endpoint, &mut room.sources, id, key, free, &mut changes) {
                        Some(mid) => mid,
                        None => continue,
                    }
                }
            };
            let Some(sink) = endpoint.sinks.get_mut(&mid) else { continue };
            let Some(source) = room.sources.get(&key) else { continue };
            if quality > sink.wanted && source.layers.iter().any(|l| l.paused) && !resume.contains(&key) {
                resume.push(key);
            }
            sink.wanted = quality;
            sink.order = view_order(&endpoint.view, &source.track.id);
            let target = sink.choose_target(source.arriving(now));
            if target != sink.target {
                sink.target = target;
                if let Some(layer) = target
                    && sink.current != target
                    && sink.active
                {
                    keyframes.push((key, layer, mid, sink.current.is_none()));
                }
            }
        }
        if offer {
            self.outputs.push_back(Output::OfferNeeded(id));
        }
        if !changes.is_empty() {
            self.emit(id, SessionEvent::Slots(changes));
        }
        for (key, layer, mid, starting) in keyframes {
            // A sink that shows nothing yet starts from the cached keyframe if there is one.
            if !(starting && self.start_from_cache((id, mid))) {
                self.request_keyframe(key, layer, now);
            }
        }
        // A wanted layer that is paused at its publisher resumes now, not at housekeeping.
        for key in resume {
            self.pause_unneeded_layers(key, now);
        }
    }

    /// Sync the audio sinks of every member of a room (its selection changed).
    pub(super) fn sync_room_audio(&mut self, room: &str) {
        let Some(members) =
            self.rooms.get(room).map(|r| r.members.iter().map(|m| m.session).collect::<Vec<_>>())
        else {
            return;
        };
        for id in members {
            self.sync_audio_slots(id);
        }
    }
}

/// A track's place in the client's list of shown tracks (auto mode: all equal).
fn view_order(view: &Option<Vec<ShownTrack>>, track_id: &str) -> usize {
    view.as_ref().and_then(|v| v.iter().position(|t| t.track_id == track_id)).unwrap_or(usize::MAX)
}

fn wanted_quality(view: &Option<Vec<ShownTrack>>, track_id: &str) -> Option<Quality> {
    match view {
        None => Some(MAX_LAYERS as u8 - 1),
        Some(shown) => shown.iter().find(|t| t.track_id == track_id).map(|t| t.quality),
    }
}

/// Point one of an endpoint's sinks at another source (or none), keeping the sources'
/// lists of sinks and the endpoint's source-to-sink map in step.
fn reassign_sink(
    endpoint: &mut Endpoint,
    sources: &mut FastMap<SourceKey, Source>,
    id: SessionId,
    mid: Mid,
    key: Option<SourceKey>,
) {
    let Some(sink) = endpoint.sinks.get_mut(&mid) else { return };
    if let Some(old) = sink.source {
        if let Some(s) = sources.get_mut(&old) {
            s.sinks.retain(|f| f.sink != (id, mid));
        }
        endpoint.sink_of.remove(&old);
    }
    sink.assign(key);
    if let Some(key) = key {
        if let Some(s) = sources.get_mut(&key)
            && let Some(at) = endpoint.sinks.place(&mid)
        {
            s.sinks.push(Fed { sink: (id, mid), at });
        }
        endpoint.sink_of.insert(key, mid);
    }
}

/// Put source `key` on the free sink `free`, or, with none free, keep it for a new sink
/// in the endpoint's next offer (None: an offer is needed).
fn place_source(
    endpoint: &mut Endpoint,
    sources: &mut FastMap<SourceKey, Source>,
    id: SessionId,
    key: SourceKey,
    free: Option<Mid>,
    changes: &mut Vec<SlotInfo>,
) -> Option<Mid> {
    let Some(mid) = free else {
        if !endpoint.to_add.contains(&key) {
            endpoint.to_add.push(key);
        }
        return None;
    };
    reassign_sink(endpoint, sources, id, mid, Some(key));
    changes.push(slot_info(sources, mid, Some(key)));
    Some(mid)
}

fn slot_info(sources: &FastMap<SourceKey, Source>, mid: Mid, key: Option<SourceKey>) -> SlotInfo {
    let track = key.and_then(|k| sources.get(&k)).map(|s| (s.owner_participant.clone(), s.track.id.clone()));
    SlotInfo { mid: mid.to_string(), track }
}
