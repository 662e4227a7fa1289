//! Failure containment with real peers: client input that breaks a session's WebRTC
//! engine ends that session, with a clear error, and nothing else. Two webrtc-rs clients
//! hold a meeting on the same shard while other participants send an SDP offer that makes
//! str0m 0.25 panic ("Pt locked multiple times") and ICE candidates it cannot parse.

mod common;

use std::time::{Duration, Instant};

use common::webrtc_client::{Client, Kind, init_logging, wait_until};
use futures_util::{SinkExt, StreamExt};
use huiyi::Running;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Two m-lines that bind payload type 96 to two codecs the server takes (VP8 and H.264):
/// str0m 0.25 asserts while applying such an offer.
const PANICKING_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0 1\r\n\
a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
a=setup:actpass\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=sendrecv\r\na=rtpmap:96 VP8/90000\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=sendrecv\r\na=rtpmap:96 H264/90000\r\n\
a=fmtp:96 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n";

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn join_raw(server: &Running, room: &str, identity: &str) -> Ws {
    let (mut ws, _) =
        tokio_tungstenite::connect_async(common::ws_url(server)).await.expect("WebSocket connects");
    let join = json!({"type": "join", "token": common::token(room, identity)});
    ws.send(Message::text(join.to_string())).await.expect("join sent");
    let joined = next_message(&mut ws).await.expect("an answer to join");
    assert_eq!(joined["type"], "joined", "{identity} joins {room}: {joined}");
    ws
}

/// The next JSON message, or None when the socket closed (or nothing came for 10 s).
async fn next_message(ws: &mut Ws) -> Option<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.ok()?? {
            Ok(Message::Text(text)) => return serde_json::from_str(&text).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Reads until the socket closes: the messages before, and the close code.
async fn until_closed(ws: &mut Ws) -> (Vec<Value>, Option<u16>) {
    let mut messages = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => messages.extend(serde_json::from_str::<Value>(&text).ok()),
            Ok(Some(Ok(Message::Close(frame)))) => return (messages, frame.map(|f| u16::from(f.code))),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) | Err(_) => return (messages, None),
        }
    }
}

async fn metric(server: &Running, series: &str) -> f64 {
    common::metric_value(&common::huiyi_metrics(server).await, series).unwrap_or(0.0)
}

async fn join_and_send(server: &Running, room: &str, identity: &str, index: u8) -> Client {
    let mut client = Client::join(server, room, identity, index)
        .await
        .unwrap_or_else(|e| panic!("{identity} joins: {e:#}"));
    client
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{identity} connects: {e:#}"));
    client.start_media().await.unwrap_or_else(|e| panic!("{identity} starts media: {e:#}"));
    client
}

/// Waits until `rx` received at least this much more of each kind from `tx` than it had.
async fn media_keeps_flowing(rx: &Client, tx: &Client, since: Instant, what: &str) {
    let flowed = wait_until(Duration::from_secs(10), || {
        rx.received_count(tx, Kind::Audio, Some(since)) >= 25
            && rx.received_count(tx, Kind::Video, Some(since)) >= 10
    })
    .await;
    assert!(
        flowed,
        "{what}: {} got {} audio and {} video packets from {} in 10 s",
        rx.label(),
        rx.received_count(tx, Kind::Audio, Some(since)),
        rx.received_count(tx, Kind::Video, Some(since)),
        tx.label()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_that_panics_the_engine_ends_only_its_session() {
    init_logging();
    tokio::time::timeout(TEST_TIMEOUT, panicking_offer()).await.expect("finishes within a minute");
}

async fn panicking_offer() {
    // One shard: the attacker's session shares the thread with the meeting.
    let server = common::start_server_with(|c| c.media.shards = 1).await;
    let alice = join_and_send(&server, "calm", "alice", 0).await;
    let bob = join_and_send(&server, "calm", "bob", 1).await;
    let start = Instant::now();
    media_keeps_flowing(&alice, &bob, start, "before the attack").await;
    media_keeps_flowing(&bob, &alice, start, "before the attack").await;

    let mut mallory = join_raw(&server, "storm", "mallory").await;
    let offer = json!({"type": "offer", "sdp": PANICKING_OFFER, "tracks": []});
    mallory.send(Message::text(offer.to_string())).await.expect("offer sent");
    let (messages, code) = until_closed(&mut mallory).await;
    let errors: Vec<&Value> = messages.iter().filter(|m| m["type"] == "error").collect();
    assert!(
        errors.iter().any(|e| e["code"] == "bad_sdp"),
        "mallory is told her offer was refused before the close; got {messages:?}"
    );
    assert_eq!(code, Some(4008), "mallory's socket closes with 4008 (media session failed)");

    let after = Instant::now();
    media_keeps_flowing(&alice, &bob, after, "after the attack").await;
    media_keeps_flowing(&bob, &alice, after, "after the attack").await;
    assert_eq!(metric(&server, "huiyi_session_panics_total").await, 1.0);
    assert_eq!(metric(&server, "huiyi_sessions_ended_total{reason=\"media_error\"}").await, 1.0);
    assert_eq!(metric(&server, "huiyi_participants").await, 2.0, "alice and bob are still in");
    alice.close().await;
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparseable_candidates_are_counted_and_the_session_goes_on() {
    init_logging();
    tokio::time::timeout(TEST_TIMEOUT, bad_candidates()).await.expect("finishes within a minute");
}

async fn bad_candidates() {
    let server = common::start_server_with(|c| c.media.shards = 1).await;
    let mut eve = join_raw(&server, "storm", "eve").await;
    let garbage = [
        "candidate:garbage",
        "candidate:1 1 udp 2130706431 999.1.1.1 5000 typ host",
        "candidate:1 1 udp notanumber 127.0.0.1 5000 typ host",
        "candidate:1 1 udp 2130706431 127.0.0.1 99999 typ host",
    ];
    for candidate in garbage {
        let message = json!({"type": "candidate", "candidate": candidate, "sdpMid": "0"});
        eve.send(Message::text(message.to_string())).await.expect("candidate sent");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&server, "huiyi_bad_signaling_input_total{kind=\"candidate\"}").await < garbage.len() as f64
    {
        assert!(Instant::now() < deadline, "every unparseable candidate is counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The session is still there and answers.
    eve.send(Message::text(json!({"type": "ping"}).to_string())).await.expect("ping sent");
    let pong = next_message(&mut eve).await.expect("the socket stays open");
    assert_eq!(pong["type"], "pong", "{pong}");
    assert_eq!(metric(&server, "huiyi_participants").await, 1.0);
    assert_eq!(metric(&server, "huiyi_session_panics_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_media_thread_that_panics_starts_again_and_other_rooms_keep_their_media() {
    init_logging();
    tokio::time::timeout(TEST_TIMEOUT, media_thread_panic()).await.expect("finishes within a minute");
}

async fn media_thread_panic() {
    // Two media threads: the meeting on one, the victim's room on the other; a join to
    // "boom" (the test hook) goes to the less loaded one, the victim's, and panics it.
    let server = common::start_server_with(|c| {
        c.media.shards = 2;
        c.test_panic_room = Some("boom".into());
    })
    .await;
    let alice = join_and_send(&server, "calm", "alice", 0).await;
    let bob = join_and_send(&server, "calm", "bob", 1).await;
    let mut victim = join_raw(&server, "victim", "victor").await;
    let start = Instant::now();
    media_keeps_flowing(&alice, &bob, start, "before the panic").await;

    let (mut boom, _) = tokio_tungstenite::connect_async(common::ws_url(&server)).await.expect("connect");
    let join = json!({"type": "join", "token": common::token("boom", "mallory")});
    boom.send(Message::text(join.to_string())).await.expect("join sent");
    let (_, code) = until_closed(&mut boom).await;
    assert_eq!(code, Some(1013), "the join that met the panic is refused as overloaded (try again)");
    let (_, code) = until_closed(&mut victim).await;
    assert_eq!(code, Some(4008), "the victim's session ended with its media thread");

    let after = Instant::now();
    media_keeps_flowing(&alice, &bob, after, "after the panic").await;
    media_keeps_flowing(&bob, &alice, after, "after the panic").await;
    assert_eq!(metric(&server, "huiyi_media_thread_restarts_total").await, 1.0);
    let (status, body) = common::http_request(server.http_addr, "GET", "/healthz", &[]).await;
    assert_eq!((status, body.as_str()), (200, "ok"), "the restarted thread beats again");
    // The restarted thread takes rooms again.
    let _dan = join_raw(&server, "afterwards", "dan").await;
    let _victor = join_raw(&server, "victim", "victor").await;
    assert_eq!(metric(&server, "huiyi_participants").await, 4.0);
    alice.close().await;
    bob.close().await;
}
