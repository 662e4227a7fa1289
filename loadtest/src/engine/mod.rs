//! The media engine: a few threads, each owning many virtual clients (a str0m `Rtc` each,
//! and a loopback address of its own on the thread's shared UDP socket, or a socket of its
//! own), woken by mio when a socket is readable, a timer is due, or the control side has
//! news. Sends the scenario's media and measures what arrives.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::Instant;

use mio::net::UdpSocket;
use mio::{Interest, Poll, Token, Waker};
use proto::messages::{ClientMessage, ServerMessage};
use str0m::change::SdpPendingOffer;
use str0m::format::Codec;
use str0m::media::{Mid, Pt, Rid};
use str0m::rtp::Ssrc;
use str0m::{Event, IceConnectionState, Input, Output, Rtc};
use tokio::sync::mpsc::UnboundedSender;

use crate::expect::{STREAMS_PER_CLIENT, TalkTurn};
use crate::idmap::{IdMap, Placed};
use crate::media::{FirstFrame, KeyframeSchedule, LayerShape, OpusLibrary, Vp8Packetizer};
use crate::net::{RecvBatch, SendBatch};
use crate::scenario::Scenario;
use crate::signal::FromServer;
use crate::srtp::{self, SrtpIn};
use crate::stats::{DeliveryCounter, Jitter, LatencyHistogram};
use crate::view::View;
use receive::SHARED;
pub use receive::address_of;

mod client;
mod finish;
pub use finish::{ClientResult, WorkerResult};
mod receive;
mod send;
mod turn;

const WAKER: Token = Token(usize::MAX);
const UNSET: u32 = u32::MAX;

/// State every worker and the controller share: the clock, the measurement window and
/// what each sent stream did inside it.
pub struct Shared {
    pub epoch: Instant,
    window_start_us: AtomicU64,
    window_end_us: AtomicU64,
    pub streams: Vec<StreamSlot>,
    pub packets_sent: AtomicU64,
    pub packets_received: AtomicU64,
    pub bytes_received: AtomicU64,
    /// Media datagrams opened by the generator's own SRTP path (the rest went to str0m).
    pub opened_own: AtomicU64,
    pub connected: AtomicU64,
    /// The worst p99 latency (us) any worker saw in its last complete second, for the live line.
    pub live_p99_us: AtomicU64,
    /// How late (us) a media timer ran at worst inside the window: media sent late is
    /// bursty, and its latency is the generator's.
    pub max_timer_late_us: AtomicU64,
    /// Camera track ids (from each publisher's `answer`) and the client that publishes them.
    camera_tracks: Mutex<HashMap<String, u32>>,
    /// The client followed second by second (the shaped one), by serial.
    pub followed: Option<u32>,
}

/// One second of what the followed client received, inside the window: video bytes per
/// layer (q, h, f), audio packets, the cameras it got video of (a bit per publisher's
/// serial, modulo 64), and how many tracks the server had told it were paused.
pub type FollowedSecond = [u64; 6];

/// One sent stream (ids and kinds: `expect::StreamKind`): the first and last sequence
/// numbers it sent inside the window.
pub struct StreamSlot {
    /// When its publisher's media connected (microseconds since the epoch).
    pub started_us: AtomicU64,
    pub first: AtomicU32,
    pub last: AtomicU32,
    pub owner: AtomicU32,
}

impl Shared {
    pub fn new(max_clients: usize, followed: Option<u32>) -> Self {
        let max_streams = max_clients * STREAMS_PER_CLIENT as usize;
        Self {
            epoch: Instant::now(),
            window_start_us: AtomicU64::new(u64::MAX),
            window_end_us: AtomicU64::new(u64::MAX),
            streams: (0..max_streams)
                .map(|_| StreamSlot {
                    started_us: AtomicU64::new(u64::MAX),
                    first: AtomicU32::new(UNSET),
                    last: AtomicU32::new(UNSET),
                    owner: AtomicU32::new(UNSET),
                })
                .collect(),
            packets_sent: AtomicU64::new(0),
            packets_received: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            opened_own: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            live_p99_us: AtomicU64::new(0),
            max_timer_late_us: AtomicU64::new(0),
            camera_tracks: Mutex::new(HashMap::new()),
            followed,
        }
    }

    pub fn us(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_micros() as u64
    }

    pub fn open_window(&self, start: Instant, end: Instant) {
        self.window_end_us.store(self.us(end), Ordering::Relaxed);
        self.window_start_us.store(self.us(start), Ordering::Relaxed);
    }

    pub fn window_start_us(&self) -> u64 {
        self.window_start_us.load(Ordering::Relaxed)
    }

    /// The window's end, or None before it opened.
    pub fn window_end_us(&self) -> Option<u64> {
        Some(self.window_end_us.load(Ordering::Relaxed)).filter(|e| *e != u64::MAX)
    }

    /// The client publishing camera track `track`, once its answer named it.
    fn camera_owner(&self, track: &str) -> Option<u32> {
        self.camera_tracks.lock().ok()?.get(track).copied()
    }

    fn note_camera(&self, track: &str, serial: u32) {
        if let Ok(mut tracks) = self.camera_tracks.lock() {
            tracks.insert(track.to_string(), serial);
        }
    }

    /// A client's media connected: its streams count as sending from now.
    fn note_connected(&self, serial: u32, us: u64) {
        let first = (serial * STREAMS_PER_CLIENT) as usize;
        for slot in self.streams.iter().skip(first).take(STREAMS_PER_CLIENT as usize) {
            slot.started_us.store(us, Ordering::Relaxed);
        }
    }

    fn in_window(&self, us: u64) -> bool {
        us >= self.window_start_us.load(Ordering::Relaxed) && us < self.window_end_us.load(Ordering::Relaxed)
    }

    /// A sender notes a packet it sent at `us` with stream sequence `seq`.
    fn note_sent(&self, stream: u32, seq: u32, us: u64) {
        let slot = &self.streams[stream as usize];
        if !self.in_window(us) {
            return;
        }
        if slot.first.load(Ordering::Relaxed) == UNSET {
            slot.first.store(seq, Ordering::Relaxed);
        }
        slot.last.store(seq, Ordering::Relaxed);
    }
}

/// What a client needs to start: who it is and what it publishes.
pub struct ClientSetup {
    pub serial: u32,
    /// The participant's place in the scenario (roles such as speaking follow it).
    pub slot: usize,
    pub audio: bool,
    /// The camera's layers, lowest first; empty without a camera.
    pub video: Vec<LayerShape>,
    /// The server's `joined` message (the room as the client found it); None for a WHIP
    /// publisher or a WHEP player, which negotiate over HTTP and learn nothing of the room.
    pub joined: Option<ServerMessage>,
    /// A WHEP player: it offers to receive audio and video, and publishes nothing.
    pub watch: bool,
    pub to_server: UnboundedSender<ClientMessage>,
    pub ws_open_at: Instant,
    /// The client may count its join time (someone was already publishing when it came).
    pub join_measurable: bool,
    /// It makes the first offer; otherwise it waits for the server's (a Janus subscriber).
    pub offers: bool,
    /// The participant's other connection, where it has two (against Janus one publishes
    /// and one subscribes): that one's streams are the participant's own.
    pub twin: Option<u32>,
    /// The publishing one of such a pair: the participant is counted on the other.
    pub publishing_half: bool,
}

pub enum WorkerInput {
    Add(Box<ClientSetup>),
    Signal(u32, FromServer),
    Remove(u32),
    /// Drop a client that never started (its WHIP or WHEP offer was refused), leaving no result:
    /// the refusal is counted where it happened.
    Forget(u32),
    Stop,
}

/// Handle to a worker thread.
#[derive(Clone)]
pub struct WorkerHandle {
    pub tx: Sender<WorkerInput>,
    pub waker: Arc<Waker>,
}

impl WorkerHandle {
    pub fn send(&self, input: WorkerInput) {
        if self.tx.send(input).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

struct AudioTx {
    mid: Mid,
    /// Next stream sequence of the `Talk` and `Unexpected` measurement streams.
    seq: [u32; 2],
    turn: TalkTurn,
    rtp_seq: u64,
    ts: u32,
    frame: usize,
    tx: Option<(Ssrc, Pt)>,
}

/// A camera: one m-line, with simulcast when it sends more than one layer.
struct VideoTx {
    mid: Mid,
    simulcast: bool,
    layers: Vec<LayerTx>,
}

/// One layer of a camera: its own RTP stream, frame clock, keyframes and picture ids.
struct LayerTx {
    shape: LayerShape,
    stream: u32,
    seq: u32,
    rtp_seq: u64,
    ts: u32,
    sizes: (usize, usize),
    keyframes: KeyframeSchedule,
    packetizer: Vp8Packetizer,
    tx: Option<(Ssrc, Pt)>,
    /// The server's `layers` left it out: nobody receives it.
    paused: bool,
    /// When its next frame is due (set once the client connects).
    next_frame: Option<Instant>,
}

/// One measurement stream as a receiver sees it.
#[derive(Default)]
struct RxStream {
    delivery: DeliveryCounter,
    jitter: Jitter,
    /// The last packet received inside the window (microseconds since the epoch).
    last_in_window_us: Option<u64>,
    /// The sender's first sequence number in the window, once set: it never changes, and
    /// reading it here keeps the receiver off the cache line the sender writes per packet.
    first: Option<u32>,
}

/// One camera as a receiver sees it, whichever layers arrive.
struct RxTrack {
    /// The layer (rank) of the last packet received.
    layer: usize,
    first_keyframe_ms: Option<f64>,
    first_frame_ms: Option<f64>,
    /// The first keyframe while it arrives.
    assembling: Option<FirstFrame>,
    /// Since when the receiver waits for a keyframe of a layer other than this one.
    switch: Option<(Instant, usize)>,
    /// When it should have started arriving: the last server offer before its first
    /// packet, the `slots` that put it on a mid, or the subscription that first showed
    /// it, whichever came last.
    started: Instant,
}

struct Client {
    setup: ClientSetup,
    rtc: Rtc,
    /// Its own socket, or None when it shares its thread's (`Worker::shared_socket`) from
    /// an address of its own.
    socket: Option<UdpSocket>,
    /// Our own SRTP receive side, once connected (with `RxPath::Own`): media of the streams
    /// it has learned is opened here, not by the engine.
    srtp: Option<SrtpIn>,
    /// Datagrams of learned streams whose authentication failed.
    srtp_refused: u64,
    local: SocketAddr,
    pending: Option<SdpPendingOffer>,
    audio: Option<AudioTx>,
    video: Option<VideoTx>,
    /// The id others see for this client's camera (from its `answer`).
    camera_track: Option<String>,
    view: Option<View>,
    /// Against Janus: the cameras its subscription shows (by publisher serial), and since when.
    showing: Option<Vec<(u32, Instant)>>,
    connected_at: Option<Instant>,
    /// ICE first found a working candidate pair (before DTLS ran over it).
    ice_at: Option<Instant>,
    /// The first offer/answer exchange was done (the answer taken, or ours made).
    negotiated_at: Option<Instant>,
    join_ms: Option<f64>,
    last_offer_at: Instant,
    /// By measurement stream id.
    rx: Placed<RxStream>,
    /// By the serial of the client publishing the camera.
    rx_tracks: Placed<RxTrack>,
    /// What each receiving mid carries by the server's last `slots`, and since when.
    slots: HashMap<String, (String, Instant)>,
    layer_pauses: u32,
    /// Tracks the server said it paused for this client (`trackPaused`): shown as
    /// paused, not frozen.
    paused_tiles: std::collections::HashSet<String>,
    /// `trackPaused` messages that paused a track.
    tile_pauses: u32,
    /// Each second of the window, for the followed client only.
    followed: Option<Vec<FollowedSecond>>,
    switch_keyframe_ms: Vec<f64>,
    /// When the engine wants its next timeout.
    timeout: Instant,
    /// The earliest engine timer in the heap that is still live: one per client, however
    /// often the engine's timeout moves.
    rtc_timer: Option<Instant>,
    closed: Option<String>,
    engine_failed: bool,
    speaker_events: u32,
    errors: Vec<String>,
}

/// A received media packet's fields the measurement reads.
struct Media<'a> {
    /// The payload, or (from our own path) its first bytes: enough for the stamp and the
    /// VP8 descriptor and frame tag (`srtp::PREFIX`).
    payload: &'a [u8],
    /// The whole payload's length.
    len: usize,
    timestamp: u32,
    /// The extended sequence number.
    seq: u64,
    marker: bool,
    /// Its SSRC's place in our own SRTP path and what was noted there (`Opened::slot`,
    /// `Opened::note`); None from the engine.
    slot: Option<(usize, u64)>,
}

/// Who opens received media: our own SRTP path (the default, about a tenth of the engine's
/// cost per packet), or str0m's engine as for everything else (which also asks for lost
/// packets again with NACK).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RxPath {
    #[default]
    Own,
    Engine,
}

/// How far to poll a client's engine.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Until {
    /// The next received RTP packet, or the end of the output.
    Packet,
    /// The end of the output: the engine's next timeout.
    Timeout,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    Rtc,
    Audio,
    /// A camera frame: every layer whose frame is due, written together as an encoder
    /// does, with one turn of the engine for all of them.
    Camera,
}

pub struct Worker {
    poll: Poll,
    rx_path: RxPath,
    /// One socket for all this thread's clients (each its own loopback address), read
    /// many datagrams of many clients per system call; None: a socket per client.
    shared_socket: Option<UdpSocket>,
    /// Clients whose engines have output left after a batch (reused).
    undrained: Vec<u32>,
    inbox: Receiver<WorkerInput>,
    shared: Arc<Shared>,
    scenario: Scenario,
    opus: Arc<OpusLibrary>,
    clients: IdMap<u32, Client>,
    finished: Vec<ClientResult>,
    timers: BinaryHeap<Reverse<(Instant, u32, Due)>>,
    latency: LatencyHistogram,
    send_delay: LatencyHistogram,
    receive_queue: LatencyHistogram,
    /// Indexed by the second since the epoch.
    seconds: Vec<Option<(u64, u64, LatencyHistogram)>>,
    ports: Vec<u16>,
    published_second: u64,
    /// Counted here and added to `shared` once per loop turn: one shared write per turn,
    /// not one per packet on a cache line every thread writes.
    counts: Counts,
    payload: Vec<u8>,
    /// Datagrams a client's engine gave out this turn, for the shared socket.
    outgoing: SendBatch,
    server_ip: std::net::IpAddr,
    /// One moment on both clocks: the monotonic one the run measures with, and the
    /// realtime one (ns) the kernel stamps arrivals with.
    clocks: (Instant, u64),
    /// When the kernel received the datagram being handled: latency and first frames are
    /// measured to it, so a packet waiting in the socket while this thread works on others
    /// counts as the generator's delay, not the server's.
    arrival: Option<Instant>,
}

impl Worker {
    pub fn spawn(
        index: usize,
        shared: Arc<Shared>,
        scenario: Scenario,
        opus: Arc<OpusLibrary>,
        server_ip: std::net::IpAddr,
        rx_path: RxPath,
        share_socket: bool,
    ) -> std::io::Result<(WorkerHandle, std::thread::JoinHandle<WorkerResult>)> {
        let poll = Poll::new()?;
        let mut ports = Vec::new();
        let shared_socket = if share_socket {
            let mut socket = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0)))?;
            RecvBatch::stamp_arrivals(&socket)?;
            RecvBatch::tell_destinations(&socket)?;
            RecvBatch::take_whole_sends(&socket);
            // Every client's media: room for the bursts (past rmem_max with the privilege).
            crate::net::set_int_option(&socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 32 << 20).or_else(
                |_| crate::net::set_int_option(&socket, libc::SOL_SOCKET, libc::SO_RCVBUF, 32 << 20),
            )?;
            poll.registry().register(&mut socket, SHARED, Interest::READABLE)?;
            ports.push(socket.local_addr()?.port());
            Some(socket)
        } else {
            None
        };
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, inbox) = std::sync::mpsc::channel();
        let mut worker = Worker {
            poll,
            rx_path,
            shared_socket,
            undrained: Vec::new(),
            inbox,
            shared,
            scenario,
            opus,
            clients: IdMap::default(),
            finished: Vec::new(),
            timers: BinaryHeap::new(),
            latency: LatencyHistogram::default(),
            send_delay: LatencyHistogram::default(),
            receive_queue: LatencyHistogram::default(),
            seconds: Vec::new(),
            ports,
            published_second: 0,
            counts: Counts::default(),
            payload: Vec::with_capacity(1500),
            outgoing: SendBatch::default(),
            server_ip,
            clocks: (Instant::now(), realtime_ns()),
            arrival: None,
        };
        let thread =
            std::thread::Builder::new().name(format!("lt-media-{index}")).spawn(move || worker.run())?;
        Ok((WorkerHandle { tx, waker }, thread))
    }

    fn run_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, id, due))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(client) = self.clients.get_mut(&id) else { continue };
            if due != Due::Rtc && self.shared.in_window(self.shared.us(at)) {
                let late = now.saturating_duration_since(at).as_micros() as u64;
                self.counts.max_timer_late_us = self.counts.max_timer_late_us.max(late);
            }
            match due {
                Due::Rtc => {
                    if client.rtc_timer != Some(at) {
                        continue;
                    }
                    client.rtc_timer = None;
                    if client.timeout > now {
                        // The engine's timeout moved later since this timer was set.
                        client.rtc_timer = Some(client.timeout);
                        self.timers.push(Reverse((client.timeout, id, Due::Rtc)));
                        continue;
                    }
                    let rtc = &mut client.rtc;
                    if contained(&mut client.errors, || rtc.handle_input(Input::Timeout(now))).is_none() {
                        self.fail(id);
                        continue;
                    }
                }
                Due::Audio | Due::Camera => {
                    // Stamped when written, and sent then too: the engine lets new media
                    // out only once its time moves on, so it is told the time at once,
                    // not when its own timer comes round later in this pass, behind every
                    // timer due before it (the stamp would then count that wait as latency).
                    let now = Instant::now();
                    match due {
                        Due::Camera => self.send_camera(id, at, now),
                        _ => self.send_audio(id, at, now),
                    }
                    let Some(client) = self.clients.get_mut(&id) else { continue };
                    let rtc = &mut client.rtc;
                    if contained(&mut client.errors, || rtc.handle_input(Input::Timeout(now))).is_none() {
                        self.fail(id);
                        continue;
                    }
                    // The frame's packets are with the kernel once drained: the time since
                    // their stamp is the generator's part of their latency.
                    self.drain(id);
                    if self.shared.in_window(self.shared.us(now)) {
                        self.send_delay.record(now.elapsed().as_micros() as u64);
                    }
                    continue;
                }
            }
            self.drain(id);
        }
    }

    /// Poll a client's engine until it has nothing more to do now.
    fn drain(&mut self, id: u32) {
        self.drain_until(id, Until::Timeout);
    }

    /// Poll a client's engine until it says when it next needs time, or with
    /// `Until::Packet` until it gave a received RTP packet; true when it stopped there.
    /// What it gave to send leaves together at the end (one `sendmmsg`).
    fn drain_until(&mut self, id: u32, until: Until) -> bool {
        let stopped = self.poll_engine(id, until);
        if let Some(shared) = &self.shared_socket {
            // A datagram the kernel refused is lost as on a network (as `send_to` above).
            self.outgoing.flush(shared);
        }
        stopped
    }

    /// `drain_until`'s polling; the shared socket's datagrams wait in `outgoing`.
    fn poll_engine(&mut self, id: u32, until: Until) -> bool {
        loop {
            let Some(client) = self.clients.get_mut(&id) else { return false };
            let rtc = &mut client.rtc;
            let Some(polled) = contained(&mut client.errors, || rtc.poll_output()) else {
                self.fail(id);
                return false;
            };
            let output = match polled {
                Ok(o) => o,
                Err(e) => {
                    client.errors.push(format!("rtc: {e}"));
                    client.closed.get_or_insert_with(|| "media failed".into());
                    return false;
                }
            };
            match &output {
                Output::Timeout(t) => {
                    client.timeout = *t;
                    if client.rtc_timer.is_none_or(|at| *t < at) {
                        client.rtc_timer = Some(*t);
                        self.timers.push(Reverse((*t, id, Due::Rtc)));
                    }
                    return false;
                }
                Output::Transmit(t) => {
                    let _ = match (&client.socket, client.local.ip()) {
                        (Some(own), _) => own.send_to(&t.contents, t.destination).map(|_| ()),
                        (None, std::net::IpAddr::V4(from)) => {
                            self.outgoing.push(from, t.destination, &t.contents)
                        }
                        _ => Ok(()),
                    };
                }
                Output::Event(e) => {
                    self.on_event(id, e);
                    if until == Until::Packet && matches!(e, Event::RtpPacket(_)) {
                        return true;
                    }
                }
            }
        }
    }

    fn on_event(&mut self, id: u32, event: &Event) {
        let now = Instant::now();
        let Some(client) = self.clients.get_mut(&id) else { return };
        match event {
            Event::IceConnectionStateChange(
                IceConnectionState::Connected | IceConnectionState::Completed,
            ) => {
                client.ice_at.get_or_insert(now);
            }
            Event::Connected => {
                client.connected_at = Some(now);
                // Taken either way, so no client's keys stay on the thread.
                let keys = srtp::take_keys(id);
                if self.rx_path == RxPath::Own {
                    client.srtp = keys.as_ref().and_then(SrtpIn::new);
                }
                self.shared.connected.fetch_add(1, Ordering::Relaxed);
                self.shared.note_connected(id, self.shared.us(now));
                if client.audio.is_some() {
                    self.timers.push(Reverse((now, id, Due::Audio)));
                }
                if let Some(video) = client.video.as_mut().filter(|v| !v.layers.is_empty()) {
                    for layer in &mut video.layers {
                        layer.next_frame = Some(now);
                    }
                    self.timers.push(Reverse((now, id, Due::Camera)));
                }
            }
            Event::KeyframeRequest(request) => {
                if let Some(v) = client.video.as_mut().filter(|v| v.mid == request.mid) {
                    let wanted = |l: &LayerTx| request.rid.is_none_or(|rid| &*rid == l.shape.rid);
                    for layer in v.layers.iter_mut().filter(|l| wanted(l)) {
                        layer.keyframes.request();
                    }
                }
            }
            Event::RtpPacket(packet) => {
                if let Some(srtp) = client.srtp.as_mut() {
                    // From the next packet on, this stream is opened by our own path, so
                    // the engine sees none of its packets: its loss register would stay
                    // empty, yet it would wake every 33 ms to walk it and every other
                    // stream of the session (a third of the engine's time at meeting-300).
                    srtp.learn(*packet.header.ssrc, *packet.seq_no);
                    if let Some(stream) = client.rtc.direct_api().stream_rx(&packet.header.ssrc) {
                        stream.suppress_nack(true);
                    }
                }
                let media = Media {
                    payload: &packet.payload,
                    len: packet.payload.len(),
                    timestamp: packet.header.timestamp,
                    seq: *packet.seq_no,
                    marker: packet.header.marker,
                    slot: None,
                };
                self.on_media(id, media, packet.timestamp);
            }
            _ => {}
        }
    }

    /// The client's engine failed: it leaves, and the report counts a generator failure.
    fn fail(&mut self, id: u32) {
        if let Some(c) = self.clients.get_mut(&id) {
            c.engine_failed = true;
        }
        self.finish(id, true);
    }
}

/// Packets, bytes and latencies received in second `second` since the epoch.
fn second_entry(
    seconds: &mut Vec<Option<(u64, u64, LatencyHistogram)>>,
    second: u64,
) -> &mut (u64, u64, LatencyHistogram) {
    let index = second as usize;
    if index >= seconds.len() {
        seconds.resize_with(index + 1, || None);
    }
    seconds[index].get_or_insert_with(|| (0, 0, LatencyHistogram::default()))
}

/// What a worker counted since its last loop turn, for the shared totals.
#[derive(Default)]
struct Counts {
    packets_sent: u64,
    packets_received: u64,
    bytes_received: u64,
    /// Media datagrams our own SRTP path opened.
    opened_own: u64,
    max_timer_late_us: u64,
}

impl Counts {
    fn publish(&mut self, shared: &Shared) {
        if self.packets_sent > 0 {
            shared.packets_sent.fetch_add(self.packets_sent, Ordering::Relaxed);
        }
        if self.packets_received > 0 {
            shared.packets_received.fetch_add(self.packets_received, Ordering::Relaxed);
            shared.bytes_received.fetch_add(self.bytes_received, Ordering::Relaxed);
        }
        if self.opened_own > 0 {
            shared.opened_own.fetch_add(self.opened_own, Ordering::Relaxed);
        }
        if self.max_timer_late_us > 0 {
            shared.max_timer_late_us.fetch_max(self.max_timer_late_us, Ordering::Relaxed);
        }
        *self = Counts::default();
    }
}

fn realtime_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn ms_since(start: Instant, now: Instant) -> f64 {
    now.saturating_duration_since(start).as_secs_f64() * 1000.0
}

/// Since when the camera of client `owner` should arrive, as far as the subscription
/// and the slots tell: the later of the two.
fn expected_since(
    shared: &Shared,
    view: Option<&View>,
    slots: &HashMap<String, (String, Instant)>,
    owner: u32,
) -> Option<Instant> {
    let shown = view.and_then(|v| v.shown().find(|(track, _)| shared.camera_owner(track) == Some(owner)));
    let slot = slots.values().find(|(track, _)| shared.camera_owner(track) == Some(owner));
    shown.map(|(_, t)| t).max(slot.map(|(_, t)| *t))
}

/// Runs one call into a client's WebRTC engine; a panic (a str0m bug) fails only that
/// client, which the report counts as the generator's failure, not the server's.
fn contained<T>(errors: &mut Vec<String>, f: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => Some(v),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            errors.push(format!("generator's WebRTC engine panicked: {message}"));
            None
        }
    }
}

/// The negotiated send stream (of layer `rid` with simulcast) and payload type for
/// `codec` on `mid`, once negotiated.
fn tx_stream(rtc: &mut Rtc, mid: Mid, rid: Option<Rid>, codec: Codec) -> Option<(Ssrc, Pt)> {
    let pt = {
        let media = rtc.media(mid)?;
        let config = rtc.codec_config();
        media
            .remote_pts()
            .iter()
            .copied()
            .find(|pt| config.find(|p| p.pt() == *pt).is_some_and(|p| p.spec().codec == codec))?
    };
    let ssrc = rtc.direct_api().stream_tx_by_mid(mid, rid)?.ssrc();
    Some((ssrc, pt))
}
