//! One signaling WebSocket: authenticate the join, then relay between the client and
//! its media session until either side ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use proto::quality::{quality_for_tile, quality_named};
// The protocol's qualities are the media node's layers.
const _: () = assert!(proto::quality::MAX_LAYERS == sfu::api::MAX_LAYERS);
use sfu::api::{JoinRequest, LeaveReason, MediaError, MediaSession, SessionEvent, ShownTrack, TrackSource};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tracing::{debug, info, warn};

use crate::auth;
use crate::host::Action;
use crate::http::Admitted;
use crate::protocol::{ClientMessage, Participant, ServerMessage, close_code, participant, server_message};
use crate::registry::Who;
use crate::talk::{Said, TalkLimit, checked_chat, checked_reaction};
use crate::upgrade::{InputLimit, Socket};
use crate::{AppState, Ends};

mod talking;
use talking::{Talking, host_action, talk};

/// From the handshake to the `joined` answer, sends included.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that takes longer than this to take one message off the server is dropped
/// (its messages would otherwise pile up in the server's memory).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// A close frame gets this long (the connection ends either way).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a reconnect waits for the connection it replaces to leave the room.
const REPLACE_WAIT: Duration = Duration::from_secs(2);
/// How long a connection closed on purpose may take to be sent what its room was told
/// just before (a host's `hostAction`) ahead of its close frame.
const FLUSH_WAIT: Duration = Duration::from_secs(1);
/// Error texts sent to clients are cut to this many characters: they may quote input.
const MAX_ERROR_TEXT: usize = 200;
/// Messages above this get an error; the transport's own limit (which closes) is higher.
/// SDP grows with the tracks a participant receives (a full 300-person room is several
/// hundred m-lines, about 0.7 KiB each), so the limit is sized for that.
pub const MAX_MESSAGE: usize = 1024 * 1024;
pub const TRANSPORT_MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// Bytes waiting to be written to one client beyond which a send fails.
const MAX_WRITE_BUFFER: usize = 2 * TRANSPORT_MAX_MESSAGE;
const MAX_MESSAGES_PER_SECOND: u32 = 200;

/// Events a parked participant's session may queue for its return; more end it.
const MAX_PARKED_EVENTS: usize = 512;
/// How long a resuming connection waits for the parked session to be handed over.
const CLAIM_WAIT: Duration = Duration::from_secs(2);

/// Numbers each admitted connection (WebSocket or WHIP session) for the registry.
pub(crate) static CONNECTIONS: AtomicU64 = AtomicU64::new(1);

/// The transport settings of a signaling WebSocket.
pub fn transport_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .max_message_size(Some(TRANSPORT_MAX_MESSAGE))
        .max_frame_size(Some(TRANSPORT_MAX_MESSAGE))
        .max_write_buffer_size(MAX_WRITE_BUFFER)
}

struct Connection {
    socket: Socket,
    state: Arc<AppState>,
    window_start: Instant,
    window_count: u32,
}

enum Incoming {
    Message(ClientMessage),
    /// Refused with an error; keep going.
    Refused,
    Closed,
}

impl Connection {
    /// Send one message; false when the client is gone or has not taken its messages
    /// within [`SEND_TIMEOUT`].
    async fn send(&mut self, message: &ServerMessage) -> bool {
        let text = match message {
            ServerMessage::Error { code, message } => {
                self.state.metrics.errors.with_label_values(&[code.as_str()]).inc();
                let bounded = ServerMessage::Error { code: code.clone(), message: bounded_text(message) };
                serde_json::to_string(&bounded)
            }
            _ => serde_json::to_string(message),
        };
        let text = text.expect("server messages serialize");
        match tokio::time::timeout(SEND_TIMEOUT, self.socket.send(Message::Text(text.into()))).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                debug!(error = %e, "sending to a client failed");
                false
            }
            Err(_) => {
                self.state.metrics.send_timeouts.inc();
                info!("a client took no message for {SEND_TIMEOUT:?}; dropping it");
                false
            }
        }
    }

    async fn close(&mut self, code: u16, reason: &'static str) {
        let frame = CloseFrame { code: code.into(), reason: Utf8Bytes::from_static(reason) };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.socket.send(Message::Close(Some(frame)))).await;
    }

    /// Turn one frame from the client into a message, answering bad ones with an error.
    async fn read(&mut self, frame: Option<Result<Message, WsError>>) -> Incoming {
        let text = match frame {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Incoming::Closed,
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Binary(_))) => {
                let ok = self.send(&ServerMessage::error("bad_json", "binary frames are not accepted")).await;
                return if ok { Incoming::Refused } else { Incoming::Closed };
            }
            Some(Ok(_)) => return Incoming::Refused,
        };
        let now = Instant::now();
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.window_count = 0;
        }
        self.window_count += 1;
        let refusal = if self.window_count > MAX_MESSAGES_PER_SECOND {
            Some(ServerMessage::error("rate_limited", "too many messages; slow down"))
        } else if text.len() > MAX_MESSAGE {
            Some(ServerMessage::error("too_large", format!("messages are limited to {MAX_MESSAGE} bytes")))
        } else {
            match serde_json::from_str::<ClientMessage>(&text) {
                Ok(m) => {
                    self.state.metrics.messages.with_label_values(&[message_type(&m)]).inc();
                    return Incoming::Message(m);
                }
                Err(e) => Some(classify_json_error(&text, e)),
            }
        };
        debug!(?refusal, "refused client message");
        let ok = match refusal {
            Some(r) => self.send(&r).await,
            None => true,
        };
        if ok { Incoming::Refused } else { Incoming::Closed }
    }
}

fn message_type(m: &ClientMessage) -> &'static str {
    match m {
        ClientMessage::Join { .. } => "join",
        ClientMessage::Offer { .. } => "offer",
        ClientMessage::Answer { .. } => "answer",
        ClientMessage::Candidate { .. } => "candidate",
        ClientMessage::Mute { .. } => "mute",
        ClientMessage::Subscribe { .. } => "subscribe",
        ClientMessage::Leave => "leave",
        ClientMessage::Ping => "ping",
        ClientMessage::Chat { .. } => "chat",
        ClientMessage::RaiseHand { .. } => "raiseHand",
        ClientMessage::Reaction { .. } => "reaction",
        ClientMessage::MuteParticipant { .. } => "muteParticipant",
        ClientMessage::MuteAll => "muteAll",
        ClientMessage::RemoveParticipant { .. } => "removeParticipant",
        ClientMessage::EndMeeting => "endMeeting",
    }
}

fn classify_json_error(text: &str, e: serde_json::Error) -> ServerMessage {
    match serde_json::from_str::<serde_json::Value>(text) {
        Err(_) => ServerMessage::error("bad_json", format!("not JSON: {e}")),
        Ok(v) => match v.get("type").and_then(|t| t.as_str()) {
            None => ServerMessage::error("bad_request", "a message needs a string \"type\""),
            Some(t) if !KNOWN_TYPES.contains(&t) => {
                let shown: String = t.chars().take(32).collect();
                ServerMessage::error("unknown_type", format!("unknown message type {shown:?}"))
            }
            Some(t) => ServerMessage::error("bad_request", format!("bad {t} message: {e}")),
        },
    }
}

const KNOWN_TYPES: &[&str] = &[
    "join",
    "offer",
    "answer",
    "candidate",
    "mute",
    "subscribe",
    "leave",
    "ping",
    "chat",
    "raiseHand",
    "reaction",
    "muteParticipant",
    "muteAll",
    "removeParticipant",
    "endMeeting",
];

/// `text` cut to [`MAX_ERROR_TEXT`] characters.
fn bounded_text(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR_TEXT) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

pub async fn serve(socket: Socket, limit: InputLimit, admitted: Option<Admitted>, state: Arc<AppState>) {
    state.metrics.connections.inc();
    let mut conn = Connection { socket, state: state.clone(), window_start: Instant::now(), window_count: 0 };
    run(&mut conn, limit, admitted).await;
    state.metrics.connections.dec();
}

/// Wait for the join message (its token and resume token); `None` when the connection
/// ended or was refused.
async fn await_join(conn: &mut Connection) -> Option<(String, Option<String>, bool)> {
    loop {
        let frame = conn.socket.next().await;
        match conn.read(frame).await {
            Incoming::Closed => return None,
            Incoming::Refused => continue,
            Incoming::Message(ClientMessage::Join { token, resume, new_media }) => {
                return Some((token, resume, new_media));
            }
            Incoming::Message(_) => {
                if !conn.send(&ServerMessage::error("not_joined", "send join first")).await {
                    return None;
                }
            }
        }
    }
}

async fn run(conn: &mut Connection, limit: InputLimit, admitted: Option<Admitted>) {
    // The first message must be a join, within the deadline (replies to other messages
    // count against it too: a client that never reads cannot hold the connection). Until
    // then a full server may shed the socket for a newcomer.
    let shed = async {
        match &admitted {
            Some(a) => a.shed().await,
            None => std::future::pending().await,
        }
    };
    let (token, resume, new_media) = tokio::select! {
        waited = tokio::time::timeout(JOIN_TIMEOUT, await_join(conn)) => match waited {
            Ok(Some(join)) => join,
            Ok(None) => return,
            Err(_) => {
                conn.state.metrics.join_timeouts.inc();
                return conn.close(4002, "join timeout").await;
            }
        },
        () = shed => return conn.close(1013, "server full: shed before joining").await,
    };
    if admitted.as_ref().is_some_and(|a| !a.served()) {
        // Shed just before its join arrived: its place is already someone else's.
        return conn.close(1013, "server full: shed before joining").await;
    }
    let started = Instant::now();
    let claims = match auth::verify(&conn.state.secret, &token, auth::now_unix()) {
        Ok(c) => c,
        Err(e) => {
            conn.state.metrics.auth_failures.with_label_values(&[e.label()]).inc();
            debug!(error = %e, "join refused");
            return conn.close(4001, unauthorized_reason(&e)).await;
        }
    };
    if !claims.grants.can_publish && !claims.grants.can_subscribe {
        conn.state.metrics.auth_failures.with_label_values(&["no_grants"]).inc();
        return conn.close(4001, "unauthorized: token grants neither publish nor subscribe").await;
    }
    if conn.state.is_draining() {
        return conn.close(1001, "shutting down").await;
    }
    if let Some(resume) = resume {
        match take_parked(&conn.state, &claims.room, &claims.sub, &resume).await {
            Some(live) if new_media => {
                conn.state.metrics.resumes.with_label_values(&["reloaded"]).inc();
                return rejoin(conn, live, &claims, limit).await;
            }
            Some(live) => {
                conn.state.metrics.resumes.with_label_values(&["resumed"]).inc();
                info!(room = %live.room, participant = %live.participant_id, "resumed");
                limit.lift();
                return serve_live(conn, live, Vec::new(), true).await;
            }
            // Gone (the grace period ended, or another connection took it): a new join.
            None => conn.state.metrics.resumes.with_label_values(&["refused"]).inc(),
        }
    }
    let connection = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
    let participant_id = format!("PA_{}", random_id());
    let name = claims.name.clone().filter(|n| !n.trim().is_empty()).unwrap_or_else(|| claims.sub.clone());
    let (ends, kick, hold, departed) = Ends::new();
    let previous =
        conn.state.registry.insert(&claims.room, &claims.sub, connection, &participant_id, &name, ends);
    let resume = resume_token();
    conn.state.registry.set_resume(&claims.room, &claims.sub, connection, &resume);
    let replaces = previous.is_some();
    if let Some(previous) = previous {
        replace(previous, &claims.sub).await;
    }
    let joined = conn
        .state
        .media
        .join(JoinRequest {
            room: claims.room.clone(),
            participant_id: participant_id.clone(),
            identity: claims.sub.clone(),
            name: name.clone(),
            can_publish: claims.grants.can_publish,
            can_subscribe: claims.grants.can_subscribe,
            replaces,
            continues: false,
        })
        .await;
    let joined = match joined {
        Ok(j) => j,
        Err(e) => {
            departed.send_replace(true);
            conn.state.registry.remove(&claims.room, &claims.sub, connection);
            if let MediaError::NodeFull(why) = e {
                // Said as an error first, so a client can tell it from other 1013s and
                // try another node or later; the room's others are not affected.
                conn.send(&ServerMessage::error(
                    "node_full",
                    format!("media node full: {why}; try again later"),
                ))
                .await;
            }
            let (code, reason) = match e {
                MediaError::RoomFull(_) => (4007, "room full"),
                MediaError::NodeFull(_) => (1013, "node full"),
                MediaError::Overloaded => (1013, "media node overloaded"),
                MediaError::ShuttingDown => (1001, "shutting down"),
                MediaError::Refused(_) | MediaError::Busy(_) => (1008, "join refused"),
            };
            return conn.close(code, reason).await;
        }
    };
    conn.state.metrics.join_seconds.observe(started.elapsed().as_secs_f64());
    info!(room = %claims.room, identity = %claims.sub, participant = %participant_id, "joined");
    let live = Live {
        room: claims.room,
        identity: claims.sub,
        participant_id,
        name,
        connection,
        resume,
        session: joined.session,
        events: joined.events,
        kick,
        hold,
        departed,
        waiting: Vec::new(),
        host: claims.grants.room_admin,
    };
    limit.lift();
    let others = joined.others.iter().map(participant).collect();
    serve_live(conn, live, others, false).await
}

/// A parked participant whose client came back with a new peer connection (a page
/// reload): its old media session leaves without the others being told, and a new one
/// joins as the same participant; the client is told the room as on a first join.
async fn rejoin(conn: &mut Connection, mut live: Live, claims: &auth::Claims, limit: InputLimit) {
    info!(room = %live.room, participant = %live.participant_id, "rejoined with new media");
    // The new session joins before the old leaves: if it cannot, the old one leaves as
    // a participant does, and the others are told.
    let joined = conn
        .state
        .media
        .join(JoinRequest {
            room: live.room.clone(),
            participant_id: live.participant_id.clone(),
            identity: live.identity.clone(),
            name: live.name.clone(),
            can_publish: claims.grants.can_publish,
            can_subscribe: claims.grants.can_subscribe,
            replaces: true,
            continues: true,
        })
        .await;
    match joined {
        Ok(joined) => {
            let others =
                joined.others.iter().filter(|p| p.id != live.participant_id).map(participant).collect();
            live.resume = resume_token();
            conn.state.registry.set_resume(&live.room, &live.identity, live.connection, &live.resume);
            std::mem::replace(&mut live.session, joined.session).leave(LeaveReason::Reloaded);
            live.events = joined.events;
            // What the old session was told is not the new page's business.
            live.waiting.clear();
            limit.lift();
            serve_live(conn, live, others, true).await;
        }
        Err(e) => {
            live.leave(&conn.state, LeaveReason::Disconnected);
            conn.send(&ServerMessage::error("overloaded", format!("could not rejoin: {e}"))).await;
            conn.close(1013, "rejoin refused").await;
        }
    }
}

/// A participant in its room, with or without a signaling connection: what a dropped
/// connection leaves parked for a resume, and a resuming one takes over.
pub(crate) struct Live {
    room: String,
    identity: String,
    participant_id: String,
    name: String,
    connection: u64,
    resume: String,
    session: Box<dyn MediaSession>,
    events: mpsc::Receiver<SessionEvent>,
    kick: mpsc::Receiver<LeaveReason>,
    /// A host muted it (registry::Order::HoldAudio).
    hold: Arc<Notify>,
    departed: watch::Sender<bool>,
    /// Events that came while it was parked, in order.
    waiting: Vec<SessionEvent>,
    /// Its token has `roomAdmin`: it may use the host controls.
    host: bool,
}

impl Live {
    /// Leave the room: queued to the media node ahead of any later join, so a reconnect
    /// waiting for this one may go on.
    fn leave(self, state: &AppState, end: LeaveReason) {
        info!(room = %self.room, participant = %self.participant_id, reason = end.as_str(), "left");
        self.session.leave(end);
        self.departed.send_replace(true);
        state.registry.remove(&self.room, &self.identity, self.connection);
    }
}

/// Tell the client it is in (`joined`, with what happened while it was away when it
/// resumed), then relay until it leaves; a dropped connection parks the participant for
/// the resume grace period.
async fn serve_live(conn: &mut Connection, mut live: Live, others: Vec<Participant>, resumed: bool) {
    let me = Participant {
        id: live.participant_id.clone(),
        identity: live.identity.clone(),
        name: live.name.clone(),
        tracks: vec![],
    };
    // The room's talk from here on; what was said before follows `joined` as `chat` and
    // `handRaised` messages (a resumed participant gets the last lines again: it may have
    // missed some while away, and lines are numbered).
    let heard = conn.state.registry.listen(&live.room);
    let (chat, raised_hands) = heard.as_ref().map(|h| (h.lines.clone(), h.hands.clone())).unwrap_or_default();
    let mut talking = Talking {
        room: live.room.clone(),
        participant_id: live.participant_id.clone(),
        name: live.name.clone(),
        bus: heard.map(|h| h.bus),
        limit: TalkLimit::default(),
        host: live.host,
    };
    let message = ServerMessage::Joined {
        room: live.room.clone(),
        participant: me,
        participants: others,
        ice_servers: conn.state.ice_servers(&live.identity),
        resume: Some(live.resume.clone()),
        resumed,
        host: live.host,
    };
    let mut sent = conn.send(&message).await;
    let before = chat.into_iter().map(ServerMessage::Chat).chain(
        raised_hands
            .into_iter()
            .map(|participant_id| ServerMessage::HandRaised { participant_id, raised: true }),
    );
    for message in before {
        sent = sent && conn.send(&message).await;
    }
    // What came while it was away, in order; what a failed send did not deliver is kept
    // for the next resume.
    let mut waiting = std::mem::take(&mut live.waiting).into_iter();
    while sent && let Some(event) = waiting.next() {
        if let Some(message) = server_message(&event)
            && !conn.send(&message).await
        {
            live.waiting.push(event);
            sent = false;
        }
    }
    live.waiting.extend(waiting);
    let end = if sent {
        let orders = Orders { kick: &mut live.kick, hold: &live.hold };
        let (end, unsent) = relay(conn, &*live.session, &mut live.events, orders, &mut talking).await;
        live.waiting.extend(unsent);
        end
    } else {
        LeaveReason::Disconnected
    };
    let grace = conn.state.resume_grace;
    if end == LeaveReason::Disconnected && !grace.is_zero() && !conn.state.is_draining() {
        park(conn.state.clone(), live, grace);
        return;
    }
    live.leave(&conn.state, end);
    if end != LeaveReason::Disconnected {
        // What the room was told just before (a host's "remove" or "end") goes ahead of the
        // close frame; the session has left already, and a slow reader delays only this.
        let _ = tokio::time::timeout(FLUSH_WAIT, talking.flush(conn)).await;
        let (code, reason) = close_code(end);
        conn.close(code, reason).await;
    }
}

/// The participant's signaling connection dropped: its session goes on (the client's
/// media may well be fine) for `grace`, keeping its events, until a `join` with its resume
/// token takes it back; then, or when kicked or its media ends, it leaves.
fn park(state: Arc<AppState>, mut live: Live, grace: Duration) {
    let (claim, mut claimed) = oneshot::channel();
    state.registry.park(&live.room, &live.identity, live.connection, &live.resume, claim);
    state.metrics.parked.inc();
    debug!(room = %live.room, participant = %live.participant_id, "signaling dropped; parked for a resume");
    tokio::spawn(async move {
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        let mut claimable = true;
        let end = loop {
            tokio::select! {
                () = &mut deadline => {
                    state.metrics.resumes.with_label_values(&["expired"]).inc();
                    break LeaveReason::Disconnected;
                }
                asked = &mut claimed, if claimable => match asked {
                    Ok(reply) => match reply.send(live) {
                        Ok(()) => {
                            state.metrics.parked.dec();
                            return;
                        }
                        // The resuming connection went before taking it.
                        Err(back) => {
                            live = back;
                            break LeaveReason::Disconnected;
                        }
                    },
                    // Its entry was taken by a new join of the same identity (a kick follows).
                    Err(_) => claimable = false,
                },
                event = live.events.recv() => match event {
                    None => break LeaveReason::MediaTimeout,
                    Some(SessionEvent::Closed { reason }) => break reason,
                    Some(event) if live.waiting.len() < MAX_PARKED_EVENTS => live.waiting.push(event),
                    Some(_) => break LeaveReason::Disconnected,
                },
                () = live.hold.notified() => {
                    let _ = live.session.hold_audio();
                }
                reason = live.kick.recv() => break reason.unwrap_or(LeaveReason::Removed),
            }
        };
        state.metrics.parked.dec();
        live.leave(&state, end);
    });
}

/// The parked participant `identity` of `room`, if `resume` is its token.
/// A connection the server still holds (half-open after the client's network changed)
/// is first told to end, which parks it.
async fn take_parked(state: &AppState, room: &str, identity: &str, resume: &str) -> Option<Live> {
    let deadline = Instant::now() + CLAIM_WAIT;
    let claim = loop {
        if let Some(claim) = state.registry.claim(room, identity, resume) {
            break claim;
        }
        let kick = state.registry.live_kick(room, identity, resume)?;
        let _ = kick.try_send(LeaveReason::Disconnected);
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (reply, handed) = oneshot::channel();
    claim.send(reply).ok()?;
    // The parked task answers at once (no timeout: a session handed over here must not be
    // dropped unseen).
    handed.await.ok()
}

/// A resume token: 192 bits from the operating system's generator.
fn resume_token() -> String {
    let mut bytes = [0u8; 24];
    let random = rustls::crypto::aws_lc_rs::default_provider().secure_random;
    if random.fill(&mut bytes).is_err() {
        bytes.iter_mut().for_each(|b| *b = fastrand::u8(..));
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A reconnect takes the place of the connection it replaces: that one leaves the room
/// first, so a full room admits the returning participant.
pub(crate) async fn replace(previous: Ends, identity: &str) {
    let mut gone = previous.departed;
    let _ = previous.kick.try_send(LeaveReason::Replaced);
    if tokio::time::timeout(REPLACE_WAIT, gone.wait_for(|left| *left)).await.is_err() {
        debug!(%identity, "the replaced connection did not leave in time");
    }
}

fn unauthorized_reason(e: &auth::TokenError) -> &'static str {
    match e {
        auth::TokenError::Malformed => "unauthorized: malformed token",
        auth::TokenError::Algorithm => "unauthorized: unsupported algorithm",
        auth::TokenError::Signature => "unauthorized: bad signature",
        auth::TokenError::Expired => "unauthorized: token expired",
        auth::TokenError::NotYetValid => "unauthorized: token not yet valid",
        auth::TokenError::MissingClaims => "unauthorized: token lacks identity or room",
    }
}

/// What a connection's task is told from outside it: to end, or that a host muted it.
struct Orders<'a> {
    kick: &'a mut mpsc::Receiver<LeaveReason>,
    hold: &'a Notify,
}

/// Relay until the client leaves, the socket drops, the media session ends or an admin kicks.
async fn relay(
    conn: &mut Connection,
    session: &dyn MediaSession,
    events: &mut mpsc::Receiver<SessionEvent>,
    orders: Orders<'_>,
    talking: &mut Talking,
) -> (LeaveReason, Option<SessionEvent>) {
    loop {
        tokio::select! {
            frame = conn.socket.next() => {
                let message = match conn.read(frame).await {
                    Incoming::Closed => return (LeaveReason::Disconnected, None),
                    Incoming::Refused => continue,
                    Incoming::Message(m) => m,
                };
                let kind = message_type(&message);
                let result = match message {
                    ClientMessage::Join { .. } => {
                        conn.send(&ServerMessage::error("already_joined", "this connection already joined")).await;
                        Ok(())
                    }
                    ClientMessage::Leave => return (LeaveReason::Left, None),
                    ClientMessage::Ping => {
                        conn.send(&ServerMessage::Pong).await;
                        Ok(())
                    }
                    ClientMessage::Offer { sdp, tracks } => {
                        let mut labels = Vec::with_capacity(tracks.len());
                        for t in tracks {
                            match TrackSource::parse(&t.source) {
                                Some(s) => labels.push((t.mid, s)),
                                None => {
                                    let msg = format!("unknown track source {:?}", t.source);
                                    conn.send(&ServerMessage::error("bad_request", msg)).await;
                                }
                            }
                        }
                        session.offer(sdp, labels)
                    }
                    ClientMessage::Answer { sdp } => session.answer(sdp),
                    ClientMessage::Candidate { candidate } => match candidate {
                        Some(c) if !c.is_empty() => session.candidate(c),
                        _ => Ok(()),
                    },
                    ClientMessage::Mute { track_id, muted } => session.set_muted(track_id, muted),
                    ClientMessage::Subscribe { tracks } => match shown_tracks(tracks) {
                        Ok(shown) => session.subscribe(shown),
                        Err(message) => {
                            conn.send(&ServerMessage::error("bad_request", message)).await;
                            Ok(())
                        }
                    },
                    ClientMessage::Chat { text } => talk(conn, talking, checked_chat(&text).map(Said::Chat)).await,
                    ClientMessage::RaiseHand { raised } => talk(conn, talking, Ok(Said::Hand(raised))).await,
                    ClientMessage::Reaction { emoji } => {
                        talk(conn, talking, checked_reaction(&emoji).map(Said::Reaction)).await
                    }
                    ClientMessage::MuteParticipant { participant_id } => {
                        host_action(conn, talking, Action::Mute(Who::Participant(&participant_id))).await
                    }
                    ClientMessage::MuteAll => host_action(conn, talking, Action::MuteAll).await,
                    ClientMessage::RemoveParticipant { participant_id } => {
                        host_action(conn, talking, Action::Remove(Who::Participant(&participant_id))).await
                    }
                    ClientMessage::EndMeeting => host_action(conn, talking, Action::End).await,
                };
                if let Err(e) = result {
                    let code = match (&e, kind) {
                        (MediaError::Refused(_), "offer" | "answer") => "bad_sdp",
                        (MediaError::Refused(_), _) => "limit_exceeded",
                        (MediaError::Busy(_), _) => "rate_limited",
                        (
                            MediaError::Overloaded
                            | MediaError::NodeFull(_)
                            | MediaError::ShuttingDown
                            | MediaError::RoomFull(_),
                            _,
                        ) => "overloaded",
                    };
                    conn.send(&ServerMessage::error(code, e.to_string())).await;
                }
            }
            event = events.recv() => {
                let Some(event) = event else { return (LeaveReason::MediaTimeout, None) };
                if let SessionEvent::Closed { reason } = event {
                    return (reason, None);
                }
                if let Some(message) = server_message(&event)
                    && !conn.send(&message).await
                {
                    // Not delivered: kept for a resume.
                    return (LeaveReason::Disconnected, Some(event));
                }
            }
            () = orders.hold.notified() => {
                if let Err(e) = session.hold_audio() {
                    warn!(participant = %talking.participant_id, error = %e, "a host's mute not carried out");
                }
            }
            reason = orders.kick.recv() => return (reason.unwrap_or(LeaveReason::Removed), None),
            heard = talking.heard() => {
                match heard {
                    Some(message) => if !conn.send(&message).await {
                        return (LeaveReason::Disconnected, None);
                    },
                    None => talking.bus = None,
                }
            }
        }
    }
}

/// Most tracks one `subscribe` may name: a page of tiles plus a screen share, with room.
pub const MAX_SHOWN_TRACKS: usize = 100;

/// The tracks of a `subscribe`, each with the quality its tile needs.
fn shown_tracks(tracks: Vec<crate::protocol::ShownTrack>) -> Result<Vec<ShownTrack>, String> {
    if tracks.len() > MAX_SHOWN_TRACKS {
        return Err(format!("subscribe names {} tracks; at most {MAX_SHOWN_TRACKS}", tracks.len()));
    }
    tracks
        .into_iter()
        .map(|t| {
            let quality = match (t.quality.as_deref(), t.width, t.height) {
                (Some(name), _, _) => quality_named(name)
                    .ok_or_else(|| format!("unknown quality {name:?} (low, medium, high)"))?,
                (None, Some(w), Some(h)) => quality_for_tile(w, h),
                (None, _, _) => {
                    return Err(format!("track {}: give width and height, or quality", t.track_id));
                }
            };
            Ok(ShownTrack { track_id: t.track_id, quality })
        })
        .collect()
}

/// A short random id for participants.
pub(crate) fn random_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    (0..10).map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char).collect()
}
