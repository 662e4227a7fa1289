//! Huiyi's media plane: WebRTC sessions (str0m, ICE-lite, one UDP port), rooms, and
//! selective forwarding of RTP between participants. The control plane sees the node API
//! (`api`) and the node that answers it (`MediaNode`); everything else is internal, open
//! to the benchmarks through the `internals` feature.

mod admission;
pub mod api;
pub mod config;
mod fasthash;
mod health;
mod io;
mod metrics;
#[cfg(test)]
mod nack_tests;
mod node;
mod placed;
pub mod relay;
mod shard;

#[cfg(feature = "internals")]
pub mod demux;
#[cfg(not(feature = "internals"))]
mod demux;
#[cfg(feature = "internals")]
pub mod egress;
#[cfg(not(feature = "internals"))]
mod egress;
#[cfg(feature = "internals")]
pub mod router;
#[cfg(not(feature = "internals"))]
mod router;
#[cfg(any(test, feature = "internals"))]
#[doc(hidden)]
pub mod testing;

pub use api::{
    JoinRequest, Joined, LeaveReason, MediaError, MediaSession, NodeApi, ParticipantInfo, PublishedTrack,
    SessionEvent, SessionId, ShownTrack, SlotInfo, TrackInfo, TrackKind, TrackSource,
};
pub use config::MediaConfig;
pub use node::MediaNode;
pub use relay::RelaySettings;
pub use router::rtp::VideoCodec;
