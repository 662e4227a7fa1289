//! A signaling client for tests of the protocol (docs/protocol.md) without media: one
//! WebSocket, JSON messages, every wait bounded.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use huiyi::Running;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The longest any single wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(5);

/// What the server sent next.
#[derive(Debug)]
pub enum Received {
    Json(Value),
    Binary,
    /// A close frame: code and reason (`None` for a close frame without a payload).
    Close(Option<(u16, String)>),
}

pub async fn connect(server: &Running) -> Ws {
    let url = super::ws_url(server);
    let (ws, _) = tokio::time::timeout(WAIT, connect_async(url.as_str()))
        .await
        .unwrap_or_else(|_| panic!("WebSocket handshake with {url} took over 5 s"))
        .unwrap_or_else(|e| panic!("WebSocket handshake with {url} failed: {e}"));
    ws
}

pub async fn send_text(ws: &mut Ws, text: impl Into<String>) {
    let text: String = text.into();
    tokio::time::timeout(WAIT, ws.send(Message::text(text)))
        .await
        .expect("sending took over 5 s")
        .expect("send a text frame");
}

pub async fn send(ws: &mut Ws, message: Value) {
    send_text(ws, message.to_string()).await;
}

/// The next text, binary or close frame (pings and pongs skipped), within 5 s.
pub async fn next(ws: &mut Ws) -> Received {
    let read = async {
        loop {
            match ws.next().await {
                None => panic!("the connection ended without a close frame"),
                Some(Err(e)) => panic!("the connection failed without a close frame: {e}"),
                Some(Ok(Message::Text(t))) => {
                    let value = serde_json::from_str(t.as_str())
                        .unwrap_or_else(|e| panic!("server sent non-JSON text {:?}: {e}", t.as_str()));
                    return Received::Json(value);
                }
                Some(Ok(Message::Binary(_))) => return Received::Binary,
                Some(Ok(Message::Close(frame))) => {
                    return Received::Close(frame.map(|f| (u16::from(f.code), f.reason.to_string())));
                }
                Some(Ok(_)) => continue,
            }
        }
    };
    tokio::time::timeout(WAIT, read).await.expect("nothing from the server within 5 s")
}

/// The next message, which must be a JSON message (not a close).
pub async fn recv(ws: &mut Ws) -> Value {
    match next(ws).await {
        Received::Json(v) => v,
        other => panic!("expected a JSON message, got {other:?}"),
    }
}

/// The next message, which must have `type` equal to `expected`.
pub async fn recv_type(ws: &mut Ws, expected: &str) -> Value {
    let v = recv(ws).await;
    assert_eq!(v["type"], expected, "expected a {expected:?} message, got {v}");
    v
}

/// Read until a close frame and return its code and reason. Room events
/// (`participantJoined`, `participantLeft`, `hostAction`) that arrive first are skipped; anything else fails.
pub async fn expect_close(ws: &mut Ws) -> (u16, String) {
    loop {
        match next(ws).await {
            Received::Close(Some(frame)) => return frame,
            Received::Close(None) => panic!("close frame without a code"),
            Received::Json(v)
                if ["participantJoined", "participantLeft", "hostAction"]
                    .contains(&v["type"].as_str().unwrap_or("")) =>
            {
                continue;
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// Connect and join with `token`; answers the socket and the `joined` message.
pub async fn join(server: &Running, token: &str) -> (Ws, Value) {
    let mut ws = connect(server).await;
    send(&mut ws, json!({"type": "join", "token": token})).await;
    let joined = recv_type(&mut ws, "joined").await;
    (ws, joined)
}

pub async fn assert_ping_pong(ws: &mut Ws, after: &str) {
    send(ws, json!({"type": "ping"})).await;
    let v = recv(ws).await;
    assert_eq!(v["type"], "pong", "after {after}, ping got {v} instead of pong");
}
