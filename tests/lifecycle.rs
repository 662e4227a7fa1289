//! Session lifecycle with real webrtc-rs peers: a participant whose media goes silent is
//! timed out and everything it held is freed; participants leaving in every way (leave,
//! a dropped socket, an admin removal) free the room, its tracks and participants; and
//! H.264 video is forwarded at the RTP level, byte for byte.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::webrtc_client::{Client, H264_FMTP, Kind, ServerMessage, VideoCodec, init_logging, wait_until};
use huiyi::Running;

const TEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Media each receiver must get from each sender before a test goes on ("they exchange
/// media"): about a second of it.
const EXCHANGE_AUDIO: usize = 50;
const EXCHANGE_VIDEO: usize = 25;

async fn run_bounded(name: &str, test: impl std::future::Future<Output = ()>) {
    init_logging();
    let started = Instant::now();
    match tokio::time::timeout(TEST_TIMEOUT, test).await {
        Ok(()) => eprintln!("{name} passed in {:?}", started.elapsed()),
        Err(_) => panic!("{name} did not finish within {TEST_TIMEOUT:?}"),
    }
}

/// A participant whose media goes silent while its signaling socket stays open is ended
/// by the ICE timeout: its socket is closed with 4006, the others are told it left with
/// reason `timeout` and lose its tracks, and the metrics count what is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_participant_times_out_and_frees_everything() {
    run_bounded("silent_participant_times_out_and_frees_everything", silent_participant()).await;
}

async fn silent_participant() {
    let server = common::start_server_with(|c| c.media.ice_timeout_secs = 2).await;
    let room = "silence";
    let alice = join_and_send(&server, room, "alice", 0, VideoCodec::Vp8).await;
    let mut bob = join_and_send(&server, room, "bob", 1, VideoCodec::Vp8).await;
    exchange_media(&[&alice, &bob]).await;
    expect_metrics(
        &server,
        &[("huiyi_rooms", 1), ("huiyi_participants", 2), ("huiyi_tracks", 4)],
        Duration::from_secs(3),
        "with alice and bob publishing",
    )
    .await;
    let bob_tracks: BTreeSet<String> = Kind::BOTH
        .iter()
        .map(|&k| {
            bob.published_track(k).unwrap_or_else(|| panic!("bob's answer named no {} track", k.as_str()))
        })
        .collect();

    // Bob's peer connection goes away (no more STUN, RTP, RTCP); his socket stays open.
    let silent_since = Instant::now();
    let carried_bob = slots_carrying(&alice, &bob.participant_id);
    bob.disconnect_media().await;
    eprintln!("bob's peer connection closed; his signaling socket stays open");

    let mut failures = Vec::new();
    match bob.wait_closed(Duration::from_secs(8)).await {
        Ok(close) => {
            let after = close.at.duration_since(silent_since);
            eprintln!("bob's socket closed {after:?} after his media stopped: {close:?}");
            if close.code != Some(4006) || close.reason != "media timeout" {
                failures.push(format!(
                    "bob's socket was closed with {:?} {:?}, expected 4006 \"media timeout\"",
                    close.code, close.reason
                ));
            }
            // ice_timeout is 2 s, checked every 200 ms: the session must not end before
            // the silence lasted that long, and not much later either.
            if after < Duration::from_millis(1500) || after > Duration::from_secs(6) {
                failures.push(format!(
                    "bob's socket was closed {after:?} after his media stopped, expected 2-6 s (ice_timeout 2 s)"
                ));
            }
        }
        Err(e) => failures.push(format!(
            "bob's socket got no close frame within 8 s of his media stopping: {e:#}; messages bob got \
             after that: {:?}",
            summarize(bob.messages().iter().filter(|m| m.at >= silent_since))
        )),
    }

    // Alice: bob left with reason `timeout`, both his tracks went, and the slots that
    // carried them were told to carry nothing (they stay for reuse: no renegotiation).
    let told = wait_until(Duration::from_secs(5), || {
        let left = left_reason(&alice, &bob.participant_id).is_some();
        let unpublished = unpublished_tracks(&alice, &bob.participant_id) == bob_tracks;
        let slots_freed = slots_carrying(&alice, &bob.participant_id).is_empty();
        left && unpublished && slots_freed
    })
    .await;
    let reason = left_reason(&alice, &bob.participant_id);
    if reason.as_deref() != Some("timeout") {
        failures
            .push(format!("alice got participantLeft for bob with reason {reason:?}, expected \"timeout\""));
    }
    let unpublished = unpublished_tracks(&alice, &bob.participant_id);
    if unpublished != bob_tracks {
        failures.push(format!(
            "alice got trackUnpublished for bob's tracks {unpublished:?}, expected both of {bob_tracks:?}"
        ));
    }
    if carried_bob.len() != 2 {
        failures
            .push(format!("before bob went silent, alice's slots carrying him: {carried_bob:?}, expected 2"));
    }
    let still = slots_carrying(&alice, &bob.participant_id);
    if !still.is_empty() {
        failures.push(format!("alice's slots {still:?} still carry bob's tracks"));
    }
    if !told {
        failures.push(format!(
            "alice was not told everything within 5 s; messages since bob went silent: {:?}",
            summarize(alice.messages().iter().filter(|m| m.at >= silent_since))
        ));
    }
    if !alice.errors().is_empty() {
        failures.push(format!("alice saw errors: {:?}", alice.errors()));
    }
    if let Some(closed) = alice.closed() {
        failures.push(format!("alice's socket closed too: {closed}"));
    }

    if let Err(e) = wait_metrics(
        &server,
        &[
            ("huiyi_rooms", 1),
            ("huiyi_participants", 1),
            ("huiyi_tracks", 2),
            ("huiyi_sessions_ended_total{reason=\"timeout\"}", 1),
        ],
        Duration::from_secs(3),
    )
    .await
    {
        failures.push(format!("after bob timed out: {e}"));
    }
    let listed = listed_identities(&server, room).await;
    if listed != ["alice"] {
        failures.push(format!("the admin API lists {listed:?} in the room, expected only alice"));
    }

    alice.close().await;
    bob.close().await;
    assert!(failures.is_empty(), "silent participant:\n  {}", failures.join("\n  "));
}

/// Three participants leave in the three ways there are: `leave`, a dropped socket, an
/// admin removal. Afterwards nothing is left on the media node or in signaling, and a
/// new participant can use the same room name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everyone_leaving_frees_rooms_tracks_and_participants() {
    run_bounded("everyone_leaving_frees_rooms_tracks_and_participants", everyone_leaving()).await;
}

async fn everyone_leaving() {
    // A dropped connection is kept a second for a resume (docs/protocol.md, Resuming).
    let server = common::start_server_with(|c| c.limits.resume_grace_secs = 1).await;
    let room = "leaving";
    let mut xena = join_and_send(&server, room, "xena", 0, VideoCodec::Vp8).await;
    let mut yuri = join_and_send(&server, room, "yuri", 1, VideoCodec::Vp8).await;
    let mut zora = join_and_send(&server, room, "zora", 2, VideoCodec::Vp8).await;
    exchange_media(&[&xena, &yuri, &zora]).await;
    expect_metrics(
        &server,
        &[("huiyi_rooms", 1), ("huiyi_participants", 3), ("huiyi_tracks", 6)],
        Duration::from_secs(3),
        "with three participants publishing",
    )
    .await;
    let mut failures = Vec::new();

    // Xena says goodbye: the server closes her socket with 1000 "left".
    xena.stop_media().await;
    xena.send_leave();
    match xena.wait_closed(Duration::from_secs(5)).await {
        Ok(c) if c.code == Some(1000) && c.reason == "left" => {}
        Ok(c) => failures.push(format!(
            "xena's leave was closed with {:?} {:?}, expected 1000 \"left\"",
            c.code, c.reason
        )),
        Err(e) => failures.push(format!("xena sent leave: {e:#}")),
    }
    xena.disconnect_media().await;
    expect_left(&[&yuri, &zora], &xena, "left", &mut failures).await;

    // Yuri vanishes: socket dropped without a close frame, peer connection closed.
    yuri.stop_media().await;
    yuri.drop_signaling().await;
    yuri.disconnect_media().await;
    expect_left(&[&zora], &yuri, "disconnected", &mut failures).await;

    // Zora is removed by an admin: 204, and her socket is closed with 4003.
    let path = format!("/v1/rooms/{room}/participants/zora");
    let auth = format!("Bearer {}", common::admin_token());
    let (status, body) =
        common::http_request(server.http_addr, "DELETE", &path, &[("Authorization", auth.as_str())]).await;
    if status != 204 {
        failures.push(format!("DELETE {path} answered {status} {body:?}, expected 204"));
    }
    match zora.wait_closed(Duration::from_secs(5)).await {
        Ok(c) if c.code == Some(4003) && c.reason == "removed by admin" => {}
        Ok(c) => failures.push(format!(
            "zora's removal closed her socket with {:?} {:?}, expected 4003 \"removed by admin\"",
            c.code, c.reason
        )),
        Err(e) => failures.push(format!("zora was removed by an admin: {e:#}")),
    }
    zora.stop_media().await;
    zora.disconnect_media().await;

    if let Err(e) = wait_metrics(
        &server,
        &[
            ("huiyi_rooms", 0),
            ("huiyi_participants", 0),
            ("huiyi_tracks", 0),
            ("huiyi_signaling_connections", 0),
            ("huiyi_sessions_ended_total{reason=\"left\"}", 1),
            ("huiyi_sessions_ended_total{reason=\"disconnected\"}", 1),
            ("huiyi_sessions_ended_total{reason=\"removed\"}", 1),
        ],
        Duration::from_secs(5),
    )
    .await
    {
        failures.push(format!("after everyone left: {e}"));
    }
    let rooms = admin_get(&server, "/v1/rooms").await;
    let still_listed = rooms["rooms"].as_array().into_iter().flatten().any(|r| r["name"] == room);
    if still_listed {
        failures.push(format!("GET /v1/rooms still lists the room after everyone left: {rooms}"));
    }
    for client in [xena, yuri, zora] {
        client.close().await;
    }

    // The room name is free again: a newcomer joins, publishes and connects.
    match Client::join(&server, room, "nova", 3).await {
        Err(e) => failures.push(format!("a new client could not join the emptied room: {e:#}")),
        Ok(nova) => {
            let answers = nova.messages_of_type("answer");
            let tracks: Vec<String> = answers
                .first()
                .and_then(|a| a.json["tracks"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .map(|t| t["kind"].as_str().unwrap_or("?").to_string())
                .collect();
            let mut kinds = tracks.clone();
            kinds.sort();
            if kinds != ["audio", "video"] {
                failures.push(format!(
                    "nova's answer should publish an audio and a video track, its tracks are {tracks:?}: {:?}",
                    answers.first().map(|a| &a.json["tracks"])
                ));
            }
            if let Err(e) = nova.wait_connected(CONNECT_TIMEOUT).await {
                failures.push(format!("nova in the reused room: {e:#}"));
            }
            if let Err(e) = wait_metrics(
                &server,
                &[("huiyi_rooms", 1), ("huiyi_participants", 1), ("huiyi_tracks", 2)],
                Duration::from_secs(3),
            )
            .await
            {
                failures.push(format!("with nova alone in the reused room: {e}"));
            }
            if !nova.errors().is_empty() {
                failures.push(format!("nova saw errors: {:?}", nova.errors()));
            }
            nova.close().await;
        }
    }
    assert!(failures.is_empty(), "everyone leaving:\n  {}", failures.join("\n  "));
}

/// Two webrtc-rs clients that offer only H.264 (constrained baseline, packetization-mode
/// 1) receive each other's audio and H.264 video with exactly the payload bytes sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_is_forwarded_at_the_rtp_level() {
    run_bounded("h264_is_forwarded_at_the_rtp_level", h264_meeting()).await;
}

const H264_MIN_AUDIO: usize = 150;
const H264_MIN_VIDEO: usize = 85;

async fn h264_meeting() {
    let server = common::start_server().await;
    let room = "h264";
    let mut clients = Vec::new();
    for (index, identity) in ["hana", "hugo"].into_iter().enumerate() {
        clients.push(join_and_send(&server, room, identity, index as u8, VideoCodec::H264).await);
    }
    let mut failures = Vec::new();

    // H.264 is what each sender negotiated, and all the server's answer accepts for video.
    for c in &clients {
        let video = c.negotiated.iter().find(|n| n.kind == Kind::Video);
        match video {
            Some(n)
                if n.mime_type.eq_ignore_ascii_case("video/H264")
                    && n.fmtp.contains("packetization-mode=1") => {}
            other => failures
                .push(format!("{}'s video sender negotiated {other:?}, expected H.264 pm=1", c.label())),
        }
        let answer = c.messages_of_type("answer");
        let sdp = answer.first().and_then(|a| a.json["sdp"].as_str()).unwrap_or_default().to_string();
        let codecs = video_codecs(&sdp);
        eprintln!("{} sends video as {video:?}; the server's answer accepts for video {codecs:?}", c.label());
        if codecs.is_empty() || codecs.iter().any(|(name, _)| name != "H264" && name != "rtx") {
            failures.push(format!(
                "the server's answer to {} should accept only H.264 for video, its video codecs are {codecs:?}",
                c.label()
            ));
        }
        if !codecs.iter().any(|(name, fmtp)| name == "H264" && fmtp.contains("packetization-mode=1")) {
            failures.push(format!(
                "the server's answer to {} has no H.264 packetization-mode=1: {codecs:?}",
                c.label()
            ));
        }
        // Its offers (the subscriptions) name only the configured codecs (ADR 0018): VP8,
        // H.264 constrained baseline with packetization-mode 1, and their RTX; not every
        // profile the client offered.
        for offer in c.messages_of_type("offer") {
            let sdp = offer.json["sdp"].as_str().unwrap_or_default();
            let codecs = video_codecs(sdp);
            let configured = |(name, fmtp): &(String, String)| match name.as_str() {
                "VP8" | "rtx" => true,
                "H264" => fmtp.contains("packetization-mode=1") && fmtp.contains("profile-level-id=42e01f"),
                _ => false,
            };
            if let Some(other) = codecs.iter().find(|c| !configured(c)) {
                failures.push(format!(
                    "the server's offer to {} names {other:?}, not one of the configured codecs: {codecs:?}",
                    c.label()
                ));
            }
        }
    }

    let enough = wait_until(Duration::from_secs(30), || {
        pairs(&clients).all(|(rx, tx)| {
            rx.received_count(tx, Kind::Audio, None) >= H264_MIN_AUDIO
                && rx.received_count(tx, Kind::Video, None) >= H264_MIN_VIDEO
        })
    })
    .await;
    for c in &mut clients {
        c.stop_media().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    if !enough {
        eprintln!("not enough media within 30 s; metrics:\n{}", common::huiyi_metrics(&server).await);
    }

    for (rx, tx) in pairs(&clients) {
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
            let minimum = if kind == Kind::Audio { H264_MIN_AUDIO } else { H264_MIN_VIDEO };
            if !v.bad.is_empty() {
                failures.push(format!(
                    "{what}: {} packets are not what the sender sent, e.g. {:?}",
                    v.bad.len(),
                    &v.bad[..v.bad.len().min(3)]
                ));
            }
            if v.matching < minimum {
                failures.push(format!(
                    "{what}: only {} verified packets (of {} received on tracks {:?}, {} sent), want >= {minimum}",
                    v.matching,
                    v.packets,
                    v.track_ids,
                    tx.sent(kind)
                ));
            }
            if kind == Kind::Video && v.first_is_keyframe != Some(true) {
                failures.push(format!(
                    "{what}: the first video packet forwarded was not a keyframe ({:?})",
                    v.first_is_keyframe
                ));
            }
        }
        // The payload types the video arrived with are H.264 in the server's offer.
        let offer_sdp = rx
            .messages_of_type("offer")
            .iter()
            .rev()
            .filter_map(|o| o.json["sdp"].as_str().map(str::to_string))
            .find(|sdp| sdp.contains(&format!("a=msid:{} ", tx.participant_id)));
        let pts: BTreeSet<u8> = rx
            .remote_tracks()
            .iter()
            .filter(|t| t.participant_id == tx.participant_id && t.kind == Some(Kind::Video))
            .flat_map(|t| t.packets.iter().map(|p| p.payload_type))
            .collect();
        eprintln!("{} received {}'s video with payload types {pts:?}", rx.label(), tx.label());
        match &offer_sdp {
            None => failures.push(format!("{} got no server offer with {}'s tracks", rx.label(), tx.label())),
            Some(sdp) => {
                let map =
                    section_with_msid(sdp, &tx.participant_id, "video").map(rtpmaps).unwrap_or_default();
                for pt in &pts {
                    match map.iter().find(|(p, _, _)| p == pt) {
                        Some((_, name, fmtp)) if name == "H264" && fmtp.contains("packetization-mode=1") => {}
                        other => failures.push(format!(
                            "{} received {}'s video with payload type {pt}, which the server's offer maps to \
                             {other:?}, not H.264 pm=1 (video section codecs {map:?})",
                            rx.label(),
                            tx.label()
                        )),
                    }
                }
            }
        }
        if pts.is_empty() && !failures.is_empty() {
            // Evidence for a server that does not forward H.264.
            let local = rx.pc.local_description().await.map(|d| d.sdp).unwrap_or_default();
            eprintln!(
                "{} received no video from {}.\nserver offer video section for it:\n{}\n{}'s answer (local description):\n{}",
                rx.label(),
                tx.label(),
                offer_sdp
                    .as_deref()
                    .and_then(|s| section_with_msid(s, &tx.participant_id, "video"))
                    .map(|s| s.join("\n"))
                    .unwrap_or_default(),
                rx.label(),
                local
            );
        }
    }
    for c in &clients {
        if !c.errors().is_empty() {
            failures.push(format!("{} saw errors: {:?}", c.label(), c.errors()));
        }
    }
    if !failures.is_empty() {
        eprintln!("metrics:\n{}", common::huiyi_metrics(&server).await);
    }
    for c in clients {
        c.close().await;
    }
    assert!(failures.is_empty(), "H.264 forwarding ({H264_FMTP}):\n  {}", failures.join("\n  "));
}

// ---------------------------------------------------------------------------------------
// Helpers

async fn join_and_send(server: &Running, room: &str, identity: &str, index: u8, video: VideoCodec) -> Client {
    let mut client = Client::join_with_video(server, room, identity, index, video)
        .await
        .unwrap_or_else(|e| panic!("{identity} joins {room}: {e:#}"));
    client
        .wait_connected(CONNECT_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{identity}'s media connects: {e:#}"));
    client.start_media().await.unwrap_or_else(|e| panic!("{identity} starts media: {e:#}"));
    client
}

/// Every (receiver, sender) pair of distinct clients.
fn pairs<'a>(clients: &'a [Client]) -> impl Iterator<Item = (&'a Client, &'a Client)> + 'a {
    clients.iter().flat_map(move |rx| {
        clients.iter().filter(move |tx| tx.participant_id != rx.participant_id).map(move |tx| (rx, tx))
    })
}

/// Wait until every client received some audio and video from every other, verified.
async fn exchange_media(clients: &[&Client]) {
    let enough = |rx: &Client, tx: &Client| {
        rx.received_count(tx, Kind::Audio, None) >= EXCHANGE_AUDIO
            && rx.received_count(tx, Kind::Video, None) >= EXCHANGE_VIDEO
    };
    let all_pairs = || {
        clients.iter().flat_map(|rx| {
            clients.iter().filter(move |tx| tx.participant_id != rx.participant_id).map(move |tx| (*rx, *tx))
        })
    };
    let flowed = wait_until(Duration::from_secs(15), || all_pairs().all(|(rx, tx)| enough(rx, tx))).await;
    let mut problems = Vec::new();
    for (rx, tx) in all_pairs() {
        for kind in Kind::BOTH {
            let v = rx.verify_from(tx, kind, None, None);
            if !flowed || !v.bad.is_empty() {
                problems.push(format!(
                    "{} from {}'s {}: {} received, {} verified, bad {:?}",
                    rx.label(),
                    tx.label(),
                    kind.as_str(),
                    v.packets,
                    v.matching,
                    &v.bad[..v.bad.len().min(2)]
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "media exchange before the test (want >= {EXCHANGE_AUDIO} audio, {EXCHANGE_VIDEO} video per pair \
         within 15 s, all verified):\n  {}",
        problems.join("\n  ")
    );
}

/// The reason of the `participantLeft` a client got for `participant_id`.
fn left_reason(client: &Client, participant_id: &str) -> Option<String> {
    client
        .messages_of_type("participantLeft")
        .iter()
        .find(|m| m.json["participantId"] == participant_id)
        .map(|m| m.json["reason"].as_str().unwrap_or("<none>").to_string())
}

/// Wait (up to 3 s) until each of `watchers` got `participantLeft` for `gone`, and check
/// the reason.
async fn expect_left(watchers: &[&Client], gone: &Client, reason: &str, failures: &mut Vec<String>) {
    wait_until(Duration::from_secs(3), || {
        watchers.iter().all(|w| left_reason(w, &gone.participant_id).is_some())
    })
    .await;
    for watcher in watchers {
        let got = left_reason(watcher, &gone.participant_id);
        if got.as_deref() != Some(reason) {
            failures.push(format!(
                "{} got participantLeft for {} with reason {got:?} (within 3 s), expected {reason:?}",
                watcher.identity, gone.identity
            ));
        }
    }
}

/// Track ids a client was told `participant_id` unpublished.
fn unpublished_tracks(client: &Client, participant_id: &str) -> BTreeSet<String> {
    client
        .messages_of_type("trackUnpublished")
        .iter()
        .filter(|m| m.json["participantId"] == participant_id)
        .filter_map(|m| m.json["trackId"].as_str().map(str::to_string))
        .collect()
}

fn summarize<'a>(messages: impl Iterator<Item = &'a ServerMessage>) -> Vec<String> {
    messages
        .map(|m| {
            let mut shown = m.json.clone();
            if shown.get("sdp").is_some() {
                shown["sdp"] = "...".into();
            }
            shown.to_string()
        })
        .collect()
}

/// The m-sections of an SDP, each as its lines (the `m=` line first).
fn sections(sdp: &str) -> Vec<Vec<&str>> {
    let mut out: Vec<Vec<&str>> = Vec::new();
    for line in sdp.lines().map(str::trim_end) {
        if line.starts_with("m=") {
            out.push(vec![line]);
        } else if let Some(section) = out.last_mut() {
            section.push(line);
        }
    }
    out
}

/// Does an SDP still send a track of `participant_id` (an active section with its msid)?
/// The mids whose latest `slots` entry says they carry a track of `participant_id`.
fn slots_carrying(client: &Client, participant_id: &str) -> Vec<String> {
    let mut now: std::collections::BTreeMap<String, Option<String>> = Default::default();
    for m in client.messages_of_type("slots") {
        for slot in m.json["slots"].as_array().into_iter().flatten() {
            let mid = slot["mid"].as_str().unwrap_or_default().to_string();
            now.insert(mid, slot["participantId"].as_str().map(str::to_string));
        }
    }
    now.into_iter().filter(|(_, p)| p.as_deref() == Some(participant_id)).map(|(mid, _)| mid).collect()
}

fn section_with_msid<'a>(sdp: &'a str, participant_id: &str, media: &str) -> Option<Vec<&'a str>> {
    let msid = format!("a=msid:{participant_id} ");
    sections(sdp)
        .into_iter()
        .find(|s| s[0].starts_with(&format!("m={media} ")) && s.iter().any(|l| l.starts_with(&msid)))
}

/// `(payload type, codec name, fmtp)` for each rtpmap of a section.
fn rtpmaps(section: Vec<&str>) -> Vec<(u8, String, String)> {
    section
        .iter()
        .filter_map(|l| l.strip_prefix("a=rtpmap:"))
        .filter_map(|rest| {
            let (pt, codec) = rest.split_once(' ')?;
            let pt: u8 = pt.parse().ok()?;
            let name = codec.split('/').next()?.to_string();
            let fmtp_prefix = format!("a=fmtp:{pt} ");
            let fmtp = section.iter().find_map(|l| l.strip_prefix(&fmtp_prefix)).unwrap_or_default();
            Some((pt, name, fmtp.to_string()))
        })
        .collect()
}

/// `(codec name, fmtp)` of the video section(s) of an SDP.
fn video_codecs(sdp: &str) -> Vec<(String, String)> {
    sections(sdp)
        .into_iter()
        .filter(|s| s[0].starts_with("m=video "))
        .flat_map(rtpmaps)
        .map(|(_, name, fmtp)| (name, fmtp))
        .collect()
}

/// Poll `/metrics` until every series has its expected value; on timeout, say which
/// did not and what they were.
async fn wait_metrics(server: &Running, expected: &[(&str, i64)], timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let body = common::huiyi_metrics(server).await;
        let wrong: Vec<String> = expected
            .iter()
            .filter_map(|&(series, want)| {
                let got = common::metric_value(&body, series);
                (got != Some(want as f64)).then(|| {
                    format!("{series} is {}, expected {want}", got.map_or("absent".into(), |v| v.to_string()))
                })
            })
            .collect();
        if wrong.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let relevant: Vec<&str> = body
                .lines()
                .filter(|l| {
                    !l.starts_with('#')
                        && [
                            "huiyi_rooms",
                            "huiyi_participants",
                            "huiyi_tracks",
                            "huiyi_sessions_ended",
                            "huiyi_signaling_connections",
                        ]
                        .iter()
                        .any(|p| l.starts_with(p))
                })
                .collect();
            return Err(format!(
                "after {timeout:?} of polling /metrics: {}; metrics: {relevant:?}",
                wrong.join(", ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn expect_metrics(server: &Running, expected: &[(&str, i64)], timeout: Duration, when: &str) {
    if let Err(e) = wait_metrics(server, expected, timeout).await {
        panic!("{when}: {e}");
    }
}

async fn admin_get(server: &Running, path: &str) -> serde_json::Value {
    let auth = format!("Bearer {}", common::admin_token());
    let (status, body) =
        common::http_request(server.http_addr, "GET", path, &[("Authorization", auth.as_str())]).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
}

async fn listed_identities(server: &Running, room: &str) -> Vec<String> {
    let listed = admin_get(server, &format!("/v1/rooms/{room}/participants")).await;
    let mut identities: Vec<String> = listed["participants"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["identity"].as_str().map(str::to_string))
        .collect();
    identities.sort();
    identities
}
