//! Who is connected where: rooms and their participants as signaling sees them. Serves
//! the admin API and replaces a participant who joins again with the same identity.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use sfu::api::LeaveReason;
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::talk::{Heard, Said, Talk};

/// What a participant's connection task is asked from outside it: by an admin, a host,
/// or a new connection of the same identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// End the participant's session with this reason.
    Leave(LeaveReason),
    /// A host muted it: its microphone is held until it unmutes.
    HoldAudio,
}

/// A request to the connection's task to end the participant's session (any of them
/// ends it: one dropped for a full channel loses nothing).
pub type Kick = mpsc::Sender<LeaveReason>;

/// A participant of a room, named by its token's identity or by its participant id.
#[derive(Debug, Clone, Copy)]
pub enum Who<'a> {
    Identity(&'a str),
    Participant(&'a str),
}

struct Entry {
    connection: u64,
    participant_id: String,
    name: String,
    joined_at: u64,
    ends: Ends,
    /// Its signaling connection dropped: the task holding its session, waiting for a
    /// `join` with this resume token (ws.rs).
    parked: Option<(String, Claim)>,
    /// The token that resumes it (set once it joined over a WebSocket).
    resume: Option<String>,
}

/// Asks a parked participant's task for its session: the task answers on the sender given.
pub(crate) type Claim = oneshot::Sender<oneshot::Sender<crate::ws::Live>>;

/// How to end a connection, and when it has left its room.
pub struct Ends {
    pub kick: Kick,
    /// A host muted it: one permit, however many mutes came (they are all the same).
    pub hold: Arc<Notify>,
    /// Turns true once the connection's leave is queued to the media node.
    pub departed: watch::Receiver<bool>,
}

impl Ends {
    /// A new connection's ends, and what its task listens to: its kicks and its holds.
    pub fn new() -> (Self, mpsc::Receiver<LeaveReason>, Arc<Notify>, watch::Sender<bool>) {
        let (kick, kicks) = mpsc::channel(4);
        let hold = Arc::new(Notify::new());
        let (departed, departure) = watch::channel(false);
        (Ends { kick, hold: hold.clone(), departed: departure }, kicks, hold, departed)
    }

    /// Give the connection's task an order.
    pub fn give(&self, order: Order) {
        match order {
            Order::Leave(reason) => {
                let _ = self.kick.try_send(reason);
            }
            Order::HoldAudio => self.hold.notify_one(),
        }
    }
}

struct RoomEntry {
    created_at: u64,
    participants: HashMap<String, Entry>,
    talk: Talk,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomSummary {
    pub name: String,
    pub participants: usize,
    /// Who receives its media here and on the edges this node feeds (set by the caller).
    pub viewers: u64,
    pub created_at: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParticipantSummary {
    pub id: String,
    pub identity: String,
    pub name: String,
    pub joined_at: u64,
}

#[derive(Default)]
pub struct Registry {
    rooms: Mutex<HashMap<String, RoomEntry>>,
}

/// Equal bytes, compared in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Registry {
    /// Record a participant; returns how to end the previous connection of the same identity.
    pub fn insert(
        &self,
        room: &str,
        identity: &str,
        connection: u64,
        participant_id: &str,
        name: &str,
        ends: Ends,
    ) -> Option<Ends> {
        let mut rooms = self.rooms.lock().expect("registry lock");
        let entry = rooms.entry(room.to_string()).or_insert_with(|| RoomEntry {
            created_at: unix_now(),
            participants: HashMap::new(),
            talk: Talk::default(),
        });
        if let Some(previous) = entry.participants.get(identity) {
            // Replaced by a new connection with a participant id of its own: the old one's
            // hand goes down (its own remove will no longer match it).
            let gone = previous.participant_id.clone();
            entry.talk.gone(&gone);
        }
        let previous = entry.participants.insert(
            identity.to_string(),
            Entry {
                connection,
                participant_id: participant_id.to_string(),
                name: name.to_string(),
                joined_at: unix_now(),
                ends,
                parked: None,
                resume: None,
            },
        );
        previous.map(|p| p.ends)
    }

    /// The token that resumes `identity`'s connection `connection`.
    pub(crate) fn set_resume(&self, room: &str, identity: &str, connection: u64, resume: &str) {
        let mut rooms = self.rooms.lock().expect("registry lock");
        if let Some(entry) = rooms.get_mut(room).and_then(|r| r.participants.get_mut(identity))
            && entry.connection == connection
        {
            entry.resume = Some(resume.to_string());
        }
    }

    /// How to end `identity`'s connection if it is not parked yet and `resume` is its
    /// token: a client back on a new connection while the server still holds the old one
    /// (half-open after a network change) parks that one first.
    pub(crate) fn live_kick(&self, room: &str, identity: &str, resume: &str) -> Option<Kick> {
        let rooms = self.rooms.lock().expect("registry lock");
        let entry = rooms.get(room)?.participants.get(identity)?;
        let matches = entry.resume.as_ref().is_some_and(|token| same(token.as_bytes(), resume.as_bytes()));
        (matches && entry.parked.is_none()).then(|| entry.ends.kick.clone())
    }

    /// The connection of `identity` dropped; its session waits for a resume with `resume`.
    pub(crate) fn park(&self, room: &str, identity: &str, connection: u64, resume: &str, claim: Claim) {
        let mut rooms = self.rooms.lock().expect("registry lock");
        if let Some(entry) = rooms.get_mut(room).and_then(|r| r.participants.get_mut(identity))
            && entry.connection == connection
        {
            entry.parked = Some((resume.to_string(), claim));
        }
    }

    /// How to take back `identity`'s parked session, if it is parked under `resume`.
    pub(crate) fn claim(&self, room: &str, identity: &str, resume: &str) -> Option<Claim> {
        let mut rooms = self.rooms.lock().expect("registry lock");
        let entry = rooms.get_mut(room)?.participants.get_mut(identity)?;
        let matches =
            entry.parked.as_ref().is_some_and(|(token, _)| same(token.as_bytes(), resume.as_bytes()));
        if matches { entry.parked.take().map(|(_, claim)| claim) } else { None }
    }

    /// Forget a connection (only if it still holds its identity's entry).
    pub fn remove(&self, room: &str, identity: &str, connection: u64) {
        let mut rooms = self.rooms.lock().expect("registry lock");
        let Some(entry) = rooms.get_mut(room) else { return };
        if entry.participants.get(identity).is_some_and(|e| e.connection == connection)
            && let Some(gone) = entry.participants.remove(identity)
        {
            entry.talk.gone(&gone.participant_id);
        }
        if entry.participants.is_empty() {
            rooms.remove(room);
        }
    }

    /// Listen to `room`'s talk from now on, with its chat lines and raised hands so far.
    pub(crate) fn listen(&self, room: &str) -> Option<Heard> {
        let rooms = self.rooms.lock().expect("registry lock");
        rooms.get(room).map(|r| r.talk.listen())
    }

    /// Tell `room` what one of its participants said.
    pub(crate) fn say(&self, room: &str, participant_id: &str, name: &str, said: Said) {
        let mut rooms = self.rooms.lock().expect("registry lock");
        if let Some(r) = rooms.get_mut(room) {
            r.talk.say(participant_id, name, said);
        }
    }

    pub fn rooms(&self) -> Vec<RoomSummary> {
        let rooms = self.rooms.lock().expect("registry lock");
        let mut list: Vec<RoomSummary> = rooms
            .iter()
            .map(|(name, r)| RoomSummary {
                name: name.clone(),
                participants: r.participants.len(),
                viewers: 0,
                created_at: r.created_at,
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    pub fn participants(&self, room: &str) -> Option<Vec<ParticipantSummary>> {
        let rooms = self.rooms.lock().expect("registry lock");
        let r = rooms.get(room)?;
        let mut list: Vec<ParticipantSummary> = r
            .participants
            .iter()
            .map(|(identity, e)| ParticipantSummary {
                id: e.participant_id.clone(),
                identity: identity.clone(),
                name: e.name.clone(),
                joined_at: e.joined_at,
            })
            .collect();
        list.sort_by(|a, b| a.identity.cmp(&b.identity));
        Some(list)
    }

    /// The participant id and name of `who` in `room`, if it is there.
    pub fn named(&self, room: &str, who: Who) -> Option<(String, String)> {
        let rooms = self.rooms.lock().expect("registry lock");
        let entry = Self::find(&rooms, room, who)?;
        Some((entry.participant_id.clone(), entry.name.clone()))
    }

    /// Give `who` of `room` an order; false when it is not there.
    pub fn order(&self, room: &str, who: Who, order: Order) -> bool {
        let rooms = self.rooms.lock().expect("registry lock");
        Self::find(&rooms, room, who).is_some_and(|entry| {
            entry.ends.give(order);
            true
        })
    }

    fn find<'a>(rooms: &'a HashMap<String, RoomEntry>, room: &str, who: Who) -> Option<&'a Entry> {
        let participants = &rooms.get(room)?.participants;
        match who {
            Who::Identity(identity) => participants.get(identity),
            Who::Participant(id) => participants.values().find(|e| e.participant_id == id),
        }
    }

    /// Mute everyone in `room` but `except` (a participant id: the host who asks);
    /// returns how many were told.
    pub fn hold_all(&self, room: &str, except: Option<&str>) -> Option<usize> {
        let rooms = self.rooms.lock().expect("registry lock");
        let r = rooms.get(room)?;
        let mut told = 0;
        for e in r.participants.values().filter(|e| except != Some(e.participant_id.as_str())) {
            e.ends.give(Order::HoldAudio);
            told += 1;
        }
        Some(told)
    }

    /// Tell everyone in `room` (on its talk bus, in order with the chat).
    pub fn announce(&self, room: &str, message: crate::protocol::ServerMessage) {
        let rooms = self.rooms.lock().expect("registry lock");
        if let Some(r) = rooms.get(room) {
            r.talk.announce(message);
        }
    }

    pub fn close_room(&self, room: &str) -> bool {
        let rooms = self.rooms.lock().expect("registry lock");
        match rooms.get(room) {
            Some(r) => {
                for e in r.participants.values() {
                    e.ends.give(Order::Leave(LeaveReason::RoomClosed));
                }
                true
            }
            None => false,
        }
    }

    /// The server stops: every participant of every room is told so and leaves (their
    /// connections close with 1001 "server shutting down"; parked ones just leave).
    pub fn close_all(&self, reason: LeaveReason) {
        let rooms = self.rooms.lock().expect("registry lock");
        for e in rooms.values().flat_map(|r| r.participants.values()) {
            e.ends.give(Order::Leave(reason));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn holds_never_crowd_out_a_leave_and_reach_only_their_room() {
        let registry = Registry::default();
        let (ends, mut kicks, hold, _departed) = Ends::new();
        assert!(registry.insert("r", "ana", 1, "PA_a", "Ana", ends).is_none());
        let (other, _, other_hold, _) = Ends::new();
        registry.insert("s", "bo", 2, "PA_b", "Bo", other);
        for _ in 0..100 {
            assert!(registry.order("r", Who::Participant("PA_a"), Order::HoldAudio));
        }
        assert!(registry.order("r", Who::Identity("ana"), Order::Leave(LeaveReason::Removed)));
        assert_eq!(kicks.try_recv().ok(), Some(LeaveReason::Removed), "the leave got through");
        let now = std::time::Duration::ZERO;
        assert!(tokio::time::timeout(now, hold.notified()).await.is_ok(), "held");
        assert!(tokio::time::timeout(now, hold.notified()).await.is_err(), "a hundred mutes are one");
        // Another room's participant is nobody here, by id or identity.
        assert!(!registry.order("r", Who::Participant("PA_b"), Order::HoldAudio));
        assert!(!registry.order("r", Who::Identity("bo"), Order::HoldAudio));
        assert_eq!(registry.hold_all("r", Some("PA_a")), Some(0), "the host spared");
        assert!(tokio::time::timeout(now, other_hold.notified()).await.is_err(), "room s untouched");
    }
}
