//! A host's mute: held audio is not forwarded until its owner unmutes it.

use super::*;

/// The `TrackMuted` events in `outputs`, by whom they go to.
fn muted_told(outputs: &[Output]) -> Vec<(SessionId, String, bool)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Event { to, event: SessionEvent::TrackMuted { track_id, muted, .. } } => {
                Some((*to, track_id.clone(), *muted))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn held_audio_is_not_forwarded_until_its_owner_unmutes() {
    let mut room = Room::new();
    let alice = room.join("alice");
    let bob = room.join("bob");
    let mic = room.publish(alice, TrackKind::Audio);
    let cam = room.publish(alice, TrackKind::Video);
    room.settle();
    room.packet(mic, 0, 100, vec![1; 3].into());
    assert_eq!(to(&room.packet(mic, 0, 101, vec![1; 3].into()), bob).len(), 1, "bob hears alice");

    let held = room.router.hold_audio(alice);
    let track = format!("TR_{alice}_{}", mic.1);
    assert_eq!(held, vec![track.clone()], "her microphone, not her camera");
    let mut told = muted_told(&room.settle());
    told.sort();
    assert_eq!(told, vec![(alice, track.clone(), true), (bob, track.clone(), true)], "both are told");

    // A client that ignores the mute and goes on sending is not heard.
    let before = room.metrics.not_forwarded.with_label_values(&["held"]).get();
    for seq in 102..112 {
        assert!(to(&room.packet(mic, 0, seq, vec![2; 3].into()), bob).is_empty(), "packet {seq} held");
    }
    assert_eq!(room.metrics.not_forwarded.with_label_values(&["held"]).get() - before, 10);
    // Her video goes on; muting herself again does not lift the hold.
    room.packet(cam, 0, 1, vec![0x10, 0x00, 1, 1].into());
    room.router.mute(alice, &track, true).expect("her track");
    assert!(to(&room.packet(mic, 0, 112, vec![2; 3].into()), bob).is_empty(), "still held");
    assert_eq!(room.router.hold_audio(alice), Vec::<String>::new(), "already muted: nobody told again");

    // She unmutes: heard again, numbered on from where bob's sink stopped.
    room.router.mute(alice, &track, false).expect("her track");
    let told = muted_told(&room.settle());
    assert_eq!(told, vec![(bob, track.clone(), false)], "the others are told she unmuted");
    assert_eq!(to(&room.packet(mic, 0, 113, vec![3; 3].into()), bob).len(), 1, "heard again");
}
