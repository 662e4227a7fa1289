//! Host controls (docs/protocol.md, Host controls) through signaling and the admin API,
//! against a real in-process server: refused without the `roomAdmin` grant, told to the
//! whole room, a removed participant and an ended meeting closed with their codes. That
//! the server stops forwarding a muted microphone is checked with media in the router's
//! tests and with browsers (tests/browser.rs).

mod common;

use huiyi::Running;
use serde_json::{Value, json};
use signaling::auth::Grants;

use common::signal::*;

fn host_token(room: &str, identity: &str) -> String {
    common::token_with(room, identity, Grants { can_publish: true, can_subscribe: true, room_admin: true })
}

/// Read until a message of type `expected` (others skipped; a close fails).
async fn until(ws: &mut Ws, expected: &str) -> Value {
    for _ in 0..20 {
        let v = recv(ws).await;
        if v["type"] == expected {
            return v;
        }
    }
    panic!("no {expected:?} message in the next 20");
}

async fn admin_post(server: &Running, path: &str, token: &str) -> (u16, String) {
    let auth = format!("Bearer {token}");
    common::http_request(server.http_addr, "POST", path, &[("Authorization", &auth)]).await
}

async fn host_actions(server: &Running, action: &str, via: &str) -> f64 {
    let metrics = common::huiyi_metrics(server).await;
    let series = format!("huiyi_host_actions_total{{action=\"{action}\",via=\"{via}\"}}");
    common::metric_value(&metrics, &series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_controls_need_the_grant_and_every_one_is_told_to_the_room() {
    let server = common::start_server().await;
    let (mut ana, joined) = join(&server, &host_token("class", "ana")).await;
    assert_eq!(joined["host"], true, "{joined}");
    let (mut bob, joined) = join(&server, &common::token("class", "bob")).await;
    assert!(joined.get("host").is_none(), "not a host: {joined}");
    let bob_id = joined["participant"]["id"].as_str().expect("bob's id").to_string();
    let bob_name = joined["participant"]["name"].clone();
    let (mut cy, _) = join(&server, &common::token("class", "cy")).await;

    // Without the grant every control is refused, and the connection stays.
    for refused in [
        json!({"type": "muteParticipant", "participantId": "x"}),
        json!({"type": "muteAll"}),
        json!({"type": "removeParticipant", "participantId": "x"}),
        json!({"type": "endMeeting"}),
    ] {
        send(&mut bob, refused.clone()).await;
        let v = until(&mut bob, "error").await;
        assert_eq!(v["code"], "forbidden", "{refused} -> {v}");
    }
    assert_ping_pong(&mut bob, "refused host controls").await;
    send(&mut ana, json!({"type": "muteParticipant", "participantId": "PA_nobody"})).await;
    assert_eq!(until(&mut ana, "error").await["code"], "not_found");

    // A mute is told to everyone, the muted one too.
    send(&mut ana, json!({"type": "muteParticipant", "participantId": bob_id})).await;
    for ws in [&mut ana, &mut bob, &mut cy] {
        let v = until(ws, "hostAction").await;
        assert_eq!((v["action"].as_str(), v["byName"].as_str()), (Some("mute"), Some("ana")), "{v}");
        assert_eq!(v["participantId"], bob_id.as_str(), "{v}");
        assert_eq!(v["name"], bob_name, "{v}");
    }
    send(&mut ana, json!({"type": "muteAll"})).await;
    for ws in [&mut ana, &mut bob, &mut cy] {
        assert_eq!(until(ws, "hostAction").await["action"], "muteAll");
    }

    // The admin API: a participant's token may not; an admin's may, named in the notice.
    let path = "/v1/rooms/class/participants/cy/mute";
    assert_eq!(admin_post(&server, path, &common::token("class", "bob")).await.0, 403);
    let (status, body) = admin_post(&server, path, &common::admin_token()).await;
    assert_eq!(status, 204, "{body}");
    for ws in [&mut ana, &mut bob, &mut cy] {
        let v = until(ws, "hostAction").await;
        assert_eq!((v["action"].as_str(), v["byName"].as_str()), (Some("mute"), Some("admin")), "{v}");
    }
    let nobody = admin_post(&server, "/v1/rooms/class/participants/zed/mute", &common::admin_token()).await;
    assert_eq!(nobody.0, 404, "{}", nobody.1);
    let (status, body) = admin_post(&server, "/v1/rooms/class/mute", &common::admin_token()).await;
    assert_eq!(status, 204, "{body}");
    for ws in [&mut ana, &mut bob, &mut cy] {
        assert_eq!(until(ws, "hostAction").await["action"], "muteAll");
    }

    // Removed: told, then closed with 4003; the others see it leave as removed.
    send(&mut ana, json!({"type": "removeParticipant", "participantId": bob_id})).await;
    assert_eq!(until(&mut bob, "hostAction").await["action"], "remove");
    assert_eq!(expect_close(&mut bob).await.0, 4003);
    for ws in [&mut ana, &mut cy] {
        let left = until(ws, "participantLeft").await;
        assert_eq!(
            (left["participantId"].as_str(), left["reason"].as_str()),
            (Some(&*bob_id), Some("removed"))
        );
    }

    // Ended: everyone, the host too, is closed with 4004 after being told.
    send(&mut ana, json!({"type": "endMeeting"})).await;
    for ws in [&mut ana, &mut cy] {
        assert_eq!(until(ws, "hostAction").await["action"], "end");
        assert_eq!(expect_close(ws).await.0, 4004);
    }
    // A host's controls are told to the room, so they are limited as talk is.
    let (mut eve, _) = join(&server, &host_token("other", "eve")).await;
    let mut limited = false;
    for _ in 0..11 {
        send(&mut eve, json!({"type": "muteAll"})).await;
        let v = recv(&mut eve).await;
        limited |= v["type"] == "error" && v["code"] == "rate_limited";
    }
    assert!(limited, "eleven mute-alls in a moment are not all taken");
    for (action, via, n) in [
        ("mute", "page", 1.0),
        ("mute", "api", 1.0),
        ("muteAll", "page", 11.0),
        ("remove", "page", 1.0),
        ("end", "page", 1.0),
    ] {
        assert_eq!(host_actions(&server, action, via).await, n, "{action} via {via}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_host_token_names_one_room_and_a_join_with_it_is_a_host() {
    let server = common::start_server_with(|c| c.auth.api_secret = String::new()).await;
    let get = |q: &'static str| common::http_request(server.http_addr, "GET", q, &[]);
    let (status, body) = get("/v1/dev/token?room=*&identity=x&host=1").await;
    assert_eq!(status, 400, "an admin token for every room is not a host's: {body}");
    let (status, body) = get("/v1/dev/token?room=class&identity=ana&host=1").await;
    assert_eq!(status, 200, "{body}");
    let token: Value = serde_json::from_str(&body).expect("JSON");
    let (_ana, joined) = join(&server, token["token"].as_str().expect("a token")).await;
    assert_eq!(joined["host"], true, "{joined}");
}
