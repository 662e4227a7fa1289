//! Junk on the media port: while three webrtc-rs clients hold a meeting, 10,000 random
//! datagrams (some shaped like STUN, RTP, RTCP or DTLS) arrive at the media port from an
//! address no session owns. Media must keep flowing to every client during and after the
//! flood, and `huiyi_dropped_datagrams_total` must account for the junk.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::webrtc_client::{Client, Kind, init_logging, wait_until};
use webrtc::peer_connection::RTCPeerConnectionState;

const TEST_TIMEOUT: Duration = Duration::from_secs(60);
const DATAGRAMS: usize = 10_000;
/// Sent in bursts of this many, one burst every `BURST_PERIOD`: about one second of flood.
const BURST: usize = 100;
const BURST_PERIOD: Duration = Duration::from_millis(10);
/// The kernel may drop some junk when the media socket's buffer is full; the rest must be counted.
const MIN_COUNTED: u64 = 9_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_keeps_flowing_through_a_flood_of_junk_datagrams() {
    init_logging();
    let started = Instant::now();
    match tokio::time::timeout(TEST_TIMEOUT, flood_during_meeting()).await {
        Ok(()) => eprintln!("media flood test passed in {:?}", started.elapsed()),
        Err(_) => panic!("media flood test did not finish within {TEST_TIMEOUT:?}"),
    }
}

async fn flood_during_meeting() {
    let server = common::start_server().await;
    let mut clients = Vec::new();
    for (index, identity) in ["ana", "ben", "cai"].into_iter().enumerate() {
        let mut client = Client::join(&server, "flood", identity, index as u8).await.expect("client joins");
        client.wait_connected(Duration::from_secs(10)).await.expect("media connects");
        client.start_media().await.expect("media starts");
        clients.push(client);
    }
    let pairs = |clients: &[Client]| -> Vec<(usize, usize)> {
        (0..clients.len())
            .flat_map(|rx| (0..clients.len()).filter(move |tx| *tx != rx).map(move |tx| (rx, tx)))
            .collect()
    };
    let all_pairs = pairs(&clients);

    // The meeting is up: everyone gets something from everyone before the flood.
    let flowing = wait_until(Duration::from_secs(15), || {
        all_pairs.iter().all(|&(rx, tx)| {
            Kind::BOTH.iter().all(|&k| clients[rx].received_count(&clients[tx], k, None) >= 20)
        })
    })
    .await;
    assert!(
        flowing,
        "media was not flowing between all clients before the flood: {}",
        counts(&clients, None)
    );

    let before = dropped_datagrams(server.http_addr).await;
    let seed = std::env::var("HUIYI_FLOOD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("flooding {} with {DATAGRAMS} datagrams, seed {seed} (HUIYI_FLOOD_SEED)", server.media_addr);
    let flood_start = Instant::now();
    let (sent, shapes) = flood(server.media_addr, seed).await;
    let flood_end = Instant::now();
    eprintln!("sent {sent} datagrams in {:?}: {shapes:?}", flood_end - flood_start);
    assert_eq!(sent, DATAGRAMS, "the flood socket could not send every datagram");

    // After the flood: a good second of media from everyone to everyone.
    let recovered = wait_until(Duration::from_secs(10), || {
        all_pairs.iter().all(|&(rx, tx)| {
            clients[rx].received_count(&clients[tx], Kind::Audio, Some(flood_end)) >= 50
                && clients[rx].received_count(&clients[tx], Kind::Video, Some(flood_end)) >= 30
        })
    })
    .await;
    let after_flood = counts(&clients, Some(flood_end));
    for client in &mut clients {
        client.stop_media().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut failures = Vec::new();
    if !recovered {
        failures.push(format!("media did not keep flowing after the flood; received since: {after_flood}"));
    }
    let flood_secs = (flood_end - flood_start).as_secs_f64();
    for &(rx, tx) in &all_pairs {
        let (r, t) = (&clients[rx], &clients[tx]);
        for kind in Kind::BOTH {
            let what = format!("{} receiving {}'s {}", r.label(), t.label(), kind.as_str());
            let whole = r.verify_from(t, kind, None, None);
            if !whole.bad.is_empty() {
                failures.push(format!(
                    "{what}: {} packets are not what the sender sent, e.g. {:?}",
                    whole.bad.len(),
                    &whole.bad[..whole.bad.len().min(3)]
                ));
            }
            // During the flood: at least a quarter of the nominal rate.
            let during = r.verify_from(t, kind, Some(flood_start), Some(flood_end)).matching;
            let per_second = match kind {
                Kind::Audio => 50.0,
                Kind::Video => 30.0,
            };
            let want_during = ((per_second * flood_secs / 4.0) as usize).max(3);
            let after = r.verify_from(t, kind, Some(flood_end), None).matching;
            eprintln!("{what}: {} verified in all, {during} during the flood, {after} after", whole.matching);
            if during < want_during {
                failures.push(format!(
                    "{what}: {during} verified packets during the {flood_secs:.2} s flood, want >= {want_during}"
                ));
            }
            if after == 0 {
                failures.push(format!("{what}: nothing verified after the flood"));
            }
        }
    }
    for c in &clients {
        if !c.errors().is_empty() {
            failures.push(format!("{} saw errors: {:?}", c.label(), c.errors()));
        }
        if let Some(closed) = c.closed() {
            failures.push(format!("{}'s signaling socket closed: {closed}", c.label()));
        }
        let states = c.states();
        if states
            .iter()
            .any(|s| matches!(s, RTCPeerConnectionState::Disconnected | RTCPeerConnectionState::Failed))
        {
            failures.push(format!("{}'s peer connection dropped: {states:?}", c.label()));
        }
    }

    // Every junk datagram the server read is counted once as dropped (give the receive
    // thread a moment to get through its socket buffer).
    let mut after = dropped_datagrams(server.http_addr).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while after.0 - before.0 < MIN_COUNTED && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = dropped_datagrams(server.http_addr).await;
    }
    let counted = after.0 - before.0;
    let by_reason: BTreeMap<_, _> = after
        .1
        .iter()
        .map(|(reason, n)| (reason.clone(), n - before.1.get(reason).copied().unwrap_or(0)))
        .collect();
    eprintln!("huiyi_dropped_datagrams_total rose by {counted}: {by_reason:?}");
    if counted < MIN_COUNTED {
        failures.push(format!(
            "huiyi_dropped_datagrams_total rose by {counted} ({by_reason:?}) for {DATAGRAMS} junk datagrams, want >= {MIN_COUNTED}"
        ));
    }
    if counted > DATAGRAMS as u64 {
        failures.push(format!(
            "huiyi_dropped_datagrams_total rose by {counted} ({by_reason:?}), more than the {DATAGRAMS} junk datagrams sent"
        ));
    }

    for client in clients {
        client.close().await;
    }
    assert!(failures.is_empty(), "media flood failures:\n  {}", failures.join("\n  "));
}

/// Per pair and kind, packets received (since `from`), for failure messages.
fn counts(clients: &[Client], from: Option<Instant>) -> String {
    let mut out = Vec::new();
    for r in clients {
        for t in clients.iter().filter(|t| t.participant_id != r.participant_id) {
            for kind in Kind::BOTH {
                let n = r.received_count(t, kind, from);
                out.push(format!("{}<-{} {}: {n}", r.label(), t.label(), kind.as_str()));
            }
        }
    }
    out.join(", ")
}

/// Send the junk from a fresh socket; answer how many went out, and how many of each shape.
async fn flood(target: SocketAddr, seed: u64) -> (usize, BTreeMap<&'static str, usize>) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind the flood socket");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut shapes = BTreeMap::new();
    let mut sent = 0;
    let mut tick = tokio::time::interval(BURST_PERIOD);
    for _ in 0..DATAGRAMS.div_ceil(BURST) {
        tick.tick().await;
        for _ in 0..BURST.min(DATAGRAMS - sent) {
            let (shape, datagram) = junk(&mut rng);
            *shapes.entry(shape).or_insert(0) += 1;
            socket.send_to(&datagram, target).await.expect("send a junk datagram");
            sent += 1;
        }
    }
    (sent, shapes)
}

/// One junk datagram of 1..=1500 bytes: random, or with a STUN, RTP, RTCP or DTLS header.
fn junk(rng: &mut fastrand::Rng) -> (&'static str, Vec<u8>) {
    let len = rng.usize(1..=1500);
    let mut d: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(len).collect();
    let shape = match rng.u8(0..10) {
        0..=2 if len >= 20 => {
            // A binding request (or indication/response) with the magic cookie, a declared
            // length that may lie, and often a USERNAME naming some made-up ufrag.
            d[0] = rng.u8(0..2);
            d[1] = [0x01, 0x11, 0x01][rng.usize(0..3)];
            let body = if rng.bool() { len - 20 } else { rng.usize(0..2000) };
            d[2..4].copy_from_slice(&(body as u16).to_be_bytes());
            d[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
            if len >= 40 && rng.bool() {
                let username = format!("{:08x}:{:04x}", rng.u32(..), rng.u16(..));
                d[20..22].copy_from_slice(&0x0006u16.to_be_bytes());
                d[22..24].copy_from_slice(&(username.len() as u16).to_be_bytes());
                let end = (24 + username.len()).min(len);
                d[24..end].copy_from_slice(&username.as_bytes()[..end - 24]);
            }
            "stun"
        }
        3..=4 if len >= 12 => {
            d[0] = 0x80 | rng.u8(0..0x10);
            d[1] = [96, 111, 96 | 0x80, 111 | 0x80, rng.u8(..)][rng.usize(0..5)];
            "rtp"
        }
        5 if len >= 8 => {
            d[0] = 0x80 | rng.u8(0..0x20);
            d[1] = rng.u8(200..=206);
            "rtcp"
        }
        6 if len >= 13 => {
            d[0] = rng.u8(20..=63);
            d[1..3].copy_from_slice(&[0xfe, 0xfd]);
            "dtls"
        }
        _ => "random",
    };
    (shape, d)
}

/// `huiyi_dropped_datagrams_total` summed over its reasons, and per reason.
async fn dropped_datagrams(http: SocketAddr) -> (u64, BTreeMap<String, u64>) {
    let (status, body) = common::http_request(http, "GET", "/metrics", &[]).await;
    assert_eq!(status, 200, "GET /metrics: {body}");
    let mut by_reason = BTreeMap::new();
    for line in body.lines().filter(|l| l.starts_with("huiyi_dropped_datagrams_total")) {
        let (series, value) = line.rsplit_once(' ').expect("a metric line has a value");
        let value: f64 = value.trim().parse().unwrap_or_else(|_| panic!("unparsable metric line {line:?}"));
        let reason = series
            .split_once("reason=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map_or_else(|| series.to_string(), |(r, _)| r.to_string());
        *by_reason.entry(reason).or_insert(0) += value as u64;
    }
    (by_reason.values().sum(), by_reason)
}
