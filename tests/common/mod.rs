//! Shared helpers for tests that run a real Huiyi server in-process on free ports.
#![allow(dead_code)]

// A WebRTC client on an independent stack (webrtc-rs); unused items are fine for test
// files that only need the server helpers.
pub mod process;
pub mod signal;
#[allow(dead_code, unused_imports)]
pub mod webrtc_client;

use std::net::SocketAddr;

use huiyi::{Config, Running};
use signaling::auth::{self, Claims, Grants};

pub const TEST_SECRET: &str = "test-secret-of-at-least-thirty-two-bytes";

/// Start signaling and a media node on 127.0.0.1 with ephemeral ports and `TEST_SECRET`.
pub async fn start_server() -> Running {
    start_server_with(|_| {}).await
}

pub async fn start_server_with(adjust: impl FnOnce(&mut Config)) -> Running {
    let mut config = Config { http: SocketAddr::from(([127, 0, 0, 1], 0)), ..Config::default() };
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

/// A token for `identity` in `room` with exactly `grants`, valid for an hour.
pub fn token_with(room: &str, identity: &str, grants: Grants) -> String {
    let claims = Claims {
        sub: identity.into(),
        name: None,
        room: room.into(),
        exp: auth::now_unix() + 3600,
        nbf: None,
        grants,
    };
    auth::mint(TEST_SECRET.as_bytes(), &claims)
}

/// A WHIP publisher's grants: publish, watch nothing.
pub fn publish_grant() -> Grants {
    Grants { can_publish: true, can_subscribe: false, room_admin: false }
}

/// A WHEP player's grants: watch, publish nothing.
pub fn watch_grant() -> Grants {
    Grants { can_publish: false, can_subscribe: true, room_admin: false }
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

/// One HTTP/1.1 request with `Connection: close`; answers the status and the body as text.
/// Bounded by a 5 s timeout so that a server that never answers fails the test instead of hanging it.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the HTTP port");
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.expect("send the HTTP request");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read the HTTP response");
        raw
    };
    let raw = tokio::time::timeout(std::time::Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no complete response within 5 s"));
    parse_http_response(&raw)
        .unwrap_or_else(|| panic!("{method} {path}: unparsable response {:?}", String::from_utf8_lossy(&raw)))
}

/// One HTTP/1.1 request with a body and `Connection: close`: the status, the response's
/// headers (names in lower case) and its body as text. Bounded by 10 s.
pub async fn http_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the HTTP port");
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        stream.write_all(&bytes).await.expect("send the HTTP request");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read the HTTP response");
        raw
    };
    let raw = tokio::time::timeout(std::time::Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no complete response within 10 s"));
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a header block");
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let response_headers: Vec<(String, String)> = head
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let (status, body) = parse_http_response(&raw).unwrap_or_else(|| {
        panic!("{method} {path}: unparsable response {:?}", String::from_utf8_lossy(&raw))
    });
    (status, response_headers, body)
}

/// The value of a response header (`name` in lower case).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

fn parse_http_response(raw: &[u8]) -> Option<(u16, String)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().ok()?);
        }
    }
    let body = if chunked {
        let mut out = Vec::new();
        loop {
            let line_end = body.windows(2).position(|w| w == b"\r\n")?;
            let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            body = &body[line_end + 2..];
            if size == 0 {
                break out;
            }
            out.extend_from_slice(body.get(..size)?);
            body = body.get(size + 2..)?;
        }
    } else if let Some(n) = length {
        body.get(..n)?.to_vec()
    } else {
        body.to_vec()
    };
    Some((status, String::from_utf8(body).ok()?))
}

/// The server's `/metrics` page.
pub async fn huiyi_metrics(server: &Running) -> String {
    let (status, body) = http_request(server.http_addr, "GET", "/metrics", &[]).await;
    assert_eq!(status, 200, "GET /metrics: {body}");
    body
}

/// The value of one series (`name` or `name{labels}`) in Prometheus text.
pub fn metric_value(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}
