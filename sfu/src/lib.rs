//! Huiyi's media plane: WebRTC sessions (str0m, ICE-lite, one UDP port), rooms, and
//! selective forwarding of RTP between participants.

pub mod api;
pub mod config;
pub mod demux;
pub mod egress;
pub mod fasthash;
mod io;
pub mod metrics;
#[cfg(test)]
mod nack_tests;
mod node;
pub mod router;
mod shard;
#[doc(hidden)]
pub mod testing;

pub use api::{
    JoinRequest, LeaveReason, MediaError, ParticipantInfo, PublishedTrack, SessionEvent, SessionId,
    ShownTrack, SlotInfo, TrackInfo, TrackKind, TrackSource,
};
pub use config::MediaConfig;
pub use node::{Joined, MediaNode, SessionHandle};
pub use shard::random_id;
