//! Huiyi's control plane: the HTTP and WebSocket API (docs/protocol.md), token auth,
//! the admin API, metrics, and the web client.

/// Access tokens (the `proto` crate's): signaling mints and verifies them.
pub use proto::token as auth;
mod host;
pub mod http;
mod live;
mod metrics;
pub mod protocol;
mod registry;
mod talk;
mod upgrade;
mod whip;
mod ws;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use sfu::api::NodeApi;

pub use metrics::SignalingMetrics;
pub use registry::{Ends, Order, Registry, Who};

/// How long a token from the dev endpoint lasts.
const DEV_TOKEN_TTL_SECS: u64 = 6 * 3600;

pub struct AppState {
    /// The media node rooms are placed on (the embedded one, in one process).
    pub media: Box<dyn NodeApi>,
    pub registry: Registry,
    pub secret: Vec<u8>,
    /// The dev token endpoint answers only when no real secret is configured.
    pub dev_tokens: bool,
    pub metrics: SignalingMetrics,
    pub prometheus: prometheus::Registry,
    /// Set when the process is asked to stop: new joins are refused and `/readyz` says
    /// `draining` while the participants already in finish.
    pub draining: AtomicBool,
    /// WHIP sessions by the id in their `Location`.
    pub whip: WhipSessions,
    /// TURN servers handed to clients with credentials of their own (`[turn]`).
    pub turn: Option<Turn>,
    /// How long a participant whose signaling connection dropped stays in its room for
    /// a resume (`join` with `resume`); zero: it leaves at once.
    pub resume_grace: std::time::Duration,
}

/// TURN servers for clients whose network lets nothing else through, with time-limited
/// credentials by the TURN REST convention (proto::turn): the TURN server (coturn with
/// `use-auth-secret`) shares `secret` and checks them itself.
#[derive(Debug, Clone)]
pub struct Turn {
    /// `turn:` and `turns:` URLs (RFC 7065), e.g. `turn:turn.example.com:3478?transport=udp`.
    pub urls: Vec<String>,
    pub secret: Vec<u8>,
    /// How long credentials stay valid.
    pub ttl: std::time::Duration,
}

impl AppState {
    /// The `iceServers` a participant named `identity` is given now (none without `[turn]`).
    pub fn ice_servers(&self, identity: &str) -> Vec<proto::turn::IceServer> {
        match &self.turn {
            Some(turn) if !turn.urls.is_empty() => {
                let expires = auth::now_unix() + turn.ttl.as_secs();
                vec![proto::turn::ice_server(&turn.secret, &turn.urls, identity, expires)]
            }
            _ => Vec::new(),
        }
    }
}

/// The WHIP sessions of this node, by the id in their `Location`.
#[derive(Default)]
pub struct WhipSessions(std::sync::Mutex<std::collections::HashMap<String, whip::Resource>>);

impl WhipSessions {
    pub(crate) fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, whip::Resource>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl AppState {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// Everything on one listener: the web client, signaling, health, metrics and the admin API.
pub fn router(state: Arc<AppState>) -> Router {
    client_router(state.clone()).merge(admin_routes(state))
}

/// What participants need: the web client, signaling, the dev token endpoint, health.
/// With an admin listener of its own (`--admin-http`) this is all the public port serves.
pub fn client_router(state: Arc<AppState>) -> Router {
    let mut router = Router::new();
    for &(path, body) in SCRIPTS {
        let script = ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], body);
        router = router.route(path, get(move || async move { script }));
    }
    router
        .route("/", get(page))
        .route("/room/{room}", get(page))
        .route("/live/{room}", get(live_page))
        .route("/live/{room}/go", get(live_page))
        .route("/live/{room}/events", get(live::events))
        .route("/live.js", get(live_script))
        .route("/style.css", get(style))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/rtc", get(websocket))
        .route("/v1/dev/token", get(dev_token))
        .route("/v1/ice-servers", get(ice_servers))
        .route("/whip/{room}", post(whip::publish).options(whip::options))
        .route(
            "/whip/{room}/{id}",
            delete(whip::end_publish).patch(whip::patch_publish).options(whip::options),
        )
        .route("/whep/{room}", post(whip::play).options(whip::options))
        .route("/whep/{room}/{id}", delete(whip::end_play).patch(whip::patch_play).options(whip::options))
        .with_state(state)
}

/// What operators need: metrics, the admin API, and health again (for probes that only
/// reach the admin address).
pub fn admin_router(state: Arc<AppState>) -> Router {
    let health = Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz));
    health.with_state(state.clone()).merge(admin_routes(state))
}

fn admin_routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/v1/rooms", get(list_rooms))
        .route("/v1/edges", get(list_edges))
        .route("/v1/rooms/{room}", delete(close_room))
        .route("/v1/rooms/{room}/participants", get(list_participants))
        .route("/v1/rooms/{room}/participants/{identity}", delete(remove_participant))
        .route("/v1/rooms/{room}/participants/{identity}/mute", post(mute_participant))
        .route("/v1/rooms/{room}/mute", post(mute_all))
        .with_state(state)
}

async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], include_str!("../web/index.html"))
}

async fn live_page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], include_str!("../web/live.html"))
}

async fn live_script() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], include_str!("../web/live.js"))
}

/// The meeting page's modules (app.js imports the others).
const SCRIPTS: &[(&str, &str)] = &[
    ("/app.js", include_str!("../web/app.js")),
    ("/state.js", include_str!("../web/state.js")),
    ("/lobby.js", include_str!("../web/lobby.js")),
    ("/tiles.js", include_str!("../web/tiles.js")),
    ("/publish.js", include_str!("../web/publish.js")),
    ("/talk.js", include_str!("../web/talk.js")),
    ("/hook.js", include_str!("../web/hook.js")),
];

async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], include_str!("../web/style.css"))
}

/// Liveness: the process answers and every media thread went round its loop recently
/// (`draining` once it was asked to stop: still alive, finishing its rooms).
async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    match state.media.health() {
        Ok(()) if state.is_draining() => "draining".into_response(),
        Ok(()) => "ok".into_response(),
        Err(problem) => (StatusCode::SERVICE_UNAVAILABLE, problem).into_response(),
    }
}

/// Readiness, for load balancers: live and taking new participants (not draining).
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    match state.media.health() {
        Ok(()) => "ready".into_response(),
        Err(problem) => (StatusCode::SERVICE_UNAVAILABLE, problem).into_response(),
    }
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let mut out = String::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode_utf8(&state.prometheus.gather(), &mut out) {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("metrics encoding failed: {e}")).into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

async fn websocket(State(state): State<Arc<AppState>>, request: Request) -> Response {
    upgrade::accept(request, ws::transport_config(), move |socket, limit, admitted| {
        ws::serve(socket, limit, admitted, state)
    })
}

#[derive(Deserialize)]
struct DevTokenQuery {
    room: String,
    identity: String,
    name: Option<String>,
    /// `1`: the participant may also use the host controls (roomAdmin for its room).
    host: Option<String>,
}

async fn dev_token(State(state): State<Arc<AppState>>, Query(q): Query<DevTokenQuery>) -> Response {
    if !state.dev_tokens {
        return error(
            StatusCode::NOT_FOUND,
            "the dev token endpoint is off when an API secret is configured",
        );
    }
    if q.room.is_empty() || q.identity.is_empty() || q.room.len() > 128 || q.identity.len() > 128 {
        return error(StatusCode::BAD_REQUEST, "room and identity must be 1 to 128 characters");
    }
    let host = q.host.as_deref() == Some("1");
    if host && q.room == "*" {
        // roomAdmin for `*` is an admin token for every room, not a host's.
        return error(StatusCode::BAD_REQUEST, "a host token names one room");
    }
    let claims = auth::Claims {
        sub: q.identity,
        name: q.name.map(|n| n.chars().take(64).collect()),
        room: q.room,
        exp: auth::now_unix() + DEV_TOKEN_TTL_SECS,
        nbf: None,
        grants: auth::Grants { can_publish: true, can_subscribe: true, room_admin: host },
    };
    Json(json!({ "token": auth::mint(&state.secret, &claims) })).into_response()
}

/// `GET /v1/ice-servers` with a participant's or viewer's token: the TURN servers and
/// credentials of its identity (`[]` without `[turn]`), for clients that build their
/// peer connection before they talk to the server (the WHIP and WHEP pages).
async fn ice_servers(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match bearer_claims(&state, &headers) {
        Ok(claims) if claims.grants.can_publish || claims.grants.can_subscribe => {
            Json(json!({ "iceServers": state.ice_servers(&claims.sub) })).into_response()
        }
        Ok(_) => error(StatusCode::FORBIDDEN, "token grants neither publish nor subscribe"),
        Err(why) => error(StatusCode::UNAUTHORIZED, &why),
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Admin requests carry a bearer token with the roomAdmin grant for that room or `*`.
/// Returns the refusal to send, if any.
fn admin_refusal(state: &AppState, headers: &HeaderMap, room: Option<&str>) -> Option<Response> {
    admin_claims(state, headers, room).err().map(|(status, why)| error(status, &why))
}

/// The claims of an admin request's token, or the refusal to send.
fn admin_claims(
    state: &AppState,
    headers: &HeaderMap,
    room: Option<&str>,
) -> Result<auth::Claims, (StatusCode, String)> {
    let claims = bearer_claims(state, headers).map_err(|why| (StatusCode::UNAUTHORIZED, why))?;
    let room_ok = claims.room == "*" || room.is_some_and(|r| r == claims.room);
    if !claims.grants.room_admin || !room_ok {
        return Err((StatusCode::FORBIDDEN, "token lacks the roomAdmin grant for this room".into()));
    }
    Ok(claims)
}

/// A host control from the admin API, told to the room as done by the token's name (or
/// identity): 204, or 404 when nobody of that name is here.
fn host_control(state: &AppState, headers: &HeaderMap, room: &str, action: host::Action) -> Response {
    let claims = match admin_claims(state, headers, Some(room)) {
        Ok(c) => c,
        Err((status, why)) => return error(status, &why),
    };
    let name = claims.name.as_deref().unwrap_or(&claims.sub);
    let by = host::Host { participant_id: None, name, via: "api" };
    match host::act(state, room, &by, action) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(why) => error(StatusCode::NOT_FOUND, &why),
    }
}

/// The verified claims of the request's `Authorization: Bearer` token, or why not (said
/// with 401; a bad token counted in `huiyi_auth_failures_total`).
fn bearer_claims(state: &AppState, headers: &HeaderMap) -> Result<auth::Claims, String> {
    let Some(token) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer)
    else {
        return Err("missing bearer token".into());
    };
    auth::verify(&state.secret, token, auth::now_unix()).map_err(|e| {
        state.metrics.auth_failures.with_label_values(&[e.label()]).inc();
        format!("unauthorized: {e}")
    })
}

/// The token of an `Authorization: Bearer <token>` value (the scheme is case-insensitive,
/// RFC 9110 section 11.1).
pub(crate) fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

async fn list_rooms(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(r) = admin_refusal(&state, &headers, None) {
        return r;
    }
    let mut rooms = state.registry.rooms();
    for room in &mut rooms {
        room.viewers = state.media.viewers(&room.name);
    }
    Json(json!({ "rooms": rooms })).into_response()
}

/// The edges of the broadcast tier this node feeds, with their viewers.
async fn list_edges(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(r) = admin_refusal(&state, &headers, None) {
        return r;
    }
    Json(json!({ "edges": state.media.edges() })).into_response()
}

async fn list_participants(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(room): Path<String>,
) -> Response {
    if let Some(r) = admin_refusal(&state, &headers, Some(&room)) {
        return r;
    }
    match state.registry.participants(&room) {
        Some(p) => Json(json!({ "participants": p })).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such room"),
    }
}

async fn remove_participant(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((room, identity)): Path<(String, String)>,
) -> Response {
    host_control(&state, &headers, &room, host::Action::Remove(Who::Identity(&identity)))
}

/// `POST /v1/rooms/{room}/participants/{identity}/mute`: its microphone is muted and held
/// until it unmutes itself.
async fn mute_participant(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((room, identity)): Path<(String, String)>,
) -> Response {
    host_control(&state, &headers, &room, host::Action::Mute(Who::Identity(&identity)))
}

/// `POST /v1/rooms/{room}/mute`: everyone's microphone, as [`mute_participant`].
async fn mute_all(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(room): Path<String>,
) -> Response {
    host_control(&state, &headers, &room, host::Action::MuteAll)
}

/// `DELETE /v1/rooms/{room}`: the meeting ends for everyone (4004).
async fn close_room(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(room): Path<String>,
) -> Response {
    host_control(&state, &headers, &room, host::Action::End)
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("BEARER abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer"), None);
    }
}
