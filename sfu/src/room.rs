//! A room: who is in it, which tracks are published, and who receives each one.
//! Plain data owned by one shard; the shard drives it.

use std::time::{Duration, Instant};

use str0m::format::CodecSpec;
use str0m::media::Mid;
use str0m::rtp::Ssrc;

use crate::api::{ParticipantInfo, SessionId, TrackInfo};
use crate::fasthash::FastMap;
use crate::forward::{KeyframeThrottle, VideoCodec};
use crate::select::{AudioSelectConfig, AudioSelector, MAX_LAYERS};
use crate::speaker::{SpeakerConfig, SpeakerDetector};

/// A layer that sent nothing for this long counts as stopped.
const LAYER_STALE: Duration = Duration::from_millis(1000);

/// One simulcast layer of a track as it arrives (the only layer, without simulcast).
pub struct Layer {
    pub ssrc: Option<Ssrc>,
    pub rid: Option<String>,
    /// The publisher was told to stop sending it (nobody takes it).
    pub paused: bool,
    /// Since when no subscriber takes it.
    pub unneeded_since: Option<Instant>,
    /// Payload bytes since the last measurement, and the measured bits per second.
    pub bytes: u64,
    pub bps: u64,
    pub last_packet: Option<Instant>,
    pub keyframe_throttle: KeyframeThrottle,
}

/// One incoming track is identified by its publisher's session and the mid it arrives on.
pub type PublicationKey = (SessionId, Mid);

/// One incoming track and where it goes.
pub struct Publication {
    pub track: TrackInfo,
    pub owner_participant: String,
    /// The slots carrying it, as (session, mid in that session's SDP).
    pub subscribers: Vec<(SessionId, Mid)>,
    /// Incoming layers by rank; keyframe requests go to a layer's SSRC.
    pub layers: [Layer; MAX_LAYERS],
    /// Payload type of the last packet and what codec it means in the publisher's session.
    pub source_format: Option<(u8, CodecSpec)>,
    pub video_codec: Option<VideoCodec>,
}

impl Publication {
    pub fn new(track: TrackInfo, owner_participant: String, keyframe_interval: Duration) -> Self {
        Self {
            track,
            owner_participant,
            subscribers: Vec::new(),
            layers: std::array::from_fn(|_| Layer {
                ssrc: None,
                rid: None,
                paused: false,
                unneeded_since: None,
                bytes: 0,
                bps: 0,
                last_packet: None,
                keyframe_throttle: KeyframeThrottle::new(keyframe_interval),
            }),
            source_format: None,
            video_codec: None,
        }
    }

    /// Which layers the publisher has sent at some point.
    pub fn offered(&self) -> [bool; MAX_LAYERS] {
        std::array::from_fn(|l| self.layers[l].ssrc.is_some())
    }

    /// Which layers arrive now.
    pub fn arriving(&self, now: Instant) -> [bool; MAX_LAYERS] {
        std::array::from_fn(|l| {
            self.layers[l].last_packet.is_some_and(|t| now.saturating_duration_since(t) < LAYER_STALE)
        })
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
    pub publications: FastMap<PublicationKey, Publication>,
    pub speakers: SpeakerDetector,
    /// Which audio tracks are forwarded at all (top-N in large rooms).
    pub audio: AudioSelector<PublicationKey>,
    /// The dominant speaker, as last announced.
    pub dominant: Option<SessionId>,
}

impl Room {
    pub fn new(name: String, audio: AudioSelectConfig) -> Self {
        Self {
            name,
            members: Vec::new(),
            publications: FastMap::default(),
            speakers: SpeakerDetector::new(SpeakerConfig::default(), Instant::now()),
            audio: AudioSelector::new(audio),
            dominant: None,
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
