//! WHIP ingest (RFC 9725) and WHEP playback: a publisher (OBS, GStreamer, ffmpeg, a
//! browser) `POST`s an SDP offer to `/whip/<room>` with a bearer token that may publish
//! there, and gets `201` with the answer and a `Location` naming its session; a player
//! does the same at `/whep/<room>` with a token that may subscribe, its offer's recvonly
//! m-lines carrying what is live. `DELETE` on the `Location` ends the session, `PATCH`
//! trickles candidates. Each session joins the room like a participant, so the room's
//! participants see a publisher like any other.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use proto::quality::quality_for_tile;
use sfu::api::{
    JoinRequest, LeaveReason, MediaError, MediaSession, SessionEvent, ShownTrack, TrackKind, TrackSource,
};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{debug, info};

use crate::ws::{CONNECTIONS, random_id, replace};
use crate::{AppState, Ends, auth};

/// Which side of a broadcast an HTTP session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// WHIP: publishes, subscribes to nothing.
    Publisher,
    /// WHEP: receives the room's tracks, publishes nothing.
    Viewer,
}

impl Role {
    fn path(self) -> &'static str {
        match self {
            Role::Publisher => "whip",
            Role::Viewer => "whep",
        }
    }
}

/// How long a WHEP player is told to wait before asking again while nothing is live.
const RETRY_AFTER_SECS: &str = "5";

/// How long the media node may take to answer an offer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the owner of a WHIP session's media can be asked to do.
pub(crate) enum Command {
    /// Trickled candidate lines; the reply says whether they were taken.
    Candidates(Vec<String>, oneshot::Sender<Result<(), MediaError>>),
}

/// A WHIP or WHEP session as the HTTP side knows it: the room, who may end it, and how to
/// reach it.
#[derive(Clone)]
pub(crate) struct Resource {
    pub role: Role,
    pub room: String,
    /// The token subject that opened it (and may end it).
    pub identity: String,
    pub ice_ufrag: Option<String>,
    pub commands: mpsc::Sender<Command>,
    pub kick: mpsc::Sender<LeaveReason>,
}

/// A refusal, made into its response at the handler.
pub(crate) struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        whip_error(self.0, &self.1)
    }
}

fn whip_error(status: StatusCode, message: &str) -> Response {
    let mut response = (status, format!("{message}\n")).into_response();
    cors(response.headers_mut());
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

fn cors(headers: &mut HeaderMap) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, ETag, Link, Retry-After"),
    );
}

/// `OPTIONS` (a browser's preflight, or a client asking what is accepted).
pub(crate) async fn options() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    cors(headers);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, PATCH, DELETE, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, If-Match"),
    );
    headers.insert("accept-post", HeaderValue::from_static("application/sdp"));
    response
}

/// The request's bearer token: the `Authorization` header, else an `access_token` query
/// parameter (RFC 6750 section 2.3), which is how a viewer sent on to an edge by `307`
/// keeps its token (clients drop `Authorization` on a redirect to another host).
fn bearer_token<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(crate::bearer).or_else(|| {
        query?.split('&').find_map(|pair| pair.strip_prefix("access_token=")).filter(|t| !t.is_empty())
    })
}

/// The verified claims of the request's bearer token, if they allow `role` in `room`.
pub(crate) fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
    room: &str,
    role: Role,
) -> Result<auth::Claims, Refusal> {
    let Some(token) = bearer_token(headers, query) else {
        return Err(Refusal(StatusCode::UNAUTHORIZED, "missing bearer token".into()));
    };
    let claims = auth::verify(&state.secret, token, auth::now_unix()).map_err(|e| {
        state.metrics.auth_failures.with_label_values(&[e.label()]).inc();
        Refusal(StatusCode::UNAUTHORIZED, format!("unauthorized: {e}"))
    })?;
    let (allowed, what) = match role {
        Role::Publisher => (claims.grants.can_publish, "publish"),
        Role::Viewer => (claims.grants.can_subscribe, "watch"),
    };
    if claims.room != room || !allowed {
        return Err(Refusal(StatusCode::FORBIDDEN, format!("the token may not {what} in this room")));
    }
    Ok(claims)
}

/// The player's size in device pixels from the `width` and `height` query parameters of a
/// WHEP `POST`: the simulcast layer a viewer gets is the one that size needs
/// (docs/protocol.md, *WHEP*). Without them (or unreadable) a player is taken to be
/// 1280x720 and gets the best layer.
fn player_size(query: Option<&str>) -> (u32, u32) {
    let param = |name: &str| {
        query?
            .split('&')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|v| (1..=16_384).contains(v))
    };
    match (param("width"), param("height")) {
        (Some(w), Some(h)) => (w, h),
        _ => PLAYER_SIZE,
    }
}

/// The size of a player that did not say.
const PLAYER_SIZE: (u32, u32) = (1280, 720);

fn is_content_type(headers: &HeaderMap, wanted: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(wanted))
}

/// The mids of an offer's audio and video m-lines, labelled microphone and camera (WHIP
/// has no labels of its own).
fn sources(sdp: &str) -> Vec<(String, TrackSource)> {
    let mut out = Vec::new();
    let mut kind = None;
    for line in sdp.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            kind = m.split_whitespace().next().map(str::to_string);
        } else if let (Some(mid), Some(k)) = (line.strip_prefix("a=mid:"), kind.as_deref()) {
            match k {
                "audio" => out.push((mid.to_string(), TrackSource::Microphone)),
                "video" => out.push((mid.to_string(), TrackSource::Camera)),
                _ => {}
            }
        }
    }
    out
}

fn ice_ufrag(sdp: &str) -> Option<String> {
    sdp.lines().find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:")).map(str::to_string)
}

/// `POST /whip/<room>`: publish.
pub(crate) async fn publish(
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    run_to_end(start(state, room, query, headers, body, Role::Publisher)).await
}

/// `POST /whep/<room>`: watch.
pub(crate) async fn play(
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    run_to_end(start(state, room, query, headers, body, Role::Viewer)).await
}

/// Runs a session's start on a task of its own: a client that hangs up mid-request must
/// not cancel it halfway (a registry entry with no session behind it).
async fn run_to_end(start: impl Future<Output = Response> + Send + 'static) -> Response {
    tokio::spawn(start)
        .await
        .unwrap_or_else(|_| whip_error(StatusCode::INTERNAL_SERVER_ERROR, "the session could not start"))
}

async fn start(
    state: Arc<AppState>,
    room: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
    role: Role,
) -> Response {
    let claims = match authorize(&state, &headers, query.as_deref(), &room, role) {
        Ok(c) => c,
        Err(refusal) => return refusal.into_response(),
    };
    // The broadcast tier (ADR 0012): publishers go to the origin, viewers to an edge.
    if role == Role::Publisher && state.media.is_edge() {
        return whip_error(
            StatusCode::FORBIDDEN,
            "this node is an edge of the broadcast tier: publish to its origin",
        );
    }
    if role == Role::Viewer
        && !state.media.is_edge()
        && let Some(edge) = state.media.edge_for_viewer()
    {
        let token = bearer_token(&headers, query.as_deref()).unwrap_or_default();
        let (width, height) = player_size(query.as_deref());
        let to = format!(
            "{edge}/whep/{}?access_token={}&width={width}&height={height}",
            percent_encode(&room),
            percent_encode(token)
        );
        // A Location that cannot be a header (it never should) serves the viewer here.
        if let Ok(location) = HeaderValue::from_str(&to) {
            state.metrics.whep_redirects.inc();
            let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
            cors(response.headers_mut());
            response.headers_mut().insert(header::LOCATION, location);
            return response;
        }
    }
    if !is_content_type(&headers, "application/sdp") {
        return whip_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "the offer must be application/sdp");
    }
    let Ok(offer) = String::from_utf8(body.to_vec()) else {
        return whip_error(StatusCode::BAD_REQUEST, "the offer is not UTF-8 text");
    };
    if state.is_draining() {
        return whip_error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    if role == Role::Viewer
        && let Err(e) = state.media.pull(&room).await
    {
        debug!(%room, error = %e, "nothing to play from the origin");
        return not_live();
    }
    let connection = CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let participant_id = format!("PA_{}", random_id());
    let name = claims.name.clone().filter(|n| !n.trim().is_empty()).unwrap_or_else(|| claims.sub.clone());
    // A publisher is one per identity (publishing again replaces it); viewers sharing a
    // token are many.
    let identity = match role {
        Role::Publisher => claims.sub.clone(),
        Role::Viewer => format!("{}~{}", claims.sub, random_id()),
    };
    let (ends, kick, hold, departed) = Ends::new();
    let kick_tx = ends.kick.clone();
    let previous = state.registry.insert(&room, &identity, connection, &participant_id, &name, ends);
    let replaces = previous.is_some();
    if let Some(previous) = previous {
        replace(previous, &identity).await;
    }
    let request = JoinRequest {
        room: room.clone(),
        participant_id: participant_id.clone(),
        identity: identity.clone(),
        name,
        replaces,
        continues: false,
        can_publish: role == Role::Publisher,
        can_subscribe: role == Role::Viewer,
    };
    let forget = |state: &AppState| {
        departed.send_replace(true);
        state.registry.remove(&room, &identity, connection);
    };
    let joined = match state.media.join(request).await {
        Ok(j) => j,
        Err(e) => {
            forget(&state);
            let status = match e {
                MediaError::RoomFull(_) => StatusCode::FORBIDDEN,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            let mut response = whip_error(status, &e.to_string());
            if matches!(e, MediaError::NodeFull(_)) {
                // The node's load, not the request: another try later may be admitted.
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            return response;
        }
    };
    let (session, mut events) = (joined.session, joined.events);
    let labels = match role {
        Role::Publisher => sources(&offer),
        Role::Viewer => {
            // What is live: every video track at the quality of the player's size; audio
            // follows the room's speaker selection.
            let (width, height) = player_size(query.as_deref());
            let live: Vec<ShownTrack> = joined
                .others
                .iter()
                .flat_map(|p| &p.tracks)
                .filter(|t| t.kind == TrackKind::Video)
                .map(|t| ShownTrack { track_id: t.id.clone(), quality: quality_for_tile(width, height) })
                .collect();
            let audible = joined.others.iter().flat_map(|p| &p.tracks).any(|t| t.kind == TrackKind::Audio);
            if live.is_empty() && !audible {
                session.leave(LeaveReason::Left);
                forget(&state);
                return not_live();
            }
            if let Err(e) = session.subscribe(live) {
                session.leave(LeaveReason::MediaError);
                forget(&state);
                return whip_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
            }
            Vec::new()
        }
    };
    if let Err(e) = session.offer(offer.clone(), labels) {
        session.leave(LeaveReason::MediaError);
        forget(&state);
        return whip_error(StatusCode::BAD_REQUEST, &e.to_string());
    }
    let answer = match tokio::time::timeout(ANSWER_TIMEOUT, first_answer(&mut events)).await {
        Ok(Ok(sdp)) => sdp,
        Ok(Err(message)) => {
            session.leave(LeaveReason::MediaError);
            forget(&state);
            return whip_error(StatusCode::BAD_REQUEST, &message);
        }
        Err(_) => {
            session.leave(LeaveReason::MediaError);
            forget(&state);
            return whip_error(StatusCode::SERVICE_UNAVAILABLE, "the media node did not answer in time");
        }
    };
    let (commands_tx, commands) = mpsc::channel(8);
    state.whip.lock().insert(
        participant_id.clone(),
        Resource {
            role,
            room: room.clone(),
            identity: claims.sub.clone(),
            ice_ufrag: ice_ufrag(&offer),
            commands: commands_tx,
            kick: kick_tx,
        },
    );
    let kind = role.path();
    info!(%room, identity = %identity, participant = %participant_id, kind, "HTTP media session started");
    let location = format!("/{kind}/{room}/{participant_id}");
    let ice_servers = state.ice_servers(&identity);
    let owner = state.clone();
    tokio::spawn(async move {
        let end = own(session.as_ref(), events, commands, kick, &hold).await;
        info!(%room, participant = %participant_id, reason = end.as_str(), kind, "HTTP media session ended");
        owner.whip.lock().remove(&participant_id);
        session.leave(end);
        departed.send_replace(true);
        owner.registry.remove(&room, &identity, connection);
    });
    let mut response = (StatusCode::CREATED, answer).into_response();
    let headers = response.headers_mut();
    cors(headers);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/sdp"));
    if let Ok(value) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, value);
    }
    // TURN servers as RFC 9725 (WHIP) and WHEP say: one Link per URL.
    for server in &ice_servers {
        for url in &server.urls {
            // Quoted strings (RFC 8288): a quote or backslash in the identity is escaped.
            let quoted = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
            let link = format!(
                "<{url}>; rel=\"ice-server\"; username=\"{}\"; credential=\"{}\"; credential-type=\"password\"",
                quoted(&server.username),
                quoted(&server.credential)
            );
            if let Ok(value) = HeaderValue::from_str(&link) {
                headers.append(header::LINK, value);
            }
        }
    }
    response
}

/// `s` as one URL path segment or query value: unreserved characters as they are, every
/// other byte as `%XX` (RFC 3986).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `409` with `Retry-After`: a player asks again later.
fn not_live() -> Response {
    let mut refusal = whip_error(StatusCode::CONFLICT, "nothing is live in this room yet");
    refusal.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
    refusal
}

/// The answer to the publisher's offer, or the error the node sent instead.
async fn first_answer(events: &mut mpsc::Receiver<SessionEvent>) -> Result<String, String> {
    while let Some(event) = events.recv().await {
        match event {
            SessionEvent::Answer { sdp, .. } => return Ok(sdp),
            SessionEvent::Error { code: "bad_sdp", message } => return Err(message),
            SessionEvent::Closed { reason } => return Err(format!("the session ended: {}", reason.as_str())),
            _ => {}
        }
    }
    Err("the session ended".into())
}

/// Hold a WHIP session's media until it ends: events are read (and dropped: a WHIP client
/// has no channel for them), trickled candidates passed on.
async fn own(
    session: &dyn MediaSession,
    mut events: mpsc::Receiver<SessionEvent>,
    mut commands: mpsc::Receiver<Command>,
    mut kick: mpsc::Receiver<LeaveReason>,
    hold: &Notify,
) -> LeaveReason {
    loop {
        tokio::select! {
            event = events.recv() => match event {
                None => return LeaveReason::MediaTimeout,
                Some(SessionEvent::Closed { reason }) => return reason,
                Some(other) => debug!(?other, "WHIP session event not delivered"),
            },
            command = commands.recv() => match command {
                None => return LeaveReason::Left,
                Some(Command::Candidates(lines, reply)) => {
                    let taken = lines.into_iter().try_for_each(|c| session.candidate(c));
                    let _ = reply.send(taken);
                }
            },
            reason = kick.recv() => return reason.unwrap_or(LeaveReason::Removed),
            // Held until it publishes again: a WHIP client has no way to unmute.
            () = hold.notified() => {
                let _ = session.hold_audio();
            }
        }
    }
}

/// The resource named by the path, if the request's token may act on it.
fn resource_for(
    state: &AppState,
    headers: &HeaderMap,
    room: &str,
    id: &str,
    role: Role,
) -> Result<Resource, Refusal> {
    let claims = authorize(state, headers, None, room, role)?;
    match state.whip.lock().get(id) {
        Some(r) if r.role == role && r.room == room && r.identity == claims.sub => Ok(r.clone()),
        Some(r) if r.role == role && r.room == room => {
            Err(Refusal(StatusCode::FORBIDDEN, "this session was opened with another token".into()))
        }
        _ => Err(Refusal(StatusCode::NOT_FOUND, "no such session".into())),
    }
}

/// `DELETE /whip/<room>/<id>`: end the broadcast.
pub(crate) async fn end_publish(
    state: State<Arc<AppState>>,
    path: Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    end(state, path, headers, Role::Publisher).await
}

/// `DELETE /whep/<room>/<id>`: stop watching.
pub(crate) async fn end_play(
    state: State<Arc<AppState>>,
    path: Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    end(state, path, headers, Role::Viewer).await
}

async fn end(
    State(state): State<Arc<AppState>>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
    role: Role,
) -> Response {
    let kick = match resource_for(&state, &headers, &room, &id, role) {
        Ok(r) => r.kick,
        Err(refusal) => return refusal.into_response(),
    };
    let _ = kick.try_send(LeaveReason::Left);
    let mut response = StatusCode::OK.into_response();
    cors(response.headers_mut());
    response
}

/// `PATCH /whip/<room>/<id>`.
pub(crate) async fn patch_publish(
    state: State<Arc<AppState>>,
    path: Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    patch(state, path, headers, body, Role::Publisher).await
}

/// `PATCH /whep/<room>/<id>`.
pub(crate) async fn patch_play(
    state: State<Arc<AppState>>,
    path: Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    patch(state, path, headers, body, Role::Viewer).await
}

/// `PATCH` with `application/trickle-ice-sdpfrag`: candidates are taken (`204`); an ICE
/// restart (new credentials) is not supported (`422`).
async fn patch(
    State(state): State<Arc<AppState>>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
    role: Role,
) -> Response {
    let (commands, ufrag) = match resource_for(&state, &headers, &room, &id, role) {
        Ok(r) => (r.commands, r.ice_ufrag),
        Err(refusal) => return refusal.into_response(),
    };
    if !is_content_type(&headers, "application/trickle-ice-sdpfrag") {
        return whip_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "expected application/trickle-ice-sdpfrag");
    }
    let fragment = String::from_utf8_lossy(&body);
    if let Some(new_ufrag) = ice_ufrag(&fragment)
        && Some(&new_ufrag) != ufrag.as_ref()
    {
        return whip_error(StatusCode::UNPROCESSABLE_ENTITY, "ICE restarts are not supported; publish again");
    }
    let lines: Vec<String> = fragment
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("a=candidate:").map(|c| format!("candidate:{c}")))
        .collect();
    let (reply, taken) = oneshot::channel();
    if commands.send(Command::Candidates(lines, reply)).await.is_err() {
        return whip_error(StatusCode::NOT_FOUND, "the WHIP session has ended");
    }
    match taken.await {
        Ok(Ok(())) => {
            let mut response = StatusCode::NO_CONTENT.into_response();
            cors(response.headers_mut());
            response
        }
        Ok(Err(e)) => whip_error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(_) => whip_error(StatusCode::NOT_FOUND, "the WHIP session has ended"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mids_are_labelled_by_kind() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
                   a=mid:1\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n";
        assert_eq!(
            sources(sdp),
            vec![("0".to_string(), TrackSource::Microphone), ("1".to_string(), TrackSource::Camera)]
        );
    }

    #[test]
    fn a_redirect_keeps_any_room_name_and_the_token_in_one_piece() {
        assert_eq!(percent_encode("physics-101_a.b~"), "physics-101_a.b~");
        assert_eq!(percent_encode("a b?c#d/e&f"), "a%20b%3Fc%23d%2Fe%26f");
        assert_eq!(percent_encode("物理"), "%E7%89%A9%E7%90%86");
        assert!(HeaderValue::from_str(&percent_encode("x\r\nSet-Cookie: y")).is_ok(), "no header injection");
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers, Some("a=1&access_token=abc.def")), Some("abc.def"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer hdr"));
        assert_eq!(bearer_token(&headers, Some("access_token=q")), Some("hdr"), "the header wins");
    }

    #[test]
    fn a_player_says_its_size_or_gets_the_best_layer() {
        assert_eq!(player_size(Some("access_token=x&width=640&height=360")), (640, 360));
        assert_eq!(player_size(Some("height=180&width=320")), (320, 180));
        assert_eq!(player_size(None), PLAYER_SIZE);
        assert_eq!(player_size(Some("width=640")), PLAYER_SIZE, "both or neither");
        assert_eq!(player_size(Some("width=0&height=360")), PLAYER_SIZE);
        assert_eq!(player_size(Some("width=-1&height=x")), PLAYER_SIZE);
        assert_eq!(player_size(Some("width=99999999&height=360")), PLAYER_SIZE);
        assert_eq!(player_size(Some("widths=640&height=360")), PLAYER_SIZE, "names match whole");
        assert_eq!(quality_for_tile(player_size(Some("width=640&height=360")).0, 360), 1);
    }
}
