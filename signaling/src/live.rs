//! What a live class's pages are told as it goes (server-sent events, as WHEP's events
//! extension does): whether the class is live, and how many watch it in the whole tier.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::whip::{Role, authorize};
use crate::{AppState, auth};

/// The state after the last event of a draining node's stream.
const MOVED: (bool, u64) = (false, u64::MAX);
/// How often the state is looked at; an event goes out only when it changed.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// `GET /live/{room}/events?access_token=<token>` (a token that may watch the room):
/// `event: state` with `{"live": bool, "viewers": n}` at once and on every change; when the
/// node drains, a last `{"moving": true}` (play from another node) and the stream ends.
pub(crate) async fn events(
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    // Viewers and the teacher alike.
    let claims = match authorize(&state, &headers, query.as_deref(), &room, Role::Viewer) {
        Ok(c) => c,
        Err(refusal) => match authorize(&state, &headers, query.as_deref(), &room, Role::Publisher) {
            Ok(c) => c,
            Err(_) => return refusal.into_response(),
        },
    };
    // The stream ends with its token, and when the node drains.
    let expires = claims.exp;
    let changes = futures_util::stream::unfold((state, room, None), move |(state, room, last)| async move {
        loop {
            if auth::now_unix() >= expires || last == Some(MOVED) {
                return None;
            }
            if state.is_draining() {
                // The node shuts down: pages go to another node now, while media still flows.
                let event = Event::default().event("state").data(json!({ "moving": true }).to_string());
                return Some((Ok(event), (state, room, Some(MOVED))));
            }
            let now = (state.media.is_live(&room), state.media.viewers(&room));
            if last != Some(now) {
                let event = Event::default()
                    .event("state")
                    .data(json!({ "live": now.0, "viewers": now.1 }).to_string());
                return Some((Ok::<_, Infallible>(event), (state, room, Some(now))));
            }
            tokio::time::sleep(CHECK_EVERY).await;
        }
    });
    let mut response = Sse::new(changes).keep_alive(KeepAlive::default()).into_response();
    response
        .headers_mut()
        .insert(axum::http::header::ACCESS_CONTROL_ALLOW_ORIGIN, axum::http::HeaderValue::from_static("*"));
    response
}
