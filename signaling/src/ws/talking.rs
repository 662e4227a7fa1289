//! A connection's part in its room besides media: what it says (chat, hands, reactions)
//! and, for a host, the host controls, both told to the room on its talk bus; and what the
//! bus brings it.

use std::time::Instant;

use sfu::api::MediaError;
use tokio::sync::broadcast;
use tracing::{debug, warn};

use super::Connection;
use crate::AppState;
use crate::host::{self, Action, Host};
use crate::protocol::ServerMessage;
use crate::talk::{Said, TALK_PER_WINDOW, TALK_WINDOW, TalkLimit};

/// A connection's part in its room's talk (talk.rs).
pub(super) struct Talking {
    pub room: String,
    pub participant_id: String,
    pub name: String,
    pub bus: Option<broadcast::Receiver<ServerMessage>>,
    pub limit: TalkLimit,
    /// It may use the host controls.
    pub host: bool,
}

impl Talking {
    /// Take what the client said, or say why not.
    fn said(&mut self, state: &AppState, said: Result<Said, String>) -> Result<(), (&'static str, String)> {
        if !self.limit.allow(Instant::now()) {
            let message =
                format!("at most {TALK_PER_WINDOW} chat lines, hands and reactions in {TALK_WINDOW:?}");
            return Err(("rate_limited", message));
        }
        let said = said.map_err(|why| ("bad_request", why))?;
        state.registry.say(&self.room, &self.participant_id, &self.name, said);
        Ok(())
    }

    /// Send what is waiting on the room's bus now (not what comes meanwhile).
    pub async fn flush(&mut self, conn: &mut Connection) {
        let Some(bus) = self.bus.as_mut() else { return };
        for _ in 0..bus.len() {
            let Ok(message) = bus.try_recv() else { return };
            if !conn.send(&message).await {
                return;
            }
        }
    }

    /// The next message on the room's bus (never, without one).
    pub async fn heard(&mut self) -> Option<ServerMessage> {
        let Some(bus) = self.bus.as_mut() else { return std::future::pending().await };
        loop {
            match bus.recv().await {
                Ok(message) => return Some(message),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    warn!(room = %self.room, participant = %self.participant_id, missed, "fell behind the room's chat; messages missed");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// What the client said to its room, told to the room, or the reason it was not (an
/// `error` to the client, counted with the other errors, and a debug line).
pub(super) async fn talk(
    conn: &mut Connection,
    talking: &mut Talking,
    said: Result<Said, String>,
) -> Result<(), MediaError> {
    if let Err((code, why)) = talking.said(&conn.state, said) {
        debug!(participant = %talking.participant_id, code, why, "talk refused");
        conn.send(&ServerMessage::error(code, why)).await;
    }
    Ok(())
}

/// A host control from the page, carried out, or refused with an `error` (`forbidden`
/// without the `roomAdmin` grant, `not_found` for nobody of that id) and a debug line.
pub(super) async fn host_action(
    conn: &mut Connection,
    talking: &mut Talking,
    action: Action<'_>,
) -> Result<(), MediaError> {
    let refusal = if !talking.host {
        Some(("forbidden", "host controls need a token with the roomAdmin grant".to_string()))
    } else if !talking.limit.allow(Instant::now()) {
        // Each is told to the room: they count with chat lines, hands and reactions.
        let why = format!(
            "at most {TALK_PER_WINDOW} chat lines, hands, reactions and host controls in {TALK_WINDOW:?}"
        );
        Some(("rate_limited", why))
    } else {
        let host = Host { participant_id: Some(&talking.participant_id), name: &talking.name, via: "page" };
        host::act(&conn.state, &talking.room, &host, action).err().map(|why| ("not_found", why))
    };
    if let Some((code, why)) = refusal {
        debug!(participant = %talking.participant_id, code, why, "host control refused");
        conn.send(&ServerMessage::error(code, why)).await;
    }
    Ok(())
}
