//! Driving one participant's str0m session: its negotiation (offers, answers,
//! candidates), what it publishes, and its engine's events. Every engine call goes
//! through `contained`, so a panic that client input reaches ends this session only.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use str0m::change::SdpPendingOffer;
use str0m::format::{Codec, CodecSpec, PayloadParams};
use str0m::media::{Direction, MediaKind, Mid, Rid};
use str0m::rtp::Ssrc;
use str0m::{Candidate, Event, IceConnectionState, IceCreds, Rtc};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::Shard;
use crate::VideoCodec;
use crate::admission::{CheckedAnswer, CheckedOffer};
use crate::api::{LeaveReason, PublishedTrack, SessionEvent, SessionId, TrackInfo, TrackKind, TrackSource};
use crate::config::MediaConfig;
use crate::egress::{self, Egress, ExtIds, SlotOut};
use crate::fasthash::FastMap;
use crate::metrics::{LogThrottle, SfuMetrics};
use crate::placed::PlacedMap;
use crate::router::select::rid_rank;
use crate::router::{self, CodecKey, Input, PayloadTypes, h264_profile};

/// A sink's first packets go this long after the session's DTLS came up. The peer finishes
/// its own side of the handshake a moment later (a webrtc-rs peer sets SRTP up on a task
/// of its own): a keyframe sent at once, from the keyframe cache above all, was lost, and
/// a peer cannot ask again for a packet before the first it saw.
const FIRST_MEDIA_DELAY: std::time::Duration = std::time::Duration::from_millis(40);

/// The driver's side of a session; the router holds its room, sources and sinks.
pub(super) struct Session {
    pub room: String,
    pub participant_id: String,
    pub can_publish: bool,
    pub rtc: Rtc,
    pub ufrag: String,
    pub addrs: Vec<SocketAddr>,
    pub events: mpsc::Sender<SessionEvent>,
    pub pending_offer: Option<SdpPendingOffer>,
    /// True while `pending_offer` is: the node's gate takes the client's answers only then.
    pub awaiting_answer: Arc<AtomicBool>,
    /// The client's first offer was answered: the transport exists and we may offer.
    pub negotiated: bool,
    /// Sources the client named for its mids in its last offer.
    pub sources: HashMap<Mid, TrackSource>,
    /// Tracks published in the offer being answered.
    pub newly_published: Vec<PublishedTrack>,
    pub published: HashMap<Mid, String>,
    /// Mids whose publication was refused (no grant, over the limit): told once.
    pub refused: HashSet<Mid>,
    /// Its fast-path packets carry transport-wide sequence numbers (ADR 0025): then
    /// every RTP packet it is sent comes from the fast path, none from str0m.
    pub numbered: bool,
    /// When its bandwidth estimate was last given to the router, and what it was.
    pub estimate_report: EstimateReport,
    /// Incoming SSRC to its mid, simulcast layer and rid.
    pub rx_mid: FastMap<Ssrc, (Mid, u8, Option<Rid>)>,
    /// How its sinks go out: str0m's SSRC for each, and the fast path's state.
    /// In the order the router added them, so a sink's place is the same in both.
    pub sinks: PlacedMap<Mid, SinkOut>,
    /// The forwarding fast path's keys, once DTLS is up (None: str0m sends everything).
    pub egress: Option<Egress>,
    /// Where str0m last sent DTLS or SRTP: the peer's address on the selected ICE pair.
    pub dest: Option<SocketAddr>,
    /// Receive-only m-lines the client offered that carry nothing yet (a WHEP player's).
    pub spare_mids: Vec<(Mid, MediaKind)>,
    /// It offered receive-only m-lines of its own (a WHEP player): it gets no offers.
    pub offers_its_own_mlines: bool,
    pub nacks_seen: HashMap<Mid, u64>,
    pub created: Instant,
    pub last_rx: Instant,
    pub connected: bool,
    /// When DTLS came up: a sink's first packets wait `FIRST_MEDIA_DELAY` after it.
    pub connected_at: Option<Instant>,
    pub timeout: Instant,
}

/// How one sink of a session goes out.
#[derive(Default)]
pub(super) struct SinkOut {
    /// The peer answered the offer that added it.
    pub negotiated: bool,
    pub tx_ssrc: Option<Ssrc>,
    /// The fast path's state for this sink (egress/mod.rs), built at its first packet.
    pub out: Option<SlotOut>,
    /// When (ms on the shard's time line) a packet last went through str0m on this sink:
    /// the first one and then one every 5 s do, so str0m's sender reports map the sink's
    /// RTP clock to wall time.
    pub engine_ms: Option<u64>,
}

/// A session's estimate goes to the router when it moved by a twentieth, or a second
/// after the last time: feedback comes every 50-100 ms, and the router fits layers to it
/// every 200 ms.
#[derive(Default)]
pub(super) struct EstimateReport {
    last: Option<(u64, Instant)>,
}

impl EstimateReport {
    pub fn due(&mut self, bps: u64, now: Instant) -> bool {
        let due = self.last.is_none_or(|(last, at)| {
            bps.abs_diff(last) * 20 > last || now.saturating_duration_since(at) >= Duration::from_secs(1)
        });
        if due {
            self.last = Some((bps, now));
        }
        due
    }
}

impl Session {
    pub fn new(
        room: String,
        participant_id: String,
        can_publish: bool,
        rtc: Rtc,
        ufrag: String,
        events: mpsc::Sender<SessionEvent>,
        now: Instant,
    ) -> Self {
        Self {
            room,
            participant_id,
            can_publish,
            rtc,
            ufrag,
            addrs: Vec::new(),
            events,
            pending_offer: None,
            awaiting_answer: Arc::new(AtomicBool::new(false)),
            negotiated: false,
            sources: HashMap::new(),
            newly_published: Vec::new(),
            published: HashMap::new(),
            refused: HashSet::new(),
            numbered: false,
            estimate_report: EstimateReport::default(),
            rx_mid: FastMap::default(),
            sinks: PlacedMap::default(),
            egress: None,
            dest: None,
            spare_mids: Vec::new(),
            offers_its_own_mlines: false,
            nacks_seen: HashMap::new(),
            created: now,
            last_rx: now,
            connected_at: None,
            connected: false,
            timeout: now,
        }
    }

    pub fn emit(&self, event: SessionEvent, metrics: &SfuMetrics) {
        match self.events.try_send(event) {
            Ok(()) => {}
            // The signaling side already went (the session ends with the next command).
            Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics.dropped_events.inc();
                static WARNING: LogThrottle = LogThrottle::new();
                if WARNING.ready() {
                    warn!(
                        participant = %self.participant_id,
                        "session event queue full: signaling fell behind (huiyi_dropped_session_events_total counts them)"
                    );
                }
            }
        }
    }

    fn refuse(&self, code: &'static str, message: String, metrics: &SfuMetrics) {
        self.emit(SessionEvent::Error { code, message }, metrics);
    }
}

impl Shard {
    pub(super) fn handle_offer(
        &mut self,
        id: SessionId,
        checked: CheckedOffer,
        tracks: Vec<(String, TrackSource)>,
    ) {
        let Some(session) = self.sessions.get_mut(&id) else { return };
        if session.pending_offer.is_some() {
            // Glare: we are the impolite peer; the client rolls back and answers ours.
            debug!(participant = %session.participant_id, "client offer ignored during server offer");
            return;
        }
        let broken = "the offer broke this session's WebRTC engine";
        // The ticket lives to the end of this call: until then the session has an offer in flight.
        let CheckedOffer { offer, mids, recvonly, ticket } = checked;
        session.sources = tracks.into_iter().map(|(mid, src)| (Mid::from(mid.as_str()), src)).collect();
        session.newly_published.clear();
        let rtc = &mut session.rtc;
        let Some(accepted) =
            contained(&mut self.failed, &self.metrics, id, || rtc.sdp_api().accept_offer(offer))
        else {
            return session.refuse("bad_sdp", broken.into(), &self.metrics);
        };
        let answer = match accepted {
            Ok(a) => a,
            Err(e) => {
                debug!(participant = %session.participant_id, error = %e, "offer refused");
                return session.refuse(
                    "bad_sdp",
                    "the offer was refused (unsupported or inconsistent SDP)".into(),
                    &self.metrics,
                );
            }
        };
        session.negotiated = true;
        self.follow_ice_restart(id);
        self.renegotiated(id);
        // Publications follow the SDP now, so the answer can name the tracks it accepted.
        for mid in mids {
            self.sync_publication(id, mid);
        }
        self.drain(id);
        let Some(session) = self.sessions.get_mut(&id) else { return };
        let published = std::mem::take(&mut session.newly_published);
        session.emit(SessionEvent::Answer { sdp: answer.to_sdp_string(), published }, &self.metrics);
        self.router.negotiated(id, Instant::now());
        self.fill_offered_sinks(id, recvonly);
        self.carry_out();
        // Done with the client's offer: its next one (or its answer to ours) may come.
        drop(ticket);
        self.offer_if_needed(id);
    }

    /// An offer with new ICE credentials (the client restarted ICE: its network changed)
    /// gave the session new local credentials too: its connectivity checks now name the
    /// new username, so datagrams are routed to it by that one (the old goes).
    fn follow_ice_restart(&mut self, id: SessionId) {
        let Some(session) = self.sessions.get_mut(&id) else { return };
        let rtc = &mut session.rtc;
        let Some(ufrag) =
            contained(&mut self.failed, &self.metrics, id, || rtc.direct_api().local_ice_credentials().ufrag)
        else {
            return;
        };
        if ufrag == session.ufrag {
            return;
        }
        info!(participant = %session.participant_id, "ICE restarted");
        self.metrics.ice_restarts.inc();
        let old = std::mem::replace(&mut session.ufrag, ufrag.clone());
        self.by_ufrag.remove(&old);
        self.routes.remove_ufrag(&old);
        self.routes.add_ufrag(&ufrag, self.index);
        self.by_ufrag.insert(ufrag, id);
    }

    /// A client that receives without renegotiating (a WHEP player) offers the m-lines it
    /// wants media on: new ones take the sources waiting for a sink, as a slot of ours
    /// would, with no offer of ours. Sources with no such m-line wait for the next offer.
    /// m-lines it offered that carry nothing yet stay spare: a source that comes later (the
    /// teacher's audio arriving after the player) takes one then.
    fn fill_offered_sinks(&mut self, id: SessionId, offered: Vec<(Mid, MediaKind)>) {
        let Some(session) = self.sessions.get_mut(&id) else { return };
        session.offers_its_own_mlines |= !offered.is_empty();
        let mut free: Vec<(Mid, MediaKind)> =
            offered.into_iter().filter(|(mid, _)| !session.sinks.contains_key(mid)).collect();
        session.spare_mids = free.clone();
        if free.is_empty() {
            return;
        }
        let mut pairs = Vec::new();
        let mut unplaced = Vec::new();
        for slot in self.router.slots_to_add(id) {
            let kind = if slot.kind == TrackKind::Audio { MediaKind::Audio } else { MediaKind::Video };
            match free.iter().position(|(_, k)| *k == kind) {
                Some(at) => pairs.push((free.remove(at).0, slot.source)),
                None => unplaced.push(slot.source),
            }
        }
        self.router.add_later(id, unplaced);
        if let Some(session) = self.sessions.get_mut(&id) {
            session.spare_mids = free;
        }
        if pairs.is_empty() {
            return;
        }
        let told = self.router.slots_added(id, &pairs, Instant::now());
        let Some(session) = self.sessions.get_mut(&id) else { return };
        let (rtc, sinks) = (&mut session.rtc, &mut session.sinks);
        let taken = contained(&mut self.failed, &self.metrics, id, || {
            for (mid, _) in &pairs {
                let tx_ssrc = rtc.direct_api().stream_tx_by_mid(*mid, None).map(|s| s.ssrc());
                sinks.insert(*mid, SinkOut { negotiated: true, tx_ssrc, ..SinkOut::default() });
            }
        });
        if taken.is_none() {
            return; // the session ends after this input
        }
        session.emit(SessionEvent::Slots(told), &self.metrics);
        self.renegotiated(id);
    }

    pub(super) fn handle_answer(&mut self, id: SessionId, checked: CheckedAnswer) {
        let Some(session) = self.sessions.get_mut(&id) else { return };
        let Some(pending) = session.pending_offer.take() else {
            return session.refuse(
                "bad_request",
                "answer without an outstanding offer".into(),
                &self.metrics,
            );
        };
        session.awaiting_answer.store(false, Ordering::Release);
        let broken = "the answer broke this session's WebRTC engine";
        let CheckedAnswer { answer, ticket } = checked;
        let rtc = &mut session.rtc;
        let Some(accepted) =
            contained(&mut self.failed, &self.metrics, id, || rtc.sdp_api().accept_answer(pending, answer))
        else {
            return session.refuse("bad_sdp", broken.into(), &self.metrics);
        };
        if let Err(e) = accepted {
            debug!(participant = %session.participant_id, error = %e, "answer refused");
            return session.refuse(
                "bad_sdp",
                "the answer was refused (it does not match the offer)".into(),
                &self.metrics,
            );
        }
        let (rtc, sinks) = (&mut session.rtc, &mut session.sinks);
        let activated = contained(&mut self.failed, &self.metrics, id, || {
            for (mid, sink) in sinks.iter_mut().filter(|(_, s)| !s.negotiated) {
                sink.negotiated = true;
                sink.tx_ssrc = rtc.direct_api().stream_tx_by_mid(*mid, None).map(|s| s.ssrc());
                sink.out = None;
            }
        });
        if activated.is_none() {
            return; // the session ends after this input
        }
        self.renegotiated(id);
        self.drain(id);
        self.carry_out();
        // Done with this answer: the answer to our next offer may come at once.
        drop(ticket);
        self.offer_if_needed(id);
    }

    /// After an accepted offer or answer, and at the connection: what the session's payload
    /// types mean now, for the media it sends and on every sink it can be sent on (a sink
    /// whose m-line the peer refused has no SSRC and stays inactive).
    fn renegotiated(&mut self, id: SessionId) {
        let Some(session) = self.sessions.get(&id) else { return };
        // A sink goes live once media can reach the peer: what it sent before DTLS is up
        // (its first keyframe above all) would be lost, and the peer would start mid-GOP.
        let connected = session.connected;
        let read = contained(&mut self.failed, &self.metrics, id, || {
            let sinks: Vec<(Mid, PayloadTypes)> = session
                .sinks
                .iter()
                .filter(|(_, sink)| connected && sink.negotiated && sink.tx_ssrc.is_some())
                .map(|(mid, _)| (*mid, received_payload_types(&session.rtc, *mid)))
                .collect();
            (sent_payload_types(&session.rtc), sinks)
        });
        let Some((sent, sinks)) = read else { return };
        self.router.set_codecs(id, sent);
        let now = Instant::now();
        let start_at = session.connected_at.map_or(now, |at| (at + FIRST_MEDIA_DELAY).max(now));
        for (mid, payload_types) in sinks {
            self.router.sink_negotiated_from(id, mid, payload_types, start_at, now);
        }
    }

    pub(super) fn handle_candidate(&mut self, id: SessionId, candidate: &str) {
        let Some(session) = self.sessions.get_mut(&id) else { return };
        let line = candidate.trim().trim_start_matches("a=");
        // Empty (end of candidates), or an mDNS name a browser hides its address behind:
        // nothing to add; its checks arrive as peer-reflexive anyway.
        if line.is_empty() || line.split_whitespace().nth(4).is_some_and(|a| a.ends_with(".local")) {
            return;
        }
        // ICE-lite: the peer's checks reach us regardless; candidates only help when valid.
        // Parsing and adding run contained: a candidate that panics the engine ends this
        // session only.
        let rtc = &mut session.rtc;
        let added = contained(&mut self.failed, &self.metrics, id, || {
            Candidate::from_sdp_string(line).map(|c| rtc.add_remote_candidate(c))
        });
        match added {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                self.metrics.bad_input.with_label_values(&["candidate"]).inc();
                debug!(participant = %session.participant_id, error = %e, "ignored remote candidate");
            }
            None => {
                let message = "the ICE candidate broke this session's WebRTC engine".to_string();
                return session.refuse("bad_candidate", message, &self.metrics);
            }
        }
        self.drain(id);
    }

    pub(super) fn handle_mute(&mut self, id: SessionId, track_id: &str, muted: bool) {
        if let Err(message) = self.router.mute(id, track_id, muted)
            && let Some(session) = self.sessions.get(&id)
        {
            session.refuse("bad_request", message, &self.metrics);
        }
        self.carry_out();
    }

    /// Send a server offer when sources wait for new sinks and no negotiation is in flight.
    pub(super) fn offer_if_needed(&mut self, id: SessionId) {
        let Some(session) = self.sessions.get_mut(&id) else { return };
        if !session.negotiated || session.pending_offer.is_some() {
            return;
        }
        if session.offers_its_own_mlines {
            // A player that never renegotiates (WHEP) would leave our offer unanswered and
            // block every later one: sources wait for a spare m-line of its own instead.
            let spare = session.spare_mids.clone();
            if !spare.is_empty() {
                self.fill_offered_sinks(id, spare);
            }
            return;
        }
        let wanted = self.router.slots_to_add(id);
        if wanted.is_empty() {
            return;
        }
        let rtc = &mut session.rtc;
        let built = contained(&mut self.failed, &self.metrics, id, || {
            let mut api = rtc.sdp_api();
            let mids: Vec<Mid> = wanted
                .iter()
                .map(|w| {
                    let kind = if w.kind == TrackKind::Audio { MediaKind::Audio } else { MediaKind::Video };
                    // The msid names the first track; `slots` says what the mid carries later.
                    let (stream, track) = (Some(w.participant_id.clone()), Some(w.track_id.clone()));
                    api.add_media(kind, Direction::SendOnly, stream, track, None)
                })
                .collect();
            (mids, api.apply())
        });
        let Some((mids, applied)) = built else { return };
        let added: Vec<(Mid, router::SourceKey)> =
            mids.iter().copied().zip(wanted.iter().map(|w| w.source)).collect();
        for mid in &mids {
            session.sinks.insert(*mid, SinkOut::default());
        }
        let told = self.router.slots_added(id, &added, Instant::now());
        if let Some((offer, pending)) = applied {
            session.pending_offer = Some(pending);
            session.awaiting_answer.store(true, Ordering::Release);
            session.emit(SessionEvent::Offer { sdp: offer.to_sdp_string() }, &self.metrics);
            session.emit(SessionEvent::Slots(told), &self.metrics);
        }
        self.carry_out();
        self.drain(id);
    }

    pub(super) fn on_event(&mut self, id: SessionId, event: Event) {
        match event {
            Event::RtpPacket(packet) => self.route_packet(id, packet),
            Event::Connected => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.connected = true;
                    s.connected_at = Some(Instant::now());
                    info!(participant = %s.participant_id, room = %s.room, "media connected");
                }
                self.take_srtp_keys();
                // Sinks negotiated before the connection go live now.
                self.renegotiated(id);
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.end_session(id, LeaveReason::MediaTimeout);
            }
            // str0m holds these back until DTLS is up; the sync after each accepted offer
            // has usually handled them already, and repeating it is harmless.
            Event::MediaAdded(added) => self.sync_publication(id, added.mid),
            Event::MediaChanged(changed) => self.sync_publication(id, changed.mid),
            Event::KeyframeRequest(request) => {
                self.metrics.keyframe_requests.with_label_values(&["received"]).inc();
                self.route(Input::KeyframeWanted { sink: (id, request.mid) });
            }
            Event::MediaEgressStats(stats) => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    let seen = s.nacks_seen.entry(stats.mid).or_insert(0);
                    self.metrics.nacks.inc_by(stats.nacks.saturating_sub(*seen));
                    *seen = stats.nacks.max(*seen);
                }
            }
            _ => {}
        }
    }

    /// Publish or unpublish the track on `mid` so it matches what the client sends.
    fn sync_publication(&mut self, id: SessionId, mid: Mid) {
        let Some(session) = self.sessions.get_mut(&id) else { return };
        let rtc = &session.rtc;
        let read = contained(&mut self.failed, &self.metrics, id, || {
            let media = rtc.media(mid)?;
            let receiving =
                matches!(media.direction(), Direction::RecvOnly | Direction::SendRecv) && !media.disabled();
            Some((receiving, media.kind()))
        });
        let Some((receiving, kind)) = read.flatten() else { return };
        let published = session.published.contains_key(&mid);
        if !receiving {
            // A refused track that stops may be offered again later.
            session.refused.remove(&mid);
        }
        if receiving && !published {
            self.publish(id, mid, kind);
        } else if !receiving && published {
            if let Some(s) = self.sessions.get_mut(&id) {
                s.published.remove(&mid);
            }
            self.router.unpublish(id, mid);
            self.carry_out();
        }
    }

    fn publish(&mut self, id: SessionId, mid: Mid, kind: MediaKind) {
        let Some(session) = self.sessions.get_mut(&id) else { return };
        if !session.can_publish {
            if session.refused.insert(mid) {
                session.refuse("forbidden", "this token may not publish".into(), &self.metrics);
            }
            return;
        }
        let limit = self.config.max_publications_per_participant;
        if session.published.len() >= limit {
            if session.refused.insert(mid) {
                let message =
                    format!("at most {limit} published tracks per participant; mid {mid} is not forwarded");
                session.refuse("limit_exceeded", message, &self.metrics);
            }
            return;
        }
        let kind = if kind == MediaKind::Audio { TrackKind::Audio } else { TrackKind::Video };
        let source = session.sources.get(&mid).copied().unwrap_or(match kind {
            TrackKind::Audio => TrackSource::Microphone,
            TrackKind::Video => TrackSource::Camera,
        });
        let track = TrackInfo { id: format!("TR_{}", super::random_id()), kind, source, muted: false };
        session.published.insert(mid, track.id.clone());
        session.newly_published.push(PublishedTrack { mid: mid.to_string(), track: track.clone() });
        info!(participant = %session.participant_id, room = %session.room, track = %track.id, kind = kind.as_str(), "track published");
        self.router.publish(id, mid, track, Instant::now());
        self.carry_out();
    }

    /// The mid, simulcast layer and rid an incoming SSRC belongs to.
    pub(super) fn rx_stream(session: &mut Session, ssrc: Ssrc) -> Option<(Mid, u8, Option<Rid>)> {
        if let Some(found) = session.rx_mid.get(&ssrc) {
            return Some(*found);
        }
        let (mid, rid) = {
            let mut api = session.rtc.direct_api();
            let rx = api.stream_rx(&ssrc)?;
            (rx.mid(), rx.rid())
        };
        let layer = match rid {
            None => 0,
            Some(rid) => {
                let offered: Vec<String> = match session.rtc.media(mid).map(|m| m.rids_rx()) {
                    Some(str0m::media::Rids::Specific(rids)) => rids.iter().map(|r| r.to_string()).collect(),
                    _ => Vec::new(),
                };
                rid_rank(&rid.to_string(), &offered)
            }
        };
        session.rx_mid.insert(ssrc, (mid, layer, rid));
        Some((mid, layer, rid))
    }
}

/// A session's WebRTC engine as every participant gets it: ICE-lite, RTP mode (we forward
/// packets, not frames), a NACK cache sized from the config, and only the codecs the
/// config names (ADR 0018): Opus (with RED beside it unless the config says no, ADR 0026),
/// and the video codecs each with its RTX.
pub(crate) fn session_rtc(config: &MediaConfig, creds: IceCreds, now: Instant) -> Rtc {
    let mut builder = Rtc::builder()
        .set_ice_lite(true)
        .set_rtp_mode(true)
        .set_local_ice_credentials(creds)
        .set_send_buffer_video(config.nack_cache_packets)
        .set_stats_interval(Some(super::STATS_INTERVAL))
        .set_crypto_provider(egress::keys::crypto_provider())
        .clear_codecs()
        .enable_opus(true, config.opus_red);
    let mut added = Vec::new();
    for codec in &config.video_codecs {
        // Once each: a payload type added twice would be offered twice.
        if added.contains(codec) {
            continue;
        }
        added.push(*codec);
        let codecs = builder.codec_config();
        match codec {
            VideoCodec::Vp8 => codecs.enable_vp8(true),
            // Constrained baseline, packetization-mode 1: what every browser sends and
            // plays (a receiver of baseline plays it too; `CodecKey::plays`).
            VideoCodec::H264 => codecs.add_h264(H264_PT.into(), Some(H264_RTX_PT.into()), true, 0x42e01f),
        }
    }
    // str0m's own estimator stays off: it would see none of the fast path's packets, and
    // its probes would go out on the fast path's sequence numbers (ADR 0025).
    builder.build(now)
}

/// The payload types of our one H.264 format (those str0m gives it among its defaults).
const H264_PT: u8 = 108;
const H264_RTX_PT: u8 = 109;

fn codec_key(spec: &CodecSpec) -> CodecKey {
    let h264 = (spec.codec == Codec::H264)
        .then(|| (spec.format.packetization_mode, h264_profile(spec.format.profile_level_id)));
    CodecKey { codec: spec.codec, clock_rate: spec.clock_rate.get(), h264 }
}

/// What every payload type of the session's codec configuration means (for the media it
/// sends us).
pub(super) fn sent_payload_types(rtc: &Rtc) -> PayloadTypes {
    rtc.codec_config().iter().flat_map(payload_types_of).collect()
}

/// The payload types the peer takes on `mid`, and their codecs.
pub(super) fn received_payload_types(rtc: &Rtc, mid: Mid) -> PayloadTypes {
    let Some(media) = rtc.media(mid) else { return Vec::new() };
    let config = rtc.codec_config();
    media
        .remote_pts()
        .iter()
        .filter_map(|pt| config.find(|p| p.pt() == *pt))
        .flat_map(payload_types_of)
        .collect()
}

/// A negotiated format's payload type and codec, and its RED's where both sides took RED
/// (str0m folds RED onto the Opus it carries; the router keeps it a format of its own).
fn payload_types_of(p: &PayloadParams) -> impl Iterator<Item = (u8, CodecKey)> {
    let main = (*p.pt(), codec_key(&p.spec()));
    let red = p.red().filter(|_| p.spec().codec == Codec::Opus).map(|red| (*red, CodecKey::opus_red()));
    std::iter::once(main).chain(red)
}

/// The fast-path state of a sink: str0m's SSRCs for its mid and the peer's extension ids.
pub(crate) fn slot_out(rtc: &mut Rtc, mid: Mid, ssrc: Ssrc) -> Option<SlotOut> {
    let media = rtc.media(mid)?;
    // One-byte header extensions (RFC 8285) have ids 1-14; the fast path writes no others.
    let one_byte = |id: Option<u8>| id.filter(|id| (1..=14).contains(id));
    let exts = media.remote_extmap();
    use str0m::rtp::Extension;
    let ext = ExtIds {
        mid: one_byte(exts.id_of(Extension::RtpMid)),
        audio_level: one_byte(exts.id_of(Extension::AudioLevel)),
        transport_cc: one_byte(exts.id_of(Extension::TransportSequenceNumber)),
        orientation: one_byte(exts.id_of(Extension::VideoOrientation)),
        content_type: one_byte(exts.id_of(Extension::VideoContentType)),
    };
    let rtx_pts = rtc.codec_config().iter().filter_map(|p| Some((*p.pt(), *p.resend()?))).collect();
    let rtx_ssrc = rtc.direct_api().stream_tx(&ssrc).and_then(|s| s.rtx()).map(|s| *s);
    Some(SlotOut::new(*ssrc, rtx_ssrc, rtx_pts, mid.to_string(), ext))
}

/// Runs one call into a session's WebRTC engine. A panic in it (a bug that network
/// input reached) fails only that session: it is counted, logged and ended after the
/// current input, and every other session on the shard carries on.
pub(super) fn contained<T>(
    failed: &mut Vec<SessionId>,
    metrics: &SfuMetrics,
    id: SessionId,
    f: impl FnOnce() -> T,
) -> Option<T> {
    egress::keys::set_current_session(id);
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => Some(v),
        Err(panic) => {
            let message = super::panic_message(panic.as_ref());
            metrics.session_panics.inc();
            warn!(session = id, panic = %message, "WebRTC engine panicked; ending this session only");
            if !failed.contains(&id) {
                failed.push(id);
            }
            None
        }
    }
}
