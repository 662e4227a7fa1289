//! The child's side of a relay link: one connection to the parent, kept up (again every
//! second after a loss), rooms pulled while they have viewers here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::tls::{self, Side};
use super::wire::{Control, RelayPacket, split_flow};
use super::{Children, LinkOut, Places, RelaySettings, RoomViewers, read_control, transport, write_controls};
use crate::api::{LeaveReason, MediaError, SessionId};
use crate::metrics::SfuMetrics;
use crate::shard::{RelayInput, ShardInput, ShardSender};

/// How long a pull waits for the parent's answer.
const PULL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a child tells its parent its viewers.
const LOAD_EVERY: Duration = Duration::from_secs(1);
/// At most this many datagrams from the parent go to a shard as one input.
const MAX_DATAGRAMS_PER_INPUT: usize = 64;

/// Datagrams read together, for one shard's end of the link.
type Batch = (SessionId, ShardSender, Vec<(RelayPacket, Instant)>);

/// The output of a future that is ready without waiting, or None (it is dropped then).
fn ready_now<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

enum Pull {
    Waiting(Vec<oneshot::Sender<Result<(), MediaError>>>),
    Live { slot: u32, id: SessionId, shard: ShardSender },
}

#[derive(Default)]
struct State {
    link: Option<LinkOut>,
    rooms: HashMap<String, Pull>,
    /// Viewers of each pulled room in the whole tree, as the parent last told.
    audience: HashMap<String, u64>,
}

pub(crate) struct ParentLink {
    parent: SocketAddr,
    settings: RelaySettings,
    places: Places,
    metrics: SfuMetrics,
    viewers: Arc<RoomViewers>,
    children: Arc<Children>,
    state: Mutex<State>,
    /// The node is shutting down: its parent sends it no new viewers.
    pub draining: std::sync::atomic::AtomicBool,
}

impl ParentLink {
    pub fn new(
        parent: SocketAddr,
        settings: RelaySettings,
        places: Places,
        metrics: SfuMetrics,
        viewers: Arc<RoomViewers>,
        children: Arc<Children>,
    ) -> Self {
        Self {
            parent,
            settings,
            places,
            metrics,
            viewers,
            children,
            state: Mutex::default(),
            draining: Default::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Make sure `room` comes from the parent: Ok once its tracks are sources here, Err
    /// when nothing is live there (or the parent cannot be reached).
    pub async fn pull(&self, room: &str) -> Result<(), MediaError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.lock();
            let Some(link) = state.link.clone() else {
                return Err(MediaError::Refused("this edge has no link to its origin".into()));
            };
            match state.rooms.get_mut(room) {
                Some(Pull::Live { .. }) => return Ok(()),
                Some(Pull::Waiting(waiting)) => waiting.push(tx),
                None => {
                    state.rooms.insert(room.to_string(), Pull::Waiting(vec![tx]));
                    link.send(Control::Subscribe { room: room.to_string() });
                }
            }
        }
        match tokio::time::timeout(PULL_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            _ => {
                let mut state = self.lock();
                if matches!(state.rooms.get(room), Some(Pull::Waiting(_))) {
                    state.rooms.remove(room);
                }
                Err(MediaError::Overloaded)
            }
        }
    }

    /// Keep a link to the parent up for the node's life.
    pub async fn run(self: Arc<Self>, endpoint: quinn::Endpoint) {
        let client = match tls::client_config(transport()) {
            Ok(c) => c,
            Err(e) => return warn!(error = %e, "relay TLS set-up failed; this edge has no origin"),
        };
        loop {
            let started = Instant::now();
            match self.connected(&endpoint, client.clone()).await {
                Ok(end) => info!(parent = %self.parent, reason = %end, "relay link to the parent ended"),
                Err(e) => warn!(parent = %self.parent, error = %e, "no relay link to the parent"),
            }
            self.lost();
            let since = started.elapsed();
            if since < Duration::from_secs(1) {
                tokio::time::sleep(Duration::from_secs(1) - since).await;
            }
        }
    }

    /// One connection, from the greeting to its end.
    async fn connected(
        self: &Arc<Self>,
        endpoint: &quinn::Endpoint,
        client: quinn::ClientConfig,
    ) -> Result<String, String> {
        let conn = endpoint
            .connect_with(client, self.parent, "huiyi-relay")
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let secret = &self.settings.secret;
        let proof = tls::proof(&conn, secret, Side::Child).ok_or("no TLS exporter")?;
        let hello =
            Control::Hello { node: self.settings.node.clone(), http: self.settings.http_url.clone(), proof };
        send.write_all(&hello.frame()).await.map_err(|e| e.to_string())?;
        let welcome = tokio::time::timeout(Duration::from_secs(5), read_control(&mut recv))
            .await
            .map_err(|_| "no welcome within 5 s".to_string())??;
        match welcome {
            Control::Welcome { node, proof } if tls::verify(&conn, secret, Side::Parent, &proof) => {
                info!(parent = %self.parent, node = %node, "relay link to the parent is up");
            }
            _ => {
                self.metrics.relay.refused.with_label_values(&["bad_proof"]).inc();
                conn.close(1u32.into(), b"bad proof");
                return Err("the parent did not prove the cluster secret".into());
            }
        }
        self.metrics.relay.links.with_label_values(&["parent"]).inc();
        let (control, rx) = mpsc::unbounded_channel();
        let link = LinkOut { conn: conn.clone(), control, pulled: Some(Arc::downgrade(self)) };
        self.lock().link = Some(link.clone());
        let writer = tokio::spawn(write_controls(send, rx, |_| {}));
        // Rooms that still have viewers here come back after a lost link.
        let wanted: Vec<String> = self
            .viewers
            .all()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(room, _)| room)
            .chain(self.children.totals().into_iter().filter(|(_, n)| *n > 0).map(|(room, _)| room))
            .collect();
        for room in wanted {
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.pull(&room).await {
                    debug!(%room, error = %e, "a room with viewers could not be pulled again");
                }
            });
        }
        let media = tokio::spawn(self.clone().datagrams(conn.clone()));
        let load = tokio::spawn(self.clone().report_load(link.clone()));
        let end = loop {
            let message = tokio::select! {
                m = read_control(&mut recv) => m,
                e = conn.closed() => break format!("closed: {e}"),
            };
            match message {
                Ok(m) => self.on_control(m, &link).await,
                Err(e) => break e,
            }
        };
        media.abort();
        load.abort();
        writer.abort();
        conn.close(0u32.into(), b"bye");
        self.metrics.relay.links.with_label_values(&["parent"]).dec();
        Ok(end)
    }

    async fn on_control(&self, message: Control, link: &LinkOut) {
        match message {
            Control::Room { room, slot, tracks } => {
                let known: Vec<u32> = tracks.iter().map(|t| t.track).collect();
                if !matches!(self.lock().rooms.get(&room), Some(Pull::Waiting(_))) {
                    // Not asked for (any more): let the parent know.
                    link.send(Control::Unsubscribe { room });
                    return;
                }
                // The entry stays Waiting through the join, so a viewer arriving meanwhile
                // waits for this answer rather than subscribing twice.
                let result = if tracks.is_empty() {
                    link.send(Control::Unsubscribe { room: room.clone() });
                    Err(MediaError::Refused("nothing is live in this room".into()))
                } else {
                    match self.places.join(&room, &self.settings.node, link.clone(), slot, Some(tracks)).await
                    {
                        Ok((id, shard)) => Ok(Pull::Live { slot, id, shard }),
                        Err(e) => {
                            link.send(Control::Unsubscribe { room: room.clone() });
                            Err(e)
                        }
                    }
                };
                let waiting = {
                    let mut state = self.lock();
                    let previous = state.rooms.remove(&room);
                    let told = match result {
                        Ok(live) => {
                            state.rooms.insert(room.clone(), live);
                            link.send(Control::Ready { slot, tracks: known.clone() });
                            Ok(())
                        }
                        Err(e) => Err(e),
                    };
                    match previous {
                        Some(Pull::Waiting(w)) => {
                            w.into_iter().map(|w| (w, told.clone())).collect::<Vec<_>>()
                        }
                        _ => Vec::new(),
                    }
                };
                debug!(%room, "room answer from the parent");
                for (w, result) in waiting {
                    let _ = w.send(result);
                }
            }
            Control::Track { slot, track } => {
                // The shard tells the parent Ready once it has taken the track.
                if let Some((id, shard)) = self.by_slot(slot) {
                    let _ = shard.command(ShardInput::Relay(RelayInput::Track { endpoint: id, track }));
                }
            }
            Control::Untrack { slot, track } => {
                if let Some((id, shard)) = self.by_slot(slot) {
                    let _ = shard.command(ShardInput::Relay(RelayInput::Untrack { endpoint: id, track }));
                }
            }
            Control::Audience { rooms } => {
                let mut state = self.lock();
                let State { rooms: pulled, audience, .. } = &mut *state;
                audience.retain(|room, _| pulled.contains_key(room));
                audience.extend(rooms.into_iter().filter(|(room, _)| pulled.contains_key(room)));
            }
            other => {
                self.metrics.relay.dropped.with_label_values(&["bad_message"]).inc();
                debug!(message = ?other, "unexpected relay message from the parent");
            }
        }
    }

    fn by_slot(&self, slot: u32) -> Option<(SessionId, ShardSender)> {
        self.lock().rooms.values().find_map(|p| match p {
            Pull::Live { slot: s, id, shard } if *s == slot => Some((*id, shard.clone())),
            _ => None,
        })
    }

    /// Media from the parent, to the shards that hold its rooms. What the link has
    /// received by the time one datagram is read goes to its shard as one input (a video
    /// frame's packets, above all), so the shard seals the frame for every viewer in one
    /// turn and sends each viewer's share with one GSO send (io/send.rs).
    async fn datagrams(self: Arc<Self>, conn: quinn::Connection) {
        let mut routes: HashMap<u32, (SessionId, ShardSender)> = HashMap::new();
        let mut batches: Vec<Batch> = Vec::new();
        while let Ok(first) = conn.read_datagram().await {
            let at = Instant::now();
            let mut next = Some(first);
            let mut read = 0;
            while let Some(data) = next.take() {
                read += 1;
                self.take(data, at, &mut routes, &mut batches);
                if read < MAX_DATAGRAMS_PER_INPUT {
                    next = ready_now(conn.read_datagram()).and_then(Result::ok);
                }
            }
            for (id, shard, packets) in batches.drain(..) {
                let n = packets.len() as u64;
                if let Err(e) =
                    shard.command(ShardInput::Relay(RelayInput::Packets { endpoint: id, packets }))
                {
                    if e == MediaError::ShuttingDown {
                        return;
                    }
                    // The endpoint may have ended and its slot be reused by a new pull.
                    routes.retain(|_, (r, _)| *r != id);
                    self.metrics.relay.dropped.with_label_values(&["queue_full"]).inc_by(n);
                }
            }
            if routes.len() > 4096 {
                routes.clear();
            }
        }
    }

    /// One datagram from the parent, added to its shard's batch.
    fn take(
        &self,
        data: bytes::Bytes,
        at: Instant,
        routes: &mut HashMap<u32, (SessionId, ShardSender)>,
        batches: &mut Vec<Batch>,
    ) {
        let packet = match RelayPacket::decode(data) {
            Ok(p) => p,
            Err(_) => {
                self.metrics.relay.dropped.with_label_values(&["malformed"]).inc();
                return;
            }
        };
        let slot = split_flow(packet.flow).0;
        let route = match routes.get(&slot) {
            Some(r) => Some(r.clone()),
            None => self.by_slot(slot).inspect(|r| {
                routes.insert(slot, r.clone());
            }),
        };
        let Some((id, shard)) = route else {
            self.metrics.relay.dropped.with_label_values(&["unknown_flow"]).inc();
            return;
        };
        match batches.iter_mut().find(|(b, _, _)| *b == id) {
            Some((_, _, packets)) => packets.push((packet, at)),
            None => batches.push((id, shard, vec![(packet, at)])),
        }
    }

    /// Tell the parent this node's viewers (and its children's), every second.
    async fn report_load(self: Arc<Self>, link: LinkOut) {
        let mut tick = tokio::time::interval(LOAD_EVERY);
        loop {
            tick.tick().await;
            let mut rooms = self.children.totals();
            for (room, n) in self.viewers.all() {
                *rooms.entry(room).or_insert(0) += n as u64;
            }
            let viewers = rooms.values().sum();
            let draining = self.draining.load(std::sync::atomic::Ordering::Relaxed);
            link.send(Control::Load { viewers, rooms: rooms.into_iter().collect(), draining });
        }
    }

    /// Viewers of a pulled room in the whole tree, as the parent last told.
    pub fn audience(&self, room: &str) -> Option<u64> {
        let state = self.lock();
        state.rooms.contains_key(room).then(|| state.audience.get(room).copied()).flatten()
    }

    /// A shard let `room` go (its `endpoint` ended): the next viewer pulls it again.
    pub fn released(&self, room: &str, endpoint: SessionId) {
        let mut state = self.lock();
        if matches!(state.rooms.get(room), Some(Pull::Live { id, .. }) if *id == endpoint) {
            state.rooms.remove(room);
            // Queued under the lock: a pull that follows sends its subscribe after this.
            if let Some(link) = &state.link {
                link.send(Control::Unsubscribe { room: room.to_string() });
            }
        }
    }

    /// The link is gone: rooms it brought end here (their viewers see the class end).
    fn lost(&self) {
        let mut state = self.lock();
        state.link = None;
        for (_, pull) in state.rooms.drain() {
            match pull {
                Pull::Live { id, shard, .. } => shard.end(id, LeaveReason::RoomClosed),
                Pull::Waiting(waiting) => {
                    for w in waiting {
                        let _ = w.send(Err(MediaError::Refused("the link to the origin was lost".into())));
                    }
                }
            }
        }
    }
}
