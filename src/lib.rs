//! The `huiyi` process: signaling and an embedded media node in one binary.

pub mod config;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use signaling::{AppState, Registry, SignalingMetrics};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use config::Config;

/// A running server: where it listens, and its task.
pub struct Running {
    pub http_addr: SocketAddr,
    pub media_addr: SocketAddr,
    pub state: Arc<AppState>,
    pub task: JoinHandle<std::io::Result<()>>,
}

/// Start signaling and the embedded media node (the embedded all-in-one default).
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    let prometheus = prometheus::Registry::new();
    let media = sfu::MediaNode::start(config.media_config(), &prometheus)
        .with_context(|| format!("binding the media port {}", config.media.bind))?;
    let media_addr = media.local_addr();
    let state = Arc::new(AppState {
        media: Box::new(media),
        registry: Registry::default(),
        secret: config.secret().to_vec(),
        dev_tokens: config.dev_mode(),
        metrics: SignalingMetrics::new(&prometheus),
        prometheus,
    });
    let listener = TcpListener::bind(config.http)
        .await
        .with_context(|| format!("binding the HTTP port {}", config.http))?;
    let http_addr = listener.local_addr()?;
    let app = signaling::router(state.clone());
    let task = tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Running { http_addr, media_addr, state, task })
}
