//! The signaling messages on the WebSocket, one JSON object each (docs/protocol.md).

use serde::{Deserialize, Serialize};
use sfu::{LeaveReason, ParticipantInfo, PublishedTrack, SessionEvent, SlotInfo, TrackInfo};

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ClientMessage {
    Join {
        token: String,
    },
    Offer {
        sdp: String,
        #[serde(default)]
        tracks: Vec<TrackLabel>,
    },
    Answer {
        sdp: String,
    },
    Candidate {
        #[serde(default)]
        candidate: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    Mute {
        track_id: String,
        muted: bool,
    },
    Subscribe {
        tracks: Vec<ShownTrack>,
    },
    Leave,
    Ping,
}

/// One video track a client shows, with its tile's size in device pixels or a quality.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShownTrack {
    pub track_id: String,
    #[serde(default)]
    pub width: Option<u32>,
    #[serde(default)]
    pub height: Option<u32>,
    #[serde(default)]
    pub quality: Option<String>,
}

/// What one receiving mid carries.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Slot {
    pub mid: String,
    pub participant_id: Option<String>,
    pub track_id: Option<String>,
}

impl From<&SlotInfo> for Slot {
    fn from(s: &SlotInfo) -> Self {
        Slot {
            mid: s.mid.clone(),
            participant_id: s.track.as_ref().map(|t| t.0.clone()),
            track_id: s.track.as_ref().map(|t| t.1.clone()),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct TrackLabel {
    pub mid: String,
    pub source: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Track {
    pub id: String,
    pub kind: &'static str,
    pub source: &'static str,
    pub muted: bool,
}

impl From<&TrackInfo> for Track {
    fn from(t: &TrackInfo) -> Self {
        Track { id: t.id.clone(), kind: t.kind.as_str(), source: t.source.as_str(), muted: t.muted }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct OwnTrack {
    pub mid: String,
    #[serde(flatten)]
    pub track: Track,
}

impl From<&PublishedTrack> for OwnTrack {
    fn from(p: &PublishedTrack) -> Self {
        OwnTrack { mid: p.mid.clone(), track: Track::from(&p.track) }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Participant {
    pub id: String,
    pub identity: String,
    pub name: String,
    pub tracks: Vec<Track>,
}

impl From<&ParticipantInfo> for Participant {
    fn from(p: &ParticipantInfo) -> Self {
        Participant {
            id: p.id.clone(),
            identity: p.identity.clone(),
            name: p.name.clone(),
            tracks: p.tracks.iter().map(Track::from).collect(),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ServerMessage {
    Joined {
        room: String,
        participant: Participant,
        participants: Vec<Participant>,
    },
    Answer {
        sdp: String,
        tracks: Vec<OwnTrack>,
    },
    Offer {
        sdp: String,
    },
    #[serde(rename_all = "camelCase")]
    ParticipantJoined {
        participant: Participant,
    },
    #[serde(rename_all = "camelCase")]
    ParticipantLeft {
        participant_id: String,
        reason: &'static str,
    },
    #[serde(rename_all = "camelCase")]
    TrackPublished {
        participant_id: String,
        track: Track,
    },
    #[serde(rename_all = "camelCase")]
    TrackUnpublished {
        participant_id: String,
        track_id: String,
    },
    #[serde(rename_all = "camelCase")]
    TrackMuted {
        participant_id: String,
        track_id: String,
        muted: bool,
    },
    #[serde(rename_all = "camelCase")]
    ActiveSpeaker {
        participant_id: String,
    },
    Slots {
        slots: Vec<Slot>,
    },
    #[serde(rename_all = "camelCase")]
    Layers {
        track_id: String,
        active: Vec<String>,
    },
    Pong,
    Error {
        code: &'static str,
        message: String,
    },
}

impl ServerMessage {
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        ServerMessage::Error { code, message: message.into() }
    }

    /// The message for a media session event; `Closed` has none (the socket closes).
    pub fn from_event(event: &SessionEvent) -> Option<Self> {
        Some(match event {
            SessionEvent::Answer { sdp, published } => ServerMessage::Answer {
                sdp: sdp.clone(),
                tracks: published.iter().map(OwnTrack::from).collect(),
            },
            SessionEvent::Offer { sdp } => ServerMessage::Offer { sdp: sdp.clone() },
            SessionEvent::Error { code, message } => ServerMessage::Error { code, message: message.clone() },
            SessionEvent::ParticipantJoined(p) => ServerMessage::ParticipantJoined { participant: p.into() },
            SessionEvent::ParticipantLeft { participant_id, reason } => ServerMessage::ParticipantLeft {
                participant_id: participant_id.clone(),
                reason: reason.as_str(),
            },
            SessionEvent::TrackPublished { participant_id, track } => {
                ServerMessage::TrackPublished { participant_id: participant_id.clone(), track: track.into() }
            }
            SessionEvent::TrackUnpublished { participant_id, track_id } => ServerMessage::TrackUnpublished {
                participant_id: participant_id.clone(),
                track_id: track_id.clone(),
            },
            SessionEvent::TrackMuted { participant_id, track_id, muted } => ServerMessage::TrackMuted {
                participant_id: participant_id.clone(),
                track_id: track_id.clone(),
                muted: *muted,
            },
            SessionEvent::ActiveSpeaker { participant_id } => {
                ServerMessage::ActiveSpeaker { participant_id: participant_id.clone() }
            }
            SessionEvent::Slots(slots) => {
                ServerMessage::Slots { slots: slots.iter().map(Slot::from).collect() }
            }
            SessionEvent::Layers { track_id, active } => {
                ServerMessage::Layers { track_id: track_id.clone(), active: active.clone() }
            }
            SessionEvent::Closed { .. } => return None,
        })
    }
}

/// WebSocket close codes (docs/protocol.md).
pub fn close_code(reason: LeaveReason) -> (u16, &'static str) {
    match reason {
        LeaveReason::Left => (1000, "left"),
        LeaveReason::Disconnected => (1001, "disconnected"),
        LeaveReason::MediaTimeout => (4006, "media timeout"),
        LeaveReason::Removed => (4003, "removed by admin"),
        LeaveReason::Replaced => (4005, "replaced by a new connection"),
        LeaveReason::RoomClosed => (4004, "room closed"),
        LeaveReason::MediaError => (4008, "media session failed"),
    }
}
