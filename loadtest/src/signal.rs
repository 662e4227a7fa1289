//! The control side of a virtual client: a token, the signaling WebSocket, and the
//! messages of docs/protocol.md. One small task per client carries its WebSocket;
//! media never passes through here.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use proto::messages::{ClientMessage, ServerMessage};
use proto::token::{Claims, Grants};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::http::{self, Url};

#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("cannot reach {0}: {1}")]
    Unreachable(String, std::io::Error),
    #[error("{0} answered HTTP {1} for a token: {2}")]
    TokenRefused(String, u16, String),
    #[error("WebSocket to {0} failed: {1}")]
    WebSocket(String, String),
    #[error("the server refused the join: {0}")]
    JoinRefused(String),
    /// The media node is at its load budget (error `node_full`): a refusal the server
    /// chose, not a failure.
    #[error("the media node is full: {0}")]
    NodeFull(String),
    #[error("no answer from the server within {0:?}")]
    Timeout(Duration),
    #[error("unexpected reply from the server: {0}")]
    Protocol(String),
}

/// Base URL pieces: `http://host:port`.
#[derive(Debug, Clone)]
pub struct ServerUrl {
    pub host_port: String,
}

impl ServerUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or("the URL must start with http://")?;
        let host_port = rest.trim_end_matches('/').to_string();
        if host_port.is_empty() || host_port.contains('/') {
            return Err(format!("expected http://host:port, got {url}"));
        }
        Ok(Self { host_port })
    }

    pub fn ws(&self) -> String {
        format!("ws://{}/v1/rtc", self.host_port)
    }
}

/// Mint an HS256 token like `huiyi token` does, for servers with a configured secret.
pub fn mint_token(secret: &str, room: &str, identity: &str, ttl: Duration) -> String {
    let claims = Claims {
        sub: identity.into(),
        name: Some(identity.into()),
        room: room.into(),
        exp: proto::token::now_unix() + ttl.as_secs(),
        nbf: None,
        grants: Grants { can_publish: true, can_subscribe: true, room_admin: false },
    };
    proto::token::mint(secret.as_bytes(), &claims)
}

/// A token from the server's development endpoint (servers without a secret).
pub async fn dev_token(url: &ServerUrl, room: &str, identity: &str) -> Result<String, SignalError> {
    let path = format!(
        "/v1/dev/token?room={}&identity={}&name={}",
        http::escape(room),
        http::escape(identity),
        http::escape(identity)
    );
    let (status, body) = http_get(&url.host_port, &path).await?;
    if status != 200 {
        return Err(SignalError::TokenRefused(
            url.host_port.clone(),
            status,
            body.chars().take(200).collect(),
        ));
    }
    let v: Value = serde_json::from_str(&body).map_err(|e| SignalError::Protocol(e.to_string()))?;
    v["token"].as_str().map(str::to_string).ok_or_else(|| SignalError::Protocol("no token in reply".into()))
}

/// A GET on the server; the status and body.
pub async fn http_get(host_port: &str, path: &str) -> Result<(u16, String), SignalError> {
    let url = Url { host_port: host_port.to_string(), target: path.to_string() };
    let reply = http::request("GET", &url, &[], "").await?;
    Ok((reply.status, reply.body))
}

/// What a client's WebSocket task reports to the media engine.
#[derive(Debug)]
pub enum FromServer {
    Message(ServerMessage),
    /// A message of a known type that did not read as the protocol says.
    Unreadable(String),
    /// The socket closed: the close code and reason, if the server sent one.
    Closed(Option<(u16, String)>),
    /// The cameras (by their publishers' serials) a subscription now shows, where the
    /// generator chose them itself (against Janus) instead of sending `subscribe`.
    Showing(Vec<u32>),
}

/// A joined client's signaling connection, not yet reading: start it with [`Connection::run`]
/// once whoever handles its messages knows the client.
pub struct Connection {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    to_server: mpsc::UnboundedSender<ClientMessage>,
    outgoing: mpsc::UnboundedReceiver<ClientMessage>,
}

/// A client's WebSocket settings: a read buffer of 16 KiB rather than tungstenite's 128 KiB,
/// which it zeroes before every read (2% of the generator's CPU at meeting-300, for
/// messages that are mostly far smaller); a larger message takes more reads.
pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(16 * 1024)
}

/// Connect and join; returns the `joined` message and the connection.
pub async fn join(url: &ServerUrl, token: &str) -> Result<(ServerMessage, Connection), SignalError> {
    let ws_url = url.ws();
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async_with_config(&ws_url, Some(ws_config()), false),
    )
    .await
    .map_err(|_| SignalError::Timeout(Duration::from_secs(10)))?
    .map_err(|e| SignalError::WebSocket(ws_url.clone(), e.to_string()))?;
    let join =
        serde_json::to_string(&ClientMessage::Join { token: token.into(), resume: None, new_media: false })
            .map_err(|e| SignalError::Protocol(e.to_string()))?;
    ws.send(Message::Text(join.into()))
        .await
        .map_err(|e| SignalError::WebSocket(ws_url.clone(), e.to_string()))?;
    let joined = loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .map_err(|_| SignalError::Timeout(Duration::from_secs(10)))?;
        match frame {
            Some(Ok(Message::Text(t))) => match read_message(&t) {
                Ok(Some(joined @ ServerMessage::Joined { .. })) => break joined,
                Ok(Some(ServerMessage::Error { code, message })) if code == "node_full" => {
                    return Err(SignalError::NodeFull(message));
                }
                Ok(Some(ServerMessage::Error { code, message })) => {
                    return Err(SignalError::JoinRefused(format!("{code}: {message}")));
                }
                Ok(_) => continue,
                Err(e) => return Err(SignalError::Protocol(e)),
            },
            Some(Ok(Message::Close(frame))) => {
                let why = frame.map(|f| format!("{} {}", u16::from(f.code), f.reason)).unwrap_or_default();
                return Err(SignalError::JoinRefused(why));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(SignalError::WebSocket(ws_url, e.to_string())),
            None => return Err(SignalError::JoinRefused("socket closed".into())),
        }
    };
    let (to_server, outgoing) = mpsc::unbounded_channel::<ClientMessage>();
    Ok((joined, Connection { ws, to_server, outgoing }))
}

impl Connection {
    /// Sends messages to the server (they wait until [`Connection::run`]).
    pub fn sender(&self) -> mpsc::UnboundedSender<ClientMessage> {
        self.to_server.clone()
    }

    /// Carry the connection on a task: queued and later messages go out, every server
    /// message (and the close) goes to `on_message`. Dropping every sender closes it.
    pub fn run(self, on_message: impl Fn(FromServer) + Send + 'static) {
        let Connection { mut ws, to_server, mut outgoing } = self;
        // Only the clones handed out keep the connection open.
        drop(to_server);
        tokio::spawn(async move {
            let close = loop {
                tokio::select! {
                    out = outgoing.recv() => match out {
                        Some(m) => {
                            let Ok(text) = serde_json::to_string(&m) else { continue };
                            if ws.send(Message::Text(text.into())).await.is_err() {
                                break None;
                            }
                        }
                        None => {
                            let _ = ws.close(None).await;
                            break None;
                        }
                    },
                    frame = ws.next() => match frame {
                        Some(Ok(Message::Text(t))) => match read_message(&t) {
                            Ok(Some(m)) => on_message(FromServer::Message(m)),
                            Ok(None) => {}
                            Err(e) => on_message(FromServer::Unreadable(e)),
                        },
                        Some(Ok(Message::Close(f))) => break f.map(|f| (u16::from(f.code), f.reason.to_string())),
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break None,
                    },
                }
            };
            on_message(FromServer::Closed(close));
        });
    }
}

/// A server message; None for a type this generator does not know (a newer server's:
/// not its business), an error for a known type it cannot read (the two sides of the
/// protocol drifted apart, which the report must say).
fn read_message(text: &str) -> Result<Option<ServerMessage>, String> {
    match serde_json::from_str::<ServerMessage>(text) {
        Ok(m) => Ok(Some(m)),
        Err(e) => {
            let value: Option<Value> = serde_json::from_str(text).ok();
            match value.as_ref().and_then(|v| v["type"].as_str()) {
                Some(t) if !ServerMessage::TYPES.contains(&t) => Ok(None),
                _ => Err(format!(
                    "unreadable server message ({e}): {}",
                    text.chars().take(200).collect::<String>()
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_types_are_skipped_and_known_ones_that_do_not_read_are_errors() {
        assert!(matches!(read_message(r#"{"type":"pong"}"#), Ok(Some(ServerMessage::Pong))));
        assert_eq!(read_message(r#"{"type":"somethingNew","text":"hi"}"#), Ok(None));
        assert!(read_message(r#"{"type":"answer","sdp":7}"#).is_err());
        assert!(read_message("not json").is_err());
    }
}
