//! Which simulcast layers a publisher is asked to send while its subscribers' wishes change.

use super::*;

/// Whether each of `cam`'s layers is paused now.
fn paused(room: &Room, cam: SourceKey) -> Vec<bool> {
    room.router.rooms["r"].sources[&cam].layers.iter().map(|l| l.paused).collect()
}

/// Alice publishes a camera; Bob shows it at `quality`. Answers the room, Bob, the camera
/// and its track id.
fn one_camera_shown(quality: u8) -> (Room, SessionId, SessionId, SourceKey, String) {
    let mut room = Room::new();
    let alice = room.join("alice");
    let bob = room.join("bob");
    let cam = room.publish(alice, TrackKind::Video);
    room.settle();
    let track = format!("TR_{alice}_{}", cam.1);
    room.router.set_view(bob, vec![ShownTrack { track_id: track.clone(), quality }], room.now);
    room.settle();
    (room, alice, bob, cam, track)
}

#[test]
fn a_layer_nobody_takes_is_paused_and_resumed_when_wanted() {
    let (mut room, alice, bob, cam, track) = one_camera_shown(0);
    let mut layers_told = Vec::new();
    for step in 0..15u16 {
        for layer in 0..3 {
            room.packet(cam, layer, step, vp8(step == 0, layer));
        }
        for out in room.advance(Duration::from_millis(200)) {
            if let Output::Event { to, event: SessionEvent::Layers { active, .. } } = out {
                assert_eq!(to, alice, "only the publisher is told");
                layers_told.push(active);
            }
        }
    }
    // Nothing carries rids here, so the publisher is told an empty list: h and f paused.
    assert_eq!(layers_told.len(), 1, "told once after two seconds: {layers_told:?}");
    assert_eq!(paused(&room, cam), vec![false, true, true]);

    room.router.set_view(bob, vec![ShownTrack { track_id: track, quality: 2 }], room.now);
    let out = room.settle();
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Event { to, event: SessionEvent::Layers { .. } } if *to == alice)),
        "resumed at once when wanted"
    );
    assert_eq!(paused(&room, cam), vec![false, true, false], "f is wanted again; h still is not");
}

#[test]
fn the_layer_a_subscriber_is_sent_stays_on_until_the_one_it_wants_arrives() {
    // Bob shows alice at h; every layer arrives, each with a keyframe at first.
    let (mut room, _, bob, cam, track) = one_camera_shown(1);
    let mut seq = 0u16;
    for step in 0..15 {
        for layer in 0..3 {
            room.packet(cam, layer, seq, vp8(step == 0, layer));
        }
        seq += 1;
        room.advance(Duration::from_millis(200));
    }
    assert_eq!(paused(&room, cam), vec![false, false, true], "f is taken by nobody");
    let sent = |room: &Room| room.router.endpoints[&bob].sinks.iter().find_map(|(_, s)| s.current);
    assert_eq!(sent(&room), Some(1), "bob is sent h");

    // Bob's tile grows: he wants f, which the publisher starts again; until its first
    // keyframe arrives (an encoder may take seconds to start a layer), h keeps him going.
    room.router.set_view(bob, vec![ShownTrack { track_id: track, quality: 2 }], room.now);
    room.settle();
    for _ in 0..20 {
        for layer in 0..2 {
            room.packet(cam, layer, seq, vp8(false, layer));
        }
        seq += 1;
        room.advance(Duration::from_millis(200));
    }
    assert_eq!(paused(&room, cam), vec![false, false, false], "h stays on while bob is sent it");
    assert_eq!(sent(&room), Some(1), "and bob still gets h, not q");

    // f arrives with a keyframe: bob switches to it, and h is let go two seconds later.
    for step in 0..20 {
        for layer in 0..3 {
            room.packet(cam, layer, seq, vp8(step == 0 && layer == 2, layer));
        }
        seq += 1;
        room.advance(Duration::from_millis(200));
    }
    assert_eq!(sent(&room), Some(2), "bob is sent f");
    assert_eq!(paused(&room, cam), vec![false, true, false], "h is taken by nobody now");
}
