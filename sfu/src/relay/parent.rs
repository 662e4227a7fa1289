//! The parent's side of relay links: accept a child, check its proof of the cluster
//! secret, and feed it the rooms it subscribes to.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::tls::{self, Side};
use super::wire::{self, Control, split_flow};
use super::{
    Child, Children, LinkOut, ParentLink, Places, RoomViewers, read_control, read_control_within,
    write_controls,
};
use crate::api::{LeaveReason, SessionId};
use crate::metrics::SfuMetrics;
use crate::shard::{RelayInput, ShardInput, ShardSender};

/// A child must prove the secret this soon after connecting.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Rooms one child may subscribe to at once.
const MAX_ROOMS_PER_CHILD: usize = 10_000;
/// Sequence numbers in one NACK.
const MAX_NACK_SEQS: usize = 256;
/// Rooms in one audience message (names of at most 128 bytes: well under 256 KiB).
const AUDIENCE_ROOMS_PER_MESSAGE: usize = 1000;
/// How often a parent tells its children the tree's viewers of their rooms.
const AUDIENCE_EVERY: Duration = Duration::from_secs(1);
/// A hello is well under this; a stranger who has proved nothing gets no more.
const MAX_HELLO_BYTES: usize = 4096;
/// Longest room name a child may subscribe to.
const MAX_ROOM_NAME: usize = 128;

pub(super) struct Serving {
    pub secret: Vec<u8>,
    pub node: String,
    pub places: Places,
    pub metrics: SfuMetrics,
    pub children: Arc<Children>,
    pub viewers: Arc<RoomViewers>,
    /// This node's own parent, when it is an edge that feeds edges.
    pub parent: Option<Arc<ParentLink>>,
}

static CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

pub(super) async fn serve(endpoint: quinn::Endpoint, serving: Arc<Serving>) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(child_link(incoming, serving.clone()));
    }
}

/// One child's link, from its handshake to its end.
async fn child_link(incoming: quinn::Incoming, serving: Arc<Serving>) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            serving.metrics.relay.refused.with_label_values(&["handshake"]).inc();
            info!(%remote, error = %e, "relay connection failed in its handshake");
            return;
        }
    };
    let (send, mut recv, hello) = match tokio::time::timeout(HELLO_TIMEOUT, greet(&conn, &serving)).await {
        Ok(Ok(greeted)) => greeted,
        Ok(Err((reason, message))) => {
            serving.metrics.relay.refused.with_label_values(&[reason]).inc();
            warn!(%remote, reason, "relay link refused: {message}");
            conn.close(1u32.into(), reason.as_bytes());
            return;
        }
        Err(_) => {
            serving.metrics.relay.refused.with_label_values(&["timeout"]).inc();
            warn!(%remote, "relay link refused: no proof of the secret within 5 s");
            conn.close(1u32.into(), b"timeout");
            return;
        }
    };
    let (node, http) = hello;
    let key = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
    serving.children.lock().insert(
        key,
        Child { node: node.clone(), http: http.clone(), viewers: 0, rooms: Vec::new(), draining: false },
    );
    serving.metrics.relay.links.with_label_values(&["child"]).inc();
    info!(%remote, child = %node, http = ?http, "relay link from a child is up");
    let (control, rx) = mpsc::unbounded_channel();
    let link = LinkOut { conn: conn.clone(), control, pulled: None };
    tokio::spawn(write_controls(send, rx, |_| {}));
    let mut rooms: HashMap<String, (u32, SessionId, ShardSender)> = HashMap::new();
    let mut next_slot = 1u32;
    let mut audience = tokio::time::interval(AUDIENCE_EVERY);
    // Messages are read on a task of their own: a read cut off halfway (by the ticker
    // below) would lose its bytes and the stream's framing with them.
    let (messages_tx, mut messages) = mpsc::channel(64);
    let reader = tokio::spawn(async move {
        loop {
            let message = read_control(&mut recv).await;
            let failed = message.is_err();
            if messages_tx.send(message).await.is_err() || failed {
                return;
            }
        }
    });
    let end = loop {
        let message = tokio::select! {
            m = messages.recv() => m.unwrap_or_else(|| Err("control stream ended".into())),
            e = conn.closed() => break format!("closed: {e}"),
            _ = audience.tick() => {
                // The whole tree's viewers of each room this child takes, for its pages,
                // in messages well under the size limit.
                let counts: Vec<(String, u64)> =
                    rooms.keys().map(|room| (room.clone(), audience_of(&serving, room))).collect();
                for chunk in counts.chunks(AUDIENCE_ROOMS_PER_MESSAGE) {
                    link.send(Control::Audience { rooms: chunk.to_vec() });
                }
                let path = conn.stats().path;
                let relay = &serving.metrics.relay;
                relay.child_rtt_us.with_label_values(&[&node]).set(path.rtt.as_micros() as i64);
                relay.child_cwnd_bytes.with_label_values(&[&node]).set(path.cwnd as i64);
                relay.child_lost_packets.with_label_values(&[&node]).set(path.lost_packets as i64);
                continue;
            }
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => break e,
        };
        match message {
            Control::Subscribe { room } => {
                if rooms.contains_key(&room) {
                    continue;
                }
                if room.is_empty() || room.len() > MAX_ROOM_NAME || rooms.len() >= MAX_ROOMS_PER_CHILD {
                    serving.metrics.relay.refused.with_label_values(&["bad_subscribe"]).inc();
                    link.send(Control::Room { room, slot: 0, tracks: Vec::new() });
                    continue;
                }
                let slot = next_slot;
                next_slot += 1;
                // An edge that feeds edges pulls the room from its own parent first.
                if let Some(parent) = &serving.parent
                    && parent.pull(&room).await.is_err()
                {
                    link.send(Control::Room { room, slot, tracks: Vec::new() });
                    continue;
                }
                match serving.places.join(&room, &node, link.clone(), slot, None).await {
                    Ok((id, shard)) => {
                        rooms.insert(room, (slot, id, shard));
                    }
                    Err(e) => {
                        info!(child = %node, %room, error = %e, "relay subscription refused");
                        link.send(Control::Room { room, slot, tracks: Vec::new() });
                    }
                }
            }
            Control::Unsubscribe { room } => {
                if let Some((_, id, shard)) = rooms.remove(&room) {
                    shard.end(id, LeaveReason::Left);
                }
            }
            Control::Ready { slot, mut tracks } => {
                tracks.truncate(wire::MAX_TRACKS_PER_ROOM as usize);
                if let Some((id, shard)) = by_slot(&rooms, slot) {
                    let _ = shard.command(ShardInput::Relay(RelayInput::Ready { endpoint: id, tracks }));
                }
            }
            Control::Keyframe { flow } => {
                if let Some((id, shard)) = by_slot(&rooms, split_flow(flow).0) {
                    let _ = shard.command(ShardInput::Relay(RelayInput::Keyframe { endpoint: id, flow }));
                }
            }
            Control::Nack { flow, mut seqs } => {
                seqs.truncate(MAX_NACK_SEQS);
                if let Some((id, shard)) = by_slot(&rooms, split_flow(flow).0) {
                    let nack = RelayInput::Nack { endpoint: id, flow, seqs };
                    if shard.command(ShardInput::Relay(nack)).is_err() {
                        serving.metrics.relay.dropped.with_label_values(&["queue_full"]).inc();
                    }
                }
            }
            Control::Load { viewers, mut rooms, draining } => {
                rooms.truncate(MAX_ROOMS_PER_CHILD);
                if let Some(child) = serving.children.lock().get_mut(&key) {
                    child.viewers = viewers;
                    child.rooms = rooms;
                    child.draining = draining;
                }
            }
            other => {
                serving.metrics.relay.refused.with_label_values(&["bad_message"]).inc();
                break format!("a child may not send {other:?}");
            }
        }
    };
    reader.abort();
    conn.close(0u32.into(), b"bye");
    for (_, (_, id, shard)) in rooms {
        shard.end(id, LeaveReason::Disconnected);
    }
    serving.children.lock().remove(&key);
    serving.metrics.relay.links.with_label_values(&["child"]).dec();
    let relay = &serving.metrics.relay;
    for gauge in [&relay.child_rtt_us, &relay.child_cwnd_bytes, &relay.child_lost_packets] {
        let _ = gauge.remove_label_values(&[&node]);
    }
    info!(%remote, child = %node, reason = %end, "relay link from a child ended");
}

/// Viewers of `room` in the tree this node belongs to: as its own parent told, or here
/// and below.
fn audience_of(serving: &Serving, room: &str) -> u64 {
    if let Some(told) = serving.parent.as_ref().and_then(|p| p.audience(room)) {
        return told;
    }
    serving.viewers.get(room) as u64 + serving.children.viewers(room)
}

fn by_slot(
    rooms: &HashMap<String, (u32, SessionId, ShardSender)>,
    slot: u32,
) -> Option<(SessionId, &ShardSender)> {
    rooms.values().find(|(s, _, _)| *s == slot).map(|(_, id, shard)| (*id, shard))
}

type Greeted = (quinn::SendStream, quinn::RecvStream, (String, Option<String>));

/// The child opens the control stream and proves the secret; the parent proves it back.
async fn greet(conn: &quinn::Connection, serving: &Serving) -> Result<Greeted, (&'static str, String)> {
    let started = Instant::now();
    let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| ("handshake", e.to_string()))?;
    let hello = read_control_within(&mut recv, MAX_HELLO_BYTES).await.map_err(|e| ("bad_message", e))?;
    let Control::Hello { node, http, proof } = hello else {
        return Err(("bad_message", "the first message was not a hello".into()));
    };
    if !tls::verify(conn, &serving.secret, Side::Child, &proof) {
        return Err(("bad_proof", format!("node {node:?} does not prove the cluster secret")));
    }
    let proof = tls::proof(conn, &serving.secret, Side::Parent)
        .ok_or(("handshake", "no TLS exporter".to_string()))?;
    let welcome = Control::Welcome { node: serving.node.clone(), proof };
    send.write_all(&welcome.frame()).await.map_err(|e| ("handshake", e.to_string()))?;
    tracing::debug!(took = ?started.elapsed(), "relay greeting");
    let node: String = node.chars().take(64).collect();
    let http = http.filter(|h| h.len() <= 256 && (h.starts_with("http://") || h.starts_with("https://")));
    Ok((send, recv, (node, http)))
}
