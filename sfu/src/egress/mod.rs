//! The forwarding fast path (ADR 0009): forwarded RTP is written, SRTP-protected and sent
//! by us, not queued through str0m's per-stream send path, which cost most of a forwarded
//! packet's CPU (its queue, pacer and timeout polling run per subscriber per packet).
//!
//! str0m still owns the session: ICE, DTLS, RTCP reports, keyframe requests, and one
//! packet per slot and second, so its sender reports keep the RTP clock mapped to wall
//! time. What we send carries sequence numbers str0m never uses, and it is not in str0m's
//! retransmission cache, so the NACKs for it are answered here, from the peer's SRTCP.

pub mod estimate;
pub mod keys;
pub mod nack;
pub mod srtp;
pub mod twcc;

use std::sync::Arc;

use prometheus::IntCounter;

use crate::metrics::SfuMetrics;
use crate::router::rtp::vp8::{self, Vp8Renumber};
use estimate::Estimator;
pub use srtp::SealError;
use srtp::{SrtcpError, SrtcpReceiver, SrtpSender, TAG_LEN, WindowHint};

/// Packets kept per video slot for retransmission (about 2 s of a camera's top layer).
const HISTORY: usize = 256;
/// Larger than an Ethernet MTU: a publisher that packetizes for 1,500-byte datagrams (a
/// WHIP encoder) leaves no room for our header extensions and the RTX prefix, and a
/// numbered session's packets can only go out this way (ADR 0025).
const MAX_PACKET: usize = 2048;
/// Where a session's estimate starts, before any feedback.
pub const INITIAL_ESTIMATE_BPS: u64 = 10_000_000;
/// Room a sealed datagram may need (`seal_to` is given this much).
pub const MAX_DATAGRAM: usize = MAX_PACKET + TAG_LEN;

/// A session's fast-path sender: its SRTP keys and where its media goes.
pub struct Egress {
    srtp: SrtpSender,
    srtcp: SrtcpReceiver,
    /// The RTP header being written.
    packet: Vec<u8>,
    /// A payload that needed changes (VP8 renumbering, the RTX sequence number prefix).
    body: Vec<u8>,
    protected: Vec<u8>,
    plain_rtcp: Vec<u8>,
    /// Where what the SRTP windows stop is counted (nowhere until `counted`).
    guard: Option<GuardCounters>,
    /// The send-side estimate from the peer's transport-wide feedback (ADR 0025).
    estimator: Estimator,
    /// Whether the peer sent transport-wide feedback, or only REMB.
    transport_feedback: bool,
    remb_bps: Option<u64>,
    reports: Vec<twcc::Report>,
}

/// The shard's counters for what the SRTP windows stopped or forgot.
struct GuardCounters {
    index_used: IntCounter,
    too_many_ssrcs: IntCounter,
    srtcp_replayed: IntCounter,
    srtcp_sender_evicted: IntCounter,
}

impl GuardCounters {
    fn new(metrics: &SfuMetrics) -> Self {
        let counter = |reason: &str| metrics.srtp_guard.with_label_values(&[reason]);
        Self {
            index_used: counter("seal_index_used"),
            too_many_ssrcs: counter("seal_too_many_ssrcs"),
            srtcp_replayed: counter("srtcp_replayed"),
            srtcp_sender_evicted: counter("srtcp_sender_evicted"),
        }
    }
}

/// One packet to send on a slot.
pub struct Outgoing<'a> {
    pub pt: u8,
    /// Extended sequence number: the low 16 bits go on the wire, the rest is the ROC.
    pub seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    pub payload: &'a Arc<[u8]>,
    pub vp8: Option<Vp8Renumber>,
    /// RFC 6464 level and voice flag, for audio.
    pub audio_level: Option<(i8, bool)>,
    /// Coordination of video orientation (3GPP TS 26.114), as its one byte.
    pub orientation: Option<u8>,
    /// Video content type (0 camera, 1 screen), as its one byte.
    pub content_type: Option<u8>,
}

/// Header extension ids the peer negotiated for a slot.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExtIds {
    pub mid: Option<u8>,
    pub audio_level: Option<u8>,
    /// Transport-wide sequence numbers (the session's congestion feedback names them).
    pub transport_cc: Option<u8>,
    pub orientation: Option<u8>,
    pub content_type: Option<u8>,
}

/// The fast-path state of one send slot: its SSRCs and what it sent recently.
pub struct SlotOut {
    pub ssrc: u32,
    /// Retransmission SSRC (RFC 4588), when negotiated; without one nothing is resent (a
    /// resend on the main SSRC would reuse the original's SRTP nonce).
    pub rtx_ssrc: Option<u32>,
    /// Media payload type to its retransmission payload type, for every negotiated codec
    /// (a slot can carry another codec after a change of source).
    pub rtx_pts: Vec<(u8, u8)>,
    rtx_seq: u64,
    /// The mid's bytes in place (none when longer than the extension carries): the header
    /// of every packet copies them, and a `String` would be a pointer to chase per packet.
    mid: [u8; 16],
    mid_len: u8,
    pub ext: ExtIds,
    history: Vec<Option<Sent>>,
    /// Where the SRTP sender keeps the windows of `ssrc` and `rtx_ssrc`.
    window: WindowHint,
    rtx_window: WindowHint,
}

struct Sent {
    seq: u64,
    pt: u8,
    timestamp: u32,
    marker: bool,
    payload: Arc<[u8]>,
    vp8: Option<Vp8Renumber>,
    /// When it was last resent (ms, the caller's clock): one resend per packet and RESEND_GAP_MS.
    resent_ms: Option<u64>,
}

/// A packet is resent at most once in this interval, however often it is NACKed.
const RESEND_GAP_MS: u64 = 100;
/// At most this many resends answer one SRTCP datagram.
pub const MAX_RESENDS_PER_DATAGRAM: usize = 64;

impl SlotOut {
    pub fn new(ssrc: u32, rtx_ssrc: Option<u32>, rtx_pts: Vec<(u8, u8)>, mid: String, ext: ExtIds) -> Self {
        let (mut bytes, len) = ([0u8; 16], mid.len());
        let mid_len = if len <= 16 {
            bytes[..len].copy_from_slice(mid.as_bytes());
            len as u8
        } else {
            0
        };
        Self {
            ssrc,
            rtx_ssrc,
            rtx_pts,
            rtx_seq: rtx_start(ssrc),
            mid: bytes,
            mid_len,
            ext,
            history: Vec::new(),
            window: WindowHint::default(),
            rtx_window: WindowHint::default(),
        }
    }

    /// Keep a packet for retransmission (video only: audio is not retransmitted).
    pub fn remember(&mut self, p: &Outgoing) {
        if self.history.is_empty() {
            self.history.resize_with(HISTORY, || None);
        }
        self.history[(p.seq % HISTORY as u64) as usize] = Some(Sent {
            seq: p.seq,
            pt: p.pt,
            timestamp: p.timestamp,
            marker: p.marker,
            payload: p.payload.clone(),
            vp8: p.vp8,
            resent_ms: None,
        });
    }

    #[cfg(test)]
    fn sent(&mut self, seq16: u16) -> Option<&mut Sent> {
        sent_in(&mut self.history, seq16)
    }
}

/// The kept packet with this 16-bit number (what a NACK names; the ring slot tells the rest).
fn sent_in(history: &mut [Option<Sent>], seq16: u16) -> Option<&mut Sent> {
    let sent = history.get_mut((seq16 as usize) % HISTORY)?.as_mut()?;
    (sent.seq as u16 == seq16).then_some(sent)
}

/// Where a slot's retransmission sequence numbers start: in 49152..57344. str0m numbers
/// the same RTX SSRC from 1..32768 up if it ever resends on it (it should not: packets
/// it sends for a fast-path slot are not nackable), so the two ranges cannot meet before
/// ours rolls over into ROC 1, which str0m's never reach within its 3 s cache.
fn rtx_start(ssrc: u32) -> u64 {
    49_152 + (ssrc.wrapping_mul(2_654_435_761) >> 19) as u64
}

/// Whether a payload of this size fits a datagram on the fast path, with the largest
/// header it writes, the RTX prefix and the tag; larger ones go through str0m.
pub fn fits(payload_len: usize) -> bool {
    payload_len + 12 + MAX_EXTENSIONS + 2 + TAG_LEN <= MAX_PACKET
}

/// The largest extension block `write_header` writes: its own header, the mid (1 + 16),
/// the audio level (2), the transport-wide number (3), orientation and content type (2
/// each), padded to words.
const MAX_EXTENSIONS: usize = 32;

impl Egress {
    pub fn new(srtp: SrtpSender, srtcp: SrtcpReceiver) -> Self {
        Self {
            srtp,
            srtcp,
            packet: Vec::with_capacity(64),
            body: Vec::with_capacity(MAX_PACKET),
            protected: vec![0; MAX_PACKET + TAG_LEN],
            plain_rtcp: Vec::with_capacity(MAX_PACKET),
            guard: None,
            estimator: Estimator::new(INITIAL_ESTIMATE_BPS),
            transport_feedback: false,
            remb_bps: None,
            reports: Vec::new(),
        }
    }

    /// Starts the estimate at `bps` instead (before any feedback).
    pub fn with_initial_estimate(mut self, bps: u64) -> Self {
        self.estimator = Estimator::new(bps);
        self
    }

    /// The session's bandwidth estimate: from transport-wide feedback when the peer sends
    /// it, else its REMB; none before either.
    pub fn estimate(&self) -> Option<u64> {
        if self.transport_feedback { Some(self.estimator.bps()) } else { self.remb_bps }
    }

    /// What the peer received per second lately, by its feedback.
    pub fn acked_bps(&self) -> Option<u64> {
        self.estimator.acked_bps()
    }

    /// How many times the estimate fell for overuse or loss.
    pub fn estimate_decreases(&self) -> u64 {
        self.estimator.decreases()
    }

    /// Numbers a sealed packet for transport-wide feedback when the slot negotiated it;
    /// called with the header in `self.packet` already written up to its extensions.
    fn number(&mut self, slot: &SlotOut) -> Option<(u8, u16)> {
        slot.ext.transport_cc.map(|id| (id, self.estimator.next_seq() as u16))
    }

    /// The datagram of `len` bytes numbered by `number` went out at `now_us`.
    fn numbered_sent(&mut self, numbered: Option<(u8, u16)>, now_us: u64, len: usize) {
        if numbered.is_some() {
            self.estimator.on_sent(now_us, len);
        }
    }

    /// Counts what the SRTP windows stop or forget into the shard's metrics.
    pub fn counted(mut self, metrics: &SfuMetrics) -> Self {
        self.guard = Some(GuardCounters::new(metrics));
        self
    }

    /// Writes and protects one packet: the datagram to send. Refused when it is too big,
    /// or when its SRTP index on its SSRC was sealed before (or is too far behind the
    /// newest sealed to tell): an AES-GCM nonce is never used twice.
    #[cfg(test)]
    pub fn seal(&mut self, slot: &SlotOut, p: &Outgoing) -> Result<&[u8], SealError> {
        let mut out = std::mem::take(&mut self.protected);
        let sealed = self.seal_to(slot, p, &mut out, 0);
        self.protected = out;
        sealed.map(|len| &self.protected[..len])
    }

    /// [`Egress::seal`] into `out` (at least [`MAX_DATAGRAM`] bytes: the send queue's own
    /// buffer, so the datagram is not copied again); returns its length.
    /// `now_us` is when it goes out, for the bandwidth estimate.
    pub fn seal_to(
        &mut self,
        slot: &SlotOut,
        p: &Outgoing,
        out: &mut [u8],
        now_us: u64,
    ) -> Result<usize, SealError> {
        let numbered = self.number(slot);
        let header =
            Header { ssrc: slot.ssrc, pt: p.pt, seq: p.seq as u16, timestamp: p.timestamp, marker: p.marker };
        write_header(&mut self.packet, &header, slot, p, numbered);
        let roc = (p.seq >> 16) as u32;
        let sealed = match p.vp8 {
            // Most packets go out as they came: encrypt straight from the shared payload.
            None => self.srtp.protect_hinted(&self.packet, p.payload, roc, out, &slot.window),
            Some(renumber) => {
                let mut body = std::mem::take(&mut self.body);
                body.clear();
                body.extend_from_slice(p.payload);
                vp8::apply(&mut body, renumber);
                let sealed = self.srtp.protect_hinted(&self.packet, &body, roc, out, &slot.window);
                self.body = body;
                sealed
            }
        };
        let sealed = sealed.map_err(|e| self.count(e));
        if let Ok(len) = sealed {
            self.numbered_sent(numbered, now_us, len);
        }
        sealed
    }

    /// Reads one SRTCP datagram from the peer at `now_us`: its transport-wide feedback and
    /// REMB move the estimate; returns the (media SSRC, sequence number) pairs its NACKs
    /// report lost. `None` when it did not decrypt or replays one read before (str0m
    /// judges the datagram anyway, this only reads it).
    pub fn read_feedback(&mut self, datagram: &[u8], now_us: u64) -> Option<Vec<(u32, u16)>> {
        let mut plain = std::mem::take(&mut self.plain_rtcp);
        let lost = self.unprotect_rtcp(datagram, &mut plain).then(|| nack::lost_packets(&plain));
        if lost.is_some() {
            let mut reports = std::mem::take(&mut self.reports);
            twcc::read(&plain, &mut reports, &mut self.remb_bps);
            for report in reports.drain(..) {
                self.transport_feedback = true;
                self.estimator.on_feedback(&report, now_us);
            }
            self.reports = reports;
        }
        self.plain_rtcp = plain;
        lost
    }

    /// Decrypts one SRTCP datagram into `plain`; counts replays and evictions.
    fn unprotect_rtcp(&mut self, datagram: &[u8], plain: &mut Vec<u8>) -> bool {
        let evicted = self.srtcp.senders_evicted();
        let read = self.srtcp.unprotect(datagram, plain);
        if let Some(guard) = &self.guard {
            guard.srtcp_sender_evicted.inc_by(self.srtcp.senders_evicted() - evicted);
            if read == Err(SrtcpError::Replayed) {
                guard.srtcp_replayed.inc();
            }
        }
        read.is_ok()
    }

    /// Resends one packet from the slot's history on the retransmission SSRC (RFC 4588).
    /// None when it is no longer kept, was resent less than `RESEND_GAP_MS` ago, the
    /// peer negotiated no RTX for its codec, or the seal was refused (counted).
    pub fn reseal(&mut self, slot: &mut SlotOut, seq16: u16, now_us: u64) -> Option<&[u8]> {
        let now_ms = now_us / 1000;
        let rtx_ssrc = slot.rtx_ssrc?;
        let sent = sent_in(&mut slot.history, seq16)?;
        let rtx_pt = slot.rtx_pts.iter().find(|(media, _)| *media == sent.pt).map(|(_, rtx)| *rtx)?;
        if sent.resent_ms.is_some_and(|at| now_ms.saturating_sub(at) < RESEND_GAP_MS) {
            return None;
        }
        sent.resent_ms = Some(now_ms);
        let (osn, payload) = (sent.seq as u16, sent.payload.clone());
        let p = Outgoing {
            pt: rtx_pt,
            seq: slot.rtx_seq + 1,
            timestamp: sent.timestamp,
            marker: sent.marker,
            payload: &payload,
            vp8: sent.vp8,
            audio_level: None,
            orientation: None,
            content_type: None,
        };
        slot.rtx_seq = p.seq;
        let numbered = self.number(slot);
        let header =
            Header { ssrc: rtx_ssrc, pt: p.pt, seq: p.seq as u16, timestamp: p.timestamp, marker: p.marker };
        write_header(&mut self.packet, &header, slot, &p, numbered);
        // The RTX payload: the original sequence number, then the original payload.
        let mut body = std::mem::take(&mut self.body);
        body.clear();
        body.extend_from_slice(&osn.to_be_bytes());
        body.extend_from_slice(&payload);
        if let Some(renumber) = p.vp8 {
            vp8::apply(&mut body[2..], renumber);
        }
        let sealed = self.protect(&body, (p.seq >> 16) as u32, &slot.rtx_window).map(|d| d.len());
        self.body = body;
        let len = sealed.ok()?;
        self.numbered_sent(numbered, now_us, len);
        Some(&self.protected[..len])
    }

    /// Marks a packet str0m is about to seal with the same keys (the engine sends one of
    /// a sink's packets every few seconds): refused when its index was used already, so
    /// the fast path never seals that index again, nor the engine one the fast path used.
    pub fn claim_for_engine(&mut self, ssrc: u32, seq: u64) -> Result<(), SealError> {
        let claimed = self.srtp.claim(ssrc, seq & 0xFFFF_FFFF_FFFF, &WindowHint::default());
        claimed.map_err(|e| self.count(e))
    }

    /// Protects the header written in `self.packet` with `body` into `self.protected`.
    fn protect(&mut self, body: &[u8], roc: u32, hint: &WindowHint) -> Result<&[u8], SealError> {
        match self.srtp.protect_hinted(&self.packet, body, roc, &mut self.protected, hint) {
            Ok(len) => Ok(&self.protected[..len]),
            Err(e) => Err(self.count(e)),
        }
    }

    /// Counts a refusal of the nonce guard.
    fn count(&self, e: SealError) -> SealError {
        let counter = self.guard.as_ref().and_then(|guard| match e {
            SealError::IndexUsed => Some(&guard.index_used),
            SealError::TooManySsrcs => Some(&guard.too_many_ssrcs),
            _ => None,
        });
        if let Some(counter) = counter {
            counter.inc();
        }
        e
    }
}

/// The fixed part of an RTP header.
struct Header {
    ssrc: u32,
    pt: u8,
    seq: u16,
    timestamp: u32,
    marker: bool,
}

/// The RTP header with a one-byte-form extension block (RFC 8285) carrying the mid, the
/// transport-wide number (`numbered`: its id and value), and what the packet carries of
/// audio level, orientation and content type. Returns the header length.
fn write_header(
    buf: &mut Vec<u8>,
    h: &Header,
    slot: &SlotOut,
    p: &Outgoing,
    numbered: Option<(u8, u16)>,
) -> usize {
    buf.clear();
    buf.extend_from_slice(&[0x80, (h.pt & 0x7f) | if h.marker { 0x80 } else { 0 }]);
    buf.extend_from_slice(&h.seq.to_be_bytes());
    buf.extend_from_slice(&h.timestamp.to_be_bytes());
    buf.extend_from_slice(&h.ssrc.to_be_bytes());
    let with_mid = slot.ext.mid.filter(|_| slot.mid_len > 0);
    let with_level = slot.ext.audio_level.zip(p.audio_level);
    let one_byte = [slot.ext.orientation.zip(p.orientation), slot.ext.content_type.zip(p.content_type)];
    if with_mid.is_none()
        && with_level.is_none()
        && numbered.is_none()
        && one_byte.iter().all(Option::is_none)
    {
        return buf.len();
    }
    buf[0] |= 0x10;
    let block_at = buf.len();
    buf.extend_from_slice(&[0xbe, 0xde, 0, 0]);
    if let Some(id) = with_mid {
        buf.push((id << 4) | (slot.mid_len - 1));
        // All 16 bytes, then cut: a copy of fixed size, without a call to memmove.
        let at = buf.len();
        buf.extend_from_slice(&slot.mid);
        buf.truncate(at + usize::from(slot.mid_len));
    }
    if let Some((id, (level, voice))) = with_level {
        buf.push(id << 4);
        buf.push(if voice { 0x80 } else { 0 } | ((-level).clamp(0, 127) as u8));
    }
    if let Some((id, seq)) = numbered {
        buf.push((id << 4) | 1);
        buf.extend_from_slice(&seq.to_be_bytes());
    }
    for (id, byte) in one_byte.into_iter().flatten() {
        buf.extend_from_slice(&[id << 4, byte]);
    }
    while !(buf.len() - block_at).is_multiple_of(4) {
        buf.push(0);
    }
    let words = ((buf.len() - block_at) / 4 - 1) as u16;
    buf[block_at + 2..block_at + 4].copy_from_slice(&words.to_be_bytes());
    buf.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outgoing(payload: &Arc<[u8]>) -> Outgoing<'_> {
        Outgoing {
            pt: 111,
            seq: 70_000,
            timestamp: 960,
            marker: true,
            payload,
            vp8: None,
            audio_level: Some((-30, true)),
            orientation: None,
            content_type: None,
        }
    }

    #[test]
    fn header_carries_mid_and_audio_level_padded_to_words() {
        let payload: Arc<[u8]> = vec![1, 2, 3].into();
        let slot = SlotOut::new(
            0x1234_5678,
            None,
            Vec::new(),
            "3".into(),
            ExtIds { mid: Some(4), audio_level: Some(1), ..Default::default() },
        );
        let mut buf = Vec::new();
        let p = outgoing(&payload);
        let len = write_header(&mut buf, &header(&slot, &p), &slot, &p, None);
        assert_eq!(len % 4, 0);
        assert_eq!(buf[0], 0x90);
        assert_eq!(buf[1], 0x80 | 111);
        assert_eq!(u16::from_be_bytes([buf[2], buf[3]]), (70_000u64 as u16));
        assert_eq!(&buf[8..12], &0x1234_5678u32.to_be_bytes());
        assert_eq!(&buf[12..14], &[0xbe, 0xde]);
        // mid: id 4, one byte "3"; level: id 1, voice + 30.
        assert_eq!(&buf[16..20], &[0x40, b'3', 0x10, 0x80 | 30]);
        assert_eq!(u16::from_be_bytes([buf[14], buf[15]]), 1);
    }

    #[test]
    fn header_without_extensions_is_twelve_bytes() {
        let payload: Arc<[u8]> = vec![1].into();
        let slot = SlotOut::new(7, None, Vec::new(), "0".into(), ExtIds::default());
        let mut buf = Vec::new();
        let p = Outgoing { audio_level: None, ..outgoing(&payload) };
        assert_eq!(write_header(&mut buf, &header(&slot, &p), &slot, &p, None), 12);
        assert_eq!(buf[0], 0x80);
    }

    fn header(slot: &SlotOut, p: &Outgoing) -> Header {
        Header { ssrc: slot.ssrc, pt: p.pt, seq: p.seq as u16, timestamp: p.timestamp, marker: p.marker }
    }

    #[test]
    fn header_carries_the_transport_wide_number_orientation_and_content_type() {
        let payload: Arc<[u8]> = vec![1].into();
        let ext = ExtIds {
            transport_cc: Some(3),
            orientation: Some(13),
            content_type: Some(7),
            ..Default::default()
        };
        let slot = SlotOut::new(7, None, Vec::new(), "0".into(), ext);
        let p =
            Outgoing { audio_level: None, orientation: Some(1), content_type: Some(1), ..outgoing(&payload) };
        let mut buf = Vec::new();
        let len = write_header(&mut buf, &header(&slot, &p), &slot, &p, Some((3, 0x1234)));
        assert_eq!(&buf[16..len], &[0x31, 0x12, 0x34, 0xd0, 1, 0x70, 1, 0]);
        assert!(len - 12 <= MAX_EXTENSIONS);
    }

    #[test]
    fn feedback_on_numbered_packets_moves_the_estimate() {
        let mut egress = egress().with_initial_estimate(1_000_000);
        let mut peer = srtp::tests::Peer::new(&[7; 56]);
        let ext = ExtIds { transport_cc: Some(3), ..Default::default() };
        let slot = SlotOut::new(7, None, Vec::new(), "0".into(), ext);
        let payload: Arc<[u8]> = vec![1; 1000].into();
        let mut out = vec![0; MAX_DATAGRAM];
        for i in 0..10u64 {
            let p = Outgoing { seq: 100 + i, ..outgoing(&payload) };
            egress.seal_to(&slot, &p, &mut out, i * 1_000).unwrap();
            assert_eq!(&out[16..19], &[0x31, 0, i as u8], "numbered from 0 across the session");
        }
        assert_eq!(egress.estimate(), None, "no feedback yet");
        let arrivals: Vec<Option<i64>> = (0..10).map(|i| Some(4 * i)).collect();
        let report = twcc::tests::report(0, 1, 0, &arrivals);
        assert!(egress.read_feedback(&peer.sealed(0xa, &report), 20_000).is_some());
        assert!(egress.estimate().is_some());
    }

    #[test]
    fn history_finds_only_the_packet_with_that_number() {
        let payload: Arc<[u8]> = vec![9; 10].into();
        let mut slot = SlotOut::new(7, Some(8), vec![(111, 97)], "1".into(), ExtIds::default());
        let mut p = outgoing(&payload);
        p.seq = 65_535 + 5;
        slot.remember(&p);
        assert!(slot.sent(4).is_some());
        assert!(slot.sent(4 + HISTORY as u16).is_none());
        p.seq += HISTORY as u64;
        slot.remember(&p);
        assert!(slot.sent(4).is_none(), "overwritten by a newer packet");
    }

    fn egress() -> Egress {
        let crypto = str0m::crypto::from_feature_flags();
        let (tx, rx) =
            srtp::session_keys(&crypto, str0m::crypto::dtls::SrtpProfile::AEAD_AES_128_GCM, &[7; 56], true)
                .unwrap();
        Egress::new(tx, rx)
    }

    #[test]
    fn resends_only_over_rtx_and_once_per_gap() {
        let payload: Arc<[u8]> = vec![9; 10].into();
        let mut p = outgoing(&payload);
        p.seq = 500;
        let mut egress = egress();

        let mut plain = SlotOut::new(7, None, vec![(111, 97)], "1".into(), ExtIds::default());
        plain.remember(&p);
        assert!(egress.reseal(&mut plain, 500, 0).is_none(), "no RTX: no resend under the same nonce");

        let mut slot = SlotOut::new(7, Some(8), vec![(111, 97)], "1".into(), ExtIds::default());
        slot.remember(&p);
        let first = egress.reseal(&mut slot, 500, 1_000_000).expect("resent").to_vec();
        assert_eq!(&first[8..12], &8u32.to_be_bytes(), "on the RTX SSRC");
        assert_eq!(first[1] & 0x7f, 97, "with the RTX payload type of the packet's codec");
        assert!(egress.reseal(&mut slot, 500, 1_050_000).is_none(), "NACKed again within 100 ms");
        let again = egress.reseal(&mut slot, 500, 1_100_000).expect("resent after the gap").to_vec();
        assert_ne!(first[2..4], again[2..4], "each resend has its own RTX sequence number");
        assert!(egress.reseal(&mut slot, 501, 2_000_000).is_none(), "never sent");

        p.pt = 100; // a codec without RTX on this slot
        p.seq = 502;
        slot.remember(&p);
        assert!(egress.reseal(&mut slot, 502, 3_000_000).is_none());
    }

    fn counted_egress() -> (Egress, SfuMetrics) {
        let metrics = SfuMetrics::new(&prometheus::Registry::new());
        (egress().counted(&metrics), metrics)
    }

    fn guard_count(metrics: &SfuMetrics, reason: &str) -> u64 {
        metrics.srtp_guard.with_label_values(&[reason]).get()
    }

    #[test]
    fn the_same_packet_is_never_sealed_twice() {
        let (mut egress, metrics) = counted_egress();
        let payload: Arc<[u8]> = vec![9; 10].into();
        let slot = SlotOut::new(7, None, Vec::new(), "1".into(), ExtIds::default());
        let p = outgoing(&payload);
        assert!(egress.seal(&slot, &p).is_ok());
        assert_eq!(egress.seal(&slot, &p).err(), Some(SealError::IndexUsed));
        assert_eq!(guard_count(&metrics, "seal_index_used"), 1);
        let other = SlotOut::new(9, None, Vec::new(), "2".into(), ExtIds::default());
        assert!(egress.seal(&other, &p).is_ok(), "another SSRC");
    }

    #[test]
    fn indexes_the_engine_seals_and_the_fast_path_seals_exclude_each_other() {
        let (mut egress, metrics) = counted_egress();
        let payload: Arc<[u8]> = vec![9; 10].into();
        let slot = SlotOut::new(7, None, Vec::new(), "1".into(), ExtIds::default());
        let mut p = outgoing(&payload);
        assert!(egress.seal(&slot, &p).is_ok());
        assert_eq!(
            egress.claim_for_engine(7, p.seq),
            Err(SealError::IndexUsed),
            "the engine may not reuse it"
        );
        p.seq += 1;
        assert_eq!(egress.claim_for_engine(7, p.seq), Ok(()), "the engine takes the next");
        assert_eq!(
            egress.seal(&slot, &p).err(),
            Some(SealError::IndexUsed),
            "the fast path may not reuse it"
        );
        assert_eq!(guard_count(&metrics, "seal_index_used"), 2);
    }

    #[test]
    fn a_rebuilt_slot_does_not_resend_under_used_rtx_numbers() {
        // A slot's RTX numbering starts at a value fixed by its SSRC, so a slot state built
        // again for the same SSRCs would number its resends as the first one did.
        let (mut egress, metrics) = counted_egress();
        let payload: Arc<[u8]> = vec![9; 10].into();
        let mut p = outgoing(&payload);
        p.seq = 500;
        let mut slot = SlotOut::new(7, Some(8), vec![(111, 97)], "1".into(), ExtIds::default());
        slot.remember(&p);
        assert!(egress.reseal(&mut slot, 500, 1_000_000).is_some());
        let mut rebuilt = SlotOut::new(7, Some(8), vec![(111, 97)], "1".into(), ExtIds::default());
        rebuilt.remember(&p);
        assert!(egress.reseal(&mut rebuilt, 500, 1_000_000).is_none());
        assert_eq!(guard_count(&metrics, "seal_index_used"), 1);
        rebuilt.remember(&p);
        assert!(egress.reseal(&mut rebuilt, 500, 2_000_000).is_some(), "past the first slot's numbers");
    }

    /// The source packets of one stretch of a stream, in arrival order: every 100th sent
    /// twice by the publisher, and some swapped with the one before.
    fn arrivals(first: u16, count: u16) -> Vec<u16> {
        let mut order = Vec::new();
        for i in 0..count {
            order.push(first.wrapping_add(i));
            match i % 100 {
                50 => order.push(first.wrapping_add(i)),
                70 => {
                    let n = order.len();
                    order.swap(n - 1, n - 2);
                }
                _ => {}
            }
        }
        order
    }

    /// Issue 9: a subscriber's stream is paused while its source numbers 40,000 more
    /// packets, then resumed. The rewriter numbers what the sealer seals: no (SSRC, ROC,
    /// SEQ) goes out twice, every packet goes out once, and the only seals refused are of
    /// packets the publisher sent twice (numbered like their originals).
    #[test]
    fn a_paused_and_resumed_stream_never_seals_an_index_twice() {
        use std::collections::HashSet;

        use crate::router::rtp::RtpRewriter;

        let (mut egress, metrics) = counted_egress();
        let slot = SlotOut::new(0x5107, Some(0x5108), vec![(96, 97)], "1".into(), ExtIds::default());
        let mut rewriter = RtpRewriter::new(90_000);
        let payload: Arc<[u8]> = vec![0x10, 0, 0, 0].into();
        let per_stretch = 3_000u16;
        // Across the 16-bit wrap of the source's numbering, then a minute's pause.
        let before = arrivals(64_000, per_stretch);
        let after = arrivals(64_000u16.wrapping_add(per_stretch).wrapping_add(40_000), per_stretch);
        let duplicates = (before.len() + after.len()) as u64 - 2 * per_stretch as u64;
        let (mut sealed, mut refused) = (HashSet::new(), 0);
        for (stretch, (order, start_ms)) in [(before, 0u64), (after, 90_000)].into_iter().enumerate() {
            for (i, seq) in order.into_iter().enumerate() {
                let at_ms = start_ms + i as u64 * 10;
                let rewritten = rewriter.rewrite(0xaaaa, seq, seq as u32 * 3000, at_ms);
                let out = rewritten.expect("every packet is forwarded");
                let p = Outgoing {
                    pt: 96,
                    seq: out.seq,
                    timestamp: out.timestamp,
                    marker: false,
                    payload: &payload,
                    vp8: None,
                    audio_level: None,
                    orientation: None,
                    content_type: None,
                };
                let roc = (out.seq >> 16) as u32;
                match egress.seal(&slot, &p) {
                    Ok(datagram) => {
                        let ssrc = u32::from_be_bytes([datagram[8], datagram[9], datagram[10], datagram[11]]);
                        let seq16 = u16::from_be_bytes([datagram[2], datagram[3]]);
                        assert_eq!(seq16, out.seq as u16);
                        assert!(
                            sealed.insert((ssrc, roc, seq16)),
                            "stretch {stretch}: {ssrc:x}/{roc}/{seq16} twice"
                        );
                    }
                    Err(e) => {
                        assert_eq!(e, SealError::IndexUsed);
                        assert!(
                            sealed.contains(&(slot.ssrc, roc, out.seq as u16)),
                            "only a sealed index is refused"
                        );
                        refused += 1;
                    }
                }
            }
        }
        assert_eq!(sealed.len(), 2 * per_stretch as usize, "every packet went out once");
        assert!(refused <= duplicates);
        assert_eq!(guard_count(&metrics, "seal_index_used"), refused);
    }

    #[test]
    fn a_replayed_nack_is_counted_and_not_answered() {
        let (mut egress, metrics) = counted_egress();
        let mut peer = srtp::tests::Peer::new(&[7; 56]);
        assert!(egress.read_feedback(&[0u8; 40], 0).is_none(), "junk");
        let nack = peer.srtcp(0xa, 0);
        assert_eq!(egress.read_feedback(&nack, 0), Some(vec![(42, 7)]));
        assert_eq!(
            egress.read_feedback(&peer.srtcp(0xb, 0), 0),
            Some(vec![(42, 7)]),
            "another sender SSRC from 0"
        );
        assert_eq!(egress.read_feedback(&nack, 0), None, "replayed");
        assert_eq!(guard_count(&metrics, "srtcp_replayed"), 1);
    }

    #[test]
    fn large_payloads_are_left_to_str0m() {
        assert!(fits(1200));
        assert!(!fits(MAX_PACKET - 40));
    }
}
