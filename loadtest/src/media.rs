//! The media the virtual clients send: Opus audio encoded once at start-up from a
//! synthetic voice and replayed, with DTX while silent and an RFC 6464 level on every
//! packet; VP8-shaped video at each simulcast layer's size and rate, with keyframes and
//! a correct VP8 payload descriptor. Every payload starts with a measurement stamp.

use std::time::Duration;

/// Bytes at the start of every payload we send: magic, stream, sequence, send time.
pub const STAMP_LEN: usize = 18;
const STAMP_MAGIC: [u8; 2] = *b"HY";
/// Largest RTP payload we produce (SCENARIOS.md).
pub const MAX_PAYLOAD: usize = 1200;

/// The measurement every payload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub stream: u32,
    pub seq: u32,
    pub sent_us: u64,
}

impl Stamp {
    pub fn write(&self, out: &mut [u8]) {
        out[0..2].copy_from_slice(&STAMP_MAGIC);
        out[2..6].copy_from_slice(&self.stream.to_be_bytes());
        out[6..10].copy_from_slice(&self.seq.to_be_bytes());
        out[10..18].copy_from_slice(&self.sent_us.to_be_bytes());
    }

    pub fn read(p: &[u8]) -> Option<Stamp> {
        let s = p.get(..STAMP_LEN)?;
        if s[0..2] != STAMP_MAGIC {
            return None;
        }
        Some(Stamp {
            stream: u32::from_be_bytes(s[2..6].try_into().ok()?),
            seq: u32::from_be_bytes(s[6..10].try_into().ok()?),
            sent_us: u64::from_be_bytes(s[10..18].try_into().ok()?),
        })
    }
}

/// One Opus frame as encoded at start-up, with its RFC 6464 level (-dBov, 0..=127).
#[derive(Debug, Clone)]
pub struct OpusFrame {
    pub bytes: Vec<u8>,
    pub level: u8,
}

/// A talk's worth of encoded voice, replayed in a loop, and the DTX frame for silence.
#[derive(Debug, Clone)]
pub struct OpusLibrary {
    pub voice: Vec<OpusFrame>,
    pub silence: OpusFrame,
}

pub const AUDIO_FRAME: Duration = Duration::from_millis(20);
/// While silent with DTX, Opus sends one frame per 400 ms.
pub const DTX_INTERVAL: Duration = Duration::from_millis(400);
const SAMPLE_RATE: u32 = 48_000;
const FRAME_SAMPLES: usize = 960;

/// A voice-like signal: a glottal pulse train (pitch gliding 110-190 Hz) through a few
/// formant-like harmonics, shaped into syllables about four times a second.
fn synthetic_voice(seconds: f32) -> Vec<f32> {
    let n = (SAMPLE_RATE as f32 * seconds) as usize;
    let mut out = Vec::with_capacity(n);
    let mut phase = 0.0f32;
    for i in 0..n {
        let t = i as f32 / SAMPLE_RATE as f32;
        let f0 = 150.0 + 40.0 * (t * 0.7 * std::f32::consts::TAU).sin();
        phase += f0 / SAMPLE_RATE as f32;
        let syllable = (t * 4.1 * std::f32::consts::PI).sin().abs().powf(0.6);
        let mut s = 0.0;
        for (h, gain) in [(1.0, 1.0), (2.0, 0.6), (3.0, 0.45), (5.0, 0.3), (8.0, 0.15), (13.0, 0.08)] {
            s += gain * (phase * h * std::f32::consts::TAU).sin();
        }
        out.push(0.25 * syllable * s);
    }
    out
}

/// RFC 6464 level: 0 is loudest, 127 silence (-dBov).
pub fn audio_level(samples: &[f32]) -> u8 {
    let rms = (samples.iter().map(|s| s * s).sum::<f32>() / samples.len().max(1) as f32).sqrt();
    if rms <= 1e-6 {
        return 127;
    }
    (-20.0 * rms.log10()).round().clamp(0.0, 127.0) as u8
}

impl OpusLibrary {
    /// Encode two seconds of synthetic voice and one silent DTX frame.
    pub fn encode() -> Result<Self, opus::Error> {
        let mut encoder = opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)?;
        encoder.set_bitrate(opus::Bitrate::Bits(32_000))?;
        encoder.set_dtx(true)?;
        let pcm = synthetic_voice(2.0);
        let mut voice = Vec::new();
        for chunk in pcm.chunks_exact(FRAME_SAMPLES) {
            let bytes = encoder.encode_vec_float(chunk, 1500)?;
            voice.push(OpusFrame { bytes, level: audio_level(chunk) });
        }
        // A few frames of silence settle the encoder into DTX; keep the last one.
        let quiet = vec![0.0f32; FRAME_SAMPLES];
        let mut silence = Vec::new();
        for _ in 0..30 {
            silence = encoder.encode_vec_float(&quiet, 1500)?;
        }
        Ok(Self { voice, silence: OpusFrame { bytes: silence, level: 127 } })
    }
}

/// One simulcast layer's shape (SCENARIOS.md).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerShape {
    pub rid: &'static str,
    pub width: u16,
    pub height: u16,
    pub fps: u32,
    pub bitrate_bps: u32,
}

pub const LAYERS: [LayerShape; 3] = [
    LayerShape { rid: "q", width: 320, height: 180, fps: 15, bitrate_bps: 150_000 },
    LayerShape { rid: "h", width: 640, height: 360, fps: 30, bitrate_bps: 500_000 },
    LayerShape { rid: "f", width: 1280, height: 720, fps: 30, bitrate_bps: 1_700_000 },
];

pub fn layer(rid: &str) -> Option<LayerShape> {
    LAYERS.iter().copied().find(|l| l.rid == rid)
}

/// The layer the server sends for a tile of `width` x `height` device pixels
/// (docs/protocol.md, *Simulcast*): up to 320x240 the lowest, up to 640x480 the middle,
/// larger the highest, or the best the camera sends. `layers` is lowest first.
pub fn layer_for_tile(layers: &[LayerShape], width: u32, height: u32) -> Option<LayerShape> {
    let wanted = if width <= 320 && height <= 240 {
        0
    } else if width <= 640 && height <= 480 {
        1
    } else {
        2
    };
    layers.get(wanted.min(layers.len().checked_sub(1)?)).copied()
}

/// How much bigger a keyframe is than a delta frame.
pub const KEYFRAME_FACTOR: u32 = 6;

impl LayerShape {
    /// Position among the layers, lowest first (the server ranks q < h < f).
    pub fn rank(&self) -> usize {
        LAYERS.iter().position(|l| l.rid == self.rid).unwrap_or(0)
    }

    /// Packets per second on the wire, averaged over a keyframe interval.
    pub fn packets_per_second(&self, keyframe_interval: Duration) -> f64 {
        let frames = (keyframe_interval.as_secs_f64() * self.fps as f64).round().max(1.0) as usize;
        let (delta, key) = self.frame_sizes(keyframe_interval);
        let packets = Vp8Packetizer::plan(key).count() + (frames - 1) * Vp8Packetizer::plan(delta).count();
        packets as f64 * self.fps as f64 / frames as f64
    }

    pub fn frame_interval(&self) -> Duration {
        Duration::from_micros(1_000_000 / self.fps as u64)
    }

    /// Delta and key frame sizes so the average over a keyframe interval hits the bitrate.
    pub fn frame_sizes(&self, keyframe_interval: Duration) -> (usize, usize) {
        let frames = (keyframe_interval.as_secs_f64() * self.fps as f64).max(1.0);
        let average = self.bitrate_bps as f64 / 8.0 / self.fps as f64;
        let delta = average * frames / (frames - 1.0 + KEYFRAME_FACTOR as f64);
        (delta as usize, delta as usize * KEYFRAME_FACTOR as usize)
    }
}

/// A keyframe while its packets arrive, in any order and retransmitted ones included:
/// whole once every sequence number from its first packet to its marker has come.
#[derive(Debug, Clone)]
pub struct FirstFrame {
    timestamp: u32,
    first: u64,
    last: Option<u64>,
    received: Vec<u64>,
}

impl FirstFrame {
    /// Its first packet (the keyframe start) arrived: RTP timestamp and sequence number.
    pub fn new(timestamp: u32, first: u64) -> Self {
        Self { timestamp, first, last: None, received: vec![first] }
    }

    pub fn timestamp(&self) -> u32 {
        self.timestamp
    }

    /// A packet of the stream arrived; true when it made the frame whole.
    pub fn add(&mut self, timestamp: u32, seq: u64, marker: bool) -> bool {
        if timestamp != self.timestamp || seq < self.first || self.received.len() > 4096 {
            return false;
        }
        if !self.received.contains(&seq) {
            self.received.push(seq);
        }
        if marker {
            self.last = Some(seq);
        }
        self.last.is_some_and(|last| {
            self.received.iter().filter(|s| **s <= last).count() as u64 == last - self.first + 1
        })
    }
}

/// When a layer sends keyframes: every interval, and at the next frame after a request.
#[derive(Debug, Clone)]
pub struct KeyframeSchedule {
    frames_per_key: u32,
    frame_in_interval: u32,
    requested: bool,
}

impl KeyframeSchedule {
    pub fn new(shape: &LayerShape, interval: Duration) -> Self {
        let frames_per_key = (interval.as_secs_f64() * shape.fps as f64).round().max(1.0) as u32;
        Self { frames_per_key, frame_in_interval: 0, requested: false }
    }

    /// A keyframe request (PLI or FIR) arrived.
    pub fn request(&mut self) {
        self.requested = true;
    }

    /// Advance one frame: is it a keyframe?
    pub fn next_is_keyframe(&mut self) -> bool {
        let key = self.requested || self.frame_in_interval == 0;
        self.requested = false;
        self.frame_in_interval = if key { 1 } else { (self.frame_in_interval + 1) % self.frames_per_key };
        key
    }
}

/// Splits VP8-shaped frames of one layer into RTP payloads.
#[derive(Debug, Clone)]
pub struct Vp8Packetizer {
    picture_id: u16,
    tl0: u8,
}

impl Default for Vp8Packetizer {
    fn default() -> Self {
        Self { picture_id: fastrand::u16(..0x7fff), tl0: 0 }
    }
}

/// One packet of a frame: the payload length and whether it is the frame's last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketPlan {
    pub len: usize,
    pub first: bool,
    pub last: bool,
}

/// VP8 payload descriptor length we write: X, I (15-bit picture id) and L (TL0PICIDX).
pub const VP8_DESCRIPTOR_LEN: usize = 5;

impl Vp8Packetizer {
    /// Payload sizes for a frame of `frame_bytes`, each at most MAX_PAYLOAD.
    pub fn plan(frame_bytes: usize) -> impl Iterator<Item = PacketPlan> {
        let room = MAX_PAYLOAD - VP8_DESCRIPTOR_LEN;
        let frame_bytes = frame_bytes.max(STAMP_LEN + 10);
        let count = frame_bytes.div_ceil(room);
        // Even split, so the last packet is not a runt.
        let base = frame_bytes / count;
        let extra = frame_bytes % count;
        (0..count).map(move |i| PacketPlan {
            len: VP8_DESCRIPTOR_LEN + base + usize::from(i < extra),
            first: i == 0,
            last: i + 1 == count,
        })
    }

    /// Start a new frame (advances the picture id).
    pub fn next_frame(&mut self, keyframe: bool) {
        self.picture_id = (self.picture_id + 1) & 0x7fff;
        if keyframe {
            self.tl0 = self.tl0.wrapping_add(1);
        }
    }

    /// Write one payload: descriptor, then (in the first packet) the VP8 frame header,
    /// then the measurement stamp and filler.
    pub fn write(
        &self,
        plan: PacketPlan,
        keyframe: bool,
        stamp: Stamp,
        shape: &LayerShape,
        out: &mut Vec<u8>,
    ) {
        out.clear();
        out.push(0x80 | if plan.first { 0x10 } else { 0 }); // X, S, PID 0
        out.push(0x80 | 0x40); // I, L
        out.push(0x80 | (self.picture_id >> 8) as u8); // M: 15-bit picture id
        out.push(self.picture_id as u8);
        out.push(self.tl0);
        let mut frame_header = [0u8; 10];
        let header_len = if plan.first {
            // Frame tag: P bit 0 for keyframes; show_frame set.
            frame_header[0] = if keyframe { 0x10 } else { 0x11 };
            if keyframe {
                frame_header[3..6].copy_from_slice(&[0x9d, 0x01, 0x2a]);
                frame_header[6..8].copy_from_slice(&shape.width.to_le_bytes());
                frame_header[8..10].copy_from_slice(&shape.height.to_le_bytes());
                10
            } else {
                3
            }
        } else {
            0
        };
        out.extend_from_slice(&frame_header[..header_len]);
        let mut s = [0u8; STAMP_LEN];
        stamp.write(&mut s);
        out.extend_from_slice(&s);
        let filler = plan.len.saturating_sub(out.len());
        out.extend(std::iter::repeat_n(0xa5u8, filler));
    }
}

/// Where a payload's stamp sits: after the VP8 descriptor and frame header, or at 0 for audio.
pub fn find_stamp(payload: &[u8], video: bool) -> Option<Stamp> {
    if !video {
        return Stamp::read(payload);
    }
    let first = *payload.first()?;
    let start = first & 0x10 != 0;
    let header = if start {
        let p = *payload.get(VP8_DESCRIPTOR_LEN)?;
        if p & 0x01 == 0 { 10 } else { 3 }
    } else {
        0
    };
    Stamp::read(payload.get(VP8_DESCRIPTOR_LEN + header..)?)
}

/// The stamp of an audio or a video payload, and whether it was video: an audio payload
/// starts with the stamp's magic, which a VP8 descriptor (X bit set) never does.
pub fn find_any_stamp(payload: &[u8]) -> Option<(Stamp, bool)> {
    match Stamp::read(payload) {
        Some(stamp) => Some((stamp, false)),
        None => Some((find_stamp(payload, true)?, true)),
    }
}

/// True when a VP8 payload starts a keyframe (descriptor S=1, PID=0, frame tag P=0).
pub fn vp8_is_keyframe_start(payload: &[u8]) -> bool {
    payload.first().is_some_and(|b| b & 0x10 != 0 && b & 0x07 == 0)
        && payload.get(VP8_DESCRIPTOR_LEN).is_some_and(|p| p & 0x01 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_rejects_foreign_payloads() {
        let s = Stamp { stream: 7, seq: 99, sent_us: 123_456_789 };
        let mut buf = [0u8; STAMP_LEN];
        s.write(&mut buf);
        assert_eq!(Stamp::read(&buf), Some(s));
        assert_eq!(Stamp::read(&[0u8; STAMP_LEN]), None);
        assert_eq!(Stamp::read(&buf[..10]), None);
    }

    #[test]
    fn layer_frame_sizes_hit_bitrate_within_ten_percent() {
        let interval = Duration::from_secs(3);
        for shape in LAYERS {
            let (delta, key) = shape.frame_sizes(interval);
            assert_eq!(key, delta * KEYFRAME_FACTOR as usize);
            let frames = 3 * shape.fps as usize;
            let bytes: usize = (0..frames).map(|i| if i == 0 { key } else { delta }).sum();
            // Count what goes on the wire: payloads including descriptors.
            let payload: usize = (0..frames)
                .map(|i| Vp8Packetizer::plan(if i == 0 { key } else { delta }).map(|p| p.len).sum::<usize>())
                .sum();
            let bps = payload as f64 * 8.0 / 3.0;
            let target = shape.bitrate_bps as f64;
            assert!((bps - target).abs() / target < 0.10, "{} at {bps} bps vs {target}", shape.rid);
            assert!(bytes > 0);
        }
    }

    #[test]
    fn layer_rates_and_tile_choice() {
        let interval = Duration::from_secs(3);
        let q = layer("q").unwrap();
        let f = layer("f").unwrap();
        // q: 15 fps of ~1 packet each; f: 30 fps of ~6 packets each.
        assert!((15.0..20.0).contains(&q.packets_per_second(interval)), "{}", q.packets_per_second(interval));
        assert!(
            (170.0..220.0).contains(&f.packets_per_second(interval)),
            "{}",
            f.packets_per_second(interval)
        );
        let all: Vec<LayerShape> = LAYERS.to_vec();
        assert_eq!(layer_for_tile(&all, 320, 180).unwrap().rid, "q");
        assert_eq!(layer_for_tile(&all, 640, 360).unwrap().rid, "h");
        assert_eq!(layer_for_tile(&all, 1280, 720).unwrap().rid, "f");
        assert_eq!(layer_for_tile(&all[..2], 1280, 720).unwrap().rid, "h", "the best it sends");
        assert_eq!(layer_for_tile(&all[1..2], 320, 180).unwrap().rid, "h", "the only layer");
        assert_eq!(layer_for_tile(&[], 320, 180), None);
        assert!(all.iter().enumerate().all(|(i, l)| l.rank() == i));
    }

    #[test]
    fn a_first_frame_is_whole_with_every_packet_in_any_order() {
        let mut f = FirstFrame::new(900, 10);
        assert!(!f.add(900, 10, false), "the start again");
        assert!(!f.add(900, 12, true), "the marker, with 11 missing");
        assert!(!f.add(1800, 11, false), "another frame's packet");
        assert!(f.add(900, 11, false), "11 retransmitted: whole");
        let mut single = FirstFrame::new(5, 7);
        assert!(single.add(5, 7, true), "a one-packet keyframe");
        let mut early = FirstFrame::new(5, 7);
        assert!(!early.add(5, 6, false), "before its start: not part of it");
    }

    #[test]
    fn keyframe_every_interval_and_on_request() {
        for shape in LAYERS {
            let mut schedule = KeyframeSchedule::new(&shape, Duration::from_secs(3));
            let keys: Vec<u32> = (0..10 * shape.fps).filter(|_| schedule.next_is_keyframe()).collect();
            let expected: Vec<u32> = (0..10 * shape.fps).step_by(3 * shape.fps as usize).collect();
            assert_eq!(keys, expected, "{}: a keyframe every 3 s", shape.rid);
        }
        let shape = layer("h").unwrap();
        let mut schedule = KeyframeSchedule::new(&shape, Duration::from_secs(3));
        assert!(schedule.next_is_keyframe());
        assert!(!schedule.next_is_keyframe());
        schedule.request();
        assert!(schedule.next_is_keyframe(), "a PLI makes the next frame a keyframe");
        let until_next = (0..200).position(|_| schedule.next_is_keyframe()).unwrap();
        assert_eq!(until_next, 89, "and restarts the interval");
        let (delta, key) = shape.frame_sizes(Duration::from_secs(3));
        assert!((5..=8).contains(&(key / delta)), "a keyframe is 5-8x a delta frame");
    }

    #[test]
    fn packets_are_at_most_1200_bytes_and_cover_the_frame() {
        for frame in [50, 1195, 1196, 2083, 7083, 42_498] {
            let plans: Vec<PacketPlan> = Vp8Packetizer::plan(frame).collect();
            assert!(plans.iter().all(|p| p.len <= MAX_PAYLOAD), "frame {frame}: {plans:?}");
            let body: usize = plans.iter().map(|p| p.len - VP8_DESCRIPTOR_LEN).sum();
            assert_eq!(body, frame.max(STAMP_LEN + 10));
            assert!(plans[0].first && plans.last().unwrap().last);
            assert_eq!(plans.iter().filter(|p| p.first).count(), 1);
        }
    }

    #[test]
    fn vp8_descriptor_fields() {
        let shape = layer("h").unwrap();
        let mut p = Vp8Packetizer::default();
        p.next_frame(true);
        let stamp = Stamp { stream: 1, seq: 2, sent_us: 3 };
        let mut out = Vec::new();
        let plans: Vec<PacketPlan> = Vp8Packetizer::plan(5000).collect();
        p.write(plans[0], true, stamp, &shape, &mut out);
        assert_eq!(out.len(), plans[0].len);
        assert_eq!(out[0], 0x90, "X and S set, partition 0");
        assert_eq!(out[1] & 0xc0, 0xc0, "I and L present");
        assert!(out[2] & 0x80 != 0, "15-bit picture id");
        assert!(vp8_is_keyframe_start(&out));
        assert_eq!(&out[VP8_DESCRIPTOR_LEN + 3..VP8_DESCRIPTOR_LEN + 6], &[0x9d, 0x01, 0x2a]);
        assert_eq!(find_stamp(&out, true), Some(stamp));
        let pid = u16::from_be_bytes([out[2] & 0x7f, out[3]]);
        p.write(plans[1], true, stamp, &shape, &mut out);
        assert_eq!(out[0], 0x80, "continuation: S clear");
        assert!(!vp8_is_keyframe_start(&out));
        assert_eq!(find_stamp(&out, true), Some(stamp));
        p.next_frame(false);
        p.write(plans[0], false, stamp, &shape, &mut out);
        assert!(!vp8_is_keyframe_start(&out), "delta frame has P=1");
        assert_eq!(u16::from_be_bytes([out[2] & 0x7f, out[3]]), (pid + 1) & 0x7fff);
        assert_eq!(find_stamp(&out, true), Some(stamp));
        assert_eq!(find_any_stamp(&out), Some((stamp, true)), "a video payload tells itself apart");
    }

    #[test]
    fn audio_payload_tells_itself_apart() {
        let stamp = Stamp { stream: 5, seq: 6, sent_us: 7 };
        let mut out = vec![0u8; STAMP_LEN];
        stamp.write(&mut out);
        out.extend_from_slice(&[0xfc, 0xff, 0xfe]);
        assert_eq!(find_any_stamp(&out), Some((stamp, false)));
        assert_eq!(find_any_stamp(&out[1..]), None, "not a stamp either way");
    }

    #[test]
    fn opus_library_has_voice_and_a_tiny_dtx_frame() {
        let lib = OpusLibrary::encode().expect("opus encodes");
        assert_eq!(lib.voice.len(), 100, "two seconds of 20 ms frames");
        let avg = lib.voice.iter().map(|f| f.bytes.len()).sum::<usize>() / lib.voice.len();
        assert!((40..=120).contains(&avg), "about 32 kbps: {avg} bytes per frame");
        assert!(lib.silence.bytes.len() <= 3, "DTX frame is tiny: {}", lib.silence.bytes.len());
        assert!(lib.voice.iter().any(|f| f.level < 40), "voice is loud somewhere");
    }

    #[test]
    fn audio_level_is_minus_dbov() {
        assert_eq!(audio_level(&[0.0; 960]), 127);
        assert_eq!(audio_level(&[1.0; 960]), 0);
        let half: Vec<f32> = vec![0.1; 960];
        assert_eq!(audio_level(&half), 20);
    }
}
