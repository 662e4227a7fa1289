//! Interop with an independent WebRTC stack: three webrtc-rs 0.21 clients join one room
//! through the signaling WebSocket, each publishes Opus and VP8 RTP, and each must
//! receive the other two's audio and video with exactly the payload bytes they sent.
//! Also: the server's answer names the tracks the client's offer published.

mod common;

use std::time::{Duration, Instant};

use common::webrtc_client::{Client, Kind, init_logging, wait_until};

const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Packets each receiver must verify from each other sender, per kind: about three
/// seconds of media (audio every 20 ms, video every 33 ms).
const MIN_AUDIO: usize = 150;
const MIN_VIDEO: usize = 85;

fn minimum(kind: Kind) -> usize {
    match kind {
        Kind::Audio => MIN_AUDIO,
        Kind::Video => MIN_VIDEO,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_webrtc_rs_clients_receive_each_others_audio_and_video() {
    init_logging();
    let started = Instant::now();
    match tokio::time::timeout(TEST_TIMEOUT, meeting()).await {
        Ok(()) => eprintln!("interop meeting passed in {:?}", started.elapsed()),
        Err(_) => panic!("interop test did not finish within {TEST_TIMEOUT:?}"),
    }
}

async fn meeting() {
    let server = common::start_server().await;
    let room = "interop";

    // Join one after another: the first two learn of later publishers through server
    // offers; the last finds their tracks already there when it joins.
    let mut clients = Vec::new();
    for (index, identity) in ["alice", "bob", "carol"].into_iter().enumerate() {
        let mut client = Client::join(&server, room, identity, index as u8).await.expect("client joins");
        client.wait_connected(Duration::from_secs(10)).await.expect("media connects");
        client.start_media().await.expect("media starts");
        eprintln!(
            "{} joined as {}, connection states {:?}",
            client.label(),
            client.participant_id,
            client.states()
        );
        clients.push(client);
    }

    // Let media flow until every receiver has enough from every sender (or time runs out,
    // and the assertions below say what is missing).
    let flowing = Instant::now();
    let enough = wait_until(Duration::from_secs(30), || {
        clients.iter().all(|rx| {
            clients
                .iter()
                .filter(|tx| tx.participant_id != rx.participant_id)
                .all(|tx| Kind::BOTH.iter().all(|&kind| rx.received_count(tx, kind, None) >= minimum(kind)))
        })
    })
    .await;
    eprintln!("media flowed for {:?} (enough: {enough})", flowing.elapsed());
    for client in &mut clients {
        client.stop_media().await;
    }
    // Packets still in flight.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut failures = Vec::new();
    for rx in &clients {
        let errors = rx.errors();
        if !errors.is_empty() {
            failures.push(format!("{} saw errors: {errors:?}", rx.label()));
        }
        if let Some(closed) = rx.closed() {
            failures.push(format!("{}'s signaling socket closed: {closed}", rx.label()));
        }
        if rx.offers_answered() == 0 {
            failures.push(format!("{} never got a server offer for the others' tracks", rx.label()));
        }
        let own: Vec<_> =
            rx.remote_tracks().into_iter().filter(|t| t.participant_id == rx.participant_id).collect();
        if !own.is_empty() {
            failures.push(format!("{} was sent its own tracks back: {own:?}", rx.label()));
        }
        let roster = rx.roster();
        for tx in clients.iter().filter(|tx| tx.participant_id != rx.participant_id) {
            match roster.get(&tx.participant_id) {
                Some(p) if p.identity == tx.identity => {}
                other => failures.push(format!(
                    "{} does not know {} as participant {}: {other:?}",
                    rx.label(),
                    tx.identity,
                    tx.participant_id
                )),
            }
            for kind in Kind::BOTH {
                let v = rx.verify_from(tx, kind, None, None);
                let what = format!("{} receiving {}'s {}", rx.label(), tx.label(), kind.as_str());
                eprintln!(
                    "{what}: tracks {:?}, {} packets, {} verified of {} sent, first keyframe {:?}",
                    v.track_ids,
                    v.packets,
                    v.matching,
                    tx.sent(kind),
                    v.first_is_keyframe
                );
                if v.track_ids.is_empty() {
                    failures.push(format!(
                        "{what}: no track with msid {} (tracks seen: {:?})",
                        tx.participant_id,
                        rx.remote_tracks()
                            .iter()
                            .map(|t| (t.participant_id.clone(), t.track_id.clone(), t.kind, t.packets.len()))
                            .collect::<Vec<_>>()
                    ));
                    continue;
                }
                if v.track_ids.len() != 1 {
                    failures.push(format!("{what}: arrived on more than one track: {:?}", v.track_ids));
                }
                let announced = roster.get(&tx.participant_id).and_then(|p| p.tracks.get(&v.track_ids[0]));
                if announced.map(String::as_str) != Some(kind.as_str()) {
                    failures.push(format!(
                        "{what}: track {} was not announced to the receiver as {} (announced: {announced:?})",
                        v.track_ids[0],
                        kind.as_str()
                    ));
                }
                if !v.bad.is_empty() {
                    failures.push(format!(
                        "{what}: {} packets are not what the sender sent, e.g. {:?}",
                        v.bad.len(),
                        &v.bad[..v.bad.len().min(3)]
                    ));
                }
                if v.matching < minimum(kind) {
                    failures.push(format!(
                        "{what}: only {} verified packets (of {} received, {} sent), want >= {}",
                        v.matching,
                        v.packets,
                        tx.sent(kind),
                        minimum(kind)
                    ));
                }
                if kind == Kind::Video && v.first_is_keyframe == Some(false) {
                    failures.push(format!("{what}: the first video packet forwarded was not a keyframe"));
                }
            }
        }
    }
    // Every session's media went through the SRTP fast path, keyed from its own handshake.
    let fast = common::metric_value(&common::huiyi_metrics(&server).await, "huiyi_fast_path_sessions_total");
    if fast != Some(clients.len() as f64) {
        failures.push(format!("{fast:?} sessions on the fast path, want {}", clients.len()));
    }
    for client in clients {
        client.close().await;
    }
    assert!(failures.is_empty(), "interop failures:\n  {}", failures.join("\n  "));
}

/// The answer to a client's publishing offer lists the tracks it now publishes
/// (`{"type":"answer","sdp":...,"tracks":[{"mid","id","kind","source"}]}`), with the ids
/// the other participants are told in `trackPublished`. Without them a publisher cannot
/// name its own tracks (e.g. to `mute` one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_to_first_offer_lists_the_published_tracks() {
    init_logging();
    let check = async {
        let server = common::start_server().await;
        let alice = Client::join(&server, "answer-tracks", "alice", 0).await.expect("alice joins");
        alice.wait_connected(Duration::from_secs(10)).await.expect("alice connects");
        let bob = Client::join(&server, "answer-tracks", "bob", 1).await.expect("bob joins");
        // What bob is told about alice's tracks (in `joined` or `trackPublished`).
        let announced = wait_until(Duration::from_secs(5), || {
            bob.roster().get(&alice.participant_id).is_some_and(|p| p.tracks.len() == 2)
        })
        .await;
        let roster = bob.roster();
        assert!(announced, "bob was not told about alice's two tracks: {roster:?}");
        let announced = &roster[&alice.participant_id].tracks;
        let mut failures = Vec::new();
        for kind in Kind::BOTH {
            let in_answer = alice.published_track(kind);
            let told_bob: Vec<_> =
                announced.iter().filter(|(_, k)| *k == kind.as_str()).map(|(id, _)| id).collect();
            if in_answer.is_none() || told_bob != [in_answer.as_ref().unwrap()] {
                failures.push(format!(
                    "alice's {} track: her answer's `tracks` gave {in_answer:?}, bob was told {told_bob:?}",
                    kind.as_str()
                ));
            }
        }
        alice.close().await;
        bob.close().await;
        assert!(failures.is_empty(), "answer tracks:\n  {}", failures.join("\n  "));
    };
    tokio::time::timeout(TEST_TIMEOUT, check).await.expect("finishes within the test timeout");
}
