//! The attacks that took a deployment down (issue 9), each tried against a real `huiyi`
//! process on loopback, bounded in time and count, with what a user needs checked: the
//! server's memory stays bounded, `/healthz` answers, another room's joins stay fast, the
//! public development secret is refused where strangers can reach it, and a participant
//! who reconnects to a full room gets back in.
//!
//! `HUIYI_BIN=/path/to/huiyi cargo nextest run --test attacks` tries them against another
//! build (the tests fail on 9b25ca5, before these defences).

mod common;

use std::time::{Duration, Instant};

use common::process::{Huiyi, Options, refused_start};
use common::{TEST_SECRET, metric_value, token};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(server: &Huiyi) -> Ws {
    tokio_tungstenite::connect_async(server.ws_url()).await.expect("WebSocket connect").0
}

/// Join and wait for `joined`; the time it took.
async fn join(server: &Huiyi, room: &str, identity: &str) -> (Ws, Duration) {
    let started = Instant::now();
    let mut ws = connect(server).await;
    let join = json!({"type": "join", "token": token(room, identity)}).to_string();
    ws.send(Message::Text(join.into())).await.expect("send join");
    loop {
        let frame =
            tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("an answer in time");
        match frame {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).expect("JSON");
                assert_eq!(v["type"], "joined", "{identity} in {room}: {v}");
                return (ws, started.elapsed());
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("{identity} in {room}: expected joined, got {other:?}"),
        }
    }
}

fn secret() -> Options<'static> {
    Options { secret: Some(TEST_SECRET), ..Options::default() }
}

/// Attack 1: sockets that never join and never read, each sending megabyte messages with
/// an unknown type made of control characters (whose quoted echo was 7 times larger).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_never_join_cost_little_memory_and_are_closed_at_the_join_deadline() {
    const SOCKETS: usize = 40;
    let server = Huiyi::start(&secret());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss_mib();
    // Each control character is six bytes of JSON (\u0001): a message of about 1 MiB.
    let big_type: String = "\u{1}".repeat(170 * 1024);
    let message = json!({"type": big_type}).to_string();
    let mut attackers = Vec::new();
    for _ in 0..SOCKETS {
        let mut ws = connect(&server).await;
        let message = message.clone();
        attackers.push(tokio::spawn(async move {
            // Never reads; each send blocks once the server stops taking input.
            for _ in 0..20 {
                if ws.send(Message::Text(message.clone().into())).await.is_err() {
                    break;
                }
            }
            ws
        }));
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = server.rss_mib();
    let growth = during - before;
    // Before the fix: 13-15 MiB per socket (40 sockets: over 500 MiB).
    assert!(
        growth < 64.0,
        "{SOCKETS} idle attackers grew the server by {growth:.0} MiB ({before:.0} -> {during:.0})"
    );
    let (status, body) = common::http_request(server.http, "GET", "/healthz", &[]).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    // The join deadline (10 s from the handshake) closes every one of them.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let metrics = server.metrics().await;
        let open = metric_value(&metrics, "huiyi_signaling_connections").unwrap_or(-1.0);
        let timeouts = metric_value(&metrics, "huiyi_signaling_join_timeouts_total").unwrap_or(0.0);
        if open == 0.0 && timeouts >= SOCKETS as f64 {
            break;
        }
        assert!(Instant::now() < deadline, "still open: {open} connections, {timeouts} join timeouts");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for a in attackers {
        a.abort();
    }
}

/// Whether the server has neither answered nor closed `stream` (what it sent is read
/// and dropped).
fn still_open(stream: &tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match stream.try_read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) => return e.kind() == std::io::ErrorKind::WouldBlock,
        }
    }
}

/// Holds `count` connections to `addr` that each sent `opening` and nothing more,
/// opening a new one whenever the server closes one.
fn hold_connections(
    addr: std::net::SocketAddr,
    count: usize,
    opening: &'static [u8],
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            held.retain(still_open);
            while held.len() < count {
                let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { break };
                let _ = s.write_all(opening).await;
                held.push(s);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
}

/// Asks `/healthz` every 200 ms for `how_long`; each answer must come within a second.
async fn healthz_keeps_answering(addr: std::net::SocketAddr, how_long: Duration) -> Duration {
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    while started.elapsed() < how_long {
        let asked = Instant::now();
        let answer =
            tokio::time::timeout(Duration::from_secs(1), common::http_request(addr, "GET", "/healthz", &[]))
                .await
                .unwrap_or_else(|_| {
                    panic!("/healthz gave no answer within 1 s, {:?} into the attack", started.elapsed())
                });
        assert_eq!(answer, (200, "ok".to_string()));
        worst = worst.max(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    worst
}

fn shed_count(metrics: &str) -> f64 {
    metric_value(metrics, "huiyi_http_connections_refused_total{limit=\"shed_waiting\"}").unwrap_or(0.0)
}

/// Waits (up to 20 s) until the attack has filled the server: it sheds connections.
async fn until_full(server: &Huiyi) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while shed_count(&server.metrics().await) == 0.0 {
        assert!(Instant::now() < deadline, "the attack never filled the server");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Attack 2: slowloris. 1,100 connections that send part of a request's headers and
/// hold, re-opened whenever the server closes them, against a process limited to 1,024
/// open files; `/healthz` must answer within a second throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_requests_do_not_starve_healthz() {
    huiyi::raise_open_file_limit().expect("raise this test's own open-file limit");
    let server = Huiyi::start(&Options { open_files: Some(1024), ..secret() });
    let attack = hold_connections(server.http, 1_100, b"GET /healthz HTTP/1.1\r\nHost: huiyi\r\nX-Slow: ");
    until_full(&server).await;
    let worst = healthz_keeps_answering(server.http, Duration::from_secs(8)).await;
    attack.abort();
    eprintln!("slowest /healthz under attack: {worst:?}");
}

/// The same with WebSocket handshakes that never join: until it joins, a socket is as
/// sheddable as a half-open request, so /healthz and a real participant still get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_websockets_do_not_starve_healthz_or_joins() {
    huiyi::raise_open_file_limit().expect("raise this test's own open-file limit");
    let server = Huiyi::start(&Options { open_files: Some(1024), ..secret() });
    let handshake: &'static [u8] = b"GET /v1/rtc HTTP/1.1\r\nHost: huiyi\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let attack = hold_connections(server.http, 1_100, handshake);
    until_full(&server).await;
    let worst = healthz_keeps_answering(server.http, Duration::from_secs(3)).await;
    let (_ws, took) = join(&server, "real", "participant").await;
    assert!(took < Duration::from_secs(1), "a real join took {took:?}");
    attack.abort();
    eprintln!("slowest /healthz under attack: {worst:?}; a join took {took:?}");
}

/// A browser-like offer with `mlines` audio m-lines, padded to about `bytes`.
fn offer(mlines: usize, bytes: usize) -> String {
    let mut sdp = String::from(
        "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=extmap-allow-mixed\r\n\
         a=msid-semantic: WMS\r\n",
    );
    sdp.push_str(&format!(
        "a=group:BUNDLE {}\r\n",
        (0..mlines).map(|i| i.to_string()).collect::<Vec<_>>().join(" ")
    ));
    for i in 0..mlines {
        sdp.push_str(&format!(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
             a=ice-ufrag:attk\r\na=ice-pwd:attackerattackerattacker\r\na=ice-options:trickle\r\n\
             a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
             a=setup:actpass\r\na=mid:{i}\r\na=sendonly\r\na=msid:- t{i}\r\na=rtcp-mux\r\n\
             a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\na=ssrc:{} cname:attacker\r\n",
            1000 + i
        ));
    }
    while sdp.len() < bytes {
        sdp.push_str(
            "a=x-padding:0123456789012345678901234567890123456789012345678901234567890123456789\r\n",
        );
    }
    sdp
}

/// Attack 3: two participants re-sending large offers every 50 ms for 6 s; a room on the
/// same media thread must keep joining in well under a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offer_floods_do_not_stall_another_room_on_the_same_media_thread() {
    let server = Huiyi::start(&secret());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = server.rss_mib();
    let payloads = [offer(4, 900 * 1024), offer(250, 300 * 1024)];
    let mut attackers = Vec::new();
    for (i, sdp) in payloads.into_iter().enumerate() {
        let (mut ws, _) = join(&server, "flooded", &format!("attacker{i}")).await;
        attackers.push(tokio::spawn(async move {
            let message = json!({"type": "offer", "sdp": sdp, "tracks": []}).to_string();
            let until = Instant::now() + Duration::from_secs(6);
            while Instant::now() < until {
                // Never reads what the server answers.
                if ws.send(Message::Text(message.clone().into())).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            ws
        }));
    }
    let mut worst = Duration::ZERO;
    let mut joins = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        let (mut ws, took) = join(&server, "quiet", &format!("bystander{joins}")).await;
        worst = worst.max(took);
        joins += 1;
        let _ = ws.send(Message::Text(json!({"type": "leave"}).to_string().into())).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for a in attackers {
        let _ = a.await;
    }
    let growth = server.rss_mib() - before;
    let metrics = server.metrics().await;
    let refused = |kind: &str| {
        metric_value(&metrics, &format!("huiyi_bad_signaling_input_total{{kind=\"{kind}\"}}")).unwrap_or(0.0)
    };
    eprintln!(
        "{joins} joins in another room, slowest {worst:?}; RSS +{growth:.0} MiB; refused: size {}, busy {}, rate {}",
        refused("sdp_size"),
        refused("negotiation_busy"),
        refused("negotiation_rate")
    );
    // Before the fix: 58.7 s.
    assert!(worst < Duration::from_secs(1), "a join in another room took {worst:?}");
    assert!(growth < 100.0, "the flood grew the server by {growth:.0} MiB");
    assert!(refused("sdp_size") > 0.0, "the 0.9 MiB offers are refused by size");
    assert!(refused("negotiation_rate") + refused("negotiation_busy") > 0.0, "the rest are rate-limited");
}

/// Attack 4: without a secret the server signs with the public development secret; it
/// must refuse to start on an address strangers can reach, or with a guessable secret.
#[test]
fn the_public_dev_secret_is_refused_off_loopback() {
    let (started, text) = refused_start(&Options { args: &["--http", "0.0.0.0:0"], ..Options::default() });
    assert!(!started, "huiyi started on 0.0.0.0 with the dev secret: {text}");
    assert!(text.contains("HUIYI_API_SECRET"), "the refusal says what to do: {text}");
    let (started, text) = refused_start(&Options {
        args: &["--http", "0.0.0.0:0"],
        secret: Some("short"),
        ..Options::default()
    });
    assert!(!started, "huiyi started with a 5-byte secret: {text}");
    assert!(text.contains("32"), "{text}");
}

/// On loopback (the laptop default) the dev endpoint still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_token_endpoint_answers_on_loopback_without_a_secret() {
    let server = Huiyi::start(&Options::default());
    let (status, body) =
        common::http_request(server.http, "GET", "/v1/dev/token?room=r&identity=i", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("token"));
    let server = Huiyi::start(&secret());
    let (status, _) = common::http_request(server.http, "GET", "/v1/dev/token?room=r&identity=i", &[]).await;
    assert_eq!(status, 404, "with a secret configured the dev endpoint is off");
}

/// Attack 5 (a user's bad day rather than an attacker's): a participant whose connection
/// dropped rejoins a full room; the new connection replaces the old one and is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_into_a_full_room_is_admitted() {
    let server = Huiyi::start(&Options { config: "[media]\nmax_participants_per_room = 2\n", ..secret() });
    let (_bo, _) = join(&server, "full", "bo").await;
    let (mut previous, _) = join(&server, "full", "ana").await;
    for attempt in 0..5 {
        let (current, _) = join(&server, "full", "ana").await;
        // The replaced connection is told why.
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(5), previous.next()).await.expect("closed in time")
            {
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(_)) => continue,
                other => panic!("attempt {attempt}: expected a close, got {other:?}"),
            }
        };
        assert_eq!(closed.map(|f| u16::from(f.code)), Some(4005), "attempt {attempt}");
        previous = current;
    }
    // The room is still full for a stranger.
    let mut ws = connect(&server).await;
    ws.send(Message::Text(json!({"type": "join", "token": token("full", "cy")}).to_string().into()))
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("answered") {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 4007),
        other => panic!("a third participant should be refused with 4007: {other:?}"),
    }
}
