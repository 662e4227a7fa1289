//! Host controls (docs/protocol.md, Host controls): what a participant whose token has the
//! `roomAdmin` grant may do to the others of its room from the page, and an admin from the
//! admin API: mute one (the server holds its microphone until it unmutes itself), mute
//! everyone else, remove one, end the meeting. The room is told each time (`hostAction`).

use tracing::info;

use crate::AppState;
use crate::protocol::ServerMessage;
use crate::registry::{Order, Who};
use sfu::api::LeaveReason;

/// What a host asks.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    Mute(Who<'a>),
    MuteAll,
    Remove(Who<'a>),
    End,
}

impl Action<'_> {
    fn name(&self) -> &'static str {
        match self {
            Action::Mute(_) => "mute",
            Action::MuteAll => "muteAll",
            Action::Remove(_) => "remove",
            Action::End => "end",
        }
    }
}

/// Who asks: the host's participant id (spared by mute all) and name, and from where
/// (`page` or `api`, for the metric).
pub struct Host<'a> {
    pub participant_id: Option<&'a str>,
    pub name: &'a str,
    pub via: &'static str,
}

/// Carry out `action` in `room`, tell the room, and count it. Err: nobody of that name
/// or room is here (`not_found`, with why).
pub fn act(state: &AppState, room: &str, host: &Host, action: Action) -> Result<(), String> {
    let registry = &state.registry;
    let no_room = || format!("no room {room:?}");
    let target = match action {
        Action::Mute(who) | Action::Remove(who) => {
            Some(registry.named(room, who).ok_or_else(|| missing(who))?)
        }
        Action::MuteAll | Action::End => {
            registry.participants(room).ok_or_else(no_room)?;
            None
        }
    };
    let (participant_id, name) = target.clone().unzip();
    info!(%room, by = host.name, via = host.via, action = action.name(), participant = ?participant_id, "host action");
    state.metrics.host_actions.with_label_values(&[action.name(), host.via]).inc();
    // The room is told first: a connection that is closed for it sends what it was told
    // before its close frame, so the removed and everyone at the end hear why.
    registry.announce(
        room,
        ServerMessage::HostAction {
            action: action.name().into(),
            by_name: host.name.into(),
            participant_id,
            name,
        },
    );
    let done = match action {
        Action::Mute(who) => registry.order(room, who, Order::HoldAudio),
        Action::Remove(who) => registry.order(room, who, Order::Leave(LeaveReason::Removed)),
        Action::MuteAll => registry.hold_all(room, host.participant_id).is_some(),
        Action::End => registry.close_room(room),
    };
    if done { Ok(()) } else { Err(target.map_or_else(no_room, |(id, _)| missing(Who::Participant(&id)))) }
}

fn missing(who: Who) -> String {
    match who {
        Who::Identity(identity) => format!("no participant with identity {identity:?} in this room"),
        Who::Participant(id) => format!("no participant {id:?} in this room"),
    }
}
