//! Configured limits hold with a clear answer: a join beyond `max_participants_per_room`
//! is closed with 4007, and tracks beyond `max_publications_per_participant` are not
//! forwarded and get a `limit_exceeded` error, while the rest of the meeting goes on.

mod common;

use std::time::Duration;

use common::webrtc_client::{Client, init_logging, wait_until};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_beyond_the_room_limit_is_closed_with_4007() {
    let server = common::start_server_with(|c| c.media.max_participants_per_room = 2).await;
    let mut sockets = Vec::new();
    for identity in ["ana", "bo", "cy"] {
        let (mut ws, _) = tokio_tungstenite::connect_async(common::ws_url(&server)).await.expect("connect");
        let join = json!({"type": "join", "token": common::token("small", identity)}).to_string();
        ws.send(Message::Text(join.into())).await.expect("send join");
        let answer = tokio::time::timeout(WAIT, ws.next()).await.expect("an answer in time");
        sockets.push((identity, answer, ws));
    }
    for (identity, answer, _) in &sockets[..2] {
        let Some(Ok(Message::Text(t))) = answer else {
            panic!("{identity}: expected joined, got {answer:?}")
        };
        let v: Value = serde_json::from_str(t).expect("JSON");
        assert_eq!(v["type"], "joined", "{identity} fits in the room: {v}");
    }
    match &sockets[2].1 {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 4007, "{frame:?}");
            assert_eq!(frame.reason.as_str(), "room full");
        }
        other => panic!("the third join should be closed with 4007, got {other:?}"),
    }
    // A different room is not affected.
    let (mut ws, _) = tokio_tungstenite::connect_async(common::ws_url(&server)).await.expect("connect");
    let join = json!({"type": "join", "token": common::token("other", "cy")}).to_string();
    ws.send(Message::Text(join.into())).await.expect("send join");
    let Some(Ok(Message::Text(t))) = tokio::time::timeout(WAIT, ws.next()).await.expect("in time") else {
        panic!("no joined message for another room");
    };
    assert!(t.contains("\"joined\""), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracks_beyond_the_publication_limit_are_refused_and_the_rest_flow() {
    init_logging();
    let server = common::start_server_with(|c| c.media.max_publications_per_participant = 1).await;
    let mut ana = Client::join(&server, "limited", "ana", 0).await.expect("ana joins");
    let mut bo = Client::join(&server, "limited", "bo", 1).await.expect("bo joins");
    ana.wait_connected(WAIT).await.expect("ana connects");
    bo.wait_connected(WAIT).await.expect("bo connects");
    ana.start_media().await.expect("ana sends");
    bo.start_media().await.expect("bo sends");

    // Each offered audio and video: one is published, the other refused once, clearly.
    for c in [&ana, &bo] {
        assert!(
            wait_until(WAIT, || c
                .messages_of_type("error")
                .iter()
                .any(|m| m.json["code"] == "limit_exceeded"))
            .await,
            "{}: no limit_exceeded error; messages {:?}",
            c.label(),
            c.messages()
        );
        let errors = c.messages_of_type("error");
        assert_eq!(errors.len(), 1, "{}: told once: {errors:?}", c.label());
        let answers = c.messages_of_type("answer");
        let tracks = answers[0].json["tracks"].as_array().expect("tracks").len();
        assert_eq!(tracks, 1, "{}: the answer names one published track: {answers:?}", c.label());
    }
    // Each receives the one track the other may publish, and media flows on it.
    for (rx, tx) in [(&ana, &bo), (&bo, &ana)] {
        // Told through `joined` (ana was there first) or `trackPublished` (bo came later).
        let roster = rx.roster();
        let known: Vec<_> = roster.values().filter(|p| p.identity == tx.identity).collect();
        assert_eq!(known.len(), 1, "{} knows {}: {roster:?}", rx.label(), tx.label());
        assert_eq!(
            known[0].tracks.len(),
            1,
            "{} is told of one track of {}: {roster:?}",
            rx.label(),
            tx.label()
        );
        assert!(
            wait_until(WAIT, || {
                let tracks = rx.remote_tracks();
                tracks.len() == 1 && tracks[0].kind.is_some_and(|k| rx.received_count(tx, k, None) >= 20)
            })
            .await,
            "{} did not receive {}'s one track: {:?}",
            rx.label(),
            tx.label(),
            rx.remote_tracks()
        );
    }
    ana.close().await;
    bo.close().await;
}

/// A join the node cannot take (here its participant limit; its media threads' load budget
/// answers the same way, ADR 0020) is told `node_full` with the reason, then closed with
/// 1013, and those already in stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_beyond_what_the_node_carries_is_told_node_full_then_closed_with_1013() {
    let server = common::start_server_with(|c| c.media.max_participants_per_node = 1).await;
    let join = |room: &str, identity: &str| {
        json!({"type": "join", "token": common::token(room, identity)}).to_string()
    };
    let (mut first, _) = tokio_tungstenite::connect_async(common::ws_url(&server)).await.expect("connect");
    first.send(Message::Text(join("one", "ana").into())).await.expect("send join");
    let Some(Ok(Message::Text(t))) = tokio::time::timeout(WAIT, first.next()).await.expect("in time") else {
        panic!("no joined message for the first");
    };
    assert!(t.contains("\"joined\""), "{t}");
    let (mut second, _) = tokio_tungstenite::connect_async(common::ws_url(&server)).await.expect("connect");
    second.send(Message::Text(join("two", "bo").into())).await.expect("send join");
    let Some(Ok(Message::Text(t))) = tokio::time::timeout(WAIT, second.next()).await.expect("in time") else {
        panic!("no error message for the second");
    };
    let v: Value = serde_json::from_str(&t).expect("JSON");
    assert_eq!((v["type"].as_str(), v["code"].as_str()), (Some("error"), Some("node_full")), "{v}");
    assert!(v["message"].as_str().is_some_and(|m| m.contains("participant limit")), "{v}");
    match tokio::time::timeout(WAIT, second.next()).await.expect("in time") {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!((u16::from(frame.code), frame.reason.as_str()), (1013, "node full"));
        }
        other => panic!("expected close 1013, got {other:?}"),
    }
    let metrics = common::huiyi_metrics(&server).await;
    assert!(metrics.contains("huiyi_joins_refused_total{reason=\"participants\"} 1"), "{metrics}");
    // The one already in is not affected: its connection still answers.
    first.send(Message::Text(json!({"type": "bogus"}).to_string().into())).await.expect("send");
    let Some(Ok(Message::Text(t))) = tokio::time::timeout(WAIT, first.next()).await.expect("in time") else {
        panic!("the first's connection went away");
    };
    assert!(t.contains("unknown_type"), "{t}");
}
