//! The signaling messages on the WebSocket, one JSON object each, tagged by `type`
//! (docs/protocol.md). Both directions serialize and deserialize: the server reads what
//! clients send, the load generator reads what the server sends.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ClientMessage {
    #[serde(rename_all = "camelCase")]
    Join {
        token: String,
        /// The `resume` of an earlier `joined`: take that participant back (its signaling
        /// connection dropped within the grace period) instead of joining anew.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<String>,
        /// With `resume`: the client's peer connection is new (a page reload), so the
        /// participant gets a new media session; the others see its tracks change, not
        /// a leave and a join.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        new_media: bool,
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
    /// A line of chat to the room (docs/protocol.md, Talking).
    Chat {
        text: String,
    },
    RaiseHand {
        raised: bool,
    },
    /// A reaction shown for a moment on the sender's tile: one of [`REACTIONS`].
    Reaction {
        emoji: String,
    },
    /// Host controls (a token with the `roomAdmin` grant): mute one participant's
    /// microphone (held by the server until that participant unmutes), everyone's but
    /// the host's, remove a participant, end the meeting for everyone.
    #[serde(rename_all = "camelCase")]
    MuteParticipant {
        participant_id: String,
    },
    MuteAll,
    #[serde(rename_all = "camelCase")]
    RemoveParticipant {
        participant_id: String,
    },
    EndMeeting,
}

/// The reactions a client may send.
pub const REACTIONS: &[&str] = &["👍", "👏", "😂", "❤️", "🎉", "😮"];

/// Longest chat line, in characters.
pub const MAX_CHAT_CHARS: usize = 1000;

/// One line of a room's chat, as the room got it: numbered in the order the server took it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatLine {
    pub seq: u64,
    pub participant_id: String,
    pub name: String,
    pub text: String,
    /// When the server took it, ms since the Unix epoch.
    pub at: u64,
}

/// One video track a client shows, with its tile's size in device pixels or a quality.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShownTrack {
    pub track_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<String>,
}

/// The source a client gives one of the mids of its offer: `microphone`, `camera`, `screen`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackLabel {
    pub mid: String,
    pub source: String,
}

/// What one receiving mid carries (both None: nothing now).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Slot {
    pub mid: String,
    pub participant_id: Option<String>,
    pub track_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Track {
    pub id: String,
    /// `audio` or `video`.
    pub kind: String,
    /// `microphone`, `camera` or `screen`.
    pub source: String,
    #[serde(default)]
    pub muted: bool,
}

/// A track this client's offer started publishing, and the mid it arrives on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnTrack {
    pub mid: String,
    #[serde(flatten)]
    pub track: Track,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Participant {
    pub id: String,
    #[serde(default)]
    pub identity: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub tracks: Vec<Track>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ServerMessage {
    Joined {
        room: String,
        participant: Participant,
        participants: Vec<Participant>,
        /// TURN servers with credentials for this participant (`[turn]`), as the
        /// `iceServers` of its RTCPeerConnection; absent when none are configured.
        #[serde(rename = "iceServers", default, skip_serializing_if = "Vec::is_empty")]
        ice_servers: Vec<crate::turn::IceServer>,
        /// What to send in `join` to resume this participant if the connection drops.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<String>,
        /// This join resumed a participant: its media session went on; `participants` is
        /// empty and what happened meanwhile follows as the usual messages.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        resumed: bool,
        /// This participant may use the host controls (its token has `roomAdmin`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        host: bool,
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
        reason: String,
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
    /// A video track the client shows is paused by the server (its bandwidth or the
    /// node's load cannot carry it), or sent again: show it as paused, not frozen.
    #[serde(rename_all = "camelCase")]
    TrackPaused {
        track_id: String,
        paused: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A chat line, to everyone in the room (its sender too).
    Chat(ChatLine),
    #[serde(rename_all = "camelCase")]
    HandRaised {
        participant_id: String,
        raised: bool,
    },
    #[serde(rename_all = "camelCase")]
    Reaction {
        participant_id: String,
        emoji: String,
    },
    /// What a host did, to everyone in the room: `action` is `mute`, `muteAll`,
    /// `remove` or `end`; `participantId` and `name` say to whom (`mute`, `remove`).
    #[serde(rename_all = "camelCase")]
    HostAction {
        action: String,
        by_name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        participant_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    Pong,
    Error {
        code: String,
        message: String,
    },
}

impl ServerMessage {
    /// The `type` of every server message, for a reader that must tell a message it does
    /// not know (a newer server's) from one it cannot read.
    pub const TYPES: &[&str] = &[
        "joined",
        "answer",
        "offer",
        "participantJoined",
        "participantLeft",
        "trackPublished",
        "trackUnpublished",
        "trackMuted",
        "activeSpeaker",
        "slots",
        "layers",
        "trackPaused",
        "chat",
        "handRaised",
        "reaction",
        "hostAction",
        "pong",
        "error",
    ];

    pub fn error(code: &str, message: impl Into<String>) -> Self {
        ServerMessage::Error { code: code.to_string(), message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_back_as_written_with_the_documented_names() {
        let subscribe = ClientMessage::Subscribe {
            tracks: vec![ShownTrack {
                track_id: "TR_a".into(),
                width: Some(320),
                height: Some(180),
                quality: None,
            }],
        };
        let text = serde_json::to_string(&subscribe).unwrap();
        assert_eq!(text, r#"{"type":"subscribe","tracks":[{"trackId":"TR_a","width":320,"height":180}]}"#);
        assert_eq!(serde_json::from_str::<ClientMessage>(&text).unwrap(), subscribe);

        let answer = ServerMessage::Answer {
            sdp: "v=0".into(),
            tracks: vec![OwnTrack {
                mid: "1".into(),
                track: Track {
                    id: "TR_b".into(),
                    kind: "video".into(),
                    source: "camera".into(),
                    muted: false,
                },
            }],
        };
        let text = serde_json::to_string(&answer).unwrap();
        assert!(text.contains(r#""tracks":[{"mid":"1","id":"TR_b","kind":"video""#), "{text}");
        assert_eq!(serde_json::from_str::<ServerMessage>(&text).unwrap(), answer);
        for m in [&answer, &ServerMessage::Pong, &ServerMessage::error("bad_json", "x")] {
            let tag = serde_json::to_value(m).unwrap()["type"].as_str().unwrap().to_string();
            assert!(ServerMessage::TYPES.contains(&tag.as_str()), "{tag} is listed");
        }
        let left: ServerMessage =
            serde_json::from_str(r#"{"type":"participantLeft","participantId":"PA_1","reason":"left"}"#)
                .unwrap();
        assert_eq!(
            left,
            ServerMessage::ParticipantLeft { participant_id: "PA_1".into(), reason: "left".into() }
        );
    }
}
