//! Keyframe detection in RTP payloads (VP8 and H.264) and throttling of keyframe
//! requests, so a storm of PLIs from many subscribers costs the publisher one keyframe.

use std::time::{Duration, Instant};

/// Video codecs we forward and can inspect for keyframes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    Vp8,
    H264,
}

/// True when this packet starts a keyframe (VP8) or carries an IDR or SPS (H.264).
pub fn starts_keyframe(codec: VideoCodec, payload: &[u8]) -> bool {
    match codec {
        VideoCodec::Vp8 => vp8_starts_keyframe(payload),
        VideoCodec::H264 => h264_has_keyframe(payload),
    }
}

/// VP8 payload descriptor (RFC 7741 section 4.2), then the VP8 payload header's P bit.
fn vp8_starts_keyframe(p: &[u8]) -> bool {
    let Some(&first) = p.first() else { return false };
    let extended = first & 0x80 != 0;
    let start_of_partition = first & 0x10 != 0;
    let partition_id = first & 0x07;
    if !start_of_partition || partition_id != 0 {
        return false;
    }
    let mut i = 1;
    if extended {
        let Some(&x) = p.get(i) else { return false };
        i += 1;
        if x & 0x80 != 0 {
            // I: picture id, 7 or 15 bits.
            let Some(&pid) = p.get(i) else { return false };
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // L: TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // T or K: TID/Y/KEYIDX
        }
    }
    // P bit of the VP8 frame header: 0 means keyframe.
    p.get(i).is_some_and(|h| h & 0x01 == 0)
}

/// H.264 (RFC 6184): single NAL, STAP-A aggregates and the first FU-A fragment.
fn h264_has_keyframe(p: &[u8]) -> bool {
    let is_key = |nal_type: u8| nal_type == 5 || nal_type == 7;
    let Some(&first) = p.first() else { return false };
    match first & 0x1f {
        24 => {
            let mut i = 1;
            while i + 2 < p.len() {
                let size = u16::from_be_bytes([p[i], p[i + 1]]) as usize;
                if size == 0 {
                    return false;
                }
                if is_key(p[i + 2] & 0x1f) {
                    return true;
                }
                i += 2 + size;
            }
            false
        }
        28 => p.get(1).is_some_and(|fu| fu & 0x80 != 0 && is_key(fu & 0x1f)),
        t => is_key(t),
    }
}

/// Lets at most one keyframe request through per interval. A request refused inside
/// the interval is remembered and let through when the interval ends, unless a
/// keyframe arrived meanwhile.
#[derive(Debug, Clone)]
pub struct KeyframeThrottle {
    min_interval: Duration,
    last_sent: Option<Instant>,
    deferred: bool,
}

impl KeyframeThrottle {
    pub fn new(min_interval: Duration) -> Self {
        Self { min_interval, last_sent: None, deferred: false }
    }

    /// A subscriber wants a keyframe: true when the request should go to the publisher now.
    pub fn request(&mut self, now: Instant) -> bool {
        if self.last_sent.is_some_and(|t| now.duration_since(t) < self.min_interval) {
            self.deferred = true;
            return false;
        }
        self.last_sent = Some(now);
        self.deferred = false;
        true
    }

    /// A keyframe arrived from the publisher: any deferred request is satisfied.
    pub fn keyframe_received(&mut self) {
        self.deferred = false;
    }

    /// When a deferred request is due, the time it becomes due.
    pub fn deferred_due(&self) -> Option<Instant> {
        self.deferred.then(|| self.last_sent.map(|t| t + self.min_interval)).flatten()
    }

    /// True when a deferred request should be sent now.
    pub fn poll(&mut self, now: Instant) -> bool {
        match self.deferred_due() {
            Some(due) if now >= due => self.request(now),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframe_with_and_without_extensions() {
        // S=1, PID=0, no extension; VP8 header P=0.
        assert!(starts_keyframe(VideoCodec::Vp8, &[0x10, 0x00, 0x9d, 0x01, 0x2a]));
        // Same with P=1: an interframe.
        assert!(!starts_keyframe(VideoCodec::Vp8, &[0x10, 0x01]));
        // X=1, I=1 with 15-bit picture id, L=1, T=1; then P=0.
        assert!(starts_keyframe(VideoCodec::Vp8, &[0x90, 0xe0, 0x80, 0x05, 0x01, 0x20, 0x50]));
        // Not the start of a partition.
        assert!(!starts_keyframe(VideoCodec::Vp8, &[0x00, 0x00]));
        // Truncated input never panics.
        assert!(!starts_keyframe(VideoCodec::Vp8, &[0x90, 0x80]));
        assert!(!starts_keyframe(VideoCodec::Vp8, &[]));
    }

    #[test]
    fn h264_keyframes() {
        assert!(starts_keyframe(VideoCodec::H264, &[0x65, 0x88]), "IDR");
        assert!(starts_keyframe(VideoCodec::H264, &[0x67, 0x42]), "SPS");
        assert!(!starts_keyframe(VideoCodec::H264, &[0x41, 0x9a]), "non-IDR slice");
        // STAP-A with an SPS inside.
        assert!(starts_keyframe(VideoCodec::H264, &[0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x01, 0x68]));
        // FU-A start fragment of an IDR, then a middle fragment.
        assert!(starts_keyframe(VideoCodec::H264, &[0x7c, 0x85, 0x00]));
        assert!(!starts_keyframe(VideoCodec::H264, &[0x7c, 0x05, 0x00]));
        // Malformed STAP-A sizes never panic.
        assert!(!starts_keyframe(VideoCodec::H264, &[0x78, 0xff, 0xff, 0x41]));
    }

    #[test]
    fn throttle_lets_one_request_per_interval_and_defers_the_rest() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut t = KeyframeThrottle::new(ms(500));
        assert!(t.request(t0));
        assert!(!t.request(t0 + ms(10)));
        assert!(!t.request(t0 + ms(20)));
        assert_eq!(t.deferred_due(), Some(t0 + ms(500)));
        assert!(!t.poll(t0 + ms(499)));
        assert!(t.poll(t0 + ms(500)), "the deferred request goes out once the interval ends");
        assert!(!t.poll(t0 + ms(1000)), "and only once");
        assert!(t.request(t0 + ms(1000)));
    }

    #[test]
    fn throttle_drops_deferred_request_when_keyframe_arrives() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut t = KeyframeThrottle::new(ms(500));
        assert!(t.request(t0));
        assert!(!t.request(t0 + ms(100)));
        t.keyframe_received();
        assert_eq!(t.deferred_due(), None);
        assert!(!t.poll(t0 + ms(600)));
    }
}
