//! Forwarding: what one source packet becomes for one sink. One strategy per file
//! (`plain`, `simulcast`, `relay`), over the numbering helpers in `rtp/`. No sockets, no
//! clocks: time comes in as arguments.

mod plain;
mod relay;
mod simulcast;

use std::cell::OnceCell;
use std::sync::Arc;
use std::time::Instant;

use super::codec::CodecKey;
use super::rtp::Vp8Renumber;
use super::sink::{Sink, Strategy};

/// One RTP packet as it arrived from a source.
#[derive(Debug, Clone)]
pub struct SourcePacket {
    pub ssrc: u32,
    pub seq: u16,
    pub timestamp: u32,
    pub marker: bool,
    pub pt: u8,
    pub payload: Arc<[u8]>,
    /// RFC 6464 level (-dBov) and voice flag, for audio.
    pub audio_level: Option<i8>,
    pub voice_activity: Option<bool>,
    pub arrival: Instant,
}

/// One packet for one sink, numbered for it: the driver seals and sends it.
#[derive(Debug, Clone)]
pub struct Forwarded {
    pub pt: u8,
    /// Extended sequence number: the low 16 bits go on the wire.
    pub seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    pub payload: Arc<[u8]>,
    pub vp8: Option<Vp8Renumber>,
    pub audio_level: Option<(i8, bool)>,
    pub video: bool,
    /// The source layer it came from, and its SSRC there: what a relay link carries to
    /// the next node (WebRTC sinks need neither).
    #[allow(dead_code)]
    pub layer: u8,
    #[allow(dead_code)]
    pub source_ssrc: u32,
    pub arrival: Instant,
}

/// What the source packet is, once, for all its sinks.
pub struct Arrived<'a> {
    pub packet: &'a SourcePacket,
    pub layer: u8,
    pub keyframe: bool,
    pub format: (u8, CodecKey),
    pub video: bool,
    pub vp8: bool,
    /// Arrival in ms on the router's own time line.
    pub arrival_ms: u64,
    /// RED audio: where its primary block starts (`rtp::red`).
    pub red_primary: Option<usize>,
    /// The primary block alone, made once for every sink that negotiated no RED.
    pub unwrapped: OnceCell<Arc<[u8]>>,
}

/// What a strategy made of one packet for one sink.
#[derive(Debug)]
pub enum Decision {
    Send {
        packet: Forwarded,
        /// The sink switched to this packet's layer (at its keyframe).
        switched: bool,
    },
    /// Nothing for this sink (another layer, a stale source, not negotiated yet).
    Skip,
    /// The sink waits for a keyframe of this layer to switch to it.
    WaitsForKeyframe,
    /// The sink has no layer to take: choose again from what arrives.
    Retarget,
    /// The peer negotiated no payload type for the source's codec.
    NoCodec,
}

/// What `sink` gets of `arrived`.
pub fn decide(sink: &mut Sink, arrived: &Arrived) -> Decision {
    if !sink.active {
        return Decision::Skip;
    }
    match sink.strategy {
        Strategy::Plain => plain::forward(sink, arrived),
        Strategy::Simulcast => simulcast::forward(sink, arrived),
        Strategy::Relay => relay::forward(sink, arrived),
    }
}

impl Arrived<'_> {
    /// The payload a sink gets: the packet's own, or the primary of its RED.
    fn payload(&self, unwrap_red: bool) -> Option<Arc<[u8]>> {
        if !unwrap_red {
            return Some(self.packet.payload.clone());
        }
        let start = self.red_primary?;
        Some(self.unwrapped.get_or_init(|| Arc::from(&self.packet.payload[start..])).clone())
    }

    fn forwarded(&self, pt: u8, seq: u64, timestamp: u32, vp8: Option<Vp8Renumber>) -> Forwarded {
        let p = self.packet;
        Forwarded {
            pt,
            seq,
            timestamp,
            marker: p.marker,
            payload: p.payload.clone(),
            vp8,
            audio_level: p.audio_level.map(|l| (l, p.voice_activity.unwrap_or(false))),
            video: self.video,
            layer: self.layer,
            source_ssrc: p.ssrc,
            arrival: p.arrival,
        }
    }
}
