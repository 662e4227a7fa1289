//! What leaves a session: its engine's output (ICE, DTLS, RTCP, and what was written to
//! it), and the packets the router forwards to it, sealed by the SRTP fast path
//! (egress/, ADR 0009) or written through str0m. NACKs for fast-path packets are
//! answered here from the fast path's own history.

use std::cmp::Reverse;
use std::time::Instant;

use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite};
use str0m::{Input, Output};
use tracing::debug;

use super::Shard;
use super::session::{contained, slot_out};
use crate::api::{LeaveReason, SessionId};
use crate::egress::{self, Egress, Outgoing};
use crate::router::{self, Forwarded, SinkKey, SourcePacket};

/// On the fast path, one packet per sink in this interval still goes through str0m. Its
/// sender reports extrapolate the RTP clock from the last packet written to it, and the
/// router keeps a sink's clock continuous across source switches, so the refresh only
/// bounds drift. Each such packet costs a full poll of the subscriber's engine (about
/// 20 us at 30 streams): at 1 s it was a fifth of the shard's CPU at meeting-300.
const ENGINE_PACKET_EVERY_MS: u64 = 5000;

impl Shard {
    /// Drain one session's output: queue datagrams, handle events, note its next timeout.
    pub(super) fn drain(&mut self, id: SessionId) {
        loop {
            let Some(session) = self.sessions.get_mut(&id) else { return };
            if self.failed.contains(&id) {
                return;
            }
            let rtc = &mut session.rtc;
            let Some(polled) = contained(&mut self.failed, &self.metrics, id, || rtc.poll_output()) else {
                return;
            };
            let output = match polled {
                Ok(o) => o,
                Err(e) => {
                    debug!(participant = %session.participant_id, error = %e, "session failed");
                    self.end_session(id, LeaveReason::MediaTimeout);
                    return;
                }
            };
            match output {
                Output::Transmit(t) => {
                    // STUN answers go to every address the peer checks from; DTLS and
                    // SRTP only over the selected pair (RFC 7983 first-byte ranges).
                    if t.contents.first().is_some_and(|b| *b >= 20) {
                        session.dest = Some(t.destination);
                    }
                    // On a numbered session str0m's RTP is a copy the fast path sent
                    // already (ADR 0025); its RTCP goes.
                    let rtp = t.contents.first().is_some_and(|b| b >> 6 == 2) && !is_rtcp(&t.contents);
                    if rtp && session.numbered && session.egress.is_some() {
                        continue;
                    }
                    self.out.push(t.destination, &t.contents);
                }
                Output::Timeout(at) => {
                    if session.timeout != at {
                        session.timeout = at;
                        self.timers.push(Reverse((at, id)));
                    }
                    return;
                }
                Output::Event(event) => self.on_event(id, event),
            }
        }
    }

    /// Drain every session written to since the last flush, once each: a turn of many
    /// inputs polls each subscriber's engine once, not once per forwarded packet.
    ///
    /// str0m holds a written packet until its clock moves (a timeout input stamps the send
    /// queues), so each written session gets that timeout here, before the drain: otherwise
    /// the drain only learns "timeout now", and the packet waits for the next turn's timer
    /// pass, a second full poll of the session for every write.
    pub(super) fn flush_dirty(&mut self) {
        while !self.dirty.is_empty() {
            let mut dirty = std::mem::take(&mut self.dirty);
            dirty.sort_unstable();
            dirty.dedup();
            let now = Instant::now();
            for id in dirty {
                self.send_written(id, now);
            }
        }
    }

    /// Move a written session's clock so str0m sends what was written, and drain it.
    pub(super) fn send_written(&mut self, id: SessionId, now: Instant) {
        if let Some(session) = self.sessions.get_mut(&id) {
            let rtc = &mut session.rtc;
            if let Some(Err(e)) =
                contained(&mut self.failed, &self.metrics, id, || rtc.handle_input(Input::Timeout(now)))
            {
                debug!(error = %e, "timeout input failed");
            }
        }
        self.drain(id);
    }

    /// Give sessions whose DTLS handshake just finished their fast-path keys (when the
    /// fast path is on, and the profile is a GCM one; others keep str0m's send path).
    pub(super) fn take_srtp_keys(&mut self) {
        for captured in egress::keys::take_captured() {
            if !self.config.fast_egress {
                continue;
            }
            // Only a session whose handshake str0m accepted (its peer's certificate matched).
            let Some(session) = self.sessions.get_mut(&captured.session).filter(|s| s.connected) else {
                continue;
            };
            let crypto = egress::keys::crypto_provider();
            match egress::srtp::session_keys(
                &crypto,
                captured.profile,
                &captured.material,
                captured.local_is_client,
            ) {
                Some((tx, rx)) => {
                    let egress = Egress::new(tx, rx).with_initial_estimate(self.config.bwe_initial_bps);
                    session.egress = Some(egress.counted(&self.metrics));
                    self.metrics.fast_path_sessions.inc();
                }
                None => {
                    debug!(participant = %session.participant_id, profile = ?captured.profile, "no fast path for this SRTP profile")
                }
            }
        }
    }

    /// Read the peer's feedback on what the fast path sent it (str0m reads the same, but
    /// has none of those packets): resend what it reports lost, and move its bandwidth
    /// estimate (given to the router when it changed, ADR 0025).
    pub(super) fn read_feedback(&mut self, id: SessionId, data: &[u8]) {
        let now = Instant::now();
        let now_us = self.clock_us(now);
        let Some(session) = self.sessions.get_mut(&id) else { return };
        let Some(egress) = session.egress.as_mut() else { return };
        let decreases = egress.estimate_decreases();
        let Some(lost) = egress.read_feedback(data, now_us) else { return };
        self.metrics.estimate_decreases.inc_by(egress.estimate_decreases() - decreases);
        if let Some(bps) = egress.estimate().filter(|_| self.config.bwe)
            && session.estimate_report.due(bps, now)
        {
            debug!(participant = %session.participant_id, bps, acked_bps = ?egress.acked_bps(), "bandwidth estimate");
            self.router.handle_input(router::Input::Estimate { endpoint: id, bps }, now);
            self.carry_out();
        }
        let Some(session) = self.sessions.get_mut(&id) else { return };
        let (Some(egress), Some(dest)) = (session.egress.as_mut(), session.dest) else { return };
        let mut resent = 0;
        for (ssrc, seq) in lost {
            if resent == egress::MAX_RESENDS_PER_DATAGRAM {
                self.metrics.not_forwarded.with_label_values(&["nack_over_limit"]).inc();
                break;
            }
            let slot = session.sinks.values_mut().filter_map(|s| s.out.as_mut()).find(|o| o.ssrc == ssrc);
            let Some(datagram) = slot.and_then(|slot| egress.reseal(slot, seq, now_us)) else { continue };
            resent += 1;
            self.metrics.retransmitted.inc();
            self.out.push(dest, datagram);
        }
    }

    /// A publisher's packet: into the router, and out to every sink it chose.
    pub(super) fn route_packet(&mut self, id: SessionId, packet: RtpPacket) {
        let Some(session) = self.sessions.get_mut(&id) else { return };
        let ssrc = packet.header.ssrc;
        let stream = contained(&mut self.failed, &self.metrics, id, || {
            Self::rx_stream(session, ssrc).filter(|(mid, _, _)| session.rtc.media(*mid).is_some())
        });
        let Some((mid, layer, rid)) = stream.flatten() else { return };
        let ext = &packet.header.ext_vals;
        // Extensions that describe the media and travel with it; transport ones (mid, rid,
        // transport-cc, abs-send-time) are each subscriber session's own.
        self.routing_ext = ExtensionValues {
            audio_level: ext.audio_level,
            voice_activity: ext.voice_activity,
            video_orientation: ext.video_orientation,
            video_content_type: ext.video_content_type,
            ..Default::default()
        };
        let source = SourcePacket {
            ssrc: *packet.header.ssrc,
            seq: packet.header.sequence_number,
            timestamp: packet.header.timestamp,
            marker: packet.header.marker,
            pt: *packet.header.payload_type,
            payload: packet.payload,
            audio_level: ext.audio_level,
            voice_activity: ext.voice_activity,
            arrival: packet.timestamp,
        };
        let at = source.arrival;
        self.router.handle_input(router::Input::Packet { source: (id, mid), layer, rid, packet: source }, at);
        self.carry_out();
        // What the router sends later (a start from the keyframe cache) is not this packet.
        self.routing_ext = ExtensionValues::default();
        self.send_engine_written();
    }

    /// Sinks that got a packet through str0m while on the fast path: out now, before the
    /// fast path's next packet to them can overtake it (a receiver that sees a new
    /// stream's second packet first may drop the first).
    pub(super) fn send_engine_written(&mut self) {
        if !self.send_now.is_empty() {
            let now = Instant::now();
            let mut send_now = std::mem::take(&mut self.send_now);
            send_now.sort_unstable();
            send_now.dedup();
            for sub_id in send_now.drain(..) {
                self.send_written(sub_id, now);
            }
            self.send_now = send_now;
        }
    }

    /// Send one forwarded packet on a sink: sealed by the fast path, or written to str0m
    /// (a sink's first packet, one every 5 s, packets with extensions the fast path does
    /// not write, sessions without fast-path keys).
    pub(super) fn send_forwarded(&mut self, (sub_id, mid): SinkKey, at: u32, f: Forwarded) {
        let arrival_ms = self.clock_ms(f.arrival);
        if self.failed.contains(&sub_id) {
            return; // its engine panicked: it ends after this input
        }
        // A packet written through str0m just before, in the same burst (a start from the
        // keyframe cache), goes out first: the fast path must not overtake it.
        if self.send_now.contains(&sub_id) {
            self.send_now.retain(|s| *s != sub_id);
            self.send_written(sub_id, Instant::now());
        }
        let Some(subscriber) = self.sessions.get_mut(&sub_id) else { return };
        let Some(sink) = subscriber.sinks.at_mut(at, &mid) else { return };
        let Some(tx_ssrc) = sink.tx_ssrc else { return };
        let ext = &self.routing_ext;
        let outgoing = Outgoing {
            pt: f.pt,
            seq: f.seq,
            timestamp: f.timestamp,
            marker: f.marker,
            payload: &f.payload,
            vp8: f.vp8,
            audio_level: f.audio_level,
            orientation: ext.video_orientation.map(|o| o as u8),
            content_type: ext.video_content_type,
        };
        if subscriber.egress.is_some() && sink.out.is_none() {
            let rtc = &mut subscriber.rtc;
            sink.out =
                contained(&mut self.failed, &self.metrics, sub_id, || slot_out(rtc, mid, tx_ssrc)).flatten();
            subscriber.numbered |= sink.out.as_ref().is_some_and(|o| o.ext.transport_cc.is_some());
        }
        let fits = egress::fits(f.payload.len());
        let refresh = sink.engine_ms.is_none_or(|at| arrival_ms.saturating_sub(at) >= ENGINE_PACKET_EVERY_MS);
        let fast = subscriber.egress.is_some()
            && subscriber.dest.is_some()
            && fits
            && (subscriber.numbered || !refresh);
        if let (Some(slot), true) = (sink.out.as_mut(), f.video) {
            slot.remember(&outgoing);
        }
        if let (true, Some(egress), Some(dest), Some(slot)) =
            (fast, subscriber.egress.as_mut(), subscriber.dest, sink.out.as_ref())
        {
            let now_us = self.epoch.elapsed().as_micros() as u64;
            match self
                .out
                .push_with(dest, egress::MAX_DATAGRAM, |buf| egress.seal_to(slot, &outgoing, buf, now_us))
            {
                Ok(()) => {}
                Err(e) => {
                    self.metrics.not_forwarded.with_label_values(&[e.reason()]).inc();
                    debug!(size = f.payload.len(), seq = f.seq, error = %e, "fast path refused to seal");
                }
            }
            self.metrics.rtp_forwarded.inc();
            if !(refresh && subscriber.numbered) {
                return;
            }
            // A session whose packets carry transport-wide numbers gets every RTP packet
            // from the fast path (one numbering, ADR 0025): str0m is written a copy for
            // its sender reports, and what it sends of it is dropped (`drain`).
        } else if subscriber.numbered {
            // str0m's packets are not sent on this session: what the fast path cannot
            // send (too large to seal, or no address yet) is not sent.
            let reason = if !fits {
                "too_large"
            } else if subscriber.dest.is_none() {
                "no_destination"
            } else {
                "no_fast_path_slot"
            };
            self.metrics.not_forwarded.with_label_values(&[reason]).inc();
            return;
        } else if let Some(egress) = subscriber.egress.as_mut()
            && let Err(e) = egress.claim_for_engine(*tx_ssrc, f.seq)
        {
            // The engine seals with the fast path's keys: its index counts as used too.
            self.metrics.not_forwarded.with_label_values(&[e.reason()]).inc();
            return;
        }
        let copy = fast;
        sink.engine_ms = Some(arrival_ms);
        // With the fast path on, its own history answers NACKs: str0m must not resend
        // on the retransmission SSRC whose sequence numbers the fast path owns.
        // Nor before the session is connected: whether it gets the fast path is only
        // known then, and str0m must never hold a nackable packet of a fast-path sink.
        let nackable = f.video && subscriber.connected && subscriber.egress.is_none();
        let on_fast_path = subscriber.egress.is_some();
        let rtc = &mut subscriber.rtc;
        let written = contained(&mut self.failed, &self.metrics, sub_id, || {
            let mut api = rtc.direct_api();
            let stream = api.stream_tx(&tx_ssrc)?;
            let mut write =
                RtpWrite::new(f.pt.into(), f.seq.into(), f.timestamp, f.arrival, f.payload.clone())
                    .marker(f.marker)
                    .ext_vals(ext.clone())
                    .nackable(nackable);
            if let Some(patch) = f.vp8.and_then(|r| vp8_patch(&f.payload, r)) {
                write = write.vp8_patch(patch);
            }
            stream.write_rtp(write);
            Some(())
        });
        if written.flatten().is_none() || copy {
            if copy {
                self.dirty.push(sub_id);
            }
            return;
        }
        self.metrics.rtp_forwarded.inc();
        if on_fast_path {
            self.send_now.push(sub_id);
        } else {
            self.dirty.push(sub_id);
        }
    }

    /// An instant as microseconds on the shard's time line.
    pub(super) fn clock_us(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// An instant as milliseconds on the shard's time line.
    pub(super) fn clock_ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }
}

/// str0m's in-place descriptor patch for a renumbered VP8 packet (applied as it is
/// serialized, so the shared payload is not copied per subscriber).
fn vp8_patch(payload: &[u8], renumber: router::rtp::Vp8Renumber) -> Option<str0m::rtp::Vp8Patch> {
    let mut builder = str0m::rtp::Vp8Descriptor::parse(payload).ok()?.patch();
    if let Some(pid) = renumber.picture_id {
        builder = builder.picture_id(pid);
    }
    if let Some(tl0) = renumber.tl0picidx {
        builder = builder.tl0_pic_idx(tl0);
    }
    builder.build().ok()
}

/// An RTP/RTCP-multiplexed datagram that is RTCP (RFC 5761 §4: payload types 192-223).
pub(super) fn is_rtcp(data: &[u8]) -> bool {
    data.len() >= 8 && data[0] >> 6 == 2 && (192..=223).contains(&data[1])
}
