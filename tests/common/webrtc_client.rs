//! A meeting participant built on an independent WebRTC stack, the `webrtc` crate
//! (webrtc-rs 0.21, on the sans-IO `rtc` core). It joins a room over the signaling
//! WebSocket, publishes one Opus and one video track (VP8, or H.264 only when asked) as
//! sendonly transceivers, answers the server's offers, trickles its candidates and
//! records every RTP packet and every signaling message it receives, so a test can check
//! that it got exactly the bytes the others sent, and what the server told it.
//!
//! Payloads are synthetic but recognisable: [`payload`] builds the bytes of packet
//! `counter` of one sender's track, and [`parse_marker`] reads the sender and counter
//! back, so a receiver can rebuild the expected payload and compare it byte for byte.
//!
//! A test can also end a client piecemeal to exercise the server's session lifecycle:
//! [`Client::disconnect_media`] silences the peer connection but keeps the socket,
//! [`Client::send_leave`] says goodbye, [`Client::drop_signaling`] drops the socket
//! without a close frame, and [`Client::wait_closed`] reports the server's close frame.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use huiyi::Running;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8};
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::media_stream::{MediaStreamTrack, Track};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
    register_default_interceptors,
};
use webrtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit, RtpSender};

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long one signaling step (joined, the answer to our offer) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
pub const AUDIO_INTERVAL: Duration = Duration::from_millis(20);
pub const VIDEO_INTERVAL: Duration = Duration::from_millis(33);
/// Every this many video packets is a keyframe (packet 0 is one).
pub const KEYFRAME_EVERY: u32 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Audio,
    Video,
}

impl Kind {
    pub const BOTH: [Kind; 2] = [Kind::Audio, Kind::Video];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Audio => "audio",
            Kind::Video => "video",
        }
    }

    fn tag(self) -> u8 {
        match self {
            Kind::Audio => b'a',
            Kind::Video => b'v',
        }
    }
}

/// The video codec a client offers and sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VideoCodec {
    /// webrtc-rs's default codecs are offered; VP8 is sent.
    #[default]
    Vp8,
    /// H.264 constrained baseline, packetization-mode 1 ([`H264_FMTP`]) is the only video
    /// codec offered, at [`H264_PAYLOAD_TYPE`].
    H264,
}

/// The fmtp of the one H.264 format an H.264 client offers.
pub const H264_FMTP: &str = "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";
pub const H264_PAYLOAD_TYPE: u8 = 102;
/// A single NAL unit with nal_ref_idc 3 and type 7 (SPS): a keyframe to the SFU.
const H264_KEYFRAME_PREFIX: [u8; 1] = [0x67];
/// A single NAL unit with nal_ref_idc 2 and type 1 (non-IDR slice).
const H264_DELTA_PREFIX: [u8; 1] = [0x41];

impl VideoCodec {
    pub fn mime(self) -> &'static str {
        match self {
            VideoCodec::Vp8 => MIME_TYPE_VP8,
            VideoCodec::H264 => MIME_TYPE_H264,
        }
    }

    /// Bytes before the marker in a video payload: the VP8 payload descriptor and frame
    /// header, or the H.264 NAL header.
    fn prefix(self, keyframe: bool) -> &'static [u8] {
        match (self, keyframe) {
            (VideoCodec::Vp8, true) => &VP8_KEYFRAME_PREFIX,
            (VideoCodec::Vp8, false) => &VP8_DELTA_PREFIX,
            (VideoCodec::H264, true) => &H264_KEYFRAME_PREFIX,
            (VideoCodec::H264, false) => &H264_DELTA_PREFIX,
        }
    }

    /// Does this payload (as [`payload`] makes them) start a keyframe?
    pub fn is_keyframe(self, payload: &[u8]) -> bool {
        match self {
            VideoCodec::Vp8 => vp8_is_keyframe(payload),
            VideoCodec::H264 => payload.first().is_some_and(|b| matches!(b & 0x1f, 5 | 7)),
        }
    }
}

/// Where the marker starts: after the codec prefix for video.
fn marker_offset(codec: VideoCodec, kind: Kind) -> usize {
    match kind {
        Kind::Audio => 0,
        Kind::Video => codec.prefix(false).len(),
    }
}

/// VP8 payload descriptor 0x10 (S=1, PID=0), then a frame tag with P=0 (keyframe)
/// and the keyframe start code 9d 01 2a.
const VP8_KEYFRAME_PREFIX: [u8; 5] = [0x10, 0x00, 0x9d, 0x01, 0x2a];
/// The same descriptor, then a frame tag with P=1 (interframe).
const VP8_DELTA_PREFIX: [u8; 5] = [0x10, 0x01, 0x00, 0x00, 0x00];
const MARKER_MAGIC: [u8; 2] = *b"HY";

pub fn is_keyframe_counter(counter: u32) -> bool {
    counter.is_multiple_of(KEYFRAME_EVERY)
}

/// The payload of packet `counter` on `sender`'s track of `kind`: codec prefix (video,
/// in `codec`), then the marker `HY <kind> <sender> <counter:u32 BE>`, then filler derived
/// from all three, of a length that varies with the counter.
pub fn payload(codec: VideoCodec, kind: Kind, sender: u8, counter: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(1200);
    if kind == Kind::Video {
        p.extend_from_slice(codec.prefix(is_keyframe_counter(counter)));
    }
    p.extend_from_slice(&MARKER_MAGIC);
    p.push(kind.tag());
    p.push(sender);
    p.extend_from_slice(&counter.to_be_bytes());
    let filler = match kind {
        Kind::Audio => 40 + counter % 80,
        Kind::Video => 300 + counter.wrapping_mul(37) % 800,
    };
    let seed = counter.wrapping_mul(2_654_435_761) ^ u32::from(sender).wrapping_mul(0x9e37_79b9);
    p.extend((0..filler).map(|i| (seed.rotate_left(i % 32) ^ i.wrapping_mul(31)) as u8));
    p
}

/// The sender index and counter carried by a payload made by [`payload`].
pub fn parse_marker(codec: VideoCodec, kind: Kind, payload: &[u8]) -> Option<(u8, u32)> {
    let at = marker_offset(codec, kind);
    let m = payload.get(at..at + 8)?;
    if m[..2] != MARKER_MAGIC || m[2] != kind.tag() {
        return None;
    }
    Some((m[3], u32::from_be_bytes([m[4], m[5], m[6], m[7]])))
}

/// Does this VP8 payload start a keyframe (RFC 7741: descriptor S=1 and PID=0, then the
/// frame tag's P bit 0)? The descriptor's extensions (picture id, TL0PICIDX, TID/KEYIDX)
/// are skipped.
pub fn vp8_is_keyframe(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else { return false };
    if first & 0x10 == 0 || first & 0x07 != 0 {
        return false;
    }
    let mut at = 1;
    if first & 0x80 != 0 {
        let Some(&ext) = payload.get(1) else { return false };
        at = 2;
        if ext & 0x80 != 0 {
            let Some(&pid) = payload.get(at) else { return false };
            at += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            at += 1;
        }
        if ext & 0x30 != 0 {
            at += 1;
        }
    }
    payload.get(at).is_some_and(|tag| tag & 0x01 == 0)
}

#[derive(Debug, Clone)]
pub struct ReceivedPacket {
    pub at: Instant,
    pub ssrc: u32,
    pub seq: u16,
    pub timestamp: u32,
    pub payload_type: u8,
    pub payload: Bytes,
}

/// A track the server sends us, as `on_track` announced it.
#[derive(Debug, Clone)]
pub struct RemoteTrack {
    /// The msid stream id: the publishing participant's id.
    pub participant_id: String,
    /// The msid track id: the server's track id.
    pub track_id: String,
    pub kind: Option<Kind>,
    pub packets: Vec<ReceivedPacket>,
    pub ended: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ParticipantEntry {
    pub identity: String,
    /// Track id to kind, from `joined`, `participantJoined` and `trackPublished`.
    pub tracks: HashMap<String, String>,
    pub left: Option<String>,
}

/// What a receiver verified about one sender's track of one kind.
#[derive(Debug, Default)]
pub struct Verified {
    /// Track ids on which this sender's media of this kind arrived.
    pub track_ids: Vec<String>,
    /// Packets considered (inside the time window).
    pub packets: usize,
    /// Distinct counters whose payload matched, byte for byte, what the sender sent.
    pub matching: usize,
    /// Packets whose bytes are not something this sender sent on this track.
    pub bad: Vec<String>,
    /// Whether the first packet received on the track (not windowed) started a keyframe.
    pub first_is_keyframe: Option<bool>,
}

#[derive(Default)]
struct Shared {
    label: String,
    participants: Mutex<HashMap<String, ParticipantEntry>>,
    remote: Mutex<Vec<RemoteTrack>>,
    /// Our own published tracks from the server's answer: kind to track id.
    published: Mutex<HashMap<String, String>>,
    /// Problems: server `error` messages, failed negotiation steps, write errors.
    errors: Mutex<Vec<String>>,
    states: Mutex<Vec<RTCPeerConnectionState>>,
    answers: AtomicU32,
    offers_answered: AtomicU32,
    candidates_sent: AtomicU32,
    closed: Mutex<Option<String>>,
    /// The server's close frame, if one came.
    close_frame: Mutex<Option<CloseFrameInfo>>,
    /// Every message the server sent after `joined`, as it came.
    messages: Mutex<Vec<ServerMessage>>,
}

/// A close frame the server sent on the signaling socket.
#[derive(Debug, Clone)]
pub struct CloseFrameInfo {
    pub at: Instant,
    /// None for a close frame without a status code.
    pub code: Option<u16>,
    pub reason: String,
}

/// One JSON message from the server, with when it arrived.
#[derive(Debug, Clone)]
pub struct ServerMessage {
    pub at: Instant,
    pub json: Value,
}

impl ServerMessage {
    pub fn kind(&self) -> &str {
        self.json["type"].as_str().unwrap_or_default()
    }
}

impl Shared {
    fn error(&self, message: String) {
        eprintln!("[{}] {message}", self.label);
        self.errors.lock().unwrap().push(message);
    }

    fn add_participant(&self, p: &Value) {
        let Some(id) = p["id"].as_str() else { return };
        let mut participants = self.participants.lock().unwrap();
        let entry = participants.entry(id.to_string()).or_default();
        entry.identity = p["identity"].as_str().unwrap_or_default().to_string();
        for t in p["tracks"].as_array().into_iter().flatten() {
            if let (Some(tid), Some(kind)) = (t["id"].as_str(), t["kind"].as_str()) {
                entry.tracks.insert(tid.to_string(), kind.to_string());
            }
        }
    }
}

struct Handler {
    shared: Arc<Shared>,
    out: mpsc::UnboundedSender<String>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(init) => {
                let message =
                    json!({"type": "candidate", "candidate": init.candidate, "sdpMid": init.sdp_mid});
                if self.out.send(message.to_string()).is_ok() {
                    self.shared.candidates_sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => self.shared.error(format!("local candidate not serializable: {e}")),
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.shared.states.lock().unwrap().push(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let participant_id = track.stream_id().await;
        let track_id = track.track_id().await;
        let kind = match track.kind().await {
            RtpCodecKind::Audio => Some(Kind::Audio),
            RtpCodecKind::Video => Some(Kind::Video),
            _ => None,
        };
        let index = {
            let mut remote = self.shared.remote.lock().unwrap();
            remote.push(RemoteTrack { participant_id, track_id, kind, packets: Vec::new(), ended: false });
            remote.len() - 1
        };
        // This runs on the connection's driver: read the track on a task of its own.
        let shared = self.shared.clone();
        tokio::spawn(async move {
            while let Some(event) = track.poll().await {
                match event {
                    TrackRemoteEvent::OnRtpPacket(p) => {
                        let packet = ReceivedPacket {
                            at: Instant::now(),
                            ssrc: p.header.ssrc,
                            seq: p.header.sequence_number,
                            timestamp: p.header.timestamp,
                            payload_type: p.header.payload_type,
                            payload: p.payload,
                        };
                        shared.remote.lock().unwrap()[index].packets.push(packet);
                    }
                    TrackRemoteEvent::OnEnded => break,
                    _ => {}
                }
            }
            shared.remote.lock().unwrap()[index].ended = true;
        });
    }
}

/// One local track we publish, and what we sent on it.
struct LocalTrack {
    kind: Kind,
    track: Arc<TrackLocalStaticRTP>,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
    sent: Arc<AtomicU32>,
}

/// The codec a sender negotiated, as its parameters say.
#[derive(Debug, Clone)]
pub struct NegotiatedCodec {
    pub kind: Kind,
    pub payload_type: u8,
    pub mime_type: String,
    pub fmtp: String,
}

pub struct Client {
    pub identity: String,
    /// Put in every payload this client sends.
    pub index: u8,
    pub participant_id: String,
    pub pc: Arc<dyn PeerConnection>,
    /// The video codec this client offers and sends.
    pub video: VideoCodec,
    /// What the senders use, known once [`Client::start_media`] ran.
    pub negotiated: Vec<NegotiatedCodec>,
    shared: Arc<Shared>,
    out: mpsc::UnboundedSender<String>,
    local: Vec<LocalTrack>,
    stop_media: Arc<AtomicBool>,
    media_tasks: Vec<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Client {
    /// Connect to the server's signaling, join `room` as `identity`, publish audio and
    /// VP8 video as sendonly transceivers, and return once the server answered our offer.
    pub async fn join(server: &Running, room: &str, identity: &str, index: u8) -> anyhow::Result<Client> {
        Self::join_with_video(server, room, identity, index, VideoCodec::Vp8).await
    }

    /// [`Client::join`], offering and sending `video` as the video codec.
    pub async fn join_with_video(
        server: &Running,
        room: &str,
        identity: &str,
        index: u8,
        video: VideoCodec,
    ) -> anyhow::Result<Client> {
        let label = format!("{identity}#{index}");
        let (ws, _) = tokio_tungstenite::connect_async(super::ws_url(server))
            .await
            .with_context(|| format!("{label}: WebSocket connect"))?;
        let (mut ws_tx, mut ws_rx) = ws.split();
        let join = json!({"type": "join", "token": super::token(room, identity)});
        ws_tx.send(Message::text(join.to_string())).await.context("sending join")?;

        let joined = tokio::time::timeout(STEP_TIMEOUT, next_json(&mut ws_rx))
            .await
            .map_err(|_| anyhow!("{label}: no `joined` within {STEP_TIMEOUT:?}"))??;
        if joined["type"] != "joined" {
            bail!("{label}: expected `joined` first, got {joined}");
        }
        let participant_id = joined["participant"]["id"]
            .as_str()
            .ok_or_else(|| anyhow!("{label}: `joined` without participant.id: {joined}"))?
            .to_string();
        let shared = Arc::new(Shared { label: label.clone(), ..Default::default() });
        for p in joined["participants"].as_array().into_iter().flatten() {
            shared.add_participant(p);
        }

        let (out, out_rx) = mpsc::unbounded_channel::<String>();
        let pc = build_peer_connection(shared.clone(), out.clone(), video).await?;

        let mut local = Vec::new();
        for kind in Kind::BOTH {
            local.push(add_sendonly_track(&pc, kind, identity, video).await?);
        }

        // Send the offer before applying it: gathering starts in set_local_description,
        // so every trickled candidate follows the offer on the socket.
        let offer = pc.create_offer(None).await.context("create_offer")?;
        let tracks = sources_by_mid(&offer.sdp);
        if tracks.len() != 2 {
            bail!("{label}: our offer should have an audio and a video m-line:\n{}", offer.sdp);
        }
        let message = json!({"type": "offer", "sdp": offer.sdp, "tracks": tracks});
        out.send(message.to_string()).expect("writer not started yet, channel open");
        pc.set_local_description(offer).await.context("set_local_description(offer)")?;

        let writer = tokio::spawn(write_loop(ws_tx, out_rx));
        let reader = tokio::spawn(signaling_loop(ws_rx, pc.clone(), shared.clone(), out.clone()));

        let client = Client {
            identity: identity.to_string(),
            index,
            participant_id,
            pc,
            video,
            negotiated: Vec::new(),
            shared,
            out,
            local,
            stop_media: Arc::new(AtomicBool::new(false)),
            media_tasks: Vec::new(),
            tasks: vec![writer, reader],
        };
        // An error may come before the answer without ending the negotiation (a track over
        // the publication limit), so wait for the answer itself.
        let answered = wait_until(STEP_TIMEOUT, || client.shared.answers.load(Ordering::SeqCst) > 0).await;
        if !answered {
            bail!(
                "{label}: the server did not answer our offer within {STEP_TIMEOUT:?}; errors {:?}",
                client.errors()
            );
        }
        Ok(client)
    }

    /// Publish audio and VP8 video over WHIP (RFC 9725) instead of signaling: `POST` the
    /// offer to `/whip/<room>` with `token`, apply the answer. Returns the client (its
    /// `participant_id` is the session id in the `Location`) and the `Location`.
    pub async fn publish_whip(
        server: SocketAddr,
        room: &str,
        identity: &str,
        index: u8,
        token: &str,
    ) -> anyhow::Result<(Client, String)> {
        let label = format!("{identity}#{index} (WHIP)");
        Self::over_http(server, &format!("/whip/{room}"), identity, index, token, label, true).await
    }

    /// Watch a room over WHEP: offer receive-only audio and video, `POST` it to
    /// `/whep/<room>` with `token`, apply the answer. Returns the client and the `Location`;
    /// `Err` carries the status and body of a refusal.
    pub async fn play_whep(
        server: SocketAddr,
        room: &str,
        identity: &str,
        index: u8,
        token: &str,
    ) -> anyhow::Result<(Client, String)> {
        let label = format!("{identity}#{index} (WHEP)");
        Self::over_http(server, &format!("/whep/{room}"), identity, index, token, label, false).await
    }

    /// One WHIP (`publish`) or WHEP session: the offer `POST`ed to `path`, the answer applied.
    async fn over_http(
        server: SocketAddr,
        path: &str,
        identity: &str,
        index: u8,
        token: &str,
        label: String,
        publish: bool,
    ) -> anyhow::Result<(Client, String)> {
        let shared = Arc::new(Shared { label: label.clone(), ..Default::default() });
        // Candidates the engine trickles go nowhere: the server is ICE-lite and learns our
        // address from our checks.
        let (out, _dropped) = mpsc::unbounded_channel::<String>();
        let video = VideoCodec::Vp8;
        let pc = build_peer_connection(shared.clone(), out.clone(), video).await?;
        let mut local = Vec::new();
        for kind in Kind::BOTH {
            if publish {
                local.push(add_sendonly_track(&pc, kind, identity, video).await?);
            } else {
                let codec_kind = if kind == Kind::Audio { RtpCodecKind::Audio } else { RtpCodecKind::Video };
                let init = RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    streams: vec![],
                    send_encodings: vec![],
                };
                pc.add_transceiver_from_kind(codec_kind, Some(init))
                    .await
                    .context("a receive-only transceiver")?;
            }
        }
        let offer = pc.create_offer(None).await.context("create_offer")?;
        let sdp = offer.sdp.clone();
        pc.set_local_description(offer).await.context("set_local_description(offer)")?;
        let bearer = format!("Bearer {token}");
        let headers = [("Authorization", bearer.as_str()), ("Content-Type", "application/sdp")];
        let (mut status, mut response_headers, mut answer) =
            super::http_exchange(server, "POST", path, &headers, sdp.as_bytes()).await;
        let mut moved_to = None;
        if status == 307 {
            // An origin sends players on to an edge. As browsers do on a redirect to
            // another host, the Authorization header stays behind: the token travels in
            // the new URL's query.
            let to = super::header(&response_headers, "location")
                .ok_or_else(|| anyhow!("{label}: 307 without a Location"))?
                .to_string();
            let rest = to.strip_prefix("http://").ok_or_else(|| anyhow!("{label}: redirected to {to}"))?;
            let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let edge: SocketAddr = host.parse().context("the edge's address")?;
            let headers = [("Content-Type", "application/sdp")];
            (status, response_headers, answer) =
                super::http_exchange(edge, "POST", path, &headers, sdp.as_bytes()).await;
            moved_to = Some(edge);
        }
        if status != 201 {
            bail!("{label}: POST {path} answered {status}: {answer}");
        }
        let mut location = super::header(&response_headers, "location")
            .ok_or_else(|| anyhow!("{label}: 201 without a Location"))?
            .to_string();
        if let Some(edge) = moved_to {
            // The session lives on the edge: its Location is the edge's.
            location = format!("http://{edge}{location}");
        }
        let participant_id = location.rsplit('/').next().unwrap_or_default().to_string();
        let answer = RTCSessionDescription::answer(answer).context("the answer")?;
        pc.set_remote_description(answer).await.context("set_remote_description(answer)")?;
        shared.answers.fetch_add(1, Ordering::SeqCst);
        let client = Client {
            identity: identity.to_string(),
            index,
            participant_id,
            pc,
            video,
            negotiated: Vec::new(),
            shared,
            out,
            local,
            stop_media: Arc::new(AtomicBool::new(false)),
            media_tasks: Vec::new(),
            tasks: Vec::new(),
        };
        Ok((client, location))
    }

    pub fn label(&self) -> &str {
        &self.shared.label
    }

    /// Wait for the peer connection (ICE + DTLS) to reach `connected`.
    pub async fn wait_connected(&self, timeout: Duration) -> anyhow::Result<()> {
        let connected =
            wait_until(timeout, || self.states().contains(&RTCPeerConnectionState::Connected)).await;
        if !connected {
            bail!(
                "{}: peer connection not connected after {timeout:?}; states {:?}, candidates sent {}, errors {:?}",
                self.label(),
                self.states(),
                self.shared.candidates_sent.load(Ordering::Relaxed),
                self.errors()
            );
        }
        Ok(())
    }

    pub fn states(&self) -> Vec<RTCPeerConnectionState> {
        self.shared.states.lock().unwrap().clone()
    }

    /// Server `error` messages and failures of this client's own negotiation steps.
    pub fn errors(&self) -> Vec<String> {
        self.shared.errors.lock().unwrap().clone()
    }

    /// Server offers this client answered.
    pub fn offers_answered(&self) -> u32 {
        self.shared.offers_answered.load(Ordering::SeqCst)
    }

    /// Why the signaling socket closed, if it did.
    pub fn closed(&self) -> Option<String> {
        self.shared.closed.lock().unwrap().clone()
    }

    /// The server's close frame, if one came.
    pub fn close_frame(&self) -> Option<CloseFrameInfo> {
        self.shared.close_frame.lock().unwrap().clone()
    }

    /// Wait up to `timeout` for the signaling socket to end; answers the close frame, if
    /// the server sent one (`Err` with what happened otherwise).
    pub async fn wait_closed(&self, timeout: Duration) -> anyhow::Result<CloseFrameInfo> {
        if !wait_until(timeout, || self.closed().is_some()).await {
            bail!("{}: signaling socket still open after {timeout:?}", self.label());
        }
        self.close_frame().ok_or_else(|| {
            anyhow!("{}: socket ended without a close frame: {:?}", self.label(), self.closed())
        })
    }

    /// Every message the server sent after `joined`, in order.
    pub fn messages(&self) -> Vec<ServerMessage> {
        self.shared.messages.lock().unwrap().clone()
    }

    /// The server's messages of one `type`, in order.
    pub fn messages_of_type(&self, kind: &str) -> Vec<ServerMessage> {
        self.shared.messages.lock().unwrap().iter().filter(|m| m.kind() == kind).cloned().collect()
    }

    /// Send `{"type":"leave"}`; the server should close the socket with 1000.
    pub fn send_leave(&self) {
        let _ = self.out.send(json!({"type": "leave"}).to_string());
    }

    /// Go silent at the media level: stop writing RTP and close the peer connection (no
    /// more STUN, RTP or RTCP from us), but keep the signaling socket open.
    pub async fn disconnect_media(&mut self) {
        self.stop_media().await;
        if let Err(e) = self.pc.close().await {
            self.shared.error(format!("closing the peer connection: {e}"));
        }
    }

    /// Drop the signaling socket without a close frame or goodbye (a vanished client).
    pub async fn drop_signaling(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
    }

    /// Participants we heard of (by id), with identities and announced tracks.
    pub fn roster(&self) -> HashMap<String, ParticipantEntry> {
        self.shared.participants.lock().unwrap().clone()
    }

    /// Our track id for `kind`, as the server's answer named it.
    pub fn published_track(&self, kind: Kind) -> Option<String> {
        self.shared.published.lock().unwrap().get(kind.as_str()).cloned()
    }

    pub fn remote_tracks(&self) -> Vec<RemoteTrack> {
        self.shared.remote.lock().unwrap().clone()
    }

    /// Every video packet received, in arrival order, over all video tracks.
    pub fn video_packets(&self) -> Vec<ReceivedPacket> {
        self.remote_tracks()
            .into_iter()
            .filter(|t| t.kind == Some(Kind::Video))
            .flat_map(|t| t.packets)
            .collect()
    }

    /// Packets sent so far on our track of `kind`.
    pub fn sent(&self, kind: Kind) -> u32 {
        self.local.iter().find(|t| t.kind == kind).map_or(0, |t| t.sent.load(Ordering::SeqCst))
    }

    /// Start writing RTP: Opus-sized audio every 20 ms and video (VP8 or H.264) every
    /// 33 ms, each [`KEYFRAME_EVERY`]th video packet a keyframe.
    pub async fn start_media(&mut self) -> anyhow::Result<()> {
        for t in &self.local {
            let params = t.sender.get_parameters().await.context("sender parameters")?;
            let mime = match t.kind {
                Kind::Audio => MIME_TYPE_OPUS,
                Kind::Video => self.video.mime(),
            };
            let codec = params
                .rtp_parameters
                .codecs
                .iter()
                .find(|c| {
                    c.rtp_codec.mime_type.eq_ignore_ascii_case(mime)
                        && (mime != MIME_TYPE_H264
                            || c.rtp_codec.sdp_fmtp_line.contains("packetization-mode=1"))
                })
                .ok_or_else(|| {
                    anyhow!("{}: {mime} not negotiated: {:?}", self.label(), params.rtp_parameters)
                })?;
            let pt = codec.payload_type;
            self.negotiated.push(NegotiatedCodec {
                kind: t.kind,
                payload_type: pt,
                mime_type: codec.rtp_codec.mime_type.clone(),
                fmtp: codec.rtp_codec.sdp_fmtp_line.clone(),
            });
            let task = tokio::spawn(send_loop(
                self.video,
                t.kind,
                self.index,
                pt,
                t.ssrc,
                t.track.clone(),
                t.sent.clone(),
                self.stop_media.clone(),
                self.shared.clone(),
            ));
            self.media_tasks.push(task);
        }
        Ok(())
    }

    pub async fn stop_media(&mut self) {
        self.stop_media.store(true, Ordering::SeqCst);
        for task in self.media_tasks.drain(..) {
            let _ = task.await;
        }
    }

    /// Packets received from `sender` on its track(s) of `kind` at or after `from` (cheap:
    /// counts, does not verify; see [`Client::verify_from`]).
    pub fn received_count(&self, sender: &Client, kind: Kind, from: Option<Instant>) -> usize {
        let remote = self.shared.remote.lock().unwrap();
        remote
            .iter()
            .filter(|t| t.participant_id == sender.participant_id && t.kind == Some(kind))
            .map(|t| t.packets.iter().filter(|p| from.is_none_or(|f| p.at >= f)).count())
            .sum()
    }

    /// Check what this client received from `sender` on its track of `kind`, counting
    /// only packets that arrived inside `[from, until)` when given.
    pub fn verify_from(
        &self,
        sender: &Client,
        kind: Kind,
        from: Option<Instant>,
        until: Option<Instant>,
    ) -> Verified {
        let sent = sender.sent(kind);
        let mut v = Verified::default();
        let mut counters = BTreeSet::new();
        let remote = self.shared.remote.lock().unwrap();
        for track in
            remote.iter().filter(|t| t.participant_id == sender.participant_id && t.kind == Some(kind))
        {
            v.track_ids.push(track.track_id.clone());
            if kind == Kind::Video {
                // The first packet forwarded is the one with the lowest sequence number: the
                // client's async layer can hand a new track's first packets over after a later
                // one (seen with str0m's send path and ours alike, about 1 run in 15).
                let first = track.packets.first().map(|first| {
                    track
                        .packets
                        .iter()
                        .filter(|p| p.ssrc == first.ssrc)
                        .min_by_key(|p| p.seq.wrapping_sub(first.seq) as i16)
                        .unwrap_or(first)
                });
                v.first_is_keyframe = first.map(|p| sender.video.is_keyframe(&p.payload));
            }
            let window =
                |p: &&ReceivedPacket| from.is_none_or(|f| p.at >= f) && until.is_none_or(|u| p.at < u);
            for p in track.packets.iter().filter(window) {
                v.packets += 1;
                let describe = |why: &str| {
                    let head: Vec<u8> = p.payload.iter().take(16).copied().collect();
                    format!(
                        "track {} seq {} ({} bytes, starts {head:02x?}): {why}",
                        track.track_id,
                        p.seq,
                        p.payload.len()
                    )
                };
                let Some((index, counter)) = parse_marker(sender.video, kind, &p.payload) else {
                    v.bad.push(describe("no marker"));
                    continue;
                };
                if index != sender.index {
                    v.bad.push(describe(&format!(
                        "carries sender #{index}'s marker, expected #{}",
                        sender.index
                    )));
                } else if counter >= sent {
                    v.bad.push(describe(&format!("counter {counter} was never sent (sent {sent})")));
                } else if p.payload[..] != payload(sender.video, kind, index, counter)[..] {
                    v.bad.push(describe(&format!("bytes differ from packet {counter} as sent")));
                } else {
                    counters.insert(counter);
                }
            }
        }
        v.matching = counters.len();
        v
    }

    /// Say goodbye on the signaling socket and close the peer connection.
    pub async fn close(mut self) {
        self.stop_media().await;
        let _ = self.out.send(json!({"type": "leave"}).to_string());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = self.pc.close().await;
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

async fn build_peer_connection(
    shared: Arc<Shared>,
    out: mpsc::UnboundedSender<String>,
    video: VideoCodec,
) -> anyhow::Result<Arc<dyn PeerConnection>> {
    let mut media_engine = MediaEngine::default();
    match video {
        VideoCodec::Vp8 => media_engine.register_default_codecs().context("register codecs")?,
        VideoCodec::H264 => register_opus_and_h264(&mut media_engine)?,
    }
    let registry =
        register_default_interceptors(Registry::new(), &mut media_engine).context("interceptors")?;
    // mDNS would bind port 5353 for every client in this one process; the server ignores
    // `.local` candidates anyway.
    let settings = SettingEngineBuilder::new().with_multicast_dns_mode(MulticastDnsMode::Disabled).build();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media_engine)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .with_handler(Arc::new(Handler { shared, out }))
        .with_udp_addrs(vec!["127.0.0.1:0"])
        .build()
        .await
        .context("building the peer connection")?;
    Ok(Arc::new(pc))
}

/// Opus as in webrtc-rs's defaults, and one video codec: H.264 [`H264_FMTP`].
fn register_opus_and_h264(media_engine: &mut MediaEngine) -> anyhow::Result<()> {
    let opus = RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![],
        },
        payload_type: 111,
    };
    media_engine.register_codec(opus, RtpCodecKind::Audio).context("register Opus")?;
    let feedback = |typ: &str, parameter: &str| RTCPFeedback { typ: typ.into(), parameter: parameter.into() };
    let h264 = RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_H264.to_owned(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: H264_FMTP.to_owned(),
            rtcp_feedback: vec![
                feedback("goog-remb", ""),
                feedback("ccm", "fir"),
                feedback("nack", ""),
                feedback("nack", "pli"),
            ],
        },
        payload_type: H264_PAYLOAD_TYPE,
    };
    media_engine.register_codec(h264, RtpCodecKind::Video).context("register H.264")?;
    Ok(())
}

async fn add_sendonly_track(
    pc: &Arc<dyn PeerConnection>,
    kind: Kind,
    identity: &str,
    video: VideoCodec,
) -> anyhow::Result<LocalTrack> {
    let ssrc = fastrand::u32(1..);
    let (codec_kind, codec) = match kind {
        Kind::Audio => (
            RtpCodecKind::Audio,
            RTCRtpCodec {
                mime_type: MIME_TYPE_OPUS.to_owned(),
                clock_rate: 48_000,
                channels: 2,
                ..Default::default()
            },
        ),
        Kind::Video => (
            RtpCodecKind::Video,
            RTCRtpCodec {
                mime_type: video.mime().to_owned(),
                clock_rate: 90_000,
                sdp_fmtp_line: if video == VideoCodec::H264 { H264_FMTP.to_owned() } else { String::new() },
                ..Default::default()
            },
        ),
    };
    let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        format!("{identity}-stream"),
        format!("{identity}-{}", kind.as_str()),
        format!("{identity} {}", kind.as_str()),
        codec_kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
            codec,
            ..Default::default()
        }],
    )));
    let init = RTCRtpTransceiverInit {
        direction: RTCRtpTransceiverDirection::Sendonly,
        streams: vec![],
        send_encodings: vec![],
    };
    let transceiver = pc
        .add_transceiver_from_track(track.clone() as Arc<dyn TrackLocal>, Some(init))
        .await
        .with_context(|| format!("adding the {} transceiver", kind.as_str()))?;
    let sender =
        transceiver.sender().await?.ok_or_else(|| anyhow!("{} transceiver has no sender", kind.as_str()))?;
    Ok(LocalTrack { kind, track, sender, ssrc, sent: Arc::new(AtomicU32::new(0)) })
}

/// `[{"mid", "source"}]` for the audio and video m-lines of an SDP.
fn sources_by_mid(sdp: &str) -> Vec<Value> {
    let mut tracks = Vec::new();
    let mut source = None;
    for line in sdp.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            source = if m.starts_with("audio") {
                Some("microphone")
            } else if m.starts_with("video") {
                Some("camera")
            } else {
                None
            };
        } else if let (Some(mid), Some(s)) = (line.strip_prefix("a=mid:"), source) {
            tracks.push(json!({"mid": mid.trim(), "source": s}));
        }
    }
    tracks
}

async fn next_json(ws_rx: &mut SplitStream<WsStream>) -> anyhow::Result<Value> {
    next_json_noting_close(ws_rx, None).await
}

/// The next JSON message; a close frame ends the stream (an error), noted in `shared`.
async fn next_json_noting_close(
    ws_rx: &mut SplitStream<WsStream>,
    shared: Option<&Shared>,
) -> anyhow::Result<Value> {
    loop {
        match ws_rx.next().await {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(text.as_str()).context("server JSON");
            }
            Some(Ok(Message::Close(frame))) => {
                if let Some(shared) = shared {
                    *shared.close_frame.lock().unwrap() = Some(CloseFrameInfo {
                        at: Instant::now(),
                        code: frame.as_ref().map(|f| u16::from(f.code)),
                        reason: frame.as_ref().map(|f| f.reason.to_string()).unwrap_or_default(),
                    });
                }
                bail!("socket closed: {frame:?}")
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("socket error: {e}"),
            None => bail!("socket ended"),
        }
    }
}

async fn write_loop(mut ws_tx: SplitSink<WsStream, Message>, mut out_rx: mpsc::UnboundedReceiver<String>) {
    while let Some(text) = out_rx.recv().await {
        if ws_tx.send(Message::text(text)).await.is_err() {
            break;
        }
    }
}

async fn signaling_loop(
    mut ws_rx: SplitStream<WsStream>,
    pc: Arc<dyn PeerConnection>,
    shared: Arc<Shared>,
    out: mpsc::UnboundedSender<String>,
) {
    loop {
        let message = match next_json_noting_close(&mut ws_rx, Some(&shared)).await {
            Ok(m) => m,
            Err(e) => {
                *shared.closed.lock().unwrap() = Some(e.to_string());
                return;
            }
        };
        shared.messages.lock().unwrap().push(ServerMessage { at: Instant::now(), json: message.clone() });
        if std::env::var_os("HUIYI_DUMP_SIGNALING").is_some() {
            let mut shown = message.clone();
            if let Some(sdp) = shown.get_mut("sdp") {
                *sdp = json!("...");
            }
            eprintln!("[{}] server: {shown}", shared.label);
        }
        if let Err(e) = handle_server_message(&message, &pc, &shared, &out).await {
            let kind = message["type"].as_str().unwrap_or("?");
            shared.error(format!("handling server {kind}: {e:#}"));
        }
    }
}

async fn handle_server_message(
    message: &Value,
    pc: &Arc<dyn PeerConnection>,
    shared: &Shared,
    out: &mpsc::UnboundedSender<String>,
) -> anyhow::Result<()> {
    let sdp = || message["sdp"].as_str().map(str::to_string).ok_or_else(|| anyhow!("no sdp in {message}"));
    match message["type"].as_str().unwrap_or_default() {
        "answer" => {
            let answer = RTCSessionDescription::answer(sdp()?).context("parsing the server's answer")?;
            pc.set_remote_description(answer).await.context("set_remote_description(answer)")?;
            let mut published = shared.published.lock().unwrap();
            for t in message["tracks"].as_array().into_iter().flatten() {
                if let (Some(kind), Some(id)) = (t["kind"].as_str(), t["id"].as_str()) {
                    published.insert(kind.to_string(), id.to_string());
                }
            }
            shared.answers.fetch_add(1, Ordering::SeqCst);
        }
        "offer" => {
            let offer = RTCSessionDescription::offer(sdp()?).context("parsing the server's offer")?;
            pc.set_remote_description(offer).await.context("set_remote_description(offer)")?;
            let answer = pc.create_answer(None).await.context("create_answer")?;
            let text = json!({"type": "answer", "sdp": answer.sdp}).to_string();
            pc.set_local_description(answer).await.context("set_local_description(answer)")?;
            out.send(text).map_err(|_| anyhow!("signaling writer gone"))?;
            shared.offers_answered.fetch_add(1, Ordering::SeqCst);
        }
        "participantJoined" => shared.add_participant(&message["participant"]),
        "participantLeft" => {
            if let Some(id) = message["participantId"].as_str() {
                let reason = message["reason"].as_str().unwrap_or_default().to_string();
                shared.participants.lock().unwrap().entry(id.to_string()).or_default().left = Some(reason);
            }
        }
        "trackPublished" => {
            let (Some(id), Some(tid), Some(kind)) = (
                message["participantId"].as_str(),
                message["track"]["id"].as_str(),
                message["track"]["kind"].as_str(),
            ) else {
                bail!("malformed trackPublished: {message}");
            };
            let mut participants = shared.participants.lock().unwrap();
            participants.entry(id.to_string()).or_default().tracks.insert(tid.to_string(), kind.to_string());
        }
        "error" => bail!("server error: {message}"),
        _ => {}
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn send_loop(
    video: VideoCodec,
    kind: Kind,
    index: u8,
    payload_type: u8,
    ssrc: u32,
    track: Arc<TrackLocalStaticRTP>,
    sent: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
) {
    let (period, ticks_per_packet) = match kind {
        Kind::Audio => (AUDIO_INTERVAL, 960),
        Kind::Video => (VIDEO_INTERVAL, 2970),
    };
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = fastrand::u16(..);
    let mut timestamp = fastrand::u32(..);
    let mut write_errors = 0u32;
    while !stop.load(Ordering::SeqCst) {
        interval.tick().await;
        let counter = sent.load(Ordering::SeqCst);
        let packet = rtp::Packet {
            header: rtp::header::Header {
                version: 2,
                marker: kind == Kind::Video,
                payload_type,
                sequence_number: seq,
                timestamp,
                ssrc,
                ..Default::default()
            },
            payload: Bytes::from(payload(video, kind, index, counter)),
        };
        match track.write_rtp(packet).await {
            Ok(()) => {
                sent.fetch_add(1, Ordering::SeqCst);
                seq = seq.wrapping_add(1);
                timestamp = timestamp.wrapping_add(ticks_per_packet);
            }
            Err(e) => {
                write_errors += 1;
                if write_errors <= 3 {
                    shared.error(format!("writing {} RTP: {e}", kind.as_str()));
                }
            }
        }
    }
}

/// Poll `condition` every 20 ms until it holds (true) or `timeout` passes (false).
pub async fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Log to the test output when RUST_LOG is set (the server's tracing and webrtc-rs's log).
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}
