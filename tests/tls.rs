//! HTTPS and WSS on the signaling port with a self-signed certificate (`--tls-self-signed`):
//! a client that trusts exactly the printed fingerprint gets a page and joins a room over
//! WSS; a plain-HTTP client and one that never finishes its handshake are counted and cost
//! nobody else anything. (The browser side is in tests/browser.rs.)

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use huiyi::Running;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;

/// Trusts the one certificate whose SHA-256 the server printed, as a person comparing the
/// browser's warning with the start-up message does.
#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if huiyi::tls::fingerprint(end_entity) == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the pinned certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

async fn start() -> Running {
    common::start_server_with(|c| {
        c.tls.self_signed = true;
        c.admin_http = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.limits.header_read_timeout_secs = 1;
    })
    .await
}

async fn connect(server: &Running) -> TlsStream<tokio::net::TcpStream> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let fingerprint = server.tls.as_ref().expect("the server serves TLS").fingerprint.clone();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { fingerprint, provider }))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(server.http_addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("handshake in time")
    .expect("handshake with the pinned certificate")
}

async fn failures(server: &Running, reason: &str) -> f64 {
    let admin = server.admin_addr.expect("admin listener");
    let (status, body) = common::http_request(admin, "GET", "/metrics", &[]).await;
    assert_eq!(status, 200, "{body}");
    common::metric_value(&body, &format!("huiyi_tls_handshake_failures_total{{reason=\"{reason}\"}}"))
        .unwrap_or(0.0)
}

async fn get_page(server: &Running) -> String {
    let mut tls = connect(server).await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.expect("send");
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut raw))
        .await
        .expect("answer in time");
    String::from_utf8_lossy(&raw).into_owned()
}

#[tokio::test]
async fn the_page_and_a_join_go_over_tls_with_the_printed_certificate() {
    let server = start().await;
    let tls = server.tls.as_ref().expect("tls");
    assert!(tls.describe().contains(&tls.fingerprint), "{}", tls.describe());
    let page = get_page(&server).await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page:.200}");
    assert!(
        page.contains("<html") || page.contains("<!DOCTYPE") || page.contains("<!doctype"),
        "{page:.400}"
    );

    // WSS: the same join as over ws://.
    let stream = connect(&server).await;
    let url = format!("wss://localhost:{}/v1/rtc", server.http_addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.expect("WebSocket over TLS");
    let join = serde_json::json!({"type": "join", "token": common::token("tls-room", "ana")});
    ws.send(Message::text(join.to_string())).await.expect("send join");
    let joined = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Text(text) = message {
                let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
                if v["type"] == "joined" {
                    return v;
                }
            }
        }
        panic!("the socket closed before `joined`");
    })
    .await
    .expect("joined in time");
    assert_eq!(joined["room"], "tls-room", "{joined}");
}

#[tokio::test]
async fn plain_http_and_stalled_handshakes_are_counted_and_harm_no_one() {
    let server = start().await;
    // Plain HTTP on the TLS port: no answer a browser could take for a page, a count.
    let before = failures(&server, "handshake").await;
    let mut plain = tokio::net::TcpStream::connect(server.http_addr).await.expect("connect");
    plain.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("send");
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut raw))
        .await
        .expect("closed in time");
    assert!(!String::from_utf8_lossy(&raw).contains("HTTP/1.1 200"), "plain HTTP served on the TLS port");
    assert_eq!(failures(&server, "handshake").await, before + 1.0);

    // A client that connects and says nothing is let go after the header timeout (1 s).
    let mut silent = tokio::net::TcpStream::connect(server.http_addr).await.expect("connect");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "a silent connection is closed: {read:?}");
    assert_eq!(failures(&server, "timeout").await, 1.0);

    // Everyone else is served as before.
    assert!(get_page(&server).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_stalled_handshake_is_shed_for_a_newcomer_on_a_full_server() {
    let server = common::start_server_with(|c| {
        c.tls.self_signed = true;
        c.admin_http = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.limits.max_connections = 2;
        c.limits.header_read_timeout_secs = 30;
    })
    .await;
    // Two connections that never start their handshake fill the server.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(tokio::net::TcpStream::connect(server.http_addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A newcomer is served: the oldest stalled one makes room, and its socket closes now,
    // not when the 30 s handshake timeout would end it.
    assert!(get_page(&server).await.starts_with("HTTP/1.1 200"), "the newcomer is served");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), stalled[0].read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the shed connection is closed at once: {read:?}");
}
