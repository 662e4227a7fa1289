//! Which simulcast layers a publisher is asked to send while its subscribers' wishes change.

use super::*;

/// Whether each of `cam`'s layers is paused now.
fn paused(room: &Room, cam: SourceKey) -> Vec<bool> {
    room.router.rooms["r"].sources[&cam].layers.iter().map(|l| l.paused).collect()
}

#[test]
fn the_layer_a_subscriber_is_sent_stays_on_until_the_one_it_wants_arrives() {
    let mut room = Room::new();
    let alice = room.join("alice");
    let bob = room.join("bob");
    let cam = room.publish(alice, TrackKind::Video);
    room.settle();
    let track = format!("TR_{alice}_{}", cam.1);
    // Bob shows alice at h; every layer arrives, each with a keyframe at first.
    room.router.set_view(bob, vec![ShownTrack { track_id: track.clone(), quality: 1 }], room.now);
    room.settle();
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
