//! The relay link's wire format (docs/protocol.md, "Relay links").
//!
//! Media: one QUIC datagram per RTP packet, prefixed with its flow id as a QUIC varint
//! (RFC 9000 section 16, as the RTP-over-QUIC draft does). A flow is one layer of one
//! track of one subscribed room: `room_slot << 12 | track << 2 | layer`. The RTP packet
//! keeps the publisher's SSRC, sequence number, timestamp and payload type; the audio
//! level travels as an RFC 6464 one-byte header extension (id 1).
//!
//! Control: one bidirectional stream, opened by the child, of length-prefixed JSON
//! messages ([`Control`]): u32 big-endian length, then the message.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// ALPN of the relay protocol.
pub const ALPN: &[u8] = b"huiyi-relay/1";
/// The largest control message accepted.
pub const MAX_CONTROL_BYTES: usize = 256 * 1024;
/// Tracks a room may have on one link (the flow id's track bits).
pub const MAX_TRACKS_PER_ROOM: u32 = 1 << 10;
const AUDIO_LEVEL_EXT: u8 = 1;

/// A flow id: one layer of one track of one room subscription on a link.
pub fn flow_id(slot: u32, track: u32, layer: u8) -> u64 {
    (u64::from(slot) << 12) | (u64::from(track & (MAX_TRACKS_PER_ROOM - 1)) << 2) | u64::from(layer & 3)
}

/// The room slot, track and layer of a flow id.
pub fn split_flow(flow: u64) -> (u32, u32, u8) {
    ((flow >> 12) as u32, ((flow >> 2) & u64::from(MAX_TRACKS_PER_ROOM - 1)) as u32, (flow & 3) as u8)
}

/// One RTP packet on a relay link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayPacket {
    pub flow: u64,
    pub pt: u8,
    pub seq: u16,
    pub timestamp: u32,
    pub marker: bool,
    pub ssrc: u32,
    /// RFC 6464: level in -dBov and the voice flag.
    pub audio_level: Option<(i8, bool)>,
    pub payload: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("datagram too short")]
    Short,
    #[error("not RTP version 2")]
    NotRtp,
}

impl RelayPacket {
    pub fn encode(&self) -> Bytes {
        self.encode_with(&self.payload)
    }

    /// The datagram of this header with `payload` (so a forwarded packet's payload is
    /// copied once, into the datagram).
    pub fn encode_with(&self, payload: &[u8]) -> Bytes {
        let mut b = BytesMut::with_capacity(8 + 12 + 8 + payload.len());
        put_varint(&mut b, self.flow);
        let extension = self.audio_level.is_some();
        b.put_u8(0x80 | if extension { 0x10 } else { 0 });
        b.put_u8((self.pt & 0x7f) | if self.marker { 0x80 } else { 0 });
        b.put_u16(self.seq);
        b.put_u32(self.timestamp);
        b.put_u32(self.ssrc);
        if let Some((level, voice)) = self.audio_level {
            // One-byte header extensions (RFC 8285): one element of one byte, padded.
            b.put_u16(0xBEDE);
            b.put_u16(1);
            b.put_u8(AUDIO_LEVEL_EXT << 4);
            b.put_u8((level.unsigned_abs().min(127)) | if voice { 0x80 } else { 0 });
            b.put_u16(0);
        }
        b.put_slice(payload);
        b.freeze()
    }

    pub fn decode(mut data: Bytes) -> Result<Self, WireError> {
        let flow = take_varint(&mut data).ok_or(WireError::Short)?;
        if data.len() < 12 {
            return Err(WireError::Short);
        }
        if data[0] >> 6 != 2 {
            return Err(WireError::NotRtp);
        }
        let extension = data[0] & 0x10 != 0;
        let csrcs = usize::from(data[0] & 0x0f);
        let marker = data[1] & 0x80 != 0;
        let pt = data[1] & 0x7f;
        let seq = u16::from_be_bytes([data[2], data[3]]);
        let timestamp = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
        let ssrc = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
        let mut at = 12 + 4 * csrcs;
        let mut audio_level = None;
        if extension {
            let header = data.get(at..at + 4).ok_or(WireError::Short)?;
            let profile = u16::from_be_bytes([header[0], header[1]]);
            let words = usize::from(u16::from_be_bytes([header[2], header[3]]));
            let body = data.get(at + 4..at + 4 + 4 * words).ok_or(WireError::Short)?;
            if profile == 0xBEDE {
                audio_level = one_byte_audio_level(body);
            }
            at += 4 + 4 * words;
        }
        if at > data.len() {
            return Err(WireError::Short);
        }
        let payload = data.split_off(at);
        Ok(Self { flow, pt, seq, timestamp, marker, ssrc, audio_level, payload })
    }
}

fn one_byte_audio_level(mut body: &[u8]) -> Option<(i8, bool)> {
    while let Some((&head, rest)) = body.split_first() {
        if head == 0 {
            body = rest; // padding
            continue;
        }
        let (id, len) = (head >> 4, usize::from(head & 0x0f) + 1);
        let value = rest.get(..len)?;
        if id == AUDIO_LEVEL_EXT {
            return Some((-((value[0] & 0x7f) as i8), value[0] & 0x80 != 0));
        }
        body = &rest[len..];
    }
    None
}

/// Append a QUIC variable-length integer (values up to 2^62 - 1).
pub fn put_varint(b: &mut BytesMut, v: u64) {
    if v < 1 << 6 {
        b.put_u8(v as u8);
    } else if v < 1 << 14 {
        b.put_u16(0x4000 | v as u16);
    } else if v < 1 << 30 {
        b.put_u32(0x8000_0000 | v as u32);
    } else {
        b.put_u64(0xC000_0000_0000_0000 | (v & 0x3FFF_FFFF_FFFF_FFFF));
    }
}

/// Take a QUIC variable-length integer off the front of `data`.
pub fn take_varint(data: &mut Bytes) -> Option<u64> {
    let first = *data.first()?;
    let len = 1usize << (first >> 6);
    if data.len() < len {
        return None;
    }
    let mut v = u64::from(first & 0x3f);
    for byte in &data[1..len] {
        v = (v << 8) | u64::from(*byte);
    }
    let _ = data.split_to(len);
    Some(v)
}

/// A codec as the relay names it: enough for the next node to find a subscriber's
/// payload type for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireCodec {
    pub pt: u8,
    /// `opus`, `vp8`, `vp9`, `h264` or `av1`.
    pub name: String,
    pub clock_rate: u32,
    /// H.264: packetization-mode and profile_idc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packetization_mode: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<u32>,
}

/// A track of a room, as the parent announces it to a child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireTrack {
    /// The track bits of its flow ids.
    pub track: u32,
    pub id: String,
    /// `audio` or `video`.
    pub kind: String,
    /// `microphone`, `camera` or `screen`.
    pub source: String,
    pub muted: bool,
    /// Who publishes it on the origin, and their display name.
    pub participant: String,
    pub name: String,
    pub codecs: Vec<WireCodec>,
}

/// Messages on the control stream. The child (an edge) speaks first with `Hello`; the
/// parent answers `Welcome` or closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// Child to parent: who it is, where viewers reach its HTTP, and its proof of the
    /// cluster secret bound to this connection.
    Hello { node: String, http: Option<String>, proof: String },
    /// Parent to child: the parent's proof.
    Welcome { node: String, proof: String },
    /// Child to parent: send this room's tracks while it has viewers here.
    Subscribe { room: String },
    /// Child to parent: stop sending the room.
    Unsubscribe { room: String },
    /// Parent to child: the answer to `Subscribe` (flows of this room use `slot`), with
    /// every track live now; none means nothing is live.
    Room { room: String, slot: u32, tracks: Vec<WireTrack> },
    /// Child to parent: these tracks' flows reach its viewers now (the tracks it was told
    /// of): send each layer's cached keyframe and what followed it, then live.
    Ready { slot: u32, tracks: Vec<u32> },
    /// Parent to child: a track was published in a subscribed room.
    Track { slot: u32, track: WireTrack },
    /// Parent to child: a track ended.
    Untrack { slot: u32, track: u32 },
    /// Child to parent: a keyframe of this flow, please.
    Keyframe { flow: u64 },
    /// Child to parent: these packets of a flow did not arrive.
    Nack { flow: u64, seqs: Vec<u16> },
    /// Child to parent, every few seconds: its viewers in all and per room.
    Load {
        viewers: u64,
        rooms: Vec<(String, u64)>,
        /// It is shutting down: send no new viewers.
        #[serde(default)]
        draining: bool,
    },
    /// Parent to child, every few seconds: viewers of each subscribed room in the whole tree.
    Audience { rooms: Vec<(String, u64)> },
}

impl Control {
    /// The message with its length prefix.
    pub fn frame(&self) -> Vec<u8> {
        let body = serde_json::to_vec(self).expect("control messages serialize");
        let mut out = Vec::with_capacity(4 + body.len());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_length() {
        for v in [0u64, 63, 64, 16_383, 16_384, (1 << 30) - 1, 1 << 30, (1 << 62) - 1] {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            let mut bytes = b.freeze();
            assert_eq!(take_varint(&mut bytes), Some(v));
            assert!(bytes.is_empty());
        }
        assert_eq!(take_varint(&mut Bytes::from_static(&[0x80, 1])), None, "truncated");
    }

    #[test]
    fn packets_round_trip_with_and_without_audio_level() {
        let video = RelayPacket {
            flow: flow_id(3, 5, 2),
            pt: 96,
            seq: 65_535,
            timestamp: 0xdead_beef,
            marker: true,
            ssrc: 0x1234_5678,
            audio_level: None,
            payload: Bytes::from_static(&[0x10, 0, 1, 2, 3]),
        };
        assert_eq!(RelayPacket::decode(video.encode()), Ok(video.clone()));
        assert_eq!(split_flow(video.flow), (3, 5, 2));
        let audio = RelayPacket { pt: 111, marker: false, audio_level: Some((-30, true)), ..video };
        assert_eq!(RelayPacket::decode(audio.encode()), Ok(audio));
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        let not_rtp = [0x05u8; 14];
        let cut_extension = [0x05, 0x90, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xBE];
        for data in [&[][..], &[0x05], &[0x05, 0x80, 0], &not_rtp, &cut_extension] {
            assert!(RelayPacket::decode(Bytes::copy_from_slice(data)).is_err(), "{data:?}");
        }
    }

    #[test]
    fn control_messages_are_tagged_json() {
        let frame = Control::Keyframe { flow: 7 }.frame();
        assert_eq!(&frame[4..], br#"{"type":"keyframe","flow":7}"#);
        assert_eq!(u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize, frame.len() - 4);
    }
}
