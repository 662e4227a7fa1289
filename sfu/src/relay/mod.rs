//! The broadcast tier's relay links (ADR 0012): QUIC connections (quinn) between media
//! nodes. A child node (an edge) opens one to its parent (the origin, or another edge),
//! proves the cluster secret, and subscribes to a room only while it has viewers of it.
//! The parent sends each room's RTP in datagrams and announces tracks on a control stream;
//! the child asks for keyframes and for packets the link lost.
//!
//! In a shard a link is a hidden router endpoint (shard/relay.rs): one that feeds a child
//! the room's sources, or one that brings the parent's tracks in as sources of its own.

mod child;
mod parent;
pub(crate) mod repair;
pub mod tls;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};

use crate::api::{MediaError, SessionId};
use crate::metrics::SfuMetrics;
use crate::shard::{RelayInput, ShardInput, ShardSender};
use wire::{Control, MAX_CONTROL_BYTES, WireTrack};

pub(crate) use child::ParentLink;

/// How this node takes part in the broadcast tier.
#[derive(Debug, Clone, Default)]
pub struct RelaySettings {
    /// Accept relay links from child nodes on this UDP address (an origin, or an edge that
    /// feeds further edges).
    pub listen: Option<SocketAddr>,
    /// The parent node's relay address: this node is an edge.
    pub parent: Option<SocketAddr>,
    /// This node's name on its links.
    pub node: String,
    /// Where viewers reach this node's HTTP (`http://host:port`), told to its parent, which
    /// sends viewers here.
    pub http_url: Option<String>,
    /// The cluster secret both ends of a link prove they hold.
    pub secret: Vec<u8>,
}

/// QUIC settings of every relay link: a dead peer is noticed within 3 s.
fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_millis(500)));
    t.max_idle_timeout(Some(quinn::IdleTimeout::try_from(Duration::from_secs(3)).expect("a small timeout")));
    // Ethernet's 1,500 less IPv6 and UDP headers; quinn falls back if the path is smaller.
    t.initial_mtu(1452);
    t.datagram_receive_buffer_size(Some(4 << 20));
    // Media older than this much queue is worth less than what follows: quinn drops the
    // oldest datagrams first, and stream data (control) keeps its share of each packet.
    t.datagram_send_buffer_size(1 << 20);
    Arc::new(t)
}

/// One end of a link as a shard uses it: datagrams out, control messages out.
#[derive(Clone)]
pub(crate) struct LinkOut {
    conn: quinn::Connection,
    control: mpsc::UnboundedSender<Control>,
    /// On a child, the link that pulled its rooms: told at once when a shard lets a room go.
    pulled: Option<std::sync::Weak<ParentLink>>,
}

impl LinkOut {
    pub fn send(&self, message: Control) {
        let _ = self.control.send(message);
    }

    /// A room this link brought in is let go (nobody watches it): the parent stops sending
    /// it, and the next viewer pulls it again.
    pub fn release(&self, room: &str, endpoint: SessionId) {
        match self.pulled.as_ref().and_then(|w| w.upgrade()) {
            // Told in step with the link's own pulls (a new pull must not be overtaken).
            Some(link) => link.released(room, endpoint),
            None => self.send(Control::Unsubscribe { room: room.to_string() }),
        }
    }

    /// Queue one datagram; Err names why it was dropped.
    pub fn datagram(&self, data: Bytes) -> Result<(), &'static str> {
        self.conn.send_datagram(data).map_err(|e| match e {
            quinn::SendDatagramError::TooLarge => "too_large",
            quinn::SendDatagramError::ConnectionLost(_) => "link_lost",
            _ => "datagrams_unsupported",
        })
    }
}

/// Viewers (participants and WHEP players) per room on this node, as the shards last
/// counted them (every housekeeping round).
#[derive(Default)]
pub(crate) struct RoomViewers(DashMap<String, (usize, usize, bool)>);

impl RoomViewers {
    /// Shard `index` holds these rooms with these viewers now, and whether anything is
    /// published in each.
    pub fn replace_shard(&self, index: usize, rooms: Vec<(String, usize, bool)>) {
        self.0.retain(|room, (shard, _, _)| *shard != index || rooms.iter().any(|(r, _, _)| r == room));
        for (room, n, live) in rooms {
            self.0.insert(room, (index, n, live));
        }
    }

    pub fn get(&self, room: &str) -> usize {
        self.0.get(room).map(|e| e.1).unwrap_or(0)
    }

    pub fn live(&self, room: &str) -> bool {
        self.0.get(room).is_some_and(|e| e.2)
    }

    pub fn all(&self) -> Vec<(String, usize)> {
        self.0.iter().map(|e| (e.key().clone(), e.value().1)).collect()
    }
}

/// Where rooms live on this node: what the relay tasks need of it.
#[derive(Clone)]
pub(crate) struct Places {
    pub shards: Vec<ShardSender>,
    pub placement: Arc<DashMap<String, usize>>,
}

impl Places {
    /// The shard that holds `room`, or the least loaded one for a new room.
    pub fn shard_for(&self, room: &str) -> ShardSender {
        let index = *self.placement.entry(room.to_string()).or_insert_with(|| {
            (0..self.shards.len())
                .min_by_key(|i| self.shards[*i].sessions.load(std::sync::atomic::Ordering::Relaxed))
                .unwrap_or(0)
        });
        self.shards[index].clone()
    }

    /// Put a link's end in `room`.
    pub async fn join(
        &self,
        room: &str,
        node: &str,
        link: LinkOut,
        slot: u32,
        brings: Option<Vec<WireTrack>>,
    ) -> Result<(SessionId, ShardSender), MediaError> {
        let shard = self.shard_for(room);
        let (reply, answer) = oneshot::channel();
        let join =
            RelayInput::Join { room: room.to_string(), node: node.to_string(), link, slot, brings, reply };
        shard.command(ShardInput::Relay(join))?;
        let id = answer.await.map_err(|_| MediaError::Overloaded)??;
        Ok((id, shard))
    }
}

/// A child node as its parent knows it.
#[derive(Debug, Clone)]
pub(crate) struct Child {
    pub node: String,
    pub http: Option<String>,
    pub viewers: u64,
    pub rooms: Vec<(String, u64)>,
    /// It is shutting down: no new viewers go there.
    pub draining: bool,
}

/// The children linked to this node, by connection.
#[derive(Default)]
pub(crate) struct Children(Mutex<HashMap<usize, Child>>);

impl Children {
    fn lock(&self) -> MutexGuard<'_, HashMap<usize, Child>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The HTTP address of the child with the fewest viewers (that told one); the viewer
    /// sent there counts at once, so a burst spreads before the next report.
    pub fn least_loaded(&self) -> Option<String> {
        let mut children = self.lock();
        let child =
            children.values_mut().filter(|c| c.http.is_some() && !c.draining).min_by_key(|c| c.viewers)?;
        child.viewers += 1;
        child.http.clone()
    }

    pub fn list(&self) -> Vec<crate::api::EdgeInfo> {
        let mut out: Vec<crate::api::EdgeInfo> = self
            .lock()
            .values()
            .map(|c| crate::api::EdgeInfo { node: c.node.clone(), http: c.http.clone(), viewers: c.viewers })
            .collect();
        out.sort_by(|a, b| a.node.cmp(&b.node));
        out
    }

    /// Viewers of `room` below this node.
    pub fn viewers(&self, room: &str) -> u64 {
        self.lock().values().flat_map(|c| c.rooms.iter()).filter(|(r, _)| r == room).map(|(_, n)| n).sum()
    }

    /// Viewers below this node, in all and by room.
    pub fn totals(&self) -> HashMap<String, u64> {
        let mut out = HashMap::new();
        for (room, n) in self.lock().values().flat_map(|c| c.rooms.iter()) {
            *out.entry(room.clone()).or_insert(0) += n;
        }
        out
    }
}

/// The relay side of a media node.
pub(crate) struct Relay {
    pub parent: Option<Arc<ParentLink>>,
    pub children: Arc<Children>,
    pub listen_addr: Option<SocketAddr>,
    /// Kept open for the node's life.
    endpoints: Vec<quinn::Endpoint>,
}

impl Relay {
    /// Start listening and connecting as `settings` say (inside a tokio runtime).
    pub fn start(
        settings: &RelaySettings,
        places: Places,
        metrics: SfuMetrics,
        viewers: Arc<RoomViewers>,
    ) -> std::io::Result<Self> {
        let children = Arc::new(Children::default());
        let mut endpoints = Vec::new();
        let parent = match settings.parent {
            Some(addr) => {
                let bind: SocketAddr = if addr.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let endpoint = quinn::Endpoint::client(bind)?;
                let link = Arc::new(ParentLink::new(
                    addr,
                    settings.clone(),
                    places.clone(),
                    metrics.clone(),
                    viewers.clone(),
                    children.clone(),
                ));
                tokio::spawn(link.clone().run(endpoint.clone()));
                endpoints.push(endpoint);
                Some(link)
            }
            None => None,
        };
        let mut listen_addr = None;
        if let Some(addr) = settings.listen {
            let config = tls::server_config(transport()).map_err(std::io::Error::other)?;
            let endpoint = quinn::Endpoint::server(config, addr)?;
            listen_addr = Some(endpoint.local_addr()?);
            let serving = parent::Serving {
                secret: settings.secret.clone(),
                node: settings.node.clone(),
                places,
                metrics,
                children: children.clone(),
                viewers: viewers.clone(),
                parent: parent.clone(),
            };
            tokio::spawn(parent::serve(endpoint.clone(), Arc::new(serving)));
            tracing::info!(addr = %listen_addr.unwrap_or(addr), "relay links accepted");
            endpoints.push(endpoint);
        }
        Ok(Self { parent, children, listen_addr, endpoints })
    }

    /// The node is shutting down: its parent sends it no new viewers (told within a second).
    pub fn drain(&self) {
        if let Some(parent) = &self.parent {
            parent.draining.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Close every link (the node stops): children and the parent see it at once.
    pub fn close(&self) {
        for endpoint in &self.endpoints {
            endpoint.close(0u32.into(), b"stopping");
        }
    }
}

/// Read one length-prefixed control message.
async fn read_control(recv: &mut quinn::RecvStream) -> Result<Control, String> {
    read_control_within(recv, MAX_CONTROL_BYTES).await
}

/// Read one control message of at most `max` bytes (a peer that has not proved the
/// secret yet gets little).
async fn read_control_within(recv: &mut quinn::RecvStream, max: usize) -> Result<Control, String> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.map_err(|e| format!("control stream: {e}"))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(format!("a control message of {len} bytes (at most {max})"));
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|e| format!("control stream: {e}"))?;
    serde_json::from_slice(&body).map_err(|e| format!("bad control message: {e}"))
}

/// Write control messages until the link ends; `seen` looks at each first.
async fn write_controls(
    mut send: quinn::SendStream,
    mut rx: mpsc::UnboundedReceiver<Control>,
    seen: impl Fn(&Control) + Send,
) {
    while let Some(message) = rx.recv().await {
        seen(&message);
        if send.write_all(&message.frame()).await.is_err() {
            return;
        }
    }
}
