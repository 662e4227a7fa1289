//! The media node: binds the one UDP port, starts the shards and the receive thread,
//! places rooms on shards and admits participants.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, sync_channel};
use std::thread::JoinHandle;

use dashmap::DashMap;
use prometheus::Registry;
use tokio::sync::{mpsc, oneshot};
use tracing::info;

use crate::admission::{Gate, InputLimits, SdpQueue};
use crate::api::{
    JoinRequest, Joined, LeaveReason, MediaError, MediaSession, NodeApi, SessionId, ShownTrack, TrackSource,
};
use crate::config::MediaConfig;
use crate::demux::RouteTable;
use crate::health::{self, Heartbeat};
use crate::io::tcp::TcpIngress;
use crate::io::{DatagramPool, Lane, MediaSocket, TcpPeers, receive_loop};
use crate::metrics::SfuMetrics;
use crate::relay::{Places, Relay, RoomViewers};
use crate::shard::{
    Budget, HANDSHAKE_BATCHES, ShardInput, ShardLoad, ShardParts, ShardSender, SideLanes, panic_message,
    supervise,
};

pub struct MediaNode {
    shards: Vec<ShardSender>,
    /// When this node started, and the second (since then, plus one) a refused join was
    /// last logged in.
    started: std::time::Instant,
    refusal_logged: std::sync::atomic::AtomicU64,
    room_placement: Arc<DashMap<String, usize>>,
    local_addr: SocketAddr,
    /// Where ICE-TCP connections arrive, when on.
    tcp_addr: Option<SocketAddr>,
    config: MediaConfig,
    stopping: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    metrics: SfuMetrics,
    /// Every media thread's beat: the shards and the receive thread.
    heartbeats: Vec<Arc<Heartbeat>>,
    viewers: Arc<RoomViewers>,
    /// The broadcast tier's links, when configured.
    relay: Option<Relay>,
}

impl MediaNode {
    pub fn start(config: MediaConfig, registry: &Registry) -> std::io::Result<Self> {
        let socket = Arc::new(MediaSocket::bind(config.bind)?);
        let local_addr = socket.local_addr()?;
        let pool = Arc::new(DatagramPool::default());
        let candidates = candidate_addrs(&config, local_addr);
        // ICE-TCP: by default on the UDP address's port, TCP (any free port when UDP's was
        // left to the kernel: the same number may be taken for TCP).
        let tcp_at = config.tcp_bind.unwrap_or(match config.bind.port() {
            0 => SocketAddr::new(local_addr.ip(), 0),
            _ => local_addr,
        });
        let tcp_listener = match config.ice_tcp {
            true => Some(std::net::TcpListener::bind(tcp_at)?),
            false => None,
        };
        let tcp_local = tcp_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let tcp_candidates: Vec<SocketAddr> = match tcp_local {
            Some(tcp) => candidates.iter().map(|c| SocketAddr::new(c.ip(), tcp.port())).collect(),
            None => Vec::new(),
        };
        let tcp_peers = Arc::new(TcpPeers::default());
        let metrics = SfuMetrics::new(registry);
        let routes = Arc::new(RouteTable::default());
        let room_placement = Arc::new(DashMap::new());
        let stopping = Arc::new(AtomicBool::new(false));
        let viewers = Arc::new(RoomViewers::default());

        let mut shards = Vec::new();
        let mut threads = Vec::new();
        let mut heartbeats = Vec::new();
        for index in 0..config.shard_count() {
            let (tx, rx) = sync_channel(config.shard_queue);
            let (leaves, leaves_rx) = channel();
            let (handshakes, handshakes_rx) = sync_channel(HANDSHAKE_BATCHES);
            let lane_marked = Arc::new(AtomicBool::new(false));
            let lanes =
                SideLanes { leaves: leaves_rx, handshakes: handshakes_rx, marked: lane_marked.clone() };
            let load = Arc::new(AtomicUsize::new(0));
            let shard_load = Arc::new(ShardLoad::default());
            let queued = Arc::new(AtomicUsize::new(0));
            let heartbeat = Arc::new(Heartbeat::new(format!("media thread {index}")));
            heartbeats.push(heartbeat.clone());
            let parts = ShardParts {
                index,
                config: config.clone(),
                socket: socket.clone(),
                candidates: candidates.clone(),
                routes: routes.clone(),
                room_placement: room_placement.clone(),
                load: load.clone(),
                shard_load: shard_load.clone(),
                queued: queued.clone(),
                pool: pool.clone(),
                metrics: metrics.clone(),
                heartbeat,
                next_session: Arc::new(AtomicU64::new(1)),
                viewers: viewers.clone(),
                tcp: tcp_peers.clone(),
                tcp_local,
                tcp_candidates: tcp_candidates.clone(),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("huiyi-shard-{index}"))
                    .spawn(move || supervise(parts, rx, lanes))?,
            );
            let sdp = SdpQueue { queued: Arc::new(AtomicUsize::new(0)), limit: config.shard_queue_sdp_bytes };
            shards.push(ShardSender {
                tx,
                sessions: load,
                joining: Default::default(),
                load: shard_load,
                queued,
                queue_limit: config.shard_queue,
                leaves,
                handshakes,
                lane_marked,
                sdp,
            });
        }

        if let Some(listener) = tcp_listener {
            let shards = shards.clone();
            let deliver = move |i: usize, lane, batch| match lane {
                Lane::Media => shards[i].datagrams(batch),
                Lane::Handshake => shards[i].handshakes(batch),
            };
            let ingress = TcpIngress {
                routes: routes.clone(),
                pool: pool.clone(),
                metrics: metrics.clone(),
                peers: tcp_peers,
                deliver,
            };
            crate::io::tcp::spawn(listener, ingress)?;
        }

        let receiver = {
            let socket = socket.clone();
            let shards = shards.clone();
            let stopping = stopping.clone();
            let metrics = metrics.clone();
            let heartbeat = Arc::new(Heartbeat::new("receive thread".into()));
            heartbeats.push(heartbeat.clone());
            std::thread::Builder::new().name("huiyi-udp-recv".into()).spawn(move || {
                // The receive loop holds no session state: after a panic it simply reads on.
                while !stopping.load(Ordering::Relaxed) {
                    let deliver = |i: usize, lane, batch| match lane {
                        Lane::Media => shards[i].datagrams(batch),
                        Lane::Handshake => shards[i].handshakes(batch),
                    };
                    let read = std::panic::AssertUnwindSafe(|| {
                        let alive = (&*stopping, &*heartbeat);
                        receive_loop(&socket, &routes, shards.len(), deliver, &metrics, &pool, alive)
                    });
                    if let Err(panic) = std::panic::catch_unwind(read) {
                        metrics.shard_restarts.inc();
                        tracing::error!(panic = %panic_message(panic.as_ref()), "receive thread panicked; reading on");
                    }
                }
            })?
        };
        threads.push(receiver);
        info!(%local_addr, candidates = ?candidates, ?tcp_candidates, shards = shards.len(), "media node listening");
        let relay = if config.relay.listen.is_some() || config.relay.parent.is_some() {
            let places = Places { shards: shards.clone(), placement: room_placement.clone() };
            Some(Relay::start(&config.relay, places, metrics.clone(), viewers.clone())?)
        } else {
            None
        };
        Ok(Self {
            started: std::time::Instant::now(),
            refusal_logged: std::sync::atomic::AtomicU64::new(0),
            shards,
            room_placement,
            local_addr,
            tcp_addr: tcp_local,
            config,
            stopping,
            threads,
            metrics,
            heartbeats,
            viewers,
            relay,
        })
    }

    /// Where this node accepts relay links from child nodes, if it does.
    pub fn relay_addr(&self) -> Option<SocketAddr> {
        self.relay.as_ref().and_then(|r| r.listen_addr)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where ICE-TCP connections arrive, when on.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    pub fn config(&self) -> &MediaConfig {
        &self.config
    }

    async fn admit(&self, request: JoinRequest) -> Result<Joined, MediaError> {
        let on_node: usize = self.shards.iter().map(|s| s.sessions.load(Ordering::Relaxed)).sum();
        if on_node >= self.config.max_participants_per_node {
            self.metrics.joins_refused.with_label_values(&["participants"]).inc();
            return Err(MediaError::NodeFull("the node's participant limit"));
        }
        // A room not placed yet is placed only once its first join is admitted.
        let placed = self.room_placement.get(&request.room).map(|i| *i);
        let index = placed.unwrap_or_else(|| self.least_loaded_shard());
        let shard = self.shards[index].clone();
        // Joins on their way to the shard count as sessions already: a burst of them is
        // judged one after another, not all against the same count.
        let _joining = Joining::new(&shard.joining);
        let sessions = shard.sessions.load(Ordering::Relaxed) + shard.joining.load(Ordering::Relaxed) - 1;
        let budget = Budget { max_busy: self.config.max_shard_busy, max_lag: self.config.max_shard_lag };
        // A reconnect takes the place of the connection that just left: no more load.
        if let Err(over) =
            shard.load.admits(sessions, budget).or_else(|e| if request.replaces { Ok(()) } else { Err(e) })
        {
            self.metrics.joins_refused.with_label_values(&[over.label()]).inc();
            // Logged at most once a second: a storm of refusals says itself in the counter.
            let second = self.started.elapsed().as_secs() + 1;
            if self.refusal_logged.swap(second, Ordering::Relaxed) != second {
                let (busy, lag) = shard.load.now();
                info!(room = %request.room, shard = index, busy, lag_ms = lag.as_millis() as u64, reason = over.label(), "join refused: node full");
            }
            return Err(MediaError::NodeFull(over.reason()));
        }
        let index = *self.room_placement.entry(request.room.clone()).or_insert(index);
        let shard = self.shards[index].clone();
        let (events_tx, events) = mpsc::channel(self.config.session_event_queue);
        let (reply, answer) = oneshot::channel();
        let awaiting_answer = Arc::new(AtomicBool::new(false));
        let join =
            ShardInput::Join { request, events: events_tx, reply, awaiting_answer: awaiting_answer.clone() };
        shard.command(join)?;
        // No answer: the shard dropped the request (it panicked and is starting again).
        let (id, others) = answer.await.map_err(|_| MediaError::Overloaded)??;
        let gate = Gate::new(InputLimits::from_config(&self.config), awaiting_answer, self.metrics.clone());
        Ok(Joined { session: Box::new(SessionHandle { id, shard, gate, left: false }), others, events })
    }

    /// The shard a new room goes to: the one with the fewest sessions among those within
    /// their budget now, else the one with the fewest.
    fn least_loaded_shard(&self) -> usize {
        let budget = Budget { max_busy: self.config.max_shard_busy, max_lag: self.config.max_shard_lag };
        let fits = |i: &usize| {
            self.shards[*i].load.admits(self.shards[*i].sessions.load(Ordering::Relaxed), budget).is_ok()
        };
        if let Some(i) = (0..self.shards.len())
            .filter(fits)
            .min_by_key(|i| self.shards[*i].sessions.load(Ordering::Relaxed))
        {
            return i;
        }
        (0..self.shards.len()).min_by_key(|i| self.shards[*i].sessions.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// Stop every shard: sessions end with `RoomClosed`.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        if let Some(relay) = &self.relay {
            relay.close();
        }
        for shard in &self.shards {
            shard.command_blocking_ok(ShardInput::Shutdown);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl NodeApi for MediaNode {
    fn join(
        &self,
        request: JoinRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Joined, MediaError>> + Send + '_>> {
        Box::pin(self.admit(request))
    }

    fn health(&self) -> Result<(), String> {
        health::check(&self.heartbeats)
    }

    fn pull(&self, room: &str) -> Pin<Box<dyn Future<Output = Result<(), MediaError>> + Send + '_>> {
        let parent = self.relay.as_ref().and_then(|r| r.parent.clone());
        let room = room.to_string();
        Box::pin(async move {
            match parent {
                Some(parent) => parent.pull(&room).await,
                None => Ok(()),
            }
        })
    }

    fn is_edge(&self) -> bool {
        self.relay.as_ref().is_some_and(|r| r.parent.is_some())
    }

    fn edge_for_viewer(&self) -> Option<String> {
        self.relay.as_ref().and_then(|r| r.children.least_loaded())
    }

    fn edges(&self) -> Vec<crate::api::EdgeInfo> {
        self.relay.as_ref().map(|r| r.children.list()).unwrap_or_default()
    }

    fn viewers(&self, room: &str) -> u64 {
        if let Some(told) = self.relay.as_ref().and_then(|r| r.parent.as_ref()).and_then(|p| p.audience(room))
        {
            return told;
        }
        let below = self.relay.as_ref().map(|r| r.children.viewers(room)).unwrap_or(0);
        self.viewers.get(room) as u64 + below
    }

    fn drain(&self) {
        if let Some(relay) = &self.relay {
            relay.drain();
        }
    }

    fn is_live(&self, room: &str) -> bool {
        self.viewers.live(room)
    }
}

impl Drop for MediaNode {
    fn drop(&mut self) {
        self.stop();
    }
}

fn candidate_addrs(config: &MediaConfig, local: SocketAddr) -> Vec<SocketAddr> {
    if !config.public_ips.is_empty() {
        return config.public_ips.iter().map(|ip| SocketAddr::new(*ip, local.port())).collect();
    }
    if local.ip().is_unspecified() {
        // Nothing better known: loopback works for a laptop; deployments set public_ips.
        return vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), local.port())];
    }
    vec![local]
}

/// A candidate line is well under this (RFC 8839's grammar with a long host name).
const MAX_CANDIDATE_BYTES: usize = 1024;

/// Control of one session on this node: commands go to the shard that owns its room.
pub struct SessionHandle {
    id: SessionId,
    shard: ShardSender,
    /// Checks the client's input on the caller's thread before it reaches the shard.
    gate: Gate,
    left: bool,
}

impl fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionHandle").field("id", &self.id).finish()
    }
}

impl MediaSession for SessionHandle {
    fn id(&self) -> SessionId {
        self.id
    }

    fn offer(&self, sdp: String, tracks: Vec<(String, TrackSource)>) -> Result<(), MediaError> {
        let offer = self.gate.offer(&sdp, &self.shard.sdp)?;
        self.shard.command(ShardInput::Offer { session: self.id, offer, tracks })
    }

    fn answer(&self, sdp: String) -> Result<(), MediaError> {
        let answer = self.gate.answer(&sdp, &self.shard.sdp)?;
        self.shard.command(ShardInput::Answer { session: self.id, answer })
    }

    fn candidate(&self, candidate: String) -> Result<(), MediaError> {
        if candidate.len() > MAX_CANDIDATE_BYTES {
            return Err(MediaError::Refused(format!("a candidate is at most {MAX_CANDIDATE_BYTES} bytes")));
        }
        self.gate.candidate()?;
        self.shard.command(ShardInput::Candidate { session: self.id, candidate })
    }

    fn set_muted(&self, track_id: String, muted: bool) -> Result<(), MediaError> {
        self.shard.command(ShardInput::Mute { session: self.id, track_id, muted })
    }

    fn hold_audio(&self) -> Result<(), MediaError> {
        self.shard.command(ShardInput::HoldAudio { session: self.id })
    }

    fn subscribe(&self, tracks: Vec<ShownTrack>) -> Result<(), MediaError> {
        self.shard.command(ShardInput::Subscribe { session: self.id, tracks })
    }

    fn leave(mut self: Box<Self>, reason: LeaveReason) {
        self.left = true;
        self.shard.end(self.id, reason);
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        if !self.left {
            self.shard.end(self.id, LeaveReason::Disconnected);
        }
    }
}

/// A join on its way to its shard, counted in `ShardSender::joining` while it is.
struct Joining<'a>(&'a AtomicUsize);

impl<'a> Joining<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Joining<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
