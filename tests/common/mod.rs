//! Shared helpers for tests that run a real Huiyi server in-process on free ports.
#![allow(dead_code)]

use std::net::SocketAddr;

use huiyi::{Config, Running};
use signaling::auth::{self, Claims, Grants};

pub const TEST_SECRET: &str = "test-secret";

/// Start signaling and a media node on 127.0.0.1 with ephemeral ports and `TEST_SECRET`.
pub async fn start_server() -> Running {
    start_server_with(|_| {}).await
}

pub async fn start_server_with(adjust: impl FnOnce(&mut Config)) -> Running {
    let mut config = Config::default();
    config.http = SocketAddr::from(([127, 0, 0, 1], 0));
    config.media.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    config.auth.api_secret = TEST_SECRET.into();
    adjust(&mut config);
    huiyi::start(&config).await.expect("server starts")
}

/// A token for `identity` in `room` that may publish and subscribe, valid for an hour.
pub fn token(room: &str, identity: &str) -> String {
    auth::mint(
        TEST_SECRET.as_bytes(),
        &Claims {
            sub: identity.into(),
            name: Some(identity.to_uppercase()),
            room: room.into(),
            exp: auth::now_unix() + 3600,
            nbf: None,
            grants: Grants { can_publish: true, can_subscribe: true, room_admin: false },
        },
    )
}

pub fn admin_token() -> String {
    auth::mint(
        TEST_SECRET.as_bytes(),
        &Claims {
            sub: "admin".into(),
            name: None,
            room: "*".into(),
            exp: auth::now_unix() + 3600,
            nbf: None,
            grants: Grants { can_publish: false, can_subscribe: false, room_admin: true },
        },
    )
}

pub fn ws_url(server: &Running) -> String {
    format!("ws://{}/v1/rtc", server.http_addr)
}
