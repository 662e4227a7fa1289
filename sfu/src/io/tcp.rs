//! ICE-TCP (RFC 6544): a passive TCP candidate beside the UDP one, for browsers whose
//! network drops UDP. Each connection carries the peer's datagrams framed as RFC 4571 says
//! (a 16-bit length, then the packet); its frames take the UDP path's route to a shard
//! (the first one a STUN check naming its session's ufrag), and what the shard sends to
//! the connection's address goes back framed over it. One thread runs every connection
//! (a current-thread tokio runtime): TCP peers are the few whose UDP is blocked.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::MAX_DATAGRAM;
use super::recv::{DatagramPool, Datagrams, Delivery, Lane};
use crate::demux::{RouteTable, Unroutable};
use crate::metrics::SfuMetrics;

/// Open ICE-TCP connections at most; more are closed at once.
const MAX_CONNECTIONS: usize = 2_048;
/// Frames waiting to be written to one connection; beyond it they are dropped, as a
/// full UDP socket buffer would drop them (a peer that does not read loses media, not
/// the shard's time).
const WRITE_QUEUE: usize = 512;
/// A connection must send a check that names a session within this.
const FIRST_CHECK: Duration = Duration::from_secs(10);
/// ... and then something at least this often (browsers check consent every few seconds).
const IDLE: Duration = Duration::from_secs(30);

/// Peers connected over TCP, by the address their connection comes from (what the shards
/// see as a datagram's source), each with the queue of its connection's writer.
#[derive(Default)]
pub(crate) struct TcpPeers {
    writers: DashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
}

impl TcpPeers {
    /// Queue `datagram` framed for `peer`'s connection: false when `peer` has none; a full
    /// queue drops it (counted).
    pub fn send(&self, peer: &SocketAddr, datagram: &[u8], metrics: &SfuMetrics) -> bool {
        let Some(writer) = self.writers.get(peer) else { return false };
        let Ok(len) = u16::try_from(datagram.len()) else { return true };
        let mut frame = Vec::with_capacity(2 + datagram.len());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(datagram);
        if writer.try_send(frame).is_err() {
            metrics.dropped_datagrams.with_label_values(&["tcp_write_queue_full"]).inc();
        }
        true
    }

    fn add(&self, peer: SocketAddr, writer: mpsc::Sender<Vec<u8>>) {
        self.writers.insert(peer, writer);
    }

    fn remove(&self, peer: &SocketAddr) {
        self.writers.remove(peer);
    }
}

/// Where a connection's frames go: the route table, a shard's queue by lane.
pub(crate) struct TcpIngress<D> {
    pub routes: Arc<RouteTable>,
    pub pool: Arc<DatagramPool>,
    pub metrics: SfuMetrics,
    pub peers: Arc<TcpPeers>,
    pub deliver: D,
}

/// Accept ICE-TCP connections on `listener` until the thread's runtime ends.
pub(crate) fn spawn<D>(listener: std::net::TcpListener, ingress: TcpIngress<D>) -> std::io::Result<()>
where
    D: Fn(usize, Lane, Datagrams) -> Delivery + Send + Sync + 'static,
{
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
    std::thread::Builder::new().name("huiyi-ice-tcp".into()).spawn(move || {
        runtime.block_on(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => return warn!(error = %e, "ICE-TCP listener unusable"),
            };
            let ingress = Arc::new(ingress);
            let open = Arc::new(AtomicUsize::new(0));
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        debug!(error = %e, "ICE-TCP accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                if open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                    ingress.metrics.dropped_datagrams.with_label_values(&["tcp_connections_full"]).inc();
                    continue;
                }
                let _ = stream.set_nodelay(true);
                open.fetch_add(1, Ordering::Relaxed);
                let (ingress, open) = (ingress.clone(), open.clone());
                tokio::spawn(async move {
                    ingress.metrics.tcp_accepted.inc();
                    ingress.metrics.tcp_connections.inc();
                    serve(stream, peer, &ingress).await;
                    ingress.peers.remove(&peer);
                    ingress.metrics.tcp_connections.dec();
                    open.fetch_sub(1, Ordering::Relaxed);
                });
            }
        });
    })?;
    Ok(())
}

/// One connection: frames in to the shards, frames out from its queue, until either side
/// ends it, a frame is malformed, or it names no session in time.
async fn serve<D>(stream: tokio::net::TcpStream, peer: SocketAddr, ingress: &TcpIngress<D>)
where
    D: Fn(usize, Lane, Datagrams) -> Delivery,
{
    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    ingress.peers.add(peer, tx);
    let write = async move {
        while let Some(frame) = rx.recv().await {
            if writer.write_all(&frame).await.is_err() {
                break;
            }
        }
    };
    let dropped = |reason: &str| ingress.metrics.dropped_datagrams.with_label_values(&[reason]).inc();
    let read = async {
        let mut frame = vec![0u8; MAX_DATAGRAM];
        let mut routed = false;
        let deadline = Instant::now() + FIRST_CHECK;
        loop {
            let mut len = [0u8; 2];
            let wait = if routed { Instant::now() + IDLE } else { deadline };
            match tokio::time::timeout_at(wait.into(), reader.read_exact(&mut len)).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    dropped(if routed { "tcp_idle" } else { "tcp_no_check" });
                    return debug!(%peer, routed, "ICE-TCP connection silent too long; closing");
                }
            }
            let len = u16::from_be_bytes(len) as usize;
            if len == 0 || len > MAX_DATAGRAM {
                dropped("tcp_bad_frame");
                return debug!(%peer, len, "ICE-TCP frame of a length no datagram has; closing");
            }
            if reader.read_exact(&mut frame[..len]).await.is_err() {
                return;
            }
            let data = &frame[..len];
            ingress.metrics.packets_in.inc();
            ingress.metrics.bytes_in.inc_by(len as u64);
            let shard = match ingress.routes.route(peer, data) {
                Ok(s) => s,
                Err(Unroutable::UnknownSource) => {
                    dropped("unknown_source");
                    if routed {
                        continue;
                    }
                    return debug!(%peer, "ICE-TCP connection began with no check; closing");
                }
                Err(Unroutable::UnknownUfrag) => {
                    dropped("unknown_ufrag");
                    if routed {
                        continue;
                    }
                    return debug!(%peer, "ICE-TCP check names no session; closing");
                }
            };
            routed = true;
            let lane = Lane::of(data);
            let mut batch = ingress.pool.take(Instant::now());
            batch.tcp = true;
            batch.push(peer, data);
            match (ingress.deliver)(shard, lane, batch) {
                Delivery::Queued => {}
                Delivery::Full(batch) => {
                    dropped(if lane == Lane::Handshake { "handshake_queue_full" } else { "queue_full" });
                    ingress.pool.give_back(batch);
                }
                Delivery::Gone(_) => dropped("shard_gone"),
            }
        }
    };
    // Either side ending ends the connection.
    tokio::select! {
        () = read => {}
        () = write => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_go_only_to_connected_peers() {
        let peers = TcpPeers::default();
        let metrics = SfuMetrics::new(&prometheus::Registry::new());
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert!(!peers.send(&peer, b"x", &metrics), "no connection: not taken");
        let (tx, mut rx) = mpsc::channel(1);
        peers.add(peer, tx);
        assert!(peers.send(&peer, b"abc", &metrics));
        assert_eq!(rx.try_recv().unwrap(), vec![0, 3, b'a', b'b', b'c'], "RFC 4571 framing");
        assert!(peers.send(&peer, b"d", &metrics));
        assert!(peers.send(&peer, b"e", &metrics), "taken, and dropped: the queue is full");
        assert_eq!(metrics.dropped_datagrams.with_label_values(&["tcp_write_queue_full"]).get(), 1);
        peers.remove(&peer);
        assert!(!peers.send(&peer, b"f", &metrics), "closed: not taken");
    }
}
