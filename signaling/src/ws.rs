//! One signaling WebSocket: authenticate the join, then relay between the client and
//! its media session until either side ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use proto::quality::{quality_for_tile, quality_named};
// The protocol's qualities are the media node's layers.
const _: () = assert!(proto::quality::MAX_LAYERS == sfu::api::MAX_LAYERS);
use sfu::api::{JoinRequest, LeaveReason, MediaError, MediaSession, SessionEvent, ShownTrack, TrackSource};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::AppState;
use crate::auth;
use crate::protocol::{ClientMessage, Participant, ServerMessage, close_code, participant, server_message};

const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages above this get an error; the transport's own limit (which closes) is higher.
/// SDP grows with the tracks a participant receives (a full 300-person room is several
/// hundred m-lines, about 0.7 KiB each), so the limit is sized for that.
pub const MAX_MESSAGE: usize = 1024 * 1024;
pub const TRANSPORT_MAX_MESSAGE: usize = 4 * 1024 * 1024;
const MAX_MESSAGES_PER_SECOND: u32 = 200;

static CONNECTIONS: AtomicU64 = AtomicU64::new(1);

struct Connection {
    socket: WebSocket,
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
    async fn send(&mut self, message: &ServerMessage) -> bool {
        if let ServerMessage::Error { code, .. } = message {
            self.state.metrics.errors.with_label_values(&[code.as_str()]).inc();
        }
        let text = serde_json::to_string(message).expect("server messages serialize");
        self.socket.send(Message::Text(text.into())).await.is_ok()
    }

    async fn close(&mut self, code: u16, reason: &'static str) {
        let frame = CloseFrame { code, reason: Utf8Bytes::from_static(reason) };
        let _ = self.socket.send(Message::Close(Some(frame))).await;
    }

    /// Turn one frame from the client into a message, answering bad ones with an error.
    async fn read(&mut self, frame: Option<Result<Message, axum::Error>>) -> Incoming {
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
    }
}

fn classify_json_error(text: &str, e: serde_json::Error) -> ServerMessage {
    match serde_json::from_str::<serde_json::Value>(text) {
        Err(_) => ServerMessage::error("bad_json", format!("not JSON: {e}")),
        Ok(v) => match v.get("type").and_then(|t| t.as_str()) {
            None => ServerMessage::error("bad_request", "a message needs a string \"type\""),
            Some(t) if !KNOWN_TYPES.contains(&t) => {
                ServerMessage::error("unknown_type", format!("unknown message type {t:?}"))
            }
            Some(t) => ServerMessage::error("bad_request", format!("bad {t} message: {e}")),
        },
    }
}

const KNOWN_TYPES: &[&str] = &["join", "offer", "answer", "candidate", "mute", "subscribe", "leave", "ping"];

pub async fn serve(socket: WebSocket, state: Arc<AppState>) {
    state.metrics.connections.inc();
    let mut conn = Connection { socket, state: state.clone(), window_start: Instant::now(), window_count: 0 };
    run(&mut conn).await;
    state.metrics.connections.dec();
}

async fn run(conn: &mut Connection) {
    // The first message must be a join.
    let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    let token = loop {
        let frame = match tokio::time::timeout_at(deadline, conn.socket.recv()).await {
            Ok(f) => f,
            Err(_) => return conn.close(4002, "join timeout").await,
        };
        match conn.read(frame).await {
            Incoming::Closed => return,
            Incoming::Refused => continue,
            Incoming::Message(ClientMessage::Join { token }) => break token,
            Incoming::Message(_) => {
                if !conn.send(&ServerMessage::error("not_joined", "send join first")).await {
                    return;
                }
            }
        }
    };
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
    let connection = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
    let participant_id = format!("PA_{}", random_id());
    let name = claims.name.clone().filter(|n| !n.trim().is_empty()).unwrap_or_else(|| claims.sub.clone());
    let (kick_tx, mut kick) = mpsc::channel(4);
    if let Some(previous) =
        conn.state.registry.insert(&claims.room, &claims.sub, connection, &participant_id, &name, kick_tx)
    {
        let _ = previous.send(LeaveReason::Replaced).await;
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
        })
        .await;
    let joined = match joined {
        Ok(j) => j,
        Err(e) => {
            conn.state.registry.remove(&claims.room, &claims.sub, connection);
            let (code, reason) = match e {
                MediaError::RoomFull(_) => (4007, "room full"),
                MediaError::Overloaded => (1013, "media node overloaded"),
                MediaError::ShuttingDown => (1001, "shutting down"),
            };
            return conn.close(code, reason).await;
        }
    };
    let me = Participant { id: participant_id.clone(), identity: claims.sub.clone(), name, tracks: vec![] };
    let message = ServerMessage::Joined {
        room: claims.room.clone(),
        participant: me,
        participants: joined.others.iter().map(participant).collect(),
    };
    conn.state.metrics.join_seconds.observe(started.elapsed().as_secs_f64());
    info!(room = %claims.room, identity = %claims.sub, participant = %participant_id, "joined");
    let session = joined.session;
    let mut events = joined.events;
    let end = if conn.send(&message).await {
        relay(conn, &*session, &mut events, &mut kick).await
    } else {
        LeaveReason::Disconnected
    };
    conn.state.registry.remove(&claims.room, &claims.sub, connection);
    info!(room = %claims.room, participant = %participant_id, reason = end.as_str(), "left");
    session.leave(end);
    if end != LeaveReason::Disconnected {
        let (code, reason) = close_code(end);
        conn.close(code, reason).await;
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

/// Relay until the client leaves, the socket drops, the media session ends or an admin kicks.
async fn relay(
    conn: &mut Connection,
    session: &dyn MediaSession,
    events: &mut mpsc::Receiver<SessionEvent>,
    kick: &mut mpsc::Receiver<LeaveReason>,
) -> LeaveReason {
    loop {
        tokio::select! {
            frame = conn.socket.recv() => {
                let message = match conn.read(frame).await {
                    Incoming::Closed => return LeaveReason::Disconnected,
                    Incoming::Refused => continue,
                    Incoming::Message(m) => m,
                };
                let result = match message {
                    ClientMessage::Join { .. } => {
                        conn.send(&ServerMessage::error("already_joined", "this connection already joined")).await;
                        Ok(())
                    }
                    ClientMessage::Leave => return LeaveReason::Left,
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
                };
                if let Err(e) = result {
                    conn.send(&ServerMessage::error("overloaded", e.to_string())).await;
                }
            }
            event = events.recv() => {
                let Some(event) = event else { return LeaveReason::MediaTimeout };
                if let SessionEvent::Closed { reason } = event {
                    return reason;
                }
                if let Some(message) = server_message(&event)
                    && !conn.send(&message).await
                {
                    return LeaveReason::Disconnected;
                }
            }
            reason = kick.recv() => {
                return reason.unwrap_or(LeaveReason::Removed);
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
fn random_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    (0..10).map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char).collect()
}
