//! A shard: one thread that owns a set of rooms and every session in them. It is the
//! router's driver: it is fed datagrams and commands through one bounded queue, drives
//! each session's str0m engine (session.rs), feeds the router what happens and carries
//! out what the router asks (send.rs), on its own clock and timers. No task or thread
//! per peer.

#[cfg(feature = "internals")]
mod client_facing;
mod load;
mod queue;
mod relay;
mod send;
mod session;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use str0m::net::{Protocol, Receive, TcpType};
use str0m::rtp::ExtensionValues;
use str0m::{Candidate, IceCreds, Input};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::api::{JoinRequest, LeaveReason, MediaError, ParticipantInfo, SessionEvent, SessionId};
use crate::config::MediaConfig;
use crate::demux::{RouteTable, is_stun, stun_server_ufrag};
use crate::fasthash::FastMap;
use crate::health::Heartbeat;
use crate::io::{DatagramPool, MediaSocket, SendQueue, TcpPeers};
use crate::metrics::SfuMetrics;
use crate::relay::RoomViewers;
use crate::router::{self, Router, RouterConfig};
#[cfg(feature = "internals")]
pub use client_facing::ClientFacing;
pub(crate) use load::{Budget, ShardLoad};
use load::{LoadMeter, VideoShedding};
pub(crate) use queue::{HANDSHAKE_BATCHES, ShardInput, ShardSender, SideLanes};
use relay::RelayEndpoint;
pub(crate) use relay::RelayInput;
pub(crate) use session::session_rtc;
#[cfg(test)]
pub(crate) use session::slot_out;
use session::{Session, contained};

const MAX_INPUTS_PER_TURN: usize = 512;
/// Handshake batches handled before each input: the lane goes first, but a flood on it
/// cannot hold the media queue still.
const HANDSHAKES_PER_INPUT: usize = 8;
/// Datagrams queued before a busy turn sends them (it sends the rest at its end). The more
/// a turn sends at once, the more of them to one subscriber go out as one GSO send; a
/// shard that falls behind batches more by itself, an idle one sends at once.
const SEND_BATCH: usize = 1024;
/// Datagrams a fan-out carried out viewer by viewer queues before they are sent: a
/// viewer's packets are together already (one GSO message), so sending every few dozen
/// viewers costs no merging, and the first viewers' packets need not wait for the last
/// ones to be sealed. 128 fill about one `sendmmsg` (64 messages).
const FAN_OUT_BATCH: usize = 128;
/// Source addresses one session may be reached from (ICE may move between a few).
const MAX_ADDRS_PER_SESSION: usize = 8;
const STATS_INTERVAL: Duration = Duration::from_secs(5);

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
    /// ICE-TCP (io/tcp.rs): its peers, where its connections arrive, its candidates.
    tcp: Arc<TcpPeers>,
    tcp_local: Option<SocketAddr>,
    tcp_candidates: Vec<SocketAddr>,
    /// The addresses of this thread's sessions that checked in over ICE-TCP.
    tcp_addrs: HashSet<SocketAddr>,
    routes: Arc<RouteTable>,
    room_placement: Arc<DashMap<String, usize>>,
    load: Arc<AtomicUsize>,
    /// How busy this thread is and how long media waits for it, for admission.
    shard_load: Arc<ShardLoad>,
    meter: LoadMeter,
    shedding: VideoShedding,
    metrics: SfuMetrics,
    router: Router,
    /// Boxed: a session is about 11 KB (its engine), and the forwarding loop looks one up
    /// per packet and subscriber, so the table itself stays small enough to stay cached.
    sessions: FastMap<SessionId, Box<Session>>,
    /// Relay links' ends in this shard's rooms (the router sees them as hidden endpoints).
    relays: FastMap<SessionId, RelayEndpoint>,
    viewers: Arc<RoomViewers>,
    by_addr: HashMap<SocketAddr, SessionId>,
    by_ufrag: HashMap<String, SessionId>,
    timers: BinaryHeap<Reverse<(Instant, SessionId)>>,
    /// Sessions written to through str0m: drained once each at the end of the turn.
    dirty: Vec<SessionId>,
    /// Fast-path sessions written to through str0m by the packet being routed: drained
    /// right after it.
    send_now: Vec<SessionId>,
    /// Forwards of a relayed batch, ordered by sink before they are carried out.
    by_sink: Vec<(router::SinkKey, u32, router::Forwarded)>,
    /// The media extensions of the packet being routed (str0m writes them again).
    routing_ext: ExtensionValues,
    /// Sessions whose sinks changed during this input: one offer each after it.
    offers_due: Vec<SessionId>,
    /// Sessions whose engine panicked, to end after this input.
    failed: Vec<SessionId>,
    /// Session ids carry the shard index in the low bits so they are unique per node; the
    /// counter outlives a restarted shard, so no id is reused.
    next_session: Arc<AtomicU64>,
    /// Packet arrival times become milliseconds since this instant (fast-path timing).
    epoch: Instant,
    heartbeat: Arc<Heartbeat>,
}

#[derive(Clone)]
pub(crate) struct ShardParts {
    pub index: usize,
    pub config: MediaConfig,
    pub socket: Arc<MediaSocket>,
    pub candidates: Vec<SocketAddr>,
    pub routes: Arc<RouteTable>,
    pub room_placement: Arc<DashMap<String, usize>>,
    pub load: Arc<AtomicUsize>,
    pub shard_load: Arc<ShardLoad>,
    pub queued: Arc<AtomicUsize>,
    pub pool: Arc<DatagramPool>,
    pub metrics: SfuMetrics,
    pub heartbeat: Arc<Heartbeat>,
    /// The shard's session counter (starts at 1), shared with the shards that replace it.
    pub next_session: Arc<AtomicU64>,
    /// Where the shard tells the node how many watch each of its rooms.
    pub viewers: Arc<RoomViewers>,
    /// Peers connected over ICE-TCP, the listener's address, and the passive candidates.
    pub tcp: Arc<TcpPeers>,
    pub tcp_local: Option<SocketAddr>,
    pub tcp_candidates: Vec<SocketAddr>,
}

impl Shard {
    pub fn new(parts: ShardParts) -> std::io::Result<Self> {
        let local_addr = parts.socket.local_addr()?;
        let now = Instant::now();
        let router_config = RouterConfig {
            max_participants_per_room: parts.config.max_participants_per_room,
            max_viewers_per_room: parts.config.max_viewers_per_room,
            keyframe_request_interval: parts.config.keyframe_request_interval,
            audio: parts.config.audio_select(),
        };
        Ok(Self {
            index: parts.index,
            router: Router::new(router_config, parts.metrics.clone(), now),
            config: parts.config,
            socket: parts.socket,
            out: SendQueue::default(),
            queued: parts.queued,
            pool: parts.pool,
            local_addr,
            candidates: parts.candidates,
            tcp: parts.tcp,
            tcp_local: parts.tcp_local,
            tcp_candidates: parts.tcp_candidates,
            tcp_addrs: HashSet::new(),
            routes: parts.routes,
            room_placement: parts.room_placement,
            load: parts.load,
            shard_load: parts.shard_load,
            meter: LoadMeter::new(now),
            shedding: VideoShedding::default(),
            metrics: parts.metrics,
            sessions: FastMap::default(),
            relays: FastMap::default(),
            viewers: parts.viewers,
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            send_now: Vec::new(),
            by_sink: Vec::new(),
            routing_ext: ExtensionValues::default(),
            offers_due: Vec::new(),
            failed: Vec::new(),
            next_session: parts.next_session,
            epoch: now,
            heartbeat: parts.heartbeat,
        })
    }

    /// Run until shutdown. Ends early only by panicking (see [`supervise`]).
    pub fn run(&mut self, rx: &Receiver<ShardInput>, lanes: &SideLanes) {
        loop {
            self.heartbeat.beat();
            // Lane batches whose wake-up marker found the media queue full are taken here
            // too, without waiting for the next input while any may be left.
            let lane_left = self.take_side_lanes(lanes);
            let now = Instant::now();
            let deadline = if lane_left { now } else { self.next_deadline().min(self.router.poll_timeout()) };
            let received = rx.recv_timeout(deadline.saturating_duration_since(now));
            // Idle until the input that woke it arrived, not until the thread got to run: a
            // thread held back by a CPU quota or a busy core is not idle while media waits.
            let woke = Instant::now();
            let arrived = match &received {
                Ok(ShardInput::Datagrams(batch)) => batch.at.clamp(now, woke),
                _ => woke,
            };
            self.meter.idle(arrived.saturating_duration_since(now));
            match received {
                Ok(ShardInput::Shutdown) => break,
                Ok(input) => {
                    self.take_side_lanes(lanes);
                    self.handle(input);
                    for _ in 0..MAX_INPUTS_PER_TURN {
                        if self.out.len() >= SEND_BATCH {
                            self.send_queued();
                        }
                        match rx.try_recv() {
                            Ok(ShardInput::Shutdown) => return self.shutdown(),
                            Ok(input) => {
                                // A leave that overflowed the queue came before anything
                                // queued after it (a reconnect's join above all), and
                                // handshakes go ahead of media.
                                self.take_side_lanes(lanes);
                                self.handle(input);
                            }
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            if self.meter.due(now) {
                let settled = self
                    .sessions
                    .values()
                    .filter(|s| {
                        s.connected_at.is_some_and(|at| now.saturating_duration_since(at) >= load::SETTLE)
                    })
                    .count();
                self.meter.publish(now, settled, &self.shard_load);
                let (busy, lag) = self.shard_load.now();
                let shard = self.index.to_string();
                self.metrics.shard_busy.with_label_values(&[&shard]).set(busy);
                self.metrics.shard_lag.with_label_values(&[&shard]).set(lag.as_secs_f64());
                let shed = self.shedding.next(busy, lag);
                self.metrics.shard_video_share.with_label_values(&[&shard]).set(self.shedding.share());
                if let Some(share) = shed {
                    // Behind (or calm again): each subscriber's least important video
                    // goes first (ADR 0021); audio is never shed.
                    info!(
                        shard = self.index,
                        share,
                        busy,
                        lag_ms = lag.as_millis() as u64,
                        "video shed to this share"
                    );
                    self.shard_load.set_shedding(share < 1.0);
                    self.router.shed_video(share);
                    self.carry_out();
                }
            }
            self.run_timers(now);
            if now >= self.router.poll_timeout() {
                if self.router.housekeeping_due(now) {
                    self.housekeeping(now);
                } else {
                    // Only sinks whose start was held (just after their DTLS came up).
                    self.route(router::Input::Timeout);
                }
            }
            self.flush_offers();
            self.end_failed_sessions();
            self.flush_dirty();
            self.end_failed_sessions();
            self.send_queued();
        }
        self.shutdown();
    }

    /// End the sessions whose leave overflowed a full queue, then take what waits on the
    /// handshake lane (a bounded number of batches) and send the replies at once. True
    /// when it stopped at the bound: the lane may hold more.
    fn take_side_lanes(&mut self, lanes: &SideLanes) -> bool {
        while let Ok((session, reason)) = lanes.leaves.try_recv() {
            self.end_session(session, reason);
        }
        // Cleared before reading: a batch queued after this raises a new marker.
        lanes.marked.store(false, Ordering::Release);
        let mut spent = Duration::ZERO;
        let mut took = 0;
        while took < HANDSHAKES_PER_INPUT {
            let Ok(batch) = lanes.handshakes.try_recv() else { break };
            let start = Instant::now();
            for (source, data) in batch.iter() {
                self.handle_datagram(source, data, batch.at, batch.tcp);
            }
            spent += start.elapsed();
            self.pool.give_back(batch);
            took += 1;
        }
        if took > 0 {
            self.end_failed_sessions();
            self.send_queued();
            // ICE and DTLS are mostly the joins' own work too (consent checks of connected
            // sessions are a little of it); sending is not counted, since what waits in
            // the send queue is mostly media.
            self.meter.control(spent);
        }
        took == HANDSHAKES_PER_INPUT
    }

    /// Send what this input (or timer pass) queued: one system call per run of
    /// equal-sized datagrams to one address (io/send.rs).
    fn send_queued(&mut self) {
        if self.out.is_empty() {
            return;
        }
        if !self.tcp_addrs.is_empty() {
            // Datagrams to this thread's peers on ICE-TCP go framed over their connections.
            let (addrs, tcp, metrics) = (&self.tcp_addrs, &self.tcp, &self.metrics);
            self.out.divert(|to, datagram| addrs.contains(&to) && tcp.send(&to, datagram, metrics));
            if self.out.is_empty() {
                return;
            }
        }
        let flushed = self.out.flush(&self.socket);
        self.metrics.packets_out.inc_by(flushed.datagrams);
        self.metrics.bytes_out.inc_by(flushed.bytes);
        self.metrics.send_calls.inc_by(flushed.sends);
        self.metrics.send_failures.inc_by(flushed.failed);
    }

    /// After a panic, when nothing this shard holds can be trusted: tell every session it
    /// ended (`MediaError`, close 4008), and forget its routes, its load and its rooms.
    fn abandon(&mut self) {
        for (id, session) in self.sessions.drain() {
            for addr in &session.addrs {
                self.routes.remove_addr(addr);
            }
            self.routes.remove_ufrag(&session.ufrag);
            self.load.fetch_sub(1, Ordering::Relaxed);
            self.metrics.participants.dec();
            self.metrics.sessions_ended.with_label_values(&[LeaveReason::MediaError.as_str()]).inc();
            debug!(session = id, participant = %session.participant_id, "session ended with its media thread");
            session.emit(SessionEvent::Closed { reason: LeaveReason::MediaError }, &self.metrics);
        }
        for (id, relay) in self.relays.drain() {
            let direction = match relay.side {
                relay::Side::Brings { .. } => {
                    relay.link.release(&relay.room, id);
                    "in"
                }
                relay::Side::Feeds { .. } => "out",
            };
            self.metrics.relay.rooms.with_label_values(&[direction]).dec();
        }
        self.viewers.replace_shard(self.index, Vec::new());
        self.room_placement.retain(|_, shard| *shard != self.index);
    }

    fn shutdown(&mut self) {
        let ids: Vec<SessionId> = self.sessions.keys().chain(self.relays.keys()).copied().collect();
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
        Instant::now() + router::HOUSEKEEPING
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
            if session.timeout != at || self.failed.contains(&id) {
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
        // Signaling's commands are the joins' own work, counted apart from media's (the
        // admission budget projects media's share only: `ShardLoad::admits`).
        let control = (!matches!(input, ShardInput::Datagrams(_) | ShardInput::Relay(_))).then(Instant::now);
        match input {
            ShardInput::Datagrams(batch) => {
                // Counted out first: a panic below must not leave them counted forever.
                self.queued.fetch_sub(batch.len(), Ordering::Relaxed);
                self.meter.queued(batch.at.elapsed());
                for (source, data) in batch.iter() {
                    self.handle_datagram(source, data, batch.at, batch.tcp);
                }
                self.pool.give_back(batch);
            }
            ShardInput::Join { request, events, reply, awaiting_answer } => {
                let _ = reply.send(self.join(request, events, awaiting_answer));
            }
            ShardInput::Offer { session, offer, tracks } => self.handle_offer(session, offer, tracks),
            ShardInput::Answer { session, answer } => self.handle_answer(session, answer),
            ShardInput::Candidate { session, candidate } => self.handle_candidate(session, &candidate),
            ShardInput::Mute { session, track_id, muted } => self.handle_mute(session, &track_id, muted),
            ShardInput::HoldAudio { session } => {
                self.router.hold_audio(session);
                self.carry_out();
            }
            ShardInput::Subscribe { session, tracks } => {
                self.router.set_view(session, tracks, Instant::now());
                self.carry_out();
            }
            ShardInput::Leave { session, reason } => self.end_session(session, reason),
            ShardInput::Relay(input) => self.handle_relay(input),
            ShardInput::Handshakes | ShardInput::Shutdown => {}
        }
        self.flush_offers();
        self.end_failed_sessions();
        if let Some(start) = control {
            self.meter.control(start.elapsed());
        }
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
        awaiting_answer: Arc<AtomicBool>,
    ) -> Result<(SessionId, Vec<ParticipantInfo>), MediaError> {
        if self.config.panic_on_join_to.as_deref() == Some(request.room.as_str()) {
            panic!("test hook: a join to room {:?} panics its media thread", request.room);
        }
        let now = Instant::now();
        let id = self.new_session_id();
        let others = self.router.join(id, &request, false, now)?;
        let creds = IceCreds::new();
        // Name the session before its engine (and DTLS instance) is built: the keys that
        // instance exports are bound to it.
        crate::egress::keys::set_current_session(id);
        let mut rtc = session_rtc(&self.config, creds.clone(), now);
        for addr in &self.candidates {
            match Candidate::host(*addr, "udp") {
                Ok(c) => {
                    rtc.add_local_candidate(c);
                }
                Err(e) => warn!(%addr, error = %e, "unusable host candidate"),
            }
        }
        // Passive: the peer connects (RFC 6544); its UDP candidates are preferred.
        for addr in &self.tcp_candidates {
            match Candidate::builder().tcp().host(*addr).tcptype(TcpType::Passive).build() {
                Ok(c) => {
                    rtc.add_local_candidate(c);
                }
                Err(e) => warn!(%addr, error = %e, "unusable TCP host candidate"),
            }
        }
        self.routes.add_ufrag(&creds.ufrag, self.index);
        self.by_ufrag.insert(creds.ufrag.clone(), id);
        self.room_placement.insert(request.room.clone(), self.index);
        let mut session = Session::new(
            request.room,
            request.participant_id,
            request.can_publish,
            rtc,
            creds.ufrag,
            events,
            now,
        );
        session.awaiting_answer = awaiting_answer;
        self.sessions.insert(id, Box::new(session));
        self.load.fetch_add(1, Ordering::Relaxed);
        self.metrics.participants.inc();
        self.carry_out();
        self.drain(id);
        Ok((id, others))
    }

    /// A session id unique on this node (the shard index in its low bits), never reused.
    fn new_session_id(&mut self) -> SessionId {
        let n = self.next_session.fetch_add(1, Ordering::Relaxed);
        (n << 8) | self.index as u64
    }

    fn handle_datagram(&mut self, source: SocketAddr, data: &[u8], at: Instant, tcp: bool) {
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
        let Some(session) = self.sessions.get_mut(&id) else { return };
        let (protocol, local) = match self.tcp_local.filter(|_| tcp) {
            Some(tcp) => (Protocol::Tcp, tcp),
            None => (Protocol::Udp, self.local_addr),
        };
        let receive = match Receive::new(protocol, source, local, data) {
            Ok(r) => r,
            Err(e) => {
                self.metrics.dropped_datagrams.with_label_values(&["malformed"]).inc();
                debug!(%source, error = %e, "unparseable datagram");
                return;
            }
        };
        if session.egress.is_some() && send::is_rtcp(data) {
            self.read_feedback(id, data);
        }
        let Some(session) = self.sessions.get_mut(&id) else { return };
        let input = Input::Receive(at, receive);
        let rtc = &mut session.rtc;
        match contained(&mut self.failed, &self.metrics, id, || rtc.accepts(&input)) {
            Some(true) => {}
            Some(false) => return self.metrics.dropped_datagrams.with_label_values(&["rejected"]).inc(),
            None => return,
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
        // A handshake batch may have been read after a later one of media.
        session.last_rx = session.last_rx.max(at);
        if !session.addrs.contains(&source) && session.addrs.len() < MAX_ADDRS_PER_SESSION && is_stun(data) {
            session.addrs.push(source);
            self.by_addr.insert(source, id);
            self.routes.add_addr(source, self.index);
            if tcp {
                self.tcp_addrs.insert(source);
            }
        }
        self.drain(id);
    }

    /// Sessions whose media went silent or never came end; then the router's
    /// housekeeping runs on those that remain.
    fn housekeeping(&mut self, now: Instant) {
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
        self.relay_housekeeping(now);
        self.route(router::Input::Timeout);
    }

    /// Feed the router one input and carry out what it asks.
    fn route(&mut self, input: router::Input) {
        self.router.handle_input(input, Instant::now());
        self.carry_out();
    }

    /// Carry out everything the router asked for so far.
    fn carry_out(&mut self) {
        while let Some(output) = self.router.poll_output() {
            self.carry_out_one(output);
        }
    }

    /// Carry out what routing several packets at once asked for (a relayed frame), one
    /// sink after another: each subscriber's state is looked up once for the whole frame
    /// rather than once per packet, its packets leave together (one GSO send), and the
    /// queue is sent between subscribers as it fills, so the first ones need not wait
    /// for the last to be sealed. A sink's packets keep their order.
    fn carry_out_by_sink(&mut self) {
        let mut forwards = std::mem::take(&mut self.by_sink);
        while let Some(output) = self.router.poll_output() {
            match output {
                router::Output::Forward { sink, at, packet } => forwards.push((sink, at, packet)),
                other => self.carry_out_one(other),
            }
        }
        // Stable: a sink's packets stay in the order the router gave them.
        forwards.sort_by_key(|(sink, _, _)| sink.0);
        let mut last = None;
        for (sink, at, packet) in forwards.drain(..) {
            if last != Some(sink.0) && self.out.len() >= FAN_OUT_BATCH {
                self.send_queued();
            }
            last = Some(sink.0);
            self.carry_out_one(router::Output::Forward { sink, at, packet });
        }
        self.by_sink = forwards;
    }

    fn carry_out_one(&mut self, output: router::Output) {
        match output {
            router::Output::Forward { sink, at, packet } => {
                if !self.relays.is_empty() && self.relays.contains_key(&sink.0) {
                    self.relay_forward(sink, packet);
                } else {
                    self.send_forwarded(sink, at, packet);
                }
            }
            router::Output::KeyframeRequest { source: (owner, mid), ssrc } => {
                if self.relay_keyframe_request(owner, mid, ssrc) {
                    return;
                }
                let Some(session) = self.sessions.get_mut(&owner) else { return };
                let rtc = &mut session.rtc;
                let requested = contained(&mut self.failed, &self.metrics, owner, || {
                    let mut api = rtc.direct_api();
                    let rx = api.stream_rx(&ssrc.into())?;
                    rx.request_keyframe(str0m::media::KeyframeRequestKind::Pli);
                    Some(())
                });
                if requested.flatten().is_some() {
                    self.metrics.keyframe_requests.with_label_values(&["sent"]).inc();
                    self.dirty.push(owner);
                }
            }
            router::Output::Event { to, event } => {
                if self.relay_event(to, &event) {
                    return;
                }
                if let Some(s) = self.sessions.get(&to) {
                    s.emit(event, &self.metrics);
                }
            }
            router::Output::OfferNeeded(id) => self.offers_due.push(id),
            router::Output::RelaySource { to, source } => {
                if let Some(track) = self.feed_source(to, source)
                    && let Some(relay) = self.relays.get(&to)
                {
                    relay.link.send(crate::relay::wire::Control::Track { slot: relay.slot, track });
                }
            }
        }
    }

    fn end_session(&mut self, id: SessionId, reason: LeaveReason) {
        if self.end_relay(id, reason) {
            return;
        }
        let Some(mut session) = self.sessions.remove(&id) else { return };
        let rtc = &mut session.rtc;
        let _ = contained(&mut self.failed, &self.metrics, id, || rtc.disconnect());
        self.failed.retain(|f| *f != id);
        self.load.fetch_sub(1, Ordering::Relaxed);
        self.metrics.participants.dec();
        self.metrics.sessions_ended.with_label_values(&[reason.as_str()]).inc();
        for addr in &session.addrs {
            self.by_addr.remove(addr);
            self.tcp_addrs.remove(addr);
            self.routes.remove_addr(addr);
        }
        self.by_ufrag.remove(&session.ufrag);
        self.routes.remove_ufrag(&session.ufrag);
        info!(participant = %session.participant_id, room = %session.room, reason = reason.as_str(), "session ended");
        if !matches!(reason, LeaveReason::Disconnected | LeaveReason::Left | LeaveReason::Reloaded) {
            session.emit(SessionEvent::Closed { reason }, &self.metrics);
        }
        let departure = self.router.leave(id, reason);
        self.carry_out();
        if departure.room_closed {
            self.room_placement.remove_if(&session.room, |_, shard| *shard == self.index);
        }
    }
}

/// Run shard `parts.index` until shutdown. When it panics (a bug outside the engine calls
/// that `contained` guards), its sessions end with a clear close code and a fresh shard
/// takes the same queue: the other shards, and the rooms placed here later, never notice.
pub(crate) fn supervise(parts: ShardParts, rx: Receiver<ShardInput>, lanes: SideLanes) {
    loop {
        let mut shard = match Shard::new(parts.clone()) {
            Ok(s) => s,
            Err(e) => {
                error!(shard = parts.index, error = %e, "cannot start a media thread; trying again in 1 s");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shard.run(&rx, &lanes)))
        else {
            return;
        };
        parts.metrics.shard_restarts.inc();
        error!(
            shard = parts.index,
            sessions = shard.sessions.len(),
            panic = %panic_message(panic.as_ref()),
            "media thread panicked: its sessions end (4008) and it starts again"
        );
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shard.abandon())).is_err() {
            error!(shard = parts.index, "cleaning up after a media thread panic panicked too");
        }
        // The shard's sockets, engines and router are dropped here.
    }
}

/// The text a panic carried, if any.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// A short random id for tracks.
pub(crate) fn random_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    (0..10).map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char).collect()
}
