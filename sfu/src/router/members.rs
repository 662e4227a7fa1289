//! Membership: endpoints joining and leaving rooms, publishing and unpublishing sources,
//! muting them; and who is told what about it.

use std::time::Instant;

use str0m::media::Mid;

use super::room::{Member, Room};
use super::source::{Fed, Source, SourceKey};
use super::{Endpoint, Router};
use crate::api::{
    JoinRequest, LeaveReason, MediaError, ParticipantInfo, SessionEvent, SessionId, ShownTrack, SlotInfo,
    TrackInfo, TrackKind,
};
use crate::fasthash::FastMap;
use crate::placed::PlacedMap;

/// What a departure left behind.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Departure {
    /// The room it left is empty now and gone.
    pub room_closed: bool,
}

impl Router {
    /// Admit `id` to its room (created on first join). A relay link joins hidden: nobody
    /// is told, and it counts toward no limit. Returns everyone already there.
    pub fn join(
        &mut self,
        id: SessionId,
        request: &JoinRequest,
        relay: bool,
        now: Instant,
    ) -> Result<Vec<ParticipantInfo>, MediaError> {
        self.now = self.now.max(now);
        // A meeting is limited by how many may publish; a class's audience, who only
        // watch, by a limit of its own.
        let viewer = !request.can_publish;
        let limit =
            if viewer { self.config.max_viewers_per_room } else { self.config.max_participants_per_room };
        if let Some(room) = self.rooms.get(&request.room)
            && !relay
            && room.counted(viewer) >= limit
        {
            return Err(MediaError::RoomFull(limit));
        }
        let audio = self.config.audio.clone();
        let room = self.rooms.entry(request.room.clone()).or_insert_with(|| {
            self.metrics.rooms.inc();
            Room::new(audio, now)
        });
        let mut others: Vec<ParticipantInfo> =
            room.members.iter().filter(|m| !m.hidden).map(|m| room.participant_info(m)).collect();
        others.extend(room.relayed_publishers());
        let member = Member {
            session: id,
            participant_id: request.participant_id.clone(),
            identity: request.identity.clone(),
            name: request.name.clone(),
            hidden: relay,
            viewer,
        };
        let me = room.participant_info(&member);
        let dominant = room
            .dominant
            .and_then(|d| room.members.iter().find(|m| m.session == d))
            .map(|m| m.participant_id.clone());
        room.members.push(member);
        let told: Vec<SessionId> =
            if relay || request.continues { Vec::new() } else { room.others(id).collect() };
        for other in told {
            self.emit(other, SessionEvent::ParticipantJoined(me.clone()));
        }
        self.endpoints.insert(
            id,
            Endpoint {
                room: request.room.clone(),
                participant_id: request.participant_id.clone(),
                can_subscribe: request.can_subscribe,
                relay,
                negotiated: relay,
                view: None,
                sink_of: FastMap::default(),
                to_add: Vec::new(),
                sinks: PlacedMap::default(),
                codecs: Vec::new(),
                estimate: None,
                sent_bytes: 0,
                sent_bps: 0,
            },
        );
        // A newcomer learns who is talking now, not only at the next change.
        if let (Some(participant_id), false) = (dominant, relay) {
            self.emit(id, SessionEvent::ActiveSpeaker { participant_id });
        }
        Ok(others)
    }

    /// Remove `id` from its room: its sinks leave the sources they fed from, its sources
    /// are unpublished, the others are told.
    pub fn leave(&mut self, id: SessionId, reason: LeaveReason) -> Departure {
        let Some(endpoint) = self.endpoints.get(&id) else { return Departure::default() };
        let room_name = endpoint.room.clone();
        let Some(room) = self.rooms.get_mut(&room_name) else {
            self.endpoints.remove(&id);
            return Departure::default();
        };
        room.members.retain(|m| m.session != id);
        room.speakers.remove(id);
        for (mid, sink) in &endpoint.sinks {
            if let Some(s) = sink.source.and_then(|k| room.sources.get_mut(&k)) {
                s.sinks.retain(|f| f.sink != (id, *mid));
            }
        }
        let own: Vec<Mid> =
            room.sources.keys().filter(|(owner, _)| *owner == id).map(|(_, mid)| *mid).collect();
        for mid in own {
            self.unpublish(id, mid);
        }
        let Some(endpoint) = self.endpoints.remove(&id) else { return Departure::default() };
        let Some(room) = self.rooms.get(&room_name) else { return Departure::default() };
        let room_closed = room.members.is_empty();
        let told: Vec<SessionId> = if endpoint.relay || reason == LeaveReason::Reloaded {
            Vec::new()
        } else {
            room.others(id).collect()
        };
        for other in told {
            let event =
                SessionEvent::ParticipantLeft { participant_id: endpoint.participant_id.clone(), reason };
            self.emit(other, event);
        }
        if room_closed {
            self.rooms.remove(&room_name);
            self.metrics.rooms.dec();
        }
        Departure { room_closed }
    }

    /// What the payload types of the media `id` sends mean (after each negotiation).
    pub fn set_codecs(&mut self, id: SessionId, codecs: super::PayloadTypes) {
        if let Some(e) = self.endpoints.get_mut(&id) {
            e.codecs = codecs;
        }
    }

    /// `id` publishes `track` on `mid`: the others are told, and those who never said what
    /// they show get a sink for it.
    pub fn publish(&mut self, id: SessionId, mid: Mid, track: TrackInfo, now: Instant) {
        self.publish_as(id, mid, track, None, now);
    }

    /// `publish`, for a track whose publisher is not the endpoint: a relay link's track is
    /// announced as its publisher's on the origin, with that publisher's codecs.
    pub(super) fn publish_as(
        &mut self,
        id: SessionId,
        mid: Mid,
        track: TrackInfo,
        relayed: Option<(String, super::PayloadTypes)>,
        now: Instant,
    ) {
        self.now = self.now.max(now);
        let Some(endpoint) = self.endpoints.get(&id) else { return };
        let Some(room) = self.rooms.get_mut(&endpoint.room) else { return };
        let kind = track.kind;
        let track_id = track.id.clone();
        let mut source = Source::new(
            track.clone(),
            endpoint.participant_id.clone(),
            self.config.keyframe_request_interval,
        );
        if let Some((owner, codecs)) = relayed {
            source.owner_participant = owner;
            source.codecs = Some(codecs);
        }
        source.cache_keyframes = kind == TrackKind::Video && (endpoint.relay || !endpoint.can_subscribe);
        let participant_id = source.owner_participant.clone();
        room.sources.insert((id, mid), source);
        let feeds: Vec<SessionId> = room
            .members
            .iter()
            .filter(|m| m.hidden && m.session != id)
            .map(|m| m.session)
            .filter(|s| self.endpoints.get(s).is_some_and(|e| e.relay && e.can_subscribe))
            .collect();
        for to in feeds {
            self.outputs.push_back(super::Output::RelaySource { to, source: (id, mid) });
        }
        self.metrics.tracks.inc();
        let others: Vec<SessionId> = room.others(id).collect();
        for other in &others {
            let event =
                SessionEvent::TrackPublished { participant_id: participant_id.clone(), track: track.clone() };
            self.emit(*other, event);
        }
        if kind == TrackKind::Video {
            // Clients that never said what they show receive every video track; those that
            // show this very track (it came back: a relay link that was lost) get it again.
            for other in others {
                let shows =
                    |e: &Endpoint| e.view.as_ref().is_none_or(|v| v.iter().any(|t| t.track_id == track_id));
                if self.endpoints.get(&other).is_some_and(shows) {
                    self.sync_video_slots(other);
                }
            }
        }
    }

    /// The source on `mid` of `id` is gone: its sinks carry nothing now, the others are told.
    pub fn unpublish(&mut self, id: SessionId, mid: Mid) {
        let key: SourceKey = (id, mid);
        let Some(endpoint) = self.endpoints.get(&id) else { return };
        let Some(room) = self.rooms.get_mut(&endpoint.room) else { return };
        let Some(source) = room.sources.remove(&key) else { return };
        // A relayed track is its publisher's on the origin, not the link's.
        let participant_id = source.owner_participant.clone();
        self.metrics.tracks.dec();
        room.audio.remove(key);
        let others: Vec<SessionId> = room.others(id).collect();
        for Fed { sink: (sink_endpoint, sink_mid), .. } in &source.sinks {
            if let Some(e) = self.endpoints.get_mut(sink_endpoint) {
                e.sink_of.remove(&key);
                if let Some(sink) = e.sinks.get_mut(sink_mid) {
                    sink.assign(None);
                }
                let event = SessionEvent::Slots(vec![SlotInfo { mid: sink_mid.to_string(), track: None }]);
                self.outputs.push_back(super::Output::Event { to: *sink_endpoint, event });
            }
        }
        for other in others {
            if let Some(e) = self.endpoints.get_mut(&other) {
                e.to_add.retain(|k| *k != key);
            }
            let event = SessionEvent::TrackUnpublished {
                participant_id: participant_id.clone(),
                track_id: source.track.id.clone(),
            };
            self.emit(other, event);
        }
    }

    /// `id` muted or unmuted one of its tracks; the others are told. Err: it has no such track.
    pub fn mute(&mut self, id: SessionId, track_id: &str, muted: bool) -> Result<(), String> {
        let Some(endpoint) = self.endpoints.get(&id) else { return Ok(()) };
        let Some(room) = self.rooms.get_mut(&endpoint.room) else { return Ok(()) };
        let Some(source) = room
            .sources
            .iter_mut()
            .find(|((owner, _), s)| *owner == id && s.track.id == track_id)
            .map(|(_, s)| s)
        else {
            return Err(format!("no track {track_id} published by you"));
        };
        if !muted {
            // Its owner unmutes it: a host's hold ends with that.
            source.held = false;
        }
        if source.track.muted == muted {
            return Ok(());
        }
        source.track.muted = muted;
        let event = SessionEvent::TrackMuted {
            participant_id: endpoint.participant_id.clone(),
            track_id: track_id.to_string(),
            muted,
        };
        let others: Vec<SessionId> = room.others(id).collect();
        for other in others {
            self.emit(other, event.clone());
        }
        Ok(())
    }

    /// A host muted `id`: its microphone tracks are muted and held (not forwarded) until
    /// `id` unmutes them itself; everyone in the room is told, `id` too. Returns the
    /// tracks it held.
    pub fn hold_audio(&mut self, id: SessionId) -> Vec<String> {
        let Some(endpoint) = self.endpoints.get(&id) else { return Vec::new() };
        let Some(room) = self.rooms.get_mut(&endpoint.room) else { return Vec::new() };
        let mut held = Vec::new();
        for ((owner, _), source) in room.sources.iter_mut() {
            if *owner != id || source.track.kind != crate::api::TrackKind::Audio {
                continue;
            }
            source.held = true;
            if !std::mem::replace(&mut source.track.muted, true) {
                held.push(source.track.id.clone());
            }
        }
        let everyone: Vec<SessionId> = room.others(id).chain([id]).collect();
        let participant_id = endpoint.participant_id.clone();
        for track_id in &held {
            let event = SessionEvent::TrackMuted {
                participant_id: participant_id.clone(),
                track_id: track_id.clone(),
                muted: true,
            };
            for &to in &everyone {
                self.emit(to, event.clone());
            }
        }
        held
    }

    /// The video tracks `id` shows now, replacing the previous list.
    pub fn set_view(&mut self, id: SessionId, tracks: Vec<ShownTrack>, now: Instant) {
        self.now = self.now.max(now);
        if let Some(e) = self.endpoints.get_mut(&id) {
            e.view = Some(tracks);
            self.sync_video_slots(id);
        }
    }

    /// `id` finished its first negotiation: it gets sinks for what it should receive.
    pub fn negotiated(&mut self, id: SessionId, now: Instant) {
        self.now = self.now.max(now);
        let Some(e) = self.endpoints.get_mut(&id) else { return };
        if std::mem::replace(&mut e.negotiated, true) {
            return;
        }
        self.sync_audio_slots(id);
        self.sync_video_slots(id);
    }
}
