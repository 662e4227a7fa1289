//! The WebSocket handshake, done here rather than by axum so that the connection's
//! input can be metered: until a participant has joined, the server reads at most
//! [`PRE_JOIN_INPUT`] bytes from it (a join message is well under 1 KiB); what the client
//! sends beyond that waits in its own socket until the join is accepted or the join
//! deadline closes the connection. Axum's extractor fixes the message limit at the
//! handshake, so a stranger could make the server buffer megabytes before sending a
//! join.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::http::Admitted;

/// Bytes read from a connection before its join is accepted: one join message (a token
/// of a few hundred bytes) with room to spare, and frame headers.
pub const PRE_JOIN_INPUT: usize = 8 * 1024;

const UNLIMITED: usize = usize::MAX;

/// The server's end of a signaling WebSocket.
pub type Socket = WebSocketStream<Metered<TokioIo<Upgraded>>>;

/// Lifts the input limit of one connection once its participant has joined.
#[derive(Clone)]
pub struct InputLimit(Arc<AtomicUsize>);

impl InputLimit {
    pub fn lift(&self) {
        self.0.store(UNLIMITED, Ordering::Relaxed);
    }
}

/// A stream that reads no more than its budget. With the budget spent, a read waits
/// (the caller's deadline ends it) rather than failing, so a client that sends its first
/// offer right behind its join loses nothing.
pub struct Metered<S> {
    inner: S,
    budget: Arc<AtomicUsize>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let budget = self.budget.load(Ordering::Relaxed);
        if budget == UNLIMITED {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        if budget == 0 {
            // Lifting the limit happens on the task that reads, which reads again after;
            // nothing else needs waking.
            return Poll::Pending;
        }
        let room = budget.min(buf.remaining());
        let mut limited = buf.take(room);
        let result = Pin::new(&mut self.inner).poll_read(cx, &mut limited);
        let read = limited.filled().len();
        // SAFETY: `limited` views `buf`'s unfilled part; the inner reader initialized and
        // filled its first `read` bytes.
        unsafe { buf.assume_init(read) };
        buf.advance(read);
        if read > 0 {
            // Only this task reads, so a plain store cannot race a decrement; `lift` may
            // race it, and wins below.
            let _ = self.budget.compare_exchange(budget, budget - read, Ordering::Relaxed, Ordering::Relaxed);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Answer a WebSocket handshake, then run `serve` on the socket. Requests that are not
/// a version-13 WebSocket upgrade get `400` (or `426` for another version).
pub fn accept<F, Fut>(mut request: Request, config: WebSocketConfig, serve: F) -> Response
where
    F: FnOnce(Socket, InputLimit, Option<Admitted>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let key = match handshake_key(request.method(), request.headers()) {
        Ok(key) => key,
        Err(refusal) => return refusal.into_response(),
    };
    // The connection's place under the listener's limits goes with the WebSocket.
    let admitted = request.extensions().get::<Admitted>().cloned();
    let Some(on_upgrade) = request.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return (StatusCode::BAD_REQUEST, "this connection cannot be upgraded").into_response();
    };
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade failed");
                return;
            }
        };
        let budget = Arc::new(AtomicUsize::new(PRE_JOIN_INPUT));
        let stream = Metered { inner: TokioIo::new(upgraded), budget: budget.clone() };
        let socket = WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await;
        serve(socket, InputLimit(budget), admitted).await;
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, key);
    response
}

/// Why a request is not a WebSocket handshake we take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BadHandshake {
    NotUpgrade,
    Version,
    Key,
}

impl IntoResponse for BadHandshake {
    fn into_response(self) -> Response {
        match self {
            BadHandshake::NotUpgrade => {
                (StatusCode::BAD_REQUEST, "expected a WebSocket upgrade (GET, Upgrade: websocket)")
                    .into_response()
            }
            BadHandshake::Version => {
                let mut refusal = (StatusCode::UPGRADE_REQUIRED, "WebSocket version 13 only").into_response();
                refusal.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
                refusal
            }
            BadHandshake::Key => {
                (StatusCode::BAD_REQUEST, "missing or bad Sec-WebSocket-Key").into_response()
            }
        }
    }
}

/// The `Sec-WebSocket-Accept` value for a valid upgrade request.
fn handshake_key(method: &Method, headers: &HeaderMap) -> Result<HeaderValue, BadHandshake> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|part| part.trim().eq_ignore_ascii_case(token)))
    };
    if method != Method::GET
        || !has_token(header::UPGRADE, "websocket")
        || !has_token(header::CONNECTION, "upgrade")
    {
        return Err(BadHandshake::NotUpgrade);
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err(BadHandshake::Version);
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY).ok_or(BadHandshake::Key)?;
    HeaderValue::from_str(&derive_accept_key(key.as_bytes())).map_err(|_| BadHandshake::Key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn reads_stop_at_the_budget_until_lifted() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let budget = Arc::new(AtomicUsize::new(10));
        let mut metered = Metered { inner: server, budget: budget.clone() };
        tokio::io::AsyncWriteExt::write_all(&mut client, &[7u8; 100]).await.unwrap();
        let mut buf = [0u8; 100];
        let n = metered.read(&mut buf).await.unwrap();
        assert_eq!(n, 10);
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), metered.read(&mut buf)).await;
        assert!(waited.is_err(), "a spent budget reads nothing");
        InputLimit(budget).lift();
        let n = metered.read(&mut buf).await.unwrap();
        assert_eq!(n, 90, "after the join the rest is read");
    }

    #[test]
    fn handshake_needs_a_websocket_upgrade_of_version_13() {
        let mut headers = HeaderMap::new();
        headers.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        headers.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="));
        headers.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        // RFC 6455 section 1.3's example key and answer.
        assert_eq!(handshake_key(&Method::GET, &headers).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(handshake_key(&Method::POST, &headers), Err(BadHandshake::NotUpgrade));
        headers.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(handshake_key(&Method::GET, &headers), Err(BadHandshake::Version));
        assert_eq!(BadHandshake::Version.into_response().status(), StatusCode::UPGRADE_REQUIRED);
    }
}
