//! The media node's words in the protocol's terms: session events become the server
//! messages of docs/protocol.md (defined in the `proto` crate), leave reasons become
//! WebSocket close codes.

pub use proto::messages::{
    ChatLine, ClientMessage, MAX_CHAT_CHARS, OwnTrack, Participant, REACTIONS, ServerMessage, ShownTrack,
    Slot, Track, TrackLabel,
};
use sfu::api::{LeaveReason, ParticipantInfo, PublishedTrack, SessionEvent, SlotInfo, TrackInfo};

fn slot(s: &SlotInfo) -> Slot {
    Slot {
        mid: s.mid.clone(),
        participant_id: s.track.as_ref().map(|t| t.0.clone()),
        track_id: s.track.as_ref().map(|t| t.1.clone()),
    }
}

fn track(t: &TrackInfo) -> Track {
    Track { id: t.id.clone(), kind: t.kind.as_str().into(), source: t.source.as_str().into(), muted: t.muted }
}

fn own_track(p: &PublishedTrack) -> OwnTrack {
    OwnTrack { mid: p.mid.clone(), track: track(&p.track) }
}

pub fn participant(p: &ParticipantInfo) -> Participant {
    Participant {
        id: p.id.clone(),
        identity: p.identity.clone(),
        name: p.name.clone(),
        tracks: p.tracks.iter().map(track).collect(),
    }
}

/// The message for a media session event; `Closed` has none (the socket closes).
pub fn server_message(event: &SessionEvent) -> Option<ServerMessage> {
    Some(match event {
        SessionEvent::Answer { sdp, published } => {
            ServerMessage::Answer { sdp: sdp.clone(), tracks: published.iter().map(own_track).collect() }
        }
        SessionEvent::Offer { sdp } => ServerMessage::Offer { sdp: sdp.clone() },
        SessionEvent::Error { code, message } => ServerMessage::error(code, message.clone()),
        SessionEvent::ParticipantJoined(p) => {
            ServerMessage::ParticipantJoined { participant: participant(p) }
        }
        SessionEvent::ParticipantLeft { participant_id, reason } => ServerMessage::ParticipantLeft {
            participant_id: participant_id.clone(),
            reason: reason.as_str().into(),
        },
        SessionEvent::TrackPublished { participant_id, track: t } => {
            ServerMessage::TrackPublished { participant_id: participant_id.clone(), track: track(t) }
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
        SessionEvent::Slots(slots) => ServerMessage::Slots { slots: slots.iter().map(slot).collect() },
        SessionEvent::Layers { track_id, active } => {
            ServerMessage::Layers { track_id: track_id.clone(), active: active.clone() }
        }
        SessionEvent::TrackPaused { track_id, paused, reason } => ServerMessage::TrackPaused {
            track_id: track_id.clone(),
            paused: *paused,
            reason: (*paused).then(|| reason.to_string()),
        },
        SessionEvent::Closed { .. } => return None,
    })
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
        LeaveReason::Reloaded => (4009, "reloaded"),
        LeaveReason::ShuttingDown => (1001, "server shutting down"),
    }
}
