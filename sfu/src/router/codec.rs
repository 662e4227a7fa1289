//! What a payload type means, as far as forwarding cares: a sink's payload type for a
//! source's codec is found once per source format, from what the sink negotiated, not
//! looked up in the subscriber's engine per packet.

use str0m::format::Codec;

use super::rtp::VideoCodec;

/// A codec as negotiated in SDP, reduced to what decides whether a receiver plays it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodecKey {
    pub codec: Codec,
    pub clock_rate: u32,
    /// H.264 only: packetization-mode and profile_idc (the top byte of profile-level-id).
    pub h264: Option<(Option<u8>, Option<u32>)>,
}

impl CodecKey {
    /// Whether a receiver that negotiated `self` plays what a sender of `sent` sends. An
    /// H.264 decoder of a profile handles every level and constraint set a sender of it
    /// uses in practice (42e01f constrained baseline plays on a 42001f baseline decoder),
    /// so levels do not block; the packetization mode must match.
    pub fn plays(&self, sent: &CodecKey) -> bool {
        self.codec == sent.codec
            && self.clock_rate == sent.clock_rate
            && (self.codec != Codec::H264 || self.h264 == sent.h264)
    }

    pub fn video_codec(&self) -> Option<VideoCodec> {
        match self.codec {
            Codec::Vp8 => Some(VideoCodec::Vp8),
            Codec::H264 => Some(VideoCodec::H264),
            _ => None,
        }
    }
}

/// The profile_idc of an H.264 profile-level-id.
pub fn h264_profile(profile_level_id: Option<u32>) -> Option<u32> {
    profile_level_id.map(|p| p >> 16)
}

/// Payload types and their codecs, as one side of a session negotiated them.
pub type PayloadTypes = Vec<(u8, CodecKey)>;

/// The payload type in `negotiated` that plays `sent`.
pub fn matching_pt(negotiated: &PayloadTypes, sent: &CodecKey) -> Option<u8> {
    negotiated.iter().find(|(_, key)| key.plays(sent)).map(|(pt, _)| *pt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h264(mode: u8, profile_level_id: u32) -> CodecKey {
        let h264 = Some((Some(mode), h264_profile(Some(profile_level_id))));
        CodecKey { codec: Codec::H264, clock_rate: 90_000, h264 }
    }

    #[test]
    fn h264_levels_do_not_block_but_profiles_and_modes_do() {
        let table = vec![(102, h264(1, 0x42001f)), (127, h264(0, 0x42001f)), (125, h264(1, 0x4d001f))];
        assert_eq!(matching_pt(&table, &h264(1, 0x42e01f)), Some(102), "constrained baseline on baseline");
        assert_eq!(matching_pt(&table, &h264(0, 0x42e01f)), Some(127), "mode 0 only on mode 0");
        assert_eq!(matching_pt(&table, &h264(1, 0x640c1f)), None, "high profile has no decoder here");
    }

    #[test]
    fn other_codecs_match_by_name_and_clock() {
        let opus = CodecKey { codec: Codec::Opus, clock_rate: 48_000, h264: None };
        let vp8 = CodecKey { codec: Codec::Vp8, clock_rate: 90_000, h264: None };
        let table = vec![(96, vp8), (111, opus)];
        assert_eq!(matching_pt(&table, &opus), Some(111));
        assert_eq!(matching_pt(&table, &vp8), Some(96));
        assert_eq!(matching_pt(&table, &CodecKey { codec: Codec::Vp9, ..vp8 }), None);
    }
}
