//! The router without sockets or engines: endpoints join, publish and negotiate the way
//! the shard drives them, packets go in with time as an argument, and what comes out is
//! checked packet by packet.

use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::format::Codec;
use str0m::media::Mid;

use super::*;
use crate::api::{JoinRequest, TrackInfo, TrackSource};

const VP8: u8 = 96;
const OPUS: u8 = 111;
const RED: u8 = 63;

fn codecs() -> PayloadTypes {
    vec![
        (VP8, CodecKey { codec: Codec::Vp8, clock_rate: 90_000, h264: None }),
        (OPUS, CodecKey { codec: Codec::Opus, clock_rate: 48_000, h264: None }),
    ]
}

/// What a browser that takes RED negotiates.
fn codecs_with_red() -> PayloadTypes {
    let mut codecs = codecs();
    codecs.push((RED, CodecKey::opus_red()));
    codecs
}

/// A VP8 payload: descriptor with the start bit, then the frame header's P bit.
fn vp8(keyframe: bool, fill: u8) -> Arc<[u8]> {
    vp8_sized(keyframe, fill, 4)
}

fn vp8_sized(keyframe: bool, fill: u8, len: usize) -> Arc<[u8]> {
    let mut payload = vec![fill; len.max(2)];
    payload[0] = 0x10;
    payload[1] = if keyframe { 0x00 } else { 0x01 };
    payload.into()
}

/// A router, the endpoints in one room, and the time.
struct Room {
    router: Router,
    now: Instant,
    next_id: SessionId,
    next_mid: u32,
    metrics: SfuMetrics,
    kinds: std::collections::HashMap<SourceKey, TrackKind>,
    /// Endpoints whose sinks negotiate RED beside Opus.
    red_takers: Vec<SessionId>,
}

impl Room {
    fn new() -> Self {
        let now = Instant::now();
        let metrics = SfuMetrics::new(&prometheus::Registry::new());
        let config = RouterConfig {
            max_participants_per_room: 300,
            max_viewers_per_room: 5_000,
            keyframe_request_interval: Duration::from_millis(500),
            audio: AudioSelectConfig::default(),
        };
        let router = Router::new(config, metrics.clone(), now);
        Self {
            router,
            now,
            next_id: 1,
            next_mid: 0,
            metrics,
            kinds: Default::default(),
            red_takers: Vec::new(),
        }
    }

    fn enter(&mut self, name: &str, relay: bool) -> SessionId {
        self.enter_as(name, relay, false)
    }

    /// `continues`: the same participant's next session (a page reload).
    fn enter_as(&mut self, name: &str, relay: bool, continues: bool) -> SessionId {
        let id = self.next_id;
        self.next_id += 1;
        let request = JoinRequest {
            room: "r".into(),
            participant_id: name.into(),
            identity: name.into(),
            name: name.into(),
            can_publish: true,
            can_subscribe: true,
            replaces: continues,
            continues,
        };
        self.router.join(id, &request, relay, self.now).expect("joins");
        self.router.set_codecs(id, codecs_with_red());
        id
    }

    /// A participant whose first negotiation is done.
    fn join(&mut self, name: &str) -> SessionId {
        let id = self.enter(name, false);
        self.router.negotiated(id, self.now);
        self.negotiate(id);
        id
    }

    fn publish(&mut self, id: SessionId, kind: TrackKind) -> SourceKey {
        let mid = self.mid();
        let track = TrackInfo {
            id: format!("TR_{id}_{mid}"),
            kind,
            source: if kind == TrackKind::Audio { TrackSource::Microphone } else { TrackSource::Camera },
            muted: false,
        };
        self.router.publish(id, mid, track, self.now);
        self.kinds.insert((id, mid), kind);
        (id, mid)
    }

    fn mid(&mut self) -> Mid {
        self.next_mid += 1;
        Mid::from(format!("m{}", self.next_mid).as_str())
    }

    /// What the shard does for an endpoint's pending sinks: one offer, then the answer.
    fn negotiate(&mut self, id: SessionId) -> Vec<Mid> {
        let wanted = self.router.slots_to_add(id);
        let added: Vec<(Mid, SourceKey)> = wanted.iter().map(|w| (self.mid(), w.source)).collect();
        self.router.slots_added(id, &added, self.now);
        let taken = if self.red_takers.contains(&id) { codecs_with_red() } else { codecs() };
        for (mid, _) in &added {
            self.router.sink_negotiated(id, *mid, taken.clone(), self.now);
        }
        added.into_iter().map(|(mid, _)| mid).collect()
    }

    /// Negotiate every endpoint that asked for an offer, and return the other outputs.
    fn settle(&mut self) -> Vec<Output> {
        let mut rest = Vec::new();
        while let Some(out) = self.router.poll_output() {
            match out {
                Output::OfferNeeded(id) => {
                    self.negotiate(id);
                }
                Output::Forward { sink, at, .. } => {
                    let place = self.router.endpoints[&sink.0].sinks.place(&sink.1);
                    assert_eq!(place, Some(at), "a forward names its sink's place");
                    rest.push(out);
                }
                other => rest.push(other),
            }
        }
        rest
    }

    fn packet(&mut self, source: SourceKey, layer: u8, seq: u16, payload: Arc<[u8]>) -> Vec<Output> {
        let video = self.kinds.get(&source) == Some(&TrackKind::Video);
        self.packet_as(source, layer, seq, if video { VP8 } else { OPUS }, payload)
    }

    fn packet_as(
        &mut self,
        source: SourceKey,
        layer: u8,
        seq: u16,
        pt: u8,
        payload: Arc<[u8]>,
    ) -> Vec<Output> {
        let video = self.kinds.get(&source) == Some(&TrackKind::Video);
        let packet = SourcePacket {
            ssrc: ssrc(source, layer),
            seq,
            timestamp: seq as u32 * 3000,
            marker: true,
            pt,
            payload,
            audio_level: (!video).then_some(-20),
            voice_activity: (!video).then_some(true),
            arrival: self.now,
        };
        self.router.handle_input(Input::Packet { source, layer, rid: None, packet }, self.now);
        self.settle()
    }

    fn advance(&mut self, by: Duration) -> Vec<Output> {
        self.now += by;
        self.router.handle_input(Input::Timeout, self.now);
        self.settle()
    }
}

/// Each source layer's SSRC in these tests.
fn ssrc(source: SourceKey, layer: u8) -> u32 {
    let n: u32 = source.1.to_string().trim_start_matches('m').parse().expect("mids are m<n>");
    1000 + n * 10 + layer as u32
}

fn forwarded(outputs: &[Output]) -> Vec<(SinkKey, &Forwarded)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Forward { sink, packet, .. } => Some((*sink, packet)),
            _ => None,
        })
        .collect()
}

fn to(outputs: &[Output], endpoint: SessionId) -> Vec<&Forwarded> {
    forwarded(outputs).into_iter().filter(|(sink, _)| sink.0 == endpoint).map(|(_, f)| f).collect()
}

fn keyframe_requests(outputs: &[Output]) -> Vec<u32> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::KeyframeRequest { ssrc, .. } => Some(*ssrc),
            _ => None,
        })
        .collect()
}

#[test]
fn a_class_audience_is_limited_apart_from_the_meeting() {
    let mut room = Room::new();
    room.router.config.max_participants_per_room = 2;
    room.router.config.max_viewers_per_room = 3;
    let request = |name: &str, can_publish: bool| JoinRequest {
        room: "r".into(),
        participant_id: name.into(),
        identity: name.into(),
        name: name.into(),
        can_publish,
        can_subscribe: true,
        replaces: false,
        continues: false,
    };
    let now = room.now;
    for (id, name) in [(1, "a"), (2, "b")] {
        room.router.join(id, &request(name, true), false, now).expect("a participant");
    }
    assert!(matches!(
        room.router.join(3, &request("c", true), false, now),
        Err(crate::api::MediaError::RoomFull(2))
    ));
    for (id, name) in [(4, "v1"), (5, "v2"), (6, "v3")] {
        room.router
            .join(id, &request(name, false), false, now)
            .expect("viewers do not count as participants");
    }
    assert!(matches!(
        room.router.join(7, &request("v4", false), false, now),
        Err(crate::api::MediaError::RoomFull(3))
    ));
    room.router.join(8, &request("relay", true), true, now).expect("a relay link counts toward neither");
}

#[test]
fn audio_reaches_every_sink_numbered_continuously_across_a_change_of_source() {
    let mut room = Room::new();
    let alice = room.join("alice");
    let bob = room.join("bob");
    let carol = room.join("carol");
    let mic = room.publish(alice, TrackKind::Audio);
    // First packet admits the track and gives bob and carol a sink for it.
    room.packet(mic, 0, 100, vec![1, 2, 3].into());
    let mut seqs = Vec::new();
    for seq in 101..=105 {
        let out = room.packet(mic, 0, seq, vec![9; 3].into());
        assert_eq!(to(&out, alice).len(), 0, "nobody hears themselves");
        let (b, c) = (to(&out, bob), to(&out, carol));
        assert_eq!((b.len(), c.len()), (1, 1), "packet {seq} to bob and carol");
        assert_eq!(b[0].pt, OPUS);
        seqs.push(b[0].seq);
    }
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "continuous: {seqs:?}");
    // Alice republishes: a new source, but bob's and carol's numbering carries on.
    room.router.unpublish(alice, mic.1);
    room.settle();
    let mic2 = room.publish(alice, TrackKind::Audio);
    room.settle();
    let out = room.packet(mic2, 0, 40_000, vec![7; 3].into());
    let next = to(&out, bob);
    assert_eq!(next.len(), 1, "the new source reaches bob on a reused sink");
    assert!(next[0].seq > *seqs.last().unwrap(), "no jump back: {} after {:?}", next[0].seq, seqs);
}

#[test]
fn red_audio_passes_to_who_took_red_and_its_primary_to_the_others() {
    let mut room = Room::new();
    let alice = room.join("alice");
    room.red_takers.push(3);
    let bob = room.join("bob");
    let carol = room.join("carol");
    assert_eq!(carol, 3);
    let mic = room.publish(alice, TrackKind::Audio);
    // One redundant block (the frame before, 3 bytes), then the primary (2 bytes).
    let red: Arc<[u8]> = vec![0x80 | OPUS, 0x0f, 0x00, 3, OPUS, 1, 1, 1, 7, 7].into();
    room.packet_as(mic, 0, 100, RED, red.clone());
    let mut seqs = Vec::new();
    for seq in 101..=103 {
        let out = room.packet_as(mic, 0, seq, RED, red.clone());
        let (b, c) = (to(&out, bob), to(&out, carol));
        assert_eq!((b.len(), c.len()), (1, 1), "packet {seq} to bob and carol");
        assert_eq!((b[0].pt, &b[0].payload[..]), (OPUS, &[7, 7][..]), "bob took Opus only: the primary");
        assert_eq!((c[0].pt, &c[0].payload[..]), (RED, &red[..]), "carol took RED: as it came");
        seqs.push(b[0].seq);
    }
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "continuous: {seqs:?}");
    assert_eq!((room.metrics.red_passed.get(), room.metrics.red_unwrapped.get()), (3, 3));
    // Blocks that run past the payload's end: nobody gets the packet, and it is counted.
    let out = room.packet_as(mic, 0, 104, RED, vec![0x80 | OPUS, 0, 0, 200, OPUS, 1].into());
    assert!(forwarded(&out).is_empty());
    assert_eq!(room.metrics.not_forwarded.with_label_values(&["malformed_red"]).get(), 1);
    let out = room.packet_as(mic, 0, 105, RED, red.clone());
    assert_eq!(to(&out, bob)[0].seq, seqs[2] + 2, "the dropped packet is a gap, as a loss would be");
}

#[test]
fn simulcast_starts_and_switches_layers_only_at_keyframes() {
    let mut room = Room::new();
    let alice = room.join("alice");
    let bob = room.join("bob");
    let cam = room.publish(alice, TrackKind::Video);
    room.settle();
    // Bob (no view yet: he wants the best) starts on q, the only layer arriving, at its
    // keyframe; when h starts arriving he moves up at h's first keyframe, not before.
    assert_eq!(to(&room.packet(cam, 0, 1, vp8(true, 0)), bob).len(), 1, "starts at q's keyframe");
    let out = room.packet(cam, 1, 1, vp8(false, 1));
    assert!(to(&out, bob).is_empty(), "a delta frame of h does not switch");
    assert!(keyframe_requests(&out).contains(&ssrc(cam, 1)), "asks h for a keyframe");
    let out = room.packet(cam, 1, 2, vp8(true, 1));
    assert_eq!(to(&out, bob).len(), 1, "switches at h's keyframe");
    let out = room.packet(cam, 0, 2, vp8(true, 0));
    assert!(to(&out, bob).is_empty(), "other layers are not forwarded");

    // Bob's tile shrinks to q: h keeps flowing until q's next keyframe.
    let track = format!("TR_{alice}_{}", cam.1);
    room.router.set_view(bob, vec![ShownTrack { track_id: track, quality: 0 }], room.now);
    room.settle();
    assert_eq!(to(&room.packet(cam, 1, 3, vp8(false, 1)), bob).len(), 1, "h until the switch");
    assert!(to(&room.packet(cam, 0, 3, vp8(false, 0)), bob).is_empty(), "q waits for a keyframe");
    let before = room.metrics.layer_switches.get();
    let out = room.packet(cam, 0, 4, vp8(true, 0));
    let sent = to(&out, bob);
    assert_eq!(sent.len(), 1, "switched at q's keyframe");
    assert_eq!(sent[0].layer, 0);
    assert_eq!(room.metrics.layer_switches.get(), before + 1);
    assert!(to(&room.packet(cam, 1, 4, vp8(false, 1)), bob).is_empty(), "h no longer");
}

#[test]
fn large_rooms_forward_only_the_places_of_top_n() {
    let mut room = Room::new();
    let ids: Vec<SessionId> = (0..12).map(|i| room.join(&format!("p{i}"))).collect();
    let mics: Vec<SourceKey> = ids.iter().map(|id| room.publish(*id, TrackKind::Audio)).collect();
    room.settle();
    let listener = ids[11];
    let mut heard = std::collections::BTreeSet::new();
    for seq in 0..5 {
        // Five speak, in turn; the fifth finds the places (top 3, plus one for a hand-over)
        // taken by talkers.
        for mic in &mics[..5] {
            let out = room.packet(*mic, 0, seq, vec![seq as u8; 3].into());
            if !to(&out, listener).is_empty() {
                heard.insert(mic.0);
            }
        }
    }
    assert_eq!(heard.len(), 4, "four of the five talkers reach the listener: {heard:?}");
    assert!(!heard.contains(&mics[4].0), "not the one who came last");
    assert!(room.metrics.audio_not_selected.get() > 0, "the fifth is counted as not selected");
}

#[test]
fn a_relay_sink_gets_what_a_webrtc_sink_gets_and_every_layer() {
    let mut room = Room::new();
    let alice = room.join("alice");
    let bob = room.join("bob");
    let edge = room.enter("edge", true);
    let cam = room.publish(alice, TrackKind::Video);
    let mic = room.publish(alice, TrackKind::Audio);
    room.settle();
    // The relay link takes both sources (the edge asks for them over its control stream).
    let relay_mids = {
        let a = room.mid();
        let b = room.mid();
        room.router.slots_added(edge, &[(a, cam), (b, mic)], room.now);
        room.router.sink_negotiated(edge, a, Vec::new(), room.now);
        room.router.sink_negotiated(edge, b, Vec::new(), room.now);
        [a, b]
    };
    let mut to_bob = Vec::new();
    let mut to_edge = Vec::new();
    for seq in 0..6u16 {
        for layer in 0..2 {
            let out = room.packet(cam, layer, seq, vp8(seq % 3 == 0, layer));
            to_bob.extend(to(&out, bob).into_iter().map(|f| (f.layer, f.payload.clone())));
            to_edge.extend(
                forwarded(&out).into_iter().filter(|(s, _)| s.0 == edge).map(|(s, f)| (s.1, f.clone())),
            );
        }
        let out = room.packet(mic, 0, seq, vec![5; 3].into());
        to_edge
            .extend(forwarded(&out).into_iter().filter(|(s, _)| s.0 == edge).map(|(s, f)| (s.1, f.clone())));
    }
    let video: Vec<&Forwarded> =
        to_edge.iter().filter(|(m, _)| *m == relay_mids[0]).map(|(_, f)| f).collect();
    assert_eq!(video.len(), 12, "every packet of both layers, from the first");
    assert!(video.iter().all(|f| f.pt == VP8 && f.seq as u16 == (f.timestamp / 3000) as u16), "as it came");
    assert_eq!(to_edge.iter().filter(|(m, _)| *m == relay_mids[1]).count(), 6, "and the audio");
    // What bob got is the relay's packets of the layer bob takes.
    assert!(!to_bob.is_empty());
    for (layer, payload) in &to_bob {
        assert!(video.iter().any(|f| f.layer == *layer && f.payload == *payload));
    }
    let participants: Vec<&str> = room.router.rooms["r"]
        .members
        .iter()
        .filter(|m| !m.hidden)
        .map(|m| m.participant_id.as_str())
        .collect();
    assert_eq!(participants, ["alice", "bob"], "the relay link is nobody's participant");
}

#[test]
fn a_departure_frees_sinks_and_closes_an_empty_room() {
    let mut room = Room::new();
    let alice = room.join("alice");
    let bob = room.join("bob");
    let cam = room.publish(alice, TrackKind::Video);
    room.settle();
    room.packet(cam, 0, 1, vp8(true, 0));
    let departure = room.router.leave(alice, crate::api::LeaveReason::Left);
    assert!(!departure.room_closed);
    let out = room.settle();
    let told: Vec<&SessionEvent> = out
        .iter()
        .filter_map(|o| match o {
            Output::Event { to, event } if *to == bob => Some(event),
            _ => None,
        })
        .collect();
    assert!(told.iter().any(|e| matches!(e, SessionEvent::Slots(s) if s[0].track.is_none())), "{told:?}");
    assert!(told.iter().any(|e| matches!(e, SessionEvent::TrackUnpublished { .. })));
    assert!(told.iter().any(|e| matches!(e, SessionEvent::ParticipantLeft { .. })));
    assert!(room.router.leave(bob, crate::api::LeaveReason::Left).room_closed);
    assert_eq!(room.metrics.rooms.get(), 0);
    assert_eq!(room.metrics.tracks.get(), 0);
}

#[test]
fn a_relay_source_reaches_participants_like_a_published_track() {
    let mut room = Room::new();
    let bob = room.join("bob");
    // An edge node's link from its origin: a hidden endpoint whose sources are the
    // origin's tracks, fed with what arrives over the link.
    let origin = room.enter("origin", true);
    let cam = room.publish(origin, TrackKind::Video);
    room.settle();
    let out = room.packet(cam, 0, 7, vp8(true, 3));
    let got = to(&out, bob);
    assert_eq!(got.len(), 1, "bob gets the relayed track from its keyframe");
    assert_eq!(got[0].payload, vp8(true, 3));
    assert_eq!(room.router.rooms["r"].participants(), 1, "only bob is a participant");
}

#[test]
fn keyframe_requests_from_many_sinks_reach_the_publisher_once_per_interval() {
    let mut room = Room::new();
    let alice = room.join("alice");
    let viewers: Vec<SessionId> = (0..10).map(|i| room.join(&format!("v{i}"))).collect();
    let cam = room.publish(alice, TrackKind::Video);
    room.settle();
    // Ten sinks start on a delta frame: every one of them waits for a keyframe.
    let mut requests = keyframe_requests(&room.packet(cam, 0, 1, vp8(false, 0)));
    for seq in 2..10 {
        room.now += Duration::from_millis(20);
        requests.extend(keyframe_requests(&room.packet(cam, 0, seq, vp8(false, 0))));
    }
    assert_eq!(requests, vec![ssrc(cam, 0)], "one request for ten waiting sinks within 500 ms");
    // The throttle defers the next one to the end of the interval, and a keyframe ends it.
    let deferred = keyframe_requests(&room.advance(Duration::from_millis(400)));
    assert_eq!(deferred, vec![ssrc(cam, 0)], "the deferred request goes out when the interval ends");
    let out = room.packet(cam, 0, 10, vp8(true, 0));
    assert_eq!(viewers.iter().filter(|v| to(&out, **v).len() == 1).count(), 10, "all start at the keyframe");
    assert!(keyframe_requests(&room.advance(Duration::from_millis(600))).is_empty(), "nobody waits now");
}

#[test]
fn an_estimate_below_what_is_sent_steps_video_down_and_a_fall_is_fitted_at_once() {
    let mut room = Room::new();
    let alice = room.join("alice");
    let bob = room.join("bob");
    let cam = room.publish(alice, TrackKind::Video);
    room.settle();
    let bob_sink =
        |room: &Room| room.router.endpoints[&bob].sinks.values().next().map(|s| (s.current, s.target));
    // A second of video: 15 packets of 1,000 bytes per layer every 200 ms (600 kbps a
    // layer); bob, who never said what he shows, climbs to f at its first keyframe.
    let mut seq = 0;
    let mut second = |room: &mut Room| {
        let mut outputs = Vec::new();
        for _ in 0..5 {
            for _ in 0..15 {
                seq += 1;
                for layer in 0..3 {
                    room.packet(cam, layer, seq, vp8_sized(seq == 1, layer, 1000));
                }
            }
            outputs.extend(room.advance(Duration::from_millis(200)));
        }
        outputs
    };
    second(&mut room);
    assert_eq!(bob_sink(&room), Some((Some(2), Some(2))), "on f");
    room.router.handle_input(Input::Estimate { endpoint: bob, bps: 10_000_000 }, room.now);
    second(&mut room);
    assert_eq!(bob_sink(&room), Some((Some(2), Some(2))), "still on f");
    room.router.handle_input(Input::Estimate { endpoint: bob, bps: 400_000 }, room.now);
    let (_, target) = bob_sink(&room).expect("bob's sink");
    assert!(target < Some(2), "400 kbps does not carry a 600 kbps layer, at once: target {target:?}");
    // Not even q (600 kbps here): paused, and bob is told so (his tile is not frozen).
    let told = |outputs: &[Output]| -> Vec<bool> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Event { to, event: SessionEvent::TrackPaused { paused, .. } } if *to == bob => {
                    Some(*paused)
                }
                _ => None,
            })
            .collect()
    };
    let outputs = room.settle();
    assert_eq!(target, None);
    assert_eq!(told(&outputs), [true], "told once");
    assert_eq!(told(&second(&mut room)), Vec::<bool>::new(), "and not again");
    room.router.handle_input(Input::Estimate { endpoint: bob, bps: 10_000_000 }, room.now);
    assert_eq!(told(&second(&mut room)), [false], "told it goes again");
}

#[test]
fn a_relay_link_keeps_every_simulcast_layer_on() {
    let mut room = Room::new();
    let alice = room.join("alice");
    let edge = room.enter("edge", true);
    let cam = room.publish(alice, TrackKind::Video);
    room.settle();
    let mid = room.mid();
    room.router.slots_added(edge, &[(mid, cam)], room.now);
    room.router.sink_negotiated(edge, mid, Vec::new(), room.now);
    for step in 0..15u16 {
        for layer in 0..3 {
            room.packet(cam, layer, step, vp8(step == 0, layer));
        }
        room.advance(Duration::from_millis(200));
    }
    let source = &room.router.rooms["r"].sources[&cam];
    let paused: Vec<bool> = source.layers.iter().map(|l| l.paused).collect();
    assert_eq!(paused, vec![false; 3], "the edge's viewers choose among all three");
}

#[test]
fn a_relayed_track_that_comes_back_reaches_the_viewers_who_showed_it() {
    let mut room = Room::new();
    let viewer = room.join("viewer");
    let relayed = |id: &str| RelayedTrack {
        track: TrackInfo { id: id.into(), kind: TrackKind::Video, source: TrackSource::Camera, muted: false },
        participant: "PA_teacher".into(),
        codecs: codecs(),
    };
    // The link from the origin brings the teacher's camera; the viewer shows it.
    let link = room.enter("origin", true);
    let mid = room.mid();
    room.router.publish_relayed(link, mid, relayed("TR_cam"), room.now);
    room.kinds.insert((link, mid), TrackKind::Video);
    room.router.set_view(viewer, vec![ShownTrack { track_id: "TR_cam".into(), quality: 0 }], room.now);
    room.settle();
    assert_eq!(to(&room.packet((link, mid), 0, 1, vp8(true, 1)), viewer).len(), 1);
    let joined = room.router.join(
        99,
        &JoinRequest {
            room: "r".into(),
            participant_id: "late".into(),
            identity: "late".into(),
            name: "late".into(),
            can_publish: false,
            can_subscribe: true,
            replaces: false,
            continues: false,
        },
        false,
        room.now,
    );
    let others = joined.expect("joins");
    assert!(
        others.iter().any(|p| p.id == "PA_teacher" && p.tracks.iter().any(|t| t.id == "TR_cam")),
        "a newcomer sees the relayed publisher: {others:?}"
    );
    // The link is lost, then comes back with the same track.
    room.router.leave(link, crate::api::LeaveReason::RoomClosed);
    let out = room.settle();
    let unpublished = out.iter().any(|o| {
        matches!(o, Output::Event { to, event: SessionEvent::TrackUnpublished { participant_id, .. } }
            if *to == viewer && participant_id == "PA_teacher")
    });
    assert!(unpublished, "the viewer is told the teacher's track ended, as the teacher's");
    let link = room.enter("origin", true);
    let mid = room.mid();
    room.router.publish_relayed(link, mid, relayed("TR_cam"), room.now);
    room.kinds.insert((link, mid), TrackKind::Video);
    room.settle();
    assert_eq!(to(&room.packet((link, mid), 0, 1, vp8(true, 2)), viewer).len(), 1, "forwarded again");
}

#[test]
fn a_late_viewer_of_a_broadcast_starts_from_the_cached_keyframe() {
    let mut room = Room::new();
    // A broadcast publisher (WHIP: it receives nothing) and a meeting participant.
    let teacher = 50;
    let request = JoinRequest {
        room: "r".into(),
        participant_id: "teacher".into(),
        identity: "teacher".into(),
        name: "teacher".into(),
        can_publish: true,
        can_subscribe: false,
        replaces: false,
        continues: false,
    };
    room.router.join(teacher, &request, false, room.now).expect("joins");
    room.router.set_codecs(teacher, codecs());
    room.router.negotiated(teacher, room.now);
    let cam = room.publish(teacher, TrackKind::Video);
    let alice = room.join("alice");
    let meeting_cam = room.publish(alice, TrackKind::Video);
    room.settle();
    for seq in 0..8u16 {
        room.packet(cam, 0, seq, vp8(seq == 2, seq as u8));
        room.packet(meeting_cam, 0, seq, vp8(seq == 2, seq as u8));
    }
    // A viewer comes: the broadcast starts at once from its last keyframe, the meeting
    // camera waits for a keyframe it asks for.
    let viewer = room.enter("viewer", false);
    room.router.negotiated(viewer, room.now);
    let wanted = room.router.slots_to_add(viewer);
    let added: Vec<(Mid, SourceKey)> = wanted.iter().map(|w| (room.mid(), w.source)).collect();
    room.router.slots_added(viewer, &added, room.now);
    for (mid, _) in &added {
        room.router.sink_negotiated(viewer, *mid, codecs(), room.now);
    }
    let out = room.settle();
    let cam_mid = added.iter().find(|(_, k)| *k == cam).map(|(m, _)| *m).expect("a sink for the class");
    let started: Vec<&Forwarded> =
        forwarded(&out).into_iter().filter(|(s, _)| *s == (viewer, cam_mid)).map(|(_, f)| f).collect();
    assert_eq!(started.len(), 6, "the keyframe and the five packets after it");
    assert!(started[0].payload[1] & 1 == 0, "first a keyframe");
    assert!(started.windows(2).all(|w| w[1].seq == w[0].seq + 1), "in order");
    assert_eq!(
        keyframe_requests(&out),
        vec![ssrc(meeting_cam, 0)],
        "only the meeting camera asks the publisher"
    );
    let next = room.packet(cam, 0, 8, vp8(false, 8));
    let live: Vec<&Forwarded> = to(&next, viewer);
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].seq, started[5].seq + 1, "then live, numbered on");
    assert_eq!(room.metrics.relay.keyframe_cache.with_label_values(&["hit"]).get(), 1);
}

#[test]
fn shed_video_pauses_the_least_important_tiles_first_keeps_audio_and_lifts_again() {
    let mut room = Room::new();
    let alice = room.join("alice");
    let carol = room.join("carol");
    let bob = room.join("bob");
    let cams = [room.publish(alice, TrackKind::Video), room.publish(carol, TrackKind::Video)];
    let mic = room.publish(alice, TrackKind::Audio);
    room.settle();
    // A second of both cameras: 15 packets of 1,000 bytes per layer every 200 ms.
    let mut seq = 0;
    let mut second = |room: &mut Room| {
        for _ in 0..5 {
            for _ in 0..15 {
                seq += 1;
                for cam in cams {
                    for layer in 0..3 {
                        room.packet(cam, layer, seq, vp8_sized(seq % 30 == 1, layer, 1000));
                    }
                }
            }
            room.advance(Duration::from_millis(200));
        }
    };
    second(&mut room);
    let video = |room: &Room| -> Vec<(Option<Option<u8>>, Option<u8>)> {
        let sinks = room.router.endpoints[&bob].sinks.values();
        sinks.filter(|s| s.kind == TrackKind::Video).map(|s| (s.cap, s.target)).collect()
    };
    assert_eq!(video(&room), vec![(None, Some(2)); 2], "both on f, nothing capped");

    // Half of bob's video: both lowest layers do not fit, so one tile is paused.
    room.router.shed_video(0.5);
    let shed = video(&room);
    assert_eq!(
        shed.iter().filter(|(cap, target)| *cap == Some(None) && target.is_none()).count(),
        1,
        "{shed:?}"
    );
    assert_eq!(shed.iter().filter(|(_, target)| target.is_some()).count(), 1, "{shed:?}");
    // The first packet admits the track and gives bob a sink for it.
    room.packet(mic, 0, 6, vec![1; 60].into());
    let out = room.packet(mic, 0, 7, vec![1; 60].into());
    assert_eq!(to(&out, bob).len(), 1, "audio is never shed");

    // Lifted: no caps, both aim at f again (from their next keyframes).
    room.router.shed_video(1.0);
    assert_eq!(video(&room), vec![(None, Some(2)); 2]);
}

/// A page reload: the participant's session leaves as `Reloaded` and its next one joins as
/// `continues`; the others see its tracks go and come, never a leave or a join.
#[test]
fn a_reloaded_participant_neither_leaves_nor_joins_for_the_others() {
    let mut room = Room::new();
    let alice = room.join("alice");
    let bob = room.join("bob");
    room.publish(bob, TrackKind::Audio);
    room.settle();
    let told_alice = |out: &[Output]| -> Vec<String> {
        out.iter()
            .filter_map(|o| match o {
                Output::Event { to, event } if *to == alice => Some(format!("{event:?}")),
                _ => None,
            })
            .collect()
    };
    room.router.leave(bob, crate::api::LeaveReason::Reloaded);
    let out = room.settle();
    let told = told_alice(&out);
    assert!(told.iter().any(|e| e.starts_with("TrackUnpublished")), "{told:?}");
    assert!(!told.iter().any(|e| e.starts_with("ParticipantLeft")), "{told:?}");
    let again = room.enter_as("bob", false, true);
    room.router.negotiated(again, room.now);
    room.negotiate(again);
    room.publish(again, TrackKind::Audio);
    let told = told_alice(&room.settle());
    assert!(told.iter().any(|e| e.starts_with("TrackPublished")), "{told:?}");
    assert!(!told.iter().any(|e| e.starts_with("ParticipantJoined")), "{told:?}");
}

mod hold;
mod layers;
