//! What a client measured, kept when it ends: its join time and parts, what it received of
//! each stream, frozen tiles and unfinished layer switches judged at the window's end.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use proto::messages::ClientMessage;

use super::Worker;
use crate::expect::{FROZEN_SUBSCRIBED, Shown, StreamKind};
use crate::media::LAYERS;
use crate::stats::{DeliveryCounter, LatencyHistogram};

/// What one client measured, for the report.
#[derive(Debug, Clone)]
pub struct ClientResult {
    pub serial: u32,
    /// Its place in the scenario (a class's teacher is 0).
    pub slot: usize,
    pub join_ms: Option<f64>,
    /// The join in its parts (ms): signaling (socket open or `POST` to the offer/answer
    /// exchange done), connecting (to DTLS up: ICE and the handshake) and first media
    /// (to the first media packet); then connecting's own two parts, ICE (to a connected
    /// candidate pair) and DTLS (to the handshake done).
    pub join_phases: Option<[f64; 5]>,
    pub connected: bool,
    pub left_early: bool,
    /// The generator's own WebRTC engine failed for this client.
    pub engine_failed: bool,
    /// `activeSpeaker` messages the client received.
    pub speaker_events: u32,
    /// Connected before the measurement window opened and stayed to its end.
    pub whole_window: bool,
    /// It showed a view (sent `subscribe`, or chose its subscription against Janus).
    pub has_view: bool,
    pub twin: Option<u32>,
    pub publishing_half: bool,
    /// Tracks it showed at the end of the window that had stopped arriving (and that the
    /// server had not said it paused).
    pub frozen: usize,
    /// Tracks it showed at the end of the window that the server said it paused.
    pub paused_tiles: usize,
    /// Times the server paused a track it showed (`trackPaused`).
    pub tile_pauses: u32,
    /// The followed client's seconds (`Shared::followed`).
    pub followed: Option<Vec<super::FollowedSecond>>,
    /// Times the server's `layers` paused one of its camera's layers.
    pub layer_pauses: u32,
    /// From a `subscribe` that resized a tile to the first keyframe of another layer.
    pub switch_keyframe_ms: Vec<f64>,
    /// Resizes asked for at least `FROZEN_SUBSCRIBED` before the window's end whose new
    /// layer never came.
    pub unfinished_switches: usize,
    pub first_keyframe_ms: Vec<f64>,
    /// Per camera: from when it should have started arriving to the end of its first
    /// keyframe received whole (every packet from the keyframe's start to its marker): the
    /// first frame a decoder could show.
    pub first_frame_ms: Vec<f64>,
    /// Cameras it received packets of but never a whole keyframe.
    pub cameras_without_frame: usize,
    /// The camera layers (ranks) it received anything of.
    pub video_ranks: Vec<usize>,
    pub jitter_ms: Vec<f64>,
    /// Per received stream: (stream id, delivery counter).
    pub received: Vec<(u32, DeliveryCounter)>,
    pub close_reason: Option<String>,
    pub errors: Vec<String>,
}

pub struct WorkerResult {
    pub clients: Vec<ClientResult>,
    pub latency: LatencyHistogram,
    /// The generator's own parts around `latency`, in the window: from a frame's stamp to
    /// its last packet handed to the kernel (inside `latency`), and from a packet's arrival
    /// in the kernel to this thread reading it (outside it).
    pub send_delay: LatencyHistogram,
    pub receive_queue: LatencyHistogram,
    /// Per second since the epoch: (packets received, bytes received, latency histogram).
    pub seconds: HashMap<u64, (u64, u64, LatencyHistogram)>,
    pub ports: Vec<u16>,
}

impl Worker {
    /// End a client: leave the room if asked, and keep what it measured.
    pub(super) fn finish(&mut self, id: u32, leaving: bool) {
        let Some(mut client) = self.clients.remove(&id) else { return };
        if leaving {
            let _ = client.setup.to_server.send(ClientMessage::Leave);
        }
        if let Some(socket) = client.socket.as_mut() {
            let _ = self.poll.registry().deregister(socket);
        }
        if client.connected_at.is_some() {
            self.shared.connected.fetch_sub(1, Ordering::Relaxed);
        }
        // Frozen tiles and unfinished switches are judged at the end of a window the client saw.
        let window_end = self.shared.window_end_us().filter(|end| {
            !leaving && client.connected_at.is_some() && self.shared.us(Instant::now()) >= *end
        });
        let mut frozen_tracks = 0;
        let mut paused_tiles = 0;
        let mut unfinished_switches = 0;
        if let Some(end) = window_end {
            let last_packet = |owner: u32| {
                LAYERS
                    .iter()
                    .filter_map(|l| client.rx.get(StreamKind::Video(l.rank()).id(owner))?.last_in_window_us)
                    .max()
            };
            // Tiles by the server's track id, or (against Janus) by the publisher's serial.
            let tiles = client
                .view
                .iter()
                .flat_map(|v| v.shown())
                .map(|(track, since)| (track.to_string(), self.shared.camera_owner(track), since))
                .chain(
                    client
                        .showing
                        .iter()
                        .flatten()
                        .map(|(o, since)| (format!("of lt-{o}"), Some(*o), *since)),
                );
            for (track, owner, since) in tiles {
                if client.paused_tiles.contains(&track) {
                    paused_tiles += 1;
                    continue;
                }
                let shown =
                    Shown { since_us: self.shared.us(since), last_packet_us: owner.and_then(last_packet) };
                if shown.frozen(end) {
                    frozen_tracks += 1;
                    let last =
                        shown.last_packet_us.map_or("nothing received in the window".to_string(), |t| {
                            format!(
                                "last packet {:.1} s before the end of the window",
                                (end - t) as f64 / 1e6
                            )
                        });
                    let me = format!("lt-{}-{}", client.setup.slot, client.setup.serial);
                    client.errors.push(format!("{me}: frozen tile: camera {track}: {last}"));
                }
            }
            let late = FROZEN_SUBSCRIBED.as_micros() as u64;
            unfinished_switches = client
                .rx_tracks
                .values()
                .filter_map(|t| t.switch)
                .filter(|(asked, _)| self.shared.us(*asked) + late < end)
                .count();
        }
        let ms = |from: Instant, to: Instant| to.saturating_duration_since(from).as_secs_f64() * 1000.0;
        let join_phases = match (client.join_ms, client.negotiated_at, client.connected_at) {
            (Some(join), Some(negotiated), Some(connected)) => {
                let open = client.setup.ws_open_at;
                // Without an ICE event the handshake's share is unknown: all of it is ICE's.
                let ice = client.ice_at.unwrap_or(connected).clamp(negotiated, connected);
                Some([
                    ms(open, negotiated),
                    ms(negotiated, connected),
                    (join - ms(open, connected)).max(0.0),
                    ms(negotiated, ice),
                    ms(ice, connected),
                ])
            }
            _ => None,
        };
        self.finished.push(ClientResult {
            serial: client.setup.serial,
            slot: client.setup.slot,
            join_ms: client.join_ms,
            join_phases,
            connected: client.connected_at.is_some(),
            left_early: leaving,
            engine_failed: client.engine_failed,
            speaker_events: client.speaker_events,
            whole_window: !leaving
                && client.connected_at.is_some_and(|t| self.shared.us(t) <= self.shared.window_start_us()),
            has_view: client.view.is_some() || client.showing.is_some(),
            twin: client.setup.twin,
            publishing_half: client.setup.publishing_half,
            frozen: frozen_tracks,
            paused_tiles,
            tile_pauses: client.tile_pauses,
            followed: client.followed.take(),
            layer_pauses: client.layer_pauses,
            switch_keyframe_ms: client.switch_keyframe_ms,
            unfinished_switches,
            first_keyframe_ms: client.rx_tracks.values().filter_map(|t| t.first_keyframe_ms).collect(),
            first_frame_ms: client.rx_tracks.values().filter_map(|t| t.first_frame_ms).collect(),
            cameras_without_frame: client.rx_tracks.values().filter(|t| t.first_frame_ms.is_none()).count(),
            video_ranks: client
                .rx
                .iter()
                .filter(|(_, r)| r.delivery.unique() > 0)
                .filter_map(|(id, _)| match StreamKind::of(id).1 {
                    StreamKind::Video(rank) => Some(rank),
                    _ => None,
                })
                .collect(),
            jitter_ms: client.rx.values().map(|r| r.jitter.ms()).collect(),
            received: client.rx.into_items().map(|(s, r)| (s, r.delivery)).collect(),
            close_reason: client.closed,
            errors: client.errors,
        });
    }
}
