//! The media engine: a few threads, each owning many virtual clients (a str0m `Rtc` and
//! a UDP socket each), woken by mio when a socket is readable, a timer is due, or the
//! control side has news. Sends the scenario's media and measures what arrives.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use serde_json::{Value, json};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpWrite, Ssrc};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::sync::mpsc::UnboundedSender;

use crate::media::{
    AUDIO_FRAME, DTX_INTERVAL, KeyframeSchedule, LayerShape, OpusLibrary, PacketPlan, STAMP_LEN, Stamp,
    Vp8Packetizer, find_stamp, vp8_is_keyframe_start,
};
use crate::scenario::Scenario;
use crate::signal::FromServer;
use crate::stats::{DeliveryCounter, Jitter, LatencyHistogram, window_index};

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
    pub connected: AtomicU64,
    /// The worst p99 latency (us) any worker saw in its last complete second, for the live line.
    pub live_p99_us: AtomicU64,
}

/// One sent stream: the first and last sequence numbers it sent inside the window.
pub struct StreamSlot {
    /// When the stream sent its first packet at all (microseconds since the epoch).
    pub started_us: AtomicU64,
    pub first: AtomicU32,
    pub last: AtomicU32,
    pub owner: AtomicU32,
    pub video: AtomicBool,
}

impl Shared {
    pub fn new(max_streams: usize) -> Self {
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
                    video: AtomicBool::new(false),
                })
                .collect(),
            packets_sent: AtomicU64::new(0),
            packets_received: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            live_p99_us: AtomicU64::new(0),
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

    fn in_window(&self, us: u64) -> bool {
        us >= self.window_start_us.load(Ordering::Relaxed) && us < self.window_end_us.load(Ordering::Relaxed)
    }

    /// A sender notes a packet it sent at `us` with stream sequence `seq`.
    fn note_sent(&self, stream: u32, seq: u32, us: u64) {
        let slot = &self.streams[stream as usize];
        if seq == 0 {
            slot.started_us.store(us, Ordering::Relaxed);
        }
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
    pub video: Option<LayerShape>,
    pub to_server: UnboundedSender<Value>,
    pub ws_open_at: Instant,
    /// The client may count its join time (someone was already publishing when it came).
    pub join_measurable: bool,
}

pub enum WorkerInput {
    Add(Box<ClientSetup>),
    Signal(u32, FromServer),
    Remove(u32),
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

/// What one client measured, for the report.
#[derive(Debug, Clone)]
pub struct ClientResult {
    pub serial: u32,
    pub join_ms: Option<f64>,
    pub connected: bool,
    pub left_early: bool,
    /// The generator's own WebRTC engine failed for this client.
    pub engine_failed: bool,
    /// `activeSpeaker` messages the client received.
    pub speaker_events: u32,
    /// Connected before the measurement window opened and stayed to its end.
    pub whole_window: bool,
    pub first_keyframe_ms: Vec<f64>,
    pub jitter_ms: Vec<f64>,
    /// Per received stream: (stream id, delivery counter).
    pub received: Vec<(u32, DeliveryCounter)>,
    pub close_reason: Option<String>,
    pub errors: Vec<String>,
}

pub struct WorkerResult {
    pub clients: Vec<ClientResult>,
    pub latency: LatencyHistogram,
    /// Per second since the epoch: (packets received, bytes received, latency histogram).
    pub seconds: HashMap<u64, (u64, u64, LatencyHistogram)>,
    pub ports: Vec<u16>,
}

struct AudioTx {
    mid: Mid,
    stream: u32,
    seq: u32,
    rtp_seq: u64,
    ts: u32,
    frame: usize,
    tx: Option<(Ssrc, Pt)>,
}

struct VideoTx {
    mid: Mid,
    stream: u32,
    seq: u32,
    rtp_seq: u64,
    ts: u32,
    shape: LayerShape,
    sizes: (usize, usize),
    keyframes: KeyframeSchedule,
    packetizer: Vp8Packetizer,
    tx: Option<(Ssrc, Pt)>,
}

struct RxStream {
    delivery: DeliveryCounter,
    jitter: Jitter,
    first_keyframe_ms: Option<f64>,
    subscribed_at: Instant,
}

struct Client {
    setup: ClientSetup,
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    pending: Option<SdpPendingOffer>,
    audio: Option<AudioTx>,
    video: Option<VideoTx>,
    connected_at: Option<Instant>,
    join_ms: Option<f64>,
    last_offer_at: Instant,
    rx: HashMap<u32, RxStream>,
    timeout: Instant,
    closed: Option<String>,
    engine_failed: bool,
    speaker_events: u32,
    errors: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    Rtc,
    Audio,
    Video,
}

pub struct Worker {
    poll: Poll,
    inbox: Receiver<WorkerInput>,
    shared: Arc<Shared>,
    scenario: Scenario,
    opus: Arc<OpusLibrary>,
    clients: HashMap<u32, Client>,
    finished: Vec<ClientResult>,
    timers: BinaryHeap<Reverse<(Instant, u32, Due)>>,
    latency: LatencyHistogram,
    seconds: HashMap<u64, (u64, u64, LatencyHistogram)>,
    ports: Vec<u16>,
    published_second: u64,
    payload: Vec<u8>,
    server_ip: std::net::IpAddr,
}

impl Worker {
    pub fn spawn(
        index: usize,
        shared: Arc<Shared>,
        scenario: Scenario,
        opus: Arc<OpusLibrary>,
        server_ip: std::net::IpAddr,
    ) -> std::io::Result<(WorkerHandle, std::thread::JoinHandle<WorkerResult>)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, inbox) = std::sync::mpsc::channel();
        let mut worker = Worker {
            poll,
            inbox,
            shared,
            scenario,
            opus,
            clients: HashMap::new(),
            finished: Vec::new(),
            timers: BinaryHeap::new(),
            latency: LatencyHistogram::default(),
            seconds: HashMap::new(),
            ports: Vec::new(),
            published_second: 0,

            payload: Vec::with_capacity(1500),
            server_ip,
        };
        let thread =
            std::thread::Builder::new().name(format!("lt-media-{index}")).spawn(move || worker.run())?;
        Ok((WorkerHandle { tx, waker }, thread))
    }

    fn run(&mut self) -> WorkerResult {
        let mut events = Events::with_capacity(1024);
        let mut batch = RecvBatch::new();
        loop {
            let now = Instant::now();
            let next = self.next_due().unwrap_or(now + Duration::from_millis(100));
            let wait = next.saturating_duration_since(now).min(Duration::from_millis(100));
            if let Err(e) = self.poll.poll(&mut events, Some(wait))
                && e.kind() != ErrorKind::Interrupted
            {
                eprintln!("loadtest: poll failed: {e}");
                break;
            }
            let mut stop = false;
            for event in events.iter() {
                if event.token() == WAKER {
                    stop |= self.handle_inbox();
                } else {
                    self.receive(event.token().0 as u32, &mut batch);
                }
            }
            if stop {
                break;
            }
            let now = Instant::now();
            self.run_timers(now);
            self.publish_live(now);
        }
        let ids: Vec<u32> = self.clients.keys().copied().collect();
        for id in ids {
            self.finish(id, false);
        }
        WorkerResult {
            clients: std::mem::take(&mut self.finished),
            latency: std::mem::take(&mut self.latency),
            seconds: std::mem::take(&mut self.seconds),
            ports: std::mem::take(&mut self.ports),
        }
    }

    /// Once a second, share the last complete second's p99 latency with the live line.
    fn publish_live(&mut self, now: Instant) {
        let second = self.shared.us(now) / 1_000_000;
        if second <= self.published_second {
            return;
        }
        self.published_second = second;
        if let Some(p99) = self.seconds.get(&(second - 1)).and_then(|(_, _, h)| h.percentile_ms(99.0)) {
            self.shared.live_p99_us.fetch_max((p99 * 1000.0) as u64, Ordering::Relaxed);
        }
    }

    fn next_due(&mut self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _, _))| *t)
    }

    fn handle_inbox(&mut self) -> bool {
        while let Ok(input) = self.inbox.try_recv() {
            match input {
                WorkerInput::Add(setup) => {
                    let serial = setup.serial;
                    if let Err(e) = self.add(*setup) {
                        eprintln!("loadtest: client {serial} could not start: {e}");
                    }
                }
                WorkerInput::Signal(id, message) => self.signal(id, message),
                WorkerInput::Remove(id) => self.finish(id, true),
                WorkerInput::Stop => return true,
            }
        }
        false
    }

    fn add(&mut self, setup: ClientSetup) -> std::io::Result<()> {
        let now = Instant::now();
        let mut socket = UdpSocket::bind(SocketAddr::new(self.server_ip, 0))?;
        let local = socket.local_addr()?;
        self.ports.push(local.port());
        self.poll.registry().register(&mut socket, Token(setup.serial as usize), Interest::READABLE)?;
        let mut rtc = Rtc::builder().set_rtp_mode(true).build(now);
        rtc.add_local_candidate(Candidate::host(local, "udp").map_err(std::io::Error::other)?);
        let mut api = rtc.sdp_api();
        let mut tracks = Vec::new();
        let audio = setup.audio.then(|| {
            let mid = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
            tracks.push(json!({"mid": mid.to_string(), "source": "microphone"}));
            let stream = setup.serial * 2;
            AudioTx {
                mid,
                stream,
                seq: 0,
                rtp_seq: fastrand::u64(..30_000),
                ts: fastrand::u32(..),
                frame: 0,
                tx: None,
            }
        });
        let video = setup.video.map(|shape| {
            let mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
            tracks.push(json!({"mid": mid.to_string(), "source": "camera"}));
            let interval = Duration::from_secs_f64(self.scenario.video.keyframe_interval_s);
            VideoTx {
                mid,
                stream: setup.serial * 2 + 1,
                seq: 0,
                rtp_seq: fastrand::u64(..30_000),
                ts: fastrand::u32(..),
                shape,
                sizes: shape.frame_sizes(interval),
                keyframes: KeyframeSchedule::new(&shape, interval),
                packetizer: Vp8Packetizer::default(),
                tx: None,
            }
        });
        if audio.is_none() && video.is_none() {
            api.add_channel("loadtest".into());
        }
        let Some((offer, pending)) = api.apply() else {
            return Err(std::io::Error::other("nothing to offer"));
        };
        let _ =
            setup.to_server.send(json!({"type": "offer", "sdp": offer.to_sdp_string(), "tracks": tracks}));
        for (stream, video) in
            [(audio.as_ref().map(|a| a.stream), false), (video.as_ref().map(|v| v.stream), true)]
        {
            if let Some(s) = stream {
                let slot = &self.shared.streams[s as usize];
                slot.owner.store(setup.serial, Ordering::Relaxed);
                slot.video.store(video, Ordering::Relaxed);
            }
        }
        let serial = setup.serial;
        self.clients.insert(
            serial,
            Client {
                setup,
                rtc,
                socket,
                local,
                pending: Some(pending),
                audio,
                video,
                connected_at: None,
                join_ms: None,
                last_offer_at: now,
                rx: HashMap::new(),
                timeout: now,
                closed: None,
                engine_failed: false,
                speaker_events: 0,
                errors: Vec::new(),
            },
        );
        self.drain(serial);
        Ok(())
    }

    fn signal(&mut self, id: u32, message: FromServer) {
        let Some(client) = self.clients.get_mut(&id) else { return };
        let now = Instant::now();
        let m = match message {
            FromServer::Closed(why) => {
                client.closed =
                    Some(why.map(|(c, r)| format!("{c} {r}")).unwrap_or_else(|| "socket closed".into()));
                return;
            }
            FromServer::Message(m) => m,
        };
        match m["type"].as_str() {
            Some("answer") => {
                let (Some(pending), Some(sdp)) = (client.pending.take(), m["sdp"].as_str()) else { return };
                match SdpAnswer::from_sdp_string(sdp) {
                    Ok(answer) => {
                        if let Err(e) = client.rtc.sdp_api().accept_answer(pending, answer) {
                            client.errors.push(format!("answer refused: {e}"));
                        }
                    }
                    Err(e) => client.errors.push(format!("bad answer SDP: {e}")),
                }
            }
            Some("offer") => {
                let Some(sdp) = m["sdp"].as_str() else { return };
                client.last_offer_at = now;
                match SdpOffer::from_sdp_string(sdp)
                    .map_err(|e| e.to_string())
                    .and_then(|offer| client.rtc.sdp_api().accept_offer(offer).map_err(|e| e.to_string()))
                {
                    Ok(answer) => {
                        let _ = client
                            .setup
                            .to_server
                            .send(json!({"type": "answer", "sdp": answer.to_sdp_string()}));
                    }
                    Err(e) => client.errors.push(format!("server offer refused: {e}")),
                }
            }
            Some("error") => client.errors.push(format!("{}: {}", m["code"], m["message"])),
            Some("activeSpeaker") => client.speaker_events += 1,
            _ => {}
        }
        self.drain(id);
    }

    /// Read what a client's socket holds, a batch per system call, and feed its engine.
    fn receive(&mut self, id: u32, batch: &mut RecvBatch) {
        loop {
            let Some(client) = self.clients.get_mut(&id) else { return };
            let count = match batch.receive(&client.socket) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => return,
            };
            let now = Instant::now();
            for i in 0..count {
                let Some(client) = self.clients.get_mut(&id) else { return };
                let (source, data) = batch.datagram(i);
                let Ok(receive) = Receive::new(Protocol::Udp, source, client.local, data) else { continue };
                let rtc = &mut client.rtc;
                match contained(&mut client.errors, || rtc.handle_input(Input::Receive(now, receive))) {
                    Some(Ok(())) => self.drain(id),
                    Some(Err(_)) => {}
                    None => return self.fail(id),
                }
            }
            // A short batch means the socket was empty when read; new datagrams raise a new event.
            if count < RecvBatch::SIZE {
                return;
            }
        }
    }

    fn run_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, id, due))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(client) = self.clients.get_mut(&id) else { continue };
            match due {
                Due::Rtc => {
                    if client.timeout != at {
                        continue;
                    }
                    let rtc = &mut client.rtc;
                    if contained(&mut client.errors, || rtc.handle_input(Input::Timeout(now))).is_none() {
                        self.fail(id);
                        continue;
                    }
                }
                Due::Audio => self.send_audio(id, at, now),
                Due::Video => self.send_video(id, at, now),
            }
            self.drain(id);
        }
    }

    fn drain(&mut self, id: u32) {
        loop {
            let Some(client) = self.clients.get_mut(&id) else { return };
            let rtc = &mut client.rtc;
            let Some(polled) = contained(&mut client.errors, || rtc.poll_output()) else {
                return self.fail(id);
            };
            let output = match polled {
                Ok(o) => o,
                Err(e) => {
                    client.errors.push(format!("rtc: {e}"));
                    client.closed.get_or_insert_with(|| "media failed".into());
                    return;
                }
            };
            match output {
                Output::Timeout(t) => {
                    if t != client.timeout {
                        client.timeout = t;
                        self.timers.push(Reverse((t, id, Due::Rtc)));
                    }
                    return;
                }
                Output::Transmit(t) => {
                    let _ = client.socket.send_to(&t.contents, t.destination);
                }
                Output::Event(e) => self.on_event(id, e),
            }
        }
    }

    fn on_event(&mut self, id: u32, event: Event) {
        let now = Instant::now();
        let Some(client) = self.clients.get_mut(&id) else { return };
        match event {
            Event::Connected => {
                client.connected_at = Some(now);
                self.shared.connected.fetch_add(1, Ordering::Relaxed);
                let (audio, video) = (client.audio.is_some(), client.video.is_some());
                if audio {
                    self.timers.push(Reverse((now, id, Due::Audio)));
                }
                if video {
                    self.timers.push(Reverse((now, id, Due::Video)));
                }
            }
            Event::KeyframeRequest(_) => {
                if let Some(v) = client.video.as_mut() {
                    v.keyframes.request();
                }
            }
            Event::RtpPacket(packet) => {
                let Some(mid) = client.rtc.direct_api().stream_rx(&packet.header.ssrc).map(|s| s.mid())
                else {
                    return;
                };
                let video = client.rtc.media(mid).is_some_and(|m| m.kind() == MediaKind::Video);
                let Some(stamp) = find_stamp(&packet.payload, video) else { return };
                let received_us = self.shared.us(packet.timestamp);
                self.shared.packets_received.fetch_add(1, Ordering::Relaxed);
                self.shared.bytes_received.fetch_add(packet.payload.len() as u64, Ordering::Relaxed);
                if client.join_ms.is_none() && client.setup.join_measurable {
                    client.join_ms = Some(now.duration_since(client.setup.ws_open_at).as_secs_f64() * 1000.0);
                }
                let latency_us = received_us.saturating_sub(stamp.sent_us);
                let second = received_us / 1_000_000;
                let entry = self.seconds.entry(second).or_insert_with(|| (0, 0, LatencyHistogram::default()));
                entry.0 += 1;
                entry.1 += packet.payload.len() as u64;
                entry.2.record(latency_us);
                let subscribed_at = client.last_offer_at;
                let rx = client.rx.entry(stamp.stream).or_insert_with(|| RxStream {
                    delivery: DeliveryCounter::default(),
                    jitter: Jitter::default(),
                    first_keyframe_ms: None,
                    subscribed_at,
                });
                rx.jitter.record(stamp.sent_us, received_us);
                if video && rx.first_keyframe_ms.is_none() && vp8_is_keyframe_start(&packet.payload) {
                    rx.first_keyframe_ms = Some(now.duration_since(rx.subscribed_at).as_secs_f64() * 1000.0);
                }
                if self.shared.in_window(stamp.sent_us) {
                    self.latency.record(latency_us);
                    let first = self.shared.streams[stamp.stream as usize].first.load(Ordering::Relaxed);
                    if first != UNSET
                        && let Some(index) = window_index(stamp.seq, first)
                    {
                        rx.delivery.record(index);
                    }
                }
            }
            _ => {}
        }
    }

    /// The speaker rotation: which audio publishers talk now.
    fn talking(&self, slot: usize, now: Instant) -> bool {
        let plan = &self.scenario.audio;
        if plan.speakers == 0 || plan.publishers == 0 {
            return false;
        }
        let turn = (now.duration_since(self.shared.epoch).as_secs_f64() / plan.rotate_s) as usize;
        let first = (turn * plan.speakers) % plan.publishers;
        (slot + plan.publishers - first) % plan.publishers < plan.speakers
    }

    fn send_audio(&mut self, id: u32, due: Instant, now: Instant) {
        let slot = self.clients.get(&id).map(|c| c.setup.slot);
        let talking = slot.is_some_and(|s| self.talking(s, now));
        let Some(client) = self.clients.get_mut(&id) else { return };
        let Some(audio) = client.audio.as_mut() else { return };
        if audio.tx.is_none() {
            audio.tx = tx_stream(&mut client.rtc, audio.mid, Codec::Opus);
        }
        let next = if talking { AUDIO_FRAME } else { DTX_INTERVAL };
        self.timers.push(Reverse((due + next, id, Due::Audio)));
        let Some((ssrc, pt)) = audio.tx else { return };
        let frame = if talking {
            audio.frame = (audio.frame + 1) % self.opus.voice.len();
            &self.opus.voice[audio.frame]
        } else {
            &self.opus.silence
        };
        let sent_us = self.shared.us(now);
        let stamp = Stamp { stream: audio.stream, seq: audio.seq, sent_us };
        self.payload.clear();
        self.payload.resize(STAMP_LEN, 0);
        stamp.write(&mut self.payload);
        self.payload.extend_from_slice(&frame.bytes);
        let ext = ExtensionValues {
            audio_level: Some(-(frame.level.min(127) as i8)),
            voice_activity: Some(talking),
            ..Default::default()
        };
        let samples = (next.as_millis() as u32) * 48;
        let mut api = client.rtc.direct_api();
        if let Some(stream) = api.stream_tx(&ssrc) {
            stream.write_rtp(
                RtpWrite::new(pt, audio.rtp_seq.into(), audio.ts, now, self.payload.as_slice())
                    .ext_vals(ext)
                    .marker(false),
            );
            self.shared.note_sent(audio.stream, audio.seq, sent_us);
            self.shared.packets_sent.fetch_add(1, Ordering::Relaxed);
            audio.seq += 1;
            audio.rtp_seq += 1;
        }
        audio.ts = audio.ts.wrapping_add(samples);
    }

    fn send_video(&mut self, id: u32, due: Instant, now: Instant) {
        let Some(client) = self.clients.get_mut(&id) else { return };
        let Some(video) = client.video.as_mut() else { return };
        if video.tx.is_none() {
            video.tx = tx_stream(&mut client.rtc, video.mid, Codec::Vp8);
        }
        let interval = video.shape.frame_interval();
        self.timers.push(Reverse((due + interval, id, Due::Video)));
        let Some((ssrc, pt)) = video.tx else { return };
        let keyframe = video.keyframes.next_is_keyframe();
        video.packetizer.next_frame(keyframe);
        let size = if keyframe { video.sizes.1 } else { video.sizes.0 };
        let plans: Vec<PacketPlan> = Vp8Packetizer::plan(size).collect();
        let sent_us = self.shared.us(now);
        let mut api = client.rtc.direct_api();
        let Some(stream) = api.stream_tx(&ssrc) else { return };
        for plan in plans {
            let stamp = Stamp { stream: video.stream, seq: video.seq, sent_us };
            video.packetizer.write(plan, keyframe, stamp, &video.shape, &mut self.payload);
            stream.write_rtp(
                RtpWrite::new(pt, video.rtp_seq.into(), video.ts, now, self.payload.as_slice())
                    .marker(plan.last)
                    .nackable(true),
            );
            self.shared.note_sent(video.stream, video.seq, sent_us);
            self.shared.packets_sent.fetch_add(1, Ordering::Relaxed);
            video.seq += 1;
            video.rtp_seq += 1;
        }
        video.ts = video.ts.wrapping_add(90_000 / video.shape.fps);
    }

    /// The client's engine failed: it leaves, and the report counts a generator failure.
    fn fail(&mut self, id: u32) {
        if let Some(c) = self.clients.get_mut(&id) {
            c.engine_failed = true;
        }
        self.finish(id, true);
    }

    /// End a client: leave the room if asked, and keep what it measured.
    fn finish(&mut self, id: u32, leaving: bool) {
        let Some(mut client) = self.clients.remove(&id) else { return };
        if leaving {
            let _ = client.setup.to_server.send(json!({"type": "leave"}));
        }
        let _ = self.poll.registry().deregister(&mut client.socket);
        if client.connected_at.is_some() {
            self.shared.connected.fetch_sub(1, Ordering::Relaxed);
        }
        self.finished.push(ClientResult {
            serial: client.setup.serial,
            join_ms: client.join_ms,
            connected: client.connected_at.is_some(),
            left_early: leaving,
            engine_failed: client.engine_failed,
            speaker_events: client.speaker_events,
            whole_window: !leaving
                && client.connected_at.is_some_and(|t| self.shared.us(t) <= self.shared.window_start_us()),
            first_keyframe_ms: client.rx.values().filter_map(|r| r.first_keyframe_ms).collect(),
            jitter_ms: client.rx.values().map(|r| r.jitter.ms()).collect(),
            received: client.rx.into_iter().map(|(s, r)| (s, r.delivery)).collect(),
            close_reason: client.closed,
            errors: client.errors,
        });
    }
}

/// Buffers for receiving many datagrams with one `recvmmsg` call, made once per media
/// thread (the headers point into the buffers, so it stays on its thread).
struct RecvBatch {
    buffers: Vec<[u8; 2048]>,
    addrs: Vec<libc::sockaddr_storage>,
    // Read by the kernel through the headers' pointers.
    _iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

impl RecvBatch {
    const SIZE: usize = 32;

    fn new() -> Self {
        // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
        let empty: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut buffers = vec![[0u8; 2048]; Self::SIZE];
        let mut addrs = vec![empty; Self::SIZE];
        let mut iovecs: Vec<libc::iovec> = buffers
            .iter_mut()
            .map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() })
            .collect();
        // SAFETY: zeroed mmsghdr is valid; the pointers set below point into heap storage
        // owned by this struct, which never reallocates.
        let mut headers: Vec<libc::mmsghdr> =
            (0..Self::SIZE).map(|_| unsafe { std::mem::zeroed() }).collect();
        for (i, h) in headers.iter_mut().enumerate() {
            h.msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_iov = &mut iovecs[i];
            h.msg_hdr.msg_iovlen = 1;
        }
        Self { buffers, addrs, _iovecs: iovecs, headers }
    }

    /// Receive up to SIZE datagrams without blocking; Err(WouldBlock) when there are none.
    fn receive(&mut self, socket: &UdpSocket) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        for h in &mut self.headers {
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_len = 0;
        }
        // SAFETY: headers hold SIZE valid entries whose buffers outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                Self::SIZE as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// The i-th datagram of the last batch and where it came from.
    fn datagram(&self, i: usize) -> (SocketAddr, &[u8]) {
        let addr = &self.addrs[i];
        let source = match addr.ss_family as libc::c_int {
            libc::AF_INET6 => {
                // SAFETY: the family says this storage holds a sockaddr_in6.
                let a = unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
                SocketAddr::from((a.sin6_addr.s6_addr, u16::from_be(a.sin6_port)))
            }
            _ => {
                // SAFETY: otherwise it is the sockaddr_in of our IPv4 socket.
                let a = unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
                SocketAddr::from((a.sin_addr.s_addr.to_ne_bytes(), u16::from_be(a.sin_port)))
            }
        };
        (source, &self.buffers[i][..self.headers[i].msg_len as usize])
    }
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

/// The negotiated send stream and payload type for `codec` on `mid`, once negotiated.
fn tx_stream(rtc: &mut Rtc, mid: Mid, codec: Codec) -> Option<(Ssrc, Pt)> {
    let pt = {
        let media = rtc.media(mid)?;
        let config = rtc.codec_config();
        media
            .remote_pts()
            .iter()
            .copied()
            .find(|pt| config.find(|p| p.pt() == *pt).is_some_and(|p| p.spec().codec == codec))?
    };
    let ssrc = rtc.direct_api().stream_tx_by_mid(mid, None)?.ssrc();
    Some((ssrc, pt))
}
