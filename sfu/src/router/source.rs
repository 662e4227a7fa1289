//! A source: one incoming track (a WebRTC publication today, a relay link's track
//! tomorrow) with its simulcast layers, and the sinks it feeds.

use std::time::{Duration, Instant};

use str0m::media::{Mid, Rid};

use super::codec::CodecKey;
use super::rtp::{KeyframeThrottle, VideoCodec};
use super::select::MAX_LAYERS;
use crate::api::{SessionId, TrackInfo};

/// A layer that sent nothing for this long counts as stopped.
const LAYER_STALE: Duration = Duration::from_millis(1000);

/// A source is named by the endpoint it arrives from and its mid there; a sink likewise by
/// the endpoint it goes to and the mid it goes out on.
pub type SourceKey = (SessionId, Mid);
pub type SinkKey = (SessionId, Mid);

/// A sink a source feeds, with its place among its endpoint's sinks (`PlacedMap`), so the
/// packet path reaches it without a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    pub sink: SinkKey,
    pub at: u32,
}

/// One simulcast layer of a source as it arrives (the only layer, without simulcast).
pub struct Layer {
    pub ssrc: Option<u32>,
    pub rid: Option<Rid>,
    /// The publisher was told to stop sending it (nobody takes it).
    pub paused: bool,
    /// Since when no sink takes it.
    pub unneeded_since: Option<Instant>,
    /// Payload bytes since the last measurement, and the measured bits per second.
    pub bytes: u64,
    pub bps: u64,
    pub last_packet: Option<Instant>,
    pub keyframe_throttle: KeyframeThrottle,
    /// Since its last keyframe, when the source keeps a cache (a broadcast's video).
    pub gop: super::gop::Gop,
}

pub struct Source {
    pub track: TrackInfo,
    /// Muted by a host: nothing of it is forwarded until its owner unmutes it.
    pub held: bool,
    pub owner_participant: String,
    /// The sinks carrying it.
    pub sinks: Vec<Fed>,
    /// Incoming layers by rank; keyframe requests go to a layer's SSRC.
    pub layers: [Layer; MAX_LAYERS],
    /// Payload type of the last packet and the codec it means.
    pub format: Option<(u8, CodecKey)>,
    pub video_codec: Option<VideoCodec>,
    /// What its payload types mean, when not its owner endpoint's table (a relayed track:
    /// one relay endpoint brings tracks of several publishers).
    pub codecs: Option<super::PayloadTypes>,
    /// New sinks start from the cached keyframe (a broadcast's video: a relayed track, or
    /// one whose publisher receives nothing).
    pub cache_keyframes: bool,
}

impl Source {
    pub fn new(track: TrackInfo, owner_participant: String, keyframe_interval: Duration) -> Self {
        Self {
            track,
            held: false,
            owner_participant,
            sinks: Vec::new(),
            layers: std::array::from_fn(|_| Layer {
                ssrc: None,
                rid: None,
                paused: false,
                unneeded_since: None,
                bytes: 0,
                bps: 0,
                last_packet: None,
                keyframe_throttle: KeyframeThrottle::new(keyframe_interval),
                gop: Default::default(),
            }),
            format: None,
            video_codec: None,
            codecs: None,
            cache_keyframes: false,
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
