//! A client's engine: made for its setup (sockets, tracks, the offer it starts from), and
//! kept in step with the server's signaling (answers, offers, slots, what it shows).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Interest, Token};
use proto::messages::{ClientMessage, ServerMessage, TrackLabel};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{Direction, MediaKind, Simulcast, SimulcastLayer};
use str0m::rtp::{Extension, ExtensionMap};
use str0m::{Candidate, Rtc};

use super::RxPath;
use super::{AudioTx, Client, ClientSetup, LayerTx, VideoTx, Worker, address_of};
use crate::expect::{StreamKind, TalkTurn};
use crate::idmap::Placed;
use crate::media::{KeyframeSchedule, Vp8Packetizer, layer_for_tile};
use crate::net::RecvBatch;
use crate::signal::FromServer;
use crate::srtp;
use crate::view::View;

impl Worker {
    pub(super) fn add(&mut self, setup: ClientSetup) -> std::io::Result<()> {
        let now = Instant::now();
        let (socket, local) = match &self.shared_socket {
            // An address of its own on the thread's socket: the server sees a distinct peer.
            Some(shared) => {
                (None, SocketAddr::new(address_of(setup.serial).into(), shared.local_addr()?.port()))
            }
            None => {
                let mut socket = UdpSocket::bind(SocketAddr::new(self.server_ip, 0))?;
                let local = socket.local_addr()?;
                self.ports.push(local.port());
                RecvBatch::stamp_arrivals(&socket)?;
                RecvBatch::take_whole_sends(&socket);
                self.poll.registry().register(
                    &mut socket,
                    Token(setup.serial as usize),
                    Interest::READABLE,
                )?;
                (Some(socket), local)
            }
        };
        // The engine's DTLS keeps a copy of its SRTP keys for our own receive path.
        srtp::building_for(setup.serial);
        let mut builder = Rtc::builder().set_rtp_mode(true).set_crypto_provider(srtp::crypto_provider());
        if self.rx_path == RxPath::Own {
            // The engine sees only the packets our own path has not learned: its
            // transport-wide feedback would report the rest lost, and the server's
            // estimate would fall for loss nobody had. Without the extension negotiated,
            // none is sent (the engine path sends true feedback).
            let mut exts = ExtensionMap::empty();
            for (id, ext) in ExtensionMap::standard().iter() {
                if *ext != Extension::TransportSequenceNumber {
                    exts.set(id, ext.clone());
                }
            }
            builder = builder.set_extension_map(exts);
        }
        let mut rtc = builder.build(now);
        rtc.add_local_candidate(Candidate::host(local, "udp").map_err(std::io::Error::other)?);
        let mut api = rtc.sdp_api();
        let mut tracks = Vec::new();
        let serial = setup.serial;
        let audio = setup.audio.then(|| {
            let mid = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
            tracks.push(TrackLabel { mid: mid.to_string(), source: "microphone".into() });
            AudioTx {
                mid,
                seq: [0, 0],
                turn: TalkTurn::default(),
                rtp_seq: fastrand::u64(..30_000),
                ts: fastrand::u32(..),
                frame: 0,
                tx: None,
            }
        });
        let video = (!setup.video.is_empty()).then(|| {
            let simulcast = setup.video.len() > 1;
            let layers = simulcast.then(|| {
                let mut s = Simulcast::new();
                for shape in &setup.video {
                    s.add_send_layer(SimulcastLayer::new(shape.rid));
                }
                s
            });
            let mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, layers);
            tracks.push(TrackLabel { mid: mid.to_string(), source: "camera".into() });
            let interval = Duration::from_secs_f64(self.scenario.video.keyframe_interval_s);
            let layers = setup
                .video
                .iter()
                .map(|&shape| LayerTx {
                    shape,
                    stream: StreamKind::Video(shape.rank()).id(serial),
                    seq: 0,
                    rtp_seq: fastrand::u64(..30_000),
                    ts: fastrand::u32(..),
                    sizes: shape.frame_sizes(interval),
                    keyframes: KeyframeSchedule::new(&shape, interval),
                    packetizer: Vp8Packetizer::default(),
                    tx: None,
                    paused: false,
                    next_frame: None,
                })
                .collect();
            VideoTx { mid, simulcast, layers }
        });
        if setup.watch {
            api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
            api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        } else if audio.is_none() && video.is_none() && setup.offers {
            api.add_channel("loadtest".into());
        }
        let pending = if setup.offers {
            let Some((offer, pending)) = api.apply() else {
                return Err(std::io::Error::other("nothing to offer"));
            };
            let _ = setup.to_server.send(ClientMessage::Offer { sdp: offer.to_sdp_string(), tracks });
            Some(pending)
        } else {
            None
        };
        let mut streams = Vec::new();
        if audio.is_some() {
            streams.extend([StreamKind::Talk.id(serial), StreamKind::Unexpected.id(serial)]);
        }
        streams.extend(video.iter().flat_map(|v| v.layers.iter().map(|l| l.stream)));
        for s in streams {
            self.shared.streams[s as usize].owner.store(serial, Ordering::Relaxed);
        }
        let view = self.scenario.view.clone().zip(setup.joined.as_ref()).map(|(plan, j)| View::new(plan, j));
        self.clients.insert(
            serial,
            Client {
                setup,
                rtc,
                srtp: None,
                srtp_refused: 0,
                socket,
                local,
                pending,
                audio,
                video,
                camera_track: None,
                view,
                showing: None,
                connected_at: None,
                ice_at: None,
                negotiated_at: None,
                join_ms: None,
                last_offer_at: now,
                rx: Placed::default(),
                rx_tracks: Placed::default(),
                slots: HashMap::new(),
                layer_pauses: 0,
                paused_tiles: Default::default(),
                tile_pauses: 0,
                followed: (self.shared.followed == Some(serial)).then(Vec::new),
                switch_keyframe_ms: Vec::new(),
                timeout: now,
                rtc_timer: None,
                closed: None,
                engine_failed: false,
                speaker_events: 0,
                errors: Vec::new(),
            },
        );
        self.update_view(serial, now);
        self.drain(serial);
        Ok(())
    }

    pub(super) fn signal(&mut self, id: u32, message: FromServer) {
        let Some(client) = self.clients.get_mut(&id) else { return };
        let now = Instant::now();
        let m = match message {
            FromServer::Closed(why) => {
                client.closed =
                    Some(why.map(|(c, r)| format!("{c} {r}")).unwrap_or_else(|| "socket closed".into()));
                return;
            }
            FromServer::Unreadable(why) => return client.errors.push(why),
            FromServer::Showing(owners) => {
                let before = client.showing.take().unwrap_or_default();
                let since = |o: u32| before.iter().find(|(b, _)| *b == o).map_or(now, |(_, t)| *t);
                client.showing = Some(owners.into_iter().map(|o| (o, since(o))).collect());
                return;
            }
            FromServer::Message(m) => m,
        };
        match &m {
            ServerMessage::Answer { sdp, tracks } => {
                let Some(pending) = client.pending.take() else { return };
                client.negotiated_at.get_or_insert(now);
                let camera_mid = client.video.as_ref().map(|v| v.mid.to_string());
                let camera = tracks.iter().find(|t| Some(&t.mid) == camera_mid.as_ref());
                if let Some(track) = camera {
                    client.camera_track = Some(track.track.id.clone());
                    self.shared.note_camera(&track.track.id, id);
                }
                match SdpAnswer::from_sdp_string(sdp) {
                    Ok(answer) => {
                        if let Err(e) = client.rtc.sdp_api().accept_answer(pending, answer) {
                            client.errors.push(format!("answer refused: {e}"));
                        }
                    }
                    Err(e) => client.errors.push(format!("bad answer SDP: {e}")),
                }
            }
            ServerMessage::Offer { sdp } => {
                client.last_offer_at = now;
                client.negotiated_at.get_or_insert(now);
                match SdpOffer::from_sdp_string(sdp)
                    .map_err(|e| e.to_string())
                    .and_then(|offer| client.rtc.sdp_api().accept_offer(offer).map_err(|e| e.to_string()))
                {
                    Ok(answer) => {
                        let _ = client
                            .setup
                            .to_server
                            .send(ClientMessage::Answer { sdp: answer.to_sdp_string() });
                    }
                    Err(e) => client.errors.push(format!("server offer refused: {e}")),
                }
            }
            ServerMessage::Error { code, message } => client.errors.push(format!("{code}: {message}")),
            ServerMessage::ActiveSpeaker { .. } => client.speaker_events += 1,
            ServerMessage::TrackPaused { track_id, paused, .. } => {
                if *paused {
                    client.tile_pauses += u32::from(client.paused_tiles.insert(track_id.clone()));
                } else {
                    client.paused_tiles.remove(track_id);
                }
            }
            ServerMessage::Slots { slots } => {
                for slot in slots {
                    match &slot.track_id {
                        Some(track) => client.slots.insert(slot.mid.clone(), (track.clone(), now)),
                        None => client.slots.remove(&slot.mid),
                    };
                }
            }
            ServerMessage::Layers { track_id, active } if Some(track_id) == client.camera_track.as_ref() => {
                if let Some(video) = client.video.as_mut().filter(|v| v.simulcast) {
                    for layer in &mut video.layers {
                        let wanted = active.iter().any(|a| a == layer.shape.rid);
                        if !wanted && !layer.paused {
                            client.layer_pauses += 1;
                        } else if wanted && layer.paused {
                            // Whoever waits for it needs a keyframe to start.
                            layer.keyframes.request();
                        }
                        layer.paused = !wanted;
                    }
                }
            }
            _ => {}
        }
        if let Some(view) = client.view.as_mut() {
            view.handle_message(&m);
            self.update_view(id, now);
        }
        // Only negotiation touches the engine; the room's chatter (O(n^2) messages while a
        // large room fills) must not cost a poll of it each.
        if matches!(m, ServerMessage::Answer { .. } | ServerMessage::Offer { .. }) {
            self.drain(id);
        }
    }

    /// Send the view's subscription when it changed, and start waiting for the new layer
    /// of each resized tile.
    fn update_view(&mut self, id: u32, now: Instant) {
        let Some(client) = self.clients.get_mut(&id) else { return };
        let Some(subscription) = client.view.as_mut().and_then(|v| v.poll_subscribe(now)) else { return };
        let _ = client.setup.to_server.send(subscription.message());
        let layers = self.scenario.camera_layers();
        for tile in subscription.resized {
            let Some(wanted) = layer_for_tile(&layers, tile.width, tile.height) else { continue };
            let Some(track) = self.shared.camera_owner(&tile.track).and_then(|o| client.rx_tracks.get_mut(o))
            else {
                continue;
            };
            track.switch = (track.layer != wanted.rank()).then_some((now, track.layer));
        }
    }
}
