//! ICE-TCP's listener against bad input: a zero-length or oversized frame, a first frame
//! that is not a connectivity check, and a check naming no session each close their
//! connection at once, are counted, and leave the node serving. (A browser meeting over
//! ICE-TCP is in tests/browser.rs.)

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A STUN binding request whose USERNAME is `username` (RFC 5389), unsigned.
fn binding_request(username: &str) -> Vec<u8> {
    let mut attr = Vec::new();
    attr.extend_from_slice(&0x0006u16.to_be_bytes());
    attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attr.extend_from_slice(username.as_bytes());
    while attr.len() % 4 != 0 {
        attr.push(0);
    }
    let mut message = Vec::new();
    message.extend_from_slice(&0x0001u16.to_be_bytes());
    message.extend_from_slice(&(attr.len() as u16).to_be_bytes());
    message.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    message.extend_from_slice(&[7; 12]);
    message.extend_from_slice(&attr);
    message
}

fn framed(datagram: &[u8]) -> Vec<u8> {
    let mut frame = (datagram.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(datagram);
    frame
}

/// Send `bytes` on a new connection and expect the node to close it within 5 s.
async fn closed_after(addr: SocketAddr, bytes: &[u8]) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to ICE-TCP");
    stream.write_all(bytes).await.expect("send");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the connection stays open: {read:?}");
}

fn dropped(metrics: &str, reason: &str) -> f64 {
    common::metric_value(metrics, &format!("huiyi_dropped_datagrams_total{{reason=\"{reason}\"}}"))
        .unwrap_or(0.0)
}

#[tokio::test]
async fn bad_frames_close_their_connection_are_counted_and_harm_no_one() {
    let server = common::start_server().await;
    let tcp = server.media_tcp_addr.expect("ICE-TCP is on by default");
    closed_after(tcp, &[0, 0]).await;
    closed_after(tcp, &framed(&[0x80; 100])).await;
    closed_after(tcp, &framed(&binding_request("nosuchufrag:peer"))).await;
    // A length past any datagram's: closed before its body is read.
    closed_after(tcp, &[0xff, 0xff, 1, 2, 3]).await;
    // The last connection's task counts itself out just after closing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = common::huiyi_metrics(&server).await;
    assert_eq!(dropped(&metrics, "tcp_bad_frame"), 2.0, "{metrics}");
    assert_eq!(dropped(&metrics, "unknown_source"), 1.0);
    assert_eq!(dropped(&metrics, "unknown_ufrag"), 1.0);
    assert_eq!(common::metric_value(&metrics, "huiyi_ice_tcp_connections_total"), Some(4.0));
    assert_eq!(common::metric_value(&metrics, "huiyi_ice_tcp_connections"), Some(0.0), "all closed");
    let (status, _) = common::http_request(server.http_addr, "GET", "/healthz", &[]).await;
    assert_eq!(status, 200, "the node serves on");
}
