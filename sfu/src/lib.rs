//! Huiyi's media plane: WebRTC sessions (str0m, ICE-lite, one UDP port), rooms, and
//! selective forwarding of RTP between participants.

pub mod api;
pub mod config;
pub mod demux;
pub mod egress;
pub mod fasthash;
pub mod forward;
mod io;
pub mod metrics;
#[cfg(test)]
mod nack_tests;
mod node;
mod room;
pub mod select;
mod shard;
pub mod speaker;
#[doc(hidden)]
pub mod testing;

pub use api::{
    JoinRequest, Joined, LeaveReason, MediaError, ParticipantInfo, PublishedTrack, SessionEvent,
    SessionHandle, SessionId, ShownTrack, SlotInfo, TrackInfo, TrackKind, TrackSource,
};
pub use config::MediaConfig;
pub use node::MediaNode;
pub use shard::random_id;
