//! The broadcast tier (ADR 0012) as separate processes: an origin that holds the teacher's
//! WHIP session, edges linked to it over QUIC that play the class to WHEP viewers, the
//! origin sending viewers on to an edge with `307`, an edge letting go of a room nobody
//! watches, and a node that cannot prove the cluster secret kept out.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::process::{Huiyi, Options};
use common::webrtc_client::{Client, Kind, init_logging, parse_marker, vp8_is_keyframe, wait_until};
use common::{TEST_SECRET, header, http_exchange, publish_grant, token_with, watch_grant};

const TEST_TIMEOUT: Duration = Duration::from_secs(90);

fn origin(config: &str) -> Huiyi {
    let args = ["--role", "origin", "--relay-listen", "127.0.0.1:0", "--node-name", "origin"];
    let origin =
        Huiyi::start(&Options { args: &args, secret: Some(TEST_SECRET), config, ..Default::default() });
    assert!(origin.relay.is_some(), "an origin prints its relay address");
    origin
}

fn edge(origin: &Huiyi, name: &str, secret: &str, config: &str) -> Huiyi {
    let parent = origin.relay.expect("a relay address").to_string();
    let args = ["--role", "edge", "--origin", parent.as_str(), "--node-name", name];
    Huiyi::start(&Options { args: &args, secret: Some(secret), config, ..Default::default() })
}

/// A value of the metric `name` (with its labels as printed) on a process, 0 when absent.
async fn metric(process: &Huiyi, name: &str) -> f64 {
    let text = process.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn wait_metric(process: &Huiyi, name: &str, wanted: impl Fn(f64) -> bool, timeout: Duration) -> f64 {
    let deadline = Instant::now() + timeout;
    loop {
        let v = metric(process, name).await;
        if wanted(v) || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the origin's admin API reports `n` viewers of the class within 5 s.
async fn wait_viewers(origin: &Huiyi, n: u64) -> bool {
    let admin = format!("Bearer {}", common::admin_token());
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let (status, _, body) =
            http_exchange(origin.http, "GET", "/v1/rooms", &[("Authorization", &admin)], b"").await;
        if status == 200 && body.contains(&format!("\"viewers\":{n}")) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Packets from the teacher (index 0) a viewer got, of one kind.
fn from_teacher(teacher: &Client, viewer: &Client, kind: Kind) -> usize {
    viewer
        .remote_tracks()
        .iter()
        .filter(|t| t.kind == Some(kind))
        .flat_map(|t| t.packets.iter())
        .filter(|p| parse_marker(teacher.video, kind, &p.payload).is_some_and(|(s, _)| s == teacher.index))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_reaches_viewers_through_an_origin_and_an_edge() {
    init_logging();
    tokio::time::timeout(TEST_TIMEOUT, through_an_edge()).await.expect("finishes in time");
}

async fn through_an_edge() {
    let origin = origin("");
    let edge = edge(&origin, "edge-a", TEST_SECRET, "[relay]\nlinger_secs = 2\n");
    assert_eq!(
        wait_metric(&edge, "huiyi_relay_links{to=\"parent\"}", |v| v == 1.0, Duration::from_secs(10)).await,
        1.0,
        "the edge links to its origin"
    );
    let viewer_token = token_with("class", "students", watch_grant());
    let teacher_token = token_with("class", "teacher", publish_grant());

    // An edge takes no publisher, and has nothing to play before the class starts.
    let bearer = format!("Bearer {teacher_token}");
    let sdp_headers = [("Authorization", bearer.as_str()), ("Content-Type", "application/sdp")];
    let (status, _, body) = http_exchange(edge.http, "POST", "/whip/class", &sdp_headers, b"v=0\r\n").await;
    assert_eq!(status, 403, "WHIP on an edge: {body}");
    let viewer_bearer = format!("Bearer {viewer_token}");
    let watch_headers = [("Authorization", viewer_bearer.as_str()), ("Content-Type", "application/sdp")];
    let (status, headers, _) =
        http_exchange(edge.http, "POST", "/whep/class", &watch_headers, b"v=0\r\n").await;
    assert_eq!(status, 409, "nothing live yet");
    assert_eq!(header(&headers, "retry-after"), Some("5"));

    let (mut teacher, _) = Client::publish_whip(origin.http, "class", "teacher", 0, &teacher_token)
        .await
        .expect("WHIP to the origin");
    teacher.wait_connected(Duration::from_secs(10)).await.expect("the teacher connects");
    teacher.start_media().await.expect("the teacher sends");

    // Viewers ask the origin, which sends them on to its edge.
    let mut viewers = Vec::new();
    for i in 0..3u8 {
        let asked = Instant::now();
        let (viewer, location) =
            Client::play_whep(origin.http, "class", &format!("v{i}"), 10 + i, &viewer_token)
                .await
                .unwrap_or_else(|e| panic!("viewer {i}: {e:#}"));
        let on_edge = format!("http://{}/whep/class/PA_", edge.http);
        assert!(location.starts_with(&on_edge), "viewer {i} plays on the edge: {location}");
        viewer.wait_connected(Duration::from_secs(10)).await.expect("the viewer connects to the edge");
        println!("{}: connected {:?} after its WHEP POST", viewer.label(), asked.elapsed());
        viewers.push((viewer, asked));
    }
    for (viewer, asked) in &viewers {
        let flowed = wait_until(Duration::from_secs(15), || {
            from_teacher(&teacher, viewer, Kind::Audio) >= 25
                && from_teacher(&teacher, viewer, Kind::Video) >= 10
        })
        .await;
        assert!(
            flowed,
            "{} got {} audio and {} video packets of the teacher through the edge",
            viewer.label(),
            from_teacher(&teacher, viewer, Kind::Audio),
            from_teacher(&teacher, viewer, Kind::Video)
        );
        let video = viewer.video_packets();
        // The edge starts every viewer at a keyframe: the first from the one it asked for,
        // the others from its cache.
        let first_keyframe = video.iter().position(|p| vp8_is_keyframe(&p.payload));
        assert_eq!(
            first_keyframe,
            Some(0),
            "{}: the first video packet starts a keyframe; the first came {:?}",
            viewer.label(),
            video.iter().take(6).map(|p| (p.seq, vp8_is_keyframe(&p.payload))).collect::<Vec<_>>()
        );
        let first_frame = video.iter().map(|p| p.at).min().expect("video").duration_since(*asked);
        println!("{}: first video packet {first_frame:?} after its WHEP POST", viewer.label());
    }
    assert_eq!(metric(&origin, "huiyi_whep_redirects_total").await, 3.0, "three viewers sent on");
    assert!(metric(&edge, "huiyi_relay_packets_total{direction=\"in\"}").await > 0.0);
    assert_eq!(metric(&origin, "huiyi_relay_rooms{direction=\"out\"}").await, 1.0, "one room on the link");
    // The origin counts the viewers its edge reports.
    assert!(wait_viewers(&origin, 3).await, "the origin counts the edge's three viewers");

    // Viewers after the first start from the edge's cached keyframe, not a new one.
    assert!(
        metric(&edge, "huiyi_keyframe_cache_total{result=\"hit\"}").await >= 2.0,
        "cache hits on the edge"
    );
    // Everyone leaves: the edge lets go of the room after its linger (2 s here).
    for (viewer, _) in viewers {
        viewer.close().await;
    }
    let left =
        wait_metric(&origin, "huiyi_relay_rooms{direction=\"out\"}", |v| v == 0.0, Duration::from_secs(30))
            .await;
    assert_eq!(left, 0.0, "the edge unsubscribed from the room nobody watches");
    assert_eq!(metric(&edge, "huiyi_relay_rooms{direction=\"in\"}").await, 0.0);
    teacher.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_cluster_secret_is_kept_out() {
    init_logging();
    let origin = origin("");
    let stranger = edge(&origin, "stranger", "another-secret-that-is-long-enough-0123456789", "");
    let refused = wait_metric(
        &origin,
        "huiyi_relay_refused_total{reason=\"bad_proof\"}",
        |v| v >= 1.0,
        Duration::from_secs(10),
    )
    .await;
    assert!(refused >= 1.0, "the origin refused a wrong proof");
    assert_eq!(metric(&stranger, "huiyi_relay_links{to=\"parent\"}").await, 0.0);
    assert_eq!(metric(&origin, "huiyi_relay_links{to=\"child\"}").await, 0.0);
    let _: SocketAddr = stranger.http;
}

/// Random loss on loopback UDP to and from one port, with nftables, in a table of its own
/// that is deleted when this is dropped.
struct Loss {
    table: String,
}

impl Loss {
    fn on_port(port: u16, percent: u32) -> Loss {
        let table = format!("huiyi_loss_{}_{port}", std::process::id());
        let rules = format!(
            "table inet {table} {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n  \
             oifname \"lo\" udp sport {port} numgen random mod 100 < {percent} drop\n  \
             oifname \"lo\" udp dport {port} numgen random mod 100 < {percent} drop\n }}\n}}\n"
        );
        let nft = ["/usr/sbin/nft", "nft"]
            .into_iter()
            .find(|p| std::process::Command::new(p).arg("--version").output().is_ok());
        let nft = nft.expect("nftables: scripts/test installs it (apt-get install nftables)");
        let mut child = std::process::Command::new(nft)
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("nft runs");
        use std::io::Write;
        child.stdin.take().expect("stdin").write_all(rules.as_bytes()).expect("rules");
        assert!(child.wait().expect("nft").success(), "nft took the rules (needs root)");
        Loss { table }
    }
}

impl Drop for Loss {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nft").args(["delete", "table", "inet", &self.table]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_percent_loss_on_the_relay_link_is_repaired() {
    init_logging();
    tokio::time::timeout(TEST_TIMEOUT, through_a_lossy_link()).await.expect("finishes in time");
}

async fn through_a_lossy_link() {
    let origin = origin("");
    let edge = edge(&origin, "edge-lossy", TEST_SECRET, "");
    assert_eq!(
        wait_metric(&edge, "huiyi_relay_links{to=\"parent\"}", |v| v == 1.0, Duration::from_secs(10)).await,
        1.0
    );
    let _loss = Loss::on_port(origin.relay.expect("relay").port(), 5);
    let teacher_token = token_with("lossy", "teacher", publish_grant());
    let (mut teacher, _) = Client::publish_whip(origin.http, "lossy", "teacher", 0, &teacher_token)
        .await
        .expect("WHIP to the origin");
    teacher.wait_connected(Duration::from_secs(10)).await.expect("the teacher connects");
    teacher.start_media().await.expect("the teacher sends");
    let viewer_token = token_with("lossy", "students", watch_grant());
    let (viewer, _) =
        Client::play_whep(edge.http, "lossy", "v", 10, &viewer_token).await.expect("a viewer on the edge");
    viewer.wait_connected(Duration::from_secs(10)).await.expect("the viewer connects");
    tokio::time::sleep(Duration::from_secs(8)).await;
    // Delivery: of the teacher's packets numbered between the first and the last the
    // viewer got (the marker counts them per kind), how many arrived.
    let mut report = Vec::new();
    for kind in [Kind::Audio, Kind::Video] {
        let counters: std::collections::BTreeSet<u32> = viewer
            .remote_tracks()
            .iter()
            .filter(|t| t.kind == Some(kind))
            .flat_map(|t| t.packets.iter())
            .filter_map(|p| parse_marker(teacher.video, kind, &p.payload))
            .filter(|(sender, _)| *sender == teacher.index)
            .map(|(_, n)| n)
            .collect();
        let (first, last) = (counters.first().copied().unwrap_or(0), counters.last().copied().unwrap_or(0));
        let expected = (last - first + 1) as f64;
        let delivery = counters.len() as f64 / expected;
        report.push(format!("{kind:?}: {} of {expected} ({:.2}%)", counters.len(), delivery * 100.0));
        assert!(counters.len() > 100, "{kind:?}: too few packets to judge: {report:?}");
        assert!(delivery >= 0.99, "{kind:?} delivery under 99% through a 5% lossy link: {report:?}");
    }
    let nacked = metric(&origin, "huiyi_relay_nacked_total").await;
    let resent = metric(&origin, "huiyi_relay_retransmitted_total").await;
    println!("through 5% loss: {report:?}; {nacked} packets asked for again, {resent} sent again");
    assert!(resent > 0.0, "the link's loss was repaired from the origin's history");
    viewer.close().await;
    teacher.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_edge_gets_no_new_viewers_and_moves_its_own() {
    init_logging();
    tokio::time::timeout(TEST_TIMEOUT, draining_edge()).await.expect("finishes in time");
}

async fn draining_edge() {
    let origin = origin("");
    let edges = [edge(&origin, "edge-a", TEST_SECRET, ""), edge(&origin, "edge-b", TEST_SECRET, "")];
    assert_eq!(
        wait_metric(&origin, "huiyi_relay_links{to=\"child\"}", |v| v == 2.0, Duration::from_secs(10)).await,
        2.0
    );
    let teacher_token = token_with("drain", "teacher", publish_grant());
    let (mut teacher, _) = Client::publish_whip(origin.http, "drain", "teacher", 0, &teacher_token)
        .await
        .expect("WHIP to the origin");
    teacher.wait_connected(Duration::from_secs(10)).await.expect("the teacher connects");
    teacher.start_media().await.expect("the teacher sends");
    let viewer_token = token_with("drain", "students", watch_grant());
    let (viewer, location) = Client::play_whep(origin.http, "drain", "v", 10, &viewer_token)
        .await
        .expect("a viewer sent to an edge");
    let on = edges.iter().position(|e| location.starts_with(&e.url())).expect("on one of the edges");
    let (draining, other) = (&edges[on], &edges[1 - on]);

    // SIGTERM: the edge drains. Its viewers' event streams say to move, and end.
    draining.terminate();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let events = format!("/live/drain/events?access_token={viewer_token}");
    let (status, _, body) = http_exchange(draining.http, "GET", &events, &[], b"").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"moving\":true"), "a draining edge tells its pages to move: {body}");
    // The origin sends new viewers to the other edge only.
    for i in 0..3 {
        let bearer = format!("Bearer {viewer_token}");
        let headers = [("Authorization", bearer.as_str()), ("Content-Type", "application/sdp")];
        let (status, headers, _) =
            http_exchange(origin.http, "POST", "/whep/drain", &headers, b"v=0\r\n").await;
        assert_eq!(status, 307, "viewer {i} is sent on");
        let to = header(&headers, "location").unwrap_or_default().to_string();
        assert!(to.starts_with(&other.url()), "viewer {i} sent to {to}, not to the edge that drains");
    }
    viewer.close().await;
    teacher.close().await;
}
