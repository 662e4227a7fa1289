//! How a participant joins a run: against Huiyi with a token and the signaling WebSocket
//! (docs/protocol.md), a class's teacher and players over WHIP and WHEP, or against Janus
//! (janus.rs); each then hands its client to a media thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use proto::messages::ServerMessage;

use crate::engine::{ClientSetup, Shared, WorkerHandle, WorkerInput};
use crate::scenario::Scenario;
use crate::signal::{self, FromServer, ServerUrl, SignalError};
use crate::{http, janus, media, whip};

/// One run's joining state, shared by the tasks that join participants.
pub(crate) struct Run {
    pub(crate) scenario: Scenario,
    pub(crate) url: ServerUrl,
    pub(crate) secret: Option<String>,
    pub(crate) room: String,
    pub(crate) shared: Arc<Shared>,
    pub(crate) workers: Vec<WorkerHandle>,
    /// The run is against Janus, in this room.
    pub(crate) janus: Option<janus::JanusRoom>,
    /// Media connections the joins so far started (two for a participant against Janus).
    pub(crate) connections: AtomicU64,
    pub(crate) next_serial: AtomicU64,
    pub(crate) failed_joins: AtomicUsize,
    /// Joins the server refused as `node_full` (its admission budget).
    pub(crate) refused_joins: AtomicUsize,
    pub(crate) closed_sockets: Arc<AtomicUsize>,
    /// Clients the run took out on purpose (churn): their sockets closing is expected.
    pub(crate) removed: Arc<std::sync::Mutex<std::collections::HashSet<u32>>>,
    pub(crate) first_error: std::sync::Mutex<Option<String>>,
}

impl Run {
    /// One participant joins in `slot`: token, WebSocket, then its media on a worker.
    pub(crate) async fn join(self: &Arc<Self>, slot: usize) -> Result<u32, SignalError> {
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed) as u32;
        if let Some(target) = &self.janus {
            let worker = self.workers[serial as usize % self.workers.len()].clone();
            return self.join_janus(slot, serial, target, worker).await;
        }
        let identity = format!("lt-{slot}-{serial}");
        let token = match &self.secret {
            Some(secret) => signal::mint_token(secret, &self.room, &identity, Duration::from_secs(3600)),
            None => signal::dev_token(&self.url, &self.room, &identity).await?,
        };
        let worker = self.workers[serial as usize % self.workers.len()].clone();
        if let Some(broadcast) = &self.scenario.broadcast {
            return self.join_over_http(slot, serial, token, worker, broadcast.player).await;
        }
        let ws_open_at = Instant::now();
        let inbox = worker.clone();
        let closed = self.closed_sockets.clone();
        let removed = self.removed.clone();
        let (joined, connection) = signal::join(&self.url, &token).await?;
        let video =
            if slot < self.scenario.video.publishers { self.scenario.camera_layers() } else { Vec::new() };
        // The worker learns of the client before any of its messages can reach it.
        worker.send(WorkerInput::Add(Box::new(ClientSetup {
            serial,
            slot,
            audio: slot < self.scenario.audio.publishers,
            video,
            joined: Some(joined),
            watch: false,
            to_server: connection.sender(),
            ws_open_at,
            join_measurable: slot > 0
                && (self.scenario.audio.publishers > 0 || self.scenario.video.publishers > 0),
            offers: true,
            twin: None,
            publishing_half: false,
        })));
        self.connections.fetch_add(1, Ordering::Relaxed);
        connection.run(move |m| {
            // A socket we did not close on purpose: the server ended it.
            if matches!(m, FromServer::Closed(_)) && !removed.lock().expect("lock").contains(&serial) {
                closed.fetch_add(1, Ordering::Relaxed);
            }
            inbox.send(WorkerInput::Signal(serial, m));
        });
        Ok(serial)
    }

    /// A broadcast's participant: the publisher (slot 0) offers over WHIP, a player over
    /// WHEP with its size; the worker makes the offer, this task carries it.
    async fn join_over_http(
        self: &Arc<Self>,
        slot: usize,
        serial: u32,
        token: String,
        worker: WorkerHandle,
        [width, height]: [u32; 2],
    ) -> Result<u32, SignalError> {
        let publisher = slot == 0;
        let room = http::escape(&self.room);
        let target = if publisher {
            format!("/whip/{room}")
        } else {
            format!("/whep/{room}?width={width}&height={height}")
        };
        let endpoint = http::Url { host_port: self.url.host_port.clone(), target };
        let (to_server, outgoing) = tokio::sync::mpsc::unbounded_channel();
        let (answered_tx, answered) = tokio::sync::oneshot::channel();
        let posted_at = Instant::now();
        worker.send(WorkerInput::Add(Box::new(ClientSetup {
            serial,
            slot,
            audio: publisher && self.scenario.audio.publishers > 0,
            video: if publisher && self.scenario.video.publishers > 0 {
                self.scenario.camera_layers()
            } else {
                Vec::new()
            },
            joined: None,
            watch: !publisher,
            to_server,
            ws_open_at: posted_at,
            join_measurable: !publisher,
            offers: true,
            twin: None,
            publishing_half: false,
        })));
        whip::run(endpoint, token, outgoing, move |answer| {
            let _ = answered_tx.send(answer);
        });
        let answer = answered.await.unwrap_or_else(|_| Err(SignalError::JoinRefused("no offer made".into())));
        match answer {
            Ok(sdp) => {
                let answer = ServerMessage::Answer { sdp, tracks: Vec::new() };
                worker.send(WorkerInput::Signal(serial, FromServer::Message(answer)));
                self.connections.fetch_add(1, Ordering::Relaxed);
                Ok(serial)
            }
            Err(e) => {
                worker.send(WorkerInput::Forget(serial));
                Err(e)
            }
        }
    }

    /// A participant against Janus: one session, two connections on one worker (one
    /// publishes the participant's media, if it has any; one receives the others').
    async fn join_janus(
        self: &Arc<Self>,
        slot: usize,
        serial: u32,
        target: &janus::JanusRoom,
        worker: WorkerHandle,
    ) -> Result<u32, SignalError> {
        let started = Instant::now();
        // A class's player watches the Streaming mountpoint: it publishes nothing and takes
        // no part in the room.
        let player = self.scenario.broadcast.is_some() && slot > 0;
        let participant = if player {
            janus::Participant::watch(target).await?
        } else {
            janus::Participant::join(target, &format!("lt-{slot}-{serial}")).await?
        };
        let audio = slot < self.scenario.audio.publishers;
        let video =
            if slot < self.scenario.video.publishers { self.scenario.camera_layers() } else { Vec::new() };
        let subscriber = self.next_serial.fetch_add(1, Ordering::Relaxed) as u32;
        let publishes = audio || !video.is_empty();
        // Someone else publishes, now or later (a class's teacher subscribes to nobody).
        let publishers = self.scenario.audio.publishers.max(self.scenario.video.publishers);
        let subscribes = publishers > usize::from(slot < publishers);
        let publisher_out = publishes.then(|| {
            let (to_server, outgoing) = tokio::sync::mpsc::unbounded_channel();
            worker.send(WorkerInput::Add(Box::new(ClientSetup {
                serial,
                slot,
                audio,
                video,
                joined: None,
                watch: false,
                to_server,
                ws_open_at: started,
                join_measurable: false,
                offers: true,
                twin: Some(subscriber),
                // Counted on its subscribing connection, if it has one.
                publishing_half: subscribes,
            })));
            outgoing
        });
        let subscriber_out = subscribes.then(|| {
            let (to_server, outgoing) = tokio::sync::mpsc::unbounded_channel();
            worker.send(WorkerInput::Add(Box::new(ClientSetup {
                serial: subscriber,
                slot,
                audio: false,
                video: Vec::new(),
                joined: None,
                watch: false,
                to_server,
                ws_open_at: started,
                join_measurable: slot > 0,
                offers: false,
                twin: Some(serial),
                publishing_half: false,
            })));
            outgoing
        });
        self.connections.fetch_add(u64::from(publishes) + u64::from(subscribes), Ordering::Relaxed);
        let closed = self.closed_sockets.clone();
        participant.run(publisher_out, subscriber_out, move |half, m| {
            // One close per participant: its subscribing connection's, or its only one's.
            if matches!(m, FromServer::Closed(_)) && (half == janus::Half::Subscriber) == subscribes {
                closed.fetch_add(1, Ordering::Relaxed);
            }
            let to = if half == janus::Half::Publisher { serial } else { subscriber };
            worker.send(WorkerInput::Signal(to, m));
        });
        Ok(serial)
    }

    pub(crate) fn note_error(&self, e: &SignalError) {
        if let SignalError::NodeFull(_) = e {
            self.refused_joins.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.failed_joins.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().expect("lock");
        if first.is_none() {
            *first = Some(e.to_string());
        }
    }
}

/// What a subscriber takes against Janus, which follows no view of its own: the grid's
/// size, its first camera at the speaker tile's layer and the others at a tile's; a
/// broadcast's player takes the teacher's camera at the player's layer.
pub(crate) fn janus_view(scenario: &Scenario) -> janus::ViewRule {
    let layers = scenario.camera_layers();
    // Janus numbers a camera's substreams from its lowest layer up.
    let substream = |[w, h]: [u32; 2]| {
        media::layer_for_tile(&layers, w, h)
            .and_then(|l| layers.iter().position(|o| o.rank() == l.rank()))
            .unwrap_or(0) as u8
    };
    match (&scenario.broadcast, &scenario.view) {
        (Some(b), _) => {
            janus::ViewRule { grid: Some(1), big: substream(b.player), small: substream(b.player) }
        }
        (None, Some(v)) => {
            janus::ViewRule { grid: Some(v.grid), big: substream(v.speaker_tile), small: substream(v.tile) }
        }
        (None, None) => janus::ViewRule { grid: None, big: 0, small: 0 },
    }
}
