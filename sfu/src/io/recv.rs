//! The receive thread: reads the media port in batches, finds each datagram's shard, and
//! hands every shard its part of the batch at once, in a buffer that goes back to a pool
//! after use. One `recvmmsg` per wake-up: it blocks for the first datagram and takes what
//! else is queued with it (`MSG_WAITFORONE`), so an idle port costs one system call per
//! datagram, as a plain `recv` would, and a busy one one per batch. (quinn-udp's receive
//! takes no flags: on a non-blocking socket every wake-up cost a `poll` more, about 1 us
//! of kernel time per forwarded packet at meeting-300-smoke's light load.)

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::debug;

use super::{MAX_DATAGRAM, MediaSocket};
use crate::demux::{RouteTable, Unroutable};
use crate::health::Heartbeat;
use crate::metrics::SfuMetrics;

/// Messages one recvmmsg call may return.
const BATCH: usize = 32;
/// Batch buffers kept for reuse; more in flight at once are allocated and then dropped.
const POOL_KEEP: usize = 256;
/// How often a quiet receive thread looks up to notice shutdown.
pub(super) const WAKE_EVERY: Duration = Duration::from_millis(250);

/// Datagrams for one shard from one read of the socket, in one buffer.
pub(crate) struct Datagrams {
    /// When they were read.
    pub at: Instant,
    bytes: Vec<u8>,
    items: Vec<(SocketAddr, u32, u32)>,
    /// They came over an ICE-TCP connection (io/tcp.rs), not the UDP port.
    pub tcp: bool,
}

impl Datagrams {
    fn new() -> Self {
        Self {
            at: Instant::now(),
            bytes: Vec::with_capacity(BATCH * 1500),
            items: Vec::with_capacity(BATCH),
            tcp: false,
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.items
            .iter()
            .map(|(source, start, len)| (*source, &self.bytes[*start as usize..(*start + *len) as usize]))
    }

    pub(crate) fn push(&mut self, source: SocketAddr, data: &[u8]) {
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(data);
        self.items.push((source, start, data.len() as u32));
    }

    #[cfg(test)]
    pub fn push_for_test(&mut self, source: SocketAddr, data: &[u8]) {
        self.push(source, data);
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.items.clear();
        self.tcp = false;
    }
}

/// Emptied batches on their way back from the shards to the receive thread.
#[derive(Default)]
pub(crate) struct DatagramPool {
    free: Mutex<Vec<Datagrams>>,
}

impl DatagramPool {
    pub(crate) fn take(&self, at: Instant) -> Datagrams {
        let mut batch = self.free.lock().ok().and_then(|mut f| f.pop()).unwrap_or_else(Datagrams::new);
        batch.at = at;
        batch
    }

    #[cfg(test)]
    pub fn take_for_test(&self) -> Datagrams {
        self.take(Instant::now())
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

/// Which queue into a shard a datagram takes. STUN (RFC 7983: first byte 0-3) and DTLS
/// handshake, change-cipher-spec and alert records (content types 20-22) go ahead of
/// media: a shard that falls behind its media still answers connectivity checks and
/// finishes handshakes, so joins and consent do not wait behind (or get dropped with) a
/// backlog of RTP. DTLS application data (23: a data channel) and the rest wait with media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    Media,
    Handshake,
}

impl Lane {
    pub fn of(datagram: &[u8]) -> Lane {
        match datagram.first() {
            Some(0..=3 | 20..=22) => Lane::Handshake,
            _ => Lane::Media,
        }
    }
}

/// Where a batch for one shard went: queued, refused because the shard's queue is full
/// (the batch comes back), or the shard is gone (shutting down).
pub(crate) enum Delivery {
    Queued,
    Full(Datagrams),
    /// The shard's queue is closed; this many datagrams were dropped.
    Gone(usize),
}

/// Reads the media port until `stopping`, handing shard `i` its datagrams of each lane
/// with `deliver(i, lane, batch)`.
pub(crate) fn receive_loop(
    socket: &MediaSocket,
    routes: &RouteTable,
    shards: usize,
    mut deliver: impl FnMut(usize, Lane, Datagrams) -> Delivery,
    metrics: &SfuMetrics,
    pool: &DatagramPool,
    (stopping, heartbeat): (&AtomicBool, &Heartbeat),
) {
    let mut reads = Batch::new();
    let mut per_shard: Vec<[Option<Datagrams>; 2]> = (0..shards).map(|_| [None, None]).collect();
    let dropped = |reason: &str, n: u64| metrics.dropped_datagrams.with_label_values(&[reason]).inc_by(n);
    while !stopping.load(Ordering::Relaxed) {
        heartbeat.beat();
        let count = match reads.read(socket) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            Err(e) => {
                // ICMP port-unreachable from a vanished peer surfaces here on Linux.
                debug!(error = %e, "media socket receive error");
                continue;
            }
        };
        let at = Instant::now();
        for (source, data) in reads.datagrams(count) {
            metrics.packets_in.inc();
            metrics.bytes_in.inc_by(data.len() as u64);
            if data.len() > MAX_DATAGRAM {
                dropped("oversized", 1);
                continue;
            }
            let shard = match routes.route(source, data) {
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
            let lane = Lane::of(data);
            per_shard[shard][lane as usize].get_or_insert_with(|| pool.take(at)).push(source, data);
        }
        for (shard, slots) in per_shard.iter_mut().enumerate() {
            for (lane, slot) in [Lane::Media, Lane::Handshake].into_iter().zip(slots.iter_mut()) {
                let Some(batch) = slot.take() else { continue };
                match deliver(shard, lane, batch) {
                    Delivery::Queued => {}
                    Delivery::Full(batch) => {
                        let reason =
                            if lane == Lane::Handshake { "handshake_queue_full" } else { "queue_full" };
                        dropped(reason, batch.len() as u64);
                        pool.give_back(batch);
                    }
                    // The shard is starting again after a panic, or the node is stopping.
                    Delivery::Gone(n) => dropped("shard_gone", n as u64),
                }
            }
        }
    }
}

/// The buffers and headers of one `recvmmsg`, allocated once.
struct Batch {
    /// One more byte than the largest datagram we take, to tell a longer one.
    buffers: Vec<[u8; MAX_DATAGRAM + 1]>,
    names: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in `iovecs` and `headers` point into `buffers`, `names` and
// `iovecs` of the same Batch, which never reallocate; they are only used by its owner.
unsafe impl Send for Batch {}

impl Batch {
    fn new() -> Self {
        Self {
            buffers: vec![[0; MAX_DATAGRAM + 1]; BATCH],
            // SAFETY: all-zero is a valid sockaddr_storage, iovec and mmsghdr (an unset
            // family, null pointers, zero lengths).
            names: vec![unsafe { std::mem::zeroed() }; BATCH],
            iovecs: vec![unsafe { std::mem::zeroed() }; BATCH],
            headers: vec![unsafe { std::mem::zeroed() }; BATCH],
        }
    }

    /// Blocks until a datagram arrives (or the socket's read timeout passes), then takes
    /// it and every other one already queued, up to BATCH. Returns how many.
    fn read(&mut self, socket: &MediaSocket) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovecs[i] =
                libc::iovec { iov_base: self.buffers[i].as_mut_ptr().cast(), iov_len: MAX_DATAGRAM + 1 };
            let header = &mut self.headers[i].msg_hdr;
            header.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            header.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_iov = &mut self.iovecs[i];
            header.msg_iovlen = 1;
            header.msg_control = std::ptr::null_mut();
            header.msg_controllen = 0;
            header.msg_flags = 0;
        }
        // SAFETY: BATCH headers, each pointing at its own name storage and one iovec over
        // its own buffer, all alive and unaliased for the call.
        let n = unsafe {
            libc::recvmmsg(
                socket.socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// The first `count` datagrams read, with where they came from. A datagram cut short
    /// (longer than the buffer) keeps the buffer's length, so it reads as oversized.
    fn datagrams(&self, count: usize) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        (0..count.min(BATCH)).filter_map(move |i| {
            let source = socket_address(&self.names[i])?;
            let len = (self.headers[i].msg_len as usize).min(MAX_DATAGRAM + 1);
            Some((source, &self.buffers[i][..len]))
        })
    }
}

/// The address the kernel wrote for a received datagram.
fn socket_address(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: an address of family AF_INET is a sockaddr_in, which fits the storage.
            let a = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::from((
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: an address of family AF_INET6 is a sockaddr_in6, which fits the storage.
            let a = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use super::*;

    #[test]
    fn ice_and_dtls_take_the_handshake_lane() {
        // RFC 7983: STUN 0-3, DTLS 20-63 (of which 20-22 are handshake, change-cipher-spec
        // and alert), RTP and RTCP 128-191.
        for first in [0u8, 1, 3, 20, 21, 22] {
            assert_eq!(Lane::of(&[first, 0]), Lane::Handshake, "{first}");
        }
        for first in [0x80u8, 0x90, 0xbf, 4, 19, 23, 63, 64, 200] {
            assert_eq!(Lane::of(&[first, 0]), Lane::Media, "{first}");
        }
        assert_eq!(Lane::of(&[]), Lane::Media);
    }

    #[test]
    fn one_read_takes_every_queued_datagram_whole_with_its_sender() {
        let socket = MediaSocket::bind("127.0.0.1:0".parse().unwrap()).expect("binds");
        let to = socket.local_addr().unwrap();
        let peers: Vec<UdpSocket> = (0..3).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        for (i, peer) in peers.iter().enumerate() {
            peer.send_to(&vec![i as u8; 100 + i], to).unwrap();
        }
        peers[0].send_to(&[9; MAX_DATAGRAM + 500], to).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut batch = Batch::new();
        let n = batch.read(&socket).expect("reads");
        let got: Vec<(SocketAddr, Vec<u8>)> = batch.datagrams(n).map(|(a, d)| (a, d.to_vec())).collect();
        assert_eq!(got.len(), 4, "all queued datagrams in one read");
        for (i, peer) in peers.iter().enumerate() {
            assert_eq!(got[i], (peer.local_addr().unwrap(), vec![i as u8; 100 + i]));
        }
        assert_eq!(got[3].1.len(), MAX_DATAGRAM + 1, "a longer one reads as longer than we take");
        // Nothing queued: the read waits for the socket's timeout, then says so.
        let started = Instant::now();
        assert!(batch.read(&socket).is_err());
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
