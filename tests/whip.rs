//! WHIP ingest (RFC 9725) at `/whip/<room>`: every status code a publisher can meet, a
//! webrtc-rs publisher whose audio and video reach a participant of the room, and a WHIP
//! publisher that is not ours (aiortc, from PyPI) whose VP8 video starts with a keyframe
//! at that participant.

mod common;

use std::time::{Duration, Instant};

use common::webrtc_client::{Client, Kind, init_logging, parse_marker, vp8_is_keyframe, wait_until};
use common::{header, http_exchange, publish_grant, token_with, watch_grant};
use signaling::auth::Grants;

const TEST_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_refusals_say_why() {
    let server = common::start_server().await;
    let addr = server.http_addr;
    let offer = b"v=0\r\n";
    let sdp = ("Content-Type", "application/sdp");

    let (status, headers, _) = http_exchange(addr, "OPTIONS", "/whip/class", &[], b"").await;
    assert_eq!(status, 204);
    assert_eq!(header(&headers, "accept-post"), Some("application/sdp"));
    assert_eq!(header(&headers, "access-control-allow-origin"), Some("*"));

    let (status, headers, _) = http_exchange(addr, "POST", "/whip/class", &[sdp], offer).await;
    assert_eq!(status, 401, "no token");
    assert_eq!(header(&headers, "www-authenticate"), Some("Bearer"));
    let (status, _, _) =
        http_exchange(addr, "POST", "/whip/class", &[sdp, ("Authorization", "Bearer x.y.z")], offer).await;
    assert_eq!(status, 401, "a malformed token");

    let other_room = format!("Bearer {}", token_with("elsewhere", "teacher", publish_grant()));
    let (status, _, _) =
        http_exchange(addr, "POST", "/whip/class", &[sdp, ("Authorization", &other_room)], offer).await;
    assert_eq!(status, 403, "a token for another room");
    let viewer = format!(
        "Bearer {}",
        token_with("class", "student", Grants { can_subscribe: true, ..Grants::default() })
    );
    let (status, _, _) =
        http_exchange(addr, "POST", "/whip/class", &[sdp, ("Authorization", &viewer)], offer).await;
    assert_eq!(status, 403, "a token without the publish grant");

    let teacher = format!("Bearer {}", token_with("class", "teacher", publish_grant()));
    let auth = ("Authorization", teacher.as_str());
    let (status, _, _) =
        http_exchange(addr, "POST", "/whip/class", &[auth, ("Content-Type", "text/plain")], offer).await;
    assert_eq!(status, 415, "not application/sdp");
    let (status, _, body) = http_exchange(addr, "POST", "/whip/class", &[auth, sdp], b"not sdp at all").await;
    assert_eq!(status, 400, "unparseable SDP: {body}");
    let (status, _, _) = http_exchange(addr, "DELETE", "/whip/class/PA_nothing", &[auth], b"").await;
    assert_eq!(status, 404, "no such session");
    let (status, body) = common::http_request(addr, "GET", "/healthz", &[]).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whip_publisher_reaches_the_room_and_delete_ends_it() {
    init_logging();
    tokio::time::timeout(TEST_TIMEOUT, publish_and_watch()).await.expect("finishes within a minute");
}

async fn publish_and_watch() {
    let server = common::start_server().await;
    let student = Client::join(&server, "class", "student", 1).await.expect("the student joins");
    student.wait_connected(Duration::from_secs(10)).await.expect("the student connects");
    let token = token_with("class", "teacher", publish_grant());
    let (mut teacher, location) =
        Client::publish_whip(server.http_addr, "class", "teacher", 0, &token).await.expect("WHIP publish");
    assert!(location.starts_with("/whip/class/PA_"), "{location}");
    teacher.wait_connected(Duration::from_secs(10)).await.expect("the publisher connects");
    teacher.start_media().await.expect("the publisher sends");

    let since = Instant::now();
    let flowed = wait_until(Duration::from_secs(15), || {
        student.received_count(&teacher, Kind::Audio, Some(since)) >= 25
            && student.received_count(&teacher, Kind::Video, Some(since)) >= 10
    })
    .await;
    assert!(
        flowed,
        "the student got {} audio and {} video packets from the WHIP publisher",
        student.received_count(&teacher, Kind::Audio, Some(since)),
        student.received_count(&teacher, Kind::Video, Some(since))
    );

    let bearer = format!("Bearer {token}");
    let auth = ("Authorization", bearer.as_str());
    let fragment = ("Content-Type", "application/trickle-ice-sdpfrag");
    let candidate = b"a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n";
    let (status, _, body) =
        http_exchange(server.http_addr, "PATCH", &location, &[auth, fragment], candidate).await;
    assert_eq!(status, 204, "a trickled candidate: {body}");
    let restart = b"a=ice-ufrag:new1\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n";
    let (status, _, _) =
        http_exchange(server.http_addr, "PATCH", &location, &[auth, fragment], restart).await;
    assert_eq!(status, 422, "ICE restarts are not supported");
    let stranger = format!("Bearer {}", token_with("class", "someone-else", publish_grant()));
    let (status, _, _) =
        http_exchange(server.http_addr, "DELETE", &location, &[("Authorization", &stranger)], b"").await;
    assert_eq!(status, 403, "another publisher may not end it");

    let (status, _, _) = http_exchange(server.http_addr, "DELETE", &location, &[auth], b"").await;
    assert_eq!(status, 200);
    let left = wait_until(Duration::from_secs(5), || {
        student
            .messages_of_type("participantLeft")
            .iter()
            .any(|m| m.json["participantId"] == teacher.participant_id.as_str())
    })
    .await;
    assert!(left, "the student is told the publisher left: {:?}", student.messages());
    let (status, _, _) = http_exchange(server.http_addr, "DELETE", &location, &[auth], b"").await;
    assert_eq!(status, 404, "the session is gone");
    teacher.close().await;
    student.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aiortc_whip_publisher_reaches_the_room() {
    init_logging();
    tokio::time::timeout(TEST_TIMEOUT, aiortc_publishes()).await.expect("finishes within a minute");
}

async fn aiortc_publishes() {
    let server = common::start_server().await;
    let student = Client::join(&server, "lecture", "student", 1).await.expect("the student joins");
    student.wait_connected(Duration::from_secs(10)).await.expect("the student connects");
    let url = format!("http://{}/whip/lecture", server.http_addr);
    let token = token_with("lecture", "aiortc-teacher", publish_grant());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/whip/aiortc_publish.py");
    let publisher = tokio::process::Command::new("python3")
        .args([script, &url, &token, "4"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(45), publisher)
        .await
        .expect("aiortc finishes")
        .expect("python3 runs (scripts/test installs aiortc)");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "aiortc publisher failed: {printed}");
    assert!(printed.contains("\"state\": \"connected\""), "{printed}");
    assert!(printed.contains("\"deleted\": 200"), "{printed}");

    let tracks = student.remote_tracks();
    let packets =
        |kind: Kind| tracks.iter().filter(|t| t.kind == Some(kind)).map(|t| t.packets.len()).sum::<usize>();
    assert!(packets(Kind::Audio) >= 50, "audio packets from aiortc: {}", packets(Kind::Audio));
    assert!(packets(Kind::Video) >= 20, "video packets from aiortc: {}", packets(Kind::Video));
    let first_video = tracks
        .iter()
        .filter(|t| t.kind == Some(Kind::Video))
        .find_map(|t| t.packets.first())
        .expect("a video packet");
    assert!(
        vp8_is_keyframe(&first_video.payload),
        "the first VP8 packet forwarded starts a keyframe (decodable)"
    );
    student.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whep_players_receive_a_whip_publisher() {
    init_logging();
    tokio::time::timeout(TEST_TIMEOUT, publish_and_play()).await.expect("finishes within a minute");
}

async fn publish_and_play() {
    let server = common::start_server().await;
    let viewer_token = token_with("broadcast", "viewers", watch_grant());
    // Nothing is live yet: come back later.
    let offer = b"v=0\r\n";
    let bearer = format!("Bearer {viewer_token}");
    let (status, headers, _) = http_exchange(
        server.http_addr,
        "POST",
        "/whep/broadcast",
        &[("Authorization", &bearer), ("Content-Type", "application/sdp")],
        offer,
    )
    .await;
    assert_eq!(status, 409, "nothing live");
    assert_eq!(header(&headers, "retry-after"), Some("5"));
    let publisher_token = format!("Bearer {}", token_with("broadcast", "viewers", publish_grant()));
    let (status, _, _) = http_exchange(
        server.http_addr,
        "POST",
        "/whep/broadcast",
        &[("Authorization", &publisher_token), ("Content-Type", "application/sdp")],
        offer,
    )
    .await;
    assert_eq!(status, 403, "a token without the subscribe grant");

    let teacher_token = token_with("broadcast", "teacher", publish_grant());
    let (mut teacher, _) = Client::publish_whip(server.http_addr, "broadcast", "teacher", 0, &teacher_token)
        .await
        .expect("WHIP publish");
    teacher.wait_connected(Duration::from_secs(10)).await.expect("the publisher connects");
    teacher.start_media().await.expect("the publisher sends");

    // Three players with one shared token.
    let mut viewers = Vec::new();
    for i in 0..3u8 {
        let (viewer, location) =
            Client::play_whep(server.http_addr, "broadcast", &format!("viewer{i}"), 10 + i, &viewer_token)
                .await
                .unwrap_or_else(|e| panic!("viewer {i} plays: {e:#}"));
        assert!(location.starts_with("/whep/broadcast/PA_"), "{location}");
        viewer.wait_connected(Duration::from_secs(10)).await.expect("the player connects");
        viewers.push((viewer, location));
    }
    // A WHEP answer names its own streams (the player offered the m-lines), so packets
    // are told apart by the sender's mark in their payload.
    let from_teacher = |viewer: &Client, kind: Kind| {
        viewer
            .remote_tracks()
            .iter()
            .filter(|t| t.kind == Some(kind))
            .flat_map(|t| t.packets.iter())
            .filter(|p| {
                parse_marker(teacher.video, kind, &p.payload)
                    .is_some_and(|(sender, _)| sender == teacher.index)
            })
            .count()
    };
    for (viewer, _) in &viewers {
        let flowed = wait_until(Duration::from_secs(15), || {
            from_teacher(viewer, Kind::Audio) >= 25 && from_teacher(viewer, Kind::Video) >= 10
        })
        .await;
        let video = viewer.remote_tracks().into_iter().find(|t| t.kind == Some(Kind::Video));
        assert!(
            flowed,
            "{} got {} audio and {} video packets from the publisher ({} packets on its video track)",
            viewer.label(),
            from_teacher(viewer, Kind::Audio),
            from_teacher(viewer, Kind::Video),
            video.map(|t| t.packets.len()).unwrap_or(0)
        );
        let video = viewer.video_packets();
        let keyframe_at = video.iter().position(|p| vp8_is_keyframe(&p.payload));
        assert_eq!(
            keyframe_at,
            Some(0),
            "{}: the first video packet starts a keyframe: {:?}",
            viewer.label(),
            video
                .iter()
                .take(8)
                .map(|p| (
                    p.seq,
                    p.timestamp,
                    vp8_is_keyframe(&p.payload),
                    p.payload.len(),
                    p.at.elapsed().as_millis()
                ))
                .collect::<Vec<_>>()
        );
    }
    let (viewer, location) = viewers.pop().expect("a viewer");
    let (status, _, _) =
        http_exchange(server.http_addr, "DELETE", &location, &[("Authorization", &bearer)], b"").await;
    assert_eq!(status, 200, "a player stops");
    viewer.close().await;
    for (viewer, _) in viewers {
        viewer.close().await;
    }
    teacher.close().await;
}
