//! The node API: what the control plane asks of a media node ([`NodeApi`], one session
//! at a time through [`MediaSession`]) and the words both sides share (join requests,
//! tracks, participants, session events, errors). The embedded node answers in-process;
//! a node on another machine can answer over the network. Signaling uses nothing else of
//! the media plane.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;

use tokio::sync::mpsc;

pub type SessionId = u64;

#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub room: String,
    pub participant_id: String,
    pub identity: String,
    pub name: String,
    pub can_publish: bool,
    pub can_subscribe: bool,
    /// It takes the place of the same identity's earlier connection, which has just left:
    /// a reconnect adds no load, so the load budget does not refuse it (ADR 0020).
    pub replaces: bool,
    /// It continues the same participant, whose earlier session just left with
    /// `LeaveReason::Reloaded` (a page reload): the others are not told it joined.
    pub continues: bool,
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
    /// The client's page reloaded: a new session of the same participant follows at
    /// once (`JoinRequest::continues`), so the others are not told it left.
    Reloaded,
    /// The server is stopping (SIGTERM): every room is closed.
    ShuttingDown,
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
            LeaveReason::Reloaded => "reloaded",
            LeaveReason::ShuttingDown => "shutting_down",
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
    /// To a subscriber: a video track it shows is paused (or goes again): its bandwidth
    /// estimate (`"bandwidth"`) or its media thread's load (`"load"`) cannot carry it.
    TrackPaused {
        track_id: String,
        paused: bool,
        reason: &'static str,
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

/// A simulcast layer by rank: 0 the lowest (q), 1 (h), 2 the highest (f).
pub type Quality = u8;

/// At most three simulcast layers per track (low, medium, high).
pub const MAX_LAYERS: usize = 3;

/// A video track the client shows, and the quality its tile needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownTrack {
    pub track_id: String,
    pub quality: Quality,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("media node is overloaded")]
    Overloaded,
    /// A join beyond what the node carries (its participant limit, or its room's media
    /// thread's load budget: ADR 0020); the others in the room are not affected.
    #[error("media node full: {0}")]
    NodeFull(&'static str),
    #[error("media node is shutting down")]
    ShuttingDown,
    #[error("room is full ({0} participants)")]
    RoomFull(usize),
    /// The request was refused for what it holds (too large, too many m-lines, too many
    /// candidates, not parseable); the session goes on.
    #[error("{0}")]
    Refused(String),
    /// Too many requests of this kind in flight or in a short time; try again later.
    #[error("{0}")]
    Busy(&'static str),
}

/// An edge of the broadcast tier as the node that feeds it knows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EdgeInfo {
    pub node: String,
    pub http: Option<String>,
    pub viewers: u64,
}

/// What the control plane asks of a media node.
pub trait NodeApi: Send + Sync + 'static {
    /// Admit a participant to a room on this node (the room is created on first join).
    fn join(
        &self,
        request: JoinRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Joined, MediaError>> + Send + '_>>;

    /// Whether the media plane is live (every media thread went round its loop
    /// recently); otherwise what is wrong, for `/healthz`.
    fn health(&self) -> Result<(), String>;

    /// Make sure a room's tracks are on this node before a viewer joins: an edge of the
    /// broadcast tier pulls them from its parent (Err: nothing is live there, or no link).
    fn pull(&self, _room: &str) -> Pin<Box<dyn Future<Output = Result<(), MediaError>> + Send + '_>> {
        Box::pin(async { Ok(()) })
    }

    /// Whether this node is an edge of the broadcast tier: it plays rooms that its parent
    /// holds and takes no publishers.
    fn is_edge(&self) -> bool {
        false
    }

    /// Where to send a new viewer instead of serving it here: the HTTP base URL of the
    /// least loaded edge this node feeds, if any.
    fn edge_for_viewer(&self) -> Option<String> {
        None
    }

    /// The edges this node feeds: name, HTTP base URL and viewers, for the admin API.
    fn edges(&self) -> Vec<EdgeInfo> {
        Vec::new()
    }

    /// Viewers of `room` in the whole broadcast tree (on an edge: as its origin last told).
    fn viewers(&self, _room: &str) -> u64 {
        0
    }

    /// The process is shutting down (it refuses new joins already): an edge asks its
    /// parent to send it no new viewers.
    fn drain(&self) {}

    /// Whether anything is published in `room` (on an edge: relayed from its origin).
    fn is_live(&self, _room: &str) -> bool {
        false
    }
}

/// One participant's media session, driven by its signaling connection. Dropping it ends
/// the session (as `Disconnected`) without waiting, so a connection that dies never
/// leaves media resources behind and never blocks its task.
pub trait MediaSession: Send + Sync + Debug {
    fn id(&self) -> SessionId;
    /// The client's offer; the answer (or an error) arrives as a [`SessionEvent`].
    /// `tracks` labels the client's mids with a source.
    fn offer(&self, sdp: String, tracks: Vec<(String, TrackSource)>) -> Result<(), MediaError>;
    /// The answer to the node's last offer.
    fn answer(&self, sdp: String) -> Result<(), MediaError>;
    /// A trickled ICE candidate.
    fn candidate(&self, candidate: String) -> Result<(), MediaError>;
    fn set_muted(&self, track_id: String, muted: bool) -> Result<(), MediaError>;
    /// A host muted this participant: its microphone is muted, everyone (itself too) is
    /// told with `TrackMuted`, and nothing of it is forwarded until it unmutes itself.
    fn hold_audio(&self) -> Result<(), MediaError>;
    /// The video tracks the client shows now (replacing the previous list).
    fn subscribe(&self, tracks: Vec<ShownTrack>) -> Result<(), MediaError>;
    /// End the session with a reason the others are told.
    fn leave(self: Box<Self>, reason: LeaveReason);
}

/// Who joined: this participant's session, everyone already in the room, and the
/// session's events in the order they happen.
#[derive(Debug)]
pub struct Joined {
    pub session: Box<dyn MediaSession>,
    pub others: Vec<ParticipantInfo>,
    pub events: mpsc::Receiver<SessionEvent>,
}
