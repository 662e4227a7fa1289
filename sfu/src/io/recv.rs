//! The receive thread: reads the media port in batches (recvmmsg; with GRO one buffer may
//! hold several datagrams of one sender), finds each datagram's shard, and hands every
//! shard its part of the batch at once, in a buffer that goes back to a pool after use.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use quinn_udp::RecvMeta;
use tracing::debug;

use super::{MAX_DATAGRAM, MediaSocket};
use crate::demux::{RouteTable, Unroutable};
use crate::metrics::SfuMetrics;

/// Messages one recvmmsg call may return.
const BATCH: usize = 32;
/// Batch buffers kept for reuse; more in flight at once are allocated and then dropped.
const POOL_KEEP: usize = 256;
/// How often a quiet receive thread looks up to notice shutdown.
const WAKE_EVERY: Duration = Duration::from_millis(250);

/// Datagrams for one shard from one read of the socket, in one buffer.
pub(crate) struct Datagrams {
    /// When they were read.
    pub at: Instant,
    bytes: Vec<u8>,
    items: Vec<(SocketAddr, u32, u32)>,
}

impl Datagrams {
    fn new() -> Self {
        Self { at: Instant::now(), bytes: Vec::with_capacity(BATCH * 1500), items: Vec::with_capacity(BATCH) }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.items
            .iter()
            .map(|(source, start, len)| (*source, &self.bytes[*start as usize..(*start + *len) as usize]))
    }

    fn push(&mut self, source: SocketAddr, data: &[u8]) {
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(data);
        self.items.push((source, start, data.len() as u32));
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.items.clear();
    }
}

/// Emptied batches on their way back from the shards to the receive thread.
#[derive(Default)]
pub(crate) struct DatagramPool {
    free: Mutex<Vec<Datagrams>>,
}

impl DatagramPool {
    fn take(&self, at: Instant) -> Datagrams {
        let mut batch = self.free.lock().ok().and_then(|mut f| f.pop()).unwrap_or_else(Datagrams::new);
        batch.at = at;
        batch
    }

    pub fn give_back(&self, mut batch: Datagrams) {
        batch.clear();
        if let Ok(mut free) = self.free.lock()
            && free.len() < POOL_KEEP
        {
            free.push(batch);
        }
    }
}

/// Where a batch for one shard went: queued, refused because the shard's queue is full
/// (the batch comes back), or the shard is gone (shutting down).
pub(crate) enum Delivery {
    Queued,
    Full(Datagrams),
    Gone,
}

/// Reads the media port until `stopping`, handing shard `i` its datagrams with
/// `deliver(i, batch)`.
pub(crate) fn receive_loop(
    socket: &MediaSocket,
    routes: &RouteTable,
    shards: usize,
    mut deliver: impl FnMut(usize, Datagrams) -> Delivery,
    metrics: &SfuMetrics,
    stopping: &AtomicBool,
    pool: &DatagramPool,
) {
    // With GRO a buffer holds up to 64 KiB of coalesced datagrams.
    let slot = if socket.state.gro_segments() > 1 { 1 << 16 } else { MAX_DATAGRAM + 1 };
    let mut buffers: [Vec<u8>; BATCH] = std::array::from_fn(|_| vec![0u8; slot]);
    let mut meta = [RecvMeta::default(); BATCH];
    let mut per_shard: Vec<Option<Datagrams>> = (0..shards).map(|_| None).collect();
    let dropped = |reason: &str, n: u64| metrics.dropped_datagrams.with_label_values(&[reason]).inc_by(n);
    // A read that filled the batch likely left more behind: read again at once. One that
    // did not has emptied the socket: wait for the next datagram first, rather than make
    // a read that finds nothing.
    let mut more = false;
    while !stopping.load(Ordering::Relaxed) {
        if !more && !socket.wait(libc::POLLIN, WAKE_EVERY) {
            continue;
        }
        let received = {
            let mut slices = buffers.each_mut().map(|b| IoSliceMut::new(b));
            socket.state.recv((&socket.socket).into(), &mut slices, &mut meta)
        };
        let count = match received {
            Ok(n) => {
                more = n == BATCH;
                n
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                more = false;
                continue;
            }
            Err(e) => {
                // ICMP port-unreachable from a vanished peer surfaces here on Linux.
                debug!(error = %e, "media socket receive error");
                more = false;
                continue;
            }
        };
        let at = Instant::now();
        for (m, buffer) in meta.iter().zip(&buffers).take(count) {
            let stride = m.stride.max(1);
            for data in buffer[..m.len.min(buffer.len())].chunks(stride) {
                metrics.packets_in.inc();
                metrics.bytes_in.inc_by(data.len() as u64);
                if data.len() > MAX_DATAGRAM {
                    dropped("oversized", 1);
                    continue;
                }
                let shard = match routes.route(m.addr, data) {
                    Ok(s) => s,
                    Err(Unroutable::UnknownSource) => {
                        dropped("unknown_source", 1);
                        continue;
                    }
                    Err(Unroutable::UnknownUfrag) => {
                        dropped("unknown_ufrag", 1);
                        continue;
                    }
                };
                per_shard[shard].get_or_insert_with(|| pool.take(at)).push(m.addr, data);
            }
        }
        for (shard, batch) in per_shard.iter_mut().enumerate() {
            let Some(batch) = batch.take() else { continue };
            match deliver(shard, batch) {
                Delivery::Queued => {}
                Delivery::Full(batch) => {
                    dropped("queue_full", batch.len() as u64);
                    pool.give_back(batch);
                }
                Delivery::Gone => return,
            }
        }
    }
}
