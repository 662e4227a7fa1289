//! A room: who is in it, which tracks are published, and who receives each one.
//! Plain data owned by one shard; the shard drives it.

use std::collections::HashMap;
use std::time::Duration;

use str0m::format::CodecSpec;
use str0m::media::Mid;
use str0m::rtp::Ssrc;

use crate::api::{ParticipantInfo, SessionId, TrackInfo};
use crate::forward::{KeyframeThrottle, VideoCodec};
use crate::speaker::{SpeakerConfig, SpeakerDetector};

/// One incoming track is identified by its publisher's session and the mid it arrives on.
pub type PublicationKey = (SessionId, Mid);

/// One incoming track and where it goes.
pub struct Publication {
    pub track: TrackInfo,
    pub owner_participant: String,
    /// Subscribers as (session, mid in that session's SDP).
    pub subscribers: Vec<(SessionId, Mid)>,
    /// The incoming SSRC, once media arrived; keyframe requests go to it.
    pub source_ssrc: Option<Ssrc>,
    /// Payload type of the last packet and what codec it means in the publisher's session.
    pub source_format: Option<(u8, CodecSpec)>,
    pub video_codec: Option<VideoCodec>,
    pub keyframe_throttle: KeyframeThrottle,
}

impl Publication {
    pub fn new(track: TrackInfo, owner_participant: String, keyframe_interval: Duration) -> Self {
        Self {
            track,
            owner_participant,
            subscribers: Vec::new(),
            source_ssrc: None,
            source_format: None,
            video_codec: None,
            keyframe_throttle: KeyframeThrottle::new(keyframe_interval),
        }
    }
}

pub struct Member {
    pub session: SessionId,
    pub participant_id: String,
    pub identity: String,
    pub name: String,
}

pub struct Room {
    pub name: String,
    pub members: Vec<Member>,
    pub publications: HashMap<PublicationKey, Publication>,
    pub speakers: SpeakerDetector,
}

impl Room {
    pub fn new(name: String) -> Self {
        Self {
            name,
            members: Vec::new(),
            publications: HashMap::new(),
            speakers: SpeakerDetector::new(SpeakerConfig::default(), std::time::Instant::now()),
        }
    }

    pub fn participant_info(&self, member: &Member) -> ParticipantInfo {
        let mut tracks: Vec<(&Mid, TrackInfo)> = self
            .publications
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

    pub fn others(&self, session: SessionId) -> impl Iterator<Item = SessionId> + '_ {
        self.members.iter().map(|m| m.session).filter(move |s| *s != session)
    }
}
