//! A shard: one thread that owns a set of rooms and every session in them. It is fed
//! datagrams and commands through one bounded queue, drives each session's str0m `Rtc`,
//! and forwards RTP between sessions of a room. No task or thread per peer.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::{Codec, CodecSpec};
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, Ssrc};
use str0m::{Candidate, Event, IceConnectionState, IceCreds, Input, Output, Rtc};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::api::{
    JoinReply, JoinRequest, LeaveReason, MediaError, ParticipantInfo, PublishedTrack, SessionEvent,
    SessionId, ShownTrack, SlotInfo, TrackInfo, TrackKind, TrackSource,
};
use crate::config::MediaConfig;
use crate::demux::{RouteTable, is_stun, stun_server_ufrag};
use crate::egress::{self, Egress, ExtIds, Outgoing, SlotOut};
use crate::fasthash::FastMap;
use crate::forward::{RtpRewriter, VideoCodec, Vp8Rewriter, starts_keyframe};
use crate::io::{DatagramPool, Datagrams, MediaSocket, SendQueue};
use crate::metrics::SfuMetrics;
use crate::room::{Member, Publication, PublicationKey, Room};
use crate::select::allocator::UPGRADE_HEADROOM;
use crate::select::{AllocTrack, MAX_LAYERS, Priority, Quality, allocate, choose_layer, rid_rank};

const HOUSEKEEPING: Duration = Duration::from_millis(200);
const MAX_INPUTS_PER_TURN: usize = 512;
/// Datagrams queued before a busy turn sends them (it sends the rest at its end). The more
/// a turn sends at once, the more of them to one subscriber go out as one GSO send; a
/// shard that falls behind batches more by itself, an idle one sends at once.
const SEND_BATCH: usize = 1024;
/// On the fast path, one packet per slot in this interval still goes through str0m. Its
/// sender reports extrapolate the RTP clock from the last packet written to it, and the
/// rewriter keeps a slot's clock continuous across source switches, so the refresh only
/// bounds drift. Each such packet costs a full poll of the subscriber's engine (about
/// 20 us at 30 streams): at 1 s it was a fifth of the shard's CPU at meeting-300.
const ENGINE_PACKET_EVERY_MS: u64 = 5000;
/// Source addresses one session may be reached from (ICE may move between a few).
const MAX_ADDRS_PER_SESSION: usize = 8;
const STATS_INTERVAL: Duration = Duration::from_secs(5);
/// Headers and SRTP tag on top of an RTP payload, for send-rate accounting.
const RTP_OVERHEAD_BYTES: u64 = 40;
/// Layer bitrates are measured over this interval.
const MEASURE_INTERVAL: Duration = Duration::from_secs(1);
/// What a layer is assumed to cost before it was measured (q, h, f).
const NOMINAL_LAYER_BPS: [u64; MAX_LAYERS] = [150_000, 500_000, 1_700_000];
/// A simulcast layer nobody takes for this long is paused at its publisher.
const LAYER_PAUSE_AFTER: Duration = Duration::from_secs(2);

pub(crate) enum ShardInput {
    /// Datagrams from one read of the socket (the receive thread found this shard's).
    Datagrams(Datagrams),
    Join {
        request: JoinRequest,
        events: mpsc::Sender<SessionEvent>,
        reply: JoinReply,
    },
    Offer {
        session: SessionId,
        sdp: String,
        tracks: Vec<(String, TrackSource)>,
    },
    Answer {
        session: SessionId,
        sdp: String,
    },
    Candidate {
        session: SessionId,
        candidate: String,
    },
    Mute {
        session: SessionId,
        track_id: String,
        muted: bool,
    },
    Subscribe {
        session: SessionId,
        tracks: Vec<ShownTrack>,
    },
    Leave {
        session: SessionId,
        reason: LeaveReason,
    },
    Shutdown,
}

/// The queue into a shard, plus its load for placement.
#[derive(Clone)]
pub(crate) struct ShardSender {
    pub tx: SyncSender<ShardInput>,
    pub sessions: Arc<AtomicUsize>,
    /// Datagrams in the queue, bounded by `queue_limit`.
    pub queued: Arc<AtomicUsize>,
    pub queue_limit: usize,
}

impl ShardSender {
    /// Queue received datagrams; gives them back (and whether the queue was full rather
    /// than gone) when they cannot be queued.
    pub fn datagrams(&self, batch: Datagrams) -> Result<(), (Datagrams, bool)> {
        let n = batch.len();
        if self.queued.load(Ordering::Relaxed) + n > self.queue_limit {
            return Err((batch, true));
        }
        self.queued.fetch_add(n, Ordering::Relaxed);
        self.tx.try_send(ShardInput::Datagrams(batch)).map_err(|e| {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            match e {
                TrySendError::Full(ShardInput::Datagrams(b)) => (b, true),
                TrySendError::Disconnected(ShardInput::Datagrams(b)) => (b, false),
                _ => unreachable!("a datagram batch comes back as one"),
            }
        })
    }

    pub fn command(&self, input: ShardInput) -> Result<(), MediaError> {
        self.tx.try_send(input).map_err(|e| match e {
            TrySendError::Full(_) => MediaError::Overloaded,
            TrySendError::Disconnected(_) => MediaError::ShuttingDown,
        })
    }

    /// For messages that must not be lost (a session ending): waits for room in the queue.
    pub fn command_blocking_ok(&self, input: ShardInput) {
        let _ = self.tx.send(input);
    }
}

/// A slot: one outgoing m-line of a peer, carrying one published track at a time.
/// Reusing slots means showing another track needs no renegotiation.
struct Subscription {
    /// The track it carries now.
    publication: Option<PublicationKey>,
    kind: TrackKind,
    /// True once the peer answered the offer that added it.
    active: bool,
    tx_ssrc: Option<Ssrc>,
    rewriter: RtpRewriter,
    vp8: Vp8Rewriter,
    /// Source payload type and the peer's payload type for the same codec.
    pt_map: Option<(u8, str0m::media::Pt)>,
    /// The quality the peer's tile needs (video).
    wanted: Quality,
    /// The layer forwarded now; None until the first keyframe (and after a change of track).
    current: Option<u8>,
    /// The layer to forward; a switch happens at its next keyframe.
    target: Option<u8>,
    /// The bandwidth allocator's limit: None unlimited, Some(None) paused, Some(Some(l))
    /// at most layer l.
    cap: Option<Option<u8>>,
    /// Place in the client's list of shown tracks (its importance among equals).
    order: usize,
    /// The fast path's state for this slot (egress/mod.rs), built at its first packet.
    out: Option<SlotOut>,
    /// When (ms since epoch) a packet last went through str0m on this slot: the first one
    /// and then one every 5 s do, so str0m's sender reports map the slot's RTP clock to
    /// wall time.
    engine_ms: Option<u64>,
}

impl Subscription {
    fn new(kind: TrackKind) -> Self {
        let clock = if kind == TrackKind::Audio { 48_000 } else { 90_000 };
        Self {
            publication: None,
            kind,
            active: false,
            tx_ssrc: None,
            rewriter: RtpRewriter::new(clock),
            vp8: Vp8Rewriter::default(),
            pt_map: None,
            wanted: MAX_LAYERS as u8 - 1,
            current: None,
            target: None,
            cap: None,
            order: usize::MAX,
            out: None,
            engine_ms: None,
        }
    }

    /// The layer to send of a track whose layers `arriving` arrive now.
    fn choose_target(&self, arriving: [bool; MAX_LAYERS]) -> Option<u8> {
        match self.cap {
            Some(None) => None,
            Some(Some(cap)) => choose_layer(self.wanted.min(cap), arriving),
            None => choose_layer(self.wanted, arriving),
        }
    }

    /// Carry `key` from now on (or nothing): video waits for a keyframe of the new track.
    fn assign(&mut self, key: Option<PublicationKey>) {
        self.publication = key;
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
}

struct Session {
    room: String,
    participant_id: String,
    can_publish: bool,
    can_subscribe: bool,
    rtc: Rtc,
    ufrag: String,
    addrs: Vec<SocketAddr>,
    events: mpsc::Sender<SessionEvent>,
    pending_offer: Option<SdpPendingOffer>,
    /// The client's first offer was answered: the transport exists and we may offer.
    negotiated: bool,
    /// Tracks that need a new slot in the next server offer.
    to_add: Vec<PublicationKey>,
    /// The video tracks the client shows (None: it never said; it gets every one).
    view: Option<Vec<ShownTrack>>,
    /// Which slot carries each track.
    slot_of: FastMap<PublicationKey, Mid>,
    /// Sources the client named for its mids in its last offer.
    sources: HashMap<Mid, TrackSource>,
    /// Tracks published in the offer being answered.
    newly_published: Vec<PublishedTrack>,
    published: HashMap<Mid, String>,
    /// Mids whose publication was refused (no grant, over the limit): told once.
    refused: std::collections::HashSet<Mid>,
    /// The latest bandwidth estimate for what we send it (bits per second).
    estimate: Option<u64>,
    /// Its estimate comes from transport-cc (REMB reports are then ignored).
    twcc: bool,
    /// Media bytes forwarded to it since the last measurement, and the measured rate.
    sent_bytes: u64,
    sent_bps: u64,
    /// Incoming SSRC to its mid and simulcast layer.
    rx_mid: FastMap<Ssrc, (Mid, u8)>,
    subscriptions: FastMap<Mid, Subscription>,
    /// The forwarding fast path's keys, once DTLS is up (None: str0m sends everything).
    egress: Option<Egress>,
    /// Where str0m last sent DTLS or SRTP: the peer's address on the selected ICE pair.
    dest: Option<SocketAddr>,
    nacks_seen: HashMap<Mid, u64>,
    created: Instant,
    last_rx: Instant,
    connected: bool,
    timeout: Instant,
}

impl Session {
    fn emit(&self, event: SessionEvent, metrics: &SfuMetrics) {
        match self.events.try_send(event) {
            Ok(()) => {}
            // The signaling side already went (the session ends with the next command).
            Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics.dropped_events.inc();
                warn!(participant = %self.participant_id, "session event queue full: signaling fell behind");
            }
        }
    }
}

pub(crate) struct Shard {
    index: usize,
    config: MediaConfig,
    socket: Arc<MediaSocket>,
    /// This turn's datagrams, sent together at its end.
    out: SendQueue,
    queued: Arc<AtomicUsize>,
    pool: Arc<DatagramPool>,
    local_addr: SocketAddr,
    candidates: Vec<SocketAddr>,
    routes: Arc<RouteTable>,
    room_placement: Arc<DashMap<String, usize>>,
    load: Arc<AtomicUsize>,
    metrics: SfuMetrics,
    sessions: FastMap<SessionId, Session>,
    by_addr: HashMap<SocketAddr, SessionId>,
    by_ufrag: HashMap<String, SessionId>,
    rooms: FastMap<String, Room>,
    timers: BinaryHeap<Reverse<(Instant, SessionId)>>,
    dirty: Vec<SessionId>,
    /// Sessions whose tracks to receive changed during this input: one offer each after it.
    offers_due: Vec<SessionId>,
    /// Sessions whose engine panicked, to end after this input.
    failed: Vec<SessionId>,
    next_session: SessionId,
    /// When layer bitrates were last measured.
    last_measure: Instant,
}

pub(crate) struct ShardParts {
    pub index: usize,
    pub config: MediaConfig,
    pub socket: Arc<MediaSocket>,
    pub candidates: Vec<SocketAddr>,
    pub routes: Arc<RouteTable>,
    pub room_placement: Arc<DashMap<String, usize>>,
    pub load: Arc<AtomicUsize>,
    pub queued: Arc<AtomicUsize>,
    pub pool: Arc<DatagramPool>,
    pub metrics: SfuMetrics,
}

impl Shard {
    pub fn new(parts: ShardParts) -> std::io::Result<Self> {
        let local_addr = parts.socket.local_addr()?;
        Ok(Self {
            index: parts.index,
            config: parts.config,
            socket: parts.socket,
            out: SendQueue::default(),
            queued: parts.queued,
            pool: parts.pool,
            local_addr,
            candidates: parts.candidates,
            routes: parts.routes,
            room_placement: parts.room_placement,
            load: parts.load,
            metrics: parts.metrics,
            sessions: FastMap::default(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            rooms: FastMap::default(),
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            offers_due: Vec::new(),
            failed: Vec::new(),
            // Session ids carry the shard index in the low bits so they are unique per node.
            next_session: 1,
            last_measure: Instant::now(),
        })
    }

    pub fn run(mut self, rx: Receiver<ShardInput>) {
        let mut next_housekeeping = Instant::now() + HOUSEKEEPING;
        loop {
            let now = Instant::now();
            let deadline = self.next_deadline().min(next_housekeeping);
            match rx.recv_timeout(deadline.saturating_duration_since(now)) {
                Ok(ShardInput::Shutdown) => break,
                Ok(input) => {
                    self.handle(input);
                    for _ in 0..MAX_INPUTS_PER_TURN {
                        if self.out.len() >= SEND_BATCH {
                            self.send_queued();
                        }
                        match rx.try_recv() {
                            Ok(ShardInput::Shutdown) => return self.shutdown(),
                            Ok(input) => self.handle(input),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            self.run_timers(now);
            if now >= next_housekeeping {
                self.housekeeping(now);
                next_housekeeping = now + HOUSEKEEPING;
            }
            self.flush_offers();
            self.end_failed_sessions();
            self.flush_dirty();
            self.send_queued();
        }
        self.shutdown();
    }

    /// Send what this input (or timer pass) queued: one system call per run of
    /// equal-sized datagrams to one address (io/send.rs).
    fn send_queued(&mut self) {
        if self.out.is_empty() {
            return;
        }
        let flushed = self.out.flush(&self.socket);
        self.metrics.packets_out.inc_by(flushed.datagrams);
        self.metrics.bytes_out.inc_by(flushed.bytes);
        self.metrics.send_calls.inc_by(flushed.sends);
        self.metrics.send_failures.inc_by(flushed.failed);
    }

    fn shutdown(&mut self) {
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            self.end_session(id, LeaveReason::RoomClosed);
        }
        self.send_queued();
    }

    fn next_deadline(&mut self) -> Instant {
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            match self.sessions.get(&id) {
                Some(s) if s.timeout == at => return at,
                _ => {
                    self.timers.pop();
                }
            }
        }
        Instant::now() + HOUSEKEEPING
    }

    fn run_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(session) = self.sessions.get_mut(&id) else {
                continue;
            };
            if session.timeout != at {
                continue;
            }
            let rtc = &mut session.rtc;
            let result =
                contained(&mut self.failed, &self.metrics, id, || rtc.handle_input(Input::Timeout(now)));
            if let Some(Err(e)) = result {
                debug!(error = %e, "timeout input failed");
            }
            self.drain(id);
        }
    }

    fn handle(&mut self, input: ShardInput) {
        match input {
            ShardInput::Datagrams(batch) => {
                for (source, data) in batch.iter() {
                    self.handle_datagram(source, data, batch.at);
                }
                self.queued.fetch_sub(batch.len(), Ordering::Relaxed);
                self.pool.give_back(batch);
            }
            ShardInput::Join { request, events, reply } => {
                let _ = reply.send(self.join(request, events));
            }
            ShardInput::Offer { session, sdp, tracks } => self.handle_offer(session, &sdp, tracks),
            ShardInput::Answer { session, sdp } => self.handle_answer(session, &sdp),
            ShardInput::Candidate { session, candidate } => self.handle_candidate(session, &candidate),
            ShardInput::Mute { session, track_id, muted } => self.handle_mute(session, &track_id, muted),
            ShardInput::Subscribe { session, tracks } => {
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.view = Some(tracks);
                    self.sync_video_slots(session);
                }
            }
            ShardInput::Leave { session, reason } => self.end_session(session, reason),
            ShardInput::Shutdown => {}
        }
        self.flush_offers();
        self.end_failed_sessions();
    }

    /// Send the server offers that publications and unpublications of this input called
    /// for: one per session, however many tracks changed.
    fn flush_offers(&mut self) {
        let mut due = std::mem::take(&mut self.offers_due);
        due.sort_unstable();
        due.dedup();
        for id in due {
            self.offer_if_needed(id);
        }
    }

    /// End sessions whose WebRTC engine panicked: the panic is contained to them.
    fn end_failed_sessions(&mut self) {
        while let Some(id) = self.failed.pop() {
            self.end_session(id, LeaveReason::MediaError);
        }
    }

    fn join(
        &mut self,
        request: JoinRequest,
        events: mpsc::Sender<SessionEvent>,
    ) -> Result<(SessionId, Vec<ParticipantInfo>), MediaError> {
        let now = Instant::now();
        if let Some(room) = self.rooms.get(&request.room)
            && room.members.len() >= self.config.max_participants_per_room
        {
            return Err(MediaError::RoomFull(self.config.max_participants_per_room));
        }
        let id = (self.next_session << 8) | self.index as u64;
        self.next_session += 1;

        let creds = IceCreds::new();
        let mut rtc = session_rtc(&self.config, creds.clone(), now);
        for addr in &self.candidates {
            match Candidate::host(*addr, "udp") {
                Ok(c) => {
                    rtc.add_local_candidate(c);
                }
                Err(e) => warn!(%addr, error = %e, "unusable host candidate"),
            }
        }
        self.routes.add_ufrag(&creds.ufrag, self.index);
        self.by_ufrag.insert(creds.ufrag.clone(), id);

        let room = self.rooms.entry(request.room.clone()).or_insert_with(|| {
            self.metrics.rooms.inc();
            Room::new(request.room.clone(), self.config.audio_select())
        });
        self.room_placement.insert(request.room.clone(), self.index);
        let others: Vec<ParticipantInfo> = room.members.iter().map(|m| room.participant_info(m)).collect();
        let member = Member {
            session: id,
            participant_id: request.participant_id.clone(),
            identity: request.identity.clone(),
            name: request.name.clone(),
        };
        let me = room.participant_info(&member);
        let dominant = room
            .dominant
            .and_then(|d| room.members.iter().find(|m| m.session == d))
            .map(|m| m.participant_id.clone());
        room.members.push(member);
        let member_ids: Vec<SessionId> = room.others(id).collect();
        for other in member_ids {
            if let Some(s) = self.sessions.get(&other) {
                s.emit(SessionEvent::ParticipantJoined(me.clone()), &self.metrics);
            }
        }

        self.sessions.insert(
            id,
            Session {
                room: request.room,
                participant_id: request.participant_id,
                can_publish: request.can_publish,
                can_subscribe: request.can_subscribe,
                rtc,
                ufrag: creds.ufrag,
                addrs: Vec::new(),
                events,
                pending_offer: None,
                negotiated: false,
                to_add: Vec::new(),
                view: None,
                slot_of: FastMap::default(),
                estimate: None,
                twcc: false,
                sent_bytes: 0,
                sent_bps: 0,
                sources: HashMap::new(),
                newly_published: Vec::new(),
                published: HashMap::new(),
                refused: Default::default(),
                rx_mid: FastMap::default(),
                subscriptions: FastMap::default(),
                nacks_seen: HashMap::new(),
                egress: None,
                dest: None,
                created: now,
                last_rx: now,
                connected: false,
                timeout: now,
            },
        );
        self.load.fetch_add(1, Ordering::Relaxed);
        self.metrics.participants.inc();
        // A newcomer learns who is talking now, not only at the next change.
        if let (Some(participant_id), Some(s)) = (dominant, self.sessions.get(&id)) {
            s.emit(SessionEvent::ActiveSpeaker { participant_id }, &self.metrics);
        }
        self.drain(id);
        Ok((id, others))
    }

    fn handle_datagram(&mut self, source: SocketAddr, data: &[u8], at: Instant) {
        let id = match self.by_addr.get(&source) {
            Some(id) => *id,
            None => match stun_server_ufrag(data).and_then(|u| self.by_ufrag.get(u)) {
                Some(id) => *id,
                None => {
                    self.metrics.dropped_datagrams.with_label_values(&["unknown_source"]).inc();
                    return;
                }
            },
        };
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let receive = match Receive::new(Protocol::Udp, source, self.local_addr, data) {
            Ok(r) => r,
            Err(e) => {
                self.metrics.dropped_datagrams.with_label_values(&["malformed"]).inc();
                debug!(%source, error = %e, "unparseable datagram");
                return;
            }
        };
        if session.egress.is_some() && is_rtcp(data) {
            self.answer_nacks(id, data);
        }
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let input = Input::Receive(at, receive);
        if !session.rtc.accepts(&input) {
            self.metrics.dropped_datagrams.with_label_values(&["rejected"]).inc();
            return;
        }
        let rtc = &mut session.rtc;
        match contained(&mut self.failed, &self.metrics, id, || rtc.handle_input(input)) {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                // Refused input neither keeps the session alive nor claims an address.
                self.metrics.dropped_datagrams.with_label_values(&["session_error"]).inc();
                debug!(%source, error = %e, "session refused datagram");
                return;
            }
            None => return,
        }
        session.last_rx = at;
        if !session.addrs.contains(&source) && session.addrs.len() < MAX_ADDRS_PER_SESSION && is_stun(data) {
            session.addrs.push(source);
            self.by_addr.insert(source, id);
            self.routes.add_addr(source, self.index);
        }
        self.drain(id);
    }

    /// Resend what the fast path sent and the peer reports lost (str0m reads the same
    /// feedback, but has none of those packets).
    fn answer_nacks(&mut self, id: SessionId, data: &[u8]) {
        let Some(session) = self.sessions.get_mut(&id) else { return };
        let (Some(egress), Some(dest)) = (session.egress.as_mut(), session.dest) else { return };
        let Some(lost) = egress.nacked(data) else { return };
        let now_ms = Instant::now().saturating_duration_since(epoch()).as_millis() as u64;
        let mut resent = 0;
        for (ssrc, seq) in lost {
            if resent == egress::MAX_RESENDS_PER_DATAGRAM {
                self.metrics.not_forwarded.with_label_values(&["nack_over_limit"]).inc();
                break;
            }
            let slot =
                session.subscriptions.values_mut().filter_map(|s| s.out.as_mut()).find(|o| o.ssrc == ssrc);
            let Some(datagram) = slot.and_then(|slot| egress.reseal(slot, seq, now_ms)) else { continue };
            resent += 1;
            self.metrics.retransmitted.inc();
            self.out.push(dest, datagram);
        }
    }

    fn handle_offer(&mut self, id: SessionId, sdp: &str, tracks: Vec<(String, TrackSource)>) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        if session.pending_offer.is_some() {
            // Glare: we are the impolite peer; the client rolls back and answers ours.
            debug!(participant = %session.participant_id, "client offer ignored during server offer");
            return;
        }
        let Some(parsed) = contained(&mut self.failed, &self.metrics, id, || SdpOffer::from_sdp_string(sdp))
        else {
            let message = "the offer broke this session's WebRTC engine".to_string();
            session.emit(SessionEvent::Error { code: "bad_sdp", message }, &self.metrics);
            return;
        };
        let offer = match parsed {
            Ok(o) => o,
            Err(e) => {
                let message = format!("offer is not valid SDP: {e}");
                session.emit(SessionEvent::Error { code: "bad_sdp", message }, &self.metrics);
                return;
            }
        };
        session.sources = tracks.into_iter().map(|(mid, src)| (Mid::from(mid.as_str()), src)).collect();
        session.newly_published.clear();
        let rtc = &mut session.rtc;
        let Some(accepted) =
            contained(&mut self.failed, &self.metrics, id, || rtc.sdp_api().accept_offer(offer))
        else {
            let message = "the offer broke this session's WebRTC engine".to_string();
            session.emit(SessionEvent::Error { code: "bad_sdp", message }, &self.metrics);
            return;
        };
        let answer = match accepted {
            Ok(a) => a,
            Err(e) => {
                let message = format!("offer refused: {e}");
                session.emit(SessionEvent::Error { code: "bad_sdp", message }, &self.metrics);
                return;
            }
        };
        let first = !session.negotiated;
        session.negotiated = true;
        // Publications follow the SDP now, so the answer can name the tracks it accepted.
        for mid in offer_mids(sdp) {
            self.sync_publication(id, mid);
        }
        self.drain(id);
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let published = std::mem::take(&mut session.newly_published);
        session.emit(SessionEvent::Answer { sdp: answer.to_sdp_string(), published }, &self.metrics);
        if first {
            self.sync_audio_slots(id);
            self.sync_video_slots(id);
        }
        self.offer_if_needed(id);
    }

    fn handle_answer(&mut self, id: SessionId, sdp: &str) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let Some(pending) = session.pending_offer.take() else {
            let message = "answer without an outstanding offer".to_string();
            session.emit(SessionEvent::Error { code: "bad_request", message }, &self.metrics);
            return;
        };
        let Some(parsed) = contained(&mut self.failed, &self.metrics, id, || SdpAnswer::from_sdp_string(sdp))
        else {
            let message = "the answer broke this session's WebRTC engine".to_string();
            session.emit(SessionEvent::Error { code: "bad_sdp", message }, &self.metrics);
            return;
        };
        let answer = match parsed {
            Ok(a) => a,
            Err(e) => {
                session.pending_offer = Some(pending);
                let message = format!("answer is not valid SDP: {e}");
                session.emit(SessionEvent::Error { code: "bad_sdp", message }, &self.metrics);
                return;
            }
        };
        let rtc = &mut session.rtc;
        let Some(accepted) =
            contained(&mut self.failed, &self.metrics, id, || rtc.sdp_api().accept_answer(pending, answer))
        else {
            let message = "the answer broke this session's WebRTC engine".to_string();
            session.emit(SessionEvent::Error { code: "bad_sdp", message }, &self.metrics);
            return;
        };
        if let Err(e) = accepted {
            let message = format!("answer refused: {e}");
            session.emit(SessionEvent::Error { code: "bad_sdp", message }, &self.metrics);
            return;
        }
        let mut want_keyframe = Vec::new();
        for (mid, sub) in session.subscriptions.iter_mut() {
            if !sub.active {
                sub.active = true;
                sub.tx_ssrc = session.rtc.direct_api().stream_tx_by_mid(*mid, None).map(|s| s.ssrc());
                sub.out = None;
                if let (Some(key), Some(layer)) = (sub.publication, sub.target) {
                    want_keyframe.push((key, layer));
                }
            }
        }
        self.drain(id);
        let now = Instant::now();
        for (key, layer) in want_keyframe {
            self.request_keyframe(key, layer, now);
        }
        self.offer_if_needed(id);
    }

    fn handle_candidate(&mut self, id: SessionId, candidate: &str) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
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
                session.emit(SessionEvent::Error { code: "bad_candidate", message }, &self.metrics);
                return;
            }
        }
        self.drain(id);
    }

    fn handle_mute(&mut self, id: SessionId, track_id: &str, muted: bool) {
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        let Some(room) = self.rooms.get_mut(&session.room) else {
            return;
        };
        let Some(publication) = room
            .publications
            .iter_mut()
            .find(|((owner, _), p)| *owner == id && p.track.id == track_id)
            .map(|(_, p)| p)
        else {
            let message = format!("no track {track_id} published by you");
            session.emit(SessionEvent::Error { code: "bad_request", message }, &self.metrics);
            return;
        };
        if publication.track.muted == muted {
            return;
        }
        publication.track.muted = muted;
        let event = SessionEvent::TrackMuted {
            participant_id: session.participant_id.clone(),
            track_id: track_id.to_string(),
            muted,
        };
        for other in room.others(id) {
            if let Some(s) = self.sessions.get(&other) {
                s.emit(event.clone(), &self.metrics);
            }
        }
    }

    /// Send a server offer when tracks need new slots and no negotiation is in flight.
    fn offer_if_needed(&mut self, id: SessionId) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        if !session.negotiated || session.pending_offer.is_some() || session.to_add.is_empty() {
            return;
        }
        let Some(room) = self.rooms.get_mut(&session.room) else {
            return;
        };
        let now = Instant::now();
        let mut api = session.rtc.sdp_api();
        let mut added = Vec::new();
        for key in std::mem::take(&mut session.to_add) {
            if session.slot_of.contains_key(&key) {
                continue;
            }
            let Some(publication) = room.publications.get_mut(&key) else {
                continue;
            };
            let wanted = match publication.track.kind {
                TrackKind::Audio => room.audio.is_selected(key).then_some(0),
                TrackKind::Video => wanted_quality(&session.view, &publication.track.id),
            };
            let Some(wanted) = wanted else { continue };
            let kind = match publication.track.kind {
                TrackKind::Audio => MediaKind::Audio,
                TrackKind::Video => MediaKind::Video,
            };
            // The msid names the first track; `slots` says what the mid carries later.
            let mid = api.add_media(
                kind,
                Direction::SendOnly,
                Some(publication.owner_participant.clone()),
                Some(publication.track.id.clone()),
                None,
            );
            let mut slot = Subscription::new(publication.track.kind);
            slot.assign(Some(key));
            slot.wanted = wanted;
            slot.order = view_order(&session.view, &publication.track.id);
            if slot.kind == TrackKind::Video {
                slot.target = slot.choose_target(publication.arriving(now));
            }
            publication.subscribers.push((id, mid));
            session.slot_of.insert(key, mid);
            session.subscriptions.insert(mid, slot);
            added.push(SlotInfo {
                mid: mid.to_string(),
                track: Some((publication.owner_participant.clone(), publication.track.id.clone())),
            });
        }
        if let Some((offer, pending)) = api.apply() {
            session.pending_offer = Some(pending);
            session.emit(SessionEvent::Offer { sdp: offer.to_sdp_string() }, &self.metrics);
            session.emit(SessionEvent::Slots(added), &self.metrics);
        }
        self.drain(id);
    }

    /// Give this session a slot for each selected audio track of its room (top-N in
    /// large rooms), reusing slots of tracks no longer selected.
    fn sync_audio_slots(&mut self, id: SessionId) {
        let Some(session) = self.sessions.get_mut(&id) else { return };
        if !session.can_subscribe || !session.negotiated {
            return;
        }
        let Some(room) = self.rooms.get_mut(&session.room) else { return };
        let desired: Vec<PublicationKey> =
            room.audio.selected().filter(|k| k.0 != id && room.publications.contains_key(k)).collect();
        let mut changes = Vec::new();
        for key in desired {
            if session.slot_of.contains_key(&key) {
                continue;
            }
            // A slot whose track is no longer selected is free.
            let free = session
                .subscriptions
                .iter()
                .filter(|(_, sub)| sub.kind == TrackKind::Audio)
                .find(|(_, sub)| sub.publication.is_none_or(|k| !room.audio.is_selected(k)))
                .map(|(mid, _)| *mid);
            place_track(session, &mut room.publications, &mut self.offers_due, id, key, free, &mut changes);
        }
        if !changes.is_empty() {
            session.emit(SessionEvent::Slots(changes), &self.metrics);
        }
    }

    /// Make this session's video slots carry what it shows: free the slots of tracks it
    /// stopped showing, reuse them for new ones, ask for new slots when there are none.
    fn sync_video_slots(&mut self, id: SessionId) {
        let Some(session) = self.sessions.get_mut(&id) else { return };
        if !session.can_subscribe || !session.negotiated {
            return;
        }
        let Some(room) = self.rooms.get_mut(&session.room) else { return };
        let now = Instant::now();
        let mut desired: Vec<(PublicationKey, Quality)> = room
            .publications
            .iter()
            .filter(|(key, p)| key.0 != id && p.track.kind == TrackKind::Video)
            .filter_map(|(key, p)| wanted_quality(&session.view, &p.track.id).map(|q| (*key, q)))
            .collect();
        desired.sort_unstable_by_key(|(key, _)| *key);
        let mut changes = Vec::new();
        let mut keyframes = Vec::new();
        let mut resume = Vec::new();
        // Free the slots of tracks no longer shown.
        let stale: Vec<Mid> = session
            .subscriptions
            .iter()
            .filter(|(_, sub)| sub.kind == TrackKind::Video)
            .filter(|(_, sub)| sub.publication.is_some_and(|k| !desired.iter().any(|(d, _)| *d == k)))
            .map(|(mid, _)| *mid)
            .collect();
        for mid in stale {
            reassign_slot(session, &mut room.publications, id, mid, None);
            changes.push(slot_info(&room.publications, mid, None));
        }
        for (key, quality) in desired {
            let mid = match session.slot_of.get(&key) {
                Some(mid) => *mid,
                None => {
                    let free = session
                        .subscriptions
                        .iter()
                        .filter(|(_, sub)| sub.kind == TrackKind::Video && sub.publication.is_none())
                        .map(|(mid, _)| *mid)
                        .min();
                    let placed = place_track(
                        session,
                        &mut room.publications,
                        &mut self.offers_due,
                        id,
                        key,
                        free,
                        &mut changes,
                    );
                    let Some(mid) = placed else { continue };
                    mid
                }
            };
            let Some(sub) = session.subscriptions.get_mut(&mid) else { continue };
            let Some(publication) = room.publications.get(&key) else { continue };
            if quality > sub.wanted && publication.layers.iter().any(|l| l.paused) && !resume.contains(&key) {
                resume.push(key);
            }
            sub.wanted = quality;
            sub.order = view_order(&session.view, &publication.track.id);
            let target = sub.choose_target(publication.arriving(now));
            if target != sub.target {
                sub.target = target;
                if let Some(layer) = target
                    && sub.current != target
                    && sub.active
                {
                    keyframes.push((key, layer));
                }
            }
        }
        if !changes.is_empty() {
            session.emit(SessionEvent::Slots(changes), &self.metrics);
        }
        for (key, layer) in keyframes {
            self.request_keyframe(key, layer, now);
        }
        // A wanted layer that is paused at its publisher resumes now, not at housekeeping.
        for key in resume {
            self.pause_unneeded_layers(key, now);
        }
    }

    /// Sync the audio slots of every member of a room (its selection changed).
    fn sync_room_audio(&mut self, room: &str) {
        let Some(members) =
            self.rooms.get(room).map(|r| r.members.iter().map(|m| m.session).collect::<Vec<_>>())
        else {
            return;
        };
        for id in members {
            self.sync_audio_slots(id);
        }
    }

    /// Drain one session's output: send datagrams, handle events, note its next timeout.
    fn drain(&mut self, id: SessionId) {
        loop {
            let Some(session) = self.sessions.get_mut(&id) else {
                return;
            };
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
    fn flush_dirty(&mut self) {
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
    fn send_written(&mut self, id: SessionId, now: Instant) {
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
    fn take_srtp_keys(&mut self) {
        for captured in egress::keys::take_captured() {
            if !self.config.fast_egress || self.config.bwe {
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
                Some((tx, rx)) => session.egress = Some(Egress::new(tx, rx)),
                None => {
                    debug!(participant = %session.participant_id, profile = ?captured.profile, "no fast path for this SRTP profile")
                }
            }
        }
    }

    fn on_event(&mut self, id: SessionId, event: Event) {
        match event {
            Event::RtpPacket(packet) => self.forward(id, packet),
            Event::Connected => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.connected = true;
                    info!(participant = %s.participant_id, room = %s.room, "media connected");
                }
                self.take_srtp_keys();
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.end_session(id, LeaveReason::MediaTimeout);
            }
            // str0m holds these back until DTLS is up; `sync_publications` after each
            // accepted offer has usually handled them already, and repeating it is harmless.
            Event::MediaAdded(added) => self.sync_publication(id, added.mid),
            Event::MediaChanged(changed) => self.sync_publication(id, changed.mid),
            Event::KeyframeRequest(request) => {
                self.metrics.keyframe_requests.with_label_values(&["received"]).inc();
                let wanted = self
                    .sessions
                    .get(&id)
                    .and_then(|s| s.subscriptions.get(&request.mid))
                    .and_then(|sub| Some((sub.publication?, sub.current.or(sub.target)?)));
                if let Some((key, layer)) = wanted {
                    self.request_keyframe(key, layer, Instant::now());
                }
            }
            Event::EgressBitrateEstimate(estimate) => {
                if !self.config.bwe {
                    return;
                }
                if let Some(s) = self.sessions.get_mut(&id) {
                    match estimate {
                        BweKind::Twcc { estimate, can_probe } => {
                            if can_probe {
                                s.twcc = true;
                            }
                            if s.twcc {
                                s.estimate = Some(estimate.as_u64());
                            }
                        }
                        // REMB only where transport-cc is not negotiated.
                        BweKind::Remb { estimate, .. } if !s.twcc => s.estimate = Some(estimate.as_u64()),
                        _ => {}
                    }
                }
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
        let Some(media) = session.rtc.media(mid) else { return };
        let receiving =
            matches!(media.direction(), Direction::RecvOnly | Direction::SendRecv) && !media.disabled();
        let kind = media.kind();
        let published = session.published.contains_key(&mid);
        if !receiving {
            // A refused track that stops may be offered again later.
            session.refused.remove(&mid);
        }
        if receiving && !published {
            self.publish(id, mid, kind);
        } else if !receiving && published {
            self.unpublish(id, mid);
        }
    }

    fn publish(&mut self, id: SessionId, mid: Mid, kind: MediaKind) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        if !session.can_publish {
            if session.refused.insert(mid) {
                let message = "this token may not publish".to_string();
                session.emit(SessionEvent::Error { code: "forbidden", message }, &self.metrics);
            }
            return;
        }
        let limit = self.config.max_publications_per_participant;
        if session.published.len() >= limit {
            if session.refused.insert(mid) {
                let message =
                    format!("at most {limit} published tracks per participant; mid {mid} is not forwarded");
                session.emit(SessionEvent::Error { code: "limit_exceeded", message }, &self.metrics);
            }
            return;
        }
        let kind = if kind == MediaKind::Audio { TrackKind::Audio } else { TrackKind::Video };
        let source = session.sources.get(&mid).copied().unwrap_or(match kind {
            TrackKind::Audio => TrackSource::Microphone,
            TrackKind::Video => TrackSource::Camera,
        });
        let track = TrackInfo { id: format!("TR_{}", random_id()), kind, source, muted: false };
        session.published.insert(mid, track.id.clone());
        session.newly_published.push(PublishedTrack { mid: mid.to_string(), track: track.clone() });
        let participant_id = session.participant_id.clone();
        let Some(room) = self.rooms.get_mut(&session.room) else {
            return;
        };
        room.publications.insert(
            (id, mid),
            Publication::new(track.clone(), participant_id.clone(), self.config.keyframe_request_interval),
        );
        self.metrics.tracks.inc();
        info!(participant = %participant_id, room = %room.name, track = %track.id, kind = kind.as_str(), "track published");
        let others: Vec<SessionId> = room.others(id).collect();
        for other in &others {
            let Some(s) = self.sessions.get_mut(other) else {
                continue;
            };
            s.emit(
                SessionEvent::TrackPublished { participant_id: participant_id.clone(), track: track.clone() },
                &self.metrics,
            );
        }
        if kind == TrackKind::Video {
            // Clients that never said what they show receive every video track.
            for other in others {
                if self.sessions.get(&other).is_some_and(|s| s.view.is_none()) {
                    self.sync_video_slots(other);
                }
            }
        }
    }

    fn unpublish(&mut self, id: SessionId, mid: Mid) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        session.published.remove(&mid);
        let participant_id = session.participant_id.clone();
        let Some(room) = self.rooms.get_mut(&session.room) else {
            return;
        };
        let Some(publication) = room.publications.remove(&(id, mid)) else {
            return;
        };
        self.metrics.tracks.dec();
        room.audio.remove((id, mid));
        let others: Vec<SessionId> = room.others(id).collect();
        // Its slots are free for other tracks; their peers are told they carry nothing now.
        for (sub_session, sub_mid) in &publication.subscribers {
            if let Some(s) = self.sessions.get_mut(sub_session) {
                s.slot_of.remove(&(id, mid));
                if let Some(sub) = s.subscriptions.get_mut(sub_mid) {
                    sub.assign(None);
                }
                s.emit(
                    SessionEvent::Slots(vec![SlotInfo { mid: sub_mid.to_string(), track: None }]),
                    &self.metrics,
                );
            }
        }
        for other in others {
            let Some(s) = self.sessions.get_mut(&other) else {
                continue;
            };
            s.to_add.retain(|k| *k != (id, mid));
            s.emit(
                SessionEvent::TrackUnpublished {
                    participant_id: participant_id.clone(),
                    track_id: publication.track.id.clone(),
                },
                &self.metrics,
            );
        }
    }

    fn request_keyframe(&mut self, key: PublicationKey, layer: u8, now: Instant) {
        let Some(room) = self.sessions.get(&key.0).map(|s| s.room.clone()) else {
            return;
        };
        let Some(publication) = self.rooms.get_mut(&room).and_then(|r| r.publications.get_mut(&key)) else {
            return;
        };
        let Some(layer) = publication.layers.get_mut(layer as usize) else { return };
        let Some(ssrc) = layer.ssrc else {
            return;
        };
        if !layer.keyframe_throttle.request(now) {
            return;
        }
        self.send_keyframe_request(key.0, ssrc);
    }

    fn send_keyframe_request(&mut self, owner: SessionId, ssrc: Ssrc) {
        let Some(owner_session) = self.sessions.get_mut(&owner) else {
            return;
        };
        if let Some(rx) = owner_session.rtc.direct_api().stream_rx(&ssrc) {
            rx.request_keyframe(KeyframeRequestKind::Pli);
            self.metrics.keyframe_requests.with_label_values(&["sent"]).inc();
            self.dirty.push(owner);
        }
    }

    /// The mid and simulcast layer an incoming SSRC belongs to.
    fn rx_stream(session: &mut Session, ssrc: Ssrc) -> Option<(Mid, u8)> {
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
        session.rx_mid.insert(ssrc, (mid, layer));
        Some((mid, layer))
    }

    /// The packet path: one RTP packet from a publisher to each slot that carries it.
    fn forward(&mut self, id: SessionId, packet: RtpPacket) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let ssrc = packet.header.ssrc;
        let Some((mid, layer)) = Self::rx_stream(session, ssrc) else { return };
        let pt = *packet.header.payload_type;
        if session.rtc.media(mid).is_none() {
            return;
        }
        let spec_for_pt = |rtc: &Rtc| rtc.codec_config().find(|p| *p.pt() == pt).map(|p| p.spec());
        let room_name = &session.room;
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        let room_size = room.members.len();
        let Room { publications, speakers, audio, .. } = room;
        let Some(publication) = publications.get_mut(&(id, mid)) else {
            return;
        };
        let now = packet.timestamp;
        let resumed = !publication.arriving(now)[layer as usize];
        let state = &mut publication.layers[layer as usize];
        if state.ssrc != Some(ssrc) {
            state.ssrc = Some(ssrc);
            state.rid =
                session.rtc.direct_api().stream_rx(&ssrc).and_then(|rx| rx.rid()).map(|r| r.to_string());
        }
        state.last_packet = Some(now);
        state.bytes += packet.payload.len() as u64;
        if publication.source_format.is_none_or(|(p, _)| p != pt) {
            let Some(spec) = spec_for_pt(&session.rtc) else {
                return;
            };
            publication.video_codec = match spec.codec {
                Codec::Vp8 => Some(VideoCodec::Vp8),
                Codec::H264 => Some(VideoCodec::H264),
                _ => None,
            };
            publication.source_format = Some((pt, spec));
        }
        let keyframe = publication.video_codec.is_some_and(|c| starts_keyframe(c, &packet.payload));
        if keyframe {
            publication.layers[layer as usize].keyframe_throttle.keyframe_received();
        }
        let is_video = publication.track.kind == TrackKind::Video;
        if !is_video {
            let level = packet.header.ext_vals.audio_level.map(|l| l.unsigned_abs().min(127));
            if let Some(level) = level {
                speakers.record(id, level, now);
            }
            let verdict =
                audio.on_packet((id, mid), level, packet.header.ext_vals.voice_activity, now, room_size);
            if !verdict.forward {
                self.metrics.audio_not_selected.inc();
                return;
            }
            if verdict.admitted.is_some() {
                let room_name = room_name.clone();
                self.sync_room_audio(&room_name);
            }
        }
        if resumed && is_video {
            // A layer (re)started: slots waiting for it switch at this very keyframe.
            self.retarget_layers((id, mid), now);
        }
        self.forward_to_slots(id, mid, layer, keyframe, &packet);
    }

    fn forward_to_slots(&mut self, id: SessionId, mid: Mid, layer: u8, keyframe: bool, packet: &RtpPacket) {
        let Some(session) = self.sessions.get(&id) else { return };
        let Some(publication) = self.rooms.get(&session.room).and_then(|r| r.publications.get(&(id, mid)))
        else {
            return;
        };
        let Some((pt, spec)) = publication.source_format else {
            return;
        };
        let is_video = publication.track.kind == TrackKind::Video;
        let vp8 = publication.video_codec == Some(VideoCodec::Vp8);
        let ssrc = packet.header.ssrc;
        let arrival_ms = packet.timestamp.saturating_duration_since(epoch()).as_millis() as u64;
        let ext = forwarded_extensions(&packet.header.ext_vals);
        let mut wants_keyframe = false;
        let mut retarget = false;
        let mut send_now = Vec::new();
        for (sub_id, sub_mid) in &publication.subscribers {
            let Some(subscriber) = self.sessions.get_mut(sub_id) else {
                continue;
            };
            let Some(sub) = subscriber.subscriptions.get_mut(sub_mid) else {
                continue;
            };
            if !sub.active {
                continue;
            }
            if sub.current != Some(layer) {
                if sub.target != Some(layer) {
                    // Another layer of the track, or the target layer has stopped arriving.
                    retarget |= sub.current.is_none() && sub.target.is_none() && sub.cap != Some(None);
                    continue;
                }
                if !keyframe {
                    wants_keyframe = true;
                    continue;
                }
                if sub.current.is_some() {
                    self.metrics.layer_switches.inc();
                }
                sub.current = Some(layer);
                sub.rewriter.allow(*ssrc);
            }
            let out_pt = match sub.pt_map {
                Some((src, dst)) if src == pt => dst,
                _ => {
                    let Some(dst) = matching_pt(&subscriber.rtc, *sub_mid, &spec) else {
                        self.metrics.not_forwarded.with_label_values(&["no_matching_codec"]).inc();
                        debug!(
                            subscriber = %subscriber.participant_id,
                            codec = ?spec.codec,
                            "subscriber negotiated no payload type for this codec; packet not forwarded"
                        );
                        continue;
                    };
                    sub.pt_map = Some((pt, dst));
                    dst
                }
            };
            let Some(tx_ssrc) = sub.tx_ssrc else { continue };
            let Some(out) = sub.rewriter.rewrite(
                *ssrc,
                packet.header.sequence_number,
                packet.header.timestamp,
                arrival_ms,
            ) else {
                continue;
            };
            let renumber = if vp8 { sub.vp8.rewrite(*ssrc, &packet.payload) } else { None };
            let outgoing = Outgoing {
                pt: *out_pt,
                seq: out.seq,
                timestamp: out.timestamp,
                marker: packet.header.marker,
                payload: &packet.payload,
                vp8: renumber,
                audio_level: ext.audio_level.map(|l| (l, ext.voice_activity.unwrap_or(false))),
            };
            // The fast path, unless the packet carries extensions it does not write, or
            // it is the slot's packet of the second for str0m's sender reports.
            let fast = subscriber.egress.is_some()
                && subscriber.dest.is_some()
                && egress::fits(packet.payload.len())
                && ext.video_orientation.is_none()
                && ext.video_content_type.is_none()
                && sub.engine_ms.is_some_and(|at| arrival_ms.saturating_sub(at) < ENGINE_PACKET_EVERY_MS);
            if subscriber.egress.is_some() && sub.out.is_none() {
                sub.out = slot_out(&mut subscriber.rtc, *sub_mid, tx_ssrc);
            }
            if let (Some(slot), true) = (sub.out.as_mut(), is_video) {
                slot.remember(&outgoing);
            }
            if let (true, Some(egress), Some(dest), Some(slot)) =
                (fast, subscriber.egress.as_mut(), subscriber.dest, sub.out.as_ref())
            {
                match egress.seal(slot, &outgoing) {
                    Some(datagram) => self.out.push(dest, datagram),
                    None => {
                        self.metrics.not_forwarded.with_label_values(&["too_big"]).inc();
                        debug!(size = packet.payload.len(), "packet too big for the fast path");
                    }
                }
                self.metrics.rtp_forwarded.inc();
                subscriber.sent_bytes += packet.payload.len() as u64 + RTP_OVERHEAD_BYTES;
                continue;
            }
            sub.engine_ms = Some(arrival_ms);
            // With the fast path on, its own history answers NACKs: str0m must not resend
            // on the retransmission SSRC whose sequence numbers the fast path owns.
            // Nor before the session is connected: whether it gets the fast path is only
            // known then, and str0m must never hold a nackable packet of a fast-path slot.
            let nackable = is_video && subscriber.connected && subscriber.egress.is_none();
            let mut api = subscriber.rtc.direct_api();
            let Some(stream) = api.stream_tx(&tx_ssrc) else {
                continue;
            };
            let mut write = RtpWrite::new(
                out_pt,
                out.seq.into(),
                out.timestamp,
                packet.timestamp,
                packet.payload.clone(),
            )
            .marker(packet.header.marker)
            .ext_vals(ext.clone())
            .nackable(nackable);
            if let Some(patch) = renumber.and_then(|r| vp8_patch(&packet.payload, r)) {
                write = write.vp8_patch(patch);
            }
            if contained(&mut self.failed, &self.metrics, *sub_id, || stream.write_rtp(write)).is_none() {
                continue;
            }
            self.metrics.rtp_forwarded.inc();
            subscriber.sent_bytes += packet.payload.len() as u64 + RTP_OVERHEAD_BYTES;
            if subscriber.egress.is_some() {
                // Out now, before the fast path's next packet to it can overtake it: a
                // receiver that sees a new stream's second packet first may drop the first.
                send_now.push(*sub_id);
            } else {
                self.dirty.push(*sub_id);
            }
        }
        if !send_now.is_empty() {
            let now = Instant::now();
            for sub_id in send_now {
                self.send_written(sub_id, now);
            }
        }
        if wants_keyframe {
            self.request_keyframe((id, mid), layer, packet.timestamp);
        }
        if retarget {
            self.retarget_layers((id, mid), packet.timestamp);
        }
    }

    /// Fit each subscriber's video into its bandwidth estimate (select/allocator.rs), and
    /// tell its engine how much it would like to send so the estimate can grow to it.
    fn allocate_bandwidth(&mut self, now: Instant) {
        let ids: Vec<SessionId> =
            self.sessions.iter().filter(|(_, s)| s.estimate.is_some()).map(|(id, _)| *id).collect();
        for id in ids {
            let Some(session) = self.sessions.get_mut(&id) else { continue };
            let Some(room) = self.rooms.get(&session.room) else { continue };
            let Some(estimate) = session.estimate else { continue };
            // Audio always goes: the video budget is what is left of the estimate.
            let audio_bps = 50_000
                * session
                    .subscriptions
                    .values()
                    .filter(|s| s.kind == TrackKind::Audio && s.publication.is_some())
                    .count() as u64;
            // (place in the client's list, mid, the track as the allocator sees it, its
            // current cap), sorted so ties (every track of a client without a list) keep one
            // order for all three.
            let mut shown: Vec<(usize, Mid, AllocTrack, Option<u8>)> = Vec::new();
            for (mid, sub) in &session.subscriptions {
                let Some(publication) = sub.publication.and_then(|k| room.publications.get(&k)) else {
                    continue;
                };
                if sub.kind != TrackKind::Video {
                    continue;
                }
                let arriving = publication.arriving(now);
                let layer_bps = std::array::from_fn(|l| {
                    if !arriving[l] {
                        0
                    } else if publication.layers[l].bps > 0 {
                        publication.layers[l].bps
                    } else {
                        NOMINAL_LAYER_BPS[l]
                    }
                });
                let priority = if publication.track.source == TrackSource::Screen {
                    Priority::Screen
                } else if sub.publication.map(|k| k.0) == room.dominant {
                    Priority::Speaker
                } else {
                    Priority::Normal
                };
                let track = AllocTrack { priority, wanted: choose_layer(sub.wanted, arriving), layer_bps };
                // Never allocated yet: start from what it wants (step down if it must),
                // rather than creep up from nothing.
                shown.push((sub.order, *mid, track, sub.cap.unwrap_or(Some(MAX_LAYERS as u8 - 1))));
            }
            shown.sort_unstable_by_key(|(order, mid, _, _)| (*order, *mid));
            let mids: Vec<Mid> = shown.iter().map(|(_, mid, _, _)| *mid).collect();
            let current: Vec<Option<u8>> = shown.iter().map(|(_, _, _, cap)| *cap).collect();
            let tracks: Vec<AllocTrack> = shown.into_iter().map(|(_, _, track, _)| track).collect();
            let desired: u64 = audio_bps
                + tracks.iter().filter_map(|t| t.wanted.map(|w| t.layer_bps[w as usize])).sum::<u64>();
            // An estimate above what is actually sent says nothing is congested: GCC cannot
            // see capacity it is not using, so its estimate of an application-limited path
            // only tracks the send rate. Then what is allocated now may stay; only an
            // estimate below the send rate steps layers down.
            let current_cost: u64 = tracks
                .iter()
                .zip(&current)
                .filter_map(|(t, c)| c.zip(t.wanted).map(|(l, w)| t.layer_bps[l.min(w) as usize]))
                .sum();
            let budget =
                if estimate >= session.sent_bps { estimate.max(current_cost + audio_bps) } else { estimate };
            let allocation = allocate(budget.saturating_sub(audio_bps), &tracks, &current);
            let mut keyframes = Vec::new();
            let mut paused = 0;
            for (mid, cap) in mids.into_iter().zip(allocation) {
                let Some(sub) = session.subscriptions.get_mut(&mid) else { continue };
                sub.cap = Some(cap);
                if cap.is_none() {
                    paused += 1;
                    sub.current = None;
                }
                let Some(publication) = sub.publication.and_then(|k| room.publications.get(&k)) else {
                    continue;
                };
                let target = sub.choose_target(publication.arriving(now));
                if target != sub.target {
                    sub.target = target;
                    if let (Some(layer), Some(key)) = (target, sub.publication)
                        && sub.current != target
                    {
                        keyframes.push((key, layer));
                    }
                }
            }
            if paused > 0 {
                self.metrics.paused_by_bandwidth.inc_by(paused);
            }
            // Ask for enough that an upgrade's headroom can be found by probing.
            let desired = (desired as f64 / UPGRADE_HEADROOM) as u64;
            session.rtc.bwe().set_bitrate(Bitrate::bps(0), Bitrate::bps(desired.max(300_000)));
            self.dirty.push(id);
            for (key, layer) in keyframes {
                self.request_keyframe(key, layer, now);
            }
        }
    }

    /// Tell a simulcast publisher which layers someone takes, so it stops encoding the
    /// others: a layer is paused after nobody took it for `LAYER_PAUSE_AFTER`, and resumed
    /// as soon as someone wants it. The lowest layer always stays on, for a fast start.
    fn pause_unneeded_layers(&mut self, key: PublicationKey, now: Instant) {
        let Some(owner) = self.sessions.get(&key.0) else { return };
        let Some(room) = self.rooms.get_mut(&owner.room) else { return };
        let Some(publication) = room.publications.get(&key) else { return };
        let offered = publication.offered();
        if offered.iter().filter(|o| **o).count() < 2 {
            return;
        }
        let mut needed = [false; MAX_LAYERS];
        for (sub_id, sub_mid) in &publication.subscribers {
            let Some(sub) = self.sessions.get(sub_id).and_then(|s| s.subscriptions.get(sub_mid)) else {
                continue;
            };
            if let Some(l) = choose_layer(sub.wanted, offered) {
                needed[l as usize] = true;
            }
        }
        let lowest = offered.iter().position(|o| *o).unwrap_or(0);
        needed[lowest] = true;
        let Some(publication) = room.publications.get_mut(&key) else { return };
        let mut changed = false;
        for (l, layer) in publication.layers.iter_mut().enumerate() {
            if !offered[l] {
                continue;
            }
            if needed[l] {
                layer.unneeded_since = None;
                changed |= std::mem::replace(&mut layer.paused, false);
            } else {
                let since = *layer.unneeded_since.get_or_insert(now);
                if !layer.paused && now.saturating_duration_since(since) >= LAYER_PAUSE_AFTER {
                    layer.paused = true;
                    changed = true;
                }
            }
        }
        if changed {
            let active: Vec<String> = publication
                .layers
                .iter()
                .filter(|l| l.ssrc.is_some() && !l.paused)
                .filter_map(|l| l.rid.clone())
                .collect();
            let track_id = publication.track.id.clone();
            if let Some(owner) = self.sessions.get(&key.0) {
                self.metrics.layer_pauses.inc();
                owner.emit(SessionEvent::Layers { track_id, active }, &self.metrics);
            }
        }
    }

    /// Choose again the layer each slot of a track should carry, from what arrives now.
    fn retarget_layers(&mut self, key: PublicationKey, now: Instant) {
        let Some(session) = self.sessions.get(&key.0) else { return };
        let Some(publication) = self.rooms.get(&session.room).and_then(|r| r.publications.get(&key)) else {
            return;
        };
        if publication.track.kind != TrackKind::Video {
            return;
        }
        let arriving = publication.arriving(now);
        let mut keyframes = Vec::new();
        for (sub_id, sub_mid) in &publication.subscribers {
            let Some(sub) = self.sessions.get_mut(sub_id).and_then(|s| s.subscriptions.get_mut(sub_mid))
            else {
                continue;
            };
            let target = sub.choose_target(arriving);
            if target != sub.target {
                sub.target = target;
                if let Some(layer) = target
                    && sub.current != target
                    && !keyframes.contains(&layer)
                {
                    keyframes.push(layer);
                }
            }
        }
        for layer in keyframes {
            self.request_keyframe(key, layer, now);
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        self.announce_speakers(now);
        if now.saturating_duration_since(self.last_measure) >= MEASURE_INTERVAL {
            let secs = now.saturating_duration_since(self.last_measure).as_secs_f64();
            self.last_measure = now;
            for session in self.sessions.values_mut() {
                session.sent_bps = (std::mem::take(&mut session.sent_bytes) as f64 * 8.0 / secs) as u64;
            }
            for room in self.rooms.values_mut() {
                for publication in room.publications.values_mut() {
                    for layer in publication.layers.iter_mut() {
                        layer.bps = (std::mem::take(&mut layer.bytes) as f64 * 8.0 / secs) as u64;
                    }
                }
            }
        }
        self.allocate_bandwidth(now);
        let mut expired = Vec::new();
        for (id, s) in &self.sessions {
            let never_connected = !s.connected && now.duration_since(s.created) > self.config.connect_timeout;
            let went_silent = s.connected && now.duration_since(s.last_rx) > self.config.ice_timeout;
            if never_connected || went_silent {
                expired.push(*id);
            }
        }
        for id in expired {
            if let Some(s) = self.sessions.get(&id) {
                info!(participant = %s.participant_id, room = %s.room, "media went silent; ending session");
            }
            self.end_session(id, LeaveReason::MediaTimeout);
        }
        // Deferred keyframe requests whose throttle interval ended.
        let mut due = Vec::new();
        let mut video = Vec::new();
        for room in self.rooms.values_mut() {
            let size = room.members.len();
            room.audio.trim(now, size);
            for (key, publication) in room.publications.iter_mut() {
                for layer in publication.layers.iter_mut() {
                    if layer.keyframe_throttle.poll(now)
                        && let Some(ssrc) = layer.ssrc
                    {
                        due.push((key.0, ssrc));
                    }
                }
                if publication.track.kind == TrackKind::Video {
                    video.push(*key);
                }
            }
        }
        for (owner, ssrc) in due {
            self.send_keyframe_request(owner, ssrc);
        }
        // Layers that stopped or started arriving, and layers nobody takes.
        for key in video {
            self.retarget_layers(key, now);
            self.pause_unneeded_layers(key, now);
        }
    }

    /// Tell every room whose dominant speaker changed.
    fn announce_speakers(&mut self, now: Instant) {
        for room in self.rooms.values_mut() {
            let Some(speaker) = room.speakers.poll(now) else { continue };
            let Some(member) = room.members.iter().find(|m| m.session == speaker) else { continue };
            room.dominant = Some(speaker);
            let event = SessionEvent::ActiveSpeaker { participant_id: member.participant_id.clone() };
            for m in &room.members {
                if let Some(s) = self.sessions.get(&m.session) {
                    s.emit(event.clone(), &self.metrics);
                }
            }
        }
    }

    fn end_session(&mut self, id: SessionId, reason: LeaveReason) {
        let Some(mut session) = self.sessions.remove(&id) else {
            return;
        };
        let rtc = &mut session.rtc;
        let _ = contained(&mut self.failed, &self.metrics, id, || rtc.disconnect());
        self.failed.retain(|f| *f != id);
        self.load.fetch_sub(1, Ordering::Relaxed);
        self.metrics.participants.dec();
        self.metrics.sessions_ended.with_label_values(&[reason.as_str()]).inc();
        for addr in &session.addrs {
            self.by_addr.remove(addr);
            self.routes.remove_addr(addr);
        }
        self.by_ufrag.remove(&session.ufrag);
        self.routes.remove_ufrag(&session.ufrag);
        info!(participant = %session.participant_id, room = %session.room, reason = reason.as_str(), "session ended");
        if reason != LeaveReason::Disconnected && reason != LeaveReason::Left {
            session.emit(SessionEvent::Closed { reason }, &self.metrics);
        }

        let Some(room) = self.rooms.get_mut(&session.room) else {
            return;
        };
        room.members.retain(|m| m.session != id);
        room.speakers.remove(id);
        // Its subscriptions leave the publications they fed from.
        for (mid, sub) in &session.subscriptions {
            if let Some(p) = sub.publication.and_then(|k| room.publications.get_mut(&k)) {
                p.subscribers.retain(|(s, m)| !(*s == id && m == mid));
            }
        }
        let own: Vec<Mid> = session.published.keys().copied().collect();
        // Put the session back briefly so unpublish can find it, then drop it for good.
        self.sessions.insert(id, session);
        for mid in own {
            self.unpublish(id, mid);
        }
        let Some(session) = self.sessions.remove(&id) else {
            return;
        };
        let Some(room) = self.rooms.get_mut(&session.room) else {
            return;
        };
        let others: Vec<SessionId> = room.members.iter().map(|m| m.session).collect();
        for other in others {
            if let Some(s) = self.sessions.get(&other) {
                s.emit(
                    SessionEvent::ParticipantLeft { participant_id: session.participant_id.clone(), reason },
                    &self.metrics,
                );
            }
        }
        if room.members.is_empty() {
            self.rooms.remove(&session.room);
            self.metrics.rooms.dec();
            self.room_placement.remove_if(&session.room, |_, shard| *shard == self.index);
        }
    }
}

/// A session's WebRTC engine as every participant gets it: ICE-lite, RTP mode (we forward
/// packets, not frames), and a NACK cache sized from the config.
pub(crate) fn session_rtc(config: &MediaConfig, creds: IceCreds, now: Instant) -> Rtc {
    let mut builder = Rtc::builder()
        .set_ice_lite(true)
        .set_rtp_mode(true)
        .set_local_ice_credentials(creds)
        .set_send_buffer_video(config.nack_cache_packets)
        .set_stats_interval(Some(STATS_INTERVAL))
        .set_crypto_provider(egress::keys::crypto_provider());
    if config.bwe {
        builder = builder.enable_bwe(Some(Bitrate::bps(config.bwe_initial_bps)));
    }
    builder.build(now)
}

/// Header extensions that describe the media and so travel with it; transport ones
/// (mid, rid, transport-cc, abs-send-time) are the subscriber session's own.
fn forwarded_extensions(src: &ExtensionValues) -> ExtensionValues {
    ExtensionValues {
        audio_level: src.audio_level,
        voice_activity: src.voice_activity,
        video_orientation: src.video_orientation,
        video_content_type: src.video_content_type,
        ..Default::default()
    }
}

/// The subscriber's payload type for the codec the publisher sends.
fn matching_pt(rtc: &Rtc, mid: Mid, spec: &CodecSpec) -> Option<str0m::media::Pt> {
    let media = rtc.media(mid)?;
    let config = rtc.codec_config();
    media.remote_pts().iter().copied().find(|pt| {
        config.find(|p| p.pt() == *pt).is_some_and(|p| {
            let s = p.spec();
            s.codec == spec.codec
                && s.clock_rate == spec.clock_rate
                && (spec.codec != Codec::H264
                    || (s.format.packetization_mode == spec.format.packetization_mode
                        && h264_profile(s.format.profile_level_id)
                            == h264_profile(spec.format.profile_level_id)))
        })
    })
}

/// The mids of an SDP, in order (`a=mid:` lines).
/// str0m's in-place descriptor patch for a renumbered VP8 packet (applied as it is
/// serialized, so the shared payload is not copied per subscriber).
fn vp8_patch(payload: &[u8], renumber: crate::forward::vp8::Vp8Renumber) -> Option<str0m::rtp::Vp8Patch> {
    let mut builder = str0m::rtp::Vp8Descriptor::parse(payload).ok()?.patch();
    if let Some(pid) = renumber.picture_id {
        builder = builder.picture_id(pid);
    }
    if let Some(tl0) = renumber.tl0picidx {
        builder = builder.tl0_pic_idx(tl0);
    }
    builder.build().ok()
}

/// A track's place in the client's list of shown tracks (auto mode: all equal).
fn view_order(view: &Option<Vec<ShownTrack>>, track_id: &str) -> usize {
    view.as_ref().and_then(|v| v.iter().position(|t| t.track_id == track_id)).unwrap_or(usize::MAX)
}

fn wanted_quality(view: &Option<Vec<ShownTrack>>, track_id: &str) -> Option<Quality> {
    match view {
        None => Some(MAX_LAYERS as u8 - 1),
        Some(shown) => shown.iter().find(|t| t.track_id == track_id).map(|t| t.quality),
    }
}

/// Point one of a session's slots at another track (or none), keeping the publications'
/// lists of slots and the session's track-to-slot map in step.
fn reassign_slot(
    session: &mut Session,
    publications: &mut FastMap<PublicationKey, Publication>,
    id: SessionId,
    mid: Mid,
    key: Option<PublicationKey>,
) {
    let Some(sub) = session.subscriptions.get_mut(&mid) else { return };
    if let Some(old) = sub.publication {
        if let Some(p) = publications.get_mut(&old) {
            p.subscribers.retain(|(s, m)| !(*s == id && *m == mid));
        }
        session.slot_of.remove(&old);
    }
    sub.assign(key);
    if let Some(key) = key {
        if let Some(p) = publications.get_mut(&key) {
            p.subscribers.push((id, mid));
        }
        session.slot_of.insert(key, mid);
    }
}

/// Put track `key` on the free slot `free`, or, with none free, ask for a new slot in
/// the session's next offer.
fn place_track(
    session: &mut Session,
    publications: &mut FastMap<PublicationKey, Publication>,
    offers_due: &mut Vec<SessionId>,
    id: SessionId,
    key: PublicationKey,
    free: Option<Mid>,
    changes: &mut Vec<SlotInfo>,
) -> Option<Mid> {
    let Some(mid) = free else {
        if !session.to_add.contains(&key) {
            session.to_add.push(key);
            offers_due.push(id);
        }
        return None;
    };
    reassign_slot(session, publications, id, mid, Some(key));
    changes.push(slot_info(publications, mid, Some(key)));
    Some(mid)
}

fn slot_info(
    publications: &FastMap<PublicationKey, Publication>,
    mid: Mid,
    key: Option<PublicationKey>,
) -> SlotInfo {
    let track =
        key.and_then(|k| publications.get(&k)).map(|p| (p.owner_participant.clone(), p.track.id.clone()));
    SlotInfo { mid: mid.to_string(), track }
}

fn offer_mids(sdp: &str) -> Vec<Mid> {
    sdp.lines().filter_map(|l| l.trim_end().strip_prefix("a=mid:")).map(Mid::from).collect()
}

/// Runs one call into a session's WebRTC engine. A panic in it (a bug that network
/// input reached) fails only that session: it is counted, logged and ended after the
/// current input, and every other session on the shard carries on.
fn contained<T>(
    failed: &mut Vec<SessionId>,
    metrics: &SfuMetrics,
    id: SessionId,
    f: impl FnOnce() -> T,
) -> Option<T> {
    egress::keys::set_current_session(id);
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => Some(v),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            metrics.session_panics.inc();
            warn!(session = id, panic = %message, "WebRTC engine panicked; ending this session only");
            if !failed.contains(&id) {
                failed.push(id);
            }
            None
        }
    }
}

/// A fixed point for converting packet arrival instants to milliseconds.
/// The fast-path state of a slot: str0m's SSRCs for its mid and the peer's extension ids.
pub(crate) fn slot_out(rtc: &mut Rtc, mid: Mid, ssrc: Ssrc) -> Option<SlotOut> {
    let media = rtc.media(mid)?;
    // One-byte header extensions (RFC 8285) have ids 1-14; the fast path writes no others.
    let one_byte = |id: Option<u8>| id.filter(|id| (1..=14).contains(id));
    let exts = media.remote_extmap();
    let ext = ExtIds {
        mid: one_byte(exts.id_of(str0m::rtp::Extension::RtpMid)),
        audio_level: one_byte(exts.id_of(str0m::rtp::Extension::AudioLevel)),
    };
    let rtx_pts = rtc.codec_config().iter().filter_map(|p| Some((*p.pt(), *p.resend()?))).collect();
    let rtx_ssrc = rtc.direct_api().stream_tx(&ssrc).and_then(|s| s.rtx()).map(|s| *s);
    Some(SlotOut::new(*ssrc, rtx_ssrc, rtx_pts, mid.to_string(), ext))
}

/// An RTP/RTCP-multiplexed datagram that is RTCP (RFC 5761 §4: payload types 192-223).
fn is_rtcp(data: &[u8]) -> bool {
    data.len() >= 8 && data[0] >> 6 == 2 && (192..=223).contains(&data[1])
}

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The H.264 profile (profile_idc) of a profile-level-id: a decoder of the profile
/// handles every level and constraint set a sender of it uses in practice (42e01f
/// constrained baseline plays on a 42001f baseline decoder), so levels do not block.
fn h264_profile(profile_level_id: Option<u32>) -> Option<u32> {
    profile_level_id.map(|p| p >> 16)
}

/// A short random id for participants and tracks.
pub fn random_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    (0..10).map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_engine_call_fails_only_its_session() {
        let metrics = SfuMetrics::new(&prometheus::Registry::new());
        let mut failed = Vec::new();
        assert_eq!(contained(&mut failed, &metrics, 7, || 42), Some(42));
        assert!(failed.is_empty());
        let r: Option<()> = contained(&mut failed, &metrics, 9, || panic!("engine bug"));
        assert_eq!(r, None);
        let _: Option<()> = contained(&mut failed, &metrics, 9, || panic!("again"));
        assert_eq!(failed, vec![9], "marked once");
        assert_eq!(metrics.session_panics.get(), 2);
    }
}
