//! What the control plane sees of a media node: join a room, drive one session's
//! negotiation, and receive that session's events. Everything crosses to the shard
//! that owns the room through a bounded queue.

use std::fmt;

use tokio::sync::{mpsc, oneshot};

use crate::shard::{ShardInput, ShardSender};

pub type SessionId = u64;

#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub room: String,
    pub participant_id: String,
    pub identity: String,
    pub name: String,
    pub can_publish: bool,
    pub can_subscribe: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackKind {
    Audio,
    Video,
}

impl TrackKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TrackKind::Audio => "audio",
            TrackKind::Video => "video",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackSource {
    Microphone,
    Camera,
    Screen,
}

impl TrackSource {
    pub fn as_str(self) -> &'static str {
        match self {
            TrackSource::Microphone => "microphone",
            TrackSource::Camera => "camera",
            TrackSource::Screen => "screen",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "microphone" => Some(TrackSource::Microphone),
            "camera" => Some(TrackSource::Camera),
            "screen" => Some(TrackSource::Screen),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackInfo {
    pub id: String,
    pub kind: TrackKind,
    pub source: TrackSource,
    pub muted: bool,
}

/// A track this session publishes, as the answer to its offer tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedTrack {
    pub mid: String,
    pub track: TrackInfo,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantInfo {
    pub id: String,
    pub identity: String,
    pub name: String,
    pub tracks: Vec<TrackInfo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// The participant said goodbye.
    Left,
    /// The signaling connection went away.
    Disconnected,
    /// ICE went silent or never connected.
    MediaTimeout,
    Removed,
    Replaced,
    RoomClosed,
    /// The session's WebRTC engine failed (a panic contained to this session).
    MediaError,
}

impl LeaveReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Left => "left",
            LeaveReason::Disconnected => "disconnected",
            LeaveReason::MediaTimeout => "timeout",
            LeaveReason::Removed => "removed",
            LeaveReason::Replaced => "replaced",
            LeaveReason::RoomClosed => "room_closed",
            LeaveReason::MediaError => "media_error",
        }
    }
}

/// Events for one session's signaling connection, in the order they happened.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// Answer to the client's offer, with the tracks it now publishes.
    Answer {
        sdp: String,
        published: Vec<PublishedTrack>,
    },
    /// A server-initiated offer (tracks to receive were added or removed).
    Offer {
        sdp: String,
    },
    /// The client's last request was refused; the session goes on.
    Error {
        code: &'static str,
        message: String,
    },
    ParticipantJoined(ParticipantInfo),
    ParticipantLeft {
        participant_id: String,
        reason: LeaveReason,
    },
    TrackPublished {
        participant_id: String,
        track: TrackInfo,
    },
    TrackUnpublished {
        participant_id: String,
        track_id: String,
    },
    TrackMuted {
        participant_id: String,
        track_id: String,
        muted: bool,
    },
    /// What some of the session's receiving mids carry now.
    Slots(Vec<SlotInfo>),
    /// To a publisher: the simulcast layers (rids) of its track that someone receives.
    Layers {
        track_id: String,
        active: Vec<String>,
    },
    /// The room's dominant speaker changed.
    ActiveSpeaker {
        participant_id: String,
    },
    /// The media node ended this session.
    Closed {
        reason: LeaveReason,
    },
}

/// One receiving mid and the track it carries now (None: nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub mid: String,
    pub track: Option<(String, String)>,
}

/// A video track the client shows, and the quality its tile needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownTrack {
    pub track_id: String,
    pub quality: crate::select::Quality,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("media node is overloaded")]
    Overloaded,
    #[error("media node is shutting down")]
    ShuttingDown,
    #[error("room is full ({0} participants)")]
    RoomFull(usize),
}

/// Who joined: this session's participant and everyone already in the room.
#[derive(Debug)]
pub struct Joined {
    pub session: SessionHandle,
    pub others: Vec<ParticipantInfo>,
    pub events: mpsc::Receiver<SessionEvent>,
}

/// Control of one session. Dropping it ends the session (as `Disconnected`), so a
/// signaling connection that dies never leaves media resources behind.
pub struct SessionHandle {
    pub(crate) id: SessionId,
    pub(crate) shard: ShardSender,
    pub(crate) left: bool,
}

impl fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionHandle").field("id", &self.id).finish()
    }
}

impl SessionHandle {
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The client's offer; the answer (or an error) arrives as a [`SessionEvent`].
    /// `tracks` labels the client's mids with a source.
    pub fn offer(&self, sdp: String, tracks: Vec<(String, TrackSource)>) -> Result<(), MediaError> {
        self.shard.command(ShardInput::Offer { session: self.id, sdp, tracks })
    }

    pub fn answer(&self, sdp: String) -> Result<(), MediaError> {
        self.shard.command(ShardInput::Answer { session: self.id, sdp })
    }

    pub fn candidate(&self, candidate: String) -> Result<(), MediaError> {
        self.shard.command(ShardInput::Candidate { session: self.id, candidate })
    }

    pub fn set_muted(&self, track_id: String, muted: bool) -> Result<(), MediaError> {
        self.shard.command(ShardInput::Mute { session: self.id, track_id, muted })
    }

    /// The video tracks the client shows now (replacing the previous list).
    pub fn subscribe(&self, tracks: Vec<ShownTrack>) -> Result<(), MediaError> {
        self.shard.command(ShardInput::Subscribe { session: self.id, tracks })
    }

    /// End the session with a reason the others are told.
    pub fn leave(mut self, reason: LeaveReason) {
        self.left = true;
        self.shard.command_blocking_ok(ShardInput::Leave { session: self.id, reason });
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        if !self.left {
            self.shard.command_blocking_ok(ShardInput::Leave {
                session: self.id,
                reason: LeaveReason::Disconnected,
            });
        }
    }
}

pub(crate) type JoinReply = oneshot::Sender<Result<(SessionId, Vec<ParticipantInfo>), MediaError>>;
