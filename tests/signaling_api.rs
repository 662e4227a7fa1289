//! The signaling API as docs/protocol.md describes it, against a real in-process server:
//! token refusal, message errors, room events without media, the admin API, replacement
//! of a participant by the same identity, and the plain HTTP endpoints.
//!
//! The 10 s join timeout (close code 4002) is not tested here: it would need a 10 s wait.

mod common;

use std::time::Duration;

use futures_util::SinkExt;
use huiyi::Running;
use serde_json::{Value, json};
use signaling::auth::{self, Claims, Grants};
use tokio_tungstenite::tungstenite::Message;

use common::signal::*;

async fn resumes(server: &Running, outcome: &str) -> f64 {
    let metrics = common::huiyi_metrics(server).await;
    let series = format!("huiyi_signaling_resumes_total{{outcome=\"{outcome}\"}}");
    common::metric_value(&metrics, &series).unwrap_or(0.0)
}

fn claims(room: &str, identity: &str, exp: u64, grants: Grants) -> Claims {
    Claims { sub: identity.into(), name: None, room: room.into(), exp, nbf: None, grants }
}

fn participant_grants() -> Grants {
    Grants { can_publish: true, can_subscribe: true, room_admin: false }
}

fn admin_header(token: &str) -> String {
    format!("Bearer {token}")
}

fn parse_json(body: &str, what: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: body {body:?} is not JSON: {e}"))
}

/// Asserts a JSON `{"error": "<non-empty string>"}` body.
fn assert_error_body(body: &str, what: &str) {
    let v = parse_json(body, what);
    assert!(
        v["error"].as_str().is_some_and(|s| !s.is_empty()),
        "{what}: expected {{\"error\": \"...\"}}, got {body}"
    );
}

async fn admin_get(server: &Running, path: &str) -> (u16, String) {
    let auth = admin_header(&common::admin_token());
    common::http_request(server.http_addr, "GET", path, &[("Authorization", &auth)]).await
}

async fn admin_delete(server: &Running, path: &str) -> (u16, String) {
    let auth = admin_header(&common::admin_token());
    common::http_request(server.http_addr, "DELETE", path, &[("Authorization", &auth)]).await
}

/// The identities the admin API lists in `room`, in order.
async fn listed_identities(server: &Running, room: &str) -> Vec<String> {
    let (status, body) = admin_get(server, &format!("/v1/rooms/{room}/participants")).await;
    assert_eq!(status, 200, "GET /v1/rooms/{room}/participants: {body}");
    let v = parse_json(&body, "participants list");
    v["participants"]
        .as_array()
        .unwrap_or_else(|| panic!("no participants array in {body}"))
        .iter()
        .map(|p| p["identity"].as_str().unwrap_or_else(|| panic!("participant without identity: {p}")).into())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_closed_with_4001() {
    let server = common::start_server().await;
    let now = auth::now_unix();
    let cases = [
        (
            "wrong secret",
            auth::mint(b"not-the-test-secret", &claims("r", "ana", now + 3600, participant_grants())),
        ),
        (
            "expired",
            auth::mint(common::TEST_SECRET.as_bytes(), &claims("r", "ana", now - 60, participant_grants())),
        ),
        ("garbage", "this is not a token".to_string()),
        (
            "no grants",
            auth::mint(common::TEST_SECRET.as_bytes(), &claims("r", "ana", now + 3600, Grants::default())),
        ),
    ];
    for (what, token) in cases {
        let mut ws = connect(&server).await;
        send(&mut ws, json!({"type": "join", "token": token})).await;
        match next(&mut ws).await {
            Received::Close(Some((code, reason))) => {
                assert_eq!(code, 4001, "{what} token: close code (reason {reason:?})");
                assert!(reason.starts_with("unauthorized"), "{what} token: close reason {reason:?}");
            }
            other => panic!("{what} token: expected a close frame with 4001, got {other:?}"),
        }
    }
    // None of them entered the room.
    let (status, body) = admin_get(&server, "/v1/rooms/r/participants").await;
    assert_eq!(status, 404, "the room of refused joins should not exist: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_refuses_missing_bad_and_non_admin_tokens() {
    let server = common::start_server().await;
    // A room to address, so that 404 cannot stand in for an auth failure.
    let (_ws, _) = join(&server, &common::token("r", "ana")).await;
    let now = auth::now_unix();
    let admin_grants = Grants { can_publish: false, can_subscribe: false, room_admin: true };
    let wrong_secret =
        auth::mint(b"not-the-test-secret", &claims("*", "admin", now + 3600, admin_grants.clone()));
    let expired = auth::mint(common::TEST_SECRET.as_bytes(), &claims("*", "admin", now - 60, admin_grants));
    let participant = common::token("r", "ana");
    let endpoints = [
        ("GET", "/v1/rooms"),
        ("GET", "/v1/rooms/r/participants"),
        ("DELETE", "/v1/rooms/r/participants/ana"),
        ("DELETE", "/v1/rooms/r"),
    ];
    let unauthorized: Vec<(&str, Option<String>)> = vec![
        ("no Authorization header", None),
        ("a garbage bearer token", Some("Bearer garbage".into())),
        ("a wrong-secret admin token", Some(admin_header(&wrong_secret))),
        ("an expired admin token", Some(admin_header(&expired))),
        ("a Basic scheme", Some("Basic YWRtaW46YWRtaW4=".into())),
    ];
    for (method, path) in endpoints {
        for (what, header) in &unauthorized {
            let headers: Vec<(&str, &str)> =
                header.as_deref().map(|h| vec![("Authorization", h)]).unwrap_or_default();
            let (status, body) = common::http_request(server.http_addr, method, path, &headers).await;
            assert_eq!(status, 401, "{method} {path} with {what}: {body}");
            assert_error_body(&body, &format!("{method} {path} with {what}"));
        }
        let auth = admin_header(&participant);
        let (status, body) =
            common::http_request(server.http_addr, method, path, &[("Authorization", &auth)]).await;
        assert_eq!(status, 403, "{method} {path} with a participant token: {body}");
        assert_error_body(&body, &format!("{method} {path} with a participant token"));
    }
    // Nothing above removed anyone.
    assert_eq!(listed_identities(&server, "r").await, ["ana"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_before_join_is_refused_with_not_joined() {
    let server = common::start_server().await;
    let mut ws = connect(&server).await;
    send(&mut ws, json!({"type": "ping"})).await;
    let v = recv_type(&mut ws, "error").await;
    assert_eq!(v["code"], "not_joined", "ping before join: {v}");
    send(&mut ws, json!({"type": "leave"})).await;
    let v = recv_type(&mut ws, "error").await;
    assert_eq!(v["code"], "not_joined", "leave before join: {v}");
    // The connection is still usable: a join after the refusals succeeds.
    send(&mut ws, json!({"type": "join", "token": common::token("r", "ana")})).await;
    let joined = recv_type(&mut ws, "joined").await;
    assert_eq!(joined["room"], "r", "{joined}");
    assert_ping_pong(&mut ws, "a late join").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_after_join_get_errors_and_the_connection_stays_usable() {
    let server = common::start_server().await;
    let token = common::token("r", "ana");
    let (mut ws, joined) = join(&server, &token).await;
    assert_eq!(joined["room"], "r", "{joined}");
    assert_eq!(joined["participant"]["identity"], "ana", "{joined}");
    assert_eq!(joined["participant"]["name"], "ANA", "{joined}");
    assert!(joined["participant"]["id"].as_str().is_some_and(|s| !s.is_empty()), "{joined}");
    assert_eq!(joined["participants"], json!([]), "alone in the room: {joined}");
    assert_ping_pong(&mut ws, "join").await;

    // Over 1 MiB, well under the 4 MiB transport limit, and otherwise a valid ping.
    let too_large = json!({"type": "ping", "padding": "x".repeat(1100 * 1024)}).to_string();
    assert!(too_large.len() > 1024 * 1024 && too_large.len() < 4 * 1024 * 1024);
    let cases: Vec<(&str, String, &str)> = vec![
        ("malformed JSON", "{\"type\": \"ping\"".into(), "bad_json"),
        ("plain text", "hello".into(), "bad_json"),
        ("an unknown type", json!({"type": "dance"}).to_string(), "unknown_type"),
        ("a message over 1 MiB", too_large, "too_large"),
        ("mute without fields", json!({"type": "mute"}).to_string(), "bad_request"),
        ("mute without muted", json!({"type": "mute", "trackId": "TR_x"}).to_string(), "bad_request"),
        ("offer without sdp", json!({"type": "offer", "tracks": []}).to_string(), "bad_request"),
        ("answer without sdp", json!({"type": "answer"}).to_string(), "bad_request"),
        ("a second join", json!({"type": "join", "token": token}).to_string(), "already_joined"),
        ("subscribe without tracks", json!({"type": "subscribe"}).to_string(), "bad_request"),
        (
            "subscribe with an unknown quality",
            json!({"type": "subscribe", "tracks": [{"trackId": "TR_x", "quality": "ultra"}]}).to_string(),
            "bad_request",
        ),
        (
            "subscribe with neither size nor quality",
            json!({"type": "subscribe", "tracks": [{"trackId": "TR_x"}]}).to_string(),
            "bad_request",
        ),
        (
            "subscribe naming 101 tracks",
            json!({"type": "subscribe", "tracks": (0..101).map(|i| json!({"trackId": format!("TR_{i}"), "quality": "low"})).collect::<Vec<_>>()}).to_string(),
            "bad_request",
        ),
    ];
    for (what, text, code) in cases {
        send_text(&mut ws, text).await;
        let v = recv(&mut ws).await;
        assert_eq!(v["type"], "error", "{what}: expected an error, got {v}");
        assert_eq!(v["code"], code, "{what}: {v}");
        assert!(v["message"].is_string(), "{what}: error without a message: {v}");
        assert_ping_pong(&mut ws, what).await;
    }

    // Text frames only: a binary frame is refused with an error (the doc names no code for it).
    tokio::time::timeout(WAIT, ws.send(Message::binary(br#"{"type":"ping"}"#.to_vec())))
        .await
        .expect("sending took over 5 s")
        .expect("send a binary frame");
    let v = recv(&mut ws).await;
    assert_eq!(v["type"], "error", "a binary frame: expected an error, got {v}");
    assert!(v["code"].is_string(), "a binary frame: error without a code: {v}");
    assert_ping_pong(&mut ws, "a binary frame").await;

    // Unknown fields are ignored.
    send(&mut ws, json!({"type": "ping", "extra": {"nested": true}})).await;
    recv_type(&mut ws, "pong").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_see_each_other_join_and_leave() {
    let server = common::start_server().await;
    let (mut ana, ana_joined) = join(&server, &common::token("room1", "ana")).await;
    let ana_id = ana_joined["participant"]["id"].as_str().expect("own participant id").to_string();

    let (mut bob, bob_joined) = join(&server, &common::token("room1", "bob")).await;
    let bob_id = bob_joined["participant"]["id"].as_str().expect("own participant id").to_string();
    assert_ne!(ana_id, bob_id);
    // Bob's joined lists Ana.
    let others = bob_joined["participants"].as_array().expect("participants array");
    assert_eq!(others.len(), 1, "{bob_joined}");
    assert_eq!(others[0]["id"], ana_id.as_str(), "{bob_joined}");
    assert_eq!(others[0]["identity"], "ana", "{bob_joined}");
    assert_eq!(others[0]["name"], "ANA", "{bob_joined}");

    // Ana hears about Bob.
    let v = recv_type(&mut ana, "participantJoined").await;
    assert_eq!(v["participant"]["id"], bob_id.as_str(), "{v}");
    assert_eq!(v["participant"]["identity"], "bob", "{v}");
    assert_eq!(v["participant"]["name"], "BOB", "{v}");
    assert_eq!(v["participant"]["tracks"], json!([]), "{v}");

    // Bob leaves: his socket closes with 1000, Ana hears participantLeft.
    send(&mut bob, json!({"type": "leave"})).await;
    let (code, reason) = expect_close(&mut bob).await;
    assert_eq!(code, 1000, "close after leave (reason {reason:?})");
    assert_eq!(reason, "left");
    let v = recv_type(&mut ana, "participantLeft").await;
    assert_eq!(v["participantId"], bob_id.as_str(), "{v}");
    assert_eq!(v["reason"], "left", "{v}");
    assert_ping_pong(&mut ana, "another participant left").await;
}

/// Chat (docs/protocol.md, Talking): a bad line, an unknown reaction and talking faster
/// than the limit each get an error, and the connection stays usable; the lines that were
/// taken reach everyone in one order, and a later joiner gets them after its `joined`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_is_checked_and_limited_and_kept_for_later_joiners() {
    let server = common::start_server().await;
    let (mut ana, _) = join(&server, &common::token("talk", "ana")).await;
    for (bad, code) in [
        (json!({"type": "chat", "text": "   "}), "bad_request"),
        (json!({"type": "chat", "text": "x".repeat(1001)}), "bad_request"),
        (json!({"type": "chat", "text": "bell \u{7}"}), "bad_request"),
        (json!({"type": "reaction", "emoji": "<b>"}), "bad_request"),
        (json!({"type": "chat"}), "bad_request"),
    ] {
        send(&mut ana, bad.clone()).await;
        let v = recv_type(&mut ana, "error").await;
        assert_eq!(v["code"], code, "{bad} -> {v}");
    }
    // Ten in the window (those refused above count too): the rest are refused.
    let mut taken = Vec::new();
    let mut refused = 0;
    for i in 0..10 {
        send(&mut ana, json!({"type": "chat", "text": format!("line {i}")})).await;
        let v = recv(&mut ana).await;
        match v["type"].as_str() {
            Some("chat") => taken.push(v["text"].as_str().unwrap_or_default().to_string()),
            Some("error") if v["code"] == "rate_limited" => refused += 1,
            _ => panic!("unexpected {v}"),
        }
    }
    assert!(!taken.is_empty() && refused > 0, "taken {taken:?}, refused {refused}");
    assert_ping_pong(&mut ana, "talking too fast").await;
    // A later joiner gets the lines said before it came, right after `joined`, in order.
    let (mut bo, _) = join(&server, &common::token("talk", "bo")).await;
    let mut kept = Vec::new();
    let mut seqs = Vec::new();
    for _ in 0..taken.len() {
        let line = recv_type(&mut bo, "chat").await;
        kept.push(line["text"].as_str().unwrap_or_default().to_string());
        seqs.push(line["seq"].as_u64().unwrap_or_default());
    }
    assert_eq!(kept, taken);
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "numbered in order: {seqs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_socket_is_a_participant_leaving_after_the_resume_grace() {
    let server = common::start_server_with(|c| c.limits.resume_grace_secs = 1).await;
    let (mut ana, _) = join(&server, &common::token("room1", "ana")).await;
    let (mut bob, bob_joined) = join(&server, &common::token("room1", "bob")).await;
    let bob_id = bob_joined["participant"]["id"].as_str().expect("own participant id").to_string();
    assert!(bob_joined["resume"].as_str().is_some_and(|r| r.len() >= 16), "a resume token: {bob_joined}");
    recv_type(&mut ana, "participantJoined").await;

    // Bob's client closes the socket without sending leave.
    tokio::time::timeout(WAIT, bob.close(None)).await.expect("closing took over 5 s").expect("close");
    drop(bob);
    let dropped = std::time::Instant::now();
    assert_eq!(listed_identities(&server, "room1").await, ["ana", "bob"], "bob is kept for a resume");
    let v = recv_type(&mut ana, "participantLeft").await;
    assert!(dropped.elapsed() >= Duration::from_millis(900), "left only after the grace period");
    assert_eq!(v["participantId"], bob_id.as_str(), "{v}");
    assert_eq!(v["reason"], "disconnected", "{v}");
    assert_eq!(listed_identities(&server, "room1").await, ["ana"]);
    assert_eq!(resumes(&server, "expired").await, 1.0);
}

/// Issue 12: a dropped signaling connection resumed within the grace period is the same
/// participant: the others see no leave and no join, and what happened meanwhile reaches
/// it after its `joined` (`resumed: true`). A stale or forged resume token joins anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_socket_resumed_within_the_grace_is_the_same_participant() {
    let server = common::start_server_with(|c| c.limits.resume_grace_secs = 5).await;
    let (mut ana, _) = join(&server, &common::token("room1", "ana")).await;
    let bob_token = common::token("room1", "bob");
    let (bob, bob_joined) = join(&server, &bob_token).await;
    let bob_id = bob_joined["participant"]["id"].as_str().expect("own participant id").to_string();
    assert!(bob_joined["resume"].as_str().is_some(), "{bob_joined}");
    recv_type(&mut ana, "participantJoined").await;

    // The connection drops (no close frame, no leave); meanwhile cy joins.
    drop(bob);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_cy, _) = join(&server, &common::token("room1", "cy")).await;
    recv_type(&mut ana, "participantJoined").await;

    // A forged token resumes nothing.
    let mut forged = connect(&server).await;
    let wrong = json!({"type": "join", "token": common::token("room1", "bob"), "resume": "not-the-token"});
    send(&mut forged, wrong).await;
    let v = recv_type(&mut forged, "joined").await;
    assert_ne!(v["participant"]["id"], bob_id.as_str(), "a new participant: {v}");
    assert!(v.get("resumed").is_none(), "{v}");
    // That join replaced the parked bob (same identity): ana sees him go and come.
    let left = recv_type(&mut ana, "participantLeft").await;
    assert_eq!(left["reason"], "replaced", "{left}");
    recv_type(&mut ana, "participantJoined").await;
    let resume_now = v["resume"].as_str().expect("a resume token").to_string();

    // The new bob drops; he comes back with his token within the grace period.
    drop(forged);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_dan, _) = join(&server, &common::token("room1", "dan")).await;
    recv_type(&mut ana, "participantJoined").await;
    let mut back = connect(&server).await;
    send(&mut back, json!({"type": "join", "token": bob_token, "resume": resume_now})).await;
    let v = recv_type(&mut back, "joined").await;
    assert_eq!(v["resumed"], true, "{v}");
    let joined_meanwhile = recv_type(&mut back, "participantJoined").await;
    assert_eq!(
        joined_meanwhile["participant"]["identity"], "dan",
        "what happened while away: {joined_meanwhile}"
    );
    assert_ping_pong(&mut back, "a resume").await;
    assert_eq!(resumes(&server, "resumed").await, 1.0);
    assert_eq!(resumes(&server, "refused").await, 1.0);
    // Ana saw nothing of the drop and the resume.
    send(&mut ana, json!({"type": "ping"})).await;
    let v = recv(&mut ana).await;
    assert_eq!(v["type"], "pong", "no leave or join for a resumed participant: {v}");
}

/// After a network change the server may still hold the old connection (half-open: no
/// close ever came). A join with its resume token takes the participant over anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_takes_over_a_connection_the_server_still_holds() {
    let server = common::start_server().await;
    let (mut ana, _) = join(&server, &common::token("room1", "ana")).await;
    let bob_token = common::token("room1", "bob");
    let (_old, bob_joined) = join(&server, &bob_token).await;
    let resume = bob_joined["resume"].as_str().expect("a resume token").to_string();
    recv_type(&mut ana, "participantJoined").await;

    let mut back = connect(&server).await;
    send(&mut back, json!({"type": "join", "token": bob_token, "resume": resume})).await;
    let v = recv_type(&mut back, "joined").await;
    assert_eq!(v["resumed"], true, "{v}");
    assert_eq!(v["participant"]["id"], bob_joined["participant"]["id"], "{v}");
    assert_ping_pong(&mut back, "a takeover").await;
    send(&mut ana, json!({"type": "ping"})).await;
    let v = recv(&mut ana).await;
    assert_eq!(v["type"], "pong", "no leave or join for the taken-over participant: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_lists_removes_and_closes() {
    let server = common::start_server().await;
    let (mut ana, _) = join(&server, &common::token("class", "ana")).await;
    let (mut bob, bob_joined) = join(&server, &common::token("class", "bob")).await;
    let bob_id = bob_joined["participant"]["id"].as_str().expect("own participant id").to_string();
    let (mut cy, _) = join(&server, &common::token("class", "cy")).await;
    let (mut dan, _) = join(&server, &common::token("other", "dan")).await;
    recv_type(&mut ana, "participantJoined").await; // bob
    recv_type(&mut ana, "participantJoined").await; // cy
    recv_type(&mut bob, "participantJoined").await; // cy

    // GET /v1/rooms
    let (status, body) = admin_get(&server, "/v1/rooms").await;
    assert_eq!(status, 200, "GET /v1/rooms: {body}");
    let v = parse_json(&body, "GET /v1/rooms");
    let rooms = v["rooms"].as_array().unwrap_or_else(|| panic!("no rooms array in {body}"));
    assert_eq!(rooms.len(), 2, "{body}");
    let class =
        rooms.iter().find(|r| r["name"] == "class").unwrap_or_else(|| panic!("no room class in {body}"));
    assert_eq!(class["participants"], 3, "{body}");
    assert!(class["createdAt"].is_u64(), "createdAt: {body}");
    let other =
        rooms.iter().find(|r| r["name"] == "other").unwrap_or_else(|| panic!("no room other in {body}"));
    assert_eq!(other["participants"], 1, "{body}");

    // GET /v1/rooms/{room}/participants
    let (status, body) = admin_get(&server, "/v1/rooms/class/participants").await;
    assert_eq!(status, 200, "{body}");
    let v = parse_json(&body, "participants list");
    let list = v["participants"].as_array().unwrap_or_else(|| panic!("no participants array in {body}"));
    let mut identities: Vec<&str> = list.iter().filter_map(|p| p["identity"].as_str()).collect();
    identities.sort_unstable();
    assert_eq!(identities, ["ana", "bob", "cy"], "{body}");
    let bob_entry = list.iter().find(|p| p["identity"] == "bob").expect("bob listed");
    assert_eq!(bob_entry["id"], bob_id.as_str(), "{body}");
    assert_eq!(bob_entry["name"], "BOB", "{body}");

    // DELETE /v1/rooms/{room}/participants/{identity}
    let (status, body) = admin_delete(&server, "/v1/rooms/class/participants/bob").await;
    assert_eq!(status, 204, "DELETE participant bob: {body}");
    assert_eq!(body, "", "204 has no body");
    let (code, reason) = expect_close(&mut bob).await;
    assert_eq!(code, 4003, "bob's close code (reason {reason:?})");
    assert_eq!(reason, "removed by admin");
    for (who, ws) in [("ana", &mut ana), ("cy", &mut cy)] {
        // Told who removed whom (docs/protocol.md, Host controls) and that it left: two
        // messages on two paths (the room's bus, the media node), in either order.
        let mut two = [recv(ws).await, recv(ws).await];
        two.sort_by_key(|m| m["type"].as_str().unwrap_or_default().to_string());
        let [told, v] = two;
        assert_eq!(
            (told["action"].as_str(), told["byName"].as_str()),
            (Some("remove"), Some("admin")),
            "{told}"
        );
        assert_eq!(v["type"], "participantLeft", "{v}");
        assert_eq!(v["participantId"], bob_id.as_str(), "{who}: {v}");
        assert_eq!(v["reason"], "removed", "{who}: {v}");
    }
    assert_eq!(listed_identities(&server, "class").await, ["ana", "cy"]);

    // DELETE /v1/rooms/{room}
    let (status, body) = admin_delete(&server, "/v1/rooms/class").await;
    assert_eq!(status, 204, "DELETE room class: {body}");
    assert_eq!(body, "", "204 has no body");
    for (who, ws) in [("ana", &mut ana), ("cy", &mut cy)] {
        let (code, reason) = expect_close(ws).await;
        assert_eq!(code, 4004, "{who}'s close code (reason {reason:?})");
        assert_eq!(reason, "room closed", "{who}");
    }
    // The room is gone; the other room is untouched.
    let (status, body) = admin_get(&server, "/v1/rooms/class/participants").await;
    assert_eq!(status, 404, "participants of a closed room: {body}");
    let (status, body) = admin_get(&server, "/v1/rooms").await;
    assert_eq!(status, 200, "{body}");
    let v = parse_json(&body, "GET /v1/rooms");
    let names: Vec<&str> =
        v["rooms"].as_array().expect("rooms").iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, ["other"], "{body}");
    assert_ping_pong(&mut dan, "another room closed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_answers_404_for_unknown_rooms_and_participants() {
    let server = common::start_server().await;
    let (_ana, _) = join(&server, &common::token("real", "ana")).await;
    let cases = [
        ("GET", "/v1/rooms/nope/participants"),
        ("DELETE", "/v1/rooms/nope"),
        ("DELETE", "/v1/rooms/nope/participants/ana"),
        ("DELETE", "/v1/rooms/real/participants/nobody"),
    ];
    for (method, path) in cases {
        let auth = admin_header(&common::admin_token());
        let (status, body) =
            common::http_request(server.http_addr, method, path, &[("Authorization", &auth)]).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert_error_body(&body, &format!("{method} {path}"));
    }
    let (status, body) = admin_get(&server, "/v1/rooms").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(parse_json(&body, "rooms")["rooms"].as_array().map(Vec::len), Some(1), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_join_with_the_same_identity_replaces_the_first() {
    let server = common::start_server().await;
    let (mut first, first_joined) = join(&server, &common::token("r", "ana")).await;
    let first_id = first_joined["participant"]["id"].as_str().expect("id").to_string();
    let (mut second, second_joined) = join(&server, &common::token("r", "ana")).await;
    let second_id = second_joined["participant"]["id"].as_str().expect("id").to_string();
    assert_ne!(first_id, second_id);

    let (code, reason) = expect_close(&mut first).await;
    assert_eq!(code, 4005, "the replaced connection's close code (reason {reason:?})");
    assert_eq!(reason, "replaced by a new connection");

    // The old session may still have been in the room when the new one joined; then the
    // new one is told it left, as "replaced". Nothing else may come before the pong.
    send(&mut second, json!({"type": "ping"})).await;
    loop {
        let v = recv(&mut second).await;
        if v["type"] == "pong" {
            break;
        }
        assert_eq!(v["type"], "participantLeft", "after replacing, ping got {v} instead of pong");
        assert_eq!(v["participantId"], first_id.as_str(), "{v}");
        assert_eq!(v["reason"], "replaced", "{v}");
    }
    let (status, body) = admin_get(&server, "/v1/rooms/r/participants").await;
    assert_eq!(status, 200, "{body}");
    let v = parse_json(&body, "participants");
    let list = v["participants"].as_array().expect("participants");
    assert_eq!(list.len(), 1, "one entry per identity: {body}");
    assert_eq!(list[0]["id"], second_id.as_str(), "the new connection holds the identity: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_metrics() {
    let server = common::start_server().await;
    let (status, body) = common::http_request(server.http_addr, "GET", "/healthz", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "ok");

    let (_ws, _) = join(&server, &common::token("r", "ana")).await;
    let (status, body) = common::http_request(server.http_addr, "GET", "/metrics", &[]).await;
    assert_eq!(status, 200, "{body}");
    for name in ["huiyi_participants", "huiyi_signaling_connections"] {
        assert!(body.lines().any(|l| l.starts_with(&format!("# TYPE {name} "))), "no {name} in:\n{body}");
    }
    assert!(body.lines().any(|l| l == "huiyi_participants 1"), "one participant expected in:\n{body}");
    assert!(
        body.lines().any(|l| l == "huiyi_signaling_connections 1"),
        "one connection expected in:\n{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_token_endpoint_is_off_with_a_secret() {
    let server = common::start_server().await;
    let (status, body) =
        common::http_request(server.http_addr, "GET", "/v1/dev/token?room=r&identity=i", &[]).await;
    assert_eq!(status, 404, "{body}");
    assert!(!body.contains("\"token\""), "no token may be handed out: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_token_endpoint_serves_dev_secret_tokens_without_a_secret() {
    let server = common::start_server_with(|c| c.auth.api_secret = String::new()).await;
    let (status, body) =
        common::http_request(server.http_addr, "GET", "/v1/dev/token?room=r&identity=i&name=Ivy", &[]).await;
    assert_eq!(status, 200, "{body}");
    let v = parse_json(&body, "dev token");
    let token = v["token"].as_str().unwrap_or_else(|| panic!("no token in {body}"));
    let claims = auth::verify(huiyi::config::DEV_SECRET.as_bytes(), token, auth::now_unix())
        .unwrap_or_else(|e| panic!("the dev token does not verify against DEV_SECRET: {e}"));
    assert_eq!(claims.room, "r");
    assert_eq!(claims.sub, "i");
    assert_eq!(claims.name.as_deref(), Some("Ivy"));
    assert!(claims.grants.can_publish && claims.grants.can_subscribe, "{:?}", claims.grants);
    assert!(!claims.grants.room_admin, "a dev token must not be an admin token");

    // And the server admits it.
    let (_ws, joined) = join(&server, token).await;
    assert_eq!(joined["participant"]["identity"], "i", "{joined}");
    assert_eq!(joined["participant"]["name"], "Ivy", "{joined}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_listener_metrics_and_the_admin_api_leave_the_public_port() {
    let server = common::start_server_with(|c| c.admin_http = Some("127.0.0.1:0".parse().unwrap())).await;
    let admin = server.admin_addr.expect("an admin address");
    let bearer = format!("Bearer {}", common::admin_token());
    let auth = [("Authorization", bearer.as_str())];
    for (path, headers) in [("/metrics", &[][..]), ("/v1/rooms", &auth[..])] {
        let (public, _) = common::http_request(server.http_addr, "GET", path, headers).await;
        assert_eq!(public, 404, "{path} is not on the public port");
        let (private, body) = common::http_request(admin, "GET", path, headers).await;
        assert_eq!(private, 200, "{path} on the admin port: {body}");
    }
    let (status, body) = common::http_request(server.http_addr, "GET", "/healthz", &[]).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, _) = common::http_request(admin, "GET", "/", &[]).await;
    assert_eq!(status, 404, "the web client is not on the admin port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_credentials_come_with_the_join_and_from_ice_servers() {
    // Without [turn]: no iceServers in joined, an empty list from the endpoint.
    let plain = common::start_server().await;
    let (_ws, joined) = join(&plain, &common::token("r", "ana")).await;
    assert!(joined.get("iceServers").is_none(), "{joined}");
    let bearer = format!("Bearer {}", common::token("r", "ana"));
    let (status, body) =
        common::http_request(plain.http_addr, "GET", "/v1/ice-servers", &[("Authorization", &bearer)]).await;
    assert_eq!((status, body.as_str()), (200, r#"{"iceServers":[]}"#));

    let server = common::start_server_with(|c| {
        c.turn.urls = vec!["turn:127.0.0.1:3478?transport=udp".into()];
        c.turn.secret = "shared-with-coturn".into();
    })
    .await;
    let (_ws, joined) = join(&server, &common::token("r", "ana")).await;
    let servers = joined["iceServers"].as_array().expect("iceServers in joined");
    assert_eq!(servers.len(), 1, "{joined}");
    assert_eq!(servers[0]["urls"], json!(["turn:127.0.0.1:3478?transport=udp"]));
    let username = servers[0]["username"].as_str().expect("username");
    let (expiry, identity) = username.split_once(':').expect("EXPIRY:IDENTITY");
    assert_eq!(identity, "ana");
    let expiry: u64 = expiry.parse().expect("Unix seconds");
    let now = auth::now_unix();
    assert!(expiry > now + 11 * 3600 && expiry <= now + 12 * 3600 + 5, "valid 12 h: {expiry} vs {now}");
    let expected = proto::turn::ice_server(b"shared-with-coturn", &[], "ana", expiry).credential;
    assert_eq!(servers[0]["credential"], expected, "HMAC-SHA1 of the username under the secret");

    let (status, body) =
        common::http_request(server.http_addr, "GET", "/v1/ice-servers", &[("Authorization", &bearer)]).await;
    assert_eq!(status, 200, "{body}");
    let listed: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(listed["iceServers"][0]["urls"], servers[0]["urls"]);
    let (status, _) = common::http_request(server.http_addr, "GET", "/v1/ice-servers", &[]).await;
    assert_eq!(status, 401, "no token, no credentials");
    let (status, _) = common::http_request(
        server.http_addr,
        "GET",
        "/v1/ice-servers",
        &[("Authorization", "Bearer x.y.z")],
    )
    .await;
    assert_eq!(status, 401, "a bad token, no credentials");
}
