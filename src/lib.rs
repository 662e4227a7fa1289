//! The `huiyi` process: signaling and an embedded media node in one binary.

pub mod config;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use signaling::{AppState, Registry, SignalingMetrics};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use config::Config;

/// A running server: where it listens, and its task.
pub struct Running {
    pub http_addr: SocketAddr,
    /// The admin listener (`/metrics`, the admin API), when it has its own address.
    pub admin_addr: Option<SocketAddr>,
    pub media_addr: SocketAddr,
    /// Where ICE-TCP connections arrive (media for browsers whose UDP is blocked), when on.
    pub media_tcp_addr: Option<SocketAddr>,
    /// Where relay links from edges arrive, when this node accepts them.
    pub relay_addr: Option<SocketAddr>,
    pub state: Arc<AppState>,
    pub task: JoinHandle<std::io::Result<()>>,
    /// HTTPS and WSS on `http_addr`, when configured (the admin listener stays plain).
    pub tls: Option<tls::Tls>,
}

/// Start signaling and the embedded media node (the embedded all-in-one default).
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    config.check_exposure()?;
    config.check_roles()?;
    config.check_media()?;
    config.check_turn()?;
    let prometheus = prometheus::Registry::new();
    // HTTP first: an edge tells its origin the address viewers reach it on.
    let listener = TcpListener::bind(config.http)
        .await
        .with_context(|| format!("binding the HTTP port {}", config.http))?;
    let http_addr = listener.local_addr()?;
    // A certificate made here covers this machine's names: looked up only then.
    let names = if config.tls.self_signed {
        tls::local_names(http_addr.ip(), &config.media.public_ips)
    } else {
        Vec::new()
    };
    let tls = tls::prepare(&config.tls, &names)?;
    let mut media_config = config.media_config();
    if config.relay.public_url.is_none() {
        let scheme = if tls.is_some() { "https" } else { "http" };
        media_config.relay.http_url = Some(format!("{scheme}://{http_addr}"));
    }
    let media = sfu::MediaNode::start(media_config, &prometheus).with_context(|| {
        format!("binding the media port {} (UDP, and TCP for ICE-TCP; or the relay port)", config.media.bind)
    })?;
    let media_addr = media.local_addr();
    let media_tcp_addr = media.tcp_addr();
    let relay_addr = media.relay_addr();
    let state = Arc::new(AppState {
        media: Box::new(media),
        registry: Registry::default(),
        secret: config.secret().to_vec(),
        dev_tokens: config.dev_mode(),
        metrics: SignalingMetrics::new(&prometheus),
        prometheus,
        draining: Default::default(),
        whip: Default::default(),
        turn: config.turn(),
        resume_grace: Duration::from_secs(config.limits.resume_grace_secs),
    });
    let (app, admin) = match config.admin_http {
        None => (signaling::router(state.clone()), None),
        Some(addr) => {
            let admin =
                TcpListener::bind(addr).await.with_context(|| format!("binding the admin port {addr}"))?;
            (signaling::client_router(state.clone()), Some(admin))
        }
    };
    let admin_addr = match &admin {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let mut limits = config.http_limits();
    // Keep descriptors for everything else (the media socket, logs, the runtime): past
    // this, a newcomer sheds a connection still waiting for its first request.
    if let Ok(files) = open_file_limit() {
        let room = usize::try_from(files).unwrap_or(usize::MAX).saturating_sub(RESERVED_FILES).max(16);
        if room < limits.max_connections {
            tracing::info!(
                max_connections = room,
                open_files = files,
                "connections capped by the open-file limit"
            );
            limits.max_connections = room;
        }
    }
    if let Some(admin) = admin {
        // Operators' own listener: the same limits, its own connection counts.
        let (router, limits, metrics) =
            (signaling::admin_router(state.clone()), limits.clone(), state.metrics.clone());
        tokio::spawn(signaling::http::serve(admin, router, limits, metrics, None));
    }
    let metrics = state.metrics.clone();
    let server_tls = tls.as_ref().map(|t| t.config.clone());
    let task = tokio::spawn(async move {
        signaling::http::serve(listener, app, limits, metrics, server_tls).await;
        Ok(())
    });
    Ok(Running { http_addr, admin_addr, media_addr, media_tcp_addr, relay_addr, state, task, tls })
}

/// Stop taking participants (`/readyz` and `/healthz` say `draining`, joins are closed
/// with 1001) and wait until everyone has left, or `grace` has passed; then close every
/// room: each participant still in is told the server is shutting down (close 1001
/// "server shutting down", which the page shows with a rejoin button) rather than having
/// its connection dropped, and the close frames get up to two seconds to go out.
pub async fn drain(state: &AppState, grace: std::time::Duration) {
    state.draining.store(true, std::sync::atomic::Ordering::Relaxed);
    state.media.drain();
    if wait_until_empty(state, grace).await {
        return;
    }
    let left: usize = state.registry.rooms().iter().map(|r| r.participants).sum();
    tracing::info!(participants = left, "closing every room: the server is shutting down");
    state.registry.close_all(sfu::api::LeaveReason::ShuttingDown);
    // A participant leaves the registry before its close frame is sent: wait for the
    // connections themselves to end too.
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    wait_until_empty(state, std::time::Duration::from_secs(2)).await;
    while state.metrics.connections.get() > 0 && tokio::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Whether every participant left within `limit`.
async fn wait_until_empty(state: &AppState, limit: std::time::Duration) -> bool {
    let until = tokio::time::Instant::now() + limit;
    loop {
        let left: usize = state.registry.rooms().iter().map(|r| r.participants).sum();
        if left == 0 {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Descriptors kept for other than HTTP and WebSocket connections.
const RESERVED_FILES: usize = 128;

fn open_file_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct given, nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(limit.rlim_cur)
}

/// Keep freed heap memory in the process instead of handing it back to the kernel at once.
/// The WebRTC engine builds each RTCP sender report's description list in a fresh 30 KB
/// box (str0m's fixed-size report lists), one per sending stream per second: 7,500 a
/// second for a 300-person meeting's grid. glibc gave each thread's freed top of heap back
/// (`M_TRIM_THRESHOLD`, 128 KiB) and the next report faulted the pages in again: page
/// faults were a quarter of a media thread's time at meeting-300. With a high threshold the
/// memory is reused; the process still returns it above 64 MiB of free top.
pub fn keep_freed_memory() {
    // SAFETY: mallopt only sets an allocator parameter; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

/// Raise this process's open-file limit to its hard limit: every connection and media
/// session holds a descriptor, and the common soft limit of 1,024 lets a few hundred
/// idle connections starve the rest. Returns the limit now in force.
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write the struct given, nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            limit = raised;
        }
    }
    Ok(limit.rlim_cur)
}
