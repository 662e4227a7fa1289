//! What a client with a view shows: the cameras of the other participants in the order
//! they were published, the dominant speaker's first in a large tile, and the
//! `subscribe` message (docs/protocol.md) that says so whenever the picture changes.

use std::collections::HashMap;
use std::time::Instant;

use proto::messages::{ClientMessage, Participant, ServerMessage, ShownTrack, Track};

use crate::scenario::ViewPlan;

/// One tile of the view: a camera track at a size in device pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tile {
    pub track: String,
    pub width: u32,
    pub height: u32,
}

/// A subscription that differs from the one sent before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub tiles: Vec<Tile>,
    /// Tiles that were shown before at another size (the server switches their layer).
    pub resized: Vec<Tile>,
}

impl Subscription {
    pub fn message(&self) -> ClientMessage {
        let tracks = self
            .tiles
            .iter()
            .map(|t| ShownTrack {
                track_id: t.track.clone(),
                width: Some(t.width),
                height: Some(t.height),
                quality: None,
            })
            .collect();
        ClientMessage::Subscribe { tracks }
    }
}

#[derive(Debug)]
struct Camera {
    participant: String,
    track: String,
}

/// The roster of cameras and the tiles a client shows.
#[derive(Debug)]
pub struct View {
    plan: ViewPlan,
    me: String,
    /// Other participants' cameras, in publication order.
    cameras: Vec<Camera>,
    dominant: Option<String>,
    sent: Option<Vec<Tile>>,
    /// When each track now shown first appeared in a subscription.
    shown_since: HashMap<String, Instant>,
}

impl View {
    /// Start from the `joined` message: who I am and the tracks already in the room.
    pub fn new(plan: ViewPlan, joined: &ServerMessage) -> Self {
        let mut view = Self {
            plan,
            me: String::new(),
            cameras: Vec::new(),
            dominant: None,
            sent: None,
            shown_since: HashMap::new(),
        };
        if let ServerMessage::Joined { participant, participants, .. } = joined {
            view.me = participant.id.clone();
            for p in participants {
                view.add_participant(p);
            }
        }
        view
    }

    fn add_participant(&mut self, p: &Participant) {
        for track in &p.tracks {
            self.add_track(&p.id, track);
        }
    }

    fn add_track(&mut self, participant: &str, track: &Track) {
        let camera = track.kind == "video" && track.source == "camera";
        if !camera || participant == self.me || self.cameras.iter().any(|c| c.track == track.id) {
            return;
        }
        self.cameras.push(Camera { participant: participant.to_string(), track: track.id.clone() });
    }

    /// Follow the room: arrivals, departures, publications and the dominant speaker.
    /// Other messages are ignored.
    pub fn handle_message(&mut self, m: &ServerMessage) {
        match m {
            ServerMessage::ParticipantJoined { participant } => self.add_participant(participant),
            ServerMessage::ParticipantLeft { participant_id, .. } => {
                self.cameras.retain(|c| c.participant != *participant_id);
            }
            ServerMessage::TrackPublished { participant_id, track } => self.add_track(participant_id, track),
            ServerMessage::TrackUnpublished { track_id, .. } => self.cameras.retain(|c| c.track != *track_id),
            ServerMessage::ActiveSpeaker { participant_id } => self.dominant = Some(participant_id.clone()),
            _ => {}
        }
    }

    /// The tiles to show now: the dominant speaker's camera first at the large size, then
    /// the others in publication order at the small size, at most `grid` in all.
    pub fn tiles(&self) -> Vec<Tile> {
        let [sw, sh] = self.plan.speaker_tile;
        let [w, h] = self.plan.tile;
        let speaker = self.cameras.iter().find(|c| Some(&c.participant) == self.dominant.as_ref());
        let speaker_tile = speaker.map(|c| Tile { track: c.track.clone(), width: sw, height: sh });
        let others = self
            .cameras
            .iter()
            .filter(|c| Some(&c.participant) != self.dominant.as_ref())
            .map(|c| Tile { track: c.track.clone(), width: w, height: h });
        speaker_tile.into_iter().chain(others).take(self.plan.grid).collect()
    }

    /// The subscription to send now, if it differs from the last one sent (tracks, their
    /// order or a size). The first call always has one, even an empty one.
    pub fn poll_subscribe(&mut self, now: Instant) -> Option<Subscription> {
        let tiles = self.tiles();
        if self.sent.as_ref() == Some(&tiles) {
            return None;
        }
        let before = self.sent.take().unwrap_or_default();
        let resized = tiles
            .iter()
            .filter(|t| {
                before.iter().any(|b| b.track == t.track && (b.width, b.height) != (t.width, t.height))
            })
            .cloned()
            .collect();
        self.shown_since.retain(|track, _| tiles.iter().any(|t| &t.track == track));
        for t in &tiles {
            self.shown_since.entry(t.track.clone()).or_insert(now);
        }
        self.sent = Some(tiles.clone());
        Some(Subscription { tiles, resized })
    }

    /// The tracks shown now and since when.
    pub fn shown(&self) -> impl Iterator<Item = (&str, Instant)> {
        self.shown_since.iter().map(|(t, since)| (t.as_str(), *since))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::*;

    /// A server message from its JSON, as it comes off the socket.
    fn msg(v: Value) -> ServerMessage {
        serde_json::from_value(v).expect("a server message")
    }

    fn plan(grid: usize) -> ViewPlan {
        toml::from_str(&format!("grid = {grid}")).unwrap()
    }

    fn camera(id: &str) -> Value {
        json!({"id": id, "kind": "video", "source": "camera", "muted": false})
    }

    fn joined() -> ServerMessage {
        msg(json!({
            "type": "joined",
            "participant": {"id": "me", "tracks": []},
            "participants": [
                {"id": "a", "tracks": [{"id": "a-mic", "kind": "audio", "source": "microphone"}, camera("a-cam")]},
                {"id": "b", "tracks": [camera("b-cam"), {"id": "b-screen", "kind": "video", "source": "screen"}]},
            ],
            "room": "r",
        }))
    }

    fn ids(s: &Subscription) -> Vec<(&str, u32)> {
        s.tiles.iter().map(|t| (t.track.as_str(), t.width)).collect()
    }

    #[test]
    fn shows_cameras_in_publication_order_and_the_speaker_first_and_large() {
        let t0 = Instant::now();
        let mut view = View::new(plan(25), &joined());
        let first = view.poll_subscribe(t0).expect("the first subscription is sent");
        assert_eq!(ids(&first), [("a-cam", 320), ("b-cam", 320)], "cameras only, small");
        assert_eq!(
            serde_json::to_value(first.message()).unwrap()["tracks"][0],
            json!({"trackId": "a-cam", "width": 320, "height": 180})
        );
        assert_eq!(view.poll_subscribe(t0), None, "nothing changed, nothing sent");

        view.handle_message(&msg(
            json!({"type": "trackPublished", "participantId": "c", "track": camera("c-cam")}),
        ));
        view.handle_message(&msg(
            json!({"type": "trackPublished", "participantId": "me", "track": camera("my-cam")}),
        ));
        view.handle_message(&msg(json!({"type": "activeSpeaker", "participantId": "b"})));
        let t1 = t0 + Duration::from_secs(1);
        let s = view.poll_subscribe(t1).unwrap();
        assert_eq!(ids(&s), [("b-cam", 640), ("a-cam", 320), ("c-cam", 320)]);
        assert_eq!(s.resized, vec![Tile { track: "b-cam".into(), width: 640, height: 360 }]);
        assert_eq!(serde_json::to_value(s.message()).unwrap()["tracks"][0]["height"], 360);

        // A speaker without a camera: everyone small again.
        view.handle_message(&msg(json!({"type": "activeSpeaker", "participantId": "x"})));
        let s = view.poll_subscribe(t1).unwrap();
        assert_eq!(ids(&s), [("a-cam", 320), ("b-cam", 320), ("c-cam", 320)]);
        assert_eq!(s.resized.len(), 1);
        let since: HashMap<&str, Instant> = view.shown().collect();
        assert_eq!(since["a-cam"], t0, "shown since the first subscription that listed it");
        assert_eq!(since["c-cam"], t1);

        view.handle_message(&msg(json!({"type": "participantLeft", "participantId": "a", "reason": "left"})));
        view.handle_message(&msg(
            json!({"type": "trackUnpublished", "participantId": "c", "trackId": "c-cam"}),
        ));
        let s = view.poll_subscribe(t1).unwrap();
        assert_eq!(ids(&s), [("b-cam", 320)]);
        assert!(s.resized.is_empty());
        assert_eq!(view.shown().count(), 1);
    }

    #[test]
    fn the_grid_bounds_the_tiles_and_the_speaker_always_gets_one() {
        let mut view = View::new(
            plan(3),
            &msg(json!({"type": "joined", "room": "r", "participant": {"id": "me"}, "participants": []})),
        );
        assert_eq!(view.poll_subscribe(Instant::now()).unwrap().tiles, vec![], "an empty view is stated");
        for p in ["p1", "p2", "p3", "p4", "p5"] {
            view.handle_message(&msg(json!({
                "type": "participantJoined",
                "participant": {"id": p, "tracks": [camera(&format!("{p}-cam"))]},
            })));
        }
        let s = view.poll_subscribe(Instant::now()).unwrap();
        assert_eq!(ids(&s), [("p1-cam", 320), ("p2-cam", 320), ("p3-cam", 320)]);
        view.handle_message(&msg(json!({"type": "activeSpeaker", "participantId": "p5"})));
        let s = view.poll_subscribe(Instant::now()).unwrap();
        assert_eq!(ids(&s), [("p5-cam", 640), ("p1-cam", 320), ("p2-cam", 320)]);
        assert!(s.resized.is_empty(), "p5 was not shown before: a new tile, not a resize");
        // The same speaker again changes nothing.
        view.handle_message(&msg(json!({"type": "activeSpeaker", "participantId": "p5"})));
        view.handle_message(&msg(
            json!({"type": "trackPublished", "participantId": "p1", "track": camera("p1-cam")}),
        ));
        assert_eq!(view.poll_subscribe(Instant::now()), None);
    }
}
