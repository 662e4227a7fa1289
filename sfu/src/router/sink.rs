//! A sink: one outgoing slot of an endpoint (an m-line of a subscriber's peer connection,
//! or a flow of a relay link), carrying one source at a time. Reusing slots means showing
//! another track needs no renegotiation.

use super::codec::{CodecKey, OutFormat, PayloadTypes, out_format};
use super::rtp::{RtpRewriter, SeqExtender, Vp8Rewriter};
use super::select::{MAX_LAYERS, Quality, choose_layer};
use super::source::SourceKey;
use crate::api::TrackKind;

/// How a sink's packets are chosen and numbered: one strategy per file in `forward/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Every packet of the source, renumbered into one continuous stream (audio).
    Plain,
    /// One layer of the source at a time, switched at keyframes (video, one layer or
    /// simulcast).
    Simulcast,
    /// Every layer as it came, for another node that chooses for its own sinks.
    Relay,
}

pub struct Sink {
    /// The source it carries now.
    pub source: Option<SourceKey>,
    pub kind: TrackKind,
    pub strategy: Strategy,
    /// True once the peer negotiated it (answered the offer that added it).
    pub active: bool,
    /// The payload types the peer negotiated on it, with their codecs.
    pub payload_types: PayloadTypes,
    /// Source payload type and how this sink takes it.
    pt_map: Option<(u8, OutFormat)>,
    pub rewriter: RtpRewriter,
    pub vp8: Vp8Rewriter,
    /// Relay sinks: each layer's sequence numbers, extended to 64 bits.
    pub relay_seq: [SeqExtender; MAX_LAYERS],
    /// The quality the peer's tile needs (video).
    pub wanted: Quality,
    /// The layer forwarded now; None until the first keyframe (and after a change of source).
    pub current: Option<u8>,
    /// The layer to forward; a switch happens at its next keyframe.
    pub target: Option<u8>,
    /// The bandwidth allocator's limit: None unlimited, Some(None) paused, Some(Some(l))
    /// at most layer l.
    pub cap: Option<Option<u8>>,
    /// The track its subscriber was told is paused (`trackPaused`), until told it goes.
    pub told_paused: Option<String>,
    /// Place in the client's list of shown tracks (its importance among equals).
    pub order: usize,
    /// It sent a packet of its source since it was given it.
    pub sent: bool,
}

impl Sink {
    pub fn new(kind: TrackKind, strategy: Strategy) -> Self {
        let clock = if kind == TrackKind::Audio { 48_000 } else { 90_000 };
        Self {
            source: None,
            kind,
            strategy,
            active: false,
            payload_types: Vec::new(),
            pt_map: None,
            rewriter: RtpRewriter::new(clock),
            vp8: Vp8Rewriter::default(),
            relay_seq: Default::default(),
            wanted: MAX_LAYERS as u8 - 1,
            current: None,
            target: None,
            cap: None,
            told_paused: None,
            order: usize::MAX,
            sent: false,
        }
    }

    /// The strategy for a sink of this kind on a WebRTC peer.
    pub fn strategy_for(kind: TrackKind) -> Strategy {
        match kind {
            TrackKind::Audio => Strategy::Plain,
            TrackKind::Video => Strategy::Simulcast,
        }
    }

    /// The layer to send of a source whose layers `arriving` arrive now.
    pub fn choose_target(&self, arriving: [bool; MAX_LAYERS]) -> Option<u8> {
        match self.cap {
            Some(None) => None,
            Some(Some(cap)) => choose_layer(self.wanted.min(cap), arriving),
            None => choose_layer(self.wanted, arriving),
        }
    }

    /// Carry `key` from now on (or nothing): video waits for a keyframe of the new source.
    pub fn assign(&mut self, key: Option<SourceKey>) {
        self.source = key;
        self.sent = false;
        self.pt_map = None;
        self.rewriter.forget_retired();
        if self.kind == TrackKind::Audio {
            self.current = key.map(|_| 0);
            self.target = self.current;
        } else {
            self.current = None;
            self.target = None;
        }
    }

    /// What the peer negotiated on this sink (again after a renegotiation): the payload
    /// type for a source's codec is found anew.
    pub fn set_payload_types(&mut self, payload_types: PayloadTypes) {
        if self.payload_types != payload_types {
            self.payload_types = payload_types;
            self.pt_map = None;
        }
    }

    /// How this sink takes a source sending `pt` as `codec` (found once per source
    /// format): None when the peer negotiated nothing that plays it.
    pub fn payload_type(&mut self, pt: u8, codec: &CodecKey) -> Option<OutFormat> {
        match self.pt_map {
            Some((src, dst)) if src == pt => Some(dst),
            _ => {
                let dst = if self.strategy == Strategy::Relay {
                    OutFormat { pt, unwrap_red: false }
                } else {
                    out_format(&self.payload_types, codec)?
                };
                self.pt_map = Some((pt, dst));
                Some(dst)
            }
        }
    }
}
