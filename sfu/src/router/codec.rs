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

    /// RED (RFC 2198) carrying Opus, as a session negotiated it beside Opus.
    pub fn opus_red() -> Self {
        CodecKey { codec: Codec::Red, clock_rate: 48_000, h264: None }
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

/// How a sink takes what a source sends: its payload type, and whether the source's RED
/// is unwrapped to its primary Opus first (a peer that negotiated Opus without RED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutFormat {
    pub pt: u8,
    pub unwrap_red: bool,
}

/// The format a peer that negotiated `negotiated` gets `sent` in, if any.
pub fn out_format(negotiated: &PayloadTypes, sent: &CodecKey) -> Option<OutFormat> {
    if let Some(pt) = matching_pt(negotiated, sent) {
        return Some(OutFormat { pt, unwrap_red: false });
    }
    if sent.codec != Codec::Red {
        return None;
    }
    let primary = CodecKey { codec: Codec::Opus, ..*sent };
    matching_pt(negotiated, &primary).map(|pt| OutFormat { pt, unwrap_red: true })
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

    #[test]
    fn red_passes_to_a_red_peer_and_is_unwrapped_for_an_opus_one() {
        let opus = CodecKey { codec: Codec::Opus, clock_rate: 48_000, h264: None };
        let red = CodecKey::opus_red();
        let with_red = vec![(111, opus), (63, red)];
        let without = vec![(109, opus)];
        assert_eq!(out_format(&with_red, &red), Some(OutFormat { pt: 63, unwrap_red: false }));
        assert_eq!(out_format(&without, &red), Some(OutFormat { pt: 109, unwrap_red: true }));
        assert_eq!(
            out_format(&with_red, &opus),
            Some(OutFormat { pt: 111, unwrap_red: false }),
            "Opus stays Opus"
        );
        assert_eq!(out_format(&vec![], &red), None);
    }
}
