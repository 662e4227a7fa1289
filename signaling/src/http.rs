//! The HTTP listener: accepts connections within the limits (in total and per client
//! address), gives each a header-read deadline, and hands requests to the router. Axum's
//! own `serve` has no timer, no connection cap and drops accept errors silently, so a
//! few hundred half-open requests could hold every file descriptor (slowloris).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::SignalingMetrics;

/// Connection limits of the HTTP and WebSocket listener (`[limits]` in the config).
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Open connections (HTTP and WebSocket). A newcomer beyond it sheds the oldest
    /// connection that has not sent a request yet, or is closed at once if there is none.
    pub max_connections: usize,
    /// Open connections from one client address; 0 = no per-address cap. Loopback
    /// addresses are exempt: behind a local reverse proxy every client shares one.
    pub max_connections_per_ip: usize,
    /// A request's headers must arrive within this, and an idle keep-alive connection
    /// must start its next request within it.
    pub header_read_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_ip: 64,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Counts open connections, in total and per address, and knows which are still
/// waiting for their first request (the ones a full server sheds for a newcomer).
struct Counts {
    limits: HttpLimits,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    /// Connections in the order they came, while they may still be waiting for their first
    /// request; pruned from the front.
    waiting: VecDeque<Weak<Place>>,
}

impl Open {
    fn release(&mut self, ip: IpAddr) {
        self.total -= 1;
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

const WAITING: u8 = 0;
const SERVED: u8 = 1;
const EVICTED: u8 = 2;

/// One admitted connection; dropping it frees its place. Requests carry it (as an
/// extension) so that a WebSocket made by upgrading the connection keeps the place.
#[derive(Clone)]
pub struct Admitted(Arc<Place>);

struct Place {
    counts: Arc<Counts>,
    peer: SocketAddr,
    state: AtomicU8,
    evict: Notify,
}

impl Admitted {
    pub fn peer(&self) -> SocketAddr {
        self.0.peer
    }

    /// The connection is in use (a request arrived, or its WebSocket joined): it is no
    /// longer shed for newcomers.
    /// False when the connection was shed first (it must close: its place is gone).
    pub fn served(&self) -> bool {
        match self.0.state.compare_exchange(WAITING, SERVED, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => true,
            Err(state) => state == SERVED,
        }
    }

    /// Resolves when the connection was shed for a newcomer (a full server). A WebSocket
    /// that has not joined waits on this as its HTTP connection did.
    pub async fn shed(&self) {
        self.0.evict.notified().await;
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        // An evicted place was counted out when it was evicted.
        if self.state.load(Ordering::Relaxed) != EVICTED {
            self.counts.open.lock().expect("connection counts").release(self.peer.ip().to_canonical());
        }
    }
}

/// Why a connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Total,
    PerIp,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Total => "total",
            Refusal::PerIp => "per_ip",
        }
    }
}

/// What admitting a connection did.
struct Admission {
    admitted: Admitted,
    /// A connection that had sent nothing usable was shed to make room.
    shed: bool,
}

impl Counts {
    fn new(limits: HttpLimits) -> Arc<Self> {
        Arc::new(Self { limits, open: Mutex::new(Open::default()) })
    }

    fn admit(self: &Arc<Self>, peer: SocketAddr) -> Result<Admission, Refusal> {
        let mut open = self.open.lock().expect("connection counts");
        // An IPv4 client of a socket bound to [::] arrives as ::ffff:a.b.c.d.
        let ip = peer.ip().to_canonical();
        let capped = self.limits.max_connections_per_ip > 0 && !ip.is_loopback();
        if capped && open.per_ip.get(&ip).copied().unwrap_or(0) >= self.limits.max_connections_per_ip {
            return Err(Refusal::PerIp);
        }
        // Forget the front entries that are gone or past their first request.
        while let Some(front) = open.waiting.front() {
            match front.upgrade() {
                Some(p) if p.state.load(Ordering::Relaxed) == WAITING => break,
                _ => {
                    open.waiting.pop_front();
                }
            }
        }
        let mut shed = false;
        if open.total >= self.limits.max_connections {
            // Full: shed the oldest connection still waiting for its first request (a
            // slowloris holds many such), so a real request still gets in.
            let oldest = open.waiting.pop_front().and_then(|w| w.upgrade());
            let Some(oldest) = oldest.filter(|p| {
                p.state.compare_exchange(WAITING, EVICTED, Ordering::Relaxed, Ordering::Relaxed).is_ok()
            }) else {
                return Err(Refusal::Total);
            };
            open.release(oldest.peer.ip().to_canonical());
            oldest.evict.notify_one();
            shed = true;
        }
        open.total += 1;
        *open.per_ip.entry(ip).or_insert(0) += 1;
        let place = Arc::new(Place {
            counts: self.clone(),
            peer,
            state: AtomicU8::new(WAITING),
            evict: Notify::new(),
        });
        open.waiting.push_back(Arc::downgrade(&place));
        // A long-lived waiting connection at the front stops the pruning above: sweep the
        // rest now and then, so the queue stays near the number of open connections.
        if open.waiting.len() > 2 * open.total + 64 {
            open.waiting.retain(|w| w.upgrade().is_some_and(|p| p.state.load(Ordering::Relaxed) == WAITING));
        }
        Ok(Admission { admitted: Admitted(place), shed })
    }
}

/// Accept connections until the listener fails for good. Each connection is served on
/// its own task; a connection refused by a limit is closed without a response. With
/// `tls`, each speaks TLS first (within the header read timeout) and HTTP inside it.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    metrics: SignalingMetrics,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let counts = Counts::new(limits.clone());
    let mut last_warning: Option<Instant> = None;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                metrics.accept_errors.inc();
                // Out of file descriptors (or a similar resource): say so, at most once a
                // second, and give the open connections a moment to close.
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    warn!(error = %e, "accepting an HTTP connection failed");
                    last_warning = Some(Instant::now());
                }
                if is_resource_error(&e) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                continue;
            }
        };
        let admitted = match counts.admit(peer) {
            Ok(Admission { admitted, shed }) => {
                if shed {
                    metrics.connections_refused.with_label_values(&["shed_waiting"]).inc();
                }
                admitted
            }
            Err(refusal) => {
                metrics.connections_refused.with_label_values(&[refusal.label()]).inc();
                debug!(%peer, reason = refusal.label(), "connection refused by a limit");
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let timeout = limits.header_read_timeout;
        match &tls {
            None => {
                tokio::spawn(serve_connection(stream, admitted, app.clone(), timeout));
            }
            Some(acceptor) => {
                let (acceptor, app, failures) = (acceptor.clone(), app.clone(), metrics.tls_failures.clone());
                tokio::spawn(async move {
                    // A handshake that never ends holds its place no longer than headers
                    // may, and, like a connection waiting for its first request, may be
                    // shed for a newcomer: its socket closes then, not at the timeout.
                    let place = admitted.0.clone();
                    let handshake = tokio::time::timeout(timeout, acceptor.accept(stream));
                    let shaken = tokio::select! {
                        shaken = handshake => shaken,
                        () = place.evict.notified() => {
                            debug!(%peer, "connection shed for a newcomer during its TLS handshake");
                            return;
                        }
                    };
                    match shaken {
                        Ok(Ok(secured)) => serve_connection(secured, admitted, app, timeout).await,
                        Ok(Err(e)) => {
                            failures.with_label_values(&["handshake"]).inc();
                            debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            failures.with_label_values(&["timeout"]).inc();
                            debug!(%peer, "TLS handshake not finished in time");
                        }
                    }
                });
            }
        }
    }
}

fn is_resource_error(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}

async fn serve_connection<S>(stream: S, admitted: Admitted, app: Router, header_timeout: Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let place = admitted.0.clone();
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        // A WebSocket handshake is not use yet: until it joins, the socket stays
        // sheddable (a flood of idle handshakes would otherwise hold every place).
        let websocket = request
            .headers()
            .get(axum::http::header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("websocket")));
        if !websocket {
            // A request on a connection shed a moment ago is still answered; the
            // connection closes when the select below sees the shedding.
            let _ = admitted.served();
        }
        request.extensions_mut().insert(admitted.clone());
        app.clone().oneshot(request)
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::select! {
        result = connection => {
            if let Err(e) = result {
                debug!(error = %e, "HTTP connection ended with an error");
            }
        }
        () = place.evict.notified() => {
            debug!(peer = %place.peer, "connection shed for a newcomer");
            // An upgraded WebSocket may be waiting on it too.
            place.evict.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(total: usize, per_ip: usize) -> Arc<Counts> {
        Counts::new(HttpLimits {
            max_connections: total,
            max_connections_per_ip: per_ip,
            header_read_timeout: Duration::from_secs(1),
        })
    }

    fn admit(c: &Arc<Counts>, peer: &str) -> Result<Admitted, Refusal> {
        c.admit(peer.parse().unwrap()).map(|a| a.admitted)
    }

    #[test]
    fn per_address_cap_frees_places_when_connections_end() {
        let c = counts(10, 2);
        let first = admit(&c, "192.0.2.1:1000").unwrap();
        let _second = admit(&c, "192.0.2.1:1001").unwrap();
        assert_eq!(admit(&c, "192.0.2.1:1002").err(), Some(Refusal::PerIp));
        assert!(admit(&c, "192.0.2.2:1000").is_ok(), "another address has its own places");
        drop(first);
        assert!(admit(&c, "192.0.2.1:1003").is_ok(), "a closed connection frees its place");
    }

    #[test]
    fn a_full_server_sheds_the_oldest_connection_still_waiting_for_a_request() {
        let c = counts(3, 0);
        let served = admit(&c, "127.0.0.1:1").unwrap();
        assert!(served.served());
        let oldest_waiting = admit(&c, "127.0.0.1:2").unwrap();
        let _newer_waiting = admit(&c, "127.0.0.1:3").unwrap();
        let admission = c.admit("127.0.0.1:4".parse().unwrap()).unwrap();
        assert!(admission.shed);
        assert_eq!(oldest_waiting.0.state.load(Ordering::Relaxed), EVICTED);
        assert_eq!(c.open.lock().unwrap().total, 3);
        drop(oldest_waiting);
        assert_eq!(c.open.lock().unwrap().total, 3, "an evicted place is not freed twice");
    }

    #[test]
    fn a_connection_shed_before_it_was_used_learns_so() {
        let c = counts(1, 0);
        let first = admit(&c, "127.0.0.1:1").unwrap();
        let _second = admit(&c, "127.0.0.1:2").unwrap();
        assert!(!first.served(), "shed first: its place is gone");
    }

    #[test]
    fn ipv4_clients_of_a_dual_stack_socket_count_as_their_ipv4_address() {
        let c = counts(10, 1);
        let held: Vec<_> = (0..3).map(|i| admit(&c, &format!("[::ffff:127.0.0.1]:{i}")).unwrap()).collect();
        assert_eq!(held.len(), 3, "loopback, exempt from the per-address cap");
        let _a = admit(&c, "[::ffff:192.0.2.1]:1").unwrap();
        assert_eq!(admit(&c, "192.0.2.1:2").err(), Some(Refusal::PerIp), "the same address either way");
        drop(held);
        assert_eq!(c.open.lock().unwrap().total, 1);
    }

    #[test]
    fn a_server_full_of_served_connections_refuses() {
        let c = counts(2, 0);
        let held: Vec<_> = (0..2).map(|i| admit(&c, &format!("127.0.0.1:{i}")).unwrap()).collect();
        assert!(held.iter().all(Admitted::served));
        assert_eq!(admit(&c, "127.0.0.1:9").err(), Some(Refusal::Total));
        drop(held);
        let open = c.open.lock().unwrap();
        assert_eq!(open.total, 0);
        assert!(open.per_ip.is_empty());
    }

    #[test]
    fn an_upgraded_connection_keeps_its_place_until_the_last_holder_drops() {
        let c = counts(1, 0);
        let admitted = admit(&c, "192.0.2.1:1").unwrap();
        assert!(admitted.served());
        let websocket = admitted.clone();
        drop(admitted);
        assert_eq!(admit(&c, "192.0.2.1:2").err(), Some(Refusal::Total));
        drop(websocket);
        assert!(admit(&c, "192.0.2.1:3").is_ok());
    }
}
