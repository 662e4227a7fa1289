//! What the router tells and takes from relay links (ADR 0012): the sources a link that
//! feeds another node carries, the tracks a link from another node brings, and whether a
//! room still has anyone to relay to.

use std::time::Instant;

use str0m::media::Mid;

use super::source::SourceKey;
use super::{PayloadTypes, Router};
use crate::api::{SessionId, TrackInfo, TrackKind};

/// A source as a relay link announces it to the next node.
#[derive(Debug, Clone)]
pub struct RelayedTrack {
    pub track: TrackInfo,
    /// Who publishes it (on the origin).
    pub participant: String,
    /// What its payload types mean.
    pub codecs: PayloadTypes,
}

impl Router {
    /// The sources in `id`'s room that are not its own, oldest first.
    pub fn room_sources(&self, id: SessionId) -> Vec<SourceKey> {
        let Some(room) = self.endpoints.get(&id).and_then(|e| self.rooms.get(&e.room)) else {
            return Vec::new();
        };
        let mut keys: Vec<SourceKey> = room.sources.keys().filter(|k| k.0 != id).copied().collect();
        keys.sort_unstable();
        keys
    }

    /// What a relay link tells the next node about `key`.
    pub fn relayed_track(&self, key: SourceKey) -> Option<RelayedTrack> {
        let owner = self.endpoints.get(&key.0)?;
        let source = self.rooms.get(&owner.room)?.sources.get(&key)?;
        let video = source.track.kind == TrackKind::Video;
        let codecs = source.codecs.clone().unwrap_or_else(|| {
            owner.codecs.iter().filter(|(_, c)| c.video_codec().is_some() == video).cloned().collect()
        });
        Some(RelayedTrack {
            track: source.track.clone(),
            participant: source.owner_participant.clone(),
            codecs,
        })
    }

    /// A relay link from another node brings `relayed` on `mid`: a source of this room,
    /// announced as its publisher's.
    pub fn publish_relayed(&mut self, id: SessionId, mid: Mid, relayed: RelayedTrack, now: Instant) {
        self.publish_as(id, mid, relayed.track, Some((relayed.participant, relayed.codecs)), now);
        self.set_negotiated_relay(id);
    }

    fn set_negotiated_relay(&mut self, id: SessionId) {
        if let Some(e) = self.endpoints.get_mut(&id) {
            e.negotiated = true;
        }
    }

    /// Members of `id`'s room that take media, other than `id` and the links that bring
    /// media in: participants, viewers and links to further nodes.
    pub fn audience(&self, id: SessionId) -> usize {
        let Some(room) = self.endpoints.get(&id).and_then(|e| self.rooms.get(&e.room)) else { return 0 };
        room.members
            .iter()
            .filter(|m| m.session != id)
            .filter(|m| self.endpoints.get(&m.session).is_some_and(|e| !e.relay || e.can_subscribe))
            .count()
    }

    /// Members that receive media, per room on this router (publish-only sessions and
    /// relay links not counted).
    /// And whether anything is published in it.
    pub fn viewers_by_room(&self) -> Vec<(String, usize, bool)> {
        self.rooms
            .iter()
            .map(|(name, room)| {
                let n = room
                    .members
                    .iter()
                    .filter(|m| self.endpoints.get(&m.session).is_some_and(|e| !e.relay && e.can_subscribe))
                    .count();
                (name.clone(), n, !room.sources.is_empty())
            })
            .collect()
    }
}
