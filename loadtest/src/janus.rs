//! Janus 1.x (its VideoRoom and Streaming plugins) as the server under test, so that a
//! scenario runs the same way against Janus as against Huiyi on the same machine
//! (`benches/compare.sh`, docs/loadtest.md *Against Janus*).
//!
//! A meeting's participant is one WebSocket to Janus (its `janus-protocol`) carrying one
//! session with two handles, as Janus's own VideoRoom clients do: a publisher, which joins
//! the room (and so hears of every other publisher) and publishes the participant's
//! microphone and camera when it has any; and a subscriber, which receives the others'
//! media in one PeerConnection (a multistream subscription, changed with `update` as
//! publishers come and go). A class runs as Janus serves one to many: the teacher publishes
//! into a VideoRoom, which forwards its media as plain RTP (`rtp_forward`) to a Streaming
//! mountpoint, and each player watches the mountpoint. The generator's clients do not know
//! Janus: this task turns their offers and answers into Janus requests, and Janus's JSEP
//! into the `answer` and `offer` messages they handle for Huiyi.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use proto::messages::{ClientMessage, ServerMessage};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::signal::{FromServer, SignalError};

/// How long Janus may take to answer a request before the join counts as failed.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Janus ends a session after 60 s without a request on it (`session_timeout`).
const KEEPALIVE: Duration = Duration::from_secs(20);

/// Publishers' changes within this long go to Janus as one subscription update (a room
/// filling at 10 joins a second would otherwise renegotiate every subscriber per join).
const UPDATE_DEBOUNCE: Duration = Duration::from_millis(300);

/// A refused subscription request is tried again after this long.
const RETRY: Duration = Duration::from_secs(1);

/// A subscription negotiation with no word from Janus or the client for this long is
/// given up and tried again (an offer the client could not take gets no answer).
const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A Janus server and the VideoRoom room a run uses.
#[derive(Debug, Clone)]
pub struct JanusRoom {
    /// `ws://host:port` of Janus's WebSocket transport.
    pub ws_url: String,
    pub room: u64,
    pub view: ViewRule,
    /// A class: the Streaming mountpoint its players watch (set by [`create_room`]).
    pub mountpoint: Option<Mountpoint>,
}

/// A Streaming mountpoint fed by the teacher's VideoRoom publisher over plain RTP.
#[derive(Debug, Clone, Copy)]
pub struct Mountpoint {
    pub id: u64,
    /// Where Janus listens for the audio, and for each camera layer (lowest first).
    pub audio_port: u16,
    pub video_ports: [u16; 3],
}

/// Payload types on the forwarded RTP and in the mountpoint's SDP.
const OPUS_PT: u8 = 111;
const VP8_PT: u8 = 96;

/// What a subscriber takes: every other publisher's microphone, and of their cameras the
/// first `grid` to publish, the first of them at simulcast substream `big` and the rest at
/// `small` (Janus has no dominant speaker to follow); without a grid every camera at
/// Janus's default, its top substream.
#[derive(Debug, Clone, Copy)]
pub struct ViewRule {
    pub grid: Option<usize>,
    pub big: u8,
    pub small: u8,
}

/// Which of a participant's two connections a message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    Publisher,
    Subscriber,
}

/// A publisher in the room as Janus announced it.
#[derive(Debug, Clone)]
struct Feed {
    id: u64,
    /// The generator's serial of the publishing client (from its display name).
    serial: Option<u32>,
    audio: Vec<String>,
    /// A camera's mid, and whether it is simulcast.
    video: Option<(String, bool)>,
}

/// One stream of a subscription: the publisher, its mid, and the substream asked for.
type Wanted = (u64, String, Option<u8>);

/// A joined participant: its session and handles, before its task runs.
pub struct Participant {
    ws: Ws,
    session: u64,
    publisher: u64,
    subscriber: u64,
    next_transaction: u64,
    feeds: Vec<Feed>,
    view: ViewRule,
    room: u64,
    /// A class's player watching this mountpoint (its `subscriber` is a Streaming handle,
    /// `publisher` none), or a teacher forwarding to it.
    mountpoint: Option<Mountpoint>,
    /// It watches the mountpoint (a class's player).
    player: bool,
    /// The participant's own publisher id in the room.
    own_feed: Option<u64>,
    /// Where the mountpoint is (Janus's own address, for the teacher's forwarders).
    host: String,
}

/// Create the run's room (any client may: Janus's default `admin_key` is unset), and for a
/// class the mountpoint its players watch.
pub async fn create_room(target: &mut JanusRoom, publishers: usize, class: bool) -> Result<(), SignalError> {
    let mut link = Link::connect(&target.ws_url).await?;
    let handle = link.attach().await?;
    let body = json!({
        "request": "create",
        "room": target.room,
        "permanent": false,
        "publishers": publishers.max(1),
        // Media as the generator sends it; no cap on the publishers' bitrate (the generator
        // sends fixed rates, as Huiyi's runs do) and no periodic keyframe requests.
        "audiocodec": "opus",
        "videocodec": "vp8",
        "bitrate": 0,
        "fir_freq": 0,
        "notify_joining": false,
    });
    let reply = link.message(handle, body, None).await?;
    let data = &reply["plugindata"]["data"];
    if data["videoroom"] != "created" {
        return Err(SignalError::JoinRefused(format!("Janus did not create the room: {data}")));
    }
    if class {
        target.mountpoint = Some(create_mountpoint(&mut link).await?);
    }
    let _ = link.call(json!({"janus": "destroy"})).await;
    Ok(())
}

/// An RTP mountpoint for a teacher's Opus and simulcast VP8, on ports Janus picks. (Janus
/// keeps no keyframe for newcomers of a simulcast mountpoint: `bufferkf` is off with it.)
async fn create_mountpoint(link: &mut Link) -> Result<Mountpoint, SignalError> {
    let handle = link.attach_to("janus.plugin.streaming").await?;
    let id = u64::from(fastrand::u32(1..));
    let body = json!({
        "request": "create",
        "type": "rtp",
        "id": id,
        "permanent": false,
        "media": [
            {"type": "audio", "mid": "a", "port": 0, "pt": OPUS_PT, "codec": "opus"},
            {"type": "video", "mid": "v", "port": 0, "port2": 0, "port3": 0, "pt": VP8_PT, "codec": "vp8",
             "simulcast": true},
        ],
    });
    let reply = link.message(handle, body, None).await?;
    let data = &reply["plugindata"]["data"];
    if data["streaming"] != "created" {
        return Err(SignalError::JoinRefused(format!("Janus did not create the mountpoint: {data}")));
    }
    let ports = data["stream"]["ports"].as_array().cloned().unwrap_or_default();
    let port = |kind: &str, key: &str| {
        ports
            .iter()
            .find(|p| p["type"] == kind)
            .and_then(|p| p[key].as_u64())
            .and_then(|p| u16::try_from(p).ok())
    };
    let missing = || SignalError::Protocol(format!("Janus's mountpoint lacks a port: {data}"));
    Ok(Mountpoint {
        id,
        audio_port: port("audio", "port").ok_or_else(missing)?,
        video_ports: [
            port("video", "port").ok_or_else(missing)?,
            port("video", "port_2").ok_or_else(missing)?,
            port("video", "port_3").ok_or_else(missing)?,
        ],
    })
}

impl Participant {
    /// Open a session, join the room as a publisher named `display`, and attach the
    /// subscriber's handle.
    pub async fn join(target: &JanusRoom, display: &str) -> Result<Self, SignalError> {
        let mut link = Link::connect(&target.ws_url).await?;
        let publisher = link.attach().await?;
        let body = json!({"request": "join", "ptype": "publisher", "room": target.room, "display": display});
        let reply = link.message(publisher, body, None).await?;
        let data = &reply["plugindata"]["data"];
        if data["videoroom"] != "joined" {
            return Err(SignalError::JoinRefused(format!("Janus refused the join: {data}")));
        }
        let subscriber = link.attach().await?;
        // Publishers that came or went while the replies above were awaited.
        let held = std::mem::take(&mut link.held);
        let mut me = Participant {
            ws: link.ws,
            session: link.session,
            publisher,
            subscriber,
            next_transaction: link.next_transaction,
            feeds: Vec::new(),
            view: target.view,
            room: target.room,
            mountpoint: target.mountpoint,
            player: false,
            own_feed: data["id"].as_u64(),
            host: host_of(&target.ws_url),
        };
        me.note_publishers(data);
        for event in held.iter().filter(|e| e["sender"].as_u64() == Some(publisher)) {
            me.note_publishers(&event["plugindata"]["data"]);
        }
        Ok(me)
    }

    /// A class's player: a Streaming handle that asks to watch the mountpoint (Janus's
    /// offer comes to the subscriber client once the task runs).
    pub async fn watch(target: &JanusRoom) -> Result<Self, SignalError> {
        let Some(mountpoint) = target.mountpoint else {
            return Err(SignalError::Protocol("no mountpoint to watch".into()));
        };
        let mut link = Link::connect(&target.ws_url).await?;
        let subscriber = link.attach_to("janus.plugin.streaming").await?;
        let mut me = Participant {
            ws: link.ws,
            session: link.session,
            publisher: 0,
            subscriber,
            next_transaction: link.next_transaction,
            feeds: Vec::new(),
            view: target.view,
            room: target.room,
            mountpoint: Some(mountpoint),
            player: true,
            own_feed: None,
            host: host_of(&target.ws_url),
        };
        // The layer its size asks for, from the start (Janus's default is the top one).
        let watch = json!({"request": "watch", "id": mountpoint.id, "substream": target.view.big});
        me.send_message(subscriber, watch, None)
            .await
            .map_err(|()| SignalError::WebSocket(target.ws_url.clone(), "closed".into()))?;
        Ok(me)
    }

    /// Carry the participant on a task: the publisher client's offer (None: it publishes
    /// nothing) and the subscriber client's answers (None: nobody else publishes) go to
    /// Janus; Janus's answer and offers (and what the subscriber then shows) go to `on`. It
    /// leaves when either client leaves or stops.
    pub fn run(
        self,
        mut publisher_out: Option<UnboundedReceiver<ClientMessage>>,
        mut subscriber_out: Option<UnboundedReceiver<ClientMessage>>,
        on: impl Fn(Half, FromServer) + Send + 'static,
    ) {
        tokio::spawn(async move {
            let mut me = self;
            let mut keepalive = tokio::time::interval(KEEPALIVE);
            keepalive.tick().await;
            // The subscription asked of Janus (`current`), the one it last took (with an
            // offer: `confirmed`), and whether an offer or answer of it is still in flight.
            let mut current: BTreeSet<Wanted> = BTreeSet::new();
            let mut confirmed: BTreeSet<Wanted> = BTreeSet::new();
            let mut negotiating_since = tokio::time::Instant::now();
            let mut joined_as_subscriber = false;
            let mut attached = false;
            // The publisher's offer's (kind, mid) pairs, for a teacher's forwarders.
            let mut offered_mids: Vec<(String, String)> = Vec::new();
            let mut negotiating = false;
            let mut update_at = Some(tokio::time::Instant::now());
            let closed = loop {
                if negotiating && negotiating_since.elapsed() > NEGOTIATION_TIMEOUT {
                    on(
                        Half::Subscriber,
                        FromServer::Unreadable("a Janus subscription update never finished".into()),
                    );
                    negotiating = false;
                    current = confirmed.clone();
                    update_at = Some(tokio::time::Instant::now());
                }
                let due =
                    update_at.filter(|_| !negotiating && subscriber_out.is_some() && me.mountpoint.is_none());
                tokio::select! {
                    m = recv(&mut publisher_out) => match m {
                        Some(ClientMessage::Offer { sdp, .. }) => {
                            offered_mids = mids_of(&sdp);
                            // Our layers are listed lowest first: Janus must know to map
                            // them so (its substream 0 is the lowest).
                            let jsep = json!({"type": "offer", "sdp": sdp, "trickle": false, "rid_order": "lmh"});
                            if me.send_message(me.publisher, json!({"request": "publish"}), Some(jsep)).await.is_err() {
                                break None;
                            }
                        }
                        Some(ClientMessage::Leave) | None => break None,
                        Some(_) => {}
                    },
                    m = recv(&mut subscriber_out) => match m {
                        Some(ClientMessage::Answer { sdp }) => {
                            let jsep = json!({"type": "answer", "sdp": sdp, "trickle": false});
                            if me.send_message(me.subscriber, json!({"request": "start"}), Some(jsep)).await.is_err() {
                                break None;
                            }
                        }
                        Some(ClientMessage::Leave) | None => break None,
                        Some(_) => {}
                    },
                    _ = keepalive.tick() => {
                        let t = me.transaction();
                        let m = json!({"janus": "keepalive", "session_id": me.session, "transaction": t});
                        if me.ws.send(Message::Text(m.to_string().into())).await.is_err() {
                            break None;
                        }
                    }
                    _ = sleep_until(due) => {
                        update_at = None;
                        let wanted = me.wanted();
                        let subscribe: Vec<&Wanted> = wanted.difference(&current).collect();
                        let unsubscribe: Vec<&Wanted> = current.difference(&wanted).collect();
                        if subscribe.is_empty() && unsubscribe.is_empty() {
                            continue;
                        }
                        let entry = |(feed, mid, substream): &&Wanted| {
                            let mut e = json!({"feed": feed, "mid": mid});
                            if let Some(s) = substream {
                                e["substream"] = json!(s);
                            }
                            e
                        };
                        let body = if !joined_as_subscriber {
                            json!({"request": "join", "ptype": "subscriber", "room": me.room,
                                   "streams": subscribe.iter().map(entry).collect::<Vec<_>>()})
                        } else {
                            // Janus refuses an empty list: only the lists with streams go.
                            let mut update = json!({"request": "update"});
                            if !subscribe.is_empty() {
                                update["subscribe"] = subscribe.iter().map(entry).collect();
                            }
                            if !unsubscribe.is_empty() {
                                update["unsubscribe"] = unsubscribe
                                    .iter()
                                    .map(|(feed, mid, _)| json!({"feed": feed, "mid": mid}))
                                    .collect();
                            }
                            update
                        };
                        if me.send_message(me.subscriber, body, None).await.is_err() {
                            break None;
                        }
                        joined_as_subscriber = true;
                        negotiating = true;
                        negotiating_since = tokio::time::Instant::now();
                        current = wanted;
                    }
                    frame = me.ws.next() => {
                        let text = match frame {
                            Some(Ok(Message::Text(t))) => t,
                            Some(Ok(Message::Close(f))) => break f.map(|f| (u16::from(f.code), f.reason.to_string())),
                            Some(Ok(_)) => continue,
                            Some(Err(_)) | None => break None,
                        };
                        let Ok(v) = serde_json::from_str::<Value>(&text) else {
                            on(Half::Subscriber, FromServer::Unreadable(format!("Janus sent unreadable JSON: {text:.120}")));
                            continue;
                        };
                        match v["janus"].as_str() {
                            Some("event") => {}
                            Some("timeout") => break Some((1000, "Janus timed the session out".into())),
                            Some("error") => {
                                on(Half::Subscriber, janus_error(&v["error"]));
                                // Whatever it refused, the subscription is what Janus last took.
                                if negotiating {
                                    negotiating = false;
                                    joined_as_subscriber &= attached;
                                    current = confirmed.clone();
                                    update_at = Some(tokio::time::Instant::now() + RETRY);
                                }
                                continue;
                            }
                            _ => continue,
                        }
                        let data = &v["plugindata"]["data"];
                        let sender = v["sender"].as_u64();
                        let half = if sender == Some(me.subscriber) { Half::Subscriber } else { Half::Publisher };
                        if data.get("error_code").is_some() {
                            on(half, janus_error(data));
                            if half == Half::Subscriber {
                                // Refused (a feed in it had just gone, say): Janus keeps what
                                // it last took, and the rest is asked for again.
                                negotiating = false;
                                joined_as_subscriber &= attached;
                                current = confirmed.clone();
                                update_at = Some(tokio::time::Instant::now() + RETRY);
                            }
                            continue;
                        }
                        if half == Half::Publisher {
                            if me.note_publishers(data) {
                                update_at.get_or_insert(tokio::time::Instant::now() + UPDATE_DEBOUNCE);
                            }
                            if v["jsep"]["type"] == "answer"
                                && let Some(sdp) = v["jsep"]["sdp"].as_str()
                            {
                                let answer = ServerMessage::Answer { sdp: sdp.to_string(), tracks: Vec::new() };
                                on(Half::Publisher, FromServer::Message(answer));
                                // A teacher's media goes on to the mountpoint as plain RTP.
                                if let (Some(mountpoint), Some(id)) = (me.mountpoint, me.own_feed) {
                                    let body = forward_request(me.room, id, &me.host, &offered_mids, mountpoint);
                                    if me.send_message(me.publisher, body, None).await.is_err() {
                                        break None;
                                    }
                                }
                            }
                            continue;
                        }
                        if v["jsep"]["type"] == "offer" && let Some(sdp) = v["jsep"]["sdp"].as_str() {
                            attached = true;
                            negotiating_since = tokio::time::Instant::now();
                            confirmed = current.clone();
                            // A player shows no tiles: it is judged as a WHEP player is.
                            if !me.player {
                                on(Half::Subscriber, FromServer::Showing(me.cameras_of(&current)));
                            }
                            on(Half::Subscriber, FromServer::Message(ServerMessage::Offer { sdp: sdp.to_string() }));
                        } else if data["started"] == "ok" || data["videoroom"] == "updated" {
                            // Our answer was taken, or the update needed no new offer.
                            negotiating = false;
                        }
                    }
                }
            };
            let t = me.transaction();
            let bye = json!({"janus": "destroy", "session_id": me.session, "transaction": t});
            let _ = me.ws.send(Message::Text(bye.to_string().into())).await;
            let _ = me.ws.close(None).await;
            on(Half::Publisher, FromServer::Closed(closed.clone()));
            on(Half::Subscriber, FromServer::Closed(closed));
        });
    }

    fn transaction(&mut self) -> String {
        self.next_transaction += 1;
        format!("t{}", self.next_transaction)
    }

    async fn send_message(&mut self, handle: u64, body: Value, jsep: Option<Value>) -> Result<(), ()> {
        let t = self.transaction();
        let mut m = json!({"janus": "message", "session_id": self.session, "handle_id": handle,
                           "transaction": t, "body": body});
        if let Some(jsep) = jsep {
            m["jsep"] = jsep;
        }
        self.ws.send(Message::Text(m.to_string().into())).await.map_err(|_| ())
    }

    /// Take in a VideoRoom event's publisher changes; true when the room's publishers changed.
    fn note_publishers(&mut self, data: &Value) -> bool {
        let mut changed = false;
        for p in data["publishers"].as_array().into_iter().flatten() {
            let Some(id) = p["id"].as_u64() else { continue };
            let serial = p["display"].as_str().and_then(|d| d.rsplit('-').next()?.parse().ok());
            let mut feed = Feed { id, serial, audio: Vec::new(), video: None };
            for s in p["streams"].as_array().into_iter().flatten() {
                if s["disabled"] == true {
                    continue;
                }
                let Some(mid) = s["mid"].as_str() else { continue };
                match s["type"].as_str() {
                    Some("audio") => feed.audio.push(mid.to_string()),
                    Some("video") if feed.video.is_none() => {
                        feed.video = Some((mid.to_string(), s["simulcast"] == true));
                    }
                    _ => {}
                }
            }
            match self.feeds.iter_mut().find(|f| f.id == id) {
                Some(known) => *known = feed,
                None => self.feeds.push(feed),
            }
            changed = true;
        }
        for gone in ["unpublished", "leaving"] {
            if let Some(id) = data[gone].as_u64() {
                let before = self.feeds.len();
                self.feeds.retain(|f| f.id != id);
                changed |= self.feeds.len() != before;
            }
        }
        changed
    }

    /// The subscription the view rule asks for, given the room's publishers now.
    fn wanted(&self) -> BTreeSet<Wanted> {
        let mut wanted = BTreeSet::new();
        let mut cameras = 0;
        for feed in &self.feeds {
            for mid in &feed.audio {
                wanted.insert((feed.id, mid.clone(), None));
            }
            let Some((mid, simulcast)) = &feed.video else { continue };
            let substream = match self.view.grid {
                Some(grid) if cameras >= grid => continue,
                Some(_) if *simulcast => Some(if cameras == 0 { self.view.big } else { self.view.small }),
                _ => None,
            };
            cameras += 1;
            wanted.insert((feed.id, mid.clone(), substream));
        }
        wanted
    }

    /// The serials of the cameras' publishers in a subscription.
    fn cameras_of(&self, subscription: &BTreeSet<Wanted>) -> Vec<u32> {
        self.feeds
            .iter()
            .filter(|f| {
                f.video
                    .as_ref()
                    .is_some_and(|(mid, _)| subscription.iter().any(|w| w.0 == f.id && &w.1 == mid))
            })
            .filter_map(|f| f.serial)
            .collect()
    }
}

/// The next message of a client, if the participant has that client (one that publishes
/// nothing has no publisher connection, a class's teacher no subscriber); the end of its
/// channel is None.
async fn recv(rx: &mut Option<UnboundedReceiver<ClientMessage>>) -> Option<ClientMessage> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The host of a `ws://host:port` URL.
fn host_of(ws_url: &str) -> String {
    let rest = ws_url.strip_prefix("ws://").unwrap_or(ws_url);
    let host_port = rest.split('/').next().unwrap_or(rest);
    host_port.rsplit_once(':').map_or(host_port, |(host, _)| host).to_string()
}

/// An SDP's media sections as (kind, mid).
fn mids_of(sdp: &str) -> Vec<(String, String)> {
    let mut mids = Vec::new();
    let mut kind = None;
    for line in sdp.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            kind = m.split_whitespace().next().map(str::to_string);
        } else if let (Some(mid), Some(k)) = (line.strip_prefix("a=mid:"), kind.as_ref()) {
            mids.push((k.clone(), mid.trim().to_string()));
        }
    }
    mids
}

/// The VideoRoom request that forwards a teacher's microphone and each camera layer as
/// plain RTP to the mountpoint's ports, with the payload types its SDP names.
fn forward_request(
    room: u64,
    publisher: u64,
    host: &str,
    mids: &[(String, String)],
    to: Mountpoint,
) -> Value {
    let streams: Vec<Value> = mids
        .iter()
        .filter_map(|(kind, mid)| match kind.as_str() {
            "audio" => Some(json!({"mid": mid, "port": to.audio_port, "pt": OPUS_PT})),
            "video" => Some(json!({
                "mid": mid,
                "port": to.video_ports[0], "pt": VP8_PT,
                "port_2": to.video_ports[1], "pt_2": VP8_PT,
                "port_3": to.video_ports[2], "pt_3": VP8_PT,
            })),
            _ => None,
        })
        .collect();
    json!({"request": "rtp_forward", "room": room, "publisher_id": publisher, "host": host, "streams": streams})
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn janus_error(e: &Value) -> FromServer {
    let code = e["error_code"].as_i64().or_else(|| e["code"].as_i64()).unwrap_or(0);
    let reason = e["error"].as_str().or_else(|| e["reason"].as_str()).unwrap_or("?");
    FromServer::Message(ServerMessage::Error { code: format!("janus_{code}"), message: reason.to_string() })
}

/// A session on a fresh WebSocket, for requests answered in turn (before a participant's
/// task runs, or to create the room).
struct Link {
    ws: Ws,
    session: u64,
    next_transaction: u64,
    url: String,
    /// Events that came while a reply was awaited (another publisher joining the room).
    held: Vec<Value>,
}

impl Link {
    async fn connect(url: &str) -> Result<Self, SignalError> {
        let mut request =
            url.into_client_request().map_err(|e| SignalError::WebSocket(url.into(), e.to_string()))?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "janus-protocol".parse().expect("header value"));
        let (ws, _) = tokio::time::timeout(
            REPLY_TIMEOUT,
            tokio_tungstenite::connect_async_with_config(request, Some(crate::signal::ws_config()), false),
        )
        .await
        .map_err(|_| SignalError::Timeout(REPLY_TIMEOUT))?
        .map_err(|e| SignalError::WebSocket(url.into(), e.to_string()))?;
        let mut link = Link { ws, session: 0, next_transaction: 0, url: url.into(), held: Vec::new() };
        let reply = link.call(json!({"janus": "create"})).await?;
        link.session = reply["data"]["id"]
            .as_u64()
            .ok_or_else(|| SignalError::Protocol(format!("Janus created no session: {reply}")))?;
        Ok(link)
    }

    async fn attach(&mut self) -> Result<u64, SignalError> {
        self.attach_to("janus.plugin.videoroom").await
    }

    async fn attach_to(&mut self, plugin: &str) -> Result<u64, SignalError> {
        let reply = self.call(json!({"janus": "attach", "plugin": plugin})).await?;
        reply["data"]["id"]
            .as_u64()
            .ok_or_else(|| SignalError::Protocol(format!("Janus attached no handle: {reply}")))
    }

    /// A plugin request; its event (the reply after Janus's `ack`).
    async fn message(&mut self, handle: u64, body: Value, jsep: Option<Value>) -> Result<Value, SignalError> {
        let mut m = json!({"janus": "message", "handle_id": handle, "body": body});
        if let Some(jsep) = jsep {
            m["jsep"] = jsep;
        }
        self.call(m).await
    }

    /// Send a request and wait for its reply (skipping acks and other messages).
    async fn call(&mut self, mut request: Value) -> Result<Value, SignalError> {
        self.next_transaction += 1;
        let transaction = format!("t{}", self.next_transaction);
        request["transaction"] = json!(transaction);
        if self.session != 0 {
            request["session_id"] = json!(self.session);
        }
        let failed = |e: &dyn std::fmt::Display| SignalError::WebSocket(self.url.clone(), e.to_string());
        self.ws.send(Message::Text(request.to_string().into())).await.map_err(|e| failed(&e))?;
        let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| SignalError::Timeout(REPLY_TIMEOUT))?;
            let text = match frame {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(failed(&e)),
                None => return Err(SignalError::JoinRefused("Janus closed the WebSocket".into())),
            };
            let v: Value = serde_json::from_str(&text).map_err(|e| SignalError::Protocol(e.to_string()))?;
            if v["transaction"] != transaction.as_str() || v["janus"] == "ack" {
                if v["janus"] == "event" {
                    self.held.push(v);
                }
                continue;
            }
            if v["janus"] == "error" {
                return Err(SignalError::JoinRefused(format!("Janus: {}", v["error"])));
            }
            return Ok(v);
        }
    }
}
