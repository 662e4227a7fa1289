//! A room: who is in it, the sources published in it, who speaks, and which audio is
//! forwarded at all. Plain data; the router drives it.

use std::time::Instant;

use str0m::media::Mid;

use super::select::{AudioSelectConfig, AudioSelector};
use super::source::{Source, SourceKey};
use super::speaker::{SpeakerConfig, SpeakerDetector};
use crate::api::{ParticipantInfo, SessionId, TrackInfo};
use crate::fasthash::FastMap;

pub struct Member {
    pub session: SessionId,
    pub participant_id: String,
    pub identity: String,
    pub name: String,
    /// A relay link to another node: in the room to take its sources, not a participant
    /// anyone sees.
    pub hidden: bool,
    /// It may not publish (a WHEP player, a subscribe-only token): it counts toward the
    /// room's viewers, not its participants.
    pub viewer: bool,
}

pub struct Room {
    pub members: Vec<Member>,
    pub sources: FastMap<SourceKey, Source>,
    pub speakers: SpeakerDetector,
    /// Which audio sources are forwarded at all (top-N in large rooms).
    pub audio: AudioSelector<SourceKey>,
    /// The dominant speaker, as last announced.
    pub dominant: Option<SessionId>,
}

impl Room {
    pub fn new(audio: AudioSelectConfig, now: Instant) -> Self {
        Self {
            members: Vec::new(),
            sources: FastMap::default(),
            speakers: SpeakerDetector::new(SpeakerConfig::default(), now),
            audio: AudioSelector::new(audio),
            dominant: None,
        }
    }

    pub fn participant_info(&self, member: &Member) -> ParticipantInfo {
        let mut tracks: Vec<(&Mid, TrackInfo)> = self
            .sources
            .iter()
            .filter(|((owner, _), _)| *owner == member.session)
            .map(|((_, mid), p)| (mid, p.track.clone()))
            .collect();
        tracks.sort_by(|a, b| a.0.cmp(b.0));
        ParticipantInfo {
            id: member.participant_id.clone(),
            identity: member.identity.clone(),
            name: member.name.clone(),
            tracks: tracks.into_iter().map(|(_, t)| t).collect(),
        }
    }

    /// Participants (not relay links) other than `session`.
    pub fn others(&self, session: SessionId) -> impl Iterator<Item = SessionId> + '_ {
        self.members.iter().filter(move |m| !m.hidden && m.session != session).map(|m| m.session)
    }

    /// The publishers whose tracks arrive over a relay link (hidden members' sources), as
    /// participants: what a newcomer on an edge node sees.
    pub fn relayed_publishers(&self) -> Vec<ParticipantInfo> {
        let mut out: Vec<ParticipantInfo> = Vec::new();
        let mut sources: Vec<(&SourceKey, &Source)> = self
            .sources
            .iter()
            .filter(|((owner, _), _)| self.members.iter().any(|m| m.session == *owner && m.hidden))
            .collect();
        sources.sort_by(|a, b| a.0.cmp(b.0));
        for (_, source) in sources {
            let owner = &source.owner_participant;
            match out.iter_mut().find(|p| p.id == *owner) {
                Some(p) => p.tracks.push(source.track.clone()),
                None => out.push(ParticipantInfo {
                    id: owner.clone(),
                    identity: owner.clone(),
                    name: owner.clone(),
                    tracks: vec![source.track.clone()],
                }),
            }
        }
        out
    }

    pub fn participants(&self) -> usize {
        self.members.iter().filter(|m| !m.hidden).count()
    }

    /// Members that see each other (who may publish: a meeting's participants), or with
    /// `viewers`, those who only watch.
    pub fn counted(&self, viewers: bool) -> usize {
        self.members.iter().filter(|m| !m.hidden && m.viewer == viewers).count()
    }
}
